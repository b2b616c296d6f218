"""Specification of flatcomp_tutorial.cost: timing the paper preset's dominant operations and the cost model that
turns them into hours (chapter "Running at paper scale")."""
import math

import pytest
import torch

from flatcomp_tutorial import cost, presets, runtime
from flatcomp_tutorial.models import make_model
from flatcomp_tutorial.store import read_store, shipped_store


def fake_timings(step_s=None, hvp_s=0.01, checkpoint_s=20.0, vit=None):
    archs = {"mlp": {"params": 665602, "step_s": step_s or {"16": 0.001, "256": 0.005},
                     "hvp_s": hvp_s, "checkpoint_s": checkpoint_s}}
    if vit is not None:
        archs["vit"] = vit
    return {"device": "cpu", "device_name": "CPU: test", "threads": 1, "hvp_n": 256, "repeats": 1,
            "dtype": "float32", "batch_sizes": [16, 256], "architectures": archs}


def test_cost_table_follows_the_stated_cost_model():
    p = presets.preset("paper")
    row = cost.cost_table(fake_timings()).loc["mlp"]
    epochs, every, n = p["train"]["epochs"], p["train"]["track_every_epochs"], 12000
    sizes = p["grid"]["batch_size"]
    step = {b: 0.001 + (0.005 - 0.001) * (b - 16) / (256 - 16) for b in sizes}   # linear in B between 16 and 256
    train_s = [epochs * math.ceil(n / b) * step[b] for b in sizes]
    measure_s = (epochs // every + 1) * 20.0
    per_size = len(p["grid"]["lr"]) * len(p["grid"]["seed"])
    assert row["checkpoint_timed"] and row["checkpoint_hvps"] == pytest.approx(2000)
    assert row["train_h"] == pytest.approx(sum(train_s) / len(sizes) / 3600, rel=1e-12)
    assert row["measure_h"] == pytest.approx(measure_s / 3600, rel=1e-12)
    assert row["run_h"] == pytest.approx(row["train_h"] + row["measure_h"], rel=1e-12)
    assert row["grid_h"] == pytest.approx(per_size * (sum(train_s) + len(sizes) * measure_s) / 3600, rel=1e-12)
    assert row["runs"] == per_size * len(sizes)
    assert row["epoch_s_min"] == pytest.approx(math.ceil(n / 16) * 0.001, rel=1e-12)
    assert row["epoch_s_max"] == pytest.approx(math.ceil(n / 256) * 0.005, rel=1e-12)


def test_an_untimed_checkpoint_costs_the_hvp_equivalents_of_the_timed_ones():
    vit = {"params": 1, "step_s": {"16": 0.02}, "hvp_s": 0.5, "checkpoint_s": None}
    table = cost.cost_table(fake_timings(vit=vit))          # the MLP's checkpoint: 20 s = 2000 HVPs of 10 ms
    assert not table.loc["vit", "checkpoint_timed"]
    assert table.loc["vit", "checkpoint_s"] == pytest.approx(2000 * 0.5)
    assert cost.cost_table(fake_timings(vit=vit), hvp_equivalents=10).loc["vit", "checkpoint_s"] == 5.0


@pytest.mark.parametrize("bad", [0, -1.0, "many"])
def test_cost_table_refuses_hvp_equivalents_that_are_not_a_positive_number(bad):
    with pytest.raises(ValueError, match="hvp_equivalents"):
        cost.cost_table(fake_timings(), hvp_equivalents=bad)


def test_cost_table_without_any_timed_checkpoint_asks_for_one():
    with pytest.raises(ValueError, match="timed checkpoint.*hvp_equivalents"):
        cost.cost_table(fake_timings(checkpoint_s=None))


def test_cost_table_uses_the_nearest_timed_step_outside_the_timed_batch_sizes():
    row = cost.cost_table(fake_timings(step_s={"32": 0.002, "64": 0.003})).loc["mlp"]
    assert row["step_ms_min"] == pytest.approx(2.0) and row["step_ms_max"] == pytest.approx(3.0)


def test_cost_table_refuses_an_architecture_the_preset_lacks():
    t = fake_timings()
    t["architectures"]["resnet"] = t["architectures"]["mlp"]
    with pytest.raises(ValueError, match="resnet"):
        cost.cost_table(t)


@pytest.mark.parametrize("kwargs, match", [
    ({"architectures": ["resnet"]}, "architectures"),
    ({"architectures": []}, "architectures"),
    ({"batch_sizes": [0]}, "batch_sizes"),
    ({"batch_sizes": 16}, "batch_sizes"),
    ({"hvp_n": 0}, "hvp_n"),
    ({"repeats": 1.5}, "repeats"),
    ({"threads": 0}, "threads"),
    ({"device": "gpu"}, "device"),
    ({"architectures": ["mlp"], "checkpoint": ["vit"]}, "checkpoint"),
    ({"checkpoint": "mlp"}, "checkpoint"),
])
def test_time_paper_ops_refuses_bad_arguments_before_any_work(kwargs, match, monkeypatch):
    monkeypatch.setattr(cost, "make_model", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=match):
        cost.time_paper_ops(**{"device": "cpu", **kwargs})


@pytest.fixture
def cheap_measures(monkeypatch):
    """Two stand-in measures for the paper preset's (a whole checkpoint takes seconds to minutes)."""
    seen = []

    def resolve(names, loss, probes, version):
        seen.append((tuple(names), loss, version))
        return {"first": lambda model, data: float(model(data.x_train).detach().sum()), "second": lambda m, d: 1.0}
    monkeypatch.setattr(cost, "resolve_measures", resolve)
    return seen


def test_time_paper_ops_times_every_requested_step_and_one_hvp():
    t = cost.time_paper_ops("cpu", threads=1, architectures=["mlp"], batch_sizes=[4, 2], hvp_n=8, repeats=1,
                            checkpoint=[])
    mlp = t["architectures"]["mlp"]
    assert t["threads"] == 1 and t["batch_sizes"] == [2, 4] and t["device_name"].startswith("CPU")
    assert mlp["params"] == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 2 + 2
    assert set(mlp["step_s"]) == {"2", "4"} and all(s > 0 for s in mlp["step_s"].values())
    assert mlp["hvp_s"] > 0 and "checkpoint_s" not in mlp


def test_a_timed_checkpoint_times_each_measure_of_the_preset_once(cheap_measures):
    t = cost.time_paper_ops("cpu", architectures=["mlp"], batch_sizes=[2], hvp_n=8, repeats=1)
    mlp, train = t["architectures"]["mlp"], presets.preset("paper")["train"]
    assert cheap_measures == [(tuple(train["measures"]), train["loss"], train["measure_version"])]
    assert set(mlp["measure_s"]) == {"first", "second"} and mlp["measure_errors"] == {}
    assert mlp["checkpoint_s"] == pytest.approx(sum(mlp["measure_s"].values()))


def test_the_checkpoint_is_timed_at_the_initial_weights_not_after_the_timed_steps(monkeypatch):
    seen = {}

    def resolve(names, loss, probes, version):
        return {"weights": lambda model, data: seen.update(w=[p.detach().clone() for p in model.parameters()]) or 0.0}
    monkeypatch.setattr(cost, "resolve_measures", resolve)
    cost.time_paper_ops("cpu", architectures=["mlp"], batch_sizes=[2], hvp_n=4, repeats=2, seed=3)
    cfg = {k: v for k, v in presets.preset("paper")["architectures"]["mlp"].items() if k not in ("kind", "dataset")}
    fresh = make_model("mlp", (1, 28, 28), 2, seed=3, **cfg)
    assert all(torch.equal(a, b) for a, b in zip(seen["w"], fresh.parameters()))


def test_measure_appends_one_record_that_load_costs_reads(tmp_path, capsys, cheap_measures):
    store = tmp_path / "costs.jsonl"
    assert cost.main(["--device", "cpu", "--threads", "1", "--architectures", "mlp", "--batch-sizes", "16",
                      "--hvp-n", "8", "--repeats", "1", "--store", str(store)]) == 0
    assert "appended record" in capsys.readouterr().out
    recs = read_store(store)[0]
    assert len(recs) == 1 and recs[0]["config"]["threads"] == 1
    table = cost.load_costs(store)
    assert list(table["architecture"]) == ["mlp"] and table["threads"].tolist() == [1]
    assert table["run_h"].iloc[0] > 0 and table["checkpoint_timed"].tolist() == [True]


def test_load_costs_prices_an_untimed_checkpoint_with_the_stores_timed_ones(tmp_path, cheap_measures):
    store = tmp_path / "costs.jsonl"
    args = ["--device", "cpu", "--architectures", "mlp", "--batch-sizes", "2", "--hvp-n", "8", "--repeats", "1",
            "--store", str(store)]
    cost.main(args + ["--checkpoint"])
    with pytest.raises(ValueError, match="no measurement.*timed checkpoint"):
        cost.load_costs(store)
    cost.main(args)
    table = cost.load_costs(store)
    assert table["checkpoint_timed"].tolist() == [False, True]
    assert table["checkpoint_hvps"].iloc[0] == pytest.approx(table["checkpoint_hvps"].iloc[1])


def test_the_shipped_cost_store_holds_every_architecture_measured_on_one_cpu_thread():
    table = cost.load_costs(shipped_store(cost.COST_STORE))
    one = table[(table["threads"] == 1) & table["device_name"].str.startswith("CPU")]
    assert set(one["architecture"]) == set(presets.preset("paper")["architectures"])
    assert one["checkpoint_timed"].any()


def test_the_cpu_warning_of_scale_paper_agrees_with_the_shipped_measurement():
    """runtime.PAPER_CPU_HOURS is quoted by check_scale's warning: within a factor of 2 of the shipped one-thread
    CPU measurement for every architecture (timings vary across CPUs and load; the warning is an order of
    magnitude)."""
    table = cost.load_costs(shipped_store(cost.COST_STORE))
    one = table[table["threads"] == 1].groupby("architecture")["run_h"].median()
    assert set(runtime.PAPER_CPU_HOURS) == set(one.index)
    for arch, hours in runtime.PAPER_CPU_HOURS.items():
        assert 0.5 <= hours / one[arch] <= 2.0, arch


def test_device_name_is_the_gpus_name_on_cuda_and_the_cpu_model_otherwise(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Tesla T4")
    assert cost.device_name("cuda") == "Tesla T4"
    assert cost.device_name("cpu").startswith("CPU: ")


def test_the_command_line_runs_as_a_module_without_warnings():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "flatcomp_tutorial.cost", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--checkpoint" in out.stdout and out.stderr == ""
