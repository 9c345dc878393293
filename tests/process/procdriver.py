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


class TreeDriver:
    """Talks the line protocol of tests/targets/tree.c: a parent with MAP_SHARED and private
    pages that forks children and relays commands to them."""

    def __init__(self, proc) -> None:  # type: ignore[no-untyped-def]
        self.proc = proc
        word, shared, priv, n, ps = self.line().split()
        assert word == "base", word
        self.shared, self.priv, self.npages, self.ps = int(shared, 16), int(priv, 16), \
            int(n), int(ps)

    @classmethod
    def popen(cls, argv: list[str]) -> TreeDriver:
        return cls(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, bufsize=1))

    def line(self) -> str:
        out = self.proc.stdout.readline()
        if not out:
            raise AssertionError(f"target ended (status {self.proc.poll()})")
        return out.strip()

    def cmd(self, text: str) -> str:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        got = self.line()
        assert not got.startswith("error"), got
        return got

    def pages(self, base: int, idx) -> set[int]:  # type: ignore[no-untyped-def]
        return {base + int(i) * self.ps for i in idx}

    @staticmethod
    def _via(op: str, who: int | list[int] | None) -> str:
        """Relay ``op`` down a path of children (a pid, or [child, grandchild, ...])."""
        path = [] if who is None else [who] if isinstance(who, int) else list(who)
        for pid in reversed(path):
            op = f"c {pid} {op}"
        return op

    def write(self, idx, who: int | list[int] | None = None,  # type: ignore[no-untyped-def]
              private: bool = False) -> set[int]:
        op = ("p" if private else "w") + " " + " ".join(map(str, idx))
        assert self.cmd(self._via(op, who)) == "ok"
        return self.pages(self.priv if private else self.shared, idx)

    def fork(self, who: int | list[int] | None = None) -> int:
        word, pid = self.cmd(self._via("F", who)).split()
        assert word == "child"
        return int(pid)

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
