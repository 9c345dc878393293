"""Layer 4: ``launch(argv)``, a program started under tracking, and its process object."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import errors
from ..kernel import LINUX, KernelCalls, forking, procfs
from .member import check_process_options, process_backend
from .tree import ProcessTracker

__all__ = ["LaunchedProcess", "launch"]


class LaunchedProcess:
    """The process started by :func:`launch`: a child of this process (a small
    ``subprocess.Popen`` look-alike: ``pid``, ``args``, ``returncode``, ``poll()``,
    ``wait()``, ``send_signal()``, ``terminate()``, ``kill()``)."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        #: file objects for the streams given as ``subprocess.PIPE``, else None
        self.stdin: Any = None
        self.stdout: Any = None
        self.stderr: Any = None
        self._lock = threading.Lock()

    def _reap(self, options: int) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            try:
                got, status = os.waitpid(self.pid, options)
            except ChildProcessError:
                self.returncode = self.returncode if self.returncode is not None else -1
                return self.returncode
            if got == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._reap(0)
            assert code is not None
            return code
        end = time.monotonic() + timeout
        delay = 0.0005
        while (code := self._reap(os.WNOHANG)) is None:
            if time.monotonic() >= end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def end(self, grace: float = 5.0) -> int:
        """End the program and what it started, as timeout(1) ends its process group:
        SIGTERM to it and to every descendant it has now, SIGKILL to those still there
        ``grace`` seconds later. Returns its exit status."""
        family = [self.pid, *_descendants(self.pid)]
        for p in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(grace)
        left = family[1:]
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = [p for p in left if _running(p)]
        for p in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        self.kill()  # nothing when it has exited
        return self.wait()

    def close_streams(self) -> None:
        for name in ("stdin", "stdout", "stderr"):
            f = getattr(self, name)
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def __repr__(self) -> str:
        return f"<LaunchedProcess pid={self.pid} returncode={self.returncode}>"


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now, parents first (/proc/PID/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = sorted(procfs.children(todo.pop(0)) - set(out) - {pid})
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    st = procfs.read_stat(pid)
    return st is not None and st.state not in ("Z", "X")


#: include/uapi/linux/prctl.h (Yama): allow a process and its descendants to ptrace us
PR_SET_PTRACER = 0x59616D61


def _allow_ptrace_by(pid: int) -> None:
    """In the launched child: let ``pid`` and its descendants (the attach helper, a sibling
    of the child) trace it under kernel.yama.ptrace_scope 1, where only ancestors may
    (security/yama/yama_lsm.c ptracer_exception_found). EINVAL without Yama: ignored."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)


def _redirect(spec: Any, fd: int, mode: int) -> None:
    if spec is None:
        return
    if isinstance(spec, tuple):  # (read end, write end) of a PIPE
        src = spec[0] if mode == os.O_RDONLY else spec[1]
    elif spec == subprocess.DEVNULL:
        src = os.open(os.devnull, mode)
    elif isinstance(spec, int):
        src = spec
    else:
        src = spec.fileno()
    os.dup2(src, fd)


def _check_stream(spec: Any, name: str) -> None:
    """A stdin/stdout/stderr argument, checked here before the fork: None, PIPE, DEVNULL,
    an open descriptor or an object with ``fileno()``."""
    hint = "give None, subprocess.PIPE, subprocess.DEVNULL, a descriptor or a file object"
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool) and
                        spec in (subprocess.PIPE, subprocess.DEVNULL)):
        return
    if isinstance(spec, bool) or not isinstance(spec, int):
        fileno = getattr(spec, "fileno", None)
        if fileno is None:
            raise errors.InvalidTarget(f"{name}={spec!r} is not a stream", hint=hint)
        try:
            spec = fileno()
        except (OSError, ValueError) as exc:  # closed, or not backed by a descriptor
            raise errors.InvalidTarget(f"{name}={spec!r} has no descriptor: {exc}",
                                       hint=hint) from None
    try:
        os.fstat(spec)
    except (OSError, OverflowError, TypeError):
        raise errors.InvalidTarget(f"{name}={spec!r} is not an open descriptor",
                                   hint=hint) from None


def _text(value: Any, what: str) -> str:
    try:
        text = os.fsdecode(os.fspath(value))
    except TypeError:
        raise errors.InvalidTarget(f"{what} must be a string or path, not "
                                   f"{type(value).__name__}") from None
    if "\0" in text:
        raise errors.InvalidTarget(f"{what} {text!r} contains a NUL byte",
                                   hint="the kernel takes NUL-terminated strings")
    return text


def check_command(argv: Any, env: Mapping[str, str] | None, cwd: Any
                  ) -> tuple[list[str], str, dict[str, str] | None, str | None]:
    """Validate what :func:`launch` was given: ``(argv, executable, env, cwd)``, or
    :class:`InvalidTarget` saying what is wrong."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
        raise errors.InvalidTarget(
            f"argv must be a list of strings, not {type(argv).__name__}",
            hint='pass ["prog", "arg", ...] (a string would be split into characters)')
    args = [_text(a, "argument") for a in argv]
    if not args:
        raise errors.InvalidTarget("no command given", hint="pass the program and arguments")
    if env is not None:
        if not isinstance(env, Mapping):
            raise errors.InvalidTarget(f"env must be a mapping, not {type(env).__name__}")
        checked = {}
        for k, v in env.items():
            key, val = _text(k, "environment name"), _text(v, "environment value")
            if not key or "=" in key:
                raise errors.InvalidTarget(f"environment name {key!r} is empty or has '='")
            checked[key] = val
        env = checked
    cwd_s = None if cwd is None else _text(cwd, "cwd")
    if cwd_s is not None and not os.path.isdir(cwd_s):
        raise errors.InvalidTarget(f"cwd {cwd_s!r} is not a directory", op="chdir",
                                   hint="give an existing directory")
    exe = args[0]
    if os.sep not in exe:
        found = shutil.which(exe, path=(env if env is not None else os.environ).get("PATH"))
        if found is None:
            raise errors.InvalidTarget(f"{exe}: command not found", op="exec",
                                       hint="give a path or a program on PATH")
        exe = found
    elif cwd_s is not None and not os.path.isabs(exe):
        exe = os.path.join(cwd_s, exe)
    if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
        raise errors.InvalidTarget(f"{exe} is not an executable file", op="exec",
                                   hint="check the path and its permissions")
    return args, exe, env, cwd_s


def _child(exe: str, argv: list[str], env: dict[str, str] | None, cwd: str | None,
           streams: list[Any], go_r: int, go_w: int, err_r: int, err_w: int,
           parent: int) -> None:  # pragma: no cover (runs in the child)
    try:
        os.close(go_w)
        os.close(err_r)
        _redirect(streams[0], 0, os.O_RDONLY)
        _redirect(streams[1], 1, os.O_WRONLY)
        _redirect(streams[2], 2, os.O_WRONLY)
        step = "chdir"
        if cwd is not None:
            os.chdir(cwd)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        _allow_ptrace_by(parent)
        os.read(go_r, 1)  # the attach helper has seized this process
        os.close(go_r)
        step = "exec"
        if env is None:
            os.execv(exe, argv)
        os.execve(exe, argv, env)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(err_w, f"{step} {exc.errno}".encode())
    finally:
        os._exit(127)


def _child_error(data: bytes, exe: str, cwd: str | None) -> errors.InvalidTarget:
    step, _, num = data.decode().partition(" ")
    err = int(num)
    if step == "chdir":
        return errors.InvalidTarget(f"cannot change to directory {cwd}: {os.strerror(err)}",
                                    op="chdir", errno=err, hint="check the cwd")
    return errors.InvalidTarget(f"cannot execute {exe}: {os.strerror(err)}", op="exec",
                                errno=err, hint="check the command and its path")


def launch(argv: Sequence[str], backend: str = "auto", *, follow_forks: bool = True,
           env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: Any = None,
           stdout: Any = None, stderr: Any = None, text: bool = False,
           kernel: KernelCalls = LINUX, reattach_on_exec: bool = True,
           **options: Any) -> ProcessTracker:
    """Start ``argv`` under tracking: armed at its exec, before its first instruction, so no
    write of the program is missed. ``t.process`` is the child (``pid``, ``wait()``,
    ``returncode``...); closing the tracker leaves it running.

    ``follow_forks`` (default): the processes it forks are tracked too (``t.processes``,
    ``t.last.by_process()``). ``stdin``/``stdout``/``stderr``: None (inherit),
    ``subprocess.PIPE`` (then ``t.process.stdin``... are file objects, text ones with
    ``text=True``), ``subprocess.DEVNULL``, a descriptor or a file object."""
    args, exe, env, cwd = check_command(argv, env, cwd)
    name = process_backend(backend, kernel)
    check_process_options(name, options)
    for spec, what in ((stdin, "stdin"), (stdout, "stdout"), (stderr, "stderr")):
        _check_stream(spec, what)
    streams: list[Any] = [stdin, stdout, stderr]
    pipes: list[tuple[int, int] | None] = [None, None, None]
    for i, spec in enumerate(streams):
        if spec is subprocess.PIPE or (isinstance(spec, int) and spec == subprocess.PIPE):
            pipes[i] = os.pipe()
            streams[i] = pipes[i]
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()  # both close-on-exec: EOF at a successful exec
    parent = os.getpid()
    with forking.internal():
        child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        _child(exe, args, env, cwd, streams, go_r, go_w, err_r, err_w, parent)
    os.close(go_r)
    os.close(err_w)
    proc = LaunchedProcess(child, args)
    for i, pair in enumerate(pipes):
        if pair is None:
            continue
        mine, theirs = (pair[1], pair[0]) if i == 0 else pair
        os.close(theirs)
        mode = ("w" if i == 0 else "r") + ("" if text else "b")
        f = open(mine, mode, buffering=1 if text else -1)  # noqa: SIM115 (owned by proc)
        setattr(proc, ("stdin", "stdout", "stderr")[i], f)
    try:
        try:
            return _start(name, proc, exe, cwd, go_w, err_r, kernel, follow_forks,
                          reattach_on_exec, options)
        except errors.WriteWatchError:
            # the child may still wait for the go-ahead, holding err_w: end it first (an
            # exec error it reported is already in the pipe)
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
            data = os.read(err_r, 64)
            if data:
                raise _child_error(data, exe, cwd) from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        proc.wait()
        proc.close_streams()
        raise
    finally:
        os.close(go_w)
        os.close(err_r)


def _start(name: str, proc: LaunchedProcess, exe: str, cwd: str | None, go_w: int,
           err_r: int, kernel: KernelCalls, follow_forks: bool, reattach_on_exec: bool,
           options: dict[str, Any]) -> ProcessTracker:
    kw = dict(kernel=kernel, process=proc, reattach_on_exec=reattach_on_exec,
              follow_forks=follow_forks, **options)
    if name == "uffd-async":
        return ProcessTracker([proc.pid], name, launch_go=go_w, **kw)
    # soft-dirty cannot be armed before the first instruction without stopping the child at
    # exec; let it exec, arm, and report everything once instead
    os.write(go_w, b"g")
    data = os.read(err_r, 64)  # EOF: exec succeeded (err_w is close-on-exec)
    if data:
        raise _child_error(data, exe, cwd)
    return ProcessTracker([proc.pid], name, late=(
        f"{name} was armed after {exe} started: every writable mapping is reported whole "
        "once (written before it could be armed)"), **kw)
