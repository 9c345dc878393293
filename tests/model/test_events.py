"""Userfaultfd's non-cooperative events (UFFD_FEATURE_EVENT_FORK / REMAP / REMOVE / UNMAP):
the same operations on real memory and on the model give the same messages, in order, and
the same uffd-wp state after a move with EVENT_REMAP."""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import threading

import numpy as np
import pytest
from memutil import require_uffd_async

from writewatch import _uapi as U
from writewatch import errors
from writewatch.kernel import LINUX, _sys
from writewatch.lab.fidelity import categories
from writewatch.model import ModelKernel
from writewatch.model.mm import Mm
from writewatch.model.profiles import PROFILES
from writewatch.model.pte import PAGE

F = U.UffdFeature
EVENTS = F.EVENT_REMAP | F.EVENT_REMOVE | F.EVENT_UNMAP
N = 64  #: pages of the tracked region


class _Reader(threading.Thread):
    """The monitor: the kernel blocks a task that raises an event until the event is read
    (userfaultfd_event_wait_completion), so events are read on another thread."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.msgs: list[tuple[int, int, int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        while not self.stop.is_set():
            if p.poll(20):
                for m in LINUX.read_uffd_msgs(self.fd):
                    self.msgs.append((int(m.event), m.a, m.b, m.c))


def _ops(k, mm, base: int) -> None:  # type: ignore[no-untyped-def]
    """DONTNEED, a move by mremap and a munmap, on either side."""
    def madvise(a: int, n: int) -> None:
        if mm is None:
            _sys.madvise(a, n * PAGE, U.MADV_DONTNEED)
        else:
            mm.madvise(a, n * PAGE, "DONTNEED")

    madvise(base + 4 * PAGE, 2)
    src, dst = base + 8 * PAGE, base + 2 * N * PAGE
    if mm is None:
        _sys.mremap(src, 8 * PAGE, 8 * PAGE, U.MREMAP_MAYMOVE | U.MREMAP_FIXED, dst)
        _sys.munmap(base + 32 * PAGE, 4 * PAGE)
    else:
        mm.mremap(src, 8 * PAGE, 8 * PAGE, dst)
        mm.munmap(base + 32 * PAGE, 4 * PAGE)


@pytest.mark.usefixtures("uffd_async")
def test_remove_remap_unmap_messages_match_the_kernel() -> None:
    require_uffd_async()
    size = 3 * N * PAGE
    raw = _sys.mmap(0, size, mmap.PROT_READ | mmap.PROT_WRITE,
                    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = raw
    fd = LINUX.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    try:
        try:
            LINUX.uffdio_api(fd, int(F.WP_ASYNC | EVENTS))
        except errors.WriteWatchError as exc:
            pytest.skip(f"UFFDIO_API refuses WP_ASYNC with the events: {exc}")
        _sys.munmap(base + N * PAGE, 2 * N * PAGE)  # only the tracked region stays mapped
        ctypes.memset(base, 1, N * PAGE)
        LINUX.uffdio_register(fd, base, N * PAGE, U.UffdRegisterMode.WP)
        pm = LINUX.open_pagemap("self")
        wr = int(U.PageCategory.WRITTEN)
        LINUX.pagemap_scan(pm, base, base + N * PAGE, flags=int(U.PmScanFlag.WP_MATCHING),
                           category_mask=wr, return_mask=wr)
        reader = _Reader(fd)
        reader.start()
        try:
            _ops(LINUX, None, base)
        finally:
            reader.stop.set()
            reader.join()
        real_cats = categories(LINUX, pm, base, 3 * N * PAGE)
        LINUX.close(pm)
    finally:
        LINUX.close(fd)
        _sys.munmap(base, 3 * N * PAGE)

    mm = Mm(PROFILES["6.18"], pid=os.getpid())
    k = ModelKernel(mm)
    mm.mmap(base, N * PAGE)
    mm.write(base, N * PAGE)
    mfd = k.userfaultfd(0)
    k.uffdio_api(mfd, int(F.WP_ASYNC | EVENTS))
    k.uffdio_register(mfd, base, N * PAGE, U.UffdRegisterMode.WP)
    mpm = k.open_pagemap("self")
    k.pagemap_scan(mpm, base, base + N * PAGE, flags=int(U.PmScanFlag.WP_MATCHING),
                   category_mask=wr, return_mask=wr)
    _ops(k, mm, base)
    model = [(int(m.event), m.a, m.b, m.c) for m in k.read_uffd_msgs(mfd)]
    model_cats = categories(k, mpm, base, 3 * N * PAGE)

    # the move is a REMAP and then an UNMAP of the old range (do_vmi_munmap of the source)
    E = U.UffdEvent
    assert [m[0] for m in reader.msgs] == [int(E.REMOVE), int(E.REMAP), int(E.UNMAP),
                                           int(E.UNMAP)], reader.msgs
    assert model == reader.msgs
    # with EVENT_REMAP the moved VMA stays registered and its pages keep the bit (the
    # CVE-2025-21696 fix clears it only for a context without EVENT_REMAP)
    bad = np.flatnonzero(real_cats != model_cats)
    assert not len(bad), (bad[:4], real_cats[bad[:4]], model_cats[bad[:4]])


@pytest.mark.parametrize(("feat", "keeps"), [(F.WP_ASYNC | F.EVENT_FORK, True),
                                             (F.WP_ASYNC, False)])
def test_event_fork_gives_the_child_its_context_and_keeps_the_bits(feat: F,
                                                                   keeps: bool) -> None:
    """Model semantics (dup_userfaultfd / copy_page_range with a uffd-wp child VMA): the
    child's VMAs are registered with a new context, announced by UFFD_EVENT_FORK with its
    fd; without the feature the child loses both."""
    mm = Mm(PROFILES["6.18"])
    k = ModelKernel(mm)
    a = mm.mmap(None, 16 * PAGE, "shmem", shared=True)
    mm.write(a, 16 * PAGE)
    fd = k.userfaultfd(0)
    k.uffdio_api(fd, int(feat))
    k.uffdio_register(fd, a, 16 * PAGE, U.UffdRegisterMode.WP)
    k.uffdio_writeprotect(fd, a, 16 * PAGE, U.UffdWriteprotectMode.WP)
    child = mm.fork()
    msgs = k.read_uffd_msgs(fd)
    assert bool(msgs) is keeps
    cv = child.find(a)
    assert cv is not None and (cv.uffd is not None) is keeps
    ct = child.pt.get(a >> 21)
    wp = ct is not None and bool((ct.fl & 8).any())
    assert wp is keeps
    if keeps:
        assert msgs[0].event == U.UffdEvent.FORK and msgs[0].a in k._fds
        child.write(a, PAGE)  # the child's own context resolves its fault
        cpm = k.open_pagemap(child.pid)
        got = k.pagemap_scan(cpm, a, a + 2 * PAGE, return_mask=int(U.PageCategory.WRITTEN))
        assert got.regions[0].tolist() == [a, a + PAGE, int(U.PageCategory.WRITTEN)]
