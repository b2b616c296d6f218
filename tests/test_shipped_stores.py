"""The result stores the chapters read ship inside the package, so an installed package (Colab) finds the book's runs
instead of retraining them (chapter "Running at paper scale")."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flatcomp_tutorial as fc

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("cpu_sweep.jsonl", "cpu_arch.jsonl", "cpu_late_phase.jsonl", "cpu_generalisation.jsonl",
           "cpu_beyond.jsonl", "paper_costs.jsonl")


def keys(path):
    return [r["key"] for r in fc.store.read_store(path)[0]]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_store_a_chapter_reads_is_shipped_with_the_package(name):
    shipped = fc.store.shipped_store(name)
    assert shipped is not None and shipped.parent == Path(fc.__file__).resolve().parent / "results"
    assert len(keys(shipped)) > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_in_a_checkout_data_results_is_the_shipped_store_itself(name):
    local = REPO / "data" / "results" / name
    assert local.resolve() == fc.store.shipped_store(name).resolve()


def test_results_store_copies_the_shipped_records_into_an_empty_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATCOMP_DATA", str(tmp_path))
    path = fc.store.results_store("cpu_sweep.jsonl")
    assert path == tmp_path / "results" / "cpu_sweep.jsonl"
    assert keys(path) == keys(fc.store.shipped_store("cpu_sweep.jsonl"))
    assert fc.load_results(path).equals(fc.load_results(fc.store.shipped_store("cpu_sweep.jsonl")))


def test_results_store_appends_nothing_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATCOMP_DATA", str(tmp_path))
    first = fc.store.results_store("cpu_arch.jsonl").read_bytes()
    assert fc.store.results_store("cpu_arch.jsonl").read_bytes() == first


def test_results_store_keeps_local_runs_and_adds_only_the_missing_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATCOMP_DATA", str(tmp_path))
    shipped = fc.store.read_store(fc.store.shipped_store("cpu_arch.jsonl"))[0]
    local = tmp_path / "results" / "cpu_arch.jsonl"
    fc.store.append_record(local, shipped[0])
    fc.store.record(local, {"my": "run"}, {"train_loss": 0.5}, key="my-own-run")
    fc.store.results_store("cpu_arch.jsonl")
    got = keys(local)
    assert got[:2] == [shipped[0]["key"], "my-own-run"]
    assert sorted(got[2:]) == sorted(r["key"] for r in shipped[1:])


def test_results_store_of_a_name_the_package_does_not_ship_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATCOMP_DATA", str(tmp_path))
    path = fc.store.results_store("paper_sweep.jsonl")
    assert path == tmp_path / "results" / "paper_sweep.jsonl" and not path.exists()


@pytest.mark.parametrize("name", ["../cpu_sweep.jsonl", "results/cpu_sweep.jsonl", "cpu_sweep.json", ".jsonl", 3])
def test_results_store_refuses_a_name_that_is_not_a_store_file_name(name):
    with pytest.raises(ValueError, match="name must be a store file name"):
        fc.store.results_store(name)


def test_results_store_names_flatcomp_data_when_the_data_root_is_not_writable(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FLATCOMP_DATA", str(blocker))
    with pytest.raises(OSError, match="FLATCOMP_DATA"):
        fc.store.results_store("cpu_arch.jsonl")


def test_the_built_wheel_contains_every_module_and_the_shipped_stores(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO / "flatcomp_tutorial", src / "flatcomp_tutorial",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"flatcomp_tutorial/results/{n}" for n in SHIPPED} <= names
    package = REPO / "flatcomp_tutorial"
    modules = {p.relative_to(REPO).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the installed package (pyproject [tool.setuptools])"
