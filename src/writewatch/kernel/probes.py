"""What the running kernel can do, found by trying it.

UFFDIO_API on a throwaway descriptor; PAGEMAP_SCAN on a scratch mapping (an unknown
category bit is EINVAL: fs/proc/task_mmu.c pagemap_scan_get_args); functional tests where a
bit alone says too little: soft-dirty (a kernel without ``CONFIG_MEM_SOFT_DIRTY`` still
accepts clear_refs 4 and never sets bit 55) and the two 2026 PAGEMAP_SCAN fixes. The facts
are one :class:`Capabilities` value; :func:`writewatch.features` turns them into the table
users read, and the backends decide from them.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .. import _uapi as U
from .. import errors
from . import _sys, procfs
from .pagemap import Scanner, open_pagemap, scan_all

if TYPE_CHECKING:
    from . import LinuxKernel

__all__ = ["Capabilities", "Probe", "probe"]

_WRITTEN = int(U.PageCategory.WRITTEN)
_ASYNC = int(U.UffdFeature.WP_ASYNC | U.UffdFeature.WP_UNPOPULATED)


class Probe(NamedTuple):
    """One functional probe: whether it worked, what it found or why not, and the fix."""

    ok: bool
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a kernel offers the write trackers (real: probed once per kernel object; model:
    from its profile)."""

    release: str
    machine: str
    page_size: int
    userfaultfd: Probe  #: a userfaultfd descriptor could be made and negotiated
    uffd_features: int  #: UFFD_FEATURE_* bits UFFDIO_API offers
    pagemap_scan: Probe  #: the PAGEMAP_SCAN ioctl (6.7)
    categories: int  #: PAGE_IS_* bits PAGEMAP_SCAN accepts
    #: the generic scan path reads a zapped PTE of an armed range as written (2026 fix)
    pte_none_written: bool
    #: a zapped THP (pmd_none) in an armed range reads written (2026 fix)
    pmd_hole_written: bool
    soft_dirty: Probe  #: clear_refs 4 clears bit 55 and a write sets it again
    thp: str | None  #: transparent_hugepage/enabled
    nr_hugepages: str | None
    ptrace_scope: str | None  #: kernel.yama.ptrace_scope (None: no yama)
    unprivileged_userfaultfd: str | None
    cap_eff: int  #: this process's effective capabilities
    euid: int


def probe(kernel: LinuxKernel) -> Capabilities:
    """Probe the running kernel (a few ms: scratch mappings, one forked child)."""
    uffd, offered = _probe_uffd(kernel)
    scan, cats = _probe_pagemap_scan(kernel)
    async_ok = scan.ok and bool(offered & int(U.UffdFeature.WP_ASYNC))
    return Capabilities(
        release=os.uname().release, machine=U.MACHINE, page_size=kernel.page_size,
        userfaultfd=uffd, uffd_features=offered, pagemap_scan=scan, categories=cats,
        pte_none_written=async_ok and _pte_none_written(kernel),
        pmd_hole_written=async_ok and _pmd_hole_written(kernel),
        soft_dirty=_probe_soft_dirty(),
        thp=procfs.thp_mode(), nr_hugepages=procfs.read_setting("/proc/sys/vm/nr_hugepages"),
        ptrace_scope=procfs.read_setting("/proc/sys/kernel/yama/ptrace_scope"),
        unprivileged_userfaultfd=procfs.read_setting("/proc/sys/vm/unprivileged_userfaultfd"),
        cap_eff=_cap_eff(), euid=os.geteuid())


def _cap_eff() -> int:
    try:
        status = procfs.parse_status(procfs.read_bytes("/proc/self/status"))
        return int(status.get("CapEff", "0"), 16)
    except errors.WriteWatchError:
        return 0


def _probe_uffd(kernel: LinuxKernel) -> tuple[Probe, int]:
    try:
        fd = kernel.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    except errors.WriteWatchError as exc:
        return Probe(False, str(exc), exc.hint), 0
    try:
        feats = int(kernel.uffdio_api(fd, 0).features)
    except errors.WriteWatchError as exc:
        return Probe(False, str(exc), exc.hint), 0
    finally:
        kernel.close(fd)
    return Probe(True, f"UFFDIO_API offers {feats:#x}"), feats


def _probe_pagemap_scan(kernel: LinuxKernel) -> tuple[Probe, int]:
    ps = kernel.page_size
    try:
        with _scratch(kernel, ps) as (addr, fds):
            fds.append(open_pagemap("self"))
            scan = Scanner(1)
            try:
                scan(fds[0], addr, addr + ps, return_mask=int(U.PageCategory.PRESENT))
            except errors.WriteWatchError as exc:
                return Probe(False, f"ioctl refused: {exc}", "needs Linux 6.7 or newer"), 0
            accepted = 0
            for cat in U.PageCategory:
                try:
                    scan(fds[0], addr, addr + ps, return_mask=int(cat))
                    accepted |= int(cat)
                except errors.WriteWatchError:
                    pass
    except errors.WriteWatchError as exc:
        return Probe(False, str(exc), exc.hint), 0
    names = ",".join(c.name or "" for c in U.PageCategory if c & accepted)
    return Probe(True, f"categories {names}"), accepted


