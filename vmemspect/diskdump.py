"""
kdump-compressed files
----------------------

Writing and listing the kdump-compressed ("diskdump") format that
makedumpfile writes and libkdumpfile (drgn's reader of such dumps), crash
and makedumpfile itself read: a header, a sub-header with the ELF notes
(VMCOREINFO among them), the page bitmap, a descriptor per page held, then
the pages, each compressed with zlib on its own (stored as is when zlib
does not make it smaller)::

    >>> write_diskdump("small.kdump", pages, vmcoreinfo, DiskdumpInfo(max_mapnr=0x80000))
    >>> list(read_page_list("small.kdump"))[:3]
    [1, 2, 3]

A page not written is absent from the second bitmap: libkdumpfile reports
it as "Excluded page" (drgn raises :class:`drgn.FaultError`), never as
zeros. This module knows only the file format; what goes into a file is
:mod:`vmemspect.extract`'s business.

Layout (64-bit, little-endian, blocks of 4096 bytes), as libkdumpfile's
``diskdump.c`` reads it: block 0 ``struct disk_dump_header`` (header
version 6), blocks 1.. ``struct kdump_sub_header`` followed by the notes,
then ``bitmap_blocks`` blocks holding the first bitmap (memory present) and
the second (pages held), then ``struct page_desc`` for each page held in
pfn order, then the page data. The bitmap area holds one bitmap (the pages
held) when the machine has more than 16384 pages: makedumpfile writes two
(memory present, then pages held), and readers tell the two layouts apart
by the area's size.
"""

import dataclasses
import struct
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

from .errors import VmemspectError

__all__ = (
    "BLOCK_SIZE",
    "DiskdumpInfo",
    "DiskdumpLayout",
    "compress_page",
    "elf_note",
    "read_diskdump_header",
    "read_page_list",
    "write_diskdump",
)

#: Page and block size (x86_64).
BLOCK_SIZE = 4096
_SIGNATURE = b"KDUMP   "
_HEADER_VERSION = 6
_UTS_LEN = 65
# struct disk_dump_header (64-bit): signature, header_version, utsname (6 x
# 65 bytes), pad, timestamp (tv_sec, tv_usec), status, block_size,
# sub_hdr_size, bitmap_blocks, max_mapnr, total_ram_blocks, device_blocks,
# written_blocks, current_cpu, nr_cpus.
_HEADER = struct.Struct("<8si390s6sqqIiiIIIIIIi")
# struct kdump_sub_header (64-bit): phys_base, dump_level, split, start_pfn,
# end_pfn, offset_vmcoreinfo, size_vmcoreinfo, offset_note, size_note,
# offset_eraseinfo, size_eraseinfo, start_pfn_64, end_pfn_64, max_mapnr_64.
_SUB_HEADER = struct.Struct("<QiiQQQQQQQQQQQ")
# struct page_desc: offset, size, flags, page_flags.
_PAGE_DESC = struct.Struct("<QIIQ")
DUMP_DH_COMPRESSED_ZLIB = 0x1
_NT_VMCOREINFO = 0


@dataclasses.dataclass
class DiskdumpInfo:
    """What the header says besides the pages."""

    #: One more than the highest pfn the machine has (reads at or above it
    #: are "Out-of-bounds PFN"; below it, pages not written are "Excluded").
    max_mapnr: int
    #: utsname: sysname, nodename, release, version, machine, domainname.
    utsname: Tuple[str, str, str, str, str, str] = ("Linux", "", "", "", "x86_64", "")
    phys_base: int = 0
    nr_cpus: int = 1
    #: makedumpfile's dump level (-d); informational.
    dump_level: int = 31


def compress_page(data: bytes, level: int = 6) -> Tuple[int, bytes]:
    """(flags, bytes) of a page as stored: zlib when smaller, else raw."""
    packed = zlib.compress(data, level)
    if len(packed) < len(data):
        return DUMP_DH_COMPRESSED_ZLIB, packed
    return 0, bytes(data)


