"""The concurrency explorer: every interleaving of the fault path and the tracker, per design.

For a small scenario (a few pages, two or three threads: writers, a reclaim thread, and the
tracker - a collector for the designs that collect, the fault handler for the synchronous
ones), :func:`explore` runs every interleaving of the threads' atomic steps and decides, with
ground truth the explorer keeps itself, whether the design lost a write. The steps are those
of the kernel's fault path and of the tracker:

* writer: the store instruction (it lands when the PTE is present, writable and not
  uffd-wp), fault entry with the lockless PTE read (``handle_pte_fault``: ``vmf->orig_pte``),
  page allocation or page-cache lookup (done before the PTL is taken), the PTE update under
  the PTL with the ``pte_same`` re-check (a changed PTE backs the fault off and the store
  re-executes), ``handle_userfault`` (queue the message and sleep, unless
  ``userfaultfd_must_wait()`` finds the protection already gone), read faults, MADV_DONTNEED;
* reclaim (``kswapd``): shmem reclaim zaps the PTE and keeps the page in the cache
  (``try_to_unmap``; a uffd-wp PTE becomes a marker where markers are in use);
* handler (synchronous designs): read the message, copy the page into the live snapshot
  (copy-before-write), ``UFFDIO_WRITEPROTECT`` mode=0, which wakes the faulting threads;
* tracker (collecting designs): PAGEMAP_SCAN get+WP, atomic per page under the PTL; or
  soft-dirty's pagemap read per page followed by ``clear_refs`` 4 (not atomic together); or
  a write-ring drain followed by re-protection; then the copy of each reported page.

After the last step a final collect runs with every thread quiescent.

Loss, decided against ground truth:

* collecting designs keep an incremental replica (the arm-time content, then each reported
  page copied): after the final collect it must equal memory. A page whose content differs
  is a ``lost write`` (or a ``lost discard``, when it now holds the zeros MADV_DONTNEED
  left);
* synchronous designs keep a live snapshot: the handler copies each notified page before
  unprotecting it. The snapshot must equal memory at arm time: a copy taken after new
  content landed is a ``late copy`` (Peter Xu's data loss), and a page that changed without
  ever being notified is ``unnotified``.

Duplicates: a notification for a page the handler had already copied and unprotected, or a
collect reporting a page whose content equals the replica (a false positive).

The search is exhaustive: a depth-first search over interleavings, memoised on the complete
state (PTEs, page contents, thread program counters, message queue, replica or snapshot,
ring), so that schedules reaching the same state share the count of their continuations.
Schedules are counted, not sampled.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _uapi as U
from ..errors import WriteWatchError

if TYPE_CHECKING:
    from .designs.base import Design as DesignClass

__all__ = [
    "DESIGNS",
    "SCENARIOS",
    "Design",
    "ExploreResult",
    "RaceExplorerError",
    "Scenario",
    "Step",
    "explore",
    "format_schedule",
    "sequential",
]


class RaceExplorerError(WriteWatchError, ValueError):
    """An unknown design or scenario name, or a malformed scenario."""


class Kind:
    """What one page's entry holds, in the explorer (the PTE's kind)."""

    NONE = 0  #: pte_none
    MARKER = 1  #: a marker: PTE_MARKER_UFFD_WP with the bit, a design's discard marker without
    ZERO_PAGE = 2  #: the zero page mapped
    PAGE = 3  #: a page mapped


NONE, MARKER, ZERO, PAGE = Kind.NONE, Kind.MARKER, Kind.ZERO_PAGE, Kind.PAGE
_KIND = {NONE: "none", MARKER: "marker", ZERO: "zero page", PAGE: "page"}

# Content values: 0 is a zero-filled page; ARM_BASE + p the data page p held before arming;
# a store by writer w's op i writes w * 100 + i + 1, so every store's data is distinct.
ARM_BASE = 1000

# A PTE: (kind, uffd-wp bit (set on Linux's markers; clear on a design's discard marker,
# which says "changed"), writable, soft-dirty, content).
# The content of NONE / MARKER is what a fault would map: 0 for anon, the page-cache page
# for shmem (the cache outlives the PTE).
Pte = tuple[int, bool, bool, bool, int]


class Step(NamedTuple):
    """One atomic step of one thread."""

    thread: str
    action: str


@dataclass(frozen=True)
class Design:
    """A write-tracking design as the explorer sees it (one policy per field).

    The built-in ones are derived from the design registry (:meth:`of`): the fields are the
    registry class's kernel rules (:class:`writewatch.model.WpRules`) and its ``explore``
    tracker, so the replay and the explorer run one definition."""

    name: str
    summary: str
    sync: bool = False            # writer blocks, the handler copies before unprotecting
    uffd: bool = False            # a uffd-wp design as the kernel implements it
    markers: bool = False         # uffd-wp markers on anon too (WP_UNPOPULATED, 6.4+)
    none_protected: bool = False  # pte_none counts as protected / clean (no markers)
    notify_after_map: bool = False  # sync write fault on pte_none maps first, notifies after
    discard_marker: bool = False  # a discard (MADV_DONTNEED) leaves a marker: "changed"
    collect: str = ""             # "scan" (get+WP), "softdirty", "ring", "" (sync handler)

    @classmethod
    def of(cls, d: type[DesignClass]) -> Design:
        """The explorer's view of a registry design (``d.explore`` must not be None)."""
        if d.explore is None:
            raise RaceExplorerError(f"design {d.name!r} cannot be explored",
                                    hint=d.explore_why or "its class sets explore = None")
        r = d.rules
        unpop = bool(d.features & (U.UffdFeature.WP_UNPOPULATED | U.UffdFeature.WP_ASYNC))
        anon = (unpop if r.anon_markers is None else r.anon_markers) if r else False
        return cls(d.name, d.title, sync=d.sync, uffd=bool(r and r.linux),
                   markers=bool(r and r.markers and anon),
                   none_protected=bool(r and r.none_protected),
                   notify_after_map=bool(r and r.notify_after_map),
                   discard_marker=bool(r and r.discard_marker),
                   collect="" if d.explore == "handler" else d.explore)


