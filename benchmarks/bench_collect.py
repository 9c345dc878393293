"""What a collect costs next to what the kernel does, on the objects the README uses.

Every row is a ratio of two things run side by side in this process, alternating round by
round so that both see the same load; the report gives the median ratio and its spread
(the range of the middle half of the rounds, and min–max).

1. ``collect()`` of an attached Python + numpy process (a few dozen writable mappings)
   against one raw PAGEMAP_SCAN of its whole address space (WRITTEN, no write-protect),
   with its 128 MiB array rewritten between collects (every page) and with 1 % of its pages
   written; and against one raw get + write-protect scan of the whole address space (the
   kernel's part of the same job: WP_MATCHING without CHECK_WPASYNC skips the VMAs that are
   not registered, which a collect cannot do, since it must see a registration lost).
2. 1,000 tracked 64 KiB buffers (``writewatch.zeros``) against one 64 MiB buffer:
   ``track()`` and ``collect()``, 1 % of the pages written between collects.
3. ``collect()`` on ``writewatch.zeros(1 GiB)`` against the same on a private anonymous
   ``mmap`` of the same size, 1 % written (zeros() maps private memory: these should match).
4. ``collect()`` against the bare ioctl loop (``LINUX.scan_all``) on an identical 1 GiB
   mapping, 1 % written; and the fixed cost of an empty collect against one raw ioctl.
5. Pages reported conservatively when launching a short Python + sqlite3 program, and for
   the README's main command: a fraction of the pages reported, over several runs.

Run: ``.venv/bin/python benchmarks/bench_collect.py [--quick] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_core import machine, table

import writewatch
from writewatch import _uapi as U
from writewatch.kernel import LINUX, pagemap, uffd

HERE = Path(__file__).resolve().parent
PAGE = mmap.PAGESIZE
W = int(U.PageCategory.WRITTEN)
WP = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)


def spread(xs: list[float]) -> str:
    q = np.percentile(xs, [25, 50, 75])
    return f"{q[1]:.2f}x (IQR {q[0]:.2f}–{q[2]:.2f}, range {min(xs):.2f}–{max(xs):.2f})"


def alternate(a: Callable[[], object], b: Callable[[], object], rounds: int,
              prepare: Callable[[], object] | None = None, inner: int = 1
              ) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` in alternation (who goes first alternates too); seconds each."""
    ta, tb = [], []
    for k in range(rounds):
        for fn, out in ((a, ta), (b, tb)) if k % 2 == 0 else ((b, tb), (a, ta)):
            if prepare is not None:
                prepare()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) / inner)
    return ta, tb


def ratio(ta: list[float], tb: list[float]) -> list[float]:
    return [x / y for x, y in zip(ta, tb, strict=True)]


def us(xs: list[float]) -> str:
    return f"{np.median(xs) * 1e6:.1f} µs"


# ---------------------------------------------------------------------------------------------
TARGET = ("import numpy, sys, time\n"
          "a = numpy.zeros(1 << 24)\n"
          "print('ready', flush=True)\n"
          "for line in sys.stdin:\n"
          "    a[::int(line)] += 1\n"
          "    print('ok', flush=True)\n")


