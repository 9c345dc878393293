"""Safety: a target is never left stopped, with changed registers or memory, or holding a
userfaultfd — even when the tracker is SIGKILLed at any moment, mid-injection included.

The target (tests/targets/writer.c ``selfcheck``) checks its own memory and registers and
every system-call result for its whole run while trackers are started and killed under it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from writewatch.kernel import ptrace as P

pytestmark = pytest.mark.usefixtures("uffd_async")

TRACKER = """
import sys, time
import writewatch.process as p
pid = int(sys.argv[1])
print("ready", flush=True)
t = p.attach(pid)
while True:
    t.collect()
    time.sleep(0.002)
"""


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _uffds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "userfaultfd" in link:
            out.append(fd)
    return out


def _released(pid: int, timeout: float = 5.0) -> bool:
    """No tracer, no ptrace stop, no userfaultfd left in the target."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = _status(pid)
        threads = P.list_threads(pid)
        stopped = [t for t in threads if P.thread_state(pid, t) in ("t", "T")]
        tracers = [t for t in threads
                   if _status_of_thread(pid, t).get("TracerPid", "0") != "0"]
        if st.get("TracerPid") == "0" and not stopped and not tracers and not _uffds(pid):
            return True
        time.sleep(0.01)
    return False


def _status_of_thread(pid: int, tid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def test_tracker_sigkilled_at_random_points(writer_bin: str) -> None:
    seconds = 10.0
    target = subprocess.Popen([writer_bin, "selfcheck", "512", str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        rng = random.Random(4)
        kills = 0
        deadline = time.monotonic() + seconds - 2.5
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        while time.monotonic() < deadline:
            tr = subprocess.Popen([sys.executable, "-c", TRACKER, str(target.pid)],
                                  stdout=subprocess.PIPE, text=True, env=env)
            assert tr.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0, 0.06))  # attach takes ~20-40 ms: hits every phase
            tr.send_signal(signal.SIGKILL)
            tr.wait()
            tr.stdout.close()
            kills += 1
            assert target.poll() is None, "the target died"
            assert _released(target.pid), "the target was left traced, stopped or with a uffd"
        out = target.communicate(timeout=seconds + 10)[0]
        assert target.returncode == 0, out
        assert out.startswith("PASS"), out
        assert kills >= 3
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()


STOPPED_THEN_KILLED = """
import sys, time
from writewatch.kernel import inject
def hold(fd):
    print("stopped", flush=True)
    time.sleep(60)
inject.steal_userfaultfd(int(sys.argv[1]), while_stopped=hold)
"""


def test_tracker_killed_while_target_stopped(writer_bin: str) -> None:
    """The widest window: every thread of the target stopped, one with injected registers
    history, the descriptor created; the caller dies. The helper resumes the target."""
    target = subprocess.Popen([writer_bin, "selfcheck", "64", "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        tr = subprocess.Popen([sys.executable, "-c", STOPPED_THEN_KILLED, str(target.pid)],
                              stdout=subprocess.PIPE, text=True, env=env)
        assert tr.stdout.readline().strip() == "stopped"
        states = {P.thread_state(target.pid, t) for t in P.list_threads(target.pid)}
        assert states == {"t"}, states  # really stopped, all threads
        tr.kill()
        tr.wait()
        tr.stdout.close()
        assert _released(target.pid)
        out = target.communicate(timeout=20)[0]
        assert target.returncode == 0 and out.startswith("PASS"), out
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()


def test_close_leaves_target_running_unprotected(writer_bin: str) -> None:
    """After close (and after the tracker object is dropped), the target runs its full
    self-check: nothing stays write-protected or stopped."""
    from writewatch.process import attach
    target = subprocess.Popen([writer_bin, "selfcheck", "256", "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        for _ in range(3):
            t = attach(target.pid)
            t.collect()
            time.sleep(0.05)
            assert len(t.collect()) > 0
            t.close()
            assert _released(target.pid)
        out = target.communicate(timeout=20)[0]
        assert target.returncode == 0 and out.startswith("PASS"), out
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()


def test_helper_process_survives_caller_and_restores(writer_bin: str) -> None:
    """The ptrace helper leaves the caller's process group and blocks SIGINT/SIGTERM, so
    ^C on the terminal (SIGINT to the group) cannot stop it half way."""
    from writewatch.kernel import inject
    target = subprocess.Popen([writer_bin, "selfcheck", "64", "1.0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().startswith("ready")
        seen: dict[str, int] = {}

        def while_stopped(fd: int) -> None:
            # every thread of the target is in a ptrace stop now
            states = {P.thread_state(target.pid, t) for t in P.list_threads(target.pid)}
            seen["states"] = len(states - {"t"})
            seen["fd"] = fd

        res = inject.steal_userfaultfd(target.pid, while_stopped=while_stopped)
        try:
            assert seen["states"] == 0
            assert res.armed_stopped
            assert "userfaultfd" in os.readlink(f"/proc/self/fd/{res.fd}")
        finally:
            os.close(res.fd)
        assert _released(target.pid)
        out = target.communicate(timeout=20)[0]
        assert target.returncode == 0 and out.startswith("PASS"), out
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
