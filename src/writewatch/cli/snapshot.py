"""``writewatch snapshot``: incremental memory snapshots of a process, every interval."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from .. import errors
from ._fmt import human_bytes

HELP = "save incremental memory snapshots of a process (PID, or -- CMD) into a store"

_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*", text)
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 5s, 500ms, 2m)")
    return float(m[1]) * _UNITS[m[2] or "s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Save the memory of a process (every writable mapping plus the mapping list) into a "
        "snapshot store: the first snapshot in full, then only the pages written since the "
        "previous one. The process is stopped only while the written pages are read. "
        "Give a PID, or `-- CMD ARGS...` to start a program under tracking (it runs to its "
        "end; --count only stops the snapshots).")
    parser.add_argument("target", nargs="*", metavar="PID | -- CMD",
                        help="process id, or a command after --")
    parser.add_argument("--store", required=True, metavar="DIR", help="snapshot store directory")
    parser.add_argument("--every", type=parse_duration, default=5.0, metavar="DURATION",
                        help="interval between snapshots (default 5s)")
    parser.add_argument("--count", type=int, default=0, metavar="N",
                        help="stop after N snapshots (default: until the process exits)")
    parser.add_argument("--keep", type=int, default=0, metavar="N",
                        help="keep only the newest N snapshots (older ones compacted away)")
    parser.add_argument("--compress", choices=["zstd"], default=None, help="compress chunks")
    parser.add_argument("--backend", default="auto", help="write-tracking backend")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on long saves (default: on a terminal)")
    t = parser.add_argument_group("process trees")
    t.add_argument("--tree", action="store_true",
                   help="snapshot the process and all its descendants at one pause")
    t.add_argument("-f", "--follow-forks", action="store_true",
                   help="include the processes it forks from now on")
    t.add_argument("--shared", choices=["fail", "pause"], default="fail",
                   help="when a process outside the snapshot maps its shared memory "
                        "writable: fail (default), or stop it too during each save")
    parser.add_argument("--verify-live", action="store_true",
                        help="after each save, compare the snapshot with a full read of the "
                             "memory taken in the same pause (slow; fails on any difference)")
    p = parser.add_argument_group("pause and chains")
    p.add_argument("--max-pause", type=parse_duration, default=None, metavar="DURATION",
                   help="pre-copy: read while the process runs, re-read what it writes "
                        "meanwhile, and stop it only for what is left, aiming at this pause "
                        "(e.g. 20ms); default: stop it for every page of a save")
    p.add_argument("--precopy-rounds", type=int, default=12, metavar="N",
                   help="with --max-pause: stop anyway after N rounds (default 12)")
    p.add_argument("--full", action="store_true",
                   help="make the first snapshot a full base even when the store holds "
                        "snapshots of this process (default: continue its chain by content)")


def _check(args: argparse.Namespace) -> list[str]:
    """Every option checked before anything is started or attached."""
    target = list(args.target)
    if target and target[0] == "--":
        target = target[1:]
    if not target:
        raise errors.InvalidTarget("no process given", hint="give a PID or -- CMD ARGS")
    for name in ("count", "keep", "precopy_rounds"):
        if getattr(args, name) < 0:
            raise errors.InvalidTarget(f"--{name.replace('_', '-')} {getattr(args, name)}: "
                                       "takes N >= 0")
    return target


def run(args: argparse.Namespace) -> int:
    from ..snapshot import DirStore, Snapshotter
    target = _check(args)
    # the store is opened (created) and locked before a command is started or a process
    # attached: a bad --store or a store another writer holds fails first
    store = DirStore(args.store)
    try:
        store.acquire()
        return _snapshots(args, target, store, Snapshotter)
    finally:
        store.close()


def _snapshots(args: argparse.Namespace, target: list[str], store: object,
               snapshotter: type) -> int:
    process = None
    if len(target) == 1 and target[0].isdigit():
        what: object = int(target[0])
        if args.tree or args.follow_forks:
            from ..process import attach
            what = attach(int(target[0]), args.backend, tree=args.tree,
                          follow_forks=args.follow_forks)
    else:
        from ..process import launch
        what = launch(target, args.backend, follow_forks=args.follow_forks)
        process = what.process
    n = 0
    try:
        with snapshotter(what, store, compress=args.compress, backend=args.backend,
                         progress=args.progress, shared=args.shared,
                         max_pause=args.max_pause, precopy_rounds=args.precopy_rounds) as snap:
            pid = snap.source.pid
            why = getattr(snap.source, "untracked_reason", None)
            if why:
                print(f"note: no write tracker on {pid} ({why}); pages are compared by "
                      "content hash", file=sys.stderr)
            next_at = time.monotonic()
            while True:
                try:
                    info = snap.save(verify=args.verify_live, full=args.full and n == 0)
                except errors.NoSuchProcess:
                    print(f"process {pid} exited", file=sys.stderr)
                    break
                n += 1
                print(_line(info), flush=True)
                if args.keep:
                    snap.prune(args.keep)
                if args.count and n >= args.count:
                    break
                next_at += args.every
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if process is not None and process.poll() is not None:
                    print(f"process {pid} exited with status {process.returncode}",
                          file=sys.stderr)
                    break
    finally:
        close = getattr(what, "close", None)
        if close is not None:
            close()
        if process is not None and process.poll() is None:
            # like `time CMD`: a program started here runs to its end
            process.wait()
    return 0


def _line(info: object) -> str:
    """One line per save: what it stored and how long the process was stopped."""
    i: Any = info
    kind = i.kind if i.kind == "full" else f"delta by {i.delta_by}"
    out = (f"{i.name} {kind:17} {i.pages} pages, stored {human_bytes(i.stored_bytes)} of "
           f"{human_bytes(i.image_bytes)}")
    if i.dedup_bytes:
        out += f" ({human_bytes(i.dedup_bytes)} deduplicated)"
    if i.pause is not None:
        out += f", paused {i.pause * 1e3:.1f} ms"
    if i.converged is not None:
        state = "converged" if i.converged else "did not converge"
        out += f" (pre-copy: {i.rounds} rounds, {state}, {human_bytes(i.reread_bytes)} re-read)"
    return out
