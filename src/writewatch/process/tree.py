"""Layer 4: tracking a program made of processes. :class:`ProcessTracker`, :func:`attach`.

A tracker holds one :class:`~.member.Member` per tracked process (the root first). A collect
collects every member in its own address space, then joins them through the memory they
share (:mod:`.shared`): a page written by any member into a shared object is reported under
every tracked mapping of it. ``collect()`` returns the root's pages; ``last.by_process()``
every member's, by the same rule.

Forks. With ``follow_forks`` each member's userfaultfd is negotiated with
``UFFD_FEATURE_EVENT_FORK`` (it needs CAP_SYS_PTRACE in this process, fs/userfaultfd.c
userfaultfd_api) and a :class:`~.forks.ForkWatcher` reads the events: a child is tracked
from its first instruction. Without the capability (or with another backend) children are
found at each collect in /proc/PID/task/*/children and attached then: what they wrote into
shared memory before is unknown, so their shared mappings are reported whole once. Without
``follow_forks`` children are not tracked; a fork is still noticed (through the event, or
the children list) and the shared memory it inherited is reported whole, once, and at every
collect while it maps it (it is a sharer outside the tracked set).

What no page table shows is reported conservatively, with a reason naming the processes:
writes of a process outside the tracked set that maps a tracked object writable and shared
(found at arm and at each collect), writes a member made after its last collect and before it
exited or exec'd (its mm is gone with them), and writes of a child that came and went
unseen between two collects (its parent's count of reaped children's faults grew).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, KernelCalls, procfs
from ..kernel import ptrace as P
from ..pages import Pages
from ..tracker import CollectInfo, Tracker, TrackerStats
from .forks import Forked, ForkWatcher, mm_alive
from .mappings import MappingInfo, by_mapping
from .member import Member, MemberCollect, check_process_options, process_backend
from .shared import (
    SharedWrites,
    SharerScan,
    View,
    object_kinds,
    object_pages,
    to_object,
    unmapped_views,
    views,
)

__all__ = ["ProcessCollectInfo", "ProcessTracker", "attach"]

CAP_SYS_PTRACE = 19


@dataclass(frozen=True)
class ProcessCollectInfo(CollectInfo):
    """Details of one collect of a :class:`ProcessTracker` (of its root process unless said
    otherwise)."""

    written: Pages | None = None  #: the pages returned by the collect
    mappings: tuple[MappingInfo, ...] = ()  #: the root's mappings at this collect
    new: tuple[MappingInfo, ...] = ()  #: writable mappings armed at this collect
    removed: tuple[MappingInfo, ...] = ()  #: tracked mappings gone since the last collect
    moved: tuple[tuple[MappingInfo, MappingInfo], ...] = ()  #: (old, new) pairs: mremap
    refused: tuple[tuple[MappingInfo, str], ...] = ()  #: ranges the kernel would not arm
    exec: bool = False  #: the root exec'd a new program since the last collect
    #: processes that exited since the last collect (the root too: then the next collect
    #: raises NoSuchProcess)
    exited: tuple[int, ...] = ()
    forked: tuple[int, ...] = ()  #: children forked by tracked processes since the last one
    execd: tuple[int, ...] = ()  #: tracked processes that exec'd since the last collect
    processes: tuple[int, ...] = ()  #: the processes tracked after this collect
    union_pages: int = 0  #: pages written in the whole tree, a shared page counted once
    #: processes outside the tracked set that map tracked shared memory writable now (their
    #: writes there are reported conservatively: no page table of the tree shows them)
    untracked: tuple[int, ...] = ()
    per_process: tuple[tuple[int, Pages], ...] = field(default=(), repr=False)
    per_process_conservative: tuple[tuple[int, Pages], ...] = field(default=(), repr=False)
    member_mappings: tuple[tuple[int, tuple[MappingInfo, ...]], ...] = field(default=(),
                                                                            repr=False)

    @property
    def gone(self) -> bool:
        """The root's memory is gone (it exited): nothing more can be collected."""
        return bool(self.processes == () and self.exited)

    @property
    def union_bytes(self) -> int:
        return self.union_pages * (self.written.page_size if self.written is not None
                                   else 4096)

    def by_process(self) -> dict[int, Pages]:
        """Pages written in each tracked process's own address space at this collect,
        whoever wrote them (shared memory: any member)."""
        return dict(self.per_process)

    def conservative_by_process(self) -> dict[int, Pages]:
        return dict(self.per_process_conservative)

    def by_mapping(self, pid: int | None = None) -> list[tuple[MappingInfo, int]]:
        """Pages written per mapping at this collect (mappings with writes only), of the root
        or of process ``pid``."""
        if pid is None:
            return list(by_mapping(self.written, self.mappings))
        maps = dict(self.member_mappings).get(pid, ())
        return list(by_mapping(dict(self.per_process).get(pid), maps))


