"""writewatch: precise page-level write tracking for Linux.

Which pages of this memory were written since I last asked? In your own process or another
one, with the kernel's best mechanism (userfaultfd write-protect in async mode plus the
PAGEMAP_SCAN ioctl on Linux 6.7+; synchronous uffd-wp and soft-dirty on older kernels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.uffd_sync import LiveSnapshot, live_snapshot
from .errors import (
    AlreadyTracked,
    HandlerDied,
    InvalidTarget,
    KernelError,
    NoSuchProcess,
    PermissionDenied,
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
from .snapshot import Snapshotter
from .tracker import CollectInfo, PartialPageWarning, Target, Tracker, track, zeros

if TYPE_CHECKING:  # at run time: __getattr__ below (the package is imported on first use)
    from .monitor.api import monitor

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
    "Pages",
    "PartialPageWarning",
    "PermissionDenied",
    "ProcessCollectInfo",
    "ProcessTracker",
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
    # applications are imported on first use, so that ``import writewatch`` stays light:
    # ``writewatch.monitor(tracker, interval=..., ...)`` (the package is callable)
    if name == "monitor":
        import importlib
        return importlib.import_module(f"{__name__}.monitor")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
