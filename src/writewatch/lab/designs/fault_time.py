"""David Hildenbrand's proposal in the thread: handle unpopulated memory at fault time
instead of installing markers. "(a) When we hit an unpopulated PTE using read-access, we map a
fresh page (e.g., zeropage) and set the uffd-wp bit", "(b) ... using write-access, we only map
a fresh page (not setting the bit)", "pte_none() without the uffd-wp bit set would be assumed
to be clean", "We might have to handle discarding of memory, by using a uffd-wp marker. Then
we could detect that ... directly." In sync mode the notification comes after the page is
mapped: Peter Xu, "What if right after the pgtable pte got setup then another thread writting
to it? I think it's data loss."

The collect is PAGEMAP_SCAN get+WP under the design's rules (pte_none reads clean: that is the
kernel code the proposal would need); a discard leaves a marker that reads as changed.
"""

from __future__ import annotations

from typing import ClassVar

from ... import _uapi as U
from ...model.profiles import Profile
from ...model.uffd import WpRules
from .uffd_async import UffdAsync
from .uffd_sync import UffdSync

RULES = WpRules(markers=False, none_protected=True, discard_marker=True)


class FaultTimeAsync(UffdAsync):
    name = "fault-time-async"
    title = "fault-time proposal, async: nothing installed at arm, markers only on discard"
    origin = "David Hildenbrand, linux-mm, 22 Feb 2023, (a) and (b)"
    rules = RULES
    features = int(U.UffdFeature.WP_ASYNC)
    explore: ClassVar[str | None] = "scan"

    def unavailable(self, profile: Profile) -> str | None:
        return None  # a kernel patch: no kernel has it, every profile can take it


class FaultTimeSync(UffdSync):
    name = "fault-time-sync"
    title = "fault-time proposal, sync: a write fault notifies after mapping"
    origin = "the same mail; Peter Xu's objection (\"data loss\")"
    rules = WpRules(markers=False, none_protected=True, discard_marker=True,
                    notify_after_map=True)
