"""An executable model of the kernel's write-tracking mechanisms (see docs/model.md): the
kernel's state and the :class:`writewatch.kernel.KernelCalls` seam over it.

* :class:`Process` (:class:`Mm`: one address space, with mmap / munmap / mremap / mprotect /
  madvise / read / write / fork / reclaim / exit) and :class:`ModelKernel` (the seam over
  it), so the library's trackers run unchanged on the model::

      proc, kern = writewatch.model.process("6.18")
      addr = proc.mmap(None, 1 << 20)
      with writewatch.track((addr, 1 << 20), backend="uffd-async", kernel=kern,
                            hole_scan=False) as t:
          proc.write(addr, 4096)
          t.collect()

* :mod:`.profiles`: what differs between kernels; :mod:`.trace`: the trace format (what a
  workload did to an address space).

Layers inside, each module importing only those before it:

1. :mod:`.pte` (vocabulary), :mod:`.pagetable`, :mod:`.memory` (page caches),
   :mod:`.profiles`, :mod:`.trace`;
2. :mod:`.vma` (VMAs, split and merge);
3. :mod:`.space` (:class:`World` and :class:`AddressSpace`: the state and its lookups);
4. :mod:`.uffd` (contexts and their rules), :mod:`.fault`, :mod:`.zap` (the fault and zap
   paths);
5. :mod:`.scan` (PAGEMAP_SCAN), :mod:`.mapping`, :mod:`.access`, :mod:`.fork` (the system
   calls);
6. :mod:`.mm` (:class:`Mm`: a process);
7. :mod:`.kernel` (:class:`ModelKernel`: the seam).

The model imports nothing above the kernel-call layer (``writewatch.kernel``, ``_uapi``,
``errors``), with one exception: the profile of the running kernel is probed by the lab
(:func:`.profiles.running`).

The experiments run on it (designs, replay and :func:`compare`, workloads, the race explorer,
the differential check) are the lab, :mod:`writewatch.lab`. The documented names of the lab
are reachable here too (``writewatch.model.compare``, ``DESIGNS``, ``WORKLOADS``,
``Metrics``, ``run_trace``, and the modules ``writewatch.model.races``, ``.fidelity``,
``.designs``, ``.replay``, ``.workloads``), resolved on first use from the lab, for the
scripts that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import profiles
from .kernel import ModelKernel
from .mm import Mm
from .profiles import PROFILES, Profile
from .space import AddressSpace, ModelError, World
from .trace import Trace, TraceError, TraceHeader, TraceWriter
from .uffd import LINUX, UffdCtx, WpRules

#: A model process: an address space (the kernel's ``mm_struct``) and the system calls on it.
Process = Mm


def process(profile: str | Profile = "6.18") -> tuple[Mm, ModelKernel]:
    """A fresh model process and the kernel seam over it."""
    prof = profiles.get(profile) if isinstance(profile, str) else profile
    mm = Mm(prof)
    return mm, ModelKernel(mm)


#: names of the lab reachable from here (compatibility): name -> (lab module, attribute)
_LAB: dict[str, tuple[str, str]] = {
    "compare": ("writewatch.lab", "compare"),
    "compare_trace": ("writewatch.lab.replay", "compare"),
    "DESIGNS": ("writewatch.lab.designs", "DESIGNS"),
    "WORKLOADS": ("writewatch.lab.workloads", "WORKLOADS"),
    "FalseNegative": ("writewatch.lab.replay", "FalseNegative"),
    "Metrics": ("writewatch.lab.replay", "Metrics"),
    "Runner": ("writewatch.lab.replay", "Runner"),
    "run_trace": ("writewatch.lab.replay", "run_trace"),
}


def __getattr__(name: str) -> Any:
    try:
        mod, attr = _LAB[name]
    except KeyError:
        raise AttributeError(f"module 'writewatch.model' has no attribute {name!r}") from None
    return getattr(importlib.import_module(mod), attr)


__all__ = ["LINUX", "PROFILES", "AddressSpace", "Mm", "ModelError", "ModelKernel", "Process",
           "Profile", "Trace", "TraceError", "TraceHeader", "TraceWriter", "UffdCtx", "World",
           "WpRules", "process", *_LAB]
