"""``BrokerManager``: start a broker process for a queue file, watch it, restart it, stop it.

The broker runs as ``python -m djq --queue PATH broker start --foreground --config-json
CONFIG`` (CONFIG: the whole ``QueueConfig`` as JSON) in a session of its own, so it
outlives the process that started it (``djq broker start`` returns at once); its output
goes to ``Queue.json.broker.log``. A live broker holds an flock on ``Queue.json.broker``:
the kernel drops it when the broker dies, however it dies, so "is a broker alive" never
trusts a stale pid. A second broker for the same file is refused. Imports from djq:
``errors``, ``files``, ``model``, ``remote``, ``wire``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import orjson

from . import files, wire
from .errors import BrokerError, BrokerUnavailable, DjqError
from .model import DEFAULT_QUEUE_PATH, QueueConfig, check_seconds
from .remote import BrokerClient

__all__ = ["BrokerManager", "broker_command"]

DEFAULT_START_TIMEOUT: Final = 20.0  #: seconds for a new broker to answer its first ping
DEFAULT_STOP_TIMEOUT: Final = 10.0  #: seconds for a broker to stop before it is killed
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent)


def broker_command(config: QueueConfig) -> list[str]:
    """Return the command line that runs a broker for ``config`` in the foreground.

    The config travels whole, as one JSON argument (``QueueConfig.to_json``): a field
    added to ``QueueConfig`` reaches the broker without a new flag.
    """
    config_json = orjson.dumps(config.to_json()).decode()
    return [
        sys.executable, "-m", "djq", "--queue", str(config.path),
        "broker", "start", "--foreground", "--config-json", config_json,
    ]  # fmt: skip


class BrokerManager:
    """Run the broker of one queue file as a process of its own.

    Example::

        with djq.BrokerManager("data/Queue.json", fsync=False) as manager:
            queue = djq.connect("data/Queue.json")
            queue.put({"n": 1})
            print(manager.status())

    Args:
        path: the queue file.
        start_timeout: seconds ``start`` waits for the broker to answer.
        options: the queue's options: any field of ``QueueConfig`` but ``path``
            (``lock``, ``fsync``, ``lease``, ...); all of them reach the broker.

    Raises:
        ConfigError: an unknown or invalid option (before anything starts).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_QUEUE_PATH,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        **options: Any,
    ) -> None:
        """Describe the broker; nothing starts until ``start``."""
        check_seconds("start_timeout", start_timeout, low=0.0, high=math.inf)
        self.paths = wire.broker_paths(path)
        self.config = QueueConfig.from_options(path=self.paths.queue, **options)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"BrokerManager({str(self.paths.queue)!r})"

    def __enter__(self) -> BrokerManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The pid of the live broker for this file (whoever started it; 0 while it starts), or None."""
        return _owner_pid(self.paths.info)

    def is_alive(self) -> bool:
        """True while a broker process holds this file (it may still be starting)."""
        self._reap()
        return self.pid is not None

    def start(self) -> dict[str, Any]:
        """Start the broker and wait until it answers; return ``status()``.

        Raises:
            BrokerError: a broker already serves this file, or the new one did not start
                (the message carries the end of its log).
        """
        self._reap()
        if self.is_alive():
            raise BrokerError(f"a broker already serves {self.paths.queue} (pid {self.pid}); stop it first")
        self._clean()
        files.make_folder(self.paths.queue)  # 0700, whatever the umask
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])),
        }
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.paths.log, flags, 0o600)  # never through a symlink planted at the log
        except OSError as exc:
            raise files.error("cannot open the broker's log", self.paths.log, exc) from exc
        with open(fd, "ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                broker_command(self.config),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + self._start_timeout
        pause = 0.005
        while True:
            if self._process.poll() is not None:
                raise BrokerError(f"the broker for {self.paths.queue} exited at start:\n{self._log_tail()}")
            with contextlib.suppress(BrokerUnavailable):
                self._ping()
                return self.status()
            if time.monotonic() > deadline:
                self._kill(self._process.pid)
                raise BrokerError(
                    f"the broker did not answer within {self._start_timeout:g} s:\n{self._log_tail()}"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stop the broker (politely, then SIGTERM, then SIGKILL); return False if none ran.

        Returns within about ``timeout`` seconds, whatever the broker does (answers, hangs
        in its handshake, is stopped with SIGSTOP): half of it for the polite shutdown
        request, then SIGTERM, then SIGKILL at 80 %. A broker in another session that even
        SIGKILL has not ended by then (a process in uninterruptible sleep) is left to die.
        """
        check_seconds("timeout", timeout, low=0.0, high=math.inf)
        if math.isinf(timeout):
            timeout = DEFAULT_STOP_TIMEOUT * 10
        start = time.monotonic()
        pid = self.pid
        if pid is None:
            self._reap()
            self._clean()
            return False
        with contextlib.suppress(DjqError):
            client = BrokerClient(self.paths.queue, timeout=timeout / 4)  # connect, then the reply: half
            try:
                client.shutdown()
            finally:
                client.close()
        for sig, until in ((None, 0.5), (signal.SIGTERM, 0.8), (signal.SIGKILL, 1.0)):
            if sig is not None and pid > 1:  # never 0 or -1: those signal whole groups
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if self._wait_gone(start + timeout * until):
                break
        if self._process is not None:  # our child dropped its flock, but may not have exited yet
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(max(start + timeout - time.monotonic(), 0.1))
        self._reap()
        self._clean()
        return True

    def restart(self) -> dict[str, Any]:
        """Stop the broker if one runs (or clear what a dead one left), then start one."""
        self.stop()
        return self.start()

    def status(self) -> dict[str, Any]:
        """Return ``{"queue", "pid", "address", "alive", "answers", ...}`` (and counters if it answers)."""
        pid = self.pid
        result: dict[str, Any] = {
            "queue": str(self.paths.queue),
            "pid": pid,
            "address": str(self.paths.socket),
            "alive": pid is not None,
            "answers": False,
        }
        if pid is not None:
            try:
                client = BrokerClient(self.paths.queue, timeout=5.0)
                info = client.ping()
                result.update(answers=True, started_at=info["started_at"], clients=info["clients"] - 1)
                result["waiting"] = info["waiting"]
                result["metrics"] = client.metrics()
                client.close()
            except DjqError as exc:
                result["error"] = str(exc)
        return result

    def _ping(self) -> None:
        client = BrokerClient(self.paths.queue, timeout=5.0)
        try:
            client.ping()
        finally:
            client.close()

    def _wait_gone(self, deadline: float) -> bool:
        """Wait until no broker holds the file, or ``deadline`` (monotonic); True if none does."""
        while self.pid is not None:
            self._reap()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _reap(self) -> None:
        """Collect our broker child if it exited (no zombies)."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait(10)
            self._process = None

    def _clean(self) -> None:
        """Remove what a dead broker left: its socket and key (never while one is alive)."""
        if self.pid is None:
            self.paths.socket.unlink(missing_ok=True)
            self.paths.key.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.paths.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _owner_pid(info: Path) -> int | None:
    """Return the pid of the broker holding ``info``'s flock (0 if not yet known), or None."""
    try:
        fd = os.open(info, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            data = os.pread(fd, 4096, 0)
            try:
                return int(orjson.loads(data)["pid"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                return 0  # alive, but still writing its info: the pid is not known yet
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
