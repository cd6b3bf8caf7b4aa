#!/usr/bin/env python3
"""
How long opening a dump takes with DWARF (-s VMLINUX) and with BTF (no -s:
the types come from the BTF inside the dump), on the same dump.

usage: .venv/bin/python scripts/bench/bench-open.py [--runs N] [--cold] [DUMP VMLINUX]
       .venv/bin/python scripts/bench/bench-open.py [--runs N] [--cold] --run DIR   (a test bed run: DIR/run.json)

Without arguments: the 7.2 hvo-2m run of the test bed's cache. Each
measurement runs in a fresh Python process; the median of N runs is shown
(the first DWARF run also pays for reading the vmlinux from disk if it is
not in the page cache). "open" is open_vmcore() plus the kernel model (the
first use of the types: struct page, zone, folio, hstate, enums, globals);
"report" is the whole `vmemspect vmcore DUMP --json` command. --cold drops
the dump and the vmlinux (only those two files) from the page cache before
each run (posix_fadvise DONTNEED), as after a download.

Fills: docs/btf.md, "Timings".
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
# The tree measured, which need not be the one installed (its import is timed).
sys.path.insert(0, sys.argv[1])
from vmemspect.target import open_vmcore
from vmemspect.kernel import kernel_model
t1 = time.perf_counter()
prog = open_vmcore(sys.argv[2], sys.argv[3] or None)
t2 = time.perf_counter()
kernel_model(prog)
t3 = time.perf_counter()
out = {"types": prog.cache.get("vmemspect_types"), "import": t1 - t0, "open": t2 - t1,
       "model": t3 - t2, "open+model": t3 - t1,
       "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
btf = prog.cache.get("vmemspect_btf")
if btf is not None:
    from vmemspect.btf import Btf, read_btf_from_memory
    t = time.perf_counter(); data = read_btf_from_memory(prog); out["btf_read"] = time.perf_counter() - t
    t = time.perf_counter(); b = Btf(data); out["btf_parse"] = time.perf_counter() - t
    t = time.perf_counter(); b.ids_by_name("page"); out["btf_name_index"] = time.perf_counter() - t
    t = time.perf_counter(); b.enumerator("PG_head"); out["btf_enum_index"] = time.perf_counter() - t
    out["btf_bytes"] = len(data); out["btf_types"] = b.nr_types
print(json.dumps(out))
"""


def evict(*paths: str) -> None:
    """Drop these files' pages from the page cache (clean pages only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


COLD = False


def child(dump: str, vmlinux: str, evict_also: str = "") -> dict:
    if COLD:
        evict(dump, *[p for p in (vmlinux, evict_also) if p])
    p = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), dump, vmlinux],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def command(args: list, files: tuple) -> float:
    if COLD:
        evict(*files)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DEBUGINFOD_URLS", None)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vmemspect", *args], capture_output=True, check=True,
                   env=env, cwd=str(ROOT))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--run", help="a test bed run directory (with run.json)")
    ap.add_argument("--cold", action="store_true",
                    help="evict the dump and the vmlinux from the page cache before each run")
    ap.add_argument("dump", nargs="?")
    ap.add_argument("vmlinux", nargs="?")
    a = ap.parse_args()
    global COLD
    COLD = a.cold
    if a.dump is None:
        run_dir = Path(a.run or Path(os.environ.get("VMEMSPECT_CACHE")
                                     or Path.home() / ".cache" / "vmemspect")
                       / "test-runs" / "7.2-hvo-2m")
        run = json.loads((run_dir / "run.json").read_text())
        a.dump, a.vmlinux = run["kdump"], run["vmlinux"]
    print(f"dump     {a.dump} ({os.path.getsize(a.dump) / 2**20:.0f} MiB)")
    print(f"vmlinux  {a.vmlinux} ({os.path.getsize(a.vmlinux) / 2**20:.0f} MiB)")
    print("page cache: " + ("dump and vmlinux evicted before each run" if a.cold else "warm"))
    results = {}
    for mode, vmlinux in (("dwarf", a.vmlinux), ("btf", "")):
        runs = [child(a.dump, vmlinux, a.vmlinux) for _ in range(a.runs)]
        if runs[0]["types"] != mode:
            print(f"warning: {mode} run used {runs[0]['types']} types "
                  "(a vmlinux is installed where drgn searches?)")
        results[mode] = runs
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]
               if isinstance(runs[0][k], float)}
        line = (f"{mode:5}  open {med['open']:.3f} s  + kernel model {med['model']:.3f} s"
                f"  = {med['open+model']:.3f} s   max RSS {med['maxrss_mb']:.0f} MB"
                f"   (first run {runs[0]['open+model']:.3f} s; median of {a.runs})")
        print(line)
        if mode == "btf":
            r = runs[-1]
            print(f"       of which: BTF read {med['btf_read']:.3f} s, parse "
                  f"{med['btf_parse']:.3f} s ({r['btf_bytes'] / 2**20:.1f} MiB, "
                  f"{r['btf_types']} types), name index {med['btf_name_index']:.3f} s, "
                  f"enumerator index {med['btf_enum_index']:.3f} s")
    for mode, extra in (("dwarf", ["-s", a.vmlinux]), ("btf", [])):
        times = [command(["vmcore", a.dump, *extra, "--json"], (a.dump, a.vmlinux))
                 for _ in range(a.runs)]
        shown = "-s VMLINUX " if extra else ""
        print(f"{mode:5}  vmemspect vmcore DUMP {shown}--json: "
              f"{statistics.median(times):.2f} s (median of {a.runs}, whole command)")


if __name__ == "__main__":
    main()
