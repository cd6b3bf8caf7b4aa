"""
Runs inside the test bed's live guest (chrooted in the host's root over
virtiofs, as the guest's root, on the guest's /proc/kcore); prints one JSON
document for tests/test_live.py. Steps:

1. ``vmemspect live -s VMLINUX report --json`` and ``verify --json``
   (the command line, end to end);
2. churn: a shell loop allocates and frees huge pages, toggling
   vm.hugetlb_optimize_vmemmap, while vmemspect scans the kernel over and
   over on one open program; each scan's confirmed findings and transient
   ones are recorded;
3. privileges: a child process drops to uid 65534 and tries to open the
   live kernel.
"""

import json
import os
import subprocess
import sys
import time

VMLINUX = os.environ["VMEMSPECT_VMLINUX"]
SCANS = int(os.environ.get("VMEMSPECT_LIVE_SCANS", "12"))
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
SYSCTL = "/proc/sys/vm/hugetlb_optimize_vmemmap"


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "vmemspect", "live", "-s", VMLINUX, *args,
                        "--json"], capture_output=True, text=True)
    return {"rc": p.returncode, "stderr": p.stderr[-2000:],
            "doc": json.loads(p.stdout) if p.stdout.strip() else None}


def churn_and_scan():
    from vmemspect.report import build_report
    from vmemspect.target import open_live

    loop = subprocess.Popen(
        # Growing the pool is slow and lands in one batch, shrinking is
        # quick: hold each size a little so that scans see both.
        ["sh", "-c", f"i=0; while :; do i=$((i+1)); echo $((i % 2)) > {SYSCTL}; "
                     f"echo 96 > {NR}; sleep 0.2; echo 48 > {NR}; sleep 0.2; done"])
    scans = []
    try:
        prog = open_live(VMLINUX)
        for _ in range(SCANS):
            # The loop resizes the pool in batches: spread the scans out so
            # that they meet it in different states.
            time.sleep(0.3)
            t = time.monotonic()
            r = build_report(prog)
            scans.append({
                "folios": len(r.folios),
                "findings": [f.line() for f in r.findings],
                "transient": len(r.transient),
                "unknown": len(r.unknown),
                "seconds": round(time.monotonic() - t, 2),
            })
    finally:
        loop.kill()
        loop.wait()
    with open(NR, "w") as f:
        f.write("64\n")
    return scans


def unprivileged():
    from vmemspect.errors import VmemspectError
    from vmemspect.target import open_live

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setgid(65534)
        os.setuid(65534)
        try:
            open_live(VMLINUX)
            msg = "opened"
        except VmemspectError as e:
            msg = "error: " + str(e)
        except BaseException as e:  # anything else is a bug to report
            msg = f"crash: {type(e).__name__}: {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    return os.read(r, 4096).decode()


def main():
    out = {"report": cli(), "verify": cli("verify")}
    out["unprivileged"] = unprivileged()
    out["churn"] = churn_and_scan()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
