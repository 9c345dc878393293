"""``writewatch snapshots``: list (verify, prune) the snapshots of a store."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._fmt import dump_json, human_bytes, table

HELP = "list the snapshots in a store; --verify checks every chunk, --prune N keeps N"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="snapshot store directory")
    parser.add_argument("--verify", action="store_true",
                        help="check every manifest and chunk checksum and every chain")
    parser.add_argument("--prune", type=int, default=0, metavar="N",
                        help="keep the newest N snapshots, delete the rest (takes the lock)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _precopy(i: object) -> str:
    info: Any = i
    if info.converged is None:
        return ""
    return f"{info.rounds} rounds, {'converged' if info.converged else 'not converged'}"


def run(args: argparse.Namespace) -> int:
    from ..snapshot import Snapshots
    snaps = Snapshots(args.store)
    if args.prune:
        gone = snaps.prune(args.prune)
        print(f"deleted {len(gone)} snapshot(s)")
    infos = snaps.list()
    report = snaps.verify() if args.verify else None
    if args.json:
        dump_json({"snapshots": [i.__dict__ for i in infos],
                   "problems": [str(p) for p in report.problems] if report else None})
        return 0 if report is None or report.ok else 1
    table(f"Snapshots in {args.store}",
          ["name", "kind", "parent", "created", "pages", "stored", "dedup", "image",
           "regions", "pause", "pre-copy"],
          [_row(i) for i in infos])
    ok = [i for i in infos if not i.damaged]
    total = sum(i.stored_bytes for i in ok)
    dedup = sum(i.dedup_bytes for i in ok)
    print(f"{len(infos)} snapshot(s): {human_bytes(total)} stored, "
          f"{human_bytes(dedup)} deduplicated")
    if report is not None:
        if report.ok:
            print(f"verified {report.snapshots} snapshot(s), {report.chunks} chunk(s): ok")
        else:
            for p in report.problems:
                print(f"damaged: {p}")
            return 1
    elif len(ok) < len(infos):
        for i in infos:
            if i.damaged:
                print(f"damaged: {i.damaged}")
        print("run with --verify to check every chunk as well")
        return 1
    return 0


def _row(i: Any) -> tuple[object, ...]:
    if i.damaged:
        return (i.name, "damaged", "", "", "", "", "", "", "", "", i.damaged)
    return (i.name, i.kind if i.kind == "full" else f"delta ({i.delta_by})", i.parent or "",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created)),
            i.pages, human_bytes(i.stored_bytes), human_bytes(i.dedup_bytes),
            human_bytes(i.image_bytes), i.regions,
            f"{i.pause * 1e3:.1f} ms" if i.pause is not None else "", _precopy(i))
