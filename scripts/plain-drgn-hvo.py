#!/usr/bin/env python3
"""HVO state of every hugetlb folio of a vmcore, with plain drgn only.

An independent cross-check of vmemspect (imports nothing from it): walks
hstates[i].hugepage_activelist and .hugepage_freelists[nid] (linked through
``lru``), reads bit HPG_vmemmap_optimized of folio->private (page->private
on 6.1: the same word) and translates each vmemmap page of the folio with
drgn's follow_phys() through init_mm.

    plain-drgn-hvo.py DUMP VMLINUX [--folios]

Prints JSON::

  release, key_count (hugetlb_optimize_vmemmap_key's count; null where the
  kernel has no such key: 7.1+), hpg_bit,
  folios: counts (by order) of all folios, flagged (bit set), remapped
  (every tail vmemmap page maps one frame), unremapped (every vmemmap page
  its own frame)
  flagged_not_remapped, remapped_not_flagged: [pfn] (the disagreements)
  optimized_ok: folios flagged and remapped
  folio_list (with --folios): [{pfn, order, list, flag, frames}]

"remapped" is the HVO layout of either encoding: the tail vmemmap pages
all map a single frame (pointer form: the head's frame, mask form: the
zone's shared tail frame).  A folio is "unremapped" when its vmemmap
pages map as many distinct frames as it has vmemmap pages.
"""
import json
import sys

import drgn
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import follow_phys, page_to_pfn

PAGE_SIZE = 4096


def open_dump(path: str, vmlinux: str) -> drgn.Program:
    # QEMU's kdump files carry no architecture that libkdumpfile reads.
    prog = drgn.Program(drgn.Platform(
        drgn.Architecture.X86_64,
        drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN))
    prog.set_core_dump(path)
    prog.load_debug_info([vmlinux])
    return prog


def hpg_bit(prog: drgn.Program) -> int:
    try:
        return prog["HPG_vmemmap_optimized"].value_()
    except KeyError:
        return 4


def key_count(prog: drgn.Program):
    """hugetlb_optimize_vmemmap_key's count (folios optimized, pointer form),
    or None where the kernel has no such key (7.1+)."""
    try:
        key = prog["hugetlb_optimize_vmemmap_key"]
    except KeyError:
        return None
    return key.key.enabled.counter.value_()


def folios(prog: drgn.Program):
    """(list name, hstate order, struct folio object) of every hugetlb folio."""
    try:
        nr_nodes = prog["nr_node_ids"].value_()
    except KeyError:    # !CONFIG_NUMA
        nr_nodes = 1
    for i in range(prog["hugetlb_max_hstate"].value_()):
        h = prog["hstates"][i]
        order = h.order.value_()
        for f in list_for_each_entry("struct folio", h.hugepage_activelist.address_of_(), "lru"):
            yield "active", order, f
        for nid in range(nr_nodes):
            head = h.hugepage_freelists[nid].address_of_()
            for f in list_for_each_entry("struct folio", head, "lru"):
                yield "free", order, f


def vmemmap_frames(prog: drgn.Program, folio: drgn.Object, order: int) -> list:
    mm = prog["init_mm"].address_of_()
    start = folio.value_()
    n = ((1 << order) * prog.type("struct page").size) // PAGE_SIZE
    return [follow_phys(mm, start + i * PAGE_SIZE).value_() // PAGE_SIZE for i in range(n)]


def scan(dump: str, vmlinux: str, keep: bool = False) -> dict:
    prog = open_dump(dump, vmlinux)
    bit = hpg_bit(prog)
    out = {"release": prog["UTS_RELEASE"].string_().decode(),
           "key_count": key_count(prog),
           "hpg_bit": bit, "folios": {}, "flagged": {}, "remapped": {}, "unremapped": {},
           "optimized_ok": 0, "flagged_not_remapped": [], "remapped_not_flagged": []}
    if keep:
        out["folio_list"] = []
    for where, order, f in folios(prog):
        pfn = page_to_pfn(drgn.cast("struct page *", f)).value_()
        flag = bool((f.private.value_() >> bit) & 1)
        frames = vmemmap_frames(prog, f, order)
        remapped = len(frames) > 1 and len(set(frames[1:])) == 1
        unremapped = len(set(frames)) == len(frames)
        o = str(order)
        for k, yes in (("folios", True), ("flagged", flag), ("remapped", remapped),
                       ("unremapped", unremapped)):
            out[k][o] = out[k].get(o, 0) + yes
        out["optimized_ok"] += flag and remapped
        if flag and not remapped:
            out["flagged_not_remapped"].append(pfn)
        if remapped and not flag:
            out["remapped_not_flagged"].append(pfn)
        if keep:
            out["folio_list"].append({"pfn": pfn, "order": order, "list": where,
                                      "flag": flag, "frames": frames if order < 18 else
                                      sorted(set(frames))[:8]})
    out["flagged_not_remapped"].sort()
    out["remapped_not_flagged"].sort()
    return out


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(json.dumps(scan(args[0], args[1], keep="--folios" in argv), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
