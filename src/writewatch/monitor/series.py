"""The monitor's data: mapped regions, one record per sampling interval, the time series and
its summary statistics. Pure values (numpy only); renderers live in other modules."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .. import errors
from ..pages import Pages

__all__ = [
    "CSV_COLUMNS",
    "FORMAT",
    "MB",
    "MIB",
    "UNITS",
    "Interval",
    "MappingChange",
    "Region",
    "Series",
    "Summary",
    "bytes_in",
    "read_csv",
]

FORMAT = "writewatch-monitor"
VERSION = 1
MB = 1_000_000  #: rates are in MB/s: 10**6 bytes per second
#: QEMU's calc-dirty-rate reports "MB/s" computed with 2**20 bytes (migration/dirtyrate.c
#: divides the dirtied bytes by 1 MiB): the monitor's ``MiB`` unit is that one
MIB = 1 << 20
#: rate units the views offer: bytes per unit
UNITS = {"MB": MB, "MiB": MIB}

#: CSV columns, one row per interval
CSV_COLUMNS = ("index", "t_start", "t_end", "pages", "bytes", "rate_mb_s", "working_set_pages",
               "working_set_bytes", "conservative_pages", "new_mappings", "removed_mappings",
               "top_mapping", "processes", "union_pages", "late", "rate_mib_s")


@dataclass(frozen=True)
class Region:
    """One mapping of the target as the monitor saw it (a /proc/PID/maps line or a span)."""

    start: int
    end: int
    label: str = ""  #: file path, "[heap]", "[stack]", "[anon]", or a span label
    perms: str = ""

    @property
    def name(self) -> str:
        """Short display name: the file's base name, or the bracketed kind."""
        if not self.label:
            return "[anon]"
        if self.label.startswith(("/dev/zero", "/SYSV")):
            # shared anonymous memory (mm/shmem.c shmem_zero_setup; ipc/shm.c)
            return "[shmem]"
        if self.label.startswith("/"):
            return os.path.basename(self.label.split(" (deleted)")[0]) or self.label
        return self.label

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def kind(self) -> str:
        """What backs it: "heap", "stack", "anon" (private anonymous), "shmem" (shared
        anonymous, SysV, memfd, /dev/shm), "file", or "other" ([vdso]-style, span labels)."""
        lab = self.label
        if lab == "[heap]":
            return "heap"
        if lab.startswith("[stack"):
            return "stack"
        if not lab or lab == "[anon]":
            return "shmem" if self.perms[3:4] == "s" else "anon"
        if lab.startswith(_SHMEM_LABELS):
            return "shmem"
        return "file" if lab.startswith("/") else "other"

    @property
    def ident(self) -> str:
        """A name that tells mappings of one kind apart: anonymous memory by its start
        address and size (``[anon] 0x7f12a4000000 1.0 GiB``), a memfd by its name
        (``memfd:pc.ram``, as QEMU and Firecracker name guest memory backends), a file by its
        base name."""
        if self.kind in ("anon", "shmem") and not self.label.startswith(("/memfd:",
                                                                          "/dev/shm/")):
            return f"{self.name} {self.start:#x} {_size(self.length)}"
        if self.label.startswith("/memfd:"):
            return self.label[1:].removesuffix(" (deleted)")
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "label": self.label, "perms": self.perms,
                "name": self.ident, "kind": self.kind}


#: labels of shared anonymous memory in /proc/PID/maps (mm/shmem.c shmem_zero_setup,
#: ipc/shm.c, mm/memfd.c "memfd:" names, POSIX shm under /dev/shm)
_SHMEM_LABELS = ("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")


