"""
``vmemspect live`` with no debug package: the test bed's "live" scenario
boots a real 6.12 or 7.2 kernel, chroots into this machine's root over
virtiofs and runs ``python3 -m vmemspect live --json`` there. No vmlinux of
the guest's kernel is installed anywhere drgn looks, so the types must come
from ``/sys/kernel/btf/vmlinux`` and the symbols from ``/proc/kallsyms``.
The report must match the guest's own truth, and the report of the dump
taken right after it, read with the DWARF vmlinux.
"""

import json

import pytest

from conftest import FORM, KERNELS, vmemspect
from conftest import live_run as conftest_live_run


@pytest.fixture(scope="module", params=KERNELS)
def live_run(request):
    # No -s: the guest's kernel has no vmlinux where drgn looks.
    return conftest_live_run(request.param, "python3 -m vmemspect live --json", "live-btf")


def test_live_without_debug_package(live_run):
    run = live_run
    assert run["guest_cmd_rc"] == 0, run["guest_cmd_stderr"]
    doc = json.loads(run["guest_cmd_output"])
    truth = run["truth"]
    k = doc["kernel"]
    assert k["types"] == "btf"
    assert k["release"] == truth["uname"]
    assert k["form"] == FORM[run["series"]]
    assert k["hvo_enabled"] == bool(truth["hugetlb_optimize_vmemmap"])
    total = sum(g["total"] for g in doc["groups"])
    assert total == truth["meminfo"]["HugePages_Total"]
    assert sum(g["optimized"] for g in doc["groups"]) == total
    assert doc["verify"]["ok"] and doc["verify"]["findings"] == 0
    assert doc["verify"]["checked_folios"] == total


def test_live_btf_equals_dump_dwarf(live_run):
    """Nothing changes in the guest between the live run and the dump (its
    64 boot-time folios stay free), so the live report, read with BTF, must
    equal the dump's, read with DWARF, field for field."""
    run = live_run
    live = json.loads(run["guest_cmd_output"])
    dump = json.loads(vmemspect("vmcore", run["kdump"], "-s", run["vmlinux"], "--json").stdout)
    assert (live["kernel"].pop("types"), dump["kernel"].pop("types")) == ("btf", "dwarf")
    # What --jobs did differs by design: a live kernel is read by one
    # process (null with one CPU, where one job is the default).
    lw, dw = live.pop("workers"), dump.pop("workers")
    assert lw is None or lw["why_none"] == "a live kernel is read by one process", lw
    assert dw is None or dw["failed"] is None, dw
    assert live == dump
