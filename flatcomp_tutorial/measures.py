"""The registry of tracked measures: what each named measure computes, the columns it adds to a training history,
and the axis label (in the book's notation, with its unit) every figure takes from here.

A named measure is a function ``fn(model, measure_data) -> float | {column: float}`` evaluated in eval mode on the
fixed :func:`measurement_subset`; the definitions are those of the chapters "Measuring sharpness" and "Measuring
compression" and of the notation appendix. Training (:func:`~flatcomp_tutorial.training.train`) and sweeps call
:func:`resolve_measures` and :func:`measure_row`; figures call :func:`label`.

Symbols: Appendix "Notation and conventions", entry "Data, mode and precision" (the measurement subset).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import bounds, geometry, sharpness
from .checks import check_count, is_integer
from .layers import dense_layers, first_layer_is_dense
from .data import Dataset

MeasureFn = Callable[[nn.Module, Dataset], Union[float, Mapping[str, float]]]

# Versions of the named measures' estimator settings (recorded as ``measure_version`` with every run). Version 1
# (until 2026-12): fixed counts (32 Hutchinson probes for the traces and adaptive sharpness, ARPACK tol 1e-4 for
# λ_max). Version 2: the accuracy-driven calls of chapter "Measuring sharpness" (a relative standard error for
# the stochastic traces, a certified relative accuracy for λ_max), so every tracked sharpness says how accurate it
# is. Old stores keep their version (records without one are version 1); ``measure_version=1`` reproduces them.
MEASURE_VERSIONS = (1, 2)
MEASURE_VERSION = 2
V1_PROBES = 32        # version 1: Hutchinson probes of trace_h, test_trace_h and adaptive_sharpness
TRACE_RTOL = 1e-2     # version 2: target standard error of Tr H relative to |Tr H| (sharpness.hessian_trace)
EIG_RTOL = 1e-3       # version 2: certified relative accuracy of λ_max (sharpness.top_hessian_eigenvalues)
ADAPTIVE_RTOL = 5e-2  # version 2: target relative standard error of adaptive sharpness (plain Hutchinson)
ADAPTIVE_MAX_PROBES = 400  # version 2: cap on its probes
# Version 2 caps the probes of Tr H at sharpness.hessian_trace's default (1000) and of adaptive sharpness at
# ADAPTIVE_MAX_PROBES; where a cap is reached (far from a minimum, e.g. at initialisation, where H − G is large)
# the estimate of those probes is recorded without a warning: its ``*_stderr`` column states the accuracy reached.


def check_measure_version(version) -> int:
    """``version`` as an int from ``MEASURE_VERSIONS``."""
    if not is_integer(version) or int(version) not in MEASURE_VERSIONS:
        raise ValueError(f"measure_version must be one of {MEASURE_VERSIONS} (1: the fixed-count settings of "
                         f"earlier stores; {MEASURE_VERSION}: accuracy-driven, the default), got {version!r}")
    return int(version)


def measure_descriptions(version: int = MEASURE_VERSION, probes: int | None = None) -> dict[str, str]:
    """What each named measure computes and on which data, with the estimator settings of ``version`` and
    ``probes`` (copied into ``history.attrs["measures"]``)."""
    version = check_measure_version(version)
    if version == 1:
        m = probes or V1_PROBES
        lam = "Lanczos (ARPACK), sharpness.top_hessian_eigenvalues, k=1, tol=1e-4, seed 0"
        tr = f"Hutchinson, sharpness.hessian_trace(method='hutchinson'), {m} Rademacher probes, probe seed 0"
        ad = f"Hutchinson, {m} probes, seed 0"
    else:
        lam = (f"certified block Lanczos, sharpness.top_hessian_eigenvalues, k=1, rtol={EIG_RTOL:g}: within "
               f"{EIG_RTOL:g} relative of the exact value, seed 0")
        tr = ("Gauss-Newton control variate, sharpness.hessian_trace(method='auto'), "
              + (f"{probes} probes" if probes else f"probes until the standard error <= {TRACE_RTOL:g} |Tr H| "
                 "(at most 1000; trace_h_stderr states the accuracy reached)") + ", probe seed 0")
        ad = ("Hutchinson, " + (f"{probes} probes" if probes else
                                f"probes until the standard error <= {ADAPTIVE_RTOL:g} of it (at most "
                                f"{ADAPTIVE_MAX_PROBES}; its stderr states the accuracy reached)") + ", seed 0")
    return {
        "lambda_max": f"λ_max(H) of the training loss on the measurement subset ({lam})",
        "trace_h": f"Tr H on the measurement subset ({tr}) -> trace_h, trace_h_stderr",
        "trace_g": "exact Tr G on the measurement subset (sharpness.gauss_newton_trace) -> trace_g and trace_g_W<l>, "
                   "Tr G_{W_l} of the weight block of dense layer l (1-based, layers.dense_layers order, "
                   "as in the bounds chapters)",
        "trace_jtj": "(1/n) Σ_i ||J_θ f(x_i)||_F² on the measurement subset (sharpness.gauss_newton_trace with the "
                     "MSE convention): the Gauss-Newton trace of the MSE loss whatever loss trains the model, so "
                     "cross-entropy and MSE runs compare on one scale",
        "relative_flatness": "relative flatness κ_L of the LAST dense layer on the measurement subset "
                             "(sharpness.relative_flatness, exact, Hessian)",
        "adaptive_sharpness": f"adaptive sharpness Σ θ_j² H_jj on the measurement subset ({ad})"
                              + (" -> adaptive_sharpness, adaptive_sharpness_stderr" if version > 1 else ""),
        "test_lambda_max": "λ_max(H) of the loss on the test measurement subset (same size, seeded; as lambda_max)",
        "test_trace_h": "Tr H of the loss on the test measurement subset (as trace_h) -> test_trace_h, "
                        "test_trace_h_stderr",
        "local": "input->output local measures on the measurement subset inputs (geometry.local_measures) -> "
                 "mean_log_lvr, median_log_lvr, mean_mls, mean_local_dim",
        "hidden_local": "hidden representation h_l versus the input, for every hidden dense layer l (not the "
                        "output), on the measurement subset inputs (geometry.local_measures(model, x, 'input', l)) "
                        "-> mean_local_dim_h<l>, mean_mls_h<l>, mean_log_lvr_h<l> (r = min(width, input dim))",
        "nmls": "NMLS, left side of B6, over all dense layers on the measurement subset inputs (bounds.nmls); "
                "NaN for weight-sharing dense layers (ViT)",
        "bounds": "bounds.bound_table (B1-B8, identity rows skipped; B1-B5 only for a dense first layer) on the "
                  "measurement subset -> bounds_hold (1 if every bound holds), slack_<bound> (RHS/LHS, or "
                  "RHS-LHS for the log forms B4, B5; the smallest over layers for B8) and both sides lhs_<bound>, "
                  "rhs_<bound> of B1-B7",
        "global_pr": "participation ratio of the last hidden representation (input of the last dense layer) over "
                     "the measurement subset inputs (geometry.participation_ratio)",
    }


# What each named measure computes, with the default settings (measure_descriptions(MEASURE_VERSION)).
MEASURES: dict[str, str] = measure_descriptions()
DEFAULT_MEASURES = ("lambda_max", "trace_h", "trace_g", "relative_flatness", "local", "nmls")
SWEEP_MEASURES = ("lambda_max", "trace_h", "trace_g", "relative_flatness", "adaptive_sharpness", "local", "nmls",
                  "global_pr")

# Axis label of every history/results column, in the book's notation, with its unit or convention.
LABELS: dict[str, str] = {
    "step": "SGD step",
    "epoch": "epoch",
    "train_loss": "training loss  (mean ½‖f−y‖²)",
    "test_loss": "test loss  (mean ½‖f−y‖²)",
    "train_acc": "training accuracy",
    "test_acc": "test accuracy",
    "trace_h": "Tr H",
    "trace_g": "Tr G  (exact)",
    "lambda_max": "λ_max(H)",
    "test_trace_h": "Tr H on test data",
    "test_lambda_max": "λ_max(H) on test data",
    "relative_flatness": "relative flatness κ (last layer)",
    "adaptive_sharpness": "adaptive sharpness Σθ²H_jj",
    "mean_log_lvr": "mean log LVR  (nats)",
    "median_log_lvr": "median log LVR  (nats)",
    "mean_mls": "mean MLS  (σ_1 of ∂f/∂x)",
    "mean_local_dim": "mean local dimensionality",
    "nmls": "NMLS  (B6 left side)",
    "global_pr": "global participation ratio",
    "lr_over_batch": "η/B  (learning rate / batch size)",
    "lr_over_b": "η/B  (learning rate / batch size)",
    "loss": "loss  (mean ½‖f−y‖²)",
    "accuracy_percent": "accuracy (%)",
    "layer": "dense layer l",
    "log_lvr": "log LVR  (Σ_j log σ_j)",
    "mls": "MLS  (σ_1)",
    "local_dim": "local dimensionality",
    "inputs_mean_mls": "mean MLS on the attacked inputs",
}


def label(column: str) -> str:
    """The axis label of a history/results ``column`` (its name itself if it has none)."""
    return LABELS.get(column, column)


def measurement_subset(data: Dataset, measure_n: int | None = 256, seed: int = 0) -> Dataset:
    """The fixed subset every measure uses: ``min(measure_n, n)`` training and test samples drawn without
    replacement by a generator seeded with ``seed`` (independent of the training seed, so every run of a sweep
    is measured on the same inputs). ``measure_n=None``: the whole sets, in order."""
    check_measure_n(measure_n)
    check_count(seed, "measure_seed", 0)

    def pick(n: int) -> torch.Tensor:
        if measure_n is None or measure_n >= n:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:measure_n].sort().values

    tr, te = pick(data.n_train), pick(data.n_test)
    dev = data.x_train.device
    tr, te = tr.to(dev), te.to(dev)
    return Dataset(f"{data.name}[measure]", data.x_train[tr], data.y_train[tr], data.labels_train[tr],
                   data.x_test[te], data.y_test[te], data.labels_test[te], data.n_classes, data.input_shape,
                   data.classes, dict(data.meta, measure_n=measure_n, measure_seed=seed))


def check_measure_n(measure_n) -> None:
    if measure_n is not None and (not is_integer(measure_n) or measure_n < 2):
        raise ValueError(f"measure_n must be >= 2 (an integer) or None (all samples), got {measure_n!r}")


@contextlib.contextmanager
def _cap_reached_is_recorded():
    """Silence the "max_probes reached" RuntimeWarning of an accuracy-driven estimate: a tracked measure records
    its standard error in its ``*_stderr`` column instead (other warnings pass)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*max_probes = \d+ probes reached", category=RuntimeWarning)
        yield


