"""SIGKILL during save: every earlier snapshot restores exactly, no half snapshot is visible,
and the next writer can take the store over."""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from writewatch.snapshot import Snapshots, Snapshotter

CHILD = os.path.join(os.path.dirname(__file__), "crash_child.py")


def _run(store, npages, steps, env=None):
    p = subprocess.Popen([sys.executable, CHILD, str(store), str(npages), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def _run_killed(store, npages, steps, rnd, env=None):
    """Run the child and SIGKILL it from outside at a random point of its saves: once it has
    printed line k (k random in 1..11: snapshot k-1 is complete, snapshot k is being made;
    the child prunes after saves 3, 7 and 11), after a random part of the mean time between
    its lines. Timed on the child's own output, so the kill lands among the saves whatever
    its start-up time and the machine's speed."""
    k = rnd.randrange(1, min(12, steps))
    p = subprocess.Popen([sys.executable, CHILD, str(store), str(npages), str(steps)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, **(env or {})})
    out, err = b"", b""
    fds = {p.stdout.fileno(), p.stderr.fileno()}
    arrived: list[float] = []  # when each line was read
    killed = False
    deadline = time.monotonic() + 120
    try:
        while fds:
            ready, _, _ = select.select(list(fds), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"the child did not end within 120 s: {out!r} {err!r}")
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    fds.discard(fd)
                elif fd == p.stderr.fileno():
                    err += chunk
                else:
                    out += chunk
                    arrived += [time.monotonic()] * chunk.count(b"\n")
                    if not killed and len(arrived) > k:
                        # line 0 comes after start-up; lines 1..k one save apart
                        time.sleep(rnd.uniform(0, (arrived[k] - arrived[0]) / k))
                        p.send_signal(signal.SIGKILL)
                        killed = True
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    return rc, out.decode(), err.decode()


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
        rc, out, err = _run_killed(store, 4096, 40, rnd, env={"SEED": str(i)})
        assert rc == -signal.SIGKILL, err  # killed within its first 12 of 40 steps
        if os.path.exists(os.path.join(store, "STORE")):
            seen += len(_check(store, out))
            _take_over(store)
    assert seen, "no run got as far as one snapshot"
