"""Sweep presets: the settings the book runs (a CPU-sized one and the paper's), grids of configurations, and the
full configuration of one run (chapter "Reproducing the paper").

A *preset* is a dict of sections: ``datasets`` and ``architectures`` (named options of
:func:`~flatcomp_tutorial.data.load_dataset` and :func:`~flatcomp_tutorial.models.make_model`), ``train``
(defaults of :func:`~flatcomp_tutorial.training.train`) and ``grid`` (the configurations a sweep runs). A grid
point overrides any of them; :func:`resolve_config` turns it into the configuration a run is keyed by
(:func:`~flatcomp_tutorial.store.config_key`).
"""
from __future__ import annotations

import copy
import itertools
from typing import Any, Mapping, Sequence

from .measures import MEASURE_VERSION, SWEEP_MEASURES

__all__ = ["PRESETS", "preset", "preset_spec", "SWEEP_EXTRA", "sweep_spec", "grid_configs", "resolve_config",
           "LATE_PHASE_ARMS", "LATE_PHASE_SEEDS", "late_phase_spec", "late_phase_grid", "late_phase_arm",
           "GENERALISATION_GRID", "GENERALISATION_THRESHOLD", "generalisation_spec", "generalisation_grid",
           "BEYOND_METHODS", "BEYOND_MEASURES", "beyond_spec", "beyond_grid", "beyond_method"]

_SWEEP_MEASURES = list(SWEEP_MEASURES)

PRESETS: dict[str, dict] = {
    "cpu": {
        "description": "digits 3 vs 8 (285 train / 72 test images, 1x8x8, standardised); MSE; plain SGD; every run "
                       "trained until the full training loss < 1e-3 (matched loss; at most 400 epochs); what the "
                       "book and CI run.",
        "datasets": {"digits": dict(name="digits", classes=[3, 8])},
        "architectures": {
            "mlp": dict(kind="mlp", width=64, depth=2, activation="tanh", dataset="digits"),
            "lenet": dict(kind="lenet", channels=[6, 16], width=64, activation="tanh", dataset="digits"),
            "vit": dict(kind="vit", patch=4, dim=32, depth=2, heads=4, dataset="digits"),
        },
        "train": dict(epochs=400, loss="mse", optimizer="sgd", late_phase_steps=0, late_phase_threshold=1e-3,
                      track_every_epochs=20, measures=_SWEEP_MEASURES, measure_n=256, measure_version=2),
        "grid": dict(arch=["mlp"], lr=[0.05, 0.1, 0.15, 0.2], batch_size=[4, 8, 16], seed=[0, 1]),
    },
    "paper": {
        "description": "this book's proposal for the paper's setting (its hyper-parameters were not available): "
                       "2-class FashionMNIST (T-shirt vs trouser) with an MLP 784-512-512-2, 2-class CIFAR-10 "
                       "(airplane vs automobile) with VGG-11 without BatchNorm and a small ViT; MSE; "
                       "SGD without momentum or weight decay; lr {0.01, 0.02, 0.05, 0.1} x B {16, 32, 64, 128, 256}; "
                       "trained until the training loss < 1e-3 (at most 200 epochs). GPU-sized.",
        "datasets": {"fashion_mnist2": dict(name="fashion_mnist", classes=[0, 1]),
                     "cifar10_2": dict(name="cifar10", classes=[0, 1])},
        "architectures": {
            "mlp": dict(kind="mlp", width=512, depth=2, activation="relu", dataset="fashion_mnist2"),
            "vgg11": dict(kind="vgg", cfg="vgg11", hidden=[], activation="relu", dataset="cifar10_2"),
            "vit": dict(kind="vit", patch=4, dim=64, depth=4, heads=4, mlp_ratio=2, dataset="cifar10_2"),
        },
        "train": dict(epochs=200, loss="mse", optimizer="sgd", momentum=0.0, weight_decay=0.0, late_phase_steps=0,
                      late_phase_threshold=1e-3, track_every_epochs=10, measures=_SWEEP_MEASURES, measure_n=256,
                      measure_version=2),
        "grid": dict(arch=["mlp", "vgg11", "vit"], lr=[0.01, 0.02, 0.05, 0.1], batch_size=[16, 32, 64, 128, 256],
                     seed=[0, 1]),
    },
}


