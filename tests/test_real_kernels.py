"""
vmemspect against real Debian kernels booted under QEMU (scripts/testbed):
6.12 (pointer form) and 7.2 (mask form), each in every scenario. Expected
values come from what the guest said about itself on its console (sysfs,
/proc/meminfo, /proc/vmstat, /proc/kpageflags, the kernel's boot lines),
never from vmemspect.
"""

import collections

import pytest

from conftest import FORM, FULL, KERNELS, MATRIX, real_run, types_args, vmemspect, vmemspect_json

HEALTHY = ("hvo-2m", "hvo-1g", "hvo-off", "mixed", "numa")
PAGE = 4096
SIZEOF_PAGE = 64


def vmemmap_pages(size_kb: int) -> int:
    return size_kb * 1024 // PAGE * SIZEOF_PAGE // PAGE


def node_of(truth: dict, pfn: int) -> int:
    for nid, ranges in truth["node_pfn_ranges"].items():
        if any(lo <= pfn < hi for lo, hi in ranges):
            return int(nid)
    raise AssertionError(f"pfn {pfn:#x} in no node of the guest")


def expected_optimized(truth: dict, scenario: str, pfn: int) -> bool:
    """Which folios HVO optimized, from how the scenario allocated them."""
    if scenario == "hvo-off":
        return False
    if scenario == "mixed":
        # Phase 1 allocated with vm.hugetlb_optimize_vmemmap=1, phase 2 with 0.
        phase = {u["pfn"]: u["phase"] for u in truth["in_use"]}
        if pfn in phase:
            return phase[pfn] == 1
        return None  # a free folio: the kernel chose which to hand out
    return True


CASES = ([(k, s) for k in MATRIX for s in HEALTHY] if FULL else
         [(k, s) for k in KERNELS for s in HEALTHY]
         + [(k, "hvo-2m") for k in MATRIX if k not in KERNELS])


def expected_optimized_count(truth: dict, scenario: str) -> int:
    """Folios HVO optimized, from how the scenario allocated them."""
    if scenario == "hvo-off":
        return 0
    if scenario == "mixed":
        return 16  # allocated while the sysctl was on (phase 1)
    return len(truth["hugetlb_folios"])


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def case(request):
    series, scenario = request.param
    run = real_run(series, scenario)
    truth = run["truth"]
    assert not truth["errors"], truth["errors"]
    report = vmemspect_json(run)
    folios = vmemspect_json(run, "folios")["folios"]
    return series, scenario, run, truth, report, folios


def test_kernel_and_form(case):
    series, scenario, run, truth, report, _ = case
    k = report["kernel"]
    assert k["release"] == truth["uname"]
    assert k["form"] == FORM[series]
    assert k["info_member"] == ("compound_info" if FORM[series] == "mask" else "compound_head")
    # Kernels without -dbg (rt) are read through their own BTF.
    assert k["types"] == ("dwarf" if run["vmlinux"] else "btf")
    assert k["hvo_built"] is True
    assert k["hvo_enabled"] == bool(truth["hugetlb_optimize_vmemmap"])
    assert k["sizeof_page"] == SIZEOF_PAGE


def test_folios_are_the_kernels(case):
    """The folio set equals /proc/kpageflags' hugetlb heads; counts per hstate
    and node equal sysfs; in-use folios are the ones the guest holds."""
    _, scenario, _, truth, report, folios = case
    assert sorted(f["pfn"] for f in folios) == sorted(h["pfn"] for h in truth["hugetlb_folios"])
    counts = collections.Counter()
    free = collections.Counter()
    for f in folios:
        size_kb = (1 << f["order"]) * PAGE // 1024
        counts[(str(size_kb), str(f["nid"]))] += 1
        free[(str(size_kb), str(f["nid"]))] += f["state"] == "free"
        assert f["nid"] == node_of(truth, f["pfn"])
    expected = {(size, nid): v["nr_hugepages"]
                for size, h in truth["hstates"].items() for nid, v in h["nodes"].items()
                if v["nr_hugepages"]}
    assert dict(counts) == expected
    assert dict((k, v) for k, v in free.items()) == {
        (size, nid): v["free_hugepages"]
        for size, h in truth["hstates"].items() for nid, v in h["nodes"].items()
        if v["nr_hugepages"]}
    in_use = sorted(f["pfn"] for f in folios if f["state"] == "active")
    assert in_use == sorted(u["pfn"] for u in truth["in_use"])
    # The report's groups add up to the same counts.
    groups = collections.Counter()
    for g in report["groups"]:
        groups[(g["hstate"].split("-")[1][:-2], str(g["nid"]))] += g["total"]
    assert dict(groups) == expected


def test_hvo_state_per_folio(case):
    _, scenario, _, truth, _, folios = case
    for f in folios:
        want = expected_optimized(truth, scenario, f["pfn"])
        if want is not None:
            assert f["optimized"] is want, f
        assert f["remapped"] is f["optimized"]
        assert f["verdict"] == "ok", f
    if scenario == "numa":
        # The scenario's shape: 2 MiB folios on both nodes, in two zones, and
        # the 1 GiB folio on node 1.
        assert {(f["nid"], f["zone"]) for f in folios if f["order"] == 9} == {
            (0, "DMA32"), (1, "Normal")}
        assert [(f["nid"], f["zone"]) for f in folios if f["order"] == 18] == [(1, "Normal")]
    if scenario == "mixed":
        # 16 folios allocated with the sysctl on, 16 with it off.
        assert sum(f["optimized"] for f in folios) == 16
        assert len(folios) == 32


