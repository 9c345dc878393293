"""``/proc/PID/pagemap``: the PAGEMAP_SCAN ioctl (6.7+) and the classic 64-bit entries.

Sources: include/uapi/linux/fs.h, fs/proc/task_mmu.c, Documentation/admin-guide/mm/pagemap.rst.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from .. import _uapi as U
from .. import errors
from . import _sys, procfs

_SCAN_ERRORS: _sys.ErrMap = {
    E.ENOTTY: (errors.Unsupported, "PAGEMAP_SCAN needs Linux 6.7 or newer"),
    E.EPERM: (errors.NotRegistered,
              "PM_SCAN_CHECK_WPASYNC: part of the range is mapped but not registered for "
              "async write-protect (it was remapped while tracked)"),
    E.ESRCH: (errors.NoSuchProcess, None),
}

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: dtype of a ``struct page_region`` array
PAGE_REGION_DTYPE = np.dtype([("start", "<u8"), ("end", "<u8"), ("categories", "<u8")])


def open_pagemap(pid: int | str = "self") -> int:
    """Open ``/proc/PID/pagemap`` read-only (enough for PAGEMAP_SCAN, write-protect included)."""
    return int(_sys.os_call(f"open /proc/{pid}/pagemap", os.open, f"/proc/{pid}/pagemap",
                            os.O_RDONLY | os.O_CLOEXEC, errmap=procfs.PROC_ERRORS,
                            pid=pid if isinstance(pid, int) else os.getpid()))


class ScanResult(NamedTuple):
    """What one PAGEMAP_SCAN call returned."""

    regions: np.ndarray  #: (k, 3) uint64: start, end (exclusive), categories & return_mask
    walk_end: int  #: first address not examined (== end when the walk completed)


class ScanFn(Protocol):
    def __call__(self, fd: int, start: int, end: int, *, flags: int = 0,
                 category_mask: int = 0, category_inverted: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 vec_len: int = ...) -> ScanResult: ...


#: flags of a get + write-protect that fails on an unregistered VMA
_WP_CHECKED = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)
#: regions the first call of a checked write-protect scan may return (its end column is
#: cleared first: a smaller first batch keeps that cheap on the common, small result)
_FIRST = 256
_NONE = np.empty((0, 3), np.uint64)
_NONE.flags.writeable = False


#: 16 raw bytes: a region's start and end, copied as one item
_PAIR = np.dtype("V16")


def ranges(regions: np.ndarray) -> np.ndarray:
    """The ``(k, 2)`` [start, end) columns of ``(k, 3)`` scan regions, as one C-contiguous
    copy (pure). numpy copies a column slice of a few thousand rows item by item, ~4x slower
    than copying each row's first 16 bytes as one item."""
    k = len(regions)
    if k < 64 or not regions.flags.c_contiguous or regions.shape[1:] != (3,) or \
            regions.dtype != np.uint64:
        return np.ascontiguousarray(regions[:, :2])
    pairs = np.ndarray((k,), _PAIR, buffer=regions, strides=(regions.strides[0],))
    out: np.ndarray = pairs.copy().view(np.uint64).reshape(k, 2)
    return out


