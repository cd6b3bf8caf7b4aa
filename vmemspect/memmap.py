"""
Whole-memmap read
-----------------

The sweep (:mod:`vmemspect.sweep`) finds every vmemmap range HVO left
remapped; the hstate lists hold every hugetlb folio the kernel keeps. A
struct page that *says* it heads a hugetlb folio needs neither: its vmemmap
can be the kernel's ordinary mapping, and no list holds it. Only a read of
the memmap itself finds it. This module does that read (``verify
--memmap``): every struct page of every present memory section, but those
of the listed folios and of the remapped ranges the sweep already named,
and names each struct page whose page type says hugetlb.

Seen on Debian's 6.12.117 (docs/known-bugs.md, bug 2): a pool shrink
restores the vmemmap of each folio it frees by copying the folio's first
vmemmap page over the others (the pointer form), so the copies of the head
struct page at every 64th page (7 per 2 MiB folio) keep its hugetlb page
type after the folio went back to the page allocator. The kernel's pfn
walkers (``PageHuge()`` in compaction and memory offline) then take a free
page for a hugetlb folio.

Cost: one read per vmemmap page outside the listed folios, 64 struct pages
tested in C per read (the page type's high byte, 6.12+). Opt-in: it grows
with the machine's memory, not with its huge pages.

Kernels: where the kernel marks a hugetlb folio in the head struct page's
own page type (6.9+: ``PGTY_hugetlb`` from 6.12, ``PG_hugetlb`` in
``page_type`` on 6.9-6.11). Before 6.9 the mark is in the first tail
(``PG_hugetlb`` flag 6.7-6.8, ``compound_dtor`` before), which a copied
head does not carry alone: the read is not done, and the result says why.
"""

import dataclasses
import struct
from typing import Iterator, List, Optional, Tuple

from drgn import FaultError, Program
from drgn.helpers.linux.mmzone import for_each_present_section

from .kernel import KernelModel, decode_compound_info, kernel_model
from .sweep import SweepResult, VmemmapSweep

__all__ = ("MemmapResult", "TypedPage", "read_memmap")

_U64 = struct.Struct("<Q")

#: Vmemmap pages read at once where the dump holds them all (one PTE table's).
_CHUNK = 512


@dataclasses.dataclass(frozen=True)
class TypedPage:
    """A struct page outside every listed folio whose page type says
    hugetlb, and what it is."""

    pfn: int
    #: Address of the struct page.
    page: int
    #: "stale": heads no compound page (its next struct page is no tail of
    #: it): a copy or a leftover, not a folio; "off-lists": the head of a
    #: hugetlb folio on no hstate list, its vmemmap not remapped;
    #: "isolated": such a head in use with HPG_migratable clear (off the
    #: lists by design, for a moment); "freeing": queued on
    #: ``hpage_freelist`` for the deferred free.
    kind: str
    #: What the struct page says, in words.
    what: str
    flags: int
    private: int
    refcount: int
    #: The raw page type word (``page_type``).
    page_type: int
    #: HPG_vmemmap_optimized in ->private.
    optimized: bool
    #: Bit 0 of compound_info/compound_head: it is a tail page (page_folio()
    #: then leads elsewhere; else it is its own folio to the kernel).
    tail: bool = False


@dataclasses.dataclass
class MemmapResult:
    """What :func:`read_memmap` found."""

    #: None if the read was done, else why not (the kernel's types).
    not_done: Optional[str]
    #: Vmemmap pages read, and those the dump does not hold.
    pages_read: int = 0
    pages_missing: int = 0
    #: Vmemmap pages not read: a listed folio's, or a remapped range's.
    pages_skipped: int = 0
    typed: List[TypedPage] = dataclasses.field(default_factory=list)


