"""Layer 4: tracking another process. ``attach(pid)``, ``launch(argv)``, :class:`ProcessTracker`.

A userfaultfd is created inside the target by syscall injection
(:func:`writewatch.kernel.inject.steal_userfaultfd`), a copy is taken with ``pidfd_getfd``,
and — while the target is still stopped — every writable mapping of ``/proc/PID/maps`` is
registered and armed from here (UFFDIO_REGISTER and PAGEMAP_SCAN act on the mm of the
descriptor's creator, whoever calls them). Collects go through ``/proc/PID/pagemap``.

Mappings change under the tracker. At each collect:

* a writable mapping (or part of one) not armed before — a new mmap, brk growth, a thread
  stack, a read-only mapping made writable — is armed and reported whole, flagged
  conservative with the reason (its writes before arming are unknown, never skipped);
* a tracked mapping that disappeared is reported in ``removed`` (and ``moved`` when a new
  mapping of the same size and file appeared: ``mremap``); one replaced or split in place is
  reported whole and re-armed by the backend;
* a range the kernel refused (another userfaultfd owns it: EBUSY, or a VMA uffd cannot
  handle) is listed in :attr:`ProcessTracker.refused` and reported whole at every collect;
* ``exec`` in the target frees the old mm (the pagemap descriptor then reads 0 bytes):
  the collect reports it (``info.exec``), injects again into the new program and reports
  every mapping of it whole;
* when the target has exited, one last collect returns what can still be said (nothing:
  the memory is gone) with ``info.exited``; the next raises :class:`NoSuchProcess`.

A fork of the target is not followed: the kernel drops the uffd context from the child's
VMAs and clears the uffd-wp bits copied into its page tables (no EVENT_FORK requested;
fs/userfaultfd.c dup_userfaultfd, mm/memory.c copy_pte_range), so the child runs untracked
and unprotected.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import errors
from .backends.base import Backend, Span
from .kernel import LINUX, KernelCalls, _sys, procfs
from .kernel import inject as _inject
from .kernel import ptrace as _ptrace
from .pages import Pages
from .tracker import CollectInfo, Tracker, make_backend

__all__ = ["LaunchedProcess", "MappingInfo", "ProcessCollectInfo", "ProcessTracker", "attach",
           "launch"]

_EMPTY = np.empty((0, 2), np.uint64)


class MappingInfo(NamedTuple):
    """One mapping of the target (a /proc/PID/maps line) and its label."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str  #: as in maps: a file path, "[heap]", "[stack]", "" for anonymous memory

    @property
    def label(self) -> str:
        """"heap", "stack", "anon", "[vdso]"-style names, or the file's base name."""
        if self.path == "[heap]":
            return "heap"
        if self.path.startswith("[stack"):
            return "stack"
        if not self.path:
            return "anon"
        if self.path.startswith("["):
            return self.path
        return os.path.basename(self.path.removesuffix(" (deleted)")) or self.path

    @property
    def length(self) -> int:
        return self.end - self.start

    @classmethod
    def of(cls, m: procfs.Mapping) -> MappingInfo:
        return cls(m.start, m.end, m.perms, m.offset, m.inode, m.path)


_SPECIAL = ("[vsyscall]", "[vvar]", "[vdso]", "[vvar_vclock]", "[uprobes]")


def trackable(m: procfs.Mapping | MappingInfo) -> bool:
    """Writable and not kernel-provided ([vvar], [vdso]...): what user code can write."""
    return m.perms[1] == "w" and m.path not in _SPECIAL


