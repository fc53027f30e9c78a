"""Bad input and bad environments through the public ``djq.Queue`` API (RELIABILITY 6.4).

Every case checks the same three things: the right djq error (which is also the
matching builtin), the queue file byte-for-byte unchanged, and no temp file left behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import math
import os
import select
import signal
import stat
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import FakeClock, file_bytes

import djq
import djq.files
import djq.storage
from djq.files import temp_files


def _queue(path: Path, clock: FakeClock, lock_kind: str = "flock", **options: Any) -> djq.Queue:
    """A queue in rewrite storage: these tests inject failures into its write path."""
    options.setdefault("storage", "rewrite")
    return djq.Queue(path, lock=lock_kind, clock=clock, **options)


def _seeded(queue: djq.Queue) -> bytes:
    """Put a few tasks and lease one; return the file's bytes."""
    queue.put_many([{"n": 1}, {"n": 2}, "three"])
    assert queue.get() is not None
    data = file_bytes(queue.path)
    assert data is not None
    return data


def _no_temp_files(path: Path) -> None:
    assert temp_files(path) == []
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


# Corrupt, truncated, empty, foreign and newer files


def _bad_files(good: bytes) -> dict[str, bytes]:
    doc = orjson.loads(good)
    newer = dict(doc, version=2)
    return {
        "flipped-byte": good[:40] + b"#" + good[41:],
        "inserted-bytes": good[:60] + b"}]," + good[60:],
        "truncated-1": good[:1],
        "truncated-half": good[: len(good) // 2],
        "truncated-last-byte": good[:-1],
        "empty": b"",
        "nul-filled": b"\0" * len(good),
        "nul-run": good[:50] + b"\0" * 20 + good[70:],
        "bom": b"\xef\xbb\xbf" + good,
        "utf-16": good.decode().encode("utf-16"),
        "foreign-json": b'{"hello": 1}',
        "json-list": b"[]",
        "newer-version": orjson.dumps(newer),
    }


BAD_FILE_NAMES = list(_bad_files(b'{"a": "' + b"x" * 100 + b'"}'))

OPERATIONS: dict[str, Callable[[djq.Queue], object]] = {
    "put": lambda q: q.put({"n": 9}),
    "put_many": lambda q: q.put_many([1, 2]),
    "get": lambda q: q.get(),
    "ack": lambda q: q.ack(djq.Lease(id="1", token="t")),
    "nack": lambda q: q.nack(djq.Lease(id="1", token="t")),
    "extend": lambda q: q.extend(djq.Lease(id="1", token="t")),
    "requeue": lambda q: q.requeue("1"),
    "purge": lambda q: q.purge(),
    "stats": lambda q: q.stats(),
    "peek": lambda q: q.peek(),
    "dead": lambda q: q.dead(),
}


@pytest.mark.parametrize("bad", BAD_FILE_NAMES)
def test_bad_file_is_refused_and_left_unchanged(queue: djq.Queue, bad: str):
    good = _seeded(queue)
    data = _bad_files(good)[bad]
    queue.path.write_bytes(data)
    for name, op in OPERATIONS.items():
        with pytest.raises(djq.CorruptQueueError) as info:
            op(queue)
        assert info.value.path == str(queue.path), name
        assert str(queue.path) in str(info.value), name
        assert info.value.reason, name
        assert file_bytes(queue.path) == data, name
    _no_temp_files(queue.path)


@pytest.mark.parametrize("bad", BAD_FILE_NAMES)
def test_bad_file_is_refused_by_a_fresh_queue(queue_path: Path, clock: FakeClock, bad: str):
    with _queue(queue_path, clock, fsync=False) as first:
        good = _seeded(first)
    data = _bad_files(good)[bad]
    queue_path.write_bytes(data)
    with _queue(queue_path, clock) as fresh:
        with pytest.raises(djq.CorruptQueueError):
            fresh.put("x")
        with pytest.raises(djq.CorruptQueueError):
            fresh.stats()
        assert fresh.check()[0].startswith("corrupt: ")
    assert file_bytes(queue_path) == data
    _no_temp_files(queue_path)


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 100, -2, -1])
def test_truncated_file(queue: djq.Queue, cut: int):
    good = _seeded(queue)
    data = good[:cut]
    queue.path.write_bytes(data)
    with pytest.raises(djq.CorruptQueueError):
        queue.put("x")
    with pytest.raises(djq.CorruptQueueError):
        queue.get()
    assert file_bytes(queue.path) == data


