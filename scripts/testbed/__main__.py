"""The test bed's command line.

    python3 scripts/testbed kernels [--ids]          the kernel registry
    python3 scripts/testbed list [--names]           the scenarios
    python3 scripts/testbed fetch --kernel ID [--dbg|--no-dbg]
    python3 scripts/testbed initramfs --kernel ID
    python3 scripts/testbed run --kernel ID --scenario NAME [--out DIR]
                                [--elf] [--dump SOURCE]... [--aftermath]
                                [--guest-cmd CMD] [--hold] [--summary]
                                [--kernel-image BZIMAGE [--vmlinux F] [--modules DIR]]
    python3 scripts/testbed dumps                    the dump sources
    python3 scripts/testbed dump-info FILE           format, real compression, ELF gaps
    python3 scripts/testbed capture-tools [--arch A] kexec and makedumpfile builds of kdump captures
    python3 scripts/testbed torture --kernel ID --seed S --steps N [--minimize]
                                    the HVO torture run (docs/torture.md)

e.g. a real kdump capture, with QEMU's dump of the same state beside it:
    python3 scripts/testbed run --kernel 7.2 --dump kdump --dump capture-zstd-newest --summary

(``.venv/bin/python -m testbed ...``, the package scripts/deps.sh installs, does the same.)
"""
from __future__ import annotations

import os
import sys

if not __package__:
    # Run as `python3 scripts/testbed`: Python put scripts/testbed/ first on
    # sys.path, where the package's modules would import as top-level
    # modules (a second copy of each).  Put scripts/ there instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import testbed  # noqa: E402
from testbed import DUMPS, KERNELS, SCENARIOS, TestbedError  # noqa: E402
from testbed.kernels import cached  # noqa: E402


