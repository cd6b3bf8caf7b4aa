"""
Opening a kernel
----------------

:func:`open_live` and :func:`open_vmcore` return a ready :class:`drgn.Program`
with the kernel's types loaded, or raise :class:`VmemspectError` with one
line saying what is wrong and what to do. The types come from the kernel's
DWARF vmlinux when one is given or found, else from the BTF inside the
kernel itself (:mod:`vmemspect.btf`); the ``types`` key of :mod:`vmemspect.progcache` says
which: ``"dwarf"`` or ``"btf"``.
"""

import contextlib
import logging
import os
import struct
from typing import Iterator, List, Optional, Tuple

import drgn

from .btf import load_kernel_btf
from .errors import MissingMemory, VmemspectError
from .mmu import install_kernel_va
from .progcache import cache_get, cache_set
from .vmcoreinfo import parse_vmcoreinfo, program_vmcoreinfo, vmcoreinfo_release

__all__ = (
    "elf_core_info",
    "elf_filtered_ranges",
    "find_vmcoreinfo",
    "load_debug_info",
    "open_live",
    "open_vmcore",
    "read_vmcoreinfo_file",
    "setup_kernel_va",
)

_X86_64 = drgn.Platform(
    drgn.Architecture.X86_64,
    drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN,
)
_RISCV64 = drgn.Platform(
    drgn.Architecture.RISCV64,
    drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN,
)
_ARCHITECTURES = {"x86_64": _X86_64, "riscv64": _RISCV64}
#: ELF e_machine -> architecture.
_ELF_MACHINES = {62: "x86_64", 243: "riscv64"}


@contextlib.contextmanager
def _drgn_quiet() -> Iterator[None]:
    """drgn logs its own warnings ("missing debugging symbols...") on stderr;
    vmemspect says the same in its one error line instead."""
    logger = logging.getLogger("drgn")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _release(prog: drgn.Program) -> str:
    return vmcoreinfo_release(prog) or "RELEASE"


def load_debug_info(prog: drgn.Program, vmlinux: Optional[str]) -> None:
    """
    Load the kernel's types: from ``vmlinux`` when given (its build ID must
    match the kernel's), else by drgn's usual search (``/usr/lib/debug``,
    ``/boot``, ``/lib/modules/$(uname -r)``...), else from the kernel's BTF
    and kallsyms (no debug package needed).
    """
    if vmlinux is not None:
        if not os.path.exists(vmlinux):
            raise VmemspectError(f"{vmlinux}: no such file", "check the -s/--vmlinux path")
        try:
            with _drgn_quiet():
                prog.load_debug_info([vmlinux], default=False)
        except drgn.MissingDebugInfoError:
            pass
        try:
            main = prog.main_module()
        except LookupError:
            main = None
        if main is None or main.wants_debug_file():
            raise VmemspectError(
                f"{vmlinux} is not the debug info of kernel {_release(prog)} "
                f"(its build ID does not match the kernel's)",
                f"pass the vmlinux of {_release(prog)} "
                f"(Debian: package linux-image-{_release(prog)}-dbg)",
            )
        cache_set(prog, "types", "dwarf")
        return
    # drgn warns on stderr about the missing vmlinux; BTF makes up for it.
    try:
        with _drgn_quiet():
            prog.load_default_debug_info()
        missing = False
    except drgn.MissingDebugInfoError:
        try:
            main = prog.main_module()
            missing = main.wants_debug_file()
        except LookupError:
            missing = True
    if missing:
        load_kernel_btf(prog)
    else:
        cache_set(prog, "types", "dwarf")


_PT_LOAD = 1
_PT_NOTE = 4


