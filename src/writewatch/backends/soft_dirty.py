"""Soft-dirty: ``/proc/PID/clear_refs`` value 4 and pagemap bit 55 (x86-64, s390, ppc64 with
``CONFIG_MEM_SOFT_DIRTY``; not arm64). Works on every kernel since 3.11, for this process and
for others.

Kernel semantics (Documentation/admin-guide/mm/soft-dirty.rst, fs/proc/task_mmu.c):

* Writing 4 to ``clear_refs`` clears the soft-dirty bit of every PTE and ``VM_SOFTDIRTY`` of
  every VMA **of the whole process** (``clear_refs_write`` walks the whole mm under the mmap
  write lock) and write-protects the PTEs; the next write faults and sets the bit again. There
  is no ranged reset: ``ranged_reset`` is False. A collect that resets therefore reads every
  span of every soft-dirty backend on the same process first (in the same step), and keeps
  what the others' spans held for their next collect. Another user of ``clear_refs`` on the
  same process (CRIU's pre-dump, a second library, a shell ``echo 4``) clears our bits too:
  writes made before its reset are lost to us. Nothing can detect that.
* Bit 55 reads ``pte_soft_dirty(pte) || (vma->vm_flags & VM_SOFTDIRTY)``. The kernel sets
  ``VM_SOFTDIRTY`` on every new or expanded VMA (``mmap_region``, ``brk``, stack growth,
  ``mremap`` growth) so that unmap + map at the same place reads dirty. Every page of such a
  VMA reads dirty, written or not, until the next reset: those are real false positives of
  the mechanism. They are reported as written, never hidden, and counted in
  ``Collected.conservative`` with a reason when this backend can tell: ``/proc/PID/smaps``
  ``VmFlags`` shows ``sd`` on the VMA, or a hole (no PTE) inside the VMA reads dirty (a hole
  has no PTE bit, so only ``VM_SOFTDIRTY`` makes it dirty).
* A merge of a clean VMA with a new one makes the whole merged VMA read dirty (false
  positives). Before "mm: propagate VM_SOFTDIRTY on merge" (bf14d4a05387, ~6.19, backported
  to 6.18.y) some merges could instead drop ``VM_SOFTDIRTY`` (false negatives on the new
  part's holes; populated pages keep their PTE bits).
* mprotect RO/RW toggles do not set the bit since 6.0 (``vma_soft_dirty_enabled``).
* ``mremap`` sets the bit on every moved PTE (``move_soft_dirty_pte``).
* A transparent huge page carries one bit for the whole PMD: a write to one 4 KiB page of a
  PMD-mapped THP reports all 512 (false positives, not told apart).
* Pinned COW pages are skipped by ``clear_refs`` (``pte_is_pinned``): they read dirty forever.
* The bit lives in the PTE. A page that leaves memory loses it: a shmem page swapped out, a
  file page written back and reclaimed, a ``MADV_DONTNEED`` zap. Pages that were resident at
  the last reset and are gone now are reported (conservatively: their content may differ). A
  page first faulted in *after* the last reset, written, and reclaimed before the next collect
  (file or shmem memory only: anonymous memory keeps the bit in its swap entry) is not
  reported: the kernel kept no trace of it.
* A span whose mapped layout changed since the last reset (munmap, mremap away, partial
  unmap) is reported whole, with a reason.

Reading and resetting without losing writes. Pages read clean and then written before the
reset would be lost (the reset clears their bit). So:

* Another process is stopped with SIGSTOP while its pagemap is read and its ``clear_refs``
  written, and continued with SIGCONT in a ``finally`` (a process found already stopped is
  left as it was). The stop is visible to its parent (``waitpid(WUNTRACED)``, SIGCHLD with
  CLD_STOPPED/CLD_CONTINUED) and to job control; a process that is stopped by someone else
  while we hold it is continued by our SIGCONT.
* In this process the reads (``pread`` of pagemap, or the ``PAGEMAP_SCAN`` ioctl) and the
  ``clear_refs`` write are made by one C-level iteration, ``list(map(partial.__call__,
  calls))``, over libc functions loaded with :class:`ctypes.PyDLL`, which does not release
  the GIL around the call. No bytecode runs between the calls (the cyclic garbage collector,
  whose finalizers are bytecode, is paused), so the interpreter never checks for a GIL drop
  request there: **no other Python thread runs from the first read to the reset**, so no
  write made by Python code can fall between them. Not covered: a native
  thread (C, Rust, numpy kernels, I/O into a buffer by ``readinto``, a ``ctypes.CDLL`` call)
  that released the GIL, and other threads or processes sharing the memory (``MAP_SHARED``
  with another process, a thread created by native code). A write such a thread makes to a
  page after that page's entry was read and before ``clear_refs`` is written is lost. The
  window is the duration of the reads plus the ``clear_refs`` walk (microseconds to
  milliseconds, proportional to the tracked size and to the process's mapped memory). Stop or
  quiesce such writers around ``collect()`` when that matters; uffd-async has no such window.
* A read that fails inside that step cannot undo the reset: the affected span is then
  reported whole, with the reason.

On 6.8+ the ``PAGEMAP_SCAN`` ioctl reports ``PAGE_IS_SOFT_DIRTY`` (same meaning as bit 55) and
is used when present (``method="auto"``); older kernels read the classic 64-bit entries.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, Capabilities, KernelCalls, procfs
from ..kernel.probes import Probe
from ..pages import Pages
from .base import Backend, Collected, Span, register

__all__ = ["PageState", "SoftDirtyBackend", "probe"]

_SD = np.uint64(U.PagemapBit.SOFT_DIRTY)
_PRESENT = np.uint64(U.PagemapBit.PRESENT)
_SWAPPED = np.uint64(U.PagemapBit.SWAPPED)
_CAT_SD = int(U.PageCategory.SOFT_DIRTY)
_CAT_PRESENT = int(U.PageCategory.PRESENT)
_CAT_SWAPPED = int(U.PageCategory.SWAPPED)
_EMPTY = np.empty((0, 2), np.uint64)

# ---------------------------------------------------------------------------------------------
# Pure decoders

class PageState(NamedTuple):
    """What one read found for one span, one element per page."""

    dirty: np.ndarray  #: bit 55 / PAGE_IS_SOFT_DIRTY
    present: np.ndarray
    swapped: np.ndarray  #: swap entry or any other non-present non-none entry
    ok: bool = True  #: False when the read failed (the span is then reported whole)

    @property
    def resident(self) -> np.ndarray:
        out: np.ndarray = self.present | self.swapped
        return out


def decode_state(raw: np.ndarray) -> PageState:
    """Classic pagemap entries -> :class:`PageState` (pure, vectorised)."""
    raw = np.asarray(raw, dtype=np.uint64)
    return PageState((raw & _SD) != 0, (raw & _PRESENT) != 0, (raw & _SWAPPED) != 0)


def state_from_regions(regions: np.ndarray, start: int, npages: int,
                       page_size: int) -> PageState:
    """PAGEMAP_SCAN regions ``(start, end, categories)`` -> :class:`PageState` (pure).

    Pages in no region (outside every VMA) are clean, absent."""
    cats = np.zeros(npages, np.uint64)
    if len(regions):
        lo = ((regions[:, 0] - np.uint64(start)) // np.uint64(page_size)).astype(np.int64)
        hi = ((regions[:, 1] - np.uint64(start)) // np.uint64(page_size)).astype(np.int64)
        lens = hi - lo
        idx = np.repeat(np.arange(len(regions)), lens)
        within = np.arange(len(idx)) - np.repeat(np.cumsum(lens) - lens, lens)
        cats[lo[idx] + within] = regions[idx, 2]
    return PageState((cats & np.uint64(_CAT_SD)) != 0, (cats & np.uint64(_CAT_PRESENT)) != 0,
                     (cats & np.uint64(_CAT_SWAPPED)) != 0)


# ---------------------------------------------------------------------------------------------
# Backends sharing one process's soft-dirty state

class _Group:
    """The soft-dirty backends of this interpreter tracking one process: a reset by one
    clears the bits of all, so it reads the spans of all first."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.members: weakref.WeakSet[SoftDirtyBackend] = weakref.WeakSet()


