"""The userfaultfd handler process of the ``uffd-wp-sync`` backend and of live snapshots.

:func:`main` runs with ``UFFD SOCK MEM PAGEMAP PID FEATURES [SNAPSHOT_FD]``, the descriptors
inherited from the tracked process (:mod:`.uffd_sync` starts it). It is a separate process
because a thread that writes a write-protected page sleeps in the kernel
(``handle_userfault``) until the page is unprotected, and a Python thread sleeps there holding
the GIL: a handler thread in the same interpreter could never run. This process
needs nothing from the tracked one (no lock, no reply) to resolve a fault.

A userfaultfd works on the address space that created it (``ctx->mm``, fs/userfaultfd.c), so
the ioctls made here act on the tracked process's memory. ``MEM`` and ``PAGEMAP`` are that
process's ``/proc/self/mem`` and ``/proc/self/pagemap``, opened by it: the access checks are
made at open time (``proc_mem_open``), so Yama's ptrace_scope=1 (which forbids a child from
attaching to its parent) does not get in the way.

Everything happens on one thread, in order: fault messages, requests from the tracked
process, background copies. A collect therefore re-protects pages and swaps the write log
with no fault handled in between, and a write is either in the log it returns or in a later
one. Replies are sent without blocking (a queue flushed when the socket is writable), because
the tracked process may be unable to read them until a blocked writer there is released.

Protocol: requests and replies are pickled tuples prefixed by their length (8 bytes, little
endian); the reply to ``(op, *args)`` (an :class:`Op`) is ``("ok", value)`` or
``("err", exception)``.
"""

from __future__ import annotations

import enum
import errno as E
import mmap
import os
import pickle
import select
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import _sys, pagemap, procfs, uffd

_LEN = struct.Struct("<Q")
_WP = int(U.UffdWriteprotectMode.WP)
_UFFD_WP_BIT = np.uint64(int(U.PagemapBit.UFFD_WP))
_PRESENT = np.uint64(int(U.PagemapBit.PRESENT))
#: pages copied per background step of a snapshot, between two looks at pending faults
SNAPSHOT_BATCH = 16


class Op(enum.Enum):
    """The requests the tracked process sends (:meth:`_Helper.request
    <writewatch.backends.uffd_sync._Helper.request>`)."""

    ARM = "arm"  #: (start, end) -> ioctls: register and protect a span
    REARM = "rearm"  #: (start, end) -> reasons: the span's mappings changed
    DISARM = "disarm"  #: (start, end): unregister
    COLLECT = "collect"  #: (spans, reset, max_pages) -> (written, conservative, reasons)
    STATS = "stats"  #: () -> counters
    CLOSE = "close"  #: (): unregister everything and exit
    SNAPSHOT = "snapshot"  #: (start, end): start a live snapshot
    WAIT = "wait"  #: (): reply once the live snapshot is complete (deferred reply)


def _runs(pages: np.ndarray, ps: int) -> list[tuple[int, int]]:
    """Sorted unique page addresses -> coalesced ``[start, end)`` runs."""
    if not len(pages):
        return []
    pages = np.asarray(pages, np.uint64)
    brk = np.nonzero(np.diff(pages) != ps)[0]
    starts = np.concatenate(([0], brk + 1))
    ends = np.concatenate((brk, [len(pages) - 1]))
    return [(int(pages[a]), int(pages[b]) + ps) for a, b in zip(starts, ends, strict=True)]


def _pages(start: int, end: int, ps: int) -> np.ndarray:
    return np.arange(start, end, ps, dtype=np.uint64)


