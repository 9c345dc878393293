"""Peter Xu: "other forms like ring structures ... We know we may avoid pgtable walks, but we
don't yet know what to lose": async uffd-wp whose fault that unprotects a page appends it to a
bounded ring; collect drains the ring (O(written)) and re-protects those pages; an overflow
falls back to a full PAGEMAP_SCAN walk. A zap is not a fault: it is not logged."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ... import _uapi as U
from ... import errors
from ...model.pte import PAGE
from ...model.uffd import Ring, UffdCtx, WpRules
from .base import Host, page_ranges
from .uffd_async import UffdAsync


class WriteRing(UffdAsync):
    name = "write-ring"
    title = "async uffd-wp + bounded write-log ring; overflow falls back to a full walk"
    origin = "Peter Xu, linux-mm, 22 Feb 2023"
    rules = WpRules(ring=True)
    explore: ClassVar[str | None] = "ring"
    capacity = 1024

    def setup(self, r: Host) -> None:
        self.ring = Ring(self.capacity)
        super().setup(r)

    def setup_context(self, ctx: UffdCtx) -> None:
        super().setup_context(ctx)
        ctx.ring = self.ring

    def collect(self) -> np.ndarray:
        if self.ring.overflowed:
            self.ring.entries.clear()
            self.ring.overflowed = False
            return super().collect()  # the full walk
        pages = sorted(set(self.ring.entries))
        self.duplicates += len(self.ring.entries) - len(pages)
        self.ring.entries.clear()
        self.k.entries_walked += len(pages)
        for a in pages:
            try:
                self.k.uffdio_writeprotect(self.fd, a, PAGE, U.UffdWriteprotectMode.WP)
            except errors.WriteWatchError:
                pass
        return page_ranges(pages)
