"""Arbitrary arguments to the public API and the CLI: each call either succeeds or raises a
:class:`writewatch.WriteWatchError`, and leaves no descriptor, no child and no
write-protected memory behind."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import writewatch
from writewatch.cli.__main__ import main as cli_main

PAGE = os.sysconf("SC_PAGE_SIZE")
# WRITEWATCH_EXAMPLES=1000 for a longer search
EXAMPLES = settings(max_examples=int(os.environ.get("WRITEWATCH_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# A tracked buffer and a canary the tests write after every example: a call that left
# either write-protected (synchronous uffd-wp with no handler) would hang or fault here.
BUF = writewatch.zeros(16 * PAGE)
ADDR = BUF.ctypes.data


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    with open(f"/proc/self/task/{os.getpid()}/children") as f:
        return {int(p) for p in f.read().split()}


@contextlib.contextmanager
def _leaves_nothing() -> Iterator[None]:
    fds, kids = _fds(), _children()
    yield
    BUF[:] = 1
    BUF[:] = 0
    assert _fds() - fds == set(), "descriptors left open"
    for _ in range(50):  # a helper that has detached is reaped by a thread in a moment
        if not _children() - kids:
            break
        time.sleep(0.1)
    assert _children() - kids == set(), "children left behind"


def _call(fn: Callable[[], Any], close: Callable[[Any], None] = lambda t: t.close()) -> None:
    with _leaves_nothing():
        try:
            result = fn()
        except writewatch.WriteWatchError:
            return
        close(result)


ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(
    [0, 1, PAGE, ADDR, ADDR + 1, ADDR + PAGE, 2**47, 2**63, 2**64 - PAGE, 2**64]))
odd = st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
                st.lists(st.integers(), max_size=2), st.binary(max_size=4),
                st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)))
values = st.one_of(ints, odd)
spans = st.tuples(values, values) | st.tuples(ints, ints) | st.tuples(
    st.sampled_from([ADDR, ADDR + PAGE]), st.integers(-PAGE, 40 * PAGE))
targets = st.one_of(spans, values, st.sampled_from(
    [BUF, BUF[1:], BUF[::2], BUF.reshape(4, -1), bytes(PAGE), memoryview(bytes(PAGE)),
     np.zeros(3), bytearray(0)]))
backends = st.one_of(st.sampled_from(
    ["auto", "uffd-async", "uffd-wp-sync", "soft-dirty", "model", "", "AUTO"]), values)


@EXAMPLES
@given(st.lists(targets, min_size=0, max_size=3), backends)
def test_track(objs: list[Any], backend: Any) -> None:
    def run() -> Any:
        t = writewatch.track(*objs, backend=backend)
        with t:
            BUF[0] = 1
            t.collect()
        return t
    _call(run)


@EXAMPLES
@given(values | st.integers(-5, 5), values)
def test_collect(max_pages: Any, reset: Any) -> None:
    with _leaves_nothing(), writewatch.track(BUF) as t:
        BUF[:: PAGE] = 3
        try:
            got = t.collect(max_pages=max_pages, reset=reset)
        except writewatch.WriteWatchError:
            return
        assert isinstance(got, writewatch.Pages)
        if isinstance(max_pages, (int, np.integer)) and not isinstance(max_pages, bool) \
                and 0 < max_pages < 16:
            assert len(got) == max_pages  # never an empty answer while pages are pending


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


@pytest.fixture(scope="module")
def sleeper() -> Iterator[int]:
    p = _sleeper()
    yield p.pid
    p.kill()
    p.wait()


pids = st.one_of(st.integers(-(2**40), 2**40).filter(
    lambda p: not (0 < p < 2**22 and os.path.exists(f"/proc/{p}"))), odd)


@EXAMPLES
@given(pids, st.booleans(), st.booleans(), st.sampled_from([None, "/", "/nonexistent", "", 0]))
def test_attach(pid: Any, tree: bool, follow: bool, cgroup: Any) -> None:
    _call(lambda: writewatch.attach(pid, tree=tree, follow_forks=follow, cgroup=cgroup))


@EXAMPLES
@given(tree=st.booleans(), follow=st.booleans())
def test_attach_a_real_process(tree: bool, follow: bool, sleeper: int) -> None:
    _call(lambda: writewatch.attach(sleeper, tree=tree, follow_forks=follow))


argvs = st.one_of(
    odd, st.lists(st.one_of(st.sampled_from(["true", "/bin/true", "false", "/", "/etc/hostname",
                                             ""]), st.text(max_size=6), odd), max_size=3))


def _reap(t: Any) -> None:
    t.close()
    t.process.kill()
    t.process.wait()
    for stream in (t.process.stdin, t.process.stdout, t.process.stderr):
        if stream is not None:
            stream.close()


@EXAMPLES
@given(argvs, st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                                   max_size=2), odd),
       st.one_of(st.none(), st.sampled_from(["/", "/nonexistent", "", "/etc/hostname"]), odd),
       st.sampled_from([None, subprocess.PIPE, subprocess.DEVNULL]))
def test_launch(argv: Any, env: Any, cwd: Any, stdout: Any) -> None:
    _call(lambda: writewatch.launch(argv, env=env, cwd=cwd, stdout=stdout), _reap)


@EXAMPLES
@given(st.one_of(st.sampled_from(["", "/proc/self/x", "/sys/x", "FILE", "FILE/x", "DIR",
                                  "DIR/new"]), odd),
       st.one_of(st.sampled_from([PAGE, 64 * PAGE, 100, 0, -PAGE, PAGE + 1]), values),
       st.sampled_from([None, "zstd", "gzip", 3]),
       st.one_of(st.integers(-5, 30), values))
def test_snapshotter(tmp_path_factory: pytest.TempPathFactory, store: Any, chunk: Any,
                     compress: Any, level: Any) -> None:
    base = tmp_path_factory.mktemp("store")
    (base / "FILE").write_text("x")
    if isinstance(store, str) and store.startswith(("FILE", "DIR")):
        store = str(base / store)

    def run() -> Any:
        s = writewatch.Snapshotter(BUF, store, chunk_size=chunk, compress=compress,
                                   level=level)
        with s:
            s.snapshot()
        return s
    with contextlib.chdir(base):  # relative store names land in the scratch directory
        _call(run)


flags = st.sampled_from(["-d", "-i", "--json", "--count", "--keep", "--store", "--out", "-f",
                         "--tree", "--no-follow-forks", "--shared", "--plot", "--backend"])
words = st.one_of(st.sampled_from(["nan", "inf", "-1", "0", "1", "0.01", "1e9", "DIR", "FILE",
                                   "/nonexistent/x", "latest", "--", "true"]),
                  st.text(alphabet="abc-=0.", max_size=4))
commands = st.sampled_from(["run", "attach", "snapshot", "snapshots", "restore", "diff",
                            "features", "nonsense"])


def _word(word: str, base: Any) -> str:
    if word in ("DIR", "FILE"):
        return str(base / word)
    if word.isdigit() and os.path.exists(f"/proc/{word}"):
        return "999999999"  # no attaching to whatever runs here
    return word


@EXAMPLES
@given(commands, st.lists(st.one_of(flags, words), max_size=5),
       st.sampled_from([[], ["--", "true"]]))
def test_cli(tmp_path_factory: pytest.TempPathFactory, command: str, args: list[str],
             tail: list[str]) -> None:
    base = tmp_path_factory.mktemp("cli")
    (base / "FILE").write_text("x")
    argv = [command] + [_word(a, base) for a in args] + tail
    err = io.StringIO()
    with _leaves_nothing(), contextlib.chdir(base), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # argparse: usage error
            code = exc.code if isinstance(exc.code, int) else 2
    assert isinstance(code, int) and not math.isnan(code)
    assert "Traceback" not in err.getvalue(), err.getvalue()
