"""``AsyncBrokerClient``: the broker's client as coroutines; the event loop never waits on the broker.

It is ``remote.BrokerClient`` over asyncio streams: the same socket, handshake, wire and
errors (``BrokerUnavailable`` when the broker is gone or silent, a new connection at the
next call, ``BrokerProtocolError`` for a malformed reply), the same ``ping``, ``metrics``
and ``shutdown``, as coroutines. The handshake (``multiprocessing.connection``'s challenge
both ways, then djq's hello) is ``remote.handshake`` itself, run in a thread: a few
blocking round trips, once per connection. The connected socket then goes to
``asyncio.open_unix_connection``, and requests and replies travel in the same framing
(``_Stream``: a 4-byte big-endian signed length, or -1 and 8 bytes, then the bytes), so
the broker cannot tell the two clients apart. Each call borrows a connection of its own
(an idle one, or a new one), so a get waiting in the broker never holds up another call.

Cancellation. A call that is not a get is one request and its reply, run through
``AsyncBaseQueue._unbroken``: a cancel lets the reply come (within ``timeout``), then
raises, so the call either happened or did not, and the queue's state says which. A get
waits in the broker, so a cancel ends that wait: its connection is shut for writing, and
the broker, reading the end of the stream, drops the waiting get with the connection
(``channel.Channel.read``, ``Broker._dropped``). A reply sent before that (a task leased
to this get) is still read, and the task is given back with ``release`` on another
connection; nothing stays leased. A get cancelled before its request left sends nothing.
Imports from djq: ``aio``, ``errors``, ``model``, ``ops``, ``remote``, ``wire``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
from pathlib import Path
from typing import Any, Final, TypeVar

from . import ops, remote, wire
from .aio import AsyncBaseQueue
from .errors import BrokerError, BrokerUnavailable
from .model import DEFAULT_QUEUE_PATH, QueueConfig
from .remote import DEFAULT_REPLY_TIMEOUT

__all__ = ["AsyncBrokerClient"]

R = TypeVar("R")
#: idle connections kept for the next calls: one per call in flight, for up to this many coroutines
#: (a call beyond them connects and does the handshake again, about a millisecond)
MAX_IDLE: Final = 128
_READ_LIMIT: Final = 1 << 20  #: bytes a stream buffers before it pauses reading (a longer reply still comes)


class AsyncBrokerClient(AsyncBaseQueue):
    """A queue whose calls a broker serves, as coroutines (``BrokerClient``'s semantics).

    Any number of coroutines of one event loop may share it; close it (``async with``) before
    that loop ends (a later loop gets new connections). It connects at the first call, which
    also learns the broker's configuration (``config`` is known from then on).

    Args:
        path: the queue file the broker serves.
        timeout: seconds to wait for a reply before giving up on the broker
            (``BrokerUnavailable``); a waiting ``get`` adds its own timeout to this. It also
            bounds connecting (and the authkey handshake).
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, *, timeout: float = DEFAULT_REPLY_TIMEOUT
    ) -> None:
        """Describe the client; it connects at the first call."""
        self._timeout = remote.reply_timeout(timeout)
        self._paths = wire.broker_paths(path)
        self._idle: list[_Stream] = []
        self._loop: asyncio.AbstractEventLoop | None = None  #: the loop the idle connections belong to
        self._generation = 0  # close() moves it on: connections out at that time are closed on return
        self._calls: dict[asyncio.Future[Any], _Call] = {}  #: attempts under way (a cancel may abandon one)
        self._config: QueueConfig | None = None

    @property
    def path(self) -> Path:
        """The queue file."""
        return self._paths.queue

    @property
    def config(self) -> QueueConfig:
        """The broker's queue configuration (learnt at the first call).

        Raises:
            BrokerError: no call has reached the broker yet (``await client.ping()`` first).
        """
        if self._config is None:
            raise BrokerError(f"{self!r} has not reached its broker yet: await its ping() first")
        return self._config

    def __repr__(self) -> str:
        return f"AsyncBrokerClient({str(self.path)!r})"

    async def close(self) -> None:
        """Close the connections; a waiting get returns None (or the task already on its way to it).

        The broker and the queue carry on; any other call in progress finishes.
        """
        self._generation += 1
        idle, self._idle = self._idle, []
        for call in list(self._calls.values()):
            if call.waits:
                call.abandon()
        for stream in idle:
            await stream.aclose()

    async def _settings(self) -> QueueConfig:
        """The broker's configuration (its lease, its payload limit), asked by the first call."""
        if self._config is None:
            await self.ping()
        return self.config

    # The seam

    async def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Send ``op`` to the broker (a lease waits there, up to ``wait`` seconds); return its result."""
        data = wire.encode_request(op, wait)
        stream, generation = await self._borrow()  # a cancel here: nothing was sent
        call = _Call(stream, waits=op.waits, grace=self._timeout)
        work = asyncio.ensure_future(self._attempt(op, call, data, wait if op.waits else 0.0, generation))
        self._calls[work] = call  # a cancel finds the attempt's call here (``_after_cancel``)
        work.add_done_callback(self._forget)
        result: R = await self._unbroken(op, work)
        return result

    async def _attempt(
        self, op: ops.Op[R], call: _Call, data: bytes, wait: float | None, generation: int
    ) -> R:
        try:
            reply = await self._exchange(call, data, wait, generation)
        except _Abandoned:  # a cancelled get the broker dropped before serving it: nothing leased
            return ops.nothing(op)
        return remote.decode(op, wire.decode_reply(reply))

    def _forget(self, work: asyncio.Future[Any]) -> None:
        self._calls.pop(work, None)

    async def _after_cancel(self, op: ops.Op[Any], work: asyncio.Future[Any]) -> None:
        """A get waits in the broker: end that wait first (``_Call.abandon``), then give back its task."""
        call = self._calls.get(work)
        if call is not None and call.waits:
            call.abandon()
        await super()._after_cancel(op, work)

    # Connections

    async def _borrow(self) -> tuple[_Stream, int]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # asyncio.run again: the idle connections were the last loop's
            idle, self._loop, self._idle = self._idle, loop, []
            self._generation += 1
            for stream in idle:
                with contextlib.suppress(RuntimeError):  # that loop is closed: its sockets close with it
                    stream.close()
        generation = self._generation
        if self._idle:
            return self._idle.pop(), generation
        return await self._connect(), generation

    def _give_back(self, stream: _Stream, generation: int) -> None:
        if generation == self._generation and len(self._idle) < MAX_IDLE:
            self._idle.append(stream)
        else:
            stream.close()

    async def _connect(self) -> _Stream:
        """Connect and do the handshake in a thread (``remote.handshake``), then stream on the loop."""
        loop = asyncio.get_running_loop()
        handshake = loop.run_in_executor(None, remote.handshake, self._paths, self._timeout)
        try:
            sock = await asyncio.shield(handshake)
        except asyncio.CancelledError:
            handshake.add_done_callback(_close_socket)  # it goes on in its thread: close what it makes
            raise
        try:
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_READ_LIMIT)
        except OSError as exc:
            sock.close()
            raise remote.lost(self._paths, exc, "during the handshake") from None
        except BaseException:
            sock.close()
            raise
        return _Stream(reader, writer)

    async def _exchange(self, call: _Call, data: bytes, wait: float | None, generation: int) -> bytes:
        """Send one request on the call's connection; return its reply's bytes.

        The connection goes back to the idle ones only after a whole reply; a failure, a
        cancel or an abandoned get closes it, so a late reply never answers the next call.

        Raises:
            BrokerUnavailable: the broker is gone, or did not read or answer in time.
            _Abandoned: the call was abandoned and no reply had been sent to it.
        """
        try:
            reply = await self._request(call, data, wait)
        except (OSError, EOFError) as exc:  # BrokerUnavailable is one (a ConnectionError): as it is
            call.stream.close()
            if isinstance(exc, BrokerUnavailable):
                raise
            if call.abandoned and isinstance(exc, EOFError):
                raise _Abandoned from None  # the broker dropped the get: the end of the stream, no reply
            raise remote.lost(self._paths, exc, "waiting for a reply") from None
        except BaseException:
            call.stream.close()  # cancelled, or not sent: the reply may still come
            raise
        finally:
            call.over = True
        if call.abandoned:
            call.stream.close()  # shut for writing: of no use to the next call
        else:
            self._give_back(call.stream, generation)
        return reply

    async def _request(self, call: _Call, data: bytes, wait: float | None) -> bytes:
        """Send and receive, each within its bound (the reply: ``wait`` plus ``timeout``)."""
        limit = None if wait is None or math.isinf(wait) else wait + self._timeout
        if call.abandoned:
            raise _Abandoned  # cancelled before its request left: nothing happened
        call.sent = True
        try:
            async with asyncio.timeout(self._timeout):
                await call.stream.send(data)
        except TimeoutError:
            raise remote.late(self._paths, self._timeout, limit, request=True) from None
        try:
            async with asyncio.timeout(limit) as call.bound:
                if call.abandoned:  # while the request left: the broker may not have it yet
                    call.shorten()
                return await call.stream.receive()
        except TimeoutError:
            raise remote.late(self._paths, self._timeout, limit, request=False) from None
        finally:
            call.bound = None

    # The broker's own calls

    async def _control(self, data: bytes) -> Any:
        stream, generation = await self._borrow()
        return wire.decode_reply(await self._exchange(_Call(stream), data, 0.0, generation))

    async def ping(self) -> dict[str, Any]:
        """Return the broker's ``info()``: pid, address, start time, config, clients, waiting gets."""
        info = remote.check_ping(await self._control(wire.encode_control("ping")))
        self._config = QueueConfig.from_json(info["config"])
        return info

    async def metrics(self, *, rows: bool = False) -> dict[str, Any]:
        """Return the broker's counters (and, with ``rows``, its per-batch and per-event rows)."""
        return dict(await self._control(wire.encode_control("metrics", rows=rows)))

    async def shutdown(self) -> None:
        """Ask the broker to stop after answering this request."""
        await self._control(wire.encode_control("shutdown"))


