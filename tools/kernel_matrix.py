#!/usr/bin/env python3
"""Run a host command (the project's tests) on another Linux kernel, booted under qemu.

The guest kernel is a distribution kernel package (Debian bookworm's Linux 6.1 for now). It
boots with a tiny busybox initramfs that loads the virtio and 9p modules, mounts the host's
root filesystem read-only over 9p (``-virtfs ... readonly=on,multidevs=remap``), mounts
proc, sys, devtmpfs and a tmpfs scratch on /tmp (on /mnt when the tree is under /tmp), chroots
into the host root and runs the command there with the host's own Python. The command's exit
status comes back on the serial console (qemu itself exits 0 whatever the guest does), between
markers carrying a per-run nonce; a missing marker or a timeout is a failure.

    python tools/kernel_matrix.py fetch                    # download + cache the kernel
    python tools/kernel_matrix.py run -- uname -r          # any command, exit status kept
    python tools/kernel_matrix.py pytest tests/backends    # the project's pytest in the guest

Downloads are cached in ``.cache/kernels/`` (git-ignored). Missing host tools
(qemu-system-x86_64, a static busybox) are installed with apt when running as root.
See docs/kernel-matrix.md.
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "kernels"

#: exit status reported when the guest produced no result (timeout, panic, boot failure)
NO_RESULT = 125

MARK_BEGIN = "WW-KERNEL-MATRIX-BEGIN"
MARK_EXIT = "WW-KERNEL-MATRIX-EXIT"


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
}

#: where kernel packages are fetched from, with a private apt state (the host's sources
#: and lists are neither used nor changed)
MIRROR = "http://deb.debian.org/debian"


# ---------------------------------------------------------------------------------------------
# Host tools

HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static"}


def _busybox_static() -> str | None:
    path = shutil.which("busybox")
    if path is None:
        return None
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    # a static ELF has no PT_INTERP segment: look for the dynamic loader path instead
    return None if b"ld-linux" in head else path


def ensure_host_tools() -> None:
    """Install qemu-system-x86 and busybox-static with apt when they are missing."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append(HOST_TOOLS["qemu-system-x86_64"])
    if _busybox_static() is None:
        missing.append(HOST_TOOLS["busybox"])
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"kernel_matrix: missing host packages {' '.join(missing)}: install them "
                 f"(apt-get install --no-install-recommends {' '.join(missing)})")
    print(f"kernel_matrix: installing {' '.join(missing)}", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


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


class Apt:
    """apt-get / apt-cache on one Debian suite, with sources, lists and package cache kept
    in ``.cache/kernels/apt/<suite>`` (the archive keys are the host's)."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.root = CACHE / "apt" / suite
        self.options = [
            "-o", f"Dir::Etc::SourceList={self.root / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
        ]
        if os.geteuid() == 0:  # apt drops privileges to _apt when it can
            self.options += ["-o", "APT::Sandbox::User=root"]

    def update(self) -> None:
        for d in ("lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text(f"deb {MIRROR} {self.suite} main\n")
        subprocess.run(["apt-get", *self.options, "update", "-qq"], check=True)

    def show(self, package: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-cache", *self.options, "show", "--no-all-versions",
                               package], capture_output=True, text=True)

    def download(self, package: str, cwd: Path) -> None:
        subprocess.run(["apt-get", *self.options, "download", "-q", package], cwd=cwd,
                       check=True, stdout=subprocess.DEVNULL)


def resolve_image_package(apt: Apt, meta: str) -> str:
    """The real ``linux-image-<abi>-amd64`` package the meta package depends on now (old ABI
    packages disappear from the mirror, so the name is never pinned)."""
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
    apt = Apt(spec.suite)
    package = resolve_image_package(apt, spec.meta_package)
    print(f"kernel_matrix: fetching {package} ({spec.suite})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # apt-get download drops privileges to _apt when it can
        apt.download(package, work)
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
        meta = {"spec": spec.name, "package": package, "version": version, "release": release,
                "modules": order, "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
    shutil.rmtree(apt.root)  # the suite's package lists are only needed to resolve and fetch
    return dest


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
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/root \
    || fail "mounting the host root over 9p failed"
R=/mnt/root
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev \
    || fail "mounting proc/sys/dev in the host root failed"
mount -t tmpfs -o mode=1777,size={scratch} scratch $R{scratch_dir} \
    || fail "mounting the {scratch_dir} scratch failed"
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


def scratch_dir(cwd: str) -> str:
    """Where the guest's writable tmpfs goes: /tmp, unless the tree or the interpreter lives
    under /tmp on the host (a clone in /tmp): a tmpfs there would hide them. Then /mnt, an
    empty directory of the Debian root, is used."""
    paths = (os.path.realpath(cwd), os.path.realpath(sys.executable), sys.executable)
    if any(p == "/tmp" or p.startswith("/tmp/") for p in paths):
        return "/mnt"
    return "/tmp"


def guest_env(cwd: str, extra: dict[str, str]) -> dict[str, str]:
    bindir = os.path.dirname(sys.executable)
    tmp = scratch_dir(cwd)
    env = {
        "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "TERM": "dumb",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "WRITEWATCH_KERNEL_MATRIX": "1", "PWD": cwd,
        # tools that keep caches in the (read-only) tree write them to the scratch instead
        "XDG_CACHE_HOME": f"{tmp}/.cache", "RUFF_CACHE_DIR": f"{tmp}/.cache/ruff",
        "MYPY_CACHE_DIR": f"{tmp}/.cache/mypy", "MPLCONFIGDIR": f"{tmp}/.cache/matplotlib",
        "HYPOTHESIS_STORAGE_DIRECTORY": f"{tmp}/.cache/hypothesis",
    }
    env.update(extra)
    return env


def build_initramfs(kernel_dir: Path, argv: Sequence[str], cwd: str, env: dict[str, str],
                    nonce: str, scratch: str = "1G") -> bytes:
    meta = json.loads((kernel_dir / "kernel.json").read_text())
    busybox = _busybox_static()
    if busybox is None:
        sys.exit("kernel_matrix: a static busybox is needed (apt-get install busybox-static)")
    command = f"cd {shlex.quote(cwd)} && exec {shlex.join(argv)}"
    init = INIT.format(
        modules=" ".join(meta["modules"]), nonce=nonce, no_result=NO_RESULT,
        begin_mark=MARK_BEGIN, exit_mark=MARK_EXIT, scratch=scratch, hostname="wwguest",
        scratch_dir=scratch_dir(cwd),
        env=" ".join(shlex.quote(f"{k}={v}") for k, v in env.items()),
        command=shlex.quote(command))
    entries = [CpioEntry(d, 0o40755) for d in ("bin", "dev", "proc", "sys", "mnt", "lib",
                                                 "lib/modules")]
    entries.append(CpioEntry("dev/console", 0o20600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", 0o100755, Path(busybox).read_bytes()))
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
    try:
        status: int | None = int(tail.split()[0])
    except (IndexError, ValueError):
        status = None
    if status == NO_RESULT and begin is None:
        status = None  # init gave up before running the command
    out = lines[first:end] + ([head] if head else [])
    return status, "\n".join(out), release


def qemu_argv(kernel_dir: Path, initrd: Path, memory: str, smp: int, accel: str) -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", f"q35,accel={accel}", "-cpu",
        "host" if accel == "kvm" else "max", "-smp", str(smp), "-m", memory,
        "-kernel", str(kernel_dir / "vmlinuz"), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdinit=/init transparent_hugepage=madvise",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                   "multidevs=remap",
        "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-nodefaults", "-net", "none",
    ]


def boot(spec: KernelSpec, argv: Sequence[str], *, cwd: str | None = None,
         env: dict[str, str] | None = None, timeout: float = 2400, memory: str = "4G",
         smp: int = 2, accel: str = "tcg", echo: bool = True) -> GuestResult:
    """Boot ``spec`` and run ``argv`` in the host root inside it."""
    ensure_host_tools()
    kernel_dir = fetch_kernel(spec)
    nonce = secrets.token_hex(8)
    cwd = cwd or os.getcwd()
    initramfs = build_initramfs(kernel_dir, argv, cwd, guest_env(cwd, env or {}), nonce)
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile(prefix="initramfs-", suffix=".cpio",
                                     dir=CACHE) as initrd:
        initrd.write(initramfs)
        initrd.flush()
        proc = subprocess.Popen(qemu_argv(kernel_dir, Path(initrd.name), memory, smp, accel),
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
                            sys.stdout.write(head[shown:] + "\n")
                        running = False
                    elif line.startswith(f"{MARK_BEGIN} {nonce}"):
                        running = True
                    elif running and echo:
                        sys.stdout.write(line[shown:] + "\n")
                    shown = 0
                if running and echo and len(partial) > shown and not (
                        marker.startswith(partial) or partial.startswith(marker)):
                    sys.stdout.write(partial[shown:])
                    shown = len(partial)
                if echo:
                    sys.stdout.flush()
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

def _report(spec: KernelSpec, res: GuestResult) -> int:
    where = f"{spec.name} ({res.release or 'kernel did not report'})"
    if res.status is None:
        why = f"timed out after {res.seconds:.0f} s" if res.timed_out else "no result"
        print(f"kernel_matrix: {where}: {why}; console follows", file=sys.stderr)
        print(res.console[-20000:], file=sys.stderr)
        return NO_RESULT
    print(f"kernel_matrix: {where}: exit status {res.status} after {res.seconds:.1f} s",
          file=sys.stderr)
    return res.status


def _spec(name: str) -> KernelSpec:
    try:
        return KERNELS[name]
    except KeyError:
        sys.exit(f"kernel_matrix: unknown kernel {name!r} (known: {', '.join(KERNELS)})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kernel_matrix", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kernel", default="debian-6.1", help="kernel to boot (see `list`)")
        p.add_argument("--timeout", type=float, default=2400, help="seconds (default 2400)")
        p.add_argument("--memory", default="4G", help="guest memory (default 4G)")
        p.add_argument("--smp", type=int, default=2, help="guest CPUs (default 2)")
        p.add_argument("--accel", default="tcg", choices=("tcg", "kvm"),
                       help="tcg (default, works everywhere) or kvm")
        p.add_argument("--env", action="append", default=[], metavar="K=V",
                       help="extra environment variable for the guest command")

    p = sub.add_parser("run", allow_abbrev=False,
                       help="run a command in the guest: run [opts] -- CMD...")
    common(p)
    p = sub.add_parser("pytest", allow_abbrev=False,
                       help="run this project's pytest in the guest: pytest [opts] [-- ARGS]; "
                            "arguments the tool does not know go to pytest")
    common(p)
    p = sub.add_parser("fetch", help="download and cache the kernel only")
    p.add_argument("--kernel", default="debian-6.1")
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
    spec = _spec(args.kernel)
    if args.cmd == "fetch":
        print(json.dumps(json.loads((fetch_kernel(spec, args.refresh) / "kernel.json")
                                    .read_text()), indent=2))
        return 0
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.cmd == "run":
        command = rest
        if not command:
            ap.error("run needs a command after --")
    else:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra, *rest]
        os.chdir(ROOT)
    res = boot(spec, command, env=env, timeout=args.timeout, memory=args.memory,
               smp=args.smp, accel=args.accel)
    return _report(spec, res)


if __name__ == "__main__":
    sys.exit(main())
