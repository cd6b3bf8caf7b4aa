"""
Kernel model
------------

What vmemspect needs to know about a kernel before it reads any hugetlb
state: the release, how a tail ``struct page`` names its head (the pointer
form of ``compound_head`` or the mask form of ``compound_info``), where the
shared tail frames live (``vmemmap_tails[]`` in ``struct zone`` or in
``struct pglist_data``), the offsets of the ``struct page`` fields it reads,
and a few constants. Everything is found from the kernel's types and
symbols, never from a version number, and is cached once per program on
``prog.cache``.

This module also decodes ``compound_info``/``compound_head`` values, which
needs nothing but the model.
"""

import dataclasses
import struct
from typing import Optional, Tuple

from drgn import FaultError, Program, ProgramFlags, offsetof, sizeof
from drgn.helpers.linux.mm import pfn_to_page

from .errors import VmemspectError
from .mmu import riscv64_kernel_root
from .progcache import cache_get, cached
from .vmcoreinfo import program_vmcoreinfo, vmcoreinfo_number, vmcoreinfo_release

__all__ = (
    "CompoundInfo",
    "KernelModel",
    "compound_info_mask",
    "decode_compound_info",
    "folio_test_hugetlb",
    "has_object",
    "kernel_model",
    "page_flags_nid",
    "page_flags_zone",
)

# TAIL_MAPPING (include/linux/poison.h: 0x400 + POISON_POINTER_DELTA, which is
# CONFIG_ILLEGAL_POINTER_VALUE, 0xdead000000000000 on x86_64 and riscv64):
# what prep_compound_tail() writes in a tail struct page's ->mapping, so
# what every struct page of a mask-form shared tail frame holds there.
TAIL_MAPPING = 0xDEAD000000000400

# Zone names by index, for kernels whose zone->name cannot be read.
_ZONE_SHIFT_FOR_COUNT = {1: 0, 2: 1, 3: 2, 4: 2}


