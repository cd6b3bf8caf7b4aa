"""
Text tables
-----------

The text of every command, rendered through tabulate from the JSON
documents of :mod:`vmemspect.documents` (so text and JSON cannot say
different things). Nothing here reads kernel memory.
"""

import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

from tabulate import tabulate

__all__ = (
    "render_decode",
    "render_folios",
    "render_report",
    "render_savings",
    "render_tails",
    "render_verify",
    "render_what_if",
)

#: Table styles rendered a row at a time (the others need every row at once).
_STREAMED_STYLES = ("simple", "plain")


def _stream_table(rows: Callable[[], Iterable[List[Any]]], headers: List[str],
                  fmt: str) -> Iterator[str]:
    """The lines of ``_table(list(rows()), headers, fmt)`` for the streamed
    styles, reading ``rows()`` once: the cells go to a temporary file
    while the widths are found, and are read back for the lines, so that
    memory does not grow with the rows; other styles go through tabulate
    with every row."""
    if fmt not in _STREAMED_STYLES:
        yield _table([list(r) for r in rows()], headers, fmt)
        return
    # tabulate: a column is as wide as its widest cell and its header plus
    # two; cells left-aligned (no number parsing), two spaces apart, each
    # line right-stripped.
    widths = [len(h) + 2 for h in headers]
    n = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as cells:
        for row in rows():
            n += 1
            texts = [str(c).replace("\n", " ") for c in row]
            widths = list(map(max, widths, map(len, texts)))
            cells.write("\x1f".join(texts) + "\n")
        if not n:
            yield "(none)"
            return
        yield "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
        if fmt == "simple":
            yield "  ".join("-" * w for w in widths).rstrip()
        cells.seek(0)
        for line in cells:
            yield "  ".join(map(str.ljust, line[:-1].split("\x1f"), widths)).rstrip()


