"""
vmemspect on synthetic kernels (tests/synthetic.py): type-based detection,
folio enumeration, the page-table walker, shared tails and fake heads, every
check on healthy and corrupted kernels, the CLI and the drgn command.

Expected values come from how the kernel was built (the builder's records:
folio specs, frames it allocated, PTEs it wrote), never from vmemspect.
"""

import collections
import json
import os

import drgn
import pytest
from drgn.helpers.linux.hugetlb import for_each_hstate
from drgn import cast
from drgn.helpers.linux.mm import compound_head, page_to_pfn

import vmemspect
from vmemspect.cli import run
from vmemspect.hugetlb import for_each_hstate_record, for_each_hugetlb_folio_record, hvo_enabled
from vmemspect.hvo import decode_page
from vmemspect.kernel import kernel_model
from vmemspect.pagetable import _new_walker, page_table_walker
from vmemspect.report import build_report

from synthetic import (
    PAGE_SIZE,
    PTE_RO,
    RW_BIT,
    START_KERNEL_MAP,
    TAIL_MAPPING,
    FolioSpec,
    ZoneSpec,
    build_kernel,
    page_flags,
    tail_mask,
)

HNAME = {9: "hugepages-2048kB", 18: "hugepages-1048576kB"}
ZNAME = {0: "DMA", 1: "DMA32", 2: "Normal"}
KASLR_VMEMMAP = 0xFFFFD8B5C0000000  # 1 GiB aligned, like x86_64 KASLR's
# Folios of default_folios(), by what was built.
OPT_2M_NODE0 = (0x10000, 0x10200, 0x10400)
OPT_2M_NODE1 = (0x100000, 0x100200)
OPT_1G = 0x40000
UNOPT = (0x10600, 0x18000, 0x100400)
# "pmd" mode: 0x18000 has a vmemmap PMD of its own; 0x10600 and 0x100400
# share theirs with optimized folios, so HVO split it into PTEs.
PMD_LEVEL = {0x10600: 1, 0x18000: 2, 0x100400: 1}


def keys(findings):
    return {(f.check, f.folio_pfn, f.frame_pfn) for f in findings}


def test_vmemspect_is_this_checkout():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert os.path.dirname(os.path.abspath(vmemspect.__file__)) == os.path.join(root, "vmemspect")


# ---------------------------------------------------------------------------
# 1. Form detection from the types


def test_no_defaults_when_the_kernel_says():
    """Every fact the synthetic kernel states is taken from it: no default."""
    m = kernel_model(build_kernel(folios=[]).prog)
    assert m.defaults == ()
    assert (m.section_size_bits, m.pg_head, m.hpg_vmemmap_optimized) == (27, 6, 4)


def test_facts_fall_back_to_written_defaults(capsys):
    """A fact the kernel does not state falls back to a default that the
    evidence line and the JSON name; a fact VMCOREINFO states (PG_head's
    mask) is taken from there, not defaulted; the model still serves."""
    k = build_kernel(hide=("HPG_vmemmap_optimized", "HPG_migratable", "PG_head"))
    m = kernel_model(k.prog)
    assert m.defaults == (
        "HPG_vmemmap_optimized = 4 (default: no enumerator)",
        "HPG_migratable = 1 (default: no enumerator)",
    )
    assert m.pg_head == 6 and "PG_head" not in " ".join(m.defaults)
    assert set(m.defaults) <= set(m.evidence)
    assert run(["verify"], prog=k.prog) == 0
    capsys.readouterr()
    run(["--json"], prog=k.prog)
    doc = json.loads(capsys.readouterr().out)
    assert doc["kernel"]["defaults"] == list(m.defaults)


def test_btf_length_defaults_are_named():
    """An array length the BTF finder had to default (nothing in the kernel
    gave it) is named among the model's defaults."""
    from vmemspect.progcache import cache_set

    class FakeBtf:
        length_sources = {"hstates": "default HUGE_MAX_HSTATE"}

        def defaulted_lengths(self):
            return {"hstates": (2, "default HUGE_MAX_HSTATE")}

    k = build_kernel(folios=[])
    cache_set(k.prog, "btf", FakeBtf())
    m = kernel_model(k.prog)
    assert m.defaults == ("len(hstates) = 2 (default HUGE_MAX_HSTATE: nothing in the kernel "
                          "gave it)",)


def test_a_wrong_default_is_named_beside_the_verdict(capsys):
    """The synthetic kernel has 5 zones (3 zone bits); without the
    enumerator the default of 4 zones (2 bits) misreads every folio's zone:
    verify reports it, and the report's evidence names the default it
    rests on."""
    k = build_kernel(hide=("__MAX_NR_ZONES",))
    assert run(["verify"], prog=k.prog) == 1
    capsys.readouterr()
    run([], prog=k.prog)
    out = capsys.readouterr().out
    assert "__MAX_NR_ZONES = 4 (default: no enumerator)" in out



@pytest.mark.parametrize("kw, form, member, owner, tails_len", [
    (dict(form="mask"), "mask", "compound_info", "zone", 16),
    (dict(form="mask", tails_owner="pglist_data"), "mask", "compound_info", "pglist_data", 16),
    (dict(form="mask", tails_len=12), "mask", "compound_info", "zone", 12),
    # arm64 7.2: the new name, no HVO, no vmemmap_tails: pointer values.
    (dict(form="pointer", info_member="compound_info"), "pointer", "compound_info", None, 0),
    (dict(form="pointer"), "pointer", "compound_head", None, 0),
    # compound_info and vmemmap_tails but a struct page that is not a power of 2.
    (dict(form="pointer", info_member="compound_info", tails_owner="zone", sizeof_page=80,
          hvo_built=True), "pointer", "compound_info", "zone", 16),
])
def test_form_detection(kw, form, member, owner, tails_len):
    k = build_kernel(folios=[], **kw)
    m = kernel_model(k.prog)
    assert (m.form, m.info_member, m.tails_owner, m.tails_len) == (form, member, owner, tails_len)
    assert m.sizeof_page == kw.get("sizeof_page", 64)
    ev = "\n".join(m.evidence)
    assert f"struct page has {member}" in ev
    if owner:
        assert f"struct {owner} has vmemmap_tails[{tails_len}]" in ev
    else:
        assert "neither struct zone nor struct pglist_data has vmemmap_tails" in ev
    assert f"sizeof(struct page) = {kw.get('sizeof_page', 64)}" in ev


def test_model_offsets_and_constants():
    k = build_kernel(folios=[], vmemmap_base=KASLR_VMEMMAP, release="7.2.13+deb14-cloud-amd64")
    m = kernel_model(k.prog)
    assert (m.off_flags, m.off_info, m.off_lru, m.off_mapping, m.off_private,
            m.off_refcount) == (0, 8, 8, 24, 40, 52)
    assert (m.pg_head, m.hpg_vmemmap_optimized) == (6, 4)
    # node_data[1024] and 5 zones: node in bits 54..63, zone in 51..53.
    assert (m.nodes_pgoff, m.nodes_mask, m.zones_pgoff, m.zones_mask) == (54, 1023, 51, 7)
    assert m.vmemmap_start == KASLR_VMEMMAP
    assert (m.release, m.page_shift, m.tail_min_order, m.hugetlb, m.hvo_built,
            m.pgtable_levels) == ("7.2.13+deb14-cloud-amd64", 12, 7, True, True, 4)


