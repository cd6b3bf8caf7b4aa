"""
Page-table formats and the walk
-------------------------------

How each architecture's kernel page tables look, and a walker over them
that needs nothing but physical memory: no types, no kernel model. It sits
below the opening layer because riscv64 needs it there: drgn 0.3.0 cannot
translate riscv64 kernel virtual addresses at all, so :mod:`vmemspect.target`
registers :class:`KernelVirtualMemory` (this walker) as a drgn memory segment
over the kernel half before anything else is read (:func:`install_kernel_va`).

Formats, one interface (:class:`PageTableFormat`):

- x86_64, 4-level and 5-level paging: a table entry names the next table;
  a leaf is a PTE, or a PMD/PUD with PSE (bit 7); RW (bit 1) must be set at
  every level for a write (the CPU ANDs them).
- riscv64 Sv39, Sv48, Sv57: V (bit 0) is present; an entry with any of
  R, W, X (bits 1-3) is a leaf at whatever level it sits, one with none
  names the next table; only a leaf's W grants writes (non-leaf entries
  carry no permissions). The frame is the PPN in bits 10-53; bits 54-63
  (PBMT, N) are not part of it.

Both use 4 KiB pages and 512 entries per table.
"""

import array
import collections
import dataclasses
import struct
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from drgn import FaultError, Program

from .errors import MissingMemory
from .progcache import cache_set, is_live
from .vmcoreinfo import vmcoreinfo_number

__all__ = (
    "KernelVirtualMemory",
    "Leaf",
    "PageTableFormat",
    "PageTableWalker",
    "install_kernel_va",
    "kernel_root",
    "kernel_tables",
    "page_table_format",
    "riscv64_kernel_root",
    "x86_64_kernel_root",
)

_UNPACK = struct.Struct("<512Q").unpack


@dataclasses.dataclass(frozen=True)
class PageTableFormat:
    """How one architecture's page-table entries are read."""

    #: "x86_64" or "riscv64".
    arch: str
    #: "4-level", "5-level" (x86_64), "Sv39", "Sv48", "Sv57" (riscv64).
    name: str
    levels: int
    #: Entry bit that says the entry is valid/present.
    present: int
    #: Entry bit that grants writes.
    write: int
    #: Entry bits that make an upper-level entry a leaf (x86 PSE, riscv R|W|X).
    leaf_bits: int
    #: Levels (1 = PTE) at which an upper entry may be a leaf.
    huge_levels: Tuple[int, ...]
    #: The RW bits of the levels above the leaf restrict writes too (x86).
    upper_write: bool
    #: frame number = (entry >> pfn_shift) & pfn_mask
    pfn_shift: int
    pfn_mask: int
    #: Bit names, low to high, for :meth:`bits`.
    bit_names: Tuple[Tuple[int, str], ...]
    page_shift: int = 12

    def level_name(self, level: int) -> str:
        """The kernel's name of a level: pte, pmd, pud, p4d, pgd (the top);
        "none" for 0 (not mapped)."""
        if level == 0:
            return "none"
        if level == self.levels:
            return "pgd"
        return {1: "pte", 2: "pmd", 3: "pud", 4: "p4d"}[level]

    def is_leaf(self, entry: int, level: int) -> bool:
        """A present ``entry`` at ``level`` maps memory (else it names a table)."""
        return level == 1 or (level in self.huge_levels and bool(entry & self.leaf_bits))

    @property
    def pte_needs(self) -> int:
        """What a last-level entry needs besides the present bit to map a
        page: nothing more on x86_64; R, W or X on riscv64, where a valid
        PTE with none of them would point to a next level, which the last
        level cannot (the hardware raises a page fault)."""
        return self.leaf_bits if self.arch == "riscv64" else self.present

    def entry_pfn(self, entry: int) -> int:
        """The frame an entry names (the first frame of a huge leaf, or the
        next table)."""
        return (entry >> self.pfn_shift) & self.pfn_mask

    def bits(self, entry: int) -> str:
        """The entry's flag bits by their architecture's names, e.g.
        "P RW NX" on x86_64 or "V R W A D G" on riscv64."""
        return " ".join(name for bit, name in self.bit_names if entry >> bit & 1) or "-"


_X86_BITS = ((0, "P"), (1, "RW"), (2, "US"), (3, "PWT"), (4, "PCD"), (5, "A"), (6, "D"),
             (7, "PSE"), (8, "G"), (63, "NX"))
