"""``writewatch model``: compare the write-tracking designs on the model, explore races.

Only parses arguments and calls the lab (:mod:`writewatch.lab`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from .. import errors
from ._fmt import dump_json, table

HELP = "the model: compare write-tracking designs on workloads, explore fault-path races"
RACES_HELP = "enumerate the interleavings of fault path and tracker; show schedules that " \
    "lose writes"

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
    ("PT KiB\nextra", lambda m: "" if m.pt_extra_bytes is None else
     f"{m.pt_extra_bytes // 1024}"),
    ("tracking\nfaults", "tracking_faults"),
    ("walked\n/collect", lambda m: f"{m.walked_per_collect:.0f}"),
    ("µs\n/collect", lambda m: f"{m.collect_us:.1f}"),
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
                   help="design name or package.module:Class (repeatable; default: the "
                        "built-in ones). See --list")
    c.add_argument("--profile", "-p", default="6.18",
                   help="kernel profile: 6.18, 6.7-pre-2026-fixes, 6.1, running "
                        "(default 6.18)")
    c.add_argument("--seed", type=int, default=1, help="seed of the built-in workloads")
    c.add_argument("--seeds", type=int, default=0, metavar="N",
                   help="run seeds 1..N and show each metric's median and range")
    c.add_argument("--scale", type=int, default=1, help="rounds multiplier")
    c.add_argument("--costs", metavar="FILE",
                   help="per-event costs (JSON, from benchmarks/bench_model.py --calibrate)")
    c.add_argument("--examples", type=int, default=3,
                   help="false negatives shown per design (each with its op sequence)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--plot", metavar="FILE",
                   help="write a figure (PNG/SVG/PDF): per design the costs and losses, and "
                        "the per-collect time series")
    c.add_argument("--list", action="store_true", help="list designs, workloads, profiles")
    r = sub.add_parser("races", help="every interleaving of the fault path per design: "
                       "schedules that lose a write or a notification")
    races_arguments(r)


def races_arguments(parser: argparse.ArgumentParser) -> None:
    from ..lab.races import DESIGNS, SCENARIOS
    parser.add_argument("--design", "-d", action="append",
                        help="design to explore: " + ", ".join(DESIGNS) +
                             " or package.module:Class (repeatable; default: all)")
    parser.add_argument("--scenario", "-s", action="append", choices=list(SCENARIOS),
                        help="scenario to explore (repeatable; default: all)")
    parser.add_argument("--show", type=int, default=1, metavar="N",
                        help="losing schedules to print per design and scenario (default 1)")
    parser.add_argument("--dups", action="store_true",
                        help="also print one schedule with a duplicate notification")
    parser.add_argument("--list", action="store_true",
                        help="describe the designs and scenarios and exit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


# ------------------------------------------------------------------------------- compare
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
        return max([len(x) for x in columns[i].split("\n")] + [len(c) for c in cells]) + 3

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
    from ..lab import designs
    from ..lab.workloads import WORKLOADS
    from ..model.profiles import PROFILES
    table("Designs", ["design", "what"],
          [(n + ("" if n in designs.DEFAULT else " *"), d.title)
           for n, d in designs.DESIGNS.items()]
          + [("pkg.mod:Class", "a design of your own (docs/model.md)")])
    print("  * not run by default: name it with --design")
    table("Workloads", ["workload", "what"],
          [(n, (f.__doc__ or "").split("\n\n")[0].replace("\n", " ")) for n, f in
           WORKLOADS.items()] + [("random:SEED[:NOPS]", "seeded random trace of every op"),
                                 ("trace:FILE", "a recorded or written trace (docs/model.md)")])
    table("Profiles", ["profile", "release"],
          [(n, p.release) for n, p in PROFILES.items()] + [("running", "this kernel")])
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .. import lab
    from ..lab import costs as C
    from ..lab import designs, profiles, workloads
    for opt, least in (("seeds", 0), ("scale", 1), ("examples", 0)):
        if getattr(args, opt) < least:
            raise errors.InvalidTarget(f"--{opt} {getattr(args, opt)}",
                                       hint=f"give --{opt} >= {least}")
    prof = profiles.get(args.profile)
    names = args.design or list(designs.DEFAULT)
    for d in names:
        designs.get(d)
    costs = None
    if args.costs:
        with open(args.costs) as f:
            costs = C.Costs.from_json(f.read())
    if args.seeds:
        return _seeds(args, names, prof, costs)
    out: list[Any] = []
    for w in args.workload or list(workloads.WORKLOADS):
        trace = workloads.load(w, args.seed, args.scale)
        results = [dataclasses.replace(m, workload=w)
                   for m in lab.compare(trace, names, prof, costs=costs)]
        out.extend(results)
        if args.json:
            continue
        _print_results(w, len(trace), prof.name, results, args.examples)
    if args.json:
        dump_json({"profile": prof.name, "results": [m.to_dict() for m in out]})
    if args.plot:
        from ..lab.plot import plot_compare
        plot_compare(out, args.plot)
        if not args.json:
            print(f"figure written to {args.plot}")
    return 0


def _print_results(w: str, n_ops: int, prof: str, results: Sequence[Any],
                   examples: int) -> None:
    rows = []
    for m in results:
        if not m.available:
            rows.append([m.design, f"n/a: {m.reason}"] + [""] * (len(COLUMNS) - 2))
        else:
            rows.append([_cell(m, c) for _, c in COLUMNS])
    _table(f"workload {w} ({n_ops} ops), kernel profile {prof}",
           [t for t, _ in COLUMNS], rows)
    for m in results:
        if m.false_negatives and examples:
            print(f"  {m.design}: {m.false_negatives} false negative(s), e.g.")
            for e in m.fn_examples[:examples]:
                print(f"    {e}")
    print()


def _seeds(args: argparse.Namespace, names: list[str], prof: Any, costs: Any) -> int:
    from .. import lab
    seeds = range(1, args.seeds + 1)
    out: dict[str, Any] = {}
    for w in args.workload or ["random", "hotcold", "malloc"]:
        res = lab.compare_seeds(w, names, prof, seeds, scale=args.scale, costs=costs)
        out[w] = {d: {k: {"median": s.median, "low": s.low, "high": s.high,
                          "values": list(s.values)} for k, s in ms.items()}
                  for d, ms in res.items()}
        if args.json:
            continue
        cols = ["design", *lab.SPREAD_METRICS]
        rows = [[d, *(_spread(ms[k]) for k in lab.SPREAD_METRICS)] for d, ms in res.items()]
        _table(f"workload {w}, seeds 1-{args.seeds}: median [min-max], profile {prof.name}",
               [c.replace("_", "\n", 1) for c in cols], rows)
    if args.json:
        dump_json({"profile": prof.name, "seeds": list(seeds), "workloads": out})
    return 0


def _spread(s: Any) -> str:
    spec = ".0f" if s.high >= 100 else ".3g"

    def f(x: float) -> str:
        return format(x, spec)
    return f(s.median) if s.low == s.high else f"{f(s.median)} [{f(s.low)}-{f(s.high)}]"


# ------------------------------------------------------------------------------- races
def _races_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table(title, columns, rows, left=("design", "scenario", "lost", "losing in"),
          wrap=("losing in",))


def _races_list() -> int:
    from ..lab.races import DESIGNS, SCENARIOS
    print("designs:")
    for d in DESIGNS.values():
        print(f"  {d.name:24s} {d.summary}")
    print("scenarios:")
    for s in SCENARIOS.values():
        threads = "; ".join(f"{n}: " + ", ".join(f"{o} p{p}" for o, p in prog)
                            for n, prog in s.threads)
        print(f"  {s.name:24s} {s.summary}\n  {'':24s} [{s.memory}; {threads}; "
              f"{s.collects} concurrent collect(s)]")
    return 0


def races(args: argparse.Namespace) -> int:
    from ..lab.races import DESIGNS, SCENARIOS, explore, format_schedule
    if getattr(args, "list", False):
        return _races_list()
    designs = args.design or list(DESIGNS)
    scenarios = args.scenario or list(SCENARIOS)
    show = max(0, args.show)
    results = [explore(d, s, limit=max(show, 1)) for d in designs for s in scenarios]
    if args.json:
        json.dump([r.to_dict() for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _races_table("Concurrency explorer: every interleaving, per design and scenario",
                 ["design", "scenario", "schedules", "states", "losing", "lost",
                  "dup/fp sched.", "s"],
                 [(r.design, r.scenario, r.schedules, r.states, r.losing_count,
                   ", ".join(r.loss_kinds) or "-", r.duplicate_schedules, f"{r.seconds:.2f}")
                  for r in results])
    if len(scenarios) > 1:
        rows = []
        for d in dict.fromkeys(r.design for r in results):
            mine = [r for r in results if r.design == d]
            losing = [r.scenario for r in mine if r.loses]
            rows.append((d, f"{len(losing)} of {len(mine)}", ", ".join(losing) or "-",
                         ", ".join(sorted({k for r in mine for k in r.loss_kinds})) or "-",
                         sum(r.duplicate_schedules > 0 for r in mine)))
        _races_table("Which designs lose what", ["design", "scenarios losing", "losing in",
                                                 "lost", "scenarios with dup/fp"], rows)
    for r in results:
        if r.loses and show:
            print(f"\n{r.design} / {r.scenario}: loses in {r.losing_count} of "
                  f"{r.schedules} schedules; the shortest:")
            print(format_schedule(r.shortest, r.threads, r.shortest_reasons))
        others = [(p, w) for p, w in zip(r.losing, r.reasons, strict=True)
                  if p != r.shortest][:max(0, show - 1)]
        for sched, why in others:
            print(f"\n{r.design} / {r.scenario}: another losing schedule:")
            print(format_schedule(sched, r.threads, why))
        if args.dups and r.example_dup:
            print(f"\n{r.design} / {r.scenario}: duplicate notification or false positive "
                  f"in {r.duplicate_schedules} of {r.schedules} schedules; for example:")
            print(format_schedule(r.example_dup, r.threads))
    for r in results:
        if r.deadlocks:
            print(f"warning: {r.design} / {r.scenario}: {r.deadlocks} schedules deadlock",
                  file=sys.stderr)
    return 0


def races_main(argv: list[str] | None = None) -> int:
    """``python -m writewatch.model.races``: the ``races`` subcommand on its own."""
    from ..errors import WriteWatchError
    parser = argparse.ArgumentParser(prog="writewatch model races", description=RACES_HELP)
    races_arguments(parser)
    try:
        return races(parser.parse_args(argv))
    except WriteWatchError as exc:
        print(f"writewatch model races: error: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    if args.model_cmd == "races":
        return races(args)
    if args.list:
        return _list()
    return _compare(args)
