"""
Types from BTF give the same answers as DWARF, on every real dump of the
test bed that has a DWARF vmlinux.

For each dump, scripts/btf-parity.py opens it twice in one process, with
the kernel's BTF (no -s, the way most users run vmemspect) and with its
-dbg vmlinux (-s), runs every command that writes JSON on each (report,
verify, folios, tails, savings, decode of heads, tails and a fake head of
each order) and metrics (full and --fast), and requires byte-identical
output but for the one field naming the types source. It also resolves,
both ways, every object and type name the commands and drgn's helpers
looked up, and every name vmemspect's source reads by a literal (paths no
scenario takes too): a name only DWARF can type is how the two paths once parted
(``saved_command_line``: ``hvo-off`` instead of ``hvo-off-at-boot`` on a
kernel booted with ``hugetlb_free_vmemmap=off``).

The dumps are the runs the rest of the suite boots anyway (same run names,
booted once per session): on every commit 6.12 and 7.2 in every scenario
the suite boots for them, their ELF dumps, real kdump captures and the
dump taken after ``vmemspect live`` ran in a live guest; in the
full run (VMEMSPECT_FULL=1) also every other x86_64 kernel with -dbg in
every healthy scenario and the runs the suite boots for them.
"""

import json

import pytest

from conftest import FULL, KERNELS, MATRIX, capture_run, live_run, real_run, script, testbed
from test_real_kdump import CASES as CAPTURES
from test_real_kernels import HEALTHY
from test_real_rare import RARE_KERNELS

#: tests/test_btf_live.py's guest command (the same run name and command:
#: the same run, booted once).
LIVE_BTF_CMD = "python3 -m vmemspect live --json"

PARITY = script("btf-parity")
#: The names vmemspect's source reads by a literal, resolved both ways on
#: every dump besides those its commands looked up.
NAMES = PARITY.source_names()

#: x86_64 kernels fetched with their -dbg (the rt ones have only BTF).
DBG = tuple(k for k in MATRIX if testbed.kernel(k).dbg)
#: Kernels whose runs are compared: 6.12 and 7.2 on every commit.
COMPARED = DBG if FULL else KERNELS


def _cases():
    """(id, how to get the run, which dump of it)."""
    cases = []
    for k in COMPARED:
        scenarios = HEALTHY + (("hotplug",) if k in KERNELS else ())
        cases += [(f"{k}-{s}", (real_run, (k, s), {}), "kdump") for s in scenarios]
    for k in RARE_KERNELS:
        if k in COMPARED:
            cases.append((f"{k}-rare", (real_run, (k, "rare"), {"aftermath": True}), "kdump"))
    for k in KERNELS:
        cases.append((f"{k}-hvo-2m-elf", (real_run, (k, "hvo-2m"), {"elf": True}), "elf"))
    cases.append(("7.2-numa-elf", (real_run, ("7.2", "numa"), {"elf": True}), "elf"))
    # The live scenario's dump, taken right after `vmemspect live` ran in the
    # guest with BTF (tests/test_btf_live.py, same run).
    for k in KERNELS:
        cases.append((f"{k}-live-btf", (live_run, (k, LIVE_BTF_CMD, "live-btf"), {}), "kdump"))
    for k, source in CAPTURES:
        if k in COMPARED:
            cases.append((f"{k}-hvo-2m-{source}", (capture_run, (k, source, "hvo-2m"), {}),
                          source))
    return cases


CASES = _cases()


@pytest.fixture(autouse=True)
def no_debuginfod(monkeypatch):
    # drgn would download the vmlinux if told where: the BTF side must stay BTF.
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)


def _compare(dump: str, vmlinux: str) -> dict:
    """scripts/btf-parity.py's comparison, in this process (one open each
    way per dump; no process per command)."""
    return PARITY.compare(dump, vmlinux, names=NAMES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_btf_output_equals_dwarf(case):
    _, (get, args, kwargs), which = case
    run = get(*args, **kwargs)
    assert run["vmlinux"], "a kernel with -dbg must have its vmlinux in the run"
    result = _compare(run[which], run["vmlinux"])
    commands = result["commands"]
    # Every command ran, on a dump with folios (decode pages chosen from them).
    assert set(commands) >= {"report", "verify", "folios", "tails", "savings",
                             "metrics", "metrics --fast"}
    assert any(name.startswith("decode ") for name in commands)
    differ = {name: c["diff"] for name, c in commands.items() if not c["identical"]}
    assert not differ, json.dumps(differ, indent=1)
    # Names the BTF path resolves otherwise than DWARF, shown or not in the output.
    assert not result["lookups"]["differ"], json.dumps(result["lookups"]["differ"], indent=1)
    # The known differences (docs/btf.md): drgn's DWARF calls
    # vmemmap_populate() optimized out, BTF places it at its kallsyms
    # address; 6.1's DWARF spells node_data's type with pg_data_t.
    assert {k["object"] for k in result["lookups"]["known"]} <= {"vmemmap_populate", "node_data"}
    # The names resolved both ways: those looked up, and the source's.
    assert {"hstates", "saved_command_line", "init_mm", "__pgtable_l5_enabled"} <= set(
        result["lookups"]["objects"])


# ------------------------------------------------------------ the source

def test_source_names_are_found():
    """The scan of vmemspect's source finds what it is meant to (else the
    names no scenario looks up would be checked nowhere)."""
    objects, types = NAMES
    assert {"saved_command_line", "hstates", "init_mm", "PG_head", "VMCOREINFO",
            "pgdir_shift", "__pgtable_l5_enabled", "hugetlb_optimize_vmemmap_key"} <= objects
    assert {"struct page", "struct hstate", "struct folio"} <= types
