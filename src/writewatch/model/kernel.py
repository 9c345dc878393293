"""``ModelKernel``: the :class:`writewatch.kernel.KernelCalls` seam over the model's state.

Same methods, arguments, results and exceptions as the real bindings
(:data:`writewatch.kernel.LINUX`), so backend code runs unchanged on a model process. Errors are
raised through :func:`writewatch.kernel._sys.raise_errno` with the real modules' errno maps.

Semantics follow fs/userfaultfd.c (UFFDIO_API, UFFDIO_REGISTER, UFFDIO_WRITEPROTECT, release)
and fs/proc/task_mmu.c (pagemap, PAGEMAP_SCAN, clear_refs, smaps); profile fields select the
behaviours that differ between kernels, and :meth:`ModelKernel.capabilities` reports them as
the real probes would. ``scan_all`` is the whole range in one call, as
:func:`writewatch.kernel.pagemap.scan_all` gets it by looping over ``walk_end``.
"""

from __future__ import annotations

import contextlib
import errno as E
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import _sys
from ..kernel import pagemap as _pm
from ..kernel import uffd as _uffd
from ..kernel.pagemap import ScanResult
from ..kernel.probes import Capabilities, Probe
from ..kernel.procfs import Mapping
from ..kernel.uffd import ApiResult, UffdMsg
from . import scan as S
from .mapping import clear_soft_dirty
from .mm import Mm
from .pagetable import NO_ENTRIES
from .pte import PAGE, PAGE_SHIFT, PMD_SHIFT, Bit, Entry, nbits
from .space import AddressSpace
from .uffd import UffdCtx, wp_range
from .vma import Vma

#: the uffdio_register.ioctls of a WP registration (basic set + WRITEPROTECT, MOVE, POISON)
_REGISTER_IOCTLS = sum(1 << n for n in (U._UFFDIO_WAKE, U._UFFDIO_COPY, U._UFFDIO_ZEROPAGE,
                                        U._UFFDIO_WRITEPROTECT, U._UFFDIO_MOVE,
                                        U._UFFDIO_POISON))
_API_IOCTLS = (1 << U._UFFDIO_REGISTER) | (1 << U._UFFDIO_UNREGISTER) | (1 << U._UFFDIO_API)
_KNOWN_SCAN = 0x7F
_WP_MODE = int(U.UffdWriteprotectMode.WP)
_DONTWAKE = int(U.UffdWriteprotectMode.DONTWAKE)
_NOT_WP = np.uint8(nbits(Bit.UFFD_WP))


