"""What the exporter watches: target specs, and the trackers and counters behind each.

A target is a process (``--pid``), a cgroup v2 directory (``--cgroup``: every process in it
and in the cgroups below, including processes that join later) or a regular expression on
command lines (``--match``: every process whose ``/proc/PID/cmdline``, arguments joined by
spaces, matches; re-scanned at every interval). Each tracker is one
:func:`writewatch.attach` of a process and (with ``follow_forks``) its descendants: one
collect per interval for the whole tree.

Nothing a target does ends the exporter: a target that cannot be attached (no permission,
EBUSY, seccomp, no such process), whose collect fails, or whose processes exit is recorded
(``writewatch_target_up``, ``writewatch_errors_total{kind}``, a log line on every change of
state) and retried (``--retry`` seconds later) when retrying can help.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import errors
from ..pages import Pages

__all__ = ["ERRORS", "KINDS", "REASONS", "ProcStats", "Target", "TargetSpec", "mapping_kind",
           "parse_target", "reason_class"]

log = logging.getLogger("writewatch.exporter")

#: values of the ``kind`` label: what backs the pages written (see :func:`mapping_kind`)
KINDS = ("heap", "stack", "anon", "shmem", "file", "other")
#: values of the ``reason`` label of conservative pages (see :func:`reason_class`)
REASONS = ("new_mapping", "attached_late", "fork", "exit_exec", "untracked_sharer",
           "refused", "mixed", "other")

#: values of the ``kind`` label of ``writewatch_errors_total``: the library's exception classes
#: (writewatch/errors.py), subclasses counted under their parent here ("WriteWatchError": any
#: other)
ERRORS = ("NoSuchProcess", "PermissionDenied", "Unsupported", "InvalidTarget", "KernelError",
          "WriteWatchError")

#: /proc/PID/maps names of shared anonymous memory (mm/shmem.c shmem_zero_setup, ipc/shm.c,
#: mm/memfd.c "memfd:" names) and POSIX shared memory (tmpfs at /dev/shm)
_SHMEM = ("/dev/zero", "/SYSV", "/memfd:", "/dev/shm/")


def mapping_kind(path: str, perms: str) -> str:
    """The ``kind`` label of a mapping from its /proc/PID/maps path and permissions."""
    if path == "[heap]":
        return "heap"
    if path.startswith("[stack"):
        return "stack"
    if not path:
        return "shmem" if perms[3:4] == "s" else "anon"
    if path.startswith(_SHMEM):
        return "shmem"
    return "file" if path.startswith("/") else "other"


#: (words in the reason text, class), first match wins; the texts are those of
#: writewatch.process (tree.py, member.py) and the backends
_REASON_WORDS = (
    (("also mapped writable",), "untracked_sharer"),
    (("forked from", "a child of pid"), "fork"),
    (("joined", "attached late", "attached after"), "attached_late"),
    (("exited", "exec"), "exit_exec"),
    (("refused", "cannot be tracked"), "refused"),
    (("new writable mapping", "remapped", "unmapped", "left memory", "zapped", "replaced"),
     "new_mapping"),
)


def reason_class(reasons: Iterable[str]) -> str:
    """The ``reason`` label for the conservative pages of one collect: the class of its
    reasons when they agree, "mixed" otherwise ("other" for an unknown text)."""
    classes = set()
    for r in reasons:
        for words, cls in _REASON_WORDS:
            if any(w in r for w in words):
                classes.add(cls)
                break
        else:
            classes.add("other")
    if not classes:
        return "other"
    return classes.pop() if len(classes) == 1 else "mixed"


@dataclass(frozen=True)
class TargetSpec:
    """One ``--pid``, ``--cgroup`` or ``--match``. ``name`` is the ``target`` label."""

    kind: str  #: "pid", "cgroup" or "match"
    value: str  #: the pid, the cgroup directory, or the regular expression
    name: str

    @property
    def pid(self) -> int:
        return int(self.value)


def _cgroup_name(path: str) -> str:
    """A cgroup directory as its path below the cgroup2 mount: "system.slice/x.service"."""
    for line in _read("/proc/self/mountinfo").splitlines():
        f = line.split()
        sep = f.index("-") if "-" in f else -1
        if sep > 0 and f[sep + 1] == "cgroup2" and (path + "/").startswith(f[4] + "/"):
            return path[len(f[4]):].strip("/") or "/"
    return path


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def parse_target(kind: str, value: str) -> TargetSpec:
    """Check one target spec (raises :class:`writewatch.InvalidTarget`, one line)."""
    if kind == "pid":
        try:
            pid = int(value)
        except ValueError:
            pid = 0
        if pid <= 0:
            raise errors.InvalidTarget(f"--pid {value}: not a process id",
                                       hint="give a PID > 0")
        return TargetSpec("pid", str(pid), f"pid:{pid}")
    if kind == "cgroup":
        from ..kernel import procfs
        path = procfs.cgroup_dir(os.fspath(value))
        return TargetSpec("cgroup", path, f"cgroup:{_cgroup_name(path)}")
    if kind == "match":
        try:
            re.compile(value)
        except re.error as exc:
            raise errors.InvalidTarget(f"--match {value!r}: not a regular expression ({exc})",
                                       hint="a Python re pattern, e.g. 'postgres: .*'") \
                from None
        return TargetSpec("match", value, f"match:{value}")
    raise errors.InvalidTarget(f"unknown target kind {kind!r}")


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").strip()


def _pte_bytes(pid: int) -> int | None:
    """VmPTE of /proc/PID/status (page-table memory of the process, kB in the file;
    fs/proc/task_mmu.c task_mem), or None when the process is gone."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmPTE:"):
            return int(line.split()[1]) * 1024
    return None