class _Abandoned(Exception):
    """A cancelled get ended without a reply: it was never sent, or the broker dropped it."""


class _Call:
    """One request and its reply on a borrowed connection; a waiting get's may be abandoned."""

    __slots__ = ("abandoned", "bound", "grace", "over", "sent", "stream", "waits")

    def __init__(self, stream: _Stream, *, waits: bool = False, grace: float = 0.0) -> None:
        self.stream = stream
        self.waits = waits  #: a lease: it may wait in the broker
        self.grace = grace  #: seconds an abandoned get still waits for a reply already sent
        self.bound: asyncio.Timeout | None = None  #: the wait for the reply, while it runs
        self.sent = False
        self.abandoned = False
        self.over = False

    def abandon(self) -> None:
        """End a get's wait: shut the connection for writing; a reply already sent still comes."""
        if self.over or self.abandoned:
            return
        self.abandoned = True
        if self.sent:
            self.stream.half_close()  # the request itself leaves first
        self.shorten()

    def shorten(self) -> None:
        """Wait for the reply at most ``grace`` seconds more (the broker needs no longer to drop a get)."""
        if self.bound is None:
            return
        soon = asyncio.get_running_loop().time() + self.grace
        when = self.bound.when()
        if when is None or when > soon:
            self.bound.reschedule(soon)


