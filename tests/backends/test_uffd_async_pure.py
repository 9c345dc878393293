"""The uffd-async backend's pure helpers: runs of spans, residency of file/shared memory,
and what the arming scan says about content written before arming."""

from __future__ import annotations

import numpy as np

from writewatch import _uapi as U
from writewatch.backends.base import Span
from writewatch.backends.uffd_async import lost, make_runs, prior_content, residency

P, F, W, Z = (int(U.PageCategory.PRESENT), int(U.PageCategory.FILE),
              int(U.PageCategory.WRITTEN), int(U.PageCategory.PFNZERO))
S = int(U.PageCategory.SWAPPED)
PS = 4096


def test_runs_join_touching_spans_only() -> None:
    a, b, c = Span(0x1000, 0x3000), Span(0x3000, 0x4000), Span(0x5000, 0x6000)
    runs = make_runs([c, b, a], careful={c}, resident={b})
    assert [(r.start, r.end) for r in runs] == [(0x1000, 0x4000), (0x5000, 0x6000)]
    assert runs[0].spans == (a, b) and not runs[0].plain and runs[0].resident == (b,)
    assert not runs[1].plain and runs[1].resident == ()


def test_residency_ignores_writes_and_sees_pages_leave() -> None:
    rows = np.array([[0x1000, 0x2000, P | F | W], [0x2000, 0x3000, P | F],
                     [0x3000, 0x4000, P], [0x4000, 0x5000, 0]], np.uint64)
    before = residency(rows, 0x1000, 0x5000)
    assert before == ((0x1000, 0x3000, F), (0x3000, 0x4000, 0))
    # a write changes nothing; the private copy reverting to the file's page is lost
    after = residency(np.array([[0x1000, 0x4000, P | F]], np.uint64), 0x1000, 0x5000)
    assert lost(before, before, PS).ranges.tolist() == []
    assert lost(before, after, PS).ranges.tolist() == [[0x3000, 0x4000]]
    gone = residency(np.array([[0x1000, 0x2000, P | F]], np.uint64), 0x1000, 0x5000)
    assert lost(before, gone, PS).ranges.tolist() == [[0x2000, 0x4000]]


def test_prior_content_private_and_shared() -> None:
    rows = np.array([[0x1000, 0x2000, P | W], [0x2000, 0x3000, P | Z | W],
                     [0x3000, 0x4000, P | F | W], [0x4000, 0x5000, S | W],
                     [0x5000, 0x6000, W]], np.uint64)
    assert prior_content(rows, shared=False).tolist() == [[0x1000, 0x2000], [0x4000, 0x5000]]
    assert prior_content(rows, shared=True).tolist() == [[0x1000, 0x2000], [0x2000, 0x3000],
                                                          [0x3000, 0x4000], [0x4000, 0x5000]]
