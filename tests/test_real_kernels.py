"""
vmemspect against real Debian kernels booted under QEMU (scripts/testbed),
the architecture a parameter like the kernel: 6.12 (pointer form) and 7.2
(mask form) in every healthy scenario, every other x86_64 kernel in hvo-2m,
and the riscv64 kernels (kernels.RISCV: 7.2 under Sv48, 6.12 under Sv57) in
hvo-2m and mixed; the full run (scripts/test.sh --full) takes every kernel
into every healthy scenario. Expected values come from what the guest said
about itself on its console (sysfs, /proc/meminfo, /proc/vmstat,
/proc/kpageflags, the kernel's boot lines) and from how the test bed booted
it, never from vmemspect.

x86_64 runs are read from QEMU's kdump-zlib dumps; riscv64 runs from QEMU's
ELF dumps, which carry no VMCOREINFO, with the text the test bed read out of
the dump (conftest.types_args). tests/test_riscv.py adds what is riscv64's
own: the test bed's checks of those dumps, a page-table walk of its own to
compare vmemspect's frames with, corruption at riscv PTEs, kdump and live.
"""

import collections

import pytest

import testbed
from conftest import (FORM, FULL, KERNELS, MATRIX, RISCV, kernel_saved_pages, real_run,
                      types_args, vmemspect, vmemspect_json)

HEALTHY = ("hvo-2m", "hvo-1g", "hvo-off", "mixed", "numa")
#: riscv64 on every commit: both kernels in two scenarios (their guests boot
#: slower under TCG); the full run takes them into every healthy scenario.
RISCV_SCENARIOS = HEALTHY if FULL else ("hvo-2m", "mixed")
PAGE = 4096
SIZEOF_PAGE = 64
#: compound_info of a tail, mask form: GENMASK(63, order + 6) | 1
#: (hvo-facts.md: 2 MiB tails hold 0xffffffffffff8001, 1 GiB 0xffffffffff000001).
TAIL_MASK = {9: 0xFFFFFFFFFFFF8001, 18: 0xFFFFFFFFFF000001}


def arch(series: str) -> str:
    return testbed.kernel(series).arch


def paging(series: str) -> str:
    """The paging mode the guest runs in, from how the test bed boots it:
    x86_64 under QEMU's max CPU, which has LA57, and Debian's kernels enable
    5-level paging; riscv64 under QEMU's rv64 CPU, which has Sv57: 6.12 takes
    it, 7.2 stays at Sv48 (docs/testbed.md)."""
    if arch(series) == "x86_64":
        return "5-level"
    return {"mask": "Sv48", "pointer": "Sv57"}[FORM[series]]


#: Whether HVO's tail PTEs are writable: x86_64 remaps them read-only
#: (PAGE_KERNEL_RO); riscv64 has no PAGE_KERNEL_RO, and the remap falls back
#: to PAGE_KERNEL.
WRITABLE_TAILS = {"x86_64": False, "riscv64": True}


def vmemmap_pages(nr_pages: int) -> int:
    """vmemmap pages of a folio of ``nr_pages`` pages (8 for 2 MiB)."""
    return nr_pages * SIZEOF_PAGE // PAGE


def node_of(truth: dict, pfn: int) -> int:
    for nid, ranges in truth["node_pfn_ranges"].items():
        if any(lo <= pfn < hi for lo, hi in ranges):
            return int(nid)
    raise AssertionError(f"pfn {pfn:#x} in no node of the guest")


def expected_optimized(truth: dict, scenario: str, pfn: int):
    """Which folios HVO optimized, from how the scenario allocated them
    (None: a free folio of mixed, the kernel chose which one it is)."""
    if scenario == "hvo-off":
        return False
    if scenario == "mixed":
        # Phase 1 allocated with vm.hugetlb_optimize_vmemmap=1, phase 2 with 0.
        phase = {u["pfn"]: u["phase"] for u in truth["in_use"]}
        return phase[pfn] == 1 if pfn in phase else None
    return True


def expected_optimized_count(truth: dict, scenario: str) -> int:
    """Folios HVO optimized, from how the scenario allocated them."""
    if scenario == "hvo-off":
        return 0
    if scenario == "mixed":
        return 16  # 2 MiB folios allocated while the sysctl was on (phase 1)
    return len(truth["hugetlb_folios"])


