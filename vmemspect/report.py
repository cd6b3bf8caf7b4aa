"""
Reports
-------

One scan of a kernel, gathered into plain records that every command and
both outputs (tables and JSON) are rendered from: the kernel model, hstates,
zones, each folio's vmemmap, the shared tail frames, the savings and the
findings.
"""

import collections
import dataclasses
import json
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from drgn import FaultError, Program, ProgramFlags
from drgn.helpers.linux.mmzone import for_each_present_section

from .checks import (
    Finding,
    check_folio,
    check_kernel_counts,
    check_hstate_counts,
    check_hstate_lists,
    check_hstate_orders,
    check_shared_tails,
    check_unlisted,
    count_folio,
    folio_check_context,
)
from .errors import VmemspectError
from .hugetlb import (
    Hstate,
    ListBreak,
    Zone,
    for_each_hstate_record,
    hvo_enabled,
    kernel_freeable_kib,
    kernel_memmap_pages,
    kernel_optimized_folios,
    zones,
)
from .hvo import (
    FolioVmemmap,
    SharedTail,
    TailTally,
    scan_folio_groups,
    scan_folios,
    shared_tails,
    vmemmap_savings,
)
from .kernel import KernelModel, has_object, kernel_model
from .optimizable import hvo_context, is_optimizable, not_optimized_reason
from .savings import WhatIf, WhatIfTally
from .sweep import SweepResult, VmemmapSweep

__all__ = (
    "GroupSummary",
    "GroupTally",
    "Report",
    "RowSink",
    "Savings",
    "Spool",
    "build_report",
    "folio_filter",
    "kernel_memmap_saved",
    "parse_page_ref",
    "select_folios",
)


@dataclasses.dataclass(frozen=True)
class GroupSummary:
    """Folio counts of one hstate in one zone of one node."""

    hstate: str
    order: int
    nid: int
    zone: str
    total: int
    free: int
    in_use: int
    optimized: int
    not_optimized: int
    unknown: int
    #: Vmemmap pages HVO freed for these folios (those whose vmemmap the page
    #: tables show remapped).
    saved_pages: int
    #: Vmemmap pages HVO would free if every folio here that it can
    #: optimize were optimized.
    possible_pages: int
    #: Folios HVO can never optimize (vmemspect.optimizable).
    not_optimizable: int = 0


class GroupTally:
    """The per-group counts (:class:`GroupSummary`) gathered folio by folio,
    so that the report's table needs no folio records."""

    def __init__(self, model: KernelModel) -> None:
        self.model = model
        # (hstate, nid, zone idx) -> [zone name, order, total, free, in use,
        # optimized, unknown, remapped, never optimizable]
        self.acc: Dict[Tuple[str, int, int], list] = {}

    def add(self, fv: FolioVmemmap, reason: Optional[str], n: int = 1) -> None:
        """Count ``fv`` (``n`` folios like it); ``reason`` is
        :func:`~vmemspect.optimizable.not_optimized_reason`'s."""
        f = fv.folio
        a = self.acc.get((f.hstate, f.nid, f.zone_idx))
        if a is None:
            a = self.acc[(f.hstate, f.nid, f.zone_idx)] = [f.zone_name, f.order] + [0] * 7
        a[2] += n
        if f.state == "free":
            a[3] += n
        elif f.state == "active":
            a[4] += n
        a[5] += n if f.optimized else 0
        a[6] += n if fv.unknown is not None else 0
        a[7] += n if fv.remapped else 0
        a[8] += 0 if is_optimizable(reason) else n

    def groups(self, hstates: List[Hstate]) -> List[GroupSummary]:
        """Counts per hstate, node and zone, in hstate then node and zone order."""
        order_of = {h.name: h.order for h in hstates}
        rank = {h.name: h.index for h in hstates}
        out = []
        for (hstate, nid, zidx), a in sorted(
                self.acc.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0][1], kv[0][2])):
            zone, forder, total, free, in_use, opt, unknown, remapped, never = a
            order = order_of.get(hstate, forder)
            per = vmemmap_savings(self.model, order)
            out.append(GroupSummary(
                hstate=hstate, order=order, nid=nid, zone=zone, total=total, free=free,
                in_use=in_use, optimized=opt, not_optimized=total - opt, unknown=unknown,
                saved_pages=per * remapped, possible_pages=per * (total - never),
                not_optimizable=never))
        return out


