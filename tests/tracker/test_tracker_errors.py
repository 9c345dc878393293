"""Bad input: a typed error with a hint, no leaked descriptor, nothing left write-protected."""

from __future__ import annotations

import itertools
import mmap
import os
import pickle

import numpy as np
import pytest
from memutil import PAGE, Region, open_fds

import writewatch
from writewatch.kernel.pagemap import decode_entries, open_pagemap, read_entries

pytestmark = pytest.mark.usefixtures("backend")


def uffd_wp_bits(addr: int, npages: int) -> np.ndarray:
    fd = open_pagemap("self")
    try:
        return decode_entries(read_entries(fd, addr, npages, PAGE))["uffd_wp"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("target, words", [
    (b"read-only bytes", "read-only"),
    (np.zeros(10).setflags(write=False) or None, "cannot track"),
    (bytearray(), "empty"),
    ((0x1000, 0), "empty"),
    ((0x1001, PAGE), "not page aligned"),
    ((0x10000, 100), "not page aligned"),
    ("a string", "cannot track"),
    (12345, "cannot track"),
])
def test_invalid_targets(target: object, words: str) -> None:
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget) as exc:
        writewatch.track(target)
    assert words in str(exc.value)
    assert exc.value.hint
    assert open_fds() == before


def test_read_only_numpy_array() -> None:
    a = np.zeros(PAGE, np.uint8)
    a.setflags(write=False)
    with pytest.raises(writewatch.InvalidTarget, match="read-only"):
        writewatch.track(a)


def test_unmapped_span_is_invalid() -> None:
    r = Region(4)
    r.unmap()
    before = open_fds()
    with pytest.raises(writewatch.InvalidTarget, match="nothing is mapped"):
        writewatch.track((r.addr, 4 * PAGE))
    assert open_fds() == before


def test_overlapping_targets() -> None:
    a = np.zeros(4 * PAGE, np.uint8)
    with pytest.raises(writewatch.InvalidTarget, match="overlap"):
        writewatch.track(a, a[PAGE:])


def test_objects_sharing_a_page_share_its_span() -> None:
    a = np.zeros(3 * PAGE, np.uint8)
    left, right = a[: PAGE + 100], a[PAGE + 100:]
    with pytest.warns(writewatch.PartialPageWarning), writewatch.track(left, right) as t:
        spans = t.spans
        assert all(s1.end <= s2.start for s1, s2 in itertools.pairwise(spans))
        right[0] = 1
        assert a[PAGE + 100:].ctypes.data in t.collect()


def test_already_tracked_is_ebusy_and_first_tracker_survives(backend: str) -> None:
    r = Region(8)
    try:
        if backend == "soft-dirty":
            # no owner: every soft-dirty tracker of a process reads all spans before the
            # (process-wide) reset and keeps what the others' spans held for them
            with writewatch.track(r.span) as t1, writewatch.track(r.span) as t2:
                r.write(2)
                assert len(t1.collect()) == 1
                r.write(3)
                assert len(t2.collect()) == 2 and len(t1.collect()) == 1
            return
        with writewatch.track(r.span) as t:
            before = open_fds()
            with pytest.raises(writewatch.AlreadyTracked) as exc:
                writewatch.track(r.span)
            assert "another userfaultfd" in str(exc.value)
            assert open_fds() == before
            r.write(2)
            assert len(t.collect()) == 1
    finally:
        r.unmap()


def test_failure_on_second_target_unwinds_the_first(backend: str) -> None:
    if backend == "soft-dirty":
        pytest.skip("soft-dirty has no owner of a range: a second tracker never fails "
                    "(see test_already_tracked_is_ebusy_and_first_tracker_survives)")
    a, b = Region(8), Region(8)
    try:
        with writewatch.track(b.span):
            before = open_fds()
            with pytest.raises(writewatch.AlreadyTracked):
                writewatch.track(a.span, b.span)  # a registers, b is busy
            assert open_fds() == before
            a.write(0)
            assert not uffd_wp_bits(a.addr, 8).any()  # a was unregistered again
            with writewatch.track(a.span) as t2:  # and can be tracked afresh
                a.write(1)
                assert len(t2.collect()) == 1
    finally:
        a.unmap()
        b.unmap()


def test_read_only_mapping_of_a_read_only_file(backend: str) -> None:
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"\0" * PAGE)
        f.flush()
        fd = os.open(f.name, os.O_RDONLY)
        try:
            r = Region(1, flags=mmap.MAP_SHARED, fd=fd, prot=mmap.PROT_READ)
            try:
                if backend == "soft-dirty":  # nothing to register: it reads as never written
                    with writewatch.track(r.span) as t:
                        assert not t.collect()
                else:  # UFFDIO_REGISTER needs VM_MAYWRITE: EPERM
                    with pytest.raises(writewatch.InvalidTarget, match="not writable"):
                        writewatch.track(r.span)
            finally:
                r.unmap()
        finally:
            os.close(fd)


def test_unknown_backend() -> None:
    with pytest.raises(writewatch.WriteWatchError, match="unknown backend"):
        writewatch.track(bytearray(PAGE), backend="nope")


def test_closed_tracker() -> None:
    t = writewatch.track((Region(1).addr, PAGE))
    t.close()
    with pytest.raises(writewatch.TrackerClosed):
        t.collect()
    with pytest.raises(writewatch.TrackerClosed):
        t.add(bytearray(PAGE))


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_errors_are_picklable_and_rooted() -> None:
    import writewatch.snapshot  # its errors join the tree

    for cls in (writewatch.InvalidTarget, writewatch.AlreadyTracked, writewatch.Unsupported,
                writewatch.PermissionDenied, writewatch.KernelError, writewatch.TrackerClosed):
        err = cls("msg", op="OP", start=0x1000, end=0x2000, errno=22, hint="do this")
        assert isinstance(err, writewatch.WriteWatchError)
        assert "0x1000-0x2000" in str(err) and "EINVAL" in str(err) and "do this" in str(err)
    e = pickle.loads(pickle.dumps(writewatch.NoSuchProcess(42, op="stop", hint="h")))
    assert e.pid == 42 and e.op == "stop" and e.hint == "h" and isinstance(e, ProcessLookupError)
    u = pickle.loads(pickle.dumps(writewatch.Unsupported("x", feature="F", since="6.7")))
    assert (u.feature, u.since) == ("F", "6.7")
    # every class of the tree keeps its type, text and every attribute through pickle (the
    # way errors cross from the helper processes)
    for cls in [writewatch.WriteWatchError, *_subclasses(writewatch.WriteWatchError)]:
        err = cls(42) if cls is writewatch.NoSuchProcess else cls("msg", op="OP", hint="h")
        err.extra = [1, 2]  # type: ignore[attr-defined]
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is cls and str(again) == str(err), cls
        assert again.__dict__ == err.__dict__, cls
