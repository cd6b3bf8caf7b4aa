"""
JSON documents
--------------

Every command builds plain dicts once: the JSON documents (schema in
``docs/json.md``), which :mod:`vmemspect.tables` renders as text and
:func:`write_json` writes piece by piece. Nothing here reads kernel memory.
"""

import json
from typing import Any, Callable, Dict, Iterable, List, Optional

from .checks import Finding
from .diagnosis import Cause, diagnose
from .hvo import FolioVmemmap, PageDecode, SharedTail
from .mmu import page_table_format
from .optimizable import REASONS
from .report import Report, RowSink, Spool
from .savings import SCHEMES, WhatIf, WhatIfRow
from .sweep import RemappedRange

__all__ = (
    "SCHEMA",
    "aliased_rows",
    "cause_doc",
    "decode_doc",
    "folio_doc",
    "folio_rows",
    "folios_doc",
    "render_json",
    "report_doc",
    "savings_doc",
    "tails_doc",
    "verify_doc",
    "what_if_doc",
    "write_json",
)

SCHEMA = "vmemspect/1"


def _hex(v: Optional[int]) -> Optional[str]:
    return None if v is None else hex(v)


def _paging(model) -> str:
    """"4-level" (x86_64), "Sv48" (riscv64)... (the levels alone for an architecture
    vmemspect does not walk)."""
    try:
        return page_table_format(model.arch, model.pgtable_levels).name
    except ValueError:
        return f"{model.pgtable_levels}-level"


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
        "paging": _paging(m),
        "hugetlb": m.hugetlb,
        "hvo_built": m.hvo_built,
        "hvo_enabled": report.hvo_enabled,
        "hugetlb_unit": m.hugetlb_unit,
        "hvo_key": m.hvo_key,
        "order_source": m.order_source,
        "types": report.types,
        "evidence": list(m.evidence),
        "defaults": list(m.defaults),
    }