@pytest.mark.parametrize("symbol", ["pgdir_shift", "__pgtable_l5_enabled"])
@pytest.mark.parametrize("levels", [4, 5])
def test_paging_depth(levels, symbol):
    k = build_kernel(folios=[], levels=levels, levels_symbol=symbol)
    assert kernel_model(k.prog).pgtable_levels == levels


def test_paging_depth_from_vmcoreinfo_alone():
    # A kernel without pgdir_shift and __pgtable_l5_enabled (upstream has
    # posted their removal): only VMCOREINFO says 5-level.
    k = build_kernel(levels=5, levels_symbol=None)
    assert kernel_model(k.prog).pgtable_levels == 5
    r = build_report(k.prog)
    assert (r.findings, r.unknown) == ([], [])


def test_hvo_not_built():
    k = build_kernel(form="pointer", hvo_built=False, folios=[FolioSpec(0x10000, 9, "free", False)])
    m = kernel_model(k.prog)
    assert m.hvo_built is False
    assert hvo_enabled(k.prog) is None
    assert "no vmemmap_optimize_enabled (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=n)" in m.evidence
    assert build_report(k.prog).findings == []


@pytest.mark.parametrize("enabled", [True, False])
def test_hvo_enabled_value(enabled):
    assert hvo_enabled(build_kernel(folios=[], hvo_enabled=enabled).prog) is enabled


# ---------------------------------------------------------------------------
# 2. decode_page against drgn's compound_head()


def drgn_head(prog, address):
    return compound_head(drgn.Object(prog, "struct page *", address)).value_()


@pytest.mark.parametrize("index", [1, 2, 63, 64, 100, 448, 511])
def test_decode_mask_tails(index):
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    d = decode_page(k.prog, f.struct_page(index))
    assert d.pfn == 0x10200 + index
    assert d.member == "compound_info"
    assert d.info.raw == tail_mask(9)
    assert (d.info.tail, d.info.head, d.info.order, d.info.valid) == (True, f.page, 9, True)
    assert (d.head_pfn, d.head_is_head, d.pg_head, d.fake_head) == (0x10200, True, False, False)
    assert d.drgn_head == f.page == drgn_head(k.prog, f.struct_page(index))
    frame = f.head_frame if index < 64 else k.shared_frame(0, 1, 9)
    assert (d.leaf.pfn, d.leaf.level, d.leaf.writable) == (frame, 1, index < 64)


def test_decode_mask_head_and_gigantic_tail():
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    d = decode_page(k.prog, f.page)
    assert (d.info.tail, d.pg_head, d.fake_head, d.drgn_head) == (False, True, False, f.page)
    g = k.folio(OPT_1G)
    d = decode_page(k.prog, g.struct_page(0x12345))
    assert (d.info.head, d.info.order, d.head_pfn) == (g.page, 18, OPT_1G)
    assert d.drgn_head == g.page
    assert d.leaf.pfn == k.shared_frame(0, 1, 18)


@pytest.mark.parametrize("k_", [1, 2, 7])
def test_decode_pointer_fake_head(k_):
    k = build_kernel(form="pointer")
    f = k.folio(0x10200)
    fake = f.struct_page(64 * k_)
    d = decode_page(k.prog, fake)
    # The struct page at 64k reads as the head (PG_head, lru.next): a fake head.
    assert (d.pg_head, d.info.tail, d.fake_head) == (True, False, True)
    assert d.drgn_head == f.page == drgn_head(k.prog, fake)
    assert (d.leaf.pfn, d.leaf.writable) == (f.head_frame, False)
    d = decode_page(k.prog, fake + 5 * 64)
    assert (d.info.tail, d.info.head, d.fake_head, d.drgn_head) == (True, f.page, False, f.page)


def test_decode_pointer_head_is_not_fake():
    k = build_kernel(form="pointer")
    f = k.folio(0x10200)
    d = decode_page(k.prog, f.page)
    assert (d.pg_head, d.fake_head, d.info.tail, d.drgn_head) == (True, False, False, f.page)


