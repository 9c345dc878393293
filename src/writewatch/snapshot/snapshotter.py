"""Incremental snapshots: :class:`Snapshotter` saves (reading is :mod:`.reader`'s).

A save collects the pages written since the previous save (re-arming them in the same kernel
call), reads those pages (:mod:`.precopy`: stop-and-copy, or pre-copy under a pause
budget), and stores each page the store does not hold yet (:mod:`.index`: identical pages
are stored once, whatever snapshot or chain they belong to) in content-addressed chunks,
then publishes a manifest naming its parent. The first save of a Snapshotter is a delta by
content against the latest snapshot of the same target in the store when there is one
(every page compared with it, only the differing ones stored), else a full base.
"""

from __future__ import annotations

import builtins
import functools
import math
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors
from ..kernel import LINUX
from ..pages import Pages
from .errors import SnapshotError
from .format import (
    CODEC_RAW,
    CODEC_ZSTD,
    EXTENT,
    PAGE_DIGEST,
    ZERO,
    Manifest,
    encode_chunk,
    encode_manifest,
    page_digests,
)
from .index import PageIndex
from .precopy import Budget, Gathered, PageArena, PrecopyReport, _mask_in, gather
from .progress import progress as _progress
from .reader import (
    Diff,
    Image,
    SnapshotInfo,
    Snapshots,
    VerifyReport,
    _expand,
    _extents,
    _live_images,
    _region_pages,
)
from .source import BufferSource, ProcessSource, Source
from .store import Store

__all__ = ["DEFAULT_CHUNK", "Diff", "Image", "SnapshotInfo", "Snapshots", "Snapshotter",
           "VerifyReport"]

_U64 = np.uint64
#: Pages of one save are packed into chunks of at most this many bytes (benchmarks/
#: bench_snapshot.py measures per-page chunks against this; docs/snapshot.md has the numbers).
DEFAULT_CHUNK = 16 << 20
#: zstd's levels (zstd.h ZSTD_maxCLevel() is 22; levels below 1 trade ratio for speed)
ZSTD_LEVELS = range(-7, 23)


def _make_source(target: Any, backend: str, stop: bool | str, shared: str,
                 pause: Any) -> Source:
    from ..process import ProcessTracker, attach
    from ..tracker import Tracker, track
    from .tree import TreeSource
    if isinstance(target, Source):
        return target
    if isinstance(target, ProcessTracker):
        if len(target.processes) > 1 or target.follow_forks or target.tree or \
                target.cgroup is not None:
            return TreeSource(target, shared=shared)
        return ProcessSource(int(target.pid), target, stop=stop, shared=shared)
    if isinstance(target, Tracker):
        return BufferSource(target, pause=pause)
    if isinstance(target, bool):
        raise errors.InvalidTarget("cannot snapshot a bool")
    if isinstance(target, int):
        tracker = None
        why = None
        try:
            tracker = attach(target, backend)
        except (errors.Unsupported, errors.PermissionDenied, errors.KernelError) as exc:
            why = str(exc)
        src = ProcessSource(target, tracker, stop=stop, owned=True, shared=shared)
        src.untracked_reason = why
        return src
    return BufferSource(track(target, backend=backend), owned=True, pause=pause)


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        kind = "an integer" if integer else "a number of seconds"
        raise errors.InvalidTarget(f"{name}={value!r}", hint=f"{kind} > 0")