@dataclasses.dataclass(frozen=True)
class KernelModel:
    """Facts about one kernel, found from its types and symbols."""

    release: str
    #: "x86_64" or "riscv64" (the architectures with HVO and page tables
    #: vmemspect walks); others are modelled but cannot be walked.
    arch: str
    page_shift: int
    #: sizeof(struct page).
    sizeof_page: int
    #: "compound_info" (Linux 7.1+), "compound_head" (before), or None.
    info_member: Optional[str]
    #: "mask" or "pointer": how a tail page's compound_info names its head.
    form: str
    #: "zone" (merged 7.1 code), "pglist_data" (v4 posting of the series), or None.
    tails_owner: Optional[str]
    #: Number of vmemmap_tails[] slots (0 without them).
    tails_len: int
    #: vmemmap_tails[order - tail_min_order] holds the frame for an order.
    tail_min_order: int
    #: struct hstate and hstates[] exist (CONFIG_HUGETLB_PAGE=y).
    hugetlb: bool
    #: CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y (vmemmap_optimize_enabled exists).
    hvo_built: bool
    #: What the hstate lists link and HVO acts on: "folio" (6.6+:
    #: hugetlb_vmemmap_optimize_folio()), "page" (before: 6.1's
    #: hugetlb_vmemmap_optimize(struct page *)), or None if neither is known.
    #: Both link through ->lru at the same offset (FOLIO_MATCH(lru, lru)).
    hugetlb_unit: Optional[str]
    #: hugetlb_optimize_vmemmap_key exists (before 7.1): a static key whose
    #: count is the number of folios HVO has optimized.
    hvo_key: bool
    #: Offset, from the head struct page, of the byte that holds the folio's
    #: order, and where it comes from (see _order_location()).
    off_order: int
    order_source: str
    #: Lines saying which types and symbols decided the above.
    evidence: Tuple[str, ...]
    #: The facts no type, symbol or VMCOREINFO line gave, and the default
    #: each fell back to (also at the end of ``evidence``): a verdict that
    #: rests on one of these rests on a guess.
    defaults: Tuple[str, ...]
    #: SECTION_SIZE_BITS: a memory section is 2^this bytes.
    section_size_bits: int
    # Offsets inside struct page / struct folio.
    off_flags: int
    off_info: int
    off_lru: int
    off_mapping: int
    off_private: int
    off_refcount: int
    #: Bit numbers.
    pg_head: int
    hpg_vmemmap_optimized: int
    #: Page flags layout (SPARSEMEM_VMEMMAP: no section bits).
    nodes_pgoff: int
    nodes_mask: int
    zones_pgoff: int
    zones_mask: int
    #: Address of the struct page of pfn 0 (vmemmap_base on x86_64, KASLR'd).
    vmemmap_start: int
    #: x86_64: 4 or 5; riscv64: 3, 4, 5 (Sv39, Sv48, Sv57).
    pgtable_levels: int
    #: HVO's tail mappings are read-only: it maps them PAGE_KERNEL_RO, which
    #: riscv64 does not define, so include/linux/pgtable_types.h falls back
    #: to PAGE_KERNEL there (writable; seen on Debian riscv64 6.12 and 7.2).
    tails_readonly: bool = True
    #: How a head struct page says it heads a hugetlb folio
    #: (:func:`folio_test_hugetlb`): ("page_type", offset, PGTY_hugetlb)
    #: on 6.12+, ("page_type_base", offset, PAGE_TYPE_BASE | PG_hugetlb,
    #: PAGE_TYPE_BASE) on 6.9-6.11, ("flags1", offset, bit) on 6.7-6.8,
    #: ("dtor", offset, HUGETLB_PAGE_DTOR) before; None if unknown.
    hugetlb_test: Optional[Tuple] = None
    #: HPG_migratable in folio->private: clear on a folio isolated for
    #: migration (isolate_hugetlb()).
    hpg_migratable: int = 1
    #: ZONE_DEVICE's index (CONFIG_ZONE_DEVICE), None without it: device
    #: memory's compound pages may have their tail vmemmap deduplicated
    #: too (vmemmap_populate_compound_pages(), 5.17+), which is not HVO.
    zone_device: Optional[int] = None

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def pages_per_vmemmap_page(self) -> int:
        """Struct pages in one vmemmap page (64 with 4 KiB pages, 64 B pages)."""
        return self.page_size // self.sizeof_page

    def vmemmap_pages(self, order: int) -> int:
        """Vmemmap pages that describe a folio of ``order``."""
        return max(1, ((1 << order) * self.sizeof_page) >> self.page_shift)

    def page_address(self, pfn: int) -> int:
        """Address of the struct page of ``pfn`` in the vmemmap."""
        return self.vmemmap_start + pfn * self.sizeof_page

    def page_pfn(self, address: int) -> int:
        """The pfn a struct page address describes."""
        return (address - self.vmemmap_start) // self.sizeof_page

    def struct_page_pfn(self, address: int) -> Optional[int]:
        """The pfn ``address`` describes if it is a struct page in the
        vmemmap (aligned to one, below 2^52 bytes of physical memory), else
        None: what a pointer read from a corrupted dump must pass before it
        is used as a struct page."""
        offset = address - self.vmemmap_start
        if offset < 0 or offset % self.sizeof_page:
            return None
        pfn = offset // self.sizeof_page
        return pfn if pfn < 1 << (52 - self.page_shift) else None


def _has_type(prog: Program, name: str) -> bool:
    try:
        prog.type(name)
        return True
    except LookupError:
        return False


def has_object(prog: Program, name: str) -> bool:
    """The program can find an object (variable, constant, macro) ``name``."""
    try:
        prog.object(name)
        return True
    except LookupError:
        return False


def _member_offset(type_, name: str) -> int:
    return offsetof(type_, name)


def _optional_constant(prog: Program, name: str) -> Optional[int]:
    try:
        return prog.constant(name).value_()
    except LookupError:
        return None


@dataclasses.dataclass(frozen=True)
class _Fact:
    """One probed fact: its value, what said so, and whether that was only
    a default because nothing in the kernel did."""

    value: int
    source: str
    default: bool = False


def _page_shift(prog: Program) -> _Fact:
    """
    PAGE_SHIFT: drgn's ``PAGE_SHIFT`` (from VMCOREINFO's ``PAGESIZE``,
    written by every kernel since kexec's VMCOREINFO, 2.6.24), else 12.
    """
    if has_object(prog, "PAGE_SHIFT"):
        return _Fact(prog["PAGE_SHIFT"].value_(), "PAGE_SHIFT")
    size = vmcoreinfo_number(program_vmcoreinfo(prog), "PAGESIZE")
    if size and size & (size - 1) == 0:
        return _Fact(size.bit_length() - 1, "VMCOREINFO PAGESIZE")
    return _Fact(12, "PAGE_SHIFT = 12 (default: no PAGE_SHIFT or VMCOREINFO PAGESIZE)", True)


