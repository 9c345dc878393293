"""Layer 3: the interface every tracking mechanism implements.

A backend arms page-aligned spans of one address space, collects the pages written since the
last collect (re-arming in the same step when asked), and closes. It knows nothing of Python
buffers: :mod:`writewatch.tracker` turns targets into spans.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from ..kernel import LINUX, Capabilities, KernelCalls, Mapping
from ..kernel.probes import Probe


class Span(NamedTuple):
    """A page-aligned address range to track."""

    start: int
    end: int
    label: str = ""

    @property
    def length(self) -> int:
        return self.end - self.start


class Collected(NamedTuple):
    """What one collect found, as ``(k, 2)`` uint64 ``[start, end)`` arrays (not coalesced)."""

    written: np.ndarray  #: pages the mechanism reported written (includes ``conservative``)
    conservative: np.ndarray  #: pages reported because tracking could not be exact there
    reasons: tuple[str, ...] = ()  #: one line per conservative report, saying why
    #: ``written`` is sorted and coalesced already (PAGEMAP_SCAN's own output: it merges a
    #: page into the previous region when contiguous with the same categories)
    sorted: bool = False
    #: tracked pages that are not mapped any more (not in ``written``: there is no content)
    unmapped: np.ndarray | None = None


#: rows of reported ranges kept uncounted at most (16 bytes each)
_UNCOUNTED_ROWS = 1 << 16


@dataclass
class BackendStats:
    """Counters a backend keeps (monotonic over its life). The pages of what the collects
    reported are summed when :attr:`pages_reported` is read, not by each collect."""

    collects: int = 0
    scan_calls: int = 0  #: PAGEMAP_SCAN ioctls / pagemap reads made
    pages_conservative: int = 0  #: reported without proof of a write (remap, zap, new VMA)
    rearms: int = 0  #: spans re-registered after being remapped
    extra: dict[str, int] = field(default_factory=dict)
    page_size: int = 4096
    _counted: int = field(default=0, repr=False)
    _uncounted: list[np.ndarray] = field(default_factory=list, repr=False)
    _rows: int = field(default=0, repr=False)

    def reported(self, ranges: np.ndarray) -> None:
        """Note the ``(k, 2)`` [start, end) ranges a collect reported."""
        self._uncounted.append(ranges)
        self._rows += len(ranges)
        if self._rows > _UNCOUNTED_ROWS:
            self._count()

    @property
    def pages_reported(self) -> int:
        self._count()
        return self._counted

    def _count(self) -> None:
        pending, self._uncounted, self._rows = self._uncounted, [], 0
        for r in pending:
            self._counted += int((r[:, 1] - r[:, 0]).sum()) // self.page_size


class Backend(abc.ABC):
    """One tracking mechanism over one address space (``pid``: ``"self"`` or a PID)."""

    #: registry name ("uffd-async", "uffd-wp-sync", "soft-dirty")
    name: ClassVar[str]
    #: kernel release that made the mechanism usable (x86-64)
    since: ClassVar[str | None] = None
    #: True when :meth:`collect` re-arms only the tracked spans (uffd); False when a reset
    #: is process-wide (soft-dirty's clear_refs clears every VMA of the process).
    ranged_reset: ClassVar[bool] = True

    def __init__(self, pid: int | str = "self", kernel: KernelCalls = LINUX) -> None:
        self.pid = pid
        self.kernel = kernel
        self.page_size = kernel.page_size
        self.spans: list[Span] = []
        self.stats = BackendStats(page_size=self.page_size)
        self.closed = False
        #: /proc/PID/maps as the caller just read it (see :meth:`layout`)
        self.given_maps: Sequence[Mapping] | None = None
        self.maps_unchanged = False

    @contextlib.contextmanager
    def layout(self, maps: Sequence[Mapping], unchanged: bool = False) -> Iterator[None]:
        """Use ``maps`` (the target's /proc/PID/maps, just read) instead of reading it again
        for every span added or collected meanwhile. ``unchanged``: they are the maps of the
        last collect, line for line (what was mapped then is mapped now)."""
        self.given_maps = maps
        self.maps_unchanged = unchanged
        try:
            yield
        finally:
            self.given_maps = None
            self.maps_unchanged = False

    def read_maps(self) -> Sequence[Mapping]:
        """The target's mappings: the ones given through :meth:`layout`, or read now."""
        if self.given_maps is not None:
            return self.given_maps
        return self.kernel.read_maps(self.pid)

    @staticmethod
    @abc.abstractmethod
    def available(caps: Capabilities) -> Probe:
        """Whether the mechanism works on a kernel with ``caps``, what it uses there, and
        what would make it usable (pure)."""

    @abc.abstractmethod
    def add(self, span: Span) -> None:
        """Start tracking ``span``: from now on every write to it is reported.

        Raises a :class:`writewatch.WriteWatchError` and leaves nothing registered on failure.
        """

    def add_many(self, spans: Sequence[Span]) -> None:
        """:meth:`add` each span; on failure none of them stays tracked."""
        done: list[Span] = []
        try:
            for s in spans:
                self.add(s)
                done.append(s)
        except BaseException:
            for s in done:
                self.remove(s)
            raise

    @abc.abstractmethod
    def remove(self, span: Span) -> None:
        """Stop tracking ``span`` (which was added) and drop any protection on it."""

    @abc.abstractmethod
    def collect(self, reset: bool = True, max_pages: int = 0) -> Collected:
        """Pages written in the tracked spans since the last reset.

        With ``reset`` the same pages are re-armed atomically with reading them: a write that
        lands during the call is either in this result or in the next one, never lost. With
        ``max_pages`` at most that many pages are returned and re-armed; the rest stay for
        the next collect."""

    def close(self) -> None:
        """Remove every span and release descriptors. Idempotent."""
        if self.closed:
            return
        try:
            for span in list(self.spans):
                try:
                    self.remove(span)
                except Exception:
                    pass
        finally:
            self.spans.clear()
            self.closed = True
            self._release()

    def _release(self) -> None:  # noqa: B027 (optional hook)
        """Release descriptors and helpers (after every span was removed)."""

    def forget(self) -> None:
        """In a fork()ed child: close this process's copies of the descriptors without
        touching the memory they act on (the parent's) and without telling any helper."""
        if self.closed:
            return
        self.closed = True
        self.spans.clear()
        self._forget()

    def _forget(self) -> None:  # noqa: B027 (optional hook)
        """Close the descriptors only (see :meth:`forget`)."""


#: name -> backend class, filled by the backend modules
REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    REGISTRY[cls.name] = cls
    return cls
