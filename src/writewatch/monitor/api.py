"""The monitor's entry point, :func:`monitor`: sample a tracker, show it, write the files.

``writewatch.monitor(tracker, interval=0.1, duration=10, outputs=Outputs(json="s.json"))``
is what ``writewatch run`` and ``writewatch attach`` call after parsing their options.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from .. import errors
from .focus import parse_focus
from .sampler import Sampler
from .series import UNITS, Interval, Series
from .view import LineView, LiveView, format_summary

__all__ = ["VIEWS", "Outputs", "monitor"]

#: how the run is shown while it goes: "auto" (live on a terminal, else lines), "live"
#: (a rich panel), "lines" (one line per interval), "none"
VIEWS = ("auto", "live", "lines", "none")

_FILES = ("json", "csv", "heatmap", "plot", "record", "perfetto")


@dataclass(frozen=True)
class Outputs:
    """What the monitor writes and shows. File fields are paths; ``json`` and ``csv`` also
    take "-" (stdout; the human output then goes to stderr).

    ``record``: the model's trace format (``.zst``: compressed); ``perfetto``: a Perfetto
    trace (needs the ``perfetto`` package); ``heatmap``/``plot``: PNGs (matplotlib);
    ``view``: one of :data:`VIEWS`; ``summary``: print the summary (and the files written)
    at the end; ``unit``: rates in "MB" (10**6 bytes/s) or "MiB" (2**20 bytes/s)."""

    json: str | None = None
    csv: str | None = None
    heatmap: str | None = None
    plot: str | None = None
    record: str | None = None
    perfetto: str | None = None
    view: str = "none"
    summary: bool = False
    unit: str = "MB"

    def check(self) -> None:
        """Raise :class:`writewatch.InvalidTarget` for an output that cannot be written (its
        directory missing or read-only, two outputs on stdout, an unknown view or unit, a
        missing package), before anything is started."""
        for opt in _FILES:
            path = getattr(self, opt)
            if not path or (path == "-" and opt in ("json", "csv")):
                continue
            if os.path.isdir(path):
                raise errors.InvalidTarget(f"--{opt} {path} is a directory",
                                           hint="give a file name (in that directory, say)")
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d) or not os.access(d, os.W_OK):
                raise errors.InvalidTarget(f"--{opt} {path}: directory {d} is not writable",
                                           hint="give a path in an existing, writable "
                                                "directory")
        if self.json == "-" and self.csv == "-":
            raise errors.InvalidTarget("--json - and --csv - both want stdout",
                                       hint="write one of them to a file")
        if self.view not in VIEWS:
            raise errors.InvalidTarget(f"unknown view {self.view!r}",
                                       hint=f"one of {', '.join(VIEWS)}")
        if self.unit not in UNITS:
            raise errors.InvalidTarget(f"unknown rate unit {self.unit!r}",
                                       hint=f"one of {', '.join(UNITS)}")
        if self.perfetto:
            try:
                import perfetto.trace_builder.proto_builder  # noqa: F401
            except ImportError:
                raise errors.InvalidTarget(
                    "--perfetto needs the perfetto package",
                    hint="pip install 'writewatch[perfetto]'") from None

    @property
    def human(self) -> IO[str]:
        """Where the view, the summary and "wrote FILE" lines go."""
        return sys.stderr if "-" in (self.json, self.csv) else sys.stdout


@contextlib.contextmanager
def _on_sigterm(action: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGHUP stop the sampling the way Ctrl-C does (summary and files written)."""
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, lambda *_: action())
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _view(out: Outputs) -> Any:
    human = out.human
    if out.view == "none":
        return None
    if out.view == "live" or (out.view == "auto" and human.isatty()):
        return LiveView(human, unit=out.unit)
    return LineView(human, unit=out.unit)


def _write_files(series: Series, out: Outputs) -> None:
    human = out.human
    for opt, fn in (("json", series.write_json), ("csv", series.write_csv)):
        path = getattr(out, opt)
        if not path:
            continue
        if path == "-":
            fn(sys.stdout)
            sys.stdout.flush()
            continue
        with open(path, "w", encoding="utf-8") as f:
            fn(f)
        if out.summary:
            print(f"wrote {path}", file=human)
    for opt, draw in (("heatmap", series.heatmap), ("plot", series.plot)):
        path = getattr(out, opt)
        if path:
            draw(path)
            if out.summary:
                print(f"wrote {path}", file=human)


