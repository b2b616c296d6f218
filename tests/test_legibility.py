"""The legibility rule the figure tests apply to every figure they draw (``conftest.figure_problems``): at most
MAX_WIDTH inches wide, at most MAX_COLS plot panels per row, no text under 9 pt (issue: figures were shown at
~700 px with 6 px tick labels)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from conftest import figure_problems  # noqa: E402

from flatcomp_tutorial.figures import _style  # noqa: E402


def test_a_figure_drawn_through_new_axes_is_legible():
    fig, axes = _style.new_axes(ncols=4, width=4.0, height=3.0)
    for ax in axes:
        ax.plot([1, 2], [3, 4])
        ax.set(xlabel="x", ylabel="y", title="t")
    assert figure_problems(fig) == [] and len(axes) == 4 and fig.get_figwidth() <= _style.MAX_WIDTH
    plt.close(fig)


def test_three_panels_in_a_row_are_reported():
    fig, _ = plt.subplots(1, 3, figsize=(6, 2))
    assert figure_problems(fig) == ["3 panels in a row (at most 2)"]
    plt.close(fig)


def test_a_figure_wider_than_the_page_is_reported():
    fig, _ = plt.subplots(1, 1, figsize=(9, 3))
    assert figure_problems(fig) == [f"9.00 in wide (at most {_style.MAX_WIDTH})"]
    plt.close(fig)


def test_text_under_9_points_is_reported():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlabel("x", fontsize=7)
    assert figure_problems(fig) == ["text at [7.0] pt (at least 9)"]
    plt.close(fig)


def test_grid_axes_reflows_a_matrix_to_two_panels_per_row_and_keeps_its_indexing():
    fig, axes = _style.grid_axes(None, 2, 3, width=3.0, height=2.5)
    assert axes.shape == (2, 3) and not _style.is_matrix_layout(axes)
    spec = axes[1, 0].get_subplotspec()          # panel 3 in reading order: second row... of 2 columns
    assert (spec.rowspan.start, spec.colspan.start) == (1, 1)
    assert figure_problems(fig) == []
    plt.close(fig)


def test_a_two_column_matrix_stays_a_matrix():
    _, axes = _style.grid_axes(None, 3, 2, width=3.0, height=2.5)
    assert _style.is_matrix_layout(axes) and np.asarray(axes).shape == (3, 2)
    plt.close("all")