def _size(n: int) -> str:
    """Bytes in binary units: "4.0 KiB", "1.0 GiB"."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if x < 1024:
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} TiB"


@dataclass(frozen=True)
class MappingChange:
    """A mapping that appeared or disappeared between two samples."""

    t: float  #: seconds since the monitor started (time of the sample that saw it)
    kind: str  #: "new" or "removed"
    region: int  #: index into :attr:`Series.regions`


@dataclass(frozen=True)
class Interval:
    """What one sampling interval saw."""

    index: int
    t_start: float  #: seconds since the monitor started
    t_end: float
    written: Pages  #: pages written during the interval
    working_set_pages: int  #: pages written at least once since the monitor started
    #: of ``written``, the pages reported without proof of a write (memory not armed yet:
    #: a new mapping is reported whole by the process trackers)
    conservative: Pages | None = None
    by_region: tuple[tuple[int, int], ...] = ()  #: (region index, pages written), most first
    new_mappings: int = 0
    removed_mappings: int = 0
    #: a process tree: (pid, pages written in its own address space), for every process
    by_process: tuple[tuple[int, int], ...] = ()
    #: pages written in the whole tree, a page of shared memory counted once (0: one process)
    union_pages: int = 0
    forked: tuple[int, ...] = ()  #: processes forked during the interval
    exited: tuple[int, ...] = ()  #: processes that exited during the interval
    #: sampling ticks skipped because this sample came a period or more late (its interval
    #: is then longer; its rate uses the measured length)
    late: int = 0
    delay: float = 0.0  #: seconds after its due time the sample started
    collect_s: float = 0.0  #: seconds the collect took (the monitor's own cost per sample)

    def was_late(self, interval: float) -> bool:
        """Started more than a tenth of the period after it was due."""
        return bool(self.late) or self.delay > interval / 10

    @property
    def tree_pages(self) -> int:
        """Pages written in the whole tree (the root's own when it is one process)."""
        return self.union_pages or self.pages

    @property
    def tree_rate(self) -> float:
        """Dirty rate of the whole tree, MB/s, shared pages counted once."""
        return self.tree_pages * self.written.page_size / MB / self.dt if self.dt > 0 else 0.0

    @property
    def dt(self) -> float:
        return self.t_end - self.t_start

    @property
    def conservative_pages(self) -> int:
        return len(self.conservative) if self.conservative is not None else 0

    @property
    def proven(self) -> Pages:
        """``written`` without the conservative pages: pages the kernel saw written."""
        return self.written - self.conservative if self.conservative else self.written

    @property
    def pages(self) -> int:
        return len(self.written)

    @property
    def nbytes(self) -> int:
        return self.written.nbytes

    @property
    def rate(self) -> float:
        """Dirty rate over the interval, MB/s (10**6 bytes/s)."""
        return self.nbytes / MB / self.dt if self.dt > 0 else 0.0

    @property
    def bytes_per_second(self) -> float:
        """Dirty rate over the interval, bytes/s."""
        return self.nbytes / self.dt if self.dt > 0 else 0.0

    @property
    def tree_bytes_per_second(self) -> float:
        """Dirty rate of the whole tree, bytes/s, shared pages counted once."""
        return self.tree_pages * self.written.page_size / self.dt if self.dt > 0 else 0.0


@dataclass(frozen=True)
class Summary:
    duration: float  #: seconds from the first to the last sample
    intervals: int
    pages_written: int  #: sum over intervals (a page written in 3 intervals counts 3 times)
    bytes_written: int
    working_set_pages: int  #: distinct pages written at least once
    working_set_bytes: int
    #: of the working set, pages only ever reported conservatively (maybe never written)
    working_set_conservative_pages: int
    peak_rate: float  #: MB/s, the fastest interval
    mean_rate: float  #: MB/s, bytes written / duration
    p50_rate: float
    p95_rate: float
    conservative_pages: int
    top: tuple[tuple[str, int, int], ...]  #: (mapping name, pages written, working-set pages)
    processes: tuple[tuple[int, int], ...] = ()  #: (pid, pages written), a tree's members
    tree_pages: int = 0  #: pages written in the whole tree, summed over intervals
    tree_mean_rate: float = 0.0  #: MB/s over the whole tree
    forks: int = 0
    exits: int = 0
    late_samples: int = 0  #: samples taken late (their ticks were skipped)
    skipped_ticks: int = 0
    #: (mapping, pages written, working-set pages) per distinct mapping (:attr:`Region.ident`:
    #: anonymous mappings told apart by address and size)
    top_mappings: tuple[tuple[str, int, int], ...] = ()
    collect_p50: float = 0.0  #: seconds, median duration of a collect
    collect_max: float = 0.0  #: seconds, the longest collect

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["top"] = [{"mapping": n, "pages_written": p, "working_set_pages": w}
                    for n, p, w in self.top]
        d["processes"] = [{"pid": p, "pages_written": n} for p, n in self.processes]
        d["top_mappings"] = [{"mapping": n, "pages_written": p, "working_set_pages": w}
                             for n, p, w in self.top_mappings]
        return d


def bytes_in(ranges: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Bytes of the sorted, disjoint ``[start, end)`` ``ranges`` inside each ``[lo[i], hi[i])``
    (vectorised: the cumulative covered length at ``hi`` minus that at ``lo``)."""
    lo = np.asarray(lo, np.int64)
    hi = np.asarray(hi, np.int64)
    if len(ranges) == 0:
        return np.zeros(np.broadcast(lo, hi).shape, np.int64)
    r = ranges.astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(r[:, 1] - r[:, 0])])

    def below(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(r[:, 0], x, side="right") - 1
        inside = np.where(i >= 0, np.clip(x - r[np.maximum(i, 0), 0], 0,
                                          r[np.maximum(i, 0), 1] - r[np.maximum(i, 0), 0]), 0)
        return np.where(i >= 0, cum[np.maximum(i, 0)] + inside, 0)

    out: np.ndarray = below(hi) - below(lo)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile, as ``np.percentile`` computes it by default (linear between the
    two nearest ranks), which is not called: its ``np.unique`` imports ``numpy.ma``, 30 ms of
    the command's start-up (numpy 2.x)."""
    if not len(values):
        return 0.0
    s = np.sort(np.asarray(values, float))
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


@dataclass
class Series:
    """The monitor's time series: regions seen, one :class:`Interval` per sample, mapping
    changes. Built by :class:`writewatch.monitor.Sampler`; rendered by :meth:`write_json`,
    :meth:`write_csv`, :meth:`heatmap`, :meth:`plot`; read back by :meth:`from_dict`."""

    page_size: int
    interval: float  #: the requested sampling interval, seconds
    target: str = ""  #: what was monitored ("pid 1234 (redis-server)", ...)
    backend: str = ""
    started_at: float = 0.0  #: wall-clock time (Unix seconds) of the first sample
    regions: list[Region] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    changes: list[MappingChange] = field(default_factory=list)
    ended: str = ""  #: why sampling stopped: "duration", "target exited", "interrupted"...
    exit_status: int | None = None  #: the target's exit status, when it exited and is known
    #: seconds from the last sample to when the target was found gone: what it wrote in that
    #: time could not be read (its memory went with it)
    unseen_s: float = 0.0
    notes: list[str] = field(default_factory=list)  #: conservative-report reasons, once each
    #: the ``mapping=`` focus: only pages of these mappings were kept ("" when none)
    mapping: str = ""
    _ws: Pages | None = field(default=None, repr=False)

    # -- derived ----------------------------------------------------------------------------
    @property
    def working_set(self) -> Pages:
        """Every page written at least once (the union over intervals)."""
        if self._ws is None:
            ws = Pages((), self.page_size)
            for iv in self.intervals:
                ws = ws | iv.written
            self._ws = ws
        return self._ws

    @property
    def proven_working_set(self) -> Pages:
        """Pages reported written at least once other than conservatively."""
        ws = Pages((), self.page_size)
        for iv in self.intervals:
            ws = ws | iv.proven
        return ws

    @property
    def duration(self) -> float:
        if not self.intervals:
            return 0.0
        return self.intervals[-1].t_end - self.intervals[0].t_start

    def region_pages(self) -> dict[int, int]:
        """Region index -> pages written over all intervals."""
        out: dict[int, int] = {}
        for iv in self.intervals:
            for r, n in iv.by_region:
                out[r] = out.get(r, 0) + n
        return out

    def by_name(self, key: str = "name") -> list[tuple[str, int, int]]:
        """(mapping name, pages written, working-set pages), most written first. ``key``:
        "name" groups mappings of one name (every anonymous mapping is ``[anon]``); "ident"
        tells them apart (:attr:`Region.ident`)."""
        written: dict[str, int] = {}
        for r, n in self.region_pages().items():
            name = getattr(self.regions[r], key) if r >= 0 else "[unmapped]"
            written[name] = written.get(name, 0) + n
        ws = self.working_set.ranges
        wsn: dict[str, int] = {}
        if self.regions:
            lo = np.array([g.start for g in self.regions])
            hi = np.array([g.end for g in self.regions])
            # regions of one name may overlap in time (a heap that grew): count pages once
            for name in written:
                idx = [i for i, g in enumerate(self.regions) if getattr(g, key) == name]
                if not idx:
                    continue
                cover = Pages(np.stack([lo[idx], hi[idx]], axis=1).astype(np.uint64),
                              self.page_size)
                wsn[name] = int(bytes_in(ws, cover.ranges[:, 0].astype(np.int64),
                                         cover.ranges[:, 1].astype(np.int64)).sum()
                                ) // self.page_size
        return sorted(((n, p, wsn.get(n, 0)) for n, p in written.items()),
                      key=lambda t: (-t[1], t[0]))

    def process_pages(self) -> dict[int, int]:
        """pid -> pages written over all intervals (trees)."""
        out: dict[int, int] = {}
        for iv in self.intervals:
            for pid, n in iv.by_process:
                out[pid] = out.get(pid, 0) + n
        return out

    def summary(self, top: int = 8) -> Summary:
        rates = [iv.rate for iv in self.intervals]
        total = sum(iv.nbytes for iv in self.intervals)
        dur = self.duration
        ws = self.working_set
        tree = sum(iv.tree_pages for iv in self.intervals)
        procs = sorted(self.process_pages().items(), key=lambda kv: (-kv[1], kv[0]))
        return Summary(
            duration=dur, intervals=len(self.intervals),
            pages_written=sum(iv.pages for iv in self.intervals), bytes_written=total,
            working_set_pages=len(ws), working_set_bytes=ws.nbytes,
            working_set_conservative_pages=len(ws - self.proven_working_set),
            peak_rate=max(rates, default=0.0), mean_rate=total / MB / dur if dur > 0 else 0.0,
            p50_rate=_pct(rates, 50), p95_rate=_pct(rates, 95),
            conservative_pages=sum(iv.conservative_pages for iv in self.intervals),
            top=tuple(self.by_name()[:top]), processes=tuple(procs), tree_pages=tree,
            top_mappings=tuple(self.by_name("ident")[:top]),
            tree_mean_rate=tree * self.page_size / MB / dur if dur > 0 else 0.0,
            forks=sum(len(iv.forked) for iv in self.intervals),
            exits=sum(len(iv.exited) for iv in self.intervals),
            late_samples=sum(1 for iv in self.intervals if iv.was_late(self.interval)),
            skipped_ticks=sum(iv.late for iv in self.intervals),
            collect_p50=_pct([iv.collect_s for iv in self.intervals], 50),
            collect_max=max((iv.collect_s for iv in self.intervals), default=0.0))

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "target": self.target, "backend": self.backend, "page_size": self.page_size,
            "interval": self.interval, "started_at": self.started_at, "ended": self.ended,
            "exit_status": self.exit_status, "unseen_s": self.unseen_s,
            "notes": list(self.notes),
            "mapping": self.mapping,
            "summary": self.summary().to_dict(),
            "regions": [g.to_dict() for g in self.regions],
            "changes": [{"t": c.t, "kind": c.kind, "region": c.region} for c in self.changes],
            "intervals": [{
                "index": iv.index, "t_start": iv.t_start, "t_end": iv.t_end,
                "pages": iv.pages, "bytes": iv.nbytes, "rate_mb_s": iv.rate,
                "bytes_per_second": iv.bytes_per_second,
                "working_set_pages": iv.working_set_pages,
                "conservative_pages": iv.conservative_pages,
                "conservative_ranges": (iv.conservative.ranges.tolist()
                                        if iv.conservative is not None else []),
                "new_mappings": iv.new_mappings, "removed_mappings": iv.removed_mappings,
                "by_region": [[r, n] for r, n in iv.by_region],
                "ranges": iv.written.ranges.tolist(),
                "by_process": [[p, n] for p, n in iv.by_process],
                "union_pages": iv.union_pages, "forked": list(iv.forked),
                "exited": list(iv.exited), "late": iv.late, "delay": iv.delay,
                "collect_s": iv.collect_s,
            } for iv in self.intervals],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Series:
        if d.get("format") != FORMAT:
            raise errors.InvalidTarget(
                f"not a {FORMAT} document (format={d.get('format')!r})",
                hint="pass a file written by `writewatch run/attach --json`")
        ps = int(d["page_size"])
        s = cls(page_size=ps, interval=float(d["interval"]), target=d.get("target", ""),
                backend=d.get("backend", ""), started_at=float(d.get("started_at", 0.0)),
                ended=d.get("ended", ""), exit_status=d.get("exit_status"),
                unseen_s=float(d.get("unseen_s", 0.0)),
                notes=list(d.get("notes", ())), mapping=d.get("mapping", ""))
        s.regions = [Region(int(g["start"]), int(g["end"]), g.get("label", ""),
                            g.get("perms", "")) for g in d["regions"]]
        s.changes = [MappingChange(float(c["t"]), c["kind"], int(c["region"]))
                     for c in d.get("changes", ())]
        s.intervals = [Interval(
            index=int(i["index"]), t_start=float(i["t_start"]), t_end=float(i["t_end"]),
            written=Pages(np.asarray(i["ranges"], np.uint64).reshape(-1, 2), ps),
            working_set_pages=int(i["working_set_pages"]),
            conservative=Pages(np.asarray(i.get("conservative_ranges", []), np.uint64
                                          ).reshape(-1, 2), ps),
            by_region=tuple((int(r), int(n)) for r, n in i.get("by_region", ())),
            new_mappings=int(i.get("new_mappings", 0)),
            removed_mappings=int(i.get("removed_mappings", 0)),
            by_process=tuple((int(p), int(n)) for p, n in i.get("by_process", ())),
            union_pages=int(i.get("union_pages", 0)),
            forked=tuple(int(p) for p in i.get("forked", ())),
            exited=tuple(int(p) for p in i.get("exited", ())), late=int(i.get("late", 0)),
            delay=float(i.get("delay", 0.0)), collect_s=float(i.get("collect_s", 0.0)))
            for i in d["intervals"]]
        return s

    def write_json(self, file: IO[str]) -> None:
        import json
        json.dump(self.to_dict(), file, indent=1)
        file.write("\n")

    @classmethod
    def read_json(cls, file: IO[str]) -> Series:
        import json
        return cls.from_dict(json.load(file))

    # -- CSV --------------------------------------------------------------------------------
    def csv_rows(self) -> list[tuple[Any, ...]]:
        rows = []
        for iv in self.intervals:
            top = ""
            if iv.by_region:
                r = iv.by_region[0][0]
                top = self.regions[r].name if r >= 0 else "[unmapped]"
            rows.append((iv.index, f"{iv.t_start:.6f}", f"{iv.t_end:.6f}", iv.pages, iv.nbytes,
                         f"{iv.rate:.6f}", iv.working_set_pages,
                         iv.working_set_pages * self.page_size, iv.conservative_pages,
                         iv.new_mappings, iv.removed_mappings, top, len(iv.by_process) or 1,
                         iv.tree_pages, iv.late, f"{iv.bytes_per_second / MIB:.6f}"))
        return rows

    def write_csv(self, file: IO[str]) -> None:
        w = csv.writer(file, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        w.writerows(self.csv_rows())

    # -- pictures (matplotlib is imported only here) ----------------------------------------
    def heatmap(self, path: str, **kw: Any) -> None:
        """Address × time PNG of the pages written (see :func:`render.heatmap`)."""
        from . import render
        render.heatmap(self, path, **kw)

    def plot(self, path: str, **kw: Any) -> None:
        """Dirty rate over time PNG (see :func:`render.rate_plot`)."""
        from . import render
        render.rate_plot(self, path, **kw)


def read_csv(file: IO[str] | str) -> list[dict[str, Any]]:
    """Rows written by :meth:`Series.write_csv`, with numbers parsed."""
    f = io.StringIO(file) if isinstance(file, str) else file
    out = []
    ints = {"index", "pages", "bytes", "working_set_pages", "working_set_bytes",
            "conservative_pages", "new_mappings", "removed_mappings", "processes",
            "union_pages", "late"}
    for row in csv.DictReader(f):
        out.append({k: int(v) if k in ints else float(v) if k in
                    ("t_start", "t_end", "rate_mb_s", "rate_mib_s") else v for k, v in row.items()})
    return out
