"""Userfaultfd write-protect, synchronous (5.7; QEMU's background snapshot): the writer
blocks on a message until the monitor unprotects the page. Without WP_UNPOPULATED (6.4,
2bad466cc9d9) unpopulated anonymous pages are not protected, so QEMU pre-faults them."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ... import _uapi as U
from ...kernel.uffd import UffdMsg
from ...model.profiles import Profile
from ...model.uffd import LINUX, UffdCtx
from .base import Design, Host, page_ranges


class UffdSync(Design):
    name = "uffd-sync"
    title = "uffd-wp sync, no WP_UNPOPULATED (unpopulated anon not protected)"
    origin = "userfaultfd-wp (5.7); QEMU background snapshot"
    sync = True
    rules = LINUX
    features = int(U.UffdFeature.PAGEFAULT_FLAG_WP)
    explore: ClassVar[str | None] = "handler"

    def setup(self, r: Host) -> None:
        super().setup(r)
        self.fd = self.open_uffd()
        self.spans: list[tuple[int, int]] = []
        self.pending: list[int] = []

    def notified(self, ctx: UffdCtx, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        self.pending.append(addr)
        super().notified(ctx, addr, seen, tids)

    def notified_pages(self, ctx: UffdCtx, addrs: np.ndarray, seen: np.ndarray) -> None:
        self.pending.extend(addrs.tolist())
        super().notified_pages(ctx, addrs, seen)

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self.k.uffdio_register(self.fd, start, end - start, U.UffdRegisterMode.WP)
        self.k.uffdio_writeprotect(self.fd, start, end - start, U.UffdWriteprotectMode.WP)

    def rearm(self) -> None:
        for s, e in self.spans:
            for v in self.k.mm.vmas_in(s, e):
                if v.uffd is not None and v.uffd.fd == self.fd:
                    lo, hi = max(v.start, s), min(v.end, e)
                    self.k.uffdio_writeprotect(self.fd, lo, hi - lo,
                                               U.UffdWriteprotectMode.WP)

    def collect(self) -> np.ndarray:
        out = page_ranges(self.pending)
        self.pending = []
        self.rearm()
        return out


class UffdSyncUnpop(UffdSync):
    name = "uffd-sync-unpop"
    title = "uffd-wp sync with WP_UNPOPULATED (markers on none PTEs)"
    origin = "UFFD_FEATURE_WP_UNPOPULATED (6.4, 2bad466cc9d9)"
    features = int(U.UffdFeature.PAGEFAULT_FLAG_WP | U.UffdFeature.WP_UNPOPULATED)

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.wp_unpopulated else "no UFFD_FEATURE_WP_UNPOPULATED (6.4)"


class UffdSyncRemove(UffdSyncUnpop):
    name = "uffd-sync-remove"
    title = "uffd-wp sync with WP_UNPOPULATED and EVENT_REMOVE: discards are reported"
    origin = ("UFFD_FEATURE_EVENT_REMOVE (4.11). Peter Xu: \"even if the tracer registered "
              "with UFFD_FEATURE_EVENT_REMOVE to trap DONTNEED, we can't avoid the rubbish "
              "message from coming after that point\"")
    features = int(U.UffdFeature.PAGEFAULT_FLAG_WP | U.UffdFeature.WP_UNPOPULATED |
                   U.UffdFeature.EVENT_REMOVE)
    explore: ClassVar[str | None] = None
    explore_why = "the explorer has no event messages"

    def setup_context(self, ctx: UffdCtx) -> None:
        super().setup_context(ctx)
        ctx.on_event = self._event

    def _event(self, ctx: UffdCtx, msg: UffdMsg) -> None:
        """UFFD_EVENT_REMOVE(start, end): the range now reads zero (anon) or lost its pages
        (MADV_REMOVE): report it as changed."""
        if msg.event == U.UffdEvent.REMOVE:
            self.pending.extend(range(msg.a, msg.b, 4096))
