"""
Corruption on real dumps: take the ELF dump of a healthy hvo-2m guest, change
one thing at the file offset of its physical address, and check that verify
names exactly the altered folio or frame, exits 1, and says nothing else.
The dump is restored after each case.
"""

import contextlib
import io

import pytest

from conftest import FORM, KERNELS, patched, real_run, vmemspect_json
from vmemspect.checks import folio_check_context, folio_group_keyer, folio_key
from vmemspect.pagetable import page_table_walker
from vmemspect.documents import folio_rows, folios_doc, report_doc, verify_doc, write_json
from vmemspect.report import build_report
from vmemspect.target import open_vmcore

ADDR_MASK = 0x000FFFFFFFFFF000
RW = 1 << 1


@pytest.fixture(scope="module", params=KERNELS)
def elf(request):
    series = request.param
    run = real_run(series, "hvo-2m", elf=True)
    assert run["elf"], "the test bed wrote no ELF dump"
    healthy = vmemspect_json(run, "verify", dump=run["elf"])
    assert healthy["ok"] and healthy["checked_folios"] == 64
    grouped_matches_full(run)
    folios = vmemspect_json(run, "folios", dump=run["elf"])["folios"]
    tails = vmemspect_json(run, "tails", dump=run["elf"])["tails"]
    prog = open_vmcore(run["elf"], run["vmlinux"])
    return series, run, folios, tails, page_table_walker(prog)


def tail_pte(walker, folio: dict, index: int):
    """(physical address, raw value) of the PTE of a folio's vmemmap page."""
    va = int(folio["vmemmap"], 16) + index * 4096
    leaf = walker.lookup(va)
    assert leaf.level_name == "pte"
    return leaf.table + ((va >> 12) & 511) * 8, leaf.entry


def grouped_matches_full(run) -> None:
    """The scan of verify and the report, which counts a folio like one
    already judged clean instead of reading it in full, says exactly what
    reading every folio in full says: same findings in the same order,
    same counts, same tables. And the parallel scan (--jobs: workers read
    and key the heads first) writes the very same JSON as the serial one."""
    docs, texts = [], []
    for keep, jobs in ((False, 1), (True, 1), (False, 3)):
        prog = open_vmcore(run["elf"], run["vmlinux"])
        r = build_report(prog, keep_folios=keep, jobs=jobs)
        if jobs > 1:
            # The workers ran (the same JSON is no proof: a failure falls
            # back to one process), and they are named in the JSON.
            # (as many as there are PTE tables to split, at most 3)
            assert r.workers.started >= 1 and r.workers.failed is None, r.workers
            assert len(r.workers.cpu_seconds) == r.workers.started <= 3
        rd, vd = report_doc(r), verify_doc(r)
        assert (rd.pop("workers") is not None) == (vd.pop("workers") is not None) == (jobs > 1)
        if r.model.form == "pointer":
            rd.pop("tails")  # a list per folio: written by the rows' scan
        docs.append((vd, rd))
        out = io.StringIO()
        write_json({"verify": docs[-1][0], "report": rd}, out.write)
        texts.append(out.getvalue())
        if keep:
            keys_match_records(prog, r)
    assert docs[0] == docs[1]
    assert texts[2] == texts[0]
    # folios' rows from the grouped scan: the same JSON as reading in full.
    full = build_report(open_vmcore(run["elf"], run["vmlinux"]), keep_folios=True)
    a = io.StringIO()
    write_json(folios_doc(full, full.folios), a.write)
    for jobs in (1, 3):
        rows = build_report(open_vmcore(run["elf"], run["vmlinux"]), keep_folios=False,
                            rows=folio_rows(), jobs=jobs)
        b = io.StringIO()
        write_json(folios_doc(rows), b.write)
        assert a.getvalue() == b.getvalue(), jobs


