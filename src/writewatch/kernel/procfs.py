"""Readers for /proc and /sys files: maps, status, clear_refs, THP and hugetlb settings.

Parsers are pure (bytes in, immutable values out); readers do the I/O through the choke point.
"""

from __future__ import annotations

import bisect
import errno as E
import functools
import os
import re
from collections.abc import Sequence
from typing import NamedTuple

from .. import errors
from . import _sys

#: errno of /proc/PID/* opens and reads -> error, with what fixes a refusal
PROC_ERRORS: _sys.ErrMap = {
    E.ENOENT: (errors.NoSuchProcess, None),
    E.ESRCH: (errors.NoSuchProcess, None),
    E.EACCES: (errors.PermissionDenied,
               "needs PTRACE_MODE_READ on the process: same uid (yama ptrace_scope 0) or "
               "CAP_SYS_PTRACE"),
    E.EPERM: (errors.PermissionDenied,
              "needs PTRACE_MODE_READ on the process: same uid (yama ptrace_scope 0) or "
              "CAP_SYS_PTRACE"),
}


#: Kernel-provided mappings: never written by user code, never trackable (arch/x86/entry/vdso,
#: kernel/events/uprobes.c; [vvar_vclock] since 6.18).
SPECIAL = frozenset({"[vsyscall]", "[vvar]", "[vdso]", "[vvar_vclock]", "[uprobes]"})


class Mapping(NamedTuple):
    """One line of /proc/PID/maps (fs/proc/task_mmu.c show_map_vma)."""

    start: int
    end: int
    perms: str  #: "rwxp" / "rw-s" ...
    offset: int
    dev: str
    inode: int
    path: str  #: file path, "[heap]", "[stack]", "[vdso]", "" for anonymous ...

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def anonymous(self) -> bool:
        return self.inode == 0 and not self.path.startswith("/")

    @property
    def special(self) -> bool:
        """[vsyscall], [vvar], [vdso]...: kernel-provided, never trackable."""
        return self.path in SPECIAL

    @property
    def label(self) -> str:
        return self.path or "[anon]"


_MAPS_RE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+) *(.*)$")


@functools.lru_cache(maxsize=16384)
def _parse_line(line: bytes) -> Mapping | None:
    m = _MAPS_RE.match(line)
    if m is None:
        return None
    return Mapping(int(m[1], 16), int(m[2], 16), m[3].decode(), int(m[4], 16), m[5].decode(),
                   int(m[6]), m[7].decode(errors="surrogateescape"))


def parse_maps(data: bytes) -> tuple[Mapping, ...]:
    """Parse the text of /proc/PID/maps (pure). Lines seen before are not parsed again: a
    process's maps change by a few lines between two reads."""
    return tuple(filter(None, map(_parse_line, data.split(b"\n"))))


