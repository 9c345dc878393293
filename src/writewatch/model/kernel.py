"""``ModelKernel``: the :class:`writewatch.kernel.KernelCalls` seam over the model's state.

Same methods, arguments, results and exceptions as the real bindings
(:data:`writewatch.kernel.LINUX`), so backend code runs unchanged on a model process. Errors are
raised through :func:`writewatch.kernel._sys.raise_errno` with the real modules' errno maps.

Semantics follow fs/userfaultfd.c and fs/proc/task_mmu.c as summarised in
../shared/reference/kernel-interfaces.md (sections 1.3-1.9 and 2); profile fields select the
behaviours that differ between kernels.
"""

from __future__ import annotations

import errno as E
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import _sys
from ..kernel import pagemap as _pm
from ..kernel import uffd as _uffd
from ..kernel.pagemap import ScanResult
from ..kernel.procfs import Mapping
from ..kernel.uffd import ApiResult, UffdMsg
from .state import (
    ANON,
    MARKER,
    NONE,
    PAGE,
    PAGE_SHIFT,
    PMD_SHIFT,
    PRESENT,
    SD,
    SWAP,
    WP,
    ZERO,
    Mm,
    ModelError,
    Ring,
    Vma,
    W,
)

C = U.PageCategory
_WRITTEN, _PRESENT, _FILE = int(C.WRITTEN), int(C.PRESENT), int(C.FILE)
_SWAPPED, _PFNZERO, _HUGE = int(C.SWAPPED), int(C.PFNZERO), int(C.HUGE)
_WPALLOWED, _SOFT_DIRTY = int(C.WPALLOWED), int(C.SOFT_DIRTY)
_NOT_WP = np.uint8(0xFF & ~WP)
_NOT_W = np.uint8(0xFF & ~W)
_HOLE = 255  # no page-table page (pmd_none) in the scan's entry arrays

#: the uffdio_register.ioctls of a WP registration (basic set + WRITEPROTECT, MOVE, POISON)
_REGISTER_IOCTLS = sum(1 << n for n in (U._UFFDIO_WAKE, U._UFFDIO_COPY, U._UFFDIO_ZEROPAGE,
                                        U._UFFDIO_WRITEPROTECT, U._UFFDIO_MOVE,
                                        U._UFFDIO_POISON))
_API_IOCTLS = (1 << U._UFFDIO_REGISTER) | (1 << U._UFFDIO_UNREGISTER) | (1 << U._UFFDIO_API)


