"""Dump sources: the ways a guest's memory gets into a file on the host.

Each source is one DumpSource entry in DUMPS.  run_scenario() asks every
source it uses for its QEMU arguments and kernel command line before the
boot, and calls take() once the guest is READY (the guest's truth is in by
then).  A source's result lands in the run dict under its name: the path in
run[name], the format in run[name + "_format"], the size in
run["sizes"][name], and its timings in run["timings"].

Today: "kdump" (QEMU's dump-guest-memory, kdump-zlib, reassembled with
``makedumpfile -R``) and "elf" (QEMU's ELF, paging off).  A real kdump
capture (capture kernel loaded with kexec -p, makedumpfile inside the guest
writing onto a raw virtio disk, ``makedumpfile -R`` on the host) is one more
entry: its qemu_args() adds the disk, its cmdline() crashkernel=, and its
take() waits for the guest to crash and write; it ends the guest
(ends_guest), so it is taken after every QMP dump.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

from .common import TestbedError
from .qemu import QMP


@dataclasses.dataclass
class DumpContext:
    """What a source may use: the run's QMP connection, output dir, kernel."""
    qmp: QMP | None
    out_dir: Path
    kdir: Path
    tmp: Path               # the run's private temporary directory
    timeout: float


@dataclasses.dataclass
class DumpResult:
    path: Path
    format: str
    timings: dict


class DumpSource:
    """One way of dumping the guest (see the module doc)."""
    name = ""
    file = ""               # file name in the run's output dir
    ends_guest = False      # the guest is gone after take() (taken last)

    def paths(self, out_dir: Path) -> list[Path]:
        """Files of this source in out_dir (removed before a run)."""
        return [out_dir / self.file]

    def qemu_args(self, ctx: DumpContext) -> list[str]:
        return []

    def cmdline(self) -> str:
        return ""

    def take(self, ctx: DumpContext) -> DumpResult:
        raise NotImplementedError


class QemuKdump(DumpSource):
    """QMP dump-guest-memory, format kdump-zlib (about 1.3 s for 2 GiB;
    makedumpfile's flattened format from QEMU 7.2, made plain with -R)."""
    name = "kdump"
    file = "vmcore.kdump"

    def paths(self, out_dir: Path) -> list[Path]:
        return [out_dir / self.file, out_dir / (self.file + ".flat")]

    def take(self, ctx: DumpContext) -> DumpResult:
        flat = ctx.out_dir / (self.file + ".flat")
        out = ctx.out_dir / self.file
        dump_s = qmp_dump(ctx.qmp, flat, "kdump-zlib", ctx.timeout)
        t0 = time.monotonic()
        fmt = _reassemble(flat, out)
        return DumpResult(out, fmt, {"dump_s": round(dump_s, 2),
                                     "reassemble_s": round(time.monotonic() - t0, 2)})


class QemuElf(DumpSource):
    """QMP dump-guest-memory as ELF (paging off: physical addresses in
    p_paddr, see elf_phys_offset); as large as the guest's RAM."""
    name = "elf"
    file = "vmcore.elf"

    def take(self, ctx: DumpContext) -> DumpResult:
        out = ctx.out_dir / self.file
        dump_s = qmp_dump(ctx.qmp, out, None, ctx.timeout)
        os.chmod(out, 0o644)
        return DumpResult(out, "elf", {"elf_dump_s": round(dump_s, 2)})


DUMPS: dict[str, DumpSource] = {s.name: s for s in (QemuKdump(), QemuElf())}


def ordered(names) -> list[DumpSource]:
    """The sources named, those that end the guest last."""
    srcs = []
    for n in names:
        if n not in DUMPS:
            raise ValueError(f"unknown dump source {n!r}; have {', '.join(DUMPS)}")
        srcs.append(DUMPS[n])
    return sorted(srcs, key=lambda s: s.ends_guest)


# ---------------------------------------------------------------- QEMU dumps

def qmp_dump(qmp: QMP, path: Path, fmt: str | None, timeout: float) -> float:
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
