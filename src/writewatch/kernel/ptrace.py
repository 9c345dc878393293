"""ptrace, waitpid, pidfd and /proc/PID/mem calls, through the choke point (:mod:`._sys`).

Constants are named as in ``include/uapi/linux/ptrace.h``, ``include/uapi/linux/elf.h`` and the
architecture's ``asm/unistd.h``; register layouts are ``struct user_regs_struct``
(``arch/x86/include/asm/user_64.h``) and ``struct user_pt_regs``
(``arch/arm64/include/uapi/asm/ptrace.h``), read and written with PTRACE_GETREGSET /
PTRACE_SETREGSET on ``NT_PRSTATUS`` (both architectures).
"""

from __future__ import annotations

import ctypes
import enum
import errno as E
import os
from typing import NamedTuple

from .. import _uapi as U
from .. import errors
from . import _sys

# -- include/uapi/linux/ptrace.h ------------------------------------------------------------
PTRACE_TRACEME = 0
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E  # Linux 5.3


class PtraceOption(enum.IntFlag):
    """``PTRACE_O_*`` (include/uapi/linux/ptrace.h)."""

    TRACESYSGOOD = 1
    TRACEFORK = 1 << 1
    TRACEVFORK = 1 << 2
    TRACECLONE = 1 << 3
    TRACEEXEC = 1 << 4
    TRACEVFORKDONE = 1 << 5
    TRACEEXIT = 1 << 6
    TRACESECCOMP = 1 << 7
    EXITKILL = 1 << 20
    SUSPEND_SECCOMP = 1 << 21


class PtraceEvent(enum.IntEnum):
    """``PTRACE_EVENT_*``: ``status >> 16`` of a ptrace event stop."""

    NONE = 0
    FORK = 1
    VFORK = 2
    CLONE = 3
    EXEC = 4
    VFORK_DONE = 5
    EXIT = 6
    SECCOMP = 7
    STOP = 128  # PTRACE_INTERRUPT stop or group-stop of a PTRACE_SEIZEd tracee


#: ``ptrace_syscall_info.op`` (include/uapi/linux/ptrace.h)
PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3

#: include/uapi/linux/elf.h
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_ARM_SYSTEM_CALL = 0x404
NT_ARM_SVE = 0x405

#: include/uapi/linux/wait.h: wait for every child, clone or not (threads of a tracee)
__WALL = 0x40000000

#: include/linux/errno.h (kernel-internal, seen by ptrace in ``rax`` of an x86-64 thread
#: stopped while inside an interrupted system call; aarch64 has put ``orig_x0`` back in ``x0``
#: before the stop, arch/arm64/kernel/signal.c do_signal)
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
RESTART_ERRNOS = frozenset({ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK})


class Syscalls(NamedTuple):
    """System call numbers of one architecture (arch/*/entry/syscalls, asm-generic/unistd.h)."""

    ptrace: int
    close: int
    userfaultfd: int
    pidfd_open: int
    pidfd_getfd: int
    restart_syscall: int
    tgkill: int
    getpid: int
    #: the instruction that enters the kernel, as stored in memory (little endian)
    insn: bytes


X86_64 = Syscalls(ptrace=101, close=3, userfaultfd=323, pidfd_open=434, pidfd_getfd=438,
                  restart_syscall=219, tgkill=234, getpid=39, insn=b"\x0f\x05")  # syscall
AARCH64 = Syscalls(ptrace=117, close=57, userfaultfd=282, pidfd_open=434, pidfd_getfd=438,
                   restart_syscall=128, tgkill=131, getpid=172,
                   insn=b"\x01\x00\x00\xd4")  # svc #0

