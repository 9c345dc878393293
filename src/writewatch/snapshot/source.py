"""What a snapshot reads: the tracked buffers of this process, or another process's writable
mappings. A source gives the layout (regions), the pages written since the last collect,
a consistent point (``paused()``) and page reads."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import errors
from ..kernel import LINUX, procfs
from ..pages import Pages
from .errors import SharedWithUntracked, SnapshotError
from .format import Region

__all__ = ["BufferSource", "ProcessSource", "Source", "process_vm_readv"]

process_vm_readv = LINUX.process_vm_readv

_U64 = np.uint64


class Source(abc.ABC):
    kind: str
    page_size: int
    #: whether :meth:`paused` stops the writers (a pause is then measured and reported)
    stops: bool = False

    @abc.abstractmethod
    def regions(self, maps: tuple[Region, ...] = ()) -> tuple[Region, ...]:
        """The memory a snapshot holds now, sorted by address (``maps``: the result of
        :meth:`maps` just read, to avoid reading it twice)."""

    def maps(self) -> tuple[Region, ...]:
        """Every mapping (metadata only); empty for buffers."""
        return ()

    @abc.abstractmethod
    def collect(self) -> Pages:
        """Pages written since the last collect (re-armed in the same step)."""

    @abc.abstractmethod
    def tracked(self) -> Pages:
        """Pages whose writes :meth:`collect` reports; other pages of the regions are
        compared by content."""

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        """A context during which the memory does not change (processes: stopped)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def read(self, runs: np.ndarray, out: np.ndarray) -> None:
        """Copy the pages of ``runs`` (``(k, 2)`` [start, end) addresses) back to back into
        ``out`` (uint8, exactly their total size)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def close(self) -> None:  # noqa: B027 (optional hook)
        pass


class BufferSource(Source):
    """The targets of a :class:`writewatch.Tracker` on this process's memory."""

    kind = "buffer"

    def __init__(self, tracker: Any, *, owned: bool = False, pause: Any = None) -> None:
        self.tracker = tracker
        self.page_size = tracker.page_size
        self.owned = owned
        #: the caller's way to stop the writers: a context manager, or a callable making one
        self.pause = pause
        self.stops = pause is not None
        self._views: dict[tuple[int, int], np.ndarray] = {}

    def paused(self) -> contextlib.AbstractContextManager[Any]:
        if self.pause is None:
            return contextlib.nullcontext()
        if hasattr(self.pause, "__enter__") and not isinstance(self.pause, type):
            return self.pause  # type: ignore[no-any-return]
        return self.pause()  # type: ignore[no-any-return]

    def regions(self, maps: tuple[Region, ...] = ()) -> tuple[Region, ...]:
        ps = self.page_size
        out = []
        for t in sorted(self.tracker.targets, key=lambda t: t.start):
            s = t.span(ps)
            out.append(Region(s.start, s.end, "rw-p", 0, t.label, t.start, t.length))
        return tuple(out)

    def collect(self) -> Pages:
        return self.tracker.collect()  # type: ignore[no-any-return]

    def tracked(self) -> Pages:
        return Pages([(s.start, s.end) for s in self.tracker.spans], self.page_size)

    def _rows(self, start: int, end: int) -> np.ndarray:
        """The pages ``[start, end)`` of this process as a (n, page_size) array (no copy)."""
        key = (start, end)
        view = self._views.get(key)
        if view is None:
            raw = (ctypes.c_uint8 * (end - start)).from_address(start)
            view = self._views[key] = np.ctypeslib.as_array(raw).reshape(-1, self.page_size)
        return view

    def read(self, runs: np.ndarray, out: np.ndarray) -> None:
        if not len(runs):
            return
        ps = self.page_size
        rows = out.reshape(-1, ps)
        lo, hi = int(runs[0, 0]), int(runs[-1, 1])
        addrs = Pages._trusted(np.ascontiguousarray(runs, _U64), ps).addresses() \
            if len(runs) > 1 else np.arange(lo, hi, ps, dtype=_U64)
        pos = 0
        for s in self.tracker.spans:
            if not (s.start < hi and lo < s.end):
                continue
            # an unmapped page would fault the whole process: check the span first
            # (msync ENOMEM: one VMA walk, no page tables)
            if not LINUX.is_mapped("self", s.start, s.end - s.start):
                raise SnapshotError(
                    f"tracked memory {s.start:#x}-{s.end:#x} is not mapped any more",
                    hint="keep the buffer mapped while it is snapshotted")
            i = int(np.searchsorted(addrs, _U64(s.start)))
            j = int(np.searchsorted(addrs, _U64(s.end)))
            if i == j:
                continue
            idx = ((addrs[i:j] - _U64(s.start)) // _U64(ps)).astype(np.intp)
            # mode="clip": with the default "raise" numpy copies through a temporary buffer
            # (numpy.take: "out is always buffered if mode='raise'"); idx is in range
            np.take(self._rows(s.start, s.end), idx, axis=0, out=rows[i:j], mode="clip")
            pos += j - i
        if pos != len(addrs):
            raise SnapshotError("asked to read pages outside the tracked spans")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pid": os.getpid(),
                "targets": [t.label for t in self.tracker.targets]}

    def close(self) -> None:
        if self.owned:
            self.tracker.close()


