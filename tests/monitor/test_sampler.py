"""The sampling loop and the series it builds, with a fake tracker and a fake clock."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from fakes import ANON, FILE, HEAP, PS, STACK, FakeClock, FakeTracker, M

import writewatch
from writewatch.monitor import Sampler, Series, read_csv
from writewatch.monitor.series import MB, bytes_in


def pages(start: int, n: int) -> tuple[int, int]:
    return (start, start + n * PS)


def run(tracker: FakeTracker, interval: float = 0.1, duration: float | None = 1.0,
        cost: float = 0.0, **kw) -> tuple[Series, FakeClock]:
    clock = FakeClock(cost)
    s = Sampler(tracker, interval, target="fake", clock=clock, wait=clock.wait, **kw)
    return s.run(duration), clock


def test_rates_pages_and_working_set_are_computed_from_the_collects() -> None:
    script = [[pages(HEAP[0], 10)], [pages(HEAP[0], 10), pages(ANON[0], 256)],
              [pages(ANON[0] + 256 * PS, 256)], []]
    series, _ = run(FakeTracker(script), interval=0.5, duration=2.0)
    assert [iv.pages for iv in series.intervals] == [10, 266, 256, 0]
    assert [iv.working_set_pages for iv in series.intervals] == [10, 266, 522, 522]
    for iv in series.intervals:
        assert iv.dt == pytest.approx(0.5)
        assert iv.rate == pytest.approx(iv.pages * PS / MB / 0.5)
    s = series.summary()
    assert s.pages_written == 532
    assert s.working_set_pages == 522 and s.working_set_bytes == 522 * PS
    assert s.peak_rate == pytest.approx(266 * PS / MB / 0.5)
    assert s.mean_rate == pytest.approx(532 * PS / MB / 2.0)
    assert s.p50_rate == pytest.approx(np.percentile([10 * PS / MB / .5, 266 * PS / MB / .5,
                                                      256 * PS / MB / .5, 0], 50))
    assert series.ended == "duration"
    assert series.working_set == writewatch.Pages([pages(HEAP[0], 10),
                                                   pages(ANON[0], 512)], PS)


def test_pages_are_attributed_to_mappings_and_named() -> None:
    script = [[pages(HEAP[0], 3), pages(STACK[1] - 2 * PS, 2), pages(ANON[0], 7),
               pages(0x1000_0000, 5)]]
    series, _ = run(FakeTracker(script), interval=1.0, duration=1.0)
    iv = series.intervals[0]
    named = {series.regions[r].name if r >= 0 else "[unmapped]": n for r, n in iv.by_region}
    assert named == {"[heap]": 3, "[stack]": 2, "[anon]": 7, "[unmapped]": 5}
    assert iv.by_region[0][1] == 7  # most written first
    assert [n for n, _, _ in series.summary().top] == ["[anon]", "[unmapped]", "[heap]",
                                                       "[stack]"]


def test_a_write_spanning_two_adjacent_mappings_is_split_between_them() -> None:
    a, mid, b = 0x4000_0000, 0x4000_0000 + 4 * PS, 0x4000_0000 + 10 * PS
    maps = [M(a, mid, "rw-p", "/usr/lib/libfoo.so"), M(mid, b, "rw-p", "")]
    series, _ = run(FakeTracker([[(a + PS, b)]], maps_at=lambda k: maps), 1.0, 1.0)
    named = {series.regions[r].name: n for r, n in series.intervals[0].by_region}
    assert named == {"libfoo.so": 3, "[anon]": 6}


def test_new_and_removed_mappings_are_recorded_with_their_time() -> None:
    base = [M(*HEAP, "rw-p", "[heap]")]

    def maps(k: int) -> list[M]:
        if k == 2:
            return [*base, M(*FILE, "rw-s", "/tmp/data.db")]
        return base

    script = [[pages(HEAP[0], 1)], [pages(FILE[0], 4)], [pages(FILE[0], 2)], []]
    series, _ = run(FakeTracker(script, maps_at=maps), 0.25, 1.0)
    kinds = [(c.kind, series.regions[c.region].name, c.t) for c in series.changes]
    assert kinds == [("new", "data.db", pytest.approx(0.5)),
                     ("removed", "data.db", pytest.approx(0.75))]
    ivs = series.intervals
    assert (ivs[1].new_mappings, ivs[2].removed_mappings) == (1, 1)
    # pages in a mapping removed since the last sample still count for it
    named = {series.regions[r].name: n for r, n in ivs[2].by_region}
    assert named == {"data.db": 2}


def test_schedule_is_drift_free_whatever_each_sample_costs() -> None:
    tr = FakeTracker([[]] * 100)
    series, clock = run(tr, interval=0.1, duration=2.0, cost=0.004)
    ends = [iv.t_end for iv in series.intervals]
    # sample k is taken at k * interval (+ the cost of reading the clock), not k * (interval
    # + cost): the waits shrink by what the work took
    assert len(ends) == 20
    assert ends[-1] == pytest.approx(2.0, abs=0.02)
    assert max(abs(t - 0.1 * (i + 1)) for i, t in enumerate(ends)) < 0.02
    assert all(w < 0.1 for w in clock.waits)


def test_a_late_sample_skips_missed_ticks_and_its_rate_uses_the_measured_length() -> None:
    clock = FakeClock()

    class Slow(FakeTracker):
        def collect(self):
            if self.k == 2:
                clock.now += 0.35  # this collect takes 3.5 intervals
            return super().collect()

    tr = Slow([[pages(HEAP[0], 1)]] * 50)
    s = Sampler(tr, 0.1, clock=clock, wait=clock.wait).run(1.0)
    ivs = s.intervals
    late = ivs[3]
    assert late.dt > 0.3  # covered the skipped ticks
    assert late.rate == pytest.approx(PS / MB / late.dt)
    assert sum(iv.dt for iv in ivs) == pytest.approx(s.duration)
    assert len(ivs) < 10


def test_target_exit_ends_sampling_with_what_was_collected() -> None:
    series, _ = run(FakeTracker([[pages(HEAP[0], 2)], [pages(HEAP[0], 1)]], exits=True),
                    0.1, None)
    assert series.ended == "target exited"
    assert [iv.pages for iv in series.intervals] == [2, 1]


def test_ctrl_c_takes_a_last_sample() -> None:
    clock = FakeClock()
    calls = []

    def wait(s: float) -> bool:
        calls.append(s)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return clock.wait(s)

    tr = FakeTracker([[pages(HEAP[0], 1)], [pages(HEAP[0], 2)], [pages(HEAP[0], 3)]])
    series = Sampler(tr, 0.1, clock=clock, wait=wait).run(None)
    assert series.ended == "interrupted"
    assert [iv.pages for iv in series.intervals] == [1, 2, 3]


def test_stop_takes_a_last_sample() -> None:
    tr = FakeTracker([[pages(HEAP[0], 1)]] * 5)
    s = Sampler(tr, 0.01)

    def on_interval(iv, series):
        if iv.index == 1:
            s.stop()

    series = s.run(None, on_interval)
    assert series.ended == "stopped"
    assert len(series.intervals) == 3


def test_interval_below_10ms_is_refused() -> None:
    with pytest.raises(writewatch.WriteWatchError, match="10 ms"):
        Sampler(FakeTracker([]), 0.005)


def test_bytes_in_matches_a_page_by_page_count() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random(2000) < 0.3
    p = writewatch.Pages.from_mask(mask, 0x10000, PS)
    lo = 0x10000 + rng.integers(0, 2000, 50) * PS
    hi = lo + rng.integers(0, 300, 50) * PS
    got = bytes_in(p.ranges, lo, hi) // PS
    want = [int(mask[(a - 0x10000) // PS:(b - 0x10000) // PS].sum())
            for a, b in zip(lo, hi, strict=True)]
    assert got.tolist() == want


def series_for_roundtrip() -> Series:
    script = [[pages(HEAP[0], 3), pages(ANON[0] + 40 * PS, 9)], [], [pages(STACK[0], 1)]]
    return run(FakeTracker(script), 0.2, 0.6)[0]


def test_json_round_trip() -> None:
    series = series_for_roundtrip()
    buf = io.StringIO()
    series.write_json(buf)
    back = Series.read_json(io.StringIO(buf.getvalue()))
    assert back.regions == series.regions
    assert back.intervals == series.intervals
    assert back.changes == series.changes
    assert back.summary() == series.summary()
    doc = json.loads(buf.getvalue())
    assert doc["summary"]["working_set_pages"] == 13
    assert doc["intervals"][0]["ranges"][0] == [HEAP[0], HEAP[0] + 3 * PS]


def test_json_of_another_kind_is_refused() -> None:
    with pytest.raises(writewatch.WriteWatchError, match="not a writewatch-monitor"):
        Series.from_dict({"format": "something"})


def test_csv_round_trip() -> None:
    series = series_for_roundtrip()
    buf = io.StringIO()
    series.write_csv(buf)
    rows = read_csv(buf.getvalue())
    assert [r["pages"] for r in rows] == [iv.pages for iv in series.intervals]
    assert [r["bytes"] for r in rows] == [iv.nbytes for iv in series.intervals]
    assert [r["working_set_pages"] for r in rows] == [12, 12, 13]
    for r, iv in zip(rows, series.intervals, strict=True):
        assert r["rate_mb_s"] == pytest.approx(iv.rate, rel=1e-6)
        assert r["t_end"] == pytest.approx(iv.t_end, abs=1e-6)
    assert rows[0]["top_mapping"] == "[anon]"


def test_the_monitor_core_imports_numpy_only() -> None:
    code = ("import sys, writewatch.monitor, writewatch.monitor.record, writewatch.monitor.api,"
            " writewatch.monitor.perfetto; bad = [m for m in ('matplotlib', 'rich', 'perfetto',"
            " 'google') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_tracker_error_ends_sampling_but_keeps_the_series() -> None:
    class Broken(FakeTracker):
        def collect(self):
            if self.k == 2:
                raise writewatch.KernelError("PAGEMAP_SCAN failed", op="PAGEMAP_SCAN")
            return super().collect()

    series, _ = run(Broken([[pages(HEAP[0], 1)]] * 5), 0.1, None)
    assert len(series.intervals) == 2
    assert series.ended.startswith("error: PAGEMAP_SCAN failed")
