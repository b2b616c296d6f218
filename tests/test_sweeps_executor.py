"""Specification of ``sweep(..., executor=...)``: the runs of a grid trained on the workers of a
``concurrent.futures``-style executor (a process pool, a thread pool, a dask cluster) give the records of the
sequential sweep; this process alone writes the store, each run as its result arrives, so a sweep stopped part-way
resumes with only the rest; a run that fails on a worker is recorded, warned about and listed; anything that is
not an executor is refused before any run."""
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from flatcomp_tutorial import sweeps
from flatcomp_tutorial.presets import preset
from flatcomp_tutorial.store import read_store
from flatcomp_tutorial.sweeps import sweep

TINY = dict(architectures={"mlp": {"width": 8, "depth": 1}}, datasets={"digits": {"n_train": 40, "n_test": 20}},
            train={"epochs": None, "steps": 10, "track_every_epochs": None, "track_every": 5,
                   "late_phase_steps": None, "measures": ["trace_g", "local"], "measure_n": 16})
GRID = {"lr": [0.1, 0.2, 0.3], "batch_size": [8], "seed": [0]}


def tiny_spec():
    """40 training images, a 64-8-2 MLP, 10 SGD steps with Tr G and the local measures every 5: a run takes
    well under a second."""
    return preset("cpu", **TINY)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The store of the sequential sweep of GRID: the reference every executor sweep is compared with."""
    store = tmp_path_factory.mktemp("sequential") / "s.jsonl"
    res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1)
    assert len(res.ran) == 3
    return store


def _runs(store):
    """The finished runs of ``store`` by key, without what differs between two trainings of the same configuration
    (wall times, provenance: host, time, ...)."""
    runs = {}
    for rec in read_store(store)[0]:
        rec = {k: v for k, v in rec.items() if k not in ("wall_time", "provenance")}
        rec["train_info"] = {k: v for k, v in rec["train_info"].items() if k != "measure_time"}
        runs[rec["key"]] = rec
    return runs


def assert_close(got, want):
    """Two rows (dicts) equal: floats within round-off (relative 1e-6), everything else exactly."""
    assert set(got) == set(want)
    for name, w in want.items():
        if isinstance(w, float):
            assert got[name] == pytest.approx(w, rel=1e-6, abs=1e-12, nan_ok=True), name
        else:
            assert got[name] == w, name


def assert_same_runs(store, reference):
    """``store`` holds the runs of ``reference``, with the same records (numbers within round-off)."""
    got, want = _runs(store), _runs(reference)
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        numbers = ("final", "matched", "history")
        assert {k: v for k, v in g.items() if k not in numbers} == {k: v for k, v in w.items() if k not in numbers}
        assert_close(g["final"], w["final"])
        assert (g["matched"] is None) == (w["matched"] is None)
        if w["matched"] is not None:
            assert_close(g["matched"], w["matched"])
        assert len(g["history"]) == len(w["history"])
        for g_row, w_row in zip(g["history"], w["history"]):
            assert_close(g_row, w_row)


class Deferred:
    """A future of a hand-written executor: ``result()`` only (and ``done()`` when ``pollable``)."""

    def __init__(self, fn, args, pollable):
        self._call, self._value = (fn, args), None
        if pollable:
            self.done = lambda: True

    def result(self):
        if self._call is not None:
            fn, args = self._call
            self._value, self._call = fn(*args), None
        return self._value


class HandWritten:
    """The smallest executor ``sweep`` accepts: ``submit(fn, *args)`` returning an object with ``result()``."""

    def __init__(self, pollable):
        self.pollable = pollable

    def submit(self, fn, *args):
        return Deferred(fn, args, self.pollable)


class CountingPool(ThreadPoolExecutor):
    """A thread pool that lists the learning rate of every configuration submitted to it."""

    def __init__(self, max_workers=2):
        super().__init__(max_workers=max_workers)
        self.submitted = []

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(args[0]["train"]["lr"])
        return super().submit(fn, *args, **kwargs)


@pytest.mark.integration
def test_a_process_pool_sweep_stores_the_records_of_the_sequential_sweep(tmp_path, sequential):
    """Spawned worker processes: fresh interpreters that import the package, as on another machine."""
    store = tmp_path / "p.jsonl"
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
    assert sorted(res.ran) == sorted(_runs(sequential)) and res.skipped == [] and res.failures == []
    assert_same_runs(store, sequential)
    assert all(r["provenance"]["threads"] == 1 for r in read_store(store)[0])  # set on the worker


def test_an_executor_sweep_submits_only_the_runs_not_in_the_store(tmp_path, sequential):
    store = tmp_path / "r.jsonl"
    first = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, max_runs=1)
    with CountingPool() as pool:
        res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
    assert pool.submitted == [0.2, 0.3]
    assert res.skipped == first.ran and len(res.ran) == 2 and set(res.ran).isdisjoint(first.ran)
    assert_same_runs(store, sequential)


def test_max_runs_caps_the_runs_submitted_and_a_stopped_sweep_resumes_with_only_the_rest(tmp_path, sequential):
    """The driver stopped (killed) after its first result: that run is in the store, the next sweep runs the rest."""
    store = tmp_path / "k.jsonl"
    with CountingPool() as pool:
        first = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool, max_runs=1)
    assert pool.submitted == [0.1] and len(first.ran) == 1
    assert [r["key"] for r in read_store(store)[0]] == first.ran
    with CountingPool() as pool:
        again = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
    assert pool.submitted == [0.2, 0.3] and again.skipped == first.ran and len(again.ran) == 2
    assert_same_runs(store, sequential)


def test_an_interrupted_driver_keeps_the_run_it_stored_and_cancels_the_runs_not_started(tmp_path, monkeypatch):
    real_append, real_run = sweeps.append_record, sweeps.run_config
    appended, started, release = [], [], threading.Event()

    def append_then_interrupt(path, rec):  # the driver is interrupted right after storing its first result
        real_append(path, rec)
        appended.append(rec["key"])
        raise KeyboardInterrupt

    def run_config(cfg, **kw):  # every run but the first waits, so none finishes while the driver stops
        started.append(cfg["train"]["lr"])
        if cfg["train"]["lr"] != 0.1:
            release.wait(60)
        return real_run(cfg, **kw)

    monkeypatch.setattr(sweeps, "append_record", append_then_interrupt)
    monkeypatch.setattr(sweeps, "run_config", run_config)
    store = tmp_path / "i.jsonl"
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(KeyboardInterrupt):
            sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
        release.set()
    assert started == [0.1, 0.2]  # 0.3 was cancelled before it started; 0.2 finished unstored
    assert [r["key"] for r in read_store(store)[0]] == appended
    monkeypatch.setattr(sweeps, "append_record", real_append)
    with CountingPool() as pool:
        again = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
    assert pool.submitted == [0.2, 0.3] and again.skipped == appended and len(again.ran) == 2


def test_a_run_that_fails_on_a_worker_is_recorded_warned_and_listed_and_the_others_are_stored(tmp_path,
                                                                                            monkeypatch):
    real = sweeps.run_config

    def run_config(cfg, **kw):
        if cfg["train"]["lr"] == 0.2:
            raise RuntimeError("boom")
        return real(cfg, **kw)

    monkeypatch.setattr(sweeps, "run_config", run_config)
    store = tmp_path / "f.jsonl"
    with ThreadPoolExecutor(max_workers=2) as pool, \
            pytest.warns(RuntimeWarning, match=r"failed \(RuntimeError: boom\); recorded as failed"):
        res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=pool)
    assert len(res.ran) == 2 and [(cfg["train"]["lr"], error) for cfg, error in res.failures] == [
        (0.2, "RuntimeError: boom")]
    records = read_store(store, failed=True)[0]
    failed = [r for r in records if r.get("failed")]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: boom" and "boom" in failed[0]["traceback"]
    assert failed[0]["config"]["train"]["lr"] == 0.2 and failed[0]["wall_time"] >= 0
    assert sorted(r["config"]["train"]["lr"] for r in records if not r.get("failed")) == [0.1, 0.3]


@pytest.mark.parametrize("pollable", [False, True])
def test_any_object_whose_submit_returns_futures_with_result_serves_as_executor(tmp_path, sequential, pollable):
    store = tmp_path / "h.jsonl"
    res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=HandWritten(pollable))
    assert len(res.ran) == 3
    assert_same_runs(store, sequential)


def test_a_run_whose_future_raises_is_recorded_as_failed_and_the_others_are_stored(tmp_path):
    """The executor lost the run (e.g. its worker died): ``future.result()`` raises instead of returning."""

    class Lost(Deferred):
        def result(self):
            if self._call[1][0]["train"]["lr"] == 0.2:
                raise ConnectionError("worker lost")
            return super().result()

    class Losing(HandWritten):
        def submit(self, fn, *args):
            return Lost(fn, args, pollable=False)

    store = tmp_path / "l.jsonl"
    with pytest.warns(RuntimeWarning, match=r"failed \(ConnectionError: worker lost \(raised by the executor"):
        res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=Losing(pollable=False))
    assert len(res.ran) == 2 and [cfg["train"]["lr"] for cfg, _ in res.failures] == [0.2]
    failed = [r for r in read_store(store, failed=True)[0] if r.get("failed")]
    assert len(failed) == 1 and failed[0]["error"].startswith("ConnectionError: worker lost")


NO_DASK_SCRIPT = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from flatcomp_tutorial.sweeps import sweep
with ThreadPoolExecutor(2) as pool:
    res = sweep(json.loads(sys.argv[2]), json.loads(sys.argv[3]), store=sys.argv[1], progress=False, threads=1,
                executor=pool)
assert len(res.ran) == 3, res
print(sorted(m for m in ("dask", "distributed") if m in sys.modules))
"""


