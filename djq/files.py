"""Files as djq writes them: one atomic write for every file, owner-only folders, temp files.

``write_atomic`` is the only way djq replaces a file (``Queue.json``, its journal, the
broker's key and info; its twin ``create_once`` creates the lock kind record): a temp
file in the same folder, created 0600 (or the mode asked for) with ``O_EXCL|O_NOFOLLOW``
under an unpredictable name, written whole, fsynced when durability matters,
``os.replace``d over the target, the folder fsynced. A crash leaves the old file or the
new one, never half of one, and at worst a temp file that ``temp_files`` finds. Imports
from djq: ``errors``.

What "written" means (the point where a call has committed its change): the new file's
data is fsynced and ``os.replace`` has put it in place, so every process that opens the
queue from then on sees it. ``write_atomic`` raises ``StorageError`` only for failures
before that point, when the old file is still in place. A failure of the folder fsync
after the replace cannot undo the replace; raising then would tell the caller a change
failed that every other process sees (a retried put would duplicate). So it is logged
as a warning and remembered: the next durable write in that folder (``sync_pending``,
which ``write_atomic`` and journal appends call first) fsyncs the folder again, and fails
that write, before it changes anything, if the folder still cannot be synced. The window
this leaves: a power loss between the failed folder fsync and the next write in the
folder may undo the rename.

Two helpers serve the journal's hot path: ``read_to_zeros`` reads a file padded with
zeros up to its first NUL, and ``stat_untimed`` stats a file without asking for its times.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import secrets
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import StorageError

__all__ = [
    "create_once",
    "error",
    "fsync_folder",
    "make_folder",
    "only_zeros",
    "read_all",
    "read_small",
    "read_to_zeros",
    "stat_untimed",
    "sync_pending",
    "temp_files",
    "temp_name",
    "unlink_quietly",
    "write_all",
    "write_atomic",
]

logger = logging.getLogger(__name__)

_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_unsynced: set[Path] = set()  # folders whose fsync after a replace failed: synced before the next write
_unsynced_mutex = threading.Lock()


def temp_name(path: Path) -> Path:
    """Return a fresh, unpredictable temp path beside ``path`` (``.NAME.<pid>.<hex>.tmp``)."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def temp_files(path: Path) -> list[Path]:
    """Return the temp files a crashed writer of ``path`` (snapshot or journal) may have left."""
    pattern = re.compile(rf"\.{re.escape(path.name)}(\.journal|\.lockkind)?\.\d+\.[^.]+\.tmp")
    return sorted(p for p in path.parent.glob(f".{path.name}.*.tmp") if pattern.fullmatch(p.name))


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True, keep_open: bool = False
) -> int:
    """Replace ``path`` with ``data`` atomically; return the new file's fd if ``keep_open``, else -1.

    The file is readable and writable as ``mode`` says (0600 unless told), whatever the
    umask. With ``fsync`` the data and the rename are durable on return (but for a failed
    folder fsync after the rename: see the module's docstring). On any error raised the
    old file is intact and the temp file is gone.

    Raises:
        StorageError: the folder is missing or not writable, the disk is full, an fsync
            failed (the file's, or a folder fsync left over from an earlier write).
    """
    tmp, fd = _write_temp(path, data, mode, fsync)
    try:
        os.replace(tmp, path)
    except BaseException as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise error("cannot write", path, exc) from exc
        raise
    # The change is committed: from here on nothing raises StorageError.
    if not keep_open:
        os.close(fd)
        fd = -1
    if fsync:
        _sync_folder_or_defer(path)
    return fd


def create_once(path: Path, data: bytes, *, mode: int = 0o600, fsync: bool = True) -> bool:
    """Create ``path`` holding ``data`` unless it exists; return False if it existed.

    Atomic like ``write_atomic`` (a temp file, written whole and fsynced, then hard-linked
    to the name: ``link`` fails where a name exists, so of two processes creating one file
    at once exactly one does, whatever lock they hold). A file system without hard links
    gets none: False, with a warning.

    Raises:
        StorageError: as ``write_atomic``; ``path`` is as before.
    """
    tmp, fd = _write_temp(path, data, mode, fsync)
    try:
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                logger.warning("%s not created: the file system has no hard links (%s)", path, exc)
                return False
            raise error("cannot write", path, exc) from exc
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)
    if fsync:
        _sync_folder_or_defer(path)
    return True


def _write_temp(path: Path, data: bytes, mode: int, fsync: bool) -> tuple[Path, int]:
    """A new temp file beside ``path`` holding ``data`` (fsynced if asked); its name and open fd."""
    if fsync:
        sync_pending(path)
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
    except BaseException as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise error("cannot write", path, exc) from exc
        raise
    return tmp, fd