def _has_cap(cap: int) -> bool:
    try:
        status = procfs.parse_status(procfs.read_bytes("/proc/self/status"))
        return bool(int(status.get("CapEff", "0"), 16) >> cap & 1)
    except errors.WriteWatchError:
        return False


class _Tree:
    """The members and what changes between collects: the bookkeeping behind
    :class:`ProcessTracker`, separate from the result assembly."""

    def __init__(self, kernel: KernelCalls, backend: str, options: dict[str, Any],
                 follow_forks: bool, reattach_on_exec: bool) -> None:
        self.kernel = kernel
        self.backend = process_backend(backend, kernel)
        check_process_options(self.backend, options)
        self.options = options
        self.follow_forks = follow_forks
        self.reattach_on_exec = reattach_on_exec
        self.members: dict[int, Member] = {}
        #: "events" (EVENT_FORK), "polling" (children lists at each collect)
        self.fork_mode = "events" if self.backend == "uffd-async" and \
            _has_cap(CAP_SYS_PTRACE) else "polling"
        self.events = int(U.UffdFeature.EVENT_FORK) if self.fork_mode == "events" else 0
        self.watcher = ForkWatcher(kernel.page_size, follow=follow_forks) \
            if self.fork_mode == "events" else None
        #: children seen (tracked or not), per parent
        self.children: dict[int, set[int]] = {}
        #: children that may have been reaped since the last poll, per parent: alive then,
        #: or known since (a reaped child's faults are added to its parent's cminflt)
        self.recent: dict[int, set[int]] = {}
        self.cminflt: dict[int, int] = {}
        self.untracked_children: dict[int, int] = {}  # child -> parent, not followed

    def add(self, pid: int, *, launch_go: int | None = None, late: str | None = None,
            process: Any = None) -> Member:
        m = Member(pid, self.kernel, self.backend, self.options, events=self.events)
        m.reattach_on_exec = self.reattach_on_exec
        m.attach(launch_go)
        m.whole_once = late
        self._started(m)
        return m

    def inherit(self, f: Forked, parent: Member) -> Member:
        assert f.child is not None and parent.backend is not None
        m = Member(f.child, self.kernel, self.backend, self.options, events=self.events)
        m.reattach_on_exec = self.reattach_on_exec
        m.inherit(f.ufd, list(parent.backend.spans), parent.maps, parent.refused_)
        m.children_at_arm = set()
        self._started(m, watch=False)  # the watcher watches a forked child by itself
        return m

    def _started(self, m: Member, watch: bool = True) -> None:
        self.members[m.pid] = m
        self.children[m.pid] = set(m.children_at_arm)
        self.recent[m.pid] = set(m.children_at_arm)
        st = procfs.read_stat(m.pid)
        self.cminflt[m.pid] = st.cminflt if st else 0
        if watch and self.watcher is not None and m.backend is not None:
            self.watcher.watch(m.backend.uffd, m.pid)  # type: ignore[attr-defined]

    def settle_forks(self) -> None:
        if self.watcher is not None:
            self.watcher.settle()

    def forked_from(self, pid: int) -> bool:
        """Whether ``pid`` is a child the fork watcher announced (it is being taken over)."""
        if self.watcher is None:
            return False
        return any(pid in self.watcher.known(p) for p in list(self.members))

    def drop(self, pid: int) -> None:
        m = self.members.pop(pid, None)
        if self.watcher is not None:
            self.watcher.unwatch(pid)
        if m is not None:
            with contextlib.suppress(Exception):
                m.close()

    def rewatch(self, m: Member) -> None:
        """After an exec the member has a new userfaultfd."""
        if self.watcher is not None and m.backend is not None:
            self.watcher.unwatch(m.pid)
            self.watcher.watch(m.backend.uffd, m.pid)  # type: ignore[attr-defined]

    def close(self) -> None:
        for pid in list(self.members):
            m = self.members.pop(pid)
            with contextlib.suppress(Exception):
                m.close()
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def forget(self) -> None:
        """In a fork()ed child: close our copies of every descriptor, touch nothing."""
        for m in self.members.values():
            if m.backend is not None:
                m.backend.forget()
        self.members.clear()
        if self.watcher is not None:
            self.watcher.forget()
            self.watcher = None


