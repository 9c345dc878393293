"""Restoring pages: each chunk read once, straight into the destination.

A chunk whose pages land in the destination in order, at one offset (page ``j`` to row
``o + j``: a base chunk, with holes where newer snapshots replaced pages), is read whole,
header and all, with one ``preadv(2)`` into that stretch of rows, and its checksum computed
over it in one pass; the rows it fills with replaced pages are overwritten afterwards by
the chunks that own them. Every other chunk is read with one ``preadv(2)`` whose iovecs put
each page it owns into its row (a run of pages consecutive in both is one iovec) and the
pages it does not own into a scratch buffer, because the checksum covers all of the chunk;
the checksum is then computed over the same pieces, in chunk order, without copying them
together. A compressed chunk (or one whose size does not fit a raw chunk) is decoded from
the bytes read, then copied row by row.

Ordering: the chunks read whole come first (they may write rows another chunk owns, never
rows one of them owns); the others, which write only their own rows, after. Within each
group chunks are independent and restored by a few worker threads (preadv, numpy copies and
xxh3 release the GIL).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CorruptSnapshot
from .format import CHUNK_HEADER, CHUNK_MAGIC, CODEC_RAW, decode_chunk
from .store import BlobNotFound, Store

__all__ = ["ChunkFiller"]

_HDR = CHUNK_HEADER.size
#: a chunk read whole is read (and checksummed) in slices of this size: each is still in
#: the L2 cache when it is hashed (benchmarks/bench_snapshot.py: 7 % faster than 4 MiB)
_SLICE = 512 << 10
#: above this many runs, a chunk's pages are read into scratch and copied row by row
_MAX_PIECES = 64


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run where ``values`` increases by one."""
    if not len(values):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    brk = np.flatnonzero(np.diff(values) != 1) + 1
    starts = np.concatenate([[0], brk])
    return starts, np.diff(np.concatenate([starts, [len(values)]]))


@dataclass
class _Task:
    chunk: int  #: index into the keys
    dst: np.ndarray  #: destination rows, ascending
    src: np.ndarray  #: the page of the chunk for each (ascending too when read whole)
    offset: int = -1  #: >= 0: page j goes to row offset + j (read whole)


