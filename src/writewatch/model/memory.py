"""Memory objects: page caches (shmem, memfd, regular files).

Content is a version number per page: every write makes a new one, the zero page is 0. A
shared mapping's content lives in its :class:`File` (a memory object), so a write through any
process's mapping of it is seen through every other mapping, while a private anonymous page
lives in one address space's page table. Ground truth is therefore per memory object.
"""

from __future__ import annotations

import numpy as np

from .pte import PTRS


class File:
    """A page cache: shmem (anonymous shared, memfd) or a regular file."""

    def __init__(self, name: str, kind: str, content: np.ndarray) -> None:
        """``content``: the version of each page (a regular file has content of its own,
        shmem starts zero-filled)."""
        npages = len(content)
        self.name = name
        self.kind = kind
        self.ver = np.asarray(content, np.int64)
        self.resident = np.zeros(npages, bool)
        #: per PMD-sized block of the file: cached as one large folio
        self.pmd_folio = np.zeros(-(-npages // PTRS), bool)

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


__all__ = ["File"]
