#!/usr/bin/env python3
"""
Fuzz vmemspect verify on a real dump: flip one bit (or, one time in four,
write a random word) in memory vmemspect reads, run verify, put it back;
many times. What is flipped, and whether a check depends on that bit:

- ``pte``: the PTE tables under the hugetlb folios' vmemmap. A check
  depends on the present bit, RW and the frame number of the PTEs that map
  a folio's vmemmap pages; not on accessed/dirty/global/NX, nor on PTEs of
  other vmemmap.
- ``head-frame``: each folio's vmemmap page 0. Checks depend on the head's
  PG_head, node and zone bits, its lru links, HPG_vmemmap_optimized in
  ``private``; the order byte of the first tail; every tail's
  ``compound_info``.
- ``shared-frame`` (mask form): every struct page's ``compound_info``,
  node and zone bits, and ``mapping``.
- ``hstate``: ``order``, the per-node counters of the online nodes, the
  lists' ``next`` (a list head's ``prev`` is not read).
- ``zone``: the ``vmemmap_tails[]`` slots in use (mask form). Zone spans
  (``zone-info``) are also read, but a flip there changes a check's input
  (which zone holds a pfn) only sometimes: counted apart, never as a miss.
- ``unlink``: not a flip but a self-consistent change of several words: a
  free folio unlinked from its free list (its neighbours' links joined
  around it) with the hstate's total, free and per-node counters lowered
  to match, and one time in two its head's PG_head cleared too (freed to
  the page allocator without its vmemmap restored). Only the page tables
  tell: verify must name that folio, as ``unlisted-folio`` or
  ``unlisted-remap`` (the whole-vmemmap sweep).

Every run must end within the bound, exit 0, 1 or 2 (never 3, never a
traceback) and print a few lines at most per finding; every flip of a bit a
check depends on must give exit 1 (a finding). Runs are in-process on one
open program: the flipped page is served by a memory segment laid over the
dump (drgn uses the segment added last), and what vmemspect keeps per
program of the kernel's state (zones, present sections, the walker: its
page tables) is dropped before each run (progcache.forget_state).

    .venv/bin/python scripts/fuzz-dumps.py --dump vmcore.elf -s vmlinux --runs 500 --seed 1
    .venv/bin/python scripts/fuzz-dumps.py --kernel 7.2 --runs 500   # boots hvo-2m

Prints a summary; --json writes every run. Exit 1 if an invariant broke or a
flip of a bit a check depends on was missed.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import random
import signal
import struct
import sys
import time
from pathlib import Path

import drgn
from drgn import offsetof

from vmemspect.cli import run as vmemspect_run
from vmemspect.kernel import kernel_model
from vmemspect.pagetable import page_table_walker
from vmemspect.progcache import forget_state
from vmemspect.report import build_report
from vmemspect.target import open_vmcore

PAGE = 4096
BOUND_S = 30.0
ADDR_BITS = set(range(12, 52))


class Overlay:
    """Pages of physical memory served from copies that can be altered."""

    def __init__(self, prog: drgn.Program) -> None:
        self.prog = prog
        self.pages: dict[int, bytearray] = {}

    def _page(self, pfn: int) -> bytearray:
        if pfn not in self.pages:
            data = bytearray(self.prog.read(pfn * PAGE, PAGE, True))
            self.pages[pfn] = data
            self.prog.add_memory_segment(
                pfn * PAGE, PAGE, lambda a, c, off, phys, d=data: bytes(d[off:off + c]),
                physical=True)
        return self.pages[pfn]

    @contextlib.contextmanager
    def word(self, phys: int, value: int):
        page = self._page(phys // PAGE)
        off = phys % PAGE
        old = bytes(page[off:off + 8])
        page[off:off + 8] = struct.pack("<Q", value)
        try:
            yield struct.unpack("<Q", old)[0]
        finally:
            page[off:off + 8] = old


def targets(prog: drgn.Program):
    """(category, physical address of a word, relevant-bits function) for
    every word the fuzzer may alter."""
    model = kernel_model(prog)
    report = build_report(prog)
    walker = page_table_walker(prog)
    out = []
    sp = model.sizeof_page
    vm_pages = {}  # PTE table phys -> {index: folio}
    for fv in report.folios:
        for i, (level, _e, _pfn, _w, table) in enumerate(walker.entries(fv.vmemmap, fv.npages)):
            if level == 1:
                index = ((fv.vmemmap >> 12) + i) & 511
                vm_pages.setdefault(table, set()).add(index)
    for table, used in vm_pages.items():
        for index in range(512):
            rel = (lambda v, b, u=(index in used): u and (b in (0, 1) or b in ADDR_BITS))
            out.append(("pte", table + 8 * index, rel))
    node_zone = set(range(model.zones_pgoff, 64))
    order_word = model.off_order & ~7
    order_bits = set(range((model.off_order & 7) * 8, (model.off_order & 7) * 8 + 8))
    for fv in report.folios:
        base = fv.head.pfn * PAGE
        head_off = fv.folio.page & (PAGE - 1)
        for i in range(PAGE // sp):
            for w in range(0, sp, 8):
                if i * sp < head_off:
                    continue  # another folio's struct pages (1 GiB: none)
                k = i - head_off // sp
                if k == 0:
                    rel = {model.off_flags: {model.pg_head} | node_zone,
                           model.off_lru: set(range(64)), model.off_lru + 8: set(range(64)),
                           model.off_private: {model.hpg_vmemmap_optimized}}.get(w, set())
                else:
                    rel = set(range(64)) if w == model.off_info else set()
                    if k == 1 and sp + w == order_word:
                        rel = rel | order_bits
                out.append(("head-frame", base + i * sp + w, lambda v, b, r=frozenset(rel): b in r))
    for t in report.tails:
        if t.pfn is None:
            continue
        for i in range(PAGE // sp):
            for w, rel in ((model.off_info, set(range(64))), (model.off_flags, node_zone),
                           (model.off_mapping, set(range(64)))):
                out.append(("shared-frame", t.pfn * PAGE + i * sp + w,
                            lambda v, b, r=frozenset(rel): b in r))

    def kphys(va: int) -> int:
        leaf = walker.lookup(va & ~0xFFF)
        return (leaf.pfn << 12) | (va & 0xFFF)

    hs_t = prog.type("struct hstate")
    nids = sorted({fv.folio.nid for fv in report.folios} | {0})
    for h in report.hstates:
        fields = {offsetof(hs_t, "order") & ~7: set(range(0, 32))}
        for name in ("nr_huge_pages_node", "free_huge_pages_node"):
            for nid in nids:
                off = offsetof(hs_t, name) + 4 * nid
                fields.setdefault(off & ~7, set()).update(range((off & 7) * 8, (off & 7) * 8 + 32))
        for nid in nids:
            fields[offsetof(hs_t, "hugepage_freelists") + 16 * nid] = set(range(64))
        fields[offsetof(hs_t, "hugepage_activelist")] = set(range(64))
        # The words read (the struct holds per-node arrays for every possible
        # node: mostly words no one reads), and the first 256 bytes.
        for off in sorted(set(fields) | set(range(0, 256, 8))):
            rel = fields.get(off, set())
            out.append(("hstate", kphys(h.address + off), lambda v, b, r=frozenset(rel): b in r))
    if model.tails_owner == "zone":
        zone_t = prog.type("struct zone")
        tails_off = offsetof(zone_t, "vmemmap_tails")
        for z in report.zones:
            for t in report.tails:
                if t.nid == z.nid and t.zone_idx == z.idx and t.pfn is not None:
                    # A struct page pointer: every bit names another frame.
                    out.append(("zone", kphys(z.address + tails_off + 8 * t.slot),
                                lambda v, b: True))
            for name in ("zone_start_pfn", "spanned_pages"):
                out.append(("zone-info", kphys(z.address + offsetof(zone_t, name)),
                            lambda v, b: None))
    out.extend(_unlink_targets(prog, report, kphys))
    return out


def _unlink_targets(prog, report, kphys):
    """("unlink", (pfn, clear_head, [(phys, new word)...]), None) for every
    free folio with a free neighbour on each side, twice: with and without
    its PG_head cleared."""
    model = kernel_model(prog)
    hs_t = prog.type("struct hstate")
    by_name = {h.name: h for h in report.hstates}
    out = []
    for fv in report.folios:
        f = fv.folio
        if f.state != "free":
            continue
        h = by_name[f.hstate]
        nxt, prv = struct.unpack("<QQ", prog.read(f.page + model.off_lru, 16))
        patches = [(kphys(prv), nxt), (kphys(nxt + 8), prv)]
        words = [offsetof(hs_t, "nr_huge_pages"), offsetof(hs_t, "free_huge_pages"),
                 offsetof(hs_t, "nr_huge_pages_node") + 4 * f.nid,
                 offsetof(hs_t, "free_huge_pages_node") + 4 * f.nid]
        for off in words:
            va = h.address + off
            word = prog.read_u64(va & ~7)
            patches.append((kphys(va & ~7), word - (1 << (va & 7) * 8)))
        for clear in (False, True):
            p = list(patches)
            if clear:
                p.append((kphys(f.page), f.flags & ~(1 << model.pg_head)))
            out.append(("unlink", (f.pfn, clear, p), None))
    return out


def _verify(prog, jobs: int, out, par, text) -> tuple:
    """verify on ``prog`` as its memory is now: the JSON with ``--jobs 1``
    into ``out``, with ``--jobs JOBS`` into ``par`` (the parallel scan must
    write the very same), the text into ``text``, each reading the kernel's
    state afresh. Returns (exit status, the parallel run's or None)."""
    rc_par = None
    forget_state(prog)
    with contextlib.redirect_stdout(out):
        rc = vmemspect_run(["verify", "--json", "--jobs", "1"], prog=prog)
    if jobs > 1:
        forget_state(prog)
        with contextlib.redirect_stdout(par):
            rc_par = vmemspect_run(["verify", "--json", "--jobs", str(jobs)], prog=prog)
    forget_state(prog)
    with contextlib.redirect_stdout(text):
        vmemspect_run(["verify", "--jobs", "1"], prog=prog)
    return rc, rc_par


def _unlink_run(prog, overlay, target, jobs: int) -> dict:
    """Apply one ``unlink`` target's words together; verify must name the
    folio, with the check of its kind, and nothing else."""
    pfn, clear, patches = target
    out, err, text, par = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack, contextlib.redirect_stderr(err):
        for phys, new in patches:
            stack.enter_context(overlay.word(phys, new))
        rc, rc_par = _verify(prog, jobs, out, par, text)
    seconds = time.monotonic() - t0
    findings, named = [], False
    if rc in (0, 1):
        doc = json.loads(out.getvalue())
        findings = sorted({f["check"] for f in doc["findings"]})
        want = "unlisted-remap" if clear else "unlisted-folio"
        named = [(f["check"], f["folio_pfn"]) for f in doc["findings"]] == [(want, pfn)]
    return {"category": "unlink", "phys": patches[0][0], "old": pfn, "new": int(clear),
            "bit": None, "relevant": True, "rc": rc if named or rc != 1 else "wrong-finding",
            "seconds": round(seconds, 3), "findings": findings,
            "text_lines": len(text.getvalue().splitlines()), "stderr": err.getvalue()[-300:],
            "jobs": jobs, "parallel_same": None if jobs == 1
            else (rc_par == rc and _same_json(par.getvalue(), out.getvalue()))}


def _same_json(a: str, b: str) -> bool:
    """The same verify JSON but for ``workers`` (what --jobs did)."""
    try:
        da, db = json.loads(a), json.loads(b)
    except ValueError:
        return a == b
    da.pop("workers", None)
    db.pop("workers", None)
    return da == db


def one_run(prog, overlay, cat, phys, relevant, rng, jobs: int = 1) -> dict:
    if cat == "unlink":
        return _unlink_run(prog, overlay, phys, jobs)
    old = struct.unpack("<Q", prog.read(phys, 8, True))[0]
    if rng.random() < 0.25:
        new, bit = rng.getrandbits(64), None
        changed = [b for b in range(64) if (old ^ new) >> b & 1]
        rel = [relevant(old, b) for b in changed]
    else:
        bit = rng.randrange(64)
        new = old ^ (1 << bit)
        rel = [relevant(old, bit)]
    is_rel = None if any(r is None for r in rel) else any(rel)
    out, err, text, par = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
    rc_par = None
    t0 = time.monotonic()

    def timeout(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, BOUND_S)
    try:
        with overlay.word(phys, new), contextlib.redirect_stderr(err):
            rc, rc_par = _verify(prog, jobs, out, par, text)
    except TimeoutError:
        rc = "timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    seconds = time.monotonic() - t0
    findings = []
    if rc in (0, 1):
        doc = json.loads(out.getvalue())
        findings = sorted({f["check"] for f in doc["findings"]})
    lines = len(text.getvalue().splitlines())
    return {"category": cat, "phys": phys, "old": old, "new": new, "bit": bit,
            "relevant": is_rel, "rc": rc, "seconds": round(seconds, 3), "findings": findings,
            "text_lines": lines, "stderr": err.getvalue()[-300:], "jobs": jobs,
            "parallel_same": None if jobs == 1 or rc == "timeout"
            else (rc_par == rc and _same_json(par.getvalue(), out.getvalue()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", help="an ELF or kdump vmcore of a guest with hugetlb folios")
    ap.add_argument("-s", "--vmlinux")
    ap.add_argument("--kernel", help="boot this test-bed kernel in hvo-2m instead of --dump")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every run here")
    a = ap.parse_args(argv)
    if a.kernel:
        import testbed
        run = testbed.run_scenario(a.kernel, "hvo-2m", testbed.cache_dir() / "fuzz" / a.kernel)
        a.dump, a.vmlinux = run["kdump"], run["vmlinux"]
    if not a.dump:
        ap.error("give --dump or --kernel")
    prog = open_vmcore(a.dump, a.vmlinux)
    healthy = build_report(prog)
    assert not healthy.findings, "the dump is not healthy to start with"
    cands = targets(prog)
    by_cat = collections.defaultdict(list)
    for c in cands:
        by_cat[c[0]].append(c)
    rng = random.Random(a.seed)
    cats = sorted(by_cat)
    overlay = Overlay(prog)
    runs = []
    t0 = time.monotonic()
    for i in range(a.runs):
        cat = cats[i % len(cats)]  # every category alike, whatever its size
        _, phys, rel = rng.choice(by_cat[cat])
        # Every 5th run verifies with --jobs 2 as well: the same JSON.
        runs.append(one_run(prog, overlay, cat, phys, rel, rng, 2 if i % 5 == 4 else 1))
    total = time.monotonic() - t0
    # A few lines per check that found something, plus unknowns and the verdict.
    bad = [r for r in runs if r["rc"] not in (0, 1, 2) or "Traceback" in r["stderr"]
           or r["text_lines"] > 6 * len(r["findings"]) + 12 or r["parallel_same"] is False]
    slow = max(r["seconds"] for r in runs)
    rel = [r for r in runs if r["relevant"]]
    missed = [r for r in rel if r["rc"] != 1]
    print(f"{len(runs)} runs on {a.dump} in {total:.0f} s (slowest {slow:.2f} s); "
          f"exit codes {dict(collections.Counter(str(r['rc']) for r in runs))}")
    par = [r for r in runs if r["parallel_same"] is not None]
    print(f"  --jobs 2 against --jobs 1: {sum(r['parallel_same'] for r in par)} of "
          f"{len(par)} runs the same JSON")
    for cat in cats:
        rs = [r for r in runs if r["category"] == cat]
        rr = [r for r in rs if r["relevant"]]
        found = [r for r in rr if r["rc"] == 1]
        print(f"  {cat:13} {len(rs):4} runs, {len(rr):4} on bits a check depends on, "
              f"{len(found):4} found ({100 * len(found) / len(rr) if rr else 100:.1f} %); "
              f"{sum(1 for r in rs if r['relevant'] is False and r['rc'] == 1)} findings "
              "on other bits")
    for r in missed[:20]:
        if r["category"] == "unlink":
            print(f"  missed: unlink folio pfn {r['old']:#x} (PG_head cleared: "
                  f"{bool(r['new'])}): rc {r['rc']}, findings {r['findings']}")
            continue
        print(f"  missed: {r['category']} phys {r['phys']:#x} {r['old']:#x} -> {r['new']:#x} "
              f"(bit {r['bit']}): rc {r['rc']} {r['stderr'].strip()[:120]}")
    for r in bad[:20]:
        print(f"  BROKEN: {r}")
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1, default=str))
    return 1 if bad or missed or slow > BOUND_S else 0


if __name__ == "__main__":
    sys.exit(main())
