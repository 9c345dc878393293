"""The system calls that change mappings: mmap, munmap, mprotect, mremap, madvise (with
reclaim and collapse), and clear_refs' soft-dirty reset, on an :class:`AddressSpace`.

Kernel facts modelled here, with their source:

* new and expanded VMAs get VM_SOFTDIRTY (mm/mmap.c mmap_region: "New (or expanded) vma
  always get soft dirty status"); mprotect leaves a VMA whose flags do not change alone
  (mprotect_fixup);
* clear_refs 4 write-protects every present PTE, clears soft-dirty on PTEs, swap entries and
  VM_SOFTDIRTY on every VMA (fs/proc/task_mmu.c clear_soft_dirty);
* MADV_COLLAPSE collapses a PMD range of a VM_HUGEPAGE-eligible anonymous VMA into a THP
  (hpage_collapse_scan_pmd), but not over uffd-wp entries or none entries of an armed VMA.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _uapi as U
from . import zap
from .fault import anon_vma_prepare
from .pte import (
    ANON,
    MARKER,
    NONE,
    PAGE,
    PAGE_SHIFT,
    PMD,
    PMD_SHIFT,
    PRESENT,
    RW,
    SD,
    SWAP,
    WP,
    D,
    nbits,
)
from .space import ModelError
from .uffd import unmap_prep
from .vma import PROT, Vma

if TYPE_CHECKING:
    from .space import AddressSpace

_NOT_RW = np.uint8(nbits(RW))


def get_unmapped_area(mm: AddressSpace, length: int) -> int:
    """Top-down, like the kernel's default layout; 2 MiB aligned for big mappings."""
    align = PMD if length >= PMD else PAGE
    addr = (mm.next_free - length) // align * align
    while mm.vmas_in(addr, addr + length):
        addr = (min(v.start for v in mm.vmas_in(addr, addr + length)) - length)
        addr = addr // align * align
    mm.next_free = addr
    return addr


def mmap(mm: AddressSpace, addr: int | None, length: int, kind: str = "anon",
         shared: bool = False, prot: str = "rw", file: str | None = None,
         offset: int = 0) -> int:
    if addr is None:
        addr = get_unmapped_area(mm, length)
    mm.check_range(addr, length, "mmap")
    mm.c.mmap_lock_write += 1
    if mm.vmas_in(addr, addr + length):  # MAP_FIXED replaces
        munmap(mm, addr, length)
    fobj = None
    pgoff = addr >> PAGE_SHIFT
    if kind in ("shmem", "memfd"):
        name = file or f"shmem@{mm.pid}:{addr:#x}:{mm.world.clock}"
        fobj = mm.world.file(name, "shmem", (offset + length) >> PAGE_SHIFT)
        shared = shared or kind == "shmem"
        kind = "shmem"
        pgoff = offset >> PAGE_SHIFT
    elif kind == "file":
        name = file or f"file@{mm.pid}:{addr:#x}"
        fobj = mm.world.file(name, "file", (offset + length) >> PAGE_SHIFT)
        pgoff = offset >> PAGE_SHIFT
    v = Vma(addr, addr + length, PROT[prot], kind, shared, fobj, pgoff,
            softdirty=mm.profile.soft_dirty)
    mm.vma_list.insert(v)
    v = mm.vma_list.merge_around(v)
    if mm.profile.soft_dirty:
        v.softdirty = True  # mmap_region: "New (or expanded) vma always get soft dirty"
    mm.notify("map", addr, addr + length)
    return addr


def munmap(mm: AddressSpace, addr: int, length: int) -> None:
    mm.check_range(addr, length, "munmap")
    end = addr + length
    mm.c.mmap_lock_write += 1
    inside = mm.vma_list.split(addr, end)
    unmap_prep(inside, addr, end)
    for v in inside:
        zap.zap(mm, v, v.start, v.end, discard=False)
        mm.vma_list.remove(v)
    mm.free_unmapped_tables(addr, end)
    mm.notify("unmap", addr, end)


def mprotect(mm: AddressSpace, addr: int, length: int, prot: str) -> None:
    mm.check_range(addr, length, "mprotect")
    end = addr + length
    mm.require_mapped(addr, end, "mprotect")
    mm.c.mmap_lock_write += 1
    p = PROT[prot]

    def change(v: Vma) -> None:
        v.prot = p
    # mprotect_fixup: a VMA whose flags do not change is left alone ("if (newflags ==
    # oldflags) return 0", mm/mprotect.c): not split, its page tables (and THPs) untouched
    parts = [(max(v.start, addr), min(v.end, end)) for v in mm.vmas_in(addr, end)
             if v.prot != p]
    for lo, hi in parts:
        if not p & 2:
            for k, i, j, t in mm.tables(lo, hi):
                if t.huge and not (i == 0 and j == 512):
                    mm.split_huge(k)  # change_huge_pmd covers whole PMDs only
                t.fl[i:j] &= _NOT_RW
                mm.c.ptl += 1
            mm.c.tlb_flushes += 1
        mm.vma_list.modify(lo, hi, change)


