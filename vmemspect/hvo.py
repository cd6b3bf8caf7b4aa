"""
HVO model
---------

What HVO did to each hugetlb folio's vmemmap, read from the page tables:
which frame backs the folio's first vmemmap page (its head page) and which
frames back the rest (its tail pages), with the level and RW bit of each
mapping; the shared tail frames of ``vmemmap_tails[]`` (Linux 7.1+) with the
number of folios whose tail PTEs point at each, counted from the page
tables; and the memory HVO saves.

Pointer form (before 7.1): HVO maps vmemmap pages 1..N-1 of a folio onto
its own first vmemmap page, read-only, so every 64th struct page is a "fake
head". Mask form (7.1+): vmemmap page 0 is a copy of the head page, pages
1..N-1 map ``zone->vmemmap_tails[order - VMEMMAP_TAIL_MIN_ORDER]``,
read-only, one frame for every folio of that order in the zone.
"""

import array
import collections
import dataclasses
import struct
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from drgn import FaultError, Program

from .hugetlb import (
    HugetlbFolio,
    ListBreak,
    for_each_hstate_record,
    for_each_hugetlb_entry,
    for_each_hugetlb_folio_page,
    folio_record,
    frame_absence,
    zones,
)
from .kernel import (
    KernelModel,
    TAIL_MAPPING,
    CompoundInfo,
    compound_info_mask,
    decode_compound_info,
    kernel_model,
    page_flags_nid,
    page_flags_zone,
)
from .pagetable import (
    Leaf,
    MissingMemory,
    PageTableWalker,
    page_table_walker,
)
from .progcache import is_live

__all__ = (
    "FolioVmemmap",
    "FrameContents",
    "PageDecode",
    "SharedTail",
    "TailFrame",
    "TailTally",
    "decode_page",
    "folio_vmemmap",
    "frame_contents",
    "pte_leaf",
    "scan_folio_groups",
    "scan_folios",
    "shared_tails",
    "vmemmap_savings",
)

_U64 = struct.Struct("<Q")
_LINKS = struct.Struct("<QQ")  # a list_head: next, prev


@dataclasses.dataclass(slots=True)  # not frozen: made per folio, and frozen costs
class TailFrame:
    """A frame that backs some of a folio's tail vmemmap pages (1..N-1)."""

    pfn: Optional[int]
    #: How many of the folio's tail vmemmap pages map it.
    pages: int
    #: How many of those mappings are writable.
    writable: int
    #: Leaf levels seen ("pte", "pmd", "pud"; "none" if not mapped).
    levels: Tuple[str, ...]


@dataclasses.dataclass(slots=True)  # not frozen: made per folio, and frozen costs
class FrameContents:
    """What the struct pages in one vmemmap frame say."""

    pfn: int
    #: Indices (0..63) of struct pages that are tails of the expected kind.
    good_tails: int
    #: (index, compound_info raw, flags raw) of the first struct page that is not.
    first_bad: Optional[Tuple[int, int, int]]
    bad: int
    #: node/zone the flags of the frame's struct pages carry (first page).
    flags_nid: int
    flags_zone: int
    #: The frame's first struct page has PG_head (pointer form: a fake head
    #: wherever this frame is mapped at a tail position).
    first_is_head: bool


@dataclasses.dataclass(slots=True)  # not frozen: made per folio, and frozen costs
class FolioVmemmap:
    """A hugetlb folio and how its vmemmap is mapped."""

    folio: HugetlbFolio
    #: Virtual address of the folio's first vmemmap page.
    vmemmap: int
    #: Vmemmap pages the folio's struct pages span (8 for 2 MiB, 4096 for 1 GiB).
    npages: int
    #: Mapping of vmemmap page 0 (the head page's); None if unknown.
    head: Optional[Leaf]
    tails: Tuple[TailFrame, ...]
    #: Distinct frames behind all npages vmemmap pages.
    distinct_frames: int
    #: Pointer form: struct pages that read as heads at tail positions.
    fake_heads: int
    #: The head struct page: PG_head set and not itself a tail.
    head_ok: bool
    #: Contents of vmemmap page 0: tails among struct pages 1..63 that name
    #: this folio's head (mask or pointer as the kernel's form).
    head_frame: Optional[FrameContents]
    #: Contents of the frames behind the tail vmemmap pages, per pfn.
    tail_contents: Tuple[FrameContents, ...]
    #: Why the mapping could not be read (missing memory), else None.
    unknown: Optional[str]
    #: Frames the mapping names whose contents could not be read, with why
    #: (frame_absence()): the mapping is still judged, their contents not.
    unreadable: Tuple[Tuple[int, str], ...] = ()
    #: Per PTE table the folio's vmemmap lies in, ``(region, pairs)``: the
    #: pairs of neighbouring vmemmap pages there that map one frame
    #: (region: the table's virtual address >> (page shift + 9)). What the
    #: whole-vmemmap sweep (vmemspect.sweep) counts this folio for.
    pairs: Tuple[Tuple[int, int], ...] = ()

    @property
    def remapped(self) -> bool:
        """Some vmemmap pages share a frame: HVO (or something) remapped them."""
        return self.unknown is None and self.distinct_frames < self.npages


