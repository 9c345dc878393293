"""``writewatch attach PID``: monitor the pages another running process writes."""

from __future__ import annotations

import argparse

from .. import errors
from ._monitor import add_monitor_arguments, outputs, process_name

HELP = "monitor the dirty rate of a running process: live view, time series, heatmap, trace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pid", type=int, nargs="*",
                        help="the process(es) to monitor; the first is the root")
    parser.add_argument("--backend", default="auto",
                        help="tracking mechanism (default: the best this kernel offers)")
    t = parser.add_argument_group("process trees")
    t.add_argument("--tree", action="store_true",
                   help="also track every current descendant of each PID")
    t.add_argument("-f", "--follow-forks", action="store_true",
                   help="track the children they fork from now on (as strace -f)")
    t.add_argument("--cgroup", metavar="PATH",
                   help="track every process of this cgroup v2 directory, and those that "
                        "join it later (a container, a systemd unit)")
    add_monitor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import writewatch
    from writewatch.monitor import parse_focus

    out = outputs(args)
    parse_focus(args.mapping)  # a malformed spec fails before attaching
    attach = writewatch.attach
    if not args.pid and not args.cgroup:
        raise errors.InvalidTarget("no process given", hint="give a PID or --cgroup PATH")
    for pid in args.pid:
        if pid <= 0:
            raise errors.InvalidTarget(f"{pid} is not a process id", hint="give a PID > 0")
    kw = {} if args.backend == "auto" else {"backend": args.backend}
    tracker = attach(args.pid or None, tree=args.tree, follow_forks=args.follow_forks,
                     cgroup=args.cgroup, **kw)
    root = tracker.pid
    what = f"cgroup {args.cgroup}" if args.cgroup else f"pid {root} ({process_name(root)})"
    if len(tracker.processes) > 1 and not args.cgroup:
        what += f" and {len(tracker.processes) - 1} more"
    try:
        series = writewatch.monitor(tracker, interval=args.interval, duration=args.duration,
                                    outputs=out, mapping=args.mapping, target=what, pid=root,
                                    on_end=lambda _: tracker.close())
    finally:
        tracker.close()
    return 1 if series.ended.startswith("error") else 0
