"""Figures of a comparison (``writewatch model compare --plot FILE``), with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .metrics import Metrics

#: (title, Metrics attribute) of the bar panels
BARS = (("lost changes (false −)", "false_negatives"),
        ("false positives", "false_positives"),
        ("page tables at peak, KiB", "pt_peak_bytes"),
        ("kernel time per collect, µs (modelled)", "collect_us"))


def plot_compare(results: Sequence[Metrics], path: str) -> None:
    """One row per workload: the bar panels of :data:`BARS` per design, and the modelled
    kernel time of every collect over the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(m.workload for m in results))
    fig, axes = plt.subplots(len(workloads), len(BARS) + 1,
                             figsize=(4.2 * (len(BARS) + 1), 3.4 * len(workloads)),
                             squeeze=False)
    for row, w in enumerate(workloads):
        ms = [m for m in results if m.workload == w and m.available]
        names = [m.design for m in ms]
        for col, (title, attr) in enumerate(BARS):
            ax: Any = axes[row][col]
            vals = [float(getattr(m, attr)) / (1024 if attr.endswith("bytes") else 1)
                    for m in ms]
            ax.barh(names, vals, color="tab:red" if attr == "false_negatives" else None)
            ax.set_title(f"{w}: {title}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.invert_yaxis()
        ax = axes[row][len(BARS)]
        for m in ms:
            if m.series:
                ax.plot([s.index for s in m.series], [s.modelled_us for s in m.series],
                        label=m.design, linewidth=1)
        ax.set_title(f"{w}: µs per collect over the run", fontsize=9)
        ax.set_xlabel("collect", fontsize=8)
        ax.tick_params(labelsize=7)
        if ms:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["BARS", "plot_compare"]
