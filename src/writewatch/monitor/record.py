"""``--record FILE``: the monitored run as a trace in the model's format
(:mod:`writewatch.model.trace`): a ``maps`` line with the writable mappings at the start and
whenever they change, and a ``written`` line with the pages found written per interval, so
``writewatch model compare --workload trace:FILE`` can replay it.

A ``written`` line holds the pages inside the writable mappings of the ``maps`` line before
it; pages written in memory that was unmapped or made read-only before the monitor read the
mappings are counted in its ``outside`` key instead (the JSON time series keeps them all)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

from ..pages import Pages
from .series import Interval, Region, Series

__all__ = ["TraceRecorder", "maps_entry"]

#: labels of shared anonymous memory in /proc/PID/maps (mm/shmem.c, ipc/shm.c, mm/memfd.c)
_SHMEM_PREFIXES = ("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")


def maps_entry(g: Region) -> list[Any]:
    """``[start, end, perms, kind-or-path]`` as the trace's ``maps`` op wants it."""
    label = g.label
    if not label.startswith("/") or label.startswith(_SHMEM_PREFIXES[:3]):
        shared = len(g.perms) == 4 and g.perms[3] == "s"
        kind = "shmem" if shared or label.startswith(_SHMEM_PREFIXES[:3]) else "anon"
    else:
        kind = label
    return [g.start, g.end, g.perms or "rw-p", kind]


class TraceRecorder:
    """Writes the trace as the sampler goes (so a killed monitor leaves a usable prefix)."""

    def __init__(self, path: str | os.PathLike[str], page_size: int, *, pid: int | None = None,
                 argv: Sequence[str] | None = None, source: str = "") -> None:
        from ..model.trace import TraceHeader, TraceWriter
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._w = TraceWriter(path, TraceHeader(
            page_size=page_size, source=source or "writewatch-monitor", pid=pid,
            argv=list(argv) if argv else None, created=created))
        self._maps: list[list[Any]] | None = None

    def _writable(self, regions: Sequence[Region]) -> list[list[Any]]:
        return [maps_entry(g) for g in sorted(regions, key=lambda g: g.start)
                if not g.perms or g.perms[1] == "w"]

    def maps(self, t: float, regions: Sequence[Region]) -> None:
        """Record the mapping set at ``t`` if it differs from the last one recorded."""
        entries = self._writable(regions)
        if entries != self._maps:
            self._w.op("maps", t=round(t, 6), maps=entries)
            self._maps = entries

    def update(self, iv: Interval, series: Series, regions: Sequence[Region]) -> None:
        """Record one interval: the mapping set read at its end (if changed: mappings that
        appeared during the interval must exist before their writes are replayed), then the
        pages written."""
        self.maps(iv.t_end, regions)
        ps = iv.written.page_size
        mapped = Pages([(e[0], e[1]) for e in self._maps or ()], ps)
        inside = iv.written & mapped
        extra = {}
        if len(inside) != len(iv.written):
            # pages of memory unmapped or made read-only before the maps were read (e.g. a
            # RELRO segment written by ld.so, then mprotect'ed): a replay cannot write them
            extra["outside"] = len(iv.written) - len(inside)
        self._w.op("written", t=round(iv.t_end, 6), ranges=inside.ranges.tolist(), **extra)

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
