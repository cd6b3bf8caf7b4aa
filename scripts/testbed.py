#!/usr/bin/env python3
"""Real-kernel test bed for vmemspect: boot a Debian kernel under QEMU (TCG)
in a HugeTLB scenario, collect the guest's ground truth and dump its memory.

Standard library only.  Used as a module by the tests::

    import testbed
    r = testbed.run_scenario(series="7.2", scenario="hvo-2m", out_dir=Path(...))

and as a command::

    python3 scripts/testbed.py list
    python3 scripts/testbed.py run --kernel 7.2 --scenario hvo-2m [--out DIR]
                                   [--elf] [--guest-cmd CMD] [--hold]

Everything downloaded or built goes to the cache
``${VMEMSPECT_CACHE:-~/.cache/vmemspect}``; dumps and logs go to the run's
output directory.  QEMU (and virtiofsd) run in their own process groups and
are killed whatever happens (``finally``, atexit, SIGTERM/SIGHUP, and
PR_SET_PDEATHSIG as a last resort).

run_scenario() returns (and writes to out_dir/run.json) a dict::

  series, release, scenario, cmdline, qemu_args, vmlinux, vmlinuz, initramfs,
  kdump        plain kdump-compressed file (QEMU's flattened output run
               through makedumpfile -R); kdump_format says which it is
  elf          ELF dump (paging off) or None; see elf_phys_offset()
  console      serial log;  guest_cmd, guest_cmd_output (stdout, exact),
  guest_cmd_stderr, guest_cmd_rc
  timings      boot_s (QEMU start to truth), guest_cmd_s, dump_s (kdump),
               reassemble_s, elf_dump_s, total_s (whole call)
  sizes        kdump, elf (bytes)
  truth        from the guest; every dict key is a string (JSON):
    uname, cmdline, scenario, hugetlb_optimize_vmemmap (int or None)
    meminfo      {"HugePages_Total": n, ..., "Hugepagesize": kB, "Hugetlb": kB}
    hstates      {"2048": {"global": {nr,free,resv,surplus}_hugepages,
                           "nodes": {"0": {nr,free,surplus}_hugepages}}, ...}
    hugetlb_dmesg        ["HugeTLB: ...", ...]
    vmemmap_freeable_kib {"2048": 28, "1048576": 16380}
    vmstat       {"nr_memmap_pages": n, "nr_memmap_boot_pages": n}
    hugetlb_folios [{"pfn", "flags" (raw /proc/kpageflags word), "nr_pages"}]
    kpf_scanned_pfns, in_use [{"kind": "anon"|"file", "pfn", "phase"}]
    node_memory_blocks {"0": [block ids]}, memory_block_size (bytes),
    node_pfn_ranges {"0": [[start_pfn, end_pfn), ...]}
    steps        run-time changes made by the guest, in order
    demote       {"before": [1 GiB folio pfns], "after": [...], "demoted": [pfn]}
                 (rare: the demoted range is [pfn, pfn + 262144))
    errors       truth lines that were not understood (normally empty)
  aftermath    only with aftermath=True (see _aftermath): what the kernel said
               when the guest released its holds and emptied the pools
               after the dump
"""
from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
GUEST = SCRIPTS / "guest"
QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
BASE_CMDLINE = "console=ttyS0 init_on_alloc=0 panic=-1"
# The guest script exports VMEMSPECT_VMLINUX (the DWARF vmlinux in the
# cache, which the host's root does not have where drgn looks) and
# VMEMSPECT_RELEASE.
DEFAULT_LIVE_CMD = 'python3 -m vmemspect live -s "$VMEMSPECT_VMLINUX" --json'
MARK = "@VMS "
# Bump when the layout of the initramfs changes in testbed.py itself.
INITRAMFS_FORMAT = "1"


class TestbedError(RuntimeError):
    """A run failed; the message says why and ends with the console's tail."""


# ---------------------------------------------------------------- scenarios

def _numa_args(sizes_g: list[int]) -> list[str]:
    args: list[str] = []
    for i, g in enumerate(sizes_g):
        args += ["-object", f"memory-backend-ram,id=m{i},size={g}G",
                 "-numa", f"node,nodeid={i},memdev=m{i}"]
    return args