class Scanner:
    """PAGEMAP_SCAN with a reusable result buffer.

    A result buffer is always passed: a ``vec_len=0`` write-protect call on a partially
    covered THP oopses kernels before 6.17 (Jakub Acs, "fs/proc/task_mmu: check p->vec_buf
    for NULL")."""

    vec: np.ndarray  #: (n, 3) uint64 result buffer; grows as needed

    def __init__(self, batch: int = 4096) -> None:
        self._grow(max(batch, 1), 0)
        self._arg = ctypes.create_string_buffer(U.PM_SCAN_ARG_SIZE)
        self._addr = ctypes.addressof(self._arg)
        self._walk_end = ctypes.c_uint64.from_buffer(self._arg, U.PM_SCAN_ARG_WALK_END_OFFSET)

    def _grow(self, n: int, keep: int) -> None:
        vec = np.zeros((n, 3), dtype=np.uint64)
        if keep:
            vec[:keep] = self.vec[:keep]
        self.vec = vec
        self._vec_addr = vec.ctypes.data  # (.ctypes builds an object: microseconds a call)
        #: every entry from here on has a zero end (the buffer starts zeroed; raised by what
        #: the kernel writes)
        self._clean = keep

    def _ioctl(self, fd: int, start: int, end: int, at: int, n: int, flags: int,
               category_mask: int, category_inverted: int, category_anyof_mask: int,
               return_mask: int, max_pages: int) -> tuple[int, int]:
        """One ioctl writing up to ``n`` regions at ``self.vec[at:]``: (count, walk_end)."""
        if at + n > len(self.vec):
            self._grow(max(at + n, 2 * len(self.vec)), at)
        U.PM_SCAN_ARG_STRUCT.pack_into(
            self._arg, 0, U.PM_SCAN_ARG_SIZE, flags, start, end, 0,
            self._vec_addr + at * U.PAGE_REGION_SIZE if n else 0, n, max_pages,
            category_inverted, category_mask, category_anyof_mask, return_mask)
        wp = flags & _WP_CHECKED == _WP_CHECKED
        if wp and at < self._clean:
            # an EPERM after write-protecting part of the range still copies out what it
            # found: marked by a non-zero end (errors.NotRegistered)
            self.vec[at:self._clean, 1] = 0
            self._clean = at
        try:
            count = _sys.ioctl_at("PAGEMAP_SCAN", fd, U.PAGEMAP_SCAN, self._addr, start, end,
                                  _SCAN_ERRORS)
        except errors.WriteWatchError as exc:
            if wp and isinstance(exc, errors.NotRegistered):
                got = self.vec[at:at + n, 1]
                k = int(np.argmin(got != 0)) if (got == 0).any() else n
                exc.partial = self.vec[:at + k].copy()
            self._clean = max(self._clean, at + n)  # what it wrote is not known
            raise
        if count:
            self._clean = max(self._clean, at + count)
        return count, self._walk_end.value

    def __call__(self, fd: int, start: int, end: int, *, flags: int = 0,
                 category_mask: int = 0, category_inverted: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 vec_len: int | None = None) -> ScanResult:
        """One PAGEMAP_SCAN ioctl."""
        n = len(self.vec) if vec_len is None else vec_len
        count, walk_end = self._ioctl(fd, start, end, 0, n, flags, category_mask,
                                      category_inverted, category_anyof_mask, return_mask,
                                      max_pages)
        return ScanResult(self.vec[:count].copy(), walk_end)

    def scan_all(self, fd: int, start: int, end: int, *, batch: int = 4096, flags: int = 0,
                 category_mask: int = 0, category_inverted: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 page_size: int = PAGE_SIZE) -> ScanResult:
        """:func:`scan_all` with each ioctl writing straight after the previous one's
        regions in one growing buffer (no per-batch copies)."""
        first = min(batch, _FIRST) if flags & _WP_CHECKED == _WP_CHECKED else batch
        count, walk_end = self._ioctl(fd, start, end, 0, first, flags, category_mask,
                                      category_inverted, category_anyof_mask, return_mask,
                                      max_pages)
        if count < first or walk_end >= end:  # the common case: one call said it all
            return ScanResult(self.vec[:count].copy() if count else _NONE, walk_end)
        filled = count
        found = int((self.vec[:count, 1] - self.vec[:count, 0]).sum()) // page_size \
            if max_pages else 0
        if max_pages and found >= max_pages:
            return ScanResult(self.vec[:filled].copy(), walk_end)

        def step(pos: int, limit: int) -> tuple[np.ndarray, int]:
            nonlocal filled
            count, walk_end = self._ioctl(fd, pos, end, filled, batch, flags, category_mask,
                                          category_inverted, category_anyof_mask,
                                          return_mask, limit)
            filled += count
            return self.vec[filled - count:filled], walk_end

        walk_end = _walk(step, walk_end, end, batch, max_pages - found if max_pages else 0,
                         page_size)
        return ScanResult(self.vec[:filled].copy(), walk_end)


def _walk(step: Callable[[int, int], tuple[np.ndarray, int]], start: int, end: int,
          batch: int, max_pages: int, page_size: int) -> int:
    """The ``walk_end`` continuation loop: call ``step(pos, max_pages_left)`` until the range
    is done, the buffer stopped filling, or ``max_pages`` pages were found. Returns the final
    ``walk_end``."""
    found = 0
    pos = start
    while True:
        regions, walk_end = step(pos, max_pages - found if max_pages else 0)
        if max_pages and len(regions):
            found += int((regions[:, 1] - regions[:, 0]).sum()) // page_size
        if walk_end >= end or (max_pages and found >= max_pages):
            return walk_end
        if len(regions) < batch:
            return walk_end  # stopped without filling the buffer: the rest has no match
        if walk_end <= pos:
            raise errors.KernelError("PAGEMAP_SCAN made no progress", op="PAGEMAP_SCAN",
                                     start=pos, end=end)
        pos = walk_end


