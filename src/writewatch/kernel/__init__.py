"""Layer 2: kernel calls. The :class:`KernelCalls` seam and its real implementation.

Backends talk to the kernel only through a ``KernelCalls`` object. :data:`LINUX` makes the
real calls; :class:`writewatch.model.ModelKernel` implements the same methods over a model of
the kernel's state, so the same tracker code runs on either (the way pyroute2's in-memory
engine stands in for a netlink socket).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np

from .._uapi import MS_ASYNC
from . import _sys, pagemap, probes, procfs, procmem, softdirty, stop, uffd
from .pagemap import ScanResult
from .probes import Capabilities
from .procfs import Mapping
from .uffd import ApiResult, UffdMsg

__all__ = ["LINUX", "ApiResult", "Capabilities", "KernelCalls", "LinuxKernel", "Mapping",
           "ScanResult", "UffdMsg"]


class KernelCalls(Protocol):
    """The kernel operations the backends use; each is one system call (or /proc read)."""

    page_size: int

    def userfaultfd(self, flags: int) -> int: ...
    def uffdio_api(self, fd: int, features: int) -> ApiResult: ...
    def uffdio_register(self, fd: int, start: int, length: int, mode: int) -> int: ...
    def uffdio_unregister(self, fd: int, start: int, length: int) -> None: ...
    def uffdio_writeprotect(self, fd: int, start: int, length: int, mode: int) -> None: ...
    def uffdio_wake(self, fd: int, start: int, length: int) -> None: ...
    def read_uffd_msgs(self, fd: int) -> tuple[UffdMsg, ...]: ...
    def open_pagemap(self, pid: int | str) -> int: ...
    def pagemap_scan(self, fd: int, start: int, end: int, *, flags: int = 0,
                     category_mask: int = 0, category_inverted: int = 0,
                     category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                     vec_len: int = ...) -> ScanResult: ...
    def scan_all(self, fd: int, start: int, end: int, *, batch: int = 4096, flags: int = 0,
                 category_mask: int = 0, category_inverted: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 page_size: int = ...) -> ScanResult:
        """PAGEMAP_SCAN over the whole range, resuming from ``walk_end`` until done (the
        keywords of :func:`writewatch.kernel.pagemap.scan_all`)."""
    def pagemap_read(self, fd: int, start: int, npages: int) -> np.ndarray: ...
    def process_vm_readv(self, pid: int, runs: np.ndarray, out: np.ndarray) -> None:
        """Copy the ``(k, 2)`` [start, end) ranges of process ``pid`` into ``out``."""
    def read_maps(self, pid: int | str) -> tuple[Mapping, ...]: ...
    def vma_flags(self, pid: int | str) -> tuple[tuple[int, int, frozenset[str]], ...]:
        """``(start, end, VmFlags)`` of every VMA (/proc/PID/smaps)."""
    def is_mapped(self, pid: int | str, start: int, length: int) -> bool: ...
    def clear_refs(self, pid: int | str, value: int) -> None: ...
    def read_then_clear(self, fd: int, ranges: Sequence[tuple[int, int]], scan_mask: int,
                        clear: bool) -> list[np.ndarray | None]:
        """This process's soft-dirty state of each range, then clear_refs 4, with no other
        thread of this interpreter running in between (:mod:`.softdirty`)."""
    def stopped(self, pid: int, how: str = "auto") -> AbstractContextManager[str]:
        """Hold every thread of ``pid`` stopped (:func:`.stop.stopped`)."""
    def capabilities(self, refresh: bool = False) -> Capabilities:
        """What this kernel offers (:mod:`.probes`)."""
    def close(self, fd: int) -> None: ...


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.scanner = pagemap.Scanner()  # its result buffer (built on first use per thread)


class LinuxKernel:
    """:class:`KernelCalls` on the running kernel."""

    page_size: int = os.sysconf("SC_PAGE_SIZE")

    def __init__(self) -> None:
        self._local = _PerThread()
        self._lock = threading.Lock()
        self._capabilities: Capabilities | None = None

    def capabilities(self, refresh: bool = False) -> Capabilities:
        """Probed at the first call (a few ms), then kept; ``refresh`` probes again."""
        with self._lock:
            if refresh or self._capabilities is None:
                self._capabilities = probes.probe(self)
            return self._capabilities

    userfaultfd = staticmethod(uffd.userfaultfd)
    uffdio_api = staticmethod(uffd.api)
    uffdio_register = staticmethod(uffd.register)
    uffdio_unregister = staticmethod(uffd.unregister)
    uffdio_writeprotect = staticmethod(uffd.writeprotect)
    uffdio_wake = staticmethod(uffd.wake)
    read_uffd_msgs = staticmethod(uffd.read_msgs)
    open_pagemap = staticmethod(pagemap.open_pagemap)
    read_maps = staticmethod(procfs.read_maps)
    vma_flags = staticmethod(procfs.vma_flags)
    clear_refs = staticmethod(procfs.clear_refs)
    stopped = staticmethod(stop.stopped)
    close = staticmethod(_sys.close)

    def pagemap_scan(self, fd: int, start: int, end: int, **kw: int) -> ScanResult:
        return self._local.scanner(fd, start, end, **kw)

    def scan_all(self, fd: int, start: int, end: int, *, batch: int = 4096, flags: int = 0,
                 category_mask: int = 0, category_inverted: int = 0,
                 category_anyof_mask: int = 0, return_mask: int = 0, max_pages: int = 0,
                 page_size: int = pagemap.PAGE_SIZE) -> ScanResult:
        """:func:`pagemap.scan_all` into one growing per-thread buffer."""
        return self._local.scanner.scan_all(
            fd, start, end, batch=batch, flags=flags, category_mask=category_mask,
            category_inverted=category_inverted, category_anyof_mask=category_anyof_mask,
            return_mask=return_mask, max_pages=max_pages, page_size=page_size)

    process_vm_readv = staticmethod(procmem.process_vm_readv)

    def pagemap_read(self, fd: int, start: int, npages: int) -> np.ndarray:
        return pagemap.read_entries(fd, start, npages, self.page_size)

    def read_then_clear(self, fd: int, ranges: Sequence[tuple[int, int]], scan_mask: int,
                        clear: bool) -> list[np.ndarray | None]:
        return softdirty.read_then_clear(fd, ranges, self.page_size, scan_mask, clear)

    def is_mapped(self, pid: int | str, start: int, length: int) -> bool:
        """Whether every page of the range is mapped in ``pid``.

        In this process: msync(MS_ASYNC) walks VMAs only (no page tables) and fails with
        ENOMEM when part of the range is unmapped; it writes nothing back (mm/msync.c: a no-op
        for MS_ASYNC since 2.6.19). Elsewhere: /proc/PID/maps."""
        if pid == "self" or pid == os.getpid():
            return _sys.msync(start, length, MS_ASYNC) == 0
        return procfs.coverage(procfs.read_maps(pid), start, start + length) == \
            [(start, start + length)]


#: The running kernel (its scan buffers are per thread).
LINUX = LinuxKernel()
