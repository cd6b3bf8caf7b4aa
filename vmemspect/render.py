"""
Presentation
------------

Every command builds plain dicts once (the JSON documents, schema in
``docs/json.md``) and renders them either as JSON or as tables through
tabulate. Nothing here reads kernel memory.
"""

import json
from typing import Any, Dict, Iterable, List, Optional

from tabulate import tabulate

from .checks import Finding
from .hvo import FolioVmemmap, PageDecode, SharedTail
from .report import Report

__all__ = (
    "SCHEMA",
    "decode_doc",
    "folio_doc",
    "folios_doc",
    "render_decode",
    "render_folios",
    "render_json",
    "render_report",
    "render_tails",
    "render_verify",
    "report_doc",
    "tails_doc",
    "verify_doc",
)

#: Version of the JSON documents; bumped on incompatible changes.
SCHEMA = "vmemspect/1"


def _hex(v: Optional[int]) -> Optional[str]:
    return None if v is None else hex(v)


def kernel_doc(report: Report) -> Dict[str, Any]:
    m = report.model
    return {
        "release": m.release,
        "arch": m.arch,
        "form": m.form,
        "info_member": m.info_member,
        "tails_owner": m.tails_owner,
        "tails_len": m.tails_len,
        "tail_min_order": m.tail_min_order,
        "sizeof_page": m.sizeof_page,
        "page_size": m.page_size,
        "pgtable_levels": m.pgtable_levels,
        "hugetlb": m.hugetlb,
        "hvo_built": m.hvo_built,
        "hvo_enabled": report.hvo_enabled,
        "types": report.types,
        "evidence": list(m.evidence),
    }


def finding_doc(f: Finding) -> Dict[str, Any]:
    return {
        "check": f.check,
        "subject": f.subject,
        "expected": f.expected,
        "found": f.found,
        "folio_pfn": f.folio_pfn,
        "frame_pfn": f.frame_pfn,
    }


def folio_doc(fv: FolioVmemmap, findings: Iterable[Finding] = ()) -> Dict[str, Any]:
    f = fv.folio
    mine = [x.check for x in findings if x.folio_pfn == f.pfn]
    head = fv.head
    return {
        "pfn": f.pfn,
        "page": hex(f.page),
        "hstate": f.hstate,
        "order": f.order,
        "nid": f.nid,
        "zone": f.zone_name,
        "state": f.state,
        "optimized": f.optimized,
        "remapped": fv.remapped,
        "vmemmap": hex(fv.vmemmap),
        "vmemmap_pages": fv.npages,
        "head_frame": None if head is None else {
            "pfn": head.pfn,
            "level": head.level_name,
            "writable": head.writable,
            "entry": hex(head.entry),
        },
        "tail_frames": [
            {"pfn": t.pfn, "pages": t.pages, "writable": t.writable, "levels": list(t.levels)}
            for t in fv.tails
        ],
        "distinct_frames": fv.distinct_frames,
        "fake_heads": fv.fake_heads,
        "unknown": fv.unknown,
        "verdict": "unknown" if fv.unknown else ("ok" if not mine else "violated"),
        "violations": mine,
    }


def _summary(report: Report) -> Dict[str, Any]:
    unknown = report.unknown
    return {
        "ok": not report.findings,
        "findings": len(report.findings),
        "unknown": len(unknown),
        "unknown_lists": len(report.cut_lists),
        "transient": len(report.transient),
        "checked_folios": report.scanned - len(unknown),
    }


def tail_doc(t: SharedTail) -> Dict[str, Any]:
    c = t.contents
    return {
        "nid": t.nid,
        "zone": t.zone_name,
        "zone_idx": t.zone_idx,
        "order": t.order,
        "slot": t.slot,
        "page": _hex(t.page) if t.page else None,
        "pfn": t.pfn,
        "folios": t.folios,
        "folios_expected": t.folios_expected,
        "valid_tails": None if c is None else c.good_tails,
        "invalid_tails": None if c is None else c.bad,
        "flags_nid": None if c is None else c.flags_nid,
        "flags_zone_idx": None if c is None else c.flags_zone,
    }


