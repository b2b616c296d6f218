"""Sweeps, the JSON Lines result store (atomic appends, resume after a kill), summaries and presets; the papermill
batch runner. The paper preset runs at tiny size on FashionMNIST/CIFAR-10 files fabricated in the real formats."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import nbformat
import numpy as np
import pandas as pd
import pytest

import torch

import flatcomp_tutorial as fc
from flatcomp_tutorial import batch as B
from flatcomp_tutorial import experiments as E
from flatcomp_tutorial.checks import dense_layers

from test_data import _idx_bytes, _register  # the fabricated-download helpers of the data tests



TINY = dict(architectures={"mlp": {"width": 8}},
            train={"epochs": None, "steps": 30, "track_every_epochs": None, "track_every": 15,
                   "late_phase_steps": None, "measures": ["trace_g", "local"], "measure_n": 16})


def tiny_spec(**train):
    spec = E.preset("cpu", architectures=TINY["architectures"], train=TINY["train"] | train)
    return spec


# ----------------------------------------------------------------------------------------------------- grids
def test_dict_grid_is_the_cartesian_product_and_list_grid_is_taken_as_is():
    assert E.grid_configs({"lr": [0.1, 0.2], "seed": [0, 1, 2]}) == [
        {"lr": lr, "seed": s} for lr in (0.1, 0.2) for s in (0, 1, 2)]
    assert E.grid_configs([{"lr": 0.1}, {"lr": 0.3, "arch": "vit"}]) == [{"lr": 0.1}, {"lr": 0.3, "arch": "vit"}]
    with pytest.raises(ValueError, match=r"grid\['lr'\] must be a list"):
        E.grid_configs({"lr": 0.1})


def test_config_key_changes_with_the_run_but_not_with_the_data_location():
    spec = E.preset("cpu")
    a = E.resolve_config({"lr": 0.1, "batch_size": 8, "seed": 0}, spec)
    b = E.resolve_config({"lr": 0.2, "batch_size": 8, "seed": 0}, spec)
    moved = json.loads(json.dumps(a))
    moved["data"]["root"] = "/elsewhere"
    assert E.config_key(a) != E.config_key(b) and E.config_key(a) == E.config_key(moved)


def test_grid_points_override_model_data_and_training_options():
    cfg = E.resolve_config({"arch": "vit", "lr": 0.1, "batch_size": 4, "model.dim": 8, "data.classes": [0, 1],
                            "label_noise": 0.1}, E.preset("cpu"))
    assert cfg["model"]["kind"] == "vit" and cfg["model"]["dim"] == 8
    assert cfg["data"]["classes"] == [0, 1] and cfg["train"]["label_noise"] == 0.1


@pytest.mark.parametrize("call, match", [
    (lambda: E.preset("gpu"), "preset must be one of"),
    (lambda: E.resolve_config({"arch": "resnet", "lr": 0.1, "batch_size": 8}, E.preset("cpu")), "arch must be one of"),
    (lambda: E.resolve_config({"lr": 0.1}, E.preset("cpu")), "has no 'batch_size'"),
    (lambda: E.summarize(pd.DataFrame(), phase="middle"), "phase must be one of"),
])
def test_bad_sweep_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------------------------------- store
def test_store_skips_and_reports_a_truncated_last_line_and_appends_after_it(tmp_path):
    store = tmp_path / "s.jsonl"
    E.append_record(store, {"key": "a", "x": 1.0})
    with open(store, "ab") as f:
        f.write(b'{"key": "b", "x": 2')  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="skipped 1 truncated"):
        records, bad = E.read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [2]
    E.append_record(store, {"key": "c", "x": float("nan")})
    records, bad = E.read_store(store, warn=False)
    assert [r["key"] for r in records] == ["a", "c"] and bad == [2] and np.isnan(records[1]["x"])

def test_store_round_trips_nan_and_both_infinities_exactly(tmp_path):
    store = tmp_path / "s.jsonl"
    E.append_record(store, {"key": "a", "final": {"neg": -np.inf, "pos": np.inf, "nan": np.nan, "x": 0.25},
                            "history": [{"mean_log_lvr": -np.inf}]})
    assert b"-Infinity" in store.read_bytes() and b"null" not in store.read_bytes()
    rec = E.read_store(store)[0][0]
    assert rec["final"]["neg"] == -np.inf and rec["final"]["pos"] == np.inf and np.isnan(rec["final"]["nan"])
    assert rec["history"][0]["mean_log_lvr"] == -np.inf
    np.testing.assert_allclose(rec["final"]["x"], 0.25, rtol=1e-15, atol=0)


def test_load_results_keeps_a_minus_inf_final_metric(tmp_path):
    store = tmp_path / "s.jsonl"
    E.record(store, {"lr": 0.1}, {"mean_log_lvr": float("-inf"), "trace_h": 1.5}, key="a")
    df = E.load_results(store)
    assert df.mean_log_lvr.iloc[0] == -np.inf and np.isclose(df.trace_h.iloc[0], 1.5)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_store_writes_tensors_as_numbers_and_lists_not_strings(tmp_path, device):
    store = tmp_path / "s.jsonl"
    w = torch.tensor([[1.0, -2.0], [0.5, float("-inf")]], dtype=torch.float64, device=device, requires_grad=True)
    E.append_record(store, {"key": "a", "final": {"loss": (w[0, 0] * 0.5), "w": w, "n": torch.tensor(3, device=device),
                                                  "ok": torch.tensor(True, device=device)}})
    assert b"tensor" not in store.read_bytes()
    final = E.read_store(store)[0][0]["final"]
    assert isinstance(final["loss"], float) and final["n"] == 3 and final["ok"] is True
    np.testing.assert_allclose(final["loss"], 0.5, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.array(final["w"]), w.detach().cpu().numpy(), rtol=1e-12, atol=1e-12)


def test_store_writes_numpy_arrays_and_scalars_as_numbers_and_lists(tmp_path):
    store = tmp_path / "s.jsonl"
    E.append_record(store, {"key": "a", "final": {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                                  "f": np.float32(0.5), "i": np.int64(7), "b": np.bool_(False),
                                                  "z": np.array(2.5)}})
    assert b"array" not in store.read_bytes()
    final = E.read_store(store)[0][0]["final"]
    assert final["a"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and final["i"] == 7 and final["b"] is False
    np.testing.assert_allclose([final["f"], final["z"]], [0.5, 2.5], rtol=1e-12, atol=0)


def test_append_record_refuses_complex_numbers(tmp_path):
    with pytest.raises(TypeError, match="real numbers only"):
        E.append_record(tmp_path / "s.jsonl", {"key": "a", "final": {"z": torch.tensor(1 + 2j)}})


BAD_FIELDS = [
    ({"final": [1]}, "'final' must be a JSON object"),
    ({"config": "x"}, "'config' must be a JSON object"),
    ({"config": {"train": [1]}}, "'config.train' must be a JSON object"),
    ({"history": [1, 2]}, "'history' must be a list of JSON objects"),
    ({"history": {"step": 0}}, "'history' must be a list of JSON objects"),
    ({"diverged": "no"}, "'diverged' must be true, false or null"),
    ({"key": 5}, "'key' must be a non-empty string"),
]


@pytest.mark.parametrize("fields, why", BAD_FIELDS)
def test_read_store_skips_and_reports_well_formed_lines_with_wrong_field_types(tmp_path, fields, why):
    store = tmp_path / "s.jsonl"
    E.append_record(store, {"key": "a", "final": {"x": 1.0}})
    with open(store, "a") as f:
        f.write(json.dumps({"key": "b", "config": {}, "final": {"x": 2.0}, "history": [], **fields}) + "\n")
    with pytest.warns(RuntimeWarning, match=f"skipped 1 truncated or unreadable line.*{why}.*will be redone"):
        records, bad = E.read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [2]


@pytest.mark.parametrize("fields, why", BAD_FIELDS[:4])
def test_load_results_and_summarize_survive_a_line_with_wrong_field_types(tmp_path, fields, why):
    store = tmp_path / "s.jsonl"
    for i in range(4):
        E.record(store, {"lr": 0.1 * (i + 1)}, {"trace_h": float(i)}, history=[{"trace_h": float(i), "nmls": i ** 2}],
                 key=str(i))
    with open(store, "a") as f:
        f.write(json.dumps({"key": "bad", **fields}) + "\n")
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        df = E.load_results(store)
    assert list(df.key) == ["0", "1", "2", "3"] and df.attrs["skipped_lines"] == [5]
    s = E.summarize(df, sharpness=["trace_h"], compression=["nmls"], phase="final", n_boot=0)
    assert (s.n == 4).all()


def test_read_store_stops_warning_about_a_truncated_run_once_it_has_been_redone(tmp_path):
    store = tmp_path / "s.jsonl"
    with open(store, "wb") as f:
        f.write(b'{"key":"a","config":{"train":{"lr":0.1')  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="will be redone"):
        E.read_store(store)
    E.append_record(store, {"key": "a", "final": {"x": 1.0}})  # the next sweep redid it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, bad = E.read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [1]


def test_read_store_stops_warning_about_an_ill_typed_run_once_it_has_been_redone(tmp_path):
    store = tmp_path / "s.jsonl"
    with open(store, "w") as f:
        f.write(json.dumps({"key": "a", "final": [1]}) + "\n")
    E.append_record(store, {"key": "a", "final": {"x": 1.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, bad = E.read_store(store)
    assert [r["final"] for r in records] == [{"x": 1.0}] and bad == [1]


def test_append_record_refuses_a_record_that_readers_would_skip(tmp_path):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="'history' must be a list of JSON objects"):
        E.append_record(store, {"key": "a", "history": [0.1, 0.2]})
    assert not store.exists()


def test_record_refuses_a_history_that_is_not_a_sequence_of_dicts(tmp_path):
    with pytest.raises(ValueError, match="history must be a DataFrame or a sequence of dicts"):
        E.record(tmp_path / "s.jsonl", {"lr": 0.1}, {"loss": 0.1}, history=[0.5, 0.4])


def test_load_results_warns_about_conflicting_duplicates_and_uses_the_first(tmp_path):
    store = tmp_path / "s.jsonl"
    E.record(store, {"lr": 0.1}, {"loss": 0.5}, key="k1")
    E.record(store, {"lr": 0.1}, {"loss": 0.7}, key="k1")
    with pytest.warns(RuntimeWarning, match="'k1': 1 later record.*uses the FIRST record"):
        df = E.load_results(store)
    assert len(df) == 1 and np.isclose(df.loss.iloc[0], 0.5) and df.attrs["conflicting_keys"] == ["k1"]


def test_load_results_keeps_identical_duplicates_quiet(tmp_path):
    store = tmp_path / "s.jsonl"
    for _ in range(2):
        E.record(store, {"lr": 0.1}, {"loss": float("nan")}, history=[{"loss": float("nan")}], key="k1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = E.load_results(store)
    assert len(df) == 1 and df.attrs["duplicate_keys"] == ["k1"] and df.attrs["conflicting_keys"] == []


def test_sweep_stores_one_full_record_per_run_and_resumes(tmp_path):
    store = tmp_path / "r.jsonl"
    grid = {"lr": [0.1, 0.2], "batch_size": [8], "seed": [0]}
    first = E.sweep(grid, tiny_spec(), store=store, progress=False)
    again = E.sweep(grid, tiny_spec(), store=store, progress=False)
    assert len(first.ran) == 2 and again.ran == [] and sorted(again.skipped) == sorted(first.ran)
    rec = E.read_store(store)[0][0]
    assert {"key", "config", "final", "history", "provenance", "diverged", "wall_time"} <= set(rec)
    assert {"package_version", "git_commit", "torch_version", "device"} <= set(rec["provenance"])
    assert rec["config"]["train"]["lr"] == 0.1 and rec["final"]["step"] == 30 and len(rec["history"]) == 3
    df = E.load_results(store)
    assert list(df.lr) == [0.1, 0.2] and {"trace_g", "mean_log_lvr", "diverged", "history"} <= set(df.columns)


KILL_SCRIPT = """
import sys, json
import torch
import flatcomp_tutorial.experiments as E
torch.set_num_threads(1)
spec, grid = json.loads(sys.argv[2]), json.loads(sys.argv[3])
E.sweep(grid, spec, store=sys.argv[1], progress=False)
"""


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
    resumed = E.sweep(grid, spec, store=store, progress=False)
    assert resumed.skipped == before and len(resumed.ran) == 6 - len(before)
    keys = [r["key"] for r in E.read_store(store)[0]]
    assert len(keys) == len(set(keys)) == 6

# --------------------------------------------------------------------------------------- sweep checks and failures
FAST = dict(architectures={"mlp": {"width": 4, "depth": 1}}, datasets={"digits": {"n_train": 20, "n_test": 10}},
            train={"epochs": None, "steps": 2, "track_every_epochs": None, "track_every": 2, "late_phase_steps": None,
                   "measures": None})
FAST_GRID = {"lr": [0.1, 0.2, 0.3], "batch_size": [4], "seed": [0]}


def fast_spec():
    """20 training images, a 64-4-2 MLP, 2 SGD steps, no measures: a run takes a few milliseconds."""
    return E.preset("cpu", **FAST)


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
        E.sweep([{"lr": 0.1, "batch_size": 4}, {"lr": 0.1, "batch_size": 4, **point}], fast_spec(), store=store,
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
        E.sweep([{"lr": 0.1, "batch_size": 4}, {"lr": 0.2, "batch_size": 4, **point}], fast_spec(), store=store,
                progress=False)
    assert _nothing_ran(store, train_calls[0])


def test_sweep_refuses_a_batch_size_larger_than_the_training_set(tmp_path, train_calls):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="batch_size=32 is larger than the 20 training samples"):
        E.sweep({"lr": [0.1], "batch_size": [4, 32], "seed": [0]}, fast_spec(), store=store, progress=False)
    assert _nothing_ran(store, train_calls[0])


def test_sweep_error_lists_each_problem_with_the_grid_points_that_have_it(tmp_path):
    with pytest.raises(ValueError, match=r"2 of 4 configuration\(s\) are invalid; nothing was run") as err:
        E.sweep({"lr": [0.1, -1.0], "batch_size": [4], "seed": [0, 1]}, fast_spec(), store=tmp_path / "s.jsonl")
    assert "in 2 configuration(s), e.g. [{'lr': -1.0, 'batch_size': 4, 'seed': 0}, {'lr': -1.0" in str(err.value)


def test_sweep_checks_the_store_can_be_appended_to_before_running_anything(tmp_path, train_calls):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match="cannot be opened for appending"):
        E.sweep(FAST_GRID, fast_spec(), store=tmp_path / "file" / "s.jsonl", progress=False)
    with pytest.raises(OSError, match="cannot be opened for appending"):
        E.sweep(FAST_GRID, fast_spec(), store=tmp_path, progress=False)  # a folder
    assert train_calls[0] == []


def test_sweep_creates_the_store_folder(tmp_path):
    store = tmp_path / "new" / "dir" / "s.jsonl"
    res = E.sweep({"lr": [0.1], "batch_size": [4], "seed": [0]}, fast_spec(), store=store, progress=False)
    assert len(res.ran) == 1 and len(E.read_store(store)[0]) == 1


def test_sweep_records_a_run_that_raises_and_goes_on_with_the_others(tmp_path, train_calls):
    calls, fail_lrs = train_calls
    fail_lrs.add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match=r"failed \(RuntimeError: boom\); recorded as failed"):
        res = E.sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    assert calls == [0.1, 0.2, 0.3] and len(res.ran) == 2
    assert [(cfg["train"]["lr"], error) for cfg, error in res.failures] == [(0.2, "RuntimeError: boom")]
    failed = [r for r in E.read_store(store, failed=True)[0] if r.get("failed")]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: boom" and failed[0]["config"]["train"]["lr"] == 0.2


def test_a_failed_run_is_left_out_of_load_results_and_summarize(tmp_path, train_calls):
    train_calls[1].add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match="failed"):
        res = E.sweep(FAST_GRID | {"lr": [0.1, 0.2, 0.3, 0.4]}, fast_spec(), store=store, progress=False)
    with pytest.warns(RuntimeWarning, match=r"1 run\(s\) .* only have failed records"):
        df = E.load_results(store)
    assert list(df.lr) == [0.1, 0.3, 0.4] and df.attrs["failed_keys"] == [E.config_key(res.failures[0][0])]
    assert "error" not in df.columns and "failed" not in df.columns
    s = E.summarize(df, sharpness=["train_loss"], compression=["test_loss"], phase="final", n_boot=0)
    assert (s.n_runs == 3).all()


def test_the_next_sweep_retries_a_failed_run(tmp_path, train_calls):
    calls, fail_lrs = train_calls
    fail_lrs.add(0.2)
    store = tmp_path / "s.jsonl"
    with pytest.warns(RuntimeWarning, match="failed"):
        first = E.sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    fail_lrs.clear()
    again = E.sweep(FAST_GRID, fast_spec(), store=store, progress=False)
    assert calls == [0.1, 0.2, 0.3, 0.2] and again.failures == [] and sorted(again.skipped) == sorted(first.ran)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = E.load_results(store)
    assert sorted(df.lr) == [0.1, 0.2, 0.3] and df.attrs["failed_keys"] == []


def test_sweep_redoes_a_run_whose_stored_line_has_wrong_field_types(tmp_path):
    store = tmp_path / "s.jsonl"
    spec = fast_spec()
    first_key = E.config_key(E.resolve_config({"lr": 0.1, "batch_size": 4, "seed": 0}, spec))
    with open(store, "w") as f:
        f.write(json.dumps({"key": first_key, "final": [1]}) + "\n")
    with pytest.warns(RuntimeWarning, match="will be redone"):
        res = E.sweep(FAST_GRID, spec, store=store, progress=False)
    assert res.ran[0] == first_key and len(res.ran) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(E.read_store(store)[0]) == 3


def test_sweep_refuses_a_negative_max_runs():
    with pytest.raises(ValueError, match="max_runs must be an integer >= 0"):
        E.sweep(FAST_GRID, fast_spec(), max_runs=-1)


# ------------------------------------------------------------------------------------------------- summaries
def fake_results(n_runs=12, seed=0):
    """Runs whose checkpoints satisfy mls = 0.1·trace_h + noise and local_dim independent of trace_h."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_runs):
        tr = rng.uniform(1, 10, size=3)
        hist = [dict(step=s, phase=ph, trace_h=t, mean_mls=0.1 * t + 0.01 * rng.normal(),
                     mean_local_dim=rng.uniform(1, 2))
                for s, ph, t in zip((0, 10, 20), ("early", "late", "late"), tr)]
        runs.append(dict(key=str(i), diverged=(i == 0), history=hist))
    return pd.DataFrame(runs)