@dataclass
class ProcStats:
    """One tracked process's counters and the gauges of its last interval."""

    pid: int
    comm: str
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    conservative: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0  #: bytes/s over the last interval
    working_set: int = 0  #: bytes written in the window
    armed: int = 0  #: bytes of writable mappings registered for tracking
    pte: int = 0  #: page-table bytes now (VmPTE)
    arming_pte: int | None = None  #: VmPTE after attach minus before, when measured
    window: deque[Pages] = field(default_factory=deque, repr=False)


class Target:
    """The trackers of one spec and their counters, updated by :meth:`step` once per
    interval (by the exporter's one sampling thread; scrapes read :meth:`snapshot`)."""

    def __init__(self, spec: TargetSpec, *, follow_forks: bool, window: int, retry: float,
                 attach: Callable[..., Any] | None = None) -> None:
        import writewatch
        self.spec = spec
        self.follow_forks = follow_forks
        self.window = window
        self.retry = retry
        self._attach = attach or writewatch.attach
        self.trackers: dict[int, Any] = {}  # root pid at attach -> ProcessTracker
        self._last_t: dict[int, float] = {}
        self.procs: dict[int, ProcStats] = {}
        self.state = "starting"  #: "up", "waiting", "failed", "exited"
        self.detail = ""
        self.collects = 0
        self.errors: dict[str, int] = {}
        self.tree_written = 0  #: pages, a page of shared memory counted once per tree
        self.tree_rate = 0.0
        self.forks = 0
        self.exits = 0
        self.durations: list[float] = []  #: collect seconds since the last snapshot
        self._next_attach = 0.0
        self._refused: dict[int, float] = {}  # match targets: pid -> when to retry

    # -- state ------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            level = logging.INFO if state == "up" else logging.WARNING
            log.log(level, "target %s: %s%s", self.spec.name, state,
                    f" ({detail})" if detail else "")
        self.state, self.detail = state, detail

    def _error(self, exc: BaseException, what: str) -> None:
        kind = next((k for k in ERRORS if any(c.__name__ == k for c in type(exc).__mro__)),
                    "WriteWatchError")
        self.errors[kind] = self.errors.get(kind, 0) + 1
        log.warning("target %s: %s: %s", self.spec.name, what, exc)

    @property
    def tracked(self) -> set[int]:
        return {p for t in self.trackers.values() for p in t.processes}

    # -- attaching --------------------------------------------------------------------------
    def _attach_one(self, pid: int | None) -> Any:
        pids = [pid] if pid is not None else []
        before = {p: _pte_bytes(p) for p in pids}
        kw: dict[str, Any] = {"tree": self.follow_forks, "follow_forks": self.follow_forks}
        if self.spec.kind == "cgroup":
            tr = self._attach(None, cgroup=self.spec.value, follow_forks=self.follow_forks)
        else:
            tr = self._attach(pid, **kw)
        now = time.monotonic()
        for p in tr.processes:
            st = self.procs.setdefault(p, ProcStats(p, _comm(p)))
            after = _pte_bytes(p)
            if before.get(p) is not None and after is not None:
                st.arming_pte = max(0, after - before[p])  # type: ignore[operator]
        self.trackers[tr.pid] = tr
        self._last_t[tr.pid] = now
        return tr

    def resolve(self, now: float, others: set[int]) -> None:
        """Attach what should be tracked and is not (due retries only). ``others``: pids
        tracked by other targets (never attached twice)."""
        if self.spec.kind == "match":
            self._resolve_match(now, others)
            return
        if self.trackers or self.state == "exited" or now < self._next_attach:
            return
        pid = self.spec.pid if self.spec.kind == "pid" else None
        if pid is not None and pid in others:
            self._set_state("waiting", f"pid {pid} is tracked by another target")
            self._next_attach = now + self.retry
            return
        try:
            self._attach_one(pid)
        except errors.NoSuchProcess as exc:
            if self.spec.kind == "pid":
                self._error(exc, "cannot attach")
                self._set_state("exited", str(exc))
                return
            self._set_state("waiting", str(exc))
        except errors.InvalidTarget as exc:
            if self.spec.kind == "cgroup" and "has no process" in str(exc):
                self._set_state("waiting", "the cgroup has no process")
                return  # looked at again at the next round: a joining process is not late
            else:
                self._error(exc, "cannot attach")
                self._set_state("failed", str(exc))
        except errors.WriteWatchError as exc:
            self._error(exc, "cannot attach")
            self._set_state("failed", str(exc))
        else:
            self._set_state("up")
            return
        self._next_attach = now + self.retry

    def _resolve_match(self, now: float, others: set[int]) -> None:
        pat = re.compile(self.spec.value)
        mine = _ancestors(os.getpid())  # this process and the ones that started it
        tracked = self.tracked | others
        for pid in _pids():
            if pid in mine or pid in tracked or self._refused.get(pid, 0) > now:
                continue
            cmd = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
            if not cmd or not pat.search(cmd):
                continue
            if self.follow_forks and _ppid(pid) in tracked:
                continue  # a fork of a tracked process: its tracker takes it over
            try:
                tr = self._attach_one(pid)
            except errors.NoSuchProcess:
                continue
            except errors.WriteWatchError as exc:
                self._error(exc, f"cannot attach pid {pid}")
                self._refused[pid] = now + self.retry
                continue
            log.info("target %s: attached pid %d (%s)", self.spec.name, pid, _comm(pid))
            tracked |= set(tr.processes)
        self._refused = {p: t for p, t in self._refused.items() if t > now}
        if self.trackers:
            self._set_state("up")
        else:
            self._set_state("waiting", "no process matches")

    # -- collecting -------------------------------------------------------------------------
    def step(self, now: float, others: set[int]) -> None:
        """One interval: attach what is due, collect every tracker, update the counters."""
        self.resolve(now, others)
        self.tree_rate = 0.0
        for root in list(self.trackers):
            self._collect(root)
        if self.spec.kind != "match" and not self.trackers and self.state == "up":
            self._set_state("waiting")

    def _collect(self, root: int) -> None:
        tr = self.trackers[root]
        t0 = time.perf_counter()
        try:
            tr.collect()
        except errors.NoSuchProcess as exc:
            self._drop(root, "exited" if self.spec.kind == "pid" else "waiting", str(exc))
            return
        except errors.WriteWatchError as exc:
            self._error(exc, "collect failed")
            self._drop(root, "failed", str(exc))
            self._next_attach = time.monotonic() + self.retry
            return
        finally:
            self.durations.append(time.perf_counter() - t0)
        self.collects += 1
        now = time.monotonic()
        dt = max(now - self._last_t.get(root, now), 1e-9)
        self._last_t[root] = now
        self._account(tr, dt)

    def _drop(self, root: int, state: str, detail: str) -> None:
        tr = self.trackers.pop(root)
        self._last_t.pop(root, None)
        gone = set(tr.processes) | {root}
        try:
            tr.close()
        except errors.WriteWatchError as exc:
            self._error(exc, "close failed")
        for p in gone:
            if p in self.procs:
                self.procs.pop(p)
                self.exits += 1
        if not self.trackers:
            self.tree_rate = 0.0
            self._set_state(state, detail)

    def _account(self, tr: Any, dt: float) -> None:
        info = tr.last
        ps = tr.page_size
        per = info.by_process() or {tr.pid: info.written}
        cons = info.conservative_by_process() or {tr.pid: info.conservative}
        cls = reason_class(info.reasons)
        maps = dict(info.member_mappings)
        self.forks += len(info.forked)
        self.tree_written += info.union_pages or len(info.written)
        self.tree_rate += (info.union_pages or len(info.written)) * ps / dt
        for pid in info.exited:
            if self.procs.pop(pid, None) is not None:
                self.exits += 1
        for pid, pages in per.items():
            if pid in info.exited:
                continue
            st = self.procs.get(pid)
            if st is None:
                st = self.procs[pid] = ProcStats(pid, _comm(pid))
            counted = 0
            for m, n in info.by_mapping(None if pid == tr.pid else pid):
                st.written[mapping_kind(m.path, m.perms)] += n
                counted += n
            st.written["other"] += len(pages) - counted
            c = cons.get(pid)
            if c is not None and len(c):
                st.conservative[cls] = st.conservative.get(cls, 0) + len(c)
            st.rate = len(pages) * ps / dt
            st.window.append(pages)
            while len(st.window) > self.window:
                st.window.popleft()
            st.working_set = _union_bytes(st.window, ps)
            st.armed = sum(m.end - m.start for m in maps.get(pid, ()))
            st.pte = _pte_bytes(pid) or 0

    def close(self) -> None:
        """Detach everything (the processes go on, untracked)."""
        for root in list(self.trackers):
            tr = self.trackers.pop(root)
            try:
                tr.close()
            except errors.WriteWatchError as exc:
                log.warning("target %s: close failed: %s", self.spec.name, exc)


def _union_bytes(window: Iterable[Pages], ps: int) -> int:
    arrays = [p.ranges for p in window if len(p)]
    if not arrays:
        return 0
    return Pages.from_kernel(np.concatenate(arrays), ps).nbytes


def _pids() -> list[int]:
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit())


def _ppid(pid: int) -> int:
    st = _read(f"/proc/{pid}/stat")
    try:
        return int(st[st.rindex(")") + 2:].split()[1])
    except (ValueError, IndexError):
        return 0


def _ancestors(pid: int) -> set[int]:
    """``pid`` and its ancestors up to init (their command lines name the exporter's
    arguments, the regex included: a ``--match`` must not attach them)."""
    out: set[int] = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        pid = _ppid(pid)
    return out
