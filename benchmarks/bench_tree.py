"""Process trees: what following forks costs the program, attaching a tree, collecting it.

1. Fork latency (``c/forker.c``: fork a child that exits at once, wait for it; median of N)
   untracked, launched with ``follow_forks=True`` (UFFD_FEATURE_EVENT_FORK: the forking
   thread waits until the event is read and the child identified) and with
   ``follow_forks=False`` (the event is still read, the child let go). A sampler collects
   every 100 ms meanwhile, as the monitor would. Runs alternate.
2. ``attach(pid, tree=True)`` of a 10-process tree (``tests/targets/tree.c``, a parent and
   nine children sharing a MAP_SHARED mapping) against ``attach`` of its root alone.
3. ``collect()`` of that tree against a collect of the root alone, each member writing 1 % of
   its pages (shared and private) between collects.

Run: ``.venv/bin/python benchmarks/bench_tree.py [--quick] [--markdown PATH]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from bench_collect import alternate, ratio, spread
from bench_core import machine, table

import writewatch

HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"
ROOT = HERE.parent


def build(name: str, source: Path) -> Path:
    BUILD.mkdir(exist_ok=True)
    out = BUILD / name
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), str(source)], check=True)
    return out


def fork_latency(binary: Path, n: int, rounds: int) -> list[list[str]]:
    def run(mode: str) -> float:
        argv = [str(binary), str(n)]
        if mode == "untracked":
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            out, _ = p.communicate("go\n")
            return float(out.split()[0])
        t = writewatch.launch(argv, follow_forks=mode == "follow", stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.1):
                try:
                    t.collect()
                except writewatch.WriteWatchError:
                    return

        th = threading.Thread(target=sample)
        th.start()
        t.process.stdin.write("go\n")
        t.process.stdin.flush()
        out = t.process.stdout.readline()
        t.process.wait()
        t.process.close_streams()
        stop.set()
        th.join()
        t.close()
        return float(out.split()[0])

    base, follow, nofollow = [], [], []
    for k in range(rounds):
        order = [("untracked", base), ("follow", follow), ("nofollow", nofollow)]
        for mode, out in order[k % 3:] + order[:k % 3]:
            out.append(run(mode))
    return [["fork + exit + wait, launched with follow_forks=True vs untracked",
             f"{np.median(follow):.0f} µs", f"{np.median(base):.0f} µs",
             spread(ratio(follow, base)), ""],
            ["the same with follow_forks=False vs untracked", f"{np.median(nofollow):.0f} µs",
             f"{np.median(base):.0f} µs", spread(ratio(nofollow, base)), ""]]


class Tree:
    """tests/targets/tree.c with nine children."""

    def __init__(self, binary: Path, npages: int) -> None:
        self.p = subprocess.Popen([str(binary), "tree", str(npages)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        self.npages = npages
        self.cmd_line()
        self.kids = [int(self.cmd("F").split()[1]) for _ in range(9)]

    def cmd_line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def cmd(self, text: str) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self.cmd_line()

    def write(self) -> None:
        idx = " ".join(str(i) for i in range(0, self.npages, 100))
        for who in [None, *self.kids]:
            for op in ("w", "p"):
                self.cmd(f"{op} {idx}" if who is None else f"c {who} {op} {idx}")

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("q\n")
        self.p.stdin.flush()
        self.p.wait()


def tree_costs(binary: Path, rounds: int) -> list[list[str]]:
    tree = Tree(binary, 4096)
    try:
        made: list[writewatch.ProcessTracker] = []

        def drop() -> None:
            while made:
                made.pop().close()

        ta, tb = alternate(lambda: made.append(writewatch.attach(tree.p.pid, tree=True)),
                           lambda: made.append(writewatch.attach(tree.p.pid)),
                           max(rounds // 3, 3), prepare=drop)
        drop()
        whole = writewatch.attach(tree.p.pid, tree=True)
        whole.collect()
        ca, cb = [], []
        for _ in range(rounds):
            tree.write()
            a = time.perf_counter()
            whole.collect()
            ca.append(time.perf_counter() - a)
        n = len(whole.processes)
        whole.close()
        single = writewatch.attach(tree.p.pid)
        single.collect()
        for _ in range(rounds):
            tree.write()
            a = time.perf_counter()
            single.collect()
            cb.append(time.perf_counter() - a)
        single.close()
    finally:
        tree.close()
    return [[f"attach(pid, tree=True) of a {n}-process tree vs attach of its root",
             f"{np.median(ta) * 1e3:.1f} ms", f"{np.median(tb) * 1e3:.1f} ms",
             spread(ratio(ta, tb)), ""],
            [f"collect() of the {n}-process tree vs of its root alone (1 % written each)",
             f"{np.median(ca) * 1e3:.2f} ms", f"{np.median(cb) * 1e3:.2f} ms",
             spread(ratio(sorted(ca), sorted(cb))), ""]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    rounds = 5 if args.quick else 15
    forker = build("forker", HERE / "c" / "forker.c")
    tree = build("tree", ROOT / "tests" / "targets" / "tree.c")
    rows = fork_latency(forker, 200, rounds) + tree_costs(tree, rounds * 2)
    m = machine()
    text = "\n".join(["# Process trees (benchmarks/bench_tree.py)", "",
                      *(f"- {k}: {v}" for k, v in m.items()),
                      f"- command: bench_tree.py {' '.join(argv or sys.argv[1:])}", "",
                      table(["what", "writewatch", "baseline", "ratio (median, spread)", ""],
                            rows), ""])
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
