"""The tolerance-aware nbval comparison (flatcomp_tutorial.nbval_plugin): last-digit differences between CPUs
pass, stale outputs beyond tolerance and any change of text or integers fail, and plain `pytest --nbval` needs no
environment variables."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from flatcomp_tutorial.nbval_plugin import DEFAULT_TOLERANCE, cell_tolerance, text_mismatch

ROOT = Path(__file__).resolve().parents[1]


def test_identical_text_matches():
    assert text_mismatch("Tr H = 12.5 after 60 epochs", "Tr H = 12.5 after 60 epochs") is None


def test_one_unit_in_the_last_printed_digit_is_rounding_and_matches():
    assert text_mismatch("range 0.00138 .. 0.00478", "range 0.00137 .. 0.00477") is None


def test_a_float_moved_beyond_the_default_tolerance_fails():
    assert "0.00138 became 0.00141" in text_mismatch("range 0.00138", "range 0.00141")


def test_round_off_of_an_exact_identity_matches_below_atol():
    assert text_mismatch("max |difference| 2.2e-16", "max |difference| 4.4e-16") is None
    assert text_mismatch("max |difference| 2.2e-16", "max |difference| 3.0e-03") is not None


def test_integers_are_compared_exactly_by_default():
    assert "integer 71 became 70" in text_mismatch("accuracy 71/72", "accuracy 70/72")


def test_changed_text_around_the_numbers_fails():
    assert text_mismatch("holds: True (slack 1.5)", "holds: False (slack 1.5)") == "the text around the numbers differs"


def test_column_realignment_from_wider_numbers_matches():
    stored = "   lr  trace\n0  0.1  0.0138\n1  0.2   0.005"
    recomputed = "   lr    trace\n0  0.1  0.013801\n1  0.2  0.005000"
    assert text_mismatch(stored, recomputed) is None


def test_digits_inside_words_are_text():
    assert text_mismatch("layer2 x_1", "layer3 x_1") == "the text around the numbers differs"


def test_a_stated_cell_tolerance_widens_floats_only():
    tol = cell_tolerance({"nbval": {"rtol": 0.05, "why": "SGD amplifies kernel round-off"}})
    assert text_mismatch("Tr G 10.0 at epoch 60", "Tr G 10.4 at epoch 60", tol) is None
    assert text_mismatch("Tr G 10.0 at epoch 60", "Tr G 11.0 at epoch 60", tol) is not None
    assert text_mismatch("Tr G 10.0 at epoch 60", "Tr G 10.0 at epoch 61", tol) is not None


def test_integers_can_be_given_the_cell_tolerance():
    tol = cell_tolerance({"nbval": {"rtol": 0.05, "integers": "tolerance", "why": "step counts vary"}})
    assert text_mismatch("converged after 400 steps", "converged after 410 steps", tol) is None


def test_a_cell_without_metadata_gets_the_default():
    assert cell_tolerance({}) == DEFAULT_TOLERANCE


def test_a_widened_tolerance_without_a_reason_is_refused():
    with pytest.raises(ValueError, match="why"):
        cell_tolerance({"nbval": {"rtol": 0.1}})


def test_unknown_tolerance_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        cell_tolerance({"nbval": {"rtoll": 0.1, "why": "typo"}})


def _notebook(tmp_path, source, stored, metadata=None):
    cell = nbformat.v4.new_code_cell(source, execution_count=1, metadata=metadata or {})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored)]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "check.ipynb"
    nbformat.write(nb, path)
    return path


def _nbval(path):
    """`pytest --nbval` on one notebook with the plugin and no FLATCOMP_* variables in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLATCOMP", "PYDEVD"))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                           "flatcomp_tutorial.nbval_plugin", "--nbval", "--nbval-current-env", str(path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=path.parent)


@pytest.mark.integration
def test_nbval_accepts_a_recomputed_float_within_the_cells_stated_tolerance(tmp_path):
    meta = {"nbval": {"rtol": 0.01, "why": "test"}}
    run = _nbval(_notebook(tmp_path, "print(1.005)", "1.0\n", meta))
    assert run.returncode == 0, run.stdout


@pytest.mark.integration
def test_nbval_fails_a_stale_float_beyond_the_cells_stated_tolerance(tmp_path):
    meta = {"nbval": {"rtol": 0.01, "why": "test"}}
    run = _nbval(_notebook(tmp_path, "print(1.005)", "1.5\n", meta))
    assert run.returncode != 0 and "1 failed" in run.stdout and "1.5 became 1.005" in run.stdout


@pytest.mark.integration
def test_nbval_kernels_run_with_progress_bars_off_without_environment_variables(tmp_path):
    source = "import os\nprint(os.environ.get('FLATCOMP_PROGRESS'))"
    run = _nbval(_notebook(tmp_path, source, "0\n"))
    assert run.returncode == 0, run.stdout


@pytest.mark.integration
def test_nbval_masks_wall_times_and_memory_addresses(tmp_path):
    source = "print('trained in 3.2 s on cpu at 0x7f00aa')"
    run = _nbval(_notebook(tmp_path, source, "trained in 17.9 s on cpu at 0x1234\n"))
    assert run.returncode == 0, run.stdout