@dataclasses.dataclass(frozen=True)
class SharedTail:
    """A ``vmemmap_tails[]`` slot (mask form) and who maps it."""

    nid: int
    zone_idx: int
    zone_name: str
    order: int
    slot: int
    #: vmemmap_tails[slot] (a struct page *), 0 if empty.
    page: int
    #: The frame it describes, None if empty.
    pfn: Optional[int]
    #: Folios whose tail PTEs point at this frame (from the page tables).
    folios: int
    #: Folios of this zone and order flagged optimized.
    folios_expected: int
    contents: Optional[FrameContents]
    #: Why the frame could not be read (frame_absence()), else None.
    unreadable: Optional[str] = None


def frame_contents(
    prog: Program,
    model: KernelModel,
    pfn: int,
    tail_info: int,
    skip_head: bool = False,
    expect_node_zone: Optional[Tuple[int, int]] = None,
    data: Optional[bytes] = None,
) -> FrameContents:
    """
    Read the struct pages in the vmemmap frame ``pfn`` (one physical read)
    and count those whose ``compound_info`` is ``tail_info``; with
    ``skip_head``, struct page 0 (a head) is not counted. With
    ``expect_node_zone``, a tail must also carry that node and zone in its
    flags and hold TAIL_MAPPING in ``->mapping`` (a mask-form shared frame).

    :param data: the frame's bytes when the caller has them already.
    :raises MissingMemory: if the frame is not in the dump.
    """
    if data is None:
        try:
            data = prog.read(pfn << model.page_shift, model.page_size, True)
        except FaultError:
            raise MissingMemory("a vmemmap frame", pfn << model.page_shift)
    words = memoryview(data).cast("Q")
    stride = model.sizeof_page // 8
    start = 1 if skip_head else 0
    n = model.pages_per_vmemmap_page
    infos = words[model.off_info // 8::stride].tolist()
    flags = words[model.off_flags // 8::stride].tolist()
    # The common case, all tails as expected, costs one C-level count.
    if expect_node_zone is None and infos.count(tail_info) - (
        infos[0] == tail_info and skip_head
    ) == n - start:
        good, bad, first_bad = n - start, 0, None
    else:
        mappings = words[model.off_mapping // 8::stride].tolist()
        good = bad = 0
        first_bad = None
        for i in range(start, n):
            ok = infos[i] == tail_info
            if ok and expect_node_zone is not None:
                ok = (
                    (page_flags_nid(model, flags[i]), page_flags_zone(model, flags[i]))
                    == expect_node_zone
                    and mappings[i] == TAIL_MAPPING
                )
            if ok:
                good += 1
            else:
                bad += 1
                if first_bad is None:
                    first_bad = (i, infos[i], flags[i])
    return FrameContents(
        pfn=pfn,
        good_tails=good,
        first_bad=first_bad,
        bad=bad,
        flags_nid=page_flags_nid(model, flags[0]),
        flags_zone=page_flags_zone(model, flags[0]),
        first_is_head=bool(flags[0] & (1 << model.pg_head)) and not infos[0] & 1,
    )


def pte_leaf(walker: PageTableWalker, entry: int, upper_rw: bool) -> Tuple[Optional[int], bool]:
    """(pfn, writable) of a PTE, (None, False) if it is not present: the
    one place the scans below decode a PTE (by the walker's format)."""
    if not walker.pte_valid(entry):
        return None, False
    return walker.entry_pfn(entry), upper_rw and walker.entry_writable(entry)


def _uniform_tails(walker: PageTableWalker, start: int,
                   npages: int) -> Optional[Tuple[int, int, bool, int]]:
    """
    ``(head PTE, its table's address, write permission of the levels
    above, the tails' PTE)`` when the ``npages`` vmemmap pages from
    ``start`` are mapped by PTEs and every tail page (1..npages-1) by the
    same PTE under the same upper permission: in one table (2 MiB folios)
    or in whole consecutive tables (1 GiB folios: 8 tables); else None.

    :raises MissingMemory: if the first table is not in the dump.
    """
    if npages < 2:
        return None
    if npages <= 512:
        run = walker.pte_run(start, npages)
        if run is None:
            return None
        ptes = run[0]
        e1 = ptes[1]
        if ptes[1:].count(e1) != npages - 1:
            return None
        return ptes[0], run[1], run[2], e1
    span = 512 << walker.page_shift
    if npages % 512 or start & (span - 1):
        return None
    first = walker.pte_run(start, 512)
    if first is None:
        return None
    ptes, table, upper_rw = first
    e1 = ptes[1]
    if ptes[1:].count(e1) != 511:
        return None
    for va in range(start + span, start + npages * (span >> 9), span):
        try:
            run = walker.pte_run(va, 512)
        except MissingMemory:
            return None  # read page by page (walker.entries) to say which
        if run is None or run[2] != upper_rw or run[0].count(e1) != 512:
            return None
    return ptes[0], table, upper_rw, e1


def _expected_tail_info(model: KernelModel, folio: HugetlbFolio) -> int:
    """compound_info of a tail of ``folio`` in the kernel's form."""
    if model.form == "mask":
        return compound_info_mask(model, folio.order)
    return folio.page | 1


def folio_vmemmap(
    prog: Program,
    folio: HugetlbFolio,
    walker: Optional[PageTableWalker] = None,
    frame_cache: Optional[Dict[Tuple[int, int], object]] = None,
    head_page: Optional[bytes] = None,
) -> FolioVmemmap:
    """
    How a hugetlb folio's vmemmap is mapped, and what its frames hold.

    Works on both forms: in the mask form (7.1+) the tail frames are checked
    as shared tails of the folio's order, in the pointer form (before 7.1)
    as the folio's own head frame (whose first struct page is then a fake
    head at each tail position).

    :param frame_cache: contents already read, keyed by (pfn, order), or
        why a frame could not be read (a str); shared frames are read once
        per scan through it.
    :param head_page: the bytes of the vmemmap page holding the head struct
        page, when the caller read them already (through the same page
        tables, so they are the head frame's).
    """
    model = kernel_model(prog)
    if walker is None:
        walker = page_table_walker(prog)
    if frame_cache is None:
        frame_cache = {}
    npages = model.vmemmap_pages(folio.order)
    start = folio.page & ~(model.page_size - 1)
    try:
        run = _uniform_tails(walker, start, npages)
        tail_pfn = None
        if run is not None:
            tail_pfn, tail_rw = pte_leaf(walker, run[3], run[2])
        if tail_pfn is not None:
            # Every tail vmemmap page has the same PTE: what HVO leaves (one
            # read-only frame behind all tails). One C-level count per PTE
            # table instead of a loop over the pages.
            e0, table, upper_rw, _ = run
            head_pfn, head_rw = pte_leaf(walker, e0, upper_rw)
            head_leaf = Leaf(start, 0 if head_pfn is None else 1, e0, head_pfn, head_rw, table)
            if head_leaf.pfn is None:
                raise MissingMemory("the head's vmemmap page is not mapped; its PTE", table)
            rw = npages - 1 if tail_rw else 0
            tails = (TailFrame(tail_pfn, npages - 1, rw, ("pte",)),)
            distinct = 1 + (head_leaf.pfn != tail_pfn)
            # One table, or whole tables from the first (1 GiB folios).
            region = start >> (walker.page_shift + 9)
            first = min(npages, 512) - 2 + (head_leaf.pfn == tail_pfn)
            pairs = ((region, first),) + tuple((region + k, 511)
                                               for k in range(1, -(-npages // 512)))
        else:
            entries = walker.entries(start, npages)
            head_leaf = Leaf(start, *entries[0])
            if head_leaf.pfn is None:
                raise MissingMemory("the head's vmemmap page is not mapped; its PTE",
                                    head_leaf.table)
            # pfn -> [pages, writable, levels], in order of first appearance.
            groups: Dict[Optional[int], list] = {}
            for level, _entry, pfn, writable, _table in entries[1:]:
                g = groups.get(pfn)
                if g is None:
                    groups[pfn] = g = [0, 0, set()]
                g[0] += 1
                g[1] += writable
                g[2].add(level)
            tails = tuple(
                TailFrame(pfn, g[0], g[1],
                          tuple(sorted(walker.format.level_name(lv) for lv in g[2])))
                for pfn, g in groups.items()
            )
            distinct = len(groups) + (head_leaf.pfn not in groups)
            counted: Dict[int, int] = {}
            rshift = walker.page_shift + 9
            for i in range(1, npages):
                e, p = entries[i], entries[i - 1]
                if e[0] == 1 and p[0] == 1 and e[2] == p[2] and e[4] == p[4]:
                    r = (start + (i << walker.page_shift)) >> rshift
                    counted[r] = counted.get(r, 0) + 1
            pairs = tuple(sorted(counted.items()))

        head_ok = bool(folio.flags & (1 << model.pg_head)) and not folio.info & 1

        tail_info = _expected_tail_info(model, folio)
        head_frame = frame_contents(prog, model, head_leaf.pfn, tail_info, skip_head=True,
                                    data=head_page)

        contents = []
        unreadable = []
        fake_heads = 0
        for tail in tails:
            if tail.pfn is None:
                continue
            key = (tail.pfn, folio.order)
            c = frame_cache.get(key)
            if c is None:
                if tail.pfn == head_leaf.pfn:
                    c = head_frame
                else:
                    try:
                        c = frame_contents(prog, model, tail.pfn, tail_info)
                    except (MissingMemory, FaultError):
                        # Which frame the PTE names is known without reading
                        # it: only its contents are unknown.
                        c = frame_absence(prog, tail.pfn)
                # Only shared frames are worth keeping across folios.
                if model.form == "mask" and tail.pages > 1:
                    frame_cache[key] = c
            if isinstance(c, str):
                unreadable.append((tail.pfn, c))
                continue
            contents.append(c)
            if model.form == "pointer" and c.first_is_head:
                fake_heads += tail.pages
        return FolioVmemmap(
            folio=folio,
            vmemmap=start,
            npages=npages,
            head=head_leaf,
            tails=tails,
            distinct_frames=distinct,
            fake_heads=fake_heads,
            head_ok=head_ok,
            head_frame=head_frame,
            tail_contents=tuple(contents),
            unknown=None,
            unreadable=tuple(unreadable),
            pairs=pairs,
        )
    except (MissingMemory, FaultError) as e:
        reason = str(e)
        return FolioVmemmap(
            folio=folio,
            vmemmap=start,
            npages=npages,
            head=None,
            tails=(),
            distinct_frames=0,
            fake_heads=0,
            head_ok=False,
            head_frame=None,
            tail_contents=(),
            unknown=reason,
        )


def scan_folios(
    prog: Program,
    folios: Optional[Iterable[HugetlbFolio]] = None,
    progress: Optional[Callable[["FolioVmemmap"], None]] = None,
    cut: Optional[List[Tuple[str, str]]] = None,
    broken: Optional[List[ListBreak]] = None,
    sweep=None,
) -> Iterator[FolioVmemmap]:
    """
    :func:`folio_vmemmap` for every hugetlb folio (or for ``folios``), with
    one page-table walker and one cache of shared frames for the whole scan.

    :param progress: called with each folio's record, for progress bars.
    :param cut, broken: as for :func:`~vmemspect.hugetlb.for_each_hugetlb_folio_record`.
    :param sweep: a :class:`~vmemspect.sweep.VmemmapSweep` told of every
        folio read.
    """
    walker = page_table_walker(prog)
    cache: Dict[Tuple[int, int], FrameContents] = {}
    pairs = (((f, None) for f in folios) if folios is not None
             else for_each_hugetlb_folio_page(prog, cut=cut, broken=broken))
    for folio, head_page in pairs:
        record = folio_vmemmap(prog, folio, walker, cache, head_page)
        if sweep is not None:
            sweep.add_record(record)
        if progress:
            progress(record)
        yield record


def _pte_table_regions(walker: PageTableWalker, lo: int, hi: int,
                       limit: int = 1 << 22, tables: bool = False) -> Optional[list]:
    """
    The addresses from ``lo`` to ``hi`` (2 MiB-aligned for 4 KiB pages)
    whose PTE table is present, found by walking the upper levels only:
    absent entries, huge leaves and tables missing from the dump are
    skipped whole, so the cost follows the page tables, not the range
    (zone spans come from the dump and may be corrupt). None past ``limit``
    regions. With ``tables``, ``(address, PTE table's physical address)``
    pairs.
    """
    shift, fmt = walker.page_shift, walker.format
    present, entry_pfn = walker.entry_present, walker.entry_pfn
    out: List[int] = []

    def walk(table: Tuple[int, ...], level: int, base: int) -> bool:
        span = 1 << (shift + 9 * (level - 1))
        for idx in range(max(0, (lo - base) // span), min(511, (hi - 1 - base) // span) + 1):
            e = table[idx]
            if not present(e) or fmt.is_leaf(e, level):
                continue
            if level == 2:
                out.append((base + idx * span, entry_pfn(e) << shift) if tables
                           else base + idx * span)
                if len(out) > limit:
                    return False
                continue
            try:
                sub = walker.read_table(entry_pfn(e) << shift)
            except MissingMemory:
                continue
            if not walk(sub, level - 1, base + idx * span):
                return False
        return True

    if hi <= lo:
        return []
    top_span = 1 << (shift + 9 * walker.levels)
    if (lo & ~(top_span - 1)) != ((hi - 1) & ~(top_span - 1)):
        return None  # not one half of the address space: a corrupt span
    return out if walk(walker.top, walker.levels, lo & ~(top_span - 1)) else None


def _prescan(
    prog: Program,
    keyer: Callable[..., Optional[tuple]],
    orders: Tuple[Tuple[int, int], ...],
    regions: List[int],
) -> tuple:
    """
    The folios a list walk would key (``keyer``), found from the
    page tables alone: in the PTE table of each vmemmap address of
    ``regions`` (:func:`_pte_table_regions`), every run of a folio's
    vmemmap pages, for each hstate ``(order, vmemmap pages)``, whose tails
    are mapped alike, its head's vmemmap page read (one read, as the list
    walk's; by the frame its PTE names) and keyed. Run in a worker
    (:func:`~vmemspect.parallel.fork_map`).

    :return: ``(entries, keys)``: ``entries`` an array of (lru address,
        lru.next, lru.prev, order, key id) for each folio found, ``keys``
        the distinct keys the ids index. A list walk that meets one of
        these entries takes its links and key from here instead of
        reading its page.
    """
    model = kernel_model(prog)
    walker = page_table_walker(prog)
    ps, shift = model.page_size, model.page_shift
    lru = model.off_lru
    read = prog.read
    pte_run = walker.pte_run
    present, entry_pfn = walker.pte_valid, walker.entry_pfn  # of PTEs
    from_run = keyer.from_run  # type: ignore[attr-defined]
    unpack = _LINKS.unpack_from
    entries = array.array("Q")
    extend = entries.extend
    ids: Dict[tuple, int] = {}
    for va in regions:
        try:
            run = pte_run(va, 512)
        except MissingMemory:
            continue
        if run is None:
            continue  # a huge leaf or a hole: no PTE-mapped folio here
        ptes, upper_rw = run[0], run[2]
        for order, n in orders:
            for i in range(0, 513 - n, n):
                s = ptes[i:i + n]
                e0 = s[0]
                if s.count(s[1]) != n - 1 or not present(e0):
                    continue
                try:
                    data = read(entry_pfn(e0) << shift, ps, True)
                except FaultError:
                    continue
                page = va + i * ps
                k = from_run(order, page, data, s, upper_rw)
                if k is None:
                    continue
                j = ids.get(k)
                if j is None:
                    j = ids[k] = len(ids)
                extend((page + lru, *unpack(data, lru), order, j))
    # The PTE tables' pair counts (vmemspect.sweep), read here anyway.
    pairs = array.array("q")
    for phys, n in walker.pair_counts.items():
        pairs.extend((phys, n))
    return entries, list(ids), pairs


def _known_entries(
    prog: Program,
    model: KernelModel,
    keyer: Callable[..., Optional[tuple]],
    zone_list: list,
    orders: Tuple[Tuple[int, int], ...],
    jobs: int,
    workers: Optional[dict] = None,
) -> Optional[Tuple[Dict[int, tuple], List[tuple]]]:
    """
    :func:`_prescan` of the zones' vmemmap in ``jobs`` forked workers, as
    ``({order: slots}, keys)``: per order, the ``known`` slots of
    ``hugetlb._walk_list`` (the lru.next, lru.prev and key id of every
    folio found, in arrays indexed by the folio's place in the vmemmap:
    24 bytes per folio the memory could hold, no object per folio); None
    if there is nothing to split or a worker failed (the scan then reads
    every entry itself).
    """
    from . import parallel

    if not orders or not zone_list:
        return None
    span = 512 * model.page_size
    lo = model.page_address(min(z.start_pfn for z in zone_list)) & ~(span - 1)
    hi = model.page_address(max(z.end_pfn for z in zone_list))
    regions = _pte_table_regions(page_table_walker(prog), lo, hi)
    if not regions:
        return None
    # Table by table in turn (worker k takes tables k, k + jobs, ...): the
    # folios are spread evenly whatever the holes and the layout.
    parts = [(prog, keyer, orders, regions[k::jobs]) for k in range(min(jobs, len(regions)))]
    why: List[str] = []
    results = parallel.fork_map(_prescan, parts, why)
    if workers is not None:
        workers.update(started=len(parts), failed="; ".join(why) or None,
                       cpu_seconds=[round(c, 3) for c in parallel.last_cpu])
    if results is None:
        return None
    lru = model.off_lru
    known: Dict[int, tuple] = {}
    for order, n in orders:
        step = n * model.page_size
        slots = (regions[-1] + span - regions[0]) // step
        if slots > 8 * len(regions) * (512 // n):
            return None  # tables far apart (corrupt upper levels): not worth it
        known[order] = (regions[0] + lru, step, slots, array.array("Q", bytes(8 * slots)),
                        array.array("Q", bytes(8 * slots)), array.array("l", [-1]) * slots)
    ids: Dict[tuple, int] = {}
    counted = page_table_walker(prog).pair_counts
    for entries, keys, pairs in results:
        for i in range(0, len(pairs), 2):
            counted.setdefault(pairs[i], pairs[i + 1])
        remap = [ids.setdefault(k, len(ids)) for k in keys]
        for i in range(0, len(entries), 5):
            pos, nxt, prev, order, j = entries[i:i + 5]
            base, step, slots, nexts, prevs, kids = known[order]
            slot = (pos - base) // step
            if 0 <= slot < slots:
                nexts[slot], prevs[slot], kids[slot] = nxt, prev, remap[j]
    return known, list(ids)


def scan_folio_groups(
    prog: Program,
    judge: Callable[[FolioVmemmap], bool],
    cut: Optional[List[Tuple[str, str]]] = None,
    broken: Optional[List[ListBreak]] = None,
    jobs: int = 1,
    sweep=None,
    keyer: Optional[Callable[..., Optional[tuple]]] = None,
    workers: Optional[dict] = None,
    like: Optional[Callable[[FolioVmemmap, int], None]] = None,
) -> Iterator[Tuple[FolioVmemmap, int, bool]]:
    """
    Every hugetlb folio as :func:`scan_folios` reads it, as ``(record,
    count, in list order)``: a folio whose vmemmap is what HVO leaves and whose like
    (``keyer``) ``judge`` found clean before is not read again nor
    given a record: it is counted, and each such group comes last as
    ``(its first record, the folios after it)``. Every other folio comes
    in list order as ``(record, 1)``: what a consumer adds up is what it
    would from :func:`scan_folios`; what it lists in order (findings,
    unknowns) comes from the folios ``judge`` did not find clean.

    :param judge: whether a record is clean: no finding, nothing unknown
        (all folios of its key are then clean too).
    :param jobs: with more than one (on a dump), ``jobs`` forked workers
        first read and key the head vmemmap page of every folio the page
        tables show in HVO's shape (:func:`_prescan`); the list walk then
        takes those entries' links and keys from them (and counts those of
        a key found clean without yielding them) and reads only the folios
        it gives a record (the first of each key, and every folio of
        another shape). The same walk, checks and order: the same output
        as with one.
    :param sweep: a :class:`~vmemspect.sweep.VmemmapSweep` told of every
        folio walked, read or counted.
    :param keyer: ``key(order, page, data)``
        (:func:`~vmemspect.checks.folio_group_keyer`); without it no folio
        is grouped.
    :param like: told ``(the first record of its key, its struct page
        address)`` of each folio counted like another, in list order (with
        workers too: from inside the list walk).
    :param workers: filled with what the workers did (``started``,
        ``failed``: why they failed, None if they did not; ``cpu_seconds``)
        when ``jobs`` asked for them.
    """
    model = kernel_model(prog)
    walker = page_table_walker(prog)
    zone_list = zones(prog)
    cache: Dict[Tuple[int, int], FrameContents] = {}
    # key -> [first record, folios counted after it, list, key id] if clean, else None.
    groups: Dict[tuple, Optional[list]] = {}
    # Grouping reads nothing a full read would not (the head's vmemmap page
    # once, the PTEs through this scan's walker, shared frames once per
    # scan), and the key holds all the record takes from those reads: the
    # same output for the same reads, also on a live kernel. Workers are
    # not used there: they would read each page at another moment than
    # the list walk that joins their links.
    live = is_live(prog)
    if keyer is None:
        keyer = lambda order, page, data: None  # noqa: E731 - no grouping
    pre = None
    if workers is not None:
        workers.update(requested=jobs, started=0, failed=None, cpu_seconds=[],
                       why_none="a live kernel is read by one process" if live and jobs > 1
                       else None)
    if not live and jobs > 1:
        orders = tuple(sorted({(h.order, model.vmemmap_pages(h.order))
                               for h in for_each_hstate_record(prog)
                               if h.order_ok and h.nr_huge_pages
                               and 3 <= model.vmemmap_pages(h.order) <= 512}))
        pre = _known_entries(prog, model, keyer, zone_list, orders, jobs, workers)
        if workers is not None and not workers.get("started"):
            workers["why_none"] = "nothing to split: no PTE-mapped folio in HVO's shape"
    known, keys = pre if pre is not None else (None, [])
    ids = {k: i for i, k in enumerate(keys)}
    # Per list, (key ids found clean, folios of each counted by the walk).
    skip: Dict[tuple, tuple] = {}
    # Per key id: the pairs (FolioVmemmap.pairs) of a folio of that key.
    kid_pairs = [0] * len(keys)
    lru = model.off_lru

    def skips(h, state: str, nid: int) -> tuple:
        s = skip.get((h.index, state, nid))
        if s is None:
            on_skip = None
            if sweep is not None or like is not None:
                order, prefix = h.order, (h.index, state, nid)
                add_like = sweep.add_like if sweep is not None else None

                def on_skip(pos: int, kid: int) -> None:
                    # A folio the walk counts like the clean first of its
                    # key, in list order: the sweep and ``like`` are told.
                    if add_like is not None:
                        add_like(pos - lru, order, kid_pairs[kid])
                    if like is not None:
                        like(groups[prefix + keys[kid]][0], pos - lru)
            s = skip[(h.index, state, nid)] = (bytearray(len(keys)), [0] * len(keys), on_skip)
        return s

    page_size = model.page_size
    for h, state, nid, page, data in for_each_hugetlb_entry(
            prog, None, cut, broken, known, skips if known else None):
        if data.__class__ is tuple:
            # Keyed by a worker (_prescan), of a key not found clean yet.
            suffix = keys[data[2]]
            data = prog.read(page, page_size)
        else:
            suffix = keyer(h.order, page, data)
        key = None
        if suffix is not None:
            key = (h.index, state, nid) + suffix
            g = groups.get(key, False)
            if g:
                g[1] += 1
                if g[5] is not None:
                    # sweep.add_like(), inlined: once per folio counted.
                    marks, first, step = g[5]
                    slot = (page - first) // step
                    if 0 <= slot < len(marks):
                        marks[slot] = g[4] + 1
                if like is not None:
                    like(g[0], page)
                continue
        offset = page & (page_size - 1)
        folio = folio_record(prog, model, zone_list, h, page,
                             data[offset:offset + 2 * model.sizeof_page], state, nid)
        fv = folio_vmemmap(prog, folio, walker, cache, data)
        if sweep is not None:
            sweep.add_record(fv)
        if key is not None and key not in groups:
            if judge(fv) and len(fv.pairs) <= 1:
                kid = ids.get(suffix)
                npairs = fv.pairs[0][1] if fv.pairs else 0
                groups[key] = [fv, 0, (h.index, state, nid), kid, npairs,
                               None if sweep is None else sweep.marker(h.order)]
                if kid is not None:
                    kid_pairs[kid] = npairs
                    skips(h, state, nid)[0][kid] = 1
            else:
                groups[key] = None
        yield fv, 1, True
    for g in groups.values():
        if g:
            n = g[1] + (skip[g[2]][1][g[3]] if g[3] is not None and g[2] in skip else 0)
            if n:
                yield g[0], n, False


class TailTally:
    """
    What :func:`shared_tails` needs from a scan, gathered folio by folio so
    that a scan need not keep its folios: how many folios map each frame at
    tail positions, and how many optimized folios each (node, zone, order)
    has (zone -1 where the slots are per node).

    :param only: count the mappings of these frames only.
    """

    def __init__(self, per_node: bool = False, only: Optional[Iterable[int]] = None) -> None:
        self.per_node = per_node
        #: Count only the mappings of these frames (the vmemmap_tails[]
        #: slots': all shared_tails() asks about), so that the tally does
        #: not grow with the folios of the pointer form (a frame each).
        self.only = None if only is None else frozenset(only)
        self.mapped: Dict[int, int] = collections.Counter()
        self.expected: Dict[Tuple[int, int, int], int] = collections.Counter()

    def add(self, fv: FolioVmemmap, n: int = 1) -> None:
        """Count ``fv`` (``n`` folios like it: :func:`scan_folio_groups`)."""
        for pfn in {t.pfn for t in fv.tails if t.pfn is not None}:
            if self.only is None or pfn in self.only:
                self.mapped[pfn] += n
        # A folio whose mapping could not be read maps nothing known: it is
        # unknown, so it is no more expected than counted.
        if fv.folio.optimized and fv.unknown is None:
            zone_idx = -1 if self.per_node else fv.folio.zone_idx
            self.expected[(fv.folio.nid, zone_idx, fv.folio.order)] += n


def shared_tails(
    prog: Program, scanned: Iterable[FolioVmemmap] = (), tally: Optional[TailTally] = None
) -> List[SharedTail]:
    """
    The ``vmemmap_tails[]`` slots of every zone (mask form) that are filled
    or that optimized folios need, with the number of folios whose tail
    vmemmap pages map each slot's frame, counted from ``scanned`` (or from a
    :class:`TailTally` gathered during the scan).

    Empty on pointer-form kernels (before 7.1), which have no shared tails.
    """
    model = kernel_model(prog)
    if model.tails_owner is None:
        return []
    # The series' v4 posting keeps the slots per node: judge them once per
    # node (zone -1), and not by zone bits in their flags, which that code
    # leaves zero (prep_compound_tail() on a zeroed page).
    per_node = model.tails_owner == "pglist_data"
    if tally is None:
        tally = TailTally(per_node)
        for fv in scanned:
            tally.add(fv)
    mapped, expected = tally.mapped, tally.expected
    result = []
    done_nodes = set()
    for zone in zones(prog):
        if per_node:
            if zone.nid in done_nodes:
                continue
            done_nodes.add(zone.nid)
        zone_idx = -1 if per_node else zone.idx
        for slot, page in enumerate(zone.tails):
            order = slot + model.tail_min_order
            need = expected.get((zone.nid, zone_idx, order), 0)
            if not page and not need:
                continue
            pfn = model.struct_page_pfn(page) if page else None
            contents = None
            unreadable = None
            if pfn is not None:
                try:
                    tail = compound_info_mask(model, order)
                    contents = frame_contents(
                        prog, model, pfn, tail, False,
                        None if per_node else (zone.nid, zone.idx),
                    )
                except (MissingMemory, FaultError):
                    unreadable = frame_absence(prog, pfn)
            result.append(
                SharedTail(
                    nid=zone.nid,
                    zone_idx=zone_idx,
                    zone_name="(node)" if per_node else zone.name,
                    order=order,
                    slot=slot,
                    page=page,
                    pfn=pfn,
                    folios=mapped.get(pfn, 0) if pfn is not None else 0,
                    folios_expected=need,
                    contents=contents,
                    unreadable=unreadable,
                )
            )
    return result


def vmemmap_savings(model: KernelModel, order: int) -> int:
    """
    Vmemmap pages HVO frees for one folio of ``order``: all but the head's
    vmemmap page (hugetlb_vmemmap_optimizable_size(), the figure of the
    kernel's "HugeTLB: N KiB vmemmap can be freed for a X page" line).
    Zero for orders too small to optimize.
    """
    n = model.vmemmap_pages(order)
    return n - 1 if order >= model.tail_min_order else 0


@dataclasses.dataclass(frozen=True)
class PageDecode:
    """One struct page's compound_info/compound_head, decoded."""

    page: int
    pfn: int
    member: Optional[str]
    info: CompoundInfo
    flags: int
    pg_head: bool
    #: Pointer form: PG_head set on a struct page that is really a tail
    #: (its next struct page names another head).
    fake_head: bool
    #: The decoded head has PG_head and is not itself a tail.
    head_is_head: Optional[bool]
    head_pfn: Optional[int]
    #: drgn's own compound_head() of the page, for comparison.
    drgn_head: Optional[int]
    #: How the vmemmap page holding this struct page is mapped.
    leaf: Optional[Leaf]
    #: The leaf entry's flag bits by the architecture's names ("P RW NX",
    #: "V R W A D G"), None without a leaf.
    leaf_bits: Optional[str] = None


def decode_page(prog: Program, page: int) -> PageDecode:
    """
    Decode the ``compound_info`` (7.1+) or ``compound_head`` (before) of the
    struct page at address ``page``, check that the head it names is a real
    head, say whether it is a pointer-form fake head, and put drgn's own
    ``compound_head()`` beside it.

    :raises MissingMemory: if the struct page is not in memory.
    """
    from drgn import Object
    from drgn.helpers.linux.mm import compound_head

    model = kernel_model(prog)
    try:
        data = prog.read(page, model.sizeof_page)
    except FaultError:
        raise MissingMemory("the struct page", page)
    flags = _U64.unpack_from(data, model.off_flags)[0]
    raw = _U64.unpack_from(data, model.off_info)[0]
    # The next struct page tells a fake head from a head; it may lie beyond
    # the mapped vmemmap (a hole): then it is no tail of anything.
    try:
        next_raw = prog.read_u64(page + model.sizeof_page + model.off_info)
    except FaultError:
        next_raw = 0
    info = decode_compound_info(model, page, raw)
    pg_head = bool(flags & (1 << model.pg_head))
    fake_head = (
        model.form == "pointer" and pg_head and bool(next_raw & 1) and next_raw - 1 != page
    )
    head_is_head = head_pfn = None
    if info.head is not None:
        head_pfn = model.page_pfn(info.head)
        try:
            hdata = prog.read(info.head, model.sizeof_page)
            hflags = _U64.unpack_from(hdata, model.off_flags)[0]
            hinfo = _U64.unpack_from(hdata, model.off_info)[0]
            head_is_head = bool(hflags & (1 << model.pg_head)) and not hinfo & 1
        except FaultError:
            head_is_head = None
    try:
        drgn_head = compound_head(Object(prog, "struct page *", page)).value_()
    except FaultError:
        drgn_head = None
    try:
        walker = page_table_walker(prog)
        leaf = walker.lookup(page & ~(model.page_size - 1))
        leaf_bits = walker.format.bits(leaf.entry)
    except MissingMemory:
        leaf = leaf_bits = None
    return PageDecode(
        page=page,
        pfn=model.page_pfn(page),
        member=model.info_member,
        info=info,
        flags=flags,
        pg_head=pg_head,
        fake_head=fake_head,
        head_is_head=head_is_head,
        head_pfn=head_pfn,
        drgn_head=drgn_head,
        leaf=leaf,
        leaf_bits=leaf_bits,
    )
