#!/usr/bin/env python3
"""
The scenario × dump source × kernel table of docs/kernels.md, from the
JUnit XML of a test run (``scripts/test.sh --full --junitxml=FILE``):
every real-kernel test is counted in the cell of its kernel and of its
scenario and dump source, read from the test's module and parameters.

    .venv/bin/python scripts/matrix-table.py FILE.xml > table.md

A cell says how many of its tests passed ("✓ 8/8", "✗ 6/8"); "-" where
nothing ran.
"""
from __future__ import annotations

import collections
import sys
import xml.etree.ElementTree as ET

import testbed

KERNEL_IDS = sorted(testbed.KERNELS, key=len, reverse=True)  # "6.12-bpo" before "6.12"
SCENARIOS = ("hvo-2m", "hvo-1g", "hvo-off", "mixed", "numa", "rare")
# Module -> (dump source, scenario when the test id does not say).
MODULES = {
    # riscv64 kernels' cases of test_real_kernels read QEMU's ELF (below).
    "test_real_kernels": ("QEMU kdump", None),
    "test_real_rare": ("QEMU kdump", "rare"),
    "test_real_corruption": ("QEMU ELF, altered", "hvo-2m"),
    "test_partial_dumps": ("QEMU ELF, holes", "hvo-2m"),
    "test_fuzz": ("QEMU ELF, fuzzed", "hvo-2m"),
    "test_real_kdump": ("kdump capture", "hvo-2m"),
    "test_live": ("live (/proc/kcore)", "live"),
    "test_qemu_attach": ("live (drgn --qemu)", "hvo-2m"),
    "test_riscv": ("QEMU ELF + vmcoreinfo.txt", None),
}


def cell_of(classname: str, name: str):
    module = classname.rsplit(".", 1)[-1]
    if module not in MODULES or "[" not in name:
        return None
    source, scenario = MODULES[module]
    if module == "test_riscv" and name.startswith("test_live"):
        source, scenario = "live (/proc/kcore)", "live"
    params = name[name.index("[") + 1:-1]
    kernel = next((k for k in KERNEL_IDS if params == k or params.startswith(k + "-")), None)
    if kernel is None:
        return None
    if module == "test_real_kernels" and testbed.kernel(kernel).arch == "riscv64":
        source = MODULES["test_riscv"][0]
    rest = params[len(kernel) + 1:]
    scen = next((s for s in SCENARIOS if rest.startswith(s)), scenario)
    if module == "test_real_kdump":
        # capture-ZSTD-newest: the compression and the makedumpfile.
        source = f"kdump capture: {rest.replace('capture-', '')}"
    return kernel, scen, source


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: .venv/bin/python scripts/matrix-table.py FILE.xml > table.md", file=sys.stderr)
        return 2
    root = ET.parse(argv[0]).getroot()
    cells = collections.defaultdict(lambda: [0, 0])
    for tc in root.iter("testcase"):
        c = cell_of(tc.get("classname", ""), tc.get("name", ""))
        if c is None:
            continue
        if tc.find("skipped") is not None:
            continue
        failed = tc.find("failure") is not None or tc.find("error") is not None
        cells[c][1] += 1
        cells[c][0] += not failed
    rows = sorted({(scen, src) for _, scen, src in cells},
                  key=lambda c: (SCENARIOS.index(c[0]) if c[0] in SCENARIOS else 99, c[1]))
    kernels = list(testbed.KERNELS)
    print("| scenario | dump source | " + " | ".join(kernels) + " |")
    print("|---|---|" + "---|" * len(kernels))
    for scen, src in rows:
        row = []
        for k in kernels:
            ok, n = cells.get((k, scen, src), (0, 0))
            row.append("-" if n == 0 else f"{'✓' if ok == n else '✗'} {ok}/{n}")
        print(f"| {scen} | {src} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
