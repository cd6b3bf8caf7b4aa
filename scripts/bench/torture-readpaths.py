#!/usr/bin/env python3
"""Measure the torture run's read paths on one guest (docs/torture.md):
what a check after a step costs when vmemspect verify reads the guest's
memory (a) from its RAM files in /dev/shm (in-process drgn Program over
mmap'd files: what torture.py does), (b) over QMP with drgn's own QEMU
attach (Program.set_qemu_qmp), (c) from a QMP dump-guest-memory kdump-zlib
file (reassembled, opened with vmemspect.target.open_vmcore).

    .venv/bin/python scripts/bench/torture-readpaths.py [KERNEL_ID [POOL_2M]]
                                                        [--paths shm,qmp,kdump]

KERNEL_ID defaults to 7.2, POOL_2M (2 MiB pages in the pool) to 1000;
``--paths`` measures only those (the kdump path dumps the whole 5 GiB
guest: about 25-40 s here). One JSON object on stdout.

Fills: docs/torture.md, "Read paths" (and the cost in "The check after
every step, and what it costs").
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from testbed import torture as T
from vmemspect.report import build_report
from vmemspect.documents import verify_doc
from vmemspect.target import open_vmcore


def _shm(g, out: Path) -> dict:
    """(a) The guest's RAM files, in-process (what torture.py does)."""
    g.check()                       # debug info once
    ts = []
    for _ in range(5):
        c = g.check()
        ts.append(c["seconds"])
    return {"check_s": ts, "folios": c["checked_folios"],
            "debug_info_s": g.timings.get("debug_info_s")}


#: (b) drgn's QMP attach, in a child process with a time limit: it was seen
#: to wait forever on a paused guest.
_QMP_CHILD = ("import sys, time, drgn\n"
              "from vmemspect.target import load_debug_info\n"
              "from vmemspect.report import build_report\n"
              "from vmemspect.documents import verify_doc\n"
              "t0 = time.monotonic(); prog = drgn.Program()\n"
              "prog.set_qemu_qmp(sys.argv[1]); t1 = time.monotonic()\n"
              "load_debug_info(prog, sys.argv[2] if sys.argv[2] != '-' else None)\n"
              "t2 = time.monotonic(); doc = verify_doc(build_report(prog))\n"
              "print(round(t1 - t0, 2), round(t2 - t1, 2), round(time.monotonic() - t2, 2), "
              "doc['ok'], doc['checked_folios'])\n")


def _qmp(g, out: Path) -> list:
    """(b) drgn's QMP attach, the guest running, then paused."""
    ts = []
    for paused in (False, True):
        if paused:
            g.qmp.cmd("stop")
        t0 = time.monotonic()
        try:
            p = subprocess.run([sys.executable, "-c", _QMP_CHILD, str(g.tmp / "qmp-spare.sock"),
                                g.vmlinux or "-"], capture_output=True, text=True, timeout=90)
            w = p.stdout.split()
            ts.append({"paused": paused, "total_s": round(time.monotonic() - t0, 2),
                       **({"attach_s": float(w[0]), "debug_info_s": float(w[1]),
                           "verify_s": float(w[2]), "ok": w[3], "folios": int(w[4])}
                          if len(w) == 5 else {"error": (p.stderr or p.stdout)[-800:]})})
        except subprocess.TimeoutExpired:
            ts.append({"paused": paused, "error": "no answer in 90 s"})
        finally:
            if paused:
                g.qmp.cmd("cont")
    return ts


def _kdump(g, out: Path) -> dict:
    """(c) A kdump-zlib dump of the paused guest, reassembled and opened."""
    t0 = time.monotonic()
    g.qmp.cmd("stop")
    d = g.dump(out / "readpaths.kdump")
    t1 = time.monotonic()
    g.qmp.cmd("cont")
    p = open_vmcore(str(d), g.vmlinux)
    t2 = time.monotonic()
    doc = verify_doc(build_report(p))
    t3 = time.monotonic()
    res = {"dump_and_reassemble_s": round(t1 - t0, 2), "open_s": round(t2 - t1, 2),
           "verify_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2),
           "bytes": d.stat().st_size, "ok": doc["ok"], "folios": doc["checked_folios"]}
    d.unlink()
    return res


#: Each read path's measure, under its name in the JSON.
MEASURE = {"shm": _shm, "qmp": _qmp, "kdump": _kdump}
PATHS = tuple(MEASURE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", nargs="?", default="7.2")
    ap.add_argument("pool", nargs="?", type=int, default=1000, help="2 MiB pages in the pool")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma-separated, of {', '.join(PATHS)} (default: all)")
    a = ap.parse_args()
    paths = a.paths.split(",")
    if not set(paths) <= set(PATHS):
        ap.error(f"--paths: not a read path: {', '.join(sorted(set(paths) - set(PATHS)))}")
    kid, pool = a.kernel, a.pool
    out = Path(T.runs_dir()) / f"readpaths-{kid}"
    res = {"kernel": kid, "pool_2m": pool}
    with T.TortureGuest(T.GuestConfig(kernel=kid), out) as g:
        r = g.agent(f"op_pool 2048 all {pool}; op_pool 1048576 all 1; state")
        res["state"] = r["out"].splitlines()[-8:]
        for path in paths:
            res[path] = MEASURE[path](g, out)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
