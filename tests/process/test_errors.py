"""Bad input and refusals: typed errors rooted at WriteWatchError, with a hint; no leaked
descriptor or child process."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from memutil import open_fds

import writewatch
from writewatch import _uapi as U
from writewatch.kernel import inject, procfs
from writewatch.kernel import ptrace as P
from writewatch.process import attach, launch


@pytest.mark.parametrize("pid", [0, -1, "12", 1.5, True])
def test_attach_bad_pid(pid) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(writewatch.InvalidTarget) as e:
        attach(pid)
    assert e.value.hint


def test_attach_self_refused() -> None:
    with pytest.raises(writewatch.InvalidTarget, match="itself") as e:
        attach(os.getpid())
    assert "track()" in e.value.hint


def test_attach_missing_process() -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(writewatch.NoSuchProcess):
        attach(p.pid)


def test_attach_kernel_thread_refused() -> None:
    kthreadd = 2  # the kernel's thread creator, pid 2 in the initial pid namespace
    st = procfs.read_stat(kthreadd)
    if st is None or not st.flags & U.PF_KTHREAD:
        pytest.skip("pid 2 is not kthreadd here (another pid namespace)")
    with pytest.raises(writewatch.InvalidTarget, match="kernel thread") as e:
        attach(kthreadd)
    assert e.value.hint


def test_attach_stopped_process_refused() -> None:
    p = subprocess.Popen(["sleep", "10"])
    try:
        os.kill(p.pid, signal.SIGSTOP)
        os.waitpid(p.pid, os.WUNTRACED)
        with pytest.raises(writewatch.InvalidTarget, match="stopped") as e:
            attach(p.pid)
        assert "CONT" in e.value.hint
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("argv", [["/nonexistent/prog"], ["no-such-command-xyz"], [],
                                  ["/etc/hostname"]])
def test_launch_bad_command(argv: list[str]) -> None:
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget) as e:
        launch(argv)
    assert e.value.hint
    assert open_fds() == before


@pytest.mark.parametrize(("argv", "kw", "match"), [
    ("true", {}, "list of strings"),
    (None, {}, "list of strings"),
    (["/bin/tr\0ue"], {}, "NUL byte"),
    (["true", "a\0b"], {}, "NUL byte"),
    (["true", 3], {}, "string or path"),
    (["true"], {"cwd": "/nonexistent"}, "cwd '/nonexistent' is not a directory"),
    (["true"], {"env": {"A": "x\0y"}}, "NUL byte"),
    (["true"], {"env": {"A=B": "x"}}, "has '='"),
    (["true"], {"env": ["A=B"]}, "env must be a mapping"),
])
def test_launch_bad_arguments(argv, kw, match) -> None:  # type: ignore[no-untyped-def]
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget, match=match):
        launch(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    assert open_fds() == before


@pytest.mark.usefixtures("uffd_async")
@pytest.mark.parametrize("kw", [{"bogus": 1}, {"uffd": 3}, {"events": 0}])
def test_unknown_backend_options_are_refused_before_anything_starts(kw) -> None:  # type: ignore[no-untyped-def]
    p = subprocess.Popen(["sleep", "30"])
    try:
        before = open_fds()
        for call in (lambda: attach(p.pid, **kw), lambda: launch(["true"], **kw)):
            with pytest.raises(writewatch.InvalidTarget, match="takes no option") as e:
                call()
            assert "batch" in e.value.hint
        assert open_fds() == before and p.poll() is None
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("spec", ["foo", 99, 3.5, -2, True])
def test_launch_bad_stream_is_refused_before_the_fork(spec) -> None:  # type: ignore[no-untyped-def]
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget, match="stdout") as e:
        launch(["true"], stdout=spec)
    assert "subprocess.PIPE" in e.value.hint
    assert open_fds() == before


def test_launch_exec_failure_in_the_child_names_the_step(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file that passes the checks but that execve refuses (ENOEXEC: no #! and no ELF
    header) fails in the child; the error says exec and why, and the pipes are closed."""
    prog = tmp_path / "garbage"
    prog.write_bytes(b"\x00\x01not a program")
    prog.chmod(0o755)
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget, match="garbage") as e:
        launch([str(prog)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert "ENOEXEC" in str(e.value) or "Exec format" in str(e.value)
    assert open_fds() == before


@pytest.mark.usefixtures("uffd_async")
def test_no_descriptor_leak(c_target) -> None:  # type: ignore[no-untyped-def]
    """Helpers left behind are caught by conftest's autouse check (which waits for the
    daemon thread that reaps them)."""
    before = open_fds()
    for _ in range(3):
        with attach(c_target.proc.pid) as t:
            t.collect()
    assert open_fds() == before


@pytest.mark.usefixtures("uffd_async")
def test_launch_no_leak_and_process_api(writer_bin: str) -> None:
    before = open_fds()
    t = launch([writer_bin, "interactive", "4"], stdin=subprocess.PIPE,
               stdout=subprocess.DEVNULL)
    try:
        assert t.process.poll() is None
        t.process.stdin.write(b"q\n")
        t.process.stdin.flush()
        assert t.process.wait(5) == 0 and t.process.returncode == 0
    finally:
        t.close()
        t.process.stdin.close()
    assert open_fds() == before


def test_inject_syscall_runs_in_target(c_target) -> None:  # type: ignore[no-untyped-def]
    pid = c_target.proc.pid
    assert inject.inject_syscall(pid, P.NR.getpid) == pid
    assert inject.inject_syscall(pid, P.NR.close, 10_000) == -9  # -EBADF
    assert c_target.write([1]) and c_target.cmd("w 2") == "ok"  # still runs fine


def test_permission_denied_says_what_is_needed(c_target) -> None:  # type: ignore[no-untyped-def]
    """A tracker without ptrace rights over the target (another uid, no CAP_SYS_PTRACE) gets
    PermissionDenied naming what is needed, and the target is untouched."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another uid in a child")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (child)
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)  # drops every capability
            try:
                attach(c_target.proc.pid)
                msg = "attached"
            except writewatch.PermissionDenied as e:
                msg = f"denied {e}"
            except BaseException as e:
                msg = f"other {type(e).__name__} {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(child, 0)
    assert msg.startswith("denied"), msg
    assert "CAP_SYS_PTRACE" in msg
    assert c_target.cmd("w 1") == "ok"


def test_attach_already_traced(c_target) -> None:  # type: ignore[no-untyped-def]
    pid = c_target.proc.pid
    P.seize(pid)
    try:
        with pytest.raises(writewatch.PermissionDenied, match="already traced") as e:
            attach(pid)
        assert "debugger" in e.value.hint
    finally:
        P.interrupt(pid)
        P.waitpid(pid)
        P.detach(pid)
    assert c_target.cmd("w 1") == "ok"


def test_unusable_backend_refused(c_target) -> None:  # type: ignore[no-untyped-def]
    """A backend this kernel cannot run (soft-dirty without CONFIG_MEM_SOFT_DIRTY) would
    report nothing: refused with the reason instead."""
    f = writewatch.features()
    bad = [n for n, b in f.backends.items() if not b.usable]
    if not bad:
        pytest.skip("every backend is usable on this kernel")
    with pytest.raises(writewatch.Unsupported, match="not usable"):
        attach(c_target.proc.pid, backend=bad[0])
    with pytest.raises(writewatch.InvalidTarget, match="unknown backend"):
        attach(c_target.proc.pid, backend="no-such-backend")


@pytest.mark.usefixtures("uffd_async")
def test_end_ends_the_program_and_what_it_started() -> None:
    import time

    from writewatch.process.launch import _descendants, _running
    t = launch(["sh", "-c", "sleep 60 & sleep 60 & wait"], follow_forks=False)
    try:
        deadline = time.monotonic() + 10
        while len(kids := _descendants(t.process.pid)) < 2:
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.02)
    finally:
        t.close()
    code = t.process.end(2.0)
    assert code == -signal.SIGTERM
    assert not any(_running(k) for k in kids), kids
