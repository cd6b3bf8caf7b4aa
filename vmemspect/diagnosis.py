"""
Root causes
-----------

The findings of a scan grouped by root cause (:func:`diagnose`, a pure
function over :class:`~vmemspect.checks.Finding` records): one
:class:`Cause` per state that is a problem of its own, with the folios it
covers, the findings it implies folded under it with their counts, and,
where the dump shows one, where its folios come from (:class:`Block`).

Which finding follows from which is decided by the checks, which see the
state (``Finding.cause``, ``Finding.implied``): a folio flagged
``HPG_vmemmap_optimized`` whose vmemmap was never remapped fails
``flag-vs-mapping``, and its tail vmemmap pages, each on a frame of its
own, fail ``tail-frame`` and ``tail-readonly``: those two follow from the
first. The grouping only joins them, and checks what the checks cannot
see alone: that the kernel's count differs by exactly the folios of the
cause it is said to follow from.

:func:`diagnose_report` adds the one read the grouping needs: what the dump
holds at the first pfn of a gigantic-aligned block that a cause's folios
fill (:func:`read_folio_at`).
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from drgn import FaultError, Program

from .errors import MissingMemory
from .checks import CAUSES, Finding, check_folio, folio_check_context
from .hugetlb import Hstate, folio_record, zones
from .hvo import folio_vmemmap
from .kernel import kernel_model

__all__ = (
    "Block",
    "Cause",
    "FolioAt",
    "Implied",
    "diagnose",
    "diagnose_report",
    "read_folio_at",
)

#: Blocks a cause's folios may lie in for vmemspect to say which: more is
#: not a shared provenance.
MAX_BLOCKS = 4


@dataclasses.dataclass(frozen=True)
class FolioAt:
    """What the dump holds at one pfn, read apart from the scan."""

    pfn: int
    #: Its struct page has PG_head and is not a tail.
    head: bool
    #: The order its first tail records (None: not a head).
    order: Optional[int]
    #: The hstate whose list holds it, and which list ("active list", "free
    #: list of node 0"); None: on no hstate list.
    hstate: Optional[str]
    list_name: Optional[str]
    optimized: bool
    remapped: Optional[bool]
    #: The checks that fail on it (check_folio); empty: clean.
    checks: Tuple[str, ...]
    #: Why it could not be read (missing from the dump), else None.
    unreadable: Optional[str] = None

    @property
    def clean(self) -> bool:
        return self.unreadable is None and self.hstate is not None and not self.checks


@dataclasses.dataclass(frozen=True)
class Block:
    """A gigantic-aligned block that holds some of a cause's folios."""

    #: The hstate whose folios have this size and alignment, and its order.
    hstate: str
    order: int
    start_pfn: int
    #: The cause's folios in it.
    folios: Tuple[int, ...]
    #: Folios of the cause's order the block holds.
    capacity: int
    #: What the dump holds at its first pfn, when that is no folio of the
    #: cause (None: not read).
    first: Optional[FolioAt]

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + (1 << self.order) - 1

    @property
    def all_but_first(self) -> bool:
        """The cause's folios fill the block but for its first, which is a
        clean folio of the same order: what demoting a gigantic folio
        leaves when all of it but the first went wrong."""
        return (len(self.folios) == self.capacity - 1 and self.start_pfn not in self.folios
                and self.first is not None and self.first.clean)


@dataclasses.dataclass(frozen=True)
class Implied:
    """Findings of one check (and one consequence) that follow from a cause."""

    check: str
    #: Indices into the findings given to diagnose().
    findings: Tuple[int, ...]
    folios: Tuple[int, ...]
    consequence: Optional[str]


@dataclasses.dataclass(frozen=True)
class Cause:
    """One root cause: the findings that show it, the folios it covers,
    what it implies, and where its folios come from."""

    #: A CAUSES id, or the check id when the check says it all.
    cause: str
    #: The check whose findings show it, and the findings (indices).
    check: str
    findings: Tuple[int, ...]
    folios: Tuple[int, ...]
    consequence: Optional[str]
    implied: Tuple[Implied, ...] = ()
    blocks: Tuple[Block, ...] = ()
    #: Where its folios come from, in words (None: nothing they share).
    provenance: Optional[str] = None
    #: The known kernel bug whose pattern this is (docs/known-bugs.md), in
    #: words; None if none.
    known_bug: Optional[str] = None

    @property
    def title(self) -> Optional[str]:
        """What the state is, when more precise than the check (CAUSES)."""
        return CAUSES.get(self.cause)


