"""Throwaway PostgreSQL and Redis servers for experiments, tests and notebooks.

``scratch.postgres()`` and ``scratch.redis()`` start a private server from the locally
installed binaries (never downloaded), listening on a Unix socket in a fresh folder and
on no TCP port, and return a ``Scratch`` whose ``url`` any djq opener takes. The server
is stopped by its pid (``stop``, or leaving the ``with`` block) and its folder removed::

    from djq import scratch
    with scratch.redis() as server:
        q = djq.open(server.url)

``stop()`` then ``start()`` restarts the same server on the same data (what the restart
tests do). PostgreSQL's ``initdb`` refuses to run as root: as root the server runs as the
``postgres`` user, in a folder that user owns. A missing binary is one ``ConfigError``
naming the Debian package to install. ``url_of(kind)`` reads ``DJQ_POSTGRES_URL`` or
``DJQ_REDIS_URL``, for an existing server instead. Imports from djq: ``errors``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

from .errors import ConfigError

__all__ = ["Scratch", "postgres", "redis", "url_of"]

START_TIMEOUT: Final = 60.0  #: seconds a server may take to accept connections
STOP_TIMEOUT: Final = 30.0  #: seconds a server may take to exit after SIGTERM (then SIGKILL)
ENV: Final = {"postgres": "DJQ_POSTGRES_URL", "redis": "DJQ_REDIS_URL"}
_POSTGRES_USER: Final = "postgres"  #: who runs PostgreSQL when we are root


def url_of(kind: str) -> str | None:
    """The URL of an existing server of ``kind`` ("postgres" or "redis") from the environment, or None."""
    return os.environ.get(ENV[kind]) or None


class Scratch:
    """One throwaway server: its ``url``, its ``pid`` while it runs, its ``folder``."""

    def __init__(
        self, kind: str, folder: Path, command: list[str], url: str, socket_path: Path, user: str | None
    ):
        self.kind = kind
        self.folder = folder
        self.url = url
        self.socket_path = socket_path
        self._command = command
        self._user = user
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def start(self) -> Scratch:
        """Start the server (again, on the same data); return once it accepts connections.

        Raises:
            ConfigError: it exited or did not answer within ``START_TIMEOUT`` s (its log is quoted).
        """
        if self._process is not None:
            return self
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the server's, closed with it)
        try:
            self._process = subprocess.Popen(  # noqa: S603 (the installed server binary, our own arguments)
                self._command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=self._user, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"the scratch {self.kind} server did not start: {self._log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server by its pid: a fast shutdown (a crash with ``kill``), SIGKILL if it hangs."""
        process, self._process = self._process, None
        if process is None:
            return
        # PostgreSQL: SIGINT is its fast shutdown (SIGTERM waits for every client to leave),
        # SIGQUIT its immediate one (a SIGKILLed postmaster can leave backends behind)
        postgres = self.kind == "postgres"
        polite, rude = (signal.SIGINT, signal.SIGQUIT) if postgres else (signal.SIGTERM, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, rude if kill else polite)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<Scratch {self.kind} {self.url} pid={self.pid}>"

    def _ready(self) -> bool:
        if self.kind == "postgres":  # the socket opens before startup ends: postmaster.pid says "ready"
            pid_file = self.folder / "data" / "postmaster.pid"
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                return len(lines) > 7 and lines[7].strip() == "ready" and _accepts(self.socket_path)
            return False
        return _accepts(self.socket_path)

    def _log_tail(self) -> str:
        try:
            lines = (self.folder / "server.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "no output"


def postgres(folder: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> Scratch:
    """A private PostgreSQL (``initdb`` into a fresh folder), Unix socket only; not yet started.

    As root the folder is made in the system's temp folder whatever ``folder`` says (the
    ``postgres`` user must reach it).

    ``fsync=False`` turns the server's fsync off (for experiments that do not measure the
    disk). The database is ``postgres``, the user ``postgres``, trust authentication on the
    socket, which only the folder's owner can reach.

    Raises:
        ConfigError: the PostgreSQL server binaries are not installed, or ``initdb`` failed.
    """
    bin_dir = _postgres_bin()
    user = _POSTGRES_USER if os.geteuid() == 0 else None
    root = _folder(None if user else folder, "djq-postgres-", user)
    data = root / "data"
    run = subprocess.run(  # noqa: S603 (the installed initdb, our own arguments)
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync", "--no-instructions"],
        capture_output=True, text=True, user=user, check=False,
    )  # fmt: skip
    if run.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise ConfigError(f"initdb failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    command = [
        str(bin_dir / "postgres"), "-D", str(data), "-k", str(root), "-c", "listen_addresses=",
        "-c", f"fsync={'on' if fsync else 'off'}", "-c", "max_connections=200",
    ]  # fmt: skip
    return Scratch(
        "postgres",
        root,
        command,
        f"postgresql://postgres@/postgres?host={root}",
        root / ".s.PGSQL.5432",
        user,
    )


def redis(folder: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> Scratch:
    """A private Redis on a Unix socket, no TCP port; not yet started.

    With ``fsync`` (the default) it keeps an append-only file fsynced on every write
    (``appendfsync always``), so djq's ``fsync=True`` holds; without, no persistence.

    Raises:
        ConfigError: ``redis-server`` is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("redis-server not found: install the Debian package redis-server")
    root = _folder(folder, "djq-redis-", None)
    sock = root / "redis.sock"
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if fsync else ["--appendonly", "no"]
    command = [
        binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(root),
        "--save", "", *durability, "--daemonize", "no",
    ]  # fmt: skip
    return Scratch("redis", root, command, f"unix://{sock}", sock, None)


def _postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries (``initdb``, ``postgres``)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for folder in candidates + [str(Path(p).parent) for p in filter(None, [shutil.which("postgres")])]:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    raise ConfigError(
        "PostgreSQL's server binaries (initdb, postgres) not found: install the Debian package postgresql"
    )


def _folder(folder: str | os.PathLike[str] | None, prefix: str, user: str | None) -> Path:
    """A fresh folder (0700) for one server, owned by ``user`` when given."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    if user is not None:
        shutil.chown(root, user, user)
    return root


def _accepts(path: Path) -> bool:
    """Whether a server accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