def preset(name: str, **overrides: Mapping) -> dict:
    """A deep copy of ``PRESETS[name]`` with sections updated by ``overrides``, e.g.
    ``preset("paper", datasets={"fashion_mnist2": {"n_train": 20}}, train={"epochs": 1})`` (nested dicts are
    merged one level deep; ``grid`` is replaced)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    p = copy.deepcopy(PRESETS[name])
    p["name"] = name
    for section, value in overrides.items():
        if section not in p:
            raise ValueError(f"preset override {section!r} is not a section; use one of {sorted(p)}")
        if section in ("datasets", "architectures"):
            for k, v in value.items():
                p[section][k] = {**p[section].get(k, {}), **v}
        elif section == "train":
            p[section].update(value)
        else:
            p[section] = copy.deepcopy(value)
    return p


#: What the chapters' sweeps measure on top of a preset's measures: the bounds (slacks and both sides) and the
#: test-set sharpness.
SWEEP_EXTRA = ["bounds", "test_lambda_max", "test_trace_h"]


def sweep_spec(scale: str = "cpu", grid: Mapping[str, Sequence] | None = None,
               architectures: Mapping[str, Mapping] | None = None, train: Mapping[str, Any] | None = None) -> dict:
    """The preset ``scale`` with :data:`SWEEP_EXTRA` added to its measures: the sweep of chapter "Reproduction II"
    (and of ``make sweep``, which rebuilds its store ``cpu_sweep.jsonl``). ``grid`` replaces some of the preset
    grid's lists (``lr``, ``batch_size``, ``seed``), ``architectures`` updates architectures' options and ``train``
    the training options, e.g. for a smaller run; None keeps the preset's."""
    if scale not in PRESETS:
        raise ValueError(f"scale must be one of {sorted(PRESETS)}, got {scale!r}")
    base = PRESETS[scale]
    if not set(grid or {}) <= {"lr", "batch_size", "seed"}:
        raise ValueError(f"grid may replace the lists lr, batch_size and seed, got {sorted(grid)}")
    if not set(architectures or {}) <= set(base["architectures"]):
        raise ValueError(f"architectures must be among {sorted(base['architectures'])} at scale {scale!r}, "
                         f"got {sorted(architectures)}")
    return preset(scale, architectures=dict(architectures or {}), grid={**base["grid"], **(grid or {})},
                  train={"measures": base["train"]["measures"] + SWEEP_EXTRA, **(train or {})})