def _registry() -> dict[str, Design]:
    from .designs import DESIGNS as REG
    return {n: Design.of(c) for n, c in REG.items() if c.explore is not None}


DESIGNS: dict[str, Design] = _registry()


Op = tuple[str, int]  # ("write" | "read" | "dontneed" | "reclaim", page)


@dataclass(frozen=True)
class Scenario:
    """A small concurrent program: initial pages, threads, and concurrent collects."""

    name: str
    summary: str
    memory: str                                  # "anon" or "shmem"
    pages: tuple[str, ...]                       # per page: "none" or "mapped"
    threads: tuple[tuple[str, tuple[Op, ...]], ...]
    collects: int = 1                            # collects the tracker runs concurrently
    expect: str = ""                             # what the scenario is there to show

    def __post_init__(self) -> None:
        if self.memory not in ("anon", "shmem"):
            raise RaceExplorerError(f"scenario {self.name!r}: memory {self.memory!r}",
                                    hint="use 'anon' or 'shmem'")
        if any(k not in ("none", "mapped") for k in self.pages):
            raise RaceExplorerError(f"scenario {self.name!r}: page kinds {self.pages}",
                                    hint="each page is 'none' or 'mapped'")
        for tname, prog in self.threads:
            for op, p in prog:
                if op not in ("write", "read", "dontneed", "reclaim"):
                    raise RaceExplorerError(f"scenario {self.name!r}: op {op!r} in {tname}",
                                            hint="ops are write, read, dontneed, reclaim")
                if not 0 <= p < len(self.pages):
                    raise RaceExplorerError(f"scenario {self.name!r}: page {p} in {tname}",
                                            hint=f"pages are 0..{len(self.pages) - 1}")
                if op == "reclaim" and self.memory != "shmem":
                    raise RaceExplorerError(f"scenario {self.name!r}: reclaim on anon",
                                            hint="reclaim keeps the page in the shmem cache; "
                                                 "use it on shmem scenarios")


def _w(p: int) -> Op:
    return ("write", p)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("shmem-zapped-2w",
             "shmem page in the page cache, PTE zapped before arming; two threads write it",
             "shmem", ("none",), (("W1", (_w(0),)), ("W2", (_w(0),)))),
    Scenario("shmem-reclaim",
             "shmem page mapped and armed; W1 writes it twice, reclaim zaps the PTE, W2 "
             "writes it", "shmem", ("mapped",),
             (("W1", (_w(0), _w(0))), ("kswapd", (("reclaim", 0),)), ("W2", (_w(0),)))),
    Scenario("anon-unpopulated-2w",
             "anon page never touched; two threads write it", "anon", ("none",),
             (("W1", (_w(0),)), ("W2", (_w(0),)))),
    Scenario("anon-read-write",
             "anon page never touched; W1 reads it (zero page), W2 writes it", "anon",
             ("none",), (("W1", (("read", 0),)), ("W2", (_w(0),)))),
    Scenario("anon-2w-2p",
             "two anon pages, one mapped and one not; two threads write both in opposite "
             "orders", "anon", ("mapped", "none"),
             (("W1", (_w(0), _w(1))), ("W2", (_w(1), _w(0))))),
    Scenario("anon-collect",
             "two mapped anon pages; W1 writes p0, p1, p0 while the tracker collects twice",
             "anon", ("mapped", "mapped"), (("W1", (_w(0), _w(1), _w(0))),), collects=2),
    Scenario("anon-dontneed",
             "mapped anon page; W1 writes it, MADV_DONTNEED, writes it again", "anon",
             ("mapped",), (("W1", (_w(0), ("dontneed", 0), _w(0))),)),
    Scenario("anon-dontneed-last",
             "mapped anon page; W1 writes it, then MADV_DONTNEED (the last change is the "
             "discard)", "anon", ("mapped",), (("W1", (_w(0), ("dontneed", 0))),)),
    Scenario("shmem-mixed",
             "two shmem pages (p1 zapped before arming); W1 writes p0, p1, p0, W2 writes "
             "p1, p0, reclaim zaps p0, the tracker collects", "shmem",
             ("mapped", "none"), (("W1", (_w(0), _w(1), _w(0))), ("W2", (_w(1), _w(0))),
                                  ("kswapd", (("reclaim", 0),)))),
    Scenario("shmem-dontneed",
             "mapped shmem page; W1 writes it, MADV_DONTNEED (cache kept), writes it again",
             "shmem", ("mapped",), (("W1", (_w(0), ("dontneed", 0), _w(0))),)),
)}


