"""
vmemspect on the fixtures: extracts of real test-bed guests (fixtures/,
made by scripts/make-fixtures.py), each with the guest's own ground truth
beside it. No QEMU, no download, no vmlinux: the types come from the BTF
inside each fixture. Expected values come from what the guest said about
itself (sysfs, /proc/kpageflags, /proc/vmstat), never from vmemspect.
"""

import collections
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import drgn
import pytest

from vmemspect import cli
from vmemspect.diskdump import read_page_list
from vmemspect.extract import PageSnapshot, page_classes
from vmemspect.kernel import kernel_model
from vmemspect.pagetable import page_table_walker
from vmemspect.progcache import cache_get
from vmemspect.target import open_vmcore

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
METAS = sorted(FIXTURES.glob("*.json"))
PAGE = 4096
SIZEOF_PAGE = 64


def test_fixtures_present():
    names = {m.stem for m in METAS}
    assert {"7.2-numa", "6.12-numa", "7.2-mixed", "6.12-mixed", "6.1-hvo-2m",
            "7.2-riscv64-mixed"} <= names
    for m in METAS:
        assert (FIXTURES / f"{m.stem}.kdump").is_file(), m


def test_fixtures_small():
    """Each at most 8 MB; all of fixtures/ at most 20 MB."""
    files = [p for p in FIXTURES.iterdir() if p.is_file()]
    for p in files:
        if p.suffix == ".kdump":
            assert p.stat().st_size <= 8 << 20, p
    assert sum(p.stat().st_size for p in files) <= 20 << 20


def _run(prog: drgn.Program, *args: str):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.run(list(args), prog=prog)
    return rc, out.getvalue()


@pytest.fixture(scope="module", params=[m.stem for m in METAS])
def fixture(request):
    meta = json.loads((FIXTURES / f"{request.param}.json").read_text())
    path = str(FIXTURES / f"{request.param}.kdump")
    prog = open_vmcore(path)  # no -s: the fixture's own BTF
    docs = {}
    for cmd in ("report", "folios", "tails", "verify"):
        rc, out = _run(prog, cmd, "--json")
        docs[cmd] = (rc, json.loads(out))
    return meta, path, prog, docs


def test_kernel(fixture):
    meta, _, prog, docs = fixture
    rc, report = docs["report"]
    assert rc == 0
    k = report["kernel"]
    assert k["types"] == "btf"
    assert cache_get(prog, "types") == "btf"
    # Every fact the model needs came from the kernel: no default.
    assert kernel_model(prog).defaults == () and k["defaults"] == []
    assert k["release"] == meta["truth"]["uname"] == meta["release"]
    # The test bed's registry names the architecture (fixtures made before
    # riscv64 ones could be were all x86_64).
    assert k["arch"] == meta.get("arch", "x86_64")
    assert k["form"] == meta["form"]
    assert k["hvo_enabled"] == bool(meta["truth"]["hugetlb_optimize_vmemmap"])