SCENARIOS: dict[str, dict] = {
    "hvo-2m": {
        "desc": "HVO on, 64 boot-time 2 MiB pages, 2 GiB",
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on hugepagesz=2M hugepages=64",
    },
    "hvo-1g": {
        "desc": "HVO on, one 1 GiB and 64 2 MiB boot-time pages, 4 GiB",
        "mem": "4G",
        "cmdline": ("hugetlb_free_vmemmap=on default_hugepagesz=2M "
                    "hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=64"),
    },
    "hvo-off": {
        "desc": "HVO off, 32 boot-time 2 MiB pages, 2 GiB",
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=off hugepagesz=2M hugepages=32",
    },
    "mixed": {
        "desc": ("HVO on, no boot-time pages; run time: 16 pages with the sysctl "
                 "on, 5 of them held in use (2 anon, 3 hugetlbfs file), then 16 "
                 "more with it off and 5 more held (phase 2), 2 GiB"),
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on",
    },
    "numa": {
        # Node 1 is 3 GiB: with 2 GiB, KASLR sometimes put the kernel where
        # the only 1 GiB-aligned block of node 1 was, and 6.12's boot-time
        # 1 GiB allocation failed ("allocating 1 of page size 1.00 GiB
        # failed node1").
        "desc": ("two nodes, 2 GiB (below the PCI hole: DMA32) and 3 GiB (above it: "
                 "Normal); boot: 1 GiB page on node 1, 2 MiB pages 40 on node 0 and "
                 "50 on node 1; run time: +20 2 MiB on node 1"),
        "mem": "5G",
        "cmdline": ("hugetlb_free_vmemmap=on hugepagesz=1G hugepages=0:0,1:1 "
                    "hugepagesz=2M hugepages=0:40,1:50"),
        "qemu": _numa_args([2, 3]),
    },
    # Guests larger than the host (scripts/bench-scale.py): guest RAM in a
    # memory backend with reserve=off (no swap/commit reservation), and the
    # base cmdline's init_on_alloc=0, so QEMU touches only what the guest
    # writes.  The huge pages come from extra_cmdline (and mem= the size).
    "scale-2m": {
        "desc": ("HVO on, 256 GiB (reserve=off backend), 2 MiB boot-time pages "
                 "given by extra_cmdline (bench-scale.py: hugepagesz=2M hugepages=120000)"),
        "mem": "256G",
        "cmdline": "hugetlb_free_vmemmap=on",
        "noreserve": True,
    },
    "scale-1g": {
        "desc": ("HVO on, 256 GiB (reserve=off backend), 1 GiB boot-time pages "
                 "given by extra_cmdline (bench-scale.py: hugepagesz=1G hugepages=200)"),
        "mem": "256G",
        "cmdline": "hugetlb_free_vmemmap=on",
        "noreserve": True,
    },
    "rare": {
        # A user's report: on 6.12.117 the folios of a demoted 1 GiB page
        # (all but the first) keep HPG_vmemmap_optimized without being
        # remapped; their 7 vmemmap pages each are never freed.
        "desc": ("HVO on, 6 GiB, hugetlb_cma=3G, 16 boot-time 2 MiB pages; run time: "
                 "2 x 1 GiB (from CMA where the kernel has CMA: 7.2), one demoted "
                 "(512 x 2 MiB), the whole 2 MiB "
                 "pool + 8 surplus (overcommit) held by fallocate on hugetlbfs: "
                 "536 in-use 2 MiB folios, one free 1 GiB folio"),
        "mem": "6G",
        # nokaslr: with physical KASLR the kernel lands in the 4 GiB above
        # the PCI hole a third of the time, splitting it: 7.2 then cannot
        # reserve the 3 GiB CMA area ("cma: Failed to reserve 3072 MiB")
        # and the second 1 GiB page fails (6.1 and 6.12 have no CMA at all:
        # both pages come from alloc_contig_pages).
        "cmdline": "hugetlb_free_vmemmap=on hugetlb_cma=3G hugepagesz=2M hugepages=16 nokaslr",
    },
    "live": {
        "desc": ("as hvo-2m, with the host's / shared over virtiofs; runs "
                 "guest_cmd (default: %s) chrooted in it" % DEFAULT_LIVE_CMD),
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on hugepagesz=2M hugepages=64",
        "live": True,
    },
}


# ---------------------------------------------------------------- cache

def cache_dir() -> Path:
    return Path(os.environ.get("VMEMSPECT_CACHE") or Path.home() / ".cache" / "vmemspect")


