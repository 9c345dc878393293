"""Helpers of the kernel-layer tests: those of tools/testing/selftests/mm/pagemap_ioctl.c
(init_uffd, wp_init, wp_free, wp_addr_range, pagemap_ioctl, gethugepage) on top of
:mod:`writewatch.kernel`."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator

import numpy as np
import pytest

from writewatch import _uapi as U
from writewatch import errors
from writewatch.kernel import _sys, pagemap, procfs, uffd

PAGE = os.sysconf("SC_PAGE_SIZE")
HPAGE = procfs.thp_pmd_size() or 2 << 20
RW = mmap.PROT_READ | mmap.PROT_WRITE
ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS

C = U.PageCategory
WRITTEN = int(C.WRITTEN)
#: PAGEMAP_BITS_ALL / PAGEMAP_NON_WRITTEN_BITS of pagemap_ioctl.c
BITS_ALL = int(C.WPALLOWED | C.WRITTEN | C.FILE | C.PRESENT | C.SWAPPED | C.PFNZERO | C.HUGE)
NON_WRITTEN_BITS = BITS_ALL & ~WRITTEN
WP = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)
U64_MAX = (1 << 64) - 1  # what the selftest's int -1 becomes in a __u64 field

#: features pagemap_ioctl.c init_uffd() asks for (and skips the whole file without)
SELFTEST_FEATURES = int(U.UffdFeature.WP_UNPOPULATED | U.UffdFeature.WP_ASYNC
                        | U.UffdFeature.WP_HUGETLBFS_SHMEM)


def as_bytes(addr: int, length: int) -> np.ndarray:
    """A writable uint8 view of ``length`` bytes at ``addr``."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * length).from_address(addr))


