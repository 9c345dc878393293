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

#: false negatives kept per run with the ops that caused them
MAX_EXAMPLES = 20


class _Chunk:
    """Ground truth for the tracked pages of one 2 MiB block, made when an op first may
    change them (pages never touched keep their arm-time content)."""

    __slots__ = ("arm", "baseline", "copied", "copy", "lo", "notified", "replica", "touched",
                 "wrote")

    def __init__(self, lo: int, content: np.ndarray) -> None:
        n = len(content)
        self.lo = lo
        self.baseline = content  #: content at the last collect
        self.replica = content.copy()
        self.arm = content.copy()  #: content at arm time
        self.touched = np.zeros(n, bool)  #: an op may have changed it since the last collect
        self.wrote = np.zeros(n, bool)  #: written since the last collect
        self.copied = np.zeros(n, bool)  #: the live snapshot copied it
        self.copy = np.zeros(n, np.int64)
        self.notified = np.zeros(n, bool)  #: notified in this interval


class _Tracked:
    """One tracked range and the chunks of ground truth made for it."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.chunks: dict[int, _Chunk] = {}

    def keys(self, start: int, end: int) -> range:
        lo, hi = max(start, self.start), min(end, self.end)
        if lo >= hi:
            return range(0)
        return range(lo >> PMD_SHIFT, ((hi - 1) >> PMD_SHIFT) + 1)

    def bounds(self, k: int) -> tuple[int, int]:
        return max(self.start, k << PMD_SHIFT), min(self.end, (k + 1) << PMD_SHIFT)


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
                c = t.chunks.get(k)
                if c is None:
                    continue
                lo, hi = max(c.lo, start), min(t.bounds(k)[1], end)
                a, b = (lo - c.lo) >> PAGE_SHIFT, (hi - c.lo) >> PAGE_SHIFT
                c.touched[a:b] = True
                if wrote:
                    c.wrote[a:b] = True
                hit = True
        if hit:
            self.log.append((np.array([start], np.int64), np.array([end], np.int64),
                             np.array([op_index], np.int64)))

    def materialise(self, start: int, end: int) -> None:
        """Record the content of the tracked pages of [start, end) before an op changes it."""
        for t in self.tracked:
            for k in t.keys(start, end):
                if k not in t.chunks:
                    lo, hi = t.bounds(k)
                    t.chunks[k] = _Chunk(lo, self.mm.content(lo, hi))

    def materialise_pages(self, addrs: np.ndarray) -> np.ndarray:
        """:meth:`materialise` for single pages about to be written; which are tracked."""
        hit = np.zeros(len(addrs), bool)
        for t in self.tracked:
            inside = (addrs >= t.start) & (addrs < t.end)
            if not inside.any():
                continue
            hit |= inside
            for k in np.unique(addrs[inside] >> PMD_SHIFT).tolist():
                if k not in t.chunks:
                    lo, hi = t.bounds(k)
                    t.chunks[k] = _Chunk(lo, self.mm.content(lo, hi))
        return hit

    def wrote_pages(self, addrs: np.ndarray, op_indices: np.ndarray, hit: np.ndarray) -> None:
        """Single pages written by the ops ``op_indices`` (``hit``: the tracked ones)."""
        for t in self.tracked:
            sel = np.sort(addrs[(addrs >= t.start) & (addrs < t.end)])
            if not len(sel):
                continue
            cuts = np.flatnonzero(np.diff(sel >> PMD_SHIFT)) + 1
            for part in np.split(sel, cuts):
                c = t.chunks[int(part[0]) >> PMD_SHIFT]
                idx = (part - c.lo) >> PAGE_SHIFT
                c.touched[idx] = True
                c.wrote[idx] = True
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
                k = addr >> PMD_SHIFT
                c = t.chunks.get(k)
                if c is None:
                    self.materialise(addr, addr + PAGE)
                    c = t.chunks[k]
                p = (addr - c.lo) >> PAGE_SHIFT
                if c.notified[p]:
                    self.duplicates += 1
                c.notified[p] = True
                if not c.copied[p]:
                    c.copied[p] = True
                    c.copy[p] = seen

    # -- the verdict -------------------------------------------------------------------------
    def judge(self, reported: np.ndarray, collect: int, room: int) -> Verdict:
        """Compare what collect number ``collect`` reported with the truth, patch the replica
        with the reported pages, start the next interval. ``room``: false-negative examples
        still wanted."""
        rep_ranges = np.asarray(reported, np.uint64).reshape(-1, 2).tolist()
        n = {"reported": 0, "false_positives": 0, "false_negatives": 0, "written": 0,
             "changed_otherwise": 0, "replica_differs": 0}
        examples: list[str] = []
        for t in self.tracked:
            self._judge(t, rep_ranges, n, examples, collect, room)
        self.log.clear()
        self.ops.clear()
        return Verdict(**n, examples=tuple(examples))

    def _judge(self, t: _Tracked, rep_ranges: list[list[int]], n: dict[str, int],
               examples: list[str], collect: int, room: int) -> None:
        reps: dict[int, list[tuple[int, int]]] = {}
        for s, e in rep_ranges:
            for k in t.keys(s, e):
                reps.setdefault(k, []).append((s, e))
        for k, parts in reps.items():
            if k not in t.chunks:
                # never touched since arm: unchanged, so every reported page is a false
                # positive and the replica copy changes nothing
                lo, hi = t.bounds(k)
                npg = sum(max(0, min(e, hi) - max(s, lo)) for s, e in parts) >> PAGE_SHIFT
                n["reported"] += npg
                n["false_positives"] += npg
        for k, c in sorted(t.chunks.items()):  # address order: the examples are the lowest
            lo, hi = t.bounds(k)
            rep = np.zeros((hi - lo) >> PAGE_SHIFT, bool)
            for s, e in reps.get(k, ()):
                a, b = max(s, lo), min(e, hi)
                if a < b:
                    rep[(a - lo) >> PAGE_SHIFT:(b - lo) >> PAGE_SHIFT] = True
            if not (c.touched.any() or rep.any() or (c.replica != c.baseline).any()):
                continue
            cur = self.mm.content(lo, hi)
            changed = cur != c.baseline
            n["reported"] += int(rep.sum())
            n["written"] += int((changed & c.wrote).sum())
            n["changed_otherwise"] += int((changed & ~c.wrote).sum())
            n["false_positives"] += int((rep & ~changed).sum())
            fn = changed & ~rep
            nfn = int(fn.sum())
            n["false_negatives"] += nfn
            if nfn and len(examples) < room:
                for p in np.flatnonzero(fn)[:room - len(examples)]:
                    examples.append(self._example(lo + (int(p) << PAGE_SHIFT), collect))
            c.replica[rep] = cur[rep]  # the incremental replica copies reported pages
            n["replica_differs"] += int((c.replica != cur).sum())
            c.baseline = cur
            c.touched[:] = False
            c.wrote[:] = False
            c.notified[:] = False

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
            for k, ch in t.chunks.items():
                cur = self.mm.content(*t.bounds(k))
                snap = np.where(ch.copied, ch.copy, cur)
                diff += int((snap != ch.arm).sum())
        return diff


__all__ = ["MAX_EXAMPLES", "FalseNegative", "Truth", "Verdict", "op_text"]