_RISCV_BITS = ((0, "V"), (1, "R"), (2, "W"), (3, "X"), (4, "U"), (5, "G"), (6, "A"), (7, "D"),
               (61, "PBMT0"), (62, "PBMT1"), (63, "N"))
_RISCV_MODES = {39: "Sv39", 48: "Sv48", 57: "Sv57"}
#: satp.MODE (bits 60-63) -> levels.
_SATP_LEVELS = {8: 3, 9: 4, 10: 5}


def page_table_format(arch: str, levels: int) -> PageTableFormat:
    """
    The kernel page-table format of ``arch`` ("x86_64", "riscv64") with
    ``levels`` levels (x86_64: 4 or 5; riscv64: 3, 4, 5 for Sv39/48/57).

    :raises ValueError: for another architecture or level count.
    """
    if arch == "x86_64" and levels in (4, 5):
        return PageTableFormat("x86_64", f"{levels}-level", levels, present=1, write=2,
                               leaf_bits=0x80, huge_levels=(2, 3), upper_write=True,
                               pfn_shift=12, pfn_mask=(1 << 40) - 1, bit_names=_X86_BITS)
    if arch == "riscv64" and levels in (3, 4, 5):
        return PageTableFormat("riscv64", _RISCV_MODES[12 + 9 * levels], levels, present=1,
                               write=4, leaf_bits=0xE,
                               huge_levels=tuple(range(2, levels + 1)), upper_write=False,
                               pfn_shift=10, pfn_mask=(1 << 44) - 1, bit_names=_RISCV_BITS)
    raise ValueError(f"no page-table format for {arch} with {levels} levels")


@dataclasses.dataclass(slots=True)  # not frozen: made per folio, and frozen costs
class Leaf:
    """How one 4 KiB virtual page is mapped."""

    #: Virtual address of the page.
    va: int
    #: 1 (pte), 2 (pmd, 2 MiB leaf), 3 (pud, 1 GiB leaf); 0 if not mapped.
    level: int
    #: Raw entry of the leaf (or of the first non-present entry).
    entry: int
    #: Frame backing this 4 KiB page, None if not mapped.
    pfn: Optional[int]
    #: Effectively writable: x86 ANDs the RW bits of the whole walk,
    #: riscv64 takes the leaf's W.
    writable: bool
    #: Physical address of the table that holds the leaf entry.
    table: int

    @property
    def level_name(self) -> str:
        return {0: "none", 1: "pte", 2: "pmd", 3: "pud", 4: "p4d", 5: "pgd"}.get(
            self.level, "none")


