"""
Commands
--------

The one list of vmemspect's commands: their names, the line each gets in
``--help``, and the reads each does. The command line builds its commands'
help and checks its click commands against it, drgn's ``%vmemspect`` says
which commands it runs from it, and ``extract`` replays every command's
reads from it, so that an extract serves each command.
"""

import dataclasses
from typing import Callable, Optional, Tuple

from drgn import FaultError, Program

from .documents import folios_doc, report_doc, savings_doc, tails_doc, verify_doc
from .fastscan import fast_scan
from .hvo import decode_page
from .report import Report, build_report

__all__ = ("COMMANDS", "Command", "Replay", "command_names")


class Replay:
    """What the commands' reads share during a replay: the program and the
    full report, built once."""

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self._report: Optional[Report] = None

    @property
    def report(self) -> Report:
        if self._report is None:
            self._report = build_report(self.prog)
        return self._report


@dataclasses.dataclass(frozen=True)
class Command:
    """One command after the target."""

    name: str
    #: Its line in ``vmemspect --help`` (after the name).
    summary: str
    #: The reads the command does, replayed by ``extract``; None for a
    #: command that reads nothing of its own (``extract`` itself).
    replay: Optional[Callable[[Replay], None]]


def _decode_reads(r: Replay) -> None:
    """decode of one head, first tail and (pointer form) fake head per
    hstate, node and zone: what a user decodes first."""
    model = r.report.model
    seen = set()
    for fv in r.report.folios:
        f = fv.folio
        key = (f.hstate, f.nid, f.zone_idx)
        if key in seen:
            continue
        seen.add(key)
        for pfn in (f.pfn, f.pfn + 1, f.pfn + model.pages_per_vmemmap_page):
            try:
                decode_page(r.prog, model.page_address(pfn))
            except FaultError:
                pass


#: Every command, in the order of ``--help``; the extract replays them in
#: this order too.
COMMANDS: Tuple[Command, ...] = (
    Command("report", "the full report (the default command)",
            lambda r: report_doc(r.report)),
    Command("folios", "a row per hugetlb folio (filters: --hstate, --node, --state, --optimized)",
            lambda r: folios_doc(r.report, list(r.report.folios))),
    Command("tails", "shared tail frames (7.1+) or each folio's aliased frame (before 7.1)",
            lambda r: tails_doc(r.report)),
    Command("decode", "decode one struct page's compound_info/compound_head", _decode_reads),
    Command("verify", "check every HVO invariant; exit 1 if any does not hold",
            lambda r: verify_doc(build_report(r.prog, keep_folios=False))),
    Command("extract", "write a small vmcore of only what vmemspect reads (OUT)", None),
    Command("savings", "vmemmap saved, and what each HVO scheme would take (what-if)",
            lambda r: savings_doc(r.report)),
    Command("metrics", "Prometheus metrics (--textfile PATH for node_exporter, --fast)",
            lambda r: fast_scan(r.prog)),
)


def command_names() -> Tuple[str, ...]:
    """The names of every command, in ``--help`` order."""
    return tuple(c.name for c in COMMANDS)
