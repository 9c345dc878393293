"""``writewatch model``: compare the write-tracking designs on the model, explore races."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._fmt import dump_json, table

HELP = "the model: compare write-tracking designs on workloads, explore fault-path races"

#: (column title, Metrics attribute or function)
COLUMNS: list[tuple[str, Any]] = [
    ("design", "design"),
    ("written", "pages_written"),
    ("changed\notherwise", "changed_otherwise"),
    ("reported", "reported"),
    ("false +", "false_positives"),
    ("false −", "false_negatives"),
    ("dup\nnotif.", "duplicates"),
    ("PT pages\npeak", "pt_peak"),
    ("PT pages\nextra", "pt_extra"),
    ("tracking\nfaults", "tracking_faults"),
    ("walked\n/collect", lambda m: f"{m.walked_per_collect:.0f}"),
    ("ring\noverflows", "ring_overflows"),
    ("VMAs\npeak", "vmas_peak"),
    ("replica", lambda m: "ok" if not m.replica_diverged else f"{m.replica_diverged} differ"),
    ("live\nsnapshot", lambda m: "n/a" if m.snapshot_differs is None else
     ("ok" if not m.snapshot_differs else f"{m.snapshot_differs} differ")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_cmd", metavar="{compare,races}")
    sub.required = True
    c = sub.add_parser("compare", help="designs as rows, metrics against ground truth as "
                       "columns, per workload")
    c.add_argument("--workload", "-w", action="append",
                   help="built-in workload, random:SEED[:NOPS] or trace:FILE (repeatable; "
                        "default: every built-in one)")
    c.add_argument("--design", "-d", action="append",
                   help="design (repeatable; default: all). See --list")
    c.add_argument("--profile", "-p", default="6.18",
                   help="kernel profile: 6.18, 6.7-pre-2026-fixes, 6.1, running "
                        "(default 6.18)")
    c.add_argument("--seed", type=int, default=1, help="seed of the built-in workloads")
    c.add_argument("--scale", type=int, default=1, help="rounds multiplier")
    c.add_argument("--examples", type=int, default=3,
                   help="false negatives shown per design (each with its op sequence)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--list", action="store_true", help="list designs, workloads, profiles")
    r = sub.add_parser("races", help="every interleaving of the fault path per design: "
                       "schedules that lose a write or a notification")
    try:
        from ..model import races
    except ImportError:
        r.set_defaults(races_missing=True)
    else:
        races.add_arguments(r)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Designs as rows: the design column never wraps or truncates (rich when installed).
    When the metric columns do not fit the terminal, they are split over several tables,
    each with the design column."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        table(title, columns, rows)
        return
    console = Console(soft_wrap=False)

    def width(i: int) -> int:  # cell text + padding + border; "n/a: why" cells may fold
        cells = [r[i] for r in rows if not r[i].startswith("n/a")]
        return max(*(len(x) for x in columns[i].split("\n")), *map(len, cells)) + 3

    groups: list[list[int]] = [[]]
    used = width(0) + 1
    for i in range(1, len(columns)):
        if groups[-1] and used + width(i) > console.width:
            groups.append([])
            used = width(0) + 1
        groups[-1].append(i)
        used += width(i)
    for n, group in enumerate(groups, 1):
        part = f" ({n}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=title + part, title_justify="left")
        for i in (0, *group):
            t.add_column(columns[i], no_wrap=i == 0, justify="left" if i == 0 else "right",
                         overflow="fold")
        for r in rows:
            t.add_row(*(r[i] for i in (0, *group)))
        console.print(t)


def _cell(m: Any, col: Any) -> str:
    if callable(col):
        return str(col(m))
    v = getattr(m, col)
    return "" if v is None else str(v)


def _list() -> int:
    from ..model import DESIGNS, PROFILES, WORKLOADS
    table("Designs", ["design", "what"], [(n, d.title) for n, d in DESIGNS.items()])
    table("Workloads", ["workload", "what"],
          [(n, (f.__doc__ or "").split("\n\n")[0].replace("\n", " ")) for n, f in
           WORKLOADS.items()] + [("random:SEED[:NOPS]", "seeded random trace of every op"),
                                 ("trace:FILE", "a recorded or written trace (docs/model.md)")])
    table("Profiles", ["profile", "release"],
          [(n, p.release) for n, p in PROFILES.items()] + [("running", "this kernel")])
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model_cmd == "races":
        if getattr(args, "races_missing", False):
            print("writewatch model races: the concurrency explorer "
                  "(writewatch.model.races) is not available", file=sys.stderr)
            return 2
        from ..model import races
        return int(races.run(args) or 0)
    if args.list:
        return _list()
    from ..model import DESIGNS, WORKLOADS, designs, profiles, workloads
    from ..model.replay import compare
    prof = profiles.get(args.profile)
    names = args.design or list(DESIGNS)
    for d in names:
        designs.get(d)
    out: list[dict[str, Any]] = []
    for w in args.workload or list(WORKLOADS):
        trace = workloads.load(w, args.seed, args.scale)
        results = compare(trace, names, prof, w)
        if args.json:
            out.extend(m.to_dict() for m in results)
            continue
        rows = []
        for m in results:
            if not m.available:
                rows.append([m.design, f"n/a: {m.reason}"] + [""] * (len(COLUMNS) - 2))
            else:
                rows.append([_cell(m, c) for _, c in COLUMNS])
        _table(f"workload {w} ({len(trace)} ops), kernel profile {prof.name}",
               [t for t, _ in COLUMNS], rows)
        for m in results:
            if m.false_negatives and args.examples:
                print(f"  {m.design}: {m.false_negatives} false negative(s), e.g.")
                for e in m.fn_examples[:args.examples]:
                    print(f"    {e}")
        print()
    if args.json:
        dump_json({"profile": prof.name, "results": out})
    return 0
