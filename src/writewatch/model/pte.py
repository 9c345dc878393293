"""The vocabulary of the model's page tables: sizes, what an entry holds, its flag bits.

An entry is one byte of state and one byte of flag bits (numpy arrays of 512 per page-table
page). The names follow the kernel's: the state is what ``pte_none()``, ``pte_present()``,
``is_swap_pte()`` and ``is_pte_marker()`` tell apart; the bits stand for x86's ``_PAGE_RW``,
``_PAGE_DIRTY``, ``_PAGE_SOFT_DIRTY`` and ``_PAGE_UFFD_WP`` (arch/x86/include/asm/
pgtable_types.h), for ``is_zero_pfn()``, ``PageAnon()`` and a page MADV_FREE made lazy-free.
A marker with ``UFFD_WP`` is the kernel's ``PTE_MARKER_UFFD_WP`` (include/linux/swapops.h); a
marker without it exists only in designs that never existed in Linux (the fault-time
proposal's discard marker).
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
#: PTRS_PER_PTE (and PTRS_PER_PMD, PTRS_PER_PUD) on x86-64 with 4 KiB pages
PTRS = 512
PMD_SHIFT = 21
PMD = 1 << PMD_SHIFT
PUD_SHIFT = 30
#: a page-table page is one page at every level on x86-64 (pte_alloc_one, pmd_alloc_one)
PT_PAGE_BYTES = PAGE
#: fault_around_bytes (64 KiB) / PAGE_SIZE (mm/memory.c)
FAULT_AROUND = 16


class Entry:
    """What one page-table entry holds."""

    NONE = 0  #: pte_none()
    PRESENT = 1  #: pte_present()
    SWAP = 2  #: is_swap_pte(): a swapped-out anonymous page
    MARKER = 3  #: is_pte_marker(): PTE_MARKER_UFFD_WP (with Bit.UFFD_WP)


class Bit:
    """Flag bits of an entry."""

    RW = 1  #: _PAGE_RW: writable
    DIRTY = 2  #: _PAGE_DIRTY
    SOFT_DIRTY = 4  #: _PAGE_SOFT_DIRTY (also _PAGE_SWP_SOFT_DIRTY on a swap entry)
    UFFD_WP = 8  #: _PAGE_UFFD_WP (also _PAGE_SWP_UFFD_WP, and the marker's bit)
    ZERO_PFN = 16  #: maps the zero page (is_zero_pfn / the huge zero folio)
    ANON = 32  #: an anonymous page (PageAnon): private to this address space
    LAZYFREE = 64  #: MADV_FREE'd and clean: reclaim may discard it


#: the short names the page-table code uses (module globals: the hot paths load them fastest)
NONE, PRESENT, SWAP, MARKER = Entry.NONE, Entry.PRESENT, Entry.SWAP, Entry.MARKER
RW, D, SD, WP, ZERO, ANON, LAZY = (Bit.RW, Bit.DIRTY, Bit.SOFT_DIRTY, Bit.UFFD_WP, Bit.ZERO_PFN,
                                    Bit.ANON, Bit.LAZYFREE)


def nbits(*bits: int) -> int:
    """The 8-bit complement of the OR of ``bits`` (for ``fl &= nbits(...)`` on uint8)."""
    m = 0
    for b in bits:
        m |= b
    return 0xFF & ~m


__all__ = [
    "ANON",
    "FAULT_AROUND",
    "LAZY",
    "MARKER",
    "NONE",
    "PAGE",
    "PAGE_SHIFT",
    "PMD",
    "PMD_SHIFT",
    "PRESENT",
    "PTRS",
    "PT_PAGE_BYTES",
    "PUD_SHIFT",
    "RW",
    "SD",
    "SWAP",
    "WP",
    "ZERO",
    "Bit",
    "D",
    "Entry",
    "nbits",
]
