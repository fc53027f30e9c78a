"""Clients' connections to the broker: non-blocking framing through bounded buffers.

After the handshake every connection is non-blocking, so no client can stall the
broker's loop. The loop frames messages itself (``multiprocessing.connection``'s framing:
a 4-byte big-endian length, or -1 and 8 bytes, then the bytes) from a per-connection
buffer of at most ``MAX_BUFFERED_BYTES``, so a client that stops mid-message holds only its
own buffer. Replies leave through a bounded outgoing buffer: a client whose replies are
unsent is not read from until they leave; one past ``MAX_OUTGOING_BYTES``, or with more
than ``MAX_PENDING_REPLIES`` requests unanswered, is dropped (``Drop``). ``Channels`` holds
the loop's connections and drops only the one at fault.

Imports from djq: ``wire``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import operator
import os
import selectors
from collections.abc import Callable, Iterator
from multiprocessing import connection as mpc
from typing import Any, Final

from . import wire

__all__ = ["MAX_BUFFERED_BYTES", "MAX_OUTGOING_BYTES", "MAX_PENDING_REPLIES", "Channel", "Channels", "Drop"]

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 1 << 16  #: bytes asked of one read
READ_ROUND: Final = 1 << 20  #: bytes read from (or written to) one client before the loop serves the others
MAX_BUFFERED_BYTES: Final = (
    wire.MAX_MESSAGE_BYTES + 12 + READ_CHUNK
)  #: a connection's unparsed bytes, at most
MAX_OUTGOING_BYTES: Final = (
    wire.MAX_MESSAGE_BYTES + 12
)  #: a connection's unsent replies; past it, it is dropped
MAX_PENDING_REPLIES: Final = 64  #: requests of one connection read but not answered; past it, it is dropped


class Drop(Exception):
    """This client broke the rules (or left): close its connection, keep serving the others."""

    def __init__(self, why: str, *, fault: bool = True) -> None:
        super().__init__(why)
        self.fault = fault  #: False: a client that simply hung up (not logged, not counted)


class Channel:
    """One authenticated connection: its socket (non-blocking), unparsed bytes and unsent replies.

    Args:
        conn: the connection, past its handshake and already non-blocking.
    """

    __slots__ = ("closed", "conn", "fd", "frame", "inbox", "mask", "outbox", "pending", "seq")

    def __init__(self, conn: mpc.Connection, seq: int = 0) -> None:
        self.conn = conn
        self.seq = seq  #: its place in the order the connections arrived
        self.fd = conn.fileno()
        self.inbox = bytearray()  #: bytes read and not yet taken as a message
        self.outbox = bytearray()  #: reply bytes not yet sent
        self.frame: tuple[int, int] | None = None  #: (header bytes, body bytes) of the message in the inbox
        self.pending = 0  #: requests read and not yet answered
        self.mask = 0  #: the events it is registered for (0: not registered)
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes held for this client: unparsed and unsent."""
        return len(self.inbox) + len(self.outbox)

    def parse(self) -> bool:
        """Read the inbox's length prefix; True if a whole message is buffered.

        Raises:
            Drop: the prefix announces a message over ``MAX_MESSAGE_BYTES`` (or a negative one).
        """
        if self.frame is None:
            self.frame = self._prefix()
            if self.frame is None:
                return False
        header, size = self.frame
        return len(self.inbox) >= header + size

    def _prefix(self) -> tuple[int, int] | None:
        """Return (header bytes, body bytes) from the inbox's length prefix; None if it is not all here."""
        try:
            return wire.frame_size(self.inbox)
        except ValueError as exc:
            raise Drop(str(exc)) from None

    def has_request(self) -> bool:
        """True if a whole message waits and the client has read all its replies."""
        return not (self.closed or self.outbox) and self.frame is not None and self.parse()

    def take(self) -> bytes:
        """Remove and return the whole message ``parse`` found."""
        header, size = self.frame  # type: ignore[misc]  # parse() returned True
        data = bytes(self.inbox[header : header + size])
        del self.inbox[: header + size]
        self.frame = None
        return data

    def count_request(self) -> None:
        """Count one more request read and not yet answered.

        Raises:
            Drop: more than ``MAX_PENDING_REPLIES`` are unanswered.
        """
        self.pending += 1
        if self.pending > MAX_PENDING_REPLIES:
            raise Drop(f"has more than {MAX_PENDING_REPLIES} requests unanswered")

    def wants(self) -> int:
        """The events to wait for: writable while replies wait; readable unless a message or reply waits."""
        if self.outbox:
            return selectors.EVENT_WRITE  # no new request from a client that does not read its replies
        if self.frame is not None and len(self.inbox) >= sum(self.frame):
            return 0  # a whole message waits for the next batch
        return selectors.EVENT_READ

    def register(self, selector: selectors.BaseSelector) -> None:
        """Register for the events it wants now (none: a whole message waits)."""
        if self.closed:
            return
        wants = self.wants()
        if wants == self.mask:
            return
        if self.mask == 0:
            selector.register(self.fd, wants, self)
        elif wants == 0:
            selector.unregister(self.fd)
        else:
            selector.modify(self.fd, wants, self)
        self.mask = wants

    def serve(self, mask: int) -> None:
        """Send and read what the socket allows now, as the selector's ``mask`` says.

        Raises:
            Drop: the client left, or announced a message over the limit.
        """
        if self.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ:
            self.read()

    def read(self) -> None:
        """Read what the client sent, without blocking, until a message is whole (or a round's worth).

        Raises:
            Drop: the client left, or announced a message over the limit.
        """
        got = 0
        while not self.parse() and got < READ_ROUND:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise Drop(f"its connection failed: {exc}") from None
            if not data:
                raise Drop("it hung up mid-message", fault=True) if self.inbox else Drop("", fault=False)
            self.inbox += data
            got += len(data)

    def send(self, data: bytes) -> None:
        """Frame one reply into the outbox and send what the socket takes now.

        Raises:
            Drop: the client left, or its unsent replies are past ``MAX_OUTGOING_BYTES``.
        """
        self.outbox += wire.frame(data)
        self.flush()
        if len(self.outbox) > MAX_OUTGOING_BYTES:
            raise Drop(f"does not read its replies ({len(self.outbox)} bytes unsent)")

    def flush(self) -> None:
        """Send as much of the outbox as the socket takes, without blocking.

        Raises:
            Drop: the client left.
        """
        while self.outbox:
            try:
                sent = os.write(self.fd, self.outbox[:READ_ROUND])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise Drop(f"it left before its reply was sent ({exc.strerror or exc})") from None
            del self.outbox[:sent]

    def close(self, selector: selectors.BaseSelector) -> None:
        """Unregister, close the connection and let go of its buffers."""
        self.closed = True
        if self.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                selector.unregister(self.fd)
            self.mask = 0
        self.conn.close()
        self.inbox = bytearray()
        self.outbox = bytearray()


