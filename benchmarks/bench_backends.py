"""Per backend: the cost added to the writer per first write, and the cost of collect().

Same workload for every backend usable on the running kernel: a populated anonymous region
(64 MiB by default, one region per backend so that the trackers do not overlap), armed, then
one write to every page (a numpy strided store: each store is the first write to its page
since the last collect), then a collect. Rounds alternate between the backends and the
untracked baseline so all see the same machine noise; every figure is the median over the
rounds.

* untracked: the same strided store on a region nobody tracks.
* uffd-async: the kernel resolves the write-protect fault itself (WP_ASYNC, 6.7+).
* uffd-wp-sync: each first write stops the writer until the handler process has read the fault
  message and unprotected the page (a round trip through the helper); also run with
  WP_UNPOPULATED refused (the pre-6.4 code path).
* soft-dirty: the first write after clear_refs takes a soft-dirty fault (when the kernel has
  CONFIG_MEM_SOFT_DIRTY).

Run: ``.venv/bin/python benchmarks/bench_backends.py [--mib 64] [--rounds 7]
[--markdown benchmarks/results-backends.md]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import mmap
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import writewatch
from writewatch.backends import REGISTRY
from writewatch.backends.uffd_sync import UffdSyncBackend

PAGE = mmap.PAGESIZE


@dataclass
class Case:
    label: str
    make: Callable[[tuple[int, int]], writewatch.Tracker | None]
    why_not: str = ""
    first_write: list[float] = field(default_factory=list)  #: seconds per page
    collect_all: list[float] = field(default_factory=list)  #: seconds, every page written
    collect_none: list[float] = field(default_factory=list)  #: seconds, nothing written


def _sync_without_unpopulated(span: tuple[int, int]) -> writewatch.Tracker:
    from writewatch.tracker import Target, Tracker
    return Tracker(UffdSyncBackend(unpopulated=False), [Target(span[0], span[1], "bench")])


def _tracker_for(name: str) -> Callable[[tuple[int, int]], writewatch.Tracker | None]:
    def make(span: tuple[int, int]) -> writewatch.Tracker | None:
        return writewatch.track(span, backend=name)
    return make


def cases() -> list[Case]:
    f = writewatch.features()
    out = [Case("untracked", lambda span: None)]
    for name in ("uffd-async", "uffd-wp-sync", "soft-dirty"):
        feat = f.backends.get(name)
        usable = feat is not None and feat.usable and name in REGISTRY
        out.append(Case(name, _tracker_for(name),
                        "" if usable else (feat.detail if feat else "not built")))
    sync = f.backends.get("uffd-wp-sync")
    out.append(Case("uffd-wp-sync, no WP_UNPOPULATED", _sync_without_unpopulated,
                    "" if sync and sync.usable else "uffd-wp-sync unusable"))
    return out


def run(mib: int, rounds: int) -> list[Case]:
    npages = mib * (1 << 20) // PAGE
    todo = cases()
    live = [c for c in todo if not c.why_not]
    regions = {c.label: mmap.mmap(-1, npages * PAGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
               for c in live}
    arrays = {k: np.frombuffer(m, np.uint8) for k, m in regions.items()}
    trackers = {}
    for c in live:
        a = arrays[c.label]
        a[::PAGE] = 1  # populate
        trackers[c.label] = c.make((a.ctypes.data, npages * PAGE))
    try:
        for r in range(rounds + 1):  # round 0 warms up
            for c in live:
                a, t = arrays[c.label], trackers[c.label]
                if t is not None:
                    t.collect()
                    t0 = time.perf_counter()
                    t.collect()
                    none = time.perf_counter() - t0
                v = (r + 2) & 255
                t0 = time.perf_counter()
                a[::PAGE] = v
                dt_w = time.perf_counter() - t0
                if t is not None:
                    t0 = time.perf_counter()
                    got = t.collect(reset=True)
                    all_ = time.perf_counter() - t0
                    assert len(got) >= npages, (c.label, len(got), npages)
                if r:
                    c.first_write.append(dt_w / npages)
                    if t is not None:
                        c.collect_all.append(all_)
                        c.collect_none.append(none)
    finally:
        for t in trackers.values():
            if t is not None:
                t.close()
        arrays.clear()
        for m in regions.values():
            try:
                m.close()
            except BufferError:  # an exception's traceback still holds a view
                pass
    return todo


def table(todo: list[Case], mib: int) -> str:
    base = statistics.median(next(c for c in todo if c.label == "untracked").first_write)
    lines = [
        f"| backend | first write per page (µs) | added to the writer (µs) | ratio to untracked "
        f"| collect, all {mib} MiB written (ms) | collect, nothing written (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for c in todo:
        if c.why_not:
            lines.append(f"| {c.label} | not usable here: {c.why_not} | | | | |")
            continue
        fw = statistics.median(c.first_write)
        ca = f"{statistics.median(c.collect_all) * 1e3:.1f}" if c.collect_all else "-"
        cn = f"{statistics.median(c.collect_none) * 1e3:.2f}" if c.collect_none else "-"
        lines.append(f"| {c.label} | {fw * 1e6:.3f} | {(fw - base) * 1e6:.3f} | "
                     f"{fw / base:.1f}x | {ca} | {cn} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64, help="region size per backend")
    ap.add_argument("--rounds", type=int, default=7, help="measured rounds (medians)")
    ap.add_argument("--markdown", help="also write the results to this file")
    args = ap.parse_args()
    todo = run(args.mib, args.rounds)
    out = table(todo, args.mib)
    print(out)
    if args.markdown:
        head = (f"# Backends: cost to the writer per first write, and collect\n\n"
                f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on "
                f"{platform.node() or 'this machine'}: Linux {os.uname().release} "
                f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, Python "
                f"{platform.python_version()}.\n\n"
                f"Command: `{shlex.join([sys.executable, *sys.argv])}`\n\n"
                f"{args.mib} MiB populated anonymous region per backend, medians of "
                f"{args.rounds} rounds (the backends and the untracked baseline alternate "
                f"within each round).\n\n")
        with open(args.markdown, "w") as f:
            f.write(head + out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
