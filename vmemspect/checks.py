"""
HVO invariants
--------------

Checks that judge plain records (:class:`~vmemspect.hvo.FolioVmemmap`,
:class:`~vmemspect.hvo.SharedTail`, :class:`~vmemspect.hugetlb.Hstate`,
:class:`~vmemspect.hugetlb.Zone`) and return :class:`Finding` records. They
read no memory, so they are tested on records built by hand, and the
reading is tested on real dumps. Each check's id, and the kernel code it
comes from, is documented in ``docs/checks.md``.
"""

import array
import bisect
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .hugetlb import Hstate, ListBreak, Zone
from .hvo import FolioVmemmap, SharedTail, pte_leaf
from .kernel import KernelModel, compound_info_mask, page_flags_nid, page_flags_zone
from .memmap import MemmapResult
from .pagetable import PageTableWalker
from .sweep import RemappedRange, SweepResult

__all__ = (
    "CAUSES",
    "CHECKS",
    "Finding",
    "check_folio",
    "check_hstate_counts",
    "check_hstate_lists",
    "check_hstate_orders",
    "check_kernel_counts",
    "check_memmap",
    "check_shared_tails",
    "check_unlisted",
    "count_folio",
    "folio_check_context",
    "folio_group_keyer",
    "folio_key",
)

#: Check id -> one-line description (docs/checks.md has the why).
CHECKS = {
    "hstate-list": "every hstate list leads back to its head: no loop, no link to unmapped "
    "memory, every entry's lru.prev points back",
    "hstate-order": "an hstate's order is what its name says and one a huge page can have",
    "hstate-count": "folios found on an hstate's lists match its per-node counters",
    "head-page": "a folio's head struct page has PG_head, is not a tail, and has the hstate's order",
    "folio-node": "the head's page flags carry the node and zone whose span holds the pfn",
    "flag-vs-mapping": "HPG_vmemmap_optimized is set exactly when the vmemmap is remapped",
    "head-mapping": "vmemmap page 0 is mapped writable (by a PTE once HVO split its PMD)",
    "head-frame": "the struct pages after the head in vmemmap page 0 are tails of this folio",
    "tail-frame": "tail vmemmap pages map the expected frame: vmemmap_tails[] of the folio's "
    "own zone and order (mask form) or the folio's head frame (pointer form)",
    "tail-readonly": "an optimized folio's tail vmemmap pages are mapped read-only by PTEs",
    "tail-contents": "every struct page in a tail vmemmap frame is a tail naming this folio's head",
    "tails-slot": "every zone and order with optimized folios has a vmemmap_tails[] frame",
    "shared-frame": "every struct page in a shared tail frame is a tail of that order carrying "
    "the zone's node and zone, with TAIL_MAPPING",
    "kernel-count": "the kernel's own count of optimized folios (hugetlb_optimize_vmemmap_key, "
    "5.18-7.0) equals the folios that carry HPG_vmemmap_optimized",
    "kernel-memmap": "the vmemmap pages the kernel's memmap counters say HVO freed "
    "(nr_memmap_boot_pages + nr_memmap_pages, 6.10+) equal those the page tables show freed "
    "in the whole vmemmap",
    "unlisted-folio": "every remapped vmemmap range belongs to a hugetlb folio on an hstate list "
    "(or one isolated for migration); with verify --memmap, every hugetlb folio head too",
    "unlisted-remap": "every remapped vmemmap range is headed by a hugetlb folio",
    "stale-hugetlb-type": "a struct page whose page type says hugetlb heads a hugetlb folio "
    "(read only by verify --memmap)",
}