def _table(rows: List[List[Any]], headers: List[str], fmt: str) -> str:
    if not rows:
        return "(none)"
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def _yes(v: Optional[bool]) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def render_report(doc: Dict[str, Any], fmt: str) -> str:
    k = doc["kernel"]
    lines = [
        f"kernel        {k['release']} ({k['arch']}, {k['paging']} paging; "
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
    lines.append(f"saved         {s['saved_pages']} vmemmap pages ({s['saved_bytes'] // 1024} KiB)"
                 + (f", less {s['shared_frame_pages']} shared tail frame(s)"
                    if k["form"] == "mask" else ""))
    if s.get("unlisted_ranges"):
        lines.append(f"              + {s['unlisted_pages']} vmemmap pages in "
                     f"{s['unlisted_ranges']} remapped range(s) on no hstate list "
                     f"(whole vmemmap: {s['machine_saved_pages']} pages)")
    lines.extend(_kernel_says(s, k["page_size"]))
    lines.append("")
    lines.append(render_tails({"form": k["form"], "tails": doc["tails"]}, fmt, brief=True))
    if doc.get("what_if"):
        lines.append("")
        lines.append(render_what_if(doc["what_if"], fmt))
    v = doc["verify"]
    lines.append("")
    lines.append(
        f"verify        {'OK' if v['ok'] else 'VIOLATED'}: {v['findings']} finding(s), "
        f"{v['checked_folios']} folios checked, {v['unknown']} unknown"
        + ("" if v["ok"] else " (run 'verify' for the list)")
    )
    return "\n".join(lines)


def _agreement(agrees: Optional[bool]) -> str:
    return "" if agrees is None else ("; agrees" if agrees else "; DIFFERS from vmemspect's count")


def _kernel_says(s: Dict[str, Any], page_size: int) -> List[str]:
    """The kernel's own figures for the savings, and which ones they are:
    the memmap counters (6.10+), else hugetlb_optimize_vmemmap_key's count of
    optimized folios (5.18-7.0) and the boot lines' KiB per folio."""
    out = []
    if s["kernel_saved_pages"] is not None:
        out.append(f"kernel says   {s['kernel_saved_pages']} pages "
                   f"({s['kernel_saved_pages'] * page_size // 1024} KiB): "
                   f"{s['memmap_pages_without_hvo']} memmap pages without HVO - "
                   f"{s['kernel_memmap_pages']} in nr_memmap_boot_pages + nr_memmap_pages"
                   + _agreement(s["kernel_agrees"]))
    if s["kernel_optimized_folios"] is not None:
        unlisted = s.get("unlisted_ranges", 0)
        agrees = s["kernel_optimized_folios"] == s["remapped_folios"] + unlisted
        out.append(f"kernel says   {s['kernel_optimized_folios']} optimized folios "
                   f"(hugetlb_optimize_vmemmap_key); vmemspect finds {s['remapped_folios']} "
                   f"remapped, {s['flagged_folios']} flagged"
                   + (f", and {unlisted} remapped range(s) on no list" if unlisted else "")
                   + _agreement(agrees))
    for size, kib in s["kernel_freeable_kib"].items():
        out.append(f"kernel says   {kib} KiB vmemmap freed per {_size(int(size))} folio "
                   "(its boot line)")
    if not out:
        out.append("kernel says   nothing: this kernel keeps no count of what HVO saved")
    return out


def _size(kib: int) -> str:
    for unit, n in (("GiB", 1 << 20), ("MiB", 1 << 10)):
        if kib >= n and kib % n == 0:
            return f"{kib // n} {unit}"
    return f"{kib} KiB"


def _folio_cells(folios: Iterable[Dict[str, Any]]) -> Iterator[List[Any]]:
    for f in folios:
        head = f["head_frame"]
        tails = "; ".join(
            f"{t['pfn']:#x} ×{t['pages']} {'RW' if t['writable'] else 'RO'} {','.join(t['levels'])}"
            if t["pfn"] is not None else f"unmapped ×{t['pages']}"
            for t in f["tail_frames"][:3]
        ) + (" ..." if len(f["tail_frames"]) > 3 else "")
        yield [
            hex(f["pfn"]), f["page"], f["hstate"], f["nid"], f["zone"], f["state"],
            "yes" if f["optimized"] else "no",
            "?" if head is None else
            f"{head['pfn']:#x} {'RW' if head['writable'] else 'RO'} {head['level']}",
            tails,
            f["verdict"] if not f["violations"] else "violated: " + ",".join(f["violations"]),
        ]


def render_folios(doc: Dict[str, Any], fmt: str) -> Iterator[str]:
    """The ``folios`` table, a line at a time (rows streamed from disk in
    the simple and plain styles)."""
    return _stream_table(lambda: _folio_cells(doc["folios"]),
                         ["pfn", "struct page", "hstate", "node", "zone", "state", "HVO",
                          "head frame", "tail frames", "verdict"], fmt)


def render_tails(doc: Dict[str, Any], fmt: str, brief: bool = False) -> Union[str, Iterator[str]]:
    """The shared tail frames (mask form), or the pointer form's aliased
    frames: a title with ``brief``, else the table a line at a time."""
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
    return _aliased_lines(title, tails, fmt)


def _aliased_lines(title: str, tails: Iterable[Dict[str, Any]], fmt: str) -> Iterator[str]:
    """The pointer form's table of aliased frames, a line at a time."""
    yield title
    yield from _stream_table(
        lambda: ([hex(t["folio_pfn"]), t["hstate"], t["nid"], t["zone"],
                  "?" if t["frame_pfn"] is None else hex(t["frame_pfn"]), t["aliases"],
                  t["fake_heads"]] for t in tails),
        ["folio pfn", "hstate", "node", "zone", "frame pfn", "aliases", "fake heads"], fmt)


#: Findings shown per root cause in the grouped text output (``--all``: every one).
EXAMPLES_PER_CHECK = 3


def _finding_line(f: Dict[str, Any]) -> str:
    return f"{f['check']}: {f['subject']}: expected {f['expected']}; found {f['found']}"


def _count(n: int, folios: List[int], of: str = "") -> str:
    return f"{n} finding(s)" + (f" on {of}{len(folios)} folio(s)" if folios else "")


def _grouped_findings(doc: Dict[str, Any]) -> List[str]:
    """Findings grouped by root cause (vmemspect.diagnosis): a line for the
    cause with its counts, the first few in full, the folios of the others,
    what the kernel will do, where the folios come from, and the findings
    the cause implies folded under it with their counts."""
    findings = doc["findings"]
    lines = []
    for c in doc["diagnosis"]:
        fs = [findings[i] for i in c["findings"]]
        title = f"{c['title']}: " if c["title"] else ""
        lines.append(f"{c['check']}: {title}{_count(len(fs), c['folios'])}")
        shown = fs[:EXAMPLES_PER_CHECK]
        for f in shown:
            lines.append(f"  {f['subject']}: expected {f['expected']}; found {f['found']}")
        if len(fs) > len(shown):
            seen = {f["folio_pfn"] for f in shown}
            more, noun = [p for p in c["folios"] if p not in seen], "folios"
            if not more:  # struct pages that are no folio (stale-hugetlb-type)
                more, noun = [f["page_pfn"] for f in fs[len(shown):]
                              if f.get("page_pfn") is not None], "pfns"
            lines.append(f"  ... {len(fs) - len(shown)} more"
                         + (f" ({noun} {', '.join(hex(p) for p in more[:8])}"
                            + (", ..." if len(more) > 8 else "") + ")" if more else "")
                         + "; --all lists every one")
        if c["provenance"]:
            lines.append(f"  where: {c['provenance']}")
        if c.get("known_bug"):
            lines.append(f"  known: {c['known_bug']}")
        if c["consequence"]:
            lines.append(f"  then: {c['consequence']}")
        if c["implied"]:
            lines.append("  implies (follows from it, not a problem of its own):")
        for i in c["implied"]:
            same = set(i["folios"]) <= set(c["folios"]) and i["folios"]
            lines.append(f"    {i['check']}: "
                         + _count(len(i["findings"]), i["folios"], "the same " if same else ""))
            f = findings[i["findings"][0]]
            lines.append(f"      {'e.g. ' if len(i['findings']) > 1 else ''}{f['subject']}: "
                         f"expected {f['expected']}; found {f['found']}")
            if i["consequence"]:
                lines.append(f"      then: {i['consequence']}")
    return lines


def render_verify(doc: Dict[str, Any], fmt: str, show_all: bool = False) -> str:
    """The verdict: findings grouped by root cause with counts (``show_all``:
    one line per finding), unknowns, transient findings, a summary line."""
    if show_all:
        lines = [_finding_line(f) + (f" (then: {f['consequence']})" if f.get("consequence")
                                     else "") for f in doc["findings"]]
    else:
        lines = _grouped_findings(doc)
    for u in doc["unknown_folios"]:
        lines.append(f"unknown: folio pfn {u['pfn']:#x} ({u['hstate']}): {u['reason']}")
    for u in doc["unknown_lists"]:
        lines.append(f"unknown: {u['reason']}; the rest of that list was not checked")
    for u in doc["unknown_frames"]:
        lines.append(f"unknown: frame pfn {u['pfn']:#x}, {u['what']}: {u['reason']}; "
                     "its struct pages were not checked")
    for f in doc["transient"]:
        lines.append(f"transient (changed while read, not a violation): {_finding_line(f)}")
    sweep = doc.get("vmemmap_sweep") or {}
    for r in sweep.get("unlisted", []):
        if r["kind"] == "isolated":
            lines.append(f"isolated (off the lists for migration, not a violation): pfn "
                         f"{r['pfn']:#x}: {r['what']}")
    for r in sweep.get("unlisted", []):
        if r["kind"] == "unknown":
            lines.append(f"unknown: a remapped vmemmap range at pfn {r['pfn']:#x}: {r['what']}")
    if sweep.get("lists_incomplete") and any(r["kind"] == "off-lists"
                                             for r in sweep.get("unlisted", [])):
        n = sum(1 for r in sweep["unlisted"] if r["kind"] == "off-lists")
        lines.append(f"unknown: {n} remapped hugetlb folio(s) on no list walked; the lists "
                     "were not walked whole, so they may lie past the cut or the break")
    lines.extend(_memmap_lines(doc.get("memmap")))
    folios = {f["folio_pfn"] for f in doc["findings"] if f["folio_pfn"] is not None}
    causes = doc["root_causes"]
    lines.append(
        f"{'OK' if doc['ok'] else 'VIOLATED'}: {len(doc['findings'])} "
        f"finding(s)" + (f" on {len(folios)} folio(s)" if folios else "")
        + (f" from {causes} root cause(s)" if causes else "")
        + f", {doc['checked_folios']} folios checked, {doc['unknown']} unknown"
    )
    return "\n".join(lines)


def _memmap_lines(m: Optional[Dict[str, Any]]) -> List[str]:
    """What the whole-memmap read did (verify --memmap), and the typed
    struct pages that are no violation."""
    if m is None:
        return []
    if not m["done"]:
        return [f"memmap: not read: {m['not_done']}"]
    lines = []
    for t in m["hugetlb_typed"]:
        if t["kind"] in ("isolated", "freeing"):
            lines.append(f"{t['kind']} (off the lists, not a violation): pfn {t['pfn']:#x}: "
                         f"{t['what']}")
    missing = (f", {m['vmemmap_pages_missing']:,} not in the dump"
               if m["vmemmap_pages_missing"] else "")
    lines.append(f"memmap: {m['vmemmap_pages_read']:,} vmemmap pages read{missing} "
                 f"({m['vmemmap_pages_skipped']:,} of listed folios and remapped ranges "
                 f"skipped); {len(m['hugetlb_typed'])} hugetlb-typed struct page(s) outside "
                 f"the listed folios")
    return lines


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
                                      f"{fr['level']} (entry {fr['entry']}: {fr['bits']})"])
    return tabulate(rows, tablefmt=fmt, disable_numparse=True)