def freeable_pages(truth: dict) -> dict:
    """Per huge page size in kB, the vmemmap pages HVO frees per folio, by
    the kernel's own boot line ("... can be freed for a N kB page")."""
    return {int(k): v * 1024 // PAGE for k, v in truth["vmemmap_freeable_kib"].items()}


def expected_saved(truth: dict, scenario: str) -> int:
    """vmemmap pages HVO freed, from the scenario's optimized folios and the
    kernel's own boot line per folio size."""
    per_folio = freeable_pages(truth)
    if scenario == "hvo-off":
        return 0
    if scenario == "mixed":
        return per_folio[2048] * expected_optimized_count(truth, scenario)
    return sum(per_folio[h["nr_pages"] * PAGE // 1024] for h in truth["hugetlb_folios"])


CASES = ([(k, s) for k in MATRIX for s in HEALTHY] if FULL else
         [(k, s) for k in KERNELS for s in HEALTHY]
         + [(k, "hvo-2m") for k in MATRIX if k not in KERNELS]) \
    + [(k, s) for k in RISCV for s in RISCV_SCENARIOS]


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
    assert k["arch"] == arch(series)
    assert k["paging"] == paging(series)
    assert k["form"] == FORM[series]
    assert k["info_member"] == ("compound_info" if FORM[series] == "mask" else "compound_head")
    # Kernels fetched without -dbg (rt, riscv64) are read through their own BTF.
    assert k["types"] == ("dwarf" if run["vmlinux"] else "btf")
    assert k["hvo_built"] is True
    assert k["hvo_enabled"] == bool(truth["hugetlb_optimize_vmemmap"])
    assert k["sizeof_page"] == SIZEOF_PAGE and k["page_size"] == PAGE


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
    assert dict(free) == {(size, nid): v["free_hugepages"]
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
    series, scenario, _, truth, _, folios = case
    for f in folios:
        want = expected_optimized(truth, scenario, f["pfn"])
        if want is not None:
            assert f["optimized"] is want, f
        assert f["remapped"] is f["optimized"]
        assert f["verdict"] == "ok", f
    assert sum(f["optimized"] for f in folios) == expected_optimized_count(truth, scenario)
    if scenario == "numa" and arch(series) == "x86_64":
        # The scenario's shape on x86_64: 2 MiB folios on both nodes, in two
        # zones, and the 1 GiB folio on node 1.
        assert {(f["nid"], f["zone"]) for f in folios if f["order"] == 9} == {
            (0, "DMA32"), (1, "Normal")}
        assert [(f["nid"], f["zone"]) for f in folios if f["order"] == 18] == [(1, "Normal")]
    if scenario == "mixed":
        # 16 folios allocated with the sysctl on, 16 with it off.
        assert len(folios) == 32


def test_savings_match_kernel_counters(case):
    """Saved vmemmap pages == what the kernel's memmap counters lost (6.10+),
    and == the kernel's boot line per folio times the folios the scenario
    optimized; the kernel's count of optimized folios
    (hugetlb_optimize_vmemmap_key, 5.18 to 7.0) == the folios the scenario
    optimized. On a kernel without memmap counters (6.1) the report says it
    compared against the key, and the boot lines it read from the dump are
    the guest's."""
    series, scenario, _, truth, report, folios = case
    s = report["savings"]
    vmstat = truth["vmstat"]
    if "nr_memmap_pages" in vmstat:
        kernel_saved = kernel_saved_pages(truth)
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
    assert s["saved_pages"] == expected_saved(truth, scenario)
    per_folio = freeable_pages(truth)
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
            (tf,) = f["tail_frames"]
            tails_n = vmemmap_pages(1 << f["order"]) - 1
            assert tf["pfn"] == frame and tf["pages"] == tails_n
            assert tf["writable"] == (tails_n if WRITABLE_TAILS[arch(series)] else 0)
            assert tf["levels"] == ["pte"]
            assert f["head_frame"]["writable"] is True
        assert len({t["pfn"] for t in tails["tails"]}) == len(groups)
    else:
        # One aliased frame per optimized folio: its own head frame, with a
        # fake head at every tail vmemmap page.
        assert sorted(t["folio_pfn"] for t in tails["tails"]) == sorted(f["pfn"] for f in optimized)
        order = {f["pfn"]: f["order"] for f in optimized}
        for t in tails["tails"]:
            n = vmemmap_pages(1 << order[t["folio_pfn"]])
            assert t["aliases"] == n - 1
            assert t["fake_heads"] == n - 1
        assert len({t["frame_pfn"] for t in tails["tails"]}) == len(optimized)
    for f in folios:
        if not f["optimized"]:
            assert f["distinct_frames"] == vmemmap_pages(1 << f["order"])


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
        assert tail["raw"] == hex(TAIL_MASK[f["order"]])
        assert tail["order"] == f["order"]
    else:
        assert int(tail["raw"], 16) == int(f["page"], 16) + 1
    head = vmemspect_json(run, "decode", f["page"])
    assert head["tail"] is False and head["pg_head"] is True and head["fake_head"] is False
    if FORM[series] == "pointer" and f["optimized"]:
        fake = vmemspect_json(run, "decode", f"pfn:{f['pfn'] + 64}")
        assert fake["fake_head"] is True and fake["pg_head"] is True


def test_text_output(case):
    """The human report runs and carries the same verdict, the kernel's
    architecture and paging mode."""
    series, _, run, _, _, _ = case
    p = vmemspect("vmcore", run["kdump"] or run["elf"], *types_args(run))
    assert f"{FORM[series]} form" in p.stdout
    assert f"({arch(series)}, {paging(series)} paging" in p.stdout
    assert "verify        OK: 0 finding(s)" in p.stdout
    assert p.stderr.strip() == "" or "flattened" not in p.stderr
