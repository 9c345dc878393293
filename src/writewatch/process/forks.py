"""Following forks with ``UFFD_FEATURE_EVENT_FORK``.

With EVENT_FORK negotiated on a tracked process's userfaultfd, ``fork`` keeps the child's
registration and uffd-wp bits under a new userfaultfd context instead of dropping them
(fs/userfaultfd.c dup_userfaultfd; mm/memory.c copy_pte_range keeps the bit
``if (userfaultfd_wp(dst_vma))``, and vma_needs_copy() copies the page tables of shared
mappings too, for the bits' sake). The child is tracked from its first instruction, nothing
missed. The kernel hands over the new context as a descriptor installed in the reader's
table when the event is read (resolve_userfault_fork), and until then the forking thread
waits, TASK_KILLABLE, in dup_userfaultfd_complete -> userfaultfd_event_wait_completion:
**the reader must always be responsive**. It is a thread of its own here, taking no lock the
collecting thread holds across a system call. If this process dies, its descriptors close,
the context is released (``ctx->released``) and the waiting fork completes, untracked.

The event names no process: it is sent from dup_mmap(), before the child has a pid
(kernel/fork.c copy_process: copy_mm precedes alloc_pid). The child is found afterwards as
the one new child of the forking process: children are listed before the event is read (the
forking thread cannot finish before that), one event is read at a time, and the next new
child whose address space is not the parent's (kcmp KCMP_VM: a vfork child shares it) is
the one. A child that exits and is reaped before it is seen is recognised by its context's
address space being gone (UFFDIO_WRITEPROTECT answers ESRCH).
"""

from __future__ import annotations

import contextlib
import errno as E
import fcntl
import os
import select
import threading
import time
from typing import NamedTuple

from .. import _uapi as U
from .. import errors
from ..kernel import _sys, procfs
from ..kernel import ptrace as P
from ..kernel import uffd as K

__all__ = ["ForkWatcher", "Forked"]

#: how long a fork's child may take to appear in its parent's children list
FIND_TIMEOUT = 2.0
#: forks waiting for a collect beyond which the exited children are let go
PRUNE_AT = 128


class Forked(NamedTuple):
    """One fork of a tracked process, as the watcher saw it."""

    parent: int
    child: int | None  #: None: the child could not be identified
    ufd: int  #: the child's userfaultfd, a descriptor of this process (-1: none handed over)
    alive: bool  #: whether the child's address space still existed when it was looked for
    at: float  #: time.monotonic() of the event


def _mmap_min_addr() -> int:
    text = procfs.read_setting("/proc/sys/vm/mmap_min_addr")
    return max(int(text or 65536), 4096) // 4096 * 4096 or 65536


def mm_alive(ufd: int, page_size: int) -> bool:
    """Whether the address space behind userfaultfd ``ufd`` still exists (see
    :func:`_mm_alive`)."""
    return _mm_alive(ufd, _mmap_min_addr(), page_size)


def _mm_alive(ufd: int, probe: int, page_size: int) -> bool:
    """Whether the address space behind ``ufd`` still exists. UFFDIO_WRITEPROTECT takes a
    reference on ``ctx->mm`` after validating the range and answers ESRCH when it is gone
    (fs/userfaultfd.c userfaultfd_writeprotect); the probe unprotects one page at
    mmap_min_addr, where nothing tracked lives (at worst a false positive there)."""
    try:
        K.writeprotect(ufd, probe, page_size, U.UffdWriteprotectMode.DONTWAKE)
    except errors.WriteWatchError as exc:
        return exc.errno != E.ESRCH
    return True


