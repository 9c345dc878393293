"""The designs debated for precise write tracking: one registry for the trace replay and the
race explorer, one class per design (:class:`Design`, docs/model.md "Adding a design").

``DESIGNS`` maps each name to its class. :func:`get` also loads a design from outside:
``"package.module:Class"`` (what ``writewatch model compare --design`` accepts).
"""

from __future__ import annotations

import importlib

from ... import errors
from .base import Design, page_ranges
from .fault_time import FaultTimeAsync, FaultTimeSync
from .library import Library
from .soft_dirty import SoftDirty, SoftDirtyBlocksMerge, SoftDirtyOld
from .soft_dirty_markers import SoftDirtyOnMarkers
from .uffd_async import UffdAsync, UffdAsyncGeneric, UffdAsyncNoUnpop
from .uffd_sync import UffdSync, UffdSyncRemove, UffdSyncUnpop
from .vma_flag import VmaFlag, VmaFlagSync
from .write_ring import WriteRing

DESIGNS: dict[str, type[Design]] = {d.name: d for d in (
    SoftDirtyBlocksMerge, SoftDirtyOld, SoftDirty, SoftDirtyOnMarkers, UffdSync, UffdSyncUnpop,
    UffdSyncRemove, UffdAsync, UffdAsyncGeneric, UffdAsyncNoUnpop, FaultTimeAsync,
    FaultTimeSync, VmaFlag, VmaFlagSync, WriteRing, Library)}

#: the designs ``writewatch model compare`` runs by default (the variants that only differ
#: from one of these in one switch are left to ``--design``)
DEFAULT = ("soft-dirty-old", "soft-dirty", "soft-dirty-on-markers", "uffd-sync",
           "uffd-sync-unpop", "uffd-async", "uffd-async-generic", "fault-time-async",
           "fault-time-sync", "vma-flag", "write-ring", "writewatch")


def get(spec: str | type[Design]) -> type[Design]:
    """A design class by name, or ``"package.module:Class"`` (imported), or a class."""
    if isinstance(spec, type):
        if not issubclass(spec, Design):
            raise errors.InvalidTarget(f"{spec!r} is not a writewatch.lab.designs.Design")
        return spec
    if spec in DESIGNS:
        return DESIGNS[spec]
    if ":" in spec:
        return load(spec)
    raise errors.InvalidTarget(f"unknown design {spec!r}",
                               hint=f"one of: {', '.join(DESIGNS)}, or package.module:Class")


def load(spec: str) -> type[Design]:
    """Import ``package.module:Class`` and check it is a design."""
    mod, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except Exception as exc:  # not found, or its module failed to import (any error)
        raise errors.InvalidTarget(f"cannot load design {spec!r}: {type(exc).__name__}: "
                                   f"{exc}", hint="give package.module:Class, importable "
                                                  "from sys.path (PYTHONPATH)") from None
    if not (isinstance(obj, type) and issubclass(obj, Design)):
        raise errors.InvalidTarget(f"{spec!r} is not a subclass of "
                                   "writewatch.lab.designs.Design")
    for need in ("name", "title"):
        if not isinstance(getattr(obj, need, None), str):
            raise errors.InvalidTarget(f"design {spec!r} has no {need!r} (a str)")
    return obj


__all__ = ["DEFAULT", "DESIGNS", "Design", "FaultTimeAsync", "FaultTimeSync", "Library",
           "SoftDirty", "SoftDirtyBlocksMerge", "SoftDirtyOld", "SoftDirtyOnMarkers",
           "UffdAsync", "UffdAsyncGeneric", "UffdAsyncNoUnpop", "UffdSync", "UffdSyncRemove",
           "UffdSyncUnpop", "VmaFlag", "VmaFlagSync", "WriteRing", "get", "load",
           "page_ranges"]
