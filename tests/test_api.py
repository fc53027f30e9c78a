"""The public API is an explicit, sorted list, and importing djq stays light."""

from __future__ import annotations

import subprocess
import sys

import djq


def test_all_is_sorted_and_matches_public_names():
    """__all__ is sorted and lists exactly the public names djq exposes."""
    assert djq.__all__ == sorted(djq.__all__)
    public = {name for name in vars(djq) if not name.startswith("_")} - {"annotations"}
    modules = {name for name in public if type(getattr(djq, name)).__name__ == "module"}
    assert set(djq.__all__) - {"__version__"} == public - modules


def test_version_is_a_string():
    """__version__ comes from the installed package metadata."""
    assert isinstance(djq.__version__, str)
    assert djq.__version__


def test_import_djq_does_not_import_the_toolkit_libraries():
    """`import djq` loads the core only: no pandas, matplotlib or ipywidgets."""
    code = (
        "import sys, djq; heavy = {'pandas', 'matplotlib', 'ipywidgets', 'numpy'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
