"""
Page-table walker
-----------------

vmemspect reads the kernel's page tables itself, from ``init_mm.pgd`` down,
so that it can report what drgn's ``follow_phys()`` does not: the raw entry
of each level, the level of the leaf (a 4 KiB PTE, a 2 MiB PMD or a 1 GiB
PUD) and the RW bit. Tables are read whole (512 entries a read) and the last
few hundred are kept, so walking a folio's vmemmap costs a dictionary lookup
per page, not a memory read.

x86_64 only, 4-level and 5-level paging (Debian enables 5-level; QEMU's
``-cpu max`` has LA57), KASLR included (the tables are found from
``init_mm``, not from fixed addresses).
"""

import collections
import dataclasses
import struct
from typing import List, Optional, Tuple

from drgn import FaultError, Program, ProgramFlags

from .errors import VmemspectError
from .kernel import KernelModel, kernel_model

__all__ = (
    "ENTRY_ADDR_MASK",
    "ENTRY_PRESENT",
    "ENTRY_RW",
    "LEVEL_NAMES",
    "Leaf",
    "MissingMemory",
    "PageTableWalker",
    "page_table_walker",
)

ENTRY_PRESENT = 1 << 0
ENTRY_RW = 1 << 1
ENTRY_PSE = 1 << 7
# Physical address bits of an entry: 12..51 for a table or a PTE; a huge
# leaf's bit 12 is PAT, so its frame starts at its own alignment.
ENTRY_ADDR_MASK = 0x000FFFFFFFFFF000
_TABLE_ENTRIES = 512
_UNPACK = struct.Struct("<512Q").unpack

#: Leaf levels, by the number of the level (1 is the PTE).
LEVEL_NAMES = {1: "pte", 2: "pmd", 3: "pud", 4: "p4d", 5: "pgd"}


class MissingMemory(Exception):
    """Memory a walk needs is not in the dump (filtered or truncated)."""

    def __init__(self, what: str, address: int) -> None:
        self.what = what
        self.address = address
        super().__init__(f"{what} at {address:#x} is not in the dump")


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
    #: RW set at every level (x86 ANDs the RW bits of the whole walk).
    writable: bool
    #: Physical address of the table that holds the leaf entry.
    table: int

    @property
    def level_name(self) -> str:
        return LEVEL_NAMES.get(self.level, "none")


class PageTableWalker:
    """
    Walks ``init_mm``'s page tables with whole-table reads and a small cache.

    :param cache_tables: how many tables to keep; memory is 4 KiB a table.
    """

    def __init__(self, prog: Program, model: KernelModel, cache_tables: int = 512) -> None:
        if model.arch != "x86_64":
            raise VmemspectError(
                f"vmemspect cannot walk {model.arch} page tables yet",
                "use an x86_64 kernel or dump",
            )
        self.prog = prog
        self.levels = model.pgtable_levels
        self.page_shift = model.page_shift
        pgd = prog["init_mm"].pgd.value_()
        try:
            top = prog.read(pgd, 4096)
        except FaultError:
            raise MissingMemory("the top-level page table (init_mm.pgd)", pgd)
        self.top = _UNPACK(top)
        self.top_address = pgd
        self._cache: "collections.OrderedDict[int, Tuple[int, ...]]" = collections.OrderedDict()
        self._cache_max = cache_tables
        self.tables_read = 0
        # Upper-level walks, per region one PTE table maps (2 MiB).
        self._region_shift = self.page_shift + 9
        self._regions: dict = {}

    def read_table(self, phys: int) -> Tuple[int, ...]:
        """The 512 raw entries of the table at physical address ``phys``."""
        cache = self._cache
        table = cache.get(phys)
        if table is not None:
            cache.move_to_end(phys)
            return table
        try:
            data = self.prog.read(phys, 4096, True)
        except FaultError:
            raise MissingMemory("a page table", phys)
        table = _UNPACK(data)
        self.tables_read += 1
        cache[phys] = table
        if len(cache) > self._cache_max:
            cache.popitem(last=False)
        return table

    def _region(self, va: int) -> tuple:
        """
        Walk to the last table above ``va``'s 4 KiB page: ("pte", table,
        table address, RW of the levels above), or ("leaf", level, entry,
        first pfn of va's PMD-sized region, RW, table address) for a PMD or
        PUD leaf, or ("none", entry, table address). Cached per PMD-sized
        region, so the pages of one folio's vmemmap walk the upper levels once.
        """
        key = va >> self._region_shift
        r = self._regions.get(key)
        if r is not None:
            return r
        level = self.levels
        table = self.top
        table_addr = self.top_address
        writable = True
        while True:
            index = (va >> (self.page_shift + 9 * (level - 1))) & 511
            entry = table[index]
            if not entry & ENTRY_PRESENT:
                r = ("none", entry, table_addr)
                break
            writable = writable and bool(entry & ENTRY_RW)
            if level in (2, 3) and entry & ENTRY_PSE:
                span_shift = self.page_shift + 9 * (level - 1)
                base = entry & ENTRY_ADDR_MASK & ~((1 << span_shift) - 1)
                region = va & ((1 << span_shift) - 1) & ~((1 << self._region_shift) - 1)
                r = ("leaf", level, entry, (base + region) >> self.page_shift, writable,
                     table_addr)
                break
            table_addr = entry & ENTRY_ADDR_MASK
            table = self.read_table(table_addr)
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
        for i in range(npages):
            v = va + (i << shift)
            r = self._region(v)
            kind = r[0]
            if kind == "pte":
                e = r[1][(v >> shift) & 511]
                if e & ENTRY_PRESENT:
                    out.append((1, e, (e & ENTRY_ADDR_MASK) >> shift, r[3] and bool(e & ENTRY_RW), r[2]))
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
        them all, with that table's address and the RW of the levels above;
        None otherwise (a PMD or PUD leaf, a hole, or a range across tables).
        A 2 MiB folio's 8 vmemmap pages always sit in one table.
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

    def explain_unmapped(self, va: int) -> Optional[str]:
        """
        Why ``va`` is not mapped, naming the entry where the walk stops
        ("PMD entry 0x0 at phys 0x1234a98 is not present"), or None if it is
        mapped. Walks without the caches: used only where a walk failed.

        :raises MissingMemory: if a table on the way is not in the dump.
        """
        names = {5: "PGD", 4: "P4D" if self.levels == 5 else "PGD", 3: "PUD", 2: "PMD",
                 1: "PTE"}
        table, table_addr = self.top, self.top_address
        for level in range(self.levels, 0, -1):
            index = (va >> (self.page_shift + 9 * (level - 1))) & 511
            entry = table[index]
            if not entry & ENTRY_PRESENT:
                return (f"{names[level]} entry {entry:#x} at phys {table_addr + 8 * index:#x} "
                        "is not present")
            if level == 1 or (level in (2, 3) and entry & ENTRY_PSE):
                return None
            table_addr = entry & ENTRY_ADDR_MASK
            table = self.read_table(table_addr)
        return None


def page_table_walker(prog: Program) -> PageTableWalker:
    """
    The walker of a program, created once and cached on ``prog.cache``.

    A live kernel changes its page tables (HVO splits PMDs and remaps PTEs as
    folios come and go), so there each call returns a fresh walker, whose
    cache lasts one scan.
    """
    if prog.flags & ProgramFlags.IS_LIVE:
        return PageTableWalker(prog, kernel_model(prog))
    try:
        return prog.cache["vmemspect_walker"]
    except KeyError:
        walker = PageTableWalker(prog, kernel_model(prog))
        prog.cache["vmemspect_walker"] = walker
        return walker
