"""Models and training: determinism, history, divergence handling, bad input."""
import ast
import copy
import dataclasses
import inspect
import math
from pathlib import Path

import problems
import numpy as np
import pytest
import torch
from torch import nn

import flatcomp_tutorial as fc
import flatcomp_tutorial.sharpness  # noqa: F401  (fc.sharpness)
import flatcomp_tutorial.training  # noqa: F401




@pytest.fixture(scope="module")
def small_digits():
    return problems.small_digits()


def _mlp(data, seed=0, width=8):
    """The float32 MLP the training tests train: the data's inputs → width → width → 2 (tanh)."""
    return fc.make_model("mlp", data.input_shape, 2, width=width, seed=seed)


def test_same_seed_gives_same_initial_weights():
    a, b, c = (fc.make_model("mlp", (1, 8, 8), 10, width=16, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_mlp_first_parameterised_layer_is_dense():
    m = fc.make_model("mlp", (1, 8, 8), 10, width=16, depth=3)
    linears = [l for l in m if isinstance(l, nn.Linear)]
    assert len(linears) == 4 and linears[0].in_features == 64 and linears[-1].out_features == 10


def test_lenet_maps_images_to_outputs():
    m = fc.make_model("lenet", (1, 8, 8), 3, channels=(2, 3), width=8)
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="resnet"), "kind must be one of"),
    (dict(kind="mlp", activation="swish"), "activation must be one of"),
    (dict(kind="lenet", input_shape=(64,)), "lenet needs image inputs"),
])
def test_make_model_rejects_bad_arguments(kwargs, match):
    args = dict(kind="mlp", input_shape=(1, 8, 8), n_out=2) | kwargs
    with pytest.raises(ValueError, match=match):
        fc.make_model(**args)


def test_training_is_bit_identical_for_the_same_seed_on_one_machine(small_digits):
    runs = [fc.train(_mlp(small_digits, width=16), small_digits,
                     lr=0.1, batch_size=8, epochs=3, seed=5, progress=False) for _ in range(2)]
    assert runs[0].history.equals(runs[1].history)


def test_training_reduces_the_loss_and_records_checkpoints(small_digits):
    r = fc.train(_mlp(small_digits, width=16), small_digits, lr=0.1,
                 batch_size=8, epochs=5, track_every=8, progress=False)
    h = r.history
    assert list(h.columns[:6]) == ["step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert h.step.iloc[0] == 0 and h.step.iloc[-1] == 40 and h.epoch.iloc[-1] == 5
    assert h.train_loss.iloc[-1] < 0.5 * h.train_loss.iloc[0]
    assert not r.diverged


def test_mse_loss_convention_is_half_sum_over_outputs_mean_over_samples():
    out, y = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert fc.training.loss_fn(out, y).item() == pytest.approx((0.5 * 5 + 0.5 * 4) / 2)


def test_full_batch_gradient_descent_when_batch_size_is_n(small_digits):
    r = fc.train(_mlp(small_digits), small_digits, lr=0.05,
                 batch_size=small_digits.n_train, steps=4, track_every=1, progress=False)
    assert list(r.history.epoch) == [0, 1, 2, 3, 4]


def test_divergence_stops_training_and_keeps_the_last_finite_state(small_digits):
    m = _mlp(small_digits, width=16)
    r = fc.train(m, small_digits, lr=1e4, batch_size=8, epochs=20, track_every=1, progress=False)
    assert r.diverged and r.config["diverged_at_step"] < 160
    assert all(torch.isfinite(p).all() for p in r.model.parameters())
    assert all(math.isfinite(v) for v in r.history.train_loss)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=1, steps=1), "exactly one of"),
    (dict(), "exactly one of"),
    (dict(epochs=1, batch_size=0), "batch_size must be between"),
    (dict(epochs=1, lr=-1.0), "lr must be a positive"),
    (dict(epochs=1, loss="hinge"), "loss must be one of"),
])
def test_train_rejects_bad_arguments(small_digits, kwargs, match):
    args = dict(lr=0.1, batch_size=8) | kwargs
    with pytest.raises(ValueError, match=match):
        fc.train(fc.make_model("mlp", small_digits.input_shape, 2), small_digits, progress=False, **args)