# ---------------------------------------------------------------- what-if savings

#: Column titles of the schemes.


SCHEME_TITLES = {"none": "no HVO", "two_page": "two pages (5.14-5.17)",
                 "pointer": "pointer (5.18-7.0)", "mask": "mask (7.1+)",
                 "measured": "measured now"}


def _kib_text(n: Optional[int]) -> str:
    return "-" if n is None else f"{n // 1024} KiB"


def _gib_text(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / (1 << 30):.2f} GiB"


def render_what_if(w: Dict[str, Any], fmt: str) -> str:
    """The what-if table: vmemmap per scheme of the folios HVO can optimize."""
    keys = list(w["schemes"]) + ["measured"]
    rows = []
    for r in w["hstates"] + ([w["total"]] if len(w["hstates"]) > 1 else []):
        rows.append([r["hstate"], r["folios"]] + [_kib_text(r["bytes"][k]) for k in keys])
    out = [f"what if       vmemmap of the {w['total']['folios']} folio(s) HVO can optimize, "
           f"by scheme (this kernel: {w['scheme'] or 'no HVO'}"
           + (" form)" if w["scheme"] else ")"),
           _table(rows, ["hstate", "folios"] + [SCHEME_TITLES[k] for k in keys], fmt)]
    t = w["total"]
    saved = ", ".join(f"{SCHEME_TITLES[k]} {_kib_text(t['saved_bytes'][k])}"
                      for k in keys if k != "none")
    out.append(f"saved vs no HVO  {saved}"
               + (f" (mask: after its {t['shared_frames']} shared frame(s))"
                  if t["shared_frames"] else ""))
    for r in w["hstates"]:
        if r["folios"] and r["order"] == 9:
            out.append(f"per TiB of {r['hstate']}: one page per folio saves "
                       f"{_gib_text(r['per_tib_beyond_two_page']['pointer'])} more than two "
                       f"(pointer; mask {_gib_text(r['per_tib_beyond_two_page']['mask'])}, "
                       "its shared frames scaled too)")
    if t["not_optimizable"]:
        out.append(f"not optimizable  {t['not_optimizable']} folio(s), "
                   f"{_kib_text(t['not_optimizable_bytes'])} of vmemmap in every scheme "
                   "(not counted above)")
    for reason in w["reasons"]:
        kind = "not optimized" if reason["optimizable"] else "never optimizable"
        out.append(f"  {reason['folios']} {kind}: {reason['means']}")
    return "\n".join(out)


def render_savings(doc: Dict[str, Any], fmt: str) -> str:
    """The ``savings`` command as text: measured, the kernel's own figure,
    and the what-if table."""
    s = doc["savings"]
    k = doc["kernel"]
    lines = [f"kernel        {k['release']} ({k['form']} form; HVO built in: "
             f"{_yes(k['hvo_built'])}, enabled now: {_yes(k['hvo_enabled'])})",
             f"saved         {s['saved_pages']} vmemmap pages ({s['saved_bytes'] // 1024} KiB)"]
    lines.extend(_kernel_says(s, k["page_size"]))
    if doc["what_if"]:
        lines.append("")
        lines.append(render_what_if(doc["what_if"], fmt))
    return "\n".join(lines)
