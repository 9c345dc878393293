"""PAGEMAP_SCAN at the kernel layer: a port of tools/testing/selftests/mm/pagemap_ioctl.c.

Each test names the selftest function and the ksft_test_result() messages it mirrors. The
checks are the selftest's own; where it only asks for ``>= 0`` and the outcome is fully
determined, the exact outcome is asserted as well.
"""

from __future__ import annotations

import errno
import mmap
import os
import random

import numpy as np
import pytest

from writewatch import _uapi as U
from writewatch import errors
from writewatch.features import pmd_holes_reported
from writewatch.kernel import LINUX, _sys, pagemap, procfs, uffd

from .pmutil import (
    ANON,
    BITS_ALL,
    HPAGE,
    NON_WRITTEN_BITS,
    PAGE,
    RW,
    U64_MAX,
    WP,
    WRITTEN,
    C,
    Mem,
    Pm,
    as_bytes,
    is_huge,
    lens,
    thp,
)

# include/uapi/asm-generic/mman-common.h (6.1+); not in writewatch._uapi
MADV_COLLAPSE = 25
MFD_HUGETLB = U.MFD_HUGETLB
PROT_NONE = 0  # include/uapi/asm-generic/mman-common.h


def kernel_at_least(major: int, minor: int) -> bool:
    rel = os.uname().release.split("-")[0].split(".")
    return (int(rel[0]), int(rel[1])) >= (major, minor)


def einval(fn, *a, **kw) -> None:
    with pytest.raises(errors.WriteWatchError) as info:
        fn(*a, **kw)
    assert info.value.errno == errno.EINVAL


# ---------------------------------------------------------------------------------------------
# sanity_tests_sd


