"""Terminal output of the monitor: one plain line per interval, a live rich view, and the
summary printed at the end. Every figure comes from the :class:`Series`."""

from __future__ import annotations

import signal
import sys
from typing import IO, Any

from .series import MB, UNITS, Interval, Series

__all__ = ["LineView", "LiveView", "format_rate", "format_summary", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def in_unit(mb_s: float, unit: str = "MB") -> float:
    """A rate in MB/s (10**6 bytes/s) converted to ``unit``/s ("MB" or "MiB")."""
    return mb_s * MB / UNITS[unit]


def format_rate(mb_s: float, unit: str = "MB") -> str:
    """A dirty rate given in MB/s, shown in ``unit``/s: MB/s (10**6 bytes/s) or MiB/s
    (2**20 bytes/s); below 0.01 of the unit in KB/s (10**3) or KiB/s (2**10)."""
    v = in_unit(mb_s, unit)
    if 0 < v < 0.01:
        return f"{v * 1000:.2f} KB/s" if unit == "MB" else f"{v * 1024:.2f} KiB/s"
    return f"{v:.2f} {unit}/s"


def _tree_note(iv: Interval, unit: str = "MB") -> str:
    parts = []
    if iv.by_process:
        parts.append(f"{len(iv.by_process)} procs, tree {iv.tree_pages} pages "
                     f"{format_rate(iv.tree_rate, unit)}")
    if iv.forked:
        parts.append("forked " + ",".join(map(str, iv.forked)))
    if iv.exited:
        parts.append("exited " + ",".join(map(str, iv.exited)))
    if iv.late:
        parts.append(f"late: {iv.late} tick(s) skipped")
    return "  " + "; ".join(parts) if parts else ""


def by_name(iv: Interval, series: Series, key: str = "name") -> dict[str, int]:
    """Pages written in the interval per mapping name (``key``: "name", or "ident" to tell
    anonymous mappings apart), most first."""
    out: dict[str, int] = {}
    for r, pages in iv.by_region:
        name = getattr(series.regions[r], key) if r >= 0 else "[unmapped]"
        out[name] = out.get(name, 0) + pages
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _top_names(iv: Interval, series: Series, n: int = 3) -> str:
    return ", ".join(f"{name} {pages}" for name, pages in list(by_name(iv, series).items())[:n])


class LineView:
    """One line per interval (for logs, pipes and ``--no-live``)."""

    def __init__(self, file: IO[str] | None = None, unit: str = "MB") -> None:
        self.file = file or sys.stdout
        self.unit = unit
        self._header = False

    def __enter__(self) -> LineView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, iv: Interval, series: Series) -> None:
        if not self._header:
            print(f"{'t(s)':>8} {'pages':>8} {'written':>10} {self.unit + '/s':>9} "
                  f"{'working set':>12}  "
                  "top mappings (pages)", file=self.file)
            self._header = True
        extra = ""
        if iv.new_mappings or iv.removed_mappings:
            extra += f"  maps +{iv.new_mappings}/-{iv.removed_mappings}"
        if iv.conservative_pages:
            extra += f"  conservative {iv.conservative_pages}"
        extra += _tree_note(iv, self.unit)
        print(f"{iv.t_end:8.2f} {iv.pages:8d} {human_bytes(iv.nbytes):>10} "
              f"{in_unit(iv.rate, self.unit):9.2f} "
              f"{human_bytes(iv.working_set_pages * series.page_size):>12}  "
              f"{_top_names(iv, series)}{extra}", file=self.file, flush=True)


