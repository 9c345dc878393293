"""Snapshot errors, rooted at :class:`writewatch.WriteWatchError`."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidTarget, WriteWatchError

__all__ = ["BadStorePath", "CorruptSnapshot", "NoSuchSnapshot", "SharedWithUntracked",
           "SizeMismatch", "SnapshotError", "StoreLocked"]


class SnapshotError(WriteWatchError):
    """Something about a snapshot store or one of its snapshots is wrong."""

    __module__ = "writewatch.snapshot"


class CorruptSnapshot(SnapshotError):
    """A manifest or chunk failed its checksum or could not be decoded. Nothing was restored
    from it: ``snapshot`` and ``chunk`` name what is damaged."""

    __module__ = "writewatch.snapshot"

    def __init__(self, message: str, *, snapshot: str | None = None, chunk: str | None = None,
                 **kw: object) -> None:
        self.snapshot = snapshot
        self.chunk = chunk
        where = []
        if snapshot is not None:
            where.append(f"snapshot {snapshot}")
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if where:
            message = f"{', '.join(where)}: {message}"
        kw.setdefault("hint", "restore an earlier snapshot; `writewatch snapshots STORE "
                              "--verify` lists every damaged one")
        super().__init__(message, **kw)  # type: ignore[arg-type]


class NoSuchSnapshot(SnapshotError, KeyError):
    """The store has no snapshot of that name."""

    __module__ = "writewatch.snapshot"

    def __str__(self) -> str:
        return WriteWatchError.__str__(self)


class SizeMismatch(SnapshotError, InvalidTarget):
    """The buffer given to restore into does not have the snapshot's size."""

    __module__ = "writewatch.snapshot"


class StoreLocked(SnapshotError):
    """Another writer holds the store's lock."""

    __module__ = "writewatch.snapshot"


class BadStorePath(SnapshotError, InvalidTarget):
    """The store path cannot be a snapshot store: empty, a regular file, under a file, a
    directory holding other files, or on a file system that refuses it (/proc, /sys)."""

    __module__ = "writewatch.snapshot"


class SharedWithUntracked(SnapshotError):
    """Processes outside the snapshotted set map its shared memory writable: an image of it
    would not be one moment of that memory, and their writes are invisible to the tracker.
    ``pids`` names them."""

    __module__ = "writewatch.snapshot"

    def __init__(self, message: str, *, pids: tuple[int, ...] = (), **kw: Any) -> None:
        self.pids = pids
        kw.setdefault("hint", "snapshot the whole tree (writewatch snapshot --tree PID, or "
                              "attach(pid, tree=True, follow_forks=True)), or pass "
                              "shared='pause' (--shared pause) to stop them during each save")
        super().__init__(message, **kw)
