"""Monitor benchmark: how much does sampling a write-heavy program every second slow it?

The target is a small C program (embedded below, built with ``cc`` into a temporary
directory) that maps a buffer of SIZE MiB and sweeps it PASSES times, writing one 8-byte word
in every 64-byte cache line: memory-bandwidth bound, and every page of the buffer is written
in every pass, so after each re-arm the next write to each page takes a write-protect fault.
It reports the time its sweeps took, CPU (``CLOCK_PROCESS_CPUTIME_ID``: the program's own work
plus the kernel's write-fault handling, insensitive to other load on the machine) and wall
(``CLOCK_MONOTONIC``), excluding start-up and the launch/arming.

Each round runs, at the same time (so that whatever else loads the machine weighs on both;
``--sequential`` alternates them instead):

* ``plain``: the target run directly;
* ``monitored``: ``writewatch run --interval 1 --quiet -- target`` (launch under uffd-wp async
  tracking, one collect per second, the time series kept in memory).

The figure is the median over rounds of the monitored / plain ratio of the sweeps' CPU time
(target: < 5 % slowdown at 1 s); the wall-time ratio is shown too (it also includes the
monitor competing for CPUs).
``--interval`` changes the sampling period (e.g. 0.1 to see the cost grow with the collect
rate). ``--markdown PATH`` also writes the table with the machine, date and command.

``--own-cost`` measures the monitor's own cost instead (one sampler per tree):
``writewatch attach ROOT --tree --interval 100ms`` on a tree of 10 processes
(tests/exporter/targets/pacer.c, each writing 200 pages per second), its CPU (the monitor
process's user + system time from ``wait4``) as a share of one core, and its start-up CPU:
the same command with ``--duration 10ms`` (interpreter start, imports, attaching the 10
processes, one sample, the summary, exit). ``--own-markdown PATH`` writes that table.

Run: ``.venv/bin/python benchmarks/bench_monitor.py [--rounds 5]
[--markdown benchmarks/results-monitor.md]`` or ``... --own-cost [--own-markdown
benchmarks/results-monitor-own.md]``
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    size_t mib = strtoul(argv[1], NULL, 0), passes = strtoul(argv[2], NULL, 0);
    size_t len = mib << 20;
    volatile uint64_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < len / 8; i += 512) buf[i] = 1;   /* populate */
    double t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    for (size_t p = 0; p < passes; p++)
        for (size_t i = 0; i < len / 8; i += 8) buf[i] += p;  /* one word per cache line */
    double t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"pages_per_pass\": %zu}\n",
           t1 - t0, c1 - c0, len / 4096);
    return 0;
}
"""

HERE = Path(__file__).resolve().parent
#: the command as users run it (``python -m writewatch`` is the console script's twin)
WRITEWATCH = [sys.executable, "-m", "writewatch"]


def build(tmp: Path) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("bench_monitor needs a C compiler (cc)")
    src = tmp / "load.c"
    src.write_text(SOURCE)
    exe = tmp / "load"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return str(exe)


