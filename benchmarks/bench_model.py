"""Model replay speed: a 1 GiB address space and a 1,000,000-operation trace, per design.

    .venv/bin/python benchmarks/bench_model.py [--ops 1000000] [--design NAME ...]
                                               [--repeat 3] [--out benchmarks/results-model.md]
    .venv/bin/python benchmarks/bench_model.py --calibrate [--costs-out FILE]

The trace (seeded): one 1 GiB anonymous mapping, tracked; 90 % single-page writes (80 % of them
to a hot 10 %), 5 % reads, 1 % MADV_DONTNEED of 1-16 pages, 0.1 % mprotect toggles, a collect
every 10,000 ops. It is streamed: each replay regenerates it op by op from the seed (the
generation is inside the measured time), so no run holds the trace in memory. The baseline is
the same replay untracked, run side by side; the ratio is design time / baseline time
(medians of ``--repeat`` runs, with the range).

``--calibrate`` measures the per-event costs on this kernel (writewatch.lab.costs.calibrate),
writes them as JSON (``writewatch model compare --costs FILE``) and compares one modelled
uffd-async collect with the measured one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator

import numpy as np

from writewatch.lab import costs as C
from writewatch.lab.designs import DEFAULT
from writewatch.lab.profiles import get as get_profile
from writewatch.lab.replay import run_trace
from writewatch.lab.workloads import BASE
from writewatch.model.pte import PAGE
from writewatch.model.trace import Trace, TraceHeader

GiB = 1 << 30
_BLOCK = 4096  #: ops drawn at a time


def make_trace(n_ops: int, seed: int = 1) -> Trace:
    """The whole trace in memory (for small runs and tests)."""
    return Trace(TraceHeader(page_size=PAGE, source="bench", seed=seed),
                 list(stream(n_ops, seed)))


def stream(n_ops: int, seed: int = 1) -> Iterator[dict]:
    """The trace, op by op."""
    yield from _gen(n_ops, seed)


def _gen(n_ops: int, seed: int) -> Iterator[dict]:
    """The ops, their random draws made by numpy a block at a time (the per-op Python is
    the dict and its branch)."""
    rng = np.random.default_rng(seed)
    npg = GiB // PAGE
    hot = npg // 10
    a = BASE
    yield {"op": "mmap", "addr": a, "len": GiB, "kind": "anon"}
    yield {"op": "track", "addr": a, "len": GiB}
    n = 2
    i = 0
    while n < n_ops - 1:
        r = rng.random(_BLOCK).tolist()
        cold = rng.random(_BLOCK) >= 0.8
        w = (a + np.where(cold, rng.integers(npg, size=_BLOCK),
                          rng.integers(hot, size=_BLOCK)) * PAGE).tolist()
        far = (a + rng.integers(npg, size=_BLOCK) * PAGE).tolist()  # reads
        small = (a + rng.integers(npg - 16, size=_BLOCK) * PAGE).tolist()  # discards, mprotect
        ln = (rng.integers(1, 17, size=_BLOCK) * PAGE).tolist()
        near = (a + rng.integers(hot, size=_BLOCK) * PAGE).tolist()
        for j in range(_BLOCK):
            if n >= n_ops - 1:
                break
            n += 1
            i += 1
            if i % 10_000 == 0:
                yield {"op": "collect"}
                continue
            x = r[j]
            if x < 0.90:
                yield {"op": "write", "addr": w[j], "len": PAGE}
            elif x < 0.95:
                yield {"op": "read", "addr": far[j], "len": PAGE}
            elif x < 0.96:
                yield {"op": "madvise", "addr": small[j], "len": ln[j], "advice": "DONTNEED"}
            elif x < 0.961:
                for prot in ("r", "rw"):
                    n += 1
                    yield {"op": "mprotect", "addr": small[j], "len": 16 * PAGE, "prot": prot}
            else:
                yield {"op": "write", "addr": near[j], "len": PAGE}
    yield {"op": "collect"}


def calibrate(out: str | None) -> int:
    costs, details = C.calibrate()
    check = C.check(costs)
    print(json.dumps({"costs": json.loads(costs.to_json()), "details": details,
                      "check_us": check}, indent=1))
    if out:
        with open(out, "w") as f:
            f.write(costs.to_json() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--design", action="append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", default="6.18")
    ap.add_argument("--out", help="write a markdown report here")
    ap.add_argument("--calibrate", action="store_true",
                    help="measure the per-event costs on this kernel instead")
    ap.add_argument("--costs-out", help="with --calibrate: write the costs JSON here")
    args = ap.parse_args(argv)
    if args.calibrate:
        return calibrate(args.costs_out)
    prof = get_profile(args.profile)
    names = [None, *(args.design or list(DEFAULT))]
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    fns: dict[str, int] = {}
    gen: list[float] = []
    for _ in range(args.repeat):
        c0 = time.process_time()
        for _op in stream(args.ops):
            pass
        gen.append(time.process_time() - c0)
        print(f"{'trace generation':22} {gen[-1]:7.2f} s cpu", file=sys.stderr, flush=True)
        for d in names:  # side by side: every design once per round
            c0 = time.process_time()
            m = run_trace(stream(args.ops), d, prof, "bench")
            c = time.process_time() - c0
            key = d or "untracked (baseline)"
            times.setdefault(key, []).append(m.seconds)
            cpu.setdefault(key, []).append(c)
            fns[key] = m.false_negatives
            print(f"{key:22} {m.seconds:7.2f} s wall {c:7.2f} s cpu", file=sys.stderr,
                  flush=True)
    base = statistics.median(times["untracked (baseline)"])
    rows = []
    for key, ts in times.items():
        med = statistics.median(ts)
        cs = cpu[key]
        rows.append((key, med, statistics.median(cs), min(cs), max(cs), args.ops / med,
                     med / base, fns[key]))
    lines = [
        f"## Model replay: {args.ops:,} ops over a 1 GiB address space",
        "",
        f"{datetime.date.today()} - {platform.node()}, Linux {os.uname().release}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; profile "
        f"{prof.name}; median of {args.repeat} runs (CPU range in brackets); the trace is "
        f"generated while it is replayed (included); load average at the end "
        f"{os.getloadavg()[0]:.1f}.",
        "",
        "Command: `.venv/bin/python benchmarks/bench_model.py "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        "| design | wall s | CPU s [range] | ops/s (wall) | vs untracked | false negatives |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, med, c, lo, hi, rate, ratio, fn in rows:
        lines.append(f"| {key} | {med:.2f} | {c:.2f} [{lo:.2f}-{hi:.2f}] | {rate:,.0f} | "
                     f"{ratio:.2f}x | {fn} |")
    lines += ["", f"Generating the trace alone (part of every row above): "
              f"{statistics.median(gen):.2f} s CPU [{min(gen):.2f}-{max(gen):.2f}]."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
