"""What the model's counted events cost in time on a real machine.

The model counts kernel events (faults, tracking faults, entries walked, TLB flushes, lock
acquisitions, page-table pages allocated); :class:`Costs` prices each with a per-event cost
in nanoseconds, so a replay can say "design X costs ~N µs per collect here".
:func:`calibrate` measures the costs on the running kernel with small microbenchmarks (real
memory, real userfaultfd and PAGEMAP_SCAN); ``benchmarks/bench_model.py --calibrate`` runs it
and records the result, and :func:`check` compares a modelled collect with a measured one.

The prices are per event and additive: they leave out caches, contention and batching
effects beyond what the microbenchmarks contain (which run from Python: a fault's price
includes none of the interpreter, the store loop's time is subtracted). :data:`DEFAULT` holds
the values measured on the reference machine (benchmarks/RESULTS.md, model section), so
replays are priced the same everywhere unless given their own calibration.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from .. import errors


@dataclass(frozen=True)
class Costs:
    """Nanoseconds per event. The defaults are benchmarks/costs-model.json, measured by
    :func:`calibrate` on the reference machine (2 vCPUs, Linux 6.18.44, 2026-12-01, while
    three qemu guests kept the load average near 8: upper bounds); ``pt_page`` is not
    measured (an estimate: one zeroed page)."""

    fault: float = 2312.0  #: a page fault that maps or copies a page (minor fault)
    tracking_fault: float = 2088.0  #: a uffd-wp async fault resolved in the kernel
    entry_walked: float = 6.8  #: one page-table entry examined by PAGEMAP_SCAN
    entry_protected: float = 44.1  #: one entry write-protected by get+WP
    tlb_flush: float = 4288.0  #: one protection change and its flush (an mprotect call)
    ioctl: float = 4971.0  #: one PAGEMAP_SCAN / UFFDIO_* call, entry and exit
    pt_page: float = 300.0  #: allocating and zeroing one page-table page (estimate)
    source: str = "benchmarks/costs-model.json (reference machine, loaded)"

    def collect_us(self, walked: int, delta: dict[str, int]) -> float:
        """One collect's kernel work: its walk, flushes and the tables it allocated."""
        ns = (walked * self.entry_walked + delta.get("wp_entries", 0) * self.entry_protected +
              delta.get("tlb_flushes", 0) * self.tlb_flush +
              delta.get("mmap_lock_read", 0) * self.ioctl +
              delta.get("pt_allocated", 0) * self.pt_page)
        return ns / 1000

    def fault_us(self, counters: dict[str, int]) -> float:
        """The faults of a whole run (tracking faults at their own price)."""
        plain = counters["faults"] - counters["tracking_faults"]
        ns = plain * self.fault + counters["tracking_faults"] * self.tracking_fault + \
            counters.get("pt_allocated", 0) * self.pt_page
        return ns / 1000

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Costs:
        """Costs from :meth:`to_json`'s text (unknown keys ignored, missing ones default)."""
        hint = "give the JSON that benchmarks/bench_model.py --calibrate --costs-out writes"
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise errors.InvalidTarget(f"the costs are not JSON: {exc}", hint=hint) from None
        if not isinstance(d, dict):
            raise errors.InvalidTarget("the costs are not a JSON object", hint=hint)
        known = {f.name for f in fields(cls)}
        got = {k: v for k, v in d.items() if k in known}
        for k, v in got.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise errors.InvalidTarget(f"cost {k}={v!r} is not a number >= 0", hint=hint)
        return cls(**got)


DEFAULT = Costs()


