"""
The scan engine on fixtures (extracts of real guests). ``--jobs``: the
forked workers of the grouped scan, on a real 7.2 two-node guest's extract. They must really run (the same answer is no
proof: a failure falls back to reading every folio in one process), and a
failure must show: a line on stderr and the JSON's ``workers`` field, with
the very same findings and counts.
"""

import contextlib
import io
import json
from pathlib import Path

import pytest

from vmemspect import cli, hvo
from vmemspect.documents import (aliased_rows, folio_rows, folios_doc, tails_doc, verify_doc,
                              write_json)
from vmemspect.kernel import kernel_model
from vmemspect.report import build_report
from vmemspect.target import open_vmcore

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "7.2-numa.kdump"


def _verify(jobs: int):
    prog = open_vmcore(str(FIXTURE), None)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.run(["verify", "--json", "--jobs", str(jobs)], prog=prog)
    return rc, json.loads(out.getvalue()), err.getvalue()


def test_workers_run():
    r = build_report(open_vmcore(str(FIXTURE), None), keep_folios=False, jobs=2)
    assert r.workers.requested == 2 and r.workers.started == 2
    assert r.workers.failed is None and len(r.workers.cpu_seconds) == 2
    rc, doc, err = _verify(2)
    assert rc == 0 and doc["workers"]["started"] == 2 and doc["workers"]["failed"] is None
    assert "workers failed" not in err
    rc1, doc1, _ = _verify(1)
    assert doc1.pop("workers") is None
    doc.pop("workers")
    assert doc == doc1


def test_worker_failure_shows(monkeypatch):
    def broken(*args):
        raise RuntimeError("a worker that breaks")

    monkeypatch.setattr(hvo, "_prescan", broken)
    rc, doc, err = _verify(2)
    assert rc == 0
    w = doc["workers"]
    assert w["started"] == 2
    assert "RuntimeError: a worker that breaks" in w["failed"]
    assert "--jobs 2: the workers failed (worker 1 raised RuntimeError" in err
    # The same answer, read in one process.
    _, doc1, _ = _verify(1)
    doc.pop("workers"), doc1.pop("workers")
    assert doc == doc1
    assert doc["checked_folios"] == 111


@pytest.mark.parametrize("jobs", [1, 3])
def test_verify_doc_names_workers(jobs):
    r = build_report(open_vmcore(str(FIXTURE), None), keep_folios=False, jobs=jobs)
    assert (verify_doc(r)["workers"] is None) == (jobs == 1)


def _json(doc) -> str:
    out = io.StringIO()
    write_json(doc, out.write)
    return out.getvalue()


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURE.parent.glob("*.kdump")))
def test_rows_of_grouped_scan_equal_full_reads(fixture, jobs):
    """folios (and the pointer form's tails) write a row per folio from the
    grouped scan: a folio counted like a clean one gets that one's row with
    its own addresses and frames. The same JSON, byte for byte, as reading
    every folio in full, on every fixture (6.1, 6.12, 7.2; 2 MiB and 1 GiB;
    HVO on and off)."""
    path = str(FIXTURE.parent / fixture)
    full = build_report(open_vmcore(path, None), keep_folios=True)
    rows = build_report(open_vmcore(path, None), keep_folios=False, rows=folio_rows(),
                        jobs=jobs)
    assert _json(folios_doc(rows)) == _json(folios_doc(full, full.folios))
    if full.model.form == "pointer":
        aliased = build_report(open_vmcore(path, None), keep_folios=False, rows=aliased_rows(),
                               jobs=jobs)
        assert _json(tails_doc(aliased)) == _json(tails_doc(full))


def _range(kind: str, **kw):
    from vmemspect.sweep import RemappedRange

    base = dict(pfn=0x2000, vmemmap=0xffffea0000080000, vmemmap_pages=8, frame=0x1399,
                frame_name="node 0 DMA32 order 9", own_frame=False, writable=0, kind=kind,
                what=f"({kind})", flags=0x40, info=0, private=0x10, refcount=0, order=9,
                hugetlb=True, optimized=True)
    base.update(kw)
    return RemappedRange(**base)


@pytest.mark.parametrize("kind,check", [("off-lists", "unlisted-folio"),
                                        ("not-hugetlb", "unlisted-remap"),
                                        ("isolated", None), ("device", None),
                                        ("unknown", None)])
@pytest.mark.parametrize("incomplete", [False, True])
def test_check_unlisted_on_records(kind, check, incomplete):
    """What each kind of unlisted range is: a hugetlb folio off the lists
    (a finding, unless the lists were not walked whole), no hugetlb folio (a
    finding always), a folio isolated for migration or ZONE_DEVICE memory
    (no finding)."""
    from vmemspect.checks import check_unlisted
    from vmemspect.sweep import SweepResult

    model = kernel_model(open_vmcore(str(FIXTURE), None))
    found = check_unlisted(model, SweepResult(10, 0, 1, [_range(kind)], incomplete))
    if check is None or (check == "unlisted-folio" and incomplete):
        assert found == []
    else:
        assert [(f.check, f.folio_pfn, f.frame_pfn) for f in found] == [(check, 0x2000, 0x1399)]
        if check == "unlisted-remap":
            assert "faults on the first write" in found[0].consequence
