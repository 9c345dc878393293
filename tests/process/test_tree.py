"""Process trees: forks followed or not, shared memory as one object, members that exit,
processes outside the tracked set. The target (tests/targets/tree.c) has MAP_SHARED and
private pages and forks children on command; every write it makes is logged, so a page it
wrote and the collect did not report is a lost write."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from procdriver import TreeDriver

import writewatch
from writewatch.process import attach

pytestmark = pytest.mark.usefixtures("uffd_async")


def _events() -> None:
    """Fork events need CAP_SYS_PTRACE in the tracker (fs/userfaultfd.c userfaultfd_api)."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff"))
    if not caps >> 19 & 1:
        pytest.skip("UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE")


def _shared(d: TreeDriver) -> writewatch.Pages:
    return writewatch.Pages([(d.shared, d.shared + d.npages * d.ps)], d.ps)


def test_followed_child_writes_shared_memory_reported_exactly(tree_target: TreeDriver) -> None:
    _events()
    d = tree_target
    with attach(d.proc.pid, follow_forks=True) as t:
        assert t.fork_mode == "events"
        t.collect()
        child = d.fork()
        logged = d.write([3, 7, 40], who=child)
        got = t.collect()
        info = t.last
        assert child in info.forked and child in t.processes
        assert logged <= {a for a in logged if a in got}, "lost the child's shared writes"
        # exact: proven by the child's page tables, nothing reported without proof
        assert got & _shared(d) == writewatch.Pages.from_addresses(logged, d.ps)
        assert not (info.conservative & _shared(d)), info.reasons
        per = info.by_process()
        assert logged <= {a for a in logged if a in per[child]}
        # the child's private writes are its own, not the parent's
        mine = d.write([5], who=child, private=True)
        got = t.collect()
        assert not (mine & {a for a in mine if a in got})
        assert mine <= {a for a in mine if a in t.last.by_process()[child]}


def test_shared_page_counted_once_in_the_union(tree_target: TreeDriver) -> None:
    _events()
    d = tree_target
    with attach(d.proc.pid, follow_forks=True) as t:
        child = d.fork()
        t.collect()
        d.write([1, 2])
        d.write([2, 3], who=child)
        t.collect()
        info = t.last
        shared = _shared(d)
        assert len(info.by_process()[d.proc.pid] & shared) == 3
        assert len(info.by_process()[child] & shared) == 3
        per_sum = sum(len(p) for p in info.by_process().values())
        assert info.union_pages < per_sum
        assert info.union_pages >= 3


def test_grandchild_followed(tree_target: TreeDriver) -> None:
    _events()
    d = tree_target
    with attach(d.proc.pid, follow_forks=True) as t:
        child = d.fork()
        t.collect()
        grand = d.fork(who=child)
        got_pid = grand
        t.collect()
        assert got_pid in t.processes
        logged = d.write([9], who=[child, grand])
        got = t.collect()
        assert logged <= {a for a in logged if a in got}
        assert not (t.last.conservative & _shared(d))


