"""The dependency rules of STYLE.md 4.3, checked on the source (not only at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "djq"
CORE = {"errors", "model", "state", "storage", "journal", "locks", "metrics", "watch", "queue"}
ALLOWED = {  # djq modules each module may import (the table in STYLE.md 4.3)
    "errors": set(),
    "model": {"errors"},
    "state": {"errors", "model"},
    "metrics": {"errors", "model"},
    "storage": {"errors", "model", "state", "metrics"},
    "locks": {"errors", "model", "metrics"},
    "journal": {"errors", "model", "state", "storage"},
    "watch": set(),
    "queue": CORE - {"queue"},
    "client": {"errors", "model", "metrics"},
    "wire": {"errors", "model"},
    "remote": {"errors", "model", "storage", "wire"},
    "broker": CORE | {"wire"},
    "manager": {"errors", "model", "remote", "wire"},
    "workers": {"errors", "model", "metrics", "queue", "remote"},
    "frames": {"model", "metrics", "workers"},
    "sim": CORE | {"workers", "frames", "manager", "remote"},
    "theory": {"errors"},
    "plot": {"model", "frames"},
    "widgets": {"sim", "frames", "plot", "model", "errors", "queue"},
}
THIRD_PARTY = {  # third-party packages each module may import
    "storage": {"orjson"},
    "journal": {"orjson"},
    "wire": {"orjson"},
    "broker": {"orjson"},
    "manager": {"orjson"},
    "locks": {"filelock"},
    "workers": {"orjson"},
    "frames": {"pandas", "numpy"},
    "sim": {"pandas", "orjson", "tqdm"},
    "theory": {"numpy"},
    "plot": {"matplotlib", "numpy", "pandas"},
    "widgets": {"ipywidgets", "matplotlib", "pandas"},
}
STDLIB_BANNED_IN_STATE = {"os", "io", "time", "threading", "pathlib", "random", "secrets", "uuid"}
NEVER = {"pickle", "marshal", "shelve", "cPickle", "dill", "cloudpickle"}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """Return (djq modules, top-level other packages) imported anywhere in the module."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    local, other = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from . import x
                if node.module:
                    local.add(node.module.split(".")[0])
                else:
                    local.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "djq":
                local.add(node.module.split(".")[1] if "." in node.module else "djq")
            elif node.module:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                other.add(alias.name.split(".")[0])
    return local, other


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_lower_layers(module):
    """A module imports djq modules only from the layers below it."""
    local, _ = _imports(module)
    assert local <= ALLOWED[module], f"{module} imports {sorted(local - ALLOWED[module])}"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_its_third_party_packages(module):
    """Each module imports only the third-party packages it exists for (the core: no pandas)."""
    import sys

    _, other = _imports(module)
    third = {name for name in other if name not in sys.stdlib_module_names}
    assert third <= THIRD_PARTY.get(module, set()), f"{module} imports {sorted(third)}"


def test_state_does_no_io_and_reads_no_clock():
    """state.py is pure: no os, io, time, threading, pathlib or randomness."""
    _, other = _imports("state")
    assert not other & STDLIB_BANNED_IN_STATE


@pytest.mark.parametrize("module", _modules())
def test_nothing_is_ever_pickled(module):
    """pickle, marshal and shelve appear nowhere in djq."""
    _, other = _imports(module)
    assert not other & NEVER
