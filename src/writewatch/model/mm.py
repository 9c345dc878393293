"""``Mm``: one model process: its address space (:class:`~.space.AddressSpace`), its place in
the process tree, and the system calls a program makes.

The system calls are done by :mod:`.mapping` (mmap, munmap, mprotect, mremap, madvise,
reclaim, clear_refs), :mod:`.access` (reads and writes) and :mod:`.fork` (what a child
inherits); this class is their surface, so a script or a trace replay drives one object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import access, mapping
from .fork import dup_mmap
from .pagetable import Counters, PageTables
from .profiles import Profile
from .pte import PAGE
from .space import AddressSpace, ModelError, Observer, World
from .vma import Vma


class Mm:
    """One process of a model machine: an address space and the system calls on it."""

    def __init__(self, profile: Profile, world: World | None = None, pid: int = 1) -> None:
        self.space = AddressSpace(profile, world or World(), pid)
        self.profile = profile
        self.world = self.space.world
        self.pid = pid
        self.c: Counters = self.space.c
        self.pt: PageTables = self.space.pt
        self.children: list[Mm] = []
        self.parent: Mm | None = None

    # -- the address space -----------------------------------------------------------------
    @property
    def vmas(self) -> list[Vma]:
        return self.space.vmas

    @property
    def observer(self) -> Observer | None:
        """Told of every range a system call or an access changes (ground truth kept
        outside the model)."""
        return self.space.observer

    @observer.setter
    def observer(self, fn: Observer | None) -> None:
        self.space.observer = fn

    @property
    def next_free(self) -> int:
        return self.space.next_free

    def find(self, addr: int) -> Vma | None:
        return self.space.find(addr)

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        return self.space.vmas_in(start, end)

    def modify(self, start: int, end: int, fn: Callable[[Vma], None]) -> None:
        self.space.modify(start, end, fn)

    chunks = staticmethod(AddressSpace.chunks)

    def split_huge(self, k: int) -> None:
        self.space.split_huge(k)

    def uses_markers(self, v: Vma) -> bool:
        return self.space.uses_markers(v)

    def content(self, start: int, end: int) -> np.ndarray:
        return self.space.content(start, end)

    def content_page(self, addr: int) -> int:
        return self.space.content_page(addr)

    def stats(self) -> dict[str, int]:
        c = self.c
        return {"vmas": len(self.vmas), "pt_pages": c.pt_pages, "pt_peak": c.pt_peak,
                "faults": c.faults, "tracking_faults": c.tracking_faults}

    # -- system calls ----------------------------------------------------------------------
    def get_unmapped_area(self, length: int) -> int:
        return mapping.get_unmapped_area(self.space, length)

    def mmap(self, addr: int | None, length: int, kind: str = "anon", shared: bool = False,
             prot: str = "rw", file: str | None = None, offset: int = 0) -> int:
        return mapping.mmap(self.space, addr, length, kind, shared, prot, file, offset)

    def munmap(self, addr: int, length: int) -> None:
        mapping.munmap(self.space, addr, length)

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        mapping.mprotect(self.space, addr, length, prot)

    def mremap(self, addr: int, length: int, new_len: int, new_addr: int | None = None) -> int:
        return mapping.mremap(self.space, addr, length, new_len, new_addr)

    def madvise(self, addr: int, length: int, advice: str) -> None:
        mapping.madvise(self.space, addr, length, advice)

    def reclaim(self, addr: int, length: int) -> None:
        mapping.reclaim(self.space, addr, length)

    def collapse(self, start: int, end: int) -> None:
        mapping.collapse(self.space, start, end)

    def clear_refs_soft_dirty(self) -> None:
        mapping.clear_soft_dirty(self.space)

    # -- accesses --------------------------------------------------------------------------
    def write(self, addr: int, length: int = PAGE, tids: tuple[int, ...] = (0,)) -> None:
        access.write(self.space, addr, length, tids)

    def read(self, addr: int, length: int = PAGE) -> None:
        access.read(self.space, addr, length)

    def write_pages(self, addrs: np.ndarray) -> None:
        """Single-page writes by one thread at each of ``addrs`` (page addresses, in order):
        the same result as ``write(a)`` for each, vectorised per page table."""
        access.pages(self.space, addrs, True)

    def read_pages(self, addrs: np.ndarray) -> None:
        """Single-page reads at each of ``addrs`` (as ``read(a)`` for each)."""
        access.pages(self.space, addrs, False)

    # -- processes -------------------------------------------------------------------------
    def fork(self) -> Mm:
        """A child process (what it inherits: :mod:`.fork`)."""
        child = Mm(self.profile, self.world, self.world.new_pid(self.pid,
                                                                  len(self.children) + 1))
        child.parent = self
        dup_mmap(self.space, child.space)
        self.children.append(child)
        return child

    def child_exit(self) -> None:
        """The last forked child that is still alive exits."""
        if self.children:
            self.children.pop().exit()

    def exit(self) -> None:
        for v in list(self.vmas):
            self.munmap(v.start, v.end - v.start)
        for ch in self.children:
            ch.parent = None
        self.children.clear()
        self.world.procs.pop(self.pid, None)
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)


__all__ = ["Mm", "ModelError", "Observer"]
