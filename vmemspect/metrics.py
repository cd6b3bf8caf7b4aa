"""
Prometheus metrics
------------------

``vmemspect live metrics`` and ``vmemspect vmcore DUMP metrics``: one scan
as Prometheus metrics, in the text exposition format, made by
``prometheus_client`` (a :class:`~prometheus_client.CollectorRegistry` per
run, :func:`~prometheus_client.generate_latest`, and
:func:`~prometheus_client.write_to_textfile` for node_exporter's textfile
collector: a temporary file beside the target, then a rename). Every metric
is a gauge (a scan's figures are states, not running totals); names and
units follow Prometheus' conventions (``docs/monitoring.md`` lists them).

A run that fails still publishes: ``vmemspect_scan_success 0`` with the
reason as a label, the exit status, and the time of the last success that
the previous file held, so that a stale file never looks fresh.
"""

import collections
import dataclasses
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import drgn
from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from . import __version__
from .checks import CHECKS, Finding
from .errors import EXIT_FINDINGS, EXIT_OK, exit_status
from .fastscan import DEFAULT_SAMPLE, FastScan, fast_scan
from .hvo import FolioVmemmap
from .optimizable import REASONS, hvo_context, is_optimizable, not_optimized_reason
from .progcache import cache_get
from .report import Report, build_report

__all__ = (
    "FolioTally",
    "Scrape",
    "failure_registry",
    "metrics_registry",
    "publish",
    "scrape",
    "write_metrics",
)

#: The metric that carries the last successful scan's time across failures.
LAST_SUCCESS = "vmemspect_last_success_timestamp_seconds"


class FolioTally:
    """
    Folio counts per hstate, node, zone, state and HVO state, gathered
    folio by folio (the scan's progress callback), so that a scan for
    metrics keeps no folio records.

    HVO state: ``optimized`` (vmemmap remapped), ``not_optimized`` (HVO
    could have), ``not_optimizable`` (never: :mod:`vmemspect.optimizable`),
    ``unknown`` (not readable).
    """

    def __init__(self, prog: drgn.Program) -> None:
        self.prog = prog
        self.ctx = hvo_context(prog)
        self.cache: Dict[int, bytes] = {}
        self.counts: Dict[Tuple[str, int, str, str, str], int] = collections.Counter()

    def add(self, fv: FolioVmemmap, n: int = 1) -> None:
        """Count ``fv`` (``n`` folios like it)."""
        reason = not_optimized_reason(self.prog, self.ctx, fv, self.cache)
        if reason is None:
            hvo = "optimized"
        elif reason == "unknown":
            hvo = "unknown"
        else:
            hvo = "not_optimized" if is_optimizable(reason) else "not_optimizable"
        f = fv.folio
        state = "free" if f.state == "free" else "in_use"
        self.counts[(f.hstate, f.nid, f.zone_name, state, hvo)] += n


@dataclasses.dataclass
class Scrape:
    """One successful run: a full scan (``report`` and ``folios``) or a fast one."""

    mode: str
    started: float
    duration: float
    cpu: float
    types: Optional[str]
    report: Optional[Report] = None
    folios: Optional[FolioTally] = None
    fast: Optional[FastScan] = None

    @property
    def findings(self) -> List[Finding]:
        return self.report.findings if self.report is not None else self.fast.findings


def scrape(prog_opener: Callable[[], drgn.Program], fast: bool = False,
           sample: int = DEFAULT_SAMPLE) -> Scrape:
    """
    Open the program and scan it: every folio (the report's scan, keeping
    no records), or with ``fast`` the counters, the vmemmap's read-only PTEs
    and ``sample`` folios per hstate (:mod:`vmemspect.fastscan`). The time
    and CPU time include the opening.
    """
    started, t0, c0 = time.time(), time.monotonic(), time.process_time()
    prog = prog_opener()
    if fast:
        result = Scrape("fast", started, 0.0, 0.0, None, fast=fast_scan(prog, sample))
    else:
        tally = FolioTally(prog)
        report = build_report(prog, progress=tally.add, keep_folios=False)
        result = Scrape("full", started, 0.0, 0.0, None, report=report, folios=tally)
    result.types = cache_get(prog, "types")
    result.duration = time.monotonic() - t0
    result.cpu = time.process_time() - c0
    return result