def _named_measure(name: str, loss: str, probes: int | None, version: int = MEASURE_VERSION) -> MeasureFn:
    def last_layer(model):
        return len(dense_layers(model))

    def trace(x, y, prefix):
        def fn(model, m):
            if version == 1:
                est = sharpness.hessian_trace(model, getattr(m, x), getattr(m, y), loss=loss,
                                              probes=probes or V1_PROBES, seed=0, method="hutchinson")
            else:
                accuracy = dict(probes=probes) if probes else dict(rtol=TRACE_RTOL)
                with _cap_reached_is_recorded():
                    est = sharpness.hessian_trace(model, getattr(m, x), getattr(m, y), loss=loss, seed=0,
                                                  **accuracy)
            return {prefix: est.mean, f"{prefix}_stderr": est.stderr}
        return fn

    def lam(x, y):
        accuracy = dict(tol=1e-4) if version == 1 else dict(rtol=EIG_RTOL)
        return lambda model, m: float(sharpness.top_hessian_eigenvalues(model, getattr(m, x), getattr(m, y), k=1,
                                                                        loss=loss, seed=0, **accuracy)[0])

    def adaptive(model, m):
        if version == 1:
            return sharpness.adaptive_sharpness(model, m.x_train, m.y_train, loss=loss, probes=probes or V1_PROBES,
                                                seed=0)
        accuracy = dict(probes=probes) if probes else dict(rtol=ADAPTIVE_RTOL, max_probes=ADAPTIVE_MAX_PROBES)
        with _cap_reached_is_recorded():
            est = sharpness.adaptive_sharpness_estimate(model, m.x_train, m.y_train, loss=loss, seed=0, **accuracy)
        return {"adaptive_sharpness": est.mean, "adaptive_sharpness_stderr": est.stderr}

    def trace_g(model, m):
        tr = sharpness.gauss_newton_block_traces(model, m.x_train, loss=loss)
        total = tr.pop("total")
        return {"trace_g": total, **{f"trace_g_W{l}": tr[name] for l, (name, _) in enumerate(dense_layers(model), 1)}}

    def local(model, m):
        r = geometry.local_measures(model, m.x_train)
        return {"mean_log_lvr": float(np.mean(r["log_lvr"])), "median_log_lvr": float(np.median(r["log_lvr"])),
                "mean_mls": float(np.mean(r["mls"])), "mean_local_dim": float(np.mean(r["local_dim"]))}

    def hidden_local(model, m):
        out = {}
        for l in range(1, len(dense_layers(model))):       # h_1 .. h_{L-1}: every hidden representation
            r = geometry.local_measures(model, m.x_train, "input", l)
            out.update({f"mean_local_dim_h{l}": float(np.mean(r["local_dim"])),
                        f"mean_mls_h{l}": float(np.mean(r["mls"])), f"mean_log_lvr_h{l}": float(np.mean(r["log_lvr"]))})
        return out

    def bound_measure(model, m):
        t = bounds.bound_table(model, m.x_train, m.y_train, first_layer=first_layer_is_dense(model),
                               identity_check=False)
        slacks = t.groupby("name").slack.min()
        single = t[t.groupby("name").name.transform("size") == 1]   # B1-B7: one row each (B8: one per layer)
        sides = {f"{side}_{k.replace(' ', '_')}": float(v) for _, row in single.iterrows()
                 for side, k, v in (("lhs", row["name"], row.lhs), ("rhs", row["name"], row.rhs))}
        return {"bounds_hold": float(t.holds.all()), **{f"slack_{k.replace(' ', '_')}": float(v)
                                                        for k, v in slacks.items()}, **sides}

    fns: dict[str, MeasureFn] = {
        "bounds": bound_measure,
        "lambda_max": lam("x_train", "y_train"),
        "test_lambda_max": lam("x_test", "y_test"),
        "trace_h": trace("x_train", "y_train", "trace_h"),
        "test_trace_h": trace("x_test", "y_test", "test_trace_h"),
        "trace_g": trace_g,
        "trace_jtj": lambda model, m: sharpness.gauss_newton_trace(model, m.x_train),
        "relative_flatness": lambda model, m: sharpness.relative_flatness(model, m.x_train, m.y_train,
                                                                          layer=last_layer(model), loss=loss),
        "adaptive_sharpness": adaptive,
        "local": local,
        "hidden_local": hidden_local,
        "nmls": lambda model, m: bounds.nmls(model, m.x_train),
        "global_pr": lambda model, m: geometry.participation_ratio(
            geometry.representations(model, m.x_train, last_layer(model) - 1)),
    }
    return fns[name]