class Handler:
    """Resolves write-protect faults of one userfaultfd, logging each faulting page."""

    def __init__(self, uffd_fd: int, sock: socket.socket, mem: int, pagemap_fd: int, pid: int,
                 features: int, snapshot_fd: int = -1) -> None:
        self.uffd = uffd_fd
        self.sock = sock
        self.mem = mem
        self.pagemap = pagemap_fd
        self.pid = pid
        self.features = U.UffdFeature(features)
        self.ps = os.sysconf("SC_PAGE_SIZE")
        #: WP on a none PTE of anonymous memory installs a marker only with WP_UNPOPULATED
        #: (6.4, userfaultfd_wp_use_markers); without it such pages are populated first.
        self.unpopulated = bool(self.features & U.UffdFeature.WP_UNPOPULATED)
        self.spans: list[tuple[int, int]] = []
        self.log: set[int] = set()  #: pages whose write fault was resolved since the last collect
        #: (start, end) ranges discarded by madvise (UFFD_EVENT_REMOVE) since the last collect
        self.removed: list[tuple[int, int]] = []
        #: pages of those still present at the last collect: the zap follows the event
        #: (userfaultfd_remove returns once the event is read), so it may not have happened
        #: yet; reported again at the next collect
        self.removed_pending = np.empty(0, np.uint64)
        #: (start, end, page size) of hugetlb VMAs met (protection works per huge page)
        self.huge: list[tuple[int, int, int]] = []
        self.refused: list[str] = []  #: runs the last collect could not protect again
        self.carry = np.empty(0, np.uint64)  #: pages left over by a max_pages collect
        self.carry_cons = np.empty(0, np.uint64)
        self.faults = 0
        self.out = bytearray()
        self.inbuf = bytearray()
        self.running = True
        self.snap_fd = snapshot_fd
        self.snap: _LiveCopy | None = None
        self.snap_waiting = False
        self.snap_stats = {"on_fault": 0, "background": 0, "discarded": 0}
        self._ops: dict[Op, Callable[..., Any]] = {
            Op.ARM: self.arm, Op.REARM: self.rearm, Op.DISARM: self.disarm,
            Op.COLLECT: self.collect, Op.STATS: self.stats, Op.CLOSE: self.close,
            Op.SNAPSHOT: self.snapshot, Op.WAIT: self.wait}

    # -- kernel steps ------------------------------------------------------------------------
    def _writeprotect(self, start: int, end: int, mode: int) -> None:
        """UFFDIO_WRITEPROTECT on ``[start, end)``. EAGAIN: a non-cooperative event (here
        REMOVE) is queued and unread (ctx->mmap_changing): read it, retry. ENOENT: part of the
        range is not registered (a VMA replaced since); before 6.4 also any range spanning
        several VMAs (mwriteprotect_range took one VMA): go VMA by VMA, registering again."""
        start, end = self._granular(start, end)
        while True:
            try:
                uffd.writeprotect(self.uffd, start, end - start, mode)
                return
            except errors.WriteWatchError as exc:
                if exc.errno == E.EAGAIN:
                    self.drain()
                    continue
                if exc.errno == E.EINVAL and self._learn_huge(start, end):
                    start, end = self._granular(start, end)
                    continue
                if exc.errno != E.ENOENT:
                    raise
                break
        for m in procfs.read_maps(self.pid):
            lo, hi = max(m.start, start), min(m.end, end)
            if lo >= hi:
                continue
            for attempt in range(2):
                try:
                    while True:
                        try:
                            uffd.writeprotect(self.uffd, lo, hi - lo, mode)
                            break
                        except errors.WriteWatchError as exc:
                            if exc.errno != E.EAGAIN:
                                raise
                            self.drain()
                    break
                except errors.WriteWatchError as exc:
                    if exc.errno != E.ENOENT or attempt or not mode:
                        raise
                    uffd.register(self.uffd, lo, hi - lo, int(U.UffdRegisterMode.WP))

    def _granular(self, start: int, end: int) -> tuple[int, int]:
        """Widen ``[start, end)`` to whole huge pages where it meets hugetlb VMAs (hugetlb
        ranges must be aligned to the huge page size: mwriteprotect_range, EINVAL)."""
        for lo, hi, size in self.huge:
            if lo <= start < hi:
                start -= (start - lo) % size
            if lo < end <= hi:
                end += -(end - lo) % size
        return start, end

    def _learn_huge(self, start: int, end: int) -> bool:
        """Find the hugetlb VMAs of ``[start, end)`` (KernelPageSize in /proc/PID/smaps);
        False when there is nothing new to learn."""
        found = False
        vma: tuple[int, int] | None = None
        for line in procfs.read_bytes(f"/proc/{self.pid}/smaps").splitlines():
            head = line.split(b" ", 1)[0]
            if b"-" in head and not head.endswith(b":"):
                a, b = (int(x, 16) for x in head.split(b"-"))
                vma = (a, b) if a < end and start < b else None
            elif vma and line.startswith(b"KernelPageSize:"):
                size = int(line.split()[1]) * 1024
                if size > self.ps and (vma[0], vma[1], size) not in self.huge:
                    self.huge.append((vma[0], vma[1], size))
                    found = True
        return found

    def _entries(self, start: int, end: int) -> np.ndarray:
        return pagemap.read_entries(self.pagemap, start, (end - start) // self.ps, self.ps)

    def _populate(self, runs: list[tuple[int, int]]) -> None:
        """Read the pages through /proc/PID/mem: a read fault on a none anonymous PTE maps
        the zero page (do_anonymous_page), which UFFDIO_WRITEPROTECT can protect."""
        for lo, hi in runs:
            pos = lo
            while pos < hi:
                n = min(hi - pos, 1 << 20)
                try:
                    _sys.os_call("read /proc/PID/mem", os.pread, self.mem, n, pos,
                                 start=pos, end=pos + n)
                except errors.WriteWatchError as exc:
                    if exc.errno not in (E.EIO, E.EFAULT):  # unmapped: nothing to protect
                        raise
                pos += n

    def _unarmed(self, start: int, end: int) -> np.ndarray:
        """Pages of the range without a uffd-wp bit in pagemap (bit 57, 5.13): present, or
        a swap entry / marker, without protection, or not populated at all."""
        ent = self._entries(start, end)
        idx = np.nonzero((ent & _UFFD_WP_BIT) == 0)[0].astype(np.uint64)
        out: np.ndarray = np.uint64(start) + idx * np.uint64(self.ps)
        return out

    def _protect_tolerant(self, runs: list[tuple[int, int]]) -> list[str]:
        """:meth:`_protect` run by run; a run the kernel refuses (a mapping placed there that
        cannot be registered: a file, another userfaultfd's range) stays unprotected, and so
        is reported at every collect. Returns the refusals."""
        refused = []
        for lo, hi in runs:
            try:
                self._protect([(lo, hi)])
            except errors.WriteWatchError as exc:
                refused.append(f"{lo:#x}-{hi:#x} cannot be write-protected ({exc}); "
                               "reported at every collect")
        return refused

    def _protect(self, runs: list[tuple[int, int]]) -> int:
        """Write-protect the runs until every page has the uffd-wp bit: a kernel without
        WP_UNPOPULATED skips none PTEs of anonymous memory, so those are populated and
        protected again (a write landing on one in between is protected by the next pass).
        Returns how many pages were still unprotected after the last pass (a concurrent
        discard): the next collect reports them."""
        left = 0
        for _ in range(4):
            for lo, hi in runs:
                self._writeprotect(lo, hi, _WP)
            unarmed = np.concatenate([np.empty(0, np.uint64),
                                      *(self._unarmed(lo, hi) for lo, hi in runs)])
            left = len(unarmed)
            if not left:
                break
            runs = _runs(unarmed, self.ps)
            self._populate(runs)
        return left

    # -- fault messages ----------------------------------------------------------------------
    def drain(self, until_empty: bool = True) -> None:
        """Read pending messages and resolve the faults: every message (``until_empty``, the
        read that finds none costs an EAGAIN), or one read's worth (after poll said POLLIN)."""
        while True:
            msgs = uffd.read_msgs(self.uffd, 64)
            if not msgs:
                return
            for m in msgs:
                if m.event == U.UffdEvent.PAGEFAULT:
                    page = m.b - m.b % self.ps
                    self.faults += 1
                    if self.snap is not None:
                        self.snap.on_fault(page)
                        self._writeprotect(page, page + self.ps, 0)
                    else:
                        self.log.add(page)
                        self._release(page)
                        if self.huge:  # a huge page is unprotected whole: log all of it
                            lo, hi = self._granular(page, page + self.ps)
                            self.log.update(range(lo, hi, self.ps))
                elif m.event == U.UffdEvent.REMOVE:
                    self.removed.append((m.a, m.b))
                    if self.snap is not None:
                        self.snap.on_removed(m.a, m.b)
            if not until_empty and len(msgs) < 64:
                return

    def _release(self, page: int) -> None:
        """Unprotect the faulting page; mode 0 wakes the writer. Should the range have been
        unmapped or unregistered meanwhile (ENOENT, EINVAL), wake the writer anyway: its
        fault is retried against whatever is mapped now."""
        try:
            self._writeprotect(page, page + self.ps, 0)
        except errors.WriteWatchError as exc:
            if exc.errno not in (E.ENOENT, E.EINVAL, E.ENOMEM):
                raise
            try:
                uffd.wake(self.uffd, page, self.ps)
            except errors.WriteWatchError:
                pass

    # -- requests ----------------------------------------------------------------------------
    def arm(self, start: int, end: int) -> int:
        ioctls = uffd.register(self.uffd, start, end - start, int(U.UffdRegisterMode.WP))
        try:
            self._protect([(start, end)])
        except BaseException:
            uffd.unregister(self.uffd, start, end - start)
            raise
        self.spans.append((start, end))
        return ioctls

    def rearm(self, start: int, end: int) -> list[str]:
        """The span's mappings changed: register what is there now and protect it. A part the
        kernel refuses stays unprotected (reported at every collect); returns why."""
        refused = []
        for m in procfs.read_maps(self.pid):
            lo, hi = max(m.start, start), min(m.end, end)
            if lo < hi:
                try:
                    uffd.register(self.uffd, lo, hi - lo, int(U.UffdRegisterMode.WP))
                    self._protect([(lo, hi)])
                except errors.WriteWatchError as exc:
                    refused.append(f"{lo:#x}-{hi:#x} cannot be tracked ({exc}); reported at "
                                   "every collect")
        self._forget(start, end)
        return refused

    def disarm(self, start: int, end: int) -> None:
        """Unregister: the kernel drops the uffd-wp bits and wakes waiters on the range
        (userfaultfd_unregister -> userfaultfd_clear_vma, wake_userfault)."""
        self.drain()
        self._forget(start, end)
        if (start, end) in self.spans:
            self.spans.remove((start, end))
        for m in procfs.read_maps(self.pid):
            lo, hi = max(m.start, start), min(m.end, end)
            if lo < hi:
                try:
                    uffd.unregister(self.uffd, lo, hi - lo)
                except errors.WriteWatchError as exc:
                    if exc.errno not in (E.EINVAL, E.ENOMEM):
                        raise

    def _forget(self, start: int, end: int) -> None:
        self.log = {p for p in self.log if not start <= p < end}
        keep = (self.carry < start) | (self.carry >= end)
        self.carry = self.carry[keep]
        keep = (self.carry_cons < start) | (self.carry_cons >= end)
        self.carry_cons = self.carry_cons[keep]

    def collect(self, spans: list[tuple[int, int]], reset: bool,
                   max_pages: int) -> tuple[bytes, bytes, tuple[str, ...]]:
        """Pages written in ``spans`` since the last reset: faults resolved, plus pages that
        lost protection without a fault (conservative). With ``reset`` they are protected
        again before any further fault is handled."""
        self.drain()
        ps = self.ps
        log = np.array(sorted(self.log), np.uint64)
        reasons: list[str] = []
        escaped_parts = []
        for s, e in spans:
            escaped_parts.append(self._unarmed(s, e))
        escaped = np.setdiff1d(np.concatenate([np.empty(0, np.uint64), *escaped_parts]), log)
        if len(escaped):
            reasons.append(f"{len(escaped)} page(s) lost write-protection without a fault "
                           "(discarded by MADV_DONTNEED, or a new mapping placed there): reported "
                           "as written")
        parts = [_pages(max(a, s), min(b, e), ps) for a, b in self.removed for s, e in spans
                 if max(a, s) < min(b, e)]
        new_removed = np.unique(np.concatenate([np.empty(0, np.uint64), *parts]))
        rem_pages = np.union1d(new_removed, self.removed_pending)
        if len(rem_pages):
            reasons.append(f"{len(rem_pages)} page(s) discarded by madvise "
                           "(MADV_DONTNEED/FREE/REMOVE): content may have changed")
        cons = np.union1d(np.union1d(escaped, rem_pages), self.carry_cons)
        cons = np.setdiff1d(cons, np.union1d(log, self.carry))
        written = np.union1d(np.union1d(log, self.carry), cons)
        if max_pages and len(written) > max_pages:
            taken, rest = written[:max_pages], written[max_pages:]
        else:
            taken, rest = written, np.empty(0, np.uint64)
        cons_taken = np.intersect1d(cons, taken)
        if reset:
            # Every page of ``taken`` is unprotected or lost protection: protect it again.
            # Faults read from here on (EAGAIN retries) go to the new log.
            self.log = set()
            self.removed = []
            self.removed_pending = self._still_present(new_removed)
            self.carry = np.setdiff1d(rest, cons)
            self.carry_cons = np.intersect1d(rest, cons)
            self.refused = self._protect_tolerant(_runs(taken, ps))
        reasons.extend(self.refused)
        return taken.tobytes(), cons_taken.tobytes(), tuple(reasons)

    def _still_present(self, pages: np.ndarray) -> np.ndarray:
        keep = [p for lo, hi in _runs(pages, self.ps)
                for p in _pages(lo, hi, self.ps)[(self._entries(lo, hi) & _PRESENT) != 0]]
        return np.array(keep, np.uint64)

    def stats(self) -> dict[str, int]:
        return {"faults": self.faults, **self.snap_stats}

    def close(self) -> None:
        self.drain()
        for s, e in list(self.spans):
            self.disarm(s, e)
        if self.snap is not None:
            self._snap_finish()
        self.running = False

    # -- live snapshot -----------------------------------------------------------------------
    def snapshot(self, start: int, end: int) -> None:
        """Arm a copy-before-write snapshot of ``[start, end)`` into the shared snapshot
        buffer: from now on a page is copied before its first write is let through, and the
        others are copied in the background."""
        snap = _LiveCopy(start, end, self.snap_fd, self.mem, self.ps, self.snap_stats)
        self.arm(start, end)
        self.snap = snap

    def wait(self) -> None:
        """Reply when every page was copied (a deferred reply: see :meth:`_snap_step`)."""
        self.snap_waiting = True
        self._snap_check_done()

    def _snap_step(self) -> None:
        """Copy the next batch of pages not yet copied, then unprotect them."""
        assert self.snap is not None
        got = self.snap.step()
        if got is not None:
            self._writeprotect(*got, 0)
        self._snap_check_done()

    def _snap_check_done(self) -> None:
        if self.snap_waiting and not (self.snap is not None and self.snap.pending()):
            self.snap_waiting = False
            self._snap_finish()
            self._reply(("ok", dict(self.snap_stats)))

    def _snap_finish(self) -> None:
        if self.snap is None:
            return
        snap, self.snap = self.snap, None
        if (snap.start, snap.end) in self.spans:
            self.disarm(snap.start, snap.end)
        snap.release()

    # -- transport ---------------------------------------------------------------------------
    def _reply(self, msg: Any) -> None:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        self.out += _LEN.pack(len(data)) + data
        self._flush()

    def _flush(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError):
                self.running = False
                self.out.clear()
                return
            del self.out[:n]

    def _requests(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:  # the tracked process is gone: its memory with it
            self.running = False
            return
        self.inbuf += data
        while len(self.inbuf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self.inbuf)
            if len(self.inbuf) < _LEN.size + n:
                return
            req = pickle.loads(bytes(self.inbuf[_LEN.size:_LEN.size + n]))
            del self.inbuf[:_LEN.size + n]
            self._dispatch(req)

    def _dispatch(self, req: tuple[Any, ...]) -> None:
        name, *args = req
        try:
            op = Op(name)  # on the wire by value: this module runs as __main__ here
            result = self._ops[op](*args)
        except Exception as exc:  # sent back and raised in the tracked process
            if not isinstance(exc, errors.WriteWatchError):
                exc = errors.KernelError(f"{name} failed in the handler: {exc!r}", op=name)
            self._reply(("err", exc))
            return
        if op is not Op.WAIT:
            self._reply(("ok", result))

    def run(self) -> None:
        self.sock.setblocking(False)
        self._reply(("ok", os.getpid()))
        poller = select.poll()
        poller.register(self.uffd, select.POLLIN)
        sock_fd = self.sock.fileno()
        while self.running:
            poller.register(sock_fd, select.POLLIN | (select.POLLOUT if self.out else 0))
            timeout = 0 if self.snap is not None and self.snap.pending() else None
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self.uffd:
                    if ev & select.POLLERR:
                        self.running = False
                    else:
                        self.drain(until_empty=False)
                elif fd == sock_fd:
                    if ev & select.POLLOUT:
                        self._flush()
                    if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self._requests()
            if not events and self.snap is not None and self.snap.pending():
                self._snap_step()
        self.sock.setblocking(True)
        self.sock.settimeout(5)
        try:
            while self.out:
                del self.out[:self.sock.send(self.out)]
        except OSError:
            pass


class _LiveCopy:
    """A live snapshot's copy of ``[start, end)``: which pages are copied into the shared
    buffer, copying a page on its first write fault (before the writer is let through) or in
    background batches."""

    def __init__(self, start: int, end: int, buf_fd: int, mem: int, ps: int,
                 stats: dict[str, int]) -> None:
        self.start, self.end = start, end
        self.mem, self.ps = mem, ps
        self.view = memoryview(mmap.mmap(buf_fd, end - start, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE))
        self.copied = np.zeros((end - start) // ps, bool)
        self.next = 0
        self.stats = stats

    def _copy(self, first: int, n: int) -> None:
        off = first * self.ps
        view = self.view[off:off + n * self.ps]
        pos = 0
        while pos < len(view):
            got = _sys.os_call("read /proc/PID/mem", os.preadv, self.mem, [view[pos:]],
                               self.start + off + pos, start=self.start + off + pos)
            if got <= 0:
                raise errors.KernelError("short read of /proc/PID/mem", op="snapshot copy")
            pos += got

    def _copy_once(self, i: int, counter: str) -> None:
        if not self.copied[i]:
            self._copy(i, 1)
            self.copied[i] = True
            self.stats[counter] += 1

    def on_fault(self, page: int) -> None:
        """A write fault on ``page``: copy it first (the caller then unprotects it)."""
        if self.start <= page < self.end:
            self._copy_once((page - self.start) // self.ps, "on_fault")

    def on_removed(self, lo: int, hi: int) -> None:
        """MADV_DONTNEED/REMOVE while snapshotting: the discard follows this event, so copy
        what is still there now (best effort; counted)."""
        a, b = max(lo, self.start), min(hi, self.end)
        for i in range((a - self.start) // self.ps, (b - self.start) // self.ps if a < b else 0):
            self._copy_once(i, "discarded")

    def pending(self) -> bool:
        return self.next < len(self.copied)

    def step(self) -> tuple[int, int] | None:
        """Copy the next batch of pages not yet copied; the range to unprotect, if any."""
        copied = self.copied
        i = self.next
        while i < len(copied) and copied[i]:
            i += 1
        j = i
        while j < len(copied) and j - i < SNAPSHOT_BATCH and not copied[j]:
            j += 1
        self.next = j
        if j == i:
            return None
        self._copy(i, j - i)
        copied[i:j] = True
        self.stats["background"] += j - i
        a = self.start + i * self.ps
        return a, a + (j - i) * self.ps

    def release(self) -> None:
        self.view.release()


def main(argv: list[str]) -> int:
    uffd_fd, sock_fd, mem, pm, pid, features = (int(a) for a in argv[:6])
    snap_fd = int(argv[6]) if len(argv) > 6 else -1
    sock = socket.socket(fileno=sock_fd)
    try:
        Handler(uffd_fd, sock, mem, pm, pid, features, snap_fd).run()
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
