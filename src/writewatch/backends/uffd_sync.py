"""uffd-wp in synchronous mode (Linux 5.7+ for anonymous memory, 5.19+ for shmem): write
faults are resolved by a handler process, and live (copy-before-write) snapshots.

Each write to a write-protected page stops the writing thread in the kernel and queues a
``UFFD_EVENT_PAGEFAULT`` message with ``UFFD_PAGEFAULT_FLAG_WP`` (fs/userfaultfd.c
handle_userfault). The handler logs the page and unprotects it with UFFDIO_WRITEPROTECT mode 0,
which wakes the writer. A Python thread stops there *holding the GIL*, so the handler cannot be
a thread of this interpreter: it is a helper process
(:mod:`writewatch.backends._uffd_sync_handler`) holding the only copy of the userfaultfd (a
userfaultfd acts on the address space that created it, whoever holds it). This process keeps no
copy: if the helper dies, the last reference goes, and userfaultfd_release() unregisters every
range and wakes every blocked writer; the next call here raises :class:`HandlerDied`.

What the helper does so that no write is lost:

* A collect is one request to the helper, handled in order with the fault messages: read the
  pending messages, swap the log, re-protect the logged pages; later faults go to the next log.
* Pages can lose protection without a fault: ``MADV_DONTNEED`` of anonymous memory drops the
  PTE and its uffd-wp bit ("Zap on anonymous always means dropping everything",
  zap_install_uffd_wp_if_needed), and the next write maps a fresh page without a fault. Each
  collect reads ``/proc/PID/pagemap`` over the spans and reports every page without the uffd-wp
  bit (PM_UFFD_WP, bit 57, 5.13) that the log does not hold, conservatively.
  ``UFFD_FEATURE_EVENT_REMOVE`` makes madvise(DONTNEED/FREE/REMOVE) wait until the helper has
  read the event (userfaultfd_remove), so discards are ordered with collects; discarded ranges
  are reported for two collects (the discard itself follows the event).
* Without ``UFFD_FEATURE_WP_UNPOPULATED`` (before 6.4, e.g. Debian's 6.1) UFFDIO_WRITEPROTECT
  skips none PTEs of anonymous memory (change_pte_range walks present PTEs only; markers are
  used only with WP_UNPOPULATED: userfaultfd_wp_use_markers). The helper populates them by
  reading them through /proc/PID/mem (a read fault maps the shared zero page, which is then
  protected) and protects them, checking pagemap until every page carries the bit.
* With ``UFFD_USER_MODE_ONLY`` (the only userfaultfd an unprivileged process gets when
  ``vm.unprivileged_userfaultfd=0``), a kernel-mode write to protected memory, such as
  ``read(2)`` into a tracked buffer, fails with EFAULT instead of waiting (handle_userfault).
  :func:`open_uffd` asks for a full-privilege descriptor first; ``user_mode_only`` says which
  one was obtained.
"""

from __future__ import annotations

import errno as E
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from typing import Any, ClassVar

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, Capabilities, KernelCalls, Mapping, _sys, procfs
from ..kernel import uffd as _uffd
from ..kernel.probes import Probe
from ._uffd_sync_handler import Op
from .base import Backend, Collected, Span, register
from .uffd_async import supported_features

__all__ = ["HandlerDied", "UffdSyncBackend", "open_uffd", "probe", "start_helper"]

#: the handler process's program
_HANDLER_MAIN = ("import sys; from writewatch.backends._uffd_sync_handler import main; "
                 "sys.exit(main(sys.argv[1:]))")

_LEN = struct.Struct("<Q")
_EMPTY = np.empty((0, 2), np.uint64)
F = U.UffdFeature
#: asked whenever offered: WP on shmem (5.19), markers for none anonymous PTEs (6.4)
OPTIONAL = F.WP_HUGETLBFS_SHMEM | F.WP_UNPOPULATED
#: required: WP faults (5.7) and discard events (4.11)
REQUIRED = F.PAGEFAULT_FLAG_WP | F.EVENT_REMOVE
#: /proc/PID/maps names of shmem and hugetlb mappings (mm/shmem.c, ipc/shm.c, mm/memfd.c,
#: mm/hugetlb.c): MAP_SHARED|MAP_ANONYMOUS is "/dev/zero (deleted)"
SHMEM_PATHS = ("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/", "/anon_hugepage")
#: seconds to wait for the helper to start, to answer, and to exit
START_TIMEOUT = 60.0
EXIT_TIMEOUT = 10.0


HandlerDied = errors.HandlerDied

