"""Deduplication: where every page already stored in a store lives, by its content digest.

Every format 2 manifest lists the 16-byte digest of each data page it names (see
:mod:`.format`), so the index is rebuilt from the manifests alone, without reading a chunk:
a page whose digest is found is not stored again, whatever snapshot or chain it came from,
and whichever pages happened to be written with it. Chunk boundaries then only decide how
new pages are packed (one blob per save's worth of up to ``chunk_size`` bytes), not what
deduplicates.

Lookups are vectorised: the bulk of the index is two sorted u64 arrays (the digest's
halves), searched with ``np.searchsorted``; what the current Snapshotter adds lives in a dict
until it is merged. A digest found by its first half but differing in the second (a 64-bit
collision) is treated as absent: the page is stored again, which is never wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .format import ZERO, Manifest

__all__ = ["PageIndex"]

_MERGE = 1 << 16  #: entries kept in the dict before they are merged into the arrays


class PageIndex:
    """Digest -> (chunk key, page within the chunk) for every data page of a store."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []  #: chunk keys; entries refer to them by position
        self._kid: dict[bytes, int] = {}
        self._d0 = np.empty(0, np.uint64)  # sorted
        self._d1 = np.empty(0, np.uint64)
        self._chunk = np.empty(0, np.int64)
        self._page = np.empty(0, np.int64)
        self._recent: dict[int, tuple[int, int, int]] = {}  # d0 -> (d1, chunk id, page)

    @classmethod
    def build(cls, manifests: Iterable[Manifest]) -> PageIndex:
        idx = cls()
        parts = [idx._entries(m) for m in manifests if m.digests is not None]
        if parts:
            idx._merge_arrays([np.concatenate(c) for c in zip(*parts, strict=True)])
        return idx

    def __len__(self) -> int:
        return len(self._d0) + len(self._recent)

    def chunk_id(self, key: bytes) -> int:
        i = self._kid.get(key)
        if i is None:
            i = self._kid[key] = len(self.keys)
            self.keys.append(key)
        return i

    def has_chunk(self, key: bytes) -> bool:
        """Whether a committed manifest names chunk ``key`` (so it is complete and durable)."""
        return key in self._kid

    def _entries(self, m: Manifest) -> tuple[np.ndarray, ...]:
        e = m.extents
        data = e[e["chunk"] != ZERO]
        counts = data["npages"].astype(np.int64)
        total = int(counts.sum())
        assert m.digests is not None and len(m.digests) == total
        gl = np.array([self.chunk_id(k) for k in m.chunks], np.int64)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(total, dtype=np.int64) - first
        chunk = gl[np.repeat(data["chunk"].astype(np.int64), counts)] if total else \
            np.empty(0, np.int64)
        page = np.repeat(data["page"].astype(np.int64), counts) + within
        dig = np.asarray(m.digests, np.uint64)
        return dig[:, 0], dig[:, 1], chunk, page

    def _merge_arrays(self, extra: list[np.ndarray]) -> None:
        d0 = np.concatenate([self._d0, extra[0]])
        d1 = np.concatenate([self._d1, extra[1]])
        ch = np.concatenate([self._chunk, extra[2]])
        pg = np.concatenate([self._page, extra[3]])
        order = np.lexsort((d1, d0))
        d0, d1, ch, pg = d0[order], d1[order], ch[order], pg[order]
        keep = np.ones(len(d0), bool)  # one entry per digest
        keep[1:] = (d0[1:] != d0[:-1]) | (d1[1:] != d1[:-1])
        self._d0, self._d1, self._chunk, self._page = d0[keep], d1[keep], ch[keep], pg[keep]

    def lookup(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For (n, 2) digests: (chunk id or -1, page) of a stored page with that content."""
        n = len(digests)
        chunk = np.full(n, -1, np.int64)
        page = np.zeros(n, np.int64)
        if not n:
            return chunk, page
        d0, d1 = digests[:, 0], digests[:, 1]
        if len(self._d0):
            pos = np.minimum(np.searchsorted(self._d0, d0), len(self._d0) - 1)
            hit = (self._d0[pos] == d0) & (self._d1[pos] == d1)
            chunk[hit] = self._chunk[pos[hit]]
            page[hit] = self._page[pos[hit]]
        if self._recent:
            miss = np.flatnonzero(chunk < 0)
            rec = self._recent
            for i, a, b in zip(miss.tolist(), d0[miss].tolist(), d1[miss].tolist(),
                               strict=True):
                got = rec.get(a)
                if got is not None and got[0] == b:
                    chunk[i], page[i] = got[1], got[2]
        return chunk, page

    def add(self, digests: np.ndarray, chunk: int, pages: np.ndarray) -> None:
        """Record that page ``pages[i]`` of chunk id ``chunk`` has digest ``digests[i]``."""
        rec = self._recent
        for a, b, p in zip(digests[:, 0].tolist(), digests[:, 1].tolist(), pages.tolist(),
                           strict=True):
            rec.setdefault(a, (b, chunk, p))
        if len(rec) > _MERGE:
            self._flush_recent()

    def _flush_recent(self) -> None:
        if not self._recent:
            return
        items = np.array([(a, b, c, p) for a, (b, c, p) in self._recent.items()], np.uint64)
        self._recent = {}
        self._merge_arrays([items[:, 0], items[:, 1], items[:, 2].astype(np.int64),
                            items[:, 3].astype(np.int64)])

    def snapshot_state(self) -> tuple[int, dict[int, tuple[int, int, int]], int]:
        """What :meth:`rollback` returns to (a save that fails adds nothing)."""
        return len(self.keys), dict(self._recent), len(self._d0)

    def rollback(self, state: tuple[int, dict[int, tuple[int, int, int]], int]) -> None:
        nkeys, recent, n0 = state
        if len(self._d0) != n0:  # merged meanwhile: drop the entries of the new chunks
            keep = self._chunk < nkeys
            self._d0, self._d1 = self._d0[keep], self._d1[keep]
            self._chunk, self._page = self._chunk[keep], self._page[keep]
        for k in self.keys[nkeys:]:
            del self._kid[k]
        del self.keys[nkeys:]
        self._recent = recent