def _gauge(name: str, doc: str, labels: Iterable[str] = (),
           samples: Iterable[Tuple[Iterable[str], float]] = ()) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        g.add_metric([str(v) for v in values], value)
    return g


def _one(name: str, doc: str, value: Optional[float]) -> List[Metric]:
    """A gauge without labels, or nothing when the value is unknown."""
    return [] if value is None else [_gauge(name, doc, samples=[((), float(value))])]


def _status(success: bool, reason: str, exit_status: int, started: float,
            duration: float, cpu: float, last_success: Optional[float]) -> List[Metric]:
    return [
        _gauge("vmemspect_scan_success", "1 if the last run scanned the kernel, 0 if it failed "
               "(reason: unusable_input, missing_memory, internal_error, interrupted)",
               ["reason"], [((reason,), 1.0 if success else 0.0)]),
        _gauge("vmemspect_exit_status", "Exit status of the last run (0 ok, 1 findings, "
               "2 unusable input, 3 bug in vmemspect)", samples=[((), exit_status)]),
        _gauge("vmemspect_scan_timestamp_seconds", "When the last run started (Unix time)",
               samples=[((), started)]),
        _gauge("vmemspect_scan_duration_seconds", "Wall time of the last run, opening the "
               "kernel or dump included", samples=[((), duration)]),
        _gauge("vmemspect_scan_cpu_seconds", "CPU time of the last run, opening the kernel "
               "or dump included", samples=[((), cpu)]),
    ] + _one(LAST_SUCCESS, "When the last successful run started (Unix time)", last_success)


def _counts(name: str, doc: str, label: str, keys: Iterable[str],
            found: Iterable[str]) -> GaugeMetricFamily:
    """A gauge per key (every known key, 0 when none) counting ``found``."""
    c = collections.Counter(found)
    return _gauge(name, doc, [label], [((k,), c.get(k, 0)) for k in
                                       list(dict.fromkeys(list(keys) + sorted(c)))])


def _kernel_families(s: Scrape) -> List[Metric]:
    """What does not depend on the mode: the kernel, its counters."""
    src = s.report if s.report is not None else s.fast
    model = src.model
    hvo_on = src.hvo_enabled
    info = InfoMetricFamily("vmemspect", "The kernel scanned and how (value always 1)")
    info.add_metric([], {
        "version": __version__, "mode": s.mode, "release": model.release,
        "arch": model.arch, "form": model.form, "types": s.types or "",
        "scheme": "" if not model.hvo_built else model.form,
    })
    hstates = src.hstates
    out: List[Metric] = [
        info,
        _gauge("vmemspect_hvo_built", "1 if the kernel has HVO built in "
               "(CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP)", samples=[((), model.hvo_built)]),
        _gauge("vmemspect_kernel_hugepages", "Huge pages per hstate and node by the kernel's "
               "own counters (nr_huge_pages_node, free_huge_pages_node)",
               ["hstate", "node", "state"],
               [((h.name, nid, st), v) for h in hstates
                for nid, (nr, free, _sur) in sorted(h.per_node.items())
                for st, v in (("free", free), ("in_use", nr - free))]),
    ]
    out += _one("vmemspect_hvo_enabled", "vm.hugetlb_optimize_vmemmap now (1 on, 0 off); "
                "absent without HVO", None if hvo_on is None else int(hvo_on))
    ps = model.page_size
    kernel_saved = src.kernel_saved_pages if s.fast is not None else s.report.savings.kernel_saved_pages
    optimized = src.kernel_optimized_folios if s.fast is not None \
        else s.report.savings.kernel_optimized_folios
    out += _one("vmemspect_kernel_vmemmap_saved_bytes", "Vmemmap HVO freed by the kernel's "
                "memmap counters: memmap of all present sections less nr_memmap_boot_pages "
                "+ nr_memmap_pages (Linux 6.10+)",
                None if kernel_saved is None else kernel_saved * ps)
    out += _one("vmemspect_kernel_optimized_folios", "Folios the kernel counts as optimized "
                "(hugetlb_optimize_vmemmap_key, Linux 5.18-7.0)", optimized)
    return out


