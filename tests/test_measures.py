"""Specification of flatcomp_tutorial.measures: the named tracked measures, their estimator settings by
``measure_version`` (2, the default: accuracy-driven; 1: the fixed counts of earlier stores) and the records that
say which settings produced them. References: the sharpness calls themselves (tested against dense float64
results in tests/test_sharpness.py) and a dense λ_max on a float64 network."""
from __future__ import annotations

import json

import pytest
import torch

import flatcomp_tutorial as fc
from flatcomp_tutorial import measures as M
from flatcomp_tutorial import sharpness as S
from problems import dense_hessian, small_digits


@pytest.fixture(scope="module")
def trained():
    """A float64 MLP 64-8-8-2 trained 40 SGD steps on digits 0 vs 1, and its 32-sample measurement subset."""
    data = small_digits().to("cpu", torch.float64)
    model = fc.make_model("mlp", data.input_shape, 2, width=8, seed=0).double()
    fc.train(model, data, lr=0.1, batch_size=16, steps=40, progress=False)
    return model.eval(), M.measurement_subset(data, 32, 0)


def _value(name, model, sub, **kw):
    return M.resolve_measures([name], **kw)[name](model, sub)


def test_default_measure_version_is_the_accuracy_driven_one():
    assert M.MEASURE_VERSION == 2 and M.MEASURE_VERSIONS == (1, 2)
    assert fc.training.TrainConfig(lr=0.1, batch_size=4, steps=1).measure_version == 2


def test_v2_trace_h_reaches_a_one_percent_standard_error(trained):
    model, sub = trained
    row = _value("trace_h", model, sub)
    assert row["trace_h_stderr"] <= M.TRACE_RTOL * abs(row["trace_h"])
    exact = float(dense_hessian(model, sub.x_train, sub.y_train).trace())
    assert abs(row["trace_h"] - exact) <= 4 * row["trace_h_stderr"]


def test_v2_trace_h_with_probes_uses_exactly_that_many_control_variate_probes(trained):
    model, sub = trained
    row = _value("trace_h", model, sub, probes=12)
    est = S.hessian_trace(model, sub.x_train, sub.y_train, probes=12, seed=0)
    assert est.method == "gn-control" and est.probes == 12
    assert row == {"trace_h": est.mean, "trace_h_stderr": est.stderr}


def test_v2_lambda_max_is_within_its_certified_relative_accuracy_of_the_dense_value(trained):
    model, sub = trained
    exact = float(torch.linalg.eigvalsh(dense_hessian(model, sub.x_train, sub.y_train))[-1])
    assert abs(_value("lambda_max", model, sub) - exact) <= M.EIG_RTOL * abs(exact)


def test_v2_adaptive_sharpness_reports_its_standard_error(trained):
    model, sub = trained
    row = _value("adaptive_sharpness", model, sub)
    assert set(row) == {"adaptive_sharpness", "adaptive_sharpness_stderr"}
    assert row["adaptive_sharpness_stderr"] <= M.ADAPTIVE_RTOL * abs(row["adaptive_sharpness"])
    exact = S.adaptive_sharpness(model, sub.x_train, sub.y_train, method="exact")
    assert abs(row["adaptive_sharpness"] - exact) <= 4 * row["adaptive_sharpness_stderr"]


def test_v1_reproduces_the_fixed_count_measures_of_earlier_stores(trained):
    model, sub = trained
    est = S.hessian_trace(model, sub.x_train, sub.y_train, probes=32, seed=0, method="hutchinson")
    assert _value("trace_h", model, sub, version=1) == {"trace_h": est.mean, "trace_h_stderr": est.stderr}
    lam = float(S.top_hessian_eigenvalues(model, sub.x_train, sub.y_train, k=1, tol=1e-4, seed=0)[0])
    assert _value("lambda_max", model, sub, version=1) == lam
    ad = S.adaptive_sharpness(model, sub.x_train, sub.y_train, probes=32, seed=0)
    assert _value("adaptive_sharpness", model, sub, version=1) == ad


def test_descriptions_state_the_settings_of_each_version():
    v1, v2 = M.measure_descriptions(1), M.measure_descriptions(2)
    assert "32 Rademacher probes" in v1["trace_h"] and "tol=1e-4" in v1["lambda_max"]
    assert "standard error <= 0.01" in v2["trace_h"] and "rtol=0.001" in v2["lambda_max"]
    assert "12 probes" in M.measure_descriptions(2, probes=12)["trace_h"]
    assert M.MEASURES == v2 and set(v1) == set(v2)


@pytest.mark.parametrize("version", [0, 3, 2.5, True, "2", None])
def test_unknown_measure_version_is_refused_naming_the_choices(version):
    with pytest.raises(ValueError, match=r"measure_version must be one of \(1, 2\)"):
        M.resolve_measures(["trace_h"], version=version)


def test_probes_must_be_a_positive_integer_or_none():
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        M.resolve_measures(["trace_h"], probes=0)


def test_history_records_the_measure_version_and_its_settings():
    data = small_digits()
    r = fc.train(fc.make_model("mlp", data.input_shape, 2, width=8, seed=0), data, lr=0.1, batch_size=16,
                 steps=2, measures=["trace_h"], measure_n=16, measure_version=1, progress=False)
    assert r.history.attrs["measure_version"] == 1 and r.config["measure_version"] == 1
    assert "32 Rademacher probes" in r.history.attrs["measures"]["trace_h"]


def test_store_records_without_a_version_load_as_version_1(tmp_path):
    store = tmp_path / "old.jsonl"
    old = {"key": "a", "config": {"train": {"lr": 0.1, "probes": 32}}, "final": {"trace_h": 1.0}}
    new = {"key": "b", "config": {"train": {"lr": 0.1}}, "final": {"trace_h": 2.0},
           "train_info": {"measure_version": 2}}
    store.write_text("\n".join(json.dumps(r) for r in (old, new)) + "\n")
    df = fc.store.load_results(store)
    assert dict(zip(df.key, df.measure_version)) == {"a": 1, "b": 2}


def test_v2_trace_at_initialisation_records_its_stderr_without_a_warning(recwarn):
    data = small_digits()
    model = fc.make_model("mlp", data.input_shape, 2, width=8, seed=0)
    sub = M.measurement_subset(data, 32, 0)
    row = _value("trace_h", model.eval(), sub)
    assert row["trace_h_stderr"] > M.TRACE_RTOL * abs(row["trace_h"])  # the cap was reached
    assert not [w for w in recwarn if "max_probes" in str(w.message)]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_trace_jtj_is_the_mean_squared_frobenius_norm_of_the_jacobians_whatever_the_loss(trained, loss):
    model, sub = trained
    params = {k: v.detach() for k, v in model.named_parameters()}

    def out(p, x):
        return torch.func.functional_call(model, p, (x[None],))[0]

    dense = sum(sum(float(j.pow(2).sum()) for j in torch.func.jacrev(out)(params, x).values())
                for x in sub.x_train) / len(sub.x_train)
    assert _value("trace_jtj", model, sub, loss=loss) == pytest.approx(dense, rel=1e-10)