def _section_size_bits(prog: Program) -> _Fact:
    """
    SECTION_SIZE_BITS: drgn's object (from VMCOREINFO's
    ``NUMBER(SECTION_SIZE_BITS)``, which the kernel writes for makedumpfile),
    else that line read here, else 27 (x86_64's and riscv64's value).
    """
    if has_object(prog, "SECTION_SIZE_BITS"):
        return _Fact(prog["SECTION_SIZE_BITS"].value_(), "SECTION_SIZE_BITS")
    bits = vmcoreinfo_number(program_vmcoreinfo(prog), "NUMBER(SECTION_SIZE_BITS)")
    if bits:
        return _Fact(bits, "VMCOREINFO NUMBER(SECTION_SIZE_BITS)")
    return _Fact(27, "SECTION_SIZE_BITS = 27 (default: not in the types or VMCOREINFO)", True)


def _max_numnodes(prog: Program) -> _Fact:
    """
    MAX_NUMNODES (``1 << CONFIG_NODES_SHIFT``), which sizes the node field
    of ``page->flags``: the length of ``node_data[]`` (x86_64 and riscv64
    declare it ``[MAX_NUMNODES]``); 1 when the kernel has no ``node_data``
    (CONFIG_NUMA=n keeps no node bits); 1 by default when the array's
    length cannot be told. With BTF types the length is the BTF finder's,
    whose own defaults :func:`_btf_defaults` names.
    """
    try:
        node_data = prog["node_data"]
    except (KeyError, LookupError):
        return _Fact(1, "no node_data[] (CONFIG_NUMA=n): one node")
    try:
        return _Fact(len(node_data), "len(node_data)")
    except (TypeError, LookupError):
        return _Fact(1, "MAX_NUMNODES = 1 (default: the length of node_data[] is unknown)", True)


def _btf_defaults(prog: Program) -> Tuple[str, ...]:
    """
    With types from the kernel's BTF (:mod:`vmemspect.btf`), the global
    arrays whose length neither VMCOREINFO, BTF nor kallsyms gave, so that
    the BTF finder took its default (``hstates[HUGE_MAX_HSTATE]``,
    ``node_data[MAX_NUMNODES]``...): one line each.
    """
    btf = cache_get(prog, "btf")
    if btf is None:
        return ()
    return tuple(f"len({name}) = {length} ({how}: nothing in the kernel gave it)"
                 for name, (length, how) in sorted(btf.defaulted_lengths().items()))


def _nr_zones(prog: Program) -> _Fact:
    """
    ``__MAX_NR_ZONES``, which sizes the zone field of ``page->flags``
    (include/linux/page-flags-layout.h): the enumerator, else 4 (DMA,
    DMA32, NORMAL, MOVABLE: x86_64 without ZONE_DEVICE).
    """
    value = _optional_constant(prog, "__MAX_NR_ZONES")
    if value is not None:
        return _Fact(value, "__MAX_NR_ZONES")
    return _Fact(4, "__MAX_NR_ZONES = 4 (default: no enumerator)", True)


def _pg_head(prog: Program) -> _Fact:
    """
    The PG_head bit of ``page->flags``: the enumerator, else VMCOREINFO's
    ``NUMBER(PG_head_mask)`` (written for makedumpfile), else 6 (its value
    in Debian's 6.1 to 7.3).
    """
    value = _optional_constant(prog, "PG_head")
    if value is not None:
        return _Fact(value, "PG_head")
    mask = vmcoreinfo_number(program_vmcoreinfo(prog), "NUMBER(PG_head_mask)")
    if mask and mask & (mask - 1) == 0:
        return _Fact(mask.bit_length() - 1, "VMCOREINFO NUMBER(PG_head_mask)")
    return _Fact(6, "PG_head = 6 (default: no enumerator or NUMBER(PG_head_mask))", True)


def _hpg_bit(prog: Program, name: str, default: int) -> _Fact:
    """
    A bit of ``enum hugetlb_page_flags`` in ``folio->private``
    (include/linux/hugetlb.h): the enumerator when the types have it,
    else the default (``HPG_vmemmap_optimized`` 4 and ``HPG_migratable`` 1,
    their values in Debian's 6.1 to 7.3).
    """
    value = _optional_constant(prog, name)
    if value is not None:
        return _Fact(value, name)
    return _Fact(default, f"{name} = {default} (default: no enumerator)", True)