def test_configure_fixes_threads_and_resolves_auto_device():
    dev = fc.configure(seed=1, device="auto", threads=2)
    assert torch.get_num_threads() == 2
    assert dev.type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="device must be"):
        fc.resolve_device("gpu-please")


# ------------------------------------------------------------------------------------ optimisers and dynamics
def test_adam_optimizer_trains_and_differs_from_sgd(small_digits):
    runs = {o: fc.train(_mlp(small_digits), small_digits, lr=0.01, batch_size=16, epochs=3, optimizer=o,
                        progress=False) for o in ("sgd", "adam")}
    assert runs["adam"].history.train_loss.iloc[-1] < runs["adam"].history.train_loss.iloc[0]
    assert runs["adam"].history.train_loss.iloc[-1] != runs["sgd"].history.train_loss.iloc[-1]


def test_label_noise_run_is_bit_identical_for_the_same_seed_and_changes_the_trajectory(small_digits):
    def run(noise, seed):
        return fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=8, epochs=2, label_noise=noise,
                        seed=seed, progress=False).history
    a, b, c, clean = run(0.5, 1), run(0.5, 1), run(0.5, 2), run(0.0, 1)
    assert a.equals(b)
    assert not a.train_loss.equals(c.train_loss) and not a.train_loss.equals(clean.train_loss)


def test_sam_step_uses_the_gradient_at_the_ascent_point(small_digits):
    rho, lr = 0.05, 0.1
    m0 = _mlp(small_digits)
    ref = copy.deepcopy(m0)
    fc.train(m0, small_digits, lr=lr, batch_size=small_digits.n_train, steps=1, sam_rho=rho, progress=False)
    x, y = small_digits.x_train, small_digits.y_train
    params = list(ref.parameters())
    g = torch.autograd.grad(fc.training.loss_fn(ref(x), y), params)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.add_(rho * gi / norm)
    g_adv = torch.autograd.grad(fc.training.loss_fn(ref(x), y), params)
    with torch.no_grad():
        for p, gi, ga in zip(params, g, g_adv):
            p.sub_(rho * gi / norm + lr * ga)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(m0.parameters(), ref.parameters()))


def test_momentum_with_adam_is_rejected(small_digits):
    with pytest.raises(ValueError, match="momentum is an SGD option"):
        fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=8, steps=1, optimizer="adam", momentum=0.9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="lbfgs"), "optimizer must be one of"),
    (dict(label_noise=-0.1), "label_noise must be a finite number >= 0"),
    (dict(sam_rho=float("nan")), "sam_rho must be"),
    (dict(late_phase_steps=-1), "late_phase_steps must be >= 0"),
    (dict(measures=["sharpness"]), "unknown measure 'sharpness'"),
    (dict(measures=["local"], measure_n=1), "measure_n must be >= 2"),
])
def test_train_rejects_bad_new_arguments(small_digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=8, steps=2, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------- late phase
@pytest.fixture(scope="module")
def late_run(small_digits):
    return fc.train(_mlp(small_digits, width=16), small_digits, lr=0.2, batch_size=8, epochs=200, track_every=40,
                    late_phase_steps=30, late_phase_threshold=0.02, late_track_every=10, label_noise=0.05,
                    progress=False)


def test_late_phase_starts_at_the_first_check_below_the_threshold(late_run):
    h, start = late_run.history, late_run.config["late_start_step"]
    assert late_run.config["reached_threshold"] and start % 8 == 0  # checked once per epoch (64 / 8 steps)
    first_late = h[h.phase == "late"].iloc[0]
    assert first_late.step == start and first_late.train_loss < 0.02
    assert (h[h.phase == "early"].step < start).all()


def test_late_phase_trains_exactly_k_more_steps_with_dense_tracking(late_run):
    late = late_run.history[late_run.history.phase == "late"]
    start = late_run.config["late_start_step"]
    assert list(late.step) == [start, start + 10, start + 20, start + 30]
    assert late_run.config["steps_done"] == start + 30


def test_late_phase_of_zero_steps_stops_at_the_threshold(small_digits):
    r = fc.train(_mlp(small_digits, width=16), small_digits, lr=0.2, batch_size=8, epochs=200, late_phase_steps=0,
                 late_phase_threshold=0.05, progress=False)
    h = r.history
    assert h.phase.iloc[-1] == "late" and (h.phase == "late").sum() == 1
    assert h.train_loss.iloc[-1] < 0.05 and r.config["steps_done"] == r.config["late_start_step"] < 1600


def test_unreached_threshold_stops_at_the_budget_and_says_so(small_digits):
    r = fc.train(_mlp(small_digits), small_digits, lr=0.01, batch_size=8, steps=16, late_phase_steps=100,
                 late_phase_threshold=1e-9, progress=False)
    assert r.config["reached_threshold"] is False and r.config["steps_done"] == 16
    assert set(r.history.phase) == {"early"}


# --------------------------------------------------------------------------------------------------- measures
@pytest.fixture(scope="module")
def measured(small_digits):
    names = ["lambda_max", "trace_h", "trace_g", "relative_flatness", "adaptive_sharpness", "test_lambda_max",
             "test_trace_h", "local", "nmls", "global_pr", "bounds"]
    return fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=16, steps=8, track_every=4,
                    measures=names, measure_n=32, probes=4, label_noise=0.1, progress=False)


