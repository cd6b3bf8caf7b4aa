#!/usr/bin/env python3
"""Make fixtures/: extracts of real test-bed guests, with their ground truth.

    .venv/bin/python scripts/make-fixtures.py [--reuse] [--only NAME ...]

For each fixture below, boot the kernel in the scenario under QEMU
(scripts/testbed, runs kept in ~/.cache/vmemspect/fixture-runs/NAME), write
``vmemspect vmcore DUMP -s VMLINUX extract fixtures/NAME.kdump`` (the kernel's
BTF and kallsyms inside, so no debug package is needed to read it), and
beside it NAME.json: what the guest said about itself (the run's "truth"),
the kernel id, release and form, and the sizes of the source dump and the
extract. ``--reuse`` takes an earlier run of the same fixture when there is
one. Never writes a full vmcore into fixtures/.

tests/test_fixtures.py reads them (no QEMU, no download); scripts/demo.sh
shows them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT / "scripts"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import testbed  # noqa: E402
from vmemspect.extract import extract, extract_doc  # noqa: E402
from vmemspect.target import open_vmcore  # noqa: E402

#: (kernel id, scenario) of every fixture; the file is fixtures/ID-SCENARIO.*
FIXTURES = (
    ("7.2", "numa"),      # mask form, two nodes, two zones, a 1 GiB folio
    ("6.12", "numa"),     # pointer form, the same guest
    ("7.2", "mixed"),     # HVO switched off half way: optimized and not
    ("6.12", "mixed"),
    ("7.2", "hvo-off"),   # HVO off at boot: nothing optimized, mask form all the same
    ("6.1", "hvo-2m"),    # Debian 12: page-based hugetlb, no memmap counters
)
#: The most an extract of a test-bed guest may take (docs/extract.md).
MAX_BYTES = 8 << 20


def name_of(kernel: str, scenario: str) -> str:
    return f"{kernel}-{scenario}"


def boot(kernel: str, scenario: str, reuse: bool) -> dict:
    out = testbed.cache_dir() / "fixture-runs" / name_of(kernel, scenario)
    saved = out / "run.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    try:
        return testbed.run_scenario(kernel, scenario, out)
    except testbed.TestbedError as e:
        # TCG oopses a guest at boot now and then (docs/testbed.md): once more.
        print(f"make-fixtures: {kernel} {scenario} failed, booting again: "
              f"{str(e).splitlines()[0]}", file=sys.stderr)
        return testbed.run_scenario(kernel, scenario, out)


def make(kernel: str, scenario: str, dest: Path, reuse: bool) -> dict:
    name = name_of(kernel, scenario)
    t0 = time.monotonic()
    run = boot(kernel, scenario, reuse)
    truth = run["truth"]
    if truth.get("errors"):
        raise SystemExit(f"make-fixtures: {name}: the guest reported errors: {truth['errors']}")
    out = dest / f"{name}.kdump"
    tmp = dest / f".{name}.kdump.tmp"
    source = open_vmcore(run["kdump"], run.get("vmlinux"))
    doc = extract_doc(extract(source, str(tmp)))
    if doc["size"] > MAX_BYTES:
        tmp.unlink()
        raise SystemExit(f"make-fixtures: {name}: extract of {doc['size']} bytes, "
                         f"more than {MAX_BYTES}")
    os.replace(tmp, out)
    doc["path"] = f"fixtures/{out.name}"
    doc.pop("seconds")  # the same fixture from the same run, byte for byte
    k = testbed.KERNELS[kernel]
    meta = {
        "name": name,
        "kernel": kernel,
        "release": run["release"],
        "form": k.form,
        "scenario": scenario,
        "cmdline": run["cmdline"],
        "source_dump": {"format": run.get("kdump_format"), "bytes": os.path.getsize(run["kdump"])},
        "extract": doc,
        "truth": truth,
    }
    (dest / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"{name}: {doc['size']:>9} bytes from a {meta['source_dump']['bytes']}-byte dump, "
          f"{doc['folios']} folios, {doc['pages']} pages ({time.monotonic() - t0:.0f} s)")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", action="store_true", help="take an earlier run of a fixture")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these (e.g. 7.2-numa)")
    ap.add_argument("--out", default=str(ROOT / "fixtures"), help="directory (default fixtures/)")
    a = ap.parse_args(argv)
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [(k, s) for k, s in FIXTURES if not a.only or name_of(k, s) in a.only]
    if a.only and len(wanted) != len(a.only):
        known = ", ".join(name_of(k, s) for k, s in FIXTURES)
        raise SystemExit(f"make-fixtures: unknown fixture in {a.only}; have {known}")
    for k, s in wanted:
        make(k, s, dest, a.reuse)
    total = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    print(f"fixtures: {total} bytes in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
