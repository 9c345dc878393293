"""Peter Xu's reading of the fault-time proposal: "a new vma flag ... 'when register uffd-wp
on this region, protection starts right away'. Then it's not pte based". No markers, so a
zapped PTE cannot say "written before but just got zapped": "how do we tell 'this pte is
none' or 'even if this pte is none, it has been written before but just got zapped'"."""

from __future__ import annotations

from typing import ClassVar

from ... import _uapi as U
from ...model.profiles import Profile
from ...model.uffd import WpRules
from .uffd_async import UffdAsync
from .uffd_sync import UffdSync

RULES = WpRules(markers=False, none_protected=True, vma_flag=True)


class VmaFlag(UffdAsync):
    name = "vma-flag"
    title = "per-VMA 'protection starts right away' flag, no PTE markers (async)"
    origin = "Peter Xu, linux-mm, 22 Feb 2023"
    rules = RULES
    features = int(U.UffdFeature.WP_ASYNC)
    explore: ClassVar[str | None] = "scan"

    def unavailable(self, profile: Profile) -> str | None:
        return None


class VmaFlagSync(UffdSync):
    name = "vma-flag-sync"
    title = "the per-VMA flag, sync: a write fault on pte_none notifies before mapping"
    origin = "Peter Xu, linux-mm, 22 Feb 2023"
    rules = RULES
