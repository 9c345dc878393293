"""Replay a trace under a design and measure it against the model's ground truth
(:mod:`.truth`).

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

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import numpy as np

from .. import errors
from ..model.kernel import ModelKernel
from ..model.mm import Mm
from ..model.profiles import Profile
from ..model.pte import PAGE, PMD_SHIFT, PT_PAGE_BYTES
from ..model.space import ModelError
from ..model.trace import Trace
from . import costs as C
from . import designs as D
from .metrics import CollectSample, Metrics
from .truth import MAX_EXAMPLES, FalseNegative, Truth, Verdict, op_text

#: ops that may change memory content in their range
_CHANGES = frozenset({"write", "madvise", "munmap", "mmap", "mremap", "reclaim"})
#: single-page accesses gathered before a batch is applied
_BATCH = 8192


_NO_PAIRS = np.empty((0, 2), np.int64)
#: reported addresses are clipped here (user space ends far below: 2**47, 2**56 with LA57)
_TOP = (1 << 63) - PAGE


def _reported(design: D.Design) -> np.ndarray:
    """What a design's collect returned, checked: a (k, 2) array of page-aligned [start,
    end) integer address ranges (docs/model.md, "Adding a design"); ends past 2**63 are
    clipped (a design may report "everything")."""
    got = design.collect()
    name = getattr(design, "name", type(design).__name__)
    hint = "return a (k, 2) integer array of page-aligned [start, end) address ranges"
    try:
        a = np.asarray(got)
    except (ValueError, TypeError) as exc:
        raise errors.WriteWatchError(f"design {name}: collect() returned {type(got).__name__}"
                                     f" ({exc})", hint=hint) from None
    if a.size == 0:
        return np.empty((0, 2), np.uint64)
    if a.dtype.kind not in "iu" or a.ndim != 2 or a.shape[1] != 2:
        raise errors.WriteWatchError(f"design {name}: collect() returned an array of shape "
                                     f"{a.shape} and dtype {a.dtype}", hint=hint)
    if a.dtype.kind == "i" and bool((a < 0).any()):
        raise errors.WriteWatchError(f"design {name}: collect() returned a negative address",
                                     hint=hint)
    out: np.ndarray = np.minimum(a.astype(np.uint64), np.uint64(_TOP))
    if bool((out % np.uint64(PAGE)).any()) or bool((out[:, 1] <= out[:, 0]).any()):
        raise errors.WriteWatchError(f"design {name}: collect() returned ranges that are not "
                                     "page aligned or not start < end", hint=hint)
    return out


class _Batch:
    """Single-page reads and writes of the root process gathered per page table and applied
    together (the same result as one by one). At the flush the reads go first, then the
    writes: a read of a page written earlier in the batch is a no-op and is dropped, and a
    read that comes after a write to the same page table first applies that table's accesses
    when the table does not exist or is a THP (where the two interact). Accesses to
    different page tables do not interact, so an op confined to one or two tables needs only
    theirs applied before it (:meth:`make_room`)."""

    def __init__(self, mm: Mm, truth: Truth) -> None:
        self.mm = mm
        self.truth = truth
        #: page table -> the addresses written, in order, each followed by its op's index
        self.writes: dict[int, list[int]] = {}
        self.written: set[int] = set()
        self.reads: dict[int, list[int]] = {}  #: page table -> addresses read
        self.n = 0
        #: (address, op index) of the writes being applied
        self.applying = _NO_PAIRS

    def add(self, op: dict[str, Any], name: str) -> bool:
        """Gather a single-page access of the root process; False when the op must be
        applied on its own."""
        if op.get("len") != PAGE or (len(op) > 3 and (
                "tids" in op or op.get("proc") or op.get("tid"))):
            return False
        a = op["addr"]
        k = a >> PMD_SHIFT
        if name == "write":
            w = self.writes.get(k)
            if w is None:
                w = self.writes[k] = []
            w.append(a)
            w.append(self.truth.n_ops - 1)
            self.written.add(a)
        elif a in self.written:
            return True
        else:
            if k in self.writes:
                t = self.mm.pt.get(k)
                if t is None or t.huge:
                    self.flush((k,))
            self.reads.setdefault(k, []).append(a)
        self.n += 1
        if self.n >= _BATCH:
            self.flush()
        return True

    def blame(self, exc: errors.WriteWatchError) -> int | None:
        """The index of the op that gathered the write ``exc`` (a fault at ``exc.start``)
        failed on, if it is one of the gathered writes; None otherwise (a read, or not a
        gathered access)."""
        if exc.start is None:
            return None
        hit = np.flatnonzero(self.applying[:, 0] == exc.start)
        return int(self.applying[hit[0], 1]) if len(hit) else None

    def make_room(self, op: dict[str, Any], name: str) -> bool:
        """Let a discard or mprotect of the root's memory run before the gathered accesses:
        those in its page tables that it can change are applied first. It must lie within
        two tables and not cover a whole PMD (MADV_DONTNEED could free a table, a VMA change
        reach further). False: everything must be applied first."""
        if op.get("proc") or not (
                name == "mprotect" or
                (name == "madvise" and op["advice"] in ("DONTNEED", "FREE"))):
            return False
        a, ln = op["addr"], op["len"]
        lo, hi = a >> PMD_SHIFT, (a + ln - 1) >> PMD_SHIFT
        if ln >= 1 << PMD_SHIFT or hi > lo + 1:
            return False
        busy = [k for k in {lo, hi} if self._meets(k, a, a + ln)]
        if busy:
            self.flush(busy)
        return True

    def _meets(self, k: int, start: int, end: int) -> bool:
        """Whether an op on [start, end) within table ``k`` can change what the accesses
        gathered there do. In an existing PTE table, a fault of one page decides on that
        page's PTE alone when all of the table is private anonymous memory (the model has no
        anonymous mTHP; fault-around is for file and shmem read faults), and the VMAs split
        or merged by an mprotect keep the flags of the pages outside it: only accesses
        inside [start, end) meet the op. A missing table or a THP is decided for the whole
        PMD."""
        w = self.writes.get(k)
        r = self.reads.get(k)
        if w is None and r is None:
            return False
        t = self.mm.pt.get(k)
        if t is None or t.huge or not all(
                v.anonymous for v in self.mm.vmas_in(k << PMD_SHIFT, (k + 1) << PMD_SHIFT)):
            return True
        return any(start <= x < end for x in chain(w[::2] if w else (), r or ()))

    def flush(self, tables: Iterable[int] | None = None) -> None:
        """Apply the gathered accesses (those of ``tables`` only, if given)."""
        if tables is None:
            reads, writes = self.reads, self.writes
            self.reads, self.writes = {}, {}
            self.written.clear()
            self.n = 0
        else:
            reads = {k: r for k in tables if (r := self.reads.pop(k, None))}
            writes = {k: w for k in tables if (w := self.writes.pop(k, None))}
            for w in writes.values():
                self.written.difference_update(w[::2])
            self.n -= sum(map(len, reads.values())) + sum(map(len, writes.values())) // 2
        if reads:
            self.mm.read_pages(np.fromiter(chain.from_iterable(reads.values()), np.int64))
        if not writes:
            return
        pairs = np.fromiter(chain.from_iterable(writes.values()), np.int64).reshape(-1, 2)
        addrs, opi = pairs[:, 0].copy(), pairs[:, 1]
        hit = self.truth.materialise_pages(addrs)
        self.mm.observer = None  # the truth is told below, for the whole batch at once
        self.applying = pairs  # for blame(), when they fail
        try:
            self.mm.write_pages(addrs)
        finally:
            self.mm.observer = self.truth.observe
        self.applying = _NO_PAIRS
        if hit.any():
            self.truth.wrote_pages(addrs, opi, hit)


class Runner:
    """One design replaying one trace on a fresh model machine (a design's
    :class:`~.designs.base.Host`)."""

    def __init__(self, design: D.Design | None, profile: Profile, workload: str = "",
                 costs: C.Costs | None = None, batch: bool = True) -> None:
        self.design = design
        self.name = design.name if design else "untracked"
        self.workload = workload
        self.requested = profile  #: the profile asked for (the design may adjust it)
        self.profile = design.profile(profile) if design else profile
        self.costs = costs or C.DEFAULT
        self.mm = Mm(self.profile)
        self.kernel = ModelKernel(self.mm)
        self.truth = Truth(self.mm)
        self.mm.observer = self.truth.observe
        #: apply runs of single-page accesses in vectorised batches (None: one by one)
        self.batch = _Batch(self.mm, self.truth) if batch else None
        self.procs: dict[int, Mm] = {0: self.mm}  #: trace process numbers
        self._forks = 0
        self.verdicts: list[Verdict] = []
        self.series: list[CollectSample] = []
        self.vmas_peak = 0
        self._walked = 0
        self._walked_total = 0
        self._last = self.mm.c.as_dict()
        if design is not None:
            design.setup(self)

    @property
    def n_ops(self) -> int:
        return self.truth.n_ops

    def notify(self, addr: int, seen: int) -> None:
        """A synchronous design was notified of a write to ``addr`` (content ``seen``)."""
        self.truth.notify(addr, seen)

    def notify_pages(self, addrs: np.ndarray, seen: np.ndarray) -> None:
        """:meth:`notify` for pages of one page table at once."""
        self.truth.notify_pages(addrs, seen)

    def _flush(self) -> None:
        if self.batch is not None:
            self.batch.flush()

    # -- tracking ------------------------------------------------------------------------------
    def track(self, start: int, end: int) -> None:
        self.truth.track(start, end)
        if self.design is not None:
            self.design.arm(start, end)
        self._walked = self.kernel.entries_walked
        self._last = self.mm.c.as_dict()

    def collect(self) -> None:
        self._flush()
        reported = _reported(self.design) if self.design is not None else \
            np.empty((0, 2), np.uint64)
        walked = self.kernel.entries_walked - self._walked
        self._walked_total += walked
        room = MAX_EXAMPLES - sum(len(v.examples) for v in self.verdicts)
        v = self.truth.judge(reported, len(self.verdicts) + 1, room)
        self.verdicts.append(v)
        self._sample(v, walked)
        self._walked = self.kernel.entries_walked

    def _sample(self, v: Verdict, walked: int) -> None:
        now = self.mm.c.as_dict()
        d = {k: now[k] - self._last.get(k, 0) for k in now}
        self._last = now
        self.series.append(CollectSample(
            index=len(self.verdicts), ops=self.n_ops, changed=v.written + v.changed_otherwise,
            reported=v.reported, false_positives=v.false_positives,
            false_negatives=v.false_negatives, walked=walked, faults=d["faults"],
            tracking_faults=d["tracking_faults"], tlb_flushes=d["tlb_flushes"],
            pt_bytes=now["pt_pages"] * PT_PAGE_BYTES,
            modelled_us=self.costs.collect_us(walked, d)))

    # -- ops -----------------------------------------------------------------------------------
    def apply(self, op: dict[str, Any]) -> None:
        name = op["op"]
        truth = self.truth
        truth.ops.append(op)  # Truth.record, inline: this runs once per op
        truth.n_ops += 1
        b = self.batch
        if b is not None:
            if (name == "write" or name == "read") and b.add(op, name):
                return
            if not b.make_room(op, name):
                b.flush()
        if name == "write" and not op.get("proc"):
            a, ln = op["addr"], op["len"]
            if self.truth.tracked:
                self.truth.materialise(a, a + ln)
            tids = op.get("tids")
            self.mm.write(a, ln, tuple(tids) if tids else (op.get("tid", 0),))
            return
        self._apply_other(op, name)
        self.vmas_peak = max(self.vmas_peak, len(self.mm.vmas))

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
        truth = self.truth
        if truth.tracked and name in _CHANGES and op.get("addr") is not None:
            a = op["addr"]
            truth.materialise(a, a + max(op["len"], op.get("new_len") or 0))
            if name == "mremap" and op.get("new_addr") is not None:
                truth.materialise(op["new_addr"], op["new_addr"] + op["new_len"])
        elif truth.tracked and name == "written":
            for s, e in op["ranges"]:
                truth.materialise(int(s), int(e))
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
            shared = self.truth.shared_in_root(mm, a, a + op["len"])
            for lo, hi in shared:
                self.truth.materialise(lo, hi)
            self._syscall(mm, op, name)
            for lo, hi in shared:
                self.truth.touch(lo, hi, name == "write", self.n_ops - 1)
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
                for ts, te in _subtract([(s, e)], [(t.start, t.end)
                                                   for t in self.truth.tracked]):
                    self.track(ts, te)

    def finish(self) -> Metrics:
        self._flush()
        c = self.mm.c
        counts = c.as_dict()
        events = {k: v for k, v in counts.items() if k not in ("pt_pages", "pt_peak")}
        events["entries_walked"] = self.kernel.entries_walked
        vs = self.verdicts
        d = self.design
        ring = getattr(d, "ring", None)
        return Metrics(
            self.name, self.workload, self.requested.name, ops=self.n_ops, collects=len(vs),
            pages_written=sum(v.written for v in vs),
            changed_otherwise=sum(v.changed_otherwise for v in vs),
            reported=sum(v.reported for v in vs),
            false_positives=sum(v.false_positives for v in vs),
            false_negatives=sum(v.false_negatives for v in vs),
            duplicates=self.truth.duplicates + (d.duplicates if d else 0),
            notifications=sum(x.notifications for x in self.kernel.contexts()),
            pt_peak=c.pt_peak, pt_peak_bytes=c.pt_peak * PT_PAGE_BYTES,
            tracking_faults=c.tracking_faults, faults=c.faults,
            walked_per_collect=self._walked_total / max(len(vs), 1),
            ring_overflows=ring.overflows if ring is not None else 0,
            vmas_peak=self.vmas_peak,
            replica_diverged=max((v.replica_differs for v in vs), default=0),
            replica_last=vs[-1].replica_differs if vs else 0,
            snapshot_differs=self.truth.snapshot_differs() if d is not None and d.sync
            else None,
            events=events,
            collect_us=float(np.mean([s.modelled_us for s in self.series]))
            if self.series else 0.0,
            fault_us=self.costs.fault_us(counts),
            fn_examples=tuple(e for v in vs for e in v.examples), series=tuple(self.series))


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
    name = dsg.name if dsg is not None else "untracked"
    with _blame(name, "setting the design up", None):
        r = Runner(dsg, profile, workload, costs, batch)
    ops: Iterator[dict[str, Any]] = iter(trace.ops if isinstance(trace, Trace) else trace)
    apply = r.apply
    for op in ops:
        with _blame(name, f"op {r.n_ops} ({op_text(op)})", r):
            apply(op)
    with _blame(name, "the last accesses of the trace", r):
        m = r.finish()
    if dsg is not None:
        dsg.close()
    return dataclasses.replace(m, seconds=time.perf_counter() - t0)


@contextlib.contextmanager
def _blame(name: str, what: str, r: Runner | None) -> Iterator[None]:
    """Errors of a replay step as WriteWatchError naming the step and the design. Single-page
    accesses are applied in batches, at a later op: an access the program could not make
    is named as such, with the op that gathered it when it was a write."""
    try:
        yield
    except ModelError as exc:
        op = r.batch.blame(exc) if r is not None and r.batch is not None else None
        where = f"op {op} (a single-page access, applied in a batch at {what})" \
            if op is not None else what
        raise errors.WriteWatchError(
            f"{where} failed under {name}: {exc}",
            hint="the trace does something the modelled program could not") from exc
    except errors.WriteWatchError:
        raise
    except Exception as exc:  # a design's own code (or the model) failed
        raise errors.WriteWatchError(
            f"{what} failed under {name}: {type(exc).__name__}: {exc}",
            hint="a malformed op, or a bug in the design or the model: `writewatch --debug` "
                 "shows where") \
            from exc


def compare(trace: Trace | Any, designs: Iterable[str | type[D.Design]], profile: Profile,
            workload: str = "", costs: C.Costs | None = None) -> list[Metrics]:
    """Every design on one trace; ``pt_extra`` against the same trace untracked. ``trace``
    is a :class:`Trace` or a re-iterable source (each design replays it from the start)."""
    base = run_trace(trace, None, profile, workload, costs)
    out = []
    for d in designs:
        m = run_trace(trace, d, profile, workload, costs)
        if m.available:
            extra = m.pt_peak - base.pt_peak
            m = dataclasses.replace(m, pt_extra=extra, pt_extra_bytes=extra * PT_PAGE_BYTES)
        out.append(m)
    return out


__all__ = ["CollectSample", "FalseNegative", "Metrics", "Runner", "compare", "run_trace"]
