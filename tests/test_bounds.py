"""Specification of flatcomp_tutorial.bounds (chapters "Flatness implies compression: the bound" and "Network-wide
and reparametrization-invariant bounds"): both sides of B1-B7, the B8 identity, B4's step slacks, zero volume
(log LVR = −inf), the G = H tolerance and the clear errors. Everything in float64 unless a test says otherwise;
`holds` uses relative tolerance 1e-9, identities 1e-8. The validation every measure shares (NaN inputs, half
precision, BatchNorm, overflowing outputs, restored flags) is in tests/test_contract.py."""
from __future__ import annotations

import math
import random
from functools import partial

import numpy as np
import problems
import pytest
import torch
from problems import F64, autograd_jacobians, digit_inputs, inputs, lenet, narrow_digits_mlp
from torch import nn

from flatcomp_tutorial import bounds, geometry, sharpness

FIRST_LAYER = ["B1", "B2", "B3", "B4", "B5"]
mlp = partial(problems.mlp, n_out=2)  # this file's networks have 2 outputs unless a test says otherwise


def random_cases(count=60):
    rng = random.Random(2024)
    return [dict(seed=s, n_out=rng.choice([1, 2, 10]), width=rng.choice([3, 5, 8, 16]), depth=rng.choice([0, 1, 2, 3]),
                 activation=rng.choice(["tanh", "relu", "gelu", "sigmoid", "softplus"]), d=rng.choice([4, 7, 12]),
                 n=rng.choice([5, 17])) for s in range(count)]


# ------------------------------------------------------------------------------------------------ validity

@pytest.mark.parametrize("case", random_cases(),
                         ids=lambda c: "{activation}-N{n_out}-w{width}-L{depth}-s{seed}".format(**c))
def test_every_bound_holds_at_exact_zero_loss(case):
    case = dict(case)
    n = case.pop("n")
    model = mlp(**case)
    x = inputs(n, case["d"], seed=case["seed"])
    y = model(x).detach()  # interpolation: L = 0, so G = H
    table = bounds.bound_table(model, x, y=y)
    assert table.attrs["train_loss"] <= table.attrs["G_equals_H_tol"] and table.attrs["G_equals_H"] is True
    names = set(table["name"])
    assert {"B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8 identity"} <= names
    failing = table.loc[~table["holds"], ["name", "layer", "lhs", "rhs"]]
    assert failing.empty, failing.to_string()
    ok = table["name"] != "B8 identity"
    assert (table.loc[ok, "lhs"] <= table.loc[ok, "rhs"] * (1 + 1e-9) + 1e-12 * table.loc[ok, "rhs"].abs()).all()
    # the tighter middle quantity of B6/B7 lies between the two sides; B8 has one row per dense layer
    for name in ("B6", "B7"):
        row = table.set_index("name").loc[name]
        assert row.lhs <= row.rhs_block * (1 + 1e-9) and row.rhs_block <= row.rhs * (1 + 1e-9)
    assert (table["name"] == "B8").sum() == case["depth"] + 1


def test_bounds_hold_with_gauss_newton_off_interpolation_and_loss_is_reported():
    model, x = mlp(n_out=3, seed=5), inputs(12, 5)
    y = torch.randn(12, 3, dtype=F64)
    table = bounds.bound_table(model, x, y=y)
    expected = 0.5 * ((model(x) - y) ** 2).sum(dim=1).mean().item()
    assert table.attrs["train_loss"] == pytest.approx(expected, rel=1e-12)
    assert table.attrs["G_equals_H"] is False
    assert table["holds"].all()
    assert "½" in table.attrs["convention"] and bounds.bound_table(model, x).attrs["train_loss"] is None


