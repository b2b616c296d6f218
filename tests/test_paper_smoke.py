"""The ``scale = "paper"`` branch of every chapter runs from its first cell to its last (issue 13), at smoke size.

Each chapter with a ``scale`` parameter is executed whole, in a fresh kernel, with papermill: ``scale="paper"`` and
``device="cpu"`` plus the smoke overrides of :data:`SMOKE` (ordinary parameters of the chapter: few epochs and steps,
one seed, small widths, few probes and resamples) are injected exactly as ``papermill -p`` would inject them, so the
paper branch runs with the same calls as on a GPU, only smaller. FashionMNIST and CIFAR-10 are small files
fabricated in their real formats (IDX gz, python pickle tarball; helpers of ``test_data.py``) in a temporary
``FLATCOMP_DATA``; a first cell added to the executed copy points the kernel's download registry at them with their
true sha256 (the kernel's counterpart of ``test_data._register``), so nothing is downloaded. Result stores go to that
temporary folder too; the repository's data, stores and chapters must be left untouched (checked).

``FLATCOMP_CLAIMS=warn``: the chapters' claims describe the CPU runs and need not hold at smoke size; a test
passes when every cell executes. A last cell added to the copy evaluates :attr:`Smoke.probe`, which must equal
:attr:`Smoke.expect`: proof that the paper branch was taken (its data set, architectures or values), so a run that
silently took the CPU branch fails.

Marked ``paper_smoke`` and deselected by default (several minutes on 2 cores): ``make smoke`` runs them, and
``make test`` runs ``make smoke`` after the unit tests and the chapters.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
import pytest

from flatcomp_tutorial.batch import notebook_parameters
from flatcomp_tutorial.presets import PRESETS
from test_data import cifar10_tarball, fashion_files, write_files
from test_scale_switch import SCALED, run_setup

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
TIMEOUT = 600  # seconds per cell: generous; a chapter takes well under a minute at smoke size


@dataclass(frozen=True)
class Smoke:
    """A chapter's smoke run: ``params`` injected on top of ``scale="paper"``, ``device="cpu"``; ``probe``, a Python
    expression evaluated in the kernel after the last cell, must equal ``expect``."""
    params: dict = field(default_factory=dict)
    probe: str = "data.name"
    expect: object = "fashion_mnist"
    skip: str | None = None


# Lists, not tuples: papermill writes a tuple parameter as its string. A loss threshold of 1.0 starts the late phase
# (or ends a matched-loss run) at the first check, so the code after it runs within a few steps. cnn_lr=0.02: at the
# chapter's 0.2 the CNN diverges on the random images, and the chapter needs a late phase to tabulate.
SMOKE = {
    "first_network": Smoke(dict(width=16, epochs=2)),
    "compression": Smoke(dict(width=16, epochs=2, measure_n=16, ball_inputs=2, ball_samples=[100, 1000])),
    "bounds": Smoke(dict(width=16, epochs=2, n_measure=16),
                    probe="[d.name for d in tasks.values()]", expect=["fashion_mnist", "fashion_mnist"]),
    "sharpness": Smoke(dict(width=16, epochs=2, measure_n=16, probes=4)),
    "network_bounds": Smoke(dict(width=16, epochs=2, small_width=8, lrs=[0.1], seeds=[0], n_measure=16,
                                 n_identity=8),
                            probe="(data.name, data2.name, kappa_method)",
                            expect=("fashion_mnist", "fashion_mnist", "hutchinson")),
    "sgd_dynamics": Smoke(dict(width=16, gd_lrs=[0.01, 0.02], gd_steps=20, gd_track_every=10, sgd_lrs=[0.1],
                               sgd_batch_sizes=[16, 32], max_epochs=2),
                          probe="(data.name, activation, str(dtype))",
                          expect=("fashion_mnist", "relu", "torch.float32")),
    "local_dim": Smoke(dict(width=16, late_threshold=1.0, late_steps=40, late_every=20, grid_lrs=[0.05, 0.1],
                            grid_batch_sizes=[16, 32], n_boot=20),
                       probe="(data.name, activation, sorted(set(results.dataset)))",
                       expect=("fashion_mnist", "relu", ["fashion_mnist2"])),
    "late_phase": Smoke(dict(width=16, threshold=1.0, cnn_lr=0.02, cnn_threshold=1.0, late_steps=20,
                             long_late_steps=40, control_late_steps=20, measure_n=16, probes=4, n_boot=20)),
    "paper_scale": Smoke(dict(hvp_n=16), probe="scale", expect="paper"),
    "sweep": Smoke(dict(n_boot=20, grid={"lr": [0.02, 0.05], "batch_size": [8, 16], "seed": [0]},
                        architectures={"mlp": {"width": 16}, "vgg11": {"cfg": [4, "M", 4, "M", 4, "M", 4, "M"]},
                                       "vit": {"patch": 8, "dim": 8, "depth": 1, "heads": 2}},
                        train_options={"epochs": 2, "measure_n": 8, "probes": 2, "late_phase_threshold": 1.0}),
                   probe="(sorted(set(results.dataset)), sorted(set(arch.arch)), sorted(set(arch.dataset)), "
                         "len(arch) - arch.key.nunique())",
                   expect=(["fashion_mnist2"], ["mlp", "vgg11", "vit"], ["cifar10_2", "fashion_mnist2"], 0)),
    "beyond": Smoke(dict(seeds=[0], width=16, epochs=2, threshold=1.0, late_steps=24, eps_max=2.0, n_boot=20,
                         sweep_grid={"lr": [0.05, 0.1], "batch_size": [16], "seed": [0]},
                         sweep_train_options={"epochs": 2, "measure_n": 8, "probes": 2,
                                              "late_phase_threshold": 1.0}),
                    probe="(data.name, sorted(set(sweep.dataset)), len(runs))",
                    expect=("fashion_mnist", ["fashion_mnist2"], 6)),
}


def test_every_chapter_with_a_scale_parameter_has_a_smoke_entry():
    assert {p.stem for p in SCALED} == set(SMOKE)


@pytest.mark.parametrize("stem", sorted(SMOKE))
def test_smoke_overrides_are_parameters_of_the_chapter(stem):
    """papermill would inject an unknown name without complaint, and the chapter would run at full size."""
    unknown = set(SMOKE[stem].params) - set(notebook_parameters(BOOK / f"{stem}.ipynb"))
    assert not unknown, f"{stem}: not in its parameters cell: {sorted(unknown)}"


@pytest.mark.parametrize("override, match", [
    (dict(grid={"lrs": [0.1]}), r"grid may replace the lists lr, batch_size and seed, got \['lrs'\]"),
    (dict(architectures={"vgg11": {}}), r"architectures must be among \['lenet', 'mlp', 'vit'\] at scale 'cpu'"),
])
def test_the_sweep_refuses_a_preset_override_naming_what_it_cannot_set(override, match):
    with pytest.raises(ValueError, match=match):
        run_setup(BOOK / "sweep.ipynb", "cpu", **override)


def test_the_sweep_overrides_change_only_what_they_name():
    spec = run_setup(BOOK / "sweep.ipynb", "cpu", grid={"seed": [0]}, architectures={"mlp": {"width": 16}},
                     train_options={"epochs": 3})["spec"]
    assert spec["grid"] == {**PRESETS["cpu"]["grid"], "seed": [0]}
    assert spec["architectures"]["mlp"]["width"] == 16 and spec["architectures"]["mlp"]["depth"] == 2
    assert spec["train"]["epochs"] == 3 and "test_trace_h" in spec["train"]["measures"]


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """FashionMNIST (200 training / 60 test images) and CIFAR-10 (five training batches of 20 images, a test batch
    of 20) in their real formats, random pixels, labels cycling through the 10 classes (a 2-class task: 40 / 12
    FashionMNIST and 20 / 4 CIFAR-10 images): ``(root, {file under root: sha256})``."""
    root = tmp_path_factory.mktemp("fabricated")
    rng = np.random.default_rng(0)
    files = fashion_files(rng.integers(0, 256, (200, 28, 28)), np.arange(200) % 10,
                          rng.integers(0, 256, (60, 28, 28)), np.arange(60) % 10)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files["cifar10/cifar-10-python.tar.gz"] = cifar10_tarball(
        {name: (rng.integers(0, 256, (20, 3072)), np.arange(20) % 10) for name in names})
    return root, write_files(root, files)


def _snapshot() -> dict[str, tuple[int, int]]:
    """Size and modification time of every file a chapter could write in the repository: data, shipped result
    stores, the chapters themselves."""
    paths = [*(ROOT / "data").rglob("*"), *(ROOT / "flatcomp_tutorial" / "results").rglob("*"),
             *BOOK.glob("*.ipynb")]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()}


def _prepared(stem: str, hashes: dict[str, str], probe: str):
    """The chapter with a first cell pointing the registry at the fabricated files and a last cell printing
    ``repr(probe)``."""
    nb = nbformat.read(BOOK / f"{stem}.ipynb", as_version=4)
    first = nbformat.v4.new_code_cell(
        "from pathlib import Path as _Path\n"
        "from flatcomp_tutorial import data as _D\n"
        f"assert _Path(_D.__file__).resolve().parents[1] == _Path({str(ROOT)!r}), _D.__file__\n"
        f"_D.REGISTRY.update({{rel: _D.RegistryEntry(rel, sha, 'http://127.0.0.1:9/' + rel)\n"
        f"                    for rel, sha in {hashes!r}.items()}})")
    last = nbformat.v4.new_code_cell(f"print(repr({probe}))")
    nb.cells = [first, *nb.cells, last]
    return nb


@pytest.mark.paper_smoke
@pytest.mark.parametrize("stem", [pytest.param(s, marks=pytest.mark.skip(reason=SMOKE[s].skip)) if SMOKE[s].skip
                                  else s for s in sorted(SMOKE)])
def test_paper_branch_runs_every_cell_at_smoke_size(stem, fabricated, tmp_path, monkeypatch):
    import papermill as pm

    smoke = SMOKE[stem]
    root, hashes = fabricated
    data = tmp_path / "data"
    data.mkdir()
    for folder in ("fashion_mnist", "cifar10"):
        (data / folder).symlink_to(root / folder)
    for name, value in {"FLATCOMP_DATA": data, "XDG_CACHE_HOME": tmp_path / "cache", "FLATCOMP_CLAIMS": "warn",
                        "FLATCOMP_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
                        }.items():
        monkeypatch.setenv(name, str(value))
    source, executed = tmp_path / f"{stem}.ipynb", tmp_path / f"{stem}.out.ipynb"
    nbformat.write(_prepared(stem, hashes, smoke.probe), source)
    before = _snapshot()
    pm.execute_notebook(str(source), str(executed), parameters=dict(scale="paper", device="cpu", **smoke.params),
                        kernel_name="python3", progress_bar=False, execution_timeout=TIMEOUT,
                        resources={"metadata": {"path": str(BOOK)}})
    assert _snapshot() == before, "the chapter wrote into the repository"
    out = nbformat.read(executed, as_version=4).cells[-1].outputs
    text = "".join(o.get("text", "") for o in out if o.get("name") == "stdout").strip()
    assert ast.literal_eval(text) == smoke.expect, f"{smoke.probe} = {text}: not the paper branch"
