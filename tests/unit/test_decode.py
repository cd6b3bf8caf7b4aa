"""
Pure decoding: compound_info/compound_head words, page flags, vmemmap sizes,
on kernel models built by hand (no program, no memory). Every expected value
is worked out here from the kernel's definitions, not taken from vmemspect.
"""

import pytest

from vmemspect.hvo import vmemmap_savings
from vmemspect.kernel import (
    KernelModel,
    compound_info_mask,
    decode_compound_info,
    page_flags_nid,
    page_flags_zone,
)

VMEMMAP = 0xFFFFEA0000000000


def model(form: str, sizeof_page: int = 64) -> KernelModel:
    return KernelModel(
        release="test", arch="x86_64", page_shift=12, sizeof_page=sizeof_page,
        info_member="compound_info" if form == "mask" else "compound_head", form=form,
        tails_owner="zone" if form == "mask" else None, tails_len=16 if form == "mask" else 0,
        tail_min_order=7, hugetlb=True, hvo_built=True, hugetlb_unit="folio", hvo_key=False,
        off_order=64, order_source="test", evidence=(), defaults=(), section_size_bits=27,
        off_flags=0, off_info=8,
        off_lru=8, off_mapping=24, off_private=40, off_refcount=52, pg_head=6,
        hpg_vmemmap_optimized=4, nodes_pgoff=54, nodes_mask=1023, zones_pgoff=51, zones_mask=7,
        vmemmap_start=VMEMMAP, pgtable_levels=4)


MASK = model("mask")
POINTER = model("pointer")


def page(pfn: int) -> int:
    return VMEMMAP + 64 * pfn


@pytest.mark.parametrize("order, value", [
    (7, 0xFFFFFFFFFFFFE001),   # GENMASK(63, 13) | 1
    (9, 0xFFFFFFFFFFFF8001),   # 2 MiB: GENMASK(63, 15) | 1, seen on 7.2
    (18, 0xFFFFFFFFFF000001),  # 1 GiB: GENMASK(63, 24) | 1, seen on 7.2
])
def test_compound_info_mask(order, value):
    assert compound_info_mask(MASK, order) == value


@pytest.mark.parametrize("tail_pfn, raw, head_pfn, order", [
    (0x10245, 0xFFFFFFFFFFFF8001, 0x10200, 9),      # a 2 MiB folio's tail
    (0x101FF, 0xFFFFFFFFFFFF8001, 0x10000, 9),      # its last tail
    (0x40001, 0xFFFFFFFFFF000001, 0x40000, 18),     # the first tail of a 1 GiB folio
    (0x7FFFF, 0xFFFFFFFFFF000001, 0x40000, 18),     # its last tail
    (0x10081, 0xFFFFFFFFFFFFE001, 0x10080, 7),      # the smallest HVO order
])
def test_decode_mask(tail_pfn, raw, head_pfn, order):
    d = decode_compound_info(MASK, page(tail_pfn), raw)
    assert (d.form, d.tail, d.head, d.order, d.valid) == ("mask", True, page(head_pfn), order,
                                                          True)


def test_decode_mask_with_unaligned_vmemmap_base_is_still_an_and():
    # The head is page & mask, whatever the base (the kernel aligns it).
    d = decode_compound_info(MASK, 0xFFFFD8B5C1234567 & ~63, 0xFFFFFFFFFFFF8001)
    assert d.head == 0xFFFFD8B5C1230000


def test_decode_pointer_tail():
    head = page(0x10200)
    d = decode_compound_info(POINTER, page(0x10245), head | 1)
    assert (d.form, d.tail, d.head, d.order, d.valid) == ("pointer", True, head, None, True)


@pytest.mark.parametrize("m", [MASK, POINTER], ids=["mask", "pointer"])
def test_decode_not_a_tail(m):
    # A head's word is lru.next: a list pointer, bit 0 clear.
    d = decode_compound_info(m, page(0x10200), page(0x10400) + 8)
    assert (d.tail, d.head, d.order, d.valid) == (False, None, None, True)


@pytest.mark.parametrize("raw", [
    0x0000000000000001,  # no mask bits at all
    0xFFFFFFFFFFFF8101,  # a hole: bit 8 set, bits 9..14 clear
    0x00FFFFFFFFFF8001,  # does not reach bit 63
    0x7FFFFFFFFFFF8001,  # bit 63 clear
    0xFFFFFFFFFFFFFFF1,  # GENMASK(63, 4): an order below zero
])
def test_decode_invalid_masks(raw):
    d = decode_compound_info(MASK, page(0x10245), raw)
    assert d.tail is True
    assert d.valid is False
    assert d.order is None


def test_decode_empty_mask_has_no_head():
    assert decode_compound_info(MASK, page(0x10245), 1).head is None


def test_page_flags_node_and_zone():
    flags = (3 << 54) | (2 << 51) | (1 << 6) | 0x28
    assert page_flags_nid(MASK, flags) == 3
    assert page_flags_zone(MASK, flags) == 2
    top = (1023 << 54) | (4 << 51)
    assert (page_flags_nid(MASK, top), page_flags_zone(MASK, top)) == (1023, 4)


@pytest.mark.parametrize("order, pages, saved", [
    (6, 1, 0),      # 64 struct pages fit one vmemmap page: nothing to free
    (7, 2, 1),      # VMEMMAP_TAIL_MIN_ORDER
    (9, 8, 7),      # "28 KiB vmemmap can be freed for a 2.00 MiB page"
    (18, 4096, 4095),  # "16380 KiB ... for a 1.00 GiB page"
])
def test_vmemmap_pages_and_savings(order, pages, saved):
    assert MASK.vmemmap_pages(order) == pages
    assert vmemmap_savings(MASK, order) == saved
    assert MASK.pages_per_vmemmap_page == 64


def test_page_address_and_pfn():
    assert MASK.page_address(0x10200) == 0xFFFFEA0000408000
    assert MASK.page_pfn(0xFFFFEA0000408000 + 64 * 5 + 17) == 0x10205
