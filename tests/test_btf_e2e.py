"""
End to end without the debug package, through the real command line:
``vmemspect vmcore DUMP`` with no ``-s`` (drgn's default search finds no
vmlinux for these kernels, so the types come from the BTF inside the dump)
must print the same JSON as with ``-s VMLINUX`` (DWARF), on a 6.12 and a
7.2 dump, and nothing on stderr.

Every command on every real dump with a -dbg vmlinux (decode too) is
compared in tests/test_btf_parity.py, in one process per dump; this file
keeps what only a process of its own per command shows: that the command
line without -s takes the BTF path.
"""

import json

import pytest

from conftest import KERNELS, real_run, vmemspect
from vmemspect.progcache import cache_get
from vmemspect.target import open_vmcore

SCENARIO = "numa"  # two nodes, 2 MiB and 1 GiB folios: the richest dump

#: Keys and evidence lines that name the source of the types, the one thing
#: allowed to differ (prog.cache["vmemspect_types"] is "btf" or "dwarf").
_SOURCE_KEYS = {"types", "types_source", "type_source"}


def _without_source(doc):
    if isinstance(doc, dict):
        return {k: _without_source(v) for k, v in doc.items() if k not in _SOURCE_KEYS}
    if isinstance(doc, list):
        return [_without_source(v) for v in doc
                if not (isinstance(v, str) and ("BTF" in v or "DWARF" in v))]
    return doc


@pytest.fixture(scope="module", params=KERNELS)
def run(request):
    run = real_run(request.param, SCENARIO)
    prog = open_vmcore(run["kdump"])
    # Not a skip: if drgn's default search found a vmlinux here, the BTF path
    # would be tested nowhere.
    assert cache_get(prog, "types") == "btf", (
        "drgn's default search found a vmlinux for this kernel: without -s the "
        "types are DWARF too, and the BTF path goes untested (remove it)")
    return run


@pytest.fixture(autouse=True)
def no_debuginfod(monkeypatch):
    # drgn would download the vmlinux if told where (it is not, here).
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)


@pytest.mark.parametrize("command", ["report", "verify"])
def test_btf_json_equals_dwarf(run, command):
    btf = vmemspect("vmcore", run["kdump"], command, "--json", check_rc=(0, 1))
    dwarf = vmemspect("vmcore", run["kdump"], "-s", run["vmlinux"], command, "--json",
                      check_rc=(0, 1))
    assert btf.returncode == dwarf.returncode
    assert btf.stderr == ""
    b, d = json.loads(btf.stdout), json.loads(dwarf.stdout)
    assert _without_source(b) == _without_source(d)


def test_types_source_is_marked(run):
    assert cache_get(open_vmcore(run["kdump"]), "types") == "btf"
    assert cache_get(open_vmcore(run["kdump"], run["vmlinux"]), "types") == "dwarf"
