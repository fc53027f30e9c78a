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

No client can stall or exhaust the loop: after the handshake every connection is
non-blocking; the loop frames messages itself (``multiprocessing.connection``'s framing, a
4-byte big-endian length, or -1 and 8 bytes, then the bytes) from a per-connection buffer
of at most ``MAX_BUFFERED_BYTES``, so a client that stops mid-message holds only its own
buffer. Replies leave through a bounded outgoing buffer: a client whose replies are unsent
is not read from until they leave, one past ``MAX_OUTGOING_BYTES`` or with more than
``MAX_PENDING_REPLIES`` requests unanswered is dropped. An exception from one client or
one request (djq's own or any other) is logged and answered or drops that client, never
the loop; a batch that fails is retried request by request, so one bad request fails
alone. The accept thread survives running out of descriptors (it logs, backs off, retries).

The broker holds an ``engine.Engine``, not a client: each batch is one
``Engine.transact``. It never touches storage internals. Imports from djq: ``engine``,
``errors``, ``files``, ``metrics``, ``model``, ``ops``, ``state``, ``wire``, ``watch``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
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

__all__ = ["MAX_BUFFERED_BYTES", "MAX_OUTGOING_BYTES", "MAX_PENDING_REPLIES", "Broker", "BrokerMetrics"]

logger = logging.getLogger(__name__)

_WATCH: Final = "watch"  #: selector key data of the inotify descriptor
_WATCH_SAFETY: Final = 1.0  #: seconds; with inotify, waiting gets still look this often
_HANDSHAKE_TIMEOUT: Final = 5.0  #: seconds a new client has to prove it has the key
DEFAULT_WATCH_INTERVAL: Final = 0.05  #: seconds between looks at the file while gets wait
_METRIC_ROWS: Final = 200_000  #: per-batch and per-event rows kept (the newest)
_READ_CHUNK: Final = 1 << 16  #: bytes asked of one read
_READ_ROUND: Final = 1 << 20  #: bytes read from one client before the loop serves the others
MAX_BUFFERED_BYTES: Final = (
    wire.MAX_MESSAGE_BYTES + 12 + _READ_CHUNK
)  #: a connection's unparsed bytes, at most
MAX_OUTGOING_BYTES: Final = (
    wire.MAX_MESSAGE_BYTES + 12
)  #: a connection's unsent replies; past it, it is dropped
MAX_PENDING_REPLIES: Final = 64  #: requests of one connection read but not answered; past it, it is dropped
_MAX_HANDSHAKES: Final = 128  #: handshakes at once; more connections wait in the listen backlog
_ACCEPT_BACKOFF: Final = (0.01, 1.0)  #: seconds the accept thread waits after a failed accept: first, longest
_LOST: Final = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN)


class _Drop(Exception):
    """This client broke the rules (or left): close its connection, keep serving the others."""

    def __init__(self, why: str, *, fault: bool = True) -> None:
        super().__init__(why)
        self.fault = fault  #: False: a client that simply hung up (not logged, not counted)