def test_named_measures_add_their_columns_at_every_checkpoint(measured):
    h = measured.history
    cols = {"lambda_max", "trace_h", "trace_h_stderr", "trace_g", "trace_g_W1", "trace_g_W2", "trace_g_W3",
            "relative_flatness", "adaptive_sharpness", "test_lambda_max", "test_trace_h", "mean_log_lvr",
            "median_log_lvr", "mean_mls", "mean_local_dim", "nmls", "global_pr", "bounds_hold", "slack_B1",
            "slack_B4", "slack_B6", "slack_B8"}
    assert cols <= set(h.columns) and list(h.step) == [0, 4, 8]
    assert h[sorted(cols)].notna().all().all() and measured.history.attrs["measure_errors"] == {}
    assert (h.bounds_hold == 1).all()  # every bound holds at any parameters (with G): appendix "Notation and conventions", B1-B8
    assert set(h.attrs["measures"]) >= {"lambda_max", "local"} and "seeded" in h.attrs["measure_data"]


def test_the_bounds_measure_records_both_sides_whose_ratio_is_the_slack(measured):
    h = measured.history
    for b in ("B1", "B2", "B3", "B6", "B7"):        # ratio slacks (B4, B5 are log forms: RHS - LHS)
        assert (h[f"lhs_{b}"] <= h[f"rhs_{b}"]).all()
        np.testing.assert_allclose(h[f"rhs_{b}"] / h[f"lhs_{b}"], h[f"slack_{b}"], rtol=1e-12)
    np.testing.assert_allclose(h.rhs_B5 - h.lhs_B5, h.slack_B5, rtol=1e-12)
    assert "lhs_B8" not in h    # one row per layer: only its smallest slack is recorded


def test_measures_are_computed_on_the_fixed_measurement_subset(measured, small_digits):
    sub = fc.measures.measurement_subset(small_digits, 32, 0)
    assert sub.n_train == 32 and sub.n_test == 32
    direct = fc.sharpness.gauss_newton_trace(measured.model.eval(), sub.x_train)
    assert measured.history.trace_g.iloc[-1] == pytest.approx(direct, rel=1e-5)
    other = fc.measures.measurement_subset(small_digits, 32, 1)
    assert not torch.equal(sub.x_train, other.x_train)


def test_history_with_label_noise_and_measures_is_bit_identical_for_the_same_seed(small_digits, measured):
    again = fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=16, steps=8, track_every=4,
                     measures=list(measured.history.attrs["measures"]), measure_n=32, probes=4, label_noise=0.1,
                     progress=False)
    assert again.history.equals(measured.history)


def test_custom_measures_are_callables_of_model_and_measurement_data(small_digits):
    r = fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=16, steps=4, track_every=2, measure_n=10,
                 measures={"n_seen": lambda m, d: d.n_train, "w": lambda m, d: {"norm": 1.0, "sq": 2.0}},
                 progress=False)
    assert list(r.history.n_seen) == [10, 10, 10] and {"w_norm", "w_sq"} <= set(r.history.columns)


