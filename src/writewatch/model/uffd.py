"""Userfaultfd contexts in the model: features, registration state, messages, and the rules
their fault, zap and arm paths follow.

:class:`WpRules` is what a uffd-wp context does in the kernel's paths. :data:`LINUX` is what
Linux does (fs/userfaultfd.c, mm/memory.c, mm/mprotect.c); a design that never existed in
Linux (the fault-time proposal, a per-VMA flag, a write-log ring) is a different set of
rules, which is the model's way of applying a kernel patch. The same rules drive the race
explorer (:mod:`writewatch.lab.races`), so a design is defined once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import _uapi as U
from ..kernel.uffd import UffdMsg
from .pte import PAGE, PAGE_SHIFT, PMD_SHIFT, Bit, Entry, nbits
from .space import AddressSpace, ModelError

if TYPE_CHECKING:
    from .vma import Vma

_NOT_WP = np.uint8(nbits(Bit.UFFD_WP))
_NOT_RW = np.uint8(nbits(Bit.RW))


@dataclass(frozen=True)
class WpRules:
    """The kernel-side behaviour of a uffd-wp context (a design's "kernel patch").

    * ``markers``: none entries get PTE_MARKER_UFFD_WP when armed and a zap or reclaim of a
      protected entry leaves one (userfaultfd_wp_use_markers, pte_install_uffd_wp_if_needed);
      ``anon_markers`` None: on anonymous memory only with WP_UNPOPULATED (Linux), or forced;
    * ``none_protected``: a none entry of an armed VMA counts as protected: a read fault maps
      the zero page with the bit, a write fault is a tracking fault (the fault-time proposal,
      the per-VMA flag); ``vma_flag``: registration sets a VMA flag (it takes part in merging);
    * ``notify_after_map``: a synchronous write fault on a protected none entry maps the page
      first and notifies afterwards (the proposal's (b)); otherwise before mapping;
    * ``discard_marker``: MADV_DONTNEED / MADV_REMOVE of a live entry leaves a marker that
      says "changed" (the proposal's "handle discarding of memory, by using a uffd-wp marker");
    * ``ring``: the fault that unprotects a page appends it to a bounded write-log ring.
    """

    markers: bool = True
    anon_markers: bool | None = None
    none_protected: bool = False
    vma_flag: bool = False
    notify_after_map: bool = False
    discard_marker: bool = False
    ring: bool = False

    @property
    def linux(self) -> bool:
        """The scan semantics of Linux apply: pte_none is unknown (reads written)."""
        return self.markers and not self.none_protected


LINUX = WpRules()


@dataclass
class Ring:
    """The write-log ring: bounded; an overflow makes the next collect walk everything."""

    capacity: int
    entries: list[int] = field(default_factory=list)
    overflowed: bool = False
    overflows: int = 0

    def append(self, addr: int) -> None:
        if len(self.entries) >= self.capacity:
            if not self.overflowed:
                self.overflows += 1
            self.overflowed = True
            return
        self.entries.append(addr)

    def extend(self, addrs: list[int]) -> None:
        room = self.capacity - len(self.entries)
        if len(addrs) > room:
            self.entries.extend(addrs[:max(room, 0)])
            if not self.overflowed:
                self.overflows += 1
            self.overflowed = True
        else:
            self.entries.extend(addrs)


#: the monitor of a synchronous context: fn(ctx, addr, content_seen, tids) is called for each
#: write-protect fault and must resolve it (unprotect) before the write proceeds
Handler = Callable[["UffdCtx", int, int, tuple[int, ...]], None]
#: the same monitor for single-thread write faults on several pages of one page table at
#: once: fn(ctx, addrs, contents_seen), the same as ``Handler`` called for each in order
PagesHandler = Callable[["UffdCtx", np.ndarray, np.ndarray], None]
#: the monitor's reader of non-cooperative events (fork, remap, remove, unmap)
EventHandler = Callable[["UffdCtx", "UffdMsg"], None]


class UffdCtx:
    """A userfaultfd context (struct userfaultfd_ctx)."""

    def __init__(self, fd: int, mm: AddressSpace, rules: WpRules = LINUX) -> None:
        self.fd = fd
        self.mm = mm
        self.rules = rules
        self.features = 0
        self.initialized = False
        self.ring: Ring | None = None
        self.handler: Handler | None = None
        self.pages_handler: PagesHandler | None = None
        self.on_event: EventHandler | None = None
        self.msgs: list[UffdMsg] = []
        self.armed = False
        self.notifications = 0
        self.async_ = False
        self.unpopulated = False
        #: contexts created for forked children (UFFD_FEATURE_EVENT_FORK), by child pid
        self.children: dict[int, UffdCtx] = {}
        #: installs a new context in the monitor's descriptor table, returns its fd (the
        #: model kernel that created this one sets it)
        self.install: Callable[[UffdCtx], int] | None = None

    def set_features(self, features: int) -> None:
        self.features = features
        self.async_ = bool(features & U.UffdFeature.WP_ASYNC)
        self.unpopulated = bool(features & (U.UffdFeature.WP_UNPOPULATED |
                                            U.UffdFeature.WP_ASYNC))

    def has(self, feature: U.UffdFeature) -> bool:
        return bool(self.features & feature)

    # -- rules ---------------------------------------------------------------------------------
    def uses_markers(self, v: Vma) -> bool:
        """userfaultfd_wp_use_markers(): non-anon always, anon with WP_UNPOPULATED."""
        r = self.rules
        if not r.markers:
            return False
        if not v.anonymous:
            return True
        return self.unpopulated if r.anon_markers is None else r.anon_markers

    def none_protected(self, v: Vma) -> bool:
        r = self.rules
        return r.none_protected and self.armed and (v.wp_start or not r.vma_flag)

    def fork_child(self, child: AddressSpace) -> UffdCtx:
        """dup_userfaultfd(): the context of a forked child, same features and rules."""
        c = UffdCtx(-1, child, self.rules)
        c.set_features(self.features)
        c.initialized, c.armed = True, self.armed
        c.handler, c.pages_handler = self.handler, self.pages_handler
        c.on_event, c.install = self.on_event, self.install
        self.children[child.pid] = c
        return c

    def fork_complete(self, child: UffdCtx) -> None:
        """dup_userfaultfd_complete(): UFFD_EVENT_FORK carries the child context's new fd."""
        child.fd = self.install(child) if self.install is not None else -1
        self.event(U.UffdEvent.FORK, child.fd)

    # -- events --------------------------------------------------------------------------------
    def event(self, event: U.UffdEvent, a: int, b: int = 0, c: int = 0) -> None:
        """A non-cooperative event (fork, remap, remove, unmap): queued for the monitor; the
        kernel blocks the task until it is read (userfaultfd_event_wait_completion), which the
        model does not need to."""
        msg = UffdMsg(event, a, b, c)
        if self.on_event is not None:
            self.on_event(self, msg)
        else:
            self.msgs.append(msg)

    def message(self, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        """A synchronous write-protect fault: the message, and the monitor resolves it."""
        self.notifications += 1
        if self.handler is None:
            self.msgs.append(UffdMsg(U.UffdEvent.PAGEFAULT,
                                  int(U.UffdPagefaultFlag.WRITE | U.UffdPagefaultFlag.WP),
                                  addr, tids[0]))
            raise ModelError(
                f"write at {addr:#x} blocks on a synchronous uffd-wp fault and no monitor is "
                "attached to the model", op="write", start=addr, end=addr + PAGE,
                hint="set UffdCtx.handler, or use async mode")
        self.handler(self, addr, seen, tids)

    def messages(self, addrs: np.ndarray, seen: np.ndarray) -> None:
        """Synchronous write-protect faults of one thread on the pages ``addrs`` of one page
        table (in order): :meth:`message` for each, in one call when the monitor takes
        them so (``pages_handler``)."""
        if self.pages_handler is None:
            for a, s in zip(addrs.tolist(), seen.tolist(), strict=True):
                self.message(a, s, (0,))
            return
        self.notifications += len(addrs)
        self.pages_handler(self, addrs, seen)

    def wp_fault(self, mm: AddressSpace, addr: int, tids: tuple[int, ...]) -> None:
        """A write hit an entry with the uffd-wp bit or a uffd-wp marker."""
        if self.async_:
            # do_wp_page / pte_marker_handle_uffd_wp: async mode resolves by clearing the bit
            self.resolve(mm, addr)
            if self.ring is not None:
                self.ring.append(addr)
            return
        self.message(addr, mm.content_page(addr), tids)

    def resolve(self, mm: AddressSpace, addr: int) -> None:
        """Unprotect one page (what the monitor's UFFDIO_WRITEPROTECT mode 0 does)."""
        k = addr >> PMD_SHIFT
        t = mm.pt.get(k)
        if t is None:
            return
        if t.huge:
            mm.split_huge(k)  # unprotecting one page of a THP splits it
        n = (addr >> 12) & 511
        if t.st[n] == Entry.MARKER:
            t.st[n] = Entry.NONE
            t.fl[n] = 0
        else:
            t.fl[n] &= _NOT_WP


def unmap_prep(vmas: list[Vma], start: int, end: int) -> None:
    """userfaultfd_unmap_prep(): one UFFD_EVENT_UNMAP per context with EVENT_UNMAP."""
    seen: set[UffdCtx] = set()
    for v in vmas:
        ctx = v.uffd
        if ctx is not None and ctx.has(U.UffdFeature.EVENT_UNMAP) and ctx not in seen:
            seen.add(ctx)
            ctx.event(U.UffdEvent.UNMAP, start, end)


def wp_range(mm: AddressSpace, v: Vma, start: int, end: int, on: bool) -> int:
    """uffd_wp_range(): protect (markers on none entries where the VMA uses them) or
    unprotect [start, end) of ``v``; returns the entries walked."""
    c = mm.c
    if not on and end - start == PAGE:
        # one page unprotected (a synchronous monitor's answer to each fault): as the walk
        # below, on one entry
        t = mm.pt.get(start >> PMD_SHIFT)
        if t is not None and not t.huge:
            c.ptl += 1
            n = (start >> PAGE_SHIFT) & 511
            if t.st[n] == Entry.MARKER:
                t.st[n] = Entry.NONE
                t.fl[n] = 0
            else:
                t.fl[n] &= _NOT_WP
            c.tlb_flushes += 1
            return 1
    markers = v.uffd is not None and v.uffd.uses_markers(v)
    walked = 0
    for k, i, j in mm.chunks(start, end):
        t = mm.pt.get(k)
        walked += 1 if t is None else j - i
        if t is None:
            if on and markers:
                t = mm.pt.alloc(k)  # change_pmd_prepare: pte_alloc for the markers
                c.ptl += 1
                c.wp_entries += j - i
                t.st[i:j] = Entry.MARKER
                t.fl[i:j] = Bit.UFFD_WP
            continue
        c.ptl += 1
        if on:
            c.wp_entries += 1 if t.huge and i == 0 and j == 512 else j - i
        if t.huge:
            if i == 0 and j == 512:
                if on:
                    t.fl[:] = (t.fl & _NOT_RW) | Bit.UFFD_WP
                else:
                    t.fl[:] &= _NOT_WP
                continue
            mm.split_huge(k)  # change_huge_pmd covers whole PMDs only
        st, fl = t.st[i:j], t.fl[i:j]
        if on:
            live = st != Entry.NONE
            fl[live] = (fl[live] & _NOT_RW) | Bit.UFFD_WP
            if markers:
                none = st == Entry.NONE
                st[none] = Entry.MARKER
                fl[none] = Bit.UFFD_WP
        else:
            fl &= _NOT_WP
            mk = st == Entry.MARKER
            st[mk] = Entry.NONE
            fl[mk] = 0
    c.tlb_flushes += 1
    return walked


__all__ = ["LINUX", "EventHandler", "Handler", "PagesHandler", "Ring", "UffdCtx", "WpRules",
           "unmap_prep", "wp_range"]
