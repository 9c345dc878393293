"""The model's state: address spaces (VMAs, page tables), page caches, contents as versions.

Vectorised: a page-table page is three numpy arrays of 512 entries (state, flag bits, content
version); a PMD-mapped THP is the same object with ``huge`` set (its flags uniform). A page
cache is two arrays (content version, resident) per file. Nothing is a Python object per page.

Kernel facts modelled here, with their source:

* a write to a present PTE that is not writable faults; the fault sets dirty and soft-dirty
  (x86 ``pte_mkdirty`` sets ``_PAGE_SOFT_DIRTY`` too) and makes the PTE writable;
* clear_refs 4 write-protects every present PTE, clears soft-dirty on PTEs, swap entries and
  VM_SOFTDIRTY on every VMA (fs/proc/task_mmu.c clear_soft_dirty);
* new and expanded VMAs get VM_SOFTDIRTY (mm/mmap.c mmap_region); VM_SOFTDIRTY is ignored when
  deciding merges (VM_IGNORE_MERGE) and, before the sticky fix, the merged VMA took the flags of
  the VMA being changed;
* uffd-wp: present and swap entries carry the bit; none entries get a PTE marker when
  ``userfaultfd_wp_use_markers`` (file/shmem VMAs, anon with WP_UNPOPULATED) (mm/mprotect.c);
  markers need a page-table page; a zap keeps the state as a marker on non-anon VMAs
  (zap_install_uffd_wp_if_needed) and drops everything on anon VMAs;
* async mode resolves a write fault on a uffd-wp entry by clearing the bit; a write to a
  uffd-wp anon PMD THP splits it first (wp_huge_pmd);
* fork without UFFD_FEATURE_EVENT_FORK: the child's VMAs lose the uffd context and the copied
  entries lose the bit (dup_userfaultfd, copy_present_pte); anon PTEs of both become
  read-only (COW); shared mappings are not copied (lazy fault in the child);
* mremap moves entries, sets soft-dirty on moved present/swap entries (move_soft_dirty_pte),
  resets the uffd context of the moved VMA without EVENT_REMAP and, since 6.13 (and 6.12.y),
  clears the moved uffd-wp bits and markers (CVE-2025-21696);
* shmem/file reclaim unmaps the PTE (a marker when it was uffd-wp); the page stays in the page
  cache (or shmem swap); PTE soft-dirty is lost (pagemap.rst).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import errors
from .profiles import Profile

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
PTRS = 512  # PTRS_PER_PTE on x86-64 with 4 KiB pages
PMD_SHIFT = 21
PMD = 1 << PMD_SHIFT
FAULT_AROUND = 16  # fault_around_bytes (64 KiB) / PAGE_SIZE, mm/memory.c

# entry states
NONE, PRESENT, SWAP, MARKER = 0, 1, 2, 3
# entry flag bits
W, D, SD, WP, ZERO, ANON, LAZY = 1, 2, 4, 8, 16, 32, 64
_NOT_W = np.uint8(0xFF & ~W)
_NOT_SD = np.uint8(0xFF & ~SD)
_NOT_WP = np.uint8(0xFF & ~WP)

PROT = {"none": 0, "r": 1, "rw": 3}


class ModelError(errors.WriteWatchError):
    """An operation the modelled kernel refuses or a program would crash on (SIGSEGV)."""

    __module__ = "writewatch.model"


class Table:
    """One page-table page (512 PTEs), or a PMD-mapped THP when ``huge``."""

    __slots__ = ("fl", "huge", "st", "ver")

    def __init__(self) -> None:
        self.st = np.zeros(PTRS, np.uint8)
        self.fl = np.zeros(PTRS, np.uint8)
        self.ver = np.zeros(PTRS, np.int64)
        self.huge = False

    def copy(self) -> Table:
        t = Table()
        t.st[:] = self.st
        t.fl[:] = self.fl
        t.ver[:] = self.ver
        t.huge = self.huge
        return t


class File:
    """A page cache: shmem (anonymous shared, memfd) or a regular file."""

    def __init__(self, name: str, kind: str, npages: int, world: World) -> None:
        self.name = name
        self.kind = kind
        self.ver = np.zeros(npages, np.int64)
        self.resident = np.zeros(npages, bool)
        #: per PMD-sized block of the file: cached as one large folio
        self.pmd_folio = np.zeros(-(-npages // PTRS), bool)
        if kind == "file":  # a regular file has content of its own
            self.ver[:] = world.new_versions(npages)
            self.resident[:] = False

    def fault_in(self, idx: int, ra_pages: int, huge: bool = False) -> None:
        """filemap_fault on a page-cache miss of a regular file: the mmap read-around reads
        ``ra_pages`` pages centred on it (do_sync_mmap_readahead: start = index -
        ra_pages / 2), clipped to the file; in a VM_HUGEPAGE mapping it reads the aligned
        PMD-sized block as one large folio (start = ALIGN_DOWN(index, HPAGE_PMD_NR))."""
        if self.kind == "file" and idx < len(self.resident) and not self.resident[idx]:
            if huge:
                lo = idx & ~(PTRS - 1)
                self.resident[lo:lo + PTRS] = True
                self.pmd_folio[lo // PTRS] = True
            else:
                lo = max(0, idx - ra_pages // 2)
                self.resident[lo:lo + max(ra_pages, 1)] = True
        elif idx < len(self.resident):
            self.resident[idx] = True

    def ensure(self, npages: int) -> None:
        if npages > len(self.ver):
            extra = npages - len(self.ver)
            self.ver = np.concatenate([self.ver, np.zeros(extra, np.int64)])
            self.resident = np.concatenate([self.resident, np.zeros(extra, bool)])
            nb = -(-npages // PTRS)
            self.pmd_folio = np.concatenate([self.pmd_folio,
                                             np.zeros(nb - len(self.pmd_folio), bool)])


class World:
    """What address spaces share: the content-version clock and the files."""

    def __init__(self) -> None:
        self.clock = 1  # version 0 is the zero page
        self.files: dict[str, File] = {}
        self._anon_vma = 0

    def new_version(self) -> int:
        self.clock += 1
        return self.clock

    def new_versions(self, n: int) -> np.ndarray:
        v = np.arange(self.clock + 1, self.clock + 1 + n, dtype=np.int64)
        self.clock += n
        return v

    def new_anon_vma(self) -> int:
        self._anon_vma += 1
        return self._anon_vma

    def file(self, name: str, kind: str, npages: int) -> File:
        f = self.files.get(name)
        if f is None:
            f = self.files[name] = File(name, kind, npages, self)
        f.ensure(npages)
        return f


@dataclass(eq=False)
class Vma:
    start: int
    end: int
    prot: int
    kind: str  #: "anon", "shmem", "file"
    shared: bool
    file: File | None
    pgoff: int  #: page offset of ``start`` in the file (anon: start >> PAGE_SHIFT at mmap)
    softdirty: bool = True  #: VM_SOFTDIRTY
    uffd: Any = None  #: the registered model userfaultfd context (VM_UFFD_WP when set)
    hugepage: int = 0  #: 1 MADV_HUGEPAGE (VM_HUGEPAGE), -1 MADV_NOHUGEPAGE, 0 neither
    anon_vma: int = 0
    wp_start: bool = False  #: design "vma-flag": protection starts right away

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous memory (no vm_file)."""
        return self.kind == "anon" and not self.shared

    def merge_key(self) -> tuple[Any, ...]:
        # VM_SOFTDIRTY is in VM_IGNORE_MERGE (include/linux/mm.h)
        return (self.prot, self.kind, self.shared, id(self.file), id(self.uffd), self.hugepage,
                self.wp_start)

    def split_at(self, addr: int) -> Vma:
        """Cut at ``addr``; self keeps the low part, the high part is returned."""
        hi = Vma(addr, self.end, self.prot, self.kind, self.shared, self.file,
                 self.pgoff + ((addr - self.start) >> PAGE_SHIFT), self.softdirty, self.uffd,
                 self.hugepage, self.anon_vma, self.wp_start)
        self.end = addr
        return hi

    def page_index(self, addr: int) -> int:
        return self.pgoff + ((addr - self.start) >> PAGE_SHIFT)


