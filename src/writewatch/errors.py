"""The exception tree. Every error the library raises derives from :class:`WriteWatchError`.

Kernel errno values become these classes in one place, :func:`writewatch.kernel._sys.check`.
Each carries the failed operation, the address range (when there is one), the errno, and a
sentence saying how to fix it.
"""

from __future__ import annotations

import errno as _errno
import os


class WriteWatchError(Exception):
    """Root of every writewatch error."""

    __module__ = "writewatch"

    def __init__(
        self,
        message: str,
        *,
        op: str | None = None,
        start: int | None = None,
        end: int | None = None,
        errno: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.op = op
        self.start = start
        self.end = end
        self.errno = errno
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        if self.op:
            parts.append(f"[{self.op}")
            if self.start is not None and self.end is not None:
                parts[-1] += f" {self.start:#x}-{self.end:#x}"
            if self.errno is not None:
                parts[-1] += f": {_errno.errorcode.get(self.errno, self.errno)}"
            parts[-1] += "]"
        if self.hint:
            parts.append(f"- {self.hint}")
        return " ".join(parts)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # every attribute (a subclass's feature, since, pid, partial...): errors cross from
        # the helper processes pickled
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[WriteWatchError], args: tuple[object, ...],
             state: dict[str, object]) -> WriteWatchError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class KernelError(WriteWatchError, OSError):
    """A system call or ioctl failed in a way no more specific class describes."""

    __module__ = "writewatch"

    def __init__(self, message: str, **kw: object) -> None:
        WriteWatchError.__init__(self, message, **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return WriteWatchError.__str__(self)


class HandlerDied(KernelError):
    """The handler process of a uffd-wp-sync tracker or live snapshot exited. The kernel
    dropped the write protection when its userfaultfd closed: writes since are not tracked."""

    __module__ = "writewatch"


class Unsupported(WriteWatchError):
    """This kernel (or architecture) lacks a mechanism; ``feature`` and ``since`` name it."""

    __module__ = "writewatch"

    def __init__(self, message: str, *, feature: str | None = None,
                 since: str | None = None, **kw: object) -> None:
        self.feature = feature
        self.since = since
        if since and "hint" not in kw:
            kw["hint"] = f"{feature or 'this feature'} needs Linux {since} or newer " \
                         f"(running {os.uname().release})"
        super().__init__(message, **kw)  # type: ignore[arg-type]


class PermissionDenied(WriteWatchError, PermissionError):
    """The kernel refused for lack of privilege; ``hint`` names the capability or sysctl."""

    __module__ = "writewatch"

    def __init__(self, message: str, **kw: object) -> None:
        WriteWatchError.__init__(self, message, **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return WriteWatchError.__str__(self)


class InvalidTarget(WriteWatchError, ValueError):
    """What was asked to be tracked cannot be: read-only, empty, unaligned, overlapping,
    unmapped, or of a kind the backend cannot write-protect."""

    __module__ = "writewatch"


class Refused(InvalidTarget):
    """The kernel refused an operation on the range (``errno`` says how): a mapping that is
    not writable, a type the mechanism cannot protect, a range no longer registered or no
    longer readable. Raised from kernel errors only, never from argument checks."""

    __module__ = "writewatch"


class NotRegistered(Refused):
    """PAGEMAP_SCAN with ``PM_SCAN_CHECK_WPASYNC`` met a VMA that is not registered for async
    write-protect (EPERM): the memory there was replaced (remapped) while tracked.

    The walk stops at that VMA, but with ``PM_SCAN_WP_MATCHING`` it has already
    write-protected the written pages before it, and the kernel copies their regions out
    before failing (fs/proc/task_mmu.c do_pagemap_scan flushes its buffer, then returns the
    error). ``partial`` holds those ``(k, 3)`` regions: reported nowhere else, they would be
    lost."""

    __module__ = "writewatch"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.partial: object = None


class AlreadyTracked(InvalidTarget):
    """Another userfaultfd already owns the range (EBUSY from UFFDIO_REGISTER)."""

    __module__ = "writewatch"


class TrackerClosed(WriteWatchError):
    """The tracker was closed; create a new one."""

    __module__ = "writewatch"


class TrackerForked(WriteWatchError):
    """The tracker was inherited through ``fork()``: it acts on the parent's memory, so the
    child may not use it. Create a new tracker in the child."""

    __module__ = "writewatch"


class NoSuchProcess(WriteWatchError, ProcessLookupError):
    """The target process does not exist (any more)."""

    __module__ = "writewatch"

    def __init__(self, pid: int, message: str | None = None, **kw: object) -> None:
        self.pid = pid
        WriteWatchError.__init__(self, message or f"process {pid} does not exist", **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return WriteWatchError.__str__(self)
