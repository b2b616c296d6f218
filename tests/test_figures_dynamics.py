"""Figures of the chapters "Why SGD finds flat minima" and "Local dimensionality is not controlled by sharpness":
they draw from given tables and label their axes."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flatcomp_tutorial import figures  # noqa: E402
from flatcomp_tutorial.measures import label  # noqa: E402


def _history(lr: float, n: int = 10) -> pd.DataFrame:
    steps = np.arange(n) * 10
    return pd.DataFrame({"step": steps, "train_loss": np.exp(-steps / 20.0),
                         "lambda_max": 2 / lr * (1 - np.exp(-steps / 30.0)),
                         "trace_g": 10 - steps / 20, "mean_local_dim": 1.2 + steps / 1000,
                         "phase": ["early"] * (n // 2) + ["late"] * (n - n // 2)})


def _grid() -> pd.DataFrame:
    return pd.DataFrame([dict(lr=lr, batch_size=b, trace_g=b / lr / 10, mean_mls=0.01 * b / lr, mean_local_dim=1 + lr)
                         for lr in (0.05, 0.1) for b in (8, 32)])


def test_plot_quadratic_gd_draws_two_labelled_panels():
    fig = figures.plot_quadratic_gd(lam=1.0, lrs=(0.5, 2.5), steps=10)
    assert len(fig.axes) == 2 and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def test_plot_edge_of_stability_draws_the_two_over_eta_lines():
    fig = figures.plot_edge_of_stability({0.1: _history(0.1), 0.2: _history(0.2)}, title="EoS")
    ax = fig.axes[0]
    ys = sorted(round(line.get_ydata()[0], 6) for line in ax.lines if line.get_linestyle() == "--")
    assert ys == [10.0, 20.0]
    assert fig.axes[1].get_yscale() == "log" and "λ_max" in ax.get_ylabel()
    assert fig.axes[1].get_ylabel() == label("train_loss")
    plt.close(fig)


def test_plot_lr_batch_grid_places_points_at_two_b_over_eta():
    fig = figures.plot_lr_batch_grid(_grid())
    xs = sorted(line.get_xdata()[0] for line in fig.axes[0].lines if len(line.get_xdata()) == 1)
    assert np.allclose(xs, sorted(2 * b / lr for lr in (0.05, 0.1) for b in (8, 32)))
    assert fig.axes[0].get_xscale() == "log" and "2B/η" in fig.axes[0].get_xlabel()
    plt.close(fig)


def test_plot_measure_trajectories_one_panel_per_column_and_late_marker():
    fig = figures.plot_measure_trajectories({"a": _history(0.1), "b": _history(0.2)},
                                            {"trace_g": "Tr G", "mean_local_dim": "D_loc"}, logy=("trace_g",))
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log" and fig.axes[1].get_ylabel() == "D_loc"
    vlines = [line for line in fig.axes[0].lines if line.get_linestyle() == ":"]
    assert len(vlines) == 2 and vlines[0].get_xdata()[0] == 50
    plt.close(fig)


def test_plot_measure_trajectories_without_a_late_phase_draws_no_marker():
    h = _history(0.1).drop(columns="phase")
    fig = figures.plot_measure_trajectories({"a": h}, {"trace_g": "Tr G"})
    assert not [line for line in fig.axes[0].lines if line.get_linestyle() == ":"]
    assert fig.axes[0].get_xlabel() == label("step")
    plt.close(fig)


def test_plot_weight_scaling_and_scatter():
    c = np.array([0.5, 1.0, 2.0])
    table = pd.DataFrame({"trace_g": c ** 4, "local_dim": np.ones(3)}, index=pd.Index(c, name="c"))
    fig = figures.plot_weight_scaling(table)
    ax = fig.axes[0]
    assert "weight scale" in ax.get_xlabel()
    assert np.allclose(ax.lines[1].get_ydata(), 1.0) and np.allclose(ax.lines[0].get_ydata(), c ** 4)
    plt.close(fig)
    fig = figures.plot_sharpness_vs_compression(_grid(), "trace_g", {"mean_mls": "MLS", "mean_local_dim": "D_loc"})
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "D_loc"
    assert fig.axes[0].get_xlabel() == label("trace_g")
    plt.close(fig)