_groups_lock = threading.Lock()
#: per kernel object, per process: the soft-dirty backends sharing its bits
_groups: weakref.WeakKeyDictionary[KernelCalls, dict[int, _Group]] = weakref.WeakKeyDictionary()


def _group(kernel: KernelCalls, pid: int) -> _Group:
    with _groups_lock:
        groups = _groups.setdefault(kernel, {})
        g = groups.get(pid)
        if g is None:
            g = groups[pid] = _Group()
        return g


def _leave(kernel: KernelCalls, pid: int, backend: SoftDirtyBackend) -> None:
    with _groups_lock:
        groups = _groups.get(kernel, {})
        g = groups.get(pid)
        if g is not None:
            g.members.discard(backend)
            if not g.members:
                del groups[pid]


def probe(kernel: KernelCalls = LINUX) -> tuple[bool, str]:
    """Whether soft-dirty works on ``kernel``, and why not (a functional test: see
    :mod:`writewatch.kernel.probes`)."""
    got = SoftDirtyBackend.available(kernel.capabilities())
    return got.ok, got.detail


@dataclass
class _SpanState:
    """Per tracked span: what the last reset saw, and what is owed to the next collect."""

    layout: tuple[tuple[int, int], ...]  #: mapped parts at the last reset
    resident: np.ndarray  #: present or swapped at the last reset
    pending: np.ndarray | None = None  #: written, cleared by a reset, not yet reported
    pending_cons: np.ndarray | None = None
    pending_reasons: tuple[str, ...] = ()


