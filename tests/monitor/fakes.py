"""A deterministic stand-in for a process tracker, and a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from writewatch import NoSuchProcess
from writewatch.pages import Pages

PS = 4096
HEAP = (0x5555_0000_0000, 0x5555_0040_0000)  # 4 MiB
ANON = (0x7F00_0000_0000, 0x7F00_1000_0000)  # 256 MiB
STACK = (0x7FFD_0000_0000, 0x7FFD_0002_1000)
FILE = (0x7E00_0000_0000, 0x7E00_0010_0000)  # 1 MiB shared file mapping, appears later


class M(NamedTuple):
    start: int
    end: int
    perms: str
    path: str


class FakeTracker:
    """``script[k]`` is the list of ``(start, end)`` ranges collect number ``k`` returns;
    ``maps_at(k)`` the mappings listed after it. Raises NoSuchProcess past the script's end
    when ``exits`` (the target exited)."""

    page_size = PS
    backend = "fake"

    def __init__(self, script: Sequence[Sequence[tuple[int, int]]],
                 maps_at: Callable[[int], list[M]] | None = None, exits: bool = False) -> None:
        self.script = script
        self.maps_at = maps_at or (lambda k: [M(*HEAP, "rw-p", "[heap]"),
                                              M(*ANON, "rw-p", ""),
                                              M(*STACK, "rw-p", "[stack]")])
        self.exits = exits
        self.k = 0
        self.closed = False

    def collect(self) -> Pages:
        if self.k >= len(self.script):
            if self.exits:
                raise NoSuchProcess(4242)
            self.k += 1
            return Pages((), PS)
        r = self.script[self.k]
        self.k += 1
        return Pages(np.array(r, np.uint64).reshape(-1, 2), PS)

    def mappings(self) -> list[M]:
        return self.maps_at(self.k)

    def close(self) -> None:
        self.closed = True


class FakeClock:
    """Time that moves only when waited on (plus ``cost`` per reading, to model work)."""

    def __init__(self, cost: float = 0.0) -> None:
        self.now = 100.0
        self.cost = cost
        self.waits: list[float] = []

    def __call__(self) -> float:
        self.now += self.cost
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False
