"""Dirty-rate monitor: sample a tracker at a fixed interval and keep the time series of the
pages written, with summary statistics and renderers (JSON, CSV, heatmap and rate PNGs,
terminal views, model traces).

Importing this package needs numpy only; matplotlib and rich are imported by the renderers.
"""

from __future__ import annotations

from .sampler import MIN_INTERVAL, Sampler, Source
from .series import CSV_COLUMNS, Interval, MappingChange, Region, Series, Summary, read_csv

__all__ = ["CSV_COLUMNS", "MIN_INTERVAL", "Interval", "MappingChange", "Region", "Sampler",
           "Series", "Source", "Summary", "monitor", "read_csv"]


def monitor(source: object, interval: float = 1.0, duration: float | None = None,
            target: str = "") -> Series:
    """Sample ``source`` (anything with ``collect() -> Pages``) every ``interval`` seconds for
    ``duration`` seconds (until Ctrl-C or the target exits when None); return the series."""
    return Sampler(source, interval, target=target).run(duration)
