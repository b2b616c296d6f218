"""Specification of flatcomp_tutorial.stats: correlations with bootstrap CIs over rows, runs or checkpoints,
non-finite values handled per pair and method, partial correlations."""
import numpy as np
import pandas as pd
import pytest

from flatcomp_tutorial.stats import (_rows_for_phase, checkpoint_correlations, correlations, partial_correlations,
                                     summarize)


def test_summarize_refuses_an_unknown_phase():
    with pytest.raises(ValueError, match="phase must be one of"):
        summarize(pd.DataFrame(), phase="middle")


def fake_results(n_runs=12, seed=0):
    """Runs whose checkpoints satisfy mls = 0.1·trace_h + noise and local_dim independent of trace_h."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n_runs):
        tr = rng.uniform(1, 10, size=3)
        hist = [dict(step=s, phase=ph, trace_h=t, mean_mls=0.1 * t + 0.01 * rng.normal(),
                     mean_local_dim=rng.uniform(1, 2))
                for s, ph, t in zip((0, 10, 20), ("early", "late", "late"), tr)]
        runs.append(dict(key=str(i), diverged=(i == 0), history=hist))
    return pd.DataFrame(runs)


def test_summarize_gives_both_correlations_with_bootstrap_cis_over_runs():
    s = summarize(fake_results(), sharpness=["trace_h"], compression=["mean_mls", "mean_local_dim"], phase="late",
                    n_boot=200)
    mls = s[(s.compression == "mean_mls")].set_index("method")
    assert mls.loc["spearman", "r"] > 0.95 and mls.loc["pearson", "ci_low"] > 0.9
    assert (mls.n == 22).all() and (mls.n_runs == 11).all() and (s.phase == "late").all()  # diverged run left out
    dim = s[(s.compression == "mean_local_dim") & (s.method == "spearman")].iloc[0]
    assert dim.ci_low < dim.r < dim.ci_high and dim.ci_low < 0 < dim.ci_high


def test_summarize_matched_phase_takes_the_first_late_checkpoint_of_each_run():
    res = fake_results()
    rows = _rows_for_phase(res, "matched")
    assert list(rows.step) == [10] * 11 and list(rows._run) == list(range(1, 12))
    s = summarize(res, sharpness=["trace_h", "lambda_max"], compression=["mean_mls"], n_boot=10)
    assert set(s.sharpness) == {"trace_h"} and s.attrs["missing_columns"] == ["lambda_max"]


def test_correlations_of_a_flat_table_match_scipy_and_bracket_r_with_the_bootstrap_interval():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    a = rng.normal(size=40)
    t = pd.DataFrame({"a": a, "b": a + 0.5 * rng.normal(size=40), "c": rng.normal(size=40)})
    out = correlations(t, ["a"], ["b", "c"], n_boot=300).set_index(["y", "method"])
    assert np.isclose(out.loc[("b", "pearson"), "r"], pearsonr(t.a, t.b)[0])
    assert np.isclose(out.loc[("c", "spearman"), "r"], spearmanr(t.a, t.c)[0])
    assert (out.ci_low <= out.r).all() and (out.r <= out.ci_high).all() and (out.n == 40).all()


def test_correlations_drop_non_finite_rows_and_resample_whole_groups():
    t = pd.DataFrame({"a": [1.0, 2, 3, 4, np.inf, 6], "b": [1.0, 2, 3, 4, 5, np.nan], "g": [0, 0, 1, 1, 2, 2]})
    with pytest.warns(UserWarning, match="bootstrap needs at least 3"):
        out = correlations(t, ["a"], ["b"], groups="g", n_boot=20)
    out = out.set_index("method")
    # Pearson: rows 0-3 (inf and NaN rows out), 2 groups: no CI; Spearman keeps the +inf row: 5 rows, 3 groups
    assert out.loc["pearson", "n"] == 4 and out.loc["pearson", "n_groups"] == 2
    assert np.isnan(out.loc["pearson", "ci_low"])
    assert out.loc["spearman", "n"] == 5 and out.loc["spearman", "n_groups"] == 3
    assert np.isfinite(out.loc["spearman", "ci_low"])


def test_correlations_warn_and_return_nan_with_fewer_than_three_rows():
    with pytest.warns(UserWarning, match="at least 3"):
        out = correlations(pd.DataFrame({"a": [1.0, 2.0], "b": [2.0, 1.0]}), ["a"], ["b"])
    assert out.r.isna().all()


def test_correlations_name_a_missing_column():
    with pytest.raises(ValueError, match="no column"):
        correlations(pd.DataFrame({"a": [1.0]}), ["a"], ["zz"])

# ------------------------------------------------------------------------------------ non-finite values in statistics
def _log_volume_table(n=12, n_neg_inf=3, seed=0):
    """y = log volume that grows with x; its n_neg_inf smallest-x rows are -inf (rank-deficient maps)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 1, n))
    y = np.log(x + 0.1) + 0.05 * rng.normal(size=n)
    y[:n_neg_inf] = -np.inf
    return pd.DataFrame({"trace_h": x, "mean_log_lvr": y, "g": np.arange(n)})


