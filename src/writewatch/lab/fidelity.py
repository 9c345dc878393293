"""Differential check: the same operations on real memory and on the model, compared through
PAGEMAP_SCAN categories after every step.

Layout (both sides): a 16 MiB PROT_NONE reservation ``R`` aligned to 2 MiB; the working region
``W = R + 2 MiB`` (4 MiB, two PMDs) mapped MAP_FIXED as anon / shmem / memfd / a private file
mapping, registered for async uffd-wp and armed; pages moved by mremap go to ``R + 8 MiB`` at the
same offset. After each step every page of ``R`` is classified with one generic PAGEMAP_SCAN
(category_mask 0, return_mask WPALLOWED|WRITTEN|FILE|PRESENT|SWAPPED|PFNZERO|HUGE); pages with
no VMA are absent (-1).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, KernelCalls, _sys
from ..kernel.pagemap import scan_all
from ..model.kernel import ModelKernel
from ..model.mm import Mm
from ..model.profiles import Profile
from ..model.pte import PAGE, PMD
from .profiles import running

MiB = 1 << 20
RES = 16 * MiB
W_OFF = 2 * MiB
W_LEN = 4 * MiB
DST_OFF = 8 * MiB
NPAGES = W_LEN // PAGE
CATS = int(U.PageCategory.WPALLOWED | U.PageCategory.WRITTEN | U.PageCategory.FILE |
           U.PageCategory.PRESENT | U.PageCategory.SWAPPED | U.PageCategory.PFNZERO |
           U.PageCategory.HUGE)
WRITTEN = int(U.PageCategory.WRITTEN)
KINDS = ("anon", "shmem", "memfd", "file")
PROT_NONE = 0  # include/uapi/asm-generic/mman-common.h
MAP_NORESERVE = 0x4000  # include/uapi/asm-generic/mman.h
MADV_COLLAPSE = 25  # include/uapi/asm-generic/mman-common.h (6.1)

#: op tuples: ("write", page, n) ("read", page, n) ("dontneed", page, n)
#: ("mprotect", page, n, "r"|"rw") ("mremap", page, n) ("munmap", page, n) ("fork",)
#: ("collect",) ("write_moved", page, n) ("read_moved", page, n): pages moved by mremap;
#: ("child_write", page, n): a forked child writes the pages, then exits (the parent's page
#: tables see it only where the memory is shared); ("pageout", page, n): MADV_PAGEOUT (swap
#: out where there is swap, unmap page-cache pages); ("collapse", page, n): MADV_COLLAPSE
Op = tuple[Any, ...]


def categories(kernel: KernelCalls, pm: int, start: int, length: int) -> np.ndarray:
    """Per page of [start, start+length): its categories & CATS, -1 where nothing is mapped."""
    res = scan_all(kernel.pagemap_scan, pm, start, start + length, batch=4096,
                   return_mask=CATS, page_size=PAGE).regions
    out = np.full(length // PAGE, -1, np.int64)
    for s, e, c in res.tolist():
        out[(s - start) // PAGE:(e - start) // PAGE] = c
    return out


#: classic pagemap bits compared in "pagemap" mode (kernels without PAGEMAP_SCAN)
PAGEMAP_BITS = (U.PagemapBit.PRESENT | U.PagemapBit.SWAPPED | U.PagemapBit.FILE_SHARED |
                U.PagemapBit.SOFT_DIRTY | U.PagemapBit.UFFD_WP)


def pagemap_bits(kernel: KernelCalls, pm: int, start: int, length: int) -> np.ndarray:
    """Per page: the flag bits (55-63) of its 64-bit pagemap entry that both sides can know,
    moved to bits 16-24 (clear of the PAGE_IS_* values, and positive)."""
    raw = kernel.pagemap_read(pm, start, length // PAGE)
    out: np.ndarray = ((raw & np.uint64(int(PAGEMAP_BITS))) >> np.uint64(39)).astype(np.int64)
    return out


class _Side:
    """One side (real or model) of the differential run."""

    def __init__(self, kernel: KernelCalls, mm: Mm | None, mode: str = "scan") -> None:
        self.k = kernel
        self.mm = mm
        self.mode = mode
        self.uffd = -1
        self.pm = -1

    def arm(self, w: int) -> None:
        k = self.k
        if self.mode == "pagemap":  # soft-dirty: clear_refs 4 is the arm and the collect
            self.pm = k.open_pagemap("self")
            self.collect(w)
            return
        self.uffd = k.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
        k.uffdio_api(self.uffd, int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED))
        k.uffdio_register(self.uffd, w, W_LEN, U.UffdRegisterMode.WP)
        self.pm = k.open_pagemap("self")
        self.collect(w)

    def collect(self, w: int) -> None:
        if self.mode == "pagemap":
            self.k.clear_refs("self", U.CLEAR_REFS_SOFT_DIRTY)
            return
        scan_all(self.k.pagemap_scan, self.pm, w, w + W_LEN, batch=4096,
                 flags=int(U.PmScanFlag.WP_MATCHING), category_mask=WRITTEN,
                 return_mask=WRITTEN, page_size=PAGE)

    def close(self) -> None:
        for fd in (self.uffd, self.pm):
            if fd >= 0:
                self.k.close(fd)
        self.uffd = self.pm = -1


@dataclass(frozen=True)
class Mismatch:
    """One page whose categories (or pagemap bits) differ between the kernel and the model."""

    step: int
    op: Op | None
    page: int  #: page index in the reservation
    real: int
    model: int

    def __str__(self) -> str:
        def name(c: int) -> str:
            if c < 0:
                return "unmapped"
            if c >= 1 << 16:  # "pagemap" mode: entry bits 55-63, moved down by 39
                return str(U.PagemapBit(c << 39))
            return str(U.PageCategory(c)) if c else "0"
        rel = self.page - W_OFF // PAGE
        return (f"after step {self.step} {self.op}: page {self.page} (W+{rel})"
                f" real={name(self.real)} model={name(self.model)}")


def run(kind: str, thp: bool, ops: Sequence[Op], profile: Profile | None = None,
        stop_at_first: bool = True, mode: str = "scan") -> list[Mismatch]:
    """Run ``ops`` on real memory and on the model; the mismatches found (empty: identical).

    ``mode`` "scan": arm with async uffd-wp, compare PAGEMAP_SCAN categories (6.7+);
    "pagemap": soft-dirty (``clear_refs`` 4 as arm and collect), compare the classic pagemap
    bits present, swapped, file/shared, soft-dirty and uffd-wp (kernels without
    PAGEMAP_SCAN, e.g. 6.1)."""
    _check(kind, ops, mode)
    profile = profile or running()
    # MADV_PAGEOUT isolates only folios off the per-CPU LRU batches, and drains only this
    # CPU's (lru_add_drain): on one CPU what it reclaims does not depend on scheduling
    cpus = os.sched_getaffinity(0)
    if any(o[0] == "pageout" for o in ops):
        os.sched_setaffinity(0, {min(cpus)})
    try:
        return _run(kind, thp, ops, profile, stop_at_first, mode)
    finally:
        os.sched_setaffinity(0, cpus)


#: op name -> how many arguments follow it (pages ops: first page, page count[, prot])
_ARITY = {"collect": 0, "fork": 0, "write": 2, "read": 2, "dontneed": 2, "munmap": 2,
          "mremap": 2, "write_moved": 2, "read_moved": 2, "child_write": 2, "pageout": 2,
          "collapse": 2, "mprotect": 3}


def _check(kind: Any, ops: Sequence[Op], mode: Any) -> None:
    """Every argument of :func:`run` checked before any memory is touched (a page outside
    the window would be written or discarded in this process's own memory)."""
    if kind not in KINDS:
        raise errors.InvalidTarget(f"unknown memory kind {kind!r}", hint=f"one of {KINDS}")
    if mode not in ("scan", "pagemap"):
        raise errors.InvalidTarget(f"unknown mode {mode!r}", hint='"scan" or "pagemap"')
    for i, op in enumerate(ops):
        where = f"op {i} ({op!r})"
        if not isinstance(op, (tuple, list)) or not op or op[0] not in _ARITY:
            raise errors.InvalidTarget(f"{where} is not an operation",
                                       hint=f"a tuple starting with one of {sorted(_ARITY)}")
        if len(op) != 1 + _ARITY[op[0]]:
            raise errors.InvalidTarget(f"{where} takes {_ARITY[op[0]]} argument(s)",
                                       hint="pages ops: (name, first page, page count)")
        if _ARITY[op[0]] < 2:
            continue
        p, n = op[1], op[2]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (p, n)) or \
                not 0 <= p < NPAGES or n < 0:  # a count past the window is clipped to it
            raise errors.InvalidTarget(f"{where}: pages {p!r}+{n!r} do not start in the "
                                       f"window", hint=f"first page 0 to {NPAGES - 1}, "
                                                       "count >= 0")
        if op[0] == "mprotect" and op[3] not in ("r", "rw"):
            raise errors.InvalidTarget(f"{where}: protection {op[3]!r}", hint='"r" or "rw"')


