"""tools/kernel_matrix.py: its pure parts, and one boot when qemu and the kernel are at hand."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kernel_matrix", ROOT / "tools" / "kernel_matrix.py")
assert _spec and _spec.loader
km = importlib.util.module_from_spec(_spec)
sys.modules["kernel_matrix"] = km
_spec.loader.exec_module(km)


def test_parse_depends_takes_the_first_stanza() -> None:
    text = ("Package: linux-image-amd64\nVersion: 6.1.192-2\n"
            "Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2), foo | bar\n\n"
            "Package: linux-image-amd64\nDepends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)\n")
    assert km.parse_depends(text) == ["linux-image-6.1.0-56-amd64", "foo"]
    assert km.parse_depends("Package: x\n") == []


def _elf_with_modinfo(info: bytes) -> bytes:
    """A minimal ELF64 with a section-name table and a .modinfo section."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    data_off = 64
    shstr_off = data_off
    info_off = shstr_off + len(shstr)
    shoff = info_off + len(info)
    shoff += -shoff % 8
    hdr = bytearray(64)
    hdr[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", hdr, 0x28, shoff)
    struct.pack_into("<HHH", hdr, 0x3A, 64, 3, 1)
    body = bytearray(hdr) + shstr + info
    body += b"\0" * (shoff - len(body))
    sections = [(0, 0, 0), (1, shstr_off, len(shstr)), (11, info_off, len(info))]
    for name, off, size in sections:
        body += struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)
    return bytes(body)


def test_modinfo_and_module_order() -> None:
    ko = _elf_with_modinfo(b"license=GPL\0depends=9pnet,netfs\0name=9p\0")
    info = km.modinfo(ko)
    assert info["depends"] == ["9pnet,netfs"] and info["name"] == ["9p"]
    with pytest.raises(ValueError):
        km.modinfo(b"not an elf")
    deps = {"9p": ["9pnet", "netfs"], "netfs": ["fscache"], "fscache": [],
            "9pnet": [], "virtio_pci": ["virtio", "virtio_ring"], "virtio": ["virtio_ring"],
            "virtio_ring": []}
    order = km.module_order(["virtio_pci", "9p"], deps)
    assert order == ["virtio_ring", "virtio", "virtio_pci", "9pnet", "fscache", "netfs", "9p"]
    for m, ds in deps.items():
        for d in ds:
            assert order.index(d) < order.index(m)
    with pytest.raises(ValueError, match="cycle"):
        km.module_order(["a"], {"a": ["b"], "b": ["a"]})


def test_module_files_compressed_and_builtin(tmp_path: Path) -> None:
    import gzip
    import lzma

    ko = _elf_with_modinfo(b"depends=netfs\0name=9p\0")
    for name, data in (("9p.ko", ko), ("9p.ko.xz", lzma.compress(ko)),
                       ("9p.ko.gz", gzip.compress(ko))):
        (tmp_path / name).write_bytes(data)
        assert km._mod_name(tmp_path / name) == "9p"
        assert km.modinfo(km._read_module(tmp_path / name))["depends"] == ["netfs"]
    assert km._mod_name(Path("9pnet-virtio.ko.xz")) == "9pnet_virtio"
    assert km._mod_name(Path("modules.builtin")) is None
    with pytest.raises(ValueError):
        km._read_module(tmp_path / "modules.order")
    builtin = ("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n"
               "kernel/fs/fat/vfat.ko\n")
    assert km.parse_builtin(builtin) == {"virtio", "virtio_pci", "vfat"}


