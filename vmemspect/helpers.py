"""
Helpers for drgn's interactive mode
-----------------------------------

``from vmemspect.helpers import *`` in a drgn session gives these. Each
takes the program first and defaults to drgn's default program, like drgn's
own helpers. Two kinds, and the names say which:

- helpers over kernel objects take and return :class:`drgn.Object`, as
  drgn's do: :func:`for_each_hugetlb_folio` takes a ``struct hstate *``
  (from drgn's ``for_each_hstate()``) and yields ``struct folio *``
  and :func:`for_each_hugetlb_typed_page` yields ``struct page *``;
  :func:`folio_hvo`, :func:`hvo_decode` and :func:`vmemmap_leaf` take a
  ``struct folio *``/``struct page *`` (or an address);
- helpers named ``*_records`` and the ``hvo_*`` views return vmemspect's
  records (dataclasses the command line renders): what vmemspect found,
  which no kernel object holds::

    >>> from drgn.helpers.linux.hugetlb import for_each_hstate
    >>> h = next(for_each_hstate())
    >>> f = next(for_each_hugetlb_folio(h))
    >>> f
    *(struct folio *)0xfffff2c5c4b50000 = {...}
    >>> folio_hvo(f).tails
    (TailFrame(pfn=5026, pages=7, writable=0, levels=('pte',)),)
    >>> vmemmap_leaf(f)
    Leaf(va=..., level=1, entry=..., pfn=..., writable=True, table=...)
    >>> next(hugetlb_folio_records()).optimized
    True
    >>> hvo_verify()
    []

A corrupt hstate list raises :class:`drgn.helpers.ValidationError` and
memory the dump lacks :class:`drgn.FaultError` (vmemspect's
:class:`~vmemspect.errors.MissingMemory`), so ``except`` clauses written for
drgn's helpers hold.
"""

from typing import Iterator, List, Optional, Union

from drgn import Object, Program
from drgn.helpers.common.prog import takes_program_or_default

from .checks import Finding
from .hugetlb import HugetlbFolio, for_each_hstate_record, for_each_hugetlb_folio_record
from .hvo import FolioVmemmap, PageDecode, SharedTail, decode_page, folio_vmemmap, scan_folios
from .hvo import shared_tails as _shared_tails
from .kernel import KernelModel, decode_compound_info, kernel_model
from .pagetable import Leaf, page_table_walker
from .report import Report, build_report

__all__ = (
    "decode_compound_info",
    "folio_hvo",
    "for_each_hugetlb_folio",
    "for_each_hugetlb_typed_page",
    "hugetlb_folio_records",
    "hvo_decode",
    "hvo_kernel",
    "hvo_report",
    "hvo_shared_tails",
    "hvo_verify",
    "vmemmap_leaf",
)


@takes_program_or_default
def hvo_kernel(prog: Program) -> KernelModel:
    """
    The kernel model: release, encoding form and the types that decided it,
    sizeof(struct page), where ``vmemmap_tails[]`` lives, paging levels.
    Detected from the types once per program (never from the version).
    """
    return kernel_model(prog)


def for_each_hugetlb_folio(hstate: Object) -> Iterator[Object]:
    """
    Iterate over every hugetlb folio of an hstate: its free lists, node by
    node, then its active list (``hugepage_activelist``).

    Same on every kernel since 5.16: the lists link folios (6.6+) or head
    pages (before, e.g. 6.1) through ``->lru`` at the same offset; either
    way this yields ``struct folio *``.

    :param hstate: ``struct hstate *`` (drgn's ``for_each_hstate()``).
    :return: Iterator of ``struct folio *`` objects.
    :raises drgn.helpers.ValidationError: at a corrupt list (a loop, a link
        to unmapped memory, an entry whose lru.prev does not point back),
        after the folios before it.
    """
    prog = hstate.prog_
    address = hstate.value_()
    for h in for_each_hstate_record(prog):
        if h.address == address:
            for folio in for_each_hugetlb_folio_record(prog, h):
                yield folio.object(prog)
            return
    raise ValueError(f"{address:#x} is not a struct hstate of hstates[]")


