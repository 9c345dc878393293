"""``features()``: what this kernel supports, which backends are usable, and why not.

Capabilities are probed, not inferred from the kernel version: UFFDIO_API on a throwaway
descriptor, PAGEMAP_SCAN on a scratch mapping (unknown category bits are EINVAL), and
functional tests where a bit alone says too little (soft-dirty, the PMD-hole fix).
"""

from __future__ import annotations

import functools
import mmap
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _uapi as U
from . import errors
from .kernel import LINUX, procfs

__all__ = ["Feature", "Features", "features", "pmd_holes_reported", "pte_none_written"]

#: auto picks the first usable backend of this list
PREFERENCE = ("uffd-async", "uffd-wp-sync", "soft-dirty")

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Feature:
    """One mechanism or backend: usable here or not, and why."""

    name: str
    usable: bool
    detail: str  #: what the probe found, or why it is not usable
    since: str | None = None  #: kernel release that added it
    fix: str | None = None  #: what would make it usable


@dataclass(frozen=True)
class Features:
    """The result of :func:`features`."""

    kernel: str
    machine: str
    page_size: int
    mechanisms: Mapping[str, Feature]
    backends: Mapping[str, Feature]
    auto: str | None  #: the backend ``backend="auto"`` picks, None if none is usable
    uffd_features: int = 0  #: UFFD_FEATURE_* bits offered by UFFDIO_API
    pagemap_categories: int = 0  #: PAGE_IS_* bits PAGEMAP_SCAN accepts
    settings: Mapping[str, str | None] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Feature:
        if name in self.backends:
            return self.backends[name]
        return self.mechanisms[name]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["uffd_features_names"] = [f.name for f in U.UffdFeature
                                    if f & self.uffd_features]
        d["pagemap_categories_names"] = [c.name for c in U.PageCategory
                                         if c & self.pagemap_categories]
        return d


def _caps() -> int:
    try:
        status = procfs.parse_status(procfs.read_bytes("/proc/self/status"))
        return int(status.get("CapEff", "0"), 16)
    except errors.WriteWatchError:
        return 0


def _probe_uffd() -> tuple[Feature, int]:
    try:
        fd = LINUX.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    except errors.WriteWatchError as exc:
        return Feature("userfaultfd", False, str(exc), "4.3", exc.hint), 0
    try:
        feats = LINUX.uffdio_api(fd, 0).features
    except errors.WriteWatchError as exc:
        return Feature("userfaultfd", False, str(exc), "4.3", exc.hint), 0
    finally:
        LINUX.close(fd)
    return Feature("userfaultfd", True, f"UFFDIO_API offers {int(feats):#x}", "4.3"), int(feats)


def _uffd_feature(name: str, bit: U.UffdFeature, offered: int, uffd_ok: bool,
                  note: str = "") -> Feature:
    since = U.UFFD_FEATURE_SINCE[bit]
    if not uffd_ok:
        return Feature(name, False, "userfaultfd is not available", since)
    if offered & bit:
        return Feature(name, True, f"UFFD_FEATURE_{bit.name} offered{note}", since)
    return Feature(name, False, f"UFFD_FEATURE_{bit.name} not offered by this kernel", since,
                   f"needs Linux {since} or newer")


def _probe_pagemap_scan() -> tuple[Feature, int]:
    from .kernel.pagemap import Scanner, open_pagemap
    ps = LINUX.page_size
    buf = mmap.mmap(-1, ps)
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fd = open_pagemap("self")
    scan = Scanner(1)
    try:
        try:
            scan(fd, addr, addr + ps, return_mask=int(U.PageCategory.PRESENT))
        except errors.WriteWatchError as exc:
            return Feature("PAGEMAP_SCAN", False, f"ioctl refused: {exc}", "6.7",
                           "needs Linux 6.7 or newer"), 0
        accepted = 0
        for cat in U.PageCategory:
            try:
                scan(fd, addr, addr + ps, return_mask=int(cat))
                accepted |= int(cat)
            except errors.WriteWatchError:
                pass
        names = ",".join(c.name or "" for c in U.PageCategory if c & accepted)
        return Feature("PAGEMAP_SCAN", True, f"categories {names}", "6.7"), accepted
    finally:
        LINUX.close(fd)
        del scan
        import gc
        gc.collect()
        try:
            buf.close()
        except BufferError:
            pass


