"""The sampler on a real tracker of this process's memory (uffd-wp async)."""

from __future__ import annotations

import numpy as np
from memutil import PAGE

import writewatch
from writewatch.monitor import Sampler


def test_every_page_written_in_an_interval_is_in_that_interval(uffd_async, region) -> None:
    r = region(256)
    rng = np.random.default_rng(7)
    with writewatch.track(r.span) as t:
        s = Sampler(t, 0.01, target="self")
        s.start()
        logged = []
        for _ in range(5):
            idx = sorted(set(rng.integers(0, 256, 40).tolist()))
            for i in idx:
                r.write(i, 7)
            logged.append(r.pages(idx))
            s.sample()
        series = s.series
        label = t.spans[0].label
    for iv, want in zip(series.intervals, logged, strict=True):
        got = set(iv.written.addresses().tolist())
        assert want <= got, f"lost writes: {sorted(want - got)[:5]}"
        extra = got - want
        assert not extra, f"{len(extra)} pages reported that were not written"
    assert len(series.working_set) == len(set().union(*logged))
    # attributed to the one tracked span, by its label
    names = {series.regions[rg].label for iv in series.intervals for rg, _ in iv.by_region}
    assert names == {label}
    assert series.intervals[0].by_region[0][1] == len(logged[0])
    assert series.page_size == PAGE
