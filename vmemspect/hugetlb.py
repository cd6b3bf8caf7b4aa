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
import re
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from drgn import FaultError, Object, Program, offsetof
from drgn.helpers import ValidationError
from drgn.helpers.linux.mmzone import for_each_online_pgdat, for_each_present_section

from .errors import MissingMemory
from .kernel import KernelModel, kernel_model, page_flags_nid, page_flags_zone
from .pagetable import page_table_walker
from .progcache import cache_get, cache_set

__all__ = (
    "HugetlbFolio",
    "Hstate",
    "ListBreak",
    "Zone",
    "for_each_hstate_record",
    "for_each_hugetlb_folio_record",
    "for_each_hugetlb_entry",
    "for_each_hugetlb_folio_page",
    "folio_record",
    "frame_absence",
    "hvo_enabled",
    "kernel_freeable_kib",
    "kernel_memmap_pages",
    "kernel_optimized_folios",
    "zone_of_pfn",
    "zones",
)

_U64 = struct.Struct("<Q")
_LINKS = struct.Struct("<QQ")  # a list_head: next, prev


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
    #: The order its name says ("hugepages-2048kB": 9), None if the name
    #: does not parse.
    name_order: Optional[int] = None

    @property
    def order_ok(self) -> bool:
        """``order`` is one a huge page can have: what the name says, and at
        most MAX_HSTATE_ORDER. A folio walk trusts nothing else: the order
        sizes every read of a folio's vmemmap."""
        if not 0 < self.order <= MAX_HSTATE_ORDER:
            return False
        return self.name_order is None or self.name_order == self.order


#: The largest order a huge page has on any kernel vmemspect reads: 16 GiB
#: with 4 KiB pages (MAX_FOLIO_ORDER is at most PUD_ORDER, 18 on x86_64).
MAX_HSTATE_ORDER = 22

_HSTATE_NAME = re.compile(r"^hugepages-(\d+)kB$")


def _name_order(name: str, page_shift: int) -> Optional[int]:
    m = _HSTATE_NAME.match(name)
    if not m:
        return None
    size = int(m[1]) * 1024
    order = size.bit_length() - 1 - page_shift
    return order if order > 0 and 1 << (order + page_shift) == size else None