class _Client:
    """One authenticated connection: its socket (non-blocking), unparsed bytes and unsent replies."""

    __slots__ = ("closed", "conn", "fd", "frame", "inbox", "mask", "outbox", "pending")

    def __init__(self, conn: mpc.Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.inbox = bytearray()  #: bytes read and not yet taken as a message
        self.outbox = bytearray()  #: reply bytes not yet sent
        self.frame: tuple[int, int] | None = None  #: (header bytes, body bytes) of the message in the inbox
        self.pending = 0  #: requests read and not yet answered
        self.mask = 0  #: the events it is registered for (0: not registered)
        self.closed = False

    def parse(self) -> bool:
        """Read the inbox's length prefix; True if a whole message is buffered.

        Raises:
            _Drop: the prefix announces a message over ``MAX_MESSAGE_BYTES`` (or a negative one).
        """
        if self.frame is None:
            if len(self.inbox) < 4:
                return False
            (size,) = struct.unpack_from("!i", self.inbox)
            header = 4
            if size == -1:  # multiprocessing's long form: 8 more bytes of length
                if len(self.inbox) < 12:
                    return False
                (size,) = struct.unpack_from("!Q", self.inbox, 4)
                header = 12
            if not 0 <= size <= wire.MAX_MESSAGE_BYTES:
                raise _Drop(f"announced a message of {size} bytes (the limit is {wire.MAX_MESSAGE_BYTES})")
            self.frame = (header, size)
        header, size = self.frame
        return len(self.inbox) >= header + size

    def take(self) -> bytes:
        """Remove and return the whole message ``parse`` found."""
        header, size = self.frame  # type: ignore[misc]  # parse() returned True
        data = bytes(self.inbox[header : header + size])
        del self.inbox[: header + size]
        self.frame = None
        return data

    def wants(self) -> int:
        """The events to wait for: writable while replies wait; readable unless a message or reply waits."""
        if self.outbox:
            return selectors.EVENT_WRITE  # no new request from a client that does not read its replies
        if self.frame is not None and len(self.inbox) >= sum(self.frame):
            return 0  # a whole message waits for the next batch
        return selectors.EVENT_READ


@dataclass(slots=True)
class _Pending:
    """One request on its way through the broker."""

    conn: _Client
    request: wire.Request
    received_ns: int
    deadline: float | None = None  #: monotonic; a waiting get gives up then
    result: Any = None
    error: BaseException | None = None
    applied_ns: int = 0
    answered: bool = False


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
    dropped: int = 0  #: clients dropped for breaking a bound, sending garbage, or failing
    errors: int = 0  #: unexpected exceptions the loop survived (each logged)
    accept_errors: int = 0  #: failed accepts (out of descriptors, ...) the accept thread survived
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
            "dropped": self.dropped,
            "errors": self.errors,
            "accept_errors": self.accept_errors,
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
        self._clients: dict[_Client, None] = {}  # in the order they connected
        self._selector = selectors.DefaultSelector()  # kept for the broker's life: one per loop costs
        self._arrivals: collections.deque[mpc.Connection] = collections.deque()
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._due: float | None = None
        self._stopping = False
        self._started_at = 0.0
        self._ready = threading.Event()
        self._handshakes = threading.BoundedSemaphore(_MAX_HANDSHAKES)
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
        try:
            files.make_folder(self.paths.queue)
            owner = self._own()
        except BaseException as exc:
            self._close_files()
            if isinstance(exc, OSError) and not isinstance(exc, DjqError):
                raise files.error("cannot own the broker's info file", self.paths.info, exc) from exc
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
            for client in list(self._clients):
                with contextlib.suppress(Exception):
                    self._flush(client)  # a last reply (a shutdown's) leaves if the socket takes it
                client.conn.close()
            for conn in self._arrivals:
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
        """Accept connections; each proves it has the key in a thread of its own.

        A failed accept (out of descriptors, say) is logged and retried after a pause that
        grows while it keeps failing: the pending connection waits in the backlog, and the
        broker accepts again as soon as descriptors are free. Only a closed listener ends it.
        """
        pause = _ACCEPT_BACKOFF[0]
        while not self._stopping:
            try:
                conn = listener.accept()
            except OSError as exc:
                if self._stopping or exc.errno in (errno.EBADF, errno.EINVAL):
                    return  # the listener was closed
                self.metrics.accept_errors += 1
                logger.error("cannot accept a client (retrying in %.2f s): %s", pause, exc)
                time.sleep(pause)
                pause = min(pause * 2, _ACCEPT_BACKOFF[1])
                continue
            except Exception as exc:  # never the end of accepting: log, pause, carry on
                self.metrics.accept_errors += 1
                logger.exception("cannot accept a client: %s", exc)
                time.sleep(pause)
                continue
            pause = _ACCEPT_BACKOFF[0]
            while not (self._stopping or self._handshakes.acquire(timeout=0.5)):
                pass  # strangers that never finish their handshake hold at most _MAX_HANDSHAKES threads
            if self._stopping:  # woken by _connect_to_self
                conn.close()
                return
            try:
                threading.Thread(target=self._handshake, args=(conn, key), daemon=True).start()
            except RuntimeError as exc:  # can't start new thread: refuse this one, keep accepting
                self._handshakes.release()
                self.metrics.accept_errors += 1
                logger.error("refused a client: cannot start its handshake: %s", exc)
                conn.close()

    def _connect_to_self(self) -> None:
        """Wake the accept thread so it sees ``_stopping`` and returns."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(self.paths.socket))

    def _handshake(self, conn: mpc.Connection, key: bytes) -> None:
        try:
            self._handshake_one(conn, key)
        finally:
            self._handshakes.release()

    def _handshake_one(self, conn: mpc.Connection, key: bytes) -> None:
        try:
            _socket_timeouts(conn.fileno(), _HANDSHAKE_TIMEOUT)  # a client that stalls is dropped
            mpc.deliver_challenge(conn, key)
            mpc.answer_challenge(conn, key)
            hello = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
            try:
                wire.check_hello(hello)
            except BrokerError as exc:
                conn.send_bytes(wire.encode_error(exc))
                raise
            conn.send_bytes(wire.encode_ok({"protocol": wire.PROTOCOL}))
            _socket_timeouts(conn.fileno(), 0.0)
            os.set_blocking(conn.fileno(), False)  # from now on the loop reads and writes when it can
        except Exception as exc:  # a stranger, garbage, or a client that left: never the broker's end
            logger.warning("refused a client: %s: %s", type(exc).__name__, exc)
            conn.close()
            return
        self._arrivals.append(conn)
        self._wake()

    # The loop

    def _loop(self) -> None:
        while not self._stopping:
            batch: list[_Pending] = []
            try:
                ready = self._selector.select(0.0 if self._queued else self._timeout())
                for key, mask in ready:
                    if key.data is _WATCH:
                        self._watcher.drain()  # type: ignore[union-attr]  # a change: _run looks if gets wait
                    elif key.data is None:
                        os.read(self._wake_r, 4096)
                        self._admit()
                    else:
                        self._guard(key.data, self._serve_events, key.data, mask)
                self._take_requests(batch)
                self._run(batch)
            except Exception as exc:  # a bug of the broker's own: fail this batch, never the loop
                self._failed("the broker's loop", exc)
                for pending in batch:
                    if not pending.answered:
                        pending.error = exc
                        self._answer(pending)
                self._waiting = collections.deque(p for p in self._waiting if not p.answered)
                time.sleep(0.01)  # a fault that repeats must not spin
            finally:
                for client in list(self._clients):
                    self._guard(client, self._update, client)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.errors += 1
        logger.error("%s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)

    def _admit(self) -> None:
        while self._arrivals:
            conn = self._arrivals.popleft()
            client = _Client(conn)
            self._clients[client] = None
            try:
                self._update(client)
            except Exception as exc:
                self._failed("registering a client", exc)
                self._drop(client, "cannot be registered")

    def _guard(self, client: _Client, action: Any, *args: Any) -> None:
        """Run ``action(*args)`` for one client: if it breaks a bound, leaves or fails, drop only it."""
        try:
            action(*args)
        except _Drop as exc:
            self._drop(client, str(exc), fault=exc.fault)
        except Exception as exc:
            self._failed("serving a client", exc)
            self._drop(client, f"{type(exc).__name__}: {exc}")

    def _update(self, client: _Client) -> None:
        """Register the client for the events it wants now (none: a whole message waits)."""
        if client.closed:
            return
        wants = client.wants()
        if wants == client.mask:
            return
        if client.mask == 0:
            self._selector.register(client.fd, wants, client)
        elif wants == 0:
            self._selector.unregister(client.fd)
        else:
            self._selector.modify(client.fd, wants, client)
        client.mask = wants

    @property
    def _queued(self) -> bool:
        """True if a client has a whole message buffered (the loop must not wait for the socket)."""
        return any(c.mask == 0 and not c.closed for c in self._clients)

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

    def _serve_events(self, client: _Client, mask: int) -> None:
        if client.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
        if mask & selectors.EVENT_READ and not client.closed:
            self._read(client)

    def _read(self, client: _Client) -> None:
        """Read what the client sent, without blocking, until a message is whole (or a round's worth).

        Raises:
            _Drop: the client left, or announced a message over the limit.
        """
        got = 0
        while not client.parse() and got < _READ_ROUND:
            try:
                data = os.read(client.fd, _READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise _Drop(f"its connection failed: {exc}") from None
            if not data:
                raise _Drop("it hung up mid-message", fault=True) if client.inbox else _Drop("", fault=False)
            client.inbox += data
            got += len(data)

    def _take_requests(self, batch: list[_Pending]) -> None:
        """Take one whole message from every client that has one, in the order they connected."""
        for client in list(self._clients):
            if not (client.closed or client.outbox) and client.frame is not None and client.parse():
                self._guard(client, self._request, client, batch)

    def _request(self, client: _Client, batch: list[_Pending]) -> None:
        data = client.take()
        client.parse()  # the next message's prefix may be here already: over the limit, drop now
        received = time.perf_counter_ns()
        self.metrics.requests += 1
        client.pending += 1
        if client.pending > MAX_PENDING_REPLIES:
            raise _Drop(f"has more than {MAX_PENDING_REPLIES} requests unanswered")
        try:
            request = wire.decode_request(data, max_payload_bytes=self.config.max_payload_bytes)
        except Exception as exc:  # a client's bad request is its error, never the end of the loop
            logger.warning("refused a request: %s: %s", type(exc).__name__, exc)
            client.pending -= 1
            self._reply(client, wire.encode_error(exc))
            return
        batch.append(_Pending(client, request, received))

    def _drop(self, client: _Client, why: str, *, fault: bool = True) -> None:
        if client.closed:
            return
        if fault:
            logger.warning("dropped a client: %s", why)
            self.metrics.dropped += 1
        client.closed = True
        if client.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(client.fd)
            client.mask = 0
        client.conn.close()
        client.inbox = bytearray()
        client.outbox = bytearray()
        self._clients.pop(client, None)
        self._waiting = collections.deque(p for p in self._waiting if p.conn is not client)

    def _reply(self, client: _Client, data: bytes) -> bool:
        """Queue one reply and send what the socket takes now; False if the client is gone."""
        if client.closed:
            return False
        size = len(data)
        header = struct.pack("!i", size) if size <= 0x7FFF_FFFF else struct.pack("!iQ", -1, size)
        client.outbox += header
        client.outbox += data
        self._guard(client, self._flush, client)
        if not client.closed and len(client.outbox) > MAX_OUTGOING_BYTES:
            self._drop(client, f"does not read its replies ({len(client.outbox)} bytes unsent)")
        return not client.closed

    def _flush(self, client: _Client) -> None:
        """Send as much of the outbox as the socket takes, without blocking.

        Raises:
            _Drop: the client left.
        """
        while client.outbox:
            try:
                sent = os.write(client.fd, client.outbox[:_READ_ROUND])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise _Drop(f"it left before its reply was sent ({exc.strerror or exc})") from None
            del client.outbox[:sent]

    def _run(self, batch: list[_Pending]) -> None:
        writes = [
            p for p in batch if p.request.op is not None and p.request.op.writes and not p.request.op.waits
        ]
        for pending in batch:
            if pending.request.op is not None and pending.request.op.waits and not pending.conn.closed:
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
            for pending in writes:
                try:
                    pending.result = tx.apply(pending.request.op)  # type: ignore[arg-type]
                except LeaseError as exc:  # changes nothing; only this request fails
                    pending.error = exc
            while serve and self._waiting:
                pending = self._waiting[0]
                if pending.conn.closed:  # its client left: it takes no task
                    self._waiting.popleft()
                    continue
                result = tx.apply(pending.request.op)  # type: ignore[arg-type]
                if not result:  # None, or no tasks for a lease_many
                    break
                pending.result = result
                served.append(self._waiting.popleft())
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
        if pending.answered:
            return
        pending.answered = True
        pending.conn.pending -= 1
        if pending.error is not None:
            data = wire.encode_error(pending.error)
        else:
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
            **self._buffers(),
        }

    def _buffers(self) -> dict[str, int]:
        """Bytes the broker holds for its clients: in all, and for the client holding most."""
        sizes = [len(c.inbox) + len(c.outbox) for c in self._clients]
        return {"buffered_bytes": sum(sizes), "largest_buffer": max(sizes, default=0)}

    def _metrics(self, *, rows: bool) -> dict[str, Any]:
        result: dict[str, Any] = {**self.metrics.counters(), "clients": len(self._clients), **self._buffers()}
        if rows:
            result["batches"] = list(self.metrics.batches)
            result["events"] = list(self.metrics.events)
        return result


def _socket_timeouts(fd: int, seconds: float) -> None:
    """Make blocking reads and writes on socket ``fd`` fail after ``seconds`` (0: wait for ever)."""
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock = socket.socket(fileno=os.dup(fd))  # shares the socket, so its options
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.close()
