"""Plotting/plumbing helpers of the chapters "Measuring sharpness" and "Measuring compression"."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import flatcomp_tutorial as fc  # noqa: E402
from flatcomp_tutorial import plotting as P  # noqa: E402


@pytest.fixture(scope="module")
def relu_net():
    data = fc.load_dataset("teacher_student", n_train=32, n_test=8, input_dim=4, n_outputs=2)
    model = fc.make_model("mlp", (4,), 2, width=6, depth=2, activation="relu", seed=0, dtype=torch.float64)
    return model, data.x_train.double(), data.y_train.double()


def test_rescale_layer_keeps_function_and_rejects_bad_input(relu_net):
    model, x, _ = relu_net
    m = P.rescale_layer(model, 1, 7.0)
    assert torch.allclose(m(x), model(x), atol=1e-12)
    assert torch.allclose(m[1].weight, 7.0 * model[1].weight)
    assert torch.allclose(m[3].weight, model[3].weight / 7.0)
    with pytest.raises(ValueError):
        P.rescale_layer(model, 1, -1.0)
    with pytest.raises(ValueError):
        P.rescale_layer(model, 3, 2.0)  # the last dense layer has no successor


def test_rescaling_sweep_invariants_and_explorer(relu_net):
    model, x, y = relu_net
    sweep = P.rescaling_sweep(model, x, y, factors=[0.5, 1.0, 2.0], layer=1, probes=8)
    assert list(sweep.index) == [0.5, 1.0, 2.0]
    assert (sweep["max_output_change"] < 1e-10).all()
    for col in ("kappa_1", "kappa_2", "adaptive"):
        assert np.allclose(sweep[col], sweep[col].iloc[1], rtol=1e-8)
    assert not np.allclose(sweep["trace_g"], sweep["trace_g"].iloc[1], rtol=1e-3)
    fig = P.plot_rescaling_explorer(sweep, 0.3)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "c = 2"
    plt.close(fig)


def test_plot_trace_convergence_and_spectral_density():
    df = pd.DataFrame({"method": ["hutchinson"] * 2 + ["hutch++"] * 2, "probes": [4, 16, 4, 16],
                       "mean": [1.0, 1.1, 1.05, 1.0], "stderr": [0.2, 0.1, 0.1, 0.05]})
    fig = P.plot_trace_convergence(df, exact=1.0)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_xlabel()
    plt.close(fig)
    grid = np.linspace(-1, 3, 50)
    fig = P.plot_spectral_density(grid, np.exp(-grid ** 2) + 1e-3, eigenvalues=np.array([0.0, 0.1, 2.0]))
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_ylabel()
    plt.close(fig)


def test_plot_local_ellipse_titles_show_singular_values():
    toy = fc.make_model("mlp", (2,), 2, width=4, depth=1, activation="tanh", seed=0, dtype=torch.float64)
    x0 = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    s = fc.geometry.local_measures(toy, x0)["singular_values"][0]
    fig = P.plot_local_ellipse(toy, x0, radius=0.1, n_points=50)
    assert f"{s[0]:.3g}" in fig.axes[1].get_title()
    plt.close(fig)


def test_ball_convergence_table_small_alpha_is_accurate_and_plot():
    model = fc.make_model("mlp", (3,), 2, width=5, depth=1, activation="tanh", seed=0, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    table = P.ball_convergence_table(model, x, alphas=[1e-6, 1.0], samples=(4000,), seed=0)
    assert list(table.columns) == ["alpha", "samples", "lvr", "mls", "local_dim"]
    small, large = table.iloc[0], table.iloc[1]
    assert small["mls"] < 0.1 and small["mls"] < large["mls"]
    fig = P.plot_ball_convergence(table)
    assert len(fig.axes) == 3 and all(ax.get_xscale() == "log" for ax in fig.axes)
    plt.close(fig)


def test_plot_layer_profiles_and_histograms():
    model = fc.make_model("mlp", (4,), 3, width=5, depth=2, activation="tanh", seed=0)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    fig = P.plot_layer_profiles({"a": fc.geometry.layerwise_measures(model, x)})
    assert len(fig.axes) == 3 and all(ax.get_xlabel() == "dense layer l" for ax in fig.axes)
    plt.close(fig)
    m = fc.geometry.local_measures(model, x)
    fig = P.plot_measure_histograms({"before": m, "after": m})
    assert len(fig.axes) == 3 and all(ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def test_measure_histograms_count_zero_volume_inputs_instead_of_crashing():
    finite = {"log_lvr": np.array([-3.0, -2.0]), "mls": np.array([1.0, 2.0]), "local_dim": np.array([1.2, 1.5])}
    zero = {"log_lvr": np.array([-np.inf, -2.5]), "mls": np.array([0.5, 1.0]), "local_dim": np.array([1.0, 1.1])}
    fig = P.plot_measure_histograms({"wide": finite, "narrow": zero})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["wide", "narrow (1 at −inf: zero volume)"]
    plt.close(fig)
