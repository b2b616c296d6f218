"""Models and training: determinism, history, divergence handling, bad input."""
import math

import pytest
import torch
from torch import nn

import flatcomp_tutorial as fc


@pytest.fixture(scope="module")
def small_digits():
    return fc.load_dataset("digits", classes=(0, 1), n_train=64, n_test=32)


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


def test_training_is_deterministic_for_a_seed(small_digits):
    runs = [fc.train(fc.make_model("mlp", small_digits.input_shape, 2, width=16, seed=0), small_digits,
                     lr=0.1, batch_size=8, epochs=3, seed=5, progress=False) for _ in range(2)]
    assert runs[0].history.equals(runs[1].history)


def test_training_reduces_the_loss_and_records_checkpoints(small_digits):
    r = fc.train(fc.make_model("mlp", small_digits.input_shape, 2, width=16), small_digits, lr=0.1,
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
    r = fc.train(fc.make_model("mlp", small_digits.input_shape, 2, width=8), small_digits, lr=0.05,
                 batch_size=small_digits.n_train, steps=4, track_every=1, progress=False)
    assert list(r.history.epoch) == [0, 1, 2, 3, 4]


def test_divergence_stops_training_and_keeps_the_last_finite_state(small_digits):
    m = fc.make_model("mlp", small_digits.input_shape, 2, width=16)
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
    dev = fc.configure(seed=1, device="auto", threads=1)
    assert torch.get_num_threads() == 1
    assert dev.type in {"cpu", "cuda", "mps"}
    with pytest.raises(ValueError, match="device must be"):
        fc.resolve_device("gpu-please")