class UffdCtx:
    """A userfaultfd context (struct userfaultfd_ctx), with the model-only design switches.

    ``design``: "kernel" (what Linux does), "faulttime" (David Hildenbrand's proposal in the
    thread: nothing installed at arm time, none entries clean, read faults map the zero page
    with the bit, write faults map a page without it, discards leave a marker) or "vmaflag"
    (a per-VMA "protection starts right away" flag, no markers). ``ring``: log the first
    write after arming in a bounded ring."""

    def __init__(self, fd: int, mm: Mm) -> None:
        self.fd = fd
        self.mm = mm
        self.features = 0
        self.initialized = False
        self.design = "kernel"
        self.ring: Ring | None = None
        #: sync mode: the monitor; fn(ctx, addr, content_seen, tids) is called for each
        #: message and must resolve it (unprotect) before the write proceeds
        self.handler: Callable[[UffdCtx, int, int, tuple[int, ...]], None] | None = None
        self.msgs: list[UffdMsg] = []
        self.armed = False
        self.notifications = 0
        self.async_ = False
        self.unpopulated = False

    def set_features(self, features: int) -> None:
        self.features = features
        self.async_ = bool(features & U.UffdFeature.WP_ASYNC)
        self.unpopulated = bool(features & (U.UffdFeature.WP_UNPOPULATED |
                                            U.UffdFeature.WP_ASYNC))

    # -- fault paths (called by Mm) ----------------------------------------------------------
    def _message(self, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        self.notifications += 1
        msg = UffdMsg(U.UffdEvent.PAGEFAULT,
                      int(U.UffdPagefaultFlag.WRITE | U.UffdPagefaultFlag.WP), addr, tids[0])
        if self.handler is None:
            self.msgs.append(msg)
            raise ModelError(
                f"write at {addr:#x} blocks on a synchronous uffd-wp fault and no monitor is "
                "attached to the model", op="write", start=addr, end=addr + PAGE,
                hint="set UffdCtx.handler, or use async mode")
        self.handler(self, addr, seen, tids)

    def on_wp_fault(self, mm: Mm, v: Vma, addr: int, tids: tuple[int, ...],
                    hook: Any) -> None:
        """A write hit an entry with the uffd-wp bit or a uffd-wp marker."""
        if self.async_:
            # do_wp_page / pte_marker_handle_uffd_wp: async mode resolves by clearing the bit
            self.resolve(mm, addr)
            if self.ring is not None:
                self.ring.append(addr)
            return
        self._message(addr, mm.content_page(addr), tids)

    def none_is_protected(self, v: Vma, addr: int) -> bool:
        if self.design == "faulttime":
            return self.armed
        if self.design == "vmaflag":
            return self.armed and v.wp_start
        return False

    def on_none_write(self, mm: Mm, v: Vma, addr: int, tids: tuple[int, ...], hook: Any,
                      when: str, before: int = 0) -> None:
        if self.design == "faulttime":
            if when != "after":
                return
            mm.c.tracking_faults += 1
            if self.async_:
                return
            # (b) the write fault maps a fresh page without the bit, then notifies: another
            # thread writing to the same page runs in the window (Peter Xu: "data loss")
            seen = before
            for _ in tids[1:]:
                seen = mm.world.new_version()
                self._store_other_thread(mm, v, addr, seen)
            self._message(addr, seen, tids)
        elif self.design == "vmaflag" and when == "before":
            mm.c.tracking_faults += 1
            if self.ring is not None:
                self.ring.append(addr)
            if not self.async_:
                self._message(addr, before, tids)

    @staticmethod
    def _store_other_thread(mm: Mm, v: Vma, addr: int, ver: int) -> None:
        t = mm.pt[addr >> PMD_SHIFT]
        n = (addr >> PAGE_SHIFT) & 511
        if v.shared and v.file is not None:
            v.file.ver[v.page_index(addr)] = ver
        else:
            t.ver[n] = ver

    def resolve(self, mm: Mm, addr: int) -> None:
        """Unprotect one page (what the monitor's UFFDIO_WRITEPROTECT mode 0 does)."""
        t = mm.pt.get(addr >> PMD_SHIFT)
        if t is None:
            return
        if t.huge:
            mm.split_huge(addr >> PMD_SHIFT)  # unprotecting one page of a THP splits it
        n = (addr >> PAGE_SHIFT) & 511
        if t.st[n] == MARKER:
            t.st[n] = NONE
            t.fl[n] = 0
        else:
            t.fl[n] &= _NOT_WP


def wp_range(mm: Mm, v: Vma, start: int, end: int, on: bool) -> int:
    """uffd_wp_range(): protect (markers on none entries where the VMA uses them) or
    unprotect [start, end) of ``v``; returns the entries walked."""
    markers = mm.uses_markers(v)
    walked = 0
    for k, i, j in mm.chunks(start, end):
        t = mm.pt.get(k)
        walked += 1 if t is None else j - i
        if t is None:
            if on and markers:
                t = mm._alloc(k)  # change_pmd_prepare: pte_alloc for the markers
                t.st[i:j] = MARKER
                t.fl[i:j] = WP
            continue
        if t.huge:
            if i == 0 and j == 512:
                if on:
                    t.fl[:] = (t.fl & _NOT_W) | WP
                else:
                    t.fl[:] &= _NOT_WP
                continue
            mm.split_huge(k)  # change_huge_pmd covers whole PMDs only
        st, fl = t.st[i:j], t.fl[i:j]
        if on:
            live = st != NONE
            fl[live] = (fl[live] & _NOT_W) | WP
            if markers:
                none = st == NONE
                st[none] = MARKER
                fl[none] = WP
        else:
            fl &= _NOT_WP
            mk = st == MARKER
            st[mk] = NONE
            fl[mk] = 0
    return walked


class ModelKernel:
    """:class:`writewatch.kernel.KernelCalls` on a model address space.

    ``mm`` is the process the calls act on ("self" and ``mm.pid`` name it). Counters:
    ``scan_calls``, ``entries_walked`` (page-table entries and PMD holes examined by
    PAGEMAP_SCAN, pagemap reads and UFFDIO_WRITEPROTECT)."""

    page_size = PAGE

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        self.profile = mm.profile
        self._fds: dict[int, Any] = {}
        self._next_fd = 1000
        self.scan_calls = 0
        self.entries_walked = 0
        #: applied to every new userfaultfd context (design switches for the model designs)
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

    def _check_pid(self, pid: int | str, op: str) -> None:
        if pid not in ("self", self.mm.pid):
            raise errors.NoSuchProcess(pid if isinstance(pid, int) else -1, op=op,
                                       errno=E.ESRCH)

    def close(self, fd: int) -> None:
        obj = self._fds.pop(fd, None)
        if obj is None:
            _sys.raise_errno(E.EBADF, "close")
        if isinstance(obj, UffdCtx):
            # userfaultfd_release: every VMA of the context is cleared (bits removed)
            for v in list(self.mm.vmas):
                if v.uffd is obj:
                    wp_range(self.mm, v, v.start, v.end, False)
            for v in list(self.mm.vmas):
                if v.uffd is obj:
                    self.mm.modify(v.start, v.end, _unregister_vma)

    def open_fds(self) -> int:
        return len(self._fds)

    # -- userfaultfd ----------------------------------------------------------------------------
    def userfaultfd(self, flags: int) -> int:
        ctx = UffdCtx(0, self.mm)
        fd = self._new_fd(ctx)
        ctx.fd = fd
        if self.ctx_setup is not None:
            self.ctx_setup(ctx)
        return fd

    def uffdio_api(self, fd: int, features: int) -> ApiResult:
        ctx = self._ctx(fd, "UFFDIO_API")
        supported = self.profile.uffd_features
        if ctx.initialized or features & ~supported:
            raise errors.Unsupported(
                f"this kernel does not support userfaultfd features "
                f"{U.UffdFeature(features)!r}", feature=str(U.UffdFeature(features).name),
                op="UFFDIO_API", errno=E.EINVAL)
        if features & U.UffdFeature.WP_ASYNC:
            features |= U.UffdFeature.WP_UNPOPULATED  # "WP_ASYNC relies on WP_UNPOPULATED"
        ctx.set_features(features)
        ctx.initialized = True
        return ApiResult(U.UffdFeature(supported), _API_IOCTLS)

    def _range(self, op: str, start: int, length: int, errmap: _sys.ErrMap) -> int:
        if start % PAGE or length <= 0 or length % PAGE:
            _sys.raise_errno(E.EINVAL, op, start=start, end=start + length, errmap=errmap)
        return start + length

    def uffdio_register(self, fd: int, start: int, length: int, mode: int) -> int:
        op, em = "UFFDIO_REGISTER", _uffd._REGISTER_ERRORS
        ctx = self._ctx(fd, op)
        end = self._range(op, start, length, em)
        if not ctx.initialized or not mode or mode & ~7 or \
                mode & ~int(U.UffdRegisterMode.WP):
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        vmas = self.mm.vmas_in(start, end)
        if not vmas:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        for v in vmas:
            if v.uffd is not None and v.uffd is not ctx:
                _sys.raise_errno(E.EBUSY, op, start=start, end=end, errmap=em)
            # vma_can_userfault: with WP_ASYNC any VMA; else anon or shmem for WP
            if not ctx.async_ and v.kind == "file":
                _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)

        def reg(v: Vma) -> None:
            v.uffd = ctx
            v.wp_start = ctx.design == "vmaflag"
        self.mm.modify(start, end, reg)
        return _REGISTER_IOCTLS

    def uffdio_unregister(self, fd: int, start: int, length: int) -> None:
        op, em = "UFFDIO_UNREGISTER", _uffd._REGISTER_ERRORS
        ctx = self._ctx(fd, op)
        end = self._range(op, start, length, em)
        vmas = self.mm.vmas_in(start, end)
        if not vmas:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        for v in vmas:
            if v.uffd is ctx:
                wp_range(self.mm, v, max(v.start, start), min(v.end, end), False)
        self.mm.modify(start, end, lambda v: _unregister_vma(v) if v.uffd is ctx else None)

    def uffdio_writeprotect(self, fd: int, start: int, length: int, mode: int) -> None:
        op, em = "UFFDIO_WRITEPROTECT", _uffd._WP_ERRORS
        ctx = self._ctx(fd, op)
        end = self._range(op, start, length, em)
        wp = bool(mode & U.UffdWriteprotectMode.WP)
        if mode & ~3 or (wp and mode & U.UffdWriteprotectMode.DONTWAKE):
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        pos = start
        for v in self.mm.vmas_in(start, end):
            if v.uffd is not ctx or v.start > pos:
                _sys.raise_errno(E.ENOENT, op, start=start, end=end, errmap=em)
            self.entries_walked += wp_range(self.mm, v, max(v.start, start), min(v.end, end),
                                            wp)
            pos = v.end
        if pos < end:
            _sys.raise_errno(E.ENOENT, op, start=start, end=end, errmap=em)
        if wp:
            ctx.armed = True

    def uffdio_wake(self, fd: int, start: int, length: int) -> None:
        self._ctx(fd, "UFFDIO_WAKE")

    def read_uffd_msgs(self, fd: int) -> tuple[UffdMsg, ...]:
        ctx = self._ctx(fd, "read uffd")
        out, ctx.msgs = tuple(ctx.msgs), []
        return out

    # -- /proc --------------------------------------------------------------------------------
    def open_pagemap(self, pid: int | str) -> int:
        self._check_pid(pid, f"open /proc/{pid}/pagemap")
        return self._new_fd(("pagemap", self.mm))

    def _pagemap_mm(self, fd: int, op: str) -> Mm:
        obj = self._fds.get(fd)
        if not (isinstance(obj, tuple) and obj[0] == "pagemap"):
            _sys.raise_errno(E.EBADF, op)
        assert isinstance(obj, tuple)
        mm: Mm = obj[1]
        return mm

    def read_maps(self, pid: int | str) -> tuple[Mapping, ...]:
        self._check_pid(pid, f"open /proc/{pid}/maps")
        out = []
        for v in self.mm.vmas:
            perms = ("r" if v.prot & 1 else "-") + ("w" if v.prot & 2 else "-") + "-" + \
                ("s" if v.shared else "p")
            if v.file is None:
                out.append(Mapping(v.start, v.end, perms, 0, "00:00", 0, ""))
            else:
                ino = 1 + list(self.mm.world.files).index(v.file.name)
                path = f"/memfd:{v.file.name} (deleted)" if v.kind == "shmem" else \
                    f"/model/{v.file.name}"
                out.append(Mapping(v.start, v.end, perms, v.pgoff * PAGE, "00:01", ino, path))
        return tuple(out)

    def is_mapped(self, pid: int | str, start: int, length: int) -> bool:
        self._check_pid(pid, "msync")
        pos, end = start, start + length
        for v in self.mm.vmas_in(start, end):
            if v.start > pos:
                return False
            pos = v.end
        return pos >= end

    def clear_refs(self, pid: int | str, value: int) -> None:
        self._check_pid(pid, f"write /proc/{pid}/clear_refs")
        if value not in (1, 2, 3, 4, 5):
            _sys.raise_errno(E.EINVAL, f"write /proc/{pid}/clear_refs")
        if value == U.CLEAR_REFS_SOFT_DIRTY and self.profile.soft_dirty:
            self.mm.clear_refs_soft_dirty()
            self.entries_walked += sum(512 for _ in self.mm.pt)

    # -- pagemap entries ----------------------------------------------------------------------
    def pagemap_read(self, fd: int, start: int, npages: int) -> np.ndarray:
        mm = self._pagemap_mm(fd, "read pagemap")
        self.scan_calls += 1
        out = np.zeros(npages, np.uint64)
        end = start + npages * PAGE
        sdon = self.profile.soft_dirty
        B = U.PagemapBit
        for v in mm.vmas_in(start, end):
            lo, hi = max(v.start, start), min(v.end, end)
            for k, i, j in mm.chunks(lo, hi):
                o = ((k << PMD_SHIFT) + (i << PAGE_SHIFT) - start) >> PAGE_SHIFT
                seg = out[o:o + j - i]
                t = mm.pt.get(k)
                self.entries_walked += 1 if t is None else j - i
                if sdon and v.softdirty:
                    seg |= np.uint64(B.SOFT_DIRTY)
                if t is None:
                    continue
                st, fl = t.st[i:j], t.fl[i:j]
                pres, swp = st == PRESENT, (st == SWAP) | (st == MARKER)
                seg[pres] |= np.uint64(B.PRESENT)
                seg[swp] |= np.uint64(B.SWAPPED)
                seg[pres & ((fl & (ANON | ZERO)) == 0)] |= np.uint64(B.FILE_SHARED)
                if t.huge:
                    # pagemap_pmd_range: the huge zero folio is not PageAnon, so PM_FILE
                    # (a small zero page has no struct page there: vm_normal_page is NULL)
                    seg[pres & ((fl & ZERO) != 0)] |= np.uint64(B.FILE_SHARED)
                seg[pres & ((fl & ANON) != 0)] |= np.uint64(B.MMAP_EXCLUSIVE)
                seg[(st != NONE) & ((fl & WP) != 0)] |= np.uint64(B.UFFD_WP)
                if sdon:
                    seg[(st != NONE) & ((fl & SD) != 0)] |= np.uint64(B.SOFT_DIRTY)
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
        known = 0x7F | (_SOFT_DIRTY if self.profile.category_soft_dirty else 0) | \
            (int(C.GUARD) if self.profile.category_guard else 0)
        if flags & ~3 or (category_mask | category_inverted | category_anyof_mask |
                          return_mask) & ~known or start % PAGE:
            _sys.raise_errno(E.EINVAL, op, start=start, end=end, errmap=em)
        if end < start:
            _sys.raise_errno(E.EFAULT, op, start=start, end=end, errmap=em)
        end = -(-end // PAGE) * PAGE
        wp_match = bool(flags & U.PmScanFlag.WP_MATCHING)
        check = bool(flags & U.PmScanFlag.CHECK_WPASYNC)
        out = _Output(vec_len, max_pages or (1 << 62), return_mask)
        if start == end:
            return ScanResult(np.empty((0, 3), np.uint64), start)
        fast = category_mask == return_mask == _WRITTEN and not category_anyof_mask and \
            not category_inverted
        wp_only = wp_match and vec_len == 0
        inv, mask, anyof = category_inverted, category_mask, category_anyof_mask
        for v in mm.vmas_in(start, end):
            is_async = v.uffd is not None and v.uffd.async_
            if not is_async:
                if check:
                    _sys.raise_errno(E.EPERM, op, start=start, end=end, errmap=em)
                if wp_match:
                    continue  # pagemap_scan_test_walk skips it silently
            vcat = _WPALLOWED if is_async and mm.uses_markers(v) else 0
            if v.softdirty and self.profile.soft_dirty:
                vcat |= _SOFT_DIRTY
            if (vcat ^ inv) & mask & _WPALLOWED != mask & _WPALLOWED:
                continue
            lo, hi = max(v.start, start), min(v.end, end)
            chunks = list(mm.chunks(lo, hi))
            tabs = [mm.pt.get(k) for k, _, _ in chunks]
            if not wp_only and not any(t is not None and t.huge for t in tabs):
                if self._scan_batch(mm, v, lo, hi, chunks, tabs, vcat, fast, inv, mask, anyof,
                                    wp_match, out):
                    return ScanResult(out.result(), out.walk_end)
                continue
            for k, i, j in chunks:
                base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
                t = mm.pt.get(k)
                if wp_only:
                    self.entries_walked += 1 if t is None else j - i
                    if t is None:
                        wp_range(mm, v, base, base + ((j - i) << PAGE_SHIFT), True)
                    elif t.huge and i == 0 and j == 512:
                        t.fl[:] = (t.fl & _NOT_W) | WP
                    else:
                        if t.huge:
                            mm.split_huge(k)
                        self._wp_entries(mm, v, t, i, j, np.ones(j - i, bool))
                    continue
                cats = self._categories(mm, v, t, i, j, vcat, fast)
                m = ((cats ^ inv) & mask) == mask
                if anyof:
                    m &= ((cats ^ inv) & anyof) != 0
                self.entries_walked += 1 if t is None else j - i
                if t is not None and t.huge and wp_match:
                    n = out.room(base, m, cats)
                    partial = n < j - i or i != 0 or j != 512
                    if partial and n and (cats[m][:n] & _WRITTEN).any():
                        mm.split_huge(k)  # partial WP of a written THP splits it
                        cats = self._categories(mm, v, t, i, j, vcat, fast)
                n = out.add(base, m, cats)
                if wp_match and n:
                    sel = np.zeros(j - i, bool)
                    idx = np.flatnonzero(m)[:n]
                    sel[idx] = True
                    if t is None:
                        # pagemap_scan_pte_hole: uffd_wp_range on the reported hole, written
                        # or not (entries and THPs are armed only when WRITTEN)
                        a = int(idx[0])
                        b = int(idx[-1]) + 1
                        wp_range(mm, v, base + (a << PAGE_SHIFT), base + (b << PAGE_SHIFT),
                                 True)
                    elif not (sel & ((cats & _WRITTEN) != 0)).any():
                        pass
                    elif t.huge:
                        t.fl[:] = (t.fl & _NOT_W) | WP
                    else:
                        self._wp_entries(mm, v, t, i, j, sel & ((cats & _WRITTEN) != 0))
                if out.stopped:
                    return ScanResult(out.result(), out.walk_end)
        return ScanResult(out.result(), end)

    def _scan_batch(self, mm: Mm, v: Vma, lo: int, hi: int, chunks: list[tuple[int, int, int]],
                    tabs: list[Any], vcat: int, fast: bool, inv: int, mask: int, anyof: int,
                    wp_match: bool, out: _Output) -> bool:
        """One VMA without PMD-mapped THPs, all its page-table pages at once; True when the
        output filled up."""
        n = (hi - lo) >> PAGE_SHIFT
        st = np.empty(n, np.uint8)
        fl = np.zeros(n, np.uint8)
        pos = 0
        for (_, i, j), t in zip(chunks, tabs, strict=True):
            if t is None:
                st[pos:pos + j - i] = _HOLE
                self.entries_walked += 1
            else:
                st[pos:pos + j - i] = t.st[i:j]
                fl[pos:pos + j - i] = t.fl[i:j]
                self.entries_walked += j - i
            pos += j - i
        cats = self._cats(st, fl, False, v.uffd is not None, vcat, fast)
        m = ((cats ^ np.uint16(inv)) & np.uint16(mask)) == np.uint16(mask)
        if anyof:
            m &= ((cats ^ np.uint16(inv)) & np.uint16(anyof)) != 0
        got = out.add(lo, m, cats)
        if wp_match and got:
            sel = np.zeros(n, bool)
            sel[np.flatnonzero(m)[:got]] = True
            written = (cats & np.uint16(_WRITTEN)) != 0
            pos = 0
            for (k, i, j), t in zip(chunks, tabs, strict=True):
                seg = sel[pos:pos + j - i]
                if t is None:
                    if seg.any():  # pagemap_scan_pte_hole: the reported hole, written or not
                        idx = np.flatnonzero(seg)
                        base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
                        wp_range(mm, v, base + (int(idx[0]) << PAGE_SHIFT),
                                 base + ((int(idx[-1]) + 1) << PAGE_SHIFT), True)
                else:
                    seg = seg & written[pos:pos + j - i]
                    if seg.any():
                        self._wp_entries(mm, v, t, i, j, seg)
                pos += j - i
        return out.stopped

    @staticmethod
    def _wp_entries(mm: Mm, v: Vma, t: Any, i: int, j: int, sel: np.ndarray) -> None:
        """make_uffd_wp_pte on the selected entries: a marker on pte_none."""
        st, fl = t.st[i:j], t.fl[i:j]
        live = sel & (st != NONE)
        fl[live] = (fl[live] & _NOT_W) | WP
        none = sel & (st == NONE)
        st[none] = MARKER
        fl[none] = WP

    def _categories(self, mm: Mm, v: Vma, t: Any, i: int, j: int, vcat: int,
                    fast: bool) -> np.ndarray:
        if t is None:
            st = np.full(j - i, _HOLE, np.uint8)
            fl = np.zeros(j - i, np.uint8)
            return self._cats(st, fl, False, v.uffd is not None, vcat, fast)
        return self._cats(t.st[i:j], t.fl[i:j], t.huge, v.uffd is not None, vcat, fast)

    def _cats(self, st: np.ndarray, fl: np.ndarray, huge: bool, wpv: bool, vcat: int,
              fast: bool) -> np.ndarray:
        """pagemap_page_category / pagemap_thp_category / pagemap_scan_pte_hole for entries
        (``_HOLE``: no page-table page)."""
        u = np.uint16
        hole = st == _HOLE
        none = st == NONE
        pres = st == PRESENT
        swp = (st == SWAP) | (st == MARKER)
        notwp = (fl & WP) == 0
        cats = np.full(len(st), vcat, u)
        cats |= pres.view(np.uint8) * u(_PRESENT | (_HUGE if huge else 0))
        cats |= swp.view(np.uint8) * u(_SWAPPED)
        written = (pres | swp) & notwp
        # pte_none: WRITTEN on the fast path; on the generic path only since the 2026 fix
        # (any VMA: observed on 6.18 for a none PTE in an unregistered VMA)
        if fast or self.profile.scan_pte_none_written:
            written |= none
        # PMD holes: only the VMA categories, WRITTEN since the 2026 PMD-hole fix
        if wpv and self.profile.scan_pmd_hole_written:
            written |= hole
        cats |= written.view(np.uint8) * u(_WRITTEN)
        if not fast:
            cats |= (pres & ((fl & (ANON | ZERO)) == 0)).view(np.uint8) * u(_FILE)
            if not huge or self.profile.huge_zero_pfnzero:
                cats |= (pres & ((fl & ZERO) != 0)).view(np.uint8) * u(_PFNZERO)
            if self.profile.soft_dirty and self.profile.category_soft_dirty:
                cats |= ((pres | (st == SWAP)) & ((fl & SD) != 0)).view(np.uint8) * \
                    u(_SOFT_DIRTY)
        else:
            cats &= u(_WRITTEN)
        return cats


def _unregister_vma(v: Vma) -> None:
    v.uffd = None
    v.wp_start = False


class _Output:
    """pagemap_scan_output(): regions of contiguous pages with equal categories & return_mask,
    at most ``vec_len`` regions and ``max_pages`` pages; ``walk_end`` on an early stop."""

    def __init__(self, vec_len: int, max_pages: int, return_mask: int) -> None:
        self.vec_len = vec_len
        self.left = max_pages
        self.rmask = np.uint16(return_mask)
        self.regions: list[list[int]] = []
        self.stopped = False
        self.walk_end = 0

    def _runs(self, base: int, m: np.ndarray, cats: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = np.flatnonzero(m)
        keys = cats[idx] & self.rmask
        brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(keys) != 0)) + 1
        starts = np.concatenate([[0], brk])
        ends = np.concatenate([brk, [len(idx)]])
        return idx, keys, starts, ends

    def room(self, base: int, m: np.ndarray, cats: np.ndarray) -> int:
        """How many matching pages of this chunk would be output."""
        saved = (self.regions[:], self.left, self.stopped, self.walk_end)
        n = self.add(base, m, cats)
        self.regions, self.left, self.stopped, self.walk_end = saved
        return n

    def add(self, base: int, m: np.ndarray, cats: np.ndarray) -> int:
        if not m.any():
            return 0
        idx, keys, starts, ends = self._runs(base, m, cats)
        done = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            a = base + (int(idx[s]) << PAGE_SHIFT)
            key = int(keys[s])
            npg = e - s
            if self.left <= 0:
                self.stopped, self.walk_end = True, a
                return done
            take = min(npg, self.left)
            last = self.regions[-1] if self.regions else None
            if last is not None and last[1] == a and last[2] == key:
                last[1] = a + (take << PAGE_SHIFT)
            else:
                if len(self.regions) >= self.vec_len:
                    self.stopped, self.walk_end = True, a
                    return done
                self.regions.append([a, a + (take << PAGE_SHIFT), key])
            self.left -= take
            done += int(take)
            if take < npg or self.left == 0:
                self.stopped, self.walk_end = True, a + (take << PAGE_SHIFT)
                return done
        return done

    def result(self) -> np.ndarray:
        if not self.regions:
            return np.empty((0, 3), np.uint64)
        return np.array(self.regions, dtype=np.uint64)


__all__ = ["ModelKernel", "UffdCtx", "wp_range"]
