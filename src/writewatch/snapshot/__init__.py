"""Incremental memory snapshots: store only what was written, restore any point exactly.

>>> from writewatch.snapshot import Snapshotter
>>> with Snapshotter(buf, "/var/tmp/snaps") as s:   # doctest: +SKIP
...     first = s.save()          # full
...     buf[:4096] = 1
...     second = s.save()         # only the written page
...     s.restore(first, into=buf)

See docs/snapshot.md for the store layout, consistency and numbers.
"""

from .errors import (
    BadStorePath,
    CorruptSnapshot,
    NoSuchSnapshot,
    SharedWithUntracked,
    SizeMismatch,
    SnapshotError,
    StoreLocked,
)
from .format import Manifest, Region
from .precopy import PrecopyReport
from .reader import Diff, Image, SnapshotInfo, Snapshots, VerifyReport
from .snapshotter import Snapshotter
from .source import BufferSource, ProcessSource, Source
from .store import BlobNotFound, DirStore, Store, open_store
from .tree import TreeSource

__all__ = [
    "BadStorePath",
    "BlobNotFound",
    "BufferSource",
    "CorruptSnapshot",
    "Diff",
    "DirStore",
    "Image",
    "Manifest",
    "NoSuchSnapshot",
    "PrecopyReport",
    "ProcessSource",
    "Region",
    "SharedWithUntracked",
    "SizeMismatch",
    "SnapshotError",
    "SnapshotInfo",
    "Snapshots",
    "Snapshotter",
    "Source",
    "Store",
    "StoreLocked",
    "TreeSource",
    "VerifyReport",
    "open_store",
]
