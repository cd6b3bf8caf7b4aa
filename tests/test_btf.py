"""
The BTF parser (vmemspect/btf.py) on the real BTF of Debian's 6.12 and 7.2
kernels, read from their dumps (kernel memory from __start_BTF to
__stop_BTF, found through kallsyms) and from their vmlinux's .BTF section;
the types, enumerators and globals it serves are compared with what drgn
loads from the DWARF vmlinux of the same kernel. Then malformed blobs, cut
and corrupted from a real one, which must each give one clear error.
"""

import re
import struct
import time

import drgn
import pytest

from conftest import KERNELS, real_run
from vmemspect.btf import (
    GLOBALS,
    KIND_ENUM,
    KIND_PTR,
    KIND_STRUCT,
    KIND_TYPEDEF,
    KIND_UNION,
    Btf,
    load_kernel_btf,
    read_btf_from_elf,
    read_btf_from_memory,
    read_btf_from_sysfs,
)
from vmemspect.errors import VmemspectError
from vmemspect.progcache import cache_get
from vmemspect.target import _X86_64, open_vmcore

#: Types whose layout vmemspect reads, and neighbours drgn's helpers use.
STRUCTS = ("struct page", "struct folio", "struct hstate", "struct zone",
           "struct pglist_data", "struct mm_struct", "struct list_head",
           "struct mem_section", "struct uts_namespace", "nodemask_t", "atomic_long_t")
ENUMS = ("enum pageflags", "enum hugetlb_page_flags", "enum zone_type", "enum node_states")


def _programs(series):
    run = real_run(series, "hvo-2m")
    dwarf = open_vmcore(run["kdump"], run["vmlinux"])
    btf = drgn.Program(dwarf.platform)
    btf.set_core_dump(run["kdump"])
    load_kernel_btf(btf)
    return run, dwarf, btf


@pytest.fixture(scope="module", params=KERNELS)
def kernel(request):
    return _programs(request.param)


def test_blob_from_the_dump_is_the_vmlinux_section(kernel):
    run, _, prog = kernel
    memory = read_btf_from_memory(prog)
    assert memory[:2] == b"\x9f\xeb"
    assert memory == read_btf_from_elf(run["vmlinux"])


def test_full_parse_is_fast(kernel):
    _, _, prog = kernel
    data = read_btf_from_memory(prog)
    start = time.perf_counter()
    btf = Btf(data)
    btf.ids_by_name("page")
    btf.enumerator("PG_head")
    took = time.perf_counter() - start
    assert btf.nr_types > 100_000
    # About 0.15 s here (2 cores); a loose bound for a busy machine.
    assert took < 2.0, took


def _member_layout(t, base=0):
    """(name, bit offset, bit field size, size) of every member, anonymous
    members flattened, as a layout drgn resolves member names through."""
    out = []
    for m in t.members:
        off = base + m.bit_offset
        mt = m.type.unaliased()
        if m.name is None and mt.kind in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION):
            out.extend(_member_layout(mt, off))
            continue
        size = drgn.sizeof(mt) if mt.kind != drgn.TypeKind.ARRAY or mt.length else None
        out.append((m.name, off, m.bit_field_size, size))
    return out


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_layout_equals_dwarf(kernel, name):
    _, dwarf, btf = kernel
    d, b = dwarf.type(name), btf.type(name)
    assert drgn.sizeof(b) == drgn.sizeof(d)
    assert _member_layout(b.unaliased()) == _member_layout(d.unaliased())
    # drgn's C rendering covers member names, types and nesting.
    assert str(b) == str(d)


def test_offsetof_the_members_vmemspect_reads(kernel):
    _, dwarf, btf = kernel
    for type_name, member in [("struct page", "flags"), ("struct page", "lru"),
                              ("struct page", "mapping"), ("struct page", "_refcount"),
                              ("struct folio", "private"), ("struct zone", "spanned_pages"),
                              ("struct hstate", "hugepage_freelists"),
                              ("struct hstate", "hugepage_activelist"),
                              ("struct pglist_data", "node_zones"), ("struct mm_struct", "pgd")]:
        assert (drgn.offsetof(btf.type(type_name), member)
                == drgn.offsetof(dwarf.type(type_name), member)), (type_name, member)
    info = "compound_info" if btf.type("struct page").has_member("compound_info") else "compound_head"
    assert drgn.offsetof(btf.type("struct page"), info) == drgn.offsetof(dwarf.type("struct page"), info)


