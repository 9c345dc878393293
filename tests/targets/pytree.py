"""Python twin of tests/targets/tree.c (same line protocol): a parent with MAP_SHARED and
private pages that forks children (os.fork, as multiprocessing's fork start method does) and
relays commands to them.

    python pytree.py NPAGES [SHMPATH]
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import sys

PS = mmap.PAGESIZE
N = int(sys.argv[1])
if len(sys.argv) > 2:
    fd = os.open(sys.argv[2], os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, N * PS)
    shared = mmap.mmap(fd, N * PS)
else:
    shared = mmap.mmap(-1, N * PS, flags=mmap.MAP_SHARED)
private = mmap.mmap(-1, N * PS, flags=mmap.MAP_PRIVATE)
kids: dict[int, tuple[int, object]] = {}  # pid -> (command fd, answer file)


def addr(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def write(buf: mmap.mmap, args: list[str]) -> None:
    for a in args:
        i = int(a)
        if 0 <= i < N:
            buf[i * PS + i % 64] = (buf[i * PS + i % 64] + 1) % 256


def spawn() -> int:
    c_r, c_w = os.pipe()
    a_r, a_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(c_w)
        os.close(a_r)
        kids.clear()
        with os.fdopen(c_r) as cmds:
            for line in cmds:
                if line.startswith("x"):
                    os.write(a_w, b"ok\n")
                os.write(a_w, (handle(line.split()) + "\n").encode())
        os._exit(0)
    os.close(c_r)
    os.close(a_w)
    kids[pid] = (c_w, os.fdopen(a_r))
    return pid


def handle(cmd: list[str]) -> str:
    op, args = cmd[0], cmd[1:]
    if op == "w":
        write(shared, args)
        return "ok"
    if op == "p":
        write(private, args)
        return "ok"
    if op == "F":
        return f"child {spawn()}"
    if op == "c":
        pid = int(args[0])
        if pid not in kids:
            return f"error no child {pid}"
        c_w, answers = kids[pid]
        os.write(c_w, (" ".join(args[1:]) + "\n").encode())
        return answers.readline().strip()  # type: ignore[attr-defined]
    if op == "k":
        pid = int(args[0])
        c_w, answers = kids.pop(pid)
        os.close(c_w)
        os.waitpid(pid, 0)
        answers.close()  # type: ignore[attr-defined]
        return "ok"
    if op == "s":
        pid = os.fork()
        if pid == 0:
            write(shared, args)
            os._exit(0)
        os.waitpid(pid, 0)
        return f"ok {pid}"
    if op == "x":
        os.execv("/bin/sleep", ["sleep", "30"])
    return "error unknown command"


print(f"base {addr(shared):#x} {addr(private):#x} {N} {PS}", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words or words[0] == "q":
        break
    print(handle(words), flush=True)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
