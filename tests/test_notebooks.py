"""The teaching notebooks in notebooks/: committed clean, well formed, and every one runs headless.

Each notebook has exactly one code cell tagged ``parameters`` that sets its sizes and a
``CI_PARAMETERS`` dict of small ones. The execution test inserts
``globals().update(CI_PARAMETERS)`` right after that cell and runs the notebook in a
fresh ``python3`` kernel (nbclient), with ``MPLBACKEND=Agg`` and the working folder set
to the test's ``tmp_path``; a cell that raises fails the test with nbclient's
``CellExecutionError``, which shows the cell and its traceback.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 240  #: seconds one cell may run (CI parameters take far less)
NOTEBOOK_TIMEOUT = 600  #: seconds for the whole notebook, kernel start included
OVERRIDE = "globals().update(CI_PARAMETERS)  # injected by tests/test_notebooks.py"
TRY_THIS = "try this"

notebooks = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _parameters_index(nb) -> int:
    """The index of the one code cell tagged ``parameters``; fail unless there is exactly one."""
    tagged = [
        i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, f"want exactly one cell tagged 'parameters', found {len(tagged)}"
    assert nb.cells[tagged[0]].cell_type == "code", "the 'parameters' cell must be a code cell"
    return tagged[0]


def _ci_keys(source: str) -> tuple[set[str], set[str]]:
    """Names the parameters cell assigns, and the keys of its ``CI_PARAMETERS = dict(...)``/``{...}``."""
    assigned: set[str] = set()
    keys: set[str] | None = None
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        assigned |= names
        if "CI_PARAMETERS" in names:
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                keys = {kw.arg for kw in value.keywords if kw.arg is not None}
            elif isinstance(value, ast.Dict):
                keys = {k.value for k in value.keys if isinstance(k, ast.Constant) and type(k.value) is str}
    assert keys is not None, "the parameters cell must define CI_PARAMETERS = dict(NAME=small value, ...)"
    return assigned, keys


def test_notebooks_are_collected():
    """The folder exists; an empty one is allowed (each test below is then skipped, not broken)."""
    assert NOTEBOOK_DIR.is_dir(), f"no {NOTEBOOK_DIR}"
    assert all(p.suffix == ".ipynb" for p in NOTEBOOKS)


@notebooks
def test_notebook_is_committed_without_outputs(path: Path):
    """Outputs and execution counts belong to a run, not to the repository."""
    nb = _read(path)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; "
        "clear them (e.g. jupyter nbconvert --clear-output --inplace) before committing"
    )


@notebooks
def test_notebook_structure(path: Path):
    """A markdown introduction first, a "Try this" list, one parameters cell whose CI values override it."""
    nb = _read(path)
    assert nb.cells, f"{path.name} is empty"
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: start with a markdown introduction"
    assert first.source.strip(), f"{path.name}: the introduction is empty"
    markdown = [c.source.lower() for c in nb.cells if c.cell_type == "markdown"]
    assert any(TRY_THIS in text for text in markdown), f"{path.name}: no markdown cell with 'Try this'"
    assigned, keys = _ci_keys(nb.cells[_parameters_index(nb)].source)
    unknown = keys - assigned
    assert not unknown, f"{path.name}: CI_PARAMETERS sets {sorted(unknown)}, not set in the parameters cell"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if "__pycache__" not in p.parts} if folder.exists() else set()


@notebooks
@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
def test_notebook_runs_with_ci_parameters(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every cell runs without an error, with the CI parameters, in tmp_path, without a display."""
    nb = _read(path)
    at = _parameters_index(nb)
    override = nbformat.v4.new_code_cell(OVERRIDE, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, override)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits the environment when it starts
    before = _files(NOTEBOOK_DIR) | _files(ROOT / "data")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.perf_counter()
    client.execute()  # raises nbclient.exceptions.CellExecutionError at the first failing cell
    elapsed = time.perf_counter() - started
    print(f"{path.name}: {elapsed:.1f} s with CI parameters")
    after = _files(NOTEBOOK_DIR) | _files(ROOT / "data")
    assert after <= before, f"{path.name} wrote into the repository: {sorted(map(str, after - before))}"