def _size(kb: int) -> str:
    for unit, div in (("GiB", 1 << 20), ("MiB", 1 << 10)):
        if kb >= div and kb % div == 0:
            return f"{kb // div} {unit}"
    return f"{kb} KiB"


def _hstate_kb(name: str) -> Optional[int]:
    if name.startswith("hugepages-") and name.endswith("kB") and name[10:-2].isdigit():
        return int(name[10:-2])
    return None


def _groups(findings: Sequence[Finding]) -> List[dict]:
    """The grouping without provenance: roots by (cause, consequence), each
    implied finding under the group of its cause that holds its folio."""
    groups: Dict[Tuple[str, Optional[str]], dict] = {}
    order: List[dict] = []
    implied: List[int] = []
    for i, f in enumerate(findings):
        if f.implied:
            implied.append(i)
            continue
        key = (f.cause or f.check, f.consequence)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"cause": key[0], "check": f.check, "consequence": f.consequence,
                               "findings": [], "folios": {}, "implied": {}}
            order.append(g)
        g["findings"].append(i)
        if f.folio_pfn is not None:
            g["folios"].setdefault(f.folio_pfn, f.folio_order)
    by_cause: Dict[str, List[dict]] = {}
    for g in order:
        by_cause.setdefault(g["cause"], []).append(g)

    def folios_of(cause: str) -> int:
        return sum(len(g["folios"]) for g in by_cause.get(cause, ()))

    orphans = []
    for i in implied:
        f = findings[i]
        home = None
        candidates = by_cause.get(f.cause or "", [])
        if f.folio_pfn is not None:
            home = next((g for g in candidates if f.folio_pfn in g["folios"]), None)
        elif f.delta is not None:
            # A count that follows from the flags: only if the folios of
            # the flag causes make up the difference exactly.
            if f.delta == folios_of("flag-not-remapped") - folios_of("remapped-not-flagged"):
                home = candidates[0] if candidates else None
        else:
            home = candidates[0] if candidates else None
        if home is None:
            orphans.append(i)
            continue
        sub = home["implied"].setdefault((f.check, f.consequence), [[], {}])
        sub[0].append(i)
        if f.folio_pfn is not None:
            sub[1].setdefault(f.folio_pfn, None)
    # An implied finding whose cause was not found (a live re-read dropped
    # it, or the count does not add up) is a root cause of its own.
    for i in orphans:
        f = findings[i]
        key = (f.check, f.consequence)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"cause": f.check, "check": f.check, "consequence": f.consequence,
                               "findings": [], "folios": {}, "implied": {}}
            order.append(g)
        g["findings"].append(i)
        if f.folio_pfn is not None:
            g["folios"].setdefault(f.folio_pfn, f.folio_order)
    return order


def block_starts(findings: Sequence[Finding], hstates: Sequence[Tuple[str, int]]) -> List[int]:
    """The first pfns of the gigantic-aligned blocks whose provenance
    :func:`diagnose` would state: what :func:`read_folio_at` must read."""
    out: List[int] = []
    for g in _groups(findings):
        for b in _blocks(g, hstates, lambda pfn: None):
            if b.start_pfn not in b.folios:
                out.append(b.start_pfn)
    return sorted(set(out))


def _blocks(g: dict, hstates: Sequence[Tuple[str, int]],
            folio_at: Callable[[int], Optional[FolioAt]]) -> List[Block]:
    """The blocks of the smallest larger hstate that hold the group's
    folios, if they are few and of one order."""
    orders = set(g["folios"].values())
    if len(g["folios"]) < 2 or len(orders) != 1 or None in orders:
        return []
    (o,) = orders
    for name, big in sorted(hstates, key=lambda h: h[1]):
        if big <= o:
            continue
        starts: Dict[int, List[int]] = {}
        for pfn in g["folios"]:
            starts.setdefault(pfn >> big << big, []).append(pfn)
        if len(starts) > MAX_BLOCKS:
            return []
        return [Block(name, big, start, tuple(sorted(pfns)), 1 << (big - o),
                      None if start in pfns else folio_at(start))
                for start, pfns in sorted(starts.items())]
    return []


def _first_words(first: Optional[FolioAt], order: int) -> str:
    if first is None:
        return "not read"
    if first.unreadable is not None:
        return f"not in the dump ({first.unreadable})"
    if not first.head:
        return "no folio's head"
    if first.hstate is None:
        return f"a head of order {first.order} on no hstate list"
    state = (f"on the {first.list_name} of {first.hstate}; HPG_vmemmap_optimized "
             f"{'set' if first.optimized else 'clear'}, vmemmap "
             f"{'remapped' if first.remapped else 'not remapped'}")
    if first.clean:
        return f"clean ({state})"
    return f"with findings: {', '.join(first.checks)} ({state})"


