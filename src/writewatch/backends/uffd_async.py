"""uffd-wp in async mode + PAGEMAP_SCAN (Linux 6.7+): the precise mechanism.

The kernel resolves write faults on write-protected pages itself by clearing the PTE's uffd-wp
bit (UFFD_FEATURE_WP_ASYNC, d61ea1cb0095); "written" means "uffd-wp bit clear". One
PAGEMAP_SCAN call with ``PM_SCAN_WP_MATCHING`` reports the written pages and write-protects
them again under the page-table lock, so a write is either in this collect or the next one
(selftest ``transact_test``: no lost updates, duplicates allowed).

A collect makes one PAGEMAP_SCAN per *run*: a maximal range of tracked spans that touch each
other. Every scan passes ``PM_SCAN_CHECK_WPASYNC``: a VMA inside the run that is not
registered (it replaced tracked memory) fails the whole call with EPERM instead of being
skipped silently (fs/proc/task_mmu.c pagemap_scan_test_walk), and the run is then collected
span by span to find it. A run never reaches over memory between spans: another
userfaultfd's async-WP VMAs there (the target's own, another tracker's) would be re-armed by
our scan and lose their writes.

What the kernel alone could miss, and what this backend does about it:

* A span remapped while tracked (``mmap(MAP_FIXED)``, ``mremap``, ``munmap``): the new VMA is
  not registered, and PAGEMAP_SCAN with WP_MATCHING silently skips unregistered VMAs. The
  CHECK_WPASYNC EPERM above, and a mapping check per run (``msync(MS_ASYNC)`` here, the
  maps the caller read for another process), catch it. What was replaced is reported
  written (its content may differ), and what is mapped there now is registered and armed
  again by a scan that shows which of its pages were written since it appeared: those are
  proven, the others conservative.
* A PMD-sized hole left by ``MADV_DONTNEED`` of a whole THP (or by CONFIG_PT_RECLAIM freeing an
  emptied PTE table) read "not written" before Kiryl Shutsemau's 2026 fix "fs/proc/task_mmu:
  fix PAGEMAP_SCAN written state for PMD holes". On kernels where the probe does not show the
  fix, each collect also looks for pages that are neither present nor swapped (armed pages are
  one or the other: a PTE with the uffd-wp bit or a uffd-wp marker) and reports them as
  written (their content became zero), then arms them again.
  Arming differs there too: before the fix ``pagemap_scan_pte_hole`` returns early for a hole
  that does not match the category mask, so a WRITTEN-masked ``WP_MATCHING`` scan leaves
  never-touched PMD ranges (no page table yet) unarmed (seen on Debian's 6.12.95). Those
  kernels are armed with ``UFFDIO_WRITEPROTECT`` instead, which under WP_UNPOPULATED allocates
  the page tables and installs markers (change_pmd_prepare / change_pte_range).
* ``pte_none`` after a zap reads written on the WRITTEN fast path (the path this backend uses:
  ``category_mask == return_mask == WRITTEN``) on every kernel since 6.7.
* Memory that existed before it was tracked (:meth:`UffdAsyncBackend.adopt`: a mapping that
  appeared in another process after it was attached) is armed by one scan that also returns
  each page's categories at the moment it was protected; what may hold content written
  before is derived from them (see :func:`prior_content`).
"""

from __future__ import annotations

import bisect
import contextlib
import errno as E
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, Capabilities, KernelCalls, Mapping, pagemap, procfs
from ..kernel.probes import Probe
from ..pages import Pages
from .base import Backend, Collected, Span, register

WRITTEN = int(U.PageCategory.WRITTEN)
PRESENT = int(U.PageCategory.PRESENT)
SWAPPED = int(U.PageCategory.SWAPPED)
FILE = int(U.PageCategory.FILE)
PFNZERO = int(U.PageCategory.PFNZERO)
_PRESENT_OR_SWAPPED = PRESENT | SWAPPED
_EMPTY = np.empty((0, 2), np.uint64)

#: Features asked of UFFDIO_API (WP_ASYNC implies WP_UNPOPULATED: fs/userfaultfd.c).
WANTED = U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED
OPTIONAL = U.UffdFeature.WP_HUGETLBFS_SHMEM

def supported_features(kernel: KernelCalls = LINUX) -> U.UffdFeature:
    """Every userfaultfd feature the kernel offers (UFFDIO_API on a throwaway descriptor,
    probed once per kernel object: a second UFFDIO_API on one descriptor is EINVAL)."""
    caps = kernel.capabilities()
    if not caps.userfaultfd.ok:  # raise what userfaultfd() raises (EPERM, ENOSYS...)
        kernel.close(kernel.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK))
    return U.UffdFeature(caps.uffd_features)


