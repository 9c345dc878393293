"""Deduplication: where every page already stored in a store lives, by its content digest.

Every format 2 manifest lists the 16-byte digest of each data page it names (see
:mod:`.format`), so the index is rebuilt from the manifests alone, without reading a chunk:
a page whose digest is found is not stored again, whatever snapshot or chain it came from,
and whichever pages happened to be written with it. Chunk boundaries then only decide how
new pages are packed (one blob per save's worth of up to ``chunk_size`` bytes), not what
deduplicates.

Lookups are vectorised: the index is two generations of sorted arrays (the digest's two
u64 halves, chunk id, page), searched with ``np.searchsorted``: the bulk, and the entries
added since it was last merged (small, so adding to it stays cheap). A digest found by its
first half but differing in the second (a 64-bit collision) is treated as absent: the page
is stored again, which is never wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .format import ZERO, Manifest

__all__ = ["PageIndex"]

_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # d0, d1, chunk, page


def _empty() -> _Arrays:
    return (np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, np.int64),
            np.empty(0, np.int64))


def _sorted(parts: _Arrays) -> _Arrays:
    d0, d1, ch, pg = parts
    order = np.lexsort((d1, d0))
    d0, d1, ch, pg = d0[order], d1[order], ch[order], pg[order]
    keep = np.ones(len(d0), bool)  # one entry per digest
    keep[1:] = (d0[1:] != d0[:-1]) | (d1[1:] != d1[:-1])
    return d0[keep], d1[keep], ch[keep], pg[keep]


def _merge(a: _Arrays, b: _Arrays) -> _Arrays:
    """Sorted ``a`` with the entries of sorted ``b`` (none of them in ``a``) inserted."""
    if not len(b[0]):
        return a
    pos = np.searchsorted(a[0], b[0])
    return tuple(np.insert(x, pos, y) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _search(arrs: _Arrays, d0: np.ndarray, d1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a0, a1, _, _ = arrs
    if not len(a0):
        return np.zeros(len(d0), bool), np.zeros(len(d0), np.int64)
    pos = np.minimum(np.searchsorted(a0, d0), len(a0) - 1)
    return (a0[pos] == d0) & (a1[pos] == d1), pos


class PageIndex:
    """Digest -> (chunk key, page within the chunk) for every data page of a store."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []  #: chunk keys; entries refer to them by position
        self._kid: dict[bytes, int] = {}
        self._main: _Arrays = _empty()
        self._new: _Arrays = _empty()  # added since the last merge, sorted

    @classmethod
    def build(cls, manifests: Iterable[Manifest]) -> PageIndex:
        idx = cls()
        parts = [idx._entries(m) for m in manifests if m.digests is not None]
        if parts:
            idx._main = _sorted(tuple(np.concatenate(c)  # type: ignore[arg-type]
                                      for c in zip(*parts, strict=True)))
        return idx

    def __len__(self) -> int:
        return len(self._main[0]) + len(self._new[0])

    def chunk_id(self, key: bytes) -> int:
        i = self._kid.get(key)
        if i is None:
            i = self._kid[key] = len(self.keys)
            self.keys.append(key)
        return i

    def has_chunk(self, key: bytes) -> bool:
        """Whether a committed manifest (or the save under way) names chunk ``key``."""
        return key in self._kid

    def _entries(self, m: Manifest) -> _Arrays:
        e = m.extents
        data = e[e["chunk"] != ZERO]
        counts = data["npages"].astype(np.int64)
        total = int(counts.sum())
        assert m.digests is not None and len(m.digests) == total
        gl = np.array([self.chunk_id(k) for k in m.chunks] or [0], np.int64)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        within = np.arange(total, dtype=np.int64) - first
        chunk = gl[np.repeat(data["chunk"].astype(np.int64), counts)]
        page = np.repeat(data["page"].astype(np.int64), counts) + within
        dig = np.asarray(m.digests, np.uint64)
        return dig[:, 0].copy(), dig[:, 1].copy(), chunk, page

    def lookup(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For (n, 2) digests: (chunk id or -1, page) of a stored page with that content."""
        n = len(digests)
        chunk = np.full(n, -1, np.int64)
        page = np.zeros(n, np.int64)
        if not n:
            return chunk, page
        d0, d1 = digests[:, 0], digests[:, 1]
        for arrs in (self._new, self._main):
            hit, pos = _search(arrs, d0, d1)
            hit &= chunk < 0
            chunk[hit] = arrs[2][pos[hit]]
            page[hit] = arrs[3][pos[hit]]
        return chunk, page

    def add(self, digests: np.ndarray, chunk: int, pages: np.ndarray) -> None:
        """Record that page ``pages[i]`` of chunk id ``chunk`` has digest ``digests[i]``."""
        if not len(pages):
            return
        d0 = np.ascontiguousarray(digests[:, 0], np.uint64)
        d1 = np.ascontiguousarray(digests[:, 1], np.uint64)
        add = _sorted((d0, d1, np.full(len(pages), chunk, np.int64),
                       np.asarray(pages, np.int64)))
        self._new = _merge(self._new, add)
        if len(self._new[0]) > max(1 << 16, len(self._main[0]) // 4):
            self._main = _merge(self._main, self._new)
            self._new = _empty()

    def snapshot_state(self) -> int:
        """What :meth:`rollback` returns to (a save that fails adds nothing)."""
        return len(self.keys)

    def rollback(self, nkeys: int) -> None:
        """Forget every chunk registered after :meth:`snapshot_state` returned ``nkeys``."""
        if len(self.keys) == nkeys:
            return
        self._new = tuple(a[self._new[2] < nkeys] for a in self._new)  # type: ignore[assignment]
        self._main = tuple(a[self._main[2] < nkeys]  # type: ignore[assignment]
                           for a in self._main)
        for k in self.keys[nkeys:]:
            del self._kid[k]
        del self.keys[nkeys:]