def finding_doc(f: Finding) -> Dict[str, Any]:
    return {
        "check": f.check,
        "subject": f.subject,
        "expected": f.expected,
        "found": f.found,
        "folio_pfn": f.folio_pfn,
        "frame_pfn": f.frame_pfn,
        "page_pfn": f.page_pfn,
        "consequence": f.consequence,
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


def range_doc(r: RemappedRange) -> Dict[str, Any]:
    """A remapped vmemmap range of no listed folio (vmemspect.sweep)."""
    return {
        "pfn": r.pfn,
        "kind": r.kind,
        "what": r.what,
        "vmemmap": hex(r.vmemmap),
        "vmemmap_pages": r.vmemmap_pages,
        "saved_pages": r.saved_pages,
        "frame_pfn": r.frame,
        "frame": r.frame_name,
        "own_frame": r.own_frame,
        "writable": r.writable,
        "flags": _hex(r.flags),
        "compound_info": _hex(r.info),
        "private": _hex(r.private),
        "refcount": r.refcount,
        "order": r.order,
        "hugetlb": r.hugetlb,
        "hpg_vmemmap_optimized": r.optimized,
    }


def sweep_doc(report: Report) -> Optional[Dict[str, Any]]:
    """What the whole-vmemmap sweep read and found."""
    w = report.sweep
    if w is None:
        return None
    return {
        "pte_tables": w.tables,
        "missing_tables": w.missing_tables,
        "tables_read_entry_by_entry": w.slow_tables,
        "lists_incomplete": w.lists_incomplete,
        "unlisted": [range_doc(r) for r in w.unlisted],
    }


def memmap_doc(report: Report) -> Optional[Dict[str, Any]]:
    """What the whole-memmap read (verify --memmap) read and found; None if
    it was not asked for."""
    m = report.memmap
    if m is None:
        return None
    return {
        "done": m.not_done is None,
        "not_done": m.not_done,
        "vmemmap_pages_read": m.pages_read,
        "vmemmap_pages_missing": m.pages_missing,
        "vmemmap_pages_skipped": m.pages_skipped,
        "hugetlb_typed": [{
            "pfn": t.pfn, "page": hex(t.page), "kind": t.kind, "what": t.what,
            "flags": hex(t.flags), "page_type": hex(t.page_type), "refcount": t.refcount,
            "private": hex(t.private), "optimized": t.optimized, "tail": t.tail,
        } for t in m.typed],
    }


def workers_doc(report: Report) -> Optional[Dict[str, Any]]:
    """What --jobs workers did (None: one process was asked for)."""
    w = report.workers
    if w is None or (w.requested <= 1):
        return None
    # (Their CPU seconds stay out: the same dump must give the same JSON.)
    return {"requested": w.requested, "started": w.started, "failed": w.failed,
            "why_none": w.why_none}


def _summary(report: Report) -> Dict[str, Any]:
    unknown = report.unknown
    unlisted = report.sweep.unlisted if report.sweep is not None else []
    return {
        "ok": not report.findings,
        "findings": len(report.findings),
        "unknown": len(unknown),
        "unknown_lists": len(report.cut_lists),
        "unknown_frames": len(report.unknown_frames),
        "transient": len(report.transient),
        "checked_folios": report.scanned - len(unknown),
        "unlisted_ranges": len(unlisted),
        "isolated_folios": sum(1 for r in unlisted if r.kind == "isolated"),
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


def aliased_rows() -> RowSink:
    """Where a scan writes the pointer form's aliased frames (``tails``), a
    row per remapped folio, kept on disk (:class:`~vmemspect.report.Spool`)."""
    def like(row: Dict[str, Any], model, page: int, head_pfn: int, e0: int) -> Dict[str, Any]:
        return dict(row, folio_pfn=model.page_pfn(page), frame_pfn=head_pfn)
    return RowSink(Spool(), lambda fv, _: aliased_doc(fv), lambda fv: fv.remapped, like)


def folio_rows(select: Optional[Callable[[FolioVmemmap], bool]] = None) -> RowSink:
    """Where a scan writes ``folios``' rows (:func:`folio_doc`, with each
    finding's frame beside its check until :func:`folios_doc` keeps those
    the report confirmed), kept on disk."""
    def make(fv: FolioVmemmap, mine: List[Finding]) -> Dict[str, Any]:
        d = folio_doc(fv, mine)
        d["violations"] = [[x.check, x.frame_pfn] for x in mine]
        return d

    def like(row: Dict[str, Any], model, page: int, head_pfn: int, e0: int) -> Dict[str, Any]:
        # A folio of the same key as the clean one of ``row``: all but its
        # addresses and its own frames are the same (checks.folio_key).
        d = dict(row, pfn=model.page_pfn(page), page=hex(page), vmemmap=hex(page))
        d["head_frame"] = dict(row["head_frame"], pfn=head_pfn, entry=hex(e0))
        if model.form == "pointer":  # the tails alias the folio's own frame
            d["tail_frames"] = [dict(t, pfn=head_pfn) for t in row["tail_frames"]]
        return d
    return RowSink(Spool(), make, select, like, _row_template(like))


#: Stand-ins for what differs between folios of one key, in a row's JSON.
_PFN, _PAGE, _HEAD_PFN, _ENTRY = 987654321987, "\x01page\x01", 987654321989, "\x01entry\x01"


def _row_template(like: Callable[..., Dict[str, Any]]) -> Callable[..., Callable[..., str]]:
    """``template(row, model)``: a function of ``(page, head pfn, head PTE)``
    giving the JSON line ``like(row, model, ...)`` would encode to, by
    filling the stand-ins of one encoding: about a microsecond a folio
    where encoding costs five."""
    class _Model:
        def __init__(self, model):
            self.form = model.form
            self.model = model

        def page_pfn(self, page):
            return _PFN

    def template(row: Dict[str, Any], model) -> Optional[Callable[[int, int, int], str]]:
        d = like(row, _Model(model), 0, _HEAD_PFN, 0)
        d["page"] = d["vmemmap"] = _PAGE
        d["head_frame"]["entry"] = _ENTRY
        text = json.dumps(d)
        parts, keys = [], []
        marks = {json.dumps(_PAGE): "page", json.dumps(_ENTRY): "entry", str(_PFN): "pfn",
                 str(_HEAD_PFN): "head"}
        pos = 0
        while True:
            hits = [(text.find(m, pos), m) for m in marks if text.find(m, pos) >= 0]
            if not hits:
                break
            at, m = min(hits)
            parts.append(text[pos:at])
            keys.append(marks[m])
            pos = at + len(m)
        parts.append(text[pos:])
        page_pfn = model.page_pfn

        def fill(page: int, head_pfn: int, e0: int) -> str:
            values = {"page": f'"{page:#x}"', "entry": f'"{e0:#x}"', "pfn": str(page_pfn(page)),
                      "head": str(head_pfn)}
            out = [parts[0]]
            for k, p in zip(keys, parts[1:]):
                out.append(values[k])
                out.append(p)
            return "".join(out)
        return fill
    return template


def _finish_folio_rows(report: Report) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """A row of :func:`folio_rows` as :func:`folio_doc` makes it from the
    report's findings (on a live kernel: those every re-read confirmed)."""
    keys = {(f.check, f.folio_pfn, f.frame_pfn) for f in report.findings}

    def finish(row: Dict[str, Any]) -> Dict[str, Any]:
        mine = [c for c, frame in row["violations"] if (c, row["pfn"], frame) in keys]
        row["verdict"] = "unknown" if row["unknown"] else ("ok" if not mine else "violated")
        row["violations"] = mine
        return row
    return finish


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
                "not_optimizable": g.not_optimizable,
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
            "remapped_folios": s.remapped_folios,
            "flagged_folios": s.flagged_folios,
            "flagged_pages": s.flagged_pages,
            "kernel_optimized_folios": s.kernel_optimized_folios,
            "kernel_freeable_kib": {str(k): v for k, v in sorted(s.kernel_freeable_kib.items())},
            "kernel_source": s.kernel_source,
            "kernel_agrees": s.kernel_agrees,
            "unlisted_pages": s.unlisted_pages,
            "unlisted_ranges": s.unlisted_ranges,
            "unlisted_flagged": s.unlisted_flagged,
            "machine_saved_pages": s.machine_saved_pages,
        },
        "vmemmap_sweep": sweep_doc(report),
        "workers": workers_doc(report),
        "tails": tails_doc(report)["tails"],
        "what_if": what_if_doc(report.what_if),
        "verify": _summary(report),
    }


