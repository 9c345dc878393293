"""PAGEMAP_SCAN in the model (fs/proc/task_mmu.c ``do_pagemap_scan``): categories of every
entry, the output regions, and get-and-write-protect.

Categories (``pagemap_page_category``, ``pagemap_thp_category``, ``pagemap_scan_pte_hole``):
WRITTEN is "present or swapped without the uffd-wp bit"; pte_none reads WRITTEN on the fast
path (category_mask == return_mask == WRITTEN, nothing else asked) and, since Kiryl
Shutsemau's 2026 fix, on the generic path too (in any VMA: observed on 6.18); a PMD hole
(no PTE table) reads only the VMA categories, WRITTEN since the 2026 PMD-hole fix. With
PM_SCAN_WP_MATCHING a matching reported page is armed: entries and THPs only when WRITTEN, a
reported hole whether written or not (uffd_wp_range from pagemap_scan_pte_hole).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _uapi as U
from .pte import PAGE_SHIFT, PMD_SHIFT, Bit, Entry, nbits
from .uffd import wp_range

if TYPE_CHECKING:
    from .profiles import Profile
    from .space import AddressSpace
    from .vma import Vma

C = U.PageCategory
WRITTEN, PRESENT_C, FILE_C = int(C.WRITTEN), int(C.PRESENT), int(C.FILE)
SWAPPED, PFNZERO, HUGE = int(C.SWAPPED), int(C.PFNZERO), int(C.HUGE)
WPALLOWED, SOFT_DIRTY_C = int(C.WPALLOWED), int(C.SOFT_DIRTY)
#: no page-table page (pmd_none) in the scan's entry arrays
HOLE = 255
_NOT_RW = np.uint8(nbits(Bit.RW))
WP, ANON, ZERO, SD = Bit.UFFD_WP, Bit.ANON, Bit.ZERO_PFN, Bit.SOFT_DIRTY


class Query:
    """One PAGEMAP_SCAN's arguments, checked."""

    def __init__(self, flags: int, category_mask: int, category_inverted: int,
                 category_anyof_mask: int, return_mask: int, vec_len: int,
                 max_pages: int) -> None:
        self.wp_match = bool(flags & U.PmScanFlag.WP_MATCHING)
        self.check = bool(flags & U.PmScanFlag.CHECK_WPASYNC)
        self.mask, self.inv, self.anyof = category_mask, category_inverted, category_anyof_mask
        self.rmask = return_mask
        self.fast = category_mask == return_mask == WRITTEN and not category_anyof_mask and \
            not category_inverted
        self.wp_only = self.wp_match and vec_len == 0
        self.out = Output(vec_len, max_pages or (1 << 62), return_mask)

    def match(self, cats: np.ndarray) -> np.ndarray:
        u = np.uint16
        m: np.ndarray = ((cats ^ u(self.inv)) & u(self.mask)) == u(self.mask)
        if self.anyof:
            m &= ((cats ^ u(self.inv)) & u(self.anyof)) != 0
        return m


def categories(prof: Profile, st: np.ndarray, fl: np.ndarray, huge: bool, wpv: bool,
               vcat: int, fast: bool, none_clean: bool = False) -> np.ndarray:
    """The categories of entries (``HOLE``: no page-table page) of one VMA. ``none_clean``:
    the VMA's context follows rules in which a none entry is protected (a design's kernel
    patch: the fault-time proposal, the per-VMA flag), so none and holes read clean."""
    u = np.uint16
    hole = st == HOLE
    none = st == Entry.NONE
    pres = st == Entry.PRESENT
    swp = (st == Entry.SWAP) | (st == Entry.MARKER)
    notwp = (fl & WP) == 0
    cats = np.full(len(st), vcat, u)
    cats |= pres.view(np.uint8) * u(PRESENT_C | (HUGE if huge else 0))
    cats |= swp.view(np.uint8) * u(SWAPPED)
    written = (pres | swp) & notwp
    if (fast or prof.scan_pte_none_written) and not none_clean:
        written |= none
    if wpv and prof.scan_pmd_hole_written and not none_clean:
        written |= hole
    cats |= written.view(np.uint8) * u(WRITTEN)
    if fast:
        only: np.ndarray = cats & u(WRITTEN)
        return only
    cats |= (pres & ((fl & (ANON | ZERO)) == 0)).view(np.uint8) * u(FILE_C)
    if not huge or prof.huge_zero_pfnzero:
        cats |= (pres & ((fl & ZERO) != 0)).view(np.uint8) * u(PFNZERO)
    if prof.soft_dirty and prof.category_soft_dirty:
        cats |= ((pres | (st == Entry.SWAP)) & ((fl & SD) != 0)).view(np.uint8) * \
            u(SOFT_DIRTY_C)
    return cats


