"""The sampling loop: collect from any tracker at a fixed period, attribute the pages to the
target's mappings, and build a :class:`Series`.

The source is anything with ``collect() -> Pages`` (a :class:`writewatch.Tracker`, the
process trackers of :func:`writewatch.attach` / :func:`writewatch.launch`, or a fake in
tests). When it also has ``mappings()`` (the target's /proc/PID/maps lines) pages are
attributed to those; otherwise to its ``spans``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from .. import errors
from ..pages import Pages
from .focus import Focus
from .series import Interval, MappingChange, Region, Series, bytes_in

__all__ = ["MAX_INTERVAL", "MIN_INTERVAL", "Sampler", "Source"]

MIN_INTERVAL = 0.01  #: 10 ms: below this the collect itself dominates the interval
MAX_INTERVAL = 86400.0  #: a day (a longer wait overflows the platform's timeout)


class Source(Protocol):
    def collect(self) -> Pages: ...


def _region(m: Any) -> Region:
    label = getattr(m, "path", None)
    if label is None:
        label = getattr(m, "label", "") or ""
    return Region(int(m.start), int(m.end), str(label), str(getattr(m, "perms", "") or ""))


class Sampler:
    """Samples ``source`` every ``interval`` seconds on a drift-free schedule: sample *k* is
    due at ``t0 + k * interval`` whatever the previous ones cost; a sample that is late by
    more than a period skips the missed ticks (the interval it records is then longer, and
    its rate uses the measured length).

    Args:
        source: the tracker.
        interval: seconds between samples, at least :data:`MIN_INTERVAL`.
        target: a description of what is sampled, for the outputs.
        alive: polled every 50 ms between samples; when it returns false (the target
            exited) sampling ends at once instead of at the next tick.
        focus: keep only the pages of these mappings (:mod:`.focus`).
        focus_now: a label or path of ``focus`` must match a mapping at the start (an
            attached process); otherwise (a program just launched) it may match later.
        clock, wait: injectable time source and ``wait(seconds) -> stop requested`` (tests).
    """

    def __init__(self, source: Any, interval: float = 1.0, *, target: str = "",
                 alive: Callable[[], bool] | None = None, focus: Focus | None = None,
                 focus_now: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise errors.InvalidTarget(
                f"sampling interval {interval} s is out of range",
                hint=f"use {MIN_INTERVAL} s (10 ms) to {MAX_INTERVAL:g} s (a day)")
        self.source = source
        self.interval = float(interval)
        self.clock = clock
        self._stop = threading.Event()
        self._alive = alive
        self._focus = focus
        self._focus_now = focus_now
        self._wait = wait or self._wait_until
        ps = int(getattr(source, "page_size", 0) or 4096)
        self.series = Series(page_size=ps, interval=self.interval, target=target,
                             backend=str(getattr(source, "backend", "") or ""))
        self._index: dict[Region, int] = {}
        self._current: list[int] = []  # region indices mapped at the last sample
        self._listed = False
        self._ws = Pages((), ps)
        self._t0 = 0.0
        self._last_t = 0.0
        self._late = 0  # ticks skipped before the next sample
        self._delay = 0.0  # how long after its due time the next sample starts

    # -- control ----------------------------------------------------------------------------
    def _wait_until(self, seconds: float) -> bool:
        if self._alive is None:
            return self._stop.wait(seconds)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stop.wait(min(left, 0.05)) or not self._alive():
                return True
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to take a last sample and return (thread- and signal-safe)."""
        self._stop.set()

    @property
    def regions(self) -> list[Region]:
        """The target's mappings at the last sample."""
        return [self.series.regions[i] for i in self._current]

    # -- mappings ---------------------------------------------------------------------------
    def _read_mappings(self) -> list[Region] | None:
        if self._listed:
            # a process tracker's last collect lists the root's mappings as it saw them
            # (ProcessCollectInfo.mappings): no second read of /proc/PID/maps per sample
            seen = getattr(getattr(self.source, "last", None), "mappings", None)
            if seen:
                from ..process.mappings import trackable
                return [_region(m) for m in seen if trackable(m)]
        fn = getattr(self.source, "mappings", None)
        if callable(fn):
            try:
                return [_region(m) for m in fn()]
            except errors.NoSuchProcess:
                return None
        spans = getattr(self.source, "spans", None)
        if spans is not None:
            return [_region(s) for s in spans]
        return None

    def _update_mappings(self, t: float) -> tuple[int, int, list[int]]:
        """Read the mappings; record new and removed ones. Returns (new, removed, removed
        region indices)."""
        found = self._read_mappings()
        if found is None:
            return 0, 0, []
        now = []
        for g in found:
            i = self._index.get(g)
            if i is None:
                i = self._index[g] = len(self.series.regions)
                self.series.regions.append(g)
            now.append(i)
        before = set(self._current)
        after = set(now)
        new = sorted(after - before, key=lambda i: self.series.regions[i].start)
        gone = sorted(before - after, key=lambda i: self.series.regions[i].start)
        if self._listed:  # the first listing is the starting point, not a change
            self.series.changes += [MappingChange(t, "new", i) for i in new]
            self.series.changes += [MappingChange(t, "removed", i) for i in gone]
        else:
            new = []
            self._listed = True
        self._current = sorted(now, key=lambda i: self.series.regions[i].start)
        return len(new), len(gone), gone

    def _attribute(self, pages: Pages, extra: Iterable[int]) -> tuple[tuple[int, int], ...]:
        """Pages written per region: current mappings first, then ones removed since the last
        sample, the rest as region -1 ("[unmapped]")."""
        ps = pages.page_size
        left = pages.ranges
        out: dict[int, int] = {}
        for group in (self._current, list(extra)):
            if not group or not len(left):
                continue
            regs = [self.series.regions[i] for i in group]
            lo = np.array([g.start for g in regs], np.int64)
            hi = np.array([g.end for g in regs], np.int64)
            counts = bytes_in(left, lo, hi) // ps
            for i, n in zip(group, counts.tolist(), strict=True):
                if n:
                    out[i] = out.get(i, 0) + int(n)
            cover = Pages(np.stack([lo, hi], axis=1).astype(np.uint64), ps)
            left = (Pages._trusted(left.copy(), ps) - cover).ranges
        rest = int((left[:, 1] - left[:, 0]).sum()) // ps if len(left) else 0
        if rest:
            out[-1] = rest
        return tuple(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    # -- sampling ---------------------------------------------------------------------------
    def start(self) -> None:
        """Take the reference point: the first interval starts now. Pages written before
        (since the tracker was armed) are counted in the first interval."""
        self._t0 = self._last_t = self.clock()
        self.series.started_at = time.time()
        self._update_mappings(0.0)
        if self._focus is not None:
            if self._focus_now:
                self._focus.check(self.regions)
            self._focus.ranges(self.regions)  # fixes 'largest' now
            self.series.mapping = self._focus.description

    def sample(self) -> Interval:
        """Collect once and record the interval since the previous sample."""
        t = self.clock()
        c0 = time.perf_counter()
        pages = self.source.collect()
        cost = time.perf_counter() - c0
        t_end = t - self._t0
        last = getattr(self.source, "last", None)
        if getattr(last, "gone", False):
            # the target's memory is gone: this collect measured nothing
            raise errors.NoSuchProcess(int(getattr(self.source, "pid", 0) or 0),
                                       "the target exited")
        cons = getattr(last, "conservative", None)
        cons = cons & pages if isinstance(cons, Pages) and cons else Pages((), pages.page_size)
        for reason in getattr(last, "reasons", ()) or ():
            if reason not in self.series.notes and len(self.series.notes) < 100:
                self.series.notes.append(reason)
        new, gone, gone_idx = self._update_mappings(t_end)
        per = getattr(last, "per_process", ()) or ()
        if self._focus is not None:
            # the focus is on the root's address space: other processes' rows are left out
            pages = self._focus.select(pages, self.regions)
            cons = cons & pages
            per = ()
            self.series.mapping = self._focus.description
        self._ws = self._ws | pages
        multi = len(per) > 1 or (bool(getattr(last, "forked", ())) and self._focus is None)
        iv = Interval(index=len(self.series.intervals), t_start=self._last_t - self._t0,
                      t_end=t_end, written=pages, working_set_pages=len(self._ws),
                      conservative=cons, by_region=self._attribute(pages, gone_idx),
                      new_mappings=new, removed_mappings=gone,
                      by_process=tuple((int(p), len(w)) for p, w in per) if multi else (),
                      union_pages=int(getattr(last, "union_pages", 0) or 0) if multi else 0,
                      forked=tuple(getattr(last, "forked", ()) or ()),
                      exited=tuple(p for p in getattr(last, "exited", ()) or ()
                                   if isinstance(p, int)),
                      late=self._late, delay=self._delay, collect_s=cost)
        self._late, self._delay = 0, 0.0
        self._last_t = t
        self.series.intervals.append(iv)
        self.series._ws = self._ws
        return iv

    def run(self, duration: float | None = None,
            on_interval: Callable[[Interval, Series], None] | None = None,
            on_start: Callable[[Series], None] | None = None) -> Series:
        """Sample until ``duration`` seconds passed, :meth:`stop` was called, Ctrl-C, or the
        target is gone; then return the series (``series.ended`` says why).

        A stop or Ctrl-C takes one last sample, so no write before it is left out."""
        self.start()
        if on_start is not None:
            on_start(self.series)
        k = 0
        ended = ""
        try:
            while True:
                k += 1
                due = self.interval * k
                if duration is not None and due >= duration:
                    due = duration
                now = self.clock() - self._t0
                if due > now and self._wait(due - now):
                    ended = "stopped"
                    self._sample_or_end(on_interval)
                    break
                now = self.clock() - self._t0
                self._delay = max(0.0, now - due)
                if now - due >= self.interval:  # late by a period or more: skip those ticks
                    skipped = int(now / self.interval) - k
                    self._late += skipped
                    k += skipped
                if not self._sample_or_end(on_interval):
                    break
                if duration is not None and self.clock() - self._t0 >= duration - 1e-9:
                    ended = "duration"
                    break
        except KeyboardInterrupt:
            ended = "interrupted"
            try:
                self._sample_or_end(on_interval)
            except KeyboardInterrupt:
                pass
        if not self.series.ended:
            self.series.ended = ended
        return self.series

    def _sample_or_end(self, on_interval: Callable[[Interval, Series], None] | None) -> bool:
        try:
            iv = self.sample()
        except errors.NoSuchProcess:
            self.series.ended = "target exited"
            self.series.unseen_s = max(0.0, self.clock() - self._last_t)
            return False
        except errors.TrackerClosed:
            self.series.ended = "tracker closed"
            return False
        except errors.WriteWatchError as exc:
            # keep what was measured: the caller still gets the series, and why it ended
            self.series.ended = f"error: {exc}"
            return False
        if on_interval is not None:
            on_interval(iv, self.series)
        return True
