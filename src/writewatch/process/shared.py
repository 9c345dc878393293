"""Shared memory as one object: the mappings of it in tracked processes, the union of what
they wrote, and the processes outside the tracked set that map it too.

A shared mapping is a window on a memory object, named by what backs it: ``(dev, inode)`` in
/proc/PID/maps. MAP_SHARED anonymous memory and SysV segments are shmem files of their own
(mm/shmem.c shmem_zero_setup, ipc/shm.c: "/dev/zero (deleted)", "SYSV%08x (deleted)"); memfd
and /dev/shm files are shmem files; everything else is a file. A write through any mapping
changes the object, so it changes every mapping of it. Page tables record a write only in
the writer's own PTE: another process's mapping of the same page keeps its uffd-wp bit (or
its clean soft-dirty bit). The union is therefore built here from each tracked process's own
report, and a process outside the tracked set that maps the object writable and shared is a
writer nobody can see: every tracked mapping of that object is reported whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from .. import errors
from ..kernel import procfs
from ..pages import Pages
from .mappings import MappingInfo, trackable

__all__ = ["ObjectKey", "SharedWrites", "SharerScan", "View", "unmapped_views", "views"]

_U64 = np.uint64


class ObjectKey(NamedTuple):
    """What backs a mapping: the device and inode of /proc/PID/maps."""

    dev: str
    inode: int


class View(NamedTuple):
    """A mapping of a memory object by one tracked process."""

    pid: int
    start: int
    end: int
    offset: int  #: byte offset in the object of ``start``
    key: ObjectKey
    shared: bool  #: MAP_SHARED: writes through it reach the object
    writable: bool
    path: str  #: as in maps

    @property
    def source(self) -> bool:
        """Writes through this view change the object."""
        return self.shared and self.writable


def kind(path: str) -> str:
    """"anon" (MAP_SHARED anonymous memory: reachable only by inheriting it through fork),
    "sysv" (shmat by id) or "file" (files, memfd, /dev/shm: anyone who can open them)."""
    if path.startswith("/dev/zero"):
        return "anon"
    if path.startswith("SYSV"):
        return "sysv"
    return "file"


def views(pid: int, mappings: Iterable[MappingInfo]) -> tuple[View, ...]:
    """The mappings of ``pid`` that are windows on a memory object and are tracked: shared
    ones (written through them or not) and private file mappings written through by others
    (their pages that were not copied on write show the object)."""
    out = []
    for m in mappings:
        if m.inode == 0 or not trackable(m):
            continue
        out.append(View(pid, m.start, m.end, m.offset, ObjectKey(m.dev, m.inode), m.shared,
                        m.perms[1] == "w", m.path))
    return tuple(out)


def unmapped_views(old: Sequence[View], new: Sequence[View]) -> list[View]:
    """The parts of the writable shared views in ``old`` that no view in ``new`` keeps
    (pure): the same addresses on the same bytes of the same object, still writable. A
    split of a mapping keeps its page tables; an unmap, a move or a change to read-only
    drops what they said was written through it since the last collect (another mapping
    of the same bytes has page tables of its own)."""
    now: dict[tuple[ObjectKey, int], list[tuple[int, int]]] = {}
    for v in new:
        if v.source:
            now.setdefault((v.key, v.start - v.offset), []).append((v.start, v.end))
    out = []
    for v in old:
        if not v.source:
            continue
        pieces = [(v.start, v.end)]
        for lo, hi in sorted(now.get((v.key, v.start - v.offset), ())):
            pieces = [p for a, b in pieces
                      for p in ((a, min(b, lo)), (max(a, hi), b)) if p[0] < p[1]]
        out += [v._replace(start=a, end=b, offset=v.offset + a - v.start) for a, b in pieces]
    return out


def _shift(ranges: np.ndarray, lo: int, hi: int, delta: int) -> np.ndarray:
    """Sorted disjoint ``ranges`` clipped to ``[lo, hi)`` and moved by ``delta`` (pure; in
    uint64 arithmetic, exact while the results fit)."""
    if not len(ranges):
        return np.empty((0, 2), _U64)
    i = int(np.searchsorted(ranges[:, 1], _U64(lo), side="right"))
    j = int(np.searchsorted(ranges[:, 0], _U64(hi), side="left"))
    part: np.ndarray = ranges[i:j].copy()
    if not len(part):
        return np.empty((0, 2), _U64)
    np.maximum(part[:, 0], _U64(lo), out=part[:, 0])
    np.minimum(part[:, 1], _U64(hi), out=part[:, 1])
    part += _U64(delta % (1 << 64))
    return part


def to_object(pages: Pages, view: View) -> np.ndarray:
    """The object byte ranges of the pages of ``pages`` inside ``view``."""
    return _shift(pages.ranges, view.start, view.end, view.offset - view.start)


def from_object(ranges: np.ndarray, view: View) -> np.ndarray:
    """The addresses in ``view`` of sorted object byte ``ranges``."""
    return _shift(ranges, view.offset, view.offset + view.end - view.start,
                  view.start - view.offset)


class SharedWrites:
    """Object byte ranges written (or to be reported) in one collect, per object."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self._parts: dict[ObjectKey, list[np.ndarray]] = {}
        self._merged: dict[ObjectKey, np.ndarray] = {}

    def add(self, key: ObjectKey, ranges: np.ndarray) -> None:
        if len(ranges):
            self._parts.setdefault(key, []).append(ranges)
            self._merged.pop(key, None)

    def add_view(self, view: View) -> None:
        """The whole view: everything it shows may have changed."""
        self.add(view.key, np.array([[view.offset, view.offset + view.end - view.start]],
                                    _U64))

    def object(self, key: ObjectKey) -> np.ndarray:
        got = self._merged.get(key)
        if got is None:
            parts = self._parts.get(key)
            got = Pages.from_kernel(np.concatenate(parts), self.page_size).ranges if parts \
                else np.empty((0, 2), _U64)
            self._merged[key] = got
        return got

    def into(self, view: View) -> np.ndarray:
        """What was written into ``view``'s object, as addresses of ``view``."""
        if view.key not in self._parts:
            return np.empty((0, 2), _U64)
        return from_object(self.object(view.key), view)

    def keys(self) -> set[ObjectKey]:
        return set(self._parts)

    def __bool__(self) -> bool:
        return bool(self._parts)


