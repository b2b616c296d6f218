"""Specification of flatcomp_tutorial.presets: the book's sweep settings, grids of configurations and the full
configuration of one run."""
import pytest

import flatcomp_tutorial as fc
from flatcomp_tutorial.layers import dense_layers
from flatcomp_tutorial.presets import grid_configs, preset, preset_spec, resolve_config


def test_dict_grid_is_the_cartesian_product_and_list_grid_is_taken_as_is():
    assert grid_configs({"lr": [0.1, 0.2], "seed": [0, 1, 2]}) == [
        {"lr": lr, "seed": s} for lr in (0.1, 0.2) for s in (0, 1, 2)]
    assert grid_configs([{"lr": 0.1}, {"lr": 0.3, "arch": "vit"}]) == [{"lr": 0.1}, {"lr": 0.3, "arch": "vit"}]
    with pytest.raises(ValueError, match=r"grid\['lr'\] must be a list"):
        grid_configs({"lr": 0.1})



def test_grid_points_override_model_data_and_training_options():
    cfg = resolve_config({"arch": "vit", "lr": 0.1, "batch_size": 4, "model.dim": 8, "data.classes": [0, 1],
                            "label_noise": 0.1}, preset("cpu"))
    assert cfg["model"]["kind"] == "vit" and cfg["model"]["dim"] == 8
    assert cfg["data"]["classes"] == [0, 1] and cfg["train"]["label_noise"] == 0.1



def test_every_configuration_names_its_measure_version_so_old_records_are_not_reused():
    spec = preset("cpu")
    del spec["train"]["measure_version"]
    cfg = resolve_config({"lr": 0.1, "batch_size": 4}, spec)
    assert cfg["train"]["measure_version"] == fc.measures.MEASURE_VERSION
    old = resolve_config({"lr": 0.1, "batch_size": 4, "measure_version": 1}, spec)
    assert fc.store.config_key(old) != fc.store.config_key(cfg)


@pytest.mark.parametrize("call, match", [
    (lambda: preset("gpu"), "preset must be one of"),
    (lambda: resolve_config({"arch": "resnet", "lr": 0.1, "batch_size": 8}, preset("cpu")), "arch must be one of"),
    (lambda: resolve_config({"lr": 0.1}, preset("cpu")), "has no 'batch_size'"),
])
def test_bad_preset_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()

def test_presets_hold_the_papers_and_the_cpu_grids():
    paper, cpu = preset("paper"), preset("cpu")
    assert paper["grid"]["lr"] == [0.01, 0.02, 0.05, 0.1] and paper["grid"]["batch_size"] == [16, 32, 64, 128, 256]
    assert paper["train"]["optimizer"] == "sgd" and paper["train"]["momentum"] == paper["train"]["weight_decay"] == 0
    assert paper["architectures"]["vgg11"]["cfg"] == "vgg11" and paper["datasets"]["cifar10_2"]["classes"] == [0, 1]
    mlp = fc.make_model(**{k: v for k, v in paper["architectures"]["mlp"].items() if k != "dataset"},
                        input_shape=(1, 28, 28), n_out=2)
    assert [(l.in_features, l.out_features) for _, l in dense_layers(mlp)] == [(784, 512), (512, 512), (512, 2)]
    pairs = {(c["lr"], c["batch_size"]) for c in grid_configs(cpu["grid"])}
    assert len(pairs) >= 12 and len(grid_configs(cpu["grid"])) == 2 * len(pairs)
    assert set(cpu["architectures"]) == {"mlp", "lenet", "vit"}



def test_a_preset_is_named_or_given_as_a_built_dict():
    assert preset_spec("cpu") == preset("cpu")
    custom = preset_spec({k: v for k, v in preset("cpu").items() if k not in ("name", "grid")})
    assert custom["name"] == "custom" and custom["grid"] == {}
    with pytest.raises(ValueError, match="preset dict is missing the 'train' section"):
        preset_spec({"datasets": {}, "architectures": {}})


def test_late_phase_grid_has_every_arm_for_every_seed_on_the_mlp3():
    from flatcomp_tutorial.presets import LATE_PHASE_ARMS, late_phase_grid

    grid = late_phase_grid()
    assert len(grid) == len(LATE_PHASE_ARMS) * 5 and {p["arch"] for p in grid} == {"mlp3"}
    assert sorted(p["seed"] for p in grid if p.get("label_noise")) == [0, 1, 2, 3, 4]


def test_every_late_phase_run_is_recognised_as_its_arm():
    from flatcomp_tutorial.presets import late_phase_arm, late_phase_grid, late_phase_spec

    spec = late_phase_spec(100)
    for arm in ("label noise", "plain SGD", "SAM", "large eta/B", "teacher-student"):
        cfg = resolve_config(late_phase_grid([arm], seeds=[3])[0], spec)
        assert late_phase_arm(cfg) == arm
    assert cfg["train"]["late_track_every"] == 10 and cfg["data"]["n_train"] == 64


