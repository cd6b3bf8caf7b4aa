#!/usr/bin/env python3
"""Scale benchmark of vmemspect: ``vmemspect verify`` against the plain drgn
scan on a dump of a 256 GiB guest with 120,000 HVO'd 2 MiB pages.

usage::

    .venv/bin/python scripts/bench/bench-scale.py [--kernel 7.2|6.12] [--page-size 2M|1G]
                                                  [--all] [--reuse] [--json] [--repeat N]
                                                  [--vmemspect-path DIR] [--profile]

A configuration is a kernel series and a huge page size; ``--all`` runs
7.2/2M, 7.2/1G and 6.12/2M.  For each one the test bed
(``scripts/testbed``, scenarios scale-2m and scale-1g) boots the guest
under QEMU TCG (256 GiB in a ``memory-backend-ram,...,reserve=off``, kernel
command line ``init_on_alloc=0 hugetlb_free_vmemmap=on hugepagesz=2M
hugepages=120000``, or ``hugepagesz=1G hugepages=200``), dumps it as
kdump-zlib (reassembled into a plain kdump-compressed file) and stops it.
The dump stays in ``${VMEMSPECT_CACHE:-~/.cache/vmemspect}/bench/``;
``--reuse`` takes it from there instead of booting again.  A dump left in
makedumpfile's flattened format is refused: libkdumpfile reads it far more
slowly (seen: the 7.2 dump re-flattened into 4 KiB records took 64 s to
open instead of 0.5 s, and the baseline scan ran at 2,000 folios/s instead
of 34,000).

Then it times, each in its own process (wall time; peak RSS from wait4()):

  open       plain drgn: open the dump and load the vmlinux, no scan
             (``baseline-drgn-scan.py --open-only``) - the fixed cost
  vs-open    the same through vmemspect's ``open_vmcore`` (its imports too)
  floor      the read floor (``baseline-drgn-scan.py --floor``): walk every
             hstate list reading each folio's head vmemmap page once, whole,
             in plain drgn, nothing else
  baseline   ``baseline-drgn-scan.py``: list_for_each_entry over each
             hstate's lists and follow_phys() on every vmemmap page
  vmemspect  ``python3 -m vmemspect vmcore DUMP -s VMLINUX verify --json``
             with PYTHONPATH=--vmemspect-path (default: this repository);
             ``--jobs`` left at its default (every usable CPU)
  vmemspect-j1  the same with ``--jobs 1`` (one process)

and prints a table (or JSON with ``--json``): times, the ratio
vmemspect/baseline end to end and beyond the open cost, vmemspect's time
beyond the open as a multiple of the floor's, peak RSS, folios/s.  Only
ratios between measures of one run mean much on a shared machine.

The dump of a configuration is looked for in the cache's ``bench/`` and in
``extract-scale/<series>-<2M|1G>-<pages>/`` (the extract issue's scale
dumps); ``--dump-dir DIR`` names a test bed run directory (with its
run.json) instead.
Results are also written to the cache's bench/results/.

``--profile`` instead runs vmemspect's verify in this process under
cProfile (``vmemspect.cli.run``) and prints the top 25 functions by
cumulative and by total time.

The host's memory is watched: QEMU's peak RSS during boot and dump (about
5.2 GB for 120,000 pages), and each measured process is killed if its RSS
passes ``--rss-limit-gb`` or the host's MemAvailable falls under 1 GiB.

Fills: docs/performance.md, "Results", "Against the read floor (issue 13)"
and "Where the time goes (7.2, 120,000 × 2 MiB)"; its dumps feed
docs/extract.md, "Sizes measured".
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parents[1]  # the checkout
import testbed

BASELINE = SCRIPTS / "baseline-drgn-scan.py"
DEFAULT_MEM = "256G"
DEFAULT_PAGES = {"2M": 120000, "1G": 200}
SCENARIO = {"2M": "scale-2m", "1G": "scale-1g"}
ALL_CONFIGS = [("7.2", "2M"), ("7.2", "1G"), ("6.12", "2M")]
# QEMU's peak RSS seen: 5.2 GB for 120,000 2 MiB pages (hvo-facts.md).
MIN_AVAILABLE_TO_BOOT = 7 << 30
MIN_AVAILABLE_WHILE_MEASURING = 1 << 30
MEASURES = ("open", "vs-open", "floor", "baseline", "vmemspect", "vmemspect-j1")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for ln in f:
            k, v = ln.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith(("VmRSS:", "VmHWM:")):
                    k, v = ln.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


# ---------------------------------------------------------------- the dump

def bench_dir(series: str, page_size: str, mem: str, pages: int) -> Path:
    return testbed.cache_dir() / "bench" / f"{series}-{page_size.lower()}-{mem.lower()}-{pages}"


def kdump_magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def check_dump(path: Path) -> None:
    """The reassembled kdump-compressed file, not makedumpfile's flattened
    stream (which libkdumpfile reads slowly, with a warning)."""
    magic = kdump_magic(path)
    if magic.startswith(b"makedumpfile"):
        raise SystemExit(f"{path} is in the flattened format (makedumpfile -R was not run)")
    if not magic.startswith(b"KDUMP   "):
        raise SystemExit(f"{path} is not a kdump-compressed file (magic {magic[:8]!r})")


class QemuWatch(threading.Thread):
    """Polls the test bed's QEMU (testbed.running_pids()) for its peak RSS and
    the host's lowest MemAvailable while the guest runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_ev = threading.Event()
        self.peak = 0
        self.min_available = meminfo()["MemAvailable"]

    def run(self) -> None:
        while not self.stop_ev.wait(0.5):
            for pid, program in testbed.running_pids():
                if os.path.basename(program).startswith("qemu-system"):
                    st = proc_status(pid)
                    self.peak = max(self.peak, st.get("VmHWM", 0), st.get("VmRSS", 0))
            self.min_available = min(self.min_available, meminfo()["MemAvailable"])

    def stop(self) -> None:
        self.stop_ev.set()
        self.join(5)


