"""
A small synthetic x86_64 Linux kernel, as a :class:`drgn.Program`, for
vmemspect's fast tests. No vmlinux, no dump: the kernel's types come from a
type finder, its variables from an object finder, and its memory is a
``bytearray`` served as *physical* memory. drgn is set up with
``set_linux_kernel_custom()`` and translates every virtual address by walking
real x86_64 page tables (4- or 5-level) that this module builds in that
physical memory, starting at ``swapper_pg_dir`` -- so vmemspect's own
page-table walker and drgn's translation read the same tables.

What is built (the layout of Debian's x86_64 kernels where vmemspect reads
raw offsets, ``sizeof(struct page) == 64``):

- the kernel image (variables) mapped at ``__START_KERNEL_map`` with 2 MiB
  PMD leaves, the direct map at ``page_offset_base``, and the vmemmap at
  ``vmemmap_base`` (``0xffffea0000000000`` / ``0xffd4000000000000`` or any
  base given, e.g. a KASLR-like one);
- nodes and zones (``node_data[1024]``, ``node_states``, ``struct zone``
  with or without ``vmemmap_tails[16]``, or ``vmemmap_tails`` in ``struct
  pglist_data`` as in the series' postings), SPARSEMEM ``mem_section`` (drgn
  finds ``vmemmap`` from it, as on a real kernel);
- hstates (2 MiB and 1 GiB) with per-node counters and their folios on
  ``hugepage_freelists[nid]`` / ``hugepage_activelist``;
- each folio's vmemmap: unoptimized folios on 2 MiB PMD leaves (``pmd``) or
  on 4 KiB PTEs (``pte``); optimized folios HVO-style: vmemmap page 0 RW on
  a fresh copy frame, pages 1..N-1 read-only onto that same frame (pointer
  form, < 7.1) or onto the zone's shared frame ``vmemmap_tails[order - 7]``
  (mask form, 7.1+). A PMD that holds both kinds is split into PTEs, as HVO
  does.

The returned :class:`SyntheticKernel` keeps every address and frame it
chose, and has handles to corrupt the kernel afterwards (write a PTE, a
struct page in a frame, a folio's private word, a ``vmemmap_tails`` slot).
Corrupt before the first analysis, or call :meth:`SyntheticKernel.invalidate`
(vmemspect caches its model, walker and zones on ``prog.cache``).
"""

import dataclasses
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import drgn
from drgn import (
    Architecture,
    FindObjectFlags,
    Object,
    Platform,
    PlatformFlags,
    Program,
    TypeEnumerator,
    TypeKind,
    TypeMember,
    TypeParameter,
)

__all__ = (
    "FolioSpec",
    "FolioInfo",
    "SyntheticKernel",
    "ZoneSpec",
    "build_kernel",
    "default_folios",
    "page_flags",
    "tail_mask",
)

MASK64 = (1 << 64) - 1
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
SIZEOF_PAGE = 64
PAGES_PER_FRAME = PAGE_SIZE // SIZEOF_PAGE
START_KERNEL_MAP = 0xFFFFFFFF80000000
LAYOUTS = {
    4: {"page_offset": 0xFFFF888000000000, "vmemmap": 0xFFFFEA0000000000,
        "vmalloc": 0xFFFFC90000000000, "max_physmem_bits": 46},
    5: {"page_offset": 0xFF11000000000000, "vmemmap": 0xFFD4000000000000,
        "vmalloc": 0xFFA0000000000000, "max_physmem_bits": 52},
}
TAIL_MAPPING = 0xDEAD000000000400

# enum pageflags (the start of it), enum hugetlb_page_flags, enum zone_type.
PG_HEAD = 6
PAGEFLAGS = ["PG_locked", "PG_writeback", "PG_referenced", "PG_uptodate", "PG_dirty",
             "PG_lru", "PG_head", "PG_waiters", "PG_active", "PG_workingset",
             "PG_owner_priv_1", "PG_owner_2", "PG_arch_1", "PG_reserved", "PG_private",
             "PG_private_2", "PG_reclaim", "PG_swapbacked", "PG_unevictable",
             "PG_dropbehind", "PG_mlocked", "PG_hwpoison", "PG_young", "PG_idle"]
HPG_FLAGS = ["HPG_restore_reserve", "HPG_migratable", "HPG_temporary", "HPG_freed",
             "HPG_vmemmap_optimized", "HPG_raw_hwp_unreliable", "HPG_cma"]
HPG_MIGRATABLE = 1
HPG_FREED = 3
HPG_VMEMMAP_OPTIMIZED = 4
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable", "Device")
ZONE_ENUM = ["ZONE_DMA", "ZONE_DMA32", "ZONE_NORMAL", "ZONE_MOVABLE", "ZONE_DEVICE"]
MAX_NR_ZONES = 5
NODE_STATES = ["N_POSSIBLE", "N_ONLINE", "N_NORMAL_MEMORY", "N_MEMORY", "N_CPU",
               "N_GENERIC_INITIATOR"]
MAX_NUMNODES = 1024  # NODES_SHIFT = 10, as on Debian
NODES_PGOFF = 64 - 10
ZONES_PGOFF = NODES_PGOFF - 3  # ZONES_SHIFT = 3 for 5 zones
VMEMMAP_TAIL_MIN_ORDER = 7
NR_VMEMMAP_TAILS = 16  # MAX_FOLIO_ORDER 22 - 7 + 1
HUGE_MAX_HSTATE = 2
SECTION_SIZE_BITS = 27
PFN_SECTION_SHIFT = SECTION_SIZE_BITS - PAGE_SHIFT
SECTIONS_PER_ROOT = PAGE_SIZE // 16

# Page-table entry bits.
_P, _RW, _A, _D, _PSE, _G = 0x1, 0x2, 0x20, 0x40, 0x80, 0x100
_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000
TABLE_FLAGS = _P | _RW | _A | _D  # _KERNPG_TABLE
PTE_RW = _P | _RW | _A | _D | _G | _NX  # PAGE_KERNEL
PTE_RO = PTE_RW & ~_RW  # PAGE_KERNEL_RO
PMD_RW = PTE_RW | _PSE  # PAGE_KERNEL_LARGE
RW_BIT = _RW

_PAGE = struct.Struct("<QQQQQQiiQ")
_U64 = struct.Struct("<Q")


def page_flags(nid: int, zone: int, extra: int = 0) -> int:
    """page->flags carrying a node and a zone (SPARSEMEM_VMEMMAP layout)."""
    return (nid << NODES_PGOFF) | (zone << ZONES_PGOFF) | extra


def tail_mask(order: int) -> int:
    """Mask-form compound_info of a tail: GENMASK(63, order + 6) | 1."""
    shift = order + 6
    return ((MASK64 >> shift) << shift) | 1


def struct_page(flags=0, info=0, prev=0, mapping=0, index=0, private=0,
                mapcount=-1, refcount=0, memcg=0) -> bytes:
    """64 bytes of a struct page (info is compound_info/compound_head/lru.next)."""
    return _PAGE.pack(flags, info, prev, mapping, index, private, mapcount, refcount, memcg)


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


@dataclasses.dataclass(frozen=True)
class ZoneSpec:
    """A populated zone: node, index in node_zones (0 DMA, 1 DMA32, 2 Normal...)."""

    nid: int
    idx: int
    start_pfn: int
    spanned: int

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.spanned


