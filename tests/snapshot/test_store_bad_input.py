"""Bad input at the snapshot boundaries: typed errors, nothing left open or
running, and one-line errors from the CLI."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import writewatch
from writewatch import WriteWatchError
from writewatch.snapshot import BadStorePath, DirStore, Snapshotter, StoreLocked

PAGE = os.sysconf("SC_PAGE_SIZE")


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def buf() -> np.ndarray:
    b = writewatch.zeros(4 * PAGE)
    b[:] = 1
    return b


@pytest.mark.parametrize("where", ["file", "under-file", "sys", "proc-self", "proc-self-sub",
                                   "empty", "dir-with-files"])
def test_store_paths_that_cannot_be_stores(tmp_path, where, buf) -> None:
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    path = {"file": str(f), "under-file": str(f / "store"), "sys": "/sys/writewatch-store",
            "proc-self": "/proc/self", "proc-self-sub": "/proc/self/store", "empty": "",
            "dir-with-files": str(tmp_path / "full")}[where]
    before = _fds()
    with pytest.raises(WriteWatchError) as err:
        Snapshotter(buf, path)
    assert isinstance(err.value, (BadStorePath, writewatch.PermissionDenied)), err.value
    assert "Errno" not in str(err.value)
    assert _fds() == before
    assert f.read_bytes() == b"x" and os.listdir(tmp_path / "full") == ["notes.txt"]


@pytest.mark.parametrize("chunk_size", [100, 0, -4096, 4097, 1.5, "4096", True])
def test_bad_chunk_size_leaves_nothing_open(tmp_path, chunk_size, buf) -> None:
    before = _fds()
    with pytest.raises(writewatch.InvalidTarget, match="chunk_size"):
        Snapshotter(buf, tmp_path / "s", chunk_size=chunk_size)
    assert _fds() == before
    with Snapshotter(buf, tmp_path / "s") as s:  # not locked by the failed one
        s.save()


@pytest.mark.parametrize("kw", [{"max_pause": 0}, {"max_pause": -1}, {"max_pause": float("nan")},
                                {"max_pause": float("inf")}, {"max_pause": "20ms"},
                                {"precopy_rounds": -1}, {"precopy_seconds": 0},
                                {"level": 999}, {"compress": "lz4"}, {"shared": "maybe"},
                                {"pause": 5}, {"stop": "x"}, {"stop": 1}, {"progress": "x"}])
def test_bad_options_are_refused_before_anything_is_opened(tmp_path, kw, buf) -> None:
    before = _fds()
    with pytest.raises(writewatch.InvalidTarget):
        Snapshotter(buf, tmp_path / "s", **kw)
    assert _fds() == before and not (tmp_path / "s").exists()


def test_a_failing_target_releases_the_lock(tmp_path) -> None:
    before = _fds()
    with pytest.raises(WriteWatchError):
        Snapshotter(object(), tmp_path / "s")
    assert _fds() == before
    s = DirStore(tmp_path / "s")
    s.acquire()  # free
    s.close()


def test_a_snapshotter_never_closed_releases_its_lock_with_a_warning(tmp_path, buf) -> None:
    s = Snapshotter(buf, tmp_path / "s")
    s.save()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        del s
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in got), got
    with Snapshotter(buf, tmp_path / "s") as again:
        again.save()


def test_store_created_by_another_process_meanwhile(tmp_path, monkeypatch) -> None:
    """While this process creates a store, another creates it too and takes its writer lock
    (which empties tmp/): this one ends with the same STORE and then StoreLocked, never an
    error about its own temporary file."""
    d = tmp_path / "s"
    real = DirStore._write_file
    other: list[DirStore] = []

    def write_file(self, path, bufs, exclusive=True):  # type: ignore[no-untyped-def]
        real(self, path, bufs, exclusive)
        if os.path.basename(path).startswith((".STORE", "STORE")) and not other:
            rival = DirStore.__new__(DirStore)
            other.append(rival)
            monkeypatch.setattr(DirStore, "_write_file", real)
            rival.__init__(d)  # type: ignore[misc]
            rival.acquire()
            monkeypatch.setattr(DirStore, "_write_file", write_file)

    monkeypatch.setattr(DirStore, "_write_file", write_file)
    try:
        mine = DirStore(d)
        assert other and mine.hash_name == other[0].hash_name
        with pytest.raises(StoreLocked):
            mine.acquire()
    finally:
        for s in other:
            s.close()


def test_concurrent_store_creation(tmp_path) -> None:
    """Processes creating one new store at the same moment: each gets the store or
    StoreLocked (exit 0 or 3), nothing else."""
    code = ("import sys, time\nfrom writewatch.snapshot import DirStore, StoreLocked\n"
            "t = float(sys.argv[2])\n"
            "while time.time() < t: pass\n"
            "try:\n    s = DirStore(sys.argv[1]); s.acquire(); time.sleep(0.05)\n"
            "except StoreLocked:\n    sys.exit(3)\n")
    import time
    for rnd in range(2):
        start = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"s{rnd}"),
                                   str(start)], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode in (0, 3), err


def _cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "writewatch", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("opts", [["--count", "-1"], ["--keep", "-2"],
                                  ["--precopy-rounds", "-3"], ["--store-file"]])
def test_cli_checks_options_before_starting_the_command(tmp_path, opts) -> None:
    marker = tmp_path / "started"
    store = str(tmp_path / "st")
    if opts == ["--store-file"]:
        (tmp_path / "st").write_text("not a store")
        opts = []
    r = _cli("snapshot", "--store", store, *opts, "--", "touch", str(marker))
    assert r.returncode != 0
    assert not marker.exists(), "the command was started"
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_restore_out_errors(tmp_path, buf) -> None:
    store = str(tmp_path / "st")
    with Snapshotter(buf, store) as s:
        s.save()
    for out in ("/nonexistent-dir/x.bin", str(tmp_path)):
        r = _cli("restore", store, "latest", "--out", out)
        assert r.returncode == 1, r
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "--out" in r.stderr
    r = _cli("restore", store, "latest", "--out", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "img").read_bytes() == bytes(buf)


@pytest.mark.parametrize("keep", [1.5, "2", None, True, 0, -1])
def test_prune_refuses_what_is_not_a_count(tmp_path, keep, buf) -> None:
    with Snapshotter(buf, tmp_path / "s") as s:
        s.save()
        s.save()
        with pytest.raises(writewatch.InvalidTarget, match="keep"):
            s.snapshots.prune(keep)
        assert len(s.snapshots.names()) == 2
