"""The storage protocol, and rewrite storage.

Storage knows bytes and files, not rules: it never decides a task's fate. ``Storage``
is what the engine uses (load, save, has_changed, check with structured ``Problem``s,
repair, compact), implemented by ``QueueFile`` (rewrite: every change replaces
``Queue.json``) and ``journal.JournalFile`` (every change appends a line beside it).
Both keep ``Queue.json`` in a ``snapshot.SnapshotFile``. Imports from djq: ``errors``,
``ops``, ``snapshot``, ``state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, CorruptQueueError, StorageError
from .ops import Op, PutMany
from .snapshot import Snapshot, SnapshotFile
from .state import QueueState

__all__ = ["Applied", "Problem", "QueueFile", "Storage"]

#: The operations a transaction applied that changed the state, each with its ``now``.
Applied = Sequence[tuple[Op[Any], float]]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing ``check`` found wrong with the stored queue.

    ``kind`` says what (``"corrupt"``, ``"torn"``, ``"temp"``, ``"mode"``, ``"io"``);
    ``fixable`` says whether ``check(fix=True)`` repairs it (it never repairs anything else).
    """

    kind: str
    message: str
    fixable: bool = False

    def __str__(self) -> str:
        return self.message


class Storage(Protocol):
    """What the engine needs of a storage: bytes and files, never rules.

    Callers hold the queue's lock around ``load`` + ``save``; ``load`` alone is safe
    without it. ``reads`` and ``writes`` count what was actually read and written.
    """

    path: Path

    @property
    def reads(self) -> int:
        """Times the stored queue was read and decoded."""

    @property
    def writes(self) -> int:
        """Times something was written."""

    def load(self) -> QueueState:
        """Return the current state (the cache, unless the files changed)."""

    def save(self, state: QueueState, applied: Applied | None) -> None:
        """Store ``state``; ``applied`` are the operations that made it from the loaded one."""

    def put_deferred(self, op: PutMany, now: float) -> list[str] | None:
        """Store a put, not yet applied to the state (under the lock); None: ``load``, apply, ``save`` it."""

    def settle(self, *, everything: bool = False) -> None:
        """Apply what ``put_deferred`` deferred, lock free: all of it, or only if it is much."""

    def sync(self) -> OSError | None:
        """Make the last save durable, with the lock free; the error if that failed (never raises)."""

    def sync_failed(self, error: OSError) -> None:
        """Under the lock again after ``sync`` failed: undo the change (raise StorageError) or keep it."""

    def has_changed(self) -> bool:
        """Whether the files differ from what this process last read or wrote."""

    def cached(self) -> QueueState | None:
        """The state as this process last read or wrote it, without looking at the files (None: none yet)."""

    def file_bytes(self) -> int:
        """Bytes of the stored queue, as last seen."""

    def check(self) -> list[Problem]:
        """Validate the files; return what is wrong (empty when healthy)."""

    def repair(self, problems: Sequence[Problem]) -> None:
        """Repair the ``fixable`` problems (under the lock, after ``load``)."""

    def compact(self, state: QueueState) -> bool:
        """Fold the stored queue into one fresh file now; False if there is nothing to fold."""

    def make_folder(self) -> None:
        """Create the queue's folder (0700)."""

    def remove_temp_files(self) -> list[Path]:
        """Remove temp files left by crashed writers (under the lock)."""

    def invalidate(self) -> None:
        """Forget the cache: the next ``load`` reads the files."""

    def close(self) -> None:
        """Close the files held open."""


class QueueFile(SnapshotFile):
    """Rewrite storage: every change replaces all of ``Queue.json`` (O(tasks) per call).

    Implements ``Storage``. A snapshot written by journal storage is refused: its changes
    are in the journal beside it.
    """

    def load(self) -> QueueState:  # type: ignore[override]
        """Return the state in the file, reading it only if it changed."""
        snapshot = super().load()
        if snapshot.storage == "journal":
            self.invalidate()
            raise ConfigError(
                f"{self.path} uses journal storage (changes are in {self.path.name}.journal); "
                "open it with storage='journal'",
                field="storage",
            )
        return snapshot.state

    def cached(self) -> QueueState | None:
        """The state as last read or written, without looking at the file (None: none yet)."""
        return None if self._snapshot is None else self._snapshot.state

    def put_deferred(self, op: PutMany, now: float) -> list[str] | None:
        """None: the file holds the whole state, so every put is applied to it."""
        return None

    def settle(self, *, everything: bool = False) -> None:
        """Nothing is ever deferred."""

    def sync(self) -> None:
        """Nothing to do: ``save`` replaced the file durably, under the lock."""

    def sync_failed(self, error: OSError) -> None:
        """Never called: ``sync`` never fails."""

    def save(self, state: QueueState, applied: Applied | None = None) -> None:  # type: ignore[override]
        """Replace the file with ``state`` (``applied`` is not needed: the file holds it all)."""
        super().save(Snapshot(state))

    def check(self) -> list[Problem]:
        """Validate the file; return the problems."""
        problems = check_snapshot(self)
        if not problems:
            self.load()  # a journal queue: ConfigError naming storage, as for every other call
        return problems

    def repair(self, problems: Sequence[Problem]) -> None:
        """Nothing in one file is safe to repair but temp files (``remove_temp_files``)."""

    def compact(self, state: QueueState) -> bool:
        """Nothing to fold: the file is always whole."""
        return False


def check_snapshot(file: SnapshotFile) -> list[Problem]:
    """Read ``Queue.json`` afresh; return what is wrong with it (its mode, its contents)."""
    file.invalidate()
    problems = []
    try:
        SnapshotFile.load(file)
    except CorruptQueueError as exc:
        problems.append(Problem("corrupt", f"corrupt: {exc.reason}"))
    except StorageError as exc:
        problems.append(Problem("io", str(exc)))
    mode = _mode(file.path)
    if mode is not None and mode & 0o077:
        problems.append(Problem("mode", f"{file.path} is mode {mode:o}; djq creates it 600 (owner only)"))
    return problems


def _mode(path: Path) -> int | None:
    try:
        return path.lstat().st_mode & 0o777
    except OSError:
        return None
