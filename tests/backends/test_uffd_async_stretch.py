"""Runs of another process's memory collected by one scan over their enclosing range.

The gaps between the runs are scanned too: unregistered VMAs there are skipped by the kernel,
a tracked VMA replaced in place shows as pages the scan did not cover, and a VMA in a gap that
another userfaultfd owns keeps its written state. The backend used for another process is
exercised here on this process's memory (``enclose`` set by hand), where every step can be
checked against the pages written.
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from memutil import PAGE, Region, require_uffd_async

from writewatch import _uapi as U
from writewatch.backends.base import Span
from writewatch.backends.uffd_async import UffdAsyncBackend, open_uffd
from writewatch.kernel import LINUX, _sys
from writewatch.pages import Pages

pytestmark = pytest.mark.kernel
W = int(U.PageCategory.WRITTEN)
N = 8  # pages per piece: tracked A | gap | tracked B | gap | tracked C


@pytest.fixture
def layout():  # type: ignore[no-untyped-def]
    require_uffd_async()
    if not LINUX.capabilities().pte_none_written:
        pytest.skip("stretch scans are used only where the generic path reads a zapped PTE "
                    "as written (the 2026 fix)")
    r = Region(5 * N)
    r.array()[:] = 1  # every page present
    b = UffdAsyncBackend("self")
    b.enclose = True
    spans = [Span(r.page(k * N), r.page(k * N + N), f"piece{k}") for k in (0, 2, 4)]
    for s in spans:
        b.add(s)
    try:
        yield r, b, spans
    finally:
        b.close()
        r.unmap()


def collect(b: UffdAsyncBackend) -> tuple[Pages, Pages, int]:
    before = b.stats.scan_calls
    got = b.collect()
    return (Pages.from_kernel(got.written, PAGE), Pages.from_kernel(got.conservative, PAGE),
            b.stats.scan_calls - before)


def test_writes_in_runs_exact_and_gaps_ignored_in_one_scan(layout) -> None:  # type: ignore[no-untyped-def]
    r, b, _ = layout
    collect(b)
    for i in (0, 5, N + 1, 2 * N + 3, 3 * N + 2, 4 * N + 7):
        r.write(i, 7)
    written, cons, scans = collect(b)
    assert written == Pages.from_addresses(sorted(r.pages([0, 5, 2 * N + 3, 4 * N + 7])),
                                           PAGE)
    assert not cons and scans == 1
    written, _, scans = collect(b)
    assert not written and scans == 1


def test_a_peek_changes_nothing(layout) -> None:  # type: ignore[no-untyped-def]
    r, b, _ = layout
    collect(b)
    r.write(2 * N, 3)
    peek = b.collect(reset=False)
    assert Pages.from_kernel(peek.written, PAGE) == Pages.from_addresses([r.page(2 * N)], PAGE)
    written, _, _ = collect(b)
    assert written == Pages.from_addresses([r.page(2 * N)], PAGE)


def test_a_run_replaced_in_place_is_reported_whole_then_exact(layout) -> None:  # type: ignore[no-untyped-def]
    r, b, spans = layout
    collect(b)
    mid = spans[1]
    _sys.mmap(mid.start, mid.length, mmap.PROT_READ | mmap.PROT_WRITE,
              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | U.MAP_FIXED, -1)
    r.write(4 * N + 1, 9)
    written, _, _ = collect(b)
    assert Pages([(mid.start, mid.end)], PAGE) <= written  # what was there is gone
    assert r.page(4 * N + 1) in written and r.page(0) not in written
    r.write(2 * N + 2, 5)
    written, cons, _ = collect(b)
    assert written == Pages.from_addresses([r.page(2 * N + 2)], PAGE) and not cons


def test_another_uffds_memory_in_a_gap_keeps_its_written_state(layout) -> None:  # type: ignore[no-untyped-def]
    r, b, _ = layout
    gap = (r.page(3 * N), N * PAGE)
    other = open_uffd(LINUX)
    pm = LINUX.open_pagemap("self")
    try:
        LINUX.uffdio_register(other, *gap, int(U.UffdRegisterMode.WP))
        LINUX.uffdio_writeprotect(other, *gap, int(U.UffdWriteprotectMode.WP))
        collect(b)
        r.write(3 * N + 4, 2)
        r.write(N + 1, 2)  # unregistered gap: skipped
        written, _, _ = collect(b)
        assert not written
        theirs = LINUX.scan_all(pm, gap[0], gap[0] + gap[1], category_mask=W,
                                return_mask=W).regions
        assert theirs[:, :2].tolist() == [[r.page(3 * N + 4), r.page(3 * N + 5)]]
    finally:
        LINUX.close(pm)
        LINUX.close(other)


def test_the_same_pages_as_run_by_run(layout) -> None:  # type: ignore[no-untyped-def]
    r, b, _ = layout
    rng = np.random.default_rng(5)
    collect(b)
    for step in range(20):
        b.enclose = step % 2 == 0
        idx = sorted({int(i) for i in rng.integers(0, 5 * N, 6)})
        for i in idx:
            r.write(i, step)
        written, cons, _ = collect(b)
        want = [i for i in idx if (i // N) % 2 == 0]
        assert written == Pages.from_addresses(sorted(r.pages(want)), PAGE), step
        assert not cons


def test_a_private_file_page_that_reverts_to_the_file_is_reported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_uffd_async()
    if not LINUX.capabilities().pte_none_written:
        pytest.skip("stretch scans are used only where the generic path reads a zapped PTE "
                    "as written (the 2026 fix)")
    path = tmp_path / "f"
    path.write_bytes(b"\0" * N * PAGE)
    r = Region(5 * N)
    fd = os.open(path, os.O_RDWR)
    b = UffdAsyncBackend("self")
    b.enclose = True
    try:
        _sys.mmap(r.page(2 * N), N * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                  mmap.MAP_PRIVATE | U.MAP_FIXED, fd)
        r.array()[:] = 1  # the file piece's pages are private copies now
        for k in (0, 2, 4):
            b.add(Span(r.page(k * N), r.page(k * N + N)))
        collect(b)
        r.write(0, 2)
        written, cons, scans = collect(b)
        assert written == Pages.from_addresses([r.page(0)], PAGE) and not cons and scans == 1
        _sys.madvise(r.page(2 * N + 3), PAGE, U.MADV_DONTNEED)  # back to the file's zeros
        written, cons, _ = collect(b)
        assert cons == Pages.from_addresses([r.page(2 * N + 3)], PAGE) and written == cons
        written, cons, _ = collect(b)
        assert not written
    finally:
        b.close()
        os.close(fd)
        r.unmap()
