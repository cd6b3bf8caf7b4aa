"""
Shared fixtures. Real-kernel runs come from scripts/testbed (the package): each
(kernel, scenario) is booted once per test session under QEMU, its ground
truth parsed from the guest's console, and its memory dumped.

VMEMSPECT_REUSE_RUNS=1 reuses the runs of an earlier session (for a
developer iterating on tests; CI always boots).  VMEMSPECT_TEST_RUNS=DIR
puts the runs there instead of the cache's test-runs/ (a second checkout
testing beside another on the same machine).
"""

import contextlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path


# vmemspect and the test bed (scripts/testbed) are packages installed,
# editable, in this checkout's .venv by scripts/deps.sh.
import testbed

ROOT = Path(__file__).resolve().parent.parent

#: The encoding each Debian kernel of the test bed uses (hvo-facts.md), from
#: the test bed's kernel registry (scripts/testbed/kernels.py).
FORM = {k.id: k.form for k in testbed.KERNELS.values()}
#: The full matrix run (scripts/test.sh --full): every kernel in every
#: scenario, and longer fuzzing.
FULL = bool(os.environ.get("VMEMSPECT_FULL"))
#: Every scenario, corruption and live test on every commit: one kernel of
#: each form.
KERNELS = ("6.12", "7.2")
#: Every x86_64 kernel of the registry (scripts/testbed/kernels.py): on every
#: commit in one scenario (hvo-2m; Debian 12's 6.1 is where vmemspect once
#: gave a false finding per folio), in every scenario in the full run.
MATRIX = tuple(k.id for k in testbed.KERNELS.values() if k.arch == "x86_64")
#: The riscv64 kernels of the registry (tests/test_real_kernels.py and
#: tests/test_riscv.py): their QEMU dumps are ELF only and carry no
#: VMCOREINFO (the run's vmcoreinfo.txt goes with --vmcoreinfo, see
#: types_args()).
RISCV = tuple(k.id for k in testbed.KERNELS.values() if k.arch == "riscv64")

_runs = {}

