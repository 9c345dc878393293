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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import WriteWatchError
from .designs import DESIGNS as REGISTRY
from .designs import Design as DesignClass
from .designs import get as get_design
from .explorer.machine import Machine
from .explorer.search import Search
from .explorer.spec import Design, Op, RaceExplorerError, Scenario, Step

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


#: the registry's designs the explorer can run, by name
DESIGNS: dict[str, Design] = {n: Design.of(c) for n, c in REGISTRY.items()
                              if c.explore is not None}


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


def _lookup(design: str | Design | type[DesignClass],
            scenario: str | Scenario) -> tuple[Design, Scenario]:
    """A design by explorer name, registry spec (``module:Class``) or class; a scenario."""
    if isinstance(design, type):
        if not issubclass(design, DesignClass):
            raise RaceExplorerError(f"{design.__name__} is not a design",
                                    hint="a subclass of writewatch.lab.designs.Design")
        design = Design.of(design)
    elif isinstance(design, str):
        spec = design
        if spec in DESIGNS:
            design = DESIGNS[spec]
        else:  # a registry name the explorer has no tracker for says why, or module:Class
            try:
                design = Design.of(get_design(spec))
            except WriteWatchError as exc:
                if ":" not in spec and "unknown design" in exc.message:
                    raise RaceExplorerError(f"unknown design {design!r}",
                                            hint="one of: " + ", ".join(DESIGNS)) from None
                raise RaceExplorerError(exc.message, hint=exc.hint) from None
    elif not isinstance(design, Design):
        raise RaceExplorerError(f"design={design!r} is not a design",
                                hint="a name, package.module:Class, or a Design class")
    if not isinstance(scenario, (str, Scenario)):
        raise RaceExplorerError(f"scenario={scenario!r} is not a scenario",
                                hint="one of: " + ", ".join(SCENARIOS))
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
    m = Machine(d, s)
    ex = Search(m)
    init = m.initial()
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
        duplicates=dt, duplicate_schedules=ds, deadlocks=dl, threads=m.names,
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
    ex = Machine(d, s)
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
