"""Target states the injection cannot survive are refused with a typed error and a hint,
and the target is left running; the others are attached. (tests/targets/states.c)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import writewatch

pytestmark = pytest.mark.usefixtures("uffd_async")


def _start(binary: str, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([binary, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    time.sleep(0.05)  # past the prctl, blocked in read
    return p


def _finish(p: subprocess.Popen) -> None:
    """The target still works: it reads a line, writes, exits 0."""
    assert p.poll() is None, "the target was killed"
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"bye\n"
    assert p.wait(10) == 0
    p.stdin.close()
    p.stdout.close()


@pytest.mark.parametrize(("mode", "match"), [("strict", "strict seccomp"),
                                           ("filter", "seccomp filter")])
def test_seccomp_is_refused_and_the_target_lives(states_bin: str, mode: str, match: str) -> None:
    p = _start(states_bin, mode)
    try:
        with pytest.raises(writewatch.Unsupported, match=match):
            writewatch.attach(p.pid)
        _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_no_new_privs_is_fine(states_bin: str) -> None:
    p = _start(states_bin, "nnp")
    try:
        with writewatch.attach(p.pid) as t:
            t.collect()
        _finish(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_second_tracker_is_refused_naming_the_holder() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        with writewatch.attach(p.pid), pytest.raises(
            writewatch.AlreadyTracked, match="owned by another userfaultfd"
        ):
            writewatch.attach(p.pid)
        with writewatch.attach(p.pid) as t:  # once the first is closed, it can be tracked
            t.collect()
    finally:
        p.kill()
        p.wait()


def test_a_job_control_stopped_target_is_refused() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while writewatch.kernel.procfs.read_stat(p.pid).state != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(writewatch.InvalidTarget, match="stopped"):
            writewatch.attach(p.pid)
        os.kill(p.pid, signal.SIGCONT)
    finally:
        p.kill()
        p.wait()


def _cgroup2() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split(" ", 1)[0] == "cgroup2":
                return pre.split()[4]
    pytest.skip("no cgroup v2 mount")


def test_a_frozen_cgroup_is_refused() -> None:
    path = os.path.join(_cgroup2(), f"writewatch-frozen-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as exc:
        pytest.skip(f"cgroup v2 not writable here: {exc}")
    if not os.path.exists(os.path.join(path, "cgroup.freeze")):
        os.rmdir(path)
        pytest.skip("no cgroup v2 freezer (cgroup.freeze)")
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("1")
        with pytest.raises(writewatch.InvalidTarget, match="frozen cgroup"):
            writewatch.attach(p.pid)
        with open(os.path.join(path, "cgroup.freeze"), "w") as f:
            f.write("0")
        with writewatch.attach(p.pid) as t:
            t.collect()
    finally:
        p.kill()
        p.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)


def test_a_process_in_new_pid_and_user_namespaces() -> None:
    """Another PID and user namespace does not stop root's ptrace (the kernel checks
    capabilities against the target's user namespace, which init's root owns)."""
    import shutil
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root")
    p = subprocess.Popen(["unshare", "--user", "--map-root-user", "--pid", "--fork",
                          sys.executable, "-c",
                          "import mmap, sys, time\n"
                          "m = mmap.mmap(-1, 1 << 20)\n"
                          "print('ready', flush=True)\n"
                          "sys.stdin.readline(); m[4096] = 1\n"
                          "print('ok', flush=True); time.sleep(30)\n"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        if p.stdout.readline().strip() != "ready":
            pytest.skip("unshare could not create the namespaces here")
        kids = writewatch.kernel.procfs.children(p.pid)
        assert kids, "unshare --fork has a child"
        target = next(iter(kids))
        with writewatch.attach(target) as t:
            t.collect()
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "ok"
            assert len(t.collect()) >= 1
    finally:
        for pid in writewatch.kernel.procfs.children(p.pid):  # the namespace's init first
            os.kill(pid, signal.SIGKILL)
        p.kill()
        p.wait()
