"""The late phase, summarised over seeds (chapter "Reproduction I: the late phase"): per run, the change of each
measure between two late-phase checkpoints (:func:`late_changes`), the fitted trend of its log over the late phase
(:func:`late_trend`) and the within-run correlations of sharpness with compression, plain and given the loss
(:func:`late_correlations`), one row per run (:func:`late_phase_table`); across the seeds of each arm, the mean with
a Student-t interval (:func:`seed_intervals`)."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from .history import phase_rows
from .stats import correlations, partial_correlations

__all__ = ["late_changes", "late_trend", "late_correlations", "late_phase_table", "seed_intervals",
           "DIFFERENCE_MEASURES", "LATE_MEASURES"]

DIFFERENCE_MEASURES = ("mean_log_lvr", "mean_local_dim")
LATE_MEASURES = ("train_loss", "trace_g", "trace_h", "lambda_max", "mean_mls", "mean_log_lvr", "mean_local_dim")


def _late_rows(history: pd.DataFrame, columns: Sequence[str], who: str, min_rows: int = 2) -> pd.DataFrame:
    missing = [c for c in ("step", *columns) if c not in history.columns]
    if missing:
        raise ValueError(f"{who}: history has no column(s) {missing}; available: {list(history.columns)}")
    late = phase_rows(history, "late")
    if len(late) < min_rows:
        raise ValueError(f"{who}: the history has {len(late)} late-phase checkpoint(s), at least {min_rows} are "
                         "needed; train with late_phase_steps=K and late_track_every < K")
    return late


def late_changes(history: pd.DataFrame, measures: Sequence[str] = LATE_MEASURES, start_fraction: float = 0.0,
                 ) -> pd.Series:
    """Change of each measure over the late phase of ONE run, from its first late checkpoint at or after
    ``start_fraction`` of the late phase (in steps; 0: the late start, 0.5: the second half) to its last
    checkpoint: ``log(end / start)`` for positive scales (Tr G, Tr H, λ_max, MLS, the training loss), ``end -
    start`` for :data:`DIFFERENCE_MEASURES` (log LVR in nats, local dimension). Index: the measure names. Chapter
    "Reproduction I: the late phase"."""
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction!r}")
    late = _late_rows(history, measures, "late_changes")
    s0, s1 = late.step.iloc[0], late.step.iloc[-1]
    window = late[late.step >= s0 + start_fraction * (s1 - s0)]
    if len(window) < 2:
        raise ValueError(f"late_changes: start_fraction={start_fraction} leaves {len(window)} checkpoint; "
                         "lower it or track the late phase more often")
    a, b = window.iloc[0], window.iloc[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {m: float(b[m] - a[m]) if m in DIFFERENCE_MEASURES else float(np.log(b[m] / a[m])) for m in measures}
    return pd.Series(out, name="late change", dtype=float)


def late_trend(history: pd.DataFrame, measures: Sequence[str] = ("train_loss",), start_fraction: float = 0.0,
               ) -> pd.Series:
    """Trend of each measure over the late phase of ONE run (or the part from ``start_fraction`` of it): the
    least-squares slope of ``log(measure)`` (``measure`` itself for :data:`DIFFERENCE_MEASURES`) against the step
    over the window's checkpoints, times the window's length in steps. Unlike :func:`late_changes` it uses every
    checkpoint, so a fluctuating measure (the training loss under label noise) gets a trend near 0 instead of
    the difference of two noisy values. Chapter "Reproduction I: the late phase"."""
    if not 0.0 <= start_fraction < 1.0:
        raise ValueError(f"start_fraction must be in [0, 1), got {start_fraction!r}")
    late = _late_rows(history, measures, "late_trend", min_rows=3)
    s0, s1 = late.step.iloc[0], late.step.iloc[-1]
    window = late[late.step >= s0 + start_fraction * (s1 - s0)]
    if len(window) < 3:
        raise ValueError(f"late_trend: start_fraction={start_fraction} leaves {len(window)} checkpoint(s), a trend "
                         "needs 3; lower it or track the late phase more often")
    step = window.step.to_numpy(float)
    out = {}
    for m in measures:
        v = window[m].to_numpy(float)
        v = v if m in DIFFERENCE_MEASURES else np.log(v)
        out[m] = float(np.polyfit(step, v, 1)[0] * (step[-1] - step[0]))
    return pd.Series(out, name="late trend", dtype=float)


def late_correlations(history: pd.DataFrame, x: str = "trace_g", y: Sequence[str] = ("mean_mls", "mean_log_lvr"),
                      control: str = "train_loss") -> pd.Series:
    """Within ONE run, over its late-phase checkpoints: the Spearman correlation of ``x`` with each ``y``
    (``r:<x>:<y>``) and the rank-partial correlation given the training loss (``partial:<x>:<y>``, what is left
    of the rank correlation once the rank of ``control`` is regressed out of both; ranks are unchanged by a log,
    so "given the loss" and "given log loss" are the same). NaN where undefined (fewer than 4 checkpoints, a
    constant column). Chapter "Reproduction I: the late phase"."""
    late = _late_rows(history, [x, *y, control], "late_correlations")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = correlations(late, [x], list(y), n_boot=0)
        p = partial_correlations(late, [x], list(y), control, n_boot=0)
    out = {f"r:{x}:{c}": float(r[(r.y == c) & (r.method == "spearman")].r.iloc[0]) for c in y}
    out.update({f"partial:{x}:{c}": float(p[p.y == c].r.iloc[0]) for c in y})
    return pd.Series(out, name="late correlations", dtype=float)


def seed_intervals(table: pd.DataFrame, columns: Sequence[str], by: str = "arm", ci: float = 0.95,
                   min_seeds: int = 3) -> pd.DataFrame:
    """Across seeds: for every group ``by`` (e.g. the arm) and every column, the mean over its rows (one row per
    seed, i.e. per independent run) with a Student-t interval, mean ± t_{(1+ci)/2, n-1} · s / sqrt(n) (s: the
    sample standard deviation over seeds; NaN values are left out of n). Groups keep their order of first
    appearance. Columns: ``by``, ``measure``, ``mean``, ``ci_low``, ``ci_high``, ``sd``, ``n``. Every group needs
    at least ``min_seeds`` rows (ValueError otherwise). Chapter "Reproduction I: the late phase"."""
    from scipy.stats import t as student_t

    missing = [c for c in (by, *columns) if c not in table.columns]
    if missing:
        raise ValueError(f"seed_intervals: table has no column(s) {missing}; available: {list(table.columns)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if min_seeds < 2:
        raise ValueError(f"min_seeds must be >= 2 (an interval needs a spread), got {min_seeds!r}")
    sizes = table.groupby(by, sort=False).size()
    few = sizes[sizes < min_seeds]
    if len(few):
        raise ValueError(f"seed_intervals: group(s) {dict(few)} have fewer than min_seeds={min_seeds} seeds; "
                         "run more seeds (or lower min_seeds)")
    rows = []
    for group, g in table.groupby(by, sort=False):
        for c in columns:
            v = g[c].astype(float).to_numpy()
            v = v[~np.isnan(v)]
            n = len(v)
            mean = float(v.mean()) if n else np.nan
            sd = float(v.std(ddof=1)) if n >= 2 else np.nan
            half = float(student_t.ppf((1 + ci) / 2, n - 1) * sd / np.sqrt(n)) if n >= 2 else np.nan
            rows.append({by: group, "measure": c, "mean": mean, "ci_low": mean - half, "ci_high": mean + half,
                         "sd": sd, "n": n})
    df = pd.DataFrame(rows, columns=[by, "measure", "mean", "ci_low", "ci_high", "sd", "n"])
    df.attrs.update(ci=ci, interval=f"Student-t {100 * ci:g}% interval over seeds (one value per run)")
    return df


def late_phase_table(results: pd.DataFrame, group: str = "arm", measures: Sequence[str] = LATE_MEASURES,
                     x: str = "trace_g", y: Sequence[str] = ("mean_mls", "mean_log_lvr")) -> pd.DataFrame:
    """One row per run of ``results`` (rows with a ``history`` list, as :func:`~flatcomp_tutorial.store.
    load_results` gives; diverged runs raise): ``group``, ``seed``, the whole-late-phase changes
    ``d:<measure>`` and the second-half changes ``d2:<measure>`` (:func:`late_changes` with start_fraction 0
    and 0.5), the trend of the training loss over the late phase and its second half (``trend:train_loss``,
    ``trend2:train_loss``, :func:`late_trend`) and the within-run correlations (:func:`late_correlations`).
    Chapter "Reproduction I: the late phase"."""
    missing = [c for c in (group, "seed", "history") if c not in results.columns]
    if missing:
        raise ValueError(f"late_phase_table: results have no column(s) {missing}; load them with "
                         "fc.load_results(store) and add the group column")
    if "diverged" in results and results.diverged.fillna(False).astype(bool).any():
        raise ValueError("late_phase_table: some runs diverged; drop them (results[~results.diverged]) first")
    rows = []
    for _, run in results.iterrows():
        h = pd.DataFrame(list(run["history"]))
        rows.append({group: run[group], "seed": run["seed"],
                     **late_changes(h, measures).add_prefix("d:"),
                     **late_changes(h, measures, start_fraction=0.5).add_prefix("d2:"),
                     **late_trend(h).add_prefix("trend:"),
                     **late_trend(h, start_fraction=0.5).add_prefix("trend2:"),
                     **late_correlations(h, x, y)})
    return pd.DataFrame(rows)