def keys_match_records(prog, report) -> None:
    """The raw keyer (what the grouped scan keys folios by) and folio_key
    (the same key from a record, defined beside check_folio) agree on
    every folio the keyer keys: grouping never merges folios the checks
    would tell apart. And the healthy dump's folios are keyed at all."""
    walker = page_table_walker(prog)
    shared = frozenset(folio_check_context(report.model, report.zones)[1])
    keyer = folio_group_keyer(report.model, walker, report.zones, shared)
    keyed = 0
    for fv in report.folios:
        page = fv.folio.page
        data = prog.read(page & ~4095, 4096)
        raw = keyer(fv.folio.order, page, data)
        if raw is not None:
            keyed += 1
            assert raw == folio_key(report.model, fv, report.zones, shared), fv.folio.pfn
    assert keyed or not any(fv.remapped for fv in report.folios)



def verify_of(run) -> dict:
    grouped_matches_full(run)
    v = vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))
    assert v["ok"] is False
    return v


def findings_of(run) -> set:
    return keys_of(verify_of(run))


def keys_of(v: dict) -> set:
    return {(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in v["findings"]}


def one_cause(v: dict, check: str, folios: list) -> dict:
    """The one alteration is one root cause, found by ``check`` on
    ``folios``, with every other finding folded under it."""
    assert v["root_causes"] == 1, v["diagnosis"]
    (c,) = v["diagnosis"]
    assert (c["check"], c["folios"]) == (check, folios)
    placed = c["findings"] + [i for im in c["implied"] for i in im["findings"]]
    assert sorted(placed) == list(range(len(v["findings"])))
    return c


def test_tail_pte_to_foreign_frame(elf):
    series, run, folios, _, walker = elf
    victim, other = folios[3], folios[5]
    phys, entry = tail_pte(walker, victim, 3)
    foreign = other["head_frame"]["pfn"]
    with patched(run["elf"], phys, (entry & ~ADDR_MASK) | (foreign << 12)):
        v = verify_of(run)
    found = keys_of(v)
    assert {pfn for _, pfn, _ in found} == {victim["pfn"]}
    assert ("tail-frame", victim["pfn"], foreign) in found
    c = one_cause(v, "tail-frame", [victim["pfn"]])
    assert "another frame's contents" in c["consequence"]
    if FORM[series] == "mask":
        assert found == {("tail-frame", victim["pfn"], foreign)}
        assert c["implied"] == []
    else:
        # The foreign frame also holds another folio's struct pages: that
        # follows from the PTE.
        assert found == {("tail-frame", victim["pfn"], foreign),
                         ("tail-contents", victim["pfn"], foreign)}
        assert [(im["check"], im["folios"]) for im in c["implied"]] == [
            ("tail-contents", [victim["pfn"]])]


def test_writable_tail_pte(elf):
    series, run, folios, _, walker = elf
    victim = folios[10]
    phys, entry = tail_pte(walker, victim, 6)
    frame = (entry & ADDR_MASK) >> 12
    with patched(run["elf"], phys, entry | RW):
        v = verify_of(run)
    assert keys_of(v) == {("tail-readonly", victim["pfn"], frame)}
    # A frame the folio shares: with every folio of its zone and order
    # (mask form), or with its own head page (pointer form).
    c = one_cause(v, "tail-readonly", [victim["pfn"]])
    tails = vmemspect_json(run, "tails", dump=run["elf"])["tails"]
    if FORM[series] == "mask":
        assert frame in {t["pfn"] for t in tails}
        assert "every folio of this zone and order" in c["consequence"]
    else:
        assert frame == victim["head_frame"]["pfn"]
        assert "head page, which shares this frame" in c["consequence"]


def test_struct_page_in_tail_frame(elf):
    series, run, folios, tails, _ = elf
    if FORM[series] == "mask":
        frame = tails[0]["pfn"]
        # Struct page 5 of the shared frame: a tail mask of order 10.
        with patched(run["elf"], frame * 4096 + 5 * 64 + 8, 0xFFFFFFFFFFFF0001):
            v = verify_of(run)
        assert keys_of(v) == {("shared-frame", None, frame)}
        one_cause(v, "shared-frame", [])
    else:
        victim = folios[7]
        frame = victim["head_frame"]["pfn"]
        # Struct page 5 of the folio's own (aliased) frame names another head.
        with patched(run["elf"], frame * 4096 + 5 * 64 + 8, int(folios[8]["page"], 16) | 1):
            v = verify_of(run)
        assert keys_of(v) == {("head-frame", victim["pfn"], frame)}
        one_cause(v, "head-frame", [victim["pfn"]])


def test_hvo_flag_cleared(elf):
    _, run, folios, _, walker = elf
    victim = folios[20]
    page = int(victim["page"], 16)
    private = victim["head_frame"]["pfn"] * 4096 + (page & 0xFFF) + 40
    with patched(run["elf"], private, 0) as old:
        assert old & (1 << 4), "HPG_vmemmap_optimized was not set before"
        v = verify_of(run)
    expected = {("flag-vs-mapping", victim["pfn"], None)}
    try:
        # 5.18-7.0: the kernel's own count of optimized folios (64) no longer
        # matches the 63 flagged ones.
        walker.prog["hugetlb_optimize_vmemmap_key"]
        expected.add(("kernel-count", None, None))
    except KeyError:
        pass
    assert keys_of(v) == expected
    # One cause, the cleared flag; the key's count (which counts the 64
    # remapped folios) follows from it.
    c = one_cause(v, "flag-vs-mapping", [victim["pfn"]])
    assert [im["check"] for im in c["implied"]] == (
        ["kernel-count"] if len(expected) == 2 else [])


def test_tail_pte_to_other_nodes_shared_frame():
    """Mask form, two nodes: one tail PTE of a node-0 folio pointed at node
    1's shared frame of the same order. verify names that folio and both
    frames, and nothing else (a check that only asked "is it a shared
    frame?" would pass it)."""
    run = real_run("7.2", "numa", elf=True)
    folios = vmemspect_json(run, "folios", dump=run["elf"])["folios"]
    tails = vmemspect_json(run, "tails", dump=run["elf"])["tails"]
    frame = {(t["nid"], t["order"]): t["pfn"] for t in tails}
    own, other = frame[(0, 9)], frame[(1, 9)]
    assert own != other
    victim = next(f for f in folios if f["nid"] == 0 and f["order"] == 9)
    walker = page_table_walker(open_vmcore(run["elf"], run["vmlinux"]))
    phys, entry = tail_pte(walker, victim, 2)
    assert (entry & ADDR_MASK) >> 12 == own
    with patched(run["elf"], phys, (entry & ~ADDR_MASK) | (other << 12)):
        v = vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))
    assert [(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in v["findings"]] == [
        ("tail-frame", victim["pfn"], other)]
    (f,) = v["findings"]
    assert f"pfn {own:#x}" in f["expected"] and "node 0 DMA32" in f["expected"]
    assert f"pfn {other:#x}" in f["found"] and "node 1 Normal order 9" in f["found"]


# ---------------------------------------------------------------------------
# Corruption that used to hang vmemspect or hide behind "unknown" (each run
# is timed: a walk must never trust a bound read from the dump).

import time  # noqa: E402


#: Seconds a verify of a 2 GiB guest's dump may take, corrupted or not
#: (it takes 1-3 s here; the looped walk used to run until killed).
BOUND_S = 60


def timed_verify(run) -> dict:
    grouped_matches_full(run)
    t0 = time.monotonic()
    v = vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))
    assert time.monotonic() - t0 < BOUND_S
    assert v["ok"] is False
    return v


