"""``writewatch features``: what this kernel supports and which backend ``auto`` picks."""

from __future__ import annotations

import argparse

from .. import features
from ._fmt import dump_json, table

HELP = "show the kernel's write-tracking mechanisms, usable backends, and why not"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    f = features()
    if args.json:
        dump_json(f.to_dict())
        return 0
    print(f"kernel {f.kernel} ({f.machine}), page size {f.page_size}")
    table("Backends", ["backend", "usable", "since", "detail / fix"],
          [(b.name, "yes" if b.usable else "no", b.since or "",
            b.detail + (f" — {b.fix}" if b.fix and not b.usable else ""))
           for b in f.backends.values()])
    table("Mechanisms", ["mechanism", "usable", "since", "detail / fix"],
          [(m.name, "yes" if m.usable else "no", m.since or "",
            m.detail + (f" — {m.fix}" if m.fix and not m.usable else ""))
           for m in f.mechanisms.values()])
    print(f"auto picks: {f.auto or 'nothing (no usable backend)'}")
    return 0