@dataclass(frozen=True)
class ProcessCollectInfo(CollectInfo):
    """Details of one collect of a :class:`ProcessTracker`."""

    written: Pages | None = None  #: the pages returned by the collect
    mappings: tuple[MappingInfo, ...] = ()  #: the target's mappings at this collect
    new: tuple[MappingInfo, ...] = ()  #: writable mappings armed at this collect
    removed: tuple[MappingInfo, ...] = ()  #: tracked mappings gone since the last collect
    moved: tuple[tuple[MappingInfo, MappingInfo], ...] = ()  #: (old, new) pairs: mremap
    refused: tuple[tuple[MappingInfo, str], ...] = ()  #: ranges the kernel would not arm
    exec: bool = False  #: the target exec'd a new program since the last collect
    exited: bool = False  #: the target has exited; the next collect raises NoSuchProcess

    def by_mapping(self) -> list[tuple[MappingInfo, int]]:
        """Pages written per mapping at this collect (mappings with writes only)."""
        return list(_by_mapping(self.written, self.mappings))


def _by_mapping(pages: Pages | None, mappings: Sequence[MappingInfo]):  # type: ignore[no-untyped-def]
    if pages is None or not len(pages) or not mappings:
        return
    r = pages.ranges
    ps = pages.page_size
    starts = np.array([m.start for m in mappings], np.uint64)
    ends = np.array([m.end for m in mappings], np.uint64)
    # pages of each mapping: sum over ranges of the overlap length
    lo = np.maximum(r[:, 0][None, :], starts[:, None]) if len(mappings) * len(r) < 4_000_000 \
        else None
    if lo is not None:
        hi = np.minimum(r[:, 1][None, :], ends[:, None])
        n = np.where(hi > lo, hi - lo, 0).sum(axis=1) // ps
        for m, k in zip(mappings, n.tolist(), strict=True):
            if k:
                yield m, int(k)
        return
    for m in mappings:
        k = len(pages.clip(m.start, m.end))
        if k:
            yield m, k