class PageTableWalker:
    """
    Walks kernel page tables of one format with whole-table reads (512
    entries a read) and a small cache, so walking a folio's vmemmap costs a
    dictionary lookup per page, not a memory read.

    :param prog: reads the tables (physical reads).
    :param fmt: the format.
    :param top: the 512 entries of the top table, and ``top_address`` its
        address (for messages and :attr:`Leaf.table`).
    :param cache_tables: how many tables to keep; memory is 4 KiB a table.
    """

    def __init__(self, prog: Program, fmt: PageTableFormat, top: Tuple[int, ...],
                 top_address: int, cache_tables: int = 512) -> None:
        self.prog = prog
        self.format = fmt
        self.levels = fmt.levels
        self.page_shift = fmt.page_shift
        self.top = top
        self.top_address = top_address
        self._cache: "collections.OrderedDict[int, Tuple[int, ...]]" = collections.OrderedDict()
        self._cache_max = cache_tables
        self.tables_read = 0
        # Upper-level walks, per region one PTE table maps (2 MiB).
        self._region_shift = self.page_shift + 9
        self._regions: dict = {}
        # The hot loops below read these as locals.
        self.present = fmt.present
        self.write = fmt.write
        self._pte_needs = fmt.pte_needs
        self._pfn_shift = fmt.pfn_shift
        self._pfn_mask = fmt.pfn_mask
        #: Per last-level table read (physical address), the pairs of
        #: neighbouring entries that map one frame, or -1 if not every
        #: entry is present (see :meth:`pte_pairs`): gathered as tables are
        #: read, for vmemspect.sweep.
        self.pair_counts: Dict[int, int] = {}
        self._addr_big = int.from_bytes(
            struct.pack("<Q", fmt.pfn_mask << fmt.pfn_shift) * 512, "little")
        self._present_big = int.from_bytes(struct.pack("<Q", fmt.present) * 512, "little")

    def pte_pairs(self, data: bytes) -> int:
        """
        How many pairs of neighbouring entries of a last-level table (its
        4096 bytes) map one frame, or -1 if not every entry is present.
        In C: one big-integer mask and shift for the whole table, about
        6 µs, where a loop over the entries costs about 100 µs.
        """
        m = int.from_bytes(data, "little")
        if (m & self._present_big).bit_count() != 512:
            return -1
        pm = m & self._addr_big
        x = array.array("Q")
        x.frombytes((pm ^ (pm >> 64)).to_bytes(4096, "little"))
        # Word i is zero where entries i and i+1 map one frame (the last
        # word compares with nothing: never zero, every entry present).
        return x.count(0)

    @classmethod
    def from_root(cls, prog: Program, fmt: PageTableFormat, root: int,
                  cache_tables: int = 512) -> "PageTableWalker":
        """A walker whose top table is at physical address ``root``."""
        try:
            top = _UNPACK(prog.read(root, 4096, True))
        except FaultError:
            raise MissingMemory("the top-level page table", root)
        return cls(prog, fmt, top, root, cache_tables)

    # Entry decoding, for callers that hold raw entries (hvo.py, fastscan.py).
    def entry_present(self, entry: int) -> bool:
        return bool(entry & self.present)

    def pte_valid(self, entry: int) -> bool:
        """A last-level entry maps a page (present, and on riscv64 a leaf)."""
        return bool(entry & self.present) and bool(entry & self._pte_needs)

    def entry_writable(self, entry: int) -> bool:
        """The entry's own write bit (a leaf's, on either architecture)."""
        return bool(entry & self.write)

    def entry_pfn(self, entry: int) -> int:
        return (entry >> self._pfn_shift) & self._pfn_mask

    def read_table(self, phys: int, last: bool = False) -> Tuple[int, ...]:
        """The 512 raw entries of the table at physical address ``phys``
        (``last``: a last-level table, whose :meth:`pte_pairs` are kept)."""
        cache = self._cache
        table = cache.get(phys)
        if table is not None and (not last or phys in self.pair_counts):
            cache.move_to_end(phys)
            return table
        try:
            data = self.prog.read(phys, 4096, True)
        except FaultError:
            raise MissingMemory("a page table", phys)
        if last and phys not in self.pair_counts:
            self.pair_counts[phys] = self.pte_pairs(data)
        table = _UNPACK(data)
        self.tables_read += 1
        cache[phys] = table
        if len(cache) > self._cache_max:
            cache.popitem(last=False)
        return table

    def _region(self, va: int) -> tuple:
        """
        Walk to the last table above ``va``'s 4 KiB page: ("pte", table,
        table address, write permission of the levels above), or ("leaf",
        level, entry, first pfn of va's PMD-sized region, writable, table
        address) for a huge leaf, or ("none", entry, table address). Cached
        per PMD-sized region, so the pages of one folio's vmemmap walk the
        upper levels once.
        """
        key = va >> self._region_shift
        r = self._regions.get(key)
        if r is not None:
            return r
        fmt = self.format
        level = self.levels
        table = self.top
        table_addr = self.top_address
        writable = True
        while True:
            index = (va >> (self.page_shift + 9 * (level - 1))) & 511
            entry = table[index]
            if not entry & fmt.present:
                r = ("none", entry, table_addr)
                break
            if level in fmt.huge_levels and entry & fmt.leaf_bits:
                writable = writable and bool(entry & fmt.write)
                span_shift = self.page_shift + 9 * (level - 1)
                base = self.entry_pfn(entry) << self.page_shift & ~((1 << span_shift) - 1)
                region = va & ((1 << span_shift) - 1) & ~((1 << self._region_shift) - 1)
                r = ("leaf", level, entry, (base + region) >> self.page_shift, writable,
                     table_addr)
                break
            if fmt.upper_write:
                writable = writable and bool(entry & fmt.write)
            table_addr = self.entry_pfn(entry) << self.page_shift
            table = self.read_table(table_addr, level == 2)
            level -= 1
            if level == 1:
                r = ("pte", table, table_addr, writable)
                break
        if len(self._regions) >= self._cache_max:
            self._regions.clear()
        self._regions[key] = r
        return r

    def entries(self, va: int, npages: int) -> List[Tuple[int, int, Optional[int], bool, int]]:
        """
        ``(level, entry, pfn, writable, table)`` for ``npages`` consecutive
        4 KiB pages from ``va``: the fields of :class:`Leaf` without making
        one object per page (level 0 and pfn None: not mapped).
        """
        out = []
        shift = self.page_shift
        present, write, needs = self.present, self.write, self._pte_needs
        pfn_shift, pfn_mask = self._pfn_shift, self._pfn_mask
        for i in range(npages):
            v = va + (i << shift)
            r = self._region(v)
            kind = r[0]
            if kind == "pte":
                e = r[1][(v >> shift) & 511]
                if e & present and e & needs:
                    out.append((1, e, (e >> pfn_shift) & pfn_mask, r[3] and bool(e & write), r[2]))
                else:
                    out.append((0, e, None, False, r[2]))
            elif kind == "leaf":
                out.append((r[1], r[2], r[3] + ((v >> shift) & 511), r[4], r[5]))
            else:
                out.append((0, r[1], None, False, r[2]))
        return out

    def pte_run(self, va: int, npages: int) -> Optional[Tuple[Tuple[int, ...], int, bool]]:
        """
        The raw PTEs of ``npages`` pages from ``va`` when one PTE table maps
        them all, with that table's address and the write permission of the
        levels above; None otherwise (a huge leaf, a hole, or a range
        across tables). A 2 MiB folio's 8 vmemmap pages always sit in one
        table.
        """
        r = self._region(va)
        if r[0] != "pte":
            return None
        index = (va >> self.page_shift) & 511
        if index + npages > 512:
            return None
        return r[1][index:index + npages], r[2], r[3]

    def lookup(self, va: int) -> Leaf:
        """How the 4 KiB page at virtual address ``va`` is mapped."""
        return Leaf(va, *self.entries(va, 1)[0])

    def translate(self, va: int) -> Optional[int]:
        """The physical address ``va`` maps to, None if it is not mapped."""
        level, _, pfn, _, _ = self.entries(va & ~((1 << self.page_shift) - 1), 1)[0]
        if not level:
            return None
        return (pfn << self.page_shift) | (va & ((1 << self.page_shift) - 1))

    def explain_unmapped(self, va: int) -> Optional[str]:
        """
        Why ``va`` is not mapped, naming the entry where the walk stops
        ("PMD entry 0x0 at phys 0x1234a98 is not present"), or None if it is
        mapped. Walks without the caches: used only where a walk failed.

        :raises MissingMemory: if a table on the way is not in the dump.
        """
        fmt = self.format
        table, table_addr = self.top, self.top_address
        for level in range(self.levels, 0, -1):
            index = (va >> (self.page_shift + 9 * (level - 1))) & 511
            entry = table[index]
            if not entry & fmt.present:
                return (f"{fmt.level_name(level).upper()} entry {entry:#x} at phys "
                        f"{table_addr + 8 * index:#x} is not present")
            if level == 1 and not self.pte_valid(entry):
                return (f"PTE {entry:#x} at phys {table_addr + 8 * index:#x} is valid but "
                        "no leaf (no R, W or X)")
            if fmt.is_leaf(entry, level):
                return None
            table_addr = self.entry_pfn(entry) << self.page_shift
            table = self.read_table(table_addr)
        return None


