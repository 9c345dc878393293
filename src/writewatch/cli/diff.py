"""``writewatch diff``: which pages and mappings changed between two snapshots."""

from __future__ import annotations

import argparse

from ._fmt import dump_json, human_bytes, table

HELP = "show which pages and mappings changed between two snapshots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="snapshot store directory")
    parser.add_argument("a", metavar="A", help="older snapshot (name, number or latest)")
    parser.add_argument("b", metavar="B", help="newer snapshot")
    parser.add_argument("--ranges", action="store_true", help="list every changed range")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..snapshot import Snapshots
    d = Snapshots(args.store).diff(args.a, args.b)
    if args.json:
        dump_json({
            "a": d.a, "b": d.b, "changed_pages": len(d.changed),
            "changed": d.changed.ranges, "added": d.added.ranges, "removed": d.removed.ranges,
            "regions_added": [r.to_json() for r in d.regions_added],
            "regions_removed": [r.to_json() for r in d.regions_removed],
            "regions_changed": [[o.to_json(), n.to_json()] for o, n in d.regions_changed],
        })
        return 0
    print(f"{d.a} -> {d.b}: {len(d.changed)} page(s) changed "
          f"({human_bytes(d.changed.nbytes)}) in {len(d.changed.ranges)} range(s); "
          f"{len(d.added)} page(s) mapped, {len(d.removed)} unmapped")
    rows = [("+", f"{r.start:#x}-{r.end:#x}", r.perms, human_bytes(r.length), r.path)
            for r in d.regions_added]
    rows += [("-", f"{r.start:#x}-{r.end:#x}", r.perms, human_bytes(r.length), r.path)
             for r in d.regions_removed]
    rows += [("~", f"{o.start:#x}-{o.end:#x} -> {n.end:#x}", f"{o.perms}->{n.perms}",
              human_bytes(n.length), n.path) for o, n in d.regions_changed]
    if rows:
        table("Mappings", ["", "range", "perms", "size", "file"], rows)
    if args.ranges and len(d.changed.ranges):
        table("Changed pages", ["range", "pages"],
              [(f"{lo:#x}-{hi:#x}", (hi - lo) // d.changed.page_size) for lo, hi in d.changed])
    return 0
