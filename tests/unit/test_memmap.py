"""
The whole-memmap read (vmemspect/memmap.py, ``verify --memmap``) on
fixtures (real guests' extracts), with states a healthy guest does not
show written over vmemmap pages the extract does not hold (a drgn memory
segment added over the program): a stale hugetlb page type, the head of
an unremapped hugetlb folio on no list, and one isolated for migration.
The real kernels' own stale types are in tests/test_real_memmap.py.
"""

import contextlib
import io
import json
import struct
from pathlib import Path

import pytest
from drgn import FaultError

from vmemspect import cli, memmap
from vmemspect.helpers import for_each_hugetlb_typed_page, hvo_verify
from vmemspect.kernel import compound_info_mask, kernel_model
from vmemspect.target import open_vmcore

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
NO_TYPE = 0xFFFFFFFF  # page_type of a page with none (_mapcount -1)


def _verify(prog, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.run(["verify", "--json", *args], prog=prog)
    return rc, json.loads(out.getvalue())


def _free_vmemmap_page(prog, fixture: str, align: int = 1) -> int:
    """Index of a vmemmap page of present memory, a multiple of ``align``,
    that the extract lacks and no hugetlb folio of the guest's truth uses."""
    model = kernel_model(prog)
    truth = json.loads((FIXTURES / f"{fixture}.json").read_text())["truth"]
    per = model.pages_per_vmemmap_page
    used = {index for f in truth["hugetlb_folios"]
            for index in range(f["pfn"] // per, -(-(f["pfn"] + f["nr_pages"]) // per))}
    for lo, hi in memmap._present_vmemmap(prog, model):
        for index in range(-(-(lo + 8) // align) * align, hi, align):
            if index in used:
                continue
            try:
                prog.read(model.vmemmap_start + index * model.page_size, 8)
            except FaultError:
                return index
    raise AssertionError("no vmemmap page to overlay")


def _overlay(prog, index: int, pages: dict) -> int:
    """Serve vmemmap page ``index`` from bytes: every struct page untyped,
    but ``pages`` (slot -> {field offset: (format, value)}). Its address."""
    model = kernel_model(prog)
    size = model.sizeof_page
    data = bytearray(model.page_size)
    type_off = model.hugetlb_test[1]
    for k in range(model.pages_per_vmemmap_page):
        struct.pack_into("<I", data, k * size + type_off, NO_TYPE)
    for slot, fields in pages.items():
        for off, (fmt, value) in fields.items():
            struct.pack_into(fmt, data, slot * size + off, value)
    address = model.vmemmap_start + index * model.page_size

    def read(addr, count, offset, physical):
        return bytes(data[offset:offset + count])

    prog.add_memory_segment(address, len(data), read, physical=False)
    return address


def _hugetlb_type(model) -> tuple:
    return ("<I", model.hugetlb_test[2] << 24)


@pytest.mark.parametrize("fixture", ["7.2-mixed", "6.12-mixed"])
def test_healthy_fixture_finds_nothing(fixture):
    """Nothing on a healthy guest; in the pointer form (6.12) the listed
    optimized folios' tail vmemmap pages alias their head's, whose first
    struct page is a hugetlb head: the read must skip them."""
    prog = open_vmcore(str(FIXTURES / f"{fixture}.kdump"), None)
    rc, doc = _verify(prog, "--memmap")
    m = doc["memmap"]
    assert rc == 0 and m["done"] and m["hugetlb_typed"] == []
    assert m["vmemmap_pages_skipped"] >= 32 * 8  # 32 listed 2 MiB folios, 8 each


def test_fake_heads_would_be_found_without_the_skip(monkeypatch):
    """The control of the test above: without skipping the listed folios,
    the pointer form's fake heads are found (so the skip is what hides
    them, not a read that sees nothing)."""
    prog = open_vmcore(str(FIXTURES / "6.12-mixed.kdump"), None)
    monkeypatch.setattr(memmap, "_skipped", lambda sweep, swept, lo, hi: bytearray(hi - lo))
    rc, doc = _verify(prog, "--memmap")
    assert rc == 1 and doc["memmap"]["hugetlb_typed"]


def test_stale_type_found():
    prog = open_vmcore(str(FIXTURES / "7.2-mixed.kdump"), None)
    model = kernel_model(prog)
    index = _free_vmemmap_page(prog, "7.2-mixed")
    _overlay(prog, index, {5: {model.hugetlb_test[1]: _hugetlb_type(model)}})
    pfn = index * model.pages_per_vmemmap_page + 5
    rc, doc = _verify(prog)
    assert rc == 0 and doc["memmap"] is None
    rc, doc = _verify(prog, "--memmap")
    assert rc == 1
    assert [(f["check"], f["page_pfn"]) for f in doc["findings"]] == [("stale-hugetlb-type", pfn)]
    (t,) = doc["memmap"]["hugetlb_typed"]
    assert t["kind"] == "stale" and "PG_head clear" in t["what"]
    assert doc["root_causes"] == 1
    # pfn % 64 == 5: not where 6.12.117 leaves its copies of a head.
    assert doc["diagnosis"][0]["known_bug"] is None
    # The drgn helper: a struct page * of that pfn.
    (page,) = for_each_hugetlb_typed_page(prog)
    assert page.type_.type_name() == "struct page *"
    assert page.value_() == model.page_address(pfn)
    assert [f.check for f in hvo_verify(prog, memmap=True)] == ["stale-hugetlb-type"]
    assert hvo_verify(prog) == []


def test_stale_type_at_a_head_copy_is_the_known_bug():
    """Stale types at every 64th pfn inside a 2 MiB block, never at its
    start: the pattern 6.12.117's pool shrink leaves (known-bugs, bug 2)."""
    prog = open_vmcore(str(FIXTURES / "7.2-mixed.kdump"), None)
    model = kernel_model(prog)
    index = _free_vmemmap_page(prog, "7.2-mixed", align=8) + 3  # pfn % 512 == 192
    _overlay(prog, index, {0: {model.hugetlb_test[1]: _hugetlb_type(model)}})
    rc, doc = _verify(prog, "--memmap")
    assert rc == 1 and [f["page_pfn"] for f in doc["findings"]] == [index * 64]
    (cause,) = doc["diagnosis"]
    assert "known-bugs.md, section 2" in cause["known_bug"]


def _folio_head(model, address: int, slot: int, refcount: int, private: int) -> dict:
    """A hugetlb head at ``slot`` and its first tail (mask form, order 9)."""
    size = model.sizeof_page
    head = address + slot * size
    return {
        slot: {model.off_flags: ("<Q", 1 << model.pg_head),
               model.hugetlb_test[1]: _hugetlb_type(model),
               model.off_refcount: ("<i", refcount),
               model.off_private: ("<Q", private)},
        slot + 1: {model.off_info: ("<Q", compound_info_mask(model, 9))},
    }, head


def test_unlisted_unremapped_folio_found():
    prog = open_vmcore(str(FIXTURES / "7.2-mixed.kdump"), None)
    model = kernel_model(prog)
    assert model.form == "mask"
    index = _free_vmemmap_page(prog, "7.2-mixed", align=8)
    address = model.vmemmap_start + index * model.page_size
    pages, head = _folio_head(model, address, 0, 0, 0)
    _overlay(prog, index, pages)
    rc, doc = _verify(prog, "--memmap")
    assert rc == 1
    assert [(f["check"], f["folio_pfn"]) for f in doc["findings"]] == [
        ("unlisted-folio", model.page_pfn(head))]
    assert doc["memmap"]["hugetlb_typed"][0]["kind"] == "off-lists"


def test_isolated_folio_is_no_finding():
    prog = open_vmcore(str(FIXTURES / "7.2-mixed.kdump"), None)
    model = kernel_model(prog)
    index = _free_vmemmap_page(prog, "7.2-mixed", align=8)
    address = model.vmemmap_start + index * model.page_size
    # In use, HPG_migratable clear: what isolate_hugetlb() leaves.
    pages, head = _folio_head(model, address, 0, 1, 0)
    _overlay(prog, index, pages)
    rc, doc = _verify(prog, "--memmap")
    assert rc == 0 and doc["findings"] == []
    (t,) = doc["memmap"]["hugetlb_typed"]
    assert t["kind"] == "isolated" and t["pfn"] == model.page_pfn(head)


def test_not_done_before_6_9():
    prog = open_vmcore(str(FIXTURES / "6.1-hvo-2m.kdump"), None)
    rc, doc = _verify(prog, "--memmap")
    assert rc == 0 and doc["memmap"]["done"] is False
    assert "before 6.9" in doc["memmap"]["not_done"]
