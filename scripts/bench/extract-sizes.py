#!/usr/bin/env python3
"""Extract size against folio count: the numbers of docs/extract.md.

    .venv/bin/python scripts/bench/extract-sizes.py [RUN_DIR ...] [--scale KERNEL:PAGES[:2M|1G]] [--json]

Each RUN_DIR is a test-bed run (its run.json: "kdump", "vmlinux", "truth").
``--scale 7.2:30000`` boots the test bed's scale scenario (a 256 GiB guest in
a reserve=off backend, ``hugepagesz=2M hugepages=30000``; kept in
``~/.cache/vmemspect/extract-scale/``, reused when there) as
scripts/bench/bench-scale.py does. For each dump: ``vmemspect vmcore DUMP -s
VMLINUX extract OUT --json`` (in its own process, timed), then a row:
folios, the source dump's size, the extract's size (apparent, and on disk:
the bitmap's zero blocks are holes), the fixed part (kallsyms and BTF, the
headers and the bitmap: one bit per page of the machine), what remains
(page tables, kernel data, vmemmap frames) per folio, and whether verify
on the extract (types from its BTF) says what it says on the dump.

Fills: docs/extract.md, "Sizes measured".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import testbed

SCENARIO = {"2M": "scale-2m", "1G": "scale-1g"}


def scale_run(spec: str) -> dict:
    kernel, pages, *rest = spec.split(":")
    size = rest[0] if rest else "2M"
    out = testbed.cache_dir() / "extract-scale" / f"{kernel}-{size}-{pages}"
    saved = out / "run.json"
    if saved.exists():
        return json.loads(saved.read_text())
    hp = "2M" if size == "2M" else "1G"
    return testbed.run_scenario(kernel, SCENARIO[size], out, mem="256G",
                                extra_cmdline=f"hugepagesz={hp} hugepages={pages}",
                                timeout=900.0, dump_timeout=1800.0)


def measure(run: dict, name: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "extract.kdump")
        types = ["-s", run["vmlinux"]] if run.get("vmlinux") else []
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", run["kdump"], *types,
                            "extract", out, "--json"], capture_output=True, text=True)
        seconds = time.monotonic() - t0
        if p.returncode != 0:
            raise SystemExit(f"{name}: extract failed: {p.stderr.strip()}")
        doc = json.loads(p.stdout)
        st = os.stat(out)
        # verify on the extract (types from its BTF) against verify on the dump.
        verify = [subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", dump, *t,
                                  "verify", "--json"], capture_output=True, text=True).stdout
                  for dump, t in ((out, []), (run["kdump"], types))]
        same = json.loads(verify[0]) == json.loads(verify[1])
    ks = [ph for ph in doc["phases"] if ph["traced"] == "kallsyms and BTF"][0]
    layout = doc["layout"]
    fixed = (ks["bytes"] + 24 * ks["pages"] + layout["header_bytes"] + layout["bitmap_bytes"])
    scan_bytes = doc["size"] - fixed
    return {
        "name": name,
        "release": doc["release"],
        "folios": doc["folios"],
        "source_bytes": os.path.getsize(run["kdump"]),
        "extract_bytes": doc["size"],
        "on_disk_bytes": st.st_blocks * 512,
        "max_mapnr": doc["max_mapnr"],
        "pages": doc["pages"],
        "classes": doc["classes"],
        "kallsyms_btf_bytes": ks["bytes"],
        "bitmap_bytes": layout["bitmap_bytes"],
        "bitmap_nonzero_bytes": layout["bitmap_nonzero_bytes"],
        "rest_bytes": scan_bytes,
        "rest_per_folio": round(scan_bytes / doc["folios"]) if doc["folios"] else None,
        "seconds": round(seconds, 1),
        "same_verify": same,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="test-bed run directories")
    ap.add_argument("--scale", action="append", default=[], metavar="KERNEL:PAGES[:2M|1G]")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for d in a.runs:
        run = json.loads((Path(d) / "run.json").read_text())
        rows.append(measure(run, Path(d).name))
        print(json.dumps(rows[-1]), file=sys.stderr)
    for spec in a.scale:
        rows.append(measure(scale_run(spec), f"scale {spec}"))
        print(json.dumps(rows[-1]), file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| dump | kernel | folios | dump size | extract | on disk | kallsyms+BTF | bitmap "
          "| rest | rest per folio | extract time | verify as dump |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    mb = lambda n: f"{n / 1e6:.1f} MB"  # noqa: E731
    for r in rows:
        print(f"| {r['name']} | {r['release'].split('+')[0]} | {r['folios']} | "
              f"{mb(r['source_bytes'])} | {mb(r['extract_bytes'])} | {mb(r['on_disk_bytes'])} | "
              f"{mb(r['kallsyms_btf_bytes'])} | {mb(r['bitmap_bytes'])} | {mb(r['rest_bytes'])} | "
              f"{r['rest_per_folio']} B | {r['seconds']} s | {'same' if r['same_verify'] else 'DIFFERS'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