def _run(kind: str, thp: bool, ops: Sequence[Op], profile: Profile, stop_at_first: bool,
         mode: str) -> list[Mismatch]:
    raw = _sys.mmap(0, RES + PMD, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS |
                    MAP_NORESERVE)
    r = -(-raw // PMD) * PMD
    w = r + W_OFF
    fd = -1
    tmp = None
    real = _Side(LINUX, None, mode)
    mm = Mm(profile, pid=os.getpid())
    model = _Side(ModelKernel(mm), mm, mode)
    compare = categories if mode == "scan" else pagemap_bits
    try:
        mm.mmap(r, RES, "anon", prot="none")
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        fixed = U.MAP_FIXED
        if kind == "anon":
            _sys.mmap(w, W_LEN, rw, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | fixed)
            mm.mmap(w, W_LEN, "anon")
        elif kind == "shmem":
            _sys.mmap(w, W_LEN, rw, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | fixed)
            mm.mmap(w, W_LEN, "shmem", shared=True)
        elif kind == "memfd":
            fd = os.memfd_create("writewatch-fidelity", os.MFD_CLOEXEC)
            os.ftruncate(fd, W_LEN)
            _sys.mmap(w, W_LEN, rw, mmap.MAP_SHARED | fixed, fd)
            mm.mmap(w, W_LEN, "memfd", shared=True, file="memfd")
        elif kind == "file":
            tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finally)
            fd = tmp.fileno()
            os.ftruncate(fd, W_LEN)
            _sys.mmap(w, W_LEN, rw, mmap.MAP_PRIVATE | fixed, fd)
            mm.mmap(w, W_LEN, "file", shared=False, file="tmpfile")
        else:
            raise ValueError(kind)
        if thp:
            _sys.madvise(w, W_LEN, U.MADV_HUGEPAGE)
            mm.madvise(w, W_LEN, "HUGEPAGE")
        real.arm(w)
        model.arm(w)
        out: list[Mismatch] = []
        prots = np.full(NPAGES, 3, np.int8)  # 0 unmapped in W, 1 r, 3 rw
        moved = np.zeros(NPAGES, np.int8)  # the same at R + 8 MiB
        for step, op in enumerate([None, *ops]):
            if op is not None:
                _apply(op, r, w, mm, real, model, prots, moved)
            a = compare(real.k, real.pm, r, RES)
            b = compare(model.k, model.pm, r, RES)
            bad = np.flatnonzero(a != b)
            for p in bad.tolist():
                out.append(Mismatch(step, op, p, int(a[p]), int(b[p])))
                if stop_at_first:
                    return out
        return out
    finally:
        real.close()
        model.close()
        _sys.munmap(raw, RES + PMD)
        if tmp is not None:
            tmp.close()
        elif fd >= 0:
            os.close(fd)


