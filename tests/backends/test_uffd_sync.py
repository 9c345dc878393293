"""The uffd-wp-sync backend (faults resolved by a handler process) and live snapshots.

Tests that could deadlock if the design were wrong (a Python thread blocked on a protected
page while holding the GIL) run in a child interpreter with a timeout: a deadlock fails the
test instead of hanging the suite.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from memutil import PAGE, Region

import writewatch
from writewatch import _uapi as U
from writewatch import errors
from writewatch.backends import uffd_sync
from writewatch.backends.base import Span
from writewatch.backends.uffd_sync import UffdSyncBackend
from writewatch.kernel import _sys
from writewatch.kernel.pagemap import decode_entries, open_pagemap, read_entries
from writewatch.snapshot.live import LiveSnapshot, live_snapshot

USABLE, WHY = uffd_sync.probe()
pytestmark = pytest.mark.skipif(not USABLE, reason=f"uffd-wp-sync unusable here: {WHY}")
HAVE_UNPOPULATED = USABLE and bool(uffd_sync._offered() & U.UffdFeature.WP_UNPOPULATED)
#: False: behave as a kernel before 6.4 (no WP_UNPOPULATED); None: use it when offered
MODES = [pytest.param(None, id="default"),
         pytest.param(False, id="no-wp-unpopulated", marks=pytest.mark.skipif(
             not HAVE_UNPOPULATED, reason="same as default: the kernel lacks WP_UNPOPULATED"))]
TIMEOUT = 120


def _uffd_wp_bits(addr: int, npages: int) -> np.ndarray:
    fd = open_pagemap("self")
    try:
        return decode_entries(read_entries(fd, addr, npages, PAGE))["uffd_wp"]
    finally:
        os.close(fd)


def _pages(c, base: int) -> set[int]:
    out: set[int] = set()
    for lo, hi in c.written.tolist():
        out.update(range((lo - base) // PAGE, (hi - base) // PAGE))
    return out


@pytest.fixture(params=MODES)
def backend(request):
    b = UffdSyncBackend(unpopulated=request.param)
    yield b
    b.close()


def test_probe_reports_usable_with_a_reason() -> None:
    usable, reason = uffd_sync.probe()
    assert usable and "handler process" in reason
    if not HAVE_UNPOPULATED:
        assert "WP_UNPOPULATED" in reason


def test_backend_is_registered_and_tracks_through_the_public_api(region) -> None:
    r = region(16)
    with writewatch.track(r.span, backend="uffd-wp-sync") as t:
        assert t.backend == "uffd-wp-sync"
        assert len(t.collect()) == 0
        r.write(3)
        r.write(9, n=PAGE)
        got = t.collect()
        assert {int(a) for a in got.addresses()} == r.pages([3, 9])
        assert len(t.collect()) == 0


def test_writes_are_reported_exactly(region, backend) -> None:
    r = region(64)
    for i in range(0, 64, 2):
        r.write(i)  # half populated, half never touched
    backend.add(Span(r.addr, r.addr + r.length))
    assert bool(_uffd_wp_bits(r.addr, 64).all()), "every page must be protected once armed"
    first = backend.collect()
    assert len(first.written) == 0 and len(first.conservative) == 0
    assert r.read(5) == 0  # reading a never-touched page is not a write
    for i in (0, 1, 7, 8, 63):
        r.write(i, value=i + 1)
    c = backend.collect()
    assert _pages(c, r.addr) == {0, 1, 7, 8, 63}
    assert len(c.conservative) == 0
    assert [r.read(i) for i in (0, 1, 7, 8, 63)] == [1, 2, 8, 9, 64]
    assert backend.collect().written.size == 0
    r.write(7)
    assert _pages(backend.collect(), r.addr) == {7}
    assert backend.handler_stats()["faults"] == 6


def test_peek_keeps_and_max_pages_resumes(region, backend) -> None:
    r = region(32)
    backend.add(Span(r.addr, r.addr + r.length))
    for i in range(10):
        r.write(i * 3)
    assert _pages(backend.collect(reset=False), r.addr) == {i * 3 for i in range(10)}
    seen: set[int] = set()
    sizes = []
    for _ in range(4):
        got = _pages(backend.collect(max_pages=4), r.addr)
        sizes.append(len(got))
        assert not got & seen
        seen |= got
    assert sizes == [4, 4, 2, 0]
    assert seen == {i * 3 for i in range(10)}


def test_dontneed_then_write_is_never_lost(region, backend) -> None:
    r = region(16)
    for i in range(16):
        r.write(i)
    backend.add(Span(r.addr, r.addr + r.length))
    _sys.madvise(r.addr, 8 * PAGE, U.MADV_DONTNEED)  # drops PTEs and their uffd-wp bits
    r.write(5, value=9)  # a fresh page: no fault on kernels that keep no marker for anon
    c = backend.collect()
    assert {5} <= _pages(c, r.addr)
    assert _pages(c, r.addr) <= set(range(8))
    assert c.reasons
    backend.collect()  # a discarded page still present is reported once more
    assert backend.collect().written.size == 0
    r.write(6)
    assert _pages(backend.collect(), r.addr) == {6}


def test_thp_split_and_zap_stay_exact(region, backend) -> None:
    pmd = 2 << 20
    r = region(2 * pmd // PAGE, align=pmd)
    _sys.madvise(r.addr, r.length, U.MADV_HUGEPAGE)
    ctypes.memset(r.addr, 1, r.length)
    backend.add(Span(r.addr, r.addr + r.length))
    for i in (1, 300, 700):
        r.write(i, 2)
    assert _pages(backend.collect(), r.addr) == {1, 300, 700}  # 4 KiB exact after the split
    _sys.madvise(r.addr + pmd, pmd, U.MADV_DONTNEED)  # a whole-PMD zap reads written
    assert _pages(backend.collect(), r.addr) == set(range(512, 1024))
    assert _pages(backend.collect(), r.addr) == set()
    r.write(600)
    assert _pages(backend.collect(), r.addr) == {600}


def test_file_mappings_are_refused_with_a_hint(tmp_path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"\0" * 4 * PAGE)
    fd = os.open(f, os.O_RDWR)
    try:
        r = Region(4, flags=mmap.MAP_SHARED, fd=fd)
        try:
            with pytest.raises(errors.InvalidTarget, match="file mapping") as exc:
                writewatch.track(r.span, backend="uffd-wp-sync")
            assert "uffd-async" in (exc.value.hint or "")
        finally:
            r.unmap()
    finally:
        os.close(fd)


def test_fixed_mapping_over_part_of_a_span_reports_the_new_pages(region, backend) -> None:
    """A VMA mapped over part of a span is not registered: its pages carry no uffd-wp bit, so
    they are reported (conservatively), then registered and protected again."""
    r = region(16)
    for i in range(16):
        r.write(i)
    backend.add(Span(r.addr, r.addr + r.length))
    _sys.mmap(r.page(4), 4 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED)
    r.write(5)
    c = backend.collect()
    assert _pages(c, r.addr) == {4, 5, 6, 7}
    assert len(c.conservative) and c.reasons
    r.write(6)
    r.write(12)
    assert _pages(backend.collect(), r.addr) == {6, 12}


def test_remapped_span_is_reported_whole_then_tracked_again(region, backend) -> None:
    r = region(8)
    for i in range(8):
        r.write(i)
    backend.add(Span(r.addr, r.addr + r.length))
    _sys.munmap(r.addr + 2 * PAGE, 2 * PAGE)
    c = backend.collect()
    assert _pages(c, r.addr) == set(range(8)) and len(c.conservative)
    _sys.mmap(r.addr + 2 * PAGE, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED)
    r.write(3)
    c = backend.collect()
    assert 3 in _pages(c, r.addr)
    r.write(3)
    r.write(6)
    assert _pages(backend.collect(), r.addr) == {3, 6}


def test_untrackable_mapping_placed_over_a_span_is_reported_at_every_collect(
        region, backend, tmp_path) -> None:
    r = region(8)
    for i in range(8):
        r.write(i)
    backend.add(Span(r.addr, r.addr + r.length))
    f = tmp_path / "data"
    f.write_bytes(b"\1" * 2 * PAGE)
    fd = os.open(f, os.O_RDONLY)  # a shared mapping without VM_MAYWRITE: EPERM to register
    try:
        _sys.mmap(r.page(2), 2 * PAGE, mmap.PROT_READ, mmap.MAP_SHARED | U.MAP_FIXED, fd)
    finally:
        os.close(fd)
    for _ in range(2):
        c = backend.collect()
        assert {2, 3} <= _pages(c, r.addr) and c.reasons
    r.write(6)
    assert {2, 3, 6} <= _pages(backend.collect(), r.addr)


def test_shared_anonymous_memory(backend) -> None:
    if not backend.features & U.UffdFeature.WP_HUGETLBFS_SHMEM:
        pytest.skip("sync write-protect of shmem needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM (5.19)")
    m = mmap.mmap(-1, 8 * PAGE)  # MAP_SHARED | MAP_ANONYMOUS: shmem
    try:
        a = np.frombuffer(m, np.uint8)
        base = a.ctypes.data
        backend.add(Span(base, base + 8 * PAGE))
        a[2 * PAGE] = 1
        m[7 * PAGE] = 1
        assert _pages(backend.collect(), base) == {2, 7}
        backend.close()
        del a
    finally:
        m.close()


def test_kernel_mode_write_waits_for_the_handler_and_is_reported(region, backend) -> None:
    if backend.user_mode_only:
        pytest.skip("UFFD_USER_MODE_ONLY descriptor: kernel-mode writes fail with EFAULT")
    r = region(8)
    backend.add(Span(r.addr, r.addr + r.length))
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, b"x" * 100)
        n = os.readv(rfd, [memoryview(r.array())[PAGE * 5:PAGE * 5 + 100]])
        assert n == 100
        assert _pages(backend.collect(), r.addr) == {5}
    finally:
        os.close(rfd)
        os.close(wfd)


def test_bad_input_is_a_typed_error(region) -> None:
    with pytest.raises(errors.InvalidTarget):
        UffdSyncBackend(pid=1)
    with pytest.raises(errors.InvalidTarget):
        LiveSnapshot(0x1001, PAGE)
    with pytest.raises(errors.InvalidTarget):
        LiveSnapshot(PAGE, 0)
    r = region(4)
    b = UffdSyncBackend()
    try:
        b.add(Span(r.addr, r.addr + 4 * PAGE))
        with pytest.raises(errors.InvalidTarget):
            b.add(Span(r.addr + PAGE, r.addr + 2 * PAGE))
        r2 = region(2)
        r2.unmap()
        with pytest.raises(errors.InvalidTarget):
            b.add(Span(r2.addr, r2.addr + 2 * PAGE))
        # a range owned by another userfaultfd
        with pytest.raises(errors.AlreadyTracked):
            LiveSnapshot(r.addr, 4 * PAGE).close()
    finally:
        b.close()


def test_close_unprotects_reaps_the_helper_and_leaks_no_descriptor(region) -> None:
    r = region(8)
    for i in range(8):
        r.write(i)
    before = set(os.listdir("/proc/self/fd"))
    b = UffdSyncBackend()
    pid = b.helper_pid
    b.add(Span(r.addr, r.addr + r.length))
    assert _uffd_wp_bits(r.addr, 8).all()
    b.close()
    b.close()  # idempotent
    assert not _uffd_wp_bits(r.addr, 8).any()
    assert set(os.listdir("/proc/self/fd")) == before
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(errors.TrackerClosed):
        b.collect()
    r.write(3)  # unprotected: must not block


def test_forked_child_closing_its_copy_leaves_the_parent_tracked(region, backend) -> None:
    r = region(8)
    backend.add(Span(r.addr, r.addr + r.length))
    pid = os.fork()
    if pid == 0:  # the child's close (atexit, garbage collection) must not disarm the parent
        code = 0
        try:
            backend.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _uffd_wp_bits(r.addr, 8).all()
    r.write(4)
    assert _pages(backend.collect(), r.addr) == {4}


def _run_child(code: str, timeout: float = TIMEOUT) -> str:
    """Run ``code`` in a new interpreter; a hang (deadlock) fails instead of blocking."""
    try:
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"child did not finish in {timeout} s (deadlock?): {exc.stdout!r}")
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@pytest.mark.parametrize("unpopulated", MODES)
def test_writer_holding_the_gil_and_concurrent_collects(unpopulated) -> None:
    """A numpy store blocks in the kernel with the GIL held; another thread collects all the
    while. Every written page is reported, exactly (no conservative report)."""
    out = _run_child(f"""
        import mmap, random, sys, threading, time
        import numpy as np
        import writewatch
        PAGE, N = mmap.PAGESIZE, 256
        m = mmap.mmap(-1, N * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        a = np.frombuffer(m, np.uint8)
        base = a.ctypes.data
        t = writewatch.track(a, backend="uffd-wp-sync", unpopulated={unpopulated!r})
        written, got, done = set(), set(), threading.Event()
        collects = [0]
        def writer():
            rnd = random.Random(1)
            end, k = time.monotonic() + 1.0, 0
            while time.monotonic() < end or collects[0] < 3 or len(written) < 64:
                k += 1
                i = rnd.randrange(N)
                a[i * PAGE + k % PAGE] = k & 255   # holds the GIL while the fault waits
                written.add(i)
            done.set()
        def collector():
            while not done.is_set():
                p = t.collect()
                assert len(t.last.conservative) == 0, t.last.reasons
                got.update((int(x) - base) // PAGE for x in p.addresses())
                collects[0] += 1
        ths = [threading.Thread(target=writer), threading.Thread(target=collector)]
        for th in ths: th.start()
        for th in ths: th.join()
        got.update((int(x) - base) // PAGE for x in t.collect().addresses())
        assert written <= got, sorted(written - got)[:10]
        assert got <= written, sorted(got - written)[:10]
        t.close()
        print("OK", len(written), collects[0])
    """)
    ok, n, collects = out.split()
    assert ok == "OK" and int(n) >= 64 and int(collects) >= 3


def test_killed_helper_releases_blocked_writers() -> None:
    """SIGKILL the handler while a thread is blocked on a protected page: the last copy of
    the userfaultfd closes, the kernel unprotects and wakes; later calls raise HandlerDied."""
    out = _run_child("""
        import mmap, os, signal, subprocess
        import numpy as np
        from writewatch.backends.uffd_sync import UffdSyncBackend, HandlerDied
        from writewatch.backends.base import Span
        PAGE = mmap.PAGESIZE
        m = mmap.mmap(-1, 8 * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        a = np.frombuffer(m, np.uint8)
        base = a.ctypes.data
        b = UffdSyncBackend()
        b.add(Span(base, base + 8 * PAGE))
        os.kill(b.helper_pid, signal.SIGSTOP)   # faults now wait
        # this process cannot run Python while blocked below: another process kills
        killer = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -KILL {b.helper_pid}"])
        a[3 * PAGE] = 7                          # blocks (GIL held) until the handler dies
        killer.wait()
        a[5 * PAGE] = 1                          # protection is gone: does not block
        try:
            b.collect()
        except HandlerDied as exc:
            print("DIED", exc.errno)
        b.close()
        print("OK", a[3 * PAGE], a[5 * PAGE])
    """, timeout=60)
    assert "DIED" in out and "OK 7 1" in out


def test_helper_exits_when_the_tracked_process_dies() -> None:
    out = _run_child("""
        import mmap, os, sys
        import numpy as np
        import writewatch
        m = mmap.mmap(-1, 4 * mmap.PAGESIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        t = writewatch.track(np.frombuffer(m, np.uint8), backend="uffd-wp-sync")
        print(t._backend.helper_pid, flush=True)
        os._exit(0)
    """, timeout=60)
    pid = int(out.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith(("Z", "X")):
                    break
        except (FileNotFoundError, ProcessLookupError):  # reaped between open() and read()
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the handler outlived the process it served")


# -- live snapshots ---------------------------------------------------------------------------

@pytest.mark.parametrize("unpopulated", MODES)
def test_live_snapshot_equals_memory_at_arm_time_while_threads_write(region, unpopulated) -> None:
    n = 4096
    r = region(n)
    a = r.array()
    rng = np.random.default_rng(7)
    a[: n // 2 * PAGE] = rng.integers(0, 255, n // 2 * PAGE, dtype=np.uint8)  # rest unpopulated
    run, stop = threading.Event(), threading.Event()
    paused = [threading.Event(), threading.Event()]
    writes = [0, 0]

    def writer(k: int) -> None:
        g = np.random.default_rng(k)
        v = np.uint8(200 + k)
        while not stop.is_set():
            if not run.is_set():
                paused[k].set()
                run.wait(0.01)
                continue
            paused[k].clear()
            i = int(g.integers(n))
            a[i * PAGE: i * PAGE + 64] = v  # numpy: holds the GIL while blocked
            writes[k] += 1

    ths = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for th in ths:
        th.start()
    try:
        run.set()
        time.sleep(0.05)
        run.clear()
        for p in paused:
            assert p.wait(10)
        expected = a.copy()  # memory at arm time
        snap = LiveSnapshot(r.addr, r.length, unpopulated=unpopulated)
        before = sum(writes)
        run.set()
        snap.wait(timeout=TIMEOUT)
        time.sleep(0.02)
        during = sum(writes) - before
    finally:
        stop.set()
        run.set()
        for th in ths:
            th.join(30)
    try:
        assert during > 0
        assert not np.array_equal(a, expected), "the writers changed nothing"
        data = snap.data
        bad = np.nonzero((data != expected).reshape(n, PAGE).any(axis=1))[0]
        assert len(bad) == 0, f"pages differing from arm time: {bad[:10]}"
        assert snap.stats["on_fault"] > 0
        assert snap.stats["on_fault"] + snap.stats["background"] == n
        assert not _uffd_wp_bits(r.addr, n).any(), "the range must be unprotected at the end"
        del data
    finally:
        snap.close()


def test_live_snapshot_function_returns_bytes(region) -> None:
    r = region(8)
    for i in range(8):
        r.write(i, value=i + 1, n=PAGE)
    data = live_snapshot(r.addr, r.length, timeout=TIMEOUT)
    assert isinstance(data, bytes) and len(data) == r.length
    assert [data[i * PAGE] for i in range(8)] == list(range(1, 9))
    ctypes.memset(r.addr, 0, r.length)  # unprotected afterwards
