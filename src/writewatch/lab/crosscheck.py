"""The two engines on one definition: a race-explorer scenario run in order (no
interleaving) by the explorer and, as a trace, by the replay, under the same design. They
must agree on whether a change is lost; ``tests/model/test_crosscheck.py`` holds them to it
for every design both can run."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.profiles import PROFILES, Profile
from ..model.pte import PAGE
from ..model.trace import Trace, TraceHeader
from . import designs as D
from . import races as R
from .metrics import Metrics
from .replay import run_trace

BASE = 0x7F0000000000


def scenario_trace(scen: R.Scenario) -> Trace:
    """The scenario's operations in order: the pages prepared as the explorer's initial state
    ("mapped": written; shmem "none": written then reclaimed, so the page is in the cache and
    the PTE zapped), tracked, each thread's ops in turn, its concurrent collects, the final
    collect."""
    n = len(scen.pages)
    shmem = scen.memory == "shmem"
    ops: list[dict[str, object]] = [{"op": "mmap", "addr": BASE, "len": n * PAGE,
                                     "kind": scen.memory, "shared": shmem}]
    for p, kind in enumerate(scen.pages):
        a = BASE + p * PAGE
        if kind == "mapped" or shmem:
            ops.append({"op": "write", "addr": a, "len": PAGE})
        if kind == "none" and shmem:
            ops.append({"op": "reclaim", "addr": a, "len": PAGE})
    ops.append({"op": "track", "addr": BASE, "len": n * PAGE})
    for _, prog in scen.threads:
        for op, p in prog:
            a = BASE + p * PAGE
            if op in ("write", "read"):
                ops.append({"op": op, "addr": a, "len": PAGE})
            elif op == "dontneed":
                ops.append({"op": "madvise", "addr": a, "len": PAGE, "advice": "DONTNEED"})
            else:
                ops.append({"op": "reclaim", "addr": a, "len": PAGE})
    ops.extend({"op": "collect"} for _ in range(scen.collects + 1))
    return Trace(TraceHeader(page_size=PAGE, source=f"scenario:{scen.name}"), ops)


@dataclass(frozen=True)
class Agreement:
    design: str
    scenario: str
    explorer_lost: tuple[str, ...]
    replay: Metrics

    @property
    def replay_lost(self) -> bool:
        """The replay's verdict in the explorer's terms: a sync design's live snapshot
        differs from memory at arm time; a collecting design's replica differs from memory
        after the last collect."""
        m = self.replay
        if m.snapshot_differs is not None:
            return m.snapshot_differs > 0
        return m.replica_last > 0

    @property
    def agree(self) -> bool:
        return bool(self.explorer_lost) == self.replay_lost


def check(design: str | type[D.Design], scenario: str | R.Scenario,
          profile: Profile | None = None) -> Agreement:
    cls = D.get(design)
    scen = R.SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    seq = R.sequential(cls, scen)
    m = run_trace(scenario_trace(scen), cls, profile or PROFILES["6.18"], scen.name)
    return Agreement(cls.name, scen.name, seq.lost, m)


__all__ = ["Agreement", "check", "scenario_trace"]