#: Root causes that are a state more precise than the check that finds it
#: (Finding.cause) -> what the state is. A finding without a cause is a
#: root cause of the kind of its check.
CAUSES = {
    "flag-not-remapped": "HPG_vmemmap_optimized set on vmemmap that was never remapped",
    "remapped-not-flagged": "vmemmap remapped, HPG_vmemmap_optimized clear",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """An invariant that does not hold."""

    check: str
    #: What it is about: "folio pfn 0x..." or "frame pfn 0x..." or "hstate ...".
    subject: str
    expected: str
    found: str
    folio_pfn: Optional[int] = None
    frame_pfn: Optional[int] = None
    #: What the kernel will do when it acts on this state (frees, demotes or
    #: writes the folio), as far as the kernel's code says.
    consequence: Optional[str] = None
    #: The root cause this finding shows, when it is more precise than the
    #: check (an id of CAUSES), or, with ``implied``, the cause it follows
    #: from (a CAUSES id or a check id); None: the check's own.
    cause: Optional[str] = None
    #: This finding only follows from its cause, found by another finding
    #: on the same folio (or, without a folio, on the folios of that
    #: cause): not a problem of its own (vmemspect.diagnosis folds it).
    implied: bool = False
    #: The folio's order, for a finding about a folio.
    folio_order: Optional[int] = None
    #: For a count that disagrees: what was found minus what the kernel
    #: counts (kernel-count: flagged folios minus the key's count).
    delta: Optional[int] = None
    #: For a finding about a struct page that heads no folio
    #: (stale-hugetlb-type): the pfn it describes.
    page_pfn: Optional[int] = None

    def line(self) -> str:
        return f"{self.check}: {self.subject}: expected {self.expected}; found {self.found}"


def _consequence(model: KernelModel, check: str, flag_set: bool = False) -> Optional[str]:
    """What the kernel does with a folio in the state a finding describes
    (mm/hugetlb.c, mm/hugetlb_vmemmap.c)."""
    if check == "flag-vs-mapping" and flag_set:
        if model.hvo_key:
            return ("flag set, vmemmap not remapped: freeing or demoting this folio makes the "
                    "kernel restore vmemmap it never freed; that decrements "
                    "hugetlb_optimize_vmemmap_key for a folio it never counted (underflow: "
                    "WARNING in static_key_dec_not_one, seen on 6.12.117) and the vmemmap "
                    "pages it never freed stay allocated (nr_memmap_pages stays up)")
        return ("flag set, vmemmap not remapped: freeing or demoting this folio makes the "
                "kernel restore vmemmap it never freed")
    if check == "flag-vs-mapping":
        return ("vmemmap remapped, flag clear: freeing this folio skips the restore and hands "
                "its pages to the buddy allocator with read-only tail struct pages: the first "
                "write to one oopses")
    if check == "tail-readonly":
        shared = ("every folio of this zone and order, which all map this frame"
                  if model.form == "mask" else "the folio's head page, which shares this frame")
        return f"a write through this mapping changes {shared}"
    if check == "tail-frame":
        return ("the folio's tail struct pages read another frame's contents: compound_head(), "
                "page_zone() and folio lookups of its pages answer for that frame")
    if check == "shared-frame":
        return "every tail struct page of every folio mapping this frame reads the bad word"
    return None


#: tail-frame and tail-readonly on a frame of the folio's own, which only
#: one of its vmemmap pages maps and which holds its own tails (vmemmap as
#: it is without HVO): what is true of that frame, whatever the cause.
OWN_FRAME = {
    "tail-frame": "none through this frame: it is the folio's own, mapped by this vmemmap page "
                  "alone, and holds the folio's own tail struct pages, which read right; it was "
                  "not remapped, so not freed",
    "tail-readonly-rw": "a write through this mapping changes only the folio's own struct pages "
                        "in this frame, which nothing else maps (as without HVO)",
    "tail-readonly": "none through this frame: it is the folio's own and nothing else maps it; "
                     "HVO maps the tails it remaps with PTEs",
}


def _tail_consequence(model: KernelModel, check: str, pfn: Optional[int], own: bool,
                      writable: bool, expected: bool) -> Optional[str]:
    """tail-frame and tail-readonly: what holds for the frame at hand."""
    if own:
        return OWN_FRAME["tail-readonly-rw" if check == "tail-readonly" and writable else check]
    if check == "tail-frame" and pfn is None:
        return ("a read of these tail struct pages faults: their vmemmap page is not mapped "
                "(compound_head(), page_zone() and folio lookups of those pages oops)")
    if check == "tail-readonly" and not expected and pfn is not None:
        return (f"a write through this mapping changes frame {pfn:#x}, which is not the frame "
                "HVO maps there (tail-frame), and whatever else uses that frame")
    return _consequence(model, check)


def _folio_subject(fv: FolioVmemmap) -> str:
    f = fv.folio
    return f"folio pfn {f.pfn:#x} ({f.hstate}, node {f.nid} {f.zone_name}, {f.state})"


def check_folio(
    model: KernelModel,
    fv: FolioVmemmap,
    tails_by_zone: Dict[Tuple[int, int], Tuple[int, ...]],
    shared_frames: Dict[int, str],
) -> List[Finding]:
    """
    The per-folio invariants of the kernel's form.

    :param tails_by_zone: (nid, zone idx) -> the zone's vmemmap_tails[] as
        frame pfns (0 for an empty slot).
    :param shared_frames: pfn of every filled vmemmap_tails[] slot -> a name
        for it ("node 1 Normal order 9"), to say whose frame a wrong PTE hits.
    """
    out: List[Finding] = []
    f = fv.folio
    subject = _folio_subject(fv)

    def add(check: str, expected: str, found: str, frame: Optional[int] = None,
            consequence: Optional[str] = "", cause: Optional[str] = None,
            implied: bool = False) -> None:
        out.append(Finding(check, subject, expected, found, f.pfn, frame,
                           _consequence(model, check, f.optimized) if consequence == ""
                           else consequence, cause, implied, f.order))

    if fv.unknown is not None:
        return out  # counted as unknown by the caller, never a violation

    # The 6.12 demotion state: flagged, every vmemmap page on a frame of its
    # own. What HVO would have done (remap the tails read-only onto one
    # frame, split a PMD for it) is missing: findings about that follow
    # from the flag, they are not problems of their own.
    never_remapped = f.optimized and not fv.remapped
    good = {c.pfn for c in fv.tail_contents if not c.bad}
    head_pfn = fv.head.pfn if fv.head is not None else None

    def own(t) -> bool:
        """A frame of the folio's own: one vmemmap page maps it, it is
        neither the head's nor a shared tail frame, and it holds this
        folio's tails."""
        return (t.pfn is not None and t.pages == 1 and t.pfn != head_pfn
                and t.pfn not in shared_frames and t.pfn in good)

    if not fv.head_ok or f.folio_order != f.order:
        add("head-page", f"PG_head, not a tail, order {f.order}",
            f"head_ok={fv.head_ok}, folio order {f.folio_order}")
    flags_nz = (page_flags_nid(model, f.flags), page_flags_zone(model, f.flags))
    if flags_nz != (f.nid, f.zone_idx) or (f.state == "free" and f.list_nid != f.nid):
        add("folio-node", f"node {f.nid} zone {f.zone_idx} (freelist of node {f.nid})",
            f"flags carry node {flags_nz[0]} zone {flags_nz[1]}"
            + (f", on freelist of node {f.list_nid}" if f.state == "free" else ""))

    if f.optimized != fv.remapped:
        add("flag-vs-mapping",
            "vmemmap remapped" if f.optimized else "vmemmap not remapped (no HPG_vmemmap_optimized)",
            f"HPG_vmemmap_optimized={'set' if f.optimized else 'clear'}, "
            f"{fv.distinct_frames} distinct frames for {fv.npages} vmemmap pages",
            cause="flag-not-remapped" if f.optimized else "remapped-not-flagged")

    head = fv.head
    if head is not None:
        if not head.writable or (f.optimized and head.level != 1):
            # Writable but a PMD on a folio never remapped: HVO splits the
            # PMD when it remaps, and it never did.
            level_only = never_remapped and head.writable and head.pfn not in shared_frames
            add("head-mapping", "writable" + (" pte" if f.optimized else ""),
                f"{'RW' if head.writable else 'RO'} {head.level_name} entry {head.entry:#x}",
                head.pfn,
                consequence=("none: the head's vmemmap page is writable, as it must be; HVO "
                             "splits its PMD only when it remaps the folio") if level_only
                else None if head.writable else
                ("the kernel writes the head struct page (refcount, flags, lru links): the "
                 "first write through this read-only mapping oopses"),
                cause="flag-not-remapped" if level_only else None, implied=level_only)
        if head.pfn in shared_frames:
            add("head-mapping", "a frame of its own",
                f"the shared tail frame of {shared_frames[head.pfn]}", head.pfn)
    if fv.head_frame is not None and fv.head_frame.bad:
        i, info, _ = fv.head_frame.first_bad
        add("head-frame", f"{model.pages_per_vmemmap_page - 1} tails after the head",
            f"{fv.head_frame.bad} bad, first struct page {i}: compound_info {info:#x}",
            fv.head_frame.pfn)

    if f.optimized:
        if model.form == "mask":
            slots = tails_by_zone.get((f.nid, f.zone_idx), ())
            slot = f.order - model.tail_min_order
            want = slots[slot] if 0 <= slot < len(slots) else 0
            want_name = f"vmemmap_tails[{slot}] of node {f.nid} {f.zone_name} (pfn {want:#x})"
        else:
            want = head.pfn if head is not None else 0
            want_name = f"the folio's head frame (pfn {want:#x})"
        absent = dict(fv.unreadable)
        for t in fv.tails:
            mine = own(t)
            # Follows from the flag: a frame of the folio's own on a folio
            # never remapped (a frame of another folio's is a cause of its own).
            follows = never_remapped and mine
            if want and t.pfn != want:
                where = ""
                if t.pfn is None:
                    where = " (not mapped)"
                elif t.pfn in shared_frames:
                    where = f" (the shared tail frame of {shared_frames[t.pfn]})"
                elif t.pfn in absent:
                    where = f" ({absent[t.pfn]})"
                elif mine:
                    where = " (its own)"
                add("tail-frame", want_name,
                    f"{t.pages} tail vmemmap page(s) on pfn "
                    f"{t.pfn if t.pfn is None else hex(t.pfn)}{where}", t.pfn,
                    consequence=_tail_consequence(model, "tail-frame", t.pfn, mine,
                                                  bool(t.writable), False),
                    cause="flag-not-remapped" if follows else None, implied=follows)
            if (t.writable and model.tails_readonly) or t.levels != ("pte",):
                add("tail-readonly", "read-only pte" if model.tails_readonly else
                    "pte (PAGE_KERNEL_RO, writable on riscv64)",
                    f"{t.writable} of {t.pages} writable, levels {','.join(t.levels)}", t.pfn,
                    consequence=_tail_consequence(
                        model, "tail-readonly", t.pfn, mine,
                        bool(t.writable) and model.tails_readonly, not want or t.pfn == want),
                    cause="flag-not-remapped" if follows else None, implied=follows)
    for c in fv.tail_contents:
        if model.form == "mask" and f.optimized:
            continue  # the shared frame is judged once, by check_shared_tails()
        if c.bad and c.pfn != (head.pfn if head else None):
            i, info, _ = c.first_bad
            # On an optimized folio a tail frame other than its head's is a
            # tail-frame finding: its struct pages naming another head is
            # what that PTE onto another folio's frame shows.
            follows = f.optimized and head is not None
            add("tail-contents", "tails naming this folio's head",
                f"frame pfn {c.pfn:#x}: {c.bad} bad, first struct page {i}: "
                f"compound_info {info:#x}", c.pfn,
                consequence=("the tail PTE onto this frame (tail-frame) makes this folio's "
                             "tail struct pages read another folio's") if follows else None,
                cause="tail-frame" if follows else None, implied=follows)
    return out


def folio_group_keyer(
    model: KernelModel, walker: PageTableWalker, zone_list: list, shared: frozenset
) -> Callable[..., Optional[tuple]]:
    """
    ``key(order, page, data)``: everything :func:`folio_vmemmap`, the
    checks and the scan's counters take from one folio except its address
    and the list it is on (the scan puts hstate, state and node in front),
    when its vmemmap is what HVO leaves (the head's vmemmap page
    mapped on its own, every tail vmemmap page on one other frame by
    identical PTEs in one table, or on the head's own frame in the pointer
    form): two folios of one key give the same record but for pfn, page and
    addresses, so they are judged and counted alike. None for any other
    folio (it is read in full). Costs one slice of the PTE table the walker
    holds and one C-level count of the head frame's tails, no memory read.
    """
    starts = [z.start_pfn for z in zone_list]
    ends = [z.end_pfn for z in zone_list]
    page_mask = model.page_size - 1
    mask_form = model.form == "mask"
    i_flags, i_info, i_private = model.off_flags >> 3, model.off_info >> 3, model.off_private >> 3
    stride = model.sizeof_page >> 3
    tails_from = i_info + stride
    off_order = model.off_order
    hpg = model.hpg_vmemmap_optimized
    vmemmap_start, sizeof_page = model.vmemmap_start, model.sizeof_page
    pte_run = walker.pte_run
    bisect_right = bisect.bisect_right
    per_order: Dict[int, tuple] = {}

    n_tails = len(range(tails_from, model.page_size >> 3, stride))

    def npages_of(order: int) -> tuple:
        tail_info = compound_info_mask(model, order) if mask_form else 0
        # Mask form: every tail's compound_info, to compare in C.
        all_tails = memoryview(array.array("Q", [tail_info] * n_tails)) if mask_form else None
        o = per_order[order] = (model.vmemmap_pages(order), tail_info, all_tails)
        return o

    # PTEs: present and (riscv64) a leaf.
    present, entry_pfn, writable = walker.pte_valid, walker.entry_pfn, walker.entry_writable
    # Mask form: the tails' PTE is one per shared frame, decoded once
    # (per write permission of the levels above).
    tail_leaves: Tuple[Dict[int, tuple], Dict[int, tuple]] = ({}, {})

    def from_run(order: int, page: int, data: bytes, ptes: Tuple[int, ...],
                 upper_rw: bool) -> Optional[tuple]:
        npages, tail_info, all_tails = per_order.get(order) or npages_of(order)
        e1 = ptes[1]
        if ptes.count(e1) != npages - 1:
            return None  # tails not uniform, or the head's PTE equals theirs
        e0 = ptes[0]
        if not present(e0):
            return None
        head_pfn, head_rw = entry_pfn(e0), upper_rw and writable(e0)
        if mask_form:
            leaves = tail_leaves[upper_rw]
            t = leaves.get(e1)
            if t is None:
                t = leaves[e1] = pte_leaf(walker, e1, upper_rw)
            tail_pfn, tail_rw = t
        else:
            tail_pfn, tail_rw = pte_leaf(walker, e1, upper_rw)
        if tail_pfn is None:
            return None
        words = memoryview(data).cast("Q")
        tails = words[tails_from::stride]
        if mask_form:
            tail_is = tail_pfn  # the shared frame, the same for many folios
            # All tails as expected: one C-level comparison, no int objects.
            good = n_tails if tails == all_tails else tails.tolist().count(tail_info)
        elif tail_pfn == head_pfn:
            tail_is = True  # its own head frame
            good = tails.tolist().count(page | 1)
        else:
            return None  # another frame: its contents name this folio's head
        pfn = (page - vmemmap_start) // sizeof_page
        i = bisect_right(starts, pfn) - 1
        return (i if i >= 0 and pfn < ends[i] else -1, words[i_flags],
                words[i_info] & 1, words[i_private] >> hpg & 1, data[off_order],
                head_rw, tail_rw, tail_is, head_pfn in shared, good)

    def key(order: int, page: int, data: bytes) -> Optional[tuple]:
        if page & page_mask:
            return None  # the head is not struct page 0 of its vmemmap page
        npages = (per_order.get(order) or npages_of(order))[0]
        if npages < 3:
            return None  # two vmemmap pages on two frames are not remapped
        run = pte_run(page, npages)
        if run is None:
            return None
        return from_run(order, page, data, run[0], run[2])

    key.from_run = from_run  # type: ignore[attr-defined]  # _prescan: the PTEs held
    return key


def folio_key(model: KernelModel, fv: FolioVmemmap, zone_list: Sequence[Zone],
              shared: frozenset) -> Optional[tuple]:
    """
    The grouping key of a folio's record: the very tuple
    :func:`folio_group_keyer` makes from the raw bytes and PTEs (the scan
    puts hstate, list and node in front), None where the keyer would give
    none. It is everything :func:`check_folio` and the scan's counters read
    of a folio but its pfn and addresses: two folios of one key are judged
    and counted alike, which is what lets a scan count a folio like one
    already found clean instead of reading it. Kept beside check_folio so
    that a field the checks start reading joins the key; the tests require
    ``folio_group_keyer(raw) == folio_key(record)`` on every folio of real
    dumps that the raw keyer keys.
    """
    f = fv.folio
    npages = fv.npages
    if (f.page & (model.page_size - 1) or not 3 <= npages <= 512 or fv.unknown is not None
            or fv.head is None or fv.head.level != 1 or len(fv.tails) != 1
            or fv.head_frame is None):
        return None
    t = fv.tails[0]
    if t.pfn is None or t.pages != npages - 1 or t.levels != ("pte",) \
            or t.writable not in (0, t.pages):
        return None
    if model.form == "mask":
        tail_is = t.pfn
    elif t.pfn == fv.head.pfn:
        tail_is = True
    else:
        return None
    starts = [z.start_pfn for z in zone_list]
    i = bisect.bisect_right(starts, f.pfn) - 1
    zone_i = i if i >= 0 and f.pfn < zone_list[i].end_pfn else -1
    return (zone_i, f.flags, f.info & 1, int(f.optimized), f.folio_order,
            fv.head.writable, bool(t.writable), tail_is, fv.head.pfn in shared,
            fv.head_frame.good_tails)


def check_shared_tails(model: KernelModel, tails: Sequence[SharedTail]) -> List[Finding]:
    """Mask form: every needed slot filled, every shared frame's struct pages
    valid tails of its zone and order. (Which folios map a frame is judged
    per folio: tail-frame and flag-vs-mapping.)"""
    out = []
    for t in tails:
        subject = f"vmemmap_tails[{t.slot}] of node {t.nid} {t.zone_name} (order {t.order})"
        if t.pfn is None and t.page:
            out.append(Finding("tails-slot", subject, "a struct page of the vmemmap",
                               f"{t.page:#x}, which is not one", frame_pfn=None,
                               consequence=_consequence(model, "shared-frame")))
            continue
        if t.pfn is None:
            out.append(Finding("tails-slot", subject, "a shared tail frame",
                               f"an empty slot, needed by {t.folios_expected} optimized folios"))
            continue
        subject = f"frame pfn {t.pfn:#x}, " + subject
        if t.unreadable is not None and t.unreadable.startswith("not in the machine"):
            # A frame that does not exist is a wrong slot, not missing memory.
            out.append(Finding(
                "shared-frame", subject, "a frame of the machine", t.unreadable,
                frame_pfn=t.pfn, consequence=_consequence(model, "shared-frame")))
        if t.contents is not None and t.contents.bad:
            i, info, flags = t.contents.first_bad
            out.append(Finding(
                "shared-frame", subject,
                f"{model.pages_per_vmemmap_page} tails of order {t.order} on node {t.nid} "
                f"zone {t.zone_idx}",
                f"{t.contents.bad} bad, first struct page {i}: compound_info {info:#x}, "
                f"flags node {page_flags_nid(model, flags)} zone {page_flags_zone(model, flags)}",
                frame_pfn=t.pfn, consequence=_consequence(model, "shared-frame")))
    return out


def count_folio(found: Dict[Tuple[str, int], List[int]], fv: FolioVmemmap, n: int = 1) -> None:
    """Add a folio (``n`` folios like it) to (hstate, node) -> [folios, free]
    for check_hstate_counts()."""
    entry = found.setdefault((fv.folio.hstate, fv.folio.nid), [0, 0])
    entry[0] += n
    if fv.folio.state == "free":
        entry[1] += n


def check_hstate_orders(hstates: Sequence[Hstate]) -> List[Finding]:
    """An hstate whose order is not what its name says (or none a huge page
    can have) is corrupt; its folios are not walked (their size is unknown)."""
    out = []
    for h in hstates:
        if not h.order_ok:
            want = (f"order {h.name_order} (its name)" if h.name_order is not None
                    else "an order of 1..22")
            out.append(Finding("hstate-order", f"hstate {h.name}", want, f"order {h.order}; "
                               "its folios were not checked",
                               consequence="the kernel sizes every folio of this hstate by it"))
    return out


def check_hstate_lists(hstates: Sequence[Hstate], breaks: Sequence[ListBreak]) -> List[Finding]:
    """
    A finding per corrupt hstate list: where the walk stopped, why, and how
    many folios the kernel's counters say lie beyond that point (the walk
    never trusts those counters to end).
    """
    by_name = {h.name: h for h in hstates}
    out = []
    for b in breaks:
        h = by_name.get(b.hstate)
        beyond = ""
        if h is not None:
            if b.list_nid >= 0:
                listed = h.per_node.get(b.list_nid, (0, 0, 0))[1]
                counter = f"free_huge_pages_node[{b.list_nid}]"
            else:
                listed = h.nr_huge_pages - h.free_huge_pages
                counter = "nr_huge_pages - free_huge_pages"
            beyond = (f"; {b.found} folio(s) read before it, the counters ({counter} = "
                      f"{listed}) say {listed - b.found} more lie beyond")
        where = ("the list head's next" if b.at_pfn is None
                 else f"the lru.next of folio pfn {b.at_pfn:#x}")
        out.append(Finding(
            "hstate-list", f"hstate {b.hstate} {b.list_name}",
            "a list that leads back to its head",
            f"{'a loop: ' if b.loop else ''}{where} {b.reason}{beyond}",
            folio_pfn=None,
            consequence=("the kernel walks these lists under hugetlb_lock to allocate, free "
                         "and count huge pages: it will loop or fault there")))
    return out


def check_hstate_counts(
    hstates: Sequence[Hstate], found: Dict[Tuple[str, int], List[int]], incomplete=frozenset()
) -> List[Finding]:
    """The hstates' own counters per node (``nr_huge_pages_node``,
    ``free_huge_pages_node``) against the folios a scan counted on their
    lists of that node."""
    out = []
    for h in hstates:
        if h.name in incomplete:
            continue
        for nid, (nr, free, _surplus) in sorted(h.per_node.items()):
            total, nfree = found.get((h.name, nid), (0, 0))
            if (total, nfree) != (nr, free):
                out.append(Finding(
                    "hstate-count", f"hstate {h.name} node {nid}",
                    f"nr_huge_pages_node {nr}, free_huge_pages_node {free}",
                    f"{total} folios on its lists, {nfree} free"))
    return out


def folio_check_context(
    model: KernelModel, zones: Sequence[Zone]
) -> Tuple[Dict[Tuple[int, int], Tuple[int, ...]], Dict[int, str]]:
    """
    What :func:`check_folio` needs, from the zones alone (so it is known
    before the scan): each zone's vmemmap_tails[] as frame pfns, and a name
    for every filled slot's frame ("node 1 Normal order 9").
    """
    tails_by_zone = {
        # A slot that is not a struct page (corrupt) names no frame here;
        # check_shared_tails() reports it.
        (z.nid, z.idx): tuple((model.struct_page_pfn(p) or 0) if p else 0 for p in z.tails)
        for z in zones
    }
    names: Dict[int, str] = {}
    for z in zones:
        where = f"node {z.nid}" if model.tails_owner == "pglist_data" else f"node {z.nid} {z.name}"
        for slot, pfn in enumerate(tails_by_zone[(z.nid, z.idx)]):
            if pfn:
                names.setdefault(pfn, f"{where} order {slot + model.tail_min_order}")
    return tails_by_zone, names


def _range_where(r: RemappedRange) -> str:
    frame = (f"the shared tail frame of {r.frame_name}" if r.frame_name
             else f"its head's own frame {r.frame:#x}" if r.own_frame
             else f"frame {r.frame:#x}")
    return f"{r.vmemmap_pages - 1} vmemmap pages after its head's remapped onto {frame}"


def check_unlisted(model: KernelModel, sweep: SweepResult) -> List[Finding]:
    """
    Remapped vmemmap ranges that no listed folio accounts for
    (:mod:`vmemspect.sweep`): a hugetlb folio on no hstate list
    (``unlisted-folio``: lost; a folio isolated for migration is off the
    lists by design and is no finding), or no hugetlb folio at all
    (``unlisted-remap``: freed without its vmemmap restored, or a corrupt
    mapping). Hugetlb folios are judged only when every list was walked
    whole: one past a broken list is on a list the walk could not finish.
    """
    out = []
    for r in sweep.unlisted:
        subject = f"pfn {r.pfn:#x} (vmemmap {r.vmemmap:#x})"
        if r.kind in ("isolated", "device", "unknown", "freeing"):
            continue  # off the lists by design; not HVO's; missing memory
        if r.kind == "off-lists":
            if sweep.lists_incomplete:
                continue
            out.append(Finding(
                "unlisted-folio", subject,
                "a hugetlb folio on an hstate list, since its vmemmap is remapped",
                f"{r.what}; {_range_where(r)}", folio_pfn=r.pfn, frame_pfn=r.frame,
                consequence=("the hstate's allocator and pool shrinking go by the lists and never "
                             "reach it: its memory stays out of use, its vmemmap remapped, until "
                             "something that walks pfns (memory offline, a contiguous "
                             "allocation) meets it and acts on its state")))
            continue
        if model.tails_readonly and r.writable < r.vmemmap_pages - 1:
            then = ("its tail struct pages are mapped read-only: the kernel faults on the first "
                    "write to any of them (the page allocator writes a page's struct page when "
                    "it hands the page out)")
        elif r.frame_name:
            then = ("its tail struct pages are the shared tail frame of " + r.frame_name
                    + ": a write to any of them changes every folio that maps it")
        else:
            then = ("its tail struct pages all read one frame: a write to one changes them all, "
                    "and each reads as the frame's struct pages, not its own")
        if r.optimized:
            then += "; its head still carries HPG_vmemmap_optimized"
        out.append(Finding(
            "unlisted-remap", subject,
            "vmemmap remapped only under a hugetlb folio",
            f"{r.what}; {_range_where(r)}", folio_pfn=r.pfn, frame_pfn=r.frame,
            consequence=then))
    return out


def check_memmap(result: Optional[MemmapResult], lists_incomplete: bool) -> List[Finding]:
    """
    The hugetlb-typed struct pages outside the listed folios that the
    memmap read found (:mod:`vmemspect.memmap`, ``verify --memmap``): one
    that heads no folio (``stale-hugetlb-type``: the kernel left the type
    on a page it no longer uses as a folio head; its pfn walkers take it
    for one), or the head of a hugetlb folio on no hstate list
    (``unlisted-folio``, its vmemmap not remapped; judged only when every
    list was walked whole). Isolated and freeing folios are no finding.
    """
    out: List[Finding] = []
    for t in result.typed if result is not None else ():
        subject = f"pfn {t.pfn:#x} (struct page {t.page:#x})"
        if t.kind == "stale":
            then = ("the kernel reads it as a hugetlb folio (PageHuge(): page_folio() is the "
                    "page itself and folio_test_hugetlb() is true; /proc/kpageflags says KPF_HUGE "
                    "for its pfn), so code that walks pfns meets a hugetlb folio that does not "
                    "exist (6.12's pfn_range_valid_contig() refuses every range holding one to "
                    "a gigantic page)")
            if t.tail:
                then = ("a tail page: page_folio() leads to its head, so the type is read only "
                        "where the kernel reads this struct page as a folio itself")
            if t.optimized:
                then += "; it carries HPG_vmemmap_optimized too"
            out.append(Finding("stale-hugetlb-type", subject,
                               "the hugetlb page type only on a hugetlb folio's head",
                               t.what, page_pfn=t.pfn, consequence=then))
        elif t.kind == "off-lists" and not lists_incomplete:
            out.append(Finding(
                "unlisted-folio", subject, "a hugetlb folio on an hstate list", t.what,
                folio_pfn=t.pfn,
                consequence=("the hstate's allocator and pool shrinking go by the lists and never "
                             "reach it: its memory stays out of use until something that walks "
                             "pfns meets it and acts on its state")))
    return out


def check_kernel_counts(model: KernelModel, savings,
                        unlisted: Sequence[RemappedRange] = ()) -> List[Finding]:
    """
    The kernel's own count of optimized folios against the folios flagged
    optimized (kernels with ``hugetlb_optimize_vmemmap_key``, 5.18-7.0).

    HVO increments the key for every folio it optimizes and decrements it
    for every folio whose vmemmap it restores, which it does for every
    flagged folio it frees or demotes. More flagged folios than the count
    means that freeing them will take the key below zero.

    :param savings: a :class:`~vmemspect.report.Savings` (duck-typed: the
        checks layer does not import the report).
    """
    out = _check_kernel_memmap(savings, unlisted)
    key = savings.kernel_optimized_folios
    flagged = savings.flagged_folios + savings.unlisted_flagged
    if key is None or key == flagged:
        return out
    extra = flagged - key
    if extra > 0:
        then = (f"freeing the flagged folios decrements the key {savings.flagged_folios} "
                f"times, {extra} more than its count: it underflows (WARNING in "
                "static_key_dec_not_one)")
    else:
        then = (f"the key counts {-extra} optimized folios that carry no flag: their "
                "vmemmap will never be restored, nor the key decremented")
    # The key counts exactly the remapped vmemmap (of listed folios and of
    # ranges on no list): HVO counted what it did, and the flags are what
    # disagree (flag-vs-mapping).
    follows = key == savings.remapped_folios + len(unlisted)
    found = (f"{savings.flagged_folios} flagged folios ({savings.remapped_folios} with remapped "
             f"vmemmap)")
    if savings.unlisted_flagged:
        found += (f" on the lists and {savings.unlisted_flagged} flagged remapped range(s) "
                  f"on none ({_pfns(r.pfn for r in unlisted if r.optimized)})")
    return out + [Finding(
        "kernel-count", "hugetlb_optimize_vmemmap_key",
        f"its count ({key}) = folios with HPG_vmemmap_optimized",
        found + f": {abs(extra)} {'more' if extra > 0 else 'fewer'} than it counts",
        consequence=then,
        cause=("flag-not-remapped" if extra > 0 else "remapped-not-flagged") if follows else None,
        implied=follows, delta=extra)]


def _pfns(pfns, most: int = 8) -> str:
    pfns = list(pfns)
    text = ", ".join(f"pfn {p:#x}" for p in pfns[:most])
    return text + (f" and {len(pfns) - most} more" if len(pfns) > most else "")


def _check_kernel_memmap(savings, unlisted: Sequence[RemappedRange]) -> List[Finding]:
    """The kernel's memmap counters (6.10+) against the vmemmap pages the
    page tables show freed in the whole vmemmap."""
    kernel = savings.kernel_saved_pages
    if kernel is None or kernel == savings.machine_saved_pages:
        return []
    diff = kernel - savings.machine_saved_pages
    found = (f"{savings.machine_saved_pages} pages freed by the page tables: "
             f"{savings.saved_pages} by {savings.remapped_folios} listed folio(s)")
    if unlisted:
        found += (f", {savings.unlisted_pages} by {len(unlisted)} remapped range(s) on no list "
                  f"({_pfns(r.pfn for r in unlisted)})")
    if diff > 0:
        then = (f"the kernel believes {diff} vmemmap pages more freed than the page tables "
                "show: memory it accounts as free is still in use as vmemmap")
    else:
        then = (f"the page tables show {-diff} vmemmap pages more freed than the kernel counts: "
                "a mapping the kernel did not make, or counters it did not update")
    return [Finding(
        "kernel-memmap", "nr_memmap_boot_pages + nr_memmap_pages",
        f"the vmemmap pages HVO freed by the kernel's count ({kernel}) = those the page "
        "tables show freed", found + f": {abs(diff)} {'fewer' if diff > 0 else 'more'}",
        consequence=then)]
