"""Anonymous multi-size THP (mTHP, Linux 6.8) under async uffd-wp, and arm64's contiguous PTEs.

A folio smaller than a PMD is mapped by ordinary PTEs. On arm64 with CONFIG_ARM64_CONTPTE
(6.9, Debian's 6.12 has it) a naturally aligned folio of CONT_PTES pages (16 with 4 KiB pages,
128 with 16 KiB, 32 with 64 KiB: one TLB entry for 64 KiB or 2 MiB) is mapped with PTE_CONT
(arch/arm64/mm/contpte.c contpte_set_ptes), and a block is refolded when its last entry is
rewritten and all entries match again ignoring access/dirty (__contpte_try_fold: the uffd-wp
software bit is part of what must match). Writing one PTE of a block unfolds it first
(set_ptes -> contpte_try_unfold; contpte_ptep_set_access_flags: "if the write bit is changing,
we must unfold"), and access/dirty are gathered over the whole block (contpte_ptep_get): the
dirty bit is per folio there, the uffd-wp bit stays per page. So PAGEMAP_SCAN must report a
write to one page of such a folio as that page alone, at every step of arm / write / collect.

The mTHP size is off by default (hugepages-<size>kB/enabled: never); the test turns it on only
inside the kernel-matrix guest (the host's setting is not this test's to change) and restores it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator

import numpy as np
import pytest
from memutil import IN_GUEST

from writewatch import _uapi as U
from writewatch.kernel import _sys, pagemap, procfs

from .pmutil import PAGE, WP, WRITTEN, Mem, Pm, lens

MTHP = "/sys/kernel/mm/transparent_hugepage/hugepages-{}kB/enabled"
#: arch/arm64/include/asm/pgtable-hwdef.h CONT_PTE_SHIFT: 4 + 12, 7 + 14, 5 + 16
ARM64_CONT_PTES = {4096: 16, 16384: 128, 65536: 32}
#: include/uapi/linux/kernel-page-flags.h
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16
FOLIOS = 8


def folio_pages() -> int:
    """Pages per folio under test: a contpte block on arm64, 64 KiB elsewhere."""
    if platform.machine() == "aarch64":
        return ARM64_CONT_PTES.get(PAGE, 16)
    return max(2, 65536 // PAGE)


@pytest.fixture
def mthp() -> Iterator[int]:
    """The folio size in bytes, with that mTHP size enabled for the test's duration."""
    size = folio_pages() * PAGE
    path = MTHP.format(size // 1024)
    text = procfs.read_setting(path)
    if text is None:
        pytest.skip(f"no {path}: anonymous mTHP needs Linux 6.8 (or THP is off)")
    mode = text[text.index("[") + 1:text.index("]")] if "[" in text else text
    if mode in ("always", "madvise"):
        yield size
        return
    if not IN_GUEST:
        pytest.skip(f"{size // 1024} KiB mTHP is {mode!r} here; the kernel-matrix guest "
                    "turns it on (tools/kernel_matrix.py)")
    with open(path, "w") as f:
        f.write("madvise")
    try:
        yield size
    finally:
        with open(path, "w") as f:
            f.write(mode)


def _folio_heads(m: Mem, npages: int) -> np.ndarray:
    """KPF_COMPOUND_HEAD of every page of ``m`` (pfn from /proc/self/pagemap, flags from
    /proc/kpageflags: both need CAP_SYS_ADMIN), after checking the pages are present."""
    fd = pagemap.open_pagemap("self")
    try:
        ent = pagemap.decode_entries(pagemap.read_entries(fd, m.addr, npages, PAGE))
    finally:
        _sys.close(fd)
    assert ent["present"].all()
    pfns = ent["pfn"].astype(np.uint64)
    if not pfns.any():
        pytest.skip("pagemap hides PFNs (no CAP_SYS_ADMIN)")
    kfd = os.open("/proc/kpageflags", os.O_RDONLY)
    try:
        flags = np.array([int.from_bytes(os.pread(kfd, 8, int(p) * 8), "little")
                          for p in pfns], np.uint64)
    finally:
        os.close(kfd)
    heads = (flags >> np.uint64(KPF_COMPOUND_HEAD)) & np.uint64(1)
    tails = (flags >> np.uint64(KPF_COMPOUND_TAIL)) & np.uint64(1)
    return np.stack([heads, tails, pfns])


def test_write_to_one_page_of_an_mthp_folio_is_that_page(pm: Pm, mem, mthp: int) -> None:
    n = mthp // PAGE
    m = mem(FOLIOS * mthp, align=mthp)
    _sys.madvise(m.addr, m.length, U.MADV_HUGEPAGE)
    m.pages()[:, 0] = 1  # first touch of each folio-sized, aligned piece: one folio each
    heads, tails, pfns = _folio_heads(m, FOLIOS * n)
    if not (heads[::n].all() and tails.reshape(FOLIOS, n)[:, 1:].all()):
        pytest.skip(f"the kernel did not back the range with {mthp // 1024} KiB folios "
                    "(fragmented memory or an allocation fallback)")
    assert (np.diff(pfns.reshape(FOLIOS, n), axis=1) == 1).all()
    assert (pfns[::n] % np.uint64(n) == 0).all()  # naturally aligned: contpte-mappable
    pm.wp_init(m.addr, m.length)
    pm.wp_addr_range(m.addr, m.length)
    assert lens(pm.written(m.addr, m.length, 64)) == []
    want = m.bytes().copy()
    for step, k in enumerate((0, n - 1, n // 2, n - 1)):  # n - 1: the entry that refolds
        pages = [f * n + (k + f) % n for f in range(FOLIOS)]
        for p in pages:
            m.pages()[p, step + 1] = step + 7
            want[p * PAGE + step + 1] = step + 7
        got = pagemap.scan_all(pm.scanner, pm.fd, m.addr, m.end, flags=WP,
                               category_mask=WRITTEN, return_mask=WRITTEN).regions
        assert [i for s, e, _ in got for i in range((int(s) - m.addr) // PAGE,
                                                    (int(e) - m.addr) // PAGE)] == pages, step
        assert lens(pm.written(m.addr, m.length, 64)) == [], step  # re-armed
    assert (m.bytes() == want).all()
    pm.wp_free(m.addr, m.length)
