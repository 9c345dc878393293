"""SIGKILL during save: every earlier snapshot restores exactly, no half snapshot is visible,
and the next writer can take the store over."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from writewatch.snapshot import Snapshots, Snapshotter

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")


def _run(store, npages, steps, env=None, kill_after=None):
    p = subprocess.Popen([sys.executable, CHILD, str(store), str(npages), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    if kill_after is not None:
        time.sleep(kill_after)
        p.send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def _check(store, out):
    expected = {}
    for line in out.splitlines():
        a, _, b = line.partition(" ")
        if a.isdigit():
            expected[f"{int(a) + 1:06d}"] = b
    reader = Snapshots(store)
    names = reader.names()
    report = reader.verify()
    assert report.ok, report.problems
    for n in names:
        assert n in expected, f"snapshot {n} visible but never started"
        got = hashlib.sha256(reader.restore(n).data).hexdigest()
        assert got == expected[n], f"snapshot {n} restores other bytes"
    assert os.path.exists(os.path.join(store, "snapshots")) and all(
        not n.startswith(".") for n in os.listdir(os.path.join(store, "snapshots")))
    return names


def _take_over(store):
    """The lock died with the writer; a new writer cleans its temporaries."""
    import mmap
    buf = mmap.mmap(-1, 4096)
    with Snapshotter(buf, store) as s:
        assert os.listdir(os.path.join(store, "tmp")) == []
        s.save()
    buf.close()


@pytest.fixture
def calls_per_run(tmp_path, tracking):
    rc, out, err = _run(tmp_path / "probe", 64, 6, env={"KILL_AT": "0"})
    assert rc == 0, err
    return int(out.split()[-1])


def test_kill_at_each_kind_of_store_call(tmp_path, calls_per_run):
    rnd = random.Random(7)
    points = sorted(rnd.sample(range(1, calls_per_run), min(12, calls_per_run - 1)))
    for k in points:
        store = str(tmp_path / f"s{k}")
        rc, out, err = _run(store, 64, 6, env={"KILL_AT": str(k),
                                               "ZSTD": "1" if k % 2 else ""})
        assert rc == -signal.SIGKILL, (k, err)
        if os.path.exists(os.path.join(store, "STORE")):
            _check(store, out)
            _take_over(store)


@pytest.mark.slow
def test_kill_from_outside_at_random_times(tmp_path, tracking):
    rnd = random.Random(11)
    seen = 0
    for i in range(5):
        store = str(tmp_path / f"s{i}")
        rc, out, err = _run(store, 4096, 40, env={"SEED": str(i)},
                            kill_after=rnd.uniform(0.5, 2.5))
        assert rc in (0, -signal.SIGKILL), err
        if os.path.exists(os.path.join(store, "STORE")):
            seen += len(_check(store, out))
            _take_over(store)
    assert seen, "no run got as far as one snapshot: raise the kill delays"
