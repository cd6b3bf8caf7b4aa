"""
vmemspect.diagnosis on Finding records built by hand: which findings are
one root cause, what folds under it, and where its folios come from.

The records say what the checks would (cause, implied) for a state made
up here; the expected grouping follows from that state, never from the
code under test.
"""

import pytest

from vmemspect.checks import Finding
from vmemspect.diagnosis import FolioAt, block_starts, diagnose

H2M, H1G = ("hugepages-2048kB", 9), ("hugepages-1048576kB", 18)
HSTATES = [H2M, H1G]
GIGA = 1 << 18          # pfns of a 1 GiB block
HUGE = 1 << 9           # pfns of a 2 MiB folio
TAILS = 7               # tail vmemmap pages of a 2 MiB folio (8 - the head's)


def subject(pfn: int) -> str:
    return f"folio pfn {pfn:#x} (hugetlb-2048kB, node 0 Normal, active)"


def never_remapped(pfn: int, tails: int = TAILS) -> list:
    """What a folio flagged optimized whose vmemmap was never remapped fails:
    the flag (the cause), and each tail vmemmap page's frame and mapping
    (on frames of its own, so implied)."""
    out = [Finding("flag-vs-mapping", subject(pfn), "vmemmap remapped", "flag set, 8 frames",
                   pfn, None, "freeing it restores vmemmap never freed",
                   cause="flag-not-remapped", folio_order=9)]
    for i in range(tails):
        frame = 0x100000 + pfn + i
        out.append(Finding("tail-frame", subject(pfn), "its head frame", f"pfn {frame:#x}",
                           pfn, frame, "none through this frame", cause="flag-not-remapped",
                           implied=True, folio_order=9))
        out.append(Finding("tail-readonly", subject(pfn), "read-only pte", "1 of 1 writable",
                           pfn, frame, "a write changes only its own struct pages",
                           cause="flag-not-remapped", implied=True, folio_order=9))
    return out


def key_count(delta: int, follows: bool = True) -> Finding:
    return Finding("kernel-count", "hugetlb_optimize_vmemmap_key", "its count", "more",
                   consequence="the key underflows",
                   cause="flag-not-remapped" if follows else None, implied=follows, delta=delta)


