"""Figures of the bounds chapters (B1-B8) and of the rescaling experiment: they draw from given tables and label
their axes."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flatcomp_tutorial import figures  # noqa: E402


def _steps(scale: float) -> pd.DataFrame:
    rows = [("AM–GM on σ_j²", 0.5, "step"), ("Frobenius identity", -1e-17, "step"),
            ("||DW||_F ≤ ||D||_F ||W||_2", 1.0, "step"), ("Jensen over samples", 0.1, "step"),
            ("total (B4)", 1.6, "total"), ("block trace", 0.7, "extra")]
    return pd.DataFrame([{"step": s, "inequality": "", "slack": v * scale, "kind": k} for s, v, k in rows])


def test_plot_b4_steps_stacks_the_steps_up_to_the_total():
    fig = figures.plot_b4_steps({"net A": _steps(1.0), "net B": _steps(2.0)}, title="B4")
    ax = fig.axes[0]
    assert "nats" in ax.get_ylabel() and ax.get_xlabel()
    # 4 steps + hatched extra, 2 networks each
    assert len(ax.patches) == 2 * 5
    tops = {}
    for p in ax.patches[:8]:
        tops[round(p.get_x(), 6)] = max(tops.get(round(p.get_x(), 6), 0), p.get_y() + p.get_height())
    assert sorted(np.round(list(tops.values()), 6)) == [1.6, 3.2]
    plt.close(fig)


def test_plot_amgm_draws_spectrum_and_bound_with_labels():
    fig = figures.plot_amgm(rho=0.6, r=5)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_plot_slack_by_network_one_line_per_bound_on_log_axis():
    df = pd.DataFrame({"B1": [3.0, 4.0, 15.0], "B6": [2.5, 2.7, 11.0]}, index=["a", "b", "c"])
    fig = figures.plot_slack_by_network(df, title="slack")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "slack" in ax.get_ylabel()
    assert len([l for l in ax.get_lines() if l.get_label() in ("B1", "B6")]) == 2
    plt.close(fig)


def test_plot_rescaling_normalises_at_c_equal_one():
    c = [0.1, 1.0, 10.0]
    df = pd.DataFrame({"invariant": [2.0, 2.0, 2.0], "quadratic": [100.0, 1.0, 100.0]}, index=c)
    fig = figures.plot_rescaling(df)
    ax = fig.axes[0]
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(lines["invariant"].get_ydata(), 1.0)
    np.testing.assert_allclose(lines["quadratic"].get_ydata(), [100.0, 1.0, 100.0])
    assert ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_plot_rescaling_explorer_shows_the_ratios_at_the_nearest_factor():
    sweep = pd.DataFrame({"max_output_change": [0.0, 0.0, 0.0], "trace_g": [4.0, 1.0, 0.25],
                          "trace_h": [4.0, 1.0, 0.25], "trace_h_stderr": [0.1, 0.1, 0.1], "kappa_1": [2.0, 2.0, 2.0]},
                         index=pd.Index([0.5, 1.0, 2.0], name="c"))
    fig = figures.plot_rescaling_explorer(sweep, 0.3)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "c = 2"
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["trace_g", "trace_h", "kappa_1"]
    np.testing.assert_allclose([p.get_height() for p in fig.axes[1].patches], [0.25, 0.25, 1.0])
    plt.close(fig)


def test_plot_bound_sides_draws_each_run_below_the_diagonal_with_a_marker_at_its_last_checkpoint():
    cp = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "run": ["a0"] * 3 + ["b0"] * 3,
                       "lhs_B2": [1.0, 0.8, 0.5, 2.0, 1.9, 1.8], "rhs_B2": [3.0, 2.5, 2.0, 4.0, 4.0, 3.9],
                       "lhs_B6": [1.0] * 6, "rhs_B6": [2.0] * 6})
    fig = figures.plot_bound_sides(cp, title="sides")
    left, right = fig.axes
    assert left.get_xlabel() == "right side of B2" and left.get_ylabel() == "left side of B2"
    assert left.get_xscale() == left.get_yscale() == "log" and right.get_xlabel() == "right side of B6"
    lines = left.get_lines()       # per run: trajectory, last-checkpoint marker; then the diagonal
    assert np.allclose(lines[0].get_xdata(), [3.0, 2.5, 2.0]) and np.allclose(lines[1].get_ydata(), [0.5])
    assert lines[1].get_color() == "C0" and lines[3].get_color() == "C1"
    assert np.allclose(lines[-1].get_xdata(), lines[-1].get_ydata())
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["a", "b", "LHS = RHS"]
    plt.close(fig)
