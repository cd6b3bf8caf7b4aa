"""Dump sources: the ways a guest's memory gets into a file on the host.

Each source is one DumpSource entry in DUMPS.  run_scenario() asks every
source it uses for its initramfs, QEMU arguments and kernel command line
before the boot, and calls take() once the guest is READY (the guest's
truth is in by then).  A source's result lands in the run dict under its
name: the path in run[name], the format in run[name + "_format"], the size
in run["sizes"][name], its timings in run["timings"] and what else it
records in run["dump_info"][name].

"kdump" (QEMU's dump-guest-memory, kdump-zlib, reassembled with
``makedumpfile -R``) and "elf" (QEMU's ELF, paging off) are here; the
"kdump capture" sources ``capture-VARIANT-BUILD`` are in kdump.py (capture
kernel loaded with kexec -p, makedumpfile inside the guest writing onto a
raw virtio disk, ``makedumpfile -R`` on the host): their initramfs() adds
kexec, the capture kernel and its initramfs, qemu_args() the disk,
cmdline() crashkernel=, and take() lets the guest crash and waits for the
dump; they end the guest (ends_guest), so they are taken after every QMP
dump, and a run has at most one.

Helpers for dump files: elf_segments(), elf_phys_offset(),
elf_filtered_ranges() (makedumpfile -E's filtered pages), dump_info()
(format and real compression of a file), read_phys() and the VMCOREINFO
of dumps that do not carry it (riscv64: write_vmcoreinfo(), vmcoreinfo.txt).

These parse ELF and VMCOREINFO themselves, on purpose: they make the
guest's ground truth and check vmemspect's answers, so they share no code
with what they check (vmemspect/target.py, vmemspect/vmcoreinfo.py). Do
not replace them with vmemspect's parsers.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

from .common import TestbedError
from .qemu import QMP


@dataclasses.dataclass
class DumpContext:
    """What a source may use: the run's QMP connection, output dir, kernel;
    once QEMU runs, its process, the console and fail() (a TestbedError with
    the logs' tails, to raise)."""
    qmp: QMP | None
    out_dir: Path
    kdir: Path
    tmp: Path               # the run's private temporary directory
    timeout: float
    mem: str = ""           # the guest's memory (QEMU -m)
    arch: object = None     # kernels.Arch of the guest
    qemu: object = None     # qemu._Proc
    console: object = None  # truth.Console (its .lines hold every marker line so far)
    fail: object = None     # fail(msg) -> TestbedError
    state: dict = dataclasses.field(default_factory=dict)  # sources' own, by source name


@dataclasses.dataclass
class DumpResult:
    path: Path
    format: str
    timings: dict
    info: dict = dataclasses.field(default_factory=dict)   # -> run["dump_info"][name]


class DumpSource:
    """One way of dumping the guest (see the module doc)."""
    name = ""
    desc = ""               # one line for `testbed dumps` (default: the class doc's first)
    file = ""               # file name in the run's output dir
    ends_guest = False      # the guest is gone after take() (taken last)

    def paths(self, out_dir: Path) -> list[Path]:
        """Files of this source in out_dir (removed before a run)."""
        return [out_dir / self.file]

    def initramfs(self, ctx: DumpContext, initrd: Path) -> Path:
        """The guest's initramfs (default: the test bed's, ``initrd``)."""
        return initrd

    def qemu_args(self, ctx: DumpContext) -> list[str]:
        return []

    def cmdline(self, ctx: DumpContext) -> str:
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
    p_paddr, see elf_phys_offset); as large as the guest's RAM, made sparse
    (``fallocate --dig-holes``: a 2 GiB guest's 2.1 GB take about 80 MB of
    disk)."""
    name = "elf"
    file = "vmcore.elf"

    def take(self, ctx: DumpContext) -> DumpResult:
        out = ctx.out_dir / self.file
        dump_s = qmp_dump(ctx.qmp, out, None, ctx.timeout)
        os.chmod(out, 0o644)
        timings = {"elf_dump_s": round(dump_s, 2)}
        t0 = time.monotonic()
        if shutil.which("fallocate") and subprocess.run(
                ["fallocate", "--dig-holes", str(out)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL).returncode == 0:
            timings["elf_sparse_s"] = round(time.monotonic() - t0, 2)
        return DumpResult(out, "elf", timings, info={"disk_bytes": out.stat().st_blocks * 512})


DUMPS: dict[str, DumpSource] = {s.name: s for s in (QemuKdump(), QemuElf())}


def ordered(names) -> list[DumpSource]:
    """The sources named, those that end the guest last."""
    srcs = []
    for n in names:
        if n not in DUMPS:
            raise ValueError(f"unknown dump source {n!r}; have {', '.join(DUMPS)}")
        srcs.append(DUMPS[n])
    enders = [s.name for s in srcs if s.ends_guest]
    if len(enders) > 1:
        raise ValueError(f"dump sources {', '.join(enders)} each end the guest: a run takes one")
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
        # makedumpfile will not write over a file: a dump of an earlier run
        # into the same directory goes first.
        out.unlink(missing_ok=True)
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

def _elf_loads(path: str | os.PathLike) -> list[tuple[int, int, int, int]]:
    """PT_LOAD headers of an ELF64 core as (p_paddr, p_offset, p_filesz,
    p_memsz)."""
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
    loads = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<IIQQQQQ", ph, i * e_phentsize)
        if p_type == 1:
            loads.append((p_paddr, p_offset, p_filesz, p_memsz))
    return loads


def elf_segments(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """PT_LOAD segments of an ELF64 core as (p_paddr, p_offset, p_filesz)."""
    return [(paddr, offset, filesz) for paddr, offset, filesz, _ in _elf_loads(path)]


def elf_phys_offset(path: str | os.PathLike, phys_addr: int) -> int:
    """File offset of physical address phys_addr in an ELF dump (PT_LOAD
    p_paddr/p_offset/p_filesz).  Raises LookupError if it is not in the file."""
    for paddr, off, size in elf_segments(path):
        if paddr <= phys_addr < paddr + size:
            return off + (phys_addr - paddr)
    raise LookupError(f"physical address {phys_addr:#x} is in no PT_LOAD segment of {path}")


# ---------------------------------------------------------------- what a dump file is

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
    (drgn gives no error), so a reader has to treat them as missing.  (The
    test bed's own reading, independent of vmemspect's.)"""
    return sorted((paddr + filesz, paddr + memsz)
                  for paddr, _, filesz, memsz in _elf_loads(path) if memsz > filesz)