def _type_finder(model: KernelModel):
    """``finder(data) -> offsets`` of the struct pages in ``data`` (whole
    struct pages) whose page type says hugetlb, or a string saying why the
    kernel's types do not allow the test on one struct page."""
    t = model.hugetlb_test
    size = model.sizeof_page
    if t is None:
        return "the kernel's types do not say how to tell a hugetlb folio"
    if t[0] == "page_type":
        # 6.12+: the high byte of page_type is PGTY_hugetlb; a mapcount is
        # never that negative. One slice and find() per read, in C.
        top, want = t[1] + 3, bytes([t[2]])

        def finder(data: bytes) -> Iterator[int]:
            column = data[top::size]
            i = column.find(want)
            while i >= 0:
                yield i * size
                i = column.find(want, i + 1)
        return finder
    if t[0] == "page_type_base":
        off, mask, base = t[1], t[2], t[3]

        def finder(data: bytes) -> Iterator[int]:
            words = memoryview(data).cast("I")[off // 4::size // 4]
            for i, w in enumerate(words):
                if w & mask == base:
                    yield i * size
        return finder
    return ("before 6.9 the kernel marks a hugetlb folio in its first tail page, not in the "
            "head's page type: one struct page does not say it")


def _present_vmemmap(prog: Program, model: KernelModel) -> List[Tuple[int, int]]:
    """Vmemmap page indices ``[lo, hi)`` of the present memory sections,
    neighbouring sections merged."""
    shift = model.section_size_bits - model.page_shift
    per = model.pages_per_vmemmap_page
    out: List[Tuple[int, int]] = []
    for nr, _ in for_each_present_section(prog):
        lo, hi = (nr << shift) // per, -(-((nr + 1) << shift) // per)
        if out and out[-1][1] >= lo:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _skipped(sweep: VmemmapSweep, swept: SweepResult, lo: int, hi: int) -> bytearray:
    """A byte per vmemmap page of ``[lo, hi)``: 1 where a listed folio's
    vmemmap or an unlisted remapped range holds it."""
    skip = bytearray(hi - lo)

    def mark(a: int, b: int) -> None:  # vmemmap pages [a, b), clamped
        a, b = max(a, lo), min(b, hi)
        if a < b:
            skip[a - lo:b - lo] = b"\1" * (b - a)

    for n, marks in sweep.marks.values():
        end = min(len(marks), -(-hi // n))
        # Blocks of slots: an empty or a full block costs one count() in C.
        for b0 in range(lo // n, end, 512):
            b1 = min(b0 + 512, end)
            free = marks[b0:b1].count(0)
            if free == b1 - b0:
                continue
            if not free:
                mark(b0 * n, b1 * n)
                continue
            for slot in range(b0, b1):
                if marks[slot]:
                    mark(slot * n, slot * n + n)
    page_shift = sweep.model.page_shift
    for r in swept.unlisted:
        first = (r.vmemmap - sweep.vstart) >> page_shift
        mark(first, first + r.vmemmap_pages)
    return skip


def _runs(skip: bytearray) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of each run of zero bytes, at most _CHUNK long."""
    i, n = 0, len(skip)
    while i < n:
        i = skip.find(0, i)
        if i < 0:
            return
        j = skip.find(1, i)
        j = n if j < 0 else j
        for a in range(i, j, _CHUNK):
            yield a, min(a + _CHUNK, j)
        i = j


def read_memmap(prog: Program, sweep: VmemmapSweep, swept: SweepResult) -> MemmapResult:
    """
    Read every struct page of the present memory sections outside the
    listed folios (``sweep``'s marks) and the remapped ranges the sweep
    named (``swept``), and return those whose page type says hugetlb.

    A listed folio of an order whose struct pages fill less than a vmemmap
    page has its whole vmemmap page left out (the sweep marks pages).

    :param sweep: the scan's :class:`~vmemspect.sweep.VmemmapSweep`, after
        :meth:`~vmemspect.sweep.VmemmapSweep.finish`.
    """
    model = kernel_model(prog)
    finder = _type_finder(model)
    if isinstance(finder, str):
        return MemmapResult(not_done=finder)
    result = MemmapResult(not_done=None)
    ps, vstart, size = model.page_size, model.vmemmap_start, model.sizeof_page
    for lo, hi in _present_vmemmap(prog, model):
        skip = _skipped(sweep, swept, lo, hi)
        result.pages_skipped += skip.count(1)
        for a, b in _runs(skip):
            for base, data in _read(prog, vstart + (lo + a) * ps, b - a, ps, result):
                for off in finder(data):
                    page = base + off
                    result.typed.append(_describe(prog, model, sweep, page,
                                                  data[off:off + size]))
    result.typed.sort(key=lambda t: t.pfn)
    return result


def _read(prog: Program, address: int, pages: int, ps: int,
          result: MemmapResult) -> Iterator[Tuple[int, bytes]]:
    """``(address, bytes)`` of the vmemmap pages ``[address, + pages)`` the
    dump holds: all at once, else page by page (missing ones counted)."""
    try:
        data = prog.read(address, pages * ps)
    except FaultError:
        pass
    else:
        result.pages_read += pages
        yield address, data
        return
    for k in range(pages):
        try:
            data = prog.read(address + k * ps, ps)
        except FaultError:
            result.pages_missing += 1
            continue
        result.pages_read += 1
        yield address + k * ps, data


def _describe(prog: Program, model: KernelModel, sweep: VmemmapSweep, page: int,
              data: bytes) -> TypedPage:
    """What a hugetlb-typed struct page outside the listed folios is."""
    flags = _U64.unpack_from(data, model.off_flags)[0]
    info = _U64.unpack_from(data, model.off_info)[0]
    private = _U64.unpack_from(data, model.off_private)[0]
    mapping = _U64.unpack_from(data, model.off_mapping)[0]
    refcount = struct.unpack_from("<i", data, model.off_refcount)[0]
    page_type = struct.unpack_from("<I", data, model.hugetlb_test[1])[0]
    optimized = bool(private >> model.hpg_vmemmap_optimized & 1)
    pfn = model.page_pfn(page)
    head_flag = bool(flags >> model.pg_head & 1)
    words = (f"flags {flags:#x}, page_type {page_type:#x}, refcount {refcount}, "
             f"private {private:#x}")
    common = dict(pfn=pfn, page=page, flags=flags, private=private, refcount=refcount,
                  page_type=page_type, optimized=optimized, tail=bool(info & 1))
    tail_of_it = False
    if head_flag and not info & 1:
        try:
            nxt = _U64.unpack_from(prog.read(page + model.sizeof_page + model.off_info, 8))[0]
            tail_of_it = decode_compound_info(model, page + model.sizeof_page, nxt).head == page
        except FaultError:
            pass
    if not tail_of_it:
        why = ("PG_head clear" if not head_flag else "a tail itself" if info & 1
               else "its next struct page is no tail of it")
        return TypedPage(kind="stale", what=f"hugetlb page type on a struct page that heads no "
                         f"folio ({why}; {words})", **common)
    migratable = bool(private >> model.hpg_migratable & 1)
    if refcount == 0 and (page in sweep.freeing_pages() or mapping in sweep.freeing_nodes()):
        return TypedPage(kind="freeing", what=f"a hugetlb folio the kernel is freeing: queued "
                         f"on hpage_freelist for free_hpage_work() ({words})", **common)
    if refcount > 0 and not migratable:
        return TypedPage(kind="isolated", what=f"a hugetlb folio isolated for migration (in "
                         f"use, HPG_migratable clear; {words})", **common)
    state = "free (refcount 0)" if refcount == 0 else "in use"
    return TypedPage(kind="off-lists", what=f"a hugetlb folio, {state}, on no hstate list, its "
                     f"vmemmap not remapped ({words})", **common)

