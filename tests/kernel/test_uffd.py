"""userfaultfd at the kernel layer: test_uffd_api and wp-unpopulated of
tools/testing/selftests/mm/uffd-unit-tests.c, register/write-protect errors, and the pure
``uffd_msg`` parser."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from writewatch import _uapi as U
from writewatch import errors
from writewatch.kernel import _sys, pagemap, uffd

from .pmutil import PAGE, Mem

F = U.UffdFeature


@pytest.fixture
def ufd():
    try:
        fd = uffd.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    except (errors.Unsupported, errors.PermissionDenied) as exc:
        pytest.skip(f"no userfaultfd here: {exc}")
    yield fd
    _sys.close(fd)


def raw_api(fd: int, api: int, features: int) -> tuple[int, int, int]:
    """UFFDIO_API with any ``api`` value; returns the struct the kernel wrote back."""
    buf = ctypes.create_string_buffer(U.UFFDIO_API_STRUCT.pack(api, features, 0),
                                      U.UFFDIO_API_SIZE)
    _sys.ioctl("UFFDIO_API", fd, U.UFFDIO_API, buf)
    return U.UFFDIO_API_STRUCT.unpack(buf.raw)


def test_uffd_api(ufd: int) -> None:
    # uffd-unit-tests.c test_uffd_api(), in its order on one descriptor
    with pytest.raises(errors.WriteWatchError) as info:
        raw_api(ufd, 0xAB, 0)  # "UFFDIO_API should fail with wrong api"
    assert info.value.errno == errno.EINVAL
    with pytest.raises(errors.WriteWatchError) as info:
        raw_api(ufd, U.UFFD_API, 1 << 63)  # "UFFDIO_API should fail with wrong feature"
    assert info.value.errno == errno.EINVAL
    api, features, ioctls = raw_api(ufd, U.UFFD_API, 0)  # "UFFDIO_API should succeed"
    assert api == U.UFFD_API
    assert features & ~sum(F) == 0, "the kernel reports a feature bit unknown to _uapi"
    for nr in (U._UFFDIO_REGISTER, U._UFFDIO_UNREGISTER, U._UFFDIO_API):
        assert ioctls & (1 << nr)
    with pytest.raises(errors.WriteWatchError) as info:  # "should reject initialized uffd"
        raw_api(ufd, U.UFFD_API, int(F.PAGEFAULT_FLAG_WP))
    assert info.value.errno == errno.EINVAL


def test_api_wrapper_reports_every_supported_feature(ufd: int) -> None:
    res = uffd.api(ufd, 0)
    assert isinstance(res.features, F)
    with pytest.raises(errors.WriteWatchError):
        uffd.api(ufd, 0)  # a second UFFDIO_API on one descriptor is refused


def test_api_wrapper_unknown_feature_is_unsupported(ufd: int) -> None:
    with pytest.raises(errors.Unsupported):
        uffd.api(ufd, 1 << 62)


def test_wp_unpopulated(mem) -> None:
    # uffd-unit-tests.c uffd_wp_unpopulated_test (sync WP with WP_UNPOPULATED, anon)
    fd = uffd.userfaultfd(U.O_CLOEXEC | U.O_NONBLOCK)
    try:
        try:
            uffd.api(fd, int(F.PAGEFAULT_FLAG_WP | F.WP_UNPOPULATED))
        except errors.Unsupported as exc:
            pytest.skip(f"needs PAGEFAULT_FLAG_WP|WP_UNPOPULATED (6.4): {exc}")
        m: Mem = mem(4 * PAGE)
        uffd.register(fd, m.addr, m.length, U.UffdRegisterMode.WP)
        pmfd = pagemap.open_pagemap("self")
        try:
            def wp_bit() -> bool:
                ent = pagemap.decode_entries(pagemap.read_entries(pmfd, m.addr, 1, PAGE))
                return bool(ent["uffd_wp"][0])

            def wp(on: bool) -> None:
                uffd.writeprotect(fd, m.addr, PAGE, U.UffdWriteprotectMode.WP if on else 0)

            b = m.bytes()
            wp(True)  # "Test applying pte marker to anon unpopulated"
            assert wp_bit()
            ent = pagemap.decode_entries(pagemap.read_entries(pmfd, m.addr, 1, PAGE))[0]
            assert not ent["present"] and ent["swapped"]  # a marker is a non-present entry
            wp(False)  # "Test unprotect on anon pte marker"
            assert not wp_bit()
            wp(True)  # "Test zap on anon marker"
            _sys.madvise(m.addr, PAGE, U.MADV_DONTNEED)
            assert not wp_bit()
            b[0] = 1  # "Test fault in after marker removed"
            assert not wp_bit()
            _sys.madvise(m.addr, PAGE, U.MADV_DONTNEED)
            wp(True)  # "Test read-zero-page upon pte marker"
            assert int(b[0]) == 0
            assert wp_bit()  # the zero page is mapped write-protected
            _sys.madvise(m.addr, PAGE, U.MADV_DONTNEED)
        finally:
            _sys.close(pmfd)
    finally:
        _sys.close(fd)


def test_register_errors_are_typed(ufd: int, mem) -> None:
    uffd.api(ufd, int(F.PAGEFAULT_FLAG_WP))  # sync WP: on every kernel with uffd-wp (5.7+)
    m: Mem = mem(4 * PAGE)
    with pytest.raises(errors.InvalidTarget):
        uffd.register(ufd, m.addr + 1, PAGE, U.UffdRegisterMode.WP)  # unaligned
    uffd.register(ufd, m.addr, 2 * PAGE, U.UffdRegisterMode.WP)
    with pytest.raises(errors.InvalidTarget) as info:  # not registered: ENOENT
        uffd.writeprotect(ufd, m.page(2), PAGE, U.UffdWriteprotectMode.WP)
    assert info.value.errno == errno.ENOENT
    other = uffd.userfaultfd()
    try:
        uffd.api(other, int(F.PAGEFAULT_FLAG_WP))
        with pytest.raises(errors.AlreadyTracked):  # another uffd owns the range
            uffd.register(other, m.addr, PAGE, U.UffdRegisterMode.WP)
    finally:
        _sys.close(other)
    uffd.unregister(ufd, m.addr, 2 * PAGE)


def test_read_msgs_empty_on_nonblocking_fd(ufd: int) -> None:
    uffd.api(ufd, 0)
    assert uffd.read_msgs(ufd) == ()


# ---------------------------------------------------------------------------------------------
# parse_msgs (pure)


def msg(event: int, a: int, b: int, c: int, reserved: int = 0) -> bytes:
    return U.UFFD_MSG_HEAD.pack(event, 0, 0, reserved) + U.UFFD_MSG_ARG.pack(a, b, c)


def test_parse_msgs_pagefault_masks_ptid_to_32_bits() -> None:
    flags = int(U.UffdPagefaultFlag.WRITE | U.UffdPagefaultFlag.WP)
    data = msg(U.UffdEvent.PAGEFAULT, flags, 0x7F0000001000, (0xDEAD << 32) | 4242)
    (m,) = uffd.parse_msgs(data)
    assert m == uffd.UffdMsg(U.UffdEvent.PAGEFAULT, flags, 0x7F0000001000, 4242)
    assert isinstance(m.event, U.UffdEvent)


def test_parse_msgs_several_events_and_trailing_bytes() -> None:
    data = (msg(U.UffdEvent.FORK, 7, 0, 0) + msg(U.UffdEvent.REMAP, 0x1000, 0x9000, 0x2000)
            + msg(U.UffdEvent.REMOVE, 0x4000, 0x5000, 0)
            + msg(U.UffdEvent.UNMAP, 0x6000, 0x8000, 0, reserved=9) + b"\x12\x00\x00")
    out = uffd.parse_msgs(data)
    assert [m.event for m in out] == [U.UffdEvent.FORK, U.UffdEvent.REMAP, U.UffdEvent.REMOVE,
                                      U.UffdEvent.UNMAP]
    assert out[0].a == 7
    assert out[1][1:] == (0x1000, 0x9000, 0x2000)  # REMAP keeps all 64 bits of len
    assert out[3][1:3] == (0x6000, 0x8000)
    assert uffd.parse_msgs(b"") == ()
    assert len(U.UFFD_MSG_HEAD.pack(0, 0, 0, 0) + U.UFFD_MSG_ARG.pack(0, 0, 0)) \
        == U.UFFD_MSG_SIZE


def test_no_descriptor_leaks(mem) -> None:
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(20):
        fd = uffd.userfaultfd()
        uffd.api(fd, 0)
        _sys.close(fd)
    assert set(os.listdir("/proc/self/fd")) == before
