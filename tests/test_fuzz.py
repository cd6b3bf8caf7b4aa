"""
Fuzzing verify on real dumps (scripts/fuzz-dumps.py): bit flips in the
vmemmap PTE tables, folios' head frames, shared tail frames, hstates and
zones of a real ELF dump of each kernel. Every run ends within its bound,
exits 0, 1 or 2, prints a few lines per finding, and every flip of a bit a
check depends on is found; one run in five also verifies with ``--jobs 2``
and must write the same JSON as with one process. 500 runs per kernel on
every commit (they take seconds: one open program, the flipped page laid
over the dump); the full matrix run (VMEMSPECT_FULL=1) does 2,000 per
kernel with other seeds.
"""

import re
import subprocess
import sys

import pytest

from conftest import FULL, KERNELS, ROOT, real_run


@pytest.mark.parametrize("series", KERNELS)
def test_fuzz_verify(series, tmp_path):
    run = real_run(series, "hvo-2m", elf=True)
    runs, seed = (2000, 7) if FULL else (500, 1)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz-dumps.py"), "--dump",
                        run["elf"], "-s", run["vmlinux"], "--runs", str(runs), "--seed",
                        str(seed), "--json", str(tmp_path / "runs.json")],
                       capture_output=True, text=True, timeout=1800)
    print(p.stdout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    head = p.stdout.splitlines()[0]
    assert re.match(rf"{runs} runs on .* exit codes \{{", head), head
    # Every 5th run also with --jobs 2 (workers read the heads): same JSON.
    m = re.search(r"--jobs 2 against --jobs 1: (\d+) of (\d+) runs the same JSON", p.stdout)
    assert m and m[1] == m[2] == str(runs // 5), p.stdout
    # Every category saw flips of bits a check depends on, all found.
    rows = [ln for ln in p.stdout.splitlines() if re.match(r"  \S+ +\d+ runs,", ln)]
    # pte, head-frame, hstate; the mask form adds shared-frame, zone, zone-info.
    assert len(rows) >= 3, p.stdout
    for ln in rows:
        m = re.search(r"(\d+) on bits a check depends on, +(\d+) found", ln)
        assert m[1] == m[2], ln
