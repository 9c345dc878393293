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

import ctypes
import functools
import json
import mmap
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any


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
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


DEFAULT = Costs()


def _scan_all(kernel: Any, pm: int, start: int, end: int, **kw: int) -> Any:
    """The seam's whole-range PAGEMAP_SCAN (``scan_all``), or the loop over ``walk_end``."""
    fn = getattr(kernel, "scan_all", None)
    if fn is not None:
        return fn(pm, start, end, **kw)
    from ..kernel.pagemap import scan_all
    return scan_all(kernel.pagemap_scan, pm, start, end, **kw)


def _median_ns(fn: Callable[[], float], repeat: int) -> tuple[float, float]:
    """Median and spread (max - min) over ``repeat`` runs of ``fn`` (ns per event each)."""
    xs = [fn() for _ in range(repeat)]
    return statistics.median(xs), max(xs) - min(xs)


def calibrate(pages: int = 4096, repeat: int = 5) -> tuple[Costs, dict[str, Any]]:
    """Measure the per-event costs on this machine's kernel. Returns the costs and the
    details (median and spread per measurement). Needs WP_ASYNC + PAGEMAP_SCAN (6.7)."""
    from .. import _uapi as U
    from ..backends.uffd_async import open_uffd
    from ..kernel import LINUX, _sys

    ps = LINUX.page_size
    size = pages * ps
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    written = int(U.PageCategory.WRITTEN)
    wpm = int(U.PmScanFlag.WP_MATCHING)
    details: dict[str, Any] = {}

    def touch(addr: int) -> None:
        for p in range(pages):
            ctypes.memset(addr + p * ps, 1, 1)

    def store_loop() -> float:
        a = _sys.mmap(0, size, prot, flags)
        try:
            touch(a)
            t0 = time.perf_counter_ns()
            touch(a)
            return (time.perf_counter_ns() - t0) / pages
        finally:
            _sys.munmap(a, size)

    store, _ = _median_ns(store_loop, repeat)

    def fault() -> float:
        a = _sys.mmap(0, size, prot, flags)
        try:
            t0 = time.perf_counter_ns()
            touch(a)
            return (time.perf_counter_ns() - t0) / pages - store
        finally:
            _sys.munmap(a, size)

    def armed(fn: Callable[[int, int, int], float]) -> float:
        a = _sys.mmap(0, size, prot, flags)
        uffd = open_uffd()
        pm = LINUX.open_pagemap("self")
        try:
            touch(a)
            LINUX.uffdio_register(uffd, a, size, U.UffdRegisterMode.WP)
            _scan_all(LINUX, pm, a, a + size, flags=wpm, category_mask=written,
                           return_mask=written)
            return fn(a, uffd, pm)
        finally:
            LINUX.close(pm)
            LINUX.close(uffd)
            _sys.munmap(a, size)

    def wp_fault(a: int, uffd: int, pm: int) -> float:
        t0 = time.perf_counter_ns()
        touch(a)
        return (time.perf_counter_ns() - t0) / pages - store

    def walk(a: int, uffd: int, pm: int) -> float:
        t0 = time.perf_counter_ns()
        _scan_all(LINUX, pm, a, a + size, category_mask=written, return_mask=written)
        return (time.perf_counter_ns() - t0) / pages

    def protect(a: int, uffd: int, pm: int) -> float:
        touch(a)
        t0 = time.perf_counter_ns()
        _scan_all(LINUX, pm, a, a + size, flags=wpm, category_mask=written,
                       return_mask=written)
        return (time.perf_counter_ns() - t0) / pages

    def ioctl(a: int, uffd: int, pm: int) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(256):
            LINUX.pagemap_scan(pm, a, a + ps, category_mask=written, return_mask=written)
        return (time.perf_counter_ns() - t0) / 256

    def flush() -> float:
        a = _sys.mmap(0, 16 * ps, prot, flags)
        try:
            touch_16 = [ctypes.memset(a + p * ps, 1, 1) for p in range(16)]
            del touch_16
            t0 = time.perf_counter_ns()
            for _ in range(256):
                _sys.mprotect(a, ps, mmap.PROT_READ)
                _sys.mprotect(a, ps, prot)
            return (time.perf_counter_ns() - t0) / 512
        finally:
            _sys.munmap(a, 16 * ps)

    vals: dict[str, float] = {}
    for name, fn in (("fault", fault), ("tlb_flush", flush)):
        vals[name], spread = _median_ns(fn, repeat)
        details[name] = {"median_ns": vals[name], "spread_ns": spread}
    for name, fn2 in (("tracking_fault", wp_fault), ("entry_walked", walk),
                      ("entry_protected", protect), ("ioctl", ioctl)):
        vals[name], spread = _median_ns(functools.partial(armed, fn2), repeat)
        details[name] = {"median_ns": vals[name], "spread_ns": spread}
    vals["entry_protected"] = max(vals["entry_protected"] - vals["entry_walked"], 0.0)
    details["store_ns"] = store
    details["pages"], details["repeat"] = pages, repeat
    src = f"calibrated on {os.uname().nodename}, Linux {os.uname().release}"
    return Costs(**vals, pt_page=DEFAULT.pt_page, source=src), details


def check(costs: Costs, pages: int = 16384, written: int = 1024,
          repeat: int = 5) -> dict[str, float]:
    """One uffd-async collect of ``written`` written pages in an armed range of ``pages``:
    measured on this kernel (median over ``repeat``) and priced by the model with ``costs``
    (the same operations replayed on a model process). Microseconds."""
    from .. import _uapi as U
    from ..backends.uffd_async import open_uffd
    from ..kernel import LINUX, _sys
    from ..model import process

    ps = LINUX.page_size
    size = pages * ps
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    wr, wpm = int(U.PageCategory.WRITTEN), int(U.PmScanFlag.WP_MATCHING)
    step = max(pages // written, 1)
    times = []
    for _ in range(repeat):
        a = _sys.mmap(0, size, prot, flags)
        uffd, pm = open_uffd(), LINUX.open_pagemap("self")
        try:
            ctypes.memset(a, 1, size)
            LINUX.uffdio_register(uffd, a, size, U.UffdRegisterMode.WP)
            _scan_all(LINUX, pm, a, a + size, flags=wpm, category_mask=wr, return_mask=wr)
            for p in range(0, pages, step):
                ctypes.memset(a + p * ps, 2, 1)
            t0 = time.perf_counter_ns()
            _scan_all(LINUX, pm, a, a + size, flags=wpm, category_mask=wr, return_mask=wr)
            times.append((time.perf_counter_ns() - t0) / 1000)
        finally:
            LINUX.close(pm)
            LINUX.close(uffd)
            _sys.munmap(a, size)
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
