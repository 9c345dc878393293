"""Pure parsers of the kernel layer on hand-built input: pagemap entries, /proc/PID/maps,
/proc/PID/status (formats: Documentation/admin-guide/mm/pagemap.rst, fs/proc/task_mmu.c
show_map_vma, fs/proc/array.c)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from writewatch import _uapi as U
from writewatch.kernel import pagemap, procfs

B = U.PagemapBit


def test_decode_entries_flag_bits_and_pfn() -> None:
    raw = np.array([
        0,  # none
        int(B.PRESENT) | 0x1234,  # present, pfn 0x1234
        int(B.PRESENT | B.MMAP_EXCLUSIVE | B.SOFT_DIRTY) | U.PM_PFRAME_MASK,
        int(B.SWAPPED | B.UFFD_WP),  # a uffd-wp marker: non-present, swapped bit, wp bit
        int(B.SWAPPED) | (0x55 << U.PM_SWAP_OFFSET_SHIFT) | 3,  # a swap entry: no pfn
        int(B.PRESENT | B.FILE_SHARED | B.UFFD_WP) | 7,
        int(B.SWAPPED | B.GUARD_REGION),
    ], dtype=np.uint64)
    d = pagemap.decode_entries(raw)
    assert d.dtype == pagemap.PAGEMAP_ENTRY_DTYPE
    assert d["present"].tolist() == [False, True, True, False, False, True, False]
    assert d["swapped"].tolist() == [False, False, False, True, True, False, True]
    assert d["uffd_wp"].tolist() == [False, False, False, True, False, True, False]
    assert d["exclusive"].tolist() == [False, False, True, False, False, False, False]
    assert d["soft_dirty"].tolist() == [False, False, True, False, False, False, False]
    assert d["file_shared"].tolist() == [False, False, False, False, False, True, False]
    assert d["guard"].tolist() == [False, False, False, False, False, False, True]
    assert d["pfn"].tolist() == [0, 0x1234, U.PM_PFRAME_MASK, 0, 0, 7, 0]


def test_decode_entries_keeps_shape_and_accepts_bytes_views() -> None:
    raw = np.frombuffer(np.array([int(B.PRESENT) | 5] * 6, "<u8").tobytes(), "<u8")
    d = pagemap.decode_entries(raw.reshape(2, 3))
    assert d.shape == (2, 3) and d["present"].all() and (d["pfn"] == 5).all()
    assert pagemap.decode_entries(np.empty(0, np.uint64)).shape == (0,)


@pytest.mark.parametrize("k", [0, 1, 63, 64, 65, 3000])
def test_scan_ranges_are_one_contiguous_copy_of_start_and_end(k: int) -> None:
    regions = np.random.default_rng(k).integers(0, 1 << 40, size=(k + 3, 3)).astype(np.uint64)
    for rows in (regions[:k], regions[:k:2], np.asfortranarray(regions[:k])):
        got = pagemap.ranges(rows)
        assert got.shape == (len(rows), 2) and got.dtype == np.uint64
        assert got.flags.c_contiguous and (got == rows[:, :2]).all()
    if k >= 64:  # the fast path copies too: the scanner's buffer is reused
        assert not np.may_share_memory(pagemap.ranges(regions[:k]), regions)


MAPS = b"""\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1315010                    /usr/bin/cat
55d0c1e4d000-55d0c1e6e000 rw-p 00000000 00:00 0                          [heap]
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0\x20
7f1c2b000000-7f1c2b200000 rw-s 00000000 00:01 2049                       /memfd:buf (deleted)
7f1c2c000000-7f1c2c001000 rw-s 00001000 08:02 77                         /tmp/a file with spaces
7ffd5a1f0000-7ffd5a211000 rw-p 00000000 00:00 0                          [stack]
7ffd5a3d6000-7ffd5a3d8000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_parse_maps_fields() -> None:
    ms = procfs.parse_maps(MAPS)
    assert len(ms) == 8
    cat, heap, anon, memfd, spaced, stack, vdso, vsys = ms
    assert (cat.start, cat.end, cat.perms, cat.offset, cat.dev, cat.inode, cat.path) == (
        0x55D0C0A00000, 0x55D0C0A02000, "r--p", 0, "fd:01", 1315010, "/usr/bin/cat")
    assert not cat.writable and cat.readable and not cat.anonymous
    assert heap.path == "[heap]" and heap.anonymous and heap.writable and not heap.shared
    assert anon.path == "" and anon.anonymous and anon.label == "[anon]"
    assert memfd.shared and memfd.path == "/memfd:buf (deleted)" and not memfd.anonymous
    assert spaced.path == "/tmp/a file with spaces" and spaced.offset == 0x1000
    assert stack.label == "[stack]" and not stack.special
    assert vdso.special and vsys.special and vsys.end == 0xFFFFFFFFFF601000
    assert vsys.perms == "--xp" and not vsys.readable


def test_parse_maps_ignores_garbage_and_empty() -> None:
    assert procfs.parse_maps(b"") == ()
    assert procfs.parse_maps(b"not a maps line\n") == ()


def test_parse_maps_of_this_process_contains_a_fresh_mapping(mem) -> None:
    m = mem(3 * 4096)
    found = [x for x in procfs.read_maps("self") if x.start <= m.addr < x.end]
    assert len(found) == 1 and found[0].end >= m.addr + m.length and found[0].writable


def test_parse_status() -> None:
    st = procfs.parse_status(b"Name:\tpython3\nVmPTE:\t     148 kB\nThreads:\t1\nbad line\n")
    assert st == {"Name": "python3", "VmPTE": "148 kB", "Threads": "1"}
    assert procfs.status_kib("VmPTE") > 0


def test_parse_smaps_flags() -> None:
    text = textwrap.dedent("""\
        7f0000000000-7f0000002000 rw-p 00000000 00:00 0
        Size:                  8 kB
        VmFlags: rd wr mr mw me ac sd
        7f0000002000-7f0000003000 r--p 00000000 08:01 1234     /usr/lib/x (deleted)
        Size:                  4 kB
        VmFlags: rd mr mw me
        """).encode()
    got = procfs.parse_smaps_flags(text)
    first = frozenset({"rd", "wr", "mr", "mw", "me", "ac", "sd"})
    assert got == ((0x7F0000000000, 0x7F0000002000, first),
                   (0x7F0000002000, 0x7F0000003000, frozenset({"rd", "mr", "mw", "me"})))
    assert procfs.parse_smaps_flags(b"") == ()
    # an entry without VmFlags (kernels before 3.8) does not borrow the next entry's
    old = b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0\nSize: 4 kB\n" + text
    assert procfs.parse_smaps_flags(old) == got


def test_parse_stat_state() -> None:
    assert procfs.parse_stat_state(b"42 (a) b) T 1 42 42 0 -1") == "T"
    assert procfs.parse_stat_state(b"7 (python3) S 1 7") == "S"


def test_parse_stat_fields() -> None:
    # proc(5): state ppid pgrp session tty_nr tpgid flags minflt cminflt ... starttime (22)
    line = b"2 (kthre ad)) S 0 0 0 0 -1 2129984 11 12 0 0 0 0 0 0 20 0 1 0 99 0 0"
    st = procfs.parse_stat(line)
    assert (st.state, st.ppid, st.flags, st.minflt, st.cminflt, st.starttime) == \
        ("S", 0, 2129984, 11, 12, 99)
    assert st.flags & U.PF_KTHREAD
