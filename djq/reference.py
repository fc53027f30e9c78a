"""Reference results: one run of a lesson with its defaults, kept in ``data/`` beside the reader's.

Each lesson notebook (``notebooks/07_*`` to ``10_*``) measures on the reader's machine
and draws that run beside the results of one run committed in the repository's
``data/`` folder, made with the notebook's defaults on the machine described in the
file. A reader on 8 cores sees at once how the shape changes with the machine.

A reference file is a small tidy CSV, ``data/<lesson>.csv``, whose first lines are
``# key: value`` comments naming the machine and the versions (`machine`), then the
table. ``save`` writes one (atomically, with ``djq.files.write_atomic``); ``load`` reads
one back as a `Reference`, or raises ``FileNotFoundError`` naming the path. The
notebooks write theirs only when their ``SAVE_REFERENCE`` parameter is true, which
``python3 notebooks/reference.py`` sets when it regenerates them all.

Example::

    from djq import reference
    ref = reference.load("07_scaling_laws")
    ref.frame.head(), ref.meta["cpu_count"]
"""

from __future__ import annotations

import datetime
import io
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import pandas as pd

from .errors import ConfigError
from .files import write_atomic

__all__ = ["DATA", "Reference", "load", "machine", "path", "save"]

DATA: Final = Path(__file__).resolve().parent.parent / "data"  #: the repository's data/ folder
PACKAGES: Final = ("djq", "numpy", "pandas", "orjson", "filelock", "psycopg", "redis")
_PREFIX: Final = "# "


@dataclass(frozen=True)
class Reference:
    """One lesson's committed results: the table and the machine it was measured on.

    Attributes:
        lesson: the notebook's name without ``.ipynb``, e.g. ``"07_scaling_laws"``.
        frame: the tidy results, one row per measured point.
        meta: the ``# key: value`` lines of the file (machine, versions, date, lesson's own).
    """

    lesson: str
    frame: pd.DataFrame
    meta: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        """A short legend label: ``"reference (2 CPUs, Linux)"``."""
        return f"reference ({self.meta.get('cpu_count', '?')} CPUs, {self.meta.get('system', '?')})"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """The machine and the versions a run was measured with, as strings."""
    found = {
        "cpu_count": str(os.cpu_count()),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "python": platform.python_version(),
    }
    found.update({package: _version(package) for package in PACKAGES})
    found["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return found


def _checked(lesson: str) -> str:
    if not lesson or not all(c.isalnum() or c == "_" for c in lesson):
        raise ConfigError(
            f"lesson must be a notebook name such as '07_scaling_laws', got {lesson!r}", field="lesson"
        )
    return lesson


def path(lesson: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """Where ``lesson``'s reference file is (``data/<lesson>.csv`` unless ``folder`` is given)."""
    return Path(DATA if folder is None else folder) / f"{_checked(lesson)}.csv"


def save(
    frame: pd.DataFrame,
    lesson: str,
    *,
    folder: str | os.PathLike[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``frame`` as ``lesson``'s reference file, headed by `machine` and ``meta``; return its path."""
    header = machine() | {"lesson": lesson} | {k: str(v) for k, v in (meta or {}).items()}
    bad = [k for k, v in header.items() if "\n" in f"{k}{v}" or ":" in k]
    if bad:
        raise ConfigError(
            f"meta keys and values must be one line and keys hold no ':', got {bad}", field="meta"
        )
    lines = "".join(f"{_PREFIX}{key}: {value}\n" for key, value in header.items())
    target = path(lesson, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, (lines + frame.to_csv(index=False, float_format="%.6g")).encode(), mode=0o644)
    return target


def load(lesson: str, folder: str | os.PathLike[str] | None = None) -> Reference:
    """Read ``lesson``'s reference file; ``FileNotFoundError`` (naming the path) if there is none."""
    text = path(lesson, folder).read_text()
    meta: dict[str, str] = {}
    body = io.StringIO()
    for line in text.splitlines(keepends=True):
        if line.startswith(_PREFIX) and not body.tell():
            key, _, value = line[len(_PREFIX) :].partition(":")
            meta[key.strip()] = value.strip()
        else:
            body.write(line)
    body.seek(0)
    return Reference(lesson, pd.read_csv(body), meta)