@dataclasses.dataclass(slots=True)  # not frozen: made per folio, and frozen costs
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
    #: compound_info/compound_head of the head struct page (0 for a head).
    info: int
    private: int
    refcount: int
    #: The order the folio's first tail page records (kernel_model().off_order:
    #: folio->_flags_1's low byte on 6.6+, folio->_folio_order before).
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

    Cached per program, except on a live kernel, whose ``vmemmap_tails[]``
    fill as folios of a new order are optimized.
    """
    result = cache_get(prog, "zones")
    if result is not None:
        return result
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
    cache_set(prog, "zones", result)
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
    # hugetlb_max_hstate is read from the dump: never past the array.
    for i in range(min(prog["hugetlb_max_hstate"].value_(), len(hstates))):
        h = hstates[i]
        per_node = {
            nid: (
                h.nr_huge_pages_node[nid].value_(),
                h.free_huge_pages_node[nid].value_(),
                h.surplus_huge_pages_node[nid].value_(),
            )
            for nid in nids
        }
        name = h.name.string_().decode(errors="replace")
        yield Hstate(
            index=i,
            name=name,
            name_order=_name_order(name, model.page_shift),
            order=h.order.value_(),
            nr_huge_pages=h.nr_huge_pages.value_(),
            free_huge_pages=h.free_huge_pages.value_(),
            surplus_huge_pages=h.surplus_huge_pages.value_(),
            per_node=per_node,
            address=h.address_,
            freelists_offset=free_off,
            activelist_offset=active_off,
        )


class ListCut(Exception):
    """A list link is not in the dump: the rest of the list is unknown."""


#: list_del() leaves these in a removed entry's next and prev (x86_64:
#: POISON_POINTER_DELTA 0xdead000000000000 + 0x100 / + 0x122).
LIST_POISON1 = 0xDEAD000000000100
LIST_POISON2 = 0xDEAD000000000122


class _ListBroken(Exception):
    def __init__(self, prev: int, next_: int, reason: str, loop: bool = False,
                 seen: int = 0) -> None:
        super().__init__(reason)
        self.prev, self.next, self.reason, self.loop = prev, next_, reason, loop
        #: Entries of the list walked before the break.
        self.seen = seen


@dataclasses.dataclass(frozen=True)
class ListBreak:
    """An hstate list that does not lead back to its head: a link that
    points back into the list (a loop), at memory that is not mapped, or at
    an entry that does not link back. Corruption, never missing memory
    (that is :class:`ListCut`)."""

    hstate: str
    #: "free list of node N" or "active list".
    list_name: str
    #: The freelist's node id, or -1 for the active list.
    list_nid: int
    #: The struct page whose lru.next is bad; None if it is the list head's.
    at_page: Optional[int]
    at_pfn: Optional[int]
    #: The bad lru.next value.
    next: int
    reason: str
    loop: bool
    #: Entries read on this list before the break (each counted once).
    found: int


def frame_absence(prog: Program, pfn: int) -> str:
    """
    Why frame ``pfn`` cannot be read: "not in the machine" when no memory
    exists there (at or beyond ``max_pfn``, or in no present SPARSEMEM
    section: a page-table entry naming it is wrong whatever else the dump
    holds), else "not in the dump" (filtered or truncated away).
    """
    model = kernel_model(prog)
    try:
        max_pfn = prog["max_pfn"].value_()
    except (KeyError, LookupError, FaultError):
        max_pfn = None
    if max_pfn and pfn >= max_pfn:
        return f"not in the machine (beyond max_pfn {max_pfn:#x})"
    present = cache_get(prog, "present_sections")
    if present is None:
        try:
            present = frozenset(nr for nr, _ in for_each_present_section(prog))
        except (KeyError, LookupError, FaultError):
            present = frozenset()
        cache_set(prog, "present_sections", present)
    section_shift = model.section_size_bits - model.page_shift
    if present and (pfn >> section_shift) not in present:
        return "not in the machine (in no present memory section)"
    return "not in the dump"


def _unmapped_reason(prog: Program, address: int) -> Optional[str]:
    """Why ``address`` cannot be read although the dump is whole there: not
    mapped (naming the page-table entry), or list_del()'s poison. None if it
    is mapped, so that a failed read of it is memory missing from the dump."""
    if address in (LIST_POISON1, LIST_POISON2):
        return f"LIST_POISON{1 if address == LIST_POISON1 else 2} (an entry list_del() removed)"
    try:
        walker = page_table_walker(prog)
        why = walker.explain_unmapped(address & ~0xFFF)
        if why is not None:
            return why
        # Mapped: onto a frame the machine has (then it is missing from the
        # dump) or onto one it does not (a corrupt entry).
        leaf = walker.lookup(address & ~0xFFF)
        absence = frame_absence(prog, leaf.pfn) if leaf.pfn is not None else ""
        if absence.startswith("not in the machine"):
            return f"its {leaf.level_name.upper()} maps frame {leaf.pfn:#x}, {absence}"
        return None
    except MissingMemory:
        return None


def _on_list(prog: Program, head: int, target: int, n: int) -> bool:
    """``target`` is one of the first ``n`` entries after ``head`` (read again
    only when a list is found broken)."""
    pos = prog.read_u64(head)
    for _ in range(n):
        if pos == target:
            return True
        pos = prog.read_u64(pos)
    return False


def _walk_list(prog: Program, head: int, limit: int, page_size: int,
               is_entry=lambda pos: True,
               known: Optional[tuple] = None,
               skip: Optional[Tuple[bytearray, List[int]]] = None) -> Iterator[Tuple[int, Any]]:
    """
    The list_head entries of the list at ``head``, each with the whole page
    (``page_size`` bytes) that holds it: for a folio's lru, the head's
    vmemmap page, read once for the link, the folio's record and the check
    of the head's frame. An entry is yielded only once its own links have
    been read, and only if its ``prev`` points back at the entry before it
    (free, since its page is read anyway): a link into the middle of the
    list stops the walk there, before any entry is yielded twice.

    The walk always ends: a cycle reachable from the head is entered at an
    entry whose ``prev`` is its cycle predecessor, not the entry the walk
    came from, so the ``prev`` check stops every loop without memory per
    entry; and at most ``limit`` entries are read (what memory can hold,
    never a count read from the dump).

    :param is_entry: whether an address can be an entry at all (a folio's
        lru is in a struct page of the vmemmap).
    :param known: entries whose page was read already (by a worker), as
        ``(first entry, step, slots, nexts, prevs, key ids)``: the entry at
        ``first + i * step`` has the links ``nexts[i]``, ``prevs[i]`` and
        the key id ``ids[i]`` if that is not -1. Such an entry is not read
        again, and is yielded with ``(next, prev, key id)`` in place of the
        page's bytes. The links were read from the same dump: the walk is
        the same.
    :param skip: ``(clean, counts, on_skip)``: a known entry whose key id
        is set in ``clean`` (by the consumer, between entries) is only
        counted in ``counts[key id]``, and told to ``on_skip(entry, key
        id)`` if that is not None, not yielded, once its links are checked.
    :raises ListCut: where an entry is mapped but missing from the dump.
    :raises _ListBroken: where the list is corrupt.
    """
    read = prog.read
    mask = page_size - 1
    prev = head
    pos = prog.read_u64(head)
    seen = 0
    clean, counts, on_skip = skip if skip is not None else (None, None, None)
    if known is not None:
        kbase, kstep, kslots, knext, kprev, kids = known
    while pos != head:
        if pos in (LIST_POISON1, LIST_POISON2) or not is_entry(pos):
            why = (_unmapped_reason(prog, pos) if pos in (LIST_POISON1, LIST_POISON2)
                   else "not in a struct page of the vmemmap")
            raise _ListBroken(prev, pos, f"points at {pos:#x}, which is {why}", seen=seen)
        kid = -1
        if known is not None:
            slot, off = divmod(pos - kbase, kstep)
            if not off and 0 <= slot < kslots:
                kid = kids[slot]
        if kid < 0:
            try:
                data = read(pos & ~mask, page_size)
            except FaultError:
                why = _unmapped_reason(prog, pos)
                if why is None:
                    raise ListCut(f"list link at {pos:#x} is not in the dump")
                raise _ListBroken(prev, pos, f"points at {pos:#x}, which is not mapped: {why}",
                                  seen=seen)
            nxt, back = _LINKS.unpack_from(data, pos & mask)
        else:
            nxt, back = knext[slot], kprev[slot]
            data = (nxt, back, kid)
            if back == prev and clean is not None and clean[kid]:
                counts[kid] += 1
                if on_skip is not None:
                    on_skip(pos, kid)
                seen += 1
                if seen >= limit:
                    raise _ListBroken(prev, pos, "leads to more entries than memory can "
                                      f"hold ({limit})", seen=seen)
                prev, pos = pos, nxt
                continue
        if back != prev:
            if _on_list(prog, head, pos, seen):
                raise _ListBroken(prev, pos, f"points back at an entry already on the list "
                                  f"(whose lru.prev is {back:#x})", loop=True, seen=seen)
            raise _ListBroken(prev, pos, f"points at {pos:#x}, whose lru.prev ({back:#x}) "
                              "does not point back", seen=seen)
        yield pos, data
        seen += 1
        if seen >= limit:
            raise _ListBroken(prev, pos, f"leads to more entries than memory can hold ({limit})",
                              seen=seen)
        prev, pos = pos, nxt


def folio_record(
    prog: Program,
    model: KernelModel,
    zone_list: Sequence[Zone],
    h: Hstate,
    page: int,
    data: bytes,
    state: str,
    list_nid: int,
) -> HugetlbFolio:
    """A folio's record from its first two struct pages (at the start of
    ``data``), found on ``h``'s list ``state`` (of node ``list_nid``)."""
    pfn = model.page_pfn(page)
    flags = _U64.unpack_from(data, model.off_flags)[0]
    private = _U64.unpack_from(data, model.off_private)[0]
    refcount = struct.unpack_from("<i", data, model.off_refcount)[0]
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
        info=_U64.unpack_from(data, model.off_info)[0],
        private=private,
        refcount=refcount,
        folio_order=data[model.off_order],
        list_nid=list_nid,
    )