def _kernels(ids_only: bool) -> None:
    if ids_only:
        print("\n".join(KERNELS))
        return
    print(f"{'id':12} {'series':6} {'flavour':7} {'suite':19} {'dbg':3} {'form':7} "
          f"{'arch':7} cached release")
    for k in KERNELS.values():
        c = cached(k)
        rel = c[-1].name + (" (vmlinux)" if (c[-1] / "vmlinux").is_file() else "") if c else "-"
        print(f"{k.id:12} {k.series:6} {k.flavour:7} {k.suite:19} {'yes' if k.dbg else 'no':3} "
              f"{k.form:7} {k.arch:7} {rel}")
        if k.desc:
            print(f"{'':12} {k.desc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=testbed.__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    kn = sub.add_parser("kernels", help="list the kernel registry (and the releases in the cache)")
    kn.add_argument("--ids", action="store_true", help="ids only, one a line")
    ls = sub.add_parser("list", help="list the scenarios")
    ls.add_argument("--names", action="store_true", help="names only, one a line")
    f = sub.add_parser("fetch", help="fetch a kernel into the cache; prints its directory")
    f.add_argument("--kernel", required=True, choices=list(KERNELS))
    g = f.add_mutually_exclusive_group()
    g.add_argument("--dbg", action="store_true", default=None, help="also the -dbg package")
    g.add_argument("--no-dbg", dest="dbg", action="store_false", help="without the -dbg package")
    r = sub.add_parser("run", help="run one scenario; prints the path of run.json")
    r.add_argument("--kernel", default="7.2", choices=list(KERNELS), help="kernel id (see `kernels`)")
    r.add_argument("--scenario", default="hvo-2m", choices=list(SCENARIOS))
    r.add_argument("--out", type=Path, help="output dir (default: a new dir under the cache's runs/)")
    r.add_argument("--elf", action="store_true", help="also take an ELF dump")
    r.add_argument("--dump", action="append", choices=list(DUMPS), metavar="SOURCE",
                   help="dump source (repeatable; default kdump, plus elf with --elf); "
                        "see `dumps`")
    r.add_argument("--aftermath", action="store_true",
                   help="after the dump, let the guest release its holds and empty its "
                        "pools; record what the kernel said (run.json: aftermath)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--dbg", action="store_true", default=None,
                   help="fetch the -dbg package (DWARF vmlinux) even if the registry does not "
                        "(riscv64: about 1 GB)")
    g.add_argument("--no-dbg", dest="dbg", action="store_false",
                   help="do not fetch the -dbg package even if the registry does")
    r.add_argument("--guest-cmd", help="command to run in the guest before the dump")
    r.add_argument("--guest-cwd", help="working dir of --guest-cmd (live: default the current dir)")
    r.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the guest")
    r.add_argument("--hold", action="store_true",
                   help="once ready, print the spare QMP socket and wait for Enter/Ctrl-C before dumping")
    r.add_argument("--summary", action="store_true", help="print a summary to stderr")
    r.add_argument("--kernel-image", metavar="PATH",
                   help="a developer's own x86_64 build (bzImage) instead of a registry kernel")
    r.add_argument("--vmlinux", metavar="PATH", help="its vmlinux (DWARF; else the kernel's BTF)")
    r.add_argument("--modules", metavar="DIR",
                   help="where its qemu_fw_cfg.ko is (e.g. the build's modules install dir); "
                        "not needed with CONFIG_FW_CFG_SYSFS=y")
    i = sub.add_parser("initramfs", help="build (or find) the initramfs of a kernel; prints its path")
    i.add_argument("--kernel", default="7.2", choices=list(KERNELS))
    sub.add_parser("dumps", help="list the dump sources")
    di = sub.add_parser("dump-info", help="format and real compression of a dump file (JSON)")
    di.add_argument("file")
    ct = sub.add_parser("capture-tools",
                        help="the kexec and makedumpfile builds kdump captures use (JSON; fetches the newest)")
    ct.add_argument("--arch", default="x86_64", choices=list(testbed.ARCHES),
                    help="of guests of this architecture")
    t = sub.add_parser("torture", help="the HVO torture run: random HVO kernel paths, verify after "
                                        "every step (docs/torture.md); prints summary.json's path")
    t.add_argument("--kernel", default="7.2", choices=list(KERNELS))
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--steps", type=int, default=40)
    t.add_argument("--out", type=Path, help="run dir (default: under $VMEMSPECT_TEST_RUNS/torture)")
    t.add_argument("--minimize", action="store_true",
                   help="on a finding, delta-debug the steps from fresh boots and write reproducer.sh")
    t.add_argument("--replays", type=int, default=3, metavar="K",
                   help="--minimize: replays of the whole sequence (its reproduction rate), "
                        "at most K per candidate subset (fewer for a finding that comes every "
                        "time), K of the minimized one (default 3)")
    t.add_argument("--replay", type=Path, metavar="OPS_JSONL",
                   help="replay a run's operation log (from a fresh boot) instead of drawing")
    t.add_argument("--quiet", action="store_true", help="no line per step")
    t.add_argument("--exclude", default="", metavar="OP,...",
                   help="operations never to draw (names as in ops.jsonl, e.g. compact,offline)")
    t.add_argument("--kernel-image", metavar="PATH",
                   help="a developer's own x86_64 build (bzImage) instead of a registry kernel")
    t.add_argument("--vmlinux", metavar="PATH", help="its vmlinux (DWARF; else the kernel's BTF)")
    t.add_argument("--modules", metavar="DIR",
                   help="where its qemu_fw_cfg.ko is (e.g. the build's modules install dir); "
                        "not needed with CONFIG_FW_CFG_SYSFS=y")
    a = ap.parse_args(argv)
    if a.cmd == "torture":
        from testbed import torture as _t
        pr = None if a.quiet else (lambda x: print(x, file=sys.stderr, flush=True))
        try:
            if a.replay and a.minimize:
                # minimize a recorded finding (the log's step that has one)
                cfg, ops, head = _t.load_log(a.replay)
                recs = [json.loads(x) for x in a.replay.read_text().splitlines()[1:] if x.strip()]
                hits = [r for r in recs if r.get("finding") or r.get("kmsg_alarms")]
                if not hits:
                    print("testbed: no finding in that log", file=sys.stderr)
                    return 2
                f = hits[0]
                out = a.out or a.replay.parent
                out.mkdir(parents=True, exist_ok=True)
                r = _t.minimize_and_write(cfg, ops[:f["step"]], _t.signature(f), out,
                                          _t.quiet_steps(recs, head.get("boot_state") or {}),
                                          head.get("release", ""), pr, a.replays)
                print(json.dumps(r, indent=1))
                return 3 if r["minimized"]["reproduced"] else 0
            if a.replay:
                cfg, ops, _ = _t.load_log(a.replay)
                out = a.out or _t.runs_dir() / f"replay-{cfg.kernel}-{os.getpid()}"
                out.mkdir(parents=True, exist_ok=True)
                r = _t.replay(cfg, ops, out, check_every=True)
                f = r["finding"]
                print(json.dumps({"steps": len(r["records"]), "finding": f and {
                    "step": f["step"], "signature": list(_t.signature(f))}}, indent=1))
                return 3 if f else 0
            own = ({"kernel_image": a.kernel_image, "vmlinux": a.vmlinux, "modules": a.modules}
                   if a.kernel_image else None)
            s = _t.torture(a.kernel, a.seed, a.steps, a.out, minimize_it=a.minimize, print_fn=pr,
                           own=own, exclude=tuple(x for x in a.exclude.split(",") if x),
                           replays=a.replays)
        except TestbedError as e:
            print(f"testbed: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("testbed: interrupted (QEMU stopped)", file=sys.stderr)
            return 130
        keep = ("kernel", "release", "seed", "steps_run", "refused", "check_s", "step_s_mean",
                "finding", "run_s", "minimized", "reproducer")
        brief = {k: s.get(k) for k in keep if k in s}
        if brief.get("finding"):
            brief["finding"] = {k: v for k, v in brief["finding"].items() if k != "findings"}
            brief["confirmed_by"] = s["confirmation"]["confirmed_by"]
            if s["confirmation"].get("emulator_artifact"):
                brief["emulator_artifact"] = s["confirmation"]["emulator_artifact"]
        print(json.dumps(brief, indent=1), file=sys.stderr)
        print(Path(s["out_dir"]) / "summary.json")
        return 3 if s.get("finding") else 0

    if a.cmd == "dumps":
        for n, src in DUMPS.items():
            print(f"{n:20} {src.desc or (src.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if a.cmd == "dump-info":
        info = testbed.dump_info(a.file)
        if info["format"] == "elf":
            info["elf_filtered_ranges"] = [[hex(lo), hex(hi)] for lo, hi in testbed.elf_filtered_ranges(a.file)]
        print(json.dumps(info, indent=1))
        return 0

    if a.cmd == "kernels":
        _kernels(a.ids)
        return 0
    if a.cmd == "list" and a.names:
        print("\n".join(SCENARIOS))
        return 0
    if a.cmd == "list":
        for n, sc in SCENARIOS.items():
            print(f"{n:8} -m {sc['mem']:3}  {sc['cmdline']}\n{'':8}   {sc['desc']}")
        return 0
    try:
        if a.cmd == "fetch":
            print(testbed.fetch_kernel(a.kernel, dbg=a.dbg))
            return 0
        if a.cmd == "initramfs":
            print(testbed.build_initramfs(testbed.fetch_kernel(a.kernel, dbg=False),
                                          testbed.kernel(a.kernel).arch_info))
            return 0
        if a.cmd == "capture-tools":
            from testbed import kdump
            arch = testbed.ARCHES[a.arch]
            print(json.dumps({"kexec": kdump.kexec_bundle(arch).describe(),
                              **{b: kdump.makedumpfile_bundle(b, arch).describe() for b in kdump.BUILDS
                                 if arch.name == "x86_64" or b == "newest"}},
                             indent=1))
            return 0
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1

    def hold(info):
        print(f"guest ready; spare QMP socket: {info['qmp']}\n"
              f"  e.g. drgn --qemu {info['qmp']} -s {info['run']['vmlinux']}\n"
              "press Enter (or Ctrl-C) to dump and stop", file=sys.stderr)
        try:
            sys.stdin.readline()
        except KeyboardInterrupt:
            pass

    if (a.vmlinux or a.modules) and not a.kernel_image:
        print("testbed: --vmlinux and --modules go with --kernel-image", file=sys.stderr)
        return 2
    own = ({"kernel_image": a.kernel_image, "vmlinux": a.vmlinux, "modules": a.modules}
           if a.kernel_image else None)
    try:
        run = testbed.run_scenario(a.kernel, a.scenario, a.out or None, elf=a.elf,
                                   guest_cmd=a.guest_cmd, guest_cwd=a.guest_cwd,
                                   timeout=a.timeout, dbg=a.dbg,
                                   on_ready=hold if a.hold else None,
                                   aftermath=a.aftermath, dumps=a.dump, own=own)
    except TestbedError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("testbed: interrupted (QEMU stopped)", file=sys.stderr)
        return 130
    if a.summary:
        print(testbed.summary(run), file=sys.stderr)
    print(Path(run["console"]).parent / "run.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
