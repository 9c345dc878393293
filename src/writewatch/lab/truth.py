"""Ground truth for a replay, kept outside the model's kernel: what every tracked page held at
arm time and at each collect, which ops touched it since, and the verdict on each collect.

The truth of a page is its content version read through the tracked process's own mappings,
so a shared page's truth is its memory object's: a write by a forked child to ``MAP_SHARED``
memory changes what the parent's tracker must report. A page "changed" when its content
differs from what it was at the previous collect; it was "written" when a write op (of any
process) touched it, and "changed otherwise" when it changed without one (discard, zap,
remap, lazy-free reclaim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.mm import Mm
from ..model.pte import PAGE, PAGE_SHIFT, PMD_SHIFT
from ..pages import Pages

#: false negatives kept per run with the ops that caused them
MAX_EXAMPLES = 20


#: pages per page-table page (a 2 MiB block): one row of ground truth
_ROW = 1 << (PMD_SHIFT - PAGE_SHIFT)


def _outside(ranges: np.ndarray, tracked: list[tuple[int, int]]) -> int:
    """Pages of (k, 2) int64 page-aligned ``ranges`` in none of the ``tracked`` ranges
    (pure; overlaps counted once)."""
    if not len(ranges):
        return 0
    rep = Pages.from_kernel(ranges.astype(np.uint64), PAGE)
    return len(rep - Pages(sorted(tracked), PAGE)) if tracked else len(rep)


class _Tracked:
    """One tracked range and its ground truth: a row of ``_ROW`` pages per 2 MiB block,
    made when an op first may change the block's pages (pages never touched keep their
    arm-time content). Page ``i`` of the row of block ``k`` is the page at
    ``(k << PMD_SHIFT) + (i << PAGE_SHIFT)``; the positions of a block outside the range are
    not ``valid`` and stay 0 in every field. The rows are kept stacked, so that a collect
    is judged over all of them at once."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self._row: dict[int, int] = {}  #: block key -> its row
        self._sorted: tuple[int, np.ndarray, np.ndarray] | None = None  #: for :meth:`rows`
        self.key = np.empty(0, np.int64)  #: row -> block key
        self.n = 0
        self.baseline = np.empty((0, _ROW), np.int64)  #: content at the last collect
        self.replica = np.empty((0, _ROW), np.int64)
        self.arm = np.empty((0, _ROW), np.int64)  #: content at arm time
        self.copy = np.empty((0, _ROW), np.int64)  #: what the live snapshot copied
        self.valid = np.empty((0, _ROW), bool)
        self.touched = np.empty((0, _ROW), bool)  #: an op may have changed it since
        self.wrote = np.empty((0, _ROW), bool)  #: written since the last collect
        self.copied = np.empty((0, _ROW), bool)  #: the live snapshot copied it
        self.notified = np.empty((0, _ROW), bool)  #: notified in this interval

    _FIELDS = ("baseline", "replica", "arm", "copy", "valid", "touched", "wrote", "copied",
               "notified")

    def keys(self, start: int, end: int) -> range:
        lo, hi = max(start, self.start), min(end, self.end)
        if lo >= hi:
            return range(0)
        return range(lo >> PMD_SHIFT, ((hi - 1) >> PMD_SHIFT) + 1)

    def bounds(self, k: int) -> tuple[int, int]:
        return max(self.start, k << PMD_SHIFT), min(self.end, (k + 1) << PMD_SHIFT)

    def row(self, k: int) -> int:
        return self._row.get(k, -1)

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """:meth:`row` of each block key of ``keys``."""
        if not self.n:
            return np.full(len(keys), -1, np.int64)
        if self._sorted is None or self._sorted[0] != self.n:
            order = np.argsort(self.key[:self.n])
            self._sorted = (self.n, self.key[order], order)
        _, sk, sr = self._sorted
        i = np.minimum(np.searchsorted(sk, keys), self.n - 1)
        return np.where(sk[i] == keys, sr[i], -1)

    def ensure(self, k: int, mm: Mm) -> int:
        """The row of block ``k``, made from the content ``mm`` shows now if there is none."""
        r = self.row(k)
        return r if r >= 0 else self._add_row(k, mm.content(*self.bounds(k)))

    def _add_row(self, k: int, content: np.ndarray) -> int:
        if self.n == len(self.key):
            cap = max(8, 2 * self.n)
            self.key = np.resize(self.key, cap)
            for f in self._FIELDS:
                old = getattr(self, f)
                grown = np.zeros((cap, _ROW), old.dtype)
                grown[:self.n] = old[:self.n]
                setattr(self, f, grown)
        r = self.n
        self.n += 1
        self.key[r] = k
        self._row[k] = r
        lo, hi = self.bounds(k)
        a, b = (lo - (k << PMD_SHIFT)) >> PAGE_SHIFT, (hi - (k << PMD_SHIFT)) >> PAGE_SHIFT
        self.valid[r, a:b] = True
        for f in ("baseline", "replica", "arm"):
            getattr(self, f)[r, a:b] = content
        return r

    def pieces(self, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``ranges`` (k, 2) cut to this range and at block boundaries: the block key, first
        and end page index within the block of each piece."""
        s = np.maximum(ranges[:, 0], self.start)
        e = np.minimum(ranges[:, 1], self.end)
        keep = s < e
        s, e = s[keep], e[keep]
        ks, ke = s >> PMD_SHIFT, (e - 1) >> PMD_SHIFT
        n = ke - ks + 1
        k = np.repeat(ks, n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
        base = k << PMD_SHIFT
        lo = np.maximum(np.repeat(s, n), base)
        hi = np.minimum(np.repeat(e, n), base + (1 << PMD_SHIFT))
        return k, (lo - base) >> PAGE_SHIFT, (hi - base) >> PAGE_SHIFT

    def content(self, mm: Mm, rows: np.ndarray) -> np.ndarray:
        """The content of ``rows`` (sorted by key) now, 0 where not valid: one
        ``mm.content`` per run of consecutive blocks."""
        out = np.zeros((len(rows), _ROW), np.int64)
        keys = self.key[rows]
        cuts = np.flatnonzero(np.diff(keys) != 1) + 1
        flat = out.reshape(-1)
        for a, b in zip(np.concatenate([[0], cuts]).tolist(),
                        np.concatenate([cuts, [len(rows)]]).tolist(), strict=True):
            ka, kb = int(keys[a]), int(keys[b - 1])
            lo, hi = max(self.start, ka << PMD_SHIFT), min(self.end, (kb + 1) << PMD_SHIFT)
            o = a * _ROW + ((lo - (ka << PMD_SHIFT)) >> PAGE_SHIFT)
            flat[o:o + ((hi - lo) >> PAGE_SHIFT)] = mm.content(lo, hi)
        return out


@dataclass(frozen=True)
class FalseNegative:
    page: int  #: address
    collect: int  #: which collect missed it (1-based)
    ops: tuple[dict[str, Any], ...]  #: the ops that touched the page since the last collect

    def describe(self) -> str:
        seq = "; ".join(op_text(o) for o in self.ops) or "(no op touched it)"
        return f"collect {self.collect}: page {self.page:#x} changed, not reported: {seq}"


def op_text(op: dict[str, Any]) -> str:
    """One trace op as a short line (addresses in hex)."""
    parts = [op["op"]]
    for k in ("addr", "len", "new_len", "new_addr"):
        if k in op and op[k] is not None:
            parts.append(f"{k}={op[k]:#x}")
    for k in ("kind", "prot", "advice", "tids", "proc"):
        if k in op:
            parts.append(f"{k}={op[k]}")
    return " ".join(parts)


@dataclass(frozen=True)
class Verdict:
    """One collect judged against ground truth (pages)."""

    reported: int
    false_positives: int
    false_negatives: int
    written: int  #: changed, and a write touched it
    changed_otherwise: int
    replica_differs: int  #: the incremental replica differs from memory after this collect
    examples: tuple[str, ...]  #: false negatives described with the ops that caused them


class Truth:
    """The ground truth of the tracked ranges of the root process ``mm``, and the op log
    since the last collect (for the false-negative examples)."""

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        self.tracked: list[_Tracked] = []
        #: (starts, ends, op indices) of what the ops since the last collect touched
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ops: list[dict[str, Any]] = []  #: the ops since the last collect
        self.n_ops = 0
        self.duplicates = 0  #: notifications for a page already notified in the interval

    def record(self, op: dict[str, Any]) -> None:
        """One more op replayed (the replay's runner does the same inline)."""
        self.ops.append(op)
        self.n_ops += 1

    def track(self, start: int, end: int) -> None:
        self.tracked.append(_Tracked(start, end))

    def observe(self, what: str, start: int, end: int) -> None:
        """The root process changed [start, end) (its addresses): the model's observer."""
        self.touch(start, end, what == "write", self.n_ops - 1)

    def touch(self, start: int, end: int, wrote: bool, op_index: int) -> None:
        hit = False
        for t in self.tracked:
            for k in t.keys(start, end):
                r = t.row(k)
                if r < 0:
                    continue
                lo, hi = t.bounds(k)
                base = k << PMD_SHIFT
                a = (max(lo, start) - base) >> PAGE_SHIFT
                b = (min(hi, end) - base) >> PAGE_SHIFT
                t.touched[r, a:b] = True
                if wrote:
                    t.wrote[r, a:b] = True
                hit = True
        if hit:
            self.log.append((np.array([start], np.int64), np.array([end], np.int64),
                             np.array([op_index], np.int64)))

    def materialise(self, start: int, end: int) -> None:
        """Record the content of the tracked pages of [start, end) before an op changes it."""
        for t in self.tracked:
            for k in t.keys(start, end):
                t.ensure(k, self.mm)

    def materialise_pages(self, addrs: np.ndarray) -> np.ndarray:
        """:meth:`materialise` for single pages about to be written; which are tracked."""
        hit = np.zeros(len(addrs), bool)
        for t in self.tracked:
            inside = (addrs >= t.start) & (addrs < t.end)
            if not inside.any():
                continue
            hit |= inside
            for k in np.unique(addrs[inside] >> PMD_SHIFT).tolist():
                t.ensure(k, self.mm)
        return hit

    def wrote_pages(self, addrs: np.ndarray, op_indices: np.ndarray, hit: np.ndarray) -> None:
        """Single pages written by the ops ``op_indices`` (``hit``: the tracked ones)."""
        for t in self.tracked:
            sel = addrs[(addrs >= t.start) & (addrs < t.end)]
            if not len(sel):
                continue
            rows = t.rows(sel >> PMD_SHIFT)
            assert (rows >= 0).all(), "materialise_pages first"
            idx = (sel >> PAGE_SHIFT) & (_ROW - 1)
            t.touched[rows, idx] = True
            t.wrote[rows, idx] = True
        self.log.append((addrs[hit], addrs[hit] + PAGE, op_indices[hit]))

    def shared_in_root(self, mm: Mm, start: int, end: int) -> list[tuple[int, int]]:
        """The root's addresses that map the memory objects another process's [start, end)
        maps shared (a write there changes what the root sees)."""
        out = []
        for v in mm.vmas_in(start, end):
            if not v.shared or v.file is None:
                continue
            a = v.page_index(max(v.start, start))
            b = v.page_index(min(v.end, end))
            for w in self.mm.vmas:
                if w.file is v.file:
                    lo = w.start + ((max(a, w.pgoff) - w.pgoff) << PAGE_SHIFT)
                    hi = w.start + ((min(b, w.page_index(w.end)) - w.pgoff) << PAGE_SHIFT)
                    if lo < hi:
                        out.append((lo, hi))
        return out

    def notify(self, addr: int, seen: int) -> None:
        """A synchronous design was notified of a write to ``addr`` (content ``seen``)."""
        for t in self.tracked:
            if t.start <= addr < t.end:
                r, p = t.ensure(addr >> PMD_SHIFT, self.mm), (addr >> PAGE_SHIFT) & (_ROW - 1)
                if t.notified[r, p]:
                    self.duplicates += 1
                t.notified[r, p] = True
                if not t.copied[r, p]:
                    t.copied[r, p] = True
                    t.copy[r, p] = seen

    def notify_pages(self, addrs: np.ndarray, seen: np.ndarray) -> None:
        """:meth:`notify` for distinct pages of one 2 MiB block at once."""
        k = int(addrs[0]) >> PMD_SHIFT
        for t in self.tracked:
            inside = (addrs >= t.start) & (addrs < t.end)
            if not inside.any():
                continue
            r = t.ensure(k, self.mm)
            p = ((addrs[inside] >> PAGE_SHIFT) & (_ROW - 1)).astype(np.intp)
            s = seen[inside]
            self.duplicates += int(t.notified[r, p].sum())
            t.notified[r, p] = True
            new = ~t.copied[r, p]
            t.copied[r, p] = True
            t.copy[r, p[new]] = s[new]

    # -- the verdict -------------------------------------------------------------------------
    def judge(self, reported: np.ndarray, collect: int, room: int) -> Verdict:
        """Compare what collect number ``collect`` reported with the truth, patch the replica
        with the reported pages, start the next interval. ``room``: false-negative examples
        still wanted."""
        rep_ranges = np.asarray(reported, np.uint64).reshape(-1, 2).astype(np.int64)
        n = {"reported": 0, "false_positives": 0, "false_negatives": 0, "written": 0,
             "changed_otherwise": 0, "replica_differs": 0}
        examples: list[str] = []
        for t in self.tracked:
            self._judge(t, rep_ranges, n, examples, collect, room)
        # pages reported outside every tracked range: false positives too
        outside = _outside(rep_ranges, [(t.start, t.end) for t in self.tracked])
        n["reported"] += outside
        n["false_positives"] += outside
        self.log.clear()
        self.ops.clear()
        return Verdict(**n, examples=tuple(examples))

    def _judge(self, t: _Tracked, rep_ranges: np.ndarray, n: dict[str, int],
               examples: list[str], collect: int, room: int) -> None:
        k, a, b = t.pieces(rep_ranges)
        rows = t.rows(k)
        # reported pages of blocks never touched since arm: unchanged, so false positives,
        # and the replica copy changes nothing (counted once per reported range)
        cold = int((b - a)[rows < 0].sum())
        n["reported"] += cold
        n["false_positives"] += cold
        m = t.n
        hot = rows >= 0
        repd = np.zeros((m, _ROW), bool)  # the reported pages (pieces may overlap)
        length = (b - a)[hot]
        if len(length):
            first = rows[hot] * _ROW + a[hot]
            ends = np.cumsum(length)
            repd.reshape(-1)[np.repeat(first - ends + length, length) +
                             np.arange(int(ends[-1]))] = True
        base, replica = t.baseline[:m], t.replica[:m]
        active = np.flatnonzero(t.touched[:m].any(axis=1) | repd.any(axis=1) |
                                (replica != base).any(axis=1))
        if not len(active):
            return
        # every row at once as slices (no copies) when all are active, else the active rows
        act: slice | np.ndarray = slice(0, m) if len(active) == m else active
        order = np.argsort(t.key[active], kind="stable")  # content reads runs in address order
        cur = np.empty((len(active), _ROW), np.int64)
        cur[order] = t.content(self.mm, active[order])
        r = repd[act]
        changed = (cur != base[act]) & t.valid[act]
        wrote = t.wrote[act]
        n["reported"] += int(np.count_nonzero(r))
        n["written"] += int(np.count_nonzero(changed & wrote))
        n["changed_otherwise"] += int(np.count_nonzero(changed & ~wrote))
        n["false_positives"] += int(np.count_nonzero(r & ~changed))
        fn = changed & ~r
        nfn = int(np.count_nonzero(fn))
        n["false_negatives"] += nfn
        if nfn and len(examples) < room:
            i, j = np.nonzero(fn)
            addrs = np.sort((t.key[active[i]] << PMD_SHIFT) + (j.astype(np.int64) << PAGE_SHIFT))
            for addr in addrs[:room - len(examples)].tolist():  # in address order
                examples.append(self._example(addr, collect))
        new = replica[act]  # the incremental replica copies the reported pages
        np.copyto(new, cur, where=r)
        if not isinstance(act, slice):
            t.replica[act] = new
        n["replica_differs"] += int(np.count_nonzero(new != cur))
        t.baseline[act] = cur
        t.touched[act] = False
        t.wrote[act] = False
        t.notified[act] = False

    def _example(self, addr: int, collect: int) -> str:
        first = self.n_ops - len(self.ops)
        idx: set[int] = set()
        for s, e, i in self.log:
            idx.update(i[(s <= addr) & (addr < e)].tolist())
        ops = tuple(self.ops[j - first] for j in sorted(idx) if 0 <= j - first < len(self.ops))
        return FalseNegative(addr, collect, ops).describe()

    def snapshot_differs(self) -> int:
        """Pages where the live snapshot (each page's content at its first notification,
        memory where never notified) differs from memory at arm time."""
        diff = 0
        for t in self.tracked:
            if not t.n:
                continue
            rows = np.argsort(t.key[:t.n], kind="stable")
            cur = t.content(self.mm, rows)
            snap = np.where(t.copied[rows], t.copy[rows], cur)
            diff += int(((snap != t.arm[rows]) & t.valid[rows]).sum())
        return diff


__all__ = ["MAX_EXAMPLES", "FalseNegative", "Truth", "Verdict", "op_text"]