@contextlib.contextmanager
def _scratch(kernel: LinuxKernel, length: int) -> Iterator[tuple[int, list[int]]]:
    """A private anonymous mapping of ``length`` bytes and a list of descriptors, both
    released afterwards."""
    addr = _sys.mmap(0, length, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fds: list[int] = []
    try:
        yield addr, fds
    finally:
        for fd in fds:
            kernel.close(fd)
        _sys.munmap(addr, length)


def _arm_async(kernel: LinuxKernel, addr: int, length: int) -> int:
    """A userfaultfd with async write-protect registered over ``addr``."""
    uffd = kernel.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    try:
        kernel.uffdio_api(uffd, _ASYNC)
        kernel.uffdio_register(uffd, addr, length, U.UffdRegisterMode.WP)
    except BaseException:
        kernel.close(uffd)
        raise
    return uffd


def _pmd_hole_written(kernel: LinuxKernel) -> bool:
    """Whether PAGEMAP_SCAN reports a PMD hole in an armed range as written (Kiryl
    Shutsemau, "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for PMD holes", 2026).

    Arm a THP, ``MADV_DONTNEED`` all of it (leaving ``pmd_none``), scan. False when the
    kernel lacks the fix or when no THP could be made to test it (the uffd-async backend then
    scans for holes itself: slower, never wrong)."""
    pmd = procfs.thp_pmd_size() or 2 << 20
    if procfs.thp_mode() in (None, "never"):
        return False
    try:
        with _scratch(kernel, 2 * pmd) as (raw, fds):
            addr = -(-raw // pmd) * pmd
            _sys.madvise(addr, pmd, U.MADV_HUGEPAGE)
            ctypes.memset(addr, 1, pmd)
            pm = open_pagemap("self")
            fds.append(pm)
            scan = Scanner(8)
            huge = scan(pm, addr, addr + pmd, return_mask=int(U.PageCategory.HUGE))
            if not (len(huge.regions) and huge.regions[0, 2]):
                return False
            fds.append(_arm_async(kernel, addr, pmd))
            wp = int(U.PmScanFlag.WP_MATCHING | U.PmScanFlag.CHECK_WPASYNC)
            scan_all(scan, pm, addr, addr + pmd, flags=wp, category_mask=_WRITTEN,
                     return_mask=_WRITTEN)
            _sys.madvise(addr, pmd, U.MADV_DONTNEED)
            got = scan_all(scan, pm, addr, addr + pmd, category_mask=_WRITTEN,
                           return_mask=_WRITTEN).regions
            return int((got[:, 1] - got[:, 0]).sum()) == pmd
    except errors.WriteWatchError:
        return False


def _pte_none_written(kernel: LinuxKernel) -> bool:
    """Whether PAGEMAP_SCAN's generic path (any mask other than exactly WRITTEN) reads a
    ``pte_none`` entry of an armed anonymous range as written, as its WRITTEN fast path always
    did (Kiryl Shutsemau, "fs/proc/task_mmu: fix PAGEMAP_SCAN written state for unpopulated
    ptes", 2026). Arm two written pages, MADV_DONTNEED one, scan with
    ``return_mask = WRITTEN | PRESENT``."""
    ps = kernel.page_size
    try:
        with _scratch(kernel, 2 * ps) as (addr, fds):
            ctypes.memset(addr, 1, 2 * ps)
            pm = open_pagemap("self")
            fds.append(pm)
            uffd = _arm_async(kernel, addr, 2 * ps)
            fds.append(uffd)
            kernel.uffdio_writeprotect(uffd, addr, 2 * ps, U.UffdWriteprotectMode.WP)
            _sys.madvise(addr, ps, U.MADV_DONTNEED)
            got = Scanner(8)(pm, addr, addr + 2 * ps,
                             return_mask=_WRITTEN | int(U.PageCategory.PRESENT)).regions
            first = got[(got[:, 0] <= addr) & (got[:, 1] > addr)]
            return bool(len(first) and int(first[0, 2]) & _WRITTEN)
    except errors.WriteWatchError:
        return False


#: exit codes of the soft-dirty probe child
_SOFT_DIRTY_REASONS = {
    0: Probe(True, "clear_refs 4 clears pagemap bit 55 and a write sets it again"),
    1: Probe(False, "CONFIG_MEM_SOFT_DIRTY is off (pagemap bit 55 never set)"),
    2: Probe(False, "writing 4 to /proc/self/clear_refs did not clear pagemap bit 55"),
    3: Probe(False, "a write after clear_refs 4 did not set pagemap bit 55"),
    4: Probe(False, "/proc/self/clear_refs or /proc/self/pagemap cannot be used"),
}


def _soft_dirty_child() -> int:
    """In a forked child: write a page, clear_refs 4, check bit 55 clears, write, check it
    sets (the selftest soft-dirty.c test_simple, once). Returns a key of
    :data:`_SOFT_DIRTY_REASONS`."""
    ps = mmap.PAGESIZE
    try:
        buf = mmap.mmap(-1, ps)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        pm = os.open("/proc/self/pagemap", os.O_RDONLY)
        cr = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return 4

    def dirty() -> bool:
        raw = int.from_bytes(os.pread(pm, 8, addr // ps * 8), "little")
        return bool(raw & int(U.PagemapBit.SOFT_DIRTY))

    try:
        buf[0] = 1
        if not dirty():
            return 1
        os.write(cr, b"%d" % U.CLEAR_REFS_SOFT_DIRTY)
        if dirty():
            return 2
        buf[0] = 2
        return 0 if dirty() else 3
    except OSError:
        return 4


def _probe_soft_dirty() -> Probe:
    """Run in a forked child: the test resets soft-dirty, which would disturb this process's
    own state."""
    if not os.path.exists("/proc/self/clear_refs"):
        return Probe(False, "no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR is off)")
    pid = os.fork()
    if pid == 0:  # pragma: no cover (runs in the child)
        code = 4
        try:
            code = _soft_dirty_child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return _SOFT_DIRTY_REASONS.get(code, Probe(False, f"the probe process failed (status {code})"))
