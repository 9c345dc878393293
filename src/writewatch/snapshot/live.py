"""Live snapshots: a copy of a range of this process's memory as it was at one instant, taken
while its threads keep writing (copy-before-write, like QEMU's background snapshot), by the
synchronous uffd-wp handler process of :mod:`writewatch.backends.uffd_sync`.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .. import errors
from ..backends._uffd_sync_handler import Op
from ..backends.uffd_sync import start_helper
from ..kernel import LINUX, KernelCalls, _sys

__all__ = ["LiveSnapshot", "live_snapshot"]


class LiveSnapshot:
    """A copy of ``[address, address+length)`` as it was when the constructor returned, taken
    while threads keep writing (copy-before-write, like QEMU's background snapshot).

    The range is write-protected (populated first without WP_UNPOPULATED), then a helper
    process copies it page by page into a shared buffer, unprotecting each page after copying
    it; a write to a page not yet copied stops the writer until the helper has copied the
    page's old content. ``wait()`` returns when every page is copied; :attr:`data` is then the
    snapshot. Pages discarded by madvise(MADV_DONTNEED/REMOVE) during the snapshot are copied
    when the helper reads the discard event, which the kernel sends before zapping but does not
    wait on after it is read: such a page may read as already discarded
    (``stats["discarded"]`` counts them).

    ``address`` and ``length`` must be page aligned; the range must be mapped, writable,
    anonymous private memory (or shmem with WP_HUGETLBFS_SHMEM), and not tracked by another
    userfaultfd (EBUSY)."""

    def __init__(self, address: int, length: int, *, kernel: KernelCalls = LINUX,
                 unpopulated: bool | None = None) -> None:
        ps = kernel.page_size
        if length <= 0 or address <= 0 or address % ps or length % ps:
            raise errors.InvalidTarget(
                f"snapshot range ({address:#x}, {length:#x}) is empty or not page aligned",
                hint=f"address and length must be positive multiples of {ps}")
        self.address, self.length = address, length
        self.stats: dict[str, int] = {}
        self._done = False
        self._closed = False
        fd = _sys.os_call("memfd_create", os.memfd_create, "writewatch-snapshot",
                          os.MFD_CLOEXEC)
        try:
            _sys.os_call("ftruncate", os.ftruncate, fd, length)
            self._buf = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
            self._helper, self.features, self.user_mode_only = start_helper(kernel, fd,
                                                                            unpopulated)
        finally:
            _sys.close(fd)
        try:
            self._helper.request(Op.SNAPSHOT, address, address + length)
        except BaseException:
            self._helper.kill()
            self._buf.close()
            raise

    def wait(self, timeout: float | None = None) -> LiveSnapshot:
        """Block until every page is copied (the range is then unprotected and unregistered)."""
        if not self._done:
            if self._closed:
                raise errors.TrackerClosed("the snapshot was closed before it completed")
            self.stats = dict(self._helper.request(Op.WAIT, timeout=timeout))
            self._done = True
            self._helper.close()
        return self

    @property
    def done(self) -> bool:
        return self._done

    @property
    def data(self) -> np.ndarray:
        """The snapshot as a read-only uint8 array (waits for completion)."""
        self.wait()
        arr = np.frombuffer(self._buf, np.uint8)
        return arr

    def tobytes(self) -> bytes:
        self.wait()
        return bytes(self._buf)

    def close(self) -> None:
        """Stop (unprotecting the range) and free the buffer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._done:
            self._helper.close()
        try:
            self._buf.close()
        except BufferError:  # arrays from .data still reference the buffer
            pass

    def __enter__(self) -> LiveSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def live_snapshot(address: int, length: int, timeout: float | None = None) -> bytes:
    """The bytes of ``[address, address+length)`` at the time of the call, taken without
    stopping threads that write there (see :class:`LiveSnapshot`)."""
    snap = LiveSnapshot(address, length)
    try:
        return snap.wait(timeout).tobytes()
    finally:
        snap.close()