def test_first_layer_bound_sides_match_a_direct_computation():
    model, x = mlp(n_out=3, width=7, seed=8), inputs(9, 5, seed=3)
    jac = autograd_jacobians(lambda v: model(v[None])[0], x).numpy()
    sv = np.linalg.svd(jac, compute_uv=False)
    w1 = np.linalg.norm(model[1].weight.detach().numpy(), 2)
    per_sample_grad2 = []  # ||∇_{W_1} f(x_i)||_F², one autograd call per output unit
    for xi in x:
        total = 0.0
        for a in range(3):
            g, = torch.autograd.grad(model(xi[None])[0, a], model[1].weight)
            total += g.pow(2).sum().item()
        per_sample_grad2.append(total)
    tr1 = np.mean(per_sample_grad2)
    xn2 = (x**2).sum(dim=1).numpy()
    rows = bounds.bound_table(model, x).set_index("name")
    assert rows.loc["B1", "lhs"] == pytest.approx(np.mean(sv[:, 0] ** 2), rel=1e-10)
    assert rows.loc["B1", "rhs"] == pytest.approx(w1**2 * tr1 / xn2.min(), rel=1e-10)
    assert rows.loc["B2", "lhs"] == pytest.approx(np.mean(xn2 * sv[:, 0] ** 2), rel=1e-10)
    assert rows.loc["B4", "lhs"] == pytest.approx(np.mean(np.log(sv).sum(axis=1)), rel=1e-10)
    assert rows.loc["B4", "rhs"] == pytest.approx(1.5 * np.log(w1**2 * tr1 / 3) - 1.5 * np.mean(np.log(xn2)), rel=1e-10)
    assert rows.loc["B5", "lhs"] == pytest.approx(np.log(np.sum(np.prod(sv, axis=1) ** 2)), rel=1e-10)


def test_b2_is_tight_for_a_linear_scalar_model():
    # f = wᵀx + b: J_x = wᵀ, D_1 = 1, so every link of B2 is an equality
    model, x = mlp(n_out=1, depth=0, d=6, seed=2), inputs(8, 6)
    row = bounds.bound_table(model, x).set_index("name").loc["B2"]
    assert row.slack == pytest.approx(1.0, rel=1e-12)
    assert row.holds


def test_b5_is_reported_in_log_form():
    model, x = mlp(n_out=10, width=16, d=12, seed=1), inputs(17, 12)
    row = bounds.bound_table(model, x).set_index("name").loc["B5"]
    assert row.slack_kind.startswith("difference")
    assert row.slack == pytest.approx(row.rhs - row.lhs)
    assert np.isfinite(row.rhs) and row.rhs > row.lhs


# ------------------------------------------------------------------------------------------------ B8 identity

@pytest.mark.parametrize("activation,n_out,depth", [("tanh", 2, 2), ("relu", 10, 1), ("gelu", 1, 3)])
def test_b8_identity_matches_relative_flatness_of_gauss_newton(activation, n_out, depth):
    model, x = mlp(n_out=n_out, depth=depth, activation=activation, seed=3), inputs(10, 5)
    table = bounds.bound_table(model, x)
    ident = table[table["name"] == "B8 identity"].set_index("layer")
    assert ident["holds"].all()
    for l in range(1, depth + 2):
        kappa = sharpness.relative_flatness(model, x, None, l, curvature="gauss_newton", method="exact")
        assert ident.loc[l, "lhs"] == pytest.approx(kappa, rel=1e-8)
        assert ident.loc[l, "rhs"] == pytest.approx(kappa, rel=1e-8)


def test_b8_bound_rhs_is_kappa():
    model, x = mlp(seed=4), inputs(10, 5)
    table = bounds.bound_table(model, x)
    ident = table[table["name"] == "B8 identity"].set_index("layer")
    bound = table[table["name"] == "B8"].set_index("layer")
    np.testing.assert_allclose(bound["rhs"], ident["lhs"], rtol=1e-12)  # the same κ_l(G), copied
    assert (bound["lhs"] <= bound["rhs"]).all()


# ------------------------------------------------------------------------------------------------ B4 steps

