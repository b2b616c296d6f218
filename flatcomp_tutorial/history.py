"""A training history (one row per checkpoint, :func:`~flatcomp_tutorial.training.train`): the conventions its
``attrs`` state (:func:`new_history`) and its phases.

A history row has ``phase`` "early" or "late"; the late phase starts at the first checkpoint whose full training
loss fell below the run's ``late_phase_threshold`` (chapter "Reproduction I: the late phase"). That first late row
is the run's *matched-loss* row: every run of a sweep is compared there, at the same training loss.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

PHASES = ("final", "matched", "late", "early", "all")


def phase_rows(history: pd.DataFrame, phase: str) -> pd.DataFrame:
    """The rows of one ``phase`` of a history: ``"final"`` the last row, ``"matched"`` the first late row (none if
    the run never reached the threshold), ``"late"``/``"early"`` the rows of that phase (a history without a
    ``phase`` column is all early), ``"all"`` every row."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if phase == "all":
        return history
    if phase == "final":
        return history.iloc[-1:]
    phases = history["phase"] if "phase" in history else pd.Series("early", index=history.index)
    if phase == "matched":
        return history[phases == "late"].iloc[:1]
    return history[phases == phase]


def matched_row(history: pd.DataFrame) -> dict | None:
    """The matched-loss row (first late checkpoint) as a dict, or None if the run never reached the threshold."""
    rows = phase_rows(history, "matched")
    return rows.iloc[0].to_dict() if len(rows) else None


def late_start_step(history: pd.DataFrame, x: str = "step") -> float:
    """The ``x`` value (default: the step) of the first late checkpoint of a history (NaN if it has none)."""
    rows = phase_rows(history, "matched")
    return float(rows[x].iloc[0]) if len(rows) else float("nan")


def new_history(rows: Sequence[Mapping], loss: str, measures: Mapping[str, str], measure_n: int | None,
                measure_seed: int, measure_errors: Mapping[str, str], late_phase_threshold: float | None,
                check_every: int, measure_version: int | None = None) -> pd.DataFrame:
    """The checkpoint ``rows`` as a DataFrame whose ``attrs`` state the loss convention, what each measure computes
    (``measures``: name -> description), on which data, the measures that failed (name -> reason) and what the
    phases mean (``late_phase_threshold=None``: no late phase was requested) and, if given, the estimator settings
    ``measure_version`` (:func:`~flatcomp_tutorial.measures.measure_descriptions`)."""
    history = pd.DataFrame.from_records(rows)
    history.attrs["loss_convention"] = ("mean over samples of 1/2 sum over outputs of (f - y)^2" if loss == "mse"
                                        else "mean cross-entropy")
    history.attrs["measures"] = dict(measures)
    history.attrs["measure_data"] = (f"fixed subset: min({measure_n}, n) training and test samples drawn by a "
                                     f"generator seeded with {measure_seed} "
                                     "(flatcomp_tutorial.measures.measurement_subset); "
                                     "model in eval mode; full-set losses/accuracies in train_*/test_*")
    history.attrs["measure_errors"] = measure_errors
    if measure_version is not None:
        history.attrs["measure_version"] = measure_version
    history.attrs["phase"] = (f"'late' from the first step at which the full training loss < {late_phase_threshold} "
                              f"(checked every {check_every} steps)" if late_phase_threshold is not None
                              else "no late phase requested: every row is 'early'")
    return history
