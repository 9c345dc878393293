"""``writewatch exporter``: serve the dirty rates of processes and cgroups to Prometheus."""

from __future__ import annotations

import argparse
import logging
import sys

from ._monitor import duration, interval

HELP = "serve dirty rates of processes, trees and cgroups as Prometheus metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:9464", metavar="HOST:PORT",
                        help="address of the /metrics endpoint (default 127.0.0.1:9464; "
                             "port 0: any free port, printed at start)")
    t = parser.add_argument_group("targets (any number of each)")
    t.add_argument("--pid", action="append", default=[], metavar="PID",
                   help="a process (with -f: and its descendants)")
    t.add_argument("--cgroup", action="append", default=[], metavar="PATH",
                   help="every process of a cgroup v2 directory and of those below it, "
                        "including processes that join later (a container, a systemd unit)")
    t.add_argument("--match", action="append", default=[], metavar="REGEX",
                   help="every process whose command line (arguments joined by spaces) "
                        "matches, re-scanned every interval")
    t.add_argument("-f", "--follow-forks", action="store_true",
                   help="track each process's descendants and the children it forks")
    s = parser.add_argument_group("sampling")
    s.add_argument("-i", "--interval", type=interval, default=1.0, metavar="SECONDS",
                   help="seconds between collects (1, 0.5s, 100ms; default 1s)")
    s.add_argument("--window", type=duration, default=60.0, metavar="SECONDS",
                   help="working-set window (default 60s)")
    s.add_argument("--retry", type=duration, default=10.0, metavar="SECONDS",
                   help="seconds before attaching again a target that could not be attached "
                        "(default 10s)")
    s.add_argument("-d", "--duration", type=duration, default=None, metavar="SECONDS",
                   help="stop after this long (default: until SIGTERM or Ctrl-C)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every attach")


def run(args: argparse.Namespace) -> int:
    from writewatch.exporter import Exporter, parse_listen, parse_target

    host, port = parse_listen(args.listen)
    specs = [parse_target(kind, v) for kind, vals in (("pid", args.pid),
                                                       ("cgroup", args.cgroup),
                                                       ("match", args.match)) for v in vals]
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose
                        else logging.WARNING, format="writewatch exporter: %(message)s")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        from writewatch import errors
        raise errors.InvalidTarget("the exporter needs the prometheus_client package",
                                   hint="pip install 'writewatch[exporter]'") from None
    with Exporter(specs, interval=args.interval, follow_forks=args.follow_forks,
                  window=args.window, retry=args.retry) as exp:
        h, p = exp.listen(host, port)
        h = f"[{h}]" if ":" in h else h  # an IPv6 address in a URL (RFC 3986)
        print(f"writewatch exporter: serving http://{h}:{p}/metrics for "
              f"{', '.join(s.name for s in specs)}", file=sys.stderr, flush=True)
        exp.run(args.duration)
    return 0
