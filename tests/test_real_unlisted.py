"""
What the hstate lists do not show, on real dumps (issue 19): the ELF dump of
a healthy hvo-2m guest of each form, altered the way two classes of kernel
bug leave memory, each self-consistent so that only the page tables tell:

- **lost folio**: an HVO'd free 2 MiB folio unlinked from its free list,
  the hstate's total, free and per-node counters lowered by one to match;
  its vmemmap stays remapped (and the kernel's memmap counters and
  hugetlb_optimize_vmemmap_key still count it);
- **freed without restore**: the same, and its head page has lost PG_head,
  as if it went back to the page allocator with its tail struct pages
  still mapped read-only (onto the shared frame in the mask form, onto its
  own head frame in the pointer form).

verify must exit 1 and name the folio's pfn, with the kind: a hugetlb folio
off the lists (unlisted-folio) or no hugetlb folio (unlisted-remap); and say
nothing else. And one legitimate state: an in-use folio isolated for
migration (off the active list, HPG_migratable clear, counters unchanged:
what isolate_hugetlb() leaves) is named as such and is no finding. The dump
is restored after each case.
"""

import contextlib

import pytest

from conftest import FORM, KERNELS, patched, real_run, vmemspect_json
from vmemspect.kernel import kernel_model
from vmemspect.pagetable import page_table_walker
from vmemspect.target import open_vmcore


@pytest.fixture(scope="module", params=KERNELS)
def healthy(request):
    series = request.param
    run = real_run(series, "hvo-2m", elf=True)
    assert run["elf"], "the test bed wrote no ELF dump"
    v = vmemspect_json(run, "verify", dump=run["elf"])
    assert v["ok"] and v["checked_folios"] == 64 and v["unlisted_ranges"] == 0
    assert v["vmemmap_sweep"]["pte_tables"] > 0
    return series, run


def _lost_folio_patches(run, clear_head: bool):
    """(physical address, new word) pairs that unlink the second free folio
    of node 0's 2 MiB free list and lower the counters to match; with
    ``clear_head`` also clear its head's PG_head. And the folio's pfn."""
    prog = open_vmcore(run["elf"], run["vmlinux"])
    walker = page_table_walker(prog)

    def phys(va):
        pa = walker.translate(va)
        assert pa is not None, hex(va)
        return pa

    h = next(h for h in (prog["hstates"][i] for i in range(prog["hugetlb_max_hstate"]))
             if h.order.value_() == 9)
    nid = 0
    head = h.hugepage_freelists[nid].address_
    first = prog.read_u64(head)
    victim = prog.read_u64(first)  # the second entry: neighbours on both sides
    assert victim != head
    nxt, prv = prog.read_u64(victim), prog.read_u64(victim + 8)
    assert prv == first
    lru = prog.type("struct page").member("lru").offset
    page = victim - lru
    pfn = kernel_model(prog).page_pfn(page)
    patches = [(phys(prv), nxt), (phys(nxt + 8), prv)]
    for field in (h.nr_huge_pages, h.free_huge_pages, h.nr_huge_pages_node[nid],
                  h.free_huge_pages_node[nid]):
        assert field.type_.size in (4, 8)
        word = prog.read_u64(field.address_ & ~7)
        shift = (field.address_ & 7) * 8
        assert word >> shift & 0xFFFFFFFF, "a counter that is zero already"
        patches.append((phys(field.address_ & ~7), word - (1 << shift)))
    if clear_head:
        flags = prog.read_u64(page)
        pg_head = prog.constant("PG_head").value_()
        assert flags >> pg_head & 1
        patches.append((phys(page), flags & ~(1 << pg_head)))
    return patches, pfn


def _verify_altered(run, patches):
    with contextlib.ExitStack() as stack:
        for pa, new in patches:
            stack.enter_context(patched(run["elf"], pa, new))
        return vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))


def test_lost_folio(healthy):
    series, run = healthy
    patches, pfn = _lost_folio_patches(run, clear_head=False)
    v = _verify_altered(run, patches)
    assert v["ok"] is False and v["checked_folios"] == 63
    assert [(f["check"], f["folio_pfn"]) for f in v["findings"]] == [("unlisted-folio", pfn)]
    (r,) = v["vmemmap_sweep"]["unlisted"]
    assert (r["pfn"], r["kind"], r["hugetlb"], r["hpg_vmemmap_optimized"]) == \
        (pfn, "off-lists", True, True)
    assert r["vmemmap_pages"] == 8 and r["writable"] == 0
    if FORM[series] == "mask":
        assert r["frame"] and "order 9" in r["frame"]  # the shared tail frame
    else:
        assert r["frame"] is None
    assert "on no hstate list" in v["findings"][0]["found"]


def test_freed_without_restore(healthy):
    series, run = healthy
    patches, pfn = _lost_folio_patches(run, clear_head=True)
    v = _verify_altered(run, patches)
    assert v["ok"] is False
    assert [(f["check"], f["folio_pfn"]) for f in v["findings"]] == [("unlisted-remap", pfn)]
    (r,) = v["vmemmap_sweep"]["unlisted"]
    assert (r["pfn"], r["kind"]) == (pfn, "not-hugetlb")
    f = v["findings"][0]
    assert "no compound head: PG_head clear" in f["found"]
    # x86_64 maps HVO's tails read-only: the kernel faults on the first write.
    assert "faults on the first write" in f["consequence"]


def _isolate_patches(run):
    """The second free 2 MiB folio of node 0 made what an in-use folio
    isolated for migration looks like: off its list, a reference held, not
    free by the counters (free counts lowered, totals kept), HPG_migratable
    clear (isolate_hugetlb() clears it and moves the folio to a private
    list). hvo-2m holds no in-use folio to take."""
    prog = open_vmcore(run["elf"], run["vmlinux"])
    walker = page_table_walker(prog)
    model = kernel_model(prog)
    h = next(h for h in (prog["hstates"][i] for i in range(prog["hugetlb_max_hstate"]))
             if h.order.value_() == 9)
    head = h.hugepage_freelists[0].address_
    first = prog.read_u64(head)
    victim = prog.read_u64(first)
    nxt = prog.read_u64(victim)
    assert head not in (first, victim, nxt)
    page = victim - model.off_lru
    private = prog.read_u64(page + model.off_private)
    assert private >> model.hpg_vmemmap_optimized & 1
    ref = page + model.off_refcount
    patches = [(walker.translate(first), nxt), (walker.translate(nxt + 8), first),
               (walker.translate(page + model.off_private),
                (private | 1 << model.hpg_migratable) ^ 1 << model.hpg_migratable),
               (walker.translate(ref & ~7),
                prog.read_u64(ref & ~7) + (1 << (ref & 7) * 8))]
    for field in (h.free_huge_pages, h.free_huge_pages_node[0]):
        word = prog.read_u64(field.address_ & ~7)
        patches.append((walker.translate(field.address_ & ~7),
                        word - (1 << (field.address_ & 7) * 8)))
    return patches, model.page_pfn(page)


def test_isolated_for_migration_is_no_finding(healthy):
    _, run = healthy
    patches, pfn = _isolate_patches(run)
    with contextlib.ExitStack() as stack:
        for pa, new in patches:
            stack.enter_context(patched(run["elf"], pa, new))
        v = vmemspect_json(run, "verify", dump=run["elf"])
    assert v["ok"] is True and v["findings"] == [] and v["isolated_folios"] == 1
    (r,) = v["vmemmap_sweep"]["unlisted"]
    assert (r["pfn"], r["kind"], r["hugetlb"]) == (pfn, "isolated", True)
    assert r["refcount"] > 0
