"""
The "rare" scenario on real kernels (scripts/testbed): a 6 GiB guest
with HVO on, two 1 GiB pages allocated at run time, one of them demoted
to 512 2 MiB pages, the whole 2 MiB pool plus 8 surplus pages held by
fallocate on hugetlbfs; after the dump the guest frees everything
(the aftermath) and reports what the kernel said.

A user saw 6.12.117 leave the demoted folios flagged HPG_vmemmap_optimized
with their vmemmap never remapped (7 vmemmap pages each never freed), and
warn in static_key_dec_not_one when they were freed.  Which kernel has the
leak is decided from the kernel's own counters, never from its version:
nr_memmap_pages (against what the kernel's boot lines say HVO frees per
folio) where /proc/vmstat has it, else hugetlb_optimize_vmemmap_key's
count read from the dump by scripts/plain-drgn-hvo.py (plain drgn, nothing
of vmemspect).  Expected values come from that ground truth only.
"""

import collections
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, kernel_saved_pages, real_run, types_args, vmemspect, vmemspect_json

RARE_KERNELS = ("6.1", "6.12", "7.2")
PAGE = 4096
SIZEOF_PAGE = 64
GIGANTIC_PAGES = 1 << 18   # base pages of a 1 GiB folio
HUGE_PAGES = 1 << 9        # of a 2 MiB folio
#: Tail vmemmap pages of a 2 MiB folio: the pages its struct pages take, but the head's.
TAIL_VMEMMAP = HUGE_PAGES * SIZEOF_PAGE // PAGE - 1


