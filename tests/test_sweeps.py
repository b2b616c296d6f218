"""Specification of flatcomp_tutorial.sweeps: every run of a grid stored once (resuming after a kill), every
configuration checked before the first run, failures recorded and retried. The paper preset runs at tiny size on
FashionMNIST/CIFAR-10 files fabricated in the real formats."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from flatcomp_tutorial.presets import preset, resolve_config
from flatcomp_tutorial.stats import summarize
from flatcomp_tutorial.store import config_key, load_results, read_store
from flatcomp_tutorial.sweeps import sweep

from test_data import _register, cifar10_tarball, fashion_files  # fabricated-download helpers (data tests)

TINY = dict(architectures={"mlp": {"width": 8}},
            train={"epochs": None, "steps": 30, "track_every_epochs": None, "track_every": 15,
                   "late_phase_steps": None, "measures": ["trace_g", "local"], "measure_n": 16})


def tiny_spec(**train):
    spec = preset("cpu", architectures=TINY["architectures"], train=TINY["train"] | train)
    return spec


def test_sweep_stores_one_full_record_per_run_and_resumes(tmp_path):
    store = tmp_path / "r.jsonl"
    grid = {"lr": [0.1, 0.2], "batch_size": [8], "seed": [0]}
    first = sweep(grid, tiny_spec(), store=store, progress=False)
    again = sweep(grid, tiny_spec(), store=store, progress=False)
    assert len(first.ran) == 2 and again.ran == [] and sorted(again.skipped) == sorted(first.ran)
    rec = read_store(store)[0][0]
    assert {"key", "config", "final", "history", "provenance", "diverged", "wall_time"} <= set(rec)
    assert {"package_version", "git_commit", "torch_version", "device"} <= set(rec["provenance"])
    assert rec["config"]["train"]["lr"] == 0.1 and rec["final"]["step"] == 30 and len(rec["history"]) == 3
    df = load_results(store)
    assert list(df.lr) == [0.1, 0.2] and {"trace_g", "mean_log_lvr", "diverged", "history"} <= set(df.columns)



KILL_SCRIPT = """
import sys, json
import torch
from flatcomp_tutorial.sweeps import sweep
torch.set_num_threads(1)
spec, grid = json.loads(sys.argv[2]), json.loads(sys.argv[3])
sweep(grid, spec, store=sys.argv[1], progress=False)
"""


@pytest.mark.integration
def test_killed_sweep_leaves_only_complete_records_and_resumes_without_redoing_them(tmp_path):
    store = tmp_path / "killed.jsonl"
    spec = tiny_spec(steps=200, track_every=200)
    grid = {"lr": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3], "batch_size": [8], "seed": [0]}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(store), json.dumps(spec), json.dumps(grid)],
                            env=dict(os.environ, FLATCOMP_PROGRESS="0"))
    deadline = time.time() + 120
    while not (store.exists() and store.read_bytes().count(b"\n") >= 1) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = store.read_bytes().splitlines()
    assert 1 <= len(lines) < 6
    before = [json.loads(line)["key"] for line in lines]  # every line is a complete record
    resumed = sweep(grid, spec, store=store, progress=False)
    assert resumed.skipped == before and len(resumed.ran) == 6 - len(before)
    keys = [r["key"] for r in read_store(store)[0]]
    assert len(keys) == len(set(keys)) == 6


# --------------------------------------------------------------------------------------- sweep checks and failures
FAST = dict(architectures={"mlp": {"width": 4, "depth": 1}}, datasets={"digits": {"n_train": 20, "n_test": 10}},
            train={"epochs": None, "steps": 2, "track_every_epochs": None, "track_every": 2, "late_phase_steps": None,
                   "measures": None})
FAST_GRID = {"lr": [0.1, 0.2, 0.3], "batch_size": [4], "seed": [0]}


def fast_spec():
    """20 training images, a 64-4-2 MLP, 2 SGD steps, no measures: a run takes a few milliseconds."""
    return preset("cpu", **FAST)


@pytest.fixture
def train_calls(monkeypatch):
    """Records the lr of every call of training.train (the function run_config uses); a call with an lr in
    ``fail_lrs`` raises RuntimeError("boom")."""
    import functools

    from flatcomp_tutorial import training

    real, calls, fail_lrs = training.train, [], set()

    @functools.wraps(real)
    def spy(model, data, **kw):
        calls.append(kw["lr"])
        if kw["lr"] in fail_lrs:
            raise RuntimeError("boom")
        return real(model, data, **kw)

    monkeypatch.setattr(training, "train", spy)
    return calls, fail_lrs


def _nothing_ran(store, calls):
    return calls == [] and (not store.exists() or store.stat().st_size == 0)


@pytest.mark.parametrize("point, match", [
    ({"sed": 0}, r"unknown training option\(s\) \['sed'\]"),
    ({"lr": -0.1}, "lr must be a positive finite number"),
    ({"lr": 0}, "lr must be a positive finite number"),
    ({"lr": float("nan")}, "lr must be a positive finite number"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"batch_size": True}, "batch_size must be a positive integer"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"epochs": 3}, "give exactly one of epochs= or steps="),
    ({"track_every": -1}, "track_every must be a positive number of steps"),
    ({"momentum": -0.5}, "momentum must be a finite number >= 0"),
    ({"measures": ["sharpnesss"]}, "unknown measure 'sharpnesss'"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
])
def test_sweep_refuses_bad_training_options_before_running_anything(tmp_path, train_calls, point, match):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match=match):
        sweep([{"lr": 0.1, "batch_size": 4}, {"lr": 0.1, "batch_size": 4, **point}], fast_spec(), store=store,
                progress=False)
    assert _nothing_ran(store, train_calls[0])


@pytest.mark.parametrize("point, match", [
    ({"model.width": 0}, "width >= 1"),
    ({"model.widht": 8}, r"unknown model option\(s\) \['widht'\]"),
    ({"data.n_trian": 8}, r"unknown data option\(s\) \['n_trian'\]"),
    ({"data.classes": [3, 3]}, "classes must be at least 2 distinct labels"),
])
def test_sweep_refuses_bad_model_and_data_options_before_running_anything(tmp_path, train_calls, point, match):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match=match):
        sweep([{"lr": 0.1, "batch_size": 4}, {"lr": 0.2, "batch_size": 4, **point}], fast_spec(), store=store,
                progress=False)
    assert _nothing_ran(store, train_calls[0])


def test_sweep_refuses_a_batch_size_larger_than_the_training_set(tmp_path, train_calls):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="batch_size=32 is larger than the 20 training samples"):
        sweep({"lr": [0.1], "batch_size": [4, 32], "seed": [0]}, fast_spec(), store=store, progress=False)
    assert _nothing_ran(store, train_calls[0])


def test_sweep_error_lists_each_problem_with_the_grid_points_that_have_it(tmp_path):
    with pytest.raises(ValueError, match=r"2 of 4 configuration\(s\) are invalid; nothing was run") as err:
        sweep({"lr": [0.1, -1.0], "batch_size": [4], "seed": [0, 1]}, fast_spec(), store=tmp_path / "s.jsonl")
    assert "in 2 configuration(s), e.g. [{'lr': -1.0, 'batch_size': 4, 'seed': 0}, {'lr': -1.0" in str(err.value)


def test_sweep_checks_the_store_can_be_appended_to_before_running_anything(tmp_path, train_calls):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match="cannot be opened for appending"):
        sweep(FAST_GRID, fast_spec(), store=tmp_path / "file" / "s.jsonl", progress=False)
    with pytest.raises(OSError, match="cannot be opened for appending"):
        sweep(FAST_GRID, fast_spec(), store=tmp_path, progress=False)  # a folder
    assert train_calls[0] == []


def test_sweep_creates_the_store_folder(tmp_path):
    store = tmp_path / "new" / "dir" / "s.jsonl"
    res = sweep({"lr": [0.1], "batch_size": [4], "seed": [0]}, fast_spec(), store=store, progress=False)
    assert len(res.ran) == 1 and len(read_store(store)[0]) == 1


def test_sweep_records_a_run_that_raises_and_goes_on_with_the_others(tmp_path, train_calls):
    calls, fail_lrs = train_calls
    fail_lrs.add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match=r"failed \(RuntimeError: boom\); recorded as failed"):
        res = sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    assert calls == [0.1, 0.2, 0.3] and len(res.ran) == 2
    assert [(cfg["train"]["lr"], error) for cfg, error in res.failures] == [(0.2, "RuntimeError: boom")]
    failed = [r for r in read_store(store, failed=True)[0] if r.get("failed")]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: boom" and failed[0]["config"]["train"]["lr"] == 0.2


def test_a_failed_run_is_left_out_of_load_results_and_summarize(tmp_path, train_calls):
    train_calls[1].add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match="failed"):
        res = sweep(FAST_GRID | {"lr": [0.1, 0.2, 0.3, 0.4]}, fast_spec(), store=store, progress=False)
    with pytest.warns(RuntimeWarning, match=r"1 run\(s\) .* only have failed records"):
        df = load_results(store)
    assert list(df.lr) == [0.1, 0.3, 0.4] and df.attrs["failed_keys"] == [config_key(res.failures[0][0])]
    assert "error" not in df.columns and "failed" not in df.columns
    s = summarize(df, sharpness=["train_loss"], compression=["test_loss"], phase="final", n_boot=0)
    assert (s.n_runs == 3).all()


def test_the_next_sweep_retries_a_failed_run(tmp_path, train_calls):
    calls, fail_lrs = train_calls
    fail_lrs.add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match="failed"):
        first = sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    fail_lrs.clear()
    again = sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    assert calls == [0.1, 0.2, 0.3, 0.2] and again.failures == [] and sorted(again.skipped) == sorted(first.ran)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_results(store)
    assert sorted(df.lr) == [0.1, 0.2, 0.3] and df.attrs["failed_keys"] == []


def test_sweep_redoes_a_run_whose_stored_line_has_wrong_field_types(tmp_path):
    store = tmp_path / "s.jsonl"
    spec = fast_spec()
    first_key = config_key(resolve_config({"lr": 0.1, "batch_size": 4, "seed": 0}, spec))
    with open(store, "w") as f:
        f.write(json.dumps({"key": first_key, "final": [1]}) + "\n")
    with pytest.warns(RuntimeWarning, match="will be redone"):
        res = sweep(FAST_GRID, spec, store=store, progress=False)
    assert res.ran[0] == first_key and len(res.ran) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_store(store)[0]) == 3


def test_sweep_refuses_a_negative_max_runs():
    with pytest.raises(ValueError, match="max_runs must be an integer >= 0"):
        sweep(FAST_GRID, fast_spec(), max_runs=-1)


@pytest.fixture
def fake_downloads(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    files = fashion_files(rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10,
                          rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10)
    files["cifar10/cifar-10-python.tar.gz"] = cifar10_tarball(
        {name: (rng.integers(0, 256, (20, 3072)), [i % 2 for i in range(20)])
         for name in ("data_batch_1", "test_batch")})
    _register(monkeypatch, tmp_path, files)
    return tmp_path


def test_paper_preset_runs_end_to_end_at_tiny_size_on_fabricated_data(fake_downloads, tmp_path):
    where = {"root": str(fake_downloads), "download": False}
    spec = preset("paper", datasets={"fashion_mnist2": where, "cifar10_2": where},
                    architectures={"mlp": {"width": 8}, "vgg11": {"cfg": [4, "M", 4, "M", 4, "M", 4, "M", 4, "M"]},
                                   "vit": {"patch": 8, "dim": 8, "depth": 1, "heads": 2}},
                    train={"epochs": 1, "measures": ["trace_g", "local", "lambda_max"], "measure_n": 4,
                           "track_every_epochs": 1})
    res = sweep({"arch": ["mlp", "vgg11", "vit"], "lr": [0.01], "batch_size": [4], "seed": [0]}, spec,
                  store=tmp_path / "paper.jsonl", progress=False)
    df = load_results(res.store)
    assert list(df.arch) == ["mlp", "vgg11", "vit"] and list(df.dataset) == ["fashion_mnist2", "cifar10_2", "cifar10_2"]
    assert df[["trace_g", "mean_log_lvr", "lambda_max"]].notna().all().all()
    assert [r["config"]["data"]["name"] for r in read_store(res.store)[0]] == ["fashion_mnist", "cifar10", "cifar10"]


def test_sweep_sets_the_threads_while_it_runs_and_restores_them(tmp_path, monkeypatch):
    from flatcomp_tutorial import sweeps

    seen = []
    real = sweeps.run_config
    monkeypatch.setattr(sweeps, "run_config", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    sweep({"lr": [0.1], "batch_size": [4], "seed": [0]}, fast_spec(), store=tmp_path / "s.jsonl", progress=False,
          threads=2)
    assert seen == [2] and torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, 1.5, True])
def test_sweep_refuses_a_bad_thread_count_before_running_anything(tmp_path, threads):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        sweep(FAST_GRID, fast_spec(), store=tmp_path / "s.jsonl", threads=threads)
    assert not (tmp_path / "s.jsonl").exists()


# ------------------------------------------------------------------------------------- attacks after training
def test_a_robustness_section_records_the_attack_row_and_the_per_input_radii(tmp_path):
    spec = fast_spec()
    spec["robustness"] = dict(eps=1.0, eps_max=4.0, steps=2, bisection=2)
    store = tmp_path / "rob.jsonl"
    sweep({"lr": [0.1], "batch_size": [4], "seed": [0]}, spec, store=store, progress=False)
    rec = read_store(store)[0][0]
    assert rec["config"]["robustness"] == spec["robustness"]
    assert {"pgd_success", "median_radius", "inputs_mean_mls"} <= set(rec["robustness"])
    assert {"pgd", "segment", "empirical", "mls_bound"} <= set(rec["radii"])
    assert all(len(v) == 10 for v in rec["radii"].values())            # one per test input
    row = load_results(store).iloc[0]
    assert row.pgd_success == rec["robustness"]["pgd_success"] and isinstance(row.radii["pgd"], np.ndarray)


def test_a_spec_without_robustness_keeps_the_configuration_and_key_of_earlier_stores():
    spec = fast_spec()
    plain = resolve_config({"lr": 0.1, "batch_size": 4}, spec)
    spec["robustness"] = dict(eps=1.0, eps_max=4.0)
    attacked = resolve_config({"lr": 0.1, "batch_size": 4}, spec)
    assert "robustness" not in plain and config_key(attacked) != config_key(plain)


@pytest.mark.parametrize("options, match", [
    (dict(eps=1.0), "robustness must be a dict with eps and eps_max"),
    (dict(eps=1.0, eps_max=4.0, radius=2), "robustness must be a dict with eps and eps_max"),
    (dict(eps=-1.0, eps_max=4.0), "robustness eps"),
    (dict(eps=2.0, eps_max=1.0), r"robustness eps_max \(1\) must be >= eps \(2\)"),
    (dict(eps=1.0, eps_max=4.0, steps=0), "robustness steps"),
])
def test_sweep_refuses_bad_robustness_options_before_running_anything(tmp_path, train_calls, options, match):
    spec = fast_spec()
    spec["robustness"] = options
    with pytest.raises(ValueError, match=match):
        sweep(FAST_GRID, spec, store=tmp_path / "r.jsonl", progress=False)
    assert _nothing_ran(tmp_path / "r.jsonl", train_calls[0])


def test_a_float64_model_and_data_can_be_named_in_a_preset(tmp_path):
    spec = preset("cpu", **{**FAST, "datasets": {"digits": {"n_train": 20, "n_test": 10, "dtype": "float64"}},
                            "architectures": {"mlp": {"width": 4, "depth": 1, "dtype": "float64"}}})
    store = tmp_path / "f64.jsonl"
    sweep({"lr": [0.1], "batch_size": [4], "seed": [0]}, spec, store=store, progress=False)
    assert read_store(store)[0][0]["config"]["model"]["dtype"] == "float64"