def plain(exe: str, mib: int, passes: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the sweeps."""
    out = json.loads(subprocess.run([exe, str(mib), str(passes)], capture_output=True,
                                    text=True, check=True).stdout)
    return float(out["seconds"]), float(out["cpu"])


def _monitor_cmd(exe: str, mib: int, passes: int, interval: float, js: Path) -> list[str]:
    return [*WRITEWATCH, "run", "--interval", str(interval), "--quiet", "--json",
            str(js), "--", exe, str(mib), str(passes)]


def _monitored_result(stdout: str, stderr: str, code: int,
                      js: Path) -> tuple[tuple[float, float], dict]:
    if code != 0:
        sys.exit(f"writewatch run failed ({code}): {stderr}")
    out = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith('{"seconds"')))
    return (float(out["seconds"]), float(out["cpu"])), json.loads(js.read_text())["summary"]


def monitored(exe: str, mib: int, passes: int, interval: float,
              tmp: Path) -> tuple[tuple[float, float], dict]:
    js = tmp / "series.json"
    p = subprocess.run(_monitor_cmd(exe, mib, passes, interval, js), capture_output=True,
                       text=True)
    return _monitored_result(p.stdout, p.stderr, p.returncode, js)


def paired(exe: str, mib: int, passes: int, interval: float,
           tmp: Path) -> tuple[tuple[float, float], tuple[float, float], dict]:
    """Both at once: the plain and the monitored target share whatever else loads the
    machine during the round."""
    js = tmp / "series.json"
    a = subprocess.Popen([exe, str(mib), str(passes)], stdout=subprocess.PIPE, text=True)
    b = subprocess.Popen(_monitor_cmd(exe, mib, passes, interval, js), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    bout, berr = b.communicate()
    aout, _ = a.communicate()
    if a.returncode != 0:
        sys.exit(f"target failed ({a.returncode})")
    pa = json.loads(aout)
    mon, summary = _monitored_result(bout, berr, b.returncode, js)
    return (float(pa["seconds"]), float(pa["cpu"])), mon, summary


def fault_cost(mib: int, rounds: int) -> dict:
    """In this process: the time to write one byte to each page of a ``mib`` MiB buffer just
    after a collect re-armed it (one write-protect fault per page) against the same sweep on
    pages already written since (no fault): this thread's CPU time (user + system, so the
    kernel's fault handling counts and time spent waiting for a CPU does not), medians of
    ``rounds`` sweeps."""
    import time

    import numpy as np

    import writewatch
    page = os.sysconf("SC_PAGE_SIZE")
    raw = np.zeros((mib << 20) + page, np.uint8)
    off = (-raw.ctypes.data) % page
    buf = raw[off:off + (mib << 20)]  # page aligned
    view = buf[::page]
    clock = time.thread_time
    armed, warm, collect = [], [], []
    with writewatch.track(buf) as t:
        view += 1
        for r in range(rounds):
            c0 = clock()
            t.collect()  # re-arms every page written since
            c1 = clock()
            view[:] = r  # first write to each page after the re-arm: a fault each
            c2 = clock()
            view[:] = r + 1  # same pages again: no fault
            c3 = clock()
            collect.append(c1 - c0)
            armed.append(c2 - c1)
            warm.append(c3 - c2)
    n = len(view)
    a, w = statistics.median(armed), statistics.median(warm)
    return {"mib": mib, "pages": n, "armed_ms": a * 1e3, "warm_ms": w * 1e3,
            "us_per_fault": (a - w) / n * 1e6, "collect_ms": statistics.median(collect) * 1e3}


PACER = HERE.parent / "tests" / "exporter" / "targets" / "pacer.c"


def _tree(exe: str, procs: int) -> subprocess.Popen:
    """A shell that starts ``procs - 1`` pacers in the background, then execs the last: a
    tree of ``procs`` pacers rooted at the shell's pid."""
    bg = " ".join([f"{exe} 1024 200 >/dev/null &"] * (procs - 1))
    p = subprocess.Popen(["/bin/sh", "-c", f"{bg} exec {exe} 1024 200 >/dev/null"])
    deadline = time.monotonic() + 30
    while True:
        try:
            comm = Path(f"/proc/{p.pid}/comm").read_text().strip()
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            comm, kids = "", []
        if comm == "pacer" and len(kids) == procs - 1:
            return p
        if time.monotonic() > deadline:
            sys.exit("the tree did not start")
        time.sleep(0.05)


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """CPU seconds (user + system) of a command, and its exit status."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime, p.returncode


def own_cost(args: argparse.Namespace) -> dict:
    """The monitor's CPU on a 10-process tree at 100 ms, and its start-up CPU."""
    cc = shutil.which("cc") or sys.exit("needs a C compiler (cc)")
    # an installed package has its bytecode (pip compiles it); an editable install run with
    # PYTHONDONTWRITEBYTECODE=1 would compile every module at every start: measure the former
    spec = importlib.util.find_spec("writewatch")
    assert spec is not None and spec.submodule_search_locations
    compileall.compile_dir(spec.submodule_search_locations[0], quiet=1)
    with tempfile.TemporaryDirectory(prefix="ww-bench-monitor-") as d:
        exe = str(Path(d) / "pacer")
        subprocess.run([cc, "-O1", "-o", exe, str(PACER)], check=True)
        tree = _tree(exe, args.procs)
        js = Path(d) / "s.json"
        base = [*WRITEWATCH, "attach", str(tree.pid), "--tree", "--quiet"]
        # the baseline: numpy's BLAS with its default thread pool, as before writewatch/_startup
        pool = {**os.environ, "OPENBLAS_NUM_THREADS": ""}
        try:
            start, pooled, share, late, samples, coll, imp = [], [], [], [], [], [], []
            for _ in range(args.rounds):
                imp.append(_timed([sys.executable, "-c", "import writewatch"])[0])
                c, code = _timed([*base, "--duration", "10ms"])
                assert code == 0, code
                start.append(c)
                c, code = _timed([*base, "--duration", "10ms"], env=pool)
                assert code == 0, code
                pooled.append(c)
                c, code = _timed([*base, "--interval", "100ms", "--duration",
                                  f"{args.own_seconds:g}", "--json", str(js)])
                assert code == 0, code
                doc = json.loads(js.read_text())
                s = doc["summary"]
                share.append((c - statistics.median(start)) / args.own_seconds)
                late.append(s["late_samples"])
                samples.append(s["intervals"])
                coll.append(s["collect_p50"])
                procs = {p for iv in doc["intervals"] for p, _ in iv["by_process"]}
                assert len(procs) == args.procs, procs
                print(f"start-up {start[-1]:.3f} s CPU; sampling {share[-1] * 100:.2f} % of a "
                      f"core, {late[-1]} late of {samples[-1]} samples, collect median "
                      f"{coll[-1] * 1e3:.2f} ms", flush=True)
        finally:
            for pid in [int(x) for x in Path(f"/proc/{tree.pid}/task/{tree.pid}/children")
                        .read_text().split()]:
                os.kill(pid, 9)
            tree.kill()
            tree.wait()
    return {"start": start, "pooled": pooled, "share": share, "late": late, "samples": samples,
            "collect": coll, "import": imp}


def write_own_markdown(path: Path, r: dict, args: argparse.Namespace,
                       load: tuple[float, float]) -> None:
    def spread(xs: list[float], f: str, scale: float = 1.0) -> str:
        return (f"{statistics.median(xs) * scale:{f}} ({min(xs) * scale:{f}}-"
                f"{max(xs) * scale:{f}})")
    late = ", ".join(f"{a} of {b}" for a, b in zip(r["late"], r["samples"], strict=True))
    ratios = [a / b for a, b in zip(r["start"], r["pooled"], strict=True)]
    lines = [
        "# The monitor's own cost: one sampler for a 10-process tree",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `.venv/bin/python benchmarks/bench_monitor.py {shlex.join(sys.argv[1:])}`",
        f"Load average (1 min) when it started / ended: {load[0]:.1f} / {load[1]:.1f}.",
        "",
        f"`writewatch attach ROOT --tree` on {args.procs} processes (pacer.c, 200 pages/s "
        "each, 4 MiB buffers), one collect of the whole tree per sample. CPU: the monitor "
        "process's user + system time (`wait4`), the package's bytecode compiled first (as "
        "pip does on install). Start-up: the same command with "
        "`--duration 10ms` (interpreter, imports, attaching every process, one sample, the "
        "summary), run alternately with numpy's default BLAS thread pool (what the command "
        "did before it loaded numpy with one BLAS thread). Sampling: a "
        f"{args.own_seconds:g} s run at `--interval 100ms`, minus the "
        f"median start-up, per second. Medians of {args.rounds} rounds (min-max).",
        "",
        "| measure | result | goal |",
        "|---|---:|---:|",
        f"| start-up CPU (attach 10 processes, 1 sample, exit) | {spread(r['start'], '.3f')} s "
        "| < 0.3 s |",
        f"| the same with numpy's default BLAS thread pool (`OPENBLAS_NUM_THREADS=`) | "
        f"{spread(r['pooled'], '.3f')} s | |",
        f"| ratio of the two, per round | {spread(ratios, '.2f')} | |",
        f"| a program's `import writewatch` with the interpreter | {spread(r['import'], '.3f')} s "
        "| |",
        f"| sampling CPU at 100 ms | {spread(r['share'], '.2f', 100)} % of a core | ≤ 5 % |",
        f"| collect of the tree (median per run) | {spread(r['collect'], '.2f', 1e3)} ms | |",
        f"| late samples | {late} | counted, shown |",
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,256", help="buffer sizes in MiB (comma separated)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="target run time unmonitored (passes are calibrated to it)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--fault-rounds", type=int, default=30,
                    help="sweeps per size for the in-process fault cost (0: skip)")
    ap.add_argument("--sequential", action="store_true",
                    help="alternate plain and monitored runs instead of running each pair at "
                         "once (use on an otherwise idle machine)")
    ap.add_argument("--markdown", metavar="PATH")
    ap.add_argument("--own-cost", action="store_true",
                    help="measure the monitor's own CPU on a process tree instead")
    ap.add_argument("--procs", type=int, default=10, help="processes in the --own-cost tree")
    ap.add_argument("--own-seconds", type=float, default=10.0)
    ap.add_argument("--own-markdown", metavar="PATH")
    args = ap.parse_args()
    if args.own_cost:
        l0 = os.getloadavg()[0]
        r = own_cost(args)
        if args.own_markdown:
            write_own_markdown(Path(args.own_markdown), r, args, (l0, os.getloadavg()[0]))
        return
    rows = []
    faults = []
    args.load_before = os.getloadavg()
    if args.fault_rounds:
        for mib in (int(x) for x in args.sizes.split(",")):
            f = fault_cost(mib, args.fault_rounds)
            f["projected_pct"] = f["pages"] * f["us_per_fault"] * 1e-6 / args.interval * 100
            faults.append(f)
            print(f"fault cost, {mib} MiB ({f['pages']} pages): sweep after re-arm "
                  f"{f['armed_ms']:.2f} ms, warm {f['warm_ms']:.2f} ms -> "
                  f"{f['us_per_fault']:.3f} µs per re-armed page; collect "
                  f"{f['collect_ms']:.2f} ms; a program writing all of it every "
                  f"{args.interval:g} s pays {f['projected_pct']:+.2f} %", flush=True)
    with tempfile.TemporaryDirectory(prefix="ww-bench-monitor-") as d:
        tmp = Path(d)
        exe = build(tmp)
        for mib in (int(x) for x in args.sizes.split(",")):
            t1 = min(plain(exe, mib, 8)[1] for _ in range(3))
            passes = max(8, round(args.seconds / (t1 / 8)))
            base, mon, summaries = [], [], []
            for _ in range(args.rounds):
                if args.sequential:
                    base.append(plain(exe, mib, passes))
                    t, s = monitored(exe, mib, passes, args.interval, tmp)
                else:
                    p0, t, s = paired(exe, mib, passes, args.interval, tmp)
                    base.append(p0)
                mon.append(t)
                summaries.append(s)
            row = {"mib": mib, "passes": passes}
            for k, i in (("wall", 0), ("cpu", 1)):
                b = statistics.median(x[i] for x in base)
                m = statistics.median(x[i] for x in mon)
                # the slowdown: median over rounds of monitored / plain (paired rounds)
                ratio = statistics.median(y[i] / x[i] for x, y in zip(base, mon, strict=True))
                row |= {f"plain_{k}": b, f"mon_{k}": m, f"slowdown_{k}": (ratio - 1) * 100,
                        f"plain_{k}_all": [x[i] for x in base],
                        f"mon_{k}_all": [x[i] for x in mon]}
            s = summaries[len(summaries) // 2]
            row |= {"intervals": s["intervals"], "peak_rate": s["peak_rate"],
                    "mean_rate": s["mean_rate"]}
            # every page of the buffer is written after each re-arm: one write fault per page
            # per interval; the extra CPU per such fault
            nfaults = s["intervals"] * mib * 256
            row["us_per_fault"] = (row["mon_cpu"] - row["plain_cpu"]) / nfaults * 1e6
            # on an idle machine a program writing the whole buffer within every interval
            # pays that once per page per interval, per second of its run:
            row["projected_pct"] = mib * 256 * row["us_per_fault"] * 1e-6 / args.interval * 100
            rows.append(row)
            print(f"{mib:5d} MiB x {passes:4d} passes: CPU plain {row['plain_cpu']:.3f} s, "
                  f"monitored {row['mon_cpu']:.3f} s -> {row['slowdown_cpu']:+.2f} %; wall "
                  f"{row['plain_wall']:.3f} / {row['mon_wall']:.3f} s -> "
                  f"{row['slowdown_wall']:+.2f} %  (monitor saw mean {s['mean_rate']:.0f} MB/s, "
                  f"peak {s['peak_rate']:.0f} MB/s over {s['intervals']} intervals; "
                  f"≈ {row['us_per_fault']:.2f} µs extra CPU per page per re-arm -> "
                  f"{row['projected_pct']:+.2f} % on an idle machine)", flush=True)
    args.load_after = os.getloadavg()
    if args.markdown:
        write_markdown(Path(args.markdown), rows, faults, args)


def write_markdown(path: Path, rows: list[dict], faults: list[dict],
                   args: argparse.Namespace) -> None:
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cmd = "benchmarks/bench_monitor.py " + shlex.join(sys.argv[1:])
    lines = [
        "# Monitor overhead: a write-heavy program sampled by `writewatch run`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Linux "
        f"{platform.release()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `.venv/bin/python {cmd}`",
        f"Load average (1 min) when it started / ended: {args.load_before[0]:.1f} / "
        f"{args.load_after[0]:.1f} (other work was running on the machine).",
        "",
        "The target sweeps an anonymous buffer, writing one word per cache line of every page "
        "in each pass; it times its sweeps itself (CPU: its user + system time, which includes "
        "the kernel's write-fault handling; wall). "
        + ("Plain and monitored runs alternate. " if args.sequential else
           "In each round the plain and the monitored target run at the same time, so both "
           "see the same load from the rest of the machine. ")
        + "`plain` runs it directly, `monitored` under "
        f"`writewatch run --interval {args.interval:g}` (uffd-wp async, one collect per "
        "interval; every page written since is write-protected again, so the next pass takes a "
        "write fault on each page once per interval). Slowdown: the median over "
        f"{args.rounds} rounds of monitored / plain; times: medians. The last column divides "
        "the extra CPU time by the number of re-armed pages written (intervals x pages); the "
        "projection multiplies it by the pages written per interval: what a program writing "
        "its whole buffer within every interval pays per second when it has the CPU to itself "
        "(under load a run spans more intervals per CPU-second, so the measured CPU ratio is "
        "higher than on an idle machine).",
        "",
        "| buffer | passes | CPU plain (s) | CPU monitored (s) | **slowdown (CPU)** | "
        "wall plain (s) | wall monitored (s) | slowdown (wall) | monitor: mean / peak "
        "(MB/s) | extra CPU per page re-armed | projected slowdown, idle machine |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mib']} MiB | {r['passes']} | {r['plain_cpu']:.3f} | {r['mon_cpu']:.3f} | "
            f"**{r['slowdown_cpu']:+.2f} %** | {r['plain_wall']:.3f} | {r['mon_wall']:.3f} | "
            f"{r['slowdown_wall']:+.2f} % | {r['mean_rate']:.0f} / {r['peak_rate']:.0f} | "
            f"{r['us_per_fault']:.2f} µs | {r['projected_pct']:+.2f} % |")
    if faults:
        lines += [
            "", "## The cost behind it: one write fault per page per interval", "",
            "In-process (`writewatch.track` on a numpy buffer, uffd-wp async): the time to "
            "write one byte to every page of the buffer right after a `collect()` re-armed "
            "it, against the same sweep over pages already written since (no fault); medians "
            f"of {args.fault_rounds} sweeps, each a few milliseconds, so other load on the "
            "machine weighs little. The projection is the slowdown of a program that writes "
            f"every page of the buffer within each {args.interval:g} s interval and otherwise "
            "has the CPU to itself.", "",
            "| buffer | pages | sweep after re-arm | sweep, no fault | per re-armed page | "
            "collect (re-arm) | projected slowdown |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
        for f in faults:
            lines.append(
                f"| {f['mib']} MiB | {f['pages']} | {f['armed_ms']:.2f} ms | "
                f"{f['warm_ms']:.2f} ms | {f['us_per_fault']:.3f} µs | {f['collect_ms']:.2f} ms "
                f"| {f['projected_pct']:+.2f} % |")
        cost = statistics.median(f["us_per_fault"] for f in faults)
        budget = 0.05 * args.interval / (cost * 1e-6)  # pages per interval for 5 %
        lines += [
            "", f"Reading: the cost is {cost:.2f} µs of the program's CPU per page it writes "
            f"after each re-arm, so sampling every {args.interval:g} s stays under 5 % for a "
            f"program that writes up to {budget:.0f} distinct pages ({budget * 4096 / 2**20:.0f} "
            f"MiB) per interval; the collect itself runs in the monitor's process "
            f"({faults[-1]['collect_ms']:.1f} ms for {faults[-1]['pages']} written pages). "
            "The end-to-end CPU ratios above are larger when the machine is loaded: the "
            "target's run is stretched over more intervals, so it takes more faults per "
            "CPU-second."]
    lines += ["", "All runs (CPU seconds of the sweeps, in order):", ""]
    for r in rows:
        lines.append(f"* {r['mib']} MiB: plain {', '.join(f'{x:.3f}' for x in r['plain_cpu_all'])}"
                     f"; monitored {', '.join(f'{x:.3f}' for x in r['mon_cpu_all'])}")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
