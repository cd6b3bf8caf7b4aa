"""
The benchmarks of scripts/bench/ that need a vmlinux or boot guests, each
run the way a developer runs it, with the smallest input: the dump of the
7.2 hvo-2m guest every commit boots anyway (instead of a 256 GiB guest), one
boot, a pool of 8 pages. So that none rots between the times its numbers
are measured; the numbers themselves are never asserted. Expected values
come from the guest's truth, never from the scripts.
(tests/unit/test_bench.py smokes the others on a fixture.)
"""

import json
import re
import shutil

import pytest

from conftest import FULL, bench, real_run, run_dir, vmemspect
from testbed.scenarios import SCENARIOS


@pytest.fixture(scope="module")
def run():
    r = real_run("7.2", "hvo-2m")
    r["dir"] = run_dir() / "7.2-hvo-2m"
    assert (r["dir"] / "run.json").is_file()
    return r


def folios(run) -> int:
    return len(run["truth"]["hugetlb_folios"])


def test_baseline_drgn_scan(run):
    """The plain drgn scan finds the guest's folios, all optimized (hvo-2m),
    each of its vmemmap pages translated; the floor and the open alone run."""
    doc = json.loads(bench("baseline-drgn-scan", run["kdump"], run["vmlinux"], "--json"))
    assert doc["folios"] == doc["optimized"] == folios(run)
    assert doc["form"] == "mask" and doc["hvo_mismatch"] == 0 and doc["follow_phys_faults"] == 0
    assert doc["vmemmap_pages"] == folios(run) * 512 * 64 // 4096
    floor = json.loads(bench("baseline-drgn-scan", run["kdump"], run["vmlinux"], "--floor",
                             "--json"))
    assert floor["folios"] == folios(run)
    assert "open_s" in json.loads(bench("baseline-drgn-scan", run["kdump"], run["vmlinux"],
                                        "--open-only", "--json"))


def test_bench_scale(run):
    """The scale benchmark on the small dump (--dump-dir, its page count):
    every measure runs, and vmemspect and the baseline check the guest's
    folios."""
    hugepages = run["truth"]["hstates"]["2048"]["global"]["nr_hugepages"]
    doc = json.loads(bench("bench-scale", "--kernel", "7.2", "--page-size", "2M", "--reuse",
                           "--dump-dir", str(run["dir"]), "--hugepages", str(hugepages),
                           "--repeat", "1", "--json", timeout=600))
    (res,) = doc["results"]
    try:
        assert res["truth_nr_hugepages"] == hugepages == folios(run)
        # The guest's own size (as the test bed booted it), not --mem's default.
        assert res["mem"] == SCENARIOS["hvo-2m"]["mem"]
        summary = res["summary"]
        assert summary["vmemspect_checked_folios"] == folios(run)
        assert summary["vmemspect_ok"] is True and summary["vmemspect_rc"] == 0
        assert summary["baseline_folios"] == folios(run) and summary["baseline_hvo_mismatch"] == 0
        for measure, samples in res["measures"].items():
            assert all(s["rc"] == 0 for s in samples), (measure, samples)
    finally:
        shutil.rmtree(res["log_dir"], ignore_errors=True)


def test_bench_metrics(run):
    """The cost of a scrape, measured on an existing run (--run)."""
    doc = json.loads(bench("bench-metrics", "--run", str(run["dir"]), "--repeat", "1", "--json"))
    assert doc["kernel"] == run["truth"]["uname"] and doc["folios"] == folios(run)
    assert all(doc[m]["cpu_s"] > 0 for m in ("open", "full", "fast"))
    # 64 folios: a cost, or the note that it is within the open's noise; never a negative one.
    per_1000 = doc["full_cpu_ms_per_1000_folios"]
    assert (per_1000 is None and "noise" in doc["note"]) or per_1000 > 0, doc


def test_bench_open(run):
    """Opening the dump with DWARF and with BTF, one run each."""
    out = bench("bench-open", "--run", str(run["dir"]), "--runs", "1")
    for types in ("dwarf", "btf"):
        assert re.search(rf"^{types} +open [\d.]+ s +\+ kernel model [\d.]+ s", out, re.M), out
    assert re.search(r"parse [\d.]+ s \([\d.]+ MiB, \d+ types\)", out), out


def test_extract_raw(run, tmp_path):
    """An extract with its pages stored raw, which vmemspect reads back with
    every folio of the guest."""
    out = tmp_path / "raw.kdump"
    bench("extract-raw", run["kdump"], run["vmlinux"], str(out), "raw")
    v = json.loads(vmemspect("vmcore", str(out), "verify", "--json").stdout)
    assert v["ok"] is True and v["checked_folios"] == folios(run)


def test_extract_sizes(run):
    """A row of the extract-size table for the run: its folios, and verify
    on the extract says what it says on the dump."""
    (row,) = json.loads(bench("extract-sizes", str(run["dir"]), "--json"))
    assert row["folios"] == folios(run) and row["release"] == run["truth"]["uname"]
    assert row["same_verify"] is True
    assert 0 < row["extract_bytes"] < row["source_bytes"]


def test_boot_soak(tmp_path):
    """One boot of 7.2, counted as reaching READY."""
    out = tmp_path / "soak.json"
    bench("boot-soak", "--kernel", "7.2", "--boots", "1", "--json", str(out))
    r = json.loads(out.read_text())["7.2"]
    assert (r["boots"], r["ok"], r["failures"]) == (1, 1, [])


def test_torture_readpaths():
    """A torture guest with a pool of 8 2 MiB pages and one 1 GiB page, each
    read path's check finding them (the QEMU dump path, 25-40 s, in the
    full run only)."""
    paths = "shm,qmp,kdump" if FULL else "shm,qmp"
    doc = json.loads(bench("torture-readpaths", "7.2", "8", "--paths", paths, timeout=600))
    pools = {m[1]: int(m[2]) for line in doc["state"]
             if (m := re.match(r"pool (\d+)kB nr=(\d+) ", line))}
    assert pools == {"2048": 8, "1048576": 1}, doc["state"]
    want = sum(pools.values())
    assert doc["shm"]["folios"] == want
    assert [(q["ok"], q["folios"]) for q in doc["qmp"]] == [("True", want)] * 2, doc["qmp"]
    if FULL:
        assert doc["kdump"]["ok"] is True and doc["kdump"]["folios"] == want
