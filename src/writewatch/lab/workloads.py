"""Built-in workloads, each aimed at one point of the debate, and seeded random traces.

Every workload is a function ``(seed, scale) -> Trace``; ``scale`` multiplies the number of
rounds. Addresses are fixed (MAP_FIXED), so a trace replays identically under every design.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .. import errors
from ..model.pte import PAGE, PMD
from ..model.trace import Trace, TraceFile, TraceHeader

BASE = 0x7F0000000000
GiB = 1 << 30
MiB = 1 << 20


class _B:
    """A small trace builder."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.seed = seed
        self.ops: list[dict[str, Any]] = []
        self.rng = random.Random(seed)

    def op(self, name: str, **kw: Any) -> None:
        self.ops.append({"op": name, **kw})

    def mmap(self, addr: int, length: int, kind: str = "anon", **kw: Any) -> None:
        self.op("mmap", addr=addr, len=length, kind=kind, **kw)

    def write(self, addr: int, length: int = PAGE, **kw: Any) -> None:
        self.op("write", addr=addr, len=length, **kw)

    def tracked(self, addr: int, length: int, written: int, kind: str = "anon") -> None:
        """A mapping whose first ``written`` bytes are written, then tracked whole."""
        self.mmap(addr, length, kind, **({"shared": True} if kind == "shmem" else {}))
        if written:
            self.write(addr, written)
        self.op("track", addr=addr, len=length)

    def trace(self) -> Trace:
        return Trace(TraceHeader(page_size=PAGE, source=f"workload:{self.name}",
                                 seed=self.seed), self.ops)


def merge(seed: int = 1, scale: int = 1) -> Trace:
    """VMA merging next to a tracked area: a new mapping placed right after it (merges, and
    mmap marks the merged VMA soft-dirty), and a page re-mapped read-only then merged back by
    mprotect of its clean neighbour (the VM_SOFTDIRTY of the re-mapped page is lost before
    the sticky-merge fix)."""
    b = _B("merge", seed)
    n = 256
    a = BASE
    b.tracked(a, n * PAGE, n * PAGE)
    for _ in range(8 * scale):
        p = b.rng.randrange(1, n - 1)
        b.op("munmap", addr=a + p * PAGE, len=PAGE)
        b.mmap(a + p * PAGE, PAGE, prot="r")  # new: VM_SOFTDIRTY; does not merge (prot)
        b.op("mprotect", addr=a + (p - 1) * PAGE, len=PAGE, prot="r")  # merges with it
        b.op("mprotect", addr=a + (p - 1) * PAGE, len=2 * PAGE, prot="rw")
        for _ in range(4):
            b.write(a + b.rng.randrange(n) * PAGE)
        b.op("collect")
        # a neighbour mapped right after the tracked area, then unmapped
        b.mmap(a + n * PAGE, 16 * PAGE)
        b.write(a + (n + 1) * PAGE)
        b.write(a + b.rng.randrange(n) * PAGE)
        b.op("collect")
        b.op("munmap", addr=a + n * PAGE, len=16 * PAGE)
    return b.trace()


