"""Soft-dirty: ``/proc/PID/clear_refs`` value 4 and pagemap bit 55 (x86-64, s390, ppc64 with
``CONFIG_MEM_SOFT_DIRTY``; not arm64). Works on every kernel since 3.11, for this process and
for others.

Kernel semantics (Documentation/admin-guide/mm/soft-dirty.rst, fs/proc/task_mmu.c):

* Writing 4 to ``clear_refs`` clears the soft-dirty bit of every PTE and ``VM_SOFTDIRTY`` of
  every VMA **of the whole process** (``clear_refs_write`` walks the whole mm under the mmap
  write lock) and write-protects the PTEs; the next write faults and sets the bit again. There
  is no ranged reset: ``ranged_reset`` is False. A collect that resets therefore reads every
  span of every soft-dirty backend on the same process first (in the same step), and keeps
  what the others' spans held for their next collect. Another user of ``clear_refs`` on the
  same process (CRIU's pre-dump, a second library, a shell ``echo 4``) clears our bits too:
  writes made before its reset are lost to us. Nothing can detect that.
* Bit 55 reads ``pte_soft_dirty(pte) || (vma->vm_flags & VM_SOFTDIRTY)``. The kernel sets
  ``VM_SOFTDIRTY`` on every new or expanded VMA (``mmap_region``, ``brk``, stack growth,
  ``mremap`` growth) so that unmap + map at the same place reads dirty. Every page of such a
  VMA reads dirty, written or not, until the next reset: those are real false positives of
  the mechanism. They are reported as written, never hidden, and counted in
  ``Collected.conservative`` with a reason when this backend can tell: ``/proc/PID/smaps``
  ``VmFlags`` shows ``sd`` on the VMA, or a hole (no PTE) inside the VMA reads dirty (a hole
  has no PTE bit, so only ``VM_SOFTDIRTY`` makes it dirty).
* A merge of a clean VMA with a new one makes the whole merged VMA read dirty (false
  positives). Before "mm: propagate VM_SOFTDIRTY on merge" (bf14d4a05387, ~6.19, backported
  to 6.18.y) some merges could instead drop ``VM_SOFTDIRTY`` (false negatives on the new
  part's holes; populated pages keep their PTE bits).
* mprotect RO/RW toggles do not set the bit since 6.0 (``vma_soft_dirty_enabled``).
* ``mremap`` sets the bit on every moved PTE (``move_soft_dirty_pte``).
* A transparent huge page carries one bit for the whole PMD: a write to one 4 KiB page of a
  PMD-mapped THP reports all 512 (false positives, not told apart).
* Pinned COW pages are skipped by ``clear_refs`` (``pte_is_pinned``): they read dirty forever.
* The bit lives in the PTE. A page that leaves memory loses it: a shmem page swapped out, a
  file page written back and reclaimed, a ``MADV_DONTNEED`` zap. Pages that were resident at
  the last reset and are gone now are reported (conservatively: their content may differ). A
  page first faulted in *after* the last reset, written, and reclaimed before the next collect
  (file or shmem memory only: anonymous memory keeps the bit in its swap entry) is not
  reported: the kernel kept no trace of it.
* A span whose mapped layout changed since the last reset (munmap, mremap away, partial
  unmap) is reported whole, with a reason.

Reading and resetting without losing writes. Pages read clean and then written before the
reset would be lost (the reset clears their bit). So:

* Another process is stopped with SIGSTOP while its pagemap is read and its ``clear_refs``
  written, and continued with SIGCONT in a ``finally`` (a process found already stopped is
  left as it was). The stop is visible to its parent (``waitpid(WUNTRACED)``, SIGCHLD with
  CLD_STOPPED/CLD_CONTINUED) and to job control; a process that is stopped by someone else
  while we hold it is continued by our SIGCONT.
* In this process the reads (``pread`` of pagemap, or the ``PAGEMAP_SCAN`` ioctl) and the
  ``clear_refs`` write are made by one C-level iteration, ``list(map(partial.__call__,
  calls))``, over libc functions loaded with :class:`ctypes.PyDLL`, which does not release
  the GIL around the call. No bytecode runs between the calls (the cyclic garbage collector,
  whose finalizers are bytecode, is paused), so the interpreter never checks for a GIL drop
  request there: **no other Python thread runs from the first read to the reset**, so no
  write made by Python code can fall between them. Not covered: a native
  thread (C, Rust, numpy kernels, I/O into a buffer by ``readinto``, a ``ctypes.CDLL`` call)
  that released the GIL, and other threads or processes sharing the memory (``MAP_SHARED``
  with another process, a thread created by native code). A write such a thread makes to a
  page after that page's entry was read and before ``clear_refs`` is written is lost. The
  window is the duration of the reads plus the ``clear_refs`` walk (microseconds to
  milliseconds, proportional to the tracked size and to the process's mapped memory). Stop or
  quiesce such writers around ``collect()`` when that matters; uffd-async has no such window.
* A read that fails inside that step cannot undo the reset: the affected span is then
  reported whole, with the reason.

On 6.8+ the ``PAGEMAP_SCAN`` ioctl reports ``PAGE_IS_SOFT_DIRTY`` (same meaning as bit 55) and
is used when present (``method="auto"``); older kernels read the classic 64-bit entries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as E
import functools
import gc
import mmap
import os
import re
import signal
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from .. import _uapi as U
from .. import errors
from ..kernel import LINUX, KernelCalls, LinuxKernel, _sys, procfs
from ..pages import Pages
from .base import Backend, Collected, Span, register

__all__ = ["PageState", "SoftDirtyBackend", "parse_smaps_flags", "parse_smaps_softdirty",
           "parse_stat_state", "probe"]

_SD = np.uint64(U.PagemapBit.SOFT_DIRTY)
_PRESENT = np.uint64(U.PagemapBit.PRESENT)
_SWAPPED = np.uint64(U.PagemapBit.SWAPPED)
_CAT_SD = int(U.PageCategory.SOFT_DIRTY)
_CAT_PRESENT = int(U.PageCategory.PRESENT)
_CAT_SWAPPED = int(U.PageCategory.SWAPPED)
_EMPTY = np.empty((0, 2), np.uint64)

#: seconds to wait for another process to reach the stopped state after SIGSTOP
STOP_TIMEOUT = 10.0

# libc entry points that keep the GIL while they run (ctypes.PyDLL: FUNCFLAG_PYTHONAPI), for the
# read-and-reset step of this process. errno is per call: only checked through the results.
_pylibc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_pread = _pylibc.pread64
_pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]
_pread.restype = ctypes.c_ssize_t
_write = _pylibc.write
_write.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
_write.restype = ctypes.c_ssize_t
_ioctl = _pylibc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int
_CLEAR_SOFT_DIRTY = b"%d" % U.CLEAR_REFS_SOFT_DIRTY
_CALL = functools.partial.__call__


def _run_holding_gil(calls: Sequence[functools.partial[int]]) -> list[int]:
    """Call each ``partial`` of a PyDLL function in order, the GIL held from first to last.

    ``list`` drives ``map`` in C and ``partial.__call__`` calls the foreign function in C: no
    bytecode runs between the calls, so no eval-breaker check can hand the GIL over. The
    cyclic garbage collector is paused meanwhile: a collection triggered by an allocation would
    run finalizers, which are bytecode."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return list(map(_CALL, calls))
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Pure parsers

