"""Layer 4: ``track()`` and ``Tracker``, tracking writes to memory of this process."""

from __future__ import annotations

import abc
import bisect
import contextlib
import inspect
import itertools
import mmap
import operator
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from . import errors
from .backends import REGISTRY, Backend, Collected, Span
from .features import features
from .kernel import LINUX, KernelCalls, forking
from .pages import Pages

__all__ = ["CollectInfo", "MemoryTracker", "PartialPageWarning", "Target", "Tracker", "track",
           "zeros"]


class PartialPageWarning(UserWarning):
    """A target does not start or end on a page boundary: its first or last page is shared with
    other memory, and writes there to that other memory are reported too."""


class Target(NamedTuple):
    """One tracked object: its bytes ``[start, start+length)`` and the pages covering them."""

    start: int
    length: int
    label: str
    obj: Any = None  #: the tracked object, kept alive while tracked (None for a raw span)

    @property
    def end(self) -> int:
        return self.start + self.length

    def span(self, page_size: int) -> Span:
        lo = self.start // page_size * page_size
        hi = -(-self.end // page_size) * page_size
        return Span(lo, hi, self.label)

    def aligned(self, page_size: int) -> bool:
        return self.start % page_size == 0 and self.length % page_size == 0


@dataclass(frozen=True)
class CollectInfo:
    """Details of the last collect beyond the pages themselves."""

    conservative: Pages  #: pages reported without proof of a write (see ``reasons``)
    reasons: tuple[str, ...] = ()
    #: tracked pages that were unmapped since the last collect (they hold nothing now: not
    #: in the result; a copy of the memory drops them)
    unmapped: Pages | None = None


@dataclass(frozen=True)
class TrackerStats:
    backend: str
    collects: int
    pages_reported: int
    pages_conservative: int
    scan_calls: int
    rearms: int
    extra: dict[str, int] = field(default_factory=dict)


def _byte_bounds(arr: np.ndarray) -> tuple[int, int]:
    if arr.flags.c_contiguous:  # the common case, without numpy's general walk
        lo = int(arr.__array_interface__["data"][0])
        return lo, lo + arr.nbytes
    try:
        from numpy.lib.array_utils import byte_bounds
    except ImportError:  # numpy < 2
        byte_bounds = np.byte_bounds  # type: ignore[attr-defined]
    lo, hi = byte_bounds(arr)
    return int(lo), int(hi)


#: no user address reaches this on any Linux architecture (x86-64 with 5-level paging: 2**56)
ADDRESS_LIMIT = 1 << 57


def _integers(obj: Any) -> tuple[int, int] | None:
    """An ``(address, length)`` pair of integers (Python or numpy), else None."""
    if not (isinstance(obj, tuple) and len(obj) == 2) or any(isinstance(v, bool) for v in obj):
        return None
    try:
        return operator.index(obj[0]), operator.index(obj[1])
    except TypeError:
        return None


def check_count(name: str, value: Any) -> int:
    """A non-negative count argument (``max_pages``...), validated."""
    if isinstance(value, bool):
        raise errors.InvalidTarget(f"{name}={value!r} is not a count", hint="give an integer")
    try:
        n = operator.index(value)
    except TypeError:
        raise errors.InvalidTarget(f"{name}={value!r} is not an integer",
                                   hint=f"give {name} as an integer >= 0 (0: no limit)") from None
    if not 0 <= n < 1 << 63:
        raise errors.InvalidTarget(f"{name}={n} is out of range",
                                   hint=f"give {name} >= 0 (0: no limit)")
    return n


def resolve_target(obj: Any, page_size: int) -> Target:
    """Turn what the user passed into a :class:`Target` (validated, never partially).

    An explicit ``(address, length)`` span may cover any mapped memory of this process:
    read-only parts are armed too (a later mprotect to writable is then tracked), and gaps
    inside it are ignored (what becomes mapped there is reported by what it holds)."""
    if isinstance(obj, Target):
        return obj
    pair = _integers(obj)
    if pair is not None:
        addr, length = pair
        if addr + length > ADDRESS_LIMIT or addr >= ADDRESS_LIMIT:
            raise errors.InvalidTarget(
                f"span ({addr:#x}, {length:#x}) reaches past the address space",
                hint="give an address and length inside this process's memory")
        if length <= 0:
            raise errors.InvalidTarget(f"span ({addr:#x}, {length}) is empty",
                                       hint="give a positive length")
        if addr <= 0 or addr % page_size or length % page_size:
            raise errors.InvalidTarget(
                f"explicit span ({addr:#x}, {length:#x}) is not page aligned",
                hint=f"address and length must be multiples of the page size ({page_size}); "
                     "pass the object itself to track the pages covering it")
        return Target(addr, length, f"span@{addr:#x}")
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        try:
            mv = memoryview(obj)
        except TypeError:
            raise errors.InvalidTarget(
                f"cannot track a {type(obj).__name__}",
                hint="pass a writable buffer (numpy array, bytearray, mmap.mmap, memoryview, "
                     "ctypes array) or an (address, length) tuple") from None
        if mv.readonly:
            raise errors.InvalidTarget(f"{type(obj).__name__} is read-only",
                                       hint="track writable memory")
        arr = np.asarray(mv) if mv.nbytes else np.empty(0, np.uint8)
    if not arr.flags.writeable:
        raise errors.InvalidTarget(f"{type(obj).__name__} is read-only",
                                   hint="track writable memory")
    if arr.nbytes == 0:
        raise errors.InvalidTarget(f"{type(obj).__name__} is empty (zero bytes)",
                                   hint="track a non-empty buffer")
    lo, hi = _byte_bounds(arr)
    return Target(lo, hi - lo, f"{type(obj).__name__}@{lo:#x}", obj)


def check_overlap(targets: list[Target]) -> None:
    """Refuse overlapping targets (sorted once: O(n log n))."""
    order = sorted(targets, key=lambda t: t.start)
    for a, b in itertools.pairwise(order):
        if b.start < a.end:
            raise errors.InvalidTarget(
                f"targets overlap: {a.label} and {b.label}",
                hint="track each byte once (pass the larger object only)")


def new_spans(existing: Iterable[Span], targets: list[Target], page_size: int) -> list[Span]:
    """The pages covering ``targets`` that no existing span covers yet, as spans. Two objects
    sharing a page share its span; an armed span is never re-armed (that would drop the
    writes it holds). O(n log n): targets in address order, existing spans by bisection."""
    have = sorted((s.start, s.end) for s in existing)
    starts = [a for a, _ in have]
    out: list[Span] = []
    done = 0  # everything below this address is covered by an earlier target
    for t in sorted(targets, key=lambda t: t.start):
        s = t.span(page_size)
        lo = max(s.start, done)
        done = max(done, s.end)
        i = max(bisect.bisect_right(starts, lo) - 1, 0)
        while lo < s.end:
            while i < len(have) and have[i][1] <= lo:
                i += 1
            if i < len(have) and have[i][0] <= lo:  # inside an existing span
                lo = have[i][1]
                continue
            hi = min(s.end, have[i][0]) if i < len(have) else s.end
            out.append(Span(lo, hi, t.label))
            lo = hi
    return out


def _warn_partial(targets: list[Target], page_size: int) -> None:
    for t in targets:
        if not t.aligned(page_size):
            n = t.span(page_size).length // page_size
            warnings.warn(
                f"{t.label} is not page aligned: tracking the {n} pages covering it; writes to "
                f"other data on its first and last page are reported too",
                PartialPageWarning, stacklevel=3)


# -- fork safety ------------------------------------------------------------------------------
#: every tracker of this process, so that a fork()ed child can disown them (below)
_live: weakref.WeakSet[Tracker] = weakref.WeakSet()


def unclosed(what: str, close: Callable[[], object]) -> Callable[[], None]:
    """A finalizer for an object holding descriptors: garbage collected while still open, it
    closes them and says so with a ResourceWarning (as an unclosed file does)."""
    def finalize() -> None:
        warnings.warn(f"unclosed {what}: closed when garbage collected; close it (or use "
                      "`with`)", ResourceWarning, stacklevel=2)
        close()
    return finalize


def _disown_all() -> None:
    """In a fork()ed child: every tracker acts on the *parent's* memory. The child must
    neither collect (it would re-arm the parent's pages: the parent would miss those writes)
    nor unregister at exit: its trackers are disowned, their descriptors closed, and any use
    raises :class:`writewatch.TrackerForked`."""
    for t in list(_live):
        with contextlib.suppress(Exception):
            t._forget()


forking.in_child(_disown_all)


_T = TypeVar("_T", bound="Tracker")


class Tracker(abc.ABC):
    """What every tracker is: :func:`track` makes a :class:`MemoryTracker` (memory of this
    process), :func:`writewatch.attach` and :func:`writewatch.launch` a
    :class:`~writewatch.ProcessTracker` (other processes).

    ``collect()`` returns the pages written since tracking started or since the last
    collect, and re-arms them in the same kernel call. Safe to call from several threads;
    usable only by the process that created it (a ``fork()`` child gets
    :class:`TrackerForked`). ``close()`` releases everything (so does garbage collection,
    with a ``ResourceWarning``)."""

    def __init__(self, page_size: int, release: Callable[[], None]) -> None:
        """``release``: undo every arming and close every descriptor (called once)."""
        self._lock = threading.RLock()
        self._owner = os.getpid()
        self._page_size = page_size
        self._nothing = Pages.empty(page_size)  #: an immutable value: shared by every caller
        self._last = CollectInfo(self._nothing)
        self._release = release
        self._finalizer = weakref.finalize(
            self, unclosed(f"writewatch.{type(self).__name__}", release))
        _live.add(self)

    # -- what each kind of tracker says ------------------------------------------------------
    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """The mechanism in use: "uffd-async", "uffd-wp-sync" or "soft-dirty"."""

    @property
    @abc.abstractmethod
    def spans(self) -> tuple[Span, ...]:
        """The page-aligned address ranges armed in the kernel."""

    @property
    @abc.abstractmethod
    def stats(self) -> TrackerStats: ...

    @abc.abstractmethod
    def collect(self, reset: bool = True, max_pages: int = 0) -> Pages:
        """Pages written since tracking started or since the last reset.

        Args:
            reset: re-arm the reported pages in the same kernel call (get + write-protect
                atomically: a concurrent write lands in this result or the next, never lost).
                ``reset=False`` only peeks.
            max_pages: report (and re-arm) at most this many pages; the rest stay for the next
                collect. 0 means no limit.
        """

    @abc.abstractmethod
    def _forget_resources(self) -> None:
        """In a fork()ed child: close this process's copies of the descriptors, touching no
        memory (the parent's) and telling no helper."""

    # -- common -----------------------------------------------------------------------------
    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def last(self) -> CollectInfo:
        """Conservative pages and their reasons from the last collect."""
        return self._last

    def close(self) -> None:
        """Stop tracking: unregister every range (the kernel drops the protection) and close
        the descriptors. Idempotent."""
        with self._lock:
            if self._finalizer.detach() is not None:
                self._release()

    def _forget(self) -> None:
        """In a fork()ed child (see :func:`_disown_all`). A tracker closed before the fork owns
        no descriptor any more: the numbers it had may belong to something else now."""
        if self._finalizer.detach() is not None:
            self._forget_resources()

    def _check_open(self) -> None:
        if os.getpid() != self._owner:
            raise errors.TrackerForked(
                f"this tracker belongs to process {self._owner}: it was inherited through "
                "fork and acts on that process's memory", hint="create a new tracker here")
        if self.closed:
            raise errors.TrackerClosed("this tracker is closed",
                                       hint="create a new tracker")

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryTracker(Tracker):
    """Tracks writes to memory of this process: the targets given to :func:`track` (and
    :meth:`add`), over one backend."""

    def __init__(self, backend: Backend, targets: Iterable[Target] = ()) -> None:
        super().__init__(backend.page_size, backend.close)
        self._backend = backend
        self._targets: list[Target] = []
        self._shared: _SharedSpans | None = None
        try:
            self._add(list(targets))
        except BaseException:
            self.close()
            raise

    def _forget_resources(self) -> None:
        self._backend.forget()

    # -- properties --------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(self._targets)

    @property
    def spans(self) -> tuple[Span, ...]:
        return tuple(self._backend.spans)

    @property
    def closed(self) -> bool:
        return self._backend.closed or super().closed

    @property
    def stats(self) -> TrackerStats:
        s = self._backend.stats
        return TrackerStats(self.backend, s.collects, s.pages_reported, s.pages_conservative,
                            s.scan_calls, s.rearms, dict(s.extra))

    # -- operations --------------------------------------------------------------------------
    def add(self, *targets: Any) -> None:
        """Track more targets (same forms as :func:`track`)."""
        new = [resolve_target(t, self.page_size) for t in targets]
        self._add(new)
        _warn_partial(new, self.page_size)

    def _add(self, new: list[Target]) -> None:
        with self._lock:
            self._check_open()
            ps = self.page_size
            check_overlap(self._targets + new)
            maps = self._backend.kernel.read_maps(self._backend.pid)
            added = new_spans(self._backend.spans, new, ps)
            with self._backend.layout(maps):
                self._backend.add_many(added)
            self._targets.extend(new)
            shared = _SharedSpans.of(added, maps, ps)
            if shared is not None:
                self._shared = shared if self._shared is None else self._shared.merge(shared)

    def collect(self, reset: bool = True, max_pages: int = 0) -> Pages:
        max_pages = check_count("max_pages", max_pages)
        with self._lock:
            self._check_open()
            got: Collected = self._backend.collect(reset=bool(reset), max_pages=max_pages)
            if self._shared is not None:
                got = self._shared.check(got, self._backend.spans, reset)
            ps = self._page_size
            pages = self._nothing if not len(got.written) else \
                Pages._trusted(got.written, ps) if got.sorted else \
                Pages.from_kernel(got.written, ps)
            if len(got.conservative) or got.reasons or self._last.reasons or \
                    len(self._last.conservative._ranges) or got.unmapped is not None:
                self._last = CollectInfo(
                    Pages.from_kernel(got.conservative, ps), got.reasons,
                    None if got.unmapped is None else Pages.from_kernel(got.unmapped, ps))
            return pages

    def close(self) -> None:
        with self._lock:
            super().close()
            self._targets.clear()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._backend.spans)} span(s)"
        return f"<MemoryTracker {self.backend} {state}>"


