"""The benchmarks as subprocesses: quick runs print their tables and lose nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cannot_run

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


def table(out: str, column: str = "lost") -> list[dict[str, str]]:
    """The rows of the table whose head has ``column`` (the main table's: "lost"), as {column: cell}."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("system") and column in line.split())
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
    [floors] = [line for line in out.splitlines() if line.startswith("floors:")]
    assert re.search(r"a sleep and wake-up costs the sleeper \d+ us of CPU$", floors), floors
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
    costs = table(out, "cpu/item")  # 2P2C's cost per item in the workers, beside one process's
    assert sorted((r["system"], r["fsync"]) for r in costs) == sorted((r["system"], r["fsync"]) for r in rows)
    for row in costs:
        user, system, total = (float(row[c].replace(",", "")) for c in ("user", "sys", "cpu/item"))
        assert user + system > 0, row
        assert abs(total - (user + system)) <= 1, row  # each printed rounded
        assert float(row["waits"]) >= 0, row
        assert float(row["1P/item"].replace(",", "")) > 0, row
    beside = table(out, "put:floor")  # one process's calls beside the floors measured in the run
    assert {(r["system"], r["fsync"]) for r in beside} == {
        (s, f) for s in SYSTEMS for f in ("on", "off") if f == "on" or s.endswith("broker")
    }, out
    for row in beside:
        put, floor = (float(row[c].replace(",", "")) for c in ("put", "floor"))
        assert floor > 0, row
        # each printed rounded: µs to the unit, the ratio to 0.01 (a 50 µs floor is 1 % off alone)
        low, high = (put - 0.5) / (floor + 0.5) - 0.005, (put + 0.5) / (floor - 0.5) + 0.005
        assert low <= float(row["put:floor"]) <= high, row
        through_socket = {"on": "socket+write", "off": "socket"}[row["fsync"]]
        assert row["floor_is"] == (through_socket if row["system"].endswith("broker") else "write"), row
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


SERVER_SYSTEMS = ("djq-redis", "redis-floor", "pg-floor")
DURABILITY = {
    ("djq-redis", "on"): "aof=always", ("djq-redis", "off"): "aof=no",
    ("redis-floor", "on"): "aof=always", ("redis-floor", "off"): "aof=no",
    ("pg-floor", "on"): "commit=on", ("pg-floor", "off"): "commit=off",
}  # fmt: skip


def server_notes(out: str) -> list[str]:
    """The notes under the server table."""
    lines = out.split("server queues:", 1)[1].splitlines()
    start = next((i for i, line in enumerate(lines) if line == "notes:"), None)
    if start is None:
        return []
    notes = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        notes.append(line.strip())
    return notes


@pytest.mark.timeout(150)
def test_a_quick_server_run_prints_the_server_table_and_loses_nothing(tmp_path):
    """djq-redis, redis-floor and pg-floor on scratch servers: numbers, ratios, nothing lost or doubled."""
    result = peers("--systems", ",".join(SERVER_SYSTEMS), "--n", "100", "--depths", "100", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    skipped = [note for note in server_notes(out) if "skipped:" in note]
    if skipped:
        cannot_run("peers.py's server systems", skipped[0])
    rows = table(out.split("server queues:", 1)[1])
    assert sorted((r["system"], r["fsync"]) for r in rows) == sorted(
        (s, f) for s in SERVER_SYSTEMS for f in ("on", "off")
    ), out
    for row in rows:
        assert (row["lost"], row["dup"], row["left"], row["err"]) == ("0", "0", "0", "0"), (row, out)
        assert row["durability"] == DURABILITY[(row["system"], row["fsync"])], row
        for column in ("put/s", "get+ack/s", "1P/s", "2P2C/s"):
            assert float(row[column].replace(",", "")) > 0, (column, row)
        has_floor = row["system"] == "djq-redis"
        assert (row["2P2C:floor"] != "-") == has_floor, row
        assert row["2P2C:lib"] == "-", row  # pgqueuer did not run
    assert server_notes(out) == [], out
    assert "djq-redis" in out.split("microseconds per op", 1)[1]  # djq's server queue in the depth table
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_server_system_whose_library_is_missing_says_why_in_its_row(tmp_path):
    """redis-py missing: the redis-floor row is dashes and one note naming it; no traceback."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "redis.py").write_text("raise ImportError('not here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    out_dir = tmp_path / "queues"
    out_dir.mkdir()
    result = peers("--systems", "redis-floor", "--fsync", "off", tmp_path=out_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    rows = table(result.stdout.split("server queues:", 1)[1])
    assert [(r["system"], r["put/s"], r["lost"]) for r in rows] == [("redis-floor", "-", "-")], result.stdout
    [note] = server_notes(result.stdout)
    assert note.startswith("redis-floor fsync=off: skipped: redis not installed"), note


def test_the_default_set_has_no_servers_and_servers_adds_them(monkeypatch):
    """Without --servers or a --systems pattern naming them, no server system is chosen."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import peers as bench

    assert all(s.server is None for s in bench.parse_args([]).chosen)
    assert all(s.server is None for s in bench.parse_args(["--full"]).chosen)
    added = {s.name for s in bench.parse_args(["--servers"]).chosen if s.server}
    assert added == set(bench.servers.SYSTEMS)
    chosen = bench.parse_args(["--systems", "djq-postgres*,pg-floor"]).chosen
    assert [s.name for s in chosen] == ["djq-postgres", "djq-postgres-for_update", "pg-floor"]


def test_rounds_merge_into_medians_and_sums(monkeypatch):
    """--rounds: a cell's rates are the rounds' median (NaN ignored), its counts their sum, notes once."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import peers as bench

    nan = float("nan")
    merged = bench._merge(
        [
            bench.Multi(n=100, items_per_s=300.0, lost=0, dup=1, note="slow", ran=True),
            bench.Multi(n=100, items_per_s=100.0, lost=2, dup=0, note="slow", ran=True),
            bench.Multi(n=100, items_per_s=nan, lost=0, dup=0, note="", ran=False),
            bench.Multi(n=100, items_per_s=200.0, lost=0, dup=0, note="late", ran=True),
        ]
    )
    assert (merged.n, merged.items_per_s, merged.lost, merged.dup) == (100, 200.0, 2, 1)
    assert (merged.note, merged.ran) == ("slow; late", False)
    assert bench._median([nan, 4.0, 1.0, 2.0, 3.0]) == 2.5
    assert bench._median([nan]) != bench._median([nan])  # NaN: nothing was measured


@pytest.mark.timeout(120)
def test_rounds_print_every_rounds_ratios_beside_the_medians(tmp_path):
    """Two rounds: nothing lost in either, and each of the five ratios is printed for each round."""
    system = f"djq-{STORAGE}-flock-direct"
    result = peers("--rounds", "2", "--systems", f"{system},diskcache", "--fsync", "on", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    [row] = [r for r in table(out) if r["system"] == system]
    assert (row["lost"], row["dup"], row["left"], row["err"]) == ("0", "0", "0", "0"), out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("the ratios of each round"))
    assert "(2 rounds)" in lines[start]
    assert lines[start + 1].split()[2:] == ["put:best", "get:best", "2P2C:dc", "put:floor", "get:floor"]
    cells = lines[start + 2].split()
    assert cells[:2] == [system, "on"], out
    ratios = [float(c) for c in cells[2:]]  # each column's rounds side by side
    assert len(ratios) == 10, out
    assert min(ratios) > 0, out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_the_coroutines_benchmark_prints_a_row_per_backend_and_work(tmp_path):
    """benchmarks/coroutines.py --quick on the file queue and the broker: every cell measured."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "coroutines.py"), "--quick", "--backends", "file,broker",
         "--coroutines", "1,4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("file ", "broker "))]
    assert [(r[0], r[1]) for r in rows] == [
        ("file", "0ms"),
        ("file", "1ms"),
        ("broker", "0ms"),
        ("broker", "1ms"),
    ]
    assert all(len(r) == 7 and float(r[2]) > 0 for r in rows), result.stdout


@pytest.mark.timeout(60)
def test_the_wakeups_benchmark_prints_every_row_and_leaves_no_file(tmp_path):
    """benchmarks/wakeups.py: the six rows, each with a wall and a CPU time; its files removed."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "wakeups.py"), "--ops", "20", "--rounds", "1",
         "--dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:48].strip(): line[48:].split() for line in result.stdout.splitlines()[2:]}
    assert list(rows) == [
        "sleep 100 us",
        "flush",
        "djq put, flush real",
        "djq put, flush replaced by nothing",
        "djq put, flush replaced by a busy wait as long",
        "djq put, flush replaced by a sleep as long",
    ], result.stdout
    assert all(float(cells[0].replace(",", "")) > 0 for cells in rows.values()), result.stdout
    assert rows["djq put, flush replaced by nothing"][2] == "0", result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_wakeups_stand_in_is_the_flush_djq_calls(tmp_path, monkeypatch):
    """Every measured put calls the stand-in once (the rows measure what they say); the real one returns."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import wakeups

    real, flushed = os.fdatasync, []
    wall, cpu = wakeups.puts(tmp_path, 5, flushed.append)
    assert len(flushed) == 5
    assert all(type(fd) is int for fd in flushed)
    assert os.fdatasync is real
    assert wall > 0
    assert cpu >= 0
