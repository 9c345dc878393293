"""``writewatch`` / ``python -m writewatch``: dispatch to one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import WriteWatchError, __version__
from . import COMMANDS


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; given ``argv`` naming one, of that one only (the
    others' modules are not imported: the model's alone takes a quarter of a second)."""
    parser = argparse.ArgumentParser(
        prog="writewatch",
        description="Precise page-level write tracking for Linux.")
    parser.add_argument("--version", action="version", version=f"writewatch {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = list(COMMANDS)
    first = next((a for a in argv or () if not a.startswith("-")), None)
    if first is not None and first.replace("-", "_") in COMMANDS:
        names = [first.replace("-", "_")]  # only its module is imported
    for name in names:
        mod = importlib.import_module(f"{__package__}.{name}")
        p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every error becomes one line on stderr and a non-zero status (``--debug``: with the
    traceback); Ctrl-C at any point ends quietly with 130, as a shell reports SIGINT."""
    command = "writewatch"
    if argv is None:
        argv = sys.argv[1:]
    debug = "--debug" in argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        command = f"writewatch {args.command}"
        return int(args._run(args) or 0)
    except (WriteWatchError, OSError) as exc:
        if debug:
            import traceback
            traceback.print_exc()
        if isinstance(exc, BrokenPipeError):
            return _broken_pipe()
        what = exc if isinstance(exc, WriteWatchError) else \
            f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"
        print(f"{command}: error: {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _broken_pipe() -> int:
    """stdout closed early (e.g. piped into head): not an error of ours."""
    import os
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
