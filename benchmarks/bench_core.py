"""Core benchmark: what precise write tracking costs, against the alternatives.

On a populated anonymous region (1 GiB by default) with 0.1 %, 1 % and 10 % of its pages
written between collects:

1. ``Tracker.collect()`` of ``writewatch.zeros(length)`` (the README's object) against the
   minimal C program doing the same PAGEMAP_SCAN get + write-protect
   (benchmarks/c/scan_bench.c, compiled here with ``cc``), run side by side: the rounds
   alternate between the two so both see the same machine noise. The kernel layer alone
   (``pagemap.scan_all``) is a third column.
2. The classic approaches a user would otherwise write: reading ``/proc/self/pagemap`` for the
   range (numpy decode), and hashing every page (xxh3_64 and blake2b).
3. The cost added to the writer: the first write to an armed page against a write to an
   untracked page (C loop, and a numpy strided write), per page.
4. Page-table memory added by arming an unpopulated range (VmPTE of /proc/self/status).

Every figure is the median of several runs. ``--quick`` makes a short run; ``--markdown
PATH`` also writes the tables, the machine and the command to PATH.

Run: ``.venv/bin/python benchmarks/bench_core.py [--quick] [--markdown benchmarks/results-core.md]``
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import hashlib
import mmap
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import writewatch
from writewatch import _uapi as U
from writewatch.kernel import _sys, pagemap, procfs, uffd

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "c" / "scan_bench.c"
BUILD = HERE / "_build"
C_BINARY = BUILD / "scan_bench"
C_LIBRARY = BUILD / "libscan_bench.so"

PAGE = os.sysconf("SC_PAGE_SIZE")
ANON = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
RW = mmap.PROT_READ | mmap.PROT_WRITE
WRITTEN = int(U.PageCategory.WRITTEN)
WP = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)
BATCH = 4096  # page_region entries per PAGEMAP_SCAN call, as the uffd-async backend uses
FRACTIONS = (0.001, 0.01, 0.1)


# ---------------------------------------------------------------------------------------------
# helpers


def build_c() -> Path:
    """Compile scan_bench.c into benchmarks/_build/, as a program and as a shared object
    (again when the source is newer)."""
    BUILD.mkdir(exist_ok=True)
    for out, extra in ((C_BINARY, []), (C_LIBRARY, ["-shared", "-fPIC"])):
        if not out.exists() or out.stat().st_mtime < C_SOURCE.stat().st_mtime:
            subprocess.run(["cc", "-O2", "-Wall", "-Wextra", *extra, "-o", str(out),
                            str(C_SOURCE)], check=True)
    return C_BINARY


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def quartiles(xs: list[float]) -> tuple[float, float]:
    """The range of the middle half of ``xs`` (its spread, next to its median)."""
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


class Region:
    """Anonymous memory, 4 KiB pages (MADV_NOHUGEPAGE, as the C baseline), optionally
    populated with MADV_POPULATE_WRITE."""

    def __init__(self, length: int, populate: bool = True, zeros: bool = False) -> None:
        self.length = length
        #: ``zeros``: the README's object, ``writewatch.zeros(length)`` (kept alive here)
        self.array = writewatch.zeros(length) if zeros else None
        self.addr = (self.array.ctypes.data if self.array is not None
                     else _sys.mmap(0, length, RW, ANON))
        _sys.madvise(self.addr, length, U.MADV_NOHUGEPAGE)
        if populate:
            _sys.madvise(self.addr, length, U.MADV_POPULATE_WRITE)
        buf = (ctypes.c_uint8 * length).from_address(self.addr)
        self.bytes = np.ctypeslib.as_array(buf)
        self.pages = self.bytes.reshape(-1, PAGE)
        self.npages = length // PAGE

    def write(self, stride: int, offset: int) -> int:
        """Write one byte of every ``stride``-th page from ``offset``; return the page count."""
        self.pages[offset % stride::stride, 0] += 1
        return len(range(offset % stride, self.npages, stride))

    def unmap(self) -> None:
        del self.bytes, self.pages
        if self.array is None:
            _sys.munmap(self.addr, self.length)
        self.array = None


class CServer:
    """scan_bench.c in ``serve`` mode: one round per request, on its own region."""

    def __init__(self, binary: Path, length: int) -> None:
        self.proc = subprocess.Popen([str(binary), "serve", str(length), str(BATCH)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"scan_bench serve failed to start ({line!r})")

    def round(self, stride: int, offset: int) -> tuple[int, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"round {stride} {offset}\n")
        self.proc.stdin.flush()
        ns, _regions, pages = self.proc.stdout.readline().split()
        return int(ns), int(pages)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


class KernelLayer:
    """The kernel layer alone: a WP_ASYNC userfaultfd and ``pagemap.scan_all``."""

    def __init__(self, region: Region) -> None:
        self.region = region
        self.uffd = uffd.userfaultfd()
        uffd.api(self.uffd, int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED))
        uffd.register(self.uffd, region.addr, region.length, U.UffdRegisterMode.WP)
        self.fd = pagemap.open_pagemap("self")
        self.scanner = pagemap.Scanner(BATCH)
        self.collect()

    def collect(self) -> int:
        r = self.region
        res = pagemap.scan_all(self.scanner, self.fd, r.addr, r.addr + r.length, batch=BATCH,
                               flags=WP, category_mask=WRITTEN, return_mask=WRITTEN)
        return int((res.regions[:, 1] - res.regions[:, 0]).sum()) // PAGE

    def close(self) -> None:
        _sys.close(self.fd)
        _sys.close(self.uffd)


class CInProcess:
    """scan_bench.c's ww_collect() called through ctypes on the kernel layer's region and
    descriptors: the same walk as the C program, in this process."""

    def __init__(self, kern: KernelLayer) -> None:
        lib = ctypes.CDLL(str(C_LIBRARY))
        self.fn = lib.ww_collect
        self.fn.restype = ctypes.c_long
        self.fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)]
        self.kern = kern
        self.vec = np.empty((BATCH, 3), np.uint64)
        self.pages = ctypes.c_uint64()

    def collect(self) -> int:
        r = self.kern.region
        self.pages.value = 0
        self.fn(self.kern.fd, r.addr, r.length, self.vec.ctypes.data, BATCH,
                ctypes.byref(self.pages))
        return self.pages.value


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter_ns()
    out = fn()
    return (time.perf_counter_ns() - t0) / 1e6, out


# ---------------------------------------------------------------------------------------------
# 1. collect() vs C


def bench_collect(length: int, reps: int, binary: Path) -> list[dict[str, float]]:
    cserv = CServer(binary, length)
    rt, rk = Region(length, zeros=True), Region(length)
    tracker = writewatch.track(rt.array)
    kern = KernelLayer(rk)
    inproc = CInProcess(kern)
    tracker.collect()
    rows = []
    try:
        for frac in FRACTIONS:
            stride = round(1 / frac)
            c_ms, py_ms, k_ms, ci_ms = [], [], [], []
            for rep in range(reps + 1):  # round 0 warms caches and is dropped
                ns, cpages = cserv.round(stride, rep)
                # the three in-process walks take turns at going first: the first one after
                # the C process ran finds the caches cold
                got: dict[str, tuple[float, Any]] = {}
                for name in ("tracker", "kernel", "inproc")[rep % 3:] + \
                        ("tracker", "kernel", "inproc")[:rep % 3]:
                    if name == "tracker":
                        want = rt.write(stride, rep)
                        got[name] = timed(tracker.collect)
                    elif name == "kernel":
                        rk.write(stride, rep)
                        got[name] = timed(kern.collect)
                    else:
                        rk.write(stride, rep)
                        got[name] = timed(inproc.collect)
                (ms, pages), (kms, kpages), (cims, cipages) = (
                    got["tracker"], got["kernel"], got["inproc"])
                assert cpages == want and len(pages) == want, (cpages, len(pages), want)
                assert kpages == want and cipages == want
                if rep:
                    c_ms.append(ns / 1e6)
                    py_ms.append(ms)
                    k_ms.append(kms)
                    ci_ms.append(cims)
            # ratios per round (the C round and the Python rounds right after it), then
            # their median: a burst of load on the shared machine hits both sides
            rows.append({"fraction": frac, "pages": want, "c_ms": median(c_ms),
                         "collect_ms": median(py_ms), "kernel_ms": median(k_ms),
                         "c_inproc_ms": median(ci_ms),
                         "collect_ratio": median(ratios := [p / c for p, c in
                                                            zip(py_ms, c_ms, strict=True)]),
                         "collect_iqr": quartiles(ratios),
                         "kernel_ratio": median([k / c for k, c in zip(k_ms, c_ms,
                                                                         strict=True)])})
    finally:
        tracker.close()
        kern.close()
        cserv.close()
        rt.unmap()
        rk.unmap()
    return rows


# ---------------------------------------------------------------------------------------------
# 2. classic approaches


def bench_classic(length: int, reps: int, hash_reps: int) -> dict[str, float]:
    """Each classic run is preceded by a collect() of 1 % written pages on the same region,
    so the ratio compares runs that saw the same machine load."""
    import xxhash

    r = Region(length)
    tracker = writewatch.track((r.addr, length))
    tracker.collect()
    stride = 100
    rounds = iter(range(1, 1 << 30))
    out: dict[str, float] = {}

    def collect_1pct() -> float:
        r.write(stride, next(rounds))
        return timed(tracker.collect)[0]

    def paired(fn: Callable[[], object], n: int) -> tuple[float, float]:
        coll, other = [], []
        for _ in range(n):
            coll.append(collect_1pct())
            other.append(timed(fn)[0])
        return median(other), median(coll)

    view = memoryview(r.bytes)
    prev = np.zeros(r.npages, np.uint64)
    prev_b = np.zeros(r.npages, np.uint64)

    def xxh3() -> np.ndarray:
        h = np.fromiter((xxhash.xxh3_64_intdigest(view[i:i + PAGE])
                         for i in range(0, length, PAGE)), np.uint64, r.npages)
        return np.flatnonzero(h != prev)

    def blake2b() -> np.ndarray:
        digest = b"".join(hashlib.blake2b(view[i:i + PAGE], digest_size=8).digest()
                          for i in range(0, length, PAGE))
        return np.flatnonzero(np.frombuffer(digest, np.uint64) != prev_b)

    try:
        fd = pagemap.open_pagemap("self")
        try:
            def read_pagemap() -> np.ndarray:
                raw = pagemap.read_entries(fd, r.addr, r.npages, PAGE)
                return np.flatnonzero(raw & np.uint64(U.PagemapBit.SOFT_DIRTY))

            out["pagemap_ms"], out["pagemap_collect_ms"] = paired(read_pagemap, reps)
        finally:
            _sys.close(fd)
        out["xxh3_ms"], out["xxh3_collect_ms"] = paired(xxh3, hash_reps)
        out["blake2b_ms"], out["blake2b_collect_ms"] = paired(blake2b, hash_reps)
    finally:
        view.release()
        tracker.close()
        r.unmap()
    return out


# ---------------------------------------------------------------------------------------------
# 3. cost to the writer


def bench_writer(npages: int, reps: int, binary: Path) -> dict[str, float]:
    res = subprocess.run([str(binary), "writer", str(npages), str(reps)], check=True,
                         capture_output=True, text=True)
    lines = [tuple(map(int, line.split())) for line in res.stdout.splitlines() if line]
    armed, plain = [a for a, _ in lines], [p for _, p in lines]
    out = {"c_armed_ns": median(armed) / npages, "c_plain_ns": median(plain) / npages,
           "c_ratio": median([a / p for a, p in lines])}

    a, b = Region(npages * PAGE), Region(npages * PAGE)
    try:
        with writewatch.track((a.addr, a.length)) as t:
            t.collect()
            pa, pb = [], []
            for _ in range(reps):
                ms_a, _ = timed(lambda: a.pages[:, 0].__iadd__(1))
                ms_b, _ = timed(lambda: b.pages[:, 0].__iadd__(1))
                assert len(t.collect()) == npages
                pa.append(ms_a)
                pb.append(ms_b)
        out["np_armed_ns"] = median(pa) * 1e6 / npages
        out["np_plain_ns"] = median(pb) * 1e6 / npages
        out["np_ratio"] = median([a / b for a, b in zip(pa, pb, strict=True)])
    finally:
        a.unmap()
        b.unmap()
    return out


# ---------------------------------------------------------------------------------------------
# 4. page-table memory


def bench_memory(length: int, reps: int) -> dict[str, float]:
    added, after_close = [], []
    for _ in range(reps):
        r = Region(length, populate=False)
        try:
            before = procfs.status_kib("VmPTE")
            t = writewatch.track((r.addr, length))
            armed = procfs.status_kib("VmPTE")
            t.close()
            closed = procfs.status_kib("VmPTE")
        finally:
            r.unmap()
        added.append(armed - before)
        after_close.append(closed - before)
    return {"vmpte_added_kib": median(added), "vmpte_after_close_kib": median(after_close),
            "expected_kib": length / (512 * PAGE) * PAGE / 1024}


# ---------------------------------------------------------------------------------------------
# report


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
            "python": platform.python_version(), "numpy": np.__version__,
            "writewatch": f"{writewatch.__version__} ({commit})",
            "thp": procfs.thp_mode() or "?",
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows]
    return "\n".join([line, sep, *body])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 20 s)")
    ap.add_argument("--size-mib", type=int, default=1024, help="region size (default 1024)")
    ap.add_argument("--reps", type=int, help="collect rounds per fraction (default 31; 5 quick)")
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)

    feats = writewatch.features()
    if not feats.backends["uffd-async"].usable:
        print(f"uffd-async unusable here: {feats.backends['uffd-async'].detail}",
              file=sys.stderr)
        return 1
    length = args.size_mib << 20
    reps = args.reps or (5 if args.quick else 31)
    hash_reps = 1 if args.quick else 3
    binary = build_c()

    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    coll = bench_collect(length, reps, binary)
    classic = bench_classic(length, max(reps // 2, 3), hash_reps)
    writer = bench_writer(32768, max(reps // 2, 3), binary)
    mem = bench_memory(length, 3)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

    mib = f"{args.size_mib} MiB"
    t1 = table(["written", "pages", "C program (ms)", "collect() (ms)", "collect()/C",
                "middle half", "kernel layer (ms)", "kernel layer/C", "C in-process (ms)"],
               [[f"{r['fraction']:.1%}", str(r["pages"]), f"{r['c_ms']:.3f}",
                 f"{r['collect_ms']:.3f}", f"{r['collect_ratio']:.2f}x",
                 "{:.2f}-{:.2f}x".format(*r["collect_iqr"]),
                 f"{r['kernel_ms']:.3f}", f"{r['kernel_ratio']:.2f}x",
                 f"{r['c_inproc_ms']:.3f}"] for r in coll])
    t2 = table(["approach (whole range)", "time (ms)", "collect() at 1 % (ms)", "ratio"],
               [[name, f"{classic[key + '_ms']:.2f}", f"{classic[key + '_collect_ms']:.3f}",
                 f"{classic[key + '_ms'] / classic[key + '_collect_ms']:.0f}x"]
                for name, key in (("read /proc/self/pagemap + numpy decode", "pagemap"),
                                  ("xxh3_64 of every page", "xxh3"),
                                  ("blake2b of every page", "blake2b"))])
    t3 = table(["writer", "armed page (ns/page)", "untracked page (ns/page)", "ratio",
                "added (ns/page)"],
               [[name, f"{writer[k + '_armed_ns']:.0f}", f"{writer[k + '_plain_ns']:.1f}",
                 f"{writer[k + '_ratio']:.0f}x",
                 f"{writer[k + '_armed_ns'] - writer[k + '_plain_ns']:.0f}"]
                for name, k in (("C loop, 1 byte per page", "c"),
                                ("numpy strided write", "np"))])
    t4 = table(["arming an unpopulated range", "VmPTE added (KiB)", "expected (KiB)",
                "still there after close() (KiB)"],
               [[mib, f"{mem['vmpte_added_kib']:.0f}", f"{mem['expected_kib']:.0f}",
                 f"{mem['vmpte_after_close_kib']:.0f}"]])
    sections = [
        (f"1. collect() vs the minimal C program ({mib} populated, 4 KiB pages, "
         f"median of {reps} rounds; ratios are medians of per-round ratios)", t1),
        (f"2. Classic approaches ({mib}; each run paired with a collect() of 1 % written "
         f"pages; median of {max(reps // 2, 3)} pagemap reads, {hash_reps} hashing runs)", t2),
        (f"3. Cost to the writer (32768 populated pages, median of {max(reps // 2, 3)} runs)",
         t3),
        ("4. Page-table memory (median of 3)", t4),
    ]
    for title, t in sections:
        print(f"\n{title}\n{t}")

    if args.markdown:
        cmd = shlex.join([".venv/bin/python", "benchmarks/bench_core.py",
                          *(argv if argv is not None else sys.argv[1:])])
        md = ["# Core benchmark results", "",
              f"Command: `{cmd}`", "",
              *(f"- {k}: {v}" for k, v in info.items()), ""]
        for title, t in sections:
            md += [f"## {title}", "", t, ""]
        args.markdown.write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