@pytest.mark.integration
def test_an_executor_sweep_without_dask_does_not_import_dask(tmp_path):
    out = subprocess.run([sys.executable, "-c", NO_DASK_SCRIPT, str(tmp_path / "n.jsonl"), json.dumps(GRID),
                          json.dumps(tiny_spec())], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, FLATCOMP_PROGRESS="0", OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("executor", [object(), "processes", 2, type("NoCall", (), {"submit": 1})()])
def test_sweep_refuses_an_executor_without_submit_before_running_anything(tmp_path, executor):
    store = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match=r"executor must be a concurrent.futures-style executor with "
                                         r"\.submit\(fn, \*args\)"):
        sweep(GRID, tiny_spec(), store=store, progress=False, executor=executor)
    assert not store.exists()


@pytest.mark.integration
def test_a_dask_cluster_sweep_stores_the_records_of_the_sequential_sweep(tmp_path, sequential):
    """Two worker processes of a local dask cluster on the loopback interface."""
    distributed = pytest.importorskip("distributed")
    store = tmp_path / "d.jsonl"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       host="127.0.0.1")
    try:
        client = distributed.Client(cluster)
        try:
            res = sweep(GRID, tiny_spec(), store=store, progress=False, threads=1, executor=client)
        finally:
            client.close()
    finally:
        cluster.close()
    assert len(res.ran) == 3 and res.failures == []
    assert_same_runs(store, sequential)