def reuse_candidates(series: str, page_size: str, mem: str, pages: int,
                     dump_dir: Path | None = None) -> list[Path]:
    """Run directories that may hold this configuration's dump, best first."""
    if dump_dir is not None:
        return [dump_dir]
    return [bench_dir(series, page_size, mem, pages),
            testbed.cache_dir() / "extract-scale" / f"{series}-{page_size}-{pages}"]


def get_dump(series: str, page_size: str, mem: str, pages: int, reuse: bool,
             boot_retries: int = 2, dump_dir: Path | None = None) -> dict:
    """Boot and dump (or reuse the cached dump); the run dict of the test
    bed plus "bench_boot" (QEMU peak RSS etc.)."""
    out = bench_dir(series, page_size, mem, pages)
    cmdline_extra = f"hugepagesz={page_size} hugepages={pages}"
    kdir = testbed.fetch_kernel(series)
    release = (kdir / "release").read_text().strip()
    for cand in reuse_candidates(series, page_size, mem, pages, dump_dir) if reuse else []:
        run = _reusable(cand, release, cmdline_extra, series, page_size)
        if run is not None:
            return run
    if dump_dir is not None:
        raise SystemExit(f"{dump_dir}: no reusable dump of {series} {page_size} there")
    return _boot_and_dump(series, page_size, mem, pages, out, cmdline_extra, boot_retries)


def _reusable(out: Path, release: str, cmdline_extra: str, series: str,
              page_size: str) -> dict | None:
    """The run dict of the dump in ``out`` if it is this configuration's."""
    rj = out / "run.json"
    if rj.is_file():
        run = json.loads(rj.read_text())
        k = Path(run.get("kdump") or "")
        why = None
        if not k.is_file() or k.stat().st_size != run["sizes"].get("kdump"):
            why = "dump missing or of another size"
        elif run.get("release") != release:
            why = f"kernel now {release}, dump of {run.get('release')}"
        elif cmdline_extra not in run.get("cmdline", ""):
            why = "another command line"
        if why is None:
            check_dump(k)
            boot = out / "bench-boot.json"
            run["bench_boot"] = json.loads(boot.read_text()) if boot.is_file() else {}
            run["bench_boot"]["reused"] = True
            log(f"{series} {page_size}: reusing {k} ({k.stat().st_size / 1e6:.0f} MB)")
            return run
        log(f"{series} {page_size}: not reusing {out}: {why}")
    return None


