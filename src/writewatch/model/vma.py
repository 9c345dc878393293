"""VMAs and the kernel's split / modify / merge rules (mm/vma.c)."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .pte import PAGE_SHIFT, PMD

if TYPE_CHECKING:
    from .memory import File
    from .profiles import Profile

PROT = {"none": 0, "r": 1, "rw": 3}


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
    wp_start: bool = False  #: a design's "protection starts right away" VMA flag

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anonymous memory (no vm_file)."""
        return self.kind == "anon" and not self.shared

    def merge_key(self, softdirty_blocks_merge: bool = False) -> tuple[Any, ...]:
        # VM_SOFTDIRTY is in VM_IGNORE_MERGE (include/linux/mm.h) since 34228d473efe ("mm:
        # ignore VM_SOFTDIRTY on VMA merging", 3.16); before, differing flags kept VMAs apart
        sd = self.softdirty if softdirty_blocks_merge else None
        # the file and the uffd context compare by identity (is_mergeable_vma: same vm_file,
        # is_mergeable_vm_userfaultfd_ctx: same vm_userfaultfd_ctx)
        return (self.prot, self.kind, self.shared, self.file, self.uffd, self.hugepage,
                self.wp_start, sd)

    def clone(self, start: int, end: int, **changes: Any) -> Vma:
        v = Vma(start, end, self.prot, self.kind, self.shared, self.file,
                self.pgoff + ((start - self.start) >> PAGE_SHIFT), self.softdirty, self.uffd,
                self.hugepage, self.anon_vma, self.wp_start)
        for k, val in changes.items():
            setattr(v, k, val)
        return v

    def split_at(self, addr: int) -> Vma:
        """Cut at ``addr``; self keeps the low part, the high part is returned."""
        hi = self.clone(addr, self.end)
        self.end = addr
        return hi

    def page_index(self, addr: int) -> int:
        return self.pgoff + ((addr - self.start) >> PAGE_SHIFT)


class VmaList:
    """The VMAs of one address space, sorted, with split and merge as vma_modify() does.

    ``on_split(addr)`` runs before a VMA is cut at an address that is not PMD-aligned
    (__split_vma -> vma_adjust_trans_huge: "Get rid of huge pages ... straddling the split
    boundary")."""

    def __init__(self, profile: Profile, on_split: Callable[[int], None]) -> None:
        self.profile = profile
        self.on_split = on_split
        self.vmas: list[Vma] = []
        self._starts: list[int] = []

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.vmas)

    def __len__(self) -> int:
        return len(self.vmas)

    def reindex(self) -> None:
        self.vmas.sort(key=lambda v: v.start)
        self._starts = [v.start for v in self.vmas]

    def insert(self, v: Vma) -> None:
        self.vmas.append(v)
        self.reindex()

    def remove(self, v: Vma) -> None:
        self.vmas.remove(v)
        self.reindex()

    def find(self, addr: int) -> Vma | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            v = self.vmas[i]
            if addr < v.end:
                return v
        return None

    def within(self, start: int, end: int) -> list[Vma]:
        """The VMAs overlapping [start, end), in address order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for v in self.vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def covered(self, start: int, end: int) -> int:
        """The end of the mapped run starting at ``start`` (== ``end``: fully mapped)."""
        pos = start
        for v in self.within(start, end):
            if v.start > pos:
                break
            pos = v.end
        return min(pos, end) if pos > start else start

    def split(self, start: int, end: int) -> list[Vma]:
        """Make ``start`` and ``end`` VMA boundaries; the VMAs inside."""
        for addr in (start, end):
            v = self.find(addr)
            if v is not None and v.start < addr:
                if addr % PMD:
                    self.on_split(addr)
                self.vmas.append(v.split_at(addr))
                self.reindex()
        return self.within(start, end)

    def merge_around(self, vma: Vma) -> Vma:
        """Merge ``vma`` with its neighbours when the kernel would (is_mergeable_vma + anon_vma
        compatibility + contiguous pgoff). ``vma`` is the one being changed: before the sticky
        fix its VM_SOFTDIRTY wins ("mm: propagate VM_SOFTDIRTY on merge" makes it the OR)."""
        prof = self.profile
        i = self.vmas.index(vma)
        for j in (i + 1, i):  # next into vma, then vma into prev
            if j <= 0 or j >= len(self.vmas):
                continue
            a, b = self.vmas[j - 1], self.vmas[j]
            if (a.end == b.start
                    and a.merge_key(prof.softdirty_blocks_merge) ==
                    b.merge_key(prof.softdirty_blocks_merge)
                    and a.pgoff + ((a.end - a.start) >> PAGE_SHIFT) == b.pgoff
                    and (a.anon_vma == 0 or b.anon_vma == 0 or a.anon_vma == b.anon_vma)):
                sd = (a.softdirty or b.softdirty) if prof.softdirty_sticky_merge else \
                    vma.softdirty
                a.end = b.end
                a.softdirty = sd
                a.anon_vma = a.anon_vma or b.anon_vma
                self.vmas.pop(j)
                self._starts.pop(j)
                vma = a
        return vma

    def modify(self, start: int, end: int, fn: Callable[[Vma], None]) -> None:
        """vma_modify(): split at the range, change each VMA, merge."""
        inside = self.split(start, end)
        for v in inside:
            fn(v)
        for v in inside:
            if v in self.vmas:
                self.merge_around(v)


__all__ = ["PROT", "Vma", "VmaList"]
