"""Figures of the chapter "Beyond the paper" and the introduction's headline figure: one mark per run, groups
coloured, axes labelled."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flatcomp_tutorial import figures  # noqa: E402


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for k, method in enumerate(["SGD", "label noise", "SAM"]):
        for seed in range(3):
            mls = 0.3 / (k + 1) + 0.01 * rng.random()
            rows.append({"method": method, "seed": seed, "trace_g": 40 / (k + 1) + rng.random(), "inputs_mean_mls": mls,
                         "median_mls_radius": 1 / mls, "median_radius": 2 + k, "median_segment_radius": 3.1})
    return pd.DataFrame(rows)


def test_group_bars_draw_one_bar_per_group_at_its_mean_and_every_run_as_a_dot():
    t = _runs()
    fig = figures.plot_group_bars(t, {"trace_g": "Tr G", "median_radius": "radius"})
    ax = fig.axes[0]
    assert np.allclose([p.get_height() for p in ax.patches], t.groupby("method", sort=False).trace_g.mean())
    assert sum(len(l.get_xdata()) for l in ax.lines) == len(t) and ax.get_ylabel() == "Tr G"
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["SGD", "label noise", "SAM"]
    plt.close(fig)


def test_group_scatter_plots_every_run_once_per_panel_with_one_legend_of_groups_below_the_panels():
    t = _runs()
    fig = figures.plot_group_scatter(t, "trace_g", {"median_radius": "radius"}, xlabel="Tr G", logx=True)
    ax = fig.axes[0]
    assert sum(len(l.get_xdata()) for l in ax.lines) == len(t) and ax.get_xscale() == "log"
    assert ax.get_legend() is None and len(fig.legends) == 1     # outside the panels: it hides no run
    assert [t_.get_text() for t_ in fig.legends[0].get_texts()] == ["SGD", "label noise", "SAM"]
    plt.close(fig)


def test_radii_plot_shows_first_order_and_empirical_radius_for_every_run_on_log_axes():
    t = _runs()
    fig = figures.plot_radii(t)
    ax = fig.axes[0]
    points = [l for l in ax.lines if l.get_linestyle() == "None"]
    assert sum(len(l.get_xdata()) for l in points) == 2 * len(t)
    assert ax.get_xscale() == ax.get_yscale() == "log" and "MLS" in ax.get_xlabel()
    plt.close(fig)


def test_headline_figure_normalises_at_the_late_phase_start_and_scatters_late_checkpoints():
    h = pd.DataFrame({"step": [0, 10, 20, 30], "phase": ["early", "late", "late", "late"],
                      "trace_g": [4.0, 2.0, 1.5, 1.0], "mean_mls": [0.4, 0.2, 0.15, 0.1]})
    fig = figures.plot_headline(h)
    left, right = fig.axes[:2]
    assert np.allclose(left.lines[0].get_ydata(), [2, 1, 0.75, 0.5]) and np.allclose(left.lines[1].get_ydata(),
                                                                                    [2, 1, 0.75, 0.5])
    assert len(right.collections[0].get_offsets()) == 3 and right.get_xlabel() == "trace g"
    plt.close(fig)


def test_headline_figure_without_phases_treats_every_checkpoint_as_late():
    h = pd.DataFrame({"step": [0, 10, 20], "trace_g": [4.0, 2.0, 1.0], "mean_mls": [0.4, 0.2, 0.1]})
    fig = figures.plot_headline(h)
    left, right = fig.axes[:2]
    assert np.allclose(left.lines[0].get_ydata(), [1, 0.5, 0.25]) and len(right.collections[0].get_offsets()) == 3
    plt.close(fig)


def test_radius_scatter_draws_every_finite_input_and_the_diagonal():
    first, emp = np.array([1.0, 2.0, 4.0, np.inf]), np.array([1.0, 1.5, 2.0, 3.0])
    fig = figures.plot_radius_scatter({"run": (first, emp)})
    ax = fig.axes[0]
    assert len(ax.lines[0].get_xdata()) == 3 and ax.lines[-1].get_label() == "y = x"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    plt.close(fig)