def kernel_tables(
    fmt: PageTableFormat, root: int, table: Callable[[int], Optional[bytes]],
) -> Iterator[Tuple[int, int, int, int]]:
    """
    Every table and every leaf of the kernel half of the page tables whose
    top table is at physical address ``root``, for a reader that holds only
    some of the tables: ``table(pfn)`` gives a table's 4096 bytes, or None
    to leave it (and what it maps) out. Each table is visited once.

    Yields ``(level, pfn, va, shift)``: for a table, ``level`` 0 and its
    ``pfn`` (``va`` and ``shift`` 0); for a leaf, the level it sits at
    (1 = PTE), the first frame it maps, the (sign-extended) virtual address
    it maps and the shift of its span (12 for 4 KiB). The kernel half is
    the upper half of the top table (entries 256-511) on x86_64 and
    riscv64 alike; a valid riscv64 PTE without R, W or X maps nothing and
    is skipped.
    """
    levels, page_shift = fmt.levels, fmt.page_shift
    present, needs = fmt.present, fmt.pte_needs
    seen = set()
    stack = [(root >> page_shift, levels, 0)]
    while stack:
        pfn, level, base = stack.pop()
        if pfn in seen:
            continue
        data = table(pfn)
        if data is None:
            continue
        seen.add(pfn)
        yield 0, pfn, 0, 0
        entries = _UNPACK(data)
        shift = page_shift + 9 * (level - 1)
        first = 256 if level == levels else 0  # the kernel half
        for i in range(first, 512):
            entry = entries[i]
            if not entry & present:
                continue
            va = base | (i << shift)
            if level == levels:  # sign-extend the kernel half
                va |= ~((1 << (shift + 9)) - 1) & ((1 << 64) - 1)
            if not fmt.is_leaf(entry, level):
                stack.append((fmt.entry_pfn(entry), level - 1, va))
            elif level > 1 or entry & needs:
                yield level, fmt.entry_pfn(entry) & ~((1 << (shift - page_shift)) - 1), va, shift