MACHINE = U.MACHINE
NR: Syscalls | None = {"x86_64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}.get(MACHINE)


def _nr() -> Syscalls:
    if NR is None:
        raise errors.Unsupported(f"attaching to processes is not implemented on {MACHINE}",
                                 feature="syscall injection",
                                 hint="supported architectures: x86_64, aarch64")
    return NR


# -- register sets --------------------------------------------------------------------------
class X86Regs(ctypes.Structure):
    """``struct user_regs_struct`` (arch/x86/include/asm/user_64.h)."""

    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


class Arm64Regs(ctypes.Structure):
    """``struct user_pt_regs`` (arch/arm64/include/uapi/asm/ptrace.h)."""

    _fields_ = [("regs", ctypes.c_ulonglong * 31), ("sp", ctypes.c_ulonglong),
                ("pc", ctypes.c_ulonglong), ("pstate", ctypes.c_ulonglong)]


Regs = X86Regs | Arm64Regs

#: the 64-bit user code segment selector (arch/x86/include/asm/segment.h __USER_CS = 6*8+3)
X86_USER64_CS = 0x33


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class SyscallInfoEntry(ctypes.Structure):
    _fields_ = [("nr", ctypes.c_ulonglong), ("args", ctypes.c_ulonglong * 6)]


class SyscallInfoExit(ctypes.Structure):
    _fields_ = [("rval", ctypes.c_longlong), ("is_error", ctypes.c_ubyte)]


class _SyscallInfoU(ctypes.Union):
    _fields_ = [("entry", SyscallInfoEntry), ("exit", SyscallInfoExit),
                ("seccomp", ctypes.c_ulonglong * 8)]


class PtraceSyscallInfo(ctypes.Structure):
    """``struct ptrace_syscall_info`` (include/uapi/linux/ptrace.h, Linux 5.3)."""

    _fields_ = [("op", ctypes.c_ubyte), ("pad", ctypes.c_ubyte * 3), ("arch", ctypes.c_uint32),
                ("instruction_pointer", ctypes.c_ulonglong),
                ("stack_pointer", ctypes.c_ulonglong), ("u", _SyscallInfoU)]


# -- errors ---------------------------------------------------------------------------------
_PTRACE_HINT = ("ptrace needs CAP_SYS_PTRACE, or the same uid as the target with "
                "kernel.yama.ptrace_scope 0 (1: only descendants or a PR_SET_PTRACER grant; "
                "2: CAP_SYS_PTRACE only; 3: no attach at all); a non-dumpable or setuid "
                "target needs CAP_SYS_PTRACE")


def ptrace_scope() -> int | None:
    """``kernel.yama.ptrace_scope`` (Documentation/admin-guide/LSM/Yama.rst), None without Yama."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def permission_hint() -> str:
    scope = ptrace_scope()
    return _PTRACE_HINT + (f" (this machine: ptrace_scope={scope})" if scope is not None else
                           " (this machine: no Yama)")


#: errno -> error for ptrace requests; the hint shows this machine's Yama setting
PTRACE_ERRORS: _sys.ErrMap = {
    E.EPERM: (errors.PermissionDenied, permission_hint()),
    E.EACCES: (errors.PermissionDenied, permission_hint()),
    E.ESRCH: (errors.NoSuchProcess, None),
}


# -- calls ----------------------------------------------------------------------------------
def ptrace(op: str, request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    return _sys.syscall(f"ptrace({op}, {tid})", _nr().ptrace, request, tid, addr, data,
                        errmap=PTRACE_ERRORS, pid=tid)


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: become the tracer without stopping the thread (Linux 3.4)."""
    ptrace("SEIZE", PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: stop a seized thread (reported as a PTRACE_EVENT_STOP stop)."""
    ptrace("INTERRUPT", PTRACE_INTERRUPT, tid)


def setoptions(tid: int, options: int) -> None:
    ptrace("SETOPTIONS", PTRACE_SETOPTIONS, tid, 0, options)


def cont(tid: int, sig: int = 0) -> None:
    ptrace("CONT", PTRACE_CONT, tid, 0, sig)


def syscall_step(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: resume until the next system-call entry or exit."""
    ptrace("SYSCALL", PTRACE_SYSCALL, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    ptrace("DETACH", PTRACE_DETACH, tid, 0, sig)


def _regs_type() -> type[X86Regs] | type[Arm64Regs]:
    return X86Regs if _nr() is X86_64 else Arm64Regs


def getregs(tid: int) -> Regs:
    regs = _regs_type()()
    iov = _Iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    ptrace("GETREGSET", PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))
    return regs


def setregs(tid: int, regs: Regs) -> None:
    iov = _Iovec(ctypes.addressof(regs), ctypes.sizeof(regs))
    ptrace("SETREGSET", PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))


def copy_regs(regs: Regs) -> Regs:
    out = type(regs)()
    ctypes.memmove(ctypes.addressof(out), ctypes.addressof(regs), ctypes.sizeof(regs))
    return out


def arm64_vector_state(tid: int) -> tuple[int, bytes] | None:
    """The thread's SVE registers (``NT_ARM_SVE``: Z, P, FFR, or the FPSIMD view when SVE
    is not live), else its FPSIMD registers (``NT_PRFPREG``), as ``(note, raw bytes)``.

    A system call discards the SVE state beyond the FPSIMD registers
    (the arm64 system-call entry, ``fp_user_discard``), which a thread interrupted
    anywhere (not in a call of its own) still holds live: a call injected there must put
    them back (:func:`arm64_set_vector_state`)."""
    for note, size in ((NT_ARM_SVE, 1 << 16), (NT_PRFPREG, 1 << 10)):
        buf = ctypes.create_string_buffer(size)
        iov = _Iovec(ctypes.addressof(buf), size)
        try:
            ptrace("GETREGSET", PTRACE_GETREGSET, tid, note, ctypes.addressof(iov))
        except errors.WriteWatchError:
            continue  # EINVAL: no SVE on this CPU or kernel
        return note, buf.raw[:iov.iov_len]
    return None


def arm64_set_vector_state(tid: int, state: tuple[int, bytes]) -> None:
    note, data = state
    buf = ctypes.create_string_buffer(data, len(data))
    iov = _Iovec(ctypes.addressof(buf), len(data))
    ptrace("SETREGSET", PTRACE_SETREGSET, tid, note, ctypes.addressof(iov))


def arm64_get_syscallno(tid: int) -> int:
    val = ctypes.c_int()
    iov = _Iovec(ctypes.addressof(val), ctypes.sizeof(val))
    ptrace("GETREGSET", PTRACE_GETREGSET, tid, NT_ARM_SYSTEM_CALL, ctypes.addressof(iov))
    return val.value


def arm64_set_syscallno(tid: int, nr: int) -> None:
    val = ctypes.c_int(nr)
    iov = _Iovec(ctypes.addressof(val), ctypes.sizeof(val))
    ptrace("SETREGSET", PTRACE_SETREGSET, tid, NT_ARM_SYSTEM_CALL, ctypes.addressof(iov))


def syscall_info(tid: int) -> PtraceSyscallInfo:
    """PTRACE_GET_SYSCALL_INFO: whether a syscall stop is an entry or an exit, and its
    number or return value (Linux 5.3)."""
    info = PtraceSyscallInfo()
    ptrace("GET_SYSCALL_INFO", PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(info),
           ctypes.addressof(info))
    return info


def waitpid(tid: int, options: int = 0) -> tuple[int, int]:
    """``waitpid(tid, &status, options | __WALL)``; (0, 0) with WNOHANG and nothing to report."""
    got, status = _sys.os_call(f"waitpid({tid})", os.waitpid, tid, options | __WALL,
                               errmap={E.ECHILD: (errors.NoSuchProcess, None)}, pid=tid)
    return int(got), int(status)


def tgkill(tgid: int, tid: int, sig: int) -> None:
    _sys.syscall(f"tgkill({tgid}, {tid}, {sig})", _nr().tgkill, tgid, tid, sig, pid=tid)


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (Linux 5.3)."""
    return _sys.syscall("pidfd_open", _nr().pidfd_open, pid, 0, pid=pid, errmap={
        E.ENOSYS: (errors.Unsupported, "pidfd_open needs Linux 5.3"),
        E.ESRCH: (errors.NoSuchProcess, None)})


def pidfd_getfd(pidfd: int, targetfd: int, pid: int) -> int:
    """A duplicate, in this process, of descriptor ``targetfd`` of the process behind
    ``pidfd`` (Linux 5.6; needs PTRACE_MODE_ATTACH_REALCREDS; the copy is close-on-exec)."""
    return _sys.syscall("pidfd_getfd", _nr().pidfd_getfd, pidfd, targetfd, 0, pid=pid, errmap={
        E.ENOSYS: (errors.Unsupported, "pidfd_getfd needs Linux 5.6"),
        E.EPERM: (errors.PermissionDenied, permission_hint()),
        E.ESRCH: (errors.NoSuchProcess, None)})


#: include/uapi/linux/kcmp.h
KCMP_VM = 1


def same_mm(pid1: int, pid2: int) -> bool | None:
    """Whether two processes share one address space (kcmp KCMP_VM, Linux 3.5 with
    CONFIG_KCMP: a vfork or ``clone(CLONE_VM)`` child does); None when it cannot be told (no
    kcmp, a process gone, no permission)."""
    nr = U.NR.get("kcmp")
    if nr is None:
        return None
    try:
        return _sys.syscall("kcmp", nr, pid1, pid2, KCMP_VM, 0, 0, pid=pid2) == 0
    except errors.WriteWatchError:
        return None


def read_mem(pid: int, addr: int, length: int) -> bytes:
    """``length`` bytes at ``addr`` in ``pid`` through /proc/PID/mem (PTRACE_MODE_ATTACH)."""
    path = f"/proc/{pid}/mem"
    errmap: _sys.ErrMap = {E.ENOENT: (errors.NoSuchProcess, None),
                           E.EACCES: (errors.PermissionDenied, permission_hint()),
                           E.EPERM: (errors.PermissionDenied, permission_hint())}
    fd = _sys.os_call(f"open {path}", os.open, path, os.O_RDONLY | os.O_CLOEXEC, errmap=errmap,
                      pid=pid)
    try:
        return bytes(_sys.os_call(f"read {path}", os.pread, fd, length, addr, errmap=errmap,
                                  pid=pid))
    finally:
        _sys.close(fd)


def list_threads(pid: int) -> list[int]:
    """The thread ids of ``pid`` (/proc/PID/task)."""
    return sorted(int(t) for t in _sys.os_call(
        f"list /proc/{pid}/task", os.listdir, f"/proc/{pid}/task",
        errmap={E.ENOENT: (errors.NoSuchProcess, None)}, pid=pid))
