"""Snapshots: save and restore speed, deduplication, and the pause of a process snapshot.

    .venv/bin/python benchmarks/bench_snapshot.py [--gib 1] [--rounds 7] [--dir /var/tmp]
        [--only speed,dedup,pause,postgres] [--write] [--plot docs/img/snapshot-pause.png]

Every figure is a ratio against a baseline run side by side in this process, rounds
alternating (both see the same load), given as the median with the min-max range:

* **speed** (the README's object, ``writewatch.zeros(--gib GiB)`` filled at random):
  an incremental save of 1 % of the pages (collect, read, digest each page, pack, write,
  fsync, publish) against writing those pages to one file with fsync; and a restore of the
  base + 5 deltas (page cache warm) into a preallocated buffer against reading a file of the
  same size from the page cache into the same buffer. Also the fsyncs and renames one
  incremental save makes.
* **dedup**: two full bases of an unchanged 256 MiB buffer: the store's bytes against one.
* **pause**: a C process (tests/snapshot/targets/spinner.c) that keeps writing, snapshotted
  stop-and-copy and with pre-copy (``max_pause=20 ms``) alternately by one Snapshotter:
  full and delta (1 s apart) pauses, for 128 MiB-1 GiB at 16 MB/s and for 1 GiB at dirty
  rates of 2.5-800 MB/s. ``--plot`` draws both.
* **postgres** (root, PostgreSQL installed): the tree of a cluster (shared_buffers 256 MB)
  under ``pgbench -c 4``, snapshotted every 3 s alternately stop-and-copy and pre-copy:
  pauses, and pgbench's TPS in the seconds a snapshot overlapped against the others.

``--write`` appends the tables with machine, date and load to benchmarks/results-snapshot.md.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import platform
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import writewatch
from writewatch.snapshot import DirStore, Snapshots, Snapshotter
from writewatch.snapshot.precopy import Budget

PAGE = os.sysconf("SC_PAGE_SIZE")
HERE = Path(__file__).resolve().parent
BUILD = HERE / "_build"
SPINNER_C = HERE.parent / "tests" / "snapshot" / "targets" / "spinner.c"
MS = 1e3


def fill(arr: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    step = 64 << 20
    for i in range(0, arr.size, step):
        arr[i:i + step] = rng.integers(1, 2**63, (min(step, arr.size - i)) // 8,
                                       dtype=np.uint64).view(np.uint8)


def dirty(arr: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    npages = arr.size // PAGE
    pages = rng.choice(npages, max(1, int(npages * frac)), replace=False)
    pages.sort()
    arr[pages * PAGE + rng.integers(0, PAGE, len(pages))] += 1
    return pages


def spread(xs: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """median (min-max)"""
    return (f"{statistics.median(xs) * scale:{fmt}} ({min(xs) * scale:{fmt}}-"
            f"{max(xs) * scale:{fmt}})")


@contextlib.contextmanager
def counting(*names: str) -> Iterator[dict[str, int]]:
    """Count calls of os functions (fsync, rename...) made meanwhile, from any thread."""
    counts = dict.fromkeys(names, 0)
    real = {n: getattr(os, n) for n in names}
    lock = threading.Lock()

    def wrap(n: str) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            with lock:
                counts[n] += 1
            return real[n](*a, **kw)
        return call

    for n in names:
        setattr(os, n, wrap(n))
    try:
        yield counts
    finally:
        for n in names:
            setattr(os, n, real[n])


# -- speed ---------------------------------------------------------------------------------------
def bench_speed(args: argparse.Namespace, root: str) -> list[str]:
    nbytes = int(args.gib * (1 << 30))
    arr = writewatch.zeros(nbytes)
    fill(arr, 1)
    rows = arr.reshape(-1, PAGE)
    rng = np.random.default_rng(2)
    gather = np.empty(int(len(rows) * 0.01 + 1) * PAGE, np.uint8)
    save_t, base_t, new_t, ratios, new_ratios = [], [], [], [], []
    store_dir = os.path.join(root, "speed")
    with Snapshotter(arr, DirStore(store_dir)) as s:
        t = time.perf_counter()
        s.save()
        first = time.perf_counter() - t
        for i in range(args.rounds + 1):
            pages = dirty(arr, 0.01, rng)
            # the same pages to one file: rewritten each round, and a new one each round
            # (what a checkpoint writes: the previous one stays); the order alternates
            if i % 2:
                b = _write_pages(rows, pages, gather, os.path.join(root, "dirty.bin"))
                c = _write_pages(rows, pages, gather, os.path.join(root, f"dirty{i}.bin"))
            t = time.perf_counter()
            with counting("fsync", "rename") as calls:
                s.save()
            a = time.perf_counter() - t
            if not i % 2:
                b = _write_pages(rows, pages, gather, os.path.join(root, "dirty.bin"))
                c = _write_pages(rows, pages, gather, os.path.join(root, f"dirty{i}.bin"))
            if i:  # the first round warms the buffer pool
                save_t.append(a)
                base_t.append(b)
                new_t.append(c)
                ratios.append(a / b)
                new_ratios.append(a / c)
        chain = len(s.list())
        dest = np.empty(nbytes, np.uint8)
        s.restore("latest", into=dest)
        assert np.array_equal(dest, arr), "restore differs from memory"
    r_t, f_t, r_ratio = bench_restore(args, root, store_dir, dest, nbytes)
    return [
        f"### Save and restore: `writewatch.zeros({args.gib:g} GiB)`, random content, "
        f"{args.rounds} rounds alternating",
        "",
        "| measure | time, median (min-max) | ratio, median (min-max) | goal |",
        "|---|---|---|---|",
        f"| incremental save of 1 % ({len(pages)} pages) vs the pages to one file + fsync, "
        f"the file rewritten each round | {spread(save_t, MS, '.1f')} ms vs "
        f"{spread(base_t, MS, '.1f')} ms | {spread(ratios)}x | <= 2x |",
        f"| the same vs the pages to a new file + fsync each round | "
        f"{spread(save_t, MS, '.1f')} ms vs {spread(new_t, MS, '.1f')} ms | "
        f"{spread(new_ratios)}x | |",
        f"| restore of base + {chain - 1} deltas vs reading a cached file of the same "
        f"size, into the same buffer | {spread(r_t, MS, '.0f')} ms vs "
        f"{spread(f_t, MS, '.0f')} ms | {spread(r_ratio)}x the read's speed | >= 0.6x |",
        f"| first (full) save | {first * MS:.0f} ms ({nbytes / first / 1e9:.2f} GB/s, one "
        f"sample) | | |",
        "",
        f"One incremental save made {calls['fsync']} fsyncs and {calls['rename']} rename(s).",
    ]


def _write_pages(rows: np.ndarray, pages: np.ndarray, gather: np.ndarray, path: str) -> float:
    """Seconds to gather ``pages`` and write them to ``path`` with fsync."""
    n = len(pages)
    t = time.perf_counter()
    np.take(rows, pages, axis=0, out=gather[:n * PAGE].reshape(n, PAGE), mode="clip")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, memoryview(gather[:n * PAGE]))
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t


def bench_restore(args: argparse.Namespace, root: str, store_dir: str, dest: np.ndarray,
                  nbytes: int) -> tuple[list[float], list[float], list[float]]:
    path = os.path.join(root, "cached.bin")
    with open(path, "wb") as f:
        f.write(memoryview(dest))
    reader = Snapshots(store_dir)
    mv = memoryview(dest)

    def read_file() -> None:
        fd = os.open(path, os.O_RDONLY)
        got = 0
        while got < nbytes:
            got += os.readv(fd, [mv[got:]])
        os.close(fd)

    read_file()  # both warm
    r_t, f_t, ratio = [], [], []
    for i in range(args.rounds):
        order = [("r", lambda: reader.restore("latest", into=dest)), ("f", read_file)]
        got = {}
        for name, fn in order if i % 2 else order[::-1]:
            t = time.perf_counter()
            fn()
            got[name] = time.perf_counter() - t
        r_t.append(got["r"])
        f_t.append(got["f"])
        ratio.append(got["f"] / got["r"])
    os.unlink(path)
    return r_t, f_t, ratio


# -- dedup ---------------------------------------------------------------------------------------
def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def bench_dedup(args: argparse.Namespace, root: str) -> list[str]:
    arr = writewatch.zeros(256 << 20)
    fill(arr, 3)
    d = os.path.join(root, "dedup")
    with Snapshotter(arr, DirStore(d)) as s:
        t = time.perf_counter()
        a = s.save()
        t1 = time.perf_counter() - t
        one = _du(d)
        t = time.perf_counter()
        b = s.save(full=True)
        t2 = time.perf_counter() - t
        two = _du(d)
    shutil.rmtree(d)
    return [
        "### Deduplication: two full bases of an unchanged 256 MiB buffer",
        "",
        "| | store bytes | ratio | goal |",
        "|---|---|---|---|",
        f"| one base | {one / 2**20:.1f} MiB (stored {a.stored_bytes / 2**20:.1f} MiB) | 1 | |",
        f"| two bases | {two / 2**20:.1f} MiB (the second stored {b.stored_bytes} bytes, "
        f"deduplicated {b.dedup_bytes / 2**20:.1f} MiB) | {two / one:.4f}x | <= 1.05x |",
        "",
        f"The second base took {t2 * MS:.0f} ms against {t1 * MS:.0f} ms for the first "
        f"(it reads and digests every page, and writes only its manifest).",
    ]


# -- pause ---------------------------------------------------------------------------------------
def build_spinner() -> str:
    BUILD.mkdir(exist_ok=True)
    out = BUILD / "spinner"
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("the pause benchmark needs a C compiler (cc)")
    subprocess.run([cc, "-O1", "-Wall", "-o", str(out), str(SPINNER_C)], check=True)
    return str(out)


def _pauses(spinner: str, root: str, npages: int, delay_us: int, reps: int,
            max_pause: float) -> dict[str, Any]:
    """Full and delta pauses, stop-and-copy ("sc") and pre-copy ("pc"), alternating."""
    p = subprocess.Popen([spinner, str(npages), "0", str(delay_us)], stdout=subprocess.PIPE,
                         text=True)
    out: dict[str, Any] = {k: [] for k in ("sc full", "pc full", "sc delta", "pc delta",
                                           "rate", "rounds", "converged")}
    try:
        assert p.stdout is not None and p.stdout.readline().startswith("ready")
        d = os.path.join(root, f"pause-{npages}-{delay_us}")
        with Snapshotter(writewatch.attach(p.pid), DirStore(d, fsync=False)) as s:
            budget = Budget(max_pause)
            for rep in range(reps):
                for mode in ("sc", "pc") if rep % 2 == 0 else ("pc", "sc"):
                    s.budget = budget if mode == "pc" else None
                    full = s.save(full=True)
                    time.sleep(1.0)
                    t = time.perf_counter()
                    delta = s.save()
                    out[f"{mode} full"].append(full.pause)
                    out[f"{mode} delta"].append(delta.pause)
                    if mode == "sc":
                        out["rate"].append(delta.pages * PAGE / (1.0 + time.perf_counter() - t))
                    else:
                        out["rounds"].append(delta.rounds)
                        out["converged"].append(bool(delta.converged))
                    time.sleep(0.2)
        shutil.rmtree(d)
    finally:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    return out


def bench_pause(args: argparse.Namespace, root: str) -> tuple[list[str], dict[str, Any]]:
    spinner = build_spinner()
    reps = max(3, args.rounds // 2)
    sizes = [32, 64] if args.quick else [128, 256, 512, 1024]
    delays = [16_000, 1_000] if args.quick else [100_000, 16_000, 4_000, 1_000, 250]
    big = sizes[-1] << 20 >> 12  # pages of the dirty-rate sweep's target
    by_size = {mib: _pauses(spinner, root, mib << 20 >> 12, 16_000, reps, args.max_pause)
               for mib in sizes}
    by_rate = {dl: _pauses(spinner, root, big, dl, reps, args.max_pause) for dl in delays}
    med = statistics.median

    def row(label: str, r: dict[str, Any]) -> str:
        conv = sum(r["converged"])
        return (f"| {label} | {med(r['rate']) / 1e6:.1f} MB/s | {spread(r['sc full'], MS, '.0f')}"
                f" | {spread(r['pc full'], MS, '.1f')} | {spread(r['sc delta'], MS, '.1f')} | "
                f"{spread(r['pc delta'], MS, '.1f')} | {med(r['rounds']):.0f}, "
                f"{conv}/{len(r['converged'])} |")

    lines = [
        f"### Pause of a process that keeps writing: stop-and-copy vs pre-copy "
        f"(max_pause {args.max_pause * MS:.0f} ms), {reps} rounds each, alternating",
        "",
        "ms, median (min-max). Dirty rate: distinct pages written per second, measured from "
        "the stop-and-copy deltas (1 s apart).",
        "",
        "| target | dirty rate | full, stop-and-copy | full, pre-copy | delta, stop-and-copy "
        "| delta, pre-copy | pre-copy rounds (median), deltas converged |",
        "|---|---|---|---|---|---|---|",
        *[row(f"{mib} MiB", by_size[mib]) for mib in sizes],
        *[row(f"{sizes[-1]} MiB, 64 pages per {dl} us", by_rate[dl]) for dl in delays],
    ]
    return lines, {"sizes": sizes, "by_size": by_size, "by_rate": by_rate, "delays": delays}


def plot(data: dict[str, Any], path: str, max_pause: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    med = statistics.median
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = data["sizes"]
    for key, style, label in (("sc full", "o-", "stop-and-copy, full"),
                              ("pc full", "o--", "pre-copy, full"),
                              ("sc delta", "s-", "stop-and-copy, delta (1 s)"),
                              ("pc delta", "s--", "pre-copy, delta (1 s)")):
        a.plot(sizes, [med(data["by_size"][m][key]) * MS for m in sizes], style, label=label)
        rates = [med(data["by_rate"][dl]["rate"]) / 1e6 for dl in data["delays"]]
        b.plot(rates, [med(data["by_rate"][dl][key]) * MS for dl in data["delays"]], style,
               label=label)
    for ax in (a, b):
        ax.axhline(max_pause * MS, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylabel("pause (ms)")
        ax.grid(True, which="both", alpha=0.3)
    a.set_xlabel("memory size (MiB), the writer at 64 pages per 16 ms")
    a.set_xscale("log", base=2)
    b.set_xlabel(f"dirty rate (MB/s of distinct pages), {sizes[-1]} MiB")
    b.set_xscale("log")
    a.set_title("pause vs size")
    b.set_title("pause vs dirty rate")
    a.legend(fontsize=8)
    fig.suptitle(f"writewatch snapshot of a C process: stop-and-copy vs pre-copy "
                 f"(max_pause {max_pause * MS:.0f} ms, dotted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- postgres ------------------------------------------------------------------------------------
class Cluster:
    """A throw-away PostgreSQL cluster run as the postgres user on a unix socket (as in
    tests/process/test_postgres.py)."""

    def __init__(self, shared_buffers: str = "256MB", scale: int = 10) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found or os.geteuid() != 0 or shutil.which("runuser") is None:
            raise SystemExit("the postgres benchmark needs root, runuser and PostgreSQL")
        pwd.getpwnam("postgres")
        self.bin = os.path.dirname(found[-1])
        self.root = tempfile.mkdtemp(prefix="ww-bench-pg-")
        os.chmod(self.root, 0o755)
        self.data, self.sock = os.path.join(self.root, "data"), os.path.join(self.root, "sock")
        os.mkdir(self.sock)
        for d in (self.root, self.sock):
            shutil.chown(d, "postgres", "postgres")
        self.tool("initdb", "-D", self.data, "--auth=trust", "-U", "postgres", "--no-sync")
        opts = (f"-c listen_addresses='' -c unix_socket_directories={self.sock} "
                f"-c shared_buffers={shared_buffers} -c max_connections=20 -c fsync=off")
        self.tool("pg_ctl", "-D", self.data, "-o", opts, "-w", "-l",
                  os.path.join(self.root, "log"), "start")
        self.tool("pgbench", "-h", self.sock, "-i", "-s", str(scale), "-q", "postgres")

    def tool(self, name: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, name), *args],
                       check=True, capture_output=True, cwd=self.root)

    def pgbench(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["runuser", "-u", "postgres", "--",
                                 os.path.join(self.bin, "pgbench"), "-h", self.sock, *args,
                                 "postgres"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=self.root)

    @property
    def postmaster(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def close(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, "pg_ctl"),
                        "-D", self.data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def bench_postgres(args: argparse.Namespace, root: str) -> list[str]:
    c = Cluster()
    try:
        saves, tps = _pg_run(args, c, root)
    finally:
        c.close()
    return _pg_table(args, saves, tps)


def _pg_run(args: argparse.Namespace, c: Cluster, root: str
            ) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    seconds = 48
    t = writewatch.attach(c.postmaster, tree=True, follow_forks=True)
    wall0 = time.time()
    bench = c.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-P", "1")
    t0 = time.monotonic()
    saves: list[dict[str, Any]] = []
    try:
        with Snapshotter(t, DirStore(os.path.join(root, "pg"), fsync=False)) as s:
            budget = Budget(args.max_pause)
            plan = [(5, "sc", True), (10, "pc", True)] + \
                [(13 + 3 * i, "sc" if i % 2 else "pc", False) for i in range(10)]
            for at, mode, full in plan:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                s.budget = budget if mode == "pc" else None
                a = time.monotonic() - t0
                info = s.save(full=full)
                st = s.snapshots.manifest(info.name).stats
                stop = st["paused_at"] - wall0
                saves.append({"mode": mode, "full": full, "start": a,
                              "end": time.monotonic() - t0, "pause": info.pause,
                              "stop": (stop, stop + info.pause), "collect": st["pause_collect"],
                              "read": st["pause_read"], "rounds": info.rounds,
                              "converged": info.converged, "processes": len(t.processes)})
    finally:
        _, err = bench.communicate(timeout=seconds + 60)
        t.close()
    # "progress: 12.0 s, 650.1 tps, lat 6.1 ms stddev 2.0, 0 failed"
    tps = [(float(m[1]), float(m[2])) for m in
           re.finditer(r"progress: ([\d.]+) s, ([\d.]+) tps", err)]
    return saves, tps


def _pg_table(args: argparse.Namespace, saves: list[dict[str, Any]],
              tps: list[tuple[float, float]]) -> list[str]:
    def overlapping(lo: float, hi: float) -> list[float]:
        # pgbench's interval ending at t covers (t - 1, t]
        return [v for t, v in tps if t > lo and t - 1 < hi]

    busy = {t for s in saves for t, _ in tps if t > s["start"] and t - 1 < s["end"]}
    quiet = [v for t, v in tps if t not in busy and t > 2]
    med = statistics.median

    def m(xs: list[float]) -> str:
        return f"{med(xs):.0f}" if xs else "-"

    lines = [
        f"### PostgreSQL 15 under pgbench -c 4 (shared_buffers 256 MB, scale 10): the whole "
        f"tree ({saves[-1]['processes']} processes) every 3 s, stop-and-copy and pre-copy "
        f"(max_pause {args.max_pause * MS:.0f} ms) alternating",
        "",
        f"TPS in the seconds no snapshot overlapped: {m(quiet)} "
        f"({min(quiet, default=0):.0f}-{max(quiet, default=0):.0f}, {len(quiet)} s).",
        "",
        "| snapshot | pause, ms | of it: collect / read, ms (medians) | TPS in the seconds of "
        "the stop | TPS during the whole save | pre-copy rounds, converged |",
        "|---|---|---|---|---|---|",
    ]
    for full in (True, False):
        for mode in ("sc", "pc"):
            ss = [s for s in saves if s["mode"] == mode and s["full"] == full]
            if not ss:
                continue
            label = ("full" if full else "delta") + \
                (", stop-and-copy" if mode == "sc" else ", pre-copy")
            pre = "" if mode == "sc" else \
                f"{med([s['rounds'] for s in ss]):.0f}, " \
                f"{sum(bool(s['converged']) for s in ss)}/{len(ss)}"
            lines.append(
                f"| {label} ({len(ss)}) | {spread([s['pause'] for s in ss], MS, '.0f')} | "
                f"{med([s['collect'] for s in ss]) * MS:.0f} / "
                f"{med([s['read'] for s in ss]) * MS:.0f} | "
                f"{m([v for s in ss for v in overlapping(*s['stop'])])} | "
                f"{m([v for s in ss for v in overlapping(s['start'], s['end'])])} | {pre} |")
    return lines


# -- main ----------------------------------------------------------------------------------------
def header() -> str:
    load = os.getloadavg()
    return (f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {platform.node()}, "
            f"Linux {platform.release()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; load average {load[0]:.1f} (1 min), "
            f"{load[2]:.1f} (15 min) at the end\n\nCommand: `.venv/bin/python "
            f"benchmarks/bench_snapshot.py {' '.join(sys.argv[1:])}`\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-pause", type=float, default=0.02)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--only", default="speed,dedup,pause,postgres")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--plot", default=None, metavar="PNG")
    ap.add_argument("--quick", action="store_true", help="small pause sweeps (a smoke test)")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    root = tempfile.mkdtemp(prefix="ww-bench-snap-", dir=args.dir)
    out: list[str] = []
    try:
        if "speed" in parts:
            out += [*bench_speed(args, root), ""]
        if "dedup" in parts:
            out += [*bench_dedup(args, root), ""]
        if "pause" in parts:
            lines, data = bench_pause(args, root)
            out += [*lines, ""]
            if args.plot:
                plot(data, args.plot, args.max_pause)
        if "postgres" in parts:
            out += [*bench_postgres(args, root), ""]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = header() + "\n" + "\n".join(out)
    print(text)
    if args.write:
        with open(HERE / "results-snapshot.md", "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