@dataclass
class Counters:
    faults: int = 0  #: every page fault
    tracking_faults: int = 0  #: faults caused by tracking (uffd-wp bit/marker, soft-dirty)
    pt_pages: int = 0  #: page-table pages now (PTE + PMD + PUD levels)
    pt_peak: int = 0
    pt_allocated: int = 0  #: PTE-table pages ever allocated
    thp_splits: int = 0


#: hook for tracking designs: called on a write fault on a tracked entry before the write
#: (``when="before"``) or after the page was mapped (``"after"``): fn(mm, addr, tids, when)
FaultHook = Callable[["Mm", int, tuple[int, ...], str], None]


class Mm:
    """One address space (a process's mm_struct)."""

    def __init__(self, profile: Profile, world: World | None = None, pid: int = 1) -> None:
        self.profile = profile
        self.world = world or World()
        self.pid = pid
        self.vmas: list[Vma] = []
        self._starts: list[int] = []
        self.pt: dict[int, Table] = {}
        self._pmd_ref: dict[int, int] = {}
        self._pud_ref: dict[int, int] = {}
        self.c = Counters()
        self.children: list[Mm] = []
        self.next_free = 0x7F0000000000
        #: pages touched since the observer last looked (page numbers): ground truth helper
        self.observer: Callable[[str, int, int], None] | None = None

    # ---------------------------------------------------------------------------- VMAs
    def _reindex(self) -> None:
        self.vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self.vmas]

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            v = self.vmas[i]
            if addr < v.end:
                return v
        return None

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for v in self.vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def _split(self, start: int, end: int) -> list[Vma]:
        """Split VMAs so that ``start`` and ``end`` are VMA boundaries; the VMAs inside."""
        for addr in (start, end):
            v = self.find(addr)
            if v is not None and v.start < addr:
                if addr % PMD:
                    # __split_vma -> vma_adjust_trans_huge: "Get rid of huge pages ...
                    # straddling the split boundary" (mm/vma.c)
                    self.split_huge(addr >> PMD_SHIFT)
                self.vmas.append(v.split_at(addr))
                self._reindex()
        return self.vmas_in(start, end)

    def _merge_around(self, vma: Vma, sticky_or_primary: bool = True) -> Vma:
        """Merge ``vma`` with its neighbours when the kernel would (is_mergeable_vma +
        anon_vma compatibility + contiguous pgoff). ``vma`` is the one being changed: before
        the sticky fix its VM_SOFTDIRTY wins."""
        i = self.vmas.index(vma)
        for j in (i + 1, i):  # next into vma, then vma into prev
            if j <= 0 or j >= len(self.vmas):
                continue
            a, b = self.vmas[j - 1], self.vmas[j]
            if (a.end == b.start and a.merge_key() == b.merge_key()
                    and a.pgoff + ((a.end - a.start) >> PAGE_SHIFT) == b.pgoff
                    and (a.anon_vma == 0 or b.anon_vma == 0 or a.anon_vma == b.anon_vma)):
                primary = vma
                if self.profile.softdirty_sticky_merge:
                    sd = a.softdirty or b.softdirty
                else:
                    sd = primary.softdirty
                a.end = b.end
                a.softdirty = sd
                a.anon_vma = a.anon_vma or b.anon_vma
                self.vmas.pop(j)
                self._starts.pop(j)
                vma = a
        return vma

    def modify(self, start: int, end: int, fn: Callable[[Vma], None]) -> None:
        """vma_modify(): split at the range, change each VMA, merge."""
        inside = self._split(start, end)
        for v in inside:
            fn(v)
        for v in inside:
            if v in self.vmas:
                self._merge_around(v)

    # ---------------------------------------------------------------------- page tables
    def _alloc(self, k: int) -> Table:
        t = self.pt.get(k)
        if t is None:
            t = self.pt[k] = Table()
            self.c.pt_allocated += 1
            self.c.pt_pages += 1
            pm = k >> 9
            if pm not in self._pmd_ref:
                self._pmd_ref[pm] = 0
                self.c.pt_pages += 1
                pu = pm >> 9
                if pu not in self._pud_ref:
                    self._pud_ref[pu] = 0
                    self.c.pt_pages += 1
                self._pud_ref[pu] += 1
            self._pmd_ref[pm] += 1
            if self.c.pt_pages > self.c.pt_peak:
                self.c.pt_peak = self.c.pt_pages
        return t

    def _free(self, k: int) -> None:
        if self.pt.pop(k, None) is None:
            return
        self.c.pt_pages -= 1
        pm = k >> 9
        self._pmd_ref[pm] -= 1
        if not self._pmd_ref[pm]:
            del self._pmd_ref[pm]
            self.c.pt_pages -= 1
            pu = pm >> 9
            self._pud_ref[pu] -= 1
            if not self._pud_ref[pu]:
                del self._pud_ref[pu]
                self.c.pt_pages -= 1

    def chunks(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(table key, first index, end index) of each page-table page the range touches."""
        p, pe = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        while p < pe:
            k = p >> 9
            i = p & 511
            j = min(512, i + (pe - p))
            yield k, i, j
            p += j - i

    def split_huge(self, k: int) -> None:
        t = self.pt.get(k)
        if t is not None and t.huge:
            # __split_huge_pmd_locked copies the PMD bits to all 512 PTEs; since 6.3 a dirty
            # PMD makes them pte_mkdirty, which sets _PAGE_SOFT_DIRTY too on x86
            t.huge = False
            if self.profile.thp_split_mkdirty:
                t.fl[(t.fl & D) != 0] |= np.uint8(SD)
            self.c.thp_splits += 1

    def uses_markers(self, v: Vma) -> bool:
        """userfaultfd_wp_use_markers(): registered WP, and non-anon or WP_UNPOPULATED."""
        ctx = v.uffd
        if ctx is None or ctx.design != "kernel":
            return False
        return not v.anonymous or ctx.unpopulated

    def _free_unmapped_tables(self, start: int, end: int) -> None:
        """free_pgtables(): PTE tables no VMA covers any more."""
        lo, hi = start >> PMD_SHIFT, (end - 1) >> PMD_SHIFT
        for k in range(lo, hi + 1):
            if k in self.pt and not self.vmas_in(k << PMD_SHIFT, (k + 1) << PMD_SHIFT):
                self._free(k)

    def _notify(self, what: str, start: int, end: int) -> None:
        if self.observer is not None:
            self.observer(what, start, end)

    # ------------------------------------------------------------------------- mmap & co
    def _check_range(self, addr: int, length: int, op: str) -> None:
        if addr % PAGE or length <= 0 or length % PAGE:
            raise ModelError(f"{op}: unaligned or empty range", op=op, start=addr,
                             end=addr + length, errno=22)

    def get_unmapped_area(self, length: int) -> int:
        """Top-down, like the kernel's default layout; 2 MiB aligned for big mappings."""
        align = PMD if length >= PMD else PAGE
        addr = (self.next_free - length) // align * align
        while self.vmas_in(addr, addr + length):
            addr = (min(v.start for v in self.vmas_in(addr, addr + length)) - length)
            addr = addr // align * align
        self.next_free = addr
        return addr

    def mmap(self, addr: int | None, length: int, kind: str = "anon", shared: bool = False,
             prot: str = "rw", file: str | None = None, offset: int = 0) -> int:
        if addr is None:
            addr = self.get_unmapped_area(length)
        self._check_range(addr, length, "mmap")
        if self.vmas_in(addr, addr + length):  # MAP_FIXED replaces
            self.munmap(addr, length)
        fobj = None
        pgoff = addr >> PAGE_SHIFT
        if kind in ("shmem", "memfd"):
            name = file or f"shmem@{self.pid}:{addr:#x}:{self.world.clock}"
            fobj = self.world.file(name, "shmem", (offset + length) >> PAGE_SHIFT)
            shared = shared or kind == "shmem"
            kind = "shmem"
            pgoff = offset >> PAGE_SHIFT
        elif kind == "file":
            name = file or f"file@{self.pid}:{addr:#x}"
            fobj = self.world.file(name, "file", (offset + length) >> PAGE_SHIFT)
            pgoff = offset >> PAGE_SHIFT
        v = Vma(addr, addr + length, PROT[prot], kind, shared, fobj, pgoff,
                softdirty=self.profile.soft_dirty)
        self.vmas.append(v)
        self._reindex()
        v = self._merge_around(v)
        if self.profile.soft_dirty:
            v.softdirty = True  # mmap_region: "New (or expanded) vma always get soft dirty"
        self._notify("map", addr, addr + length)
        return addr

    def _zap(self, v: Vma, start: int, end: int, keep_markers: bool = True,
             drop_cache: bool = False, reclaim_pt: bool = False) -> None:
        """Unmap the entries of [start, end) in ``v`` (zap_pte_range)."""
        markers = keep_markers and not v.anonymous and v.uffd is not None and \
            self.uses_markers(v)
        # the fault-time proposal: "discard installs a marker" (written for anon: the content
        # became zero; the uffd-wp state kept for file/shmem, whose content stays)
        ft = keep_markers and v.uffd is not None and v.uffd.design == "faulttime" and \
            v.uffd.armed
        for k, i, j in self.chunks(start, end):
            t = self.pt.get(k)
            if t is None:
                continue
            if t.huge:
                if i == 0 and j == 512 and not markers and not ft:
                    self._free(k)  # zap_huge_pmd; the deposited table goes too
                    continue
                self.split_huge(k)
            if ft:
                live = t.st[i:j] != NONE
                wp = (t.fl[i:j] & WP) if not v.anonymous else np.zeros(j - i, np.uint8)
                t.st[i:j][live] = MARKER
                t.fl[i:j] = np.where(live, wp, 0).astype(np.uint8)
            elif markers:
                # zap_install_uffd_wp_if_needed -> pte_install_uffd_wp_if_needed: an entry
                # with the uffd-wp bit (present, swap or marker) becomes a marker
                wpd = (t.st[i:j] != NONE) & ((t.fl[i:j] & WP) != 0)
                t.st[i:j] = np.where(wpd, MARKER, NONE).astype(np.uint8)
                t.fl[i:j] = np.where(wpd, WP, 0).astype(np.uint8)
            else:
                t.st[i:j] = NONE
                t.fl[i:j] = 0
            t.ver[i:j] = 0
            if reclaim_pt and i == 0 and j == 512 and self.profile.pt_reclaim and \
                    not t.st.any():
                self._free(k)  # CONFIG_PT_RECLAIM (6.14): MADV_DONTNEED frees the empty table
        if drop_cache and v.file is not None:
            a, b = v.page_index(start), v.page_index(end)
            v.file.ver[a:b] = 0
            v.file.resident[a:b] = False

    def munmap(self, addr: int, length: int) -> None:
        self._check_range(addr, length, "munmap")
        end = addr + length
        for v in self._split(addr, end):
            self._zap(v, v.start, v.end, keep_markers=False)
            self.vmas.remove(v)
        self._reindex()
        self._free_unmapped_tables(addr, end)
        self._notify("unmap", addr, end)

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        self._check_range(addr, length, "mprotect")
        end = addr + length
        self._require_mapped(addr, end, "mprotect")
        p = PROT[prot]

        def change(v: Vma) -> None:
            v.prot = p
        # mprotect_fixup: a VMA whose flags do not change is left alone ("if (newflags ==
        # oldflags) return 0", mm/mprotect.c): not split, its page tables (and THPs) untouched
        parts = [(max(v.start, addr), min(v.end, end)) for v in self.vmas_in(addr, end)
                 if v.prot != p]
        for lo, hi in parts:
            if not p & 2:
                for k, i, j in self.chunks(lo, hi):
                    t = self.pt.get(k)
                    if t is not None:
                        if t.huge and not (i == 0 and j == 512):
                            self.split_huge(k)  # change_huge_pmd covers whole PMDs only
                        t.fl[i:j] &= _NOT_W
            self.modify(lo, hi, change)

    def _require_mapped(self, start: int, end: int, op: str) -> None:
        pos = start
        for v in self.vmas_in(start, end):
            if v.start > pos:
                break
            pos = v.end
        if pos < end:
            raise ModelError(f"{op}: {pos:#x} is not mapped", op=op, start=start, end=end,
                             errno=12)

    def mremap(self, addr: int, length: int, new_len: int, new_addr: int | None = None) -> int:
        self._check_range(addr, length, "mremap")
        self._check_range(addr, new_len, "mremap")
        end = addr + length
        vs = self._split(addr, end)
        if len(vs) != 1 or vs[0].start != addr or vs[0].end != end:
            raise ModelError("mremap: the range must be one VMA", op="mremap", start=addr,
                             end=end, errno=14)
        v = vs[0]
        if new_len < length and new_addr is None:
            self.munmap(addr + new_len, length - new_len)
            return addr
        if new_addr is None and new_len > length and \
                not self.vmas_in(end, addr + new_len):
            # grow in place (vma_merge_extend / vma_expand): an expanded region is soft-dirty
            v.end = addr + new_len
            if self.profile.soft_dirty:
                v.softdirty = True
            self._merge_around(v)
            self._notify("map", end, addr + new_len)
            return addr
        dst = new_addr if new_addr is not None else self.get_unmapped_area(new_len)
        if self.vmas_in(dst, dst + new_len):
            self.munmap(dst, new_len)
        moved = min(length, new_len)
        nv = Vma(dst, dst + new_len, v.prot, v.kind, v.shared, v.file, v.pgoff, v.softdirty,
                 None, v.hugepage, v.anon_vma, v.wp_start)
        # mremap_userfaultfd_prep: without UFFD_FEATURE_EVENT_REMAP the uffd context is reset
        # move_page_tables: entries move with their bits; moved present/swap get soft-dirty
        for off in range(0, moved, PMD if (addr | dst) % PMD == 0 else PAGE):
            step = min(PMD if (addr | dst) % PMD == 0 else PAGE, moved - off)
            self._move_entries(addr + off, dst + off, step)
        self.vmas.remove(v)
        self.vmas.append(nv)
        self._reindex()
        self._free_unmapped_tables(addr, end)
        if new_len > length and self.profile.soft_dirty:
            nv.softdirty = True
        self._merge_around(nv)
        self._notify("unmap", addr, end)
        self._notify("map", dst, dst + new_len)
        return dst

    def _move_entries(self, src: int, dst: int, length: int) -> None:
        for (ks, i, j), (kd, a, b) in zip(self.chunks(src, src + length),
                                          self.chunks(dst, dst + length), strict=True):
            ts = self.pt.get(ks)
            if ts is None:
                continue
            if ts.huge and not (i == 0 and j == 512 and a == 0 and b == 512):
                self.split_huge(ks)
            td = self._alloc(kd)
            if ts.huge:
                td.huge = True
            td.st[a:b] = ts.st[i:j]
            fl = ts.fl[i:j].copy()
            mask = (ts.st[i:j] == PRESENT) | (ts.st[i:j] == SWAP)
            # mm/mremap.c move_page_tables: a whole PMD-aligned PTE table moves as one
            # (move_normal_pmd, HAVE_MOVE_PMD on x86-64) and keeps its PTEs as they are; only
            # PTEs moved one by one (move_ptes -> move_soft_dirty_pte) and huge PMDs
            # (move_soft_dirty_pmd) are marked soft-dirty (observed on Debian's 6.1)
            whole_table = i == 0 and j == 512 and a == 0 and b == 512 and not ts.huge
            if self.profile.soft_dirty and not whole_table:
                fl[mask] |= SD
            td.ver[a:b] = ts.ver[i:j]
            if self.profile.mremap_clears_uffd_wp:
                fl &= _NOT_WP
                td.st[a:b][td.st[a:b] == MARKER] = NONE
            td.fl[a:b] = fl
            ts.st[i:j] = NONE
            ts.fl[i:j] = 0
            if ts.huge:
                self._free(ks)

    def madvise(self, addr: int, length: int, advice: str) -> None:
        self._check_range(addr, length, "madvise")
        end = addr + length
        self._require_mapped(addr, end, "madvise")
        if advice in ("HUGEPAGE", "NOHUGEPAGE"):
            val = 1 if advice == "HUGEPAGE" else -1

            def change(v: Vma) -> None:
                v.hugepage = val
            self.modify(addr, end, change)
            return
        for v in self.vmas_in(addr, end):
            lo, hi = max(v.start, addr), min(v.end, end)
            if advice == "DONTNEED":
                self._zap(v, lo, hi, reclaim_pt=True)
                self._notify("zap", lo, hi)
            elif advice == "REMOVE":
                if not v.shared:
                    raise ModelError("MADV_REMOVE needs a shared mapping", op="madvise",
                                     start=lo, end=hi, errno=22)
                for u in self._mappers(v.file):
                    for w in u.vmas:
                        if w.file is v.file:
                            a = max(w.start, w.start + (v.page_index(lo) - w.pgoff) * PAGE)
                            b = min(w.end, w.start + (v.page_index(hi) - w.pgoff) * PAGE)
                            if a < b:
                                u._zap(w, a, b)
                self._zap(v, lo, hi, drop_cache=True)
                self._notify("zap", lo, hi)
            elif advice == "FREE":
                if v.anonymous:
                    self._lazyfree(lo, hi)
            elif advice == "PAGEOUT":
                self.reclaim(lo, hi - lo)

    def _mappers(self, f: File | None) -> list[Mm]:
        return [m for m in [self, *self.children] if f is not None]

    def _lazyfree(self, start: int, end: int) -> None:
        """MADV_FREE: clean anon pages become discardable; swap entries are freed."""
        for k, i, j in self.chunks(start, end):
            t = self.pt.get(k)
            if t is None:
                continue
            if t.huge and not (i == 0 and j == 512):
                self.split_huge(k)
            st, fl = t.st[i:j], t.fl[i:j]
            pres = (st == PRESENT) & ((fl & ANON) != 0)
            fl[pres] = (fl[pres] & ~np.uint8(D)) | LAZY
            sw = st == SWAP
            st[sw] = NONE
            fl[sw] = 0
            t.ver[i:j][sw] = 0
        self._notify("zap", start, end)

    def reclaim(self, addr: int, length: int) -> None:
        """Memory pressure on [addr, addr+length): anon pages to swap (lazyfree clean ones
        discarded), file/shmem PTEs unmapped with the page kept in the cache."""
        end = addr + length
        for v in self.vmas_in(addr, end):
            lo, hi = max(v.start, addr), min(v.end, end)
            for k, i, j in self.chunks(lo, hi):
                t = self.pt.get(k)
                if t is None:
                    continue
                if t.huge:
                    self.split_huge(k)  # THPs are split to be swapped
                st, fl = t.st[i:j], t.fl[i:j]
                pres = (st == PRESENT) & ((fl & ZERO) == 0)
                if v.anonymous or not v.shared:
                    anon = pres & ((fl & ANON) != 0)
                    lazy = anon & ((fl & LAZY) != 0) & ((fl & D) == 0)
                    st[lazy] = NONE
                    fl[lazy] = 0
                    t.ver[i:j][lazy] = 0
                    keep = anon & ~lazy
                    st[keep] = SWAP  # the swap entry keeps soft-dirty and uffd-wp
                    fl[keep] &= np.uint8(SD | WP | ANON)
                    pres = pres & ((fl & ANON) == 0) & (st == PRESENT)
                # file / shmem pages: unmapped, content kept in the cache (or shmem swap)
                wpd = pres & ((fl & WP) != 0)
                if v.uffd is not None and v.uffd.design == "kernel":
                    st[wpd] = MARKER  # try_to_unmap_one: pte_install_uffd_wp_if_needed
                    fl[wpd] = WP
                else:
                    # the designs without markers (the fault-time proposal installs them on
                    # discard only): a reclaimed PTE becomes pte_none, its state is gone
                    wpd[:] = False
                rest = pres & ~wpd
                st[rest] = NONE
                fl[rest] = 0
                t.ver[i:j][pres] = 0
                if v.file is not None and v.kind == "shmem":
                    a = v.page_index(lo)
                    v.file.resident[a:a + ((hi - lo) >> PAGE_SHIFT)] = False

    # --------------------------------------------------------------------- faults, access
    def _thp_ok(self, v: Vma, addr: int) -> bool:
        thp = self.profile.thp
        if not v.anonymous or thp == "never" or v.hugepage < 0:
            return False
        if thp == "madvise" and v.hugepage <= 0:
            return False
        base = addr & ~(PMD - 1)
        return v.start <= base and base + PMD <= v.end

    def _vma_for(self, addr: int, write: bool) -> Vma:
        v = self.find(addr)
        if v is None or not v.prot & (2 if write else 1):
            raise ModelError(f"SIGSEGV: {'write' if write else 'read'} at {addr:#x}",
                             op="write" if write else "read", start=addr, end=addr + PAGE,
                             errno=14)
        return v

    def write(self, addr: int, length: int = PAGE, tids: tuple[int, ...] = (0,),
              hook: FaultHook | None = None) -> None:
        end = addr + length
        if length == PAGE:  # the common case, without the chunk loop
            v = self._vma_for(addr, True)
            t = self.pt.get(addr >> PMD_SHIFT)
            n = (addr >> PAGE_SHIFT) & 511
            if t is not None and not t.huge and t.st[n] == PRESENT and \
                    (int(t.fl[n]) & (W | WP)) == W:
                self._store(v, t, addr >> PMD_SHIFT, n, addr)
            else:
                self._write_page(v, addr, tids, hook)
            if self.observer is not None:
                self.observer("write", addr, end)
            return
        pos = addr
        while pos < end:
            v = self._vma_for(pos, True)
            hi = min(end, v.end)
            for k, i, j in self.chunks(pos, hi):
                t = self.pt.get(k)
                if t is not None and not t.huge:
                    fl = t.fl[i:j]
                    if ((fl & (W | WP)) == W).all() and (t.st[i:j] == PRESENT).all():
                        # no fault: the CPU sets the dirty bit
                        vers = self.world.new_versions(j - i)
                        if v.shared and v.file is not None:
                            a = v.page_index(k << PMD_SHIFT) + i
                            v.file.ver[a:a + j - i] = vers
                        else:
                            t.ver[i:j] = vers
                        fl &= np.uint8(0xFF & ~LAZY)
                        fl |= D
                        continue
                base = k << PMD_SHIFT
                for n in range(i, j):
                    self._write_page(v, base + (n << PAGE_SHIFT), tids, hook)
            pos = hi
        self._notify("write", addr, end)

    def _uffd_fault(self, v: Vma, addr: int, tids: tuple[int, ...],
                    hook: FaultHook | None) -> None:
        """A write hit a uffd-wp entry (bit or marker): handle_userfault / async resolve."""
        self.c.tracking_faults += 1
        ctx = v.uffd
        ctx.on_wp_fault(self, v, addr, tids, hook)

    def _write_page(self, v: Vma, addr: int, tids: tuple[int, ...],
                    hook: FaultHook | None) -> None:
        k, n = addr >> PMD_SHIFT, (addr >> PAGE_SHIFT) & 511
        t: Any = self.pt.get(k)  # a Table wherever st != NONE
        ctx = v.uffd
        if t is not None and t.huge:
            if t.fl[0] & WP:
                if ctx is not None and ctx.async_:
                    self.split_huge(k)  # wp_huge_pmd: async WP splits the PMD
                else:
                    self.c.faults += 1
                    self._uffd_fault(v, addr, tids, hook)
                    t = self.pt.get(k)
            if t is not None and t.huge:
                if t.fl[0] & ZERO and self.profile.huge_zero_wp_thp:
                    # do_huge_zero_wp_pmd: a THP replaces the huge zero page
                    self.c.faults += 1
                    if not v.anon_vma:
                        v.anon_vma = self.world.new_anon_vma()
                    t.fl[:] = (t.fl & np.uint8(WP)) | ANON | W | D | SD
                    t.ver[:] = 0
                    t.ver[n] = self.world.new_version()
                    return
                if t.fl[0] & ZERO:
                    self.split_huge(k)  # do_huge_pmd_wp_page on the huge zero page: fallback
                elif t.fl[0] & W:
                    t.ver[n] = self.world.new_version()
                    t.fl[:] = (t.fl[:] | D) & np.uint8(0xFF & ~LAZY)
                    return
                else:
                    self.c.faults += 1
                    if not t.fl[0] & SD:
                        self.c.tracking_faults += 1  # soft-dirty write-protection
                    t.fl[:] |= W | D | SD
                    t.ver[n] = self.world.new_version()
                    return
        st = t.st[n] if t is not None else NONE
        fl = int(t.fl[n]) if t is not None else 0
        if st == PRESENT and fl & W and not fl & WP:
            self._store(v, t, k, n, addr)
            return
        self.c.faults += 1
        before = 0
        if ctx is not None and ctx.design != "kernel":
            before = self.content_page(addr)
        if st == SWAP:
            # do_swap_page: uffd-wp and soft-dirty come back from the swap entry
            t.st[n] = PRESENT
            st = PRESENT
        if st == PRESENT and fl & WP:
            self._uffd_fault(v, addr, tids, hook)
            fl = int(t.fl[n])
            st = t.st[n]
        elif st == MARKER and fl & WP:
            self._uffd_fault(v, addr, tids, hook)
            st = t.st[n]
            fl = int(t.fl[n])
        elif st == MARKER:  # a discard marker without the bit (fault-time proposal): written
            t.st[n] = NONE
            t.fl[n] = 0
            st, fl = NONE, 0
        elif st == NONE and ctx is not None and ctx.design != "kernel" and \
                ctx.none_is_protected(v, addr):
            ctx.on_none_write(self, v, addr, tids, hook, when="before", before=before)
        if st == PRESENT:
            if not fl & SD and not fl & ZERO:
                self.c.tracking_faults += 1  # soft-dirty write-protection (clear_refs)
            if fl & ZERO or (not v.shared and not fl & ANON):
                # COW of the zero page or of a private file page: a new anon page
                if not v.anon_vma:
                    v.anon_vma = self.world.new_anon_vma()
                t.fl[n] = (fl & WP) | W | D | SD | ANON
                t.ver[n] = self.world.new_version()
            else:
                t.fl[n] = (fl & ~LAZY) | W | D | SD
                self._store(v, t, k, n, addr)
            return
        # none or marker (after resolution): populate
        if t is None and self._thp_ok(v, addr):
            t = self._alloc(k)
            t.huge = True
            t.st[:] = PRESENT
            t.fl[:] = ANON | W | D | SD
            if not v.anon_vma:
                v.anon_vma = self.world.new_anon_vma()
            t.ver[n] = self.world.new_version()
            self._after_none_write(v, addr, tids, hook, before)
            return
        t = self._alloc(k)
        keep_wp = int(t.fl[n]) & WP if t.st[n] == MARKER else 0
        t.st[n] = PRESENT
        if v.shared and v.file is not None:
            t.fl[n] = keep_wp | W | D | SD
            a = v.page_index(addr)
            v.file.fault_in(a, self.profile.readahead_pages, self._huge_file(v))
            v.file.ver[a] = self.world.new_version()
        else:
            if not v.anon_vma:
                v.anon_vma = self.world.new_anon_vma()
            if v.file is not None:  # do_cow_fault reads the file page through the cache
                v.file.fault_in(v.page_index(addr), self.profile.readahead_pages,
                                self._huge_file(v))
            t.fl[n] = keep_wp | W | D | SD | ANON
            t.ver[n] = self.world.new_version()
        self._after_none_write(v, addr, tids, hook, before)

    def _after_none_write(self, v: Vma, addr: int, tids: tuple[int, ...],
                          hook: FaultHook | None, before: int) -> None:
        ctx = v.uffd
        if ctx is not None and ctx.design != "kernel" and ctx.none_is_protected(v, addr):
            ctx.on_none_write(self, v, addr, tids, hook, when="after", before=before)

    def _store(self, v: Vma, t: Table, k: int, n: int, addr: int) -> None:
        if v.shared and v.file is not None and not t.fl[n] & ANON:
            v.file.ver[v.page_index(addr)] = self.world.new_version()
        else:
            t.ver[n] = self.world.new_version()
        t.fl[n] = (int(t.fl[n]) | D) & ~LAZY & 0xFF

    def read(self, addr: int, length: int = PAGE) -> None:
        end = addr + length
        if length == PAGE:
            v = self._vma_for(addr, False)
            t = self.pt.get(addr >> PMD_SHIFT)
            if t is None or not (t.huge or t.st[(addr >> PAGE_SHIFT) & 511] == PRESENT):
                self._read_page(v, addr)
            return
        pos = addr
        while pos < end:
            v = self._vma_for(pos, False)
            hi = min(end, v.end)
            for k, i, j in self.chunks(pos, hi):
                t = self.pt.get(k)
                if t is not None and (t.huge or (t.st[i:j] == PRESENT).all()):
                    continue
                base = k << PMD_SHIFT
                for n in range(i, j):
                    self._read_page(v, base + (n << PAGE_SHIFT))
            pos = hi

    def _read_page(self, v: Vma, addr: int) -> None:
        k, n = addr >> PMD_SHIFT, (addr >> PAGE_SHIFT) & 511
        t: Any = self.pt.get(k)
        st = t.st[n] if t is not None else NONE
        if st == PRESENT:
            return
        self.c.faults += 1
        if st == SWAP:
            t.st[n] = PRESENT  # keeps uffd-wp / soft-dirty from the swap entry
            t.fl[n] &= np.uint8(0xFF & ~W)
            return
        ctx = v.uffd
        # pte_marker_handle_uffd_wp: mapped with the bit kept
        wp = st == MARKER and bool(t.fl[n] & WP)
        if st == NONE and ctx is not None and ctx.design != "kernel" and \
                ctx.none_is_protected(v, addr):
            wp = True  # the fault-time proposal (a): read fault maps the zero page + wp bit
        if t is None and not wp and self._thp_ok(v, addr) and self.profile.thp_zero_page:
            t = self._alloc(k)
            t.huge = True
            t.st[:] = PRESENT
            t.fl[:] = ZERO
            return
        t = self._alloc(k)
        t.st[n] = PRESENT
        if v.anonymous:
            t.fl[n] = ZERO | (WP if wp else 0)
            t.ver[n] = 0
        else:
            a = v.page_index(addr)
            if v.file is not None:
                v.file.fault_in(a, self.profile.readahead_pages, self._huge_file(v))
            t.fl[n] = WP if wp else 0
            t.ver[n] = 0
            if v.uffd is None and v.file is not None:
                self._fault_around(v, addr, t, n)

    def _huge_file(self, v: Vma) -> bool:
        return v.kind == "file" and v.hugepage > 0 and self.profile.thp != "never"

    def _fault_around(self, v: Vma, addr: int, t: Table, n: int) -> None:
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
        cached = v.file.resident[a0:a0 + to - frm]
        if len(cached) < to - frm:
            cached = np.concatenate([cached, np.zeros(to - frm - len(cached), bool)])
        sel = (t.st[frm:to] == NONE) & cached
        t.st[frm:to][sel] = PRESENT
        t.fl[frm:to][sel] = 0
        t.ver[frm:to][sel] = 0

    # ----------------------------------------------------------------- soft-dirty, fork
    def clear_refs_soft_dirty(self) -> None:
        """clear_refs 4 over the whole mm."""
        for v in self.vmas:
            v.softdirty = False
        for t in self.pt.values():
            pres = t.st == PRESENT
            t.fl[pres] &= np.uint8(0xFF & ~(W | SD))
            t.fl[t.st == SWAP] &= _NOT_SD

    def fork(self) -> Mm:
        child = Mm(self.profile, self.world, pid=self.pid * 100 + len(self.children) + 1)
        for v in self.vmas:
            cv = Vma(v.start, v.end, v.prot, v.kind, v.shared, v.file, v.pgoff, v.softdirty,
                     None, v.hugepage, v.anon_vma, False)
            child.vmas.append(cv)
            if v.shared:
                continue  # copy_page_range skips VMAs without anon_vma: faulted lazily
            for k, i, j in self.chunks(v.start, v.end):
                t = self.pt.get(k)
                if t is None:
                    continue
                ct = child._alloc(k)
                if t.huge:
                    ct.huge = True
                ct.st[i:j] = t.st[i:j]
                ct.ver[i:j] = t.ver[i:j]
                cow = (t.st[i:j] == PRESENT) & ((t.fl[i:j] & ANON) != 0)
                t.fl[i:j][cow] &= _NOT_W  # both sides read-only for COW
                cfl = t.fl[i:j].copy()
                cfl &= _NOT_WP  # the child VMA is not registered: the bit is dropped
                ct.fl[i:j] = cfl
                mk = ct.st[i:j] == MARKER
                ct.st[i:j][mk] = NONE
        child._reindex()
        child.next_free = self.next_free
        self.children.append(child)
        return child

    def child_exit(self) -> None:
        if self.children:
            self.children.pop()

    def exit(self) -> None:
        for v in list(self.vmas):
            self.munmap(v.start, v.end - v.start)
        self.children.clear()

    # ------------------------------------------------------------------------ content
    def content(self, start: int, end: int) -> np.ndarray:
        """The content version of every page of [start, end): 0 zero, -1 unmapped."""
        n = (end - start) >> PAGE_SHIFT
        out = np.full(n, -1, np.int64)
        for v in self.vmas_in(start, end):
            lo, hi = max(v.start, start), min(v.end, end)
            for k, i, j in self.chunks(lo, hi):
                o = ((k << PMD_SHIFT) + (i << PAGE_SHIFT) - start) >> PAGE_SHIFT
                seg = out[o:o + j - i]
                t = self.pt.get(k)
                if v.file is not None:
                    a = v.page_index((k << PMD_SHIFT) + (i << PAGE_SHIFT))
                    fv = v.file.ver[a:a + j - i]
                    seg[:] = fv if len(fv) == j - i else np.resize(fv, j - i)
                else:
                    seg[:] = 0
                if t is None:
                    continue
                st, fl = t.st[i:j], t.fl[i:j]
                own = ((st == PRESENT) | (st == SWAP)) & ((fl & ANON) != 0)
                seg[own] = t.ver[i:j][own]
                if v.anonymous:
                    seg[(st == PRESENT) & ((fl & ZERO) != 0)] = 0
        return out

    def content_page(self, addr: int) -> int:
        """The content version of one page (as :meth:`content`)."""
        v = self.find(addr)
        if v is None:
            return -1
        t = self.pt.get(addr >> PMD_SHIFT)
        if t is not None:
            n = (addr >> PAGE_SHIFT) & 511
            st, fl = int(t.st[n]), int(t.fl[n])
            if st in (PRESENT, SWAP) and fl & ANON:
                return int(t.ver[n])
            if st == PRESENT and fl & ZERO and v.anonymous:
                return 0
        if v.file is not None:
            i = v.page_index(addr)
            return int(v.file.ver[i]) if i < len(v.file.ver) else 0
        return 0

    def stats(self) -> dict[str, int]:
        return {"vmas": len(self.vmas), "pt_pages": self.c.pt_pages,
                "pt_peak": self.c.pt_peak, "faults": self.c.faults,
                "tracking_faults": self.c.tracking_faults}


@dataclass
class Ring:
    """The write-log ring: bounded; an overflow makes the next collect walk everything."""

    capacity: int
    entries: list[int] = field(default_factory=list)
    overflowed: bool = False
    overflows: int = 0

    def append(self, addr: int) -> None:
        if len(self.entries) >= self.capacity:
            if not self.overflowed:
                self.overflows += 1
            self.overflowed = True
            return
        self.entries.append(addr)