def for_each_hugetlb_folio_record(
    prog: Program,
    hstate: Optional[Hstate] = None,
    cut: Optional[List[Tuple[str, str]]] = None,
    broken: Optional[List[ListBreak]] = None,
) -> Iterator[HugetlbFolio]:
    """
    Every hugetlb folio on the hstates' lists: per hstate, the free lists of
    each node, then the active list.

    Same on every kernel since 5.16: the lists link folios (6.6+) or head
    pages (before, e.g. 6.1) through ``->lru`` at the same offset.

    :param hstate: only this hstate's folios.
    :param cut: where a list link is missing from the dump, (hstate name,
        reason) is appended here and the rest of that list is skipped.
    :param broken: where a list is corrupt (a loop, a link to unmapped
        memory or one that does not link back), a :class:`ListBreak` is
        appended here and the rest of that list is skipped; without it
        :class:`drgn.helpers.ValidationError` is raised there (as drgn's
        ``validate_list_for_each_entry()`` does).
    """
    for folio, _ in for_each_hugetlb_folio_page(prog, hstate, cut, broken):
        yield folio


def _list_limit(zone_list: Sequence[Zone], order: int) -> int:
    """The most folios of ``order`` one list can hold: every spanned pfn in
    folios, plus one. Zone spans come from the dump too, but a loop ends
    anyway (the prev check); this bounds a chain of distinct bogus entries."""
    return (sum(z.end_pfn - z.start_pfn for z in zone_list) >> order) + 1


