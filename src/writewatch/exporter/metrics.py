"""The metrics the exporter serves, as ``prometheus_client`` metric families.

:func:`families` builds them from the targets after each sampling round (in the sampling
thread); :class:`SnapshotCollector` hands the last set to every scrape, so a scrape only
formats what was measured (``prometheus_client`` writes the text format) and never waits for
a collect. Every name, label and unit is listed in :data:`METRICS` (docs/exporter.md shows
the same table; a test checks the two agree with what is served).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .targets import ERRORS, REASONS, Target

__all__ = ["BUCKETS", "METRICS", "STATES", "SnapshotCollector", "families"]

#: collect-duration histogram buckets, seconds (an empty collect costs ~10 µs, a 10-process
#: tree ~1 ms, a large dirty set tens of ms)
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0)
#: values of ``writewatch_target_state``'s ``state`` label
STATES = ("up", "waiting", "failed", "exited", "starting")

_P = ("target", "pid", "comm")
#: name -> (type, labels, help). Counters are listed without their ``_total`` suffix's
#: family name doubling: the exposed sample is NAME (which ends in _total)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "writewatch_written_pages_total": (
        "counter", (*_P, "kind"),
        "Pages written in the process's address space (whoever wrote them), counted once per "
        "interval in which they were written, by what backs them (kind: heap, stack, anon, "
        "shmem, file, other)"),
    "writewatch_conservative_pages_total": (
        "counter", (*_P, "reason"),
        "Of the pages written, those reported without proof of a write, by reason class "
        "(new_mapping, attached_late, fork, exit_exec, untracked_sharer, refused, mixed, "
        "other)"),
    "writewatch_dirty_rate_bytes_per_second": (
        "gauge", _P, "Bytes written per second over the last interval (distinct pages times "
        "the page size, divided by the interval's measured length)"),
    "writewatch_working_set_bytes": (
        "gauge", _P, "Distinct bytes written during the last --window seconds"),
    "writewatch_armed_bytes": (
        "gauge", _P, "Bytes of writable mappings registered for write tracking"),
    "writewatch_page_table_bytes": (
        "gauge", _P, "Page-table memory of the process now (VmPTE of /proc/PID/status)"),
    "writewatch_arming_page_table_bytes": (
        "gauge", _P, "Page-table memory added by arming: VmPTE right after attaching minus "
        "right before (processes the exporter attached itself)"),
    "writewatch_tree_written_pages_total": (
        "counter", ("target",), "Pages written in the whole target (every tree; a page of "
        "memory shared within a tree counted once)"),
    "writewatch_tree_dirty_rate_bytes_per_second": (
        "gauge", ("target",), "Bytes written per second in the whole target over the last "
        "interval, shared pages once"),
    "writewatch_tracked_processes": ("gauge", ("target",), "Processes tracked now"),
    "writewatch_collects_total": ("counter", ("target",), "Collects completed"),
    "writewatch_errors_total": (
        "counter", ("target", "kind"), "Failed attaches, collects and closes, by exception "
        "class (NoSuchProcess, PermissionDenied, Unsupported, InvalidTarget, KernelError, "
        "WriteWatchError: any other)"),
    "writewatch_forks_total": ("counter", ("target",), "Processes forked by tracked ones"),
    "writewatch_exits_total": ("counter", ("target",), "Tracked processes that exited"),
    "writewatch_target_up": ("gauge", ("target",), "1 while the target is tracked"),
    "writewatch_target_state": (
        "gauge", ("target", "state"), "1 for the target's state (up, waiting, failed, "
        "exited, starting)"),
    "writewatch_collect_duration_seconds": (
        "histogram", ("target",), "Time one collect of a tracker took"),
    "writewatch_page_size_bytes": ("gauge", (), "The page size"),
    "writewatch_exporter_interval_seconds": ("gauge", (), "The sampling interval"),
    "writewatch_exporter_round_seconds": (
        "gauge", (), "Time the last sampling round (every target) took"),
    "writewatch_exporter_late_intervals_total": (
        "counter", (), "Sampling rounds started more than a tenth of the interval late; "
        "ticks a late round skipped count once each"),
}


def _family(name: str) -> Any:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    kind, labels, doc = METRICS[name]
    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
           "histogram": HistogramMetricFamily}[kind]
    base = name.removesuffix("_total") if kind == "counter" else name
    return cls(base, doc, labels=list(labels))


class Histograms:
    """Cumulative collect-duration buckets per target (kept across rounds)."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, target: str, values: Iterable[float]) -> None:
        c = self.counts.setdefault(target, [0] * (len(BUCKETS) + 1))
        for v in values:
            i = next((k for k, b in enumerate(BUCKETS) if v <= b), len(BUCKETS))
            c[i] += 1
            self.sums[target] = self.sums.get(target, 0.0) + v

    def buckets(self, target: str) -> list[tuple[str, float]]:
        out, acc = [], 0
        for b, n in zip((*BUCKETS, float("inf")), self.counts.get(target, []), strict=True):
            acc += n
            out.append(("+Inf" if b == float("inf") else repr(b), float(acc)))
        return out