def _apply(op: Op, r: int, w: int, mm: Mm, real: _Side, model: _Side,
           prots: np.ndarray, moved: np.ndarray) -> None:
    name = op[0]
    if name in ("write_moved", "read_moved"):
        name = name[:-6]
        w = r + DST_OFF
        prots = moved
        op = (name, *op[1:])
    if name == "collect":
        real.collect(w)
        model.collect(w)
        return
    if name == "fork":
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child exits at once
            os._exit(0)
        os.waitpid(pid, 0)
        mm.fork()
        mm.child_exit()
        return
    p, n = op[1], op[2]
    addr = w + p * PAGE
    sel = prots[p:p + n]
    if name in ("child_write", "pageout", "collapse"):
        _apply_more(name, addr, sel, mm)
        return
    if name == "write":
        for i in np.flatnonzero(sel == 3).tolist():
            a = addr + i * PAGE
            ctypes.memset(a, 0x5A, 8)
            mm.write(a, PAGE)
    elif name == "read":
        for i in np.flatnonzero(sel > 0).tolist():
            a = addr + i * PAGE
            ctypes.c_uint8.from_address(a).value  # noqa: B018
            mm.read(a, PAGE)
    elif name == "dontneed":
        for lo, hi in _runs(sel > 0):
            _sys.madvise(addr + lo * PAGE, (hi - lo) * PAGE, U.MADV_DONTNEED)
            mm.madvise(addr + lo * PAGE, (hi - lo) * PAGE, "DONTNEED")
    elif name == "mprotect":
        prot = op[3]
        pv = mmap.PROT_READ | (mmap.PROT_WRITE if prot == "rw" else 0)
        for lo, hi in _runs(sel > 0):
            _sys.mprotect(addr + lo * PAGE, (hi - lo) * PAGE, pv)
            mm.mprotect(addr + lo * PAGE, (hi - lo) * PAGE, prot)
        sel[sel > 0] = 3 if prot == "rw" else 1
    elif name == "munmap":
        for lo, hi in _runs(sel > 0):
            _sys.munmap(addr + lo * PAGE, (hi - lo) * PAGE)
            mm.munmap(addr + lo * PAGE, (hi - lo) * PAGE)
        sel[:] = 0
    elif name == "mremap":
        # only a range that is one VMA can move: one run of equal protection
        runs = _runs(sel > 0)
        if len(runs) != 1 or len(set(sel[runs[0][0]:runs[0][1]].tolist())) != 1:
            return
        lo, hi = runs[0]
        if not mm.find(addr + lo * PAGE) or \
                mm.find(addr + lo * PAGE) is not mm.find(addr + (hi - 1) * PAGE):
            return
        dst = r + DST_OFF + (p + lo) * PAGE
        src = addr + lo * PAGE
        ln = (hi - lo) * PAGE
        _sys.mremap(src, ln, ln, U.MREMAP_MAYMOVE | U.MREMAP_FIXED, dst)
        mm.mremap(src, ln, ln, dst)
        moved[p + lo:p + hi] = sel[lo:hi]
        sel[lo:hi] = 0
    else:
        raise ValueError(name)


def _apply_more(name: str, addr: int, sel: np.ndarray, mm: Mm) -> None:
    if name == "child_write":
        pages = [addr + i * PAGE for i in np.flatnonzero(sel == 3).tolist()]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child writes and exits
            for a in pages:
                ctypes.memset(a, 0x6B, 8)
            os._exit(0)
        os.waitpid(pid, 0)
        child = mm.fork()
        for a in pages:
            child.write(a, PAGE)
        mm.child_exit()
        return
    real, model = {"pageout": (U.MADV_PAGEOUT, "PAGEOUT"),
                   "collapse": (MADV_COLLAPSE, "COLLAPSE")}[name]
    for lo, hi in _runs(sel > 0):
        try:
            _sys.madvise(addr + lo * PAGE, (hi - lo) * PAGE, real)
        except errors.WriteWatchError:
            if name != "collapse":
                raise  # MADV_COLLAPSE fails (EINVAL, EAGAIN) where it cannot collapse
        mm.madvise(addr + lo * PAGE, (hi - lo) * PAGE, model)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    brk = np.flatnonzero(np.diff(idx) != 1) + 1
    return [(int(s[0]), int(s[-1]) + 1) for s in np.split(idx, brk)]
