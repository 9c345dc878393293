"""Make another process execute a system call: how a userfaultfd comes to live in its mm.

A userfaultfd acts on the mm of the process that created it (fs/userfaultfd.c:
``ctx->mm = current->mm``), so tracking another process needs one created *there*. Like
CRIU's compel: seize and stop every thread (PTRACE_SEIZE + PTRACE_INTERRUPT), save the
registers of one, point its instruction pointer at a system-call instruction that already
exists in the target's code (the vDSO, else any executable mapping; no byte of the target is
changed), load the call number and arguments, let it run to the system-call exit
(PTRACE_SYSCALL, PTRACE_GET_SYSCALL_INFO), restore the registers and detach.

A thread stopped inside an interrupted system call (``rax`` = -ERESTART*, ``orig_rax`` >= 0)
would have that call restarted by the signal code on resume from the PTRACE_INTERRUPT stop
(arch/x86/kernel/signal.c). Once an injected call ran, the resume comes from a syscall-exit
stop, which does not take that path, so the restart is done here on the saved registers the
way the kernel would (CRIU compel get_task_regs does the same): ``ip -= 2``,
``ax = orig_ax`` (or ``__NR_restart_syscall`` for -ERESTART_RESTARTBLOCK).

aarch64 prepares the restart before the stop instead (arch/arm64/kernel/signal.c do_signal:
"We do this here so that a debugger will see the already changed PC"): the stopped thread's
``pc`` is back on the ``svc``, ``x0`` holds ``orig_x0`` again and its syscall number is
NO_SYSCALL (``forget_syscall``), so the saved registers re-execute the call as they are.
Only -ERESTART_RESTARTBLOCK is finished after the stop, and only if ``pc`` was left alone
(``setup_restart_syscall``: ``x8 = __NR_restart_syscall``); the return value that tells the
cases apart is gone by then, and neither ``PTRACE_GET_SYSCALL_INFO`` (``op`` NONE at an
interrupt stop) nor ``NT_ARM_SYSTEM_CALL`` (-1) shows it. :meth:`ThreadGroupStop._arm64_settle`
lets the thread take that last step itself and reads which call it makes.

Signals arriving during the injection are held back (the signal-delivery stop is resumed
without the signal) and sent again with tgkill after detaching.

Safety against the tracer dying: the kernel detaches tracees when their tracer exits
(kernel/ptrace.c exit_ptrace), resuming them with whatever registers they hold at that moment.
:func:`steal_userfaultfd` therefore runs the ptrace part in a forked helper process that
leaves the caller's process group and blocks terminal signals: if the caller is SIGKILLed at
any point the helper still restores the registers, closes the target's copy of the
descriptor and detaches.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as E
import os
import pickle
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import _uapi as U
from .. import errors
from . import _sys, forking, procfs
from . import ptrace as P

#: flags for the userfaultfd created in the target. UFFD_USER_MODE_ONLY (5.11) lets an
#: unprivileged target create one with vm.unprivileged_userfaultfd=0; write-protect tracking
#: only concerns user-mode faults anyway (include/uapi/linux/userfaultfd.h).
UFFD_FLAGS = U.O_CLOEXEC | U.O_NONBLOCK | U.UFFD_USER_MODE_ONLY

#: how long a thread may take to reach a ptrace stop before the attach is abandoned
STOP_TIMEOUT = 5.0
#: how long the helper keeps the target stopped waiting for the caller to arm
ARM_TIMEOUT = 60.0


def _wait_stop(tid: int, deadline: float) -> int | None:
    """The status of the next stop of ``tid``; None when the thread exited."""
    delay = 0.0
    while True:
        try:
            got, status = P.waitpid(tid, os.WNOHANG)
        except errors.NoSuchProcess:
            return None
        if got:
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return None
            return status
        if time.monotonic() > deadline:
            raise errors.KernelError(
                f"thread {tid} did not stop within {STOP_TIMEOUT:.0f} s "
                f"(state {procfs.thread_state(tid, tid) or '?'})", op="ptrace stop",
                hint="the thread may be in an uninterruptible wait (D) or a vfork; retry")
        time.sleep(delay)
        delay = min(0.005, delay + 0.0002)


def _event(status: int) -> int:
    return (status >> 16) & 0xFFFF


def find_syscall_insn(pid: int, maps: Iterable[procfs.Mapping] | None = None) -> int:
    """The address of a system-call instruction in an executable mapping of ``pid``:
    the vDSO first (always mapped, small), then the other executable mappings. The bytes
    need not be an instruction boundary of the code around them: only they get executed."""
    insn = P._nr().insn
    align = 4 if len(insn) == 4 else 1
    maps = list(maps if maps is not None else procfs.read_maps(pid))
    order = sorted((m for m in maps if (m.perms[2] == "x" and m.readable) or m.path == "[vdso]"),
                   key=lambda m: (m.path != "[vdso]", m.end - m.start))
    for m in order:
        try:
            data = P.read_mem(pid, m.start, min(m.end - m.start, 1 << 20))
        except errors.PermissionDenied:
            raise
        except errors.WriteWatchError:
            continue
        pos = data.find(insn)
        while pos >= 0 and pos % align:
            pos = data.find(insn, pos + 1)
        if pos >= 0:
            return m.start + pos
    raise errors.Unsupported(f"no system-call instruction found in the code of process {pid}",
                             feature="syscall injection")


@dataclass
class _Thread:
    tid: int
    saved: P.Regs | None = None  #: original registers, once modified
    vector: tuple[int, bytes] | None = None  #: aarch64: its SVE/FPSIMD registers then
    held: list[int] = field(default_factory=list)  #: signals held back, to send again


class ThreadGroupStop:
    """Every thread of ``pid`` seized and stopped; on exit, registers restored and detached.

    ``stopped``: threads already seized by this process and in a ptrace stop (``launch``:
    the exec stop). Use as a context manager; :meth:`syscall` runs a system call in the
    target."""

    def __init__(self, pid: int, *, stopped: Iterable[int] = (), options: int = 0) -> None:
        self.pid = pid
        self.options = int(options | P.PtraceOption.TRACESYSGOOD)
        self.threads: dict[int, _Thread] = {t: _Thread(t) for t in stopped}
        self.insn: int | None = None
        self.main: int | None = None

    # -- stopping --------------------------------------------------------------------------
    def __enter__(self) -> ThreadGroupStop:
        try:
            for t in self.threads:
                P.setoptions(t, self.options)
            self._stop_all()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _stop_all(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            new: list[int] = []
            try:
                self._seize_new(new)
            finally:
                # also when seizing one failed: a seized thread is detached by release()
                # only from a ptrace stop (PTRACE_DETACH of a running tracee is ESRCH)
                for tid in new:
                    self._settle(tid, deadline)
            if not new:
                break  # every live thread is stopped: none can clone any more
        if not self.threads:
            raise errors.NoSuchProcess(self.pid, f"process {self.pid} has no live thread")

    def _seize_new(self, new: list[int]) -> None:
        """Seize and interrupt every thread not seized yet, appending each to ``new``."""
        for tid in P.list_threads(self.pid):
            if tid in self.threads or procfs.thread_state(self.pid, tid) in ("Z", "X", ""):
                continue
            try:
                P.seize(tid, self.options)
            except errors.NoSuchProcess:
                continue  # exited meanwhile
            except errors.PermissionDenied:
                # kernel/ptrace.c ptrace_attach: EPERM also for a thread that began to exit
                # after the check above (task->exit_state); /proc then shows it Z or X, or
                # no more. Seen with a target ending threads all the time.
                if tid != self.pid and procfs.thread_state(self.pid, tid) in ("Z", "X", ""):
                    continue
                raise
            self.threads[tid] = _Thread(tid)
            new.append(tid)
            try:
                P.interrupt(tid)
            except errors.NoSuchProcess:
                pass

    def _settle(self, tid: int, deadline: float) -> None:
        """Wait for the PTRACE_INTERRUPT stop of a new tracee; hold back signals met first."""
        while True:
            status = _wait_stop(tid, deadline)
            if status is None:
                self.threads.pop(tid, None)
                return
            if _event(status) == P.PtraceEvent.STOP:
                return
            sig = os.WSTOPSIG(status)
            if sig != (signal.SIGTRAP | 0x80):
                self.threads[tid].held.append(sig)
            P.cont(tid, 0)  # the pending interrupt stops it next

    # -- injecting -------------------------------------------------------------------------
    def _pick_main(self) -> int:
        if self.main is not None and self.main in self.threads:
            return self.main
        order = sorted(self.threads, key=lambda t: t != self.pid)
        if not order:
            raise errors.NoSuchProcess(self.pid, f"process {self.pid} has no live thread")
        self.main = order[0]
        return self.main

    def syscall(self, nr: int, *args: int) -> int:
        """Run system call ``nr`` in the target; its raw return value (-errno on failure)."""
        tid = self._pick_main()
        th = self.threads[tid]
        if self.insn is None:
            self.insn = find_syscall_insn(self.pid)
        orig = P.getregs(tid)
        if th.saved is None:
            if isinstance(orig, P.X86Regs) and orig.cs != P.X86_USER64_CS:
                raise errors.Unsupported(f"thread {tid} runs 32-bit code (cs={orig.cs:#x})",
                                         feature="syscall injection into compat tasks")
            if isinstance(orig, P.Arm64Regs):
                th.vector = P.arm64_vector_state(tid)
                orig = self._arm64_settle(th, orig)
            th.saved = P.copy_regs(orig)
        regs = P.copy_regs(th.saved)
        a = [*args, 0, 0, 0, 0, 0, 0][:6]
        if isinstance(regs, P.X86Regs):
            regs.rip = self.insn
            regs.rax = nr
            regs.orig_rax = ctypes.c_ulonglong(-1).value  # no syscall restart on resume
            regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (
                ctypes.c_ulonglong(v).value for v in a)
        else:
            regs.pc = self.insn
            regs.regs[8] = nr
            for i, v in enumerate(a):
                regs.regs[i] = ctypes.c_ulonglong(v).value
            P.arm64_set_syscallno(tid, -1)
        P.setregs(tid, regs)
        return self._run_syscall(th, nr)

    def _run_syscall(self, th: _Thread, nr: int) -> int:
        deadline = time.monotonic() + STOP_TIMEOUT
        P.syscall_step(th.tid)
        while True:
            info = self._next_syscall_stop(th, deadline)
            if info.op == P.PTRACE_SYSCALL_INFO_ENTRY and info.u.entry.nr == nr:
                break
            P.syscall_step(th.tid)
        P.syscall_step(th.tid)
        while True:
            info = self._next_syscall_stop(th, deadline)
            if info.op == P.PTRACE_SYSCALL_INFO_EXIT:
                return int(info.u.exit.rval)
            P.syscall_step(th.tid)

    def _next_syscall_stop(self, th: _Thread, deadline: float) -> P.PtraceSyscallInfo:
        """Resume-and-wait until ``th``'s next syscall stop (the caller resumed it with
        PTRACE_SYSCALL); signals met on the way are held back."""
        while True:
            status = _wait_stop(th.tid, deadline)
            if status is None:
                self.threads.pop(th.tid, None)
                raise errors.NoSuchProcess(self.pid, f"process {self.pid} died during an "
                                           "injected system call")
            sig = os.WSTOPSIG(status)
            if sig == (signal.SIGTRAP | 0x80):
                return P.syscall_info(th.tid)
            if _event(status) == 0 and sig != signal.SIGTRAP:
                th.held.append(sig)  # signal-delivery stop: hold the signal back
            P.syscall_step(th.tid)

    def _arm64_settle(self, th: _Thread, regs: P.Arm64Regs) -> P.Arm64Regs:
        """The registers to restore on aarch64, with the call the kernel would make next.

        A thread stopped on an ``svc`` with no system call in progress (what an interrupted
        call looks like here, see the module docstring) is resumed unchanged to the entry
        stop of the call it makes there: the kernel has by then put ``__NR_restart_syscall``
        in ``x8`` if the interrupted call returned -ERESTART_RESTARTBLOCK (a relative sleep
        or futex wait then goes on with the time it had left). The call is skipped
        (syscall number -1 at the entry stop, arch/arm64/kernel/syscall.c el0_svc_common)
        and the saved registers send the thread back to the ``svc`` with the number and
        first argument it entered with: after the detach it makes exactly that call. A
        thread that was merely about to execute that ``svc`` makes the same call later."""
        if P.arm64_get_syscallno(th.tid) != -1:
            return regs  # at a syscall stop (launch: the exit of execve), nothing is owed
        try:
            at_pc = P.read_mem(self.pid, regs.pc, 4)
        except errors.WriteWatchError:
            return regs
        if at_pc != P.AARCH64.insn:
            return regs
        deadline = time.monotonic() + STOP_TIMEOUT
        P.syscall_step(th.tid)
        info = self._next_syscall_stop(th, deadline)
        if info.op != P.PTRACE_SYSCALL_INFO_ENTRY or info.instruction_pointer != regs.pc + 4:
            raise errors.KernelError(
                f"thread {th.tid} did not enter the system call at {regs.pc:#x} "
                f"(stop op {info.op} at {info.instruction_pointer:#x})", op="ptrace",
                hint="retry the attach")
        owed = P.copy_regs(regs)
        assert isinstance(owed, P.Arm64Regs)
        owed.regs[8] = info.u.entry.nr
        owed.regs[0] = info.u.entry.args[0]
        th.saved = owed  # from here on the thread's own registers are not what it had
        P.arm64_set_syscallno(th.tid, -1)
        P.syscall_step(th.tid)
        info = self._next_syscall_stop(th, deadline)
        if info.op != P.PTRACE_SYSCALL_INFO_EXIT:
            raise errors.KernelError(f"thread {th.tid}: no exit stop after a skipped call "
                                     f"(stop op {info.op})", op="ptrace")
        return owed

    # -- releasing -------------------------------------------------------------------------
    def _restored(self, saved: P.Regs) -> P.Regs:
        regs = P.copy_regs(saved)
        if isinstance(regs, P.X86Regs):
            orig = ctypes.c_longlong(regs.orig_rax).value
            err = -ctypes.c_longlong(regs.rax).value
            if orig >= 0 and err in P.RESTART_ERRNOS:
                regs.rax = (P._nr().restart_syscall if err == P.ERESTART_RESTARTBLOCK
                            else regs.orig_rax)
                regs.rip -= 2
            regs.orig_rax = ctypes.c_ulonglong(-1).value
        return regs

    def release(self) -> None:
        """Restore registers, detach every thread, send held-back signals. Never raises for
        a thread that is gone."""
        for th in list(self.threads.values()):
            try:
                if th.saved is not None:
                    P.setregs(th.tid, self._restored(th.saved))
                    if isinstance(th.saved, P.Arm64Regs):
                        P.arm64_set_syscallno(th.tid, -1)
                        if th.vector is not None:
                            P.arm64_set_vector_state(th.tid, th.vector)
            except errors.WriteWatchError:
                pass
            try:
                P.detach(th.tid)
            except errors.WriteWatchError:
                pass
        for th in self.threads.values():
            for sig in th.held:
                try:
                    P.tgkill(self.pid, th.tid, sig)
                except errors.WriteWatchError:
                    pass
        self.threads.clear()


def inject_syscall(pid: int, nr: int, *args: int) -> int:
    """Run system call ``nr(*args)`` in process ``pid`` (all its threads stopped meanwhile);
    the raw return value, -errno on failure. This process becomes the tracer for the call."""
    with ThreadGroupStop(pid) as st:
        return st.syscall(nr, *args)


_ERRMAP_UFFD: _sys.ErrMap = {
    E.EPERM: (errors.PermissionDenied, "the target may not create a userfaultfd: "
              "UFFD_USER_MODE_ONLY needs Linux 5.11, or a seccomp filter forbids it"),
    E.ENOSYS: (errors.Unsupported, "the kernel was built without CONFIG_USERFAULTFD"),
    E.EINVAL: (errors.Unsupported, "the kernel refuses UFFD_USER_MODE_ONLY (before 5.11)"),
}


def _grab(pid: int, target_fd: int) -> int:
    pidfd = P.pidfd_open(pid)
    try:
        return P.pidfd_getfd(pidfd, target_fd, pid)
    finally:
        _sys.close(pidfd)


def _check_uffd(fd: int) -> None:
    link = os.readlink(f"/proc/self/fd/{fd}")
    if "userfaultfd" not in link:
        _sys.close(fd)
        raise errors.KernelError(f"the descriptor taken from the target is {link}, "
                                 "not a userfaultfd", op="pidfd_getfd")


# -- the helper process ---------------------------------------------------------------------
def _send(sock: socket.socket, msg: object) -> None:
    try:
        sock.send(pickle.dumps(msg), socket.MSG_NOSIGNAL)
    except OSError:
        pass  # the caller is gone: carry on restoring


def _helper(sock: socket.socket, pid: int, flags: int, launch_go: int | None) -> None:
    """Body of the forked helper: stop, inject, hand over the descriptor number, wait for the
    caller to arm (or to die), close, restore, detach."""
    stopped: list[int] = []
    if launch_go is not None:
        # launch: seize the child before it execs, release it, catch the exec stop
        P.seize(pid, P.PtraceOption.TRACEEXEC | P.PtraceOption.TRACESYSGOOD)
        os.write(launch_go, b"g")
        os.close(launch_go)
        while True:
            _, status = P.waitpid(pid)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
                raise errors.InvalidTarget(f"the program exited before exec (status {code})",
                                           op="exec", hint="check the command and its path")
            if os.WIFSTOPPED(status) and _event(status) == P.PtraceEvent.EXEC:
                break
            sig = os.WSTOPSIG(status)
            P.cont(pid, 0 if _event(status) or sig == signal.SIGTRAP else sig)
        # The exec stop is inside execve: its return value is stored into rax/x0 after it,
        # overwriting registers set now (arch/x86/entry/syscall_64.c do_syscall_x64). Step to
        # the syscall-exit stop first, where a register change sticks.
        P.syscall_step(pid)
        while True:
            _, status = P.waitpid(pid)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                raise errors.NoSuchProcess(pid, f"process {pid} died at exec")
            if os.WSTOPSIG(status) == (signal.SIGTRAP | 0x80) and \
                    P.syscall_info(pid).op == P.PTRACE_SYSCALL_INFO_EXIT:
                break
            sig = os.WSTOPSIG(status)
            trap = _event(status) or sig in (signal.SIGTRAP, signal.SIGTRAP | 0x80)
            P.syscall_step(pid, 0 if trap else sig)
        stopped = [pid]
    with ThreadGroupStop(pid, stopped=stopped) as st:
        n = st.syscall(P._nr().userfaultfd, flags)
        if n < 0:
            _sys.raise_errno(-n, "userfaultfd (in the target)", errmap=_ERRMAP_UFFD, pid=pid)
        try:
            _send(sock, ("fd", n, st.main))
            ready, _, _ = select.select([sock], [], [], ARM_TIMEOUT)
            timed_out = not ready
            if ready:
                with contextlib.suppress(OSError):
                    sock.recv(16)  # b"go", or b"" when the caller died
        finally:
            rc = st.syscall(P._nr().close, n)
    _send(sock, ("done", rc, timed_out))


def _run_helper(sock: socket.socket, other: socket.socket, pid: int, flags: int,
                launch_go: int | None) -> None:
    code = 0
    try:
        other.close()
        # blocked rather than ignored: works from any thread (the caller may not be the
        # main thread), and job-control stops cannot catch the helper half way either
        signal.pthread_sigmask(signal.SIG_BLOCK, {
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
            signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGALRM})
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # out of the caller's process group: ^C and kill -PGID miss it
        _helper(sock, pid, flags, launch_go)
    except BaseException as exc:
        err = exc if isinstance(exc, errors.WriteWatchError) else errors.KernelError(
            f"attach helper failed: {type(exc).__name__}: {exc}", op="attach")
        _send(sock, ("err", err))
        code = 1
    finally:
        os._exit(code)


@dataclass(frozen=True)
class StealResult:
    """What :func:`steal_userfaultfd` did."""

    fd: int  #: the userfaultfd, in this process (close-on-exec)
    target_fd: int  #: its number in the target while it existed there (closed again)
    thread: int  #: the thread that executed the calls
    armed_stopped: bool  #: whether ``while_stopped`` finished before the target resumed


def steal_userfaultfd(pid: int, flags: int = UFFD_FLAGS, *,
                      while_stopped: Callable[[int], None] | None = None,
                      launch_go: int | None = None) -> StealResult:
    """Create a userfaultfd inside process ``pid`` and return a copy of it here.

    The target is stopped (all threads) from before the creation until ``while_stopped(fd)``
    returned (use it to register and arm: nothing the target writes is missed), then its copy
    is closed, its registers restored and it is detached. The ptrace work happens in a forked
    helper, so this process dying at any point leaves the target running unharmed.
    ``launch_go``: write end of a pipe the (not yet exec'd) child ``pid`` waits on; the
    helper seizes it, releases it, and injects at its exec stop, before its first
    instruction.
    """
    P._nr()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd: int | None = None
    helper = -1
    try:
        with forking.internal():
            helper = os.fork()
        if helper == 0:
            _run_helper(theirs, ours, pid, flags, launch_go)
        theirs.close()
        msg = _recv(ours, helper, pid)
        if msg[0] == "err":
            raise msg[1]
        _, target_fd, thread = msg
        try:
            fd = _grab(pid, target_fd)
            _check_uffd(fd)
            if while_stopped is not None:
                while_stopped(fd)
        finally:
            with contextlib.suppress(OSError):
                ours.send(b"go", socket.MSG_NOSIGNAL)
            done = _recv(ours, helper, pid)
        if done[0] == "err":
            raise done[1]
        return StealResult(fd, target_fd, thread, not done[2])
    except BaseException:
        if fd is not None:
            _sys.close(fd)
        raise
    finally:
        ours.close()
        if not theirs._closed:  # type: ignore[attr-defined]
            theirs.close()
        if helper > 0:
            _reap(helper)


def _reap(helper: int) -> None:
    """Reap the helper; when it has not exited yet (it has detached: only its own exit is
    left), leave the wait to a daemon thread instead of waiting here."""
    try:
        if os.waitpid(helper, os.WNOHANG)[0]:
            return
    except ChildProcessError:
        return

    def wait() -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(helper, 0)

    threading.Thread(target=wait, name=f"writewatch-reap-{helper}", daemon=True).start()


def _recv(sock: socket.socket, helper: int, pid: int) -> tuple[Any, ...]:
    while True:
        try:
            data = sock.recv(1 << 16)
        except InterruptedError:
            continue
        break
    if not data:
        raise errors.KernelError(f"the attach helper (pid {helper}) for process {pid} died",
                                 op="attach")
    msg: tuple[Any, ...] = pickle.loads(data)
    return msg