class Spool(list):
    """
    Records written one at a time to an unnamed temporary file (one JSON
    line each) and read back in order, through ``finish`` if given: a list
    for ``len()``, iteration and :mod:`json` (which encodes it as a list)
    whose memory does not grow with its records. Records are JSON values
    (tuples come back as lists).
    """

    def __init__(self, finish: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__()
        self._file = tempfile.TemporaryFile()
        self._count = 0
        self.finish = finish

    def append(self, record: Any) -> None:
        self._file.write(json.dumps(record).encode() + b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Any]:
        self._file.flush()
        with open(self._file.fileno(), "rb", closefd=False) as f:
            f.seek(0)
            for line in f:
                record = json.loads(line)
                yield record if self.finish is None else self.finish(record)


@dataclasses.dataclass
class RowSink:
    """Where a scan writes a row per folio: ``make(fv, its findings)``
    appended to ``spool`` for each folio ``select(fv)`` accepts."""

    spool: Spool
    make: Callable[[FolioVmemmap, List[Finding]], Any]
    select: Optional[Callable[[FolioVmemmap], bool]] = None


@dataclasses.dataclass(frozen=True)
class Savings:
    """Memory HVO saves, by vmemspect's count and by the kernel's counters."""

    #: Vmemmap pages freed, from the page tables: (vmemmap pages - 1) per
    #: folio whose vmemmap is remapped.
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
        """vmemspect's measured savings equal the kernel's own figure (the
        memmap counters on 6.10+, else the key's count of optimized folios);
        None when the kernel keeps neither."""
        if self.kernel_saved_pages is not None:
            return self.kernel_saved_pages == self.machine_saved_pages
        if self.kernel_optimized_folios is not None:
            return self.kernel_optimized_folios == self.remapped_folios + self.unlisted_ranges
        return None


@dataclasses.dataclass
class Report:
    model: KernelModel
    hvo_enabled: Optional[bool]
    hstates: List[Hstate]
    zones: List[Zone]
    #: Folios scanned, and those whose memory was missing.
    scanned: int
    unknown: List[FolioVmemmap]
    #: Every folio's record, unless the scan was told not to keep them.
    folios: List[FolioVmemmap]
    tails: List[SharedTail]
    findings: List[Finding]
    savings: Savings
    #: (hstate, reason) for each hstate list cut short by missing memory.
    cut_lists: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    #: (pfn, what it is, why) of each frame a mapping names whose contents
    #: could not be read (missing from the dump): its struct pages are not
    #: judged, the mappings to it are.
    unknown_frames: List[Tuple[int, str, str]] = dataclasses.field(default_factory=list)
    #: Each hstate list found corrupt (a finding too: hstate-list).
    broken_lists: List[ListBreak] = dataclasses.field(default_factory=list)
    #: Where the kernel's types came from: "dwarf" (a vmlinux) or "btf".
    types: Optional[str] = None
    #: Live kernel: findings that did not hold on every re-read (the kernel
    #: changed the folio or its vmemmap under the scan); not violations.
    transient: List[Finding] = dataclasses.field(default_factory=list)
    #: What each HVO scheme would take for these folios (vmemspect.savings).
    what_if: Optional[WhatIf] = None
    #: Folio pfn -> why it is not optimized (vmemspect.optimizable.REASONS),
    #: for the folios kept.
    not_optimized: Dict[int, str] = dataclasses.field(default_factory=dict)
    #: The group counts, gathered during the scan.
    group_tally: Optional[GroupTally] = None
    #: Rows the scan wrote per folio (RowSink), in list order.
    rows: Optional[Spool] = None
    #: Pointer form: folios whose vmemmap is remapped (their frames alias
    #: the head's) and their fake heads, counted.
    aliased_folios: int = 0
    aliased_fake_heads: int = 0
    #: The whole-vmemmap sweep: remapped ranges of no listed folio.
    sweep: Optional[SweepResult] = None

    def groups(self) -> List[GroupSummary]:
        """Counts per hstate, node and zone, in hstate then node and zone order."""
        if self.group_tally is not None:
            return self.group_tally.groups(self.hstates)
        acc: Dict[Tuple[str, int, int], List[FolioVmemmap]] = collections.defaultdict(list)
        for fv in self.folios:
            acc[(fv.folio.hstate, fv.folio.nid, fv.folio.zone_idx)].append(fv)
        order_of = {h.name: h.order for h in self.hstates}
        rank = {h.name: h.index for h in self.hstates}
        out = []
        for (hstate, nid, zidx), fvs in sorted(acc.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0][1], kv[0][2])):
            order = order_of.get(hstate, fvs[0].folio.order)
            per = vmemmap_savings(self.model, order)
            opt = sum(1 for fv in fvs if fv.folio.optimized)
            remapped = sum(1 for fv in fvs if fv.remapped)
            never = sum(1 for fv in fvs
                        if not is_optimizable(self.not_optimized.get(fv.folio.pfn)))
            out.append(GroupSummary(
                hstate=hstate,
                order=order,
                nid=nid,
                zone=fvs[0].folio.zone_name,
                total=len(fvs),
                free=sum(1 for fv in fvs if fv.folio.state == "free"),
                in_use=sum(1 for fv in fvs if fv.folio.state == "active"),
                optimized=opt,
                not_optimized=len(fvs) - opt,
                unknown=sum(1 for fv in fvs if fv.unknown is not None),
                saved_pages=per * remapped,
                possible_pages=per * (len(fvs) - never),
                not_optimizable=never,
            ))
        return out


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
    section_pages = 1 << (prog["SECTION_SIZE_BITS"].value_() - model.page_shift) \
        if has_object(prog, "SECTION_SIZE_BITS") else 1 << (27 - model.page_shift)
    per_section = section_pages * model.sizeof_page // model.page_size
    sections = sum(1 for _ in for_each_present_section(prog))
    return sum(counters), sections * per_section


