"""Exporter benchmark: its CPU per tracked process at a 1 s interval, and scrape latency.

For each N in ``--targets`` (default 10,100) it starts N copies of
tests/exporter/targets/pacer.c (a 1 MiB buffer each, RATE pages written per second), runs
``writewatch exporter --listen 127.0.0.1:0 --pid P1 ... --pid PN --interval 1`` on them, lets
it warm up, then over ``--seconds`` reads the exporter's CPU time (utime + stime of
/proc/PID/stat, every thread: the sampling thread, the HTTP server) and its RSS while
``/metrics`` is scraped every ``--scrape-every`` seconds (as Prometheus would, 5 s by default),
then times ``--burst`` scrapes 0.25 s apart (connect to last byte) from this process.

Printed per N: the exporter's CPU as a share of one core and per tracked process (median of
``--rounds`` rounds with min-max), its resident memory, and scrape latency (median, p90,
max of every scrape) with the size of the page served. ``--markdown PATH`` writes the table
with the machine, date, command and load.

Run: ``.venv/bin/python benchmarks/bench_exporter.py [--targets 10,100] [--rounds 3]
[--markdown benchmarks/results-exporter.md]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACER = HERE.parent / "tests" / "exporter" / "targets" / "pacer.c"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat, clock ticks;
    proc(5))."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) * 1024
    return 0


def start_targets(exe: str, n: int, rate: int) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen([exe, "256", str(rate)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        assert p.stdout.readline().startswith("ready")
        procs.append(p)
    return procs


def scrape(url: str) -> tuple[float, int]:
    s0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - s0, len(body)


def one_round(exe: str, n: int, rate: int, seconds: float, warmup: float, every: float,
              burst: int) -> dict:
    targets = start_targets(exe, n, rate)
    exp = None
    try:
        argv = [sys.executable, "-m", "writewatch", "exporter", "--listen", "127.0.0.1:0",
                "--interval", "1"]
        for t in targets:
            argv += ["--pid", str(t.pid)]
        exp = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert exp.stderr is not None
        line = exp.stderr.readline()
        url = line.split("serving ", 1)[1].split()[0]
        # every target up: each attach stops the process briefly
        deadline = time.monotonic() + 120
        while True:
            with urllib.request.urlopen(url, timeout=30) as r:
                text = r.read().decode()
            up = sum(1 for ln in text.splitlines()
                     if ln.startswith("writewatch_target_up{") and ln.endswith(" 1.0"))
            if up == n:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {up} of {n} targets up")
            time.sleep(0.5)
        time.sleep(warmup)
        c0, t0 = cpu_seconds(exp.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            scrape(url)
            time.sleep(max(0.0, min(every, seconds - (time.monotonic() - t0))))
        c1, t1 = cpu_seconds(exp.pid), time.monotonic()
        lat, size = [], 0
        for _ in range(burst):
            x, size = scrape(url)
            lat.append(x)
            time.sleep(0.25)
        return {"cpu_share": (c1 - c0) / (t1 - t0), "rss": rss_bytes(exp.pid), "lat": lat,
                "bytes": size}
    finally:
        if exp is not None:
            exp.terminate()
            exp.wait(60)
            if exp.stderr is not None:
                exp.stderr.close()
        for t in targets:
            t.kill()
            t.wait()
            if t.stdout is not None:
                t.stdout.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="10,100", help="numbers of tracked processes")
    ap.add_argument("--rate", type=int, default=200, help="pages per second each writes")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per round")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scrape-every", type=float, default=5.0,
                    help="seconds between scrapes while the CPU is measured")
    ap.add_argument("--burst", type=int, default=20, help="scrapes timed after that")
    ap.add_argument("--markdown", metavar="PATH")
    args = ap.parse_args()
    cc = shutil.which("cc") or sys.exit("bench_exporter needs a C compiler (cc)")
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ww-bench-exporter-") as d:
        exe = str(Path(d) / "pacer")
        subprocess.run([cc, "-O1", "-o", exe, str(PACER)], check=True)
        for n in (int(x) for x in args.targets.split(",")):
            rounds = [one_round(exe, n, args.rate, args.seconds, args.warmup,
                                args.scrape_every, args.burst) for _ in range(args.rounds)]
            share = [r["cpu_share"] for r in rounds]
            lat = sorted(x for r in rounds for x in r["lat"])
            row = {"n": n, "share": statistics.median(share), "share_min": min(share),
                   "share_max": max(share), "rss": statistics.median(r["rss"] for r in rounds),
                   "lat_p50": statistics.median(lat), "lat_p90": lat[int(0.9 * (len(lat) - 1))],
                   "lat_max": lat[-1], "scrapes": len(lat), "bytes": rounds[-1]["bytes"]}
            row["per_proc"] = row["share"] / n
            rows.append(row)
            print(f"{n:4d} processes: exporter CPU {row['share'] * 100:.2f} % of a core "
                  f"(min {row['share_min'] * 100:.2f}, max {row['share_max'] * 100:.2f}; "
                  f"{row['per_proc'] * 100:.3f} % per process), RSS "
                  f"{row['rss'] / 2**20:.1f} MiB; scrape {row['lat_p50'] * 1e3:.1f} ms median, "
                  f"p90 {row['lat_p90'] * 1e3:.1f}, max {row['lat_max'] * 1e3:.1f} "
                  f"({row['scrapes']} scrapes, {row['bytes'] / 1024:.0f} KiB)", flush=True)
    load1 = os.getloadavg()
    if args.markdown:
        write_markdown(Path(args.markdown), rows, args, load0, load1)


def write_markdown(path: Path, rows: list[dict], args: argparse.Namespace,
                   load0: tuple[float, ...], load1: tuple[float, ...]) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    lines = [
        "# Exporter cost: CPU per tracked process, scrape latency",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Linux "
        f"{platform.release()}; {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `.venv/bin/python benchmarks/bench_exporter.py "
        f"{shlex.join(sys.argv[1:])}`",
        f"Load average (1 min) when it started / ended: {load0[0]:.1f} / {load1[0]:.1f} (other "
        "work was running on the machine).",
        "",
        f"N processes, each writing {args.rate} pages per second in a 1 MiB buffer "
        "(tests/exporter/targets/pacer.c), one `--pid` target each, `--interval 1`. The "
        "exporter's CPU (utime + stime of every thread, /proc/PID/stat) over "
        f"{args.seconds:g} s after a {args.warmup:g} s warm-up, as a share of one core: "
        f"median of {args.rounds} rounds (min-max), `/metrics` scraped every "
        f"{args.scrape_every:g} s meanwhile (formatting a scrape is part of the cost); then "
        f"{args.burst} scrapes 0.25 s apart per round from another process, connect to last "
        "byte: median, p90 and max over every round.",
        "",
        "| processes | exporter CPU (share of a core) | per tracked process | RSS | scrape "
        "median | p90 | max | scrapes | page size |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['share'] * 100:.2f} % ({r['share_min'] * 100:.2f}-"
            f"{r['share_max'] * 100:.2f}) | {r['per_proc'] * 100:.3f} % | "
            f"{r['rss'] / 2**20:.1f} MiB | {r['lat_p50'] * 1e3:.1f} ms | "
            f"{r['lat_p90'] * 1e3:.1f} ms | {r['lat_max'] * 1e3:.1f} ms | {r['scrapes']} | "
            f"{r['bytes'] / 1024:.0f} KiB |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
