"""Safety: a target is never left stopped, with changed registers or memory, or holding a
userfaultfd — even when the tracker is SIGKILLed at any moment, mid-injection included.

The target (tests/targets/writer.c ``selfcheck``) checks its own memory and registers and
every system-call result for its whole run while trackers are started and killed under it."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from writewatch.kernel import procfs
from writewatch.kernel import ptrace as P

pytestmark = pytest.mark.usefixtures("uffd_async")

# Imports once, then forks one tracker per "go PID" line: a fresh interpreter per kill would
# spend its time importing (seconds on a slow machine) instead of attaching. A forked tracker
# prints "attached PID SECONDS" once attach() returned, then collects until killed. The
# server is a child subreaper: the ptrace helper of a killed tracker (which may not even have
# seized the target yet) is reparented to it, and "reap PID" answers once the tracker and
# every such helper have exited, so nothing can still trace the target afterwards.
TRACKERS = """
import ctypes, os, sys, time, traceback
import writewatch.process as p
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0):
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
def say(*words):  # one write per line: the forked trackers share the pipe
    os.write(1, (" ".join(map(str, words)) + "\\n").encode())
say("ready")
for line in sys.stdin:
    word, arg = line.split()
    if word == "go":
        child = os.fork()
        if child == 0:
            try:
                t0 = time.monotonic()
                t = p.attach(int(arg))
                say("attached", os.getpid(), time.monotonic() - t0)
                while True:
                    t.collect()
                    time.sleep(0.002)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        say("forked", child)
    elif word == "reap":
        status = os.waitpid(int(arg), 0)[1]
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
        say("reaped", arg, status)
"""


class _Lines:
    """The stdout lines of a child, read by a thread so that every wait has a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.other: list[str] = []  # lines skipped by expect()
        self._q: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put("")

    def expect(self, word: str, timeout: float = 120.0) -> list[str]:
        """The next line starting with ``word``, split."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {word!r} line within {timeout:.0f} s; "
                                     f"other output: {self.other}") from None
            if not line:
                raise AssertionError(f"ended (status {self.proc.wait()}) before a {word!r} "
                                     f"line; other output: {self.other}")
            parts = line.split()
            if parts[:1] == [word]:
                return parts
            self.other.append(line)

    def close(self) -> None:
        """Kill and reap the child, close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        # a helper forked by the tracker holds the pipe until it has restored the target
        self._thread.join(30)
        if not self._thread.is_alive():
            self.proc.stdout.close()


def _end(target: subprocess.Popen[str] | None) -> None:
    if target is not None and target.poll() is None:
        target.kill()
        target.wait()


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


def _released(pid: int, timeout: float = 30.0) -> bool:
    """No tracer, no ptrace stop, no userfaultfd left in the target."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = _status(pid)
        threads = P.list_threads(pid)
        stopped = [t for t in threads if procfs.thread_state(pid, t) in ("t", "T")]
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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    server = _Lines(subprocess.Popen([sys.executable, "-c", TRACKERS], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env))
    target: subprocess.Popen[str] | None = None
    try:
        server.expect("ready")  # imported before the target's clock starts
        seconds = 10.0
        started = time.monotonic()
        target = subprocess.Popen([writer_bin, "selfcheck", "512", str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        assert target.stdout.readline().startswith("ready")
        rng = random.Random(4)
        kills, longest, span = 0, 0.0, 0.0
        out = None
        # each iteration must be over (tracker killed, target checked) before the target's
        # self-check ends by itself
        while time.monotonic() + 2 * longest + 1.0 < started + seconds:
            t0 = time.monotonic()
            server.proc.stdin.write(f"go {target.pid}\n")
            child = int(server.expect("forked")[1])
            if not span:
                # the first tracker is killed once attached, while collecting; its attach
                # time sets the range of the later kill points, so that they cover every
                # phase of attach at this machine's speed (~20-40 ms on a desktop)
                span = max(0.06, 1.5 * float(server.expect("attached")[2]))
                time.sleep(0.05)
            else:
                time.sleep(rng.uniform(0, span))
            os.kill(child, signal.SIGKILL)
            server.proc.stdin.write(f"reap {child}\n")
            status = int(server.expect("reaped")[2])
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
                f"the tracker failed before it was killed (target status {target.poll()}): " \
                f"{server.other}"
            kills += 1
            if target.poll() is not None:
                out = target.communicate()[0]
                # an exit is the self-check's own end only once its time is up, with PASS
                assert time.monotonic() - started >= seconds, \
                    f"the target died at kill {kills}: status {target.returncode}, {out!r}"
                break
            assert _released(target.pid), "the target was left traced, stopped or with a uffd"
            longest = max(longest, time.monotonic() - t0)
        if out is None:
            out = target.communicate(timeout=seconds + 60)[0]
        assert target.returncode == 0, out
        assert out.startswith("PASS"), out
        assert kills >= 3
    finally:
        server.close()
        _end(target)


STOPPED_THEN_KILLED = """
import sys, time
from writewatch.kernel import inject
def hold(fd):
    print("stopped", flush=True)
    time.sleep(60)