def test_spearman_ranks_minus_inf_lowest_and_uses_every_row():
    from scipy.stats import spearmanr

    t = _log_volume_table()
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 3 -inf of 12"):
        sp = correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=50).set_index("method").loc["spearman"]
    lowest = t.mean_log_lvr.replace(-np.inf, t.mean_log_lvr[np.isfinite(t.mean_log_lvr)].min() - 1)
    np.testing.assert_allclose(sp.r, spearmanr(t.trace_h, lowest)[0], rtol=1e-12, atol=1e-12)
    assert sp.n == 12 and sp.n_excluded == 0 and np.isfinite(sp.ci_low)


def test_pearson_leaves_out_minus_inf_rows_and_counts_them():
    from scipy.stats import pearsonr

    t = _log_volume_table()
    with pytest.warns(RuntimeWarning, match="left out of Pearson"):
        pe = correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=50).set_index("method").loc["pearson"]
    finite = t.iloc[3:]
    np.testing.assert_allclose(pe.r, pearsonr(finite.trace_h, finite.mean_log_lvr)[0], rtol=1e-12, atol=1e-12)
    assert pe.n == 9 and pe.n_excluded == 3 and np.isfinite(pe.r) and np.isfinite(pe.ci_low)


def test_correlations_leave_nan_rows_out_of_both_methods_and_count_them():
    t = _log_volume_table(n_neg_inf=0)
    t.loc[[2, 5], "mean_log_lvr"] = np.nan
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 2 NaN of 12"):
        out = correlations(t, ["trace_h"], ["mean_log_lvr"], n_boot=0)
    assert (out.n == 10).all() and (out.n_excluded == 2).all() and out.r.notna().all()


def test_one_columns_infinities_do_not_remove_rows_from_other_pairs():
    t = _log_volume_table().assign(mean_mls=lambda d: 2 * d.trace_h)
    with pytest.warns(RuntimeWarning):
        out = correlations(t, ["trace_h"], ["mean_log_lvr", "mean_mls"], n_boot=0)
    mls = out[out.y == "mean_mls"]
    assert (mls.n == 12).all() and (mls.n_excluded == 0).all()
    np.testing.assert_allclose(mls.r, 1.0, rtol=1e-12, atol=1e-12)


def test_correlations_warn_when_r_is_undefined_for_a_constant_column():
    t = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0] * 4})
    with pytest.warns(UserWarning, match="r is undefined .* a column is constant"):
        out = correlations(t, ["a"], ["b"], n_boot=0)
    assert out.r.isna().all()



def _results_with_log_volumes(n_runs=10, n_neg_inf=3):
    """One late checkpoint per run; mean_log_lvr = -inf in the first n_neg_inf runs (the flattest)."""
    runs = []
    for i in range(n_runs):
        lvr = -np.inf if i < n_neg_inf else np.log(1.0 + i)
        runs.append(dict(key=str(i), diverged=False,
                         history=[dict(step=10, phase="late", trace_h=1.0 + i, mean_log_lvr=lvr)]))
    return pd.DataFrame(runs)


def test_summarize_keeps_minus_inf_log_volumes_for_spearman_and_reports_them_excluded_for_pearson():
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 3 -inf of 10"):
        s = summarize(_results_with_log_volumes(), sharpness=["trace_h"], compression=["mean_log_lvr"], n_boot=50)
    s = s.set_index("method")
    assert "n_excluded" in s.columns and s.r.notna().all()
    assert s.loc["spearman", "n"] == 10 and s.loc["spearman", "n_excluded"] == 0
    ranks = [2, 2, 2, 4, 5, 6, 7, 8, 9, 10]  # the three -inf tie for the lowest ranks
    np.testing.assert_allclose(s.loc["spearman", "r"], np.corrcoef(np.arange(1, 11), ranks)[0, 1], rtol=1e-12,
                               atol=1e-12)
    assert s.loc["pearson", "n"] == 7 and s.loc["pearson", "n_excluded"] == 3 and s.loc["pearson", "n_runs"] == 7



