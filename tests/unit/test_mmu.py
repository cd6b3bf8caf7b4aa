"""
The page-table formats and the riscv64 walk on synthetic physical memory:
Sv39/Sv48/Sv57 tables built here by the riscv privileged spec's rules
(V R W X bits, PPN at bit 10, leaves at any level), read through a drgn
memory segment exactly as a riscv64 dump is. The real riscv64 kernels are
in tests/test_real_kernels.py and tests/test_riscv.py.
"""

import struct

import drgn
import pytest

from vmemspect.mmu import (
    PageTableWalker,
    install_kernel_va,
    page_table_format,
    riscv64_kernel_root,
)
from vmemspect.vmcoreinfo import parse_vmcoreinfo

V, R, W, X, A, D, G = 1, 2, 4, 8, 64, 128, 32
KERNEL_RW = V | R | W | A | D | G       # PAGE_KERNEL
KERNEL_RO = V | R | A | D | G           # PAGE_KERNEL_RO


class PhysMemory:
    """Sparse physical memory of 4 KiB pages, with a bump allocator for
    page tables."""

    def __init__(self):
        self.pages = {}
        self.next_table = 0x80200000

    def alloc(self):
        phys = self.next_table
        self.next_table += 4096
        self.pages[phys] = bytearray(4096)
        return phys

    def set_u64(self, phys, value):
        page = self.pages.setdefault(phys & ~0xFFF, bytearray(4096))
        struct.pack_into("<Q", page, phys & 0xFFF, value)

    def get_u64(self, phys):
        return struct.unpack_from("<Q", self.pages[phys & ~0xFFF], phys & 0xFFF)[0]

    def read(self, address, count, offset, physical):
        out = bytearray()
        while count:
            n = min(count, 4096 - (address & 0xFFF))
            page = self.pages.get(address & ~0xFFF)
            if page is None:
                raise drgn.FaultError("no such page", address)
            out += page[address & 0xFFF:(address & 0xFFF) + n]
            address += n
            count -= n
        return bytes(out)


class Sv:
    """A riscv64 page table of ``levels`` levels in :class:`PhysMemory`."""

    def __init__(self, mem, levels):
        self.mem, self.levels = mem, levels
        self.root = mem.alloc()

    def _index(self, va, level):
        return (va >> (12 + 9 * (level - 1))) & 511

    def map(self, va, phys, flags, level=1):
        """Map ``va`` to ``phys`` with a leaf at ``level`` (1: 4 KiB)."""
        table = self.root
        for lv in range(self.levels, level, -1):
            slot = table + 8 * self._index(va, lv)
            entry = self.mem.get_u64(slot)
            if not entry & V:
                new = self.mem.alloc()
                entry = ((new >> 12) << 10) | V  # a pointer: no R, W, X
                self.mem.set_u64(slot, entry)
            table = ((entry >> 10) & ((1 << 44) - 1)) << 12
        self.mem.set_u64(table + 8 * self._index(va, level), ((phys >> 12) << 10) | flags)