def test_decode_unoptimized_pmd_mapped():
    k = build_kernel(form="mask", vmemmap_mapping="pmd")
    f = k.folio(0x18000)
    d = decode_page(k.prog, f.struct_page(300))
    assert (d.info.head, d.drgn_head) == (f.page, f.page)
    assert (d.leaf.level, d.leaf.pfn, d.leaf.writable) == (2, f.frames[300 // 64], True)


def test_decode_pglist_data_variant():
    # vmemspect decodes the mask form from pglist_data's vmemmap_tails too.
    k = build_kernel(form="mask", tails_owner="pglist_data")
    f = k.folio(0x100200)
    d = decode_page(k.prog, f.struct_page(200))
    assert (d.info.form, d.info.head, d.info.order) == ("mask", f.page, 9)


@pytest.mark.parametrize("form", ["mask", "pointer"])
def test_decode_last_struct_page_before_a_hole(form):
    # The last struct page of a folio whose next vmemmap page is not mapped
    # ("pte" mode maps only the folios' own vmemmap pages).
    k = build_kernel(form=form, vmemmap_mapping="pte")
    f = k.folio(0x18000)
    assert k.pt.translate(f.vmemmap_page(8)) is None
    d = decode_page(k.prog, f.struct_page(511))
    assert (d.pfn, d.info.tail, d.info.head, d.fake_head) == (0x181FF, True, f.page, False)


# ---------------------------------------------------------------------------
# 3. Folio enumeration and the page-table walker


def built_rows(k):
    return {(f.pfn, HNAME[f.order], f.order, f.nid, f.zone, ZNAME[f.zone], f.state, f.optimized)
            for f in k.folios.values()}


@pytest.mark.parametrize("form", ["mask", "pointer"])
def test_folio_enumeration(form):
    k = build_kernel(form=form)
    folios = list(for_each_hugetlb_folio_record(k.prog))
    assert len(folios) == 9
    assert {(f.pfn, f.hstate, f.order, f.nid, f.zone_idx, f.zone_name, f.state, f.optimized)
            for f in folios} == built_rows(k)
    for f in folios:
        b = k.folio(f.pfn)
        assert f.page == k.page_address(f.pfn)
        assert f.folio_order == b.order
        assert f.private == b.private
        assert f.refcount == (1 if b.state == "active" else 0)
        assert f.list_nid == (b.nid if b.state == "free" else -1)
        assert f.flags == page_flags(b.nid, b.zone, 1 << 6)
    # Free lists of each node first, then the active list; each list in order.
    assert [f.pfn for f in folios if f.hstate == HNAME[9]] == [
        0x10000, 0x10200, 0x10600, 0x100000, 0x100400, 0x10400, 0x18000, 0x100200]


def test_hstate_records():
    k = build_kernel()
    hs = {h.name: h for h in for_each_hstate_record(k.prog)}
    assert set(hs) == {HNAME[9], HNAME[18]}
    h = hs[HNAME[9]]
    assert (h.index, h.order, h.nr_huge_pages, h.free_huge_pages) == (0, 9, 8, 5)
    assert h.per_node == {0: (5, 3, 0), 1: (3, 2, 0)}
    assert h.address == k.hstate_address[9]
    g = hs[HNAME[18]]
    assert (g.index, g.order, g.nr_huge_pages, g.per_node) == (
        1, 18, 1, {0: (1, 1, 0), 1: (0, 0, 0)})


def test_groups():
    r = build_report(build_kernel().prog)
    assert {(g.hstate, g.nid, g.zone, g.total, g.free, g.in_use, g.optimized, g.not_optimized,
             g.saved_pages, g.possible_pages) for g in r.groups()} == {
        (HNAME[9], 0, "DMA32", 5, 3, 2, 3, 2, 21, 35),
        (HNAME[9], 1, "Normal", 3, 2, 1, 2, 1, 14, 21),
        (HNAME[18], 0, "DMA32", 1, 1, 0, 1, 0, 4095, 4095),
    }


@pytest.mark.parametrize("mapping", ["pmd", "pte"])
@pytest.mark.parametrize("levels", [4, 5])
def test_walker_vmemmap(levels, mapping):
    k = build_kernel(levels=levels, vmemmap_mapping=mapping, vmemmap_base=None)
    w = _new_walker(k.prog, kernel_model(k.prog))
    assert w.levels == levels
    for f in k.folios.values():
        for i in range(min(f.npages, 16)):
            leaf = w.lookup(f.vmemmap_page(i))
            if f.optimized:
                level, writable = 1, i == 0
            else:
                level, writable = (PMD_LEVEL[f.pfn] if mapping == "pmd" else 1), True
            assert (leaf.pfn, leaf.level, leaf.writable) == (f.frames[i], level, writable), \
                (hex(f.pfn), i)
            assert leaf.level_name == {1: "pte", 2: "pmd"}[level]
            assert leaf.entry == k.read_pte(f.vmemmap_page(i))
            assert leaf.table == k.pte_address(f.vmemmap_page(i)) & ~0xFFF


def test_walker_pmd_block_frames():
    k = build_kernel(vmemmap_mapping="pmd")
    f = k.folio(0x18000)
    region = (f.page - k.vmemmap_base) >> 21
    block = k.pmd_blocks[region]
    first = block + ((f.page - k.vmemmap_base) & ((2 << 20) - 1)) // PAGE_SIZE
    w = page_table_walker(k.prog)
    assert [w.lookup(f.vmemmap_page(i)).pfn for i in range(8)] == list(range(first, first + 8))


@pytest.mark.parametrize("levels", [4, 5])
def test_walker_other_mappings(levels):
    k = build_kernel(levels=levels)
    w = page_table_walker(k.prog)
    # The kernel image and the direct map: 2 MiB leaves.
    hstates = k.symbol("hstates")
    leaf = w.lookup(hstates & ~0xFFF)
    assert (leaf.level, leaf.pfn, leaf.writable) == (2, (hstates - START_KERNEL_MAP) >> 12, True)
    pgdat = k.pgdat_address[1]
    leaf = w.lookup(pgdat & ~0xFFF)
    assert (leaf.level, leaf.pfn) == (2, (pgdat - k.page_offset) >> 12)
    # Nothing mapped: level 0, no frame.
    hole = k.page_address(0x30000)
    leaf = w.lookup(hole)
    assert (leaf.level, leaf.pfn, leaf.writable) == (0, None, False)
    # A 1 GiB PUD leaf.
    va = k.page_offset + (64 << 30)
    k.pt.map_1g(va, 3 << 30)
    leaf = _new_walker(k.prog, kernel_model(k.prog)).lookup(va + 0x12345000)
    assert (leaf.level, leaf.level_name, leaf.pfn) == (3, "pud", ((3 << 30) + 0x12345000) >> 12)


def test_walker_ands_rw_over_levels():
    k = build_kernel()
    f = k.folio(0x10200)
    # Clear RW in the PMD entry above the folio's PTE table: its PTEs stay RW.
    pmd = k.pt.table_entry_address(f.vmemmap, 2)
    k.mem.set_u64(pmd, k.mem.u64(pmd) & ~RW_BIT)
    assert k.read_pte(f.vmemmap) & RW_BIT
    leaf = page_table_walker(k.prog).lookup(f.vmemmap)
    assert (leaf.level, leaf.pfn, leaf.writable) == (1, f.head_frame, False)


def test_drgn_translates_through_the_same_tables():
    # The builder's own check: drgn reads the vmemmap through these tables.
    for form in ("mask", "pointer"):
        k = build_kernel(form=form, levels=5)
        f = k.folio(0x100200)
        want = tail_mask(9) if form == "mask" else f.page | 1
        assert k.prog.read_u64(f.struct_page(300) + 8) == want
        assert k.prog.read_u64(f.struct_page(300) + 24) == TAIL_MAPPING
        assert k.prog.read_u64(f.struct_page(300)) == page_flags(1, 2)


# ---------------------------------------------------------------------------
# 4. Healthy kernels


HEALTHY = [
    dict(form="mask"),
    dict(form="mask", levels=5, vmemmap_mapping="pte"),
    dict(form="mask", vmemmap_base=KASLR_VMEMMAP),
    dict(form="mask", levels=5, vmemmap_base=0xFFB3E00000000000),
    dict(form="mask", flags_type="memdesc", pgd_type="ulong"),
    dict(form="pointer"),
    dict(form="pointer", levels=5, vmemmap_mapping="pte", vmemmap_base=KASLR_VMEMMAP),
]


@pytest.mark.parametrize("kw", HEALTHY, ids=lambda kw: ",".join(
    f"{a}={b:#x}" if isinstance(b, int) and b > 9 else f"{a}={b}" for a, b in kw.items()))
def test_healthy(kw):
    k = build_kernel(**kw)
    r = build_report(k.prog)
    assert r.findings == []
    assert r.unknown == []
    assert {(fv.folio.pfn, fv.folio.optimized, fv.remapped) for fv in r.folios} == {
        (f.pfn, f.optimized, f.optimized) for f in k.folios.values()}
    for fv in r.folios:
        f = k.folio(fv.folio.pfn)
        assert fv.head.pfn == f.head_frame
        assert fv.distinct_frames == len(set(f.frames))
        assert {t.pfn: t.pages for t in fv.tails} == collections.Counter(f.frames[1:])


def test_shared_tails_mask():
    k = build_kernel(form="mask")
    r = build_report(k.prog)
    expected = collections.Counter((f.nid, f.zone, f.order)
                                   for f in k.folios.values() if f.optimized)
    assert {(t.nid, t.zone_idx, ZNAME[t.zone_idx], t.order, t.slot, t.pfn, t.page, t.folios,
             t.folios_expected) for t in r.tails} == {
        (nid, z, ZNAME[z], order, order - 7, k.shared_frame(nid, z, order),
         k.page_address(k.shared_frame(nid, z, order)), n, n)
        for (nid, z, order), n in expected.items()}
    assert expected == {(0, 1, 9): 3, (1, 2, 9): 2, (0, 1, 18): 1}
    for t in r.tails:
        c = t.contents
        assert (c.good_tails, c.bad, c.flags_nid, c.flags_zone) == (64, 0, t.nid, t.zone_idx)
    assert all(fv.fake_heads == 0 for fv in r.folios)


def test_shared_tails_zone_owner_two_zones_one_node():
    # Node 0 with folios in DMA32 and Normal: one shared frame per zone.
    zones = (ZoneSpec(0, 0, 0x1, 0xFFF), ZoneSpec(0, 1, 0x1000, 0xFF000),
             ZoneSpec(0, 2, 0x100000, 0x80000))
    folios = [FolioSpec(0x10000), FolioSpec(0x10200), FolioSpec(0x100000)]
    k = build_kernel(form="mask", zones=zones, folios=folios)
    assert k.shared_frame(0, 1) != k.shared_frame(0, 2)
    r = build_report(k.prog)
    assert r.findings == []
    assert {(t.zone_idx, t.pfn, t.folios) for t in r.tails} == {
        (1, k.shared_frame(0, 1), 2), (2, k.shared_frame(0, 2), 1)}


def test_pointer_fake_heads():
    k = build_kernel(form="pointer")
    r = build_report(k.prog)
    assert r.tails == []
    assert {fv.folio.pfn: fv.fake_heads for fv in r.folios} == {
        **{p: 7 for p in OPT_2M_NODE0 + OPT_2M_NODE1}, OPT_1G: 4095, **{p: 0 for p in UNOPT}}
    for fv in r.folios:
        if fv.folio.optimized:
            assert [(t.pfn, t.pages, t.writable, t.levels) for t in fv.tails] == [
                (k.folio(fv.folio.pfn).head_frame, fv.npages - 1, 0, ("pte",))]


@pytest.mark.parametrize("form", ["mask", "pointer"])
def test_savings(form):
    k = build_kernel(form=form)
    s = build_report(k.prog).savings
    assert s.saved_pages == 7 * 5 + 4095
    assert s.possible_pages == 7 * 8 + 4095
    assert s.shared_frame_pages == (3 if form == "mask" else 0)
    assert (s.kernel_memmap_pages, s.memmap_pages_without_hvo, s.kernel_saved_pages) == (
        None, None, None)


def test_savings_with_kernel_counters():
    k = build_kernel(memmap_counters=(20000, 1234))
    s = build_report(k.prog).savings
    # Present sections: DMA+DMA32 = pfn 0x1..0x100000, Normal 0x100000..0x180000:
    # 48 sections of 128 MiB, 512 vmemmap pages each.
    assert len(k.present_sections) == 48
    assert s.memmap_pages_without_hvo == 48 * 512
    assert s.kernel_memmap_pages == 21234
    assert s.kernel_saved_pages == 48 * 512 - 21234


# ---------------------------------------------------------------------------
# 5. Corruptions: each alone, each named exactly


def folio_findings_only_name(r, pfn):
    return {f.folio_pfn for f in r.findings if f.folio_pfn is not None} == {pfn}


def test_corrupt_mask_tail_pte_to_foreign_frame():
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    x = k.alloc_frame(bytes(PAGE_SIZE))
    k.remap(f.vmemmap_page(3), x)
    r = build_report(k.prog)
    assert keys(r.findings) == {("tail-frame", 0x10200, x)}
    (finding,) = r.findings
    assert hex(k.shared_frame(0, 1)) in finding.expected
    assert hex(x) in finding.found


def test_corrupt_mask_tail_pte_to_other_zones_shared_frame():
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    own, other = k.shared_frame(0, 1), k.shared_frame(1, 2)
    k.remap(f.vmemmap_page(6), other)
    r = build_report(k.prog)
    # The finding names the folio and both frames, and nothing else is said.
    assert keys(r.findings) == {("tail-frame", 0x10200, other)}
    tf = next(x for x in r.findings if x.check == "tail-frame")
    assert hex(own) in tf.expected and "node 0 DMA32" in tf.expected
    assert hex(other) in tf.found and "node 1 Normal order 9" in tf.found
    # tails still counts, from the page tables, who maps the other frame.
    t = next(t for t in r.tails if t.pfn == other)
    assert (t.folios, t.folios_expected) == (3, 2)


@pytest.mark.parametrize("form", ["mask", "pointer"])
def test_corrupt_writable_tail_pte(form):
    k = build_kernel(form=form)
    f = k.folio(0x100200)
    k.set_writable(f.vmemmap_page(5))
    assert k.read_pte(f.vmemmap_page(5)) & RW_BIT
    r = build_report(k.prog)
    frame = k.shared_frame(1, 2) if form == "mask" else f.head_frame
    assert keys(r.findings) == {("tail-readonly", 0x100200, frame)}
    assert "1 of 7 writable" in r.findings[0].found
    (cause,) = r.diagnosis
    assert (cause.cause, cause.folios, cause.implied) == ("tail-readonly", (0x100200,), ())
    # The frame is shared: by every folio of the zone and order, or by the head.
    assert cause.consequence.endswith("which all map this frame" if form == "mask"
                                      else "the folio's head page, which shares this frame")


def test_corrupt_wrong_mask_in_shared_frame():
    k = build_kernel(form="mask")
    frame = k.shared_frame(0, 1)
    k.write_frame_page(frame, 5, info=tail_mask(18))
    r = build_report(k.prog)
    assert keys(r.findings) == {("shared-frame", None, frame)}
    assert "struct page 5" in r.findings[0].found and hex(tail_mask(18)) in r.findings[0].found


def test_corrupt_wrong_node_in_shared_frame():
    k = build_kernel(form="mask")
    frame = k.shared_frame(1, 2)
    k.write_frame_page(frame, 63, flags=page_flags(0, 2))
    r = build_report(k.prog)
    assert keys(r.findings) == {("shared-frame", None, frame)}
    assert "struct page 63" in r.findings[0].found


def test_corrupt_wrong_mapping_in_shared_frame():
    k = build_kernel(form="mask")
    frame = k.shared_frame(0, 1, 18)
    k.write_frame_page(frame, 0, mapping=0)
    assert keys(build_report(k.prog).findings) == {("shared-frame", None, frame)}


@pytest.mark.parametrize("form", ["mask", "pointer"])
@pytest.mark.parametrize("mapping", ["pte", "pmd", "pmd-ro"])
def test_corrupt_flag_without_remap(form, mapping):
    # HPG_vmemmap_optimized set on a folio whose 8 vmemmap pages are its own.
    k = build_kernel(form=form, vmemmap_mapping=mapping[:3])
    f = k.folio(0x18000)
    k.set_optimized_flag(0x18000, True)
    if mapping == "pmd-ro":
        # Read-only, but a 2 MiB leaf: still not what HVO leaves (RO PTEs).
        k.set_writable(f.vmemmap, False)
    r = build_report(k.prog)
    expected = {("flag-vs-mapping", 0x18000, None)}
    # Being flagged, its tails are judged as an optimized folio's: none is
    # on the expected frame, none is a read-only PTE.
    for frame in f.frames[1:]:
        expected |= {("tail-frame", 0x18000, frame), ("tail-readonly", 0x18000, frame)}
    if mapping != "pte":
        expected.add(("head-mapping", 0x18000, f.head_frame))  # a PMD, not a PTE
    assert keys(r.findings) == expected
    assert folio_findings_only_name(r, 0x18000)
    # One root cause: the flag. The rest is what a folio never remapped
    # looks like, each tail on a frame of its own, none shared; but a
    # read-only head mapping is a problem of its own.
    cause = r.diagnosis[0]
    assert (cause.cause, cause.folios) == ("flag-not-remapped", (0x18000,))
    assert [r.findings[i].check for i in cause.findings] == ["flag-vs-mapping"]
    folded = {r.findings[i] for im in cause.implied for i in im.findings}
    alone = {("head-mapping", 0x18000, f.head_frame)} if mapping == "pmd-ro" else set()
    assert keys(folded) == expected - {("flag-vs-mapping", 0x18000, None)} - alone
    assert [(c.cause, c.folios) for c in r.diagnosis[1:]] == [(x[0], (x[1],)) for x in alone]
    if alone:
        assert "read-only mapping oopses" in r.diagnosis[1].consequence
    for x in folded:
        assert "another frame's contents" not in x.consequence
        assert "changes the folio's head page" not in x.consequence
        assert "every folio of this zone" not in x.consequence


@pytest.mark.parametrize("form", ["mask", "pointer"])
def test_corrupt_remap_without_flag(form):
    k = build_kernel(form=form)
    k.set_optimized_flag(0x10400, False)
    r = build_report(k.prog)
    expected = {("flag-vs-mapping", 0x10400, None)}
    assert keys(r.findings) == expected
    fvm = next(x for x in r.findings if x.check == "flag-vs-mapping")
    assert "HPG_vmemmap_optimized=clear" in fvm.found


@pytest.mark.parametrize("zone, order, needed_by", [(1, 9, 3), (1, 18, 1)])
def test_corrupt_empty_tails_slot(zone, order, needed_by):
    k = build_kernel(form="mask")
    k.set_tails_slot(0, zone, order - 7, 0)
    r = build_report(k.prog)
    assert keys(r.findings) == {("tails-slot", None, None)}
    (finding,) = r.findings
    assert finding.subject == f"vmemmap_tails[{order - 7}] of node 0 DMA32 (order {order})"
    assert f"needed by {needed_by} optimized folios" in finding.found


def test_corrupt_pointer_tail_pte_to_other_folios_head_frame():
    k = build_kernel(form="pointer")
    f, g = k.folio(0x10000), k.folio(0x10400)
    k.remap(f.vmemmap_page(2), g.head_frame)
    r = build_report(k.prog)
    assert keys(r.findings) == {("tail-frame", 0x10000, g.head_frame),
                                ("tail-contents", 0x10000, g.head_frame)}
    tf = next(x for x in r.findings if x.check == "tail-frame")
    assert hex(f.head_frame) in tf.expected and hex(g.head_frame) in tf.found
    # One corrupted PTE, one root cause; the foreign frame's contents follow.
    (cause,) = r.diagnosis
    assert (cause.cause, cause.folios) == ("tail-frame", (0x10000,))
    assert "another frame's contents" in cause.consequence
    (im,) = cause.implied
    assert (im.check, im.folios) == ("tail-contents", (0x10000,))


def test_corrupt_hstate_counter():
    k = build_kernel()
    k.set_hstate_counter(9, "free_huge_pages_node", 1, 3)
    r = build_report(k.prog)
    assert keys(r.findings) == {("hstate-count", None, None)}
    assert r.findings[0].subject == f"hstate {HNAME[9]} node 1"


def test_corrupt_head_without_pg_head():
    k = build_kernel(form="mask")
    f = k.folio(0x100000)
    k.write_frame_page(f.head_frame, 0, flags=page_flags(1, 2))
    assert keys(build_report(k.prog).findings) == {("head-page", 0x100000, None)}


def test_corrupt_head_frame_struct_page():
    k = build_kernel(form="mask")
    f = k.folio(0x10000)
    k.write_frame_page(f.head_frame, 10, info=tail_mask(10))
    r = build_report(k.prog)
    assert keys(r.findings) == {("head-frame", 0x10000, f.head_frame)}
    assert "first struct page 10" in r.findings[0].found


def test_corrupt_head_flags_name_another_node():
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    k.write_frame_page(f.head_frame, 0, flags=page_flags(1, 2, 1 << 6))
    assert keys(build_report(k.prog).findings) == {("folio-node", 0x10200, None)}


@pytest.mark.parametrize("bad_next, why", [
    (0xDEAD000000000100, "LIST_POISON1 (an entry list_del() removed)"),
    (0x00000000DEADBEE0, "not in a struct page of the vmemmap"),
])
def test_corrupt_list_pointer(bad_next, why):
    # LIST_POISON1 (list_del()) or garbage in a free folio's lru.next: the
    # walk stops there; the finding names the folio, the link and why, and
    # what the counters say lies beyond.
    k = build_kernel(form="mask")
    f = k.folio(0x10200)
    k.write_frame_page(f.head_frame, 0, info=bad_next)
    r = build_report(k.prog)
    assert sorted(fv.folio.pfn for fv in r.folios) == sorted(set(k.folios) - {0x10600})
    assert keys(r.findings) == {("hstate-list", None, None)}
    f0 = r.findings[0]
    assert f0.subject == f"hstate {HNAME[9]} free list of node 0"
    assert f0.found.startswith(f"the lru.next of folio pfn 0x10200 points at {bad_next:#x}, "
                               f"which is {why}")
    assert f0.found.endswith("say 1 more lie beyond")
    assert run(["verify"], prog=k.prog) == 1


def test_corrupt_head_pte_read_only():
    k = build_kernel(form="mask")
    f = k.folio(0x100000)
    k.set_writable(f.vmemmap, False)
    assert keys(build_report(k.prog).findings) == {("head-mapping", 0x100000, f.head_frame)}


@pytest.mark.parametrize("pfn, why", [
    # Beyond every present section (the pfn 0xfffff00 in a 2 GiB guest).
    (0xFFFFF00, "not in the machine (in no present memory section)"),
    # Inside node 1's Normal zone, but past what the (synthetic) dump holds.
    (0x170000, "not in the dump"),
])
def test_tail_pte_to_unreadable_frame_is_a_finding(pfn, why):
    # Which frame a PTE names is known without reading the frame: a tail PTE
    # onto any frame but the shared one is a finding, whether or not that
    # frame can be read; only the frame's contents are unknown.
    k = build_kernel(form="mask")
    k.remap(k.folio(0x10200).vmemmap_page(4), pfn)
    r = build_report(k.prog)
    assert r.unknown == []
    assert keys(r.findings) == {("tail-frame", 0x10200, pfn)}
    assert r.findings[0].found == f"1 tail vmemmap page(s) on pfn {pfn:#x} ({why})"
    fv = [fv for fv in r.folios if fv.folio.pfn == 0x10200][0]
    assert fv.unreadable == ((pfn, why),)


# ---------------------------------------------------------------------------
# pglist_data (the series' postings): vmemmap_tails per node.


def test_pglist_data_one_zone_per_node():
    zones = (ZoneSpec(0, 1, 0x1000, 0xFF000), ZoneSpec(1, 2, 0x100000, 0x80000))
    k = build_kernel(form="mask", tails_owner="pglist_data", zones=zones, shared_flags="zone")
    r = build_report(k.prog)
    assert r.findings == []
    assert {(t.nid, t.order, t.pfn, t.folios) for t in r.tails} == {
        (0, 9, k.shared_frame(0, None, 9), 3), (0, 18, k.shared_frame(0, None, 18), 1),
        (1, 9, k.shared_frame(1, None, 9), 2)}


def test_pglist_data_empty_slot():
    zones = (ZoneSpec(0, 1, 0x1000, 0xFF000), ZoneSpec(1, 2, 0x100000, 0x80000))
    k = build_kernel(form="mask", tails_owner="pglist_data", zones=zones, shared_flags="zone")
    k.set_tails_slot(1, None, 2, 0)
    assert keys(build_report(k.prog).findings) == {("tails-slot", None, None)}


def test_pglist_data_healthy_node_with_two_zones():
    # Per-node vmemmap_tails are judged once per node, and not by zone bits
    # in their flags (the postings' prep_compound_tail() leaves them zero).
    k = build_kernel(form="mask", tails_owner="pglist_data")  # node 0: DMA and DMA32
    r = build_report(k.prog)
    assert r.findings == []
    assert len({(t.nid, t.order) for t in r.tails}) == len(r.tails)


# ---------------------------------------------------------------------------
# 6. The command line and drgn's %vmemspect


def test_cli_verify_json_healthy(capsys):
    k = build_kernel()
    assert run(["verify", "--json"], prog=k.prog) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["command"], doc["ok"], doc["findings"], doc["checked_folios"], doc["unknown"]) == (
        "verify", True, [], 9, 0)


def test_cli_verify_json_corrupted(capsys):
    k = build_kernel()
    x = k.alloc_frame()
    k.remap(k.folio(0x100000).vmemmap_page(1), x)
    assert run(["verify", "--json"], prog=k.prog) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert [(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in doc["findings"]] == [
        ("tail-frame", 0x100000, x)]


def test_cli_verify_table_corrupted(capsys):
    k = build_kernel(form="pointer")
    k.set_optimized_flag(0x10200, False)
    assert run(["verify"], prog=k.prog) == 1
    out = capsys.readouterr().out
    assert "flag-vs-mapping" in out and "0x10200" in out


def test_cli_decode(capsys):
    k = build_kernel()
    f = k.folio(0x10200)
    assert run(["decode", "pfn:0x10245", "--json"], prog=k.prog) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["pfn"], doc["raw"], doc["head"], doc["head_pfn"], doc["order"], doc["tail"],
            doc["agrees_with_drgn"]) == (0x10245, hex(tail_mask(9)), hex(f.page), 0x10200, 9,
                                         True, True)
    assert doc["vmemmap_frame"] == {"pfn": k.shared_frame(0, 1), "level": "pte",
                                    "writable": False, "entry": hex(k.read_pte(f.vmemmap_page(1))),
                                    "bits": "P A D G NX"}
    assert k.read_pte(f.vmemmap_page(1)) == (k.shared_frame(0, 1) << 12) | PTE_RO
    assert run(["decode", hex(f.page)], prog=k.prog) == 0
    assert "0x10200" in capsys.readouterr().out


def test_cli_decode_errors(capsys):
    k = build_kernel()
    assert run(["decode", "nonsense"], prog=k.prog) == 2
    assert run(["decode", "pfn:0x30000"], prog=k.prog) == 2  # no struct page there
    err = capsys.readouterr().err
    assert "vmemspect: error:" in err


def test_cli_folios_and_tails(capsys):
    k = build_kernel()
    assert run(["folios", "--node", "1", "--json"], prog=k.prog) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(f["pfn"], f["state"], f["optimized"], f["verdict"]) for f in doc["folios"]} == {
        (0x100000, "free", True, "ok"), (0x100200, "active", True, "ok"),
        (0x100400, "free", False, "ok")}
    assert run(["folios", "--hstate", "1G", "--json"], prog=k.prog) == 0
    assert [f["pfn"] for f in json.loads(capsys.readouterr().out)["folios"]] == [OPT_1G]
    assert run(["tails", "--json"], prog=k.prog) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(t["nid"], t["zone"], t["slot"], t["pfn"], t["folios"]) for t in doc["tails"]} == {
        (0, "DMA32", 2, k.shared_frame(0, 1), 3), (0, "DMA32", 11, k.shared_frame(0, 1, 18), 1),
        (1, "Normal", 2, k.shared_frame(1, 2), 2)}