print("ready", flush=True)
inject.steal_userfaultfd(int(sys.stdin.readline()), while_stopped=hold)
"""


def test_tracker_killed_while_target_stopped(writer_bin: str) -> None:
    """The widest window: every thread of the target stopped, one with injected registers
    history, the descriptor created; the caller dies. The helper resumes the target."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    started = time.monotonic()
    tr = _Lines(subprocess.Popen([sys.executable, "-c", STOPPED_THEN_KILLED],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 bufsize=1, env=env))
    target: subprocess.Popen[str] | None = None
    try:
        tr.expect("ready")  # imported: it steals as soon as it reads the pid
        # The target must still run at the release check, after the steal and the helper's
        # restore (~0.1 s on a desktop, ~1 s in a TCG guest): they slow down with the
        # machine, as the tracker's start-up did (~0.4 s and ~10 s).
        seconds = 1.5 + (time.monotonic() - started)
        target = subprocess.Popen([writer_bin, "selfcheck", "64", f"{seconds:.2f}"],
                                  stdout=subprocess.PIPE, text=True)
        assert target.stdout.readline().startswith("ready")
        tr.proc.stdin.write(f"{target.pid}\n")
        tr.expect("stopped")
        states = {procfs.thread_state(target.pid, t) for t in P.list_threads(target.pid)}
        assert states == {"t"}, states  # really stopped, all threads
        tr.proc.kill()
        tr.proc.wait()
        assert _released(target.pid)
        out = target.communicate(timeout=seconds + 60)[0]
        assert target.returncode == 0 and out.startswith("PASS"), out
    finally:
        tr.close()
        _end(target)


def _controlled_selfcheck(writer_bin: str, npages: int) -> subprocess.Popen[str]:
    """``writer selfcheck NPAGES -1``: checks until told to stop (no duration to outlast)."""
    target = subprocess.Popen([writer_bin, "selfcheck", str(npages), "-1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              bufsize=1)
    assert target.stdout.readline().startswith("ready")
    return target


def _rounds(target: subprocess.Popen[str]) -> int:
    target.stdin.write("r\n")
    word, n = target.stdout.readline().split()
    assert word == "rounds", word
    return int(n)


def _checks_on_then_passes(target: subprocess.Popen[str], more: int = 20,
                           timeout: float = 60.0) -> None:
    """The target goes on with ``more`` rounds of its self-check after the release, then
    stops on request and reports PASS."""
    first = now = _rounds(target)
    deadline = time.monotonic() + timeout
    while now < first + more and time.monotonic() < deadline:
        time.sleep(0.02)
        now = _rounds(target)
    out = target.communicate("q\n", timeout=timeout)[0]
    assert target.returncode == 0 and out.startswith("PASS"), out
    assert now >= first + more, f"{now - first} rounds in {timeout:.0f} s after the release"


def test_close_leaves_target_running_unprotected(writer_bin: str) -> None:
    """After close (and after the tracker object is dropped), the target runs its full
    self-check: nothing stays write-protected or stopped."""
    from writewatch.process import attach
    target = _controlled_selfcheck(writer_bin, 256)
    try:
        for _ in range(3):
            t = attach(target.pid)
            t.collect()
            time.sleep(0.05)
            assert len(t.collect()) > 0
            t.close()
            assert _released(target.pid)
        _checks_on_then_passes(target)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()


def test_helper_process_survives_caller_and_restores(writer_bin: str) -> None:
    """The ptrace helper leaves the caller's process group and blocks SIGINT/SIGTERM, so
    ^C on the terminal (SIGINT to the group) cannot stop it half way."""
    from writewatch.kernel import inject
    target = _controlled_selfcheck(writer_bin, 64)
    try:
        seen: dict[str, int] = {}

        def while_stopped(fd: int) -> None:
            # every thread of the target is in a ptrace stop now
            states = {procfs.thread_state(target.pid, t) for t in P.list_threads(target.pid)}
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
        _checks_on_then_passes(target)
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