class _Streams:
    """The files written as the run goes (the model trace, the Perfetto trace)."""

    def __init__(self, sampler: Sampler, out: Outputs, pid: int | None,
                 argv: Sequence[str] | None, target: str) -> None:
        self.sampler = sampler
        self.recorder: Any = None
        self.perfetto: Any = None
        if out.record:
            from .record import TraceRecorder
            self.recorder = TraceRecorder(out.record, sampler.series.page_size, pid=pid,
                                          argv=argv, source=f"monitor:{target}")
        if out.perfetto:
            from .perfetto import PerfettoWriter
            self.perfetto = PerfettoWriter(out.perfetto, pid=pid, target=target)

    def start(self, series: Series) -> None:
        if self.recorder is not None:
            self.recorder.maps(0.0, self.sampler.regions)

    def update(self, iv: Interval, series: Series) -> None:
        if self.recorder is not None:
            self.recorder.update(iv, series, self.sampler.regions)
        if self.perfetto is not None:
            last = getattr(self.sampler.source, "last", None)
            execd = tuple(getattr(last, "execd", ()) or ())
            self.perfetto.update(iv, series, execd)

    def close(self) -> None:
        for w in (self.recorder, self.perfetto):
            if w is not None:
                w.close()


def _check_times(interval: Any, duration: Any) -> None:
    for name, v in (("interval", interval), ("duration", duration)):
        if name == "duration" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise errors.InvalidTarget(f"{name} {v!r} is not a positive, finite number of "
                                       "seconds", hint=f"give the {name} in seconds, e.g. 1.0")


def monitor(source: Any, *, interval: float = 1.0, duration: float | None = None,
            outputs: Outputs | None = None, mapping: str | Iterable[str] | None = None,
            mapping_now: bool = True, target: str = "", pid: int | None = None,
            argv: Sequence[str] | None = None,
            alive: Callable[[], bool] | None = None,
            on_interval: Callable[[Interval, Series], None] | None = None,
            on_end: Callable[[Series], None] | None = None) -> Series:
    """Sample ``source`` every ``interval`` seconds and return the time series.

    Args:
        source: a tracker (:func:`writewatch.attach`, :func:`writewatch.launch`,
            :func:`writewatch.track`), or anything with ``collect() -> Pages``. It is not
            closed here.
        interval: seconds between samples (at least 0.01).
        duration: stop after this many seconds; None: until the target exits, Ctrl-C,
            SIGTERM/SIGHUP (in the main thread) or :meth:`Sampler.stop`.
        outputs: files to write and what to show (:class:`Outputs`); default: nothing.
        mapping: keep only the pages of these mappings (:mod:`writewatch.monitor.focus`:
            a label, a path, ``0xSTART-0xEND`` or ``largest``).
        mapping_now: a label or path must match a mapping at the first sample (false for a
            program just started, whose mappings come later).
        target: a description for the outputs ("pid 1234 (redis-server)").
        pid, argv: the target's, recorded in the traces.
        alive: polled every 50 ms between samples; false ends sampling (the target exited).
        on_interval: called with each interval as it is recorded.
        on_end: called once sampling ended, before the summary and the files are written
            (``writewatch run`` ends its command there and records its exit status).

    Raises :class:`writewatch.InvalidTarget` for bad arguments before sampling starts; an
    error of the tracker during sampling ends it and is recorded in ``series.ended``.
    """
    _check_times(interval, duration)
    if outputs is not None and not isinstance(outputs, Outputs):
        raise errors.InvalidTarget(f"outputs={outputs!r} is not an Outputs",
                                   hint="give writewatch.monitor.Outputs(json=..., csv=...)")
    out = outputs or Outputs()
    out.check()
    focus = parse_focus(mapping)
    sampler = Sampler(source, interval, target=target, alive=alive, focus=focus,
                      focus_now=mapping_now)
    view = _view(out)
    streams = _Streams(sampler, out, pid, argv, target)

    def each(iv: Interval, series: Series) -> None:
        streams.update(iv, series)
        if view is not None:
            view.update(iv, series)
        if on_interval is not None:
            on_interval(iv, series)

    try:
        with _on_sigterm(sampler.stop), (view or contextlib.nullcontext()):
            series = sampler.run(duration, each, on_start=streams.start)
    finally:
        streams.close()
    if on_end is not None:
        on_end(series)
    if out.summary:
        print(format_summary(series, out.unit), file=out.human, flush=True)
        for opt in ("record", "perfetto"):
            if getattr(out, opt):
                print(f"wrote {getattr(out, opt)}", file=out.human)
    _write_files(series, out)
    return series
