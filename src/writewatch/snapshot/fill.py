"""Restoring pages: each chunk read once, straight into the destination.

For a raw chunk, one ``preadv(2)`` reads the header into a small buffer and every page the
restore uses directly into its row of the destination (a run of pages that are consecutive
in both becomes one iovec); pages of the chunk that the restore does not use (newer
snapshots replaced them) land in a scratch buffer, because the chunk's checksum covers all
of it. The checksum is then computed over the same pieces in chunk order, without copying
them together. A compressed chunk (or one whose size does not fit a raw chunk) is decoded
from the bytes read, then copied row by row. Chunks are independent: a few worker threads
restore them in parallel (preadv, numpy copies and xxh3 release the GIL).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
        zero = np.flatnonzero(chunk < 0)
        for s, n in zip(*(x.tolist() for x in _runs(zero)), strict=True):
            rows[zero[s]:zero[s] + n] = 0
        if advance is not None and len(zero):
            advance(len(zero) * ps)
        data = np.flatnonzero(chunk >= 0)
        if not len(data):
            return
        order = data[np.argsort(chunk[data], kind="stable")]
        cs = chunk[order]
        bounds = np.flatnonzero(np.diff(cs)) + 1
        starts = np.concatenate([[0], bounds]).tolist()
        ends = np.concatenate([bounds, [len(order)]]).tolist()
        tasks = [(int(cs[s]), order[s:e]) for s, e in zip(starts, ends, strict=True)]

        def one(task: tuple[int, np.ndarray]) -> int:
            c, dst = task
            self._chunk(keys[c], owner[c], dst, page[dst], rows)
            return len(dst) * ps

        if self.workers == 1 or len(tasks) == 1:
            for t in tasks:
                n = one(t)
                if advance is not None:
                    advance(n)
            return
        with ThreadPoolExecutor(min(self.workers, len(tasks)),
                                thread_name_prefix="ww-restore") as pool:
            for n in pool.map(one, tasks):
                if advance is not None:
                    advance(n)

    def _chunk(self, key: bytes, owner: str, dst: np.ndarray, src: np.ndarray,
               rows: np.ndarray) -> None:
        """Restore the rows ``dst`` from pages ``src`` of chunk ``key``."""
        ps = rows.shape[1]
        name = key.hex()
        order = np.argsort(src, kind="stable")
        src, dst = src[order], dst[order]
        used, first = np.unique(src, return_index=True)
        hdr = np.empty(_HDR, np.uint8)
        pieces: list[np.ndarray] = []
        layout: dict[str, Any] = {}

        def buffers(size: int) -> list[Any]:
            n, rem = divmod(size - _HDR, ps)
            if size < _HDR or rem or not n or int(used[-1]) >= n:
                layout["whole"] = True  # not a raw chunk of these pages: decode it
                pieces.append(self._scratch(size))
                return pieces
            # chunk page j -> destination row, or -1 (scratch)
            target = np.full(n, -1, np.int64)
            target[used] = dst[first]
            unused = np.flatnonzero(target < 0)
            scratch = self._scratch(len(unused) * ps).reshape(-1, ps)
            target[unused] = -2 - np.arange(len(unused))  # consecutive in scratch too
            rs, rl = _runs(target)
            for s, ln in zip(rs.tolist(), rl.tolist(), strict=True):
                t = int(target[s])
                part = rows[t:t + ln] if t >= 0 else scratch[-2 - t:-2 - t + ln]
                pieces.append(part.reshape(-1))
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
            blob = np.concatenate([hdr, *pieces])
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