@pytest.mark.parametrize("seed,activation,n_out", [(0, "tanh", 2), (1, "gelu", 10), (2, "softplus", 3)])
def test_b4_step_slacks_are_nonnegative_and_add_up_to_total(seed, activation, n_out):
    model, x = mlp(n_out=n_out, width=12, d=7, activation=activation, seed=seed), inputs(15, 7, seed=seed)
    steps = bounds.b4_step_slacks(model, x)
    parts = steps[steps["kind"] == "step"]["slack"]
    total = steps[steps["kind"] == "total"]["slack"].item()
    assert (parts >= -1e-10).all(), steps.to_string()
    assert parts.sum() == pytest.approx(total, rel=1e-10)
    assert steps[steps["kind"] == "extra"]["slack"].item() >= 0
    assert steps.set_index("step").loc["Frobenius identity", "slack"] == pytest.approx(0.0, abs=1e-10)
    b4 = bounds.bound_table(model, x).set_index("name").loc["B4"]
    assert total == pytest.approx(b4.slack, rel=1e-10)


def test_b4_am_gm_step_is_zero_for_scalar_output():
    # r = 1: one singular value, AM-GM is an equality
    steps = bounds.b4_step_slacks(mlp(n_out=1, seed=6), inputs(10, 5)).set_index("step")
    assert steps.loc["AM–GM on σ_j²", "slack"] == pytest.approx(0.0, abs=1e-12)
    assert steps.loc["Jensen over samples", "slack"] > 0


