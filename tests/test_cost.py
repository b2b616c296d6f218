"""Specification of flatcomp_tutorial.cost: timing the paper preset's dominant operations and the cost model that
turns them into hours (chapter "Running at paper scale")."""
import math

import pytest

from flatcomp_tutorial import cost, presets, runtime
from flatcomp_tutorial.store import read_store, shipped_store


def fake_timings(step_s=None, hvp_s=0.01, last=1024):
    return {"device": "cpu", "device_name": "CPU: test", "threads": 1, "hvp_n": 256, "repeats": 1,
            "dtype": "float32", "batch_sizes": [16, 256],
            "architectures": {"mlp": {"params": 665602, "last_layer_weights": last,
                                      "step_s": step_s or {"16": 0.001, "256": 0.005}, "hvp_s": hvp_s}}}


def test_cost_table_follows_the_stated_cost_model():
    p = presets.preset("paper")
    row = cost.cost_table(fake_timings()).loc["mlp"]
    epochs, every, n = p["train"]["epochs"], p["train"]["track_every_epochs"], 12000
    sizes = p["grid"]["batch_size"]
    step = {b: 0.001 + (0.005 - 0.001) * (b - 16) / (256 - 16) for b in sizes}   # linear in B between 16 and 256
    train_s = [epochs * math.ceil(n / b) * step[b] for b in sizes]
    measure_s = (epochs // every + 1) * (cost.HVPS_BASE + 1024) * 0.01
    per_size = len(p["grid"]["lr"]) * len(p["grid"]["seed"])
    assert row["hvps_per_checkpoint"] == cost.HVPS_BASE + 1024
    assert row["train_h"] == pytest.approx(sum(train_s) / len(sizes) / 3600, rel=1e-12)
    assert row["measure_h"] == pytest.approx(measure_s / 3600, rel=1e-12)
    assert row["run_h"] == pytest.approx(row["train_h"] + row["measure_h"], rel=1e-12)
    assert row["grid_h"] == pytest.approx(per_size * (sum(train_s) + len(sizes) * measure_s) / 3600, rel=1e-12)
    assert row["runs"] == per_size * len(sizes)


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
])
def test_time_paper_ops_refuses_bad_arguments_before_any_work(kwargs, match, monkeypatch):
    monkeypatch.setattr(cost, "make_model", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=match):
        cost.time_paper_ops(**{"device": "cpu", **kwargs})


def test_time_paper_ops_times_every_requested_step_and_one_hvp():
    t = cost.time_paper_ops("cpu", threads=1, architectures=["mlp"], batch_sizes=[4, 2], hvp_n=8, repeats=1)
    mlp = t["architectures"]["mlp"]
    assert t["threads"] == 1 and t["batch_sizes"] == [2, 4] and t["device_name"].startswith("CPU")
    assert mlp["params"] == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 2 + 2
    assert mlp["last_layer_weights"] == 2 * 512
    assert set(mlp["step_s"]) == {"2", "4"} and all(s > 0 for s in mlp["step_s"].values())
    assert mlp["hvp_s"] > 0


def test_measure_appends_one_record_that_load_costs_reads(tmp_path, capsys):
    store = tmp_path / "costs.jsonl"
    assert cost.main(["--device", "cpu", "--threads", "1", "--architectures", "mlp", "--batch-sizes", "16",
                      "--hvp-n", "8", "--repeats", "1", "--store", str(store)]) == 0
    assert "appended record" in capsys.readouterr().out
    recs = read_store(store)[0]
    assert len(recs) == 1 and recs[0]["config"]["threads"] == 1
    table = cost.load_costs(store)
    assert list(table["architecture"]) == ["mlp"] and table["threads"].tolist() == [1]
    assert table["run_h"].iloc[0] > 0


def test_the_shipped_cost_store_holds_every_architecture_measured_on_one_cpu_thread():
    table = cost.load_costs(shipped_store(cost.COST_STORE))
    one = table[(table["threads"] == 1) & table["device_name"].str.startswith("CPU")]
    assert set(one["architecture"]) == set(presets.preset("paper")["architectures"])


def test_the_cpu_warning_of_scale_paper_agrees_with_the_shipped_measurement():
    """runtime.PAPER_CPU_HOURS is quoted by check_scale's warning: within a factor of 2 of the shipped one-thread
    CPU measurement for every architecture (timings vary across CPUs and load; the warning is an order of
    magnitude)."""
    table = cost.load_costs(shipped_store(cost.COST_STORE))
    one = table[table["threads"] == 1].groupby("architecture")["run_h"].median()
    assert set(runtime.PAPER_CPU_HOURS) == set(one.index)
    for arch, hours in runtime.PAPER_CPU_HOURS.items():
        assert 0.5 <= hours / one[arch] <= 2.0, arch
