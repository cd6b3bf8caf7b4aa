"""
Scan engine
-----------

One scan of a kernel's hugetlb folios, whichever way the folios are read,
and one place that finishes it. A *strategy* says which folios are read and
how; every strategy walks the same hstate lists and gives the engine
``(record, folios it stands for)`` pairs:

- :class:`EveryFolio`: every folio read in full, a record each (the
  ``folios`` command, the pointer form's ``tails``, helpers that keep
  records);
- :class:`Grouped`: a folio whose key (:func:`~vmemspect.checks.folio_key`,
  everything the checks read) was already judged clean is counted, not
  read again; with ``jobs`` > 1 on a dump, forked workers read and key the
  heads first (``verify``, ``report``, ``metrics``);
- :class:`Sample`: the first folios of each hstate's lists (``metrics
  --fast``): not the whole population.

:func:`run_scan` then finishes every scan alike: list cuts and breaks, hstate
orders, the lists against the per-node counters, the shared tail frames, the
whole-vmemmap sweep (:mod:`vmemspect.sweep`), when asked the whole-memmap
read (:mod:`vmemspect.memmap`), and the kernel's own counters.
What a strategy cannot know (a sample's counts) is not judged, and the
result says so (:attr:`ScanResult.complete`).
"""

import dataclasses
import itertools
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from drgn import FaultError, Program
from drgn.helpers.linux.mmzone import for_each_present_section

from .checks import (
    Finding,
    check_folio,
    check_hstate_counts,
    check_hstate_lists,
    check_hstate_orders,
    check_kernel_counts,
    check_memmap,
    check_shared_tails,
    check_unlisted,
    count_folio,
    folio_check_context,
    folio_group_keyer,
)
from .errors import LIVE_READ_HINT, VmemspectError
from .progcache import is_live
from .hugetlb import (
    Hstate,
    ListBreak,
    Zone,
    for_each_hstate_record,
    for_each_hugetlb_folio_page,
    kernel_freeable_kib,
    kernel_memmap_pages,
    kernel_optimized_folios,
    zone_of_pfn,
    zones,
)
from .hvo import (
    FolioVmemmap,
    SharedTail,
    TailTally,
    folio_vmemmap,
    scan_folio_groups,
    scan_folios,
    shared_tails,
    vmemmap_savings,
)
from .kernel import KernelModel, kernel_model
from .memmap import MemmapResult, read_memmap
from .pagetable import page_table_walker
from .sweep import SweepResult, VmemmapSweep

__all__ = (
    "EveryFolio",
    "Grouped",
    "Sample",
    "Savings",
    "ScanResult",
    "WorkerReport",
    "kernel_memmap_saved",
    "run_scan",
)


@dataclasses.dataclass(frozen=True)
class Savings:
    """Memory HVO saves, by vmemspect's count and by the kernel's counters."""

    #: Vmemmap pages freed, from the page tables: (vmemmap pages - 1) per
    #: listed folio whose vmemmap is remapped.
    saved_pages: int
    #: Pages the shared tail frames take (mask form), one per zone and order.
    shared_frame_pages: int
    #: saved_pages if every folio HVO can optimize were optimized.
    possible_pages: int
    page_size: int
    #: Kernel counters nr_memmap_boot_pages + nr_memmap_pages, None before 6.10.
    kernel_memmap_pages: Optional[int]
    #: Memmap pages of all present sections without HVO.
    memmap_pages_without_hvo: Optional[int]
    #: Folios whose vmemmap the page tables show remapped, and folios that
    #: carry HPG_vmemmap_optimized (equal on a healthy kernel).
    remapped_folios: int = 0
    flagged_folios: int = 0
    #: (vmemmap pages - 1) per flagged folio: what the kernel believes it saved
    #: and will restore when it frees those folios.
    flagged_pages: int = 0
    #: The count of hugetlb_optimize_vmemmap_key (5.18-7.0), None without it.
    kernel_optimized_folios: Optional[int] = None
    #: Per huge page size in kB: the KiB the kernel's boot line says HVO frees
    #: per folio ("HugeTLB: 28 KiB vmemmap can be freed for a 2.00 MiB page"),
    #: when that line is still in the log.
    kernel_freeable_kib: Dict[int, int] = dataclasses.field(default_factory=dict)
    #: The whole-vmemmap sweep: vmemmap pages freed in remapped ranges of no
    #: listed folio, those ranges, and those whose head carries
    #: HPG_vmemmap_optimized (vmemspect.sweep).
    unlisted_pages: int = 0
    unlisted_ranges: int = 0
    unlisted_flagged: int = 0

    @property
    def machine_saved_pages(self) -> int:
        """Vmemmap pages freed in the whole vmemmap: the listed folios'
        and the unlisted ranges'."""
        return self.saved_pages + self.unlisted_pages

    @property
    def kernel_saved_pages(self) -> Optional[int]:
        """What the kernel's memmap counters say HVO freed (6.10+)."""
        if self.kernel_memmap_pages is None or self.memmap_pages_without_hvo is None:
            return None
        return self.memmap_pages_without_hvo - self.kernel_memmap_pages

    @property
    def kernel_source(self) -> Optional[str]:
        """Which of the kernel's own counters the savings are compared with."""
        if self.kernel_saved_pages is not None:
            return "nr_memmap_boot_pages + nr_memmap_pages"
        if self.kernel_optimized_folios is not None:
            return "hugetlb_optimize_vmemmap_key"
        return None

    @property
    def kernel_agrees(self) -> Optional[bool]:
        """vmemspect's measured savings over the whole vmemmap equal the
        kernel's own figure (the memmap counters on 6.10+, else the key's
        count of optimized folios); None when the kernel keeps neither."""
        if self.kernel_saved_pages is not None:
            return self.kernel_saved_pages == self.machine_saved_pages
        if self.kernel_optimized_folios is not None:
            return self.kernel_optimized_folios == self.remapped_folios + self.unlisted_ranges
        return None


