"""Interactive explorers that degrade to static figures.

:func:`explorer` always displays a static figure first (so the HTML book, GitHub and any headless execution show
the picture without a kernel), then, when ipywidgets is installed, the same drawing function behind sliders.
Nothing waits for user input, so headless execution (nbclient, papermill, nbval) never hangs.
The HTML book has no kernel: this module is also a Sphinx extension that shows a note there ("the sliders
work in Jupyter or on Colab") instead of the widget view, see :func:`setup`.
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


# The HTML book. A page has no kernel behind it, so a widget view there is an empty area at best (and its JavaScript
# would come from a CDN). ``_config.yml`` loads this module as a Sphinx extension (``sphinx.extra_extensions``): each
# output that carries a widget view becomes HTML_NOTE, right below the static figure that explorer() displayed first.
# It works on the outputs stored in the notebooks as they are (nothing is re-executed or edited).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
HTML_NOTE_TITLE = "Interactive version"
HTML_NOTE = ("The sliders for this figure work when the notebook runs in Jupyter or on Colab (the \u201cOpen in "
             "Colab\u201d badge at the top of the page); this page shows the figure for the default values above.")


def html_note():
    """The docutils node that replaces a widget view in the HTML book: a tip box saying where the sliders work."""
    from docutils import nodes

    return nodes.admonition("", nodes.title("", HTML_NOTE_TITLE), nodes.paragraph("", HTML_NOTE),
                            classes=["tip", "flatcomp-widget-note"])


def replace_widget_views(document) -> int:
    """Replace every myst-nb output (a ``mime_bundle`` container) that offers a widget view with :func:`html_note`;
    return how many were replaced. Runs before myst-nb picks one mime type per output, so neither the view nor its
    ``text/plain`` fallback (``VBox(children=...)``) reaches the page."""
    from docutils import nodes

    def offers_widget_view(node) -> bool:
        return (isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"
                and any(child.get("mime_type") == WIDGET_VIEW for child in node.children))

    bundles = list(document.findall(offers_widget_view))
    for bundle in bundles:
        bundle.replace_self(html_note())
    return len(bundles)


def split_captioned_widget_cells(nb: dict) -> int:
    """Move the widget-view outputs of every captioned figure cell (cell metadata ``mystnb.figure``) of notebook
    ``nb`` (nbformat JSON as a dict, changed in place) into a new input-less code cell right after it; return how many
    cells were split. myst-nb wraps *each* display output of a captioned cell in a figure with the cell's name, so
    without this the sliders of :func:`explorer` would be a second figure with the same name (a duplicate target
    that breaks ``{numref}``); moved, they become :func:`html_note` below the numbered static figure."""
    cells, split = [], 0
    for cell in nb.get("cells", []):
        cells.append(cell)
        outputs = cell.get("outputs", [])
        views = [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
        if "figure" not in cell.get("metadata", {}).get("mystnb", {}) or not views or len(views) == len(outputs):
            continue
        cell["outputs"] = [o for o in outputs if WIDGET_VIEW not in o.get("data", {})]
        cells.append({"cell_type": "code", "execution_count": None, "id": f"{cell.get('id', 'cell')}-sliders"[-64:],
                      "metadata": {"tags": ["remove-input"]}, "outputs": views,
                      "source": "# the sliders of the explorer above (myst-nb skips a cell without source)"})
        split += 1
    nb["cells"] = cells
    return split


def _split_widget_cells(app, docname: str, source: list) -> None:
    """Sphinx ``source-read``: :func:`split_captioned_widget_cells` on each notebook's text before myst-nb parses it
    (the notebook files are not changed)."""
    import json

    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    if split_captioned_widget_cells(nb):
        source[0] = json.dumps(nb, ensure_ascii=False)


def _drop_widget_state(app, doctree) -> None:
    """No widget view reaches the page, so the widget state myst-nb would embed in it (tens of kB of JSON) is unused."""
    docs = getattr(app.env, "nb_metadata", None) or {}
    docs.get(app.env.docname, {}).get("js_files", {}).pop("ipywidgets_state", None)


def setup(app):
    """Sphinx extension entry point (see the comment above :data:`WIDGET_VIEW`)."""
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class WidgetViewsToNote(SphinxPostTransform):
        default_priority = 3  # before myst-nb's SelectMimeType (4)

        def run(self, **kwargs: Any) -> None:
            replace_widget_views(self.document)

    app.add_post_transform(WidgetViewsToNote)
    app.connect("source-read", _split_widget_cells)
    app.connect("doctree-read", _drop_widget_state)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
