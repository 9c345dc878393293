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


@dataclass
class _Tracked:
    start: int
    end: int
    baseline: np.ndarray  #: content at the last collect
    replica: np.ndarray
    arm: np.ndarray  #: content at arm time
    touched: np.ndarray  #: bool: pages an op may have changed since the last collect
    wrote: np.ndarray  #: bool: pages written since the last collect
    copied: np.ndarray  #: bool: live snapshot copied this page
    copy: np.ndarray
    notified: np.ndarray  #: bool: notified in this interval

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT


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
        self._op_index = 0
        self.mm.observer = self._observe
        if design is not None:
            design.setup(self)

    # -- ground truth --------------------------------------------------------------------------
    def _observe(self, what: str, start: int, end: int) -> None:
        hit = False
        for t in self.tracked:
            lo, hi = max(t.start, start), min(t.end, end)
            if lo < hi:
                a, b = (lo - t.start) >> PAGE_SHIFT, (hi - t.start) >> PAGE_SHIFT
                t.touched[a:b] = True
                if what == "write":
                    t.wrote[a:b] = True
                hit = True
        if hit:
            self.log.append((start, end, self._op_index))

    def notify(self, addr: int, seen: int) -> None:
        """A synchronous design was notified of a write to ``addr`` (content ``seen``)."""
        for t in self.tracked:
            if t.start <= addr < t.end:
                p = (addr - t.start) >> PAGE_SHIFT
                if t.notified[p]:
                    self.duplicates += 1
                t.notified[p] = True
                if not t.copied[p]:
                    t.copied[p] = True
                    t.copy[p] = seen

    def _content_at(self, t: _Tracked, pages: np.ndarray) -> np.ndarray:
        """Content of the given page indices of ``t``, computed per 2 MiB chunk."""
        out = np.empty(len(pages), np.int64)
        if not len(pages):
            return out
        addrs = t.start + (pages.astype(np.int64) << PAGE_SHIFT)
        keys = addrs >> PMD_SHIFT
        for k in np.unique(keys).tolist():
            sel = keys == k
            lo = max(t.start, k << PMD_SHIFT)
            hi = min(t.end, (k + 1) << PMD_SHIFT)
            c = self.mm.content(lo, hi)
            out[sel] = c[(addrs[sel] - lo) >> PAGE_SHIFT]
        return out

    # -- ops -----------------------------------------------------------------------------------
    def track(self, start: int, end: int) -> None:
        c = self.mm.content(start, end)
        n = (end - start) >> PAGE_SHIFT
        t = _Tracked(start, end, c.copy(), c.copy(), c.copy(), np.zeros(n, bool),
                     np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, np.int64),
                     np.zeros(n, bool))
        self.tracked.append(t)
        if self.design is not None:
            self.design.arm(start, end)
        self._walked = self.kernel.entries_walked

    def collect(self) -> None:
        self.m.collects += 1
        reported_ranges = self.design.collect() if self.design is not None else \
            np.empty((0, 2), np.uint64)
        walked = self.kernel.entries_walked - self._walked
        self._walked_total = getattr(self, "_walked_total", 0) + walked
        for t in self.tracked:
            rep = np.zeros(t.npages, bool)
            for s, e in np.asarray(reported_ranges, np.uint64).reshape(-1, 2).tolist():
                lo, hi = max(s, t.start), min(e, t.end)
                if lo < hi:
                    rep[(lo - t.start) >> PAGE_SHIFT:(hi - t.start) >> PAGE_SHIFT] = True
            look = np.flatnonzero(t.touched | rep | (t.replica != t.baseline))
            cur = self._content_at(t, look)
            changed = cur != t.baseline[look]
            wrote = t.wrote[look]
            reported = rep[look]
            self.m.reported += int(rep.sum())
            self.m.pages_written += int((changed & wrote).sum())
            self.m.changed_otherwise += int((changed & ~wrote).sum())
            self.m.false_positives += int((reported & ~changed).sum())
            fn = changed & ~reported
            self.m.false_negatives += int(fn.sum())
            for p in look[fn][:max(0, MAX_EXAMPLES - len(self.m.fn_examples))].tolist():
                addr = t.start + (p << PAGE_SHIFT)
                ops = [self.ops[i] for s, e, i in self.log if s <= addr < e]
                self.m.fn_examples.append(
                    FalseNegative(addr, self.m.collects, ops).describe())
            # incremental replica: copy the reported pages
            t.replica[look[reported]] = cur[reported]
            diverged = int((t.replica[look] != cur).sum())
            self.m.replica_diverged = max(self.m.replica_diverged, diverged)
            t.baseline[look] = cur
            t.touched[:] = False
            t.wrote[:] = False
            t.notified[:] = False
        self.log.clear()
        self._walked = self.kernel.entries_walked

    def apply(self, op: dict[str, Any]) -> None:
        mm = self.mm
        name = op["op"]
        self.ops.append(op)
        self._op_index = len(self.ops) - 1
        if name == "write":
            tids = tuple(op.get("tids") or (op.get("tid", 0),))
            mm.write(op["addr"], op["len"], tids)
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
        if mm.c.pt_peak > self.m.pt_peak:
            self.m.pt_peak = mm.c.pt_peak
        if len(mm.vmas) > self.m.vmas_peak:
            self.m.vmas_peak = len(mm.vmas)

    def _maps(self, op: dict[str, Any]) -> None:
        """A recorded mapping snapshot: unmap what vanished, map and track what appeared."""
        want = {(int(s), int(e)): (kind if kind in ("anon", "shmem", "file") else "file")
                for s, e, _perms, kind in op["maps"]}
        have = {(v.start, v.end) for v in self.mm.vmas}
        for s, e in sorted(have - set(want)):
            if not any(s0 <= s and e <= e0 for s0, e0 in want):
                self.mm.munmap(s, e - s)
        for (s, e), kind in sorted(want.items()):
            if not self.mm.vmas_in(s, e):
                self.mm.mmap(s, e - s, kind, kind == "shmem")
                self.track(s, e)

    def finish(self) -> Metrics:
        m = self.m
        c = self.mm.c
        m.tracking_faults = c.tracking_faults
        m.faults = c.faults
        m.duplicates += self.duplicates
        m.walked_per_collect = getattr(self, "_walked_total", 0) / max(m.collects, 1)
        d = self.design
        if isinstance(d, D.WriteRing):
            m.ring_overflows = d.ring.overflows
        ctxs = [o for o in self.kernel._fds.values() if hasattr(o, "notifications")]
        m.notifications = sum(x.notifications for x in ctxs)
        if d is not None and d.sync:
            diff = 0
            for t in self.tracked:
                cur = self.mm.content(t.start, t.end)
                snap = np.where(t.copied, t.copy, cur)
                diff += int((snap != t.arm).sum())
            m.snapshot_differs = diff
        return m


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
