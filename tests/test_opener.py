"""``djq.open(target)``: a path or a URL picks the backend; bad targets are one clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, server_url

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
    assert opener._without_name("unix:///run/r.sock") == ("unix:///run/r.sock", None)
    assert opener._without_name("unix:///run/r.sock?name=jobs") == ("unix:///run/r.sock", "jobs")
    url, name = opener._without_name("postgresql:///db?host=/run&name=jobs&options=-c%20x%3D1")
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
