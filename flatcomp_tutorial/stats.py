"""Statistics of sweeps: Pearson and Spearman correlations between sharpness and compression measures with
bootstrap confidence intervals, over runs (:func:`summarize`), over the checkpoints of one run
(:func:`checkpoint_correlations`) or over any table (:func:`correlations`), and partial correlations that remove
what a control column (e.g. η/B) explains (:func:`partial_correlations`). Chapters "Reproduction I: the late
phase", "Reproduction II" and "Beyond the paper".

Non-finite values are handled per pair and method: NaN rows are left out of both methods; ±inf rows (a log volume
of -inf: a rank-deficient map has zero volume) are left out of Pearson and ranked lowest/highest by Spearman.
Confidence intervals are percentile intervals of a bootstrap over rows, or over whole groups (runs).
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .history import PHASES, phase_rows

__all__ = ["correlations", "partial_correlations", "summarize", "checkpoint_correlations"]


def _pearson(m: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of the columns of m (NaN where a column is constant)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.atleast_2d(np.corrcoef(m, rowvar=False))


def _spearman(m: np.ndarray) -> np.ndarray:
    """Spearman correlation matrix: Pearson of the column ranks (ties: average ranks; -inf ranks lowest, +inf
    highest)."""
    from scipy.stats import rankdata

    return _pearson(rankdata(m, axis=0))


#: (method, which values it can use, correlation matrix): Pearson needs finite values; Spearman only needs an order,
#: so ±inf (e.g. the log volume of a rank-deficient map, -inf) are valid extreme ranks; NaN is never usable.
_METHODS = (("pearson", np.isfinite, _pearson), ("spearman", lambda a: ~np.isnan(a), _spearman))


def _warn_non_finite(m: np.ndarray, cols: Sequence[str], who: str = "correlations") -> None:
    """One warning per column holding NaN or ±inf, with the counts and what each method does with them."""
    for k, c in enumerate(cols):
        v = m[:, k]
        counts = {"-inf": int(np.sum(v == -np.inf)), "+inf": int(np.sum(v == np.inf)), "NaN": int(np.isnan(v).sum())}
        if not any(counts.values()):
            continue
        what = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
        warnings.warn(f"{who}: column {c!r} has {what} of {len(v)} value(s): NaN rows are left out of both "
                      "methods; ±inf rows are left out of Pearson and ranked lowest (-inf) / highest (+inf) by "
                      "Spearman (counts per pair in n_excluded)", RuntimeWarning, stacklevel=3)


def _estimate(m: np.ndarray, g: np.ndarray, corr: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int,
              size: int | None = None, min_rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correlation matrix ``corr(m)`` (``size`` x ``size``, default one entry per column of m; NaN if fewer than
    ``min_rows`` rows) and ``n_boot`` bootstrap matrices from resampling whole groups ``g`` with replacement (NaN if
    fewer than 3 groups)."""
    k = m.shape[1] if size is None else size
    group_ids = np.unique(g)
    r = corr(m) if len(m) >= min_rows else np.full((k, k), np.nan)
    boots = np.full((n_boot, k, k), np.nan)
    if len(group_ids) >= 3:
        idx_of = {gid: np.flatnonzero(g == gid) for gid in group_ids}
        rng = np.random.default_rng(seed)
        for b in range(n_boot):
            pick = np.concatenate([idx_of[gid] for gid in rng.choice(group_ids, size=len(group_ids))])
            boots[b] = corr(m[pick])
    return r, boots


