"""The soft-dirty backend through the Backend interface, mirroring selftests/mm/soft-dirty.c.

Tests that need soft-dirty skip with the probe's reason where the kernel lacks it (this
project's development kernel has CONFIG_MEM_SOFT_DIRTY off); they run on Debian's Linux 6.1
through ``python tools/kernel_matrix.py pytest tests/backends/test_soft_dirty.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from memutil import PAGE, RW, Region, open_fds

from writewatch import _uapi as U
from writewatch import errors
from writewatch.backends import soft_dirty as sd
from writewatch.backends.base import Span
from writewatch.kernel import LINUX, _sys, procfs

SD_BIT = int(U.PagemapBit.SOFT_DIRTY)


@pytest.fixture(scope="module")
def usable() -> bool:
    return sd.probe()[0]


@pytest.fixture
def need_soft_dirty(usable: bool) -> None:
    if not usable:
        pytest.skip(f"soft-dirty unusable here: {sd.probe()[1]}")


def span(r: Region, label: str = "r") -> Span:
    return Span(r.addr, r.addr + r.length, label)


@contextlib.contextmanager
def tracked(*spans: Span, **options: object) -> Iterator[sd.SoftDirtyBackend]:
    """A soft-dirty backend of this process tracking ``spans``, closed afterwards."""
    b = sd.SoftDirtyBackend(**options)  # type: ignore[arg-type]
    try:
        for s in spans:
            b.add(s)
        yield b
    finally:
        b.close()


def written(b: sd.SoftDirtyBackend, **kw: int) -> set[int]:
    got = b.collect(**kw)
    return {int(a) for lo, hi in got.written.tolist() for a in range(lo, hi, PAGE)}


def conservative(got) -> set[int]:
    return {int(a) for lo, hi in got.conservative.tolist() for a in range(lo, hi, PAGE)}


def pages_of(got) -> set[int]:
    return {int(a) for lo, hi in got.written.tolist() for a in range(lo, hi, PAGE)}


def populate(r: Region) -> None:
    for i in range(r.npages):
        r.write(i, 7)


def bit55(addr: int) -> bool:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        raw = int.from_bytes(os.pread(fd, 8, addr // PAGE * 8), "little")
    finally:
        os.close(fd)
    return bool(raw & SD_BIT)


# -- runs everywhere -----------------------------------------------------------------------------

def test_registered_and_process_wide() -> None:
    from writewatch.backends import REGISTRY
    assert REGISTRY["soft-dirty"] is sd.SoftDirtyBackend
    assert sd.SoftDirtyBackend.ranged_reset is False


def test_probe_gives_a_known_answer(usable: bool) -> None:
    from writewatch.kernel import probes
    ok, reason = sd.probe()
    assert ok == usable
    assert (ok, reason) in {(p.ok, p.detail) for p in probes._SOFT_DIRTY_REASONS.values()}


def test_probe_reports_config_off_when_bit_55_never_sets(usable: bool) -> None:
    if usable:
        pytest.skip("soft-dirty works on this kernel")
    # the functional test the probe makes, done here by hand: a fresh written page is dirty
    # wherever soft-dirty exists (new VMA and written PTE)
    r = Region(1)
    try:
        r.write(0)
        assert not bit55(r.addr)
    finally:
        r.unmap()
    assert sd.probe() == (False, "CONFIG_MEM_SOFT_DIRTY is off (pagemap bit 55 never set)")


def test_decode_state_and_regions_agree() -> None:
    present, swapped, dirty = 1 << 63, 1 << 62, SD_BIT
    raw = np.array([0, present, present | dirty, swapped | dirty, dirty, 0], np.uint64)
    st = sd.decode_state(raw)
    assert st.dirty.tolist() == [False, False, True, True, True, False]
    assert st.present.tolist() == [False, True, True, False, False, False]
    assert st.resident.tolist() == [False, True, True, True, False, False]
    base = 0x10000
    C = U.PageCategory
    regions = np.array([[base + PAGE, base + 2 * PAGE, C.PRESENT],
                        [base + 2 * PAGE, base + 3 * PAGE, C.PRESENT | C.SOFT_DIRTY],
                        [base + 3 * PAGE, base + 4 * PAGE, C.SWAPPED | C.SOFT_DIRTY],
                        [base + 4 * PAGE, base + 5 * PAGE, C.SOFT_DIRTY]], np.uint64)
    st2 = sd.state_from_regions(regions, base, 6, PAGE)
    for a, b in zip(st[:3], st2[:3], strict=True):
        assert a.tolist() == b.tolist()


def test_scan_and_pagemap_reads_agree_on_presence(region) -> None:
    """Both read paths, through the seam and in-process, decode the same pages (present and
    swapped bits exist on every kernel, soft-dirty or not)."""
    if not LINUX.capabilities().categories & U.PageCategory.SOFT_DIRTY:
        pytest.skip("PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY needs Linux 6.8")
    r = region(40)
    for i in (0, 1, 2, 9, 17, 33, 39):
        r.write(i)
    _sys.munmap(r.page(20), 3 * PAGE)  # a gap outside every VMA
    s = span(r)
    got = {}
    for method in ("scan", "pagemap"):
        b = sd.SoftDirtyBackend(method=method)
        try:
            ranges = [(s.start, s.end)]
            seam = b._decode([s], b._read_other(ranges))[0]
            atomic = b._decode([s], LINUX.read_then_clear(b.pagemap, ranges, b._mask,
                                                          clear=False))[0]
        finally:
            b.close()
        assert atomic.ok
        assert seam.present.tolist() == atomic.present.tolist()
        got[method] = atomic
    assert got["scan"].present.tolist() == got["pagemap"].present.tolist()
    assert set(np.flatnonzero(got["scan"].present).tolist()) == {0, 1, 2, 9, 17, 33, 39}


def test_bad_input_is_typed(region) -> None:
    with pytest.raises(errors.InvalidTarget):
        sd.SoftDirtyBackend(method="bogus")
    r = region(4)
    with tracked(span(r)) as b:
        with pytest.raises(errors.InvalidTarget):
            b.add(Span(r.addr + PAGE, r.addr + 2 * PAGE))  # overlaps
        with pytest.raises(errors.InvalidTarget):
            b.add(Span(r.addr + 1, r.addr + PAGE))  # unaligned
        with pytest.raises(errors.InvalidTarget):
            b.collect(max_pages=-1)
    with pytest.raises(errors.TrackerClosed):
        b.collect()
    with pytest.raises(errors.NoSuchProcess):
        sd.SoftDirtyBackend(pid=2**22 + 12345)


# -- need soft-dirty -----------------------------------------------------------------------------

pytestmark_sd = pytest.mark.usefixtures("need_soft_dirty")


@pytestmark_sd
def test_exactly_the_written_pages(region) -> None:
    r = region(64)
    populate(r)
    with tracked(span(r)) as b:
        assert written(b) == set()
        for i in (3, 10, 11, 63):
            r.write(i, 1)
        got = b.collect()
        assert pages_of(got) == r.pages([3, 10, 11, 63])
        assert len(got.conservative) == 0 and got.reasons == ()
        assert written(b) == set()
        r.write(10, 2)
        assert written(b) == r.pages([10])


@pytestmark_sd
@pytest.mark.parametrize("method", ["scan", "pagemap"])
def test_both_read_paths_report_the_written_pages(region, method: str) -> None:
    """PAGE_IS_SOFT_DIRTY through PAGEMAP_SCAN (6.8+) and bit 55 of the pagemap file: the
    same pages, present or not, and nothing else."""
    if method == "scan" and not LINUX.capabilities().categories & U.PageCategory.SOFT_DIRTY:
        pytest.skip("PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY needs Linux 6.8")
    r = region(64)
    for i in range(0, 64, 2):
        r.write(i)  # present, half of them
    with tracked(span(r), method=method) as b:
        assert written(b) == set()
        for i in (1, 2, 30, 31, 63):  # never-touched and populated pages
            r.write(i, 7)
        got = b.collect()
        assert pages_of(got) == r.pages([1, 2, 30, 31, 63]) and got.reasons == ()
        assert written(b) == set()


@pytestmark_sd
def test_never_touched_pages_are_reported_on_first_write(region) -> None:
    r = region(32)  # not populated: holes, clean after the reset of add()
    with tracked(span(r)) as b:
        assert written(b) == set()
        r.read(4)  # a read fault maps the zero page: not a write
        r.write(5)
        assert written(b) == r.pages([5])


@pytestmark_sd
def test_peek_does_not_reset(region) -> None:
    r = region(8)
    populate(r)
    with tracked(span(r)) as b:
        r.write(2)
        assert written(b, reset=False) == r.pages([2])
        r.write(6)
        assert written(b, reset=False) == r.pages([2, 6])
        assert bit55(r.page(2))
        assert written(b) == r.pages([2, 6])
        assert written(b) == set()


@pytestmark_sd
def test_reset_is_whole_process_and_other_backends_keep_their_pages(region) -> None:
    a, c, untracked = region(8), region(8), region(2)
    for r in (a, c, untracked):
        populate(r)
    ba, bc = sd.SoftDirtyBackend(), sd.SoftDirtyBackend()
    try:
        ba.add(span(a, "a"))
        bc.add(span(c, "c"))
        a.write(1)
        c.write(2)
        untracked.write(0)
        assert bit55(untracked.page(0))
        assert written(ba) == a.pages([1])
        # clear_refs 4 is process wide: the untracked page's bit is gone too ...
        assert not bit55(untracked.page(0))
        # ... and so is c's, but ba's reset read it first and kept it for bc
        assert not bit55(c.page(2))
        assert written(bc, reset=False) == c.pages([2])
        assert written(bc) == c.pages([2])
        assert written(bc) == set()
    finally:
        ba.close()
        bc.close()


@pytestmark_sd
def test_new_vma_at_a_reused_address_reads_dirty(region) -> None:
    # soft-dirty.c test_vma_reuse: a VMA mapped where one was unmapped reads dirty, written
    # or not (VM_SOFTDIRTY). A false positive of the mechanism: reported, and counted as such.
    r = region(16)
    populate(r)
    with tracked(span(r)) as b:
        assert written(b) == set()
        _sys.munmap(r.addr, r.length)
        assert _sys.mmap(r.addr, r.length, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                         | U.MAP_FIXED) == r.addr
        got = b.collect()
        assert pages_of(got) == r.pages(range(16))
        assert conservative(got) == r.pages(range(16))
        assert any("VM_SOFTDIRTY" in why for why in got.reasons)
        # the reset cleared VM_SOFTDIRTY: exact again
        r.write(3)
        assert written(b) == r.pages([3])


@pytestmark_sd
def test_vmflags_classify_a_fully_populated_new_vma(region) -> None:
    # no hole to tell it by: /proc/self/smaps VmFlags "sd" does
    r = region(8)
    with tracked(span(r)) as b:
        _sys.mmap(r.addr, r.length, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED)
        populate(r)
        got = b.collect()
        assert pages_of(got) == r.pages(range(8))
        assert conservative(got) == r.pages(range(8))


@pytestmark_sd
def test_merged_vma_reads_dirty_as_a_false_positive(region) -> None:
    # a new anonymous mapping right after a tracked clean one merges into it; mmap_region marks
    # the expanded VMA VM_SOFTDIRTY, so the tracked, unwritten pages read dirty
    r = region(16)
    populate(r)
    _sys.munmap(r.page(8), 8 * PAGE)
    with tracked(Span(r.addr, r.page(8), "first half")) as b:
        assert written(b) == set()
        _sys.mmap(r.page(8), 8 * PAGE, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED)
        got = b.collect()
        assert pages_of(got) == r.pages(range(8))
        assert conservative(got) == r.pages(range(8))
        assert written(b) == set()


@pytestmark_sd
def test_mprotect_ro_rw_toggle_does_not_redirty(region) -> None:
    # soft-dirty.c test_mprotect: clear after marking RO, clear after marking RW, set after
    # rewrite (vma_soft_dirty_enabled, 6.0)
    r = region(4)
    populate(r)
    with tracked(span(r)) as b:
        _sys.mprotect(r.page(1), PAGE, mmap.PROT_READ)
        assert written(b, reset=False) == set()
        _sys.mprotect(r.page(1), PAGE, RW)
        assert written(b) == set()
        r.write(1)
        assert written(b) == r.pages([1])


@pytestmark_sd
def test_max_pages_loses_nothing(region) -> None:
    r = region(32)
    populate(r)
    with tracked(span(r)) as b:
        want = r.pages([1, 3, 5, 7, 9, 11, 13, 15, 17, 19])
        for a in want:
            ctypes.memset(a, 3, 1)
        seen: set[int] = set()
        for _ in range(2):
            part = written(b, max_pages=4)
            assert len(part) == 4 and not part & seen
            seen |= part
        r.write(30)  # a write after the reset that took all of them
        rest = written(b)
        assert seen | rest == want | r.pages([30])
        assert written(b) == set()


@pytestmark_sd
def test_munmap_reports_the_span_once(region) -> None:
    r = region(8)
    populate(r)
    with tracked(span(r)) as b:
        _sys.munmap(r.page(2), 2 * PAGE)
        got = b.collect()
        assert pages_of(got) == r.pages(range(8)) and got.reasons
        r.write(0)
        assert written(b) == r.pages([0])


@pytestmark_sd
def test_dontneed_zap_is_reported(region) -> None:
    r = region(8)
    populate(r)
    with tracked(span(r)) as b:
        _sys.madvise(r.page(4), 2 * PAGE, U.MADV_DONTNEED)
        got = b.collect()
        assert pages_of(got) == r.pages([4, 5]) == conservative(got)
        assert written(b) == set()


@pytestmark_sd
def test_probe_does_not_disturb_the_caller(region) -> None:
    r = region(4)
    populate(r)
    with tracked(span(r)) as b:
        r.write(2)
        assert sd.probe()[0]
        assert bit55(r.page(2))
        assert written(b) == r.pages([2])


@pytestmark_sd
def test_python_threads_cannot_write_between_read_and_reset() -> None:
    """A Python thread writes each page of a region once, in order, while collects run: the
    union of the collects holds every page (a write between read and reset would be lost)."""
    n = 3000
    buf = mmap.mmap(-1, n * PAGE)
    mv = memoryview(buf)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    mv[::PAGE] = b"\1" * n  # populate
    b = sd.SoftDirtyBackend()
    done = threading.Event()

    def writer() -> None:
        for i in range(n):
            mv[i * PAGE] = 2  # holds the GIL: the store is made by Python code
            if i % 10 == 0:
                time.sleep(0.001)  # let the collector in often
        done.set()

    try:
        b.add(Span(addr, addr + n * PAGE, "buf"))
        seen: set[int] = set()
        t = threading.Thread(target=writer)
        t.start()
        collects = 0
        while not done.is_set():
            seen |= written(b)
            collects += 1
        t.join()
        seen |= written(b)
        assert collects >= 5
        assert seen == {addr + i * PAGE for i in range(n)}
    finally:
        b.close()
        mv.release()
        buf.close()


@pytestmark_sd
def test_close_releases_descriptors(region) -> None:
    r = region(4)
    before = open_fds()
    b = sd.SoftDirtyBackend()
    b.add(span(r))
    b.collect()
    b.close()
    b.close()
    assert open_fds() == before


_CHILD = textwrap.dedent("""\
    import ctypes, mmap, sys
    PAGE = mmap.PAGESIZE
    buf = mmap.mmap(-1, 16 * PAGE)
    for i in range(16):
        buf[i * PAGE] = 1
    print(ctypes.addressof(ctypes.c_char.from_buffer(buf)), flush=True)
    for line in sys.stdin:
        i = int(line)
        buf[i * PAGE] = 9
        print("ok", flush=True)
    """)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return procfs.parse_stat_state(f.read())


@pytestmark_sd
def test_another_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin and child.stdout
    b = None
    try:
        addr = int(child.stdout.readline())
        b = sd.SoftDirtyBackend(pid=child.pid)
        b.add(Span(addr, addr + 16 * PAGE, "child"))
        assert written(b) == set()
        for i in (2, 7):
            child.stdin.write(f"{i}\n")
            child.stdin.flush()
            assert child.stdout.readline() == "ok\n"
        assert written(b, reset=False) == {addr + 2 * PAGE, addr + 7 * PAGE}
        assert written(b) == {addr + 2 * PAGE, addr + 7 * PAGE}
        assert _state(child.pid) not in "Tt"  # continued after the reset
        assert written(b) == set()

        # an error while it is stopped still continues it
        def boom(ranges):
            raise errors.KernelError("injected")
        b._read_other = boom  # type: ignore[method-assign]
        with pytest.raises(errors.KernelError):
            b.collect()
        assert _state(child.pid) not in "Tt"
        del b._read_other
        child.stdin.write("3\n")
        child.stdin.flush()
        assert child.stdout.readline() == "ok\n"
        assert written(b) == {addr + 3 * PAGE}
    finally:
        if b is not None:
            b.close()
        child.kill()
        child.wait()


@pytestmark_sd
def test_tracker_with_soft_dirty_backend() -> None:
    import writewatch
    buf = mmap.mmap(-1, 16 * PAGE)
    arr = np.frombuffer(buf, np.uint8)
    arr[:] = 1
    base = arr.ctypes.data
    with writewatch.track(arr, backend="soft-dirty") as t:
        assert t.backend == "soft-dirty"
        assert len(t.collect()) == 0
        arr[5 * PAGE] = 2
        arr[9 * PAGE + 17] = 2
        assert {int(a) for a in t.collect().addresses()} == {base + 5 * PAGE, base + 9 * PAGE}
        assert len(t.collect()) == 0
    del arr
    buf.close()


@pytestmark_sd
def test_random_writes_against_ground_truth(region) -> None:
    """Random writes, peeks and partial collects over a populated region: every collect
    equals the pages written since the last reset (exact: no VMA changes, no false positive)."""
    import random
    rng = random.Random(1234)
    r = region(200)
    populate(r)
    with tracked(span(r)) as b:
        truth: set[int] = set()
        for _ in range(40):
            for i in rng.sample(range(200), rng.randint(0, 30)):
                r.write(i, rng.randint(1, 255))
                truth.add(r.page(i))
            op = rng.random()
            if op < 0.2:
                assert written(b, reset=False) == truth
            elif op < 0.4:
                got = written(b, max_pages=10)
                assert got <= truth and len(got) == min(10, len(truth))
                truth -= got
            else:
                assert written(b) == truth
                truth = set()