@takes_program_or_default
def hugetlb_folio_records(prog: Program, hstate: Optional[str] = None) -> Iterator[HugetlbFolio]:
    """
    Every hugetlb folio on the hstates' free and active lists, as records
    (pfn, struct page address, hstate, node, zone, free/active, HVO flag);
    ``.object(prog)`` of one is its ``struct folio *``.

    :param hstate: only the hstate of this name ("hugepages-2048kB").
    :raises drgn.helpers.ValidationError: at a corrupt list (a loop, a link
        to unmapped memory, an entry whose lru.prev does not point back),
        after the folios before it; ``hvo_verify()`` reports it instead.
    """
    for h in for_each_hstate_record(prog):
        if hstate is None or h.name == hstate:
            yield from for_each_hugetlb_folio_record(prog, h)


def folio_hvo(folio: Union[Object, HugetlbFolio], prog: Optional[Program] = None) -> FolioVmemmap:
    """
    How a folio's vmemmap is mapped: head frame with its leaf (level, RW,
    raw entry), tail frames with counts, fake heads (pointer form), contents.

    :param folio: ``struct folio *`` or ``struct page *`` of a hugetlb
        folio's head (or a record of :func:`hugetlb_folio_records`).
    :raises ValueError: if it heads no folio on the hstate lists.
    """
    if isinstance(folio, Object):
        prog = folio.prog_
        page = folio.value_()
        for record in hugetlb_folio_records(prog):
            if record.page == page:
                folio = record
                break
        else:
            raise ValueError(f"{page:#x} heads no folio on the hstate lists")
    elif prog is None:
        from drgn import get_default_prog

        prog = get_default_prog()
    return folio_vmemmap(prog, folio)


@takes_program_or_default
def vmemmap_leaf(prog: Program, address: int) -> Leaf:
    """
    Walk ``init_mm``'s page tables for the 4 KiB page holding ``address``
    (a struct page address or any kernel virtual address): leaf level
    (pte/pmd/pud), raw entry, frame and effective RW.
    """
    if isinstance(address, Object):
        address = address.value_()
    model = kernel_model(prog)
    return page_table_walker(prog).lookup(address & ~(model.page_size - 1))


@takes_program_or_default
def hvo_decode(prog: Program, page) -> PageDecode:
    """
    Decode one struct page's ``compound_info`` (7.1+) or ``compound_head``
    (before): form, tail bit, head, order the mask implies, fake head, and
    drgn's own ``compound_head()`` beside it.

    :param page: ``struct page *`` or its address.
    """
    if isinstance(page, Object):
        page = page.value_()
    return decode_page(prog, page)


@takes_program_or_default
def hvo_shared_tails(prog: Program) -> List[SharedTail]:
    """
    ``vmemmap_tails[]`` slots in use (7.1+), each with the folios whose tail
    PTEs point at it (counted from the page tables) and its contents.
    Empty before 7.1 (no shared tails).
    """
    return _shared_tails(prog, list(scan_folios(prog)))


@takes_program_or_default
def hvo_report(prog: Program) -> Report:
    """The whole scan: hstates, zones, folios, tails, savings, findings."""
    return build_report(prog)


@takes_program_or_default
def hvo_verify(prog: Program, memmap: bool = False) -> List[Finding]:
    """Every HVO invariant of the kernel's form; an empty list when all
    hold. ``memmap``: also read the whole memmap (``verify --memmap``)."""
    return build_report(prog, keep_folios=False, memmap=memmap).findings


@takes_program_or_default
def for_each_hugetlb_typed_page(prog: Program) -> Iterator[Object]:
    """
    Yield a ``struct page *`` for every struct page outside the listed
    hugetlb folios whose page type says hugetlb (``verify --memmap``'s read,
    :mod:`vmemspect.memmap`): stale types, and heads of folios on no list.
    Kernels 6.9+ (the type in the head's own ``page_type``); nothing is
    yielded before, where one struct page does not say it.
    """
    result = build_report(prog, keep_folios=False, memmap=True).memmap
    for t in result.typed if result is not None else ():
        yield Object(prog, "struct page *", t.page)
