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


def test_a_damaged_manifest_leaves_the_rest_of_the_store_usable(tmp_path, capsys) -> None:
    """One unreadable manifest is listed as damaged; the others restore, a new save works
    (a new chain when the damaged one was the latest) and the CLI says what is wrong."""
    from memutil import require_uffd_async

    from writewatch.cli.__main__ import main
    require_uffd_async()
    r = Region(8)
    try:
        arr = r.array()
        arr[:] = 1
        with Snapshotter(r.span, store(tmp_path)) as s:
            s.save()
            first = arr.copy()
            arr[0] = 2
            s.save()
        latest = manifest_files(str(tmp_path))[-1]
        with open(latest, "r+b") as f:
            f.seek(40)
            b = f.read(1)
            f.seek(40)
            f.write(bytes([b[0] ^ 1]))
        with open(os.path.join(tmp_path, "snapshots", "notes"), "w") as f:
            f.write("not a snapshot")  # ignored: not a snapshot name
        snaps = Snapshots(tmp_path)
        got = snaps.list()
        assert [(i.name, i.kind) for i in got] == [("000001", "full"), ("000002", "damaged")]
        assert "checksum" in got[1].damaged and not got[0].damaged
        assert np.array_equal(snaps.restore(1).data, first)
        with pytest.raises(CorruptSnapshot):
            snaps.restore(2)
        arr[1] = 3
        with Snapshotter(r.span, store(tmp_path)) as s:
            info = s.save()
        assert info.kind == "full" and info.name == "000003"  # a new chain
        assert np.array_equal(Snapshots(tmp_path).restore(3).data, arr)
        assert main(["snapshots", str(tmp_path)]) == 1
        out = capsys.readouterr()
        assert "damaged" in out.out and "Traceback" not in out.out + out.err
        assert main(["snapshots", str(tmp_path), "--verify"]) == 1
        out = capsys.readouterr().out
        assert "damaged: snapshot 000002" in out and "000003" in out
    finally:
        r.unmap()


def test_a_file_where_the_chunk_directory_was(tmp_path) -> None:
    from memutil import require_uffd_async
    require_uffd_async()
    r = Region(4)
    try:
        r.array()[:] = 7
        with Snapshotter(r.span, store(tmp_path)) as s:
            s.save()
    finally:
        r.unmap()
    for d in os.listdir(tmp_path / "chunks"):
        path = tmp_path / "chunks" / d
        for f in os.listdir(path):
            os.unlink(path / f)
        os.rmdir(path)
        path.write_bytes(b"not a directory")
    report = Snapshots(tmp_path).verify()
    assert not report.ok and all("missing" in str(p) for p in report.problems)
    with pytest.raises(CorruptSnapshot, match="missing"):
        Snapshots(tmp_path).restore(1)