#: one VMA of /proc/PID/smaps: its range, then (lazily, within the entry) its VmFlags line
_SMAPS_VMA = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) [^\n]*\n(?:(?![0-9a-f]+-)[^\n]*\n)*?"
                        rb"VmFlags:([^\n]*)", re.MULTILINE)


def parse_smaps_flags(data: bytes) -> tuple[tuple[int, int, frozenset[str]], ...]:
    """``(start, end, VmFlags)`` for each VMA of ``/proc/PID/smaps`` text (pure).

    ``sd`` in VmFlags is ``VM_SOFTDIRTY`` (fs/proc/task_mmu.c show_smap_vma_flags)."""
    return tuple((int(m[1], 16), int(m[2], 16), frozenset(m[3].decode().split()))
                 for m in _SMAPS_VMA.finditer(data))


def parse_smaps_softdirty(data: bytes) -> tuple[tuple[int, int], ...]:
    """The ranges of the VMAs flagged ``sd`` (VM_SOFTDIRTY) in smaps text (pure; the flag
    test is a bytes search, so the many clean VMAs of a process cost little)."""
    return tuple((int(m[1], 16), int(m[2], 16)) for m in _SMAPS_VMA.finditer(data)
                 if b" sd" in m[3])


def parse_stat_state(data: bytes) -> str:
    """The state letter of a ``/proc/PID/stat`` or ``/proc/PID/task/TID/stat`` line (pure;
    the command name in parentheses may itself contain ``)``)."""
    rest = data[data.rindex(b")") + 2:]
    return rest[:1].decode()


