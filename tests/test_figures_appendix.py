"""Figure of the appendix "Execution statistics": it draws the given table."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from flatcomp_tutorial import figures  # noqa: E402


def test_plot_run_times_draws_one_bar_per_recorded_chapter_and_the_budget():
    table = pd.DataFrame({"chapter": ["intro", "sweep", "never"], "wall_s": [9.5, 150.0, np.nan]})
    fig = figures.plot_run_times(table, budget_s=180, title="times")
    ax = fig.axes[0]
    assert [round(p.get_width(), 6) for p in ax.patches] == [9.5, 150.0]
    at = dict(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]))
    assert [at[y] for y in sorted(at, reverse=True)] == ["intro", "sweep"]   # book order from the top
    assert ax.get_lines()[0].get_xdata()[0] == 180 and "s" in ax.get_xlabel()
    plt.close(fig)