@pytest.mark.parametrize("name", ENUMS)
def test_enumerators_equal_dwarf(kernel, name):
    _, dwarf, btf = kernel
    d, b = dwarf.type(name), btf.type(name)
    assert [(e.name, e.value) for e in b.enumerators] == [(e.name, e.value) for e in d.enumerators]
    assert b.type.type_name() == d.type.type_name()


def test_constants_are_found_by_name(kernel):
    _, dwarf, btf = kernel
    for name in ("PG_head", "HPG_vmemmap_optimized", "__MAX_NR_ZONES", "N_ONLINE",
                 "SECTION_MARKED_PRESENT_BIT", "NR_NODE_STATES"):
        assert btf.constant(name).value_() == dwarf.constant(name).value_(), name
        assert btf[name].value_() == dwarf[name].value_(), name
        assert btf[name].type_.type_name() == dwarf[name].type_.type_name(), name
    with pytest.raises(LookupError):
        btf.constant("NO_SUCH_ENUMERATOR")
    with pytest.raises(KeyError):
        btf["no_such_global_anywhere"]


def test_globals_equal_dwarf(kernel):
    """Every global of the table, where DWARF has it: same type, same address,
    same bytes; where DWARF lacks it, the BTF side lacks it too."""
    _, dwarf, btf = kernel
    for name in GLOBALS:
        try:
            d = dwarf.object(name)
        except LookupError:
            with pytest.raises(LookupError):
                btf.object(name)
            continue
        b = btf.object(name)
        assert b.type_.type_name() == d.type_.type_name(), name
        assert b.address_ == d.address_, name
        size = min(drgn.sizeof(d), 4096)
        assert btf.read(b.address_, size) == dwarf.read(d.address_, size), name


def test_drgn_derived_objects_equal_dwarf(kernel):
    """Objects drgn itself derives from the types and globals."""
    _, dwarf, btf = kernel
    for name in ("vmemmap", "SECTIONS_PER_ROOT", "jiffies"):
        assert btf[name].value_() == dwarf[name].value_(), name
        assert btf[name].type_.type_name() == dwarf[name].type_.type_name(), name


