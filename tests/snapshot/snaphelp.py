"""Shared helpers for the snapshot tests."""

from __future__ import annotations

import os

import numpy as np

from writewatch.snapshot import DirStore


def store(path: os.PathLike[str] | str, **kw: object) -> DirStore:
    """A store without fsync (tests do not crash the machine; test_crash.py uses fsync)."""
    return DirStore(path, fsync=False, **kw)  # type: ignore[arg-type]


def chunk_files(path: str) -> list[str]:
    root = os.path.join(path, "chunks")
    return sorted(os.path.join(root, d, n) for d in os.listdir(root)
                  for n in os.listdir(os.path.join(root, d)))


def manifest_files(path: str) -> list[str]:
    root = os.path.join(path, "snapshots")
    return sorted(os.path.join(root, n) for n in os.listdir(root))


def rand_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
