"""Reading the pages of a save: stop-and-copy, or pre-copy under a pause budget.

Stop-and-copy stops the target, collects, reads every page the snapshot needs and resumes
it: the pause grows with what is read. Pre-copy (``max_pause``) reads while the target runs
and stops it only for what is left, the way live migration does (QEMU's RAM pre-copy,
CRIU's ``pre-dump`` iterations):

1. collect (the tracker re-arms the pages it reports in the same kernel call), drop the
   copies of those pages read earlier in this save, and read every page the snapshot needs
   that has no valid copy, while the target runs;
2. again, round after round, until what is left is predicted to fit the budget (the
   measured fixed cost of a stop plus the bytes left at the measured read rate);
3. stop the target, collect, drop, read what is left, resume.

Why the image is exactly memory at the final stop: a copy of page p is kept only if no
collect after its read reported p. A write to p after a collect re-armed it faults and marks
p written (async uffd-wp; PAGEMAP_SCAN reports it at the next collect), so a copy that is
kept was read after p's last write before the stop. Pages the tracker does not cover give no
such guarantee: they are read during the stop, whatever the budget.

When writes outpace reads (the budget is not met after ``rounds`` rounds or ``seconds``, or
three rounds in a row leave no less to read), or when the stop alone (stopping, collecting)
costs more than the budget and what is left to read is already small next to it, the
target is stopped anyway and the report says so (``converged=False``). The image is exact
either way; only the pause is longer.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors
from ..pages import Pages
from .format import Region
from .source import Source

__all__ = ["Gathered", "PageArena", "PrecopyReport", "gather"]

_U64 = np.uint64


def _expand(pages: Pages) -> np.ndarray:
    return pages.addresses() if pages else np.empty(0, _U64)


def _mask_in(addrs: np.ndarray, pages: Pages) -> np.ndarray:
    """For sorted ``addrs``: which lie in ``pages``."""
    n = len(addrs)
    if not n or not pages:
        return np.zeros(n, bool)
    r = pages.ranges
    lo = np.searchsorted(addrs, r[:, 0])
    hi = np.searchsorted(addrs, r[:, 1])
    d = np.zeros(n + 1, np.int64)
    np.add.at(d, lo, 1)
    np.add.at(d, hi, -1)
    return np.cumsum(d[:-1]) > 0


def _pages_of(addrs: np.ndarray, ps: int) -> Pages:
    """Sorted, distinct page addresses as a page set (no sort)."""
    if not len(addrs):
        return Pages((), ps)
    brk = np.flatnonzero(np.diff(addrs.astype(np.int64)) != ps) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [len(addrs)]])
    out = np.stack([addrs[starts], addrs[ends - 1] + _U64(ps)], axis=1)
    return Pages._trusted(np.ascontiguousarray(out, _U64), ps)


class PageArena:
    """Copies of pages read during one save, in fixed-size blocks (from the Snapshotter's
    buffer pool). ``valid`` (a page set) says which copies are current. Pages read for the
    first time take consecutive slots, so a run of them is read straight into its block;
    a page read again while the target runs is read into a scratch buffer and copied over
    its slot; a page read again during the stop (``fresh``) takes a new slot instead, so the
    stop only reads, straight into blocks, and does no work proportional to the image."""

    def __init__(self, page_size: int, block_pages: int, new_block: Callable[[], np.ndarray],
                 release: Callable[[np.ndarray], None]) -> None:
        self.ps = page_size
        self.bp = block_pages
        self._new_block = new_block
        self._release = release
        self.blocks: list[np.ndarray] = []
        self.addr = np.empty(0, _U64)  # sorted
        self.slot = np.empty(0, np.int64)
        self.valid = Pages((), page_size)
        self.nslots = 0
        self._tmp = np.empty(0, np.uint8)

    def valid_pages(self) -> Pages:
        return self.valid

    def invalidate(self, pages: Pages) -> None:
        if pages and self.valid:
            self.valid = self.valid - pages

    def _rows(self, slot0: int, n: int) -> np.ndarray:
        b, r = divmod(slot0, self.bp)
        return self.blocks[b].reshape(-1, self.ps)[r:r + n]

    def _grow(self, nslots: int) -> None:
        while len(self.blocks) * self.bp < nslots:
            self.blocks.append(self._new_block())

    def reserve(self, npages: int) -> None:
        """Have blocks for ``npages`` more pages, their memory faulted in now: a block
        first touched during the stop would add its page faults to the pause."""
        self._grow(self.nslots + npages)

    def read(self, src: Source, pages: Pages, *, strict: bool, fresh: bool = False
             ) -> tuple[int, int]:
        """Read ``pages`` from ``src`` and mark them valid; returns (bytes read, of them
        bytes of pages read before). Not ``strict`` (the target runs): a range that cannot be
        read (unmapped meanwhile) is left invalid instead of raising. ``fresh``: every page
        takes a new slot (no copying)."""
        want = _expand(pages)
        if not len(want):
            return 0, 0
        pos = np.searchsorted(self.addr, want)
        pc = np.minimum(pos, max(len(self.addr) - 1, 0))
        old = (pos < len(self.addr)) & (self.addr[pc] == want) if len(self.addr) else \
            np.zeros(len(want), bool)
        ok = np.ones(len(want), bool)
        move = np.ones(len(want), bool) if fresh else ~old  # pages taking new slots
        slots = self.nslots + np.cumsum(move) - 1
        self._grow(self.nslots + int(move.sum()))
        self.nslots += int(move.sum())
        where = np.flatnonzero(move)
        self._read_new(src, want[where], slots[where], ok, where, strict)
        if not fresh and old.any():
            where = np.flatnonzero(old)
            self._read_old(src, want[where], self.slot[pc[where]], ok, where, strict)
        if fresh and old.any():  # re-read pages point at their new slots
            self.slot[pc[old]] = slots[old]
        new = ~old
        if new.any():  # insert the new pages, keeping addr sorted (no re-sort)
            at = pos[new]
            self.addr = np.insert(self.addr, at, want[new])
            self.slot = np.insert(self.slot, at, slots[new])
        self.valid = self.valid | _pages_of(want[ok], self.ps)
        return int(ok.sum()) * self.ps, int((old & ok).sum()) * self.ps

    def _read_new(self, src: Source, addrs: np.ndarray, slots: np.ndarray, ok: np.ndarray,
                  where: np.ndarray, strict: bool) -> None:
        """Pages taking new, consecutive slots: read straight into blocks."""
        if not len(addrs):
            return
        ps = self.ps
        # split where the address run breaks or a block ends
        brk = (np.diff(addrs.astype(np.int64)) != ps) | (np.diff(slots // self.bp) != 0)
        starts = np.concatenate([[0], np.flatnonzero(brk) + 1])
        ends = np.concatenate([starts[1:], [len(addrs)]])
        runs = np.stack([addrs[starts], addrs[starts] + (ends - starts).astype(_U64) *
                         _U64(ps)], axis=1)
        blk = slots[starts] // self.bp
        bounds = np.flatnonzero(np.diff(blk)) + 1
        for part in np.split(np.arange(len(runs)), bounds):
            s0, s1 = int(starts[part[0]]), int(ends[part[-1]])
            out = self._rows(int(slots[s0]), s1 - s0).reshape(-1)
            _read(src, runs[part], out, ok, where[s0:s1], ps, strict)

    def _read_old(self, src: Source, addrs: np.ndarray, slots: np.ndarray, ok: np.ndarray,
                  where: np.ndarray, strict: bool) -> None:
        """Pages read again while the target runs: into scratch, then over their slots."""
        ps = self.ps
        if self._tmp.nbytes < len(addrs) * ps:  # kept for the next rounds
            self._tmp = np.empty(len(addrs) * ps, np.uint8)
        tmp = self._tmp[:len(addrs) * ps]
        runs = _pages_of(addrs, ps).ranges
        _read(src, runs, tmp, ok, where, ps, strict)
        rows = tmp.reshape(-1, ps)
        blk = slots // self.bp
        for b in np.unique(blk).tolist():
            sel = blk == b
            self.blocks[b].reshape(-1, ps)[slots[sel] % self.bp] = rows[sel]

    def gather(self, runs: np.ndarray, out: Callable[[int], np.ndarray]
               ) -> tuple[np.ndarray, bool]:
        """The pages of ``runs`` (all valid) back to back: a view of a block when their slots
        are consecutive in one (False), else copied into ``out(nbytes)`` (True: a buffer of
        the caller's pool)."""
        want = Pages._trusted(np.ascontiguousarray(runs, _U64), self.ps).addresses()
        slots = self.slot[np.searchsorted(self.addr, want)]
        n = len(slots)
        if n and int(slots[-1]) - int(slots[0]) == n - 1 and \
                int(slots[0]) // self.bp == int(slots[-1]) // self.bp and \
                (n == 1 or bool((np.diff(slots) == 1).all())):
            return self._rows(int(slots[0]), n).reshape(-1), False
        buf = out(n * self.ps)
        rows = buf.reshape(-1, self.ps)
        blk = slots // self.bp
        for b in np.unique(blk).tolist():
            sel = blk == b
            rows[sel] = self.blocks[b].reshape(-1, self.ps)[slots[sel] % self.bp]
        return buf, True

    def close(self) -> None:
        for b in self.blocks:
            self._release(b)
        self.blocks = []


def _read(src: Source, runs: np.ndarray, out: np.ndarray, ok: np.ndarray, where: np.ndarray,
          ps: int, strict: bool) -> None:
    """``src.read(runs, out)``; when not strict, a failing batch is retried range by range and
    the pages of the ranges that still fail are marked not ok."""
    try:
        src.read(runs, out)
        return
    except (errors.WriteWatchError, OSError):
        if strict:
            raise
    pos = 0
    for lo, hi in runs.tolist():
        n = (hi - lo) // ps
        try:
            src.read(np.array([[lo, hi]], _U64), out[pos * ps:(pos + n) * ps])
        except (errors.WriteWatchError, OSError):
            ok[where[pos:pos + n]] = False
        pos += n


@dataclass(frozen=True)
class PrecopyReport:
    """How the pages of one save were read."""

    max_pause: float | None  #: the budget (None: stop-and-copy)
    rounds: int = 0  #: rounds of reading while the target ran
    running_bytes: int = 0  #: bytes read while it ran
    reread_bytes: int = 0  #: of them, bytes of pages read again (written meanwhile)
    paused_bytes: int = 0  #: bytes read while it was stopped
    converged: bool | None = None  #: what was left fitted the budget (None: no pre-copy)
    #: why the rounds ended: "converged", "rounds", "time", "no progress" (writes outpace
    #: reads), "stop cost" (stopping and collecting alone take longer than the budget),
    #: "no tracker" (nothing says which pages were written), or "" (stop-and-copy)
    why: str = ""
    predicted_pause: float = 0.0  #: the pause the last round predicted

    def to_json(self) -> dict[str, Any]:
        return {"max_pause": self.max_pause, "rounds": self.rounds,
                "running_bytes": self.running_bytes, "reread_bytes": self.reread_bytes,
                "paused_bytes": self.paused_bytes, "converged": self.converged,
                "why": self.why, "predicted_pause": round(self.predicted_pause, 6)}


@dataclass(frozen=True)
class Gathered:
    """What the final stop saw, and where the pages are."""

    maps: tuple[Region, ...]
    regions: tuple[Region, ...]
    written: Pages  #: every page a collect of this save reported
    want: Pages  #: the pages the snapshot needs (all valid in the arena)
    content: Pages  #: of them, the pages to compare with the parent by content
    report: PrecopyReport
    t_collect: float  #: the final collect, inside the stop
    t_read: float  #: reading inside the stop


#: (regions, every page written so far in this save) -> (pages needed, pages compared by
#: content, pages without write tracking that must be read while stopped)
WantFn = Callable[[tuple[Region, ...], Pages], tuple[Pages, Pages, Pages]]


@dataclass
class Budget:
    """Pre-copy limits and what earlier saves measured."""

    max_pause: float
    rounds: int = 12
    seconds: float = 30.0
    stop_cost: float | None = None  #: measured: a stop's time minus its reading
    read_rate: float | None = None  #: measured bytes/s of reads

    def fixed(self, t_collect: float) -> float:
        """A stop's cost without reading: measured, or guessed from a collect's."""
        return self.stop_cost if self.stop_cost is not None else 2 * t_collect + 1e-3

    def predict(self, nbytes: int, t_collect: float) -> float:
        return self.fixed(t_collect) + nbytes / (self.read_rate or 1e9)


def _rounds(src: Source, want_of: WantFn, arena: PageArena, budget: Budget
            ) -> tuple[Pages, PrecopyReport]:
    """Pre-copy rounds while the target runs, until what is left fits ``budget`` or the
    rounds end without convergence; the pages written so far, and the report's rounds part."""
    written = Pages((), src.page_size)
    rounds = running = reread = 0
    t0 = time.perf_counter()
    best, stale = math.inf, 0
    while True:
        regions = src.regions(src.maps())
        tc = time.perf_counter()
        got = src.collect()
        t_coll = time.perf_counter() - tc
        written = written | got
        arena.invalidate(got)
        want, _, untracked = want_of(regions, written)
        todo = (want - untracked) - arena.valid_pages()
        predicted = budget.predict(todo.nbytes + untracked.nbytes, t_coll)
        fixed = budget.fixed(t_coll)
        stale = stale + 1 if todo.nbytes >= best else 0
        best = min(best, todo.nbytes)
        if predicted <= budget.max_pause:
            why = "converged"
        elif budget.stop_cost is not None and fixed > budget.max_pause and \
                predicted - fixed <= max(budget.max_pause, 0.1 * fixed):
            # a stop measured by an earlier save exceeds the budget by itself (not guessed
            # from a collect: the first after attaching arms and classifies everything)
            why = "stop cost"
        elif rounds >= budget.rounds:
            why = "rounds"
        elif stale >= 3:
            why = "no progress"  # writes outpace reads
        elif time.perf_counter() - t0 >= budget.seconds:
            why = "time"
        else:
            tr = time.perf_counter()
            got_bytes, again = arena.read(src, todo, strict=False)
            dt = time.perf_counter() - tr
            if got_bytes and dt > 0:
                budget.read_rate = got_bytes / dt
            running += got_bytes
            reread += again
            rounds += 1
            continue
        return written, PrecopyReport(budget.max_pause, rounds, running, reread, 0,
                                      why == "converged", why, predicted)


def gather(src: Source, want_of: WantFn, arena: PageArena, budget: Budget | None,
           paused: Callable[[], Any], tracked: bool, expect: int = 0) -> Gathered:
    """Read every page the snapshot needs into ``arena``: stop-and-copy when ``budget`` is
    None, else pre-copy rounds first (:mod:`this module <.precopy>`). ``expect``: how many
    pages the stop is expected to read (the last save's), reserved before it."""
    written = Pages((), src.page_size)
    report = PrecopyReport(None)
    if budget is not None and not tracked:
        report = PrecopyReport(budget.max_pause, converged=False, why="no tracker")
    elif budget is not None:
        written, report = _rounds(src, want_of, arena, budget)
    # the stop's destination memory is faulted in before it: what is known to be needed
    # now, or what the last stop read
    ahead, _, _ = want_of(src.regions(src.maps()), written)
    arena.reserve(max(expect, len(ahead - arena.valid_pages())))
    with paused():
        tc = time.perf_counter()
        got = src.collect()
        t_collect = time.perf_counter() - tc
        # the layout after the collect: registering a mapping that appeared since the last
        # one can merge it with its registered neighbour (vma_modify_flags_uffd), and the
        # image keeps the layout the stopped target has, not the one before that merge
        maps = src.maps()
        regions = src.regions(maps)
        written = written | got
        arena.invalidate(got)
        want, content, untracked = want_of(regions, written)
        arena.invalidate(untracked)
        tr = time.perf_counter()
        paused_bytes, _ = arena.read(src, want - arena.valid_pages(), strict=True, fresh=True)
        t_read = time.perf_counter() - tr
    report = dataclasses.replace(report, paused_bytes=paused_bytes)
    return Gathered(maps, regions, written, want, content, report, t_collect, t_read)