def _median_ns(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    """Median and spread (max - min) over ``repeat`` runs of ``fn`` (ns per event each)."""
    xs = [fn() for _ in range(repeat)]
    return statistics.median(xs), max(xs) - min(xs)


class _Bench:
    """Microbenchmarks on real memory: ``pages`` anonymous pages, armed for async uffd-wp
    where a measurement needs it. Each returns nanoseconds per event."""

    def __init__(self, pages: int) -> None:
        from ..kernel import LINUX
        self.k = LINUX
        self.ps = LINUX.page_size
        self.pages = pages
        self.size = pages * self.ps
        self.store = 0.0  #: the store loop's own time per page, subtracted from faults

    @contextlib.contextmanager
    def mapping(self, size: int) -> Iterator[int]:
        from ..kernel import _sys
        a = _sys.mmap(0, size, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            yield a
        finally:
            _sys.munmap(a, size)

    @contextlib.contextmanager
    def armed(self) -> Iterator[tuple[int, int]]:
        """A written mapping, registered and write-protected by one get+WP scan: (address,
        pagemap fd)."""
        from .. import _uapi as U
        from ..backends.uffd_async import open_uffd
        with self.mapping(self.size) as a:
            uffd = open_uffd()
            pm = self.k.open_pagemap("self")
            try:
                self.touch(a)
                self.k.uffdio_register(uffd, a, self.size, U.UffdRegisterMode.WP)
                self.scan(pm, a, protect=True)
                yield a, pm
            finally:
                self.k.close(pm)
                self.k.close(uffd)

    def touch(self, addr: int, pages: int | None = None) -> None:
        for p in range(self.pages if pages is None else pages):
            ctypes.memset(addr + p * self.ps, 1, 1)

    def scan(self, pm: int, addr: int, protect: bool) -> None:
        """PAGEMAP_SCAN of the mapping for WRITTEN pages, get+WP when ``protect``."""
        from .. import _uapi as U
        written = int(U.PageCategory.WRITTEN)
        self.k.scan_all(pm, addr, addr + self.size, category_mask=written, return_mask=written,
                        flags=int(U.PmScanFlag.WP_MATCHING) if protect else 0)

    def timed(self, fn: Callable[[], object], events: int) -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / events

    # -- the measurements --------------------------------------------------------------------
    def store_loop(self) -> float:
        with self.mapping(self.size) as a:
            self.touch(a)
            return self.timed(lambda: self.touch(a), self.pages)

    def fault(self) -> float:
        with self.mapping(self.size) as a:
            return self.timed(lambda: self.touch(a), self.pages) - self.store

    def tracking_fault(self) -> float:
        with self.armed() as (a, _):
            return self.timed(lambda: self.touch(a), self.pages) - self.store

    def entry_walked(self) -> float:
        with self.armed() as (a, pm):
            return self.timed(lambda: self.scan(pm, a, protect=False), self.pages)

    def entry_protected(self) -> float:
        """Entries walked and protected (the walk is subtracted by :func:`calibrate`)."""
        with self.armed() as (a, pm):
            self.touch(a)
            return self.timed(lambda: self.scan(pm, a, protect=True), self.pages)

    def ioctl(self) -> float:
        from .. import _uapi as U
        written = int(U.PageCategory.WRITTEN)
        with self.armed() as (a, pm):
            def calls() -> None:
                for _ in range(256):
                    self.k.pagemap_scan(pm, a, a + self.ps, category_mask=written,
                                        return_mask=written)
            return self.timed(calls, 256)

    def tlb_flush(self) -> float:
        """An mprotect of one page and back: a protection change and its flush, twice."""
        from ..kernel import _sys
        rw = mmap.PROT_READ | mmap.PROT_WRITE
        with self.mapping(16 * self.ps) as a:
            self.touch(a, 16)

            def toggles() -> None:
                for _ in range(256):
                    _sys.mprotect(a, self.ps, mmap.PROT_READ)
                    _sys.mprotect(a, self.ps, rw)
            return self.timed(toggles, 512)


#: the costs :func:`calibrate` measures, each by the :class:`_Bench` method of its name
_MEASURED = ("fault", "tlb_flush", "tracking_fault", "entry_walked", "entry_protected",
             "ioctl")


def calibrate(pages: int = 4096, repeat: int = 5) -> tuple[Costs, dict[str, Any]]:
    """Measure the per-event costs on this machine's kernel. Returns the costs and the
    details (median and spread per measurement). Needs WP_ASYNC + PAGEMAP_SCAN (6.7)."""
    bench = _Bench(pages)
    bench.store, _ = _median_ns(bench.store_loop, repeat)
    vals: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name in _MEASURED:
        vals[name], spread = _median_ns(getattr(bench, name), repeat)
        details[name] = {"median_ns": vals[name], "spread_ns": spread}
    vals["entry_protected"] = max(vals["entry_protected"] - vals["entry_walked"], 0.0)
    details["store_ns"] = bench.store
    details["pages"], details["repeat"] = pages, repeat
    src = f"calibrated on {os.uname().nodename}, Linux {os.uname().release}"
    return Costs(**vals, pt_page=DEFAULT.pt_page, source=src), details


def check(costs: Costs, pages: int = 16384, written: int = 1024,
          repeat: int = 5) -> dict[str, float]:
    """One uffd-async collect of ``written`` written pages in an armed range of ``pages``:
    measured on this kernel (median over ``repeat``) and priced by the model with ``costs``
    (the same operations replayed on a model process). Microseconds."""
    from .. import _uapi as U
    from ..model import process

    bench = _Bench(pages)
    ps = bench.ps
    step = max(pages // written, 1)
    times = []
    for _ in range(repeat):
        with bench.armed() as (a, pm):
            for p in range(0, pages, step):
                ctypes.memset(a + p * ps, 2, 1)
            t0 = time.perf_counter_ns()
            bench.scan(pm, a, protect=True)
            times.append((time.perf_counter_ns() - t0) / 1000)
    size = pages * ps
    wr, wpm = int(U.PageCategory.WRITTEN), int(U.PmScanFlag.WP_MATCHING)
    mm, k = process("6.18")
    a = mm.mmap(None, size)
    mm.write(a, size)
    fd = k.userfaultfd(0)
    k.uffdio_api(fd, int(U.UffdFeature.WP_ASYNC))
    k.uffdio_register(fd, a, size, U.UffdRegisterMode.WP)
    pmk = k.open_pagemap("self")
    k.scan_all(pmk, a, a + size, flags=wpm, category_mask=wr, return_mask=wr)
    for p in range(0, pages, step):
        mm.write(a + p * ps)
    w0, c0 = k.entries_walked, mm.c.as_dict()
    k.scan_all(pmk, a, a + size, flags=wpm, category_mask=wr, return_mask=wr)
    d = {key: v - c0[key] for key, v in mm.c.as_dict().items()}
    modelled = costs.collect_us(k.entries_walked - w0, d)
    return {"measured_us": statistics.median(times),
            "measured_spread_us": max(times) - min(times), "modelled_us": modelled}


__all__ = ["DEFAULT", "Costs", "calibrate", "check"]