def _check_options(compress: Any, level: Any, chunk_size: Any, max_pause: Any,
                   precopy_rounds: Any, precopy_seconds: Any, shared: Any, pause: Any,
                   stop: Any, progress: Any) -> None:
    """Every argument checked before anything is opened, attached or locked."""
    if compress not in (None, "zstd"):
        raise errors.InvalidTarget(f"compress={compress!r}", hint="None or 'zstd'")
    if not isinstance(level, int) or isinstance(level, bool) or level not in ZSTD_LEVELS:
        raise errors.InvalidTarget(f"level={level!r}", hint="a zstd level, -7 to 22")
    ps = LINUX.page_size
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or \
            chunk_size < ps or chunk_size % ps or chunk_size > 1 << 30:
        raise errors.InvalidTarget(f"chunk_size={chunk_size!r}",
                                   hint=f"a positive multiple of the page size ({ps}), at "
                                        "most 1 GiB")
    if max_pause is not None:
        _positive("max_pause", max_pause)
    if not isinstance(precopy_rounds, int) or isinstance(precopy_rounds, bool) or \
            precopy_rounds < 0:
        raise errors.InvalidTarget(f"precopy_rounds={precopy_rounds!r}", hint="an integer >= 0")
    _positive("precopy_seconds", precopy_seconds)
    if shared not in ("fail", "pause"):
        raise errors.InvalidTarget(f"shared={shared!r}", hint='"fail" or "pause"')
    if not (isinstance(stop, bool) or stop in ("auto", "ptrace", "sigstop")):
        raise errors.InvalidTarget(f"stop={stop!r}",
                                   hint='True, False, "auto", "ptrace" or "sigstop"')
    if progress is not None and not isinstance(progress, bool):
        raise errors.InvalidTarget(f"progress={progress!r}",
                                   hint="True, False or None (shown on a terminal)")
    if pause is not None and not (callable(pause) or hasattr(pause, "__enter__")):
        raise errors.InvalidTarget(f"pause={pause!r}",
                                   hint="a context manager (a Lock), or a callable returning "
                                        "one, that stops the writers while it is held")


@dataclass
class _Held:
    """What a Snapshotter must give back, for its finalizer (which cannot hold it)."""

    store: Store
    owns_store: bool
    source: Source | None = None

    def release(self) -> None:
        try:
            if self.source is not None:
                self.source.close()
        finally:
            if self.owns_store:
                self.store.close()
            else:
                flush = getattr(self.store, "flush", None)
                try:
                    if flush:
                        flush()
                finally:
                    self.store.release()


def _leaked(held: _Held) -> None:
    warnings.warn(f"a Snapshotter of store {held.store.url} was never closed: its writer "
                  "lock is released now (use `with Snapshotter(...)` or close())",
                  ResourceWarning, stacklevel=2)
    held.release()


class _Packed:
    """The pages a save stores, as it packs them."""

    def __init__(self) -> None:
        self.addrs: list[np.ndarray] = []
        self.chunk: list[np.ndarray] = []  # index chunk id, -1 zero, <= -2: pending
        self.page: list[np.ndarray] = []
        self.digests: list[np.ndarray] = []  # of the data pages, in address order
        self.stored = 0
        self.dedup = 0
        self.chunks_written = 0
        self.compared = 0  # pages compared with the parent by content
        self.unchanged = 0  # of them, equal to the parent's


