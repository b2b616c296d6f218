"""Specification of flatcomp_tutorial.geometry (THEORY §3): Jacobians, local measures, Gaussian-ball estimates,
global participation ratio. Exact claims are checked in float64 with the tolerance stated in each test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flatcomp_tutorial import geometry
from flatcomp_tutorial.models import make_model

F64 = torch.float64




def mlp(n_out=3, width=6, depth=2, activation="tanh", d=5, seed=0, **kw):
    return make_model("mlp", (d,), n_out, width=width, depth=depth, activation=activation, seed=seed, dtype=F64, **kw)


def cnn(seed=0):
    return make_model("lenet", (1, 8, 8), 2, channels=(2, 3), width=8, seed=seed, dtype=F64)


def inputs(n, *shape, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def linear_positions(model: nn.Sequential) -> list[int]:
    """Index in the Sequential of each dense layer (reference slicing, independent of the hooks)."""
    return [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]


def autograd_jacobians(fn, inputs_flat: torch.Tensor) -> torch.Tensor:
    """Reference: one torch.autograd.functional.jacobian per sample."""
    return torch.stack([torch.autograd.functional.jacobian(fn, v) for v in inputs_flat])


# ------------------------------------------------------------------------------------------------ Jacobians

@pytest.mark.parametrize("activation,n_out", [("tanh", 1), ("relu", 2), ("gelu", 10)])
def test_input_jacobians_match_autograd_per_sample(activation, n_out):
    model, x = mlp(n_out=n_out, activation=activation), inputs(7, 5)
    ref = autograd_jacobians(lambda v: model(v[None])[0], x)
    got = geometry.jacobians(model, x)
    assert got.shape == (7, n_out, 5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_internal_source_jacobian_is_output_versus_input_of_dense_layer():
    model, x = mlp(n_out=2, depth=3), inputs(6, 5)
    pos = linear_positions(model)
    for l in (2, 3, 4):  # source l: h_{l-1} = input of dense layer l
        h = model[:pos[l - 1]](x).detach()
        ref = autograd_jacobians(lambda v: model[pos[l - 1]:](v[None])[0], h)
        torch.testing.assert_close(geometry.jacobians(model, x, source=l), ref, rtol=0, atol=1e-12)


def test_internal_target_jacobian_is_representation_versus_input():
    model, x = mlp(n_out=2, depth=3), inputs(6, 5)
    pos = linear_positions(model)
    for l in (1, 2, 3):  # target l: h_l = input of dense layer l+1
        ref = autograd_jacobians(lambda v: model[:pos[l]](v[None])[0], x)
        torch.testing.assert_close(geometry.jacobians(model, x, target=l), ref, rtol=0, atol=1e-12)


def test_source_to_target_jacobian_between_internal_layers():
    model, x = mlp(n_out=2, depth=3), inputs(4, 5)
    pos = linear_positions(model)
    h1 = model[:pos[1]](x).detach()
    ref = autograd_jacobians(lambda v: model[pos[1]:pos[3]](v[None])[0], h1)  # h_1 -> h_3
    torch.testing.assert_close(geometry.jacobians(model, x, source=2, target=3), ref, rtol=0, atol=1e-12)


def test_cnn_jacobians_match_autograd_and_modes_agree():
    model, x = cnn(), inputs(3, 1, 8, 8)
    ref = autograd_jacobians(lambda v: model(v.reshape(1, 1, 8, 8))[0], x.reshape(3, -1))
    for mode in ("rev", "fwd", "auto"):
        torch.testing.assert_close(geometry.jacobians(model, x, mode=mode), ref, rtol=0, atol=1e-12)
    # output versus the input of the first dense layer of the CNN (flattened conv features)
    feats = model[:7](x).detach()
    ref = autograd_jacobians(lambda v: model[7:](v[None])[0], feats)
    torch.testing.assert_close(geometry.jacobians(model, x, source=1), ref, rtol=0, atol=1e-12)


def test_batch_size_chunks_do_not_change_jacobians():
    model, x = mlp(), inputs(10, 5)
    torch.testing.assert_close(geometry.jacobians(model, x, batch_size=3), geometry.jacobians(model, x),
                               rtol=0, atol=0)


@pytest.mark.parametrize("source,target", [(3, 1), (2, 1), (0, "output"), (5, "output"), ("input", 0),
                                           ("input", 4), (True, "output"), ("hidden", "output")])
def test_invalid_source_or_target_raises_value_error(source, target):
    with pytest.raises(ValueError, match="source|target"):
        geometry.jacobians(mlp(depth=2), inputs(2, 5), source=source, target=target)


# ------------------------------------------------------------------------------------------------ local measures

@pytest.mark.parametrize("n_out,target", [(2, "output"), (10, "output"), (3, 1)])
def test_local_measures_match_numpy_svd(n_out, target):
    model, x = mlp(n_out=n_out, width=7), inputs(5, 5)
    meas = geometry.local_measures(model, x, target=target)
    jac = geometry.jacobians(model, x, target=target).numpy()
    for i in range(5):
        s = np.linalg.svd(jac[i], compute_uv=False)
        assert meas["singular_values"][i] == pytest.approx(s, rel=1e-10)
        assert meas["log_lvr"][i] == pytest.approx(np.sum(np.log(s)), rel=1e-10)
        assert meas["mls"][i] == pytest.approx(s[0], rel=1e-10)
        assert meas["local_dim"][i] == pytest.approx(np.sum(s**2) ** 2 / np.sum(s**4), rel=1e-10)
    assert meas["singular_values"].shape == (5, min(jac.shape[1:]))


def test_local_dimensionality_lies_between_one_and_rank():
    meas = geometry.local_measures(mlp(n_out=4, activation="gelu"), inputs(20, 5))
    assert np.all(meas["local_dim"] >= 1 - 1e-12) and np.all(meas["local_dim"] <= 4 + 1e-12)


def test_scaling_last_layer_shifts_log_lvr_scales_mls_and_keeps_local_dim():
    c, model, x = 0.05, mlp(n_out=3, width=8), inputs(9, 5)
    base = geometry.local_measures(model, x)
    with torch.no_grad():
        model[-1].weight.mul_(c)
    scaled = geometry.local_measures(model, x)
    r = base["singular_values"].shape[1]
    np.testing.assert_allclose(scaled["local_dim"], base["local_dim"], rtol=1e-10)
    np.testing.assert_allclose(scaled["log_lvr"], base["log_lvr"] + r * np.log(c), rtol=1e-10)
    np.testing.assert_allclose(scaled["mls"], c * base["mls"], rtol=1e-10)


# ------------------------------------------------------------------------------------------------ Gaussian ball

def test_gaussian_ball_estimates_converge_to_exact_measures_as_alpha_shrinks():
    model, x = mlp(n_out=3, width=8, d=4, seed=3), inputs(3, 4, seed=1)
    exact = geometry.local_measures(model, x)

    def errors(alpha):
        est = geometry.gaussian_ball_measures(model, x, alpha=alpha, samples=40000, seed=0)
        return {k: np.max(np.abs(est[k] - exact[k]) / np.abs(exact[k])) for k in ("log_lvr", "mls", "local_dim")}

    errs = [errors(a) for a in (1.0, 1e-1, 1e-2, 1e-6)]
    for k in ("log_lvr", "mls", "local_dim"):
        seq = [e[k] for e in errs]
        assert seq[0] > seq[1] > seq[3], (k, seq)  # bias O(alpha) shrinks (same noise for every alpha)
        assert seq[3] < 0.01, (k, seq)  # at small alpha only the Monte-Carlo error ~ 1/sqrt(samples) is left


def test_gaussian_ball_on_internal_map_matches_exact():
    model, x = mlp(n_out=2, width=6, seed=4), inputs(2, 5, seed=2)
    exact = geometry.local_measures(model, x, source=2, target="output")
    est = geometry.gaussian_ball_measures(model, x, alpha=1e-8, samples=40000, source=2)
    np.testing.assert_allclose(est["mls"], exact["mls"], rtol=0.03)
    np.testing.assert_allclose(est["local_dim"], exact["local_dim"], rtol=0.03)


@pytest.mark.parametrize("kwargs", [dict(alpha=0.0, samples=100), dict(alpha=-1.0, samples=100),
                                    dict(alpha=1e-3, samples=3), dict(alpha=1e-3, samples=2.5)])
def test_gaussian_ball_rejects_bad_alpha_or_too_few_samples(kwargs):
    with pytest.raises(ValueError, match="alpha|samples"):
        geometry.gaussian_ball_measures(mlp(n_out=3), inputs(2, 5), **kwargs)


# ------------------------------------------------------------------------------------------------ global measures

def test_participation_ratio_of_isotropic_data_is_about_k():
    feats = torch.randn(20000, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert geometry.participation_ratio(feats) == pytest.approx(6, rel=0.02)


def test_participation_ratio_of_rank_one_data_is_one():
    t = torch.randn(500, 1, dtype=F64)
    feats = t * torch.randn(1, 12, dtype=F64) + 3.0  # a line, offset (centring removes the offset)
    assert geometry.participation_ratio(feats) == pytest.approx(1.0, abs=1e-10)
    assert geometry.participation_ratio(feats.numpy()) == pytest.approx(1.0, abs=1e-10)  # numpy works too


def test_participation_ratio_rejects_constant_features():
    with pytest.raises(ValueError, match="constant"):
        geometry.participation_ratio(torch.ones(10, 3))


def test_representations_are_inputs_of_dense_layers_and_output():
    model, x = mlp(depth=2), inputs(4, 5)
    pos = linear_positions(model)
    for l in (0, 1, 2):
        torch.testing.assert_close(geometry.representations(model, x, l), model[:pos[l]](x), rtol=0, atol=0)
    torch.testing.assert_close(geometry.representations(model, x, 3), model(x), rtol=0, atol=0)
    torch.testing.assert_close(geometry.representations(model, x, "output"), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer"):
        geometry.representations(model, x, 4)


def test_layerwise_measures_agree_with_local_measures():
    model, x = cnn(), inputs(4, 1, 8, 8)
    table = geometry.layerwise_measures(model, x)
    assert list(table["layer"]) == [1, 2]
    assert table.loc[0, "rep_mls"] == pytest.approx(np.mean(geometry.local_measures(model, x, target=1)["mls"]))
    assert table.loc[1, "out_local_dim"] == pytest.approx(
        np.mean(geometry.local_measures(model, x, source=2)["local_dim"]))


def test_preactivation_jacobian_times_weight_is_jacobian_of_layer_input():
    model, x = mlp(n_out=2, depth=2), inputs(5, 5)
    for l, lin in enumerate([model[i] for i in linear_positions(model)], start=1):
        d = geometry.preactivation_jacobians(model, x, l)
        torch.testing.assert_close(d @ lin.weight, geometry.jacobians(model, x, source=l), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ validation

def test_nan_inputs_raise_value_error():
    x = inputs(3, 5)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        geometry.local_measures(mlp(), x)


def test_batchnorm_in_train_mode_raises_value_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    with pytest.raises(ValueError, match="BatchNorm"):
        geometry.jacobians(model, inputs(3, 5))


def test_train_and_eval_flags_are_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    model.train()
    model[2].eval()  # BatchNorm frozen, the rest in train mode
    flags = [m.training for m in model.modules()]
    geometry.local_measures(model, inputs(3, 5), source=2)
    geometry.gaussian_ball_measures(model, inputs(2, 5), alpha=1e-4, samples=10)
    assert [m.training for m in model.modules()] == flags