def mremap(mm: AddressSpace, addr: int, length: int, new_len: int,
           new_addr: int | None = None) -> int:
    mm.check_range(addr, length, "mremap")
    mm.check_range(addr, new_len, "mremap")
    end = addr + length
    mm.c.mmap_lock_write += 1
    vs = mm.vma_list.split(addr, end)
    if len(vs) != 1 or vs[0].start != addr or vs[0].end != end:
        raise ModelError("mremap: the range must be one VMA", op="mremap", start=addr,
                         end=end, errno=14)
    v = vs[0]
    if new_len < length and new_addr is None:
        munmap(mm, addr + new_len, length - new_len)
        return addr
    if new_addr is None and new_len > length and not mm.vmas_in(end, addr + new_len):
        # grow in place (vma_merge_extend / vma_expand): an expanded region is soft-dirty
        v.end = addr + new_len
        if mm.profile.soft_dirty:
            v.softdirty = True
        mm.vma_list.merge_around(v)
        mm.notify("map", end, addr + new_len)
        return addr
    return _mremap_move(mm, v, addr, end, new_len, new_addr)


def _mremap_move(mm: AddressSpace, v: Vma, addr: int, end: int, new_len: int,
                 new_addr: int | None) -> int:
    length = end - addr
    dst = new_addr if new_addr is not None else get_unmapped_area(mm, new_len)
    if mm.vmas_in(dst, dst + new_len):
        munmap(mm, dst, new_len)
    ctx = v.uffd
    # mremap_userfaultfd_prep: the uffd context stays only with UFFD_FEATURE_EVENT_REMAP
    # (which then sends UFFD_EVENT_REMAP); without it, it is reset
    remap = ctx is not None and ctx.has(U.UffdFeature.EVENT_REMAP)
    nv = v.clone(dst, dst + new_len, pgoff=v.pgoff, uffd=ctx if remap else None)
    moved = min(length, new_len)
    step = PMD if (addr | dst) % PMD == 0 else PAGE
    for off in range(0, moved, step):
        zap.move_entries(mm, addr + off, dst + off, min(step, moved - off), remap)
    mm.vma_list.remove(v)
    mm.vma_list.insert(nv)
    mm.free_unmapped_tables(addr, end)
    if new_len > length and mm.profile.soft_dirty:
        nv.softdirty = True
    mm.vma_list.merge_around(nv)
    if remap and ctx is not None:
        ctx.event(U.UffdEvent.REMAP, addr, dst, length)
    if ctx is not None and ctx.has(U.UffdFeature.EVENT_UNMAP):
        # the move unmaps the old range (do_vmi_munmap -> userfaultfd_unmap_prep): an
        # UNMAP after the REMAP (observed on 6.18)
        ctx.event(U.UffdEvent.UNMAP, addr, end)
    mm.notify("unmap", addr, end)
    mm.notify("map", dst, dst + new_len)
    return dst


def madvise(mm: AddressSpace, addr: int, length: int, advice: str) -> None:
    mm.check_range(addr, length, "madvise")
    end = addr + length
    mm.require_mapped(addr, end, "madvise")
    if advice in ("HUGEPAGE", "NOHUGEPAGE"):
        mm.c.mmap_lock_write += 1
        val = 1 if advice == "HUGEPAGE" else -1

        def change(v: Vma) -> None:
            v.hugepage = val
        mm.vma_list.modify(addr, end, change)
        return
    mm.c.mmap_lock_read += 1
    if advice == "COLLAPSE":
        collapse(mm, addr, end)
        return
    for v in mm.vmas_in(addr, end):
        lo, hi = max(v.start, addr), min(v.end, end)
        if advice in ("DONTNEED", "REMOVE"):
            if advice == "REMOVE" and not v.shared:
                raise ModelError("MADV_REMOVE needs a shared mapping", op="madvise",
                                 start=lo, end=hi, errno=22)
            # userfaultfd_remove(): UFFD_EVENT_REMOVE before the zap
            if v.uffd is not None and v.uffd.has(U.UffdFeature.EVENT_REMOVE):
                v.uffd.event(U.UffdEvent.REMOVE, lo, hi)
            if advice == "DONTNEED":
                zap.zap(mm, v, lo, hi, reclaim_pt=True)
            else:
                zap.remove(mm, v, lo, hi)
            mm.notify("zap", lo, hi)
        elif advice == "FREE":
            if v.anonymous:
                zap.lazyfree(mm, lo, hi)
                mm.notify("zap", lo, hi)
        elif advice == "PAGEOUT":
            zap.reclaim(mm, v, lo, hi)
            mm.notify("zap", lo, hi)


