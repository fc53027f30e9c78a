"""``BrokerClient``: the one client API, served by a broker instead of the file lock.

``djq.connect(path)`` returns one. It is an ``api.BaseQueue`` whose ``_submit`` sends the
operation to the broker and waits for its reply, so it has ``Queue``'s methods and
semantics; ``Producer``, ``Consumer`` and the simulation work with either; the same errors
come back (``LeaseLost``, ``ConfigError``, ``StorageError``, ...), rebuilt from their data.
Operations are validated when built, here, so a bad argument fails without a round trip.
A client whose broker is gone raises ``BrokerUnavailable`` at once (the socket closes when
the broker dies: "lost the broker"); one that does not answer raises it after the timeout
("did not reply", "did not complete the handshake"); the next call connects again, so
work continues once a broker is back. Each call borrows a connection of its own, so
threads sharing a client never wait for each other's replies. The handshake, the checks and
the errors' wording are functions here that ``djq.aremote`` (the async client) shares.
Imports from djq: ``api``, ``errors``, ``model``, ``ops``, ``process``, ``wire``.
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any, Final, TypeVar

from . import ops, process, wire
from .api import BaseQueue
from .errors import BrokerProtocolError, BrokerUnavailable, ConfigError
from .model import DEFAULT_QUEUE_PATH, QueueConfig, check_seconds

__all__ = ["DEFAULT_REPLY_TIMEOUT", "BrokerClient", "connect"]

R = TypeVar("R")
DEFAULT_REPLY_TIMEOUT: Final = 60.0  #: seconds a call waits for its reply (beyond a get's own wait)
_POLL_CHUNK: Final = 3600.0  #: seconds; longer waits are polled in pieces (poll takes at most ~24 days)
_MAX_IDLE: Final = 8  #: idle connections a client keeps for its threads' next calls
_TIMED_OUT: Final = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT)
_MAX_SOCKET_TIMEOUT: Final = _POLL_CHUNK * 24  #: seconds; the longest socket timeout set (longer: inf)
_FIRST_READ: Final = 1 << 16  #: bytes asked of a reply's first read (most replies are far shorter)
_READ_CHUNK: Final = 1 << 20  #: bytes asked of each further read
SPIN: Final = 100e-6  #: seconds a call polls for its reply before it blocks (``connect(spin=)``)


def connect(
    path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
    *,
    timeout: float = DEFAULT_REPLY_TIMEOUT,
    spin: float = SPIN,
) -> BrokerClient:
    """Connect to the broker serving ``path``; return a client with ``Queue``'s methods.

    ``timeout`` bounds the connection (connect, authkey handshake, hello) and then each
    call's wait for its reply. ``spin``: seconds a call polls for its reply before it
    blocks, while replies come that fast (``BrokerClient``; 0: never).

    Raises:
        BrokerUnavailable: no broker serves this file (start one: ``djq broker start``), or
            it did not complete the handshake within ``timeout``.
        BrokerProtocolError: the broker runs another version of djq's wire protocol.
    """
    client = BrokerClient(path, timeout=timeout, spin=spin)
    client.ping()
    return client


class _Timeout(Exception):
    """The broker did not answer in time (the caller words the error)."""


class _Spinner:
    """Whether a call polls for its reply before it blocks, from how long replies have taken.

    A process blocked in ``read`` is woken by the broker's reply, and on this VM the wake-up
    is most of a bare socket round trip. Polling for up to ``spin`` seconds first saves it
    when the reply comes that soon: a lone client, with a core to itself, as the broker
    has. When replies take longer (clients and the broker share too few cores, a ``get``
    waits for a task), polling only takes CPU the broker needs. So a call polls only while
    the round trip, smoothed over the last calls and measured whether it polled or not,
    is within 1.5 times ``spin``; a few fast replies in a row start it again. (1.5: on
    this VM a lone client's replies take about 110 to 125 us polled, 145 blocking; two
    clients' 170 to 350, where polling gained nothing and took the broker's CPU:
    ``benchmarks/broker.py``.)
    The async client never polls: it would hold up its event loop.
    """

    __slots__ = ("rtt", "spin")

    def __init__(self, spin: float) -> None:
        self.spin = spin
        self.rtt = 0.0  #: seconds, smoothed (1/8 of each new round trip): what the last calls took

    def wanted(self) -> bool:
        """Whether the next call should poll before it blocks."""
        return self.rtt <= 1.5 * self.spin and self.spin > 0.0

    def took(self, seconds: float) -> None:
        """Count one call's round trip: from its request sent to its reply read."""
        self.rtt += (seconds - self.rtt) / 8

    def poll(self, fd: int, since: float) -> bool:
        """Poll ``fd`` until it has something to read (True) or ``spin`` seconds from ``since`` pass."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        until = since + self.spin
        while not poller.poll(0):
            if time.perf_counter() >= until:
                return False
        return True


class BrokerClient(BaseQueue):
    """A queue whose calls a broker serves. Thread-safe; reconnects in a forked child.

    Each call borrows a connection of its own (an idle one, or a new one), so one thread's
    waiting ``get`` never holds up another thread's calls; idle connections are kept for
    the next calls (at most a few). A connection whose reply did not come whole is closed,
    so a late reply never answers the next call.

    Args:
        path: the queue file the broker serves.
        timeout: seconds to wait for a reply before giving up on the broker
            (``BrokerUnavailable``); a waiting ``get`` adds its own timeout to this. It also
            bounds connecting (and the authkey handshake).
        spin: seconds a call polls for its reply before it blocks (0: never). It polls
            only while replies come within 1.5 times that, smoothed over the last calls (a
            lone client: about 60 us less per call on this VM, ``benchmarks/broker.py``);
            when clients and the broker share too few cores, replies are slower and no
            call polls.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
        *,
        timeout: float = DEFAULT_REPLY_TIMEOUT,
        spin: float = SPIN,
    ) -> None:
        """Describe the client; it connects at the first call."""
        self._timeout = reply_timeout(timeout)
        if spin is None:
            raise ConfigError("spin must be a number of seconds (0: never poll), not None", field="spin")
        check_seconds("spin", spin, low=0.0, high=1.0)
        self._spinner = _Spinner(float(spin))
        self._paths = wire.broker_paths(path)
        self._mutex = threading.Lock()  # guards the idle list only: never held while talking to the broker
        self._idle: list[mpc.Connection] = []
        self._generation = 0  # close() and fork move it on: connections out at that time are closed on return
        self._pid = process.pid()
        self._config: QueueConfig | None = None

    @property
    def path(self) -> Path:
        """The queue file."""
        return self._paths.queue

    @property
    def config(self) -> QueueConfig:
        """The broker's queue configuration (asked when connecting)."""
        if self._config is None:
            self.ping()
        return self._config  # type: ignore[return-value]  # ping set it

    def __repr__(self) -> str:
        return f"BrokerClient({str(self.path)!r})"

    def close(self) -> None:
        """Close the connections; the broker and the queue carry on (a call in progress finishes)."""
        with self._mutex:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn in idle:
            conn.close()

    # Connections

    def _borrow(self) -> tuple[mpc.Connection, int]:
        with self._mutex:
            if self._pid != process.pid():  # forked: never share the parent's connections
                idle, self._idle = self._idle, []
                self._pid = process.pid()
                self._generation += 1
                for conn in idle:
                    conn.close()  # the child's copies only; the parent's sockets stay open
            generation = self._generation
            if self._idle:
                return self._idle.pop(), generation
        return self._connect(), generation

    def _give_back(self, conn: mpc.Connection, generation: int) -> None:
        with self._mutex:
            if generation == self._generation and self._pid == process.pid() and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> mpc.Connection:
        """Connect, prove we have the key, and exchange hellos, all within the timeout."""
        return mpc.Connection(handshake(self._paths, self._timeout).detach())

    def _receive(self, fd: int, limit: float | None, what: str, *, poll: bool = True) -> bytes:
        """Wait up to ``limit`` seconds (None: for ever) for a whole reply; return its bytes."""
        return _receive(fd, limit, what, poll=poll)

    def _call(self, data: bytes, wait: float | None = 0.0) -> Any:
        """Send one request and return its reply's value (or raise the error it carries)."""
        forever = wait is None or math.isinf(wait) or math.isinf(self._timeout)
        limit = None if forever else wait + self._timeout  # type: ignore[operator]  # not None here
        conn, generation = self._borrow()
        spinner = self._spinner
        try:
            _send(conn.fileno(), data, "the request")
            sent = time.perf_counter()
            # a call that does not wait is bounded by the socket's own timeout: no poll needed
            poll = wait != 0.0 or self._timeout > _MAX_SOCKET_TIMEOUT
            if spinner.wanted() and spinner.poll(conn.fileno(), sent):
                poll = False  # the reply is here: read it
            reply = self._receive(conn.fileno(), limit, "the reply", poll=poll)
            spinner.took(time.perf_counter() - sent)
        except _Timeout as exc:
            conn.close()  # a late reply must never answer the next call
            raise late(self._paths, self._timeout, limit, request=str(exc) == "the request") from None
        except (OSError, EOFError) as exc:
            conn.close()
            raise lost(self._paths, exc, "waiting for a reply") from None
        except BaseException:
            conn.close()  # interrupted (KeyboardInterrupt, ...): the reply may still come
            raise
        self._give_back(conn, generation)  # the whole reply came: the connection is clean
        return wire.decode_reply(reply)

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Send ``op`` to the broker (a lease waits there, up to ``wait`` seconds); return its result."""
        return decode(op, self._call(wire.encode_request(op, wait), wait if op.waits else 0.0))

    # The broker's own calls

    def ping(self) -> dict[str, Any]:
        """Return the broker's ``info()``: pid, address, start time, config, clients, waiting gets."""
        info = check_ping(self._call(wire.encode_control("ping")))
        self._config = QueueConfig.from_json(info["config"])
        return info

    def metrics(self, *, rows: bool = False) -> dict[str, Any]:
        """Return the broker's counters (and, with ``rows``, its per-batch and per-event rows)."""
        return dict(self._call(wire.encode_control("metrics", rows=rows)))

    def shutdown(self) -> None:
        """Ask the broker to stop after answering this request."""
        self._call(wire.encode_control("shutdown"))


