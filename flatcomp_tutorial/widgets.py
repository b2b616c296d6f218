"""Interactive explorers that degrade to static figures.

:func:`explorer` always displays a static figure first (so the HTML book, GitHub and any headless execution show
the picture without a kernel), then, when ipywidgets is installed, the same drawing function behind sliders.
Nothing waits for user input, so headless execution (nbclient, papermill, nbval) never hangs.
"""
from __future__ import annotations

from typing import Any, Callable

import matplotlib.pyplot as plt


def _widget(name: str, spec: Any):
    import ipywidgets as w

    if isinstance(spec, w.ValueWidget):
        return spec
    if isinstance(spec, tuple) and len(spec) in (3, 4):
        lo, hi, step = spec[:3]
        value = spec[3] if len(spec) == 4 else lo
        cls = w.IntSlider if all(isinstance(v, int) for v in (lo, hi, step, value)) else w.FloatSlider
        return cls(min=lo, max=hi, step=step, value=value, description=name, continuous_update=False)
    if isinstance(spec, (list, tuple)) and spec:
        return w.Dropdown(options=list(spec), value=spec[0], description=name)
    raise ValueError(f"control {name!r} must be (min, max, step[, value]), a non-empty list of options or an "
                     f"ipywidgets widget, got {spec!r}")


def _initial(spec: Any):
    if isinstance(spec, tuple) and len(spec) in (3, 4):
        return spec[3] if len(spec) == 4 else spec[0]
    if isinstance(spec, (list, tuple)):
        return spec[0]
    return spec.value


def explorer(draw: Callable[..., plt.Figure], static: dict | None = None, interactive: bool = True,
             **controls: Any) -> plt.Figure:
    """Display ``draw(**static)`` as a static figure, then (if ipywidgets is available and ``interactive``) an
    interactive version of ``draw`` with one control per keyword: ``(min, max, step[, value])`` for a slider,
    a list for a dropdown, or a ready ipywidgets widget. ``static`` defaults to every control's initial value.
    Returns the static figure (already displayed and closed)."""
    from IPython.display import display

    values = {name: _initial(spec) for name, spec in controls.items()} if static is None else dict(static)
    fig = draw(**values)
    display(fig)
    plt.close(fig)
    if not interactive:
        return fig
    try:
        import ipywidgets as w
    except ImportError:
        return fig
    widgets = {name: _widget(name, spec) for name, spec in controls.items()}

    def update(**kw):
        f = draw(**kw)
        display(f)
        plt.close(f)

    out = w.interactive_output(update, widgets)
    display(w.VBox([w.HBox(list(widgets.values())), out]))
    return fig