def program(mem):
    prog = drgn.Program(drgn.Platform(drgn.Architecture.RISCV64,
                                      drgn.PlatformFlags.IS_64_BIT
                                      | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
    prog.add_memory_segment(0, 1 << 56, mem.read, physical=True)
    return prog


@pytest.mark.parametrize("levels", [3, 4, 5])
def test_riscv_walk_levels_bits(levels):
    mem = PhysMemory()
    sv = Sv(mem, levels)
    base = (1 << 64) - (1 << (12 + 9 * levels - 1))  # the kernel half's first address
    vmemmap = base + (1 << 30)
    sv.map(vmemmap, 0x90000000, KERNEL_RW)             # a head's vmemmap page
    for i in range(1, 8):                              # its tails: one RO frame
        sv.map(vmemmap + i * 4096, 0x90010000, KERNEL_RO)
    sv.map(base + (2 << 30), 0xA0000000, KERNEL_RW, level=2)   # a 2 MiB leaf
    sv.map(base + (4 << 30), 0xC0000000, KERNEL_RO | X, level=3)  # a 1 GiB leaf
    sv.map(vmemmap + 8 * 4096, 0x90020000, V | A | D | G)  # valid, but no leaf
    w = PageTableWalker.from_root(program(mem), page_table_format("riscv64", levels), sv.root)
    assert w.format.name == {3: "Sv39", 4: "Sv48", 5: "Sv57"}[levels]

    head = w.lookup(vmemmap)
    assert (head.level, head.pfn, head.writable) == (1, 0x90000, True)
    assert w.format.bits(head.entry) == "V R W G A D"
    tails = w.entries(vmemmap + 4096, 7)
    assert {(lv, pfn, rw) for lv, _, pfn, rw, _ in tails} == {(1, 0x90010, False)}
    run = w.pte_run(vmemmap, 8)
    assert run is not None and run[2] is True  # non-leaf entries grant nothing: not ANDed
    assert [w.entry_pfn(e) for e in run[0]] == [0x90000] + [0x90010] * 7
    assert [w.entry_writable(e) for e in run[0]] == [True] + [False] * 7

    pmd = w.lookup(base + (2 << 30) + 0x5000)
    assert (pmd.level, pmd.level_name, pmd.pfn, pmd.writable) == (2, "pmd", 0xA0005, True)
    pud = w.lookup(base + (4 << 30) + (3 << 21) + 0x7000)
    assert (pud.level, pud.pfn, pud.writable) == (3, 0xC0000 + 3 * 512 + 7, False)

    # A valid last-level entry with no R, W or X points nowhere (the
    # hardware faults): not mapped, and said so.
    bad = w.lookup(vmemmap + 8 * 4096)
    assert (bad.level, bad.pfn) == (0, None)
    assert "no leaf" in w.explain_unmapped(vmemmap + 8 * 4096)
    assert not w.pte_valid(bad.entry) and w.entry_present(bad.entry)

    hole = w.lookup(base + (8 << 30))
    assert (hole.level, hole.pfn) == (0, None)
    assert w.explain_unmapped(base + (8 << 30)).endswith("is not present")
    assert w.translate(vmemmap + 0x1234) == 0x90010234


def test_install_kernel_va_reads_through_walker():
    """drgn reads riscv64 kernel virtual addresses through the walker once
    installed; an unmapped page faults; a probe saying drgn translates by
    itself keeps the walker out."""
    mem = PhysMemory()
    sv = Sv(mem, 4)
    va = 0xFFFFFFFF80001000
    sv.map(va, 0x80400000, KERNEL_RW)
    sv.map(va + 4096, 0x80800000, KERNEL_RW)
    mem.set_u64(0x80400FF8, 0x1122334455667788)
    mem.set_u64(0x80800000, 0x99AABBCCDDEEFF00)
    info = {"SYMBOL(swapper_pg_dir)": f"{sv.root + 0xFFFFFFFF00000000:x}",
            "NUMBER(va_kernel_pa_offset)": "0xffffffff00000000", "NUMBER(VA_BITS)": "48"}
    prog = program(mem)
    assert install_kernel_va(prog, info, probe=lambda p: True) is None
    with pytest.raises(drgn.FaultError):
        prog.read(va, 8)
    how = install_kernel_va(prog, info, probe=lambda p: False)
    assert "Sv48" in how and "swapper_pg_dir" in how
    # A read across two pages that map to frames 4 MiB apart.
    assert prog.read(va + 0xFF8, 16) == struct.pack("<QQ", 0x1122334455667788,
                                                    0x99AABBCCDDEEFF00)
    with pytest.raises(drgn.FaultError):
        prog.read(va + 0x2000, 8)


def test_riscv64_kernel_root_sources():
    # Debian 7.2 writes NUMBER(satp): MODE 9 (Sv48) and the root's PPN.
    assert riscv64_kernel_root({"NUMBER(satp)": "0x9000000000081a3f"}) == (
        0x81a3f000, 4, "NUMBER(satp)")
    # 6.12 does not: the image offset and VA_BITS (57: Sv57).
    root, levels, _ = riscv64_kernel_root({
        "SYMBOL(swapper_pg_dir)": "ffffffff81a3f000",
        "NUMBER(va_kernel_pa_offset)": "0xffffffff00000000", "NUMBER(VA_BITS)": "57"})
    assert (root, levels) == (0x81a3f000, 5)
    with pytest.raises(ValueError):
        riscv64_kernel_root({"OSRELEASE": "6.12.117+deb13-riscv64"})


def test_parse_vmcoreinfo():
    info = parse_vmcoreinfo(b"OSRELEASE=7.2.13+deb14-riscv64\nPAGESIZE=4096\n"
                            b"SYMBOL(swapper_pg_dir)=ffffffff81a3f000\nno equals sign\n")
    assert info == {"OSRELEASE": "7.2.13+deb14-riscv64", "PAGESIZE": "4096",
                    "SYMBOL(swapper_pg_dir)": "ffffffff81a3f000"}


def test_x86_format_unchanged():
    fmt = page_table_format("x86_64", 5)
    # A 2 MiB leaf's bit 12 is PAT, not part of its frame once aligned.
    assert fmt.is_leaf(0x80 | 1, 2) and not fmt.is_leaf(0x80 | 1, 4)
    assert fmt.entry_pfn(0x8000000123456063) == 0x123456
    assert fmt.bits(0x8000000123456063) == "P RW A D NX"
    with pytest.raises(ValueError):
        page_table_format("aarch64", 4)