def test_private_apt_state_per_suite_and_architecture() -> None:
    apt = km.Apt("bookworm-backports")
    assert apt.root == km.CACHE / "apt" / "bookworm-backports-amd64"
    opts = dict(o.split("=", 1) for o in apt.options[1::2])
    assert opts["Dir::Etc::SourceList"] == str(apt.root / "sources.list")
    assert opts["Dir::Etc::SourceParts"] == "/dev/null"  # the host's sources are not used
    assert opts["Dir::State::Lists"].startswith(str(apt.root))
    assert opts["Dir::State::status"] == "/dev/null"  # nor its installed packages
    assert opts["APT::Architecture"] == "amd64"
    arm = km.Apt("trixie", "arm64")
    arm_opts = dict(o.split("=", 1) for o in arm.options[1::2])
    assert arm.root == km.CACHE / "apt" / "trixie-arm64" != apt.root
    assert arm_opts["APT::Architecture"] == arm_opts["APT::Architectures"] == "arm64"
    assert {s.suite for s in km.KERNELS.values()} >= {"bookworm", "bookworm-backports"}


def test_parse_stanzas_first_alternative_of_depends_and_pre_depends() -> None:
    text = ("Package: libpython3.11-stdlib\nVersion: 3.11.2-6\n"
            "Depends: libpython3.11-minimal (= 3.11.2-6), media-types | mime-support, "
            "libc6 (>= 2.34)\n\n"
            "Package: python3.11-minimal\nPre-Depends: libc6 (>= 2.35)\n"
            "Depends: zlib1g:any (>= 1:1.2.0)\n\n"
            "Package: libc6\nDepends: libgcc-s1\n\n"
            "Package: libc6\nDepends: something-older\n")
    assert km.parse_stanzas(text) == {
        "libpython3.11-stdlib": ["libpython3.11-minimal", "media-types", "libc6"],
        "python3.11-minimal": ["libc6", "zlib1g"],
        "libc6": ["libgcc-s1"]}


def test_kernel_names_per_architecture() -> None:
    arm = km.find_kernel("debian-6.12", "arm64")
    assert (arm.name, arm.arch, arm.suite) == ("debian-6.12-arm64", "arm64", "trixie")
    assert km.find_kernel("debian-6.12-bpo", "aarch64").name == "debian-6.12-bpo-arm64"
    assert km.find_kernel("debian-6.12-bpo-arm64").suite == "bookworm-backports"
    assert km.find_kernel(None, "arm64").name == "debian-6.12-arm64"
    assert km.find_kernel(None).name == "debian-6.1"
    assert km.find_kernel("debian-6.12-arm64", "arm64").arch == "arm64"
    assert km.find_kernel("debian-6.12", "x86_64").arch == "x86_64"
    for spec in km.KERNELS.values():
        assert spec.meta_package.startswith(f"linux-image-{km.ARCHES[spec.arch].debian}")
    assert km.find_kernel("debian-6.12-arm64-16k").meta_package == "linux-image-arm64-16k"
    with pytest.raises(SystemExit, match="unknown kernel"):
        km.find_kernel("debian-6.1", "arm64")  # no uffd-wp on arm64 before 6.10
    with pytest.raises(SystemExit, match="unknown architecture"):
        km.find_kernel("debian-6.1", "riscv64")


@pytest.mark.skipif(km.HOST_MACHINE != "x86_64", reason="the x86-64 flags of /proc/cpuinfo")
def test_kvm_is_refused_where_it_cannot_boot_a_guest() -> None:
    x86, arm = km.find_kernel("debian-6.1"), km.find_kernel("debian-6.12-arm64")
    assert km.kvm_refusal([x86], "processor\t: 0\nflags\t\t: fpu vme svm sse2\n") is None
    assert "no vmx or svm" in km.kvm_refusal([x86], "flags\t\t: fpu vme hypervisor sse2\n")
    assert "not debian-6.12-arm64" in km.kvm_refusal([x86, arm], "flags\t\t: vmx\n")