@dataclass(frozen=True)
class ExploreResult:
    """What :func:`explore` found for one design on one scenario.

    ``losing`` holds up to ``limit`` losing schedules (depth-first order), each a tuple of
    :class:`Step`; ``reasons[i]`` says what schedule ``losing[i]`` lost. ``losing_count`` is
    exact. ``duplicates`` sums duplicate notifications / false-positive reports over all
    schedules; ``duplicate_schedules`` counts the schedules with at least one. ``example_dup``
    is one schedule with a duplicate, when there is one. ``shortest`` is a losing schedule
    with the fewest steps (empty when nothing is lost), ``shortest_reasons`` what it lost.
    ``loss_kinds`` names every kind of
    loss in any losing schedule: ``late copy`` (the handler copied a page after new content
    landed), ``unnotified`` (a page changed without a notification), ``lost write`` and
    ``lost discard`` (the replica misses a store, or the zeros MADV_DONTNEED left).
    """

    design: str
    scenario: str
    schedules: int
    states: int
    losing_count: int
    losing: tuple[tuple[Step, ...], ...]
    reasons: tuple[tuple[str, ...], ...]
    duplicates: int
    duplicate_schedules: int
    deadlocks: int
    threads: tuple[str, ...]
    loss_kinds: tuple[str, ...]
    shortest: tuple[Step, ...]
    shortest_reasons: tuple[str, ...]
    seconds: float = field(compare=False)
    example_dup: tuple[Step, ...] = ()

    @property
    def loses(self) -> bool:
        return self.losing_count > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design, "scenario": self.scenario, "schedules": self.schedules,
            "states": self.states, "losing_schedules": self.losing_count,
            "duplicates": self.duplicates, "duplicate_schedules": self.duplicate_schedules,
            "deadlocks": self.deadlocks, "loss_kinds": list(self.loss_kinds),
            "seconds": round(self.seconds, 3),
            "shortest": ({"steps": [list(s) for s in self.shortest],
                          "lost": list(self.shortest_reasons)} if self.loses else None),
            "losing": [{"steps": [list(s) for s in sched], "lost": list(why)}
                       for sched, why in zip(self.losing, self.reasons, strict=True)],
        }


# Per-thread local state: (op index, pc, aux). State: (ptes, threads, queue, copies, ring).
Local = tuple[int, str, Any]
State = tuple[tuple[Pte, ...], tuple[Local, ...], tuple[int, ...], tuple[Any, ...],
              tuple[int, ...]]
Move = tuple[Step, State, str, int]  # step, next state, loss reason ("" = none), duplicates
# schedules, losing, dup schedules, dups, deadlocks, loss kinds in any losing completion,
# steps of the shortest completion, steps of the shortest losing completion (_INF: none)
Stats = tuple[int, int, int, int, int, frozenset[str], int, int]
_INF = 1 << 30


def _pte_desc(pte: Pte, softdirty: bool) -> str:
    kind, wp, wr, sd, _ = pte
    if kind == PAGE:
        if softdirty:
            return "page " + ("rw" if wr else "ro") + (" soft-dirty" if sd else "")
        return "page wp" if wp else "page"
    if kind == ZERO:
        return "zero page wp" if wp else "zero page"
    return _KIND[kind]


class _WriterStep:
    """One writer thread about to take a step: its state and the move constructors."""

    def __init__(self, ex: _Explorer, st: State, i: int) -> None:
        self.st = st
        self.ptes, self.threads, self.queue, self.copies, self.ring = st
        self.i = i
        self.op_idx, self.pc, self.aux = self.threads[i]
        self.name = ex.names[i]
        self.p = ex.progs[i][self.op_idx][1]
        self.pte = self.ptes[self.p]
        self.sdm = ex.d.collect == "softdirty"
        self.desc = _pte_desc(self.pte, self.sdm)

    def thr(self, idx: int, npc: str, naux: Any = None) -> tuple[Local, ...]:
        t = self.threads
        return (*t[:self.i], (idx, npc, naux), *t[self.i + 1:])

    def step(self, action: str, nptes: tuple[Pte, ...], nthreads: tuple[Local, ...],
             nqueue: tuple[int, ...] | None = None, nring: tuple[int, ...] | None = None,
             dup: int = 0) -> Move:
        q = self.queue if nqueue is None else nqueue
        r = self.ring if nring is None else nring
        return (Step(self.name, action), (nptes, nthreads, q, self.copies, r), "", dup)