def _sync_folder_or_defer(path: Path) -> None:
    """Fsync ``path``'s folder after a committed change; on failure, log and retry at the next write."""
    try:
        fsync_folder(path)
    except StorageError as exc:
        with _unsynced_mutex:
            _unsynced.add(path.parent.absolute())
        logger.warning("%s is written, but not yet durable (retried at the next write): %s", path, exc)


def read_small(path: Path, limit: int = 1 << 16) -> bytes | None:
    """Return the bytes of a small file (at most ``limit`` are read), None if it does not exist.

    Raises:
        StorageError: it cannot be opened or read (a symlink among the reasons).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error("cannot open", path, exc) from exc
    try:
        return os.read(fd, limit)
    except OSError as exc:
        raise error("cannot read", path, exc) from exc
    finally:
        os.close(fd)


def sync_pending(path: Path) -> None:
    """Fsync ``path``'s folder if a folder fsync there failed after a replace; raise if it fails again.

    Raises:
        StorageError: the folder still cannot be synced (nothing was changed).
    """
    if not _unsynced:
        return  # the common case, before any path arithmetic
    folder = path.parent.absolute()
    if folder not in _unsynced:
        return
    fsync_folder(path)
    with _unsynced_mutex:
        _unsynced.discard(folder)


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


def read_to_zeros(fd: int, at: int, size: int, first: int = 4096) -> tuple[bytes, int]:
    """Read a file of ``size`` bytes padded with zeros, from ``at`` to its first NUL (or its end).

    One ``pread`` of ``first`` bytes, unless no NUL is in those. Returns the bytes before
    the NUL and where the zeros seen after them end; -1 if a byte after the NUL is not zero
    (a write that reached the disk out of order). Raises ``OSError``.
    """
    data = os.pread(fd, min(size - at, first), at) if size > at else b""
    end = data.find(0)
    if end < 0 and at + len(data) < size:
        data += os.pread(fd, size - at - len(data), at + len(data))
        end = data.find(0)
    if end < 0:
        return data, at + len(data)  # the file's end, no zeros after it
    return data[:end], at + len(data) if only_zeros(data, end) else -1


def only_zeros(data: bytes, start: int = 0) -> bool:
    """Whether every byte of ``data`` from ``start`` on is a NUL (the room a journal grows into).

    A comparison with as many zero bytes: 0.5 µs for 4 KiB here, where ``bytes.count`` took 2.8.
    """
    size = len(data) - start
    return size <= 0 or data.startswith(bytes(size), start)


_STATX_MASK = 0x1 | 0x100 | 0x200  # STATX_TYPE | STATX_INO | STATX_SIZE: no timestamps
_STATX = struct.Struct("=28xHxxQQ")  # struct statx: stx_mode at byte 28, stx_ino at 32, stx_size at 40
_statx: Any = None  # libc's statx; False where there is none


def stat_untimed(path: bytes) -> os.stat_result:
    """``os.stat(path, follow_symlinks=False)`` that asks for type, inode and size only (Linux ``statx``).

    Since Linux 6.13 a file whose change time was asked for (as ``stat`` does) takes a
    fine-grained time at its next write, and the ``fdatasync`` after that write costs
    about 60 us more on ext4 (measured here: 180 to 220 us a write against 120 to 130).
    The journal is stat'ed before every write, so it is stat'ed this way; the result's
    times are 0. Elsewhere (no ``statx``) it is ``os.stat``. Raises ``OSError``.
    """
    global _statx
    if _statx is None:
        _statx = _load_statx()
    if _statx is False:
        return os.stat(path, follow_symlinks=False)
    buf = ctypes.create_string_buffer(256)  # one per call: the call releases the GIL
    if _statx(-100, path, 0x100, _STATX_MASK, buf):  # AT_FDCWD, AT_SYMLINK_NOFOLLOW
        code = ctypes.get_errno()
        if code == errno.ENOSYS:  # a kernel or a sandbox without statx
            _statx = False
            return os.stat(path, follow_symlinks=False)
        raise OSError(code, os.strerror(code), os.fsdecode(path))
    mode, ino, size = _STATX.unpack_from(buf)
    return os.stat_result((mode, ino, 0, 1, 0, 0, size, 0, 0, 0))


def _load_statx() -> Any:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).statx
    except (OSError, AttributeError):  # no argtypes: ints and bytes convert as they are, faster
        return False


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
