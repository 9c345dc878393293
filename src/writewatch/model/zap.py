"""Taking entries away: zaps (munmap, MADV_DONTNEED, MADV_REMOVE), MADV_FREE, reclaim (swap
out, page-cache PTE unmapping) and the moves of mremap.

Kernel facts, with their source:

* a zap keeps a uffd-wp entry as a marker on non-anon VMAs (zap_install_uffd_wp_if_needed ->
  pte_install_uffd_wp_if_needed) and drops everything on anon VMAs ("Zap on anonymous always
  means dropping everything"); munmap drops markers too (ZAP_FLAG_DROP_MARKER);
* MADV_DONTNEED over a whole PMD frees the emptied PTE table (CONFIG_PT_RECLAIM, 6.14);
* reclaim: anonymous pages go to swap when there is swap (the swap entry keeps soft-dirty and
  uffd-wp), clean lazy-free ones are discarded; file and shmem PTEs are unmapped and the page
  stays in the page cache (try_to_unmap, a uffd-wp PTE becomes a marker); PTE soft-dirty is
  lost (Documentation/admin-guide/mm/pagemap.rst);
* mremap moves entries with their bits; moved present/swap entries get soft-dirty
  (move_soft_dirty_pte) unless a whole PTE table moves (move_normal_pmd); since 6.13 (and
  6.12.y) the moved uffd-wp bits and markers are cleared unless the VMA stays registered
  (CVE-2025-21696, "mm: clear uffd-wp PTE/PMD state on mremap()").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .pte import (
    ANON,
    LAZY,
    MARKER,
    NONE,
    PAGE_SHIFT,
    PMD_SHIFT,
    PRESENT,
    SD,
    SWAP,
    WP,
    ZERO,
    D,
    nbits,
)

if TYPE_CHECKING:
    from .pagetable import Table
    from .space import AddressSpace
    from .vma import Vma


def zap(mm: AddressSpace, v: Vma, start: int, end: int, *, discard: bool = True,
        drop_cache: bool = False, reclaim_pt: bool = False) -> None:
    """Unmap the entries of [start, end) in ``v`` (zap_pte_range). ``discard``: MADV_DONTNEED
    / MADV_REMOVE (uffd-wp state is kept as markers where the rules say so); not for munmap."""
    ctx = v.uffd
    markers = discard and ctx is not None and not v.anonymous and ctx.uses_markers(v)
    # a design's discard marker: "changed" for anon (the content became zero); the uffd-wp
    # state kept for file/shmem, whose content stays
    dmark = discard and ctx is not None and ctx.rules.discard_marker and ctx.armed
    c = mm.c
    for k, i, j, t in mm.tables(start, end):
        c.ptl += 1
        if t.huge:
            if i == 0 and j == 512 and not markers and not dmark:
                mm.pt.free(k)  # zap_huge_pmd; the deposited table goes too
                continue
            mm.split_huge(k)
        st, fl = t.st[i:j], t.fl[i:j]
        if dmark:
            live = st != NONE
            keep = (fl & WP) if not v.anonymous else np.zeros(j - i, np.uint8)
            st[live] = MARKER
            fl[:] = np.where(live, keep, 0).astype(np.uint8)
        elif markers:
            wpd = (st != NONE) & ((fl & WP) != 0)
            st[:] = np.where(wpd, MARKER, NONE).astype(np.uint8)
            fl[:] = np.where(wpd, WP, 0).astype(np.uint8)
        else:
            st[:] = NONE
            fl[:] = 0
        t.ver[i:j] = 0
        if t.folio is not None:
            t.folio[i:j] = False
        if reclaim_pt and i == 0 and j == 512 and mm.profile.pt_reclaim and not t.st.any():
            mm.pt.free(k)  # CONFIG_PT_RECLAIM (6.14): MADV_DONTNEED frees the empty table
    c.tlb_flushes += 1
    if drop_cache and v.file is not None:
        a, b = v.page_index(start), v.page_index(end)
        v.file.ver[a:b] = 0
        v.file.resident[a:b] = False


def remove(mm: AddressSpace, v: Vma, lo: int, hi: int) -> None:
    """MADV_REMOVE (shmem_fallocate PUNCH_HOLE): the pages leave the file; every mapping of
    them in every process is zapped first (unmap_mapping_range)."""
    f = v.file
    assert f is not None
    a, b = v.page_index(lo), v.page_index(hi)
    for u in mm.world.mappers(f):
        for w in list(u.vmas):
            if w.file is not f:
                continue
            s = w.start + ((max(a, w.pgoff) - w.pgoff) << PAGE_SHIFT)
            e = w.start + ((min(b, w.page_index(w.end)) - w.pgoff) << PAGE_SHIFT)
            if s < e:
                zap(u, w, s, e)
    zap(mm, v, lo, hi, drop_cache=True)


def lazyfree(mm: AddressSpace, start: int, end: int) -> None:
    """MADV_FREE: clean anon pages become discardable; swap entries are freed."""
    for k, i, j, t in mm.tables(start, end):
        if t.huge and not (i == 0 and j == 512):
            mm.split_huge(k)
        st, fl = t.st[i:j], t.fl[i:j]
        pres = (st == PRESENT) & ((fl & ANON) != 0)
        fl[pres] = (fl[pres] & np.uint8(nbits(D))) | LAZY
        sw = st == SWAP
        st[sw] = NONE
        fl[sw] = 0
        t.ver[i:j][sw] = 0


def reclaim(mm: AddressSpace, v: Vma, lo: int, hi: int) -> None:
    """Memory pressure on [lo, hi) of ``v``: see the module docstring. An anonymous THP is
    split first, PMD and folio, also one whose PMD was split before (shrink_folio_list
    splits a partially mapped folio right away), and since 6.12 its zero-filled subpages
    are mapped to the shared zero page (b1f202060afe, "mm: remap unused subpages to shared
    zeropage when splitting isolated thp"; seen on 6.12.95 after a MADV_DONTNEED of part of
    a THP)."""
    ctx = v.uffd
    markers = ctx is not None and ctx.rules.markers
    c = mm.c
    for k, i, j, t in mm.tables(lo, hi):
        if t.huge:
            mm.split_huge(k)  # THPs are split to be swapped
        if t.folio is not None:
            _split_folio(mm, t)
        st, fl = t.st[i:j], t.fl[i:j]
        pres = (st == PRESENT) & ((fl & ZERO) == 0)
        if not v.shared:
            anon = pres & ((fl & ANON) != 0)
            lazy = anon & ((fl & LAZY) != 0) & ((fl & D) == 0)
            st[lazy] = NONE
            fl[lazy] = 0
            t.ver[i:j][lazy] = 0
            keep = anon & ~lazy
            if mm.profile.swap:
                st[keep] = SWAP  # the swap entry keeps soft-dirty and uffd-wp
                fl[keep] &= np.uint8(SD | WP | ANON)
                c.swap_outs += int(keep.sum())
            pres = pres & ((fl & ANON) == 0) & (st == PRESENT)
        # file / shmem pages: unmapped, content kept in the cache (or shmem swap)
        wpd = pres & ((fl & WP) != 0) if markers else np.zeros(j - i, bool)
        st[wpd] = MARKER  # try_to_unmap_one: pte_install_uffd_wp_if_needed
        fl[wpd] = WP
        rest = pres & ~wpd
        st[rest] = NONE
        fl[rest] = 0
        t.ver[i:j][pres] = 0
        if v.file is not None and v.kind == "shmem":
            a = v.page_index(max(lo, (k << PMD_SHIFT) + (i << PAGE_SHIFT)))
            v.file.resident[a:a + j - i] = False
    c.tlb_flushes += 1


def _split_folio(mm: AddressSpace, t: Table) -> None:
    """split_folio() of the anonymous large folio whose subpages ``t.folio`` marks: from
    6.12 each zero-filled one still mapped becomes the shared zero page (remap_page with
    RMP_USE_SHARED_ZEROPAGE, try_to_map_unused_to_zeropage), its uffd-wp bit kept."""
    assert t.folio is not None
    if mm.profile.thp_split_zeropage:
        zero = t.folio & (t.st == PRESENT) & ((t.fl & ANON) != 0) & (t.ver == 0)
        t.fl[zero] = ZERO | (t.fl[zero] & WP)
    t.folio = None


def move_entries(mm: AddressSpace, src: int, dst: int, length: int, keep_wp: bool) -> None:
    """move_page_tables() for one step (a PMD or a page) of an mremap."""
    prof = mm.profile
    for (ks, i, j), (kd, a, b) in zip(mm.chunks(src, src + length),
                                      mm.chunks(dst, dst + length), strict=True):
        ts = mm.pt.get(ks)
        if ts is None:
            continue
        if ts.huge and not (i == 0 and j == 512 and a == 0 and b == 512):
            mm.split_huge(ks)
        td = mm.pt.alloc(kd)
        if ts.huge:
            td.huge = True
        td.st[a:b] = ts.st[i:j]
        fl = ts.fl[i:j].copy()
        mask = (ts.st[i:j] == PRESENT) | (ts.st[i:j] == SWAP)
        # a whole PMD-aligned PTE table moves as one (move_normal_pmd, HAVE_MOVE_PMD on
        # x86-64) and keeps its PTEs as they are; only PTEs moved one by one (move_ptes ->
        # move_soft_dirty_pte) and huge PMDs (move_soft_dirty_pmd) are marked soft-dirty
        # (observed on Debian's 6.1)
        whole_table = i == 0 and j == 512 and a == 0 and b == 512 and not ts.huge
        if prof.soft_dirty and not whole_table:
            fl[mask] |= SD
        td.ver[a:b] = ts.ver[i:j]
        if prof.mremap_clears_uffd_wp and not keep_wp:
            fl &= np.uint8(nbits(WP))
            td.st[a:b][td.st[a:b] == MARKER] = NONE
        td.fl[a:b] = fl
        if ts.folio is not None:  # the subpages move, still one folio
            if td.folio is None:
                td.folio = np.zeros(len(td.st), bool)
            td.folio[a:b] = ts.folio[i:j]
            ts.folio[i:j] = False
        ts.st[i:j] = NONE
        ts.fl[i:j] = 0
        if ts.huge:
            mm.pt.free(ks)