def test_empty_file(queue: djq.Queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_bytes(b"")
    with pytest.raises(djq.CorruptQueueError) as info:
        queue.put("x")
    assert info.value.reason == "the file is empty"
    assert file_bytes(queue.path) == b""


def test_foreign_json_file(queue: djq.Queue):
    queue.path.parent.mkdir(parents=True)
    queue.path.write_bytes(b'{"hello": 1}')
    with pytest.raises(djq.CorruptQueueError) as info:
        queue.put("x")
    assert "not a djq queue" in info.value.reason
    assert not isinstance(info.value, djq.UnsupportedVersion)
    assert file_bytes(queue.path) == b'{"hello": 1}'


def test_newer_format_version(queue: djq.Queue):
    good = _seeded(queue)
    data = orjson.dumps(dict(orjson.loads(good), version=2))
    queue.path.write_bytes(data)
    with pytest.raises(djq.UnsupportedVersion) as info:
        queue.put("x")
    assert isinstance(info.value, djq.CorruptQueueError)
    assert "newer" in info.value.reason
    with pytest.raises(djq.UnsupportedVersion):
        queue.get()
    assert file_bytes(queue.path) == data


def test_corrupt_file_is_refused_again_after_a_good_one(queue: djq.Queue):
    """The cache never hides a corrupt file that replaced a good one."""
    good = _seeded(queue)
    queue.path.write_bytes(good[:-1])
    with pytest.raises(djq.CorruptQueueError):
        queue.put("x")
    queue.path.write_bytes(good)
    queue.put("x")
    assert queue.stats().total == 4


def test_a_file_djq_wrote_is_always_one_djq_reads(queue_path: Path, clock: FakeClock):
    """A put either fits under max_file_bytes or is refused; it never writes an unreadable file."""
    limit = 4000
    with _queue(queue_path, clock, fsync=False, max_file_bytes=limit) as writer:
        for n in range(100):
            before = file_bytes(queue_path)
            try:
                writer.put("x" * 100)
            except djq.DjqError:
                assert file_bytes(queue_path) == before
                break
            with _queue(queue_path, clock, max_file_bytes=limit) as reader:
                assert reader.stats().total == n + 1
        else:
            pytest.fail("100 puts of 100 bytes fit in 4000 bytes")


# Payloads: refused before the lock, the file untouched


@dataclasses.dataclass
class _Point:
    x: int


def _deep(depth: int) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


BAD_PAYLOADS = {
    "set": {1, 2},
    "bytes": b"abc",
    "object": object(),
    "int-key": {1: "a"},
    "lone-surrogate": "\udc80",
    "int-2**64": 2**64,
    "int--2**63-1": -(2**63) - 1,
    "nan": float("nan"),
    "inf": math.inf,
    "-inf": -math.inf,
    "tuple": (1, 2),
    "datetime": datetime.datetime(2026, 1, 1),
    "uuid": uuid.UUID(int=1),
    "dataclass": _Point(1),
    "nested-nan": {"a": [1, {"b": float("nan")}]},
    "oversized": "x" * 200,
    "too-deep": _deep(10_000),
}


@pytest.mark.parametrize("payload", list(BAD_PAYLOADS.values()), ids=list(BAD_PAYLOADS))
def test_bad_payload_never_takes_the_lock(queue_path: Path, clock: FakeClock, lock_kind: str, payload: Any):
    rec = djq.LockRecorder()
    with _queue(queue_path, clock, lock_kind, fsync=False, max_payload_bytes=100, recorder=rec) as queue:
        queue.put({"n": 1})
        assert len(rec) == 1  # the recorder is attached
        before = file_bytes(queue_path)
        rec.clear()
        with pytest.raises(djq.PayloadError) as info:
            queue.put(payload)
        assert isinstance(info.value, ValueError)
        with pytest.raises(djq.PayloadError):
            queue.put_many([{"ok": 1}, payload, {"ok": 2}])
        assert len(rec) == 0
        assert file_bytes(queue_path) == before
        assert queue.stats().total == 1


@pytest.mark.parametrize("payload", [{1, 2}, float("nan"), "x" * 200], ids=["set", "nan", "oversized"])
def test_bad_first_payload_creates_nothing(queue_path: Path, clock: FakeClock, payload: Any):
    rec = djq.LockRecorder()
    with (
        _queue(queue_path, clock, max_payload_bytes=100, recorder=rec) as queue,
        pytest.raises(djq.PayloadError),
    ):
        queue.put(payload)
    assert len(rec) == 0
    assert not queue_path.parent.exists()


def test_oversized_payload_names_the_limit(queue: djq.Queue):
    q = djq.Queue(queue.path, lock=queue.config.lock, max_payload_bytes=1000)
    with pytest.raises(djq.PayloadError, match="over the limit of 1000"):
        q.put("x" * 1000)
    q.close()


def test_payload_types_survive_the_file(queue: djq.Queue):
    payload = {"flag": True, "one": 1, "float": 1.0, "zero": -0.0, "list": [False, 0, 0.0, None]}
    queue.put(payload)
    task = queue.get()
    assert task is not None
    assert repr(task.payload) == repr(payload)


# Read-only folder


class _Os:
    """Stands in for ``os`` inside ``djq.storage``: the real module, with faults on demand.

    Faults hit only djq.storage (not the locks, not pytest). ``replaced`` records every
    ``os.replace``. Set ``active = False`` to take the fault away.
    """

    def __init__(
        self,
        *,
        open_error: OSError | None = None,
        write_error: OSError | None = None,
        fsync_error: OSError | None = None,
    ) -> None:
        self.open_error = open_error
        self.write_error = write_error
        self.fsync_error = fsync_error
        self.active = True
        self.replaced: list[tuple[str, str]] = []
        self.failures = 0
        self._partial = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if self.active and self.open_error is not None and os.fspath(path).endswith(".tmp"):
            self.failures += 1
            raise self.open_error
        return os.open(path, flags, mode, **kw)

    def write(self, fd: int, data: Any) -> int:
        if self.active and self.write_error is not None:
            if not self._partial:  # the disk fills up part way through the file
                self._partial = True
                return os.write(fd, bytes(data[: max(len(data) // 2, 1)]))
            self.failures += 1
            raise self.write_error
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.active and self.fsync_error is not None:
            self.failures += 1
            raise self.fsync_error
        os.fsync(fd)

    def replace(self, src: Any, dst: Any, **kw: Any) -> None:
        self.replaced.append((os.fspath(src), os.fspath(dst)))
        os.replace(src, dst, **kw)


def _storage_error(
    queue: djq.Queue,
    code: int,
    op: Callable[[djq.Queue], object] = lambda q: q.put("x"),
    *,
    lock_too: bool = False,
) -> djq.StorageError:
    """Check ``op`` fails with a StorageError for ``code`` naming the queue (or its lock) file."""
    with pytest.raises(djq.StorageError) as info:
        op(queue)
    exc = info.value
    assert not isinstance(exc, djq.CorruptQueueError)
    assert isinstance(exc, OSError)
    assert exc.errno == code
    paths = {str(queue.path), str(queue.lock.path)} if lock_too else {str(queue.path)}
    assert exc.path in paths
    assert exc.path in str(exc)
    assert isinstance(exc.__cause__, OSError)
    assert exc.__cause__.errno == code
    return exc


READ_ONLY = [
    pytest.param(PermissionError(errno.EACCES, "Permission denied"), id="EACCES"),
    pytest.param(OSError(errno.EROFS, "Read-only file system"), id="EROFS"),
]


@pytest.mark.parametrize("error", READ_ONLY)
def test_read_only_folder(queue: djq.Queue, monkeypatch: pytest.MonkeyPatch, error: OSError):
    before = _seeded(queue)
    fake = _Os(open_error=error)
    monkeypatch.setattr(djq.files, "os", fake)
    for op in (lambda q: q.put("x"), lambda q: q.get(), lambda q: q.purge()):
        _storage_error(queue, error.errno, op)
        assert file_bytes(queue.path) == before
        _no_temp_files(queue.path)
    assert fake.failures == 3
    assert fake.replaced == []
    assert queue.stats().total == 3  # reads still work
    assert [t.payload for t in queue.peek()] == [{"n": 2}, "three"]
    fake.active = False
    queue.put("after")
    assert queue.stats().total == 4


@pytest.mark.parametrize("error", READ_ONLY)
def test_read_only_folder_before_the_first_write(
    queue_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, error: OSError
):
    queue_path.parent.mkdir()
    monkeypatch.setattr(djq.files, "os", _Os(open_error=error))
    with _queue(queue_path, clock) as queue:
        _storage_error(queue, error.errno)
        assert queue.stats().total == 0
    assert not queue_path.exists()
    _no_temp_files(queue_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions: chmod 0500 cannot stop it")
def test_really_read_only_folder(queue: djq.Queue):
    before = _seeded(queue)
    folder = queue.path.parent
    folder.chmod(0o500)
    try:
        _storage_error(queue, errno.EACCES, lock_too=True)  # "soft" cannot create its marker
        assert file_bytes(queue.path) == before
        assert queue.stats().total == 3
        _no_temp_files(queue.path)
    finally:
        folder.chmod(0o700)
    queue.put("after")
    assert queue.stats().total == 4


# Full disk


def _durable(queue_path: Path, clock: FakeClock, lock_kind: str) -> djq.Queue:
    return _queue(queue_path, clock, lock_kind, fsync=True)


@pytest.mark.parametrize("step", ["write", "fsync"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_full_disk(
    queue_path: Path,
    clock: FakeClock,
    lock_kind: str,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    code: int,
):
    with _durable(queue_path, clock, lock_kind) as queue:
        before = _seeded(queue)
        fake = _Os(**{f"{step}_error": OSError(code, os.strerror(code))})
        monkeypatch.setattr(djq.files, "os", fake)
        for op in (lambda q: q.put("x"), lambda q: q.get(), lambda q: q.put_many(["a", "b"])):
            _storage_error(queue, code, op)
            assert file_bytes(queue_path) == before
            _no_temp_files(queue_path)
        assert fake.failures == 3
        assert fake.replaced == []  # a failed write or fsync never leads to a replace
        assert queue.stats().total == 3
        fake.active = False
        queue.put("after")
        assert len(fake.replaced) == 1
        assert queue.stats().total == 4
    with _queue(queue_path, clock, lock_kind) as fresh:  # the kind the queue records
        assert [t.payload for t in fresh.peek()] == [{"n": 2}, "three", "after"]


def test_full_disk_on_the_first_write(queue_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch):
    fake = _Os(write_error=OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(djq.files, "os", fake)
    with _durable(queue_path, clock, "flock") as queue:
        _storage_error(queue, errno.ENOSPC)
        assert not queue_path.exists()
        _no_temp_files(queue_path)
        fake.active = False
        assert queue.put("x") == "1"
    assert file_bytes(queue_path) is not None


def test_failed_fsync_is_not_retried_into_success(
    queue_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    """After a failed fsync the call fails: never a retry that reports success (fsyncgate)."""
    fake = _Os(fsync_error=OSError(errno.EIO, "Input/output error"))
    with _durable(queue_path, clock, "flock") as queue:
        before = _seeded(queue)
        monkeypatch.setattr(djq.files, "os", fake)
        _storage_error(queue, errno.EIO)
    assert fake.failures == 1
    assert fake.replaced == []
    assert file_bytes(queue_path) == before


# Symlinks


def test_symlink_where_the_queue_file_should_be(queue: djq.Queue, tmp_path: Path):
    target = tmp_path / "elsewhere.json"
    with djq.Queue(target, fsync=False) as other:
        other.put("precious")
    before = file_bytes(target)
    queue.path.parent.mkdir(parents=True)
    queue.path.symlink_to(target)
    for name, op in OPERATIONS.items():
        with pytest.raises(djq.StorageError) as info:
            op(queue)
        assert info.value.errno == errno.ELOOP, name
        assert info.value.path == str(queue.path), name
        assert "symbolic link" in str(info.value), name
    assert queue.path.is_symlink()
    assert file_bytes(target) == before
    _no_temp_files(queue.path)


def test_dangling_symlink_where_the_queue_file_should_be(queue: djq.Queue, tmp_path: Path):
    queue.path.parent.mkdir(parents=True)
    queue.path.symlink_to(tmp_path / "planted.json")
    with pytest.raises(djq.StorageError):
        queue.put("x")
    assert not (tmp_path / "planted.json").exists()
    assert queue.path.is_symlink()


@pytest.mark.timeout(10)
def test_fifo_where_the_queue_file_should_be(queue: djq.Queue):
    queue.path.parent.mkdir(parents=True)
    os.mkfifo(queue.path, 0o600)
    with pytest.raises(djq.CorruptQueueError, match="not a regular file"):
        queue.put("x")
    with pytest.raises(djq.CorruptQueueError):
        queue.stats()
    assert stat.S_ISFIFO(os.lstat(queue.path).st_mode)


# Lease misuse


def test_stale_ack_after_expiry_and_release(queue: djq.Queue, clock: FakeClock):
    queue.put({"n": 1})
    first = queue.get(lease=10)
    assert first is not None
    clock.advance(11)
    second = queue.get(lease=10)
    assert second is not None
    assert second.id == first.id
    assert second.token != first.token
    assert second.attempts == 2
    before = file_bytes(queue.path)
    for op in (queue.ack, queue.nack, queue.extend):
        with pytest.raises(djq.LeaseLost) as info:
            op(first)
        assert info.value.task_id == first.id
        assert info.value.token == first.token
        assert file_bytes(queue.path) == before
    queue.ack(second)
    stats = queue.stats()
    assert (stats.acked_total, stats.total) == (1, 0)


def test_double_ack(queue: djq.Queue):
    queue.put({"n": 1})
    task = queue.get()
    assert task is not None
    queue.ack(task)
    before = file_bytes(queue.path)
    for op in (queue.ack, queue.nack, queue.extend):
        with pytest.raises(djq.LeaseLost):
            op(task)
    with pytest.raises(djq.LeaseLost):
        queue.ack(djq.Lease(id=task.id, token=task.token or ""))
    assert file_bytes(queue.path) == before
    assert queue.stats().acked_total == 1


def test_unknown_token(queue: djq.Queue):
    queue.put({"n": 1})
    task = queue.get()
    assert task is not None
    before = file_bytes(queue.path)
    with pytest.raises(djq.LeaseLost):
        queue.ack(djq.Lease(id=task.id, token="not-the-token"))
    with pytest.raises(djq.LeaseLost):
        queue.ack(djq.Lease(id="999", token="x"))
    assert file_bytes(queue.path) == before
    queue.ack(task)


def test_requeue_of_a_task_that_is_not_dead(queue: djq.Queue):
    queue.put_many(["ready", "leased"])
    assert queue.get() is not None
    before = file_bytes(queue.path)
    for task_id in ("1", "2", "3", "999", ""):
        with pytest.raises(djq.UnknownTask) as info:
            queue.requeue(task_id)
        assert isinstance(info.value, LookupError)
        assert info.value.task_id == task_id
    assert file_bytes(queue.path) == before


# The error tree


def test_every_error_is_a_djq_error_and_the_matching_builtin():
    assert issubclass(djq.PayloadError, djq.DjqError)
    assert issubclass(djq.PayloadError, ValueError)
    assert issubclass(djq.StorageError, djq.DjqError)
    assert issubclass(djq.StorageError, OSError)
    assert issubclass(djq.CorruptQueueError, djq.StorageError)
    assert issubclass(djq.CorruptQueueError, ValueError)
    assert issubclass(djq.UnsupportedVersion, djq.CorruptQueueError)
    assert issubclass(djq.LeaseLost, djq.LeaseError)
    assert issubclass(djq.LeaseError, djq.DjqError)
    assert issubclass(djq.UnknownTask, djq.LeaseError)
    assert issubclass(djq.UnknownTask, LookupError)
    assert issubclass(djq.ConfigError, ValueError)
    assert issubclass(djq.LockTimeout, TimeoutError)


def test_errors_carry_their_data(queue: djq.Queue, monkeypatch: pytest.MonkeyPatch):
    _seeded(queue)
    monkeypatch.setattr(djq.files, "os", _Os(open_error=OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(OSError) as storage:  # noqa: PT011 - caught as the builtin on purpose
        queue.put("x")
    assert isinstance(storage.value, djq.StorageError)
    assert storage.value.path == str(queue.path)
    assert storage.value.errno == errno.EROFS
    monkeypatch.undo()

    good = file_bytes(queue.path)
    assert good is not None
    queue.path.write_bytes(good[:10])
    with pytest.raises(ValueError) as corrupt:  # noqa: PT011 - caught as the builtin on purpose
        queue.put("x")
    assert isinstance(corrupt.value, djq.CorruptQueueError)
    assert isinstance(corrupt.value, djq.DjqError)
    assert corrupt.value.path == str(queue.path)
    assert "not valid JSON" in corrupt.value.reason
    assert corrupt.value.reason in str(corrupt.value)

    with pytest.raises(ValueError) as payload:  # noqa: PT011 - caught as the builtin on purpose
        queue.put({1, 2})
    assert isinstance(payload.value, djq.PayloadError)
    assert isinstance(payload.value, djq.DjqError)


# fork()


def _reap(pid: int, ready_fd: int, timeout: float = 30.0) -> tuple[bytes, int]:
    """Read the child's report until it closes the pipe, then reap it; kill it after ``timeout``."""
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ready_fd], [], [], left)[0]:
                raise AssertionError(f"the forked child did not finish within {timeout} s")
            chunk = os.read(ready_fd, 4096)
            if not chunk:
                break
            out += chunk
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(ready_fd)
        _, status = os.waitpid(pid, 0)  # bounded: the child closed the pipe or was killed
    return out, os.waitstatus_to_exitcode(status)


def test_forked_child_reopens_the_queue(queue: djq.Queue):
    queue.put({"from": "parent"})
    parent_lock, parent_file = queue.lock, queue.file
    parent_fd = getattr(parent_lock, "_fd", None)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            os.close(read_fd)
            task_id = queue.put({"from": "child"})
            task = queue.get()
            assert task is not None
            queue.ack(task)
            report = {
                "id": task_id,
                "acked": task.payload,
                "new_lock": queue.lock is not parent_lock,
                "new_file": queue.file is not parent_file,
                "lock_fd": getattr(queue.lock, "_fd", None),
            }
            os.write(write_fd, orjson.dumps(report))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    out, code = _reap(pid, read_fd)
    assert code == 0
    report = orjson.loads(out)
    assert report["id"] == "2"
    assert report["acked"] == {"from": "parent"}
    assert report["new_lock"]
    assert report["new_file"]
    if parent_fd is not None:  # flock: the child locks through its own descriptor
        assert report["lock_fd"] is not None
        assert report["lock_fd"] != parent_fd
    # the parent's handle still works and sees what the child did
    assert queue.lock is parent_lock
    stats = queue.stats()
    assert (stats.acked_total, stats.total) == (1, 1)
    task = queue.get()
    assert task is not None
    assert task.payload == {"from": "child"}
    queue.ack(task)
