"""Sweeps, the JSON Lines result store (atomic appends, resume after a kill), summaries and presets; the papermill
batch runner. The paper preset runs at tiny size on FashionMNIST/CIFAR-10 files fabricated in the real formats."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

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
    assert [r["key"] for r in records] == ["a", "c"] and bad == [2] and records[1]["x"] is None


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


# ------------------------------------------------------------------------------------------------- summaries
def fake_results(n_runs=12, seed=0):
    """Runs whose checkpoints satisfy mls = 0.1·trace_h + noise and local_dim independent of trace_h."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_runs):
        tr = rng.uniform(1, 10, size=3)
        hist = [dict(step=s, phase=ph, trace_h=t, mean_mls=0.1 * t + 0.01 * rng.normal(), mean_local_dim=rng.uniform(1, 2))
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
    assert (out.n == 4).all() and (out.n_groups == 2).all() and out.ci_low.isna().all()  # < 3 groups: no CI


def test_correlations_warn_and_return_nan_with_fewer_than_three_rows():
    with pytest.warns(UserWarning, match="at least 3"):
        out = E.correlations(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 1.0]}), ["a"], ["b"])
    assert out.r.isna().all()


def test_correlations_name_a_missing_column():
    with pytest.raises(ValueError, match="no column"):
        E.correlations(pd.DataFrame({"a": [1.0]}), ["a"], ["zz"])


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