def for_each_hugetlb_folio_page(
    prog: Program,
    hstate: Optional[Hstate] = None,
    cut: Optional[List[Tuple[str, str]]] = None,
    broken: Optional[List[ListBreak]] = None,
) -> Iterator[Tuple[HugetlbFolio, bytes]]:
    """
    :func:`for_each_hugetlb_folio_record`, each folio with the bytes of the vmemmap
    page that holds its head struct page (the scan checks that page's other
    struct pages without reading it again). The bytes are not kept.
    """
    model = kernel_model(prog)
    zone_list = zones(prog)
    ps = model.page_size
    for h, state, nid, page, data in for_each_hugetlb_entry(prog, hstate, cut, broken):
        offset = page & (ps - 1)
        yield folio_record(prog, model, zone_list, h, page,
                           data[offset:offset + 2 * model.sizeof_page], state, nid), data


def for_each_hugetlb_entry(
    prog: Program,
    hstate: Optional[Hstate] = None,
    cut: Optional[List[Tuple[str, str]]] = None,
    broken: Optional[List[ListBreak]] = None,
    known: Optional[Dict[int, tuple]] = None,
    skips: Optional[Callable[[Hstate, str, int], Tuple[bytearray, List[int]]]] = None,
) -> Iterator[Tuple[Hstate, str, int, int, Any]]:
    """
    The raw walk behind :func:`for_each_hugetlb_folio_page`: ``(hstate,
    state, list nid, head struct page address, bytes of the vmemmap page
    holding it)`` for every entry, no record made (:func:`folio_record`
    makes one), so that a scan can skip the record of a folio it has seen
    the like of. Same lists, order, ``cut`` and ``broken`` as
    :func:`for_each_hugetlb_folio_record`.

    :param known: per hstate order, entries read already (``_walk_list``):
        those come with their tuple in place of the bytes.
    :param skips: ``skips(hstate, state, nid)``: the ``skip`` of
        ``_walk_list`` for that list (known entries only counted).
    """
    model = kernel_model(prog)
    zone_list = zones(prog)
    lru = model.off_lru
    ps = model.page_size
    # model.struct_page_pfn(pos - lru) is not None, without the calls.
    first = model.vmemmap_start + lru
    span = (1 << (52 - model.page_shift)) * model.sizeof_page
    size = model.sizeof_page

    def is_entry(pos: int) -> bool:
        offset = pos - first
        return 0 <= offset < span and not offset % size

    for h in [hstate] if hstate else for_each_hstate_record(prog):
        if not h.order_ok:
            continue  # hstate-order says so; its folios cannot be sized
        limit = _list_limit(zone_list, h.order)
        lists = [(h.address + h.freelists_offset + 16 * nid, "free", nid)
                 for nid in sorted(h.per_node)]
        lists.append((h.address + h.activelist_offset, "active", -1))
        for head, state, nid in lists:
            where = f"free list of node {nid}" if state == "free" else "active list"
            try:
                for entry, data in _walk_list(
                        prog, head, limit, ps, is_entry, known.get(h.order) if known else None,
                        skips(h, state, nid) if skips is not None else None):
                    yield h, state, nid, entry - lru, data
            except ListCut as e:
                if cut is None:
                    raise
                cut.append((h.name, f"{h.name} {where}: {e}"))
            except _ListBroken as e:
                at = None if e.prev == head else e.prev - lru
                b = ListBreak(h.name, where, nid, at, None if at is None else model.page_pfn(at),
                              e.next, e.reason, e.loop, e.seen)
                if broken is None:
                    # Never a silent stop: drgn's own list helpers raise this.
                    raise ValidationError(f"{h.name} {where} is corrupt: "
                                          + ("the list head's next" if at is None else
                                             f"the lru.next of folio pfn {b.at_pfn:#x}")
                                          + f" {e.reason}") from None
                broken.append(b)


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


