"""``pytest --nbval`` with tolerances: book checks that hold on any machine and still catch stale outputs.

nbval compares every stored output with the recomputed one character by character. Printed floats from long
SGD runs differ in their last digits between CPUs (SIMD kernels round differently), so this plugin makes the
comparison tolerance-aware (:func:`text_mismatch`): the text around the numbers must be identical, integers equal,
floats equal to round-off by default, or within the tolerance a cell states, with its reason, in
``metadata["nbval"]`` (:func:`cell_tolerance`). An error in any cell still fails, and so does a stored output
that a code change has moved beyond its tolerance. The root ``conftest.py`` loads it; elsewhere use
``pytest -p flatcomp_tutorial.nbval_plugin --nbval ...``.
"""
from __future__ import annotations

import os
import re

#: A number in printed output: optional sign, digits with an optional fraction, optional exponent. Digits glued to a
#: letter or underscore ("layer2", "x_1") are part of a word, not a number, and are compared exactly.
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\d])")
#: Default tolerance for a cell without ``nbval`` metadata: integers exact; floats equal to one unit in the last
#: printed digit plus rtol 1e-6 (float32 round-off through a few layers) and atol 1e-10 (values printed as round-off
#: of an exact identity, e.g. "max |difference| 2.2e-16", differ between CPUs but all lie below 1e-10).
DEFAULT_TOLERANCE = {"rtol": 1e-6, "atol": 1e-10, "integers": "exact"}


def cell_tolerance(metadata: dict) -> dict:
    """The comparison tolerance of one code cell: :data:`DEFAULT_TOLERANCE` updated with the cell's
    ``metadata["nbval"]`` (keys ``rtol``, ``atol``, ``integers`` = "exact" or "tolerance", and ``why``: the stated
    reason, required whenever a cell widens the default)."""
    own = dict(metadata.get("nbval", {}))
    unknown = set(own) - {"rtol", "atol", "integers", "why"}
    if unknown:
        raise ValueError(f"cell metadata nbval: unknown keys {sorted(unknown)} (allowed: rtol, atol, integers, why)")
    if own and not str(own.get("why", "")).strip():
        raise ValueError("cell metadata nbval: a widened tolerance needs a stated reason under 'why'")
    tol = {**DEFAULT_TOLERANCE, **{k: v for k, v in own.items() if k != "why"}}
    if tol["integers"] not in ("exact", "tolerance"):
        raise ValueError(f"cell metadata nbval: integers must be 'exact' or 'tolerance', got {tol['integers']!r}")
    return tol


def _last_digit(token: str) -> float:
    """One unit in the last printed digit of a number token ("0.0138" -> 1e-4, "2.5e-03" -> 1e-4, "12" -> 1)."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def text_mismatch(reference: str, recomputed: str, tolerance: dict = DEFAULT_TOLERANCE) -> str | None:
    """``None`` when two printed outputs agree, else a one-line reason.

    The text with every number replaced by a placeholder (and runs of white space collapsed, since column widths
    follow the numbers) must be identical. Numbers are compared pairwise: integers exactly (unless
    ``tolerance["integers"] == "tolerance"``), other numbers within ``atol + rtol * max(|a|, |b|)`` plus half a unit
    in the last printed digit of each (printing rounds each value by up to that much).
    """
    def skeleton(text: str) -> str:
        return " ".join(_NUMBER.sub("#", text).split())

    if skeleton(reference) != skeleton(recomputed):
        return "the text around the numbers differs"
    for a, b in zip(_NUMBER.findall(reference), _NUMBER.findall(recomputed)):
        both_int = not any(c in a + b for c in ".eE")
        if both_int and tolerance["integers"] == "exact":
            if int(a) != int(b):
                return f"integer {a} became {b} (integers are compared exactly)"
            continue
        x, y = float(a), float(b)
        allowed = tolerance["atol"] + tolerance["rtol"] * max(abs(x), abs(y)) + (_last_digit(a) + _last_digit(b)) / 2
        if not abs(x - y) <= allowed:
            return (f"{a} became {b}: |difference| {abs(x - y):.3g} > allowed {allowed:.3g} "
                    f"(rtol {tolerance['rtol']:g}, atol {tolerance['atol']:g})")
    return None


#: Always masked before comparing (whatever ``--nbval-sanitize-with`` adds): memory addresses and wall times.
SANITIZE = [(re.compile(r"0x[0-9a-fA-F]+"), "0xADDRESS"),
            (re.compile(r"\d+(\.\d+)? ?s on (cpu|cuda(:\d+)?|mps)"), "TIME on DEVICE")]


def pytest_configure(config):
    """Make nbval's output comparison tolerance-aware; keep progress widgets and the debugger's file-validation
    notice out of the outputs of every kernel nbval starts (kernels inherit this environment)."""
    os.environ.setdefault("FLATCOMP_PROGRESS", "0")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        from nbval import plugin
    except ImportError:  # nbval not installed: nothing to adapt
        return
    plugin.IPyNbCell.compare_outputs = _tolerant_compare_outputs


def _sanitize(cell, value):
    value = cell.sanitize(value)
    if isinstance(value, str):
        for pattern, replacement in SANITIZE:
            value = pattern.sub(replacement, value)
    return value


def _flatten(cell, outputs, skip):
    """nbval's layout: output key (or MIME type inside ``data``) -> list of sanitized values, in output order."""
    from collections import defaultdict

    from nbval.plugin import transform_streams_for_comparison

    flat = defaultdict(list)
    for out in transform_streams_for_comparison(outputs):
        for key, value in out.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(_sanitize(cell, data))
            else:
                flat[key].append(_sanitize(cell, value))
    return flat


def _tolerant_compare_outputs(self, test, ref, skip_compare=None):
    skip = skip_compare or self.parent.skip_compare
    tolerance = cell_tolerance(self.cell.metadata)
    new, old = _flatten(self, test, skip), _flatten(self, ref, skip)
    self.comparison_traceback = []
    if set(new) != set(old):
        self.comparison_traceback.append(f"output fields differ: stored {sorted(old)}, recomputed {sorted(new)}")
        return False
    for key, stored in old.items():
        if len(stored) != len(new[key]):
            self.comparison_traceback.append(f"{len(stored)} stored '{key}' outputs, {len(new[key])} recomputed")
            return False
        for a, b in zip(stored, new[key]):
            reason = text_mismatch(a, b, tolerance) if isinstance(a, str) and isinstance(b, str) else (
                None if a == b else "outputs differ")
            if reason:
                self.comparison_traceback.append(f"'{key}': {reason}")
                self.format_output_compare(key, a, b)
                return False
    return True
