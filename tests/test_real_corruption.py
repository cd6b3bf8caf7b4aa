"""
Corruption on real dumps: take the ELF dump of a healthy hvo-2m guest, change
one thing at the file offset of its physical address, and check that verify
names exactly the altered folio or frame, exits 1, and says nothing else.
The dump is restored after each case.
"""

import contextlib
import struct

import pytest

import testbed
from conftest import FORM, KERNELS, real_run, vmemspect_json
from vmemspect.pagetable import page_table_walker
from vmemspect.target import open_vmcore

ADDR_MASK = 0x000FFFFFFFFFF000
RW = 1 << 1


@contextlib.contextmanager
def patched(path: str, phys: int, new: int):
    """Write the 8-byte word ``new`` at physical address ``phys`` of an ELF dump."""
    off = testbed.elf_phys_offset(path, phys)
    with open(path, "r+b") as f:
        f.seek(off)
        old = f.read(8)
        f.seek(off)
        f.write(struct.pack("<Q", new))
    try:
        yield struct.unpack("<Q", old)[0]
    finally:
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(old)


@pytest.fixture(scope="module", params=KERNELS)
def elf(request):
    series = request.param
    run = real_run(series, "hvo-2m", elf=True)
    assert run["elf"], "the test bed wrote no ELF dump"
    healthy = vmemspect_json(run, "verify", dump=run["elf"])
    assert healthy["ok"] and healthy["checked_folios"] == 64
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


def findings_of(run) -> set:
    v = vmemspect_json(run, "verify", dump=run["elf"], check_rc=(1,))
    assert v["ok"] is False
    return {(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in v["findings"]}


def test_tail_pte_to_foreign_frame(elf):
    series, run, folios, _, walker = elf
    victim, other = folios[3], folios[5]
    phys, entry = tail_pte(walker, victim, 3)
    foreign = other["head_frame"]["pfn"]
    with patched(run["elf"], phys, (entry & ~ADDR_MASK) | (foreign << 12)):
        found = findings_of(run)
    assert {pfn for _, pfn, _ in found} == {victim["pfn"]}
    assert ("tail-frame", victim["pfn"], foreign) in found
    if FORM[series] == "mask":
        assert found == {("tail-frame", victim["pfn"], foreign)}
    else:
        # The foreign frame also holds another folio's struct pages.
        assert found == {("tail-frame", victim["pfn"], foreign),
                         ("tail-contents", victim["pfn"], foreign)}


def test_writable_tail_pte(elf):
    _, run, folios, _, walker = elf
    victim = folios[10]
    phys, entry = tail_pte(walker, victim, 6)
    frame = (entry & ADDR_MASK) >> 12
    with patched(run["elf"], phys, entry | RW):
        found = findings_of(run)
    assert found == {("tail-readonly", victim["pfn"], frame)}


def test_struct_page_in_tail_frame(elf):
    series, run, folios, tails, _ = elf
    if FORM[series] == "mask":
        frame = tails[0]["pfn"]
        # Struct page 5 of the shared frame: a tail mask of order 10.
        with patched(run["elf"], frame * 4096 + 5 * 64 + 8, 0xFFFFFFFFFFFF0001):
            found = findings_of(run)
        assert found == {("shared-frame", None, frame)}
    else:
        victim = folios[7]
        frame = victim["head_frame"]["pfn"]
        # Struct page 5 of the folio's own (aliased) frame names another head.
        with patched(run["elf"], frame * 4096 + 5 * 64 + 8, int(folios[8]["page"], 16) | 1):
            found = findings_of(run)
        assert found == {("head-frame", victim["pfn"], frame)}


def test_hvo_flag_cleared(elf):
    _, run, folios, _, _ = elf
    victim = folios[20]
    page = int(victim["page"], 16)
    private = victim["head_frame"]["pfn"] * 4096 + (page & 0xFFF) + 40
    with patched(run["elf"], private, 0) as old:
        assert old & (1 << 4), "HPG_vmemmap_optimized was not set before"
        found = findings_of(run)
    assert found == {("flag-vs-mapping", victim["pfn"], None)}


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