def test_foreign_architecture_boots_its_own_root_with_the_tree_mounted() -> None:
    arm = km.ARCHES["arm64"]
    layout = km.Layout(arm, Path("/cache/rootfs/arm64"), "/tmp/ci try")
    argv = km.qemu_argv(Path("/k"), Path("/i"), "4G", 2, "tcg", layout)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-cpu") + 1] == "max,pauth=off"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert "console=ttyAMA0" in argv[argv.index("-append") + 1]
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert [dict(kv.split("=", 1) for kv in s.split(",")[1:])["mount_tag"] for s in shares] \
        == ["guestroot", "tree"]
    assert all("readonly=on" in s for s in shares)
    assert "path=/cache/rootfs/arm64," in shares[0] and "path=/tmp/ci try," in shares[1]
    # the scratch is always /tmp in a root of the guest's own; the tree gets mounted after
    # it, so a tree under /tmp is not hidden by it
    assert layout.scratch_dir("/tmp/ci try") == "/tmp"
    mounts = layout.mounts("/tmp/ci try", "1G")
    assert mounts.index("scratch $R/tmp") < mounts.index("tree $R'/tmp/ci try'")
    env = km.guest_env("/tmp/ci try", {}, layout)
    assert env["PYTHONPATH"] == "/tmp/ci try/src"
    assert env["WRITEWATCH_TEST_TARGETS"].endswith("/targets/aarch64")
    assert layout.python == f"/usr/bin/{km.ROOTFS_PYTHON}"
    with pytest.raises(SystemExit, match="sees only the project tree"):
        layout.check_cwd("/elsewhere")
    layout.check_cwd("/tmp/ci try/tests")
    host = km.Layout(km.ARCHES["x86_64"])
    assert host.rootfs is None and host.python == sys.executable
    assert "hostroot" in host.virtfs()[1] and "PYTHONPATH" not in km.guest_env("/w", {}, host)


def test_matrix_jobs_and_summaries() -> None:
    job = km.parse_job("debian-6.12-arm64:-m kernel -k 'a or b' tests/x.py::test_y")
    assert job.spec.arch == "arm64" and job.name == "debian-6.12-arm64"
    assert job.args == ("-m", "kernel", "-k", "a or b", "tests/x.py::test_y")
    assert km.parse_job("debian-6.1").args == ()
    out = "....\n= 3 failed, 120 passed, 7 skipped in 312.50s (0:05:12) =\nkernel_matrix: x"
    assert km.summary_line(out) == "3 failed, 120 passed, 7 skipped in 312.50s (0:05:12)"
    assert km.summary_line("Kernel panic\n") == ""
    assert 1 <= km.parallel_guests(2, "4G") <= 2
    assert km.parallel_guests(5, "100000G") == 1  # never fewer than one


def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    out = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], body, (f[9], f[10]))


def test_cpio_newc_round_trip() -> None:
    entries = [km.CpioEntry("bin", 0o40755), km.CpioEntry("dev/console", 0o20600, rdev=(5, 1)),
               km.CpioEntry("init", 0o100755, b"#!/bin/sh\necho hi\n"),
               km.CpioEntry("odd", 0o100644, b"x" * 7)]
    back = _read_cpio(km.cpio_newc(entries))
    assert back == {e.name: (e.mode, e.data, e.rdev) for e in entries}


def test_parse_console() -> None:
    nonce = "abc123"
    console = ("boot noise\r\n"
               f"{km.MARK_BEGIN} {nonce} 6.1.0-56-amd64\r\n"
               "line one\r\n"
               f"{km.MARK_EXIT} other 0\r\n"  # a forged marker with another nonce
               "line two\r\n"
               f"{km.MARK_EXIT} {nonce} 3\r\n"
               "reboot: Power down\r\n")
    status, out, release = km.parse_console(console, nonce)
    assert (status, release) == (3, "6.1.0-56-amd64")
    assert out == f"line one\n{km.MARK_EXIT} other 0\nline two"
    assert km.parse_console("Kernel panic - not syncing\n", nonce)[0] is None
    # output without a final newline (a command killed mid-line) runs into the marker
    cut = f"{km.MARK_BEGIN} {nonce} 6.1\n...{km.MARK_EXIT} {nonce} 124\n"
    assert km.parse_console(cut, nonce) == (124, "...", "6.1")
    # the kernel's power-down message on the marker's line (seen on arm64 6.12.95)
    glued = f"{km.MARK_BEGIN} {nonce} 6.12\nok\n{km.MARK_EXIT} {nonce} 0[  467.13] reboot\n"
    assert km.parse_console(glued, nonce) == (0, "ok", "6.12")
    # init gave up before running the command
    assert km.parse_console(f"x\n{km.MARK_EXIT} {nonce} {km.NO_RESULT}\n", nonce)[0] is None