def elf_note(name: bytes, note_type: int, desc: bytes) -> bytes:
    """One ELF note (Elf64_Nhdr, name and descriptor each padded to 4 bytes)."""
    name0 = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name0), len(desc), note_type) + pad(name0) + pad(desc)


def _uts_field(s: str) -> bytes:
    b = s.encode()[:_UTS_LEN - 1]
    return b + b"\0" * (_UTS_LEN - len(b))


@dataclasses.dataclass
class DiskdumpLayout:
    """Where the bytes of a written file went."""

    #: Size of the file (apparent: the bitmap's holes count).
    size: int
    #: Header, sub-header and notes.
    header_bytes: int
    #: The page bitmap(s), holes included, and the blocks of it that are not
    #: all zeros (what takes disk space).
    bitmap_bytes: int
    bitmap_nonzero_bytes: int
    #: Page descriptors (24 bytes a page) and page data.
    descriptor_bytes: int
    data_bytes: int


def write_diskdump(
    path: str,
    pages: Dict[int, Tuple[int, bytes]],
    vmcoreinfo: bytes,
    info: DiskdumpInfo,
) -> DiskdumpLayout:
    """
    Write a kdump-compressed file holding ``pages`` (pfn -> (flags, data)
    as :func:`compress_page` returns) and a VMCOREINFO note; return where
    its bytes went. Identical stored pages share their data. Blocks of the
    bitmap that are all zeros are left as holes (a sparse file).

    :raises VmemspectError: if ``path`` cannot be written.
    """
    pfns = sorted(pages)
    if pfns and pfns[-1] >= info.max_mapnr:
        raise ValueError(f"pfn {pfns[-1]:#x} beyond max_mapnr {info.max_mapnr:#x}")
    notes = elf_note(b"VMCOREINFO", _NT_VMCOREINFO, vmcoreinfo)
    # The VMCOREINFO text inside its note: after the 12-byte header and the
    # padded name "VMCOREINFO\0".
    vmcoreinfo_in_note = 12 + 12
    sub_size = _SUB_HEADER.size + len(notes)
    sub_hdr_blocks = -(-sub_size // BLOCK_SIZE)
    bitmap_len = -(-info.max_mapnr // 8)
    one_bitmap_blocks = max(1, -(-bitmap_len // BLOCK_SIZE))
    # One bitmap (pages held) where it can be told from two: libkdumpfile
    # and crash take the bitmap area as two halves (memory present, pages
    # held) only when it is twice the size max_mapnr needs.
    copies = 1 if info.max_mapnr > one_bitmap_blocks * BLOCK_SIZE * 8 // 2 else 2
    bitmap_blocks = copies * one_bitmap_blocks
    bitmap = bytearray(one_bitmap_blocks * BLOCK_SIZE)
    for pfn in pfns:
        bitmap[pfn >> 3] |= 1 << (pfn & 7)
    offset_note = BLOCK_SIZE + _SUB_HEADER.size
    sub = _SUB_HEADER.pack(
        info.phys_base & 0xFFFFFFFFFFFFFFFF, info.dump_level, 0, 0, info.max_mapnr,
        offset_note + vmcoreinfo_in_note, len(vmcoreinfo),
        offset_note, len(notes),
        0, 0,
        0, info.max_mapnr, info.max_mapnr,
    )
    uts = b"".join(_uts_field(s) for s in info.utsname)
    # tv_usec stays 0: libkdumpfile tries the 32-bit header layout first,
    # whose block_size lies where the 64-bit tv_usec does.
    header = _HEADER.pack(
        _SIGNATURE, _HEADER_VERSION, uts, b"\0" * 6, 0, 0,
        DUMP_DH_COMPRESSED_ZLIB, BLOCK_SIZE, sub_hdr_blocks, bitmap_blocks,
        min(info.max_mapnr, 0xFFFFFFFF), len(pfns), 0, len(pfns), 0, info.nr_cpus,
    )
    desc_offset = (1 + sub_hdr_blocks + bitmap_blocks) * BLOCK_SIZE
    data_offset = desc_offset + len(pfns) * _PAGE_DESC.size
    descs = bytearray()
    data: List[bytes] = []
    shared: Dict[bytes, int] = {}
    at = data_offset
    for pfn in pfns:
        flags, blob = pages[pfn]
        key = bytes([flags]) + blob
        offset = shared.get(key)
        if offset is None:
            offset = shared[key] = at
            data.append(blob)
            at += len(blob)
        descs += _PAGE_DESC.pack(offset, len(blob), flags, 0)
    nonzero = 0
    try:
        with open(path, "wb") as f:
            f.write(header.ljust(BLOCK_SIZE, b"\0"))
            f.write((sub + notes).ljust(sub_hdr_blocks * BLOCK_SIZE, b"\0"))
            # The bitmap (with two: memory present, taken as the pages held,
            # then the pages held); zero blocks become holes.
            for _ in range(copies):
                for i in range(0, len(bitmap), BLOCK_SIZE):
                    block = bitmap[i:i + BLOCK_SIZE]
                    if any(block):
                        f.write(block)
                        nonzero += len(block)
                    else:
                        f.seek(BLOCK_SIZE, 1)
            f.seek(desc_offset)
            f.write(descs)
            for blob in data:
                f.write(blob)
            f.truncate(at)
    except OSError as e:
        raise VmemspectError(f"cannot write {path} ({e.strerror or e})",
                             "give a writable path for the extract")
    return DiskdumpLayout(
        size=at,
        header_bytes=(1 + sub_hdr_blocks) * BLOCK_SIZE,
        bitmap_bytes=bitmap_blocks * BLOCK_SIZE,
        bitmap_nonzero_bytes=nonzero,
        descriptor_bytes=data_offset - desc_offset,
        data_bytes=at - data_offset,
    )


def read_diskdump_header(path: str) -> Optional[dict]:
    """
    The header fields of a kdump-compressed file (64-bit little-endian,
    not flattened), or None for any other file: ``max_mapnr``,
    ``bitmap_offset``, ``bitmap_blocks``, ``utsname``, ``nr_cpus``,
    ``phys_base``, ``header_version``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(BLOCK_SIZE + _SUB_HEADER.size)
    except OSError:
        return None
    if len(head) < BLOCK_SIZE + _SUB_HEADER.size or head[:8] not in (_SIGNATURE, b"DISKDUMP"):
        return None
    (_, version, uts, _, _, _, _, block_size, sub_hdr_size, bitmap_blocks, max_mapnr,
     _, _, _, _, nr_cpus) = _HEADER.unpack_from(head)
    if block_size != BLOCK_SIZE:
        return None
    sub = _SUB_HEADER.unpack_from(head, BLOCK_SIZE)
    if version >= 6 and sub[13]:
        max_mapnr = sub[13]
    names = [uts[i * _UTS_LEN:(i + 1) * _UTS_LEN].split(b"\0")[0].decode(errors="replace")
             for i in range(6)]
    return {
        "header_version": version,
        "max_mapnr": max_mapnr,
        "bitmap_offset": (1 + sub_hdr_size) * block_size,
        "bitmap_blocks": bitmap_blocks,
        "utsname": tuple(names),
        "nr_cpus": nr_cpus,
        "phys_base": sub[0],
    }


def read_page_list(path: str) -> Iterator[int]:
    """
    The pfns a kdump-compressed file holds, from its own second bitmap, in
    order.

    :raises VmemspectError: if ``path`` is not such a file.
    """
    h = read_diskdump_header(path)
    if h is None:
        raise VmemspectError(f"{path} is not a kdump-compressed file", "give one vmemspect wrote")
    size = h["bitmap_blocks"] * BLOCK_SIZE
    offset = h["bitmap_offset"]
    if h["max_mapnr"] <= size * 8 // 2:
        # Two bitmaps: the second says which pages the file holds.
        size //= 2
        offset += size
    with open(path, "rb") as f:
        f.seek(offset)
        bitmap = f.read(size)
    limit = h["max_mapnr"]
    for i, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    pfn = i * 8 + bit
                    if pfn < limit:
                        yield pfn
