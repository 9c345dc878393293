"""Incremental snapshots: what an incremental save costs against the alternatives.

    .venv/bin/python benchmarks/bench_snapshot.py [--gib 1] [--dirty 0.01] [--runs 5]
                                                  [--dir /var/tmp] [--write]

Measured side by side in one run, medians of ``--runs`` rounds (each round writes one byte in
``--dirty`` of the pages, chosen at random):

* incremental save (collect + read dirty pages + hash + write chunks + fsync + manifest)
  against a full save of the same buffer to the same store (a new chain: every chunk new);
* against just copying the dirty bytes (gather into a buffer), and writing them to a file
  with fsync;
* against what a user would do without write tracking: hash every page and compare;
* per-page chunks (``chunk_size=page``: one blob per page) against the default packing;
* restore speed (base + deltas, page cache warm) into a preallocated buffer;
* pause of a process with ``--gib`` resident and ``--dirty`` written between snapshots
  (``writewatch.process.attach``; SIGSTOP .. SIGCONT around collect + read).

``--write`` appends the table to benchmarks/results-snapshot.md with machine and date.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from writewatch.kernel import _sys
from writewatch.snapshot import DirStore, Snapshotter

PAGE = os.sysconf("SC_PAGE_SIZE")
RW = mmap.PROT_READ | mmap.PROT_WRITE


def region(nbytes: int) -> tuple[int, np.ndarray]:
    addr = _sys.mmap(0, nbytes, RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arr = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(addr))
    return addr, arr


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


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_buffer(args: argparse.Namespace, root: str) -> dict[str, float]:
    nbytes = int(args.gib * (1 << 30))
    addr, arr = region(nbytes)
    fill(arr, 1)
    rng = np.random.default_rng(2)
    out: dict[str, list[float]] = {k: [] for k in (
        "incremental", "incremental_perpage", "full", "copy", "copy_fsync", "hash_all",
        "restore")}
    store_dir = os.path.join(root, "store")
    npages = nbytes // PAGE
    gather = np.empty(int(npages * args.dirty) * PAGE + PAGE, np.uint8)
    rows = arr.reshape(-1, PAGE)
    import xxhash
    prev_hash = np.array([xxhash.xxh3_64_intdigest(rows[i]) for i in range(npages)], np.uint64)

    # incremental saves (default chunking) and the baselines on the same dirty sets
    with Snapshotter((addr, nbytes), DirStore(store_dir)) as s:
        t = time.perf_counter()
        s.save()
        first_full = time.perf_counter() - t
        for _ in range(args.runs):
            pages = dirty(arr, args.dirty, rng)
            t = time.perf_counter()
            s.save()
            out["incremental"].append(time.perf_counter() - t)
            # just copy the dirty bytes (the tracker told us which)
            n = len(pages)
            t = time.perf_counter()
            np.take(rows, pages, axis=0, out=gather[:n * PAGE].reshape(n, PAGE))
            out["copy"].append(time.perf_counter() - t)
            t = time.perf_counter()
            np.take(rows, pages, axis=0, out=gather[:n * PAGE].reshape(n, PAGE))
            fd = os.open(os.path.join(root, "dirty.bin"), os.O_WRONLY | os.O_CREAT |
                         os.O_TRUNC, 0o600)
            os.write(fd, memoryview(gather[:n * PAGE]))
            os.fsync(fd)
            os.close(fd)
            out["copy_fsync"].append(time.perf_counter() - t)
            # without a tracker: hash every page, compare with the last hashes
            t = time.perf_counter()
            h = xxhash.xxh3_64_intdigest
            now = np.fromiter((h(rows[i]) for i in range(npages)), np.uint64, npages)
            changed = np.flatnonzero(now != prev_hash)
            out["hash_all"].append(time.perf_counter() - t)
            assert np.array_equal(changed, pages), "hash baseline disagrees with the writes"
            prev_hash = now
        target = arr.copy()
        dest = np.empty(nbytes, np.uint8)
        s.restore("latest", into=dest)  # warm the page cache
        for _ in range(args.runs):
            t = time.perf_counter()
            s.restore("latest", into=dest)
            out["restore"].append(time.perf_counter() - t)
        assert np.array_equal(dest, target), "restore differs from memory"
        del target
        chain = len(s.list())

    # the same without fsync (safe against a crash of this process, not of the machine)
    nf_dir = os.path.join(root, "nofsync")
    nofs = []
    with Snapshotter((addr, nbytes), DirStore(nf_dir, fsync=False)) as s:
        s.save()
        for _ in range(args.runs):
            dirty(arr, args.dirty, rng)
            t = time.perf_counter()
            s.save()
            nofs.append(time.perf_counter() - t)
    nofsync = med(nofs)
    shutil.rmtree(nf_dir)

    # per-page chunks: one blob per page
    pp_dir = os.path.join(root, "perpage")
    with Snapshotter((addr, nbytes), DirStore(pp_dir)) as s:
        s.save()  # the base packed (a per-page base of 1 GiB would be 262144 files)
        s.chunk_pages = 1  # then one blob per written page
        for _ in range(args.runs):
            dirty(arr, args.dirty, rng)
            t = time.perf_counter()
            s.save()
            out["incremental_perpage"].append(time.perf_counter() - t)
    shutil.rmtree(pp_dir)

    # full saves of the same buffer to the same store: a new chain each time
    for _ in range(args.runs):
        dirty(arr, args.dirty, rng)
        with Snapshotter((addr, nbytes), DirStore(store_dir)) as s:
            t = time.perf_counter()
            s.save()
            out["full"].append(time.perf_counter() - t)
            s.prune(1)
    _sys.munmap(addr, nbytes)
    res = {k: med(v) for k, v in out.items() if v}
    res["first_full"] = first_full
    res["chain"] = chain
    res["dirty_bytes"] = int(npages * args.dirty) * PAGE
    res["incremental_nofsync"] = nofsync
    res["nbytes"] = nbytes
    return res


CHILD = r"""
import sys, numpy as np
n = int(sys.argv[1]); frac = float(sys.argv[2])
a = np.ones(n, np.uint8)                       # resident: every page touched
rng = np.random.default_rng(3)
print("ready", flush=True)
for line in sys.stdin:
    pages = rng.choice(n // 4096, max(1, int(n // 4096 * frac)), replace=False)
    a[pages * 4096] += 1
    print("done", flush=True)
"""


def bench_process(args: argparse.Namespace, root: str) -> dict[str, float]:
    nbytes = int(args.gib * (1 << 30))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(nbytes), str(args.dirty)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout and p.stdin and p.stdout.readline().strip() == "ready"
        pauses, saves, pages, collects, reads = [], [], [], [], []
        with Snapshotter(p.pid, DirStore(os.path.join(root, "proc"))) as s:
            tracker = s.source.describe().get("tracker")
            stop_how = ""
            s.save()
            for _ in range(args.runs):
                p.stdin.write("go\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "done"
                t = time.perf_counter()
                info = s.save()
                saves.append(time.perf_counter() - t)
                pauses.append(info.pause or 0.0)
                st = s.snapshots.manifest(info.name).stats
                stop_how = st.get("stopped_by", "")
                collects.append(st.get("pause_collect", 0.0))
                reads.append(st.get("pause_read", 0.0))
                pages.append(info.pages)
    finally:
        p.kill()
        p.wait()
    return {"pause": med(pauses), "pause_max": max(pauses), "proc_save": med(saves),
            "proc_pages": med(pages), "tracker": tracker or "none (content hash)",
            "stop": stop_how, "pause_collect": med(collects), "pause_read": med(reads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dirty", type=float, default=0.01)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ww-bench-snap-", dir=args.dir)
    try:
        b = bench_buffer(args, root)
        pr = bench_process(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    gb = b["nbytes"] / 1e9
    ms = 1e3
    lines = [
        f"buffer {b['nbytes'] >> 20} MiB, {args.dirty:.1%} of pages written between saves "
        f"({b['dirty_bytes'] >> 10} KiB), medians of {args.runs}; store on "
        f"{args.dir} (fsync on)",
        "",
        "| measure | time | ratio |",
        "|---|---|---|",
        f"| incremental save | {b['incremental'] * ms:.1f} ms | 1 |",
        f"| full save (new chain, same store) | {b['full'] * ms:.0f} ms | "
        f"{b['full'] / b['incremental']:.0f}x slower (target >= 50x) |",
        f"| copy the dirty bytes (gather) | {b['copy'] * ms:.2f} ms | incremental is "
        f"{b['incremental'] / b['copy']:.1f}x of it (target <= 2x) |",
        f"| incremental save without fsync | {b['incremental_nofsync'] * ms:.1f} ms | "
        f"{b['incremental_nofsync'] / b['copy']:.1f}x of the gather |",
        f"| copy the dirty bytes to a file + fsync | {b['copy_fsync'] * ms:.1f} ms | "
        f"incremental is {b['incremental'] / b['copy_fsync']:.2f}x of it |",
        f"| hash every page to find changes (xxh3_64, no save) | "
        f"{b['hash_all'] * ms:.0f} ms | {b['hash_all'] / b['incremental']:.0f}x slower |",
        f"| incremental save, one chunk per page | {b['incremental_perpage'] * ms:.1f} ms | "
        f"{b['incremental_perpage'] / b['incremental']:.1f}x of packed chunks |",
        f"| restore (base + {b['chain'] - 1} deltas, page cache) | {b['restore'] * ms:.0f} ms"
        f" | {gb / b['restore']:.2f} GB/s (target >= 1) |",
        f"| process {b['nbytes'] >> 20} MiB resident, {args.dirty:.1%} dirty: pause | "
        f"{pr['pause'] * ms:.1f} ms (max {pr['pause_max'] * ms:.1f}; of it the tracker's "
        f"collect {pr['pause_collect'] * ms:.1f} ms, reading the pages "
        f"{pr['pause_read'] * ms:.1f} ms) | target < 50 ms; "
        f"tracker {pr['tracker']}, stop by {pr['stop']}, {pr['proc_pages']:.0f} pages/save, save "
        f"{pr['proc_save'] * ms:.0f} ms |",
    ]
    load = os.getloadavg()
    lines.append("")
    lines.append(f"load average during the run: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min) "
                 f"on {os.cpu_count()} CPUs")
    text = "\n".join(lines)
    print(text)
    if args.write:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results-snapshot.md")
        new = not os.path.exists(path)
        with open(path, "a") as f:
            if new:
                f.write("# Snapshot benchmark results\n\nCommand: `.venv/bin/python "
                        "benchmarks/bench_snapshot.py --write`\n")
            f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — "
                    f"{platform.node()}, Linux {platform.release()}, "
                    f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n\n"
                    f"Command: `{' '.join(['bench_snapshot.py', *sys.argv[1:]])}`\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
