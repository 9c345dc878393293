"""Targets with many short-lived threads, and signals arriving while the target is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from writewatch.kernel import inject
from writewatch.process import attach

pytestmark = pytest.mark.usefixtures("uffd_async")

CHURN = textwrap.dedent("""
    import threading, time
    buf = bytearray(4096 * 64)
    def w(i):
        for k in range(200):
            buf[(i * 7 + k) % 64 * 4096] = k & 255
    print("ready", flush=True)
    stop = time.monotonic() + 2.5
    rounds = 0
    while time.monotonic() < stop:
        ts = [threading.Thread(target=w, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        rounds += 1
    print("PASS", rounds, flush=True)
""")


def test_thread_churn_during_attach() -> None:
    p = subprocess.Popen([sys.executable, "-c", CHURN], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        done = 0
        while p.poll() is None and done < 8:
            try:
                with attach(p.pid) as t:
                    t.collect()
                    time.sleep(0.02)
                    t.collect()
                done += 1
            except Exception:
                if p.poll() is not None:
                    break
                raise
        out = p.communicate(timeout=30)[0]
        assert p.returncode == 0 and out.startswith("PASS"), out
        assert done >= 3
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