class ProcessTracker(Tracker):
    """Tracks the writes of another process, or of a tree of processes; create with
    :func:`attach` or :func:`writewatch.launch`.

    ``collect()`` returns the pages written in the root process's address space (every
    writable mapping) since tracking started or since the last collect, whoever wrote them;
    :attr:`last` is a :class:`ProcessCollectInfo` (``by_process()``, ``forked``, ``exited``,
    ``union_pages``...).
    """

    def __init__(self, pids: Iterable[int], backend: str = "auto", *,
                 kernel: KernelCalls = LINUX, process: Any = None,
                 launch_go: int | None = None, reattach_on_exec: bool = True,
                 tree: bool = False, follow_forks: bool = False, cgroup: str | None = None,
                 late: str | None = None, **options: Any) -> None:
        """``late``: the root was armed after it started running (why, reported with every
        writable mapping at the first collect)."""
        pids = list(pids)
        self.pid = pids[0]
        self.process = process
        self.tree = tree
        self.follow_forks = follow_forks
        #: cgroup v2 directory whose processes (now and later) are tracked
        self.cgroup = cgroup
        self._tree = _Tree(kernel, backend, options, follow_forks, reattach_on_exec)
        super().__init__(kernel.page_size, self._tree.close)
        self._sharers = SharerScan()
        self._pending_notes: list[_Notes] = []
        self._views: dict[int, tuple[View, ...]] = {}
        self._views_of: dict[int, tuple[MappingInfo, ...]] = {}
        self._gone = False
        try:
            self._tree.add(self.pid, launch_go=launch_go, late=late)
            for pid in pids[1:]:
                if pid not in self._tree.members:
                    self._tree.add(pid)
            if tree:
                self._attach_descendants()
            for pid, m in self._tree.members.items():
                self._views[pid] = views(pid, m.maps)
        except BaseException:
            self._finalizer.detach()
            self._tree.close()
            raise
        self._last = ProcessCollectInfo(Pages.empty(self.page_size),
                                        processes=tuple(self._tree.members))

    def _attach_descendants(self) -> None:
        """Attach every descendant that existed when its parent was armed (later ones come
        through fork events, or are found by the next collect)."""
        todo = list(self._tree.members.values())
        while todo:
            m = todo.pop()
            for child in sorted(m.children_at_arm):
                if child in self._tree.members:
                    continue
                try:
                    todo.append(self._tree.add(child))
                except errors.NoSuchProcess:
                    continue  # exited meanwhile

    # -- properties ---------------------------------------------------------------------------
    @property
    def _root(self) -> Member:
        return self._tree.members[self.pid]

    @property
    def backend(self) -> str:
        return self._tree.backend

    @property
    def spans(self) -> tuple[Any, ...]:
        m = self._tree.members.get(self.pid)
        return tuple(m.backend.spans) if m is not None and m.backend is not None else ()

    @property
    def last(self) -> ProcessCollectInfo:
        return self._last  # type: ignore[return-value]

    @property
    def processes(self) -> tuple[int, ...]:
        """The processes tracked now (the root first)."""
        return tuple(self._tree.members)

    @property
    def fork_mode(self) -> str:
        """How forks are followed: "events" (UFFD_FEATURE_EVENT_FORK) or "polling"."""
        return self._tree.fork_mode

    @property
    def refused(self) -> tuple[tuple[MappingInfo, str], ...]:
        """Ranges of the root the kernel refused to arm, with the reason; reported whole at
        each collect."""
        m = self._tree.members.get(self.pid)
        return m.refused if m is not None else ()

    @property
    def exec_count(self) -> int:
        m = self._tree.members.get(self.pid)
        return m.exec_count if m is not None else 0

    @property
    def armed_stopped(self) -> bool:
        m = self._tree.members.get(self.pid)
        return m.armed_stopped if m is not None else False

    @property
    def stats(self) -> TrackerStats:
        s = [m.backend.stats for m in self._tree.members.values() if m.backend is not None]
        return TrackerStats(self.backend, sum(x.collects for x in s),
                            sum(x.pages_reported for x in s),
                            sum(x.pages_conservative for x in s),
                            sum(x.scan_calls for x in s), sum(x.rearms for x in s),
                            {"processes": len(self._tree.members),
                             "sharer_maps_reads": self._sharers.reads})

    def mappings(self, pid: int | None = None) -> tuple[MappingInfo, ...]:
        """The current writable (tracked or refused) mappings of the root, or of ``pid``."""
        m = self._tree.members.get(self.pid if pid is None else pid)
        if m is None:
            raise errors.NoSuchProcess(self.pid if pid is None else pid,
                                       "not a tracked process")
        return m.mappings()

    def refresh(self) -> tuple[int, ...]:
        """Take over the children forked since the last collect now (fork events read, new
        children in /proc), without collecting: the processes added. A caller that stops
        every tracked process (a snapshot) calls this until it adds none."""
        with self._lock:
            self._check_open()
            before = set(self._tree.members)
            notes = _Notes()
            self._take_forks(notes)
            if self.follow_forks:
                self._poll_children({p: MemberCollect(p, Pages.empty(self.page_size),
                                                      Pages.empty(self.page_size))
                                     for p in self._tree.members}, notes)
            self._pending_notes.append(notes)
            return tuple(p for p in self._tree.members if p not in before)

    # -- collecting ---------------------------------------------------------------------------
    def collect(self, reset: bool = True, max_pages: int = 0) -> Pages:
        from ..tracker import check_count
        max_pages = check_count("max_pages", max_pages)
        reset = bool(reset)
        with self._lock:
            self._check_open()
            if self._gone:
                raise errors.NoSuchProcess(self.pid, f"process {self.pid} has exited",
                                           hint="its last collect was already returned")
            notes = _Notes()
            for earlier in self._pending_notes:
                notes.merge(earlier)
            self._pending_notes.clear()
            self._take_forks(notes)
            if self.cgroup is not None and reset:
                self._join_cgroup(notes)
            results = self._collect_members(reset, max_pages, notes)
            if reset:
                self._poll_children(results, notes)
            info = self._assemble(results, notes)
            self._last = info
            assert info.written is not None
            return info.written

    def _take_forks(self, notes: _Notes) -> None:
        """Forks the watcher saw: followed children become members; the others are noted."""
        w = self._tree.watcher
        if w is None:
            return
        w.settle()
        for f in w.take():
            parent = self._tree.members.get(f.parent)
            if f.child is not None:
                notes.forked.append(f.child)
                self._tree.children.setdefault(f.parent, set()).add(f.child)
                self._tree.recent.setdefault(f.parent, set()).add(f.child)
            if parent is None or parent.backend is None:
                if f.ufd >= 0:
                    os.close(f.ufd)
                continue
            if f.ufd >= 0 and f.child is not None and self.follow_forks and \
                    self._take_child(f, parent, notes):
                continue
            if f.ufd >= 0:  # not followed: let its context go (its memory is unprotected)
                os.close(f.ufd)
                if f.child is not None:
                    w.unwatch(f.child)
            if f.child is not None and not f.alive:
                notes.whole(self._views.get(f.parent, ()),
                            f"pid {f.child} (forked from {f.parent}) exited before it could be "
                            "collected")
                continue
            who = f"pid {f.child}" if f.child is not None else "a child whose pid could not " \
                "be found"
            why = "not followed (follow_forks=False)" if f.child is not None and \
                not self.follow_forks else "not tracked"
            if f.child is not None:
                self._tree.untracked_children[f.child] = f.parent
            notes.whole(self._views.get(f.parent, ()),
                        f"{who} forked from {f.parent} is {why} and may write it")

    def _take_child(self, f: Forked, parent: Member, notes: _Notes) -> bool:
        """Track a followed child through the context its fork made. When its address space
        is gone already (it exec'd, or exited), that context says nothing: an exec'd child
        is attached afresh (its new program reported whole once), an exited one is noted."""
        assert f.child is not None
        child: Member | None = None
        try:
            child = self._tree.inherit(f, parent)
        except errors.NoSuchProcess:
            pass
        # alive now means it was when its pagemap was opened: it cannot exec in between
        if child is not None and mm_alive(f.ufd, self.page_size):
            self._views[child.pid] = views(child.pid, child.maps)
            return True
        self._tree.drop(f.child)  # its member, and the watcher's copy of the dead context
        st = procfs.read_stat(f.child)
        if st is None or st.state in ("Z", "X"):
            notes.whole(self._views.get(f.parent, ()),
                        f"pid {f.child} (forked from {f.parent}) exited before it could be "
                        "collected")
            return True
        notes.whole(self._views.get(f.parent, ()),
                    f"pid {f.child} (forked from {f.parent}) exec'd before it could be "
                    "collected")
        try:
            new = self._tree.add(f.child, late=(
                f"pid {f.child} exec'd a new program before it could be collected: every "
                "writable mapping of it is reported whole once"))
            self._views[f.child] = views(f.child, new.maps)
        except errors.WriteWatchError as exc:
            self._tree.untracked_children[f.child] = f.parent
            notes.reasons.append(f"pid {f.child} could not be attached after its exec: {exc}")
        return True

    def _collect_members(self, reset: bool, max_pages: int,
                         notes: _Notes) -> dict[int, MemberCollect]:
        results: dict[int, MemberCollect] = {}
        for pid, m in list(self._tree.members.items()):
            try:
                got = m.collect(reset, max_pages)
            except errors.NoSuchProcess:
                got = m._exited()
            results[pid] = got
            if got.exited or got.exec:
                # writes made after its last collect went with its mm
                what = "exited" if got.exited else "exec'd"
                notes.whole(self._views.get(pid, ()),
                            f"pid {pid} {what} before its last writes could be read")
                if got.exec:
                    self._tree.rewatch(m)
            maps = got.mappings if not got.exited else ()
            if self._views_of.get(pid) is not maps:  # the same maps: the same views
                now = views(pid, maps)
                if not (got.exited or got.exec):  # those are reported whole above
                    self._note_unmapped(pid, now, notes)
                self._views[pid] = now
                self._views_of[pid] = maps
        return results

    def _note_unmapped(self, pid: int, now: tuple[View, ...], notes: _Notes) -> None:
        """Shared memory ``pid`` wrote through a mapping it no longer has: what it wrote
        there since the last collect is unknown, so the tracked mappings of those objects
        that are left (its own, other members') report those bytes whole."""
        gone = unmapped_views(self._views.get(pid, ()), now)
        if not gone:
            return
        left = {v.key for v in now} | {v.key for p, vs in self._views.items() if p != pid
                                        for v in vs}
        notes.whole([v for v in gone if v.key in left],
                    f"pid {pid} unmapped (or made read-only) shared memory it may have "
                    "written since the last collect")

    def _poll_children(self, results: dict[int, MemberCollect], notes: _Notes) -> None:
        """Children found in /proc (no fork event for them): attached late (follow_forks,
        polling mode) or noted; and children that came and went unseen."""
        for pid in list(self._tree.members):
            if results.get(pid) is None or results[pid].exited:
                continue
            now = procfs.children(pid)
            known = self._tree.children.setdefault(pid, set())
            reaped = self._tree.recent.get(pid, set()) - now  # since the last poll only
            self._tree.recent[pid] = set(now)
            st = procfs.read_stat(pid)
            if st is not None:
                before = self._tree.cminflt.get(pid, st.cminflt)
                self._tree.cminflt[pid] = st.cminflt
                if st.cminflt != before and not reaped & (set(self._tree.members) |
                                                           set(self._tree.untracked_children)):
                    notes.whole(self._views.get(pid, ()),
                                f"a child of pid {pid} ran and exited between two collects "
                                "unseen")
            for child in sorted(now - known - set(self._tree.members)):
                if self._announced(pid, child, notes):
                    continue
                known.add(child)
                if P.same_mm(pid, child):
                    continue  # vfork / clone(CLONE_VM): it writes its parent's memory
                notes.forked.append(child)
                if self.follow_forks:
                    try:
                        new = self._tree.add(child, late=(
                            f"pid {child} (forked from {pid}) was attached after it started: "
                            "every writable mapping of it is reported whole once"))
                        self._views[child] = views(child, new.maps)
                        notes.whole(self._views[child], f"pid {child} attached late")
                        continue
                    except errors.WriteWatchError as exc:
                        why = f"could not be attached ({exc})"
                else:
                    why = "not followed (follow_forks=False)"
                self._tree.untracked_children[child] = pid
                notes.whole(self._views.get(pid, ()),
                            f"pid {child} forked from {pid} is {why} and may write it")

    def _join_cgroup(self, notes: _Notes) -> None:
        """Processes that joined the cgroup since the last collect: attached now; what they
        wrote before is unknown, so every writable mapping of them is reported whole once."""
        assert self.cgroup is not None
        for pid in sorted(procfs.cgroup_pids(self.cgroup) - set(self._tree.members)):
            if pid == os.getpid():
                continue
            try:
                self._tree.settle_forks()
                if pid in self._tree.members or self._tree.forked_from(pid):
                    continue
                m = self._tree.add(pid, late=f"pid {pid} joined {self.cgroup} after tracking "
                                   "started: every writable mapping of it is reported whole "
                                   "once")
            except errors.WriteWatchError as exc:
                notes.reasons.append(f"pid {pid} in {self.cgroup} could not be attached: {exc}")
                continue
            self._views[pid] = views(pid, m.maps)
            notes.forked.append(pid)

    def _announced(self, parent: int, child: int, notes: _Notes) -> bool:
        """Whether ``child`` came (or is coming) through a fork event: those are taken over
        from the watcher, never attached a second time."""
        w = self._tree.watcher
        if w is None:
            return False
        if child not in w.known(parent):
            w.settle()
            if child not in w.known(parent):
                return False
        self._take_forks(notes)
        return True

    def _assemble(self, results: dict[int, MemberCollect],
                  notes: _Notes) -> ProcessCollectInfo:
        ps = self.page_size
        written = SharedWrites(ps)
        cons = SharedWrites(ps)
        passed: list[str] = []  # why other members' conservative pages in shared memory
        for pid, r in results.items():
            shared_cons = False
            for v in self._views.get(pid, ()):
                if v.source:
                    written.add(v.key, to_object(r.written, v))
                    obj = to_object(r.conservative, v)
                    shared_cons |= bool(len(obj))
                    cons.add(v.key, obj)
            if shared_cons and pid != self.pid:
                passed += [f"pid {pid}: {why}" for why in r.reasons]
        for v, _why in notes.views:
            cons.add_view(v)
        all_views = [v for vs in self._views.values() for v in vs]
        objects = object_kinds(all_views)
        sharers = self._sharers.scan(objects, set(self._tree.members)) if objects else []
        by_key: dict[Any, tuple[set[int], set[int]]] = {}
        for s in sharers:
            by_key.setdefault(s.key, (set(), set()))[s.left].add(s.pid)
        reasons = [*notes.reasons, *passed]
        for key, (mapping, left) in by_key.items():
            ours = [v for v in all_views if v.key == key]
            for v in ours:
                cons.add_view(v)
            label = ours[0].path if ours else f"{key.dev}:{key.inode}"
            if mapping:
                reasons.append(f"{label}: also mapped writable by pid "
                               f"{', '.join(map(str, sorted(mapping)))}, not tracked: "
                               "reported whole")
            if left:
                reasons.append(f"{label}: pid {', '.join(map(str, sorted(left)))} mapped it "
                               "writable at the last collect and has exited, exec'd or "
                               "unmapped it since (not tracked): reported whole once")
        per: dict[int, Pages] = {}
        per_cons: dict[int, Pages] = {}
        private = 0
        for pid, r in results.items():
            vs = self._views.get(pid, ())
            extra = [a for v in vs if len(a := cons.into(v))] if cons else []
            c = Pages.from_kernel(np.concatenate([r.conservative.ranges, *extra]), ps) \
                if extra else r.conservative
            extra = [a for v in vs if len(a := written.into(v))] if written else []
            w = Pages.from_kernel(np.concatenate([r.written.ranges, c.ranges, *extra]), ps) \
                if extra or c else r.written
            per[pid], per_cons[pid] = w, c
            shared = [(v.start, v.end) for v in vs if v.shared]
            private += len(r.written - Pages(shared, ps)) if shared else len(r.written)
        union = private + object_pages(written, cons)
        root = results.get(self.pid)
        exited = tuple(p for p, r in results.items() if r.exited)
        for p in exited:
            self._tree.drop(p)
            self._views.pop(p, None)
        if root is not None and root.exited:
            if self.cgroup is not None and self._tree.members:
                # a cgroup outlives any of its processes: the oldest left is the root now
                self.pid = min(self._tree.members)
                reasons.append(f"the root process exited; pid {self.pid} is the root now")
            else:
                self._gone = True
        execd = tuple(p for p, r in results.items() if r.exec)
        rw = per.get(self.pid, Pages.empty(ps))
        rc = per_cons.get(self.pid, Pages.empty(ps))
        root_reasons = (*root.reasons, *reasons) if root is not None else tuple(reasons)
        return ProcessCollectInfo(
            rc, root_reasons, root.unmapped if root else None, written=rw,
            mappings=root.mappings if root else (),
            new=root.new if root else (), removed=root.removed if root else (),
            moved=root.moved if root else (), refused=root.refused if root else (),
            exec=bool(root and root.exec), exited=exited, forked=tuple(notes.forked), execd=execd,
            processes=() if self._gone else tuple(self._tree.members), union_pages=union,
            untracked=tuple(sorted({s.pid for s in sharers if not s.left})),
            per_process=tuple(per.items()), per_process_conservative=tuple(per_cons.items()),
            member_mappings=tuple((p, r.mappings) for p, r in results.items()))

    # -- closing ------------------------------------------------------------------------------
    def _forget_resources(self) -> None:
        self._tree.forget()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._tree.members)} process(es)"
        return f"<ProcessTracker pid={self.pid} {self.backend} {state}>"