def test_summarize_gives_both_correlations_with_bootstrap_cis_over_runs():
    s = E.summarize(fake_results(), sharpness=["trace_h"], compression=["mean_mls", "mean_local_dim"], phase="late",
                    n_boot=200)
    mls = s[(s.compression == "mean_mls")].set_index("method")
    assert mls.loc["spearman", "r"] > 0.95 and mls.loc["pearson", "ci_low"] > 0.9
    assert (mls.n == 22).all() and (mls.n_runs == 11).all() and (s.phase == "late").all()  # diverged run left out
    dim = s[(s.compression == "mean_local_dim") & (s.method == "spearman")].iloc[0]
    assert dim.ci_low < dim.r < dim.ci_high and dim.ci_low < 0 < dim.ci_high


def test_summarize_matched_phase_takes_the_first_late_checkpoint_of_each_run():
    res = fake_results()
    rows = E._rows_for_phase(res, "matched")
    assert list(rows.step) == [10] * 11 and list(rows._run) == list(range(1, 12))
    s = E.summarize(res, sharpness=["trace_h", "lambda_max"], compression=["mean_mls"], n_boot=10)
    assert set(s.sharpness) == {"trace_h"} and s.attrs["missing_columns"] == ["lambda_max"]


def test_correlations_of_a_flat_table_match_scipy_and_bracket_r_with_the_bootstrap_interval():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    t = pd.DataFrame({"a": a, "b": a + 0.5 * rng.normal(size=40), "c": rng.normal(size=40)})
    out = E.correlations(t, ["a"], ["b", "c"], n_boot=300).set_index(["y", "method"])
    assert np.isclose(out.loc[("b", "pearson"), "r"], pearsonr(t.a, t.b)[0])
    assert np.isclose(out.loc[("c", "spearman"), "r"], spearmanr(t.a, t.c)[0])
    assert (out.ci_low <= out.r).all() and (out.r <= out.ci_high).all() and (out.n == 40).all()


