"""Insert the opening block (learning objectives + measured run time) into every chapter of the book.

Usage: ``python tools/chapter_openings.py [BOOK_DIR]`` (default: ``book/`` next to this folder).

For each chapter of :data:`OBJECTIVES` (and the intro, which gets only its run-time line) the block goes into the
first Markdown cell, right after the line that starts with ``"# "`` (the chapter title). The run time is pasted
from the appendix page ``execution.ipynb``, which glues ``exec_<stem>_s`` (seconds) from the execution record that
``python -m flatcomp_tutorial.notebooks execute`` stores in each notebook's metadata.

Idempotent: a chapter whose first Markdown cell already holds its run-time glue reference is left alone, so the
script can be re-run after other branches change the notebooks. A chapter without a title line is an error.
Notebooks are written back with ``json.dump(nb, f, indent=1, ensure_ascii=False)`` and a trailing newline;
nothing but the first Markdown cell changes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent.parent / "book"

ADMONITION_TITLE = "In this chapter"

OBJECTIVES: dict[str, list[str]] = {
    "first_network": [
        "build the book's MLP with `fc.make_model(\"mlp\", ...)` and train it by minibatch SGD with `fc.train`",
        "read the training history: loss and accuracy on the full training and test sets, model in eval mode",
        "state the book's loss convention, the mean over samples of $\\tfrac12\\lVert f(x_i)-y_i\\rVert^2$ with "
        "one-hot targets",
        "recognise the approach to interpolation, where the late phase that the paper is about begins",
        "set up a chapter the book's way: a `parameters` cell, `fc.configure`, then one-line calls",
    ],
    "sharpness": [
        "compute Hessian-vector products by double backward (`fc.sharpness.hvp`) and check them against a dense "
        "Hessian",
        "estimate $\\lambda_{\\max}$ by Lanczos and $\\Tr H$ by Hutchinson, Hutch++ or the Gauss–Newton control "
        "variate, with standard errors, and ask `top_hessian_eigenvalues` / `hessian_trace` for a stated accuracy",
        "read a Hessian spectral density from stochastic Lanczos quadrature: bulk near zero, a few outliers",
        "derive $H = G + R$ and $\\Tr H = \\Tr G = \\frac1n\\sum_i\\lVert J_\\theta(x_i)\\rVert_F^2$ at zero loss, "
        "and compute $\\Tr G$ exactly with `gauss_newton_trace`",
        "judge which sharpness measures a function-preserving rescaling can change ($\\lambda_{\\max}$, $\\Tr H$) "
        "and which it cannot (relative flatness, adaptive sharpness)",
    ],
    "sgd_dynamics": [
        "derive the linear-stability condition $\\lambda_{\\max} \\le 2/\\eta$ for gradient descent on a quadratic",
        "recognise progressive sharpening, catapults and the edge of stability in a $\\lambda_{\\max}$ trajectory "
        "of full-batch GD",
        "derive the toy SGD condition $\\Tr G \\le 2B/\\eta$ and state the assumption (orthogonal per-sample "
        "gradients) it rests on",
        "test its two predictions, a ceiling and a trend in $\\eta/B$, on runs compared at matched training loss",
        "explain why label noise keeps lowering $\\Tr G$ after interpolation while plain SGD barely moves",
    ],
    "compression": [
        "define log LVR, MLS and the local dimensionality $D_{\\mathrm{loc}}$ from the singular values of the input "
        "Jacobian, and read them off an ellipse in a 2-D example",
        "compute them per input with `fc.geometry.jacobians` and `local_measures`, on a fixed measurement subset",
        "estimate them without derivatives with `gaussian_ball_measures`, and judge its bias (ball size) and "
        "sampling floor (number of samples)",
        "profile them through depth with `layerwise_measures`, comparing initialisation with the trained network",
        "tell local dimensionality from the global participation ratio of a layer (`participation_ratio`)",
    ],
    "bounds": [
        "derive the lemma $\\frac1n\\sum_i\\lVert x_i\\rVert^2\\lVert J_x(x_i)\\rVert_F^2 \\le "
        "\\lVert W_1\\rVert_2^2\\Tr G_{W_1}$ from the chain rule through a dense first layer",
        "derive the bounds B1–B5 on MLS and volume from it, naming the inequality behind each step",
        "measure both sides and the slack of every bound on a trained network with `fc.bounds.bound_table`",
        "find which step of the volume bound B4 loses most with `fc.bounds.b4_step_slacks`",
        "explain why an upper bound that always holds is no evidence that sharpness and sensitivity correlate",
    ],
    "network_bounds": [
        "apply the lemma to every dense layer and derive the network-wide bounds NMLS (B6) and NVR (B7)",
        "derive the identity B8 between relative flatness $\\kappa_l$ and a feature-side quantity, and check it "
        "three ways, including `fc.sharpness.relative_flatness`",
        "judge from per-layer slacks whether a network-wide bound is tighter or more stable than the "
        "first-layer ones",
        "predict which quantities a ReLU layer rescaling changes ($\\Tr G$, NMLS) and which it leaves invariant "
        "($\\lVert W_1\\rVert_2^2\\Tr G_{W_1}$, $\\kappa_l$)",
    ],
    "late_phase": [
        "track $\\Tr H$ (with its standard error), the exact $\\Tr G$, $\\lambda_{\\max}$ and the compression "
        "measures over the late phase of training",
        "tell the effect of label-noise SGD from the plain-SGD control, and judge how much compression is driven "
        "by flattening",
        "compute checkpoint correlations with bootstrap intervals (`fc.stats.checkpoint_correlations`) and say "
        "why autocorrelated checkpoints make them optimistic",
        "read correlations together with the sizes of the changes, and the exact $\\Tr G$ where $\\Tr H$ carries "
        "a fluctuating residual $\\Tr R$",
        "summarise the late phase over five seeds per arm with t-intervals over seeds (`fc.late.seed_intervals`), "
        "and separate compression at a settled loss from compression while the loss still falls",
    ],
    "sweep": [
        "run and resume a learning-rate × batch-size sweep at matched training loss with `fc.sweep` and a "
        "results store (`fc.store.results_store`)",
        "compute Pearson and Spearman correlations with bootstrap intervals over runs with `fc.summarize`",
        "separate a link between two measures from their shared dependence on $\\eta/B$ with a rank-partial "
        "correlation",
        "read the slack of every bound B1–B8 on every trained network",
        "judge what a handful of runs of other architectures (CNN, ViT) can and cannot support",
    ],
    "local_dim": [
        "prove that $D_{\\mathrm{loc}}$ is invariant to $J \\to cJ$, so that no flatness bound can control it",
        "build the scaling family of bias-free ReLU networks and check the predicted powers of $c$ for $\\Tr G$, "
        "MLS, LVR and NMLS",
        "follow $D_{\\mathrm{loc}}$ through the late phase with and without label noise",
        "read a correlation of $D_{\\mathrm{loc}}$ with $\\Tr G$ across $\\eta$ and $B$ as a shared dependence on "
        "$\\eta/B$, not a bound, for the output and for the hidden representations",
    ],
    "beyond": [
        "explain how large $\\eta/B$, label noise and SAM lower $\\Tr G$, and measure the compression each buys "
        "through the slack of B2",
        "compare both sides of B2 and B6 across runs and along training, and say why an upper bound is not a "
        "correlation",
        "derive the first-order robustness radius $m/(\\sqrt2\\,\\mathrm{MLS})$, measure empirical radii with "
        "PGD and a gradient-free segment search (`fc.robustness`), and recognise gradient masking",
        "judge whether sharpness or compression predicts the generalisation gap, and what reparametrisation "
        "has to do with it",
        "explain why under cross-entropy only the Gauss–Newton trace, not the Hessian, bounds compression",
    ],
    "paper_scale": [
        "switch a chapter to paper scale (`scale = \"paper\"`, on a Colab GPU or with `papermill -p`) and build "
        "presets with `fc.presets.preset`",
        "fetch FashionMNIST and CIFAR-10 with `fc.data.fetch`, verified by pinned SHA-256 hashes",
        "run batch sweeps with `python -m flatcomp_tutorial.batch` and resume them from a JSON Lines results store",
        "distribute `fc.sweep` over an executor (a process pool or a dask cluster) with one writer for the store",
        "estimate the cost of a paper-scale run from timed SGD steps and Hessian-vector products",
    ],
}

INTRO = "intro"


def runtime_reference(stem: str) -> str:
    """The glue reference that pastes chapter ``stem``'s measured wall time from the execution appendix."""
    return f"{{glue:text}}`execution.ipynb::exec_{stem}_s:.0f`"