def wp_entries(t: Any, i: int, j: int, sel: np.ndarray, markers: bool = True) -> int:
    """make_uffd_wp_pte on the selected entries: a marker on pte_none (where the context uses
    markers: always with WP_ASYNC in Linux)."""
    st, fl = t.st[i:j], t.fl[i:j]
    live = sel & (st != Entry.NONE)
    fl[live] = (fl[live] & _NOT_RW) | WP
    n = int(live.sum())
    if markers:
        none = sel & (st == Entry.NONE)
        st[none] = Entry.MARKER
        fl[none] = WP
        n += int(none.sum())
    return n


def vma_categories(mm: AddressSpace, v: Vma, is_async: bool) -> int:
    vcat = WPALLOWED if is_async and mm.uses_markers(v) else 0
    if v.softdirty and mm.profile.soft_dirty:
        vcat |= SOFT_DIRTY_C
    return vcat


def scan_vma(mm: AddressSpace, v: Vma, lo: int, hi: int, q: Query) -> tuple[bool, int]:
    """Scan [lo, hi) of one VMA; (output full, entries walked)."""
    is_async = v.uffd is not None and v.uffd.async_
    vcat = vma_categories(mm, v, is_async)
    chunks = list(mm.chunks(lo, hi))
    tabs = [mm.pt.get(k) for k, _, _ in chunks]
    mm.c.ptl += sum(t is not None for t in tabs)
    if not q.wp_only and not any(t is not None and t.huge for t in tabs):
        return _scan_batch(mm, v, lo, hi, chunks, tabs, vcat, q)
    walked = 0
    for (k, i, j), t in zip(chunks, tabs, strict=True):
        walked += 1 if t is None else j - i
        if q.wp_only:
            _arm_all(mm, v, k, i, j, t)
        elif _scan_chunk(mm, v, k, i, j, t, vcat, q):
            return True, walked
    return False, walked


def _arm_all(mm: AddressSpace, v: Vma, k: int, i: int, j: int, t: Any) -> None:
    """WP_MATCHING with vec_len 0: protect everything, report nothing."""
    base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
    if t is None:
        wp_range(mm, v, base, base + ((j - i) << PAGE_SHIFT), True)
    elif t.huge and i == 0 and j == 512:
        t.fl[:] = (t.fl & _NOT_RW) | WP
        mm.c.wp_entries += 1
    else:
        if t.huge:
            mm.split_huge(k)
        mm.c.wp_entries += wp_entries(t, i, j, np.ones(j - i, bool), mm.uses_markers(v))


def _none_clean(v: Vma) -> bool:
    return v.uffd is not None and not v.uffd.rules.linux


def _table_cats(mm: AddressSpace, v: Vma, t: Any, i: int, j: int, vcat: int,
                fast: bool) -> np.ndarray:
    if t is None:
        return categories(mm.profile, np.full(j - i, HOLE, np.uint8), np.zeros(j - i, np.uint8),
                          False, v.uffd is not None, vcat, fast, _none_clean(v))
    return categories(mm.profile, t.st[i:j], t.fl[i:j], t.huge, v.uffd is not None, vcat, fast,
                      _none_clean(v))


