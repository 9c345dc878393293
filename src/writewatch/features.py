"""``features()``: what a kernel supports, which backends are usable there, and why not.

Capabilities are probed, not inferred from the kernel version (:mod:`writewatch.kernel.probes`;
a model kernel reports its profile's); each backend says what it needs of them
(``Backend.available``). This module turns both into the table ``writewatch features``
prints.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import _uapi as U
from .backends import REGISTRY
from .kernel import LINUX, Capabilities, KernelCalls

__all__ = ["Feature", "Features", "describe", "features", "pmd_holes_reported",
           "pte_none_written"]

#: auto picks the first usable backend of this list
PREFERENCE = ("uffd-async", "uffd-wp-sync", "soft-dirty")

CAP_SYS_PTRACE = 19


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
    settings: Mapping[str, str | None] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, name: str) -> Feature:
        if name in self.backends:
            return self.backends[name]
        return self.mechanisms[name]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("mechanisms", "backends"):
            d[key] = {k: dataclasses.asdict(v) for k, v in d[key].items()}
        d["settings"] = dict(self.settings)
        d["uffd_features_names"] = [f.name for f in U.UffdFeature
                                    if f & self.uffd_features]
        d["pagemap_categories_names"] = [c.name for c in U.PageCategory
                                         if c & self.pagemap_categories]
        return d


def pmd_holes_reported(kernel: KernelCalls = LINUX) -> bool:
    """Whether PAGEMAP_SCAN reports a PMD hole in an armed range as written (the 2026 fix;
    False also when no THP could be made to test it)."""
    return kernel.capabilities().pmd_hole_written


def pte_none_written(kernel: KernelCalls = LINUX) -> bool:
    """Whether PAGEMAP_SCAN's generic path reads a zapped PTE of an armed range as written
    (the 2026 fix)."""
    return kernel.capabilities().pte_none_written


def _uffd_feature(name: str, bit: U.UffdFeature, caps: Capabilities, note: str = "") -> Feature:
    since = U.UFFD_FEATURE_SINCE[bit]
    if not caps.userfaultfd.ok:
        return Feature(name, False, "userfaultfd is not available", since)
    if caps.uffd_features & bit:
        return Feature(name, True, f"UFFD_FEATURE_{bit.name} offered{note}", since)
    return Feature(name, False, f"UFFD_FEATURE_{bit.name} not offered by this kernel", since,
                   f"needs Linux {since} or newer")


def _mechanisms(caps: Capabilities) -> dict[str, Feature]:
    uffd = caps.userfaultfd
    mech = {"userfaultfd": Feature("userfaultfd", uffd.ok, uffd.detail, "4.3", uffd.fix)}
    F = U.UffdFeature
    for name, bit in (("uffd-wp", F.PAGEFAULT_FLAG_WP), ("WP_UNPOPULATED", F.WP_UNPOPULATED),
                      ("WP_ASYNC", F.WP_ASYNC), ("WP_HUGETLBFS_SHMEM", F.WP_HUGETLBFS_SHMEM),
                      ("EVENT_FORK", F.EVENT_FORK)):
        mech[name] = _uffd_feature(name, bit, caps)
    scan = caps.pagemap_scan
    mech["PAGEMAP_SCAN"] = Feature("PAGEMAP_SCAN", scan.ok, scan.detail, "6.7", scan.fix)
    for cat in U.PageCategory:
        since = U.PAGE_CATEGORY_SINCE[cat]
        ok = bool(caps.categories & cat)
        mech[f"PAGE_IS_{cat.name}"] = Feature(
            f"PAGE_IS_{cat.name}", ok, "accepted" if ok else "EINVAL: unknown category",
            since, None if ok else f"needs Linux {since} or newer")
    if scan.ok and mech["WP_ASYNC"].usable:
        none, fixed = caps.pte_none_written, caps.pmd_hole_written
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
    mech["THP"] = Feature("THP", caps.thp not in (None, "never"),
                          f"transparent_hugepage: {caps.thp}")
    nr_huge = caps.nr_hugepages
    huge_ok = bool(nr_huge and nr_huge.isdigit() and int(nr_huge) > 0)
    mech["hugetlb"] = Feature("hugetlb", huge_ok, f"vm.nr_hugepages = {nr_huge}",
                              fix=None if huge_ok else
                              "reserve huge pages: sysctl vm.nr_hugepages=N")
    ptracer = bool(caps.cap_eff >> CAP_SYS_PTRACE & 1)
    ptrace_ok = ptracer or caps.ptrace_scope in (None, "0")
    mech["ptrace"] = Feature(
        "ptrace", ptrace_ok,
        f"CAP_SYS_PTRACE={'yes' if ptracer else 'no'}, yama ptrace_scope={caps.ptrace_scope}",
        fix=None if ptrace_ok else "grant CAP_SYS_PTRACE or set kernel.yama.ptrace_scope=0")
    mech["pidfd_getfd"] = Feature("pidfd_getfd", "pidfd_getfd" in U.NR,
                                  f"syscall number on {U.MACHINE}: {U.NR.get('pidfd_getfd')}",
                                  "5.6")
    return mech


def describe(caps: Capabilities) -> Features:
    """The :class:`Features` table of a kernel's capabilities (pure)."""
    backends = {}
    for name in PREFERENCE:
        cls = REGISTRY[name]
        got = cls.available(caps)
        backends[name] = Feature(name, got.ok, got.detail, cls.since, got.fix)
    settings = {
        "vm.unprivileged_userfaultfd": caps.unprivileged_userfaultfd,
        "kernel.yama.ptrace_scope": caps.ptrace_scope,
        "transparent_hugepage": caps.thp,
        "vm.nr_hugepages": caps.nr_hugepages,
        "euid": str(caps.euid),
        "root": str(caps.euid == 0),
    }
    return Features(caps.release, caps.machine, caps.page_size,
                    MappingProxyType(_mechanisms(caps)), MappingProxyType(backends),
                    next((b for b in PREFERENCE if backends[b].usable), None),
                    caps.uffd_features, caps.categories, MappingProxyType(settings))


_described: weakref.WeakKeyDictionary[Any, tuple[Capabilities, Features]] = \
    weakref.WeakKeyDictionary()


def features(kernel: KernelCalls = LINUX, refresh: bool = False) -> Features:
    """What ``kernel`` (the running one by default, probed once per process; ``refresh``
    probes again) supports, which backends are usable there, and why not."""
    caps = kernel.capabilities(refresh)
    got = _described.get(kernel)
    if got is None or got[0] is not caps:
        got = _described[kernel] = (caps, describe(caps))
    return got[1]