# ---------------------------------------------------------------- VMCOREINFO

def read_phys(path: str | os.PathLike, paddr: int, size: int) -> bytes:
    """``size`` bytes at physical address ``paddr`` of a dump: an ELF core
    (PT_LOAD p_paddr; pages between p_filesz and p_memsz read as zeros) or
    a plain kdump-compressed file (zlib, zstd (the zstd tool) or
    uncompressed pages; a page the dump left out reads as zeros).  The test
    bed's own reading, independent of vmemspect's and drgn's."""
    out = bytearray()
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic[:4] == b"\x7fELF":
            loads = _elf_loads(path)
            while len(out) < size:
                a = paddr + len(out)
                seg = next(((p, o, fs, ms) for p, o, fs, ms in loads if p <= a < p + ms), None)
                if seg is None:
                    raise LookupError(f"physical address {a:#x} is in no PT_LOAD segment of {path}")
                p, o, fs, ms = seg
                n = min(size - len(out), p + ms - a)
                if a < p + fs:
                    n = min(n, p + fs - a)
                    f.seek(o + a - p)
                    out += f.read(n)
                else:
                    out += bytes(n)
            return bytes(out)
        if magic not in (b"KDUMP   ", b"DISKDUMP"):
            raise ValueError(f"{path}: neither an ELF core nor a plain kdump-compressed file")
        f.seek(0)
        head = f.read(4096)
        _status, block_size, sub_hdr_size, bitmap_blocks, _max_mapnr = struct.unpack_from(
            "<IiiII", head, 424)
        bitmap_off = (1 + sub_hdr_size) * block_size
        half = bitmap_blocks * block_size // 2
        f.seek(bitmap_off + half)
        bm2 = int.from_bytes(f.read(half), "little")
        desc_off = (1 + sub_hdr_size + bitmap_blocks) * block_size
        while len(out) < size:
            a = paddr + len(out)
            pfn, in_page = a // block_size, a % block_size
            n = min(size - len(out), block_size - in_page)
            if not (bm2 >> pfn) & 1:
                out += bytes(n)
                continue
            index = (bm2 & ((1 << pfn) - 1)).bit_count()
            f.seek(desc_off + 24 * index)
            offset, csize, flags, _ = struct.unpack("<QIIQ", f.read(24))
            f.seek(offset)
            data = f.read(csize)
            if flags & 0x1:
                data = zlib.decompress(data)
            elif flags & 0x20:
                data = subprocess.run(["zstd", "-qdc"], input=data, stdout=subprocess.PIPE,
                                      check=True).stdout
            elif flags:
                raise ValueError(f"{path}: page {pfn:#x} compressed with flags {flags:#x} "
                                 "(lzo/snappy: not read here)")
            out += data[in_page:in_page + n]
        return bytes(out)


