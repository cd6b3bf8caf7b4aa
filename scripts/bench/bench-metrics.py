#!/usr/bin/env python3
"""Cost per scrape of ``vmemspect ... metrics``: CPU time of one run, full
and ``--fast``, on a dump of a guest with many 2 MiB pages, and what it
means for a host with 1 TiB of 2 MiB pages scraped every 5 minutes.

usage::

    .venv/bin/python scripts/bench/bench-metrics.py [--kernel 7.2|6.12] [--mem 64G]
                                                    [--hugepages 30000] [--repeat 3] [--json]
                                                    [--run DIR]

The test bed (scenario scale-2m: guest RAM in a reserve=off backend,
init_on_alloc=0) boots the guest with ``hugepagesz=2M hugepages=N`` and HVO
on, dumps it (kdump-zlib, reassembled) into
``${VMEMSPECT_CACHE:-~/.cache/vmemspect}/bench-metrics/``, reused when
there. Then each measure runs in its own process, ``--repeat`` times, the
least CPU time kept (user + system of the child, from wait4()):

  open    vmemspect's open of the dump and the vmlinux, no scan
  full    ``vmemspect vmcore DUMP -s VMLINUX metrics``
  fast    ``vmemspect vmcore DUMP -s VMLINUX metrics --fast``

The cost per 1,000 folios is (full - open) / folios; the projection for
500,000 folios (1 TiB of 2 MiB pages) adds the open cost once.

Fills: docs/performance.md, "Cost per scrape (`metrics`)" (and the cost
quoted in docs/monitoring.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import testbed

OPEN = ("from vmemspect.target import open_vmcore; import sys; "
        "open_vmcore(sys.argv[1], sys.argv[2], 'x86_64')")


def get_dump(series: str, mem: str, pages: int) -> dict:
    out = testbed.cache_dir() / "bench-metrics" / f"{series}-{mem}-{pages}"
    rj = out / "run.json"
    extra = f"hugepagesz=2M hugepages={pages}"
    if rj.is_file():
        run = json.loads(rj.read_text())
        if run.get("kdump") and Path(run["kdump"]).is_file() and extra in run["cmdline"]:
            return run
    return testbed.run_scenario(series, "scale-2m", out, mem=mem, extra_cmdline=extra,
                                timeout=900.0, dump_timeout=1800.0)


def cpu_of(argv: list[str]) -> dict:
    """Run ``argv``; its wall time, user+system CPU time and peak RSS."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if rc not in (0, 1):
        raise SystemExit(f"{argv} failed ({rc}): {err[-2000:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="7.2", choices=["7.2", "6.12"])
    ap.add_argument("--mem", default="64G")
    ap.add_argument("--hugepages", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--run", metavar="DIR", type=Path,
                    help="measure the dump of an existing test-bed run (its run.json), e.g. "
                         "bench-scale.py's 120,000-folio guest, instead of booting one")
    a = ap.parse_args(argv)
    run = json.loads((a.run / "run.json").read_text()) if a.run else \
        get_dump(a.kernel, a.mem, a.hugepages)
    dump, vmlinux = run["kdump"], run["vmlinux"]
    folios = run["truth"]["hstates"]["2048"]["global"]["nr_hugepages"]
    py = sys.executable
    measures = {
        "open": [py, "-c", OPEN, dump, vmlinux],
        "full": [py, "-m", "vmemspect", "vmcore", dump, "-s", vmlinux, "metrics"],
        "fast": [py, "-m", "vmemspect", "vmcore", dump, "-s", vmlinux, "metrics", "--fast"],
    }
    res: dict = {"kernel": run["release"], "folios": folios, "dump_bytes": Path(dump).stat().st_size}
    for name, cmd in measures.items():
        runs = [cpu_of(cmd) for _ in range(a.repeat)]
        res[name] = min(runs, key=lambda r: r["cpu_s"])
    per_1000 = (res["full"]["cpu_s"] - res["open"]["cpu_s"]) / folios * 1000
    if per_1000 <= 0:
        # A dump of a few folios: the scan's CPU drowns in the open's noise,
        # and a negative cost would be projected. Say so instead.
        res["full_cpu_ms_per_1000_folios"] = None
        res["projection_500k_folios"] = None
        res["note"] = (f"the scan's CPU time on {folios} folios is within the noise of the "
                       "open: measure a dump with more folios (the default guest has 30,000)")
    else:
        res["full_cpu_ms_per_1000_folios"] = round(per_1000 * 1000, 2)
        host = 500_000
        full_host = res["open"]["cpu_s"] + per_1000 * host / 1000
        res["projection_500k_folios"] = {
            "full_cpu_s": round(full_host, 1),
            "full_share_of_a_core_at_5min": round(full_host / 300 * 100, 2),
            # --fast does not grow with the folios but with the vmemmap's page
            # tables (1 TiB: 8,192 tables); measured here on this dump's.
            "fast_cpu_s_here": round(res["fast"]["cpu_s"], 2),
        }
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:32} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