def zeros(shape: int | tuple[int, ...], dtype: Any = np.uint8, *,
          shared: bool = False) -> np.ndarray:
    """A zero-filled numpy array on pages of its own (an anonymous ``mmap``): page aligned, so
    tracking it reports its pages only. Its pages are not populated until touched.

    ``shared``: map it ``MAP_SHARED`` (children forked later then write the same memory).
    Costlier to track: shared memory can change without a write through this process's page
    tables (a child's writes, hole punching), so each collect also checks for that."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
    mem = mmap.mmap(-1, max(n, 1), flags=flags)
    return np.frombuffer(mem, dt, count=int(np.prod(shape))).reshape(shape)


class _SharedSpans:
    """The tracked spans of this process that are MAP_SHARED memory, and what could write
    them unseen: a child forked since the last collect (its page tables are its own; this
    process's PTEs keep their uffd-wp bit), a child that exited meanwhile (its count of
    faults joins ours when it is reaped: /proc/self/stat cminflt), or another process that
    maps the object now. Any of these reports the affected spans whole."""

    def __init__(self, spans: dict[Span, tuple[str, int]], path: dict[tuple[str, int], str],
                 page_size: int) -> None:
        self.spans = spans  # span -> object key (dev, inode)
        self.paths = path
        self.page_size = page_size
        self.forks = forking.others()
        self.cminflt = self._cminflt()
        from .process.shared import SharerScan
        self.scan = SharerScan()

    @classmethod
    def of(cls, spans: Iterable[Span], maps: Iterable[Any], page_size: int
           ) -> _SharedSpans | None:
        shared = [m for m in maps if m.shared and m.inode]
        found: dict[Span, tuple[str, int]] = {}
        paths: dict[tuple[str, int], str] = {}
        for s in spans:
            for m in shared:
                if m.start < s.end and s.start < m.end:
                    found[s] = (m.dev, m.inode)
                    paths[(m.dev, m.inode)] = m.path
        return cls(found, paths, page_size) if found else None

    def merge(self, other: _SharedSpans) -> _SharedSpans:
        self.spans.update(other.spans)
        self.paths.update(other.paths)
        return self

    @staticmethod
    def _cminflt() -> int:
        from .kernel import procfs
        st = procfs.read_stat(os.getpid())
        return st.cminflt if st is not None else 0

    def check(self, got: Collected, live: Iterable[Span], reset: bool) -> Collected:
        from .process.shared import ObjectKey, kind
        alive = set(live)
        spans = {s: k for s, k in self.spans.items() if s in alive}
        if not spans:
            return got
        why = []
        forks, cminflt = forking.others(), self._cminflt()
        children = forks != self.forks or cminflt != self.cminflt
        if forks != self.forks:
            why.append(f"{forks - self.forks} fork(s) of this process since the last collect")
        if cminflt != self.cminflt:
            why.append("a child of this process exited since the last collect")
        if reset:
            self.forks, self.cminflt = forks, cminflt
        objects = {ObjectKey(*k): kind(self.paths[k]) for k in set(spans.values())}
        sharers = self.scan.scan(objects, set())
        hit = {(s.key.dev, s.key.inode) for s in sharers}
        if sharers:
            why.append("mapped writable by pid " +
                       ", ".join(sorted({str(s.pid) for s in sharers})))
        whole = [s for s, k in spans.items() if children or k in hit]
        if not whole:
            return got
        arr = np.array([[s.start, s.end] for s in whole], np.uint64)
        reason = (f"{len(whole)} MAP_SHARED span(s) may have been written by another process "
                  f"({'; '.join(why)}): reported whole")
        return Collected(np.concatenate([got.written, arr]),
                         np.concatenate([got.conservative, arr]), (*got.reasons, reason))
def _pick_backend(name: str, kernel: KernelCalls) -> str:
    if name != "auto":
        return name
    f = features(kernel)
    if f.auto is None:
        raise errors.Unsupported(
            "no write-tracking mechanism is usable on this kernel",
            hint="; ".join(f"{b}: {r.detail}" for b, r in f.backends.items()))
    return f.auto


def make_backend(name: str, pid: int | str = "self", kernel: KernelCalls = LINUX,
                 **options: Any) -> Backend:
    """Instantiate backend ``name`` ("auto" picks the best usable one on ``kernel``)."""
    if not isinstance(name, str):
        raise errors.InvalidTarget(f"backend={name!r} is not a backend name",
                                   hint=f"one of: auto, {', '.join(sorted(REGISTRY))}")
    name = _pick_backend(name, kernel)
    cls = REGISTRY.get(name)
    if cls is None:
        raise errors.InvalidTarget(f"unknown backend {name!r}",
                                   hint=f"choose one of: auto, {', '.join(sorted(REGISTRY))}")
    # a mechanism the kernel lacks may still "work" and report nothing (soft-dirty compiled
    # out: clear_refs 4 is accepted, bit 55 never set): refuse it
    usable = features(kernel).backends[name]
    if not usable.usable:
        raise errors.Unsupported(f"backend {name!r} is not usable here: {usable.detail}",
                                 feature=name, since=usable.since, hint=usable.fix)
    check_options(cls, options)
    return cls(pid, kernel, **options)


def check_options(cls: type[Backend], options: dict[str, Any],
                  reserved: frozenset[str] = frozenset()) -> None:
    """Refuse options the backend ``cls`` does not take (its keyword-only parameters, less
    ``reserved``: those the caller sets itself), before anything is started."""
    params = inspect.signature(cls.__init__).parameters.values()
    known = sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in reserved)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise errors.InvalidTarget(
            f"backend {cls.name!r} takes no option {', '.join(unknown)}",
            hint=f"its options: {', '.join(known) or 'none'}")


def track(*targets: Any, backend: str = "auto", kernel: KernelCalls = LINUX,
          **options: Any) -> MemoryTracker:
    """Track writes to memory of this process.

    Args:
        targets: writable buffer-protocol objects (numpy arrays, bytearray, ``mmap.mmap``,
            memoryview, ctypes arrays) or explicit page-aligned ``(address, length)`` spans.
            An object that is not page aligned is tracked through the pages covering it
            (a :class:`PartialPageWarning` says so).
        backend: "auto" (the best this kernel offers, see :func:`writewatch.features`),
            "uffd-async", "uffd-wp-sync" or "soft-dirty".
        kernel: the kernel-call seam: the running kernel, or a
            :class:`writewatch.model.ModelKernel`.
        options: passed to the backend.

    Returns:
        A :class:`MemoryTracker`, armed: writes from now on are reported by ``collect()``.
    """
    if not targets:
        raise errors.InvalidTarget("nothing to track", hint="pass at least one buffer or span")
    page_size = kernel.page_size
    resolved = [resolve_target(t, page_size) for t in targets]
    check_overlap(resolved)  # before touching the kernel
    tracker = MemoryTracker(make_backend(backend, "self", kernel, **options), resolved)
    _warn_partial(resolved, page_size)
    return tracker