def _release(prog: Program) -> str:
    try:
        return prog["init_uts_ns"].name.release.string_().decode()
    except (KeyError, LookupError, FaultError):
        return vmcoreinfo_release(prog) or "unknown"


def _order_location(page_type, folio_type, sizeof_page: int) -> Tuple[int, str]:
    """
    Where a large folio keeps its order: the offset, from the head struct
    page, of the byte that holds it, and a line saying where that came from.

    Linux kernel commit ebc1baf5c9b4 ("mm: free up a word in the first tail
    page", 6.6) moved the order into the low byte of folio->_flags_1; from
    379708ffde1b ("mm: add the first tail page to struct folio", 6.1) until
    then it had a byte of its own, folio->_folio_order (Debian 12's 6.1);
    before, page[1].compound_order. Seen on Debian 6.1.192 (_folio_order),
    6.12.117 and 7.2.13 (_flags_1).
    """
    if folio_type.has_member("_folio_order"):
        return (_member_offset(folio_type, "_folio_order"),
                "struct folio has _folio_order (order in its own byte of the first tail)")
    if folio_type.has_member("_flags_1"):
        return (_member_offset(folio_type, "_flags_1"),
                "struct folio has _flags_1 and no _folio_order (order in its low byte)")
    if page_type.has_member("compound_order"):
        return (sizeof_page + _member_offset(page_type, "compound_order"),
                "no struct folio; order in page[1].compound_order")
    raise VmemspectError(
        "cannot find where this kernel keeps a folio's order (no _flags_1, _folio_order "
        "or compound_order)",
        "report the kernel release to the vmemspect developers",
    )


def _hugetlb_unit(prog: Program) -> Optional[str]:
    """What HVO and the hstate lists act on, from the kernel's own functions:
    "folio" (6.6+: hugetlb_vmemmap_optimize_folio()), "page" (6.1:
    hugetlb_vmemmap_optimize(struct page *)), None when neither is found
    (HVO not built in). Reading is the same either way: a folio is its head
    page and both link through ->lru at offset 8."""
    for name, unit in (("hugetlb_vmemmap_optimize_folio", "folio"),
                       ("hugetlb_vmemmap_optimize", "page")):
        try:
            prog.symbol(name)
            return unit
        except LookupError:
            pass
        if has_object(prog, name):
            return unit
    return None


def _pgtable_levels(prog: Program, arch: str) -> Tuple[int, str]:
    """
    How many levels the kernel's page tables have, and what said so.

    x86_64: 5 with LA57, else 4: ``pgdir_shift`` (48 with 5 levels) or
    ``__pgtable_l5_enabled`` (older kernels), else VMCOREINFO's
    ``NUMBER(pgtable_l5_enabled)``, which is what drgn's own translation
    goes by. riscv64: 3, 4 or 5 (Sv39/Sv48/Sv57, chosen at boot): from
    VMCOREINFO's ``NUMBER(satp)`` mode (Debian 7.2) or ``NUMBER(VA_BITS)``
    (6.12), which the kernel writes on every riscv64 build with an MMU.
    """
    if arch == "riscv64":
        try:
            _, levels, source = riscv64_kernel_root(program_vmcoreinfo(prog))
        except ValueError:
            raise VmemspectError(
                "cannot tell the riscv64 kernel's paging mode: VMCOREINFO has neither "
                "NUMBER(satp) nor NUMBER(VA_BITS)",
                "give the kernel's complete VMCOREINFO (--vmcoreinfo FILE)") from None
        return levels, f"Sv{12 + 9 * levels} paging ({source.split(',')[-1].strip()})"
    if has_object(prog, "pgdir_shift"):
        levels = 5 if prog["pgdir_shift"].value_() == 48 else 4
        return levels, f"{levels}-level paging (pgdir_shift)"
    if has_object(prog, "__pgtable_l5_enabled"):
        levels = 5 if prog["__pgtable_l5_enabled"].value_() else 4
        return levels, f"{levels}-level paging (__pgtable_l5_enabled)"
    if vmcoreinfo_number(program_vmcoreinfo(prog), "NUMBER(pgtable_l5_enabled)") == 1:
        return 5, "5-level paging (VMCOREINFO NUMBER(pgtable_l5_enabled)=1)"
    return 4, "4-level paging (no LA57 seen)"