def test_cli_report(capsys):
    k = build_kernel(form="pointer", levels=5)
    assert run([], prog=k.prog) == 0
    out = capsys.readouterr().out
    assert "6.12.117+deb13-cloud-amd64 (x86_64, 5-level paging" in out
    assert "pointer form (compound_head)" in out


def test_drgn_command(capsys):
    import drgn.commands
    import vmemspect.plugin  # noqa: F401  (registers %vmemspect)

    k = build_kernel()
    assert drgn.commands.run_command(k.prog, "vmemspect verify --json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    k.set_writable(k.folio(0x10000).vmemmap_page(7))
    k.invalidate()
    assert drgn.commands.DEFAULT_COMMAND_NAMESPACE.run(
        k.prog, "vmemspect verify --json", globals={}) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [(f["check"], f["folio_pfn"]) for f in doc["findings"]] == [("tail-readonly", 0x10000)]


# ---------------------------------------------------------------------------
# 7. Kernel generations (docs/kernels.md): each difference found by type


def test_generation_6_1_order_in_folio_order():
    """Debian 12's 6.1 keeps a folio's order in folio->_folio_order, not in
    _flags_1's low byte (Linux 6.6 moved it): read there, a healthy 6.1
    kernel has no finding (it had one per folio: "folio order 0")."""
    k = build_kernel(form="pointer", generation="6.1", hvo_key=6)
    m = kernel_model(k.prog)
    assert m.off_order == 64 + 17 and m.hugetlb_unit == "page" and m.hvo_key is True
    assert "struct folio has _folio_order (order in its own byte of the first tail)" in m.evidence
    folios = list(for_each_hugetlb_folio_record(k.prog))
    assert sorted((f.pfn, f.folio_order) for f in folios) == sorted(
        (f.pfn, f.order) for f in folios)
    r = build_report(k.prog)
    assert (r.findings, len(r.unknown), r.scanned) == ([], 0, 9)
    s = r.savings
    assert (s.kernel_source, s.kernel_optimized_folios, s.kernel_agrees) == (
        "hugetlb_optimize_vmemmap_key", 6, True)
    assert (s.remapped_folios, s.flagged_folios, s.kernel_saved_pages) == (6, 6, None)


def test_generation_6_6_order_in_flags_1():
    k = build_kernel(form="pointer")
    m = kernel_model(k.prog)
    assert m.off_order == 64 and m.hugetlb_unit == "folio" and m.hvo_key is False
    assert "struct folio has _flags_1 and no _folio_order (order in its low byte)" in m.evidence


@pytest.mark.parametrize("generation", ["default", "6.1"])
@pytest.mark.parametrize("key, found", [(6, False), (5, True), (7, True)])
def test_kernel_count(generation, key, found):
    """hugetlb_optimize_vmemmap_key counts the folios HVO optimized; a
    different number of flagged folios is a finding that says what freeing
    them does to the key."""
    k = build_kernel(form="pointer", generation=generation, hvo_key=key)
    r = build_report(k.prog)
    got = [f for f in r.findings if f.check == "kernel-count"]
    assert len(got) == found and len(r.findings) == found
    if found:
        assert got[0].found.startswith("6 flagged folios (6 with remapped vmemmap)")
        assert ("underflows" in got[0].consequence) == (key < 6)
    assert r.savings.kernel_agrees is (key == 6)


def test_flag_without_remap_names_the_key_and_its_count():
    """The 6.12 demotion bug: a folio flagged optimized whose vmemmap was
    never remapped. flag-vs-mapping names it and what freeing it does; the
    key's count agrees with the remapped folios, not with the flagged ones;
    the measured savings leave it out."""
    k = build_kernel(form="pointer", hvo_key=6)
    k.set_optimized_flag(0x18000, True)
    r = build_report(k.prog)
    checks = collections.Counter(f.check for f in r.findings)
    assert checks["kernel-count"] == 1 and checks["flag-vs-mapping"] == 1
    fvm = [f for f in r.findings if f.check == "flag-vs-mapping"][0]
    assert fvm.folio_pfn == 0x18000
    assert "hugetlb_optimize_vmemmap_key" in fvm.consequence
    s = r.savings
    assert (s.remapped_folios, s.flagged_folios, s.kernel_optimized_folios) == (6, 7, 6)
    assert s.saved_pages == 7 * 5 + 4095 and s.flagged_pages == 7 * 6 + 4095


DEMOTED = 0x20000  # a 16 MiB-aligned block (order 12) of node 0 DMA32


def demoted_kernel(form: str, mapping: str, first: bool = True):
    """The 6.12 demotion state on a small scale: a block the size of a
    16 MiB hstate's folio filled with 8 folios of 2 MiB, all but the first
    flagged HPG_vmemmap_optimized with their vmemmap never remapped (built
    unoptimized, then flagged); the first optimized as it should be
    (``first=False``: no folio there). One more optimized folio elsewhere."""
    others = [DEMOTED + k * 0x200 for k in range(1, 8)]
    specs = ([FolioSpec(DEMOTED, 9, "active", True)] if first else []) + \
        [FolioSpec(p, 9, "active", False) for p in others] + [FolioSpec(0x10000, 9, "free", True)]
    remapped = 1 + first
    k = build_kernel(form=form, folios=specs, hstate_orders=(9, 12), vmemmap_mapping=mapping,
                     hvo_key=remapped if form == "pointer" else None)
    for p in others:
        k.set_optimized_flag(p, True)
    return k, others


@pytest.mark.parametrize("form", ["mask", "pointer"])
@pytest.mark.parametrize("mapping", ["pte", "pmd"])  # pmd: split, the block holds HVO's folio
def test_verify_diagnoses_demoted_block(form, mapping, capsys):
    """One root cause for the block's 7 folios, what it implies folded under
    it with counts, every consequence true of frames of their own, and the
    block named as one demoted 16 MiB folio (its first folio clean)."""
    k, others = demoted_kernel(form, mapping)
    assert run(["verify", "--json"], prog=k.prog) == 1
    doc = json.loads(capsys.readouterr().out)
    findings = doc["findings"]
    assert doc["root_causes"] == 1
    (c,) = doc["diagnosis"]
    assert (c["cause"], c["check"], sorted(c["folios"])) == (
        "flag-not-remapped", "flag-vs-mapping", others)
    placed = c["findings"] + [i for im in c["implied"] for i in im["findings"]]
    assert sorted(placed) == list(range(len(findings)))
    tails = k.folio(others[0]).npages - 1
    counts = {im["check"]: (len(im["findings"]), sorted(im["folios"])) for im in c["implied"]}
    want = {"tail-frame": (7 * tails, others), "tail-readonly": (7 * tails, others)}
    if form == "pointer":
        want["kernel-count"] = (1, [])      # the key counts the 2 remapped, 9 are flagged
    assert counts == want
    (b,) = c["blocks"]
    assert (b["hstate"], b["start_pfn"], b["end_pfn"], b["folios"], b["capacity"]) == (
        "hugepages-16384kB", DEMOTED, DEMOTED + 0xFFF, 7, 8)
    assert b["first"]["pfn"] == DEMOTED and b["first"]["clean"] and b["all_but_first"]

    assert run(["verify"], prog=k.prog) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == ("flag-vs-mapping: HPG_vmemmap_optimized set on vmemmap that was never "
                        "remapped: 7 finding(s) on 7 folio(s)")
    assert any(ln.startswith(
        f"  where: all 7 lie in one 16 MiB-aligned block, pfn {DEMOTED:#x}-{DEMOTED + 0xFFF:#x}; "
        f"with its first folio, pfn {DEMOTED:#x}, which is clean") for ln in lines)
    assert "8 hugepages-2048kB folios: one demoted hugepages-16384kB folio" in out
    assert f"    tail-frame: {7 * tails} finding(s) on the same 7 folio(s)" in lines
    assert f"    tail-readonly: {7 * tails} finding(s) on the same 7 folio(s)" in lines
    for wrong in ("another frame's contents", "changes the folio's head page",
                  "every folio of this zone"):
        assert wrong not in out
    assert lines[-1].startswith(f"VIOLATED: {len(findings)} finding(s) on 7 folio(s) "
                                "from 1 root cause(s)")
    # --all: still every finding, one line each.
    assert run(["verify", "--all"], prog=k.prog) == 1
    assert len(capsys.readouterr().out.splitlines()) == len(findings) + 1


def test_verify_block_without_its_first_folio_is_not_called_demoted():
    k, others = demoted_kernel("mask", "pte", first=False)
    r = build_report(k.prog)
    (c,) = r.diagnosis
    (b,) = c.blocks
    assert b.first is not None and not b.first.clean and not b.all_but_first
    assert "demoted" not in c.provenance
    assert c.provenance.startswith(f"all 7 lie in one 16 MiB-aligned block, pfn {DEMOTED:#x}")


def test_verify_text_groups_findings(capsys):
    """Many findings: grouped by check with counts and the first few; --all
    lists each; JSON keeps each, with what the kernel will do."""
    k = build_kernel(form="pointer")
    for pfn in OPT_2M_NODE0 + OPT_2M_NODE1:
        k.set_optimized_flag(pfn, False)
    assert run(["verify"], prog=k.prog) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("flag-vs-mapping: vmemmap remapped, HPG_vmemmap_optimized clear: "
                      "5 finding(s) on 5 folio(s)")
    assert len([ln for ln in out if ln.startswith("  folio pfn ")]) == 3
    assert any(ln.startswith("  ... 2 more (folios 0x") for ln in out)
    assert any(ln.startswith("  then: vmemmap remapped, flag clear") for ln in out)
    assert out[-1].startswith("VIOLATED: 5 finding(s) on 5 folio(s) from 1 root cause(s)")
    assert run(["verify", "--all"], prog=k.prog) == 1
    out = capsys.readouterr().out.splitlines()
    assert len([ln for ln in out if ln.startswith("flag-vs-mapping: folio pfn ")]) == 5
    assert run(["verify", "--json"], prog=k.prog) == 1
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["findings"]) == 5
    assert all(f["consequence"].startswith("vmemmap remapped, flag clear")
               for f in doc["findings"])


