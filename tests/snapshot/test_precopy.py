"""Pre-copy (``max_pause``): pages are read while the target runs and re-read when written,
and the image is still exactly the memory at the final stop: each save is compared with a
full read taken during that stop (``save(verify=True)``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from snaphelp import store

import writewatch
from writewatch.kernel.procfs import thread_states as _thread_states
from writewatch.snapshot import Snapshots, Snapshotter

pytestmark = pytest.mark.usefixtures("uffd_async")

SPINNER = Path(__file__).resolve().parent / "targets" / "spinner.c"


@pytest.fixture(scope="session")
def spinner_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/snapshot/targets/spinner.c")
    out = tmp_path_factory.mktemp("spinner") / "spinner"
    subprocess.run([cc, "-O1", "-Wall", "-o", str(out), str(SPINNER)], check=True)
    return str(out)


class Spinner:
    def __init__(self, binary: str, npages: int, hot: int, delay_us: int) -> None:
        self.proc = subprocess.Popen([binary, str(npages), str(hot), str(delay_us)],
                                     stdout=subprocess.PIPE, text=True)
        word, addr, n, ps = self.proc.stdout.readline().split()  # type: ignore[union-attr]
        assert word == "ready"
        self.addr, self.npages, self.ps = int(addr, 16), int(n), int(ps)
        self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None and all(s not in "Tt" for s in _thread_states(self.pid))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def spin(spinner_bin: str) -> Iterator[Any]:
    made: list[Spinner] = []

    def start(npages: int, hot: int = 0, delay_us: int = 0) -> Spinner:
        s = Spinner(spinner_bin, npages, hot, delay_us)
        made.append(s)
        return s

    yield start
    for s in made:
        s.close()


def test_precopy_converges_and_is_exact_under_a_writer(spin, tmp_path) -> None:
    """A 64 MiB process that keeps writing 64 hot pages: the first round reads it all while
    it runs, the next finds only the hot pages written meanwhile, which fit the budget."""
    sp = spin(16384, hot=64)
    with Snapshotter(writewatch.attach(sp.pid), store(tmp_path / "s"), max_pause=0.02) as s:
        # what the budget is compared with, fixed so that the outcome does not depend on the
        # machine's speed: 1 ms per stop, 1 GB/s (64 MiB then needs 67 ms > 20 ms; what 64
        # hot pages can dirty meanwhile, 0.26 ms)
        s.budget.stop_cost, s.budget.read_rate = 1e-3, 1e9
        base = s.save(verify=True)
        assert base.kind == "full" and base.rounds >= 1 and base.converged is True, base
        m = s.snapshots.manifest(base.name)
        assert m.stats["precopy"]["why"] == "converged"
        assert base.paused_bytes <= 2 * 64 * sp.ps  # the hot pages, at most twice over
        assert base.pages >= sp.npages  # every page of the buffer is in the base
        for _ in range(3):
            s.budget.stop_cost, s.budget.read_rate = 1e-3, 1e9
            d = s.save(verify=True)  # raises when the image differs from the stop's memory
            assert d.kind == "delta" and d.delta_by == "tracking" and d.converged is True
            assert d.pages <= 64 * (d.rounds + 2)
        assert s.verify().ok
    assert sp.running()


def test_no_convergence_is_reported_and_still_exact(spin, tmp_path) -> None:
    """Every page rewritten all the time and a budget nothing can meet: the rounds end
    (their limit, or no progress), the target is stopped anyway, the image is exact."""
    sp = spin(2048)
    with Snapshotter(writewatch.attach(sp.pid), store(tmp_path / "s"), max_pause=1e-6,
                     precopy_rounds=3) as s:
        for _ in range(2):
            s.budget.stop_cost = 0.0  # a free stop: only the writes keep it from converging
            info = s.save(verify=True)
            assert info.converged is False and 1 <= info.rounds <= 3, info
            why = s.snapshots.manifest(info.name).stats["precopy"]["why"]
            assert why in ("rounds", "no progress", "time"), why
            assert info.pause is not None and info.paused_bytes > 0
    assert sp.running()


WRITER = Path(__file__).resolve().parents[1] / "targets" / "writer.c"


@pytest.fixture(scope="session")
def writer_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/targets/writer.c")
    out = tmp_path_factory.mktemp("writer") / "writer"
    subprocess.run([cc, "-O1", "-Wall", "-pthread", "-o", str(out), str(WRITER)], check=True)
    return str(out)


def test_pages_written_between_rounds_are_read_again(writer_bin, tmp_path, monkeypatch) -> None:
    """Deterministic rounds: after each read while the target runs, the target writes pages
    (some read already, some not): the next collect reports them, and the image at the
    final stop has their last bytes. A round that kept a stale copy would differ from the
    full read of the stop."""
    from writewatch.snapshot import precopy
    p = subprocess.Popen([writer_bin, "interactive", "1024"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, bufsize=1)

    def cmd(line: str) -> str:
        p.stdin.write(line + "\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]
        return p.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert p.stdout.readline().startswith("base")  # type: ignore[union-attr]
        assert cmd("w " + " ".join(map(str, range(1024)))) == "ok"
        rounds = []
        real = precopy.PageArena.read

        def read(self, src, pages, *, strict, **kw):  # type: ignore[no-untyped-def]
            n = real(self, src, pages, strict=strict, **kw)
            if not strict:  # the target writes right after each round's read
                k = len(rounds)
                rounds.append(n)
                assert cmd("w " + " ".join(str((k * 97 + i * 13) % 1024)
                                           for i in range(20))) == "ok"
            return n

        monkeypatch.setattr(precopy.PageArena, "read", read)
        with Snapshotter(writewatch.attach(p.pid), store(tmp_path / "s"), max_pause=1e-6,
                         precopy_rounds=4) as s:
            for _ in range(3):
                before = len(rounds)
                s.budget.stop_cost = 0.0  # a free stop: the rounds run to their limit
                info = s.save(verify=True)
                assert info.rounds == len(rounds) - before >= 2, (info, rounds)
                assert info.reread_bytes > 0
    finally:
        p.kill()
        p.wait()
        p.stdin.close()  # type: ignore[union-attr]
        p.stdout.close()  # type: ignore[union-attr]


def test_stop_and_copy_reads_everything_in_the_pause(spin, tmp_path) -> None:
    sp = spin(1024, hot=16)
    with Snapshotter(writewatch.attach(sp.pid), store(tmp_path / "s")) as s:
        info = s.save(verify=True)
        assert (info.rounds, info.converged, info.reread_bytes) == (0, None, 0)
        assert info.paused_bytes >= sp.npages * sp.ps


def test_precopy_of_own_buffer_with_a_pause(tmp_path) -> None:
    """A buffer of this process written by a thread that holds a lock while it writes: with
    ``pause=lock`` the final read happens with the lock held, and the image equals the
    buffer as it was then (copied in the same hold)."""
    buf = writewatch.zeros(4 << 20)
    buf[:] = 1
    lock = threading.Lock()
    stop = threading.Event()
    truth: list[np.ndarray] = []

    def writer() -> None:
        i = 0
        rng = np.random.default_rng(1)
        while not stop.is_set():
            with lock:
                for p in rng.integers(0, buf.size // 4096, 16).tolist():
                    buf[p * 4096 + i % 4096] = i % 251 + 1
                    i += 1

    class Pause:
        def __enter__(self) -> None:
            lock.acquire()

        def __exit__(self, *exc: object) -> None:
            truth.append(buf.copy())  # the memory at the final read, in the same hold
            lock.release()

    t = threading.Thread(target=writer)
    t.start()
    try:
        with Snapshotter(buf, store(tmp_path / "s"), max_pause=0.005, pause=Pause) as s:
            infos = [s.save() for _ in range(3)]
            assert all(i.pause is not None and i.converged is not None for i in infos)
            for info, want in zip(infos, truth, strict=True):
                assert np.array_equal(s.restore(info).data, want), info.name
    finally:
        stop.set()
        t.join()


KILLER = textwrap.dedent(r"""
    import os, signal, sys
    import writewatch
    from writewatch.snapshot import DirStore, Snapshotter, precopy
    reads = -1
    real = precopy.PageArena.read
    def read(self, src, pages, *, strict, **kw):
        global reads
        if not strict and reads >= 0:
            reads += 1
            if reads == 2:  # the second round of the second save, while the target runs
                print("killing", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return real(self, src, pages, strict=strict, **kw)
    precopy.PageArena.read = read
    s = Snapshotter(writewatch.attach(int(sys.argv[1])), DirStore(sys.argv[2]),
                    max_pause=1e-6, precopy_rounds=5)
    print(s.save().name, flush=True)  # a first snapshot, then one killed mid pre-copy
    reads = 0
    s.save()
""")


def test_sigkill_during_a_precopy_round(spin, tmp_path) -> None:
    """The snapshotter dies between two rounds: the target runs on (it was not stopped, and
    its userfaultfd went with the tracker), the store holds the earlier snapshot whole and
    nothing of the killed one, and a new writer takes the store over."""
    sp = spin(1024)
    d = str(tmp_path / "s")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", KILLER, str(sp.pid), d], capture_output=True,
                       text=True, timeout=120, env=env)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert p.stdout.split() == ["000001", "killing"], p.stdout
    deadline = time.monotonic() + 10
    while not sp.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sp.running(), "target left stopped"
    reader = Snapshots(d)
    assert reader.names() == ["000001"] and reader.verify().ok
    with Snapshotter(writewatch.attach(sp.pid), d) as s:
        info = s.save(verify=True)
        # the chain continues by content from the surviving snapshot
        assert (info.parent, info.delta_by) == ("000001", "content")
    assert sp.running()


def test_a_stop_dearer_than_the_budget_ends_the_rounds(spin, tmp_path) -> None:
    """When stopping and collecting alone cost more than the budget, rounds stop as soon as
    what is left is small next to that cost: it is reported, and the image is exact."""
    sp = spin(4096, hot=8)
    with Snapshotter(writewatch.attach(sp.pid), store(tmp_path / "s"), max_pause=1e-3) as s:
        s.budget.stop_cost, s.budget.read_rate = 0.05, 1e9  # 50 ms per stop, 16 MiB: 17 ms
        info = s.save(verify=True)
        why = s.snapshots.manifest(info.name).stats["precopy"]["why"]
        assert (info.converged, why) == (False, "stop cost") and info.rounds >= 1, info
