"""
Shared fixtures. Real-kernel runs come from scripts/testbed.py: each
(kernel, scenario) is booted once per test session under QEMU, its ground
truth parsed from the guest's console, and its memory dumped.

VMEMSPECT_REUSE_RUNS=1 reuses the runs of an earlier session (for a
developer iterating on tests; CI always boots).
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# This checkout's package and tests first (not another installed checkout),
# then scripts/ for the test bed.
for _path in (str(ROOT / "scripts"), str(ROOT / "tests"), str(ROOT)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

import testbed  # noqa: E402

#: The encoding each Debian kernel of the test bed uses (hvo-facts.md).
FORM = {"6.12": "pointer", "7.2": "mask"}
KERNELS = ("6.12", "7.2")

_runs = {}

#: Kernels that scripts/fetch-kernel.sh does not fetch but a test may boot
#: when they are in the cache already (Debian 12's 6.1: cache dir by glob).
CACHED_KERNELS = {"6.1": "6.1.*-cloud-amd64"}


def cached_kernel(series: str):
    """The cache directory of a CACHED_KERNELS kernel (with its DWARF
    vmlinux), or None when it is not there."""
    pattern = CACHED_KERNELS.get(series)
    if not pattern:
        return None
    for d in sorted((testbed.cache_dir() / "kernels").glob(pattern), reverse=True):
        if all((d / f).is_file() for f in ("vmlinuz", "qemu_fw_cfg.ko", "release", "vmlinux")):
            return d
    return None


@contextlib.contextmanager
def _kernel_source(series: str):
    """Boot a CACHED_KERNELS series from the cache (the test bed's
    fetch_kernel would ask fetch-kernel.sh, which does not know it)."""
    kdir = cached_kernel(series)
    if series not in CACHED_KERNELS:
        yield
        return
    if kdir is None:
        pytest.skip(f"kernel {series} is not in the cache ({CACHED_KERNELS[series]})")
    saved = testbed.fetch_kernel
    testbed.fetch_kernel = lambda _series, dbg=True: kdir
    try:
        yield
    finally:
        testbed.fetch_kernel = saved


def run_dir() -> Path:
    return testbed.cache_dir() / "test-runs"


def _run(name: str, series: str, scenario: str, **options) -> dict:
    """Boot ``series`` in ``scenario`` once per session (or reuse an earlier
    session's run with VMEMSPECT_REUSE_RUNS=1) into test-runs/``name``."""
    if name in _runs:
        return _runs[name]
    out = run_dir() / name
    saved = out / "run.json"
    if os.environ.get("VMEMSPECT_REUSE_RUNS") and saved.exists():
        run = json.loads(saved.read_text())
    else:
        with _kernel_source(series):
            try:
                run = testbed.run_scenario(series, scenario, out, **options)
            except testbed.TestbedError as e:
                # TCG has been seen to oops a guest at boot now and then (7.2:
                # "Oops: int3" in sched_clock_cpu while patching a static key):
                # boot once more, and say so.
                print(f"test bed: {series} {scenario} failed, booting again: "
                      f"{str(e).splitlines()[0]}", file=sys.stderr)
                run = testbed.run_scenario(series, scenario, out, **options)
    _runs[name] = run
    return run


def real_run(series: str, scenario: str, elf: bool = False, aftermath: bool = False) -> dict:
    """Boot ``series`` in ``scenario`` (once per session) and return the run.
    ``aftermath``: after the dump the guest releases its holds and empties
    its pools; run["aftermath"] says what the kernel did (testbed.py)."""
    name = f"{series}-{scenario}{'-elf' if elf else ''}{'-aftermath' if aftermath else ''}"
    options = {"elf": elf}
    if aftermath:
        options["aftermath"] = True
    return _run(name, series, scenario, **options)


def vmemspect(*args: str, check_rc=(0,)) -> subprocess.CompletedProcess:
    """Run the installed command line; assert its exit status."""
    p = subprocess.run([sys.executable, "-m", "vmemspect", *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode in check_rc, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p


def vmemspect_json(run: dict, *command: str, dump: str = None, check_rc=(0,)) -> dict:
    p = vmemspect("vmcore", dump or run["kdump"], "-s", run["vmlinux"], *command, "--json",
                  check_rc=check_rc)
    return json.loads(p.stdout)


def live_run(series: str, guest_cmd: str = "python3 tests/live_guest.py",
             name: str = "live-guest") -> dict:
    """The live scenario running ``guest_cmd`` inside the guest, chrooted
    in this machine's root, in this checkout with this checkout's package."""
    return _run(f"{series}-{name}", series, "live", guest_cmd=guest_cmd,
                guest_cwd=str(ROOT), guest_env={"PYTHONPATH": str(ROOT)})