def _overlaps(runs: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether ``[lo, hi)`` meets one of the sorted disjoint ``runs``."""
    i = bisect.bisect_right(starts, lo) - 1
    if i >= 0 and runs[i][1] > lo:
        return True
    return i + 1 < len(runs) and runs[i + 1][0] < hi


def _contains(runs: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> bool:
    """Whether ``[lo, hi)`` lies inside one of the sorted disjoint ``runs``."""
    i = bisect.bisect_right(starts, lo) - 1
    return i >= 0 and runs[i][1] >= hi


class _MapsCache:
    """A :class:`KernelCalls` over ``base`` whose maps reads of one process come from a
    snapshot while one is held: the backend asks "is this span still mapped" once per span,
    and reading /proc/PID/maps each time would make a collect O(mappings²)."""

    def __init__(self, base: KernelCalls, pid: int) -> None:
        self._base = base
        self._pid = pid
        self._snap: tuple[procfs.Mapping, ...] | None = None
        self.page_size = base.page_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def snapshot(self) -> tuple[procfs.Mapping, ...]:
        self._snap = self._base.read_maps(self._pid)
        return self._snap

    def drop(self) -> None:
        self._snap = None

    def read_maps(self, pid: int | str) -> tuple[procfs.Mapping, ...]:
        if self._snap is not None and pid == self._pid:
            return self._snap
        return self._base.read_maps(pid)

    def is_mapped(self, pid: int | str, start: int, length: int) -> bool:
        if self._snap is None or pid != self._pid:
            return self._base.is_mapped(pid, start, length)
        pos, end = start, start + length
        for m in self._snap:
            if m.start <= pos < m.end:
                pos = m.end
                if pos >= end:
                    return True
        return pos >= end


def _pid_state(pid: int) -> str:
    """State letter of /proc/PID/stat; "" when the process is gone."""
    return _ptrace.thread_state(pid, pid)


def _dup_cloexec(fd: int) -> int:
    return int(_sys.os_call("F_DUPFD_CLOEXEC", fcntl.fcntl, fd, fcntl.F_DUPFD_CLOEXEC, 0))


class ProcessTracker(Tracker):
    """Tracks the writes of another process; create with :func:`attach` or :func:`launch`.

    ``collect()`` returns the pages written (in every writable mapping) since tracking
    started or since the last collect; :attr:`last` is a :class:`ProcessCollectInfo`.
    """

    def __init__(self, pid: int, backend: str = "auto", *, kernel: KernelCalls = LINUX,
                 process: LaunchedProcess | None = None, launch_go: int | None = None,
                 reattach_on_exec: bool = True, **options: Any) -> None:
        self.pid = pid
        self.process = process
        self.reattach_on_exec = reattach_on_exec
        self._kernel = _MapsCache(kernel, pid)
        self._backend_name = backend
        self._options = options
        self._lock = threading.RLock()
        self._targets = []
        self._refused: dict[tuple[int, int], tuple[MappingInfo, str]] = {}
        self._gone = False
        self._exited_reported = False
        self.exec_count = 0
        #: set when writes may have happened before arming: the next collect reports every
        #: writable mapping whole, with this reason
        self._whole_once: str | None = None
        #: whether arming finished while the target was stopped (False: it resumed first)
        self.armed_stopped = True
        self._backend: Backend = self._start(launch_go)
        self._last = ProcessCollectInfo(Pages((), self._backend.page_size))
        self._finalizer = weakref.finalize(self, self._backend.close)

    # -- starting ---------------------------------------------------------------------------
    def _start(self, launch_go: int | None = None) -> Backend:
        """Make a backend for the target and arm every writable mapping."""
        name = _process_backend(self._backend_name)
        from .features import features
        feat = features().backends.get(name)
        if feat is not None and not feat.usable:
            raise errors.Unsupported(f"the {name} backend is not usable here: {feat.detail}",
                                     feature=name, hint=feat.fix or "use backend='auto'")
        if name != "uffd-async":
            # backends that need no descriptor inside the target (soft-dirty) plug in here
            backend = make_backend(name, self.pid, self._kernel, **self._options)
            try:
                self._arm_all(backend)
            except BaseException:
                backend.close()
                raise
            return backend
        from .backends.uffd_async import UffdAsyncBackend
        made: list[Backend] = []

        def arm(fd: int) -> None:
            backend = UffdAsyncBackend(self.pid, self._kernel, uffd=_dup_cloexec(fd),
                                       **self._options)
            made.append(backend)
            self._arm_all(backend)

        try:
            res = _inject.steal_userfaultfd(self.pid, while_stopped=arm, launch_go=launch_go)
        except BaseException:
            for b in made:
                b.close()
            raise
        _sys.close(res.fd)
        self.armed_stopped = res.armed_stopped
        return made[0]

    def _arm_all(self, backend: Backend) -> None:
        self._refused.clear()
        maps = self._kernel.snapshot()
        try:
            for m in maps:
                if trackable(m):
                    self._arm(backend, MappingInfo.of(m), m.start, m.end)
        finally:
            self._kernel.drop()

    def _arm(self, backend: Backend, info: MappingInfo, start: int, end: int) -> bool:
        """Register and arm ``[start, end)`` (part of mapping ``info``); on refusal record it
        in :attr:`refused` (reported whole at every collect)."""
        try:
            backend.add(Span(start, end, info.label))
            return True
        except errors.AlreadyTracked as exc:
            why = f"another userfaultfd (the target's own) owns this range: {exc}"
        except (errors.InvalidTarget, errors.KernelError, errors.Unsupported) as exc:
            if isinstance(exc, errors.InvalidTarget) and exc.errno is None:
                raise  # a programming error, not a kernel refusal
            why = str(exc)
        self._refused[(start, end)] = (info, why)
        return False

    # -- properties -------------------------------------------------------------------------
    @property
    def last(self) -> ProcessCollectInfo:
        return self._last  # type: ignore[return-value]

    @property
    def refused(self) -> tuple[tuple[MappingInfo, str], ...]:
        """Ranges the kernel refused to arm, with the reason; reported whole at each collect."""
        return tuple(self._refused.values())

    def mappings(self) -> tuple[MappingInfo, ...]:
        """The target's current writable (tracked or refused) mappings, labelled."""
        return tuple(MappingInfo.of(m) for m in self._kernel.read_maps(self.pid) if trackable(m))

    def add(self, *targets: Any) -> None:
        raise errors.InvalidTarget("a process tracker tracks every writable mapping already",
                                   hint="use writewatch.track() for memory of this process")

    # -- collecting -------------------------------------------------------------------------
    def _mm_state(self) -> str:
        """"alive" (same mm), "exec" (the mm we armed is gone, the process lives) or
        "exited". The pagemap descriptor holds the mm it was opened on; once that mm has no
        users its reads return 0 bytes (fs/proc/task_mmu.c pagemap_read: mmget_not_zero)."""
        fd = getattr(self._backend, "pagemap", None)
        if fd is not None:
            try:
                alive = len(os.pread(fd, 8, 0)) == 8
            except OSError:
                alive = False
            if alive:
                return "alive"
        state = _pid_state(self.pid)
        if state in ("", "Z", "X"):
            return "exited"
        return "exec" if fd is not None else "alive"

    def collect(self, reset: bool = True, max_pages: int = 0) -> Pages:
        with self._lock:
            self._check_open()
            if self._gone:
                raise errors.NoSuchProcess(self.pid, f"process {self.pid} has exited",
                                           hint="its last collect was already returned")
            state = self._mm_state()
            if state == "exited":
                return self._exited()
            if state == "exec":
                if not self.reattach_on_exec:
                    self._gone = True
                    raise errors.NoSuchProcess(self.pid, f"process {self.pid} exec'd a new "
                                               "program; the memory tracked is gone",
                                               hint="attach again, or keep reattach_on_exec")
                return self._reattach()
            try:
                got = self._collect(reset, max_pages)
                if self._whole_once and reset:
                    got = self._add_whole(got, self._whole_once)
                    self._whole_once = None
                return got
            except (errors.NoSuchProcess, errors.KernelError, errors.InvalidTarget):
                if self._mm_state() == "exited":
                    return self._exited()
                raise

    def _add_whole(self, got: Pages, why: str) -> Pages:
        """Report every writable mapping whole, as conservative, on top of ``got``."""
        last = self.last
        whole = Pages([(m.start, m.end) for m in last.mappings if trackable(m)], self.page_size)
        self._last = dataclasses.replace(last, conservative=last.conservative | whole,
                                         reasons=(*last.reasons, why), written=got | whole)
        return got | whole

    def _exited(self) -> Pages:
        ps = self.page_size
        self._gone = True
        self._last = ProcessCollectInfo(Pages((), ps), (f"process {self.pid} exited",),
                                        written=Pages((), ps), exited=True)
        return Pages((), ps)

    def _reattach(self) -> Pages:
        old = self._backend
        with contextlib.suppress(Exception):
            old.close()
        self._finalizer.detach()
        self.exec_count += 1
        self._backend = self._start()
        self._finalizer = weakref.finalize(self, self._backend.close)
        maps = tuple(MappingInfo.of(m) for m in self._kernel.read_maps(self.pid))
        ps = self.page_size
        whole = Pages([(m.start, m.end) for m in maps if trackable(m)], ps)
        why = (f"process {self.pid} exec'd a new program: every writable mapping of it is "
               "reported whole (written before it could be armed)")
        self._last = ProcessCollectInfo(whole, (why,), written=whole, mappings=maps,
                                        new=tuple(m for m in maps if trackable(m)), exec=True,
                                        refused=self.refused)
        return whole

    def _collect(self, reset: bool, max_pages: int) -> Pages:
        ps = self.page_size
        backend = self._backend
        maps = self._kernel.snapshot()
        try:
            infos = tuple(MappingInfo.of(m) for m in maps)
            writable = [m for m in infos if trackable(m)]
            live = Pages([(m.start, m.end) for m in writable], ps)
            runs = [(int(lo), int(hi)) for lo, hi in live.ranges.tolist()]
            starts = [lo for lo, _ in runs]
            # spans whose memory is entirely gone (or no longer writable): removed
            removed: list[MappingInfo] = []
            for s in list(backend.spans):
                if not _overlaps(runs, starts, s.start, s.end):
                    removed.append(self._span_info(s))
                    if reset:
                        backend.remove(s)
            for key in list(self._refused):
                if reset and not _contains(runs, starts, *key):  # changed: retried below
                    removed.append(self._refused.pop(key)[0])
            covered = Pages([(s.start, s.end) for s in backend.spans]
                            + list(self._refused), ps)
            fresh = live - covered
            new: list[MappingInfo] = []
            cons: list[tuple[int, int]] = []
            reasons: list[str] = []
            if len(fresh):
                for m in writable:
                    for lo, hi in fresh.clip(m.start, m.end):
                        cons.append((lo, hi))
                        new.append(m._replace(start=lo, end=hi))
                        if reset:
                            self._arm(backend, m, lo, hi)
                reasons.append(f"{len(new)} new writable mapping(s) or part(s), "
                               f"{len(fresh)} pages: not armed before, reported whole")
            got = backend.collect(reset=reset, max_pages=max_pages)
        finally:
            self._kernel.drop()
        refused = self.refused
        for (lo, hi), (_info, why) in self._refused.items():
            cons.append((lo, hi))
            reasons.append(f"{lo:#x}-{hi:#x} refused ({why}): reported whole")
        cons_arr = np.array(cons, np.uint64).reshape(-1, 2) if cons else _EMPTY
        conservative = Pages.from_kernel(np.concatenate([got.conservative, cons_arr]), ps)
        written = Pages.from_kernel(np.concatenate([got.written, cons_arr]), ps)
        moved = self._moved(removed, new)
        self._last = ProcessCollectInfo(
            conservative, (*got.reasons, *reasons), written=written, mappings=infos,
            new=tuple(new), removed=tuple(removed), moved=moved, refused=refused)
        return written

    def _span_info(self, s: Span) -> MappingInfo:
        return MappingInfo(s.start, s.end, "", 0, 0, "" if s.label == "anon" else s.label)

    @staticmethod
    def _moved(removed: list[MappingInfo],
               new: list[MappingInfo]) -> tuple[tuple[MappingInfo, MappingInfo], ...]:
        """A removed mapping and a new one of the same length and label: moved (mremap)."""
        out = []
        pool = list(new)
        for old in removed:
            for cand in pool:
                if cand.length == old.length and cand.label == old.label:
                    out.append((old, cand))
                    pool.remove(cand)
                    break
        return tuple(out)

    def _check_open(self) -> None:
        if self._backend.closed:
            raise errors.TrackerClosed("this tracker is closed",
                                       hint="create a new one with writewatch.attach(pid)")

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop tracking: unregister every range (the kernel drops the protection) and close
        the descriptors. The process itself is left running. Idempotent."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> ProcessTracker:
        return self

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._backend.spans)} span(s)"
        return f"<ProcessTracker pid={self.pid} {self.backend} {state}>"


