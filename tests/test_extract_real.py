"""
``vmemspect vmcore DUMP extract OUT`` on real dumps of 6.12 (pointer form)
and 7.2 (mask form) booted under QEMU (scripts/testbed): the extract gives
the same JSON as the dump for report, folios, tails and verify, with and
without -s; carries the dump's VMCOREINFO; holds no hugetlb data frame and
no user memory; opens in drgn; and keeps a corruption as it is.
"""

import bisect
import collections
import json
import subprocess
import sys

import drgn
import pytest

from conftest import KERNELS, real_run, vmemspect, vmemspect_json
from test_real_corruption import ADDR_MASK, patched, tail_pte
from vmemspect.diskdump import read_page_list
from vmemspect.extract import PageSnapshot, page_classes
from vmemspect.pagetable import page_table_walker
from vmemspect.target import open_vmcore

COMMANDS = ("report", "folios", "tails", "verify")
PAGE = 4096
SIZEOF_PAGE = 64
CASES = [(k, s) for k in KERNELS for s in ("numa", "mixed")]


def extract_json(dump: str, out: str, *types: str) -> dict:
    p = vmemspect("vmcore", dump, *types, "extract", out, "--json")
    return json.loads(p.stdout)


def docs(dump: str, *types: str) -> dict:
    out = {}
    for cmd in COMMANDS:
        p = vmemspect("vmcore", dump, *types, cmd, "--json", check_rc=(0, 1))
        out[cmd] = (p.returncode, json.loads(p.stdout))
    return out


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def case(request, tmp_path_factory):
    series, scenario = request.param
    run = real_run(series, scenario)
    out = str(tmp_path_factory.mktemp("extract") / f"{series}-{scenario}.kdump")
    doc = extract_json(run["kdump"], out, "-s", run["vmlinux"])
    return series, scenario, run, out, doc, docs(run["kdump"], "-s", run["vmlinux"])


def test_summary(case):
    _, _, run, out, doc, source = case
    assert doc["size"] <= 8 << 20
    assert doc["types"] == ["btf", "dwarf"]
    assert doc["folios"] == len(run["truth"]["hugetlb_folios"])
    assert doc["missing_in_source"] == 0
    assert doc["pages"] == len(list(read_page_list(out)))


def test_same_json_with_vmlinux(case):
    _, _, run, out, _, source = case
    assert docs(out, "-s", run["vmlinux"]) == source


def test_same_json_without_vmlinux(case):
    """Read through the BTF inside the extract: only the types source
    differs (the report's kernel.types)."""
    _, _, _, out, _, source = case
    btf = docs(out)
    for cmd in COMMANDS:
        rc, doc = btf[cmd]
        want_rc, want = json.loads(json.dumps(source[cmd]))
        if "kernel" in doc:
            assert (doc["kernel"].pop("types"), want["kernel"].pop("types")) == ("btf", "dwarf")
        assert (rc, doc) == (want_rc, want), cmd


def test_vmcoreinfo_is_the_dumps(case):
    _, _, run, out, _, _ = case
    src = open_vmcore(run["kdump"], architecture="x86_64")
    ext = drgn.Program()
    ext.set_core_dump(out)  # no --architecture needed: the header names it
    assert ext.platform.arch == drgn.Architecture.X86_64
    assert ext["VMCOREINFO"].to_bytes_() == src["VMCOREINFO"].to_bytes_()


def test_no_hugetlb_data_no_user_memory(case):
    """From the extract's own page list: no page inside a hugetlb folio's
    [pfn, pfn + 2^order); each is a page table, a vmemmap frame (a folio's
    own or a shared one) or kernel data, and no kernel-data page is user
    memory: its struct page, read in the full dump, is not on an LRU list,
    where every anonymous and file page of a process lives (slab, page
    tables, vmalloc and boot-time allocations never are)."""
    _, _, run, out, _, source = case
    folios = source["folios"][1]["folios"]
    ranges = sorted((f["pfn"], f["pfn"] + (1 << f["order"])) for f in folios)
    starts = [lo for lo, _ in ranges]
    pfns = list(read_page_list(out))
    for pfn in pfns:
        i = bisect.bisect_right(starts, pfn) - 1
        assert i < 0 or pfn >= ranges[i][1], f"pfn {pfn:#x} inside folio {ranges[i][0]:#x}"
    ext = open_vmcore(out)
    snap = PageSnapshot(ext, ext["VMCOREINFO"].to_bytes_())
    for pfn in pfns:
        snap.page(pfn)
    start = int(folios[0]["vmemmap"], 16) - folios[0]["pfn"] * SIZEOF_PAGE
    by = collections.defaultdict(set)
    for pfn, c in page_classes(snap, (start, start + (1 << 46))).items():
        by[c].add(pfn)
    assert set(by) == {"page_table", "vmemmap", "kernel"}
    frames = {f["head_frame"]["pfn"] for f in folios}
    assert frames <= by["vmemmap"]
    frames |= {t["pfn"] for f in folios for t in f["tail_frames"]}
    # ... and the frames holding the struct pages of the folios' head frames
    # (PageVmemmapSelfHosted, which the kernel tests before HVO).
    walker = page_table_walker(ext)
    frames |= {walker.lookup((start + f["head_frame"]["pfn"] * SIZEOF_PAGE) & ~(PAGE - 1)).pfn
               for f in folios}
    assert by["vmemmap"] <= frames
    src = open_vmcore(run["kdump"], run["vmlinux"])
    pg_lru = src.constant("PG_lru").value_()
    for pfn in by["kernel"]:
        page = src.read(start + pfn * SIZEOF_PAGE, SIZEOF_PAGE)
        flags = int.from_bytes(page[:8], "little")
        assert not flags & (1 << pg_lru), f"pfn {pfn:#x} is on an LRU list"


