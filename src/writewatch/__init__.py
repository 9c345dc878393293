"""writewatch: precise page-level write tracking for Linux.

Which pages of this memory were written since I last asked? In your own process or another
one, with the kernel's best mechanism (userfaultfd write-protect in async mode plus the
PAGEMAP_SCAN ioctl on Linux 6.7+; synchronous uffd-wp and soft-dirty on older kernels).

The layers, each importing only from those below it (``tests/test_layers.py`` checks):

0. values: ``_uapi`` (kernel ABI constants), ``errors``, ``pages``
1. ``kernel/``: the :class:`~writewatch.kernel.KernelCalls` seam, its Linux implementation,
   /proc parsers, probes, ptrace injection
2. ``model/``: an executable model of the kernel behind the same seam
3. ``backends/``: the tracking mechanisms
4. ``features``: what a kernel supports and which backend ``auto`` picks
5. ``tracker`` (this process) and ``process/`` (other processes and trees)
6. applications: ``snapshot/``, ``monitor/``, ``lab/`` (the model lab)
7. ``cli/``: one module per subcommand, parsing arguments and calling the public API

This package is the facade: applications are imported when first used, so ``import
writewatch`` loads only layers 0-5 (and numpy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from .tracker import CollectInfo, PartialPageWarning, Target, Tracker, track, zeros

if TYPE_CHECKING:
    from .snapshot import Snapshotter
    from .snapshot.live import LiveSnapshot, live_snapshot

#: public names of the applications -> the module that defines them
_LAZY = {"Snapshotter": "snapshot", "LiveSnapshot": "snapshot.live",
         "live_snapshot": "snapshot.live"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "track",
    "zeros",
]