DEFAULT_ZONES = (
    ZoneSpec(0, 0, 0x1, 0xFFF),            # DMA: the first 16 MiB
    ZoneSpec(0, 1, 0x1000, 0xFF000),       # DMA32: up to 4 GiB
    ZoneSpec(1, 2, 0x100000, 0x80000),     # node 1 Normal: 4 GiB .. 6 GiB
)


@dataclasses.dataclass(frozen=True)
class FolioSpec:
    """A hugetlb folio to build. nid/zone default to the zone whose span holds pfn."""

    pfn: int
    order: int = 9
    #: "free" (on its node's freelist) or "active" (on the active list).
    state: str = "free"
    #: HVO applied: vmemmap remapped and HPG_vmemmap_optimized set.
    optimized: bool = True
    nid: Optional[int] = None
    zone: Optional[int] = None


def default_folios() -> List[FolioSpec]:
    """
    Seven 2 MiB folios and one 1 GiB folio over two nodes:

    - node 0 DMA32: 0x10000, 0x10200 (free, optimized), 0x10400 (active,
      optimized), 0x10600 (free, not optimized: same 2 MiB vmemmap block as
      the optimized ones, so its PMD is split), 0x18000 (active, not
      optimized: a vmemmap block of its own, PMD-mapped in "pmd" mode),
      0x40000 (1 GiB, free, optimized);
    - node 1 Normal: 0x100000 (free, optimized), 0x100200 (active,
      optimized), 0x100400 (free, not optimized).
    """
    return [
        FolioSpec(0x10000, 9, "free", True),
        FolioSpec(0x10200, 9, "free", True),
        FolioSpec(0x10400, 9, "active", True),
        FolioSpec(0x10600, 9, "free", False),
        FolioSpec(0x18000, 9, "active", False),
        FolioSpec(0x40000, 18, "free", True),
        FolioSpec(0x100000, 9, "free", True),
        FolioSpec(0x100200, 9, "active", True),
        FolioSpec(0x100400, 9, "free", False),
    ]


@dataclasses.dataclass
class FolioInfo:
    """A built folio: where everything went."""

    pfn: int
    order: int
    nid: int
    zone: int
    state: str
    optimized: bool
    #: Address of the head struct page (== struct folio *).
    page: int
    #: Vmemmap pages the folio's struct pages span.
    npages: int
    #: Frame behind each vmemmap page (index 0: the head's frame).
    frames: List[int]
    #: The 'private' word written (HPG bits).
    private: int

    @property
    def head_frame(self) -> int:
        return self.frames[0]

    @property
    def vmemmap(self) -> int:
        """Virtual address of the folio's first vmemmap page."""
        return self.page

    def vmemmap_page(self, i: int) -> int:
        """Virtual address of vmemmap page ``i`` of the folio."""
        return self.page + i * PAGE_SIZE

    def struct_page(self, i: int) -> int:
        """Address of the struct page of pfn + i."""
        return self.page + i * SIZEOF_PAGE


