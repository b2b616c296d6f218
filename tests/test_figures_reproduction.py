"""Figures of the reproduction chapters (late phase, sweep): they draw from histories and result tables and label
their axes from measures.label."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flatcomp_tutorial import figures, late, stats  # noqa: E402
from flatcomp_tutorial.measures import label  # noqa: E402


def _history(n_early=5, n_late=10, slope=1.0, seed=0):
    rng = np.random.default_rng(seed)
    n = n_early + n_late
    t = np.arange(n, dtype=float)
    sharp = 20.0 - slope * t + 0.01 * rng.standard_normal(n)
    return pd.DataFrame({
        "step": 100 * t, "phase": ["early"] * n_early + ["late"] * n_late,
        "train_loss": np.geomspace(0.5, 1e-4, n), "trace_h": sharp + 1.0, "trace_h_stderr": np.full(n, 0.5),
        "trace_g": sharp, "lambda_max": sharp / 4, "test_trace_h": sharp + 2.0,
        "mean_mls": 0.01 * sharp, "mean_log_lvr": np.log(sharp) - 5.0, "mean_local_dim": 1.5 + 0.1 * rng.random(n),
    })


def test_plot_late_phase_panels_labels_and_markers():
    fig = figures.plot_late_phase({"a": _history(), "b": _history(slope=0.5)}, title="t")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(axes) == 6
    for ax in axes:
        assert ax.get_xlabel() == "SGD step" and ax.get_ylabel()
        # one dotted late-phase marker per run
        assert sum(1 for line in ax.lines if line.get_linestyle() == ":") == 2
    assert axes[0].get_yscale() == "log"
    # Tr H panel: band + Tr G dashed for each run
    assert len(axes[1].collections) == 2
    assert sum(1 for line in axes[1].lines if line.get_linestyle() == "--") == 2
    plt.close(fig)


def test_plot_late_phase_labels_each_panel_from_measures_label():
    fig = figures.plot_late_phase({"a": _history()})
    axes = [ax for ax in fig.axes if ax.axison]
    assert "Tr H" in axes[1].get_ylabel() and axes[1].get_ylabel().startswith(label("trace_h"))
    assert [ax.get_ylabel() for ax in axes[2:]] == [label(c) for c in ("lambda_max", "mean_mls", "mean_log_lvr",
                                                                       "mean_local_dim")]
    plt.close(fig)


def test_plot_late_phase_turns_off_unused_panels():
    fig = figures.plot_late_phase({"a": _history()}, columns=("train_loss", "trace_g"), ncols=3)
    assert [ax.axison for ax in fig.axes] == [True, True, False]
    plt.close(fig)


def test_plot_train_test_sharpness():
    fig = figures.plot_train_test_sharpness({"a": _history()})
    ax0, ax1 = fig.axes[:2]
    assert ax0.get_yscale() == "log" and "test" in ax0.get_ylabel() and ax1.get_ylabel()
    plt.close(fig)


# Computation, not drawing: it belongs with the tests of flatcomp_tutorial.stats (checkpoint_correlations moved
# there from experiments); kept here, unchanged, until it is moved.
def test_checkpoint_correlations_on_monotone_history():
    h = _history(n_late=12)
    t = stats.checkpoint_correlations(h, phase="late", n_boot=50, seed=0)
    sp = t[t.method == "spearman"].set_index(["sharpness", "compression"])
    assert sp.loc[("trace_g", "mean_mls"), "r"] == pytest.approx(1.0)
    assert sp.loc[("trace_g", "mean_log_lvr"), "r"] == pytest.approx(1.0)
    assert (sp.n_checkpoints == 12).all() and (t.phase == "late").all()
    assert (sp.ci_low <= sp.r + 1e-12).all() and (sp.r <= sp.ci_high + 1e-12).all()
    # only late rows are used
    assert stats.checkpoint_correlations(h, phase="all", n_boot=0).n_checkpoints.iloc[0] == len(h)


def _results(n=12, seed=0):
    rng = np.random.default_rng(seed)
    lr = rng.choice([0.05, 0.1, 0.2], n)
    b = rng.choice([4, 16], n)
    tr = 10 / (lr / b) ** 0.3 + rng.random(n)
    return pd.DataFrame({"lr": lr, "batch_size": b, "trace_h": tr, "test_trace_h": 1.01 * tr, "lambda_max": tr / 3,
                         "relative_flatness": tr / 10, "mean_mls": 0.005 * tr, "mean_log_lvr": np.log(tr),
                         "mean_local_dim": 1.5 + rng.random(n), "nmls": tr / 5})


def test_plot_sweep_scatter_grid_and_colorbar():
    fig = figures.plot_sweep_scatter(_results())
    panels = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    assert len(panels) == 12
    assert any("η/B" in ax.get_ylabel() for ax in fig.axes)
    plt.close(fig)


def test_plot_sweep_scatter_does_not_modify_the_results_table():
    results = _results()
    before = results.copy()
    plt.close(figures.plot_sweep_scatter(results))
    pd.testing.assert_frame_equal(results, before)


def test_plot_vs_lr_over_batch_and_train_vs_test():
    fig = figures.plot_vs_lr_over_batch(_results(), columns=("trace_h", "mean_mls"))
    assert all(ax.get_xscale() == "log" and "η/B" in ax.get_xlabel() for ax in fig.axes[:2])
    plt.close(fig)
    fig = figures.plot_train_vs_test(_results())
    assert "training" in fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    plt.close(fig)


def test_plot_correlations_rows_and_groups():
    rows = [{"sharpness": s, "compression": c, "method": m, "r": 0.5, "ci_low": 0.2, "ci_high": 0.8, "run": g}
            for s in ("trace_h", "lambda_max") for c in ("mean_mls", "mean_log_lvr") for m in ("pearson", "spearman")
            for g in ("A", "B")]
    fig = figures.plot_correlations(pd.DataFrame(rows), group="run")
    ax = fig.axes[0]
    assert len(ax.get_yticks()) == 4 and "Spearman" in ax.get_xlabel()
    assert len(ax.containers) == 8  # 4 pairs x 2 groups, one errorbar each
    plt.close(fig)


def test_plot_seed_changes_draws_one_panel_per_pair_with_a_point_per_seed_and_a_mean_per_arm():
    table = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                          "dx": [-1.0, -0.8, -0.9, 0.0, 0.1, -0.1], "dy": [-2.0, -1.5, -1.8, -0.5, -0.4, -0.6]})
    iv = late.seed_intervals(table, ["dx", "dy"])
    fig = figures.plot_seed_changes(table, iv, pairs=[("dx", "dy"), ("dy", "dx")], labels={"dx": "change x"})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[0].get_xlabel() == "change x" and axes[0].get_ylabel() == "dy"
    seed_points = [ln for ln in axes[0].lines if ln.get_linestyle() == "None" and len(ln.get_xdata()) == 3]
    assert len(seed_points) == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"] and axes[0].get_legend() is None
    plt.close(fig)
