"""Reading a store: :class:`Snapshots` lists, restores, verifies, diffs, compacts and prunes.

Restoring snapshot N walks the chain N, N-1, … back to a full one and takes each page from
the newest snapshot that holds it; every chunk it needs is read once, straight into the
destination (:mod:`.fill`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np

from .. import errors
from ..pages import Pages
from .errors import CorruptSnapshot, NoSuchSnapshot, SizeMismatch, SnapshotError
from .fill import ChunkFiller
from .format import (
    EXTENT,
    PAGE_DIGEST,
    ZERO,
    Manifest,
    Region,
    decode_chunk,
    decode_manifest,
    encode_manifest,
    hasher,
    page_digests,
    stream_hasher,
)
from .progress import progress as _progress
from .store import BlobNotFound, Store, open_store

__all__ = ["Diff", "Image", "SnapshotInfo", "Snapshots", "VerifyReport"]

_U64 = np.uint64


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot, as :meth:`Snapshots.list` and ``save()`` report it."""

    name: str
    parent: str | None
    kind: str  #: "full" or "delta"
    created: float
    pages: int  #: pages this snapshot stores (data or zero)
    image_bytes: int  #: size of the memory it restores
    stored_bytes: int  #: bytes of new chunks it wrote
    regions: int
    source: str
    pause: float | None  #: seconds the target was stopped (processes; buffers with a pause)
    #: bytes of non-zero pages it did not store because the store held them already
    #: (whatever snapshot or chain they came from) or they occur twice in it
    dedup_bytes: int = 0
    #: "tracking" (the pages written since the parent, as the tracker reported them),
    #: "content" (every page compared with the parent's: a chain continued by a new
    #: Snapshotter), or "" (a full snapshot)
    delta_by: str = ""
    #: pre-copy (``max_pause``): rounds of reading while the target ran, bytes read again
    #: because they were written meanwhile, and whether what was left fitted the budget
    #: (None: stop-and-copy, no pre-copy)
    rounds: int = 0
    reread_bytes: int = 0
    converged: bool | None = None
    paused_bytes: int = 0  #: bytes read while the target was stopped
    #: why its manifest cannot be read ("": it can); :meth:`Snapshots.list` still lists it,
    #: with kind "damaged" and no figures, so that the others stay usable
    damaged: str = ""


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
                 page: np.ndarray, keys: list[bytes], owner: list[str],
                 digests: np.ndarray | None) -> None:
        self.manifest = manifest
        self.addrs = addrs  #: page addresses, in region order
        self.chunk = chunk  #: index into keys, -1 for a zero page
        self.page = page  #: page within the chunk
        self.keys = keys
        self.owner = owner  #: per key: the snapshot that lists it (for error messages)
        #: (n, 2) u64 digest of every page (zeros for a zero page); None when a manifest of
        #: the chain has no page digests (format 1)
        self.digests = digests

    def lookup(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For page addresses: (index into this resolution or -1, found)."""
        order = np.argsort(self.addrs, kind="stable")
        sa = self.addrs[order]
        pos = np.minimum(np.searchsorted(sa, addrs), max(len(sa) - 1, 0))
        found = (pos < len(sa)) & (sa[pos] == addrs) if len(sa) else \
            np.zeros(len(addrs), bool)
        return np.where(found, order[pos] if len(sa) else -1, -1), found


def _region_pages(regions: Sequence[Region], page_size: int) -> Pages:
    return Pages([(r.start, r.end) for r in regions], page_size)


def _expand(ranges: np.ndarray, page_size: int) -> np.ndarray:
    return Pages._trusted(np.ascontiguousarray(ranges, _U64), page_size).addresses() \
        if len(ranges) else np.empty(0, _U64)


def _expand_extents(e: np.ndarray, ps: int) -> tuple[np.ndarray, ...]:
    """Per page of extents ``e``, sorted by address: (address, chunk index or ZERO, page in
    the chunk, ordinal among the data pages, i.e. the index of its page digest)."""
    counts = e["npages"].astype(np.int64)
    total = int(counts.sum())
    first = np.repeat(np.cumsum(counts) - counts, counts)
    within = np.arange(total, dtype=np.int64) - first
    pa = np.repeat(e["addr"], counts) + within.astype(_U64) * _U64(ps)
    pc = np.repeat(e["chunk"].astype(np.int64), counts)
    pp = np.repeat(e["page"].astype(np.int64), counts) + within
    dcounts = np.where(e["chunk"] != ZERO, counts, 0)
    pd = np.repeat(np.cumsum(dcounts) - dcounts, counts) + within
    if len(pa) < 2 or bool((pa[1:] > pa[:-1]).all()):  # extents are stored sorted
        return pa, pc, pp, pd
    order = np.argsort(pa, kind="stable")
    return pa[order], pc[order], pp[order], pd[order]


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
        #: threads that restore chunks in parallel (default: the CPUs, at most 4)
        self.workers: int | None = None

    # -- names and manifests --------------------------------------------------------------------
    def names(self) -> list[str]:
        """The snapshot names, oldest first (six digits: other files there are not
        snapshots)."""
        out = []
        for n in self.store.list("snapshots/"):
            name = n.partition("/")[2]
            if len(name) == 6 and name.isdigit():
                out.append(name)
        return out

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
        st = m.stats
        pre = st.get("precopy") or {}
        return SnapshotInfo(m.name, m.parent, m.kind, m.created, m.npages, m.nbytes,
                            int(st.get("stored_bytes", 0)), len(m.regions),
                            str(m.source.get("kind", "")), st.get("pause"),
                            int(st.get("dedup_bytes", 0)),
                            "" if m.parent is None else str(st.get("delta_by", "tracking")),
                            int(pre.get("rounds", 0)), int(pre.get("reread_bytes", 0)),
                            pre.get("converged"), int(st.get("paused_bytes", 0)))

    def list(self) -> tuple[SnapshotInfo, ...]:
        """Every snapshot, oldest first; one whose manifest is damaged is listed with kind
        "damaged" and the reason in ``damaged`` (:meth:`info` and :meth:`restore` of it
        raise :class:`CorruptSnapshot`)."""
        out = []
        for n in self.names():
            try:
                out.append(self.info(n))
            except CorruptSnapshot as exc:
                out.append(SnapshotInfo(n, None, "damaged", 0.0, 0, 0, 0, 0, "", None,
                                        damaged=exc.message))
        return tuple(out)

    def readable(self) -> Iterator[Manifest]:
        """The manifests that decode, oldest first (the damaged ones skipped)."""
        for n in self.names():
            try:
                yield self.manifest(n)
            except CorruptSnapshot:
                continue

    # -- resolve and read -----------------------------------------------------------------------
    def resolve(self, ref: Any, *, digests: bool = True) -> _Resolved:
        """Where each page of ``ref`` comes from: its chain's manifests applied oldest first,
        each newer one replacing the pages it holds. ``digests``: also each page's digest
        (None when a manifest of the chain has none)."""
        chain = self.chain(ref)
        top = chain[0]
        ps = top.page_size
        for m in chain:
            if m.page_size != ps:
                raise CorruptSnapshot("page size differs from its child's", snapshot=m.name)
        regs = top.regions
        counts = np.array([r.length // ps for r in regs], np.int64)
        # region order (the order of the restored image)
        addrs = np.concatenate([np.arange(r.start, r.end, ps, dtype=_U64) for r in regs]) \
            if regs else np.empty(0, _U64)
        n = len(addrs)
        by_start = np.argsort(np.array([r.start for r in regs], _U64), kind="stable")
        starts = np.array([regs[i].start for i in by_start.tolist()], _U64)
        ends = np.array([regs[i].end for i in by_start.tolist()], _U64)
        row0 = (np.cumsum(counts) - counts)[by_start]
        keys: list[bytes] = []
        owner: list[str] = []  # the newest snapshot that lists each chunk
        index: dict[bytes, int] = {}
        for m in chain:
            for key in m.chunks:
                if key not in index:
                    index[key] = len(keys)
                    keys.append(key)
                    owner.append(m.name)
        chunk = np.full(n, -2, np.int64)
        page = np.zeros(n, np.int64)
        dig: np.ndarray | None = np.zeros((n, 2), PAGE_DIGEST) if digests else None
        for m in reversed(chain):
            if not len(m.extents) or not n:
                continue
            pa, pc, pp, pd = _expand_extents(m.extents, ps)
            k = np.searchsorted(starts, pa, side="right") - 1
            kc = np.maximum(k, 0)
            ok = (k >= 0) & (pa < ends[kc])
            rows = row0[kc[ok]] + ((pa[ok] - starts[kc[ok]]) // _U64(ps)).astype(np.int64)
            local = pc[ok]
            gl = np.array([index[c] for c in m.chunks] + [-1], np.int64)
            data = local != ZERO
            chunk[rows] = np.where(data, gl[np.minimum(local, len(m.chunks))], -1)
            page[rows] = np.where(data, pp[ok], 0)
            if m.digests is None:
                dig = None
            elif dig is not None:
                dig[rows[~data]] = 0
                dig[rows[data]] = m.digests[pd[ok][data]]
        if (chunk == -2).any():
            a = int(addrs[np.flatnonzero(chunk == -2)[0]])
            raise CorruptSnapshot(f"page {a:#x} is in no snapshot of its chain "
                                  f"(base {chain[-1].name} does not cover it)",
                                  snapshot=top.name)
        return _Resolved(top, addrs, chunk, page, keys, owner, dig)

    def _filler(self) -> ChunkFiller:
        return ChunkFiller(self.store, self.digest, stream_hasher(self.store.hash_name),
                           self.workers)

    def _fill(self, res: _Resolved, idx: np.ndarray, out: np.ndarray,
              advance: Any = None) -> None:
        """Write pages ``res[idx]`` into ``out`` viewed as (len(idx), page_size)."""
        rows = out.reshape(-1, res.manifest.page_size)
        self._filler().fill(rows, res.chunk[idx], res.page[idx], res.keys, res.owner,
                            advance)

    def restore(self, ref: Any, into: Any = None, *, progress: bool | None = None,
                pid: int | None = None) -> Image:
        """The memory of snapshot ``ref``, exactly.

        ``into``: a writable buffer of exactly the image size (one buffer target: its
        length), or a sequence of buffers, one per region. Without it a new array is made.
        A wrong size raises :class:`SizeMismatch` before anything is written. ``pid``: of a
        tree snapshot, the process whose image is restored (default: the root)."""
        res = self.resolve(ref, digests=False)
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
        """Decode every manifest, check every chunk it references (and, for format 2, that
        each page digest a manifest records matches the page in its chunk), and resolve every
        chain. Problems are collected, not raised."""
        names = self.names() if refs is None else [self.name(r) for r in refs]
        problems: list[CorruptSnapshot | SnapshotError] = []
        claims: dict[bytes, builtins.list[tuple[str, np.ndarray, np.ndarray]]] = {}
        order: builtins.list[tuple[str, bytes]] = []
        for name in names:
            try:
                m = self.manifest(name)
                self.resolve(name)
            except SnapshotError as exc:
                problems.append(exc)
                continue
            for i, key in enumerate(m.chunks):
                if key not in claims:
                    claims[key] = []
                    order.append((name, key))
                if m.digests is not None:
                    _, pc, pp, pd = _expand_extents(m.extents, m.page_size)
                    sel = pc == i
                    claims[key].append((name, pp[sel], m.digests[pd[sel]]))
        bad: dict[bytes, CorruptSnapshot] = {}
        for name, key in order:
            try:
                blob = self.store.get(f"chunks/{key.hex()}")
                raw = decode_chunk(blob, key, self.digest, snapshot=name)
                self._check_pages(raw, key, claims[key])
            except BlobNotFound:
                bad[key] = CorruptSnapshot("chunk is missing", snapshot=name, chunk=key.hex())
            except CorruptSnapshot as exc:
                bad[key] = exc
        for name in names:
            got = self._cache.get(name)
            for key in (got.chunks if got is not None else ()):
                if key in bad:
                    problems.append(bad[key] if bad[key].snapshot == name else CorruptSnapshot(
                        bad[key].message.split(": ", 2)[-1], snapshot=name, chunk=key.hex()))
        return VerifyReport(len(names), len(claims), tuple(problems))

    def _check_pages(self, raw: memoryview, key: bytes,
                     claims: builtins.list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        if not claims:
            return
        ps = self._cache[claims[0][0]].page_size
        rows = np.frombuffer(raw, np.uint8)
        if rows.nbytes % ps:
            raise CorruptSnapshot("chunk is not a whole number of pages", chunk=key.hex(),
                                  snapshot=claims[0][0])
        rows = rows.reshape(-1, ps)
        for name, pages, want in claims:
            if len(pages) and int(pages.max()) >= len(rows):
                raise CorruptSnapshot("chunk is shorter than its extents say", snapshot=name,
                                      chunk=key.hex())
            uniq, inv = np.unique(pages, return_inverse=True)
            got = page_digests(rows[uniq], self.digest)[inv]
            if not np.array_equal(got, want):
                raise CorruptSnapshot("a page digest in the manifest does not match the "
                                      "chunk's page", snapshot=name, chunk=key.hex())

    def diff(self, a: Any, b: Any, *, content: bool = True) -> Diff:
        """Pages and mappings that differ between snapshots ``a`` and ``b``. With page
        digests (format 2) pages are compared by digest; otherwise pages whose chunk
        references differ are compared byte for byte (``content=False``: reported as
        changed without reading them)."""
        ra, rb = self.resolve(a), self.resolve(b)
        ps = ra.manifest.page_size
        pa, pb = _region_pages(ra.manifest.regions, ps), _region_pages(rb.manifest.regions, ps)
        common = (pa & pb).addresses()
        xa, _ = ra.lookup(common)
        xb, _ = rb.lookup(common)
        za, zb = ra.chunk[xa] < 0, rb.chunk[xb] < 0
        if ra.digests is not None and rb.digests is not None:
            differ = (za != zb) | (ra.digests[xa] != rb.digests[xb]).any(axis=1)
            cand = np.flatnonzero(differ)
        else:
            ka = np.array([ra.keys[c] if c >= 0 else b"" for c in ra.chunk[xa].tolist()],
                          dtype=object)
            kb = np.array([rb.keys[c] if c >= 0 else b"" for c in rb.chunk[xb].tolist()],
                          dtype=object)
            differ = ((ka != kb) | (ra.page[xa] != rb.page[xb])) & ~(za & zb)
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
            dig = None if res.digests is None else \
                res.digests[order][res.chunk[order] >= 0]
            stats = dict(m.stats, compacted_from=m.parent)
            new = Manifest(m.name, None, m.created, m.page_size, m.regions,
                           tuple(res.keys[i] for i in used.tolist()), ext, m.source, m.maps,
                           stats, dig)
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
        if isinstance(keep, bool) or not isinstance(keep, (int, SupportsIndex)):
            raise errors.InvalidTarget(f"keep={keep!r} is not an integer",
                                       hint="give how many of the newest snapshots to keep")
        keep = int(keep)
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


