"""Saves snapshots of a changing buffer until killed. Prints "step sha256" for the memory of
each step before saving it. With KILL_AT=k it SIGKILLs itself at the k-th store syscall
(write, fsync, rename, unlink) instead of waiting to be killed from outside."""

from __future__ import annotations

import hashlib
import os
import signal
import sys

import numpy as np

from writewatch.kernel import _sys
from writewatch.snapshot import DirStore, Snapshotter

store_dir, npages, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kill_at = int(os.environ.get("KILL_AT", "0"))
calls = 0


def counting(fn):
    def wrapper(*a, **kw):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*a, **kw)
    return wrapper


if "KILL_AT" in os.environ:
    for name in ("write", "fsync", "rename", "unlink"):
        setattr(os, name, counting(getattr(os, name)))

PAGE = os.sysconf("SC_PAGE_SIZE")
import mmap  # noqa: E402

addr = _sys.mmap(0, npages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
import ctypes  # noqa: E402

arr = np.ctypeslib.as_array((ctypes.c_uint8 * (npages * PAGE)).from_address(addr))
rng = np.random.default_rng(int(os.environ.get("SEED", "0")))
arr[:] = rng.integers(0, 256, arr.size, dtype=np.uint8)
with Snapshotter((addr, npages * PAGE), DirStore(store_dir), chunk_size=8 * PAGE,
                 compress="zstd" if os.environ.get("ZSTD") else None) as s:
    for step in range(steps):
        if step:
            pages = rng.integers(0, npages, npages // 10)
            for p in pages.tolist():
                arr[p * PAGE:p * PAGE + 64] = rng.integers(0, 256, 64, dtype=np.uint8)
        print(step, hashlib.sha256(arr).hexdigest(), flush=True)
        s.save()
        if step % 4 == 3:
            s.prune(3)
print("done", calls, flush=True)
