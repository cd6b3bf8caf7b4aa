#!/usr/bin/env python3
"""Which pages of a dump vmemspect reads, and whether the dump holds them.

Runs vmemspect's commands in-process on a drgn program whose memory reads
all go through this script: physical reads directly, virtual reads through
a page-table walk of its own (from ``init_mm.pgd``, like drgn's), so every
page read is seen, the page tables that translate it included.  Each page is
then looked up in the dump: missing from a kdump-compressed file (drgn
raises FaultError: makedumpfile's dump level excluded it), or inside an ELF
file's PT_LOAD gap between p_filesz and p_memsz (read back as zeros), and,
with a reference dump of the same guest state (QEMU's, taken just before
the panic), whether its bytes equal the reference's.

    .venv/bin/python scripts/dump_reads.py DUMP VMLINUX [--reference QEMU_DUMP] [--json]

Pages are put in classes: ``page_table`` (read as a page table: by
vmemspect's walker or to translate a virtual address),
``folio_head_frame`` and ``folio_tail_frame`` (the frames vmemspect names
as a hugetlb folio's vmemmap page 0 and pages 1..N-1, the shared tail frames
included), ``other_vmemmap`` (other frames reached through a vmemmap
address) and ``kernel`` (everything else: kernel image, slab, per-cpu...).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import struct
import sys
import threading

import drgn
from drgn.helpers.linux.mm import follow_phys

from testbed import elf_filtered_ranges
from vmemspect import cli, pagetable
from vmemspect.target import open_vmcore

PAGE = 4096
_PRESENT, _PSE = 1, 1 << 7
_ADDR = 0x000FFFFFFFFFF000
#: vmemspect commands whose reads are traced (report includes the folio
#: scan and the shared tails; verify re-reads every folio).
#: With one process: --jobs workers read in forked children, which the
#: tracer does not see (they read the same pages as one process does).
COMMANDS = (["report", "--json", "--jobs", "1"], ["folios", "--json", "--jobs", "1"],
            ["tails", "--json", "--jobs", "1"], ["verify", "--json", "--jobs", "1"])


class Tracer:
    """Serves a drgn program's memory from ``back`` (another program on the
    same dump) and records every physical page read, with its class."""

    def __init__(self, back: drgn.Program, vmemmap: tuple[int, int]) -> None:
        self.back = back
        self.vmemmap = vmemmap
        self.pages: dict[int, set] = collections.defaultdict(set)
        self.missing: set[int] = set()
        self.tls = threading.local()
        vi = back["VMCOREINFO"].string_()
        self.levels = 5 if b"NUMBER(pgtable_l5_enabled)=1\n" in vi else 4
        pgd = back["init_mm"].pgd.value_()
        self.root = follow_phys(back["init_mm"].address_of_(), pgd).value_() & ~(PAGE - 1)
        self.tlb: dict[int, int] = {}
        #: pfn -> first virtual address read from it
        self.va: dict[int, int] = {}

    def _phys(self, address: int, count: int, cls: str) -> bytes:
        out = []
        a, end = address, address + count
        while a < end:
            n = min(end, (a | (PAGE - 1)) + 1) - a
            pfn = a // PAGE
            self.pages[pfn].add(cls)
            try:
                out.append(self.back.read(a, n, True))
            except drgn.FaultError:
                self.missing.add(pfn)
                raise drgn.FaultError("page not in the dump", a) from None
            a += n
        return b"".join(out)

    def _entry(self, table: int, index: int) -> int:
        return struct.unpack("<Q", self._phys(table + 8 * index, 8, "page_table"))[0]

    def translate(self, va: int) -> int:
        vpage = va & ~(PAGE - 1)
        pa = self.tlb.get(vpage)
        if pa is None:
            table = self.root
            for level in range(self.levels, 0, -1):
                shift = 12 + 9 * (level - 1)
                e = self._entry(table, (va >> shift) & 511)
                if not e & _PRESENT:
                    raise drgn.FaultError("not mapped", va)
                if level in (2, 3) and e & _PSE:
                    pa = (e & _ADDR & ~((1 << shift) - 1)) + (vpage & ((1 << shift) - 1))
                    break
                table = e & _ADDR
            else:
                pa = table
            self.tlb[vpage] = pa
        return pa + (va & (PAGE - 1))

    def read_virtual(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        cls = "vmemmap" if self.vmemmap[0] <= address < self.vmemmap[1] else "kernel"
        out = []
        a, end = address, address + count
        while a < end:
            n = min(end, (a | (PAGE - 1)) + 1) - a
            pa = self.translate(a)
            self.va.setdefault(pa // PAGE, a)
            out.append(self._phys(pa, n, cls))
            a += n
        return b"".join(out)

    def read_physical(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        return self._phys(address, count, getattr(self.tls, "cls", "kernel"))


def traced_program(dump: str, vmlinux: str) -> tuple[drgn.Program, Tracer]:
    back = open_vmcore(dump, vmlinux)
    prog = open_vmcore(dump, vmlinux)
    base = back["vmemmap_base"].value_() if _has(back, "vmemmap_base") else 0xFFFFEA0000000000
    tracer = Tracer(back, (base, base + (1 << 46)))
    prog.add_memory_segment(0, (1 << 64) - 1, tracer.read_physical, True)
    prog.add_memory_segment(0, (1 << 64) - 1, tracer.read_virtual, False)
    return prog, tracer


def _has(prog: drgn.Program, name: str) -> bool:
    try:
        prog[name]
        return True
    except KeyError:
        return False


@contextlib.contextmanager
def _tag_table_reads(tracer: Tracer):
    """vmemspect's page-table walker reads tables physically: tag those."""
    orig = pagetable.PageTableWalker.read_table

    def read_table(self, phys, *args):
        tracer.tls.cls = "page_table"
        try:
            return orig(self, phys, *args)
        finally:
            tracer.tls.cls = "kernel"

    pagetable.PageTableWalker.read_table = read_table
    try:
        yield
    finally:
        pagetable.PageTableWalker.read_table = orig


