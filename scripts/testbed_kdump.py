#!/usr/bin/env python3
"""The test bed's "kdump capture" dump source: dumps made the way users make
them, by a capture kernel running makedumpfile on /proc/vmcore.

Standard library only.  A run boots the scenario's kernel with
``crashkernel=`` under single-threaded TCG and an extra raw virtio-blk disk
(a sparse file).  After the ground truth, the guest's /init
(scripts/guest/init.sh) sources /kdump/arm.sh (scripts/guest/kdump-arm.sh),
which loads the same kernel as capture kernel (``kexec -p``, with the
capture initramfs) and panics through sysrq.  The capture kernel's /init
(scripts/guest/kdump-capture.sh) loads virtio_blk, runs::

    makedumpfile --message-level 22 -F -d 31 [-c|-l|-z|-E] /proc/vmcore > /dev/vda

and powers off.  The host waits for QEMU to exit and reassembles the
flattened output with ``makedumpfile -R``.

kexec-tools and makedumpfile are dynamically linked: each goes into the
initramfs with its shared libraries and loader (``/opt/NAME/lib``) and runs
through that loader.  Two makedumpfile builds: this machine's (bookworm's
1.7.2) and the newest of the Debian archive (sid's), run with sid's own
libraries and loader, downloaded through a private apt source list whose
archive URI is read from this machine's apt sources at run time.

    python3 scripts/testbed_kdump.py run --kernel 7.2 --scenario hvo-2m \\
        --variant zstd --makedumpfile newest
    python3 scripts/testbed_kdump.py header DUMP      # format and compression

Used by the tests through :func:`run_capture`.
"""
from __future__ import annotations

import argparse
import collections
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed  # noqa: E402
from testbed import TestbedError, cache_dir  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent
GUEST = SCRIPTS / "guest"
# Bump when the layout of the kdump initramfs parts changes here.
KDUMP_FORMAT = "1"

#: Variant -> the makedumpfile option that asks for it.
VARIANTS = {"zlib": "-c", "lzo": "-l", "zstd": "-z", "elf": "-E"}
#: makedumpfile builds: "host" is this machine's (bookworm), "newest" the
#: newest in the archive (sid).
BUILDS = ("host", "newest")
NEWEST_SUITE = "sid"
# The capture kernel's command line (the guest adds vmemspect.* options).
CAPTURE_CMDLINE = "console=ttyS0 reset_devices nr_cpus=1 irqpoll init_on_alloc=0 panic=-1"


def crashkernel_for(mem: str) -> str:
    """The crashkernel= reservation for a guest of ``mem`` (QEMU -m syntax):
    160M was seen to be enough in a 2 GiB guest, 384M in a 4 GiB one."""
    return "160M" if _mem_mib(mem) <= 2048 else "384M"


# ---------------------------------------------------------------- apt

