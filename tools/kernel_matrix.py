#!/usr/bin/env python3
"""Run a host command (the project's tests) on another Linux kernel, booted under qemu.

The guest kernel is a distribution kernel package (Debian's 6.1 and 6.12 for x86-64, 6.12 for
arm64). It boots with a tiny busybox initramfs that loads the virtio and 9p modules and mounts
a root over 9p (``-virtfs ... readonly=on,multidevs=remap``): for a guest of the host's
architecture the host's own root filesystem (the host's Python runs the tests), for another
architecture (arm64 on an x86-64 host, under TCG) a Debian userland of that architecture
cached in ``.cache/rootfs/`` with the project tree mounted at its host path. Then proc, sys,
devtmpfs and a tmpfs scratch on /tmp (on /mnt when the tree is under /tmp and the host root
is shared), a chroot, and the command. Its exit status comes back on the serial console (qemu
itself exits 0 whatever the guest does), between markers carrying a per-run nonce; a missing
marker or a timeout is a failure.

    python tools/kernel_matrix.py fetch                    # download + cache the kernel
    python tools/kernel_matrix.py run -- uname -r          # any command, exit status kept
    python tools/kernel_matrix.py pytest tests/backends    # the project's pytest in the guest
    python tools/kernel_matrix.py pytest --arch arm64 --kernel debian-6.12 -m kernel
    python tools/kernel_matrix.py matrix JOB...            # several guests, two at a time

Downloads are cached in ``.cache/`` (git-ignored). Missing host tools (qemu, a static
busybox, the cross compiler for the C test targets) are installed with apt when running as
root. See docs/kernel-matrix.md.
"""

from __future__ import annotations

import argparse
import codecs
import gzip
import io
import json
import lzma
import os
import queue
import re
import secrets
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "kernels"
ROOTFS_CACHE = ROOT / ".cache" / "rootfs"
TARGETS_CACHE = ROOT / ".cache" / "targets"

#: exit status reported when the guest produced no result (timeout, panic, boot failure)
NO_RESULT = 125

MARK_BEGIN = "WW-KERNEL-MATRIX-BEGIN"
MARK_EXIT = "WW-KERNEL-MATRIX-EXIT"


@dataclass(frozen=True)
class Arch:
    """A guest architecture: how qemu boots it and what Debian calls it."""

    name: str  #: as in ``--arch``
    machine: str  #: ``uname -m`` in the guest
    debian: str  #: Debian's architecture name (packages, ``APT::Architecture``)
    qemu: str  #: the qemu binary
    qemu_package: str  #: the Debian package that has it
    console: str  #: the serial console device the kernel writes to
    gnu: str  #: GNU triplet of the cross compiler (``<gnu>-gcc``)

    def qemu_machine(self, accel: str, cpus: int) -> list[str]:
        """qemu arguments for the board and CPU."""
        if self.name == "arm64":
            # plain `-cpu max` also emulates pointer authentication (QARMA), which makes TCG
            # about 3.5 times slower; writewatch does not depend on it. thread=multi: one host
            # thread per guest CPU (MTTCG).
            cpu = "host" if accel == "kvm" else "max,pauth=off"
            acc = "kvm" if accel == "kvm" else "tcg,thread=multi"
            return ["-machine", "virt", "-accel", acc, "-cpu", cpu, "-smp", str(cpus)]
        # qemu 7.2's TCG emulation of AVX2 gives wrong results for numpy's AVX2 sort kernels
        # (np.argsort of 1,000 random int64 misorders): without AVX2 numpy dispatches to
        # its SSE/AVX code, which TCG runs correctly
        cpu = "host" if accel == "kvm" else "max,avx2=off"
        return ["-machine", f"q35,accel={accel}", "-cpu", cpu, "-smp", str(cpus)]

    @property
    def native(self) -> bool:
        """Whether this is the host's own architecture (the guest shares the host's root)."""
        return self.machine == HOST_MACHINE


ARCHES = {
    "x86_64": Arch("x86_64", "x86_64", "amd64", "qemu-system-x86_64", "qemu-system-x86",
                   "ttyS0", "x86_64-linux-gnu"),
    "arm64": Arch("arm64", "aarch64", "arm64", "qemu-system-aarch64", "qemu-system-arm",
                  "ttyAMA0", "aarch64-linux-gnu"),
}
ARCH_ALIASES = {"amd64": "x86_64", "aarch64": "arm64"}
HOST_MACHINE = os.uname().machine


@dataclass(frozen=True)
class KernelSpec:
    """A kernel to boot: a distribution package resolved through a meta package."""

    name: str
    suite: str  #: the Debian suite the meta package comes from
    meta_package: str  #: resolved to the real image package through its Depends
    description: str
    #: modules the initramfs loads (their dependencies are resolved from the .ko files;
    #: those built into the kernel are skipped)
    modules: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p")
    arch: str = "x86_64"  #: a key of ARCHES
    #: the same kernel line on x86-64 (``--arch arm64 --kernel <base>`` finds this spec)
    base: str = ""


def _arm64(base: str, suite: str, description: str) -> KernelSpec:
    return KernelSpec(f"{base}-arm64", suite, "linux-image-arm64", description,
                      arch="arm64", base=base)


