"""Fixtures of the kernel-layer tests (helpers in pmutil.py)."""

from .pmutil import mem, pm

__all__ = ["mem", "pm"]