class Snapshotter:
    """Incremental snapshots of tracked memory into a store.

    ``target``: a buffer (anything :func:`writewatch.track` takes), a :class:`Tracker`,
    a PID or a process tracker from :func:`writewatch.attach`. ``store``: a directory path
    or a :class:`Store`. The Snapshotter holds the store's writer lock until closed.

    Consistency: for a process the target is stopped while its last pages are read, and the
    snapshot is its memory at that stop. ``max_pause`` (seconds) bounds that stop by
    pre-copy (:mod:`writewatch.snapshot.precopy`): pages are read while the target runs,
    pages written meanwhile read again, round after round (at most ``precopy_rounds``
    rounds and ``precopy_seconds``), until what is left fits; ``SnapshotInfo`` says how many
    rounds it took and whether it converged. Without ``max_pause`` (stop-and-copy) every
    page of the save is read during the stop.

    For a buffer of this process nothing is stopped unless ``pause`` is given: a context
    manager (a ``threading.Lock`` the writers hold while writing), or a callable returning
    one, held while the last pages are read. Without it a page written while being read may
    hold a mix of old and new bytes in this snapshot, and is complete in the next one (its
    write was re-armed before the read, so it is reported again).

    ``stop`` (processes): True/"auto" (ptrace interrupt, SIGSTOP when ptrace is refused),
    "ptrace", "sigstop", or False (never stop: each page is as it was when read).

    A process tracker of several processes (``attach(pid, tree=True)``, ``follow_forks``,
    a cgroup, launch) is saved as a tree (:mod:`writewatch.snapshot.tree`): every process at
    one pause, shared memory once; ``restore(ref, pid=...)`` gives one process's image.
    ``shared``: what to do when processes outside the tracked set map its shared memory
    writable: "fail" (raise :class:`~writewatch.snapshot.SharedWithUntracked`) or
    "pause" (stop them during each save too).
    """

    #: bytes of chunk buffers kept for reuse between saves
    POOL_BYTES = 64 << 20

    def __init__(self, target: Any, store: Store | str | os.PathLike[str], *,
                 compress: str | None = None, level: int = 1, chunk_size: int = DEFAULT_CHUNK,
                 zero_pages: bool = True, backend: str = "auto", progress: bool | None = None,
                 stop: bool | str = True, shared: str = "fail",
                 max_pause: float | None = None, precopy_rounds: int = 12,
                 precopy_seconds: float = 30.0, pause: Any = None) -> None:
        self._closed = True  # until every resource is held
        _check_options(compress, level, chunk_size, max_pause, precopy_rounds,
                       precopy_seconds, shared, pause, stop, progress)
        owns = not isinstance(store, Store)
        self.snapshots = Snapshots(store, create=True)
        self.store = self.snapshots.store
        held = _Held(self.store, owns)
        try:
            if self.store.format != 2:
                raise SnapshotError(
                    f"store {self.store.url} has format {self.store.format} (written by an "
                    "older writewatch): it can be listed, restored and verified, not saved to",
                    hint="save into a new store")
            self.store.acquire()
            held.source = self.source = _make_source(target, backend, stop, shared, pause)
        except BaseException:
            held.release() if owns else self.store.release()
            raise
        self._held = held
        self._finalizer = weakref.finalize(self, _leaked, held)
        ps = self.source.page_size
        self.codec = CODEC_ZSTD if compress == "zstd" else CODEC_RAW
        self.level = level
        self.chunk_pages = chunk_size // ps
        self.zero_pages = zero_pages
        self.progress = progress
        self.budget = None if max_pause is None else \
            Budget(float(max_pause), precopy_rounds, float(precopy_seconds))
        self._last: Manifest | None = None
        self._index: PageIndex | None = None
        self._indexed: set[str] = set()  # the snapshots the index was built from
        self._zero_digest = np.frombuffer(self.snapshots.digest(bytes(ps)), PAGE_DIGEST)
        # chunk buffers are reused: a fresh multi-MiB array costs its page faults (and, with
        # THP, the zeroing of huge pages) on every save
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False

    # -- buffers --------------------------------------------------------------------------------
    def _buffer(self, nbytes: int | None = None) -> np.ndarray:
        cap = self.chunk_pages * self.source.page_size
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            buf = np.empty(cap, np.uint8)
            buf[::LINUX.page_size] = 0  # its page faults now, not where it is first filled
        return buf if nbytes is None else buf[:nbytes]

    def _release(self, buf: np.ndarray) -> None:
        base = buf.base if isinstance(buf.base, np.ndarray) else buf
        cap = self.chunk_pages * self.source.page_size
        if base.nbytes == cap and self._free.qsize() < max(1, self.POOL_BYTES // cap):
            self._free.put(base)

    def _plan(self, want: Pages) -> list[np.ndarray]:
        """Split ``want`` into per-chunk arrays of runs (each chunk at most chunk_pages)."""
        if not want:
            return []
        cap = self.chunk_pages * self.source.page_size
        r = want.ranges.astype(np.int64)
        lengths = r[:, 1] - r[:, 0]
        off = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        total = int(lengths.sum())
        cuts = np.union1d(off, np.arange(cap, total, cap, dtype=np.int64))
        run = np.searchsorted(off, cuts, side="right") - 1
        starts = r[run, 0] + (cuts - off[run])
        ends = starts + np.diff(np.append(cuts, total))
        pieces = np.stack([starts, ends], axis=1).astype(_U64)
        bounds = np.flatnonzero(np.diff(cuts // cap)) + 1
        return np.split(pieces, bounds)

    # -- which parent -------------------------------------------------------------------------
    def _next_name(self) -> str:
        names = self.snapshots.names()
        return f"{int(names[-1]) + 1 if names else 1:06d}"

    def _continued(self) -> Manifest | None:
        """The latest snapshot in the store when it is of this target (and has page digests),
        for a first save to be a delta by content against it."""
        names = self.snapshots.names()
        if not names:
            return None
        try:
            m = self.snapshots.manifest(names[-1])
            if any(c.digests is None for c in self.snapshots.chain(m.name)):
                return None
        except SnapshotError:
            return None  # a damaged latest snapshot: start a new chain
        return m if self._same_target(m) else None

    def _same_target(self, m: Manifest) -> bool:
        now = self.source.describe()
        old = m.source
        if old.get("kind") != now.get("kind"):
            return False
        if now.get("kind") == "buffer":
            return [(r.start, r.end) for r in m.regions] == \
                [(r.start, r.end) for r in self.source.regions()]
        if old.get("pid") != now.get("pid"):
            return False
        # the same pid and start time: the same process (pids are reused)
        return old.get("starttime") is not None and old.get("starttime") == \
            now.get("starttime")

    def _page_index(self, check: bool = False) -> PageIndex:
        """The store's page index; ``check``: rebuilt first if a snapshot it was built from
        is gone (deleted or pruned through ``self.snapshots``: its chunks may be too)."""
        if self._index is not None and check and \
                not self._indexed <= set(self.snapshots.names()):
            self._index = None
        if self._index is None:
            # a damaged manifest's pages are not offered for deduplication
            names = self.snapshots.names()
            self._index = PageIndex.build(self.snapshots.readable())
            self._indexed = set(names)
        return self._index

    # -- saving ---------------------------------------------------------------------------------
    def save(self, *, verify: bool = False, full: bool = False) -> SnapshotInfo:
        """Save a snapshot: a delta holding the pages written since the previous save, or,
        for the first save of this Snapshotter, a delta by content against the latest
        snapshot of the same target in the store (``full=True``, or no such snapshot: a
        full base). Returns its :class:`SnapshotInfo` once it is durable and visible.

        ``verify`` (processes): also read all of the memory in the same pause and compare
        the restored snapshot with it; any difference raises :class:`SnapshotError` (a
        wrong image never passes). It costs a full read per save."""
        with self._lock:
            self._check_open()
            src = self.source
            by = "tracking"
            parent = None if full else self._last
            if parent is None and not full:
                parent = self._continued()
                by = "content"
            t0 = time.perf_counter()
            truth: dict[int | None, Image] = {}
            hook = getattr(src, "on_pause", None)
            if verify:
                if not hasattr(src, "on_pause"):
                    raise errors.InvalidTarget("verify needs a process source (a buffer of "
                                               "this process is never paused)")
                src.on_pause = lambda s: (truth.update(_live_images(s)),
                                          hook(s) if hook else None)
            index = self._page_index(check=True)
            state = index.snapshot_state()
            try:
                m = self._save(src, parent, by, t0)
            except BaseException:
                # the collect re-armed the pages it reported: a save that does not complete
                # must not leave the next one a delta that lacks them
                self._last = None
                index.rollback(state)
                raise
            finally:
                if verify:
                    src.on_pause = hook  # type: ignore[attr-defined]
            self.snapshots._cache[m.name] = m
            self._indexed.add(m.name)
            self._last = m
            if verify:
                self._verify_live(m, truth)
            return self.snapshots.info(m.name)

    def _verify_live(self, m: Manifest, truth: dict[int | None, Image]) -> None:
        for pid, want in truth.items():
            got = self.snapshots.restore(m.name, pid=pid)
            if [(r.start, r.end) for r in got.regions] != \
                    [(r.start, r.end) for r in want.regions] or \
                    not np.array_equal(got.data, want.data):
                ps = m.page_size
                n = min(got.data.nbytes, want.data.nbytes) // ps
                bad = int((got.data[:n * ps].reshape(-1, ps) !=
                           want.data[:n * ps].reshape(-1, ps)).any(axis=1).sum())
                raise SnapshotError(
                    f"snapshot {m.name} differs from the memory of process {pid} read in the "
                    f"same pause ({bad} pages differ)",
                    hint="report this: it is a tracking bug, the image is not exact")

    def _want_fn(self, src: Source, parent: Manifest | None, by: str) -> Any:
        ps = src.page_size
        before = set(parent.regions) if parent is not None else set()

        def want_of(regions: Any, written: Pages) -> tuple[Pages, Pages, Pages]:
            every = _region_pages(regions, ps)
            untracked = every - src.tracked()
            if parent is None:
                return every, Pages((), ps), untracked
            if by == "content":
                return every, every, untracked
            same = _region_pages([r for r in regions if r in before], ps)
            want = (written & every) | (every - same) | untracked
            return want, untracked & same, untracked

        return want_of

    def _save(self, src: Source, parent: Manifest | None, by: str, t0: float) -> Manifest:
        ps = src.page_size
        want_of = self._want_fn(src, parent, by)
        packed = _Packed()
        pview = _ParentView(self.snapshots, parent) if parent is not None else None
        stream = isinstance(src, BufferSource) and self.budget is None and src.pause is None
        arena = PageArena(ps, self.chunk_pages, self._buffer, self._release)
        try:
            if stream:
                assert isinstance(src, BufferSource)
                g = self._stream(src, want_of, packed, pview)
            else:
                g = gather(src, want_of, arena, self.budget, self._paused(src),
                           tracked=bool(src.tracked()),
                           expect=self._last_paused // src.page_size)
                with _progress("save", g.want.nbytes, self.progress) as advance:
                    for runs in self._plan(g.want):
                        rows, pooled = arena.gather(runs, self._buffer)
                        self._pack(runs, rows, g.content, packed, pview, pooled)
                        advance(rows.nbytes)
            chunks, ext, digests = self._finish(packed)
            stats = self._stats(src, g, packed, len(chunks), t0, by if parent else "")
            name = self._next_name()
            m = Manifest(name, parent.name if parent else None, time.time(), ps, g.regions,
                         tuple(chunks), ext, src.describe(), g.maps, stats, digests)
            self.store.commit(f"snapshots/{name}", encode_manifest(m, self.snapshots.digest))
        finally:
            flush = getattr(self.store, "flush", None)
            if flush is not None:
                try:
                    flush()  # no put may still read the arena's blocks
                except Exception:
                    pass
            arena.close()
        return m

    def _paused(self, src: Source) -> Callable[[], AbstractContextManager[Any]]:
        def paused() -> AbstractContextManager[Any]:
            return _Timed(src.paused(), self)
        return paused

    def _stream(self, src: BufferSource, want_of: Any, packed: _Packed,
                pview: _ParentView | None) -> Gathered:
        """A buffer of this process without a pause: collect, then read and pack piece by
        piece (never more than a few chunks in memory)."""
        regions = src.regions(())
        tc = time.perf_counter()
        written = src.collect()
        t_collect = time.perf_counter() - tc
        want, content, _ = want_of(regions, written)
        with _progress("save", want.nbytes, self.progress) as advance:
            for runs in self._plan(want):
                buf = self._buffer(int((runs[:, 1] - runs[:, 0]).sum()))
                src.read(runs, buf)
                self._pack(runs, buf, content, packed, pview, True)
                advance(buf.nbytes)
        self._pause_taken = None
        return Gathered((), regions, written, want, content, PrecopyReport(None), t_collect,
                        0.0)

    def _pack(self, runs: np.ndarray, buf: np.ndarray, content: Pages, packed: _Packed,
              pview: _ParentView | None, pooled: bool) -> None:
        """Store the pages of one piece: zero pages as zero extents; pages equal to the
        parent's (those compared by content) not at all; pages the store holds as references;
        the rest in a new chunk. ``pooled``: ``buf`` is a pool buffer to hand back."""
        ps = self.source.page_size
        rows = buf.reshape(-1, ps)
        addrs = _expand(runs, ps)
        n = len(addrs)
        dig = page_digests(rows, self.snapshots.digest)
        # a zero page is known by its digest: no second pass over the bytes
        nz = (dig != self._zero_digest).any(axis=1) if self.zero_pages else np.ones(n, bool)
        dig[~nz] = 0
        keep = np.ones(n, bool)
        if pview is not None and content:
            cmp = np.flatnonzero(_mask_in(addrs, content))
            same = pview.same(addrs[cmp], dig[cmp], ~nz[cmp])
            keep[cmp[same]] = False
            packed.compared += len(cmp)
            packed.unchanged += int(same.sum())
        index = self._page_index()
        chunk = np.full(n, -1, np.int64)
        page = np.zeros(n, np.int64)
        data = np.flatnonzero(keep & nz)
        c, p = index.lookup(dig[data])
        chunk[data], page[data] = c, p
        new = data[c < 0]
        # identical new pages within the piece: stored once
        uniq, first, inv = np.unique(dig[new].view(f"V{2 * PAGE_DIGEST.itemsize}").ravel(),
                                     return_index=True, return_inverse=True)
        del uniq
        fresh = new[first]
        packed.dedup += (len(data) - len(fresh)) * ps
        if len(fresh):
            whole = len(fresh) == n
            raw = rows if whole else rows[np.sort(fresh)]
            order = np.argsort(np.argsort(fresh))  # position of each fresh page in raw
            cid = self._put_chunk(raw.reshape(-1), buf if whole and pooled else None, packed)
            pages_in = np.arange(len(fresh), dtype=np.int64)
            index.add(dig[np.sort(fresh)], cid, pages_in)
            chunk[new] = cid
            page[new] = order[inv.ravel()]
            pooled = pooled and not whole
        if pooled:
            self._release(buf)
        sel = np.flatnonzero(keep)
        packed.addrs.append(addrs[sel])
        packed.chunk.append(chunk[sel])
        packed.page.append(page[sel])
        packed.digests.append(dig[sel[chunk[sel] >= 0]])

    def _put_chunk(self, raw: np.ndarray, pooled: np.ndarray | None, packed: _Packed) -> int:
        """Store chunk ``raw`` unless a committed manifest names it; its index chunk id.
        ``pooled``: the pool buffer ``raw`` views, handed back once the store is done."""
        index = self._page_index()
        key = self.snapshots.digest(raw)
        known = index.has_chunk(key)
        cid = index.chunk_id(key)
        if not known:
            parts = encode_chunk(raw, self.codec, self.level)
            packed.stored += sum(memoryview(p).nbytes for p in parts)
            packed.chunks_written += 1
            done = None if pooled is None else functools.partial(self._release, pooled)
            self.store.put(f"chunks/{key.hex()}", parts, done=done)
        elif pooled is not None:
            self._release(pooled)
        return cid

    def _finish(self, packed: _Packed) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """The manifest's chunk list, extents and page digests."""
        ps = self.source.page_size
        if not packed.addrs:
            return [], np.empty(0, EXTENT), np.empty((0, 2), PAGE_DIGEST)
        addrs = np.concatenate(packed.addrs)
        chunk = np.concatenate(packed.chunk)
        page = np.concatenate(packed.page)
        index = self._page_index()
        used, local = np.unique(chunk[chunk >= 0], return_inverse=True)
        ch = np.full(len(chunk), ZERO, np.int64)
        ch[chunk >= 0] = local.ravel()
        ext = _extents(addrs, ch, page, ps)
        digests = np.concatenate(packed.digests) if packed.digests else \
            np.empty((0, 2), PAGE_DIGEST)
        return [index.keys[int(i)] for i in used], ext, digests

    def _stats(self, src: Source, g: Gathered, packed: _Packed, nchunks: int, t0: float,
               by: str) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "written_reported": len(g.written), "pages": int(sum(len(a) for a in packed.addrs)),
            "stored_bytes": packed.stored, "dedup_bytes": packed.dedup, "chunks": nchunks,
            "chunks_written": packed.chunks_written,
            "seconds": round(time.perf_counter() - t0, 6),
        }
        if by:
            stats["delta_by"] = by
        if packed.compared:
            stats["content_compared"] = packed.compared
            stats["content_unchanged"] = packed.unchanged
        pause = getattr(self, "_pause_taken", None)
        if pause is not None:
            stats["pause"] = round(pause, 6)
            stats["paused_at"] = round(self._paused_at, 6)  # wall clock, time.time()
            stats["stopped_by"] = getattr(src, "stopped_by", "")
            stats["pause_collect"] = round(g.t_collect, 6)
            stats["pause_read"] = round(g.t_read, 6)
            stats["paused_bytes"] = g.report.paused_bytes
            self._last_paused = g.report.paused_bytes
            hook = float(getattr(src, "hook_time", 0.0) or 0.0)
            if hook:
                stats["pause_verify"] = round(hook, 6)  # the full read of save(verify=True)
            if self.budget is not None:
                stats["precopy"] = g.report.to_json()
                # what the next save predicts its stop costs from (verification aside)
                self.budget.stop_cost = max(0.0, pause - g.t_read - hook)
                if g.t_read > 0 and g.report.paused_bytes:
                    self.budget.read_rate = g.report.paused_bytes / g.t_read
        self._pause_taken = None
        return stats

    _pause_taken: float | None = None
    _paused_at = 0.0
    _last_paused = 0

    # -- reading (delegated) ----------------------------------------------------------------------
    def restore(self, snapshot: Any = "latest", into: Any = None, *,
                progress: bool | None = None, pid: int | None = None) -> Image:
        return self.snapshots.restore(snapshot, into, progress=self.progress
                                      if progress is None else progress, pid=pid)

    def list(self) -> tuple[SnapshotInfo, ...]:
        return self.snapshots.list()

    def verify(self, refs: Sequence[Any] | None = None) -> VerifyReport:
        return self.snapshots.verify(refs)

    def diff(self, a: Any, b: Any) -> Diff:
        return self.snapshots.diff(a, b)

    def compact(self, snapshot: Any = "latest") -> SnapshotInfo:
        with self._lock:
            return self.snapshots.compact(snapshot)

    def prune(self, keep: int) -> builtins.list[str]:
        with self._lock:
            try:
                return self.snapshots.prune(keep)
            finally:
                self._index = None  # chunks may be gone: rebuild from what is left

    # -- lifecycle ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise errors.TrackerClosed("this Snapshotter is closed",
                                       hint="create a new Snapshotter")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._held.release()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Timed:
    """A pause context that records how long it held (stop to resume) on the Snapshotter."""

    def __init__(self, inner: AbstractContextManager[Any], owner: Snapshotter) -> None:
        self.inner, self.owner = inner, owner

    def __enter__(self) -> Any:
        self.t0 = time.perf_counter()
        self.owner._paused_at = time.time()
        return self.inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self.inner.__exit__(*exc)
        finally:
            if self.owner.source.stops:
                self.owner._pause_taken = time.perf_counter() - self.t0


class _ParentView:
    """The parent's page digests by address, for comparing pages by content."""

    def __init__(self, snaps: Snapshots, parent: Manifest) -> None:
        self._snaps, self._parent = snaps, parent
        self._ready = False

    def _load(self) -> None:
        res = self._snaps.resolve(self._parent.name)
        if res.digests is None:
            raise SnapshotError(f"snapshot {self._parent.name} has no page digests",
                                hint="save a full snapshot (full=True)")
        order = np.argsort(res.addrs, kind="stable")
        self.addrs = res.addrs[order]
        self.digests = res.digests[order]
        self.zero = res.chunk[order] < 0
        self._ready = True

    def same(self, addrs: np.ndarray, digests: np.ndarray, zero: np.ndarray) -> np.ndarray:
        """Which of these pages (sorted addresses) equal the parent's page there."""
        if not self._ready:
            self._load()
        if not len(self.addrs) or not len(addrs):
            return np.zeros(len(addrs), bool)
        pos = np.minimum(np.searchsorted(self.addrs, addrs), len(self.addrs) - 1)
        there = self.addrs[pos] == addrs
        pz = self.zero[pos]
        eq = (pz & zero) | (~pz & ~zero & (self.digests[pos] == digests).all(axis=1))
        return np.asarray(there & eq, bool)

