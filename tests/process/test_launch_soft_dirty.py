"""launch() where soft-dirty is the mechanism for other processes (no uffd-async: Linux 6.1 in
the kernel matrix): the program runs before it can be armed, so the first collect reports
every writable mapping whole, and later collects report its writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import writewatch

PROG = ("import mmap, sys, time\n"
        "m = mmap.mmap(-1, 64 * 4096)\n"
        "print(hex(__import__('ctypes').addressof(__import__('ctypes').c_char.from_buffer(m))),"
        " flush=True)\n"
        "sys.stdin.readline()\n"
        "m[4096 * 7] = 1\n"
        "print('written', flush=True)\n"
        "sys.stdin.readline()\n")


def test_launch_with_soft_dirty_reports_everything_once_then_writes() -> None:
    f = writewatch.features()
    if not f.backends["soft-dirty"].usable:
        pytest.skip(f"soft-dirty backend unusable here: {f.backends['soft-dirty'].detail}")
    t = writewatch.launch([sys.executable, "-c", PROG], backend="soft-dirty",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc = t.process
        addr = int(proc.stdout.readline(), 16)
        first = t.collect()
        assert any("armed after" in r for r in t.last.reasons)
        assert addr in first and addr + 7 * 4096 in first  # reported whole, once
        time.sleep(0.05)
        t.collect()  # settle: what the interpreter wrote meanwhile
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "written"
        got = t.collect()
        assert addr + 7 * 4096 in got and addr + 3 * 4096 not in got
        proc.stdin.write("end\n")
        proc.stdin.flush()
        assert proc.wait() == 0
    finally:
        t.close()
        if t.process.poll() is None:
            os.kill(t.process.pid, signal.SIGKILL)
            t.process.wait()