def test_checkpoint_correlations_count_excluded_minus_inf_checkpoints():
    h = pd.DataFrame({"phase": ["late"] * 8, "trace_g": np.arange(8.0),
                      "mean_log_lvr": [-np.inf, -np.inf, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    with pytest.warns(RuntimeWarning, match="column 'mean_log_lvr' has 2 -inf"):
        out = checkpoint_correlations(h, sharpness=["trace_g"], compression=["mean_log_lvr"], n_boot=0)
    out = out.set_index("method")
    assert out.loc["pearson", "n_checkpoints"] == 6 and out.loc["pearson", "n_excluded"] == 2
    assert out.loc["spearman", "n_checkpoints"] == 8 and out.loc["spearman", "n_excluded"] == 0


def test_summarize_leaves_out_and_reports_a_run_whose_history_is_not_a_list_of_dicts():
    res = fake_results()
    res.at[3, "history"] = "garbled"
    with pytest.warns(RuntimeWarning, match=r"1 run\(s\) \['3'\] left out: their history is not a list"):
        s = summarize(res, sharpness=["trace_h"], compression=["mean_mls"], phase="late", n_boot=0)
    assert (s.n_runs == 10).all() and s.attrs["excluded_runs"] == 2



# ------------------------------------------------------------------------------------------ partial correlations
def _confounded(n=200, seed=0, direct=0.0):
    """x and y each depend on z (plus noise, plus ``direct`` times x in y); z stands for a control such as η/B."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0, 1, n)
    x = np.exp(2 * z) + 0.3 * rng.normal(size=n)
    y = z ** 3 + direct * x + 0.1 * rng.normal(size=n)
    return pd.DataFrame({"x": x, "y": y, "z": z, "g": np.arange(n) % 20})


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_partial_correlation_with_one_control_equals_the_closed_form(method):
    from scipy.stats import rankdata

    t = _confounded(n=60, direct=0.5)
    v = t[["x", "y", "z"]].to_numpy()
    r = np.corrcoef(rankdata(v, axis=0) if method == "spearman" else v, rowvar=False)
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    closed = (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    out = partial_correlations(t, ["x"], ["y"], "z", method=method, n_boot=0)
    np.testing.assert_allclose(out.r.iloc[0], closed, rtol=0, atol=1e-12)
    assert out.method.iloc[0] == method and out.control.iloc[0] == "z" and out.n.iloc[0] == 60


def test_partial_correlation_is_near_zero_when_x_and_y_depend_only_on_the_control():
    rng = np.random.default_rng(0)
    z = rng.normal(size=400)
    t = pd.DataFrame({"x": z + 0.5 * rng.normal(size=400), "y": z + 0.5 * rng.normal(size=400), "z": z})
    raw = correlations(t, ["x"], ["y"], n_boot=0).set_index("method").loc["spearman", "r"]
    out = partial_correlations(t, ["x"], ["y"], "z", n_boot=200).iloc[0]
    assert raw > 0.7 and abs(out.r) < 0.1 and out.ci_low < 0 < out.ci_high


def test_partial_correlation_keeps_a_direct_dependence_and_brackets_it_with_the_bootstrap_interval():
    out = partial_correlations(_confounded(direct=0.5), ["x"], ["y"], ["z"], groups="g", n_boot=200).iloc[0]
    assert out.r > 0.5 and out.ci_low <= out.r <= out.ci_high and out.n_groups == 20


def test_partial_correlation_leaves_out_rows_with_a_nan_control_and_counts_them():
    t = _confounded(n=40)
    t.loc[[0, 1, 2], "z"] = np.nan
    with pytest.warns(RuntimeWarning, match="column 'z' has 3 NaN"):
        out = partial_correlations(t, ["x"], ["y"], "z", n_boot=0)
    assert out.n.iloc[0] == 37 and out.n_excluded.iloc[0] == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(control="x"), "both correlated and controlled for"),
    (dict(control=[]), "at least one column"),
    (dict(control="w"), r"no column\(s\) \['w'\]"),
    (dict(method="kendall"), "method must be one of"),
    (dict(n_boot=-1), "n_boot must be >= 0"),
])
def test_partial_correlations_refuse_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partial_correlations(_confounded(n=10), ["x"], ["y"], **({"control": "z"} | kwargs))


def test_partial_correlation_needs_more_rows_than_controls_plus_two():
    with pytest.warns(UserWarning, match=r"too few usable rows .* at least 4"):
        out = partial_correlations(_confounded(n=3), ["x"], ["y"], "z", n_boot=0)
    assert out.r.isna().all()


# --- the late phase across seeds: per-run changes, trends and correlations, seed-level intervals ---

from flatcomp_tutorial.late import late_changes, late_correlations, late_phase_table, late_trend, seed_intervals


def late_history():
    """One early and five late checkpoints, 10 steps apart (late phase: steps 10..50)."""
    step = np.arange(0, 60, 10)
    return pd.DataFrame(dict(step=step, phase=["early"] + ["late"] * 5, train_loss=np.exp(-0.1 * step),
                             trace_g=[9.0, 8.0, 4.0, 2.0, 1.0, 0.5], mean_mls=[1.0, 0.5, 0.4, 0.2, 0.25, 0.25],
                             mean_log_lvr=[0.0, -1.0, -2.0, -3.0, -3.5, -4.0]))


def test_late_changes_are_log_ratios_of_scales_and_differences_of_logs_from_the_late_start():
    d = late_changes(late_history(), ["trace_g", "mean_mls", "mean_log_lvr"])
    assert d["trace_g"] == pytest.approx(np.log(0.5 / 8))
    assert d["mean_mls"] == pytest.approx(np.log(0.25 / 0.5))
    assert d["mean_log_lvr"] == pytest.approx(-3.0)


def test_late_changes_from_half_way_start_at_the_first_checkpoint_of_the_second_half():
    d = late_changes(late_history(), ["trace_g", "mean_log_lvr"], start_fraction=0.5)  # steps >= 30: 30 -> 50
    assert d["trace_g"] == pytest.approx(np.log(0.5 / 2)) and d["mean_log_lvr"] == pytest.approx(-1.0)


def test_late_trend_is_the_fitted_slope_of_the_log_times_the_window_length():
    assert late_trend(late_history())["train_loss"] == pytest.approx(-0.1 * 40)


def test_late_trend_fits_every_checkpoint_not_only_the_end_points():
    h = late_history().assign(train_loss=[1.0, 1.0, 2.0, 0.5, 2.0, 4.0])
    fitted = np.polyfit([10, 20, 30, 40, 50], np.log([1, 2, 0.5, 2, 4]), 1)[0] * 40
    assert late_trend(h)["train_loss"] == pytest.approx(fitted)
    assert abs(late_trend(h)["train_loss"]) < late_changes(h, ["train_loss"])["train_loss"]


def test_late_correlations_give_spearman_and_the_rank_partial_given_the_loss():
    h = pd.DataFrame(dict(step=range(6), phase=["late"] * 6, trace_g=[1, 2, 3, 4, 5, 6.0],
                          mean_mls=[2, 1, 4, 3, 6, 5.0], train_loss=[1, 3, 2, 5, 4, 6.0]))
    c = late_correlations(h, y=["mean_mls"])
    rxy, rxz, ryz = 1 - 6 * 6 / (6 * 35), 1 - 6 * 4 / (6 * 35), 1 - 6 * 18 / (6 * 35)  # 1 - 6 Σd² / (n(n²-1))
    assert c["r:trace_g:mean_mls"] == pytest.approx(rxy)
    assert c["partial:trace_g:mean_mls"] == pytest.approx((rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2)))


def test_seed_intervals_are_student_t_intervals_over_seeds_per_group():
    t = pd.DataFrame(dict(arm=["a", "a", "a", "b", "b", "b"], x=[1.0, 2.0, 3.0, 5.0, 5.0, 5.0]))
    s = seed_intervals(t, ["x"]).set_index("arm")
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} · s / sqrt(n), s = 1
    assert s.loc["a", "mean"] == 2.0 and s.loc["a", "n"] == 3
    assert (s.loc["a", "ci_low"], s.loc["a", "ci_high"]) == pytest.approx((2 - half, 2 + half))
    assert s.loc["b", "ci_low"] == s.loc["b", "ci_high"] == 5.0


@pytest.mark.parametrize("table, columns, match", [
    (pd.DataFrame(dict(arm=["a", "a", "b", "b", "b"], x=[1.0] * 5)), ["x"], r"fewer than min_seeds=3"),
    (pd.DataFrame(dict(arm=["a"] * 3, x=[1.0] * 3)), ["x", "y"], r"no column\(s\) \['y'\]"),
])
def test_seed_intervals_refuse_too_few_seeds_and_missing_columns(table, columns, match):
    with pytest.raises(ValueError, match=match):
        seed_intervals(table, columns)


def test_late_changes_refuse_a_history_without_a_late_phase_or_without_the_measure():
    with pytest.raises(ValueError, match="late-phase checkpoint"):
        late_changes(late_history().assign(phase="early"), ["trace_g"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['trace_h'\]"):
        late_changes(late_history(), ["trace_h"])


def test_late_phase_table_gives_one_row_per_run_and_refuses_diverged_runs():
    runs = pd.DataFrame(dict(arm=["a", "a"], seed=[0, 1], diverged=[False, False],
                             history=[late_history().to_dict("records")] * 2))
    t = late_phase_table(runs, measures=["train_loss", "trace_g", "mean_mls"])
    assert list(t.seed) == [0, 1] and t["d:trace_g"].iloc[0] == pytest.approx(np.log(0.5 / 8))
    assert t["d2:trace_g"].iloc[0] == pytest.approx(np.log(0.5 / 2))
    assert t["trend:train_loss"].iloc[0] == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="diverged"):
        late_phase_table(runs.assign(diverged=[False, True]), measures=["train_loss", "trace_g", "mean_mls"])