def mprotect(seed: int = 1, scale: int = 1) -> Trace:
    """mprotect splits and merges inside a tracked area, with writes in between."""
    b = _B("mprotect", seed)
    n = 512
    a = BASE
    b.tracked(a, n * PAGE, n * PAGE // 2)
    for _ in range(16 * scale):
        lo = b.rng.randrange(n - 8)
        ln = b.rng.randrange(1, 8)
        b.op("mprotect", addr=a + lo * PAGE, len=ln * PAGE, prot="r")
        for _ in range(8):
            p = b.rng.randrange(n)
            if not lo <= p < lo + ln:
                b.write(a + p * PAGE)
        b.op("mprotect", addr=a + lo * PAGE, len=ln * PAGE, prot="rw")
        b.op("collect")
    return b.trace()


def malloc(seed: int = 1, scale: int = 1) -> Trace:
    """A malloc-like arena with THP: allocate (write), free (MADV_DONTNEED, sometimes a
    whole 2 MiB huge page: a PMD hole), reallocate (mremap grow)."""
    b = _B("malloc", seed)
    size = 32 * MiB
    a = BASE
    b.mmap(a, size)
    b.op("madvise", addr=a, len=size, advice="HUGEPAGE")
    b.write(a, 4 * PMD)  # four THPs
    b.write(a + 8 * PMD, 64 * PAGE)
    b.op("track", addr=a, len=size)
    for _ in range(16 * scale):
        for _ in range(16):
            p = b.rng.randrange(size // PAGE - 8)
            b.write(a + p * PAGE, b.rng.randrange(1, 8) * PAGE)
        for _ in range(4):
            p = b.rng.randrange(size // PAGE - 8)
            b.op("madvise", addr=a + p * PAGE, len=b.rng.randrange(1, 8) * PAGE,
                 advice="DONTNEED")
        h = b.rng.randrange(16)
        b.op("madvise", addr=a + h * PMD, len=PMD, advice="DONTNEED")  # whole THP
        b.op("collect")
        b.write(a + h * PMD, PAGE)
        b.op("collect")
    # realloc: a separate chunk grown with mremap (moved), outside the tracked arena
    c = a + 2 * size
    b.mmap(c, 16 * PAGE)
    b.write(c, 16 * PAGE)
    b.op("mremap", addr=c, len=16 * PAGE, new_len=64 * PAGE, new_addr=c + size)
    b.op("collect")
    return b.trace()


def shmem_reclaim(seed: int = 1, scale: int = 1) -> Trace:
    """Shared memory under reclaim: PTEs zapped with the page kept in the page cache; writes
    before and after; DONTNEED of shmem; concurrent first writes by two threads."""
    b = _B("shmem-reclaim", seed)
    n = 1024
    a = BASE
    b.tracked(a, n * PAGE, n * PAGE // 2, "shmem")
    for _ in range(16 * scale):
        for _ in range(16):
            b.write(a + b.rng.randrange(n) * PAGE)
        lo = b.rng.randrange(n - 64)
        b.op("reclaim", addr=a + lo * PAGE, len=64 * PAGE)
        for _ in range(8):
            b.write(a + b.rng.randrange(lo, lo + 64) * PAGE, tids=[0, 1])
        lo2 = b.rng.randrange(n - 16)
        b.op("madvise", addr=a + lo2 * PAGE, len=16 * PAGE, advice="DONTNEED")
        b.write(a + b.rng.randrange(lo2, lo2 + 16) * PAGE)
        b.op("collect")
    return b.trace()


def fork(seed: int = 1, scale: int = 1) -> Trace:
    """Fork-heavy: a child is forked and exits repeatedly; the parent writes (copy-on-write)."""
    b = _B("fork", seed)
    n = 1024
    a = BASE
    b.tracked(a, n * PAGE, n * PAGE)
    for _ in range(16 * scale):
        b.op("fork")
        for _ in range(32):
            b.write(a + b.rng.randrange(n) * PAGE)
        b.op("child_exit")
        b.op("collect")
    return b.trace()


def fork_shared(seed: int = 1, scale: int = 1) -> Trace:
    """A tracked process and its forked children share MAP_SHARED memory: the children write
    it (the parent's page tables never see those writes), the parent writes its private
    memory. Ground truth is per memory object: a child's write is a change the parent's
    tracker must report."""
    b = _B("fork-shared", seed)
    n = 512
    a, p = BASE, BASE + 4 * MiB
    b.mmap(a, n * PAGE, "shmem", shared=True)
    b.mmap(p, n * PAGE)
    b.write(a, n * PAGE)
    b.write(p, n * PAGE)
    b.op("track", addr=a, len=n * PAGE)
    b.op("track", addr=p, len=n * PAGE)
    for child in range(1, 8 * scale + 1):
        b.op("fork")
        for _ in range(16):
            b.write(a + b.rng.randrange(n) * PAGE, proc=child)  # the child's write
            b.write(p + b.rng.randrange(n) * PAGE, proc=child)  # its own copy (COW)
            b.write(a + b.rng.randrange(n) * PAGE)
            b.write(p + b.rng.randrange(n) * PAGE)
        b.op("collect")
        b.op("exit", proc=child)
    return b.trace()


def sparse(seed: int = 1, scale: int = 1) -> Trace:
    """A sparse 64 GiB anonymous mapping touched in a few places: the page-table cost."""
    b = _B("sparse", seed)
    size = 64 * GiB
    a = BASE - size
    b.mmap(a, size)
    for _ in range(64):
        b.write(a + b.rng.randrange(size // PAGE) * PAGE)
    b.op("track", addr=a, len=size)
    for _ in range(4 * scale):
        for _ in range(64):
            b.write(a + b.rng.randrange(size // PAGE) * PAGE)
        b.op("collect")
    return b.trace()


def random_writes(seed: int = 1, scale: int = 1) -> Trace:
    """Uniform random writes over 64 MiB, with a few discards."""
    b = _B("random", seed)
    size = 64 * MiB
    a = BASE
    b.tracked(a, size, 0)
    for _ in range(16 * scale):
        for _ in range(256):
            b.write(a + b.rng.randrange(size // PAGE) * PAGE)
        b.op("madvise", addr=a + b.rng.randrange(size // PAGE - 4) * PAGE, len=4 * PAGE,
             advice="DONTNEED")
        b.op("collect")
    return b.trace()


def hotcold(seed: int = 1, scale: int = 1) -> Trace:
    """90 % of the writes to 10 % of 64 MiB."""
    b = _B("hotcold", seed)
    size = 64 * MiB
    n = size // PAGE
    a = BASE
    b.tracked(a, size, size)
    hot = n // 10
    for _ in range(16 * scale):
        for _ in range(512):
            p = b.rng.randrange(hot) if b.rng.random() < 0.9 else b.rng.randrange(hot, n)
            b.write(a + p * PAGE)
        b.op("collect")
    return b.trace()


def random_trace(seed: int = 1, n_ops: int = 2000, space: int = 64 * MiB,
                 kinds: tuple[str, ...] = ("anon", "shmem")) -> Trace:
    """A seeded random trace over every operation, valid by construction (it keeps its own
    view of what is mapped and writable)."""
    b = _B(f"random:{seed}", seed)
    rng = b.rng
    a = BASE
    npg = space // PAGE
    maps: dict[int, tuple[int, str]] = {}  # start page -> (npages, prot)
    b.mmap(a, space)
    maps[0] = (npg, "rw")
    b.op("track", addr=a, len=space)

    def writable_page() -> int | None:
        cands = [s for s, (n, p) in maps.items() if p == "rw"]
        if not cands:
            return None
        s = rng.choice(cands)
        return s + rng.randrange(maps[s][0])

    for _ in range(n_ops):
        r = rng.random()
        if r < 0.6:
            p = writable_page()
            if p is not None:
                b.write(a + p * PAGE, tids=[0, 1] if rng.random() < 0.05 else [0])
        elif r < 0.68:
            s = rng.choice(list(maps))
            b.op("read", addr=a + (s + rng.randrange(maps[s][0])) * PAGE, len=PAGE)
        elif r < 0.76:
            s = rng.choice(list(maps))
            n = maps[s][0]
            lo = rng.randrange(n)
            ln = min(n - lo, rng.randrange(1, 16))
            b.op("madvise", addr=a + (s + lo) * PAGE, len=ln * PAGE,
                 advice=rng.choice(["DONTNEED", "DONTNEED", "FREE", "PAGEOUT"]))
        elif r < 0.80:
            b.op("reclaim", addr=a, len=space)
        elif r < 0.84:
            # replace a piece with a fresh mapping (anon or shmem), MAP_FIXED
            s = rng.randrange(npg - 16)
            ln = rng.randrange(1, 16)
            kind = rng.choice(kinds)
            b.mmap(a + s * PAGE, ln * PAGE, kind, shared=kind == "shmem")
            _carve(maps, s, ln, "rw")
        elif r < 0.88:
            s = rng.choice(list(maps))
            n = maps[s][0]
            lo = rng.randrange(n)
            ln = min(n - lo, rng.randrange(1, 16))
            prot = rng.choice(["r", "rw"])
            b.op("mprotect", addr=a + (s + lo) * PAGE, len=ln * PAGE, prot=prot)
            _carve(maps, s + lo, ln, prot)
        elif r < 0.90:
            b.op("fork")
        elif r < 0.92:
            b.op("child_exit")
        else:
            b.op("collect")
    b.op("collect")
    return b.trace()


def _carve(maps: dict[int, tuple[int, str]], s: int, ln: int, prot: str) -> None:
    """Update the generator's view: pages [s, s+ln) now have ``prot``."""
    for st in sorted(maps):
        n, p = maps[st]
        if st < s + ln and s < st + n:
            del maps[st]
            if st < s:
                maps[st] = (s - st, p)
            if st + n > s + ln:
                maps[s + ln] = (st + n - s - ln, p)
    maps[s] = (ln, prot)


WORKLOADS: dict[str, Callable[[int, int], Trace]] = {
    "merge": merge,
    "mprotect": mprotect,
    "malloc": malloc,
    "shmem-reclaim": shmem_reclaim,
    "fork": fork,
    "fork-shared": fork_shared,
    "sparse": sparse,
    "random": random_writes,
    "hotcold": hotcold,
}


def load(spec: str, seed: int = 1, scale: int = 1) -> Trace | TraceFile:
    """``name`` (built-in), ``random:SEED[:NOPS]`` (seeded random trace) or ``trace:FILE``
    (streamed from the file each time it is replayed)."""
    if spec.startswith("trace:"):
        return Trace.open(spec[6:])
    if spec.startswith("random:"):
        parts = spec.split(":")
        try:
            s = int(parts[1])
            n = int(parts[2]) if len(parts) > 2 else 2000
        except ValueError:
            raise errors.InvalidTarget(f"bad workload {spec!r}",
                                       hint="random:SEED or random:SEED:NOPS") from None
        return random_trace(s, n)
    fn = WORKLOADS.get(spec)
    if fn is None:
        raise errors.InvalidTarget(
            f"unknown workload {spec!r}",
            hint=f"one of: {', '.join(WORKLOADS)}, random:SEED[:NOPS], trace:FILE")
    return fn(seed, scale)