def _scan_chunk(mm: AddressSpace, v: Vma, k: int, i: int, j: int, t: Any, vcat: int,
                q: Query) -> bool:
    """One page-table page (or THP, or hole) of the range; True when the output filled."""
    base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
    out = q.out
    cats = _table_cats(mm, v, t, i, j, vcat, q.fast)
    m = q.match(cats)
    if t is not None and t.huge and q.wp_match:
        n = out.room(base, m, cats)
        partial = n < j - i or i != 0 or j != 512
        if partial and n and (cats[m][:n] & WRITTEN).any():
            mm.split_huge(k)  # partial WP of a written THP splits it
            cats = _table_cats(mm, v, t, i, j, vcat, q.fast)
    n = out.add(base, m, cats)
    if q.wp_match and n:
        sel = np.zeros(j - i, bool)
        idx = np.flatnonzero(m)[:n]
        sel[idx] = True
        written = sel & ((cats & WRITTEN) != 0)
        if t is None:
            # pagemap_scan_pte_hole: uffd_wp_range on the reported hole, written or not
            wp_range(mm, v, base + (int(idx[0]) << PAGE_SHIFT),
                     base + ((int(idx[-1]) + 1) << PAGE_SHIFT), True)
        elif written.any():
            if t.huge:
                t.fl[:] = (t.fl & _NOT_RW) | WP
                mm.c.wp_entries += 1
            else:
                mm.c.wp_entries += wp_entries(t, i, j, written, mm.uses_markers(v))
    return out.stopped


def _scan_batch(mm: AddressSpace, v: Vma, lo: int, hi: int, chunks: list[tuple[int, int, int]],
                tabs: list[Any], vcat: int, q: Query) -> tuple[bool, int]:
    """One VMA without PMD-mapped THPs, all its page-table pages at once."""
    n = (hi - lo) >> PAGE_SHIFT
    st = np.empty(n, np.uint8)
    fl = np.zeros(n, np.uint8)
    pos = walked = 0
    for (_, i, j), t in zip(chunks, tabs, strict=True):
        if t is None:
            st[pos:pos + j - i] = HOLE
            walked += 1
        else:
            st[pos:pos + j - i] = t.st[i:j]
            fl[pos:pos + j - i] = t.fl[i:j]
            walked += j - i
        pos += j - i
    cats = categories(mm.profile, st, fl, False, v.uffd is not None, vcat, q.fast,
                      _none_clean(v))
    markers = mm.uses_markers(v)
    m = q.match(cats)
    got = q.out.add(lo, m, cats)
    if q.wp_match and got:
        sel = np.zeros(n, bool)
        sel[np.flatnonzero(m)[:got]] = True
        # make_uffd_wp_pte on the written entries of every table at once, then written back
        # to the tables that changed (as wp_entries, table by table)
        wsel = sel & ((cats & np.uint16(WRITTEN)) != 0) & (st != HOLE)
        live = wsel & (st != Entry.NONE)
        fl[live] = (fl[live] & _NOT_RW) | WP
        count = int(live.sum())
        if markers:
            none = wsel & (st == Entry.NONE)
            st[none] = Entry.MARKER
            fl[none] = WP
            count += int(none.sum())
        mm.c.wp_entries += count
        pos = 0
        for (k, i, j), t in zip(chunks, tabs, strict=True):
            if t is None:
                seg = sel[pos:pos + j - i]
                if seg.any():  # pagemap_scan_pte_hole: the reported hole, written or not
                    idx = np.flatnonzero(seg)
                    base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
                    wp_range(mm, v, base + (int(idx[0]) << PAGE_SHIFT),
                             base + ((int(idx[-1]) + 1) << PAGE_SHIFT), True)
            elif count and wsel[pos:pos + j - i].any():
                t.st[i:j] = st[pos:pos + j - i]
                t.fl[i:j] = fl[pos:pos + j - i]
            pos += j - i
    return q.out.stopped, walked