KERNELS = {
    "debian-6.1": KernelSpec(
        "debian-6.1", "bookworm", "linux-image-amd64",
        "Debian bookworm's Linux 6.1: CONFIG_MEM_SOFT_DIRTY=y, uffd-wp (sync), no WP_ASYNC, "
        "no PAGEMAP_SCAN"),
    "debian-6.12": KernelSpec(
        "debian-6.12", "trixie", "linux-image-amd64",
        "Debian trixie's Linux 6.12: CONFIG_MEM_SOFT_DIRTY=y next to WP_ASYNC and "
        "PAGEMAP_SCAN (PAGE_IS_SOFT_DIRTY)"),
    "debian-6.12-bpo": KernelSpec(
        "debian-6.12-bpo", "bookworm-backports", "linux-image-amd64",
        "Debian bookworm-backports' Linux 6.12"),
    # arm64 has no soft-dirty (no CONFIG_HAVE_ARCH_SOFT_DIRTY) and uffd-wp only since 6.10
    # (CONFIG_HAVE_ARCH_USERFAULTFD_WP, "arm64/mm: Enable userfaultfd write-protect"), so
    # bookworm's 6.1 has no precise mechanism at all there.
    "debian-6.12-arm64": _arm64(
        "debian-6.12", "trixie",
        "Debian trixie's Linux 6.12 for arm64: WP_ASYNC and PAGEMAP_SCAN, no soft-dirty"),
    "debian-6.12-bpo-arm64": _arm64(
        "debian-6.12-bpo", "bookworm-backports",
        "Debian bookworm-backports' Linux 6.12 for arm64"),
    # 16 KiB pages (CONFIG_ARM64_16K_PAGES): PMD 32 MiB, contiguous-PTE blocks of 2 MiB;
    # qemu's `-cpu max` implements the 16 KiB granule
    "debian-6.12-arm64-16k": KernelSpec(
        "debian-6.12-arm64-16k", "trixie", "linux-image-arm64-16k",
        "Debian trixie's Linux 6.12 for arm64 with 16 KiB pages", arch="arm64"),
}

#: the kernel booted when ``--kernel`` is not given
DEFAULT_KERNEL = {"x86_64": "debian-6.1", "arm64": "debian-6.12-arm64"}

#: where kernel packages are fetched from, with a private apt state (the host's sources
#: and lists are neither used nor changed)
MIRROR = "http://deb.debian.org/debian"


def find_kernel(name: str | None, arch: str | None = None) -> KernelSpec:
    """The spec for ``--kernel name`` (and ``--arch``): ``name`` may be a full name
    (``debian-6.12-arm64``) or the x86-64 name of the same kernel line with ``arch``."""
    arch = ARCH_ALIASES.get(arch, arch) if arch else None
    if arch is not None and arch not in ARCHES:
        sys.exit(f"kernel_matrix: unknown architecture {arch!r} (known: {', '.join(ARCHES)})")
    if name is None:
        return KERNELS[DEFAULT_KERNEL[arch or "x86_64"]]
    spec = KERNELS.get(name)
    if spec is not None and arch not in (None, spec.arch):
        spec = next((s for s in KERNELS.values() if s.arch == arch and s.base == name), None)
    if spec is None:
        known = ", ".join(s.name for s in KERNELS.values() if arch in (None, s.arch))
        sys.exit(f"kernel_matrix: unknown kernel {name!r}"
                 + (f" for {arch}" if arch else "") + f" (known: {known})")
    return spec


# ---------------------------------------------------------------------------------------------
# Host tools

