"""An optional progress bar (rich) for long saves and restores."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: below this many bytes no bar is shown in "auto" mode
AUTO_BYTES = 256 << 20


@contextmanager
def progress(description: str, total: int, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``. ``enabled=None`` shows a bar when stderr is a terminal and
    the work is at least :data:`AUTO_BYTES`."""
    if enabled is None:
        enabled = total >= AUTO_BYTES and sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    try:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
    except ImportError:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