def machine_archive_uri(apt_etc: Path = Path("/etc/apt")) -> str:
    """The main Debian archive URI of this machine's apt sources (one-line
    *.list and deb822 *.sources), never written into the repository.
    VMEMSPECT_APT_MIRROR overrides."""
    if os.environ.get("VMEMSPECT_APT_MIRROR"):
        return os.environ["VMEMSPECT_APT_MIRROR"].rstrip("/")
    pairs: list[tuple[str, str]] = []
    files = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*.list"))]
    for f in files:
        if not f.is_file():
            continue
        for ln in f.read_text(errors="replace").splitlines():
            ln = re.sub(r"\[[^]]*\]", "", ln.split("#", 1)[0]).split()
            if len(ln) >= 3 and ln[0] == "deb":
                pairs.append((ln[1], ln[2]))
    for f in sorted((apt_etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields: dict[str, str] = {}
            key = None
            for ln in stanza.splitlines():
                if ln.startswith("#"):
                    continue
                if ln[:1] in (" ", "\t") and key:
                    fields[key] += " " + ln.strip()
                elif ":" in ln:
                    key, _, val = ln.partition(":")
                    key = key.strip().lower()
                    fields[key] = val.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for u in fields.get("uris", "").split():
                for s in fields.get("suites", "").split():
                    pairs.append((u, s))
    for u, s in pairs:   # the main archive serves releases, not -security
        if not s.endswith("-security"):
            return u.rstrip("/")
    raise TestbedError("no Debian archive in /etc/apt/sources.list{,.d/*.list,.d/*.sources}: "
                       "set VMEMSPECT_APT_MIRROR to its URI")


def private_apt(suites: tuple[str, ...] = (NEWEST_SUITE,)) -> list[str]:
    """apt options of a private source list (in the cache) of ``suites`` on
    this machine's archive; its package lists refreshed at most once a day."""
    d = cache_dir() / "apt-kdump"
    (d / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (d / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    uri = machine_archive_uri()
    text = "".join(f"deb {uri} {s} main\n" for s in suites)
    lst = d / "sources.list"
    if not lst.is_file() or lst.read_text() != text:
        lst.write_text(text)
    opts = ["-o", f"Dir::Etc::SourceList={lst}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={d / 'lists'}", "-o", f"Dir::Cache={d / 'cache'}",
            "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none"]
    stamp = d / "lists" / ".stamp"
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400
                or lst.stat().st_mtime > stamp.stat().st_mtime):
            p = subprocess.run(["apt-get", *opts, "update"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            if p.returncode == 0:
                stamp.touch()
            elif not any((d / "lists").glob("*Packages*")):
                raise TestbedError(f"apt-get update of {suites} failed:\n{p.stdout[-2000:]}")
    return opts


def _apt_candidate(opts: list[str], pkg: str) -> str | None:
    p = subprocess.run(["apt-cache", *opts, "policy", pkg], stdout=subprocess.PIPE, text=True)
    m = re.search(r"^\s*Candidate:\s*(\S+)", p.stdout, re.M)
    return m[1] if m and m[1] != "(none)" else None


def _apt_lib_depends(opts: list[str], pkg: str) -> list[str]:
    """The library packages ``pkg`` depends on (Depends, Pre-Depends; the
    first of alternatives)."""
    p = subprocess.run(["apt-cache", *opts, "depends", "--no-recommends", "--no-suggests",
                        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", pkg],
                       stdout=subprocess.PIPE, text=True)
    out = []
    alt = False
    for ln in p.stdout.splitlines()[1:]:
        m = re.match(r"\s*(\|)?(Depends|PreDepends):\s*<?([^\s>]+)>?", ln)
        if not m:
            alt = False
            continue
        name = m[3].split(":")[0]
        if not alt and (name.startswith("lib") or name.startswith("zlib")):
            out.append(name)
        alt = bool(m[1])
    return out


# ---------------------------------------------------------------- tool bundles

LOADER = "ld-linux-x86-64.so.2"


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


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
                 origin: str, features: dict[str, bool] | None = None) -> None:
        self.name, self.prog, self.libs, self.version, self.origin = name, prog, libs, version, origin
        #: makedumpfile -v: compression -> built in
        self.features = features or {}

    def files(self) -> list[tuple[str, bytes, int]]:
        base = f"opt/{self.name}"
        out = [(f"{base}/bin/{self.prog.name}", self.prog.read_bytes(), 0o755)]
        for soname, path in sorted(self.libs.items()):
            out.append((f"{base}/lib/{soname}", path.resolve().read_bytes(), 0o755))
        wrapper = (f"#!/bin/sh\nexec /{base}/lib/{LOADER} --library-path /{base}/lib "
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


def kexec_bundle() -> Bundle:
    return host_bundle("kexec", "kexec", ["--version"], r"kexec-tools\s+(\S+)")


def makedumpfile_host() -> Bundle:
    return host_bundle("mdf-host", "makedumpfile", ["-v"], r"version\s+(\S+)")


def makedumpfile_newest() -> Bundle:
    """sid's makedumpfile with sid's libraries and loader, extracted (never
    installed) into the cache, keyed by its package version."""
    opts = private_apt()
    ver = _apt_candidate(opts, "makedumpfile")
    if not ver:
        raise TestbedError(f"no makedumpfile in {NEWEST_SUITE}")
    root = cache_dir() / "kdump-tools" / f"makedumpfile_{ver.replace(':', '%3a')}"
    done = root / ".done"
    if not done.is_file():
        # The package and its library dependencies, closed over.
        want, seen = ["makedumpfile"], []
        while want:
            p = want.pop()
            if p in seen:
                continue
            seen.append(p)
            want += [d for d in _apt_lib_depends(opts, p) if d not in seen]
        debs = cache_dir() / "kdump-tools" / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=debs.parent, prefix=".root."))
        try:
            dl = Path(tempfile.mkdtemp(dir=debs, prefix=".dl."))
            p = subprocess.run(["apt-get", *opts, "download", *seen], cwd=dl,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0:
                shutil.rmtree(dl, ignore_errors=True)
                raise TestbedError(f"apt-get download {' '.join(seen)} failed:\n{p.stdout[-2000:]}")
            for f in dl.glob("*.deb"):
                os.replace(f, debs / f.name)
                subprocess.run(["dpkg-deb", "-x", str(debs / f.name), str(tmp)], check=True)
            shutil.rmtree(dl, ignore_errors=True)
            (tmp / "packages").write_text("\n".join(sorted(x.name for x in debs.glob("*.deb")
                                                           if x.name.split("_")[0] in seen)) + "\n")
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        done.write_text(ver + "\n")
    exe = root / "usr" / "sbin" / "makedumpfile"
    if not exe.is_file():
        exe = root / "usr" / "bin" / "makedumpfile"
    libdirs = [root / d for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu") if (root / d).is_dir()]
    loader = next((d / LOADER for d in libdirs if (d / LOADER).exists()), None)
    if loader is None:
        raise TestbedError(f"no {LOADER} under {root}")
    libs = _ldd_list(exe, loader, libdirs)
    version, feats = _tool_version([str(loader), "--library-path", ":".join(map(str, libdirs)),
                                    str(exe), "-v"], r"version\s+(\S+)")
    return Bundle("mdf-newest", exe, libs, version, f"{NEWEST_SUITE}: makedumpfile {ver}", feats)


def makedumpfile_bundle(build: str) -> Bundle:
    if build == "host":
        return makedumpfile_host()
    if build == "newest":
        return makedumpfile_newest()
    raise ValueError(f"unknown makedumpfile build {build!r}; have {', '.join(BUILDS)}")


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
        import lzma
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

def _add_files(c: "testbed._Cpio", files: list[tuple[str, bytes, int]], dirs: set[str]) -> None:
    for name, data, perm in files:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dd = "/".join(parts[:i])
            if dd not in dirs:
                c.dir(dd)
                dirs.add(dd)
        c.file(name, data, perm)


def build_capture_initramfs(kdir: Path, builds: list[Bundle]) -> Path:
    """The capture kernel's initramfs: busybox, scripts/guest/kdump-capture.sh
    as /init, the virtio modules, and each makedumpfile build (/bin/NAME).
    Cached by its contents."""
    release = (kdir / "release").read_text().strip()
    bb = testbed._busybox().read_bytes()
    init = (GUEST / "kdump-capture.sh").read_bytes()
    mods = capture_modules(kdir)
    key = _sha(KDUMP_FORMAT.encode(), release.encode(), bb, init,
               *(n.encode() + ko for n, ko in mods), *(b.key() for b in builds))[:16]
    path = cache_dir() / "initramfs" / f"{release}-capture-{key}.cpio.gz"
    if path.is_file():
        return path
    c = testbed._Cpio()
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
    testbed._atomic_write(path, gzip.compress(c.finish(), compresslevel=6, mtime=0))
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
    c = testbed._Cpio()
    _add_files(c, [("kdump/arm.sh", arm, 0o644), ("kdump/vmlinuz", vmlinuz, 0o644),
                   ("kdump/capture.img", cap, 0o644), *kexec.files()], {"bin"})
    data = base.read_bytes()
    testbed._atomic_write(path, data + b"\0" * (-len(data) % 4) + c.finish())
    return path


# ---------------------------------------------------------------- dump files

_COMPRESSION_FLAGS = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}


def dump_info(path: str | os.PathLike) -> dict:
    """What a dump file is: {"format": "elf" | "kdump-compressed" |
    "flattened" | "unknown", ...}; for kdump-compressed also the header's
    compression ("header_compression"), the page descriptors counted by
    their compression ("pages": {"zstd": n, "none": n, ...}), the dump level
    and "compression": the one compression the pages use ("none" if none;
    "mixed" if several)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if head[:4] == b"\x7fELF":
            return {"format": "elf", "compression": "none"}
        if head[:12] == b"makedumpfile":
            return {"format": "flattened", "compression": None}
        if head[:8] not in (b"KDUMP   ", b"DISKDUMP"):
            return {"format": "unknown", "compression": None}
        (header_version,) = struct.unpack_from("<i", head, 8)
        status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from("<IiiII", head, 424)
        f.seek(block_size)
        sub = f.read(block_size * max(sub_hdr_size, 1))
        phys_base, dump_level = struct.unpack_from("<Qi", sub, 0)
        if header_version >= 6:
            max_mapnr = struct.unpack_from("<Q", sub, 0x60)[0]
        bitmap_off = (1 + sub_hdr_size) * block_size
        half = bitmap_blocks * block_size // 2
        f.seek(bitmap_off + half)
        bm2 = f.read(half)
        ndesc = int.from_bytes(bm2, "little").bit_count()
        f.seek((1 + sub_hdr_size + bitmap_blocks) * block_size)
        pages: dict[str, int] = {}
        left = ndesc
        while left:
            n = min(left, 1 << 16)
            buf = f.read(24 * n)
            if len(buf) < 24 * n:
                raise TestbedError(f"{path}: truncated page descriptors")
            for flags, cnt in collections.Counter(fl for _, _, fl, _ in struct.iter_unpack("<QIIQ", buf)).items():
                name = "+".join(v for k, v in _COMPRESSION_FLAGS.items() if flags & k) or "none"
                pages[name] = pages.get(name, 0) + cnt
            left -= n
    comp = [k for k in pages if k != "none"]
    header = "+".join(v for k, v in _COMPRESSION_FLAGS.items() if status & k) or "none"
    return {"format": "kdump-compressed", "header_version": header_version,
            "header_compression": header, "status": status, "dump_level": dump_level,
            "max_mapnr": max_mapnr, "dumped_pages": ndesc, "pages": pages,
            "compression": comp[0] if len(comp) == 1 else ("none" if not comp else "mixed")}


def elf_filtered_ranges(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Physical ranges [start, end) an ELF dump declares but does not hold:
    the part of each PT_LOAD between p_filesz and p_memsz.  makedumpfile -E
    leaves the pages its dump level excluded there; they read back as zeros
    (drgn gives no error), so a reader has to treat them as missing."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        e_phoff, e_shoff = struct.unpack_from("<QQ", eh, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 0x36)
        if e_phnum == 0xFFFF:
            f.seek(e_shoff)
            e_phnum = struct.unpack_from("<I", f.read(64), 0x2C)[0]
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    out = []
    for i in range(e_phnum):
        p_type, _, _, _, p_paddr, p_filesz, p_memsz = struct.unpack_from("<IIQQQQQ", ph, i * e_phentsize)
        if p_type == 1 and p_memsz > p_filesz:
            out.append((p_paddr + p_filesz, p_paddr + p_memsz))
    return sorted(out)


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


# ---------------------------------------------------------------- the dump source

def _console_fields(line: str) -> dict[str, str]:
    return dict(x.split("=", 1) for x in line.split() if "=" in x)


class KdumpCapture:
    """The "kdump capture" dump source of ``testbed.run_scenario(capture=...)``.

    ``variant``: zlib, lzo, zstd or elf (VARIANTS); ``build``: host or newest
    (BUILDS).  ``reference``: before the panic, also take QEMU's kdump-zlib
    dump of the same guest state (the guest waits on its second serial port
    until that is done): run["capture"]["reference"].
    """

    name = "kdump capture"

    def __init__(self, variant: str = "zlib", build: str = "newest", *, reference: bool = False,
                 timeout: float = 600.0, crashkernel: str | None = None,
                 dump_level: int = 31, keep_disk: bool = False) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; have {', '.join(VARIANTS)}")
        if build not in BUILDS:
            raise ValueError(f"unknown makedumpfile build {build!r}; have {', '.join(BUILDS)}")
        self.variant, self.build, self.reference = variant, build, reference
        self.timeout, self.crashkernel, self.dump_level = timeout, crashkernel, dump_level
        self.keep_disk = keep_disk

    # -- before QEMU starts
    def prepare(self, *, kdir: Path, mem: str, tmp: Path, out_dir: Path, initrd: Path) -> dict:
        """Build what the run needs; return the changes to the QEMU command:
        {"initrd", "cmdline" (appended), "accel", "qemu" (extra arguments)}."""
        t0 = time.monotonic()
        self.mdf = makedumpfile_bundle(self.build)
        builds = [makedumpfile_host(), makedumpfile_newest()]
        self.kexec = kexec_bundle()
        capture = build_capture_initramfs(kdir, builds)
        first = build_first_initramfs(kdir, initrd, capture, self.kexec)
        self.out_dir, self.tmp = out_dir, tmp
        self.disk = out_dir / "capture-disk.img"
        mib = _mem_mib(mem)
        # Sparse: at most the guest's RAM plus headers is ever written.
        with open(self.disk, "wb") as f:
            f.truncate((mib + 256) << 20)
        self.crashkernel = self.crashkernel or crashkernel_for(mem)
        append = " ".join([CAPTURE_CMDLINE, f"vmemspect.mdf={self.mdf.name}",
                           f"vmemspect.opt={VARIANTS[self.variant]}", f"vmemspect.level={self.dump_level}"])
        conf = f"KDUMP_APPEND='{append}'\nKDUMP_WAIT={1 if self.reference else 0}\n"
        (tmp / "kdump.conf").write_text(conf)
        qemu = ["-fw_cfg", f"name=opt/vmemspect/kdump,file={tmp}/kdump.conf",
                "-drive", f"file={self.disk},format=raw,if=none,id=kdumpdisk,cache=unsafe",
                "-device", "virtio-blk-pci,drive=kdumpdisk"]
        if self.reference:
            qemu += ["-chardev", f"socket,id=ser1,path={tmp}/go.sock,server=on,wait=off",
                     "-serial", "chardev:ser1"]
        self.record = {
            "source": self.name, "variant": self.variant, "option": VARIANTS[self.variant],
            "requested_compression": "none" if self.variant == "elf" else self.variant,
            "requested_format": "elf" if self.variant == "elf" else "kdump-compressed",
            "makedumpfile": {"build": self.build, **self.mdf.describe()},
            "kexec": self.kexec.describe(), "crashkernel": self.crashkernel,
            "capture_cmdline": append, "dump_level": self.dump_level,
            "capture_initramfs": str(capture), "first_initramfs": str(first),
            "prepare_s": round(time.monotonic() - t0, 2),
        }
        return {"initrd": first, "cmdline": f"crashkernel={self.crashkernel}",
                "accel": "tcg,thread=single", "qemu": qemu}

    # -- after READY
    def collect(self, *, q, qmp, con, run: dict, fail) -> None:
        """Follow the guest through kexec, panic and capture until QEMU
        exits; reassemble the dump; fill run["capture"] and run["kdump"]
        (kdump-compressed) or run["elf"]."""
        rec = self.record
        run["capture"] = rec
        t_ready = time.monotonic()
        deadline = t_ready + self.timeout
        t = {}
        done = None
        messages: list[str] = []
        # Lines that came with READY, in the same read of the console, then new ones.
        pending = con.lines[len(con.lines) - con.lines[::-1].index("READY"):]
        while True:
            lines, pending = pending + con.poll(), []
            for ln in lines:
                if ln.startswith("FAIL") or ln.startswith("CAPTURE FAIL"):
                    raise fail(f"kdump capture failed: {ln}")
                if ln.startswith("! "):
                    messages.append(ln[2:].rstrip())
                elif ln.startswith("KDUMP ARMED"):
                    t["armed"] = time.monotonic()
                    rec["armed"] = _console_fields(ln)
                elif ln == "KDUMP WAITING":
                    self._reference_dump(qmp, run, fail)
                elif ln == "KDUMP PANIC":
                    t["panic"] = time.monotonic()
                elif ln.startswith("CAPTURE BOOTED"):
                    t["capture_booted"] = time.monotonic()
                elif ln.startswith("CAPTURE VMCORE"):
                    rec["vmcore"] = {k: int(v) for k, v in _console_fields(ln).items()}
                elif ln.startswith("CAPTURE DONE"):
                    done = _console_fields(ln)
                    t["capture_done"] = time.monotonic()
            if not q.alive():
                con.poll()
                break
            if time.monotonic() > deadline:
                raise fail(f"kdump capture: QEMU still running after {self.timeout:.0f} s")
            time.sleep(0.1)
        t_exit = time.monotonic()
        rec["makedumpfile_messages"] = messages
        # Its page counts ("Free pages : 0x..."), by name.
        rec["makedumpfile_report"] = {m[1].strip(): int(m[2], 16) for m in (
            re.match(r"\s*([A-Za-z][A-Za-z ]*?)\s*:\s*(0x[0-9a-fA-F]+)\s*$", x) for x in messages) if m}
        if done is None:
            raise fail(f"kdump capture: QEMU exited ({q.p.returncode}) before the capture kernel finished")
        rec["makedumpfile_rc"] = int(done["rc"])
        rec["makedumpfile_s"] = round(float(done["end"]) - float(done["start"]), 2)
        if rec["makedumpfile_rc"] != 0:
            raise fail(f"kdump capture: makedumpfile exited {done['rc']}: {' | '.join(messages[-10:])}")
        st = os.stat(self.disk)
        rec["disk_bytes_written"] = st.st_blocks * 512
        out = self.out_dir / ("vmcore.capture.elf" if self.variant == "elf" else "vmcore.capture.kdump")
        rec["reassemble_s"] = round(reassemble(self.disk, out), 2)
        if not self.keep_disk:
            self.disk.unlink()
        info = dump_info(out)
        rec.update(dump=str(out), size=out.stat().st_size, format=info["format"],
                   actual_compression=info["compression"], dump_info=info,
                   compression_fallback=(rec["requested_compression"] != info["compression"]))
        if info["format"] != rec["requested_format"]:
            raise fail(f"kdump capture: asked makedumpfile for {rec['requested_format']}, "
                       f"got {info['format']} ({out})")
        if info["format"] == "elf":
            run["elf"] = str(out)
            run["sizes"]["elf"] = rec["size"]
            gaps = elf_filtered_ranges(out)
            rec["elf_filtered"] = {"ranges": len(gaps),
                                   "pages": sum((b - a) // 4096 for a, b in gaps)}
        else:
            run["kdump"] = str(out)
            run["kdump_format"] = info["format"]
            run["sizes"]["kdump"] = rec["size"]
        rec["seconds"] = {
            # READY to QEMU's exit: kexec load, panic, capture boot, makedumpfile, power off
            "capture": round(t_exit - t_ready, 2),
            "arm": round(t.get("armed", t_ready) - t_ready, 2),
            "reference_dump": rec.get("reference", {}).get("seconds"),
            "panic_to_capture_boot": round(t["capture_booted"] - t["panic"], 2)
            if "panic" in t and "capture_booted" in t else None,
            "makedumpfile": rec["makedumpfile_s"],
            "power_off": round(t_exit - t["capture_done"], 2) if "capture_done" in t else None,
            "reassemble": rec["reassemble_s"],
        }
        run["timings"]["capture_s"] = rec["seconds"]["capture"]

    def _reference_dump(self, qmp, run: dict, fail) -> None:
        """QEMU's kdump-zlib dump of the guest, armed and waiting; then let it panic."""
        import socket
        flat = self.out_dir / "vmcore.reference.flat"
        out = self.out_dir / "vmcore.reference.kdump"
        for p in (flat, out):
            if p.exists():
                p.unlink()
        secs = testbed._dump(qmp, flat, "kdump-zlib", 900.0)
        fmt = testbed._reassemble(flat, out)
        self.record["reference"] = {"dump": str(out), "format": fmt, "size": out.stat().st_size,
                                    "seconds": round(secs, 2)}
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.tmp / "go.sock"))
            s.sendall(b"go\n")
        except OSError as e:
            raise fail(f"kdump capture: cannot tell the guest to go on: {e}")
        finally:
            s.close()


def _mem_mib(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([MG]?)", mem.strip().upper())
    if not m:
        raise ValueError(f"guest memory {mem!r}: want N, NM or NG")
    return int(m[1]) * (1024 if m[2] in ("G", "") else 1)


def run_capture(series: str = "7.2", scenario: str = "hvo-2m", out_dir: Path | str | None = None,
                variant: str = "zlib", build: str = "newest", *, reference: bool = False,
                **options) -> dict:
    """Boot ``series`` in ``scenario`` and dump it through kdump (a capture
    kernel running makedumpfile).  The run dict of testbed.run_scenario with
    run["capture"] (see KdumpCapture.collect) and the dump as run["kdump"]
    (kdump-compressed variants) or run["elf"] (elf)."""
    return testbed.run_scenario(series, scenario, out_dir,
                                capture=KdumpCapture(variant, build, reference=reference), **options)


# ---------------------------------------------------------------- CLI

def summary(run: dict) -> str:
    c = run["capture"]
    s = c["seconds"]
    return "\n".join([
        f"{run['series']} {run['scenario']}: {run['release']}, kdump capture {c['variant']} "
        f"with makedumpfile {c['makedumpfile']['version']} ({c['makedumpfile']['build']})",
        f"  dump {c['dump']}: {c['format']}, {c['size'] / 1e6:.1f} MB, compression asked "
        f"{c['requested_compression']}, got {c['actual_compression']} {c['dump_info'].get('pages', '')}",
        f"  boot {run['timings'].get('boot_s')} s, capture {s['capture']} s (makedumpfile "
        f"{s['makedumpfile']} s, panic to capture kernel {s['panic_to_capture_boot']} s), "
        f"reassemble {s['reassemble']} s, total {run['timings'].get('total_s')} s",
        *(f"  makedumpfile: {m}" for m in c["makedumpfile_messages"]),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed_kdump.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario, dumped by kdump; prints the path of run.json")
    r.add_argument("--kernel", default="7.2")
    r.add_argument("--scenario", default="hvo-2m", choices=list(testbed.SCENARIOS))
    r.add_argument("--variant", default="zlib", choices=list(VARIANTS))
    r.add_argument("--makedumpfile", default="newest", choices=BUILDS)
    r.add_argument("--reference", action="store_true",
                   help="also take QEMU's kdump-zlib dump of the same guest state before the panic")
    r.add_argument("--out", type=Path)
    r.add_argument("--summary", action="store_true", help="print a summary to stderr")
    h = sub.add_parser("info", help="format and compression of a dump file (JSON)")
    h.add_argument("dump")
    g = sub.add_parser("elf-gaps", help="PT_LOAD ranges between p_filesz and p_memsz of an ELF dump")
    g.add_argument("dump")
    sub.add_parser("tools", help="the kexec and makedumpfile builds a capture run uses (JSON)")
    a = ap.parse_args(argv)
    if a.cmd == "info":
        print(json.dumps(dump_info(a.dump), indent=1))
        return 0
    if a.cmd == "elf-gaps":
        for lo, hi in elf_filtered_ranges(a.dump):
            print(f"{lo:#x}-{hi:#x} {(hi - lo) // 4096} pages")
        return 0
    if a.cmd == "tools":
        print(json.dumps({"kexec": kexec_bundle().describe(),
                          **{b: makedumpfile_bundle(b).describe() for b in BUILDS}}, indent=1))
        return 0
    try:
        run = run_capture(a.kernel, a.scenario, a.out, a.variant, a.makedumpfile, reference=a.reference)
    except TestbedError as e:
        print(f"testbed_kdump: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed_kdump: interrupted (QEMU stopped)", file=sys.stderr)
        return 130
    if a.summary:
        print(summary(run), file=sys.stderr)
    print(Path(run["console"]).parent / "run.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
