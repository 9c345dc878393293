"""Kernel profiles: which mechanisms a kernel has and how it behaves where kernels differ.

Each field names the kernel change it stands for (see ../shared/reference/kernel-interfaces.md
sections 1.7-1.9, 2.5, 3 and 5.1).
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import tempfile
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
    #: the block device's read_ahead_kb / page size: a page-cache miss on a regular file
    #: reads this many pages around it (mm/filemap.c do_sync_mmap_readahead); 128 KiB default
    readahead_pages: int = 32
    #: /sys/kernel/mm/transparent_hugepage/enabled: "always", "madvise" or "never"
    thp: str = "madvise"
    #: /sys/kernel/mm/transparent_hugepage/use_zero_page: read faults map the huge zero page
    thp_zero_page: bool = True

    def replace(self, **kw: object) -> Profile:
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]

    @property
    def uffd_features(self) -> int:
        """What UFFDIO_API reports: 0x1ffff on 6.18 (section 9), 0x1fff on 6.1 (section 10)."""
        if self.wp_async:
            return 0x1FFFF
        if self.wp_unpopulated:
            return 0x3FFF
        return 0x1FFF


PROFILES: dict[str, Profile] = {
    # This machine (section 9): the pte_none and PMD-hole fixes observed; the sticky merge
    # fix is in 6.18.y since June 2026. CONFIG_MEM_SOFT_DIRTY is off here: see running().
    "6.18": Profile("6.18", "6.18.44"),
    # 6.7 up to the 2026 fixes: generic path reads pte_none clean, PMD holes read clean,
    # VM_SOFTDIRTY lost on merge, mremap keeps uffd-wp PTE bits, no huge-zero PFNZERO.
    "6.7-pre-2026-fixes": Profile(
        "6.7-pre-2026-fixes", "6.7", softdirty_sticky_merge=False, scan_pte_none_written=False,
        scan_pmd_hole_written=False, mremap_clears_uffd_wp=False, huge_zero_pfnzero=False,
        category_soft_dirty=False, category_guard=False, pt_reclaim=False,
        huge_zero_wp_thp=False),
    # Debian 12 (section 10): soft-dirty and synchronous uffd-wp, no WP_UNPOPULATED, no
    # WP_ASYNC, no PAGEMAP_SCAN (ENOTTY).
    "6.1": Profile(
        "6.1", "6.1", wp_async=False, wp_unpopulated=False, softdirty_sticky_merge=False,
        scan_pte_none_written=False, scan_pmd_hole_written=False, mremap_clears_uffd_wp=False,
        huge_zero_pfnzero=False, category_soft_dirty=False, category_guard=False,
        pt_reclaim=False, huge_zero_wp_thp=False, thp_split_mkdirty=False),
}


def get(name: str) -> Profile:
    if name == "running":
        return running()
    try:
        return PROFILES[name]
    except KeyError:
        raise errors.InvalidTarget(f"unknown kernel profile {name!r}",
                                   hint=f"one of: {', '.join(PROFILES)}, running") from None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.12.95+deb12-amd64`` (pure)."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1][:3] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


#: features (not fixes, so not backported to stable) by the mainline release that brought them
SINCE: dict[str, tuple[int, int]] = {
    "thp_split_mkdirty": (6, 3),
    "pt_reclaim": (6, 14),
    "huge_zero_wp_thp": (6, 14),
}


def _probe_mremap_clears_uffd_wp() -> bool:
    """CVE-2025-21696 (6.13, in 6.12.y too: seen on Debian's 6.12.95): a page moved by mremap
    out of a uffd-wp range loses the uffd-wp bit (pagemap bit 57 of the destination)."""
    from .. import _uapi as U
    from ..backends.uffd_async import open_uffd
    from ..kernel import LINUX, _sys
    from ..kernel.pagemap import decode_entries, read_entries

    ps = LINUX.page_size
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    src = _sys.mmap(0, ps, prot, flags)
    dst = _sys.mmap(0, ps, 0, flags)  # a PROT_NONE placeholder to move onto
    uffd = open_uffd()
    try:
        ctypes.memset(src, 1, ps)
        LINUX.uffdio_register(uffd, src, ps, U.UffdRegisterMode.WP)
        LINUX.uffdio_writeprotect(uffd, src, ps, U.UffdWriteprotectMode.WP)
        _sys.mremap(src, ps, ps, U.MREMAP_MAYMOVE | U.MREMAP_FIXED, dst)
        src = -1
        pm = LINUX.open_pagemap("self")
        try:
            entry = decode_entries(read_entries(pm, dst, 1, ps))
        finally:
            LINUX.close(pm)
        return not bool(entry["uffd_wp"][0])
    finally:
        LINUX.close(uffd)
        _sys.munmap(dst, ps)
        if src >= 0:
            _sys.munmap(src, ps)


def _probe_huge_zero_pfnzero() -> bool | None:
    """4a5e85f4eb8f (6.16, in 6.12.y too: seen on Debian's 6.12.95): PAGEMAP_SCAN reports
    PAGE_IS_PFNZERO for the huge zero page. None when no huge zero page could be mapped."""
    from .. import _uapi as U
    from ..kernel import LINUX, _sys
    from ..kernel.pagemap import Scanner

    pmd = 2 << 20
    prot, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    raw = _sys.mmap(0, 2 * pmd, prot, flags)
    addr = -(-raw // pmd) * pmd
    try:
        _sys.madvise(addr, pmd, U.MADV_HUGEPAGE)
        ctypes.c_char.from_address(addr).value  # noqa: B018 (a read fault)
        pm = LINUX.open_pagemap("self")
        try:
            huge, zero = int(U.PageCategory.HUGE), int(U.PageCategory.PFNZERO)
            got = Scanner(4)(pm, addr, addr + pmd, return_mask=huge | zero).regions
        finally:
            LINUX.close(pm)
        if not len(got) or not int(got[0, 2]) & huge:
            return None
        return bool(int(got[0, 2]) & zero)
    finally:
        _sys.munmap(raw, 2 * pmd)


def running() -> Profile:
    """The profile of the running kernel: "6.18" where async uffd-wp exists, "6.1" where it
    does not, adjusted by what :func:`writewatch.features` probed (the 2026 PAGEMAP_SCAN fixes,
    the soft-dirty and guard categories, soft-dirty itself), by the release for the changes in
    :data:`SINCE`, and with this machine's THP settings."""
    from ..features import features, pmd_holes_reported
    f = features()
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.split("[")[1].split("]")[0] if "[" in thp else "never"
    zero = _read("/sys/kernel/mm/transparent_hugepage/use_zero_page").strip() != "0"
    release = os.uname().release
    changes: dict[str, object] = {
        "name": "running", "release": release, "thp": mode, "thp_zero_page": zero,
        "soft_dirty": f.backends["soft-dirty"].usable,
        "wp_unpopulated": f.mechanisms["WP_UNPOPULATED"].usable,
        "readahead_pages": _readahead_pages(tempfile.gettempdir()),
        **{field: _version(release) >= since for field, since in SINCE.items()}}
    async_ = f.mechanisms["WP_ASYNC"].usable
    if async_:
        # the PMD-hole fix builds on the pte_none one (its patch names it a prerequisite)
        fixed = pmd_holes_reported()
        changes.update(
            scan_pte_none_written=fixed, scan_pmd_hole_written=fixed,
            category_soft_dirty=f.mechanisms["PAGE_IS_SOFT_DIRTY"].usable,
            category_guard=f.mechanisms["PAGE_IS_GUARD"].usable,
            mremap_clears_uffd_wp=_probe_mremap_clears_uffd_wp())
        pfnzero = _probe_huge_zero_pfnzero() if mode != "never" and zero else None
        changes["huge_zero_pfnzero"] = _version(release) >= (6, 16) if pfnzero is None \
            else pfnzero
    return PROFILES["6.18" if async_ else "6.1"].replace(**changes)


def _readahead_pages(path: str) -> int:
    """read_ahead_kb of the block device holding ``path``, in pages (32 if unknown; 1 on a
    filesystem with no block device, such as tmpfs: a shmem fault brings in its own page only,
    observed with Debian's 6.1 in the kernel matrix, whose TMPDIR is a tmpfs)."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return 32
    if os.major(dev) == 0:
        return 1
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for q in (f"{base}/queue/read_ahead_kb", f"{base}/../queue/read_ahead_kb"):
        text = _read(q).strip()
        if text.isdigit():
            return max(1, int(text) * 1024 // os.sysconf("SC_PAGE_SIZE"))
    return 32
