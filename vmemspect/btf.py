"""
Types from BTF
--------------

Every Debian kernel carries BTF (``CONFIG_DEBUG_INFO_BTF``): a compact
description of its types, in memory between the kallsyms symbols
``__start_BTF`` and ``__stop_BTF`` (so inside every vmcore), at
``/sys/kernel/btf/vmlinux`` on a running kernel, and in the ``.BTF`` section
of vmlinux. drgn 0.3.0 cannot read it; this module can, so that vmemspect
works without the kernel's DWARF debug package::

    >>> btf = Btf(read_btf_from_memory(prog))
    >>> load_btf_types(prog, btf)
    >>> prog.type("struct page").size
    64
    >>> prog["PG_head"]
    Object(prog, 'enum pageflags', value=6)
    >>> prog["hstates"][0].name
    (char [32])"hugepages-2048kB"

:class:`Btf` parses the blob (plain Python and :mod:`struct`; a 5 MB vmlinux
BTF in about 0.1 s) and indexes names on first use. :class:`BtfTypes` turns
BTF type ids into drgn :class:`~drgn.Type` objects, lazily (members are
built on first access), and serves them to drgn through a type finder. BTF
has no entries for global variables outside per-cpu data, so an object
finder serves the globals vmemspect and drgn's helpers read from a table of
C types (:data:`GLOBALS`) at their kallsyms addresses; enumerators (``PG_head``,
``N_ONLINE``...) come from BTF's enums.

Seen to work on Debian 6.12.117 and 7.2.13 (x86_64), whose BTF pahole wrote.
"""

import array
import os
import struct
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import drgn
from drgn import (
    FindObjectFlags,
    Object,
    Program,
    Qualifiers,
    Type,
    TypeEnumerator,
    TypeMember,
    TypeParameter,
)

from .errors import VmemspectError
from .progcache import cache_set
from .vmcoreinfo import program_vmcoreinfo, vmcoreinfo_number

__all__ = (
    "BTF_MAGIC",
    "GLOBALS",
    "Btf",
    "BtfTypes",
    "load_btf_types",
    "load_kernel_btf",
    "read_btf_from_elf",
    "read_btf_from_memory",
    "read_btf_from_sysfs",
)

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_HEADER_BE = struct.Struct(">HBBIIIII")

# BTF kinds (include/uapi/linux/btf.h).
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

KIND_NAMES = {
    KIND_INT: "INT", KIND_PTR: "PTR", KIND_ARRAY: "ARRAY", KIND_STRUCT: "STRUCT",
    KIND_UNION: "UNION", KIND_ENUM: "ENUM", KIND_FWD: "FWD", KIND_TYPEDEF: "TYPEDEF",
    KIND_VOLATILE: "VOLATILE", KIND_CONST: "CONST", KIND_RESTRICT: "RESTRICT",
    KIND_FUNC: "FUNC", KIND_FUNC_PROTO: "FUNC_PROTO", KIND_VAR: "VAR",
    KIND_DATASEC: "DATASEC", KIND_FLOAT: "FLOAT", KIND_DECL_TAG: "DECL_TAG",
    KIND_TYPE_TAG: "TYPE_TAG", KIND_ENUM64: "ENUM64",
}

# 32-bit words of kind-specific data after a type's 12-byte struct btf_type:
# (words per vlen item, fixed words).
_TRAILER = {
    KIND_INT: (0, 1), KIND_PTR: (0, 0), KIND_ARRAY: (0, 3), KIND_STRUCT: (3, 0),
    KIND_UNION: (3, 0), KIND_ENUM: (2, 0), KIND_FWD: (0, 0), KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0), KIND_CONST: (0, 0), KIND_RESTRICT: (0, 0), KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (2, 0), KIND_VAR: (0, 1), KIND_DATASEC: (3, 0), KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (0, 1), KIND_TYPE_TAG: (0, 0), KIND_ENUM64: (3, 0),
}
# Kinds whose third word is a type id (the others: a size, or unused).
_REFERS = frozenset((KIND_PTR, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT,
                     KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DECL_TAG, KIND_TYPE_TAG))
# Kinds whose name is a type's name (what drgn's type finder looks up).
_NAMED_TYPES = frozenset((KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD,
                          KIND_TYPEDEF, KIND_FLOAT, KIND_ENUM64))

# INT encoding bits.
_INT_SIGNED = 1
_INT_BOOL = 4

_HINT = "use the kernel's DWARF vmlinux with -s/--vmlinux"