def plain_drgn(run: dict) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "plain-drgn-hvo.py"),
                        run["kdump"], run["vmlinux"]],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def leaked_folios(truth: dict, plain: dict) -> int:
    """Folios whose vmemmap the kernel meant to free and did not, from the
    kernel's own counters."""
    nr_folios = len(truth["hugetlb_folios"])
    vmstat = truth["vmstat"]
    if "nr_memmap_pages" in vmstat:
        # What the kernel's boot lines say HVO frees, for every folio (all
        # were allocated with HVO on), against what the counters lost.
        kernel_saved = kernel_saved_pages(truth)
        per_folio = {int(k): v // 4 for k, v in truth["vmemmap_freeable_kib"].items()}
        expected = sum(per_folio[h["nr_pages"] * PAGE // 1024] for h in truth["hugetlb_folios"])
        leak_pages = expected - kernel_saved
        assert leak_pages >= 0 and leak_pages % per_folio[2048] == 0, (expected, kernel_saved)
        leak = leak_pages // per_folio[2048]
        if plain["key_count"] is not None:
            # The two counters of the kernel agree.
            assert nr_folios - plain["key_count"] == leak
        return leak
    # No memmap counters (6.1): the static key counts the optimized folios.
    assert plain["key_count"] is not None, "a kernel with neither memmap counters nor the key"
    return nr_folios - plain["key_count"]


@pytest.fixture(scope="module", params=RARE_KERNELS)
def rare(request):
    series = request.param
    run = real_run(series, "rare", aftermath=True)
    truth = run["truth"]
    assert not truth["errors"], truth["errors"]
    plain = plain_drgn(run)
    assert plain["release"] == truth["uname"]
    verify = vmemspect_json(run, "verify", check_rc=(0, 1))
    folios = vmemspect_json(run, "folios")["folios"]
    return series, run, truth, plain, verify, folios


def demoted_range(truth: dict) -> range:
    d = truth["demote"]
    assert len(d["before"]) == 2 and len(d["after"]) == 1 and len(d["demoted"]) == 1, d
    return range(d["demoted"][0], d["demoted"][0] + GIGANTIC_PAGES)


def test_scenario_state(rare):
    """The guest reached the reported state: 536 in-use 2 MiB folios (8
    surplus), 512 of them inside the demoted 1 GiB range, one free 1 GiB."""
    _, _, truth, _, _, _ = rare
    h2m, h1g = truth["hstates"]["2048"]["global"], truth["hstates"]["1048576"]["global"]
    assert (h2m["nr_hugepages"], h2m["free_hugepages"], h2m["surplus_hugepages"]) == (536, 0, 8)
    assert (h1g["nr_hugepages"], h1g["free_hugepages"]) == (1, 1)
    heads = {h["pfn"]: h["nr_pages"] for h in truth["hugetlb_folios"]}
    rng = demoted_range(truth)
    inside = sorted(p for p in heads if p in rng)
    assert inside == list(range(rng.start, rng.stop, HUGE_PAGES))
    assert all(heads[p] == HUGE_PAGES for p in inside)
    assert heads[truth["demote"]["after"][0]] == GIGANTIC_PAGES
    assert len(truth["in_use"]) == 536 and all(u["kind"] == "file" for u in truth["in_use"])


def test_folios_are_the_kernels(rare):
    """(a) vmemspect's folio set is kpageflags' hugetlb heads; its counts,
    free and in-use folios are sysfs's and the fallocate hold's."""
    _, _, truth, plain, _, folios = rare
    assert sorted(f["pfn"] for f in folios) == sorted(h["pfn"] for h in truth["hugetlb_folios"])
    counts, free = collections.Counter(), collections.Counter()
    for f in folios:
        size = str((1 << f["order"]) * PAGE // 1024)
        counts[size] += 1
        free[size] += f["state"] == "free"
    hs = truth["hstates"]
    assert dict(counts) == {s: h["global"]["nr_hugepages"] for s, h in hs.items()
                            if h["global"]["nr_hugepages"]}
    assert {s: free[s] for s in counts} == {s: hs[s]["global"]["free_hugepages"] for s in counts}
    assert sorted(f["pfn"] for f in folios if f["state"] == "active") == \
        sorted(u["pfn"] for u in truth["in_use"])
    # The plain drgn walk sees the same folios.
    assert sum(plain["folios"].values()) == len(truth["hugetlb_folios"])


def test_flagged_are_the_leaked_demoted_folios(rare):
    """(b) The folios vmemspect reports are exactly those the plain drgn
    script finds flagged but not remapped; as many as the kernel's counters
    say leaked, all inside the demoted range; a kernel without a leak
    verifies clean (exit 0)."""
    series, run, truth, plain, verify, folios = rare
    leak = leaked_folios(truth, plain)
    bad = set(plain["flagged_not_remapped"])
    assert len(bad) == leak
    assert not plain["remapped_not_flagged"]
    rng = demoted_range(truth)
    assert all(p in rng for p in bad)
    found = {f["folio_pfn"] for f in verify["findings"] if f["folio_pfn"] is not None}
    by_check = collections.defaultdict(set)
    for f in verify["findings"]:
        by_check[f["check"]].add(f["folio_pfn"])
    assert verify["checked_folios"] == len(truth["hugetlb_folios"]) and verify["unknown"] == 0
    if leak == 0:
        assert verify["ok"] is True and verify["findings"] == []
        vmemspect_json(run, "verify", check_rc=(0,))
    else:
        assert verify["ok"] is False
        assert found == bad
        assert by_check["flag-vs-mapping"] == bad
        vmemspect_json(run, "verify", check_rc=(1,))
    # Per folio: flagged everywhere (the kernel set the flag on every
    # folio), remapped except the leaked ones.
    assert all(f["optimized"] for f in folios)
    assert {f["pfn"] for f in folios if not f["remapped"]} == bad
    # vmemspect's savings are the kernel's: the counters' figure.
    report = vmemspect_json(run)
    s = report["savings"]
    assert s["flagged_folios"] == len(folios)
    assert s["remapped_folios"] == len(folios) - leak
    per_folio = {int(k): v // 4 for k, v in truth["vmemmap_freeable_kib"].items()}
    assert s["saved_pages"] == sum(per_folio[h["nr_pages"] * PAGE // 1024]
                                   for h in truth["hugetlb_folios"]) - leak * per_folio[2048]
    if plain["key_count"] is not None:
        assert s["kernel_optimized_folios"] == plain["key_count"]


def test_one_root_cause(rare):
    """(d) The findings read as a diagnosis: one root cause, the flag on
    vmemmap never remapped, covering exactly the leaked folios; the
    findings it implies (each tail vmemmap page of those folios on a frame
    of its own: tail-frame and tail-readonly; the key's count, off by
    exactly those folios) folded under it with their counts; and the block
    they come from named: the demoted 1 GiB range, whose first folio is
    clean. A kernel without the leak has no cause at all."""
    series, run, truth, plain, verify, _ = rare
    leak = leaked_folios(truth, plain)
    if leak == 0:
        assert verify["root_causes"] == 0 and verify["diagnosis"] == []
        return
    bad = set(plain["flagged_not_remapped"])
    rng = demoted_range(truth)
    findings = verify["findings"]
    assert verify["root_causes"] == 1
    (c,) = verify["diagnosis"]
    assert c["check"] == "flag-vs-mapping" and set(c["folios"]) == bad
    assert [findings[i]["folio_pfn"] for i in c["findings"]] == c["folios"]
    # Every finding is the cause or folded under it, once.
    placed = c["findings"] + [i for im in c["implied"] for i in im["findings"]]
    assert sorted(placed) == list(range(len(findings)))
    implied = {im["check"]: (len(im["findings"]), set(im["folios"])) for im in c["implied"]}
    want = {"tail-frame": (leak * TAIL_VMEMMAP, bad), "tail-readonly": (leak * TAIL_VMEMMAP, bad)}
    if plain["key_count"] is not None:
        # The key counts the folios that are remapped: off by the leaked ones.
        assert plain["key_count"] == len(truth["hugetlb_folios"]) - leak
        want["kernel-count"] = (1, set())
    assert implied == want
    # Those tails are on frames of their own: no consequence says otherwise.
    for im in c["implied"]:
        assert "another frame's contents" not in (im["consequence"] or "")
        assert "which shares this frame" not in (im["consequence"] or "")
    # The block: the demoted 1 GiB range (the guest's own record), its
    # first folio a hugetlb folio (kpageflags) that is not among the leaked.
    assert rng.start in {h["pfn"] for h in truth["hugetlb_folios"]} and rng.start not in bad
    (b,) = c["blocks"]
    assert (b["start_pfn"], b["end_pfn"], b["folios"], b["capacity"]) == (
        rng.start, rng.stop - 1, leak, GIGANTIC_PAGES // HUGE_PAGES)
    assert b["first"]["pfn"] == rng.start and b["first"]["clean"] and b["all_but_first"]

    p = vmemspect("vmcore", run["kdump"], *types_args(run), "verify", check_rc=(1,))
    out = p.stdout
    lines = out.splitlines()
    assert lines[0].startswith("flag-vs-mapping: ")
    assert lines[0].endswith(f": {leak} finding(s) on {leak} folio(s)")
    where = next(ln for ln in lines if ln.startswith("  where: "))
    assert where.startswith(f"  where: all {leak} lie in one 1 GiB-aligned block, "
                            f"pfn {rng.start:#x}-{rng.stop - 1:#x}; with its first folio, "
                            f"pfn {rng.start:#x}, which is clean")
    assert f"{GIGANTIC_PAGES // HUGE_PAGES} hugepages-2048kB folios: one demoted " \
           "hugepages-1048576kB folio" in where
    # vmemspect names the known bug and its document (issue 20).
    known = next(ln for ln in lines if ln.startswith("  known: "))
    assert "known kernel bug" in known and "docs/known-bugs.md" in known
    assert f"    tail-frame: {leak * TAIL_VMEMMAP} finding(s) on the same {leak} folio(s)" in lines
    assert f"    tail-readonly: {leak * TAIL_VMEMMAP} finding(s) on the same {leak} folio(s)" \
        in lines
    if plain["key_count"] is not None:
        assert "    kernel-count: 1 finding(s)" in lines
    assert "another frame's contents" not in out and "which shares this frame" not in out
    assert lines[-1].startswith(f"VIOLATED: {len(findings)} finding(s) on {leak} folio(s) "
                                "from 1 root cause(s)")
    # --all: every finding on a line of its own.
    p = vmemspect("vmcore", run["kdump"], *types_args(run), "verify", "--all", check_rc=(1,))
    assert len(p.stdout.splitlines()) == len(findings) + 1


def test_aftermath(rare):
    """(c) Freeing the leaked folios underflows hugetlb_optimize_vmemmap_key
    (WARNING in static_key_dec_not_one); a kernel without a leak frees
    everything without a WARNING."""
    _, run, truth, plain, _, _ = rare
    a = run["aftermath"]
    assert a["completed"] and a["intact"], a.get("console_tail")
    # Everything was freed.
    pools = re.findall(r"(\d+)kB nr=(\d+) free=(\d+) surplus=(\d+)", a["steps"][-1])
    assert {size for size, *_ in pools} == set(truth["hstates"])
    assert all(counts == ["0", "0", "0"] for _, *counts in pools), a["steps"]
    if leaked_folios(truth, plain):
        assert a["static_key_dec_not_one"], a["console_tail"]
        assert any("kernel/jump_label.c" in w for w in a["static_key_dec_not_one"])
        kmsg = "\n".join(a["kmsg"])
        assert "__hugetlb_vmemmap_restore_folio" in kmsg
        assert "update_and_free_pages_bulk" in kmsg
    else:
        assert a["warnings"] == [] and a["bad_page_state"] == 0, a["console_tail"]
