"""Specification of flatcomp_tutorial.history: the phases of a training history and its matched-loss row."""
import numpy as np
import pandas as pd
import pytest

from flatcomp_tutorial import history


def _history(n_early=3, n_late=4):
    n = n_early + n_late
    return pd.DataFrame({"step": 100.0 * np.arange(n), "phase": ["early"] * n_early + ["late"] * n_late,
                         "train_loss": np.geomspace(0.5, 1e-4, n)})


def test_the_late_phase_starts_at_the_first_late_checkpoint():
    assert history.late_start_step(_history(n_early=3)) == 300.0


def test_a_run_without_a_late_phase_has_no_start_and_no_matched_row():
    h = _history().assign(phase="early")
    assert np.isnan(history.late_start_step(h))
    assert history.matched_row(h) is None
    assert len(history.phase_rows(h, "late")) == 0


def test_the_matched_row_is_the_first_late_row():
    assert history.matched_row(_history(n_early=2))["step"] == 200.0


@pytest.mark.parametrize("phase, steps", [("final", [600.0]), ("early", [0.0, 100.0, 200.0]),
                                          ("late", [300.0, 400.0, 500.0, 600.0]), ("matched", [300.0])])
def test_phase_rows_select_the_checkpoints_of_a_phase(phase, steps):
    assert history.phase_rows(_history(), phase)["step"].tolist() == steps


def test_a_history_without_a_phase_column_is_all_early():
    h = _history().drop(columns="phase")
    assert len(history.phase_rows(h, "early")) == len(h) and len(history.phase_rows(h, "late")) == 0


def test_an_unknown_phase_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="phase must be one of"):
        history.phase_rows(_history(), "middle")


def test_a_new_history_states_its_conventions_in_attrs():
    h = history.new_history([{"step": 0, "phase": "early"}], "mse", {"trace_h": "Tr H"}, 256, 0, {}, 1e-3, 8)
    assert list(h.step) == [0] and h.attrs["measures"] == {"trace_h": "Tr H"} and h.attrs["measure_errors"] == {}
    assert "(f - y)^2" in h.attrs["loss_convention"] and "seeded with 0" in h.attrs["measure_data"]
    assert "loss < 0.001 (checked every 8 steps)" in h.attrs["phase"]


def test_a_new_history_without_a_late_phase_says_every_row_is_early():
    h = history.new_history([], "cross_entropy", {}, None, 0, {}, None, 8)
    assert h.attrs["phase"] == "no late phase requested: every row is 'early'"
    assert h.attrs["loss_convention"] == "mean cross-entropy"
