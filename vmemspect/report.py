"""
Reports
-------

One scan of a kernel, gathered into plain records that every command and
both outputs (tables and JSON) are rendered from: the kernel model, hstates,
zones, each folio's vmemmap, the shared tail frames, the savings and the
findings.
"""

import dataclasses
import json
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from drgn import Program

from .checks import Finding
from .diagnosis import Cause, diagnose_report
from .errors import VmemspectError
from .hugetlb import Hstate, ListBreak, Zone, hvo_enabled, zones
from .hvo import FolioVmemmap, SharedTail, vmemmap_savings
from .kernel import KernelModel, kernel_model
from .memmap import MemmapResult
from .pagetable import page_table_walker
from .progcache import cache_get, is_live
from .optimizable import hvo_context, is_optimizable, not_optimized_reason
from .savings import WhatIf, WhatIfTally
from .scan import EveryFolio, Grouped, Savings, WorkerReport, kernel_memmap_saved, run_scan
from .sweep import SweepResult

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


class Spool:
    """
    Records written one at a time to an unnamed temporary file (one JSON
    line each) and read back in order, through ``finish`` if given:
    ``len()`` and iteration whose memory does not grow with the records
    (``documents.write_json`` writes it as a JSON list). Records are JSON
    values (tuples come back as lists).
    """

    def __init__(self, finish: Optional[Callable[[Any], Any]] = None) -> None:
        self._file = tempfile.TemporaryFile()
        self._count = 0
        self.finish = finish
        #: A record whose JSON line ends with this is one ``finish`` leaves
        #: as it is: :meth:`texts` gives its line without decoding it.
        self.final_suffix: Optional[str] = None

    def texts(self) -> Iterator[str]:
        """Each record as compact JSON (``json.dumps``' default
        separators), after ``finish``: the stored line itself where
        ``finish`` would change nothing (no ``finish``, or the line ends
        with :attr:`final_suffix`), else decoded, finished and encoded."""
        self._file.flush()
        decode, encode = json.JSONDecoder().decode, json.JSONEncoder(check_circular=False).encode
        finish, suffix = self.finish, self.final_suffix
        with open(self._file.fileno(), "r", encoding="utf-8", closefd=False) as f:
            f.seek(0)
            for line in f:
                line = line[:-1]
                if finish is None or (suffix is not None and line.endswith(suffix)):
                    yield line
                else:
                    yield encode(finish(decode(line)))

    def append(self, record: Any) -> None:
        self._file.write(json.dumps(record).encode() + b"\n")
        self._count += 1

    def append_text(self, text: str) -> None:
        """A record given as its JSON line (``json.dumps``' form)."""
        self._file.write(text.encode() + b"\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Any]:
        self._file.flush()
        decode = json.JSONDecoder().decode
        with open(self._file.fileno(), "r", encoding="utf-8", closefd=False) as f:
            f.seek(0)
            for line in f:
                record = decode(line)
                yield record if self.finish is None else self.finish(record)


@dataclasses.dataclass
class RowSink:
    """Where a scan writes a row per folio: ``make(fv, its findings)``
    appended to ``spool`` for each folio ``select(fv)`` accepts."""

    spool: Spool
    make: Callable[[FolioVmemmap, List[Finding]], Any]
    select: Optional[Callable[[FolioVmemmap], bool]] = None
    #: ``like(row, model, page, head pfn, head PTE)``: the row of a folio
    #: a grouped scan counted like the clean one whose row is ``row``
    #: (same key: checks.folio_key); without it the scan reads every folio.
    like: Optional[Callable[..., Any]] = None
    #: ``template(row, model)``: a function of ``(page, head pfn, head PTE)``
    #: giving ``like``'s row as its JSON line, faster (documents._row_template).
    template: Optional[Callable[..., Any]] = None


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
    #: The group counts, gathered during the scan.
    group_tally: GroupTally
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
    #: Rows the scan wrote per folio (RowSink), in list order.
    rows: Optional[Spool] = None
    #: The whole-vmemmap sweep: remapped ranges of no listed folio.
    sweep: Optional[SweepResult] = None
    #: What --jobs workers did (None: none were asked for).
    workers: Optional[WorkerReport] = None
    #: The findings grouped by root cause (vmemspect.diagnosis).
    diagnosis: Optional[List[Cause]] = None
    #: The whole-memmap read (verify --memmap), None if not asked.
    memmap: Optional[MemmapResult] = None

    def groups(self) -> List[GroupSummary]:
        """Counts per hstate, node and zone, in hstate then node and zone order."""
        return self.group_tally.groups(self.hstates)


def _finding_key(f: Finding) -> Tuple[str, Optional[int], Optional[int], str]:
    return (f.check, f.folio_pfn, f.frame_pfn, f.subject if f.folio_pfn is None else "")


def build_report(
    prog: Program,
    progress: Optional[Callable[[FolioVmemmap, int], None]] = None,
    live_rereads: int = 3,
    keep_folios: bool = True,
    rows: Optional[RowSink] = None,
    jobs: int = 1,
    memmap: bool = False,
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
    :param memmap: also read the whole memmap (:mod:`vmemspect.memmap`):
        hugetlb-typed struct pages outside the listed folios.
    """
    report = _scan(prog, progress, keep_folios, rows, jobs, memmap)
    if not is_live(prog) or not report.findings:
        report.diagnosis = diagnose_report(prog, report.findings, report.hstates)
        return report
    confirmed = {_finding_key(f) for f in report.findings}
    for _ in range(live_rereads):
        again = _scan(prog, None, False, memmap=memmap)
        confirmed &= {_finding_key(f) for f in again.findings}
        if not confirmed:
            break
    report.transient = [f for f in report.findings if _finding_key(f) not in confirmed]
    report.findings = [f for f in report.findings if _finding_key(f) in confirmed]
    report.diagnosis = diagnose_report(prog, report.findings, report.hstates)
    return report


def _scan(
    prog: Program,
    progress: Optional[Callable[[FolioVmemmap, int], None]] = None,
    keep_folios: bool = True,
    rows: Optional[RowSink] = None,
    jobs: int = 1,
    memmap: bool = False,
) -> Report:
    """One scan by the engine (vmemspect.scan), with the report's own
    tallies: the group table, the what-if table, rows, kept records."""
    model = kernel_model(prog)
    zone_list = zones(prog)
    groups = GroupTally(model)
    folios: List[FolioVmemmap] = []
    hvo_ctx = hvo_context(prog)
    what_if = WhatIfTally(model, (model.struct_page_pfn(p) for z in zone_list
                                  for p in z.tails if p))
    not_optimized: Dict[int, str] = {}
    flags_cache: Dict[int, bytes] = {}
    reasons: Dict[int, Optional[str]] = {}

    def possible(fv: FolioVmemmap) -> bool:
        reason = not_optimized_reason(prog, hvo_ctx, fv, flags_cache)
        reasons[id(fv)] = reason
        return is_optimizable(reason)

    def on_folio(fv: FolioVmemmap, n: int, mine: List[Finding], inline: bool) -> None:
        reason = reasons.pop(id(fv))
        what_if.add(fv, reason, n)
        groups.add(fv, reason, n)
        if progress:
            progress(fv, n)
        if inline and rows is not None and (rows.select is None or rows.select(fv)):
            rows.spool.append(rows.make(fv, mine))
        if keep_folios:
            folios.append(fv)
            if reason is not None:
                not_optimized[fv.folio.pfn] = reason

    on_like = None
    if rows is not None and rows.like is not None and not keep_folios:
        walker = page_table_walker(prog)
        template: Dict[int, Any] = {}  # id(first record of a key) -> its row, or None

        def on_like(first: FolioVmemmap, page: int) -> None:
            key = id(first)
            row = template.get(key, False)
            if row is False:
                row = None
                if rows.select is None or rows.select(first):
                    row = rows.make(first, [])
                    if rows.template is not None:
                        row = rows.template(row, model)
                template[key] = row
            if row is not None:
                e0 = walker.pte_run(page, 1)[0][0]
                if rows.template is not None:
                    rows.spool.append_text(row(page, walker.entry_pfn(e0), e0))
                else:
                    rows.spool.append(rows.like(row, model, page, walker.entry_pfn(e0), e0))

    every = keep_folios or (rows is not None and rows.like is None)
    r = run_scan(prog, EveryFolio() if every else Grouped(jobs), on_folio, possible, on_like,
                 memmap=memmap)
    return Report(
        model=model,
        hvo_enabled=hvo_enabled(prog),
        hstates=r.hstates,
        zones=r.zones,
        scanned=r.scanned,
        unknown=r.unknown,
        folios=folios,
        tails=r.tails,
        findings=r.findings,
        savings=r.savings,
        cut_lists=r.cut_lists,
        broken_lists=r.broken_lists,
        unknown_frames=r.unknown_frames,
        types=cache_get(prog, "types"),
        what_if=what_if.result(h.name for h in r.hstates),
        not_optimized=not_optimized,
        group_tally=groups,
        rows=None if rows is None else rows.spool,
        sweep=r.sweep,
        workers=r.workers,
        memmap=r.memmap,
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
