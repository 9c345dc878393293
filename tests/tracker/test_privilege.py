"""Without privilege: userfaultfd(2) falls back to UFFD_USER_MODE_ONLY, which async
write-protect needs no more than (kernel-mode writes are resolved in do_wp_page)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from writewatch.kernel import procfs

pytestmark = pytest.mark.usefixtures("uffd_async")

CHILD = textwrap.dedent("""
    import mmap, os
    import writewatch  # the interpreter lives under /root: import before dropping privilege
    import writewatch.backends.uffd_async
    os.setgid(65534); os.setuid(65534)
    import ctypes
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid cleared it
    P = mmap.PAGESIZE
    m = mmap.mmap(-1, 16 * P)
    with writewatch.track(m) as t:
        m[P * 3] = 1
        r, w = os.pipe()
        os.write(w, b"abc")
        os.readv(r, [memoryview(m)[P * 7:P * 7 + 3]])   # a kernel-mode write
        got = sorted(int(a - t.targets[0].start) // P for a in t.collect().addresses())
    print(got)
""")


def test_unprivileged_user_falls_back_to_user_mode_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    if procfs.read_setting("/proc/sys/vm/unprivileged_userfaultfd") == "1":
        pytest.skip("vm.unprivileged_userfaultfd=1: no fallback is needed")
    res = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[3, 7]"