def _provenance(g: dict, blocks: List[Block], hstates: Sequence[Tuple[str, int]]) -> Optional[str]:
    if not blocks:
        return None
    n = len(g["folios"])
    o = next(iter(g["folios"].values()))
    small = next((name for name, order in hstates if order == o), f"order-{o}")
    kb = _hstate_kb(blocks[0].hstate)
    size = _size(kb) if kb else f"order-{blocks[0].order}"
    ranges = ", ".join(f"pfn {b.start_pfn:#x}-{b.end_pfn:#x}" for b in blocks)
    where = (f"all {n} lie in one {size}-aligned block, {ranges}" if len(blocks) == 1 else
             f"all {n} lie in {len(blocks)} {size}-aligned blocks, {ranges}")
    if all(b.all_but_first for b in blocks):
        one = len(blocks) == 1
        big = blocks[0].hstate
        firsts = (f"its first folio, pfn {blocks[0].start_pfn:#x}, which is "
                  f"{_first_words(blocks[0].first, o)}" if one else
                  "each block's first folio (pfn "
                  + ", ".join(f"{b.start_pfn:#x}" for b in blocks) + "), which is clean")
        return (f"{where}; with {firsts}, they fill {'it' if one else 'them'} with "
                f"{blocks[0].capacity * len(blocks)} {small} folios: "
                + (f"one demoted {big} folio" if one else f"{len(blocks)} demoted {big} folios")
                + f", every folio of {'it' if one else 'each'} but the first in this state")
    if len(blocks) == 1:
        b = blocks[0]
        return (f"{where} ({len(b.folios)} of the {b.capacity} {small} folios it holds); "
                f"its first pfn, {b.start_pfn:#x}: "
                + ("one of them" if b.start_pfn in b.folios else _first_words(b.first, o)))
    return None


#: Known kernel bugs (docs/known-bugs.md) by the pattern they leave.
KNOWN_BUGS = {
    "6.12-demote": "the pattern of a known kernel bug: demoting a gigantic hugetlb folio on "
                   "6.12 (Debian's 6.12.117, cloud, generic and rt; not 6.12.95) leaves every "
                   "new folio but the first flagged HPG_vmemmap_optimized with its vmemmap "
                   "never remapped; docs/known-bugs.md, section 1, has the reproducer and the "
                   "cause",
    "6.12-stale-type": "the pattern of a known kernel bug: freeing an optimized 2 MiB folio on "
                       "6.12 (Debian's 6.12.117, cloud, generic and rt; not 6.12.95) leaves the hugetlb page "
                       "type on 7 of its struct pages, one at each 64th pfn after its head (the "
                       "restored vmemmap pages start with copies of the head's); docs/known-bugs.md, "
                       "section 2",
}


def known_bug(cause: "Cause", findings: Sequence[Finding] = ()) -> Optional[str]:
    """Which known bug's pattern (:data:`KNOWN_BUGS`) a cause is, if any:
    the 6.12 demotion bug is flagged-not-remapped folios that fill each of
    their gigantic-aligned blocks but the first, whose first folio is
    clean; the 6.12 stale type is stale-hugetlb-type pages that each lie
    at a multiple of 64 pfns inside a 2 MiB block, never at its start
    (where the freed folio's head was)."""
    if (cause.cause == "flag-not-remapped" and cause.blocks
            and all(b.all_but_first for b in cause.blocks)):
        return "6.12-demote"
    if cause.check == "stale-hugetlb-type" and findings:
        pfns = [findings[i].page_pfn for i in cause.findings]
        if all(p is not None and p % 64 == 0 and p % 512 for p in pfns):
            return "6.12-stale-type"
    return None


