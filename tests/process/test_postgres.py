"""PostgreSQL under pgbench: a real program made of processes that all write one
``shared_buffers`` mapping (MAP_SHARED anonymous memory). Debian's ``postgresql`` package
(.ci/run installs it); the cluster is made by initdb in a temporary directory as the
``postgres`` user and listens on a unix socket only."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import pytest

import writewatch
from writewatch.snapshot import DirStore, Snapshotter

pytestmark = [pytest.mark.usefixtures("uffd_async"), pytest.mark.slow]


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    return os.path.dirname(found[-1])


class Cluster:
    def __init__(self, root: str, bindir: str) -> None:
        self.root, self.bin = root, bindir
        self.data = os.path.join(root, "data")
        self.sock = os.path.join(root, "sock")

    def run(self, *argv: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                              capture_output=True, text=True, cwd=self.root, **kw)

    def tool(self, name: str, *args: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return self.run(os.path.join(self.bin, name), *args, **kw)

    def pgbench(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["runuser", "-u", "postgres", "--",
                                 os.path.join(self.bin, "pgbench"), "-h", self.sock,
                                 *args, "postgres"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.root)

    @property
    def postmaster(self) -> int:
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root (to run PostgreSQL as the postgres user) and runuser")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    # outside pytest's own temporary directory, which only root may enter
    root = tempfile.mkdtemp(prefix="writewatch-pg-")
    os.chmod(root, 0o755)
    c = Cluster(root, bindir)
    os.mkdir(c.sock)
    for d in (root, c.sock):
        shutil.chown(d, "postgres", "postgres")
    c.tool("initdb", "-D", c.data, "--auth=trust", "-U", "postgres", "--no-sync")
    opts = (f"-c listen_addresses='' -c unix_socket_directories={c.sock} "
            "-c shared_buffers=32MB -c max_connections=20 -c fsync=off")
    c.tool("pg_ctl", "-D", c.data, "-o", opts, "-w", "-l", os.path.join(root, "log"), "start")
    try:
        c.tool(os.path.join(bindir, "pgbench"), "-h", c.sock, "-i", "-s", "2", "postgres")
        yield c
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(bindir, "pg_ctl"),
                        "-D", c.data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _shared_buffers(pid: int) -> tuple[int, int]:
    """The largest MAP_SHARED anonymous mapping of a PostgreSQL process: shared_buffers."""
    best = (0, 0)
    for m in writewatch.kernel.procfs.read_maps(pid):
        if m.shared and m.path.startswith("/dev/zero") and m.end - m.start > best[1] - best[0]:
            best = (m.start, m.end)
    assert best[1] > best[0], "no shared_buffers mapping"
    return best


def test_monitor_the_tree_under_pgbench(cluster: Cluster) -> None:
    pm = cluster.postmaster
    with writewatch.attach(pm, tree=True, follow_forks=True) as t:
        assert len(t.processes) >= 4  # checkpointer, bgwriter, walwriter, autovacuum...
        t.collect()
        bench = cluster.pgbench("-c", "4", "-T", "3")
        seen: set[int] = set()
        shared_written = 0
        lo, hi = _shared_buffers(pm)
        deadline = time.monotonic() + 30
        while bench.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            got = t.collect()
            seen |= set(t.last.forked)
            shared_written += len(got.clip(lo, hi))
            assert t.last.union_pages >= len(got.clip(lo, hi))
        out, err = bench.communicate(timeout=60)
        assert bench.returncode == 0, err
        t.collect()
        # the backends forked for pgbench's connections were followed; their writes to
        # shared_buffers are the postmaster's memory changing
        print(f"pgbench: {out.splitlines()[-1] if out else ''}; forks seen {len(seen)}, "
              f"shared_buffers pages written {shared_written}")
        assert len(seen) >= 4, seen
        assert shared_written > 0
        assert not t.last.untracked


def test_tree_snapshots_under_pgbench_are_exact(cluster: Cluster, tmp_path) -> None:
    """Every snapshot of the whole database, taken while pgbench runs, restores each
    process's memory — shared_buffers included — exactly as a full read taken in the same
    pause (save(verify=True) makes that read and compares)."""
    pm = cluster.postmaster
    t = writewatch.attach(pm, tree=True, follow_forks=True)
    bench = cluster.pgbench("-c", "3", "-T", "4")
    try:
        with Snapshotter(t, DirStore(tmp_path / "pg", fsync=False)) as snap:
            infos = []
            for _ in range(4):
                time.sleep(0.5)
                infos.append(snap.save(verify=True))
            for i in infos:
                print(i)  # pytest -s shows what each save stored and how long it paused
            assert infos[0].kind == "full" and all(i.kind == "delta" for i in infos[1:])
            img = snap.restore(infos[-1], pid=pm)
            lo, hi = _shared_buffers(pm)
            assert any(r.start == lo and r.end == hi for r in img.regions)
            assert all(i.pages < infos[0].pages for i in infos[1:]), infos
            assert np.asarray(img.data).nbytes > hi - lo
    finally:
        bench.communicate(timeout=60)
        t.close()
    assert bench.returncode == 0


def test_precopy_snapshots_under_pgbench_are_exact(cluster: Cluster, tmp_path) -> None:
    """With a pause budget the database is read while it runs, and stopped only for what it
    wrote meanwhile: each snapshot still equals full reads of every process taken in that
    final stop (save(verify=True)). Whether the budget is met depends on the machine; what
    is asserted is exactness, and that pre-copy ran (rounds, bytes read while running)."""
    pm = cluster.postmaster
    t = writewatch.attach(pm, tree=True, follow_forks=True)
    bench = cluster.pgbench("-c", "3", "-T", "4")
    try:
        with Snapshotter(t, DirStore(tmp_path / "pg", fsync=False), max_pause=0.02) as snap:
            infos = []
            for _ in range(3):
                time.sleep(0.3)
                infos.append(snap.save(verify=True))
            for i in infos:
                print(i)
            base = snap.snapshots.manifest(infos[0].name).stats["precopy"]
            assert base["rounds"] >= 1 and base["running_bytes"] > 0, base
            assert all(i.converged is not None for i in infos)
    finally:
        bench.communicate(timeout=60)
        t.close()
    assert bench.returncode == 0