def folios_doc(report: Report, folios: Optional[List[FolioVmemmap]] = None) -> Dict[str, Any]:
    """The ``folios`` document: of ``folios``, or of the rows the scan wrote
    (:func:`folio_rows`), streamed from disk."""
    if folios is None and report.rows is not None:
        report.rows.finish = _finish_folio_rows(report)
        # A row without violations is final as written (make() and finish
        # agree on it): the common case is written without decoding.
        report.rows.final_suffix = ', "violations": []}'
        rows: Iterable[Dict[str, Any]] = report.rows
    else:
        rows = [folio_doc(fv, report.findings) for fv in folios or []]
    return {
        "schema": SCHEMA,
        "command": "folios",
        "folios": rows,
    }


def tails_doc(report: Report) -> Dict[str, Any]:
    if report.model.form == "mask":
        return {"schema": SCHEMA, "command": "tails", "form": "mask",
                "tails": [tail_doc(t) for t in report.tails]}
    return {
        "schema": SCHEMA,
        "command": "tails",
        "form": "pointer",
        "tails": report.rows if report.rows is not None
        else [aliased_doc(fv) for fv in report.folios if fv.remapped],
    }


def cause_doc(c: Cause) -> Dict[str, Any]:
    """A root cause (vmemspect.diagnosis.Cause); findings as indices into
    the document's ``findings``."""
    return {
        "cause": c.cause,
        "check": c.check,
        "title": c.title,
        "findings": list(c.findings),
        "folios": list(c.folios),
        "consequence": c.consequence,
        "implied": [
            {"check": i.check, "findings": list(i.findings), "folios": list(i.folios),
             "consequence": i.consequence}
            for i in c.implied
        ],
        "blocks": [
            {
                "hstate": b.hstate,
                "order": b.order,
                "start_pfn": b.start_pfn,
                "end_pfn": b.end_pfn,
                "folios": len(b.folios),
                "capacity": b.capacity,
                "first": None if b.first is None else {
                    "pfn": b.first.pfn,
                    "head": b.first.head,
                    "order": b.first.order,
                    "hstate": b.first.hstate,
                    "list": b.first.list_name,
                    "optimized": b.first.optimized,
                    "remapped": b.first.remapped,
                    "checks": list(b.first.checks),
                    "unreadable": b.first.unreadable,
                    "clean": b.first.clean,
                },
                "all_but_first": b.all_but_first,
            }
            for b in c.blocks
        ],
        "provenance": c.provenance,
        "known_bug": c.known_bug,
    }


def verify_doc(report: Report) -> Dict[str, Any]:
    diagnosis = report.diagnosis
    if diagnosis is None:  # a report not made by build_report: no reads
        diagnosis = diagnose(report.findings, [(h.name, h.order) for h in report.hstates])
    return {
        "schema": SCHEMA,
        "command": "verify",
        **_summary(report),
        "findings": [finding_doc(f) for f in report.findings],
        "root_causes": len(diagnosis),
        "diagnosis": [cause_doc(c) for c in diagnosis],
        "unknown_folios": [
            {"pfn": fv.folio.pfn, "hstate": fv.folio.hstate, "reason": fv.unknown}
            for fv in report.unknown
        ],
        "unknown_lists": [{"hstate": h, "reason": r} for h, r in report.cut_lists],
        "unknown_frames": [{"pfn": pfn, "what": what, "reason": why}
                           for pfn, what, why in report.unknown_frames],
        "transient": [finding_doc(f) for f in report.transient],
        "vmemmap_sweep": sweep_doc(report),
        "memmap": memmap_doc(report),
        "workers": workers_doc(report),
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
            "entry": hex(d.leaf.entry), "bits": d.leaf_bits,
        },
    }


