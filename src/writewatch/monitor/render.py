"""Pictures of a :class:`Series`: the write heatmap (address × time) and the rate plot.

matplotlib is imported here only, with the Agg backend (no display needed).

The heatmap compresses the sparse address space the way damo's ``--draw_range hottest``
avoids drawing empty gaps: the y axis is made of *bands*, one per mapping that was written
(clipped to the span of its written pages), stacked in address order with the gaps between
them removed; small mappings beyond the ``max_bands`` most written share one last band of their
written pages. Each cell is the fraction of the pages in its address bin written in its time
column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pages import Pages
from .series import Series, bytes_in

__all__ = ["Band", "heatmap", "heatmap_matrix", "rate_plot"]


@dataclass(frozen=True)
class Band:
    """A horizontal band of the heatmap: ``rows`` address bins, bin ``i`` made of the ranges
    ``[lo[j], hi[j])`` with ``bin[j] == i``."""

    label: str
    start: int  #: lowest address drawn
    end: int  #: highest address drawn
    rows: int
    lo: np.ndarray
    hi: np.ndarray
    bin: np.ndarray
    height: float = 1.0  #: share of the picture's height
    gathered: bool = False  #: pages gathered from several places (no address scale)

    @property
    def capacity(self) -> np.ndarray:
        """Bytes in each row's bin."""
        return np.bincount(self.bin, self.hi - self.lo, minlength=self.rows)


def _split(start: int, end: int, rows: int, ps: int) -> tuple[np.ndarray, np.ndarray]:
    npages = (end - start) // ps
    cuts = np.unique(np.linspace(0, npages, rows + 1).round().astype(np.int64))
    return start + cuts[:-1] * ps, start + cuts[1:] * ps


