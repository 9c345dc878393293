"""The model as a lab: experiments run on the model kernel (:mod:`writewatch.model`), above
the public API (layer 5 of DESIGN.md: an application).

* :mod:`.designs`: the designs, one class each, one registry for both engines;
* :mod:`.replay`: replay a trace under a design (:func:`compare`), against the ground truth
  of :mod:`.truth`, measured in :mod:`.metrics`;
* :mod:`.workloads`: built-in workloads and seeded random traces;
* :mod:`.races`: the concurrency explorer (every interleaving of the same designs' rules;
  its parts in :mod:`.explorer`);
* :mod:`.fidelity`: the differential check against the running kernel;
* :mod:`.costs`: counted events priced with costs calibrated on this machine;
* :mod:`.profiles`: the profile of the running kernel (probed);
* :mod:`.plot`: the figures of ``writewatch model compare --plot``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..model.profiles import Profile
from ..model.trace import Trace
from . import designs as _designs
from . import profiles as _profiles
from . import workloads as _workloads
from .costs import Costs
from .metrics import Metrics
from .replay import compare as compare_trace


def _resolve(profile: str | Profile) -> Profile:
    return _profiles.get(profile) if isinstance(profile, str) else profile


def compare(workload: str | Trace | Any = "merge",
            designs: Iterable[str | type[_designs.Design]] | None = None,
            profile: str | Profile = "6.18", *, seed: int = 1, scale: int = 1,
            costs: Costs | None = None) -> list[Metrics]:
    """Every design (default: the built-in ones) on one workload: a built-in name,
    ``random:SEED[:NOPS]``, ``trace:FILE`` (streamed) or a :class:`Trace`."""
    prof = _resolve(profile)
    if isinstance(workload, str):
        trace: Any = _workloads.load(workload, seed, scale)
        name = workload
    else:
        trace = workload
        name = getattr(getattr(workload, "header", None), "source", "") or "trace"
    names = list(designs) if designs is not None else list(_designs.DEFAULT)
    return compare_trace(trace, names, prof, name, costs)


@dataclass(frozen=True)
class Spread:
    """One metric of one design over several seeds."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]


#: the metrics :func:`compare_seeds` summarises
SPREAD_METRICS = ("false_positives", "false_negatives", "reported", "pt_peak_bytes",
                  "tracking_faults", "walked_per_collect", "collect_us", "fault_us",
                  "vmas_peak")


def compare_seeds(workload: str, designs: Iterable[str | type[_designs.Design]] | None = None,
                  profile: str | Profile = "6.18", seeds: Iterable[int] = range(1, 6), *,
                  scale: int = 1, costs: Costs | None = None
                  ) -> dict[str, dict[str, Spread]]:
    """The built-in ``workload`` generated with each seed, every design on each: per design,
    per metric of :data:`SPREAD_METRICS`, the median and range over the seeds."""
    runs: dict[str, list[Metrics]] = {}
    for s in seeds:
        for m in compare(workload, designs, profile, seed=s, scale=scale, costs=costs):
            if m.available:
                runs.setdefault(m.design, []).append(m)
    out: dict[str, dict[str, Spread]] = {}
    for d, ms in runs.items():
        out[d] = {}
        for k in SPREAD_METRICS:
            xs = tuple(float(getattr(m, k)) for m in ms)
            out[d][k] = Spread(statistics.median(xs), min(xs), max(xs), xs)
    return out


__all__ = ["SPREAD_METRICS", "Spread", "compare", "compare_seeds"]