def reclaim(mm: AddressSpace, addr: int, length: int) -> None:
    """Memory pressure on [addr, addr+length): anon pages to swap (lazy-free clean ones
    discarded), file/shmem PTEs unmapped with the page kept in the cache."""
    end = addr + length
    for v in mm.vmas_in(addr, end):
        zap.reclaim(mm, v, max(v.start, addr), min(v.end, end))
    mm.notify("zap", addr, end)


def collapse(mm: AddressSpace, start: int, end: int) -> None:
    """MADV_COLLAPSE (6.1) / khugepaged: each whole PMD of [start, end) that is mapped by
    PTEs of one anonymous VMA becomes a THP, unless a PTE is uffd-wp or a marker
    (SCAN_PTE_UFFD_WP) or a none entry is in an armed VMA (SCAN_EXCEED_NONE_PTE)."""
    for k in range(-(-start >> PMD_SHIFT), end >> PMD_SHIFT):
        base = k << PMD_SHIFT
        v = mm.find(base)
        t = mm.pt.get(k)
        if v is not None and v.shared and v.kind == "shmem" and \
                v.start <= base and base + PMD <= v.end:
            _collapse_shmem(mm, v, k)
            continue
        if v is None or not v.anonymous or t is None or t.huge or \
                not (v.start <= base and base + PMD <= v.end) or \
                mm.profile.thp == "never" or v.hugepage < 0:
            continue
        if (t.st == SWAP).any() or (t.st == MARKER).any() or ((t.fl & WP) != 0).any():
            continue
        if v.uffd is not None and (t.st == NONE).any():
            continue
        pres = t.st == PRESENT
        if not pres.any():
            continue
        dirty = ((t.fl & D) != 0).any()
        # the collapsed THP: new anonymous folio, content copied (none -> zero)
        t.ver[~pres] = 0
        t.ver[pres & ((t.fl & ANON) == 0)] = 0
        t.st[:] = PRESENT
        t.fl[:] = ANON | RW | SD | (D if dirty else 0)
        t.huge = True
        t.folio = None
        anon_vma_prepare(mm, v)
        mm.c.thp_collapses += 1
        mm.c.tlb_flushes += 1


def _collapse_shmem(mm: AddressSpace, v: Vma, k: int) -> None:
    """collapse_file(): the block becomes one huge folio in the page cache; the small folios
    it replaces are unmapped from every mapping (try_to_unmap: a uffd-wp PTE becomes a
    marker), the content kept (observed on 6.18 for shmem and memfd, also with
    shmem_enabled=never: MADV_COLLAPSE ignores the sysfs setting)."""
    f = v.file
    assert f is not None
    idx = v.page_index(k << PMD_SHIFT)
    if idx % 512 or (idx // 512 < len(f.pmd_folio) and f.pmd_folio[idx // 512]):
        return  # not a PMD-aligned block of the file, or one huge folio already
    for u in mm.world.mappers(f):
        for w in u.vmas:
            if w.file is not f or not (w.pgoff <= idx < w.page_index(w.end)):
                continue
            a = w.start + ((idx - w.pgoff) << PAGE_SHIFT)
            hi = min(w.end, a + PMD)
            zap.zap(u, w, a, hi)
    blk = idx // 512
    f.ensure((blk + 1) * 512)
    f.resident[blk * 512:(blk + 1) * 512] = True
    f.pmd_folio[blk] = True
    mm.c.thp_collapses += 1


#: what clear_refs 4 keeps of an entry's bits, by its state: a present PTE loses soft-dirty
#: and write access (clear_soft_dirty), a swap entry soft-dirty (pte_swp_clear_soft_dirty)
_CLEAR_SD = np.full(4, 0xFF, np.uint8)
_CLEAR_SD[PRESENT] = nbits(RW, SD)
_CLEAR_SD[SWAP] = nbits(SD)


def clear_soft_dirty(mm: AddressSpace) -> None:
    """clear_refs 4 over the whole address space."""
    mm.c.mmap_lock_read += 1
    for v in mm.vmas:
        v.softdirty = False
    for t in mm.pt.values():
        t.fl &= _CLEAR_SD[t.st]
        mm.c.ptl += 1
    mm.c.tlb_flushes += 1


__all__ = ["clear_soft_dirty", "collapse", "get_unmapped_area", "madvise", "mmap", "mprotect",
           "mremap", "munmap", "reclaim"]
