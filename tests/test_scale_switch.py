"""``scale = "paper"`` applies every paper value a chapter's ``parameters`` cell documents and never overrides a
value the user set (issue 11, section 1).

Convention checked here: a parameter that depends on ``scale`` defaults to ``None`` in the parameters cell, its comment
gives both values as ``None: <cpu value> (cpu) / <paper value> (paper)``, and the setup cell right after it validates
``scale`` and then resolves it with ``if name is None:`` / ``name = {"cpu": ..., "paper": ...}[scale]``.

The dynamic tests run only the parameters cell and the setup cell of each chapter (no training), as papermill would:
the parameters cell, then the user's assignments, then the setup cell. At paper scale the setup cells load
FashionMNIST: tiny files in the real IDX format are fabricated in a temporary ``FLATCOMP_DATA`` folder and the
download registry is pointed at them with their true sha256 (helpers of ``test_data.py``), so nothing is downloaded.
"""
import ast
import json
import re
from pathlib import Path

import pytest

from flatcomp_tutorial import data as D
from test_data import fake_fashion  # noqa: F401 (a fixture, used through fake_fashion_cache)

BOOK = Path(__file__).resolve().parents[1] / "book"


def _cells(path):
    """Source of the ``parameters``-tagged cell and of the setup cell right after it."""
    cells = json.loads(path.read_text())["cells"]
    k = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    return "".join(cells[k]["source"]), "".join(cells[k + 1]["source"])


SCALED = [p for p in sorted(BOOK.glob("*.ipynb")) if re.search(r"^scale = ", _cells(p)[0], re.M)]
DOC = re.compile(r"None: (.+?) \(cpu\) / (.+?) \(paper\)")


def switches(params: str) -> dict:
    """``{name: (cpu value, paper value)}`` of the scale-dependent parameters, read from their comments (a comment
    may continue on the following ``#`` lines)."""
    out, name = {}, None
    for line in params.splitlines():
        if line.startswith("#"):  # the cell's header comment explains the convention
            continue
        m = re.match(r"^(\w+)(?:, \w+)* = ", line)
        if m:
            name = m.group(1) if re.match(r"^\w+ = None\b", line) else None
        doc = DOC.search(line)
        if doc:
            assert name is not None, f"'None: ... (cpu) / ... (paper)' on a parameter that is not None: {line!r}"
            out[name] = (ast.literal_eval(doc.group(1)), ast.literal_eval(doc.group(2)))
    return out


SWITCHED = [p for p in SCALED if switches(_cells(p)[0])]


def run_setup(path, scale, **user):
    """Namespace after the parameters cell, the user's assignments (papermill's injected cell) and the setup cell."""
    params, setup = _cells(path)
    ns = {}
    exec(compile(params, f"{path.name}[parameters]", "exec"), ns)
    ns.update(scale=scale, **user)
    exec(compile(setup, f"{path.name}[setup]", "exec"), ns)
    return ns


def user_value(cpu, paper):
    """A value a user could pass that differs from the paper value (and from the cpu one where possible)."""
    if isinstance(cpu, str):
        return cpu
    if isinstance(cpu, (tuple, list)):
        return type(cpu)([7])
    return 7


@pytest.fixture
def fake_fashion_cache(fake_fashion, monkeypatch):
    """FashionMNIST in the real IDX gz format (tests/test_data.py's ``fake_fashion``) under a temporary
    ``FLATCOMP_DATA``; downloading is impossible."""
    tmp_path = fake_fashion[0]
    monkeypatch.setenv("FLATCOMP_DATA", str(tmp_path))
    fetch = D.fetch
    monkeypatch.setattr(D, "fetch", lambda relpath, root=None, download=True: fetch(relpath, root, download=False))
    return tmp_path


def test_the_chapters_with_a_scale_parameter_are_found():
    names = {p.stem for p in SWITCHED}
    assert {"bounds", "compression", "first_network", "sharpness", "network_bounds", "beyond", "late_phase",
            "local_dim", "sgd_dynamics"} <= names
    assert {p.stem for p in SCALED} - names <= {"sweep", "paper_scale"}  # these switch through the preset only


@pytest.mark.parametrize("path", SCALED, ids=lambda p: p.stem)
def test_every_documented_paper_value_is_a_none_default_that_the_setup_cell_resolves(path):
    params, setup = _cells(path)
    for line in params.splitlines():
        if re.match(r"^\w+(, \w+)* = ", line):
            assert "paper:" not in line, f"a 'paper:' value that scale='paper' would not switch: {line!r}"
    check = setup.find('if scale not in ("cpu", "paper"):\n    raise ValueError(')
    assert check >= 0, "the setup cell validates scale"
    for name, (cpu, paper) in switches(params).items():
        line = re.search(rf"^if {name} is None:\n    {name} = (\{{.*\}})\[scale\]$", setup, re.M)
        assert line, f"{name}: no uniform resolution line in the setup cell"
        assert line.start() > check, f"{name} is resolved before scale is validated"
        assert ast.literal_eval(line.group(1)) == {"cpu": cpu, "paper": paper}, f"{name}: comment and code differ"


@pytest.mark.parametrize("path", SCALED, ids=lambda p: p.stem)
def test_an_unknown_scale_is_refused(path):
    with pytest.raises(ValueError, match="scale must be 'cpu' or 'paper', got 'gpu'"):
        run_setup(path, "gpu")


@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: p.stem)
def test_cpu_scale_resolves_the_documented_cpu_values(path):
    ns = run_setup(path, "cpu")
    for name, (cpu, _) in switches(_cells(path)[0]).items():
        assert ns[name] == cpu, name


@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: p.stem)
def test_paper_scale_resolves_the_documented_paper_values(path, fake_fashion_cache):
    ns = run_setup(path, "paper")
    assert "FashionMNIST" in repr(ns["data"]) or "fashion" in repr(ns["data"]).lower()
    for name, (_, paper) in switches(_cells(path)[0]).items():
        assert ns[name] == paper, name


@pytest.mark.parametrize("scale", ["cpu", "paper"])
@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: p.stem)
def test_a_value_set_by_the_user_survives_either_scale(path, scale, fake_fashion_cache):
    user = {name: user_value(*values) for name, values in switches(_cells(path)[0]).items()}
    ns = run_setup(path, scale, **user)
    for name, value in user.items():
        assert ns[name] == value, f"{name} set to {value!r} by the user became {ns[name]!r} at scale={scale!r}"


def test_papermill_style_width_override_survives_paper_scale(fake_fashion_cache):
    """The referee's example: ``-p width 16 -p scale paper`` used to end with width 512."""
    ns = run_setup(BOOK / "bounds.ipynb", "paper", width=16)
    assert ns["width"] == 16 and ns["epochs"] == 100


@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: p.stem)
def test_paper_scale_on_a_cpu_warns_with_the_estimated_time_before_loading_data(path, fake_fashion_cache):
    setup = _cells(path)[1]
    assert setup.find("fc.runtime.check_scale(scale, device, runs=") < setup.find('if scale == "paper"')
    with pytest.warns(RuntimeWarning, match=r"scale='paper' on a CPU: this chapter trains \d+ paper-scale run"):
        run_setup(path, "paper")
