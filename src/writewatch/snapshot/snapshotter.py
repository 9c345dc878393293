"""Incremental snapshots: :class:`Snapshotter` saves, :class:`Snapshots` reads and maintains.

A save collects the pages written since the previous save (re-arming them in the same kernel
call), reads exactly those pages, packs them into content-addressed chunks and publishes a
manifest naming its parent. The first save of a Snapshotter is full. Restoring snapshot N
walks the chain N, N-1, … back to a full one and takes each page from the newest snapshot
that holds it.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors
from ..pages import Pages
from .errors import CorruptSnapshot, NoSuchSnapshot, SizeMismatch, SnapshotError
from .format import (
    CODEC_RAW,
    CODEC_ZSTD,
    EXTENT,
    ZERO,
    Manifest,
    Region,
    decode_chunk,
    decode_manifest,
    encode_chunk,
    encode_manifest,
    hasher,
)
from .progress import progress as _progress
from .source import BufferSource, ProcessSource, Source
from .store import BlobNotFound, Store, open_store

__all__ = ["DEFAULT_CHUNK", "Diff", "Image", "SnapshotInfo", "Snapshots", "Snapshotter",
           "VerifyReport"]

_U64 = np.uint64
#: Pages of one save are packed into chunks of at most this many bytes (benchmarks/
#: bench_snapshot.py measures per-page chunks against this; docs/snapshot.md has the numbers).
DEFAULT_CHUNK = 4 << 20


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    parent: str | None
    kind: str  #: "full" or "delta"
    created: float
    pages: int  #: pages this snapshot stores (data or zero)
    image_bytes: int  #: size of the memory it restores
    stored_bytes: int  #: bytes of new chunks it wrote
    regions: int
    source: str
    pause: float | None  #: seconds the target was stopped (processes)


@dataclass(frozen=True)
class Image:
    """Restored memory: ``data`` holds each region's bytes back to back (a buffer target's
    exact bytes; a whole mapping of a process)."""

    name: str
    regions: tuple[Region, ...]
    offsets: tuple[int, ...]
    data: np.ndarray
    maps: tuple[Region, ...] = ()

    def region_bytes(self, i: int) -> np.ndarray:
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.data.nbytes
        return self.data[self.offsets[i]:end]


@dataclass(frozen=True)
class VerifyReport:
    snapshots: int
    chunks: int
    problems: tuple[CorruptSnapshot | SnapshotError, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Diff:
    """What changed from snapshot ``a`` to ``b``."""

    a: str
    b: str
    changed: Pages  #: pages in both whose bytes differ
    added: Pages  #: pages of b not in a
    removed: Pages  #: pages of a not in b
    regions_added: tuple[Region, ...]
    regions_removed: tuple[Region, ...]
    regions_changed: tuple[tuple[Region, Region], ...]  #: same start, other end/perms/file


class _Resolved:
    """Where every page of a snapshot's regions comes from."""

    def __init__(self, manifest: Manifest, addrs: np.ndarray, chunk: np.ndarray,
                 page: np.ndarray, keys: list[bytes], owner: list[str]) -> None:
        self.manifest = manifest
        self.addrs = addrs  #: page addresses, in region order
        self.chunk = chunk  #: index into keys, -1 for a zero page
        self.page = page  #: page within the chunk
        self.keys = keys
        self.owner = owner  #: per key: the snapshot that lists it (for error messages)


def _region_pages(regions: Sequence[Region], page_size: int) -> Pages:
    return Pages([(r.start, r.end) for r in regions], page_size)


def _expand(ranges: np.ndarray, page_size: int) -> np.ndarray:
    return Pages._trusted(np.ascontiguousarray(ranges, _U64), page_size).addresses() \
        if len(ranges) else np.empty(0, _U64)