def test_inapplicable_measure_gives_nan_and_keeps_the_reason(small_digits):
    vit = fc.make_model("vit", small_digits.input_shape, 2, dim=8, heads=2, depth=1)
    r = fc.train(vit, small_digits, lr=0.05, batch_size=16, steps=2, track_every=1, measures=["nmls"],
                 measure_n=8, progress=False)
    assert r.history.nmls.isna().all() and "nmls" in r.history.attrs["measure_errors"]


def test_divergence_with_measures_is_recorded_not_raised(small_digits):
    r = fc.train(_mlp(small_digits, width=16), small_digits, lr=1e4, batch_size=8, epochs=5, track_every=1,
                 measures=["trace_g", "local"], measure_n=8, progress=False)
    assert r.diverged and r.history.trace_g.notna().all()


# ------------------------------------------------------------------------------------------ validation up front
@pytest.mark.parametrize("width", [1, 3])
def test_mse_training_refuses_an_output_width_other_than_the_targets_width(small_digits, width):
    model = fc.make_model("mlp", small_digits.input_shape, width, width=8)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"output width is {width} but the targets' width is 2.*n_out=2"):
        fc.train(model, small_digits, lr=0.1, batch_size=8, steps=2, progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # refused before any step


def test_cross_entropy_training_refuses_an_output_width_other_than_the_number_of_classes(small_digits):
    with pytest.raises(ValueError, match="output width is 3 but the data have 2 classes"):
        fc.train(fc.make_model("mlp", small_digits.input_shape, 3, width=8), small_digits, lr=0.1, batch_size=8,
                 steps=2, loss="cross_entropy", progress=False)


def test_cross_entropy_training_refuses_single_column_regression_targets():
    data = fc.load_dataset("teacher_student", n_train=16, n_test=8, n_outputs=1)
    with pytest.raises(ValueError, match="cross_entropy.*width 1"):
        fc.train(fc.make_model("mlp", data.input_shape, 1, width=8), data, lr=0.1, batch_size=8, steps=2,
                 loss="cross_entropy", progress=False)


def test_matching_widths_train_with_both_losses(small_digits):
    for loss in ("mse", "cross_entropy"):
        r = fc.train(_mlp(small_digits), small_digits, lr=0.1, batch_size=8, steps=2, loss=loss, progress=False)
        assert r.config["steps_done"] == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=2.5), "batch_size must be between 1 and n_train=64"),
    (dict(batch_size=True), "batch_size must be between"),
    (dict(batch_size=0), "batch_size must be between"),
    (dict(batch_size=-8), "batch_size must be between"),
    (dict(batch_size=65), "batch_size must be between"),
    (dict(lr=True), "lr must be a positive finite number"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(lr=float("inf")), "lr must be a positive finite number"),
    (dict(lr="0.1"), "lr must be a positive finite number"),
    (dict(steps=None, epochs=2.5), "epochs must be an integer"),
    (dict(steps=None, epochs=0), "epochs must be an integer >= 1"),
    (dict(steps=True), "steps must be an integer"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(momentum=True), "momentum must be a finite number >= 0"),
    (dict(weight_decay=float("inf")), "weight_decay must be a finite number >= 0"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(probes=True), "probes must be an integer"),
    (dict(probes=0), "probes must be an integer >= 1"),
    (dict(measure_version=3), "measure_version must be one of"),
    (dict(measure_version=2.5), "measure_version must be one of"),
    (dict(track_every=0), "track_every must be a positive number of steps"),
    (dict(track_every=1.5), "track_every must be a positive number of steps"),
    (dict(check_every=True), "check_every must be a positive number of steps"),
    (dict(late_phase_steps=2.5), "late_phase_steps must be >= 0"),
    (dict(late_phase_threshold=float("nan")), "late_phase_threshold must be a finite number > 0"),
    (dict(measures=["local"], measure_n=2.5), "measure_n must be >= 2"),
    (dict(measure_seed=True), "measure_seed must be an integer"),
])
def test_train_refuses_bad_numbers_naming_the_argument(small_digits, kwargs, match):
    args = dict(lr=0.1, batch_size=8, steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        fc.train(_mlp(small_digits), small_digits, progress=False, **args)


def test_numpy_integers_are_accepted_as_counts(small_digits):
    import numpy as np

    r = fc.train(_mlp(small_digits), small_digits, lr=np.float32(0.1), batch_size=np.int64(8), epochs=np.int64(1),
                 track_every=np.int64(4), progress=False)
    assert list(r.history.step) == [0, 4, 8] and type(r.config["batch_size"]) is int


# ------------------------------------------------------------------------------------- measures that cannot run
def test_a_measure_whose_loss_overflows_is_nan_with_the_reason_and_training_goes_on(small_digits):
    """Test inputs × 1e20 through a ReLU net: the test loss overflows float32 at every checkpoint, the training
    loss does not; test_trace_h is NaN with the overflow named, trace_h is a number, training finishes."""
    import dataclasses

    data = dataclasses.replace(small_digits, x_test=small_digits.x_test * 1e20)
    model = fc.make_model("mlp", data.input_shape, 2, width=8, activation="relu", seed=0)
    r = fc.train(model, data, lr=0.1, batch_size=16, steps=4, track_every=2, measures=["trace_h", "test_trace_h"],
                 measure_n=8, probes=2, progress=False)
    h = r.history
    assert not r.diverged and list(h.step) == [0, 2, 4]
    assert h.test_trace_h.isna().all() and h.trace_h.notna().all()
    assert "not finite at these weights (overflow" in h.attrs["measure_errors"]["test_trace_h"]


def test_the_measure_row_records_an_overflow_error_as_nan():
    from flatcomp_tutorial.checks import NotFiniteError

    def overflowing(model, data):
        raise NotFiniteError("the loss is not finite at these weights (overflow)")

    errors = {}
    row = fc.measures.measure_row(nn.Linear(2, 2), {"lambda_max": overflowing}, None, errors)
    assert math.isnan(row["lambda_max"]) and "overflow" in errors["lambda_max"]


def test_trace_g_of_a_partly_frozen_model_is_nan_with_advice_that_names_a_real_fix(small_digits):
    model = _mlp(small_digits)
    model[1].weight.requires_grad_(False)
    r = fc.train(model, small_digits, lr=0.1, batch_size=16, steps=2, track_every=2, measures=["trace_g"],
                 measure_n=8, progress=False)
    reason = r.history.attrs["measure_errors"]["trace_g"]
    assert r.history.trace_g.isna().all() and "model.requires_grad_(True)" in reason
    assert "use per_layer=False" not in reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_trains_and_its_measures_are_nan_with_the_float32_advice(small_digits, dtype):
    r = fc.train(_mlp(small_digits).to(dtype), small_digits, lr=0.1, batch_size=16, steps=2, track_every=2,
                 measures=["trace_h"], measure_n=8, probes=2, device="cpu", progress=False)
    assert r.history.trace_h.isna().all() and ".float()" in r.history.attrs["measure_errors"]["trace_h"]


def test_auto_device_never_puts_a_float64_model_on_mps(small_digits, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.warns(UserWarning, match="no float64"):
        r = fc.train(_mlp(small_digits).double(), small_digits, lr=0.1, batch_size=16, steps=1, progress=False)
    assert r.config["device"] == "cpu"


def test_check_train_options_refuses_an_unknown_option_name_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['lrr'\]; known: .*'lr'"):
        fc.training.check_train_options(lr=0.1, batch_size=8, epochs=1, lrr=0.2)


def test_check_train_options_checks_batch_size_against_the_training_set_only_when_given():
    fc.training.check_train_options(lr=0.1, batch_size=500, epochs=1)
    with pytest.raises(ValueError, match="between 1 and n_train=100"):
        fc.training.check_train_options(100, lr=0.1, batch_size=500, epochs=1)


# ------------------------------------------------------------------------------------------------ TrainConfig
#: train's keyword defaults, as documented (lr and batch_size have none: they are required)
DEFAULTS = dict(epochs=None, steps=None, loss="mse", optimizer="sgd", momentum=0.0, weight_decay=0.0, label_noise=0.0,
                sam_rho=0.0, seed=0, track_every=None, measures=None, measure_n=256, measure_seed=0, probes=None,
                measure_version=2, late_phase_steps=None, late_phase_threshold=1e-3, late_track_every=None, check_every=None)


def test_train_config_holds_every_option_with_trains_keyword_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(fc.training.TrainConfig)}
    assert fields == {"lr": dataclasses.MISSING, "batch_size": dataclasses.MISSING, **DEFAULTS}
    assert set(inspect.signature(fc.train).parameters) == {"model", "data", "config", "device", "progress", "options"}


def test_train_config_requires_lr_and_batch_size():
    with pytest.raises(TypeError):
        fc.training.TrainConfig(lr=0.1)
    with pytest.raises(ValueError, match=r"missing training option\(s\) \['batch_size'\]"):
        fc.training.check_train_options(lr=0.1, epochs=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0, steps=1), "lr must be a positive finite number"),
    (dict(lr=0.1, epochs=1, steps=1), "give exactly one of epochs= or steps="),
    (dict(lr=0.1, steps=1, optimizer="lbfgs"), "optimizer must be one of"),
    (dict(lr=0.1, steps=1, late_phase_steps=-1), "late_phase_steps must be >= 0"),
])
def test_a_bad_train_config_is_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fc.training.TrainConfig(batch_size=8, **kwargs)


