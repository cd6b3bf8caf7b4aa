"""
Whole-vmemmap sweep
-------------------

The hstate lists show the folios the kernel keeps; the page tables show
every vmemmap range HVO (or anything else) remapped, whatever the lists
say. A folio the kernel lost (unlinked from its list), or one it freed to
the page allocator without restoring its vmemmap, is on no list but still
remapped: only the page tables tell.

A *remapped range* is a run of consecutive vmemmap pages mapped onto one
frame by PTEs: the pointer form (before 7.1) maps a folio's vmemmap pages
1..N-1 onto its own first page's frame, the mask form (7.1+) maps them onto
the zone's shared ``vmemmap_tails[]`` frame. Its head is the vmemmap page
whose struct pages the run's frame describes: the run's first page in the
pointer form, the page before the run when the run maps a shared frame.

The sweep is cheap where the lists account for everything: while a scan
walks the lists it records, per folio, how many pairs of neighbouring
vmemmap pages of each PTE table map one frame (:attr:`FolioVmemmap.pairs`);
the sweep then reads every PTE table under the vmemmap once and counts
those pairs in C (one big-integer mask per table). A table whose count is
what its listed folios account for holds no other remapped range. Only the
other tables are read entry by entry, their runs found and matched to the
listed folios; a run that matches none is an unlisted range, and its head
struct page says what is there.

A run needs two neighbouring vmemmap pages on one frame to be seen: every
HVO state has at least two (seven for a 2 MiB folio). PMD-mapped vmemmap
cannot be remapped by HVO (it splits the PMD first) and is not swept.
"""

import array
import dataclasses
import struct
from typing import Dict, Iterable, List, Optional, Tuple

from drgn import FaultError, Program

from .errors import MissingMemory
from .hvo import FolioVmemmap, _pte_table_regions
from .kernel import folio_test_hugetlb, kernel_model, page_flags_zone
from .pagetable import page_table_walker

__all__ = ("RemappedRange", "SweepResult", "VmemmapSweep")

_U64 = struct.Struct("<Q")


@dataclasses.dataclass(frozen=True)
class RemappedRange:
    """A remapped vmemmap range that no listed hugetlb folio accounts for,
    and what its head struct page says is there."""

    #: The pfn its head struct page describes.
    pfn: int
    #: Virtual address of its head's vmemmap page, and its vmemmap pages
    #: (the head's and the remapped ones after it).
    vmemmap: int
    vmemmap_pages: int
    #: The frame the remapped pages map, and the name of the shared tail
    #: frame it is ("node 0 DMA32 order 9"), if it is one.
    frame: int
    frame_name: Optional[str]
    #: The remapped pages map the head's own vmemmap frame (the pointer
    #: form's shape), not the shared frame or another.
    own_frame: bool
    #: How many of the remapped pages are mapped writable (by their PTE).
    writable: int
    #: "isolated": a hugetlb folio isolated for migration (off the lists
    #: by design, for a moment); "device": ZONE_DEVICE memory, whose tail
    #: vmemmap the kernel deduplicates outside HVO; "off-lists": a hugetlb
    #: folio on no hstate list; "not-hugetlb": no hugetlb folio heads the
    #: range; "unknown": its head struct page is not in the dump;
    #: "freeing": queued for the kernel's deferred free (hpage_freelist),
    #: which restores its vmemmap: not a finding.
    kind: str
    #: What the head struct page says, in words.
    what: str
    #: Raw words of the head struct page (None if it could not be read).
    flags: Optional[int]
    info: Optional[int]
    private: Optional[int]
    refcount: Optional[int]
    #: The order in the first tail page (None if unread).
    order: Optional[int]
    #: folio_test_hugetlb() (None if unknown or unread).
    hugetlb: Optional[bool]
    #: HPG_vmemmap_optimized in ->private (what the kernel believes).
    optimized: bool

    @property
    def saved_pages(self) -> int:
        """Vmemmap pages the remapping freed: all but the head's."""
        return self.vmemmap_pages - 1


@dataclasses.dataclass
class SweepResult:
    """What :meth:`VmemmapSweep.finish` found."""

    #: PTE tables under the vmemmap read, tables the dump lacks, and tables
    #: read entry by entry (their count was not what the listed folios
    #: account for).
    tables: int
    missing_tables: int
    slow_tables: int
    #: Remapped ranges of no listed folio.
    unlisted: List[RemappedRange]
    #: The lists were not walked whole (a list cut or broken, an hstate
    #: order corrupt): a range of no listed folio may be on an unwalked
    #: part, so hugetlb folios among them are not findings.
    lists_incomplete: bool = False

    @property
    def unlisted_saved_pages(self) -> int:
        return sum(r.saved_pages for r in self.unlisted)