def resolve_measures(measures: Sequence[str] | Mapping[str, MeasureFn] | None, loss: str = "mse",
                     probes: int | None = None, version: int = MEASURE_VERSION) -> dict[str, MeasureFn]:
    """``measures`` as ``{name: fn(model, measure_data) -> float | {column: float}}``. Names from ``MEASURES``
    map to the colleagues' functions with the estimator settings of ``version`` (:func:`measure_descriptions`;
    ``probes=m`` fixes the probe count of the stochastic ones instead of their accuracy); ``"default"`` expands to
    ``DEFAULT_MEASURES``; a dict may mix names (value ``None``) and callables."""
    version = check_measure_version(version)
    if probes is not None:
        check_count(probes, "probes")
    if measures is None:
        return {}
    if isinstance(measures, str):
        measures = [measures]
    items = measures.items() if isinstance(measures, Mapping) else [(m, None) for m in measures]
    out: dict[str, MeasureFn] = {}
    for name, fn in items:
        if fn is None and name == "default":
            out.update({n: _named_measure(n, loss, probes, version) for n in DEFAULT_MEASURES})
        elif fn is None:
            if name not in MEASURES:
                raise ValueError(f"measures: unknown measure {name!r}; use one of {sorted(MEASURES)}, 'default', "
                                 "or pass {name: callable(model, data)} for your own")
            out[name] = _named_measure(name, loss, probes, version)
        elif callable(fn):
            out[name] = fn
        else:
            raise ValueError(f"measures: the value for {name!r} must be a callable(model, data) or None, got {fn!r}")
    return out


def measure_row(model: nn.Module, fns: dict[str, MeasureFn], mdata: Dataset, errors: dict[str, str]) -> dict:
    """Evaluate every measure in eval mode; a measure that raises ValueError gives NaN (message kept in ``errors``).

    This includes :class:`~flatcomp_tutorial.checks.NotFiniteError` (a ``ValueError``): when the outputs, loss or
    curvature products overflow at a checkpoint, the measure is NaN there, the reason is recorded, and training
    goes on."""
    was_training = model.training
    model.eval()
    row: dict[str, float] = {}
    try:
        for name, fn in fns.items():
            try:
                val = fn(model, mdata)
            except ValueError as err:
                errors.setdefault(name, str(err))
                row[name] = float("nan")
                continue
            if isinstance(val, Mapping):
                prefix = "" if name in MEASURES else f"{name}_"
                row.update({f"{prefix}{k}" if prefix and not str(k).startswith(prefix) else str(k): float(v)
                            for k, v in val.items()})
            else:
                row[name] = float(val)
    finally:
        model.train(was_training)
    return row