@dataclasses.dataclass(frozen=True)
class WorkerReport:
    """What ``--jobs`` workers did in one scan."""

    requested: int
    #: Workers forked (0: none needed: one job, a live kernel, nothing to split).
    started: int
    #: Why they failed (the scan then read every folio itself: the same
    #: output, more time), None if they did not.
    failed: Optional[str]
    cpu_seconds: Tuple[float, ...] = ()
    #: Why no worker was started although more than one job was asked.
    why_none: Optional[str] = None


def kernel_memmap_saved(prog: Program, model: KernelModel) -> Tuple[Optional[int], Optional[int]]:
    """
    (memmap pages the kernel counts now, memmap pages all present sections
    would take without HVO). The kernel counts vmemmap pages in
    nr_memmap_boot_pages/nr_memmap_pages (6.10+) and HVO subtracts what it
    frees, so the difference is the kernel's own figure of what HVO saved.
    """
    counters = kernel_memmap_pages(prog)
    if counters is None:
        return None, None
    section_pages = 1 << (model.section_size_bits - model.page_shift)
    per_section = section_pages * model.sizeof_page // model.page_size
    sections = sum(1 for _ in for_each_present_section(prog))
    return sum(counters), sections * per_section


@dataclasses.dataclass
class ScanContext:
    """What a strategy reads the folios with: known before the first folio."""

    prog: Program
    model: KernelModel
    hstates: List[Hstate]
    zones: List[Zone]
    #: (nid, zone idx) -> vmemmap_tails[] frames, and a name per shared frame.
    tails_by_zone: Dict[Tuple[int, int], Tuple[int, ...]]
    shared_names: Dict[int, str]
    cut: List[Tuple[str, str]]
    broken: List[ListBreak]
    sweep: VmemmapSweep
    #: Told of each folio a grouped scan counts like another, in list order:
    #: ``on_like(first record of its key, its struct page address)``.
    on_like: Optional[Callable[[FolioVmemmap, int], None]] = None

    def clean(self, fv: FolioVmemmap) -> bool:
        """A record no check finds anything on, fully read and remapped:
        folios of its key are counted like it (:class:`Grouped`)."""
        return (fv.unknown is None and not fv.unreadable and fv.remapped
                and not check_folio(self.model, fv, self.tails_by_zone, self.shared_names))

    def keyer(self) -> Callable[..., Optional[tuple]]:
        return folio_group_keyer(self.model, page_table_walker(self.prog), self.zones,
                                 frozenset(self.shared_names))


class EveryFolio:
    """Every folio on the lists read in full: a record each."""

    complete = True

    def pairs(self, ctx: ScanContext, workers: dict) -> Iterator[Tuple[FolioVmemmap, int, bool]]:
        for fv in scan_folios(ctx.prog, None, None, ctx.cut, ctx.broken, ctx.sweep):
            yield fv, 1, True


class Grouped:
    """A folio like one already judged clean is counted, not read again;
    ``jobs`` > 1 on a dump: forked workers read and key the heads first."""

    complete = True

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs

    def pairs(self, ctx: ScanContext, workers: dict) -> Iterator[Tuple[FolioVmemmap, int, bool]]:
        # A consumer that wants every folio in order (rows) is told of each
        # one counted like another, in list order (workers' too).
        return scan_folio_groups(ctx.prog, ctx.clean, ctx.cut, ctx.broken, self.jobs,
                                 ctx.sweep, ctx.keyer(), workers, ctx.on_like)