# -- attach ---------------------------------------------------------------------------------
def _check_target(pid: int) -> None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise errors.InvalidTarget(f"{pid!r} is not a process id", hint="give a PID > 0")
    if pid == os.getpid():
        raise errors.InvalidTarget("cannot attach to this process itself",
                                   hint="use writewatch.track() for memory of this process")
    state = _pid_state(pid)
    if state in ("", "X"):
        raise errors.NoSuchProcess(pid)
    if state == "Z":
        raise errors.NoSuchProcess(pid, f"process {pid} has exited (zombie)")
    if state == "T":
        raise errors.InvalidTarget(f"process {pid} is stopped (job control)",
                                   hint=f"resume it first (kill -CONT {pid})")
    try:
        status = procfs.parse_status(procfs.read_bytes(f"/proc/{pid}/status", pid))
    except errors.NoSuchProcess:
        raise
    tracer = int(status.get("TracerPid", "0") or 0)
    if tracer:
        raise errors.PermissionDenied(
            f"process {pid} is already traced by process {tracer}", op="ptrace",
            hint="a process has one tracer: detach the debugger (or strace) first")
    if status.get("Seccomp", "0") == "2":
        raise errors.Unsupported(
            f"process {pid} runs under a seccomp filter: injecting userfaultfd() could kill "
            "it", feature="syscall injection under seccomp",
            hint="track it with a backend that needs no injection (soft-dirty), or start it "
                 "with writewatch.launch()")


