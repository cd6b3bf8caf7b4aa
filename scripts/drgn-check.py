#!/usr/bin/env python3
"""Open a test-bed run's dumps with drgn and compare them with the guest's truth.

usage: .venv/bin/python scripts/drgn-check.py RUN_JSON [--json]

Checks: the kdump dump opens (drgn 0.3.0 needs the platform given
explicitly for QEMU's kdump dumps); init_uts_ns.name.release == truth uname;
per hstate nr/free_huge_pages (global and per node) == the sysfs counts; the
set of hugetlb folio pfns on the hstate lists == the kpageflags heads.  With
an ELF dump: the same reads through drgn on the ELF, and that
testbed.elf_phys_offset() finds the bytes drgn reads at a physical address.
Prints a summary; exits 1 on a mismatch.  Needs drgn (not stdlib-only).
"""
import json
import sys
import time
from pathlib import Path

import drgn
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import follow_phys, page_to_pfn

import testbed

HPG_vmemmap_optimized = 4   # enum value on 6.12 and 7.2 (hvo-facts.md)
X86_64 = drgn.Platform(drgn.Architecture.X86_64,
                       drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)


def open_dump(path, vmlinux):
    """The way that works with drgn 0.3.0 for QEMU kdump-zlib (and ELF) dumps."""
    prog = drgn.Program(X86_64)
    prog.set_core_dump(str(path))
    prog.load_debug_info([str(vmlinux)])
    return prog


def hugetlb_state(prog):
    """Per hstate (keyed by size in kB, as a string): counts and folios."""
    out = {}
    nr_node_ids = prog["nr_node_ids"].value_()
    for i in range(prog["hugetlb_max_hstate"].value_()):
        h = prog["hstates"][i]
        size_kb = str(4 << h.order.value_())
        folios = []
        heads = [h.hugepage_activelist.address_of_()] + [
            h.hugepage_freelists[n].address_of_() for n in range(nr_node_ids)]
        for k, head in enumerate(heads):
            for folio in list_for_each_entry("struct folio", head, "lru"):
                folios.append({
                    "pfn": page_to_pfn(folio.page.address_of_()).value_(),
                    "free": k > 0,
                    "optimized": bool(folio.private.value_() >> HPG_vmemmap_optimized & 1),
                })
        out[size_kb] = {
            "nr_huge_pages": h.nr_huge_pages.value_(),
            "free_huge_pages": h.free_huge_pages.value_(),
            "nodes": {str(n): {"nr_hugepages": h.nr_huge_pages_node[n].value_(),
                               "free_hugepages": h.free_huge_pages_node[n].value_()}
                      for n in range(nr_node_ids)},
            "folios": folios,
        }
    return out


def check(run):
    truth = run["truth"]
    problems, notes = [], []
    dumps = [("kdump", run["kdump"])] + ([("elf", run["elf"])] if run.get("elf") else [])
    for kind, path in dumps:
        t0 = time.monotonic()
        prog = open_dump(path, run["vmlinux"])
        t_open = time.monotonic() - t0
        rel = prog["init_uts_ns"].name.release.string_().decode()
        if rel != truth["uname"]:
            problems.append(f"{kind}: release {rel} != {truth['uname']}")
        st = hugetlb_state(prog)
        kpf = sorted(f["pfn"] for f in truth["hugetlb_folios"])
        lists = sorted(f["pfn"] for s in st.values() for f in s["folios"])
        if kpf != lists:
            problems.append(f"{kind}: hstate list pfns ({len(lists)}) != kpageflags heads ({len(kpf)})")
        for size, s in st.items():
            g = truth["hstates"].get(size, {}).get("global", {})
            if s["nr_huge_pages"] != g.get("nr_hugepages") or s["free_huge_pages"] != g.get("free_hugepages"):
                problems.append(f"{kind}: {size} kB nr/free {s['nr_huge_pages']}/{s['free_huge_pages']} "
                                f"!= truth {g.get('nr_hugepages')}/{g.get('free_hugepages')}")
            for n, c in s["nodes"].items():
                tn = truth["hstates"].get(size, {}).get("nodes", {}).get(n)
                if tn and (c["nr_hugepages"], c["free_hugepages"]) != (tn["nr_hugepages"], tn["free_hugepages"]):
                    problems.append(f"{kind}: {size} kB node {n} {c} != truth {tn}")
            nopt = sum(f["optimized"] for f in s["folios"])
            inuse = [f for f in s["folios"] if not f["free"]]
            if s["nr_huge_pages"]:
                notes.append(f"{kind}: {size} kB: {s['nr_huge_pages']} folios, {nopt} optimized; "
                             f"in use {len(inuse)} ({sum(f['optimized'] for f in inuse)} optimized)")
        held = {f["pfn"] for f in truth.get("in_use", [])}
        if held:
            on_active = {f["pfn"] for s in st.values() for f in s["folios"] if not f["free"]}
            if held != on_active:
                problems.append(f"{kind}: held pfns {sorted(held)} != active list {sorted(on_active)}")
        if kind == "elf":
            addr = prog["init_uts_ns"].name.release.address_
            physs = [follow_phys(prog["init_mm"].address_of_(), addr).value_()]
            # and the highest hugetlb folio (above the PCI hole in 4 GiB guests)
            if lists:
                physs.append(max(lists) * 4096 + 4096 - 64)
            for phys in physs:
                want = prog.read(phys, 64, True)
                with open(path, "rb") as f:
                    f.seek(testbed.elf_phys_offset(path, phys))
                    got = f.read(64)
                if got != want:
                    problems.append(f"elf: elf_phys_offset({phys:#x}) reads other bytes than drgn")
                else:
                    notes.append(f"elf: elf_phys_offset({phys:#x}) agrees with drgn")
        notes.append(f"{kind}: opened in {t_open:.2f} s, release {rel}")
        if kind == "kdump":
            kdump_state = st
    return problems, notes, kdump_state


def main():
    run = json.loads(Path(sys.argv[1]).read_text())
    problems, notes, st = check(run)
    if "--json" in sys.argv:
        print(json.dumps({"problems": problems, "notes": notes, "hstates": st}, indent=1))
    else:
        for n in notes:
            print("  " + n)
        for p in problems:
            print("  MISMATCH " + p)
        print(f"drgn-check {run['series']} {run['scenario']}: {'OK' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
