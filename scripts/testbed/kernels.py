"""The kernels the test bed boots: one registry entry each.

A kernel is a (series, flavour, suite) of Debian's archive, never a version:
scripts/fetch-kernel.sh takes the newest package of it in that suite, so the
registry stays right as Debian moves on.  Adding a kernel is adding one
``Kernel(...)`` line to KERNELS (and, for a new architecture, one ``Arch``).
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from .common import SCRIPTS, TestbedError, cache_dir


@dataclasses.dataclass(frozen=True)
class Arch:
    """How to run a guest of one architecture."""
    name: str           # as the kernel and drgn call it
    deb_arch: str       # Debian's name (package names, apt)
    qemu: str           # the QEMU system emulator
    machine: str        # -machine (no accel=: see qemu.base_args)
    cpu: str
    console: str        # the serial console device of the kernel command line
    smp: int = 2
    #: More QEMU arguments of every guest (firmware).
    qemu_opts: tuple = ()
    #: The C compiler of the guest's helpers (static), a cross compiler
    #: when the guest is not this machine's architecture.
    gcc: str = "gcc"
    #: Debian's multiarch triplet (library directories of the guest's
    #: dynamically linked tools, kdump.py).
    triplet: str = "x86_64-linux-gnu"
    #: The dynamic loader of those tools.
    loader: str = "ld-linux-x86-64.so.2"
    #: QEMU's ``-device vmcoreinfo`` works on this machine: the dumps carry
    #: the guest's VMCOREINFO.  Without it the test bed writes the note's
    #: text beside the dumps (vmcoreinfo.txt, dumps.write_vmcoreinfo()).
    vmcoreinfo_device: bool = True
    #: QEMU's ``-fw_cfg name=...,file=...`` works on this machine; without
    #: it the run's orders reach the guest as files in an extra initramfs
    #: archive (run.py).
    fw_cfg_files: bool = True
    #: How the host talks to a running guest besides the console (the
    #: aftermath's and the kdump capture's "go"): "serial" (the second
    #: UART, ttyS1) or "virtconsole" (hvc0 on virtio-serial, for machines
    #: with one UART).
    control: str = "serial"
    #: The crashkernel= reservation of kdump captures, by guest memory up to
    #: 2 GiB and above (kdump.crashkernel_for).
    crashkernel: tuple = ("160M", "384M")

    @property
    def control_dev(self) -> str:
        """The guest's device of the control channel."""
        return "/dev/ttyS1" if self.control == "serial" else "/dev/hvc0"


