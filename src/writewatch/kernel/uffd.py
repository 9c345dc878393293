"""userfaultfd(2) and its ioctls (include/uapi/linux/userfaultfd.h, fs/userfaultfd.c).

Thin and faithful: each function is one kernel call, with the kernel's errno mapped to the
library's exceptions and the reason spelled out for the errors users hit.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
from typing import NamedTuple

from .. import _uapi as U
from .. import errors
from . import _sys

_REGISTER_ERRORS: _sys.ErrMap = {
    E.EPERM: (errors.Refused,
              "the mapping is not writable (no VM_MAYWRITE: e.g. MAP_SHARED of a file opened "
              "O_RDONLY); track writable memory only"),
    E.EBUSY: (errors.AlreadyTracked,
              "another userfaultfd (another tracker, or the program itself) already owns this "
              "range; close it first"),
    E.EINVAL: (errors.Refused,
               "the range must be page aligned, non-empty and mapped (hugetlb: aligned to the "
               "huge page size), and the mapping type must support write-protect here"),
}

_WP_ERRORS: _sys.ErrMap = {
    E.ENOENT: (errors.Refused,
               "part of the range is not registered with this userfaultfd (it was remapped or "
               "unmapped while tracked)"),
    E.EINVAL: (errors.Refused, "the range is not page (or huge page) aligned"),
}


def userfaultfd(flags: int = U.O_CLOEXEC | U.O_NONBLOCK) -> int:
    """Create a userfaultfd (see :func:`open_userfaultfd` for the order tried)."""
    return open_userfaultfd(flags)[0]


def open_userfaultfd(flags: int = U.O_CLOEXEC | U.O_NONBLOCK) -> tuple[int, bool]:
    """Create a userfaultfd, full privilege first: ``(fd, user_mode_only)``.

    1. ``userfaultfd(2)`` with ``flags`` (needs CAP_SYS_PTRACE when
       ``vm.unprivileged_userfaultfd=0``);
    2. ``/dev/userfaultfd`` + USERFAULTFD_IOC_NEW (6.1+), gated by the device's permissions;
    3. ``userfaultfd(2)`` with ``UFFD_USER_MODE_ONLY``, always allowed
       (Documentation/admin-guide/mm/userfaultfd.rst), but kernel-mode faults on sync-WP
       memory then fail with EFAULT (async WP resolves them in do_wp_page).
    O_CLOEXEC is always added.
    """
    flags |= U.O_CLOEXEC
    nr = U.NR.get("userfaultfd")
    first_errno = E.ENOSYS
    if nr is not None:
        try:
            return _sys.syscall("userfaultfd", nr, flags), False
        except errors.WriteWatchError as exc:
            first_errno = exc.errno or first_errno
    try:
        dev = _sys.os_call("open /dev/userfaultfd", os.open, "/dev/userfaultfd",
                           os.O_RDWR | os.O_CLOEXEC)
    except errors.WriteWatchError:
        dev = -1
    if dev >= 0:
        try:
            return _sys.ioctl("USERFAULTFD_IOC_NEW", dev, U.USERFAULTFD_IOC_NEW, flags), False
        except errors.WriteWatchError:
            pass
        finally:
            _sys.close(dev)
    if nr is not None and first_errno == E.EPERM:
        return _sys.syscall("userfaultfd", nr, flags | U.UFFD_USER_MODE_ONLY), True
    if first_errno in (E.EPERM, E.EACCES):
        raise errors.PermissionDenied(
            "cannot create a userfaultfd", op="userfaultfd", errno=first_errno,
            hint="set sysctl vm.unprivileged_userfaultfd=1, grant CAP_SYS_PTRACE, or give "
                 "this user read-write access to /dev/userfaultfd")
    raise errors.Unsupported("userfaultfd is not available", feature="userfaultfd",
                             op="userfaultfd", errno=first_errno,
                             hint="the kernel needs CONFIG_USERFAULTFD=y (Linux 4.3+)")


class ApiResult(NamedTuple):
    features: U.UffdFeature  #: every feature the kernel supports (all of them, not the asked)
    ioctls: int  #: bit n set: ioctl number n is available on this fd


def api(fd: int, features: int) -> ApiResult:
    """UFFDIO_API: negotiate ``features``. Only once per descriptor: a second call is EINVAL
    (fs/userfaultfd.c: cmpxchg on ctx->features), so probe on a throwaway descriptor."""
    buf = ctypes.create_string_buffer(U.UFFDIO_API_STRUCT.pack(U.UFFD_API, features, 0),
                                      U.UFFDIO_API_SIZE)
    try:
        _sys.ioctl("UFFDIO_API", fd, U.UFFDIO_API, buf)
    except errors.WriteWatchError as exc:
        if exc.errno == E.EINVAL:
            raise _api_einval(features) from None
        if exc.errno == E.EPERM:
            raise errors.PermissionDenied(
                "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE", op="UFFDIO_API",
                errno=E.EPERM, hint="run as root or grant CAP_SYS_PTRACE") from None
        raise
    _, feats, ioctls = U.UFFDIO_API_STRUCT.unpack(buf.raw)
    return ApiResult(U.UffdFeature(feats), ioctls)


def _api_einval(features: int) -> errors.WriteWatchError:
    """Why UFFDIO_API said EINVAL: features this kernel lacks (asked on a throwaway
    descriptor), or a descriptor already initialised by an earlier UFFDIO_API."""
    fd = userfaultfd()
    try:
        have = int(api(fd, 0).features)
    finally:
        _sys.close(fd)
    missing = features & ~have
    if not missing:
        return errors.KernelError(
            "UFFDIO_API was already called on this descriptor", op="UFFDIO_API", errno=E.EINVAL,
            hint="negotiate features once per userfaultfd (fs/userfaultfd.c sets them once)")
    known = [f for f in U.UffdFeature if f & missing]
    names = [f"UFFD_FEATURE_{f.name}" for f in known]
    unknown = missing & ~sum(int(f) for f in U.UffdFeature)
    if unknown:
        names.append(f"unknown feature bits {unknown:#x}")
    since = max((U.UFFD_FEATURE_SINCE[f] for f in known),
                key=lambda v: tuple(int(x) for x in v.split(".")), default=None)
    return errors.Unsupported(f"this kernel lacks {', '.join(names)}", feature=names[0],
                              since=since, op="UFFDIO_API", errno=E.EINVAL)


def register(fd: int, start: int, length: int, mode: int) -> int:
    """UFFDIO_REGISTER ``[start, start+length)``; returns the ``ioctls`` bitmask."""
    buf = ctypes.create_string_buffer(U.UFFDIO_REGISTER_STRUCT.pack(start, length, mode, 0),
                                      U.UFFDIO_REGISTER_SIZE)
    _sys.ioctl("UFFDIO_REGISTER", fd, U.UFFDIO_REGISTER, buf, start=start,
               end=start + length, errmap=_REGISTER_ERRORS)
    return int(U.UFFDIO_REGISTER_STRUCT.unpack(buf.raw)[3])


def unregister(fd: int, start: int, length: int) -> None:
    """UFFDIO_UNREGISTER; the kernel removes the uffd-wp bits of the range
    (userfaultfd_clear_vma -> uffd_wp_range(..., false))."""
    buf = ctypes.create_string_buffer(U.UFFDIO_RANGE_STRUCT.pack(start, length),
                                      U.UFFDIO_RANGE_SIZE)
    _sys.ioctl("UFFDIO_UNREGISTER", fd, U.UFFDIO_UNREGISTER, buf, start=start,
               end=start + length, errmap=_REGISTER_ERRORS)


def writeprotect(fd: int, start: int, length: int, mode: int) -> None:
    """UFFDIO_WRITEPROTECT: mode WP protects, mode 0 unprotects (and wakes unless DONTWAKE).
    EAGAIN while a non-cooperative event is unread (ctx->mmap_changing) is retried by the
    caller; ENOENT stops at the first unregistered VMA with the earlier ones changed."""
    buf = ctypes.create_string_buffer(U.UFFDIO_WRITEPROTECT_STRUCT.pack(start, length, mode),
                                      U.UFFDIO_WRITEPROTECT_SIZE)
    _sys.ioctl("UFFDIO_WRITEPROTECT", fd, U.UFFDIO_WRITEPROTECT, buf, start=start,
               end=start + length, errmap=_WP_ERRORS)


def wake(fd: int, start: int, length: int) -> None:
    """UFFDIO_WAKE: wake threads blocked on faults in the range."""
    buf = ctypes.create_string_buffer(U.UFFDIO_RANGE_STRUCT.pack(start, length),
                                      U.UFFDIO_RANGE_SIZE)
    _sys.ioctl("UFFDIO_WAKE", fd, U.UFFDIO_WAKE, buf, start=start, end=start + length)


def copy(fd: int, dst: int, src: int, length: int, mode: int = 0) -> int:
    """UFFDIO_COPY; returns the bytes copied."""
    buf = ctypes.create_string_buffer(U.UFFDIO_COPY_STRUCT.pack(dst, src, length, mode, 0),
                                      U.UFFDIO_COPY_SIZE)
    _sys.ioctl("UFFDIO_COPY", fd, U.UFFDIO_COPY, buf, start=dst, end=dst + length)
    return int(U.UFFDIO_COPY_STRUCT.unpack(buf.raw)[4])


def zeropage(fd: int, start: int, length: int, mode: int = 0) -> int:
    """UFFDIO_ZEROPAGE; returns the bytes mapped."""
    buf = ctypes.create_string_buffer(U.UFFDIO_ZEROPAGE_STRUCT.pack(start, length, mode, 0),
                                      U.UFFDIO_ZEROPAGE_SIZE)
    _sys.ioctl("UFFDIO_ZEROPAGE", fd, U.UFFDIO_ZEROPAGE, buf, start=start, end=start + length)
    return int(U.UFFDIO_ZEROPAGE_STRUCT.unpack(buf.raw)[3])


class UffdMsg(NamedTuple):
    """One ``struct uffd_msg``. For PAGEFAULT: ``a`` = flags, ``b`` = address, ``c`` = ptid;
    FORK: ``a`` = new fd; REMAP: from, to, len; REMOVE / UNMAP: start, end."""

    event: U.UffdEvent
    a: int
    b: int
    c: int


def parse_msgs(data: bytes) -> tuple[UffdMsg, ...]:
    """Decode a buffer of ``uffd_msg`` records (pure)."""
    out = []
    known = {int(e) for e in U.UffdEvent}
    for off in range(0, len(data) - len(data) % U.UFFD_MSG_SIZE, U.UFFD_MSG_SIZE):
        event = U.UFFD_MSG_HEAD.unpack_from(data, off)[0]
        if event not in known:
            continue  # an event of a newer kernel: nothing here asked for it
        a, b, c = U.UFFD_MSG_ARG.unpack_from(data, off + 8)
        if event == U.UffdEvent.PAGEFAULT:
            c &= 0xFFFFFFFF  # feat.ptid is a u32
        out.append(UffdMsg(U.UffdEvent(event), a, b, c))
    return tuple(out)


def read_msgs(fd: int, max_msgs: int = 64) -> tuple[UffdMsg, ...]:
    """Read pending messages; empty when none is pending on a non-blocking descriptor."""
    try:
        data = _sys.os_call("read uffd", os.read, fd, U.UFFD_MSG_SIZE * max_msgs)
    except errors.WriteWatchError as exc:
        if exc.errno == E.EAGAIN:
            return ()
        raise
    return parse_msgs(data)