def render_json(doc: Dict[str, Any]) -> str:
    """:func:`write_json` into a string, without the last newline."""
    out: List[str] = []
    write_json(doc, out.append)
    return "".join(out)[:-1]


_SPOOL_MARK = "\x00vmemspect-spool-%d\x00"


def _mark_spools(o: Any, spools: List[Any]) -> Any:
    """``o`` with each Spool, and each list of objects, replaced by a marker
    string (its index in ``spools``): written one object a line."""
    if isinstance(o, Spool) or (isinstance(o, list) and o
                                and all(isinstance(x, dict) for x in o)):
        spools.append(o)
        return _SPOOL_MARK % (len(spools) - 1)
    if isinstance(o, dict):
        return {k: _mark_spools(v, spools) for k, v in o.items()}
    if isinstance(o, list):
        return [_mark_spools(v, spools) for v in o]
    return o


def write_json(doc: Dict[str, Any], write: Callable[[str], Any]) -> None:
    """
    The document as JSON indented by two, piece by piece, then a newline;
    a list of objects (folios, findings, tails, groups) is written one
    object a line in compact form: C-speed (Python's indenting encoder
    costs about 100 µs a folio's row) and one record per line for grep. A
    :class:`~vmemspect.report.Spool` in ``doc`` (a row per folio) is read
    from disk as it is written, never held.
    """
    spools: List[Any] = []
    marked = _mark_spools(doc, spools)
    encoded = {json.dumps(_SPOOL_MARK % i): i for i in range(len(spools))}
    line_start = ""  # the text of the current line so far, for its indent
    dumps = json.JSONEncoder(check_circular=False).encode
    for chunk in json.JSONEncoder(indent=2).iterencode(marked):
        if spools and "vmemspect-spool-" in chunk:
            for mark, i in encoded.items():
                if mark in chunk:
                    before, after = chunk.split(mark, 1)
                    write(before)
                    line = (line_start + before).rsplit("\n", 1)[-1]
                    pad = " " * (len(line) - len(line.lstrip(" ")))
                    first = True
                    rows = spools[i]
                    texts = rows.texts() if isinstance(rows, Spool) else map(dumps, rows)
                    for text in texts:
                        write(("[\n" if first else ",\n") + pad + "  " + text)
                        first = False
                    write("[]" if first else "\n" + pad + "]")
                    write(after)
                    line_start = after
                    break
            continue
        write(chunk)
        nl = chunk.rfind("\n")
        line_start = chunk[nl + 1:] if nl >= 0 else line_start + chunk
    write("\n")


def _what_if_row_doc(r: WhatIfRow) -> Dict[str, Any]:
    ps = r.page_size
    return {
        "hstate": r.hstate,
        "order": r.order,
        "vmemmap_pages_per_folio": r.vmemmap_pages_per_folio,
        "folios": r.folios,
        "optimized": r.optimized,
        "not_optimizable": r.not_optimizable,
        "not_optimizable_bytes": r.not_optimizable_pages * ps,
        "unknown": r.unknown,
        "folio_bytes": r.folio_bytes,
        "shared_frames": r.shared_frames,
        "pages": dict(r.pages),
        "bytes": {k: v * ps for k, v in r.pages.items()},
        "saved_bytes": {k: r.saved_pages(k) * ps for k in r.pages if k != "none"},
        "per_tib_beyond_two_page": {k: r.per_tib(k) for k in ("pointer", "mask")},
    }


def what_if_doc(w: Optional[WhatIf]) -> Optional[Dict[str, Any]]:
    """The what-if figures (vmemspect.savings) as JSON, None without a scan."""
    if w is None:
        return None
    t = w.total
    return {
        "scheme": w.scheme,
        "page_size": w.page_size,
        "schemes": list(SCHEMES),
        "hstates": [_what_if_row_doc(r) for r in w.rows],
        "total": _what_if_row_doc(t),
        # Every optimizable folio optimized and the vmemmap exactly the
        # kernel's scheme: measured equals the scheme's figure.
        "measured_is_scheme": None if w.scheme is None
        else t.pages["measured"] == t.pages[w.scheme],
        "reasons": [{"reason": k, "folios": n, "optimizable": REASONS[k][0],
                     "means": REASONS[k][1]} for k, n in sorted(w.reasons.items())],
    }


def savings_doc(report: Report) -> Dict[str, Any]:
    """The ``savings`` command: the report's savings and what-if figures."""
    full = report_doc(report)
    return {"schema": SCHEMA, "command": "savings", "kernel": full["kernel"],
            "savings": full["savings"], "what_if": full["what_if"]}
