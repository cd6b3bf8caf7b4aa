"""The "kdump capture" dump sources: dumps made the way users make them, by a
capture kernel running makedumpfile on /proc/vmcore.

A run with one of these sources boots the scenario's kernel with
``crashkernel=`` and an extra raw virtio-blk disk (a sparse file in the run's
output dir).  Its initramfs is the test bed's own followed by a second cpio
archive with /kdump/arm.sh (scripts/guest/kdump-arm.sh), the boot image, the
capture initramfs and kexec.  Before READY, /init (scripts/guest/init.sh)
sources arm.sh, which loads the same kernel as capture kernel (``kexec -p``)
and leaves a background job waiting on the guest's second serial port.  The
host takes the run's QMP dumps first, if any (so run["kdump"] is QEMU's dump
of the very state the capture kernel will dump), then take() says "go" on
that port: the guest panics (sysrq c), the capture kernel's /init
(scripts/guest/kdump-capture.sh) loads virtio_blk and runs::

    makedumpfile --message-level 22 -F -d 31 [-c|-l|-z|-E] /proc/vmcore > /dev/vda

and powers off.  The host waits for QEMU to exit and reassembles the
flattened stream with ``makedumpfile -R``.

kexec-tools and makedumpfile are dynamically linked: each goes into the
initramfs with its shared libraries and loader (/opt/NAME/lib) and runs
through that loader.  Two makedumpfile builds: "host", this machine's
(bookworm's 1.7.2), and "newest", the newest in the Debian archive (sid's),
run with its own suite's libraries and loader, downloaded through
scripts/debian-apt.sh (archive URIs from this machine's apt sources).

riscv64 guests run riscv64 tools: kexec-tools and makedumpfile of the
newest Debian packages of that architecture with their libraries
(guestdebs.py), so only the "newest" build; none of them runs on the host
(version from the package, the compressions built from its library
dependencies).  The guest's /init works around kexec-tools' riscv memory
ranges (scripts/guest/kdump-arm.sh).

Sources (dumps.DUMPS): ``capture-VARIANT-BUILD``, VARIANT zlib, lzo, zstd or
elf, BUILD host or newest, e.g. ``run_scenario("7.2", "hvo-2m",
dumps=["kdump", "capture-zstd-newest"])``.  A makedumpfile built without the
compression asked for warns and writes an uncompressed dump (exit 0): the
run records which compression the file really has (dump_info()).  What a
capture run records is described in KdumpCapture.take().
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import guestdebs
from .common import GUEST, SCRIPTS, TestbedError, _atomic_write, _sha, cache_dir
from .dumps import DUMPS, DumpContext, DumpResult, DumpSource, dump_info, elf_filtered_ranges
from .initramfs import _Cpio, guest_busybox
from .kernels import ARCHES, Arch
from .qemu import control_args

# Bump when the layout of the kdump initramfs parts changes here.
KDUMP_FORMAT = "2"
#: Variant -> the makedumpfile option that asks for it.
VARIANTS = {"zlib": "-c", "lzo": "-l", "zstd": "-z", "elf": "-E"}
#: makedumpfile builds: "host" is this machine's (bookworm's here),
#: "newest" the newest in the archive (sid's here).
BUILDS = ("host", "newest")
# The capture kernel's command line (the guest adds vmemspect.* options).
CAPTURE_CMDLINE = "console=ttyS0 reset_devices nr_cpus=1 irqpoll init_on_alloc=0 panic=-1"


def crashkernel_for(mem: str, arch: Arch | None = None) -> str:
    """The crashkernel= reservation for a guest of ``mem`` (QEMU -m syntax):
    x86_64: 160M was seen to be enough in a 2 GiB guest, 384M in a 4 GiB
    one; riscv64: 256M (its kernel Image is 36 MB); Arch.crashkernel."""
    small, large = (arch or ARCHES["x86_64"]).crashkernel
    return small if _mem_mib(mem) <= 2048 else large


# ---------------------------------------------------------------- apt

def _apt(*args: str, cwd: Path | None = None) -> str:
    """An apt command with the test bed's private apt configuration
    (scripts/debian-apt.sh, shared with fetch-kernel.sh)."""
    p = subprocess.run([str(SCRIPTS / "debian-apt.sh"), *args], cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise TestbedError(f"debian-apt.sh {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def _apt_candidate(pkg: str) -> tuple[str, str] | None:
    """(version, suite) of the newest ``pkg`` in the private suites."""
    out = _apt("apt-cache", "policy", pkg)
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m[1] == "(none)":
        return None
    table = out[out.find("Version table:"):]
    t = re.search(r"^\s*(?:\*\*\* )?" + re.escape(m[1]) + r" \d+\n\s+\d+ \S+ (\S+?)/", table, re.M)
    return m[1], t[1] if t else "?"


def _apt_lib_depends(pkg: str) -> list[str]:
    """The library packages ``pkg`` depends on (Depends, Pre-Depends; the
    first of alternatives)."""
    out = _apt("apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
               "--no-breaks", "--no-replaces", "--no-enhances", pkg)
    deps = []
    alt = False
    for ln in out.splitlines()[1:]:
        m = re.match(r"\s*(\|)?(Depends|PreDepends):\s*<?([^\s>]+)>?", ln)
        if not m:
            alt = False
            continue
        name = m[3].split(":")[0]
        if not alt and (name.startswith("lib") or name.startswith("zlib")):
            deps.append(name)
        alt = bool(m[1])
    return deps


# ---------------------------------------------------------------- tool bundles

LOADER = "ld-linux-x86-64.so.2"


def _ldd_list(binary: Path, loader: Path | None = None, libdirs: list[Path] | None = None) -> dict[str, Path]:
    """soname -> resolved path of every shared library ``binary`` needs (the
    loader's --list), the loader included."""
    if loader is None:
        argv = ["ldd", str(binary)]
    else:
        argv = [str(loader), "--library-path", ":".join(map(str, libdirs or [])), "--list", str(binary)]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed:\n{p.stdout}")
    libs: dict[str, Path] = {}
    for ln in p.stdout.splitlines():
        ln = ln.strip()
        if "not found" in ln:
            raise TestbedError(f"{binary}: library {ln}")
        m = re.match(r"(\S+) => (\S+) \(", ln)
        if m and m[1].startswith("/"):      # the loader, by its absolute name
            libs[LOADER] = Path(m[2])
        elif m:
            libs[m[1]] = Path(m[2])
        elif re.match(r"/\S*ld-linux\S* \(", ln):
            libs[LOADER] = Path(ln.split()[0])
    if loader is not None:
        libs[LOADER] = loader
    if LOADER not in libs:
        raise TestbedError(f"{binary}: no {LOADER} in {' '.join(argv)}")
    return libs


class Bundle:
    """A dynamically linked program with its libraries and loader, for an
    initramfs: /opt/NAME/bin/PROG, /opt/NAME/lib/*, and /bin/NAME, a script
    that runs PROG through that loader with only those libraries."""

    def __init__(self, name: str, prog: Path, libs: dict[str, Path], version: str,
                 origin: str, features: dict[str, bool] | None = None,
                 loader: str = LOADER) -> None:
        self.name, self.prog, self.libs, self.version, self.origin = name, prog, libs, version, origin
        #: makedumpfile -v: compression -> built in
        self.features = features or {}
        self.loader = loader

    def files(self) -> list[tuple[str, bytes, int]]:
        base = f"opt/{self.name}"
        out = [(f"{base}/bin/{self.prog.name}", self.prog.read_bytes(), 0o755)]
        for soname, path in sorted(self.libs.items()):
            out.append((f"{base}/lib/{soname}", path.resolve().read_bytes(), 0o755))
        wrapper = (f"#!/bin/sh\nexec /{base}/lib/{self.loader} --library-path /{base}/lib "
                   f"/{base}/bin/{self.prog.name} \"$@\"\n").encode()
        out.append((f"bin/{self.name}", wrapper, 0o755))
        return out

    def key(self) -> bytes:
        return f"{self.name} {self.version} {self.origin}".encode() + b"".join(
            hashlib.sha256(d).digest() for _, d, _ in self.files())

    def describe(self) -> dict:
        d = {"name": self.name, "version": self.version, "origin": self.origin,
             "libs": sorted(self.libs)}
        if self.features:
            d["compressions_built"] = self.features
        return d


def _tool_version(argv: list[str], pattern: str) -> tuple[str, dict[str, bool]]:
    """(version, {feature: enabled}) from a --version/-v output."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(pattern, p.stdout)
    if not m:
        raise TestbedError(f"cannot tell the version of {argv}: {p.stdout[-500:]}")
    feats = {f: e == "enabled" for f, e in re.findall(r"^(\w+)\s+(enabled|disabled)\s*$", p.stdout, re.M)}
    return m[1], feats


def _dpkg_version(path: Path) -> str:
    pkg = ""
    # dpkg knows the path the package ships (/sbin/kexec, not /usr/sbin/kexec).
    for cand in dict.fromkeys([str(path), str(path).removeprefix("/usr"), "/usr" + str(path)]):
        p = subprocess.run(["dpkg", "-S", cand], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if p.returncode == 0:
            pkg = p.stdout.split(":")[0].strip()
            break
    if not pkg:
        return "?"
    q = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}", pkg],
                       stdout=subprocess.PIPE, text=True)
    return q.stdout.strip()


def host_bundle(name: str, program: str, version_argv: list[str], pattern: str) -> Bundle:
    exe = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not exe:
        raise TestbedError(f"no {program} on this machine (package "
                           f"{'kexec-tools' if program == 'kexec' else program})")
    exe = Path(exe).resolve()
    version, feats = _tool_version([str(exe), *version_argv], pattern)
    return Bundle(name, exe, _ldd_list(exe), version, "this machine: " + _dpkg_version(exe), feats)


def guest_arch_bundle(arch: Arch, name: str, package: str, program: str) -> Bundle:
    """``program`` of the newest Debian package ``package`` of ``arch`` (not
    this machine's), with every shared library of it and its library
    dependencies, unpacked into the cache (guestdebs.py).  Not run here:
    the version is the package's; for makedumpfile the compressions built
    in are those whose library it depends on (zlib always)."""
    root = guestdebs.unpacked(arch.deb_arch, name, [package])
    exe = guestdebs.find(root, f"usr/sbin/{program}", f"usr/bin/{program}", f"sbin/{program}",
                         f"bin/{program}")
    libs = guestdebs.shared_libs(root, arch.triplet)
    if arch.loader not in libs:
        raise TestbedError(f"no {arch.loader} under {root}")
    # "package version suite" lines
    pkgs = {ln.split()[0]: ln.split()[1:] for ln in (root / ".done").read_text().splitlines()}
    version, suite = pkgs[package]
    feats = {}
    if program == "makedumpfile":
        feats = {"zlib": True, "lzo": any(p.startswith("liblzo2") for p in pkgs),
                 "snappy": any(p.startswith("libsnappy") for p in pkgs),
                 "zstd": any(p.startswith("libzstd") for p in pkgs)}
        version = re.sub(r"^\d+:", "", version).split("-")[0]
    return Bundle(name, exe, libs, version, f"{suite}: {package} {pkgs[package][0]} ({arch.deb_arch})",
                  feats, loader=arch.loader)


def kexec_bundle(arch: Arch | None = None) -> Bundle:
    arch = arch or ARCHES["x86_64"]
    if arch.name != "x86_64":
        return guest_arch_bundle(arch, "kexec", "kexec-tools", "kexec")
    return host_bundle("kexec", "kexec", ["--version"], r"kexec-tools\s+(\S+)")


def makedumpfile_host() -> Bundle:
    return host_bundle("mdf-host", "makedumpfile", ["-v"], r"version\s+(\S+)")


def makedumpfile_newest() -> Bundle:
    """The newest makedumpfile of the archive (sid's) with its own suite's
    libraries and loader, extracted (never installed) into the cache, keyed
    by its package version."""
    cand = _apt_candidate("makedumpfile")
    if not cand:
        raise TestbedError("no makedumpfile in the private apt suites (scripts/debian-apt.sh)")
    ver, suite = cand
    root = cache_dir() / "kdump-tools" / f"makedumpfile_{ver.replace(':', '%3a')}"
    if not (root / ".done").is_file():
        # The package and its library dependencies, closed over.
        want, seen = ["makedumpfile"], []
        while want:
            p = want.pop()
            if p not in seen:
                seen.append(p)
                want += [d for d in _apt_lib_depends(p) if d not in seen]
        debs = cache_dir() / "kdump-tools" / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        dl = Path(tempfile.mkdtemp(dir=debs, prefix=".dl."))
        tmp = Path(tempfile.mkdtemp(dir=debs.parent, prefix=".root."))
        try:
            _apt("apt-get", "download", *seen, cwd=dl)
            names = []
            for f in sorted(dl.glob("*.deb")):
                os.replace(f, debs / f.name)
                names.append(f.name)
                subprocess.run(["dpkg-deb", "-x", str(debs / f.name), str(tmp)], check=True)
            (tmp / "packages").write_text("".join(n + "\n" for n in names))
            (tmp / ".done").write_text(f"{ver} {suite}\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(dl, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)
    exe = next((root / d / "makedumpfile" for d in ("usr/sbin", "usr/bin", "sbin", "bin")
                if (root / d / "makedumpfile").is_file()), None)
    if exe is None:
        raise TestbedError(f"no makedumpfile under {root}")
    libdirs = [root / d for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu") if (root / d).is_dir()]
    loader = next((d / LOADER for d in libdirs if (d / LOADER).exists()), None)
    if loader is None:
        raise TestbedError(f"no {LOADER} under {root}")
    libs = _ldd_list(exe, loader, libdirs)
    version, feats = _tool_version([str(loader), "--library-path", ":".join(map(str, libdirs)),
                                    str(exe), "-v"], r"version\s+(\S+)")
    return Bundle("mdf-newest", exe, libs, version, f"{suite}: makedumpfile {ver}", feats)


def makedumpfile_bundle(build: str, arch: Arch | None = None) -> Bundle:
    arch = arch or ARCHES["x86_64"]
    if build not in BUILDS:
        raise ValueError(f"unknown makedumpfile build {build!r}; have {', '.join(BUILDS)}")
    if arch.name != "x86_64":
        if build == "host":
            raise TestbedError(f"no \"host\" makedumpfile for {arch.name} guests (this machine's "
                               "is not of their architecture): use the \"newest\" build")
        return guest_arch_bundle(arch, "mdf-newest", "makedumpfile", "makedumpfile")
    if build == "host":
        return makedumpfile_host()
    return makedumpfile_newest()


def capture_builds(arch: Arch) -> list[Bundle]:
    """The makedumpfile builds a capture initramfs holds: both on x86_64,
    the newest elsewhere."""
    if arch.name == "x86_64":
        return [makedumpfile_host(), makedumpfile_newest()]
    return [makedumpfile_bundle("newest", arch)]


# ---------------------------------------------------------------- capture kernel modules

#: What the capture kernel needs as modules: the virtio PCI transport (built
#: in on 6.12 and 7.2, a module on 6.1) and the virtio-blk driver.
CAPTURE_MODULES = ("virtio_pci", "virtio_blk")


def _module_deb(release: str) -> Path:
    """The .deb with the kernel's modules: linux-modules-KVER (7.x) or the
    image package (6.x), as fetch-kernel.sh left it in the cache."""
    debs = cache_dir() / "debs"
    for pat in (f"linux-modules-{release}_*.deb", f"linux-image-{release}-unsigned_*.deb",
                f"linux-image-{release}_*.deb"):
        found = sorted(debs.glob(pat))
        if found:
            return found[-1]
    raise TestbedError(f"no modules package of {release} in {debs} (linux-modules-{release} "
                       f"or linux-image-{release}-unsigned): run scripts/fetch-kernel.sh for it")


def _unpack_ko(data: bytes) -> bytes:
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return subprocess.run(["zstd", "-qdc"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return data


def _ko_name(path: str) -> str:
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", path.rsplit("/", 1)[-1]).replace("-", "_")


def capture_modules(kdir: Path) -> list[tuple[str, bytes]]:
    """(name, decompressed .ko) of CAPTURE_MODULES and their dependencies,
    in load order; modules built into the kernel are left out.  Cached in
    the kernel's directory (kdump-modules/)."""
    release = (kdir / "release").read_text().strip()
    d = kdir / "kdump-modules"
    order = d / "order"
    if not order.is_file():
        deb = _module_deb(release)
        listing = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -t", shell=True,
                                 stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        by_name = {_ko_name(p): p for p in listing if re.search(r"\.ko(\.xz|\.zst|\.gz)?$", p)}
        tmp = Path(tempfile.mkdtemp(dir=kdir, prefix=".kdump-modules."))
        try:
            loaded: list[str] = []
            data: dict[str, bytes] = {}

            def add(name: str, chain: tuple[str, ...] = ()) -> None:
                if name in loaded or name in chain:
                    return
                if name not in by_name:
                    if name in CAPTURE_MODULES:
                        return          # built in
                    raise TestbedError(f"{release}: module {name} (needed by {chain[-1]}) not in {deb.name}")
                member = by_name[name]
                raw = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO '{member}'", shell=True,
                                     stdout=subprocess.PIPE, check=True).stdout
                ko = _unpack_ko(raw)
                m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
                for dep in (m[1].decode().split(",") if m and m[1] else []):
                    add(dep.replace("-", "_"), chain + (name,))
                data[name] = ko
                loaded.append(name)

            for n in CAPTURE_MODULES:
                add(n)
            for n in loaded:
                (tmp / f"{n}.ko").write_bytes(data[n])
            (tmp / "order").write_text("".join(n + "\n" for n in loaded))
            if d.exists():
                shutil.rmtree(d)
            os.replace(tmp, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    names = order.read_text().split()
    return [(n, (d / f"{n}.ko").read_bytes()) for n in names]


# ---------------------------------------------------------------- initramfs parts

def _add_files(c: "_Cpio", files: list[tuple[str, bytes, int]], dirs: set[str]) -> None:
    for name, data, perm in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dd = "/".join(parts[:i])
            if dd not in dirs:
                c.dir(dd)
                dirs.add(dd)
        c.file(name, data, perm)


def build_capture_initramfs(kdir: Path, builds: list[Bundle], arch: Arch | None = None) -> Path:
    """The capture kernel's initramfs: busybox, scripts/guest/kdump-capture.sh
    as /init, the virtio modules, and each makedumpfile build (/bin/NAME).
    Cached by its contents."""
    release = (kdir / "release").read_text().strip()
    bb = guest_busybox(arch or ARCHES["x86_64"]).read_bytes()
    init = (GUEST / "kdump-capture.sh").read_bytes()
    mods = capture_modules(kdir)
    key = _sha(KDUMP_FORMAT.encode(), release.encode(), bb, init,
               *(n.encode() + ko for n, ko in mods), *(b.key() for b in builds))[:16]
    path = cache_dir() / "initramfs" / f"{release}-capture-{key}.cpio.gz"
    if path.is_file():
        return path
    c = _Cpio()
    dirs: set[str] = set()
    for dd in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "lib", "lib/modules", "dev",
               "proc", "sys", "tmp"):
        c.dir(dd)
        dirs.add(dd)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.chardev("dev/ttyS0", 4, 64)
    files = [("init", init, 0o755), ("bin/busybox", bb, 0o755),
             ("lib/modules/order", "".join(n + "\n" for n, _ in mods).encode(), 0o644)]
    files += [(f"lib/modules/{n}.ko", ko, 0o644) for n, ko in mods]
    for b in builds:
        files += b.files()
    _add_files(c, files, dirs)
    _atomic_write(path, gzip.compress(c.finish(), compresslevel=6, mtime=0))
    return path


def build_first_initramfs(kdir: Path, base: Path, capture: Path, kexec: Bundle) -> Path:
    """The first kernel's initramfs for a capture run: the test bed's own
    (``base``) followed by an uncompressed cpio archive (the kernel unpacks
    concatenated archives) with /kdump/vmlinuz, /kdump/capture.img,
    /kdump/arm.sh (scripts/guest/kdump-arm.sh) and kexec."""
    release = (kdir / "release").read_text().strip()
    arm = (GUEST / "kdump-arm.sh").read_bytes()
    vmlinuz = (kdir / "vmlinuz").read_bytes()
    cap = capture.read_bytes()
    key = _sha(KDUMP_FORMAT.encode(), base.read_bytes(), arm, vmlinuz, cap, kexec.key())[:16]
    path = cache_dir() / "initramfs" / f"{release}-kdump-{key}.img"
    if path.is_file():
        return path
    c = _Cpio()
    _add_files(c, [("kdump/arm.sh", arm, 0o644), ("kdump/vmlinuz", vmlinuz, 0o644),
                   ("kdump/capture.img", cap, 0o644), *kexec.files()], {"bin"})
    data = base.read_bytes()
    _atomic_write(path, data + b"\0" * (-len(data) % 4) + c.finish())
    return path


def reassemble(disk: Path, out: Path) -> float:
    """makedumpfile -R: the flattened stream on ``disk`` into ``out``."""
    mdf = shutil.which("makedumpfile")
    if not mdf:
        raise TestbedError("no makedumpfile on this machine to reassemble the dump (makedumpfile -R)")
    with open(disk, "rb") as f:
        if f.read(12) != b"makedumpfile":
            raise TestbedError(f"{disk}: no flattened dump on the capture disk")
    if out.exists():
        out.unlink()      # makedumpfile -R will not overwrite
    t0 = time.monotonic()
    with open(disk, "rb") as src:
        p = subprocess.run([mdf, "-R", str(out)], stdin=src, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise TestbedError(f"makedumpfile -R failed: {p.stdout[-2000:]}")
    os.chmod(out, 0o644)
    return time.monotonic() - t0


# ---------------------------------------------------------------- the dump sources

def _console_fields(line: str) -> dict[str, str]:
    return dict(x.split("=", 1) for x in line.split() if "=" in x)


def _mem_mib(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([MG]?)", mem.strip().upper())
    if not m:
        raise ValueError(f"guest memory {mem!r}: want N, NM or NG")
    return int(m[1]) * (1024 if m[2] in ("G", "") else 1)


class KdumpCapture(DumpSource):
    """A "kdump capture" dump source: ``variant`` (VARIANTS) written by
    makedumpfile ``build`` (BUILDS) in a capture kernel (see the module doc)."""

    ends_guest = True

    def __init__(self, variant: str, build: str, *, dump_level: int = 31,
                 capture_timeout: float = 600.0) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; have {', '.join(VARIANTS)}")
        if build not in BUILDS:
            raise ValueError(f"unknown makedumpfile build {build!r}; have {', '.join(BUILDS)}")
        self.variant, self.build = variant, build
        self.dump_level, self.capture_timeout = dump_level, capture_timeout
        self.name = f"capture-{variant}-{build}"
        self.desc = (f"kdump capture: makedumpfile {VARIANTS[variant]} ({variant}) in a capture "
                     f"kernel, {'this machine' if build == 'host' else 'the newest in the archive'}'s build")
        self.file = f"vmcore.{self.name}" + (".elf" if variant == "elf" else ".kdump")

    def paths(self, out_dir: Path) -> list[Path]:
        return [out_dir / self.file, out_dir / "capture-disk.img"]

    # -- before the boot
    def initramfs(self, ctx: DumpContext, initrd: Path) -> Path:
        t0 = time.monotonic()
        arch = ctx.arch or ARCHES["x86_64"]
        mdf = makedumpfile_bundle(self.build, arch)
        kexec = kexec_bundle(arch)
        capture = build_capture_initramfs(ctx.kdir, capture_builds(arch), arch)
        first = build_first_initramfs(ctx.kdir, initrd, capture, kexec)
        level = self.dump_level
        disk = ctx.out_dir / "capture-disk.img"
        # Sparse: at most the guest's RAM plus headers is ever written.
        with open(disk, "wb") as f:
            f.truncate((_mem_mib(ctx.mem) + 256) << 20)
        crashkernel = crashkernel_for(ctx.mem, arch)
        append = " ".join([CAPTURE_CMDLINE, f"vmemspect.mdf={mdf.name}",
                           f"vmemspect.opt={VARIANTS[self.variant]}", f"vmemspect.level={level}"])
        (ctx.tmp / "kdump.conf").write_text(f"KDUMP_APPEND='{append}'\n")
        ctx.state[self.name] = {
            "disk": disk,
            "record": {
                "source": "kdump capture", "variant": self.variant, "option": VARIANTS[self.variant],
                "requested_format": "elf" if self.variant == "elf" else "kdump-compressed",
                "requested_compression": "none" if self.variant == "elf" else self.variant,
                "makedumpfile": {"build": self.build, **mdf.describe()},
                "kexec": kexec.describe(), "crashkernel": crashkernel,
                "capture_cmdline": append, "dump_level": level,
                "capture_initramfs": str(capture), "first_initramfs": str(first),
                "prepare_s": round(time.monotonic() - t0, 2),
            }}
        return first

    def cmdline(self, ctx: DumpContext) -> str:
        return f"crashkernel={crashkernel_for(ctx.mem, ctx.arch)}"

    def qemu_args(self, ctx: DumpContext) -> list[str]:
        disk = ctx.state[self.name]["disk"]
        return ["-fw_cfg", f"name=opt/vmemspect/kdump,file={ctx.tmp}/kdump.conf",
                "-drive", f"file={disk},format=raw,if=none,id=kdumpdisk,cache=unsafe",
                "-device", "virtio-blk-pci,drive=kdumpdisk",
                # the guest's control port (ttyS1 or hvc0, Arch.control):
                # the host says "go" there (take())
                "-chardev", f"socket,id=ser1,path={ctx.tmp}/go.sock,server=on,wait=off",
                *control_args(ctx.arch, "ser1")]

    # -- once the guest is READY (and the QMP dumps, if any, are taken)
    def take(self, ctx: DumpContext) -> DumpResult:
        """Let the armed guest panic, follow it through the capture kernel
        until QEMU exits, reassemble the dump.  Records (run["dump_info"][name]):

          source, variant, option, requested_format, requested_compression
          makedumpfile   build, name, version, origin (package), libs,
                         compressions_built (its -v)
          kexec          the same for kexec-tools
          crashkernel, capture_cmdline, dump_level, capture_initramfs,
          first_initramfs, prepare_s (building them)
          armed          crash_size (bytes), load_s (guest uptime around kexec -p)
          vmcore         size (of /proc/vmcore), disk (bytes)
          makedumpfile_rc, makedumpfile_messages (its stderr),
          makedumpfile_report  its page counts by name ("Free pages", ...)
          dump, size, format, actual_compression, compression_fallback,
          dump_info      (dumps.dump_info(): header and page descriptors)
          elf_filtered   ELF: {"ranges", "pages"} between p_filesz and p_memsz
          disk_bytes_written (the flattened stream, blocks in use)
          seconds        capture (go to QEMU's exit), panic_to_capture_boot,
                         makedumpfile (in the guest), power_off, reassemble
        """
        st = ctx.state[self.name]
        rec, disk = st["record"], st["disk"]
        fail = ctx.fail
        con = ctx.console
        for ln in con.lines:
            if ln.startswith("KDUMP ARMED"):
                rec["armed"] = _console_fields(ln)
        if "armed" not in rec:
            raise fail("kdump capture: the guest did not arm (no KDUMP ARMED before READY)")
        t_go = time.monotonic()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(ctx.tmp / "go.sock"))
            s.sendall(b"go\n")
        except OSError as e:
            raise fail(f"kdump capture: cannot tell the guest to go on: {e}")
        finally:
            s.close()
        deadline = t_go + self.capture_timeout
        t: dict[str, float] = {}
        done = None
        messages: list[str] = []
        while True:
            for ln in con.poll():
                if ln.startswith("FAIL") or ln.startswith("CAPTURE FAIL"):
                    raise fail(f"kdump capture failed: {ln}")
                if ln.startswith("! "):
                    messages.append(ln[2:].rstrip())
                elif ln.startswith("KDUMP GO"):
                    t["go_seen"] = time.monotonic()
                elif ln == "KDUMP PANIC":
                    t["panic"] = time.monotonic()
                elif ln.startswith("CAPTURE BOOTED"):
                    t["capture_booted"] = time.monotonic()
                elif ln.startswith("CAPTURE VMCORE"):
                    rec["vmcore"] = {k: int(v) for k, v in _console_fields(ln).items()}
                elif ln.startswith("CAPTURE DONE"):
                    done = _console_fields(ln)
                    t["capture_done"] = time.monotonic()
            if not ctx.qemu.alive():
                if done is None:
                    for ln in con.poll():
                        if ln.startswith("CAPTURE DONE"):
                            done = _console_fields(ln)
                break
            if time.monotonic() > deadline:
                raise fail(f"kdump capture: QEMU still running {self.capture_timeout:.0f} s after go")
            time.sleep(0.1)
        t_exit = time.monotonic()
        rec["makedumpfile_messages"] = messages
        # Its page counts ("Free pages : 0x..."), by name.
        rec["makedumpfile_report"] = {m[1].strip(): int(m[2], 16) for m in (
            re.match(r"\s*([A-Za-z][A-Za-z ]*?)\s*:\s*(0x[0-9a-fA-F]+)\s*$", x) for x in messages) if m}
        if done is None:
            raise fail(f"kdump capture: QEMU exited ({ctx.qemu.p.returncode}) before the capture "
                       "kernel finished")
        rec["makedumpfile_rc"] = int(done["rc"])
        if rec["makedumpfile_rc"] != 0:
            raise fail(f"kdump capture: makedumpfile exited {done['rc']}: {' | '.join(messages[-10:])}")
        rec["disk_bytes_written"] = os.stat(disk).st_blocks * 512
        out = ctx.out_dir / self.file
        reassemble_s = reassemble(disk, out)
        disk.unlink()
        info = dump_info(out)
        rec.update(dump=str(out), size=out.stat().st_size, format=info["format"],
                   actual_compression=info["compression"], dump_info=info,
                   compression_fallback=rec["requested_compression"] != info["compression"])
        if info["format"] != rec["requested_format"]:
            raise fail(f"kdump capture: asked makedumpfile for {rec['requested_format']}, "
                       f"got {info['format']} ({out})")
        if info["format"] == "elf":
            gaps = elf_filtered_ranges(out)
            rec["elf_filtered"] = {"ranges": len(gaps), "pages": sum((b - a) // 4096 for a, b in gaps)}
        rec["seconds"] = {
            "capture": round(t_exit - t_go, 2),
            # (from "KDUMP GO" when the kernel's panic output garbled "KDUMP PANIC")
            "panic_to_capture_boot": round(t["capture_booted"] - t.get("panic", t.get("go_seen", t_go)), 2)
            if "capture_booted" in t else None,
            "makedumpfile": round(float(done["end"]) - float(done["start"]), 2),
            "power_off": round(t_exit - t["capture_done"], 2) if "capture_done" in t else None,
            "reassemble": round(reassemble_s, 2),
        }
        return DumpResult(out, info["format"], {"capture_s": rec["seconds"]["capture"],
                                                "capture_reassemble_s": rec["seconds"]["reassemble"]},
                          info=rec)


#: The sources, by name: capture-VARIANT-BUILD (also in dumps.DUMPS).
CAPTURES: dict[str, KdumpCapture] = {
    c.name: c for c in (KdumpCapture(v, b) for b in BUILDS for v in VARIANTS)}
DUMPS.update(CAPTURES)


def capture_summary(run: dict) -> list[str]:
    """Lines about a run's capture sources (testbed.summary adds them)."""
    lines = []
    for name, c in (run.get("dump_info") or {}).items():
        if c.get("source") != "kdump capture":
            continue
        s = c["seconds"]
        lines += [f"  {name}: {c['dump']}: {c['format']}, {c['size'] / 1e6:.1f} MB, "
                  f"makedumpfile {c['makedumpfile']['version']} ({c['makedumpfile']['build']}), "
                  f"compression asked {c['requested_compression']}, got {c['actual_compression']} "
                  f"{c['dump_info'].get('pages', '')}",
                  f"    capture {s['capture']} s (panic to capture kernel {s['panic_to_capture_boot']} s, "
                  f"makedumpfile {s['makedumpfile']} s), reassemble {s['reassemble']} s"]
        lines += [f"    makedumpfile: {m}" for m in c["makedumpfile_messages"]
                  if "disabled" in m or "not supported" in m or "warning" in m.lower()]
    return lines