class ChunkFiller:
    """Fills destination rows from chunks of one store."""

    def __init__(self, store: Store, digest: Callable[[Any], bytes],
                 stream: Callable[[], Any], workers: int | None = None) -> None:
        self.store = store
        self.digest = digest
        self.stream = stream
        # one thread per CPU, at most 4: one chunk's checksum overlaps another's read (2
        # CPUs, 1 GiB from the page cache: 0.62x a plain read's speed with 2 threads, 0.54x
        # with 1; benchmarks/RESULTS.md)
        self.workers = max(1, workers if workers is not None else
                           min(4, len(os.sched_getaffinity(0))))
        self._local = threading.local()

    def _scratch(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, "scratch", None)
        if buf is None or buf.nbytes < nbytes:
            buf = self._local.scratch = np.empty(max(nbytes, 1 << 20), np.uint8)
        return buf[:nbytes]

    def fill(self, rows: np.ndarray, chunk: np.ndarray, page: np.ndarray,
             keys: Sequence[bytes], owner: Sequence[str],
             advance: Callable[[int], None] | None = None) -> None:
        """``rows[i]`` = page ``page[i]`` of chunk ``keys[chunk[i]]``, or zeros where
        ``chunk[i] < 0``. ``owner[c]`` names the snapshot that lists chunk ``c`` (for
        errors)."""
        ps = int(rows.shape[1])
        tasks = self._tasks(chunk, page, len(rows))
        whole = [t for t in tasks if t.offset >= 0]
        exact = [t for t in tasks if t.offset < 0]

        def one(t: _Task) -> int:
            self._chunk(keys[t.chunk], owner[t.chunk], t, rows)
            return len(t.dst) * ps

        with ThreadPoolExecutor(self.workers, thread_name_prefix="ww-restore") as pool:
            for group in (whole, exact):
                for n in (pool.map(one, group) if self.workers > 1 and len(group) > 1
                          else map(one, group)):
                    if advance is not None:
                        advance(n)
        # zero rows last: a chunk read whole may have written over some of them
        zero = np.flatnonzero(chunk < 0)
        for s, n in zip(*(x.tolist() for x in _runs(zero)), strict=True):
            rows[zero[s]:zero[s] + n] = 0
        if advance is not None and len(zero):
            advance(len(zero) * ps)

    @staticmethod
    def _tasks(chunk: np.ndarray, page: np.ndarray, nrows: int) -> list[_Task]:
        """One task per chunk; which ones may be read whole (see the module docstring)."""
        data = np.flatnonzero(chunk >= 0)
        if not len(data):
            return []
        # by chunk, rows ascending within each (a stable sort on one key; numpy sorts 16-bit
        # keys by radix, in linear time)
        key = chunk[data]
        if int(key.max()) < 1 << 15:
            key = key.astype(np.int16)
        order = data[np.argsort(key, kind="stable")]
        cs, ps_ = chunk[order], page[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(cs)) + 1])
        ends = np.concatenate([starts[1:], [len(order)]])
        off = order - ps_  # destination row minus chunk page
        lo, hi = np.minimum.reduceat(off, starts), np.maximum.reduceat(off, starts)
        last = np.maximum.reduceat(ps_, starts)
        # page j of the chunk to row off + j for every page it gives (then no page twice)
        whole = (lo == hi) & (lo >= 0) & (lo + last < nrows)
        # a chunk read whole writes rows off .. off + last: none may be another such
        # chunk's own row (its own rows all lie in that span)
        mine = np.zeros(nrows + 1, np.int64)
        mine[order[np.repeat(whole, ends - starts)] + 1] = 1
        cum = np.cumsum(mine)
        w = np.flatnonzero(whole)
        inside = cum[lo[w] + last[w] + 1] - cum[lo[w]]
        whole[w[inside > (ends - starts)[w]]] = False
        return [_Task(int(cs[s]), order[s:e], ps_[s:e], int(lo[i]) if whole[i] else -1)
                for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True))]

    def _chunk(self, key: bytes, owner: str, t: _Task, rows: np.ndarray) -> None:
        """Restore the rows ``t.dst`` from pages ``t.src`` of chunk ``key``."""
        ps = rows.shape[1]
        name = key.hex()
        src, dst = t.src, t.dst
        if t.offset >= 0:  # ascending, no page twice
            used, first = src, np.arange(len(src))
        else:
            used, first = np.unique(src, return_index=True)
        hdr = memoryview(bytearray(_HDR))
        pieces: list[Any] = []
        layout: dict[str, Any] = {}
        flat = memoryview(rows.reshape(-1).data).cast("B")
        h = self.stream()

        def each(piece: Any) -> None:
            if piece is not hdr:
                h.update(piece)

        def split(mv: memoryview) -> list[memoryview]:
            step = _SLICE
            return [mv[i:i + step] for i in range(0, mv.nbytes, step)]

        def buffers(size: int) -> list[Any]:
            n, rem = divmod(size - _HDR, ps)
            if size < _HDR or rem or not n or int(used[-1]) >= n:
                layout["decode"] = True  # not a raw chunk of these pages: decode it
                pieces.append(memoryview(self._scratch(size).data).cast("B"))
                return pieces
            if t.offset >= 0:
                # rows past its last used page were not checked (see _tasks): scratch
                k = int(used[-1]) + 1
                pieces.extend(split(flat[t.offset * ps:(t.offset + k) * ps]))
                if k < n:
                    pieces.append(memoryview(self._scratch((n - k) * ps).data).cast("B"))
                return [hdr, *pieces]
            scatter = self._pieces(n, ps, used, dst[first], flat, pieces)
            if scatter is not None:
                layout["scatter"] = scatter
                pieces.extend(split(memoryview(scatter.data).cast("B")))
            return [hdr, *pieces]

        try:
            size = self.store.read_into(f"chunks/{name}", buffers, each)
        except BlobNotFound:
            raise CorruptSnapshot("chunk is missing", snapshot=owner, chunk=name) from None
        if layout.get("decode"):
            self._decoded(np.frombuffer(pieces[0], np.uint8), key, owner, dst, src, rows)
            return
        magic, version, codec, _, n = CHUNK_HEADER.unpack_from(hdr)
        if magic != CHUNK_MAGIC or version != 1 or codec != CODEC_RAW or n != size - _HDR:
            # compressed, or a damaged header: decode what was read, which checks it all
            blob = np.concatenate([np.frombuffer(p, np.uint8) for p in [hdr, *pieces]])
            self._decoded(blob, key, owner, dst, src, rows)
            return
        if h.digest() != key:
            raise CorruptSnapshot("checksum mismatch: content differs from what was stored",
                                  snapshot=owner, chunk=name)
        scatter = layout.get("scatter")
        if scatter is not None:
            rows[dst] = scatter.reshape(-1, ps)[src]
            return
        dup = np.ones(len(src), bool)
        dup[first] = False
        if dup.any():  # one chunk page restored to several rows (identical pages)
            src_row = dst[first][np.searchsorted(used, src[dup])]
            rows[dst[dup]] = rows[src_row]

    def _pieces(self, n: int, ps: int, used: np.ndarray, rows_of: np.ndarray,
                flat: memoryview, pieces: list[Any]) -> np.ndarray | None:
        """The iovecs of a chunk of ``n`` pages whose pages ``used`` go to rows ``rows_of``:
        each run of pages consecutive in both is one, the pages not used go to scratch. Or,
        when there would be more than _MAX_PIECES (scattered pages), a scratch buffer for
        the whole chunk, returned, to be copied row by row: cheaper than an iovec and a
        checksum update per page."""
        target = np.full(n, -1, np.int64)  # chunk page -> destination row, or -1
        target[used] = rows_of
        rs, _ = _runs(np.where(target >= 0, target, -2 - np.arange(n)))
        if len(rs) > _MAX_PIECES:
            return self._scratch(n * ps)
        unused = np.flatnonzero(target < 0)
        scratch = memoryview(self._scratch(len(unused) * ps).data).cast("B")
        target[unused] = -2 - np.arange(len(unused))  # consecutive in scratch too
        rs, rl = _runs(target)
        for r, ln in zip(target[rs].tolist(), rl.tolist(), strict=True):
            if r >= 0:
                pieces.append(flat[r * ps:(r + ln) * ps])
            else:
                u = -2 - r
                pieces.append(scratch[u * ps:(u + ln) * ps])
        return None

    def _decoded(self, blob: np.ndarray, key: bytes, owner: str, dst: np.ndarray,
                 src: np.ndarray, rows: np.ndarray) -> None:
        ps = rows.shape[1]
        raw = np.frombuffer(decode_chunk(blob, key, self.digest, snapshot=owner), np.uint8)
        if raw.nbytes % ps or int(src.max()) >= raw.nbytes // ps:
            raise CorruptSnapshot("chunk is shorter than its extents say", snapshot=owner,
                                  chunk=key.hex())
        rows[dst] = raw.reshape(-1, ps)[src]