def _boot_and_dump(series: str, page_size: str, mem: str, pages: int, out: Path,
                   cmdline_extra: str, boot_retries: int) -> dict:
    avail = meminfo()["MemAvailable"]
    if avail < MIN_AVAILABLE_TO_BOOT:
        raise SystemExit(f"only {avail / 1e9:.1f} GB available; a {mem} guest needs about "
                         f"{MIN_AVAILABLE_TO_BOOT / 1e9:.0f} GB of host memory")
    log(f"{series} {page_size}: booting a {mem} guest with {cmdline_extra} into {out} "
        f"(host MemAvailable {avail / 1e9:.1f} GB)")
    failures = []
    for attempt in range(1 + boot_retries):
        watch = QemuWatch()
        watch.start()
        t0 = time.monotonic()
        try:
            run = testbed.run_scenario(series, SCENARIO[page_size], out, mem=mem,
                                       extra_cmdline=cmdline_extra, timeout=900.0,
                                       dump_timeout=1800.0)
            break
        except testbed.TestbedError as e:
            # Seen once on 7.2 under TCG: "Oops: int3" in sched_clock_cpu while
            # the kernel patched a static key (a cross-vCPU code-patching
            # race of the emulator): a flake of the boot, not of the setup.
            msg = str(e)
            first = msg.splitlines()[0]
            oops = [ln for ln in msg.splitlines() if "Oops" in ln or "panic" in ln]
            failures.append(first + (f" ({oops[0].strip()})" if oops else ""))
            log(f"{series} {page_size}: boot attempt {attempt + 1} failed: {failures[-1]}")
            if attempt == boot_retries:
                raise
            (out / f"console.failed-{attempt + 1}.log").write_bytes(
                (out / "console.log").read_bytes())
        finally:
            watch.stop()
    k = Path(run["kdump"])
    check_dump(k)
    hs = run["truth"]["hstates"].get(str(_kib(page_size)), {}).get("global", {})
    boot = {"reused": False, "qemu_peak_rss": watch.peak,
            "host_min_available": watch.min_available,
            "wall_s": round(time.monotonic() - t0, 2),
            "nr_hugepages": hs.get("nr_hugepages"), "failed_attempts": failures}
    (out / "bench-boot.json").write_text(json.dumps(boot, indent=1) + "\n")
    run["bench_boot"] = boot
    log(f"{series} {page_size}: boot {run['timings']['boot_s']} s, dump {run['timings']['dump_s']} s "
        f"+ reassemble {run['timings']['reassemble_s']} s, {k.stat().st_size / 1e6:.0f} MB, "
        f"QEMU peak RSS {watch.peak / 1e9:.2f} GB, {hs.get('nr_hugepages')} pages")
    if hs.get("nr_hugepages") != pages:
        log(f"warning: the guest has {hs.get('nr_hugepages')} {page_size} pages, not {pages}")
    return run


def _kib(page_size: str) -> int:
    return {"2M": 2048, "1G": 1048576}[page_size]


# ---------------------------------------------------------------- measuring

def child_env(path: Path) -> dict:
    """The environment of every measured process: vmemspect from ``path``;
    bytecode cached under the cache's bench/pycache (not in the measured
    checkout), written even where PYTHONDONTWRITEBYTECODE is set, so that no
    measurement pays for compiling (see warm_bytecode)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONPYCACHEPREFIX"] = str(testbed.cache_dir() / "bench" / "pycache")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("VMEMSPECT_DEBUG", None)
    return env


def warm_bytecode(path: Path, env: dict) -> None:
    """Compile vmemspect and what the measured processes import, once."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(path / "vmemspect")],
                   env=env, cwd="/", stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-c", "import vmemspect.cli, vmemspect.target, "
                    "drgn.helpers.linux.hugetlb, drgn.helpers.linux.list, drgn.helpers.linux.mm"],
                   env=env, cwd="/", stdout=subprocess.DEVNULL)


