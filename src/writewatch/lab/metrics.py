"""What a replay measures: :class:`Metrics` per design and trace, :class:`CollectSample` per
collect (docs/model.md, "What is measured")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class Metrics:
    """One design's replay of one trace (docs/model.md, "What is measured")."""

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
    fn_examples: tuple[str, ...] = ()
    series: tuple[CollectSample, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["CollectSample", "Metrics"]
