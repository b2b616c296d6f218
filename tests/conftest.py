"""Shared test set-up."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: thread-pool overhead dominates and other processes on the machine slow multi-threaded runs
    down many-fold, so every test runs single-threaded; the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def cnn():
    """The small LeNet with its dense Hessian and Jacobian (``problems.dense_cnn``), computed once per session:
    ``(model, x, y, H, J)``."""
    from problems import dense_cnn
    return dense_cnn()


def figure_problems(fig) -> list[str]:
    """What makes a figure illegible at the width the book shows it (``figures._style``): wider than MAX_WIDTH,
    more than MAX_COLS plot panels in a row (image thumbnails and colour bars not counted), text under 9 pt."""
    from matplotlib.text import Text

    from flatcomp_tutorial.figures import _style

    problems = []
    if fig.get_figwidth() > _style.MAX_WIDTH + 1e-6:
        problems.append(f"{fig.get_figwidth():.2f} in wide (at most {_style.MAX_WIDTH})")
    rows: dict = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec is None or not ax.axison or ax.get_label() == "<colorbar>":
            continue
        rows.setdefault((id(spec.get_gridspec()), spec.rowspan.start), set()).add(spec.colspan.start)
    widest = max((len(c) for c in rows.values()), default=0)
    if widest > _style.MAX_COLS:
        problems.append(f"{widest} panels in a row (at most {_style.MAX_COLS})")
    small = sorted({round(t.get_fontsize(), 1) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < 9 - 1e-9})
    if small:
        problems.append(f"text at {small} pt (at least 9)")
    problems += _overlapping_tick_labels(fig)
    return problems


def _overlapping_tick_labels(fig) -> list[str]:
    """Axes whose visible tick labels (major and minor, on one axis) overlap each other once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            # rotated labels are left out: their axis-aligned boxes overlap where the slanted text does not
            boxes = sorted((t.get_window_extent(renderer) for t in axis.get_ticklabels(which="both")
                            if t.get_visible() and t.get_text().strip() and t.get_rotation() % 90 == 0),
                           key=lambda b: (b.x0, b.y0))
            if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
                found.append(f"overlapping {name} tick labels in panel {ax.get_title() or ax.get_ylabel()!r}")
    return found


@pytest.fixture(autouse=True)
def legible_figures(request, monkeypatch):
    """Every figure a figure test draws is checked for legibility (:func:`figure_problems`) when it is closed or
    left open at the end of the test."""
    if not request.module.__name__.startswith("test_figures_"):
        yield
        return
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    found, close = {}, plt.close

    def check(fig):
        for problem in figure_problems(fig):
            found.setdefault(problem, fig.get_suptitle() or fig.axes[0].get_title() if fig.axes else "")

    def checked_close(fig=None):
        for f in ([fig] if isinstance(fig, Figure) else [plt.figure(n) for n in plt.get_fignums()]):
            check(f)
        close(fig)

    monkeypatch.setattr(plt, "close", checked_close)
    yield
    for n in plt.get_fignums():
        check(plt.figure(n))
    close("all")
    assert not found, f"illegible figure(s): {found}"
