"""Model replay speed: a 1 GiB address space and a 1,000,000-operation trace, per design.

    .venv/bin/python benchmarks/bench_model.py [--ops 1000000] [--design NAME ...]
                                               [--repeat 3] [--out benchmarks/results-model.md]

The trace (seeded): one 1 GiB anonymous mapping, tracked; 90 % single-page writes (80 % of them
to a hot 10 %), 5 % reads, 1 % MADV_DONTNEED of 1-16 pages, 0.1 % mprotect toggles, a collect
every 10,000 ops. The baseline is the same replay untracked, run side by side; the ratio is
design time / baseline time (medians of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time

from writewatch.model import DESIGNS, profiles, run_trace
from writewatch.model.state import PAGE
from writewatch.model.trace import Trace, TraceHeader
from writewatch.model.workloads import BASE

GiB = 1 << 30


def make_trace(n_ops: int, seed: int = 1) -> Trace:
    rng = random.Random(seed)
    npg = GiB // PAGE
    hot = npg // 10
    a = BASE
    ops: list[dict] = [{"op": "mmap", "addr": a, "len": GiB, "kind": "anon"},
                       {"op": "track", "addr": a, "len": GiB}]
    rnd = rng.random
    rr = rng.randrange
    for i in range(n_ops - 2):
        if i % 10_000 == 9_999:
            ops.append({"op": "collect"})
            continue
        r = rnd()
        if r < 0.90:
            p = rr(hot) if rnd() < 0.8 else rr(npg)
            ops.append({"op": "write", "addr": a + p * PAGE, "len": PAGE})
        elif r < 0.95:
            ops.append({"op": "read", "addr": a + rr(npg) * PAGE, "len": PAGE})
        elif r < 0.96:
            p = rr(npg - 16)
            ops.append({"op": "madvise", "addr": a + p * PAGE, "len": rr(1, 17) * PAGE,
                        "advice": "DONTNEED"})
        elif r < 0.961:
            p = rr(npg - 16)
            for prot in ("r", "rw"):
                ops.append({"op": "mprotect", "addr": a + p * PAGE, "len": 16 * PAGE,
                            "prot": prot})
        else:
            p = rr(hot)
            ops.append({"op": "write", "addr": a + p * PAGE, "len": PAGE})
    ops.append({"op": "collect"})
    return Trace(TraceHeader(page_size=PAGE, source="bench", seed=seed), ops[:n_ops])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--design", action="append")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", default="6.18")
    ap.add_argument("--out", help="write a markdown report here")
    args = ap.parse_args(argv)
    prof = profiles.get(args.profile)
    t0 = time.perf_counter()
    trace = make_trace(args.ops)
    gen = time.perf_counter() - t0
    names = [None, *(args.design or list(DESIGNS))]
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    fns: dict[str, int] = {}
    for _ in range(args.repeat):
        for d in names:  # side by side: every design once per round
            c0 = time.process_time()
            m = run_trace(trace, d, prof, "bench")
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
        rows.append((key, med, statistics.median(cpu[key]), len(trace) / med, med / base,
                     fns[key]))
    lines = [
        f"## Model replay: {len(trace):,} ops over a 1 GiB address space",
        "",
        f"{datetime.date.today()} - {platform.node()}, Linux {os.uname().release}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; profile "
        f"{prof.name}; median of {args.repeat} runs; trace generation {gen:.1f} s (not "
        "included).",
        "",
        "Command: `.venv/bin/python benchmarks/bench_model.py "
        + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        "| design | wall s | CPU s | ops/s (wall) | vs untracked | false negatives |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, med, c, rate, ratio, fn in rows:
        lines.append(f"| {key} | {med:.2f} | {c:.2f} | {rate:,.0f} | {ratio:.2f}x | {fn} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