def demoted(start: int, n: int = GIGA // HUGE) -> list:
    """The demotion state: every 2 MiB folio of the 1 GiB block at
    ``start`` but the first never remapped."""
    out = []
    for k in range(1, n):
        out += never_remapped(start + k * HUGE, tails=1)
    return out


def clean_head(pfn: int) -> FolioAt:
    return FolioAt(pfn, True, 9, H2M[0], "active list", True, True, ())


def placed(causes, n: int) -> list:
    """Every finding index, in the causes and their implied groups."""
    idx = [i for c in causes for i in c.findings]
    idx += [i for c in causes for im in c.implied for i in im.findings]
    assert sorted(idx) == list(range(n)), "every finding in exactly one place"
    return idx


def test_no_findings_no_cause():
    assert diagnose([], HSTATES) == []


def test_flag_not_remapped_is_one_cause_with_its_consequences_folded():
    folios = [0x140200, 0x140400, 0x140600]
    findings = [f for p in folios for f in never_remapped(p)] + [key_count(len(folios))]
    causes = diagnose(findings, HSTATES)
    placed(causes, len(findings))
    (c,) = causes
    assert (c.cause, c.check, list(c.folios)) == ("flag-not-remapped", "flag-vs-mapping", folios)
    assert c.title and "never remapped" in c.title
    assert [findings[i].check for i in c.findings] == ["flag-vs-mapping"] * 3
    got = {i.check: (len(i.findings), sorted(i.folios)) for i in c.implied}
    assert got == {"tail-frame": (3 * TAILS, folios), "tail-readonly": (3 * TAILS, folios),
                   "kernel-count": (1, [])}


def test_count_that_the_cause_does_not_explain_is_its_own_cause():
    """The key is off by 5, the flag cause covers 2 folios: the count is not
    (only) theirs, so it stands as a root cause of its own."""
    findings = never_remapped(0x200) + never_remapped(0x400) + [key_count(5)]
    causes = diagnose(findings, HSTATES)
    placed(causes, len(findings))
    assert [(c.cause, len(c.findings)) for c in causes] == [
        ("flag-not-remapped", 2), ("kernel-count", 1)]
    assert [i.check for i in causes[0].implied] == ["tail-frame", "tail-readonly"]


def test_count_with_both_flag_causes():
    """Two folios flagged without remap, one remapped without the flag: the
    key (which counts the remapped ones) is off by 2 - 1."""
    clear = Finding("flag-vs-mapping", subject(0x600), "not remapped", "flag clear", 0x600,
                    None, "oops on write", cause="remapped-not-flagged", folio_order=9)
    findings = never_remapped(0x200) + never_remapped(0x400) + [clear, key_count(1)]
    causes = diagnose(findings, HSTATES)
    placed(causes, len(findings))
    assert [c.cause for c in causes] == ["flag-not-remapped", "remapped-not-flagged"]
    assert "kernel-count" in [i.check for i in causes[0].implied]


def test_implied_without_its_cause_stands_alone():
    """A live re-read confirmed the tails but not the flag: the tail
    findings are then root causes, each with its consequence."""
    findings = never_remapped(0x200, tails=2)[1:]
    causes = diagnose(findings, HSTATES)
    placed(causes, len(findings))
    assert [(c.cause, len(c.findings)) for c in causes] == [("tail-frame", 2),
                                                             ("tail-readonly", 2)]


def test_corrupted_pte_is_its_own_cause():
    """One tail PTE onto another folio's frame (pointer form): tail-frame,
    and tail-contents on that frame following from it; a flag cause on
    another folio stays apart."""
    victim, frame = 0x10000, 0x5555
    findings = never_remapped(0x400, tails=1) + [
        Finding("tail-frame", subject(victim), "head frame", f"pfn {frame:#x}", victim, frame,
                "reads another frame's contents", folio_order=9),
        Finding("tail-contents", subject(victim), "its tails", "names another head", victim,
                frame, "reads another folio's", cause="tail-frame", implied=True, folio_order=9),
    ]
    causes = diagnose(findings, HSTATES)
    placed(causes, len(findings))
    assert [(c.cause, list(c.folios)) for c in causes] == [
        ("flag-not-remapped", [0x400]), ("tail-frame", [victim])]
    assert [(i.check, list(i.folios)) for i in causes[1].implied] == [
        ("tail-contents", [victim])]


def test_different_consequences_are_different_causes():
    """Two writable tail PTEs: one onto the head frame it shares, one onto a
    frame of its own; each cause's consequence holds for all its findings."""
    a = Finding("tail-readonly", subject(0x200), "ro", "rw", 0x200, 0x1, "changes the head page")
    b = Finding("tail-readonly", subject(0x400), "ro", "rw", 0x400, 0x2, "changes only its own")
    c = Finding("tail-readonly", subject(0x600), "ro", "rw", 0x600, 0x3, "changes the head page")
    causes = diagnose([a, b, c], HSTATES)
    assert [(x.consequence, list(x.folios)) for x in causes] == [
        ("changes the head page", [0x200, 0x600]), ("changes only its own", [0x400])]


def test_demoted_gigantic_folio_is_named():
    start = 5 * GIGA
    findings = demoted(start)
    assert block_starts(findings, HSTATES) == [start]
    seen = []

    def folio_at(pfn):
        seen.append(pfn)
        return clean_head(pfn)
    (c,) = diagnose(findings, HSTATES, folio_at)
    assert seen == [start]
    assert len(c.folios) == GIGA // HUGE - 1
    (b,) = c.blocks
    assert (b.hstate, b.start_pfn, b.end_pfn, len(b.folios), b.capacity) == (
        H1G[0], start, start + GIGA - 1, GIGA // HUGE - 1, GIGA // HUGE)
    assert b.all_but_first and b.first.pfn == start
    assert c.provenance.startswith(
        f"all 511 lie in one 1 GiB-aligned block, pfn {start:#x}-{start + GIGA - 1:#x}; "
        f"with its first folio, pfn {start:#x}, which is clean")
    assert "512 hugepages-2048kB folios: one demoted hugepages-1048576kB folio" in c.provenance
    # The 6.12 demotion bug's pattern: named, with its document.
    assert c.known_bug and "docs/known-bugs.md" in c.known_bug and "6.12" in c.known_bug


@pytest.mark.parametrize("first, words", [
    (FolioAt(0, True, 9, H2M[0], "active list", True, False, ("flag-vs-mapping",)),
     "with findings: flag-vs-mapping"),
    (FolioAt(0, True, 9, None, None, False, None, ()), "a head of order 9 on no hstate list"),
    (FolioAt(0, False, None, None, None, False, None, ()), "no folio's head"),
    (FolioAt(0, False, None, None, None, False, None, (), "not in the dump"), "not in the dump"),
])
def test_block_whose_first_is_not_clean_is_not_called_demoted(first, words):
    start = 2 * GIGA
    findings = demoted(start)
    (c,) = diagnose(findings, HSTATES, lambda pfn: first)
    assert not c.blocks[0].all_but_first
    assert "demoted" not in c.provenance and c.known_bug is None
    assert c.provenance.startswith(f"all 511 lie in one 1 GiB-aligned block, "
                                   f"pfn {start:#x}-{start + GIGA - 1:#x} (511 of the 512 ")
    assert f"; its first pfn, {start:#x}: {words}" in c.provenance


def test_two_demoted_blocks():
    a, b = 2 * GIGA, 7 * GIGA
    findings = demoted(a) + demoted(b)
    assert block_starts(findings, HSTATES) == [a, b]
    (c,) = diagnose(findings, HSTATES, clean_head)
    assert [x.start_pfn for x in c.blocks] == [a, b]
    assert c.provenance.startswith("all 1022 lie in 2 1 GiB-aligned blocks")
    assert "2 demoted hugepages-1048576kB folios" in c.provenance


def test_scattered_folios_have_no_provenance():
    """One folio in each of five 1 GiB blocks: nothing they share."""
    findings = [f for k in range(5) for f in never_remapped(k * GIGA + HUGE, tails=1)]
    assert block_starts(findings, HSTATES) == []
    (c,) = diagnose(findings, HSTATES, clean_head)
    assert (c.blocks, c.provenance) == ((), None)


def test_no_larger_hstate_no_block():
    findings = demoted(GIGA, 8)
    (c,) = diagnose(findings, [H2M], clean_head)
    assert (c.blocks, c.provenance) == ((), None)


def test_partly_filled_block_is_described_not_called_demoted():
    start = 3 * GIGA
    findings = demoted(start, 11)  # folios 1..10 of the block
    (c,) = diagnose(findings, HSTATES, clean_head)
    assert c.provenance == (
        f"all 10 lie in one 1 GiB-aligned block, pfn {start:#x}-{start + GIGA - 1:#x} "
        f"(10 of the 512 hugepages-2048kB folios it holds); its first pfn, {start:#x}: "
        "clean (on the active list of hugepages-2048kB; HPG_vmemmap_optimized set, "
        "vmemmap remapped)")