class _Notes:
    """Views to report whole at this collect, and why."""

    def __init__(self) -> None:
        self.views: list[tuple[View, str]] = []
        self.reasons: list[str] = []
        self.forked: list[int] = []

    def merge(self, other: _Notes) -> None:
        self.views += other.views
        self.reasons += other.reasons
        self.forked += other.forked

    def whole(self, vs: Iterable[View], why: str) -> None:
        shared = [v for v in vs if v.shared]
        if not shared:
            return
        self.views.extend((v, why) for v in shared)
        labels = sorted({v.path or "anon" for v in shared})
        self.reasons.append(f"{why}: shared memory {', '.join(labels)} reported whole")


# -- attach ---------------------------------------------------------------------------------
def _check_target(pid: int) -> None:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise errors.InvalidTarget(f"{pid!r} is not a process id", hint="give a PID > 0")
    if pid == os.getpid():
        raise errors.InvalidTarget("cannot attach to this process itself",
                                   hint="use writewatch.track() for memory of this process")
    st = procfs.read_stat(pid)
    if st is None or st.state == "X":
        raise errors.NoSuchProcess(pid)
    if st.state == "Z":
        raise errors.NoSuchProcess(pid, f"process {pid} has exited (zombie)")
    if st.flags & U.PF_KTHREAD:
        raise errors.InvalidTarget(f"process {pid} is a kernel thread: it has no user memory",
                                   hint="give the PID of a user process")
    if st.state == "T":
        raise errors.InvalidTarget(f"process {pid} is stopped (job control)",
                                   hint=f"resume it first (kill -CONT {pid})")
    status = procfs.parse_status(procfs.read_bytes(f"/proc/{pid}/status", pid))
    tracer = int(status.get("TracerPid", "0") or 0)
    if tracer:
        raise errors.PermissionDenied(
            f"process {pid} is already traced by process {tracer}", op="ptrace",
            hint="a process has one tracer: detach the debugger (or strace) first")
    if status.get("Seccomp", "0") == "1":
        raise errors.Unsupported(
            f"process {pid} runs in strict seccomp mode: any system call but read, write, "
            "_exit and sigreturn kills it, so no userfaultfd can be made inside it",
            feature="syscall injection under seccomp",
            hint="track it with a backend that needs no injection (soft-dirty)")
    frozen = procfs.frozen_cgroup(pid)
    if frozen:
        raise errors.InvalidTarget(
            f"process {pid} is in a frozen cgroup ({frozen}): it cannot stop for the attach",
            hint=f"thaw it first (echo 0 > {frozen}/cgroup.freeze)")
    if status.get("Seccomp", "0") == "2":
        raise errors.Unsupported(
            f"process {pid} runs under a seccomp filter: injecting userfaultfd() could kill "
            "it", feature="syscall injection under seccomp",
            hint="track it with a backend that needs no injection (soft-dirty), or start it "
                 "with writewatch.launch()")