def parse_vmcoreinfo_note(buf: bytes) -> str:
    """The text of an ELF note named VMCOREINFO at the start of ``buf``
    (namesz, descsz, type, name padded to 4 bytes, desc)."""
    namesz, descsz, _type = struct.unpack_from("<III", buf, 0)
    name = buf[12:12 + namesz]
    if name != b"VMCOREINFO\0":
        raise ValueError(f"no VMCOREINFO note there (name {name[:16]!r}, namesz {namesz})")
    start = 12 + ((namesz + 3) & ~3)
    if start + descsz > len(buf):
        raise ValueError(f"VMCOREINFO note of {descsz} bytes runs past the {len(buf)} read")
    return buf[start:start + descsz].decode()


def embedded_vmcoreinfo(path: str | os.PathLike) -> str | None:
    """The VMCOREINFO a dump carries itself: an ELF core's VMCOREINFO note
    (PT_NOTE), or a kdump-compressed file's (sub-header offset_vmcoreinfo,
    size_vmcoreinfo); None if it has none (QEMU's dumps of riscv64)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if head[:4] == b"\x7fELF":
            e_phoff = struct.unpack_from("<Q", head, 0x20)[0]
            e_phentsize, e_phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(e_phoff)
            ph = f.read(e_phentsize * e_phnum)
            for i in range(e_phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", ph, i * e_phentsize)
                if p_type != 4:
                    continue
                f.seek(p_offset)
                notes = f.read(p_filesz)
                pos = 0
                while pos + 12 <= len(notes):
                    namesz, descsz, _ = struct.unpack_from("<III", notes, pos)
                    if notes[pos + 12:pos + 12 + namesz] == b"VMCOREINFO\0":
                        return parse_vmcoreinfo_note(notes[pos:])
                    pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
            return None
        if head[:8] not in (b"KDUMP   ", b"DISKDUMP"):
            raise ValueError(f"{path}: neither an ELF core nor a plain kdump-compressed file")
        block_size = struct.unpack_from("<i", head, 428)[0]
        f.seek(block_size)
        sub = f.read(64)
        off, size = struct.unpack_from("<QQ", sub, 32)
        if not off or not size:
            return None
        f.seek(off)
        return f.read(size).decode()


def vmcoreinfo_from_dump(path: str | os.PathLike, paddr: int, size: int) -> str:
    """The text of the VMCOREINFO note at physical address ``paddr`` (note
    buffer of ``size`` bytes: /sys/kernel/vmcoreinfo) of a dump."""
    return parse_vmcoreinfo_note(read_phys(path, paddr, size))


#: Where a run of an architecture without QEMU's vmcoreinfo device writes the
#: guest's VMCOREINFO text (exactly the note's descriptor).
VMCOREINFO_FILE = "vmcoreinfo.txt"


def write_vmcoreinfo(run: dict, out_dir: Path) -> dict | None:
    """For a run whose QEMU dumps carry no VMCOREINFO (Arch.vmcoreinfo_device
    False): write the note's text to out_dir/vmcoreinfo.txt and return what
    run["vmcoreinfo"] records::

      path, source ("qemu-dump": read out of the run's QEMU dump ``dump``
      at the physical address the guest printed; "capture": the kdump
      capture's own), dump, paddr, note_size, bytes,
      capture_agrees  (when both: the capture's text without its CRASHTIME
                       line is the same)

    The QEMU dumps go first: they were taken of the state the truth
    describes.  None when the run has no dump to read it from."""
    note = (run.get("truth") or {}).get("vmcoreinfo_note")
    qemu = [n for n in ("elf", "kdump") if run.get(n)]
    captures = [n for n, i in (run.get("dump_info") or {}).items() if i.get("source") == "kdump capture"]
    rec: dict = {}
    text = None
    if qemu and note:
        name = qemu[0]
        text = vmcoreinfo_from_dump(run[name], note["paddr"], note["size"])
        rec = {"source": "qemu-dump", "dump": run[name], "paddr": hex(note["paddr"]),
               "note_size": note["size"]}
    for name in captures:
        cap = embedded_vmcoreinfo(run[name])
        if cap is None:
            continue
        if text is None:
            text = cap
            rec = {"source": "capture", "dump": run[name]}
        else:
            strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("CRASHTIME=")]
            rec["capture_agrees"] = strip(cap) == strip(text)
        break
    if text is None:
        return None
    path = Path(out_dir) / VMCOREINFO_FILE
    path.write_text(text)
    rec.update(path=str(path), bytes=len(text.encode()))
    return rec
