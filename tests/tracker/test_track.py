"""Tracker semantics on real memory with the uffd-async backend, mirroring at the Tracker
level what tools/testing/selftests/mm/pagemap_ioctl.c checks."""

from __future__ import annotations

import ctypes
import mmap
import os
import random

import numpy as np
import pytest
from memutil import PAGE

import writewatch
from writewatch import _uapi as U
from writewatch.features import pmd_holes_reported
from writewatch.kernel import _sys, procfs
from writewatch.kernel.pagemap import decode_entries, open_pagemap, read_entries

pytestmark = pytest.mark.usefixtures("backend")


def written(t: writewatch.Tracker, **kw: int) -> set[int]:
    return {int(a) for a in t.collect(**kw).addresses()}


def test_first_collect_is_empty_and_writes_are_reported_exactly(region) -> None:
    r = region(64)
    for i in range(64):
        r.write(i)  # populate before arming
    with writewatch.track(r.span) as t:
        assert written(t) == set()
        for i in (0, 5, 63):
            r.write(i, 7)
        assert written(t) == r.pages([0, 5, 63])
        assert written(t) == set()  # re-armed by the previous collect


def test_stats_count_every_page_reported(region) -> None:
    r = region(300)
    with writewatch.track(r.span) as t:
        total = 0
        for n in (0, 1, 7, 300, 150):
            for i in range(n):
                r.write(i)
            total += len(t.collect())
        s = t.stats
        assert s.pages_reported == total == 1 + 7 + 300 + 150 and s.collects == 5


