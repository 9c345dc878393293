"""A tracked process's mappings: labels, what is trackable, and pages per mapping."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..kernel import procfs
from ..pages import Pages

__all__ = ["MappingInfo", "by_mapping", "contains", "overlaps", "trackable"]


class MappingInfo(NamedTuple):
    """One mapping of the target (a /proc/PID/maps line) and its label."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str  #: as in maps: a file path, "[heap]", "[stack]", "" for anonymous memory
    dev: str = ""  #: "major:minor" of what backs it (with ``inode``: the memory object)

    @property
    def label(self) -> str:
        """"heap", "stack", "anon", "[vdso]"-style names, or the file's base name."""
        if self.path == "[heap]":
            return "heap"
        if self.path.startswith("[stack"):
            return "stack"
        if not self.path:
            return "anon"
        if self.path.startswith("["):
            return self.path
        return os.path.basename(self.path.removesuffix(" (deleted)")) or self.path

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    @classmethod
    def of(cls, m: procfs.Mapping) -> MappingInfo:
        return cls(m.start, m.end, m.perms, m.offset, m.inode, m.path, m.dev)


def trackable(m: procfs.Mapping | MappingInfo) -> bool:
    """Writable and not kernel-provided ([vvar], [vdso]...): what user code can write."""
    return m.perms[1] == "w" and m.path not in procfs.SPECIAL


def by_mapping(pages: Pages | None,
               mappings: Sequence[MappingInfo]) -> Iterator[tuple[MappingInfo, int]]:
    """Pages of ``pages`` in each mapping (mappings with some only)."""
    if pages is None or not len(pages) or not mappings:
        return
    r = pages.ranges
    ps = pages.page_size
    starts = np.array([m.start for m in mappings], np.uint64)
    ends = np.array([m.end for m in mappings], np.uint64)
    # pages per mapping: overlap of every range with it, summed (sorted, disjoint ranges:
    # only those between the mapping's bounds can overlap)
    lo_idx = np.searchsorted(r[:, 1], starts, side="right")
    hi_idx = np.searchsorted(r[:, 0], ends, side="left")
    for m, a, b, lo, hi in zip(mappings, lo_idx.tolist(), hi_idx.tolist(), starts, ends,
                               strict=True):
        if a >= b:
            continue
        part = r[a:b]
        n = int((np.minimum(part[:, 1], hi) - np.maximum(part[:, 0], lo)).sum()) // ps
        if n:
            yield m, n


def overlaps(runs: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether ``[lo, hi)`` meets one of the sorted disjoint ``runs``."""
    i = bisect.bisect_right(starts, lo) - 1
    if i >= 0 and runs[i][1] > lo:
        return True
    return i + 1 < len(runs) and runs[i + 1][0] < hi


def contains(runs: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether ``[lo, hi)`` lies inside one of the sorted disjoint ``runs``."""
    i = bisect.bisect_right(starts, lo) - 1
    return i >= 0 and runs[i][1] >= hi