def test_unfollowed_child_is_flagged_never_missed(tree_target: TreeDriver) -> None:
    """follow_forks=False: the child runs untracked; its writes to the shared mapping cannot
    be seen, so the mapping is reported whole, saying which process may have written it."""
    d = tree_target
    with attach(d.proc.pid) as t:
        t.collect()
        child = d.fork()
        logged = d.write([4], who=child)
        got = t.collect()
        info = t.last
        assert logged <= {a for a in logged if a in got}
        assert _shared(d) <= info.conservative
        assert any(str(child) in r for r in info.reasons), info.reasons
        assert child not in t.processes
        # still flagged while it lives (an untracked process maps the object writable)
        logged = d.write([5], who=child)
        got = t.collect()
        assert logged <= {a for a in logged if a in got}
        assert any(f"pid {child}" in r and "not tracked" in r for r in t.last.reasons)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _wait_for(cond, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("end", ["exit", "exec"])
@pytest.mark.parametrize("when", ["forked after attach", "forked before attach"])
def test_untracked_sharer_that_writes_then_goes(tree_target: TreeDriver, end: str,
                                                when: str) -> None:
    """A process outside the tracked set, seen mapping the shared memory at one collect,
    writes it and then exits (or execs) before the next: nothing of it is left to read, so
    the next collect reports what it mapped whole once, saying so."""
    d = tree_target
    child = d.fork() if when == "forked before attach" else 0
    with attach(d.proc.pid, follow_forks=False) as t:
        t.collect()
        if not child:
            child = d.fork()
        t.collect()  # seen mapping it: reported whole, as untracked
        assert child in t.last.untracked
        logged = d.write([9], who=child)
        try:
            if end == "exit":
                assert d.cmd(f"k {child}") == "ok"  # exits and is reaped
            else:
                d.cmd(f"c {child} x")  # execs /bin/sleep: the shared mapping is gone
                _wait_for(lambda: _comm(child) == "sleep", f"pid {child} to exec sleep")
            got = t.collect()
            assert logged <= {a for a in logged if a in got}, t.last.reasons
            assert any(f"pid {child} mapped it writable at the last collect" in r
                       for r in t.last.reasons), t.last.reasons
            assert child not in t.last.untracked
            t.collect()
            assert not any(f"pid {child}" in r for r in t.last.reasons)  # once
        finally:
            if end == "exec":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


TWO_VIEWS = r"""
import mmap, os, sys
fd = os.memfd_create("ww-two-views")
os.ftruncate(fd, 16 * 4096)
a = mmap.mmap(fd, 16 * 4096, mmap.MAP_SHARED)
b = mmap.mmap(fd, 16 * 4096, mmap.MAP_SHARED)
import ctypes
addr = lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))
print(hex(addr(a)), hex(addr(b)), flush=True)
for line in sys.stdin:
    if line.startswith("w"):
        for i in map(int, line.split()[1:]):
            a[i * 4096] = 1
    elif line.startswith("u"):
        import gc; gc.collect()
        a.close()  # munmap: the writes through it went with its page tables
    print("ok", flush=True)
"""


def test_unmapped_views_are_what_no_mapping_keeps() -> None:
    from writewatch.process.shared import ObjectKey, View, unmapped_views
    k, P = ObjectKey("00:01", 7), 4096
    v = View(1, 10 * P, 20 * P, 0, k, True, True, "/memfd:x")
    assert unmapped_views([v], [v]) == []
    split = [v._replace(end=15 * P), v._replace(start=15 * P, offset=5 * P)]
    assert unmapped_views([v], split) == []  # an mprotect split keeps the page tables
    ro = [split[0], split[1]._replace(writable=False)]
    assert unmapped_views([v], ro) == [split[1]]  # made read-only: its part
    other = v._replace(start=40 * P, end=50 * P)  # the same bytes at other addresses
    assert unmapped_views([v, other], [other]) == [v]
    assert unmapped_views([v._replace(shared=False)], []) == []  # private: nothing shared


def test_shared_memory_written_through_a_mapping_then_unmapped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Written through one mapping of a memfd that is then unmapped: the other tracked
    mapping of the same memory reports those bytes (conservatively), saying why."""
    p = subprocess.Popen([sys.executable, "-c", TWO_VIEWS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        _a, b = (int(x, 16) for x in p.stdout.readline().split())  # type: ignore[union-attr]

        def cmd(text: str) -> None:
            p.stdin.write(text + "\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
            assert p.stdout.readline().strip() == "ok"  # type: ignore[union-attr]

        with attach(p.pid) as t:
            t.collect()
            cmd("w 3 5")
            cmd("u")
            got = t.collect()
            ps = t.page_size
            assert {b + 3 * ps, b + 5 * ps} <= {int(x) for x in got.addresses()}
            assert any("unmapped (or made read-only) shared memory" in r
                       for r in t.last.reasons), t.last.reasons
            t.collect()
            assert not any("unmapped" in r and "shared memory" in r for r in t.last.reasons)
    finally:
        p.kill()
        p.wait()


def test_child_forked_before_attach_is_a_sharer(tree_target: TreeDriver) -> None:
    d = tree_target
    child = d.fork()
    with attach(d.proc.pid) as t:
        t.collect()
        logged = d.write([11], who=child)
        got = t.collect()
        assert logged <= {a for a in logged if a in got}
        assert any(f"pid {child}" in r for r in t.last.reasons)


def test_tree_attach_tracks_existing_descendants(tree_target: TreeDriver) -> None:
    d = tree_target
    child = d.fork()
    grand = d.fork(who=child)
    with attach(d.proc.pid, tree=True) as t:
        assert set(t.processes) == {d.proc.pid, child, grand}
        t.collect()
        logged = d.write([6], who=[child, grand]) | d.write([8])
        got = t.collect()
        assert logged <= {a for a in logged if a in got}
        assert got & _shared(d) == writewatch.Pages.from_addresses(logged, d.ps)
        assert not (t.last.conservative & _shared(d)), t.last.reasons


def test_short_child_that_exits_before_the_collect(tree_target: TreeDriver) -> None:
    """A child that writes and exits between two collects: its page tables are gone before
    anything can read them, so what it shares is reported whole (never silently missed)."""
    for follow in (False, True):
        if follow:
            _events()
        d = tree_target
        with attach(d.proc.pid, follow_forks=follow) as t:
            t.collect()
            _, pid = d.cmd("s 20 21").split()
            got = t.collect()
            logged = d.pages(d.shared, [20, 21])
            assert logged <= {a for a in logged if a in got}, (follow, t.last.reasons)
            assert _shared(d) <= t.last.conservative
            assert any(pid in r for r in t.last.reasons) or \
                any("exited" in r for r in t.last.reasons), t.last.reasons


@contextlib.contextmanager
def _polling(monkeypatch: pytest.MonkeyPatch, pid: int, follow_forks: bool):  # type: ignore[no-untyped-def]
    """A tracker of ``pid`` without EVENT_FORK (children are found by polling), collected
    once."""
    import writewatch.process.tree as tree_mod
    monkeypatch.setattr(tree_mod, "_has_cap", lambda cap: False)
    with attach(pid, follow_forks=follow_forks) as t:
        assert t.fork_mode == "polling"
        t.collect()
        yield t


def test_short_child_after_an_untracked_child_exited(tree_target: TreeDriver,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without fork events (polling: /proc children and the parent's count of its reaped
    children's faults), a short child is found by that count growing. An untracked child
    that exited earlier must not explain every later growth."""
    d = tree_target
    with _polling(monkeypatch, d.proc.pid, follow_forks=False) as t:
        first = d.fork()
        t.collect()  # seen alive: untracked
        assert d.cmd(f"k {first}") == "ok"  # exits and is reaped
        t.collect()
        t.collect()
        d.cmd("s 20 21")  # forks a child that writes pages 20 and 21 and exits
        got = t.collect()
        logged = d.pages(d.shared, [20, 21])
        assert logged <= {a for a in logged if a in got}, t.last.reasons
        assert any("ran and exited between two collects" in r for r in t.last.reasons), \
            t.last.reasons


def test_every_conservative_page_has_a_reason_in_polling_mode(
        tree_target: TreeDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child found by polling is attached late and its writable mappings reported whole
    once: pages it shares reach the root's collect, and so does the reason."""
    d = tree_target
    with _polling(monkeypatch, d.proc.pid, follow_forks=True) as t:
        child = d.fork()
        for _ in range(3):
            logged = d.write([10], who=child)
            got = t.collect()
            assert logged <= {a for a in logged if a in got}
            if t.last.conservative:
                assert t.last.reasons, "conservative pages without a reason"
        assert child in t.processes


def test_member_exit_is_reported(tree_target: TreeDriver) -> None:
    _events()
    d = tree_target
    with attach(d.proc.pid, follow_forks=True) as t:
        child = d.fork()
        t.collect()
        assert child in t.processes
        d.write([30], who=child)
        assert d.cmd(f"k {child}") == "ok"
        got = t.collect()
        assert child in t.last.exited and child not in t.processes
        assert d.shared + 30 * d.ps in got
        assert _shared(d) <= t.last.conservative  # its last writes went with it


def test_exec_in_the_tree_rearms(tree_target: TreeDriver) -> None:
    _events()
    d = tree_target
    with attach(d.proc.pid, follow_forks=True) as t:
        child = d.fork()
        t.collect()
        assert d.cmd(f"c {child} x") == "ok"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(f"/proc/{child}/comm") as f:
                if f.read().strip() == "sleep":
                    break
            time.sleep(0.02)
        t.collect()
        assert child in t.last.execd and child in t.processes
        assert not (t.last.by_process()[child] & _shared(d))  # the new program shares nothing


def test_external_process_mapping_a_shared_file_is_flagged(tree_argv: list[str]) -> None:
    """A process outside the tracked set maps the same /dev/shm file writable: its writes
    change the root's memory and no page table of the tree shows them."""
    path = f"/dev/shm/writewatch-test-{os.getpid()}"
    d = TreeDriver.popen([*tree_argv, "16", path])
    other = subprocess.Popen([sys.executable, "-c", f"""
import mmap, os, sys
fd = os.open({path!r}, os.O_RDWR)
m = mmap.mmap(fd, 16 * 4096)
print("ready", flush=True)
for line in sys.stdin:
    m[int(line) * 4096] = 1
    print("ok", flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert other.stdout.readline().strip() == "ready"
        with attach(d.proc.pid) as t:
            t.collect()
            other.stdin.write("5\n")
            other.stdin.flush()
            assert other.stdout.readline().strip() == "ok"
            got = t.collect()
            assert d.shared + 5 * d.ps in got
            assert _shared(d) <= t.last.conservative
            assert any(f"pid {other.pid}" in r for r in t.last.reasons), t.last.reasons
    finally:
        other.kill()
        other.wait()
        for f in (other.stdin, other.stdout):
            f.close()
        d.close()
        os.unlink(path)


def test_in_process_fork_cannot_steal_the_parents_writes() -> None:
    """A fork()ed child inherits the tracker's descriptors, which act on the parent's memory:
    using it there raises TrackerForked, and the parent still gets its page."""
    buf = writewatch.zeros(16 * 4096)
    with writewatch.track(buf) as t:
        buf[3 * 4096] = 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            code = 1
            try:
                t.collect()
            except writewatch.TrackerForked:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        os.close(r)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert t.page_size * 3 + t.targets[0].start in t.collect()


@pytest.mark.parametrize("kind", ["track", "launch"])
def test_fork_leaves_descriptors_of_closed_trackers_alone(kind: str) -> None:
    """A tracker closed before a fork owns no descriptor: the child must not close the
    numbers it had (they are reused: here by a pipe the child reads)."""
    if kind == "track":
        buf = writewatch.zeros(4 * 4096)
        t = writewatch.track(buf)
    else:
        t = writewatch.launch(["sleep", "30"])
    fds = set(os.listdir("/proc/self/fd"))
    t.close()
    if kind == "launch":
        t.process.kill()
        t.process.wait()
    freed = len(fds - set(os.listdir("/proc/self/fd")))
    assert freed
    pipes = [os.pipe() for _ in range(freed)]
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            ok = all(os.write(w, b"x") == 1 and os.read(r, 1) == b"x" for r, w in pipes)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for pair in pipes:
            for fd in pair:
                os.close(fd)


def test_in_process_child_writes_to_shared_memory_are_flagged() -> None:
    buf = writewatch.zeros(16 * 4096, shared=True)
    with writewatch.track(buf) as t:
        t.collect()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            buf[7 * 4096] = 1
            os._exit(0)
        os.waitpid(pid, 0)
        got = t.collect()
        assert t.targets[0].start + 7 * 4096 in got
        assert any("fork" in r for r in t.last.reasons), t.last.reasons
        # nothing forked since, no one else maps it: exact again
        buf[1] = 1
        got = t.collect()
        assert len(got) == 1 and not t.last.conservative


TRACKER = """
import sys, writewatch
t = writewatch.attach(int(sys.argv[1]), follow_forks=True)
print(t.fork_mode, flush=True)
sys.stdin.readline()
"""


def test_tracker_killed_while_a_fork_waits_never_hangs_the_target(tree_target: TreeDriver
                                                                   ) -> None:
    """The forking thread waits in the kernel until the tracker reads the fork event. A
    stopped tracker holds the fork up; a killed one releases it (its descriptors close, the
    context is released and the fork completes, untracked)."""
    _events()
    d = tree_target
    tr = subprocess.Popen([sys.executable, "-c", TRACKER, str(d.proc.pid)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert tr.stdout.readline().strip() == "events"
        os.kill(tr.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # every thread of it stopped
            states = []
            for tid in os.listdir(f"/proc/{tr.pid}/task"):
                with open(f"/proc/{tr.pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            if all(st == "T" for st in states):
                break
            time.sleep(0.01)
        d.proc.stdin.write("F\n")
        d.proc.stdin.flush()
        ready = select.select([d.proc.stdout], [], [], 1.0)[0]
        assert not ready, "the fork completed although nobody read its event"
        os.kill(tr.pid, signal.SIGKILL)
        tr.wait(10)
        ready = select.select([d.proc.stdout], [], [], 10.0)[0]
        assert ready, "the target's fork still waits after the tracker died"
        assert d.line().startswith("child ")
        assert d.cmd("w 1") == "ok"
    finally:
        if tr.poll() is None:
            tr.kill()
            tr.wait()
        tr.stdin.close()
        tr.stdout.close()


def test_launch_follows_forks_by_default(tree_argv: list[str]) -> None:
    _events()
    t = writewatch.launch([*tree_argv, "64"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
    try:
        d = TreeDriver(t.process)
        t.collect()
        child = d.fork()
        logged = d.write([2, 12], who=child)
        got = t.collect()
        assert child in t.processes
        assert got & _shared(d) == writewatch.Pages.from_addresses(logged, d.ps)
        assert not (t.last.conservative & _shared(d)), t.last.reasons
        d.close()
        assert t.process.wait(5) == 0
    finally:
        t.close()
        if t.process.poll() is None:
            t.process.kill()
            t.process.wait()


def _cgroup2_root() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split(" ", 1)[0] == "cgroup2":
                return pre.split()[4]
    pytest.skip("no cgroup v2 mount")


def test_cgroup_processes_now_and_later(tree_argv: list[str]) -> None:
    root = _cgroup2_root()
    path = os.path.join(root, f"writewatch-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cgroup v2 not writable here: {exc}")
    first = TreeDriver.popen([*tree_argv, "16"])
    later = None
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(first.proc.pid))
        with attach(cgroup=path) as t:
            assert t.processes == (first.proc.pid,)
            t.collect()
            later = TreeDriver.popen([*tree_argv, "16"])
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(later.proc.pid))
            t.collect()
            assert later.proc.pid in t.processes and later.proc.pid in t.last.forked
            logged = later.write([3])
            t.collect()
            got = t.last.by_process()[later.proc.pid]
            assert logged <= {a for a in logged if a in got}
            first.close()  # the root exits: the cgroup's other process becomes the root
            t.collect()
            assert first.proc.pid in t.last.exited and t.pid == later.proc.pid
            logged = later.write([4])
            assert logged <= {a for a in logged if a in t.collect()}
    finally:
        first.close()
        if later is not None:
            later.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)