def diagnose(
    findings: Sequence[Finding],
    hstates: Sequence[Tuple[str, int]] = (),
    folio_at: Callable[[int], Optional[FolioAt]] = lambda pfn: None,
) -> List[Cause]:
    """
    The findings grouped by root cause, in the order their first finding
    comes. Every finding is in exactly one cause: as one that shows it, or
    folded under it as one it implies.

    - A finding not ``implied`` shows a root cause: ``Finding.cause`` if
      set, else its check; findings of one cause with different
      consequences are different causes (each consequence is true of all
      of its findings).
    - An ``implied`` finding about a folio goes under the cause of its
      ``Finding.cause`` that holds that folio; one with a ``delta`` (the
      kernel's count) under the flag causes only if their folios make up
      the difference exactly; one that finds no such cause is a root cause
      of its own.
    - Provenance: when a cause's folios (two or more, of one order) lie in
      at most :data:`MAX_BLOCKS` blocks aligned to the next larger hstate,
      those blocks are named, with what ``folio_at`` says of each block's
      first pfn; when they fill each block but its first, which is a clean
      folio, that is the layout a demoted gigantic folio leaves.

    :param hstates: (name, order) of the kernel's hstates.
    :param folio_at: what the dump holds at a pfn (:func:`read_folio_at`),
        for the first pfns of those blocks (:func:`block_starts`).
    """
    out = []
    for g in _groups(findings):
        blocks = _blocks(g, hstates, folio_at)
        cause = Cause(
            cause=g["cause"],
            check=g["check"],
            findings=tuple(g["findings"]),
            folios=tuple(g["folios"]),
            consequence=g["consequence"],
            implied=tuple(Implied(check, tuple(idx), tuple(folios), consequence)
                          for (check, consequence), (idx, folios) in g["implied"].items()),
            blocks=tuple(blocks),
            provenance=_provenance(g, blocks, hstates),
        )
        bug = known_bug(cause, findings)
        out.append(dataclasses.replace(cause, known_bug=KNOWN_BUGS[bug]) if bug else cause)
    return out


def read_folio_at(prog: Program, pfn: int, hstates: Sequence[Hstate]) -> FolioAt:
    """
    What the dump holds at ``pfn``: a folio head or not, its order, which
    hstate list holds it (followed from its ``lru`` to a list head), its
    flag and mapping, and the checks that fail on it.
    """
    model = kernel_model(prog)
    page = model.page_address(pfn)
    try:
        data = prog.read(page, 2 * model.sizeof_page)
    except FaultError as e:
        return FolioAt(pfn, False, None, None, None, False, None, (), f"{e}")
    flags = int.from_bytes(data[model.off_flags:model.off_flags + 8], "little")
    info = int.from_bytes(data[model.off_info:model.off_info + 8], "little")
    private = int.from_bytes(data[model.off_private:model.off_private + 8], "little")
    head = bool(flags & (1 << model.pg_head)) and not info & 1
    optimized = bool(private & (1 << model.hpg_vmemmap_optimized))
    if not head:
        return FolioAt(pfn, False, None, None, None, optimized, None, ())
    order = data[model.off_order]
    heads = {}
    for h in hstates:
        if not h.order_ok:
            continue
        for nid in sorted(h.per_node):
            heads[h.address + h.freelists_offset + 16 * nid] = (h, "free", nid)
        heads[h.address + h.activelist_offset] = (h, "active", -1)
    limit = sum(h.nr_huge_pages for h in hstates) + len(heads) + 1
    where = None
    try:
        pos = prog.read_u64(page + model.off_lru)
        for _ in range(min(limit, 1 << 24)):
            if pos in heads:
                where = heads[pos]
                break
            pos = prog.read_u64(pos)
    except FaultError:
        where = None
    if where is None or where[0].order != order:
        return FolioAt(pfn, True, order, None, None, optimized, None, ())
    h, state, nid = where
    list_name = f"free list of node {nid}" if state == "free" else "active list"
    zone_list = zones(prog)
    folio = folio_record(prog, model, zone_list, h, page, data, state, nid)
    try:
        fv = folio_vmemmap(prog, folio)
    except (MissingMemory, FaultError) as e:
        return FolioAt(pfn, True, order, h.name, list_name, optimized, None, (), f"{e}")
    if fv.unknown is not None:
        return FolioAt(pfn, True, order, h.name, list_name, optimized, None, (), fv.unknown)
    tails_by_zone, shared = folio_check_context(model, zone_list)
    checks = tuple(dict.fromkeys(f.check for f in check_folio(model, fv, tails_by_zone, shared)))
    return FolioAt(pfn, True, order, h.name, list_name, optimized, fv.remapped, checks)


def diagnose_report(prog: Program, findings: Sequence[Finding],
                    hstates: Sequence[Hstate]) -> List[Cause]:
    """:func:`diagnose` with the reads it needs from ``prog``."""
    names = [(h.name, h.order) for h in hstates if h.order_ok]
    seen = {pfn: read_folio_at(prog, pfn, hstates) for pfn in block_starts(findings, names)}
    return diagnose(findings, names, seen.get)
