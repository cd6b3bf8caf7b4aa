"""
vmemspect inside drgn on a real dump: the plugin is found through the
installed entry point (drgn loads it at start), %vmemspect runs the same
commands as the command line, and works when drgn was started without a
vmlinux (types from the dump's BTF).
"""

import json
import subprocess
import sys

import pytest

from conftest import KERNELS, real_run, vmemspect_json


def drgn(run, code: str, vmlinux: bool) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "drgn", "-c", run["kdump"], "--architecture", "x86_64", "-q"]
    args += ["-s", run["vmlinux"], "--no-default-symbols"] if vmlinux else ["--no-default-symbols"]
    return subprocess.run(args + ["-e", code], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("series", KERNELS)
@pytest.mark.parametrize("vmlinux", [True, False], ids=["dwarf", "btf"])
def test_percent_command_matches_cli(series, vmlinux):
    run = real_run(series, "numa")
    code = ("from drgn.commands import run_command\n"
            "rc = run_command(prog, 'vmemspect verify --json')\n"
            "print('RC', rc)\n")
    p = drgn(run, code, vmlinux)
    assert p.returncode == 0, p.stderr
    out, rc = p.stdout.rsplit("RC ", 1)
    assert rc.strip() == "0"
    doc = json.loads(out)
    cli = vmemspect_json(run, "verify")
    assert doc == cli
    assert doc["ok"] and doc["checked_folios"] == len(run["truth"]["hugetlb_folios"])


def test_helpers_in_drgn():
    run = real_run("7.2", "numa")
    # drgn-shaped: a struct hstate * from drgn's own helper in, struct
    # folio * out; the records beside them.
    code = ("from drgn.helpers.linux.hugetlb import for_each_hstate\n"
            "from vmemspect.helpers import *\n"
            "k = hvo_kernel()\n"
            "h = next(h for h in for_each_hstate() if h.name.string_() == b'hugepages-2048kB')\n"
            "f = next(for_each_hugetlb_folio(h))\n"
            "assert f.type_.type_name() == 'struct folio *'\n"
            "r = next(hugetlb_folio_records(hstate='hugepages-2048kB'))\n"
            "assert r.object(prog) == f\n"
            "fv = folio_hvo(f)\n"
            "d = hvo_decode(f.value_() + 64)\n"
            "print(k.form, fv.folio.pfn, fv.tails[0].pages, d.info.head == f.value_(),"
            " len(hvo_shared_tails()), hvo_verify())\n")
    p = drgn(run, code, True)
    assert p.returncode == 0, p.stderr
    form, pfn, pages, same_head, ntails, findings = p.stdout.split(" ", 5)
    assert form == "mask"
    assert int(pfn) in {h["pfn"] for h in run["truth"]["hugetlb_folios"]}
    assert pages == "7" and same_head == "True" and ntails == "3"
    assert findings.strip() == "[]"
