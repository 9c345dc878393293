"""Fidelity: random op sequences on real memory and on the model (profile of the running
kernel) must give identical PAGEMAP_SCAN categories for every page after every step.

A difference is a model bug unless docs/model.md lists it as a deliberate simplification.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memutil import IN_GUEST, require_uffd_async

from writewatch.features import pmd_holes_reported
from writewatch.model import fidelity as F

N = F.NPAGES


@st.composite
def page_range(draw: st.DrawFn) -> tuple[int, int]:
    if draw(st.integers(0, 5)) == 0:  # a whole PMD: THP zaps, PMD holes
        return draw(st.sampled_from([0, 512])), 512
    p = draw(st.integers(0, N - 1))
    return p, draw(st.integers(1, min(16, N - p)))


@st.composite
def op(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["write", "write", "write", "read", "dontneed", "mprotect",
                                 "mremap", "munmap", "fork", "collect", "collect",
                                 "write_moved", "read_moved", "child_write", "pageout",
                                 "collapse"]))
    if kind in ("fork", "collect"):
        return (kind,)
    p, n = draw(page_range())
    if kind == "mprotect":
        return (kind, p, n, draw(st.sampled_from(["r", "rw"])))
    return (kind, p, n)


ops = st.lists(op(), min_size=1, max_size=14)


def _modelled(kind: str, thp: bool, seq: list[tuple]) -> list[tuple]:
    """``seq`` without what the model does not model exactly: page-cache folio sizes of a
    regular file with THP (docs/model.md, "Deliberate simplifications"): no faults in the
    moved, unregistered VMA, and no MADV_PAGEOUT (which reclaims whole folios). With THP on
    a kernel without the 2026 PAGEMAP_SCAN fixes (6.12.95): no MADV_COLLAPSE, whose outcome
    there depends on PMD holes the arming scan left unarmed (not modelled)."""
    if kind == "file" and thp:
        seq = [o for o in seq if not o[0].endswith("_moved") and o[0] != "pageout"]
    if thp and not pmd_holes_reported():
        seq = [o for o in seq if o[0] != "collapse"]
    return seq


@pytest.fixture
def scan_kernel() -> None:
    require_uffd_async()


# 100 random sequences on the host; 40 in a kernel-matrix guest, where one takes ~1 s (the
# same for the pagemap-bits variant below: 30 and 15)
@settings(max_examples=40 if IN_GUEST else 100, deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(F.KINDS), thp=st.booleans(), seq=ops)
@pytest.mark.usefixtures("scan_kernel")
def test_model_matches_kernel(kind: str, thp: bool, seq: list[tuple]) -> None:
    bad = F.run(kind, thp, _modelled(kind, thp, seq))
    assert not bad, f"{kind} thp={thp}: {bad[0]}"


@settings(max_examples=15 if IN_GUEST else 30, deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(F.KINDS), thp=st.booleans(), seq=ops)
def test_model_matches_kernel_pagemap_bits(kind: str, thp: bool, seq: list[tuple]) -> None:
    """The same, for kernels without PAGEMAP_SCAN (Debian's 6.1 in the kernel matrix):
    soft-dirty's clear_refs as arm and collect, and the classic pagemap bits (present,
    swapped, file/shared, soft-dirty 55, uffd-wp 57) compared page by page. Where the kernel
    has no soft-dirty, both sides read bit 55 clear and the rest is still compared."""
    bad = F.run(kind, thp, _modelled(kind, thp, seq), mode="pagemap")
    assert not bad, f"{kind} thp={thp}: {bad[0]}"


@pytest.mark.parametrize("kind", F.KINDS)
@pytest.mark.parametrize("thp", [False, True])
@pytest.mark.usefixtures("scan_kernel")
def test_debate_points(kind: str, thp: bool) -> None:
    """Fixed sequences through the points of the thread: zap after arm, a whole-PMD discard,
    read of an armed unpopulated page (zero page with the bit), a remap out of the tracked
    range, mprotect splits, fork."""
    seqs = [
        [("write", 0, 4), ("collect",), ("write", 1, 1), ("dontneed", 0, 2), ("read", 5, 2),
         ("collect",)],
        [("write", 0, 600), ("collect",), ("write", 3, 1), ("dontneed", 512, 512),
         ("write", 600, 1), ("read", 700, 1), ("collect",)],
        [("read", 0, 1), ("read", 600, 1), ("write", 600, 1), ("collect",)],
        [("write", 0, 8), ("mprotect", 2, 2, "r"), ("write", 0, 8), ("collect",),
         ("mprotect", 2, 2, "rw"), ("mremap", 1, 3), ("munmap", 6, 1), ("fork",),
         ("write", 7, 1)],
        [("write", 0, 16), ("read", 16, 16), ("mremap", 0, 32), ("read_moved", 0, 32),
         ("write_moved", 3, 2), ("read_moved", 8, 1)],
        # PT_RECLAIM frees the emptied table; the huge zero page; a write to it
        [("write", 0, 512), ("mremap", 0, 512), ("write_moved", 0, 1), ("dontneed", 512, 512),
         ("read", 513, 1), ("write", 514, 1)],
        [("write", 0, 1024), ("collect",), ("mprotect", 100, 10, "r"), ("dontneed", 0, 1024),
         ("read", 0, 1024), ("write", 0, 1024)],
        # an mprotect that leaves part of a THP's protection unchanged does not split it
        # (mprotect_fixup returns early for that VMA): seen on 6.12.95; on kernels whose scan
        # arms PMD holes the THP comes from a write after PT_RECLAIM freed the table
        [("write", 512, 512), ("mprotect", 512, 512, "r"), ("mprotect", 497, 16, "r")],
        [("dontneed", 512, 512), ("write", 512, 512), ("mprotect", 512, 512, "r"),
         ("mprotect", 497, 16, "r"), ("mprotect", 1000, 30, "rw")],
        # a forked child writes: shared memory changes, the parent's PTEs do not (its
        # collect cannot see the write); private memory is the child's own copy
        [("write", 0, 8), ("collect",), ("child_write", 0, 16), ("read", 20, 2),
         ("child_write", 20, 4), ("collect",), ("write", 3, 1)],
        # MADV_PAGEOUT: shmem/file PTEs unmapped (a marker where armed), anon stays without
        # swap; MADV_COLLAPSE: no THP over uffd-wp entries, nor over none ones when armed
        [("write", 0, 64), ("pageout", 0, 32), ("read", 4, 4), ("write", 8, 1),
         ("collapse", 0, 512), ("collect",), ("collapse", 0, 512), ("write", 0, 512),
         ("collapse", 0, 512)],
        # MADV_PAGEOUT of a THP whose PMD a MADV_DONTNEED split: the whole folio is split,
        # and from 6.12 its zero-filled subpages become the shared zero page (seen on
        # 6.12.95, where arming leaves PMD holes and the first write gets a THP)
        [("write", 0, 1), ("dontneed", 0, 1), ("pageout", 0, 512)],
        [("write", 0, 3), ("dontneed", 1, 1), ("pageout", 0, 2), ("write", 300, 1)],
        # read-around and fault-around in a moved (unregistered) file mapping
        [("read_moved", 227, 32), ("mremap", 674, 57), ("fork",), ("mprotect", 0, 512, "r"),
         ("fork",), ("read_moved", 701, 8)],
    ]
    for s in seqs:
        bad = F.run(kind, thp, _modelled(kind, thp, s))
        assert not bad, f"{kind} thp={thp}: {bad[0]}"
