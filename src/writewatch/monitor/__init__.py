"""Dirty-rate monitor: sample a tracker at a fixed interval and keep the time series of the
pages written, with summary statistics and renderers (JSON, CSV, heatmap and rate PNGs,
terminal views, model traces, Perfetto traces).

:func:`monitor` is the entry point (also ``writewatch.monitor(...)``: this module is
callable, so the top-level name works whether or not the package was imported before).
Importing this package needs numpy only; matplotlib, rich and perfetto are imported by the
renderers that use them.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .api import VIEWS, Outputs, monitor
from .focus import Focus, parse_focus
from .sampler import MAX_INTERVAL, MIN_INTERVAL, Sampler, Source
from .series import (
    CSV_COLUMNS,
    MB,
    MIB,
    UNITS,
    Interval,
    MappingChange,
    Region,
    Series,
    Summary,
    read_csv,
)
from .view import format_rate, format_summary

__all__ = ["CSV_COLUMNS", "MAX_INTERVAL", "MB", "MIB", "MIN_INTERVAL", "UNITS", "VIEWS",
           "Focus", "Interval", "MappingChange", "Outputs", "Region", "Sampler", "Series",
           "Source", "Summary",
           "format_rate", "format_summary", "monitor", "parse_focus", "read_csv"]


class _CallableModule(types.ModuleType):
    """``writewatch.monitor`` is both this package and the function :func:`monitor`: once
    ``writewatch.monitor`` is imported the package's attribute is this module, so calling it
    calls :func:`monitor`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Series:
        return monitor(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