@pytest.fixture
def sd(pm: Pm, mem) -> Mem:
    """1000 anonymous pages, registered and write-protected (sanity_tests_sd setup)."""
    m = mem(1000 * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    return m


def test_sd_argument_checks(pm: Pm, sd: Mem) -> None:
    m, n, vec_size = sd, sd.length, 500
    # "Zero range size is valid"
    assert len(pm.ioctl(m.addr, 0, vec_size, 0, 0, BITS_ALL, 0, 0, BITS_ALL).regions) == 0
    # "output buffer must be specified with size": vec NULL, vec_len > 0
    einval(pm.raw, m.addr, n, 0, vec_size, 0, BITS_ALL, BITS_ALL)
    # "output buffer can be 0": vec set, vec_len 0; then vec NULL, vec_len 0
    assert pm.raw(m.addr, n, pm.scanner.vec.ctypes.data, 0, 0, BITS_ALL, BITS_ALL) == 0
    assert pm.raw(m.addr, n, 0, 0, 0, BITS_ALL, BITS_ALL) == 0
    # "wrong flag specified": -1
    einval(pm.ioctl, m.addr, n, vec_size, U64_MAX, 0, WRITTEN, 0, 0, WRITTEN)
    # "flag has extra bits specified"
    einval(pm.ioctl, m.addr, n, vec_size, WP | 0xFF, 0, WRITTEN, 0, 0, WRITTEN)
    # "no selection mask is specified": every page matches, nothing was written
    res = pm.ioctl(m.addr, n, vec_size, 0, 0, 0, 0, 0, WRITTEN)
    assert lens(res.regions) == [1000] and int(res.regions[0, 2]) == 0
    # "no return mask is specified"
    assert len(pm.ioctl(m.addr, n, vec_size, 0, 0, WRITTEN, WRITTEN, 0, 0).regions) == 0
    # "wrong return mask specified"
    einval(pm.ioctl, m.addr, n, vec_size, 0, 0, WRITTEN, 0, 0, 0x1000)
    # "mixture of correct and wrong flag"
    einval(pm.ioctl, m.addr, n, vec_size, WP, 0, 0xFFF, WRITTEN, 0, WRITTEN)
    # "PAGEMAP_BITS_ALL can be specified with PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC"
    pm.ioctl(m.addr, n, vec_size, WP, 0, 0, 0, BITS_ALL, WRITTEN)
    # "Clear area with larger vec size"
    assert len(pm.written(m.addr, n, vec_size, WP)) == 0


def test_sd_repeated_pattern(pm: Pm, sd: Mem) -> None:
    m, vec_size = sd, 500
    m.pages()[::2, 0] += 1
    # "Repeated pattern of written and non-written pages"
    regs = pm.written(m.addr, m.length, vec_size)
    assert len(regs) == 500 and set(lens(regs)) == {1}
    assert [int(s) for s in regs[:, 0]] == [m.page(i) for i in range(0, 1000, 2)]

    # "... in parts": WP 498, peek 2, WP the rest
    ret = len(pm.written(m.addr, m.length, vec_size, WP, max_pages=498))
    ret2 = len(pm.written(m.addr, m.length, 2))
    ret3 = len(pm.written(m.addr, m.length, vec_size, WP))
    assert (ret + ret3, ret2) == (500, 2), (ret, ret2, ret3)

    # "... max_pages": 500 singletons + the last page (999 joins 998)
    m.pages()[::2, 0] += 1
    m.pages()[999, 0] += 1
    ret = pm.written(m.addr, m.length, vec_size, WP, max_pages=500)
    ret2 = pm.written(m.addr, m.length, vec_size, WP)
    assert len(ret) == 500 and len(ret2) == 1
    assert int(ret2[0, 0]) == m.page(999) and lens(ret2) == [1]


def test_sd_get_and_clear_two_pages(pm: Pm, sd: Mem) -> None:
    # "only get 2 written pages and clear them as well"
    m = sd
    m.bytes()[:] = 0xFF
    vec = pm.written(m.page(1), 2 * PAGE, 1, WP, max_pages=2)
    vec2 = pm.written(m.addr, m.length, 1000)
    assert len(vec) == 1 and lens(vec) == [2] and int(vec[0, 0]) == m.page(1)
    assert len(vec2) == 2 and lens(vec2) == [1, 997]
    assert int(vec2[0, 0]) == m.addr and int(vec2[1, 0]) == m.page(3)


def test_sd_two_regions(pm: Pm, mem) -> None:
    # "Two regions"
    n = 1000 * PAGE
    m0, m1 = mem(n), mem(n)
    for m in (m0, m1):
        pm.wp_init(m.addr, n)
        pm.wp_addr_range(m.addr, n)
    m0.bytes()[:] = ord("a")
    m1.bytes()[:] = ord("b")
    pm.wp_addr_range(m0.addr, n)
    vec = pm.written(m1.addr, n, 1)
    assert len(vec) == 1 and lens(vec) == [1000]
    assert len(pm.written(m0.addr, n, 1)) == 0


def test_sd_smaller_max_pages(pm: Pm, mem) -> None:
    # "Smaller max_pages": 1050 pages, every other written, three WP scans of 210 pages
    m = mem(1050 * PAGE)
    vec_size = 525
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    assert len(pm.written(m.addr, m.length, vec_size, WP)) == 0
    m.pages()[::2, 0] += 1
    got = [len(pm.written(m.addr, m.length, vec_size, WP, max_pages=210)) for _ in range(3)]
    assert got == [210, 210, 105]
    assert sum(got) == 525


def test_sd_smaller_vec_resumes_from_walk_end(pm: Pm, mem) -> None:
    # "Smaller vec": 10000 pages, random writes, vec_len 50, resume from walk_end; 100 rounds
    m = mem(10000 * PAGE)
    vec_size = 50
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    rng = np.random.default_rng(1)
    pages = m.pages()
    for _ in range(100):
        written = rng.integers(0, 2, 10000).astype(bool)
        idx = np.flatnonzero(written)
        unwritten_before = np.concatenate(([0], np.cumsum(~written)))  # of each page index
        pages[idx, 0] += 1
        walk_end, reads = m.addr, []
        while sum(reads) < len(idx):
            res = pm.ioctl(walk_end, m.end - walk_end, vec_size, WP, 0, WRITTEN, 0, 0, WRITTEN)
            assert len(res.regions) <= vec_size
            assert res.walk_end > walk_end or len(res.regions) == 0
            first, end = ((res.regions[:, :2].astype(np.int64) - m.addr) // PAGE).T
            reads.append(int((end - first).sum()))
            # only written pages are reported: no unwritten page inside a region
            assert (unwritten_before[end] == unwritten_before[first]).all()
            walk_end = res.walk_end
            if walk_end >= m.end:
                break
        assert sum(reads) == len(idx)


def test_sd_walk_end_dense(pm: Pm, mem) -> None:
    vec_size = 1000
    m = mem(vec_size * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    m.bytes()[:] = 0

    def ioc(length: int, vec_len: int, flags: int = 0, max_pages: int = 0):
        res = pm.ioctl(m.addr, length, vec_len, flags, max_pages, WRITTEN, 0, 0, WRITTEN)
        return len(res.regions), res.walk_end

    assert ioc(0, vec_size) == (0, m.addr)  # "Same start and end address"
    assert ioc(0, vec_size, WP) == (0, m.addr)  # "Same start and end with WP"
    assert ioc(0, 0, WP) == (0, m.addr)  # "Same start and end with 0 output buffer"
    assert ioc(m.length, vec_size) == (1, m.end)  # "Big vec"
    assert ioc(m.length, 1) == (1, m.end)  # "vec of minimum length"
    assert ioc(m.length, 1, 0, vec_size) == (1, m.end)  # "Max pages specified"
    assert ioc(m.length, vec_size, 0, vec_size // 2) == (1, m.addr + m.length // 2)  # "Half"
    assert ioc(m.length, vec_size, 0, 1) == (1, m.addr + PAGE)  # "1 max page"
    assert ioc(m.length, vec_size, 0, U64_MAX) == (1, m.end)  # "max pages"


def test_sd_walk_end_sparse(pm: Pm, mem) -> None:
    vec_size = 1000
    m = mem(vec_size * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    m.bytes()[:] = 0
    pm.wp_addr_range(m.addr, m.length)
    m.pages()[::2, 0] += 1

    def ioc(vec_len: int, max_pages: int = 0):
        res = pm.ioctl(m.addr, m.length, vec_len, 0, max_pages, WRITTEN, 0, 0, WRITTEN)
        return len(res.regions), res.walk_end

    assert ioc(vec_size) == (500, m.end)  # "Big vec"
    assert ioc(1) == (1, m.addr + 2 * PAGE)  # "vec of minimum length"
    assert ioc(1, vec_size) == (1, m.addr + 2 * PAGE)  # "Max pages specified"
    assert ioc(vec_size // 2, vec_size) == (500, m.end)  # "Max pages specified"
    assert ioc(vec_size, vec_size) == (500, m.end)  # "Max pages specified"
    assert ioc(vec_size, vec_size // 2) == (500, m.end)  # "Half max pages"
    assert ioc(vec_size, 1) == (1, m.addr + 2 * PAGE)  # "1 max page"


# ---------------------------------------------------------------------------------------------
# base_tests over the memory types


def base_tests(pm: Pm, m_addr: int, size: int) -> None:
    """The six checks of base_tests(), on a registered, write-protected range."""
    n = size // PAGE
    b = as_bytes(m_addr, size)
    # "all new pages must not be written (dirty)"
    assert len(pm.written(m_addr, size, 1, WP, max_pages=n - 2)) == 0
    # "all pages must be written (dirty)"
    b[:] = 0xFF
    vec = pm.written(m_addr, size, 1)
    assert len(vec) == 1 and lens(vec) == [n]
    # "all pages dirty other than first and the last one"
    pm.written(m_addr, size, 1, WP)
    b[PAGE:size - PAGE] = 0
    vec = pm.written(m_addr, size, 1, WP)
    assert len(vec) == 1 and n - 2 <= lens(vec)[0] <= n
    # "PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC": the get+WP left nothing written
    assert len(pm.written(m_addr, size, 1)) == 0
    # "only middle page dirty"
    pm.written(m_addr, size, 1, WP)
    b[n // 2 * PAGE] += 1
    vec = pm.written(m_addr, size, n)
    assert len(vec) == 1 and lens(vec)[0] >= 1
    # "only two middle pages dirty": a walk over just those two pages
    hw = WRITTEN | int(C.HUGE)
    pm.ioctl(m_addr, size, 1, WP, 0, WRITTEN, 0, 0, hw)
    b[n // 2 * PAGE] += 1
    b[(n // 2 + 1) * PAGE] += 1
    mid = m_addr + n // 2 * PAGE
    vec = pm.ioctl(mid, 2 * PAGE, 1, 0, 0, WRITTEN, 0, 0, hw).regions
    assert len(vec) == 1 and int(vec[0, 0]) == mid and lens(vec) == [2]


@pytest.mark.parametrize("npages", [10, 512 * 10], ids=["Page testing", "Large Page testing"])
def test_base_anon(pm: Pm, mem, npages: int) -> None:
    m = mem(npages * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


def test_base_thp(pm: Pm, mem) -> None:
    # "Huge page testing:"
    m = thp(pm, mem, HPAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


@pytest.fixture
def hugetlb_pages():
    """Reserve 2 default-size huge pages via /proc/sys/vm/nr_hugepages; restore after."""
    path = "/proc/sys/vm/nr_hugepages"
    old = procfs.read_setting(path)
    if old is None:
        pytest.skip("no /proc/sys/vm/nr_hugepages (kernel without CONFIG_HUGETLBFS)")
    free = int(procfs.parse_status(procfs.read_bytes("/proc/meminfo"))["HugePages_Free"])
    want = int(old) + max(0, 2 - free)
    try:
        with open(path, "w") as f:
            f.write(str(want))
    except OSError as exc:
        pytest.skip(f"cannot reserve huge pages ({path}: {exc.strerror}); run as root")
    try:
        got = int(procfs.parse_status(procfs.read_bytes("/proc/meminfo"))["HugePages_Free"])
        if got < 2:
            pytest.skip(f"the kernel reserved only {got} free huge pages (fragmented memory)")
        yield int(procfs.parse_status(procfs.read_bytes("/proc/meminfo"))["Hugepagesize"]
                  .split()[0]) * 1024
    finally:
        with open(path, "w") as f:
            f.write(old)


def test_base_hugetlb_private(pm: Pm, hugetlb_pages: int, mem) -> None:
    # "Hugetlb mem testing:": MAP_HUGETLB | MAP_PRIVATE
    m = mem(hugetlb_pages, flags=ANON | U.MAP_HUGETLB)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


def test_base_hugetlb_memfd_shared(pm: Pm, hugetlb_pages: int, mem) -> None:
    # "Hugetlb shmem testing:": memfd_create(MFD_HUGETLB), MAP_SHARED
    fd = os.memfd_create("writewatch-test", os.MFD_CLOEXEC | MFD_HUGETLB)
    try:
        os.ftruncate(fd, hugetlb_pages)
        m = mem(hugetlb_pages, flags=mmap.MAP_SHARED, fd=fd)
    finally:
        os.close(fd)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


def test_base_private_file(pm: Pm, mem, tmp_path) -> None:
    # "File memory testing:": MAP_PRIVATE of a regular file of 10 pages of 'c'
    path = tmp_path / "pagemap_ioctl.tmp0"
    path.write_bytes(b"c" * (10 * PAGE))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        m = mem(10 * PAGE, flags=mmap.MAP_PRIVATE, fd=fd)
    finally:
        os.close(fd)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


def test_base_memfd_private(pm: Pm, mem) -> None:
    # "File anonymous memory testing:": MAP_PRIVATE of a memfd
    fd = os.memfd_create("pagemap_ioctl.tmp00", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 10 * PAGE)
        os.write(fd, b"c" * (10 * PAGE))
        m = mem(10 * PAGE, flags=mmap.MAP_PRIVATE, fd=fd)
    finally:
        os.close(fd)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    base_tests(pm, m.addr, m.length)
    pm.wp_free(m.addr, m.length)


# ---------------------------------------------------------------------------------------------
# hpage_unit_tests: 10 THPs


NUM_HPAGES = 10
SIZE = HPAGE * NUM_HPAGES
VEC_SIZE = SIZE // PAGE


@pytest.fixture
def armed_thp(pm: Pm, mem) -> Mem:  # type: ignore[no-untyped-def]
    """NUM_HPAGES THPs, registered and write-protected (every hpage test starts so)."""
    m = thp(pm, mem, SIZE)
    pm.wp_init(m.addr, SIZE)
    pm.wp_addr_range(m.addr, SIZE)
    return m


def test_hpage_new_written_and_cleared(pm: Pm, armed_thp: Mem) -> None:
    m, size, vec_size = armed_thp, SIZE, VEC_SIZE
    # "all new huge page must not be written (dirty)"
    assert len(pm.written(m.addr, size, vec_size, WP)) == 0
    # "all the huge page must not be written"
    assert len(pm.written(m.addr, size, vec_size)) == 0
    # a full-PMD write-protect keeps the mapping huge (make_uffd_wp_pmd); the async fault of
    # the first write then splits it (mm/memory.c wp_huge_pmd: userfaultfd_wp_async -> split)
    assert is_huge(pm, m.addr, size)
    # "all the huge page must be written and clear"
    m.bytes()[:] = 0xFF
    vec = pm.written(m.addr, size, vec_size, WP)
    assert len(vec) == 1 and int(vec[0, 0]) == m.addr and lens(vec) == [vec_size]
    assert int(vec[0, 2]) == WRITTEN


def test_hpage_only_middle_page_written(pm: Pm, armed_thp: Mem) -> None:
    m, size, vec_size = armed_thp, SIZE, VEC_SIZE
    m.pages()[vec_size // 2, 0] += 1
    vec = pm.written(m.addr, size, vec_size)
    assert len(vec) == 1 and lens(vec)[0] > 0
    # exact at 4 KiB: the async fault split the write-protected PMD before the write
    assert int(vec[0, 0]) == m.page(vec_size // 2) and lens(vec) == [1]


def test_hpage_clear_first_half(pm: Pm, armed_thp: Mem) -> None:
    m, size, vec_size = armed_thp, SIZE, VEC_SIZE
    m.bytes()[:] = 0
    pm.wp_addr_range(m.addr, size // 2)
    vec = pm.written(m.addr, size, vec_size)
    assert len(vec) == 1 and lens(vec) == [vec_size // 2]
    assert int(vec[0, 0]) == m.addr + size // 2


def test_hpage_clear_first_half_limited_buffer(pm: Pm, armed_thp: Mem) -> None:
    m, size, vec_size = armed_thp, SIZE, VEC_SIZE
    m.bytes()[:] = 0
    pm.written(m.addr, size, vec_size, WP, max_pages=vec_size // 2)
    vec = pm.written(m.addr, size, vec_size)
    assert len(vec) == 1 and lens(vec) == [vec_size // 2]
    assert int(vec[0, 0]) == m.addr + size // 2


def test_hpage_clear_second_half(pm: Pm, armed_thp: Mem) -> None:
    m, size, vec_size = armed_thp, SIZE, VEC_SIZE
    m.bytes()[:] = 0xFF
    pm.written(m.addr + size // 2, size // 2, vec_size, WP, max_pages=vec_size // 2)
    vec = pm.written(m.addr, size, vec_size)
    assert len(vec) == 1 and lens(vec) == [vec_size // 2] and int(vec[0, 0]) == m.addr


def test_hpage_get_half_huge_page(pm: Pm, armed_thp: Mem) -> None:
    # "get half huge page" x2: max_pages truncates inside the first THP, which is split
    m, size = armed_thp, SIZE
    half = HPAGE // (2 * PAGE)
    m.bytes()[:] = 0xFF
    vec = pm.written(m.addr, size, 1, WP, max_pages=half)
    assert len(vec) == 1 and lens(vec) == [half]
    vec = pm.written(m.addr, size, size // PAGE)
    assert len(vec) == 1 and lens(vec) == [(size - HPAGE // 2) // PAGE]
    assert int(vec[0, 0]) == m.addr + HPAGE // 2
    assert not is_huge(pm, m.addr, HPAGE), "a partial write-protect splits the PMD"


# ---------------------------------------------------------------------------------------------
# Other selftest functions


def test_unmapped_region(pm: Pm) -> None:
    # unmapped_region_tests "Get status of pages": a hole gives no error and no region
    length = 0x40000
    addr = _sys.mmap(0, length, RW, ANON)
    _sys.munmap(addr, length)
    res = pm.ioctl(addr, length, length // PAGE, 0, 0, NON_WRITTEN_BITS, 0, 0, NON_WRITTEN_BITS)
    assert len(res.regions) == 0 and res.walk_end == addr + length


def test_simple(pm: Pm, mem) -> None:
    # "Test test_simple": 100 x {not written; WP; write; written; WP} on one page
    m = mem(PAGE)
    pm.wp_init(m.addr, PAGE)
    pm.wp_addr_range(m.addr, PAGE)
    b = m.bytes()
    for i in range(100):
        assert len(pm.written(m.addr, PAGE, 1)) == 0, f"written bit was 1 (i={i})"
        pm.wp_addr_range(m.addr, PAGE)
        b[0] += 1
        assert len(pm.written(m.addr, PAGE, 1)) == 1, f"written bit was 0 (i={i})"
        pm.wp_addr_range(m.addr, PAGE)


def test_mprotect(pm: Pm, mem) -> None:
    m = mem(2 * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    b = m.bytes()
    b[:] = 1
    assert lens(pm.written(m.addr, m.length, 1)) == [2]  # "Both pages written"
    pm.wp_addr_range(m.addr, m.length)
    assert len(pm.written(m.addr, m.length, 1)) == 0  # "Both pages are not written (dirty)"
    # remap the second page, register it again
    addr2 = _sys.mmap(m.page(1), PAGE, RW, ANON | U.MAP_FIXED)
    assert addr2 == m.page(1)
    pm.wp_init(addr2, PAGE)
    pm.wp_addr_range(addr2, PAGE)
    _sys.mprotect(m.addr, PAGE, PROT_NONE)
    _sys.mprotect(m.addr, 2 * PAGE, mmap.PROT_READ)
    _sys.mprotect(m.addr, 2 * PAGE, RW)
    b[:] = 2
    _sys.mprotect(m.addr, PAGE, PROT_NONE)
    _sys.mprotect(m.addr, PAGE, mmap.PROT_READ)
    _sys.mprotect(m.addr, PAGE, RW)
    # "Both pages written after remap and mprotect"
    assert lens(pm.written(m.addr, m.length, 1)) == [2]
    pm.wp_addr_range(m.addr, m.length)
    b[:] = ord("A")
    assert lens(pm.written(m.addr, m.length, 1)) == [2]  # "Clear and make the pages written"
    pm.wp_free(m.addr, m.length)


def test_sanity_masks(pm: Pm, mem) -> None:
    n = 10
    m = mem(n * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    a, size = m.addr, m.length
    # "WP op can be specified with !PAGE_IS_WRITTEN", required/anyof/excluded masks
    pm.ioctl(a, size, n, WP, 0, BITS_ALL, 0, 0, BITS_ALL)
    assert len(pm.ioctl(a, size, n, 0, 0, BITS_ALL, 0, 0, BITS_ALL).regions) == 0
    anyof = pm.ioctl(a, size, n, 0, 0, 0, BITS_ALL, 0, BITS_ALL).regions
    assert lens(anyof) == [n] and int(anyof[0, 2]) & int(C.WPALLOWED)
    pm.ioctl(a, size, n, 0, 0, 0, 0, BITS_ALL, BITS_ALL)
    pm.ioctl(a, size, n, 0, 0, BITS_ALL, BITS_ALL, 0, BITS_ALL)
    pm.wp_free(a, size)
    m.unmap()

    m = mem(n * PAGE)
    a = m.addr
    pm.wp_init(a, size)
    pm.wp_addr_range(a, size)
    m.bytes()[:] = 0
    both = WRITTEN | int(C.PRESENT)
    for req, anyof_ in ((0, BITS_ALL),  # "Get sd and present pages with anyof_mask"
                        (WRITTEN | int(C.PRESENT), 0),  # required_mask, see below
                        (WRITTEN, int(C.PRESENT))):  # "... with required_mask and anyof_mask"
        vec = pm.ioctl(a, size, n, 0, 0, req, anyof_, 0, BITS_ALL).regions
        assert int(vec[0, 0]) == a and lens(vec)[0] == n and int(vec[0, 2]) & both == both
    # "Get all the pages with required_mask" passes PAGEMAP_BITS_ALL as required_mask, which
    # no page matches (none is FILE, SWAPPED, PFNZERO and HUGE at once): the selftest's check
    # reads the vec[0] left by the previous call. The exact outcome is 0 regions.
    assert len(pm.ioctl(a, size, n, 0, 0, BITS_ALL, 0, 0, BITS_ALL).regions) == 0
    # "Don't get sd pages" / "Don't get present pages"
    assert len(pm.ioctl(a, size, n, 0, 0, WRITTEN, 0, WRITTEN, BITS_ALL).regions) == 0
    pres = int(C.PRESENT)
    assert len(pm.ioctl(a, size, n, 0, 0, pres, 0, pres, BITS_ALL).regions) == 0
    pm.wp_free(a, size)
    m.unmap()

    # "Find written present pages with return mask"
    m = mem(n * PAGE)
    a = m.addr
    pm.wp_init(a, size)
    pm.wp_addr_range(a, size)
    m.bytes()[:] = 0
    vec = pm.ioctl(a, size, n, WP, 0, 0, BITS_ALL, 0, WRITTEN).regions
    assert int(vec[0, 0]) == a and lens(vec) == [n] and int(vec[0, 2]) == WRITTEN
    pm.wp_free(a, size)


def test_sanity_memory_mapped_file(pm: Pm, mem) -> None:
    # "Memory mapped file": a file mapped read-only, not registered
    path = __file__
    size = os.stat(path).st_size
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        m = mem(size, prot=mmap.PROT_READ, flags=mmap.MAP_PRIVATE, fd=fd)
    finally:
        os.close(fd)
    m.bytes().copy()  # memcpy(tmp_buf, fmem, size): fault every page in
    npages = -(-size // PAGE)
    vec = pm.ioctl(m.addr, size, npages, 0, 0, 0, NON_WRITTEN_BITS, 0, NON_WRITTEN_BITS).regions
    assert int(vec[0, 0]) == m.addr and lens(vec)[0] == npages and int(vec[0, 2]) & int(C.FILE)


def test_sanity_read_write_private_file(pm: Pm, mem, tmp_path) -> None:
    # "Read/write to memory": a private file mapping registered, written, msync'ed
    n = 10
    path = tmp_path / "pagemap_ioctl.tmp2"
    path.write_bytes(b"c" * (n * PAGE))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        m = mem(n * PAGE, flags=mmap.MAP_PRIVATE, fd=fd)
    finally:
        os.close(fd)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    m.bytes()[:] = ord("z")
    anyof = int(C.PRESENT | C.SWAPPED | C.FILE)
    vec = pm.ioctl(m.addr, m.length, n, 0, 0, WRITTEN, anyof, 0, BITS_ALL).regions
    assert int(vec[0, 0]) == m.addr and lens(vec) == [n] and int(vec[0, 2]) & WRITTEN
    pm.wp_free(m.addr, m.length)


def test_userfaultfd_prot_none_then_mprotect_pieces(pm: Pm, mem) -> None:
    # userfaultfd_tests "all new pages must not be written (dirty)"
    n = 16
    m = mem(n * PAGE, prot=PROT_NONE)
    size, e = m.length, m.length // 8
    pm.wp_init(m.addr, size)
    prots = [RW, mmap.PROT_READ, RW, mmap.PROT_READ, RW, PROT_NONE, RW, mmap.PROT_READ]
    for i, prot in enumerate(prots):
        _sys.mprotect(m.addr + i * e, e, prot)
    pm.wp_addr_range(m.addr + size // 16, size - 2 * e)
    pm.wp_addr_range(m.addr, size)
    assert len(pm.written(m.addr, size, 1, WP, max_pages=n - 2)) == 0
    pm.wp_free(m.addr, size)


def test_zeropfn(pm: Pm, mem) -> None:
    # zeropfn_tests "all pages must have PFNZERO set": read faults map the zero page
    n = 10
    m = mem(n * PAGE, prot=mmap.PROT_READ)
    int(m.pages()[:, 0].sum())
    pz = int(C.PFNZERO)
    vec = pm.ioctl(m.addr, m.length, 1, 0, n, pz, 0, 0, pz).regions
    assert len(vec) == 1 and lens(vec) == [n]


def test_zeropfn_huge(pm: Pm, mem) -> None:
    # zeropfn_tests "all huge pages must have PFNZERO set"
    if procfs.read_setting("/sys/kernel/mm/transparent_hugepage/use_zero_page") != "1":
        pytest.skip("transparent_hugepage/use_zero_page is not 1")
    if procfs.thp_mode() in (None, "never"):
        pytest.skip("THP disabled")
    if not kernel_at_least(6, 16):
        pytest.skip("PFNZERO for the huge zero page needs Linux 6.16 (4a5e85f4eb8f)")
    m = mem(HPAGE, align=HPAGE)
    _sys.madvise(m.addr, HPAGE, U.MADV_HUGEPAGE)
    int(m.bytes()[0])
    pz = int(C.PFNZERO)
    vec = pm.ioctl(m.addr, HPAGE, 1, 0, 0, pz, 0, 0, pz).regions
    if not is_huge(pm, m.addr, HPAGE):
        pytest.skip("the read fault did not map the huge zero page")
    assert len(vec) == 1 and lens(vec) == [HPAGE // PAGE]


def test_unpopulated_scan(pm: Pm, mem) -> None:
    # 2026 hotfix unpopulated_scan_test: pte_none after MADV_DONTNEED reads written on both
    # the WRITTEN fast path and the generic path; before it, the generic path read clean
    n = 16
    m = mem(n * PAGE)
    pm.wp_init(m.addr, m.length)
    m.bytes()[:] = 1
    _sys.madvise(m.addr, m.length, U.MADV_DONTNEED)
    fast = sum(lens(pm.ioctl(m.addr, m.length, n, 0, 0, WRITTEN, 0, 0, WRITTEN).regions))
    slow = sum(lens(pm.ioctl(m.addr, m.length, n, 0, 0, 0, WRITTEN, 0, WRITTEN).regions))
    assert fast == n
    if pmd_holes_reported():  # the PMD-hole fix builds on this one
        assert slow == n, "the PMD-hole fix is here, so 'fs/proc/task_mmu: fix PAGEMAP_SCAN " \
            "written state for unpopulated ptes' (2026) should be too"
    # the probe writewatch decides with must read this kernel the same way
    probed = LINUX.capabilities().pte_none_written
    assert slow == (n if probed else 0), f"probe says pte_none written={probed}, scan read {slow}"
    pm.wp_free(m.addr, m.length)


def test_unpopulated_thp_hole(pm: Pm, mem) -> None:
    # 2026 hotfix unpopulated_thp_hole_test: a full-THP MADV_DONTNEED reads written; before
    # it the hole read clean, which is what features() probes (and why uffd-async then scans
    # for holes itself)
    if procfs.thp_mode() in (None, "never"):
        pytest.skip("THP disabled")
    m = mem(HPAGE, align=HPAGE)
    m.bytes()[:] = 1
    try:
        _sys.madvise(m.addr, HPAGE, MADV_COLLAPSE)
    except errors.WriteWatchError as exc:
        pytest.skip(f"could not form a THP: MADV_COLLAPSE failed ({exc})")
    if not is_huge(pm, m.addr, HPAGE):
        pytest.skip("could not form a THP")
    pm.wp_init(m.addr, HPAGE)
    _sys.madvise(m.addr, HPAGE, U.MADV_DONTNEED)
    vec = pm.ioctl(m.addr, HPAGE, 16, 0, 0, WRITTEN, 0, 0, WRITTEN).regions
    want = HPAGE // PAGE if pmd_holes_reported() else 0
    assert sum(lens(vec)) == want, "'fs/proc/task_mmu: fix PAGEMAP_SCAN written state for " \
        "PMD holes' (2026): written with the fix, clean before, as features() probed"
    pm.wp_free(m.addr, HPAGE)


def test_unarmed_pmd_hole_before_the_fix(pm: Pm, mem) -> None:
    # a WRITTEN-masked WP_MATCHING scan over a range with no page table yet: the fix reports
    # the hole written and arms it (uffd_wp_range under WP_UNPOPULATED); before it,
    # pagemap_scan_pte_hole returned early for a hole the mask did not match, arming nothing
    m = mem(HPAGE, align=HPAGE)  # never touched: pmd_none
    uffd.register(pm.uffd, m.addr, HPAGE, U.UffdRegisterMode.WP)
    armed = pm.ioctl(m.addr, HPAGE, 16, WP, 0, WRITTEN, 0, 0, WRITTEN).regions
    sw = int(C.SWAPPED)
    swapped = sum(lens(pm.ioctl(m.addr, HPAGE, 16, 0, 0, sw, 0, 0, sw).regions))
    if pmd_holes_reported():
        assert (sum(lens(armed)), swapped) == (HPAGE // PAGE, HPAGE // PAGE)  # markers
    else:
        assert (sum(lens(armed)), swapped) == (0, 0)
    pm.wp_free(m.addr, HPAGE)


# ---------------------------------------------------------------------------------------------
# scan_all, the library's walk_end loop, against the same selftest patterns


@pytest.mark.parametrize("batch", [1, 7, 50, 4096])
def test_scan_all_resumes_until_every_region_is_read(pm: Pm, mem, batch: int) -> None:
    m = mem(3000 * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    idx = sorted(random.Random(batch).sample(range(3000), 900))
    m.pages()[idx, 0] += 1
    res = pagemap.scan_all(pm.scanner, pm.fd, m.addr, m.end, batch=batch, flags=WP,
                           category_mask=WRITTEN, return_mask=WRITTEN)
    got = {(a - m.addr) // PAGE for s, e, _ in res.regions for a in range(int(s), int(e), PAGE)}
    assert got == set(idx)
    assert len(pm.written(m.addr, m.length, 3000)) == 0


def test_scan_all_max_pages_stops_and_resumes(pm: Pm, mem) -> None:
    m = mem(1000 * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    m.pages()[::2, 0] += 1
    first = pagemap.scan_all(pm.scanner, pm.fd, m.addr, m.end, batch=64, flags=WP,
                             category_mask=WRITTEN, return_mask=WRITTEN, max_pages=300)
    assert sum(lens(first.regions)) == 300 and first.walk_end == m.page(600)
    rest = pagemap.scan_all(pm.scanner, pm.fd, first.walk_end, m.end, batch=64, flags=WP,
                            category_mask=WRITTEN, return_mask=WRITTEN)
    assert sum(lens(rest.regions)) == 200 and rest.walk_end == m.end


def test_check_wpasync_on_unregistered_memory_is_a_typed_error(pm: Pm, mem) -> None:
    m = mem(4 * PAGE)
    with pytest.raises(errors.InvalidTarget) as info:
        pm.written(m.addr, m.length, 4, WP)
    assert info.value.errno == errno.EPERM
    # WP_MATCHING without CHECK_WPASYNC skips the VMA silently (pagemap_scan_test_walk)
    assert len(pm.written(m.addr, m.length, 4, int(U.PmScanFlag.WP_MATCHING))) == 0


def test_pagemap_bits_agree_with_scan_categories(pm: Pm, mem) -> None:
    # vm_util.c since 6.8 cross-checks pagemap bits against PAGEMAP_SCAN categories
    n = 64
    m = mem(n * PAGE)
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    m.pages()[: n // 2, 0] = 1
    pm.wp_addr_range(m.addr, m.length)
    m.pages()[::4, 0] += 1
    ent = pagemap.decode_entries(pagemap.read_entries(pm.fd, m.addr, n, PAGE))
    cats = np.zeros(n, np.uint64)
    res = pm.ioctl(m.addr, m.length, n, 0, 0, 0, 0, 0, WRITTEN | int(C.PRESENT))
    for s, e, c in res.regions:
        cats[(int(s) - m.addr) // PAGE:(int(e) - m.addr) // PAGE] = c
    assert np.array_equal(ent["present"], (cats & np.uint64(C.PRESENT)) != 0)
    assert np.array_equal(ent["uffd_wp"], (cats & np.uint64(WRITTEN)) == 0)


def test_a_refused_write_protect_scan_returns_exactly_what_it_found(pm: Pm, mem) -> None:
    """CHECK_WPASYNC refusing a later VMA (EPERM) still copies out the regions found before
    it: NotRegistered.partial holds those, never entries a previous call left in the
    scanner's reused buffer."""
    other = mem(200 * PAGE)
    pm.wp_init(other.addr, other.length)
    pm.wp_addr_range(other.addr, other.length)
    other.pages()[::2, 0] += 1  # 100 regions fill the buffer, and stay in it
    assert len(pm.written(other.addr, other.length, 4096)) == 100
    m = mem(16 * PAGE)
    pm.wp_init(m.addr, 8 * PAGE)  # the second half stays unregistered: its own VMA
    pm.wp_addr_range(m.addr, 8 * PAGE)
    m.pages()[[1, 3], 0] += 1
    with pytest.raises(errors.NotRegistered) as info:
        pm.written(m.addr, m.length, 4096, WP)
    got = np.asarray(info.value.partial)
    assert got[:, :2].tolist() == [[m.page(1), m.page(2)], [m.page(3), m.page(4)]]
    # what it found was write-protected: found once
    assert len(pm.written(m.addr, 8 * PAGE, 4096, WP)) == 0