def _process_backend(name: str) -> str:
    """The backend "auto" means for another process: uffd-wp-sync tracks its own process
    only, so uffd-async, then soft-dirty (which needs no descriptor inside the target)."""
    if name != "auto":
        return name
    from .features import features
    f = features()
    name = next((b for b in ("uffd-async", "soft-dirty") if f.backends[b].usable), "")
    if not name:
        raise errors.Unsupported(
            "no mechanism here can track another process",
            feature="UFFD_FEATURE_WP_ASYNC", since="6.7",
            hint=f"uffd-async: {f.backends['uffd-async'].detail}; soft-dirty: "
                 f"{f.backends['soft-dirty'].detail}")
    return name


def attach(pid: int, backend: str = "auto", *, kernel: KernelCalls = LINUX,
           reattach_on_exec: bool = True, **options: Any) -> ProcessTracker:
    """Track every page another running process writes, from now on.

    The process is stopped for the injection of one ``userfaultfd`` and one ``close`` and
    for arming its writable mappings (all threads; a few ms plus about 1 ms per 100 MiB
    written), then resumes. Needs ptrace permission over it (CAP_SYS_PTRACE, or the same
    uid with kernel.yama.ptrace_scope 0): a refusal raises :class:`PermissionDenied` saying
    what is needed.

    Returns:
        A :class:`ProcessTracker` (collect / close / context manager, ``mappings()``,
        ``last``: per-collect mapping changes and conservative reports).
    """
    _check_target(pid)
    return ProcessTracker(pid, backend, kernel=kernel, reattach_on_exec=reattach_on_exec,
                          **options)


