"""
From the host against a running guest: drgn attaches to QEMU over QMP
(`drgn --qemu SOCKET`, the test bed's spare QMP socket while the guest
waits) and runs %vmemspect on the live guest memory.
"""

import json
import subprocess
import sys

import pytest

from conftest import FORM, KERNELS, run_dir

import testbed

CODE = ("from drgn.commands import run_command\n"
        "rc = run_command(prog, 'vmemspect --json')\n"
        "print('RC', rc)\n")


@pytest.mark.parametrize("series", KERNELS)
def test_drgn_qemu_attach(series):
    attached = {}

    def on_ready(info):
        kdir = testbed.fetch_kernel(series)
        p = subprocess.run([sys.executable, "-m", "drgn", "--qemu", info["qmp"],
                            "-s", str(kdir / "vmlinux"), "-q", "-e", CODE],
                           capture_output=True, text=True, timeout=600)
        attached["result"] = p

    run = testbed.run_scenario(series, "hvo-2m", run_dir() / f"{series}-qemu-attach",
                               on_ready=on_ready)
    p = attached["result"]
    assert p.returncode == 0, p.stderr
    out, rc = p.stdout.rsplit("RC ", 1)
    assert rc.strip() == "0"
    doc = json.loads(out)
    truth = run["truth"]
    assert doc["kernel"]["release"] == truth["uname"]
    assert doc["kernel"]["form"] == FORM[series]
    assert sum(g["total"] for g in doc["groups"]) == truth["meminfo"]["HugePages_Total"] == 64
    assert sum(g["optimized"] for g in doc["groups"]) == 64
    assert doc["verify"]["ok"] and doc["verify"]["checked_folios"] == 64
    assert doc["savings"]["saved_pages"] == 64 * truth["vmemmap_freeable_kib"]["2048"] // 4