def test_correlations_drop_non_finite_rows_and_resample_whole_groups():
    t = pd.DataFrame({"a": [1.0, 2, 3, 4, np.inf, 6], "b": [1.0, 2, 3, 4, 5, np.nan], "g": [0, 0, 1, 1, 2, 2]})
    with pytest.warns(UserWarning, match="bootstrap needs at least 3"):
        out = E.correlations(t, ["a"], ["b"], groups="g", n_boot=20)
    out = out.set_index("method")
    # Pearson: rows 0-3 (inf and NaN rows out), 2 groups: no CI; Spearman keeps the +inf row: 5 rows, 3 groups
    assert out.loc["pearson", "n"] == 4 and out.loc["pearson", "n_groups"] == 2
    assert np.isnan(out.loc["pearson", "ci_low"])
    assert out.loc["spearman", "n"] == 5 and out.loc["spearman", "n_groups"] == 3
    assert np.isfinite(out.loc["spearman", "ci_low"])


def test_correlations_warn_and_return_nan_with_fewer_than_three_rows():
    with pytest.warns(UserWarning, match="at least 3"):
        out = E.correlations(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 1.0]}), ["a"], ["b"])
    assert out.r.isna().all()


def test_correlations_name_a_missing_column():
    with pytest.raises(ValueError, match="no column"):
        E.correlations(pd.DataFrame({"a": [1.0]}), ["a"], ["zz"])