def coverage(maps: Sequence[Mapping], start: int, end: int,
             ends: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """What of ``[start, end)`` the sorted ``maps`` cover, adjacent mappings coalesced (pure):
    registering or splitting VMAs changes the lines of maps, not what is mapped. ``ends``:
    the maps' end addresses, to start with a binary search when called for many ranges."""
    out: list[tuple[int, int]] = []
    for m in maps[bisect.bisect_right(ends, start) if ends is not None else 0:]:
        if m.start >= end:
            break
        lo, hi = max(m.start, start), min(m.end, end)
        if lo < hi:
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
    return out


def read_bytes(path: str, pid: int | None = None) -> bytes:
    fd = _sys.os_call(f"open {path}", os.open, path, os.O_RDONLY | os.O_CLOEXEC,
                      errmap=PROC_ERRORS, pid=pid)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = _sys.os_call(f"read {path}", os.read, fd, 1 << 16, errmap=PROC_ERRORS,
                                 pid=pid)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        _sys.close(fd)


def _slurp(path: str) -> bytes:
    """The whole of a small /proc file, read with os.read, without open()'s buffered file
    object: the files read at every collect (stat, children) cost 14 instead of 24 us each
    on a 2-CPU VM. OSError when gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_maps(pid: int | str = "self") -> tuple[Mapping, ...]:
    return parse_maps(read_bytes(f"/proc/{pid}/maps", pid if isinstance(pid, int) else None))


def pids() -> list[int]:
    """Every process id in /proc (thread group leaders)."""
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def children(pid: int) -> set[int]:
    """The children of every thread of ``pid`` (/proc/PID/task/TID/children, 3.5+ with
    CONFIG_PROC_CHILDREN); empty when the process is gone."""
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out.update(int(c) for c in _slurp(f"/proc/{pid}/task/{tid}/children").split())
        except OSError:
            pass
    return out


def cgroup_dir(path: str) -> str:
    """The directory of cgroup v2 ``path``: an existing directory holding ``cgroup.procs``,
    or a path inside the cgroup2 mount ("/system.slice/x.service"). The root of the mount is
    refused: it holds every process of the machine (or of the cgroup namespace)."""
    roots = []
    for line in read_bytes("/proc/self/mountinfo").decode(errors="replace").splitlines():
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] == "cgroup2":
            roots.append(os.path.realpath(pre.split()[4]))
    found = None
    if path and os.path.isfile(os.path.join(path, "cgroup.procs")):
        found = os.path.realpath(path)
    for root in roots if path and found is None else ():
        cand = os.path.join(root, path.lstrip("/"))
        if os.path.isfile(os.path.join(cand, "cgroup.procs")):
            found = os.path.realpath(cand)
            break
    if found is not None and found in roots:
        raise errors.InvalidTarget(f"{path} is the root cgroup: it holds every process here",
                                   hint="give a cgroup below it (a service, a container)")
    if found is not None:
        return found
    raise errors.InvalidTarget(f"{path} is not a cgroup v2 directory",
                               hint="give a directory with cgroup.procs, e.g. "
                                    "/sys/fs/cgroup/system.slice/foo.service")


def frozen_cgroup(pid: int) -> str | None:
    """The cgroup directory that keeps ``pid`` frozen, or None: the v2 freezer
    (``cgroup.events``: ``frozen 1``, or ``cgroup.freeze`` 1 while freezing) or v1's
    (``freezer.state`` FROZEN or FREEZING). A frozen task reaches no ptrace stop until
    thawed (kernel/cgroup/freezer.c)."""
    try:
        lines = read_bytes(f"/proc/{pid}/cgroup").decode(errors="replace").splitlines()
    except errors.WriteWatchError:
        return None
    mounts = read_bytes("/proc/self/mountinfo").decode(errors="replace").splitlines()

    def mount_of(fstype: str, option: str = "") -> str | None:
        for line in mounts:
            pre, _, post = line.partition(" - ")
            f = post.split(" ")
            if f[0] == fstype and (not option or option in f[-1].split(",")):
                return pre.split()[4]
        return None

    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # the v2 hierarchy
            root = mount_of("cgroup2")
            if root is None:
                continue
            d = os.path.join(root, path.lstrip("/"))
            freeze = read_setting(os.path.join(d, "cgroup.freeze"))
            events = read_setting(os.path.join(d, "cgroup.events")) or ""
            if freeze == "1" or "frozen 1" in events:
                return d
        elif "freezer" in controllers.split(","):
            root = mount_of("cgroup", "freezer")
            if root is None:
                continue
            d = os.path.join(root, path.lstrip("/"))
            if read_setting(os.path.join(d, "freezer.state")) in ("FROZEN", "FREEZING"):
                return d
    return None


def cgroup_pids(path: str) -> set[int]:
    """Every process in cgroup directory ``path`` and the cgroups below it."""
    out: set[int] = set()
    for root, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(root, "cgroup.procs"), "rb") as f:
                    out.update(int(p) for p in f.read().split())
            except OSError:
                pass  # removed meanwhile
    return out


class Stat(NamedTuple):
    """Fields of /proc/PID/stat (fs/proc/array.c do_task_stat; proc(5) numbers them)."""

    state: str  #: (3) R, S, D, T, t, Z, X...
    ppid: int  #: (4)
    minflt: int  #: (10) minor faults
    cminflt: int  #: (11) minor faults of waited-for children: grows when a child is reaped
    starttime: int  #: (22) clock ticks after boot: with the pid, names a process uniquely
    flags: int = 0  #: (9) PF_* task flags (include/linux/sched.h)


def parse_stat(data: bytes) -> Stat:
    """Parse /proc/PID/stat (pure): the fields after the ")" closing comm, which may itself
    hold spaces and parentheses."""
    f = data[data.rindex(b")") + 2:].split()
    return Stat(f[0].decode(), int(f[1]), int(f[7]), int(f[8]), int(f[19]), int(f[6]))


def read_stat(pid: int) -> Stat | None:
    """/proc/PID/stat, or None when the process is gone."""
    try:
        return parse_stat(_slurp(f"/proc/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def parse_stat_state(data: bytes) -> str:
    """The state letter of a ``/proc/PID/stat`` or ``/proc/PID/task/TID/stat`` line (pure;
    the command name in parentheses may itself contain ``)``)."""
    return data[data.rindex(b")") + 2:][:1].decode()


def thread_state(pid: int, tid: int) -> str:
    """The state letter of /proc/PID/task/TID/stat (R, S, D, T, t, Z, X...), "" when gone."""
    try:
        return parse_stat_state(_slurp(f"/proc/{pid}/task/{tid}/stat"))
    except (OSError, ValueError):
        return ""


def thread_states(pid: int) -> list[str]:
    """The state letter of every thread of ``pid`` (threads that exit meanwhile are left
    out); :class:`NoSuchProcess` when the process is gone."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise errors.NoSuchProcess(pid) from None
    states = (thread_state(pid, int(t)) for t in tids)
    return [s for s in states if s]


