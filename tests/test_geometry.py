"""Specification of flatcomp_tutorial.geometry (chapter "Measuring compression"): Jacobians, local measures,
Gaussian-ball estimates, numerical rank (zero volume), global participation ratio, argument and overflow errors.
Exact claims are checked in float64 with the tolerance stated in each test; no float is compared bit-exactly
except the promised special values −inf and 0 of a zero-volume map. The validation every measure shares (NaN inputs,
half precision, BatchNorm, overflowing outputs, restored flags) is in tests/test_contract.py."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from problems import F64, autograd_jacobians, digit_inputs, inputs, lenet, linear_positions, mlp, narrow_digits_mlp
from torch import nn

from flatcomp_tutorial import geometry, measures
from flatcomp_tutorial.checks import NotFiniteError

# Two autograd paths computing the same float64 Jacobian agree to a few ulp; 1e-10 relative (plus 1e-12 absolute
# for entries near 0) is far above that on any CPU and far below any real error.
JAC_TOL = dict(rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ Jacobians

@pytest.mark.parametrize("activation,n_out", [("tanh", 1), ("relu", 2), ("gelu", 10)])
def test_input_jacobians_match_autograd_per_sample(activation, n_out):
    model, x = mlp(n_out=n_out, activation=activation), inputs(7, 5)
    ref = autograd_jacobians(lambda v: model(v[None])[0], x)
    got = geometry.jacobians(model, x)
    assert got.shape == (7, n_out, 5)
    torch.testing.assert_close(got, ref, **JAC_TOL)


def test_internal_source_jacobian_is_output_versus_h_l():
    model, x = mlp(n_out=2, depth=3), inputs(6, 5)
    pos = linear_positions(model)
    for l in (1, 2, 3):  # source l: h_l = input of dense layer l+1
        h = model[:pos[l]](x).detach()
        ref = autograd_jacobians(lambda v: model[pos[l]:](v[None])[0], h)
        torch.testing.assert_close(geometry.jacobians(model, x, source=l), ref, **JAC_TOL)


def test_internal_target_jacobian_is_representation_versus_input():
    model, x = mlp(n_out=2, depth=3), inputs(6, 5)
    pos = linear_positions(model)
    for l in (1, 2, 3):  # target l: h_l = input of dense layer l+1
        ref = autograd_jacobians(lambda v: model[:pos[l]](v[None])[0], x)
        torch.testing.assert_close(geometry.jacobians(model, x, target=l), ref, **JAC_TOL)


def test_source_to_target_jacobian_between_internal_layers():
    model, x = mlp(n_out=2, depth=3), inputs(4, 5)
    pos = linear_positions(model)
    h1 = model[:pos[1]](x).detach()
    ref = autograd_jacobians(lambda v: model[pos[1]:pos[3]](v[None])[0], h1)  # h_1 -> h_3
    torch.testing.assert_close(geometry.jacobians(model, x, source=1, target=3), ref, **JAC_TOL)


def test_a_layer_index_names_the_same_point_as_source_and_as_target():
    """h_0 -> h_2 composed with h_2 -> output is h_0 -> output: index 2 is the same point h_2 in both roles."""
    model, x = mlp(n_out=2, depth=3), inputs(4, 5)
    first = geometry.jacobians(model, x, source=0, target=2)
    second = geometry.jacobians(model, x, source=2)
    torch.testing.assert_close(second @ first, geometry.jacobians(model, x, source=0), **JAC_TOL)


def test_cnn_jacobians_match_autograd_and_modes_agree():
    model, x = lenet(), inputs(3, 1, 8, 8)
    ref = autograd_jacobians(lambda v: model(v.reshape(1, 1, 8, 8))[0], x.reshape(3, -1))
    for mode in ("rev", "fwd", "auto"):
        torch.testing.assert_close(geometry.jacobians(model, x, mode=mode), ref, **JAC_TOL)
    # output versus the input of the first dense layer of the CNN (flattened conv features)
    feats = model[:7](x).detach()
    ref = autograd_jacobians(lambda v: model[7:](v[None])[0], feats)
    torch.testing.assert_close(geometry.jacobians(model, x, source=0), ref, **JAC_TOL)


def test_batch_size_chunks_do_not_change_jacobians():
    # Chunking changes the batch shapes BLAS sees, which may reorder sums on some CPUs (differences of ~1e-17 were
    # seen): a float64 tolerance of 1e-12 relative, 1e-14 absolute, not bit-identity.
    model, x = mlp(), inputs(10, 5)
    torch.testing.assert_close(geometry.jacobians(model, x, batch_size=3), geometry.jacobians(model, x),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("source,target", [(3, 1), (2, 1), (1, 1), (-1, "output"), (5, "output"), ("input", -1),
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
    exact = geometry.local_measures(model, x, source=1, target="output")
    est = geometry.gaussian_ball_measures(model, x, alpha=1e-8, samples=40000, source=1)
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
    tol = dict(rtol=1e-12, atol=1e-14)  # the same float64 forward pass (hooks vs slicing): round-off at most
    for l in (0, 1, 2):
        torch.testing.assert_close(geometry.representations(model, x, l), model[:pos[l]](x), **tol)
    torch.testing.assert_close(geometry.representations(model, x, 3), model(x), **tol)
    torch.testing.assert_close(geometry.representations(model, x, "output"), model(x), **tol)
    with pytest.raises(ValueError, match="layer"):
        geometry.representations(model, x, 4)


def test_layerwise_measures_agree_with_local_measures():
    model, x = lenet(), inputs(4, 1, 8, 8)
    table = geometry.layerwise_measures(model, x)
    assert list(table["layer"]) == [1, 2]
    assert table.loc[0, "rep_mls"] == pytest.approx(np.mean(geometry.local_measures(model, x, target=1)["mls"]))
    assert table.loc[1, "out_local_dim"] == pytest.approx(
        np.mean(geometry.local_measures(model, x, source=1)["local_dim"]))


def test_preactivation_jacobian_times_weight_is_jacobian_of_layer_input():
    model, x = mlp(n_out=2, depth=2), inputs(5, 5)
    for l, lin in enumerate([model[i] for i in linear_positions(model)], start=1):
        d = geometry.preactivation_jacobians(model, x, l)
        torch.testing.assert_close(d @ lin.weight, geometry.jacobians(model, x, source=l - 1), **JAC_TOL)


# ------------------------------------------------------------------------------------------------ zero volume

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_layer_narrower_than_output_has_log_lvr_minus_inf(dtype):
    meas = geometry.local_measures(narrow_digits_mlp(dtype), digit_inputs(6, dtype))
    assert np.all(meas["log_lvr"] == -np.inf)  # not the log of round-off (about -60 / -99)
    assert np.all(meas["rank"] == 8)
    assert np.all(meas["singular_values"][:, 8:] == 0.0) and np.all(meas["singular_values"][:, :8] > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_volume_keeps_mls_and_local_dim_finite_and_correct(dtype):
    model, x = narrow_digits_mlp(dtype), digit_inputs(6, dtype)
    meas = geometry.local_measures(model, x)
    s = torch.linalg.svdvals(geometry.jacobians(model, x).double()).numpy()[:, :8]  # the 8 genuine σ_j
    np.testing.assert_allclose(meas["mls"], s[:, 0], rtol=1e-12)
    np.testing.assert_allclose(meas["local_dim"], (s**2).sum(1) ** 2 / (s**4).sum(1), rtol=1e-10)
    assert np.all((meas["local_dim"] >= 1) & (meas["local_dim"] <= 8))


def test_float32_and_float64_agree_on_the_measures_of_a_rank_deficient_map():
    m32 = geometry.local_measures(narrow_digits_mlp(torch.float32), digit_inputs(6, torch.float32))
    m64 = geometry.local_measures(narrow_digits_mlp(torch.float64), digit_inputs(6, torch.float32).double())
    np.testing.assert_array_equal(m32["log_lvr"], m64["log_lvr"])  # both exactly -inf
    np.testing.assert_allclose(m32["mls"], m64["mls"], rtol=1e-4)  # float32 round-off in the weights/forward pass


def test_zero_jacobian_gives_minus_inf_log_lvr_zero_mls_and_zero_local_dim():
    model, x = mlp(n_out=3), inputs(4, 5)
    with torch.no_grad():
        model[-1].weight.zero_()  # f = b: J = 0, σ_1 = 0
    meas = geometry.local_measures(model, x)
    assert np.all(meas["log_lvr"] == -np.inf)
    assert np.all(meas["mls"] == 0.0) and np.all(meas["local_dim"] == 0.0) and np.all(meas["rank"] == 0)
    assert not any(np.isnan(v).any() for v in meas.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numerical_rank_tolerance_is_sigma1_times_max_shape_times_eps(dtype):
    # tol = σ_1 · max(3, 5) · eps. A σ of 4 eps lies below it (it would survive min(3, 5) · eps), 6 eps above it.
    eps = torch.finfo(dtype).eps
    jac = torch.zeros(2, 3, 5, dtype=dtype)
    jac[:, 0, 0], jac[:, 2, 2] = 1.0, 0.5
    jac[0, 1, 1], jac[1, 1, 1] = 4 * eps, 6 * eps
    meas = geometry.measures_from_jacobians(jac)
    assert meas["log_lvr"][0] == -np.inf and meas["rank"][0] == 2
    assert meas["rank"][1] == 3
    assert meas["log_lvr"][1] == pytest.approx(math.log(0.5) + math.log(6 * eps), rel=1e-12)


def test_tiny_but_genuine_singular_value_is_not_called_zero():
    # the threshold is relative to σ_1: a tiny Jacobian with a 1e-12 ratio is full rank in float64
    jac = torch.diag(torch.tensor([1e-30, 1e-42], dtype=F64))[None]
    meas = geometry.measures_from_jacobians(jac)
    assert meas["rank"][0] == 2
    assert meas["log_lvr"][0] == pytest.approx(math.log(1e-30) + math.log(1e-42), rel=1e-12)
    assert meas["local_dim"][0] == pytest.approx(1.0, rel=1e-12)  # (1 + 1e-24)² / (1 + 1e-48)


def test_full_rank_float32_map_keeps_every_singular_value():
    model = mlp(n_out=3, width=8)
    x = inputs(6, 5)
    exact = geometry.local_measures(model, x)
    m32 = geometry.local_measures(model.float(), x.float())
    assert np.all(m32["rank"] == 3) and np.all(np.isfinite(m32["log_lvr"]))
    np.testing.assert_allclose(m32["log_lvr"], exact["log_lvr"], rtol=1e-4)  # float32 round-off


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_ball_on_rank_deficient_map_gives_minus_inf(dtype):
    meas = geometry.gaussian_ball_measures(narrow_digits_mlp(dtype), digit_inputs(3, dtype), alpha=1e-4, samples=200)
    assert np.all(meas["log_lvr"] == -np.inf)
    assert np.all(meas["rank"] == 8)
    assert np.all(np.isfinite(meas["mls"])) and np.all((meas["local_dim"] >= 1) & (meas["local_dim"] <= 8))


def test_gaussian_ball_of_a_constant_map_gives_minus_inf_and_no_nan():
    model = mlp(n_out=3)
    with torch.no_grad():
        model[-1].weight.zero_()
    meas = geometry.gaussian_ball_measures(model, inputs(2, 5), alpha=1e-3, samples=20)
    assert np.all(meas["log_lvr"] == -np.inf) and np.all(meas["mls"] == 0.0) and np.all(meas["local_dim"] == 0.0)


def test_layerwise_measures_report_minus_inf_only_for_zero_volume_maps():
    table = geometry.layerwise_measures(narrow_digits_mlp(torch.float32), digit_inputs(4, torch.float32))
    assert table.loc[0, "out_log_lvr"] == -np.inf  # f versus x: 10 x 64 through width 8
    assert table.loc[1, "rep_log_lvr"] == -np.inf  # h_2 = f versus x, the same map
    assert np.isfinite(table.loc[0, "rep_log_lvr"]) and np.isfinite(table.loc[1, "out_log_lvr"])  # 8x64, 10x8
    assert np.isfinite(table[["rep_mls", "out_mls", "rep_local_dim", "out_local_dim"]].to_numpy()).all()


def test_tracked_local_measure_of_training_reports_minus_inf_for_a_narrow_hidden_layer():
    local = measures.resolve_measures(["local"])["local"]
    row = local(narrow_digits_mlp(torch.float32), SimpleNamespace(x_train=digit_inputs(5, torch.float32)))
    assert row["mean_log_lvr"] == -np.inf and row["median_log_lvr"] == -np.inf
    assert np.isfinite(row["mean_mls"]) and 1 <= row["mean_local_dim"] <= 8


# ------------------------------------------------------------------------------------------------ arguments

BAD_BATCH_SIZES = [0, -2, 2.5, True, "4"]


@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES)
def test_gaussian_ball_refuses_a_batch_size_that_is_not_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        geometry.gaussian_ball_measures(mlp(), inputs(2, 5), alpha=1e-3, samples=10, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES)
@pytest.mark.parametrize("fn", ["jacobians", "local_measures", "layerwise_measures", "preactivation_jacobians"])
def test_jacobian_measures_refuse_a_batch_size_that_is_not_a_positive_integer(fn, batch_size):
    args = (1,) if fn == "preactivation_jacobians" else ()
    with pytest.raises(ValueError, match="batch_size"):
        getattr(geometry, fn)(mlp(), inputs(2, 5), *args, batch_size=batch_size)


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf, True, "1e-3", None])
def test_gaussian_ball_refuses_alpha_that_is_not_a_finite_positive_number(alpha):
    with pytest.raises(ValueError, match="alpha"):
        geometry.gaussian_ball_measures(mlp(), inputs(2, 5), alpha=alpha, samples=10)


@pytest.mark.parametrize("samples", [0, 1, True, 10.0, None])
def test_gaussian_ball_refuses_samples_that_are_not_an_integer_count(samples):
    with pytest.raises(ValueError, match="samples"):
        geometry.gaussian_ball_measures(mlp(), inputs(2, 5), alpha=1e-3, samples=samples)


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_gaussian_ball_refuses_a_seed_that_is_not_a_non_negative_integer(seed):
    with pytest.raises(ValueError, match="seed"):
        geometry.gaussian_ball_measures(mlp(), inputs(2, 5), alpha=1e-3, samples=10, seed=seed)


def test_gaussian_ball_accepts_numpy_scalars():
    meas = geometry.gaussian_ball_measures(mlp(), inputs(2, 5), alpha=np.float32(1e-3), samples=np.int64(10),
                                           seed=np.int64(1), batch_size=np.int64(7))
    assert meas["log_lvr"].shape == (2,)


def test_gaussian_ball_argument_errors_come_before_any_forward_pass():
    calls = []
    model = mlp()
    model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    with pytest.raises(ValueError, match="batch_size"):
        geometry.gaussian_ball_measures(model, inputs(2, 5), alpha=1e-3, samples=10, batch_size=0)
    assert calls == []


def test_invalid_jacobian_mode_raises_value_error():
    with pytest.raises(ValueError, match="mode"):
        geometry.jacobians(mlp(), inputs(2, 5), mode="backward")


# ------------------------------------------------------------------------------------------------ overflow

class Sqrt(nn.Module):
    def forward(self, h):
        return torch.sqrt(h)


def test_jacobians_that_are_not_finite_raise_although_outputs_are_finite():
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 3), Sqrt(), nn.Linear(3, 2)).to(F64)
    with torch.no_grad():
        model[1].bias.zero_()
    x = torch.zeros(2, 5, dtype=F64)  # sqrt(0) = 0 is finite, its derivative is not
    with pytest.raises(NotFiniteError, match="Jacobians are not finite"):
        geometry.local_measures(model, x)


def test_measures_from_jacobians_refuses_nan():
    jac = torch.ones(2, 3, 3, dtype=F64)
    jac[1, 0, 0] = float("nan")
    with pytest.raises(NotFiniteError, match="not finite"):
        geometry.measures_from_jacobians(jac)


class Exp(nn.Module):
    def forward(self, h):
        return torch.exp(1000.0 * h)


def test_gaussian_ball_refuses_outputs_that_overflow_on_the_ball():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), Exp()).to(F64)
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2, dtype=F64))
        model[1].bias.zero_()
    x = torch.zeros(2, 2, dtype=F64)  # f(0) = 1; exp(1000 ε) overflows for ε of order 1
    with pytest.raises(NotFiniteError, match="Gaussian balls"):
        geometry.gaussian_ball_measures(model, x, alpha=1.0, samples=10)


def test_participation_ratio_refuses_features_constant_up_to_round_off():
    feats = torch.full((10, 3), 1.0, dtype=F64)
    feats[3, 1] += 1e-16 * 4  # one ulp-level difference, not a direction of variation
    with pytest.raises(ValueError, match="constant"):
        geometry.participation_ratio(feats)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_measures_from_half_precision_jacobians_are_refused(dtype):
    with pytest.raises(ValueError, match=r"float32 copy"):
        geometry.measures_from_jacobians(torch.eye(3, dtype=dtype)[None])
