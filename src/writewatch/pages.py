"""``Pages``: an immutable set of pages, stored as coalesced ``[start, end)`` address ranges."""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from typing import Any, SupportsIndex

import numpy as np

from . import errors

__all__ = ["Pages"]

_U64 = np.uint64
#: the running kernel's page size (the default of every constructor)
PAGE_SIZE = mmap.PAGESIZE


def _coalesce(ranges: np.ndarray) -> np.ndarray:
    """Sort and merge overlapping or touching ranges; drop empty ones."""
    if len(ranges) == 0:
        return np.empty((0, 2), _U64)
    if bool((ranges[:, 1] > ranges[:, 0]).all()) and bool((ranges[1:, 0] > ranges[:-1, 1]).all()):
        return np.ascontiguousarray(ranges, dtype=_U64)  # already sorted and disjoint
    r = ranges[ranges[:, 1] > ranges[:, 0]]
    if len(r) == 0:
        return np.empty((0, 2), _U64)
    r = r[np.argsort(r[:, 0], kind="stable")]
    ends = np.maximum.accumulate(r[:, 1])
    # a new run starts where the start is beyond every end seen so far
    new = np.empty(len(r), bool)
    new[0] = True
    new[1:] = r[1:, 0] > ends[:-1]
    idx = np.flatnonzero(new)
    out = np.empty((len(idx), 2), _U64)
    out[:, 0] = r[idx, 0]
    out[:, 1] = ends[np.append(idx[1:] - 1, len(r) - 1)]
    return out


def _combine(a: np.ndarray, b: np.ndarray, keep: tuple[int, ...]) -> np.ndarray:
    """Sweep both coalesced range sets; keep the elementary intervals whose membership code
    (1: in a only, 2: in b only, 3: in both) is in ``keep``."""
    if not len(a) or not len(b):  # nothing to sweep: every interval is code 1, or every 2
        if len(a):
            return a if 1 in keep else _NONE
        return b if len(b) and 2 in keep else _NONE
    bounds = np.concatenate([a[:, 0], a[:, 1], b[:, 0], b[:, 1]])
    delta = np.concatenate([np.full(len(a), 1), np.full(len(a), -1),
                            np.full(len(b), 2), np.full(len(b), -2)]).astype(np.int64)
    if len(bounds) == 0:
        return np.empty((0, 2), _U64)
    order = np.argsort(bounds, kind="stable")
    bounds, delta = bounds[order], delta[order]
    pts, first = np.unique(bounds, return_index=True)
    sums = np.add.reduceat(delta, first)
    state = np.cumsum(sums)[:-1]
    sel = state == keep[0]
    for k in keep[1:]:
        sel |= state == k
    out = np.stack([pts[:-1][sel], pts[1:][sel]], axis=1).astype(_U64)
    return _coalesce(out)


_NONE = np.empty((0, 2), _U64)
_NONE.flags.writeable = False


def _page_size(value: Any) -> int:
    """A page size argument, validated: a positive power of two."""
    if isinstance(value, bool) or not isinstance(value, (int, SupportsIndex)):
        raise errors.InvalidTarget(f"page_size={value!r} is not an integer",
                                   hint="give the page size in bytes, e.g. 4096")
    ps = int(value)
    if ps <= 0 or ps & (ps - 1):
        raise errors.InvalidTarget(f"page_size={ps} is not a power of two",
                                   hint="give the page size in bytes, e.g. 4096")
    return ps


def _addresses(values: Any, what: str) -> np.ndarray:
    """Integers in [0, 2**64) as a uint64 array (its shape kept), or InvalidTarget."""
    if not isinstance(values, (np.ndarray, list, tuple)):
        try:  # any iterable: a set, a generator, a range
            values = list(values)
        except TypeError:
            raise errors.InvalidTarget(f"{what} are not an iterable of integers",
                                       hint="give (start, end) address pairs") from None
    try:
        a = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise errors.InvalidTarget(f"{what} are not an array of integers: {exc}",
                                   hint="give (start, end) address pairs") from None
    if a.size == 0:
        return a.astype(_U64)
    if a.dtype.kind == "O":  # Python ints beyond int64
        try:
            a = np.array(a.tolist(), dtype=_U64)
        except (ValueError, TypeError, OverflowError):
            raise errors.InvalidTarget(f"{what} must be integers in [0, 2**64)",
                                       hint="give (start, end) address pairs") from None
    elif a.dtype.kind == "i":
        if bool((a < 0).any()):
            raise errors.InvalidTarget(f"{what} hold a negative address",
                                       hint="addresses are in [0, 2**64)")
    elif a.dtype.kind != "u":
        raise errors.InvalidTarget(f"{what} must be integers, not {a.dtype}",
                                   hint="give (start, end) address pairs")
    return a.astype(_U64, copy=False)