# What the sync and the async client share: the handshake, the framing's timeouts, the errors' wording


def reply_timeout(timeout: float) -> float:
    """Check a client's ``timeout``: seconds, finite (every reply is bounded: a dead broker must not hang)."""
    if timeout is None:
        raise ConfigError("timeout must be a finite number of seconds, not None", field="timeout")
    check_seconds("timeout", timeout, low=0.0, high=math.inf)
    return float(timeout)


def handshake(paths: wire.BrokerPaths, timeout: float) -> socket.socket:
    """Connect to the broker, prove we have the key and exchange hellos, all within ``timeout`` s.

    The challenge is ``multiprocessing.connection``'s (``answer_challenge``, then
    ``deliver_challenge``), then djq's hello. Blocking: the async client runs it in a thread.

    Returns:
        the connected socket, blocking, with send and receive timeouts of ``timeout`` (a
        reply that stops halfway fails too).

    Raises:
        BrokerUnavailable: no broker serves the file, it refused the key, or it did not
            complete the handshake within ``timeout``.
        BrokerProtocolError: the broker runs another version of djq's wire protocol.
    """
    deadline = time.monotonic() + timeout
    try:
        key = bytes.fromhex(paths.key.read_text())
    except (OSError, ValueError) as exc:
        raise no_broker(paths, exc) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_remaining(deadline))
        sock.connect(str(paths.socket))
        sock.setblocking(True)
    except TimeoutError:
        sock.close()
        raise BrokerUnavailable(
            f"the broker at {paths.socket} did not accept a connection within {timeout:g} s "
            "(stopped, or overloaded?)"
        ) from None
    except OSError as exc:
        sock.close()
        raise no_broker(paths, exc) from None
    try:
        _greet(sock, key, deadline)
        _socket_timeouts(sock.fileno(), timeout)  # a reply that stops halfway fails, too
    except AuthenticationError as exc:
        sock.close()
        raise BrokerUnavailable(f"the broker at {paths.socket} refused this client: {exc}") from None
    except (_Timeout, OSError) as exc:
        sock.close()
        if isinstance(exc, BrokerUnavailable):
            raise
        if isinstance(exc, _Timeout) or exc.errno in _TIMED_OUT:
            raise BrokerUnavailable(
                f"the broker at {paths.socket} did not complete the handshake within "
                f"{timeout:g} s (stopped, or overloaded?)"
            ) from None
        raise lost(paths, exc, "during the handshake") from None
    except EOFError as exc:
        sock.close()
        raise lost(paths, exc, "during the handshake") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _greet(sock: socket.socket, key: bytes, deadline: float) -> None:
    """The challenge both ways, then the hellos, through a ``Connection`` over a copy of ``sock``."""
    conn = mpc.Connection(os.dup(sock.fileno()))  # the same socket (and options); closing it leaves sock open
    try:
        _socket_timeouts(conn.fileno(), _remaining(deadline))
        mpc.answer_challenge(conn, key)
        mpc.deliver_challenge(conn, key)
        _send(conn.fileno(), wire.encode_hello(), "its handshake")
        wire.decode_reply(_receive(conn.fileno(), _remaining(deadline), "its handshake"))
    finally:
        conn.close()


