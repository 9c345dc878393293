"""Kernel ABI: constants and struct layouts, verbatim from the uapi headers.

Layer 1. Nothing here makes a call. Values are those of the asm-generic ``_IOC`` encoding
(x86-64, arm64, riscv, s390). Debian 12's linux-libc-dev (6.1) lacks the 6.7+ names, so every
value is spelled out here with the header it comes from.
"""

from __future__ import annotations

import enum
import os
import struct

# ---------------------------------------------------------------------------------------------
# include/uapi/asm-generic/ioctl.h
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, typ: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (typ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(typ: int, nr: int) -> int:
    return _IOC(_IOC_NONE, typ, nr, 0)


def _IOR(typ: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ, typ, nr, size)


def _IOWR(typ: int, nr: int, size: int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, typ, nr, size)


# ---------------------------------------------------------------------------------------------
# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h
_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {"userfaultfd": 323, "kcmp": 312, "pidfd_open": 434, "pidfd_getfd": 438,
               "process_madvise": 440},
    "aarch64": {"userfaultfd": 282, "kcmp": 272, "pidfd_open": 434, "pidfd_getfd": 438,
                "process_madvise": 440},
}
MACHINE = os.uname().machine
NR: dict[str, int] = _SYSCALLS.get(MACHINE, {})

# ---------------------------------------------------------------------------------------------
# include/uapi/linux/userfaultfd.h
UFFD_API = 0xAA
UFFDIO = 0xAA
UFFD_USER_MODE_ONLY = 1
# include/uapi/linux/userfaultfd.h: #define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)

UFFDIO_API_SIZE = 24  # struct uffdio_api { __u64 api, features, ioctls; }
UFFDIO_RANGE_SIZE = 16  # struct uffdio_range { __u64 start, len; }
UFFDIO_REGISTER_SIZE = 32  # struct uffdio_register { range; __u64 mode, ioctls; }
UFFDIO_WRITEPROTECT_SIZE = 24  # struct uffdio_writeprotect { range; __u64 mode; }
UFFDIO_COPY_SIZE = 40  # struct uffdio_copy { dst, src, len, mode; __s64 copy; }
UFFDIO_ZEROPAGE_SIZE = 32  # struct uffdio_zeropage { range; mode; __s64 zeropage; }
UFFD_MSG_SIZE = 32  # BUILD_BUG_ON(sizeof(struct uffd_msg) != 32) in fs/userfaultfd.c

UFFDIO_API = _IOWR(UFFDIO, 0x3F, UFFDIO_API_SIZE)
UFFDIO_REGISTER = _IOWR(UFFDIO, 0x00, UFFDIO_REGISTER_SIZE)
UFFDIO_UNREGISTER = _IOR(UFFDIO, 0x01, UFFDIO_RANGE_SIZE)
UFFDIO_WAKE = _IOR(UFFDIO, 0x02, UFFDIO_RANGE_SIZE)
UFFDIO_COPY = _IOWR(UFFDIO, 0x03, UFFDIO_COPY_SIZE)
UFFDIO_ZEROPAGE = _IOWR(UFFDIO, 0x04, UFFDIO_ZEROPAGE_SIZE)
UFFDIO_MOVE = _IOWR(UFFDIO, 0x05, 40)
UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, 0x06, UFFDIO_WRITEPROTECT_SIZE)
UFFDIO_CONTINUE = _IOWR(UFFDIO, 0x07, 32)
UFFDIO_POISON = _IOWR(UFFDIO, 0x08, 32)

assert UFFDIO_API == 0xC018AA3F and UFFDIO_REGISTER == 0xC020AA00
assert UFFDIO_UNREGISTER == 0x8010AA01 and UFFDIO_WRITEPROTECT == 0xC018AA06


class UffdFeature(enum.IntFlag):
    """``UFFD_FEATURE_*`` (include/uapi/linux/userfaultfd.h); the version is when it appeared."""

    PAGEFAULT_FLAG_WP = 1 << 0  #: 5.7/5.10: anon write-protect faults
    EVENT_FORK = 1 << 1  #: 4.11; needs CAP_SYS_PTRACE (UFFDIO_API gives EPERM otherwise)
    EVENT_REMAP = 1 << 2  #: 4.11
    EVENT_REMOVE = 1 << 3  #: 4.11
    MISSING_HUGETLBFS = 1 << 4  #: 4.11
    MISSING_SHMEM = 1 << 5  #: 4.11
    EVENT_UNMAP = 1 << 6  #: 4.11
    SIGBUS = 1 << 7  #: 4.14
    THREAD_ID = 1 << 8  #: 4.14
    MINOR_HUGETLBFS = 1 << 9  #: 5.13
    MINOR_SHMEM = 1 << 10  #: 5.14
    EXACT_ADDRESS = 1 << 11  #: 5.18
    WP_HUGETLBFS_SHMEM = 1 << 12  #: 5.19
    WP_UNPOPULATED = 1 << 13  #: 6.4
    POISON = 1 << 14  #: 6.6
    WP_ASYNC = 1 << 15  #: 6.7; implies WP_UNPOPULATED (fs/userfaultfd.c userfaultfd_api)
    MOVE = 1 << 16  #: 6.8