def test_report_says_which_kernel_counter(capsys):
    k = build_kernel(form="pointer", generation="6.1", hvo_key=6)
    assert run([], prog=k.prog) == 0
    out = capsys.readouterr().out
    assert ("kernel says   6 optimized folios (hugetlb_optimize_vmemmap_key); vmemspect finds "
            "6 remapped, 6 flagged; agrees") in out
    k = build_kernel(form="mask")
    assert run([], prog=k.prog) == 0
    assert "kernel says   nothing: this kernel keeps no count" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# 8. Corrupt lists: every walk ends, each folio is counted once


def _free_list_2m_node0(k):
    """The 2 MiB free list of node 0 as the kernel links it (pfns in order)."""
    return [f.pfn for f in for_each_hugetlb_folio_record(k.prog)
            if f.order == 9 and f.state == "free" and f.list_nid == 0]


@pytest.mark.parametrize("huge_counters", [False, True], ids=["counters", "counters-2^40"])
def test_list_loops_back(huge_counters):
    """The last free folio's lru.next points back at the first: the finding
    says the list loops at that folio, each folio is checked once, and the
    walk does not trust the (corrupted) counters to end."""
    k = build_kernel(form="mask")
    order = _free_list_2m_node0(k)
    assert len(order) >= 3
    first, last = order[0], order[-1]
    k.write_frame_page(k.folio(last).head_frame, 0, info=k.folio(first).page + 8)
    if huge_counters:
        for member in ("nr_huge_pages", "free_huge_pages"):
            k.set_hstate_counter(9, member, None, 1 << 40)
        for member in ("nr_huge_pages_node", "free_huge_pages_node"):
            k.set_hstate_counter(9, member, 0, 0xFFFFFFFF)
    k.invalidate()
    r = build_report(k.prog)
    pfns = [fv.folio.pfn for fv in r.folios]
    assert len(pfns) == len(set(pfns)) == len(k.folios) - (
        sum(1 for p in k.folios if k.folio(p).order == 9 and k.folio(p).state == "free"
            and k.folio(p).nid == 0) - len(order))
    lists = [f for f in r.findings if f.check == "hstate-list"]
    assert len(lists) == 1
    assert lists[0].found.startswith(
        f"a loop: the lru.next of folio pfn {last:#x} points back at an entry already on the list")
    assert f"{len(order)} folio(s) read before it" in lists[0].found
    assert {f.check for f in r.findings} == {"hstate-list"}


