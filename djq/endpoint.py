"""Where clients find the broker and get in: its info file, key, socket and accept thread.

A live broker holds an flock on its info file (``Queue.json.broker``), which names its pid
and socket. It listens on a Unix socket beside the queue file (``Queue.json.sock``, 0600).
A client must prove it knows the authkey in ``Queue.json.key`` (0600, new at every start)
and send a hello of the broker's protocol before a byte of its requests is read; each
handshake runs in a thread of its own, at most ``MAX_HANDSHAKES`` at once, and one that
stalls is dropped after ``HANDSHAKE_TIMEOUT`` seconds. The accept thread survives running
out of descriptors (it logs, backs off, retries).

Imports from djq: ``errors``, ``files``, ``wire``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing import connection as mpc
from typing import Any, Final

import orjson

from . import files, wire
from .errors import BrokerError, DjqError

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_HANDSHAKES", "Endpoint"]

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT: Final = 5.0  #: seconds a new client has to prove it has the key
MAX_HANDSHAKES: Final = 128  #: handshakes at once; more connections wait in the listen backlog
_ACCEPT_BACKOFF: Final = (0.01, 1.0)  #: seconds the accept thread waits after a failed accept: first, longest


class Endpoint:
    """The broker's files and socket, and the thread that lets authenticated clients in.

    ``own()``, then ``open()``, then ``stop()`` and ``close()`` (always, even if ``own`` or
    ``open`` failed halfway).

    Args:
        paths: the broker's files.
        arrived: called (from a handshake thread) with each connection that passed its
            handshake, already non-blocking.
        failed: called (from the accept thread) for each accept that failed.
    """

    def __init__(
        self,
        paths: wire.BrokerPaths,
        *,
        arrived: Callable[[mpc.Connection], None],
        failed: Callable[[], None],
    ) -> None:
        self.paths = paths
        self._arrived = arrived
        self._failed = failed
        self._owner = -1  #: the info file's descriptor, holding the flock (-1: not owned)
        self._listener: mpc.Listener | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)

    # Life cycle

    def own(self) -> None:
        """Make the folder and take the flock on the info file.

        Raises:
            BrokerError: another broker already serves this file.
            StorageError: the folder or info file could not be made.
        """
        try:
            files.make_folder(self.paths.queue)
            self._owner = self._lock_info()
        except OSError as exc:
            if isinstance(exc, DjqError):
                raise
            raise files.error("cannot own the broker's info file", self.paths.info, exc) from exc

    def _lock_info(self) -> int:
        """Take the broker's flock on its info file, or raise if another broker has it."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.paths.info, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BrokerError(f"a broker already serves {self.paths.queue} ({self.paths.info})") from None
        return fd

    def open(self, info: dict[str, Any]) -> None:
        """Write a new key, listen on the socket, write ``info`` and start accepting.

        Raises:
            OSError: a file or the socket could not be made.
        """
        key = secrets.token_bytes(32)
        files.write_atomic(self.paths.key, key.hex().encode(), fsync=False)  # new at every start
        self.paths.socket.unlink(missing_ok=True)  # stale: its broker is gone (we own the file)
        self._listener = mpc.Listener(str(self.paths.socket), family="AF_UNIX", backlog=128)
        os.chmod(self.paths.socket, 0o600)
        os.ftruncate(self._owner, 0)
        os.pwrite(self._owner, orjson.dumps(info), 0)
        self._thread = threading.Thread(
            target=self._accept, args=(self._listener, key), daemon=True, name="djq-accept"
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and remove the socket (connections already in stay open)."""
        self._stopping = True
        if self._thread is not None:  # closing the listener does not wake a blocked accept
            self._connect_to_self()
            self._thread.join(5.0)
            self._thread = None
        if self._listener is not None:
            self._listener.close()  # removes the socket file
            self._listener = None

    def close(self) -> None:
        """Stop accepting, remove the socket and key, and let go of the flock."""
        self.stop()
        if self._owner >= 0:
            self.paths.key.unlink(missing_ok=True)
            os.ftruncate(self._owner, 0)
            os.close(self._owner)  # releases the flock: another broker may start
            self._owner = -1

    def _connect_to_self(self) -> None:
        """Wake the accept thread so it sees ``_stopping`` and returns."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(self.paths.socket))

    # The accept thread

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
                self._accept_failed(exc, pause, unexpected=False)
                pause = min(pause * 2, _ACCEPT_BACKOFF[1])
                continue
            except Exception as exc:  # never the end of accepting: log, pause, carry on
                self._accept_failed(exc, pause, unexpected=True)
                continue
            pause = _ACCEPT_BACKOFF[0]
            if not self._start_handshake(conn, key):
                return

    def _accept_failed(self, exc: Exception, pause: float, *, unexpected: bool) -> None:
        """Count and log one failed accept, then pause before the next."""
        self._failed()
        if unexpected:
            logger.exception("cannot accept a client: %s", exc)
        else:
            logger.error("cannot accept a client (retrying in %.2f s): %s", pause, exc)
        time.sleep(pause)

    def _start_handshake(self, conn: mpc.Connection, key: bytes) -> bool:
        """Start ``conn``'s handshake in its own thread; False if the endpoint is closing."""
        while not (self._stopping or self._handshakes.acquire(timeout=0.5)):
            pass  # strangers that never finish their handshake hold at most MAX_HANDSHAKES threads
        if self._stopping:  # woken by _connect_to_self
            conn.close()
            return False
        try:
            threading.Thread(target=self._handshake, args=(conn, key), daemon=True).start()
        except RuntimeError as exc:  # can't start new thread: refuse this one, keep accepting
            self._handshakes.release()
            self._failed()
            logger.error("refused a client: cannot start its handshake: %s", exc)
            conn.close()
        return True

    def _handshake(self, conn: mpc.Connection, key: bytes) -> None:
        try:
            if _admitted(conn, key):
                self._arrived(conn)
        finally:
            self._handshakes.release()


def _admitted(conn: mpc.Connection, key: bytes) -> bool:
    """Run the handshake: both challenges, then the hello; False (and closed) if the client fails it."""
    try:
        wire.socket_timeouts(conn.fileno(), HANDSHAKE_TIMEOUT)  # a client that stalls is dropped
        mpc.deliver_challenge(conn, key)
        mpc.answer_challenge(conn, key)
        hello = conn.recv_bytes(wire.MAX_MESSAGE_BYTES)
        try:
            wire.check_hello(hello)
        except BrokerError as exc:
            conn.send_bytes(wire.encode_error(exc))
            raise
        conn.send_bytes(wire.encode_ok({"protocol": wire.PROTOCOL}))
        wire.socket_timeouts(conn.fileno(), 0.0)
        os.set_blocking(conn.fileno(), False)  # from now on the loop reads and writes when it can
    except Exception as exc:  # a stranger, garbage, or a client that left: never the broker's end
        logger.warning("refused a client: %s: %s", type(exc).__name__, exc)
        conn.close()
        return False
    return True