#: Kernel release that added each feature (UFFDIO_API.2const).
UFFD_FEATURE_SINCE: dict[UffdFeature, str] = {
    UffdFeature.PAGEFAULT_FLAG_WP: "5.7",
    UffdFeature.EVENT_FORK: "4.11",
    UffdFeature.EVENT_REMAP: "4.11",
    UffdFeature.EVENT_REMOVE: "4.11",
    UffdFeature.MISSING_HUGETLBFS: "4.11",
    UffdFeature.MISSING_SHMEM: "4.11",
    UffdFeature.EVENT_UNMAP: "4.11",
    UffdFeature.SIGBUS: "4.14",
    UffdFeature.THREAD_ID: "4.14",
    UffdFeature.MINOR_HUGETLBFS: "5.13",
    UffdFeature.MINOR_SHMEM: "5.14",
    UffdFeature.EXACT_ADDRESS: "5.18",
    UffdFeature.WP_HUGETLBFS_SHMEM: "5.19",
    UffdFeature.WP_UNPOPULATED: "6.4",
    UffdFeature.POISON: "6.6",
    UffdFeature.WP_ASYNC: "6.7",
    UffdFeature.MOVE: "6.8",
}


class UffdRegisterMode(enum.IntFlag):
    """``UFFDIO_REGISTER_MODE_*``."""

    MISSING = 1 << 0
    WP = 1 << 1
    MINOR = 1 << 2


class UffdWriteprotectMode(enum.IntFlag):
    """``UFFDIO_WRITEPROTECT_MODE_*``; WP|DONTWAKE together is EINVAL."""

    WP = 1 << 0
    DONTWAKE = 1 << 1


UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0


class UffdEvent(enum.IntEnum):
    """``UFFD_EVENT_*`` (uffd_msg.event)."""

    PAGEFAULT = 0x12
    FORK = 0x13
    REMAP = 0x14
    REMOVE = 0x15
    UNMAP = 0x16


class UffdPagefaultFlag(enum.IntFlag):
    """``UFFD_PAGEFAULT_FLAG_*`` (uffd_msg.arg.pagefault.flags)."""

    WRITE = 1 << 0
    WP = 1 << 1
    MINOR = 1 << 2


# _UFFDIO_* bit numbers in uffdio_api.ioctls / uffdio_register.ioctls
_UFFDIO_REGISTER, _UFFDIO_UNREGISTER, _UFFDIO_API = 0x00, 0x01, 0x3F
_UFFDIO_WAKE, _UFFDIO_COPY, _UFFDIO_ZEROPAGE = 0x02, 0x03, 0x04
_UFFDIO_MOVE, _UFFDIO_WRITEPROTECT, _UFFDIO_CONTINUE, _UFFDIO_POISON = 0x05, 0x06, 0x07, 0x08

# struct layouts, little-endian u64 fields (all supported arches are little-endian here)
UFFDIO_API_STRUCT = struct.Struct("<QQQ")
UFFDIO_RANGE_STRUCT = struct.Struct("<QQ")
UFFDIO_REGISTER_STRUCT = struct.Struct("<QQQQ")
UFFDIO_WRITEPROTECT_STRUCT = struct.Struct("<QQQ")
UFFDIO_COPY_STRUCT = struct.Struct("<QQQQq")
UFFDIO_ZEROPAGE_STRUCT = struct.Struct("<QQQq")
# struct uffd_msg { __u8 event; __u8 reserved1; __u16 reserved2; __u32 reserved3; union arg }
UFFD_MSG_HEAD = struct.Struct("<BBHI")
UFFD_MSG_ARG = struct.Struct("<QQQ")  # pagefault {flags, address, feat.ptid(u32)}, remap, ...

# ---------------------------------------------------------------------------------------------
# include/uapi/linux/fs.h (6.7+): PAGEMAP_SCAN
PROCFS_IOCTL_MAGIC = ord("f")
PM_SCAN_ARG_SIZE = 96  # struct pm_scan_arg: 12 x __u64; size must equal 96 (EINVAL otherwise)
PAGE_REGION_SIZE = 24  # struct page_region { __u64 start, end, categories; }
PAGEMAP_SCAN = _IOWR(PROCFS_IOCTL_MAGIC, 16, PM_SCAN_ARG_SIZE)
assert PAGEMAP_SCAN == 0xC0606610

