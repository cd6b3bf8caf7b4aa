#!/usr/bin/env python3
"""
Boot test-bed kernels over and over (hvo-2m, no dump) and count the boots
that do not reach READY, with the console line that says why: how the test
bed's boots are shown not to flake (docs/testbed.md).

    .venv/bin/python scripts/bench/boot-soak.py --boots 30 [--kernel ID ...] [--json OUT]

Exit 1 if any boot failed.

Fills: docs/testbed.md, "Boots that crash: measured, not retried away".
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import testbed

CRASH = re.compile(r"(Oops|BUG|Kernel panic|general protection|list_add corruption|RIP:).*")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", help="kernel id (default: every one)")
    ap.add_argument("--boots", type=int, default=30)
    ap.add_argument("--scenario", default="hvo-2m")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    kernels = a.kernel or list(testbed.KERNELS)
    out = testbed.cache_dir() / "soak"
    results = {}
    for k in kernels:
        ok, failures, seconds = 0, [], []
        for i in range(a.boots):
            t0 = time.monotonic()
            try:
                testbed.run_scenario(k, a.scenario, out / k, dumps=[])
                ok += 1
            except testbed.TestbedError as e:
                console = (out / k / "console.log").read_text(errors="replace")
                (out / k / f"console-failed-{i + 1}.log").write_text(console)
                m = CRASH.search(console)
                failures.append({"boot": i + 1, "why": str(e).splitlines()[0],
                                 "console": m.group(0) if m else None})
            seconds.append(round(time.monotonic() - t0, 1))
        results[k] = {"boots": a.boots, "ok": ok, "failures": failures,
                      "seconds_min": min(seconds), "seconds_max": max(seconds)}
        print(f"{k}: {ok}/{a.boots} boots reached READY "
              f"({min(seconds)}-{max(seconds)} s each)"
              + "".join(f"\n  boot {f['boot']}: {f['why']} [{f['console']}]" for f in failures),
              flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