def _receive(fd: int, limit: float | None, what: str, *, poll: bool = True) -> bytes:
    """Wait up to ``limit`` seconds (None: for ever) for a whole reply on socket ``fd``; return its bytes.

    Without ``poll`` the read blocks for as long as the socket's own timeout allows: what a
    call that does not wait wants, without a poll's system call.

    Raises:
        _Timeout: nothing came in time, or the reply stopped halfway for the socket's timeout.
        OSError, EOFError: the connection broke.
    """
    if poll:
        deadline = None if limit is None else time.monotonic() + limit
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(math.ceil(1000 * (_POLL_CHUNK if deadline is None else _remaining(deadline)))):
            if deadline is not None and time.monotonic() >= deadline:
                raise _Timeout(what)
    try:
        return _read_message(fd)
    except OSError as exc:
        if exc.errno in _TIMED_OUT:
            raise _Timeout(what) from None
        raise


def _read_message(fd: int) -> bytes:
    """Read one message (``wire.frame_size``) from blocking socket ``fd``: most often in one read.

    Raises:
        EOFError: the connection closed before a message began.
        OSError: it closed mid-message, a read timed out, or the broker announced a message
            over the limit or sent more than one reply.
    """
    data = os.read(fd, _FIRST_READ)
    if not data:
        raise EOFError
    try:
        while (found := wire.frame_size(data)) is None:
            data += _more(fd, 12)
    except ValueError as exc:
        raise OSError(f"the broker {exc}") from None
    header, size = found
    end = header + size
    if len(data) < end:
        whole = bytearray(data)
        while len(whole) < end:
            whole += _more(fd, end - len(whole))
        data = bytes(whole)
    if len(data) > end:  # one request, one reply: anything more is not the broker's protocol
        raise OSError(f"the broker sent {len(data) - end} bytes past its reply")
    return data[header:]


