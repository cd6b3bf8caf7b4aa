"""
Fast scan
---------

What ``metrics --fast`` reads instead of every folio: the kernel's own
counters (hstates per node, the memmap counters, the count of
``hugetlb_optimize_vmemmap_key``), the vmemmap's page tables (every
read-only PTE under the vmemmap is a tail vmemmap page HVO remapped: their
number is the vmemmap HVO freed, counted without walking a single list), the
shared tail frames, and a sample: the first folios of each hstate's lists,
checked in full. Its cost grows with the vmemmap's page tables (one 4 KiB
table per 128 MiB of memory), not with the folios.
"""

import dataclasses
from typing import List, Optional

from drgn import Program
from drgn.helpers.linux.mmzone import for_each_present_section

from .errors import MissingMemory
from .checks import Finding, folio_check_context
from .hugetlb import Hstate, hvo_enabled, zones
from .hvo import vmemmap_savings
from .kernel import KernelModel, kernel_model
from .pagetable import page_table_walker
from .scan import Sample, run_scan

__all__ = ("FastScan", "fast_scan", "readonly_vmemmap_pages")

#: Folios checked in full per hstate by default.
DEFAULT_SAMPLE = 64


@dataclasses.dataclass
class FastScan:
    """What :func:`fast_scan` found."""

    model: KernelModel
    hvo_enabled: Optional[bool]
    hstates: List[Hstate]
    #: Read-only PTEs under the vmemmap: tail vmemmap pages HVO remapped.
    readonly_pages: int
    #: PTE tables under the vmemmap that were read, and 2 MiB regions of
    #: vmemmap that the dump lacks (their PTEs are not counted).
    tables: int
    missing_regions: int
    #: Filled vmemmap_tails[] slots (mask form).
    shared_frames: int
    #: The kernel's counters: memmap pages now and without HVO (6.10+), and
    #: hugetlb_optimize_vmemmap_key's count (5.18-7.0).
    kernel_memmap_pages: Optional[int]
    memmap_pages_without_hvo: Optional[int]
    kernel_optimized_folios: Optional[int]
    #: Vmemmap pages HVO would free if every folio the counters count were
    #: optimized (never-optimizable folios cannot be told without a scan).
    possible_pages: int
    #: Folios checked in full, and what the checks found on them and on the
    #: shared tail frames.
    sampled: int
    unknown: int
    findings: List[Finding]

    @property
    def kernel_saved_pages(self) -> Optional[int]:
        if self.kernel_memmap_pages is None or self.memmap_pages_without_hvo is None:
            return None
        return self.memmap_pages_without_hvo - self.kernel_memmap_pages


def readonly_vmemmap_pages(prog: Program, shared_pfns: frozenset = frozenset()) -> tuple:
    """
    (remapped vmemmap pages, PTE tables read, 2 MiB regions missing): the
    PTEs that map the vmemmap of every present memory section, counted
    where HVO remapped them: the vmemmap HVO freed, from the page tables
    alone.

    Where HVO maps tails read-only (x86_64: ``model.tails_readonly``) a
    remapped PTE is one present and not writable: nothing else in the
    vmemmap is read-only on the kernels seen (Debian 6.1, 6.12, 7.2).
    riscv64 maps them writable (no PAGE_KERNEL_RO), so there a remapped PTE
    is one that maps the frame its neighbour before it maps (a tail of
    the pointer form on its head's frame, or the 2nd-7th tail on the
    shared frame) or a frame in ``shared_pfns`` (the mask form's first
    tail): an unoptimized vmemmap maps every page on a frame of its own.
    """
    model = kernel_model(prog)
    walker = page_table_walker(prog)
    section_pages = 1 << (model.section_size_bits - model.page_shift)
    region = 512 << model.page_shift  # the vmemmap one PTE table maps
    ro = tables = missing = 0
    # Read-only and present: the present bit without the write bit.
    present = walker.present
    both = walker.present | walker.write
    for nr, _ in for_each_present_section(prog):
        start = model.page_address(nr * section_pages)
        end = start + section_pages * model.sizeof_page
        for va in range(start & ~(region - 1), end, region):
            try:
                run = walker.pte_run(va, 512)
            except MissingMemory:
                missing += 1
                continue
            if run is None:
                continue  # a PMD or PUD leaf, or a hole: nothing HVO remapped
            tables += 1
            if model.tails_readonly:
                ro += sum(1 for e in run[0] if e & both == present)
            else:
                ro += _aliased_ptes(walker, run[0], shared_pfns)
    return ro, tables, missing


def _aliased_ptes(walker, ptes, shared_pfns: frozenset) -> int:
    """PTEs of one table that map their left neighbour's frame or a shared
    tail frame (present ones only)."""
    count = 0
    last = None
    for e in ptes:
        if not walker.pte_valid(e):
            last = None
            continue
        pfn = walker.entry_pfn(e)
        if pfn == last or pfn in shared_pfns:
            count += 1
        last = pfn
    return count


def fast_scan(prog: Program, sample: int = DEFAULT_SAMPLE) -> FastScan:
    """
    The counters, the read-only vmemmap PTEs, the shared tail frames, and
    the first ``sample`` folios of each hstate checked in full: the scan
    engine's :class:`~vmemspect.scan.Sample` strategy, finished as every
    scan is (list breaks met on the way are findings; counts over the
    whole population are not judged from a sample).

    Seen on Debian 6.12 and 7.2 dumps: ``readonly_pages`` equals the full
    scan's ``saved_pages``.
    """
    model = kernel_model(prog)
    names = folio_check_context(model, zones(prog))[1]
    ro, tables, missing = readonly_vmemmap_pages(prog, frozenset(names))
    r = run_scan(prog, Sample(sample))
    s = r.savings
    return FastScan(
        model=model,
        hvo_enabled=hvo_enabled(prog),
        hstates=r.hstates,
        readonly_pages=ro,
        tables=tables,
        missing_regions=missing,
        shared_frames=s.shared_frame_pages,
        kernel_memmap_pages=s.kernel_memmap_pages,
        memmap_pages_without_hvo=s.memmap_pages_without_hvo,
        kernel_optimized_folios=s.kernel_optimized_folios,
        possible_pages=sum(h.nr_huge_pages * vmemmap_savings(model, h.order)
                           for h in r.hstates if h.order_ok),
        sampled=r.scanned,
        unknown=len(r.unknown),
        findings=r.findings,
    )