def _malformed(source: str, what: str) -> VmemspectError:
    return VmemspectError(f"{source}: malformed BTF ({what})", _HINT)


class Btf:
    """
    A parsed BTF blob: the header and the offset of every type, checked
    once (magic, version, section bounds, kinds, type ids and string
    offsets), so that later reads cannot go out of range.

    Type ids start at 1; 0 is ``void``.

    :param data: the blob (``.BTF`` section, ``/sys/kernel/btf/vmlinux`` or
        kernel memory from ``__start_BTF`` to ``__stop_BTF``).
    :param source: where it came from, for error messages.
    :raises VmemspectError: if the blob is malformed (one line: the problem,
        then what to do).
    """

    def __init__(self, data: bytes, source: str = "BTF") -> None:
        self.source = source
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise _malformed(source, f"truncated header: {len(data)} bytes")
        fields = _HEADER.unpack_from(data)
        #: The blob's byte order ("little" for x86_64 kernels).
        self.byteorder = "little"
        if fields[0] != BTF_MAGIC:
            fields = _HEADER_BE.unpack_from(data)
            if fields[0] != BTF_MAGIC:
                raise _malformed(source, f"bad magic {data[:2].hex()}, expected 9feb or eb9f")
            self.byteorder = "big"
        swap = self.byteorder != sys.byteorder
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = fields
        if version != 1:
            raise _malformed(source, f"version {version}, expected 1")
        if hdr_len < _HEADER.size or hdr_len > len(data):
            raise _malformed(source, f"header length {hdr_len} for a {len(data)}-byte blob")
        t_start, t_end = hdr_len + type_off, hdr_len + type_off + type_len
        s_start, s_end = hdr_len + str_off, hdr_len + str_off + str_len
        if t_end > len(data):
            raise _malformed(source, f"truncated type section: it ends at {t_end}, "
                                     f"the blob at {len(data)}")
        if s_end > len(data):
            raise _malformed(source, f"truncated string section: it ends at {s_end}, "
                                     f"the blob at {len(data)}")
        if type_off % 4 or type_len % 4:
            raise _malformed(source, "type section not 4-byte aligned")
        if str_len == 0 or data[s_start] != 0 or data[s_end - 1] != 0:
            raise _malformed(source, "string section does not start and end with NUL")
        self.strings = data[s_start:s_end]
        words = array.array("I")  # 4 bytes on every platform drgn runs on
        words.frombytes(data[t_start:t_end])
        if swap:
            words.byteswap()
        self.words = words
        self.offsets = self._index_types(words, str_len)
        self.nr_types = len(self.offsets) - 1
        self._names: Optional[Dict[str, List[int]]] = None
        self._enumerators: Optional[Dict[str, Tuple[int, int]]] = None
        self._strcache: Dict[int, str] = {}

    def _index_types(self, w: "array.array", str_len: int) -> "array.array":
        """One pass over the type section: each type's word offset; checks kinds,
        lengths, string offsets and (after the pass) type ids."""
        offsets = array.array("I", [0])
        append = offsets.append
        trailer = _TRAILER
        refers = _REFERS
        n = len(w)
        i = 0
        max_name = 0
        max_ref = 0
        while i < n:
            if i + 3 > n:
                raise _malformed(self.source, f"truncated type section in type {len(offsets)}")
            info = w[i + 1]
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            try:
                per, fixed = trailer[kind]
            except KeyError:
                raise _malformed(self.source, f"type {len(offsets)} has unknown kind {kind}")
            append(i)
            if w[i] > max_name:
                max_name = w[i]
            if kind in refers and w[i + 2] > max_ref:
                max_ref = w[i + 2]
            end = i + 3 + fixed + per * vlen
            if end > n:
                raise _malformed(self.source, f"truncated type section in type {len(offsets) - 1}")
            if vlen and per:
                if kind == KIND_STRUCT or kind == KIND_UNION:
                    m = max(w[i + 3:end:3])
                    r = max(w[i + 4:end:3])
                elif kind == KIND_FUNC_PROTO:
                    m = max(w[i + 3:end:2])
                    r = max(w[i + 4:end:2])
                elif kind == KIND_DATASEC:
                    m = 0
                    r = max(w[i + 3:end:3])
                else:  # ENUM, ENUM64
                    m = max(w[i + 3:end:per])
                    r = 0
                if m > max_name:
                    max_name = m
                if r > max_ref:
                    max_ref = r
            elif kind == KIND_ARRAY:
                r = max(w[i + 3], w[i + 4])
                if r > max_ref:
                    max_ref = r
            i = end
        ntypes = len(offsets) - 1
        if max_ref > ntypes:
            raise _malformed(self.source, self._first_bad_ref(offsets, ntypes))
        if max_name >= str_len:
            raise _malformed(self.source, f"a string offset {max_name} is out of range "
                                          f"(string section: {str_len} bytes)")
        return offsets

    def _first_bad_ref(self, offsets: "array.array", ntypes: int) -> str:
        for tid in range(1, ntypes + 1):
            for ref in self.refs(tid, offsets):
                if ref > ntypes:
                    return (f"type {tid} ({KIND_NAMES[self.kind(tid, offsets)]}) refers to "
                            f"type id {ref}, out of range (last id {ntypes})")
        return "a type id out of range"  # pragma: no cover

    # ------------------------------------------------------------ raw access

    def kind(self, tid: int, offsets: Optional["array.array"] = None) -> int:
        """The BTF kind of type ``tid`` (``KIND_STRUCT``...); 0 for void."""
        if tid == 0:
            return 0
        return (self.words[(offsets or self.offsets)[tid] + 1] >> 24) & 0x1F

    def refs(self, tid: int, offsets: Optional["array.array"] = None) -> Iterator[int]:
        """The type ids type ``tid`` refers to."""
        w = self.words
        i = (offsets or self.offsets)[tid]
        info = w[i + 1]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind in _REFERS:
            yield w[i + 2]
        if kind == KIND_ARRAY:
            yield w[i + 3]
            yield w[i + 4]
        elif kind in (KIND_STRUCT, KIND_UNION):
            yield from w[i + 4:i + 3 + 3 * vlen:3]
        elif kind == KIND_FUNC_PROTO:
            yield from w[i + 4:i + 3 + 2 * vlen:2]
        elif kind == KIND_DATASEC:
            yield from w[i + 3:i + 3 + 3 * vlen:3]

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` of the string section."""
        s = self._strcache.get(offset)
        if s is None:
            strings = self.strings
            s = strings[offset:strings.index(b"\0", offset)].decode("utf-8", "replace")
            self._strcache[offset] = s
        return s

    def header(self, tid: int) -> Tuple[int, str, int, int, bool, int]:
        """(offset of the type's words, name, kind, vlen, kind_flag, size or type)."""
        w = self.words
        i = self.offsets[tid]
        info = w[i + 1]
        return (i, self.string(w[i]), (info >> 24) & 0x1F, info & 0xFFFF,
                bool(info >> 31), w[i + 2])

    def name(self, tid: int) -> str:
        """The name of type ``tid`` ("" if anonymous)."""
        return self.string(self.words[self.offsets[tid]]) if tid else "void"

    def members(self, tid: int) -> List[Tuple[str, int, int, int]]:
        """A struct or union's members: (name, type id, bit offset, bit field size)."""
        i, _, kind, vlen, kflag, _ = self.header(tid)
        w = self.words
        out = []
        for j in range(i + 3, i + 3 + 3 * vlen, 3):
            off = w[j + 2]
            if kflag:
                out.append((self.string(w[j]), w[j + 1], off & 0xFFFFFF, off >> 24))
            else:
                out.append((self.string(w[j]), w[j + 1], off, 0))
        return out

    def enumerators(self, tid: int) -> List[Tuple[str, int]]:
        """An enum's (name, value) pairs, signed or not as the enum says."""
        i, _, kind, vlen, kflag, size = self.header(tid)
        w = self.words
        signed = self._enum_signed(tid)
        out = []
        if kind == KIND_ENUM:
            for j in range(i + 3, i + 3 + 2 * vlen, 2):
                v = w[j + 1]
                if signed and v & 0x80000000:
                    v -= 1 << 32
                out.append((self.string(w[j]), v))
        else:
            for j in range(i + 3, i + 3 + 3 * vlen, 3):
                v = w[j + 1] | (w[j + 2] << 32)
                if signed and v & (1 << 63):
                    v -= 1 << 64
                out.append((self.string(w[j]), v))
        return out

    def _enum_signed(self, tid: int) -> bool:
        # pahole 1.24+ sets kind_flag on signed enums. An older producer sets
        # it on none: then an enum with a value whose top bit is set is
        # taken as signed (as its 32-bit value was written from an int).
        i, _, kind, vlen, kflag, _ = self.header(tid)
        if kflag or self._producer_marks_signedness():
            return kflag
        if kind != KIND_ENUM:
            return False
        w = self.words
        return any(w[j] & 0x80000000 for j in range(i + 4, i + 3 + 2 * vlen, 2))

    def _producer_marks_signedness(self) -> bool:
        try:
            return self._marks_signedness
        except AttributeError:
            w = self.words
            self._marks_signedness = any(
                (w[i + 1] >> 24) & 0x1F in (KIND_ENUM, KIND_ENUM64) and w[i + 1] >> 31
                for i in self.offsets[1:]
            )
            return self._marks_signedness

    # ------------------------------------------------------------ indexes

    def ids_by_name(self, name: str) -> List[int]:
        """Ids of the named types (not functions, variables...) called ``name``."""
        if self._names is None:
            self._index_names()
        return self._names.get(name, [])  # type: ignore[union-attr]

    def _index_names(self) -> None:
        names: Dict[str, List[int]] = {}
        variables: Dict[str, int] = {}
        functions: Dict[str, int] = {}
        w = self.words
        strings = self.strings
        find = strings.index
        named = _NAMED_TYPES
        for tid in range(1, self.nr_types + 1):
            i = self.offsets[tid]
            name_off = w[i]
            if not name_off:
                continue
            kind = (w[i + 1] >> 24) & 0x1F
            if kind in named:
                name = strings[name_off:find(b"\0", name_off)].decode()
                names.setdefault(name, []).append(tid)
                if kind == KIND_INT and name in _C_INT_NAMES:
                    names.setdefault(_C_INT_NAMES[name], []).append(tid)
            elif kind == KIND_VAR:
                name = strings[name_off:find(b"\0", name_off)].decode()
                variables.setdefault(name, tid)
            elif kind == KIND_FUNC:
                name = strings[name_off:find(b"\0", name_off)].decode()
                functions.setdefault(name, tid)
        self._names = names
        self._variables = variables
        self._functions = functions

    def variable(self, name: str) -> Optional[int]:
        """The id of the VAR entry ``name`` (per-cpu variables only, in vmlinux)."""
        if self._names is None:
            self._index_names()
        return self._variables.get(name)

    def function(self, name: str) -> Optional[int]:
        """The id of the FUNC entry ``name`` (functions that are not inlined)."""
        if self._names is None:
            self._index_names()
        return self._functions.get(name)

    def enumerator(self, name: str) -> Optional[Tuple[int, int]]:
        """(enum type id, value) of the enumerator ``name``, or None."""
        if self._enumerators is None:
            index: Dict[str, Tuple[int, int]] = {}
            w = self.words
            for tid in range(1, self.nr_types + 1):
                kind = (w[self.offsets[tid] + 1] >> 24) & 0x1F
                if kind == KIND_ENUM or kind == KIND_ENUM64:
                    for ename, value in self.enumerators(tid):
                        index.setdefault(ename, (tid, value))
            self._enumerators = index
        return self._enumerators.get(name)


# GCC's (and so pahole's) names of C integer types -> drgn's spelling, which
# is what drgn prints for DWARF types too.
_C_INT_NAMES = {
    "long unsigned int": "unsigned long",
    "long int": "long",
    "long long unsigned int": "unsigned long long",
    "long long int": "long long",
    "short unsigned int": "unsigned short",
    "short int": "short",
}


# ---------------------------------------------------------------- globals

#: Global variables served without DWARF: name -> (C type, array length
#: source or None). BTF describes types, but has VAR entries only for per-cpu
#: variables, so the types of the globals vmemspect and drgn's helpers read
#: are written here, as in the kernel's source (and checked against DWARF by
#: tests/test_btf.py on 6.12 and 7.2). A global is served only if kallsyms
#: has its symbol, so a config that removes it (CONFIG_NUMA=n...) removes it
#: here too.
GLOBALS: Dict[str, Tuple[str, Optional[str]]] = {
    # vmemspect (kernel.py, hugetlb.py, pagetable.py).
    "init_uts_ns": ("struct uts_namespace", None),
    "init_mm": ("struct mm_struct", None),
    "hstates": ("struct hstate", "HUGE_MAX_HSTATE"),
    "hugetlb_max_hstate": ("int", None),
    "vmemmap_optimize_enabled": ("bool", None),
    "hugetlb_optimize_vmemmap_key": ("struct static_key_false", None),
    "nr_memmap_pages": ("atomic_long_t", None),
    "nr_memmap_boot_pages": ("atomic_long_t", None),
    "pgdir_shift": ("unsigned int", None),
    "__pgtable_l5_enabled": ("unsigned int", None),
    "vmemmap_base": ("unsigned long", None),
    "page_offset_base": ("unsigned long", None),
    "vmalloc_base": ("unsigned long", None),
    "max_pfn": ("unsigned long", None),
    # optimizable.py: hugetlb_free_vmemmap= at boot (init/main.c: char *).
    "saved_command_line": ("char *", None),
    # drgn's for_each_online_pgdat() / NODE_DATA() / for_each_online_node().
    "node_data": ("struct pglist_data *", "MAX_NUMNODES"),
    "contig_page_data": ("struct pglist_data", None),  # CONFIG_NUMA=n
    "node_states": ("nodemask_t", "NR_NODE_STATES"),
    "nr_node_ids": ("unsigned int", None),
    "nr_online_nodes": ("unsigned int", None),
    # drgn's for_each_present_section() and the SECTIONS_PER_ROOT it derives
    # from mem_section's type. x86_64 always has SPARSEMEM_EXTREME (mm/Kconfig:
    # SPARSEMEM && !SPARSEMEM_STATIC, and only X86_32 selects STATIC), so
    # mem_section is a pointer to the array of roots.
    "mem_section": ("struct mem_section **", None),
    "__highest_present_section_nr": ("unsigned long", None),
    # drgn's get_printk_records() (the kernel's HVO boot lines, before 6.10).
    "prb": ("struct printk_ringbuffer *", None),
    # drgn's own "jiffies" object is found from this.
    "jiffies_64": ("u64", None),
}

# Defaults of macros that neither BTF nor drgn provide (drgn gives PAGE_SHIFT,
# PAGE_SIZE, SECTION_SIZE_BITS, MAX_PHYSMEM_BITS, NR_SECTION_ROOTS and
# SECTIONS_PER_ROOT from VMCOREINFO), used only when nothing better says:
# HUGE_MAX_HSTATE is 2 on x86_64 (arch/x86/include/asm/page_types.h: 2 MiB
# and 1 GiB pages); MAX_NUMNODES is 1 << CONFIG_NODES_SHIFT, 1024 on Debian's
# x86_64 kernels (NODES_SHIFT=10); NR_NODE_STATES is 6 on 6.12 and 7.2.
_MACRO_DEFAULTS = {"HUGE_MAX_HSTATE": 2, "MAX_NUMNODES": 1024, "NR_NODE_STATES": 6}


class BtfTypes:
    """
    drgn types, enumerators and globals from a :class:`Btf`, for one program.

    Types are built on first use and cached by type id; struct and union
    members are thunks, so building ``struct page`` does not build every
    type it reaches.
    """

    def __init__(self, prog: Program, btf: Btf) -> None:
        self.prog = prog
        self.btf = btf
        self._types: Dict[int, Type] = {}
        self._lengths: Dict[str, int] = {}
        #: How each array length of GLOBALS was found, for docs and tests.
        self.length_sources: Dict[str, str] = {}

    # ------------------------------------------------------------ types

    def type(self, tid: int) -> Type:
        """The drgn type of BTF type id ``tid`` (0 is void)."""
        t = self._types.get(tid)
        if t is None:
            t = self._build(tid)
            self._types[tid] = t
        return t

    def _build(self, tid: int) -> Type:
        prog = self.prog
        btf = self.btf
        if tid == 0:
            return prog.void_type()
        if tid > btf.nr_types:
            raise _malformed(btf.source, f"type id {tid} out of range (last id {btf.nr_types})")
        i, name, kind, vlen, kflag, size = btf.header(tid)
        w = btf.words
        if kind == KIND_INT:
            encoding = w[i + 3] >> 24
            if encoding & _INT_BOOL:
                return prog.bool_type(name, size)
            signed = bool(encoding & _INT_SIGNED)
            if name == "char":
                # pahole does not mark plain char; riscv64's is unsigned by
                # its ABI, x86_64's is taken as signed.
                signed = not (prog.platform is not None
                              and prog.platform.arch == drgn.Architecture.RISCV64)
            return prog.int_type(_C_INT_NAMES.get(name, name), size, signed)
        if kind == KIND_PTR:
            return prog.pointer_type(self.type(size), 8)
        if kind == KIND_ARRAY:
            nelems = w[i + 5]
            # BTF writes both "x[0]" and "x[]" as 0 elements; DWARF tells
            # them apart. The kernel now writes flexible arrays as "x[]".
            return prog.array_type(self.type(w[i + 3]), nelems or None)
        if kind in (KIND_STRUCT, KIND_UNION):
            members = [self._member(mname, mtid, bit_offset, bits)
                       for mname, mtid, bit_offset, bits in btf.members(tid)]
            make = prog.struct_type if kind == KIND_STRUCT else prog.union_type
            return make(name or None, size, members)
        if kind in (KIND_ENUM, KIND_ENUM64):
            if vlen == 0:
                return prog.enum_type(name or None)
            signed = btf._enum_signed(tid)
            compatible = prog.int_type(_ENUM_COMPATIBLE[(size, signed)], size, signed)
            return prog.enum_type(name or None, compatible,
                                  [TypeEnumerator(n, v) for n, v in btf.enumerators(tid)])
        if kind == KIND_FWD:
            # Use the definition when BTF has exactly one (DWARF drgn does too).
            want = KIND_UNION if kflag else KIND_STRUCT
            full = [t for t in btf.ids_by_name(name) if btf.kind(t) == want]
            if len(full) == 1:
                return self.type(full[0])
            return (prog.union_type if kflag else prog.struct_type)(name)
        if kind == KIND_TYPEDEF:
            return prog.typedef_type(name, self.type(size))
        if kind in (KIND_CONST, KIND_VOLATILE, KIND_RESTRICT):
            target = self.type(size)
            q = {KIND_CONST: Qualifiers.CONST, KIND_VOLATILE: Qualifiers.VOLATILE,
                 KIND_RESTRICT: Qualifiers.RESTRICT}[kind]
            return target.qualified(target.qualifiers | q)
        if kind in (KIND_TYPE_TAG, KIND_FUNC):
            return self.type(size)
        if kind == KIND_FUNC_PROTO:
            params = []
            variadic = False
            for j in range(i + 3, i + 3 + 2 * vlen, 2):
                pname, ptid = w[j], w[j + 1]
                if ptid == 0 and pname == 0:
                    variadic = True
                    continue
                params.append(TypeParameter(self._thunk(ptid), btf.string(pname) or None))
            return prog.function_type(self.type(size), params, variadic)
        if kind == KIND_FLOAT:
            return prog.float_type(name, size)
        if kind == KIND_VAR:
            return self.type(size)
        raise LookupError(f"BTF type {tid} ({KIND_NAMES.get(kind)}) is not a type")

    def _thunk(self, tid: int) -> Callable[[], Type]:
        return lambda: self.type(tid)

    def _member(self, name: str, tid: int, bit_offset: int, bits: int) -> TypeMember:
        if bits:
            prog = self.prog
            return TypeMember(
                lambda: Object(prog, self.type(tid), bit_field_size=bits),
                name or None, bit_offset)
        return TypeMember(self._thunk(tid), name or None, bit_offset)

    def find_type(self, prog: Program, kinds, name: str, filename: Optional[str]) -> Optional[Type]:
        """drgn type finder: ``(prog, kinds, name, filename) -> Type or None``."""
        btf = self.btf
        fallback = None
        for tid in btf.ids_by_name(name):
            kind = btf.kind(tid)
            if kind == KIND_FWD:
                if fallback is None:
                    fallback = tid
                continue
            t = self.type(tid)
            if t.kind in kinds:
                return t
        if fallback is not None:
            t = self.type(fallback)
            if t.kind in kinds:
                return t
        return None

    # ------------------------------------------------------------ objects

    def find_object(self, prog: Program, name: str, flags: FindObjectFlags,
                    filename: Optional[str]) -> Optional[Object]:
        """drgn object finder: enumerators, the globals of :data:`GLOBALS`, per-cpu
        variables (BTF VAR) and functions (BTF FUNC) at their kallsyms addresses."""
        if flags & FindObjectFlags.CONSTANT:
            found = self.btf.enumerator(name)
            if found is not None:
                return Object(prog, self.type(found[0]), found[1])
        if flags & FindObjectFlags.VARIABLE:
            found = self.variable(name)
            if found is not None:
                return found
        if flags & FindObjectFlags.FUNCTION:
            # drgn's vmemmap needs vmemmap_populate() to exist (SPARSEMEM_VMEMMAP).
            tid = self.btf.function(name)
            if tid is not None:
                try:
                    address = prog.symbol(name).address
                except LookupError:
                    return None
                return Object(prog, self.type(tid), address=address)
        return None

    def variable(self, name: str) -> Optional[Object]:
        """A global at its kallsyms address, typed from GLOBALS or a BTF VAR."""
        prog = self.prog
        entry = GLOBALS.get(name)
        var = None if entry else self.btf.variable(name)
        if entry is None and var is None:
            return None
        try:
            symbol = prog.symbol(name)
        except LookupError:
            return None
        if var is not None:
            return Object(prog, self.type(var), address=symbol.address)
        type_name, length_of = entry  # type: ignore[misc]
        try:
            t = prog.type(type_name)
        except LookupError:
            return None
        if length_of is not None:
            t = prog.array_type(t, self.array_length(name, length_of, t, symbol))
        return Object(prog, t, address=symbol.address)

    def array_length(self, name: str, macro: str, element: Type, symbol=None) -> int:
        """
        The length of the global array ``name`` (declared ``[macro]``).

        In order: VMCOREINFO's ``LENGTH(name)`` (written by the kernel:
        node_data on x86_64); another array of the same macro in BTF
        (HUGE_MAX_HSTATE sizes ``struct hugetlb_cgroup.hugepage[]``,
        MAX_NUMNODES is ``struct zonelist._zonerefs[]`` less one over
        ``__MAX_NR_ZONES``, else ``nodemask_t.bits[]`` times 64,
        NR_NODE_STATES is an enumerator); the kallsyms "size" divided by the element's size:
        kallsyms records no sizes, drgn takes the gap to the next symbol
        (and shows 0 for hstates on 7.2), an upper bound at best, hence
        last; the x86_64 default of :data:`_MACRO_DEFAULTS`.
        """
        if name in self._lengths:
            return self._lengths[name]
        length, how = self._vmcoreinfo_length(name), "VMCOREINFO LENGTH()"
        if length is None:
            length, how = self._btf_length(macro), "BTF"
        if length is None and symbol is not None and symbol.size and element.size:
            if symbol.size % element.size == 0:
                length, how = symbol.size // element.size, "kallsyms symbol gap"
        if length is None:
            length, how = _MACRO_DEFAULTS[macro], f"default {macro}"
        self._lengths[name] = length
        self.length_sources[name] = how
        return length

    def defaulted_lengths(self) -> Dict[str, Tuple[int, str]]:
        """The arrays whose length nothing in the kernel gave, so far: name
        -> (the default length taken, which default)."""
        return {name: (self._lengths[name], how) for name, how in self.length_sources.items()
                if how.startswith("default")}

    def _vmcoreinfo_length(self, name: str) -> Optional[int]:
        return vmcoreinfo_number(program_vmcoreinfo(self.prog), f"LENGTH({name})")

    def _btf_length(self, macro: str) -> Optional[int]:
        prog = self.prog
        try:
            if macro == "HUGE_MAX_HSTATE":  # CONFIG_CGROUP_HUGETLB=y
                member = prog.type("struct hugetlb_cgroup").member("hugepage")
                return member.type.length
            if macro == "MAX_NUMNODES":
                # struct zonelist has MAX_NUMNODES * MAX_NR_ZONES + 1
                # zonerefs (MAX_ZONES_PER_ZONELIST + 1): exact, where
                # nodemask_t rounds up to a word (riscv64's NODES_SHIFT=2:
                # 4 nodes, 64 bits).
                try:
                    refs = prog.type("struct zonelist").member("_zonerefs").type.length
                    zones = prog.constant("__MAX_NR_ZONES").value_()
                    if refs and zones and (refs - 1) % zones == 0:
                        return (refs - 1) // zones
                except (LookupError, AttributeError, TypeError):
                    pass
                bits = prog.type("nodemask_t").member("bits").type
                # Exact when MAX_NUMNODES >= BITS_PER_LONG (NODES_SHIFT >= 6).
                return bits.length * 8 * bits.type.size
            if macro == "NR_NODE_STATES":
                return prog.constant("NR_NODE_STATES").value_()
        except (LookupError, AttributeError, TypeError):
            return None
        return None


_ENUM_COMPATIBLE = {
    (1, False): "unsigned char", (1, True): "signed char",
    (2, False): "unsigned short", (2, True): "short",
    (4, False): "unsigned int", (4, True): "int",
    (8, False): "unsigned long", (8, True): "long",
}


# ---------------------------------------------------------------- loading

def read_btf_from_memory(prog: Program) -> bytes:
    """
    The kernel's BTF from its memory: ``__start_BTF`` to ``__stop_BTF``
    (kallsyms symbols must be loaded).

    :raises VmemspectError: without the symbols or the memory.
    """
    try:
        start = prog.symbol("__start_BTF").address
        stop = prog.symbol("__stop_BTF").address
    except LookupError:
        raise VmemspectError(
            "no debug info found for the kernel, and no BTF in it (no __start_BTF symbol: "
            "CONFIG_DEBUG_INFO_BTF=n?)",
            "pass its DWARF vmlinux with -s/--vmlinux (Debian: linux-image-RELEASE-dbg)")
    if not 0 < stop - start < 1 << 30:
        raise VmemspectError(f"implausible BTF bounds {start:#x}..{stop:#x}",
                             "pass the kernel's DWARF vmlinux with -s/--vmlinux")
    try:
        return prog.read(start, stop - start)
    except drgn.FaultError as e:
        raise VmemspectError(f"the kernel's BTF is not in the dump ({e})",
                             "pass the kernel's DWARF vmlinux with -s/--vmlinux")


def read_btf_from_sysfs(path: str = "/sys/kernel/btf/vmlinux") -> bytes:
    """The running kernel's BTF (``CONFIG_DEBUG_INFO_BTF=y``)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise VmemspectError(f"cannot read the kernel's BTF at {path} ({e.strerror})",
                             "pass the kernel's DWARF vmlinux with -s/--vmlinux")


def read_btf_from_elf(path: str) -> bytes:
    """The ``.BTF`` section of an ELF64 little-endian vmlinux."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise VmemspectError(f"{path} is not a 64-bit little-endian ELF file",
                                 "give a vmlinux")
        shoff, = struct.unpack_from("<Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ident, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQIIQQ", table, k * shentsize) for k in range(shnum)]
        f.seek(sections[shstrndx][4])
        names = f.read(sections[shstrndx][5])
        for s in sections:
            if names[s[0]:names.index(b"\0", s[0])] == b".BTF":
                f.seek(s[4])
                return f.read(s[5])
    raise VmemspectError(f"{path} has no .BTF section", "give a kernel built with BTF")


def load_btf_types(prog: Program, btf: Btf) -> BtfTypes:
    """
    Serve ``btf``'s types, enumerators and the globals of :data:`GLOBALS` to
    ``prog`` through a type finder and an object finder (after drgn's own),
    and mark the program's type source: the ``types`` key of
    :mod:`vmemspect.progcache` is ``"btf"``. Kallsyms symbols must be loaded for the globals.
    """
    types = BtfTypes(prog, btf)
    prog.register_type_finder("vmemspect-btf", types.find_type, enable_index=-1)
    prog.register_object_finder("vmemspect-btf", types.find_object, enable_index=-1)
    cache_set(prog, "types", "btf")
    cache_set(prog, "btf", types)
    return types


def load_kernel_btf(prog: Program) -> BtfTypes:
    """
    Make a program without debug info usable from the kernel's own data:
    load kallsyms (from the dump through VMCOREINFO, or ``/proc/kallsyms``
    live), read the BTF (``/sys/kernel/btf/vmlinux`` live, else kernel
    memory from ``__start_BTF`` to ``__stop_BTF``) and serve its types
    (:func:`load_btf_types`).

    :raises VmemspectError: if the kernel has no kallsyms or no BTF, or its
        BTF is malformed.
    """
    from drgn.helpers.linux.kallsyms import load_vmlinux_kallsyms

    try:
        index = load_vmlinux_kallsyms(prog)
    # Before Linux 6.0 VMCOREINFO lacks the kallsyms symbols; drgn's C
    # helper then raises whatever its reads fail with.
    except Exception as e:
        raise VmemspectError(
            f"no debug info found for the kernel, and its kallsyms cannot be read ({e})",
            "pass its DWARF vmlinux with -s/--vmlinux (Debian: linux-image-RELEASE-dbg)")
    prog.register_symbol_finder("vmemspect-kallsyms", index, enable_index=0)
    live = prog.flags & drgn.ProgramFlags.IS_LIVE and prog.flags & drgn.ProgramFlags.IS_LOCAL
    if live and os.path.exists("/sys/kernel/btf/vmlinux"):
        data, source = read_btf_from_sysfs(), "/sys/kernel/btf/vmlinux"
    else:
        data, source = read_btf_from_memory(prog), "__start_BTF..__stop_BTF"
    return load_btf_types(prog, Btf(data, source))
