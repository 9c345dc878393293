"""What a design is: one class, its hooks, and the helpers designs share.

A design is the pair a kernel engineer would write: the **kernel side** (how its userfaultfd
contexts behave in the fault, zap and arm paths: :attr:`Design.rules`, a
:class:`~writewatch.model.WpRules`; None for designs without a uffd context) and the **tracker
side** (what user space does: :meth:`arm`, :meth:`collect`, :meth:`fork`, through the
:class:`~writewatch.kernel.KernelCalls` seam only). Ground truth is not visible to a design.

The kernel side is declarative because two engines run it: the trace replay
(:mod:`writewatch.lab.replay`, on :class:`~writewatch.model.ModelKernel`) and the race
explorer (:mod:`writewatch.lab.races`, which enumerates the interleavings of the same rules
step by step). :attr:`Design.explore` names the tracker procedure the explorer uses for it.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

from ... import _uapi as U
from ... import errors
from ...model.kernel import ModelKernel
from ...model.profiles import Profile
from ...model.pte import PAGE
from ...model.uffd import UffdCtx, WpRules


class Host(Protocol):
    """What a design runs in (the replay's :class:`~writewatch.lab.replay.Runner`): the model
    kernel, the profile it runs, and where a synchronous design's monitor reports each
    notification (the page and the content it copied)."""

    kernel: ModelKernel
    profile: Profile

    def notify(self, addr: int, seen: int) -> None: ...

    def notify_pages(self, addrs: np.ndarray, seen: np.ndarray) -> None: ...


class Design:
    """Base class of the designs. Subclass it, set the class attributes, implement
    :meth:`arm` and :meth:`collect` (docs/model.md, "Adding a design")."""

    #: the name in tables, ``--design`` and both registries
    name: ClassVar[str]
    #: one line: what it is
    title: ClassVar[str]
    #: where it comes from (a mail of the thread, a commit)
    origin: ClassVar[str] = ""
    #: synchronous: the writer waits for the monitor, so a live snapshot is possible
    sync: ClassVar[bool] = False
    #: the kernel-side rules of the design's uffd contexts (None: it uses no userfaultfd)
    rules: ClassVar[WpRules | None] = None
    #: the UFFD_FEATURE_* flags it asks UFFDIO_API for
    features: ClassVar[int] = 0
    #: the race explorer's tracker for it: "scan" (PAGEMAP_SCAN get+WP), "softdirty"
    #: (pagemap read then clear_refs), "ring" (drain then re-protect), "handler" (a sync
    #: monitor); None: the explorer cannot run it (``explore_why`` says why)
    explore: ClassVar[str | None] = None
    explore_why: ClassVar[str] = ""

    k: ModelKernel
    r: Host
    #: duplicate notifications only the design can see (a ring's repeated entries)
    duplicates: int = 0

    # -- what the design needs --------------------------------------------------------------
    def unavailable(self, profile: Profile) -> str | None:
        """Why this design cannot run on ``profile`` (None: it can)."""
        return None

    def profile(self, profile: Profile) -> Profile:
        """The kernel this design assumes (a design may change kernel behaviour that is not
        a uffd context's, such as VMA merging)."""
        return profile

    # -- hooks ------------------------------------------------------------------------------
    def setup(self, r: Host) -> None:
        """Once, before the trace: open what the tracker needs."""
        self.r = r
        self.k = r.kernel
        if self.rules is not None:
            self.k.ctx_setup = self.setup_context

    def setup_context(self, ctx: UffdCtx) -> None:
        """Every userfaultfd context created on the design's kernel (its kernel patch)."""
        if self.rules is not None:
            ctx.rules = self.rules
        if self.sync:
            ctx.handler = self.notified
            ctx.pages_handler = self.notified_pages if _batched(type(self)) else None

    def arm(self, start: int, end: int) -> None:
        """Start tracking [start, end)."""
        raise NotImplementedError

    def collect(self) -> np.ndarray:
        """The pages written since the last collect (arm), re-armed: a (k, 2) uint64 array of
        [start, end) address ranges."""
        raise NotImplementedError

    def fork(self, child_pid: int) -> None:
        """The tracked process forked (the child is ``child_pid``)."""

    def close(self) -> None:
        pass

    # -- shared helpers ---------------------------------------------------------------------
    def notified(self, ctx: UffdCtx, addr: int, seen: int, tids: tuple[int, ...]) -> None:
        """The monitor of a synchronous design: record, copy for the snapshot, unprotect."""
        self.r.notify(addr, seen)
        try:
            self.k.uffdio_writeprotect(ctx.fd, addr, PAGE, 0)
        except errors.WriteWatchError:
            ctx.resolve(ctx.mm, addr)

    def notified_pages(self, ctx: UffdCtx, addrs: np.ndarray, seen: np.ndarray) -> None:
        """:meth:`notified` for single-thread faults on several pages of one page table at
        once (the replay's batches). A design that overrides :meth:`notified` overrides this
        too, or its faults are handled one by one."""
        self.r.notify_pages(addrs, seen)
        self.k.uffdio_unprotect_pages(ctx.fd, addrs)

    def open_uffd(self) -> int:
        fd = self.k.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
        self.k.uffdio_api(fd, self.features)
        return fd


def _batched(cls: type[Design]) -> bool:
    """Whether ``cls`` takes a table's faults at once: its :meth:`~Design.notified_pages` is
    defined no higher in its MRO than its :meth:`~Design.notified`."""
    def owner(name: str) -> int:
        return next(i for i, c in enumerate(cls.__mro__) if name in vars(c))
    return owner("notified_pages") <= owner("notified")


def page_ranges(addrs: list[int] | np.ndarray) -> np.ndarray:
    """Page addresses as (k, 2) [start, end) ranges, one per page, sorted and unique."""
    a = np.unique(np.asarray(addrs, np.uint64))
    if not len(a):
        return np.empty((0, 2), np.uint64)
    return np.stack([a, a + np.uint64(PAGE)], axis=1)


def needs_wp_async(profile: Profile) -> str | None:
    return None if profile.wp_async else "no UFFD_FEATURE_WP_ASYNC / PAGEMAP_SCAN (6.7)"


__all__ = ["Design", "Host", "needs_wp_async", "page_ranges"]
