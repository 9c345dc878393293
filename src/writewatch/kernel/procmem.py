"""Reading another process's memory: process_vm_readv(2) (Linux 3.2), through the choke
point. Needs PTRACE_MODE_ATTACH_REALCREDS on the target (mm/process_vm_access.c)."""

from __future__ import annotations

import ctypes
import errno as E

import numpy as np

from .. import errors
from . import _sys

__all__ = ["UIO_MAXIOV", "process_vm_readv"]

_U64 = np.uint64


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's C library (dlopen(NULL))
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong,
                                   ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
#: UIO_MAXIOV (include/uapi/linux/uio.h): most iovecs one call takes
UIO_MAXIOV = 1024

_READ_ERRORS: _sys.ErrMap = {
    E.EPERM: (errors.PermissionDenied,
              "process_vm_readv needs PTRACE_MODE_ATTACH_REALCREDS on the target: same uid "
              "(yama ptrace_scope 0) or CAP_SYS_PTRACE"),
    E.EFAULT: (errors.Refused, "a range is not readable in the target (unmapped or "
               "VM_IO)"),
}


def process_vm_readv(pid: int, runs: np.ndarray, out: np.ndarray) -> None:
    """Read the ``(k, 2)`` [start, end) ranges of process ``pid`` back to back into ``out``
    with process_vm_readv(2), UIO_MAXIOV ranges per call. A short read (the man page: partial
    transfers stop at the first iovec that fails) raises: bytes are never left unread."""
    runs = np.ascontiguousarray(runs, dtype=_U64)
    lengths = runs[:, 1] - runs[:, 0]
    if int(lengths.sum()) != out.nbytes:
        raise ValueError("output size differs from the ranges' total")
    remote = np.empty((len(runs), 2), _U64)
    remote[:, 0] = runs[:, 0]
    remote[:, 1] = lengths
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    base = out.ctypes.data
    local = _IOVec()
    i = 0
    while i < len(runs):
        j = min(i + UIO_MAXIOV, len(runs))
        want = int(offsets[j] - offsets[i])
        local.iov_base = base + int(offsets[i])
        local.iov_len = want
        got = _sys.call("process_vm_readv", _libc.process_vm_readv, pid,
                        ctypes.addressof(local), 1, remote[i:j].ctypes.data, j - i, 0,
                        errmap=_READ_ERRORS, pid=pid)
        if got != want:
            # partial: the iovec after the last complete one failed
            done = int(np.searchsorted(offsets[i:j + 1] - offsets[i], got, side="right")) - 1
            lo, hi = runs[i + done].tolist()
            if got > int(offsets[i + done] - offsets[i]) or done + i >= j:
                raise errors.KernelError(f"process {pid}: short read at {lo:#x}-{hi:#x}",
                                         op="process_vm_readv")
            # retry from the failed range alone to get its errno
            sub = out[int(offsets[i + done]):int(offsets[i + done + 1])]
            local.iov_base, local.iov_len = sub.ctypes.data, sub.nbytes
            single = remote[i + done:i + done + 1]
            r = _sys.call("process_vm_readv", _libc.process_vm_readv, pid,
                          ctypes.addressof(local), 1, single.ctypes.data, 1, 0,
                          errmap=_READ_ERRORS, pid=pid)
            if r != sub.nbytes:
                raise errors.KernelError(f"process {pid}: could not read {lo:#x}-{hi:#x}",
                                         op="process_vm_readv", start=lo, end=hi)
            i = i + done + 1
            continue
        i = j