def _full_families(s: Scrape) -> List[Metric]:
    r = s.report
    sv = r.savings
    ps = sv.page_size
    w = r.what_if
    folios = _gauge("vmemspect_hugetlb_folios", "Hugetlb folios found on the hstates' lists, "
                    "by hstate, node, zone, state (free, in_use) and HVO state (optimized, "
                    "not_optimized, not_optimizable, unknown)",
                    ["hstate", "node", "zone", "state", "hvo"],
                    sorted(((k, v) for k, v in s.folios.counts.items()), key=lambda kv: str(kv[0])))
    out: List[Metric] = [
        folios,
        _gauge("vmemspect_vmemmap_saved_bytes", "Vmemmap HVO freed, from the page tables: "
               "(vmemmap pages - 1) per folio whose vmemmap is remapped",
               samples=[((), sv.saved_pages * ps)]),
        _gauge("vmemspect_vmemmap_possible_saved_bytes", "Vmemmap HVO would free if every "
               "folio it can optimize were optimized", samples=[((), sv.possible_pages * ps)]),
        _gauge("vmemspect_vmemmap_shared_frame_bytes", "Shared tail frames of the mask form "
               "(vmemmap_tails[], one per node, zone and order)",
               samples=[((), sv.shared_frame_pages * ps)]),
        _counts("vmemspect_findings", "Findings of the last scan by check (docs/checks.md)",
                "check", CHECKS, (f.check for f in r.findings)),
        _counts("vmemspect_transient_findings", "Findings of a live scan that did not hold "
                "on every re-read (not violations), by check", "check", CHECKS,
                (f.check for f in r.transient)),
        _gauge("vmemspect_unknown", "What the scan could not read: folios, hstate lists, "
               "frames", ["kind"], [(("folios",), len(r.unknown)),
                                    (("lists",), len(r.cut_lists)),
                                    (("frames",), len(r.unknown_frames))]),
        _gauge("vmemspect_checked_folios", "Folios checked in full",
               samples=[((), r.scanned - len(r.unknown))]),
        _gauge("vmemspect_unlisted_vmemmap_ranges", "Remapped vmemmap ranges of no folio on "
               "the hstate lists, by what heads them (off_lists: a hugetlb folio on no list; "
               "not_hugetlb: none; isolated: a folio isolated for migration, device: ZONE_DEVICE memory; those two are not findings)",
               ["kind"], [((kind.replace("-", "_"),),
                           sum(1 for x in (r.sweep.unlisted if r.sweep else []) if x.kind == kind))
                          for kind in ("off-lists", "not-hugetlb", "isolated", "device", "unknown",
                                       "freeing")]),
        _gauge("vmemspect_unlisted_vmemmap_saved_bytes", "Vmemmap freed in those ranges",
               samples=[((), sv.unlisted_pages * ps)]),
    ]
    out += _one("vmemspect_vmemmap_saved_kernel_agrees", "1 if vmemspect's count of the "
                "savings equals the kernel's own, 0 if not; absent if the kernel keeps none",
                None if sv.kernel_agrees is None else int(sv.kernel_agrees))
    if w is not None:
        out.append(_gauge(
            "vmemspect_vmemmap_whatif_bytes", "Vmemmap the folios HVO can optimize would take "
            "under each scheme (none, two_page: 5.14-5.17, pointer: 5.18-7.0, mask: 7.1+) and "
            "as measured now, by hstate", ["hstate", "scheme"],
            [((row.hstate, k), v * ps) for row in w.rows for k, v in row.pages.items()]))
        out.append(_gauge(
            "vmemspect_not_optimized_folios", "Folios whose vmemmap is not remapped, by reason "
            "(docs/savings.md); optimizable=false: HVO can never optimize them",
            ["reason", "optimizable"],
            [((k, str(REASONS[k][0]).lower()), w.reasons.get(k, 0)) for k in REASONS]))
    return out