def test_folios_are_the_kernels(fixture):
    """The folio set equals /proc/kpageflags' hugetlb heads; counts per
    hstate and node equal sysfs."""
    meta, _, _, docs = fixture
    truth = meta["truth"]
    folios = docs["folios"][1]["folios"]
    assert sorted(f["pfn"] for f in folios) == sorted(h["pfn"] for h in truth["hugetlb_folios"])
    counts = collections.Counter()
    free = collections.Counter()
    for f in folios:
        key = (str((1 << f["order"]) * PAGE // 1024), str(f["nid"]))
        counts[key] += 1
        free[key] += f["state"] == "free"
    assert dict(counts) == {(size, nid): v["nr_hugepages"]
                            for size, h in truth["hstates"].items()
                            for nid, v in h["nodes"].items() if v["nr_hugepages"]}
    assert dict(free) == {(size, nid): v["free_hugepages"]
                          for size, h in truth["hstates"].items()
                          for nid, v in h["nodes"].items() if v["nr_hugepages"]}
    assert sorted(f["pfn"] for f in folios if f["state"] == "active") == sorted(
        u["pfn"] for u in truth.get("in_use", []))


def test_hvo_state(fixture):
    meta, _, _, docs = fixture
    folios = docs["folios"][1]["folios"]
    scenario = meta["scenario"]
    for f in folios:
        assert f["verdict"] == "ok", f
        assert f["remapped"] is f["optimized"]
        if scenario == "hvo-off":
            assert f["optimized"] is False
        elif scenario != "mixed":
            assert f["optimized"] is True
    if scenario == "mixed":
        # 16 folios allocated with vm.hugetlb_optimize_vmemmap on, 16 with it off.
        assert sum(f["optimized"] for f in folios) == 16 and len(folios) == 32


def test_verify_ok(fixture):
    meta, _, _, docs = fixture
    rc, v = docs["verify"]
    assert rc == 0
    assert v["ok"] is True and v["findings"] == [] and v["unknown"] == 0
    assert v["checked_folios"] == len(meta["truth"]["hugetlb_folios"])


def test_savings_match_kernel_counters(fixture):
    """Saved vmemmap pages == what the kernel's memmap counters lost (6.10+)."""
    meta, _, _, docs = fixture
    truth = meta["truth"]
    s = docs["report"][1]["savings"]
    vmstat = truth["vmstat"]
    if "nr_memmap_pages" not in vmstat:
        assert meta["kernel"] == "6.1"
        assert s["kernel_saved_pages"] is None
        return
    sections = sum(len(b) for b in truth["node_memory_blocks"].values())
    without_hvo = sections * truth["memory_block_size"] // PAGE * SIZEOF_PAGE // PAGE
    kernel_saved = without_hvo - vmstat["nr_memmap_pages"] - vmstat["nr_memmap_boot_pages"]
    assert s["saved_pages"] == kernel_saved == s["kernel_saved_pages"]
    assert s["kernel_agrees"] is True


def test_tails(fixture):
    meta, _, _, docs = fixture
    tails = docs["tails"][1]["tails"]
    optimized = [f for f in docs["folios"][1]["folios"] if f["optimized"]]
    if meta["form"] == "mask":
        groups = collections.Counter((f["nid"], f["zone"], f["order"]) for f in optimized)
        assert {(t["nid"], t["zone"], t["order"]): t["folios"] for t in tails} == dict(groups)
        assert all(t["valid_tails"] == 64 for t in tails)
    else:
        assert sorted(t["folio_pfn"] for t in tails) == sorted(f["pfn"] for f in optimized)


def test_page_list(fixture):
    """From the file's own page list: no page lies inside a hugetlb folio
    ([pfn, pfn + 2^order)); every page is a page table, a vmemmap frame or
    kernel data; the vmemmap frames are the folios' own and the shared
    ones; a page not in the list reads as missing, not as zeros."""
    meta, path, prog, docs = fixture
    pfns = list(read_page_list(path))
    assert pfns == sorted(set(pfns))
    folios = docs["folios"][1]["folios"]
    ranges = sorted((h["pfn"], h["pfn"] + h["nr_pages"]) for h in meta["truth"]["hugetlb_folios"])
    assert all(f["pfn"] + (1 << f["order"]) == dict(ranges)[f["pfn"]] for f in folios)
    import bisect
    starts = [lo for lo, _ in ranges]
    for pfn in pfns:
        i = bisect.bisect_right(starts, pfn) - 1
        assert i < 0 or pfn >= ranges[i][1], f"pfn {pfn:#x} inside folio {ranges[i][0]:#x}"
    snap = PageSnapshot(prog, prog["VMCOREINFO"].to_bytes_())
    for pfn in pfns:
        snap.page(pfn)
    start = int(folios[0]["vmemmap"], 16) - folios[0]["pfn"] * SIZEOF_PAGE
    # The struct pages of the guest's pfns (its node ranges): beyond them
    # lie other mappings (riscv64 Sv48: the vmalloc area 8 TiB on).
    end_pfn = max(hi for ranges in meta["truth"]["node_pfn_ranges"].values() for _, hi in ranges)
    classes = page_classes(snap, (start, start + end_pfn * SIZEOF_PAGE))
    assert set(classes) == set(pfns)
    by = collections.defaultdict(set)
    for pfn, c in classes.items():
        by[c].add(pfn)
    assert set(by) <= {"page_table", "vmemmap", "kernel"}
    frames = {f["head_frame"]["pfn"] for f in folios}
    assert frames <= by["vmemmap"]
    frames |= {t["pfn"] for f in folios for t in f["tail_frames"]}
    # ... and the frames holding the struct pages of the folios' head frames
    # (PageVmemmapSelfHosted, which the kernel tests before HVO).
    walker = page_table_walker(prog)
    frames |= {walker.lookup((start + f["head_frame"]["pfn"] * SIZEOF_PAGE) & ~(PAGE - 1)).pfn
               for f in folios}
    assert by["vmemmap"] <= frames
    assert len(by["page_table"]) >= 4
    # A folio's first data page is not in the file: it faults.
    with pytest.raises(drgn.FaultError):
        prog.read(folios[0]["pfn"] * PAGE, 8, True)


def test_cli_text_and_exit_status():
    """The command line on one fixture: the report's verdict, verify's exit 0."""
    path = str(FIXTURES / "7.2-numa.kdump")
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", path],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "BTF" in p.stdout.splitlines()[0] and "mask form" in p.stdout
    assert "verify        OK: 0 finding(s), 111 folios checked" in p.stdout
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", path, "verify"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == ""


@pytest.mark.parametrize("name", ["7.2-numa", "6.12-numa"])
def test_drgn_opens_fixture(name):
    """drgn -c FIXTURE with no vmlinux: %vmemspect verify loads the BTF and
    checks every folio."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    code = ("from drgn.commands import run_command\n"
            "rc = run_command(prog, 'vmemspect verify --json')\n"
            "print('RC', rc)\n")
    p = subprocess.run([sys.executable, "-m", "drgn", "-c", str(FIXTURES / f"{name}.kdump"),
                        "-q", "--no-default-symbols", "-e", code],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out, rc = p.stdout.rsplit("RC ", 1)
    assert rc.strip() == "0"
    doc = json.loads(out)
    assert doc["ok"] and doc["checked_folios"] == len(meta["truth"]["hugetlb_folios"])


def test_extract_of_a_fixture(tmp_path):
    """Extracting an extract keeps what vmemspect reads (a subset of the
    fixture's pages: the fixture also holds what the DWARF run read), and
    reads the same."""
    src = FIXTURES / "6.12-mixed.kdump"
    out = tmp_path / "again.kdump"
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", str(src), "extract",
                        str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["types"] == ["btf"]
    # vmemspect reads memory the fixture lacks: it reads more than when the
    # fixture was made; remake them (scripts/make-fixtures.py --reuse).
    assert doc["missing_in_source"] == 0, "fixtures are stale: scripts/make-fixtures.py"
    assert set(read_page_list(str(out))) <= set(read_page_list(str(src)))
    a, b = open_vmcore(str(src)), open_vmcore(str(out))
    assert a["VMCOREINFO"].to_bytes_() == b["VMCOREINFO"].to_bytes_()
    for cmd in ("report", "folios", "tails", "verify"):
        assert _run(a, cmd, "--json") == _run(b, cmd, "--json")


@pytest.mark.parametrize("dump, out, message", [
    ("fixtures/7.2-mixed.kdump", "/nonexistent-dir/x.kdump", "no directory /nonexistent-dir"),
    ("fixtures/7.2-mixed.kdump", "fixtures", "is a directory"),
    ("fixtures/7.2-mixed.kdump", "/proc/vmemspect-test.kdump", "cannot write"),
    ("fixtures/7.2-mixed.json", "{tmp}/x.kdump", "not a usable vmcore"),
    ("fixtures/no-such.kdump", "{tmp}/x.kdump", "no such file"),
])
def test_extract_errors(tmp_path, dump, out, message):
    """Unusable input: one line on stderr, exit 2, no traceback, no file left."""
    out = out.format(tmp=tmp_path)
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", str(ROOT / dump),
                        "extract", out], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []
