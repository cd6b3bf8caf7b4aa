#!/usr/bin/env python3
"""What the whole-vmemmap sweep (vmemspect.sweep) adds to a scan, measured
in one process on one open dump, so that the load of the machine cancels
out: ``build_report(keep_folios=False)`` (verify's scan) with the sweep and
with it replaced by a no-op, alternately, ``--repeat`` times each, and the
read floor (each folio's head vmemmap page read once, baseline-drgn-scan's
``--floor``) between them, each timed in CPU seconds of this process
(``--jobs 1``: a busy machine's other load does not count; the pair counts
the page-table walker keeps as it reads each PTE table, about 6 µs a
table, are in both). Prints the best of each, the sweep's cost in
absolute terms, per PTE table and as a fraction of the floor, and the
sweep's own counts.

    .venv/bin/python scripts/bench/bench-sweep.py DUMP VMLINUX [--jobs 1] [--repeat 5]

Fills: docs/performance.md, "The whole-vmemmap sweep and the scan engine
(issue 19)".
"""
import argparse
import sys
import time

from vmemspect import sweep as sweep_mod
from vmemspect.hugetlb import zones
from vmemspect.report import build_report
from vmemspect.target import open_vmcore

from _readfloor import read_floor  # scripts/bench/, beside this script


def floor(prog) -> float:
    """CPU seconds of the read floor (:func:`read_floor`)."""
    t = time.process_time()
    read_floor(prog)
    return time.process_time() - t


class NoSweep(sweep_mod.VmemmapSweep):
    def add_like(self, *a):
        pass

    def add_record(self, *a):
        pass

    def finish(self, shared, lists_incomplete=False):
        return sweep_mod.SweepResult(0, 0, 0, [], lists_incomplete)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("vmlinux", nargs="?")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    prog = open_vmcore(a.dump, a.vmlinux)
    zones(prog)
    real = sweep_mod.VmemmapSweep
    import vmemspect.scan as scan_mod
    times = {"floor": [], "with sweep": [], "without": []}
    last = None
    for _ in range(a.repeat):
        times["floor"].append(floor(prog))
        for name, cls in (("with sweep", real), ("without", NoSweep)):
            scan_mod.VmemmapSweep = cls
            t = time.process_time()
            r = build_report(prog, keep_folios=False, jobs=a.jobs)
            times[name].append(time.process_time() - t)
            if cls is real:
                last = r
        scan_mod.VmemmapSweep = real
    best = {k: min(v) for k, v in times.items()}
    extra = best["with sweep"] - best["without"]
    s = last.sweep
    print(f"{a.dump}: {last.scanned} folios, --jobs {a.jobs}, best of {a.repeat}")
    for k, v in best.items():
        print(f"  {k:11} {v:.3f} s CPU" + (f"  ({v / best['floor']:.2f}x the floor)"
                                       if k != "floor" else ""))
    print(f"  sweep: {extra * 1000:+.0f} ms ({extra / best['floor'] * 100:+.1f} % of the floor), "
          f"{s.tables} PTE tables ({extra / max(s.tables, 1) * 1e6:.1f} us a table), "
          f"{s.slow_tables} read entry by entry, {len(s.unlisted)} unlisted ranges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