class _Eval(NamedTuple):
    written: np.ndarray  #: bool per page
    conservative: np.ndarray  #: bool per page
    reasons: tuple[str, ...]


@register
class SoftDirtyBackend(Backend):
    """Soft-dirty tracking of ``pid`` (``"self"`` or a PID). See the module documentation.

    ``method``: "auto" (PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY when the kernel has it, 6.8+),
    "scan" or "pagemap" (classic 64-bit entries). ``vmflags``: read ``/proc/PID/smaps`` when
    dirty pages were found, to tell pages of new or merged VMAs (``VM_SOFTDIRTY``) apart; it
    costs a walk of the whole process's page tables."""

    name: ClassVar[str] = "soft-dirty"
    since: ClassVar[str | None] = "3.11"
    ranged_reset: ClassVar[bool] = False

    @staticmethod
    def available(caps: Capabilities) -> Probe:
        return caps.soft_dirty

    def __init__(self, pid: int | str = "self", kernel: KernelCalls = LINUX, *,
                 method: str = "auto", vmflags: bool = True) -> None:
        super().__init__(pid, kernel)
        self._self = pid == "self" or pid == os.getpid()
        if method not in ("auto", "scan", "pagemap"):
            raise errors.InvalidTarget(f"unknown soft-dirty method {method!r}",
                                       hint='use "auto", "scan" or "pagemap"')
        if method == "auto":
            scan = kernel.capabilities().categories & _CAT_SD
            method = "scan" if scan else "pagemap"
        self.method = method
        #: PAGEMAP_SCAN categories read per page ("scan"), 0 for classic pagemap entries
        self._mask = _CAT_SD | _CAT_PRESENT | _CAT_SWAPPED if method == "scan" else 0
        self.vmflags = vmflags
        self._pid_key = os.getpid() if self._self else int(pid)
        self.pagemap = kernel.open_pagemap("self" if self._self else pid)
        self._state: dict[Span, _SpanState] = {}
        self._group = _group(kernel, self._pid_key)
        self._group.members.add(self)

    # -- arming ------------------------------------------------------------------------------
    def add(self, span: Span) -> None:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        if span.start % self.page_size or span.end % self.page_size or span.end <= span.start:
            raise errors.InvalidTarget(f"span {span.start:#x}-{span.end:#x} is not page aligned",
                                       op="track", start=span.start, end=span.end)
        for s in self.spans:
            if span.start < s.end and s.start < span.end:
                raise errors.InvalidTarget(
                    f"{span.start:#x}-{span.end:#x} overlaps a tracked span "
                    f"{s.start:#x}-{s.end:#x}", op="track", start=span.start, end=span.end)
        maps = self.read_maps()
        if not _mapped_parts(maps, span):
            raise errors.InvalidTarget(
                f"nothing is mapped at {span.start:#x}-{span.end:#x}", op="track",
                start=span.start, end=span.end, hint="track mapped memory")
        if self._hugetlb(span):
            # clear_refs_pte_range() leaves hugetlb entries alone (no write-protect, no
            # clear): a write to them would never be seen (observed on Debian's 6.1)
            raise errors.InvalidTarget(
                f"{span.start:#x}-{span.end:#x} is hugetlb memory, which soft-dirty does not "
                "track", op="track", start=span.start, end=span.end,
                hint="use the uffd-async (6.7+) or uffd-wp-sync backend")
        self._reset_group(extra=span, maps=maps)
        self.spans.append(span)

    def remove(self, span: Span) -> None:
        self.spans.remove(span)
        self._state.pop(span, None)

    def _hugetlb(self, span: Span) -> bool:
        """Whether a VMA of the span is hugetlb (``ht`` in smaps VmFlags)."""
        return any("ht" in flags for lo, hi, flags in self.kernel.vma_flags(self._target)
                   if lo < span.end and span.start < hi)

    @property
    def _target(self) -> int | str:
        return "self" if self._self else self.pid

    # -- reading -----------------------------------------------------------------------------
    def _decode(self, spans: Sequence[Span], got: Sequence[np.ndarray | None]
                ) -> list[PageState]:
        ps = self.page_size
        out = []
        for s, raw in zip(spans, got, strict=True):
            n = s.length // ps
            if raw is None:
                out.append(PageState(*(np.zeros(n, bool),) * 3, ok=False))
            elif self.method == "scan":
                out.append(state_from_regions(raw, s.start, n, ps))
            else:
                out.append(decode_state(raw))
        self.stats.scan_calls += len(spans)
        return out

    def _read(self, spans: Sequence[Span], clear: bool) -> list[PageState]:
        """Read every span (and with ``clear`` reset, losing nothing in between): this
        process in one GIL-held step, another one held stopped."""
        ranges = [(s.start, s.end) for s in spans]
        if self._self:
            return self._decode(spans, self.kernel.read_then_clear(
                self.pagemap, ranges, self._mask, clear))
        if not clear:
            return self._decode(spans, self._read_other(ranges))
        with self.kernel.stopped(int(self.pid)):
            got = self._read_other(ranges)
            self.kernel.clear_refs(self.pid, U.CLEAR_REFS_SOFT_DIRTY)
        return self._decode(spans, got)

    def _read_other(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray | None]:
        ps = self.page_size
        if self._mask:
            return [self.kernel.scan_all(self.pagemap, a, b, return_mask=self._mask,
                                         page_size=ps).regions for a, b in ranges]
        return [self.kernel.pagemap_read(self.pagemap, a, (b - a) // ps) for a, b in ranges]

    def _vm_softdirty(self) -> tuple[tuple[int, int], ...]:
        """VMAs flagged ``sd`` (VM_SOFTDIRTY) in /proc/PID/smaps."""
        return tuple((lo, hi) for lo, hi, flags in self.kernel.vma_flags(self._target)
                     if "sd" in flags)

    # -- evaluating --------------------------------------------------------------------------
    def _evaluate(self, span: Span, st: PageState, maps: Sequence[procfs.Mapping],
                  sd_vmas: Sequence[tuple[int, int]] | None) -> _Eval:
        ps = self.page_size
        n = span.length // ps
        label = span.label or f"span {span.start:#x}-{span.end:#x}"
        prev = self._state.get(span)
        layout = tuple(_mapped_parts(maps, span))
        if not st.ok:
            return _Eval(np.ones(n, bool), np.ones(n, bool),
                         (f"{label}: reading pagemap failed during the reset; reported whole",))
        if prev is not None and layout != prev.layout:
            return _Eval(np.ones(n, bool), np.ones(n, bool),
                         (f"{label}: mappings replaced, moved or unmapped; reported whole",))
        written = st.dirty.copy()
        cons = np.zeros(n, bool)
        reasons = []
        vma_sd = np.zeros(n, bool)
        hole_dirty = st.dirty & ~st.present & ~st.swapped
        for m in maps:
            lo, hi = max(m.start, span.start), min(m.end, span.end)
            if lo < hi:
                a, b = (lo - span.start) // ps, (hi - span.start) // ps
                if hole_dirty[a:b].any():
                    vma_sd[a:b] = True
        for lo, hi in sd_vmas or ():
            lo, hi = max(lo, span.start), min(hi, span.end)
            if lo < hi:
                vma_sd[(lo - span.start) // ps:(hi - span.start) // ps] = True
        sd_pages = st.dirty & vma_sd
        if sd_pages.any():
            cons |= sd_pages
            reasons.append(f"{int(sd_pages.sum())} page(s) of {label} are in a VMA new, expanded"
                           " or merged since the last reset (VM_SOFTDIRTY): they read dirty "
                           "whether written or not")
        if prev is not None:
            gone = prev.resident & ~st.resident & ~st.dirty
            if gone.any():
                written |= gone
                cons |= gone
                reasons.append(f"{int(gone.sum())} page(s) of {label} left memory (zapped, "
                               "reclaimed or swapped out with their soft-dirty bit): content "
                               "may differ")
        return _Eval(written, cons, tuple(reasons))

    def _reset_group(self, extra: Span | None = None,
                     maps: Sequence[procfs.Mapping] | None = None) -> dict[Span, _Eval]:
        """Read the spans of every backend of the group (and ``extra``, being added), reset,
        and hand each other backend what its spans held. Returns this backend's results."""
        with self._group.lock:
            members = [b for b in self._group.members if not b.closed]
            pairs = [(b, s) for b in members for s in b.spans]
            if extra is not None:
                pairs.append((self, extra))
            if maps is None:
                maps = self.read_maps()
            sd_vmas = self._vm_softdirty() if self.vmflags and pairs else None
            states = self._read([s for _, s in pairs], clear=True)
            mine: dict[Span, _Eval] = {}
            for (b, s), st in zip(pairs, states, strict=True):
                if s is extra:
                    b._state[s] = _SpanState(tuple(_mapped_parts(maps, s)), st.resident)
                    continue
                ev = b._evaluate(s, st, maps, sd_vmas if st.dirty.any() else None)
                ss = b._state[s]
                ss.layout = tuple(_mapped_parts(maps, s))
                ss.resident = st.resident
                if b is self:
                    mine[s] = ev
                elif ev.written.any():
                    ss.pending = ev.written if ss.pending is None else ss.pending | ev.written
                    ss.pending_cons = (ev.conservative if ss.pending_cons is None
                                       else ss.pending_cons | ev.conservative)
                    ss.pending_reasons = (*ss.pending_reasons, *ev.reasons)
            return mine

    def collect(self, reset: bool = True, max_pages: int = 0) -> Collected:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        if max_pages < 0:
            raise errors.InvalidTarget(f"max_pages must be >= 0, not {max_pages}")
        ps = self.page_size
        if reset:
            evals = self._reset_group()
        else:
            maps = self.read_maps()
            states = self._read(self.spans, clear=False)
            sd_vmas = (self._vm_softdirty() if self.vmflags and any(s.dirty.any() for s in states)
                       else None)
            evals = {s: self._evaluate(s, st, maps, sd_vmas)
                     for s, st in zip(self.spans, states, strict=True)}
        found: list[np.ndarray] = []
        conservative: list[np.ndarray] = []
        reasons: list[str] = []
        budget = max_pages
        for span in self.spans:
            ev = evals[span]
            ss = self._state[span]
            written, cons, why = ev.written, ev.conservative, list(ev.reasons)
            if ss.pending is not None:
                written = written | ss.pending
                cons = cons | (ss.pending_cons if ss.pending_cons is not None else False)
                why = [*ss.pending_reasons, *why]
            if reset:
                ss.pending = ss.pending_cons = None
                ss.pending_reasons = ()
            if max_pages:
                idx = np.flatnonzero(written)
                if len(idx) > budget:
                    rest = np.zeros_like(written)
                    rest[idx[budget:]] = True
                    if reset:  # the reset cleared them: owe them to the next collect
                        ss.pending = rest
                        ss.pending_cons = cons & rest
                        ss.pending_reasons = tuple(why)
                    written = written & ~rest
                    cons = cons & ~rest
                budget -= int(written.sum())
            if written.any():
                found.append(Pages.from_mask(written, span.start, ps).ranges)
            if cons.any():
                conservative.append(Pages.from_mask(cons, span.start, ps).ranges)
                reasons.extend(why)
        out = np.concatenate(found) if found else _EMPTY
        cons_arr = np.concatenate(conservative) if conservative else _EMPTY
        self.stats.collects += 1
        self.stats.reported(out)
        self.stats.pages_conservative += int((cons_arr[:, 1] - cons_arr[:, 0]).sum()) // ps
        return Collected(out, cons_arr, tuple(reasons))

    def _forget(self) -> None:
        _leave(self.kernel, self._pid_key, self)
        self.kernel.close(self.pagemap)

    def _release(self) -> None:
        _leave(self.kernel, self._pid_key, self)
        self._state.clear()
        self.kernel.close(self.pagemap)


def _mapped_parts(maps: Sequence[procfs.Mapping], span: Span) -> list[tuple[int, int]]:
    return procfs.coverage(maps, span.start, span.end)