class Output:
    """pagemap_scan_output(): regions of contiguous pages with equal categories & return_mask,
    at most ``vec_len`` regions and ``max_pages`` pages; ``walk_end`` on an early stop."""

    def __init__(self, vec_len: int, max_pages: int, return_mask: int) -> None:
        self.vec_len = vec_len
        self.left = max_pages
        self.rmask = np.uint16(return_mask)
        self.parts: list[np.ndarray] = []  #: (k, 3) int64 regions (start, end, categories)
        self.n = 0  #: regions in ``parts``
        self.stopped = False
        self.walk_end = 0

    def _last(self) -> np.ndarray | None:
        """The last region (a view: extending it extends the output's)."""
        return self.parts[-1][-1] if self.parts else None

    def _runs(self, m: np.ndarray, cats: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = np.flatnonzero(m)
        keys = cats[idx] & self.rmask
        brk = np.flatnonzero((np.diff(idx) != 1) | (np.diff(keys) != 0)) + 1
        starts = np.concatenate([[0], brk])
        ends = np.concatenate([brk, [len(idx)]])
        return idx, keys, starts, ends

    def room(self, base: int, m: np.ndarray, cats: np.ndarray) -> int:
        """How many matching pages of this chunk would be output."""
        last = self._last()
        saved = (list(self.parts), None if last is None else last.copy(), self.n, self.left,
                 self.stopped, self.walk_end)
        n = self.add(base, m, cats)
        self.parts, last_was, self.n, self.left, self.stopped, self.walk_end = saved
        if last_was is not None:
            self.parts[-1][-1] = last_was
        return n

    def add(self, base: int, m: np.ndarray, cats: np.ndarray) -> int:
        if not m.any():
            return 0
        idx, keys, starts, ends = self._runs(m, cats)
        if self._fits(base, idx, keys, starts, ends):
            return len(idx)
        done = 0
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            a = base + (int(idx[s]) << PAGE_SHIFT)
            key = int(keys[s])
            npg = e - s
            if self.left <= 0:
                self.stopped, self.walk_end = True, a
                return done
            take = min(npg, self.left)
            last = self._last()
            if last is not None and last[1] == a and last[2] == key:
                last[1] = a + (take << PAGE_SHIFT)
            else:
                if self.n >= self.vec_len:
                    self.stopped, self.walk_end = True, a
                    return done
                self.parts.append(np.array([[a, a + (take << PAGE_SHIFT), key]], np.int64))
                self.n += 1
            self.left -= take
            done += int(take)
            if take < npg or self.left == 0:
                self.stopped, self.walk_end = True, a + (take << PAGE_SHIFT)
                return done
        return done

    def _fits(self, base: int, idx: np.ndarray, keys: np.ndarray, starts: np.ndarray,
              ends: np.ndarray) -> bool:
        """Every run output at once when neither limit is reached (the loop of :meth:`add`
        otherwise, which stops where the kernel's would)."""
        if len(idx) >= self.left:
            return False
        lo = base + (idx[starts].astype(np.int64) << PAGE_SHIFT)
        hi = base + ((idx[ends - 1].astype(np.int64) + 1) << PAGE_SHIFT)
        rows = np.stack([lo, hi, keys[starts].astype(np.int64)], axis=1)
        last = self._last()
        merge = last is not None and last[1] == rows[0, 0] and last[2] == rows[0, 2]
        if self.n + len(rows) - merge > self.vec_len:
            return False
        if merge:
            assert last is not None
            last[1] = rows[0, 1]
            rows = rows[1:]
        if len(rows):
            self.parts.append(rows)
            self.n += len(rows)
        self.left -= len(idx)
        return True

    def result(self) -> np.ndarray:
        if not self.parts:
            return np.empty((0, 3), np.uint64)
        return np.concatenate(self.parts).astype(np.uint64)


__all__ = ["HOLE", "Output", "Query", "categories", "scan_vma", "wp_entries"]
