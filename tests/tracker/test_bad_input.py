"""Bad arguments to track() and collect() are typed errors, and leave nothing behind."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import writewatch

PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def buf() -> np.ndarray:
    return writewatch.zeros(8 * PAGE)


@pytest.mark.parametrize("span", [
    lambda a: (a, 1 << 64), lambda a: (1 << 64, PAGE), lambda a: ((1 << 64) - PAGE, 2 * PAGE),
    lambda a: (a, (1 << 64) - a), lambda a: (a, 1 << 62), lambda a: (-PAGE, PAGE),
    lambda a: (a, 0), lambda a: (a, -PAGE), lambda a: (a + 1, PAGE),
])
def test_spans_outside_the_address_space(buf: np.ndarray, span) -> None:  # type: ignore[no-untyped-def]
    addr = buf.__array_interface__["data"][0]
    with pytest.raises(writewatch.InvalidTarget):
        writewatch.track(span(addr))


def test_numpy_integers_make_a_span(buf: np.ndarray) -> None:
    addr = buf.__array_interface__["data"][0]
    with writewatch.track((np.int64(addr), np.uint64(2 * PAGE))) as t:
        buf[0] = 1
        assert len(t.collect()) == 1


@pytest.mark.parametrize("backend", [["uffd-async"], None, 3, b"auto", "nonsense"])
def test_backend_must_be_a_name(buf: np.ndarray, backend) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(writewatch.InvalidTarget):
        writewatch.track(buf, backend=backend)


@pytest.mark.parametrize("max_pages", [-1, 1.5, math.nan, math.inf, 1 << 64, "abc", None, True])
def test_max_pages_must_be_a_count(buf: np.ndarray, max_pages) -> None:  # type: ignore[no-untyped-def]
    with writewatch.track(buf) as t:
        buf[0] = 1
        with pytest.raises(writewatch.InvalidTarget):
            t.collect(max_pages=max_pages)
        assert len(t.collect()) == 1  # the page was not taken by the refused call


def test_garbage_collected_tracker_warns(buf: np.ndarray) -> None:
    import gc
    t = writewatch.track(buf)
    with pytest.warns(ResourceWarning, match="unclosed writewatch.MemoryTracker"):
        del t
        gc.collect()


def _libc():  # type: ignore[no-untyped-def]
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    return libc


def test_span_over_read_only_memory_reports_writes_once_writable() -> None:
    import ctypes
    import mmap

    libc = _libc()
    m = mmap.mmap(-1, 8 * PAGE)
    a = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert libc.mprotect(a + 4 * PAGE, 4 * PAGE, mmap.PROT_READ) == 0
    with writewatch.track((a, 8 * PAGE)) as t:
        assert len(t.collect()) == 0
        assert libc.mprotect(a + 4 * PAGE, 4 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE) == 0
        ctypes.memset(a + 5 * PAGE, 1, 1)
        assert a + 5 * PAGE in t.collect()


def test_span_over_a_hole_tracks_what_is_mapped_there_later() -> None:
    import ctypes
    import mmap

    libc = _libc()
    m = mmap.mmap(-1, 8 * PAGE)
    a = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert libc.munmap(a + 4 * PAGE, 4 * PAGE) == 0
    with writewatch.track((a, 8 * PAGE)) as t:
        assert len(t.collect()) == 0
        assert len(t.collect()) == 0  # the hole is not reported as written
        fixed = 0x10 | 0x20 | 0x02  # MAP_FIXED | MAP_ANONYMOUS | MAP_PRIVATE
        assert libc.mmap(a + 4 * PAGE, 4 * PAGE, 3, fixed, -1, 0) == a + 4 * PAGE
        ctypes.memset(a + 6 * PAGE, 1, 1)
        ctypes.memset(a + PAGE, 1, 1)
        got = t.collect()
        assert got.addresses().tolist() == [a + PAGE, a + 6 * PAGE]
        ctypes.memset(a + 7 * PAGE, 1, 1)
        assert t.collect().addresses().tolist() == [a + 7 * PAGE]
    assert libc.munmap(a + 4 * PAGE, 4 * PAGE) == 0
    with pytest.raises(writewatch.InvalidTarget, match="nothing is mapped"):
        writewatch.track((a + 4 * PAGE, PAGE))


@pytest.mark.parametrize("backend", ["auto", "uffd-async", "uffd-wp-sync"])
def test_unknown_options_are_refused(buf: np.ndarray, backend: str) -> None:
    f = writewatch.features()
    if backend != "auto" and not f.backends[backend].usable:
        pytest.skip(f"{backend} unusable here: {f.backends[backend].detail}")
    with pytest.raises(writewatch.InvalidTarget, match="takes no option max_page") as e:
        writewatch.track(buf, backend=backend, max_page=5)
    assert "its options" in e.value.hint