class ForkWatcher:
    """Reads the fork events of every watched userfaultfd in a thread of its own.

    ``follow``: hand each identified child's context over (:meth:`take`); otherwise the
    context is closed at once and the child runs untracked (the fork is still reported)."""

    def __init__(self, page_size: int, follow: bool = True) -> None:
        self.page_size = page_size
        self.follow = follow
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._inflight = 0  # events being read or their child being looked for
        self._fds: dict[int, int] = {}  # our own copy of each watched descriptor -> its pid
        self._drop: set[int] = set()  # copies to close (by the thread, which polls them)
        self._known: dict[int, set[int]] = {}  # pid -> children its fork events announced
        self._pending: list[Forked] = []
        self._probe = _mmap_min_addr()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self.errors: list[str] = []  #: what went wrong in the thread (it carries on)
        self._thread = threading.Thread(target=self._run, name="writewatch-forks",
                                        daemon=True)
        self._thread.start()

    # -- the collecting thread's side ---------------------------------------------------------
    def watch(self, ufd: int, pid: int) -> None:
        """Read the fork events of process ``pid``'s userfaultfd ``ufd`` (the caller keeps
        its own descriptor; the watcher takes a copy)."""
        copy = int(_sys.os_call("F_DUPFD_CLOEXEC", fcntl.fcntl, ufd, fcntl.F_DUPFD_CLOEXEC, 0))
        with self._lock:
            self._fds[copy] = pid
            self._known.setdefault(pid, set())
        self._poke()

    def unwatch(self, pid: int) -> None:
        """Stop watching process ``pid`` (its copies are closed by the thread)."""
        with self._lock:
            self._drop.update(fd for fd, p in self._fds.items() if p == pid)
        self._poke()

    def take(self) -> list[Forked]:
        """The forks seen since the last call."""
        with self._lock:
            got, self._pending = self._pending, []
        return got

    def settle(self, timeout: float = 2 * FIND_TIMEOUT) -> None:
        """Wait until no event that was being read is still being handled (its child is
        looked for right after the read), so that :meth:`take` has every fork whose child
        is already visible in /proc."""
        with self._settled:
            self._settled.wait_for(lambda: self._inflight == 0, timeout)

    def known(self, pid: int) -> set[int]:
        """The children of ``pid`` the watcher has seen fork."""
        with self._lock:
            return set(self._known.get(pid, ()))

    def close(self) -> None:
        """Stop the thread and close every descriptor it holds (forks waiting on them then
        complete untracked); unclaimed children's descriptors are closed too."""
        self._stop = True
        self._poke()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        with self._lock:
            for fd in self._fds:
                _sys.close(fd)
            self._fds.clear()
            for f in self._pending:
                if f.ufd >= 0:
                    _sys.close(f.ufd)
            self._pending.clear()
        for fd in (self._wake_r, self._wake_w):
            _sys.close(fd)

    def forget(self) -> None:
        """In a fork()ed child (the thread does not exist there): close the copies only."""
        for fd in [*self._fds, *(f.ufd for f in self._pending if f.ufd >= 0),
                   self._wake_r, self._wake_w]:
            _sys.close(fd)
        self._fds.clear()
        self._pending.clear()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        polled: set[int] = set()
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop:
            with self._lock:
                for fd in self._drop:
                    if fd in polled:
                        poller.unregister(fd)
                        polled.discard(fd)
                    self._fds.pop(fd, None)
                    _sys.close(fd)
                self._drop.clear()
                for fd in self._fds.keys() - polled:
                    poller.register(fd, select.POLLIN)
                    polled.add(fd)
                watched = dict(self._fds)
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            for fd, _ev in ready:
                if fd == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 4096)
                elif fd in watched:
                    try:
                        self._read_one(fd, watched[fd])
                    except Exception as exc:  # never stop reading: forks would hang
                        self.errors.append(f"{type(exc).__name__}: {exc}")

    def _read_one(self, fd: int, pid: int) -> None:
        with self._lock:
            self._inflight += 1
        try:
            before = procfs.children(pid)
            msgs = K.read_msgs(fd, 1)
            for msg in msgs:
                if msg.event == U.UffdEvent.FORK:
                    self._forked(pid, before, msg.a)
        finally:
            with self._settled:
                self._inflight -= 1
                self._settled.notify_all()

    def _forked(self, parent: int, before: set[int], ufd: int) -> None:
        t = time.monotonic()
        child = self._find_child(parent, before)
        alive = child is not None or _mm_alive(ufd, self._probe, self.page_size)
        with self._lock:
            if child is not None:
                self._known.setdefault(parent, set()).add(child)
            # an unfollowed child's context is kept too, until the next collect lets it go:
            # closing it now would unprotect all of the child's memory while its parent
            # waits for it (userfaultfd_release -> uffd_wp_range under the child's mmap lock)
            keep = child is not None
            if keep:
                # the child's own forks come on its context: watch it from now on
                copy = int(fcntl.fcntl(ufd, fcntl.F_DUPFD_CLOEXEC, 0))
                self._fds[copy] = child  # type: ignore[assignment]
                self._known[child] = set()  # type: ignore[index]
            self._pending.append(Forked(parent, child, ufd if keep else -1, alive, t))
            if len(self._pending) > PRUNE_AT:
                self._prune()
        if not keep:
            _sys.close(ufd)

    def _prune(self) -> None:
        """Many forks since the last collect: let go of the children that are gone already,
        so that short-lived ones do not use up this process's descriptors (called with the
        lock held)."""
        out = []
        for f in self._pending:
            if f.ufd >= 0 and not _mm_alive(f.ufd, self._probe, self.page_size):
                _sys.close(f.ufd)
                self._drop.update(fd for fd, p in self._fds.items() if p == f.child)
                f = f._replace(ufd=-1, alive=False)
            out.append(f)
        self._pending = out

    def _find_child(self, parent: int, before: set[int]) -> int | None:
        deadline = time.monotonic() + FIND_TIMEOUT
        skip = set(before) | self._known.get(parent, set())
        delay = 2e-5
        while True:
            for c in sorted(procfs.children(parent) - skip):
                if P.same_mm(parent, c):
                    skip.add(c)  # vfork / clone(CLONE_VM): no new address space, no event
                    continue
                return c
            if time.monotonic() > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
