#!/usr/bin/env python3
"""The HVO scan a drgn user would write with drgn 0.3.0's own helpers: the
baseline that scripts/bench/bench-scale.py compares ``vmemspect verify`` with.

usage: .venv/bin/python scripts/bench/baseline-drgn-scan.py DUMP VMLINUX [--open-only | --floor] [--json]

Opens the dump with drgn (x86_64 given explicitly, as QEMU's kdump dumps
need), loads the vmlinux, then walks every hstate's
``hugepage_freelists[nid]`` and ``hugepage_activelist`` with
``list_for_each_entry("struct folio", ..., "lru")`` and translates every
vmemmap page of every folio (8 per 2 MiB folio, 4,096 per 1 GiB folio)
with ``follow_phys(init_mm, addr)``.  Per folio it checks what such a user
would: an HVO'd folio (``HPG_vmemmap_optimized`` in ``folio->private``) has
vmemmap pages 1..N-1 on one frame, which is page 0's own frame before Linux
7.1 (pointer form: the tails alias the head's copy) and another one from 7.1
(mask form: the zone's shared ``vmemmap_tails`` frame).

``--open-only`` stops after loading the vmlinux (the fixed cost of opening
a dump, which every tool pays before its scan).

``--floor`` is the read floor of any scan that walks the hstate lists:
per list, follow ``lru.next`` reading each folio's head vmemmap page once
(one 4 KiB ``prog.read()``: on a compressed dump one page inflation), the
next link taken from those bytes, nothing else (no check, no record).  Prints a summary line, or
one JSON object with ``--json``: folios, optimized, vmemmap_pages,
follow_phys_faults, hvo_mismatch, open_s, scan_s (seconds inside this
process; the caller measures wall time and peak RSS from outside).

Fills: docs/performance.md, "Results" and "Against the read floor (issue 13)"
(its open, floor and baseline columns, run by bench-scale.py).
"""
import argparse
import json
import sys
import time

T_START = time.perf_counter()

import drgn  # noqa: E402
from drgn.helpers.linux.hugetlb import for_each_hstate  # noqa: E402
from drgn.helpers.linux.list import list_for_each_entry  # noqa: E402
from drgn.helpers.linux.mm import follow_phys  # noqa: E402

from _readfloor import walk_heads  # noqa: E402  (scripts/bench/, beside this script; plain drgn)

HPG_vmemmap_optimized = 4   # enum value on 6.12 and 7.2 (hvo-facts.md)
X86_64 = drgn.Platform(drgn.Architecture.X86_64,
                       drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)


def open_dump(dump: str, vmlinux: str) -> drgn.Program:
    prog = drgn.Program(X86_64)
    prog.set_core_dump(dump)
    try:
        prog.load_debug_info([vmlinux])
    except drgn.MissingDebugInfoError:
        pass    # modules (qemu_fw_cfg) without debug info: not needed here
    prog["init_mm"]     # fail here, not in the scan, if the vmlinux is wrong
    return prog


def scan(prog: drgn.Program) -> dict:
    mm = prog["init_mm"].address_of_()
    page_size = prog["PAGE_SIZE"].value_()
    struct_page = drgn.sizeof(prog.type("struct page"))
    nr_node_ids = prog["nr_node_ids"].value_()
    # Linux 7.1 (mask form): struct page has compound_info and struct zone
    # vmemmap_tails (pglist_data in the v4 posting); the tails map a shared frame.
    mask_form = _has_member(prog, "struct page", "compound_info") and (
        _has_member(prog, "struct zone", "vmemmap_tails")
        or _has_member(prog, "struct pglist_data", "vmemmap_tails"))
    folios = optimized = vmemmap_pages = faults = mismatch = 0
    for h in for_each_hstate(prog):
        nr_vmemmap = max(1, (1 << h.order.value_()) * struct_page // page_size)
        heads = [h.hugepage_freelists[nid].address_of_() for nid in range(nr_node_ids)]
        heads.append(h.hugepage_activelist.address_of_())
        for head in heads:
            for folio in list_for_each_entry("struct folio", head, "lru"):
                folios += 1
                addr = folio.value_()
                phys = []
                for i in range(nr_vmemmap):
                    try:
                        phys.append(follow_phys(mm, addr + i * page_size).value_())
                    except drgn.FaultError:
                        phys.append(None)
                        faults += 1
                vmemmap_pages += nr_vmemmap
                if folio.private.value_() >> HPG_vmemmap_optimized & 1:
                    optimized += 1
                    tails = set(phys[1:])
                    if nr_vmemmap > 1 and (len(tails) != 1 or None in tails
                                           or (phys[0] in tails) == mask_form):
                        mismatch += 1
    return {"form": "mask" if mask_form else "pointer", "folios": folios,
            "optimized": optimized, "vmemmap_pages": vmemmap_pages,
            "follow_phys_faults": faults, "hvo_mismatch": mismatch}


def floor(prog: drgn.Program) -> dict:
    """The read floor: each folio's head vmemmap page read once, whole."""
    nr_node_ids = prog["nr_node_ids"].value_()
    heads = []
    for h in for_each_hstate(prog):
        heads += [h.hugepage_freelists[nid].address_ for nid in range(nr_node_ids)]
        heads.append(h.hugepage_activelist.address_)
    return {"folios": walk_heads(prog, heads, prog["PAGE_SIZE"].value_())}


def _has_member(prog: drgn.Program, type_name: str, member: str) -> bool:
    try:
        return prog.type(type_name).has_member(member)
    except LookupError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("vmlinux")
    ap.add_argument("--open-only", action="store_true", help="open the dump and load the vmlinux only")
    ap.add_argument("--floor", action="store_true",
                    help="the read floor: each folio's head vmemmap page read once, nothing else")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    a = ap.parse_args()
    t0 = time.perf_counter()
    prog = open_dump(a.dump, a.vmlinux)
    t1 = time.perf_counter()
    out = {"import_s": round(t0 - T_START, 3), "open_s": round(t1 - t0, 3)}
    if not a.open_only:
        out.update(floor(prog) if a.floor else scan(prog))
        out["scan_s"] = round(time.perf_counter() - t1, 3)
        out["folios_per_s"] = round(out["folios"] / out["scan_s"], 1) if out["scan_s"] else None
    if a.json:
        print(json.dumps(out))
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