def test_guest_command_line_is_quoted() -> None:
    kernel_dir = km.CACHE / "debian-6.1"
    if not (kernel_dir / "kernel.json").exists() or km._busybox_static() is None:
        pytest.skip("kernel not cached or no static busybox (run tools/kernel_matrix.py fetch)")
    argv = ["python", "-c", "print('a b; $HOME')"]
    cpio = _read_cpio(km.build_initramfs(kernel_dir, argv, "/work dir", {"A": "1 2"}, "n0nce"))
    init = cpio["init"][1].decode()
    assert "'A=1 2'" in init
    assert "n0nce" in init and "bin/busybox" in cpio and "dev/console" in cpio
    assert all(f"lib/modules/{m}.ko" in cpio for m in ("virtio_pci", "9pnet_virtio", "9p"))


@pytest.mark.slow
@pytest.mark.kernel
def test_boot_returns_the_guest_exit_status() -> None:
    if os.environ.get("WRITEWATCH_KERNEL_MATRIX"):
        pytest.skip("already inside the kernel-matrix guest")
    if shutil.which("qemu-system-x86_64") is None or km._busybox_static() is None:
        pytest.skip("qemu-system-x86_64 or busybox-static not installed")
    if not (km.CACHE / "debian-6.1" / "kernel.json").exists():
        pytest.skip("debian-6.1 kernel not cached (python tools/kernel_matrix.py fetch)")
    res = km.boot(km.KERNELS["debian-6.1"],
                  ["sh", "-c", 'uname -r; echo $TMPDIR; touch "$TMPDIR/x"; printf cut; exit 7'],
                  timeout=180, echo=False)
    assert res.status == 7, res.console[-3000:]
    assert res.release.startswith("6.1.")
    # the scratch is /tmp, or /mnt when this tree lives under /tmp (a tmpfs would hide it)
    scratch = km.scratch_dir(os.getcwd())
    assert res.output.splitlines()[-3:] == [res.release, scratch, "cut"]


@pytest.mark.slow
@pytest.mark.kernel
def test_arm64_guest_runs_in_its_own_root_and_sees_the_tree() -> None:
    if os.environ.get("WRITEWATCH_KERNEL_MATRIX"):
        pytest.skip("already inside the kernel-matrix guest")
    arm = km.ARCHES["arm64"]
    spec = km.KERNELS["debian-6.12-arm64"]
    if shutil.which(arm.qemu) is None or km.cross_compiler(arm) is None:
        pytest.skip(f"{arm.qemu} or {arm.gnu}-gcc not installed")
    if not (km.CACHE / spec.name / "kernel.json").exists() or \
            not (km.ROOTFS_CACHE / "arm64" / "rootfs.json").exists():
        pytest.skip("arm64 kernel or root not cached (tools/kernel_matrix.py fetch --arch arm64)")
    script = ('uname -m; test -f pyproject.toml && echo tree; '
              '"$WRITEWATCH_TEST_TARGETS/writer" selfcheck 4 0.2 | tail -n 1 | cut -c1-4; '
              'python3 -c "import numpy, writewatch; print(writewatch.__name__)"; exit 7')
    res = km.boot(spec, ["sh", "-c", script], cwd=str(ROOT), timeout=240, echo=False)
    assert res.status == 7, res.console[-3000:]
    assert res.release.endswith("-arm64")
    assert res.output.splitlines()[-4:] == ["aarch64", "tree", "PASS", "writewatch"]
