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
    dst: np.ndarray  #: destination rows, sorted by ``src``
    src: np.ndarray  #: pages of the chunk, ascending
    offset: int = -1  #: >= 0: page j goes to row offset + j (read whole)


class ChunkFiller:
    """Fills destination rows from chunks of one store."""

    def __init__(self, store: Store, digest: Callable[[Any], bytes],
                 stream: Callable[[], Any], workers: int | None = None) -> None:
        self.store = store
        self.digest = digest
        self.stream = stream
        self.workers = max(1, workers if workers is not None else min(4, os.cpu_count() or 1))
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
        order = data[np.lexsort((page[data], chunk[data]))]
        cs = chunk[order]
        bounds = np.flatnonzero(np.diff(cs)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        ends = np.concatenate([bounds, [len(order)]]).tolist()
        tasks = []
        owner = np.full(nrows, -1, np.int64)  # task owning each row
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            dst, src = order[s:e], page[order[s:e]]
            t = _Task(int(cs[s]), dst, src)
            off = dst - src
            if int(off[0]) >= 0 and bool((off == off[0]).all()) and \
                    int(off[0]) + int(src[-1]) < nrows:
                t.offset = int(off[0])
            owner[dst] = i
            tasks.append(t)
        # a chunk read whole writes rows o .. o + last page: none may be another such
        # chunk's own row
        whole = np.array([t.offset >= 0 for t in tasks], bool)
        for i, t in enumerate(tasks):
            if t.offset < 0:
                continue
            span = owner[t.offset:t.offset + int(t.src[-1]) + 1]
            others = span[(span != i) & (span >= 0)]
            if len(others) and whole[others].any():
                t.offset = -1
        return tasks

    def _chunk(self, key: bytes, owner: str, t: _Task, rows: np.ndarray) -> None:
        """Restore the rows ``t.dst`` from pages ``t.src`` of chunk ``key``."""
        ps = rows.shape[1]
        name = key.hex()
        src, dst = t.src, t.dst
        used, first = np.unique(src, return_index=True)
        hdr = np.empty(_HDR, np.uint8)
        pieces: list[Any] = []
        layout: dict[str, Any] = {}
        flat = memoryview(rows.reshape(-1).data).cast("B")

        def buffers(size: int) -> list[Any]:
            n, rem = divmod(size - _HDR, ps)
            if size < _HDR or rem or not n or int(used[-1]) >= n:
                layout["whole"] = True  # not a raw chunk of these pages: decode it
                pieces.append(self._scratch(size))
                return pieces
            if t.offset >= 0:
                # rows past its last used page were not checked (see _tasks): scratch
                k = int(used[-1]) + 1
                pieces.append(flat[t.offset * ps:(t.offset + k) * ps])
                if k < n:
                    pieces.append(memoryview(self._scratch((n - k) * ps).data).cast("B"))
                return [hdr, *pieces]
            # chunk page j -> destination row, or -1 (scratch)
            target = np.full(n, -1, np.int64)
            target[used] = dst[first]
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
            return [hdr, *pieces]

        try:
            size = self.store.read_into(f"chunks/{name}", buffers)
        except BlobNotFound:
            raise CorruptSnapshot("chunk is missing", snapshot=owner, chunk=name) from None
        if layout.get("whole"):
            self._decoded(np.frombuffer(pieces[0], np.uint8), key, owner, dst, src, rows)
            return
        magic, version, codec, _, n = CHUNK_HEADER.unpack_from(hdr.data)
        if magic != CHUNK_MAGIC or version != 1 or codec != CODEC_RAW or n != size - _HDR:
            # compressed, or a damaged header: decode what was read, which checks it all
            blob = np.concatenate([hdr, *(np.frombuffer(p, np.uint8) for p in pieces)])
            self._decoded(blob, key, owner, dst, src, rows)
            return
        h = self.stream()
        for p in pieces:
            h.update(p)
        if h.digest() != key:
            raise CorruptSnapshot("checksum mismatch: content differs from what was stored",
                                  snapshot=owner, chunk=name)
        dup = np.ones(len(src), bool)
        dup[first] = False
        if dup.any():  # one chunk page restored to several rows (identical pages)
            src_row = dst[first][np.searchsorted(used, src[dup])]
            rows[dst[dup]] = rows[src_row]

    def _decoded(self, blob: np.ndarray, key: bytes, owner: str, dst: np.ndarray,
                 src: np.ndarray, rows: np.ndarray) -> None:
        ps = rows.shape[1]
        raw = np.frombuffer(decode_chunk(blob, key, self.digest, snapshot=owner), np.uint8)
        if raw.nbytes % ps or int(src.max()) >= raw.nbytes // ps:
            raise CorruptSnapshot("chunk is shorter than its extents say", snapshot=owner,
                                  chunk=key.hex())
        rows[dst] = raw.reshape(-1, ps)[src]
