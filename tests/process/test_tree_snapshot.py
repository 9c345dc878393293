"""Snapshots of process trees: every member at one pause, shared memory stored once, each
member's restored image equal to a full read of it taken in that same pause; a process whose
shared memory an untracked process writes is refused, or paused with it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from procdriver import TreeDriver

import writewatch
from writewatch.snapshot import DirStore, SharedWithUntracked, Snapshotter
from writewatch.snapshot.source import process_vm_readv

pytestmark = pytest.mark.usefixtures("uffd_async")


def _writable(pid: int) -> list[tuple[int, int]]:
    from writewatch.kernel import procfs
    return [(m.start, m.end) for m in procfs.read_maps(pid)
            if m.perms[:2] == "rw" and m.path not in procfs.SPECIAL]


def _full_reads(pids: list[int], into: dict[int, tuple[list[tuple[int, int]], bytes]]) -> None:
    for pid in pids:
        runs = _writable(pid)
        arr = np.array(runs, np.uint64)
        buf = np.empty(int((arr[:, 1] - arr[:, 0]).sum()), np.uint8)
        process_vm_readv(pid, arr, buf)
        into[pid] = (runs, buf.tobytes())


def _check(snap: Snapshotter, info, truth) -> None:  # type: ignore[no-untyped-def]
    for pid, (runs, data) in truth.items():
        img = snap.restore(info, pid=pid)
        assert [(r.start, r.end) for r in img.regions] == runs, pid
        assert img.data.tobytes() == data, f"snapshot {info.name}, pid {pid}"


def test_tree_snapshots_equal_full_reads_at_the_same_pause(tree_target: TreeDriver,
                                                           tmp_path) -> None:
    d = tree_target
    child = d.fork()
    t = writewatch.attach(d.proc.pid, tree=True, follow_forks=True)
    with Snapshotter(t, DirStore(tmp_path / "s", fsync=False)) as snap:
        src = snap.source
        assert src.kind == "tree"
        infos, truths = [], []
        for step in range(4):
            if step == 2:
                child2 = d.fork()  # a member joins between two saves
                d.write([50 + step], who=child2)
            d.write([step, 10 + step])
            d.write([20 + step], who=child)
            d.write([30 + step], who=child, private=True)
            truth: dict = {}
            src.on_pause = lambda s, truth=truth: _full_reads(list(t.processes), truth)
            infos.append(snap.save())
            truths.append(truth)
        assert infos[0].kind == "full" and all(i.kind == "delta" for i in infos[1:])
        # deltas hold what was written, shared pages once
        assert all(i.pages < infos[0].pages for i in infos[1:]), infos
        for info, truth in zip(infos, truths, strict=True):
            assert len(truth) >= 2
            _check(snap, info, truth)
        assert snap.verify().ok
    t.close()


def test_process_sharing_memory_with_an_untracked_writer(tree_argv: list[str],
                                                         tmp_path) -> None:
    """A child outside the tracked set writes the root's shared memory: a snapshot of the
    root alone would not be one moment of it. Refused by default; with shared="pause" the
    writer is stopped too and the image is exact."""
    d = TreeDriver.popen([*tree_argv, "32"])
    try:
        child = d.fork()
        with writewatch.attach(d.proc.pid) as t, \
                Snapshotter(t, DirStore(tmp_path / "a", fsync=False)) as snap:
            with pytest.raises(SharedWithUntracked) as err:
                snap.save()
            assert child in err.value.pids
        t = writewatch.attach(d.proc.pid)
        with Snapshotter(t, DirStore(tmp_path / "b", fsync=False), shared="pause") as snap:
            for step in range(3):
                d.write([step + 1], who=child)
                truth: dict = {}
                snap.source.on_pause = lambda s, truth=truth: _full_reads([d.proc.pid], truth)
                info = snap.save()
                _check(snap, info, truth)
        # the writer was resumed
        assert d.write([9], who=child)
    finally:
        d.close()


def test_snapshot_cli_tree(tree_argv: list[str], tmp_path) -> None:
    d = TreeDriver.popen([*tree_argv, "32"])
    try:
        child = d.fork()
        d.write([1], who=child)
        store = str(tmp_path / "st")
        p = subprocess.run([sys.executable, "-m", "writewatch", "snapshot", "--tree",
                            str(d.proc.pid), "--store", store, "--every", "100ms",
                            "--count", "3"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert p.returncode == 0, p.stderr
        from writewatch.snapshot import Snapshots
        s = Snapshots(store)
        assert len(s.names()) == 3 and s.verify().ok
        img = s.restore("latest", pid=child)
        assert img.regions
    finally:
        d.close()


def test_tree_precopy_rounds_are_exact(tree_target: TreeDriver, tmp_path, monkeypatch) -> None:
    """Pre-copy of a whole tree: after each round read while every member runs, members write
    shared and private pages; all members are then stopped together and each one's image
    equals a full read of it in that stop (save(verify=True))."""
    from writewatch.snapshot import precopy
    d = tree_target
    child = d.fork()
    real = precopy.PageArena.read
    k = [0]

    def read(self, src, pages, *, strict, **kw):  # type: ignore[no-untyped-def]
        n = real(self, src, pages, strict=strict, **kw)
        if not strict:
            k[0] += 1
            d.write([k[0] % 64, (k[0] * 7) % 64])
            d.write([(k[0] * 3) % 64], who=child)
            d.write([(k[0] * 5) % 64], who=child, private=True)
        return n

    monkeypatch.setattr(precopy.PageArena, "read", read)
    t = writewatch.attach(d.proc.pid, tree=True, follow_forks=True)
    with Snapshotter(t, DirStore(tmp_path / "s", fsync=False), max_pause=1e-6,
                     precopy_rounds=3) as snap:
        assert snap.source.kind == "tree"
        for _ in range(3):
            before = k[0]
            snap.budget.stop_cost = 0.0  # a free stop: the rounds run to their limit
            info = snap.save(verify=True)
            assert info.rounds == k[0] - before >= 2 and info.converged is False, info
        assert snap.verify().ok
    t.close()
