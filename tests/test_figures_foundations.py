"""Figures of the chapters "A first network", "Measuring sharpness" and "Measuring compression": they draw given
data and label their axes (from measures.label where a column has a label)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from problems import inputs, mlp  # noqa: E402

import flatcomp_tutorial as fc  # noqa: E402
from flatcomp_tutorial import figures  # noqa: E402
from flatcomp_tutorial.measures import label  # noqa: E402


def test_plot_history_labels_step_and_loss_axes_from_the_label_table():
    n = 5
    h = pd.DataFrame({"step": np.arange(n) * 10, "train_loss": np.geomspace(1, 0.01, n),
                      "test_loss": np.geomspace(1, 0.1, n), "train_acc": np.linspace(0.1, 1, n),
                      "test_acc": np.linspace(0.1, 0.9, n)})
    fig = figures.plot_history(h, title="run")
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_xlabel() == label("step") and ax_loss.get_ylabel() == label("loss")
    assert ax_loss.get_yscale() == "log" and np.allclose(ax_acc.lines[0].get_ydata(), 100 * h["train_acc"])
    assert all(ax.get_legend() is not None for ax in fig.axes) and fig._suptitle.get_text() == "run"
    plt.close(fig)


def test_show_images_draws_one_panel_per_image_with_its_label():
    x = np.random.default_rng(0).random((5, 1, 4, 4))
    fig = figures.show_images(x, labels=np.arange(5), n=5)
    titled = [ax.get_title() for ax in fig.axes if ax.images]
    assert titled == ["0", "1", "2", "3", "4"]
    plt.close(fig)


def test_plot_trace_convergence_and_spectral_density():
    df = pd.DataFrame({"method": ["hutchinson"] * 2 + ["hutch++"] * 2, "probes": [4, 16, 4, 16],
                       "mean": [1.0, 1.1, 1.05, 1.0], "stderr": [0.2, 0.1, 0.1, 0.05]})
    fig = figures.plot_trace_convergence(df, exact=1.0)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_xlabel()
    plt.close(fig)
    grid = np.linspace(-1, 3, 50)
    fig = figures.plot_spectral_density(grid, np.exp(-grid ** 2) + 1e-3, eigenvalues=np.array([0.0, 0.1, 2.0]))
    assert fig.axes[0].get_yscale() == "log" and fig.axes[0].get_ylabel()
    plt.close(fig)


def test_plot_local_ellipse_titles_show_singular_values():
    toy = mlp(2, 2, width=4, depth=1)
    x0 = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    s = fc.geometry.local_measures(toy, x0)["singular_values"][0]
    fig = figures.plot_local_ellipse(fc.geometry.local_ellipse(toy, x0, radius=0.1, n_points=50))
    assert f"{s[0]:.3g}" in fig.axes[1].get_title()
    plt.close(fig)


def test_plot_ball_convergence_one_log_log_panel_per_measure():
    table = pd.DataFrame([{"alpha": a, "samples": s, "lvr": a * 0.1, "mls": a * 0.2, "local_dim": a * 0.3}
                          for s in (100, 1000) for a in (1e-6, 1.0)])
    fig = figures.plot_ball_convergence(table)
    assert len(fig.axes) == 3 and all(ax.get_xscale() == "log" for ax in fig.axes)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]
    plt.close(fig)


def test_plot_layer_profiles_and_histograms():
    model, x = mlp(4, 3, width=5), inputs(10, 4)
    fig = figures.plot_layer_profiles({"a": fc.geometry.layerwise_measures(model, x)})
    assert len(fig.axes) == 3 and all(ax.get_xlabel() == "dense layer l" for ax in fig.axes)
    plt.close(fig)
    m = fc.geometry.local_measures(model, x)
    fig = figures.plot_measure_histograms({"before": m, "after": m})
    assert len(fig.axes) == 3 and all(ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def test_measure_histograms_label_their_x_axes_from_the_label_table():
    m = {"log_lvr": np.array([-3.0, -2.0]), "mls": np.array([1.0, 2.0]), "local_dim": np.array([1.2, 1.5])}
    fig = figures.plot_measure_histograms({"run": m})
    assert [ax.get_xlabel() for ax in fig.axes] == [label("log_lvr"), label("mls"), label("local_dim")]
    plt.close(fig)


def test_measure_histograms_count_zero_volume_inputs_instead_of_crashing():
    finite = {"log_lvr": np.array([-3.0, -2.0]), "mls": np.array([1.0, 2.0]), "local_dim": np.array([1.2, 1.5])}
    zero = {"log_lvr": np.array([-np.inf, -2.5]), "mls": np.array([0.5, 1.0]), "local_dim": np.array([1.0, 1.1])}
    fig = figures.plot_measure_histograms({"wide": finite, "narrow": zero})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["wide", "narrow (1 at −inf: zero volume)"]
    plt.close(fig)