def test_every_named_type_equals_dwarf(kernel):
    """All named structs, unions, enums and typedefs of the BTF, rendered as
    C by drgn, against DWARF. BTF writes both "x[0]" and "x[]" as a
    zero-length array and vmemspect reads them as "x[]"; the pahole that
    built 6.12 wrote "x[a][b]" as "x[a*b]"; and a few names have two
    definitions in the kernel (DWARF and BTF may pick different ones). So a
    small fraction may differ, for these reasons only."""
    _, dwarf, btf = kernel
    parsed = cache_get(btf, "btf").btf
    prefix = {KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum ", KIND_TYPEDEF: ""}
    names = {prefix[parsed.kind(t)] + parsed.name(t) for t in range(1, parsed.nr_types + 1)
             if parsed.kind(t) in prefix and parsed.name(t)}
    same = differ = 0
    unexplained = []
    for name in sorted(names):
        try:
            d = str(dwarf.type(name))
        except LookupError:
            continue
        b = str(btf.type(name))
        if b == d:
            same += 1
            continue
        differ += 1
        tag = name.split()[-1]
        definitions = [t for t in parsed.ids_by_name(tag) if parsed.kind(t) != 7]  # not FWD
        if b != _as_btf_writes_it(d) and len(definitions) < 2:
            unexplained.append(name)
    assert same > 10_000
    assert differ < same // 100, differ
    assert not unexplained, unexplained


def _as_btf_writes_it(c: str) -> str:
    """DWARF's C rendering with what BTF cannot say removed."""
    c = c.replace("[0]", "[]")
    dims = re.compile(r"\[(\d+)\]\[(\d+)\]")
    while dims.search(c):
        c = dims.sub(lambda m: f"[{int(m[1]) * int(m[2])}]", c)
    return c


def test_type_lookup_forms(kernel):
    _, dwarf, btf = kernel
    for name in ("unsigned long", "long unsigned int", "int", "char", "_Bool", "bool",
                 "u64", "struct hstate [2]", "struct page *", "struct list_head *[4]"):
        assert btf.type(name).kind == dwarf.type(name).kind, name
        assert str(btf.type(name)) == str(dwarf.type(name)), name
        assert drgn.sizeof(btf.type(name)) == drgn.sizeof(dwarf.type(name)), name


def test_this_machines_btf_parses():
    """The running kernel's BTF (another kernel, another pahole), if any."""
    try:
        data = read_btf_from_sysfs()
    except VmemspectError:
        pytest.skip("no /sys/kernel/btf/vmlinux here")
    btf = Btf(data, "/sys/kernel/btf/vmlinux")
    assert btf.ids_by_name("page") and btf.enumerator("PG_head") is not None
    prog = drgn.Program(_X86_64)
    from vmemspect.btf import BtfTypes
    types = BtfTypes(prog, btf)
    page = types.find_type(prog, {drgn.TypeKind.STRUCT}, "page", None)
    assert page.has_member("flags") and drgn.sizeof(page) == 64


def test_no_kernel_no_btf_is_one_clear_line():
    with pytest.raises(VmemspectError) as e:
        load_kernel_btf(drgn.Program(_X86_64))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("no debug info found for the kernel, and its kallsyms")
    assert str(e.value).endswith("pass its DWARF vmlinux with -s/--vmlinux "
                                 "(Debian: linux-image-RELEASE-dbg)")


# ---------------------------------------------------------------- malformed

@pytest.fixture(scope="module")
def blob():
    run = real_run("7.2", "hvo-2m")
    return read_btf_from_elf(run["vmlinux"])


def _header(data):
    return list(struct.unpack_from("<HBBIIIII", data))


def _with_header(data, fields):
    return struct.pack("<HBBIIIII", *fields) + data[24:]


def _error(data) -> str:
    with pytest.raises(VmemspectError) as e:
        Btf(data, "test.btf")
    message = str(e.value)
    assert "\n" not in message
    problem, hint = message.split("; ", 1)
    assert problem.startswith("test.btf: malformed BTF (")
    assert "-s/--vmlinux" in hint
    return problem


def test_the_real_blob_parses(blob):
    Btf(blob)


def test_bad_magic(blob):
    assert "bad magic" in _error(b"\x00\x00" + blob[2:])


def test_bad_version(blob):
    h = _header(blob)
    h[1] = 2
    assert "version 2" in _error(_with_header(blob, h))


def test_truncated_header(blob):
    assert "truncated header" in _error(blob[:10])


def test_truncated_type_section(blob):
    h = _header(blob)
    # The blob ends in the middle of the type section.
    assert "truncated type section" in _error(blob[:h[3] + h[4] + h[5] // 2])


def test_type_section_ends_inside_a_type(blob):
    h = _header(blob)
    btf = Btf(blob)
    # Cut the section 4 bytes into the last type: its record is incomplete.
    last = btf.offsets[btf.nr_types] * 4
    h[5] = last + 4
    assert "truncated type section in type" in _error(_with_header(blob, h))


def test_type_id_out_of_range(blob):
    btf = Btf(blob)
    h = _header(blob)
    tid = next(t for t in range(1, btf.nr_types + 1) if btf.kind(t) == KIND_PTR)
    at = h[3] + h[4] + btf.offsets[tid] * 4 + 8  # struct btf_type.type
    bad = blob[:at] + struct.pack("<I", btf.nr_types + 7) + blob[at + 4:]
    problem = _error(bad)
    assert f"type {tid} (PTR) refers to type id {btf.nr_types + 7}, out of range" in problem


def test_member_type_id_out_of_range(blob):
    btf = Btf(blob)
    h = _header(blob)
    tid = btf.ids_by_name("page")[0]
    at = h[3] + h[4] + btf.offsets[tid] * 4 + 12 + 4  # first btf_member.type
    bad = blob[:at] + struct.pack("<I", 0x7FFFFFFF) + blob[at + 4:]
    assert f"type {tid} (STRUCT) refers to type id {0x7FFFFFFF}" in _error(bad)


def test_string_offset_out_of_range(blob):
    btf = Btf(blob)
    h = _header(blob)
    at = h[3] + h[4] + btf.offsets[1] * 4  # name_off of type 1
    bad = blob[:at] + struct.pack("<I", h[7] + 100) + blob[at + 4:]
    assert f"string offset {h[7] + 100} is out of range" in _error(bad)


def test_unknown_kind(blob):
    h = _header(blob)
    at = h[3] + h[4] + 4  # info of type 1
    info, = struct.unpack_from("<I", blob, at)
    bad = blob[:at] + struct.pack("<I", (info & ~(0x1F << 24)) | (25 << 24)) + blob[at + 4:]
    assert "type 1 has unknown kind 25" in _error(bad)


def test_truncated_string_section(blob):
    h = _header(blob)
    assert "truncated string section" in _error(blob[:h[3] + h[6] + h[7] - 1])