def test_late_phase_grid_and_spec_refuse_unknown_arms_and_too_short_late_phases():
    from flatcomp_tutorial.presets import late_phase_grid, late_phase_spec

    with pytest.raises(ValueError, match="not late-phase arms"):
        late_phase_grid(["adam"])
    with pytest.raises(ValueError, match="late_steps must be an integer >= 10"):
        late_phase_spec(5)


def test_generalisation_grid_is_every_lr_batch_size_and_seed_on_the_10_class_mlp():
    from flatcomp_tutorial.presets import GENERALISATION_GRID, generalisation_grid

    grid = generalisation_grid()
    g = GENERALISATION_GRID
    assert len(grid) == len(g["lr"]) * len(g["batch_size"]) * len(g["seed"]) >= 12
    assert {p["arch"] for p in grid} == {"mlp10"}
    assert {(p["lr"], p["batch_size"], p["seed"]) for p in grid} == {
        (lr, b, s) for lr in g["lr"] for b in g["batch_size"] for s in g["seed"]}


def test_generalisation_spec_resolves_to_all_ten_digit_classes_stopped_at_the_matched_loss():
    from flatcomp_tutorial.presets import generalisation_grid, generalisation_spec

    cfg = resolve_config(generalisation_grid(seeds=[3])[0], generalisation_spec(5e-3))
    assert cfg["dataset"] == "digits10" and cfg["data"] == {"name": "digits"}   # no classes: all ten
    assert cfg["model"] == dict(kind="mlp", width=64, depth=2, activation="tanh")
    assert cfg["train"]["late_phase_threshold"] == 5e-3 and cfg["train"]["late_phase_steps"] == 0
    assert cfg["train"]["loss"] == "mse" and cfg["train"]["seed"] == 3


def test_generalisation_spec_and_grid_refuse_a_bad_threshold_or_seeds():
    from flatcomp_tutorial.presets import generalisation_grid, generalisation_spec

    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\)"):
        generalisation_spec(0)
    with pytest.raises(ValueError, match="seeds must be a non-empty list of integers"):
        generalisation_grid(seeds=[])


def test_beyond_grid_has_every_method_for_every_seed_and_each_run_is_recognised_as_its_method():
    grid = fc.presets.beyond_grid(seeds=[0, 1])
    assert len(grid) == 2 * len(fc.presets.BEYOND_METHODS)
    spec = fc.presets.beyond_spec()
    for point in grid:
        cfg = resolve_config(point, spec)
        row = {**cfg["train"], "loss": cfg["train"].get("loss", "mse")}
        method = fc.presets.beyond_method(row)
        assert {**fc.presets.BEYOND_METHODS[method], "arch": "mlp", "seed": point["seed"]} == point


def test_beyond_spec_trains_in_float64_with_attacks_and_all_training_inputs_measured():
    cfg = resolve_config(fc.presets.beyond_grid(seeds=[0])[0], fc.presets.beyond_spec(late_steps=600))
    assert cfg["preset"] == "beyond" and cfg["data"]["dtype"] == cfg["model"]["dtype"] == "float64"
    assert cfg["train"]["late_phase_steps"] == 600 and cfg["train"]["late_track_every"] == 100
    assert cfg["train"]["measure_n"] is None and cfg["robustness"] == dict(eps=1.0, eps_max=16.0)
    assert cfg["data"]["name"] == "digits"
    assert resolve_config(fc.presets.beyond_grid(seeds=[0])[0],
                          fc.presets.beyond_spec("fashion_mnist"))["data"]["name"] == "fashion_mnist"


@pytest.mark.parametrize("call, match", [
    (lambda: fc.presets.beyond_spec("cifar10"), "dataset must be one of"),
    (lambda: fc.presets.beyond_spec(late_steps=3), "late_steps must be an integer >= 6"),
    (lambda: fc.presets.beyond_grid(methods=["Adam"]), r"methods \['Adam'\] are not methods"),
    (lambda: fc.presets.beyond_grid(seeds=[]), "seeds must be a non-empty list"),
    (lambda: fc.presets.beyond_method({"lr": 0.3, "batch_size": 2}), "is none of the methods"),
])
def test_beyond_spec_grid_and_method_refuse_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sweep_spec_is_the_preset_with_the_bounds_and_test_sharpness_and_keys_the_shipped_store():
    spec = fc.presets.sweep_spec("cpu")
    assert spec["train"]["measures"] == fc.presets.PRESETS["cpu"]["train"]["measures"] + fc.presets.SWEEP_EXTRA
    shipped = {r["key"] for r in fc.store.read_store(fc.store.shipped_store("cpu_sweep.jsonl"))[0]}
    planned = {fc.store.config_key(resolve_config(p, spec)) for p in grid_configs(spec["grid"])}
    assert planned == shipped      # `make sweep` rebuilds exactly the runs the chapter reads
    with pytest.raises(ValueError, match="scale must be one of"):
        fc.presets.sweep_spec("gpu")
