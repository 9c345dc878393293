"""Holding another process stopped while its memory is read or reset.

Two ways, one interface (:func:`stopped`):

* ptrace: PTRACE_SEIZE + PTRACE_INTERRUPT of every thread, PTRACE_DETACH after
  (:class:`writewatch.kernel.inject.ThreadGroupStop`; CRIU's compel does the same). When the
  tracer dies the kernel detaches its tracees and a thread in a ptrace stop resumes
  (kernel/ptrace.c __ptrace_unlink): the target is never left stopped.
* SIGSTOP/SIGCONT (:func:`sigstopped`): works on a process that already has a tracer, but a
  group stop outlives its sender, and the stop is visible to the target's parent
  (``waitpid(WUNTRACED)``, SIGCHLD with CLD_STOPPED/CLD_CONTINUED) and to job control.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

from .. import errors
from . import _sys, procfs
from .inject import ThreadGroupStop

__all__ = ["sigstopped", "stopped"]

#: seconds to wait for every thread to reach the stopped state after SIGSTOP
STOP_TIMEOUT = 10.0
#: thread states that run no user code: stopped, traced, zombie, dead
_HALTED = frozenset("TtZXx")


@contextlib.contextmanager
def sigstopped(pid: int, timeout: float = STOP_TIMEOUT) -> Iterator[float]:
    """Stop every thread of ``pid`` with SIGSTOP, yield the time the stop took, and resume
    it with SIGCONT. SIGSTOP is delivered asynchronously: this waits until every thread shows
    a halted state in /proc/PID/task/TID/stat. A process found stopped stays stopped."""
    t0 = time.perf_counter()
    before = procfs.thread_states(pid)
    if before and all(s in "Tt" for s in before):
        yield 0.0
        return
    _sys.os_call("kill SIGSTOP", os.kill, pid, signal.SIGSTOP, pid=pid)
    try:
        delay = 1e-5
        while not all(s in _HALTED for s in procfs.thread_states(pid)):
            if time.perf_counter() - t0 > timeout:
                raise errors.KernelError(
                    f"process {pid} did not stop within {timeout:g} s", op="SIGSTOP",
                    hint="a thread is in uninterruptible sleep (state D); retry later")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        yield time.perf_counter() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def stopped(pid: int, how: str = "auto") -> Iterator[str]:
    """Every thread of ``pid`` stopped for the duration; yields the method used: "ptrace"
    or "sigstop". ``how="auto"``: ptrace, or SIGSTOP when the process already has a tracer (a
    debugger) or ptrace is refused."""
    if how not in ("auto", "ptrace", "sigstop"):
        raise errors.InvalidTarget(f"stop={how!r}", hint='"auto", "ptrace" or "sigstop"')
    if how != "sigstop":
        try:
            group = ThreadGroupStop(pid)
            group.__enter__()
        except (errors.PermissionDenied, errors.KernelError):
            if how == "ptrace":
                raise
        else:
            try:
                yield "ptrace"
            finally:
                group.release()
            return
    with sigstopped(pid):
        yield "sigstop"
