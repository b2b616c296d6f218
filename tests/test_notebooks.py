"""Helpers the chapters use so that prose and outputs agree: glue (numbers into the text) and claim (checked
statements)."""
import numpy as np
import pytest
import torch

from flatcomp_tutorial.notebooks import claim, glue


def test_claim_that_holds_prints_the_statement(capsys):
    claim(2.0 < 3.0, "Tr G falls")
    assert capsys.readouterr().out == "claim holds: Tr G falls\n"


def test_claim_that_fails_raises_naming_the_statement(monkeypatch):
    monkeypatch.delenv("FLATCOMP_CLAIMS", raising=False)
    with pytest.raises(AssertionError, match="Tr G falls"):
        claim(False, "Tr G falls")


def test_claim_accepts_numpy_booleans(capsys):
    claim(np.float64(1.0) > 0, "positive")
    assert "claim holds" in capsys.readouterr().out


def test_claim_refuses_a_number_instead_of_a_comparison():
    with pytest.raises(TypeError, match="holds must be a bool"):
        claim(0.97, "Spearman above 0.9")


def test_failed_claim_only_warns_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("FLATCOMP_CLAIMS", "warn")
    with pytest.warns(UserWarning, match="does not hold"):
        claim(False, "Tr G falls")
    assert "does NOT hold" in capsys.readouterr().out


@pytest.mark.parametrize("value", [np.float64(0.25), torch.tensor(0.25), np.float32(0.25), 0.25])
def test_glue_stores_numbers_as_python_floats(monkeypatch, value):
    stored = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, v, display=True: stored.update({name: v}))
    glue("x", value)
    assert type(stored["x"]) is float and stored["x"] == 0.25


def test_claim_accepts_a_zero_dimensional_bool_tensor(capsys):
    claim((torch.tensor([1.0, 2.0]) > 0).all(), "all positive")
    assert "claim holds" in capsys.readouterr().out