class Channels:
    """The loop's connections in the order they connected, registered on the loop's selector.

    A connection that passed its handshake arrives (from any thread), wakes the loop through
    a pipe registered on the selector (key data None), and is admitted by the loop. Whatever
    one channel does wrong drops only it. A step of the loop costs what its active clients
    cost, not what all of them do: only the channels it touched (served, replied to, read a
    message from) and those holding a whole message are looked at and registered again.

    Args:
        selector: the loop's selector.
        dropped: called with each channel the loop drops, and whether it was at fault.
        failed: called with what failed and the unexpected exception (to log and count it).
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        *,
        dropped: Callable[[Channel, bool], None],
        failed: Callable[[str, BaseException], None],
    ) -> None:
        self._selector = selector
        self._dropped = dropped
        self._failed = failed
        self._channels: dict[Channel, None] = {}
        self._touched: set[Channel] = set()  # served or replied to since the last ``register``
        self._held: set[Channel] = set()  # unregistered: a whole message waits in the inbox
        self._seq = 0
        self._arrivals: collections.deque[mpc.Connection] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        selector.register(self._wake_r, selectors.EVENT_READ, None)

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self._channels))  # a copy: dropping one while iterating is fine

    def __len__(self) -> int:
        return len(self._channels)

    @property
    def queued(self) -> bool:
        """True if a client has a whole message buffered (the loop must not wait for the socket)."""
        return bool(self._held)

    def serve(self, client: Channel, mask: int) -> None:
        """Send and read what ``client``'s socket allows, as the selector's ``mask`` says."""
        self._touched.add(client)
        self.guard(client, client.serve, mask)

    def with_requests(self) -> list[Channel]:
        """The clients that may hold a whole request now, in the order they connected."""
        self._touched |= self._held
        return sorted(self._touched, key=operator.attrgetter("seq"))

    def buffers(self) -> dict[str, int]:
        """Bytes held for the clients: in all, and for the client holding most."""
        sizes = [c.buffered for c in self._channels]
        return {"buffered_bytes": sum(sizes), "largest_buffer": max(sizes, default=0)}

    def arrive(self, conn: mpc.Connection) -> None:
        """Hand over a connection that passed its handshake and wake the loop (safe from any thread)."""
        self._arrivals.append(conn)
        self.wake()

    def wake(self) -> None:
        """Wake the loop from its ``select`` (safe from any thread and signal handler)."""
        with contextlib.suppress(OSError):  # a wake-up is already pending, or the broker stopped
            os.write(self._wake_w, b"!")

    def admit(self) -> None:
        """Empty the wake-up pipe and take in the connections that arrived."""
        os.read(self._wake_r, 4096)
        while self._arrivals:
            self._seq += 1
            client = Channel(self._arrivals.popleft(), self._seq)
            self._channels[client] = None
            try:
                client.register(self._selector)
            except Exception as exc:
                self._failed("registering a client", exc)
                self.drop(client, "cannot be registered")

    def register(self) -> None:
        """Register every client touched since the last time for the events it wants now."""
        touched, self._touched = self._touched, set()
        for client in touched:
            self.guard(client, client.register, self._selector)
            if client.mask == 0 and not client.closed:
                self._held.add(client)
            else:
                self._held.discard(client)

    def guard(self, client: Channel, action: Callable[..., object], *args: Any) -> None:
        """Run ``action(*args)`` for one client: if it breaks a bound, leaves or fails, drop only it."""
        try:
            action(*args)
        except Drop as exc:
            self.drop(client, str(exc), fault=exc.fault)
        except Exception as exc:
            self._failed("serving a client", exc)
            self.drop(client, f"{type(exc).__name__}: {exc}")

    def drop(self, client: Channel, why: str, *, fault: bool = True) -> None:
        """Close one client's connection (logged if it broke a rule or failed)."""
        if client.closed:
            return
        if fault:
            logger.warning("dropped a client: %s", why)
        client.close(self._selector)
        self._channels.pop(client, None)
        self._held.discard(client)
        self._dropped(client, fault)

    def reply(self, client: Channel, data: bytes) -> bool:
        """Queue one reply and send what the socket takes now; False if the client is gone."""
        if client.closed:
            return False
        self._touched.add(client)
        self.guard(client, client.send, data)
        return not client.closed

    def close(self) -> None:
        """Send what replies the sockets take now, then close every connection and the pipe."""
        for client in self:
            with contextlib.suppress(Exception):
                client.flush()  # a last reply (a shutdown's) leaves if the socket takes it
            client.conn.close()
        for conn in self._arrivals:
            conn.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
