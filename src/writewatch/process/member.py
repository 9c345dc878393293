"""One tracked process: its backend, its mappings as they change, exec and exit.

Mappings change under the tracker. At each collect (one read of /proc/PID/maps):

* a writable mapping (or part of one) not armed before — a new mmap, brk growth, a thread
  stack, a library loaded, a read-only mapping made writable — is registered and armed, and
  its pages are classified by what the arming scan saw in them
  (:meth:`~writewatch.backends.uffd_async.UffdAsyncBackend.adopt`): only pages that may hold
  content written before arming are reported. Where the address range held a tracked mapping
  at the last collect (the old content is gone: munmap + mmap, MAP_FIXED), it is reported
  whole, with the reason;
* a tracked mapping that disappeared is reported in ``removed`` (and ``moved`` when a new
  mapping of the same size and file appeared: ``mremap``); one replaced or split in place is
  reported whole and re-armed by the backend;
* a range the kernel refused (another userfaultfd owns it: EBUSY, or a VMA uffd cannot
  handle) is listed in ``refused`` and reported whole at every collect;
* ``exec`` frees the old mm (the pagemap descriptor then reads 0 bytes): the collect reports
  it, injects again into the new program and reports every mapping of it whole;
* when the process has exited, one last collect says so (``exited``) and returns nothing: the
  memory is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as E
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import errors
from ..backends import REGISTRY, Backend, Collected, Span
from ..features import features
from ..kernel import LINUX, KernelCalls, _sys, procfs
from ..kernel import inject as _inject
from ..pages import Pages
from .mappings import MappingInfo, contains, overlaps, trackable

__all__ = ["Member", "MemberCollect"]

_EMPTY = np.empty((0, 2), np.uint64)


@dataclass(frozen=True)
class MemberCollect:
    """What one collect of one process found, in its own address space."""

    pid: int
    written: Pages
    conservative: Pages
    reasons: tuple[str, ...] = ()
    mappings: tuple[MappingInfo, ...] = ()
    new: tuple[MappingInfo, ...] = ()
    removed: tuple[MappingInfo, ...] = ()
    moved: tuple[tuple[MappingInfo, MappingInfo], ...] = ()
    refused: tuple[tuple[MappingInfo, str], ...] = ()
    exec: bool = False
    exited: bool = False
    unmapped: Pages | None = None  #: tracked pages not mapped any more


def _dup_cloexec(fd: int) -> int:
    return int(_sys.os_call("F_DUPFD_CLOEXEC", fcntl.fcntl, fd, fcntl.F_DUPFD_CLOEXEC, 0))


def check_process_options(name: str, options: dict[str, Any]) -> None:
    """Refuse backend options that backend ``name`` does not take for another process (the
    descriptor and its events are the process tracker's own)."""
    from ..tracker import check_options
    check_options(REGISTRY[name], options,
                  frozenset({"uffd", "uffd_negotiated", "events"}) if name == "uffd-async"
                  else frozenset())


def process_backend(name: str, kernel: KernelCalls = LINUX) -> str:
    """The backend "auto" means for another process: uffd-wp-sync tracks its own process
    only, so uffd-async, then soft-dirty (which needs no descriptor inside the target)."""
    if name != "auto" and name not in REGISTRY:
        raise errors.InvalidTarget(f"unknown backend {name!r}",
                                   hint='use "auto", "uffd-async" or "soft-dirty"')
    if name not in ("auto", "uffd-async", "soft-dirty"):
        raise errors.InvalidTarget(
            f"backend={name!r} cannot track another process",
            hint='use "auto", "uffd-async" or "soft-dirty" (uffd-wp-sync tracks only the '
                 "process it runs in)")
    if name != "auto":
        return name
    f = features(kernel)
    name = next((b for b in ("uffd-async", "soft-dirty") if f.backends[b].usable), "")
    if not name:
        raise errors.Unsupported(
            "no mechanism here can track another process",
            feature="UFFD_FEATURE_WP_ASYNC", since="6.7",
            hint=f"uffd-async: {f.backends['uffd-async'].detail}; soft-dirty: "
                 f"{f.backends['soft-dirty'].detail}")
    return name


class Member:
    """The tracking of one process: a backend over its address space, kept in step with its
    mappings. Made by :meth:`attach` (injection), :meth:`inherit` (a fork followed through
    EVENT_FORK) or by :func:`writewatch.launch`."""

    def __init__(self, pid: int, kernel: KernelCalls, backend: str, options: dict[str, Any],
                 *, events: int = 0) -> None:
        self.pid = pid
        self.kernel = kernel
        self.backend_name = backend
        self.options = options
        self.events = events  #: UFFD_FEATURE_EVENT_* negotiated on its userfaultfd
        self.backend: Backend | None = None
        self.refused_: dict[tuple[int, int], tuple[MappingInfo, str]] = {}
        self.busy: set[tuple[int, int]] = set()  # refused because another uffd owns them
        self.exec_count = 0
        self.gone = False
        #: whether arming finished while the target was stopped (False: it resumed first)
        self.armed_stopped = True
        #: set when writes may have happened before arming: the next collect reports every
        #: writable mapping whole, with this reason
        self.whole_once: str | None = None
        self.reattach_on_exec = True
        self.maps: tuple[MappingInfo, ...] = ()
        #: its children when it was armed (stopped): forks after that raise fork events
        self.children_at_arm: set[int] = set()
        self._raw: tuple[procfs.Mapping, ...] | None = None  # maps at the last collect

    # -- starting ----------------------------------------------------------------------------
    def attach(self, launch_go: int | None = None) -> None:
        """Make a backend for the process and arm every writable mapping (injecting a
        userfaultfd for uffd-async)."""
        name = process_backend(self.backend_name, self.kernel)
        feat = features(self.kernel).backends.get(name)
        if feat is not None and not feat.usable:
            raise errors.Unsupported(f"the {name} backend is not usable here: {feat.detail}",
                                     feature=name, hint=feat.fix or "use backend='auto'")
        if name != "uffd-async":
            # backends that need no descriptor inside the target (soft-dirty) plug in here
            from ..tracker import make_backend
            backend = make_backend(name, self.pid, self.kernel, **self.options)
            try:
                self._arm_all(backend)
            except BaseException:
                backend.close()
                raise
            self.backend = backend
            self.children_at_arm = procfs.children(self.pid)
            return
        from ..backends.uffd_async import UffdAsyncBackend
        made: list[Backend] = []

        def arm(fd: int) -> None:
            backend = UffdAsyncBackend(self.pid, self.kernel, uffd=_dup_cloexec(fd),
                                       events=self.events, **self.options)
            made.append(backend)
            self._arm_all(backend)
            self.children_at_arm = procfs.children(self.pid)  # it cannot fork while stopped

        try:
            res = _inject.steal_userfaultfd(self.pid, while_stopped=arm, launch_go=launch_go)
        except BaseException:
            for b in made:
                b.close()
            raise
        _sys.close(res.fd)
        self.armed_stopped = res.armed_stopped
        self.backend = made[0]

    def inherit(self, ufd: int, spans: Sequence[Span], maps_of_parent: Sequence[MappingInfo],
                refused: dict[tuple[int, int], tuple[MappingInfo, str]]) -> None:
        """Take over a forked child's userfaultfd context (EVENT_FORK): its registration and
        uffd-wp bits are the parent's as of the fork, nothing needs arming."""
        from ..backends.uffd_async import UffdAsyncBackend
        backend = UffdAsyncBackend(self.pid, self.kernel, uffd=ufd, uffd_negotiated=True,
                                   **self.options)
        try:
            backend.inherit(spans)
        except BaseException:
            backend.close()
            raise
        self.backend = backend
        self.maps = tuple(maps_of_parent)
        self.refused_ = dict(refused)

    def _arm_all(self, backend: Backend) -> None:
        self.refused_.clear()
        self.busy.clear()
        raw = self.kernel.read_maps(self.pid)
        maps = tuple(MappingInfo.of(m) for m in raw)
        with backend.layout(raw):
            for m in maps:
                if trackable(m):
                    self._arm(backend, m, m.start, m.end)
        self.maps = maps
        if not backend.spans and self.refused_ and set(self.refused_) == self.busy:
            raise errors.AlreadyTracked(
                f"every writable mapping of process {self.pid} is owned by another "
                f"userfaultfd{_uffd_holders(self.pid)}: it is tracked already (another "
                "writewatch, or the program itself)", op="UFFDIO_REGISTER",
                hint="stop the other tracker first; a process can be tracked by one at a "
                     "time")

    def _arm(self, backend: Backend, info: MappingInfo, start: int, end: int,
             adopt: bool = False, again: bool = True) -> Collected | None:
        """Register and arm ``[start, end)`` (part of mapping ``info``). With ``adopt`` (and a
        backend that can), the result says which pages may hold writes from before arming;
        otherwise every page of it may. On refusal record it in ``refused`` (reported whole
        at every collect) and return None."""
        span = Span(start, end, info.label)
        try:
            adopt_fn = getattr(backend, "adopt", None) if adopt else None
            if adopt_fn is None:
                backend.add(span)
                whole = np.array([[start, end]], np.uint64)
                return Collected(whole, whole)
            got = adopt_fn(span, shared=info.shared)
            return Collected(got.prior, got.conservative)
        except errors.AlreadyTracked as exc:
            why = f"another userfaultfd owns this range (the target's own, or another " \
                  f"tracker's): {exc}"
            self.busy.add((start, end))
        except (errors.Refused, errors.KernelError, errors.Unsupported) as exc:
            if again and getattr(exc, "errno", None) in (E.EINVAL, E.ENOMEM):
                now = self._writable_now(start, end)
                if now != [(start, end)]:
                    # the target changed its maps since they were read (a brk or munmap
                    # racing with UFFDIO_REGISTER): arm what is mapped there now
                    return self._arm_parts(backend, info, now, adopt)
            why = str(exc)
        self.refused_[(start, end)] = (info, why)
        return None

    def _writable_now(self, start: int, end: int) -> list[tuple[int, int]]:
        maps = [m for m in self.kernel.read_maps(self.pid) if trackable(MappingInfo.of(m))]
        return procfs.coverage(maps, start, end)

    def _arm_parts(self, backend: Backend, info: MappingInfo, parts: list[tuple[int, int]],
                   adopt: bool) -> Collected | None:
        got = [self._arm(backend, info, lo, hi, adopt, again=False) for lo, hi in parts]
        done = [g for g in got if g is not None]
        if parts and not done:
            return None
        return Collected(np.concatenate([g.written for g in done] or [_EMPTY]),
                         np.concatenate([g.conservative for g in done] or [_EMPTY]))

    # -- state ---------------------------------------------------------------------------------
    @property
    def refused(self) -> tuple[tuple[MappingInfo, str], ...]:
        return tuple(self.refused_.values())

    def mm_state(self) -> str:
        """"alive" (same mm), "exec" (the mm we armed is gone, the process lives) or
        "exited". The pagemap descriptor holds the mm it was opened on; once that mm has no
        users its reads return 0 bytes (fs/proc/task_mmu.c pagemap_read: mmget_not_zero)."""
        fd = getattr(self.backend, "pagemap", None)
        if fd is not None:
            try:
                alive = len(os.pread(fd, 8, 0)) == 8
            except OSError:
                alive = False
            if alive:
                return "alive"
        st = procfs.read_stat(self.pid)
        if st is None or st.state in ("Z", "X"):
            return "exited"
        return "exec" if fd is not None else "alive"

    def mappings(self) -> tuple[MappingInfo, ...]:
        """The process's writable (tracked or refused) mappings, labelled."""
        return tuple(MappingInfo.of(m) for m in self.kernel.read_maps(self.pid) if trackable(m))

    # -- collecting ----------------------------------------------------------------------------
    def collect(self, reset: bool, max_pages: int) -> MemberCollect:
        ps = self.kernel.page_size
        if self.gone:
            raise errors.NoSuchProcess(self.pid, f"process {self.pid} has exited",
                                       hint="its last collect was already returned")
        if (gone := self._if_gone()) is not None:
            return gone
        try:
            got = self._collect(reset, max_pages)
        except (errors.NoSuchProcess, errors.KernelError, errors.InvalidTarget):
            # the mm went away during the collect: PAGEMAP_SCAN fails with ESRCH once the
            # mm has no users (fs/proc/task_mmu.c do_pagemap_scan: mmget_not_zero), which
            # an exec causes as well as an exit
            if (gone := self._if_gone()) is not None:
                return gone
            raise
        # an exec between the check above and the scan leaves a collect of the new program's
        # maps made on the old mm's descriptors (UFFDIO_REGISTER: ENOMEM): it says nothing
        if (gone := self._if_gone()) is not None:
            return gone
        if self.whole_once and reset:
            whole = Pages([(m.start, m.end) for m in got.mappings if trackable(m)], ps)
            got = dataclasses.replace(got, written=got.written | whole,
                                      conservative=got.conservative | whole,
                                      reasons=(*got.reasons, self.whole_once))
            self.whole_once = None
        return got

    def _if_gone(self) -> MemberCollect | None:
        """None while the mm that was armed lives; else what its end means: the process
        exited, or exec'd a new program (re-attached, or NoSuchProcess)."""
        state = self.mm_state()
        if state == "alive":
            return None
        if state == "exited":
            return self._exited()
        if not self.reattach_on_exec:
            self.gone = True
            raise errors.NoSuchProcess(self.pid, f"process {self.pid} exec'd a new "
                                       "program; the memory tracked is gone",
                                       hint="attach again, or keep reattach_on_exec")
        return self._reattach()

    def _exited(self) -> MemberCollect:
        ps = self.kernel.page_size
        self.gone = True
        return MemberCollect(self.pid, Pages.empty(ps), Pages.empty(ps),
                             (f"process {self.pid} exited",), mappings=self.maps, exited=True)

    def _reattach(self) -> MemberCollect:
        old = self.backend
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        self.backend = None
        self.exec_count += 1
        self.attach()
        ps = self.kernel.page_size
        whole = Pages([(m.start, m.end) for m in self.maps if trackable(m)], ps)
        why = (f"process {self.pid} exec'd a new program: every writable mapping of it is "
               "reported whole (written before it could be armed)")
        return MemberCollect(self.pid, whole, whole, (why,), mappings=self.maps,
                             new=tuple(m for m in self.maps if trackable(m)), exec=True,
                             refused=self.refused)

    def _collect(self, reset: bool, max_pages: int) -> MemberCollect:
        ps = self.kernel.page_size
        backend = self.backend
        assert backend is not None
        raw = self.kernel.read_maps(self.pid)
        if raw == self._raw and not self.refused_:
            # the maps are as at the last collect (parsed lines are cached, so the tuples
            # compare element by element): nothing appeared or went away
            with backend.layout(raw, unchanged=True):
                got = backend.collect(reset=reset, max_pages=max_pages)
            written = Pages._trusted(got.written, ps) if got.sorted and not len(
                got.conservative) else Pages.from_kernel(got.written, ps)
            return MemberCollect(self.pid, written, Pages.from_kernel(got.conservative, ps),
                                 got.reasons, self.maps,
                                 unmapped=None if got.unmapped is None else
                                 Pages.from_kernel(got.unmapped, ps))
        changed = raw != self._raw
        self._raw = raw if reset else None
        infos = tuple(MappingInfo.of(m) for m in raw)
        writable = [m for m in infos if trackable(m)]
        live = Pages([(m.start, m.end) for m in writable], ps)
        runs = [(int(lo), int(hi)) for lo, hi in live.ranges.tolist()]
        starts = [lo for lo, _ in runs]
        # spans whose memory is entirely gone (or no longer writable): removed
        removed: list[MappingInfo] = []
        retried: set[tuple[int, int]] = set()
        before = Pages([(s.start, s.end) for s in backend.spans] + list(self.refused_), ps)
        with backend.layout(raw):
            for s in list(backend.spans):
                if not overlaps(runs, starts, s.start, s.end):
                    removed.append(self._span_info(s))
                    if reset:
                        backend.remove(s)
            for key in list(self.refused_):
                if reset and not contains(runs, starts, *key):  # changed: retried below
                    removed.append(self.refused_.pop(key)[0])
                elif reset and changed and key not in self.busy:
                    # the maps changed since it was refused: the refusal may have come from
                    # that change (a brk or munmap racing with UFFDIO_REGISTER: EINVAL,
                    # ENOMEM), so it is tried again below (reported whole once more)
                    retried.add(key)
                    del self.refused_[key]
            covered = Pages([(s.start, s.end) for s in backend.spans] + list(self.refused_),
                            ps)
            new, cons, prior, reasons = self._arm_fresh(backend, writable, live - covered,
                                                        before, reset)
            new = [m for m in new if (m.start, m.end) not in retried]  # not new: retried
            got = backend.collect(reset=reset, max_pages=max_pages)
        for (lo, hi), (_info, why) in self.refused_.items():
            cons.append(np.array([[lo, hi]], np.uint64))
            reasons.append(f"{lo:#x}-{hi:#x} refused ({why}): reported whole")
        cons_arr = np.concatenate([got.conservative, *cons])
        written = Pages.from_kernel(np.concatenate([got.written, cons_arr, *prior]), ps)
        self.maps = infos
        gone = [np.array([[m.start, m.end]], np.uint64) for m in removed]
        if got.unmapped is not None:
            gone.append(got.unmapped)
        return MemberCollect(self.pid, written, Pages.from_kernel(cons_arr, ps),
                             (*got.reasons, *reasons), infos, tuple(new), tuple(removed),
                             _moved(removed, new), self.refused,
                             unmapped=Pages.from_kernel(np.concatenate(gone), ps) if gone
                             else None)

    def _arm_fresh(self, backend: Backend, writable: list[MappingInfo], fresh: Pages,
                   before: Pages, reset: bool
                   ) -> tuple[list[MappingInfo], list[np.ndarray], list[np.ndarray], list[str]]:
        """Arm the writable memory not tracked yet. Returns the new parts, the conservative
        ranges, the ranges with content written before arming, and the reasons."""
        new: list[MappingInfo] = []
        cons: list[np.ndarray] = []
        prior: list[np.ndarray] = []
        reasons: list[str] = []
        if not len(fresh):
            return new, cons, prior, reasons
        reused = fresh & before
        whole = 0
        for m in writable:
            for lo, hi in fresh.clip(m.start, m.end):
                new.append(m._replace(start=lo, end=hi))
                part = Pages([(lo, hi)], fresh.page_size)
                if not reset or (part & reused):
                    # a peek arms nothing; a range that held tracked memory lost its content
                    cons.append(np.array([[lo, hi]], np.uint64))
                    whole += len(part)
                    if reset:
                        self._arm(backend, m, lo, hi)
                    continue
                got = self._arm(backend, m, lo, hi, adopt=True)
                if got is None:
                    continue  # refused: reported whole below, with the refusal
                prior.append(got.written)
                if len(got.conservative):
                    cons.append(got.conservative)
                    whole += int((got.conservative[:, 1] - got.conservative[:, 0]).sum()) // \
                        fresh.page_size
        if whole:
            reasons.append(f"{len(new)} new writable mapping(s) or part(s): {whole} pages "
                           "reported whole (not armed yet, or an address range that held "
                           "tracked memory, or pages the kernel shows no content for)")
        return new, cons, prior, reasons

    @staticmethod
    def _span_info(s: Span) -> MappingInfo:
        return MappingInfo(s.start, s.end, "", 0, 0, "" if s.label == "anon" else s.label)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def _uffd_holders(pid: int) -> str:
    """", held by ..." naming the processes with userfaultfd descriptors (an error message:
    nothing says which context owns which memory, these are the candidates)."""
    found = []
    for p in procfs.pids():
        if p in (os.getpid(), pid):  # the target holds the one being injected right now
            continue
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") == "anon_inode:[userfaultfd]":
                    comm = procfs.read_setting(f"/proc/{p}/comm") or "?"
                    found.append(f"pid {p} ({comm})")
                    break
            except OSError:
                continue
    return f", held by {', '.join(found)}" if found else ""


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
