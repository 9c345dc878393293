"""The monitor as a command: options shared by ``writewatch run`` and ``writewatch attach``,
and the loop that samples a tracker, shows it, and writes the requested files."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from .. import errors
from .sampler import MIN_INTERVAL, Sampler
from .series import Series
from .view import LineView, LiveView, format_summary

__all__ = ["add_monitor_arguments", "monitor_tracker", "process_name"]


def _interval(text: str) -> float:
    """Seconds, or a number with a unit: 10ms, 0.5s, 2."""
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            v = float(t[:-2]) / 1000
        elif t.endswith("s"):
            v = float(t[:-1])
        else:
            v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1, 0.5s, 10ms)") \
            from None
    if v < MIN_INTERVAL - 1e-12:
        raise argparse.ArgumentTypeError(f"{text} is shorter than the 10 ms minimum")
    return v


def _duration(text: str) -> float:
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            v = float(t[:-2]) / 1000
        elif t.endswith("m"):
            v = float(t[:-1]) * 60
        elif t.endswith("s"):
            v = float(t[:-1])
        else:
            v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10, 30s, 2m)") \
            from None
    if v <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return v


def add_monitor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-i", "--interval", type=_interval, default=1.0, metavar="SECONDS",
                   help="sampling interval: seconds or with a unit (1, 0.1s, 10ms; "
                        "minimum 10ms; default 1s)")
    g.add_argument("-d", "--duration", type=_duration, default=None, metavar="SECONDS",
                   help="stop after this long (10, 30s, 2m); default: until the target "
                        "exits or Ctrl-C")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the time series as JSON ('-': stdout; "
                   "the live view then goes to stderr)")
    o.add_argument("--csv", metavar="FILE", help="write one CSV row per interval ('-': stdout)")
    o.add_argument("--heatmap", metavar="FILE.png",
                   help="write a heatmap of the pages written (address × time)")
    o.add_argument("--plot", metavar="FILE.png", help="write a plot of the dirty rate over time")
    o.add_argument("--record", metavar="FILE",
                   help="record a trace (writable mappings and pages written per interval) in "
                        "the model's format; FILE.zst is compressed")
    o.add_argument("--no-live", action="store_true",
                   help="print one plain line per interval instead of the live view (the "
                        "default when the output is not a terminal)")
    o.add_argument("-q", "--quiet", action="store_true",
                   help="no per-interval output, only the summary")


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return "?"


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before starting the target when an output file cannot be written."""
    for opt in ("json", "csv", "heatmap", "plot", "record"):
        path = getattr(args, opt)
        if not path or path == "-":
            continue
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            raise errors.InvalidTarget(f"--{opt} {path}: directory {d} is not writable",
                                       hint="give a path in an existing, writable directory")
    if args.json == "-" and args.csv == "-":
        raise errors.InvalidTarget("--json - and --csv - both want stdout",
                                   hint="write one of them to a file")


@contextlib.contextmanager
def _on_sigterm(action: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGHUP stop the sampling the way Ctrl-C does (summary and files written)."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, lambda *_: action())
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _open_out(path: str) -> IO[str]:
    return sys.stdout if path == "-" else open(path, "w", encoding="utf-8")


def write_outputs(series: Series, args: argparse.Namespace, err: IO[str]) -> None:
    for opt, fn in (("json", series.write_json), ("csv", series.write_csv)):
        path = getattr(args, opt)
        if path:
            f = _open_out(path)
            try:
                fn(f)
            finally:
                if f is not sys.stdout:
                    f.close()
                else:
                    f.flush()
            if path != "-":
                print(f"wrote {path}", file=err)
    if args.heatmap:
        series.heatmap(args.heatmap)
        print(f"wrote {args.heatmap}", file=err)
    if args.plot:
        series.plot(args.plot)
        print(f"wrote {args.plot}", file=err)


def monitor_tracker(tracker: Any, args: argparse.Namespace, target: str, *,
                    pid: int | None = None, argv: list[str] | None = None,
                    alive: Callable[[], bool] | None = None) -> Series:
    """Sample ``tracker`` as ``args`` say; show it; write the files; return the series.

    ``alive`` is polled while waiting between samples (every 50 ms): when it turns false the
    target has exited and sampling ends at once instead of at the next tick."""
    human = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
    sampler = Sampler(tracker, args.interval, target=target, alive=alive)

    recorder = None
    if args.record:
        from .record import TraceRecorder
        recorder = TraceRecorder(args.record, sampler.series.page_size, pid=pid, argv=argv,
                                 source=f"monitor:{target}")
    view: Any
    if args.quiet:
        view = contextlib.nullcontext()
    elif not args.no_live and human.isatty():
        view = LiveView(human)
    else:
        view = LineView(human)

    def on_start(series: Series) -> None:
        if recorder is not None:
            recorder.maps(0.0, sampler.regions)

    def on_interval(iv: Any, series: Series) -> None:
        if recorder is not None:
            recorder.update(iv, series, sampler.regions)
        if not args.quiet:
            view.update(iv, series)

    try:
        with _on_sigterm(sampler.stop), view:
            series = sampler.run(args.duration, on_interval, on_start=on_start)
    finally:
        if recorder is not None:
            recorder.close()
    return series


def finish(series: Series, args: argparse.Namespace) -> None:
    """Print the summary and write the requested files."""
    err = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
    print(format_summary(series), file=err, flush=True)
    if args.record:
        print(f"wrote {args.record}", file=err)
    write_outputs(series, args, err)