# ---------------------------------------------------------------- riscv64


def riscv64_kernel_root(info: Dict[str, str]) -> Tuple[int, int, str]:
    """
    The physical address of a riscv64 kernel's top page table, its level
    count and where both came from, from VMCOREINFO alone.

    ``NUMBER(satp)`` (written by newer kernels, Debian's 7.2) gives both:
    MODE in bits 60-63 (8 Sv39, 9 Sv48, 10 Sv57), the root's PPN in bits
    0-43. Without it (Debian's 6.12): ``SYMBOL(swapper_pg_dir)`` minus
    ``NUMBER(va_kernel_pa_offset)`` (the kernel image is mapped at a fixed
    offset from its load address) and the levels from ``NUMBER(VA_BITS)``.

    :raises ValueError: if VMCOREINFO says neither.
    """
    satp = vmcoreinfo_number(info, "NUMBER(satp)", 16)
    if satp is not None and (satp >> 60) in _SATP_LEVELS:
        return ((satp & ((1 << 44) - 1)) << 12, _SATP_LEVELS[satp >> 60], "NUMBER(satp)")
    pgd = vmcoreinfo_number(info, "SYMBOL(swapper_pg_dir)", 16)
    offset = vmcoreinfo_number(info, "NUMBER(va_kernel_pa_offset)", 16)
    va_bits = vmcoreinfo_number(info, "NUMBER(VA_BITS)")
    if pgd is None or offset is None or va_bits not in _RISCV_MODES:
        raise ValueError("VMCOREINFO has neither NUMBER(satp) nor SYMBOL(swapper_pg_dir), "
                         "NUMBER(va_kernel_pa_offset) and NUMBER(VA_BITS)")
    return ((pgd - offset) & ((1 << 64) - 1), (va_bits - 12) // 9,
            "SYMBOL(swapper_pg_dir) - NUMBER(va_kernel_pa_offset), NUMBER(VA_BITS)")


#: Start of the x86_64 kernel image mapping (``__START_KERNEL_map``).
_START_KERNEL_MAP = 0xFFFFFFFF80000000


def x86_64_kernel_root(info: Dict[str, str]) -> Tuple[int, int, str]:
    """
    The physical address of an x86_64 kernel's top page table, its level
    count and where both came from, from VMCOREINFO alone:
    ``SYMBOL(init_top_pgt)`` sits in the kernel image, mapped at
    ``__START_KERNEL_map`` + ``NUMBER(phys_base)``; 5 levels when
    ``NUMBER(pgtable_l5_enabled)`` is 1 (else, or without it, 4).

    :raises ValueError: if VMCOREINFO lacks ``SYMBOL(init_top_pgt)``.
    """
    top = vmcoreinfo_number(info, "SYMBOL(init_top_pgt)", 16)
    if not top:
        raise ValueError("VMCOREINFO has no SYMBOL(init_top_pgt)")
    phys_base = vmcoreinfo_number(info, "NUMBER(phys_base)", 0) or 0
    levels = 5 if info.get("NUMBER(pgtable_l5_enabled)") == "1" else 4
    return ((top - _START_KERNEL_MAP + phys_base) & ((1 << 64) - 1), levels,
            "SYMBOL(init_top_pgt) - __START_KERNEL_map + NUMBER(phys_base), "
            "NUMBER(pgtable_l5_enabled)")


def kernel_root(arch: str, info: Dict[str, str]) -> Tuple[PageTableFormat, int, str]:
    """
    The format and the physical address of the top table of a kernel's
    page tables, from VMCOREINFO alone (no types, no virtual reads), and
    where they came from: :func:`x86_64_kernel_root`,
    :func:`riscv64_kernel_root`.

    :raises ValueError: for another architecture, or if VMCOREINFO does
        not say.
    """
    if arch == "x86_64":
        root, levels, source = x86_64_kernel_root(info)
    elif arch == "riscv64":
        root, levels, source = riscv64_kernel_root(info)
    else:
        raise ValueError(f"no kernel page tables known for {arch}")
    return page_table_format(arch, levels), root, source