class _Explorer:
    def __init__(self, design: Design, scen: Scenario) -> None:
        self.d = design
        self.s = scen
        self.shmem = scen.memory == "shmem"
        self.names = (*tuple(n for n, _ in scen.threads), "handler" if design.sync else "tracker")
        self.progs = tuple(prog for _, prog in scen.threads)
        self.nw = len(self.progs)
        self.npages = len(scen.pages)
        self.arm = tuple(ARM_BASE + p if (self.shmem or k == "mapped") else 0
                         for p, k in enumerate(scen.pages))
        self.memo: dict[State, Stats] = {}
        # userfaultfd_wp_use_markers(): every non-anon uffd-wp VMA, anon only with
        # WP_UNPOPULATED (mm/userfaultfd.c; kernel-interfaces.md 1.8).
        self.markers = design.uffd and (self.shmem or design.markers)

    # ---------------------------------------------------------------- initial state
    def initial(self) -> State:
        d = self.d
        ptes: list[Pte] = []
        for p, k in enumerate(self.s.pages):
            c = self.arm[p]
            if k == "mapped":
                if d.collect == "softdirty":      # clear_refs 4 write-protects, clears sd
                    ptes.append((PAGE, False, False, False, c))
                else:                             # UFFDIO_WRITEPROTECT sets the bit
                    ptes.append((PAGE, True, True, True, c))
            elif self.markers:                    # WP_UNPOPULATED / non-anon: marker
                ptes.append((MARKER, True, False, False, c))
            else:
                ptes.append((NONE, False, False, False, c))
        threads: list[Local] = [(0, "go", None) for _ in self.progs]
        if d.sync:
            threads.append((0, "idle", None))
            copies: tuple[Any, ...] = (None,) * self.npages       # live snapshot
        else:
            threads.append((0, "start", None))
            copies = self.arm                                     # incremental replica
        return (tuple(ptes), tuple(threads), (), copies, ())

    # ---------------------------------------------------------------- predicates
    def _protected(self, pte: Pte) -> bool:
        kind, wp = pte[0], pte[1]
        if kind in (PAGE, ZERO, MARKER):
            return wp
        return self.d.none_protected

    def _none_like(self, pte: Pte) -> bool:
        """pte_none, or a design's discard marker: a write fault maps a fresh page (and, with
        notify_after_map, notifies afterwards)."""
        return pte[0] == NONE or (pte[0] == MARKER and not pte[1])

    def _userfault(self, pte: Pte) -> bool:
        """Does a write fault on this PTE call handle_userfault before mapping?"""
        if not self.d.sync or pte[0] == MARKER:
            # A marker is resolved like pte_none (pte_marker_handle_uffd_wp() ->
            # do_pte_missing()); the new PTE inherits the protection, and the retried
            # store faults on that.
            return False
        if self._none_like(pte) and self.d.notify_after_map:
            return False
        return self._protected(pte)

    def _written(self, pte: Pte) -> bool:
        """Does the design's collect report this PTE (before the final replica check)?"""
        d = self.d
        kind, wp, _, sd, _ = pte
        if d.collect == "softdirty":
            return kind == PAGE and sd          # VM_SOFTDIRTY was cleared at arm
        if kind in (PAGE, ZERO, MARKER):
            return not wp  # a discard marker (no bit) says "changed"
        # PAGEMAP_SCAN WRITTEN fast path (and the generic path after the 2026 fix):
        # pte_none in a uffd-wp VMA reads written (kernel-interfaces.md 2.5).
        return kind == NONE and d.uffd

    def _wp(self, pte: Pte) -> Pte:
        kind, _, wr, sd, c = pte
        if kind in (PAGE, ZERO, MARKER):
            return (kind, True, wr, sd, c)
        if kind == NONE and self.markers:      # get+WP on a hole arms a marker
            return (MARKER, True, False, False, c)
        return pte

    def _zap(self, pte: Pte, discard: bool) -> Pte:
        """MADV_DONTNEED (discard=True) or shmem reclaim of one PTE."""
        d = self.d
        kind, wp = pte[0], pte[1]
        content = pte[4] if self.shmem else 0     # anon DONTNEED drops the page
        if d.uffd:
            # zap_install_uffd_wp_if_needed(): anon drops everything; file/shmem keeps
            # the protection as a marker (also on swap-out via try_to_unmap).
            keep = self.shmem and (kind == MARKER or wp)
        elif d.discard_marker and discard and kind != NONE:
            # the proposal's discard marker: "changed" on anon (the page became zeros); on
            # shmem, whose content stays, it keeps the entry's protection
            return (MARKER, self.shmem and wp, False, False, content)
        else:
            keep = False
        return (MARKER, True, False, False, content) if keep else (NONE, False, False,
                                                                   False, content)

    # ---------------------------------------------------------------- moves
    def moves(self, st: State) -> list[Move]:
        out: list[Move] = []
        for i in range(self.nw):
            m = self._writer(st, i)
            if m is not None:
                out.append(m)
        m = self._handler(st) if self.d.sync else self._tracker(st)
        if m is not None:
            out.append(m)
        return out

    def _set(self, tup: tuple[Any, ...], i: int, v: Any) -> tuple[Any, ...]:
        return (*tup[:i], v, *tup[i + 1:])

    def _writer(self, st: State, i: int) -> Move | None:
        threads = st[1]
        op_idx, pc, _ = threads[i]
        prog = self.progs[i]
        if op_idx >= len(prog) or pc == "wait":
            return None
        w = _WriterStep(self, st, i)
        op = prog[op_idx][0]
        if op in ("dontneed", "reclaim"):
            return self._zap_step(w, op)
        if op == "read":
            return self._read_step(w)
        return self._write_step(w)

    def _zap_step(self, w: _WriterStep, op: str) -> Move:
        p, pte = w.p, w.pte
        if op == "reclaim" and pte[0] != PAGE:
            return w.step(f"reclaim p{p}: nothing mapped", w.ptes, w.thr(w.op_idx + 1, "go"))
        zapped = self._zap(pte, op == "dontneed")
        what = ("madvise(MADV_DONTNEED) p{p}: zap" if op == "dontneed" else
                "reclaim p{p}: zap PTE, page stays in cache").format(p=p)
        return w.step(f"{what} -> {_pte_desc(zapped, w.sdm)}", self._set(w.ptes, p, zapped),
                      w.thr(w.op_idx + 1, "go"))

    def _read_step(self, w: _WriterStep) -> Move:
        p, pte, aux = w.p, w.pte, w.aux
        if w.pc == "go":
            if pte[0] in (PAGE, ZERO):
                return w.step(f"read p{p}", w.ptes, w.thr(w.op_idx + 1, "go"))
            return w.step(f"read fault on p{p} (pte: {w.desc})", w.ptes,
                          w.thr(w.op_idx, "ptl", pte))
        # pc == "ptl": map for read under the PTL
        if pte != aux:
            return w.step(f"PTL: p{p} changed ({w.desc}), back off", w.ptes,
                          w.thr(w.op_idx, "go"))
        wp = self._protected(aux) and not w.sdm
        if self.shmem:
            new: Pte = (PAGE, wp, not w.sdm, False, aux[4])
        else:
            new = (ZERO, wp, False, False, 0)
        return w.step(f"PTL: map p{p} for read -> {_pte_desc(new, w.sdm)}",
                      self._set(w.ptes, p, new), w.thr(w.op_idx, "go"))

    def _write_step(self, w: _WriterStep) -> Move:
        p, pte, aux, pc = w.p, w.pte, w.aux, w.pc
        if pc == "go":
            if pte[0] == PAGE and pte[2] and not pte[1]:
                data = (w.i + 1) * 100 + w.op_idx + 1
                return w.step(f"store to p{p} lands", self._set(
                    w.ptes, p, (PAGE, False, True, pte[3], data)), w.thr(w.op_idx + 1, "go"))
            return w.step(f"write fault on p{p} (pte: {w.desc})", w.ptes,
                          w.thr(w.op_idx, "fault", pte))
        if pc == "fault":
            if self._userfault(aux):
                # userfaultfd_must_wait(): do not sleep if the protection is gone.
                if pte != aux:
                    return w.step(f"handle_userfault: p{p} changed ({w.desc}), retry",
                                  w.ptes, w.thr(w.op_idx, "go"))
                return w.step(f"handle_userfault: queue wp message for p{p}, sleep", w.ptes,
                              w.thr(w.op_idx, "wait", p), (*w.queue, p),
                              dup=self._dup(w.st, p))
            if aux[0] != PAGE:
                what = "look up p{p} in page cache" if self.shmem and aux[0] != ZERO \
                    else "allocate page for p{p}"
                return w.step(what.format(p=p), w.ptes, w.thr(w.op_idx, "ptl", aux))
            pc = "ptl"
        if pc == "ptl":
            return self._install(w)
        if pc == "notify":
            return w.step(f"queue wp message for p{p} (after mapping), sleep", w.ptes,
                          w.thr(w.op_idx, "wait", p), (*w.queue, p), dup=self._dup(w.st, p))
        raise AssertionError(pc)

    def _install(self, w: _WriterStep) -> Move:
        """A write fault's PTE update under the PTL, after the pte_same() re-check."""
        p, pte, aux = w.p, w.pte, w.aux
        if pte != aux:
            return w.step(f"PTL: p{p} changed ({w.desc}), back off", w.ptes,
                          w.thr(w.op_idx, "go"))
        # do_anonymous_page() / set_pte_range(): vmf_orig_pte_uffd_wp() carries a
        # marker's protection into the new PTE (a discard marker has none to carry).
        new = (PAGE, aux[0] == MARKER and aux[1], True, True, aux[4] if aux[0] != ZERO else 0)
        nring = w.ring
        if self.d.collect == "ring" and self._protected(aux):
            nring = (*w.ring, p)
        post = "notify" if (self.d.notify_after_map and self._none_like(aux)) else "go"
        what = f"map p{p}" if self._none_like(aux) else \
            f"map p{p} keeping the marker's bit" if aux[0] == MARKER else (
                f"copy-on-write zero page at p{p}" if aux[0] == ZERO else
                f"make p{p} writable (soft-dirty)" if w.sdm else f"clear uffd-wp bit of p{p}")
        if nring is not w.ring:
            what += f", append p{p} to ring"
        if post == "notify":
            what += " WITHOUT uffd-wp bit"
        return w.step(f"PTL: {what} -> {_pte_desc(new, w.sdm)}", self._set(w.ptes, p, new),
                      w.thr(w.op_idx, post, aux), nring=nring)

    def _c(self, c: int | None) -> str:
        return _content(c, self.names)

    def _dup(self, st: State, p: int) -> int:
        """1 if a message for p now repeats one the handler already resolved.

        A message queued while another for p is still queued or being handled is a
        concurrent fault on the same page, not a duplicate."""
        _, threads, queue, copies, _ = st
        hpc, hp = threads[-1][1], threads[-1][2]
        busy = p in queue or (hpc in ("copy", "unprotect") and hp == p)
        return int(copies[p] is not None and not busy)

    def _handler(self, st: State) -> Move | None:
        ptes, threads, queue, copies, ring = st
        _op_idx, pc, p = threads[-1]
        name = self.names[-1]
        sdm = False

        def thr(npc: str, naux: Any = None) -> tuple[Local, ...]:
            return (*threads[:-1], (0, npc, naux))

        if pc == "idle":
            if not queue:
                return None
            q = queue[0]
            nxt = "copy" if copies[q] is None else "unprotect"
            note = "" if nxt == "copy" else " (already in snapshot)"
            return (Step(name, f"read message: wp fault on p{q}{note}"),
                    (ptes, thr(nxt, q), queue[1:], copies, ring), "", 0)
        if pc == "copy":
            c = ptes[p][4]
            loss = "" if c == self.arm[p] else (
                f"late copy: p{p} copied into the snapshot after new content landed "
                f"({self._c(c)} instead of {self._c(self.arm[p])})")
            return (Step(name, f"copy p{p} into snapshot ({self._c(c)})"),
                    (ptes, thr("unprotect", p), queue, self._set(copies, p, c), ring), loss, 0)
        # pc == "unprotect": UFFDIO_WRITEPROTECT mode=0 on p, then wake waiters on p
        kind, _wp, wr, sd, c = ptes[p]
        if kind in (NONE, MARKER) and self.d.none_protected:
            # pte_none means "protected" here, so an unprotected page cannot be left
            # unpopulated: the resolver maps it.
            new: Pte = (PAGE, False, True, True, c)
        elif kind == MARKER:
            new = (NONE, False, False, False, c)
        else:
            new = (kind, False, wr, sd, c)
        nthreads = (*((t[0], "go", None) if t[1] == "wait" and t[2] == p else t
                      for t in threads[:-1]), (0, "idle", None))
        woken = [self.names[j] for j, t in enumerate(threads[:-1])
                 if t[1] == "wait" and t[2] == p]
        return (Step(name, f"UFFDIO_WRITEPROTECT(mode=0) p{p} -> {_pte_desc(new, sdm)}"
                     + (f", wake {', '.join(woken)}" if woken else "")),
                (self._set(ptes, p, new), nthreads, queue, copies, ring), "", 0)

    def _tracker(self, st: State) -> Move | None:
        ptes, threads, queue, copies, ring = st
        op_idx, pc, aux = threads[-1]
        if op_idx >= self.s.collects:
            return None
        name = self.names[-1]
        d = self.d
        sdm = d.collect == "softdirty"

        def thr(nidx: int, npc: str, naux: Any = None) -> tuple[Local, ...]:
            return (*threads[:-1], (nidx, npc, naux))

        def mv(action: str, nthreads: tuple[Local, ...], nptes: tuple[Pte, ...] = ptes,
               ncopies: tuple[Any, ...] = copies, nring: tuple[int, ...] = ring,
               dup: int = 0) -> Move:
            return (Step(name, action), (nptes, nthreads, queue, ncopies, nring), "", dup)

        if pc == "start":
            if d.collect == "ring":
                pages = tuple(sorted(set(ring)))
                return mv(f"drain ring: {_plist(pages)}", thr(op_idx, "reprotect",
                                                              (0, pages)), nring=())
            pc, aux = "scan", (0, ())
        if pc == "scan":
            k, rep = aux
            pte = ptes[k]
            w = self._written(pte)
            nrep = (*rep, k) if w else rep
            nxt = thr(op_idx, "scan", (k + 1, nrep)) if k + 1 < self.npages else (
                thr(op_idx, "clear", (0, nrep)) if sdm else thr(op_idx, "copy", (0, nrep)))
            if sdm:
                return mv(f"read pagemap p{k}: soft-dirty={int(w)}", nxt)
            new = self._wp(pte) if w else pte
            return mv(f"PAGEMAP_SCAN get+WP p{k}: "
                      + (f"written, -> {_pte_desc(new, False)}" if w else "not written"),
                      nxt, nptes=self._set(ptes, k, new))
        if pc == "clear":
            nptes = tuple((PAGE, False, False, False, t[4]) if t[0] == PAGE else t
                          for t in ptes)
            return mv("write 4 to clear_refs: all PTEs read-only, soft-dirty cleared",
                      thr(op_idx, "copy", aux), nptes=nptes)
        if pc == "reprotect":
            k, rep = aux
            if k < len(rep):
                p = rep[k]
                new = self._wp(ptes[p])
                return mv(f"re-protect p{p} -> {_pte_desc(new, False)}",
                          thr(op_idx, "reprotect", (k + 1, rep)),
                          nptes=self._set(ptes, p, new))
            pc, aux = "copy", (0, rep)
        if pc == "copy":
            k, rep = aux
            if k >= len(rep):
                return mv("collect done, nothing reported" if not rep else
                          f"collect done: reported {_plist(rep)}", thr(op_idx + 1, "start"))
            p = rep[k]
            c = ptes[p][4]
            dup = 1 if copies[p] == c else 0
            return mv(f"copy p{p} into replica ({self._c(c)})",
                      thr(op_idx, "copy", (k + 1, rep)), ncopies=self._set(copies, p, c),
                      dup=dup)
        raise AssertionError(pc)

    # ---------------------------------------------------------------- end of a schedule
    def final(self, st: State) -> tuple[tuple[str, ...], int, bool]:
        """Reasons lost, duplicates of the final collect, deadlock: with all threads idle."""
        ptes, threads, _queue, copies, ring = st
        deadlock = any(t[0] < len(prog) for t, prog in zip(threads, self.progs, strict=False))
        reasons: list[str] = []
        dup = 0
        if self.d.sync:
            for p, pte in enumerate(ptes):
                if copies[p] is None and pte[4] != self.arm[p]:
                    reasons.append(f"unnotified: p{p} changed ({self._c(pte[4])}) without "
                                   f"a notification; the snapshot would hold it, not "
                                   f"{self._c(self.arm[p])}")
            return tuple(reasons), 0, deadlock
        if self.d.collect == "ring":
            rep = set(ring)
        else:
            rep = {p for p, pte in enumerate(ptes) if self._written(pte)}
        for p, pte in enumerate(ptes):
            c = pte[4]
            if p in rep:
                dup += copies[p] == c
            elif copies[p] != c:
                kind = "discard" if c == 0 else "write"
                reasons.append(f"lost {kind}: p{p} holds {self._c(c)}, the replica "
                               f"{self._c(copies[p])}; final collect reports "
                               f"{_plist(tuple(sorted(rep)))}")
        return tuple(reasons), dup, deadlock

    # ---------------------------------------------------------------- search
    def count(self, st: State) -> Stats:
        memo = self.memo
        got = memo.get(st)
        if got is not None:
            return got
        mvs = self.moves(st)
        if not mvs:
            reasons, dup, dead = self.final(st)
            res: Stats = (1, 1 if reasons else 0, 1 if dup else 0, dup, int(dead),
                          frozenset(_kind(r) for r in reasons), 0, 0 if reasons else _INF)
        else:
            s_ = lo = ds = dt = dl = 0
            kinds: set[str] = set()
            short = short_lose = _INF
            for _, nxt, loss, dup in mvs:
                cs, cl, cds, cdt, cdl, ck, cmin, cmin_lose = self.count(nxt)
                s_ += cs
                lo += cs if loss else cl
                ds += cs if dup else cds
                dt += cdt + dup * cs
                dl += cdl
                kinds |= ck
                short = min(short, cmin + 1)
                short_lose = min(short_lose, (cmin if loss else cmin_lose) + 1)
                if loss:
                    kinds.add(_kind(loss))
            res = (s_, lo, ds, dt, dl, frozenset(kinds), short, min(short_lose, _INF))
        memo[st] = res
        return res

    def shortest_losing(self, st: State) -> tuple[tuple[Step, ...], tuple[str, ...]]:
        """One losing schedule with the fewest steps (the memo holds the lengths)."""
        path: list[Step] = []
        why: list[str] = []
        s = st
        while mvs := self.moves(s):
            want = self.memo[s][6] if why else self.memo[s][7]
            for stp, nxt, loss, _ in mvs:
                c = self.memo[nxt]
                if (c[6] if (why or loss) else c[7]) + 1 == want:
                    path.append(stp)
                    if loss:
                        why.append(loss)
                    s = nxt
                    break
            else:  # pragma: no cover - the memo is consistent by construction
                raise AssertionError("no move realises the memoised shortest length")
        return tuple(path), (*why, *self.final(s)[0])

    def losing(self, st: State, limit: int) -> list[tuple[tuple[Step, ...], tuple[str, ...]]]:
        out: list[tuple[tuple[Step, ...], tuple[str, ...]]] = []

        def walk(s: State, path: list[Step], why: tuple[str, ...]) -> None:
            if len(out) >= limit:
                return
            mvs = self.moves(s)
            if not mvs:
                reasons = why + self.final(s)[0]
                if reasons:
                    out.append((tuple(path), reasons))
                return
            for stp, nxt, loss, _ in mvs:
                if not loss and not why and self.memo[nxt][1] == 0:
                    continue
                path.append(stp)
                walk(nxt, path, why + ((loss,) if loss else ()))
                path.pop()
                if len(out) >= limit:
                    return

        walk(st, [], ())
        return out

    def first_dup(self, st: State) -> tuple[Step, ...]:
        """The first schedule (depth-first) with a duplicate; that step is marked."""
        path: list[Step] = []
        s = st
        while True:
            mvs = self.moves(s)
            if not mvs:
                if not self.final(s)[1]:
                    return ()
                return (*path, Step(self.names[-1], "final collect: reports a page whose "
                                    "content equals the replica [false positive]"))
            for stp, nxt, _, dup in mvs:
                if dup or self.memo[nxt][2]:
                    if dup:
                        tag = " [duplicate]" if self.d.sync else " [false positive]"
                        return (*path, stp._replace(action=stp.action + tag),
                                *self._finish(nxt))
                    path.append(stp)
                    s = nxt
                    break
            else:
                return ()

    def _finish(self, s: State) -> tuple[Step, ...]:
        path: list[Step] = []
        while mvs := self.moves(s):
            path.append(mvs[0][0])
            s = mvs[0][1]
        return tuple(path)


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _content(c: int | None, names: Sequence[str] = ()) -> str:
    if c is None:
        return "nothing"
    if c == 0:
        return "zeros"
    if c >= ARM_BASE:
        return f"arm-time data of p{c - ARM_BASE}"
    who = names[c // 100 - 1] if c // 100 <= len(names) else f"thread {c // 100}"
    return f"{who}'s write {c % 100}"


def _plist(pages: Iterable[int]) -> str:
    ps = list(pages)
    return "[" + ", ".join(f"p{p}" for p in ps) + "]" if ps else "[]"


def _lookup(design: str | Design | type[DesignClass],
            scenario: str | Scenario) -> tuple[Design, Scenario]:
    """A design by explorer name, registry spec (``module:Class``) or class; a scenario."""
    if isinstance(design, type):
        design = Design.of(design)
    elif isinstance(design, str):
        if design in DESIGNS:
            design = DESIGNS[design]
        elif ":" in design:
            from .designs import get
            try:
                design = Design.of(get(design))
            except WriteWatchError as exc:
                raise RaceExplorerError(str(exc), hint=exc.hint) from None
        else:
            raise RaceExplorerError(f"unknown design {design!r}",
                                    hint="one of: " + ", ".join(DESIGNS))
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise RaceExplorerError(f"unknown scenario {scenario!r}",
                                    hint="one of: " + ", ".join(SCENARIOS))
        scenario = SCENARIOS[scenario]
    return design, scenario


def explore(design: str | Design | type[DesignClass], scenario: str | Scenario, *,
            limit: int = 20) -> ExploreResult:
    """Run every interleaving of ``scenario`` under ``design``; keep ``limit`` losing ones."""
    d, s = _lookup(design, scenario)
    t0 = time.perf_counter()
    ex = _Explorer(d, s)
    init = ex.initial()
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10000))
    try:
        n, lo, ds, dt, dl, kinds, _, _ = ex.count(init)
        shortest = ex.shortest_losing(init) if lo else ((), ())
        lost = ex.losing(init, limit) if lo and limit > 0 else []
        dup_ex = ex.first_dup(init) if ds else ()
    finally:
        sys.setrecursionlimit(old)
    return ExploreResult(
        design=d.name, scenario=s.name, schedules=n, states=len(ex.memo), losing_count=lo,
        losing=tuple(p for p, _ in lost), reasons=tuple(r for _, r in lost),
        duplicates=dt, duplicate_schedules=ds, deadlocks=dl, threads=ex.names,
        loss_kinds=tuple(sorted(kinds)), shortest=shortest[0], shortest_reasons=shortest[1],
        seconds=time.perf_counter() - t0, example_dup=dup_ex)


