"""The fault paths: what a write or a read does to the page tables (mm/memory.c,
mm/huge_memory.c, mm/userfaultfd.c), one page at a time and in vectorised batches.

Kernel facts modelled here, with their source:

* a write to a present PTE that is not writable faults; the fault sets dirty and soft-dirty
  (x86 ``pte_mkdirty`` sets ``_PAGE_SOFT_DIRTY`` too) and makes the PTE writable; the zero
  page and a private file page are copied (do_wp_page -> wp_page_copy);
* async uffd-wp resolves a write fault on a uffd-wp entry by clearing the bit
  (do_wp_page / pte_marker_handle_uffd_wp); a write to a uffd-wp anon PMD THP splits it first
  (wp_huge_pmd); sync mode queues a message and the writer waits for the monitor;
* a marker is resolved like pte_none (do_pte_missing) and the new PTE keeps its bit
  (vmf_orig_pte_uffd_wp);
* a write fault on an unpopulated PMD may get a THP (do_huge_pmd_anonymous_page; THP
  "always", or "madvise" with VM_HUGEPAGE); a write to the huge zero page allocates a THP
  (do_huge_zero_wp_pmd, 6.14) or, before, splits the PMD;
* a read fault maps the zero page (anon), or the page-cache page (file, shmem) with
  fault-around of the cached pages of the 16-page window (do_fault_around), never in a uffd-wp
  VMA (uffd_disable_fault_around); a swapped page comes back with its bits (do_swap_page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .pagetable import Table
from .pte import (
    ANON,
    FAULT_AROUND,
    LAZY,
    MARKER,
    NONE,
    PAGE_SHIFT,
    PMD,
    PMD_SHIFT,
    PRESENT,
    PTRS,
    RW,
    SD,
    SWAP,
    WP,
    ZERO,
    D,
    nbits,
)
from .space import ModelError

if TYPE_CHECKING:
    from .space import AddressSpace
    from .vma import Vma
_NOT_LAZY = nbits(LAZY)
_NOT_WP_LAZY = np.uint8(nbits(WP, LAZY))


def thp_ok(mm: AddressSpace, v: Vma, addr: int) -> bool:
    """thp_vma_allowable_order() for an anonymous fault at ``addr``."""
    thp = mm.profile.thp
    if not v.anonymous or thp == "never" or v.hugepage < 0:
        return False
    if thp == "madvise" and v.hugepage <= 0:
        return False
    base = addr & ~(PMD - 1)
    return v.start <= base and base + PMD <= v.end


def huge_file(mm: AddressSpace, v: Vma) -> bool:
    return (v.kind == "file" and v.hugepage > 0 and mm.profile.thp != "never"
            and mm.profile.file_huge_readahead)


def anon_vma_prepare(mm: AddressSpace, v: Vma) -> None:
    if not v.anon_vma:
        v.anon_vma = mm.world.new_anon_vma()  # anon_vma_prepare


def store(mm: AddressSpace, v: Vma, t: Table, n: int, addr: int) -> None:
    """A store that lands without a fault: new content, the CPU sets the dirty bit."""
    if v.shared and v.file is not None and not t.fl[n] & ANON:
        v.file.ver[v.page_index(addr)] = mm.world.new_version()
    else:
        t.ver[n] = mm.world.new_version()
    t.fl[n] = (int(t.fl[n]) | D) & _NOT_LAZY


# ------------------------------------------------------------------------------- write, one page
def write_page(mm: AddressSpace, v: Vma, addr: int, tids: tuple[int, ...]) -> None:
    """One page written by ``tids`` (several: threads storing to it at once)."""
    k, n = addr >> PMD_SHIFT, (addr >> PAGE_SHIFT) & 511
    t = mm.pt.get(k)
    if t is not None and t.huge:
        if _write_huge(mm, v, t, k, n, addr, tids):
            return
        t = mm.pt.get(k)
    st = int(t.st[n]) if t is not None else NONE
    fl = int(t.fl[n]) if t is not None else 0
    if st == PRESENT and fl & RW and not fl & WP:
        assert t is not None
        store(mm, v, t, n, addr)
        return
    c = mm.c
    c.faults += 1
    c.vma_lock += 1
    ctx = v.uffd
    before = 0  # the content before the write, for a protected none entry (read below)
    if st == SWAP:
        assert t is not None
        t.st[n] = PRESENT  # do_swap_page: uffd-wp and soft-dirty come back from the entry
        c.swap_ins += 1
        st = PRESENT
    tracked_none = False
    if st in (PRESENT, MARKER) and fl & WP:
        assert t is not None
        _wp_fault(mm, v, addr, tids)
        st, fl = int(t.st[n]), int(t.fl[n])
    elif st in (NONE, MARKER):
        if st == MARKER:  # a discard marker (a design's, no uffd-wp bit): written
            assert t is not None
            t.st[n] = NONE
            t.fl[n] = 0
            st, fl = NONE, 0
        tracked_none = ctx is not None and ctx.none_protected(v)
        if tracked_none:
            before = mm.content_page(addr)  # a none entry or marker: as before the write
            _none_write(mm, v, addr, tids, "before", before)
    if st == PRESENT:
        assert t is not None
        _write_present(mm, v, t, n, addr, fl)
        return
    _populate_write(mm, v, t, k, n, addr, tids, before if tracked_none else None)


def _wp_fault(mm: AddressSpace, v: Vma, addr: int, tids: tuple[int, ...]) -> None:
    """A write hit a uffd-wp entry (bit or marker): handle_userfault / async resolve."""
    ctx = v.uffd
    if ctx is None:
        # a stale bit in an unregistered VMA (mremap before CVE-2025-21696's fix): no
        # userfault (userfaultfd_pte_wp() is false); the write resolves it
        t = mm.pt[addr >> PMD_SHIFT]
        t.fl[(addr >> PAGE_SHIFT) & 511] &= np.uint8(nbits(WP))
        return
    mm.c.tracking_faults += 1
    ctx.wp_fault(mm, addr, tids)


def _write_huge(mm: AddressSpace, v: Vma, t: Table, k: int, n: int, addr: int,
                tids: tuple[int, ...]) -> bool:
    """A write to a PMD-mapped THP or huge zero page; False when it was split (the caller
    goes on with the PTEs)."""
    c = mm.c
    ctx = v.uffd
    if t.fl[0] & WP:
        if ctx is not None and ctx.async_:
            mm.split_huge(k)  # wp_huge_pmd: async WP splits the PMD
        else:
            c.faults += 1
            _wp_fault(mm, v, addr, tids)
        tt = mm.pt.get(k)
        if tt is None or not tt.huge:
            return False
        t = tt
    if t.fl[0] & ZERO:
        if not mm.profile.huge_zero_wp_thp:
            mm.split_huge(k)  # do_huge_pmd_wp_page on the huge zero page: fallback
            return False
        # do_huge_zero_wp_pmd: a THP replaces the huge zero page
        c.faults += 1
        anon_vma_prepare(mm, v)
        t.fl[:] = (t.fl & np.uint8(WP)) | ANON | RW | D | SD
        t.ver[:] = 0
        t.ver[n] = mm.world.new_version()
        return True
    if not t.fl[0] & RW:
        c.faults += 1
        if not t.fl[0] & SD:
            c.tracking_faults += 1  # soft-dirty write-protection
        t.fl[:] |= RW | D | SD
    else:
        t.fl[:] = (t.fl[:] | D) & np.uint8(_NOT_LAZY)
    t.ver[n] = mm.world.new_version()
    return True


def _write_present(mm: AddressSpace, v: Vma, t: Table, n: int, addr: int, fl: int) -> None:
    """A write fault on a present entry (after any uffd-wp resolution): COW or reuse."""
    if not fl & SD and not fl & ZERO:
        mm.c.tracking_faults += 1  # soft-dirty write-protection (clear_refs)
    if fl & ZERO or (not v.shared and not fl & ANON):
        # COW of the zero page or of a private file page: a new anon page
        anon_vma_prepare(mm, v)
        t.fl[n] = (fl & WP) | RW | D | SD | ANON
        t.ver[n] = mm.world.new_version()
    else:
        t.fl[n] = (fl & _NOT_LAZY) | RW | D | SD
        store(mm, v, t, n, addr)


def _populate_write(mm: AddressSpace, v: Vma, t: Table | None, k: int, n: int, addr: int,
                    tids: tuple[int, ...], before: int | None) -> None:
    """A write fault on a none entry (or a resolved marker): map a page. ``before``: the
    content before, when the entry was a protected none (the design notifies after)."""
    if t is None and thp_ok(mm, v, addr):
        t = mm.pt.alloc(k)
        t.huge = True
        t.st[:] = PRESENT
        t.fl[:] = ANON | RW | D | SD
        anon_vma_prepare(mm, v)
        t.ver[n] = mm.world.new_version()
        _after_none_write(mm, v, addr, tids, before)
        return
    t = mm.pt.alloc(k)
    keep_wp = int(t.fl[n]) & WP if t.st[n] == MARKER else 0
    t.st[n] = PRESENT
    prof = mm.profile
    if v.shared and v.file is not None:
        t.fl[n] = keep_wp | RW | D | SD
        a = v.page_index(addr)
        v.file.fault_in(a, prof.readahead_pages, huge_file(mm, v))
        v.file.ver[a] = mm.world.new_version()
    else:
        anon_vma_prepare(mm, v)
        if v.file is not None:  # do_cow_fault reads the file page through the cache
            v.file.fault_in(v.page_index(addr), prof.readahead_pages, huge_file(mm, v))
        t.fl[n] = keep_wp | RW | D | SD | ANON
        t.ver[n] = mm.world.new_version()
    _after_none_write(mm, v, addr, tids, before)


def _after_none_write(mm: AddressSpace, v: Vma, addr: int, tids: tuple[int, ...],
                      before: int | None) -> None:
    if before is not None:
        _none_write(mm, v, addr, tids, "after", before)


def _none_write(mm: AddressSpace, v: Vma, addr: int, tids: tuple[int, ...], when: str,
                before: int) -> None:
    """A write fault on a protected none entry (designs with ``none_protected``): a tracking
    fault, notified before mapping or (``notify_after_map``) after."""
    ctx = v.uffd
    assert ctx is not None
    after = ctx.rules.notify_after_map
    if when == "before":
        mm.c.tracking_faults += 1
        if ctx.ring is not None:
            ctx.ring.append(addr)
    if ctx.async_ or (when == "after") != after:
        return
    seen = before
    if after:
        # (b) the write fault maps a fresh page without the bit, then notifies: another
        # thread writing to the same page runs in the window (Peter Xu: "data loss")
        for _ in tids[1:]:
            seen = mm.world.new_version()
            _store_version(mm, v, addr, seen)
    ctx.message(addr, seen, tids)


def _store_version(mm: AddressSpace, v: Vma, addr: int, ver: int) -> None:
    t = mm.pt[addr >> PMD_SHIFT]
    n = (addr >> PAGE_SHIFT) & 511
    if v.shared and v.file is not None:
        v.file.ver[v.page_index(addr)] = ver
    else:
        t.ver[n] = ver


# ------------------------------------------------------------------------------- write, batched
def vector_ok(v: Vma) -> bool:
    """Can writes to ``v`` take the vectorised path? (Anonymous private memory, untracked,
    tracked by an async context, or by a sync one whose monitor takes a table's faults at
    once.)"""
    ctx = v.uffd
    return v.anonymous and (ctx is None or ctx.async_ or ctx.pages_handler is not None)


def write_table(mm: AddressSpace, v: Vma, k: int, idx: np.ndarray) -> np.ndarray:
    """Single-thread writes to the pages ``idx`` (in order, repeats allowed) of table ``k`` in
    ``v`` (``vector_ok``). Applies what needs no per-page decision, all at once; returns the
    positions in ``idx`` left to :func:`write_page` (in order)."""
    t = mm.pt.get(k)
    fresh = t is None
    if t is None:
        if thp_ok(mm, v, k << PMD_SHIFT):
            return np.arange(len(idx))
        t = mm.pt.alloc(k)
    elif t.huge:
        return np.arange(len(idx))
    seen = np.zeros(len(t.st), bool)
    seen[idx] = True
    uniq = np.flatnonzero(seen)  # np.unique(idx), without its sort
    st, fl = t.st[uniq], t.fl[uniq]
    pres = st == PRESENT
    none = (st == NONE) | ((st == MARKER) & ((fl & WP) != 0))
    ctx = v.uffd
    sync = ctx is not None and not ctx.async_
    guarded = sync and ctx is not None and ctx.none_protected(v)
    after = guarded and ctx is not None and ctx.rules.notify_after_map
    if guarded and fresh and not after:
        # the first message would come before the table exists (unprotecting nothing
        # there takes no PT lock): one by one
        none &= st != NONE
    vec = pres | none
    u = uniq[vec]
    if len(u):
        pres, fl, st = pres[vec], fl[vec], st[vec]
        if not sync:
            _write_vector(mm, v, t, k, u, pres, fl, st)
        else:
            _write_sync(mm, v, t, k, u, pres, fl, st, guarded, after)
    if vec.all():
        return np.empty(0, np.intp)
    return np.flatnonzero(np.isin(idx, uniq[~vec]))


def _write_sync(mm: AddressSpace, v: Vma, t: Table, k: int, u: np.ndarray, pres: np.ndarray,
                fl: np.ndarray, st: np.ndarray, guarded: bool, after: bool) -> None:
    """:func:`_write_vector` under a synchronous context: the write-protect faults and, where
    ``guarded`` (``none_protected``), the writes to none entries are messages, sent before
    the writes (or, ``after``: ``notify_after_map``, a none entry's after)."""
    none = (st == NONE) if guarded else np.zeros(len(u), bool)
    first = ((fl & WP) != 0) | (none & (not after))
    if first.any():
        n = u[first]
        _messages(mm, v, t, k, n, np.where(pres[first] & ((fl[first] & ANON) != 0),
                                           t.ver[n], 0))  # as content_page
        st, fl = t.st[u], t.fl[u]  # as the monitor left them
        pres = st == PRESENT
    _write_vector(mm, v, t, k, u, pres, fl, st)
    if after and none.any():
        _messages(mm, v, t, k, u[none], np.zeros(int(none.sum()), np.int64))


def _messages(mm: AddressSpace, v: Vma, t: Table, k: int, n: np.ndarray,
              seen: np.ndarray) -> None:
    """Tracking faults on the pages ``n`` of table ``k`` under a synchronous context: a
    message each (content ``seen``); the monitor resolves them before the writes go on
    (handle_userfault)."""
    mm.c.tracking_faults += len(n)
    ctx = v.uffd
    assert ctx is not None
    ctx.messages((k << PMD_SHIFT) + (n.astype(np.int64) << PAGE_SHIFT), seen)
    if (t.fl[n] & WP).any():
        raise ModelError(
            "the monitor of a synchronous uffd-wp context returned without unprotecting the "
            "page it was notified of", op="write", start=int(k << PMD_SHIFT),
            end=int((k + 1) << PMD_SHIFT), hint="a handler must resolve each fault "
            "(UFFDIO_WRITEPROTECT mode 0)")


def _write_vector(mm: AddressSpace, v: Vma, t: Table, k: int, u: np.ndarray, pres: np.ndarray,
                  fl: np.ndarray, st: np.ndarray) -> None:
    """Each page of ``u`` written once (anon, vector_ok): a store, a fault on a present page
    (uffd-wp async resolve, soft-dirty, COW of the zero page or after fork), or a first
    touch of a none entry or armed marker."""
    c = mm.c
    ctx = v.uffd
    ok = pres & ((fl & (RW | WP)) == RW)
    wp = (fl & WP) != 0
    nf = len(u) - int(ok.sum())
    c.faults += nf
    c.vma_lock += nf
    if ctx is not None and ctx.async_ and ctx.none_protected(v):
        wp |= st == NONE  # a protected none entry: a tracking fault too (_none_write)
    nwp = int(wp.sum())
    if nwp:
        c.tracking_faults += nwp  # the uffd-wp fault, resolved by clearing the bit
        if ctx is not None and ctx.ring is not None:
            base = k << PMD_SHIFT
            ctx.ring.extend([base + (int(x) << PAGE_SHIFT) for x in u[wp]])
    fault_p = pres & ~ok
    if fault_p.any():
        f = fl[fault_p] & _NOT_WP_LAZY
        c.tracking_faults += int(((f & (SD | ZERO)) == 0).sum())  # soft-dirty protection
    new = fl & _NOT_WP_LAZY
    cow = pres & ~ok & (((fl & ZERO) != 0) | ((fl & ANON) == 0))
    populate = ~pres
    new = np.where(ok, (fl | D) & np.uint8(_NOT_LAZY), new | RW | D | SD)
    new = np.where(cow | populate, (new & ~np.uint8(ZERO)) | ANON, new).astype(np.uint8)
    if (cow | populate).any():
        anon_vma_prepare(mm, v)
    t.st[u] = PRESENT
    t.fl[u] = new
    t.ver[u] = mm.world.new_versions(len(u))


# ------------------------------------------------------------------------------- read
def read_page(mm: AddressSpace, v: Vma, addr: int) -> None:
    k, n = addr >> PMD_SHIFT, (addr >> PAGE_SHIFT) & 511
    t = mm.pt.get(k)
    st = int(t.st[n]) if t is not None else NONE
    if st == PRESENT:
        return
    c = mm.c
    c.faults += 1
    if st == SWAP:
        assert t is not None
        t.st[n] = PRESENT  # keeps uffd-wp / soft-dirty from the swap entry
        t.fl[n] &= np.uint8(nbits(RW))
        c.swap_ins += 1
        return
    ctx = v.uffd
    # pte_marker_handle_uffd_wp: mapped with the bit kept
    wp = st == MARKER and t is not None and bool(t.fl[n] & WP)
    if st == NONE and ctx is not None and ctx.none_protected(v):
        wp = True  # the fault-time proposal (a): a read fault maps the zero page + wp bit
    if t is None and not wp and thp_ok(mm, v, addr) and mm.profile.thp_zero_page:
        t = mm.pt.alloc(k)  # do_huge_pmd_anonymous_page: the huge zero page
        t.huge = True
        t.st[:] = PRESENT
        t.fl[:] = ZERO
        return
    t = mm.pt.alloc(k)
    t.st[n] = PRESENT
    t.ver[n] = 0
    if v.anonymous:
        t.fl[n] = ZERO | (WP if wp else 0)
        return
    a = v.page_index(addr)
    if v.file is not None:
        v.file.fault_in(a, mm.profile.readahead_pages, huge_file(mm, v))
    t.fl[n] = WP if wp else 0
    if v.uffd is None and v.file is not None:
        fault_around(mm, v, addr, t, n)


def read_table(mm: AddressSpace, v: Vma, k: int, idx: np.ndarray) -> np.ndarray:
    """Reads of the pages ``idx`` of table ``k`` in ``v``: present pages need nothing, none
    entries of anonymous memory (no THP, nothing protected) map the zero page at once, and
    armed markers keep their bit; returns the positions left to :func:`read_page`."""
    t = mm.pt.get(k)
    if t is None:
        if not v.anonymous or thp_ok(mm, v, k << PMD_SHIFT):
            return np.arange(len(idx))
        if v.uffd is not None and v.uffd.none_protected(v):
            return np.arange(len(idx))
        t = mm.pt.alloc(k)
    elif t.huge:
        return np.empty(0, np.intp)
    seen = np.zeros(len(t.st), bool)
    seen[idx] = True
    uniq = np.flatnonzero(seen)  # np.unique(idx), without its sort
    st = t.st[uniq]
    todo = st != PRESENT
    if not todo.any():
        return np.empty(0, np.intp)
    ctx = v.uffd
    if not v.anonymous or (ctx is not None and ctx.rules.none_protected):
        return np.flatnonzero(np.isin(idx, uniq[todo]))
    fl = t.fl[uniq]
    mapzero = (st == NONE) | ((st == MARKER) & ((fl & WP) != 0))
    u = uniq[mapzero]
    if len(u):
        mm.c.faults += len(u)
        t.fl[u] = ZERO | (t.fl[u] & WP)  # a marker's bit is kept
        t.st[u] = PRESENT
        t.ver[u] = 0
    rest = todo & ~mapzero
    if not rest.any():
        return np.empty(0, np.intp)
    return np.flatnonzero(np.isin(idx, uniq[rest]))


def fault_around(mm: AddressSpace, v: Vma, addr: int, t: Table, n: int) -> None:
    """do_fault_around(): a read fault on a file or shmem mapping also maps the cached
    pages of the 16-page window around it (fault_around_bytes 64 KiB), clipped to the VMA
    and the page table; never in a uffd-wp VMA (uffd_disable_fault_around), and never over
    a non-none entry (filemap_map_pages)."""
    assert v.file is not None
    vma_off = (addr - v.start) >> PAGE_SHIFT
    frm = max(n & ~(FAULT_AROUND - 1), n - min(n, vma_off))
    vma_pages = (v.end - v.start) >> PAGE_SHIFT
    to = min(frm + FAULT_AROUND, PTRS, n + vma_pages - vma_off)
    base = addr - (n << PAGE_SHIFT)
    f = v.file
    blk = v.page_index(addr) // PTRS
    first = addr - ((v.page_index(addr) - blk * PTRS) << PAGE_SHIFT)
    if blk < len(f.pmd_folio) and f.pmd_folio[blk] and first == base and \
            v.start <= first and first + PMD <= v.end:
        # filemap_map_pages maps the entire large folio when it fits the VMA and the
        # page table ("mm/filemap: map entire large folio faultaround", 6.18)
        frm, to = 0, PTRS
    a0 = v.page_index(base + (frm << PAGE_SHIFT))
    cached = f.resident[a0:a0 + to - frm]
    if len(cached) < to - frm:
        cached = np.concatenate([cached, np.zeros(to - frm - len(cached), bool)])
    sel = (t.st[frm:to] == NONE) & cached
    t.st[frm:to][sel] = PRESENT
    t.fl[frm:to][sel] = 0
    t.ver[frm:to][sel] = 0