def _runs(dst: np.ndarray, src: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Split parallel index arrays into runs where both advance by one: (dst, src, n)."""
    if not len(dst):
        return
    brk = np.flatnonzero((np.diff(dst) != 1) | (np.diff(src) != 1)) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(dst)]])
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(dst[s]), int(src[s]), e - s


def _extents(addrs: np.ndarray, chunk: np.ndarray, page: np.ndarray,
             page_size: int) -> np.ndarray:
    """Coalesce per-page (addr, chunk, page) into EXTENT records."""
    n = len(addrs)
    if not n:
        return np.empty(0, EXTENT)
    same = (np.diff(addrs.astype(np.int64)) == page_size) & (np.diff(chunk) == 0) & \
        ((np.diff(page) == 1) | (chunk[1:] == ZERO))
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1])
    counts = np.diff(np.concatenate([starts, [n]]))
    out = np.empty(len(starts), EXTENT)
    out["addr"] = addrs[starts]
    out["npages"] = counts
    out["chunk"] = chunk[starts]
    out["page"] = np.where(chunk[starts] == ZERO, 0, page[starts])
    return out


class Snapshots:
    """The snapshots in a store: list, restore, verify, diff, compact, prune, gc.

    Reading takes no lock (manifests and chunks are immutable once visible); operations that
    delete or replace take the store's writer lock for their duration."""

    def __init__(self, store: Store | str | os.PathLike[str], *, create: bool = False) -> None:
        self.store = open_store(store, create=create)
        self.digest = hasher(self.store.hash_name)
        self._cache: dict[str, Manifest] = {}
        self._local = threading.local()

    # -- names and manifests --------------------------------------------------------------------
    def names(self) -> list[str]:
        return [n.partition("/")[2] for n in self.store.list("snapshots/")]

    def name(self, ref: Any) -> str:
        """The snapshot name for ``ref``: a name, a number, a SnapshotInfo, or "latest"/-1."""
        if isinstance(ref, SnapshotInfo):
            return ref.name
        names = self.names()
        if ref in ("latest", -1):
            if not names:
                raise NoSuchSnapshot(f"{self.store.url} holds no snapshots")
            return names[-1]
        name = f"{ref:06d}" if isinstance(ref, int) else str(ref)
        if name.isdigit():
            name = f"{int(name):06d}"
        if name not in names:
            shown = ", ".join(names[-5:]) or "none"
            raise NoSuchSnapshot(f"no snapshot {ref!r} in {self.store.url}",
                                 hint=f"latest snapshots: {shown}")
        return name

    def manifest(self, ref: Any) -> Manifest:
        exact = isinstance(ref, str) and len(ref) == 6 and ref.isdigit()
        name = ref if exact else self.name(ref)
        m = self._cache.get(name)
        if m is None:
            try:
                blob = self.store.get(f"snapshots/{name}")
            except BlobNotFound:
                raise NoSuchSnapshot(f"no snapshot {name!r} in {self.store.url}") from None
            m = decode_manifest(bytes(blob), self.digest, name)
            self._cache[name] = m
        return m

    def chain(self, ref: Any) -> list[Manifest]:
        """The manifests from ``ref`` back to its full base (newest first)."""
        m = self.manifest(self.name(ref))
        out = [m]
        seen = {m.name}
        while m.parent is not None:
            try:
                parent = self.manifest(m.parent)
            except NoSuchSnapshot:
                raise CorruptSnapshot(f"its parent {m.parent} is missing",
                                      snapshot=out[0].name if len(out) == 1 else m.name) \
                    from None
            if parent.name in seen or parent.name >= m.name:
                raise CorruptSnapshot(f"parent chain loops at {parent.name}", snapshot=m.name)
            seen.add(parent.name)
            out.append(parent)
            m = parent
        return out

    def info(self, ref: Any) -> SnapshotInfo:
        m = self.manifest(self.name(ref))
        return SnapshotInfo(m.name, m.parent, m.kind, m.created, m.npages, m.nbytes,
                            int(m.stats.get("stored_bytes", 0)), len(m.regions),
                            str(m.source.get("kind", "")),
                            m.stats.get("pause"))

    def list(self) -> tuple[SnapshotInfo, ...]:
        return tuple(self.info(n) for n in self.names())

    # -- resolve and read -----------------------------------------------------------------------
    def resolve(self, ref: Any) -> _Resolved:
        chain = self.chain(ref)
        top = chain[0]
        ps = top.page_size
        # region order (the order of the restored image)
        addrs = np.concatenate([np.arange(r.start, r.end, ps, dtype=_U64)
                                for r in top.regions]) if top.regions else np.empty(0, _U64)
        n = len(addrs)
        chunk = np.full(n, -2, np.int64)
        page = np.zeros(n, np.int64)
        keys: list[bytes] = []
        owner: list[str] = []
        index: dict[bytes, int] = {}
        for depth, m in enumerate(chain):
            todo = np.flatnonzero(chunk == -2)
            if not len(todo):
                break
            if m.page_size != ps:
                raise CorruptSnapshot("page size differs from its child's", snapshot=m.name)
            if depth:
                inside = _region_pages(m.regions, ps)
                missing = np.array([a not in inside for a in addrs[todo[:1]].tolist()])
                if missing.any():
                    raise CorruptSnapshot(
                        f"page {int(addrs[todo[0]]):#x} of {top.name} is in no snapshot of "
                        f"its chain", snapshot=m.name)
            e = m.extents
            if not len(e):
                continue
            counts = e["npages"].astype(np.int64)
            pa = np.repeat(e["addr"], counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            within = np.arange(int(counts.sum()), dtype=np.int64) - first
            pa = pa + within.astype(_U64) * _U64(ps)
            pc = np.repeat(e["chunk"].astype(np.int64), counts)
            pp = np.repeat(e["page"].astype(np.int64), counts) + within
            order = np.argsort(pa, kind="stable")
            pa, pc, pp = pa[order], pc[order], pp[order]
            want = addrs[todo]
            pos = np.searchsorted(pa, want)
            pos_c = np.minimum(pos, len(pa) - 1)
            hit = (pos < len(pa)) & (pa[pos_c] == want)
            sel, src = todo[hit], pos_c[hit]
            local = pc[src]
            gl = np.full(len(m.chunks) + 1, -1, np.int64)
            for i, k in enumerate(m.chunks):
                j = index.get(k)
                if j is None:
                    j = index[k] = len(keys)
                    keys.append(k)
                    owner.append(m.name)
                gl[i] = j
            chunk[sel] = np.where(local == ZERO, -1, gl[np.minimum(local, len(m.chunks))])
            page[sel] = np.where(local == ZERO, 0, pp[src])
        if (chunk == -2).any():
            a = int(addrs[np.flatnonzero(chunk == -2)[0]])
            raise CorruptSnapshot(f"page {a:#x} is in no snapshot of its chain "
                                  f"(base {chain[-1].name} does not cover it)",
                                  snapshot=top.name)
        return _Resolved(top, addrs, chunk, page, keys, owner)

    def _fill(self, res: _Resolved, idx: np.ndarray, out: np.ndarray,
              advance: Any = None) -> None:
        """Write pages ``res[idx]`` into ``out`` viewed as (len(idx), page_size)."""
        ps = res.manifest.page_size
        rows = out.reshape(-1, ps)
        ch = res.chunk[idx]
        # a read buffer per thread, reused: a fresh one per chunk costs its page faults
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = bytearray(DEFAULT_CHUNK + 64)
        order = np.lexsort((res.page[idx], ch))
        ch_sorted = ch[order]
        bounds = np.flatnonzero(np.diff(ch_sorted)) + 1
        starts = np.concatenate([[0], bounds]) if len(order) else np.empty(0, np.int64)
        ends = np.concatenate([bounds, [len(order)]]) if len(order) else np.empty(0, np.int64)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            c = int(ch_sorted[s])
            dst = order[s:e]
            src = res.page[idx][dst]
            if c < 0:
                for d, _, n in _runs(dst, dst):
                    rows[d:d + n] = 0
            else:
                key = res.keys[c]
                try:
                    blob = self.store.get_into(f"chunks/{key.hex()}", scratch)
                except BlobNotFound:
                    raise CorruptSnapshot("chunk is missing", snapshot=res.owner[c],
                                          chunk=key.hex()) from None
                raw = np.frombuffer(decode_chunk(blob, key, self.digest,
                                                 snapshot=res.owner[c]), np.uint8)
                if raw.nbytes % ps or int(src.max()) >= raw.nbytes // ps:
                    raise CorruptSnapshot("chunk is shorter than its extents say",
                                          snapshot=res.owner[c], chunk=key.hex())
                crow = raw.reshape(-1, ps)
                for d, sp, n in _runs(dst, src):
                    rows[d:d + n] = crow[sp:sp + n]
            if advance is not None:
                advance((e - s) * ps)

    def restore(self, ref: Any, into: Any = None, *, progress: bool | None = None,
                pid: int | None = None) -> Image:
        """The memory of snapshot ``ref``, exactly.

        ``into``: a writable buffer of exactly the image size (one buffer target: its
        length), or a sequence of buffers, one per region. Without it a new array is made.
        A wrong size raises :class:`SizeMismatch` before anything is written. ``pid``: of a
        tree snapshot, the process whose image is restored (default: the root)."""
        res = self.resolve(ref)
        m = res.manifest
        if m.source.get("kind") == "tree":
            return self._restore_tree(res, into, pid, progress)
        if pid is not None and pid != m.source.get("pid"):
            raise errors.NoSuchProcess(pid, f"snapshot {m.name} is of process "
                                       f"{m.source.get('pid')}")
        ps = m.page_size
        exact = [(r.data_start - r.start if r.data_start is not None else 0,
                  r.data_length if r.data_length is not None else r.length) for r in m.regions]
        sizes = [n for _, n in exact]
        total = sum(sizes)
        offsets = tuple(int(x) for x in np.cumsum([0, *sizes])[:-1])
        outs = self._outputs(m, into, sizes, total)
        page_exact = all(off == 0 and n == r.length for (off, n), r in
                         zip(exact, m.regions, strict=True))
        with _progress(f"restore {m.name}", len(res.addrs) * ps, progress) as advance:
            if page_exact and len(outs) == 1:
                self._fill(res, np.arange(len(res.addrs)), outs[0], advance)
            else:
                pos = 0
                for r, (off, n), o in zip(m.regions, exact, self._split(outs, sizes),
                                          strict=True):
                    k = r.length // ps
                    idx = np.arange(pos, pos + k)
                    if off == 0 and n == r.length:
                        self._fill(res, idx, o, advance)
                    else:
                        scratch = np.empty(r.length, np.uint8)
                        self._fill(res, idx, scratch, advance)
                        o[:] = scratch[off:off + n]
                    pos += k
        data = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return Image(m.name, m.regions, offsets, data, m.maps)

    def _restore_tree(self, res: _Resolved, into: Any, pid: int | None,
                      progress: bool | None) -> Image:
        """One process of a tree snapshot: its private regions from its space, its shared
        mappings from their objects' spaces (see :mod:`writewatch.snapshot.tree`)."""
        from .tree import assemble
        m = res.manifest
        ps = m.page_size
        regions, starts = assemble(m.source, pid)
        sizes = [r.length for r in regions]
        outs = self._outputs(m, into, sizes, sum(sizes))
        order = np.argsort(res.addrs, kind="stable")
        sorted_addrs = res.addrs[order]
        want = np.concatenate([_U64(a) + np.arange(r.length // ps, dtype=_U64) * _U64(ps)
                               for r, a in zip(regions, starts, strict=True)]) \
            if regions else np.empty(0, _U64)
        pos = np.searchsorted(sorted_addrs, want)
        ok = (pos < len(sorted_addrs)) & (sorted_addrs[np.minimum(pos, len(sorted_addrs) - 1)]
                                          == want)
        if not ok.all():
            raise CorruptSnapshot("a page of the process is in no region of the snapshot",
                                  snapshot=m.name)
        idx = order[pos]
        with _progress(f"restore {m.name}", len(idx) * ps, progress) as advance:
            if len(outs) == 1:
                self._fill(res, idx, outs[0], advance)
            else:
                k = 0
                for o, r in zip(outs, regions, strict=True):
                    n = r.length // ps
                    self._fill(res, idx[k:k + n], o, advance)
                    k += n
        offsets = tuple(int(x) for x in np.cumsum([0, *sizes])[:-1])
        data = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return Image(m.name, tuple(regions), offsets, data, ())

    @staticmethod
    def _as_bytes(buf: Any) -> np.ndarray:
        try:
            mv = memoryview(buf)
        except TypeError:
            raise errors.InvalidTarget(f"cannot restore into a {type(buf).__name__}",
                                       hint="pass a writable buffer") from None
        if mv.readonly:
            raise errors.InvalidTarget(f"{type(buf).__name__} is read-only",
                                       hint="restore into writable memory")
        if not mv.c_contiguous:
            raise errors.InvalidTarget("the buffer is not contiguous",
                                       hint="restore into a C-contiguous buffer")
        return np.frombuffer(mv.cast("B") if mv.nbytes else b"", np.uint8) if mv.nbytes \
            else np.empty(0, np.uint8)

    def _outputs(self, m: Manifest, into: Any, sizes: builtins.list[int],
                 total: int) -> builtins.list[np.ndarray]:
        if into is None:
            return [np.empty(total, np.uint8)]
        if isinstance(into, (list, tuple)):
            arrs = [self._as_bytes(b) for b in into]
            got = [a.nbytes for a in arrs]
            if got != sizes:
                raise SizeMismatch(f"snapshot {m.name} has {len(sizes)} region(s) of "
                                   f"{sizes} bytes; the buffers have {got}",
                                   hint="pass one buffer per region, each of its size")
            return arrs
        arr = self._as_bytes(into)
        if arr.nbytes != total:
            raise SizeMismatch(f"snapshot {m.name} is {total} bytes; the buffer is "
                               f"{arr.nbytes}", hint=f"restore into a buffer of {total} bytes")
        return [arr]

    @staticmethod
    def _split(outs: builtins.list[np.ndarray],
               sizes: builtins.list[int]) -> builtins.list[np.ndarray]:
        if len(outs) == len(sizes):
            return outs
        offs = np.cumsum([0, *sizes])
        return [outs[0][offs[i]:offs[i + 1]] for i in range(len(sizes))]

    # -- checks ---------------------------------------------------------------------------------
    def verify(self, refs: Sequence[Any] | None = None) -> VerifyReport:
        """Decode every manifest, check every chunk it references, and resolve every chain.
        Problems are collected, not raised."""
        names = self.names() if refs is None else [self.name(r) for r in refs]
        problems: list[CorruptSnapshot | SnapshotError] = []
        checked: set[bytes] = set()
        bad: dict[bytes, CorruptSnapshot] = {}
        for name in names:
            try:
                m = self.manifest(name)
                self.resolve(name)
            except SnapshotError as exc:
                problems.append(exc)
                continue
            for key in m.chunks:
                if key in checked:
                    if key in bad:
                        problems.append(CorruptSnapshot(bad[key].message.split(": ", 2)[-1],
                                                        snapshot=name, chunk=key.hex()))
                    continue
                checked.add(key)
                try:
                    blob = self.store.get(f"chunks/{key.hex()}")
                    decode_chunk(blob, key, self.digest, snapshot=name)
                except BlobNotFound:
                    bad[key] = CorruptSnapshot("chunk is missing", snapshot=name,
                                               chunk=key.hex())
                    problems.append(bad[key])
                except CorruptSnapshot as exc:
                    bad[key] = exc
                    problems.append(exc)
        return VerifyReport(len(names), len(checked), tuple(problems))

    def diff(self, a: Any, b: Any, *, content: bool = True) -> Diff:
        """Pages and mappings that differ between snapshots ``a`` and ``b``. Pages whose
        chunk references differ are compared byte for byte (``content=False``: reported
        as changed without reading them)."""
        ra, rb = self.resolve(a), self.resolve(b)
        ps = ra.manifest.page_size
        pa, pb = _region_pages(ra.manifest.regions, ps), _region_pages(rb.manifest.regions, ps)
        common = (pa & pb).addresses()
        ia = np.argsort(ra.addrs, kind="stable")
        ib = np.argsort(rb.addrs, kind="stable")
        xa = ia[np.searchsorted(ra.addrs[ia], common)]
        xb = ib[np.searchsorted(rb.addrs[ib], common)]
        ka = np.array([ra.keys[c] if c >= 0 else b"" for c in ra.chunk[xa].tolist()],
                      dtype=object)
        kb = np.array([rb.keys[c] if c >= 0 else b"" for c in rb.chunk[xb].tolist()],
                      dtype=object)
        differ = (ka != kb) | (ra.page[xa] != rb.page[xb])
        differ &= ~((ra.chunk[xa] < 0) & (rb.chunk[xb] < 0))
        cand = np.flatnonzero(differ)
        if content and len(cand):
            bufa = np.empty(len(cand) * ps, np.uint8)
            bufb = np.empty(len(cand) * ps, np.uint8)
            self._fill(ra, xa[cand], bufa)
            self._fill(rb, xb[cand], bufb)
            neq = (bufa.reshape(-1, ps) != bufb.reshape(-1, ps)).any(axis=1)
            cand = cand[neq]
        changed = Pages.from_addresses(common[cand], ps) if len(cand) else Pages((), ps)
        ma = {r.start: r for r in ra.manifest.regions}
        mb = {r.start: r for r in rb.manifest.regions}
        return Diff(ra.manifest.name, rb.manifest.name, changed, pb - pa, pa - pb,
                    tuple(r for s, r in mb.items() if s not in ma),
                    tuple(r for s, r in ma.items() if s not in mb),
                    tuple((ma[s], mb[s]) for s in ma if s in mb
                          and _meta(ma[s]) != _meta(mb[s])))

    # -- maintenance ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        held = getattr(self.store, "locked", False)
        if not held:
            self.store.acquire()
        try:
            yield
        finally:
            if not held:
                self.store.release()

    def compact(self, ref: Any) -> SnapshotInfo:
        """Rewrite snapshot ``ref`` as a full one (same name, same bytes): it no longer needs
        its ancestors. Its manifest points straight at the chunks holding each page (no page
        data is copied); the replacement is atomic."""
        with self._writer():
            res = self.resolve(ref)
            m = res.manifest
            if m.parent is None:
                return self.info(m.name)
            order = np.argsort(res.addrs, kind="stable")
            used = np.unique(res.chunk[res.chunk >= 0])
            remap = np.full(len(res.keys) + 1, ZERO, np.int64)
            remap[used] = np.arange(len(used))
            ch = np.where(res.chunk[order] < 0, ZERO, remap[res.chunk[order]])
            ext = _extents(res.addrs[order], ch.astype(np.int64), res.page[order],
                           m.page_size)
            stats = dict(m.stats, compacted_from=m.parent)
            new = Manifest(m.name, None, m.created, m.page_size, m.regions,
                           tuple(res.keys[i] for i in used.tolist()), ext, m.source, m.maps,
                           stats)
            self.store.commit(f"snapshots/{m.name}", encode_manifest(new, self.digest))
            self._cache.pop(m.name, None)
            return self.info(m.name)

    def delete(self, refs: Sequence[Any]) -> None:
        """Delete snapshots; any other snapshot that depends on one is compacted first."""
        with self._writer():
            names = self.names()
            doomed = {self.name(r) for r in refs}
            for n in names:
                if n in doomed:
                    continue
                if any(c.name in doomed for c in self.chain(n)[1:]):
                    self.compact(n)
            # children before parents: a crash leaves every remaining chain whole
            for n in sorted(doomed, reverse=True):
                self.store.delete(f"snapshots/{n}")
                self._cache.pop(n, None)
            sync = getattr(self.store, "sync", None)
            if sync:
                sync()
            self.gc()

    def prune(self, keep: int) -> builtins.list[str]:
        """Keep the newest ``keep`` snapshots (compacting the oldest kept one into a base
        when needed), delete the rest and their unreferenced chunks. Returns the deleted."""
        if keep < 1:
            raise errors.InvalidTarget(f"keep={keep}", hint="keep at least one snapshot")
        names = self.names()
        doomed = names[:-keep] if len(names) > keep else []
        if doomed:
            self.delete(doomed)
        return doomed

    def gc(self) -> int:
        """Delete chunks no manifest references. Returns how many were deleted."""
        with self._writer():
            live: set[str] = set()
            for n in self.names():
                live.update(k.hex() for k in self.manifest(n).chunks)
            gone = 0
            for blob in self.store.list("chunks/"):
                if blob.partition("/")[2] not in live:
                    self.store.delete(blob)
                    gone += 1
            sync = getattr(self.store, "sync", None)
            if sync:
                sync()
            return gone

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Snapshots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _live_images(src: Any) -> dict[int | None, Image]:
    """During a pause: the whole writable memory of every process of ``src``, read now."""
    from ..kernel import procfs
    from .source import process_vm_readv
    pids = list(getattr(getattr(src, "tracker", None), "processes", ()) or ()) \
        if getattr(src, "kind", "") == "tree" else [src.pid]
    out: dict[int | None, Image] = {}
    for pid in pids:
        regs = tuple(Region(m.start, m.end, m.perms, m.offset, m.path)
                     for m in procfs.read_maps(pid)
                     if m.perms[:2] == "rw" and m.path not in procfs.SPECIAL)
        runs = np.array([(r.start, r.end) for r in regs], _U64).reshape(-1, 2)
        buf = np.empty(int((runs[:, 1] - runs[:, 0]).sum()), np.uint8)
        process_vm_readv(pid, runs, buf)
        offs = tuple(int(x) for x in np.cumsum([0, *(r.length for r in regs)])[:-1])
        out[pid] = Image("live", regs, offs, buf)
    return out


def _meta(r: Region) -> tuple[Any, ...]:
    return (r.end, r.perms, r.offset, r.path)


def _make_source(target: Any, backend: str, stop: bool | str, shared: str) -> Source:
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
        return BufferSource(target)
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
    return BufferSource(track(target, backend=backend), owned=True)


class Snapshotter:
    """Incremental snapshots of tracked memory into a store.

    ``target``: a buffer (anything :func:`writewatch.track` takes), a :class:`Tracker`,
    a PID or a process tracker from :func:`writewatch.attach`. ``store``: a directory path
    or a :class:`Store`. The Snapshotter holds the store's writer lock until closed.

    Consistency: ``save()`` collects (which re-arms the written pages in the same kernel call)
    and then reads those pages. For a process the target is stopped from just before the
    collect until the pages are read. For a buffer of this process nothing is stopped:
    a page written while being read may hold a mix of old and new bytes in this snapshot,
    and is complete in the next one (its write was re-armed before the read, so it is
    reported again). Stop writing during ``save()`` for an exact moment.

    ``stop`` (processes): True/"auto" (ptrace interrupt, SIGSTOP when ptrace is refused),
    "ptrace", "sigstop", or False (never stop: each page is as it was when read).

    A process tracker of several processes (``attach(pid, tree=True)``, ``follow_forks``,
    a cgroup, launch) is saved as a tree (:mod:`writewatch.snapshot.tree`): every process at
    one pause, shared memory once; ``restore(ref, pid=...)`` gives one process's image.
    ``shared``: what to do when processes outside the tracked set map its shared memory
    writable: "fail" (raise :class:`~writewatch.snapshot.tree.SharedWithUntracked`) or
    "pause" (stop them during each save too).
    """

    def __init__(self, target: Any, store: Store | str | os.PathLike[str], *,
                 compress: str | None = None, level: int = 1, chunk_size: int = DEFAULT_CHUNK,
                 zero_pages: bool = True, backend: str = "auto", progress: bool | None = None,
                 stop: bool | str = True, shared: str = "fail") -> None:
        if compress not in (None, "zstd"):
            raise errors.InvalidTarget(f"compress={compress!r}", hint="None or 'zstd'")
        self._owns_store = not isinstance(store, Store)
        self.snapshots = Snapshots(store, create=True)
        self.store = self.snapshots.store
        self.store.acquire()
        try:
            self.source = _make_source(target, backend, stop, shared)
        except BaseException:
            self.store.close() if self._owns_store else self.store.release()
            raise
        ps = self.source.page_size
        if chunk_size < ps or chunk_size % ps:
            self.close()
            raise errors.InvalidTarget(f"chunk_size={chunk_size}",
                                       hint=f"a positive multiple of the page size ({ps})")
        self.codec = CODEC_ZSTD if compress == "zstd" else CODEC_RAW
        self.level = level
        self.chunk_pages = chunk_size // ps
        self.zero_pages = zero_pages
        self.progress = progress
        self._last: Manifest | None = None
        self._hashes: dict[int, int] = {}
        # chunk buffers are reused: a fresh multi-MiB array costs its page faults (and, with
        # THP, the zeroing of huge pages) on every save
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self._pooled = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- saving ---------------------------------------------------------------------------------
    def _next_name(self) -> str:
        names = self.snapshots.names()
        return f"{int(names[-1]) + 1 if names else 1:06d}"

    def _changed_by_content(self, pages: Pages) -> Pages:
        """Of ``pages`` (not covered by a tracker), those whose content hash changed."""
        import xxhash
        if not pages:
            return pages
        ps = self.source.page_size
        runs = pages.ranges
        buf = np.empty(pages.nbytes, np.uint8)
        self.source.read(runs, buf)
        addrs = pages.addresses().tolist()
        rows = buf.reshape(-1, ps)
        changed = []
        h = xxhash.xxh3_64_intdigest
        old = self._hashes
        new: dict[int, int] = {}
        for i, a in enumerate(addrs):
            v = h(rows[i])
            new[a] = v
            if old.get(a) != v:
                changed.append(a)
        self._hashes = new
        return Pages.from_addresses(changed, ps) if changed else Pages((), ps)

    #: chunk buffers kept for reuse between saves
    POOL = 16

    def _buffer(self, nbytes: int) -> np.ndarray:
        cap = self.chunk_pages * self.source.page_size
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            buf = np.empty(cap, np.uint8)
            self._pooled += 1
        return buf[:nbytes]

    def _release(self, buf: np.ndarray) -> None:
        base = buf.base if isinstance(buf.base, np.ndarray) else buf
        if self._free.qsize() < self.POOL:
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

    def save(self, *, verify: bool = False) -> SnapshotInfo:
        """Save a snapshot: full the first time, then only the pages written since the
        previous save. Returns its :class:`SnapshotInfo` once it is durable and visible.

        ``verify`` (processes): also read all of the memory in the same pause and compare
        the restored snapshot with it; any difference raises :class:`SnapshotError` (a
        wrong image never passes). It costs a full read per save."""
        with self._lock:
            self._check_open()
            src = self.source
            parent = self._last
            t0 = time.perf_counter()
            truth: dict[int | None, Image] = {}
            hook = getattr(src, "on_pause", None)
            if verify:
                if not hasattr(src, "on_pause"):
                    raise errors.InvalidTarget("verify needs a process source (a buffer of "
                                               "this process is never paused)")
                src.on_pause = lambda s: (truth.update(_live_images(s)),
                                          hook(s) if hook else None)
            try:
                m = self._save(src, parent, t0)
            except BaseException:
                # the collect re-armed the pages it reported: a save that does not complete
                # must not leave the next one a delta that lacks them
                self._last = None
                raise
            finally:
                if verify:
                    src.on_pause = hook  # type: ignore[attr-defined]
            self.snapshots._cache[m.name] = m
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

    def _save(self, src: Source, parent: Manifest | None, t0: float) -> Manifest:
        ps = src.page_size
        stream = isinstance(src, BufferSource)
        bufs: list[tuple[np.ndarray, np.ndarray]] = []
        with src.paused():
            maps = src.maps()
            regions = src.regions(maps)
            tc = time.perf_counter()
            written = src.collect()
            t_collect = time.perf_counter() - tc
            every = _region_pages(regions, ps)
            if parent is None:
                want = every
            else:
                before = set(parent.regions)
                same = _region_pages([r for r in regions if r in before], ps)
                want = (written & every) | (every - same)
            untracked = every - src.tracked()
            if untracked:
                want = want | self._changed_by_content(untracked)
            plans = self._plan(want)
            tr = time.perf_counter()
            if not stream:
                for runs in plans:
                    into = self._buffer(int((runs[:, 1] - runs[:, 0]).sum()))
                    src.read(runs, into)
                    bufs.append((runs, into))
            t_read = time.perf_counter() - tr
        pause = time.perf_counter() - t0 if not stream else None
        name = self._next_name()
        chunks: list[bytes] = []
        index: dict[bytes, int] = {}
        extents: list[np.ndarray] = []
        stored = 0
        with _progress(f"save {name}", want.nbytes, self.progress) as advance:
            items = bufs if not stream else ((r, None) for r in plans)
            for runs, got in items:
                buf: np.ndarray | None = got
                if buf is None:
                    buf = self._buffer(int((runs[:, 1] - runs[:, 0]).sum()))
                    src.read(runs, buf)
                ext, nbytes = self._pack(runs, buf, chunks, index)
                extents.append(ext)
                stored += nbytes
                advance(buf.nbytes)
        ext_all = np.concatenate(extents) if extents else np.empty(0, EXTENT)
        stats: dict[str, Any] = {
            "written_reported": len(written), "pages": len(want),
            "stored_bytes": stored, "chunks": len(chunks),
            "seconds": round(time.perf_counter() - t0, 6),
        }
        if pause is not None:
            stats["pause"] = round(getattr(src, "last_pause", pause), 6)
            stats["stopped_by"] = getattr(src, "stopped_by", "")
            stats["pause_collect"] = round(t_collect, 6)
            stats["pause_read"] = round(t_read, 6)
        m = Manifest(name, parent.name if parent else None, time.time(), ps, regions,
                     tuple(chunks), ext_all, src.describe(), maps, stats)
        self.store.commit(f"snapshots/{name}",
                          encode_manifest(m, self.snapshots.digest))
        return m

    def _pack(self, runs: np.ndarray, buf: np.ndarray | None, chunks: list[bytes],
              index: dict[bytes, int]) -> tuple[np.ndarray, int]:
        """Store one chunk's pages; return its extents and the bytes written. ``buf`` goes
        back to the pool once nothing reads it any more."""
        assert buf is not None
        ps = self.source.page_size
        rows = buf.reshape(-1, ps)
        data = rows
        nz: np.ndarray | None = None
        if self.zero_pages:
            nz = np.bitwise_or.reduce(rows.view(np.uint64), axis=1) != 0
            if nz.all():
                nz = None
            else:
                data = rows[nz]
        written = 0
        ci = ZERO
        if len(data):
            raw = data.reshape(-1)
            key = self.snapshots.digest(raw)
            ci = index.get(key, -1)
            if ci < 0:
                ci = index[key] = len(chunks)
                chunks.append(key)
                blob = f"chunks/{key.hex()}"
                if not self.store.exists(blob):
                    parts = encode_chunk(raw, self.codec, self.level)
                    written = sum(memoryview(p).nbytes for p in parts)
                    if parts[1] is raw and nz is None:  # raw is a view of buf
                        self.store.put(blob, parts, done=functools.partial(self._release, buf))
                        buf = None  # the store hands it back
                    else:
                        self.store.put(blob, parts)
        if buf is not None:
            self._release(buf)
        if nz is None:
            lengths = (runs[:, 1] - runs[:, 0]) // _U64(ps)
            ext = np.empty(len(runs), EXTENT)
            ext["addr"] = runs[:, 0]
            ext["npages"] = lengths
            ext["chunk"] = ci
            ext["page"] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            return ext, written
        addrs = _expand(runs, ps)  # runs are sorted and disjoint: same order as rows
        chunk = np.where(nz, ci, ZERO).astype(np.int64)
        page = np.cumsum(nz) - 1
        return _extents(addrs, chunk, page, ps), written

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
        return self.snapshots.compact(snapshot)

    def prune(self, keep: int) -> builtins.list[str]:
        with self._lock:
            return self.snapshots.prune(keep)

    # -- lifecycle ------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise errors.TrackerClosed("this Snapshotter is closed",
                                       hint="create a new Snapshotter")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            src = getattr(self, "source", None)
            if src is not None:
                src.close()
        finally:
            if self._owns_store:
                self.store.close()
            else:
                flush = getattr(self.store, "flush", None)
                try:
                    if flush:
                        flush()
                finally:
                    self.store.release()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
