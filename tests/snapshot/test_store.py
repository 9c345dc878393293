"""The directory store: permissions, atomic publish, lock, garbage collection, hashes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from snaphelp import chunk_files, store

from writewatch import WriteWatchError
from writewatch.snapshot import (
    BlobNotFound,
    DirStore,
    SnapshotError,
    Snapshots,
    Snapshotter,
    StoreLocked,
)
from writewatch.snapshot.format import CODEC_ZSTD, decode_chunk, encode_chunk, hasher

# bytearrays are not page aligned: tracking their covering pages is what these tests want
pytestmark = pytest.mark.filterwarnings("ignore::writewatch.PartialPageWarning")


def test_modes_are_private(tmp_path, tracking):
    os.umask(0o022)
    d = tmp_path / "s"
    buf = bytearray(8 * 4096)
    with Snapshotter(buf, d) as s:
        s.save()
    for root, dirs, files in os.walk(d):
        for n in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, n)).st_mode) == 0o700, n
        for n in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, n)).st_mode) == 0o600, n
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_blob_round_trip_and_missing(tmp_path):
    s = store(tmp_path / "s")
    s.put("chunks/abcd", [b"x" * 10, b"y"])
    assert bytes(s.get("chunks/abcd")) == b"x" * 10 + b"y"
    assert s.exists("chunks/abcd") and s.list("chunks/") == ["chunks/abcd"]
    with pytest.raises(BlobNotFound):
        s.get("chunks/ffff")
    s.delete("chunks/abcd")
    assert not s.exists("chunks/abcd")
    with pytest.raises(SnapshotError):
        s.put("../etc/passwd", b"")
    with pytest.raises(SnapshotError):
        s.put("snapshots/a/b", b"")


def test_commit_leaves_no_temporaries(tmp_path):
    s = DirStore(tmp_path / "s")  # with fsync
    s.commit("snapshots/000001", b"manifest")
    assert os.listdir(tmp_path / "s" / "tmp") == []
    assert bytes(s.get("snapshots/000001")) == b"manifest"


def test_not_a_store(tmp_path):
    with pytest.raises(SnapshotError, match="not a snapshot store"):
        DirStore(tmp_path, create=False)
    with pytest.raises(WriteWatchError):
        Snapshots(tmp_path / "nothing")


def test_lock_excludes_a_second_writer(tmp_path, tracking):
    buf = bytearray(4 * 4096)
    with Snapshotter(buf, tmp_path / "s") as s:
        s.save()
        with pytest.raises(StoreLocked, match="locked by another writer"):
            Snapshotter(bytearray(4096), tmp_path / "s")
        # readers need no lock
        assert len(Snapshots(tmp_path / "s").list()) == 1
    with Snapshotter(buf, tmp_path / "s") as s2:  # released on close
        info = s2.save()  # the same buffer: its chain continues
        assert (info.kind, info.delta_by) == ("delta", "content")
        # only the partial pages at its ends (heap around the bytearray) may differ
        assert info.pages <= 2


def test_lock_across_processes(tmp_path):
    d = tmp_path / "s"
    s = store(d)
    s.acquire()
    code = ("import sys\nfrom writewatch.snapshot import DirStore, StoreLocked\n"
            f"s = DirStore({str(d)!r})\n"
            "try:\n    s.acquire()\nexcept StoreLocked as e:\n    print(e); sys.exit(3)\n")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert f"pid {os.getpid()}" in r.stdout
    s.release()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_gc_removes_only_unreferenced(tmp_path, tracking):
    d = str(tmp_path / "s")
    buf = np.zeros(16 * 4096, np.uint8)
    buf[:] = 1
    with Snapshotter(buf, store(d), chunk_size=4096) as s:
        s.save()
        buf[:4096] = 2
        s.save()
        store_obj = s.store
        store_obj.put("chunks/" + "ab" * 16, b"orphan")
        store_obj.flush()
        before = len(chunk_files(d))
        assert s.snapshots.gc() == 1
        assert len(chunk_files(d)) == before - 1
        assert s.verify().ok


@pytest.mark.parametrize("hash_name", ["xxh3_128", "blake2b-128"])
def test_hashes(tmp_path, hash_name, tracking):
    buf = bytearray(os.urandom(8 * 4096))
    with Snapshotter(buf, store(tmp_path / "s", hash=hash_name)) as s:
        info = s.save()
        buf[0] ^= 1
        s.save()
        out = bytearray(len(buf))
        s.restore(info, into=out)
        buf[0] ^= 1
        assert out == buf
    with pytest.raises(SnapshotError, match="hashes with"):
        store(tmp_path / "s", hash="blake2b-128" if hash_name == "xxh3_128" else "xxh3_128")


def test_chunk_codec_round_trip():
    h = hasher("xxh3_128")
    raw = bytes(4096) + os.urandom(4096)
    for codec in (0, CODEC_ZSTD):
        blob = b"".join(bytes(p) for p in encode_chunk(raw, codec))
        assert bytes(decode_chunk(blob, h(raw), h)) == raw
    # incompressible data is stored raw even when zstd is asked
    noise = os.urandom(4096)
    assert encode_chunk(noise, CODEC_ZSTD)[1] is noise
