"""Layer 3: tracking mechanisms behind one interface (:class:`base.Backend`)."""

from __future__ import annotations

from . import soft_dirty, uffd_async, uffd_sync
from .base import REGISTRY, Backend, Collected, Span

__all__ = ["REGISTRY", "Backend", "Collected", "Span", "soft_dirty", "uffd_async", "uffd_sync"]