class _Notes:
    """The pairs whose r or CI could not be estimated, warned about once per call (:meth:`warn`)."""

    def __init__(self, who: str, groups: str | None, min_rows: int = 3, undefined_why: str = "a column is constant "
                 "over the rows used") -> None:
        self.who, self.groups, self.min_rows, self.undefined_why = who, groups, min_rows, undefined_why
        self.few_rows: list[str] = []
        self.undefined: list[str] = []
        self.few_groups: list[str] = []

    def result(self, a: str, c: str, method: str, r: float, boots: np.ndarray, n: int, n_groups: int, n_all: int,
               n_boot: int, ci: float) -> dict:
        """One output row: r with the percentile interval of the finite bootstrap values; notes what is missing."""
        bs = boots[np.isfinite(boots)]
        if n < self.min_rows:
            self.few_rows.append(f"{a}/{c} {method}: {n}")
        elif not np.isfinite(r):
            self.undefined.append(f"{a}/{c} {method}")
        elif n_boot and n_groups < 3:
            self.few_groups.append(f"{a}/{c} {method}: {n_groups}")
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        return {"x": a, "y": c, "method": method, "r": float(r),
                "ci_low": float(np.percentile(bs, lo)) if len(bs) else np.nan,
                "ci_high": float(np.percentile(bs, hi)) if len(bs) else np.nan,
                "n": int(n), "n_groups": int(n_groups), "n_excluded": int(n_all - n)}

    def warn(self) -> None:
        if self.few_rows:
            warnings.warn(f"{self.who}: too few usable rows for {self.few_rows}; r needs at least {self.min_rows} "
                          "(NaN returned).", stacklevel=3)
        if self.undefined:
            warnings.warn(f"{self.who}: r is undefined (NaN returned) for {self.undefined}: {self.undefined_why}.",
                          stacklevel=3)
        if self.few_groups:
            warnings.warn(f"{self.who}: only {self.few_groups} {'group' if self.groups else 'row'}(s) to resample "
                          "for these pairs; the bootstrap needs at least 3 (CI returned as NaN).", stacklevel=3)


