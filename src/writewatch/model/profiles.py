"""Kernel profiles: which mechanisms a kernel has and how it behaves where kernels differ.

Each field names the kernel change it stands for (commit, release) or where it was observed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import errors


@dataclass(frozen=True)
class Profile:
    name: str
    release: str
    #: UFFD_FEATURE_WP_ASYNC (6.7, d61ea1cb0095) and the PAGEMAP_SCAN ioctl (6.7)
    wp_async: bool = True
    #: UFFD_FEATURE_WP_UNPOPULATED (6.4, 2bad466cc9d9): markers on none anon PTEs
    wp_unpopulated: bool = True
    #: CONFIG_MEM_SOFT_DIRTY: pagemap bit 55 and clear_refs 4 work
    soft_dirty: bool = True
    #: VM_SOFTDIRTY keeps VMAs with different flags apart (before 34228d473efe "mm: ignore
    #: VM_SOFTDIRTY on VMA merging", 3.16): no flag is lost, VMAs multiply
    softdirty_blocks_merge: bool = False
    #: "mm: propagate VM_SOFTDIRTY on merge" (6707915e030a / bf14d4a05387, ~6.19, 6.18.y
    #: June 2026): a merged VMA is VM_SOFTDIRTY if any part was; before, the flags of the VMA
    #: being changed won, so a dirty neighbour's flag could be lost
    softdirty_sticky_merge: bool = True
    #: "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for unpopulated ptes" (2026): the
    #: generic path reads pte_none WRITTEN in a userfaultfd_wp() VMA (was: not written)
    scan_pte_none_written: bool = True
    #: "... fix PAGEMAP_SCAN written state for PMD holes" (2026): a pmd_none hole in a uffd-wp
    #: VMA reads WRITTEN (was: only the VMA categories, in both paths)
    scan_pmd_hole_written: bool = True
    #: CVE-2025-21696 (6.13, "mm: clear uffd-wp PTE/PMD state on mremap()")
    mremap_clears_uffd_wp: bool = True
    #: 4a5e85f4eb8f (6.16): PAGE_IS_PFNZERO for the huge zero page
    huge_zero_pfnzero: bool = True
    #: PAGE_IS_SOFT_DIRTY category (6.8) and PAGE_IS_GUARD (6.15)
    category_soft_dirty: bool = True
    category_guard: bool = True
    #: CONFIG_PT_RECLAIM (6.14, x86-64): MADV_DONTNEED over a whole PMD frees the emptied
    #: PTE table, leaving pmd_none (observed on 6.18 by the differential test: a later write
    #: fault there gets a THP)
    pt_reclaim: bool = True
    #: do_huge_zero_wp_pmd (6.14?): a write fault on the huge zero page allocates a THP
    #: (observed on 6.18 by the differential test); before, the PMD was split
    huge_zero_wp_thp: bool = True
    #: 96d82deb743a "mm/thp: re-apply mkdirty for small pages after split" (6.3): the PTEs of
    #: a split dirty THP are pte_mkdirty'd, which sets soft-dirty on x86 (seen on 6.12.95,
    #: not on 6.1, where 624a2c94f5b7 had reverted it)
    thp_split_mkdirty: bool = True
    #: b1f202060afe (6.12): splitting an isolated anonymous THP (reclaim) maps its
    #: zero-filled subpages to the shared zero page (observed on 6.18 with MADV_PAGEOUT)
    thp_split_zeropage: bool = True
    #: swap space exists: reclaim can swap anonymous pages out (without it they stay)
    swap: bool = True
    #: the block device's read_ahead_kb / page size: a page-cache miss on a regular file
    #: reads this many pages around it (mm/filemap.c do_sync_mmap_readahead); 128 KiB default
    readahead_pages: int = 32
    #: a page-cache miss in a VM_HUGEPAGE file mapping reads the aligned PMD-sized block
    #: (do_sync_mmap_readahead's VM_HUGEPAGE branch, 5.18); False where the file is on a
    #: tmpfs mounted huge=never (the default): shmem_fault brings in its own page only
    file_huge_readahead: bool = True
    #: /sys/kernel/mm/transparent_hugepage/enabled: "always", "madvise" or "never"
    thp: str = "madvise"
    #: /sys/kernel/mm/transparent_hugepage/use_zero_page: read faults map the huge zero page
    thp_zero_page: bool = True

    def replace(self, **kw: object) -> Profile:
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]

    @property
    def uffd_features(self) -> int:
        """What UFFDIO_API reports: 0x1ffff on 6.18, 0x1fff on 6.1 (both observed)."""
        if self.wp_async:
            return 0x1FFFF
        if self.wp_unpopulated:
            return 0x3FFF
        return 0x1FFF


PROFILES: dict[str, Profile] = {
    # The development machine (6.18.44): the pte_none and PMD-hole fixes observed; the sticky
    # merge fix is in 6.18.y since June 2026. CONFIG_MEM_SOFT_DIRTY is off there: running().
    "6.18": Profile("6.18", "6.18.44"),
    # 6.7 up to the 2026 fixes: generic path reads pte_none clean, PMD holes read clean,
    # VM_SOFTDIRTY lost on merge, mremap keeps uffd-wp PTE bits, no huge-zero PFNZERO.
    "6.7-pre-2026-fixes": Profile(
        "6.7-pre-2026-fixes", "6.7", softdirty_sticky_merge=False, scan_pte_none_written=False,
        scan_pmd_hole_written=False, mremap_clears_uffd_wp=False, huge_zero_pfnzero=False,
        category_soft_dirty=False, category_guard=False, pt_reclaim=False,
        huge_zero_wp_thp=False, thp_split_zeropage=False),
    # Debian 12 (observed under qemu): soft-dirty and synchronous uffd-wp, no WP_UNPOPULATED, no
    # WP_ASYNC, no PAGEMAP_SCAN (ENOTTY).
    "6.1": Profile(
        "6.1", "6.1", wp_async=False, wp_unpopulated=False, softdirty_sticky_merge=False,
        scan_pte_none_written=False, scan_pmd_hole_written=False, mremap_clears_uffd_wp=False,
        huge_zero_pfnzero=False, category_soft_dirty=False, category_guard=False,
        pt_reclaim=False, huge_zero_wp_thp=False, thp_split_mkdirty=False,
        thp_split_zeropage=False),
}


def get(name: str) -> Profile:
    """A built-in profile by name, or ``"running"``: :func:`running`."""
    if name == "running":
        return running()
    try:
        return PROFILES[name]
    except KeyError:
        raise errors.InvalidTarget(f"unknown kernel profile {name!r}",
                                   hint=f"one of: {', '.join(PROFILES)}, running") from None


def running() -> Profile:
    """The profile of the kernel this process runs on, probed:
    :func:`writewatch.lab.profiles.running`."""
    # The model's one import from the lab. The probes ask the real kernel (features() and
    # functional tests on scratch memory), which the simulation behind the seam must not
    # do; get("running") and this function are documented names of the model, so they
    # resolve the lab's probe here, on first use.
    from ..lab.profiles import running as probe
    return probe()


__all__ = ["PROFILES", "Profile", "get", "running"]