class VmemmapSweep:
    """
    Collects the listed folios of one scan (:meth:`add_record`,
    :meth:`add_like`) and then sweeps every PTE table under the vmemmap
    (:meth:`finish`). Memory: two bytes per folio the memory could hold of
    each hstate order (about 6 MB for 12 TiB of 2 MiB pages).

    :param orders: the hstates' orders (a folio of another order found on
        a list is recorded by the tables it touches only).
    """

    def __init__(self, prog: Program, orders: Iterable[int]) -> None:
        self.prog = prog
        self.model = model = kernel_model(prog)
        self.walker = page_table_walker(prog)
        self.region_shift = model.page_shift + 9  # the vmemmap one PTE table maps
        self.vstart = model.vmemmap_start
        self.max_index = self._max_vmemmap_pages()
        #: order -> (vmemmap pages per folio, marks): a mark per folio slot,
        #: 0 if no listed folio starts there, else 1 + the pairs it accounts
        #: for (orders whose vmemmap fits in one PTE table), or 1 (larger).
        self.marks: Dict[int, Tuple[int, array.array]] = {}
        for order in sorted(set(orders)):
            self._marks_of(order)
        #: region -> pairs of listed folios spanning several PTE tables.
        self.big_pairs: Dict[int, int] = {}
        self._queued: Optional[Tuple[frozenset, frozenset]] = None
        #: &folio->mapping of every unlisted range's head (set by finish()).
        self._chain_nodes: frozenset = frozenset()

    def _max_vmemmap_pages(self) -> int:
        """Vmemmap pages from the vmemmap's start to the last pfn of the
        machine (max_pfn, bounded: it comes from the dump)."""
        model = self.model
        try:
            max_pfn = self.prog["max_pfn"].value_()
        except (KeyError, LookupError, FaultError):
            max_pfn = 0
        max_pfn = min(max(max_pfn, 1), 1 << (46 - model.page_shift))  # 64 TiB
        return -(-max_pfn // model.pages_per_vmemmap_page)

    def _marks_of(self, order: int) -> Tuple[int, array.array]:
        m = self.marks.get(order)
        if m is None:
            n = self.model.vmemmap_pages(order)
            m = self.marks[order] = (n, array.array("H", bytes(2 * (self.max_index // n + 1))))
        return m

    def marker(self, order: int) -> Tuple[array.array, int, int]:
        """``(marks, first, step)`` of ``order``: a listed folio at struct
        page ``page`` that accounts for ``pairs`` (its vmemmap in one PTE
        table) is recorded by ``marks[(page - first) // step] = pairs + 1``
        (when the slot is in range): :meth:`add_like` inlined by the hot
        loop of a grouped scan."""
        n, marks = self.marks.get(order) or self._marks_of(order)
        return marks, self.vstart, n << self.model.page_shift

    def add_like(self, page: int, order: int, pairs: int) -> None:
        """A listed folio at struct page ``page`` whose vmemmap lies in one
        PTE table with ``pairs`` pairs of neighbouring pages on one frame
        (a folio counted like another: its record's only pair count)."""
        n, marks = self.marks.get(order) or self._marks_of(order)
        slot = ((page - self.vstart) >> self.model.page_shift) // n
        if 0 <= slot < len(marks):
            marks[slot] = pairs + 1

    def add_record(self, fv: FolioVmemmap) -> None:
        """A listed folio's record."""
        f = fv.folio
        n, marks = self.marks.get(f.order) or self._marks_of(f.order)
        index = (fv.vmemmap - self.vstart) >> self.model.page_shift
        slot = index // n
        if not 0 <= slot < len(marks):
            return
        if n <= 512 and index % n == 0 and len(fv.pairs) <= 1:
            marks[slot] = (fv.pairs[0][1] if fv.pairs else 0) + 1
            return
        marks[slot] = max(marks[slot], 1)
        rel = self.vstart >> self.region_shift
        for region, count in fv.pairs:
            r = region - rel
            self.big_pairs[r] = self.big_pairs.get(r, 0) + count

    def _expected(self, r: int) -> int:
        """Pairs the listed folios account for in PTE table ``r`` (counted
        from the vmemmap's start)."""
        total = self.big_pairs.get(r, 0)
        for n, marks in self.marks.values():
            if n > 512:
                continue
            per = 512 // n
            s = marks[r * per:(r + 1) * per]
            listed = per - s.count(0)
            if listed:
                total += sum(s) - listed
        return total

    def _listed_at(self, index: int) -> bool:
        """A listed folio's vmemmap holds vmemmap page ``index``."""
        for n, marks in self.marks.values():
            slot = index // n
            if 0 <= slot < len(marks) and marks[slot]:
                return True
        return False

    def finish(self, shared: Dict[int, str], lists_incomplete: bool = False) -> SweepResult:
        """
        Sweep every PTE table under the vmemmap.

        :param shared: the filled ``vmemmap_tails[]`` frames (pfn -> name).
        :param lists_incomplete: see :attr:`SweepResult.lists_incomplete`.
        """
        model, walker = self.model, self.walker
        region = 1 << self.region_shift
        lo = self.vstart & ~(region - 1)
        hi = self.vstart + self.max_index * model.page_size
        regions = _pte_table_regions(walker, lo, hi, tables=True) or []
        # Tables the scan read already were counted then (the walker keeps
        # their pairs); the others are read once here.
        known = walker.pair_counts
        tables = missing = 0
        slow: List[Tuple[int, int]] = []
        for va, phys in regions:
            pairs = known.get(phys)
            if pairs is None:
                try:
                    walker.read_table(phys, True)  # counts its pairs
                except MissingMemory:
                    missing += 1
                    continue
                pairs = known[phys]
            tables += 1
            if pairs >= 0 and pairs == self._expected((va - self.vstart) >> self.region_shift):
                continue
            slow.append((va, phys))
        runs: Dict[int, tuple] = {}
        for va, phys in slow:
            for head, pages, frame, writable in self._runs(va, phys, shared):
                if head not in runs and not self._listed_at(head):
                    runs[head] = (pages, frame, writable)
        self._chain_nodes = frozenset(self.vstart + (h << model.page_shift) + model.off_mapping
                                      for h in runs)
        found = {h: self._describe(h, pages, frame, shared.get(frame), writable)
                 for h, (pages, frame, writable) in runs.items()}
        return SweepResult(tables=tables, missing_tables=missing, slow_tables=len(slow),
                           unlisted=[found[h] for h in sorted(found)],
                           lists_incomplete=lists_incomplete)

    def _runs(self, va: int, phys: int, shared: Dict[int, str]):
        """``(head index, vmemmap pages, frame, writable remapped pages)`` of
        every run of vmemmap pages on one frame in the PTE table at
        ``phys`` (mapping ``va``), entry by entry."""
        walker = self.walker
        try:
            table = walker.read_table(phys)
        except MissingMemory:
            return
        valid, pfn_of, writable = walker.pte_valid, walker.entry_pfn, walker.entry_writable
        pfns = [pfn_of(e) if valid(e) else None for e in table]
        base = (va - self.vstart) >> self.model.page_shift
        i = 1
        while i < 512:
            p = pfns[i]
            if p is None or p != pfns[i - 1]:
                i += 1
                continue
            a = i - 1
            while i < 512 and pfns[i] == p:
                i += 1
            first = base + a
            if a == 0:
                first = self._run_start(first, p)
            # A shared frame is never its head's own: the head is the page
            # before the run (mask form); else the run starts at its head.
            head = first - 1 if p in shared else first
            end = base + i  # one past the run's last page in this table
            rw = sum(1 for e in table[max(a, head - base + 1):i] if writable(e))
            yield head, end - head, p, rw

    def _run_start(self, index: int, pfn: int) -> int:
        """Where a run that starts a PTE table really starts: walk back
        through the tables before it while they map ``pfn``."""
        walker, shift = self.walker, self.model.page_shift
        for _ in range(1 << 18):
            if index == 0:
                break
            try:
                prev = walker.lookup(self.vstart + ((index - 1) << shift))
            except MissingMemory:
                break
            if prev.level != 1 or prev.pfn != pfn:
                break
            index -= 1
        return index

    def freeing_pages(self) -> frozenset:
        """Struct pages of the folios queued on ``hpage_freelist`` (the
        llist of update_and_free_hugetlb_folio(), linked through
        ``folio->mapping``) for the deferred free, read once."""
        if self._queued is None:
            model, pages, nodes = self.model, set(), set()
            try:
                node = self.prog.read_u64(self.prog.symbol("hpage_freelist").address)
                while node and len(pages) < 1 << 20:
                    page = node - model.off_mapping
                    if model.struct_page_pfn(page) is None or page in pages:
                        break
                    pages.add(page)
                    nodes.add(node)
                    node = self.prog.read_u64(node)
            except (LookupError, FaultError):
                pass
            self._queued = (frozenset(pages), frozenset(nodes))
        return self._queued[0]

    def freeing_nodes(self) -> frozenset:
        """The llist nodes (``&folio->mapping``) of every unlisted range's
        head: free_hpage_workfn() takes the whole queue with
        llist_del_all() and frees it folio by folio, so a folio whose
        ``mapping`` points at another unlisted head's is on that taken
        chain (the chain's last has NULL there, and cannot be told from a
        lost folio)."""
        self.freeing_pages()
        return self._queued[1] | self._chain_nodes

    def _describe(self, head: int, pages: int, frame: int, frame_name: Optional[str],
                  writable: int) -> RemappedRange:
        """What the head struct page of an unlisted range says."""
        model = self.model
        page = self.vstart + (head << model.page_shift)
        pfn = head * model.pages_per_vmemmap_page
        own = self.walker.lookup(page).pfn == frame
        common = dict(pfn=pfn, vmemmap=page, vmemmap_pages=pages, frame=frame,
                      frame_name=frame_name, own_frame=own, writable=writable)
        try:
            data = self.prog.read(page, 2 * model.sizeof_page)
        except FaultError:
            # Missing memory is not corruption: what heads it is unknown.
            return RemappedRange(kind="unknown", what="its head struct page is not in the dump",
                                 flags=None, info=None, private=None, refcount=None,
                                 order=None, hugetlb=None, optimized=False, **common)
        flags = _U64.unpack_from(data, model.off_flags)[0]
        info = _U64.unpack_from(data, model.off_info)[0]
        private = _U64.unpack_from(data, model.off_private)[0]
        refcount = struct.unpack_from("<i", data, model.off_refcount)[0]
        order = data[model.off_order]
        optimized = bool(private >> model.hpg_vmemmap_optimized & 1)
        is_head = bool(flags >> model.pg_head & 1) and not info & 1
        hugetlb = folio_test_hugetlb(model, data) if is_head else False
        words = f"flags {flags:#x}, refcount {refcount}, private {private:#x}"
        if model.zone_device is not None and page_flags_zone(model, flags) == model.zone_device:
            kind = "device"
            what = (f"device memory (ZONE_DEVICE): a compound page whose tail vmemmap the "
                    f"kernel deduplicates itself (vmemmap_populate_compound_pages()), not "
                    f"HVO ({words})")
        elif not is_head:
            kind = "not-hugetlb"
            what = (f"no compound head: PG_head {'set' if flags >> model.pg_head & 1 else 'clear'}"
                    f"{', a tail' if info & 1 else ''} ({words})")
        elif hugetlb is False:
            kind = "not-hugetlb"
            what = f"a compound head of order {order} that is not a hugetlb folio ({words})"
        else:
            of = f"of order {order}" + ("" if hugetlb else " (hugetlb or not: the types do not say)")
            migratable = bool(private >> model.hpg_migratable & 1)
            mapping = _U64.unpack_from(data, model.off_mapping)[0]
            if refcount == 0 and (page in self.freeing_pages() or mapping in self.freeing_nodes()):
                kind = "freeing"
                what = (f"a hugetlb folio {of} the kernel is freeing: queued on hpage_freelist "
                        f"for free_hpage_work(), which restores its vmemmap first "
                        f"(remove_hugetlb_folio() took it off the lists and counters; {words})")
            elif hugetlb and refcount > 0 and not migratable:
                kind = "isolated"
                what = (f"a hugetlb folio {of} isolated for migration (in use, "
                        f"HPG_migratable clear: isolate_hugetlb() took it off the active "
                        f"list; {words})")
            else:
                kind = "off-lists"
                state = "free (refcount 0)" if refcount == 0 else "in use"
                what = f"a hugetlb folio {of}, {state}, on no hstate list ({words})"
        return RemappedRange(kind=kind, what=what, flags=flags, info=info, private=private,
                             refcount=refcount, order=order, hugetlb=hugetlb,
                             optimized=optimized, **common)
