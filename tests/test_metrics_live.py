"""
`vmemspect live metrics` inside a real 7.2 guest (the test bed's live
scenario; tests/live_metrics_guest.sh runs in it): with DWARF types, with
the kernel's BTF, in --fast mode, and with only the capabilities the
systemd unit keeps (setpriv bounding sets); what drgn's live mode opens
(strace). Expected values are the guest's own (sysfs, /proc/vmstat).
"""

import re
from pathlib import Path

import pytest

from conftest import live_run
from test_metrics_real import kernel_saved_pages
from test_monitoring import promtool_check_metrics, samples, series

PAGE = 4096


@pytest.fixture(scope="module")
def live():
    run = live_run("7.2", guest_cmd="sh tests/live_metrics_guest.sh", name="live-metrics")
    assert run["guest_cmd_rc"] == 0, run["guest_cmd_stderr"]
    out = run["guest_cmd_output"]
    steps = dict(re.findall(r"^@step (\S+) rc=(\d+)$", out, re.M))
    where = Path(re.search(r"^@out (\S+)$", out, re.M)[1])
    opened = re.search(r"^@opened (.*)$", out, re.M)[1].split()
    return run, {k: int(v) for k, v in steps.items()}, where, opened


def prom(where: Path, name: str) -> dict:
    text = (where / f"{name}.prom").read_text()
    promtool_check_metrics(text)
    return samples(text)


@pytest.mark.parametrize("step", ["dwarf", "fast", "caps_rawio_dwarf", "caps_unit_btf"])
def test_live_metrics_are_the_guests(live, step):
    """Every way of running it that should work does, and reports the
    guest's 64 optimized folios and its memmap counters' savings."""
    run, steps, where, _ = live
    truth = run["truth"]
    assert steps[step] == 0, (where / f"{step}.stderr").read_text()
    smp = prom(where, step)
    assert series(smp, "vmemspect_scan_success") == {(("reason", ""),): 1}
    saved = kernel_saved_pages(truth) * PAGE
    assert saved == 64 * 7 * PAGE
    assert series(smp, "vmemspect_vmemmap_saved_bytes") == {(): saved}
    assert series(smp, "vmemspect_kernel_vmemmap_saved_bytes") == {(): saved}
    info = dict(list(series(smp, "vmemspect_info"))[0])
    assert info["release"] == truth["uname"]
    assert info["types"] == ("btf" if "btf" in step else "dwarf")
    if "fast" not in info["mode"]:
        assert sum(series(smp, "vmemspect_hugetlb_folios").values()) == 64
        assert all(dict(k)["hvo"] == "optimized" for k in series(smp, "vmemspect_hugetlb_folios"))
        assert all(v == 0 for v in series(smp, "vmemspect_findings").values())


def test_live_without_sys_rawio_fails_and_says_why(live):
    """No CAP_SYS_RAWIO, even as root: exit 2, one line naming the
    capability, and the textfile says the run failed."""
    _, steps, where, _ = live
    assert steps["caps_none"] == 2
    err = (where / "caps_none.stderr").read_text().strip().splitlines()
    assert len(err) == 1 and "CAP_SYS_RAWIO" in err[0], err
    smp = prom(where, "caps_none")
    assert series(smp, "vmemspect_scan_success") == {(("reason", "unusable_input"),): 0}
    assert series(smp, "vmemspect_exit_status") == {(): 2}


def test_live_btf_needs_cap_syslog(live):
    """BTF types need /proc/kallsyms' real addresses: with CAP_SYS_RAWIO
    alone (no CAP_SYSLOG) the run fails; the unit keeps both."""
    _, steps, where, _ = live
    assert steps["caps_rawio_btf"] == 2, (where / "caps_rawio_btf.stderr").read_text()
    err = (where / "caps_rawio_btf.stderr").read_text().strip().splitlines()
    assert len(err) == 1 and "CAP_SYSLOG" in err[0] and "/proc/kallsyms" in err[0], err
    smp = prom(where, "caps_rawio_btf")
    assert series(smp, "vmemspect_scan_success") == {(("reason", "unusable_input"),): 0}


def test_live_mode_opens(live):
    """What drgn's live mode opens (BTF types and the unit's capabilities,
    as the unit runs by default; setpriv's own opens included):
    /proc/kcore, /proc/kallsyms, the kernel's BTF; nothing under /dev."""
    _, steps, _, opened = live
    assert steps["caps_unit_btf"] == 0
    for path in ("/proc/kcore", "/proc/kallsyms", "/sys/kernel/btf/vmlinux"):
        assert path in opened, opened
    assert not [p for p in opened if p.startswith("/dev/")], opened
