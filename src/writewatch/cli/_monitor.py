"""The monitor's options, shared by ``writewatch run`` and ``writewatch attach``, turned into
the arguments of :func:`writewatch.monitor`."""

from __future__ import annotations

import argparse
import math

from ..monitor import MAX_INTERVAL, MIN_INTERVAL, UNITS, Outputs

__all__ = ["add_monitor_arguments", "duration", "interval", "outputs", "process_name"]


def _seconds(text: str, units: dict[str, float], example: str) -> float:
    t = text.strip().lower()
    for suffix, scale in units.items():
        if suffix and t.endswith(suffix):
            t, mult = t[:-len(suffix)], scale
            break
    else:
        mult = 1.0
    try:
        v = float(t) * mult
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. {example})")
    return v


def interval(text: str) -> float:
    """Seconds, or a number with a unit: 10ms, 0.5s, 2."""
    v = _seconds(text, {"ms": 1e-3, "s": 1.0}, "1, 0.5s, 10ms")
    if v < MIN_INTERVAL - 1e-12:
        raise argparse.ArgumentTypeError(f"{text} is shorter than the 10 ms minimum")
    if v > MAX_INTERVAL:
        raise argparse.ArgumentTypeError(f"{text} is longer than the one-day maximum")
    return v


def duration(text: str) -> float:
    """Seconds, or a number with a unit: 10, 30s, 2m, 500ms."""
    v = _seconds(text, {"ms": 1e-3, "m": 60.0, "s": 1.0}, "10, 30s, 2m")
    if v <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return v


def add_monitor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-i", "--interval", type=interval, default=1.0, metavar="SECONDS",
                   help="sampling interval: seconds or with a unit (1, 0.1s, 10ms; "
                        "minimum 10ms; default 1s)")
    g.add_argument("-d", "--duration", type=duration, default=None, metavar="SECONDS",
                   help="stop after this long (10, 30s, 2m); default: until the target "
                        "exits or Ctrl-C")
    g.add_argument("--mapping", action="append", metavar="SPEC",
                   help="count only the pages of this mapping of the (root) process: a label "
                        "([heap], libc.so.6, memfd:pc.ram), a path, 0xSTART-0xEND, or "
                        "'largest' (the largest writable, non-executable mapping: a VM's "
                        "guest RAM); repeat for several")
    o = p.add_argument_group("output")
    o.add_argument("--unit", choices=sorted(UNITS), default="MB",
                   help="rate unit: MB/s (10^6 bytes/s, the default) or MiB/s (2^20 bytes/s, "
                        "the unit QEMU's calc-dirty-rate computes in)")
    o.add_argument("--json", metavar="FILE", help="write the time series as JSON ('-': stdout; "
                   "the live view then goes to stderr)")
    o.add_argument("--csv", metavar="FILE", help="write one CSV row per interval ('-': stdout)")
    o.add_argument("--heatmap", metavar="FILE.png",
                   help="write a heatmap of the pages written (address × time)")
    o.add_argument("--plot", metavar="FILE.png", help="write a plot of the dirty rate over time")
    o.add_argument("--record", metavar="FILE",
                   help="record a trace (writable mappings and pages written per interval) in "
                        "the model's format; FILE.zst is compressed")
    o.add_argument("--perfetto", metavar="FILE",
                   help="write a Perfetto trace (ui.perfetto.dev): dirty rates per process "
                        "and per mapping as counter tracks, forks, exits, execs and mapping "
                        "changes as instant events")
    o.add_argument("--no-live", action="store_true",
                   help="print one plain line per interval instead of the live view (the "
                        "default when the output is not a terminal)")
    o.add_argument("-q", "--quiet", action="store_true",
                   help="no per-interval output, only the summary")


def outputs(args: argparse.Namespace) -> Outputs:
    """The :class:`writewatch.monitor.Outputs` the options ask for (checked: an unwritable
    file is refused before anything starts)."""
    out = Outputs(json=args.json, csv=args.csv, heatmap=args.heatmap, plot=args.plot,
                  record=args.record, perfetto=args.perfetto,
                  view="none" if args.quiet else "lines" if args.no_live else "auto",
                  summary=True, unit=args.unit)
    out.check()
    return out


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "?"
