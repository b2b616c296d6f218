"""Specification of flatcomp_tutorial.store: the JSON Lines result store (atomic appends, exact NaN/±inf, records
skipped and reported when truncated or ill-typed, resume after a kill), run keys and provenance."""
import json
import warnings

import numpy as np
import pytest
import torch

from flatcomp_tutorial.presets import preset, resolve_config
from flatcomp_tutorial.stats import summarize
from flatcomp_tutorial.store import append_record, config_key, load_results, read_store, record

from test_stats import _results_with_log_volumes  # runs with -inf log volumes


def test_config_key_changes_with_the_run_but_not_with_the_data_location():
    spec = preset("cpu")
    a = resolve_config({"lr": 0.1, "batch_size": 8, "seed": 0}, spec)
    b = resolve_config({"lr": 0.2, "batch_size": 8, "seed": 0}, spec)
    moved = json.loads(json.dumps(a))
    moved["data"]["root"] = "/elsewhere"
    assert config_key(a) != config_key(b) and config_key(a) == config_key(moved)



def test_store_skips_and_reports_a_truncated_last_line_and_appends_after_it(tmp_path):
    store = tmp_path / "s.jsonl"
    append_record(store, {"key": "a", "x": 1.0})
    with open(store, "ab") as f:
        f.write(b'{"key": "b", "x": 2')  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="skipped 1 truncated"):
        records, bad = read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [2]
    append_record(store, {"key": "c", "x": float("nan")})
    records, bad = read_store(store, warn=False)
    assert [r["key"] for r in records] == ["a", "c"] and bad == [2] and np.isnan(records[1]["x"])

def test_store_round_trips_nan_and_both_infinities_exactly(tmp_path):
    store = tmp_path / "s.jsonl"
    append_record(store, {"key": "a", "final": {"neg": -np.inf, "pos": np.inf, "nan": np.nan, "x": 0.25},
                            "history": [{"mean_log_lvr": -np.inf}]})
    assert b"-Infinity" in store.read_bytes() and b"null" not in store.read_bytes()
    rec = read_store(store)[0][0]
    assert rec["final"]["neg"] == -np.inf and rec["final"]["pos"] == np.inf and np.isnan(rec["final"]["nan"])
    assert rec["history"][0]["mean_log_lvr"] == -np.inf
    np.testing.assert_allclose(rec["final"]["x"], 0.25, rtol=1e-15, atol=0)


def test_load_results_keeps_a_minus_inf_final_metric(tmp_path):
    store = tmp_path / "s.jsonl"
    record(store, {"lr": 0.1}, {"mean_log_lvr": float("-inf"), "trace_h": 1.5}, key="a")
    df = load_results(store)
    assert df.mean_log_lvr.iloc[0] == -np.inf and np.isclose(df.trace_h.iloc[0], 1.5)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_store_writes_tensors_as_numbers_and_lists_not_strings(tmp_path, device):
    store = tmp_path / "s.jsonl"
    w = torch.tensor([[1.0, -2.0], [0.5, float("-inf")]], dtype=torch.float64, device=device, requires_grad=True)
    append_record(store, {"key": "a", "final": {"loss": (w[0, 0] * 0.5), "w": w, "n": torch.tensor(3, device=device),
                                                  "ok": torch.tensor(True, device=device)}})
    assert b"tensor" not in store.read_bytes()
    final = read_store(store)[0][0]["final"]
    assert isinstance(final["loss"], float) and final["n"] == 3 and final["ok"] is True
    np.testing.assert_allclose(final["loss"], 0.5, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.array(final["w"]), w.detach().cpu().numpy(), rtol=1e-12, atol=1e-12)


