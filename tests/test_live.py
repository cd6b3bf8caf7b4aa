"""
`vmemspect live` inside a real guest (the test bed's live scenario: the
host's root over virtiofs, drgn on the guest's /proc/kcore), on both
kernels: the report and verify agree with the guest's truth, a non-root
user gets one clear error, and a kernel allocating and freeing huge pages
under the scan (with the sysctl toggling) yields no false violations.
"""

import json

import pytest

from conftest import FORM, KERNELS, live_run


@pytest.fixture(scope="module", params=KERNELS)
def live(request):
    run = live_run(request.param)
    assert run["guest_cmd_rc"] == 0, run["guest_cmd_stderr"]
    return request.param, run, json.loads(run["guest_cmd_output"])


def test_live_report_matches_guest(live):
    series, run, out = live
    truth = run["truth"]
    rep = out["report"]
    assert rep["rc"] == 0, rep["stderr"]
    doc = rep["doc"]
    assert doc["kernel"]["release"] == truth["uname"]
    assert doc["kernel"]["form"] == FORM[series]
    total = sum(g["total"] for g in doc["groups"])
    assert total == truth["meminfo"]["HugePages_Total"] == 64
    assert sum(g["optimized"] for g in doc["groups"]) == 64
    assert doc["savings"]["saved_pages"] == 64 * truth["vmemmap_freeable_kib"]["2048"] // 4


def test_live_verify_clean(live):
    _, _, out = live
    v = out["verify"]
    assert v["rc"] == 0, v["stderr"]
    assert v["doc"]["ok"] is True and v["doc"]["findings"] == []


def test_live_needs_root(live):
    _, _, out = live
    msg = out["unprivileged"]
    assert msg.startswith("error: "), msg
    assert "permission denied" in msg and "root" in msg


def test_live_churn_no_false_violations(live):
    _, _, out = live
    scans = out["churn"]
    assert len(scans) == 12
    # The kernel really changed under the scans...
    assert len({s["folios"] for s in scans}) > 1, scans
    # ...and no scan reported a violation that did not hold.
    assert all(s["findings"] == [] for s in scans), scans


def test_live_under_lockdown_confidentiality():
    """As root on a kernel booted with lockdown=confidentiality, /proc/kcore
    is forbidden by the lockdown, not by permissions: the one-line error
    says so and points to a kdump vmcore, exit 2."""
    run = live_run("7.2", 'id -u; python3 -m vmemspect live verify; echo "rc=$?"; '
                          'mount -t securityfs none /sys/kernel/security; '
                          'cat /sys/kernel/security/lockdown; '
                          'python3 -m vmemspect live verify; echo "rc=$?"',
                   name="live-lockdown", extra_cmdline="lockdown=confidentiality")
    out = run["guest_cmd_output"].splitlines()
    assert out == ["0", "rc=2", "none integrity [confidentiality]", "rc=2"], out
    err = run["guest_cmd_stderr"].strip().splitlines()
    assert len(err) == 2, err
    # Without securityfs the mode cannot be read: root refused, said so.
    assert err[0].startswith("vmemspect: error: cannot read /proc/kcore although running "
                             "as root: the kernel's lockdown")
    assert err[1].startswith("vmemspect: error: the kernel's lockdown (confidentiality")
    assert all("vmemspect vmcore DUMP" in e for e in err)
