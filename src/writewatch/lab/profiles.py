"""The profile of the kernel this process runs on: the static profile of its generation,
adjusted by what probes of the real kernel find (distributions backport fixes).

This is the lab's, not the model's: it asks the real kernel (:func:`writewatch.features` and
small functional probes), which the simulation behind the seam must not do.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile

from ..model.profiles import PROFILES, Profile
from ..model.profiles import get as _get_static


def get(name: str) -> Profile:
    """A built-in profile, or ``"running"``."""
    return running() if name == "running" else _get_static(name)


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
    "thp_split_zeropage": (6, 12),
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
        "file_huge_readahead": _tmpfs_huge(tempfile.gettempdir()) != "never",
        "swap": bool(_read("/proc/swaps").strip().count("\n")),
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


def _tmpfs_huge(path: str) -> str | None:
    """The huge= option of the tmpfs holding ``path`` ("never" when not given:
    mm/shmem.c SHMEM_HUGE_NEVER), or None when ``path`` is not on a tmpfs."""
    best, opts = "", ""
    real = os.path.realpath(path)
    for line in _read("/proc/self/mountinfo").splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) > 4 and (real + "/").startswith(fields[4].rstrip("/") + "/") \
                and len(fields[4]) >= len(best):
            best, opts = fields[4], post
    fstype, *rest = opts.split(" ") or [""]
    if fstype != "tmpfs":
        return None
    for opt in (rest[-1] if rest else "").split(","):
        if opt.startswith("huge="):
            return opt[5:]
    return "never"


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