class _Stream:
    """One connection to the broker on the loop, in ``multiprocessing.connection``'s framing."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        """Send one message, framed (``wire.frame``)."""
        self.writer.write(wire.frame(data))
        await self.writer.drain()

    async def receive(self) -> bytes:
        """Read one whole message (``wire.frame_size``), as the sync client does.

        Raises:
            EOFError: the broker closed the connection before a message began.
            OSError: it closed it mid-message, or announced a message over the limit.
        """
        try:
            head = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise OSError("got end of file during message") from None
            raise EOFError from None
        try:
            found = wire.frame_size(head)
            if found is None:  # the long form: 8 more bytes of length
                head += await self.reader.readexactly(8)
                found = wire.frame_size(head)
            return await self.reader.readexactly(found[1])  # type: ignore[index]  # 12 bytes: whole
        except ValueError as exc:
            raise OSError(f"the broker {exc}") from None
        except asyncio.IncompleteReadError:
            raise OSError("got end of file during message") from None

    def half_close(self) -> None:
        """Shut the connection for writing (what was written still leaves); replies can still be read."""
        with contextlib.suppress(OSError, RuntimeError):  # already closing, or the broker is gone
            if not self.writer.is_closing():
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        """Close, and wait until the socket is closed."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _close_socket(done: asyncio.Future[socket.socket]) -> None:
    """Close the socket of a handshake whose caller was cancelled meanwhile."""
    if not done.cancelled() and done.exception() is None:
        done.result().close()