def attached_process(rounds: int) -> list[list[str]]:
    p = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        assert p.stdout is not None and p.stdin is not None
        p.stdout.readline()
        with writewatch.attach(p.pid) as t:
            fd = pagemap.open_pagemap(p.pid)
            try:
                def raw() -> None:
                    LINUX.scan_all(fd, PAGE, (1 << 47) - PAGE, category_mask=W, return_mask=W)

                def raw_wp() -> None:
                    LINUX.scan_all(fd, PAGE, (1 << 47) - PAGE, category_mask=W, return_mask=W,
                                   flags=int(U.PmScanFlag.WP_MATCHING))

                t.collect()
                n = len(t.mappings())
                # the array's 8-byte elements: a stride of 512 writes every page, 51200 1 %
                for stride, what in ((512, "every page of its 128 MiB array written"),
                                     (51200, "1 % of the array's pages written")):
                    def write(stride: int = stride) -> None:
                        p.stdin.write(f"{stride}\n")  # type: ignore[union-attr]
                        p.stdin.flush()  # type: ignore[union-attr]
                        p.stdout.readline()  # type: ignore[union-attr]

                    ta, tb = alternate(t.collect, raw, rounds, prepare=write)
                    rows.append([f"collect() of an attached Python+numpy process ({n} writable "
                                 f"mappings, {what}) vs one raw PAGEMAP_SCAN of its address "
                                 "space", us(ta), us(tb), spread(ratio(ta, tb)), "≤ 3x"])
                    ta, tb = alternate(t.collect, raw_wp, rounds, prepare=write)
                    rows.append([f"the same ({what}) vs one raw get + write-protect scan of "
                                 "the address space", us(ta), us(tb), spread(ratio(ta, tb)), ""])
            finally:
                LINUX.close(fd)
    finally:
        p.kill()
        p.wait()
    return rows


