"""The guest's initramfs: busybox-static, scripts/guest/init.sh as /init,
the kernel's qemu_fw_cfg.ko (without it QEMU's dumps carry no VMCOREINFO),
and the guest's C helpers built static on the host.  Built once per kernel
release and guest sources, into the cache (a plain newc cpio, gzip'd: no
cpio tool needed).

A guest of another architecture (riscv64) gets that architecture's
busybox-static (the Debian package, unpacked into the cache by
guestdebs.py) and helpers built with its cross compiler (Arch.gcc)."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

from . import guestdebs
from .common import GUEST, TestbedError, _atomic_write, _sha, cache_dir
from .kernels import ARCHES, Arch

# Bump when the layout of the initramfs changes in this file.
INITRAMFS_FORMAT = "1"
GUEST_PROGRAMS = ("kpf", "hugehold", "hugetorture")


def build_guest_programs(arch: Arch | None = None) -> dict[str, Path]:
    """Compile the guest's C helpers (static) with the compiler of the
    guest's architecture (Arch.gcc), cached by source + compiler version."""
    arch = arch or ARCHES["x86_64"]
    gcc = shutil.which(arch.gcc)
    if not gcc:
        raise TestbedError(f"{arch.gcc} is needed to build the guest helpers (scripts/guest/*.c)"
                           + (f" for {arch.name} guests (packages gcc-{arch.triplet.replace('_', '-')} "
                              f"libc6-dev-{arch.deb_arch}-cross: scripts/deps.sh)"
                              if arch.gcc != "gcc" else ""))
    ver = subprocess.run([gcc, "--version"], stdout=subprocess.PIPE, text=True).stdout
    srcs = [(GUEST / f"{n}.c").read_bytes() for n in GUEST_PROGRAMS]
    # (The x86_64 key is what it was before other architectures.)
    d = cache_dir() / "guest-bin" / _sha(ver.encode(), *srcs, *(
        [arch.name.encode()] if arch.name != "x86_64" else []))[:16]
    out = {}
    for n in GUEST_PROGRAMS:
        exe = d / n
        if not exe.is_file():
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{n}.{os.getpid()}"
            p = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(tmp), str(GUEST / f"{n}.c")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0:
                raise TestbedError(f"{arch.gcc} -static {n}.c failed:\n{p.stdout}\n"
                                   f"(static glibc: package libc6-dev"
                                   f"{'' if arch.gcc == 'gcc' else '-' + arch.deb_arch + '-cross'})")
            os.replace(tmp, exe)
        out[n] = exe
    return out


class _Cpio:
    """A minimal writer of the newc cpio format (what the kernel unpacks)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + nb)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o755) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def _busybox() -> Path:
    for c in ("/bin/busybox", "/usr/bin/busybox"):
        p = Path(c)
        if p.is_file() and b"statically linked" in subprocess.run(
                ["file", "-L", c], stdout=subprocess.PIPE).stdout:
            return p
    b = shutil.which("busybox")
    if b:
        return Path(b)
    raise TestbedError("no busybox (package busybox-static)")


def guest_busybox(arch: Arch) -> Path:
    """busybox-static for a guest of ``arch``: this machine's for x86_64,
    else that architecture's Debian package (the newest in the private
    suites), unpacked into the cache."""
    if arch.name == "x86_64":
        return _busybox()
    root = guestdebs.unpacked(arch.deb_arch, "busybox-static", ["busybox-static"], libs=False)
    return guestdebs.find(root, "usr/bin/busybox", "bin/busybox")


def build_initramfs(kdir: Path, arch: Arch | None = None) -> Path:
    """The guest's initramfs for one kernel, cached by release + guest sources."""
    arch = arch or ARCHES["x86_64"]
    release = (kdir / "release").read_text().strip()
    progs = build_guest_programs(arch)
    bb = guest_busybox(arch).read_bytes()
    init = (GUEST / "init.sh").read_bytes()
    ko = (kdir / "qemu_fw_cfg.ko").read_bytes()
    srcs = [(GUEST / f"{n}.c").read_bytes() for n in GUEST_PROGRAMS]
    key = _sha(INITRAMFS_FORMAT.encode(), release.encode(), init, bb, ko, *srcs)[:16]
    path = cache_dir() / "initramfs" / f"{release}-{key}.cpio.gz"
    if path.is_file():
        return path
    c = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib/modules", "dev",
              "proc", "sys", "tmp", "mnt", "host", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.chardev("dev/ttyS0", 4, 64)
    c.file("init", init)
    c.file("bin/busybox", bb)
    c.file("lib/modules/qemu_fw_cfg.ko", ko, 0o644)
    for n, exe in progs.items():
        c.file(f"bin/{n}", exe.read_bytes())
    _atomic_write(path, gzip.compress(c.finish(), compresslevel=6, mtime=0))
    return path