def open_uffd(kernel: KernelCalls = LINUX, fd: int | None = None, events: int = 0) -> int:
    """A userfaultfd negotiated for async write-protect (or ``fd``, negotiated now), with the
    non-cooperative ``events`` (``UFFD_FEATURE_EVENT_*``) on top."""
    have = supported_features(kernel)
    missing = (WANTED | events) & ~have
    if missing & WANTED:
        raise errors.Unsupported(
            "userfaultfd async write-protect is not available",
            feature="UFFD_FEATURE_WP_ASYNC", since="6.7", op="UFFDIO_API")
    if missing:
        names = ", ".join(f"UFFD_FEATURE_{f.name}" for f in U.UffdFeature if f & missing)
        raise errors.Unsupported(f"this kernel lacks {names}", feature=names, op="UFFDIO_API")
    own = fd is None
    if fd is None:
        fd = kernel.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    try:
        kernel.uffdio_api(fd, int(WANTED | events | (OPTIONAL & have)))
    except BaseException:
        if own:
            kernel.close(fd)
        raise
    return fd


def _npages(ranges: np.ndarray, page_size: int) -> int:
    if not len(ranges):
        return 0
    return int((ranges[:, 1] - ranges[:, 0]).sum()) // page_size


_SCAN_RESET = int(U.PmScanFlag.CHECK_WPASYNC | U.PmScanFlag.WP_MATCHING)
_SCAN_PEEK = int(U.PmScanFlag.CHECK_WPASYNC)


def residency(regions: Any, lo: int, hi: int) -> tuple[tuple[int, int, int], ...]:
    """Of ``(k, 3)`` scan regions (sorted, with PRESENT and FILE categories, as a numpy array
    or its ``tolist()``), the resident parts of ``[lo, hi)``: ``(start, end, FILE or 0)``
    runs, merged (pure). A value to compare between collects: equal means nothing left."""
    out: list[tuple[int, int, int]] = []
    rows = regions.tolist() if isinstance(regions, np.ndarray) else regions
    for s, e, c in rows:
        if e <= lo or not c & PRESENT:
            continue
        if s >= hi:
            break
        if s < lo:
            s = lo
        if e > hi:
            e = hi
        f = c & FILE
        if out and out[-1][1] == s and out[-1][2] == f:
            out[-1] = (out[-1][0], e, f)
        else:
            out.append((s, e, f))
    return tuple(out)


def lost(before: tuple[tuple[int, int, int], ...], now: tuple[tuple[int, int, int], ...],
         page_size: int) -> Pages:
    """Pages resident before and gone now, or private copies before and the file's page
    now (pure; :func:`residency` values)."""
    if before == now:
        return Pages.empty(page_size)

    def pages(rs: tuple[tuple[int, int, int], ...], private: bool) -> Pages:
        return Pages([(s, e) for s, e, f in rs if not (private and f)], page_size)

    return (pages(before, False) - pages(now, False)) | \
        (pages(before, True) - pages(now, True))


def prior_content(regions: np.ndarray, shared: bool) -> np.ndarray:
    """Of ``(k, 3)`` regions with their categories at the moment they were armed, the
    ``(m, 2)`` ranges that may hold content written before (pure).

    Private memory (anonymous, or a private file mapping): a page of its own that is not the
    zero page, resident or swapped out — a page that reads as the file's page (FILE), the
    zero page (PFNZERO) or nothing (a hole: zero-fill on first touch) holds nothing written
    through this mapping. Shared memory: any page touched through the mapping (resident or
    swapped), since a read fault maps the same page a write would."""
    cats = regions[:, 2]
    touched = (cats & np.uint64(_PRESENT_OR_SWAPPED)) != 0
    if not shared:
        touched &= (cats & np.uint64(FILE | PFNZERO)) == 0
    return np.ascontiguousarray(regions[touched, :2])


def _partial(exc: errors.NotRegistered) -> np.ndarray:
    """The written pages a failed get + write-protect protected before it stopped (they are
    reported here or nowhere)."""
    got = exc.partial
    if not isinstance(got, np.ndarray) or not len(got):
        return _EMPTY
    return np.ascontiguousarray(got[(got[:, 2] & np.uint64(WRITTEN)) != 0, :2])


class Run(NamedTuple):
    """Tracked spans that touch each other: one PAGEMAP_SCAN covers them."""

    start: int
    end: int
    spans: tuple[Span, ...]
    plain: bool = True  #: none of its spans needs more than the run's one scan
    #: file or shared spans of it, whose residency the same scan can check (one pass)
    resident: tuple[Span, ...] = ()