def fetch_kernel(series: str, dbg: bool = True) -> Path:
    """Run fetch-kernel.sh (a cache hit when present); return the kernel's dir."""
    cmd = [str(SCRIPTS / "fetch-kernel.sh"), series] + ([] if dbg else ["--no-dbg"])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise TestbedError(f"fetch-kernel.sh {series} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if not lines:
        raise TestbedError(f"fetch-kernel.sh {series} printed no directory")
    d = Path(lines[-1].strip())
    for f in ("vmlinuz", "qemu_fw_cfg.ko", "release"):
        if not (d / f).is_file():
            raise TestbedError(f"{d} has no {f}")
    return d


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


GUEST_PROGRAMS = ("kpf", "hugehold")


def build_guest_programs() -> dict[str, Path]:
    """Compile the guest's C helpers (static), cached by source + gcc version."""
    gcc = shutil.which("gcc")
    if not gcc:
        raise TestbedError("gcc is needed to build the guest helpers (scripts/guest/*.c)")
    ver = subprocess.run([gcc, "--version"], stdout=subprocess.PIPE, text=True).stdout
    srcs = [(GUEST / f"{n}.c").read_bytes() for n in GUEST_PROGRAMS]
    d = cache_dir() / "guest-bin" / _sha(ver.encode(), *srcs)[:16]
    out = {}
    for n in GUEST_PROGRAMS:
        exe = d / n
        if not exe.is_file():
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{n}.{os.getpid()}"
            p = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(tmp), str(GUEST / f"{n}.c")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if p.returncode != 0:
                raise TestbedError(f"gcc -static {n}.c failed:\n{p.stdout}\n"
                                   "(static glibc: package libc6-dev)")
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


def build_initramfs(kdir: Path) -> Path:
    """The guest's initramfs for one kernel, cached by release + guest sources."""
    release = (kdir / "release").read_text().strip()
    progs = build_guest_programs()
    bb = _busybox().read_bytes()
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


# ---------------------------------------------------------------- processes

_live_procs: set = set()      # _Proc objects still to be stopped
_procs_lock = threading.Lock()


def _stop_all() -> None:
    """Backstop (atexit): stop every child process group still registered."""
    with _procs_lock:
        procs = list(_live_procs)
    for p in procs:
        p.stop(grace=1.0)


atexit.register(_stop_all)


def _pdeathsig() -> None:
    # In the child before exec: die with the parent (PR_SET_PDEATHSIG = 1).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class _Proc:
    """A child in its own session/process group, killed on stop()."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_pdeathsig)
        with _procs_lock:
            _live_procs.add(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> bool:
        try:
            self.p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds,
        reap the leader.  (QEMU and virtiofsd leave no other processes.)"""
        pgid = self.p.pid
        if self.p.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        with _procs_lock:
            _live_procs.discard(self)
        if not self.log.closed:
            self.log.close()


class _Signals:
    """Turn SIGTERM/SIGHUP into SystemExit while a run is on (main thread only),
    so that ``finally`` kills the guest."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(s) in (signal.SIG_DFL, None):
                    self.saved[s] = signal.signal(s, self._handler)
        return self

    @staticmethod
    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)
        return False


# ---------------------------------------------------------------- QMP

class QMP:
    """A QMP client over a unix socket (stdlib only)."""

    def __init__(self, path: Path, timeout: float = 30.0, alive=None) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if alive is not None and not alive():
                    raise TestbedError(f"QEMU exited before its QMP socket {path} came up")
                if time.monotonic() > end:
                    raise TestbedError(f"cannot connect to QMP socket {path}")
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rb")
        self.events: list[dict] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise TestbedError(f"unexpected QMP greeting {greeting}")
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        try:
            line = self.f.readline()
        except OSError as e:
            raise TestbedError(f"QMP: {e}") from None
        if not line:
            raise TestbedError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name: str, **args) -> object:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise TestbedError(f"QMP {name}: {e}") from None
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise TestbedError(f"QMP {name}: {r['error']}")
            return r.get("return")

    def close(self) -> None:
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def _dump(qmp: QMP, path: Path, fmt: str | None, timeout: float) -> float:
    t0 = time.monotonic()
    args = {"paging": False, "protocol": f"file:{path}", "detach": True}
    if fmt:
        args["format"] = fmt
    qmp.cmd("dump-guest-memory", **args)
    end = t0 + timeout
    while True:
        st = qmp.cmd("query-dump")
        if st.get("status") == "completed":
            return time.monotonic() - t0
        if st.get("status") == "failed":
            raise TestbedError(f"dump-guest-memory ({fmt or 'elf'}) failed: {st} {qmp.events[-3:]}")
        if time.monotonic() > end:
            raise TestbedError(f"dump-guest-memory ({fmt or 'elf'}) timed out: {st}")
        time.sleep(0.1)


def _reassemble(flat: Path, out: Path) -> str:
    """QEMU before 8.2 writes kdump-zlib in makedumpfile's flattened format,
    which libkdumpfile reads only with a warning (and slowly for big dumps):
    turn it into a plain kdump-compressed file with ``makedumpfile -R``.
    Returns the format of ``out``."""
    mdf = shutil.which("makedumpfile")
    with open(flat, "rb") as f:
        magic = f.read(16)
    if magic.startswith(b"makedumpfile") and mdf:
        with open(flat, "rb") as src:
            p = subprocess.run([mdf, "-R", str(out)], stdin=src, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        if p.returncode == 0:
            flat.unlink()
            os.chmod(out, 0o644)
            return "kdump-compressed"
        raise TestbedError(f"makedumpfile -R failed: {p.stdout[-2000:]}")
    os.replace(flat, out)
    os.chmod(out, 0o644)
    return "flattened" if magic.startswith(b"makedumpfile") else "kdump-compressed"


# ---------------------------------------------------------------- console

class _Console:
    """Follows the serial log file and collects the "@VMS " lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""
        self.lines: list[str] = []   # payloads after the marker

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *full, self.partial = data.split(b"\n")
        new = []
        for raw in full:
            s = raw.decode("utf-8", "replace").rstrip("\r")
            i = s.find(MARK)
            if i >= 0:
                new.append(s[i + len(MARK):])
        self.lines += new
        return new

    def tail(self, n: int = 40) -> str:
        try:
            text = self.path.read_bytes().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-n:])


_UNITS = {"KiB": 1, "kB": 1, "MiB": 1024, "MB": 1024, "GiB": 1024 * 1024, "GB": 1024 * 1024}


def _kib(num: str, unit: str) -> int:
    return int(round(float(num) * _UNITS[unit]))