def test_list_cycle_that_links_back_consistently():
    """Two corrupted words make a cycle whose links agree both ways and that
    never passes the list head: its entry's prev names its cycle
    predecessor, not the entry the walk came from, so the walk ends there."""
    k = build_kernel(form="mask")
    order = _free_list_2m_node0(k)
    a, b = order[0], order[1]
    # b.next = a and a.prev = b: a two-entry cycle off the head.
    k.write_frame_page(k.folio(b).head_frame, 0, info=k.folio(a).page + 8)
    k.write_frame_page(k.folio(a).head_frame, 0, prev=k.folio(b).page + 8)
    k.invalidate()
    r = build_report(k.prog)
    lists = [f for f in r.findings if f.check == "hstate-list"]
    assert len(lists) == 1
    assert not [fv for fv in r.folios if fv.folio.pfn in order]
    # The head's next (a) no longer links back to the head: caught at once.
    assert lists[0].found.startswith(
        f"the list head's next points at {k.folio(a).page + 8:#x}, whose lru.prev "
        f"({k.folio(b).page + 8:#x}) does not point back; 0 folio(s) read before it")


# ---------------------------------------------------------------------------
# 9. Clear errors for input that is not what vmemspect needs


def test_folios_unknown_hstate_names_those_that_exist(capsys):
    k = build_kernel()
    assert run(["folios", "--hstate", "3M"], prog=k.prog) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmemspect: error: this kernel has no hstate '3M'")
    assert "hugepages-2048kB, hugepages-1048576kB" in err and len(err.splitlines()) == 1