# -- launch ---------------------------------------------------------------------------------
class LaunchedProcess:
    """The process started by :func:`launch`: a child of this process (a small
    ``subprocess.Popen`` look-alike: ``pid``, ``args``, ``returncode``, ``poll()``,
    ``wait()``, ``send_signal()``, ``terminate()``, ``kill()``)."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        #: file objects for the streams given as ``subprocess.PIPE``, else None
        self.stdin: Any = None
        self.stdout: Any = None
        self.stderr: Any = None
        self._lock = threading.Lock()

    def _reap(self, options: int) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            try:
                got, status = os.waitpid(self.pid, options)
            except ChildProcessError:
                self.returncode = self.returncode if self.returncode is not None else -1
                return self.returncode
            if got == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._reap(0)
            assert code is not None
            return code
        end = time.monotonic() + timeout
        delay = 0.0005
        while (code := self._reap(os.WNOHANG)) is None:
            if time.monotonic() >= end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<LaunchedProcess pid={self.pid} returncode={self.returncode}>"


#: include/uapi/linux/prctl.h (Yama): allow a process and its descendants to ptrace us
PR_SET_PTRACER = 0x59616D61


def _allow_ptrace_by(pid: int) -> None:
    """In the launched child: let ``pid`` and its descendants (the attach helper, a sibling
    of the child) trace it under kernel.yama.ptrace_scope 1, where only ancestors may
    (security/yama/yama_lsm.c ptracer_exception_found). EINVAL without Yama: ignored."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)


def _redirect(spec: Any, fd: int, mode: int) -> None:
    if spec is None:
        return
    if isinstance(spec, tuple):  # (read end, write end) of a PIPE
        src = spec[0] if mode == os.O_RDONLY else spec[1]
    elif spec == subprocess.DEVNULL:
        src = os.open(os.devnull, mode)
    elif isinstance(spec, int):
        src = spec
    else:
        src = spec.fileno()
    os.dup2(src, fd)


