"""The machine the kernel tests run on computes correctly: under an emulator (the kernel
matrix's qemu TCG guests) a wrong instruction emulation would fail tests for reasons that
have nothing to do with the kernel. qemu 7.2's AVX2 emulation misorders numpy's AVX2
argsort, which broke the page mapping of process snapshots in the 6.1 guest
(tools/kernel_matrix.py turns AVX2 off)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.kernel
@pytest.mark.parametrize("n", [100, 1000, 5000])
def test_numpy_sorts_correctly(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.integers(0, 1 << 62, n, dtype=np.int64)
    assert a[np.argsort(a)].tolist() == sorted(a.tolist())
    p = rng.permutation(n)
    assert (np.argsort(p)[p] == np.arange(n)).all()
    d = rng.integers(0, 5, (n, 2)).astype(np.uint64).view("V16").ravel()
    _, first, inv = np.unique(d, return_index=True, return_inverse=True)
    assert (d[first[inv]] == d).all()