def test_not_a_kernel(capsys):
    """drgn attached to a user-space program: %vmemspect says vmemspect needs
    a kernel, exit 2 (it said 'internal error: ObjectNotFoundError')."""
    prog = drgn.Program()
    prog.set_pid(os.getpid())
    assert run(["verify"], prog=prog) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmemspect: error: this program is not a Linux kernel")
    assert "/proc/kcore" in err and len(err.splitlines()) == 1


def test_folios_table_writes_the_count_apart(capsys):
    k = build_kernel()
    assert run(["folios", "--hstate", "1G"], prog=k.prog) == 0
    out = capsys.readouterr().out
    assert f"{k.folio(OPT_1G).frames[1]:#x} ×4095 RO pte" in out


def test_head_pte_onto_a_frame_the_machine_lacks_is_a_finding():
    """The PTE of a folio's head vmemmap page points at a frame beyond the
    machine: the list link to it cannot be read, and that is corruption (a
    hstate-list finding), not memory missing from the dump (unknown)."""
    k = build_kernel(form="mask")
    order = _free_list_2m_node0(k)
    victim = order[1]
    k.remap(k.folio(victim).vmemmap, 0xFFFFF00, writable=True)
    r = build_report(k.prog)
    assert r.cut_lists == [] and r.unknown == []
    (f,) = [f for f in r.findings if f.check == "hstate-list"]
    assert f.found.startswith(f"the lru.next of folio pfn {order[0]:#x} points at ")
    assert "its PTE maps frame 0xfffff00, not in the machine (in no present memory section)" \
        in f.found