def lens(regions: np.ndarray) -> list[int]:
    """LEN(region) of every region, in pages."""
    return [int(e - s) // PAGE for s, e, _ in regions]


class Pm:
    """One async-WP userfaultfd and one /proc/self/pagemap descriptor, as in the selftest."""

    def __init__(self) -> None:
        self.uffd = uffd.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
        try:
            self.api = uffd.api(self.uffd, SELFTEST_FEATURES)
        except errors.WriteWatchError:
            _sys.close(self.uffd)
            raise
        self.fd = pagemap.open_pagemap("self")
        self.scanner = pagemap.Scanner()

    def close(self) -> None:
        _sys.close(self.fd)
        _sys.close(self.uffd)

    # -- wp_init / wp_free / wp_addr_range ------------------------------------------------
    def wp_init(self, addr: int, length: int) -> None:
        ioctls = uffd.register(self.uffd, addr, length, U.UffdRegisterMode.WP)
        assert ioctls & (1 << U._UFFDIO_WRITEPROTECT), "ioctl set is incorrect"
        uffd.writeprotect(self.uffd, addr, length, U.UffdWriteprotectMode.WP)

    def wp_free(self, addr: int, length: int) -> None:
        uffd.unregister(self.uffd, addr, length)

    def wp_addr_range(self, addr: int, length: int) -> None:
        # The selftest passes vec=NULL here. A vec_len=0 WP over part of a written THP
        # oopses kernels before 6.17 (fs/proc/task_mmu: check p->vec_buf for NULL), so a
        # buffer is passed: same pages write-protected, through the WRITTEN fast path.
        pagemap.scan_all(self.scanner, self.fd, addr, addr + length, flags=WP,
                         category_mask=WRITTEN, return_mask=WRITTEN)

    # -- pagemap_ioctl / pagemap_ioc ------------------------------------------------------
    def ioctl(self, addr: int, length: int, vec_len: int, flags: int = 0, max_pages: int = 0,
              required: int = 0, anyof: int = 0, excluded: int = 0,
              ret: int = 0) -> pagemap.ScanResult:
        """pagemap_ioctl()'s argument order: the regions and walk_end of one ioctl."""
        return self.scanner(self.fd, addr, addr + length, flags=flags,
                            category_mask=required, category_inverted=excluded,
                            category_anyof_mask=anyof, return_mask=ret, max_pages=max_pages,
                            vec_len=vec_len)

    def written(self, addr: int, length: int, vec_len: int, flags: int = 0,
                max_pages: int = 0) -> np.ndarray:
        """pagemap_ioctl(.., PAGE_IS_WRITTEN, 0, 0, PAGE_IS_WRITTEN): the WRITTEN fast path."""
        return self.ioctl(addr, length, vec_len, flags, max_pages, WRITTEN, 0, 0,
                          WRITTEN).regions

    def raw(self, addr: int, length: int, vec: int, vec_len: int, flags: int = 0,
            required: int = 0, ret: int = 0) -> int:
        """PAGEMAP_SCAN with an explicit ``vec`` pointer (NULL included), for the argument
        checks :class:`~writewatch.kernel.pagemap.Scanner` cannot express."""
        arg = ctypes.create_string_buffer(U.PM_SCAN_ARG_SIZE)
        U.PM_SCAN_ARG_STRUCT.pack_into(arg, 0, U.PM_SCAN_ARG_SIZE, flags, addr, addr + length,
                                       0, vec, vec_len, 0, 0, required, 0, ret)
        return _sys.ioctl("PAGEMAP_SCAN", self.fd, U.PAGEMAP_SCAN, arg)


@pytest.fixture
def pm() -> Iterator[Pm]:
    try:
        p = Pm()
    except errors.WriteWatchError as exc:
        pytest.skip(f"async uffd-wp with markers unavailable: {exc}")
    features = p.api.features
    if features & SELFTEST_FEATURES != SELFTEST_FEATURES:
        p.close()
        pytest.skip(f"UFFDIO_API lacks WP_UNPOPULATED|WP_ASYNC|WP_HUGETLBFS_SHMEM: {features!r}")
    try:
        p.ioctl(0, 0, 0)
    except errors.Unsupported as exc:
        p.close()
        pytest.skip(str(exc))
    yield p
    p.close()


class Mem:
    """An mmap(2)ed range (optionally aligned), unmapped at teardown."""

    def __init__(self, length: int, prot: int = RW, flags: int = ANON, fd: int = -1,
                 align: int = 0) -> None:
        self.rawlen = length + align
        self.raw = _sys.mmap(0, self.rawlen, prot, flags, fd)
        self.addr = -(-self.raw // align) * align if align else self.raw
        self.length = length

    @property
    def end(self) -> int:
        return self.addr + self.length

    def page(self, i: int) -> int:
        return self.addr + i * PAGE

    def bytes(self) -> np.ndarray:
        return as_bytes(self.addr, self.length)

    def pages(self) -> np.ndarray:
        """(npages, PAGE) uint8 view: ``m.pages()[idx, 0] += 1`` writes one byte per page."""
        return self.bytes().reshape(-1, PAGE)

    def unmap(self) -> None:
        if self.rawlen:
            _sys.munmap(self.raw, self.rawlen)
            self.rawlen = 0


@pytest.fixture
def mem() -> Iterator[type[Mem]]:
    made: list[Mem] = []

    def make(*a, **kw) -> Mem:
        m = Mem(*a, **kw)
        made.append(m)
        return m

    yield make  # type: ignore[misc]
    for m in made:
        m.unmap()


def is_huge(pm: Pm, addr: int, length: int) -> bool:
    """Whether every page of the range is PMD-mapped (PAGE_IS_HUGE)."""
    res = pm.ioctl(addr, length, 64, required=int(C.HUGE), ret=int(C.HUGE))
    return sum(lens(res.regions)) == length // PAGE


def thp(pm: Pm, mem, length: int) -> Mem:
    """gethugepage(): a PMD-aligned anonymous range with MADV_HUGEPAGE, zero-filled; skips
    the test when the kernel did not back it with THPs."""
    if procfs.thp_mode() in (None, "never"):
        pytest.skip(f"THP disabled (transparent_hugepage/enabled: {procfs.thp_mode()})")
    m = mem(length, align=HPAGE)
    _sys.madvise(m.addr, length, U.MADV_HUGEPAGE)
    m.bytes()[:] = 0
    if not is_huge(pm, m.addr, length):
        pytest.skip("no THP was obtained for a PMD-aligned MADV_HUGEPAGE range "
                    "(memory fragmented or khugepaged defrag settings)")
    return m