ARCHES = {
    "x86_64": Arch("x86_64", "amd64", "qemu-system-x86_64", "q35", "max", "ttyS0"),
    # QEMU 7.2 (bookworm's qemu-system-misc), virt machine, OpenSBI from
    # QEMU ("-bios default").  One vCPU: TCG is slower here, and one is
    # enough for every scenario.  On this machine QEMU 7.2 refuses
    # ``-device vmcoreinfo`` ("requires fw_cfg with DMA") and ``-fw_cfg``
    # ("fw_cfg device not available"), though the guest has a fw_cfg (MMIO);
    # virt has one UART.  The riscv64 kernel Image (36 MB) with its
    # initramfs needs more crash kernel memory than 160M.
    "riscv64": Arch("riscv64", "riscv64", "qemu-system-riscv64", "virt", "rv64", "ttyS0", smp=1,
                    qemu_opts=("-bios", "default"), gcc="riscv64-linux-gnu-gcc",
                    triplet="riscv64-linux-gnu", loader="ld-linux-riscv64-lp64d.so.1",
                    vmcoreinfo_device=False, fw_cfg_files=False, control="virtconsole",
                    crashkernel=("256M", "384M")),
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    id: str             # what --kernel and run_scenario() take
    series: str         # upstream series, e.g. "6.12"
    flavour: str        # Debian flavour: "cloud", "rt"
    suite: str          # Debian suite it comes from
    dbg: bool           # fetch the -dbg package (DWARF vmlinux) by default
    form: str           # tail struct page encoding vmemspect must find: "pointer" | "mask"
    arch: str = "x86_64"
    desc: str = ""
    #: Boots a test may try before it fails (each failed one said loudly).
    #: 2 for every kernel but one that is known to crash under TCG.
    boot_attempts: int = 2

    @property
    def arch_info(self) -> Arch:
        return ARCHES[self.arch]

    @property
    def release_suffix(self) -> str:
        """The end of the kernel release: "cloud-amd64"; "riscv64" for the
        one flavour Debian names after its architecture."""
        deb = self.arch_info.deb_arch
        return deb if self.flavour == deb else f"{self.flavour}-{deb}"

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["qemu"] = self.arch_info.qemu
        return d


# The -dbg packages of the rt flavours are about 1 GB: those kernels are
# used without one (vmemspect reads the kernel's own BTF).
KERNELS: dict[str, Kernel] = {k.id: k for k in (
    Kernel("6.1", "6.1", "cloud", "bookworm-security", True, "pointer",
           desc="Debian 12: page-based hugetlb, no nr_memmap_* in /proc/vmstat"),
    # 6.12.95 crashes in about a third of its boots under this QEMU's TCG
    # (corrupted EFLAGS: double faults, debug traps; with -cpu max or
    # Icelake-Server, 1 or 2 vCPUs), 6.12.117 of the same series never
    # (scripts/bench/boot-soak.py, docs/testbed.md): not root-caused.
    Kernel("6.12-bpo", "6.12", "cloud", "bookworm-backports", True, "pointer",
           desc="Debian 12 backports", boot_attempts=6),
    Kernel("6.12", "6.12", "cloud", "trixie", True, "pointer", desc="Debian 13"),
    Kernel("7.2", "7.2", "cloud", "sid", True, "mask", desc="unstable"),
    # The newest kernel Debian ships (hvo-facts.md: 7.3.4+deb13 seen);
    # without its -dbg (about 350 MB): vmemspect reads its BTF.
    Kernel("7.3", "7.3", "cloud", "trixie-backports", False, "mask",
           desc="Debian 13 backports, no -dbg (BTF)"),
    # Debian's generic flavour: its release has no flavour word
    # (6.12.117+deb13-amd64), like riscv64's; -dbg about 1 GB: BTF.
    Kernel("6.12-generic", "6.12", "amd64", "trixie", False, "pointer",
           desc="Debian 13 generic flavour, no -dbg (BTF)"),
    Kernel("6.12-rt", "6.12", "rt", "trixie", False, "pointer",
           desc="Debian 13 PREEMPT_RT, no -dbg (BTF)"),
    Kernel("7.2-rt", "7.2", "rt", "sid", False, "mask",
           desc="unstable PREEMPT_RT, no -dbg (BTF)"),
    # riscv64: Debian's one flavour, named after the architecture
    # (7.2.13+deb14-riscv64).  HVO built in (DEFAULT_ON off), BTF, no KASLR;
    # -dbg about 1 GB (1.2 GB for 7.2): fetched only on request.
    Kernel("7.2-riscv64", "7.2", "riscv64", "sid", False, "mask", arch="riscv64",
           desc="unstable riscv64, no -dbg (BTF), Sv48"),
    Kernel("6.12-riscv64", "6.12", "riscv64", "trixie", False, "pointer", arch="riscv64",
           desc="Debian 13 riscv64, no -dbg (BTF), Sv57"),
)}


def kernel(kernel_id: str) -> Kernel:
    try:
        return KERNELS[kernel_id]
    except KeyError:
        raise ValueError(f"unknown kernel {kernel_id!r}; have {', '.join(KERNELS)}") from None


def fetch_kernel(series: str, dbg: bool | None = None) -> Path:
    """Run fetch-kernel.sh for registry kernel ``series`` (a kernel id; a
    cache hit when present) and return the kernel's cache directory.
    ``dbg`` None: as the registry says."""
    k = kernel(series)
    want_dbg = k.dbg if dbg is None else dbg
    cmd = [str(SCRIPTS / "fetch-kernel.sh"), k.series, k.flavour, k.suite]
    if not want_dbg:
        cmd.append("--no-dbg")
    if k.arch_info.deb_arch != "amd64":
        cmd += ["--arch", k.arch_info.deb_arch]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise TestbedError(f"fetch-kernel.sh {' '.join(cmd[1:])} failed ({p.returncode}):\n"
                           f"{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if not lines:
        raise TestbedError(f"fetch-kernel.sh {' '.join(cmd[1:])} printed no directory")
    d = Path(lines[-1].strip())
    for f in ("vmlinuz", "qemu_fw_cfg.ko", "release") + (("vmlinux",) if want_dbg else ()):
        if not (d / f).is_file():
            raise TestbedError(f"{d} has no {f}")
    return d


def cached(k: Kernel) -> list[Path]:
    """The cache directories holding releases of ``k`` (oldest first), from
    the "package" file fetch-kernel.sh writes (suite, package, version);
    no network."""
    rel = re.compile(re.escape(k.series) + r"(\.[0-9]+)?(-[0-9]+)?(\+deb[0-9.]+)?-"
                     + re.escape(k.release_suffix) + "$")
    found = []
    for d in sorted((cache_dir() / "kernels").glob("*/package")):
        try:
            suite = d.read_text().split()[0]
        except (OSError, IndexError):
            continue
        if suite == k.suite and rel.match(d.parent.name):
            found.append(d.parent)
    return sorted(found, key=lambda p: [int(x) if x.isdigit() else x
                                        for x in re.split(r"(\d+)", p.name)])
