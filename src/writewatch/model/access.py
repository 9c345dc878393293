"""Loads and stores of a program: writes and reads of ranges, and single-page accesses in
vectorised batches (the same result as one by one), on an :class:`AddressSpace`.

A store to a present, writable PTE without the uffd-wp bit lands without a fault (the CPU
sets the dirty bit); every other access takes the fault paths of :mod:`.fault`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import fault
from .pte import LAZY, PAGE, PAGE_SHIFT, PMD_SHIFT, PRESENT, RW, WP, D, nbits

if TYPE_CHECKING:
    from .space import AddressSpace
    from .vma import Vma

#: groups of single-page accesses to one page table smaller than this go one by one
_VECTOR_MIN = 12
_NOT_LAZY = np.uint8(nbits(LAZY))


def write(mm: AddressSpace, addr: int, length: int = PAGE,
          tids: tuple[int, ...] = (0,)) -> None:
    """Every page of [addr, addr+length) written, by the threads ``tids`` at once."""
    end = addr + length
    if length == PAGE:  # the common case, without the chunk loop
        _write_one(mm, mm.vma_for(addr, True), addr, tids)
        mm.notify("write", addr, end)
        return
    pos = addr
    while pos < end:
        v = mm.vma_for(pos, True)
        hi = min(end, v.end)
        for k, i, j in mm.chunks(pos, hi):
            if not _store_run(mm, v, k, i, j):
                base = k << PMD_SHIFT
                for n in range(i, j):
                    fault.write_page(mm, v, base + (n << PAGE_SHIFT), tids)
        pos = hi
    mm.notify("write", addr, end)


def _store_run(mm: AddressSpace, v: Vma, k: int, i: int, j: int) -> bool:
    """Entries i..j of table k all present, writable, not uffd-wp: no fault, the CPU sets the
    dirty bits. False if any would fault."""
    t = mm.pt.get(k)
    if t is None or t.huge:
        return False
    fl = t.fl[i:j]
    if not (((fl & (RW | WP)) == RW).all() and (t.st[i:j] == PRESENT).all()):
        return False
    vers = mm.world.new_versions(j - i)
    if v.shared and v.file is not None:
        a = v.page_index(k << PMD_SHIFT) + i
        v.file.ver[a:a + j - i] = vers
    else:
        t.ver[i:j] = vers
    fl &= _NOT_LAZY
    fl |= D
    return True


def read(mm: AddressSpace, addr: int, length: int = PAGE) -> None:
    end = addr + length
    pos = addr
    while pos < end:
        v = mm.vma_for(pos, False)
        hi = min(end, v.end)
        for k, i, j in mm.chunks(pos, hi):
            t = mm.pt.get(k)
            if t is not None and (t.huge or (t.st[i:j] == PRESENT).all()):
                continue
            base = k << PMD_SHIFT
            for n in range(i, j):
                fault.read_page(mm, v, base + (n << PAGE_SHIFT))
        pos = hi


def pages(mm: AddressSpace, addrs: np.ndarray, write: bool) -> None:
    """Single-page writes (or reads) by one thread at each of ``addrs`` (page addresses, in
    order): the same result as one :func:`write` (:func:`read`) each, vectorised per page
    table."""
    addrs = np.asarray(addrs, np.int64)
    if not len(addrs):
        return
    vmas = mm.vmas
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
        pages(mm, addrs[:first], write)
        mm.vma_for(int(addrs[first]), write)
    key = (vi.astype(np.int64) << 40) | (addrs >> PMD_SHIFT)
    order = np.argsort(key, kind="stable")
    cuts = (np.flatnonzero(np.diff(key[order])) + 1).tolist()
    for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
        grp = order[lo:hi]
        g0 = int(grp[0])
        v = vmas[int(vi[g0])]
        if len(grp) < _VECTOR_MIN:  # a few pages: one by one is cheaper
            for a in addrs[grp].tolist():
                if write:
                    _write_one(mm, v, a)
                else:
                    _read_one(mm, v, a)
            continue
        k = int(addrs[g0]) >> PMD_SHIFT
        idx = ((addrs[grp] >> PAGE_SHIFT) & 511).astype(np.intp)
        if write:
            rest = fault.write_table(mm, v, k, idx) if fault.vector_ok(v) else \
                np.arange(len(idx))
            for p in rest.tolist():
                _write_one(mm, v, int(addrs[grp[p]]))
        else:
            for p in fault.read_table(mm, v, k, idx).tolist():
                fault.read_page(mm, v, int(addrs[grp[p]]))


def _write_one(mm: AddressSpace, v: Vma, addr: int, tids: tuple[int, ...] = (0,)) -> None:
    t = mm.pt.get(addr >> PMD_SHIFT)
    n = (addr >> PAGE_SHIFT) & 511
    if t is not None and not t.huge and t.st[n] == PRESENT and \
            (int(t.fl[n]) & (RW | WP)) == RW:
        fault.store(mm, v, t, n, addr)
    else:
        fault.write_page(mm, v, addr, tids)


def _read_one(mm: AddressSpace, v: Vma, addr: int) -> None:
    t = mm.pt.get(addr >> PMD_SHIFT)
    if t is None or not (t.huge or t.st[(addr >> PAGE_SHIFT) & 511] == PRESENT):
        fault.read_page(mm, v, addr)


__all__ = ["pages", "read", "write"]
