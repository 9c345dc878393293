"""Damaged stores: a clear error naming the snapshot and chunk, never wrong bytes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memutil import PAGE, Region
from snaphelp import chunk_files, manifest_files, store

from writewatch.snapshot import CorruptSnapshot, Snapshots, Snapshotter


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A store with a full snapshot and two deltas (raw and zstd chunks), and the bytes
    each must restore to."""
    from memutil import require_uffd_async
    require_uffd_async()
    d = tmp_path_factory.mktemp("corrupt")
    r = Region(64)
    rng = np.random.default_rng(5)
    try:
        arr = r.array()
        arr[:] = rng.integers(0, 4, r.length, dtype=np.uint8)  # compressible
        want = {}
        with Snapshotter(r.span, store(d), compress="zstd", chunk_size=16 * PAGE) as s:
            for _ in range(3):
                want[s.save().name] = arr.copy()
                arr[rng.integers(0, r.length, 20)] = 200
    finally:
        r.unmap()
    pristine = {}
    for p in chunk_files(str(d)) + manifest_files(str(d)):
        with open(p, "rb") as f:
            pristine[p] = f.read()
    return _Saved((str(d), want, pristine))


class _Saved(tuple):
    def __repr__(self) -> str:  # keep hypothesis reports short
        return f"<store {self[0]}>"


def _restore_all(d, want):
    """Restore every snapshot: each either matches exactly or raises CorruptSnapshot."""
    reader = Snapshots(d)
    errors = []
    for name, arr in want.items():
        try:
            img = reader.restore(name)
        except CorruptSnapshot as exc:
            errors.append(exc)
            continue
        assert np.array_equal(img.data, arr), f"snapshot {name} restored wrong bytes"
    return errors


def _damage(path, data, how, pos, value):
    if how == "flip":
        b = bytearray(data)
        b[pos % len(b)] ^= 1 << (value % 8)
        new = bytes(b)
    elif how == "truncate":
        new = data[:pos % len(data)]
    elif how == "extend":
        new = data + bytes([value]) * (1 + pos % 50)
    else:  # zero a stretch
        p = pos % len(data)
        new = data[:p] + bytes(min(64, len(data) - p)) + data[p + 64:]
    with open(path, "wb") as f:
        f.write(new)
    return new != data


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.integers(0, 10**6), how=st.sampled_from(["flip", "truncate", "extend", "zero"]),
       pos=st.integers(0, 10**7), value=st.integers(0, 255))
def test_fuzzed_files_never_restore_wrong_bytes(saved, which, how, pos, value):
    d, want, pristine = saved
    paths = sorted(pristine)
    path = paths[which % len(paths)]
    try:
        changed = _damage(path, pristine[path], how, pos, value)
        errors = _restore_all(d, want)
        if changed:
            assert errors, f"{how} of {path} went unnoticed"
            name = os.path.basename(path)
            for e in errors:
                assert e.snapshot in want
                assert name in (e.chunk, e.snapshot), str(e)
                assert name in str(e)
            assert not Snapshots(d).verify().ok
    finally:
        with open(path, "wb") as f:
            f.write(pristine[path])


def test_every_chunk_bit_flip_is_caught(saved):
    d, want, pristine = saved
    for path in chunk_files(d):
        data = pristine[path]
        for pos in (0, 5, 17, len(data) // 2, len(data) - 1):
            _damage(path, data, "flip", pos, 0)
            errors = _restore_all(d, want)
            assert errors and all(e.chunk == os.path.basename(path) for e in errors)
            report = Snapshots(d).verify()
            assert any(getattr(p, "chunk", None) == os.path.basename(path)
                       for p in report.problems)
        with open(path, "wb") as f:
            f.write(data)
    assert Snapshots(d).verify().ok


def test_missing_chunk_and_parent(saved):
    d, want, pristine = saved
    names = sorted(want)
    path = chunk_files(d)[0]
    os.unlink(path)
    try:
        errors = _restore_all(d, want)
        assert errors and all("missing" in str(e) for e in errors)
    finally:
        with open(path, "wb") as f:
            f.write(pristine[path])
    base = os.path.join(d, "snapshots", names[0])
    os.unlink(base)
    try:
        with pytest.raises(CorruptSnapshot, match=f"parent {names[0]} is missing"):
            Snapshots(d).restore(names[1])
    finally:
        with open(base, "wb") as f:
            f.write(pristine[base])
    assert Snapshots(d).verify().ok
