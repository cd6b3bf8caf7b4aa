"""
vmemspect on dumps made the way users make them: a kdump capture kernel
(loaded with kexec -p, booted on a sysrq crash) running makedumpfile -d 31
on /proc/vmcore (scripts/testbed/kdump.py).  7.2 (mask form) in hvo-2m with
every variant (zlib, lzo, zstd, ELF) from both makedumpfile builds (this
machine's, bookworm's 1.7.2, and the newest in the archive, sid's), plus one
variant on 6.12 and on 6.1 (pointer form).

Each run also holds QEMU's dump of the same guest state, taken while the
armed guest waited for the host's go.  Expected values come from the
guest's own truth (sysfs, /proc/vmstat, /proc/kpageflags, boot lines) and
from the dump files themselves, never from vmemspect.
"""

import collections
import re
import subprocess

import pytest

from conftest import FORM, capture_run, kernel_saved_pages, script, vmemspect, vmemspect_json

PAGE = 4096
SCENARIO = "hvo-2m"

CASES = [("7.2", f"capture-{v}-{b}") for b in ("host", "newest") for v in ("zlib", "lzo", "zstd", "elf")]
CASES += [("6.12", "capture-zstd-newest"), ("6.1", "capture-zlib-host")]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def case(request):
    series, source = request.param
    run = capture_run(series, source, SCENARIO)
    truth = run["truth"]
    assert not truth["errors"], truth["errors"]
    dump = run[source]
    report = vmemspect_json(run, dump=dump)
    folios = vmemspect_json(run, "folios", dump=dump)["folios"]
    return series, source, run, truth, dump, report, folios


def test_capture_made_the_dump_asked_for(case):
    """makedumpfile ran in the capture kernel, exit 0, in the format asked
    for; its compression is the one asked for unless that build lacks it
    (its -v says so), then it warned and wrote pages uncompressed."""
    _, source, run, _, dump, _, _ = case
    c = run["dump_info"][source]
    variant, build = source.split("-")[1:]
    assert c["makedumpfile_rc"] == 0
    assert c["dump"] == dump and c["size"] > 0
    assert run[f"{source}_format"] == c["format"] == ("elf" if variant == "elf" else "kdump-compressed")
    with open(dump, "rb") as f:
        magic = f.read(8)
    assert magic == (b"\x7fELF\x02\x01\x01\x00" if variant == "elf" else b"KDUMP   ")[:len(magic)]
    if build == "host":
        out = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True).stdout
        assert c["makedumpfile"]["version"] == re.search(r"version\s+(\S+)", out)[1]
    if variant == "elf":
        assert c["actual_compression"] == "none"
        assert c["elf_filtered"]["pages"] > 0         # -d 31 left gaps
        return
    built = c["makedumpfile"]["compressions_built"].get(variant, True)
    if built:
        assert c["actual_compression"] == variant and not c["compression_fallback"]
        assert c["dump_info"]["header_compression"] == variant
    else:
        assert c["actual_compression"] == "none" and c["compression_fallback"]
        assert any(f"'{c['option']}' option is disabled" in m for m in c["makedumpfile_messages"])
    assert c["dump_info"]["dump_level"] == 31
    # The capture kernel's own dump of its first kernel, kexec'd after a panic.
    assert c["armed"]["crash_size"] and c["vmcore"]["size"] > 0


def test_folios_are_the_kernels(case):
    """Folio set == /proc/kpageflags' hugetlb heads; counts per hstate and
    node == sysfs; every folio optimized (hvo-2m boots with HVO on)."""
    series, _, run, truth, _, report, folios = case
    assert report["kernel"]["release"] == truth["uname"]
    assert report["kernel"]["form"] == FORM[series]
    assert sorted(f["pfn"] for f in folios) == sorted(h["pfn"] for h in truth["hugetlb_folios"])
    counts = collections.Counter(((1 << f["order"]) * PAGE // 1024, f["nid"]) for f in folios)
    expected = {(int(size), int(nid)): v["nr_hugepages"]
                for size, h in truth["hstates"].items() for nid, v in h["nodes"].items()
                if v["nr_hugepages"]}
    assert dict(counts) == expected
    free = collections.Counter(((1 << f["order"]) * PAGE // 1024, f["nid"])
                               for f in folios if f["state"] == "free")
    assert dict(free) == {(int(size), int(nid)): v["free_hugepages"]
                          for size, h in truth["hstates"].items() for nid, v in h["nodes"].items()
                          if v["nr_hugepages"]}
    assert truth["hugetlb_optimize_vmemmap"] == 1
    for f in folios:
        assert f["optimized"] is True and f["remapped"] is True, f
        assert f["verdict"] == "ok" and f["unknown"] is None, f


def test_verify_ok(case):
    _, _, run, truth, dump, _, _ = case
    p = vmemspect("vmcore", dump, "-s", run["vmlinux"], "verify")
    assert p.stdout.startswith("OK:"), p.stdout
    assert f"{len(truth['hugetlb_folios'])} folios checked, 0 unknown" in p.stdout
    doc = vmemspect_json(run, "verify", dump=dump)
    assert doc["ok"] is True and doc["findings"] == [] and doc["unknown"] == 0


def test_savings_match_kernel(case):
    """Saved vmemmap pages == what the kernel's memmap counters lost (6.12,
    7.2), and == the kernel's boot line per folio times the folios."""
    _, _, _, truth, _, report, _ = case
    s = report["savings"]
    per_folio = {int(k): v // 4 for k, v in truth["vmemmap_freeable_kib"].items()}
    by_lines = sum(per_folio[h["nr_pages"] * PAGE // 1024] for h in truth["hugetlb_folios"])
    assert s["saved_pages"] == by_lines
    vmstat = truth["vmstat"]
    if vmstat:
        kernel_saved = kernel_saved_pages(truth)
        assert s["saved_pages"] == kernel_saved
        assert s["kernel_saved_pages"] == kernel_saved


def test_same_answers_as_qemu_dump(case):
    """QEMU's dump of the same guest state gives the same folios and savings."""
    _, _, run, _, _, report, folios = case
    qemu = vmemspect_json(run, "folios")["folios"]
    key = lambda f: (f["pfn"], f["state"], f["optimized"], f["head_frame"]["pfn"],
                     tuple(t["pfn"] for t in f["tail_frames"]))
    assert sorted(map(key, folios)) == sorted(map(key, qemu))
    assert vmemspect_json(run)["savings"] == report["savings"]


def test_filter_removed_nothing_vmemspect_reads(case):
    """Every page vmemspect reads (traced: page tables, each folio's vmemmap
    frames, the shared tail frames, kernel data) is in the dump, not in an
    ELF gap, and the vmemmap and page-table pages hold the bytes QEMU's dump
    of the same state holds."""
    dump_reads = script("dump_reads")
    series, _, run, truth, dump, _, _ = case
    res = dump_reads.measure(dump, run["vmlinux"], reference=run["kdump"])
    assert all(o["rc"] == 0 for o in res["commands"]), [o["rc"] for o in res["commands"]]
    read = res["pages_read"]
    assert read["folio_head_frame"] == len(truth["hugetlb_folios"]) and read["page_table"] >= 1
    # Mask form: the shared tail frame(s); pointer form: the tails map the
    # folio's own head frame.
    assert read.get("folio_tail_frame", 0) == (1 if FORM[series] == "mask" else 0)
    assert res["missing"] == {}
    assert res.get("in_elf_gaps", {}) == {}
    differ = res["differ_from_reference"]
    assert not {c: v for c, v in differ.items() if c != "kernel"}, differ
    assert res["missing_in_reference"] == {}
