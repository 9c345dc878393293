"""Replay a trace under a design and measure it against the model's ground truth.

Ground truth is the content of every tracked page (a version number: each write makes a new
one; zero page 0; unmapped -1), read through the tracked process's own mappings, so a shared
page's truth is its memory object's: a write by a forked child to ``MAP_SHARED`` memory changes
what the parent's tracker must report. At each collect a page "changed" when its content
differs from what it was at the previous collect; it was "written" when a write op (of any
process) touched it, and "changed otherwise" when it changed without one (discard, zap, remap,
lazy-free reclaim).

* false positive: reported, not changed;  false negative: changed, not reported (each one is
  kept with the ops that touched the page since the previous collect);
* duplicates: notifications (messages, ring entries) for a page already notified in the
  same collect interval;
* page tables: peak pages and bytes over the run, and extra over the same trace untracked;
* replica: a copy of the tracked pages made at arm time and patched with the reported pages at
  each collect must equal memory after each collect;
* live snapshot (synchronous designs): the content copied at the first notification of each
  page, memory elsewhere, must equal memory at arm time;
* events: faults, TLB flushes, lock acquisitions, entries walked, per collect (``series``) and
  priced in time by :mod:`.costs`.

The replay streams: operations come from any iterable and are applied as they come; runs of
single-page reads and writes are applied in vectorised batches (the same result as one by
one). Only the operations since the last collect are kept, for the false-negative examples.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import errors
from ..model.kernel import ModelKernel
from ..model.mm import Mm
from ..model.profiles import Profile
from ..model.pte import PAGE, PAGE_SHIFT, PMD_SHIFT, PT_PAGE_BYTES
from ..model.space import ModelError
from ..model.trace import Trace
from . import costs as C
from . import designs as D

MAX_EXAMPLES = 20
#: ops that may change memory content in their range
_CHANGES = frozenset({"write", "madvise", "munmap", "mmap", "mremap", "reclaim"})
#: single-page accesses gathered before a batch is applied
_BATCH = 8192


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
        seq = "; ".join(_op_text(o) for o in self.ops) or "(no op touched it)"
        return f"collect {self.collect}: page {self.page:#x} changed, not reported: {seq}"


def _op_text(op: dict[str, Any]) -> str:
    parts = [op["op"]]
    for k in ("addr", "len", "new_len", "new_addr"):
        if k in op and op[k] is not None:
            parts.append(f"{k}={op[k]:#x}")
    for k in ("kind", "prot", "advice", "tids", "proc"):
        if k in op:
            parts.append(f"{k}={op[k]}")
    return " ".join(parts)


@dataclass(frozen=True)
class CollectSample:
    """One collect of a replay: the truth, what the design reported, and what it cost."""

    index: int
    ops: int  #: operations replayed so far
    changed: int
    reported: int
    false_positives: int
    false_negatives: int
    walked: int  #: entries examined by this collect
    faults: int  #: faults since the previous collect
    tracking_faults: int
    tlb_flushes: int
    pt_bytes: int  #: page tables now
    modelled_us: float  #: this collect's kernel work priced with the calibrated costs


@dataclass
class Metrics:
    design: str
    workload: str
    profile: str
    available: bool = True
    reason: str = ""
    ops: int = 0
    collects: int = 0
    pages_written: int = 0
    changed_otherwise: int = 0
    reported: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    duplicates: int = 0
    notifications: int = 0
    pt_peak: int = 0
    pt_extra: int | None = None
    pt_peak_bytes: int = 0
    pt_extra_bytes: int | None = None
    tracking_faults: int = 0
    faults: int = 0
    walked_per_collect: float = 0.0
    ring_overflows: int = 0
    vmas_peak: int = 0
    replica_diverged: int = 0  #: pages that differed after some collect (max over collects)
    replica_last: int = 0  #: pages that differed after the last collect
    snapshot_differs: int | None = None  #: None: not a synchronous design
    seconds: float = 0.0
    events: dict[str, int] = field(default_factory=dict)  #: counted kernel events
    #: the tracking's kernel work priced in microseconds: per collect (mean) and in faults
    collect_us: float = 0.0
    fault_us: float = 0.0
    fn_examples: list[str] = field(default_factory=list)
    series: list[CollectSample] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner:
    """One design replaying one trace on a fresh model machine."""

    def __init__(self, design: D.Design | None, profile: Profile, workload: str = "",
                 costs: C.Costs | None = None, batch: bool = True) -> None:
        self.design = design
        #: apply runs of single-page accesses in vectorised batches (False: one by one)
        self.batch = batch
        self.profile = design.profile(profile) if design else profile
        self.costs = costs or C.DEFAULT
        self.mm = Mm(self.profile)
        self.kernel = ModelKernel(self.mm)
        self.procs: dict[int, Mm] = {0: self.mm}  #: trace process numbers
        self._forks = 0
        self.tracked: list[_Tracked] = []
        self.m = Metrics(design.name if design else "untracked", workload, profile.name)
        #: (addresses, op indices) touched since the last collect, for false-negative examples
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ops: list[dict[str, Any]] = []  #: the ops since the last collect
        self.n_ops = 0
        self.duplicates = 0
        self._walked = 0
        self._walked_total = 0
        self._last = self.mm.c.as_dict()
        self.mm.observer = self._observe
        self._wbuf: list[int] = []
        self._wops: list[int] = []
        self._wk: set[int] = set()
        self._wpages: set[int] = set()
        self._rbuf: list[int] = []
        self._rk: set[int] = set()
        if design is not None:
            design.setup(self)

    # -- ground truth --------------------------------------------------------------------------
    def _observe(self, what: str, start: int, end: int) -> None:
        """The root process changed [start, end) (its addresses)."""
        self._touch(start, end, what == "write", self.n_ops - 1)

    def _touch(self, start: int, end: int, wrote: bool, op_index: int) -> None:
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

    def _materialise(self, start: int, end: int) -> None:
        """Record the content of the tracked pages of [start, end) before an op changes it."""
        for t in self.tracked:
            for k in t.keys(start, end):
                if k not in t.chunks:
                    lo, hi = t.bounds(k)
                    t.chunks[k] = _Chunk(lo, self.mm.content(lo, hi))

    def _shared_in_root(self, mm: Mm, start: int, end: int) -> list[tuple[int, int]]:
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
                    self._materialise(addr, addr + PAGE)
                    c = t.chunks[k]
                p = (addr - c.lo) >> PAGE_SHIFT
                if c.notified[p]:
                    self.duplicates += 1
                c.notified[p] = True
                if not c.copied[p]:
                    c.copied[p] = True
                    c.copy[p] = seen

    # -- batches -------------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._rbuf:
            addrs = np.array(self._rbuf, np.int64)
            self._rbuf.clear()
            self._rk.clear()
            self.mm.read_pages(addrs)
        if not self._wbuf:
            return
        addrs = np.array(self._wbuf, np.int64)
        opi = np.array(self._wops, np.int64)
        self._wbuf.clear()
        self._wops.clear()
        self._wk.clear()
        self._wpages.clear()
        ks = np.unique(addrs >> PMD_SHIFT)
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
        self.mm.observer = None
        try:
            self.mm.write_pages(addrs)
        finally:
            self.mm.observer = self._observe
        if not hit.any():
            return
        for t in self.tracked:
            sel = np.sort(addrs[(addrs >= t.start) & (addrs < t.end)])
            if not len(sel):
                continue
            keys = sel >> PMD_SHIFT
            cuts = np.flatnonzero(np.diff(keys)) + 1
            for part in np.split(sel, cuts):
                c = t.chunks[int(part[0]) >> PMD_SHIFT]
                idx = (part - c.lo) >> PAGE_SHIFT
                c.touched[idx] = True
                c.wrote[idx] = True
        self.log.append((addrs[hit], addrs[hit] + PAGE, opi[hit]))
        del ks

    def _queue(self, op: dict[str, Any], name: str) -> bool:
        """Gather a single-page access of the root process into the batch; False when the op
        must be applied on its own. At the flush the reads go first, then the writes: a read
        of a page written earlier in the batch is a no-op and is dropped, and a read that
        would come after a write to the same page table is applied first only when that
        table exists and is not a THP (where the two cannot interact)."""
        if not self.batch or op.get("len") != PAGE or "tids" in op or op.get("proc") or \
                op.get("tid"):
            return False
        a = op["addr"]
        k = a >> PMD_SHIFT
        if name == "write":
            self._wbuf.append(a)
            self._wops.append(self.n_ops - 1)
            self._wk.add(k)
            self._wpages.add(a)
        elif a in self._wpages:
            return True
        else:
            if k in self._wk:
                t = self.mm.pt.get(k)
                if t is None or t.huge:
                    self._flush()
            self._rbuf.append(a)
            self._rk.add(k)
        if len(self._wbuf) + len(self._rbuf) >= _BATCH:
            self._flush()
        return True

    def _commutes(self, op: dict[str, Any], name: str) -> bool:
        """A discard of the root's memory that the gathered accesses cannot see: none of
        their page tables, and no whole PMD (a table MADV_DONTNEED could free): it may run
        before them with the same result."""
        if name != "madvise" or op["advice"] not in ("DONTNEED", "FREE") or op.get("proc"):
            return False
        a, ln = op["addr"], op["len"]
        lo, hi = a >> PMD_SHIFT, (a + ln - 1) >> PMD_SHIFT
        if ln >= 1 << PMD_SHIFT or (hi > lo + 1):
            return False
        busy = self._wk | self._rk
        return lo not in busy and hi not in busy

    # -- ops -----------------------------------------------------------------------------------
    def track(self, start: int, end: int) -> None:
        self.tracked.append(_Tracked(start, end))
        if self.design is not None:
            self.design.arm(start, end)
        self._walked = self.kernel.entries_walked
        self._last = self.mm.c.as_dict()

    def collect(self) -> None:
        self._flush()
        self.m.collects += 1
        reported = self.design.collect() if self.design is not None else \
            np.empty((0, 2), np.uint64)
        walked = self.kernel.entries_walked - self._walked
        self._walked_total += walked
        before = (self.m.reported, self.m.false_positives, self.m.false_negatives,
                  self.m.pages_written + self.m.changed_otherwise)
        rep_ranges = np.asarray(reported, np.uint64).reshape(-1, 2).tolist()
        self.replica_now = 0
        for t in self.tracked:
            self._judge(t, rep_ranges)
        self.m.replica_diverged = max(self.m.replica_diverged, self.replica_now)
        self.m.replica_last = self.replica_now
        self._sample(walked, before)
        self.log.clear()
        self.ops.clear()
        self._walked = self.kernel.entries_walked

    def _judge(self, t: _Tracked, rep_ranges: list[list[int]]) -> None:
        """Compare what was reported in ``t`` with the truth; update the replica."""
        m = self.m
        reps: dict[int, list[tuple[int, int]]] = {}
        for s, e in rep_ranges:
            for k in t.keys(s, e):
                reps.setdefault(k, []).append((s, e))
        for k, parts in reps.items():
            if k not in t.chunks:
                # never touched since arm: unchanged, so every reported page is a false
                # positive and the replica copy changes nothing
                lo, hi = t.bounds(k)
                n = sum(max(0, min(e, hi) - max(s, lo)) for s, e in parts) >> PAGE_SHIFT
                m.reported += n
                m.false_positives += n
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
            m.reported += int(rep.sum())
            m.pages_written += int((changed & c.wrote).sum())
            m.changed_otherwise += int((changed & ~c.wrote).sum())
            m.false_positives += int((rep & ~changed).sum())
            fn = changed & ~rep
            nfn = int(fn.sum())
            m.false_negatives += nfn
            if nfn and len(m.fn_examples) < MAX_EXAMPLES:
                for p in np.flatnonzero(fn)[:MAX_EXAMPLES - len(m.fn_examples)]:
                    m.fn_examples.append(self._example(lo + (int(p) << PAGE_SHIFT)))
            c.replica[rep] = cur[rep]  # the incremental replica copies reported pages
            self.replica_now += int((c.replica != cur).sum())
            c.baseline = cur
            c.touched[:] = False
            c.wrote[:] = False
            c.notified[:] = False

    def _example(self, addr: int) -> str:
        first = self.n_ops - len(self.ops)
        idx: set[int] = set()
        for s, e, i in self.log:
            idx.update(i[(s <= addr) & (addr < e)].tolist())
        ops = tuple(self.ops[j - first] for j in sorted(idx) if 0 <= j - first < len(self.ops))
        return FalseNegative(addr, self.m.collects, ops).describe()

    def _sample(self, walked: int, before: tuple[int, int, int, int]) -> None:
        now = self.mm.c.as_dict()
        d = {k: now[k] - self._last.get(k, 0) for k in now}
        self._last = now
        m = self.m
        self.m.series.append(CollectSample(
            index=m.collects, ops=self.n_ops,
            changed=m.pages_written + m.changed_otherwise - before[3],
            reported=m.reported - before[0], false_positives=m.false_positives - before[1],
            false_negatives=m.false_negatives - before[2], walked=walked,
            faults=d["faults"], tracking_faults=d["tracking_faults"],
            tlb_flushes=d["tlb_flushes"], pt_bytes=now["pt_pages"] * PT_PAGE_BYTES,
            modelled_us=self.costs.collect_us(walked, d)))

    def apply(self, op: dict[str, Any]) -> None:
        name = op["op"]
        self.ops.append(op)
        self.n_ops += 1
        if (name == "write" or name == "read") and self._queue(op, name):
            return
        if not self._commutes(op, name):
            self._flush()
        if name == "write" and not op.get("proc"):
            a, ln = op["addr"], op["len"]
            if self.tracked:
                self._materialise(a, a + ln)
            tids = op.get("tids")
            self.mm.write(a, ln, tuple(tids) if tids else (op.get("tid", 0),))
            return
        self._apply_other(op, name)
        if len(self.mm.vmas) > self.m.vmas_peak:
            self.m.vmas_peak = len(self.mm.vmas)

    def _proc(self, op: dict[str, Any]) -> Mm:
        n = op.get("proc", 0)
        mm = self.procs.get(n)
        if mm is None:
            raise ModelError(f"{op['op']}: no live process {n} (processes are numbered by "
                             "fork order: 1 for the first fork)", op=op["op"])
        return mm

    def _apply_other(self, op: dict[str, Any], name: str) -> None:
        mm = self._proc(op)
        if mm is not self.mm:
            self._apply_child(mm, op, name)
            return
        if self.tracked and name in _CHANGES and op.get("addr") is not None:
            a = op["addr"]
            self._materialise(a, a + max(op["len"], op.get("new_len") or 0))
            if name == "mremap" and op.get("new_addr") is not None:
                self._materialise(op["new_addr"], op["new_addr"] + op["new_len"])
        elif self.tracked and name == "written":
            for s, e in op["ranges"]:
                self._materialise(int(s), int(e))
        if name == "track":
            self.track(op["addr"], op["addr"] + op["len"])
        elif name == "collect":
            self.collect()
        elif name == "maps":
            self._maps(op)
        elif name == "written":
            for s, e in op["ranges"]:
                mm.write(int(s), int(e) - int(s))
            self.collect()
        else:
            self._syscall(mm, op, name)

    def _apply_child(self, mm: Mm, op: dict[str, Any], name: str) -> None:
        """An op of a forked child: it changes what the root sees only through shared memory
        objects."""
        if name in _CHANGES and op.get("addr") is not None:
            a = op["addr"]
            shared = self._shared_in_root(mm, a, a + op["len"])
            for lo, hi in shared:
                self._materialise(lo, hi)
            self._syscall(mm, op, name)
            for lo, hi in shared:
                self._touch(lo, hi, name == "write", self.n_ops - 1)
            return
        self._syscall(mm, op, name)

    def _syscall(self, mm: Mm, op: dict[str, Any], name: str) -> None:
        if name == "write":
            tids = op.get("tids")
            mm.write(op["addr"], op["len"], tuple(tids) if tids else (op.get("tid", 0),))
        elif name == "read":
            mm.read(op["addr"], op["len"])
        elif name == "mmap":
            mm.mmap(op.get("addr"), op["len"], op.get("kind", "anon"),
                    bool(op.get("shared", False)), op.get("prot", "rw"), op.get("file"),
                    op.get("offset", 0))
        elif name == "munmap":
            mm.munmap(op["addr"], op["len"])
        elif name == "mremap":
            mm.mremap(op["addr"], op["len"], op["new_len"], op.get("new_addr"))
        elif name == "mprotect":
            mm.mprotect(op["addr"], op["len"], op["prot"])
        elif name == "madvise":
            mm.madvise(op["addr"], op["len"], op["advice"])
        elif name == "reclaim":
            mm.reclaim(op["addr"], op["len"])
        elif name == "fork":
            child = mm.fork()
            self._forks += 1
            self.procs[self._forks] = child
            if self.design is not None and mm is self.mm:
                self.design.fork(child.pid)
        elif name == "child_exit":
            if mm.children:
                gone = mm.children[-1]
                mm.child_exit()
                self.procs = {n: p for n, p in self.procs.items() if p is not gone}
        elif name == "exit":
            mm.exit()
            if mm is not self.mm:
                self.procs = {n: p for n, p in self.procs.items() if p is not mm}

    def _maps(self, op: dict[str, Any]) -> None:
        """A recorded mapping snapshot: unmap what vanished, map what appeared, and track
        what appeared that is not tracked yet."""
        want = sorted((int(s), int(e), kind if kind in ("anon", "shmem") else "file")
                      for s, e, _perms, kind in op["maps"])
        have = [(v.start, v.end) for v in self.mm.vmas]
        for s, e in _subtract(have, [(s, e) for s, e, _ in want]):
            self.mm.munmap(s, e - s)
        have = [(v.start, v.end) for v in self.mm.vmas]
        for s0, e0, kind in want:
            for s, e in _subtract([(s0, e0)], have):
                self.mm.mmap(s, e - s, kind, kind == "shmem")
                for ts, te in _subtract([(s, e)], [(t.start, t.end) for t in self.tracked]):
                    self.track(ts, te)

    def finish(self) -> Metrics:
        self._flush()
        m = self.m
        c = self.mm.c
        m.pt_peak = c.pt_peak
        m.pt_peak_bytes = c.pt_peak * PT_PAGE_BYTES
        m.tracking_faults = c.tracking_faults
        m.faults = c.faults
        m.events = {k: v for k, v in c.as_dict().items() if k not in ("pt_pages", "pt_peak")}
        m.events["entries_walked"] = self.kernel.entries_walked
        m.duplicates += self.duplicates + (self.design.duplicates if self.design else 0)
        m.walked_per_collect = self._walked_total / max(m.collects, 1)
        m.collect_us = float(np.mean([s.modelled_us for s in m.series])) if m.series else 0.0
        m.fault_us = self.costs.fault_us(c.as_dict())
        d = self.design
        ring = getattr(d, "ring", None)
        if ring is not None:
            m.ring_overflows = ring.overflows
        m.notifications = sum(x.notifications for x in self.kernel.contexts())
        if d is not None and d.sync:
            diff = 0
            for t in self.tracked:
                for k, ch in t.chunks.items():
                    cur = self.mm.content(*t.bounds(k))
                    snap = np.where(ch.copied, ch.copy, cur)
                    diff += int((snap != ch.arm).sum())
            m.snapshot_differs = diff
        m.ops = self.n_ops
        return m


def _subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the ranges ``a`` not covered by the ranges ``b``."""
    out = []
    bs = sorted(b)
    for s, e in a:
        pos = s
        for bs_, be in bs:
            if be <= pos or bs_ >= e:
                continue
            if bs_ > pos:
                out.append((pos, bs_))
            pos = max(pos, be)
            if pos >= e:
                break
        if pos < e:
            out.append((pos, e))
    return out