def bands(series: Series, max_bands: int = 10, rows: int = 480) -> list[Band]:
    """The heatmap's y axis for ``series`` (see the module docstring)."""
    ps = series.page_size
    ws = series.working_set
    if not ws:
        return []
    # 1. per mapping name, the extent of its written pages (mappings of one name that touch or
    #    overlap, like a heap that grew, become one band)
    ext: list[tuple[str, int, int, int]] = []  # (label, lo, hi, pages written there)
    claimed = Pages((), ps)
    written = series.region_pages()
    for r in sorted((r for r in written if r >= 0), key=lambda r: series.regions[r].start):
        g = series.regions[r]
        part = ws.clip(g.start, g.end) - claimed
        if not part:
            continue
        claimed = claimed | part
        lo, hi = int(part.ranges[0, 0]), int(part.ranges[-1, 1])
        if ext and ext[-1][0] == g.name and lo <= ext[-1][2] + 64 * ps:
            name, plo, phi, n = ext[-1]
            ext[-1] = (name, plo, max(phi, hi), n + len(part))
        else:
            ext.append((g.name, lo, hi, len(part)))
    rest = ws - claimed
    # 2. keep the bands with the most pages written over time (not counting conservative
    #    reports); the others join the "other" band
    if ext:
        lo_a = np.array([e[1] for e in ext], np.int64)
        hi_a = np.array([e[2] for e in ext], np.int64)
        activity = np.zeros(len(ext), np.int64)
        for iv in series.intervals:
            activity += bytes_in(iv.proven.ranges, lo_a, hi_a)
        ext = [(e[0], e[1], e[2], int(a)) for e, a in zip(ext, activity.tolist(), strict=True)]
    keep = sorted(sorted(range(len(ext)), key=lambda i: (-ext[i][3], ext[i][1]))[:max_bands])
    other = rest
    for i in set(range(len(ext))) - set(keep):
        other = other | ws.clip(ext[i][1], ext[i][2])
    chosen = [ext[i] for i in keep]
    n_other = len(ext) - len(keep)
    # 3. height: proportional to sqrt(pages spanned), at least 1/25 of the picture each;
    #    address bins: as many rows as the height allows, at most one per page
    spans = [(hi - lo) // ps for _, lo, hi, _ in chosen] + ([len(other)] if other else [])
    w = np.sqrt(np.asarray(spans, float))
    height = np.maximum(w / w.sum(), 1 / 30)
    height /= height.sum()
    alloc = np.maximum(np.minimum(np.floor(height * rows), spans), 1).astype(int).tolist()
    out: list[Band] = []
    for (label, lo, hi, _), nr, h in zip(chosen, alloc, height.tolist(), strict=False):
        blo, bhi = _split(lo, hi, nr, ps)
        out.append(Band(label, lo, hi, len(blo), blo, bhi, np.arange(len(blo)), h))
    if other:
        nr = int(alloc[-1])
        addrs = other.addresses().astype(np.int64)
        binid = (np.arange(len(addrs)) * nr // len(addrs)).astype(np.int64)
        what = "unmapped" if not n_other else f"{n_other} other mapping{'s' * (n_other > 1)}"
        if n_other and rest:
            what += " + unmapped"
        out.append(Band(f"[{what}]", int(addrs[0]), int(addrs[-1]) + ps, nr, addrs,
                        addrs + ps, binid, float(height[-1]), gathered=True))
    return out


def heatmap_matrix(series: Series, max_bands: int = 10, rows: int = 480, columns: int = 800,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Band]]:
    """``(proven, conservative, time_edges, bands)``: ``proven[row, col]`` is the fraction of
    the pages of address bin ``row`` reported written during time column ``col``,
    ``conservative`` the fraction reported only conservatively (memory not armed yet). Rows
    go bottom-up in address order, bands stacked; consecutive intervals are merged into one
    column when there are more than ``columns``."""
    bl = bands(series, max_bands, rows)
    ivs = series.intervals
    ncol = min(len(ivs), columns)
    groups = np.array_split(np.arange(len(ivs)), ncol) if ncol else []
    edges = np.array([ivs[g[0]].t_start for g in groups] + ([ivs[-1].t_end] if ivs else []))
    nrows = sum(b.rows for b in bl)
    proven = np.zeros((nrows, ncol))
    cons = np.zeros((nrows, ncol))
    cap = np.maximum(np.concatenate([b.capacity for b in bl]), 1) if bl else np.zeros(0)
    ps = series.page_size
    for c, g in enumerate(groups):
        p, q = Pages((), ps), Pages((), ps)
        for i in g:
            p = p | ivs[i].proven
            q = q | ivs[i].written
        for m, pages in ((proven, p), (cons, q - p)):
            r = pages.ranges
            if not len(r):
                continue
            row0 = 0
            for b in bl:
                got = bytes_in(r, b.lo, b.hi)
                m[row0:row0 + b.rows, c] = np.bincount(b.bin, got, minlength=b.rows)
                row0 += b.rows
            m[:, c] /= cap
    return proven, cons, edges, bl


def _save(fig: Any, path: str) -> None:
    """Save in the format the suffix names, PNG when it names none matplotlib knows."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    fig.savefig(path, format=ext if ext in fig.canvas.get_supported_filetypes() else "png")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def heatmap(series: Series, path: str, *, title: str | None = None, max_bands: int = 10,
            rows: int = 480, columns: int = 800, dpi: int = 110) -> None:
    """Write the heatmap PNG (or any format matplotlib knows from the suffix)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    m, cons, edges, bl = heatmap_matrix(series, max_bands, rows, columns)
    fig_h = min(4.0 + 0.35 * len(bl), 14.0)
    fig, ax = plt.subplots(figsize=(11, fig_h), dpi=dpi, layout="constrained")
    if not bl or not m.size:
        ax.text(0.5, 0.5, "no writes observed", ha="center", va="center",
                transform=ax.transAxes)
    else:
        ybounds = np.cumsum([0.0] + [b.height for b in bl])
        yedges = np.concatenate([np.linspace(y0, y0 + b.height, b.rows + 1)[:-1]
                                 for y0, b in zip(ybounds, bl, strict=False)] + [[1.0]])
        if cons.any():
            grey = matplotlib.colors.ListedColormap(["#9ecae1"]).with_extremes(bad=(0, 0, 0, 0))
            ax.pcolormesh(edges, yedges, np.ma.masked_less_equal(cons, 0), cmap=grey,
                          shading="flat")
        masked = np.ma.masked_less_equal(m, 0)
        cmap = matplotlib.colormaps["inferno_r"].with_extremes(bad=(0, 0, 0, 0))
        lo = max(float(masked.min()) if masked.count() else 1.0, 1e-4)
        mesh = ax.pcolormesh(edges, yedges, masked, cmap=cmap,
                             norm=LogNorm(vmin=min(lo, 0.99), vmax=1.0), shading="flat")
        cb = fig.colorbar(mesh, ax=ax, pad=0.01)
        cb.set_label("fraction of the bin's pages written")
        if cons.any():
            ax.text(1.0, -0.07, "light blue: reported whole, not proven written (memory not "
                    "armed yet, e.g. a new mapping)", transform=ax.transAxes, ha="right",
                    va="top", fontsize=7, color="#3182bd")
        ticks, labels = [], []
        for y0, b in zip(ybounds, bl, strict=False):
            if y0:
                ax.axhline(y0, color="0.6", lw=0.6)
            ticks.append(y0 + b.height / 2)
            sep = "\n" if b.height >= 1 / 16 else " "  # thin bands: one line
            if b.gathered:
                labels.append(f"{b.label[:30]}{sep}{_mib(int(b.capacity.sum()))} written")
            else:
                labels.append(f"{b.label[:30]}{sep}{b.start:#x} +{_mib(b.end - b.start)}")
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_ylim(0, 1)
    s = series.summary()
    ax.set_xlabel("time (s)")
    ax.set_ylabel("address (written mappings, gaps removed)")
    ax.set_title(title or (
        f"pages written — {series.target or 'target'}: {s.working_set_bytes / 2**20:.1f} MiB "
        f"working set, peak {s.peak_rate:.1f} MB/s, {series.interval * 1000:g} ms interval"),
        fontsize=9)
    _save(fig, path)
    plt.close(fig)


def rate_plot(series: Series, path: str, *, title: str | None = None, dpi: int = 110) -> None:
    """Write a PNG of the dirty rate per interval (MB/s) and the working set over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ivs = series.intervals
    fig, ax = plt.subplots(figsize=(10, 5), dpi=dpi, layout="constrained")
    s = series.summary()
    if ivs:
        t = np.array([iv.t_start for iv in ivs] + [ivs[-1].t_end])
        rate = np.array([iv.rate for iv in ivs])
        dt = np.array([max(iv.dt, 1e-9) for iv in ivs])
        proven = np.array([iv.proven.nbytes for iv in ivs]) / 1e6 / dt
        if (rate > proven).any():
            ax.stairs(rate, t, fill=True, color="#9ecae1",
                      label="reported whole, not proven written (new mappings)")
        ax.stairs(proven, t, fill=True, color="#f4b0ae")
        ax.stairs(proven, t, color="tab:red", label="dirty rate (MB/s)")
        ax.axhline(s.mean_rate, color="tab:red", ls="--", lw=0.8,
                   label=f"mean {s.mean_rate:.1f} MB/s")
        ax.axhline(s.p95_rate, color="tab:red", ls=":", lw=0.8,
                   label=f"p95 {s.p95_rate:.1f} MB/s")
        ax2: Any = ax.twinx()
        ws = np.array([iv.working_set_pages for iv in ivs]) * series.page_size / 2**20
        ax2.plot([iv.t_end for iv in ivs], ws, color="tab:blue", lw=1.2,
                 label="write working set (MiB)")
        ax2.set_ylabel("write working set (MiB)", color="tab:blue")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=3, fontsize=8,
                   frameon=False)
    else:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("dirty rate (MB/s)", color="tab:red")
    ax.set_title(title or f"dirty rate — {series.target or 'target'} "
                 f"({series.interval * 1000:g} ms interval, peak {s.peak_rate:.1f} MB/s)",
                 fontsize=9)
    _save(fig, path)
    plt.close(fig)