def grid_configs(grid: Mapping[str, Sequence] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """Grid points: a dict of lists is expanded to its Cartesian product (in key order), a list of dicts is taken
    as is. Keys: ``arch``, ``dataset``, any :func:`~flatcomp_tutorial.training.train` argument (``lr``,
    ``batch_size``, ``seed``, ``label_noise``, ...), ``model.<option>`` and ``data.<option>``."""
    if isinstance(grid, Mapping):
        for k, v in grid.items():
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise ValueError(f"grid[{k!r}] must be a list of values, got {v!r}")
        keys = list(grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    points = [dict(p) for p in grid]
    if not all(isinstance(p, dict) for p in points):
        raise ValueError("grid must be a dict of lists or a list of dicts")
    return points


def resolve_config(point: Mapping[str, Any], spec: Mapping) -> dict:
    """The full configuration of one run: ``{"preset", "arch", "dataset", "model", "data", "train"}``."""
    point = dict(point)
    arch = point.pop("arch", None) or next(iter(spec["architectures"]))
    if arch not in spec["architectures"]:
        raise ValueError(f"arch must be one of {sorted(spec['architectures'])} for preset {spec.get('name')!r}, "
                         f"got {arch!r}")
    model = dict(spec["architectures"][arch])
    dataset = point.pop("dataset", None) or model.pop("dataset", None) or next(iter(spec["datasets"]))
    model.pop("dataset", None)
    if dataset not in spec["datasets"]:
        raise ValueError(f"dataset must be one of {sorted(spec['datasets'])} for preset {spec.get('name')!r}, "
                         f"got {dataset!r}")
    data = dict(spec["datasets"][dataset])
    train = dict(spec["train"])
    for k, v in point.items():
        if k.startswith("model."):
            model[k[6:]] = v
        elif k.startswith("data."):
            data[k[5:]] = v
        else:
            train[k] = v
    for required in ("lr", "batch_size"):
        if required not in train:
            raise ValueError(f"configuration {dict(point)} has no {required!r}; put it in the grid")
    train.setdefault("seed", 0)
    # in the key, so that a store's runs with other estimator settings (version 1 had none) are never reused
    train.setdefault("measure_version", MEASURE_VERSION)
    config = {"preset": spec.get("name", "custom"), "arch": arch, "dataset": dataset, "model": model, "data": data,
              "train": train}
    if spec.get("robustness"):   # attacks after training (sweeps.run_config); only then part of the key
        config["robustness"] = dict(spec["robustness"])
    return config


def preset_spec(p: str | Mapping) -> dict:
    """A preset by name, or an already-built preset dict (from :func:`preset`)."""
    if isinstance(p, str):
        return preset(p)
    spec = dict(p)
    spec.setdefault("name", "custom")
    for section in ("datasets", "architectures", "train"):
        if section not in spec:
            raise ValueError(f"preset dict is missing the {section!r} section; build it with preset(name, ...)")
    spec.setdefault("grid", {})
    return spec


#: The arms of the multi-seed late-phase study (chapter "Reproduction I: the late phase", section "Across seeds"):
#: each a grid point without its seed. All use the tanh MLP 64x3 of that chapter, MSE, float32, batch size 16 unless
#: stated, and train K = ``late_phase_steps`` SGD steps after the full training loss first falls below
#: ``late_phase_threshold`` (checkpoints every K/10 steps).
LATE_PHASE_ARMS: dict[str, dict] = {
    "label noise": dict(dataset="digits", lr=0.1, batch_size=16, label_noise=0.2),
    "plain SGD": dict(dataset="digits", lr=0.1, batch_size=16),
    "SAM": dict(dataset="digits", lr=0.1, batch_size=16, sam_rho=0.05),
    "large eta/B": dict(dataset="digits", lr=0.2, batch_size=4),
    # 64 samples: the MLP interpolates them (loss < 1e-6 after about 20 000 steps, and still falling)
    "teacher-student": {"dataset": "teacher_student", "data.n_train": 64, "lr": 0.2, "batch_size": 16,
                        "late_phase_threshold": 1e-6},
}
LATE_PHASE_SEEDS = (0, 1, 2, 3, 4)


def late_phase_spec(late_steps: int = 4000) -> dict:
    """The ``cpu`` preset set up for the late-phase arms: the MLP 64x3 tanh (``arch="mlp3"``), the datasets
    ``digits`` (3 vs 8) and ``teacher_student`` (8 -> 2, teacher 16 tanh units, 256 samples, no noise: an MLP can
    fit it exactly), K = ``late_steps`` late-phase steps tracked every K/10, loss threshold 1e-3 (unless the arm
    sets it), measures Tr H (Gauss-Newton control variate to a 1 % standard error), exact Tr G, lambda_max and
    the local measures (MLS, log LVR, local dimension) on 128 training inputs (all of them if fewer)."""
    if not (isinstance(late_steps, int) and late_steps >= 10):
        raise ValueError(f"late_steps must be an integer >= 10 (checkpoints every late_steps // 10), "
                         f"got {late_steps!r}")
    return preset(
        "cpu",
        datasets={"teacher_student": dict(name="teacher_student")},
        architectures={"mlp3": dict(kind="mlp", width=64, depth=3, activation="tanh", dataset="digits")},
        train=dict(epochs=None, steps=200_000, late_phase_steps=late_steps, late_phase_threshold=1e-3,
                   late_track_every=late_steps // 10, track_every_epochs=50,
                   measures=["trace_h", "trace_g", "lambda_max", "local"], measure_n=128))


def late_phase_grid(arms: Sequence[str] | None = None, seeds: Sequence[int] = LATE_PHASE_SEEDS) -> list[dict]:
    """Grid points (for :func:`~flatcomp_tutorial.sweeps.sweep` with :func:`late_phase_spec`) of ``arms``
    (names in :data:`LATE_PHASE_ARMS`; default all) x ``seeds``, each with ``arch="mlp3"``."""
    names = list(LATE_PHASE_ARMS) if arms is None else list(arms)
    unknown = [a for a in names if a not in LATE_PHASE_ARMS]
    if unknown:
        raise ValueError(f"arms {unknown} are not late-phase arms; use names from {list(LATE_PHASE_ARMS)}")
    return [{"arch": "mlp3", **LATE_PHASE_ARMS[a], "seed": int(s)} for a in names for s in seeds]


def _unset(v: Any) -> bool:
    """None, NaN (a column another run of the table set) or 0."""
    return v is None or v != v or v == 0


def late_phase_arm(run: Mapping) -> str:
    """The arm (key of :data:`LATE_PHASE_ARMS`) of a run: a row of :func:`~flatcomp_tutorial.store.load_results`
    (train options as columns) or a resolved configuration (:func:`resolve_config`). ValueError if it is none."""
    opts = {**run["train"], "dataset": run.get("dataset")} if isinstance(run.get("train"), Mapping) else dict(run)
    for name, arm in LATE_PHASE_ARMS.items():
        point = {k: v for k, v in arm.items() if not k.startswith("data.")}
        others = [k for k in ("label_noise", "sam_rho") if k not in point]
        if all(opts.get(k) == v for k, v in point.items()) and all(_unset(opts.get(k)) for k in others):
            return name
    raise ValueError(f"run {opts.get('key', '')} (dataset {opts.get('dataset')!r}, lr {opts.get('lr')}, "
                     f"batch_size {opts.get('batch_size')}) is none of the late-phase arms {list(LATE_PHASE_ARMS)}")


#: The learning rates, batch sizes and seeds of the 10-class generalisation store (chapter "Beyond the paper",
#: section "Sharpness, compression and generalisation"). Every point reaches the matched loss
#: :data:`GENERALISATION_THRESHOLD` within the epoch budget of :func:`generalisation_spec` (about 2-12 s per run on
#: one CPU core; the store's 27 runs take about 2.5 minutes).
GENERALISATION_GRID = dict(lr=[0.05, 0.1, 0.2], batch_size=[8, 16, 32], seed=[0, 1, 2])
#: The matched training loss (mean over samples of 1/2 ||f - y||^2) at which the 10-class runs are measured.
GENERALISATION_THRESHOLD = 1e-2


def generalisation_spec(threshold: float = GENERALISATION_THRESHOLD) -> dict:
    """The ``cpu`` preset set up for a task with a real test error: all 10 digit classes (``dataset="digits10"``:
    1437 train / 360 test images, 10 outputs, one-hot MSE targets), the MLP 64x2 tanh (``arch="mlp10"``), plain SGD,
    each run stopped when the full training loss (checked every epoch) first falls below ``threshold``, the matched
    loss (at most 600 epochs; the slowest grid point, lr 0.05 and B 32, needs about 390). Measures: exact Tr G and
    the local measures (MLS, log LVR, local dimension) on 256 training inputs, every 50 epochs and at the matched
    loss. At a loss of 1e-2 the residual term of H = G + R is not negligible, so Tr G is not Tr H."""
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < 1):
        raise ValueError(f"threshold must be a number in (0, 1) (a training loss), got {threshold!r}")
    return preset(
        "cpu",
        datasets={"digits10": dict(name="digits")},
        architectures={"mlp10": dict(kind="mlp", width=64, depth=2, activation="tanh", dataset="digits10")},
        train=dict(epochs=600, late_phase_steps=0, late_phase_threshold=float(threshold), track_every_epochs=50,
                   measures=["trace_g", "local"], measure_n=256))


def generalisation_grid(seeds: Sequence[int] | None = None) -> list[dict]:
    """Grid points (for :func:`~flatcomp_tutorial.sweeps.sweep` with :func:`generalisation_spec`): the learning
    rates x batch sizes x seeds of :data:`GENERALISATION_GRID` (``seeds`` replaces its seeds), each with
    ``arch="mlp10"``."""
    seeds = GENERALISATION_GRID["seed"] if seeds is None else list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    return [{"arch": "mlp10", "lr": lr, "batch_size": b, "seed": int(s)}
            for lr in GENERALISATION_GRID["lr"] for b in GENERALISATION_GRID["batch_size"] for s in seeds]


#: The training methods compared in chapter "Beyond the paper" (section "Flatter by design"): grid points without
#: their seed. Everything else is shared (architecture, initialisations, loss threshold, K late steps).
BEYOND_METHODS: dict[str, dict] = {
    "SGD, small η/B": dict(lr=0.05, batch_size=16),
    "SGD": dict(lr=0.1, batch_size=16),
    "SGD, large η/B": dict(lr=0.2, batch_size=4),
    "label noise": dict(lr=0.1, batch_size=16, label_noise=0.2),
    "SAM": dict(lr=0.1, batch_size=16, sam_rho=0.05),
    "cross-entropy": dict(lr=0.1, batch_size=16, loss="cross_entropy"),
}
#: Measures of those runs: Tr G and Tr H of each run's own loss, the local measures, B1-B8 with both sides, and
#: (1/n) sum ||J_theta||_F^2 (``trace_jtj``, one scale for cross-entropy and MSE runs).
BEYOND_MEASURES = ["trace_g", "trace_h", "local", "bounds", "trace_jtj"]
_BEYOND_DATA = {"digits": dict(name="digits", classes=[3, 8]),
                "fashion_mnist": dict(name="fashion_mnist", classes=[0, 1])}


def beyond_spec(dataset: str = "digits", width: int = 64, depth: int = 2, epochs: int = 400,
                threshold: float = 1e-3, late_steps: int = 3000, eps: float = 1.0, eps_max: float = 16.0) -> dict:
    """The runs of chapter "Beyond the paper" as a sweep preset (named ``"beyond"``): ``dataset`` ``"digits"``
    (3 vs 8) or ``"fashion_mnist"`` (T-shirt vs trouser), in float64 (thousands of noisy steps agree across CPUs
    to round-off); the tanh MLP ``width`` x ``depth`` (``arch="mlp"``); at most ``epochs`` epochs to reach the
    training loss ``threshold``, then K = ``late_steps`` more SGD steps tracked every K/6; :data:`BEYOND_MEASURES`
    on all training inputs; after training, :func:`~flatcomp_tutorial.robustness.robustness_measures` on the test
    inputs at radius ``eps`` (searching up to ``eps_max``). Grid: :func:`beyond_grid`."""
    if dataset not in _BEYOND_DATA:
        raise ValueError(f"dataset must be one of {sorted(_BEYOND_DATA)}, got {dataset!r}")
    if not (isinstance(late_steps, int) and not isinstance(late_steps, bool) and late_steps >= 6):
        raise ValueError(f"late_steps must be an integer >= 6 (checkpoints every late_steps // 6), got {late_steps!r}")
    spec = preset(
        "cpu",
        datasets={dataset: {**_BEYOND_DATA[dataset], "dtype": "float64"}},
        architectures={"mlp": dict(kind="mlp", width=width, depth=depth, activation="tanh", dataset=dataset,
                                   dtype="float64")},
        train=dict(epochs=epochs, late_phase_steps=late_steps, late_phase_threshold=threshold,
                   late_track_every=late_steps // 6, track_every_epochs=None, measures=list(BEYOND_MEASURES),
                   measure_n=None),
        grid={})
    spec["datasets"] = {dataset: spec["datasets"][dataset]}
    spec["name"], spec["robustness"] = "beyond", dict(eps=eps, eps_max=eps_max)
    return spec


def beyond_grid(seeds: Sequence[int] = (0, 1, 2), methods: Sequence[str] | None = None) -> list[dict]:
    """Grid points (for :func:`~flatcomp_tutorial.sweeps.sweep` with :func:`beyond_spec`): every method of
    :data:`BEYOND_METHODS` (or those named in ``methods``) x ``seeds``, each with ``arch="mlp"``."""
    names = list(BEYOND_METHODS) if methods is None else list(methods)
    unknown = [m for m in names if m not in BEYOND_METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not methods of the chapter; use names from {list(BEYOND_METHODS)}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    return [{"arch": "mlp", **BEYOND_METHODS[m], "seed": int(s)} for m in names for s in seeds]


def beyond_method(run: Mapping) -> str:
    """The method (key of :data:`BEYOND_METHODS`) of a row of :func:`~flatcomp_tutorial.store.load_results`."""
    for name, point in BEYOND_METHODS.items():
        others = {"label_noise", "sam_rho", "loss"} - set(point)
        if all(run.get(k) == v for k, v in point.items()) and all(
                _unset(run.get(k)) or (k == "loss" and run.get(k) == "mse") for k in others):
            return name
    raise ValueError(f"the run {dict(run)} is none of the methods {list(BEYOND_METHODS)}")