def _checked_table(table: pd.DataFrame, columns: Sequence[str], groups: str | None, n_boot: int) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    missing = [c for c in (*columns, *([groups] if groups else [])) if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; available: {list(table.columns)}")


def _resampling(groups: str | None) -> str:
    return f"bootstrap over {'groups ' + repr(groups) if groups else 'rows'} (percentile interval)"


def correlations(table: pd.DataFrame, x: Sequence[str], y: Sequence[str], groups: str | None = None,
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlations of every column in ``x`` with every column in ``y`` over the rows of
    ``table``, each with a percentile bootstrap CI from ``n_boot`` resamples of the rows, or of whole ``groups``
    (e.g. runs) when a group column is named.

    Non-finite values, per (x, y) pair and method: a row with NaN in x or y is left out of both methods; a row with
    ±inf (e.g. ``mean_log_lvr = -inf``: a rank-deficient map has zero volume) is left out of Pearson (no finite
    mean) but kept by Spearman, which ranks -inf lowest and +inf highest. ``n_excluded`` counts the rows left out,
    and one warning per column names its NaN/±inf counts. Columns: ``x``, ``y``, ``method``, ``r``, ``ci_low``,
    ``ci_high``, ``n`` (rows used), ``n_groups``, ``n_excluded``. r is NaN, with a warning, where fewer than 3 rows
    remain or a column is constant over them; the CI is NaN, with a warning, where fewer than 3 groups remain.
    Chapters "Reproduction II" and "Beyond the paper"."""
    _checked_table(table, [*x, *y], groups, n_boot)
    cols = list(dict.fromkeys([*x, *y]))
    m = table[cols].astype(float).to_numpy()
    g_all = table[groups].to_numpy() if groups else np.arange(len(m))
    _warn_non_finite(m, cols)
    pairs = [(a, c) for a in x for c in y]
    found: dict[tuple[str, str, str], dict] = {}
    notes = _Notes("correlations", groups)
    for method, usable, corr in _METHODS:
        ok = usable(m)
        by_mask: dict[bytes, tuple[np.ndarray, list[tuple[str, str]]]] = {}
        for a, c in pairs:
            mask = ok[:, cols.index(a)] & ok[:, cols.index(c)]
            by_mask.setdefault(mask.tobytes(), (mask, []))[1].append((a, c))
        for mask, same in by_mask.values():  # pairs that use the same rows are computed together
            sub_cols = list(dict.fromkeys(name for pair in same for name in pair))
            sub = m[mask][:, [cols.index(name) for name in sub_cols]]
            g = g_all[mask]
            r, boots = _estimate(sub, g, corr, n_boot, seed)
            for a, c in same:
                i, j = sub_cols.index(a), sub_cols.index(c)
                found[a, c, method] = notes.result(a, c, method, r[i, j], boots[:, i, j], len(sub),
                                                   len(np.unique(g)), len(m), n_boot, ci)
    notes.warn()
    out = [found[a, c, method] for a, c in pairs for method, _, _ in _METHODS]
    df = pd.DataFrame(out, columns=["x", "y", "method", "r", "ci_low", "ci_high", "n", "n_groups", "n_excluded"])
    df.attrs.update(n_boot=n_boot, ci=ci, resampling=_resampling(groups))
    return df


def _partial(m: np.ndarray, n_controls: int, rank: bool) -> np.ndarray:
    """Correlation matrix of the leading columns of ``m`` after removing, by least squares, the part that a constant
    and the last ``n_controls`` columns predict (on column ranks when ``rank``). A column that the controls
    determine (residual below 1e-10 of its spread) is NaN."""
    if rank:
        from scipy.stats import rankdata

        m = rankdata(m, axis=0)
    v, z = m[:, :-n_controls], m[:, -n_controls:]
    design = np.column_stack([np.ones(len(m)), z])
    resid = v - design @ np.linalg.lstsq(design, v, rcond=None)[0]
    spread = np.linalg.norm(v - v.mean(axis=0), axis=0)
    resid[:, np.linalg.norm(resid, axis=0) <= 1e-10 * spread] = np.nan
    return _pearson(resid)


def partial_correlations(table: pd.DataFrame, x: Sequence[str], y: Sequence[str], control: str | Sequence[str],
                         method: str = "spearman", groups: str | None = None, n_boot: int = 1000, seed: int = 0,
                         ci: float = 0.95) -> pd.DataFrame:
    """Partial correlation of every column in ``x`` with every column in ``y`` given the ``control`` column(s):
    the correlation of the residuals of x and y after least squares on a constant and the controls. For one
    control z it equals (r_xy − r_xz r_yz) / sqrt((1 − r_xz²)(1 − r_yz²)). ``method="spearman"`` (the default)
    is the rank-partial correlation: the same on the ranks of x, y and z (re-ranked in every bootstrap resample);
    ``"pearson"`` uses the values. CI: percentile bootstrap over rows, or whole ``groups``, as
    :func:`correlations`. A row is used when x, y and every control are usable (finite for Pearson, not NaN for
    Spearman); ``n_excluded`` counts the others. Columns: ``x``, ``y``, ``control`` (the control names joined by
    ", "), ``method``, ``r``, ``ci_low``, ``ci_high``, ``n``, ``n_groups``, ``n_excluded``. r is NaN, with a
    warning, with fewer than (number of controls + 3) rows or where the controls determine x or y. Chapter
    "Beyond the paper" (does sharpness still predict compression at fixed η/B?)."""
    controls = [control] if isinstance(control, str) else list(control)
    methods = {name: usable for name, usable, _ in _METHODS}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    if not controls:
        raise ValueError("control must name at least one column")
    both = sorted(set(controls) & {*x, *y})
    if both:
        raise ValueError(f"column(s) {both} are both correlated and controlled for; a control must not be in x or y")
    _checked_table(table, [*x, *y, *controls], groups, n_boot)
    cols = list(dict.fromkeys([*x, *y, *controls]))
    m = table[cols].astype(float).to_numpy()
    g_all = table[groups].to_numpy() if groups else np.arange(len(m))
    _warn_non_finite(m, cols, "partial_correlations")
    ok = methods[method](m)
    ctrl_ok = ok[:, [cols.index(z) for z in controls]].all(axis=1)
    notes = _Notes("partial_correlations", groups, min_rows=len(controls) + 3,
                   undefined_why="x or y is constant once the controls are removed")
    out = []
    for a, c in [(a, c) for a in x for c in y]:
        mask = ok[:, cols.index(a)] & ok[:, cols.index(c)] & ctrl_ok
        sub = m[mask][:, [cols.index(name) for name in (a, c, *controls)]]
        g = g_all[mask]
        r, boots = _estimate(sub, g, lambda s: _partial(s, len(controls), method == "spearman"), n_boot, seed,
                             size=2, min_rows=len(controls) + 3)
        row = notes.result(a, c, method, r[0, 1], boots[:, 0, 1], len(sub), len(np.unique(g)), len(m), n_boot, ci)
        out.append({"control": ", ".join(controls), **row})
    notes.warn()
    df = pd.DataFrame(out, columns=["x", "y", "control", "method", "r", "ci_low", "ci_high", "n", "n_groups",
                                    "n_excluded"])
    df.attrs.update(n_boot=n_boot, ci=ci, control=controls, resampling=_resampling(groups))
    return df


def _rows_for_phase(results: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Checkpoint rows used by :func:`summarize` (:func:`~flatcomp_tutorial.history.phase_rows` of every run), with
    a ``_run`` column (the run's position). Diverged runs and runs whose ``history`` is not a list of dicts (or a
    DataFrame) are left out; the latter with a warning."""
    out, unusable = [], []
    for i, (_, run) in enumerate(results.iterrows()):
        diverged = run.get("diverged")
        if diverged is not None and pd.notna(diverged) and bool(diverged):
            continue
        hist = run.get("history")
        if isinstance(hist, pd.DataFrame):
            h = hist
        elif isinstance(hist, (list, tuple)) and all(isinstance(r, Mapping) for r in hist):
            h = pd.DataFrame(list(hist))
        else:
            unusable.append(run.get("key", i))
            continue
        if h.empty:
            continue
        out.append(phase_rows(h, phase).assign(_run=i))
    if unusable:
        warnings.warn(f"summarize: {len(unusable)} run(s) {unusable[:10]} left out: their history is not a list of "
                      "checkpoint dicts", RuntimeWarning, stacklevel=3)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["_run"])


def summarize(results: pd.DataFrame, sharpness: Sequence[str] = ("lambda_max", "trace_h", "relative_flatness",
                                                                 "adaptive_sharpness"),
              compression: Sequence[str] = ("mean_log_lvr", "mean_mls", "mean_local_dim", "nmls"),
              phase: str = "matched", n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlations between every (sharpness, compression) pair, with bootstrap CIs.

    ``phase`` chooses the checkpoints (one point per run unless stated): ``"matched"`` the first checkpoint with
    training loss below the run's ``late_phase_threshold`` (matched training loss; runs that never reached it are
    left out), ``"final"`` the last checkpoint, ``"late"``/``"early"``/``"all"`` every checkpoint of that phase of
    every run (several points per run; :func:`~flatcomp_tutorial.history.phase_rows`). Diverged runs are left out.
    The CI is the percentile interval of ``n_boot`` bootstrap resamples of RUNS (all of a run's checkpoints move
    together; :func:`correlations`). NaN and ±inf values (a log volume of -inf) are handled per pair as in
    :func:`correlations`: left out of Pearson (±inf, NaN) or Spearman (NaN only), counted in ``n_excluded`` and
    warned about. Columns: ``sharpness``, ``compression``, ``method``, ``r``, ``ci_low``, ``ci_high``, ``n``
    (checkpoints), ``n_runs``, ``n_excluded`` (checkpoints left out), ``phase``.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    rows = _rows_for_phase(results, phase)
    missing = [c for c in (*sharpness, *compression) if c not in rows.columns]
    s_cols = [c for c in sharpness if c in rows.columns]
    c_cols = [c for c in compression if c in rows.columns]
    columns = ["sharpness", "compression", "method", "r", "ci_low", "ci_high", "n", "n_runs", "n_excluded", "phase"]
    if s_cols and c_cols and len(rows):
        df = correlations(rows, s_cols, c_cols, groups="_run", n_boot=n_boot, seed=seed, ci=ci)
        df = df.rename(columns={"x": "sharpness", "y": "compression", "n_groups": "n_runs"}).assign(phase=phase)
        df = df[columns]
    else:
        df = pd.DataFrame(columns=columns)
    df.attrs.update(phase=phase, missing_columns=missing, n_boot=n_boot, ci=ci,
                    resampling="bootstrap over runs (percentile interval)",
                    excluded_runs=int(len(results) - (rows["_run"].nunique() if len(rows) else 0)))
    return df


def checkpoint_correlations(history: pd.DataFrame, phase: str = "late",
                            sharpness: Sequence[str] = ("trace_g", "trace_h", "lambda_max"),
                            compression: Sequence[str] = ("mean_mls", "mean_log_lvr", "mean_local_dim"),
                            n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Correlations over the checkpoints of ONE run's history (its rows of ``phase``,
    :func:`~flatcomp_tutorial.history.phase_rows`; ``"all"``: every row), with a percentile bootstrap over
    checkpoints (:func:`correlations`). Checkpoints of one trajectory are autocorrelated, so these intervals are
    optimistic (too narrow): they measure how stable the rank order along the trajectory is, not independent
    replication (for that, :func:`summarize` over runs). NaN and ±inf checkpoints are handled as in
    :func:`correlations` (counted in ``n_excluded``, warned about). Columns as :func:`summarize`, with
    ``n_checkpoints``. Chapter "Reproduction I: the late phase"."""
    h = phase_rows(history, phase)
    s_cols = [c for c in sharpness if c in h.columns]
    c_cols = [c for c in compression if c in h.columns]
    out = correlations(h, s_cols, c_cols, n_boot=n_boot, seed=seed)
    return (out.rename(columns={"x": "sharpness", "y": "compression", "n": "n_checkpoints"})
               .drop(columns="n_groups").assign(phase=phase))


#: Measures whose late-phase change is a difference (already logarithms or a dimension); the others are positive
#: scales whose change is the log ratio log(end / start).