class KernelVirtualMemory:
    """
    A drgn memory segment read function for kernel virtual addresses,
    translating each page with a :class:`PageTableWalker` over the kernel's
    own tables and reading physical memory. Unmapped pages fault.

    A dump does not change: translations and tables are cached (the page
    cache is emptied every ``max_cached`` pages). A live kernel does (HVO
    remaps vmemmap as folios come and go): with ``live`` every read walks
    the tables afresh, reading only the one entry of each level.
    """

    def __init__(self, walker: PageTableWalker, max_cached: int = 1 << 16,
                 live: bool = False) -> None:
        self.walker = walker
        self.prog = walker.prog
        self._pages: Dict[int, Optional[int]] = {}
        self._max = max_cached
        self.shift = walker.page_shift
        self.live = live

    def _walk_uncached(self, va: int) -> Optional[int]:
        """Physical address of ``va``'s page, one 8-byte read per level."""
        fmt, walker = self.walker.format, self.walker
        table = walker.top_address
        for level in range(fmt.levels, 0, -1):
            slot = table + 8 * ((va >> (self.shift + 9 * (level - 1))) & 511)
            try:
                entry = int.from_bytes(self.prog.read(slot, 8, True), "little")
            except FaultError:
                return None
            if not entry & fmt.present:
                return None
            if level == 1 and not walker.pte_valid(entry):
                return None
            if fmt.is_leaf(entry, level):
                span = 1 << (self.shift + 9 * (level - 1))
                base = walker.entry_pfn(entry) << self.shift & ~(span - 1)
                return base + (va & (span - 1) & ~((1 << self.shift) - 1))
            table = walker.entry_pfn(entry) << self.shift
        return None

    def phys(self, va: int) -> Optional[int]:
        page = va >> self.shift
        if self.live:
            base = self._walk_uncached(page << self.shift)
            return None if base is None else base | (va & ((1 << self.shift) - 1))
        try:
            base = self._pages[page]
        except KeyError:
            try:
                base = self.walker.translate(page << self.shift)
            except MissingMemory:
                base = None
            if len(self._pages) >= self._max:
                self._pages.clear()
            self._pages[page] = base
        return None if base is None else base | (va & ((1 << self.shift) - 1))

    def __call__(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        out = []
        size = 1 << self.shift
        while count > 0:
            n = min(count, size - (address & (size - 1)))
            pa = self.phys(address)
            if pa is None:
                raise FaultError("not mapped by the kernel's page tables", address)
            out.append(self.prog.read(pa, n, True))
            address += n
            count -= n
        return b"".join(out)


#: Where each riscv64 paging mode's kernel half starts (the sign-extended
#: upper half of the virtual address space).
def _kernel_half(levels: int) -> int:
    return (1 << 64) - (1 << (12 + 9 * levels - 1))


def install_kernel_va(prog: Program, info: Dict[str, str],
                      probe: Optional[Callable[[Program], bool]] = None) -> Optional[str]:
    """
    Make drgn read a riscv64 kernel's virtual addresses through
    vmemspect's own walker: a memory segment over the whole kernel half.
    Does nothing when drgn can already translate them itself (``probe``
    returns True: a later drgn with riscv64 page tables), so vmemspect
    never shadows drgn's own translation. On a live kernel the reads walk
    the tables afresh each time (:class:`KernelVirtualMemory`). Returns a line saying what was
    done (for ``report``'s evidence), or None if nothing was.

    :raises ValueError: if VMCOREINFO does not say where the tables are.
    :raises MissingMemory: if the top table is not in the dump.
    """
    if probe is not None and probe(prog):
        return None
    root, levels, source = riscv64_kernel_root(info)
    fmt = page_table_format("riscv64", levels)
    reader = KernelVirtualMemory(PageTableWalker.from_root(prog, fmt, root),
                                 live=is_live(prog))
    start = _kernel_half(levels)
    prog.add_memory_segment(start, (1 << 64) - start, reader, physical=False)
    cache_set(prog, "va_reader", reader)
    return (f"kernel virtual addresses read through vmemspect's {fmt.name} walker "
            f"(root {root:#x} from {source}): drgn cannot translate riscv64")