def _offered(kernel: KernelCalls = LINUX) -> U.UffdFeature:
    return supported_features(kernel)


def _available(caps: Capabilities) -> Probe:
    if not caps.userfaultfd.ok:
        return Probe(False, f"no userfaultfd: {caps.userfaultfd.detail}", caps.userfaultfd.fix)
    have = F(caps.uffd_features)
    missing = REQUIRED & ~have
    if missing:
        return Probe(False, f"userfaultfd lacks {missing!r} (write-protect faults need Linux "
                     "5.7 and an architecture with a uffd-wp PTE bit)", "needs Linux 5.7")
    parts = ["userfaultfd write-protect faults resolved by a handler process"]
    if not have & F.WP_UNPOPULATED:
        parts.append("no WP_UNPOPULATED: unpopulated anonymous pages are populated (zero page) "
                     "before protection")
    if not have & F.WP_HUGETLBFS_SHMEM:
        parts.append("no WP_HUGETLBFS_SHMEM: anonymous private memory only")
    return Probe(True, "; ".join(parts))


def probe(kernel: KernelCalls = LINUX) -> tuple[bool, str]:
    """Whether this backend can work on ``kernel``, and what it found."""
    got = _available(kernel.capabilities())
    return got.ok, got.detail


def open_uffd(kernel: KernelCalls = LINUX, unpopulated: bool | None = None
              ) -> tuple[int, U.UffdFeature, bool]:
    """A userfaultfd negotiated for synchronous write-protect: ``(fd, features, user_mode_only)``.

    ``unpopulated``: ask for WP_UNPOPULATED (None: when offered; False: never, which is how
    kernels before 6.4 behave; True: required).

    A full-privilege descriptor (``userfaultfd(2)`` without UFFD_USER_MODE_ONLY, then
    ``/dev/userfaultfd``) is preferred: with UFFD_USER_MODE_ONLY, kernel-mode writes to
    protected memory fail with EFAULT."""
    have = _offered(kernel)
    missing = REQUIRED & ~have
    if missing:
        raise errors.Unsupported(f"userfaultfd lacks {missing!r}",
                                 feature="UFFD_FEATURE_PAGEFAULT_FLAG_WP", since="5.7",
                                 op="UFFDIO_API")
    if unpopulated and not have & F.WP_UNPOPULATED:
        raise errors.Unsupported("userfaultfd lacks WP_UNPOPULATED",
                                 feature="UFFD_FEATURE_WP_UNPOPULATED", since="6.4",
                                 op="UFFDIO_API")
    want = REQUIRED | (OPTIONAL & have)
    if unpopulated is False:
        want &= ~F.WP_UNPOPULATED
    flags = U.O_CLOEXEC | U.O_NONBLOCK
    if kernel is LINUX:
        fd, user_mode_only = _uffd.open_userfaultfd(flags)
    else:
        fd, user_mode_only = kernel.userfaultfd(flags), False
    try:
        kernel.uffdio_api(fd, int(want))
    except BaseException:
        kernel.close(fd)
        raise
    return fd, want, user_mode_only


