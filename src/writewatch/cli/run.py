"""``writewatch run [options] -- CMD...``: start a program under tracking and monitor it."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from .. import errors
from ._monitor import add_monitor_arguments, outputs

HELP = "run a command under write tracking: live dirty rate, time series, heatmap, trace"

#: exit status when --duration ended the command, as timeout(1) does
TIMEOUT_STATUS = 124
GRACE = 5.0  #: seconds between SIGTERM and SIGKILL when ending the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                        help="the command to run (after --)")
    parser.add_argument("--backend", default="auto",
                        help="tracking mechanism (default: the best this kernel offers)")
    parser.add_argument("--keep-running", action="store_true",
                        help="at the end of --duration, leave the command running (untracked) "
                             "instead of ending it with SIGTERM")
    f = parser.add_mutually_exclusive_group()
    f.add_argument("-f", "--follow-forks", dest="follow_forks", action="store_true",
                   default=True, help="track the processes it forks too (the default)")
    f.add_argument("--no-follow-forks", dest="follow_forks", action="store_false",
                   help="track the command's own process only")
    add_monitor_arguments(parser)


def _status(code: int) -> int:
    """A Popen return code as the shell shows it (a signal n becomes 128+n)."""
    return 128 - code if code < 0 else code


def _poll(proc: Any) -> int | None:
    return proc.poll() if proc is not None and hasattr(proc, "poll") else None


def _wait(proc: Any, timeout: float) -> None:
    import subprocess
    if proc is not None and hasattr(proc, "wait"):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _end(proc: Any, pid: int) -> None:
    """SIGTERM, then SIGKILL after GRACE seconds (to the command's descendants too)."""
    import subprocess
    if hasattr(proc, "end"):  # a launched program: it and what it started
        proc.end(GRACE)
    elif hasattr(proc, "terminate"):
        proc.terminate()
        try:
            proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    else:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def run(args: argparse.Namespace) -> int:
    import writewatch
    from writewatch.monitor import Series, parse_focus

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise errors.InvalidTarget("no command given",
                                   hint="usage: writewatch run [options] -- CMD [ARG...]")
    out = outputs(args)
    parse_focus(args.mapping)  # a malformed spec fails before launching
    kw = {} if args.backend == "auto" else {"backend": args.backend}
    tracker = writewatch.launch(cmd, follow_forks=args.follow_forks, **kw)
    proc = getattr(tracker, "process", None)
    pid = int(getattr(proc, "pid", 0) or getattr(tracker, "pid", 0) or 0)
    ended_by_us = False

    def end(series: Series) -> None:
        """Sampling is over: close the tracker, let the command finish or end it, and
        record its exit status before the summary is printed."""
        nonlocal ended_by_us
        tracker.close()
        if series.ended == "target exited" and _poll(proc) is None:
            # its memory is gone, it is exiting: let it finish (it is not ours to end)
            _wait(proc, GRACE)
        if _poll(proc) is None and not args.keep_running:
            # the duration ended, or the monitor was stopped: the command is ours to end
            ended_by_us = True
            _end(proc, pid)
        code = _poll(proc)
        if code is not None:
            series.exit_status = code
            if not ended_by_us:
                series.ended = "command exited"

    try:
        series = writewatch.monitor(
            tracker, interval=args.interval, duration=args.duration, outputs=out,
            mapping=args.mapping, mapping_now=False,
            target=f"pid {pid} ({os.path.basename(cmd[0])})", pid=pid, argv=cmd,
            alive=lambda: _poll(proc) is None, on_end=end)
    except BaseException:
        tracker.close()
        if _poll(proc) is None and not args.keep_running:
            _end(proc, pid)
        raise
    code = _poll(proc)
    if ended_by_us and series.ended == "duration":
        return TIMEOUT_STATUS
    return _status(code) if code is not None else 0