def measure(dump: str, vmlinux: str, reference: str | None = None,
            commands=COMMANDS) -> dict:
    """Run vmemspect's ``commands`` on ``dump`` with every read traced;
    return the pages read per class and those the dump lacks."""
    prog, tracer = traced_program(dump, vmlinux)
    outputs = []
    with _tag_table_reads(tracer):
        for args in commands:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
                rc = cli.run(list(args), prog=prog)
            outputs.append({"args": list(args), "rc": rc, "stdout": buf.getvalue()})
    # The frames vmemspect names: each folio's head frame and tail frames,
    # the shared tail frames (mask form).
    head, tail = set(), set()
    for o in outputs:
        try:
            doc = json.loads(o["stdout"])
        except ValueError:
            continue
        for f in doc.get("folios", []):
            if f.get("head_frame"):
                head.add(f["head_frame"]["pfn"])
            tail.update(t["pfn"] for t in f.get("tail_frames", []) if t.get("pfn") is not None)
        tail.update(t["pfn"] for t in doc.get("tails", []) if t.get("pfn") is not None)
    classes: dict[int, str] = {}
    for pfn, c in tracer.pages.items():
        classes[pfn] = ("page_table" if "page_table" in c else
                        "folio_head_frame" if pfn in head else
                        "folio_tail_frame" if pfn in tail else
                        "other_vmemmap" if "vmemmap" in c else "kernel")
    res = {"dump": str(dump), "commands": outputs,
           "pages_read": dict(collections.Counter(classes.values())),
           "missing": _by_class(tracer.missing, classes)}
    with open(dump, "rb") as f:
        is_elf = f.read(4) == b"\x7fELF"
    if is_elf:
        gaps = elf_filtered_ranges(dump)
        in_gap = {p for p in classes if any(lo <= p * PAGE < hi for lo, hi in gaps)}
        res["elf_gap_ranges"] = len(gaps)
        res["in_elf_gaps"] = _by_class(in_gap, classes)
    zero = set()
    for pfn in classes:
        if pfn in tracer.missing:
            continue
        if tracer.back.read(pfn * PAGE, PAGE, True) == bytes(PAGE):
            zero.add(pfn)
    res["all_zero"] = _by_class(zero, classes)
    res["all_zero_symbols"] = sorted({_symbol(tracer.back, tracer.va.get(p)) for p in zero})
    if reference:
        ref = open_vmcore(reference, vmlinux)
        differ, ref_missing = set(), set()
        for pfn in classes:
            try:
                r = ref.read(pfn * PAGE, PAGE, True)
            except drgn.FaultError:
                ref_missing.add(pfn)
                continue
            try:
                d = tracer.back.read(pfn * PAGE, PAGE, True)
            except drgn.FaultError:
                continue
            if d != r:
                differ.add(pfn)
        res["reference"] = str(reference)
        res["differ_from_reference"] = _by_class(differ, classes)
        res["differ_symbols"] = sorted({_symbol(tracer.back, tracer.va.get(p)) for p in differ})
        res["missing_in_reference"] = _by_class(ref_missing, classes)
    return res


def _symbol(prog: drgn.Program, va) -> str:
    if va is None:
        return "(physical read)"
    try:
        sym = prog.symbol(va)
        return sym.name
    except LookupError:
        pass
    # Node data (struct pglist_data, its zones and counters) is not in a symbol.
    try:
        from drgn.helpers.linux.mmzone import for_each_online_pgdat
        size = prog.type("struct pglist_data").size
        for pgdat in for_each_online_pgdat(prog):
            base = pgdat.value_()
            if base <= va < base + size:
                return f"pglist_data of node {pgdat.node_id.value_()} +{va - base:#x}"
    except Exception:
        pass
    return hex(va)


def _by_class(pfns, classes) -> dict:
    out: dict[str, list[int]] = collections.defaultdict(list)
    for p in sorted(pfns):
        out[classes.get(p, "kernel")].append(p)
    return dict(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("vmlinux")
    ap.add_argument("--reference", help="a dump of the same guest state to compare page contents with")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = measure(a.dump, a.vmlinux, a.reference)
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if k != "commands"}, indent=1))
        return 0
    print(f"{a.dump}: vmemspect exit codes {[o['rc'] for o in res['commands']]}")
    print(f"  pages read: {res['pages_read']}")
    print(f"  all-zero pages read belong to: {', '.join(res['all_zero_symbols']) or '-'}")
    if "differ_symbols" in res:
        print(f"  pages that differ from the reference belong to: {', '.join(res['differ_symbols']) or '-'}")
    for key in ("missing", "in_elf_gaps", "all_zero", "differ_from_reference", "missing_in_reference"):
        if key in res:
            counts = {c: len(v) for c, v in res[key].items()}
            print(f"  {key}: {counts or 'none'}"
                  + "".join(f"\n    {c}: {', '.join(hex(p) for p in v[:12])}{' ...' if len(v) > 12 else ''}"
                            for c, v in res[key].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
