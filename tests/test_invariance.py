"""Specification of flatcomp_tutorial.invariance (chapters "Measuring sharpness", "Network-wide and
reparametrization-invariant bounds", "Local dimensionality is not controlled by sharpness"): a layer rescaling keeps a
ReLU network's function and the invariant measures, a global weight scaling moves each measure by its power of c."""
import numpy as np
import pytest
import torch
from problems import inputs, mlp

import flatcomp_tutorial as fc
from flatcomp_tutorial import invariance


@pytest.fixture(scope="module")
def relu_net():
    data = fc.load_dataset("teacher_student", n_train=32, n_test=8, input_dim=4, n_outputs=2)
    model = mlp(4, 2, activation="relu")
    return model, data.x_train.double(), data.y_train.double()


def test_rescale_layer_keeps_function_and_rejects_bad_input(relu_net):
    model, x, _ = relu_net
    m = invariance.rescale_layer(model, 1, 7.0)
    assert torch.allclose(m(x), model(x), atol=1e-12)
    assert torch.allclose(m[1].weight, 7.0 * model[1].weight)
    assert torch.allclose(m[3].weight, model[3].weight / 7.0)
    with pytest.raises(ValueError):
        invariance.rescale_layer(model, 1, -1.0)
    with pytest.raises(ValueError):
        invariance.rescale_layer(model, 3, 2.0)  # the last dense layer has no successor


def test_rescale_layer_leaves_the_original_model_unchanged(relu_net):
    model, _, _ = relu_net
    before = [p.detach().clone() for p in model.parameters()]
    invariance.rescale_layer(model, 1, 3.0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_rescaling_sweep_keeps_kappa_and_adaptive_sharpness_but_moves_trace_g(relu_net):
    model, x, y = relu_net
    sweep = invariance.rescaling_sweep(model, x, y, factors=[0.5, 1.0, 2.0], layer=1, probes=8)
    assert list(sweep.index) == [0.5, 1.0, 2.0]
    assert (sweep["max_output_change"] < 1e-10).all()
    for col in ("kappa_1", "kappa_2", "adaptive"):
        assert np.allclose(sweep[col], sweep[col].iloc[1], rtol=1e-8)
    assert not np.allclose(sweep["trace_g"], sweep["trace_g"].iloc[1], rtol=1e-3)


def test_scale_weights_multiplies_every_parameter_and_copies(relu_net):
    model, _, _ = relu_net
    scaled = invariance.scale_weights(model, 3.0)
    assert all(torch.allclose(q, 3.0 * p) for p, q in zip(model.parameters(), scaled.parameters()))
    assert scaled is not model


def test_weight_scaling_table_powers_of_c_for_bias_free_relu():
    # width 16: every input's Jacobian has full rank 3 (at width 8 some ReLU patterns leave rank 2, i.e. zero volume,
    # log LVR = -inf, and the geometric-mean volume is 0 at every c, so its ratio is undefined)
    model = mlp((1, 4, 4), 3, width=16, activation="relu", bias=False)
    x = inputs(20, 1, 4, 4)
    y = torch.zeros(20, 3, dtype=torch.float64)
    t = invariance.weight_scaling_table(model, x, y, [0.5, 1.0, 2.0])
    assert (t.gm_lvr > 0).all()
    L = 3
    assert np.allclose(t.trace_g / t.trace_g[1.0], t.index.to_numpy() ** (2 * (L - 1)), rtol=1e-8)
    assert np.allclose(t.mean_mls_sq / t.mean_mls_sq[1.0], t.index.to_numpy() ** (2 * L), rtol=1e-8)
    assert np.allclose(t.gm_lvr / t.gm_lvr[1.0], t.index.to_numpy() ** (3 * L), rtol=1e-8)   # r = 3 outputs
    assert np.allclose(t.nmls / t.nmls[1.0], t.index.to_numpy() ** (2 * (L - 1)), rtol=1e-8)
    assert np.allclose(t.mean_local_dim, t.mean_local_dim[1.0], rtol=1e-10)
