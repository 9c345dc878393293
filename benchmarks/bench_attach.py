"""Attach benchmark: tracking another process that has 1 GiB of written memory.

The target is tests/targets/writer.c (compiled here with ``cc``) after ``m 262144``: one
anonymous mapping of 1 GiB, every page written.

1. ``writewatch.attach(pid)`` (stop every thread, inject ``userfaultfd`` and ``close``, take
   the descriptor with ``pidfd_getfd``, register and arm every writable mapping while the
   target is stopped), against arming the same amount of memory in this process with
   ``writewatch.track((addr, length))`` (no ptrace, no injection), rounds alternating. The
   injection alone (``steal_userfaultfd`` without arming) is a third column. Target: < 200 ms.
2. One ``collect()`` on that process with 0 %, 0.1 %, 1 %, 10 % and 100 % of its 1 GiB
   written since the last, against what a soft-dirty tracker does for a collect: read
   ``/proc/PID/pagemap`` for the range (2 MiB for 1 GiB) and write ``4`` to
   ``/proc/PID/clear_refs`` (a whole-process page-table walk). On a kernel without
   CONFIG_MEM_SOFT_DIRTY the clear_refs walk changes no PTE and the target then takes no
   write faults: that column is a lower bound of soft-dirty's cost.

Every figure is the median of several runs. ``--quick`` makes a short run; ``--markdown PATH``
also writes the tables, the machine and the command to PATH.

Run: ``.venv/bin/python benchmarks/bench_attach.py [--quick] [--markdown PATH]``
(results: benchmarks/results-attach.md)
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import mmap
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import writewatch
from writewatch.kernel import _sys, procfs
from writewatch.kernel import inject as _inject
from writewatch.process import attach

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "tests" / "targets" / "writer.c"
BUILD = HERE / "_build"
BINARY = BUILD / "writer"
PAGE = os.sysconf("SC_PAGE_SIZE")


def build() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_attach needs a C compiler (cc) to build tests/targets/writer.c")
    BUILD.mkdir(exist_ok=True)
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        subprocess.run([cc, "-O2", "-pthread", "-o", str(BINARY), str(SOURCE)], check=True)
    return str(BINARY)


class Target:
    def __init__(self, binary: str, npages: int) -> None:
        self.p = subprocess.Popen([binary, "interactive", "1"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        self.p.stdout.readline()
        _, addr, n = self.cmd(f"m {npages}").split()
        self.addr, self.npages = int(addr, 16), int(n)

    def cmd(self, line: str) -> str:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> None:
        self.p.stdin.write("q\n")
        self.p.stdin.close()
        self.p.wait()


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def timed(samples: list[float], fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)``, append its duration to ``samples``, return its result."""
    t0 = time.perf_counter()
    out = fn(*args)
    samples.append(time.perf_counter() - t0)
    return out


