"""writewatch: precise page-level write tracking for Linux.

Which pages of this memory were written since I last asked? In your own process or another
one, with the kernel's best mechanism (userfaultfd write-protect in async mode plus the
PAGEMAP_SCAN ioctl on Linux 6.7+; synchronous uffd-wp and soft-dirty on older kernels).

The layers, each importing only from those below it (``tests/test_layers.py`` checks):

0. values: ``errors`` (the exception tree) and ``pages`` (``Pages``)
1. ``_uapi``: kernel ABI constants and struct layouts, as in the headers
2. ``kernel/``: the :class:`~writewatch.kernel.KernelCalls` seam and its Linux implementation
   (syscalls, ioctls, /proc, probes, ptrace injection); ``model/``, an executable model of
   the kernel behind the same seam, stands on it
3. ``backends/``: the tracking mechanisms, one interface
4. the public API: ``features`` (what a kernel supports), ``tracker`` (this process),
   ``process/`` (other processes and trees), and this package, the facade
5. applications: ``snapshot/``, ``monitor/``, ``lab/`` (experiments on the model)
6. ``cli/``: one module per subcommand, parsing arguments and calling the public API

The facade imports the applications when first used, so ``import writewatch`` loads layers
0-4 and numpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _startup  # noqa: F401  (first: it decides how numpy loads)
from .errors import (
    AlreadyTracked,
    HandlerDied,
    InvalidTarget,
    KernelError,
    NoSuchProcess,
    NotRegistered,
    PermissionDenied,
    Refused,
    TrackerClosed,
    TrackerForked,
    Unsupported,
    WriteWatchError,
)
from .features import Feature, Features, features
from .pages import Pages
from .process import (
    LaunchedProcess,
    MappingInfo,
    ProcessCollectInfo,
    ProcessTracker,
    attach,
    launch,
)
from .tracker import (
    CollectInfo,
    MemoryTracker,
    PartialPageWarning,
    Target,
    Tracker,
    track,
    zeros,
)

if TYPE_CHECKING:  # at run time: __getattr__ below (imported on first use)
    from .monitor.api import monitor
    from .snapshot import Snapshotter
    from .snapshot.live import LiveSnapshot, live_snapshot

#: public names of the applications -> the module that defines them ("" for the module
#: itself: ``writewatch.monitor(tracker, interval=..., ...)``, the package is callable)
_LAZY = {"Snapshotter": "snapshot", "LiveSnapshot": "snapshot.live",
         "live_snapshot": "snapshot.live", "monitor": ""}

__version__ = "0.1.0"

__all__ = [
    "AlreadyTracked",
    "CollectInfo",
    "Feature",
    "Features",
    "HandlerDied",
    "InvalidTarget",
    "KernelError",
    "LaunchedProcess",
    "LiveSnapshot",
    "MappingInfo",
    "MemoryTracker",
    "NoSuchProcess",
    "NotRegistered",
    "Pages",
    "PartialPageWarning",
    "PermissionDenied",
    "ProcessCollectInfo",
    "ProcessTracker",
    "Refused",
    "Snapshotter",
    "Target",
    "Tracker",
    "TrackerClosed",
    "TrackerForked",
    "Unsupported",
    "WriteWatchError",
    "__version__",
    "attach",
    "features",
    "launch",
    "live_snapshot",
    "monitor",
    "track",
    "zeros",
]


def __getattr__(name: str) -> Any:
    """The applications are imported on first use, so that ``import writewatch`` stays
    light (numpy only)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    where = _LAZY[name]
    module = importlib.import_module(f".{where or name}", __name__)
    value = getattr(module, name) if where else module
    globals()[name] = value
    return value