def run_dir() -> Path:
    return Path(os.environ.get("VMEMSPECT_TEST_RUNS") or testbed.cache_dir() / "test-runs")


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
        attempts = testbed.kernel(series).boot_attempts
        for attempt in range(1, attempts + 1):
            try:
                run = testbed.run_scenario(series, scenario, out, **options)
                break
            except testbed.TestbedError as e:
                # TCG has been seen to crash guests at boot (docs/testbed.md:
                # one kernel often, the others not in 30 boots): boot again,
                # loudly, as many times as the registry allows that kernel.
                print(f"\n*** test bed: {series} {scenario}: boot {attempt} of {attempts} "
                      f"FAILED: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
                if attempt == attempts:
                    raise
        run["boot_attempts"] = attempt
        saved.write_text(json.dumps(run, indent=1) + "\n")
    _runs[name] = run
    return run


def real_run(series: str, scenario: str, elf: bool = False, aftermath: bool = False) -> dict:
    """Boot ``series`` in ``scenario`` (once per session) and return the run.
    ``aftermath``: after the dump the guest releases its holds and empties
    its pools; run["aftermath"] says what the kernel did (testbed/aftermath.py)."""
    name = f"{series}-{scenario}{'-elf' if elf else ''}{'-aftermath' if aftermath else ''}"
    options = {"elf": elf}
    if aftermath:
        options["aftermath"] = True
    return _run(name, series, scenario, **options)


def script(name: str):
    """scripts/``name``.py loaded as a module (a script users run is not a
    package: it is loaded from its path, under its name with ``_`` for
    ``-``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace("-", "_"),
                                                  ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(name: str, *args: str, timeout: float = 300) -> str:
    """scripts/bench/``name``.py run as a developer runs it (this Python,
    a process of its own); assert it exits 0; its stdout."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / f"{name}.py"), *args],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


def kernel_saved_pages(truth: dict) -> int:
    """What the guest's memmap counters say HVO freed (6.10+): the memmap of
    all its memory blocks (4 KiB pages, 64-byte struct pages) less
    nr_memmap_pages and nr_memmap_boot_pages, from its own /proc/vmstat and
    sysfs."""
    vmstat = truth["vmstat"]
    sections = sum(len(b) for b in truth["node_memory_blocks"].values())
    without_hvo = sections * truth["memory_block_size"] // 4096 * 64 // 4096
    return without_hvo - vmstat["nr_memmap_pages"] - vmstat["nr_memmap_boot_pages"]


def types_args(run: dict) -> list:
    """``-s VMLINUX`` for kernels fetched with their -dbg; nothing for the
    others (the rt kernels), which vmemspect reads through their own BTF.
    For a run whose QEMU dumps carry no VMCOREINFO (riscv64) also
    ``--vmcoreinfo`` with the text the test bed read out of the dump."""
    args = ["-s", run["vmlinux"]] if run.get("vmlinux") else []
    if run.get("vmcoreinfo"):
        args += ["--vmcoreinfo", run["vmcoreinfo"]["path"]]
    return args


def capture_run(series: str, source: str, scenario: str = "hvo-2m") -> dict:
    """Boot ``series`` in ``scenario`` (once per session) and dump it twice:
    QEMU's kdump-zlib of the guest armed for kdump (run["kdump"]; riscv64:
    QEMU's ELF, run["elf"], and the run's vmcoreinfo.txt), then a
    real kdump capture by dump source ``source`` (capture-VARIANT-BUILD,
    scripts/testbed/kdump.py) of that same state (run[source])."""
    # riscv64: QEMU's ELF (its kdump-zlib has no VMCOREINFO and no machine).
    first = "kdump" if testbed.kernel(series).arch_info.vmcoreinfo_device else "elf"
    return _run(f"{series}-{scenario}-{source}", series, scenario, dumps=[first, source])


def vmemspect(*args: str, check_rc=(0,)) -> subprocess.CompletedProcess:
    """Run the installed command line; assert its exit status."""
    p = subprocess.run([sys.executable, "-m", "vmemspect", *args],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode in check_rc, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p


def vmemspect_json(run: dict, *command: str, dump: str = None, check_rc=(0,)) -> dict:
    p = vmemspect("vmcore", dump or run["kdump"] or run["elf"], *types_args(run), *command, "--json",
                  check_rc=check_rc)
    return json.loads(p.stdout)


def live_run(series: str, guest_cmd: str = "python3 tests/live_guest.py",
             name: str = "live-guest", extra_cmdline: str = "") -> dict:
    """The live scenario running ``guest_cmd`` inside the guest, chrooted
    in this machine's root, in this checkout with this checkout's package.
    The guest's commands take 11-100 s (x86_64) and 50-72 s (riscv64): 600 s
    ends a stalled one early, and the boot is retried. Seen once in a cold
    CI run: two python3 in the 6.12 guest blocked for 17 minutes in
    filemap_fault on a virtiofs file, the guest idle (a virtiofs stall, not
    vmemspect)."""
    return _run(f"{series}-{name}", series, "live", guest_cmd=guest_cmd,
                guest_cwd=str(ROOT), guest_env={"PYTHONPATH": str(ROOT)},
                extra_cmdline=extra_cmdline, cmd_timeout=600.0)


@contextlib.contextmanager
def patched(path: str, phys: int, new: int):
    """Write the 8-byte word ``new`` at physical address ``phys`` of an ELF
    dump; put the old one back afterwards."""
    off = testbed.elf_phys_offset(path, phys)
    with open(path, "r+b") as f:
        f.seek(off)
        old = f.read(8)
        f.seek(off)
        f.write(struct.pack("<Q", new))
    try:
        yield struct.unpack("<Q", old)[0]
    finally:
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(old)


_UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config, items):
    """Every test outside tests/unit/ may boot a guest or need a fetched
    kernel: it is marked ``qemu`` by its folder, so the mark cannot be
    forgotten (``pytest tests/unit`` and ``pytest -m "not qemu"`` run the
    same guest-free tests)."""
    import pytest

    for item in items:
        if _UNIT not in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.qemu)