def parse_truth(lines: list[str]) -> dict:
    """Parse the guest's truth block (payload lines, without "= ")."""
    t: dict = {"scenario": None, "uname": None, "cmdline": None,
               "hugetlb_optimize_vmemmap": None, "meminfo": {}, "hstates": {},
               "hugetlb_dmesg": [], "vmemmap_freeable_kib": {}, "vmstat": {},
               "hugetlb_folios": [], "kpf_scanned_pfns": None, "in_use": [],
               "node_memory_blocks": {}, "memory_block_size": None,
               "node_pfn_ranges": {}, "steps": [], "errors": [],
               "demote": {"before": [], "after": [], "demoted": []}}

    def hs(size: str) -> dict:
        return t["hstates"].setdefault(size, {"global": {}, "nodes": {}})

    for ln in lines:
        key, _, rest = ln.partition(" ")
        f = rest.split()
        if key in ("scenario", "uname", "cmdline"):
            t[key] = rest
        elif key == "sysctl" and len(f) == 2:
            t[f[0]] = int(f[1])
        elif key == "meminfo" and f:
            name = f[0].rstrip(":")
            t["meminfo"][name] = int(f[1])        # kB fields stay in kB
        elif key == "global" and len(f) == 3:
            hs(f[0])["global"][f[1]] = int(f[2])
        elif key == "node" and len(f) == 4:
            hs(f[1])["nodes"].setdefault(f[0], {})[f[2]] = int(f[3])
        elif key == "node_blocks" and f:
            t["node_memory_blocks"][f[0]] = [int(b) for b in f[1:]]
        elif key == "block_size" and f:
            t["memory_block_size"] = int(f[0], 16)
        elif key == "dmesg":
            t["hugetlb_dmesg"].append(rest)
            m = re.search(r"([\d.]+)\s*KiB vmemmap can be freed for a ([\d.]+)\s*(KiB|MiB|GiB) page", rest)
            if m:
                t["vmemmap_freeable_kib"][str(_kib(m[2], m[3]))] = int(float(m[1]))
        elif key == "vmstat" and len(f) == 2:
            t["vmstat"][f[0]] = int(f[1])
        elif key == "kpf" and len(f) == 3:
            t["hugetlb_folios"].append({"pfn": int(f[0], 16), "flags": int(f[1], 16),
                                        "nr_pages": int(f[2])})
        elif key == "kpf_scanned" and f:
            t["kpf_scanned_pfns"] = int(f[0])
        elif key == "hold" and len(f) == 3:
            t["in_use"].append({"kind": f[0], "pfn": None if f[1] == "none" else int(f[1], 16),
                                "phase": int(f[2])})
        elif key == "step":
            t["steps"].append(rest)
        elif key == "demote" and len(f) == 2 and f[0] in ("before", "after"):
            t["demote"][f[0]].append(int(f[1], 16))
        elif ln.strip():
            t["errors"].append(ln)
    d = t["demote"]
    d["demoted"] = sorted(set(d["before"]) - set(d["after"]))
    # pfn ranges per node from its memory blocks
    bs = t["memory_block_size"]
    if bs:
        per = bs // 4096
        for node, blocks in t["node_memory_blocks"].items():
            ranges: list[list[int]] = []
            for b in blocks:
                if ranges and ranges[-1][1] == b * per:
                    ranges[-1][1] = (b + 1) * per
                else:
                    ranges.append([b * per, (b + 1) * per])
            t["node_pfn_ranges"][node] = ranges
    return t


# ---------------------------------------------------------------- ELF