def test_a_train_config_gives_the_same_run_as_the_keywords(small_digits):
    kw = dict(lr=0.1, batch_size=8, steps=12, track_every=4, label_noise=0.1, seed=3)
    a = fc.train(_mlp(small_digits), small_digits, progress=False, **kw)
    b = fc.train(_mlp(small_digits), small_digits, fc.training.TrainConfig(**kw), progress=False)
    assert a.history.equals(b.history) and {**a.config, "measure_time": 0} == {**b.config, "measure_time": 0}


def test_keywords_given_with_a_train_config_override_its_fields(small_digits):
    cfg = fc.training.TrainConfig(lr=0.1, batch_size=8, steps=12, track_every=4)
    r = fc.train(_mlp(small_digits), small_digits, cfg, steps=4, progress=False)
    assert r.config["steps_done"] == 4 and list(r.history.step) == [0, 4] and cfg.steps == 12


def test_an_unknown_keyword_with_a_train_config_is_refused(small_digits):
    cfg = fc.training.TrainConfig(lr=0.1, batch_size=8, steps=2)
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['lrr'\]"):
        fc.train(_mlp(small_digits), small_digits, cfg, lrr=0.2, progress=False)


def test_a_config_that_is_not_a_train_config_is_refused(small_digits):
    with pytest.raises(ValueError, match="config must be a TrainConfig"):
        fc.train(_mlp(small_digits), small_digits, 0.1, batch_size=8, steps=2, progress=False)