def attach(pid: int | Iterable[int] | None = None, backend: str = "auto", *,
           tree: bool = False, follow_forks: bool = False, cgroup: str | None = None,
           kernel: KernelCalls = LINUX, reattach_on_exec: bool = True,
           **options: Any) -> ProcessTracker:
    """Track every page other running processes write, from now on.

    Args:
        pid: a process id, or several (the first is the root: ``collect()`` returns its
            pages; ``last.by_process()`` every process's).
        tree: also attach every current descendant of each.
        follow_forks: track children forked from now on, from their first instruction
            (UFFD_FEATURE_EVENT_FORK, needs CAP_SYS_PTRACE; otherwise they are found and
            attached at the next collect).
        cgroup: a cgroup v2 directory (a container, a systemd unit): every process in it and
            in the cgroups below, and every process that joins later (attached at the next
            collect). ``pid`` may then be omitted (the oldest process is the root).
        backend: "auto", "uffd-async" or "soft-dirty".
        reattach_on_exec: when a process execs, track the new program (reported whole once).

    Each process is stopped for the injection of one ``userfaultfd`` and one ``close`` and
    for arming its writable mappings (all threads; a few ms plus about 1 ms per 100 MiB
    written), then resumes. Needs ptrace permission over it (CAP_SYS_PTRACE, or the same
    uid with kernel.yama.ptrace_scope 0): a refusal raises :class:`PermissionDenied` saying
    what is needed.

    Returns:
        A :class:`ProcessTracker` (collect / close / context manager, ``mappings()``,
        ``processes``, ``last``: per-collect mapping changes, forks, exits, per-process
        pages and conservative reports).
    """
    if pid is not None and (isinstance(pid, (str, bytes)) or
                            not isinstance(pid, (int, Iterable))):
        raise errors.InvalidTarget(f"{pid!r} is not a process id",
                                   hint="give a PID > 0, or a list of them")
    pids = [] if pid is None else [pid] if isinstance(pid, int) else list(pid)
    if cgroup is not None:
        if not isinstance(cgroup, (str, os.PathLike)):
            raise errors.InvalidTarget(f"cgroup={cgroup!r} is not a path",
                                       hint="give a cgroup v2 directory or a path in it")
        cgroup = procfs.cgroup_dir(os.fsdecode(cgroup))
        pids += sorted(procfs.cgroup_pids(cgroup) - set(pids) - {os.getpid()})
    if not pids:
        raise errors.InvalidTarget("no process given" if cgroup is None else
                                   f"cgroup {cgroup} has no process",
                                   hint="pass a PID, a list of PIDs or a cgroup")
    for p in pids:
        _check_target(p)
    return ProcessTracker(pids, backend, kernel=kernel, reattach_on_exec=reattach_on_exec,
                          tree=tree, follow_forks=follow_forks, cgroup=cgroup, **options)