def _finding_key(f: Finding) -> Tuple[str, Optional[int], Optional[int], str]:
    return (f.check, f.folio_pfn, f.frame_pfn, f.subject if f.folio_pfn is None else "")


def build_report(
    prog: Program,
    progress: Optional[Callable[[FolioVmemmap, int], None]] = None,
    live_rereads: int = 3,
    keep_folios: bool = True,
    rows: Optional[RowSink] = None,
    jobs: int = 1,
) -> Report:
    """
    Scan every hugetlb folio, the shared tail frames and the counters, and
    run every check. The commands filter and render this one record.

    On a live kernel, which allocates and frees huge pages under the scan, a
    scan that found anything is repeated up to ``live_rereads`` times: a
    finding is kept only if every scan finds it; the others are reported as
    transient, never as violations.

    :param progress: called with each record and the number of folios it
        stands for (:func:`~vmemspect.hvo.scan_folio_groups`).
    :param keep_folios: keep every folio's record (``report.folios``);
        without, memory does not grow with the number of folios: every
        table and count comes from counters, and a folio like one already
        judged clean is counted, not read again (the scan then reads each
        folio's head vmemmap page once, and the PTE tables).
    :param rows: write a row per folio there (``folios``, and ``tails`` of
        the pointer form): every folio gets its own record, one at a time.
    :param jobs: processes that read the folios' head pages at once
        (:func:`~vmemspect.hvo.scan_folio_groups`; a dump, without
        ``keep_folios`` or ``rows``): the same report as with one.
    """
    report = _scan(prog, progress, keep_folios, rows, jobs)
    if not (prog.flags & ProgramFlags.IS_LIVE) or not report.findings:
        return report
    confirmed = {_finding_key(f) for f in report.findings}
    for _ in range(live_rereads):
        again = _scan(prog, None, False)
        confirmed &= {_finding_key(f) for f in again.findings}
        if not confirmed:
            break
    report.transient = [f for f in report.findings if _finding_key(f) not in confirmed]
    report.findings = [f for f in report.findings if _finding_key(f) in confirmed]
    return report