#: one VMA of /proc/PID/smaps: its range, then (lazily, within the entry) its VmFlags line
_SMAPS_VMA = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) [^\n]*\n(?:(?![0-9a-f]+-)[^\n]*\n)*?"
                        rb"VmFlags:([^\n]*)", re.MULTILINE)


def parse_smaps_flags(data: bytes) -> tuple[tuple[int, int, frozenset[str]], ...]:
    """``(start, end, VmFlags)`` for each VMA of ``/proc/PID/smaps`` text (pure). ``sd`` is
    VM_SOFTDIRTY, ``ht`` hugetlb, ``uw`` uffd-wp registered (fs/proc/task_mmu.c
    show_smap_vma_flags)."""
    return tuple((int(m[1], 16), int(m[2], 16), frozenset(m[3].decode().split()))
                 for m in _SMAPS_VMA.finditer(data))


def vma_flags(pid: int | str) -> tuple[tuple[int, int, frozenset[str]], ...]:
    """The VmFlags of every VMA of ``pid`` (a walk of its page tables: smaps counts pages)."""
    return parse_smaps_flags(read_bytes(f"/proc/{pid}/smaps",
                                        pid if isinstance(pid, int) else None))


def parse_status(data: bytes) -> dict[str, str]:
    """``/proc/PID/status`` as a dict of its fields (pure)."""
    out = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, val = line.partition(":")
        if sep:
            out[key] = val.strip()
    return out


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/PID/status, e.g. ``VmPTE`` (page-table memory) or ``VmRSS``."""
    value = parse_status(read_bytes(f"/proc/{pid}/status"))[field]
    return int(value.split()[0])


def clear_refs(pid: int | str, value: int) -> None:
    """Write ``value`` to /proc/PID/clear_refs (4 clears soft-dirty for the whole mm)."""
    path = f"/proc/{pid}/clear_refs"
    fd = _sys.os_call(f"open {path}", os.open, path, os.O_WRONLY | os.O_CLOEXEC,
                      errmap=PROC_ERRORS, pid=pid if isinstance(pid, int) else None)
    try:
        _sys.os_call(f"write {path}", os.write, fd, f"{value}\n".encode(), errmap=PROC_ERRORS)
    finally:
        _sys.close(fd)


def read_setting(path: str) -> str | None:
    """The text of a /proc/sys or /sys setting, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except OSError:
        return None


def thp_mode() -> str | None:
    """The bracketed choice of /sys/kernel/mm/transparent_hugepage/enabled."""
    text = read_setting("/sys/kernel/mm/transparent_hugepage/enabled")
    if text is None:
        return None
    m = re.search(r"\[(\w+)\]", text)
    return m[1] if m else text


def thp_pmd_size() -> int | None:
    text = read_setting("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
    return int(text) if text else None
