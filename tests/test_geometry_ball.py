"""Specification of the chapter "Measuring compression"'s two experiments in flatcomp_tutorial.geometry: the
Gaussian-ball convergence table and the local ellipse (the image of a small disc of inputs under a map R² → R²)."""
import numpy as np
import pytest
import torch
from problems import inputs, mlp

from flatcomp_tutorial import geometry


@pytest.fixture(scope="module")
def toy():
    return mlp(2, 2, width=4, depth=1)


def test_ball_convergence_table_small_alpha_is_accurate():
    model, x = mlp(3, 2, width=5, depth=1), inputs(3, 3)
    table = geometry.ball_convergence_table(model, x, alphas=[1e-6, 1.0], samples=(4000,), seed=0)
    assert list(table.columns) == ["alpha", "samples", "lvr", "mls", "local_dim"]
    small, large = table.iloc[0], table.iloc[1]
    assert small["mls"] < 0.1 and small["mls"] < large["mls"]


def test_ball_convergence_table_has_one_row_per_alpha_and_sample_count():
    model, x = mlp(3, 2, width=5, depth=1), inputs(2, 3)
    table = geometry.ball_convergence_table(model, x, alphas=[1e-4, 1e-2], samples=(50, 100), seed=0)
    assert list(zip(table["samples"], table["alpha"])) == [(50, 1e-4), (50, 1e-2), (100, 1e-4), (100, 1e-2)]


def test_local_ellipse_singular_values_are_those_of_the_jacobian(toy):
    x0 = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    e = geometry.local_ellipse(toy, x0, radius=0.1, n_points=50)
    s = geometry.local_measures(toy, x0)["singular_values"][0]
    np.testing.assert_allclose(e.singular_values, s, rtol=1e-10)
    np.testing.assert_allclose(e.x0, [0.1, 0.2])


def test_local_ellipse_samples_the_disc_and_maps_it_through_the_model(toy):
    x0 = torch.tensor([0.1, 0.2], dtype=torch.float64)
    e = geometry.local_ellipse(toy, x0, radius=0.1, n_points=50, seed=3)
    assert e.offsets.shape == e.outputs.shape == (50, 2) and e.angles.shape == (50,)
    assert (np.linalg.norm(e.offsets, axis=1) <= 0.1 + 1e-12).all()
    with torch.no_grad():
        expected = toy(x0.reshape(1, 2) + torch.as_tensor(e.offsets)).numpy()
        f0 = toy(x0.reshape(1, 2)).numpy()[0]
    np.testing.assert_allclose(e.outputs, expected, rtol=1e-12)
    np.testing.assert_allclose(e.f0, f0, rtol=1e-12)


def test_local_ellipse_is_linear_image_for_a_small_disc(toy):
    x0 = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    e = geometry.local_ellipse(toy, x0, radius=1e-4, n_points=20)
    J = geometry.jacobians(toy, x0)[0].numpy()
    np.testing.assert_allclose(e.outputs - e.f0, e.offsets @ J.T, atol=1e-7)


def test_local_ellipse_is_reproducible_for_a_seed(toy):
    a = geometry.local_ellipse(toy, [0.0, 0.0], n_points=10, seed=1)
    b = geometry.local_ellipse(toy, [0.0, 0.0], n_points=10, seed=1)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.outputs, b.outputs)
