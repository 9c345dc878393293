"""Snapshots of a whole program: every process of a tree at one pause, shared memory once.

A tree snapshot is one manifest over several *spaces*: one per process (its private
mappings, at their addresses) and one per shared memory object (MAP_SHARED anonymous
memory, SysV segments, memfd and /dev/shm files, shared file mappings: at their offsets in
the object). Addresses in the manifest carry the space in their top bits
(``space << SPACE_SHIFT | address``; user addresses stay below 2**52 on x86-64 and arm64), so
the chain logic of single-process snapshots (deltas, restore, verify, compact) applies
unchanged. The manifest's ``source.spaces`` says what each space is and, per process, how
its image is assembled: its private regions from its own space, each shared mapping from
its object's space at the mapping's offset. A page of shared memory is stored once, however
many processes map it.

Consistency: every member is stopped (ptrace interrupt) for the collect and the read, so the
image is every process's memory at one moment. Processes outside the tree that map its shared
memory writable make that impossible (they keep writing while the tree is stopped, and no page
table of the tree shows their writes): a save then fails with
:class:`SharedWithUntracked`, unless ``shared="pause"`` stops them too and their shared
mappings are saved by content.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors
from ..kernel import LINUX, procfs
from ..pages import Pages
from .errors import SnapshotError
from .format import Region
from .source import Source, hold_untracked, process_vm_readv

__all__ = ["SPACE_SHIFT", "TreeSource", "assemble", "split_address"]

#: bits below the space number in a tree manifest's addresses
SPACE_SHIFT = 52
_MASK = (1 << SPACE_SHIFT) - 1
_U64 = np.uint64


def encode(space: int, addr: int) -> int:
    return (space << SPACE_SHIFT) | addr


def split_address(addr: int) -> tuple[int, int]:
    """``(space, address)`` of a tree manifest address."""
    return addr >> SPACE_SHIFT, addr & _MASK


@dataclass
class _Space:
    index: int
    kind: str  #: "process" or "object"
    pid: int = 0
    starttime: int = 0
    key: tuple[str, int] = ("", 0)  #: (dev, inode) of an object
    path: str = ""


class TreeSource(Source):
    """The processes of a :class:`writewatch.ProcessTracker` (attach(..., tree=True),
    follow_forks, a cgroup, several pids) as one snapshot source."""

    kind = "tree"
    stops = True

    def __init__(self, tracker: Any, *, owned: bool = False, shared: str = "fail") -> None:
        if shared not in ("fail", "pause"):
            raise errors.InvalidTarget(f"shared={shared!r}", hint='"fail" or "pause"')
        self.tracker = tracker
        self.owned = owned
        self.shared = shared
        self.page_size = tracker.page_size
        self.last_pause = 0.0
        self.stopped_by = "ptrace"
        self.on_pause: Any = None
        self.hook_time = 0.0  #: seconds the last pause spent in on_pause (verification)
        self._spaces: dict[tuple[Any, ...], _Space] = {}
        self._maps: dict[int, tuple[procfs.Mapping, ...]] = {}
        self._views: dict[int, list[tuple[procfs.Mapping, int]]] = {}  # object space -> views
        self._untracked: tuple[int, ...] = ()
        self._stack: contextlib.ExitStack | None = None

    @property
    def pid(self) -> int:
        """The root process."""
        return int(self.tracker.pid)

    # -- spaces ---------------------------------------------------------------------------------
    def _process_space(self, pid: int) -> _Space:
        st = procfs.read_stat(pid)
        ident = ("process", pid, st.starttime if st else 0)
        sp = self._spaces.get(ident)
        if sp is None:
            sp = self._spaces[ident] = _Space(len(self._spaces), "process", pid, ident[2])
        return sp

    def _object_space(self, m: procfs.Mapping) -> _Space:
        ident = ("object", m.dev, m.inode)
        sp = self._spaces.get(ident)
        if sp is None:
            sp = self._spaces[ident] = _Space(len(self._spaces), "object", key=(m.dev, m.inode),
                                              path=m.path)
        return sp

    @staticmethod
    def _data(m: procfs.Mapping) -> bool:
        return m.perms[:2] == "rw" and m.path not in procfs.SPECIAL

    # -- Source --------------------------------------------------------------------------------
    def maps(self) -> tuple[Region, ...]:
        """Every mapping of every member, in its space (metadata)."""
        self._maps = {}
        for pid in self.tracker.processes:
            try:
                self._maps[pid] = procfs.read_maps(pid)
            except errors.NoSuchProcess:
                continue
        out = []
        for pid, maps in self._maps.items():
            sp = self._process_space(pid)
            out += [Region(encode(sp.index, m.start), encode(sp.index, m.end), m.perms,
                           m.offset, m.path) for m in maps]
        return tuple(out)

    def regions(self, maps: tuple[Region, ...] = ()) -> tuple[Region, ...]:
        """The data: each member's private writable mappings, and each shared object's
        windows (the union of the members' views of it)."""
        if not self._maps:
            self.maps()
        out: list[Region] = []
        windows: dict[int, list[tuple[int, int]]] = {}
        self._views = {}
        for pid, lines in self._maps.items():
            sp = self._process_space(pid)
            for m in lines:
                if not self._data(m):
                    continue
                if m.shared and m.inode:
                    osp = self._object_space(m)
                    windows.setdefault(osp.index, []).append(
                        (m.offset, m.offset + m.end - m.start))
                    self._views.setdefault(osp.index, []).append((m, pid))
                else:
                    out.append(Region(encode(sp.index, m.start), encode(sp.index, m.end),
                                      m.perms, m.offset, m.path))
        for idx, wins in windows.items():
            path = next(s.path for s in self._spaces.values() if s.index == idx)
            for lo, hi in Pages(wins, self.page_size):
                out.append(Region(encode(idx, lo), encode(idx, hi), "rw-s", lo, path))
        return tuple(sorted(out, key=lambda r: r.start))

    def collect(self) -> Pages:
        if not self._maps:
            self.maps()  # the members' mappings before the collect: its pages' windows
        t = self.tracker
        t.collect()
        info = t.last
        self._untracked = hold_untracked(info, self.shared, self._stack)
        ps = self.page_size
        parts: list[np.ndarray] = []
        for pid, pages in info.by_process().items():
            maps = self._maps.get(pid)
            if maps is None or not pages:
                continue
            sp = self._process_space(pid)
            for m in maps:
                if not self._data(m):
                    continue
                got = pages.clip(m.start, m.end).ranges
                if not len(got):
                    continue
                if m.shared and m.inode:
                    osp = self._object_space(m)
                    delta = encode(osp.index, m.offset) - m.start
                else:
                    delta = encode(sp.index, 0)
                parts.append(got + _U64(delta % (1 << 64)))
        return Pages.from_kernel(np.concatenate(parts) if parts else np.empty((0, 2), _U64),
                                 ps)

    def tracked(self) -> Pages:
        """Every data page: the tracker covers each member's writable memory (shared memory
        with untracked writers is reported whole by it, and read again)."""
        return Pages([(r.start, r.end) for r in self.regions()], self.page_size)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                # stopped processes cannot fork; a fork that was under way completes (its
                # event is read) and its child is taken over, then stopped too
                held: set[int] = set()
                while True:
                    for pid in self.tracker.processes:
                        if pid not in held:
                            held.add(pid)
                            with contextlib.suppress(errors.NoSuchProcess):
                                stack.enter_context(LINUX.stopped(pid))
                    if not self.tracker.refresh() and held >= set(self.tracker.processes):
                        break
                self._stack = stack
                self._maps = {}
                yield
                self.hook_time = 0.0
                if self.on_pause is not None:
                    th = time.perf_counter()
                    self.on_pause(self)
                    self.hook_time = time.perf_counter() - th
        finally:
            self.last_pause = time.perf_counter() - t0

    def read(self, runs: np.ndarray, out: np.ndarray) -> None:
        """Copy encoded ranges: a process's from it (one process_vm_readv batch for each
        stretch of ranges in its space), an object's through a member's view."""
        runs = np.ascontiguousarray(runs, _U64)
        if not len(runs):
            return
        space = (runs[:, 0] >> _U64(SPACE_SHIFT)).astype(np.int64)
        lengths = (runs[:, 1] - runs[:, 0]).astype(np.int64)
        offs = np.concatenate([[0], np.cumsum(lengths)])
        brk = np.flatnonzero(np.diff(space)) + 1
        bounds = np.concatenate([[0], brk, [len(runs)]]).tolist()
        by_index = {s.index: s for s in self._spaces.values()}
        for i, j in itertools.pairwise(bounds):
            sp = by_index.get(int(space[i]))
            if sp is None:
                raise SnapshotError(f"no space {int(space[i])} in this tree snapshot")
            dst = out[int(offs[i]):int(offs[j])]
            if sp.kind == "process":
                local = runs[i:j] & _U64(_MASK)
                process_vm_readv(sp.pid, local, dst)
                continue
            for k in range(i, j):
                _, addr = split_address(int(runs[k, 0]))
                self._read_object(sp.index, addr, out[int(offs[k]):int(offs[k + 1])])

    def _read_object(self, space: int, offset: int, dst: np.ndarray) -> None:
        end = offset + dst.nbytes
        done = offset
        while done < end:
            for m, pid in self._views.get(space, ()):
                lo, hi = m.offset, m.offset + m.end - m.start
                if lo <= done < hi:
                    upto = min(hi, end)
                    va = m.start + done - lo
                    process_vm_readv(pid, np.array([[va, va + upto - done]], _U64),
                                     dst[done - offset:upto - offset])
                    done = upto
                    break
            else:
                raise SnapshotError(f"no tracked process maps offset {done:#x} of shared "
                                    "memory any more", hint="take a new full snapshot")

    def describe(self) -> dict[str, Any]:
        spaces = []
        for s in sorted(self._spaces.values(), key=lambda s: s.index):
            d: dict[str, Any] = {"space": s.index, "kind": s.kind}
            if s.kind == "process":
                d.update(pid=s.pid, starttime=s.starttime)
                maps = self._maps.get(s.pid)
                if maps is not None:
                    d["views"] = [
                        {"start": m.start, "end": m.end, "perms": m.perms, "path": m.path,
                         "object": self._object_space(m).index if m.shared and m.inode
                         else None, "offset": m.offset}
                        for m in maps if self._data(m)]
            else:
                d.update(dev=s.key[0], inode=s.key[1], path=s.path)
            spaces.append(d)
        root = self.tracker.pid
        st = procfs.read_stat(root)
        return {"kind": self.kind, "pid": root, "starttime": st.starttime if st else None,
                "root_space": self._process_space(root).index
                if root in self._maps else 0, "processes": list(self._maps),
                "spaces": spaces, "untracked": list(self._untracked),
                "tracker": getattr(self.tracker, "backend", None)}

    def close(self) -> None:
        if self.owned:
            self.tracker.close()


def assemble(source: dict[str, Any], pid: int | None) -> tuple[list[Region], list[int]]:
    """For a tree manifest's ``source``: process ``pid``'s writable regions (its own
    addresses) and, per region, the manifest address of its first page (pages follow)."""
    want = source.get("pid") if pid is None else pid
    for sp in source.get("spaces", ()):
        if sp.get("kind") == "process" and sp.get("pid") == want and "views" in sp:
            regions, starts = [], []
            for v in sp["views"]:
                regions.append(Region(int(v["start"]), int(v["end"]), str(v["perms"]),
                                      int(v["offset"]), str(v["path"])))
                if v.get("object") is None:
                    starts.append(encode(int(sp["space"]), int(v["start"])))
                else:
                    starts.append(encode(int(v["object"]), int(v["offset"])))
            return regions, starts
    known = [sp["pid"] for sp in source.get("spaces", ()) if sp.get("kind") == "process"]
    raise errors.NoSuchProcess(int(want or 0), f"process {want} is not in this snapshot",
                               hint=f"its processes: {', '.join(map(str, known))}")
