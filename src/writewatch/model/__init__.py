"""An executable model of the kernel's write-tracking mechanisms and of the designs debated
for them (see docs/model.md).

* :class:`Process` (the model's address space, with mmap/munmap/mremap/mprotect/madvise/read/
  write/fork/reclaim/exit) and :class:`ModelKernel` (the :class:`writewatch.kernel.KernelCalls`
  seam over it), so the library's trackers run unchanged on the model::

      proc, kern = writewatch.model.process("6.18")
      addr = proc.mmap(None, 1 << 20)
      with writewatch.track((addr, 1 << 20), backend="uffd-async", kernel=kern,
                            hole_scan=False) as t:
          proc.write(addr, 4096)
          t.collect()

* :func:`compare` replays a workload under each design and measures it against the model's
  ground truth (:class:`Metrics`); :mod:`.workloads` has the built-in workloads and seeded
  random traces; :mod:`.trace` the trace format; :mod:`.fidelity` the differential check
  against the running kernel; ``writewatch.model.races`` the concurrency explorer.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import profiles, workloads
from .designs import DESIGNS
from .kernel import ModelKernel, UffdCtx
from .profiles import PROFILES, Profile
from .replay import FalseNegative, Metrics, Runner, run_trace
from .replay import compare as compare_trace
from .state import Mm, ModelError
from .trace import Trace, TraceError, TraceHeader, TraceWriter
from .workloads import WORKLOADS

#: A model process: one address space and its operations (``mm_struct`` in the kernel).
Process = Mm


def process(profile: str | Profile = "6.18") -> tuple[Mm, ModelKernel]:
    """A fresh model process and the kernel seam over it."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    mm = Mm(prof)
    return mm, ModelKernel(mm)


def compare(workload: str | Trace = "merge", designs: Iterable[str] | None = None,
            profile: str | Profile = "6.18", *, seed: int = 1,
            scale: int = 1) -> list[Metrics]:
    """Every design (default: all) on one workload: a built-in name, ``random:SEED[:NOPS]``,
    ``trace:FILE`` or a :class:`Trace`."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    trace = workload if isinstance(workload, Trace) else workloads.load(workload, seed, scale)
    name = workload if isinstance(workload, str) else trace.header.source
    return compare_trace(trace, list(designs) if designs is not None else list(DESIGNS), prof,
                         name)


__all__ = ["DESIGNS", "PROFILES", "WORKLOADS", "FalseNegative", "Metrics", "Mm", "ModelError",
           "ModelKernel", "Process", "Profile", "Runner", "Trace", "TraceError", "TraceHeader",
           "TraceWriter", "UffdCtx", "compare", "compare_trace", "process", "run_trace"]