def object_pages(*writes: SharedWrites) -> int:
    """Pages of every object written in any of ``writes``, each page counted once."""
    if not writes:
        return 0
    ps = writes[0].page_size
    total = 0
    for key in set().union(*(w.keys() for w in writes)):
        total += len(Pages.from_kernel(np.concatenate([w.object(key) for w in writes]), ps))
    return total


class Sharer(NamedTuple):
    pid: int
    key: ObjectKey
    #: it mapped the object at the last scan and does not now (it exited, exec'd or
    #: unmapped it): what it wrote since that scan is unseen
    left: bool = False


class SharerScan:
    """Processes outside the tracked set that map a tracked object writable and shared.

    Reads /proc/PID/maps of every other process, looking only at lines naming a tracked
    inode (a byte search first: most processes share nothing). MAP_SHARED anonymous memory
    can only be inherited (fork) or reached through /proc/PID/map_files (CAP_SYS_ADMIN), so
    when every tracked object is of that kind only processes not seen before are read, plus
    those found mapping one before.

    A process found at one scan may write the object and then exit, exec or unmap it
    before the next: that scan reports it once more, as ``left`` (unless it has become
    one of the tracked processes, whose attaching reported its mappings whole)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}  # pid -> starttime, of processes already read
        #: pid -> (starttime, objects it mapped writable), at the last scan
        self._found: dict[int, tuple[int, frozenset[ObjectKey]]] = {}
        self.reads = 0  #: maps files read (for the cost)

    def scan(self, objects: dict[ObjectKey, str], exclude: set[int]) -> list[Sharer]:
        """``objects``: tracked object -> :func:`kind`; ``exclude``: the tracked pids."""
        if not objects:
            gone = self._left({}, exclude)
            self._found = {}
            return gone
        full = any(k != "anon" for k in objects.values())
        pattern = re.compile(rb"^\S+ \S\S\Ss \S+ (\S+) (" +
                             b"|".join(str(k.inode).encode() for k in objects) + rb") ",
                             re.MULTILINE)
        me = os.getpid()
        out: list[Sharer] = []
        now: dict[int, int] = {}
        found: dict[int, tuple[int, frozenset[ObjectKey]]] = {}
        for pid in procfs.pids():
            if pid in exclude or pid == me:
                continue
            st = procfs.read_stat(pid)
            if st is None:
                continue
            now[pid] = st.starttime
            if not full and self._seen.get(pid) == st.starttime and pid not in self._found:
                continue
            try:
                data = procfs.read_bytes(f"/proc/{pid}/maps", pid)
            except errors.WriteWatchError:  # gone, or not ours to read: cannot be checked
                continue
            self.reads += 1
            keys: set[ObjectKey] = set()
            for m in pattern.finditer(data):
                line = data[m.start():data.find(b"\n", m.start())]
                info = procfs.parse_maps(line)
                if not info or "w" not in info[0].perms:
                    continue
                key = ObjectKey(info[0].dev, info[0].inode)
                if key in objects and key not in keys:
                    keys.add(key)
                    out.append(Sharer(pid, key))
            if keys:
                found[pid] = (st.starttime, frozenset(keys))
        self._seen = now
        out += self._left(found, exclude)
        self._found = found
        return out

    def _left(self, found: dict[int, tuple[int, frozenset[ObjectKey]]],
              exclude: set[int]) -> list[Sharer]:
        """The objects processes mapped at the last scan and do not map now."""
        out = []
        for pid, (start, keys) in self._found.items():
            if pid in exclude:
                continue
            same = found.get(pid)
            still = same[1] if same is not None and same[0] == start else frozenset()
            out += [Sharer(pid, k, left=True) for k in sorted(keys - still)]
        return out


def object_kinds(all_views: Sequence[View]) -> dict[ObjectKey, str]:
    """The shared objects among ``all_views``, with their :func:`kind`."""
    out: dict[ObjectKey, str] = {}
    for v in all_views:
        if v.shared:
            out.setdefault(v.key, kind(v.path))
    return out