def test_a_bad_option_is_refused_before_any_step(small_digits):
    model = _mlp(small_digits)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="batch_size must be between 1 and n_train=64"):
        fc.train(model, small_digits, fc.training.TrainConfig(lr=0.1, batch_size=65, steps=2), progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_the_presets_train_sections_are_train_config_options():
    from flatcomp_tutorial.presets import PRESETS

    for spec in PRESETS.values():
        options = {k: v for k, v in spec["train"].items() if k != "track_every_epochs"}
        fc.training.TrainConfig(lr=0.1, batch_size=8, **options)


# ------------------------------------------------------------------------------------------------ module layering
def test_training_does_not_import_sweeps_store_presets_or_figures():
    tree = ast.parse(Path(fc.training.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module or ''}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    names = {part for name in imported for part in name.split(".")}
    assert not names & {"sweeps", "store", "presets", "figures", "experiments"}, imported


def test_hidden_local_records_every_hidden_representation_against_the_input(small_digits):
    model = _mlp(small_digits)
    r = fc.train(model, small_digits, lr=0.1, batch_size=16, steps=4, track_every=4, measures=["hidden_local"],
                 measure_n=32, progress=False)
    h = r.history
    n_hidden = len(fc.layers.dense_layers(model)) - 1
    assert {f"mean_local_dim_h{l}" for l in range(1, n_hidden + 1)} <= set(h.columns)
    assert f"mean_local_dim_h{n_hidden + 1}" not in h      # the output is the "local" measure's business
    sub = fc.measures.measurement_subset(small_digits, 32, 0)
    table = fc.geometry.layerwise_measures(r.model.eval(), sub.x_train).set_index("layer")
    for l in range(1, n_hidden + 1):
        assert h[f"mean_local_dim_h{l}"].iloc[-1] == pytest.approx(table.loc[l, "rep_local_dim"], rel=1e-6)
        assert h[f"mean_mls_h{l}"].iloc[-1] == pytest.approx(table.loc[l, "rep_mls"], rel=1e-6)