def opening_block(stem: str) -> str:
    """The opening block of chapter ``stem``: an admonition with its objectives (none for the intro) and its
    measured run time, as Markdown text ending with a newline."""
    runtime = (f"Run time on the CPU that built this book: {runtime_reference(stem)} s\n"
               "(appendix {doc}`execution`).\n")
    if stem == INTRO:
        return ("```{admonition} Run time\n:class: tip\n"
                f"This page ran in {runtime_reference(stem)} s on the CPU that built this book; every chapter\n"
                "opens with its own run time and learning objectives (appendix {doc}`execution`).\n```\n")
    objectives = OBJECTIVES[stem]
    if not 3 <= len(objectives) <= 5:
        raise ValueError(f"OBJECTIVES[{stem!r}] has {len(objectives)} items; give 3 to 5 learning objectives")
    items = "".join(f"- {o}\n" for o in objectives)
    return f"```{{admonition}} {ADMONITION_TITLE}\n:class: tip\nYou will learn to\n{items}\n{runtime}```\n"


def _atoms(text: str) -> list[str]:
    """``text`` split at spaces, except inside ``$...$`` math and backtick code, which stay whole."""
    atoms: list[str] = []
    for w in text.split(" "):
        if atoms and (atoms[-1].count("$") % 2 or atoms[-1].count("`") % 2):
            atoms[-1] += " " + w
        else:
            atoms.append(w)
    return atoms


