"""Specification of flatcomp_tutorial.runtime: device choice (float64 never lands on MPS), seeds and threads."""
import random
import warnings

import numpy as np
import pytest
import torch

from flatcomp_tutorial import runtime


@pytest.fixture
def only_mps(monkeypatch):
    """A machine with Apple MPS and no CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_mps_when_float64_is_not_needed(only_mps):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_device("auto").type == "mps"
        assert runtime.resolve_device("auto", dtype=torch.float32).type == "mps"


def test_auto_falls_back_to_the_cpu_with_a_warning_when_float64_is_needed_on_mps(only_mps):
    with pytest.warns(UserWarning, match="MPS is available but has no float64 support.*using the CPU"):
        assert runtime.resolve_device("auto", dtype=torch.float64) == torch.device("cpu")


def test_auto_keeps_cuda_for_float64(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_device("auto", dtype=torch.float64).type == "cuda"


def test_auto_without_accelerators_is_the_cpu_silently(cpu_only):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_device("auto", dtype=torch.float64) == torch.device("cpu")


@pytest.mark.parametrize("device", ["mps", torch.device("mps")])
def test_an_explicit_mps_device_for_float64_work_is_refused(device):
    with pytest.raises(ValueError, match="no float64 support.*device='cpu'"):
        runtime.resolve_device(device, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.int64, "float64", torch.bool])
def test_a_non_floating_dtype_is_refused(dtype):
    with pytest.raises(ValueError, match="dtype must be a floating torch dtype"):
        runtime.resolve_device("cpu", dtype=dtype)


@pytest.mark.parametrize("device", ["gpu-please", None])
def test_an_unknown_device_is_refused_naming_the_choices(device):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        runtime.resolve_device(device)


def test_configure_passes_the_float64_need_on(only_mps):
    previous = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="no float64"):
            assert runtime.configure(seed=0, threads=1, dtype=torch.float64) == torch.device("cpu")
    finally:
        torch.set_num_threads(previous)


def test_configure_seeds_python_numpy_and_torch():
    runtime.configure(seed=np.int64(7), device="cpu")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    runtime.configure(seed=7, device="cpu")
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(threads=0), "threads"),
    (dict(threads=2.5), "threads"),
    (dict(threads=True), "threads"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(seed=True), "seed must be an integer"),
    (dict(device="gpu-please"), "device must be"),
])
def test_configure_refuses_bad_arguments_before_changing_anything(kwargs, match):
    previous = torch.get_num_threads()
    with pytest.raises(ValueError, match=match):
        runtime.configure(**({"threads": 3} | kwargs))
    assert torch.get_num_threads() == previous


# ------------------------------------------------------------------------------------------------ threads
def test_threads_sets_the_count_inside_the_block_and_restores_it():
    before = torch.get_num_threads()
    with runtime.threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_threads_restores_the_count_when_the_block_raises():
    before = torch.get_num_threads()
    with pytest.raises(KeyError):
        with runtime.threads(np.int64(2)):
            raise KeyError("boom")
    assert torch.get_num_threads() == before


def test_threads_none_leaves_the_count_unchanged():
    before = torch.get_num_threads()
    with runtime.threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_threads_refuses_a_count_that_is_not_a_positive_integer_before_changing_anything(n):
    before = torch.get_num_threads()
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        with runtime.threads(n):
            pass
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------------------ progress bars
def test_progress_is_quiet_under_ci_or_flatcomp_progress_0(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("FLATCOMP_PROGRESS", "1")
    assert runtime.progress_enabled(None)
    monkeypatch.setenv("CI", "true")
    assert not runtime.progress_enabled(None)
    monkeypatch.delenv("CI")
    monkeypatch.setenv("FLATCOMP_PROGRESS", "0")
    assert not runtime.progress_enabled(None) and runtime.progress_enabled(True)


# --- check_scale: the scale switch of every chapter's setup cell --------------------------------------------------
def test_check_scale_returns_a_valid_scale_without_warning_at_cpu_scale(recwarn):
    assert runtime.check_scale("cpu", "cpu", runs=100) == "cpu"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("scale", ["CPU", "gpu", None, 1])
def test_check_scale_refuses_an_unknown_scale(scale):
    with pytest.raises(ValueError, match="scale must be 'cpu' or 'paper'"):
        runtime.check_scale(scale, "cpu")


def test_check_scale_warns_with_the_estimated_hours_for_paper_scale_on_a_cpu():
    with pytest.warns(RuntimeWarning, match=r"trains 10 paper-scale run\(s\).*expect 3 h or more.*GPU"):
        runtime.check_scale("paper", torch.device("cpu"), runs=10)


def test_check_scale_does_not_warn_for_paper_scale_on_a_gpu(recwarn):
    assert runtime.check_scale("paper", "cuda", runs=10) == "paper"
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("runs", [0, 1.5, True])
def test_check_scale_refuses_a_run_count_that_is_not_a_positive_integer(runs):
    with pytest.raises(ValueError, match="runs"):
        runtime.check_scale("paper", "cpu", runs=runs)