def launch(argv: Sequence[str], backend: str = "auto", *, env: dict[str, str] | None = None,
           cwd: str | None = None, stdin: Any = None, stdout: Any = None, stderr: Any = None,
           text: bool = False, kernel: KernelCalls = LINUX, reattach_on_exec: bool = True,
           **options: Any) -> ProcessTracker:
    """Start ``argv`` under tracking: armed at its exec, before its first instruction, so no
    write of the program is missed. ``t.process`` is the child (``pid``, ``wait()``,
    ``returncode``...); closing the tracker leaves it running.

    ``stdin``/``stdout``/``stderr``: None (inherit), ``subprocess.PIPE`` (then
    ``t.process.stdin``... are file objects, text ones with ``text=True``),
    ``subprocess.DEVNULL``, a descriptor or a file object."""
    argv = [os.fspath(a) for a in argv]
    if not argv:
        raise errors.InvalidTarget("no command given", hint="pass the program and arguments")
    exe = argv[0]
    if os.sep not in exe:
        import shutil
        found = shutil.which(exe, path=(env or os.environ).get("PATH"))
        if found is None:
            raise errors.InvalidTarget(f"{exe}: command not found", op="exec",
                                       hint="give a path or a program on PATH")
        exe = found
    if not os.access(exe, os.X_OK):
        raise errors.InvalidTarget(f"{exe} is not executable", op="exec",
                                   hint="check the path and its permissions")
    streams = [stdin, stdout, stderr]
    pipes: list[tuple[int, int] | None] = [None, None, None]
    for i, spec in enumerate(streams):
        if spec is subprocess.PIPE or (isinstance(spec, int) and spec == subprocess.PIPE):
            pipes[i] = os.pipe()
            streams[i] = pipes[i]
    stdin, stdout, stderr = streams
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()  # both close-on-exec: EOF at a successful exec
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        code = 127
        try:
            os.close(go_w)
            os.close(err_r)
            _redirect(stdin, 0, os.O_RDONLY)
            _redirect(stdout, 1, os.O_WRONLY)
            _redirect(stderr, 2, os.O_WRONLY)
            if cwd is not None:
                os.chdir(cwd)
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            _allow_ptrace_by(parent)
            os.read(go_r, 1)  # the attach helper has seized this process
            os.close(go_r)
            if env is None:
                os.execv(exe, argv)
            os.execve(exe, argv, env)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.write(err_w, f"{exc.errno}".encode())
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(err_w)
    proc = LaunchedProcess(child, argv)
    for i, pair in enumerate(pipes):
        if pair is None:
            continue
        mine, theirs = (pair[1], pair[0]) if i == 0 else pair
        os.close(theirs)
        mode = ("w" if i == 0 else "r") + ("" if text else "b")
        f = open(mine, mode, buffering=1 if text else -1)  # noqa: SIM115 (owned by proc)
        setattr(proc, ("stdin", "stdout", "stderr")[i], f)
    try:
        try:
            if _process_backend(backend) != "uffd-async":
                # soft-dirty cannot be armed before the first instruction without stopping
                # the child at exec; let it exec, arm, and report everything once instead
                os.write(go_w, b"g")
                data = os.read(err_r, 64)  # EOF: exec succeeded (err_w is close-on-exec)
                if data:
                    raise errors.InvalidTarget(
                        f"cannot execute {exe}: {os.strerror(int(data))}", op="exec",
                        errno=int(data), hint="check the command and its path")
                tracker = ProcessTracker(child, backend, kernel=kernel, process=proc,
                                         reattach_on_exec=reattach_on_exec, **options)
                tracker._whole_once = (
                    f"{tracker.backend} was armed after {exe} started: every writable mapping "
                    "is reported whole once (written before it could be armed)")
                return tracker
            tracker = ProcessTracker(child, backend, kernel=kernel, process=proc,
                                     launch_go=go_w, reattach_on_exec=reattach_on_exec,
                                     **options)
        except errors.WriteWatchError:
            # the child may still wait for the go-ahead, holding err_w: end it first (an
            # exec error it reported is already in the pipe)
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
            data = os.read(err_r, 64)
            if data:
                err = int(data)
                raise errors.InvalidTarget(f"cannot execute {exe}: {os.strerror(err)}",
                                           op="exec", errno=err,
                                           hint="check the command and its path") from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        os.close(go_w)
        os.close(err_r)
    return tracker