class PageState(NamedTuple):
    """What one read found for one span, one element per page."""

    dirty: np.ndarray  #: bit 55 / PAGE_IS_SOFT_DIRTY
    present: np.ndarray
    swapped: np.ndarray  #: swap entry or any other non-present non-none entry
    ok: bool = True  #: False when the read failed (the span is then reported whole)

    @property
    def resident(self) -> np.ndarray:
        out: np.ndarray = self.present | self.swapped
        return out


def decode_state(raw: np.ndarray) -> PageState:
    """Classic pagemap entries -> :class:`PageState` (pure, vectorised)."""
    raw = np.asarray(raw, dtype=np.uint64)
    return PageState((raw & _SD) != 0, (raw & _PRESENT) != 0, (raw & _SWAPPED) != 0)


def state_from_regions(regions: np.ndarray, start: int, npages: int,
                       page_size: int) -> PageState:
    """PAGEMAP_SCAN regions ``(start, end, categories)`` -> :class:`PageState` (pure).

    Pages in no region (outside every VMA) are clean, absent."""
    cats = np.zeros(npages, np.uint64)
    if len(regions):
        lo = ((regions[:, 0] - np.uint64(start)) // np.uint64(page_size)).astype(np.int64)
        hi = ((regions[:, 1] - np.uint64(start)) // np.uint64(page_size)).astype(np.int64)
        lens = hi - lo
        idx = np.repeat(np.arange(len(regions)), lens)
        within = np.arange(len(idx)) - np.repeat(np.cumsum(lens) - lens, lens)
        cats[lo[idx] + within] = regions[idx, 2]
    return PageState((cats & np.uint64(_CAT_SD)) != 0, (cats & np.uint64(_CAT_PRESENT)) != 0,
                     (cats & np.uint64(_CAT_SWAPPED)) != 0)


# ---------------------------------------------------------------------------------------------
# Availability

#: exit codes of the probe child
_PROBE_REASONS = {
    0: (True, "clear_refs 4 clears pagemap bit 55 and a write sets it again"),
    1: (False, "CONFIG_MEM_SOFT_DIRTY is off (pagemap bit 55 never set)"),
    2: (False, "writing 4 to /proc/self/clear_refs did not clear pagemap bit 55"),
    3: (False, "a write after clear_refs 4 did not set pagemap bit 55"),
    4: (False, "/proc/self/clear_refs or /proc/self/pagemap cannot be used"),
}


def _probe_child() -> int:
    """In a forked child: write a page, clear_refs 4, check bit 55 clears, write, check it
    sets (the selftest soft-dirty.c test_simple, once). Returns a :data:`_PROBE_REASONS` key."""
    ps = mmap.PAGESIZE
    try:
        buf = mmap.mmap(-1, ps)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        pm = os.open("/proc/self/pagemap", os.O_RDONLY)
        cr = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return 4

    def dirty() -> bool:
        raw = int.from_bytes(os.pread(pm, 8, addr // ps * 8), "little")
        return bool(raw & int(U.PagemapBit.SOFT_DIRTY))

    try:
        buf[0] = 1
        if not dirty():
            return 1
        os.write(cr, _CLEAR_SOFT_DIRTY)
        if dirty():
            return 2
        buf[0] = 2
        return 0 if dirty() else 3
    except OSError:
        return 4


def probe() -> tuple[bool, str]:
    """Whether soft-dirty works here, and why not, from a functional test run in a forked
    child (the test resets soft-dirty, which would disturb the caller's own state)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return False, "no /proc/PID/clear_refs (CONFIG_PROC_PAGE_MONITOR is off)"
    pid = os.fork()
    if pid == 0:
        code = 4
        try:
            code = _probe_child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return _PROBE_REASONS.get(code, (False, f"the probe process failed (status {code})"))


@functools.lru_cache(maxsize=1)
def scan_supported() -> bool:
    """Whether PAGEMAP_SCAN accepts PAGE_IS_SOFT_DIRTY (6.8+)."""
    ps = LINUX.page_size
    try:
        addr = _sys.mmap(0, ps, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except errors.WriteWatchError:
        return False
    fd = -1
    try:
        fd = LINUX.open_pagemap("self")
        LINUX.pagemap_scan(fd, addr, addr + ps, category_mask=_CAT_SD, return_mask=_CAT_SD,
                           vec_len=1)
        return True
    except errors.WriteWatchError:
        return False
    finally:
        if fd >= 0:
            LINUX.close(fd)
        _sys.munmap(addr, ps)


# ---------------------------------------------------------------------------------------------
# Stopping another process

def _thread_states(pid: int) -> list[str]:
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        raise errors.NoSuchProcess(pid, op="stop") from None
    for tid in tids:
        try:
            out.append(parse_stat_state(procfs.read_bytes(f"/proc/{pid}/task/{tid}/stat")))
        except errors.NoSuchProcess:
            continue  # the thread exited
    return out


_STOPPED = {"T", "t", "Z", "X", "x"}


@contextmanager
def stopped(pid: int, timeout: float = STOP_TIMEOUT) -> Iterator[None]:
    """Hold ``pid`` stopped (SIGSTOP ... SIGCONT). A process already stopped is left alone."""
    if all(s in _STOPPED for s in _thread_states(pid)):
        yield
        return
    _sys.os_call("kill SIGSTOP", os.kill, pid, signal.SIGSTOP, pid=pid)
    try:
        deadline = time.monotonic() + timeout
        delay = 1e-4
        while not all(s in _STOPPED for s in _thread_states(pid)):
            if time.monotonic() > deadline:
                raise errors.KernelError(
                    f"process {pid} did not stop within {timeout:.0f} s", op="SIGSTOP",
                    hint="a thread is in uninterruptible sleep (state D); retry later")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# Backends sharing one process's soft-dirty state

class _Group:
    """The soft-dirty backends of this interpreter tracking one process: a reset by one
    clears the bits of all, so it reads the spans of all first."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.members: weakref.WeakSet[SoftDirtyBackend] = weakref.WeakSet()


_groups_lock = threading.Lock()
_groups: dict[tuple[int, int], _Group] = {}


def _group(kernel: KernelCalls, pid: int) -> _Group:
    key = (id(kernel), pid)
    with _groups_lock:
        g = _groups.get(key)
        if g is None:
            g = _groups[key] = _Group()
        return g


@dataclass
class _SpanState:
    """Per tracked span: what the last reset saw, and what is owed to the next collect."""

    layout: tuple[tuple[int, int], ...]  #: mapped parts at the last reset
    resident: np.ndarray  #: present or swapped at the last reset
    pending: np.ndarray | None = None  #: written, cleared by a reset, not yet reported
    pending_cons: np.ndarray | None = None
    pending_reasons: tuple[str, ...] = ()


class _Eval(NamedTuple):
    written: np.ndarray  #: bool per page
    conservative: np.ndarray  #: bool per page
    reasons: tuple[str, ...]


@register
class SoftDirtyBackend(Backend):
    """Soft-dirty tracking of ``pid`` (``"self"`` or a PID). See the module documentation.

    ``method``: "auto" (PAGEMAP_SCAN with PAGE_IS_SOFT_DIRTY when the kernel has it, 6.8+),
    "scan" or "pagemap" (classic 64-bit entries). ``vmflags``: read ``/proc/PID/smaps`` when
    dirty pages were found, to tell pages of new or merged VMAs (``VM_SOFTDIRTY``) apart; it
    costs a walk of the whole process's page tables."""

    name: ClassVar[str] = "soft-dirty"
    ranged_reset: ClassVar[bool] = False

    def __init__(self, pid: int | str = "self", kernel: KernelCalls = LINUX, *,
                 method: str = "auto", vmflags: bool = True) -> None:
        super().__init__(pid, kernel)
        self._real = isinstance(kernel, LinuxKernel)
        self._self = pid == "self" or pid == os.getpid()
        if method not in ("auto", "scan", "pagemap"):
            raise errors.InvalidTarget(f"unknown soft-dirty method {method!r}",
                                       hint='use "auto", "scan" or "pagemap"')
        if method == "auto":
            method = "scan" if self._real and scan_supported() else "pagemap"
        self.method = method
        self.vmflags = vmflags and self._real
        self._pid_key = os.getpid() if self._self else int(pid)
        self.pagemap = kernel.open_pagemap("self" if self._self else pid)
        self._clear_fd = -1
        if self._real and self._self:
            try:
                self._clear_fd = _sys.os_call(
                    "open /proc/self/clear_refs", os.open, "/proc/self/clear_refs",
                    os.O_WRONLY | os.O_CLOEXEC)
            except BaseException:
                kernel.close(self.pagemap)
                raise
        self._state: dict[Span, _SpanState] = {}
        self._group = _group(kernel, self._pid_key)
        self._group.members.add(self)

    # -- arming ------------------------------------------------------------------------------
    def add(self, span: Span) -> None:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        if span.start % self.page_size or span.end % self.page_size or span.end <= span.start:
            raise errors.InvalidTarget(f"span {span.start:#x}-{span.end:#x} is not page aligned",
                                       op="track", start=span.start, end=span.end)
        for s in self.spans:
            if span.start < s.end and s.start < span.end:
                raise errors.InvalidTarget(
                    f"{span.start:#x}-{span.end:#x} overlaps a tracked span "
                    f"{s.start:#x}-{s.end:#x}", op="track", start=span.start, end=span.end)
        maps = self.read_maps()
        if not _mapped_parts(maps, span):
            raise errors.InvalidTarget(
                f"nothing is mapped at {span.start:#x}-{span.end:#x}", op="track",
                start=span.start, end=span.end, hint="track mapped memory")
        if self._real and self._hugetlb(span):
            # clear_refs_pte_range() leaves hugetlb entries alone (no write-protect, no
            # clear): a write to them would never be seen (observed on Debian's 6.1)
            raise errors.InvalidTarget(
                f"{span.start:#x}-{span.end:#x} is hugetlb memory, which soft-dirty does not "
                "track", op="track", start=span.start, end=span.end,
                hint="use the uffd-async (6.7+) or uffd-wp-sync backend")
        self._reset_group(extra=span, maps=maps)
        self.spans.append(span)

    def remove(self, span: Span) -> None:
        self.spans.remove(span)
        self._state.pop(span, None)

    def _hugetlb(self, span: Span) -> bool:
        """Whether a VMA of the span is hugetlb (``ht`` in smaps VmFlags)."""
        pid = self._target
        data = procfs.read_bytes(f"/proc/{pid}/smaps", pid if isinstance(pid, int) else None)
        return any("ht" in flags for lo, hi, flags in parse_smaps_flags(data)
                   if lo < span.end and span.start < hi)

    @property
    def _target(self) -> int | str:
        return "self" if self._self else self.pid

    # -- reading -----------------------------------------------------------------------------
    def _read_atomic(self, spans: Sequence[Span], clear: bool) -> list[PageState]:
        """Read every span and (with ``clear``) reset, the GIL held throughout (this process,
        real kernel)."""
        ps = self.page_size
        calls: list[functools.partial[int]] = []
        keep: list[tuple[np.ndarray, ctypes.Array[ctypes.c_char] | None]] = []
        for s in spans:
            n = s.length // ps
            if self.method == "scan":
                vec = np.empty((n, 3), np.uint64)
                arg = ctypes.create_string_buffer(U.PM_SCAN_ARG_SIZE)
                U.PM_SCAN_ARG_STRUCT.pack_into(arg, 0, U.PM_SCAN_ARG_SIZE, 0, s.start, s.end, 0,
                                               vec.ctypes.data, n, 0, 0, 0, 0,
                                               _CAT_SD | _CAT_PRESENT | _CAT_SWAPPED)
                calls.append(functools.partial(_ioctl, self.pagemap, U.PAGEMAP_SCAN,
                                               ctypes.addressof(arg)))
                keep.append((vec, arg))
            else:
                raw = np.empty(n, np.uint64)
                calls.append(functools.partial(_pread, self.pagemap, raw.ctypes.data, n * 8,
                                               s.start // ps * 8))
                keep.append((raw, None))
        if clear:
            calls.append(functools.partial(_write, self._clear_fd, _CLEAR_SOFT_DIRTY,
                                           len(_CLEAR_SOFT_DIRTY)))
        results = _run_holding_gil(calls)
        self.stats.scan_calls += len(spans)
        if clear and results[-1] != len(_CLEAR_SOFT_DIRTY):
            _sys.raise_errno(ctypes.get_errno() or E.EIO, "write /proc/self/clear_refs")
        out = []
        for s, (buf, _arg), rc in zip(spans, keep, results, strict=False):
            n = s.length // ps
            if self.method == "scan":
                ok = rc >= 0
                out.append(state_from_regions(buf[:max(rc, 0)], s.start, n, ps)._replace(ok=ok))
            else:
                ok = rc == n * 8
                out.append(decode_state(buf)._replace(ok=ok) if ok else
                           PageState(*(np.zeros(n, bool),) * 3, ok=False))
        return out

    def _read_seam(self, spans: Sequence[Span]) -> list[PageState]:
        """Read every span through the kernel-call seam (another process, or a model)."""
        ps = self.page_size
        out = []
        for s in spans:
            n = s.length // ps
            if self.method == "scan":
                res = self.kernel.scan_all(self.pagemap, s.start, s.end,
                               return_mask=_CAT_SD | _CAT_PRESENT | _CAT_SWAPPED, page_size=ps)
                out.append(state_from_regions(res.regions, s.start, n, ps))
            else:
                out.append(decode_state(self.kernel.pagemap_read(self.pagemap, s.start, n)))
        self.stats.scan_calls += len(spans)
        return out

    def _read(self, spans: Sequence[Span], clear: bool) -> list[PageState]:
        if self._real and self._self:
            return self._read_atomic(spans, clear)
        if not clear:
            return self._read_seam(spans)
        if self._real:
            with stopped(int(self.pid)):
                states = self._read_seam(spans)
                self.kernel.clear_refs(self.pid, U.CLEAR_REFS_SOFT_DIRTY)
            return states
        states = self._read_seam(spans)
        self.kernel.clear_refs(self.pid, U.CLEAR_REFS_SOFT_DIRTY)
        return states

    def _vm_softdirty(self) -> tuple[tuple[int, int], ...]:
        """VMAs flagged ``sd`` (VM_SOFTDIRTY) in /proc/PID/smaps."""
        pid = self._target
        data = procfs.read_bytes(f"/proc/{pid}/smaps", pid if isinstance(pid, int) else None)
        return parse_smaps_softdirty(data)

    # -- evaluating --------------------------------------------------------------------------
    def _evaluate(self, span: Span, st: PageState, maps: Sequence[procfs.Mapping],
                  sd_vmas: Sequence[tuple[int, int]] | None) -> _Eval:
        ps = self.page_size
        n = span.length // ps
        label = span.label or f"span {span.start:#x}-{span.end:#x}"
        prev = self._state.get(span)
        layout = tuple(_mapped_parts(maps, span))
        if not st.ok:
            return _Eval(np.ones(n, bool), np.ones(n, bool),
                         (f"{label}: reading pagemap failed during the reset; reported whole",))
        if prev is not None and layout != prev.layout:
            return _Eval(np.ones(n, bool), np.ones(n, bool),
                         (f"{label}: mappings replaced, moved or unmapped; reported whole",))
        written = st.dirty.copy()
        cons = np.zeros(n, bool)
        reasons = []
        vma_sd = np.zeros(n, bool)
        hole_dirty = st.dirty & ~st.present & ~st.swapped
        for m in maps:
            lo, hi = max(m.start, span.start), min(m.end, span.end)
            if lo < hi:
                a, b = (lo - span.start) // ps, (hi - span.start) // ps
                if hole_dirty[a:b].any():
                    vma_sd[a:b] = True
        for lo, hi in sd_vmas or ():
            lo, hi = max(lo, span.start), min(hi, span.end)
            if lo < hi:
                vma_sd[(lo - span.start) // ps:(hi - span.start) // ps] = True
        sd_pages = st.dirty & vma_sd
        if sd_pages.any():
            cons |= sd_pages
            reasons.append(f"{int(sd_pages.sum())} page(s) of {label} are in a VMA new, expanded"
                           " or merged since the last reset (VM_SOFTDIRTY): they read dirty "
                           "whether written or not")
        if prev is not None:
            gone = prev.resident & ~st.resident & ~st.dirty
            if gone.any():
                written |= gone
                cons |= gone
                reasons.append(f"{int(gone.sum())} page(s) of {label} left memory (zapped, "
                               "reclaimed or swapped out with their soft-dirty bit): content "
                               "may differ")
        return _Eval(written, cons, tuple(reasons))

    def _reset_group(self, extra: Span | None = None,
                     maps: Sequence[procfs.Mapping] | None = None) -> dict[Span, _Eval]:
        """Read the spans of every backend of the group (and ``extra``, being added), reset,
        and hand each other backend what its spans held. Returns this backend's results."""
        with self._group.lock:
            members = [b for b in self._group.members if not b.closed]
            pairs = [(b, s) for b in members for s in b.spans]
            if extra is not None:
                pairs.append((self, extra))
            if maps is None:
                maps = self.read_maps()
            sd_vmas = self._vm_softdirty() if self.vmflags and pairs else None
            states = self._read([s for _, s in pairs], clear=True)
            mine: dict[Span, _Eval] = {}
            for (b, s), st in zip(pairs, states, strict=True):
                if s is extra:
                    b._state[s] = _SpanState(tuple(_mapped_parts(maps, s)), st.resident)
                    continue
                ev = b._evaluate(s, st, maps, sd_vmas if st.dirty.any() else None)
                ss = b._state[s]
                ss.layout = tuple(_mapped_parts(maps, s))
                ss.resident = st.resident
                if b is self:
                    mine[s] = ev
                elif ev.written.any():
                    ss.pending = ev.written if ss.pending is None else ss.pending | ev.written
                    ss.pending_cons = (ev.conservative if ss.pending_cons is None
                                       else ss.pending_cons | ev.conservative)
                    ss.pending_reasons = (*ss.pending_reasons, *ev.reasons)
            return mine

    def collect(self, reset: bool = True, max_pages: int = 0) -> Collected:
        if self.closed:
            raise errors.TrackerClosed("the tracker is closed")
        if max_pages < 0:
            raise errors.InvalidTarget(f"max_pages must be >= 0, not {max_pages}")
        ps = self.page_size
        if reset:
            evals = self._reset_group()
        else:
            maps = self.read_maps()
            states = self._read(self.spans, clear=False)
            sd_vmas = (self._vm_softdirty() if self.vmflags and any(s.dirty.any() for s in states)
                       else None)
            evals = {s: self._evaluate(s, st, maps, sd_vmas)
                     for s, st in zip(self.spans, states, strict=True)}
        found: list[np.ndarray] = []
        conservative: list[np.ndarray] = []
        reasons: list[str] = []
        budget = max_pages
        for span in self.spans:
            ev = evals[span]
            ss = self._state[span]
            written, cons, why = ev.written, ev.conservative, list(ev.reasons)
            if ss.pending is not None:
                written = written | ss.pending
                cons = cons | (ss.pending_cons if ss.pending_cons is not None else False)
                why = [*ss.pending_reasons, *why]
            if reset:
                ss.pending = ss.pending_cons = None
                ss.pending_reasons = ()
            if max_pages:
                idx = np.flatnonzero(written)
                if len(idx) > budget:
                    rest = np.zeros_like(written)
                    rest[idx[budget:]] = True
                    if reset:  # the reset cleared them: owe them to the next collect
                        ss.pending = rest
                        ss.pending_cons = cons & rest
                        ss.pending_reasons = tuple(why)
                    written = written & ~rest
                    cons = cons & ~rest
                budget -= int(written.sum())
            if written.any():
                found.append(Pages.from_mask(written, span.start, ps).ranges)
            if cons.any():
                conservative.append(Pages.from_mask(cons, span.start, ps).ranges)
                reasons.extend(why)
        out = np.concatenate(found) if found else _EMPTY
        cons_arr = np.concatenate(conservative) if conservative else _EMPTY
        self.stats.collects += 1
        self.stats.pages_reported += int((out[:, 1] - out[:, 0]).sum()) // ps
        self.stats.pages_conservative += int((cons_arr[:, 1] - cons_arr[:, 0]).sum()) // ps
        return Collected(out, cons_arr, tuple(reasons))

    def _forget(self) -> None:
        self._group.members.discard(self)
        self.kernel.close(self.pagemap)
        if self._clear_fd >= 0:
            _sys.close(self._clear_fd)
            self._clear_fd = -1

    def _release(self) -> None:
        self._group.members.discard(self)
        self._state.clear()
        self.kernel.close(self.pagemap)
        if self._clear_fd >= 0:
            _sys.close(self._clear_fd)
            self._clear_fd = -1


def _mapped_parts(maps: Sequence[procfs.Mapping], span: Span) -> list[tuple[int, int]]:
    return procfs.coverage(maps, span.start, span.end)