def kernel_optimized_folios(prog: Program) -> Optional[int]:
    """
    The number of folios the kernel counts as optimized by HVO: the count of
    the static key ``hugetlb_optimize_vmemmap_key``, which HVO increments for
    every folio it optimizes and decrements for every folio it restores
    (Linux 5.18 to 7.0, e.g. Debian's 6.1 and 6.12; it gates the fake-head
    handling of the pointer form). None on kernels without it (7.1+).
    """
    if not kernel_model(prog).hvo_key:
        return None
    try:
        return prog["hugetlb_optimize_vmemmap_key"].key.enabled.counter.value_()
    except (KeyError, LookupError, AttributeError, FaultError):
        return None


_FREEABLE = re.compile(
    rb"HugeTLB: ([0-9.]+) KiB vmemmap can be freed for a ([0-9.]+) (KiB|MiB|GiB) page")
_KIB = {b"KiB": 1, b"MiB": 1024, b"GiB": 1024 * 1024}


def kernel_freeable_kib(prog: Program) -> Dict[int, int]:
    """
    What the kernel's own boot lines say HVO frees per folio: huge page size
    in kB -> KiB of vmemmap ("HugeTLB: 28 KiB vmemmap can be freed for a 2.00
    MiB page", printed by hugetlb_vmemmap_init() or report_hugepages() since
    5.18). Read from the kernel log in memory; empty when the lines have
    been overwritten or the log cannot be read. Read only on kernels without
    the memmap counters (before 6.10), where it is the kernel's own figure
    for the savings; cached per program.
    """
    out = cache_get(prog, "freeable")
    if out is not None:
        return out
    out: Dict[int, int] = {}
    if kernel_model(prog).hvo_built and kernel_memmap_pages(prog) is None:
        try:
            from drgn.helpers.linux.printk import get_printk_records

            for record in get_printk_records(prog):
                m = _FREEABLE.search(record.text)
                if m:
                    size_kib = round(float(m[2]) * _KIB[m[3]])
                    out[size_kib] = round(float(m[1]))
        except Exception:  # noqa: BLE001 - the log is a bonus, never an error
            out = {}
    cache_set(prog, "freeable", out)
    return out
