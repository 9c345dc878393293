"""``Mm``: one model address space (a process's mm_struct) and the system calls that change
it. The work is done by :mod:`.vma` (VMAs), :mod:`.pagetable` (page tables), :mod:`.fault`
(the fault paths) and :mod:`.zap` (zaps, reclaim, moves); this module is the syscall surface.

Other kernel facts modelled here, with their source:

* clear_refs 4 write-protects every present PTE, clears soft-dirty on PTEs, swap entries and
  VM_SOFTDIRTY on every VMA (fs/proc/task_mmu.c clear_soft_dirty);
* new and expanded VMAs get VM_SOFTDIRTY (mm/mmap.c mmap_region: "New (or expanded) vma
  always get soft dirty status"); mprotect leaves a VMA whose flags do not change alone
  (mprotect_fixup);
* fork copies private VMAs' entries, both sides' anon PTEs read-only (copy_present_pte, COW);
  shared VMAs are not copied (faulted lazily in the child); without UFFD_FEATURE_EVENT_FORK
  the child's VMAs lose the uffd context and the copied entries the bit and markers
  (dup_userfaultfd); with it the child gets a context of its own (dup_userfaultfd_complete
  sends UFFD_EVENT_FORK) and keeps both;
* MADV_COLLAPSE collapses a PMD range of a VM_HUGEPAGE-eligible anonymous VMA into a THP
  (hpage_collapse_scan_pmd), but not over uffd-wp entries or none entries of an armed VMA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from .. import _uapi as U
from .. import errors
from . import fault, zap
from .memory import File, World
from .pagetable import Counters, PageTables, chunks
from .profiles import Profile
from .pte import PAGE, PAGE_SHIFT, PMD, PMD_SHIFT, Bit, Entry, nbits
from .vma import PROT, Vma, VmaList

if TYPE_CHECKING:
    from .uffd import UffdCtx

RW, D, SD, WP, ZERO, ANON = (Bit.RW, Bit.DIRTY, Bit.SOFT_DIRTY, Bit.UFFD_WP, Bit.ZERO_PFN,
                             Bit.ANON)
NONE, PRESENT, SWAP, MARKER = Entry.NONE, Entry.PRESENT, Entry.SWAP, Entry.MARKER
_NOT_RW = np.uint8(nbits(RW))
_NOT_WP = np.uint8(nbits(WP))

#: groups of single-page accesses to one page table smaller than this go one by one
_VECTOR_MIN = 12

#: what an observer is told: fn(what, start, end) for ranges ("write", "map", "unmap",
#: "zap"), for ground truth kept outside the model
Observer = Callable[[str, int, int], None]


class ModelError(errors.WriteWatchError):
    """An operation the modelled kernel refuses or a program would crash on (SIGSEGV)."""

    __module__ = "writewatch.model"


class Mm:
    """One address space (a process's mm_struct)."""

    def __init__(self, profile: Profile, world: World | None = None, pid: int = 1) -> None:
        self.profile = profile
        self.world = world or World()
        self.pid = pid
        self.world.procs[pid] = self
        self.c = Counters()
        self.pt = PageTables(self.c)
        self._vmas = VmaList(profile, lambda addr: self.split_huge(addr >> PMD_SHIFT))
        self.children: list[Mm] = []
        self.parent: Mm | None = None
        self.next_free = 0x7F0000000000
        self.observer: Observer | None = None

    # ------------------------------------------------------------------------- lookups
    @property
    def vmas(self) -> list[Vma]:
        return self._vmas.vmas

    def find(self, addr: int) -> Vma | None:
        return self._vmas.find(addr)

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        return self._vmas.within(start, end)

    def modify(self, start: int, end: int, fn: Callable[[Vma], None]) -> None:
        self._vmas.modify(start, end, fn)

    @staticmethod
    def chunks(start: int, end: int) -> Iterator[tuple[int, int, int]]:
        return chunks(start, end)

    def split_huge(self, k: int) -> None:
        if self.pt.split_huge(k, self.profile.thp_split_mkdirty):
            self.c.ptl += 1

    def uses_markers(self, v: Vma) -> bool:
        return v.uffd is not None and v.uffd.uses_markers(v)

    def _notify(self, what: str, start: int, end: int) -> None:
        if self.observer is not None:
            self.observer(what, start, end)

    def _check_range(self, addr: int, length: int, op: str) -> None:
        if addr % PAGE or length <= 0 or length % PAGE:
            raise ModelError(f"{op}: unaligned or empty range", op=op, start=addr,
                             end=addr + length, errno=22)

    def _require_mapped(self, start: int, end: int, op: str) -> None:
        pos = self._vmas.covered(start, end)
        if pos < end:
            raise ModelError(f"{op}: {pos:#x} is not mapped", op=op, start=start, end=end,
                             errno=12)

    def _vma_for(self, addr: int, write: bool) -> Vma:
        v = self._vmas.find(addr)
        if v is None or not v.prot & (2 if write else 1):
            raise ModelError(f"SIGSEGV: {'write' if write else 'read'} at {addr:#x}",
                             op="write" if write else "read", start=addr, end=addr + PAGE,
                             errno=14)
        return v

    def _free_unmapped_tables(self, start: int, end: int) -> None:
        """free_pgtables(): PTE tables no VMA covers any more."""
        for k in range(start >> PMD_SHIFT, ((end - 1) >> PMD_SHIFT) + 1):
            if k in self.pt and not self.vmas_in(k << PMD_SHIFT, (k + 1) << PMD_SHIFT):
                self.pt.free(k)

    # ----------------------------------------------------------------------- VMA changes
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
        self.c.mmap_lock_write += 1
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
        self._vmas.insert(v)
        v = self._vmas.merge_around(v)
        if self.profile.soft_dirty:
            v.softdirty = True  # mmap_region: "New (or expanded) vma always get soft dirty"
        self._notify("map", addr, addr + length)
        return addr

    def munmap(self, addr: int, length: int) -> None:
        self._check_range(addr, length, "munmap")
        end = addr + length
        self.c.mmap_lock_write += 1
        inside = self._vmas.split(addr, end)
        _event_unmap(inside, addr, end)
        for v in inside:
            zap.zap(self, v, v.start, v.end, discard=False)
            self._vmas.remove(v)
        self._free_unmapped_tables(addr, end)
        self._notify("unmap", addr, end)

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        self._check_range(addr, length, "mprotect")
        end = addr + length
        self._require_mapped(addr, end, "mprotect")
        self.c.mmap_lock_write += 1
        p = PROT[prot]

        def change(v: Vma) -> None:
            v.prot = p
        # mprotect_fixup: a VMA whose flags do not change is left alone ("if (newflags ==
        # oldflags) return 0", mm/mprotect.c): not split, its page tables (and THPs) untouched
        parts = [(max(v.start, addr), min(v.end, end)) for v in self.vmas_in(addr, end)
                 if v.prot != p]
        for lo, hi in parts:
            if not p & 2:
                for k, i, j in chunks(lo, hi):
                    t = self.pt.get(k)
                    if t is not None:
                        if t.huge and not (i == 0 and j == 512):
                            self.split_huge(k)  # change_huge_pmd covers whole PMDs only
                        t.fl[i:j] &= _NOT_RW
                        self.c.ptl += 1
                self.c.tlb_flushes += 1
            self._vmas.modify(lo, hi, change)

    def mremap(self, addr: int, length: int, new_len: int, new_addr: int | None = None) -> int:
        self._check_range(addr, length, "mremap")
        self._check_range(addr, new_len, "mremap")
        end = addr + length
        self.c.mmap_lock_write += 1
        vs = self._vmas.split(addr, end)
        if len(vs) != 1 or vs[0].start != addr or vs[0].end != end:
            raise ModelError("mremap: the range must be one VMA", op="mremap", start=addr,
                             end=end, errno=14)
        v = vs[0]
        if new_len < length and new_addr is None:
            self.munmap(addr + new_len, length - new_len)
            return addr
        if new_addr is None and new_len > length and not self.vmas_in(end, addr + new_len):
            # grow in place (vma_merge_extend / vma_expand): an expanded region is soft-dirty
            v.end = addr + new_len
            if self.profile.soft_dirty:
                v.softdirty = True
            self._vmas.merge_around(v)
            self._notify("map", end, addr + new_len)
            return addr
        return self._mremap_move(v, addr, end, new_len, new_addr)

    def _mremap_move(self, v: Vma, addr: int, end: int, new_len: int,
                     new_addr: int | None) -> int:
        length = end - addr
        dst = new_addr if new_addr is not None else self.get_unmapped_area(new_len)
        if self.vmas_in(dst, dst + new_len):
            self.munmap(dst, new_len)
        ctx = v.uffd
        # mremap_userfaultfd_prep: the uffd context stays only with UFFD_FEATURE_EVENT_REMAP
        # (which then sends UFFD_EVENT_REMAP); without it, it is reset
        remap = ctx is not None and ctx.has(U.UffdFeature.EVENT_REMAP)
        nv = v.clone(dst, dst + new_len, pgoff=v.pgoff, uffd=ctx if remap else None)
        moved = min(length, new_len)
        step = PMD if (addr | dst) % PMD == 0 else PAGE
        for off in range(0, moved, step):
            zap.move_entries(self, addr + off, dst + off, min(step, moved - off), remap)
        self._vmas.remove(v)
        self._vmas.insert(nv)
        self._free_unmapped_tables(addr, end)
        if new_len > length and self.profile.soft_dirty:
            nv.softdirty = True
        self._vmas.merge_around(nv)
        if remap and ctx is not None:
            ctx.event(_msg(U.UffdEvent.REMAP, addr, dst, length))
        if ctx is not None and ctx.has(U.UffdFeature.EVENT_UNMAP):
            # the move unmaps the old range (do_vmi_munmap -> userfaultfd_unmap_prep): an
            # UNMAP after the REMAP (observed on 6.18)
            ctx.event(_msg(U.UffdEvent.UNMAP, addr, end))
        self._notify("unmap", addr, end)
        self._notify("map", dst, dst + new_len)
        return dst

    def madvise(self, addr: int, length: int, advice: str) -> None:
        self._check_range(addr, length, "madvise")
        end = addr + length
        self._require_mapped(addr, end, "madvise")
        if advice in ("HUGEPAGE", "NOHUGEPAGE"):
            self.c.mmap_lock_write += 1
            val = 1 if advice == "HUGEPAGE" else -1

            def change(v: Vma) -> None:
                v.hugepage = val
            self._vmas.modify(addr, end, change)
            return
        self.c.mmap_lock_read += 1
        if advice == "COLLAPSE":
            self.collapse(addr, end)
            return
        for v in self.vmas_in(addr, end):
            lo, hi = max(v.start, addr), min(v.end, end)
            if advice in ("DONTNEED", "REMOVE"):
                if advice == "REMOVE" and not v.shared:
                    raise ModelError("MADV_REMOVE needs a shared mapping", op="madvise",
                                     start=lo, end=hi, errno=22)
                # userfaultfd_remove(): UFFD_EVENT_REMOVE before the zap
                if v.uffd is not None and v.uffd.has(U.UffdFeature.EVENT_REMOVE):
                    v.uffd.event(_msg(U.UffdEvent.REMOVE, lo, hi))
                if advice == "DONTNEED":
                    zap.zap(self, v, lo, hi, reclaim_pt=True)
                else:
                    zap.remove(self, v, lo, hi)
                self._notify("zap", lo, hi)
            elif advice == "FREE":
                if v.anonymous:
                    zap.lazyfree(self, lo, hi)
                    self._notify("zap", lo, hi)
            elif advice == "PAGEOUT":
                zap.reclaim(self, v, lo, hi)
                self._notify("zap", lo, hi)

    def reclaim(self, addr: int, length: int) -> None:
        """Memory pressure on [addr, addr+length): anon pages to swap (lazy-free clean ones
        discarded), file/shmem PTEs unmapped with the page kept in the cache."""
        end = addr + length
        for v in self.vmas_in(addr, end):
            zap.reclaim(self, v, max(v.start, addr), min(v.end, end))
        self._notify("zap", addr, end)

    def collapse(self, start: int, end: int) -> None:
        """MADV_COLLAPSE (6.1) / khugepaged: each whole PMD of [start, end) that is mapped by
        PTEs of one anonymous VMA becomes a THP, unless a PTE is uffd-wp or a marker
        (SCAN_PTE_UFFD_WP) or a none entry is in an armed VMA (SCAN_EXCEED_NONE_PTE)."""
        for k in range(-(-start >> PMD_SHIFT), end >> PMD_SHIFT):
            base = k << PMD_SHIFT
            v = self.find(base)
            t = self.pt.get(k)
            if v is not None and v.shared and v.kind == "shmem" and \
                    v.start <= base and base + PMD <= v.end:
                self._collapse_shmem(v, k)
                continue
            if v is None or not v.anonymous or t is None or t.huge or \
                    not (v.start <= base and base + PMD <= v.end) or \
                    self.profile.thp == "never" or v.hugepage < 0:
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
            fault._anon_vma(self, v)
            self.c.thp_collapses += 1
            self.c.tlb_flushes += 1

    def _collapse_shmem(self, v: Vma, k: int) -> None:
        """collapse_file(): the block becomes one huge folio in the page cache; the small
        folios it replaces are unmapped from every mapping (try_to_unmap: a uffd-wp PTE
        becomes a marker), the content kept (observed on 6.18 for shmem and memfd, also with
        shmem_enabled=never: MADV_COLLAPSE ignores the sysfs setting)."""
        f = v.file
        assert f is not None
        idx = v.page_index(k << PMD_SHIFT)
        if idx % 512 or (idx // 512 < len(f.pmd_folio) and f.pmd_folio[idx // 512]):
            return  # not a PMD-aligned block of the file, or one huge folio already
        for u in self.world.mappers(f):
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
        self.c.thp_collapses += 1

    # ------------------------------------------------------------------------ access
    def write(self, addr: int, length: int = PAGE, tids: tuple[int, ...] = (0,)) -> None:
        end = addr + length
        if length == PAGE:  # the common case, without the chunk loop
            v = self._vma_for(addr, True)
            t = self.pt.get(addr >> PMD_SHIFT)
            n = (addr >> PAGE_SHIFT) & 511
            if t is not None and not t.huge and t.st[n] == PRESENT and \
                    (int(t.fl[n]) & (RW | WP)) == RW:
                fault.store(self, v, t, n, addr)
            else:
                fault.write_page(self, v, addr, tids)
            self._notify("write", addr, end)
            return
        pos = addr
        while pos < end:
            v = self._vma_for(pos, True)
            hi = min(end, v.end)
            for k, i, j in chunks(pos, hi):
                if not self._store_run(v, k, i, j):
                    base = k << PMD_SHIFT
                    for n in range(i, j):
                        fault.write_page(self, v, base + (n << PAGE_SHIFT), tids)
            pos = hi
        self._notify("write", addr, end)

    def _store_run(self, v: Vma, k: int, i: int, j: int) -> bool:
        """Entries i..j of table k all present, writable, not uffd-wp: no fault, the CPU sets
        the dirty bits. False if any would fault."""
        t = self.pt.get(k)
        if t is None or t.huge:
            return False
        fl = t.fl[i:j]
        if not (((fl & (RW | WP)) == RW).all() and (t.st[i:j] == PRESENT).all()):
            return False
        vers = self.world.new_versions(j - i)
        if v.shared and v.file is not None:
            a = v.page_index(k << PMD_SHIFT) + i
            v.file.ver[a:a + j - i] = vers
        else:
            t.ver[i:j] = vers
        fl &= np.uint8(nbits(Bit.LAZYFREE))
        fl |= D
        return True

    def write_pages(self, addrs: np.ndarray) -> None:
        """Single-page writes by one thread at each of ``addrs`` (page addresses, in order):
        the same result as ``write(a)`` for each, vectorised per page table."""
        self._pages(addrs, True)

    def read_pages(self, addrs: np.ndarray) -> None:
        """Single-page reads at each of ``addrs`` (as ``read(a)`` for each)."""
        self._pages(addrs, False)

    def _pages(self, addrs: np.ndarray, write: bool) -> None:
        addrs = np.asarray(addrs, np.int64)
        if not len(addrs):
            return
        vmas = self.vmas
        starts = np.fromiter((v.start for v in vmas), np.int64, len(vmas))
        ends = np.fromiter((v.end for v in vmas), np.int64, len(vmas))
        vi = np.searchsorted(starts, addrs, "right") - 1
        bad = (vi < 0) | (addrs >= ends[np.maximum(vi, 0)])
        if not bad.any():
            need = 2 if write else 1
            prot = np.fromiter((v.prot for v in vmas), np.int64, len(vmas))
            bad = (prot[vi] & need) == 0
        if bad.any():  # the first bad access faults where a program would crash
            first = int(np.flatnonzero(bad)[0])
            self._pages(addrs[:first], write)
            self._vma_for(int(addrs[first]), write)
        key = (vi.astype(np.int64) << 40) | (addrs >> PMD_SHIFT)
        order = np.argsort(key, kind="stable")
        skey = key[order]
        cuts = np.flatnonzero(np.diff(skey)) + 1
        for grp in np.split(order, cuts):
            g0 = int(grp[0])
            v = vmas[int(vi[g0])]
            k = int(addrs[g0]) >> PMD_SHIFT
            if len(grp) < _VECTOR_MIN:  # a few pages: one by one is cheaper
                for a in addrs[grp].tolist():
                    if write:
                        self._write_one(v, a)
                    else:
                        self._read_one(v, a)
                continue
            idx = ((addrs[grp] >> PAGE_SHIFT) & 511).astype(np.intp)
            if write:
                rest = fault.write_table(self, v, k, idx) if fault.vector_ok(v) else \
                    np.arange(len(idx))
                for p in rest.tolist():
                    self._write_one(v, int(addrs[grp[p]]))
            else:
                for p in fault.read_table(self, v, k, idx).tolist():
                    fault.read_page(self, v, int(addrs[grp[p]]))

    def _write_one(self, v: Vma, addr: int) -> None:
        t = self.pt.get(addr >> PMD_SHIFT)
        n = (addr >> PAGE_SHIFT) & 511
        if t is not None and not t.huge and t.st[n] == PRESENT and \
                (int(t.fl[n]) & (RW | WP)) == RW:
            fault.store(self, v, t, n, addr)
        else:
            fault.write_page(self, v, addr, (0,))

    def _read_one(self, v: Vma, addr: int) -> None:
        t = self.pt.get(addr >> PMD_SHIFT)
        if t is None or not (t.huge or t.st[(addr >> PAGE_SHIFT) & 511] == PRESENT):
            fault.read_page(self, v, addr)

    def read(self, addr: int, length: int = PAGE) -> None:
        end = addr + length
        pos = addr
        while pos < end:
            v = self._vma_for(pos, False)
            hi = min(end, v.end)
            for k, i, j in chunks(pos, hi):
                t = self.pt.get(k)
                if t is not None and (t.huge or (t.st[i:j] == PRESENT).all()):
                    continue
                base = k << PMD_SHIFT
                for n in range(i, j):
                    fault.read_page(self, v, base + (n << PAGE_SHIFT))
            pos = hi

    # ------------------------------------------------------------- soft-dirty, processes
    def clear_refs_soft_dirty(self) -> None:
        """clear_refs 4 over the whole mm."""
        self.c.mmap_lock_read += 1
        for v in self.vmas:
            v.softdirty = False
        for t in self.pt.values():
            pres = t.st == PRESENT
            t.fl[pres] &= np.uint8(nbits(RW, SD))
            t.fl[t.st == SWAP] &= np.uint8(nbits(SD))
            self.c.ptl += 1
        self.c.tlb_flushes += 1

    def fork(self) -> Mm:
        """A child process (see the module docstring for what it inherits)."""
        pid = self.pid * 100 + len(self.children) + 1
        while pid in self.world.procs:
            pid += 1
        child = Mm(self.profile, self.world, pid=pid)
        child.parent = self
        self.c.mmap_lock_write += 1
        ctxs: dict[int, UffdCtx] = {}
        for v in self.vmas:
            cctx = _fork_ctx(v.uffd, child, ctxs)
            cv = v.clone(v.start, v.end, pgoff=v.pgoff, uffd=cctx,
                         wp_start=v.wp_start and cctx is not None)
            child._vmas.vmas.append(cv)
            # vma_needs_copy(): a uffd-wp child VMA or one with an anon_vma; the rest is
            # faulted in lazily by the child
            if cctx is not None or v.anon_vma:
                self._copy_range(child, v, keep_wp=cctx is not None)
        child._vmas.reindex()
        child.next_free = self.next_free
        self.children.append(child)
        for parent_ctx in {id(v.uffd): v.uffd for v in self.vmas if v.uffd is not None
                           and id(v.uffd) in ctxs}.values():
            parent_ctx.fork_complete(ctxs[id(parent_ctx)])
        return child

    def _copy_range(self, child: Mm, v: Vma, keep_wp: bool) -> None:
        """copy_page_range(): anon PTEs read-only on both sides (COW)."""
        for k, i, j in chunks(v.start, v.end):
            t = self.pt.get(k)
            if t is None:
                continue
            ct = child.pt.alloc(k)
            if t.huge:
                ct.huge = True
            ct.st[i:j] = t.st[i:j]
            ct.ver[i:j] = t.ver[i:j]
            cow = (t.st[i:j] == PRESENT) & ((t.fl[i:j] & ANON) != 0)
            t.fl[i:j][cow] &= _NOT_RW
            cfl = t.fl[i:j].copy()
            if not keep_wp:
                cfl &= _NOT_WP  # the child VMA is not registered: the bit is dropped
                mk = ct.st[i:j] == MARKER
                ct.st[i:j][mk] = NONE
                cfl[mk] = 0
            ct.fl[i:j] = cfl

    def child_exit(self) -> None:
        if self.children:
            self.children.pop().exit()

    def exit(self) -> None:
        for v in list(self.vmas):
            self.munmap(v.start, v.end - v.start)
        for ch in list(self.children):
            ch.parent = None
        self.children.clear()
        self.world.procs.pop(self.pid, None)
        if self.parent is not None and self in self.parent.children:
            self.parent.children.remove(self)

    # ------------------------------------------------------------------------ content
    def content(self, start: int, end: int) -> np.ndarray:
        """The content version of every page of [start, end): 0 zero, -1 unmapped. A shared
        page's content is its memory object's, whoever wrote it."""
        n = (end - start) >> PAGE_SHIFT
        out = np.full(n, -1, np.int64)
        for v in self.vmas_in(start, end):
            lo, hi = max(v.start, start), min(v.end, end)
            for k, i, j in chunks(lo, hi):
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


def _msg(event: U.UffdEvent, a: int, b: int, c: int = 0):  # type: ignore[no-untyped-def]
    from ..kernel.uffd import UffdMsg
    return UffdMsg(event, a, b, c)


def _event_unmap(vmas: list[Vma], start: int, end: int) -> None:
    """userfaultfd_unmap_prep(): one UFFD_EVENT_UNMAP per context with EVENT_UNMAP."""
    seen: set[int] = set()
    for v in vmas:
        ctx = v.uffd
        if ctx is not None and ctx.has(U.UffdFeature.EVENT_UNMAP) and id(ctx) not in seen:
            seen.add(id(ctx))
            ctx.event(_msg(U.UffdEvent.UNMAP, start, end))


def _fork_ctx(ctx: UffdCtx | None, child: Mm, made: dict[int, UffdCtx]) -> UffdCtx | None:
    """dup_userfaultfd(): the child's context for a VMA registered with ``ctx`` (None
    without UFFD_FEATURE_EVENT_FORK)."""
    if ctx is None or not ctx.has(U.UffdFeature.EVENT_FORK):
        return None
    got = made.get(id(ctx))
    if got is None:
        got = made[id(ctx)] = ctx.fork_child(child)
    return got


_ = File
__all__ = ["Mm", "ModelError", "Observer"]
