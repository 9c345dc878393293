"""What the race explorer runs: a design as the explorer sees it (:class:`Design`), a small
concurrent program (:class:`Scenario`), and the atomic steps of a schedule (:class:`Step`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ... import _uapi as U
from ...errors import WriteWatchError

if TYPE_CHECKING:
    from ..designs.base import Design as DesignClass


class RaceExplorerError(WriteWatchError, ValueError):
    """An unknown design or scenario name, or a malformed scenario."""


class Step(NamedTuple):
    """One atomic step of one thread."""

    thread: str
    action: str


@dataclass(frozen=True)
class Design:
    """A write-tracking design as the explorer sees it (one policy per field).

    The built-in ones are derived from the design registry (:meth:`of`): the fields are the
    registry class's kernel rules (:class:`writewatch.model.WpRules`) and its ``explore``
    tracker, so the replay and the explorer run one definition."""

    name: str
    summary: str
    sync: bool = False            # writer blocks, the handler copies before unprotecting
    uffd: bool = False            # a uffd-wp design as the kernel implements it
    markers: bool = False         # uffd-wp markers on anon too (WP_UNPOPULATED, 6.4+)
    none_protected: bool = False  # pte_none counts as protected / clean (no markers)
    notify_after_map: bool = False  # sync write fault on pte_none maps first, notifies after
    discard_marker: bool = False  # a discard (MADV_DONTNEED) leaves a marker: "changed"
    collect: str = ""             # "scan" (get+WP), "softdirty", "ring", "" (sync handler)

    @classmethod
    def of(cls, d: type[DesignClass]) -> Design:
        """The explorer's view of a registry design (``d.explore`` must not be None)."""
        if d.explore is None:
            raise RaceExplorerError(f"design {d.name!r} cannot be explored",
                                    hint=d.explore_why or "its class sets explore = None")
        if d.explore not in ("scan", "handler", "ring", "softdirty"):
            raise RaceExplorerError(f"design {d.name!r}: explore = {d.explore!r}",
                                    hint='"scan", "handler", "ring", "softdirty" or None')
        r = d.rules
        unpop = bool(d.features & (U.UffdFeature.WP_UNPOPULATED | U.UffdFeature.WP_ASYNC))
        anon = (unpop if r.anon_markers is None else r.anon_markers) if r else False
        return cls(d.name, d.title, sync=d.sync, uffd=bool(r and r.linux),
                   markers=bool(r and r.markers and anon),
                   none_protected=bool(r and r.none_protected),
                   notify_after_map=bool(r and r.notify_after_map),
                   discard_marker=bool(r and r.discard_marker),
                   collect="" if d.explore == "handler" else d.explore)


Op = tuple[str, int]  # ("write" | "read" | "dontneed" | "reclaim", page)


@dataclass(frozen=True)
class Scenario:
    """A small concurrent program: initial pages, threads, and concurrent collects."""

    name: str
    summary: str
    memory: str                                  # "anon" or "shmem"
    pages: tuple[str, ...]                       # per page: "none" or "mapped"
    threads: tuple[tuple[str, tuple[Op, ...]], ...]
    collects: int = 1                            # collects the tracker runs concurrently
    expect: str = ""                             # what the scenario is there to show

    def __post_init__(self) -> None:
        if self.memory not in ("anon", "shmem"):
            raise RaceExplorerError(f"scenario {self.name!r}: memory {self.memory!r}",
                                    hint="use 'anon' or 'shmem'")
        if any(k not in ("none", "mapped") for k in self.pages):
            raise RaceExplorerError(f"scenario {self.name!r}: page kinds {self.pages}",
                                    hint="each page is 'none' or 'mapped'")
        for tname, prog in self.threads:
            for op, p in prog:
                if op not in ("write", "read", "dontneed", "reclaim"):
                    raise RaceExplorerError(f"scenario {self.name!r}: op {op!r} in {tname}",
                                            hint="ops are write, read, dontneed, reclaim")
                if not 0 <= p < len(self.pages):
                    raise RaceExplorerError(f"scenario {self.name!r}: page {p} in {tname}",
                                            hint=f"pages are 0..{len(self.pages) - 1}")
                if op == "reclaim" and self.memory != "shmem":
                    raise RaceExplorerError(f"scenario {self.name!r}: reclaim on anon",
                                            hint="reclaim keeps the page in the shmem cache; "
                                                 "use it on shmem scenarios")


__all__ = ["Design", "Op", "RaceExplorerError", "Scenario", "Step"]