def kernel_phys(walker, va: int) -> int:
    """Physical address of kernel virtual address ``va`` (any mapping level)."""
    leaf = walker.lookup(va & ~0xFFF)
    assert leaf.pfn is not None, f"{va:#x} is not mapped"
    return (leaf.pfn << 12) | (va & 0xFFF)


def lru_next_phys(folio: dict) -> int:
    """Physical address of a folio's lru.next (in its head vmemmap frame)."""
    return folio["head_frame"]["pfn"] * 4096 + (int(folio["page"], 16) & 0xFFF) + 8


@pytest.mark.parametrize("huge_counters", [False, True], ids=["loop", "loop-counters-2^40"])
def test_free_list_loops_back(elf, huge_counters):
    """A free folio's lru.next points back at an earlier folio: verify ends
    in seconds, says the list loops at that folio, and checks each folio
    once -- also when the hstate's counters say 2^40 folios."""
    series, run, folios, _, walker = elf
    at, back = folios[40], folios[10]
    prog = walker.prog
    h = prog["hstates"][0]
    patches = [(lru_next_phys(at), int(back["page"], 16) + 8)]
    if huge_counters:
        for member in ("nr_huge_pages", "free_huge_pages"):
            patches.append((kernel_phys(walker, h.member_(member).address_), 1 << 40))
        for member in ("nr_huge_pages_node", "free_huge_pages_node"):
            # unsigned int[]: the word holds node 0 and node 1's counters.
            patches.append((kernel_phys(walker, h.member_(member).address_), 0xFFFFFFFF))
    with contextlib.ExitStack() as stack:
        for phys, value in patches:
            stack.enter_context(patched(run["elf"], phys, value))
        v = timed_verify(run)
    lists = [f for f in v["findings"] if f["check"] == "hstate-list"]
    assert len(lists) == 1, v["findings"]
    assert lists[0]["subject"] == "hstate hugepages-2048kB free list of node 0"
    assert lists[0]["found"].startswith(
        f"a loop: the lru.next of folio pfn {at['pfn']:#x} points back at an entry "
        "already on the list")
    assert "41 folio(s) read before it" in lists[0]["found"]
    assert {f["check"] for f in v["findings"]} == {"hstate-list"}
    assert v["checked_folios"] == 41


