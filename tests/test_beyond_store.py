"""Specification of the stored runs of chapter "Beyond the paper" (data/results/cpu_beyond.jsonl, built by
``make beyond``): every method of the chapter with every seed, each run reached the loss threshold, ran its whole
late phase and none diverged, each carries its attack results, and a stored run recomputed on this machine gives
the same late-phase values and radii."""
import numpy as np
import pandas as pd
import pytest

import flatcomp_tutorial as fc
from shipped import shipped_records
from flatcomp_tutorial.presets import BEYOND_METHODS, beyond_grid, beyond_method, beyond_spec, resolve_config
from flatcomp_tutorial.sweeps import run_config

# cross-entropy, seed 0: the cheapest run of the store (a few seconds here).
RECOMPUTED = ("cross-entropy", 0)
# The runs are float64 (thousands of SGD steps agree across CPU kernels to round-off): relative tolerance on the
# exact measures and the loss at every late checkpoint, and on the per-input radii, 1e-6. The radii come from
# bisections (8 halvings) that a round-off change can only move by one step when a test input sits on a step edge,
# so at most one input may differ beyond it.
RTOL = 1e-6
EXACT = ["train_loss", "trace_g", "trace_jtj", "mean_mls", "lhs_B2", "rhs_B2"]


@pytest.fixture(scope="module")
def records():
    return shipped_records("cpu_beyond.jsonl")   # finished runs only


def test_the_store_holds_every_method_with_every_seed_of_the_chapter(records):
    spec = beyond_spec()
    planned = {fc.store.config_key(resolve_config(p, spec)) for p in beyond_grid()}
    assert len(planned) == 3 * len(BEYOND_METHODS) and planned <= {r["key"] for r in records}


def test_every_run_reached_the_threshold_ran_its_late_phase_and_none_diverged(records):
    K = beyond_spec()["train"]["late_phase_steps"]
    for r in records:
        assert r["train_info"]["reached_threshold"] and not r["diverged"]
        assert r["final"]["step"] - r["train_info"]["late_start_step"] == K


def test_every_run_carries_its_attack_results_on_every_test_input(records):
    n_test = fc.load_dataset("digits", classes=(3, 8)).n_test
    for r in records:
        assert {"pgd_success", "median_radius"} <= set(r["robustness"])
        assert all(len(v) == n_test for v in r["radii"].values())


@pytest.mark.integration
def test_a_stored_run_recomputed_here_matches_its_late_phase_values_and_radii(records):
    method, seed = RECOMPUTED
    stored = next(r for r in records if r["config"]["train"]["seed"] == seed
                  and beyond_method({**r["config"]["train"], "loss": r["config"]["train"].get("loss")}) == method)
    new = run_config(stored["config"], device="cpu", progress=False)
    old_late, new_late = (pd.DataFrame(r["history"]).query("phase == 'late'") for r in (stored, new))
    assert list(new_late.step) == list(old_late.step)
    np.testing.assert_allclose(new_late[EXACT].to_numpy(), old_late[EXACT].to_numpy(), rtol=RTOL)
    # Tr H is a Hutchinson estimate to a 1 % standard error (another CPU may stop at another probe count): 3 errors
    np.testing.assert_allclose(new_late.trace_h.to_numpy(), old_late.trace_h.to_numpy(), rtol=0.03)
    for name in ("mls_bound", "empirical"):
        old, now = np.asarray(stored["radii"][name]), np.asarray(new["radii"][name])
        assert (~np.isclose(now, old, rtol=RTOL)).sum() <= 1, name
