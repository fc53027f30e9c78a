"""``BrokerClient``: the one client API, served by a broker instead of the file lock.

``djq.connect(path)`` returns one. It is an ``api.BaseQueue`` whose ``_submit`` sends the
operation to the broker and waits for its reply, so it has ``Queue``'s methods and
semantics; ``Producer``, ``Consumer`` and the simulation work with either; the same errors
come back (``LeaseLost``, ``ConfigError``, ``StorageError``, ...), rebuilt from their data.
Operations are validated when built, here, so a bad argument fails without a round trip.
A client whose broker is gone raises ``BrokerUnavailable`` at once (the socket closes when
the broker dies); the next call connects again, so work continues once a broker is back.
Imports from djq: ``api``, ``errors``, ``model``, ``ops``, ``wire``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing import connection as mpc
from pathlib import Path
from typing import Any, Final, TypeVar

from . import ops, wire
from .api import BaseQueue
from .errors import BrokerProtocolError, BrokerUnavailable, DjqError
from .model import DEFAULT_QUEUE_PATH, QueueConfig, check_seconds

__all__ = ["DEFAULT_REPLY_TIMEOUT", "BrokerClient", "connect"]

R = TypeVar("R")
DEFAULT_REPLY_TIMEOUT: Final = 60.0  #: seconds a call waits for its reply (beyond a get's own wait)
_POLL_CHUNK: Final = 3600.0  #: seconds; longer waits are polled in pieces (poll takes at most ~24 days)


def connect(
    path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, *, timeout: float = DEFAULT_REPLY_TIMEOUT
) -> BrokerClient:
    """Connect to the broker serving ``path``; return a client with ``Queue``'s methods.

    Raises:
        BrokerUnavailable: no broker serves this file (start one: ``djq broker start``).
        BrokerProtocolError: the broker runs another version of djq's wire protocol.
    """
    client = BrokerClient(path, timeout=timeout)
    client.ping()
    return client


class BrokerClient(BaseQueue):
    """A queue whose calls a broker serves. Thread-safe; reconnects in a forked child.

    Args:
        path: the queue file the broker serves.
        timeout: seconds to wait for a reply before giving up on the broker
            (``BrokerUnavailable``); a waiting ``get`` adds its own timeout to this.
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH, *, timeout: float = DEFAULT_REPLY_TIMEOUT
    ) -> None:
        """Describe the client; it connects at the first call."""
        check_seconds("timeout", timeout, low=0.0, high=math.inf)
        self._paths = wire.broker_paths(path)
        self._timeout = timeout
        self._conn: mpc.Connection | None = None
        self._mutex = threading.Lock()
        self._pid = os.getpid()
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
        """Close the connection; the broker and the queue carry on."""
        with self._mutex:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> mpc.Connection:
        """Connect, prove we have the key, and exchange hellos (the protocol version)."""
        paths = self._paths
        try:
            key = bytes.fromhex(paths.key.read_text())
            conn = mpc.Client(str(paths.socket), family="AF_UNIX", authkey=key)
        except (OSError, ValueError, EOFError) as exc:
            raise BrokerUnavailable(
                f"no broker serves {paths.queue} ({type(exc).__name__}: {exc}); "
                f"start one with: djq --queue {paths.queue} broker start"
            ) from None
        except AuthenticationError as exc:
            raise BrokerUnavailable(f"the broker at {paths.socket} refused this client: {exc}") from None
        try:
            self._send(conn, wire.encode_hello())
            self._receive(conn, self._timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _receive(self, conn: mpc.Connection, limit: float | None) -> Any:
        """Wait up to ``limit`` seconds for a reply; return its value or raise its error."""
        deadline = None if limit is None else time.monotonic() + limit
        try:
            while not conn.poll(
                _POLL_CHUNK if deadline is None else min(_POLL_CHUNK, deadline - time.monotonic())
            ):
                if deadline is not None and time.monotonic() >= deadline:
                    raise BrokerUnavailable(
                        f"the broker at {self._paths.socket} did not reply within {limit:g} s"
                    )
            data = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
        except (EOFError, OSError) as exc:
            if isinstance(exc, DjqError):
                raise
            raise BrokerUnavailable(
                f"lost the broker at {self._paths.socket}: {type(exc).__name__}"
            ) from None
        return wire.decode_reply(data)

    def _call(self, data: bytes, wait: float | None = 0.0) -> Any:
        """Send one request and return its reply's value (or raise the error it carries)."""
        limit = None if wait is None else wait + self._timeout
        with self._mutex:
            if self._pid != os.getpid():  # forked: never share the parent's connection
                self._conn, self._pid = None, os.getpid()
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                self._send(conn, data)
                return self._receive(conn, limit)
            except BrokerUnavailable:
                self._disconnect()  # a late reply must never answer the next call
                raise

    def _send(self, conn: mpc.Connection, data: bytes) -> None:
        try:
            conn.send_bytes(data)
        except OSError as exc:
            raise BrokerUnavailable(
                f"lost the broker at {self._paths.socket}: {type(exc).__name__}"
            ) from None

    def _submit(self, op: ops.Op[R], *, wait: float | None = 0.0) -> R:
        """Send ``op`` to the broker (a lease waits there, up to ``wait`` seconds); return its result."""
        value = self._call(wire.encode_request(op, wait), wait if op.waits else 0.0)
        try:
            return ops.decode_result(op, value)
        except ValueError as exc:
            raise BrokerProtocolError(f"the broker sent a malformed reply: {exc}") from None

    # The broker's own calls

    def ping(self) -> dict[str, Any]:
        """Return the broker's ``info()``: pid, address, start time, config, clients, waiting gets."""
        info = self._call(wire.encode_control("ping"))
        if not isinstance(info, dict):
            raise BrokerProtocolError(f"a ping was answered with {info!r:.100}")
        self._config = QueueConfig.from_json(info["config"])
        return info

    def metrics(self, *, rows: bool = False) -> dict[str, Any]:
        """Return the broker's counters (and, with ``rows``, its per-batch and per-event rows)."""
        return dict(self._call(wire.encode_control("metrics", rows=rows)))

    def shutdown(self) -> None:
        """Ask the broker to stop after answering this request."""
        self._call(wire.encode_control("shutdown"))
