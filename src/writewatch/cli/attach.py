"""``writewatch attach PID``: monitor the pages another running process writes."""

from __future__ import annotations

import argparse

from .. import errors
from ..monitor.app import add_monitor_arguments, finish, monitor_tracker, process_name

HELP = "monitor the dirty rate of a running process: live view, time series, heatmap, trace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, help="the process to monitor")
    parser.add_argument("--backend", default="auto",
                        help="tracking mechanism (default: the best this kernel offers)")
    add_monitor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import writewatch

    from ..monitor.app import _check_outputs
    _check_outputs(args)
    attach = writewatch.attach
    if args.pid <= 0:
        raise errors.InvalidTarget(f"{args.pid} is not a process id", hint="give a PID > 0")
    name = process_name(args.pid)
    kw = {} if args.backend == "auto" else {"backend": args.backend}
    tracker = attach(args.pid, **kw)
    try:
        series = monitor_tracker(tracker, args, f"pid {args.pid} ({name})", pid=args.pid)
    finally:
        tracker.close()
    finish(series, args)
    return 1 if series.ended.startswith("error") else 0
