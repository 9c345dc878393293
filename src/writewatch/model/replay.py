"""Replay a trace under each design and measure it against the model's ground truth.

Ground truth is the content of every tracked page (a version number: each write makes a new
one; zero page 0; unmapped -1). At each collect, a page "changed" when its content differs
from what it was at the previous collect; it was "written" when a write op touched it, and
"changed otherwise" when it changed without one (discard, zap, remap, lazy-free reclaim).

* false positive: reported, not changed;  false negative: changed, not reported (each one is
  kept with the ops that touched the page since the previous collect);
* duplicates: notifications (messages, ring entries) for a page already notified in the
  same collect interval;
* page-table pages: peak over the run, and extra over the same trace untracked;
* replica: a copy of the tracked pages made at arm time and patched with the reported pages at
  each collect must equal memory after each collect;
* live snapshot (synchronous designs): the content copied at the first notification of each
  page, memory elsewhere, must equal memory at arm time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import errors
from . import designs as D
from .kernel import ModelKernel
from .profiles import Profile
from .state import PAGE, PAGE_SHIFT, PMD_SHIFT, Mm, ModelError
from .trace import Trace

MAX_EXAMPLES = 20
#: ops that may change memory content in their range
_CHANGES = frozenset({"write", "madvise", "munmap", "mmap", "mremap", "reclaim"})


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


@dataclass
class FalseNegative:
    page: int  #: address
    collect: int  #: which collect missed it (1-based)
    ops: list[dict[str, Any]]  #: the ops that touched the page since the previous collect

    def describe(self) -> str:
        seq = "; ".join(_op_text(o) for o in self.ops) or "(no op touched it)"
        return f"collect {self.collect}: page {self.page:#x} changed, not reported: {seq}"


def _op_text(op: dict[str, Any]) -> str:
    parts = [op["op"]]
    for k in ("addr", "len", "new_len", "new_addr"):
        if k in op and op[k] is not None:
            parts.append(f"{k}={op[k]:#x}")
    for k in ("kind", "prot", "advice", "tids"):
        if k in op:
            parts.append(f"{k}={op[k]}")
    return " ".join(parts)


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
    tracking_faults: int = 0
    faults: int = 0
    walked_per_collect: float = 0.0
    ring_overflows: int = 0
    vmas_peak: int = 0
    replica_diverged: int = 0  #: pages that differed after some collect (max over collects)
    snapshot_differs: int | None = None  #: None: not a synchronous design
    seconds: float = 0.0
    fn_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Runner:
    """One design replaying one trace on a fresh model process."""

    def __init__(self, design: D.Design | None, profile: Profile, workload: str = "") -> None:
        self.design = design
        self.profile = design.profile(profile) if design else profile
        self.mm = Mm(self.profile)
        self.kernel = ModelKernel(self.mm)
        self.tracked: list[_Tracked] = []
        self.m = Metrics(design.name if design else "untracked", workload, profile.name)
        self.log: list[tuple[int, int, int]] = []  #: (start, end, op index) since collect
        self.ops: list[dict[str, Any]] = []
        self.duplicates = 0
        self._walked = 0
        self._walked_total = 0
        self.replica_now = 0
        self._op_index = -1
        self.mm.observer = self._observe
        if design is not None:
            design.setup(self)

    # -- ground truth --------------------------------------------------------------------------
    def _observe(self, what: str, start: int, end: int) -> None:
        if end - start == PAGE:
            for t in self.tracked:
                if t.start <= start < t.end:
                    c = t.chunks.get(start >> PMD_SHIFT)
                    if c is not None:
                        i = (start - c.lo) >> PAGE_SHIFT
                        c.touched[i] = True
                        if what == "write":
                            c.wrote[i] = True
                        self.log.append((start, end, self._op_index))
            return
        hit = False
        for t in self.tracked:
            for k in t.keys(start, end):
                c = t.chunks.get(k)
                if c is None:
                    continue
                lo, hi = max(c.lo, start), min(t.bounds(k)[1], end)
                a, b = (lo - c.lo) >> PAGE_SHIFT, (hi - c.lo) >> PAGE_SHIFT
                c.touched[a:b] = True
                if what == "write":
                    c.wrote[a:b] = True
                hit = True
        if hit:
            self.log.append((start, end, self._op_index))

    def _materialise(self, start: int, end: int) -> None:
        """Record the content of the tracked pages of [start, end) before an op changes it."""
        if end - start == PAGE:
            k = start >> PMD_SHIFT
            for t in self.tracked:
                if t.start <= start < t.end and k not in t.chunks:
                    lo, hi = t.bounds(k)
                    t.chunks[k] = _Chunk(lo, self.mm.content(lo, hi))
            return
        for t in self.tracked:
            for k in t.keys(start, end):
                if k not in t.chunks:
                    lo, hi = t.bounds(k)
                    t.chunks[k] = _Chunk(lo, self.mm.content(lo, hi))

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

    # -- ops -----------------------------------------------------------------------------------
    def track(self, start: int, end: int) -> None:
        self.tracked.append(_Tracked(start, end))
        if self.design is not None:
            self.design.arm(start, end)
        self._walked = self.kernel.entries_walked

    def collect(self) -> None:
        self.m.collects += 1
        reported = self.design.collect() if self.design is not None else \
            np.empty((0, 2), np.uint64)
        walked = self.kernel.entries_walked - self._walked
        self._walked_total += walked
        rep_ranges = np.asarray(reported, np.uint64).reshape(-1, 2).tolist()
        for t in self.tracked:
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
                    self.m.reported += n
                    self.m.false_positives += n
            for k, c in t.chunks.items():
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
                self.m.reported += int(rep.sum())
                self.m.pages_written += int((changed & c.wrote).sum())
                self.m.changed_otherwise += int((changed & ~c.wrote).sum())
                self.m.false_positives += int((rep & ~changed).sum())
                fn = changed & ~rep
                nfn = int(fn.sum())
                self.m.false_negatives += nfn
                if nfn and len(self.m.fn_examples) < MAX_EXAMPLES:
                    for p in np.flatnonzero(fn)[:MAX_EXAMPLES - len(self.m.fn_examples)]:
                        addr = lo + (int(p) << PAGE_SHIFT)
                        ops = [self.ops[i] for s, e, i in self.log if s <= addr < e]
                        self.m.fn_examples.append(
                            FalseNegative(addr, self.m.collects, ops).describe())
                c.replica[rep] = cur[rep]  # the incremental replica copies reported pages
                self.replica_now += int((c.replica != cur).sum())
                c.baseline = cur
                c.touched[:] = False
                c.wrote[:] = False
                c.notified[:] = False
        self.m.replica_diverged = max(self.m.replica_diverged, self.replica_now)
        self.replica_now = 0
        self.log.clear()
        self._walked = self.kernel.entries_walked

    def apply(self, op: dict[str, Any]) -> None:
        name = op["op"]
        self.ops.append(op)
        self._op_index += 1
        if name == "write":  # the common case first
            a, ln = op["addr"], op["len"]
            if self.tracked:
                self._materialise(a, a + ln)
            tids = op.get("tids")
            self.mm.write(a, ln, tuple(tids) if tids else (op.get("tid", 0),))
            return
        self._apply_other(op, name)
        if len(self.mm.vmas) > self.m.vmas_peak:
            self.m.vmas_peak = len(self.mm.vmas)

    def _apply_other(self, op: dict[str, Any], name: str) -> None:
        mm = self.mm
        if self.tracked and name in _CHANGES and op.get("addr") is not None:
            a = op["addr"]
            self._materialise(a, a + max(op["len"], op.get("new_len") or 0))
            if name == "mremap" and op.get("new_addr") is not None:
                self._materialise(op["new_addr"], op["new_addr"] + op["new_len"])
        elif self.tracked and name == "written":
            for s, e in op["ranges"]:
                self._materialise(int(s), int(e))
        if name == "read":
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
            if op["advice"] in ("FREE", "PAGEOUT"):
                self._observe("zap", op["addr"], op["addr"] + op["len"])
        elif name == "reclaim":
            mm.reclaim(op["addr"], op["len"])
            self._observe("zap", op["addr"], op["addr"] + op["len"])
        elif name == "fork":
            mm.fork()
        elif name == "child_exit":
            mm.child_exit()
        elif name == "track":
            self.track(op["addr"], op["addr"] + op["len"])
        elif name == "collect":
            self.collect()
        elif name == "exit":
            mm.exit()
        elif name == "maps":
            self._maps(op)
        elif name == "written":
            for s, e in op["ranges"]:
                mm.write(int(s), int(e) - int(s))
            self.collect()

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
        m = self.m
        c = self.mm.c
        m.pt_peak = c.pt_peak
        m.tracking_faults = c.tracking_faults
        m.faults = c.faults
        m.duplicates += self.duplicates
        m.walked_per_collect = self._walked_total / max(m.collects, 1)
        d = self.design
        if isinstance(d, D.WriteRing):
            m.ring_overflows = d.ring.overflows
        ctxs = [o for o in self.kernel._fds.values() if hasattr(o, "notifications")]
        m.notifications = sum(x.notifications for x in ctxs)
        if d is not None and d.sync:
            diff = 0
            for t in self.tracked:
                for k, ch in t.chunks.items():
                    cur = self.mm.content(*t.bounds(k))
                    snap = np.where(ch.copied, ch.copy, cur)
                    diff += int((snap != ch.arm).sum())
            m.snapshot_differs = diff
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


def run_trace(trace: Trace | Iterable[dict[str, Any]], design: str | None, profile: Profile,
              workload: str = "") -> Metrics:
    """Replay ``trace`` under ``design`` (None: untracked) and return its metrics."""
    cls = D.get(design) if design else None
    dsg = cls() if cls else None
    if dsg is not None:
        why = dsg.unavailable(profile)
        if why:
            return Metrics(dsg.name, workload, profile.name, available=False, reason=why)
    t0 = time.perf_counter()
    r = Runner(dsg, profile, workload)
    ops = trace.ops if isinstance(trace, Trace) else trace
    for op in ops:
        try:
            r.apply(op)
        except ModelError as exc:
            raise errors.WriteWatchError(
                f"op {r._op_index + 1} ({_op_text(op)}) failed under {r.m.design}: {exc}",
                hint="the trace does something the modelled program could not") from exc
    if dsg is not None:
        dsg.close()
    m = r.finish()
    m.ops = len(r.ops)
    m.seconds = time.perf_counter() - t0
    return m


def compare(trace: Trace, designs: Iterable[str], profile: Profile,
            workload: str = "") -> list[Metrics]:
    """Every design on one trace; ``pt_extra`` against the same trace untracked."""
    base = run_trace(trace, None, profile, workload)
    out = []
    for name in designs:
        m = run_trace(trace, name, profile, workload)
        if m.available:
            m.pt_extra = m.pt_peak - base.pt_peak
        out.append(m)
    return out


__all__ = ["FalseNegative", "Metrics", "Runner", "compare", "run_trace"]

_ = PAGE