def test_savings_match_kernel_counters(case):
    """Saved vmemmap pages == what the kernel's memmap counters lost (6.10+),
    and == the kernel's boot line per folio times the optimized folios; the
    kernel's count of optimized folios (hugetlb_optimize_vmemmap_key, 5.18 to
    7.0) == the folios the scenario optimized. On a kernel without memmap
    counters (6.1) the report says it compared against the key, and the
    boot lines it read from the dump are the guest's."""
    series, scenario, _, truth, report, folios = case
    s = report["savings"]
    vmstat = truth["vmstat"]
    if "nr_memmap_pages" in vmstat:
        sections = sum(len(b) for b in truth["node_memory_blocks"].values())
        without_hvo = sections * truth["memory_block_size"] // PAGE * SIZEOF_PAGE // PAGE
        kernel_saved = without_hvo - vmstat["nr_memmap_pages"] - vmstat["nr_memmap_boot_pages"]
        assert s["saved_pages"] == kernel_saved
        assert s["kernel_saved_pages"] == kernel_saved
        assert s["kernel_source"] == "nr_memmap_boot_pages + nr_memmap_pages"
    else:
        assert s["kernel_saved_pages"] is None
        assert s["kernel_source"] == "hugetlb_optimize_vmemmap_key"
        assert s["kernel_freeable_kib"] == truth["vmemmap_freeable_kib"]
    assert s["kernel_agrees"] is True
    if report["kernel"]["hvo_key"]:
        assert s["kernel_optimized_folios"] == expected_optimized_count(truth, scenario)
    else:
        assert FORM[series] == "mask" and s["kernel_optimized_folios"] is None
    per_folio = {int(k): v // 4 for k, v in truth["vmemmap_freeable_kib"].items()}
    by_lines = sum(per_folio[(1 << f["order"]) * PAGE // 1024]
                   for f in folios if f["optimized"])
    assert s["saved_pages"] == by_lines


def test_tails(case):
    series, scenario, run, truth, _, folios = case
    tails = vmemspect_json(run, "tails")
    optimized = [f for f in folios if f["optimized"]]
    if FORM[series] == "mask":
        # One shared frame per node, zone and order in use, mapped by exactly
        # that group's optimized folios, all 64 struct pages valid tails.
        groups = collections.Counter((f["nid"], f["zone"], f["order"]) for f in optimized)
        frames = {(t["nid"], t["zone"], t["order"]): t for t in tails["tails"]}
        assert set(frames) == set(groups)
        for key, n in groups.items():
            t = frames[key]
            assert t["folios"] == n
            assert t["valid_tails"] == 64 and t["invalid_tails"] == 0
            assert (t["flags_nid"], t["flags_zone_idx"]) == (key[0], t["zone_idx"])
            assert t["slot"] == key[2] - 7
        for f in optimized:
            frame = frames[(f["nid"], f["zone"], f["order"])]["pfn"]
            assert [t["pfn"] for t in f["tail_frames"]] == [frame]
            assert f["tail_frames"][0]["writable"] == 0
            assert f["tail_frames"][0]["levels"] == ["pte"]
            assert f["head_frame"]["writable"] is True
        assert len({t["pfn"] for t in tails["tails"]}) == len(groups)
    else:
        # One aliased frame per optimized folio: its own head frame, with a
        # fake head at every tail vmemmap page.
        assert sorted(t["folio_pfn"] for t in tails["tails"]) == sorted(f["pfn"] for f in optimized)
        for t in tails["tails"]:
            size_kb = [f for f in optimized if f["pfn"] == t["folio_pfn"]][0]["order"]
            n = vmemmap_pages((1 << size_kb) * PAGE // 1024)
            assert t["aliases"] == n - 1
            assert t["fake_heads"] == n - 1
        assert len({t["frame_pfn"] for t in tails["tails"]}) == len(optimized)
    for f in folios:
        if not f["optimized"]:
            n = vmemmap_pages((1 << f["order"]) * PAGE // 1024)
            assert f["distinct_frames"] == n


def test_verify_clean(case):
    _, _, run, _, _, _ = case
    v = vmemspect_json(run, "verify")
    assert v["ok"] is True and v["findings"] == [] and v["unknown"] == 0
    assert v["checked_folios"] == len(run["truth"]["hugetlb_folios"])


def test_decode(case):
    series, _, run, truth, _, folios = case
    f = folios[0]
    tail = vmemspect_json(run, "decode", f"pfn:{f['pfn'] + 1}")
    assert tail["tail"] is True and tail["head_pfn"] == f["pfn"]
    assert tail["head_is_head"] is True
    assert tail["agrees_with_drgn"] is True
    if FORM[series] == "mask":
        # hvo-facts.md: 2 MiB tails hold 0xffffffffffff8001, 1 GiB 0xffffffffff000001.
        assert tail["raw"] == {9: "0xffffffffffff8001", 18: "0xffffffffff000001"}[f["order"]]
        assert tail["order"] == f["order"]
    else:
        assert int(tail["raw"], 16) == int(f["page"], 16) + 1
    head = vmemspect_json(run, "decode", f["page"])
    assert head["tail"] is False and head["pg_head"] is True and head["fake_head"] is False
    if FORM[series] == "pointer" and f["optimized"]:
        fake = vmemspect_json(run, "decode", f"pfn:{f['pfn'] + 64}")
        assert fake["fake_head"] is True and fake["pg_head"] is True


def test_text_output(case):
    """The human report runs and carries the same verdict."""
    series, _, run, _, _, _ = case
    p = vmemspect("vmcore", run["kdump"], *types_args(run))
    assert f"{FORM[series]} form" in p.stdout
    assert "verify        OK: 0 finding(s)" in p.stdout
    assert p.stderr.strip() == "" or "flattened" not in p.stderr
