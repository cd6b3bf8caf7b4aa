#!/usr/bin/env python3
"""Make fixtures/: extracts of real test-bed guests, with their ground truth.

    .venv/bin/python scripts/make-fixtures.py [--reuse | --runs DIR] [--only NAME ...]

For each fixture below, boot the kernel in the scenario under QEMU
(scripts/testbed, runs kept in ~/.cache/vmemspect/fixture-runs/NAME), write
``vmemspect vmcore DUMP -s VMLINUX extract fixtures/NAME.kdump`` (the kernel's
BTF and kallsyms inside, so no debug package is needed to read it), and
beside it NAME.json: what the guest said about itself (the run's "truth"),
the kernel id, architecture, release and form, and the sizes of the source
dump and the extract. ``--reuse`` takes an earlier run of the same fixture
when there is one; ``--runs DIR`` takes the run DIR/NAME that an earlier
test session left (e.g. ``VMEMSPECT_TEST_RUNS``'s test-runs-ci4) and never
boots. Never writes a full vmcore into fixtures/.

riscv64 runs have no vmlinux (Debian ships no riscv64 -dbg: the types come
from the kernel's BTF) and QEMU's riscv64 dumps no VMCOREINFO note: the
extract is made from the run's ELF dump with the VMCOREINFO text the test
bed saved (``--vmcoreinfo``), and holds that VMCOREINFO, so it opens without.
7.2-riscv64-mixed is one of fixtures/; ON_REQUEST lists fixtures made
only when named with --only, for which fixtures/ has no room within
tests/unit/test_fixtures.py's 20 MB (docs/extract.md, "Fixtures").

tests/unit/test_fixtures.py reads them (no QEMU, no download); scripts/demo.sh
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
import testbed
from vmemspect.extract import extract, extract_doc
from vmemspect.target import open_vmcore

#: (kernel id, scenario) of every fixture; the file is fixtures/ID-SCENARIO.*
FIXTURES = (
    ("7.2", "numa"),      # mask form, two nodes, two zones, a 1 GiB folio
    ("6.12", "numa"),     # pointer form, the same guest
    ("7.2", "mixed"),     # HVO switched off half way: optimized and not
    ("6.12", "mixed"),
    ("6.1", "hvo-2m"),    # Debian 12: page-based hugetlb, no memmap counters
    ("7.2-riscv64", "mixed"),  # riscv64: mask form, Sv48, tails writable (no PAGE_KERNEL_RO)
)
#: Fixtures made only on request (--only): they do not fit in fixtures/'
#: 20 MB beside the ones above (docs/extract.md, "Fixtures").
ON_REQUEST = (
    ("6.12-riscv64", "mixed"),  # pointer form, Sv48, HVO switched off half way
    ("7.2", "hvo-off"),   # HVO off at boot: nothing optimized, mask form all the same
)
#: The most an extract of a test-bed guest may take (docs/extract.md).
MAX_BYTES = 8 << 20


def name_of(kernel: str, scenario: str) -> str:
    return f"{kernel}-{scenario}"


def boot(kernel: str, scenario: str, reuse: bool, runs: Path | None = None) -> dict:
    if runs is not None:
        saved = runs / name_of(kernel, scenario) / "run.json"
        if not saved.exists():
            raise SystemExit(f"make-fixtures: no run {saved} (--runs never boots)")
        return json.loads(saved.read_text())
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


def source_of(run: dict) -> tuple:
    """The dump to extract from, its format and the VMCOREINFO file it
    needs: the kdump when the run has one, else (riscv64: QEMU's kdump
    there has no VMCOREINFO and no machine) the ELF dump with the
    VMCOREINFO text the test bed saved."""
    if run.get("kdump"):
        return run["kdump"], run.get("kdump_format"), None
    info = run.get("vmcoreinfo") or {}
    return run["elf"], run.get("elf_format", "elf"), info.get("path")


def make(kernel: str, scenario: str, dest: Path, reuse: bool,
         runs: Path | None = None) -> dict:
    name = name_of(kernel, scenario)
    t0 = time.monotonic()
    run = boot(kernel, scenario, reuse, runs)
    truth = run["truth"]
    if truth.get("errors"):
        raise SystemExit(f"make-fixtures: {name}: the guest reported errors: {truth['errors']}")
    out = dest / f"{name}.kdump"
    tmp = dest / f".{name}.kdump.tmp"
    dump, dump_format, vmcoreinfo = source_of(run)
    source = open_vmcore(dump, run.get("vmlinux"), vmcoreinfo=vmcoreinfo)
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
        "arch": k.arch,
        "release": run["release"],
        "form": k.form,
        "scenario": scenario,
        "cmdline": run["cmdline"],
        "source_dump": {"format": dump_format, "bytes": os.path.getsize(dump)},
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
    ap.add_argument("--runs", metavar="DIR",
                    help="take the runs DIR/NAME of a test session; never boot")
    ap.add_argument("--only", nargs="+", metavar="NAME",
                    help="only these (e.g. 7.2-numa; the riscv64 ones only so)")
    ap.add_argument("--out", default=str(ROOT / "fixtures"), help="directory (default fixtures/)")
    a = ap.parse_args(argv)
    dest = Path(a.out)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [(k, s) for k, s in FIXTURES if not a.only or name_of(k, s) in a.only]
    wanted += [(k, s) for k, s in ON_REQUEST if a.only and name_of(k, s) in a.only]
    if a.only and len(wanted) != len(a.only):
        known = ", ".join(name_of(k, s) for k, s in FIXTURES + ON_REQUEST)
        raise SystemExit(f"make-fixtures: unknown fixture in {a.only}; have {known}")
    for k, s in wanted:
        make(k, s, dest, a.reuse, Path(a.runs) if a.runs else None)
    total = sum(p.stat().st_size for p in dest.iterdir() if p.is_file())
    print(f"fixtures: {total} bytes in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
