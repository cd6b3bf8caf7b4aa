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
from pathlib import Path

from .common import SCRIPTS, TestbedError, _sha, cache_dir


def apt(deb_arch: str, *args: str, cwd: Path | None = None) -> str:
    """An apt command with the test bed's private apt configuration for
    Debian architecture ``deb_arch`` (scripts/debian-apt.sh)."""
    env = dict(os.environ, VMEMSPECT_DEB_ARCH=deb_arch)
    p = subprocess.run([str(SCRIPTS / "debian-apt.sh"), *args], cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise TestbedError(f"debian-apt.sh {' '.join(args)} ({deb_arch}) failed:\n{p.stderr[-2000:]}")
    return p.stdout


def candidate(deb_arch: str, pkg: str) -> tuple[str, str] | None:
    """(version, suite) of the newest ``pkg`` in the private suites."""
    out = apt(deb_arch, "apt-cache", "policy", pkg)
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m[1] == "(none)":
        return None
    table = out[out.find("Version table:"):]
    t = re.search(r"^\s*(?:\*\*\* )?" + re.escape(m[1]) + r" \d+\n\s+\d+ \S+ (\S+?)/", table, re.M)
    return m[1], t[1] if t else "?"


def lib_depends(deb_arch: str, pkg: str) -> list[str]:
    """The library packages ``pkg`` depends on (Depends, Pre-Depends; the
    first of alternatives)."""
    out = apt(deb_arch, "apt-cache", "depends", "--no-recommends", "--no-suggests",
              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", pkg)
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


def lib_closure(deb_arch: str, pkgs: list[str]) -> list[str]:
    """``pkgs`` and the library packages they need, closed over."""
    want, seen = list(pkgs), []
    while want:
        p = want.pop()
        if p not in seen:
            seen.append(p)
            want += [d for d in lib_depends(deb_arch, p) if d not in seen]
    return seen


def unpacked(deb_arch: str, name: str, pkgs: list[str], libs: bool = True) -> Path:
    """A directory of the cache with ``pkgs`` (their newest versions) and,
    with ``libs``, the library packages they need, unpacked.  Its ``.done``
    file lists "package version suite", one a line."""
    names = lib_closure(deb_arch, pkgs) if libs else list(pkgs)
    versions = []
    for n in sorted(names):
        c = candidate(deb_arch, n)
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
