"""The broker: one process owns ``Queue.json``, applies clients' events in batches, writes once.

Clients get in through the broker's ``endpoint`` (a Unix socket beside the queue file, an
authkey handshake, a hello); each is then a ``channel.Channel``, non-blocking with bounded
buffers. Requests and replies are orjson bytes (``djq.wire``), never pickle.

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

No client can stall or exhaust the loop. An exception from one client or one request
(djq's own or any other) is logged and answered or drops that client, never the loop; a
batch that fails is retried request by request, so one bad request fails alone.

The broker holds an ``engine.Engine``, not a client: each batch is one
``Engine.transact``. It never touches storage internals. Imports from djq: ``channel``,
``endpoint``, ``engine``, ``errors``, ``metrics``, ``model``, ``ops``, ``state``, ``wire``,
``watch``.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from . import ops, state, wire
from .channel import MAX_BUFFERED_BYTES, MAX_OUTGOING_BYTES, MAX_PENDING_REPLIES, Channel, Channels
from .endpoint import Endpoint
from .engine import Clock, Engine, Transaction
from .errors import BrokerError, DjqError, LeaseError, StorageError
from .metrics import BrokerMetrics, LockRecorder
from .model import DEFAULT_QUEUE_PATH, QueueConfig
from .watch import Watcher, watcher

__all__ = ["MAX_BUFFERED_BYTES", "MAX_OUTGOING_BYTES", "MAX_PENDING_REPLIES", "Broker", "BrokerMetrics"]

logger = logging.getLogger(__name__)

_WATCH: Final = "watch"  #: selector key data of the inotify descriptor
_WATCH_SAFETY: Final = 1.0  #: seconds; with inotify, waiting gets still look this often
DEFAULT_WATCH_INTERVAL: Final = 0.05  #: seconds between looks at the file while gets wait
SPIN: Final = 100e-6  #: seconds the loop looks for the next request before it sleeps (``Broker(spin=)``)


@dataclass(slots=True)
class _Pending:
    """One request on its way through the broker."""

    conn: Channel
    request: wire.Request
    received_ns: int
    deadline: float | None = None  #: monotonic; a waiting get gives up then
    result: Any = None
    error: BaseException | None = None
    applied_ns: int = 0
    answered: bool = False


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
        spin: seconds the loop looks for the next request without sleeping, after a batch,
            before it blocks. A lone client sends its next call within tens of µs of a
            reply, and a process that blocked takes about as long again to wake (on this
            VM most of a bare socket round trip): spinning 100 µs cuts a lone client's put
            from about 140 to 100 µs, and costs an idle broker one spin (0: never spin).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
        *,
        config: QueueConfig | None = None,
        clock: Clock = time.time,
        watch_interval: float = DEFAULT_WATCH_INTERVAL,
        spin: float = SPIN,
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
        self._spin = spin
        self._watcher: Watcher | None = None  # inotify on the queue's files, where available
        self._watching = False  # the watcher is on the selector (only while gets wait)
        self._selector = selectors.DefaultSelector()  # kept for the broker's life: one per loop costs
        self._clients = Channels(self._selector, dropped=self._dropped, failed=self._failed)
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._due: float | None = None
        self._stopping = False
        self._started_at = 0.0
        self._ready = threading.Event()
        self._endpoint = Endpoint(self.paths, arrived=self._clients.arrive, failed=self._accept_failed)

    @property
    def ready(self) -> threading.Event:
        """Set once the broker accepts clients."""
        return self._ready

    def shutdown(self) -> None:
        """Ask ``serve`` to return after the batch in hand (safe from any thread)."""
        self._stopping = True
        self._clients.wake()

    # Life cycle

    def serve(self) -> None:
        """Own the queue file and serve clients until shut down.

        Raises:
            BrokerError: another broker already serves this file.
            StorageError: the folder, socket or key file could not be made.
        """
        try:
            self._endpoint.own()
            self._open()
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
            self._close()

    def _open(self) -> None:
        """Watch the queue's files, then let clients in."""
        names = {self.paths.queue.name, f"{self.paths.queue.name}.journal"}
        self._watcher = watcher(self.paths.queue.parent, names)  # on the selector while gets wait
        self._started_at = time.time()
        info = {"pid": os.getpid(), "address": str(self.paths.socket), "started_at": self._started_at}
        self._endpoint.open(info)

    def _close(self) -> None:
        """Stop accepting, send what replies the sockets take, close everything, let go of the file."""
        self._stopping = True
        self._endpoint.stop()
        self._clients.close()
        self._endpoint.close()
        self._close_files()

    def _close_files(self) -> None:
        self._selector.close()
        if self._watcher is not None:
            self._watcher.close()
        self._engine.close()

    def _accept_failed(self) -> None:
        self.metrics.accept_errors += 1

    # The loop

    def _loop(self) -> None:
        while not self._stopping:
            batch: list[_Pending] = []
            try:
                self._step(batch)
            except Exception as exc:  # a bug of the broker's own: fail this batch, never the loop
                self._fail_batch(batch, exc)
            finally:
                self._clients.register()
                self._watch_while_waiting()

    def _watch_while_waiting(self) -> None:
        """Wake on the files' changes only while gets wait: else the broker's own writes wake it.

        Events keep coming while the watcher is off the selector, so a change made before it
        is back (a direct client's put) still wakes the loop; an old one costs one more look.
        """
        if self._watcher is None or self._watching == bool(self._waiting):
            return
        if self._watching:
            self._selector.unregister(self._watcher)
        else:
            self._selector.register(self._watcher, selectors.EVENT_READ, _WATCH)
        self._watching = not self._watching

    def _step(self, batch: list[_Pending]) -> None:
        """Wait for clients (or a waiting get's time), take one request from each, run them."""
        ready = self._selector.select(0.0)
        if not ready and not self._clients.queued:
            until = time.perf_counter() + self._spin
            while not ready and time.perf_counter() < until:
                ready = self._selector.select(0.0)
            if not ready:
                ready = self._selector.select(self._timeout())
        for key, mask in ready:
            if key.data is _WATCH:
                self._watcher.drain()  # type: ignore[union-attr]  # a change: _run looks if gets wait
            elif key.data is None:  # the wake-up pipe
                self._clients.admit()
            else:
                self._clients.serve(key.data, mask)
        self._take_requests(batch)
        self._run(batch)

    def _fail_batch(self, batch: list[_Pending], exc: Exception) -> None:
        """Answer the batch's requests with the loop's own failure."""
        self._failed("the broker's loop", exc)
        for pending in batch:
            if not pending.answered:
                pending.error = exc
                self._answer(pending)
        self._waiting = collections.deque(p for p in self._waiting if not p.answered)
        time.sleep(0.01)  # a fault that repeats must not spin

    def _dropped(self, client: Channel, fault: bool) -> None:
        """Count a client dropped at fault; forget its waiting gets."""
        self.metrics.dropped += fault
        self._waiting = collections.deque(p for p in self._waiting if p.conn is not client)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.errors += 1
        logger.error("%s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)

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

    def _take_requests(self, batch: list[_Pending]) -> None:
        """Take one whole message from every client that has one, in the order they connected."""
        for client in self._clients.with_requests():
            if client.has_request():
                self._clients.guard(client, self._request, client, batch)

    def _request(self, client: Channel, batch: list[_Pending]) -> None:
        data = client.take()
        client.parse()  # the next message's prefix may be here already: over the limit, drop now
        received = time.perf_counter_ns()
        self.metrics.requests += 1
        client.count_request()
        try:
            request = wire.decode_request(data, max_payload_bytes=self.config.max_payload_bytes)
        except Exception as exc:  # a client's bad request is its error, never the end of the loop
            logger.warning("refused a request: %s: %s", type(exc).__name__, exc)
            client.pending -= 1
            self._clients.reply(client, wire.encode_error(exc))
            return
        batch.append(_Pending(client, request, received))

    def _run(self, batch: list[_Pending]) -> None:
        writes = [
            p for p in batch if p.request.op is not None and p.request.op.writes and not p.request.op.waits
        ]
        self._wait(batch)
        served: list[_Pending] = []
        if writes or (self._waiting and (batch or self._something_changed())):
            served = self._transact(writes)
        for pending in writes + served:
            self._answer(pending)
        for pending in batch:
            if pending.request.op is None or not pending.request.op.writes:
                self._serve_read(pending)
        self._give_up_waiting()

    def _wait(self, batch: list[_Pending]) -> None:
        """Put the batch's gets in line, each with its deadline."""
        for pending in batch:
            if pending.request.op is not None and pending.request.op.waits and not pending.conn.closed:
                wait = pending.request.wait
                pending.deadline = None if wait is None else time.monotonic() + wait
                self._waiting.append(pending)

    def _something_changed(self) -> bool:
        """True if a direct client wrote the file or a delayed task or lease came due."""
        due = self._due is not None and self._due <= self._clock()
        try:
            return due or self._engine.has_changed()
        except Exception as exc:  # the transaction will meet the same fault and fail its requests
            logger.warning("cannot tell whether the queue changed: %s: %s", type(exc).__name__, exc)
            return True

    def _transact(self, writes: list[_Pending]) -> list[_Pending]:
        """Apply the writes, then serve waiting gets in order; one lock, at most one write.

        If the batch fails and more than one request is in it, each write is retried alone
        (then the waiting gets): a request that cannot be applied fails by itself, never
        its neighbours. A failure of the storage (an ``OSError``) fails the whole batch.
        """
        served, failure = self._attempt(writes, serve=True)
        if failure is None:
            return served
        size = len(writes) + len(served)
        logger.warning("a batch of %d failed: %s: %s", size, type(failure).__name__, failure)
        if size <= 1 or isinstance(failure, OSError):
            for pending in writes + served:
                pending.error = failure
            return served
        return self._retry_alone(writes, served)

    def _retry_alone(self, writes: list[_Pending], served: list[_Pending]) -> list[_Pending]:
        """Put the served gets back in line, apply each write alone, then serve the gets again."""
        for pending in reversed(served):  # back in line, in their order
            pending.result = None
            self._waiting.appendleft(pending)
        for pending in writes:
            pending.result, pending.error = None, None
            _, error = self._attempt([pending], serve=False)
            if error is not None:
                pending.error = error
        served, failure = self._attempt([], serve=True)
        for pending in served if failure is not None else ():
            pending.error = failure
        return served

    def _attempt(self, writes: list[_Pending], *, serve: bool) -> tuple[list[_Pending], Exception | None]:
        """Run one transaction: ``writes``, then (if ``serve``) waiting gets; return served, failure."""
        served: list[_Pending] = []
        marks: list[int] = []
        start = time.perf_counter_ns()
        writes_before = self._engine.storage.writes
        failure: Exception | None = None

        def change(tx: Transaction) -> None:
            marks.append(time.perf_counter_ns())
            self._apply(tx, writes)
            if serve:
                self._serve_waiting(tx, served)
            self._due = state.next_deadline(tx.state, now=tx.now)
            marks.append(time.perf_counter_ns())

        try:
            self._engine.transact("batch", change)
        except Exception as exc:  # the whole transaction failed: the file is as it was
            failure = exc
            self._due = None
        end = time.perf_counter_ns()
        wrote = self._engine.storage.writes != writes_before
        size = len(writes) + len(served)
        applied_at = self._record_batch(start, end, marks, size if failure is None else 0, wrote)
        for pending in writes + served:
            pending.applied_ns = applied_at
        return served, failure

    @staticmethod
    def _apply(tx: Transaction, writes: list[_Pending]) -> None:
        for pending in writes:
            try:
                pending.result = tx.apply(pending.request.op)  # type: ignore[arg-type]
            except LeaseError as exc:  # changes nothing; only this request fails
                pending.error = exc

    def _serve_waiting(self, tx: Transaction, served: list[_Pending]) -> None:
        """Serve waiting gets in arrival order while there are tasks for them."""
        while self._waiting:
            pending = self._waiting[0]
            if pending.conn.closed:  # its client left: it takes no task
                self._waiting.popleft()
                continue
            result = tx.apply(pending.request.op)  # type: ignore[arg-type]
            if not result:  # None, or no tasks for a lease_many
                break
            pending.result = result
            served.append(self._waiting.popleft())

    def _record_batch(self, start: int, end: int, marks: list[int], size: int, wrote: bool) -> int:
        """Count one batch and keep its row; return when it was applied (ns)."""
        m = self.metrics
        m.transactions += 1
        m.applied += size
        m.writes += wrote
        m.largest_batch = max(m.largest_batch, size)
        rows = self._recorder.rows()
        self._recorder.clear()
        requested, acquired, released = rows[0][1:] if rows else (start, start, end)  # 0: the batch's
        applied_at = marks[-1] if len(marks) == 2 else end
        apply_ns = applied_at - marks[0] if len(marks) == 2 else 0
        write_ns = max(end - applied_at, 0) if wrote else 0  # the append, and its fdatasync after release
        m.batches.append((requested, acquired, released, size, apply_ns, write_ns, wrote))
        return applied_at

    def _answer(self, pending: _Pending) -> None:
        if pending.answered:
            return
        pending.answered = True
        pending.conn.pending -= 1
        ok = self._clients.reply(pending.conn, _encode(pending))
        request = pending.request
        name = request.op.name if request.op is not None else request.control
        row = (
            name,
            pending.received_ns,
            pending.applied_ns,
            time.perf_counter_ns(),
            ok and pending.error is None,
        )
        self.metrics.events.append(row)

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
        self._waiting = collections.deque(p for p in still if not p.conn.closed)

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
        except Exception as exc:  # djq's own or not, this request's error, never the loop's
            if not isinstance(exc, DjqError | OSError):
                self._failed(f"a {request.op.name if request.op else request.control} request", exc)
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
            **self._clients.buffers(),
        }

    def _metrics(self, *, rows: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            **self.metrics.counters(),
            "clients": len(self._clients),
            **self._clients.buffers(),
        }
        if rows:
            result["batches"] = list(self.metrics.batches)
            result["events"] = list(self.metrics.events)
        return result


def _encode(pending: _Pending) -> bytes:
    """Return the reply to ``pending``; a result that cannot be encoded or sent becomes its error."""
    if pending.error is not None:
        return wire.encode_error(pending.error)
    try:
        data = wire.encode_ok(pending.result)
    except Exception as exc:  # a result that cannot be encoded is this request's error
        pending.error = exc
        data = wire.encode_error(exc)
    if len(data) > wire.MAX_MESSAGE_BYTES:  # the client could not read it: say so instead
        pending.error = BrokerError(
            f"the reply is {len(data)} bytes, over the wire's limit of {wire.MAX_MESSAGE_BYTES}; "
            "ask for less at a time"
        )
        data = wire.encode_error(pending.error)
    return data