def _detect(prog: Program) -> KernelModel:
    if not prog.flags & ProgramFlags.IS_LINUX_KERNEL:
        raise VmemspectError(
            "this program is not a Linux kernel (drgn has a user-space process or core open)",
            "vmemspect needs a kernel: a vmcore, the running kernel (/proc/kcore) or a "
            "QEMU guest (drgn --qemu)",
        )
    evidence = []
    arch = prog.platform.arch.name.lower() if prog.platform else "unknown"
    try:
        page_type = prog.type("struct page")
    except LookupError:
        raise VmemspectError(
            "the kernel's types are not loaded (no 'struct page')",
            "pass the kernel's DWARF vmlinux with -s/--vmlinux",
        )
    sizeof_page = sizeof(page_type)
    facts = {
        "page_shift": _page_shift(prog),
        "section_size_bits": _section_size_bits(prog),
        "max_numnodes": _max_numnodes(prog),
        "nr_zones": _nr_zones(prog),
        "pg_head": _pg_head(prog),
        "hpg_vmemmap_optimized": _hpg_bit(prog, "HPG_vmemmap_optimized", 4),
        "hpg_migratable": _hpg_bit(prog, "HPG_migratable", 1),
    }
    page_shift = facts["page_shift"].value

    # Linux 7.1 renamed compound_head to compound_info (commit d50569612c29).
    if page_type.has_member("compound_info"):
        info_member = "compound_info"
    elif page_type.has_member("compound_head"):
        info_member = "compound_head"
    else:
        info_member = None
    evidence.append(
        f"struct page has {info_member}" if info_member else
        "struct page has neither compound_info nor compound_head"
    )

    # The merged series keeps the shared tail frames per zone; its v4 posting
    # kept them per node.
    tails_owner = None
    tails_len = 0
    for owner in ("zone", "pglist_data"):
        t = prog.type(f"struct {owner}")
        if t.has_member("vmemmap_tails"):
            tails_owner = owner
            tails_len = t.member("vmemmap_tails").type.unqualified().length or 0
            evidence.append(f"struct {owner} has vmemmap_tails[{tails_len}]")
            break
    else:
        evidence.append("neither struct zone nor struct pglist_data has vmemmap_tails")

    power_of_two = sizeof_page & (sizeof_page - 1) == 0
    # compound_info_has_mask(): the mask form needs HVO built in and a
    # power-of-2 struct page; the member name alone is not enough (arm64 7.2
    # has compound_info but no HVO, and stores a pointer there).
    if info_member == "compound_info" and tails_owner is not None and power_of_two:
        form = "mask"
    else:
        form = "pointer"
    evidence.append(f"sizeof(struct page) = {sizeof_page}")

    hugetlb = _has_type(prog, "struct hstate") and has_object(prog, "hstates")
    evidence.append("hstates[] present" if hugetlb else "no hstates[] (CONFIG_HUGETLB_PAGE=n)")
    hvo_built = has_object(prog, "vmemmap_optimize_enabled")
    evidence.append(
        "vmemmap_optimize_enabled present (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=y)"
        if hvo_built else
        "no vmemmap_optimize_enabled (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=n)"
    )

    # VMEMMAP_TAIL_MIN_ORDER is a macro: the smallest order whose tail struct
    # pages fill a whole vmemmap page beyond the head's one.
    tail_min_order = page_shift - (sizeof_page.bit_length() - 1) + 1

    folio_type = prog.type("struct folio") if _has_type(prog, "struct folio") else page_type
    off_private = _member_offset(folio_type, "private")
    off_order, order_source = _order_location(page_type, folio_type, sizeof_page)
    evidence.append(order_source)

    hugetlb_unit = _hugetlb_unit(prog)
    if hugetlb_unit == "folio":
        evidence.append("hugetlb_vmemmap_optimize_folio() present (lists link folios)")
    elif hugetlb_unit == "page":
        evidence.append("hugetlb_vmemmap_optimize() present (lists link pages)")
    hvo_key = has_object(prog, "hugetlb_optimize_vmemmap_key")
    if hvo_key:
        evidence.append("hugetlb_optimize_vmemmap_key present (counts optimized folios)")

    # Page flags layout with SPARSEMEM_VMEMMAP: node bits at the top, then zone.
    nodes_shift = (facts["max_numnodes"].value - 1).bit_length()
    nr_zones = facts["nr_zones"].value
    zones_shift = _ZONE_SHIFT_FOR_COUNT.get(nr_zones, 3)
    nodes_pgoff = 64 - nodes_shift
    zones_pgoff = nodes_pgoff - zones_shift

    hugetlb_test, hugetlb_test_source = _hugetlb_test(
        prog, page_type, folio_type, sizeof_page, _member_offset(page_type, "flags"))
    evidence.append(hugetlb_test_source)

    levels, levels_source = _pgtable_levels(prog, arch)
    evidence.append(levels_source)
    tails_readonly = arch != "riscv64"
    if not tails_readonly:
        evidence.append("riscv64 has no PAGE_KERNEL_RO (it falls back to PAGE_KERNEL): "
                        "HVO maps tails writable")
    defaults = tuple(f.source for f in facts.values() if f.default) + _btf_defaults(prog)
    evidence.extend(defaults)

    return KernelModel(
        release=_release(prog),
        arch=arch,
        page_shift=page_shift,
        sizeof_page=sizeof_page,
        info_member=info_member,
        form=form,
        tails_owner=tails_owner,
        tails_len=tails_len,
        tail_min_order=tail_min_order,
        hugetlb=hugetlb,
        hvo_built=hvo_built,
        hugetlb_unit=hugetlb_unit,
        hvo_key=hvo_key,
        off_order=off_order,
        order_source=order_source,
        evidence=tuple(evidence),
        defaults=defaults,
        section_size_bits=facts["section_size_bits"].value,
        off_flags=_member_offset(page_type, "flags"),
        off_info=_member_offset(page_type, info_member) if info_member else 8,
        off_lru=_member_offset(page_type, "lru"),
        off_mapping=_member_offset(page_type, "mapping"),
        off_private=off_private,
        off_refcount=_member_offset(page_type, "_refcount"),
        pg_head=facts["pg_head"].value,
        hpg_vmemmap_optimized=facts["hpg_vmemmap_optimized"].value,
        nodes_pgoff=nodes_pgoff,
        nodes_mask=(1 << nodes_shift) - 1,
        zones_pgoff=zones_pgoff,
        zones_mask=(1 << zones_shift) - 1,
        vmemmap_start=pfn_to_page(prog, 0).value_(),
        pgtable_levels=levels,
        tails_readonly=tails_readonly,
        hugetlb_test=hugetlb_test,
        hpg_migratable=facts["hpg_migratable"].value,
        zone_device=_optional_constant(prog, "ZONE_DEVICE"),
    )


