#!/usr/bin/env python3
"""In-process benchmark of ``--jobs``: one open, then, back to back and
``--repeat`` times each, the read floor (each folio's head vmemmap page
read once, nothing else), verify's scan with ``--jobs 1`` and with each
``--jobs N`` (``build_report`` and the JSON), with ``--tables`` the floor
that also reads the PTE tables under the folios' vmemmap once (1 GiB
folios), with ``--every-folio`` the scan that reads every folio in full.
Prints seconds beyond the open, the ratios to the floor and the CPU time
of each worker; checks that every jobs value gives the same verify JSON.

usage::

    .venv/bin/python scripts/bench/bench-jobs.py DUMP [VMLINUX] [--jobs 1,2] [--repeat 3]
                                                 [--tables] [--every-folio] [--json]

The machine's load average is printed with the results: only ratios
measured back to back in one run mean much on a shared machine.

Fills: docs/performance.md, "Parallel (`--jobs`, issue 13)", "1 GiB pages" and
"Live cost (issue 13)".
"""
import argparse
import io
import json
import os
import sys
import time

from vmemspect import parallel, scan
from vmemspect.hugetlb import for_each_hugetlb_folio_record
from vmemspect.pagetable import page_table_walker
from vmemspect.kernel import kernel_model
from vmemspect.documents import verify_doc, write_json
from vmemspect.report import build_report
from vmemspect.target import open_vmcore

from _readfloor import read_floor  # scripts/bench/, beside this script


def table_floor(prog) -> tuple:
    """The read floor with the page tables: the PTE tables under every
    folio's vmemmap, each read once, raw (their addresses found before the
    clock starts), then the heads as :func:`read_floor`. The floor of 1 GiB
    folios, whose 4,096 vmemmap pages span 8 PTE tables each."""
    model = kernel_model(prog)
    walker = page_table_walker(prog)
    tables = set()
    for folio in for_each_hugetlb_folio_record(prog):
        npages = model.vmemmap_pages(folio.order)
        for va in range(folio.page & ~(512 * model.page_size - 1),
                        folio.page + npages * model.page_size, 512 * model.page_size):
            run = walker.pte_run(va, 1)
            if run is not None:
                tables.add(run[1])
    t = time.perf_counter()
    for phys in sorted(tables):
        prog.read(phys, model.page_size, True)
    n = read_floor(prog)
    return time.perf_counter() - t, len(tables), n


def every_folio(prog) -> None:
    """verify's scan reading every folio in full (no grouping): the path a
    live kernel took before grouping was allowed there."""
    real = scan.folio_group_keyer
    scan.folio_group_keyer = lambda *a: (lambda order, page, data: None)
    try:
        build_report(prog, keep_folios=False, jobs=1)
    finally:
        scan.folio_group_keyer = real


def verify_json(prog, jobs: int) -> str:
    """verify's JSON with ``--jobs JOBS``, but for ``workers`` (what
    ``--jobs`` did, the one part that differs by design)."""
    doc = verify_doc(build_report(prog, keep_folios=False, jobs=jobs))
    doc.pop("workers", None)
    out = io.StringIO()
    write_json(doc, out.write)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("vmlinux", nargs="?", help="without it, the types come from the dump's BTF")
    ap.add_argument("--jobs", default="1,2", help="comma-separated jobs values (default 1,2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tables", action="store_true",
                    help="also the floor with the PTE tables under the folios' vmemmap "
                         "(1 GiB folios)")
    ap.add_argument("--every-folio", action="store_true",
                    help="also verify's scan reading every folio in full (no grouping)")
    a = ap.parse_args()
    t = time.perf_counter()
    prog = open_vmcore(a.dump, a.vmlinux)
    opened = time.perf_counter() - t
    jobs = [int(j) for j in a.jobs.split(",")]
    times = {"floor": []}
    for j in jobs:
        times[f"jobs={j}"] = []
    outputs = {}
    cpu = {}
    folios = 0
    for _ in range(a.repeat):
        t = time.perf_counter()
        folios = read_floor(prog)
        times["floor"].append(time.perf_counter() - t)
        if a.tables:
            secs, ntables, _ = table_floor(prog)
            times.setdefault(f"floor+{ntables} tables", []).append(secs)
        if a.every_folio:
            t = time.perf_counter()
            every_folio(prog)
            times.setdefault("every folio", []).append(time.perf_counter() - t)
        for j in jobs:
            t = time.perf_counter()
            c = os.times()
            out = verify_json(prog, j)
            times[f"jobs={j}"].append(time.perf_counter() - t)
            c2 = os.times()
            cpu.setdefault(f"jobs={j}", []).append(
                (round(c2.user + c2.system - c.user - c.system, 3),
                 [round(x, 3) for x in parallel.last_cpu] if j > 1 else []))
            outputs.setdefault(j, out)
            if out != outputs[jobs[0]]:
                print(f"jobs={j}: output differs from jobs={jobs[0]}", file=sys.stderr)
                return 1
    best = {k: min(v) for k, v in times.items()}
    res = {"dump": a.dump, "open_s": round(opened, 3), "folios": folios,
           "load": os.getloadavg(), "cpus": len(os.sched_getaffinity(0)),
           "best_s": {k: round(v, 3) for k, v in best.items()},
           "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "vs_floor": {k: round(v / best["floor"], 3) for k, v in best.items()},
           "cpu_s": cpu,
           "identical": True}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{a.dump}: {folios} folios, open {opened:.2f} s, load {res['load']}, "
              f"{res['cpus']} cpus; outputs identical")
        for k, v in best.items():
            print(f"  {k:10} {v:7.3f} s  {v / best['floor']:.2f}x floor  "
                  f"{v / max(folios, 1) * 1e6:6.1f} us/folio  (all: {res['all_s'][k]})")
        for k, v in cpu.items():
            print(f"  {k:10} CPU s (this process, [each worker]): {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