def test_tail_pte_beyond_the_machine(elf):
    """One tail PTE of an HVO'd folio points at pfn 0xfffff00, beyond the end
    of a 2 GiB guest: a finding that names the folio and says no such frame
    exists, not an unknown folio."""
    _, run, folios, _, walker = elf
    victim = folios[12]
    phys, entry = tail_pte(walker, victim, 5)
    with patched(run["elf"], phys, (entry & ~ADDR_MASK) | (0xFFFFF00 << 12)):
        v = timed_verify(run)
    assert [(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in v["findings"]] == [
        ("tail-frame", victim["pfn"], 0xFFFFF00)]
    assert "not in the machine" in v["findings"][0]["found"]
    assert v["unknown"] == 0


def pmd_entry(walker, va: int):
    """(physical address, value) of the PMD entry that maps ``va``."""
    table, table_addr = walker.top, walker.top_address
    for level in range(walker.levels, 2, -1):
        entry = table[(va >> (12 + 9 * (level - 1))) & 511]
        assert walker.entry_present(entry)
        table_addr = walker.entry_pfn(entry) << 12
        table = walker.read_table(table_addr)
    index = (va >> 21) & 511
    return table_addr + 8 * index, table[index]


def test_pmd_above_folios_vmemmap_cleared(elf):
    """The PMD entry above one folio's vmemmap PTE table is cleared: the
    finding names where the walk was cut (the folio whose link points into
    the unmapped vmemmap), why (which PMD entry is not present), and how many
    folios the counters say lie beyond."""
    _, run, folios, _, walker = elf
    target = int(folios[30]["vmemmap"], 16)
    phys, entry = pmd_entry(walker, target)
    assert walker.entry_present(entry)
    # In list order, the first folio whose vmemmap lies under that PMD.
    first = next(i for i, f in enumerate(folios) if int(f["vmemmap"], 16) >> 21 == target >> 21)
    with patched(run["elf"], phys, 0):
        v = timed_verify(run)
    lists = [f for f in v["findings"] if f["check"] == "hstate-list"]
    assert len(lists) == 1, v["findings"]
    where = ("the list head's next" if first == 0
             else f"the lru.next of folio pfn {folios[first - 1]['pfn']:#x}")
    assert lists[0]["found"].startswith(f"{where} points at ")
    assert f"PMD entry 0x0 at phys {phys:#x} is not present" in lists[0]["found"]
    assert lists[0]["found"].endswith(f"say {64 - first} more lie beyond")
    assert v["checked_folios"] == first