# ------------------------------------------------------------------------------------ non-finite values in statistics
def _log_volume_table(n=12, n_neg_inf=3, seed=0):
    """y = log volume that grows with x; its n_neg_inf smallest-x rows are -inf (rank-deficient maps)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 1, n))
    y = np.log(x + 0.1) + 0.05 * rng.normal(size=n)
    y[:n_neg_inf] = -np.inf
    return pd.DataFrame({"trace_h": x, "mean_log_lvr": y, "g": np.arange(n)})


def test_spearman_ranks_minus_inf_lowest_and_uses_every_row():
    from scipy.stats import spearmanr

    t = _log_volume_table()
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 3 -inf of 12"):
        sp = E.correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=50).set_index("method").loc["spearman"]
    lowest = t.mean_log_lvr.replace(-np.inf, t.mean_log_lvr[np.isfinite(t.mean_log_lvr)].min() - 1)
    np.testing.assert_allclose(sp.r, spearmanr(t.trace_h, lowest)[0], rtol=1e-12, atol=1e-12)
    assert sp.n == 12 and sp.n_excluded == 0 and np.isfinite(sp.ci_low)


def test_pearson_leaves_out_minus_inf_rows_and_counts_them():
    from scipy.stats import pearsonr

    t = _log_volume_table()
    with pytest.warns(RuntimeWarning, match="left out of Pearson"):
        pe = E.correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=50).set_index("method").loc["pearson"]
    finite = t.iloc[3:]
    np.testing.assert_allclose(pe.r, pearsonr(finite.trace_h, finite.mean_log_lvr)[0], rtol=1e-12, atol=1e-12)
    assert pe.n == 9 and pe.n_excluded == 3 and np.isfinite(pe.r) and np.isfinite(pe.ci_low)


def test_correlations_leave_nan_rows_out_of_both_methods_and_count_them():
    t = _log_volume_table(n_neg_inf=0)
    t.loc[[2, 5], "mean_log_lvr"] = np.nan
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 2 NaN of 12"):
        out = E.correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=0)
    assert (out.n == 10).all() and (out.n_excluded == 2).all() and out.r.notna().all()


def test_one_columns_infinities_do_not_remove_rows_from_other_pairs():
    t = _log_volume_table().assign(mean_mls=lambda d: 2 * d.trace_h)
    with pytest.warns(RuntimeWarning):
        out = E.correlations(t, ["trace_h"], ["mean_log_lvr", "mean_mls"], n_boot=0)
    mls = out[out.y == "mean_mls"]
    assert (mls.n == 12).all() and (mls.n_excluded == 0).all()
    np.testing.assert_allclose(mls.r, 1.0, rtol=1e-12, atol=1e-12)


def test_correlations_warn_when_r_is_undefined_for_a_constant_column():
    t = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0] * 4})
    with pytest.warns(UserWarning, match="r is undefined .* a column is constant"):
        out = E.correlations(t, ["a"], ["b"], n_boot=0)
    assert out.r.isna().all()


def _results_with_log_volumes(n_runs=10, n_neg_inf=3):
    """One late checkpoint per run; mean_log_lvr = -inf in the first n_neg_inf runs (the flattest)."""
    runs = []
    for i in range(n_runs):
        lvr = -np.inf if i < n_neg_inf else np.log(1.0 + i)
        runs.append(dict(key=str(i), diverged=False,
                         history=[dict(step=10, phase="late", trace_h=1.0 + i, mean_log_lvr=lvr)]))
    return pd.DataFrame(runs)


def test_summarize_keeps_minus_inf_log_volumes_for_spearman_and_reports_them_excluded_for_pearson():
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 3 -inf of 10"):
        s = E.summarize(_results_with_log_volumes(), sharpness=["trace_h"], compression=["mean_log_lvr"], n_boot=50)
    s = s.set_index("method")
    assert "n_excluded" in s.columns and s.r.notna().all()
    assert s.loc["spearman", "n"] == 10 and s.loc["spearman", "n_excluded"] == 0
    ranks = [2, 2, 2, 4, 5, 6, 7, 8, 9, 10]  # the three -inf tie for the lowest ranks
    np.testing.assert_allclose(s.loc["spearman", "r"], np.corrcoef(np.arange(1, 11), ranks)[0, 1], rtol=1e-12,
                               atol=1e-12)
    assert s.loc["pearson", "n"] == 7 and s.loc["pearson", "n_excluded"] == 3 and s.loc["pearson", "n_runs"] == 7


def test_minus_inf_log_volume_survives_the_store_into_summarize(tmp_path):
    store = tmp_path / "s.jsonl"
    for _, run in _results_with_log_volumes().iterrows():
        E.record(store, {"lr": 0.1}, run.history[-1], history=run.history, key=run.key)
    df = E.load_results(store)
    with pytest.warns(RuntimeWarning, match="3 -inf"):
        s = E.summarize(df, sharpness=["trace_h"], compression=["mean_log_lvr"], phase="final", n_boot=0)
    assert list(s.n) == [7, 10] and list(s.n_excluded) == [3, 0]


def test_checkpoint_correlations_count_excluded_minus_inf_checkpoints():
    h = pd.DataFrame({"phase": ["late"] * 8, "trace_g": np.arange(8.0),
                      "mean_log_lvr": [-np.inf, -np.inf, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 2 -inf"):
        out = E.checkpoint_correlations(h, sharpness=["trace_g"], compression=["mean_log_lvr"], n_boot=0)
    out = out.set_index("method")
    assert out.loc["pearson", "n_checkpoints"] == 6 and out.loc["pearson", "n_excluded"] == 2
    assert out.loc["spearman", "n_checkpoints"] == 8 and out.loc["spearman", "n_excluded"] == 0


def test_summarize_leaves_out_and_reports_a_run_whose_history_is_not_a_list_of_dicts():
    res = fake_results()
    res.at[3, "history"] = "garbled"
    with pytest.warns(RuntimeWarning, match=r"1 run\(s\) \['3'\] left out: their history is not a list"):
        s = E.summarize(res, sharpness=["trace_h"], compression=["mean_mls"], phase="late", n_boot=0)
    assert (s.n_runs == 10).all() and s.attrs["excluded_runs"] == 2


# ------------------------------------------------------------------------------------------------- presets
def test_presets_hold_the_papers_and_the_cpu_grids():
    paper, cpu = E.preset("paper"), E.preset("cpu")
    assert paper["grid"]["lr"] == [0.01, 0.02, 0.05, 0.1] and paper["grid"]["batch_size"] == [16, 32, 64, 128, 256]
    assert paper["train"]["optimizer"] == "sgd" and paper["train"]["momentum"] == paper["train"]["weight_decay"] == 0
    assert paper["architectures"]["vgg11"]["cfg"] == "vgg11" and paper["datasets"]["cifar10_2"]["classes"] == [0, 1]
    mlp = fc.make_model(**{k: v for k, v in paper["architectures"]["mlp"].items() if k != "dataset"},
                        input_shape=(1, 28, 28), n_out=2)
    assert [(l.in_features, l.out_features) for _, l in dense_layers(mlp)] == [(784, 512), (512, 512), (512, 2)]
    pairs = {(c["lr"], c["batch_size"]) for c in E.grid_configs(cpu["grid"])}
    assert len(pairs) >= 12 and len(E.grid_configs(cpu["grid"])) == 2 * len(pairs)
    assert set(cpu["architectures"]) == {"mlp", "lenet", "vit"}


@pytest.fixture
def fake_downloads(tmp_path, monkeypatch):
    import gzip  # noqa: F401
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(0)
    files = {
        "fashion_mnist/train-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 256, (40, 28, 28))),
        "fashion_mnist/train-labels-idx1-ubyte.gz": _idx_bytes(np.arange(40) % 10),
        "fashion_mnist/t10k-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 256, (20, 28, 28))),
        "fashion_mnist/t10k-labels-idx1-ubyte.gz": _idx_bytes(np.arange(20) % 10),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            blob = pickle.dumps({b"data": rng.integers(0, 256, (20, 3072)).astype(np.uint8),
                                 b"labels": [i % 2 for i in range(20)]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    files["cifar10/cifar-10-python.tar.gz"] = buf.getvalue()
    _register(monkeypatch, tmp_path, files)
    return tmp_path


def test_paper_preset_runs_end_to_end_at_tiny_size_on_fabricated_data(fake_downloads, tmp_path):
    where = {"root": str(fake_downloads), "download": False}
    spec = E.preset("paper", datasets={"fashion_mnist2": where, "cifar10_2": where},
                    architectures={"mlp": {"width": 8}, "vgg11": {"cfg": [4, "M", 4, "M", 4, "M", 4, "M", 4, "M"]},
                                   "vit": {"patch": 8, "dim": 8, "depth": 1, "heads": 2}},
                    train={"epochs": 1, "measures": ["trace_g", "local", "lambda_max"], "measure_n": 4,
                           "track_every_epochs": 1})
    res = E.sweep({"arch": ["mlp", "vgg11", "vit"], "lr": [0.01], "batch_size": [4], "seed": [0]}, spec,
                  store=tmp_path / "paper.jsonl", progress=False)
    df = E.load_results(res.store)
    assert list(df.arch) == ["mlp", "vgg11", "vit"] and list(df.dataset) == ["fashion_mnist2", "cifar10_2", "cifar10_2"]
    assert df[["trace_g", "mean_log_lvr", "lambda_max"]].notna().all().all()
    assert [r["config"]["data"]["name"] for r in E.read_store(res.store)[0]] == ["fashion_mnist", "cifar10", "cifar10"]


# ------------------------------------------------------------------------------------------------- papermill batch
def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("lr = 0.1\nseed = 0\nresults_store = None\nrun_key = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params,
                nbformat.v4.new_code_cell("import os\nfinal_loss = lr * (seed + 1)\ncwd = os.getcwd()"),
                nbformat.v4.new_code_cell(
                    "from flatcomp_tutorial.experiments import record\n"
                    "record(results_store, dict(lr=lr, seed=seed), dict(final_loss=final_loss, cwd=cwd,\n"
                    "       progress=os.environ.get('FLATCOMP_PROGRESS')), key=run_key)")]
    nbformat.write(nb, path)


def test_batch_runs_a_notebook_once_per_configuration_and_collects_records(tmp_path):
    (tmp_path / "book").mkdir()
    nb = tmp_path / "book" / "chapter.ipynb"
    _notebook(nb)
    store, out = tmp_path / "results.jsonl", tmp_path / "out"
    grid = B.parse_grid(["lr=0.05,0.1", "seed=1"])
    assert grid == {"lr": [0.05, 0.1], "seed": [1]}
    first = B.run_batch(nb, grid, out, store)
    again = B.run_batch(nb, grid, out, store)
    assert len(first.ran) == 2 and again.ran == [] and len(again.skipped) == 2
    recs = E.read_store(store)[0]
    assert sorted(r["final"]["final_loss"] for r in recs) == [0.1, 0.2]
    assert {r["final"]["cwd"] for r in recs} == {str(nb.parent)} and {r["final"]["progress"] for r in recs} == {"0"}
    assert len(list(out.glob("chapter-*.ipynb"))) == 2


def test_batch_grid_syntax_errors_name_the_expected_form():
    with pytest.raises(ValueError, match="name=v1,v2"):
        B.parse_grid(["lr"])
