"""Buffer snapshots: every snapshot restores the memory of its moment, byte for byte."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from memutil import PAGE, RW, Region
from snaphelp import rand_bytes, store

import writewatch
from writewatch import _uapi as U
from writewatch.kernel import _sys, procfs
from writewatch.snapshot import SizeMismatch, Snapshots, Snapshotter
from writewatch.snapshot.source import BufferSource

HUGE = procfs.thp_pmd_size() or (2 << 20)
NPAGES = 2 * HUGE // PAGE  # two PMDs: room for THP
MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2  # include/uapi/linux/mman.h


def _madv(name: str, default: int) -> int:
    return int(getattr(U, name, default))


MADV_DONTNEED = _madv("MADV_DONTNEED", 4)
MADV_HUGEPAGE = _madv("MADV_HUGEPAGE", 14)
MADV_NOHUGEPAGE = _madv("MADV_NOHUGEPAGE", 15)

page_run = st.tuples(st.integers(0, NPAGES - 1), st.integers(1, 64))
op = st.one_of(
    st.tuples(st.just("write"), page_run, st.integers(0, 2**32 - 1)),
    st.tuples(st.just("dontneed"), page_run, st.just(0)),
    st.tuples(st.just("mremap"), page_run, st.just(0)),
    st.tuples(st.just("remap"), page_run, st.just(0)),
    st.tuples(st.just("thp"), st.tuples(st.integers(0, 1), st.just(1)), st.integers(0, 1)),
    st.tuples(st.just("fill"), st.tuples(st.just(0), st.just(NPAGES)), st.integers(0, 255)),
)


def apply(r: Region, kind: str, first: int, n: int, arg: int) -> None:
    n = min(n, NPAGES - first)
    addr, length = r.page(first), n * PAGE
    if kind == "write":
        rng = np.random.default_rng(arg)
        arr = r.array()
        for i in rng.integers(first, first + n, size=min(n, 8)):
            off = int(rng.integers(0, PAGE - 8))
            arr[i * PAGE + off:i * PAGE + off + 8] = rng.integers(1, 256, 8, dtype=np.uint8)
    elif kind == "dontneed":
        _sys.madvise(addr, length, MADV_DONTNEED)
    elif kind == "mremap":
        # move the pages away and back: same bytes, new VMA. mremap cannot span VMAs (EFAULT),
        # and earlier ops may have split the region (madvise flags, a remap that cannot merge)
        vma = next(m for m in procfs.read_maps() if m.start <= addr < m.end)
        length = min(length, vma.end - addr)
        tmp = _sys.mmap(0, length, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        _sys.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, tmp)
        _sys.mremap(tmp, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, addr)
    elif kind == "remap":
        _sys.munmap(addr, length)
        _sys.mmap(addr, length, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED)
    elif kind == "thp":
        h = first * HUGE // PAGE
        _sys.madvise(r.page(h), HUGE, MADV_HUGEPAGE if arg else MADV_NOHUGEPAGE)
        r.array()[h * PAGE:(h * PAGE) + HUGE:PAGE] += 1  # touch every page: may fault a THP
    elif kind == "fill":
        r.array()[:] = arg


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
# found by hypothesis: NOHUGEPAGE splits the VMA, the remapped page cannot merge back, so the
# mremap of two pages would span two VMAs
@example(ops=[("thp", (1, 1), 0), ("remap", (614, 1), 0), ("mremap", (614, 2), 0)],
         zstd=False, chunk=PAGE)
@given(ops=st.lists(op, min_size=1, max_size=8), zstd=st.booleans(),
       chunk=st.sampled_from([PAGE, 16 * PAGE, 1 << 20]))
def test_random_workload_every_snapshot_restores(tmp_path_factory, ops, zstd, chunk):
    """writes, DONTNEED, mremap away and back, munmap + mmap, THP on/off; save after each
    step; every snapshot restores that moment exactly (also after compaction and pruning)."""
    from memutil import require_uffd_async
    require_uffd_async()
    d = tmp_path_factory.mktemp("snap")
    r = Region(NPAGES, align=HUGE)
    try:
        r.array()[:] = 0x5A
        expect = []
        with Snapshotter(r.span, store(d), compress="zstd" if zstd else None,
                         chunk_size=chunk) as s:
            infos = [s.save()]
            expect.append(r.array().copy())
            for kind, (first, n), arg in ops:
                apply(r, kind, first, n, arg)
                infos.append(s.save())
                expect.append(r.array().copy())
            out = np.empty(r.length, np.uint8)
            for info, want in zip(infos, expect, strict=True):
                s.restore(info, into=out)
                assert np.array_equal(out, want), f"snapshot {info.name} after {ops}"
            assert s.verify().ok
            s.compact(infos[-1])
            if len(infos) > 2:
                s.prune(2)
            for info, want in zip(infos[-2:], expect[-2:], strict=True):
                assert np.array_equal(s.restore(info.name).data, want)
    finally:
        r.unmap()


def test_incremental_stores_only_written_pages(tmp_path, region, tracking):
    r = region(256)
    r.array()[:] = 3
    with Snapshotter(r.span, store(tmp_path), zero_pages=False) as s:
        full = s.save()
        assert full.kind == "full" and full.pages == 256
        for i in (5, 6, 100):
            r.write(i, 9)
        delta = s.save()
        assert delta.kind == "delta" and delta.parent == full.name
        assert delta.pages == 3
        assert delta.stored_bytes <= 3 * PAGE + 64
        nothing = s.save()
        assert nothing.pages == 0 and nothing.stored_bytes == 0


def test_zero_pages_store_no_data(tmp_path, region, tracking):
    r = region(64)
    with Snapshotter(r.span, store(tmp_path)) as s:
        info = s.save()  # never touched: all zero
        assert info.stored_bytes == 0 and info.pages == 64
        assert not s.restore(info).data.any()


class _Conservative:
    """A tracker that reports every page plus what the real one reports (false positives
    must not matter)."""

    def __init__(self, tracker: writewatch.Tracker) -> None:
        self.t = tracker
        self.page_size = tracker.page_size
        self.targets = tracker.targets
        self.spans = tracker.spans

    def collect(self) -> writewatch.Pages:
        self.t.collect()
        return writewatch.Pages([(s.start, s.end) for s in self.spans], self.page_size)

    def close(self) -> None:
        self.t.close()


def test_conservative_tracker_gives_the_same_bytes(tmp_path, region, tracking):
    r = region(32)
    rng = np.random.default_rng(1)
    src = BufferSource(_Conservative(writewatch.track(r.span)), owned=True)
    with Snapshotter(src, store(tmp_path)) as s:
        want = []
        for _ in range(4):
            r.array()[rng.integers(0, r.length, 50)] = rng.integers(0, 256, 50, dtype=np.uint8)
            want.append((s.save(), r.array().copy()))
        for info, arr in want:
            assert info.pages == 32
            assert np.array_equal(s.restore(info).data, arr)


def test_restore_into_wrong_size_is_an_error(tmp_path, region, tracking):
    r = region(8)
    r.array()[:] = 1
    with Snapshotter(r.span, store(tmp_path)) as s:
        info = s.save()
        for bad in (bytearray(r.length - 1), bytearray(r.length + PAGE), bytearray()):
            with pytest.raises(SizeMismatch, match=f"snapshot {info.name} is {r.length} bytes"):
                s.restore(info, into=bad)
        with pytest.raises(writewatch.InvalidTarget, match="read-only"):
            s.restore(info, into=bytes(r.length))
        with pytest.raises(writewatch.WriteWatchError):
            s.restore(info, into=[bytearray(r.length), bytearray(1)])


def test_unaligned_buffer_restores_exact_bytes(tmp_path, tracking):
    buf = np.frombuffer(bytearray(rand_bytes(np.random.default_rng(2), 3 * PAGE + 123)),
                        np.uint8)[7:]
    with pytest.warns(writewatch.PartialPageWarning), Snapshotter(buf, store(tmp_path)) as s:
        a = s.save()
        first = buf.copy()
        buf[100:200] = 0
        b = s.save()
        out = np.empty_like(buf)
        s.restore(a, into=out)
        assert np.array_equal(out, first)
        s.restore(b, into=out)
        assert np.array_equal(out, buf)


def test_several_targets(tmp_path, region, tracking):
    r1, r2 = region(4), region(6)
    r1.array()[:] = 1
    r2.array()[:] = 2
    t = writewatch.track(r1.span, r2.span)
    with Snapshotter(t, store(tmp_path)) as s:
        a = s.save()
        r2.write(3, 7)
        s.save()
        img = s.restore(a)
        assert len(img.regions) == 2
        outs = [bytearray(r.length) for r in sorted((r1, r2), key=lambda r: r.addr)]
        s.restore(a, into=outs)
        assert {bytes(o) for o in outs} == {b"\1" * r1.length, b"\2" * r2.length}
    t.close()


def test_snapshots_reader_and_diff(tmp_path, region, tracking):
    r = region(16)
    r.array()[:] = 1
    with Snapshotter(r.span, store(tmp_path)) as s:
        a = s.save()
        r.write(2, 5)
        r.write(9, 1)  # same value: reported written, content unchanged
        b = s.save()
    reader = Snapshots(tmp_path)
    assert [i.name for i in reader.list()] == [a.name, b.name]
    d = reader.diff(a, b)
    assert list(d.changed) == [(r.page(2), r.page(3))]
    assert not d.added and not d.removed and not d.regions_changed
    assert reader.name(1) == a.name and reader.name("latest") == b.name


def test_closed_snapshotter(tmp_path, region, tracking):
    r = region(2)
    s = Snapshotter(r.span, store(tmp_path))
    s.close()
    s.close()
    with pytest.raises(writewatch.WriteWatchError, match="closed"):
        s.save()
    assert os.listdir(tmp_path / "snapshots") == []