@functools.lru_cache(maxsize=1)
def pmd_holes_reported() -> bool:
    """Whether PAGEMAP_SCAN reports a PMD hole in an armed range as written (Kiryl
    Shutsemau, "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for PMD holes", 2026).

    Functional test: arm a THP, ``MADV_DONTNEED`` all of it (leaving ``pmd_none``), scan.
    False when the kernel lacks the fix or when no THP could be made to test it (the caller
    then scans for holes itself: slower, never wrong)."""
    from .backends.uffd_async import WRITTEN, open_uffd
    from .kernel import _sys
    from .kernel.pagemap import Scanner, open_pagemap, scan_all

    pmd = procfs.thp_pmd_size() or 2 << 20
    if procfs.thp_mode() in (None, "never"):
        return False
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    try:
        raw = _sys.mmap(0, 2 * pmd, prot, flags)
    except errors.WriteWatchError:
        return False
    addr = -(-raw // pmd) * pmd
    uffd = pm = -1
    try:
        _sys.madvise(addr, pmd, U.MADV_HUGEPAGE)
        import ctypes
        ctypes.memset(addr, 1, pmd)
        pm = open_pagemap("self")
        scan = Scanner(8)
        huge = scan(pm, addr, addr + pmd, return_mask=int(U.PageCategory.HUGE))
        if not (len(huge.regions) and huge.regions[0, 2]):
            return False
        uffd = open_uffd()
        LINUX.uffdio_register(uffd, addr, pmd, U.UffdRegisterMode.WP)
        wp = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)
        scan_all(scan, pm, addr, addr + pmd, flags=wp, category_mask=WRITTEN,
                 return_mask=WRITTEN)
        _sys.madvise(addr, pmd, U.MADV_DONTNEED)
        got = scan_all(scan, pm, addr, addr + pmd, category_mask=WRITTEN,
                       return_mask=WRITTEN).regions
        return int((got[:, 1] - got[:, 0]).sum()) == pmd
    except errors.WriteWatchError:
        return False
    finally:
        if uffd >= 0:
            LINUX.close(uffd)
        if pm >= 0:
            LINUX.close(pm)
        _sys.munmap(raw, 2 * pmd)