def aliased_doc(fv: FolioVmemmap) -> Dict[str, Any]:
    """Pointer form: a folio's own aliased frame and its fake heads."""
    return {
        "folio_pfn": fv.folio.pfn,
        "hstate": fv.folio.hstate,
        "nid": fv.folio.nid,
        "zone": fv.folio.zone_name,
        "frame_pfn": fv.head.pfn if fv.head else None,
        "aliases": sum(t.pages for t in fv.tails if fv.head and t.pfn == fv.head.pfn),
        "fake_heads": fv.fake_heads,
    }


def report_doc(report: Report) -> Dict[str, Any]:
    s = report.savings
    return {
        "schema": SCHEMA,
        "command": "report",
        "kernel": kernel_doc(report),
        "hstates": [
            {
                "name": h.name,
                "order": h.order,
                "nr_huge_pages": h.nr_huge_pages,
                "free_huge_pages": h.free_huge_pages,
                "surplus_huge_pages": h.surplus_huge_pages,
                "per_node": {
                    str(nid): {"nr": nr, "free": free, "surplus": sur}
                    for nid, (nr, free, sur) in sorted(h.per_node.items())
                },
            }
            for h in report.hstates
        ],
        "groups": [
            {
                "hstate": g.hstate,
                "order": g.order,
                "nid": g.nid,
                "zone": g.zone,
                "total": g.total,
                "free": g.free,
                "in_use": g.in_use,
                "optimized": g.optimized,
                "not_optimized": g.not_optimized,
                "unknown": g.unknown,
                "saved_pages": g.saved_pages,
                "saved_bytes": g.saved_pages * s.page_size,
                "possible_pages": g.possible_pages,
                "possible_bytes": g.possible_pages * s.page_size,
            }
            for g in report.groups()
        ],
        "savings": {
            "saved_pages": s.saved_pages,
            "saved_bytes": s.saved_pages * s.page_size,
            "shared_frame_pages": s.shared_frame_pages,
            "possible_pages": s.possible_pages,
            "kernel_memmap_pages": s.kernel_memmap_pages,
            "memmap_pages_without_hvo": s.memmap_pages_without_hvo,
            "kernel_saved_pages": s.kernel_saved_pages,
        },
        "tails": tails_doc(report)["tails"],
        "verify": _summary(report),
    }


def folios_doc(report: Report, folios: List[FolioVmemmap]) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": "folios",
        "folios": [folio_doc(fv, report.findings) for fv in folios],
    }


def tails_doc(report: Report) -> Dict[str, Any]:
    if report.model.form == "mask":
        return {"schema": SCHEMA, "command": "tails", "form": "mask",
                "tails": [tail_doc(t) for t in report.tails]}
    return {
        "schema": SCHEMA,
        "command": "tails",
        "form": "pointer",
        "tails": [aliased_doc(fv) for fv in report.folios if fv.remapped],
    }


def verify_doc(report: Report) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": "verify",
        **_summary(report),
        "findings": [finding_doc(f) for f in report.findings],
        "unknown_folios": [
            {"pfn": fv.folio.pfn, "hstate": fv.folio.hstate, "reason": fv.unknown}
            for fv in report.unknown
        ],
        "unknown_lists": [{"hstate": h, "reason": r} for h, r in report.cut_lists],
        "transient": [finding_doc(f) for f in report.transient],
    }


def decode_doc(d: PageDecode) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": "decode",
        "page": hex(d.page),
        "pfn": d.pfn,
        "member": d.member,
        "raw": hex(d.info.raw),
        "form": d.info.form,
        "tail": d.info.tail,
        "valid": d.info.valid,
        "head": _hex(d.info.head),
        "head_pfn": d.head_pfn,
        "order": d.info.order,
        "head_is_head": d.head_is_head,
        "pg_head": d.pg_head,
        "fake_head": d.fake_head,
        "drgn_compound_head": _hex(d.drgn_head),
        "agrees_with_drgn": (d.info.head if d.info.tail else d.page) == d.drgn_head
        if not d.fake_head else None,
        "vmemmap_frame": None if d.leaf is None or d.leaf.pfn is None else {
            "pfn": d.leaf.pfn, "level": d.leaf.level_name, "writable": d.leaf.writable,
            "entry": hex(d.leaf.entry),
        },
    }