def format_schedule(schedule: Sequence[Step], threads: Sequence[str] | None = None,
                    reasons: Sequence[str] = (), width: int = 46) -> str:
    """A schedule as a numbered step list, one column per thread."""
    names = list(threads) if threads else list(dict.fromkeys(s.thread for s in schedule))
    col = {n: i for i, n in enumerate(names)}
    lines = ["  #  " + "".join(n.ljust(width) for n in names).rstrip()]
    for k, stp in enumerate(schedule, 1):
        cells = [""] * len(names)
        cells[col[stp.thread]] = stp.action
        lead = "".join(c.ljust(width) for c in cells[:col[stp.thread]])
        lines.append(f"{k:3d}  {lead}{stp.action}")
    lines.extend(f"  => {r}" for r in reasons)
    return "\n".join(lines)


@dataclass(frozen=True)
class Sequential:
    """One schedule of a scenario run without interleaving: the monitor first whenever it has
    a message, then each writer in order until it blocks or ends, the collects last."""

    design: str
    scenario: str
    steps: tuple[Step, ...]
    lost: tuple[str, ...]
    duplicates: int


def sequential(design: str | Design | type[DesignClass], scenario: str | Scenario
               ) -> Sequential:
    """The sequential schedule of ``scenario`` under ``design`` (what a replay of the same
    operations in order does: the cross-check between the two engines)."""
    d, s = _lookup(design, scenario)
    ex = _Explorer(d, s)
    st = ex.initial()
    steps: list[Step] = []
    lost: list[str] = []
    dups = 0
    order = ([ex.names[-1]] if d.sync else []) + list(ex.names[:-1]) + \
        ([] if d.sync else [ex.names[-1]])
    while mvs := ex.moves(st):
        by = {m[0].thread: m for m in mvs}
        stp, st, loss, dup = by[next(n for n in order if n in by)]
        steps.append(stp)
        dups += dup
        if loss:
            lost.append(loss)
    reasons, fdup, _ = ex.final(st)
    return Sequential(d.name, s.name, tuple(steps), (*lost, *reasons), dups + fdup)