class ModelKernel:
    """:class:`writewatch.kernel.KernelCalls` on a model address space.

    ``mm`` is the process the calls act on ("self" and ``mm.pid`` name it; other pids of the
    same model machine can be opened too). Counters: ``scan_calls``, ``entries_walked``
    (page-table entries and PMD holes examined by PAGEMAP_SCAN, pagemap reads and
    UFFDIO_WRITEPROTECT)."""

    page_size = PAGE

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        self._space = mm.space
        self.profile = mm.profile
        self._fds: dict[int, Any] = {}
        self._next_fd = 1000
        self.scan_calls = 0
        self.entries_walked = 0
        #: applied to every new userfaultfd context (the designs' rules and monitors)
        self.ctx_setup: Callable[[UffdCtx], None] | None = None

    # -- descriptors --------------------------------------------------------------------------
    def _new_fd(self, obj: Any) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = obj
        return fd

    def _ctx(self, fd: int, op: str) -> UffdCtx:
        ctx = self._fds.get(fd)
        if not isinstance(ctx, UffdCtx):
            _sys.raise_errno(E.EBADF, op)
        assert isinstance(ctx, UffdCtx)
        return ctx

    def _proc(self, pid: int | str, op: str) -> AddressSpace:
        if pid in ("self", self.mm.pid):
            return self._space
        mm = self._space.world.procs.get(pid) if isinstance(pid, int) else None
        if mm is None:
            raise errors.NoSuchProcess(pid if isinstance(pid, int) else -1, op=op,
                                       errno=E.ESRCH)
        return mm

    def contexts(self) -> list[UffdCtx]:
        return [o for o in self._fds.values() if isinstance(o, UffdCtx)]

    def close(self, fd: int) -> None:
        obj = self._fds.pop(fd, None)
        if obj is None:
            _sys.raise_errno(E.EBADF, "close")
        if isinstance(obj, UffdCtx):
            # userfaultfd_release: every VMA of the context is cleared (bits removed)
            mm = obj.mm
            for v in list(mm.vmas):
                if v.uffd is obj:
                    wp_range(mm, v, v.start, v.end, False)
            for v in list(mm.vmas):
                if v.uffd is obj:
                    mm.modify(v.start, v.end, _unregister_vma)

    def open_fds(self) -> int:
        return len(self._fds)

    # -- userfaultfd ----------------------------------------------------------------------------
    def userfaultfd(self, flags: int) -> int:
        ctx = UffdCtx(0, self._space)
        ctx.fd = self._new_fd(ctx)
        ctx.install = self._new_fd
        if self.ctx_setup is not None:
            self.ctx_setup(ctx)
        return ctx.fd

    def uffdio_api(self, fd: int, features: int) -> ApiResult:
        ctx = self._ctx(fd, "UFFDIO_API")
        supported = self.profile.uffd_features
        if ctx.initialized or features & ~supported:
            raise errors.Unsupported(
                f"this kernel does not support userfaultfd features "
                f"{U.UffdFeature(features)!r}", feature=str(U.UffdFeature(features).name),
                op="UFFDIO_API", errno=E.EINVAL)
        if features & U.UffdFeature.WP_ASYNC:
            # userfaultfd_api: "WP_ASYNC relies on WP_UNPOPULATED, choose it unconditionally"
            features |= U.UffdFeature.WP_UNPOPULATED
        ctx.set_features(features)
        ctx.initialized = True
        return ApiResult(U.UffdFeature(supported), _API_IOCTLS)

    def _ctx_range(self, fd: int, op: str, start: int, length: int,
                   errmap: _sys.ErrMap) -> tuple[UffdCtx, int]:
        """The context of ``fd`` and the end of a page-aligned, non-empty range (EINVAL)."""
        ctx = self._ctx(fd, op)
        if start % PAGE or length <= 0 or length % PAGE:
            _sys.raise_errno(E.EINVAL, op, start=start, end=start + length, errmap=errmap)
        return ctx, start + length

    def uffdio_register(self, fd: int, start: int, length: int, mode: int) -> int:
        op, em = "UFFDIO_REGISTER", _uffd._REGISTER_ERRORS
        ctx, end = self._ctx_range(fd, op, start, length, em)
        mm = ctx.mm
        if not ctx.initialized or not mode or mode & ~7 or \
                mode & ~int(U.UffdRegisterMode.WP):
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        vmas = mm.vmas_in(start, end)
        if not vmas:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        for v in vmas:
            if v.uffd is not None and v.uffd is not ctx:
                _sys.raise_errno(E.EBUSY, op, start=start, end=end, errmap=em)
            # vma_can_userfault: with WP_ASYNC any VMA; else anon or shmem for WP
            if not ctx.async_ and v.kind == "file":
                _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        flag = ctx.rules.vma_flag

        def reg(v: Vma) -> None:
            v.uffd = ctx
            v.wp_start = flag
        mm.c.mmap_lock_write += 1
        mm.modify(start, end, reg)
        return _REGISTER_IOCTLS

    def uffdio_unregister(self, fd: int, start: int, length: int) -> None:
        op, em = "UFFDIO_UNREGISTER", _uffd._REGISTER_ERRORS
        ctx, end = self._ctx_range(fd, op, start, length, em)
        mm = ctx.mm
        vmas = mm.vmas_in(start, end)
        if not vmas:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        for v in vmas:
            if v.uffd is ctx:
                wp_range(mm, v, max(v.start, start), min(v.end, end), False)
        mm.c.mmap_lock_write += 1
        mm.modify(start, end, lambda v: _unregister_vma(v) if v.uffd is ctx else None)

    def uffdio_writeprotect(self, fd: int, start: int, length: int, mode: int) -> None:
        op, em = "UFFDIO_WRITEPROTECT", _uffd._WP_ERRORS
        ctx, end = self._ctx_range(fd, op, start, length, em)
        mm = ctx.mm
        mode = int(mode)  # (enum.Flag operators cost a microsecond each: once per fault)
        wp = bool(mode & _WP_MODE)
        if mode & ~3 or (wp and mode & _DONTWAKE):
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        mm.c.mmap_lock_read += 1
        if length == PAGE:  # one page (a synchronous monitor's answer to each fault)
            v = mm.find(start)
            if v is None or v.uffd is not ctx:
                _sys.raise_errno(E.ENOENT, op, start=start, end=end, errmap=em)
            assert v is not None
            self.entries_walked += wp_range(mm, v, start, end, wp)
            if wp:
                ctx.armed = True
            return
        pos = start
        for v in mm.vmas_in(start, end):
            if v.uffd is not ctx or v.start > pos:
                _sys.raise_errno(E.ENOENT, op, start=start, end=end, errmap=em)
            self.entries_walked += wp_range(mm, v, max(v.start, start), min(v.end, end), wp)
            pos = v.end
        if pos < end:
            _sys.raise_errno(E.ENOENT, op, start=start, end=end, errmap=em)
        if wp:
            ctx.armed = True

    def uffdio_unprotect_pages(self, fd: int, addrs: np.ndarray) -> None:
        """UFFDIO_WRITEPROTECT mode 0 of one page at each of ``addrs``, as a synchronous
        monitor answers each fault: the same result and counts as one call per page, in one
        step when the pages lie in one page table of the context's VMAs. (The model's own
        call, for the replay's batches; the kernel takes one range per call.)"""
        ctx = self._ctx(fd, "UFFDIO_WRITEPROTECT")
        mm = ctx.mm
        lo, hi = int(addrs.min()), int(addrs.max()) + PAGE
        t = mm.pt.get(lo >> PMD_SHIFT)
        vmas = mm.vmas_in(lo, hi)
        if (t is None or t.huge or (hi - 1) >> PMD_SHIFT != lo >> PMD_SHIFT or
                not vmas or vmas[0].start > lo or vmas[-1].end < hi or
                any(v.uffd is not ctx for v in vmas) or
                any(a.end != b.start for a, b in pairwise(vmas))):
            for a in addrs.tolist():
                self.uffdio_writeprotect(fd, a, PAGE, 0)
            return
        n = len(addrs)
        c = mm.c
        c.mmap_lock_read += n
        c.ptl += n
        c.tlb_flushes += n
        self.entries_walked += n
        i = ((addrs >> PAGE_SHIFT) & 511).astype(np.intp)
        mk = t.st[i] == Entry.MARKER
        t.fl[i] &= _NOT_WP
        t.st[i[mk]] = Entry.NONE
        t.fl[i[mk]] = 0

    def uffdio_wake(self, fd: int, start: int, length: int) -> None:
        self._ctx(fd, "UFFDIO_WAKE")

    def read_uffd_msgs(self, fd: int) -> tuple[UffdMsg, ...]:
        ctx = self._ctx(fd, "read uffd")
        out, ctx.msgs = tuple(ctx.msgs), []
        return out

    # -- /proc --------------------------------------------------------------------------------
    def open_pagemap(self, pid: int | str) -> int:
        mm = self._proc(pid, f"open /proc/{pid}/pagemap")
        return self._new_fd(("pagemap", mm))

    def _pagemap_mm(self, fd: int, op: str) -> AddressSpace:
        obj = self._fds.get(fd)
        if not (isinstance(obj, tuple) and obj[0] == "pagemap"):
            _sys.raise_errno(E.EBADF, op)
        assert isinstance(obj, tuple)
        mm: AddressSpace = obj[1]
        return mm

    def read_maps(self, pid: int | str) -> tuple[Mapping, ...]:
        mm = self._proc(pid, f"open /proc/{pid}/maps")
        out = []
        for v in mm.vmas:
            perms = ("r" if v.prot & 1 else "-") + ("w" if v.prot & 2 else "-") + "-" + \
                ("s" if v.shared else "p")
            if v.file is None:
                out.append(Mapping(v.start, v.end, perms, 0, "00:00", 0, ""))
            else:
                ino = 1 + list(mm.world.files).index(v.file.name)
                path = f"/memfd:{v.file.name} (deleted)" if v.kind == "shmem" else \
                    f"/model/{v.file.name}"
                out.append(Mapping(v.start, v.end, perms, v.pgoff * PAGE, "00:01", ino, path))
        return tuple(out)

    def is_mapped(self, pid: int | str, start: int, length: int) -> bool:
        return self._proc(pid, "msync").is_mapped(start, start + length)

    def clear_refs(self, pid: int | str, value: int) -> None:
        mm = self._proc(pid, f"write /proc/{pid}/clear_refs")
        if value not in (1, 2, 3, 4, 5):
            _sys.raise_errno(E.EINVAL, f"write /proc/{pid}/clear_refs")
        if value == U.CLEAR_REFS_SOFT_DIRTY and self.profile.soft_dirty:
            clear_soft_dirty(mm)
            self.entries_walked += 512 * len(mm.pt)

    def process_vm_readv(self, pid: int | str, runs: Any, out: Any) -> None:
        """Copy ``runs`` (``(k, 2)`` [start, end) addresses) back to back into the writable
        buffer ``out``. The model has versions, not bytes: each 8-byte word of a page holds
        its content version (zero page: zeros)."""
        mm = self._proc(pid, "process_vm_readv")
        buf = np.frombuffer(memoryview(out).cast("B"), np.uint8)
        pos = 0
        for addr, end in np.asarray(runs, np.uint64).reshape(-1, 2).tolist():
            length = end - addr
            if not mm.is_mapped(addr, addr + length):
                _sys.raise_errno(E.EFAULT, "process_vm_readv", start=addr,
                                 end=addr + length)
            vers = mm.content(addr & ~(PAGE - 1), -(-(addr + length) // PAGE) * PAGE)
            words = np.repeat(vers.astype("<u8"), PAGE // 8).view(np.uint8)
            off = addr & (PAGE - 1)
            buf[pos:pos + length] = words[off:off + length]
            pos += length

    # -- pagemap entries ----------------------------------------------------------------------
    def pagemap_read(self, fd: int, start: int, npages: int) -> np.ndarray:
        mm = self._pagemap_mm(fd, "read pagemap")
        self.scan_calls += 1
        mm.c.mmap_lock_read += 1
        out = np.zeros(npages, np.uint64)
        end = start + npages * PAGE
        sdon = self.profile.soft_dirty
        for v in mm.vmas_in(start, end):
            lo, hi = max(v.start, start), min(v.end, end)
            o = (lo - start) >> PAGE_SHIFT
            piece = out[o:o + ((hi - lo) >> PAGE_SHIFT)]
            if sdon and v.softdirty:
                piece |= _PM_SOFT_DIRTY
            # the PTE tables side by side, one vector pass; PMD-mapped THPs on their own
            sts, fls, huge = [], [], []
            pos = 0
            for k, i, j in mm.chunks(lo, hi):
                t = mm.pt.get(k)
                self.entries_walked += 1 if t is None else j - i
                if t is not None:
                    mm.c.ptl += 1
                if t is None or t.huge:
                    sts.append(NO_ENTRIES[:j - i])
                    fls.append(NO_ENTRIES[:j - i])
                    if t is not None:
                        huge.append((pos, t, i, j))
                else:
                    sts.append(t.st[i:j])
                    fls.append(t.fl[i:j])
                pos += j - i
            _pagemap_bits(piece, np.concatenate(sts), np.concatenate(fls), False, sdon)
            for p, t, i, j in huge:
                _pagemap_bits(piece[p:p + j - i], t.st[i:j], t.fl[i:j], True, sdon)
        return out

    # -- PAGEMAP_SCAN -------------------------------------------------------------------------
    def pagemap_scan(self, fd: int, start: int, end: int, *, flags: int = 0,
                     category_mask: int = 0, category_inverted: int = 0,
                     category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                     vec_len: int | None = None) -> ScanResult:
        op, em = "PAGEMAP_SCAN", _pm._SCAN_ERRORS
        if not self.profile.wp_async:
            _sys.raise_errno(E.ENOTTY, op, start=start, end=end, errmap=em)
        mm = self._pagemap_mm(fd, op)
        self.scan_calls += 1
        vec_len = 4096 if vec_len is None else vec_len
        known = _KNOWN_SCAN | (S.SOFT_DIRTY_C if self.profile.category_soft_dirty else 0) | \
            (int(U.PageCategory.GUARD) if self.profile.category_guard else 0)
        if flags & ~3 or (category_mask | category_inverted | category_anyof_mask |
                          return_mask) & ~known or start % PAGE:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        if end < start:
            _sys.raise_errno(E.EFAULT, op, start=start, end=end, errmap=em)
        end = -(-end // PAGE) * PAGE
        q = S.Query(flags, category_mask, category_inverted, category_anyof_mask, return_mask,
                    vec_len, max_pages)
        if start == end:
            return ScanResult(np.empty((0, 3), np.uint64), start)
        mm.c.mmap_lock_read += 1
        for v in mm.vmas_in(start, end):
            is_async = v.uffd is not None and v.uffd.async_
            if not is_async:
                if q.check:
                    # the walk stops here; what it found (and write-protected) before is
                    # copied out all the same (do_pagemap_scan flushes, then fails)
                    try:
                        _sys.raise_errno(E.EPERM, op, start=start, end=end, errmap=em)
                    except errors.NotRegistered as exc:
                        exc.partial = q.out.result()
                        raise
                if q.wp_match:
                    continue  # pagemap_scan_test_walk skips it silently
            vcat = S.vma_categories(mm, v, is_async)
            wpa = S.WPALLOWED
            if (vcat ^ q.inv) & q.mask & wpa != q.mask & wpa:
                continue
            if q.wp_match and v.uffd is not None:
                v.uffd.armed = True
            full, walked = S.scan_vma(mm, v, max(v.start, start), min(v.end, end), q)
            self.entries_walked += walked
            if full:
                return ScanResult(q.out.result(), q.out.walk_end)
        if q.wp_match:
            mm.c.tlb_flushes += 1
        return ScanResult(q.out.result(), end)

    def scan_all(self, fd: int, start: int, end: int, **kw: int) -> ScanResult:
        """The whole range, as :func:`writewatch.kernel.pagemap.scan_all` would get it by
        resuming from ``walk_end`` after each full buffer (regions never straddle a
        resumption: a region that does not fit stops the walk before it). ``batch`` and
        ``page_size`` change nothing here."""
        kw.pop("batch", None)
        kw.pop("page_size", None)
        return self.pagemap_scan(fd, start, end, vec_len=1 << 62, **kw)

    # -- soft-dirty, stopping, capabilities -----------------------------------------------------
    def vma_flags(self, pid: int | str) -> tuple[tuple[int, int, frozenset[str]], ...]:
        """smaps VmFlags of each VMA: rd wr mr mw (prot), sh (shared), sd (VM_SOFTDIRTY),
        uw (VM_UFFD_WP), hg/nh (MADV_[NO]HUGEPAGE) (fs/proc/task_mmu.c
        show_smap_vma_flags)."""
        mm = self._proc(pid, f"open /proc/{pid}/smaps")
        out = []
        for v in mm.vmas:
            flags = {"mr", "mw", "me"}
            flags |= {"rd"} if v.prot & 1 else set()
            flags |= {"wr"} if v.prot & 2 else set()
            flags |= {"sh", "ms"} if v.shared else set()
            flags |= {"sd"} if v.softdirty and self.profile.soft_dirty else set()
            flags |= {"uw"} if v.uffd is not None else set()
            flags |= {"hg"} if v.hugepage > 0 else {"nh"} if v.hugepage < 0 else set()
            out.append((v.start, v.end, frozenset(flags)))
        return tuple(out)

    def read_then_clear(self, fd: int, ranges: Any, scan_mask: int,
                        clear: bool) -> list[np.ndarray | None]:
        """The soft-dirty read and reset of :mod:`writewatch.kernel.softdirty`: nothing runs
        in the model between two calls, so a loop is the same step."""
        out: list[np.ndarray | None] = []
        for start, end in ranges:
            if scan_mask:
                out.append(self.scan_all(fd, start, end, return_mask=scan_mask).regions)
            else:
                out.append(self.pagemap_read(fd, start, (end - start) // PAGE))
        if clear:
            self.clear_refs(self._pagemap_mm(fd, "clear_refs").pid, U.CLEAR_REFS_SOFT_DIRTY)
        return out

    def stopped(self, pid: int, how: str = "auto") -> contextlib.AbstractContextManager[str]:
        """A model process runs only when called: it is always held."""
        self._proc(pid, "stop")
        return contextlib.nullcontext("model")

    def capabilities(self, refresh: bool = False) -> Capabilities:
        """What the profile's kernel offers, as :func:`writewatch.kernel.probes.probe` would
        find it there."""
        p = self.profile
        cats = sum(int(c) for c in U.PageCategory)
        if not p.category_soft_dirty:
            cats &= ~int(U.PageCategory.SOFT_DIRTY)
        if not p.category_guard:
            cats &= ~int(U.PageCategory.GUARD)
        scan = p.wp_async  # PAGEMAP_SCAN and WP_ASYNC came together (6.7)
        return Capabilities(
            release=p.release, machine="model", page_size=PAGE,
            userfaultfd=Probe(True, f"model of Linux {p.release}"),
            uffd_features=p.uffd_features,
            pagemap_scan=Probe(True, "model") if scan else
            Probe(False, "ioctl refused: ENOTTY", "needs Linux 6.7 or newer"),
            categories=cats if scan else 0,
            pte_none_written=scan and p.scan_pte_none_written,
            pmd_hole_written=scan and p.scan_pmd_hole_written and p.thp != "never",
            soft_dirty=Probe(True, "model") if p.soft_dirty else
            Probe(False, "CONFIG_MEM_SOFT_DIRTY is off (pagemap bit 55 never set)"),
            thp=p.thp, nr_hugepages="0", ptrace_scope=None, unprivileged_userfaultfd="1",
            cap_eff=~0, euid=0)


_PM_PRESENT = np.uint64(U.PagemapBit.PRESENT)
_PM_SWAPPED = np.uint64(U.PagemapBit.SWAPPED)
_PM_FILE_SHARED = np.uint64(U.PagemapBit.FILE_SHARED)
_PM_MMAP_EXCLUSIVE = np.uint64(U.PagemapBit.MMAP_EXCLUSIVE)
_PM_UFFD_WP = np.uint64(U.PagemapBit.UFFD_WP)
_PM_SOFT_DIRTY = np.uint64(U.PagemapBit.SOFT_DIRTY)


def _bits_table(huge: bool, sdon: bool) -> np.ndarray:
    """pagemap_pte_range / pagemap_pmd_range: the entry bits of every (state, flags) pair of
    an entry, at ``state << 8 | flags``."""
    st = np.repeat(np.arange(4, dtype=np.uint8), 256)
    fl = np.tile(np.arange(256, dtype=np.uint8), 4)
    seg = np.zeros(len(st), np.uint64)
    pres = st == Entry.PRESENT
    swp = (st == Entry.SWAP) | (st == Entry.MARKER)
    seg[pres] |= _PM_PRESENT
    seg[swp] |= _PM_SWAPPED
    seg[pres & ((fl & (Bit.ANON | Bit.ZERO_PFN)) == 0)] |= _PM_FILE_SHARED
    if huge:
        # pagemap_pmd_range: the huge zero folio is not PageAnon, so PM_FILE (a small zero
        # page has no struct page there: vm_normal_page is NULL)
        seg[pres & ((fl & Bit.ZERO_PFN) != 0)] |= _PM_FILE_SHARED
    seg[pres & ((fl & Bit.ANON) != 0)] |= _PM_MMAP_EXCLUSIVE
    live = st != Entry.NONE
    seg[live & ((fl & Bit.UFFD_WP) != 0)] |= _PM_UFFD_WP
    if sdon:
        seg[live & ((fl & Bit.SOFT_DIRTY) != 0)] |= _PM_SOFT_DIRTY
    return seg


_PM_BITS = {(h, s): _bits_table(h, s) for h in (False, True) for s in (False, True)}


def _pagemap_bits(seg: np.ndarray, st: np.ndarray, fl: np.ndarray, huge: bool,
                  sdon: bool) -> None:
    """The entry bits of one table's entries (:func:`_bits_table`), ORed into ``seg``."""
    seg |= _PM_BITS[huge, sdon][(st.astype(np.intp) << 8) | fl]


def _unregister_vma(v: Vma) -> None:
    v.uffd = None
    v.wp_start = False


__all__ = ["ModelKernel", "UffdCtx", "wp_range"]