def render_json(doc: Dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def _table(rows: List[List[Any]], headers: List[str], fmt: str) -> str:
    if not rows:
        return "(none)"
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def _yes(v: Optional[bool]) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def render_report(doc: Dict[str, Any], fmt: str) -> str:
    k = doc["kernel"]
    lines = [
        f"kernel        {k['release']} ({k['arch']}, {k['pgtable_levels']}-level paging; "
        f"types from {'its BTF' if k['types'] == 'btf' else 'DWARF' if k['types'] else '?'})",
        f"encoding      {k['form']} form ({k['info_member']}); "
        f"sizeof(struct page) = {k['sizeof_page']}",
        "evidence      " + "; ".join(k["evidence"]),
        f"HVO           built in: {_yes(k['hvo_built'])}; enabled now "
        f"(vm.hugetlb_optimize_vmemmap): {_yes(k['hvo_enabled'])}",
    ]
    if not k["hugetlb"]:
        lines.append("hugetlb       not built in (CONFIG_HUGETLB_PAGE=n): nothing to inspect")
        return "\n".join(lines)
    lines.append("")
    rows = [
        [g["hstate"], g["nid"], g["zone"], g["total"], g["free"], g["in_use"],
         g["optimized"], g["not_optimized"], g["unknown"],
         f"{g['saved_bytes'] // 1024} KiB", f"{g['possible_bytes'] // 1024} KiB"]
        for g in doc["groups"]
    ]
    lines.append(_table(rows, ["hstate", "node", "zone", "folios", "free", "in use",
                               "optimized", "not opt.", "unknown", "vmemmap saved",
                               "if all opt."], fmt))
    s = doc["savings"]
    lines.append("")
    kernel = ("not kept by this kernel" if s["kernel_saved_pages"] is None else
              f"{s['kernel_saved_pages']} pages "
              f"({s['kernel_saved_pages'] * k['page_size'] // 1024} KiB): "
              f"{s['memmap_pages_without_hvo']} memmap pages without HVO - "
              f"{s['kernel_memmap_pages']} in nr_memmap_boot_pages + nr_memmap_pages")
    lines.append(f"saved         {s['saved_pages']} vmemmap pages ({s['saved_bytes'] // 1024} KiB)"
                 + (f", less {s['shared_frame_pages']} shared tail frame(s)"
                    if k["form"] == "mask" else ""))
    lines.append(f"kernel says   {kernel}")
    lines.append("")
    lines.append(render_tails({"form": k["form"], "tails": doc["tails"]}, fmt, brief=True))
    v = doc["verify"]
    lines.append("")
    lines.append(
        f"verify        {'OK' if v['ok'] else 'VIOLATED'}: {v['findings']} finding(s), "
        f"{v['checked_folios']} folios checked, {v['unknown']} unknown"
        + ("" if v["ok"] else " (run 'verify' for the list)")
    )
    return "\n".join(lines)


def render_folios(doc: Dict[str, Any], fmt: str) -> str:
    rows = []
    for f in doc["folios"]:
        head = f["head_frame"]
        tails = "; ".join(
            f"{t['pfn']:#x}x{t['pages']} {'RW' if t['writable'] else 'RO'} {','.join(t['levels'])}"
            if t["pfn"] is not None else f"unmapped x{t['pages']}"
            for t in f["tail_frames"][:3]
        ) + (" ..." if len(f["tail_frames"]) > 3 else "")
        rows.append([
            hex(f["pfn"]), f["page"], f["hstate"], f["nid"], f["zone"], f["state"],
            "yes" if f["optimized"] else "no",
            "?" if head is None else
            f"{head['pfn']:#x} {'RW' if head['writable'] else 'RO'} {head['level']}",
            tails,
            f["verdict"] if not f["violations"] else "violated: " + ",".join(f["violations"]),
        ])
    return _table(rows, ["pfn", "struct page", "hstate", "node", "zone", "state", "HVO",
                         "head frame", "tail frames", "verdict"], fmt)


def render_tails(doc: Dict[str, Any], fmt: str, brief: bool = False) -> str:
    if doc["form"] == "mask":
        rows = [
            [t["nid"], t["zone"], t["order"], f"vmemmap_tails[{t['slot']}]",
             "empty" if t["pfn"] is None else hex(t["pfn"]), t["folios"],
             t["folios_expected"],
             "?" if t["valid_tails"] is None else f"{t['valid_tails']}/{t['valid_tails'] + t['invalid_tails']}",
             "?" if t["flags_nid"] is None else f"{t['flags_nid']}/{t['flags_zone_idx']}"]
            for t in doc["tails"]
        ]
        title = "shared tail frames (mask form)"
        return title + "\n" + _table(rows, ["node", "zone", "order", "slot", "frame pfn",
                                            "folios mapping it", "optimized folios",
                                            "valid tails", "flags node/zone"], fmt)
    tails = doc["tails"]
    title = (f"aliased frames (pointer form): {len(tails)} folios, "
             f"{sum(t['fake_heads'] for t in tails)} fake heads")
    if brief:
        return title
    rows = [[hex(t["folio_pfn"]), t["hstate"], t["nid"], t["zone"],
             "?" if t["frame_pfn"] is None else hex(t["frame_pfn"]), t["aliases"], t["fake_heads"]]
            for t in tails]
    return title + "\n" + _table(rows, ["folio pfn", "hstate", "node", "zone", "frame pfn",
                                        "aliases", "fake heads"], fmt)


def render_verify(doc: Dict[str, Any], fmt: str) -> str:
    lines = [f"{f['check']}: {f['subject']}: expected {f['expected']}; found {f['found']}"
             for f in doc["findings"]]
    for u in doc["unknown_folios"]:
        lines.append(f"unknown: folio pfn {u['pfn']:#x} ({u['hstate']}): {u['reason']}")
    for u in doc["unknown_lists"]:
        lines.append(f"unknown: {u['reason']}; the rest of that list was not checked")
    for f in doc["transient"]:
        lines.append(f"transient (changed while read, not a violation): {f['check']}: "
                     f"{f['subject']}: expected {f['expected']}; found {f['found']}")
    lines.append(
        f"{'OK' if doc['ok'] else 'VIOLATED'}: {len(doc['findings'])} "
        f"finding(s), {doc['checked_folios']} folios checked, {doc['unknown']} unknown"
    )
    return "\n".join(lines)


def render_decode(doc: Dict[str, Any], fmt: str) -> str:
    rows = [
        ["struct page", f"{doc['page']} (pfn {doc['pfn']:#x})"],
        [doc["member"] or "compound_info", doc["raw"]],
        ["form", doc["form"]],
        ["tail bit", "set" if doc["tail"] else "clear"],
    ]
    if doc["tail"]:
        rows += [
            ["decoded head", "undecodable (not GENMASK(63, n) | 1)" if not doc["valid"]
             else f"{doc['head']} (pfn {doc['head_pfn']:#x})"],
            ["order (mask)", "-" if doc["order"] is None else str(doc["order"])],
            ["head is a real head", _yes(doc["head_is_head"])],
        ]
    rows += [
        ["PG_head", "set" if doc["pg_head"] else "clear"],
        ["fake head", "yes (pointer-form HVO alias)" if doc["fake_head"] else "no"],
        ["drgn compound_head()", doc["drgn_compound_head"] or "?"],
    ]
    fr = doc["vmemmap_frame"]
    if fr:
        rows.append(["vmemmap frame", f"{fr['pfn']:#x} {'RW' if fr['writable'] else 'RO'} "
                                      f"{fr['level']} (entry {fr['entry']})"])
    return tabulate(rows, tablefmt=fmt, disable_numparse=True)
