"""Targets with many short-lived threads, and signals arriving while the target is stopped."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from writewatch.kernel import inject, procfs
from writewatch.process import attach

pytestmark = pytest.mark.usefixtures("uffd_async")

CHURN = textwrap.dedent("""
    import sys, threading, time
    buf = bytearray(4096 * 64)
    def w(i):
        for k in range(200):
            buf[(i * 7 + k) % 64 * 4096] = k & 255
    stop = threading.Event()
    # a thread blocked in read(2) on a pipe: interrupted by every attach, restarted after it
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    deadline = time.monotonic() + 600  # the test says stop long before
    rounds = 0
    while not stop.is_set() and time.monotonic() < deadline:
        ts = [threading.Thread(target=w, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        rounds += 1
    print("PASS", rounds, flush=True)
""")


def test_thread_churn_during_attach() -> None:
    """Eight attaches, two collects each, while the target creates and ends threads all the
    time: every attach succeeds and the target goes on churning until told to stop (no fixed
    duration: under TCG an attach takes about a second)."""
    p = subprocess.Popen([sys.executable, "-c", CHURN], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        for _ in range(8):
            with attach(p.pid) as t:
                t.collect()
                time.sleep(0.02)
                t.collect()
            assert p.poll() is None
        out = p.communicate("stop\n", timeout=120)[0]
        assert p.returncode == 0 and out.startswith("PASS"), out
        assert int(out.split()[1]) > 0, out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


SIGNALLED = textwrap.dedent("""
    import signal, sys, time
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    print("ready", flush=True)
    end = time.monotonic() + 10
    while not got and time.monotonic() < end:
        time.sleep(0.001)
    print("usr1" if got else "none", flush=True)
""")


def test_signal_sent_while_stopped_is_delivered() -> None:
    """A signal arriving during the injection is held back (the signal-delivery stop is
    resumed without it) and sent again after detaching: the target's handler runs."""
    p = subprocess.Popen([sys.executable, "-c", SIGNALLED], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"

        def while_stopped(fd: int) -> None:
            os.kill(p.pid, signal.SIGUSR1)
            time.sleep(0.05)

        res = inject.steal_userfaultfd(p.pid, while_stopped=while_stopped)
        os.close(res.fd)
        assert p.stdout.readline().strip() == "usr1"
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_attach_from_a_worker_thread(c_target) -> None:  # type: ignore[no-untyped-def]
    import threading
    out: list[object] = []

    def work() -> None:
        try:
            with attach(c_target.proc.pid) as t:
                t.collect()
                logged = c_target.write([3, 4])
                got = t.collect()
                out.append(all(a in got for a in logged))
        except BaseException as exc:
            out.append(exc)

    th = threading.Thread(target=work)
    th.start()
    th.join(30)
    assert out == [True], out


#: numbers of the blocking calls the target makes (arch/x86/entry/syscalls/syscall_64.tbl;
#: include/uapi/asm-generic/unistd.h for aarch64): glibc's nanosleep is clock_nanosleep
BLOCKED_IN = {"x86_64": {"s": {35, 230}, "p": {0}}, "aarch64": {"s": {101, 115}, "p": {63}}}


def _wait_blocked(pid: int, nrs: set[int], timeout: float = 60.0) -> None:
    """Until /proc/PID/syscall shows the main thread inside one of the calls ``nrs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
        if first.isdigit() and int(first) in nrs:
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} not blocked in {sorted(nrs)} after {timeout:.0f} s")


@pytest.mark.parametrize("call", ["s", "p"], ids=["nanosleep", "pipe-read"])
def test_interrupted_system_call_goes_on_as_the_kernel_would(c_target, call: str) -> None:
    """A thread blocked in a system call when the attach stops it (PTRACE_INTERRUPT makes
    the call return -ERESTART*) is, after the detach, back in that call: no EINTR, no
    leaked -ERESTART*, and a relative sleep (-ERESTART_RESTARTBLOCK) goes on with the time
    it had left (restart_syscall) instead of starting over. ``p``: the main thread reads a
    pipe (-ERESTARTSYS) that another thread, itself in nanosleep, writes to after MS."""
    if platform.machine() not in BLOCKED_IN:
        pytest.skip(f"no system call numbers for {platform.machine()}")
    ms = 5000
    t0 = time.monotonic()
    c_target.proc.stdin.write(f"{call} {ms}\n")
    c_target.proc.stdin.flush()
    _wait_blocked(c_target.proc.pid, BLOCKED_IN[platform.machine()][call])
    time.sleep(2.0)  # far enough into the call that starting it over would show (+2 s)
    with attach(c_target.proc.pid) as t:
        t.collect()
    detached = (time.monotonic() - t0) * 1e3
    word, took, rc, err = c_target.line().split()
    assert (word, rc, err) == ({"s": "slept", "p": "read"}[call], "0" if call == "s" else "1",
                               "0"), "the interrupted call did not go on"
    # done when it would have been without the attach, or right after the detach when that
    # came later; a restart from the beginning takes ms + 2000
    assert ms - 50 <= int(took) < max(ms, detached) + 1500, (took, detached)


def test_a_thread_that_exits_while_being_seized_is_skipped(monkeypatch) -> None:
    """ptrace_attach answers EPERM for a thread that started exiting after it was listed
    (kernel/ptrace.c: task->exit_state): the stop goes on without it. The same EPERM for a
    thread that is still alive is a refusal and is raised."""
    from writewatch import errors
    from writewatch.kernel import ptrace as P

    p = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); "
                          "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        ghost = 1 << 30  # listed, then refused, then gone: what a racing exit looks like
        real_list, real_seize, real_state = P.list_threads, P.seize, procfs.thread_state
        monkeypatch.setattr(P, "list_threads", lambda pid: [*real_list(pid), ghost])

        def seize(tid: int, options: int = 0) -> None:
            if tid == ghost:
                raise errors.PermissionDenied(f"ptrace(SEIZE, {tid}) failed", errno=1)
            real_seize(tid, options)

        monkeypatch.setattr(P, "seize", seize)
        with inject.ThreadGroupStop(p.pid) as st:
            assert set(st.threads) == {p.pid}
            assert procfs.thread_state(p.pid, p.pid) == "t"
        monkeypatch.setattr(procfs, "thread_state", lambda pid, tid: "S" if tid == ghost
                            else real_state(pid, tid))
        with pytest.raises(errors.PermissionDenied), inject.ThreadGroupStop(p.pid):
            pass
        deadline = time.monotonic() + 30
        while real_state(p.pid, p.pid) in ("t", "T") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert real_state(p.pid, p.pid) not in ("t", "T")  # released both times
        with open(f"/proc/{p.pid}/status") as f:
            assert "TracerPid:\t0\n" in f.read()
    finally:
        p.kill()
        p.wait()
