"""Shared fixtures: a queue path under tmp_path, a fake clock, a queue per lock kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import djq
from djq.model import LockKind

LOCK_KINDS = [k.value for k in LockKind]


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue_path(tmp_path: Path) -> Path:
    return tmp_path / "q" / "Queue.json"


@pytest.fixture(params=LOCK_KINDS)
def lock_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def queue(queue_path: Path, lock_kind: str, clock: FakeClock) -> djq.Queue:
    """A direct queue on a fresh file, one per lock kind, on the fake clock, without fsync."""
    q = djq.Queue(queue_path, lock=lock_kind, clock=clock, fsync=False, poll_interval=None)
    yield q
    q.close()


@pytest.fixture(autouse=True)
def _no_queue_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so a default path can never touch the repo's data/."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("DJQ_"):
            monkeypatch.delenv(name)


def file_bytes(path: Path) -> bytes | None:
    """The exact bytes on disk, or None when the file does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