def make_runs(spans: Sequence[Span], careful: set[Span] | None = None,
              resident: set[Span] | None = None) -> tuple[Run, ...]:
    """Group spans into runs of address-contiguous spans (pure). ``careful``: spans to
    collect one by one; ``resident``: spans whose residency is compared at each collect."""
    groups: list[list[Span]] = []
    for s in sorted(spans, key=lambda s: s.start):
        if groups and groups[-1][-1].end == s.start:
            groups[-1].append(s)
        else:
            groups.append([s])
    careful = careful or set()
    resident = resident or set()
    out = []
    for g in groups:
        if careful.intersection(g):
            out.append(Run(g[0].start, g[-1].end, tuple(g), False))
            continue
        res = tuple(s for s in g if s in resident)
        out.append(Run(g[0].start, g[-1].end, tuple(g), not res, res))
    return tuple(out)


class Adopted(NamedTuple):
    """What :meth:`UffdAsyncBackend.adopt` found in memory armed late."""

    prior: np.ndarray  #: ``(k, 2)`` ranges that may hold content written before arming
    conservative: np.ndarray  #: of those, ranges reported without any sign of content


@register
class UffdAsyncBackend(Backend):
    """Async uffd-wp + PAGEMAP_SCAN over the memory of ``pid`` (``"self"`` or a PID).

    ``uffd``: a userfaultfd created in the target's address space (required for another
    process; see :mod:`writewatch.process`); ``uffd_negotiated``: whether UFFDIO_API was
    already done on it. ``hole_scan``: look for PMD holes at each collect (None: only when the
    kernel lacks the 2026 fix, see :func:`writewatch.features`). ``events``: extra
    ``UFFD_FEATURE_EVENT_*`` bits to negotiate (EVENT_FORK: :mod:`writewatch.process`)."""

    name: ClassVar[str] = "uffd-async"
    since: ClassVar[str | None] = "6.7"

    @staticmethod
    def available(caps: Capabilities) -> Probe:
        if not caps.userfaultfd.ok:
            return Probe(False, caps.userfaultfd.detail, caps.userfaultfd.fix)
        if not caps.uffd_features & U.UffdFeature.WP_ASYNC:
            return Probe(False, "no UFFD_FEATURE_WP_ASYNC", "needs Linux 6.7")
        if not caps.pagemap_scan.ok:
            return Probe(False, caps.pagemap_scan.detail, "needs Linux 6.7")
        return Probe(True, "userfaultfd WP_ASYNC + PAGEMAP_SCAN")

    def __init__(self, pid: int | str = "self", kernel: KernelCalls = LINUX, *,
                 uffd: int | None = None, uffd_negotiated: bool = False,
                 hole_scan: bool | None = None, batch: int = 4096, events: int = 0,
                 one_pass: bool | None = None) -> None:
        super().__init__(pid, kernel)
        if uffd is None and pid not in ("self", os.getpid()):
            raise errors.InvalidTarget(
                "tracking another process needs a userfaultfd created inside it",
                hint="use writewatch.attach(pid) or writewatch.launch(argv)")
        try:  # a descriptor given is the backend's from here on: closed on failure too
            self.uffd: int = uffd if uffd is not None and uffd_negotiated else \
                open_uffd(kernel, uffd, events)
        except BaseException:
            if uffd is not None:
                kernel.close(uffd)
            raise
        try:
            self.pagemap = kernel.open_pagemap(pid)
        except BaseException:
            kernel.close(self.uffd)
            raise
        caps = kernel.capabilities()
        self.hole_scan = not caps.pmd_hole_written if hole_scan is None else hole_scan
        if one_pass is None:
            one_pass = caps.pte_none_written
        #: file and shared spans collected with their residency in one generic-path scan
        self.one_pass = one_pass
        self.batch = batch
        #: per span, the mapped parts at arm time when the span was not fully mapped
        self._layout: dict[Span, tuple[tuple[int, int], ...]] = {}
        #: per span, mapped parts that could not be registered: reported at every collect
        self._untracked: dict[Span, list[tuple[int, int, str]]] = {}
        #: spans with file or shared memory, and their resident pages at the last collect
        self._file_backed: set[Span] = set()
        self._resident: dict[Span, tuple[tuple[int, int, int], ...]] = {}
        self._no_pages = Pages.empty(self.page_size)
        #: /proc/PID/maps, read at most once per collect (or given through layout())
        self._maps: Sequence[Mapping] | None = None
        self._map_ends: list[int] = []
        self._runs: tuple[Run, ...] | None = None
        self._sorted: list[Span] | None = None  # spans by address (overlap checks)
        self._starts: list[int] = []
        self.own = pid in ("self", os.getpid())

    # -- arming ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _adding(self, span: Span) -> Iterator[None]:
        """Register ``span``, arm it in the body, note its residency; undone on failure."""
        self._register_span(span)
        try:
            yield
            if span in self._file_backed:
                self._resident_changes(span, update=True)
        except BaseException:
            self._drop(span)
            raise
        self._adopted(span)

    def add(self, span: Span) -> None:
        with self._adding(span):
            self._arm(span.start, span.end)

    def add_many(self, spans: Sequence[Span]) -> None:
        """:meth:`add` for many spans: each run of touching spans is registered and armed in
        one UFFDIO_REGISTER and one arming call. All or nothing."""
        done: list[Span] = []
        try:
            for run in make_runs(spans):
                if len(run.spans) == 1:
                    self.add(run.spans[0])
                    done.append(run.spans[0])
                    continue
                whole = Span(run.start, run.end)
                self.add(whole)  # registers, arms, checks overlap and mapping
                self.spans.remove(whole)
                self._sorted = None
                simple = whole not in self._layout and whole not in self._file_backed
                for sp in run.spans:
                    if not simple:  # the run's layout or residency, span by span
                        parts = tuple(self._mapped_parts(sp))
                        if parts != ((sp.start, sp.end),):
                            self._layout[sp] = parts
                        if sp in self._file_backed:
                            self._resident_changes(sp, update=True)
                    self.spans.append(sp)
                    done.append(sp)
                self._runs = None
                self._file_backed.discard(whole)
                self._resident.pop(whole, None)
                self._layout.pop(whole, None)
        except BaseException:
            for sp in done:
                self.remove(sp)
            raise

    def adopt(self, span: Span, shared: bool = False) -> Adopted:
        """Start tracking memory that may have been written before: register it, arm it, and
        say which pages may hold content written until then.

        One generic-path PAGEMAP_SCAN with no category filter arms every page (holes get
        markers through ``pagemap_scan_pte_hole``, entries through ``make_uffd_wp_pte``) and
        returns its categories as they were when it was protected, so a write racing with the
        arming is either seen here or caught by the protection. Before the 2026 fix
        "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for unpopulated ptes" the generic
        path reads a ``pte_none`` entry as not written and leaves it unarmed (its category
        has no WRITTEN): a second, WRITTEN fast-path scan then arms those and reports them,
        conservatively (nothing shows they hold anything)."""
        with self._adding(span):
            got = self._arm_classified(span, shared)
        return got

    def _arm_classified(self, span: Span, shared: bool) -> Adopted:
        """Arm a registered range and say what in it may hold earlier writes (see
        :meth:`adopt`)."""
        first = self.kernel.scan_all(self.pagemap, span.start, span.end, batch=self.batch,
                                     flags=_SCAN_RESET,
                                     return_mask=WRITTEN | _PRESENT_OR_SWAPPED | FILE | PFNZERO,
                                     page_size=self.page_size).regions
        self.stats.scan_calls += 1
        prior = prior_content(first, shared)
        unarmed = bool(((first[:, 2] & np.uint64(WRITTEN)) == 0).any())
        second, _ = self._scan(span.start, span.end, reset=True)
        cons = second if unarmed else _EMPTY
        return Adopted(np.concatenate([prior, second]) if len(second) else prior, cons)

    def inherit(self, spans: Sequence[Span]) -> None:
        """Take ``spans`` as tracked without registering or arming them: a forked child's
        context holds the parent's registration and uffd-wp bits (EVENT_FORK). What of them
        is not mapped as it was is found by the next collect."""
        self._maps = None
        for span in spans:
            parts = tuple(self._mapped_parts(span))
            if parts != ((span.start, span.end),):
                self._layout[span] = parts
            self.spans.append(span)
        self._runs = None
        self._sorted = None

    def _register_span(self, span: Span) -> None:
        self._maps = None
        s = self._overlapping(span)
        if s is not None:
            raise errors.InvalidTarget(
                f"{span.start:#x}-{span.end:#x} overlaps a tracked span "
                f"{s.start:#x}-{s.end:#x}", op="track", start=span.start, end=span.end)
        parts = tuple(self._mapped_parts(span))
        if not parts:
            raise errors.InvalidTarget(
                f"nothing is mapped at {span.start:#x}-{span.end:#x}", op="track",
                start=span.start, end=span.end, hint="track mapped memory")
        if parts != ((span.start, span.end),):
            self._layout[span] = parts
        try:
            self._register(span.start, span.end)
        except BaseException:
            self._layout.pop(span, None)
            self._file_backed.discard(span)
            raise

    def _overlapping(self, span: Span) -> Span | None:
        """A tracked span overlapping ``span`` (bisection over the spans by address)."""
        if self._sorted is None:
            self._sorted = sorted(self.spans, key=lambda s: s.start)
            self._starts = [s.start for s in self._sorted]
        i = bisect.bisect_left(self._starts, span.end) - 1
        if i >= 0 and self._sorted[i].end > span.start:
            return self._sorted[i]
        return None

    def _adopted(self, span: Span) -> None:
        self.spans.append(span)
        self._runs = None
        if self._sorted is not None:
            i = bisect.bisect_left(self._starts, span.start)
            self._sorted.insert(i, span)
            self._starts.insert(i, span.start)

    def _drop(self, span: Span) -> None:
        self._unregister(span.start, span.end)
        self._layout.pop(span, None)
        self._file_backed.discard(span)
        self._resident.pop(span, None)

    def _arm(self, start: int, end: int) -> None:
        """Write-protect every page of a registered range, unpopulated ones included (what
        the scan reports predates tracking)."""
        if self.hole_scan:
            self.kernel.uffdio_writeprotect(self.uffd, start, end - start,
                                            U.UffdWriteprotectMode.WP)
        else:
            self._scan(start, end, reset=True)

    def _register(self, start: int, end: int) -> None:
        self.kernel.uffdio_register(self.uffd, start, end - start, U.UffdRegisterMode.WP)

    def _unregister(self, start: int, end: int) -> None:
        try:
            self.kernel.uffdio_unregister(self.uffd, start, end - start)
        except errors.WriteWatchError as exc:
            if exc.errno not in (E.EINVAL, E.ENOMEM, E.ESRCH):
                raise

    def remove(self, span: Span) -> None:
        self.spans.remove(span)
        self._runs = None
        self._sorted = None
        self._maps = None
        self._layout.pop(span, None)
        self._untracked.pop(span, None)
        self._file_backed.discard(span)
        self._resident.pop(span, None)
        if self.kernel.is_mapped(self.pid, span.start, span.length):
            self._unregister(span.start, span.end)
        else:
            for lo, hi in self._mapped_parts(span):
                self._unregister(lo, hi)

    # -- collecting --------------------------------------------------------------------------
    def _scan(self, start: int, end: int, reset: bool,
              max_pages: int = 0) -> tuple[np.ndarray, int]:
        res = self.kernel.scan_all(self.pagemap, start, end, batch=self.batch,
                                   flags=_SCAN_RESET if reset else _SCAN_PEEK,
                                   category_mask=WRITTEN, return_mask=WRITTEN,
                                   max_pages=max_pages, page_size=self.page_size)
        self.stats.scan_calls += 1
        return (pagemap.ranges(res.regions) if len(res.regions) else _EMPTY), res.walk_end

    def _holes(self, start: int, end: int) -> np.ndarray:
        """Pages neither present nor swapped (no PTE, no marker): zapped since armed.

        The target runs while it is collected: a VMA mapped into the range after this
        collect's scan is not registered yet (CHECK_WPASYNC: EPERM). It holds no armed page,
        and the next collect finds it as new memory; the registered VMAs are then scanned
        one by one."""
        try:
            return self._hole_scan(start, end)
        except errors.NotRegistered:
            got = []
            for m in self.read_maps():
                lo, hi = max(m.start, start), min(m.end, end)
                if lo < hi:
                    with contextlib.suppress(errors.NotRegistered):
                        got.append(self._hole_scan(lo, hi))
            return np.concatenate(got) if got else _EMPTY

    def _hole_scan(self, start: int, end: int) -> np.ndarray:
        res = self.kernel.scan_all(self.pagemap, start, end, batch=self.batch,
                                   flags=int(U.PmScanFlag.CHECK_WPASYNC),
                                   category_inverted=_PRESENT_OR_SWAPPED,
                                   category_mask=_PRESENT_OR_SWAPPED, return_mask=0,
                                   page_size=self.page_size)
        self.stats.scan_calls += 1
        return res.regions[:, :2]

    def _resident_changes(self, span: Span, update: bool) -> Pages:
        """File and shared memory: pages whose content may have changed without a write
        through this mapping, seen as residency changes since the last collect.

        The kernel keeps the uffd-wp state of a zapped file/shmem PTE in a marker
        (zap_install_uffd_wp_if_needed), so these read "not written" (observed on 6.18):
        MADV_DONTNEED of a copied-on-write page of a MAP_PRIVATE file mapping (the page
        reverts to the file's content), MADV_REMOVE / hole punching of a shared page (it
        reads zero), reclaim of shmem (content kept: a false positive). A page resident at the
        last collect that is gone now, or that was a private copy and is now the file's page,
        is reported."""
        ps = self.page_size
        res = self.kernel.scan_all(self.pagemap, span.start, span.end,
                                   batch=self.batch, category_mask=PRESENT,
                                   return_mask=PRESENT | FILE, page_size=ps).regions
        self.stats.scan_calls += 1
        return self._compare_residency(span, residency(res, span.start, span.end), update)

    def _compare_residency(self, span: Span, now: tuple[tuple[int, int, int], ...],
                           update: bool) -> Pages:
        before = self._resident.get(span)
        if update:
            self._resident[span] = now
        if before is None or before == now:
            return self._no_pages
        return lost(before, now, self.page_size)

    def _read_maps(self) -> Sequence[Mapping]:
        if self._maps is None or (self.given_maps is not None and
                                  self._maps is not self.given_maps):
            self._maps = self.read_maps()
            self._map_ends = [m.end for m in self._maps]
        return self._maps

    def _mapped_parts(self, span: Span) -> list[tuple[int, int]]:
        """What of the span is mapped now (maps read at most once per collect); notes
        whether any of it is file or shared memory."""
        maps = self._read_maps()
        file_backed = False
        for m in maps[bisect.bisect_right(self._map_ends, span.start):]:
            if m.start >= span.end:
                break
            file_backed |= m.inode != 0 or m.shared
        if file_backed != (span in self._file_backed):
            (self._file_backed.add if file_backed else self._file_backed.discard)(span)
            self._runs = None
        return procfs.coverage(maps, span.start, span.end, self._map_ends)

    def _layout_changed(self, span: Span) -> bool:
        layout = self._layout.get(span)
        if layout is None and self.given_maps is None and self.own and \
                self.kernel.is_mapped("self", span.start, span.length):
            return False  # msync: no /proc read on the fast path
        return tuple(self._mapped_parts(span)) != (layout or ((span.start, span.end),))

    def _run_mapped(self, run: Run) -> bool:
        """Whether the whole run is still mapped: msync here (one VMA walk), the maps the
        caller gave (or one read of them) elsewhere."""
        if self.given_maps is None and self.own:
            return self.kernel.is_mapped("self", run.start, run.end - run.start)
        if self.maps_unchanged:
            return True  # mapped at the last collect, and nothing changed since
        maps = self._read_maps()
        return procfs.coverage(maps, run.start, run.end, self._map_ends) == \
            [(run.start, run.end)]

    def collect(self, reset: bool = True, max_pages: int = 0) -> Collected:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        found: list[np.ndarray] = []
        conservative: list[np.ndarray] = []
        reasons: list[str] = []
        budget = max_pages
        self._maps = None
        self._unmapped: list[np.ndarray] = []
        coalesced = True  # each run's scan output is; spans collected one by one may touch
        if self._runs is None:
            careful = {s for s in self.spans if s in self._layout or s in self._untracked}
            if not self.one_pass:
                careful |= self._file_backed
            self._runs = make_runs(self.spans, careful, self._file_backed)
        for run in self._runs:
            if max_pages and budget <= 0:
                break
            regions = None
            if run.plain and self._run_mapped(run):
                try:
                    regions, _ = self._scan(run.start, run.end, reset, budget)
                except errors.NotRegistered as exc:
                    found.append(_partial(exc))
            elif run.resident and not max_pages and self._run_mapped(run) and \
                    self._collect_resident(run, reset, found, conservative, reasons):
                coalesced = False
                continue
            if regions is None:  # something changed in the run: span by span
                coalesced = coalesced and len(run.spans) == 1
                for span in run.spans:
                    if max_pages and budget <= 0:
                        break
                    took = self._collect_span(span, reset, budget, found, conservative,
                                              reasons)
                    if max_pages:
                        budget -= took
            else:
                found.append(regions)
                if max_pages:
                    budget -= _npages(regions, self.page_size)
                if self.hole_scan:
                    self._collect_holes(run.start, run.end, run.spans[0].label, reset,
                                        conservative, reasons)
        self._maps = None
        got = self._finish(found, conservative, reasons, coalesced)
        if self._unmapped:
            got = got._replace(unmapped=np.concatenate(self._unmapped))
        return got

    def _collect_resident(self, run: Run, reset: bool, found: list[np.ndarray],
                          conservative: list[np.ndarray], reasons: list[str]) -> bool:
        """One generic-path scan of a run holding file or shared spans: it reports and
        re-arms the written pages and shows what is resident, so the residency check costs
        no scan of its own. Only where the generic path reads a zapped PTE as written
        (``Capabilities.pte_none_written``). False: collect it span by span."""
        try:
            res = self.kernel.scan_all(self.pagemap, run.start, run.end, batch=self.batch,
                                       flags=_SCAN_RESET if reset else _SCAN_PEEK,
                                       return_mask=WRITTEN | PRESENT | FILE,
                                       page_size=self.page_size)
        except errors.NotRegistered as exc:
            found.append(_partial(exc))
            return False
        self.stats.scan_calls += 1
        # a few rows per run, most of them not written: Python on the rows is quicker here
        # than numpy on the array
        rows = res.regions.tolist()
        written_rows = [(s, e) for s, e, c in rows if c & WRITTEN]
        written = np.array(written_rows, np.uint64) if written_rows else _EMPTY
        found.append(written)
        for span in run.resident:
            gone = self._compare_residency(span, residency(rows, span.start, span.end),
                                           update=reset)
            if gone:
                gone = gone - Pages.from_kernel(written, self.page_size)
            if gone:
                conservative.append(gone.ranges)
                reasons.append(f"{len(gone)} page(s) of {span.label or 'span'} left memory "
                               "(zapped, reclaimed or hole-punched): content may differ")
        if self.hole_scan:
            self._collect_holes(run.start, run.end, run.spans[0].label, reset, conservative,
                                reasons)
        return True

    def _collect_span(self, span: Span, reset: bool, budget: int, found: list[np.ndarray],
                      conservative: list[np.ndarray], reasons: list[str]) -> int:
        """Collect one span the careful way (its layout checked, remaps located and
        recovered, file residency compared); returns the pages it took from the budget."""
        prev = self._layout.get(span) or ((span.start, span.end),)
        now = prev if not self._layout_changed(span) else tuple(self._mapped_parts(span))
        if now == prev:
            try:
                regions, _ = self._scan(span.start, span.end, reset, budget)
            except errors.NotRegistered as exc:
                found.append(_partial(exc))
                regions = self._collect_pieces(span, now, reset, conservative, reasons)
        else:
            regions = self._collect_changed(span, prev, now, reset, conservative, reasons)
        found.append(regions)
        if span in self._file_backed:
            gone = self._resident_changes(span, update=reset)
            if gone:
                gone = gone - Pages.from_kernel(regions, self.page_size)
            if gone:
                conservative.append(gone.ranges)
                reasons.append(f"{len(gone)} page(s) of {span.label or 'span'} left memory "
                               "(zapped, reclaimed or hole-punched): content may differ")
        for lo, hi, why in self._untracked.get(span, ()):
            conservative.append(np.array([[lo, hi]], np.uint64))
            reasons.append(f"{lo:#x}-{hi:#x} cannot be tracked ({why}); reported whole")
        if self.hole_scan:
            self._collect_holes(span.start, span.end, span.label, reset, conservative, reasons)
        return _npages(regions, self.page_size)

    def _collect_pieces(self, span: Span, parts: Sequence[tuple[int, int]], reset: bool,
                        conservative: list[np.ndarray], reasons: list[str]) -> np.ndarray:
        """``parts`` of the span are mapped as at the last collect, but some VMA there is not
        registered (CHECK_WPASYNC said EPERM): the memory at those addresses was replaced
        (``mmap(MAP_FIXED)``, an mremap onto it). Scan VMA by VMA: the replaced ones held
        tracked memory until then, so they are reported whole and armed again; the others
        are exact."""
        maps = self._read_maps()
        got: list[np.ndarray] = []
        replaced: list[tuple[int, int]] = []
        for lo, hi in parts:
            for m in maps[bisect.bisect_right(self._map_ends, lo):]:
                if m.start >= hi:
                    break
                a, b = max(m.start, lo), min(m.end, hi)
                try:
                    got.append(self._scan(a, b, reset)[0])
                except errors.NotRegistered as exc:
                    got.append(_partial(exc))
                    replaced.append((a, b))
        proven = 0
        for a, b in replaced:
            whole = np.array([[a, b]], np.uint64)
            got.append(whole)  # what was there is gone: every page of it may differ now
            armed = self._register_classified(span, a, b) if reset else None
            if armed is None:
                conservative.append(whole)
                continue
            # pages written in the new memory since it appeared are proven written; the
            # others are reported because the memory was replaced
            rest = Pages([(a, b)], self.page_size) - Pages.from_kernel(armed.prior,
                                                                       self.page_size)
            proven += (b - a) // self.page_size - len(rest)
            conservative += [rest.ranges, armed.conservative]
        if replaced:
            self.stats.rearms += 1
            n = sum(b - a for a, b in replaced) // self.page_size
            reasons.append(f"{span.label or 'span'}: {n} page(s) remapped while tracked "
                           f"(the memory there was replaced): reported whole, {n - proven} "
                           "of them without a write seen in the new memory")
        return np.concatenate(got) if got else _EMPTY

    def _collect_changed(self, span: Span, prev: Sequence[tuple[int, int]],
                         now: Sequence[tuple[int, int]], reset: bool,
                         conservative: list[np.ndarray], reasons: list[str]) -> np.ndarray:
        """The span's mapped parts changed. What stayed mapped is collected as usual (what
        was replaced in place is found VMA by VMA); what went away holds nothing to report;
        what is newly mapped — addresses where nothing was mapped at the last collect — is
        registered and armed, and reported by what the arming scan saw in it."""
        ps = self.page_size
        before, after = Pages(list(prev), ps), Pages(list(now), ps)
        kept = [tuple(r) for r in (before & after).ranges.tolist()]
        regions = self._collect_pieces(span, kept, reset, conservative, reasons)
        fresh = after - before
        gone = before - after
        if len(gone):
            self._unmapped.append(gone.ranges)
            reasons.append(f"{span.label or 'span'}: {len(gone)} page(s) unmapped")
        found = [regions]
        for lo, hi in fresh:
            if not reset:  # a peek arms nothing: the new part may hold anything
                conservative.append(np.array([[lo, hi]], np.uint64))
                continue
            found.append(self._adopt_piece(span, lo, hi, conservative))
        if reset:
            if tuple(now) == ((span.start, span.end),):
                self._layout.pop(span, None)
            else:
                self._layout[span] = tuple(now)
            self._runs = None
            self._resident.pop(span, None)
            if span in self._file_backed:
                self._resident_changes(span, update=True)
        return np.concatenate(found)

    def _register_classified(self, span: Span, lo: int, hi: int) -> Adopted | None:
        """Register and arm ``[lo, hi)`` of ``span`` (memory that appeared there since the
        last collect) and say what in it was written since (see :meth:`adopt`). None if it
        was refused: it is untracked then (reported whole at every collect, with the
        reason)."""
        shared = any(m.shared for m in self._read_maps()
                     if m.start < hi and lo < m.end)
        try:
            self._register(lo, hi)
            return self._arm_classified(Span(lo, hi), shared)
        except errors.WriteWatchError as exc:
            self._untracked.setdefault(span, []).append((lo, hi, str(exc)))
            self._runs = None
            return None

    def _adopt_piece(self, span: Span, lo: int, hi: int,
                     conservative: list[np.ndarray]) -> np.ndarray:
        """Register newly mapped ``[lo, hi)`` of ``span`` and return what in it may hold
        earlier writes (see :meth:`adopt`)."""
        got = self._register_classified(span, lo, hi)
        if got is None:
            return _EMPTY
        if len(got.conservative):
            conservative.append(got.conservative)
        return got.prior

    def _collect_holes(self, start: int, end: int, label: str, reset: bool,
                       conservative: list[np.ndarray], reasons: list[str]) -> None:
        holes = self._holes(start, end)
        if not len(holes):
            return
        conservative.append(holes)
        reasons.append(f"{len(holes)} zapped PMD range(s) in {label or 'span'}"
                       " (kernel without the 2026 PMD-hole fix)")
        if reset:
            for lo, hi in holes.tolist():
                self.kernel.uffdio_writeprotect(self.uffd, lo, hi - lo,
                                                U.UffdWriteprotectMode.WP)

    def _finish(self, found: list[np.ndarray], conservative: list[np.ndarray],
                reasons: list[str], coalesced: bool) -> Collected:
        self.stats.collects += 1
        if not conservative:  # the common case: no copy
            written = found[0] if len(found) == 1 else \
                np.concatenate(found) if found else _EMPTY
            if not len(written):
                return Collected(_EMPTY, _EMPTY, tuple(reasons), sorted=True)
            written = np.ascontiguousarray(written)
            self.stats.reported(written)
            return Collected(written, _EMPTY, tuple(reasons), sorted=coalesced)
        cons = np.concatenate(conservative)
        written = np.concatenate([*found, cons])
        self.stats.reported(written)
        self.stats.pages_conservative += _npages(cons, self.page_size)
        return Collected(written, cons, tuple(reasons))

    def _release(self) -> None:
        self.kernel.close(self.pagemap)
        self.kernel.close(self.uffd)

    _forget = _release  # closing a copy of either descriptor changes nothing in the mm
