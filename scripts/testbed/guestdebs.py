"""Debian packages for the guest, unpacked (never installed) into the cache.

For a guest of another architecture than this machine's (riscv64) nothing
of the host's can run in it: busybox-static, kexec-tools and makedumpfile
come as that architecture's packages from the private apt configuration
of scripts/debian-apt.sh (``VMEMSPECT_DEB_ARCH``: package lists of that
architecture, archive URIs from this machine's apt sources), with the
shared libraries they depend on, closed over.  Each set of packages is
unpacked with ``dpkg-deb -x`` into one directory of the cache, named by
the packages and versions it holds:

    ~/.cache/vmemspect/guest-debs/DEB_ARCH/NAME-HASH/   (.done lists them)

Nothing here runs the binaries: the host may not be able to.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import SCRIPTS, TestbedError, _atomic_write, _sha, cache_dir


def apt(deb_arch: str, *args: str, cwd: Path | None = None) -> str:
    """An apt command with the test bed's private apt configuration for
    Debian architecture ``deb_arch`` (scripts/debian-apt.sh)."""
    env = dict(os.environ, VMEMSPECT_DEB_ARCH=deb_arch)
    p = subprocess.run([str(SCRIPTS / "debian-apt.sh"), *args], cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise TestbedError(f"debian-apt.sh {' '.join(args)} ({deb_arch}) failed:\n{p.stderr[-2000:]}")
    return p.stdout


def candidates(deb_arch: str, pkgs: list[str]) -> dict[str, tuple[str, str] | None]:
    """(version, suite) of the newest of each of ``pkgs`` in the private
    suites (one apt-cache call)."""
    out = apt(deb_arch, "apt-cache", "policy", *pkgs)
    found: dict[str, tuple[str, str] | None] = {p: None for p in pkgs}
    for block in re.split(r"^(?=\S)", out, flags=re.M):
        m = re.match(r"(\S+?):\n", block)
        c = re.search(r"^\s*Candidate:\s*(\S+)", block, re.M)
        if not m or not c or c[1] == "(none)":
            continue
        table = block[block.find("Version table:"):]
        t = re.search(r"^\s*(?:\*\*\* )?" + re.escape(c[1]) + r" \d+\n\s+\d+ \S+ (\S+?)/", table, re.M)
        found[m[1].split(":")[0]] = (c[1], t[1] if t else "?")
    return found


def candidate(deb_arch: str, pkg: str) -> tuple[str, str] | None:
    """(version, suite) of the newest ``pkg`` in the private suites."""
    return candidates(deb_arch, [pkg])[pkg]


def lib_depends(deb_arch: str, pkgs: list[str]) -> dict[str, list[str]]:
    """The library packages each of ``pkgs`` depends on (Depends,
    Pre-Depends; the first of alternatives), in one apt-cache call."""
    out = apt(deb_arch, "apt-cache", "depends", "--no-recommends", "--no-suggests",
              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *pkgs)
    deps: dict[str, list[str]] = {}
    cur = None
    alt = False
    for ln in out.splitlines():
        if ln and not ln[0].isspace():
            cur = deps.setdefault(ln.strip().split(":")[0], [])
            alt = False
            continue
        m = re.match(r"\s*(\|)?(Depends|PreDepends):\s*<?([^\s>]+)>?", ln)
        if not m or cur is None:
            alt = False
            continue
        name = m[3].split(":")[0]
        if not alt and (name.startswith("lib") or name.startswith("zlib")) and name not in cur:
            cur.append(name)
        alt = bool(m[1])
    return deps


def full_closure(deb_arch: str, pkgs: list[str], exclude: tuple = ()) -> list[str]:
    """``pkgs`` and every package they depend on (Depends, Pre-Depends),
    recursively, but for virtual packages and ``exclude`` (and what only
    those bring in)."""
    seen: list[str] = []
    want = list(dict.fromkeys(pkgs))
    while want:
        seen += want
        out = apt(deb_arch, "apt-cache", "depends", "--no-recommends", "--no-suggests",
                  "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *want)
        nxt = []
        alt = False
        for ln in out.splitlines():
            m = re.match(r"\s*(\|)?(Depends|PreDepends):\s*(<)?([^\s>]+)", ln)
            if not m:
                alt = False
                continue
            name = m[4].split(":")[0]
            if not alt and not m[3] and name not in exclude and name not in seen:
                nxt.append(name)
            alt = bool(m[1])
        want = list(dict.fromkeys(nxt))
    return seen


def lib_closure(deb_arch: str, pkgs: list[str]) -> list[str]:
    """``pkgs`` and the library packages they need, closed over."""
    seen: list[str] = []
    want = list(dict.fromkeys(pkgs))
    while want:
        seen += want
        deps = lib_depends(deb_arch, want)
        want = list(dict.fromkeys(d for p in want for d in deps.get(p, []) if d not in seen))
    return seen


#: How long the packages picked for a set stay the newest (seconds): as
#: long as debian-apt.sh keeps its package lists (a day).
RESOLVED_TTL = 86400


def unpacked(deb_arch: str, name: str, pkgs: list[str], libs: bool | str = True,
             exclude: tuple = ()) -> Path:
    """A directory of the cache with ``pkgs`` (their newest versions) and,
    with ``libs``, the library packages they need (``libs="all"``: every
    package they need but ``exclude``), unpacked.  Its ``.done``
    file lists "package version suite", one a line.  Which directory that
    is (the newest versions) is asked of apt at most once a day per set."""
    base = cache_dir() / "guest-debs" / deb_arch
    resolved = base / f"{name}.resolved"
    key = " ".join(pkgs) + (f" +{'libs' if libs is True else libs}" if libs else "") + (
        f" -{' -'.join(exclude)}" if exclude else "")
    try:
        r_key, r_dir = resolved.read_text().splitlines()[:2]
        if (r_key == key and time.time() - resolved.stat().st_mtime < RESOLVED_TTL
                and (base / r_dir / ".done").is_file()):
            return base / r_dir
    except (OSError, ValueError):
        pass
    root = _unpack(deb_arch, name, pkgs, libs, exclude)
    _atomic_write(resolved, f"{key}\n{root.name}\n".encode())
    return root


def _unpack(deb_arch: str, name: str, pkgs: list[str], libs: bool | str, exclude: tuple) -> Path:
    if libs == "all":
        names = full_closure(deb_arch, pkgs, exclude)
    else:
        names = lib_closure(deb_arch, pkgs) if libs else list(pkgs)
    versions = []
    cands = candidates(deb_arch, sorted(names))
    for n in sorted(names):
        c = cands[n]
        if not c:
            raise TestbedError(f"no {n} for {deb_arch} in the private apt suites (scripts/debian-apt.sh)")
        versions.append(f"{n} {c[0]} {c[1]}")
    base = cache_dir() / "guest-debs" / deb_arch
    root = base / f"{name}-{_sha(*(v.encode() for v in versions))[:12]}"
    if (root / ".done").is_file():
        return root
    debs = base / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    dl = Path(tempfile.mkdtemp(dir=debs, prefix=".dl."))
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{name}."))
    try:
        want = [f"{v.split()[0]}={v.split()[1]}" for v in versions]
        apt(deb_arch, "apt-get", "download", *want, cwd=dl)
        for f in sorted(dl.glob("*.deb")):
            os.replace(f, debs / f.name)
            subprocess.run(["dpkg-deb", "-x", str(debs / f.name), str(tmp)], check=True)
        (tmp / ".done").write_text("".join(v + "\n" for v in versions))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(dl, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def find(root: Path, *candidates: str) -> Path:
    """The first of ``candidates`` (paths under ``root``) that is a file."""
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise TestbedError(f"none of {', '.join(candidates)} under {root}")


def shared_libs(root: Path, triplet: str) -> dict[str, Path]:
    """soname -> file of every shared library the unpacked packages hold
    (lib/TRIPLET and usr/lib/TRIPLET, not their subdirectories)."""
    libs: dict[str, Path] = {}
    for d in (root / "lib" / triplet, root / "usr" / "lib" / triplet):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if ".so" in f.name and (f.is_file() or f.is_symlink()) and f.resolve().is_file():
                libs.setdefault(f.name, f)
    return libs


#: The Python of a live root, for guests of other architectures: sid's
#: python3 with its drgn (python3-drgn 0.3.0; trixie's is 0.0.31) and
#: vmemspect's other dependencies.
LIVE_PACKAGES = ["python3", "python3-drgn", "python3-click", "python3-tabulate",
                 "python3-prometheus-client"]
#: Not needed to run Python in a chroot (maintainer scripts' tools).
LIVE_EXCLUDE = ("debconf", "cdebconf", "dpkg", "perl-base", "init-system-helpers",
                "debconf-2.0", "libdebian-installer4", "libnewt0.52", "libslang2",
                "libtextwrap1")


def live_root(arch, busybox: Path) -> Path:
    """A root directory for "live" runs of guests of ``arch`` (not this
    machine's: its binaries cannot run there): LIVE_PACKAGES and what they
    need, unpacked, merged-/usr symlinks, ``busybox`` (static, the guest's)
    as /bin/sh, and the mount points the guest uses.  Shared with the guest
    over virtiofs in place of this machine's root."""
    root = unpacked(arch.deb_arch, "live", LIVE_PACKAGES, libs="all", exclude=LIVE_EXCLUDE)
    for d in ("bin", "sbin", "lib"):
        if not (root / d).exists() and not (root / d).is_symlink():
            os.symlink(f"usr/{d}", root / d)
    for d in ("proc", "sys", "dev", "tmp", "root", "work", "usr/bin", "usr/sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    sh = root / "usr" / "bin" / "sh"
    if not sh.exists():
        shutil.copyfile(busybox, root / "usr" / "bin" / ".busybox.tmp")
        os.chmod(root / "usr" / "bin" / ".busybox.tmp", 0o755)
        os.replace(root / "usr" / "bin" / ".busybox.tmp", root / "usr" / "bin" / "busybox")
        os.symlink("busybox", sh)
    return root
