"""Files as djq writes them: one atomic write for every file, owner-only folders, temp files.

``write_atomic`` is the only way djq creates or replaces a file (``Queue.json``, its
journal, the broker's key and info): a temp file in the same folder, created 0600 (or
the mode asked for) with ``O_EXCL|O_NOFOLLOW`` under an unpredictable name, written
whole, fsynced when durability matters, ``os.replace``d over the target, the folder
fsynced. A crash leaves the old file or the new one, never half of one, and at worst a
temp file that ``temp_files`` finds. Imports from djq: ``errors``.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .errors import StorageError

__all__ = [
    "error",
    "fsync_folder",
    "make_folder",
    "read_all",
    "temp_files",
    "temp_name",
    "unlink_quietly",
    "write_all",
    "write_atomic",
]

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name(path: Path) -> Path:
    """Return a fresh, unpredictable temp path beside ``path`` (``.NAME.<pid>.<hex>.tmp``)."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def temp_files(path: Path) -> list[Path]:
    """Return the temp files a crashed writer of ``path`` (snapshot or journal) may have left."""
    pattern = re.compile(rf"\.{re.escape(path.name)}(\.journal)?\.\d+\.[^.]+\.tmp")
    return sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if pattern.fullmatch(p.name))


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True, keep_open: bool = False
) -> int:
    """Replace ``path`` with ``data`` atomically; return the new file's fd if ``keep_open``, else -1.

    The file is readable and writable as ``mode`` says (0600 unless told), whatever the
    umask. With ``fsync`` the data and the rename are durable on return. On any error the
    old file is intact and the temp file is gone.

    Raises:
        StorageError: the folder is missing or not writable, the disk is full, an fsync failed.
    """
    tmp = temp_name(path)
    try:
        try:
            fd = os.open(tmp, _CREATE, mode)
        except FileNotFoundError:
            make_folder(path)
            fd = os.open(tmp, _CREATE, mode)
    except OSError as exc:
        raise error("cannot create a temp file beside", path, exc) from exc
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits from the mode asked for
        write_all(fd, data)
        if fsync:
            os.fsync(fd)  # the data is durable before the name points at it
        os.replace(tmp, path)
    except BaseException as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise error("cannot write", path, exc) from exc
        raise
    if not keep_open:
        os.close(fd)
        fd = -1
    if fsync:
        fsync_folder(path)
    return fd


def fsync_folder(path: Path) -> None:
    """Make a rename in ``path``'s folder durable."""
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise error("cannot fsync the folder of", path, exc) from exc


def make_folder(path: Path) -> None:
    """Create ``path``'s folder and any missing parents, each 0700 (owner only).

    ``Path.mkdir(parents=True)`` would give the parents the umask's mode, which may
    leave a world-writable folder on the queue's path.
    """
    missing = []
    folder = path.parent.absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)  # the umask may have removed bits from the mode asked for
        except FileExistsError:
            continue
        except OSError as exc:
            raise error("cannot create the folder of", path, exc) from exc


def read_all(fd: int, size: int) -> bytes:
    """Read ``fd`` to its end (``size`` is a hint for the first read)."""
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, max(size, 1 << 16))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unlink_quietly(path: Path) -> bool:
    """Remove ``path``; False if that failed (it was gone already, say)."""
    try:
        path.unlink()
    except OSError:
        return False
    return True


def error(what: str, path: Path, exc: OSError) -> StorageError:
    """Translate an ``OSError`` on ``path`` into djq's ``StorageError``, keeping its errno."""
    return StorageError(f"{what} {path}: {exc.strerror or exc}", path=str(path), errno=exc.errno)
