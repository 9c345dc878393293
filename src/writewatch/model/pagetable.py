"""Page tables: PTE-table pages as numpy arrays, counted at the PTE, PMD and PUD levels.

A :class:`Table` is one PTE-table page (512 entries: state, flag bits, content version) or,
when ``huge``, a PMD-mapped THP (its flags uniform, its subpages' versions separate; an
anonymous THP's deposited PTE table is the same page). :class:`PageTables` maps the PMD index
(``addr >> PMD_SHIFT``) to its table and allocates and frees the PMD- and PUD-level pages as
the tables under them come and go, so a 64 GiB mapping costs only what it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields

import numpy as np

from .pte import PAGE_SHIFT, PT_PAGE_BYTES, PTRS, Bit


@dataclass
class Counters:
    """What an address space did, as counted events (the costs are priced from these)."""

    faults: int = 0  #: every page fault
    tracking_faults: int = 0  #: faults caused by tracking (uffd-wp bit or marker, soft-dirty)
    pt_pages: int = 0  #: page-table pages now (PTE + PMD + PUD levels)
    pt_peak: int = 0
    pt_allocated: int = 0  #: PTE-table pages ever allocated
    thp_splits: int = 0
    thp_collapses: int = 0  #: MADV_COLLAPSE / khugepaged
    tlb_flushes: int = 0  #: flush_tlb_range() calls: protection changes and zaps
    mmap_lock_write: int = 0  #: mmap_write_lock(): VMA changes (mmap, munmap, mprotect ...)
    mmap_lock_read: int = 0  #: mmap_read_lock(): PAGEMAP_SCAN, UFFDIO_WRITEPROTECT, madvise
    vma_lock: int = 0  #: faults handled under the per-VMA lock (lock_vma_under_rcu, 6.4)
    ptl: int = 0  #: page-table lock acquisitions (one per PTE table or huge PMD touched)
    wp_entries: int = 0  #: entries write-protected (uffd-wp bit or marker set)
    swap_outs: int = 0
    swap_ins: int = 0

    @property
    def pt_bytes(self) -> int:
        return self.pt_pages * PT_PAGE_BYTES

    @property
    def pt_peak_bytes(self) -> int:
        return self.pt_peak * PT_PAGE_BYTES

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Table:
    """One page-table page (512 PTEs), or a PMD-mapped THP when ``huge``."""

    __slots__ = ("fl", "folio", "huge", "st", "ver")

    def __init__(self) -> None:
        self.st = np.zeros(PTRS, np.uint8)
        self.fl = np.zeros(PTRS, np.uint8)
        self.ver = np.zeros(PTRS, np.int64)
        self.huge = False
        #: after the PMD of an anonymous THP was split: the PTEs still mapping its subpages
        #: (a large folio, PTE-mapped, until something splits the folio itself); else None
        self.folio: np.ndarray | None = None

    def copy(self) -> Table:
        t = Table()
        t.st[:] = self.st
        t.fl[:] = self.fl
        t.ver[:] = self.ver
        t.huge = self.huge
        t.folio = None if self.folio is None else self.folio.copy()
        return t


#: the entries and versions of a missing PTE table (read-only), for vector passes that
#: put the tables of a range side by side
NO_ENTRIES = np.zeros(PTRS, np.uint8)
NO_VERSIONS = np.zeros(PTRS, np.int64)
NO_ENTRIES.flags.writeable = NO_VERSIONS.flags.writeable = False


def chunks(start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(table key, first index, end index) of each page-table page [start, end) touches."""
    p, pe = start >> PAGE_SHIFT, end >> PAGE_SHIFT
    while p < pe:
        k = p >> 9
        i = p & 511
        j = min(512, i + (pe - p))
        yield k, i, j
        p += j - i


class PageTables:
    """The PTE tables of one address space by PMD index, and the levels above them."""

    def __init__(self, counters: Counters) -> None:
        self.tables: dict[int, Table] = {}
        #: the table at PMD index ``k`` or None: the dict's own get (the fault paths call it
        #: for every page; a method around it costs as much again)
        self.get: Callable[[int], Table | None] = self.tables.get
        self._pmd_ref: dict[int, int] = {}  #: PMD-table page -> PTE tables under it
        self._pud_ref: dict[int, int] = {}  #: PUD-table page -> PMD tables under it
        self.c = counters

    # dict-like access by PMD index
    def __getitem__(self, k: int) -> Table:
        return self.tables[k]

    def __contains__(self, k: object) -> bool:
        return k in self.tables

    def __iter__(self) -> Iterator[int]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def values(self) -> Iterator[Table]:
        return iter(self.tables.values())

    def items(self) -> Iterator[tuple[int, Table]]:
        return iter(self.tables.items())

    def alloc(self, k: int) -> Table:
        """The table at PMD index ``k``, allocated (with its PMD and PUD pages) if absent
        (__pte_alloc, __pmd_alloc, __pud_alloc)."""
        t = self.tables.get(k)
        if t is not None:
            return t
        t = self.tables[k] = Table()
        c = self.c
        c.pt_allocated += 1
        c.pt_pages += 1
        pm = k >> 9
        if pm not in self._pmd_ref:
            self._pmd_ref[pm] = 0
            c.pt_pages += 1
            pu = pm >> 9
            if pu not in self._pud_ref:
                self._pud_ref[pu] = 0
                c.pt_pages += 1
            self._pud_ref[pu] += 1
        self._pmd_ref[pm] += 1
        if c.pt_pages > c.pt_peak:
            c.pt_peak = c.pt_pages
        return t

    def free(self, k: int) -> None:
        """Free the table at ``k`` (and the PMD / PUD pages left empty: free_pgtables)."""
        if self.tables.pop(k, None) is None:
            return
        c = self.c
        c.pt_pages -= 1
        pm = k >> 9
        self._pmd_ref[pm] -= 1
        if not self._pmd_ref[pm]:
            del self._pmd_ref[pm]
            c.pt_pages -= 1
            pu = pm >> 9
            self._pud_ref[pu] -= 1
            if not self._pud_ref[pu]:
                del self._pud_ref[pu]
                c.pt_pages -= 1

    def split_huge(self, k: int, mkdirty: bool) -> bool:
        """__split_huge_pmd: the PMD's bits go to all 512 PTEs; with ``mkdirty`` (6.3,
        96d82deb743a) a dirty PMD's PTEs get pte_mkdirty, which sets _PAGE_SOFT_DIRTY on x86.
        True if there was a THP to split."""
        t = self.tables.get(k)
        if t is None or not t.huge:
            return False
        t.huge = False
        if mkdirty:
            t.fl[(t.fl & Bit.DIRTY) != 0] |= np.uint8(Bit.SOFT_DIRTY)
        self.c.thp_splits += 1
        return True


__all__ = ["NO_ENTRIES", "NO_VERSIONS", "Counters", "PageTables", "Table", "chunks"]