@functools.lru_cache(maxsize=1)
def pte_none_written() -> bool:
    """Whether PAGEMAP_SCAN's generic path (any mask other than exactly WRITTEN) reads a
    ``pte_none`` entry of an armed anonymous range as written, as its WRITTEN fast path always
    did (Kiryl Shutsemau, "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for unpopulated
    ptes", 2026). Functional test: arm two written pages, MADV_DONTNEED one, scan with
    ``return_mask = WRITTEN | PRESENT``."""
    from .backends.uffd_async import WRITTEN, open_uffd
    from .kernel import _sys
    from .kernel.pagemap import Scanner, open_pagemap

    ps = LINUX.page_size
    try:
        addr = _sys.mmap(0, 2 * ps, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except errors.WriteWatchError:
        return False
    uffd = pm = -1
    try:
        import ctypes
        ctypes.memset(addr, 1, 2 * ps)
        pm = open_pagemap("self")
        uffd = open_uffd()
        LINUX.uffdio_register(uffd, addr, 2 * ps, U.UffdRegisterMode.WP)
        LINUX.uffdio_writeprotect(uffd, addr, 2 * ps, U.UffdWriteprotectMode.WP)
        _sys.madvise(addr, ps, U.MADV_DONTNEED)
        got = Scanner(8)(pm, addr, addr + 2 * ps,
                         return_mask=WRITTEN | int(U.PageCategory.PRESENT)).regions
        first = got[(got[:, 0] <= addr) & (got[:, 1] > addr)]
        return bool(len(first) and int(first[0, 2]) & WRITTEN)
    except errors.WriteWatchError:
        return False
    finally:
        if uffd >= 0:
            LINUX.close(uffd)
        if pm >= 0:
            LINUX.close(pm)
        _sys.munmap(addr, 2 * ps)


def _backend_probe(name: str) -> tuple[bool, str] | None:
    """A backend module's own ``probe()``, when the backend is part of this build."""
    from .backends import REGISTRY
    cls = REGISTRY.get(name)
    if cls is None:
        return None
    import sys
    probe = getattr(sys.modules[cls.__module__], "probe", None)
    return probe() if probe else None


@functools.lru_cache(maxsize=1)
def _features() -> Features:
    caps = _caps()
    root = os.geteuid() == 0
    uffd, offered = _probe_uffd()
    mech: dict[str, Feature] = {"userfaultfd": uffd}
    F = U.UffdFeature
    mech["uffd-wp"] = _uffd_feature("uffd-wp", F.PAGEFAULT_FLAG_WP, offered, uffd.usable)
    mech["WP_UNPOPULATED"] = _uffd_feature("WP_UNPOPULATED", F.WP_UNPOPULATED, offered,
                                           uffd.usable)
    mech["WP_ASYNC"] = _uffd_feature("WP_ASYNC", F.WP_ASYNC, offered, uffd.usable)
    mech["WP_HUGETLBFS_SHMEM"] = _uffd_feature("WP_HUGETLBFS_SHMEM", F.WP_HUGETLBFS_SHMEM,
                                               offered, uffd.usable)
    mech["EVENT_FORK"] = _uffd_feature("EVENT_FORK", F.EVENT_FORK, offered, uffd.usable)
    scan, cats = _probe_pagemap_scan()
    mech["PAGEMAP_SCAN"] = scan
    for cat in U.PageCategory:
        since = U.PAGE_CATEGORY_SINCE[cat]
        ok = bool(cats & cat)
        mech[f"PAGE_IS_{cat.name}"] = Feature(
            f"PAGE_IS_{cat.name}", ok, "accepted" if ok else "EINVAL: unknown category",
            since, None if ok else f"needs Linux {since} or newer")
    if scan.usable and mech["WP_ASYNC"].usable:
        fixed = pmd_holes_reported()
        none = pte_none_written()
        mech["pte-none-written"] = Feature(
            "pte-none-written", none,
            "a zapped PTE of an armed range reads written on every scan path" if none else
            "the generic scan path reads a zapped PTE as not written (kernel without the 2026 "
            "fix): file and shared memory are scanned span by span", "2026 fix")
        mech["pmd-hole-written"] = Feature(
            "pmd-hole-written", fixed,
            "a zapped THP in an armed range reads written" if fixed else
            "not shown (kernel without the 2026 fix, or no THP to test with): the uffd-async "
            "backend scans for holes at each collect", "2026 fix")
    thp = procfs.thp_mode()
    mech["THP"] = Feature("THP", thp not in (None, "never"), f"transparent_hugepage: {thp}")
    nr_huge = procfs.read_setting("/proc/sys/vm/nr_hugepages")
    mech["hugetlb"] = Feature("hugetlb", bool(nr_huge and int(nr_huge) > 0),
                              f"vm.nr_hugepages = {nr_huge}",
                              fix=None if nr_huge and int(nr_huge) > 0 else
                              "reserve huge pages: sysctl vm.nr_hugepages=N")
    yama = procfs.read_setting("/proc/sys/kernel/yama/ptrace_scope")
    ptrace_ok = bool(caps >> CAP_SYS_PTRACE & 1) or yama in (None, "0")
    mech["ptrace"] = Feature(
        "ptrace", ptrace_ok,
        f"CAP_SYS_PTRACE={'yes' if caps >> CAP_SYS_PTRACE & 1 else 'no'}, "
        f"yama ptrace_scope={yama}",
        fix=None if ptrace_ok else "grant CAP_SYS_PTRACE or set kernel.yama.ptrace_scope=0")
    mech["pidfd_getfd"] = Feature("pidfd_getfd", "pidfd_getfd" in U.NR,
                                  f"syscall number on {U.MACHINE}: {U.NR.get('pidfd_getfd')}",
                                  "5.6")

    backends: dict[str, Feature] = {}
    if not uffd.usable:
        backends["uffd-async"] = Feature("uffd-async", False, uffd.detail, "6.7", uffd.fix)
    elif not mech["WP_ASYNC"].usable:
        backends["uffd-async"] = Feature("uffd-async", False, "no UFFD_FEATURE_WP_ASYNC", "6.7",
                                         "needs Linux 6.7")
    elif not scan.usable:
        backends["uffd-async"] = Feature("uffd-async", False, scan.detail, "6.7",
                                         "needs Linux 6.7")
    else:
        backends["uffd-async"] = Feature("uffd-async", True,
                                         "userfaultfd WP_ASYNC + PAGEMAP_SCAN", "6.7")
    for name in ("uffd-wp-sync", "soft-dirty"):
        got = _backend_probe(name)
        if got is None:
            backends[name] = Feature(name, False, "backend not part of this build")
        else:
            backends[name] = Feature(name, got[0], got[1])
    auto = next((b for b in PREFERENCE if backends[b].usable), None)
    settings = {
        "vm.unprivileged_userfaultfd":
            procfs.read_setting("/proc/sys/vm/unprivileged_userfaultfd"),
        "kernel.yama.ptrace_scope": yama,
        "transparent_hugepage": thp,
        "vm.nr_hugepages": nr_huge,
        "euid": str(os.geteuid()),
        "root": str(root),
    }
    return Features(os.uname().release, platform.machine(), LINUX.page_size, mech, backends,
                    auto, offered, cats, settings)


def features(refresh: bool = False) -> Features:
    """Probe the running kernel (once per process; ``refresh`` probes again)."""
    if refresh:
        _features.cache_clear()
        pmd_holes_reported.cache_clear()
        pte_none_written.cache_clear()
    return _features()