def bench_attach(target: Target, reps: int) -> dict[str, float]:
    """Rounds alternate attach / track / injection alone. The 1 GiB region of the track()
    baseline is mapped only for its round: the attach helper is forked from this process,
    and fork copies the caller's page tables (about 0.4 ms per populated 100 MiB here, see
    the last column)."""
    size = target.npages * PAGE
    a, t, s, big = [], [], [], []
    for _ in range(reps):
        timed(a, attach, target.p.pid).close()
        os.close(timed(s, _inject.steal_userfaultfd, target.p.pid).fd)
        own = _sys.mmap(0, size, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            ctypes.memset(own, 1, size)
            timed(t, writewatch.track, (own, size)).close()
            timed(big, attach, target.p.pid).close()
        finally:
            _sys.munmap(own, size)
    return {"attach": median_ms(a), "track": median_ms(t), "inject": median_ms(s),
            "attach_big": median_ms(big)}


def soft_dirty_collect(pid: int, start: int, npages: int) -> None:
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, npages * 8, start // PAGE * 8)
    finally:
        os.close(fd)
    entries = np.frombuffer(raw, np.uint64)
    _ = np.flatnonzero(entries & np.uint64(1 << 55))
    procfs.clear_refs(pid, 4)


def bench_collect(target: Target, reps: int) -> list[tuple[str, float, float, int]]:
    rows = []
    with attach(target.p.pid) as t:
        t.collect()
        for label, k in (("0 %", 0), ("0.1 %", 1000), ("1 %", 100), ("10 %", 10),
                         ("100 %", 1)):
            ours, base = [], []
            pages = 0
            for _ in range(reps):
                if k:
                    target.cmd(f"a {k}")
                pages = len(timed(ours, t.collect))
                if k:
                    target.cmd(f"a {k}")
                timed(base, soft_dirty_collect, target.p.pid, target.addr, target.npages)
                t.collect()
            rows.append((label, median_ms(ours), median_ms(base), pages))
    return rows


MANY_MAPPINGS = "import numpy, sys, time\nprint('ready', flush=True)\nsys.stdin.read()"


def bench_many_mappings(reps: int) -> tuple[int, int, float, float]:
    """A Python process that imported numpy: many small file-backed and anonymous mappings.
    Returns (writable mappings tracked, maps lines, attach ms, idle collect ms)."""
    p = subprocess.Popen([sys.executable, "-c", MANY_MAPPINGS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        p.stdout.readline()
        a: list[float] = []
        c: list[float] = []
        for _ in range(max(3, reps // 3)):
            timed(a, attach, p.pid).close()
        with attach(p.pid) as t:
            t.collect()
            for _ in range(reps):
                timed(c, t.collect)
            spans = len(t.spans)
        with open(f"/proc/{p.pid}/maps") as f:
            lines = len(f.readlines())
    finally:
        p.stdin.close()
        p.wait()
    return spans, lines, median_ms(a), median_ms(c)


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.node()}: Linux {platform.release()} {platform.machine()}, {cpu}, "
            f"{os.cpu_count()} CPUs, THP {procfs.thp_mode()}, Python "
            f"{platform.python_version()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    reps = args.reps or (5 if args.quick else 15)
    binary = build()
    npages = args.size_mib * (1 << 20) // PAGE
    target = Target(binary, npages)
    try:
        at = bench_attach(target, reps)
        rows = bench_collect(target, reps)
        many = bench_many_mappings(reps)
    finally:
        target.close()
    size = f"{args.size_mib} MiB"
    out = [f"## attach + arm, target with {size} written (median of {reps})", "",
           "| what | ms | ratio to track() |", "|---|---:|---:|",
           f"| `attach(pid)`: stop, inject, pidfd_getfd, register + arm all mappings | "
           f"{at['attach']:.1f} | {at['attach'] / at['track']:.2f} |",
           f"| `track((addr, len))` of {size} in this process (baseline: arming alone) | "
           f"{at['track']:.1f} | 1.00 |",
           f"| `steal_userfaultfd(pid)` alone (stop, inject, take, close; no arming) | "
           f"{at['inject']:.1f} | {at['inject'] / at['track']:.2f} |",
           f"| `attach(pid)` from a caller that itself has {size} populated (fork of the "
           f"helper copies the caller's page tables) | {at['attach_big']:.1f} | "
           f"{at['attach_big'] / at['track']:.2f} |", "",
           f"Target: < 200 ms -> {'met' if at['attach'] < 200 else 'NOT met'}.", "",
           f"## one collect on that process (median of {reps})", "",
           "| written since last | pages reported | collect() ms | soft-dirty read+clear_refs "
           "ms (lower bound) | ratio |", "|---|---:|---:|---:|---:|"]
    out += [f"| {label} | {pages} | {ours:.2f} | {base:.2f} | {ours / base:.2f} |"
            for label, ours, base, pages in rows]
    out += ["", f"## a process with many mappings (Python + numpy, median of {reps})", "",
            "| writable mappings tracked | maps lines | attach ms | idle collect() ms |",
            "|---:|---:|---:|---:|",
            f"| {many[0]} | {many[1]} | {many[2]:.1f} | {many[3]:.2f} |"]
    text = "\n".join(out)
    print(text)
    if args.markdown:
        cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
        args.markdown.write_text(
            "# Attach benchmark results\n\n"
            f"Machine: {machine()}  \nDate: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} "
            f"UTC  \nCommand: `{cmd}`\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
