"""Layer 3: tracking mechanisms behind one interface (:class:`base.Backend`)."""

from __future__ import annotations

import importlib

from .base import REGISTRY, Backend, Collected, Span

__all__ = ["REGISTRY", "Backend", "Collected", "Span"]

for _name in ("uffd_async", "uffd_sync", "soft_dirty"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise
