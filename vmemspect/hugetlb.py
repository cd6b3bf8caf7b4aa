"""
HugeTLB state
-------------

Hstates, the zones of each node with their ``vmemmap_tails[]``, and the
hugetlb folios on each hstate's lists, read as plain records. A folio is
found where the kernel keeps it: on ``hstate->hugepage_freelists[nid]``
(free) or ``hstate->hugepage_activelist`` (in use), linked through
``folio->lru``. The lists are walked with raw 8-byte reads, so a scan costs
one read per folio rather than a drgn Object per field.
"""

import bisect
import dataclasses
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from drgn import FaultError, Object, Program, offsetof
from drgn.helpers.linux.mmzone import for_each_online_pgdat

from .kernel import KernelModel, kernel_model, page_flags_nid, page_flags_zone

__all__ = (
    "HugetlbFolio",
    "Hstate",
    "Zone",
    "for_each_hstate_record",
    "for_each_hugetlb_folio",
    "hvo_enabled",
    "kernel_memmap_pages",
    "zone_of_pfn",
    "zones",
)

_U64 = struct.Struct("<Q")


@dataclasses.dataclass(frozen=True)
class Zone:
    """A populated zone of a node."""

    nid: int
    #: Index in pgdat->node_zones (ZONE_DMA = 0 ...).
    idx: int
    name: str
    start_pfn: int
    #: One past the last spanned pfn.
    end_pfn: int
    #: ``struct zone *`` as an integer.
    address: int
    #: vmemmap_tails[] as struct page addresses (0 for an empty slot); per node
    #: on kernels that keep them in pglist_data; () without them.
    tails: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Hstate:
    """One ``struct hstate``: a huge page size."""

    index: int
    name: str
    order: int
    nr_huge_pages: int
    free_huge_pages: int
    surplus_huge_pages: int
    #: Per node id: (nr_huge_pages_node, free_huge_pages_node, surplus_huge_pages_node).
    per_node: Dict[int, Tuple[int, int, int]]
    address: int
    freelists_offset: int
    activelist_offset: int


@dataclasses.dataclass(frozen=True)
class HugetlbFolio:
    """A hugetlb folio, as its head struct page and hstate describe it."""

    pfn: int
    #: Address of the head ``struct page`` (== ``struct folio *``).
    page: int
    hstate: str
    order: int
    #: Node and zone from the zone spans that hold the pfn.
    nid: int
    zone_idx: int
    zone_name: str
    #: "free" (on a freelist) or "active" (on the active list: in use).
    state: str
    #: HPG_vmemmap_optimized in folio->private.
    optimized: bool
    flags: int
    private: int
    refcount: int
    #: The order in folio->_flags_1 (low byte of the second page's flags).
    folio_order: int
    #: Which list the folio was found on: the freelist's node id, or -1.
    list_nid: int

    def object(self, prog: Program) -> Object:
        """The folio as a drgn ``struct folio *``."""
        return Object(prog, "struct folio *", self.page)


def zones(prog: Program) -> List[Zone]:
    """
    Every populated zone of every online node, sorted by start pfn, with its
    ``vmemmap_tails[]`` (Linux 7.1+ with HVO; per node in the series' v4
    posting, repeated on each zone of the node here; empty before 7.1).

    Cached per program.
    """
    try:
        return prog.cache["vmemspect_zones"]
    except KeyError:
        pass
    model = kernel_model(prog)
    result = []
    for pgdat in for_each_online_pgdat(prog):
        nid = pgdat.node_id.value_()
        node_tails: Tuple[int, ...] = ()
        if model.tails_owner == "pglist_data":
            node_tails = tuple(p.value_() for p in pgdat.vmemmap_tails)
        for idx, zone in enumerate(pgdat.node_zones):
            spanned = zone.spanned_pages.value_()
            if not spanned:
                continue
            if model.tails_owner == "zone":
                tails = tuple(p.value_() for p in zone.vmemmap_tails)
            else:
                tails = node_tails
            try:
                name = zone.name.string_().decode()
            except FaultError:
                name = f"zone{idx}"
            start = zone.zone_start_pfn.value_()
            result.append(Zone(nid, idx, name, start, start + spanned, zone.address_, tails))
    result.sort(key=lambda z: z.start_pfn)
    prog.cache["vmemspect_zones"] = result
    return result


def zone_of_pfn(zone_list: Sequence[Zone], pfn: int) -> Optional[Zone]:
    """The zone whose span holds ``pfn`` (zones sorted by start pfn)."""
    starts = [z.start_pfn for z in zone_list]
    i = bisect.bisect_right(starts, pfn) - 1
    if i >= 0 and zone_list[i].start_pfn <= pfn < zone_list[i].end_pfn:
        return zone_list[i]
    return None


def for_each_hstate_record(prog: Program) -> Iterator[Hstate]:
    """
    The hstates in use (``hstates[0 .. hugetlb_max_hstate)``).

    Returns nothing on a kernel without hugetlb (CONFIG_HUGETLB_PAGE=n).
    """
    model = kernel_model(prog)
    if not model.hugetlb:
        return
    hstate_type = prog.type("struct hstate")
    free_off = offsetof(hstate_type, "hugepage_freelists")
    active_off = offsetof(hstate_type, "hugepage_activelist")
    nids = [pgdat.node_id.value_() for pgdat in for_each_online_pgdat(prog)]
    hstates = prog["hstates"]
    for i in range(prog["hugetlb_max_hstate"].value_()):
        h = hstates[i]
        per_node = {
            nid: (
                h.nr_huge_pages_node[nid].value_(),
                h.free_huge_pages_node[nid].value_(),
                h.surplus_huge_pages_node[nid].value_(),
            )
            for nid in nids
        }
        yield Hstate(
            index=i,
            name=h.name.string_().decode(),
            order=h.order.value_(),
            nr_huge_pages=h.nr_huge_pages.value_(),
            free_huge_pages=h.free_huge_pages.value_(),
            surplus_huge_pages=h.surplus_huge_pages.value_(),
            per_node=per_node,
            address=h.address_,
            freelists_offset=free_off,
            activelist_offset=active_off,
        )


def _walk_list(prog: Program, head: int, limit: int) -> Iterator[int]:
    """Addresses of the list_head entries of the list at ``head``, up to an
    entry that cannot be read (LIST_POISON1, a corrupt pointer)."""
    read_u64 = prog.read_u64
    try:
        pos = read_u64(head)
        seen = 0
        while pos != head:
            next_ = read_u64(pos)
            yield pos
            seen += 1
            if seen > limit:
                return
            pos = next_
    except FaultError:
        pass
    # A corrupt or changing list ends the walk; the caller's count check
    # reports the folios not found.


def _folio_record(
    prog: Program,
    model: KernelModel,
    zone_list: Sequence[Zone],
    h: Hstate,
    page: int,
    state: str,
    list_nid: int,
) -> HugetlbFolio:
    data = prog.read(page, 2 * model.sizeof_page)
    flags = _U64.unpack_from(data, model.off_flags)[0]
    private = _U64.unpack_from(data, model.off_private)[0]
    refcount = struct.unpack_from("<i", data, model.off_refcount)[0]
    flags_1 = _U64.unpack_from(data, model.sizeof_page + model.off_flags)[0]
    pfn = model.page_pfn(page)
    zone = zone_of_pfn(zone_list, pfn)
    return HugetlbFolio(
        pfn=pfn,
        page=page,
        hstate=h.name,
        order=h.order,
        nid=zone.nid if zone else page_flags_nid(model, flags),
        zone_idx=zone.idx if zone else page_flags_zone(model, flags),
        zone_name=zone.name if zone else "?",
        state=state,
        optimized=bool(private & (1 << model.hpg_vmemmap_optimized)),
        flags=flags,
        private=private,
        refcount=refcount,
        folio_order=flags_1 & 0xFF,
        list_nid=list_nid,
    )


def for_each_hugetlb_folio(
    prog: Program, hstate: Optional[Hstate] = None
) -> Iterator[HugetlbFolio]:
    """
    Every hugetlb folio on the hstates' lists: per hstate, the free lists of
    each node, then the active list.

    Same on every kernel since folios replaced pages on these lists (5.19);
    before that the list members are pages, at the same offsets.

    :param hstate: only this hstate's folios.
    """
    model = kernel_model(prog)
    zone_list = zones(prog)
    lru = model.off_lru
    for h in [hstate] if hstate else for_each_hstate_record(prog):
        limit = h.nr_huge_pages + 1024
        for nid in sorted(h.per_node):
            head = h.address + h.freelists_offset + 16 * nid
            for entry in _walk_list(prog, head, limit):
                yield _folio_record(prog, model, zone_list, h, entry - lru, "free", nid)
        head = h.address + h.activelist_offset
        for entry in _walk_list(prog, head, limit):
            yield _folio_record(prog, model, zone_list, h, entry - lru, "active", -1)


def hvo_enabled(prog: Program) -> Optional[bool]:
    """
    The variable behind ``vm.hugetlb_optimize_vmemmap``
    (``vmemmap_optimize_enabled``), or None without HVO built in.
    """
    if not kernel_model(prog).hvo_built:
        return None
    return bool(prog["vmemmap_optimize_enabled"].value_())


def kernel_memmap_pages(prog: Program) -> Optional[Tuple[int, int]]:
    """
    The kernel's own memmap counters, ``nr_memmap_boot_pages`` and
    ``nr_memmap_pages`` (``/proc/vmstat``, Linux 6.10+), or None before them.
    HVO subtracts the vmemmap pages it frees from these.
    """
    try:
        boot = prog["nr_memmap_boot_pages"].counter.value_()
        runtime = prog["nr_memmap_pages"].counter.value_()
    except (KeyError, LookupError, AttributeError):
        return None
    return boot, runtime