def families(targets: Sequence[Target], hist: Histograms, *, page_size: int,
             interval: float, round_s: float, late: int) -> list[Any]:
    """Every family, from the targets' state after a round."""
    f = {name: _family(name) for name in METRICS}
    for t in targets:
        name = t.spec.name
        hist.observe(name, t.durations)
        t.durations = []
        for st in t.procs.values():
            lab = [name, str(st.pid), st.comm]
            for kind, n in st.written.items():
                f["writewatch_written_pages_total"].add_metric([*lab, kind], n)
            for reason in REASONS:  # every class, from 0: rate() needs the series to exist
                f["writewatch_conservative_pages_total"].add_metric(
                    [*lab, reason], st.conservative.get(reason, 0))
            f["writewatch_dirty_rate_bytes_per_second"].add_metric(lab, st.rate)
            f["writewatch_working_set_bytes"].add_metric(lab, st.working_set)
            f["writewatch_armed_bytes"].add_metric(lab, st.armed)
            f["writewatch_page_table_bytes"].add_metric(lab, st.pte)
            if st.arming_pte is not None:
                f["writewatch_arming_page_table_bytes"].add_metric(lab, st.arming_pte)
        f["writewatch_tree_written_pages_total"].add_metric([name], t.tree_written)
        f["writewatch_tree_dirty_rate_bytes_per_second"].add_metric([name], t.tree_rate)
        f["writewatch_tracked_processes"].add_metric([name], len(t.procs))
        f["writewatch_collects_total"].add_metric([name], t.collects)
        for kind in ERRORS:
            f["writewatch_errors_total"].add_metric([name, kind], t.errors.get(kind, 0))
        f["writewatch_forks_total"].add_metric([name], t.forks)
        f["writewatch_exits_total"].add_metric([name], t.exits)
        f["writewatch_target_up"].add_metric([name], 1.0 if t.state == "up" else 0.0)
        for state in STATES:
            f["writewatch_target_state"].add_metric([name, state],
                                                   1.0 if t.state == state else 0.0)
        f["writewatch_collect_duration_seconds"].add_metric(
            [name], hist.buckets(name), hist.sums.get(name, 0.0))
    f["writewatch_page_size_bytes"].add_metric([], page_size)
    f["writewatch_exporter_interval_seconds"].add_metric([], interval)
    f["writewatch_exporter_round_seconds"].add_metric([], round_s)
    f["writewatch_exporter_late_intervals_total"].add_metric([], late)
    return list(f.values())


class SnapshotCollector:
    """A ``prometheus_client`` collector serving the families of the last round."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: list[Any] = []

    def set(self, fams: list[Any]) -> None:
        with self._lock:
            self._families = fams

    def collect(self) -> Iterator[Any]:
        with self._lock:
            fams = self._families
        yield from fams