# -- other processes --------------------------------------------------------------------------

def hold_untracked(info: Any, shared: str, stack: contextlib.ExitStack | None
                   ) -> tuple[int, ...]:
    """After a collect inside a pause: the processes outside the tracked set that map its
    shared memory writable. ``shared="fail"`` refuses them; ``"pause"`` stops them too, from
    now until the pause ends: the tracker reported their objects whole, and what is read
    next is then one moment of them."""
    pids = tuple(getattr(info, "untracked", ()) or ())
    if not pids:
        return pids
    if shared == "fail":
        raise SharedWithUntracked(
            f"processes {', '.join(map(str, pids))} outside the snapshotted set map its "
            "shared memory writable", pids=pids)
    if stack is not None:
        for pid in pids:
            with contextlib.suppress(errors.WriteWatchError):
                stack.enter_context(LINUX.stopped(pid))
    return pids


class ProcessSource(Source):
    """Every readable, writable mapping of process ``pid``.

    With a process tracker (``writewatch.attach(pid)``), the pages it covers are read only
    when written. Without one (or for mappings it does not cover) each save reads the pages
    and keeps those whose content hash changed."""

    kind = "process"

    def __init__(self, pid: int, tracker: Any = None, *, stop: bool | str = True,
                 owned: bool = False, shared: str = "fail") -> None:
        if shared not in ("fail", "pause"):
            raise errors.InvalidTarget(f"shared={shared!r}", hint='"fail" or "pause"')
        self.pid = pid
        self.tracker = tracker
        self.owned = owned
        #: processes outside the tracker that map shared memory of it writable: "fail"
        #: refuses to save, "pause" stops them during the save (see snapshot.tree)
        self.shared = shared
        self._stack: contextlib.ExitStack | None = None
        #: why there is no tracker (pages are then compared by content hash)
        self.untracked_reason: str | None = None
        self.stop = stop
        self.stops = bool(stop)
        self.page_size = LINUX.page_size
        self.last_pause = 0.0
        self.stopped_by = ""  #: "ptrace" or "sigstop": how the last pause stopped the target
        self.on_pause: Any = None  #: called with the source while the target is stopped
        self.hook_time = 0.0  #: seconds the last pause spent in on_pause (verification)
        if not os.path.exists(f"/proc/{pid}"):
            raise errors.NoSuchProcess(pid)

    def maps(self) -> tuple[Region, ...]:
        return tuple(Region(m.start, m.end, m.perms, m.offset, m.path)
                     for m in procfs.read_maps(self.pid))

    def regions(self, maps: tuple[Region, ...] = ()) -> tuple[Region, ...]:
        return tuple(r for r in (maps or self.maps())
                     if r.perms[0] == "r" and r.perms[1] == "w"
                     and r.path not in procfs.SPECIAL)

    def collect(self) -> Pages:
        if self.tracker is None:
            return Pages((), self.page_size)
        got: Pages = self.tracker.collect()
        hold_untracked(getattr(self.tracker, "last", None), self.shared, self._stack)
        return got

    def tracked(self) -> Pages:
        if self.tracker is None:
            return Pages((), self.page_size)
        spans = getattr(self.tracker, "spans", ())
        return Pages([(s.start, s.end) for s in spans], self.page_size)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        t0 = time.perf_counter()
        if not self.stop:
            yield
            return
        try:
            with contextlib.ExitStack() as stack, \
                    LINUX.stopped(self.pid, "auto" if self.stop is True else str(self.stop)) \
                    as how:
                self._stack = stack
                self.stopped_by = how
                yield
                self.hook_time = 0.0
                if self.on_pause is not None:
                    th = time.perf_counter()
                    self.on_pause(self)
                    self.hook_time = time.perf_counter() - th
        finally:
            self._stack = None
            self.last_pause = time.perf_counter() - t0

    def read(self, runs: np.ndarray, out: np.ndarray) -> None:
        process_vm_readv(self.pid, runs, out)

    def describe(self) -> dict[str, Any]:
        try:
            cmd = procfs.read_bytes(f"/proc/{self.pid}/cmdline").replace(b"\0", b" ").decode(
                errors="replace").strip()
        except errors.WriteWatchError:
            cmd = ""
        st = procfs.read_stat(self.pid)
        return {"kind": self.kind, "pid": self.pid, "cmdline": cmd,
                "starttime": st.starttime if st else None,
                "tracker": getattr(self.tracker, "backend", None) if self.tracker else None,
                "untracked_reason": self.untracked_reason}

    def close(self) -> None:
        if self.tracker is not None and self.owned:
            self.tracker.close()
