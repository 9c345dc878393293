"""Memory objects and what address spaces share: the content-version clock, page caches
(shmem, memfd, regular files) and the processes of one model machine.

Content is a version number per page: every write makes a new one, the zero page is 0. A
shared mapping's content lives in its :class:`File` (a memory object), so a write through any
process's mapping of it is seen through every other mapping, while a private anonymous page
lives in one address space's page table. Ground truth is therefore per memory object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .pte import PTRS

if TYPE_CHECKING:
    from .mm import Mm


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
    """One model machine: the version clock, the files, and its processes by pid."""

    def __init__(self) -> None:
        self.clock = 1  # version 0 is the zero page
        self.files: dict[str, File] = {}
        self.procs: dict[int, Mm] = {}
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

    def mappers(self, f: File) -> list[Mm]:
        """Every live address space with a mapping of ``f`` (the file's i_mmap)."""
        return [m for m in self.procs.values() if any(v.file is f for v in m.vmas)]


__all__ = ["File", "World"]