def _scan(
    prog: Program,
    progress: Optional[Callable[[FolioVmemmap, int], None]] = None,
    keep_folios: bool = True,
    rows: Optional[RowSink] = None,
    jobs: int = 1,
) -> Report:
    model = kernel_model(prog)
    try:
        hstates = list(for_each_hstate_record(prog))
        zone_list = zones(prog)
    except FaultError as e:
        raise VmemspectError(
            f"the dump lacks the hstates or zones ({e})",
            "it is truncated or filtered too far; take a dump that keeps kernel data",
        )
    cut: List[Tuple[str, str]] = []
    tails_by_zone, shared_names = folio_check_context(model, zone_list)
    live = bool(prog.flags & ProgramFlags.IS_LIVE)
    # Only the slots' frames are looked up (shared_tails()); on a live
    # kernel the slots may fill during the scan: count every frame there.
    slot_pfns = None if live else [model.struct_page_pfn(p) for z in zone_list
                                   for p in z.tails if p]
    tally = TailTally(model.tails_owner == "pglist_data", slot_pfns)
    groups = GroupTally(model)
    aliased = aliased_fake = 0
    found: Dict[Tuple[str, int], List[int]] = {}
    findings: List[Finding] = []
    folios: List[FolioVmemmap] = []
    unknown: List[FolioVmemmap] = []
    scanned = saved = possible = flagged_pages = remapped = flagged = 0
    # Each folio is judged as it is read; it is kept only if asked, so that
    # verify's memory does not grow with the folios.
    broken: List[ListBreak] = []
    unknown_frames: Dict[int, Tuple[int, str, str]] = {}
    hvo_ctx = hvo_context(prog)
    what_if = WhatIfTally(model, (model.struct_page_pfn(p) for z in zone_list
                                  for p in z.tails if p))
    not_optimized: Dict[int, str] = {}
    flags_cache: Dict[int, bytes] = {}

    def clean(fv: FolioVmemmap) -> bool:
        return (fv.unknown is None and not fv.unreadable and fv.remapped
                and not check_folio(model, fv, tails_by_zone, shared_names))

    sweep = VmemmapSweep(prog, (h.order for h in hstates if h.order_ok))
    if keep_folios or rows is not None:
        pairs = ((fv, 1) for fv in scan_folios(prog, None, None, cut, broken, sweep))
    else:
        pairs = scan_folio_groups(prog, clean, cut, broken, jobs, sweep)
    for fv, n in pairs:
        for pfn, why in fv.unreadable:
            if not why.startswith("not in the machine"):  # else a finding
                unknown_frames.setdefault(pfn, (pfn, f"a tail frame of folio pfn "
                                                     f"{fv.folio.pfn:#x}", why))
        scanned += n
        mine = check_folio(model, fv, tails_by_zone, shared_names)
        if mine:
            # Never a group (scan_folio_groups): n is 1.
            findings.extend(mine)
        tally.add(fv, n)
        count_folio(found, fv, n)
        per_folio = vmemmap_savings(model, fv.folio.order)
        reason = not_optimized_reason(prog, hvo_ctx, fv, flags_cache)
        what_if.add(fv, reason, n)
        groups.add(fv, reason, n)
        if is_optimizable(reason):
            possible += per_folio * n
        if fv.remapped:
            saved += per_folio * n
            remapped += n
            aliased += n
            aliased_fake += fv.fake_heads * n
        if fv.folio.optimized:
            flagged_pages += per_folio * n
            flagged += n
        if progress:
            progress(fv, n)
        if rows is not None and (rows.select is None or rows.select(fv)):
            rows.spool.append(rows.make(fv, mine))
        if keep_folios:
            folios.append(fv)
            if reason is not None:
                not_optimized[fv.folio.pfn] = reason
        if fv.unknown is not None:
            unknown.append(fv)
    tails = shared_tails(prog, tally=tally)
    findings.extend(check_shared_tails(model, tails))
    for t in tails:
        if t.unreadable is not None and not t.unreadable.startswith("not in the machine"):
            unknown_frames[t.pfn] = (t.pfn, f"vmemmap_tails[{t.slot}] of node {t.nid} "
                                            f"{t.zone_name} (order {t.order})", t.unreadable)
    findings.extend(check_hstate_orders(hstates))
    findings.extend(check_hstate_lists(hstates, broken))
    # A cut or broken list holds fewer folios than the counters by nature;
    # hstate-list says how many.
    findings.extend(check_hstate_counts(
        hstates, found, {name for name, _ in cut} | {b.hstate for b in broken}
        | {h.name for h in hstates if not h.order_ok}))
    swept = sweep.finish(shared_names, lists_incomplete=bool(
        cut or broken or not all(h.order_ok for h in hstates)))
    findings.extend(check_unlisted(model, swept))
    kernel_now, without = kernel_memmap_saved(prog, model)
    savings = Savings(
        saved_pages=saved,
        shared_frame_pages=sum(1 for t in tails if t.pfn is not None),
        possible_pages=possible,
        page_size=model.page_size,
        kernel_memmap_pages=kernel_now,
        memmap_pages_without_hvo=without,
        remapped_folios=remapped,
        flagged_folios=flagged,
        flagged_pages=flagged_pages,
        kernel_optimized_folios=kernel_optimized_folios(prog),
        kernel_freeable_kib=kernel_freeable_kib(prog),
        unlisted_pages=swept.unlisted_saved_pages,
        unlisted_ranges=len(swept.unlisted),
        unlisted_flagged=sum(1 for r in swept.unlisted if r.optimized),
    )
    # Counts over the whole population: meaningless if a list was cut.
    if not cut and not broken and all(h.order_ok for h in hstates):
        findings.extend(check_kernel_counts(model, savings, swept.unlisted))
    return Report(
        model=model,
        hvo_enabled=hvo_enabled(prog),
        hstates=hstates,
        zones=zone_list,
        scanned=scanned,
        unknown=unknown,
        folios=folios,
        tails=tails,
        findings=findings,
        savings=savings,
        cut_lists=cut,
        broken_lists=broken,
        unknown_frames=list(unknown_frames.values()),
        types=prog.cache.get("vmemspect_types"),
        what_if=what_if.result(h.name for h in hstates),
        not_optimized=not_optimized,
        group_tally=groups,
        rows=None if rows is None else rows.spool,
        aliased_folios=aliased,
        aliased_fake_heads=aliased_fake,
        sweep=swept,
    )


