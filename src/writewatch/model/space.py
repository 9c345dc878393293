"""The state of a model machine: :class:`World` (the content-version clock, the memory objects
and the address spaces by pid) and :class:`AddressSpace` (one process's mm_struct: its VMAs,
page tables and counters), with the lookups every kernel path below the system calls uses.

Nothing here changes a mapping: the system calls are :mod:`.mapping`, :mod:`.access` and
:mod:`.fork`, the fault and zap paths :mod:`.fault` and :mod:`.zap`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from .. import errors
from .memory import File
from .pagetable import NO_ENTRIES, NO_VERSIONS, Counters, PageTables, Table, chunks
from .pte import ANON, PAGE, PAGE_SHIFT, PMD_SHIFT, PRESENT, SWAP, ZERO
from .vma import Vma, VmaList

if TYPE_CHECKING:
    from .profiles import Profile

#: what an observer is told: fn(what, start, end) for ranges ("write", "map", "unmap",
#: "zap"), for ground truth kept outside the model
Observer = Callable[[str, int, int], None]


class ModelError(errors.WriteWatchError):
    """An operation the modelled kernel refuses or a program would crash on (SIGSEGV)."""

    __module__ = "writewatch.model"


class World:
    """One model machine: the version clock, the files, and its address spaces by pid."""

    def __init__(self) -> None:
        self.clock = 1  # version 0 is the zero page
        self.files: dict[str, File] = {}
        self.procs: dict[int, AddressSpace] = {}
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
            content = self.new_versions(npages) if kind == "file" else \
                np.zeros(npages, np.int64)
            f = self.files[name] = File(name, kind, content)
        f.ensure(npages)
        return f

    def mappers(self, f: File) -> list[AddressSpace]:
        """Every live address space with a mapping of ``f`` (the file's i_mmap)."""
        return [m for m in self.procs.values() if any(v.file is f for v in m.vmas)]

    def new_pid(self, parent: int, nth_child: int) -> int:
        """A pid for the ``nth_child`` (1-based) of ``parent`` not in use."""
        pid = parent * 100 + nth_child
        while pid in self.procs:
            pid += 1
        return pid


def _own_content(anonymous: bool) -> np.ndarray:
    """Which (state, flags) pairs of an entry, at ``state << 8 | flags``, hold the page's
    own content version: a present or swapped anonymous page; in anonymous memory not a
    zero-page mapping (which reads 0)."""
    st = np.repeat(np.arange(4, dtype=np.uint8), 256)
    fl = np.tile(np.arange(256, dtype=np.uint8), 4)
    own = ((st == PRESENT) | (st == SWAP)) & ((fl & ANON) != 0)
    if anonymous:
        own &= ~((st == PRESENT) & ((fl & ZERO) != 0))
    return np.asarray(own, bool)


_OWN = {a: _own_content(a) for a in (False, True)}


class AddressSpace:
    """One address space (a process's mm_struct): its VMAs, page tables and counters."""

    def __init__(self, profile: Profile, world: World, pid: int) -> None:
        self.profile = profile
        self.world = world
        self.pid = pid
        self.c = Counters()
        self.pt = PageTables(self.c)
        self.vma_list = VmaList(profile, lambda addr: self.split_huge(addr >> PMD_SHIFT))
        self.next_free = 0x7F0000000000
        self.observer: Observer | None = None
        world.procs[pid] = self

    # -- lookups ---------------------------------------------------------------------------
    @property
    def vmas(self) -> list[Vma]:
        return self.vma_list.vmas

    def find(self, addr: int) -> Vma | None:
        return self.vma_list.find(addr)

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        return self.vma_list.within(start, end)

    def is_mapped(self, start: int, end: int) -> bool:
        return self.vma_list.covered(start, end) >= end

    def modify(self, start: int, end: int, fn: Callable[[Vma], None]) -> None:
        self.vma_list.modify(start, end, fn)

    @staticmethod
    def chunks(start: int, end: int) -> Iterator[tuple[int, int, int]]:
        return chunks(start, end)

    def uses_markers(self, v: Vma) -> bool:
        return v.uffd is not None and v.uffd.uses_markers(v)

    # -- checks a system call makes ----------------------------------------------------------
    def check_range(self, addr: int, length: int, op: str) -> None:
        if addr % PAGE or length <= 0 or length % PAGE:
            raise ModelError(f"{op}: unaligned or empty range", op=op, start=addr,
                             end=addr + length, errno=22)

    def require_mapped(self, start: int, end: int, op: str) -> None:
        pos = self.vma_list.covered(start, end)
        if pos < end:
            raise ModelError(f"{op}: {pos:#x} is not mapped", op=op, start=start, end=end,
                             errno=12)

    def vma_for(self, addr: int, write: bool) -> Vma:
        """The VMA an access at ``addr`` faults in; SIGSEGV where there is none or its
        protection forbids the access."""
        v = self.vma_list.find(addr)
        if v is None or not v.prot & (2 if write else 1):
            raise ModelError(f"SIGSEGV: {'write' if write else 'read'} at {addr:#x}",
                             op="write" if write else "read", start=addr, end=addr + PAGE,
                             errno=14)
        return v

    # -- page tables -------------------------------------------------------------------------
    def tables(self, start: int, end: int) -> Iterator[tuple[int, int, int, Table]]:
        """(table key, first index, end index, table) of each page-table page of [start, end)
        that exists: the walk skips holes with no table (pmd_none)."""
        get = self.pt.get
        for k, i, j in chunks(start, end):
            t = get(k)
            if t is not None:
                yield k, i, j, t

    def split_huge(self, k: int) -> None:
        if self.pt.split_huge(k, self.profile.thp_split_mkdirty):
            self.c.ptl += 1
            t = self.pt.tables[k]
            if t.fl[0] & ANON:  # the PMD is split, the folio stays one large folio
                t.folio = np.ones(len(t.st), bool)

    def free_unmapped_tables(self, start: int, end: int) -> None:
        """free_pgtables(): PTE tables no VMA covers any more."""
        for k in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
            if k in self.pt and not self.vmas_in(k << PMD_SHIFT, (k + 1) << PMD_SHIFT):
                self.pt.free(k)

    def notify(self, what: str, start: int, end: int) -> None:
        if self.observer is not None:
            self.observer(what, start, end)

    # -- content -----------------------------------------------------------------------------
    def content(self, start: int, end: int) -> np.ndarray:
        """The content version of every page of [start, end): 0 zero, -1 unmapped. A shared
        page's content is its memory object's, whoever wrote it."""
        n = (end - start) >> PAGE_SHIFT
        out = np.full(n, -1, np.int64)
        for v in self.vmas_in(start, end):
            lo, hi = max(v.start, start), min(v.end, end)
            o = (lo - start) >> PAGE_SHIFT
            seg = out[o:o + ((hi - lo) >> PAGE_SHIFT)]
            if v.file is None:
                seg[:] = 0
            # the PTEs of the piece side by side (a missing table reads as no PTE): one
            # vector pass instead of one per table
            sts, fls, vers = [], [], []
            pos = 0
            for k, i, j in chunks(lo, hi):
                if v.file is not None:  # the file's pages under the table's part
                    a = v.page_index((k << PMD_SHIFT) + (i << PAGE_SHIFT))
                    fv = v.file.ver[a:a + j - i]
                    seg[pos:pos + j - i] = fv if len(fv) == j - i else np.resize(fv, j - i)
                pos += j - i
                t = self.pt.get(k)
                if t is None:
                    sts.append(NO_ENTRIES[:j - i])
                    fls.append(NO_ENTRIES[:j - i])
                    vers.append(NO_VERSIONS[:j - i])
                else:
                    sts.append(t.st[i:j])
                    fls.append(t.fl[i:j])
                    vers.append(t.ver[i:j])
            if len(sts) == 1:
                st, fl, ver = sts[0], fls[0], vers[0]
            else:
                st, fl, ver = np.concatenate(sts), np.concatenate(fls), np.concatenate(vers)
            np.copyto(seg, ver, where=_OWN[v.anonymous][(st.astype(np.intp) << 8) | fl])
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


__all__ = ["AddressSpace", "ModelError", "Observer", "World"]
