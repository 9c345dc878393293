"""Soft-dirty implemented internally on uffd-wp markers: David Hildenbrand in the thread,
"The natural way for me to tackle this would be to try fixing soft-dirty instead, or handle
the details on how soft-dirty is implemented internally: not exposing to user space that we
are using uffd-wp under the hood ... We wouldn't be able to use uffd-wp + softdirty, but who
really cares I guess".

User space keeps soft-dirty's interface (clear_refs 4 arms, pagemap's bit reports); inside,
the kernel arms an async uffd-wp context of its own with markers, and a VMA it has not armed
yet (a new mapping) reads dirty as a whole, as VM_SOFTDIRTY makes it, until the next clear.
Here the kernel's inside is written with the seam's calls: ``PAGE_IS_WPALLOWED`` finds the
VMAs not armed yet, PAGEMAP_SCAN get+WP is the read-and-clear. What it buys: no VM_SOFTDIRTY,
so no merge losses and no whole-VMA false positives after a merge; markers survive zaps, so
no losses to shmem reclaim. What it costs: the page tables markers need, and the uffd slot of
every VMA (an application using userfaultfd itself gets EBUSY).
"""

from __future__ import annotations

import numpy as np

from ... import _uapi as U
from ... import errors
from .uffd_async import UffdAsync

_WPALLOWED = int(U.PageCategory.WPALLOWED)


class SoftDirtyOnMarkers(UffdAsync):
    name = "soft-dirty-on-markers"
    title = "soft-dirty's interface, implemented inside on async uffd-wp markers"
    origin = "David Hildenbrand, linux-mm, 22 Feb 2023"

    def _adopt(self, s: int, e: int) -> np.ndarray:
        """Arm the VMAs of [s, e) not armed yet; their pages, reported dirty."""
        res = self.k.scan_all(self.pm, s, e, category_mask=_WPALLOWED,
                              category_inverted=_WPALLOWED, return_mask=_WPALLOWED)
        new = res.regions[:, :2]
        for a, b in new.tolist():
            try:
                self.k.uffdio_register(self.fd, a, b - a, U.UffdRegisterMode.WP)
            except errors.WriteWatchError:
                continue  # not registrable: stays reported dirty at every collect
            self.scan(a, b)
        return new

    def arm(self, start: int, end: int) -> None:
        self.spans.append((start, end))
        self._adopt(start, end)

    def collect(self) -> np.ndarray:
        parts = []
        for s, e in self.spans:
            parts.append(self.scan(s, e))
            parts.append(self._adopt(s, e))
        return np.concatenate(parts) if parts else np.empty((0, 2), np.uint64)
