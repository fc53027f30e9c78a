"""benchmarks/peers.py as a subprocess: a quick djq-only run prints its tables, loses nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import djq.model

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers.py"
STORAGE = str(getattr(djq.model, "DEFAULT_STORAGE", "rewrite"))  # a djq without storage modes rewrites
SYSTEMS = (f"djq-{STORAGE}-flock-direct", f"djq-{STORAGE}-flock-broker")


def peers(*args: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PEERS), "--quick", "--dir", str(tmp_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env=env,
    )


def table(out: str) -> list[dict[str, str]]:
    """The rows of the main table, as {column: cell}."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("system") and " lost " in line)
    head = lines[start].split()
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("notes:"):
            break
        cells = line.split()
        assert len(cells) == len(head), line
        rows.append(dict(zip(head, cells, strict=True)))
    return rows


@pytest.mark.timeout(120)
def test_a_quick_djq_run_prints_the_table_and_loses_nothing(tmp_path):
    """Every djq row has numbers in every phase and zero lost, duplicated, left and errors."""
    result = peers("--systems", ",".join(SYSTEMS), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for needed in ("versions:  djq ", "CPUs", "load:", "folders:", "durability", "wall time:"):
        assert needed in out, needed
    rows = table(out)
    assert sorted((r["system"], r["fsync"]) for r in rows) == sorted(
        (s, f) for s in SYSTEMS for f in ("on", "off")
    ), out
    for row in rows:
        assert (row["lost"], row["dup"], row["left"], row["err"]) == ("0", "0", "0", "0"), (row, out)
        assert row["durability"] == f"fsync={row['fsync']}" + ("*" if row["fsync"] == "on" else ""), row
        for column in ("put/s", "get+ack/s", "2P2C/s"):
            assert float(row[column].replace(",", "")) > 0, (column, row)
    assert "failed" not in out, out
    assert "microseconds per op" in out  # the depth table
    assert list(tmp_path.iterdir()) == []  # the temporary queues are gone


@pytest.mark.timeout(60)
def test_a_peer_that_cannot_be_imported_is_skipped_with_a_note(tmp_path):
    """A missing peer library is a note in the header, not a failure."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "diskcache.py").write_text("raise ImportError('not here')\n")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    out_dir = tmp_path / "queues"
    out_dir.mkdir()
    result = peers("--systems", "diskcache", "--fsync", "off", tmp_path=out_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped:   diskcache: not installed" in result.stdout
    assert table(result.stdout) == []
