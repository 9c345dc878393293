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

Layers inside: :mod:`.pte` (vocabulary) <- :mod:`.pagetable`, :mod:`.vma`, :mod:`.memory` <-
:mod:`.uffd` (contexts and their rules) <- :mod:`.fault`, :mod:`.zap` <- :mod:`.mm` <-
:mod:`.scan` <- :mod:`.kernel`. The model imports nothing above the kernel-call layer
(``writewatch.kernel``, ``_uapi``, ``errors``).

The experiments run on it (designs, replay and :func:`compare`, workloads, the race explorer,
the differential check) are the lab, :mod:`writewatch.lab`. Their documented names are
still reachable here (``writewatch.model.compare``, ``DESIGNS``, ``WORKLOADS``, ``Metrics``,
``run_trace``, ``writewatch.model.races``, ``.fidelity``, ``.designs``, ``.replay``,
``.workloads``), resolved on first use from the lab: the only references from the model to
the lab, kept for the scripts that use them.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import profiles
from .kernel import ModelKernel
from .mm import Mm, ModelError
from .profiles import PROFILES, Profile
from .trace import Trace, TraceError, TraceHeader, TraceWriter
from .uffd import LINUX, UffdCtx, WpRules

#: A model process: one address space and its operations (``mm_struct`` in the kernel).
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


__all__ = ["LINUX", "PROFILES", "Mm", "ModelError", "ModelKernel", "Process", "Profile",
           "Trace", "TraceError", "TraceHeader", "TraceWriter", "UffdCtx", "WpRules",
           "process", *_LAB]