def _more(fd: int, wanted: int) -> bytes:
    """Read up to ``wanted`` more bytes of a message begun; OSError if the connection closed."""
    chunk = os.read(fd, min(wanted, _READ_CHUNK))
    if not chunk:
        raise OSError("got end of file during message")
    return chunk


def _send(fd: int, data: bytes, what: str) -> None:
    """Send one framed message on blocking socket ``fd`` (its SO_SNDTIMEO bounds each write)."""
    view = memoryview(wire.frame(data))
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        if exc.errno in _TIMED_OUT:
            raise _Timeout(what) from None
        raise


def decode(op: ops.Op[R], value: Any) -> R:
    """Return ``op``'s result from a reply's value.

    Raises:
        BrokerProtocolError: the value is not a result of ``op``.
    """
    try:
        return wire.decode_result(op, value)
    except ValueError as exc:
        raise BrokerProtocolError(f"the broker sent a malformed reply: {exc}") from None


def check_ping(info: Any) -> dict[str, Any]:
    """Return a ping's answer, the broker's ``info()``; ``BrokerProtocolError`` if it is not one."""
    if not isinstance(info, dict):
        raise BrokerProtocolError(f"a ping was answered with {info!r:.100}")
    return info


def no_broker(paths: wire.BrokerPaths, exc: BaseException) -> BrokerUnavailable:
    """The error of a client that found no broker (no key, no socket, refused)."""
    return BrokerUnavailable(
        f"no broker serves {paths.queue} ({type(exc).__name__}: {exc}); "
        f"start one with: djq --queue {paths.queue} broker start"
    )


def lost(paths: wire.BrokerPaths, exc: BaseException, when: str) -> BrokerUnavailable:
    """The error of a connection that broke ``when`` (an ``EOFError``: the broker closed it)."""
    detail = "it closed the connection" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
    return BrokerUnavailable(f"lost the broker at {paths.socket} {when}: {detail}")


def late(paths: wire.BrokerPaths, timeout: float, limit: float | None, *, request: bool) -> BrokerUnavailable:
    """The error of a call that timed out: its request unread in ``timeout`` s, or no reply in ``limit`` s."""
    if request:
        what = f"did not read the request within {timeout:g} s"
    else:
        what = "did not reply" + ("" if limit is None else f" within {limit:g} s")
    return BrokerUnavailable(
        f"the broker at {paths.socket} {what} (stopped, overloaded or stuck?); "
        "this call's connection is closed"
    )


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (at least a millisecond: 0 would mean "no timeout")."""
    left = deadline - time.monotonic()
    return 1e-3 if left < 1e-3 else min(left, _POLL_CHUNK)


def _socket_timeouts(fd: int, seconds: float) -> None:
    """Socket timeouts of ``seconds`` (inf: never), clamped to what the socket option holds."""
    wire.socket_timeouts(fd, 0.0 if math.isinf(seconds) else min(max(seconds, 1e-3), _MAX_SOCKET_TIMEOUT))