def _hugetlb_test(prog: Program, page_type, folio_type, sizeof_page: int,
                  off_flags: int) -> Tuple[Optional[Tuple], str]:
    """
    How to tell a hugetlb folio from its head struct pages, from the types
    (the kernel changed it three times), and a line saying which.

    - 6.12+ (and 7.x): ``folio->page.page_type >> 24 == PGTY_hugetlb``
      (commit 4ffca5a96678 "mm: support only one page_type per page");
    - 6.9-6.11: ``page_type`` holds PAGE_TYPE_BASE with PG_hugetlb cleared;
    - 6.7-6.8: PG_hugetlb in the first tail page's flags;
    - before (6.1): ``page[1].compound_dtor == HUGETLB_PAGE_DTOR``.
    """
    def const(name: str) -> Optional[int]:
        try:
            return prog.constant(name).value_()
        except LookupError:
            return None

    if page_type.has_member("page_type"):
        off = _member_offset(page_type, "page_type")
        pgty = const("PGTY_hugetlb")
        if pgty is not None:
            return ("page_type", off, pgty), "PGTY_hugetlb in page_type (6.12+)"
        base, flag = const("PAGE_TYPE_BASE"), const("PG_hugetlb")
        if base is not None and flag is not None and page_type.has_member("page_type"):
            return (("page_type_base", off, base | flag, base),
                    "PG_hugetlb cleared in page_type (6.9-6.11)")
    flag = const("PG_hugetlb")
    if flag is not None:
        return (("flags1", sizeof_page + off_flags, flag),
                "PG_hugetlb in the first tail's flags (6.7-6.8)")
    dtor = const("HUGETLB_PAGE_DTOR")
    if dtor is not None:
        for t, name in ((page_type, "compound_dtor"), (folio_type, "_folio_dtor")):
            if t.has_member(name):
                off = _member_offset(t, name) + (sizeof_page if t is page_type else 0)
                return ("dtor", off, dtor), f"{name} == HUGETLB_PAGE_DTOR (before 6.7)"
    return None, "no way found to tell a hugetlb folio (no PGTY_hugetlb, PG_hugetlb, " \
                 "HUGETLB_PAGE_DTOR)"


