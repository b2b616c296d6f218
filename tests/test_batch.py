"""The papermill batch runner's checks: everything that can be refused without a kernel is refused before the first
run (unknown grid names, a notebook without the results_store/run_key hook, unwritable --out or store, bad timeout or
--workers, unknown kernel), a failing or timed-out cell is named by its index and first line, progress lines, the
summary table, output names that show the parameters, and --workers. Tiny notebooks are written with nbformat; the
progress, summary and naming tests use an instant stand-in for papermill (``fake_papermill``); only the sections
whose title says "kernel" start one."""
import os
import re
import threading
from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from flatcomp_tutorial import batch as B
from flatcomp_tutorial.store import append_record, read_store

PARAMS = "lr = 0.1\nseed = 0\nresults_store = None\nrun_key = None"
RECORD = ("from flatcomp_tutorial.store import record\n"
          "record(results_store, dict(lr=lr, seed=seed), dict(loss=lr * (seed + 1)), key=run_key)")


def _notebook(path, params=PARAMS, cells=(RECORD,)):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbformat.v4.new_code_cell(params)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail any run: a refusal seen with this fixture happened before papermill was asked to execute anything."""
    def boom(*args, **kwargs):
        raise AssertionError("papermill.execute_notebook was called: a kernel was started")
    monkeypatch.setattr(papermill, "execute_notebook", boom)


@pytest.fixture
def nb(tmp_path):
    return _notebook(tmp_path / "chapter.ipynb")


@pytest.fixture
def fake_papermill(monkeypatch):
    """An instant stand-in for papermill.execute_notebook: writes the executed copy (with papermill's parameters
    metadata) and appends the record the notebook's last cell would, or, for lr < 0, fails as papermill does for a
    raising cell (cell 1, the RECORD cell). Returns the parameters of each call."""
    calls = []

    def execute(input_path, output_path, parameters, **kwargs):
        calls.append(parameters)
        nb = nbformat.read(input_path, as_version=4)
        nb.metadata["papermill"] = {"parameters": parameters}
        nbformat.write(nb, output_path)
        if parameters.get("lr", 0.1) < 0:
            raise PapermillExecutionError(1, 1, RECORD, "ValueError", "lr must be positive\nmore detail", [])
        append_record(parameters["results_store"], {"key": parameters["run_key"], "config": dict(parameters),
                                                    "final": {}})
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def _refused(nb, grid, tmp_path, match, **kwargs):
    out, store = tmp_path / "out", tmp_path / "results.jsonl"
    with pytest.raises(ValueError, match=match):
        B.run_batch(nb, grid, kwargs.pop("out", out), kwargs.pop("store", store), **kwargs)
    assert not list(tmp_path.rglob("chapter-*.ipynb")) and not store.exists()


# --------------------------------------------------------------------------------------- notebook parameters
def test_notebook_parameters_are_the_names_assigned_in_the_parameters_cell(tmp_path):
    path = _notebook(tmp_path / "p.ipynb", "# defaults\n%matplotlib inline\nlr = 0.1  # step\nwidth, depth = 8, 2\n"
                                           "seeds: tuple = (0, 1)\nimport math\nconfig = {}\nconfig['x'] = 1\n")
    assert B.notebook_parameters(path) == ["lr", "width", "depth", "seeds", "config"]


def test_notebook_without_a_parameters_cell_is_refused(tmp_path):
    path = tmp_path / "plain.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("lr = 0.1")]), path)
    with pytest.raises(ValueError, match="has no code cell tagged 'parameters'"):
        B.notebook_parameters(path)


def test_a_file_that_is_not_a_notebook_is_refused(tmp_path):
    path = tmp_path / "chapter.ipynb"
    path.write_text("not json")
    with pytest.raises(ValueError, match="is not a readable notebook"):
        B.notebook_parameters(path)


# ----------------------------------------------------------------------------------- refusals before any run
def test_unknown_grid_name_is_refused_before_any_run_listing_the_valid_ones(no_kernel, nb, tmp_path):
    _refused(nb, {"lrr": [1, 2]}, tmp_path, r"grid name 'lrr' is not a parameter of chapter.ipynb; "
                                            r"its parameters are lr, seed$")


def test_unknown_fixed_parameter_is_refused_before_any_run(no_kernel, nb, tmp_path):
    _refused(nb, {"lr": [0.1]}, tmp_path, r"parameter name \(-p\) 'sede' is not a parameter", parameters={"sede": 1})


def test_grid_cannot_set_the_runners_hook_parameters(no_kernel, nb, tmp_path):
    _refused(nb, {"run_key": ["a"]}, tmp_path, "results_store and run_key are set by the runner")


def test_notebook_without_the_results_store_hook_is_refused_before_any_run(no_kernel, tmp_path):
    path = _notebook(tmp_path / "chapter.ipynb", "lr = 0.1\nrun_key = None")
    _refused(path, {"lr": [0.1]}, tmp_path, "has no results_store parameter.*add results_store = None")


def test_notebook_without_the_run_key_hook_is_refused_before_any_run(no_kernel, tmp_path):
    path = _notebook(tmp_path / "chapter.ipynb", "lr = 0.1\nresults_store = None")
    _refused(path, {"lr": [0.1]}, tmp_path, "has no run_key parameter")


def test_parameter_given_both_fixed_and_in_the_grid_is_refused(no_kernel, nb, tmp_path):
    _refused(nb, {"lr": [0.1, 0.2]}, tmp_path, "'lr' given both as a fixed parameter and as a grid name",
             parameters={"lr": 0.3})


def test_grid_without_any_configuration_is_refused(no_kernel, nb, tmp_path):
    _refused(nb, {"lr": []}, tmp_path, "the grid has no configuration")


def test_configuration_listed_twice_is_refused_before_any_run(no_kernel, nb, tmp_path):
    _refused(nb, {"lr": [0.1, 0.1]}, tmp_path, r"the grid lists the configuration \{'lr': 0.1\} more than once")


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_an_integer_of_at_least_one(no_kernel, nb, tmp_path, workers):
    _refused(nb, {"lr": [0.1]}, tmp_path, r"workers \(--workers\) must be an integer >= 1", workers=workers)


@pytest.mark.parametrize("timeout", [0, -5, True, 2.5])
def test_timeout_must_be_a_positive_integer(no_kernel, nb, tmp_path, timeout):
    _refused(nb, {"lr": [0.1]}, tmp_path, "timeout must be a positive integer", timeout=timeout)


def test_unknown_kernel_is_refused_listing_the_installed_ones(no_kernel, nb, tmp_path):
    _refused(nb, {"lr": [0.1]}, tmp_path, "kernel 'no-such-kernel' is not installed; installed kernels: .*python3",
             kernel="no-such-kernel")


def test_out_folder_below_a_file_is_refused_before_any_run(no_kernel, nb, tmp_path):
    (tmp_path / "file.txt").write_text("")
    _refused(nb, {"lr": [0.1]}, tmp_path, r"out '.*file.txt/out' is not a writable folder",
             out=tmp_path / "file.txt" / "out")


def test_store_that_is_a_folder_is_refused_before_any_run(no_kernel, nb, tmp_path):
    (tmp_path / "results").mkdir()
    _refused(nb, {"lr": [0.1]}, tmp_path, "store '.*results' is a folder", store=tmp_path / "results")


def test_store_below_a_file_is_refused_before_any_run(no_kernel, nb, tmp_path):
    (tmp_path / "file.txt").write_text("")
    _refused(nb, {"lr": [0.1]}, tmp_path, "the folder of store '.*file.txt' is not a writable folder",
             store=tmp_path / "file.txt" / "results.jsonl")


# --------------------------------------------------------------------------------------------------- the CLI
def test_cli_unwritable_out_gives_a_one_line_error_and_exit_status_1(no_kernel, nb, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("")
    code = B.main([str(nb), "--grid", "lr=0.1", "--out", str(tmp_path / "file.txt" / "out"),
                   "--store", str(tmp_path / "results.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: out ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_unknown_grid_name_exits_1_without_running(no_kernel, nb, tmp_path, capsys):
    code = B.main([str(nb), "--grid", "lrr=1,2", "--out", str(tmp_path / "out"),
                   "--store", str(tmp_path / "results.jsonl")])
    assert code == 1 and "'lrr' is not a parameter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers", ["0", "1.5", "x"])
def test_cli_workers_not_an_integer_of_at_least_one_is_refused_before_any_run(no_kernel, nb, tmp_path, capsys,
                                                                               workers):
    with pytest.raises(SystemExit) as exit_:
        B.main([str(nb), "--grid", "lr=0.1", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s.jsonl"),
                "--workers", workers])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"--workers must be an integer >= 1 (configurations run at once), got " \
                                      f"'{workers}'" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.jsonl").exists()


def test_grid_name_given_twice_is_refused():
    with pytest.raises(ValueError, match="--grid lr=... is given twice"):
        B.parse_grid(["lr=0.1", "lr=0.2"])


def test_grid_with_an_empty_value_is_refused():
    with pytest.raises(ValueError, match="name=v1,v2"):
        B.parse_grid(["lr=0.1,,0.2"])


def test_batch_grid_syntax_errors_name_the_expected_form():
    with pytest.raises(ValueError, match="name=v1,v2"):
        B.parse_grid(["lr"])


def test_cli_fixed_parameter_with_several_values_is_refused(nb, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        B.main([str(nb), "-p", "lr=0.1,0.2", "--out", str(tmp_path / "out"), "--store", str(tmp_path / "s.jsonl")])
    assert exit_.value.code == 2 and "-p lr=... takes one value; use --grid" in capsys.readouterr().err


# -------------------------------------------------------------------------- progress lines (papermill stand-in)
def _run(nb, tmp_path, grid, **kwargs):
    lines = []
    result = B.run_batch(nb, grid, tmp_path / "out", tmp_path / "results.jsonl", log=lines.append, **kwargs)
    return result, lines


def test_progress_line_of_a_finished_run_gives_its_seconds_and_record_key(fake_papermill, nb, tmp_path):
    result, lines = _run(nb, tmp_path, {"lr": [0.1], "seed": [1]})
    assert re.fullmatch(rf"\[1/1\] lr=0\.1 seed=1 -> \d+\.\d s, record {result.ran[0]}", lines[0]) and len(lines) == 1


def test_progress_line_of_a_configuration_in_the_store_says_skipped(fake_papermill, nb, tmp_path):
    _run(nb, tmp_path, {"lr": [0.1], "seed": [1]})
    result, lines = _run(nb, tmp_path, {"lr": [0.2, 0.1], "seed": [1]})
    assert lines[0] == "[1/2] lr=0.1 seed=1 -> skipped (in store)" and lines[1].startswith("[2/2] lr=0.2 seed=1 -> ")
    assert len(fake_papermill) == 2 and result.ran == [B.config_key({"notebook": "chapter.ipynb", "lr": 0.2,
                                                                     "seed": 1})]


def test_progress_line_of_a_failed_run_gives_its_seconds_and_the_failing_cell(fake_papermill, nb, tmp_path):
    lines = []
    with pytest.raises(B.BatchFailed) as err:
        B.run_batch(nb, {"lr": [-1]}, tmp_path / "out", tmp_path / "results.jsonl", log=lines.append)
    assert re.fullmatch(r"\[1/1\] lr=-1 -> FAILED after \d+\.\d s: cell 1 \('from flatcomp_tutorial.store import "
                        r"record'\) raised ValueError: lr must be positive", lines[0])
    assert err.value.result.failures == [({"lr": -1}, lines[0].split(": ", 1)[1])]


def test_progress_line_of_a_run_without_a_grid_says_so(fake_papermill, nb, tmp_path):
    _, lines = _run(nb, tmp_path, [{}])
    assert lines[0].startswith("[1/1] (no grid) -> ")


# -------------------------------------------------------------------------- the summary table (papermill stand-in)
def test_summary_has_one_row_per_configuration_in_grid_order_and_the_totals(fake_papermill, nb, tmp_path):
    _run(nb, tmp_path, {"lr": [0.2], "seed": [0]})
    with pytest.raises(B.BatchFailed) as err:
        _run(nb, tmp_path, {"lr": [0.1, 0.2, -1], "seed": [0]})
    rows = [line.split() for line in err.value.result.summary().splitlines()]
    assert rows[0] == ["lr", "seed", "status", "seconds", "output"]
    assert [r[:3] + r[4:] for r in rows[1:4]] == [["0.1", "0", "ran", "chapter-lr=0.1-seed=0.ipynb"],
                                                  ["0.2", "0", "skipped", "chapter-lr=0.2-seed=0.ipynb"],
                                                  ["-1", "0", "failed", "chapter-lr=-1-seed=0.ipynb"]]
    assert rows[2][3] == "-" and re.fullmatch(r"\d+\.\d", rows[1][3]) and re.fullmatch(r"\d+\.\d", rows[3][3])
    assert re.fullmatch(rf"3 configuration\(s\): 1 ran, 1 skipped \(already in the store\), 1 failed; \d+\.\d s of "
                        rf"runs in \d+\.\d s with 1 worker\(s\); records in {tmp_path / 'results.jsonl'}",
                        " ".join(rows[4]))


def test_cli_prints_progress_on_stderr_and_the_summary_on_stdout(fake_papermill, nb, tmp_path, capsys):
    code = B.main([str(nb), "--grid", "lr=0.1,0.2", "--out", str(tmp_path / "out"),
                   "--store", str(tmp_path / "results.jsonl")])
    out, err = capsys.readouterr()
    assert code == 0 and [line[:6] for line in err.splitlines()] == ["[1/2] ", "[2/2] "]
    assert out.splitlines()[0].split() == ["lr", "status", "seconds", "output"] and "2 ran" in out.splitlines()[-1]


def test_cli_prints_the_summary_of_a_failed_batch_before_the_error(fake_papermill, nb, tmp_path, capsys):
    code = B.main([str(nb), "--grid", "lr=0.1,-1", "--out", str(tmp_path / "out"),
                   "--store", str(tmp_path / "results.jsonl")])
    out, err = capsys.readouterr()
    assert code == 1 and "1 ran, 0 skipped (already in the store), 1 failed" in out
    assert "error: batch runs failed:\n{'lr': -1}: cell 1 ('from flatcomp_tutorial.store import record') of " in err


# -------------------------------------------------------------------------- output names (papermill stand-in)
def test_executed_copies_are_named_by_their_grid_values(fake_papermill, nb, tmp_path):
    _run(nb, tmp_path, {"lr": [0.1, 0.2], "seed": [0]})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["chapter-lr=0.1-seed=0.ipynb",
                                                                     "chapter-lr=0.2-seed=0.ipynb"]


def test_executed_copies_show_the_fixed_parameters_after_the_grid_values(fake_papermill, nb, tmp_path):
    _run(nb, tmp_path, {"lr": [0.1]}, parameters={"seed": 3})
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["chapter-lr=0.1-seed=3.ipynb"]


def test_output_names_replace_characters_outside_the_safe_set():
    assert B.output_names("ch", [{"data": "a b/c:d", "flag": True, "n": None}], ["k"]) == \
        ["ch-data=a_b_c_d-flag=true-n=null.ipynb"]


def test_output_names_that_would_collide_get_the_run_key_and_stay_unique():
    names = B.output_names("ch", [{"x": "a/b"}, {"x": "a_b"}, {"x": "A_B"}, {"x": "c"}], ["k1", "k2", "k3", "k4"])
    assert names == ["ch-x=a_b-k1.ipynb", "ch-x=a_b-k2.ipynb", "ch-x=A_B-k3.ipynb", "ch-x=c.ipynb"]


def test_output_name_without_any_parameter_gets_the_run_key_so_it_cannot_be_the_notebook():
    assert B.output_names("ch", [{}], ["k"]) == ["ch-k.ipynb"]


def test_output_names_longer_than_the_limit_are_cut_and_get_the_run_key():
    key = "0123456789abcdef"
    short, long_ = B.output_names("ch", [{"x": "y" * 100}, {"x": "y" * 200}], ["k", key])
    assert short == f"ch-x={'y' * 100}.ipynb"
    assert len(long_) == B.NAME_LIMIT and long_.startswith("ch-x=yyy") and long_.endswith(f"y-{key}.ipynb")


# ------------------------------------------------------------------------------------- --workers (papermill stand-in)
def test_workers_run_configurations_at_the_same_time(fake_papermill, nb, tmp_path, monkeypatch):
    both = threading.Barrier(2, timeout=10)  # passes only when two runs are in flight at once
    execute = papermill.execute_notebook
    monkeypatch.setattr(papermill, "execute_notebook", lambda *args, **kwargs: (both.wait(), execute(*args, **kwargs)))
    result, lines = _run(nb, tmp_path, {"lr": [0.1, 0.2]}, workers=2)
    assert len(result.ran) == 2 and len(lines) == 2


# ------------------------------------------------------------------------------------ --workers 2 (kernel)
@pytest.mark.integration
def test_two_workers_give_the_records_executed_copies_and_summary_of_one(tmp_path):
    (tmp_path / "book").mkdir()
    nb = _notebook(tmp_path / "book" / "chapter.ipynb", cells=(
        "import os\nfrom flatcomp_tutorial.store import record\n"
        "record(results_store, dict(lr=lr, seed=seed), dict(loss=lr * (seed + 1), cwd=os.getcwd()), key=run_key)",))
    here, runs = os.getcwd(), {}
    for workers in (1, 2):
        out, store = tmp_path / f"out{workers}", tmp_path / f"results{workers}.jsonl"
        result = B.run_batch(nb, {"lr": [0.05, 0.1], "seed": [1]}, out, store, workers=workers)
        records = sorted((r["key"], r["config"], r["final"]) for r in read_store(store)[0])
        table = [line.split()[:3] + line.split()[4:] for line in result.summary().splitlines()[:-1]]
        runs[workers] = records, sorted(p.name for p in out.iterdir()), result.ran, table
    assert runs[2] == runs[1] and len(runs[1][0]) == 2 and len(runs[1][1]) == 2
    assert {r[2]["cwd"] for r in runs[2][0]} == {str(nb.parent)} and os.getcwd() == here


# ------------------------------------------------------------------------------------- runs that fail (kernel)
@pytest.mark.integration
def test_cell_timeout_names_the_cell_and_the_notebook(tmp_path):
    path = _notebook(tmp_path / "chapter.ipynb", cells=("x = 1", "import time; time.sleep(30)", RECORD))
    with pytest.raises(RuntimeError) as err:
        B.run_batch(path, {"lr": [0.1]}, tmp_path / "out", tmp_path / "results.jsonl", timeout=2)
    msg = str(err.value)
    assert f"cell 2 ('import time; time.sleep(30)') of {path} timed out after 2 s" in msg


def test_cli_failing_cell_gives_a_concise_message_naming_the_cell(tmp_path, capsys):
    path = _notebook(tmp_path / "chapter.ipynb", cells=("x = 1", "raise ValueError('boom\\nmore detail')", RECORD))
    code = B.main([str(path), "--grid", "lr=0.1", "--out", str(tmp_path / "out"),
                   "--store", str(tmp_path / "results.jsonl")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"cell 2 (\"raise ValueError('boom\\\\nmore detail')\") of {path} raised ValueError: boom (" in err
    assert "Traceback" not in err and "more detail\n" not in err


# ------------------------------------------------------------------------------------------------ runs with a kernel
@pytest.mark.integration
def test_batch_runs_a_notebook_once_per_configuration_and_collects_records(tmp_path):
    (tmp_path / "book").mkdir()
    nb = _notebook(tmp_path / "book" / "chapter.ipynb", cells=(
        "import os\nfinal_loss = lr * (seed + 1)\ncwd = os.getcwd()",
        "from flatcomp_tutorial.store import record\n"
        "record(results_store, dict(lr=lr, seed=seed), dict(final_loss=final_loss, cwd=cwd,\n"
        "       progress=os.environ.get('FLATCOMP_PROGRESS')), key=run_key)"))
    store, out = tmp_path / "results.jsonl", tmp_path / "out"
    grid = B.parse_grid(["lr=0.05,0.1", "seed=1"])
    assert grid == {"lr": [0.05, 0.1], "seed": [1]}
    first = B.run_batch(nb, grid, out, store)
    again = B.run_batch(nb, grid, out, store)
    assert len(first.ran) == 2 and again.ran == [] and len(again.skipped) == 2
    recs = read_store(store)[0]
    assert sorted(r["final"]["final_loss"] for r in recs) == [0.1, 0.2]
    assert {r["final"]["cwd"] for r in recs} == {str(nb.parent)} and {r["final"]["progress"] for r in recs} == {"0"}
    assert len(list(out.glob("chapter-*.ipynb"))) == 2


# ------------------------------------------------------------------------------- the documented commands, as written
def _documented_commands() -> list[list[str]]:
    """The batch commands of README.md and of chapter "Running at paper scale", split into arguments."""
    import json
    import shlex

    root = Path(__file__).resolve().parents[1]
    readme = re.findall(r"`(python -m flatcomp_tutorial\.batch [^`]*)`", (root / "README.md").read_text())
    cells = json.loads((root / "book" / "paper_scale.ipynb").read_text())["cells"]
    command = re.compile(r"(python -m flatcomp_tutorial\.batch (?:\\\n|[^\n])*)")  # with \-continued lines
    chapter = [m.replace("\\\n", " ") for c in cells if c["cell_type"] == "markdown"
               for m in command.findall("".join(c["source"]))]
    return [shlex.split(cmd)[3:] for cmd in readme + chapter]


def test_the_documented_batch_commands_run_as_written(fake_papermill, tmp_path, monkeypatch):
    commands = _documented_commands()
    assert len(commands) >= 2  # the README's and the chapter's
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for i, argv in enumerate(commands):
        out, store = tmp_path / f"out{i}", tmp_path / f"store{i}.jsonl"
        argv = [str(out) if a.startswith("runs/") else str(store) if a.startswith("data/results/") else a
                for a in argv]
        assert B.main(argv) == 0, argv
        grid = B.parse_grid([argv[j + 1] for j, a in enumerate(argv) if a == "--grid"])
        n = 1
        for values in grid.values():
            n *= len(values)
        assert len(read_store(store)[0]) == n