def _package_root() -> str:
    """The directory holding the ``writewatch`` package (for the handler's ``sys.path``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Helper:
    """The handler process and the socket to it. Requests are serialized by a lock that the
    handler never needs: it resolves faults whatever this process is doing."""

    def __init__(self, uffd: int, features: int, snapshot_fd: int = -1) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mem = pm = -1
        try:
            mem = _sys.os_call("open /proc/self/mem", os.open, "/proc/self/mem",
                               os.O_RDONLY | os.O_CLOEXEC)
            pm = _sys.os_call("open /proc/self/pagemap", os.open, "/proc/self/pagemap",
                              os.O_RDONLY | os.O_CLOEXEC)
            fds = [uffd, child.fileno(), mem, pm]
            args = [*map(str, fds), str(os.getpid()), str(int(features))]
            if snapshot_fd >= 0:
                fds.append(snapshot_fd)
                args.append(str(snapshot_fd))
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (_package_root(), env.get("PYTHONPATH")) if p)
            # imported, not run with -m: the package imports the module first, and runpy
            # warns when it then runs it again as __main__
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _HANDLER_MAIN, *args],
                pass_fds=fds, stdin=subprocess.DEVNULL, env=env, close_fds=True)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
            for fd in (mem, pm):
                if fd >= 0:
                    _sys.close(fd)
        self.sock = parent
        self.lock = threading.Lock()
        self.dead = False
        #: the process this helper serves; a fork()ed child inherits this object and the
        #: socket, and must neither ask the helper anything nor tell it to close
        self.owner = os.getpid()
        try:
            self.pid = int(self._receive(START_TIMEOUT))
        except BaseException:
            self.kill()
            raise

    def _died(self) -> HandlerDied:
        self.dead = True
        try:
            rc = self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        return HandlerDied(f"the uffd-wp-sync handler process {self.proc.pid} exited "
                           f"(status {rc}): write protection was dropped with it",
                           op="handler", hint="writes since its death are not tracked; "
                           "track again (a killed or crashed handler)")

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            except TimeoutError:
                raise errors.KernelError("the uffd-wp-sync handler did not answer",
                                         op="handler", errno=E.ETIMEDOUT) from None
            if not chunk:
                raise self._died()
            buf += chunk
        return bytes(buf)

    def _receive(self, timeout: float | None) -> Any:
        self.sock.settimeout(timeout)
        (n,) = _LEN.unpack(self._recv_exact(_LEN.size))
        status, value = pickle.loads(self._recv_exact(n))
        if status == "err":
            raise value
        return value

    def request(self, op: Op, *args: Any, timeout: float | None = None) -> Any:
        if os.getpid() != self.owner:
            raise errors.InvalidTarget(
                "this tracker belongs to the parent process (inherited through fork)",
                hint="track again in the child: its memory is a copy, not tracked")
        with self.lock:
            if self.dead:
                raise errors.TrackerClosed("the uffd-wp-sync handler process is gone",
                                           hint="track again")
            data = pickle.dumps((op.value, *args), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self.sock.settimeout(None)
                self.sock.sendall(_LEN.pack(len(data)) + data)
            except (BrokenPipeError, ConnectionResetError):
                raise self._died() from None
            return self._receive(timeout)

    def close(self) -> None:
        """Ask the helper to unprotect everything and exit; reap it (kill after a timeout)."""
        if os.getpid() != self.owner:  # a fork()ed child: drop its copy of the socket only
            self.dead = True
            self.sock.close()
            return
        try:
            if not self.dead and self.proc.poll() is None:
                self.request(Op.CLOSE, timeout=EXIT_TIMEOUT)
        except errors.WriteWatchError:
            pass
        finally:
            self.kill()

    def kill(self) -> None:
        self.dead = True
        self.sock.close()
        try:
            self.proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_helper(kernel: KernelCalls, snapshot_fd: int = -1, unpopulated: bool | None = None
                  ) -> tuple[_Helper, U.UffdFeature, bool]:
    fd, feats, umo = open_uffd(kernel, unpopulated)
    try:
        helper = _Helper(fd, int(feats), snapshot_fd)
    finally:
        kernel.close(fd)  # the helper holds the only copy (see the module docstring)
    return helper, feats, umo


@register
class UffdSyncBackend(Backend):
    """Synchronous uffd-wp over this process's memory, faults resolved by a helper process.

    Tracks anonymous private memory on any kernel with uffd-wp (5.7+), and shmem
    (``mmap.mmap(-1, n)``, memfd) with WP_HUGETLBFS_SHMEM (5.19+). Each first write to a page
    after a collect costs a round trip through the helper (see benchmarks/results-backends.md).
    """

    name: ClassVar[str] = "uffd-wp-sync"
    since: ClassVar[str | None] = "5.7"
    available = staticmethod(_available)

    def __init__(self, pid: int | str = "self", kernel: KernelCalls = LINUX, *,
                 unpopulated: bool | None = None) -> None:
        if pid not in ("self", os.getpid()):
            raise errors.InvalidTarget(
                "the uffd-wp-sync backend tracks this process only",
                hint="use writewatch.attach(pid) with the soft-dirty or uffd-async backend")
        super().__init__("self", kernel)
        #: negotiated UFFD_FEATURE_* bits; ``user_mode_only``: UFFD_USER_MODE_ONLY descriptor
        self._helper, self.features, self.user_mode_only = start_helper(kernel,
                                                                         unpopulated=unpopulated)
        self.helper_pid = self._helper.pid
        self._layout: dict[Span, tuple[tuple[int, int], ...]] = {}

    def _mapped_parts(self, span: Span, maps: tuple[Mapping, ...] | None = None
                      ) -> tuple[tuple[int, int], ...]:
        """What of the span is mapped now, adjacent mappings coalesced."""
        if maps is None:
            maps = self.kernel.read_maps("self")
        return tuple(procfs.coverage(maps, span.start, span.end))

    def _check_kind(self, span: Span, maps: tuple[Mapping, ...]) -> None:
        """Synchronous uffd-wp registers anonymous, shmem and hugetlb VMAs only
        (vma_can_userfault without WP_ASYNC); shmem needs WP_HUGETLBFS_SHMEM (5.19)."""
        for m in maps:
            if not (m.start < span.end and span.start < m.end):
                continue
            where = f"{m.label} at {max(m.start, span.start):#x}-{min(m.end, span.end):#x}"
            if m.anonymous:
                continue
            if not m.path.startswith(SHMEM_PATHS):
                if m.shared and not m.writable:
                    raise errors.InvalidTarget(
                        f"{where} is a shared mapping not writable", op="track",
                        start=span.start, end=span.end, hint="track writable memory")
                raise errors.InvalidTarget(
                    f"{where} is a file mapping: synchronous uffd-wp covers anonymous memory, "
                    "shmem and hugetlb only", op="track", start=span.start, end=span.end,
                    hint="use the uffd-async backend (Linux 6.7+) or soft-dirty")
            if not self.features & F.WP_HUGETLBFS_SHMEM:
                raise errors.Unsupported(
                    f"{where} is shmem or hugetlb: synchronous write-protect of it needs "
                    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", feature="WP_HUGETLBFS_SHMEM",
                    since="5.19", op="track", start=span.start, end=span.end)

    def add(self, span: Span) -> None:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        for s in self.spans:
            if span.start < s.end and s.start < span.end:
                raise errors.InvalidTarget(
                    f"{span.start:#x}-{span.end:#x} overlaps a tracked span "
                    f"{s.start:#x}-{s.end:#x}", op="track", start=span.start, end=span.end)
        maps = self.kernel.read_maps("self")
        self._check_kind(span, maps)
        parts = self._mapped_parts(span, maps)
        if not parts:
            raise errors.InvalidTarget(
                f"nothing is mapped at {span.start:#x}-{span.end:#x}", op="track",
                start=span.start, end=span.end, hint="track mapped memory")
        done: list[tuple[int, int]] = []
        try:
            for lo, hi in parts:
                self._helper.request(Op.ARM, lo, hi)
                done.append((lo, hi))
        except BaseException:
            for lo, hi in done:
                self._helper.request(Op.DISARM, lo, hi)
            raise
        self._layout[span] = parts
        self.spans.append(span)

    def remove(self, span: Span) -> None:
        self.spans.remove(span)
        self._layout.pop(span, None)
        self._helper.request(Op.DISARM, span.start, span.end)

    def collect(self, reset: bool = True, max_pages: int = 0) -> Collected:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        ps = self.page_size
        conservative: list[np.ndarray] = []
        reasons: list[str] = []
        maps = self.kernel.read_maps("self") if self.spans else ()
        for span in self.spans:
            parts = self._mapped_parts(span, maps)
            if parts != self._layout.get(span):
                conservative.append(np.array([[span.start, span.end]], np.uint64))
                reasons.append(f"{span.label or 'span'} {span.start:#x}-{span.end:#x}: "
                               "mappings replaced, moved or unmapped; reported whole")
                if reset:
                    self.stats.rearms += 1
                    reasons.extend(self._helper.request(Op.REARM, span.start, span.end))
                    self._layout[span] = parts
        spans = [p for s in self.spans for p in self._layout[s]]
        raw, raw_cons, why = self._helper.request(Op.COLLECT, spans, reset, max_pages)
        pages = np.frombuffer(raw, np.uint64)
        cons_pages = np.frombuffer(raw_cons, np.uint64)
        written = np.stack([pages, pages + np.uint64(ps)], axis=1) if len(pages) else _EMPTY
        if conservative:  # whole spans whose mappings changed
            written = np.concatenate([written, *conservative])
        if len(cons_pages):
            conservative.append(np.stack([cons_pages, cons_pages + np.uint64(ps)], axis=1))
        reasons.extend(why)
        cons = np.concatenate(conservative) if conservative else _EMPTY
        self.stats.collects += 1
        self.stats.scan_calls += len(spans)
        self.stats.reported(written)
        self.stats.pages_conservative += int((cons[:, 1] - cons[:, 0]).sum()) // ps
        return Collected(written, cons, tuple(reasons))

    def handler_stats(self) -> dict[str, int]:
        """Counters kept by the helper (``faults``: write faults resolved)."""
        return dict(self._helper.request(Op.STATS))

    def close(self) -> None:
        if self.closed:
            return
        # the helper unregisters every span itself; if it is gone the kernel already did
        self.spans.clear()
        self._layout.clear()
        self.closed = True
        self._release()

    def _release(self) -> None:
        self._helper.close()

    _forget = _release  # in a fork()ed child the helper only drops its copy of the socket