def _fast_families(s: Scrape) -> List[Metric]:
    f = s.fast
    ps = f.model.page_size
    out: List[Metric] = [
        _gauge("vmemspect_vmemmap_saved_bytes", "Vmemmap HVO freed, from the page tables: "
               "remapped vmemmap PTEs (fast mode: read-only ones; riscv64: ones aliasing "
               "a neighbour or a shared frame)", samples=[((), f.readonly_pages * ps)]),
        _gauge("vmemspect_vmemmap_possible_saved_bytes", "Vmemmap HVO would free if every "
               "huge page the kernel counts were optimized (fast mode: folios HVO can never "
               "optimize are not told apart)", samples=[((), f.possible_pages * ps)]),
        _gauge("vmemspect_vmemmap_shared_frame_bytes", "Shared tail frames of the mask form "
               "(vmemmap_tails[], one per node, zone and order)",
               samples=[((), f.shared_frames * ps)]),
        _counts("vmemspect_findings", "Findings on the sampled folios and the shared tail "
                "frames, by check (fast mode)", "check", CHECKS, (x.check for x in f.findings)),
        _gauge("vmemspect_unknown", "What the scan could not read (fast mode: sampled folios, "
               "vmemmap regions)", ["kind"], [(("folios",), f.unknown),
                                              (("vmemmap_regions",), f.missing_regions)]),
        _gauge("vmemspect_checked_folios", "Folios checked in full (fast mode: the sample)",
               samples=[((), f.sampled - f.unknown)]),
    ]
    kernel_saved = f.kernel_saved_pages
    out += _one("vmemspect_vmemmap_saved_kernel_agrees", "1 if vmemspect's count of the "
                "savings equals the kernel's own, 0 if not; absent if the kernel keeps none",
                None if kernel_saved is None else int(kernel_saved == f.readonly_pages))
    return out


class _Families:
    """A collector that yields families made beforehand (one registry per run)."""

    def __init__(self, families: List[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _registry(families: List[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return registry


def metrics_registry(s: Scrape) -> CollectorRegistry:
    """The metrics of a successful run."""
    findings = len(s.findings)
    families = _kernel_families(s)
    families += _full_families(s) if s.mode == "full" else _fast_families(s)
    families += _status(True, "", EXIT_FINDINGS if findings else EXIT_OK, s.started,
                        s.duration, s.cpu, s.started)
    return _registry(families)


def failure_registry(e: BaseException, started: float, duration: float, cpu: float,
                     last_success: Optional[float]) -> CollectorRegistry:
    """The metrics of a failed run: success 0 and why, and the time of the
    last success (from the previous file), so the failure shows."""
    status, reason = exit_status(e)
    return _registry(_status(False, reason, status, started, duration, cpu, last_success))


def previous_success(path: Optional[str]) -> Optional[float]:
    """The last success time a previous textfile at ``path`` holds, if any."""
    if not path:
        return None
    try:
        with open(path) as f:
            text = f.read()
        for family in text_string_to_metric_families(text):
            if family.name == LAST_SUCCESS and family.samples:
                return family.samples[0].value
    except (OSError, ValueError):
        pass
    return None


def publish(registry: CollectorRegistry, textfile: Optional[str], out: Any) -> None:
    """Write the exposition: to ``textfile`` atomically (a temporary file in
    its directory, then a rename, as node_exporter's textfile collector
    needs), else to the binary stream ``out``."""
    if textfile:
        write_to_textfile(textfile, registry)
    else:
        out.write(generate_latest(registry))
        out.flush()


def write_metrics(prog_opener: Callable[[], drgn.Program], textfile: Optional[str], out: Any,
                  fast: bool = False, sample: int = DEFAULT_SAMPLE) -> int:
    """
    Scan and publish the metrics; return the number of findings. On any
    failure publish the failure metrics, then raise it again (the command
    line turns it into its message and exit status).
    """
    started, t0, c0 = time.time(), time.monotonic(), time.process_time()
    try:
        s = scrape(prog_opener, fast, sample)
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        publish(failure_registry(e, started, time.monotonic() - t0, time.process_time() - c0,
                                 previous_success(textfile)), textfile, out)
        raise
    publish(metrics_registry(s), textfile, out)
    return len(s.findings)