def elf_segments(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """PT_LOAD segments of an ELF64 core as (p_paddr, p_offset, p_filesz)."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        e_phoff, e_shoff = struct.unpack_from("<QQ", eh, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", eh, 0x36)
        if e_phnum == 0xFFFF:   # PN_XNUM: the real count is in section 0's sh_info
            f.seek(e_shoff)
            sh = f.read(64)
            e_phnum = struct.unpack_from("<I", sh, 0x2C)[0]
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
    segs = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", ph, i * e_phentsize)
        if p_type == 1:
            segs.append((p_paddr, p_offset, p_filesz))
    return segs


def elf_phys_offset(path: str | os.PathLike, phys_addr: int) -> int:
    """File offset of physical address phys_addr in an ELF dump (PT_LOAD
    p_paddr/p_offset/p_filesz).  Raises LookupError if it is not in the file."""
    for paddr, off, size in elf_segments(path):
        if paddr <= phys_addr < paddr + size:
            return off + (phys_addr - paddr)
    raise LookupError(f"physical address {phys_addr:#x} is in no PT_LOAD segment of {path}")


# ---------------------------------------------------------------- aftermath
# Opt-in step after the dump (run_scenario(aftermath=True)): the guest waits
# on a second serial port (ttyS1, a unix socket on the host) after READY;
# once the dump is taken the host writes "go", the guest releases its holds,
# empties every pool and prints what the kernel said (dmesg) between
# AFTERMATH markers.  Self-contained: aftermath_qemu_args(), _aftermath(),
# parse_aftermath().

AFTERMATH_CTL = "ctl.sock"


def aftermath_qemu_args(tmp: Path) -> list[str]:
    """QEMU arguments of the aftermath: the order in fw_cfg and the control
    port (COM2, after the console's COM1)."""
    (tmp / "aftermath").write_text("1")
    return ["-fw_cfg", f"name=opt/vmemspect/aftermath,file={tmp}/aftermath",
            "-chardev", f"socket,id=ctl,path={tmp}/{AFTERMATH_CTL},server=on,wait=off",
            "-serial", "chardev:ctl"]


def _aftermath(tmp: Path, con: "_Console", alive, timeout: float) -> dict:
    """Tell the guest to go on, collect its AFTERMATH block, parse it.

    Never raises for what the guest does: a guest that dies or hangs gives
    {"completed": False, ...} with the console's tail."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(tmp / AFTERMATH_CTL))
        s.sendall(b"go\n")
    except OSError as e:
        s.close()
        raise TestbedError(f"aftermath: control port: {e}") from None
    lines: list[str] | None = None
    end_line = None
    why = "timeout"
    try:
        while time.monotonic() < t0 + timeout:
            for ln in con.poll():
                if ln == "AFTERMATH BEGIN":
                    lines = []
                elif lines is not None and ln.startswith("AFTERMATH END"):
                    end_line = ln
                elif lines is not None and end_line is None and (ln.startswith("~ ") or ln == "~"):
                    lines.append(ln[2:])
            if end_line:
                why = None
                break
            if not alive():
                why = "QEMU exited"
                break
            time.sleep(0.1)
    finally:
        s.close()
    a = parse_aftermath(lines or [])
    a["completed"] = end_line is not None
    a["failure"] = why
    a["seconds"] = round(time.monotonic() - t0, 2)
    if end_line:
        _, _, n, md5 = end_line.split()
        payload = "".join(x + "\n" for x in lines)
        a["intact"] = len(lines) == int(n) and hashlib.md5(payload.encode()).hexdigest() == md5
    else:
        a["intact"] = False
        a["console_tail"] = con.tail(60)
    return a


def parse_aftermath(lines: list[str]) -> dict:
    """The guest's AFTERMATH block (payload lines, without "~ ")::

      steps          what the guest did, with the pools after each step
      vmstat         nr_memmap_* after it
      kmsg           the kernel's messages meanwhile (dmesg, up to 4000 lines)
      dmesg_lines    how many there were
      warnings       the "WARNING: ..." lines
      static_key_dec_not_one  the WARNING lines that name it
      bad_page_state "BUG: Bad page state" reports shown + suppressed
      bad_page_state_shown, bad_page_state_suppressed
      console_tail   the last 40 kernel lines
    """
    a: dict = {"steps": [], "vmstat": {}, "kmsg": [], "dmesg_lines": None}
    for ln in lines:
        key, _, rest = ln.partition(" ")
        if key == "step":
            a["steps"].append(rest)
        elif key == "vmstat" and len(rest.split()) == 2:
            k, v = rest.split()
            a["vmstat"][k] = int(v)
        elif key == "dmesg_lines":
            a["dmesg_lines"] = int(rest)
        elif key == "k":
            a["kmsg"].append(rest)
    msgs = [re.sub(r"^\[[^]]*\] ?", "", m) for m in a["kmsg"]]
    a["warnings"] = [m for m in msgs if m.startswith("WARNING:")]
    a["static_key_dec_not_one"] = [m for m in a["warnings"] if "static_key_dec_not_one" in m]
    shown = sum(1 for m in msgs if m.startswith("BUG: Bad page state in process"))
    suppressed = sum(int(x) for m in msgs
                     for x in re.findall(r"^BUG: Bad page state: (\d+) messages suppressed", m))
    a["bad_page_state_shown"] = shown
    a["bad_page_state_suppressed"] = suppressed
    a["bad_page_state"] = shown + suppressed
    a["console_tail"] = "\n".join(a["kmsg"][-40:])
    return a


# ---------------------------------------------------------------- run

def _guest_script(guest_cmd: str, live: bool, cwd: str | None, env: dict | None,
                  kdir: Path) -> str:
    lines = ["# written by scripts/testbed.py"]
    if live:
        path = os.path.dirname(sys.executable) + ":" + os.environ.get(
            "PATH", "/usr/local/bin:/usr/bin:/bin")
        e = {"PATH": path + ":/usr/local/sbin:/usr/sbin:/sbin",
             "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
             # the guest must not write caches into the host's checkout
             "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get("PYTHONPATH"):
            e["PYTHONPATH"] = os.environ["PYTHONPATH"]
    else:
        e = {}
    e["VMEMSPECT_RELEASE"] = (kdir / "release").read_text().strip()
    e["VMEMSPECT_VMLINUX"] = str(kdir / "vmlinux")
    e.update(env or {})
    for k, v in e.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || exit 97")
    lines.append(guest_cmd)
    return "\n".join(lines) + "\n"


def _parse_cmd_block(lines: list[str]) -> tuple[str, str, int]:
    out, err, rc, where = [], [], None, None
    for ln in lines:
        if ln == "CMD OUT":
            where = out
        elif ln == "CMD ERR":
            where = err
        elif ln.startswith("CMD END"):
            rc = int(ln.split()[2])
            where = None
        elif where is not None and ln[:2] in ("o ", "e "):
            where.append(ln[2:].strip())
    dec = lambda b64: base64.b64decode("".join(b64)).decode("utf-8", "replace")
    return dec(out), dec(err), rc


def run_scenario(series: str = "7.2", scenario: str = "hvo-2m", out_dir: Path | str | None = None,
                 elf: bool = False, guest_cmd: str | None = None, *,
                 guest_cwd: str | None = None, guest_env: dict | None = None,
                 timeout: float = 180.0, cmd_timeout: float = 1200.0,
                 dump_timeout: float = 900.0, dbg: bool = True,
                 on_ready=None, extra_cmdline: str = "", mem: str | None = None,
                 aftermath: bool = False, aftermath_timeout: float = 300.0) -> dict:
    """Boot ``series`` in ``scenario``, collect truth, dump memory, stop QEMU.

    Returns the run dict (also written to out_dir/run.json).  ``guest_cmd``
    runs in the guest before the dump (for "live": chrooted in the host's /,
    in ``guest_cwd``, default the current directory; elsewhere in the
    initramfs's busybox).  ``on_ready(info)`` is called once the guest is
    ready and before the dump, with info["qmp"] the path of a spare QMP
    socket (e.g. for ``drgn --qemu``).  ``aftermath``: after the dumps,
    let the guest release its holds and empty its pools, and put what the
    kernel said into run["aftermath"] (see _aftermath).  Raises TestbedError
    on failure.
    """
    t_start = time.monotonic()
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; have {', '.join(SCENARIOS)}")
    sc = SCENARIOS[scenario]
    live = bool(sc.get("live"))
    if live and guest_cmd is None:
        guest_cmd = DEFAULT_LIVE_CMD
    if out_dir is None:
        out_dir = cache_dir() / "runs" / f"{series}-{scenario}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    kdir = fetch_kernel(series, dbg=dbg)
    release = (kdir / "release").read_text().strip()
    initrd = build_initramfs(kdir)
    mem = mem or sc["mem"]
    cmdline = " ".join(x for x in (BASE_CMDLINE, sc["cmdline"], extra_cmdline) if x)

    console = out_dir / "console.log"
    kdump = out_dir / "vmcore.kdump"
    elf_path = out_dir / "vmcore.elf"
    for p in (console, kdump, elf_path, out_dir / "run.json", out_dir / "vmcore.kdump.flat"):
        if p.exists():
            p.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="vmemspect-"))
    (tmp / "scenario").write_text(scenario)
    machine = "q35,accel=tcg"
    qemu_args = [QEMU, "-cpu", "max", "-smp", "2", "-m", mem,
                 "-nodefaults", "-display", "none", "-no-reboot",
                 "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd), "-append", cmdline,
                 "-chardev", f"file,id=ser0,path={console}", "-serial", "chardev:ser0",
                 "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
                 "-qmp", f"unix:{tmp}/qmp-spare.sock,server=on,wait=off",
                 "-device", "vmcoreinfo",
                 "-fw_cfg", f"name=opt/vmemspect/scenario,file={tmp}/scenario"]
    if guest_cmd is not None:
        (tmp / "script.sh").write_text(_guest_script(
            guest_cmd, live, (guest_cwd or os.getcwd()) if live else guest_cwd, guest_env, kdir))
        qemu_args += ["-fw_cfg", f"name=opt/vmemspect/script,file={tmp}/script.sh"]
    if live:
        qemu_args += ["-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                      "-chardev", f"socket,id=vfs,path={tmp}/vfs.sock",
                      "-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"]
        machine += ",memory-backend=mem"
    elif sc.get("noreserve"):
        qemu_args += ["-object", f"memory-backend-ram,id=mem,size={mem},reserve=off"]
        machine += ",memory-backend=mem"
    qemu_args += sc.get("qemu", [])
    if aftermath:
        qemu_args += aftermath_qemu_args(tmp)
    qemu_args[1:1] = ["-machine", machine]

    run: dict = {"series": series, "release": release,
                 "vmlinux": str(kdir / "vmlinux") if (kdir / "vmlinux").is_file() else None,
                 "vmlinuz": str(kdir / "vmlinuz"), "initramfs": str(initrd),
                 "scenario": scenario, "cmdline": cmdline, "qemu_args": qemu_args,
                 "kdump": None, "elf": None, "console": str(console),
                 "truth": None, "guest_cmd": guest_cmd, "guest_cmd_output": None,
                 "guest_cmd_stderr": None, "guest_cmd_rc": None,
                 "timings": {}, "sizes": {}}
    procs: list[_Proc] = []
    qmp = None
    con = _Console(console)
    try:
        with _Signals():
            if live:
                vfs = _Proc([VIRTIOFSD, f"--socket-path={tmp}/vfs.sock", "-o", "source=/",
                             "-o", "sandbox=chroot", "-o", "cache=auto"], out_dir / "virtiofsd.log")
                procs.append(vfs)
                end = time.monotonic() + 10
                while not (tmp / "vfs.sock").exists():
                    if not vfs.alive() or time.monotonic() > end:
                        raise TestbedError("virtiofsd did not start: " +
                                           (out_dir / "virtiofsd.log").read_text()[-2000:])
                    time.sleep(0.05)
            t_boot = time.monotonic()
            q = _Proc(qemu_args, out_dir / "qemu.log")
            procs.append(q)
            def fail(msg: str) -> TestbedError:
                qlog = (out_dir / "qemu.log").read_text(errors="replace")[-2000:]
                return TestbedError(f"{series}/{scenario}: {msg}\n--- qemu.log ---\n{qlog}"
                                    f"\n--- console tail ({console}) ---\n{con.tail()}")

            try:
                qmp = QMP(tmp / "qmp.sock", alive=q.alive)
            except TestbedError as e:
                raise fail(str(e)) from None
            deadline = t_boot + timeout
            truth_lines: list[str] | None = None
            cmd_lines: list[str] = []
            state = "boot"
            t_truth = t_cmd = None
            while True:
                for ln in con.poll():
                    if ln.startswith("FAIL"):
                        raise fail(f"guest init failed: {ln}")
                    if state == "boot" and ln == "TRUTH BEGIN":
                        state, truth_lines = "truth", []
                    elif state == "truth":
                        if ln.startswith("TRUTH END"):
                            _, _, n, md5 = ln.split()
                            payload = "".join(x + "\n" for x in truth_lines)
                            if len(truth_lines) != int(n) or hashlib.md5(payload.encode()).hexdigest() != md5:
                                raise fail(f"truth block mangled on the console ({len(truth_lines)} lines, want {n})")
                            t_truth = time.monotonic()
                            state = "truthdone"
                        elif ln.startswith("= ") or ln == "=":
                            truth_lines.append(ln[2:])
                        else:
                            raise fail(f"unexpected line in truth block: {ln!r}")
                    elif state == "truthdone" and ln == "CMD BEGIN":
                        state, t_cmd = "cmd", time.monotonic()
                        deadline = t_cmd + cmd_timeout
                    elif state == "cmd":
                        cmd_lines.append(ln)
                        if ln.startswith("CMD END"):
                            state = "cmddone"
                    if ln == "READY":
                        state = "ready"
                        break
                if state == "ready":
                    break
                if not q.alive():
                    raise fail(f"QEMU exited ({q.p.returncode}) before READY")
                if time.monotonic() > deadline:
                    raise fail(f"timed out in state {state!r} waiting for READY")
                time.sleep(0.1)
            t_ready = time.monotonic()
            run["truth"] = parse_truth(truth_lines or [])
            run["timings"]["boot_s"] = round((t_truth or t_ready) - t_boot, 2)
            if guest_cmd is not None:
                o, e, rc = _parse_cmd_block(cmd_lines)
                run["guest_cmd_output"], run["guest_cmd_stderr"], run["guest_cmd_rc"] = o, e, rc
                run["timings"]["guest_cmd_s"] = round(t_ready - (t_cmd or t_ready), 2)
            if on_ready:
                on_ready({"qmp": str(tmp / "qmp-spare.sock"), "run": run, "tmpdir": str(tmp)})
            flat = out_dir / "vmcore.kdump.flat"
            run["timings"]["dump_s"] = round(_dump(qmp, flat, "kdump-zlib", dump_timeout), 2)
            t0 = time.monotonic()
            run["kdump_format"] = _reassemble(flat, kdump)
            run["timings"]["reassemble_s"] = round(time.monotonic() - t0, 2)
            run["kdump"] = str(kdump)
            run["sizes"]["kdump"] = kdump.stat().st_size
            if elf:
                run["timings"]["elf_dump_s"] = round(_dump(qmp, elf_path, None, dump_timeout), 2)
                os.chmod(elf_path, 0o644)
                run["elf"] = str(elf_path)
                run["sizes"]["elf"] = elf_path.stat().st_size
            if aftermath:
                run["aftermath"] = _aftermath(tmp, con, q.alive, aftermath_timeout)
                run["timings"]["aftermath_s"] = run["aftermath"]["seconds"]
            try:
                qmp.cmd("quit")
            except (TestbedError, OSError):
                pass
            q.wait(10)
    finally:
        if qmp:
            qmp.close()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    run["timings"]["total_s"] = round(time.monotonic() - t_start, 2)
    (out_dir / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return json.loads(json.dumps(run))


# ---------------------------------------------------------------- CLI

def summary(run: dict) -> str:
    t = run["truth"]
    lines = [f"{run['series']} {run['scenario']}: {run['release']}",
             f"  cmdline: {run['cmdline']}",
             f"  boot {run['timings'].get('boot_s')} s, kdump {run['timings'].get('dump_s')} s "
             f"({run['sizes'].get('kdump', 0) / 1e6:.1f} MB)"
             + (f", elf {run['timings'].get('elf_dump_s')} s ({run['sizes']['elf'] / 1e9:.2f} GB)"
                if run.get("elf") else "")
             + f", total {run['timings'].get('total_s')} s",
             f"  hugetlb_optimize_vmemmap={t.get('hugetlb_optimize_vmemmap')} "
             f"vmstat={t.get('vmstat')} freeable={t.get('vmemmap_freeable_kib')}"]
    for size, h in sorted(t["hstates"].items(), key=lambda kv: int(kv[0])):
        nodes = " ".join(f"node{n}:{v.get('nr_hugepages')}/{v.get('free_hugepages')}"
                         for n, v in sorted(h["nodes"].items()))
        lines.append(f"  {size} kB: {h['global']}  (nr/free per node: {nodes})")
    lines.append(f"  hugetlb folios in /proc/kpageflags: {len(t['hugetlb_folios'])}; "
                 f"held in use: {len(t['in_use'])}")
    for s in t["steps"]:
        lines.append(f"  step: {s}")
    if t["errors"]:
        lines.append(f"  unparsed truth lines: {t['errors']}")
    if run.get("guest_cmd") is not None:
        lines.append(f"  guest_cmd rc={run['guest_cmd_rc']} ({run['timings'].get('guest_cmd_s')} s): "
                     f"{run['guest_cmd_output']!r}"[:2000])
        if run.get("guest_cmd_stderr"):
            lines.append(f"  guest_cmd stderr: {run['guest_cmd_stderr'][-1500:]!r}")
    if t.get("demote", {}).get("before"):
        d = t["demote"]
        lines.append("  1 GiB folios: before demote " + " ".join(hex(x) for x in d["before"])
                     + "; after " + " ".join(hex(x) for x in d["after"])
                     + "; demoted " + " ".join(hex(x) for x in d["demoted"]))
    a = run.get("aftermath")
    if a:
        lines.append(f"  aftermath ({a['seconds']} s, completed={a['completed']}, "
                     f"intact={a['intact']}): {len(a['warnings'])} WARNING(s), "
                     f"{len(a['static_key_dec_not_one'])} static_key_dec_not_one, "
                     f"bad page state {a['bad_page_state']} "
                     f"({a['bad_page_state_suppressed']} suppressed), vmstat {a['vmstat']}")
        for st in a["steps"]:
            lines.append(f"    {st}")
        for w in a["warnings"][:3]:
            lines.append(f"    {w}")
    lines.append(f"  kdump: {run['kdump']}")
    if run.get("elf"):
        lines.append(f"  elf: {run['elf']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list the scenarios")
    ls.add_argument("--names", action="store_true", help="names only, one a line")
    r = sub.add_parser("run", help="run one scenario; prints the path of run.json")
    r.add_argument("--kernel", default="7.2", help="kernel series: 6.12 or 7.2")
    r.add_argument("--scenario", default="hvo-2m", choices=list(SCENARIOS))
    r.add_argument("--out", type=Path, help="output dir (default: a new dir under the cache's runs/)")
    r.add_argument("--elf", action="store_true", help="also take an ELF dump")
    r.add_argument("--guest-cmd", help="command to run in the guest before the dump")
    r.add_argument("--guest-cwd", help="working dir of --guest-cmd (live: default the current dir)")
    r.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the guest")
    r.add_argument("--hold", action="store_true",
                   help="once ready, print the spare QMP socket and wait for Enter/Ctrl-C before dumping")
    r.add_argument("--aftermath", action="store_true",
                   help="after the dump, let the guest release its holds and empty its "
                        "pools; record what the kernel said (run.json: aftermath)")
    r.add_argument("--summary", action="store_true", help="print a summary to stderr")
    i = sub.add_parser("initramfs", help="build (or find) the initramfs of a kernel; prints its path")
    i.add_argument("--kernel", default="7.2")
    a = ap.parse_args(argv)
    if a.cmd == "list" and a.names:
        print("\n".join(SCENARIOS))
        return 0
    if a.cmd == "list":
        for n, sc in SCENARIOS.items():
            print(f"{n:8} -m {sc['mem']:3}  {sc['cmdline']}\n{'':8}   {sc['desc']}")
        return 0
    if a.cmd == "initramfs":
        print(build_initramfs(fetch_kernel(a.kernel, dbg=False)))
        return 0

    def hold(info):
        print(f"guest ready; spare QMP socket: {info['qmp']}\n"
              f"  e.g. drgn --qemu {info['qmp']} -s {info['run']['vmlinux']}\n"
              "press Enter (or Ctrl-C) to dump and stop", file=sys.stderr)
        try:
            sys.stdin.readline()
        except KeyboardInterrupt:
            pass

    out = a.out or None
    try:
        run = run_scenario(a.kernel, a.scenario, out, elf=a.elf, guest_cmd=a.guest_cmd,
                           guest_cwd=a.guest_cwd, timeout=a.timeout,
                           on_ready=hold if a.hold else None, aftermath=a.aftermath)
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("testbed: interrupted (QEMU stopped)", file=sys.stderr)
        return 130
    if a.summary:
        print(summary(run), file=sys.stderr)
    print(Path(run["console"]).parent / "run.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
