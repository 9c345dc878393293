"""The one place where system calls are made and errno becomes an exception.

Every syscall and ioctl of the library goes through :func:`call`: it retries ``EINTR`` and
turns a failure into a :mod:`writewatch.errors` class carrying the operation, the address
range and a hint. ctypes foreign calls release the GIL, so a call that blocks (a fault on
write-protected memory inside the kernel, a ``read`` on a userfaultfd) never stalls other
Python threads.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
from collections.abc import Callable, Mapping
from typing import Any

from .. import errors

# the interpreter's own C library (dlopen(NULL)): ctypes.util.find_library would run
# ldconfig in a child process at every start
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                         ctypes.c_void_p]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

#: errno -> (class, hint) used when the caller gives no more specific mapping.
_DEFAULT_MAP: dict[int, tuple[type[errors.WriteWatchError], str | None]] = {
    E.EPERM: (errors.PermissionDenied, None),
    E.EACCES: (errors.PermissionDenied, None),
    E.EBUSY: (errors.AlreadyTracked, "another userfaultfd owns this range; close it first"),
    E.ENOSYS: (errors.Unsupported, "the kernel was built without this system call"),
    E.ENOTTY: (errors.Unsupported, "the kernel does not know this ioctl"),
    E.ESRCH: (errors.NoSuchProcess, None),
}

ErrMap = Mapping[int, tuple[type[errors.WriteWatchError], str | None]]


def raise_errno(err: int, op: str, *, start: int | None = None, end: int | None = None,
                errmap: ErrMap | None = None, pid: int | None = None) -> None:
    """Raise the library exception for ``err`` from operation ``op``."""
    cls, hint = (errmap or {}).get(err) or _DEFAULT_MAP.get(err) or (errors.KernelError, None)
    msg = f"{op} failed: {os.strerror(err)}"
    if cls is errors.NoSuchProcess:
        raise errors.NoSuchProcess(pid if pid is not None else -1, op=op, errno=err, hint=hint)
    raise cls(msg, op=op, start=start, end=end, errno=err, hint=hint)


def call(op: str, fn: Callable[..., Any], *args: Any, start: int | None = None,
         end: int | None = None, errmap: ErrMap | None = None, pid: int | None = None) -> Any:
    """Call a libc function that returns -1 and sets errno on failure; retry EINTR."""
    while True:
        rc = fn(*args)
        if rc == -1:
            err = ctypes.get_errno()
            if err == E.EINTR:
                continue
            raise_errno(err, op, start=start, end=end, errmap=errmap, pid=pid)
        return rc


def os_call(op: str, fn: Callable[..., Any], *args: Any, start: int | None = None,
            end: int | None = None, errmap: ErrMap | None = None, pid: int | None = None) -> Any:
    """Call an :mod:`os` function that raises OSError; retry EINTR, translate the rest."""
    while True:
        try:
            return fn(*args)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno is None:
                raise
            raise_errno(exc.errno, op, start=start, end=end, errmap=errmap, pid=pid)


def syscall(op: str, nr: int, *args: int, errmap: ErrMap | None = None,
            pid: int | None = None) -> int:
    """A raw ``syscall(2)`` with integer arguments."""
    cargs = [ctypes.c_long(a) for a in args]
    return int(call(op, _libc.syscall, ctypes.c_long(nr), *cargs, errmap=errmap, pid=pid))


def ioctl(op: str, fd: int, request: int, arg: Any, *, start: int | None = None,
          end: int | None = None, errmap: ErrMap | None = None) -> int:
    """``ioctl(fd, request, &arg)`` where ``arg`` is a ctypes buffer or an int address.

    The buffer is passed by address, so the kernel reads and writes it in place (and any
    pointers inside it, such as ``pm_scan_arg.vec``, stay valid)."""
    ptr = arg if isinstance(arg, int) else ctypes.addressof(arg)
    return int(call(op, _libc.ioctl, fd, request, ptr, start=start, end=end, errmap=errmap))


def ioctl_at(op: str, fd: int, request: int, addr: int, start: int | None = None,
             end: int | None = None, errmap: ErrMap | None = None) -> int:
    """:func:`ioctl` with the argument's address already known: the hot path of a collect
    (one foreign call; the errno work only on failure)."""
    while True:
        rc = int(_libc.ioctl(fd, request, addr))
        if rc != -1:
            return rc
        err = ctypes.get_errno()
        if err != E.EINTR:
            raise_errno(err, op, start=start, end=end, errmap=errmap)


def madvise(addr: int, length: int, advice: int) -> None:
    call("madvise", _libc.madvise, addr, length, advice, start=addr, end=addr + length)


def mprotect(addr: int, length: int, prot: int) -> None:
    call("mprotect", _libc.mprotect, addr, length, prot, start=addr, end=addr + length)


def msync(addr: int, length: int, flags: int) -> int:
    """Return 0, or the errno (ENOMEM: part of the range is not mapped). Never raises for
    ENOMEM: callers use it as an O(VMAs) "is all of this still mapped" check."""
    while True:
        rc = _libc.msync(addr, length, flags)
        if rc == 0:
            return 0
        err = ctypes.get_errno()
        if err == E.EINTR:
            continue
        if err == E.ENOMEM:
            return err
        raise_errno(err, "msync", start=addr, end=addr + length)


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """Raw mmap returning the address (for tests and the model's differential driver)."""
    while True:
        rc = _libc.mmap(addr or None, length, prot, flags, fd, offset)
        if rc is not None and rc != ctypes.c_void_p(-1).value:
            return int(rc)
        err = ctypes.get_errno()
        if err != E.EINTR:
            raise_errno(err, "mmap", start=addr, end=addr + length)


def munmap(addr: int, length: int) -> None:
    call("munmap", _libc.munmap, addr, length, start=addr, end=addr + length)


def mremap(old: int, old_len: int, new_len: int, flags: int, new_addr: int = 0) -> int:
    while True:
        rc = _libc.mremap(old, old_len, new_len, flags, new_addr or None)
        if rc is not None and rc != ctypes.c_void_p(-1).value:
            return int(rc)
        err = ctypes.get_errno()
        if err != E.EINTR:
            raise_errno(err, "mremap", start=old, end=old + old_len)


def mincore(addr: int, length: int, page_size: int) -> bytes:
    vec = ctypes.create_string_buffer((length + page_size - 1) // page_size)
    call("mincore", _libc.mincore, addr, length, vec, start=addr, end=addr + length)
    return vec.raw


def close(fd: int) -> None:
    """Close, ignoring EBADF on an already closed descriptor. EINTR is not retried: on Linux
    the descriptor is released even when close reports EINTR."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno not in (E.EBADF, E.EINTR):
            raise