def test_hugetlb_folio_records_helper_raises_at_a_corrupt_list():
    """helpers.hugetlb_folio_records() does not stop silently at a corrupt list: it
    gives the folios before the break, then raises drgn's ValidationError
    naming the list and the folio (hvo_verify() reports it instead)."""
    from drgn.helpers import ValidationError

    from vmemspect.helpers import for_each_hugetlb_folio, hugetlb_folio_records, hvo_verify

    k = build_kernel(form="mask")
    order = _free_list_2m_node0(k)
    first, last = order[0], order[-1]
    k.write_frame_page(k.folio(last).head_frame, 0, info=k.folio(first).page + 8)
    k.invalidate()
    got = []
    with pytest.raises(ValidationError, match=rf"hugepages-2048kB free list of node 0 is "
                                              rf"corrupt: the lru.next of folio pfn {last:#x}"):
        for f in hugetlb_folio_records(k.prog):
            got.append(f.pfn)
    assert got[:len(order)] == order
    # The drgn-shaped helper raises the same, after the same folios.
    hstate = next(h for h in for_each_hstate(k.prog) if h.name.string_() == b"hugepages-2048kB")
    objs = []
    with pytest.raises(ValidationError, match="hugepages-2048kB free list of node 0 is corrupt"):
        for f in for_each_hugetlb_folio(hstate):
            objs.append(f)
    assert [page_to_pfn(cast("struct page *", f)).value_() for f in objs[:len(order)]] == order
    assert [f.check for f in hvo_verify(k.prog) if f.check == "hstate-list"] == ["hstate-list"]


def test_for_each_hugetlb_folio_is_drgn_shaped():
    """It takes drgn's struct hstate * and yields struct folio *, the same
    folios as the records, in list order; folio_hvo takes one of them."""
    from vmemspect.helpers import folio_hvo, for_each_hugetlb_folio, hugetlb_folio_records

    k = build_kernel(form="mask")
    objs = [f for h in for_each_hstate(k.prog) for f in for_each_hugetlb_folio(h)]
    assert objs and all(f.type_.type_name() == "struct folio *" for f in objs)
    assert [f.value_() for f in objs] == [r.page for r in hugetlb_folio_records(k.prog)]
    expected = set(k.folios)
    assert {page_to_pfn(cast("struct page *", f)).value_() for f in objs} == expected
    assert folio_hvo(objs[0]).folio.page == objs[0].value_()
    with pytest.raises(ValueError, match="heads no folio"):
        folio_hvo(objs[0] + 1)


def test_fast_scan_keeps_list_breaks():
    """metrics --fast's sample meets a corrupt list: it reports it
    (hstate-list), as the full scan does, instead of dropping it."""
    from vmemspect.fastscan import fast_scan

    k = build_kernel(form="mask")
    order = _free_list_2m_node0(k)
    k.write_frame_page(k.folio(order[1]).head_frame, 0, info=k.folio(order[0]).page + 8)
    k.invalidate()
    f = fast_scan(k.prog, sample=64)
    lists = [x for x in f.findings if x.check == "hstate-list"]
    assert len(lists) == 1 and f"folio pfn {order[1]:#x}" in lists[0].found
    # The full scan says the same of it.
    full = [x for x in build_report(k.prog, keep_folios=False).findings
            if x.check == "hstate-list"]
    assert [x.found for x in full] == [x.found for x in lists]
