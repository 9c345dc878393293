"""The line-protocol driver of the process-tracking targets (tests/targets/writer.c and
pywriter.py), importable from tests (a conftest module name is not unique across folders)."""

from __future__ import annotations

import os
import subprocess


class Driver:
    """Talks the line protocol of tests/targets/writer.c and pywriter.py."""

    def __init__(self, proc, page_size: int) -> None:  # type: ignore[no-untyped-def]
        self.proc = proc
        self.ps = page_size
        self.base = 0
        self.npages = 0

    @classmethod
    def popen(cls, argv: list[str]) -> Driver:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, bufsize=1)
        d = cls(proc, os.sysconf("SC_PAGE_SIZE"))
        d.read_base()
        return d

    def read_base(self) -> None:
        word, base, n, ps = self.line().split()
        assert word == "base", word
        self.base, self.npages, self.ps = int(base, 16), int(n), int(ps)

    def line(self) -> str:
        out = self.proc.stdout.readline()
        if not out:
            raise AssertionError(f"target ended (status {self.proc.poll()})")
        return out.strip()

    def cmd(self, text: str) -> str:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.line() if text != "x" else ""

    def write(self, idx) -> set[int]:  # type: ignore[no-untyped-def]
        idx = [int(i) for i in idx]
        assert self.cmd("w " + " ".join(map(str, idx))) == "ok"
        return {self.base + i * self.ps for i in idx}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("q\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