# struct pm_scan_arg { size, flags, start, end, walk_end, vec, vec_len, max_pages,
#                      category_inverted, category_mask, category_anyof_mask, return_mask }
PM_SCAN_ARG_STRUCT = struct.Struct("<12Q")
PM_SCAN_ARG_WALK_END_OFFSET = 32  # the only field the kernel copies back


class PmScanFlag(enum.IntFlag):
    """``PM_SCAN_*`` flags of pm_scan_arg.flags; any other bit is EINVAL."""

    WP_MATCHING = 1 << 0  #: write-protect the matching pages that are WRITTEN
    CHECK_WPASYNC = 1 << 1  #: EPERM if a walked VMA is not registered for async WP


class PageCategory(enum.IntFlag):
    """``PAGE_IS_*`` categories (include/uapi/linux/fs.h); bits outside the kernel's
    PM_SCAN_CATEGORIES are EINVAL, which makes an unknown bit a feature probe."""

    WPALLOWED = 1 << 0  #: 6.7: VMA registered for async WP with markers
    WRITTEN = 1 << 1  #: 6.7: uffd-wp bit clear
    FILE = 1 << 2  #: 6.7: page cache / shmem page
    PRESENT = 1 << 3  #: 6.7
    SWAPPED = 1 << 4  #: 6.7: any non-present non-none entry, uffd-wp and guard markers too
    PFNZERO = 1 << 5  #: 6.7: the zero page (huge zero page since 6.16, 4a5e85f4eb8f)
    HUGE = 1 << 6  #: 6.7: PMD-mapped THP or hugetlb
    SOFT_DIRTY = 1 << 7  #: 6.8: PTE soft-dirty or VMA VM_SOFTDIRTY
    GUARD = 1 << 8  #: 6.15: MADV_GUARD_INSTALL marker


PAGE_CATEGORY_SINCE: dict[PageCategory, str] = {
    PageCategory.WPALLOWED: "6.7",
    PageCategory.WRITTEN: "6.7",
    PageCategory.FILE: "6.7",
    PageCategory.PRESENT: "6.7",
    PageCategory.SWAPPED: "6.7",
    PageCategory.PFNZERO: "6.7",
    PageCategory.HUGE: "6.7",
    PageCategory.SOFT_DIRTY: "6.8",
    PageCategory.GUARD: "6.15",
}

# ---------------------------------------------------------------------------------------------
# Documentation/admin-guide/mm/pagemap.rst: 64-bit /proc/PID/pagemap entries
PM_ENTRY_SIZE = 8
PM_PFRAME_MASK = (1 << 55) - 1  # bits 0-54: PFN (zero without CAP_SYS_ADMIN since 4.2)
PM_SWAP_TYPE_MASK = 0x1F  # bits 0-4 when swapped
PM_SWAP_OFFSET_SHIFT = 5  # bits 5-54 when swapped


class PagemapBit(enum.IntFlag):
    """Flag bits of a classic pagemap entry."""

    SOFT_DIRTY = 1 << 55  #: PTE soft-dirty or VMA VM_SOFTDIRTY (3.11)
    MMAP_EXCLUSIVE = 1 << 56  #: 4.2
    UFFD_WP = 1 << 57  #: 5.13
    GUARD_REGION = 1 << 58  #: 6.15
    FILE_SHARED = 1 << 61  #: file page or shared anon (3.5)
    SWAPPED = 1 << 62  #: also set for uffd-wp / guard markers (non-present, non-none)
    PRESENT = 1 << 63


# fs/proc/task_mmu.c clear_refs_write(): values written to /proc/PID/clear_refs
CLEAR_REFS_ALL = 1
CLEAR_REFS_ANON = 2
CLEAR_REFS_MAPPED = 3
CLEAR_REFS_SOFT_DIRTY = 4
CLEAR_REFS_MM_HIWATER_RSS = 5

# ---------------------------------------------------------------------------------------------
# include/uapi/asm-generic/mman-common.h, include/uapi/linux/mman.h
MADV_NORMAL = 0
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_GUARD_INSTALL = 102
MADV_GUARD_REMOVE = 103
MAP_FIXED = 0x10
MAP_HUGETLB = 0x40000
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
MS_ASYNC = 1
MFD_CLOEXEC = 1
MFD_HUGETLB = 4

# include/uapi/asm-generic/fcntl.h
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000

# include/linux/sched.h (task flags, field 9 of /proc/PID/stat)
PF_KTHREAD = 0x00200000  #: a kernel thread: no user address space
