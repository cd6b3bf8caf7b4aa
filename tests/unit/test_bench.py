"""
The benchmarks of scripts/bench/ run on a fixture (a real guest's extract,
types from its BTF), the way a developer runs them, with the smallest
settings: so that they cannot rot between the times their numbers are
measured. Expected values come from the fixture's truth (what the guest
said about itself), never from the scripts. The benchmarks that need a
vmlinux or boot guests are smoked in tests/test_bench_real.py.
"""

import json
import re
import subprocess
import sys

from conftest import ROOT, bench

BENCH = ROOT / "scripts" / "bench"
FIXTURE = ROOT / "fixtures" / "7.2-mixed.kdump"
TRUTH = json.loads(FIXTURE.with_suffix(".json").read_text())["truth"]


def test_every_benchmark_names_the_doc_it_fills():
    """Each benchmark says which doc table it fills, and that doc names it."""
    # _readfloor.py and the like: code the benchmarks share, not benchmarks.
    scripts = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) >= 10
    readme = (BENCH / "README.md").read_text()
    for script in scripts:
        text = script.read_text()
        m = re.search(r'^Fills: (docs/[\w.-]+\.md), "([^"]+)"', text, re.M)
        assert m, f"{script.name}: no 'Fills: docs/FILE.md, \"heading\"' line"
        doc = (ROOT / m[1]).read_text()
        heading = " ".join(m[2].split())
        assert any(" ".join(line.lstrip("#").split()) == heading
                   for line in doc.splitlines() if line.startswith("#")), (script.name, heading)
        assert f"scripts/bench/{script.name}" in doc, (script.name, m[1])
        assert script.name in readme, script.name


def test_bench_jobs():
    """Every --jobs value gives the same verify JSON (but for ``workers``),
    on the fixture's folios; the floors and the every-folio scan run."""
    doc = json.loads(bench("bench-jobs", str(FIXTURE), "--jobs", "1,2", "--repeat", "1",
                           "--tables", "--every-folio", "--json"))
    assert doc["identical"] is True
    assert doc["folios"] == len(TRUTH["hugetlb_folios"])
    assert set(doc["best_s"]) == {"floor", "jobs=1", "jobs=2", "every folio"} | {
        k for k in doc["best_s"] if re.fullmatch(r"floor\+\d+ tables", k)}
    assert any(k.startswith("floor+") for k in doc["best_s"])
    assert all(v >= 0 for v in doc["best_s"].values())


def test_bench_sweep():
    """The sweep's cost, on a healthy guest: no unlisted range."""
    out = bench("bench-sweep", str(FIXTURE), "--repeat", "1")
    assert f": {len(TRUTH['hugetlb_folios'])} folios, --jobs 1, best of 1" in out.splitlines()[0]
    assert re.search(r"sweep: [+-]\d+ ms .* \d+ PTE tables .* 0 unlisted ranges", out), out


def test_matrix_table(tmp_path):
    """docs/kernels.md's table from a JUnit XML: each test in the cell of
    its kernel, scenario and dump source (riscv64's cases of
    test_real_kernels read QEMU's ELF), failures counted."""
    cases = [("tests.test_real_kernels", "test_tails[7.2-hvo-2m]", ""),
             ("tests.test_real_kernels", "test_decode[7.2-hvo-2m]", "<failure/>"),
             ("tests.test_real_kernels", "test_tails[7.2-riscv64-mixed]", ""),
             ("tests.test_real_kdump", "test_x[6.12-capture-zstd-newest]", ""),
             ("tests.test_real_rare", "test_y[6.12-bpo]", ""),
             ("tests.test_real_kernels", "test_skipped[6.1-hvo-2m]", "<skipped/>"),
             ("tests.test_unit_thing", "test_z", "")]
    xml = tmp_path / "junit.xml"
    xml.write_text("<testsuites><testsuite>" + "".join(
        f'<testcase classname="{c}" name="{n}">{body}</testcase>' for c, n, body in cases)
        + "</testsuite></testsuites>")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "matrix-table.py"), str(xml)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    header, _, *rows = p.stdout.splitlines()
    kernels = [c.strip() for c in header.strip("|").split("|")][2:]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for k, cell in zip(kernels, cells[2:]):
            if cell != "-":
                table[(cells[0], cells[1], k)] = cell
    assert table == {
        ("hvo-2m", "QEMU kdump", "7.2"): "✗ 1/2",
        ("mixed", "QEMU ELF + vmcoreinfo.txt", "7.2-riscv64"): "✓ 1/1",
        ("hvo-2m", "kdump capture: zstd-newest", "6.12"): "✓ 1/1",
        ("rare", "QEMU kdump", "6.12-bpo"): "✓ 1/1",
    }