def many_buffers(rounds: int) -> list[list[str]]:
    writewatch.features()
    small = [writewatch.zeros(64 << 10) for _ in range(1000)]
    big = writewatch.zeros(64 << 20)
    trackers: list[writewatch.Tracker] = []

    def track_small() -> None:
        trackers.append(writewatch.track(*small))

    def track_big() -> None:
        trackers.append(writewatch.track(big))

    def drop() -> None:
        while trackers:
            trackers.pop().close()

    ta, tb = alternate(track_small, track_big, max(rounds // 3, 3), prepare=drop)
    drop()
    t_small, t_big = writewatch.track(*small), writewatch.track(big)

    def write() -> None:
        for b in small[::1]:
            b[::PAGE * 100] = 1  # 1 % of the pages of each
        big[::PAGE * 100] = 1

    ca, cb = alternate(t_small.collect, t_big.collect, rounds, prepare=write)
    t_small.close()
    t_big.close()
    return [["track() of 1,000 × 64 KiB buffers vs one 64 MiB buffer", us(ta), us(tb),
             spread(ratio(ta, tb)), "≤ 10x"],
            ["collect() of them, 1 % written", us(ca), us(cb), spread(ratio(ca, cb)), "≤ 4x"]]


def zeros_vs_private(rounds: int, size: int) -> list[list[str]]:
    z = writewatch.zeros(size)
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    p = np.frombuffer(m, np.uint8)
    z[::PAGE] = 1
    p[::PAGE] = 1
    tz, tp = writewatch.track(z), writewatch.track(p)

    def write() -> None:
        z[::PAGE * 100] = 2
        p[::PAGE * 100] = 2

    ta, tb = alternate(tz.collect, tp.collect, rounds, prepare=write)
    tz.close()
    tp.close()
    return [[f"collect() on zeros({size >> 20} MiB) vs a private mmap, 1 % written",
             us(ta), us(tb), spread(ratio(ta, tb)), "≤ 1.25x"]]


def vs_ioctl(rounds: int, size: int) -> list[list[str]]:
    a = writewatch.zeros(size)
    b = writewatch.zeros(size)
    a[::PAGE] = 1
    b[::PAGE] = 1
    t = writewatch.track(a)
    fd = uffd.userfaultfd()
    uffd.api(fd, int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED))
    base = b.__array_interface__["data"][0]
    uffd.register(fd, base, size, U.UffdRegisterMode.WP)
    pm = pagemap.open_pagemap("self")

    def raw() -> None:
        LINUX.scan_all(pm, base, base + size, flags=WP, category_mask=W, return_mask=W)

    raw()

    def write() -> None:
        a[::PAGE * 100] = 2
        b[::PAGE * 100] = 2

    ta, tb = alternate(t.collect, raw, rounds, prepare=write)
    # fixed cost: nothing written, a 1-page buffer; against one raw ioctl on an empty range
    one = writewatch.zeros(PAGE)
    t1 = writewatch.track(one)
    arg = ctypes.create_string_buffer(U.PM_SCAN_ARG_SIZE)
    vec = np.empty((16, 3), np.uint64)
    o = one.__array_interface__["data"][0]
    U.PM_SCAN_ARG_STRUCT.pack_into(arg, 0, U.PM_SCAN_ARG_SIZE, WP, o, o + PAGE, 0,
                                   vec.ctypes.data, 16, 0, 0, W, 0, W)
    from writewatch.kernel._sys import _libc
    addr = ctypes.addressof(arg)
    fd1 = t1._backend.pagemap  # type: ignore[attr-defined]
    fa, fb = alternate(t1.collect, lambda: _libc.ioctl(fd1, U.PAGEMAP_SCAN, addr), rounds,
                       inner=200)
    t.close()
    t1.close()
    LINUX.close(fd)
    LINUX.close(pm)
    return [[f"collect() vs the bare ioctl loop, identical {size >> 20} MiB, 1 % written",
             us(ta), us(tb), spread(ratio(ta, tb)), "≤ 1.15x"],
            ["empty collect() vs one raw ioctl (fixed cost)", us(fa), us(fb),
             spread(ratio(fa, fb)), "≤ 10 µs"]]


SQLITE = ("import sqlite3, time\n"
          "c = sqlite3.connect(':memory:')\n"
          "c.execute('create table t(x)')\n"
          "c.executemany('insert into t values (?)', [(i,) for i in range(20000)])\n"
          "c.commit()\n"
          "time.sleep(0.3)\n")


def conservative_launch(runs: int) -> list[list[str]]:
    fractions = []
    for _ in range(runs):
        t = writewatch.launch([sys.executable, "-c", SQLITE])
        tot = cons = 0
        while t.process.poll() is None:
            time.sleep(0.02)
            try:
                got = t.collect()
            except writewatch.NoSuchProcess:
                break
            tot += len(got)
            cons += len(t.last.conservative & got)
        t.close()
        t.process.wait()
        fractions.append(100 * cons / max(tot, 1))
    readme = []
    for _ in range(max(runs // 3, 1)):
        out = HERE / "_build" / "readme.json"
        out.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "writewatch", "run", "-q", "--no-live",
                        "--json", str(out), "--", sys.executable,
                        str(HERE.parent / "examples" / "sqlite_workload.py")],
                       check=True, capture_output=True)
        import json
        s = json.loads(out.read_text())["summary"]
        readme.append(100 * s["conservative_pages"] / max(s["pages_written"], 1))

    def pct(xs: list[float]) -> str:
        return f"{np.median(xs):.2f} % (range {min(xs):.2f}–{max(xs):.2f}, {len(xs)} runs)"

    return [["launch of a short Python+sqlite3 program: pages reported conservative", "", "",
             pct(fractions), "≤ 1 %"],
            ["the README's main command: pages reported conservative", "", "", pct(readme),
             "≤ 1 %"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 30 s)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)
    rounds = 11 if args.quick else 41
    size = args.size_mib << 20
    rows: list[list[str]] = []
    for part in (lambda: attached_process(rounds), lambda: many_buffers(rounds),
                 lambda: zeros_vs_private(rounds, size), lambda: vs_ioctl(rounds, size),
                 lambda: conservative_launch(3 if args.quick else 9)):
        rows += part()
        print(rows[-1][0], "->", rows[-1][3], flush=True)
    m = machine()
    text = "\n".join([
        "# Collect cost and exactness (benchmarks/bench_collect.py)", "",
        *(f"- {k}: {v}" for k, v in m.items()),
        f"- command: {' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}", "",
        table(["what", "writewatch", "baseline", "ratio (median, spread)", "goal"], rows),
        ""])
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