def measure(name: str, argv: list[str], env: dict, log_dir: Path, timeout: float,
            rss_limit: int) -> dict:
    """Run argv as one child; wall time, peak RSS (wait4's ru_maxrss), exit
    status, stdout.  Killed on timeout, on RSS over rss_limit, or when the
    host's MemAvailable falls under 1 GiB."""
    out_f = log_dir / f"{name}.stdout"
    err_f = log_dir / f"{name}.stderr"
    load = os.getloadavg()[0]
    with open(out_f, "wb") as o, open(err_f, "wb") as e:
        t0 = time.perf_counter()
        # cwd: not a checkout (python -m/-c put the cwd first on sys.path).
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env,
                             cwd=log_dir, preexec_fn=testbed.die_with_parent)
        killed = None
        sampled = 0
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                wall = time.perf_counter() - t0
                break
            sampled = max(sampled, proc_status(p.pid).get("VmRSS", 0))
            if killed is None:
                if time.perf_counter() - t0 > timeout:
                    killed = f"timeout {timeout:.0f} s"
                elif sampled > rss_limit:
                    killed = f"RSS over {rss_limit / 1e9:.1f} GB"
                elif meminfo()["MemAvailable"] < MIN_AVAILABLE_WHILE_MEASURING:
                    killed = "host memory low"
                if killed:
                    log(f"{name}: killing pid {p.pid}: {killed}")
                    p.kill()
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
    r = {"argv": argv, "wall_s": round(wall, 3), "peak_rss": ru.ru_maxrss * 1024,
         "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2),
         "rc": p.returncode, "killed": killed, "loadavg_before": round(load, 2),
         "stdout": str(out_f), "stderr": str(err_f)}
    text = out_f.read_text(errors="replace").strip()
    try:
        r["result"] = json.loads(text) if text else None
    except ValueError:
        r["result"] = None
    if p.returncode not in (0, 1) or killed:
        r["error"] = killed or err_f.read_text(errors="replace").strip()[-1500:]
    return r


def measure_argv(which: str, dump: str, vmlinux: str) -> list[str]:
    py = sys.executable
    if which == "open":
        return [py, str(BASELINE), dump, vmlinux, "--open-only", "--json"]
    if which == "floor":
        return [py, str(BASELINE), dump, vmlinux, "--floor", "--json"]
    if which == "baseline":
        return [py, str(BASELINE), dump, vmlinux, "--json"]
    if which == "vs-open":
        return [py, "-c", "import sys; from vmemspect.target import open_vmcore; "
                "open_vmcore(sys.argv[1], sys.argv[2])", dump, vmlinux]
    if which == "vmemspect":
        return [py, "-m", "vmemspect", "vmcore", dump, "-s", vmlinux, "verify", "--json",
                "--no-progress"]
    if which == "vmemspect-j1":
        return [py, "-m", "vmemspect", "vmcore", dump, "-s", vmlinux, "verify", "--json",
                "--no-progress", "--jobs", "1"]
    raise ValueError(which)