class LiveView:
    """A rich live panel, redrawn at each interval: dirty rate, pages in the last interval,
    working set so far, and the mappings written most."""

    def __init__(self, file: IO[str] | None = None, top: int = 10, unit: str = "MB") -> None:
        from rich.console import Console
        from rich.live import Live
        self.console = Console(file=file or sys.stdout)
        self.top = top
        self.unit = unit
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._rates: list[float] = []

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)

    def _spark(self, width: int = 40) -> str:
        bars = " ▁▂▃▄▅▆▇█"
        vals = self._rates[-width:]
        hi = max(vals, default=0.0)
        if hi <= 0:
            return bars[0] * len(vals)
        return "".join(bars[min(8, round(v / hi * 8))] for v in vals)

    def render(self, iv: Interval, series: Series) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        self._rates.append(iv.rate)
        s = series.summary(top=self.top)
        u = self.unit
        head = Text.assemble(
            ("writewatch ", "bold"), (series.target or "", "cyan"),
            f"  backend {series.backend or '?'}  interval {series.interval * 1000:g} ms  "
            f"t={iv.t_end:.1f} s" + (f"  mapping {series.mapping}" if series.mapping else "")
            + "\n",
            ("dirty rate ", ""), (f"{format_rate(iv.rate, u):>15}", "bold red"),
            f"   peak {in_unit(s.peak_rate, u):.2f}  mean {in_unit(s.mean_rate, u):.2f}  "
            f"p95 {in_unit(s.p95_rate, u):.2f} ({u}/s)\n",
            ("pages      ", ""), (f"{iv.pages:10d}", "bold"),
            f"  ({human_bytes(iv.nbytes)} in the last {iv.dt * 1000:.0f} ms)\n",
            ("working set", ""), (f"{human_bytes(s.working_set_bytes):>15}", "bold blue"),
            f"  ({s.working_set_pages} distinct pages written)\n",
            ("rate       ", ""), (self._spark(), "red"))
        tab = Table(title="top mappings by writes", title_justify="left", expand=False)
        tab.add_column("mapping")
        tab.add_column("last interval", justify="right")
        tab.add_column("pages written", justify="right")
        tab.add_column("working set", justify="right")
        last = by_name(iv, series, "ident")
        for name, pages, ws in s.top_mappings:
            tab.add_row(Text(name), str(last.get(name, 0)), str(pages),
                        human_bytes(ws * series.page_size))
        parts: list[Any] = [head, tab]
        if iv.by_process:
            procs = Table(title=f"processes: {len(iv.by_process)}, tree {iv.tree_pages} pages "
                          f"({format_rate(iv.tree_rate, u)}, shared pages once)",
                          title_justify="left", expand=False)
            procs.add_column("pid", justify="right")
            procs.add_column("last interval", justify="right")
            procs.add_column("pages written", justify="right")
            total = dict(s.processes)
            for pid, n in sorted(iv.by_process, key=lambda kv: -kv[1])[:self.top]:
                procs.add_row(str(pid), str(n), str(total.get(pid, n)))
            parts.append(procs)
        foot = Text(f"mappings +{iv.new_mappings}/-{iv.removed_mappings} this interval"
                    + (f", {iv.conservative_pages} conservative pages"
                       if iv.conservative_pages else "")
                    + _tree_note(iv, u) + (f"   late samples {s.late_samples} of "
                                           f"{s.intervals}" if s.late_samples else "")
                    + "   Ctrl-C: stop and summarise", style="dim")
        parts.append(foot)
        return Group(*parts)

    def update(self, iv: Interval, series: Series) -> None:
        self._live.update(self.render(iv, series), refresh=True)


def status_text(code: int) -> str:
    """A ``Popen.returncode`` in words: "exit status 3", "killed by SIGTERM"."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def format_summary(series: Series, unit: str = "MB") -> str:
    """The summary printed at the end of a run; rates in ``unit``/s ("MB": 10**6 bytes/s,
    "MiB": 2**20 bytes/s)."""
    s = series.summary()
    u = unit
    lines = [
        f"summary: {series.target or 'target'} ({series.backend or '?'}), "
        f"{s.intervals} intervals of {series.interval * 1000:g} ms over {s.duration:.2f} s"
        + (f", ended: {series.ended}" if series.ended else "")
        + (f", {status_text(series.exit_status)}" if series.exit_status is not None else ""),
        f"  dirty rate {u}/s ({UNITS[u]} bytes/s): peak {in_unit(s.peak_rate, u):.2f}  "
        f"mean {in_unit(s.mean_rate, u):.2f}  p50 {in_unit(s.p50_rate, u):.2f}  "
        f"p95 {in_unit(s.p95_rate, u):.2f}",
        f"  written: {s.pages_written} pages ({human_bytes(s.bytes_written)}) in total; "
        f"write working set {s.working_set_pages} pages ({human_bytes(s.working_set_bytes)})",
    ]
    if series.unseen_s > 0:
        lines.append(f"  unseen: the target exited within {series.unseen_s:.2f} s after the "
                     f"{'last sample' if s.intervals else 'start'}; what it wrote in that time "
                     "could not be read (its memory went with it)")
    if s.processes:
        lines.append(
            f"  process tree: {len(s.processes)} processes, {s.forks} forks, {s.exits} exits; "
            f"{s.tree_pages} pages written in the tree (shared pages once), mean "
            f"{format_rate(s.tree_mean_rate, u)}")
        for pid, pages in s.processes[:8]:
            lines.append(f"    pid {pid:<8} {pages:>9} pages")
    if s.conservative_pages:
        lines.append(
            f"  conservative: {s.conservative_pages} of the pages written were reported without "
            f"proof of a write (see the notes: {'; '.join(series.notes[:3]) or 'none'}); "
            f"{s.working_set_conservative_pages} pages "
            f"({human_bytes(s.working_set_conservative_pages * series.page_size)}) of the "
            "working set were only ever reported that way")
    lines.append(f"  sampling: {s.intervals} samples; {s.late_samples} late (started more than "
                 f"a tenth of the interval after due), {s.skipped_ticks} tick(s) skipped; "
                 f"collect median {s.collect_p50 * 1e3:.2f} ms, max {s.collect_max * 1e3:.2f} ms")
    changes = len(series.changes)
    if changes:
        new = sum(c.kind == "new" for c in series.changes)
        lines.append(f"  mapping changes: {new} new, {changes - new} removed")
    if series.mapping:
        lines.append(f"  mapping: {series.mapping} (only its pages are counted)")
    if s.top_mappings:
        lines.append("  top mappings (pages written / working set):")
        w = max(len(n) for n, _, _ in s.top_mappings)
        for name, pages, ws in s.top_mappings:
            lines.append(f"    {name:<{w}}  {pages:>9}  {human_bytes(ws * series.page_size):>10}")
    return "\n".join(lines)