class Pages:
    """A set of pages, as coalesced, sorted ``[start, end)`` address ranges.

    ``len(p)`` is the number of pages; ``p.ranges`` the ``(k, 2)`` uint64 array; ``addr in p``
    tests one address; ``|``, ``&`` and ``-`` combine two sets of the same page size.
    Immutable: the array is a read-only copy (never the caller's) and operations return new
    objects.
    """

    __slots__ = ("_ps", "_ranges")

    def __init__(self, ranges: Any = (), page_size: int = PAGE_SIZE) -> None:
        ps = _page_size(page_size)
        arr = _addresses(ranges, "Pages ranges")
        if arr.size % 2 or (arr.ndim > 1 and arr.shape[-1] != 2):
            raise errors.InvalidTarget(f"Pages ranges of shape {arr.shape} are not "
                                       "(start, end) pairs", hint="give a (k, 2) array")
        arr = arr.reshape(-1, 2)
        if len(arr) and bool(((arr % _U64(ps)) != 0).any()):
            raise errors.InvalidTarget("Pages ranges must be page aligned",
                                       hint=f"start and end multiples of {ps}")
        out = _coalesce(arr)
        if isinstance(ranges, np.ndarray) and np.may_share_memory(out, ranges):
            out = out.copy()  # the caller's array stays the caller's: own a copy
        out.flags.writeable = False
        self._ranges = out
        self._ps = ps

    @property
    def page_size(self) -> int:
        return self._ps

    @classmethod
    def empty(cls, page_size: int = PAGE_SIZE) -> Pages:
        """No pages (cheap: one shared read-only array)."""
        return cls._trusted(_NONE, page_size)

    @classmethod
    def from_kernel(cls, ranges: np.ndarray, page_size: int) -> Pages:
        """Ranges from the kernel: page aligned, possibly unsorted or overlapping."""
        return cls._trusted(_coalesce(np.asarray(ranges, _U64).reshape(-1, 2)), page_size)

    @classmethod
    def _trusted(cls, arr: np.ndarray, page_size: int) -> Pages:
        """Wrap an already sorted, coalesced, aligned array (no checks)."""
        p = cls.__new__(cls)
        arr.flags.writeable = False
        p._ranges = arr
        p._ps = page_size
        return p

    @classmethod
    def from_addresses(cls, addresses: Iterable[int] | np.ndarray,
                       page_size: int = PAGE_SIZE) -> Pages:
        """The pages containing each address."""
        ps = _U64(_page_size(page_size))
        a = np.unique(_addresses(addresses, "addresses").reshape(-1) // ps) * ps
        return cls(np.stack([a, a + ps], axis=1), int(ps))

    @classmethod
    def from_mask(cls, mask: np.ndarray, base: int, page_size: int = PAGE_SIZE) -> Pages:
        """Pages ``base + i * page_size`` for each true ``mask[i]``."""
        m = np.asarray(mask, dtype=bool)
        edges = np.diff(np.concatenate([[0], m.view(np.int8), [0]]).astype(np.int8))
        starts = np.flatnonzero(edges == 1).astype(_U64)
        ends = np.flatnonzero(edges == -1).astype(_U64)
        arr = np.stack([starts, ends], axis=1) * _U64(page_size) + _U64(base)
        return cls._trusted(arr.astype(_U64), page_size)

    # -- the set -----------------------------------------------------------------------------
    @property
    def ranges(self) -> np.ndarray:
        """``(k, 2)`` uint64 array of ``[start, end)`` addresses, sorted and coalesced."""
        return self._ranges

    @property
    def nbytes(self) -> int:
        return int((self._ranges[:, 1] - self._ranges[:, 0]).sum())

    def __len__(self) -> int:
        return self.nbytes // self.page_size

    def __bool__(self) -> bool:
        return len(self._ranges) > 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for s, e in self._ranges.tolist():
            yield int(s), int(e)

    def addresses(self) -> np.ndarray:
        """The start address of every page, as a uint64 array."""
        if not len(self._ranges):
            return np.empty(0, _U64)
        ps = _U64(self.page_size)
        counts = ((self._ranges[:, 1] - self._ranges[:, 0]) // ps).astype(np.int64)
        starts = np.repeat(self._ranges[:, 0], counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        out: np.ndarray = starts + (np.arange(counts.sum(), dtype=_U64) - first.astype(_U64)) * ps
        return out

    def __contains__(self, addr: object) -> bool:
        if not isinstance(addr, (int, SupportsIndex)):
            return False
        a = int(addr)
        if not 0 <= a < 1 << 64 or not len(self._ranges):
            return False
        i = int(np.searchsorted(self._ranges[:, 0], _U64(a), side="right")) - 1
        return i >= 0 and a < int(self._ranges[i, 1])

    def _check(self, other: object) -> Pages:
        if not isinstance(other, Pages):
            raise errors.InvalidTarget(f"expected Pages, got {type(other).__name__}",
                                       hint="combine Pages with Pages")
        if other._ps != self._ps:
            raise errors.InvalidTarget(f"page sizes differ: {self._ps} and {other._ps}",
                                       hint="combine sets of the same page size")
        return other

    def __or__(self, other: Pages) -> Pages:
        o = self._check(other)
        return Pages._trusted(_coalesce(np.concatenate([self._ranges, o._ranges])),
                              self.page_size)

    def __and__(self, other: Pages) -> Pages:
        return Pages._trusted(_combine(self._ranges, self._check(other)._ranges, (3,)),
                              self.page_size)

    def __sub__(self, other: Pages) -> Pages:
        return Pages._trusted(_combine(self._ranges, self._check(other)._ranges, (1,)),
                              self.page_size)

    def __xor__(self, other: Pages) -> Pages:
        return Pages._trusted(_combine(self._ranges, self._check(other)._ranges, (1, 2)),
                              self.page_size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pages):
            return NotImplemented
        return self.page_size == other.page_size and np.array_equal(self._ranges, other._ranges)

    def __hash__(self) -> int:
        return hash((self.page_size, self._ranges.tobytes()))

    def __le__(self, other: Pages) -> bool:
        return not (self - other)

    # -- relative to a target ----------------------------------------------------------------
    def clip(self, start: int, end: int) -> Pages:
        """The pages that overlap ``[start, end)``, clipped to the covering pages."""
        ps = self.page_size
        lo, hi = start // ps * ps, -(-end // ps) * ps
        return self & Pages._trusted(np.array([[lo, hi]], _U64) if hi > lo
                                     else np.empty((0, 2), _U64), ps)

    def offsets(self, start: int, length: int) -> np.ndarray:
        """Ranges as byte offsets into the object at ``[start, start+length)``, clipped to it
        (a target need not be page aligned: its first and last pages are partial)."""
        r = self.clip(start, start + length)._ranges.astype(np.int64)
        if not len(r):
            return np.empty((0, 2), np.int64)
        return np.clip(r - start, 0, length)

    def mask(self, start: int, length: int) -> np.ndarray:
        """One bool per page covering ``[start, start+length)``: written or not."""
        ps = self.page_size
        base = start // ps * ps
        n = (-(-(start + length) // ps) * ps - base) // ps
        out = np.zeros(n, bool)
        r = self.clip(start, start + length)._ranges
        if len(r):
            first = ((r[:, 0] - _U64(base)) // _U64(ps)).astype(np.int64)
            last = ((r[:, 1] - _U64(base)) // _U64(ps)).astype(np.int64)
            delta = np.zeros(n + 1, np.int64)
            np.add.at(delta, first, 1)
            np.add.at(delta, last, -1)
            out = np.cumsum(delta[:-1]) > 0
        return out

    def __repr__(self) -> str:
        k = len(self._ranges)
        shown = ", ".join(f"{s:#x}-{e:#x}" for s, e in self._ranges[:3].tolist())
        more = f", … {k - 3} more" if k > 3 else ""
        return (f"Pages({len(self)} pages, {self.nbytes / 1024:.0f} KiB in {k} "
                f"range{'s' if k != 1 else ''}: [{shown}{more}])")