def vmemspect_source(path: Path, env: dict) -> dict:
    """Which vmemspect the children import, and its commit."""
    p = subprocess.run([sys.executable, "-c", "import vmemspect; print(vmemspect.__file__)"],
                       env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    info = {"path": str(path), "imported": p.stdout.strip() or p.stderr.strip()[-300:]}
    g = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if g.returncode == 0:
        info["commit"] = g.stdout.strip()
        d = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--", "vmemspect"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        info["dirty"] = bool(d.stdout.strip())
    return info


def source_hash(path: Path) -> str:
    """A hash of vmemspect's sources in ``path``: a checkout being edited
    while the benchmark runs shows as samples of different hashes."""
    import hashlib
    h = hashlib.sha256()
    for f in sorted((path / "vmemspect").rglob("*.py")):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def warm_cache(*paths: str) -> float:
    """Read the files once so every measurement starts with them in the page
    cache (a 1.9 GB dump and a 400 MB vmlinux fit in this machine's RAM)."""
    t0 = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    return time.perf_counter() - t0


def run_mem(run: dict, default: str) -> str:
    """The guest RAM of the run (its QEMU ``-m``), so that a dump given with
    ``--dump-dir`` is reported with its own size, not ``--mem``'s."""
    args = run.get("qemu_args") or []
    return next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-m"), default)


def bench_config(series: str, page_size: str, a) -> dict:
    pages = a.hugepages or DEFAULT_PAGES[page_size]
    run = get_dump(series, page_size, a.mem, pages, a.reuse, a.boot_retries, a.dump_dir)
    dump, vmlinux = run["kdump"], run["vmlinux"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = testbed.cache_dir() / "bench" / "results" / f"{stamp}-{series}-{page_size.lower()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(a.vmemspect_path)
    warm_bytecode(a.vmemspect_path, env)
    res = {"config": f"{series}/{page_size}", "series": series, "page_size": page_size,
           "release": run["release"], "mem": run_mem(run, a.mem), "hugepages": pages,
           "cmdline": run["cmdline"], "dump": dump, "vmlinux": vmlinux,
           "dump_bytes": Path(dump).stat().st_size, "dump_format": "kdump-compressed",
           "boot": {"boot_s": run["timings"].get("boot_s"), "dump_s": run["timings"].get("dump_s"),
                    "reassemble_s": run["timings"].get("reassemble_s"),
                    "total_s": run["timings"].get("total_s"), **run.get("bench_boot", {})},
           "truth_nr_hugepages": run["truth"]["hstates"].get(str(_kib(page_size)), {})
           .get("global", {}).get("nr_hugepages"),
           "vmemspect": vmemspect_source(a.vmemspect_path, env),
           "log_dir": str(log_dir), "measures": {}}
    log(f"{res['config']}: warming the page cache ({res['dump_bytes'] / 1e6:.0f} MB dump + vmlinux)")
    res["warm_read_s"] = round(warm_cache(dump, vmlinux), 2)
    cmds = {}
    for i in range(a.repeat):
        for which in a.measure:
            argv = measure_argv(which, dump, vmlinux)
            cmds[which] = " ".join(shlex.quote(x) for x in argv)
            log(f"{res['config']}: {which} ({i + 1}/{a.repeat})")
            src = source_hash(a.vmemspect_path)
            if which in ("vs-open", "vmemspect", "vmemspect-j1"):
                # Recompile if the checkout changed since the last sample.
                warm_bytecode(a.vmemspect_path, env)
            r = measure(f"{which}-{i}", argv, env, log_dir, a.timeout, a.rss_limit_gb << 30)
            if which in ("vs-open", "vmemspect", "vmemspect-j1"):
                r["source_hash"] = src
                after = source_hash(a.vmemspect_path)
                if after != src:
                    r["source_changed_during"] = after
            log(f"  {which}: {r['wall_s']:.2f} s, peak RSS {gb(r['peak_rss'])} GB, rc {r['rc']}"
                + (f", ERROR {r['error'][-300:]}" if r.get("error") else ""))
            res["measures"].setdefault(which, []).append(r)
    res["commands"] = cmds
    res["summary"] = summarize(res)
    (log_dir / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def summarize(res: dict) -> dict:
    """Best (lowest wall) sample of each measure; ratios; folios/s."""
    best = {}
    for which, samples in res["measures"].items():
        ok = [s for s in samples if not s.get("error")]
        if ok:
            b = min(ok, key=lambda s: s["wall_s"])
            best[which] = {"wall_s": b["wall_s"], "peak_rss": max(s["peak_rss"] for s in ok),
                           "samples_s": [s["wall_s"] for s in samples], "rc": b["rc"]}
            hashes = {s["source_hash"] for s in samples if "source_hash" in s} | \
                {s["source_changed_during"] for s in samples if "source_changed_during" in s}
            if hashes:
                best[which]["source_hashes"] = sorted(hashes)
        else:
            best[which] = {"error": samples[-1].get("error"), "wall_s": None,
                           "peak_rss": max(s["peak_rss"] for s in samples),
                           "samples_s": [s["wall_s"] for s in samples]}
    s: dict = {"best": best}
    open_s = best.get("open", {}).get("wall_s")
    vm_open_s = best.get("vs-open", {}).get("wall_s")
    base = best.get("baseline", {})
    vm = best.get("vmemspect", {})
    base_res = _result(res, "baseline")
    vm_res = _result(res, "vmemspect")
    folios = (vm_res or {}).get("checked_folios") or (base_res or {}).get("folios") \
        or res.get("truth_nr_hugepages")
    s["folios"] = folios
    s["baseline_folios"] = (base_res or {}).get("folios")
    s["baseline_hvo_mismatch"] = (base_res or {}).get("hvo_mismatch")
    s["baseline_form"] = (base_res or {}).get("form")
    s["vmemspect_checked_folios"] = (vm_res or {}).get("checked_folios")
    s["vmemspect_ok"] = (vm_res or {}).get("ok")
    s["vmemspect_rc"] = vm.get("rc")
    s["baseline_inproc_open_s"] = (base_res or {}).get("open_s")
    s["baseline_inproc_scan_s"] = (base_res or {}).get("scan_s")

    def scan(w, o):
        return round(w - o, 3) if w is not None and o is not None else None

    s["baseline_scan_s"] = scan(base.get("wall_s"), open_s)
    s["vmemspect_scan_s"] = scan(vm.get("wall_s"), open_s)
    s["vmemspect-j1_scan_s"] = scan(best.get("vmemspect-j1", {}).get("wall_s"), open_s)
    s["vmemspect_scan_s_vs_own_open"] = scan(vm.get("wall_s"), vm_open_s)
    s["floor_scan_s"] = scan(best.get("floor", {}).get("wall_s"), open_s)
    # vmemspect's own open beyond drgn's bare open (its imports, checks).
    s["vs_open_extra_s"] = scan(vm_open_s, open_s)
    for k in ("vmemspect", "vmemspect-j1", "baseline"):
        t, f = s.get(f"{k}_scan_s"), s["floor_scan_s"]
        s[f"{k}_vs_floor"] = round(t / f, 2) if t is not None and f else None
    # vmemmap pages (PTEs) per folio: 8 for 2 MiB, 4,096 for 1 GiB.
    per_folio = _kib(res["page_size"]) * 1024 // 4096 * 64 // 4096
    s["vmemmap_pages"] = folios * per_folio if folios else None
    for k in ("floor", "baseline", "vmemspect", "vmemspect-j1"):
        t = s[f"{k}_scan_s"]
        s[f"{k}_folios_per_s"] = round(folios / t) if folios and t and t > 0 else None
        s[f"{k}_vmemmap_pages_per_s"] = round(folios * per_folio / t) \
            if folios and t and t > 0 else None
    if vm.get("wall_s") and base.get("wall_s"):
        s["ratio_end_to_end"] = round(vm["wall_s"] / base["wall_s"], 2)
    if s["vmemspect_scan_s"] and s["baseline_scan_s"] and s["baseline_scan_s"] > 0:
        s["ratio_scan"] = round(s["vmemspect_scan_s"] / s["baseline_scan_s"], 2)
    return s


def _result(res: dict, which: str):
    for smp in res["measures"].get(which, []):
        if isinstance(smp.get("result"), dict):
            return smp["result"]
    return None


# ---------------------------------------------------------------- output

def table(results: list[dict]) -> str:
    lines = []
    for r in results:
        s = r["summary"]
        b = r["boot"]
        lines.append(f"== {r['config']}  {r['release']}  {r['mem']} guest, {r['hugepages']} x "
                     f"{r['page_size']} (guest has {r['truth_nr_hugepages']})")
        lines.append(f"   dump {r['dump']}  {r['dump_bytes'] / 1e6:.0f} MB kdump-compressed")
        lines.append(f"   boot {b.get('boot_s')} s, dump {b.get('dump_s')} s + reassemble "
                     f"{b.get('reassemble_s')} s, QEMU peak RSS {gb(b.get('qemu_peak_rss'))} GB"
                     + ("  (reused from the cache)" if b.get("reused") else ""))
        lines.append(f"   vmemspect: {r['vmemspect']['imported']} "
                     f"(commit {r['vmemspect'].get('commit', '?')}"
                     f"{', dirty' if r['vmemspect'].get('dirty') else ''}, sources "
                     f"{','.join(r['summary']['best'].get('vmemspect', {}).get('source_hashes', [])) or '?'})")
        rows = [("measure", "wall s", "beyond open s", "peak RSS GB", "folios/s",
                 "vmemmap pages/s", "samples s")]
        open_s = s["best"].get("open", {}).get("wall_s")
        for which in MEASURES:
            m = s["best"].get(which)
            if m is None:
                continue
            beyond = "" if which in ("open",) or m["wall_s"] is None or open_s is None \
                else f"{m['wall_s'] - open_s:.2f}"
            fps = s.get(f"{which}_folios_per_s")
            pps = s.get(f"{which}_vmemmap_pages_per_s")
            rows.append((which, "ERROR" if m["wall_s"] is None else f"{m['wall_s']:.2f}", beyond,
                         gb(m["peak_rss"]), "" if fps is None else f"{fps:,}",
                         "" if pps is None else f"{pps:,}",
                         " ".join(f"{x:.2f}" for x in m["samples_s"])))
        w = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("   " + "  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i])
                                           for i, c in enumerate(row)))
        lines.append(f"   beyond the open, as multiples of the read floor "
                     f"({s.get('floor_scan_s')} s): vmemspect {s.get('vmemspect_vs_floor')}x "
                     f"(--jobs 1: {s.get('vmemspect-j1_vs_floor')}x), baseline "
                     f"{s.get('baseline_vs_floor')}x; vmemspect's own open costs "
                     f"{s.get('vs_open_extra_s')} s more than drgn's bare open")
        lines.append(f"   vmemspect/baseline: end to end {s.get('ratio_end_to_end', '-')}x, "
                     f"beyond the open cost {s.get('ratio_scan', '-')}x; "
                     f"folios: vmemspect checked {s['vmemspect_checked_folios']} "
                     f"(ok={s['vmemspect_ok']}, rc={s['vmemspect_rc']}), baseline {s['baseline_folios']} "
                     f"({s.get('baseline_form')} form, HVO mismatches {s['baseline_hvo_mismatch']}); "
                     f"{s.get('vmemmap_pages') or 0:,} vmemmap pages")
        vm_hashes = s["best"].get("vmemspect", {}).get("source_hashes", [])
        if len(vm_hashes) > 1:
            lines.append(f"   note: vmemspect's sources changed between or during samples "
                         f"({', '.join(vm_hashes)}): the samples measure different code")
        for which, m in s["best"].items():
            if m.get("error"):
                lines.append(f"   {which} FAILED: {m['error'][-500:]}")
        lines.append(f"   logs and result.json: {r['log_dir']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- profile

def profile(series: str, page_size: str, a) -> dict:
    pages = a.hugepages or DEFAULT_PAGES[page_size]
    run = get_dump(series, page_size, a.mem, pages, a.reuse, a.boot_retries, a.dump_dir)
    dump, vmlinux = run["kdump"], run["vmlinux"]
    for mod in [m for m in sys.modules if m == "vmemspect" or m.startswith("vmemspect.")]:
        del sys.modules[mod]
    # The tree profiled (--vmemspect-path), which need not be the one installed.
    sys.path.insert(0, str(a.vmemspect_path))
    import vmemspect
    from vmemspect.cli import run as vmemspect_run
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = testbed.cache_dir() / "bench" / "results" / f"{stamp}-{series}-{page_size.lower()}-profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["vmcore", dump, "-s", vmlinux, "verify", "--json", "--no-progress"]
    log(f"profiling {vmemspect.__file__}: vmemspect {' '.join(args)}")
    warm_cache(dump, vmlinux)
    prof = cProfile.Profile()
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = prof.runcall(vmemspect_run, args)
    wall = time.perf_counter() - t0
    prof_path = out_dir / "verify.prof"
    prof.dump_stats(str(prof_path))
    text = io.StringIO()
    st = pstats.Stats(prof, stream=text)
    st.strip_dirs()
    print(f"== profile of vmemspect verify on {series}/{page_size} ({dump})", file=text)
    print(f"   {vmemspect.__file__}, rc {rc}, {wall:.2f} s under cProfile; stats: {prof_path}",
          file=text)
    for key in ("cumulative", "tottime"):
        print(f"\n--- top 25 by {key}", file=text)
        st.sort_stats(key).print_stats(25)
    report = text.getvalue()
    (out_dir / "profile.txt").write_text(report)
    return {"config": f"{series}/{page_size}", "rc": rc, "wall_s_profiled": round(wall, 2),
            "prof": str(prof_path), "text": report}


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench-scale.py",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n"
                                 "  .venv/bin/python scripts/bench/bench-scale.py --reuse\n"
                                 "  .venv/bin/python scripts/bench/bench-scale.py --all --reuse --json "
                                 "> bench.json\n"
                                 "  .venv/bin/python scripts/bench/bench-scale.py --kernel 6.12 --reuse "
                                 "--vmemspect-path /work/main\n"
                                 "  .venv/bin/python scripts/bench/bench-scale.py --profile --reuse")
    ap.add_argument("--kernel", default="7.2", choices=["7.2", "6.12"], help="kernel series")
    ap.add_argument("--page-size", default="2M", choices=["2M", "1G"], help="huge page size")
    ap.add_argument("--all", action="store_true", help="7.2/2M, 7.2/1G and 6.12/2M in turn")
    ap.add_argument("--hugepages", type=int,
                    help="number of huge pages (default 120000 of 2M, 200 of 1G)")
    ap.add_argument("--mem", default=DEFAULT_MEM, help="guest RAM (default 256G)")
    ap.add_argument("--reuse", action="store_true",
                    help="use the cached dump of the same configuration if there is one")
    ap.add_argument("--dump-dir", type=Path,
                    help="a test bed run directory (run.json and its dump) to measure "
                    "instead of the cached one (implies --reuse)")
    ap.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    ap.add_argument("--vmemspect-path", type=Path, default=REPO,
                    help="checkout whose vmemspect is measured (PYTHONPATH); default: %(default)s")
    ap.add_argument("--repeat", type=int, default=1, help="run each measure N times (best is reported)")
    ap.add_argument("--measure", default=",".join(MEASURES),
                    help="comma-separated subset of %s" % ",".join(MEASURES))
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measured process")
    ap.add_argument("--rss-limit-gb", type=int, default=12,
                    help="kill a measured process whose RSS passes this (default 12)")
    ap.add_argument("--boot-retries", type=int, default=2,
                    help="boot again this many times if the guest fails (TCG flakes)")
    ap.add_argument("--profile", action="store_true",
                    help="run vmemspect verify under cProfile in-process; print the top 25 "
                    "by cumulative and total time")
    a = ap.parse_args(argv)
    a.vmemspect_path = a.vmemspect_path.resolve()
    if a.dump_dir is not None:
        a.reuse = True
    if not (a.vmemspect_path / "vmemspect" / "__init__.py").is_file():
        ap.error(f"{a.vmemspect_path} has no vmemspect/ package")
    a.measure = [m for m in a.measure.split(",") if m]
    bad = set(a.measure) - set(MEASURES)
    if bad:
        ap.error(f"unknown measure(s) {', '.join(sorted(bad))}")
    configs = ALL_CONFIGS if a.all else [(a.kernel, a.page_size)]
    try:
        if a.profile:
            profs = [profile(k, ps, a) for k, ps in configs]
            if a.json:
                print(json.dumps(profs, indent=1))
            else:
                print("\n".join(p["text"] for p in profs))
            return 0
    except testbed.TestbedError as e:
        print(f"bench-scale: {e}", file=sys.stderr)
        return 1
    results, failed_configs = [], []
    for k, ps in configs:
        try:
            results.append(bench_config(k, ps, a))
        except testbed.TestbedError as e:
            # Go on with the other configurations.
            log(f"{k}/{ps}: no dump: {str(e).splitlines()[0]}")
            failed_configs.append({"config": f"{k}/{ps}", "error": str(e)[-3000:]})
    doc = {"host": {"cpus": os.cpu_count(), "mem_total": meminfo()["MemTotal"],
                    "python": platform.python_version(),
                    "drgn": _drgn_version()},
           "results": results, "failed_configs": failed_configs}
    t = table(results)
    for f in failed_configs:
        t += f"\n== {f['config']}: FAILED, no dump:\n{f['error'][-1500:]}"
    if a.json:
        print(t, file=sys.stderr)
        print(json.dumps(doc, indent=1))
    else:
        print(t)
    failed = any(m.get("error") for r in results for m in r["summary"]["best"].values())
    return 1 if failed or failed_configs else 0


def _drgn_version() -> str | None:
    try:
        import drgn
        return drgn.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