def test_store_writes_numpy_arrays_and_scalars_as_numbers_and_lists(tmp_path):
    store = tmp_path / "s.jsonl"
    append_record(store, {"key": "a", "final": {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                                                  "f": np.float32(0.5), "i": np.int64(7), "b": np.bool_(False),
                                                  "z": np.array(2.5)}})
    assert b"array" not in store.read_bytes()
    final = read_store(store)[0][0]["final"]
    assert final["a"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and final["i"] == 7 and final["b"] is False
    np.testing.assert_allclose([final["f"], final["z"]], [0.5, 2.5], rtol=1e-12, atol=0)


def test_append_record_refuses_complex_numbers(tmp_path):
    with pytest.raises(TypeError, match="real numbers only"):
        append_record(tmp_path / "s.jsonl", {"key": "a", "final": {"z": torch.tensor(1 + 2j)}})


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
    append_record(store, {"key": "a", "final": {"x": 1.0}})
    with open(store, "a") as f:
        f.write(json.dumps({"key": "b", "config": {}, "final": {"x": 2.0}, "history": [], **fields}) + "\n")
    with pytest.warns(RuntimeWarning, match=f"skipped 1 truncated or unreadable line.*{why}.*will be redone"):
        records, bad = read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [2]


@pytest.mark.parametrize("fields, why", BAD_FIELDS[:4])
def test_load_results_and_summarize_survive_a_line_with_wrong_field_types(tmp_path, fields, why):
    store = tmp_path / "s.jsonl"
    for i in range(4):
        record(store, {"lr": 0.1 * (i + 1)}, {"trace_h": float(i)}, history=[{"trace_h": float(i), "nmls": i ** 2}],
                 key=str(i))
    with open(store, "a") as f:
        f.write(json.dumps({"key": "bad", **fields}) + "\n")
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        df = load_results(store)
    assert list(df.key) == ["0", "1", "2", "3"] and df.attrs["skipped_lines"] == [5]
    s = summarize(df, sharpness=["trace_h"], compression=["nmls"], phase="final", n_boot=0)
    assert (s.n == 4).all()


def test_read_store_stops_warning_about_a_truncated_run_once_it_has_been_redone(tmp_path):
    store = tmp_path / "s.jsonl"
    with open(store, "wb") as f:
        f.write(b'{"key":"a","config":{"train":{"lr":0.1')  # a writer killed mid-line
    with pytest.warns(RuntimeWarning, match="will be redone"):
        read_store(store)
    append_record(store, {"key": "a", "final": {"x": 1.0}})  # the next sweep redid it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, bad = read_store(store)
    assert [r["key"] for r in records] == ["a"] and bad == [1]


def test_read_store_stops_warning_about_an_ill_typed_run_once_it_has_been_redone(tmp_path):
    store = tmp_path / "s.jsonl"
    with open(store, "w") as f:
        f.write(json.dumps({"key": "a", "final": [1]}) + "\n")
    append_record(store, {"key": "a", "final": {"x": 1.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, bad = read_store(store)
    assert [r["final"] for r in records] == [{"x": 1.0}] and bad == [1]


def test_append_record_refuses_a_record_that_readers_would_skip(tmp_path):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="'history' must be a list of JSON objects"):
        append_record(store, {"key": "a", "history": [0.1, 0.2]})
    assert not store.exists()


def test_record_refuses_a_history_that_is_not_a_sequence_of_dicts(tmp_path):
    with pytest.raises(ValueError, match="history must be a DataFrame or a sequence of dicts"):
        record(tmp_path / "s.jsonl", {"lr": 0.1}, {"loss": 0.1}, history=[0.5, 0.4])


def test_load_results_warns_about_conflicting_duplicates_and_uses_the_first(tmp_path):
    store = tmp_path / "s.jsonl"
    record(store, {"lr": 0.1}, {"loss": 0.5}, key="k1")
    record(store, {"lr": 0.1}, {"loss": 0.7}, key="k1")
    with pytest.warns(RuntimeWarning, match="'k1': 1 later record.*uses the FIRST record"):
        df = load_results(store)
    assert len(df) == 1 and np.isclose(df.loss.iloc[0], 0.5) and df.attrs["conflicting_keys"] == ["k1"]


def test_load_results_keeps_identical_duplicates_quiet(tmp_path):
    store = tmp_path / "s.jsonl"
    for _ in range(2):
        record(store, {"lr": 0.1}, {"loss": float("nan")}, history=[{"loss": float("nan")}], key="k1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = load_results(store)
    assert len(df) == 1 and df.attrs["duplicate_keys"] == ["k1"] and df.attrs["conflicting_keys"] == []



def test_minus_inf_log_volume_survives_the_store_into_summarize(tmp_path):
    store = tmp_path / "s.jsonl"
    for _, run in _results_with_log_volumes().iterrows():
        record(store, {"lr": 0.1}, run.history[-1], history=run.history, key=run.key)
    df = load_results(store)
    with pytest.warns(RuntimeWarning, match="3 -inf"):
        s = summarize(df, sharpness=["trace_h"], compression=["mean_log_lvr"], phase="final", n_boot=0)
    assert list(s.n) == [7, 10] and list(s.n_excluded) == [3, 0]



def test_a_record_carries_the_provenance_of_the_run(tmp_path):
    rec = record(tmp_path / "s.jsonl", {"lr": 0.1}, {"loss": 0.5}, key="k")
    assert {"package_version", "git_commit", "torch_version", "python_version", "threads"} <= set(rec["provenance"])
    assert read_store(tmp_path / "s.jsonl")[0][0]["key"] == "k"
