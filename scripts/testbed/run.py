"""One run: boot a registry kernel in a scenario, collect the guest's truth,
dump its memory, stop QEMU.

run_scenario() returns (and writes to out_dir/run.json) a dict::

  series       the kernel id (kept under this name for older callers)
  kernel       the registry entry (kernels.Kernel.as_dict())
  release, scenario, cmdline, qemu_args, vmlinux (None without -dbg),
  vmlinuz, initramfs,
  kdump        plain kdump-compressed file (QEMU's flattened output run
               through makedumpfile -R); kdump_format says which it is
               (None for riscv64 guests: their default is "elf" only)
  elf          ELF dump (paging off) or None; see dumps.elf_phys_offset()
  vmcoreinfo   where the guest's VMCOREINFO text is, for guests whose QEMU
               dumps do not carry it (riscv64; None elsewhere): path (the
               run dir's vmcoreinfo.txt), source, ... (dumps.write_vmcoreinfo)
  fw_cfg_via   "fw_cfg" (QEMU -fw_cfg) or "initramfs" (how the guest got
               its orders: scenario, script, ...)
  console      serial log;  guest_cmd, guest_cmd_output (stdout, exact),
  guest_cmd_stderr, guest_cmd_rc
  timings      boot_s (QEMU start to truth), guest_cmd_s, dump_s (kdump),
               reassemble_s, elf_dump_s, total_s (whole call); a kdump
               capture source adds capture_s and capture_reassemble_s
  sizes        kdump, elf (bytes), and one per other source, by its name
  NAME, NAME_format, dump_info[NAME]
               other dump sources (dumps.DUMPS), e.g. capture-zstd-newest:
               the dump's path, its format, what the source records
               (kdump.KdumpCapture.take())
  truth        from the guest (truth.parse_truth; also out_dir/truth.json); every dict key is a
               string (JSON):
    uname, cmdline, scenario, hugetlb_optimize_vmemmap (int or None)
    meminfo      {"HugePages_Total": n, ..., "Hugepagesize": kB, "Hugetlb": kB}
    hstates      {"2048": {"global": {nr,free,resv,surplus}_hugepages,
                           "nodes": {"0": {nr,free,surplus}_hugepages}}, ...}
    hugetlb_dmesg        ["HugeTLB: ...", ...]
    vmemmap_freeable_kib {"2048": 28, "1048576": 16380}
    vmstat       {"nr_memmap_pages": n, "nr_memmap_boot_pages": n}
                 (empty on 6.1: it has no such counters)
    vmcoreinfo_note  {"paddr", "size"} of the VMCOREINFO note
                 (/sys/kernel/vmcoreinfo)
    hugetlb_folios [{"pfn", "flags" (raw /proc/kpageflags word), "nr_pages"}]
    kpf_scanned_pfns, in_use [{"kind": "anon"|"file", "pfn", "phase"}]
    node_memory_blocks {"0": [block ids]}, memory_block_size (bytes),
    node_pfn_ranges {"0": [[start_pfn, end_pfn), ...]}
    steps        run-time changes made by the guest, in order
    demote       {"before": [1 GiB folio pfns], "after": [...], "demoted": [pfn]}
                 (rare: the demoted range is [pfn, pfn + 262144))
    errors       truth lines that were not understood (normally empty)
  aftermath    only with aftermath=True (aftermath.run_aftermath): what the
               kernel said when the guest released its holds and emptied
               the pools after the dumps
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import dumps as _dumps
from .aftermath import aftermath_qemu_args, run_aftermath
from .common import TestbedError, cache_dir
from . import guestdebs
from .initramfs import _Cpio, build_initramfs, guest_busybox
from .kernels import fetch_kernel, kernel
from .qemu import QMP, VIRTIOFSD, _Proc, _Signals, base_args
from .scenarios import BASE_CMDLINE, DEFAULT_LIVE_CMD, SCENARIOS
from .truth import CRASH, MARK, Console, GuestProtocol, ProtocolError


def _guest_script(guest_cmd: str, live: bool, cwd: str | None, env: dict | None,
                  kdir: Path, native: bool = True) -> str:
    lines = ["# written by scripts/testbed (run.py)"]
    if live:
        # In this machine's root: its Python first; in a root of the
        # guest's architecture (guestdebs.live_root): that root's.
        path = (os.path.dirname(sys.executable) + ":" + os.environ.get(
            "PATH", "/usr/local/bin:/usr/bin:/bin")) if native else "/usr/local/bin:/usr/bin:/bin"
        e = {"PATH": path + ":/usr/local/sbin:/usr/sbin:/sbin",
             "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
             # the guest must not write caches into the host's checkout
             "PYTHONDONTWRITEBYTECODE": "1"}
        if os.environ.get("PYTHONPATH"):
            e["PYTHONPATH"] = os.environ["PYTHONPATH"]
    else:
        e = {}
    e["VMEMSPECT_RELEASE"] = (kdir / "release").read_text().strip()
    e["VMEMSPECT_VMLINUX"] = str(kdir / "vmlinux")
    e.update(env or {})
    for k, v in e.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || exit 97")
    lines.append(guest_cmd)
    return "\n".join(lines) + "\n"


def run_scenario(series: str = "7.2", scenario: str = "hvo-2m", out_dir: Path | str | None = None,
                 elf: bool = False, guest_cmd: str | None = None, *,
                 guest_cwd: str | None = None, guest_env: dict | None = None,
                 timeout: float = 180.0, cmd_timeout: float = 1200.0,
                 dump_timeout: float = 900.0, dbg: bool | None = None,
                 on_ready=None, extra_cmdline: str = "", mem: str | None = None,
                 dumps: list[str] | None = None, aftermath: bool = False,
                 aftermath_timeout: float = 300.0, own: dict | None = None) -> dict:
    """Boot kernel ``series`` (a kernel id of the registry, kernels.KERNELS)
    in ``scenario``, collect truth, dump memory, stop QEMU.

    Returns the run dict (also written to out_dir/run.json).  ``guest_cmd``
    runs in the guest before the dump (for "live": chrooted in the host's /,
    in ``guest_cwd``, default the current directory; elsewhere in the
    initramfs's busybox).  ``on_ready(info)`` is called once the guest is
    ready and before the dump, with info["qmp"] the path of a spare QMP
    socket (e.g. for ``drgn --qemu``).  ``dbg`` None: fetch the -dbg
    package if the registry says so.  ``dumps``: dump sources by name
    (dumps.DUMPS), default "kdump" plus "elf" if ``elf`` (for a guest whose
    QEMU dumps carry no VMCOREINFO, riscv64: "elf" only, and the note's text
    goes to out_dir/vmcoreinfo.txt).  ``aftermath``:
    after the dumps, let the guest release its holds and empty its pools,
    and put what the kernel said into run["aftermath"] (aftermath.py).
    ``own``: a developer's own x86_64 build instead of a registry kernel,
    given as plain files: {"kernel_image": bzImage, "vmlinux": its vmlinux
    or None (then the kernel's BTF), "modules": a directory holding its
    qemu_fw_cfg.ko or None (CONFIG_FW_CFG_SYSFS=y)}; ``series`` is then
    "own" in the run dict.
    Raises TestbedError on failure.
    """
    t_start = time.monotonic()
    own_kdir = None
    if own and own.get("kernel_image"):
        from .kernels import Kernel
        from .torture import own_kernel_dir
        own_kdir = own_kernel_dir(own["kernel_image"], own.get("vmlinux"), own.get("modules"))
        rel = (own_kdir / "release").read_text().strip()
        series = "own"
        dbg = bool(own.get("vmlinux"))
        # (form "": unknown; vmemspect finds it from the types)
        k = Kernel("own", ".".join(rel.split(".")[:2]), "own", "-", dbg, "",
                   desc=f"own build: {own['kernel_image']}")
    else:
        k = kernel(series)
    arch = k.arch_info
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; have {', '.join(SCENARIOS)}")
    if dumps is None:
        # riscv64: QEMU's kdump-zlib is written, but with neither the
        # architecture nor VMCOREINFO in its header, and drgn cannot open
        # it ("kdump_vmcoreinfo_raw: linux.vmcoreinfo.raw is not set").
        dumps = ["kdump"] + (["elf"] if elf else []) if arch.vmcoreinfo_device else ["elf"]
    sources = _dumps.ordered(dumps)
    if aftermath and any(s.ends_guest for s in sources):
        # Both talk to the guest on its second serial port, and the
        # aftermath empties the pools the capture is meant to dump.
        raise ValueError("the aftermath and a dump source that ends the guest "
                         f"({', '.join(s.name for s in sources if s.ends_guest)}) do not go together")
    sc = SCENARIOS[scenario]
    live = bool(sc.get("live"))
    if live and guest_cmd is None:
        guest_cmd = DEFAULT_LIVE_CMD
    if out_dir is None:
        out_dir = cache_dir() / "runs" / f"{series}-{scenario}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    kdir = own_kdir or fetch_kernel(series, dbg=dbg)
    release = (kdir / "release").read_text().strip()
    initrd = build_initramfs(kdir, arch)
    mem = mem or sc["mem"]

    console = out_dir / "console.log"
    stale = [console, out_dir / "run.json", out_dir / "truth.json", out_dir / _dumps.VMCOREINFO_FILE]
    for src in _dumps.DUMPS.values():
        stale += src.paths(out_dir)
    for p in stale:
        if p.exists():
            p.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="vmemspect-"))
    ctx = _dumps.DumpContext(qmp=None, out_dir=out_dir, kdir=kdir, tmp=tmp, timeout=dump_timeout,
                             mem=mem, arch=arch)
    try:
        for s in sources:
            initrd = s.initramfs(ctx, initrd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cmdline = " ".join(x for x in (f"console={arch.console}", BASE_CMDLINE, sc["cmdline"],
                                   *(s.cmdline(ctx) for s in sources), extra_cmdline) if x)
    (tmp / "scenario").write_text(scenario)
    machine_opts = ""
    extra: list[str] = []
    # virtiofs shares of a live run: (tag, host directory, where in the
    # guest's chroot).  x86_64: this machine's root.  Other architectures
    # cannot run this machine's programs: a root of their own Debian
    # packages (Python, drgn, vmemspect's dependencies) from the cache,
    # and the working directory (the checkout) at its own path in it.
    shares: list[tuple[str, str, str]] = []
    native = arch.name == "x86_64"
    if live:
        if native:
            shares = [("hostroot", "/", "/")]
        else:
            shares = [("hostroot", str(guestdebs.live_root(arch, guest_busybox(arch))), "/")]
            wd = guest_cwd or os.getcwd()
            shares.append(("hostcwd", wd, wd))
            (tmp / "shares").write_text("".join(f"{t} {g}\n" for t, _, g in shares[1:]))
        extra += ["-object", f"memory-backend-memfd,id=mem,size={mem},share=on"]
        for i, (tag, _, _) in enumerate(shares):
            extra += ["-chardev", f"socket,id=vfs{i},path={tmp}/vfs{i}.sock",
                      "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag={tag}"]
        machine_opts = "memory-backend=mem"
    elif sc.get("noreserve"):
        extra += ["-object", f"memory-backend-ram,id=mem,size={mem},reserve=off"]
        machine_opts = "memory-backend=mem"
    qemu_args = base_args(arch, mem, machine_opts, sc.get("min_smp", 1)) + [
        "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd), "-append", cmdline,
        "-chardev", f"file,id=ser0,path={console}", "-serial", "chardev:ser0",
        "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
        "-qmp", f"unix:{tmp}/qmp-spare.sock,server=on,wait=off",
        *(["-device", "vmcoreinfo"] if arch.vmcoreinfo_device else []),
        "-fw_cfg", f"name=opt/vmemspect/scenario,file={tmp}/scenario"]
    if arch.control != "serial":
        (tmp / "control").write_text(arch.control_dev)
        qemu_args += ["-fw_cfg", f"name=opt/vmemspect/control,file={tmp}/control"]
    if guest_cmd is not None:
        (tmp / "script.sh").write_text(_guest_script(
            guest_cmd, live, (guest_cwd or os.getcwd()) if live else guest_cwd, guest_env, kdir,
            native))
        qemu_args += ["-fw_cfg", f"name=opt/vmemspect/script,file={tmp}/script.sh"]
    if len(shares) > 1:
        qemu_args += ["-fw_cfg", f"name=opt/vmemspect/shares,file={tmp}/shares"]
    qemu_args += extra + sc.get("qemu", [])
    for s in sources:
        qemu_args += s.qemu_args(ctx)
    if aftermath:
        qemu_args += aftermath_qemu_args(tmp, arch)
    if not arch.fw_cfg_files:
        qemu_args = _opts_into_initramfs(qemu_args, tmp)

    run: dict = {"series": series, "kernel": k.as_dict(), "release": release,
                 # Only where the -dbg is wanted (registry or dbg=): a
                 # vmlinux another test fetched must not turn a BTF run into
                 # a DWARF one.
                 "vmlinux": (str(kdir / "vmlinux")
                             if (k.dbg if dbg is None else dbg) and (kdir / "vmlinux").is_file()
                             else None),
                 "vmlinuz": str(kdir / "vmlinuz"), "initramfs": str(initrd),
                 "scenario": scenario, "cmdline": cmdline, "qemu_args": qemu_args,
                 "kdump": None, "elf": None, "console": str(console),
                 "truth": None, "guest_cmd": guest_cmd, "guest_cmd_output": None,
                 "guest_cmd_stderr": None, "guest_cmd_rc": None,
                 "vmcoreinfo": None, "fw_cfg_via": "fw_cfg" if arch.fw_cfg_files else "initramfs",
                 "live_shares": [{"tag": t, "host": h, "guest": g} for t, h, g in shares] or None,
                 "timings": {}, "sizes": {}}
    procs: list[_Proc] = []
    qmp = None
    con = Console(console)
    try:
        with _Signals():
            for i, (tag, src, _) in enumerate(shares):
                log = out_dir / ("virtiofsd.log" if i == 0 else f"virtiofsd-{tag}.log")
                vfs = _Proc([VIRTIOFSD, f"--socket-path={tmp}/vfs{i}.sock", "-o", f"source={src}",
                             "-o", "sandbox=chroot", "-o", "cache=auto"], log)
                procs.append(vfs)
                end = time.monotonic() + 10
                while not (tmp / f"vfs{i}.sock").exists():
                    if not vfs.alive() or time.monotonic() > end:
                        raise TestbedError("virtiofsd did not start: " + log.read_text()[-2000:])
                    time.sleep(0.05)
            t_boot = time.monotonic()
            q = _Proc(qemu_args, out_dir / "qemu.log")
            procs.append(q)

            def fail(msg: str) -> TestbedError:
                qlog = (out_dir / "qemu.log").read_text(errors="replace")[-2000:]
                return TestbedError(f"{series}/{scenario}: {msg}\n--- qemu.log ---\n{qlog}"
                                    f"\n--- console tail ({console}) ---\n{con.tail()}")

            try:
                qmp = QMP(tmp / "qmp.sock", alive=q.alive)
            except TestbedError as e:
                raise fail(str(e)) from None
            ctx.qmp, ctx.qemu, ctx.console, ctx.fail = qmp, q, con, fail
            deadline = t_boot + timeout
            guest = GuestProtocol()
            next_crash_check = time.monotonic() + 1.0
            t_truth = t_cmd = None
            while not guest.ready:
                for ln in con.poll():
                    try:
                        guest.feed(ln)
                    except ProtocolError as e:
                        raise fail(str(e)) from None
                    if guest.truth_done and t_truth is None:
                        t_truth = time.monotonic()
                    if guest.cmd_started and t_cmd is None:
                        t_cmd = time.monotonic()
                        deadline = t_cmd + cmd_timeout
                    if guest.ready:
                        break
                if guest.ready:
                    break
                if not q.alive():
                    raise fail(f"QEMU exited ({q.p.returncode}) before READY")
                if time.monotonic() > deadline:
                    raise fail(f"timed out in state {guest.state!r} waiting for READY")
                if time.monotonic() > next_crash_check:
                    # A kernel that oopsed before READY will not get there:
                    # say so now rather than at the timeout.
                    kernel_lines = "\n".join(ln for ln in con.tail(400).splitlines()
                                             if MARK not in ln)  # not the guest's own
                    crash = CRASH.search(kernel_lines)
                    if crash:
                        raise fail(f"the guest kernel crashed before READY: {crash.group(0)}")
                    next_crash_check = time.monotonic() + 1.0
                time.sleep(0.1)
            t_ready = time.monotonic()
            run["truth"] = guest.truth()
            run["timings"]["boot_s"] = round((t_truth or t_ready) - t_boot, 2)
            if guest_cmd is not None:
                o, e, rc = guest.cmd_result()
                run["guest_cmd_output"], run["guest_cmd_stderr"], run["guest_cmd_rc"] = o, e, rc
                run["timings"]["guest_cmd_s"] = round(t_ready - (t_cmd or t_ready), 2)
            if on_ready:
                on_ready({"qmp": str(tmp / "qmp-spare.sock"), "run": run, "tmpdir": str(tmp)})

            def take_aftermath() -> None:
                # After the dumps that leave the guest running, before one
                # that ends it.
                run["aftermath"] = run_aftermath(tmp, con, q.alive, aftermath_timeout)
                run["timings"]["aftermath_s"] = run["aftermath"]["seconds"]
            for s in sources:
                if s.ends_guest and aftermath and "aftermath" not in run:
                    take_aftermath()
                r = s.take(ctx)
                run[s.name] = str(r.path)
                run[f"{s.name}_format"] = r.format
                run["sizes"][s.name] = r.path.stat().st_size
                run["timings"].update(r.timings)
                if r.info:
                    run.setdefault("dump_info", {})[s.name] = r.info
            if aftermath and "aftermath" not in run:
                take_aftermath()
            if not arch.vmcoreinfo_device:
                run["vmcoreinfo"] = _dumps.write_vmcoreinfo(run, out_dir)
                if run["vmcoreinfo"] is None:
                    raise fail("no VMCOREINFO for this guest's dumps: the guest printed no "
                               "/sys/kernel/vmcoreinfo, or the run has no dump to read it from")
            if not any(s.ends_guest for s in sources):
                try:
                    qmp.cmd("quit")
                except (TestbedError, OSError):
                    pass
            q.wait(10)
    finally:
        if qmp:
            qmp.close()
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    run["timings"]["total_s"] = round(time.monotonic() - t_start, 2)
    # The guest's truth alone, beside the dumps (also run["truth"]).
    (out_dir / "truth.json").write_text(json.dumps(run["truth"], indent=1) + "\n")
    (out_dir / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return json.loads(json.dumps(run))


def _opts_into_initramfs(qemu_args: list[str], tmp: Path) -> list[str]:
    """For a machine whose QEMU takes no ``-fw_cfg name=...,file=...``
    (riscv64 virt: "fw_cfg device not available"): the run's
    opt/vmemspect/NAME files become /vmemspect-opt/NAME/raw in a cpio
    archive appended to the initramfs (the kernel unpacks concatenated
    archives), where scripts/guest/init.sh looks first."""
    out: list[str] = []
    files: list[tuple[str, bytes]] = []
    i = 0
    while i < len(qemu_args):
        a = qemu_args[i]
        if a == "-fw_cfg" and i + 1 < len(qemu_args):
            opts = dict(kv.split("=", 1) for kv in qemu_args[i + 1].split(","))
            name = opts.get("name", "")
            if not name.startswith("opt/vmemspect/") or "file" not in opts:
                raise TestbedError(f"cannot pass {qemu_args[i + 1]!r} without fw_cfg")
            files.append((name.removeprefix("opt/vmemspect/"), Path(opts["file"]).read_bytes()))
            i += 2
            continue
        out.append(a)
        i += 1
    c = _Cpio()
    c.dir("vmemspect-opt")
    for name, data in files:
        c.dir(f"vmemspect-opt/{name}")
        c.file(f"vmemspect-opt/{name}/raw", data, 0o644)
    k = out.index("-initrd")
    base = Path(out[k + 1]).read_bytes()
    initrd = tmp / "initrd-with-opts.img"
    initrd.write_bytes(base + b"\0" * (-len(base) % 4) + c.finish())
    out[k + 1] = str(initrd)
    return out


def summary(run: dict) -> str:
    """A few human lines about a run (the CLI's --summary)."""
    t = run["truth"]
    lines = [f"{run['series']} {run['scenario']}: {run['release']}",
             f"  cmdline: {run['cmdline']}",
             f"  boot {run['timings'].get('boot_s')} s, kdump {run['timings'].get('dump_s')} s "
             f"({run['sizes'].get('kdump', 0) / 1e6:.1f} MB)"
             + (f", elf {run['timings'].get('elf_dump_s')} s ({run['sizes']['elf'] / 1e9:.2f} GB)"
                if run.get("elf") else "")
             + f", total {run['timings'].get('total_s')} s",
             f"  hugetlb_optimize_vmemmap={t.get('hugetlb_optimize_vmemmap')} "
             f"vmstat={t.get('vmstat')} freeable={t.get('vmemmap_freeable_kib')}"]
    for size, h in sorted(t["hstates"].items(), key=lambda kv: int(kv[0])):
        nodes = " ".join(f"node{n}:{v.get('nr_hugepages')}/{v.get('free_hugepages')}"
                         for n, v in sorted(h["nodes"].items()))
        lines.append(f"  {size} kB: {h['global']}  (nr/free per node: {nodes})")
    lines.append(f"  hugetlb folios in /proc/kpageflags: {len(t['hugetlb_folios'])}; "
                 f"held in use: {len(t['in_use'])}")
    for s in t["steps"]:
        lines.append(f"  step: {s}")
    if t["errors"]:
        lines.append(f"  unparsed truth lines: {t['errors']}")
    if run.get("guest_cmd") is not None:
        lines.append(f"  guest_cmd rc={run['guest_cmd_rc']} ({run['timings'].get('guest_cmd_s')} s): "
                     f"{run['guest_cmd_output']!r}"[:2000])
        if run.get("guest_cmd_stderr"):
            lines.append(f"  guest_cmd stderr: {run['guest_cmd_stderr'][-1500:]!r}")
    if t.get("demote", {}).get("before"):
        d = t["demote"]
        lines.append("  1 GiB folios: before demote " + " ".join(hex(x) for x in d["before"])
                     + "; after " + " ".join(hex(x) for x in d["after"])
                     + "; demoted " + " ".join(hex(x) for x in d["demoted"]))
    a = run.get("aftermath")
    if a:
        lines.append(f"  aftermath ({a['seconds']} s, completed={a['completed']}, "
                     f"intact={a['intact']}): {len(a['warnings'])} WARNING(s), "
                     f"{len(a['static_key_dec_not_one'])} static_key_dec_not_one, "
                     f"bad page state {a['bad_page_state']} "
                     f"({a['bad_page_state_suppressed']} suppressed), vmstat {a['vmstat']}")
        for st in a["steps"]:
            lines.append(f"    {st}")
        for w in a["warnings"][:3]:
            lines.append(f"    {w}")
    if run.get("kdump"):
        lines.append(f"  kdump: {run['kdump']}")
    if run.get("elf"):
        lines.append(f"  elf: {run['elf']}")
    if run.get("vmcoreinfo"):
        v = run["vmcoreinfo"]
        lines.append(f"  vmcoreinfo: {v['path']} ({v['bytes']} bytes, from {v['source']} {v['dump']}"
                     + (f" at {v['paddr']}" if v.get("paddr") else "")
                     + (f"; the capture's agrees: {v['capture_agrees']}" if "capture_agrees" in v else "")
                     + ")")
    from .kdump import capture_summary
    lines += capture_summary(run)
    return "\n".join(lines)
