"""The replay's ground truth (writewatch.lab.truth) against page sets computed directly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from writewatch.lab.truth import Truth
from writewatch.model.mm import Mm
from writewatch.model.profiles import get
from writewatch.model.pte import PAGE, PMD
from writewatch.model.workloads import BASE

#: a tracked range that starts and ends inside 2 MiB blocks: 3 blocks, partly covered
START = BASE + PMD - 5 * PAGE
END = START + 2 * PMD + 9 * PAGE
NPAGES = (END - START) // PAGE

op = st.one_of(
    st.tuples(st.just("write"), st.integers(-8, NPAGES + 8), st.just(1)),
    st.tuples(st.just("discard"), st.integers(-8, NPAGES), st.integers(1, 40)),
    st.tuples(st.just("collect"), st.lists(st.integers(-8, NPAGES + 8), max_size=12),
              st.just(0)))


def _ranges(cuts: list[int]) -> np.ndarray:
    """Disjoint reported ranges (as a design reports them), some reaching past the range."""
    c = sorted(set(cuts))
    c = c[:len(c) - len(c) % 2]
    pairs = [(START + a * PAGE, START + b * PAGE) for a, b in zip(c[::2], c[1::2], strict=True)]
    return np.array(pairs, np.uint64).reshape(-1, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, max_size=40))
def test_each_verdict_is_the_page_sets_of_what_changed_and_what_was_reported(ops) -> None:
    mm = Mm(get("6.18"))
    mm.mmap(BASE, 4 * PMD)  # around the tracked range on both sides
    truth = Truth(mm)
    mm.observer = truth.observe
    truth.track(START, END)
    before = mm.content(START, END)
    wrote: set[int] = set()
    for n, (kind, first, length) in enumerate(ops):
        truth.record({"op": kind})
        if kind == "collect":
            reported = _ranges(first)
            v = truth.judge(reported, n + 1, 20)
            now = mm.content(START, END)
            pages = START + PAGE * np.arange(NPAGES)
            changed = set(pages[now != before].tolist())
            every = {p for s, e in reported.tolist() for p in range(s, e, PAGE)}
            rep = {p for p in every if START <= p < END}
            outside = len(every - rep)  # reported, never written there: false positives
            assert v.reported == len(rep) + outside
            assert v.false_positives == len(rep - changed) + outside
            assert v.false_negatives == len(changed - rep)
            assert v.written == len(changed & wrote)
            assert v.changed_otherwise == len(changed - wrote)
            assert len(v.examples) == min(20, len(changed - rep))
            before, wrote = now, set()
            continue
        a = BASE + PMD - 5 * PAGE + first * PAGE
        ln = length * PAGE
        truth.materialise(a, a + ln)
        if kind == "write":
            mm.write(a, ln)
            wrote |= {a} & set(range(START, END, PAGE))
        else:
            mm.madvise(a, ln, "DONTNEED")
