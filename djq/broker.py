"""The broker: one process owns ``Queue.json``, applies clients' events in batches, writes once.

The broker listens on a Unix socket beside the queue file (``Queue.json.sock``). A
client must prove it knows the authkey in ``Queue.json.key`` (0600, new at every start)
before a byte of its requests is read; requests and replies are orjson bytes
(``djq.wire``), never pickle.

One loop, one thread, does all the work: wait until clients have sent something (or a
waiting ``get`` comes due), read one request from every client that has one, then apply
them all in one transaction of the direct ``Queue`` (the same lock, the same pure state
machine, the same atomic write) and write the file once for the batch: group commit.
Only then does it reply, so a ``put`` is answered after the write that holds it. A
``get`` that finds nothing waits in the broker, not in the client, and is served in
arrival order when a task comes. Direct clients may share the file: the broker takes
the file lock for every batch, and while consumers wait it wakes when the files change
(inotify; where that is missing, it looks at their metadata every ``watch_interval``
seconds) to notice their writes.

The broker holds an ``engine.Engine``, not a client: each batch is one
``Engine.transact``. It never touches storage internals. Imports from djq: ``engine``,
``errors``, ``files``, ``metrics``, ``model``, ``ops``, ``state``, ``wire``, ``watch``.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import connection as mpc
from typing import Any, Final

import orjson

from . import files, ops, state, wire
from .engine import Clock, Engine, Transaction
from .errors import BrokerError, DjqError, LeaseError, StorageError
from .metrics import LockRecorder
from .model import DEFAULT_QUEUE_PATH, QueueConfig
from .watch import Watcher, watcher

__all__ = ["Broker", "BrokerMetrics"]

logger = logging.getLogger(__name__)

_WATCH: Final = "watch"  #: selector key data of the inotify descriptor
_WATCH_SAFETY: Final = 1.0  #: seconds; with inotify, waiting gets still look this often
_HANDSHAKE_TIMEOUT: Final = 5.0  #: seconds a new client has to prove it has the key
DEFAULT_WATCH_INTERVAL: Final = 0.05  #: seconds between looks at the file while gets wait
_METRIC_ROWS: Final = 200_000  #: per-batch and per-event rows kept (the newest)


@dataclass(slots=True)
class _Pending:
    """One request on its way through the broker."""

    conn: mpc.Connection
    request: wire.Request
    received_ns: int
    deadline: float | None = None  #: monotonic; a waiting get gives up then
    result: Any = None
    error: BaseException | None = None
    applied_ns: int = 0


@dataclass(slots=True)
class BrokerMetrics:
    """What the broker did: running counters, and the newest per-batch and per-event rows.

    ``batches`` rows are ``(lock_requested_ns, lock_acquired_ns, lock_released_ns, events,
    apply_ns, write_ns, wrote)``; ``events`` rows are ``(op, received_ns, applied_ns, replied_ns,
    ok)``, all ``time.perf_counter_ns`` values.
    """

    requests: int = 0  #: requests received
    applied: int = 0  #: events applied to the state (writes and served gets)
    transactions: int = 0  #: batches applied under the lock
    writes: int = 0  #: times the file was written
    largest_batch: int = 0
    batches: collections.deque[tuple[int, int, int, int, int, int, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=_METRIC_ROWS)
    )
    events: collections.deque[tuple[str, int, int, int, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=_METRIC_ROWS)
    )

    def counters(self) -> dict[str, int]:
        """Return the running counters."""
        return {
            "requests": self.requests,
            "applied": self.applied,
            "transactions": self.transactions,
            "writes": self.writes,
            "largest_batch": self.largest_batch,
        }


class Broker:
    """Serve one queue file to clients over an authenticated Unix socket.

    ``serve()`` blocks until ``shutdown()`` (from another thread or a signal handler) or a
    client's shutdown request. Most code wants ``BrokerManager``, which runs the broker in
    its own process; tests run ``serve()`` in a thread.

    Args:
        path: the queue file.
        config: how the queue is opened (lock, fsync, lease, max_attempts, ...); its path
            is replaced by ``path``.
        clock: wall-clock time source for leases and delays.
        watch_interval: seconds between looks at the file's metadata while gets wait.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
        *,
        config: QueueConfig | None = None,
        clock: Clock = time.time,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
    ) -> None:
        """Describe the broker; nothing is touched until ``serve``."""
        base = config or QueueConfig()
        self.config = QueueConfig.from_json({**base.to_json(), "path": os.fspath(path)})
        self.paths = wire.broker_paths(self.config.path)
        self.metrics = BrokerMetrics()
        self._recorder = LockRecorder()
        self._engine = Engine(self.config, clock=clock, recorder=self._recorder)
        self._clock = clock
        self._watch = watch_interval
        self._watcher: Watcher | None = None  # inotify on the queue's files, where available
        self._clients: list[mpc.Connection] = []
        self._selector = selectors.DefaultSelector()  # kept for the broker's life: one per loop costs
        self._arrivals: collections.deque[mpc.Connection] = collections.deque()
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._due: float | None = None
        self._stopping = False
        self._started_at = 0.0
        self._ready = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    @property
    def ready(self) -> threading.Event:
        """Set once the broker accepts clients."""
        return self._ready

    def shutdown(self) -> None:
        """Ask ``serve`` to return after the batch in hand (safe from any thread)."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a wake-up is already pending, or the broker stopped
            os.write(self._wake_w, b"!")

    # Life cycle

    def serve(self) -> None:
        """Own the queue file and serve clients until shut down.

        Raises:
            BrokerError: another broker already serves this file.
            StorageError: the folder, socket or key file could not be made.
        """
        files.make_folder(self.paths.queue)
        try:
            owner = self._own()
        except BrokerError:
            self._close_files()
            raise
        listener = None
        acceptor = None
        try:
            key = secrets.token_bytes(32)
            files.write_atomic(self.paths.key, key.hex().encode(), fsync=False)  # new at every start
            self.paths.socket.unlink(missing_ok=True)  # stale: its broker is gone (we own the file)
            listener = mpc.Listener(str(self.paths.socket), family="AF_UNIX", backlog=128)
            os.chmod(self.paths.socket, 0o600)
            self._watcher = watcher(
                self.paths.queue.parent, {self.paths.queue.name, f"{self.paths.queue.name}.journal"}
            )
            if self._watcher is not None:
                self._selector.register(self._watcher, selectors.EVENT_READ, _WATCH)
            self._started_at = time.time()
            info = {"pid": os.getpid(), "address": str(self.paths.socket), "started_at": self._started_at}
            os.ftruncate(owner, 0)
            os.pwrite(owner, orjson.dumps(info), 0)
            acceptor = threading.Thread(
                target=self._accept, args=(listener, key), daemon=True, name="djq-accept"
            )
            acceptor.start()
            logger.info("broker %d serving %s at %s", os.getpid(), self.config.path, self.paths.socket)
            self._ready.set()
            self._loop()
        except OSError as exc:
            if isinstance(exc, DjqError):
                raise
            raise StorageError(
                f"broker for {self.config.path} failed: {exc}", path=str(self.paths.socket)
            ) from exc
        finally:
            self._stopping = True
            if acceptor is not None:  # closing the listener does not wake a blocked accept
                self._connect_to_self()
                acceptor.join(5.0)
            if listener is not None:
                listener.close()  # removes the socket file
            for conn in self._clients + list(self._arrivals):
                conn.close()
            self.paths.key.unlink(missing_ok=True)
            os.ftruncate(owner, 0)
            os.close(owner)  # releases the flock: another broker may start
            self._close_files()

    def _close_files(self) -> None:
        self._selector.close()
        if self._watcher is not None:
            self._watcher.close()
        self._engine.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _own(self) -> int:
        """Take the broker's flock on its info file, or raise if another broker has it."""
        fd = os.open(self.paths.info, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerError(f"a broker already serves {self.config.path} ({self.paths.info})") from None
        return fd

    def _accept(self, listener: mpc.Listener, key: bytes) -> None:
        """Accept connections; each proves it has the key in a thread of its own."""
        while not self._stopping:
            try:
                conn = listener.accept()
            except OSError:
                return  # the listener was closed
            if self._stopping:  # woken by _connect_to_self
                conn.close()
                return
            threading.Thread(target=self._handshake, args=(conn, key), daemon=True).start()

    def _connect_to_self(self) -> None:
        """Wake the accept thread so it sees ``_stopping`` and returns."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.paths.socket))

    def _handshake(self, conn: mpc.Connection, key: bytes) -> None:
        try:
            _receive_timeout(conn, _HANDSHAKE_TIMEOUT)  # a client that sends nothing is dropped
            mpc.deliver_challenge(conn, key)
            mpc.answer_challenge(conn, key)
            hello = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
            try:
                wire.check_hello(hello)
            except BrokerError as exc:
                conn.send_bytes(wire.encode_error(exc))
                raise
            conn.send_bytes(wire.encode_ok({"protocol": wire.PROTOCOL}))
            _receive_timeout(conn, 0.0)  # afterwards, reads wait as long as the loop wants
        except Exception as exc:  # a stranger, garbage, or a client that left: never the broker's end
            logger.warning("refused a client: %s: %s", type(exc).__name__, exc)
            conn.close()
            return
        self._arrivals.append(conn)
        self._wake()

    # The loop

    def _loop(self) -> None:
        while not self._stopping:
            ready = self._selector.select(self._timeout())
            batch: list[_Pending] = []
            for key, _ in ready:
                if key.data is _WATCH:
                    self._watcher.drain()  # type: ignore[union-attr]  # a change: _run looks if gets wait
                elif key.data is None:
                    os.read(self._wake_r, 4096)
                    while self._arrivals:
                        conn = self._arrivals.popleft()
                        self._clients.append(conn)
                        self._selector.register(conn, selectors.EVENT_READ, conn)
                else:
                    self._receive(key.data, batch)
            self._run(batch)

    def _timeout(self) -> float | None:
        """Seconds until the loop must look again by itself; None: only when woken."""
        if not self._waiting:
            return None
        now = time.monotonic()
        wait = self._watch if self._watcher is None else _WATCH_SAFETY  # inotify wakes us on a change
        for pending in self._waiting:
            if pending.deadline is not None:
                wait = min(wait, pending.deadline - now)
        if self._due is not None:
            wait = min(wait, self._due - self._clock())
        return max(wait, 0.0)

    def _receive(self, conn: mpc.Connection, batch: list[_Pending]) -> None:
        try:
            data = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
        except (EOFError, OSError):
            self._drop(conn)
            return
        received = time.perf_counter_ns()
        self.metrics.requests += 1
        try:
            request = wire.decode_request(data, max_payload_bytes=self.config.max_payload_bytes)
        except Exception as exc:  # a client's bad request is its error, never the end of the loop
            logger.warning("refused a request: %s: %s", type(exc).__name__, exc)
            self._reply(conn, wire.encode_error(exc))
            return
        batch.append(_Pending(conn, request, received))

    def _drop(self, conn: mpc.Connection) -> None:
        if not conn.closed:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn)
        conn.close()
        self._clients = [c for c in self._clients if c is not conn]
        self._waiting = collections.deque(p for p in self._waiting if p.conn is not conn)

    def _reply(self, conn: mpc.Connection, data: bytes) -> bool:
        try:
            conn.send_bytes(data)
            return True
        except OSError:  # the client left; a lease it was sent expires by itself
            self._drop(conn)
            return False

    def _run(self, batch: list[_Pending]) -> None:
        writes = [
            p for p in batch if p.request.op is not None and p.request.op.writes and not p.request.op.waits
        ]
        for pending in batch:
            if pending.request.op is not None and pending.request.op.waits:
                wait = pending.request.wait
                pending.deadline = None if wait is None else time.monotonic() + wait
                self._waiting.append(pending)
        served: list[_Pending] = []
        if writes or (self._waiting and (batch or self._something_changed())):
            served = self._transact(writes)
        for pending in writes + served:
            self._answer(pending)
        for pending in batch:
            if pending.request.op is None or not pending.request.op.writes:
                self._serve_read(pending)
        self._give_up_waiting()

    def _something_changed(self) -> bool:
        """True if a direct client wrote the file or a delayed task or lease came due."""
        due = self._due is not None and self._due <= self._clock()
        return due or self._engine.has_changed()

    def _transact(self, writes: list[_Pending]) -> list[_Pending]:
        """Apply the writes, then serve waiting gets in order; one lock, at most one write."""
        served: list[_Pending] = []
        marks: list[int] = []
        start = time.perf_counter_ns()
        writes_before = self._engine.storage.writes

        def change(tx: Transaction) -> None:
            marks.append(time.perf_counter_ns())
            for pending in writes:
                try:
                    pending.result = tx.apply(pending.request.op)  # type: ignore[arg-type]
                except LeaseError as exc:  # changes nothing; only this request fails
                    pending.error = exc
            while self._waiting:
                pending = self._waiting[0]
                result = tx.apply(pending.request.op)  # type: ignore[arg-type]
                if not result:  # None, or no tasks for a lease_many
                    break
                pending.result = result
                served.append(self._waiting.popleft())
            self._due = state.next_deadline(tx.state, now=tx.now)
            marks.append(time.perf_counter_ns())

        try:
            self._engine.transact("batch", change)
        except (DjqError, OSError) as exc:  # the whole batch failed: the file is as it was
            logger.warning("a batch of %d failed: %s", len(writes) + len(served), exc)
            for pending in writes + served:
                pending.error = exc
            self._due = None
        end = time.perf_counter_ns()
        wrote = self._engine.storage.writes != writes_before
        applied_at = self._record_batch(start, end, marks, len(writes) + len(served), wrote)
        for pending in writes + served:
            pending.applied_ns = applied_at
        return served

    def _record_batch(self, start: int, end: int, marks: list[int], size: int, wrote: bool) -> int:
        """Count one batch and keep its row; return when it was applied (ns)."""
        m = self.metrics
        m.transactions += 1
        m.applied += size
        m.writes += wrote
        m.largest_batch = max(m.largest_batch, size)
        rows = self._recorder.rows()
        self._recorder.clear()
        requested, acquired, released = rows[-1][1:] if rows else (start, start, end)
        applied_at = marks[-1] if len(marks) == 2 else end
        apply_ns = applied_at - marks[0] if len(marks) == 2 else 0
        write_ns = max(released - applied_at, 0) if wrote else 0
        m.batches.append((requested, acquired, released, size, apply_ns, write_ns, wrote))
        return applied_at

    def _answer(self, pending: _Pending) -> None:
        if pending.error is not None:
            data = wire.encode_error(pending.error)
        else:
            data = wire.encode_ok(pending.result)
        ok = self._reply(pending.conn, data)
        self.metrics.events.append(
            (
                pending.request.op.name if pending.request.op is not None else pending.request.control,
                pending.received_ns,
                pending.applied_ns,
                time.perf_counter_ns(),
                ok and pending.error is None,
            )
        )

    def _give_up_waiting(self) -> None:
        """Answer None (or []) to waiting gets whose time is up (or that never wanted to wait)."""
        now = time.monotonic()
        still: collections.deque[_Pending] = collections.deque()
        for pending in self._waiting:
            if pending.deadline is not None and pending.deadline <= now:
                pending.result = [] if isinstance(pending.request.op, ops.LeaseMany) else None
                self._answer(pending)
            else:
                still.append(pending)
        self._waiting = still

    def _serve_read(self, pending: _Pending) -> None:
        """Answer a request that changes nothing (stats, peek, dead, check, ping, metrics, shutdown)."""
        request = pending.request
        try:
            if request.op is not None:
                pending.result = self._engine.run(request.op)
            elif request.control == "ping":
                pending.result = self.info()
            elif request.control == "metrics":
                pending.result = self._metrics(rows=request.args["rows"])
            else:  # shutdown
                self._stopping = True
        except (DjqError, OSError) as exc:
            pending.error = exc
        self._answer(pending)

    def info(self) -> dict[str, Any]:
        """Return who this broker is: pid, address, start time, config, clients and waiting gets."""
        return {
            "pid": os.getpid(),
            "address": str(self.paths.socket),
            "started_at": self._started_at,
            "config": self.config.to_json(),
            "clients": len(self._clients),
            "waiting": len(self._waiting),
        }

    def _metrics(self, *, rows: bool) -> dict[str, Any]:
        result: dict[str, Any] = self.metrics.counters()
        if rows:
            result["batches"] = list(self.metrics.batches)
            result["events"] = list(self.metrics.events)
        return result


def _receive_timeout(conn: mpc.Connection, seconds: float) -> None:
    """Make reads on the connection's socket fail after ``seconds`` (0: wait for ever)."""
    whole = int(seconds)
    sock = socket.socket(fileno=os.dup(conn.fileno()))  # shares the socket, so its options
    try:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
        )
    finally:
        sock.close()