def test_backend_stats_keep_few_rows_uncounted() -> None:
    from writewatch.backends.base import _UNCOUNTED_ROWS, BackendStats
    s = BackendStats(page_size=PAGE)
    rows = np.array([[i * 2 * PAGE, (i * 2 + 1) * PAGE] for i in range(1000)], np.uint64)
    for _ in range(3 * _UNCOUNTED_ROWS // 1000):
        s.reported(rows)
        assert s._rows <= _UNCOUNTED_ROWS + 1000  # what is held stays bounded
    assert s.pages_reported == 3 * _UNCOUNTED_ROWS // 1000 * 1000 and s._rows == 0


def test_every_other_page_of_1000_gives_500_ranges(region) -> None:
    # pagemap_ioctl.c "Repeated pattern of written and non-written pages"
    r = region(1000)
    with writewatch.track(r.span) as t:
        for i in range(0, 1000, 2):
            r.write(i)
        p = t.collect()
        assert len(p.ranges) == 500 and len(p) == 500
        assert {int(a) for a in p.addresses()} == r.pages(range(0, 1000, 2))


def test_never_touched_pages_are_reported_on_first_write(region) -> None:
    r = region(256)  # unpopulated: WP_UNPOPULATED puts markers there at arm time
    with writewatch.track(r.span) as t:
        assert written(t) == set()
        r.write(3)
        r.write(200)
        assert written(t) == r.pages([3, 200])


def test_reads_of_unpopulated_pages_are_not_writes(region) -> None:
    r = region(32)
    with writewatch.track(r.span) as t:
        assert sum(r.read(i) for i in range(32)) == 0  # maps the zero page, keeps the marker
        assert written(t) == set()
        r.write(4)
        assert written(t) == r.pages([4])


def test_peek_does_not_reset(region) -> None:
    r = region(16)
    with writewatch.track(r.span) as t:
        r.write(1)
        assert written(t, reset=False) == r.pages([1])
        assert written(t, reset=False) == r.pages([1])
        assert written(t) == r.pages([1])
        assert written(t) == set()


def test_max_pages_partial_collects_resume(region) -> None:
    # "Repeated pattern ... in parts" and "Smaller max_pages"
    r = region(1050)
    with writewatch.track(r.span) as t:
        for i in range(0, 1050, 2):
            r.write(i)
        got: set[int] = set()
        sizes = []
        while True:
            part = written(t, max_pages=210)
            if not part:
                break
            assert len(part) <= 210
            sizes.append(len(part))
            assert not (part & got)
            got |= part
        assert sizes == [210, 210, 105]
        assert got == r.pages(range(0, 1050, 2))


def test_two_regions_and_several_targets(region) -> None:
    a, b = region(10), region(20)
    with writewatch.track(a.span, b.span) as t:
        a.write(9)
        b.write(0)
        b.write(19)
        assert written(t) == a.pages([9]) | b.pages([0, 19])


def test_unmapped_gap_inside_a_span(region) -> None:
    r = region(30)
    _sys.munmap(r.page(10), 10 * PAGE)  # a hole in the middle before tracking
    with writewatch.track(r.span) as t:
        r.write(0)
        r.write(29)
        assert written(t) == r.pages([0, 29])
        r.write(5)
        assert written(t) == r.pages([5])  # the gap alone is not a change


def test_mprotect_toggles(region) -> None:
    # mprotect_tests: the uffd-wp bit survives protection changes
    r = region(4)
    for i in range(4):
        r.write(i)
    with writewatch.track(r.span) as t:
        assert written(t) == set()
        _sys.mprotect(r.page(1), PAGE, 0)
        _sys.mprotect(r.page(1), PAGE, mmap.PROT_READ)
        _sys.mprotect(r.page(1), PAGE, mmap.PROT_READ | mmap.PROT_WRITE)
        assert written(t) == set()
        r.write(1)
        r.write(2)
        assert written(t) == r.pages([1, 2])


def test_numpy_targets_unaligned_and_offsets() -> None:
    a = np.zeros(100_000, np.uint8)  # malloc'd: not page aligned
    with pytest.warns(writewatch.PartialPageWarning), writewatch.track(a) as t:
        target = t.targets[0]
        assert target.start == a.ctypes.data and target.length == a.nbytes
        a[0] = 1
        a[50_000] = 1
        a[-1] = 1
        p = t.collect()
        m = p.mask(target.start, target.length)
        assert m.sum() == len(p) == 3
        offs = p.offsets(target.start, target.length)
        assert offs[0, 0] == 0 and offs[-1, 1] == a.nbytes
        for i in (0, 50_000, a.nbytes - 1):
            assert any(lo <= i < hi for lo, hi in offs.tolist())


def test_buffer_kinds() -> None:
    m = mmap.mmap(-1, 8 * PAGE)
    ba = bytearray(3 * PAGE)
    ct = (ctypes.c_uint64 * 4096)()
    with writewatch.track(m, memoryview(ba), ct) as t:
        assert len(t.targets) == 3
        m[PAGE * 3] = 1
        ba[0] = 2
        ct[1000] = 5
        p = t.collect()
        assert ctypes.addressof(ct) + 8000 in p
        assert t.targets[0].start + 3 * PAGE in p
        assert t.targets[1].start in p
    m.close()


def test_non_contiguous_numpy_view_tracks_its_extent() -> None:
    base = np.zeros((64, PAGE), np.uint8)
    view = base[::8, :16]  # strided: rows 0, 8, ... 56
    with writewatch.track(view) as t:
        view[3, 0] = 1  # row 24 of base
        p = t.collect()
        assert base[24].ctypes.data in p


def test_dontneed_is_a_change(region) -> None:
    r = region(16)
    for i in range(16):
        r.write(i, 9)
    with writewatch.track(r.span) as t:
        _sys.madvise(r.page(2), 3 * PAGE, U.MADV_DONTNEED)  # content becomes zero
        assert written(t) >= r.pages([2, 3, 4])
        assert written(t) == set()
        r.write(3)
        assert written(t) == r.pages([3])


def test_hole_scan_survives_a_mapping_made_during_the_collect(region, backend: str) -> None:
    """The hole scan (kernels without the 2026 PMD-hole fix) runs after the collect's own
    scan, while the target keeps running: memory mapped into the span in between is not
    registered yet. The collect must not fail (PAGEMAP_SCAN's CHECK_WPASYNC says EPERM
    there); the next collect finds the mapping as new memory and reports what was written."""
    if backend != "uffd-async":
        pytest.skip("hole_scan is an option of the uffd-async backend")
    r = region(8)
    _sys.munmap(r.page(4), 2 * PAGE)  # a gap the span covers
    with writewatch.track(r.span, hole_scan=True) as t:
        b = t._backend
        real = b._scan

        def scan_then_map(*a, **kw):
            got = real(*a, **kw)
            if b._scan is scan_then_map:
                b._scan = real
                _sys.mmap(r.page(4), 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                          mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED)
            return got

        r.write(1)
        b._scan = scan_then_map
        assert r.pages([1]) <= written(t)
        r.write(5)
        assert r.pages([5]) <= written(t)


@pytest.mark.parametrize("hole_scan", [False, True])
def test_thp_split_and_zap_stay_exact(region, hole_scan: bool, backend: str) -> None:
    if backend != "uffd-async" and hole_scan:
        pytest.skip("hole_scan is an option of the uffd-async backend")
    if backend == "uffd-async" and not hole_scan and not pmd_holes_reported():
        pytest.skip("kernel without the 2026 PMD-hole fix: hole_scan=False loses whole-THP "
                    "zaps by design (tests/kernel test_unpopulated_thp_hole shows the kernel "
                    "side)")
    # 2 MiB with 4 KiB pages; 32 MiB with arm64's 16 KiB pages, 512 MiB with 64 KiB
    pmd = procfs.thp_pmd_size() or 2 << 20
    n = pmd // PAGE
    r = region(2 * n, align=pmd)
    _sys.madvise(r.addr, 2 * pmd, U.MADV_HUGEPAGE)
    ctypes.memset(r.addr, 1, 2 * pmd)
    huge = _is_huge(r.addr)
    options = {"hole_scan": hole_scan} if backend == "uffd-async" else {}
    pages = [1, n * 300 // 512, n + n * 188 // 512]  # two in the first PMD, one in the second
    with writewatch.track(r.span, **options) as t:
        for i in pages:
            r.write(i, 2)
        got = written(t)
        if backend == "soft-dirty":
            # one soft-dirty bit per PMD-mapped THP: all pages of a written one
            assert r.pages(pages) <= got
        else:
            assert got == r.pages(pages)  # page-exact after the split
        # a whole-PMD zap of the second huge page reads written (kernel fix or hole scan;
        # soft-dirty: resident at the last reset and gone now)
        _sys.madvise(r.addr + pmd, pmd, U.MADV_DONTNEED)
        assert written(t) == r.pages(range(n, 2 * n))
        assert written(t) == set()
    if not huge:
        pytest.skip("no THP was obtained (fragmentation); the zap path was checked on 4 KiB")


def _is_huge(addr: int) -> bool:
    """Whether ``addr`` is in a VMA with THPs (smaps AnonHugePages: no PAGEMAP_SCAN needed)."""
    vma = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                vma = lo <= addr < hi
            elif vma and head == "AnonHugePages:":
                return int(line.split()[1]) > 0
    return False


def test_pagemap_bits_agree_with_collect(region, backend: str) -> None:
    # Oracle: the classic pagemap entry agrees with what collect says: bit 57 (uffd-wp) clear
    # on the written pages for the uffd backends, bit 55 (soft-dirty) set for soft-dirty.
    r = region(64)
    for i in range(64):
        r.write(i)
    with writewatch.track(r.span) as t:
        for i in (3, 9):
            r.write(i, 5)
        fd = open_pagemap("self")
        try:
            e = decode_entries(read_entries(fd, r.addr, 64, PAGE))
        finally:
            os.close(fd)
        reported = t.collect(reset=False).mask(r.addr, r.length)
        bits = e["soft_dirty"] if backend == "soft-dirty" else ~e["uffd_wp"]
        assert np.array_equal(bits, reported)


def test_kernel_mode_writes_are_reported(region) -> None:
    r = region(8)
    rfd, wfd = os.pipe()
    try:
        with writewatch.track(r.span) as t:
            os.write(wfd, b"x" * 100)
            n = os.readv(rfd, [memoryview(r.array())[PAGE * 5:PAGE * 5 + 100]])
            assert n == 100
            assert written(t) == r.pages([5])
    finally:
        os.close(rfd)
        os.close(wfd)


def test_close_removes_protection_and_descriptors(region) -> None:
    r = region(8)
    before = set(os.listdir("/proc/self/fd"))
    t = writewatch.track(r.span)
    assert set(os.listdir("/proc/self/fd")) != before
    t.close()
    t.close()  # idempotent
    assert set(os.listdir("/proc/self/fd")) == before
    fd = open_pagemap("self")
    try:
        e = decode_entries(read_entries(fd, r.addr, 8, PAGE))
    finally:
        os.close(fd)
    assert not e["uffd_wp"].any()
    with pytest.raises(writewatch.TrackerClosed):
        t.collect()


def test_garbage_collected_tracker_releases_descriptors(region) -> None:
    import gc
    r = region(8)
    before = set(os.listdir("/proc/self/fd"))
    t = writewatch.track(r.span)
    del t
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) == before


def test_random_writes_against_ground_truth(region) -> None:
    rng = random.Random(1234)
    r = region(2000)
    with writewatch.track(r.span) as t:
        for _ in range(20):
            pages = {rng.randrange(2000) for _ in range(rng.randrange(0, 300))}
            for i in pages:
                r.write(i, rng.randrange(256))
            assert written(t) == r.pages(pages)


def test_zeros_is_page_aligned_and_tracks_exactly() -> None:
    import warnings
    a = writewatch.zeros((256, 1024), np.float32)
    assert a.shape == (256, 1024) and a.dtype == np.float32 and not a.any()
    assert a.ctypes.data % PAGE == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with writewatch.track(a) as t:
            a[10, 0] = 1.0  # byte offset 40960: page 10 with 4 KiB pages, 2 with 16 KiB
            assert {int(x) - a.ctypes.data for x in t.collect().addresses()} == \
                {40960 // PAGE * PAGE}