def test_b4_norm_step_is_zero_for_a_linear_model_with_scalar_output():
    # depth 0, N = 1: D_1 = 1 so ||D_1 W_1||_F = ||D_1||_F ||W_1||_2 exactly
    steps = bounds.b4_step_slacks(mlp(n_out=1, depth=0, seed=6), inputs(10, 5)).set_index("step")
    assert steps.loc["||DW||_F ≤ ||D||_F ||W||_2", "slack"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ local dimension

def test_sharpness_does_not_bound_local_dimensionality():
    # bias-free ReLU nets are positively homogeneous: scaling every W_l by c gives f_c = c^L f, J_x -> c^L J_x.
    # (Scaling only the last layer would not do: ∇_{W_L} f = h_{L-1} and the output bias keep Tr G away from 0.)
    x = inputs(12, 5)
    base = mlp(n_out=3, width=16, depth=2, activation="relu", bias=False, seed=7)
    lhs, trace_g, dims = [], [], []
    cs = [1.0, 0.3, 0.1, 0.03]
    for c in cs:
        model = mlp(n_out=3, width=16, depth=2, activation="relu", bias=False, seed=7)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(c)
        table = bounds.bound_table(model, x).set_index("name")
        lhs.append(table.loc[["B1", "B2", "B3", "B6", "B7"], "lhs"].to_numpy())
        trace_g.append(table.attrs["trace_G"])
        dims.append(geometry.local_measures(model, x)["local_dim"])
        if c == cs[-1]:
            b4_lhs = table.loc["B4", "lhs"]
    lhs = np.array(lhs)
    assert np.all(np.diff(lhs, axis=0) < 0) and np.all(lhs[-1] < 1e-4 * lhs[0])  # every LHS -> 0
    assert trace_g[-1] < 1e-4 * trace_g[0]  # Tr G -> 0 (as c^{2(L-1)})
    for d in dims[1:]:
        np.testing.assert_allclose(d, dims[0], rtol=1e-10)  # ... while D_loc does not move
    base_b4 = bounds.bound_table(base, x).set_index("name").loc["B4", "lhs"]
    assert b4_lhs == pytest.approx(base_b4 + 3 * 3 * math.log(0.03), rel=1e-10)  # log LVR shifts by r L log c


def test_nmls_is_the_b6_left_side():
    model, x = mlp(depth=3, seed=9), inputs(11, 5)
    assert bounds.nmls(model, x) == pytest.approx(bounds.bound_table(model, x).set_index("name").loc["B6", "lhs"],
                                                  rel=1e-12)


# ------------------------------------------------------------------------------------------------ CNN and errors

def test_cnn_first_layer_bounds_raise_a_clear_error():
    with pytest.raises(ValueError, match="first_layer=False"):
        bounds.bound_table(lenet(), inputs(4, 1, 8, 8))
    with pytest.raises(ValueError, match="dense"):
        bounds.b4_step_slacks(lenet(), inputs(4, 1, 8, 8))


def test_cnn_network_wide_bounds_hold_over_its_dense_layers():
    table = bounds.bound_table(lenet(), inputs(6, 1, 8, 8), first_layer=False)
    assert not set(FIRST_LAYER) & set(table["name"])
    assert {"B6", "B7", "B8", "B8 identity"} <= set(table["name"])
    assert table["holds"].all()
    assert (table["name"] == "B8").sum() == 2


def test_first_dense_layer_must_see_the_flattened_input():
    model = nn.Sequential(nn.Flatten(), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).to(F64)
    with pytest.raises(ValueError, match="flattened input"):
        bounds.bound_table(model, inputs(4, 5))
    assert bounds.bound_table(model, inputs(4, 5), first_layer=False)["holds"].all()


def test_zero_input_sample_raises_for_first_layer_bounds():
    x = inputs(4, 5)
    x[2] = 0.0
    with pytest.raises(ValueError, match=r"\|\|x_i\|\| = 0"):
        bounds.bound_table(mlp(), x)


def test_dense_layer_applied_along_extra_axes_raises_weight_sharing_error():
    class PerRow(nn.Module):  # the same nn.Linear applied to each of 3 rows: shared weights
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(torch.tanh(self.lin(x)).flatten(1))

    with pytest.raises(ValueError, match="shared"):
        bounds.bound_table(PerRow().to(F64), inputs(5, 3, 4))


def test_targets_of_the_wrong_shape_raise_value_error():
    with pytest.raises(ValueError, match="expected"):
        bounds.bound_table(mlp(n_out=2), inputs(4, 5), y=torch.zeros(4, 3, dtype=F64))


# ------------------------------------------------------------------------------------------------ zero volume

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_volume_log_form_bounds_hold_trivially_with_infinite_slack(dtype):
    model, x = narrow_digits_mlp(dtype), digit_inputs(6, dtype)
    rows = bounds.bound_table(model, x, y=model(x).detach()).set_index("name")
    for name in ("B4", "B5"):
        row = rows.loc[name]
        assert row.lhs == -np.inf and np.isfinite(row.rhs)
        assert row.holds and row.slack == np.inf
        assert "zero volume: log LVR = −inf" in row.description and "holds trivially" in row.description


def test_zero_volume_table_has_no_nan_and_every_bound_holds():
    model, x = narrow_digits_mlp(), digit_inputs(6)
    table = bounds.bound_table(model, x)
    values = table[["lhs", "rhs", "rhs_block", "slack"]].to_numpy(dtype=float)
    assert not np.isnan(values).any(), table.to_string()
    assert table["holds"].all()
    assert "zero volume" not in " ".join(table.loc[~table["name"].isin(["B4", "B5"]), "description"])


def saturated_tanh_mlp():
    # weights x1e20: every tanh saturates, so D_1 = 0, J_x = 0 and Tr G_{W_1} = 0 (log 0 on both sides of B4)
    model = mlp(n_out=2, width=6, depth=2, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e20)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_units_give_a_table_without_math_domain_error_or_nan(dtype):
    model, x = saturated_tanh_mlp().to(dtype), inputs(4, 5).to(dtype)
    table = bounds.bound_table(model, x, y=model(x).detach())
    assert not np.isnan(table[["lhs", "rhs", "rhs_block", "slack"]].to_numpy(dtype=float)).any(), table.to_string()
    assert table["holds"].all(), table.to_string()
    b4 = table.set_index("name").loc["B4"]
    assert b4.lhs == -np.inf and b4.rhs == -np.inf and b4.slack == 0.0  # both sides log 0: equality
    b1 = table.set_index("name").loc["B1"]
    assert b1.lhs == 0.0 and b1.rhs == 0.0 and b1.slack == 1.0  # both sides 0


def test_b4_step_slacks_of_a_zero_volume_map_are_infinite_at_am_gm_and_never_nan():
    steps = bounds.b4_step_slacks(narrow_digits_mlp(), digit_inputs(6)).set_index("step")["slack"]
    assert not steps.isna().any(), steps
    assert steps["AM–GM on σ_j²"] == np.inf and steps["total (B4)"] == np.inf
    assert steps["Frobenius identity"] == pytest.approx(0.0, abs=1e-10)
    assert np.isfinite(steps["||DW||_F ≤ ||D||_F ||W||_2"]) and np.isfinite(steps["Jensen over samples"])


def test_b4_step_slacks_of_saturated_units_have_no_nan():
    steps = bounds.b4_step_slacks(saturated_tanh_mlp(), inputs(4, 5)).set_index("step")["slack"]
    assert not steps.isna().any(), steps
    assert steps["total (B4)"] == 0.0  # both sides of B4 are log 0


# ------------------------------------------------------------------------------------------------ G = H

def test_g_equals_h_accepts_a_round_off_residual_and_states_the_rule():
    model, x = mlp(n_out=3, seed=5), inputs(12, 5)
    y = model(x).detach() * (1 + 1e-15)  # not bit-identical outputs (e.g. another batch size): still L = 0
    table = bounds.bound_table(model, x, y=y)
    assert 0 < table.attrs["train_loss"] <= table.attrs["G_equals_H_tol"]
    assert table.attrs["G_equals_H"] is True
    assert "100 eps" in table.attrs["G_equals_H_rule"]


def test_g_equals_h_is_false_for_a_small_but_real_residual():
    model, x = mlp(n_out=3, seed=5), inputs(12, 5)
    table = bounds.bound_table(model, x, y=model(x).detach() + 1e-10)
    assert table.attrs["G_equals_H"] is False


def test_g_equals_h_tolerance_scales_with_float32_eps():
    model, x = mlp(n_out=3, seed=5).float(), inputs(12, 5).float()
    y = model(x).detach()
    assert bounds.bound_table(model, x, y=y * (1 + 1e-6)).attrs["G_equals_H"] is True  # ~8 float32 ulp
    assert bounds.bound_table(model, x, y=y + 1e-2).attrs["G_equals_H"] is False


# ------------------------------------------------------------------------------------------------ zero weights

def test_zero_weight_matrix_raises_instead_of_nan():
    model = mlp(depth=2)
    with torch.no_grad():
        model[3].weight.zero_()
    with pytest.raises(ValueError, match="W_l = 0"):
        bounds.bound_table(model, inputs(4, 5))
    with pytest.raises(ValueError, match="W_l = 0"):
        bounds.nmls(model, inputs(4, 5))


# ------------------------------------------------------------------------------------------------ arguments

@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
@pytest.mark.parametrize("fn", ["bound_table", "b4_step_slacks", "nmls"])
def test_batch_size_must_be_a_positive_integer_or_none(fn, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        getattr(bounds, fn)(mlp(), inputs(4, 5), batch_size=batch_size)


@pytest.mark.parametrize("flag", ["first_layer", "identity_check"])
@pytest.mark.parametrize("value", ["no", 0, None])
def test_boolean_options_must_be_booleans(flag, value):
    with pytest.raises(ValueError, match=flag):
        bounds.bound_table(mlp(), inputs(4, 5), **{flag: value})


def test_numpy_integer_batch_size_is_accepted():
    table = bounds.bound_table(mlp(), inputs(6, 5), batch_size=np.int64(4))
    reference = bounds.bound_table(mlp(), inputs(6, 5))
    np.testing.assert_allclose(table["lhs"], reference["lhs"], rtol=1e-12)
