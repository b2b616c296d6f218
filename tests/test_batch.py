"""The papermill batch runner's checks: everything that can be refused without a kernel is refused before the first
run (unknown grid names, a notebook without the results_store/run_key hook, unwritable --out or store, bad timeout,
unknown kernel), and a failing or timed-out cell is named by its index and first line. Tiny notebooks are written
with nbformat; only the tests of the last two sections start a kernel."""
import nbformat
import papermill
import pytest

from flatcomp_tutorial import batch as B
from flatcomp_tutorial.store import read_store

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


# ------------------------------------------------------------------------------------- runs that fail (kernel)
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