def _elf_headers(path: str) -> Optional[Tuple[int, List[Tuple[int, int, int, int, int, int]]]]:
    """
    ``(e_machine, program headers)`` of a little-endian ELF64 file, each
    header as (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz); None
    for anything else (kdump-compressed files, truncated ones).
    """
    try:
        with open(path, "rb") as f:
            ehdr = f.read(64)
            if len(ehdr) < 64 or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
                return None
            machine = struct.unpack_from("<H", ehdr, 0x12)[0]
            phoff, shoff = struct.unpack_from("<QQ", ehdr, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", ehdr, 0x36)
            if phnum == 0xFFFF:  # PN_XNUM: the count is in section 0's sh_info
                f.seek(shoff)
                phnum = struct.unpack_from("<I", f.read(64), 0x2C)[0]
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return None
    headers = []
    for i in range(min(phnum, len(table) // max(phentsize, 1))):
        p_type, _, offset, vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<IIQQQQQ", table, i * phentsize)
        headers.append((p_type, offset, vaddr, paddr, filesz, memsz))
    return machine, headers


def elf_filtered_ranges(path: str) -> List[Tuple[int, int, int]]:
    """
    The memory an ELF vmcore describes but does not hold: for each PT_LOAD
    whose ``p_memsz`` exceeds its ``p_filesz``, the part past the file data,
    less what another PT_LOAD holds, as (physical start, end, virtual start
    or 0). makedumpfile's ELF output (``-E``) leaves the pages it filters
    there, and a reader fills them with zeros: kernel data that is not.
    Empty for anything but a little-endian ELF64 file.
    """
    parsed = _elf_headers(path)
    if parsed is None:
        return []
    loads = [(paddr, vaddr, filesz, memsz)
             for p_type, _, vaddr, paddr, filesz, memsz in parsed[1] if p_type == _PT_LOAD]
    held = sorted((paddr, paddr + filesz) for paddr, _, filesz, _ in loads if filesz)
    out = []
    for paddr, vaddr, filesz, memsz in loads:
        start, end = paddr + filesz, paddr + memsz
        # Less what other segments hold (a later segment may fill the gap).
        for lo, hi in held:
            if hi <= start or lo >= end:
                continue
            if lo > start:
                out.append((start, lo, vaddr + (start - paddr) if vaddr else 0))
            start = max(start, hi)
        if start < end:
            out.append((start, end, vaddr + (start - paddr) if vaddr else 0))
    return out


def _mark_filtered(prog: drgn.Program, path: str) -> None:
    """Make the pages an ELF vmcore filtered out fault on read, as the
    kdump-compressed format's missing pages do, instead of reading as zeros:
    a zero read there would be judged as kernel data. (drgn uses the segment
    added last where segments overlap.)"""
    ranges = elf_filtered_ranges(path)

    def missing(address: int, count: int, offset: int, physical: bool) -> bytes:
        raise drgn.FaultError("filtered out of the dump (ELF p_filesz < p_memsz)", address)

    for start, end, vstart in ranges:
        prog.add_memory_segment(start, end - start, missing, physical=True)
        if vstart:
            prog.add_memory_segment(vstart, end - start, missing, physical=False)
    cache_set(prog, "filtered_ranges", len(ranges))


#: Page descriptor flags of the kdump-compressed format (makedumpfile's
#: diskdump_mod.h): the compression of each page.
_KDUMP_COMPRESSIONS = {0x1: "zlib", 0x2: "lzo", 0x4: "snappy", 0x20: "zstd"}


def kdump_compressions(path: str, sample: int = 4096) -> List[str]:
    """
    The compressions the pages of a kdump-compressed file use (from the
    flags of its first ``sample`` page descriptors), or [] for another
    format. Read from the file alone, so vmemspect can name a compression
    its libkdumpfile cannot read.
    """
    try:
        with open(path, "rb") as f:
            header = f.read(464)
            if header[:8] not in (b"KDUMP   ", b"DISKDUMP") or len(header) < 464:
                return []
            # struct disk_dump_header on 64-bit: block_size, sub_hdr_size,
            # bitmap_blocks follow the 390-byte utsname, a timeval, status.
            block_size, sub_hdr_size, bitmap_blocks = struct.unpack_from("<iiI", header, 428)
            f.seek((1 + sub_hdr_size + bitmap_blocks) * block_size)
            table = f.read(24 * sample)
    except (OSError, struct.error):
        return []
    found = set()
    for i in range(len(table) // 24):
        flags = struct.unpack_from("<I", table, 24 * i + 12)[0]
        found.update(name for bit, name in _KDUMP_COMPRESSIONS.items() if flags & bit)
    return sorted(found)


def _compression_error(path: str, text: str) -> VmemspectError:
    """libkdumpfile's error about a page's compression, as one line: a
    method it was built without ("Unsupported compression method: snappy"),
    or a page that does not decompress (a truncated or damaged file)."""
    methods = ", ".join(kdump_compressions(path)) or "an unknown compression"
    if "nsupported" in text:
        return VmemspectError(
            f"{path} is compressed with {methods}, which this drgn (libkdumpfile) cannot read",
            f"convert it where makedumpfile can read it: makedumpfile -E -d 31 {path} "
            f"{path}.elf (or -z/-c/-l for zstd, zlib, lzo)",
        )
    return VmemspectError(
        f"{path} is truncated or damaged: a page ({methods}) does not decompress",
        "take the dump again (or, if its compression is one this drgn lacks, convert it "
        f"where makedumpfile reads it: makedumpfile -E -d 31 {path} {path}.elf)",
    )


def elf_core_info(path: str) -> Tuple[Optional[str], bool]:
    """
    For an ELF core file: its architecture (from ``e_machine``; None if
    vmemspect does not know it) and whether a PT_NOTE holds a VMCOREINFO
    note. ``(None, False)`` for anything else (kdump-compressed files carry
    VMCOREINFO in their own header).
    """
    parsed = _elf_headers(path)
    if parsed is None:
        return None, False
    machine, headers = parsed
    found = False
    try:
        with open(path, "rb") as f:
            for p_type, offset, _, _, filesz, _ in headers:
                if p_type != _PT_NOTE or filesz > 1 << 24:
                    continue
                f.seek(offset)
                notes = f.read(filesz)
                at = 0
                while at + 12 <= len(notes):
                    namesz, descsz, _ = struct.unpack_from("<III", notes, at)
                    if notes[at + 12:at + 12 + namesz].rstrip(b"\0") == b"VMCOREINFO":
                        found = True
                    at += 12 + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    except OSError:
        return None, False
    return _ELF_MACHINES.get(machine), found


def read_vmcoreinfo_file(path: str) -> bytes:
    """
    The VMCOREINFO text in ``path``: the guest's ``KEY=value`` lines, as the
    kernel's VMCOREINFO note holds them (``OSRELEASE=...``, ``PAGESIZE=...``,
    ``SYMBOL(...)=...``). For dumps without the note (QEMU riscv64).

    :raises VmemspectError: if the file cannot be read or is not VMCOREINFO.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise VmemspectError(f"{path}: cannot read the VMCOREINFO file ({e.strerror})",
                             "check the --vmcoreinfo path")
    data = data.split(b"\0", 1)[0]
    info = parse_vmcoreinfo(data)
    if "OSRELEASE" not in info or "PAGESIZE" not in info:
        raise VmemspectError(
            f"{path} is not VMCOREINFO text (no OSRELEASE= and PAGESIZE= lines)",
            "give the text of the guest's VMCOREINFO note (docs/riscv64.md)")
    return data if data.endswith(b"\n") else data + b"\n"


#: An ELF note named VMCOREINFO whose text starts as the kernel writes it.
_NOTE_TEXT = b"VMCOREINFO\x00\x00OSRELEASE="


def vmcoreinfo_candidates(path: str, at: Optional[int] = None) -> List[Tuple[int, bytes]]:
    """
    VMCOREINFO notes in the memory of an ELF dump, as (physical address,
    text): the one at physical address ``at`` (what the guest's
    ``/sys/kernel/vmcoreinfo`` says), or every one found by searching all
    of memory for the note's header (``VMCOREINFO`` then ``OSRELEASE=``).
    A search can find stale copies (a kexec'd kernel's); see
    :func:`find_vmcoreinfo`.
    """
    import mmap

    out = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            parsed = _elf_headers(path)
            loads = [(offset, paddr, filesz) for p_type, offset, _, paddr, filesz, _
                     in (parsed[1] if parsed else []) if p_type == _PT_LOAD and filesz]
            for offset, paddr, filesz in loads:
                end = min(offset + filesz, size)
                if at is not None:
                    if not paddr <= at < paddr + filesz:
                        continue
                    start = offset + (at - paddr)
                    hdr = m[start:start + 24]
                    if hdr[12:24] != _NOTE_TEXT[:12]:
                        continue
                    found = [start + 12]
                else:
                    found, pos = [], m.find(_NOTE_TEXT, offset, end)
                    while pos >= 0:
                        found.append(pos)
                        pos = m.find(_NOTE_TEXT, pos + 1, end)
                for name_at in found:
                    namesz, descsz, _ = struct.unpack_from("<III", m, name_at - 12)
                    if namesz != 11 or not 0 < descsz < 1 << 16:
                        continue
                    text = m[name_at + 12:name_at + 12 + descsz].split(b"\0", 1)[0]
                    out.append((paddr + (name_at - 12 - offset), text))
    return out


def _release_matches(path: str, info: bytes, arch: Optional[str]) -> bool:
    """The kernel's own ``init_uts_ns`` release, read through the page
    tables this VMCOREINFO names, equals its OSRELEASE: the note belongs
    to the kernel that wrote the dump (a stale copy names other tables)."""
    keys = parse_vmcoreinfo(info)
    try:
        uts = int(keys["SYMBOL(init_uts_ns)"], 16) + int(keys.get("OFFSET(uts_namespace.name)",
                                                                   "0"))
        prog = drgn.Program(_ARCHITECTURES[arch] if arch else None, vmcoreinfo=info)
        with _drgn_quiet():
            prog.set_core_dump(path)
        setup_kernel_va(prog)
        # struct new_utsname: sysname[65], nodename[65], release[65].
        release = prog.read(uts + 130, 65).split(b"\0", 1)[0].decode()
    except Exception:
        return False
    return release == keys.get("OSRELEASE")


def find_vmcoreinfo(path: str, at: Optional[int] = None) -> Tuple[int, bytes]:
    """
    The VMCOREINFO text of the kernel in an ELF dump that lacks the note
    (QEMU's riscv64 dumps): at physical address ``at``, or found by
    searching memory, keeping only a note whose page tables read back its
    own OSRELEASE from ``init_uts_ns``.

    :raises VmemspectError: if none is found or none checks out.
    """
    if not os.path.isfile(path):
        raise VmemspectError(f"{path}: no such file", "give the path of an ELF vmcore")
    arch, _ = elf_core_info(path)
    if arch is None:
        raise VmemspectError(f"{path} is not an ELF dump of a known architecture",
                             "vmcoreinfo reads ELF dumps (x86_64, riscv64)")
    candidates = vmcoreinfo_candidates(path, at)
    good = [(paddr, text) for paddr, text in candidates if _release_matches(path, text, arch)]
    if not good:
        where = f"at physical address {at:#x}" if at is not None else "in its memory"
        raise VmemspectError(
            f"{path}: no VMCOREINFO of the dumped kernel {where} "
            f"({len(candidates)} note(s) found, none reading back its own release)",
            "give the address the guest's /sys/kernel/vmcoreinfo shows (--at), or take "
            "the dump with kdump")
    return good[0]


def _drgn_translates(prog: drgn.Program, info: dict) -> bool:
    """drgn itself reads the struct page of the first RAM frame
    (VMCOREINFO's ``SYMBOL(vmemmap)`` + ``NUMBER(phys_ram_base)`` pages of
    ``SIZE(page)``): true of a drgn that walks riscv64 page tables; false of
    drgn 0.3.0 on a riscv64 dump, and on riscv64's /proc/kcore too, whose
    segments below PAGE_OFFSET (vmemmap, vmalloc) have file offsets above
    2^63 (``vaddr - PAGE_OFFSET`` wrapped), so reading them fails with
    EINVAL (seen on Debian 6.12 and 7.2)."""
    try:
        vmemmap = int(info["SYMBOL(vmemmap)"], 16)
        ram_pfn = int(info["NUMBER(phys_ram_base)"], 0) >> 12
        address = vmemmap + ram_pfn * int(info.get("SIZE(page)", "64"))
    except (KeyError, ValueError):
        return False
    try:
        prog.read(address & ((1 << 64) - 1), 8)
        return True
    except (drgn.FaultError, OSError, ValueError, NotImplementedError):
        return False


def setup_kernel_va(prog: drgn.Program) -> None:
    """
    Make kernel virtual addresses readable where drgn cannot translate them
    (riscv64: drgn 0.3.0 has no riscv64 page tables): install vmemspect's
    walker as a memory segment (:func:`vmemspect.mmu.install_kernel_va`)
    and serve ``vmemmap`` (VMCOREINFO's ``SYMBOL(vmemmap)``) if drgn
    does not.
    Nothing happens on x86_64 or where drgn translates by itself.

    :raises VmemspectError: if VMCOREINFO does not say where the tables
        are, or the top table is not in the dump.
    """
    if prog.platform is None or prog.platform.arch != drgn.Architecture.RISCV64:
        return
    if cache_get(prog, "va") is not None:
        return
    info = program_vmcoreinfo(prog)
    try:
        how = install_kernel_va(prog, info, probe=lambda p: _drgn_translates(p, info))
    except ValueError as e:
        raise VmemspectError(f"cannot read riscv64 kernel addresses: {e}",
                             "give a dump whose VMCOREINFO is complete (--vmcoreinfo FILE)")
    except MissingMemory as e:
        raise VmemspectError(f"cannot read riscv64 kernel addresses: {e}",
                             "the dump lacks the kernel's top page table: take a complete dump")
    cache_set(prog, "va", how or "drgn's own translation")
    _serve_vmemmap(prog, info)


def _serve_vmemmap(prog: drgn.Program, info: dict) -> None:
    """An object finder for ``vmemmap`` (drgn's pfn_to_page() needs it),
    consulted after drgn's own: riscv64's is a macro (``VMEMMAP_START -
    vmemmap_start_pfn``, whose start pfn changed across releases), whose
    value the kernel writes as VMCOREINFO's ``SYMBOL(vmemmap)``."""
    try:
        address = int(info["SYMBOL(vmemmap)"], 16)
    except (KeyError, ValueError):
        return

    def find(prog: drgn.Program, name: str, flags, filename) -> Optional[drgn.Object]:
        if name != "vmemmap" or filename is not None:
            return None
        try:
            return drgn.Object(prog, prog.pointer_type(prog.type("struct page")), address)
        except LookupError:
            return None

    prog.register_object_finder("vmemspect-riscv64-vmemmap", find, enable_index=-1)


def open_vmcore(
    path: str, vmlinux: Optional[str] = None, architecture: Optional[str] = None,
    vmcoreinfo: Optional[str] = None,
) -> drgn.Program:
    """
    Open an ELF or kdump-compressed vmcore (QEMU's ``dump-guest-memory``
    dumps included; their kdump format does not name the architecture, so
    x86_64 is assumed when libkdumpfile cannot tell).

    :param vmcoreinfo: a file holding the kernel's VMCOREINFO text, for a
        dump without the note (QEMU's riscv64 ELF dumps); it overrides the
        dump's own.
    """
    if not os.path.exists(path):
        raise VmemspectError(f"{path}: no such file", "give the path of a vmcore")
    if os.path.isdir(path):
        raise VmemspectError(f"{path} is a directory", "give the path of a vmcore file")
    if os.path.getsize(path) == 0:
        raise VmemspectError(f"{path} is empty", "give a complete vmcore")
    info = read_vmcoreinfo_file(vmcoreinfo) if vmcoreinfo is not None else None
    elf_arch, elf_has_info = elf_core_info(path)
    if architecture is None:
        architecture = elf_arch or (_vmcoreinfo_arch(info) if info else None)
    if info is None and elf_arch is not None and not elf_has_info:
        raise _no_vmcoreinfo(path, elf_arch)
    platforms = [_ARCHITECTURES[architecture]] if architecture else [None, _X86_64]
    last_error: Optional[Exception] = None
    for platform in platforms:
        prog = drgn.Program(platform, vmcoreinfo=info)
        try:
            with _drgn_quiet():
                prog.set_core_dump(path)
        except Exception as e:  # libkdumpfile raises plain Exception
            last_error = e
            # libkdumpfile: "KDUMP_ATTR_ARCH_NAME: Key has no value".
            if "ARCH" in str(e) or "arch" in str(e):
                continue
            break
        else:
            if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
                raise _no_vmcoreinfo(path, architecture or "x86_64")
            _mark_filtered(prog, path)
            setup_kernel_va(prog)
            load_debug_info(prog, vmlinux)
            return prog
    text = str(last_error)
    if "ompression" in text:
        raise _compression_error(path, text)
    if "vmcoreinfo" in text.lower() or "NT_AUXV" in text:
        raise _no_vmcoreinfo(path, architecture or "x86_64")
    raise VmemspectError(
        f"{path} is not a usable vmcore ({last_error})",
        "give an ELF or kdump-compressed kernel dump; a truncated or damaged one cannot be opened",
    )


def _vmcoreinfo_arch(info: bytes) -> Optional[str]:
    """The architecture VMCOREINFO text names by a key only it writes
    (riscv64: ``NUMBER(va_kernel_pa_offset)``; x86_64:
    ``SYMBOL(init_top_pgt)``), for a dump that does not say (QEMU's
    kdump-compressed riscv64 dumps name no machine)."""
    keys = parse_vmcoreinfo(info)
    if "NUMBER(va_kernel_pa_offset)" in keys:
        return "riscv64"
    if "SYMBOL(init_top_pgt)" in keys:
        return "x86_64"
    return None


def _no_vmcoreinfo(path: str, arch: str) -> VmemspectError:
    """A dump without VMCOREINFO: what to do depends on the architecture
    (QEMU adds the note on x86_64 with -device vmcoreinfo; riscv virt
    refuses that device)."""
    if arch == "riscv64":
        return VmemspectError(
            f"{path} has no VMCOREINFO note, so it cannot be read as a Linux kernel dump "
            "(QEMU's riscv64 dumps never have one)",
            f"get it from the dump (vmemspect vmcoreinfo {path} > FILE) and pass "
            "--vmcoreinfo FILE (docs/riscv64.md)")
    return VmemspectError(
        f"{path} has no VMCOREINFO, so it cannot be read as a Linux kernel dump",
        "take the dump with VMCOREINFO (kdump and makedumpfile add it; QEMU needs "
        "-device vmcoreinfo and the qemu_fw_cfg module loaded in the guest), "
        f"or find it in the dump (vmemspect vmcoreinfo {path} > FILE) and pass "
        "--vmcoreinfo FILE",
    )


def _lockdown(path: str = "/sys/kernel/security/lockdown") -> Optional[str]:
    """The kernel's lockdown mode ("none", "integrity", "confidentiality"):
    the bracketed word of ``path``; None if it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


#: capability(7) number of CAP_SYS_RAWIO, which open("/proc/kcore") needs.
CAP_SYS_RAWIO = 17


def _has_capability(cap: int, path: str = "/proc/self/status") -> Optional[bool]:
    """Whether this process has capability ``cap`` in its effective set
    (CapEff of ``path``); None if that cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _kallsyms_hidden(path: str = "/proc/kallsyms", lines: int = 64) -> bool:
    """/proc/kallsyms shows every address as 0 (kptr_restrict, or
    perf_event_paranoid > 1 without CAP_SYSLOG): symbols cannot be placed."""
    try:
        with open(path) as f:
            addresses = [line.split(" ", 1)[0] for _, line in zip(range(lines), f)]
    except OSError:
        return False
    return bool(addresses) and all(int(a, 16) == 0 for a in addresses)


_KALLSYMS_HIDDEN = VmemspectError(
    "/proc/kallsyms shows every address as 0, so the kernel's BTF cannot be placed "
    "(kptr_restrict: reading real addresses needs CAP_SYSLOG)",
    "run as root with CAP_SYSLOG (systemd: CapabilityBoundingSet=CAP_SYS_RAWIO CAP_SYSLOG), "
    "or give the kernel's DWARF vmlinux (-s; Debian: linux-image-$(uname -r)-dbg)")


def open_live(vmlinux: Optional[str] = None) -> drgn.Program:
    """Open the running kernel through /proc/kcore (needs root)."""
    prog = drgn.Program()
    try:
        prog.set_kernel()
    except PermissionError:
        lockdown = _lockdown()
        if os.geteuid() == 0 and lockdown == "confidentiality":
            raise VmemspectError(
                "the kernel's lockdown (confidentiality, /sys/kernel/security/lockdown) "
                "forbids reading /proc/kcore, even as root",
                "inspect a kdump vmcore of this host instead (vmemspect vmcore DUMP)",
            )
        if os.geteuid() == 0 and _has_capability(CAP_SYS_RAWIO) is False:
            # A capability bounding set (systemd's CapabilityBoundingSet=,
            # a container) that drops it: /proc/kcore refuses root too.
            raise VmemspectError(
                "cannot read /proc/kcore: running as root without CAP_SYS_RAWIO, "
                "which /proc/kcore requires",
                "keep CAP_SYS_RAWIO (systemd: CapabilityBoundingSet=CAP_SYS_RAWIO ...; "
                "contrib/systemd/vmemspect-metrics.service)",
            )
        if os.geteuid() == 0:
            # Root is refused only by a security policy: lockdown (whose mode
            # cannot be read without securityfs) or an LSM.
            raise VmemspectError(
                "cannot read /proc/kcore although running as root: the kernel's lockdown "
                "or a security module forbids it (mount securityfs to see "
                "/sys/kernel/security/lockdown)",
                "inspect a kdump vmcore of this host instead (vmemspect vmcore DUMP)",
            )
        raise VmemspectError(
            "cannot read /proc/kcore: permission denied",
            "run vmemspect live as root (e.g. with sudo)",
        )
    except (OSError, ValueError) as e:
        raise VmemspectError(
            f"cannot open the running kernel ({e})",
            "check that /proc/kcore exists (CONFIG_PROC_KCORE) and that you are root",
        )
    try:
        setup_kernel_va(prog)
        load_debug_info(prog, vmlinux)
    except (drgn.FaultError, VmemspectError):
        if vmlinux is None and _kallsyms_hidden():
            raise _KALLSYMS_HIDDEN from None
        raise
    if cache_get(prog, "types") == "btf" and _kallsyms_hidden():
        raise _KALLSYMS_HIDDEN
    return prog