def _wrap(item: str, width: int = 118) -> str:
    """Wrap one line at ``width`` characters, never inside math or code, continuation lines indented by two
    spaces (a list item's continuation)."""
    lines, line = [], ""
    for atom in _atoms(item):
        if line and len(line) + 1 + len(atom) > width:
            lines.append(line)
            line = "  " + atom
        else:
            line = f"{line} {atom}" if line else atom
    return "\n".join(lines + [line])


def wrapped_block(stem: str) -> str:
    """:func:`opening_block` with every line wrapped at 118 characters."""
    return "\n".join(_wrap(line) for line in opening_block(stem).split("\n"))


def has_opening(source: str, stem: str) -> bool:
    """Whether a Markdown cell's text already holds the opening block of chapter ``stem``."""
    return runtime_reference(stem) in source or f"```{{admonition}} {ADMONITION_TITLE}" in source


def with_opening(source: str, stem: str) -> str:
    """``source`` (a chapter's first Markdown cell) with the opening block inserted after its ``# `` title line,
    separated by blank lines. Unchanged if the block is already there; ValueError if there is no title line."""
    if has_opening(source, stem):
        return source
    lines = source.split("\n")
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), None)
    if title is None:
        raise ValueError(f"{stem}: the first Markdown cell has no title line starting with '# '; add the chapter "
                         "title there before running tools/chapter_openings.py")
    block = wrapped_block(stem).rstrip("\n").split("\n")
    rest = lines[title + 1:]
    if rest and rest[0] != "":
        rest = [""] + rest
    return "\n".join(lines[:title + 1] + [""] + block + rest)


def _split_source(text: str) -> list[str]:
    """Notebook JSON form of a cell's text: lines with their newlines, the last one without."""
    return text.splitlines(keepends=True)


def update_notebook(path: Path) -> bool:
    """Insert the opening block into the notebook at ``path``; return whether the file changed."""
    stem = path.stem
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    if cell is None:
        raise ValueError(f"{path}: no Markdown cell; the chapter needs a first Markdown cell with its '# ' title")
    source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    new = with_opening(source, stem)
    if new == source:
        return False
    cell["source"] = new if isinstance(cell["source"], str) else _split_source(new)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    book = Path(argv[0]) if argv else BOOK
    stems = [INTRO, *OBJECTIVES]
    missing = [s for s in stems if not (book / f"{s}.ipynb").exists()]
    if missing:
        raise ValueError(f"book directory {book} lacks {', '.join(s + '.ipynb' for s in missing)}; "
                         "pass the book/ folder of the repository")
    for stem in stems:
        changed = update_notebook(book / f"{stem}.ipynb")
        print(f"{stem}: {'opening inserted' if changed else 'already has its opening'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
