"""``writewatch restore``: write the memory of one snapshot to an image file."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .. import errors
from ._fmt import human_bytes

HELP = "write a snapshot's memory to an image file (restoring a live process is CRIU's job)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Reconstruct the memory of SNAPSHOT (base + deltas) and write it to FILE: the "
        "regions back to back (a buffer snapshot: exactly the buffer's bytes). For a process "
        "image FILE.maps.json lists each region (address, size, permissions, file, offset in "
        "FILE) and every mapping of the process. This does not put memory back into a "
        "running process: restoring a live process (registers, descriptors, threads) is "
        "CRIU's job.")
    parser.add_argument("store", metavar="STORE", help="snapshot store directory")
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name, number or latest")
    parser.add_argument("--out", required=True, metavar="FILE", help="image file to write")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on long restores (default: on a terminal)")


def _check_out(path: str) -> None:
    """The image file can be written where asked: checked before anything is restored."""
    if os.path.isdir(path):
        raise errors.InvalidTarget(f"--out {path} is a directory",
                                   hint="give a file name, e.g. --out image.bin")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise errors.InvalidTarget(f"--out {path}: directory {parent} does not exist",
                                   hint="create it first, or write the image elsewhere")
    if not os.access(parent, os.W_OK):
        raise errors.PermissionDenied(f"--out {path}: cannot write in {parent}")


def _write(path: str, data: Any, text: bool = False) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w" if text else "wb") as f:
            if text:
                json.dump(data, f, indent=1)
            else:
                f.write(data)
    except OSError as exc:
        raise errors.KernelError(f"cannot write {path}: {exc.strerror or exc}",
                                 errno=exc.errno) from None


def run(args: argparse.Namespace) -> int:
    from ..snapshot import Snapshots
    _check_out(args.out)
    snaps = Snapshots(args.store)
    img = snaps.restore(args.snapshot, progress=args.progress)
    _write(args.out, img.data.data)
    m = snaps.manifest(img.name)
    if m.source.get("kind") == "process" or len(img.regions) > 1:
        side = {
            "snapshot": img.name, "source": m.source, "page_size": m.page_size,
            "regions": [dict(r.to_json(), file_offset=o)
                        for r, o in zip(img.regions, img.offsets, strict=True)],
            "maps": [r.to_json() for r in img.maps],
        }
        _write(args.out + ".maps.json", side, text=True)
    print(f"{img.name}: {len(img.regions)} region(s), {human_bytes(img.data.nbytes)} "
          f"-> {args.out}")
    return 0
