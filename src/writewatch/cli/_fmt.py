"""Shared output helpers for the subcommands: JSON, tables (rich when installed), sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def dump_json(obj: Any, file: Any = None) -> None:
    json.dump(obj, file or sys.stdout, indent=2, default=_default)
    (file or sys.stdout).write("\n")


def _default(o: Any) -> Any:
    import numpy as np
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
          left: Sequence[str] | None = None, wrap: Sequence[str] = ()) -> None:
    """Print a table with rich when it is installed, as aligned plain text otherwise.
    ``left``: the columns justified left (default: all); ``wrap``: the columns that may wrap
    (when ``left`` is given; otherwise all may)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in
                  enumerate(columns)]
        print(title)
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
        return
    t = Table(title=title, title_justify="left")
    for c in columns:
        if left is None:
            t.add_column(str(c))
        else:
            t.add_column(str(c), justify="left" if c in left else "right", no_wrap=c not in wrap)
    for r in rows:
        t.add_row(*(str(v) for v in r))
    Console(width=None if sys.stdout.isatty() else 160).print(t)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
