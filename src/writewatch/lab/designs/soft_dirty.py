"""Soft-dirty: clear_refs 4 + pagemap bit 55 (Pavel Emelyanov, 3.11; CRIU), in the three
forms its VMA flag has had. David Hildenbrand in the thread: "The VMA flag is one way, but it
might prevent merging as we discovered."

* ``soft-dirty-blocks-merge``: before 34228d473efe ("mm: ignore VM_SOFTDIRTY on VMA merging",
  3.16) VMAs with different VM_SOFTDIRTY did not merge: nothing is lost, VMAs multiply;
* ``soft-dirty-old``: VM_SOFTDIRTY ignored when merging, and the merged VMA takes the flag of
  the VMA being changed, so a dirty neighbour's flag can be lost;
* ``soft-dirty``: with "mm: propagate VM_SOFTDIRTY on merge" (2026) the flag is sticky.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ... import _uapi as U
from ...model.profiles import Profile
from ...model.pte import PAGE, PAGE_SHIFT
from .base import Design, Host, page_ranges


class SoftDirty(Design):
    name = "soft-dirty"
    title = "soft-dirty, sticky VM_SOFTDIRTY on merge (fixed)"
    origin = "\"mm: propagate VM_SOFTDIRTY on merge\" (2026)"
    explore: ClassVar[str | None] = "softdirty"
    sticky = True
    blocks_merge = False

    def unavailable(self, profile: Profile) -> str | None:
        return None if profile.soft_dirty else "CONFIG_MEM_SOFT_DIRTY is off"

    def profile(self, profile: Profile) -> Profile:
        return profile.replace(softdirty_sticky_merge=self.sticky,
                               softdirty_blocks_merge=self.blocks_merge)

    def setup(self, r: Host) -> None:
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
        return page_ranges(np.concatenate(out) if out else [])


class SoftDirtyOld(SoftDirty):
    name = "soft-dirty-old"
    title = "soft-dirty, VM_SOFTDIRTY of the changed VMA wins on merge (before the fix)"
    origin = "3.16 (34228d473efe) to the 2026 fix"
    sticky = False
    explore: ClassVar[str | None] = None
    explore_why = "the explorer has no VMAs: per PTE it is soft-dirty"


class SoftDirtyBlocksMerge(SoftDirty):
    name = "soft-dirty-blocks-merge"
    title = "soft-dirty before 3.16: VM_SOFTDIRTY keeps VMAs from merging"
    origin = "3.11 to 34228d473efe (\"mm: ignore VM_SOFTDIRTY on VMA merging\", 3.16)"
    sticky = False
    blocks_merge = True
    explore: ClassVar[str | None] = None
    explore_why = "the explorer has no VMAs: per PTE it is soft-dirty"
