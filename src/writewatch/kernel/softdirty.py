"""Reading this process's soft-dirty bits and resetting them in one step.

Pages read clean and then written before ``clear_refs`` is written would be lost (the reset
clears their bit). The reads (``pread`` of pagemap, or the ``PAGEMAP_SCAN`` ioctl) and the
``clear_refs`` write are therefore made by one C-level iteration, ``list(map(partial.__call__,
calls))``, over libc functions loaded with :class:`ctypes.PyDLL`, which does not release the
GIL around the call. No bytecode runs between the calls (the cyclic garbage collector, whose
finalizers are bytecode, is paused), so the interpreter never checks for a GIL drop request
there: no other Python thread runs from the first read to the reset. Native threads that
released the GIL are not covered (see :mod:`writewatch.backends.soft_dirty`).
"""

from __future__ import annotations

import ctypes
import errno as E
import functools
import gc
import os
from collections.abc import Sequence

import numpy as np

from .. import _uapi as U
from . import _sys

__all__ = ["read_then_clear"]

# libc entry points that keep the GIL while they run (ctypes.PyDLL: FUNCFLAG_PYTHONAPI).
# errno is per call: only checked through the results.
_pylibc = ctypes.PyDLL(None, use_errno=True)  # the interpreter's C library (dlopen(NULL))
_pread = _pylibc.pread64
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
_pread.restype = ctypes.c_ssize_t
_write = _pylibc.write
_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_write.restype = ctypes.c_ssize_t
_ioctl = _pylibc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int
_CLEAR_SOFT_DIRTY = b"%d" % U.CLEAR_REFS_SOFT_DIRTY
_CALL = functools.partial.__call__


def _run_holding_gil(calls: Sequence[functools.partial[int]]) -> list[int]:
    """Call each ``partial`` of a PyDLL function in order, the GIL held from first to last:
    ``list`` drives ``map`` in C and ``partial.__call__`` calls the foreign function in C."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(map(_CALL, calls))
    finally:
        if enabled:
            gc.enable()


def read_then_clear(pagemap_fd: int, ranges: Sequence[tuple[int, int]], page_size: int,
                    scan_mask: int, clear: bool) -> list[np.ndarray | None]:
    """For each ``[start, end)`` of this process: the ``(k, 3)`` PAGEMAP_SCAN regions of the
    ``scan_mask`` categories (``scan_mask`` 0: the classic 64-bit pagemap entries, one per
    page), or None where the read failed; then, with ``clear``, write 4 to
    /proc/self/clear_refs — no other Python thread running in between."""
    calls: list[functools.partial[int]] = []
    keep: list[tuple[np.ndarray, ctypes.Array[ctypes.c_char] | None]] = []
    for start, end in ranges:
        n = (end - start) // page_size
        if scan_mask:
            vec = np.empty((n, 3), np.uint64)
            arg = ctypes.create_string_buffer(U.PM_SCAN_ARG_SIZE)
            U.PM_SCAN_ARG_STRUCT.pack_into(arg, 0, U.PM_SCAN_ARG_SIZE, 0, start, end, 0,
                                           vec.ctypes.data, n, 0, 0, 0, 0, scan_mask)
            calls.append(functools.partial(_ioctl, pagemap_fd, U.PAGEMAP_SCAN,
                                           ctypes.addressof(arg)))
            keep.append((vec, arg))
        else:
            raw = np.empty(n, np.uint64)
            calls.append(functools.partial(_pread, pagemap_fd, raw.ctypes.data, n * 8,
                                           start // page_size * 8))
            keep.append((raw, None))
    clear_fd = -1
    if clear:
        clear_fd = _sys.os_call("open /proc/self/clear_refs", os.open, "/proc/self/clear_refs",
                                os.O_WRONLY | os.O_CLOEXEC)
        calls.append(functools.partial(_write, clear_fd, _CLEAR_SOFT_DIRTY,
                                       len(_CLEAR_SOFT_DIRTY)))
    try:
        results = _run_holding_gil(calls)
        if clear and results[-1] != len(_CLEAR_SOFT_DIRTY):
            _sys.raise_errno(ctypes.get_errno() or E.EIO, "write /proc/self/clear_refs")
    finally:
        if clear_fd >= 0:
            _sys.close(clear_fd)
    out: list[np.ndarray | None] = []
    for (start, end), (buf, _arg), rc in zip(ranges, keep, results, strict=False):
        n = (end - start) // page_size
        if scan_mask:
            out.append(buf[:rc] if rc >= 0 else None)
        else:
            out.append(buf if rc == n * 8 else None)
    return out
