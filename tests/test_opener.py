"""``djq.open(target)``: a path or a URL picks the backend; bad targets are one clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_djq, server_url

import djq
from djq import opener


def test_a_path_opens_the_file_queue(tmp_path):
    """A str or a Path, or a file: URL, gives the file queue, options passed on."""
    for target in (tmp_path / "a.json", str(tmp_path / "b.json"), f"file:{tmp_path}/c.json"):
        with djq.open(target, fsync=False, lease=5.0) as q:
            assert isinstance(q, djq.Queue)
            assert q.config.lease == 5.0
            q.put("x")
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["a.json", "b.json", "c.json"]


def test_a_file_queue_takes_no_name(tmp_path):
    """name= picks a queue inside a server; for a file it is refused, naming the field."""
    with pytest.raises(djq.ConfigError) as info:
        djq.open(tmp_path / "q.json", name="jobs")
    assert info.value.field == "name"


def test_an_unknown_scheme_names_the_known_ones():
    """A URL of no backend is one ConfigError listing the schemes."""
    with pytest.raises(djq.ConfigError, match=r"unknown queue URL scheme 'mysql'.*postgresql.*redis"):
        djq.open("mysql://localhost/db")


def test_a_missing_client_library_names_the_extra(monkeypatch):
    """Without psycopg (or redis-py) the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(djq.ConfigError, match=r"pip install 'djq\[postgres\]'"):
        djq.open("postgresql://localhost/db")
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(djq.ConfigError, match=r"pip install 'djq\[redis\]'"):
        djq.open("redis://localhost/0")


def test_the_name_query_parameter_is_taken_out_of_the_url():
    """?name=jobs picks the queue and is not passed to the server's client; other parameters stay."""
    assert opener.split_name("unix:///run/r.sock") == ("unix:///run/r.sock", None)
    assert opener.split_name("unix:///run/r.sock?name=jobs") == ("unix:///run/r.sock", "jobs")
    url, name = opener.split_name("postgresql:///db?host=/run&name=jobs&options=-c%20x%3D1")
    assert (url, name) == ("postgresql:///db?host=/run&options=-c%20x%3D1", "jobs")


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_name_in_the_url_and_as_an_option_must_agree(kind):
    """One queue, named twice differently, is refused; the same name twice is fine."""
    url = server_url(kind)
    joined = "&" if "?" in url else "?"
    with pytest.raises(djq.ConfigError) as info:
        djq.open(f"{url}{joined}name=a", name="b", fsync=False)
    assert info.value.field == "name"
    with djq.open(f"{url}{joined}name=opener-a", name="opener-a", fsync=False) as q:
        q.put("x")
        with djq.open(url, name="opener-a", fsync=False) as same:
            assert same.stats().ready == 1
        q.purge()


def test_import_djq_imports_no_server_client_library():
    """psycopg and redis are imported only when a server URL is opened."""
    code = "import sys, djq; print(sorted(m for m in ('psycopg', 'redis') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_the_cli_takes_a_server_url_as_queue(kind, tmp_path):
    """djq --queue URL put/get/ack/stats work on the server's queue; file-only commands are one line."""
    url = server_url(kind)
    queue = f"{url}{'&' if '?' in url else '?'}name=cli-{kind}"
    put = run_djq("--queue", queue, "--no-fsync", "put", '{"n": 1}', cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    got = run_djq("get", "--queue", queue, "--no-fsync", "--json", cwd=tmp_path)
    task = json.loads(got.stdout)
    assert task["payload"] == {"n": 1}
    acked = run_djq("--queue", queue, "--no-fsync", "ack", task["id"], task["token"], cwd=tmp_path)
    assert acked.returncode == 0, acked.stderr
    stats = json.loads(run_djq("--queue", queue, "--no-fsync", "stats", "--json", cwd=tmp_path).stdout)
    assert (stats["put_total"], stats["acked_total"], stats["total"]) == (1, 1, 0)
    for args, says in (
        (["compact"], "compact works on a queue file"),
        (["--lock", "soft", "stats"], "lock is an option of the file queue"),
        (["--broker", "stats"], "--broker serves a queue file"),
    ):
        refused = run_djq("--queue", queue, "--no-fsync", *args, cwd=tmp_path)
        assert refused.returncode == 2
        assert says in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not list(tmp_path.iterdir())  # no queue file was made on the way


def test_the_cli_names_an_unreachable_server_in_one_line(tmp_path):
    """A server that is not there: exit 1, one line naming it, no traceback."""
    result = run_djq("--queue", f"postgresql://nobody@/x?host={tmp_path}", "stats", cwd=tmp_path)
    assert result.returncode == 1
    assert "is unavailable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
