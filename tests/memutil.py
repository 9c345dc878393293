"""Test helpers: raw memory regions made with mmap(2), and kernel-feature skips."""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np
import pytest

from writewatch.kernel import _sys

PAGE = os.sysconf("SC_PAGE_SIZE")
#: running in a kernel-matrix guest (tools/kernel_matrix.py sets the variable): an emulated
#: CPU, 20-50x slower than the host, where long randomized tests take fewer rounds
IN_GUEST = bool(os.environ.get("WRITEWATCH_KERNEL_MATRIX"))
RW = mmap.PROT_READ | mmap.PROT_WRITE


class Region:
    """``npages`` pages of memory mapped with mmap(2), unmapped at teardown."""

    def __init__(self, npages: int, *, flags: int = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                 fd: int = -1, prot: int = RW, align: int = 0) -> None:
        self.npages = npages
        self.length = npages * PAGE
        extra = align if align else 0
        self._raw = _sys.mmap(0, self.length + extra, prot, flags, fd)
        self.addr = -(-self._raw // align) * align if align else self._raw
        self._rawlen = self.length + extra

    def page(self, i: int) -> int:
        return self.addr + i * PAGE

    def write(self, i: int, value: int = 1, offset: int = 0, n: int = 1) -> None:
        ctypes.memset(self.page(i) + offset, value, n)

    def read(self, i: int) -> int:
        return ctypes.c_uint8.from_address(self.page(i)).value

    def array(self) -> np.ndarray:
        buf = (ctypes.c_uint8 * self.length).from_address(self.addr)
        return np.ctypeslib.as_array(buf)

    @property
    def span(self) -> tuple[int, int]:
        return (self.addr, self.length)

    def pages(self, idx) -> set[int]:
        return {self.page(i) for i in idx}

    def unmap(self) -> None:
        if self._rawlen:
            _sys.munmap(self._raw, self._rawlen)
            self._rawlen = 0


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def require_uffd_async() -> None:
    import writewatch
    f = writewatch.features()
    b = f.backends["uffd-async"]
    if not b.usable:
        pytest.skip(f"uffd-async backend unusable here: {b.detail} ({b.fix or ''})")