def test_btf_only_extract(case, tmp_path):
    """An extract made without -s (only the BTF run traced) also reads the
    same with -s."""
    series, scenario, run, _, _, source = case
    out = str(tmp_path / "btf.kdump")
    assert extract_json(run["kdump"], out)["types"] == ["btf"]
    assert docs(out, "-s", run["vmlinux"]) == source


@pytest.mark.parametrize("vmlinux", [True, False], ids=["dwarf", "btf"])
def test_drgn_opens_extract(case, vmlinux):
    """drgn -c OUT (no --architecture), %vmemspect verify as on the dump."""
    _, _, run, out, _, source = case
    code = ("from drgn.commands import run_command\n"
            "rc = run_command(prog, 'vmemspect verify --json')\n"
            "print('RC', rc)\n")
    args = [sys.executable, "-m", "drgn", "-c", out, "-q"]
    args += ["-s", run["vmlinux"]] if vmlinux else ["--no-default-symbols"]
    p = subprocess.run(args + ["-e", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    doc, rc = p.stdout.rsplit("RC ", 1)
    assert rc.strip() == "0"
    assert json.loads(doc) == source["verify"][1]


@pytest.mark.parametrize("series", KERNELS)
def test_corruption_survives(series, tmp_path):
    """A real ELF dump with one tail PTE of a folio pointed at another
    folio's head frame (as tests/test_real_corruption.py does): its extract
    holds the corruption, and verify names it exactly as on the dump."""
    run = real_run(series, "hvo-2m", elf=True)
    folios = vmemspect_json(run, "folios", dump=run["elf"])["folios"]
    walker = page_table_walker(open_vmcore(run["elf"], run["vmlinux"]))
    victim, other = folios[3], folios[5]
    phys, entry = tail_pte(walker, victim, 3)
    foreign = other["head_frame"]["pfn"]
    out = str(tmp_path / "corrupt.kdump")
    with patched(run["elf"], phys, (entry & ~ADDR_MASK) | (foreign << 12)):
        want = vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))
        extract_json(run["elf"], out, "-s", run["vmlinux"])
    assert not want["ok"]
    assert ("tail-frame", victim["pfn"], foreign) in {
        (f["check"], f["folio_pfn"], f["frame_pfn"]) for f in want["findings"]}
    for types in (["-s", run["vmlinux"]], []):
        p = vmemspect("vmcore", out, *types, "verify", "--json", check_rc=(1,))
        assert json.loads(p.stdout) == want
    # The healthy dump's extract would have said OK: the finding is the
    # corruption's, carried over.
    ext = open_vmcore(out)
    assert ext.read_u64(phys, True) == (entry & ~ADDR_MASK) | (foreign << 12)


def test_live_extract():
    """``vmemspect live extract OUT`` in the test bed's live guest (the
    host's root over virtiofs, the guest's /proc/kcore, no debug package):
    the extract reads, with types from its own BTF, as the dump taken right
    after it does with DWARF (the guest's folios do not change meanwhile)."""
    from conftest import live_run, run_dir

    out = run_dir() / "7.2-live-extract" / "live.kdump"
    run = live_run("7.2", f"python3 -m vmemspect live extract {out} --json", "live-extract")
    assert run["guest_cmd_rc"] == 0, run["guest_cmd_stderr"]
    doc = json.loads(run["guest_cmd_output"])
    assert doc["types"] == ["btf"] and doc["size"] <= 8 << 20
    assert doc["folios"] == len(run["truth"]["hugetlb_folios"])
    live, dump = docs(str(out)), docs(run["kdump"], "-s", run["vmlinux"])
    for cmd in COMMANDS:
        rc, got = live[cmd]
        want_rc, want = dump[cmd]
        if "kernel" in got:
            assert (got["kernel"].pop("types"), want["kernel"].pop("types")) == ("btf", "dwarf")
        assert (rc, got) == (want_rc, want), cmd