def _hstate_matches(name: str, order: int, page_shift: int, want: str) -> bool:
    """``want`` as the hstate's name, its size in kB, or 2M/1G style."""
    want = want.strip()
    if want == name or want == name.replace("hugepages-", ""):
        return True
    size = 1 << (order + page_shift)
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    w = want.lower().rstrip("b")
    if w and w[-1] in units and w[:-1].isdigit():
        return int(w[:-1]) * units[w[-1]] == size
    return False


def folio_filter(
    model: KernelModel,
    hstates: Optional[List[Hstate]],
    hstate: Optional[str] = None,
    nid: Optional[int] = None,
    state: Optional[str] = None,
    optimized: Optional[bool] = None,
) -> Callable[[FolioVmemmap], bool]:
    """
    Whether a folio matches every filter given (for a scan's
    :class:`RowSink`, so that no record is kept).

    :param hstate: "hugepages-2048kB", "2048kB", "2M" or "1G".
    :param state: "free" or "in-use" (the kernel's active list).
    :param hstates: the kernel's, to check that ``hstate`` is one of them.
    :raises VmemspectError: if the kernel has no such hstate.
    """
    if hstate is not None and hstates is not None and not any(
        _hstate_matches(h.name, h.order, model.page_shift, hstate) for h in hstates
    ):
        names = ", ".join(h.name for h in hstates) or "none (no hugetlb)"
        raise VmemspectError(f"this kernel has no hstate {hstate!r}",
                             f"give one of its hstates: {names} (or a size: 2M, 1G)")

    def select(fv: FolioVmemmap) -> bool:
        f = fv.folio
        if hstate is not None and not _hstate_matches(f.hstate, f.order, model.page_shift,
                                                      hstate):
            return False
        if nid is not None and f.nid != nid:
            return False
        if state is not None and (f.state == "free") != (state == "free"):
            return False
        return optimized is None or f.optimized == optimized
    return select


def select_folios(
    report: Report,
    hstate: Optional[str] = None,
    nid: Optional[int] = None,
    state: Optional[str] = None,
    optimized: Optional[bool] = None,
) -> List[FolioVmemmap]:
    """
    The report's folios (kept: ``keep_folios``) that match every filter
    given (:func:`folio_filter`).

    :raises VmemspectError: if the kernel has no such hstate.
    """
    select = folio_filter(report.model, report.hstates, hstate, nid, state, optimized)
    return [fv for fv in report.folios if select(fv)]


def parse_page_ref(model: KernelModel, text: str) -> int:
    """
    A struct page address from "0xffffea0000200000", "pfn:0x800" or
    "pfn:2048".

    :raises VmemspectError: if ``text`` is neither.
    """
    text = text.strip()
    try:
        if text.lower().startswith("pfn:"):
            return model.page_address(int(text[4:], 0))
        value = int(text, 16 if not text.lower().startswith("0x") else 0)
    except ValueError:
        raise VmemspectError(
            f"cannot read {text!r} as a struct page address or pfn",
            "give a hex address (0xffffea...) or pfn:N",
        )
    if value < model.vmemmap_start:
        raise VmemspectError(
            f"{value:#x} is below the vmemmap ({model.vmemmap_start:#x})",
            "give a struct page address, or pfn:N for a page frame number",
        )
    return value