def scan_all(scan: ScanFn, fd: int, start: int, end: int, *, batch: int = 4096,
             flags: int = 0, category_mask: int = 0, category_inverted: int = 0,
             category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
             page_size: int = PAGE_SIZE) -> ScanResult:
    """PAGEMAP_SCAN over the whole range, resuming from ``walk_end`` each time ``batch``
    regions filled the buffer (fs/proc/task_mmu.c stops with ENOSPC and sets ``walk_end`` to
    the first matching page it could not report). With ``max_pages`` the walk stops once
    that many pages were found; ``walk_end`` then says where to resume.

    ``scan`` is one PAGEMAP_SCAN call (a :class:`Scanner` is used directly). Code with a
    :class:`~writewatch.kernel.KernelCalls` calls its ``scan_all`` instead."""
    kw = {"batch": batch, "flags": flags, "category_mask": category_mask,
          "category_inverted": category_inverted, "category_anyof_mask": category_anyof_mask,
          "return_mask": return_mask, "max_pages": max_pages, "page_size": page_size}
    fast = getattr(scan, "scan_all", None)
    if fast is not None:
        return fast(fd, start, end, **kw)  # type: ignore[no-any-return]
    chunks: list[np.ndarray] = []

    def step(pos: int, limit: int) -> tuple[np.ndarray, int]:
        res = scan(fd, pos, end, flags=flags, category_mask=category_mask,
                   category_inverted=category_inverted, category_anyof_mask=category_anyof_mask,
                   return_mask=return_mask, max_pages=limit, vec_len=batch)
        chunks.append(res.regions)
        return res.regions, res.walk_end

    walk_end = _walk(step, start, end, batch, max_pages, page_size)
    regions = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return ScanResult(regions, walk_end)


# ---------------------------------------------------------------------------------------------
# Classic entries

PAGEMAP_ENTRY_DTYPE = np.dtype([
    ("present", "?"), ("swapped", "?"), ("file_shared", "?"), ("exclusive", "?"),
    ("uffd_wp", "?"), ("soft_dirty", "?"), ("guard", "?"), ("pfn", "<u8"),
])


def read_entries(fd: int, start: int, npages: int, page_size: int) -> np.ndarray:
    """Raw 64-bit entries for ``npages`` pages from ``start`` (reads are 8-byte aligned)."""
    want = npages * U.PM_ENTRY_SIZE
    off = (start // page_size) * U.PM_ENTRY_SIZE
    parts = []
    while want:
        data = _sys.os_call("read pagemap", os.pread, fd, min(want, 1 << 24), off,
                            start=start, end=start + npages * page_size)
        if not data:
            break
        parts.append(data)
        want -= len(data)
        off += len(data)
    return np.frombuffer(b"".join(parts), dtype="<u8")


def decode_entries(raw: np.ndarray) -> np.ndarray:
    """Decode raw pagemap entries (pure, vectorised) into :data:`PAGEMAP_ENTRY_DTYPE`."""
    raw = np.asarray(raw, dtype=np.uint64)
    out = np.empty(raw.shape, PAGEMAP_ENTRY_DTYPE)

    def bit(b: int) -> np.ndarray:
        out: np.ndarray = (raw & np.uint64(b)) != 0
        return out

    out["present"] = bit(U.PagemapBit.PRESENT)
    out["swapped"] = bit(U.PagemapBit.SWAPPED)
    out["file_shared"] = bit(U.PagemapBit.FILE_SHARED)
    out["exclusive"] = bit(U.PagemapBit.MMAP_EXCLUSIVE)
    out["uffd_wp"] = bit(U.PagemapBit.UFFD_WP)
    out["soft_dirty"] = bit(U.PagemapBit.SOFT_DIRTY)
    out["guard"] = bit(U.PagemapBit.GUARD_REGION)
    out["pfn"] = np.where(out["present"], raw & np.uint64(U.PM_PFRAME_MASK), 0)
    return out
