#!/usr/bin/env python3
"""Every command's output on every fixture and on a test run's real dumps,
one file each, to compare two versions of vmemspect byte for byte.

    python3 scripts/output-snapshot.py OUT [--code DIR] [--runs DIR] [--extract] [-j N]

Runs ``python -m vmemspect vmcore DUMP ...`` for 17 command lines (the
report, folios, tails, verify, savings, metrics, decode, in text and JSON,
with workers and with ``--jobs 1``) on ``fixtures/*.kdump`` and on the real
dumps of ``--runs`` (a test-runs directory of the test bed, e.g.
``~/.cache/vmemspect/test-runs``), writing ``OUT/NAME__COMMAND``: the exit
status, stdout and stderr, with times and timestamps masked. ``--code DIR``
runs the vmemspect package found in DIR (a checkout or ``git worktree`` of
another commit) instead of this one. ``--extract`` instead writes each
extract's sha256 (fixtures and four real dumps). Then::

    diff -r OLD NEW

Issue 21's restructuring was checked this way: the only difference between
aff2803 and the restructured tree was the new ``"defaults": []`` in the
JSON kernel section; every extract's sha256 was equal.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = ("7.2-mixed", "6.12-mixed", "6.1-hvo-2m", "7.3-hvo-2m", "6.12-hvo-1g", "7.2-hotplug",
        "6.12-rare-aftermath", "7.2-rare-aftermath", "6.12-rt-hvo-2m", "7.2-numa", "6.12-hvo-off",
        "7.2-riscv64-mixed", "6.12-riscv64-mixed", "7.2-hvo-2m-elf", "6.12-bpo-hvo-2m")
EXTRACTED = ("7.2-mixed", "6.12-mixed", "6.1-hvo-2m", "7.3-hvo-2m")
COMMANDS = (
    [], ["--json"], ["folios"], ["folios", "--json"], ["folios", "--jobs", "1"],
    ["folios", "--state", "free", "--optimized"], ["folios", "--hstate", "2M", "--format", "github"],
    ["tails"], ["tails", "--json"], ["verify"], ["verify", "--json"], ["verify", "--jobs", "1"],
    ["savings"], ["savings", "--json"], ["metrics"], ["metrics", "--fast"], ["decode", "pfn:0x1000"],
    ["tails", "--jobs", "1"], ["savings", "--jobs", "1", "--json"],
)


def mask(text: str) -> str:
    """Mask what differs from run to run: times and timestamps."""
    text = re.sub(r'"(seconds|elapsed|wall_seconds|cpu_seconds|duration)[a-z_]*": [0-9.e-]+',
                  r'"\1": X', text)
    text = re.sub(r"(vmemspect_(scan_duration|scan_timestamp|scan_cpu|last_success_timestamp)"
                  r"_seconds[^ ]*) \S+", r"\1 X", text)
    return re.sub(r"in [0-9.]+ ?s\b", "in X s", text)


def dumps(runs: Path | None) -> list[tuple[str, list[str]]]:
    """(name, target arguments) of every dump."""
    out = [("fx-" + p.stem, [str(p)]) for p in sorted((ROOT / "fixtures").glob("*.kdump"))]
    for name in REAL if runs else ():
        d = runs / name
        if not (d / "run.json").is_file():
            continue
        run = json.loads((d / "run.json").read_text())
        core = d / "vmcore.kdump" if (d / "vmcore.kdump").exists() else d / "vmcore.elf"
        args = [str(core)] + (["-s", run["vmlinux"]] if run.get("vmlinux") else [])
        if (d / "vmcoreinfo.txt").exists():
            args += ["--vmcoreinfo", str(d / "vmcoreinfo.txt")]
        out.append((name, args))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--code", type=Path, help="run the vmemspect package in this directory")
    ap.add_argument("--runs", type=Path, help="a test-runs directory with real dumps")
    ap.add_argument("--extract", action="store_true", help="extracts' sha256 instead")
    ap.add_argument("-j", "--jobs", type=int, default=2)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VMEMSPECT_DEBUG="1")
    if a.code:
        env["PYTHONPATH"] = str(a.code.resolve())
    jobs = []
    for name, target in dumps(a.runs):
        if a.extract:
            if name.startswith("fx-") or name in EXTRACTED:
                jobs.append((name, target, ["extract", str(a.out / f"{name}.kdump")]))
        else:
            jobs += [(name, target, cmd) for cmd in COMMANDS]

    def one(job) -> None:
        name, target, cmd = job
        # Outside the checkout, so that --code decides which vmemspect runs.
        p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", *target, *cmd],
                           capture_output=True, text=True, env=env, cwd="/")
        extra = ""
        if cmd[:1] == ["extract"]:
            path = Path(cmd[1])
            extra = f"sha256={hashlib.sha256(path.read_bytes()).hexdigest()}\n"
            path.unlink()
            stdout = p.stdout.replace(str(path), "OUT")
            label = "extract"
        else:
            stdout = p.stdout
            label = "_".join(cmd).replace(":", "_") or "report"
        (a.out / f"{name}__{label}").write_text(
            f"rc={p.returncode}\n{extra}--stdout--\n{mask(stdout)}--stderr--\n{mask(p.stderr)}")

    with ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(one, jobs))
    print(f"{len(jobs)} outputs in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