def _is_static(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    # a static ELF has no PT_INTERP segment: look for the dynamic loader path instead
    return b"ld-linux" not in head


def _busybox_static() -> str | None:
    """The host's static busybox (the initramfs of a guest of the host's architecture)."""
    path = shutil.which("busybox")
    return path if path is not None and _is_static(path) else None


def cross_compiler(arch: Arch) -> str | None:
    """The C compiler that builds static test targets for ``arch``."""
    if arch.native:
        return shutil.which("cc") or shutil.which("gcc")
    return shutil.which(f"{arch.gnu}-gcc")


def _apt_install(packages: Sequence[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"kernel_matrix: missing host packages {' '.join(packages)}: install them "
                 f"(apt-get install --no-install-recommends {' '.join(packages)})")
    print(f"kernel_matrix: installing {' '.join(packages)}", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_host_tools(arch: Arch | None = None) -> None:
    """Install with apt what booting ``arch`` needs and is missing: qemu for it, a static
    busybox (its applet list names the links of a foreign root too), and for a foreign
    architecture the cross compiler of the C test targets."""
    arch = arch or ARCHES["x86_64"]
    missing = []
    if shutil.which(arch.qemu) is None:
        missing.append(arch.qemu_package)
    if _busybox_static() is None:
        missing.append("busybox-static")
    if not arch.native and cross_compiler(arch) is None:
        # static binaries need the cross libc's libc.a
        missing += [f"gcc-{arch.gnu}", f"libc6-dev-{arch.debian}-cross"]
    if missing:
        _apt_install(missing)


# ---------------------------------------------------------------------------------------------
# Kernel package: resolve, download, keep vmlinuz + the needed modules

def parse_depends(text: str) -> list[str]:
    """Package names of the ``Depends:`` line of ``apt-cache show`` output (pure; first
    stanza only, which is the candidate with ``--no-all-versions``)."""
    for line in text.splitlines():
        if line.startswith("Depends:"):
            return [alt.split()[0] for dep in line[len("Depends:"):].split(",")
                    for alt in dep.split("|")[:1] if alt.strip()]
        if not line.strip():
            break
    return []


def parse_stanzas(text: str) -> dict[str, list[str]]:
    """Package -> the names it needs (``Pre-Depends`` and ``Depends``, first alternative of
    each, architecture qualifiers such as ``:any`` dropped), from ``apt-cache show
    --no-all-versions`` output for several packages (pure)."""
    out: dict[str, list[str]] = {}
    for stanza in text.split("\n\n"):
        name = None
        deps: list[str] = []
        for line in stanza.splitlines():
            key, _, val = line.partition(":")
            if key == "Package":
                name = val.strip()
            elif key in ("Depends", "Pre-Depends"):
                deps += [alt.split()[0].split(":")[0] for dep in val.split(",")
                         for alt in dep.split("|")[:1] if alt.strip()]
        if name is not None:
            out.setdefault(name, deps)
    return out


class Apt:
    """apt-get / apt-cache on one Debian suite and architecture, with sources, lists and
    package cache kept in ``.cache/kernels/apt/<suite>-<arch>`` (the archive keys are the
    host's; an empty dpkg status, so the host's installed packages play no part)."""

    def __init__(self, suite: str, debian_arch: str = "amd64") -> None:
        self.suite = suite
        self.root = CACHE / "apt" / f"{suite}-{debian_arch}"
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "Dir::State::status=/dev/null",
            "-o", f"APT::Architecture={debian_arch}",
            "-o", f"APT::Architectures={debian_arch}",
        ]
        if os.geteuid() == 0:  # apt drops privileges to _apt when it can
            self.options += ["-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        for d in ("lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(f"deb {MIRROR} {self.suite} main\n")
        subprocess.run(["apt-get", *self.options, "update", "-qq"], check=True)

    def show(self, *packages: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-cache", *self.options, "show", "--no-all-versions",
                               *packages], capture_output=True, text=True)

    def download(self, *packages: str, cwd: Path) -> None:
        subprocess.run(["apt-get", *self.options, "download", "-q", *packages], cwd=cwd,
                       check=True, stdout=subprocess.DEVNULL)

    def closure(self, roots: Iterable[str], skip: frozenset[str]) -> list[str]:
        """``roots`` and everything they depend on, except ``skip`` (and what only the
        skipped ones need)."""
        seen: dict[str, list[str]] = {}
        todo = [r for r in roots if r not in skip]
        while todo:
            got = self.show(*todo)
            deps = parse_stanzas(got.stdout)
            missing = [t for t in todo if t not in deps]
            if missing:
                sys.exit(f"kernel_matrix: {', '.join(missing)} not in {self.suite} "
                         f"({got.stderr.strip()})")
            seen.update(deps)
            todo = sorted({d for ds in deps.values() for d in ds
                           if d not in seen and d not in skip})
        return sorted(seen)


def resolve_image_package(apt: Apt, meta: str) -> str:
    """The real ``linux-image-<abi>-<arch>`` package the meta package depends on now (old
    ABI packages disappear from the mirror, so the name is never pinned)."""
    apt.update()
    got = apt.show(meta)
    deps = [d for d in parse_depends(got.stdout) if d.startswith("linux-image-")]
    if not deps:
        sys.exit(f"kernel_matrix: cannot resolve {meta} in {apt.suite} "
                 f"(apt-cache show: {got.stderr.strip()})")
    return deps[0]


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """The ``.modinfo`` section of an ELF64 kernel module as key -> values (pure)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2:
        raise ValueError("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", ko,
                                                                  shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    out: dict[str, list[str]] = {}
    for i in range(shnum):
        name, off, size = section(i)
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name:end] == b".modinfo":
            for item in ko[off:off + size].split(b"\0"):
                key, sep, val = item.decode(errors="replace").partition("=")
                if sep:
                    out.setdefault(key, []).append(val)
    return out


def module_order(wanted: Iterable[str], deps: dict[str, list[str]]) -> list[str]:
    """Modules to load, dependencies first (pure; ``deps`` maps name -> its depends)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(m: str) -> None:
        if m in order:
            return
        if m in visiting:
            raise ValueError(f"module dependency cycle at {m}")
        visiting.add(m)
        for d in deps.get(m, []):
            visit(d)
        visiting.discard(m)
        order.append(m)

    for m in wanted:
        visit(m)
    return order


MODULE_SUFFIXES = {".ko": None, ".ko.xz": lzma.decompress, ".ko.gz": gzip.decompress}


def _mod_name(path: Path) -> str | None:
    """Module name of a module file (``-`` and ``_`` are the same to the kernel), or None
    for a file that is not one (or is compressed in a way this tool cannot read)."""
    for suffix in MODULE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[:-len(suffix)].replace("-", "_")
    return None


def _read_module(path: Path) -> bytes:
    """The ELF bytes of a module file (Debian compresses them with xz since 6.2)."""
    for suffix, unpack in MODULE_SUFFIXES.items():
        if path.name.endswith(suffix):
            data = path.read_bytes()
            return unpack(data) if unpack else data
    raise ValueError(f"not a module file: {path}")


def parse_builtin(text: str) -> set[str]:
    """Module names of a ``modules.builtin`` file (paths such as
    ``kernel/drivers/virtio/virtio_pci.ko``), pure."""
    return {name for line in text.split()
            if (name := _mod_name(Path(line))) is not None}


def fetch_kernel(spec: KernelSpec, refresh: bool = False) -> Path:
    """Download (once) and cache ``spec``'s kernel; return its cache folder holding
    ``vmlinuz``, ``config``, ``modules/*.ko`` and ``kernel.json``."""
    dest = CACHE / spec.name
    if (dest / "kernel.json").exists() and not refresh:
        return dest
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            sys.exit(f"kernel_matrix: {tool} is needed to fetch {spec.name} (a Debian host)")
    apt = Apt(spec.suite, ARCHES[spec.arch].debian)
    package = resolve_image_package(apt, spec.meta_package)
    print(f"kernel_matrix: fetching {package} ({spec.suite})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt-get download drops privileges to _apt when it can
        apt.download(package, cwd=work)
        deb = next(work.glob("*.deb"))
        tree = work / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
        release = vmlinuz.name[len("vmlinuz-"):]
        # /lib/modules up to bookworm, /usr/lib/modules in trixie (merged /usr)
        moddir = next(d for d in (tree / "lib" / "modules" / release,
                                  tree / "usr" / "lib" / "modules" / release) if d.is_dir())
        kos = {name: p for p in moddir.rglob("*.ko*") if (name := _mod_name(p)) is not None}
        builtin = parse_builtin((moddir / "modules.builtin").read_text()) \
            if (moddir / "modules.builtin").exists() else set()
        deps: dict[str, list[str]] = {}
        todo = [m for m in spec.modules if m not in builtin]
        while todo:
            m = todo.pop()
            if m in deps:
                continue
            if m not in kos:
                sys.exit(f"kernel_matrix: module {m} not in {package}")
            info = modinfo(_read_module(kos[m]))
            deps[m] = [d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",")
                       if d and d.replace("-", "_") not in builtin]
            todo.extend(deps[m])
        order = module_order([m for m in spec.modules if m not in builtin], deps)
        out = work / "out"
        (out / "modules").mkdir(parents=True)
        shutil.copy(vmlinuz, out / "vmlinuz")
        shutil.copy(next((tree / "boot").glob("config-*")), out / "config")
        for m in order:
            (out / "modules" / f"{m}.ko").write_bytes(_read_module(kos[m]))
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        meta = {"spec": spec.name, "arch": spec.arch, "package": package, "version": version,
                "release": release, "modules": order,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
    shutil.rmtree(apt.root)  # the suite's package lists are only needed to resolve and fetch
    return dest


# ---------------------------------------------------------------------------------------------
# Root filesystem of a foreign architecture: Debian's Python and the test dependencies

#: the Debian suite of the userland (Python 3.11 like a Debian 12 host)
ROOTFS_SUITE = "bookworm"
ROOTFS_PYTHON = "python3.11"
#: libstdc++6: numpy's manylinux wheels link it (the manylinux policy leaves it to the system)
ROOTFS_PACKAGES = ("busybox-static", f"{ROOTFS_PYTHON}-minimal", f"lib{ROOTFS_PYTHON}-stdlib",
                   "libstdc++6")
#: dependencies a test run does not use (perl comes in through mime-support's mailcap; the
#: package tools and terminfo data through Pre-Depends)
ROOTFS_SKIP = frozenset({
    "perl", "perl-base", "perl-modules-5.36", "libperl5.36", "mailcap", "mime-support",
    "media-types", "dpkg", "tar", "install-info", "readline-common", "debconf", "tzdata",
    "libgdbm-compat4", "libgdbm6", "libdb5.3"})
#: wheels of the guest's pytest run, at the versions this interpreter has when it has them
ROOTFS_WHEELS = ("numpy", "pytest", "hypothesis", "xxhash", "zstandard")
#: the manylinux tags the wheels may carry (glibc 2.36 in bookworm)
ROOTFS_WHEEL_PLATFORMS = ("manylinux_2_28", "manylinux2014")
#: busybox applets linked into the root when the host's busybox cannot list them
ROOTFS_APPLETS = ("sh", "env", "cat", "ls", "mkdir", "rm", "cp", "mv", "ln", "sleep", "true",
                  "false", "echo", "uname", "id", "grep", "sed", "head", "tail", "wc", "ps",
                  "kill", "mount", "umount", "chroot", "sync", "poweroff", "ip", "hostname")


def _pinned(name: str) -> str:
    """``name==version`` when this interpreter has the package (the guest then runs the
    same versions as the host), else ``name``."""
    from importlib import metadata
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _applets() -> list[str]:
    host = _busybox_static() or shutil.which("busybox")
    if host is not None:
        got = subprocess.run([host, "--list"], capture_output=True, text=True)
        if got.returncode == 0 and got.stdout.split():
            return got.stdout.split()
    return list(ROOTFS_APPLETS)


def _populate_root(root: Path, arch: Arch) -> None:
    """Links, mount points and the few files of /etc a test run looks at."""
    for d in ("proc", "sys", "dev", "tmp", "mnt", "root", "etc", "usr/local/bin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    bindir = root / "bin"
    bindir.mkdir(exist_ok=True)
    for applet in _applets():
        link = bindir / applet
        if applet != "busybox" and not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    for name in ("python3", "python"):
        link = root / "usr" / "bin" / name
        if not link.exists():
            link.symlink_to(ROOTFS_PYTHON)
    if not (root / "usr" / "bin" / "env").exists():  # init runs `chroot R /usr/bin/env -i`
        (root / "usr" / "bin" / "env").symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    (root / "etc" / "hostname").write_text("wwguest\n")
    cli = root / "usr" / "local" / "bin" / "writewatch"
    cli.write_text(f"#!/usr/bin/{ROOTFS_PYTHON}\nimport sys\n"
                   "from writewatch.cli.__main__ import main\nsys.exit(main())\n")
    cli.chmod(0o755)


def _install_wheels(site: Path, arch: Arch) -> dict[str, str]:
    """The test dependencies as wheels for ``arch`` (binary only: nothing is built), into
    ``site``; returns name -> version."""
    ver = ROOTFS_PYTHON.removeprefix("python")
    platforms = [a for tag in ROOTFS_WHEEL_PLATFORMS
                 for a in ("--platform", f"{tag}_{arch.machine}")]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile",
                    "--disable-pip-version-check", "--target", str(site), *platforms,
                    "--only-binary=:all:", "--python-version", ver, "--implementation", "cp",
                    "--abi", f"cp{ver.replace('.', '')}",
                    *[_pinned(w) for w in ROOTFS_WHEELS]], check=True)
    out = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name[:-len(".dist-info")].rpartition("-")
        out[name] = version
    return out


def _byte_compile(root: Path) -> bool:
    """Compile the guest's Python files on the host: Debian's stdlib packages ship no .pyc
    (they are made at install time), the guest's root is read-only, and compiling there on
    every import is what makes ``import writewatch`` take 12.8 s instead of 3.7 s under
    TCG. Only an interpreter of the same minor version writes .pyc the guest accepts."""
    if f"python{sys.version_info[0]}.{sys.version_info[1]}" != ROOTFS_PYTHON:
        print(f"kernel_matrix: not byte-compiling the guest's {ROOTFS_PYTHON} with Python "
              f"{sys.version_info[0]}.{sys.version_info[1]}: imports in the guest will be "
              "slow", file=sys.stderr)
        return False
    dirs = [root / "usr" / "lib" / ROOTFS_PYTHON, root / "usr" / "lib" / "python3"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    *[str(d) for d in dirs if d.is_dir()]],
                   check=False, stdout=subprocess.DEVNULL)
    return True


def fetch_rootfs(arch: Arch, refresh: bool = False) -> Path:
    """Build (once) and cache a root filesystem for a foreign ``arch``: static busybox,
    Debian's Python and the libraries it needs (unpacked with ``dpkg-deb -x``, no maintainer
    script runs), the test dependencies as wheels, everything byte-compiled. Returns the
    folder; ``rootfs.json`` records what is in it."""
    dest = ROOTFS_CACHE / arch.name
    if (dest / "rootfs.json").exists() and not refresh:
        return dest
    apt = Apt(ROOTFS_SUITE, arch.debian)
    apt.update()
    packages = apt.closure(ROOTFS_PACKAGES, ROOTFS_SKIP)
    print(f"kernel_matrix: building a {arch.name} root from {len(packages)} {ROOTFS_SUITE} "
          "packages", file=sys.stderr)
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOTFS_CACHE) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        debs = work / "debs"
        debs.mkdir()
        apt.download(*packages, cwd=debs)
        root = work / "root"
        versions = {}
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            name, version = deb.name.split("_")[:2]
            versions[name] = version.replace("%3a", ":")
        _populate_root(root, arch)
        site = root / "usr" / "lib" / "python3" / "dist-packages"
        wheels = _install_wheels(site, arch)
        compiled = _byte_compile(root)
        meta = {"arch": arch.name, "suite": ROOTFS_SUITE, "packages": versions,
                "wheels": wheels, "byte_compiled": compiled,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (root / "rootfs.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        root.rename(dest)
    shutil.rmtree(apt.root)
    return dest


#: C programs the tests run, as (source under tests/, output name)
C_TARGETS = (("targets/writer.c", "writer"),)


def build_targets(arch: Arch) -> Path:
    """Cross-compile the tests' C targets for ``arch`` (static: the guest's root has no C
    library development files) into ``.cache/targets/<machine>/``, when a source is newer
    than its binary. The guest finds them through ``WRITEWATCH_TEST_TARGETS``."""
    cc = cross_compiler(arch)
    if cc is None:
        sys.exit(f"kernel_matrix: no C compiler for {arch.name} ({arch.gnu}-gcc)")
    out = TARGETS_CACHE / arch.machine
    out.mkdir(parents=True, exist_ok=True)
    for src, name in C_TARGETS:
        source, binary = ROOT / "tests" / src, out / name
        if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
            continue
        subprocess.run([cc, "-O1", "-Wall", "-static", "-pthread", "-o", str(binary),
                        str(source)], check=True)
    return out


# ---------------------------------------------------------------------------------------------
# Initramfs

class CpioEntry(NamedTuple):
    name: str  #: path inside the archive, without a leading slash
    mode: int  #: st_mode (type and permission bits)
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: Sequence[CpioEntry]) -> bytes:
    """A ``newc`` cpio archive (the format the kernel unpacks as initramfs), pure."""
    out = io.BytesIO()

    def pad() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, e in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        fields = (ino, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(name), 0)
        out.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        out.write(name)
        pad()
        out.write(e.data)
        pad()
    return out.getvalue()


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /mnt/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "kernel_matrix: insmod $m failed"
done
fail() {{ echo "kernel_matrix: $*"; echo "{exit_mark} {nonce} {no_result}"; poweroff -f; }}
{mounts}
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t devpts devpts $R/dev/pts
hostname {hostname}
ip link set lo up || echo "kernel_matrix: no loopback interface"
echo "{begin_mark} {nonce} $(uname -r)"
chroot $R /usr/bin/env -i {env} /bin/sh -c {command} </dev/null
rc=$?
echo "{exit_mark} {nonce} $rc"
sync
poweroff -f
"""


#: 9p mount options of the guest's roots (9p2000.L: the Linux dialect, with uids and modes)
P9_OPTS = "trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose"

#: the host's root as the guest's (a guest of the host's architecture)
MOUNTS_HOST_ROOT = """mount -t 9p -o {p9} hostroot /mnt/root \\
    || fail "mounting the host root over 9p failed"
R=/mnt/root
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev \\
    || fail "mounting proc/sys/dev in the host root failed"
mount -t tmpfs -o mode=1777,size={scratch} scratch $R{scratch_dir} \\
    || fail "mounting the {scratch_dir} scratch failed\""""

#: a root of the guest's architecture, and the project tree at its host path in it; the
#: tmpfs goes first, so that a tree under /tmp gets its mount point there
MOUNTS_FOREIGN_ROOT = """mount -t 9p -o {p9} guestroot /mnt/root \\
    || fail "mounting the guest root over 9p failed"
R=/mnt/root
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev \\
    || fail "mounting proc/sys/dev in the guest root failed"
mount -t tmpfs -o mode=1777,size={scratch} scratch $R{scratch_dir} \\
    || fail "mounting the {scratch_dir} scratch failed"
mkdir -p $R{tree} 2>/dev/null
mount -t 9p -o {p9} tree $R{tree} || fail "mounting the project tree over 9p failed\""""


@dataclass(frozen=True)
class Layout:
    """What the guest sees as its root: the host's (``rootfs`` None), or a root of a foreign
    architecture with the project ``tree`` mounted at its host path."""

    arch: Arch
    rootfs: Path | None = None
    tree: str = str(ROOT)

    @property
    def python(self) -> str:
        """The interpreter that runs pytest in the guest."""
        return sys.executable if self.rootfs is None else f"/usr/bin/{ROOTFS_PYTHON}"

    def scratch_dir(self, cwd: str) -> str:
        return scratch_dir(cwd) if self.rootfs is None else "/tmp"

    def mounts(self, cwd: str, scratch: str) -> str:
        if self.rootfs is None:
            return MOUNTS_HOST_ROOT.format(p9=P9_OPTS, scratch=scratch,
                                           scratch_dir=self.scratch_dir(cwd))
        return MOUNTS_FOREIGN_ROOT.format(p9=P9_OPTS, scratch=scratch, scratch_dir="/tmp",
                                          tree=shlex.quote(self.tree))

    def virtfs(self) -> list[str]:
        opts = "security_model=none,readonly=on,multidevs=remap"
        if self.rootfs is None:
            return ["-virtfs", f"local,path=/,mount_tag=hostroot,{opts}"]
        return ["-virtfs", f"local,path={self.rootfs},mount_tag=guestroot,{opts}",
                "-virtfs", f"local,path={self.tree},mount_tag=tree,{opts}"]

    def busybox(self) -> bytes:
        """The static busybox of the initramfs, of the guest's architecture."""
        path = _busybox_static() if self.rootfs is None else str(self.rootfs / "bin" / "busybox")
        if path is None or not os.path.exists(path):
            sys.exit("kernel_matrix: a static busybox is needed (apt-get install busybox-static)")
        return Path(path).read_bytes()

    def check_cwd(self, cwd: str) -> None:
        real, tree = os.path.realpath(cwd), os.path.realpath(self.tree)
        if self.rootfs is not None and not (real == tree or real.startswith(tree + "/")):
            sys.exit(f"kernel_matrix: a {self.arch.name} guest sees only the project tree "
                     f"({self.tree}); run from inside it (cwd is {cwd})")


def scratch_dir(cwd: str) -> str:
    """Where the writable tmpfs of a guest sharing the host root goes: /tmp, unless the tree
    or the interpreter lives under /tmp on the host (a clone in /tmp): a tmpfs there would
    hide them. Then /mnt, an empty directory of the Debian root, is used."""
    paths = (os.path.realpath(cwd), os.path.realpath(sys.executable), sys.executable)
    if any(p == "/tmp" or p.startswith("/tmp/") for p in paths):
        return "/mnt"
    return "/tmp"


def guest_env(cwd: str, extra: dict[str, str], layout: Layout | None = None) -> dict[str, str]:
    layout = layout or Layout(ARCHES["x86_64"])
    tmp = layout.scratch_dir(cwd)
    if layout.rootfs is None:
        bindir = os.path.dirname(sys.executable)
        path = f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    else:
        path = "/usr/local/bin:/usr/bin:/bin"
    env = {
        "PATH": path,
        "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "WRITEWATCH_KERNEL_MATRIX": "1", "PWD": cwd,
        # tools that keep caches in the (read-only) tree write them to the scratch instead
        "XDG_CACHE_HOME": f"{tmp}/.cache", "RUFF_CACHE_DIR": f"{tmp}/.cache/ruff",
        "MYPY_CACHE_DIR": f"{tmp}/.cache/mypy", "MPLCONFIGDIR": f"{tmp}/.cache/matplotlib",
        "HYPOTHESIS_STORAGE_DIRECTORY": f"{tmp}/.cache/hypothesis",
    }
    if layout.rootfs is not None:
        # the project from its source tree (no install in the guest's root), and the C test
        # targets cross-compiled on the host (the guest has no compiler)
        env["PYTHONPATH"] = f"{layout.tree}/src"
        env["WRITEWATCH_TEST_TARGETS"] = str(TARGETS_CACHE / layout.arch.machine)
    env.update(extra)
    return env


def build_initramfs(kernel_dir: Path, argv: Sequence[str], cwd: str, env: dict[str, str],
                    nonce: str, scratch: str = "1G", layout: Layout | None = None) -> bytes:
    layout = layout or Layout(ARCHES["x86_64"])
    meta = json.loads((kernel_dir / "kernel.json").read_text())
    command = f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"
    init = INIT.format(
        modules=" ".join(meta["modules"]), nonce=nonce, no_result=NO_RESULT,
        begin_mark=MARK_BEGIN, exit_mark=MARK_EXIT, hostname="wwguest",
        mounts=layout.mounts(cwd, scratch),
        env=" ".join(shlex.quote(f"{k}={v}") for k, v in env.items()),
        command=shlex.quote(command))
    entries = [CpioEntry(d, 0o40755) for d in ("bin", "dev", "proc", "sys", "mnt", "lib",
                                                 "lib/modules")]
    entries.append(CpioEntry("dev/console", 0o20600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", 0o100755, layout.busybox()))
    entries.append(CpioEntry("init", 0o100755, init.encode()))
    for m in meta["modules"]:
        entries.append(CpioEntry(f"lib/modules/{m}.ko", 0o100644,
                                 (kernel_dir / "modules" / f"{m}.ko").read_bytes()))
    return cpio_newc(entries)


# ---------------------------------------------------------------------------------------------
# Boot

@dataclass(frozen=True)
class GuestResult:
    status: int | None  #: the command's exit status; None when the guest gave no result
    output: str  #: what the command printed (between the markers)
    console: str  #: the whole serial console
    release: str  #: uname -r in the guest ("" when it did not get that far)
    seconds: float
    timed_out: bool


def parse_console(console: str, nonce: str) -> tuple[int | None, str, str]:
    """(exit status, command output, guest release) from the console text (pure).

    The exit marker may follow output that did not end with a newline (a command killed
    mid-line) on the same console line."""
    lines = console.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    begin = next((i for i, ln in enumerate(lines)
                  if ln.startswith(f"{MARK_BEGIN} {nonce}")), None)
    exit_mark = f"{MARK_EXIT} {nonce} "
    end = next((i for i, ln in enumerate(lines) if exit_mark in ln), None)
    release = lines[begin].split()[2] if begin is not None and len(lines[begin].split()) > 2 \
        else ""
    first = begin + 1 if begin is not None else 0
    if end is None:
        return None, "\n".join(lines[first:] if begin is not None else []), release
    head, _, tail = lines[end].partition(exit_mark)
    # the kernel's own console messages ("[  467.1] reboot: Power down") may follow the
    # status on the same line: only its leading digits count
    digits = re.match(r"-?\d+", tail)
    status: int | None = int(digits.group()) if digits else None
    if status == NO_RESULT and begin is None:
        status = None  # init gave up before running the command
    out = lines[first:end] + ([head] if head else [])
    return status, "\n".join(out), release


def qemu_argv(kernel_dir: Path, initrd: Path, memory: str, smp: int, accel: str,
              layout: Layout | None = None) -> list[str]:
    layout = layout or Layout(ARCHES["x86_64"])
    arch = layout.arch
    return [
        arch.qemu, *arch.qemu_machine(accel, smp), "-m", memory,
        "-kernel", str(kernel_dir / "vmlinuz"), "-initrd", str(initrd),
        "-append", f"console={arch.console} quiet panic=-1 rdinit=/init "
                   "transparent_hugepage=madvise",
        *layout.virtfs(),
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-nodefaults", "-net", "none",
    ]


def prepare(spec: KernelSpec) -> tuple[Path, Layout]:
    """Host tools, the kernel, and for a foreign architecture its root and the C targets:
    everything a boot of ``spec`` needs, fetched or built once."""
    arch = ARCHES[spec.arch]
    ensure_host_tools(arch)
    kernel_dir = fetch_kernel(spec)
    if arch.native:
        return kernel_dir, Layout(arch)
    rootfs = fetch_rootfs(arch)
    build_targets(arch)
    return kernel_dir, Layout(arch, rootfs)


def boot(spec: KernelSpec, argv: Sequence[str], *, cwd: str | None = None,
         env: dict[str, str] | None = None, timeout: float = 2400, memory: str = "4G",
         smp: int = 2, accel: str = "tcg", echo: bool = True,
         out: TextIO | None = None) -> GuestResult:
    """Boot ``spec`` and run ``argv`` in the guest's root (the host's, or the project tree
    in a foreign architecture's); what the command prints is echoed to ``out`` (stdout)."""
    kernel_dir, layout = prepare(spec)
    nonce = secrets.token_hex(8)
    cwd = cwd or os.getcwd()
    layout.check_cwd(cwd)
    if layout.rootfs is not None and not layout.tree.startswith("/tmp/"):
        # the tree's mount point, on the host side of the (read-only) guest root (under
        # /tmp the guest makes it in its tmpfs)
        (layout.rootfs / os.path.relpath(layout.tree, "/")).mkdir(parents=True, exist_ok=True)
    initramfs = build_initramfs(kernel_dir, argv, cwd, guest_env(cwd, env or {}, layout), nonce,
                                layout=layout)
    out = out or sys.stdout
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile(prefix="initramfs-", suffix=".cpio",
                                     dir=CACHE) as initrd:
        initrd.write(initramfs)
        initrd.flush()
        proc = subprocess.Popen(qemu_argv(kernel_dir, Path(initrd.name), memory, smp, accel,
                                          layout),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        lines: queue.Queue[bytes | None] = queue.Queue()

        def reader() -> None:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 1 << 16):
                lines.put(chunk)
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        console: list[str] = []
        running = False
        timed_out = False
        deadline = t0 + timeout
        partial = ""  # the console's unfinished last line
        shown = 0  # how much of it was echoed already (pytest's progress dots)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        marker = "WW-KERNEL-MATRIX-"  # common to both markers
        try:
            while True:
                try:
                    raw = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    timed_out = True
                    break
                if raw is None:
                    break
                text = decoder.decode(raw).replace("\r", "")
                *done, partial = (partial + text).split("\n")
                for line in done:
                    console.append(line)
                    if f"{MARK_EXIT} {nonce} " in line:
                        head = line.partition(f"{MARK_EXIT} {nonce} ")[0]
                        if running and echo and len(head) > shown:
                            out.write(head[shown:] + "\n")
                        running = False
                    elif line.startswith(f"{MARK_BEGIN} {nonce}"):
                        running = True
                    elif running and echo:
                        out.write(line[shown:] + "\n")
                    shown = 0
                if running and echo and len(partial) > shown and not (
                        marker.startswith(partial) or partial.startswith(marker)):
                    out.write(partial[shown:])
                    shown = len(partial)
                if echo:
                    out.flush()
            if partial:
                console.append(partial)
        finally:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=0 if timed_out else 30)
                except subprocess.TimeoutExpired:
                    pass
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    text = "\n".join(console)
    status, output, release = parse_console(text, nonce)
    return GuestResult(status, output, text, release, time.monotonic() - t0, timed_out)


# ---------------------------------------------------------------------------------------------
# CLI

def _report(spec: KernelSpec, res: GuestResult, out: TextIO | None = None) -> int:
    out = out or sys.stderr
    where = f"{spec.name} ({res.release or 'kernel did not report'})"
    if res.status is None:
        why = f"timed out after {res.seconds:.0f} s" if res.timed_out else "no result"
        print(f"kernel_matrix: {where}: {why}; console follows", file=out)
        print(res.console[-20000:], file=out)
        return NO_RESULT
    print(f"kernel_matrix: {where}: exit status {res.status} after {res.seconds:.1f} s",
          file=out)
    return res.status


def compile_tree() -> None:
    """Byte-compile the project's sources and tests on the host before a guest runs them.
    The guests run with PYTHONDONTWRITEBYTECODE (their view of the tree is read-only), so
    without .pyc files every Python process there (pytest, each uffd-wp-sync handler, each
    CLI run) compiles the whole package again under TCG. The .pyc files land in the tree's
    ``__pycache__`` directories (git-ignored); a guest whose interpreter has another magic
    number ignores them."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    *[str(ROOT / d) for d in ("src", "tests", "tools") if (ROOT / d).is_dir()]],
                   check=False, stdout=subprocess.DEVNULL)


def pytest_argv(layout: Layout, args: Sequence[str]) -> list[str]:
    """The guest command that runs this project's pytest (the shared root is read-only:
    no cache provider)."""
    return [layout.python, "-m", "pytest", "-p", "no:cacheprovider", *args]


# ---------------------------------------------------------------------------------------------
# Several guests: the CI matrix

@dataclass(frozen=True)
class Job:
    """One guest run of pytest: ``KERNEL[:PYTEST ARGS]`` on the command line."""

    spec: KernelSpec
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name


def parse_job(text: str, arch: str | None = None) -> Job:
    """``debian-6.12-arm64:-m kernel -q`` -> Job (pure but for the kernel lookup)."""
    name, _, args = text.partition(":")
    return Job(find_kernel(name.strip(), arch), tuple(shlex.split(args)))


def kvm_refusal(specs: Sequence[KernelSpec], cpuinfo: str) -> str | None:
    """Why ``--accel kvm`` cannot boot ``specs`` on this host (None when it can), from the
    text of /proc/cpuinfo (pure). KVM runs only the host's architecture, and only with the
    CPU's virtualization extensions: a VM without nested virtualization may still have a
    /dev/kvm, and a guest kernel booted on it hangs silently right after the boot loader."""
    foreign = sorted({s.name for s in specs if not ARCHES[s.arch].native})
    if foreign:
        return f"KVM runs only {HOST_MACHINE} guests, not {', '.join(foreign)}"
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if HOST_MACHINE == "x86_64" and not flags & {"vmx", "svm"}:
        return "this CPU has no virtualization extensions (no vmx or svm in /proc/cpuinfo)"
    return None


def parallel_guests(wanted: int, memory: str) -> int:
    """How many guests of ``memory`` fit next to each other now: ``wanted`` at most, as many
    as MemAvailable holds with 1 GiB to spare for each (qemu itself, the host's page cache
    of the shared tree); at least one."""
    unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(memory[:-1]) * unit[memory[-1].upper()] if memory[-1].isalpha() else \
        int(memory) << 20  # qemu's default unit is MiB
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) << 10 for line in f
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 1
    return max(1, min(wanted, avail // (size + (1 << 30))))


def summary_line(output: str) -> str:
    """pytest's closing line (``== 3 passed, 1 skipped in 9.1s ==``) of a guest's output."""
    for line in reversed(output.splitlines()):
        text = line.strip().strip("=").strip()
        if " in " in text and any(w in text for w in ("passed", "failed", "error", "skipped",
                                                       "no tests ran", "deselected")):
            return text
    return ""


def run_matrix(jobs: Sequence[Job], *, parallel: int, log_dir: Path, timeout: float,
               memory: str, smp: int, accel: str) -> int:
    """Run ``jobs`` (``parallel`` guests at a time), each guest's output into
    ``log_dir/<kernel>.log``; print one line per job as it ends and the log of each failed
    one. The exit status is 0 when every guest's pytest exited 0."""
    for spec in dict.fromkeys(j.spec for j in jobs):
        prepare(spec)  # downloads and builds once, before the guests start
    compile_tree()
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[int, float, str]] = {}
    lock = threading.Lock()
    todo: queue.Queue[Job] = queue.Queue()
    for j in jobs:
        todo.put(j)
    t0 = time.monotonic()

    def worker() -> None:
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            _, layout = prepare(job.spec)
            log = log_dir / f"{job.name}.log"
            with open(log, "w") as out:
                out.write(f"$ {job.name}: pytest {shlex.join(job.args)}\n")
                res = boot(job.spec, pytest_argv(layout, job.args), cwd=str(ROOT),
                           timeout=timeout, memory=memory, smp=smp, accel=accel, out=out)
                status = _report(job.spec, res, out)
            with lock:
                results[job.name] = (status, res.seconds, summary_line(res.output))
                print(f"kernel_matrix: {job.name}: exit {status} after "
                      f"{res.seconds / 60:.1f} min ({summary_line(res.output) or 'no summary'})"
                      f"; log {log}", flush=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [j for j in jobs if results[j.name][0] != 0]
    for j in failed:
        text = (log_dir / f"{j.name}.log").read_text(errors="replace")
        print(f"\n---- {j.name} failed; the end of {log_dir / (j.name + '.log')}:\n"
              f"{text[-30000:]}", flush=True)
    print(f"kernel_matrix: {len(jobs)} guests, {parallel} at a time, "
          f"{(time.monotonic() - t0) / 60:.1f} min:", flush=True)
    for j in jobs:
        status, seconds, line = results[j.name]
        print(f"  {j.name:24} {'ok' if status == 0 else f'FAILED ({status})':12} "
              f"{seconds / 60:5.1f} min  {line}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# CLI

def _check_accel(accel: str, specs: Sequence[KernelSpec]) -> None:
    if accel == "kvm" and (why := kvm_refusal(specs, Path("/proc/cpuinfo").read_text())):
        sys.exit(f"kernel_matrix: --accel kvm: {why}; use --accel tcg (the default)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kernel_matrix", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def machine(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=float, default=2400, help="seconds (default 2400)")
        p.add_argument("--memory", default="4G", help="guest memory (default 4G)")
        p.add_argument("--smp", type=int, default=2, help="guest CPUs (default 2)")
        p.add_argument("--accel", default="tcg", choices=("tcg", "kvm"),
                       help="tcg (default, works everywhere) or kvm")

    def which(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kernel", help="kernel to boot (see `list`; default debian-6.1, "
                                        "debian-6.12-arm64 with --arch arm64)")
        p.add_argument("--arch", choices=[*ARCHES, *ARCH_ALIASES],
                       help="guest architecture (default: the kernel's)")

    for name, text in (("run", "run a command in the guest: run [opts] -- CMD..."),
                       ("pytest", "run this project's pytest in the guest: pytest [opts] "
                                  "[-- ARGS]; arguments the tool does not know go to pytest")):
        p = sub.add_parser(name, allow_abbrev=False, help=text)
        which(p)
        machine(p)
        p.add_argument("--env", action="append", default=[], metavar="K=V",
                       help="extra environment variable for the guest command")
    p = sub.add_parser("matrix", help="pytest in several guests: matrix [opts] "
                                      "'KERNEL[:PYTEST ARGS]'...")
    machine(p)
    p.add_argument("--jobs", type=int, default=2,
                   help="guests at a time (default 2; fewer when memory is short)")
    p.add_argument("--log-dir", type=Path, default=ROOT / ".cache" / "logs")
    p.add_argument("job", nargs="+")
    p = sub.add_parser("fetch", help="download and cache the kernel (and a foreign "
                                     "architecture's root) only")
    which(p)
    p.add_argument("--refresh", action="store_true", help="download again")
    sub.add_parser("list", help="known kernels")

    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1:]
    args, extra = ap.parse_known_args(argv)
    if extra and args.cmd != "pytest":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.cmd == "list":
        for spec in KERNELS.values():
            meta = CACHE / spec.name / "kernel.json"
            cached = json.loads(meta.read_text())["package"] if meta.exists() else "not cached"
            print(f"{spec.name}: {spec.description} [{cached}]")
        return 0
    if args.cmd == "matrix":
        jobs = [parse_job(j) for j in [*args.job, *rest]]
        _check_accel(args.accel, [j.spec for j in jobs])
        if len({j.name for j in jobs}) != len(jobs):
            ap.error("each kernel at most once")
        parallel = parallel_guests(args.jobs, args.memory)
        return run_matrix(jobs, parallel=parallel, log_dir=args.log_dir, timeout=args.timeout,
                          memory=args.memory, smp=args.smp, accel=args.accel)
    spec = find_kernel(args.kernel, args.arch)
    if args.cmd == "fetch":
        if args.refresh:
            fetch_kernel(spec, refresh=True)
            if not ARCHES[spec.arch].native:
                fetch_rootfs(ARCHES[spec.arch], refresh=True)
        kernel_dir, _ = prepare(spec)
        print(json.dumps(json.loads((kernel_dir / "kernel.json").read_text()), indent=2))
        return 0
    _check_accel(args.accel, [spec])
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.cmd == "run":
        command = rest
        if not command:
            ap.error("run needs a command after --")
    else:
        command = pytest_argv(prepare(spec)[1], [*extra, *rest])
        compile_tree()
        os.chdir(ROOT)
    res = boot(spec, command, env=env, timeout=args.timeout, memory=args.memory,
               smp=args.smp, accel=args.accel)
    return _report(spec, res)


if __name__ == "__main__":
    sys.exit(main())