class Sample:
    """The first ``per_hstate`` folios of each hstate's lists, read in full
    (list breaks and cuts met on the way are kept). Not the population:
    counts over it are not judged."""

    complete = False

    def __init__(self, per_hstate: int) -> None:
        self.per_hstate = per_hstate

    def pairs(self, ctx: ScanContext, workers: dict) -> Iterator[Tuple[FolioVmemmap, int, bool]]:
        walker = page_table_walker(ctx.prog)
        cache: dict = {}
        for h in ctx.hstates:
            if not h.order_ok:
                continue
            for folio, data in itertools.islice(
                    for_each_hugetlb_folio_page(ctx.prog, h, ctx.cut, ctx.broken),
                    self.per_hstate):
                yield folio_vmemmap(ctx.prog, folio, walker, cache, data), 1, True


@dataclasses.dataclass
class ScanResult:
    """A finished scan: everything but what a consumer tallied itself."""

    model: KernelModel
    hstates: List[Hstate]
    zones: List[Zone]
    #: Every folio on the lists was read or counted (not a sample).
    complete: bool
    #: Folios read or counted, and those whose memory was missing.
    scanned: int
    unknown: List[FolioVmemmap]
    #: Findings: the folios' in list order, then the finishing checks'.
    findings: List[Finding]
    tails: List[SharedTail]
    savings: Savings
    cut_lists: List[Tuple[str, str]]
    broken_lists: List[ListBreak]
    unknown_frames: List[Tuple[int, str, str]]
    sweep: SweepResult
    workers: Optional[WorkerReport]
    #: The whole-memmap read (``memmap=True``; None if not asked or the
    #: strategy is a sample).
    memmap: Optional[MemmapResult] = None


def count_isolated(found: Dict[Tuple[str, int], List[int]], swept: SweepResult,
                   hstates: List[Hstate], zone_list: List[Zone]) -> None:
    """Add the folios the sweep found isolated for migration to the
    per-(hstate, node) counts of check_hstate_counts() (in use, not free)."""
    by_order = {h.order: h.name for h in hstates}
    for r in swept.unlisted:
        if r.kind != "isolated" or r.order not in by_order:
            continue
        zone = zone_of_pfn(zone_list, r.pfn)
        if zone is not None:
            found.setdefault((by_order[r.order], zone.nid), [0, 0])[0] += 1


def scan_context(prog: Program) -> ScanContext:
    """Read the hstates and zones a scan starts from.

    :raises VmemspectError: if the dump lacks them.
    """
    model = kernel_model(prog)
    try:
        hstates = list(for_each_hstate_record(prog))
        zone_list = zones(prog)
    except FaultError as e:
        if is_live(prog):
            raise VmemspectError(f"cannot read the running kernel's hstates or zones ({e})",
                                 LIVE_READ_HINT)
        raise VmemspectError(
            f"the dump lacks the hstates or zones ({e})",
            "it is truncated or filtered too far; take a dump that keeps kernel data",
        )
    tails_by_zone, shared_names = folio_check_context(model, zone_list)
    return ScanContext(prog, model, hstates, zone_list, tails_by_zone, shared_names, [], [],
                       VmemmapSweep(prog, (h.order for h in hstates if h.order_ok)))


