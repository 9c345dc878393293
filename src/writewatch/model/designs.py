"""The designs debated for precise write tracking, one pluggable policy each.

A design arms ranges and collects the pages it reports written, only through the
:class:`~writewatch.model.kernel.ModelKernel` calls a tracker would make (or, for the designs
that never existed in Linux, through the model's own fault hooks and a walk of the page tables
that stands for the kernel code they would need). Ground truth is not visible to a design.

Origins (the linux-mm thread of 22 Feb 2023 in ../shared/seed/, and the kernel):

* ``soft-dirty-old`` / ``soft-dirty``: clear_refs 4 + pagemap bit 55 (Pavel Emelyanov, 3.11;
  CRIU); VM_SOFTDIRTY lost on VMA merge before "mm: propagate VM_SOFTDIRTY on merge" (2026),
  sticky after it. David Hildenbrand: "The VMA flag is one way, but it might prevent merging".
* ``uffd-sync`` / ``uffd-sync-unpop``: userfaultfd write-protect, messages, the writer blocks
  until unprotected (5.7); without / with UFFD_FEATURE_WP_UNPOPULATED (6.4; before it,
  unpopulated anon pages are not protected, so QEMU's live snapshot pre-faults them).
* ``uffd-async`` / ``uffd-async-generic``: UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN (Peter Xu and
  Muhammad Usama Anjum, 6.7): the WRITTEN fast path, and the generic path (any other category
  asked), which read pte_none clean until the 2026 fix.
* ``fault-time-async`` / ``fault-time-sync``: David Hildenbrand's proposal in the thread: no
  page tables populated at arm time, pte_none assumed clean, "(a) When we hit an unpopulated PTE
  using read-access, we map a fresh page (e.g., zeropage) and set the uffd-wp bit", "(b) ...
  write-access, we only map a fresh page (not setting the bit)", "We might have to handle
  discarding of memory, by using a uffd-wp marker"; in sync mode the notification comes after
  the page is mapped: Peter Xu: "What if right after the pgtable pte got setup then another
  thread writting to it? I think it's data loss."
* ``vma-flag``: Peter Xu's reading of it: "a new vma flag ... 'when register uffd-wp on this
  region, protection starts right away'. Then it's not pte based" - no markers, so a zapped
  PTE cannot say "written before but just got zapped".
* ``write-ring``: Peter Xu: "other forms like ring structures ... We know we may avoid pgtable
  walks, but we don't yet know what to lose": async uffd-wp whose first write after arming
  appends the page to a bounded ring; collect drains the ring (O(written)); an overflow falls
  back to a full PAGEMAP_SCAN walk.
* ``writewatch``: this library's uffd-async backend (``backends/uffd_async.py``), unchanged,
  on the model kernel: the mechanism plus what the library does about its gaps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel.pagemap import scan_all
from .kernel import UffdCtx
from .profiles import Profile
from .state import NONE, PAGE, PAGE_SHIFT, PMD_SHIFT, WP, Ring

if TYPE_CHECKING:
    from .replay import Runner

_WRITTEN = int(U.PageCategory.WRITTEN)
_PRESENT = int(U.PageCategory.PRESENT)
_NOT_W = np.uint8(0xFE)


class Design:
    name: ClassVar[str]
    title: ClassVar[str]
    #: synchronous designs notify before the write proceeds: a live snapshot is possible
    sync: ClassVar[bool] = False

    def unavailable(self, profile: Profile) -> str | None:
        """Why this design cannot run on ``profile`` (None: it can)."""
        return None

    def profile(self, profile: Profile) -> Profile:
        return profile

    def setup(self, r: Runner) -> None:
        self.r = r
        self.k = r.kernel

    def arm(self, start: int, end: int) -> None:
        raise NotImplementedError

    def collect(self) -> np.ndarray:
        """Reported pages: (k, 2) uint64 [start, end) address ranges."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- shared helpers --------------------------------------------------------------------
    def notified(self, ctx: UffdCtx, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        """The monitor of a synchronous design: record, copy for the snapshot, unprotect."""
        self.r.notify(addr, seen)
        try:
            self.k.uffdio_writeprotect(ctx.fd, addr, PAGE, 0)
        except errors.WriteWatchError:
            ctx.resolve(self.r.mm, addr)


def _ranges(addrs: list[int] | np.ndarray) -> np.ndarray:
    a = np.unique(np.asarray(addrs, np.uint64))
    if not len(a):
        return np.empty((0, 2), np.uint64)
    return np.stack([a, a + np.uint64(PAGE)], axis=1)


class SoftDirty(Design):
    name = "soft-dirty"
    title = "soft-dirty, sticky VM_SOFTDIRTY on merge (fixed)"
    sticky = True

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.soft_dirty else "CONFIG_MEM_SOFT_DIRTY is off"

    def profile(self, profile: Profile) -> Profile:
        return profile.replace(softdirty_sticky_merge=self.sticky)

    def setup(self, r: Runner) -> None:
        super().setup(r)
        self.pm = self.k.open_pagemap("self")
        self.spans: list[tuple[int, int]] = []

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self.k.clear_refs("self", U.CLEAR_REFS_SOFT_DIRTY)

    def collect(self) -> np.ndarray:
        out = []
        for s, e in self.spans:
            raw = self.k.pagemap_read(self.pm, s, (e - s) >> PAGE_SHIFT)
            hit = np.flatnonzero(raw & np.uint64(U.PagemapBit.SOFT_DIRTY))
            out.append(np.uint64(s) + hit.astype(np.uint64) * np.uint64(PAGE))
        self.k.clear_refs("self", U.CLEAR_REFS_SOFT_DIRTY)
        return _ranges(np.concatenate(out) if out else [])


class SoftDirtyOld(SoftDirty):
    name = "soft-dirty-old"
    title = "soft-dirty, VM_SOFTDIRTY of the changed VMA wins on merge (before the fix)"
    sticky = False


class UffdSync(Design):
    name = "uffd-sync"
    title = "uffd-wp sync, no WP_UNPOPULATED (unpopulated anon not protected)"
    sync = True
    features = int(U.UffdFeature.PAGEFAULT_FLAG_WP)
    design = "kernel"

    def setup(self, r: Runner) -> None:
        super().setup(r)
        self.k.ctx_setup = self._ctx_setup
        self.fd = self.k.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
        self.k.uffdio_api(self.fd, self.features)
        self.spans: list[tuple[int, int]] = []
        self.pending: list[int] = []

    def _ctx_setup(self, ctx: UffdCtx) -> None:
        ctx.design = self.design
        ctx.handler = self._handler

    def _handler(self, ctx: UffdCtx, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        self.pending.append(addr)
        self.notified(ctx, addr, seen, tids)

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self.k.uffdio_register(self.fd, start, end - start, U.UffdRegisterMode.WP)
        self.k.uffdio_writeprotect(self.fd, start, end - start, U.UffdWriteprotectMode.WP)

    def rearm(self) -> None:
        for s, e in self.spans:
            for v in self.r.mm.vmas_in(s, e):
                if v.uffd is not None and v.uffd.fd == self.fd:
                    lo, hi = max(v.start, s), min(v.end, e)
                    self.k.uffdio_writeprotect(self.fd, lo, hi - lo,
                                               U.UffdWriteprotectMode.WP)

    def collect(self) -> np.ndarray:
        out = _ranges(self.pending)
        self.pending = []
        self.rearm()
        return out


class UffdSyncUnpop(UffdSync):
    name = "uffd-sync-unpop"
    title = "uffd-wp sync with WP_UNPOPULATED (markers on none PTEs)"
    features = int(U.UffdFeature.PAGEFAULT_FLAG_WP | U.UffdFeature.WP_UNPOPULATED)

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.wp_unpopulated else "no UFFD_FEATURE_WP_UNPOPULATED (6.4)"


class UffdAsync(Design):
    name = "uffd-async"
    title = "uffd-wp async + PAGEMAP_SCAN, WRITTEN fast path"
    return_mask = _WRITTEN

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.wp_async else "no UFFD_FEATURE_WP_ASYNC / PAGEMAP_SCAN (6.7)"

    def setup(self, r: Runner) -> None:
        super().setup(r)
        self.fd = self.k.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
        self.k.uffdio_api(self.fd, int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED))
        self.pm = self.k.open_pagemap("self")
        self.spans: list[tuple[int, int]] = []

    def scan(self, s: int, e: int) -> np.ndarray:
        res = scan_all(self.k.pagemap_scan, self.pm, s, e, batch=4096,
                       flags=int(U.PmScanFlag.WP_MATCHING), category_mask=_WRITTEN,
                       return_mask=self.return_mask, page_size=PAGE)
        return res.regions[:, :2]

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self.k.uffdio_register(self.fd, start, end - start, U.UffdRegisterMode.WP)
        self.scan(start, end)

    def collect(self) -> np.ndarray:
        parts = [self.scan(s, e) for s, e in self.spans]
        return np.concatenate(parts) if parts else np.empty((0, 2), np.uint64)


class UffdAsyncGeneric(UffdAsync):
    name = "uffd-async-generic"
    title = "uffd-wp async + PAGEMAP_SCAN, generic path (PRESENT also returned)"
    return_mask = _WRITTEN | _PRESENT


class _WalkDesign(UffdSync):
    """Designs that never existed in Linux: the collect is a walk of the page tables that
    stands for the kernel code they would need (written: a live entry without the bit)."""

    def collect(self) -> np.ndarray:
        if not self.async_:
            return super().collect()
        mm = self.r.mm
        found: list[np.ndarray] = []
        for s, e in self.spans:
            for v in mm.vmas_in(s, e):
                if v.uffd is None or v.uffd.fd != self.fd:
                    continue
                lo, hi = max(v.start, s), min(v.end, e)
                for k, i, j in mm.chunks(lo, hi):
                    t = mm.pt.get(k)
                    self.k.entries_walked += 1 if t is None else j - i
                    if t is None:
                        continue  # no page table: clean by assumption
                    st, fl = t.st[i:j], t.fl[i:j]
                    hit = (st != NONE) & ((fl & WP) == 0)
                    if hit.any():
                        if t.huge:
                            t.fl[:] = (t.fl & _NOT_W) | WP
                        else:
                            fl[hit] = (fl[hit] & _NOT_W) | WP
                        base = (k << PMD_SHIFT) + (i << PAGE_SHIFT)
                        found.append(np.uint64(base) +
                                     np.flatnonzero(hit).astype(np.uint64) * np.uint64(PAGE))
        return _ranges(np.concatenate(found) if found else [])

    async_: ClassVar[bool] = False


class FaultTimeAsync(_WalkDesign):
    name = "fault-time-async"
    title = "fault-time proposal, async: nothing installed at arm, markers only on discard"
    design = "faulttime"
    async_ = True
    sync = False
    features = int(U.UffdFeature.WP_ASYNC)

    def unavailable(self, profile: Profile) -> str | None:
        return None


class FaultTimeSync(_WalkDesign):
    name = "fault-time-sync"
    title = "fault-time proposal, sync: a write fault notifies after mapping"
    design = "faulttime"


class VmaFlag(_WalkDesign):
    name = "vma-flag"
    title = "per-VMA 'protection starts right away' flag, no PTE markers (async)"
    design = "vmaflag"
    async_ = True
    sync = False
    features = int(U.UffdFeature.WP_ASYNC)


class WriteRing(UffdAsync):
    name = "write-ring"
    title = "async uffd-wp + bounded write-log ring; overflow falls back to a full walk"
    capacity = 1024

    def setup(self, r: Runner) -> None:
        self.ring = Ring(self.capacity)
        r.kernel.ctx_setup = self._ctx_setup
        super().setup(r)

    def _ctx_setup(self, ctx: UffdCtx) -> None:
        ctx.ring = self.ring

    def collect(self) -> np.ndarray:
        if self.ring.overflowed:
            self.ring.entries.clear()
            self.ring.overflowed = False
            return super().collect()  # the full walk
        pages = sorted(set(self.ring.entries))
        self.r.duplicates += len(self.ring.entries) - len(pages)
        self.ring.entries.clear()
        self.k.entries_walked += len(pages)
        for a in pages:
            try:
                self.k.uffdio_writeprotect(self.fd, a, PAGE, U.UffdWriteprotectMode.WP)
            except errors.WriteWatchError:
                pass
        return _ranges(pages)


class Library(Design):
    name = "writewatch"
    title = "this library's uffd-async backend, unchanged, on the model kernel"

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.wp_async else "no UFFD_FEATURE_WP_ASYNC / PAGEMAP_SCAN (6.7)"

    def setup(self, r: Runner) -> None:
        super().setup(r)
        from ..backends.uffd_async import UffdAsyncBackend
        self.backend = UffdAsyncBackend(
            "self", self.k, hole_scan=not r.profile.scan_pmd_hole_written)

    def arm(self, start: int, end: int) -> None:
        from ..backends.base import Span
        self.backend.add(Span(start, end))

    def collect(self) -> np.ndarray:
        return self.backend.collect().written

    def close(self) -> None:
        self.backend.close()


DESIGNS: dict[str, type[Design]] = {d.name: d for d in (
    SoftDirtyOld, SoftDirty, UffdSync, UffdSyncUnpop, UffdAsync, UffdAsyncGeneric,
    FaultTimeAsync, FaultTimeSync, VmaFlag, WriteRing, Library)}


def get(name: str) -> type[Design]:
    try:
        return DESIGNS[name]
    except KeyError:
        raise errors.InvalidTarget(f"unknown design {name!r}",
                                   hint=f"one of: {', '.join(DESIGNS)}") from None