class PhysMem:
    """Physical memory: a bytearray and a bump allocator of frames."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.next_pfn = 1  # frame 0 is never handed out

    def alloc(self, npages: int = 1, align: int = 1) -> int:
        pfn = _round_up(self.next_pfn, align)
        self.next_pfn = pfn + npages
        need = self.next_pfn << PAGE_SHIFT
        if need > len(self.buf):
            self.buf.extend(bytes(_round_up(need, 1 << 20) - len(self.buf)))
        return pfn

    def alloc_bytes_page(self, size: int) -> int:
        """Whole zeroed frames for ``size`` bytes; returns the physical address."""
        return self.alloc(max(1, _round_up(size, PAGE_SIZE) // PAGE_SIZE)) << PAGE_SHIFT

    def u64(self, phys: int) -> int:
        return _U64.unpack_from(self.buf, phys)[0]

    def set_u64(self, phys: int, value: int) -> None:
        _U64.pack_into(self.buf, phys, value & MASK64)

    def write(self, phys: int, data: bytes) -> None:
        self.buf[phys:phys + len(data)] = data

    def read(self, phys: int, n: int) -> bytes:
        return bytes(self.buf[phys:phys + n])


class PageTables:
    """x86_64 page tables in a :class:`PhysMem` (levels: 1 = PTE ... 5 = PGD)."""

    def __init__(self, mem: PhysMem, levels: int) -> None:
        self.mem = mem
        self.levels = levels
        self.top = mem.alloc() << PAGE_SHIFT

    @staticmethod
    def index(va: int, level: int) -> int:
        return (va >> (PAGE_SHIFT + 9 * (level - 1))) & 511

    def table_for(self, va: int, level: int) -> int:
        """Physical address of the level-``level`` table covering ``va``,
        creating tables and splitting huge leaves on the way (as HVO splits
        a vmemmap PMD before remapping its PTEs)."""
        mem = self.mem
        table = self.top
        for lvl in range(self.levels, level, -1):
            ea = table + 8 * self.index(va, lvl)
            e = mem.u64(ea)
            if not e & _P:
                new = mem.alloc() << PAGE_SHIFT
                mem.set_u64(ea, new | TABLE_FLAGS)
                table = new
            elif lvl in (2, 3) and e & _PSE:
                new = mem.alloc() << PAGE_SHIFT
                span = 1 << (PAGE_SHIFT + 9 * (lvl - 1))
                base = e & ADDR_MASK & ~(span - 1)
                step = span // 512
                flags = e & ~ADDR_MASK
                if lvl - 1 == 1:
                    flags &= ~_PSE  # bit 7 of a PTE is PAT
                for i in range(512):
                    mem.set_u64(new + 8 * i, (base + i * step) | flags)
                mem.set_u64(ea, new | TABLE_FLAGS)
                table = new
            else:
                table = e & ADDR_MASK
        return table

    def map_4k(self, va: int, pfn: int, writable: bool = True) -> None:
        t = self.table_for(va, 1)
        self.mem.set_u64(t + 8 * self.index(va, 1),
                         (pfn << PAGE_SHIFT) | (PTE_RW if writable else PTE_RO))

    def map_2m(self, va: int, phys: int, writable: bool = True) -> None:
        assert va % (2 << 20) == 0 and phys % (2 << 20) == 0
        t = self.table_for(va, 2)
        self.mem.set_u64(t + 8 * self.index(va, 2), phys | (PMD_RW if writable else PMD_RW & ~_RW))

    def map_1g(self, va: int, phys: int, writable: bool = True) -> None:
        assert va % (1 << 30) == 0 and phys % (1 << 30) == 0
        t = self.table_for(va, 3)
        self.mem.set_u64(t + 8 * self.index(va, 3), phys | (PMD_RW if writable else PMD_RW & ~_RW))

    def table_entry_address(self, va: int, level: int) -> int:
        """Physical address of the level-``level`` entry on the walk to ``va``
        (the table must exist)."""
        table = self.top
        for lvl in range(self.levels, level, -1):
            e = self.mem.u64(table + 8 * self.index(va, lvl))
            assert e & _P and not (lvl in (2, 3) and e & _PSE)
            table = e & ADDR_MASK
        return table + 8 * self.index(va, level)

    def leaf(self, va: int) -> Tuple[Optional[int], int]:
        """(physical address of the leaf entry, level) for ``va``; (None, 0)
        if a table on the way is missing."""
        mem = self.mem
        table = self.top
        for lvl in range(self.levels, 0, -1):
            ea = table + 8 * self.index(va, lvl)
            e = mem.u64(ea)
            if not e & _P:
                return ea, 0
            if lvl == 1 or (lvl in (2, 3) and e & _PSE):
                return ea, lvl
            table = e & ADDR_MASK
        raise AssertionError("unreachable")

    def translate(self, va: int) -> Optional[int]:
        ea, lvl = self.leaf(va)
        if not lvl:
            return None
        span = 1 << (PAGE_SHIFT + 9 * (lvl - 1))
        return (self.mem.u64(ea) & ADDR_MASK & ~(span - 1)) + (va & (span - 1))


class SyntheticKernel:
    """A built kernel: ``.prog`` and everything needed to predict or corrupt it."""

    def __init__(self) -> None:
        self.prog: Program
        self.mem: PhysMem
        self.pt: PageTables
        self.form: str
        self.levels: int
        self.tails_owner: Optional[str]
        self.info_member: Optional[str]
        self.vmemmap_base: int
        self.page_offset: int
        self.folios: Dict[int, FolioInfo] = {}
        #: (nid, zone idx, order) -> shared tail frame (mask form); zone idx
        #: is None for tails kept per node (pglist_data).
        self.shared: Dict[Tuple[int, Optional[int], int], int] = {}
        self.zones: List[ZoneSpec] = []
        #: (nid, zone idx) -> address of struct zone.
        self.zone_address: Dict[Tuple[int, int], int] = {}
        #: nid -> address of struct pglist_data.
        self.pgdat_address: Dict[int, int] = {}
        #: order -> address of struct hstate.
        self.hstate_address: Dict[int, int] = {}
        #: 2 MiB vmemmap blocks mapped (or first mapped) by PMD leaves: region -> base pfn.
        self.pmd_blocks: Dict[int, int] = {}
        self.symbols: Dict[str, Tuple[drgn.Type, int]] = {}
        self.present_sections: List[int] = []
        self._spare: List[int] = []
        self._offsets: Dict[str, int] = {}

    # Addresses.

    def kva(self, phys: int) -> int:
        """Kernel-image virtual address of a physical address."""
        return START_KERNEL_MAP + phys

    def dva(self, phys: int) -> int:
        """Direct-map virtual address of a physical address."""
        return self.page_offset + phys

    def page_address(self, pfn: int) -> int:
        """Address of the struct page of ``pfn`` in the vmemmap."""
        return self.vmemmap_base + pfn * SIZEOF_PAGE

    def folio(self, pfn: int) -> FolioInfo:
        return self.folios[pfn]

    def shared_frame(self, nid: int, zone: Optional[int], order: int = 9) -> int:
        """Shared tail frame of (node, zone, order); zone is ignored when the
        tails are per node (pglist_data)."""
        if self.tails_owner == "pglist_data":
            zone = None
        return self.shared[(nid, zone, order)]

    def symbol(self, name: str) -> int:
        return self.symbols[name][1]

    # Handles to corrupt the kernel.

    def invalidate(self) -> None:
        """Forget what vmemspect (and drgn's helpers) cached on the program."""
        self.prog.cache.clear()

    def pte_address(self, va: int) -> int:
        """Physical address of the leaf entry mapping ``va``."""
        ea, lvl = self.pt.leaf(va)
        assert lvl, f"{va:#x} is not mapped"
        return ea

    def read_pte(self, va: int) -> int:
        return self.mem.u64(self.pte_address(va))

    def write_pte(self, va: int, value: int) -> None:
        self.mem.set_u64(self.pte_address(va), value)

    def remap(self, va: int, frame_pfn: int, writable: bool = False) -> None:
        """Point the 4 KiB PTE of ``va`` at ``frame_pfn``."""
        ea, lvl = self.pt.leaf(va)
        assert lvl == 1, f"{va:#x} is not mapped by a PTE"
        self.mem.set_u64(ea, (frame_pfn << PAGE_SHIFT) | (PTE_RW if writable else PTE_RO))

    def set_writable(self, va: int, writable: bool = True) -> None:
        e = self.read_pte(va)
        self.write_pte(va, (e | _RW) if writable else (e & ~_RW))

    def frame_page_address(self, frame_pfn: int, index: int) -> int:
        """Physical address of struct page ``index`` (0..63) in a vmemmap frame."""
        return (frame_pfn << PAGE_SHIFT) + index * SIZEOF_PAGE

    def write_frame_page(self, frame_pfn: int, index: int, **fields: int) -> None:
        """Overwrite fields (flags, info, mapping, private, refcount...) of
        struct page ``index`` in a vmemmap frame."""
        base = self.frame_page_address(frame_pfn, index)
        values = list(_PAGE.unpack_from(self.mem.buf, base))
        names = ["flags", "info", "prev", "mapping", "index", "private", "mapcount",
                 "refcount", "memcg"]
        for k, v in fields.items():
            values[names.index(k)] = v
        _PAGE.pack_into(self.mem.buf, base, *values)

    def read_frame_page(self, frame_pfn: int, index: int) -> Dict[str, int]:
        names = ["flags", "info", "prev", "mapping", "index", "private", "mapcount",
                 "refcount", "memcg"]
        return dict(zip(names, _PAGE.unpack_from(self.mem.buf,
                                                 self.frame_page_address(frame_pfn, index))))

    def set_private(self, folio_pfn: int, value: int) -> None:
        f = self.folios[folio_pfn]
        self.write_frame_page(f.head_frame, 0, private=value)

    def set_optimized_flag(self, folio_pfn: int, on: bool) -> None:
        f = self.folios[folio_pfn]
        p = self.read_frame_page(f.head_frame, 0)["private"]
        bit = 1 << HPG_VMEMMAP_OPTIMIZED
        self.set_private(folio_pfn, (p | bit) if on else (p & ~bit))

    def tails_slot_address(self, nid: int, zone: Optional[int], slot: int) -> int:
        """Physical address of vmemmap_tails[slot] of a zone (or node)."""
        if self.tails_owner == "zone":
            base = self.zone_address[(nid, zone)] + self._offsets["zone.vmemmap_tails"]
        elif self.tails_owner == "pglist_data":
            base = self.pgdat_address[nid] + self._offsets["pglist_data.vmemmap_tails"]
        else:
            raise ValueError("this kernel has no vmemmap_tails")
        return self._phys_of_kernel_va(base) + 8 * slot

    def set_tails_slot(self, nid: int, zone: Optional[int], slot: int, value: int) -> None:
        self.mem.set_u64(self.tails_slot_address(nid, zone, slot), value)

    def set_hstate_counter(self, order: int, member: str, nid: Optional[int], value: int) -> None:
        """Overwrite an hstate counter (nr_huge_pages..., or a per-node one with nid)."""
        base = self._phys_of_kernel_va(self.hstate_address[order])
        if nid is None:
            self.mem.set_u64(base + self._offsets[f"hstate.{member}"], value)
        else:
            struct.pack_into("<I", self.mem.buf,
                             base + self._offsets[f"hstate.{member}"] + 4 * nid, value)

    def alloc_frame(self, data: Optional[bytes] = None) -> int:
        """A frame set aside at build time (the memory cannot grow afterwards)."""
        pfn = self._spare.pop(0)
        if data is not None:
            self.mem.write(pfn << PAGE_SHIFT, data)
        return pfn

    def _phys_of_kernel_va(self, va: int) -> int:
        phys = self.pt.translate(va)
        assert phys is not None
        return phys


# ---------------------------------------------------------------------------
# Types


class _Types:
    """The kernel's types, created once per program."""

    def __init__(self, prog: Program, cfg: "_Config") -> None:
        self.by_key: Dict[Tuple[TypeKind, str], drgn.Type] = {}
        self.offsets: Dict[str, int] = {}
        p = prog
        M = TypeMember
        self.ulong = ulong = p.int_type("unsigned long", 8, False)
        self.long = long_ = p.int_type("long", 8, True)
        self.uint = uint = p.int_type("unsigned int", 4, False)
        self.int = int_ = p.int_type("int", 4, True)
        self.char = char = p.int_type("char", 1, True)
        self.bool = p.bool_type("_Bool", 1)
        void = p.void_type()
        self.voidp = voidp = p.pointer_type(void)

        list_head = p.struct_type("list_head", 16, (
            M(lambda: p.pointer_type(list_head), "next", 0),
            M(lambda: p.pointer_type(list_head), "prev", 64),
        ))
        self.list_head = list_head
        atomic_t = p.typedef_type("atomic_t", p.struct_type(None, 4, (M(int_, "counter", 0),)))
        atomic_long_t = p.typedef_type(
            "atomic_long_t", p.struct_type(None, 8, (M(long_, "counter", 0),)))
        self.atomic_long_t = atomic_long_t
        address_space = p.struct_type("address_space")  # incomplete

        # struct page: flags, then a union of the lru/mapping/index/private
        # struct and the compound_head/compound_info struct, as in the kernel.
        if cfg.flags_type == "memdesc":
            flags_t = p.typedef_type("memdesc_flags_t",
                                     p.struct_type(None, 8, (M(ulong, "f", 0),)))
        else:
            flags_t = ulong
        lru_union = p.union_type(None, 16, (
            M(list_head, "lru", 0),
            M(p.struct_type(None, 16, (M(voidp, "__filler", 0), M(uint, "mlock_count", 64))),
              None, 0),
        ))
        pagecache = p.struct_type(None, 40, (
            M(lru_union, None, 0),
            M(p.pointer_type(address_space), "mapping", 128),
            M(p.union_type(None, 8, (M(ulong, "index", 0), M(ulong, "share", 0))), None, 192),
            M(ulong, "private", 256),
        ))
        members = [M(flags_t, "flags", 0),
                   M(p.union_type(None, 40, (
                       M(pagecache, None, 0),
                       M(p.struct_type(None, 8, (M(ulong, cfg.info_member, 0),))
                         if cfg.info_member else p.struct_type(None, 8, (M(ulong, "pp_magic", 0),)),
                         None, 0),
                   )), None, 64),
                   M(p.union_type(None, 4, (M(uint, "page_type", 0), M(atomic_t, "_mapcount", 0))),
                     None, 384),
                   M(atomic_t, "_refcount", 416),
                   M(ulong, "memcg_data", 448)]
        if cfg.sizeof_page > 64:
            members.append(M(voidp, "virtual", 512))
        page = p.struct_type("page", cfg.sizeof_page, members)
        self.page = page
        pagep = p.pointer_type(page)

        # struct folio (256 bytes): the first struct page spelled out, then
        # the second and third pages' folio fields.
        folio_first = p.struct_type(None, 64, (
            M(flags_t, "flags", 0),
            M(p.union_type(None, 16, (
                M(list_head, "lru", 0),
                M(p.struct_type(None, 16, (M(voidp, "__filler", 0),
                                           M(uint, "mlock_count", 64))), None, 0),
            )), None, 64),
            M(p.pointer_type(address_space), "mapping", 192),
            M(ulong, "index", 256),
            M(p.union_type(None, 8, (M(voidp, "private", 0),)), None, 320),
            M(atomic_t, "_mapcount", 384),
            M(atomic_t, "_refcount", 416),
            M(ulong, "memcg_data", 448),
        ))
        uchar = p.int_type("unsigned char", 1, False)
        if cfg.order_field == "folio_order":
            # 5.16-6.5 (Debian 12's 6.1): the order has a byte of its own.
            folio_second = p.struct_type(None, 64, (
                M(ulong, "_flags_1", 0),
                M(ulong, "__head", 64),
                M(uchar, "_folio_dtor", 128),
                M(uchar, "_folio_order", 136),
                M(atomic_t, "_total_mapcount", 160),
                M(atomic_t, "_pincount", 192),
                M(uint, "_folio_nr_pages", 224),
            ))
        else:
            folio_second = p.struct_type(None, 64, (
                M(ulong, "_flags_1", 0),
                M(ulong, "_head_1", 64),
                M(atomic_t, "_large_mapcount", 128),
                M(atomic_t, "_nr_pages_mapped", 160),
                M(atomic_t, "_entire_mapcount", 192),
                M(atomic_t, "_pincount", 224),
            ))
        folio_third = p.struct_type(None, 64, (
            M(ulong, "_flags_2", 0),
            M(ulong, "_head_2", 64),
            M(voidp, "_hugetlb_subpool", 128),
            M(voidp, "_hugetlb_cgroup", 192),
            M(voidp, "_hugetlb_cgroup_rsvd", 256),
            M(voidp, "_hugetlb_hwpoison", 320),
        ))
        folio = p.struct_type("folio", 256, (
            M(p.union_type(None, 64, (M(folio_first, None, 0), M(page, "page", 0))), None, 0),
            M(p.union_type(None, 64, (M(folio_second, None, 0), M(page, "__page_1", 0))),
              None, 512),
            M(p.union_type(None, 64, (M(folio_third, None, 0), M(page, "__page_2", 0))),
              None, 1024),
            M(page, "__page_3", 1536),
        ))

        # struct hstate; the offsets are this module's own.
        n = MAX_NUMNODES
        hs_members = [
            ("next_nid_to_alloc", int_, 24), ("next_nid_to_free", int_, 28),
            ("order", uint, 32), ("demote_order", uint, 36), ("mask", ulong, 40),
            ("max_huge_pages", ulong, 48), ("nr_huge_pages", ulong, 56),
            ("free_huge_pages", ulong, 64), ("resv_huge_pages", ulong, 72),
            ("surplus_huge_pages", ulong, 80), ("nr_overcommit_huge_pages", ulong, 88),
            ("hugepage_activelist", list_head, 96),
            ("hugepage_freelists", p.array_type(list_head, n), 112),
        ]
        off = 112 + 16 * n
        for name in ("max_huge_pages_node", "nr_huge_pages_node", "free_huge_pages_node",
                     "surplus_huge_pages_node"):
            hs_members.append((name, p.array_type(uint, n), off))
            off += 4 * n
        hs_members.append(("name", p.array_type(char, 32), off))
        off += 32
        hstate = p.struct_type("hstate", _round_up(off, 8),
                               [M(t, name, 8 * o) for name, t, o in hs_members])
        self.hstate = hstate
        for name, _, o in hs_members:
            self.offsets[f"hstate.{name}"] = o

        # struct zone and struct pglist_data.
        pgdat_fwd = lambda: pglist_data  # noqa: E731
        zone_members = [
            ("_watermark", p.array_type(ulong, 4), 0), ("watermark_boost", ulong, 32),
            ("nr_reserved_highatomic", ulong, 40),
            ("lowmem_reserve", p.array_type(long_, MAX_NR_ZONES), 48),
            ("node", int_, 88),
            ("zone_pgdat", lambda: p.pointer_type(pgdat_fwd()), 96),
            ("per_cpu_pageset", voidp, 104),
            ("zone_start_pfn", ulong, 112), ("managed_pages", atomic_long_t, 120),
            ("spanned_pages", ulong, 128), ("present_pages", ulong, 136),
            ("present_early_pages", ulong, 144), ("cma_pages", ulong, 152),
            ("name", p.pointer_type(p.int_type("char", 1, True, qualifiers=drgn.Qualifiers.CONST)),
             160),
            ("nr_isolate_pageblock", ulong, 168),
        ]
        zone_size = 192
        if cfg.tails_owner == "zone":
            zone_members.append(("vmemmap_tails", p.array_type(pagep, cfg.tails_len), 192))
            zone_size = _round_up(192 + 8 * cfg.tails_len, 64)
        zone = p.struct_type("zone", zone_size,
                             [M(t, name, 8 * o) for name, t, o in zone_members])
        self.zone = zone
        for name, _, o in zone_members:
            self.offsets[f"zone.{name}"] = o
        zoff = MAX_NR_ZONES * zone_size
        pg_members = [
            ("node_zones", p.array_type(zone, MAX_NR_ZONES), 0),
            ("nr_zones", int_, zoff),
            ("node_start_pfn", ulong, zoff + 8), ("node_present_pages", ulong, zoff + 16),
            ("node_spanned_pages", ulong, zoff + 24), ("node_id", int_, zoff + 32),
        ]
        pg_size = zoff + 64
        if cfg.tails_owner == "pglist_data":
            pg_members.append(("vmemmap_tails", p.array_type(pagep, cfg.tails_len), zoff + 64))
            pg_size = _round_up(zoff + 64 + 8 * cfg.tails_len, 64)
        pglist_data = p.struct_type("pglist_data", pg_size,
                                    [M(t, name, 8 * o) for name, t, o in pg_members])
        self.pglist_data = pglist_data
        for name, _, o in pg_members:
            self.offsets[f"pglist_data.{name}"] = o
        pg_data_t = p.typedef_type("pg_data_t", pglist_data)

        # Page tables, mm, utsname, nodemask, mem_section.
        pgdval_t = p.typedef_type("pgdval_t", ulong)
        if cfg.pgd_type == "struct":
            pgd_t = p.typedef_type("pgd_t", p.struct_type(None, 8, (M(pgdval_t, "pgd", 0),)))
        else:
            pgd_t = p.typedef_type("pgd_t", pgdval_t)
        self.pgd_t = pgd_t
        mm = p.struct_type("mm_struct", 128, (
            M(ulong, "mmap_base", 64), M(ulong, "task_size", 72),
            M(p.pointer_type(pgd_t), "pgd", 640),
            M(atomic_t, "mm_users", 704), M(atomic_t, "mm_count", 736),
        ))
        self.offsets["mm_struct.pgd"] = 80
        self.mm_struct = mm
        utsname = p.struct_type("new_utsname", 390, [
            M(p.array_type(char, 65), f, 8 * 65 * i)
            for i, f in enumerate(("sysname", "nodename", "release", "version", "machine",
                                   "domainname"))])
        self.uts_namespace = p.struct_type("uts_namespace", 400, (
            M(utsname, "name", 0), M(voidp, "user_ns", 8 * 392)))
        nodemask_t = p.typedef_type("nodemask_t", p.struct_type(None, 8 * (MAX_NUMNODES // 64), (
            M(p.array_type(ulong, MAX_NUMNODES // 64), "bits", 0),)))
        self.nodemask_t = nodemask_t
        mem_section = p.struct_type("mem_section", 16, (
            M(ulong, "section_mem_map", 0), M(voidp, "usage", 64)))
        self.mem_section = mem_section

        # Enums (their enumerators are constants for the object finder).
        def enum(tag, names, values=None):
            values = values if values is not None else range(len(names))
            return p.enum_type(tag, uint, [TypeEnumerator(nm, v) for nm, v in zip(names, values)])

        self.pageflags = enum("pageflags", PAGEFLAGS + ["__NR_PAGEFLAGS"])
        self.hugetlb_page_flags = enum("hugetlb_page_flags", HPG_FLAGS + ["__NR_HPAGEFLAGS"])
        self.zone_type = enum("zone_type", ZONE_ENUM + ["__MAX_NR_ZONES"])
        self.node_states = enum("node_states", NODE_STATES + ["NR_NODE_STATES"])
        self.constants: Dict[str, Tuple[drgn.Type, int]] = {}
        for e in (self.pageflags, self.hugetlb_page_flags, self.zone_type, self.node_states):
            for en in e.enumerators:
                self.constants[en.name] = (e, en.value)
        self.constants["N_HIGH_MEMORY"] = (self.node_states, 2)
        self.vmemmap_populate = p.function_type(int_, (
            TypeParameter(ulong, "start"), TypeParameter(ulong, "end"),
            TypeParameter(int_, "node"), TypeParameter(voidp, "altmap")))
        # HVO's entry point: per folio (6.6+) or per head page (6.1).
        self.hvo_optimize = p.function_type(p.void_type(), (
            TypeParameter(voidp, "h"),
            TypeParameter(p.pointer_type(folio if cfg.order_field == "flags_1" else page),
                          "folio" if cfg.order_field == "flags_1" else "head")))
        # struct static_key_false { struct static_key key; } (jump labels).
        static_key = p.struct_type("static_key", 16, (
            M(atomic_t, "enabled", 0), M(ulong, "type", 64)))
        self.static_key_false = p.struct_type("static_key_false", 16, (M(static_key, "key", 0),))
        self.by_key[(TypeKind.STRUCT, "static_key")] = static_key
        self.by_key[(TypeKind.STRUCT, "static_key_false")] = self.static_key_false

        for t in (list_head, page, folio, hstate, zone, pglist_data, mm, utsname,
                  self.uts_namespace, mem_section, address_space):
            self.by_key[(TypeKind.STRUCT, t.tag)] = t
        for t in (atomic_t, atomic_long_t, pg_data_t, pgdval_t, pgd_t, nodemask_t):
            self.by_key[(TypeKind.TYPEDEF, t.name)] = t
        if cfg.flags_type == "memdesc":
            self.by_key[(TypeKind.TYPEDEF, flags_t.name)] = flags_t
        for e in (self.pageflags, self.hugetlb_page_flags, self.zone_type, self.node_states):
            self.by_key[(TypeKind.ENUM, e.tag)] = e

    def find(self, prog, kinds, name, filename):
        for kind in kinds:
            t = self.by_key.get((kind, name))
            if t is not None:
                return t
        return None


# ---------------------------------------------------------------------------
# The builder


@dataclasses.dataclass
class _Config:
    form: str
    levels: int
    info_member: Optional[str]
    tails_owner: Optional[str]
    tails_len: int
    sizeof_page: int
    flags_type: str
    pgd_type: str
    order_field: str = "flags_1"


def build_kernel(
    form: str = "mask",
    levels: int = 4,
    tails_owner: Optional[str] = "default",
    info_member: Optional[str] = "default",
    folios: Optional[Sequence[FolioSpec]] = None,
    vmemmap_mapping: str = "pmd",
    hvo_built: Optional[bool] = None,
    hvo_enabled: bool = True,
    vmemmap_base: Optional[int] = None,
    zones: Sequence[ZoneSpec] = DEFAULT_ZONES,
    hstate_orders: Sequence[int] = (9, 18),
    release: Optional[str] = None,
    sizeof_page: int = SIZEOF_PAGE,
    levels_symbol: Optional[str] = "pgdir_shift",
    memmap_counters: Optional[Tuple[int, int]] = None,
    shared_flags: Optional[str] = None,
    flags_type: str = "ulong",
    pgd_type: str = "struct",
    tails_len: int = NR_VMEMMAP_TAILS,
    spare_frames: int = 4,
    generation: str = "default",
    hvo_key: Optional[int] = None,
    hide: Sequence[str] = (),
) -> SyntheticKernel:
    """
    Build a synthetic kernel.

    :param form: "mask" (7.1+: compound_info holds GENMASK|1, shared tail
        frames) or "pointer" (< 7.1: compound_head holds head|1, fake heads).
    :param levels: 4 or 5 (LA57) level paging.
    :param tails_owner: "zone" (merged code), "pglist_data" (the series'
        postings) or None; default: "zone" for the mask form, None else.
    :param info_member: "compound_info" or "compound_head" (or None: neither);
        default: by form. ``form="pointer", info_member="compound_info"`` is
        the arm64 7.2 kind (the new name, no HVO, pointer values).
    :param folios: the hugetlb folios (default :func:`default_folios`).
    :param vmemmap_mapping: how vmemmap not touched by HVO is mapped: "pmd"
        (2 MiB leaves over a 2 MiB block for every region that holds an
        unoptimized folio; a PMD that also holds an optimized folio is split
        into PTEs; regions of optimized folios only get PTEs, as boot-time
        HVO leaves them) or "pte" (a fresh frame per vmemmap page, nothing
        else mapped).
    :param hvo_built: CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP (the
        ``vmemmap_optimize_enabled`` variable exists); default: True unless
        the pointer form is built with compound_info (arm64 style).
    :param hvo_enabled: value of ``vmemmap_optimize_enabled``.
    :param vmemmap_base: the vmemmap's base (default: the non-KASLR one).
    :param levels_symbol: "pgdir_shift", "__pgtable_l5_enabled" or None: which
        variable says the paging depth.
    :param memmap_counters: (nr_memmap_boot_pages, nr_memmap_pages), or None
        to leave the counters out (a kernel before 6.10).
    :param shared_flags: page flags of the shared tail frames' struct pages:
        "zone" (node and zone, the merged code's init_compound_tail()) or
        "none" (zero: prep_compound_tail() of the postings); default by owner.
    :param flags_type: "ulong" or "memdesc" (memdesc_flags_t, Linux 6.18+).
    :param pgd_type: "struct" (pgd_t is a struct) or "ulong".
    :param spare_frames: zeroed frames kept for :meth:`SyntheticKernel.alloc_frame`.
    :param generation: "default" (6.6+: order in folio->_flags_1's low byte,
        hugetlb_vmemmap_optimize_folio()) or "6.1" (Debian 12: order in
        folio->_folio_order, hugetlb_vmemmap_optimize(struct page *), the
        pointer form, no memmap counters).
    :param hvo_key: the count of ``hugetlb_optimize_vmemmap_key`` (5.18-7.0),
        or None to leave it out; "default" generation pointer-form kernels
        get it only when given.
    """
    assert form in ("mask", "pointer") and levels in (4, 5)
    assert vmemmap_mapping in ("pmd", "pte")
    if tails_owner == "default":
        tails_owner = "zone" if form == "mask" else None
    if info_member == "default":
        info_member = "compound_info" if form == "mask" else "compound_head"
    if form == "mask":
        assert info_member == "compound_info" and tails_owner and sizeof_page == 64, \
            "the mask form needs compound_info, vmemmap_tails and a 64-byte struct page"
    if hvo_built is None:
        hvo_built = not (form == "pointer" and info_member == "compound_info")
    if shared_flags is None:
        shared_flags = "none" if tails_owner == "pglist_data" else "zone"
    if release is None:
        release = "7.2.13+deb14-cloud-amd64" if info_member == "compound_info" \
            else "6.1.0-56-cloud-amd64" if generation == "6.1" \
            else "6.12.117+deb13-cloud-amd64"
    if folios is None:
        folios = default_folios()
    if sizeof_page != SIZEOF_PAGE:
        assert not folios, "folios need a 64-byte struct page"
    layout = LAYOUTS[levels]
    if vmemmap_base is None:
        vmemmap_base = layout["vmemmap"]
    assert vmemmap_base % (1 << 28) == 0, "vmemmap must be aligned for the mask form"

    assert generation in ("default", "6.1")
    if generation == "6.1":
        assert form == "pointer" and info_member == "compound_head" and memmap_counters is None
    cfg = _Config(form, levels, info_member, tails_owner, tails_len, sizeof_page, flags_type,
                  pgd_type, "folio_order" if generation == "6.1" else "flags_1")
    k = SyntheticKernel()
    k.form, k.levels, k.tails_owner, k.info_member = form, levels, tails_owner, info_member
    k.vmemmap_base, k.page_offset = vmemmap_base, layout["page_offset"]
    k.zones = list(zones)
    k.mem = mem = PhysMem()
    k.pt = pt = PageTables(mem, levels)

    prog = Program(Platform(Architecture.X86_64,
                            PlatformFlags.IS_64_BIT | PlatformFlags.IS_LITTLE_ENDIAN))
    k.prog = prog
    types = _Types(prog, cfg)
    k._offsets = types.offsets
    variables: Dict[str, Tuple[drgn.Type, int]] = {}
    k.symbols = variables

    def kvar(name: str, type_: drgn.Type, size: Optional[int] = None) -> int:
        """A kernel variable: zeroed memory in the kernel image; returns its phys."""
        phys = mem.alloc_bytes_page(size if size is not None else drgn.sizeof(type_))
        variables[name] = (type_, k.kva(phys))
        return phys

    def kstring(s: str) -> int:
        phys = mem.alloc_bytes_page(len(s) + 1)
        mem.write(phys, s.encode() + b"\0")
        return k.kva(phys)

    # swapper_pg_dir is the top table itself.
    variables["swapper_pg_dir"] = (prog.array_type(types.pgd_t, 512), k.kva(pt.top))

    # --- nodes and zones --------------------------------------------------
    nids = sorted({z.nid for z in zones})
    zone_names = [kstring(n) for n in ZONE_NAMES]
    node_data = kvar("node_data", prog.array_type(prog.pointer_type(types.pglist_data),
                                                  MAX_NUMNODES))
    zsize = drgn.sizeof(types.zone)
    zo = types.offsets
    for nid in nids:
        pg = mem.alloc_bytes_page(drgn.sizeof(types.pglist_data))
        pgva = k.dva(pg)
        k.pgdat_address[nid] = pgva
        mem.set_u64(node_data + 8 * nid, pgva)
        mine = [z for z in zones if z.nid == nid]
        for idx in range(MAX_NR_ZONES):
            zp = pg + idx * zsize
            k.zone_address[(nid, idx)] = pgva + idx * zsize
            mem.set_u64(zp + zo["zone.name"], zone_names[idx])
            mem.set_u64(zp + zo["zone.zone_pgdat"], pgva)
            struct.pack_into("<i", mem.buf, zp + zo["zone.node"], nid)
        for z in mine:
            zp = pg + z.idx * zsize
            mem.set_u64(zp + zo["zone.zone_start_pfn"], z.start_pfn)
            mem.set_u64(zp + zo["zone.spanned_pages"], z.spanned)
            mem.set_u64(zp + zo["zone.present_pages"], z.spanned)
            mem.set_u64(zp + zo["zone.managed_pages"], z.spanned)
        start = min(z.start_pfn for z in mine)
        end = max(z.end_pfn for z in mine)
        struct.pack_into("<i", mem.buf, pg + zo["pglist_data.nr_zones"],
                         max(z.idx for z in mine) + 1)
        mem.set_u64(pg + zo["pglist_data.node_start_pfn"], start)
        mem.set_u64(pg + zo["pglist_data.node_present_pages"], sum(z.spanned for z in mine))
        mem.set_u64(pg + zo["pglist_data.node_spanned_pages"], end - start)
        struct.pack_into("<i", mem.buf, pg + zo["pglist_data.node_id"], nid)

    node_states = kvar("node_states", prog.array_type(types.nodemask_t, len(NODE_STATES)))
    mask_words = MAX_NUMNODES // 64
    for state in (0, 1, 2, 3):  # possible, online, normal memory, memory
        for nid in nids:
            a = node_states + 8 * (state * mask_words + nid // 64)
            mem.set_u64(a, mem.u64(a) | (1 << (nid % 64)))
    p = kvar("nr_node_ids", types.uint)
    struct.pack_into("<I", mem.buf, p, max(nids) + 1)

    # --- folios: resolve node and zone --------------------------------------
    infos: List[FolioInfo] = []
    for spec in folios:
        assert spec.pfn % (1 << spec.order) == 0, f"folio {spec.pfn:#x} is not aligned"
        assert spec.order in hstate_orders, f"no hstate of order {spec.order}"
        nid, zidx = spec.nid, spec.zone
        if nid is None or zidx is None:
            for z in zones:
                if z.start_pfn <= spec.pfn < z.end_pfn:
                    nid = z.nid if nid is None else nid
                    zidx = z.idx if zidx is None else zidx
                    break
            else:
                raise ValueError(f"no zone spans folio pfn {spec.pfn:#x}")
        private = (1 << HPG_FREED) if spec.state == "free" else (1 << HPG_MIGRATABLE)
        if spec.optimized:
            private |= 1 << HPG_VMEMMAP_OPTIMIZED
        info = FolioInfo(pfn=spec.pfn, order=spec.order, nid=nid, zone=zidx, state=spec.state,
                         optimized=spec.optimized, page=k.page_address(spec.pfn),
                         npages=max(1, (SIZEOF_PAGE << spec.order) // PAGE_SIZE), frames=[],
                         private=private)
        infos.append(info)
        k.folios[spec.pfn] = info

    # --- the vmemmap ------------------------------------------------------
    REGION = 2 << 20  # vmemmap bytes per PMD

    def region_of(va: int) -> int:
        return (va - vmemmap_base) // REGION

    if vmemmap_mapping == "pmd":
        for f in infos:
            if f.optimized:
                continue
            for r in range(region_of(f.vmemmap), region_of(f.vmemmap_page(f.npages - 1)) + 1):
                if r not in k.pmd_blocks:
                    block = mem.alloc(512, 512)
                    k.pmd_blocks[r] = block
                    pt.map_2m(vmemmap_base + r * REGION, block << PAGE_SHIFT)

    def tail_info(f: FolioInfo) -> int:
        if form == "mask":
            return tail_mask(f.order)
        return f.page | 1

    def tail_page(f: FolioInfo, flags_extra: int = 0) -> bytes:
        return struct_page(flags=page_flags(f.nid, f.zone, flags_extra), info=tail_info(f),
                           mapping=TAIL_MAPPING)

    def head_frame_bytes(f: FolioInfo) -> bytes:
        head = struct_page(flags=page_flags(f.nid, f.zone, 1 << PG_HEAD), info=0,
                           private=f.private, refcount=1 if f.state == "active" else 0)
        if cfg.order_field == "folio_order":
            # page[1]: compound_dtor (HUGETLB_PAGE_DTOR = 2), compound_order.
            first = bytearray(tail_page(f))
            first[16], first[17] = 2, f.order
            first = bytes(first)
        else:
            first = tail_page(f, f.order)
        return head + first + tail_page(f) * (PAGES_PER_FRAME - 2)

    def shared_tail(f: FolioInfo) -> int:
        key = (f.nid, None if tails_owner == "pglist_data" else f.zone, f.order)
        if key not in k.shared:
            pfn = mem.alloc()
            flags = page_flags(f.nid, f.zone) if shared_flags == "zone" else 0
            mem.write(pfn << PAGE_SHIFT, struct_page(flags=flags, info=tail_mask(f.order),
                                                     mapping=TAIL_MAPPING) * PAGES_PER_FRAME)
            k.shared[key] = pfn
        return k.shared[key]

    for f in infos:
        if f.optimized:
            head = mem.alloc()
            pt.map_4k(f.vmemmap, head, True)
            mem.write(head << PAGE_SHIFT, head_frame_bytes(f))
            tail = shared_tail(f) if form == "mask" else head
            for i in range(1, f.npages):
                pt.map_4k(f.vmemmap_page(i), tail, False)
            f.frames = [head] + [tail] * (f.npages - 1)
            continue
        if vmemmap_mapping == "pte":
            for i in range(f.npages):
                pt.map_4k(f.vmemmap_page(i), mem.alloc(), True)
        frames = []
        tails = tail_page(f) * PAGES_PER_FRAME
        for i in range(f.npages):
            phys = pt.translate(f.vmemmap_page(i))
            mem.write(phys, head_frame_bytes(f) if i == 0 else tails)
            frames.append(phys >> PAGE_SHIFT)
        f.frames = frames

    # --- hstates and their lists --------------------------------------------
    hstates = kvar("hstates", prog.array_type(types.hstate, HUGE_MAX_HSTATE))
    hsize = drgn.sizeof(types.hstate)
    ho = types.offsets
    p = kvar("hugetlb_max_hstate", types.int)
    struct.pack_into("<i", mem.buf, p, len(hstate_orders))

    def page_phys(va: int) -> int:
        phys = pt.translate(va)
        assert phys is not None
        return phys

    for i, order in enumerate(hstate_orders):
        hp = hstates + i * hsize
        hva = k.kva(hp)
        k.hstate_address[order] = hva
        struct.pack_into("<I", mem.buf, hp + ho["hstate.order"], order)
        mem.set_u64(hp + ho["hstate.mask"], ~((1 << (order + PAGE_SHIFT)) - 1))
        name = f"hugepages-{(PAGE_SIZE << order) // 1024}kB".encode()
        mem.write(hp + ho["hstate.name"], name + b"\0")
        mine = [f for f in infos if f.order == order]
        free = [f for f in mine if f.state == "free"]
        for field, value in (("max_huge_pages", len(mine)), ("nr_huge_pages", len(mine)),
                             ("free_huge_pages", len(free))):
            mem.set_u64(hp + ho[f"hstate.{field}"], value)
        for nid in nids:
            on = [f for f in mine if f.nid == nid]
            for field, value in (("max_huge_pages_node", len(on)),
                                 ("nr_huge_pages_node", len(on)),
                                 ("free_huge_pages_node",
                                  sum(1 for f in on if f.state == "free"))):
                struct.pack_into("<I", mem.buf, hp + ho[f"hstate.{field}"] + 4 * nid, value)
        # Lists: every list_head starts empty, then folios are added at the tail.
        heads = [hp + ho["hstate.hugepage_activelist"]] + [
            hp + ho["hstate.hugepage_freelists"] + 16 * nid for nid in range(MAX_NUMNODES)]
        for h in heads:
            mem.set_u64(h, k.kva(h))
            mem.set_u64(h + 8, k.kva(h))
        for f in mine:
            h = (hp + ho["hstate.hugepage_freelists"] + 16 * f.nid if f.state == "free"
                 else hp + ho["hstate.hugepage_activelist"])
            hva_list = k.kva(h)
            last_va = mem.u64(h + 8)
            last_phys = h if last_va == hva_list else page_phys(last_va)
            entry_va = f.page + 8  # folio->lru
            entry_phys = page_phys(entry_va)
            mem.set_u64(entry_phys, hva_list)       # entry->next = head
            mem.set_u64(entry_phys + 8, last_va)    # entry->prev = last
            mem.set_u64(last_phys, entry_va)        # last->next = entry
            mem.set_u64(h + 8, entry_va)            # head->prev = entry

    # --- shared tails in zone/pglist_data ------------------------------------
    for (nid, zidx, order), pfn in k.shared.items():
        slot = order - VMEMMAP_TAIL_MIN_ORDER
        if tails_owner == "zone":
            base = k.zone_address[(nid, zidx)] - k.page_offset + zo["zone.vmemmap_tails"]
        else:
            base = k.pgdat_address[nid] - k.page_offset + zo["pglist_data.vmemmap_tails"]
        mem.set_u64(base + 8 * slot, k.page_address(pfn))

    # --- other variables ---------------------------------------------------
    init_mm = kvar("init_mm", types.mm_struct)
    mem.set_u64(init_mm + types.offsets["mm_struct.pgd"], k.kva(pt.top))
    uts = kvar("init_uts_ns", types.uts_namespace)
    for i, s in enumerate(("Linux", "synthetic", release, "#1 SMP PREEMPT_DYNAMIC", "x86_64",
                           "(none)")):
        mem.write(uts + 65 * i, s.encode()[:64])
    for name, value in (("vmemmap_base", vmemmap_base), ("page_offset_base", k.page_offset),
                        ("vmalloc_base", layout["vmalloc"]), ("phys_base", 0)):
        mem.set_u64(kvar(name, types.ulong), value)
    if levels_symbol == "pgdir_shift":
        struct.pack_into("<I", mem.buf, kvar("pgdir_shift", types.uint),
                         48 if levels == 5 else 39)
    elif levels_symbol == "__pgtable_l5_enabled":
        struct.pack_into("<I", mem.buf, kvar("__pgtable_l5_enabled", types.uint),
                         1 if levels == 5 else 0)
    if hvo_built:
        mem.buf[kvar("vmemmap_optimize_enabled", types.bool)] = 1 if hvo_enabled else 0
    if hvo_key is not None:
        struct.pack_into("<i", mem.buf, kvar("hugetlb_optimize_vmemmap_key",
                                             types.static_key_false), hvo_key)
    if memmap_counters is not None:
        mem.set_u64(kvar("nr_memmap_boot_pages", types.atomic_long_t), memmap_counters[0])
        mem.set_u64(kvar("nr_memmap_pages", types.atomic_long_t), memmap_counters[1])

    # SPARSEMEM_EXTREME: struct mem_section **mem_section; drgn finds vmemmap
    # from the first section that has a mem_map.
    nr_roots = (1 << (layout["max_physmem_bits"] - SECTION_SIZE_BITS)) // SECTIONS_PER_ROOT
    roots = mem.alloc_bytes_page(8 * nr_roots)
    ms = kvar("mem_section", prog.pointer_type(prog.pointer_type(types.mem_section)))
    mem.set_u64(ms, k.dva(roots))
    sections = sorted({s for z in zones
                       for s in range(z.start_pfn >> PFN_SECTION_SHIFT,
                                      ((z.end_pfn - 1) >> PFN_SECTION_SHIFT) + 1)})
    k.present_sections = sections
    root_pages: Dict[int, int] = {}
    for s in sections:
        r = s // SECTIONS_PER_ROOT
        if r not in root_pages:
            root_pages[r] = mem.alloc_bytes_page(PAGE_SIZE)
            mem.set_u64(roots + 8 * r, k.dva(root_pages[r]))
        # sparse_encode_mem_map(): mem_map - section_nr_to_pfn() == vmemmap,
        # | MARKED_PRESENT | HAS_MEM_MAP | IS_ONLINE | IS_EARLY.
        mem.set_u64(root_pages[r] + 16 * (s % SECTIONS_PER_ROOT), vmemmap_base | 0xF)
    mem.set_u64(kvar("__highest_present_section_nr", types.ulong), sections[-1])

    k._spare = [mem.alloc() for _ in range(spare_frames)]

    # --- kernel image and direct map -----------------------------------------
    # Tables for both maps first, then map everything allocated (plus room).
    size = _round_up((mem.next_pfn + 16) << PAGE_SHIFT, 2 << 20)
    for base in (START_KERNEL_MAP, k.page_offset):
        for off in range(0, size, 2 << 20):
            pt.table_for(base + off, 2)
    assert (mem.next_pfn << PAGE_SHIFT) <= size
    for base in (START_KERNEL_MAP, k.page_offset):
        for off in range(0, size, 2 << 20):
            pt.map_2m(base + off, off)
    buf = mem.buf

    def read_fn(address, count, offset, physical):
        return buf[offset:offset + count]

    prog.add_memory_segment(0, len(buf), read_fn, physical=True)
    vmcoreinfo = "".join(f"{line}\n" for line in (
        f"OSRELEASE={release}",
        "PAGESIZE=4096",
        f"SYMBOL(init_uts_ns)={variables['init_uts_ns'][1]:x}",
        f"SYMBOL(swapper_pg_dir)={k.kva(pt.top):x}",
        f"SYMBOL(_stext)={START_KERNEL_MAP + 0x1000000:x}",
        f"SYMBOL(mem_section)={variables['mem_section'][1]:x}",
        f"LENGTH(mem_section)={nr_roots}",
        "SIZE(mem_section)=16",
        "OFFSET(mem_section.section_mem_map)=0",
        f"NUMBER(SECTION_SIZE_BITS)={SECTION_SIZE_BITS}",
        f"NUMBER(MAX_PHYSMEM_BITS)={layout['max_physmem_bits']}",
        f"SIZE(page)={sizeof_page}",
        f"NUMBER(pgtable_l5_enabled)={1 if levels == 5 else 0}",
        "NUMBER(phys_base)=0",
        "KERNELOFFSET=0",
        f"NUMBER(PG_head_mask)={1 << PG_HEAD}",
    ))
    prog.set_linux_kernel_custom(vmcoreinfo, False)
    prog.register_type_finder("vmemspect-synthetic", types.find, enable_index=0)

    constants = types.constants
    functions = {"vmemmap_populate": (types.vmemmap_populate, START_KERNEL_MAP + 0x1100000)}
    if hvo_built:
        functions["hugetlb_vmemmap_optimize" if generation == "6.1"
                  else "hugetlb_vmemmap_optimize_folio"] = (types.hvo_optimize,
                                                            START_KERNEL_MAP + 0x1200000)

    def find_object(prog_, name, flags, filename):
        if name in hide:
            return None
        if flags & FindObjectFlags.CONSTANT and name in constants:
            t, v = constants[name]
            return Object(prog_, t, v)
        if flags & FindObjectFlags.VARIABLE and name in variables:
            t, a = variables[name]
            return Object(prog_, t, address=a)
        if flags & FindObjectFlags.FUNCTION and name in functions:
            t, a = functions[name]
            return Object(prog_, t, address=a)
        return None

    prog.register_object_finder("vmemspect-synthetic", find_object, enable_index=-1)
    return k
