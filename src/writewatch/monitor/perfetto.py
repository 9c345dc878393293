"""``--perfetto FILE``: the monitored run as a Perfetto trace (ui.perfetto.dev opens it).

Encoded with the ``perfetto`` package's protobuf definitions (``perfetto.protos``, the
project's own Python package: ``pip install writewatch[perfetto]``) and its
``StreamingTraceProtoBuilder``, one ``TracePacket`` at a time as the run goes, so a killed
monitor leaves a readable prefix. What the trace holds (track names are stable, tested):

* a process track per tracked process (pid and command name), the root's first;
* counter tracks, values in bytes per second over each interval (``CounterDescriptor``
  unit ``UNIT_SIZE_BYTES``, unit name ``bytes/s``), one point at the end of every interval:
  ``dirty rate`` (the root's address space), ``tree dirty rate`` (the whole tree, a page of
  shared memory counted once; trees only), ``dirty rate`` under each process's track, and
  ``mapping <name>`` per written mapping of the root (at most :data:`MAX_MAPPING_TRACKS`,
  the others summed in ``mapping [other]``);
* a ``write working set`` counter (bytes written at least once since the start);
* instant events on a ``events`` track: ``fork <pid>``, ``exit <pid>``, ``exec <pid>``,
  ``map <name>`` and ``unmap <name>`` (mapping changes the sampler saw).

Timestamps are ``CLOCK_BOOTTIME`` nanoseconds, the clock Perfetto's ``TracePacket.timestamp``
uses by default (protos/perfetto/trace/trace_packet.proto: "BOOTTIME by default").
"""

from __future__ import annotations

import os
import time
from typing import IO, Any

from .series import Interval, Series

__all__ = ["MAX_MAPPING_TRACKS", "PerfettoWriter"]

MAX_MAPPING_TRACKS = 32
_SEQ = 0x5757  #: trusted_packet_sequence_id of every packet written here
_ROOT = 1  # track uuids: 1 root process, 2 events, 3 rate, 4 tree rate, 5 working set;
_EVENTS, _RATE, _TREE, _WS = 2, 3, 4, 5
_PROC_BASE = 1 << 32  # process tracks: _PROC_BASE + pid; their rate: + (1 << 31)
_MAP_BASE = 1 << 40  # mapping tracks: _MAP_BASE + n


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class PerfettoWriter:
    """Writes the trace to ``path`` as intervals come (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], *, pid: int | None = None,
                 target: str = "") -> None:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
        from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder
        self._pb = pb
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._b = StreamingTraceProtoBuilder(self._file)
        self._t0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._pid = pid or 0
        self._procs: set[int] = set()
        self._maps: dict[str, int] = {}
        self._first = True
        self._changes = 0  # mapping changes of the series already written
        name = target or (f"pid {pid}" if pid else "writewatch")
        self._track(_ROOT, name, process=(self._pid, _comm(self._pid) or name))
        self._track(_EVENTS, "events", parent=_ROOT)
        self._track(_RATE, "dirty rate", parent=_ROOT, counter=True)
        self._track(_WS, "write working set", parent=_ROOT, counter=True, unit="bytes")

    # -- packets ------------------------------------------------------------------------------
    def _packet(self) -> Any:
        p = self._b.create_packet()
        p.trusted_packet_sequence_id = _SEQ
        if self._first:
            p.sequence_flags = 1  # SEQ_INCREMENTAL_STATE_CLEARED
            self._first = False
        return p

    def _track(self, uuid: int, name: str, *, parent: int | None = None,
               process: tuple[int, str] | None = None, counter: bool = False,
               unit: str = "bytes/s") -> None:
        p = self._packet()
        d = p.track_descriptor
        d.uuid = uuid
        d.name = name
        if parent is not None:
            d.parent_uuid = parent
        if process is not None:
            d.process.pid, d.process.process_name = process
        if counter:
            d.counter.unit = self._pb.CounterDescriptor.UNIT_SIZE_BYTES
            d.counter.unit_name = unit
        self._b.write_packet(p)

    def _counter(self, ts: int, uuid: int, value: float) -> None:
        p = self._packet()
        p.timestamp = ts
        p.track_event.type = self._pb.TrackEvent.TYPE_COUNTER
        p.track_event.track_uuid = uuid
        p.track_event.double_counter_value = float(value)
        self._b.write_packet(p)

    def _instant(self, ts: int, name: str) -> None:
        p = self._packet()
        p.timestamp = ts
        p.track_event.type = self._pb.TrackEvent.TYPE_INSTANT
        p.track_event.track_uuid = _EVENTS
        p.track_event.name = name
        self._b.write_packet(p)

    # -- intervals ----------------------------------------------------------------------------
    def _ts(self, t: float) -> int:
        return self._t0 + round(t * 1e9)

    def _process_rate(self, pid: int) -> int:
        uuid = _PROC_BASE + pid
        if pid not in self._procs:
            self._procs.add(pid)
            self._track(uuid, f"pid {pid}", process=(pid, _comm(pid)))
            self._track(uuid + (1 << 31), "dirty rate", parent=uuid, counter=True)
        return uuid + (1 << 31)

    def _mapping_track(self, name: str) -> int:
        if name not in self._maps:
            if len(self._maps) >= MAX_MAPPING_TRACKS:
                name = "[other]"
                if name in self._maps:
                    return self._maps[name]
            self._maps[name] = _MAP_BASE + len(self._maps)
            self._track(self._maps[name], f"mapping {name}", parent=_ROOT, counter=True)
        return self._maps[name]

    def update(self, iv: Interval, series: Series, execd: tuple[int, ...] = ()) -> None:
        """Record one interval: its rates, then what happened during it."""
        ts = self._ts(iv.t_end)
        dt = iv.dt if iv.dt > 0 else float("inf")
        ps = series.page_size
        self._counter(ts, _RATE, iv.bytes_per_second)
        self._counter(ts, _WS, iv.working_set_pages * ps)
        if iv.by_process:
            if _TREE not in self._procs:
                self._procs.add(_TREE)
                self._track(_TREE, "tree dirty rate", parent=_ROOT, counter=True)
            self._counter(ts, _TREE, iv.tree_bytes_per_second)
            for pid, n in iv.by_process:
                if pid != self._pid:  # the root's is the "dirty rate" track
                    self._counter(ts, self._process_rate(pid), n * ps / dt)
        per: dict[int, float] = {}
        for r, n in iv.by_region:
            name = series.regions[r].ident if r >= 0 else "[unmapped]"
            uuid = self._mapping_track(name)
            per[uuid] = per.get(uuid, 0.0) + n * ps / dt
        for uuid in self._maps.values():  # a mapping not written this interval reads 0
            self._counter(ts, uuid, per.get(uuid, 0.0))
        for pid in iv.forked:
            self._instant(ts, f"fork {pid}")
        for pid in iv.exited:
            self._instant(ts, f"exit {pid}")
        for pid in execd:
            self._instant(ts, f"exec {pid}")
        for c in series.changes[self._changes:]:
            verb = "map" if c.kind == "new" else "unmap"
            self._instant(self._ts(c.t), f"{verb} {series.regions[c.region].ident}")
        self._changes = len(series.changes)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> PerfettoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