def _design(design: str | type[D.Design] | None) -> D.Design | None:
    return D.get(design)() if design else None


def run_trace(trace: Trace | Iterable[dict[str, Any]], design: str | type[D.Design] | None,
              profile: Profile, workload: str = "", costs: C.Costs | None = None, *,
              batch: bool = True) -> Metrics:
    """Replay ``trace`` (a :class:`Trace` or any iterable of operations, consumed as it
    comes) under ``design`` (a name, ``module:Class``, a class; None: untracked). ``batch``
    False applies every op on its own (the batches must give the same metrics)."""
    dsg = _design(design)
    if dsg is not None:
        why = dsg.unavailable(profile)
        if why:
            return Metrics(dsg.name, workload, profile.name, available=False, reason=why)
    t0 = time.perf_counter()
    r = Runner(dsg, profile, workload, costs, batch)
    ops: Iterator[dict[str, Any]] = iter(trace.ops if isinstance(trace, Trace) else trace)
    for op in ops:
        try:
            r.apply(op)
        except ModelError as exc:
            raise errors.WriteWatchError(
                f"op {r.n_ops} ({_op_text(op)}) failed under {r.m.design}: {exc}",
                hint="the trace does something the modelled program could not") from exc
    try:
        m = r.finish()
    except ModelError as exc:
        raise errors.WriteWatchError(f"a batch of accesses failed under {r.m.design}: {exc}",
                                     hint="the trace does something the modelled program "
                                          "could not") from exc
    if dsg is not None:
        dsg.close()
    m.seconds = time.perf_counter() - t0
    return m


def compare(trace: Trace | Any, designs: Iterable[str | type[D.Design]], profile: Profile,
            workload: str = "", costs: C.Costs | None = None) -> list[Metrics]:
    """Every design on one trace; ``pt_extra`` against the same trace untracked. ``trace``
    is a :class:`Trace` or a re-iterable source (each design replays it from the start)."""
    base = run_trace(trace, None, profile, workload, costs)
    out = []
    for d in designs:
        m = run_trace(trace, d, profile, workload, costs)
        if m.available:
            m.pt_extra = m.pt_peak - base.pt_peak
            m.pt_extra_bytes = (m.pt_peak - base.pt_peak) * PT_PAGE_BYTES
        out.append(m)
    return out


__all__ = ["CollectSample", "FalseNegative", "Metrics", "Runner", "compare", "run_trace"]