def run_scan(
    prog: Program,
    strategy,
    on_folio: Optional[Callable[[FolioVmemmap, int, List[Finding], bool], None]] = None,
    possible: Optional[Callable[[FolioVmemmap], bool]] = None,
    on_like: Optional[Callable[[FolioVmemmap, int], None]] = None,
    memmap: bool = False,
) -> ScanResult:
    """
    Read the folios by ``strategy``, judge each as it comes, and finish the
    scan.

    :param on_folio: called with each record, the folios it stands for,
        its findings, and whether it comes in list order (a group's count
        comes last): a consumer's own tallies (tables, rows).
    :param on_like: see :attr:`ScanContext.on_like` (rows of folios a
        grouped scan counts).
    :param possible: whether HVO could optimize a folio (for
        :attr:`Savings.possible_pages`); every folio if not given.
    :param memmap: also read the whole memmap for hugetlb-typed struct
        pages outside the listed folios (:mod:`vmemspect.memmap`; a complete
        strategy only).
    """
    ctx = scan_context(prog)
    ctx.on_like = on_like
    model = ctx.model
    live = is_live(prog)
    # Only the slots' frames are looked up (shared_tails()); on a live
    # kernel the slots may fill during the scan: count every frame there.
    slot_pfns = None if live else [model.struct_page_pfn(p) for z in ctx.zones
                                   for p in z.tails if p]
    tally = TailTally(model.tails_owner == "pglist_data", slot_pfns)
    found: Dict[Tuple[str, int], List[int]] = {}
    findings: List[Finding] = []
    unknown: List[FolioVmemmap] = []
    unknown_frames: Dict[int, Tuple[int, str, str]] = {}
    scanned = saved = possible_pages = flagged_pages = remapped = flagged = 0
    workers: dict = {}
    for fv, n, inline in strategy.pairs(ctx, workers):
        for pfn, why in fv.unreadable:
            if not why.startswith("not in the machine"):  # else a finding
                unknown_frames.setdefault(pfn, (pfn, f"a tail frame of folio pfn "
                                                     f"{fv.folio.pfn:#x}", why))
        scanned += n
        mine = check_folio(model, fv, ctx.tails_by_zone, ctx.shared_names)
        # Never a group (Grouped counts only clean folios): n is 1.
        findings.extend(mine)
        tally.add(fv, n)
        count_folio(found, fv, n)
        per_folio = vmemmap_savings(model, fv.folio.order)
        if possible is None or possible(fv):
            possible_pages += per_folio * n
        if fv.remapped:
            saved += per_folio * n
            remapped += n
        if fv.folio.optimized:
            flagged_pages += per_folio * n
            flagged += n
        if fv.unknown is not None:
            unknown.append(fv)
        if on_folio is not None:
            on_folio(fv, n, mine, inline)
    # Finishing: the same for every strategy.
    hstates, cut, broken = ctx.hstates, ctx.cut, ctx.broken
    tails = shared_tails(prog, tally=tally if strategy.complete else None)
    findings.extend(check_shared_tails(model, tails))
    for t in tails:
        if t.unreadable is not None and not t.unreadable.startswith("not in the machine"):
            unknown_frames[t.pfn] = (t.pfn, f"vmemmap_tails[{t.slot}] of node {t.nid} "
                                            f"{t.zone_name} (order {t.order})", t.unreadable)
    findings.extend(check_hstate_orders(hstates))
    findings.extend(check_hstate_lists(hstates, broken))
    whole = not cut and not broken and all(h.order_ok for h in hstates)
    memmap_result: Optional[MemmapResult] = None
    if strategy.complete:
        swept = ctx.sweep.finish(ctx.shared_names, lists_incomplete=not whole)
        # A folio isolated for migration is off the lists but still in the
        # hstate's counters (isolate_hugetlb() moves it to a private list).
        count_isolated(found, swept, hstates, ctx.zones)
        # A cut or broken list holds fewer folios than the counters by
        # nature; hstate-list says how many.
        findings.extend(check_hstate_counts(
            hstates, found, {name for name, _ in cut} | {b.hstate for b in broken}
            | {h.name for h in hstates if not h.order_ok}))
        findings.extend(check_unlisted(model, swept))
        if memmap:
            memmap_result = read_memmap(prog, ctx.sweep, swept)
            findings.extend(check_memmap(memmap_result, swept.lists_incomplete))
    else:
        # A sample lists few folios: the sweep could attribute nothing.
        # (metrics --fast counts the remapped PTEs of the whole vmemmap
        # itself, fastscan.readonly_vmemmap_pages.)
        swept = SweepResult(0, 0, 0, [], lists_incomplete=True)
    kernel_now, without = kernel_memmap_saved(prog, model)
    unlisted = swept.unlisted if strategy.complete else []
    savings = Savings(
        saved_pages=saved,
        shared_frame_pages=sum(1 for t in tails if t.pfn is not None),
        possible_pages=possible_pages,
        page_size=model.page_size,
        kernel_memmap_pages=kernel_now,
        memmap_pages_without_hvo=without,
        remapped_folios=remapped,
        flagged_folios=flagged,
        flagged_pages=flagged_pages,
        kernel_optimized_folios=kernel_optimized_folios(prog),
        kernel_freeable_kib=kernel_freeable_kib(prog),
        unlisted_pages=sum(r.saved_pages for r in unlisted),
        unlisted_ranges=len(unlisted),
        unlisted_flagged=sum(1 for r in unlisted if r.optimized),
    )
    # Counts over the whole population: meaningless if a list was cut.
    if whole and strategy.complete:
        findings.extend(check_kernel_counts(model, savings, unlisted))
    return ScanResult(
        model=model, hstates=hstates, zones=ctx.zones, complete=strategy.complete,
        scanned=scanned, unknown=unknown, findings=findings, tails=tails, savings=savings,
        cut_lists=cut, broken_lists=broken, unknown_frames=list(unknown_frames.values()),
        sweep=swept, memmap=memmap_result,
        workers=WorkerReport(workers["requested"], workers["started"], workers["failed"],
                             tuple(workers["cpu_seconds"]), workers.get("why_none"))
        if workers else None)