def folio_test_hugetlb(model: KernelModel, data: bytes) -> Optional[bool]:
    """
    ``folio_test_hugetlb()`` on the raw bytes of a head struct page and the
    one after it (``2 * sizeof(struct page)`` bytes): True or False, None
    when the kernel's types do not say how (:func:`_hugetlb_test`).
    """
    t = model.hugetlb_test
    if t is None:
        return None
    kind, off = t[0], t[1]
    if kind == "page_type":
        return struct.unpack_from("<I", data, off)[0] >> 24 == t[2]
    if kind == "page_type_base":
        return struct.unpack_from("<I", data, off)[0] & t[2] == t[3]
    if kind == "flags1":
        return bool(struct.unpack_from("<Q", data, off)[0] >> t[2] & 1)
    return data[off] == t[2]


def kernel_model(prog: Program) -> KernelModel:
    """
    Return the :class:`KernelModel` of a program, detected once and cached.

    Seen to work on Debian 6.12.117 (pointer form, ``compound_head``) and
    7.2.13 (mask form, ``compound_info`` and ``zone->vmemmap_tails``), x86_64.

    :raises VmemspectError: if the kernel's types are not loaded.
    """
    return cached(prog, "model", _detect)


def page_flags_nid(model: KernelModel, flags: int) -> int:
    """The node id that ``page->flags`` carries (page_to_nid())."""
    return (flags >> model.nodes_pgoff) & model.nodes_mask


def page_flags_zone(model: KernelModel, flags: int) -> int:
    """The zone index that ``page->flags`` carries (page_zonenum())."""
    return (flags >> model.zones_pgoff) & model.zones_mask


def compound_info_mask(model: KernelModel, order: int) -> int:
    """
    The ``compound_info`` value of a tail page of a folio of ``order`` in the
    mask form: ``GENMASK(63, order + log2(sizeof(struct page))) | 1``.
    """
    shift = order + model.sizeof_page.bit_length() - 1
    return ((0xFFFFFFFFFFFFFFFF >> shift) << shift) | 1


@dataclasses.dataclass(frozen=True)
class CompoundInfo:
    """A decoded ``compound_info``/``compound_head`` word."""

    raw: int
    #: "mask" or "pointer".
    form: str
    #: Bit 0: this struct page is a tail page.
    tail: bool
    #: Address of the head struct page, None if not a tail or undecodable.
    head: Optional[int]
    #: Order the mask implies (mask form only).
    order: Optional[int]
    #: False if a tail's mask is not GENMASK(63, n) | 1.
    valid: bool


def decode_compound_info(model: KernelModel, page_address: int, raw: int) -> CompoundInfo:
    """
    Decode the ``compound_info`` (7.1+) or ``compound_head`` (before) word of
    the struct page at ``page_address``.

    Pointer form (up to 7.0, and 7.1+ without HVO built in): a tail holds
    ``head | 1``. Mask form (7.1+ with HVO and a power-of-2 struct page): a
    tail holds ``GENMASK(63, order + log2(sizeof(struct page))) | 1`` and the
    head is ``page_address & raw``.

    :param page_address: ``struct page *`` as an integer.
    :param raw: the ``unsigned long`` at ``page->compound_info``.
    """
    if not raw & 1:
        return CompoundInfo(raw, model.form, False, None, None, True)
    if model.form == "pointer":
        return CompoundInfo(raw, "pointer", True, raw - 1, None, True)
    mask = raw & ~1 & 0xFFFFFFFFFFFFFFFF
    if mask == 0:
        return CompoundInfo(raw, "mask", True, None, None, False)
    low = (mask & -mask).bit_length() - 1
    valid = (mask | ((1 << low) - 1)) == 0xFFFFFFFFFFFFFFFF
    order = low - (model.sizeof_page.bit_length() - 1)
    if order < 0:
        valid = False
    return CompoundInfo(
        raw, "mask", True, page_address & raw & ~1, order if valid else None, valid
    )
