"""The HVO torture run: drive a guest through random kernel paths that touch
HugeTLB Vmemmap Optimization and verify its memory after every step.

    python3 scripts/testbed torture --kernel 6.12 --seed 1 --steps 40
    python3 scripts/testbed torture --replay RUN_DIR/ops.jsonl [--minimize]

One guest (two NUMA nodes of 2 GiB: 1 GiB pages and migration need both),
its RAM in shared memory files (/dev/shm) that the host maps.  From
``random.Random(seed)`` the host draws N operations (OPS below), each an sh
function of scripts/guest/torture-agent.sh run by the guest's agent over
the control port (init.sh: agent_loop), or a QMP command (a DIMM hot-plug).
After every step the host pauses the guest, runs vmemspect's verify
in-process on the guest's memory (a drgn Program whose physical memory is
the mapped RAM files and whose VMCOREINFO is the guest's note, read from
that RAM: nothing is dumped), resumes it, and scans what the kernel said
during the step (the agent returns the new dmesg lines) for WARNING, BUG,
Oops and Bad page state.

A finding or a kernel warning stops the run.  The run directory keeps the
operation log (ops.jsonl: the guest's configuration, then one line per
step), the guest's console, a kdump-compressed dump of the state, vmemspect's
report of it (verify.txt, verify.json), and the confirmation
(confirm.json): scripts/plain-drgn-hvo.py on the dump (plain drgn), the
kernel's own counters, and the aftermath (the guest releases everything and
empties every pool: what the kernel says then, and whether nr_memmap_pages
comes back to its value at boot).

``--minimize`` replays subsets of the steps up to the finding from fresh
boots (delta debugging, ddmin) down to a shortest sequence that still gives
the same check's finding (or the same warning), and writes reproducer.sh
(torture-agent.sh plus the operations; runs as root on a real machine).
"""
from __future__ import annotations

import base64
import json
import mmap
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import GUEST, SCRIPTS, TestbedError, cache_dir
from .dumps import parse_vmcoreinfo_note, qmp_dump, _reassemble
from .initramfs import build_initramfs
from .kernels import fetch_kernel, kernel
from .qemu import QMP, _Proc, _Signals, base_args, control_args
from .scenarios import BASE_CMDLINE
from .truth import CRASH, Console, GuestProtocol, ProtocolError

AGENT = GUEST / "torture-agent.sh"
GIB = 1 << 30
#: The kernel's messages that stop a run (scanned in each step's dmesg and
#: in the console).
KERNEL_ALARM = re.compile(r"(WARNING:.*|BUG:.*|Oops.*|Bad page state.*|kernel BUG.*|"
                          r"general protection fault.*|Kernel panic.*)")
# not alarms: what MADV_HWPOISON / soft offline say when they work
BENIGN = re.compile(r"Memory failure: .*(Recovered|recovery action)|Injecting memory failure|"
                    r"soft offline: .*: (hugepage migration succeeded|page migration)|"
                    # a user process's trap, not the kernel's (seen on
                    # 6.12.95 under TCG: "traps: busybox[...] general
                    # protection fault ip:40235d sp:... in busybox[...]")
                    r"general protection fault ip:[0-9a-f]+ sp:")


class GuestCrash(TestbedError):
    """The guest kernel oopsed or panicked during an operation: a finding
    of its own (the run records it and stops)."""

    def __init__(self, msg: str, text: str) -> None:
        super().__init__(msg)
        self.text = text


def runs_dir() -> Path:
    return Path(os.environ.get("VMEMSPECT_TEST_RUNS") or cache_dir() / "test-runs") / "torture"


# ---------------------------------------------------------------- the guest

def bzimage_release(image: Path) -> str:
    """The release of an x86 bzImage, from its setup header (kernel_version
    at 0x20e points at "RELEASE (builder) #N ...", offset + 0x200)."""
    with open(image, "rb") as f:
        hdr = f.read(0x300)
        if hdr[0x202:0x206] != b"HdrS":
            raise TestbedError(f"{image}: not an x86 bzImage (no HdrS)")
        off = int.from_bytes(hdr[0x20e:0x210], "little") + 0x200
        f.seek(off)
        return f.read(256).split(b"\0")[0].split()[0].decode()


def own_kernel_dir(image: str, vmlinux: str | None, modules: str | None) -> Path:
    """A kernel directory like the cache's (vmlinuz, vmlinux, qemu_fw_cfg.ko,
    release, config) for a developer's own build, given as plain files."""
    image_p = Path(image).resolve()
    if not image_p.is_file():
        raise TestbedError(f"{image}: no such kernel image")
    release = bzimage_release(image_p)
    st = image_p.stat()
    import hashlib
    key = hashlib.sha256(f"{image_p}:{st.st_size}:{st.st_mtime_ns}:{vmlinux}:{modules}".encode())
    d = cache_dir() / "own-kernels" / f"{release}-{key.hexdigest()[:12]}"
    d.mkdir(parents=True, exist_ok=True)
    for name, src in (("vmlinuz", image_p), ("vmlinux", Path(vmlinux).resolve() if vmlinux else None)):
        link = d / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if src is not None:
            if not src.is_file():
                raise TestbedError(f"{src}: no such file")
            link.symlink_to(src)
    (d / "release").write_text(release + "\n")
    ko = d / "qemu_fw_cfg.ko"
    found = None
    if modules:
        for cand in sorted(Path(modules).rglob("qemu_fw_cfg.ko*")):
            found = cand
            break
    if found is not None:
        data = found.read_bytes()
        if found.suffix == ".xz":
            import lzma
            data = lzma.decompress(data)
        elif found.suffix == ".zst":
            data = subprocess.run(["zstd", "-dc", str(found)], stdout=subprocess.PIPE,
                                  check=True).stdout
        elif found.suffix == ".gz":
            import gzip
            data = gzip.decompress(data)
        ko.write_bytes(data)
    elif not ko.exists():
        # built in (CONFIG_FW_CFG_SYSFS=y): init.sh does not load it
        ko.write_bytes(b"")
    for cand in ([Path(modules) / "config", *Path(modules).glob("config*")] if modules else []) + \
            [image_p.parent / f"config-{release}", image_p.parent / "config",
             image_p.parent / ".config"]:
        if cand.is_file():
            shutil.copy(cand, d / "config")
            break
    return d


@dataclass
class GuestConfig:
    """What a torture guest boots with: drawn from the seed, written at the
    top of the operation log, the same for every replay."""
    kernel: str
    # node 1 is 3 GiB: two 1 GiB-aligned ranges above the PCI hole, one of
    # them free of the boot allocations (the numa scenario saw 2 GiB fail)
    nodes: list[int] = field(default_factory=lambda: [2, 3])   # GiB per node
    # nokaslr: replays from fresh boots see the same physical layout
    cmdline: str = "hugetlb_free_vmemmap=on nokaslr"
    memmap_on_memory: bool = False
    cma: str | None = None          # hugetlb_cma= (kernels with CONFIG_CMA)
    maxmem_g: int = 8               # room for hot-plugged DIMMs
    # a developer's own build (kernel "own"): plain files
    kernel_image: str | None = None
    vmlinux: str | None = None
    modules: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def full_cmdline(self) -> str:
        extra = [self.cmdline]
        if self.memmap_on_memory:
            extra.append("memory_hotplug.memmap_on_memory=1")
        if self.cma:
            extra.append(f"hugetlb_cma={self.cma}")
        return " ".join(extra)


def _kernel_has(kdir: Path, option: str) -> bool:
    try:
        return f"\n{option}=y" in "\n" + (kdir / "config").read_text()
    except OSError:
        return False


class TortureGuest:
    """A running torture guest: QEMU with its RAM in /dev/shm files, the
    agent on the control port, QMP.  Use as a context manager: QEMU and the
    RAM files never outlive it."""

    def __init__(self, cfg: GuestConfig, out_dir: Path, boot_timeout: float = 120.0,
                 dbg: bool | None = None) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.boot_timeout = boot_timeout
        if cfg.kernel_image:
            from .kernels import ARCHES
            self.kdir = own_kernel_dir(cfg.kernel_image, cfg.vmlinux, cfg.modules)
            self.k = None
            self.arch = ARCHES["x86_64"]
            self.vmlinux = str(self.kdir / "vmlinux") if cfg.vmlinux else None
        else:
            self.k = kernel(cfg.kernel)
            self.arch = self.k.arch_info
            self.kdir = fetch_kernel(cfg.kernel, dbg=dbg)
            self.vmlinux = (str(self.kdir / "vmlinux")
                            if (self.k.dbg if dbg is None else dbg)
                            and (self.kdir / "vmlinux").is_file() else None)
        if self.arch.name != "x86_64":
            raise TestbedError("torture runs x86_64 guests only")
        self.release = (self.kdir / "release").read_text().strip()
        self.procs: list[_Proc] = []
        self.qmp: QMP | None = None
        self.ctl: socket.socket | None = None
        self.ctl_buf = b""
        self.tmp: Path | None = None
        self.shm: list[Path] = []
        self.maps: list[tuple[int, int, mmap.mmap, int]] = []  # (gpa, size, map, offset)
        self.mms: list[mmap.mmap] = []
        self.fds: list[int] = []
        self.dimms = 0
        self.prog = None
        self.crashed: str | None = None
        self.truth: dict | None = None
        self.timings: dict = {}
        self._sig = _Signals()

    # -- life cycle
    def __enter__(self) -> "TortureGuest":
        self._sig.__enter__()
        # TCG crashes some kernels at boot (6.12.95: about a third of its
        # boots, kernels.py): boot again, loudly, as often as the registry
        # allows that kernel.
        attempts = self.k.boot_attempts if self.k else 1
        for attempt in range(1, attempts + 1):
            try:
                self.boot()
                break
            except TestbedError as e:
                self.stop()
                if attempt == attempts:
                    self._sig.__exit__(None, None, None)
                    raise
                first = str(e).splitlines()[0]
                self.timings.setdefault("failed_boots", []).append(first)
                print(f"torture: {self.cfg.kernel}: boot {attempt} of {attempts} FAILED: {first}",
                      file=sys.stderr, flush=True)
            except BaseException:
                self.stop()
                self._sig.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        self._sig.__exit__(*exc)
        return False

    def _shm_file(self, name: str, size: int) -> Path:
        p = Path("/dev/shm") / f"vmemspect-torture-{os.getpid()}-{id(self) & 0xffffff:x}-{name}"
        with open(p, "wb") as f:
            f.truncate(size)
        self.shm.append(p)
        return p

    def boot(self) -> None:
        cfg = self.cfg
        self.ctl_buf = b""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        initrd = build_initramfs(self.kdir, self.arch)
        self.tmp = Path(tempfile.mkdtemp(prefix="vmemspect-torture-"))
        tmp = self.tmp
        (tmp / "scenario").write_text("torture")
        shutil.copy(AGENT, tmp / "agent")
        total = sum(cfg.nodes)
        console = self.out_dir / "console.log"
        if console.exists():
            console.unlink()
        self.console_path = console
        args = base_args(self.arch, f"{total}G,slots=4,maxmem={total + cfg.maxmem_g}G", "",
                         min_smp=max(2, len(cfg.nodes)))
        for i, g in enumerate(cfg.nodes):
            f = self._shm_file(f"m{i}", g * GIB)
            args += ["-object", f"memory-backend-file,id=m{i},size={g}G,mem-path={f},share=on",
                     "-numa", f"node,nodeid={i},memdev=m{i}"]
        cmdline = " ".join([f"console={self.arch.console}", BASE_CMDLINE, cfg.full_cmdline()])
        self.cmdline = cmdline
        args += ["-kernel", str(self.kdir / "vmlinuz"), "-initrd", str(initrd), "-append", cmdline,
                 "-chardev", f"file,id=ser0,path={console}", "-serial", "chardev:ser0",
                 "-qmp", f"unix:{tmp}/qmp.sock,server=on,wait=off",
                 # a spare one: drgn --qemu, for a developer (or the
                 # read-path measurement, scripts/bench/torture-readpaths.py)
                 "-qmp", f"unix:{tmp}/qmp-spare.sock,server=on,wait=off",
                 "-device", "vmcoreinfo",
                 "-fw_cfg", f"name=opt/vmemspect/scenario,file={tmp}/scenario",
                 "-fw_cfg", f"name=opt/vmemspect/agent,file={tmp}/agent",
                 "-chardev", f"socket,id=ctl,path={tmp}/ctl.sock,server=on,wait=off",
                 *control_args(self.arch, "ctl")]
        self.qemu_args = args
        t0 = time.monotonic()
        q = _Proc(args, self.out_dir / "qemu.log")
        self.procs.append(q)
        self.q = q
        self.qmp = QMP(tmp / "qmp.sock", alive=q.alive)
        self.con = Console(console)
        guest = GuestProtocol()
        deadline = t0 + self.boot_timeout
        while not guest.ready:
            for ln in self.con.poll():
                try:
                    guest.feed(ln)
                except ProtocolError as e:
                    raise self.fail(str(e)) from None
                if guest.ready:
                    break
            if guest.ready:
                break
            if not q.alive():
                raise self.fail(f"QEMU exited ({q.p.returncode}) before READY")
            if time.monotonic() > deadline:
                raise self.fail(f"timed out in state {guest.state!r} waiting for READY")
            time.sleep(0.05)
        self.truth = guest.truth()
        self.timings["boot_s"] = round(time.monotonic() - t0, 2)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.connect(str(tmp / "ctl.sock"))
        self._map_ram()

    def fail(self, msg: str) -> TestbedError:
        try:
            qlog = (self.out_dir / "qemu.log").read_text(errors="replace")[-2000:]
        except OSError:
            qlog = ""
        return TestbedError(f"torture {self.cfg.kernel}: {msg}\n--- qemu.log ---\n{qlog}"
                            f"\n--- console tail ---\n{self.con.tail() if hasattr(self, 'con') else ''}")

    def stop(self) -> None:
        self.prog = None
        for m in self.mms:
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        for fd in self.fds:
            os.close(fd)
        self.maps, self.mms, self.fds = [], [], []
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        if self.qmp:
            try:
                self.qmp.cmd("quit")
            except (TestbedError, OSError):
                pass
            self.qmp.close()
            self.qmp = None
        for p in reversed(self.procs):
            p.stop()
        self.procs = []
        for f in self.shm:
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        self.shm = []
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    # -- guest RAM
    def _map_ram(self) -> None:
        """Map the RAM files at their guest-physical addresses.  q35 puts
        the first 2 GiB of RAM (the node backends in order) below the PCI
        hole and the rest from 4 GiB (when RAM is 2.75 GiB or more), DIMMs
        where QEMU says (query-memory-devices)."""
        total = sum(self.cfg.nodes) * GIB
        low = total if total < 0xb0000000 else 0x80000000
        off = 0
        for i, g in enumerate(self.cfg.nodes):
            size = g * GIB
            fd = os.open(self.shm[i], os.O_RDONLY)
            self.fds.append(fd)
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            self.mms.append(m)
            pos = 0
            while pos < size:
                ram = off + pos
                if ram < low:
                    n = min(size - pos, low - ram)
                    gpa = ram
                else:
                    n = size - pos
                    gpa = ram - low + (1 << 32)
                self.maps.append((gpa, n, m, pos))
                pos += n
            off += size

    def add_dimm(self) -> dict:
        """Hot-plug a 1 GiB pc-dimm over QMP (RAM in a shared file too)."""
        i = self.dimms
        f = self._shm_file(f"dimm{i}", GIB)
        self.qmp.cmd("object-add", **{"qom-type": "memory-backend-file", "id": f"hp{i}",
                                      "size": GIB, "mem-path": str(f), "share": True})
        self.qmp.cmd("device_add", driver="pc-dimm", id=f"dimm{i}", memdev=f"hp{i}")
        self.dimms += 1
        addr = None
        for d in self.qmp.cmd("query-memory-devices") or []:
            if d.get("data", {}).get("id") == f"dimm{i}":
                addr = d["data"]["addr"]
        if addr is None:
            raise TestbedError(f"dimm{i}: no address in query-memory-devices")
        fd = os.open(f, os.O_RDONLY)
        self.fds.append(fd)
        m = mmap.mmap(fd, GIB, mmap.MAP_SHARED, mmap.PROT_READ)
        self.mms.append(m)
        self.maps.append((addr, GIB, m, 0))
        if self.prog is not None:
            self._add_segment(self.prog, addr, GIB, m, 0)
        return {"dimm": f"dimm{i}", "addr": hex(addr), "size": GIB}

    def read_phys(self, addr: int, size: int) -> bytes:
        for gpa, n, m, base in self.maps:
            if gpa <= addr and addr + size <= gpa + n:
                o = base + addr - gpa
                return m[o:o + size]
        raise ValueError(f"{addr:#x}+{size:#x} not in guest RAM")

    @staticmethod
    def _add_segment(prog, gpa: int, n: int, m: mmap.mmap, base: int) -> None:
        def read(address, count, offset, physical, m=m, base=base):
            o = base + offset
            return m[o:o + count]
        prog.add_memory_segment(gpa, n, read, physical=True)

    def program(self):
        """The drgn Program over the guest's RAM (built once: the debug info
        is loaded once; what vmemspect caches about the memory is dropped
        before each check)."""
        if self.prog is not None:
            return self.prog
        import drgn
        from vmemspect.target import _X86_64, load_debug_info
        note = self.truth.get("vmcoreinfo_note")
        if not note:
            raise TestbedError("the guest printed no /sys/kernel/vmcoreinfo")
        info = parse_vmcoreinfo_note(self.read_phys(note["paddr"], note["size"] + 64))
        prog = drgn.Program(_X86_64)
        for gpa, n, m, base in self.maps:
            self._add_segment(prog, gpa, n, m, base)
        # not live: the guest is paused while vmemspect reads it
        prog.set_linux_kernel_custom(info.encode(), False)
        t0 = time.monotonic()
        load_debug_info(prog, self.vmlinux)
        self.timings["debug_info_s"] = round(time.monotonic() - t0, 2)
        self.prog = prog
        return prog

    # -- the agent
    def agent(self, script: str, timeout: float = 120.0) -> dict:
        """Run ``script`` (sh, with torture-agent.sh's functions) in the
        guest; returns {rc, out, kmsg, seconds}."""
        t0 = time.monotonic()
        self.ctl.settimeout(10.0)
        try:
            self.ctl.sendall(base64.b64encode(script.encode()) + b"\n")
        except OSError as e:    # a hung or dead guest (TimeoutError too)
            self._console_crash()
            raise self.fail(f"control port: {type(e).__name__}: {e}") from None
        self.ctl.settimeout(0.5)
        end = t0 + timeout
        while b"@R END" not in self.ctl_buf or not self.ctl_buf.split(b"@R END", 1)[1].count(b"\n"):
            if time.monotonic() > end:
                raise self.fail(f"agent: no answer in {timeout} s to {script!r}")
            if not self.q.alive():
                self._console_crash()
                raise self.fail("QEMU exited during an operation")
            try:
                d = self.ctl.recv(65536)
            except socket.timeout:
                self._console_crash()
                continue
            if not d:
                self.q.wait(2)
                self._console_crash()
                raise self.fail("control port closed")
            self.ctl_buf += d
        text, _, rest = self.ctl_buf.partition(b"@R END")
        rc_line, _, self.ctl_buf = rest.partition(b"\n")
        body = text.split(b"@R BEGIN", 1)[-1]
        out_b64, _, kmsg_b64 = body.partition(b"@R KMSG")
        dec = lambda b: base64.b64decode(b"".join(b.split())).decode("utf-8", "replace")
        return {"rc": int(rc_line.strip() or -1), "out": dec(out_b64), "kmsg": dec(kmsg_b64),
                "seconds": round(time.monotonic() - t0, 2)}

    def _console_crash(self) -> None:
        self.con.poll()
        kernel_lines = "\n".join(ln for ln in self.con.tail(400).splitlines() if "@VMS" not in ln)
        crash = CRASH.search(kernel_lines)
        if crash:
            time.sleep(1.0)     # let the report finish
            text = "\n".join(ln for ln in self.con.tail(400).splitlines() if "@VMS" not in ln)
            i = text.find(crash.group(0))
            raise GuestCrash(f"the guest kernel crashed: {crash.group(0)}", text[i:])

    # -- the check
    def check(self) -> dict:
        """Pause, verify in-process, resume.  Returns {ok, findings (the
        verify document's), checks (their names), seconds, error}."""
        from vmemspect.documents import verify_doc
        from vmemspect.progcache import forget_state
        from vmemspect.report import build_report
        t0 = time.monotonic()
        self.qmp.cmd("stop")
        try:
            prog = self.program()
            # The guest ran since the last check: what its kernel changes is read afresh.
            forget_state(prog)
            t1 = time.monotonic()
            try:
                doc = verify_doc(build_report(prog))
                err = None
            except Exception as e:  # a vmemspect failure on a real state
                doc, err = None, f"{type(e).__name__}: {e}"
        finally:
            self.qmp.cmd("cont")
        r = {"seconds": round(time.monotonic() - t0, 2), "verify_s": round(time.monotonic() - t1, 2),
             "error": err}
        if doc is not None:
            r.update(ok=doc["ok"], findings=doc["findings"],
                     checks=sorted({f["check"] for f in doc["findings"]}),
                     checked_folios=doc["checked_folios"], unknown=doc["unknown"])
        else:
            r.update(ok=False, findings=[], checks=["vmemspect-error"])
        return r

    def dump(self, path: Path) -> Path:
        flat = path.with_suffix(path.suffix + ".flat")
        qmp_dump(self.qmp, flat, "kdump-zlib", 600)
        _reassemble(flat, path)
        return path


# ---------------------------------------------------------------- operations

# name: weight.  Each op draws its arguments in draw(); "run" turns it into
# the agent's sh line (or "qmp" ops, run by the host).
OPS: dict[str, int] = {
    "pool": 10, "pool_node": 6, "pool_1g": 4, "pool_1g_node": 2, "sysctl": 4, "demote": 3,
    "overcommit": 3, "falloc": 6, "punch": 4, "truncate": 3, "fault": 4, "rm": 3, "hold": 3,
    "unhold": 2, "move": 3, "mbind": 2, "offline": 2, "online": 2, "soft_offline": 2,
    "madv_soft": 2, "madv_hwpoison": 1, "pressure": 1, "unpressure": 1, "compact": 2,
    "dimm": 1, "pool_max": 1,
    # never drawn (weight 0: every seed draws what it drew before); run it
    # from an operation log (--replay): docs/torture.md, "vmemmap restore"
    "squeeze": 0, "unsqueeze": 0,
}
SIZES = (2048, 1048576)


def draw(rng: random.Random, nodes: int, exclude: tuple = ()) -> dict:
    # (an excluded operation gets weight 0: the seed then draws another
    # sequence than without the exclusion)
    name = rng.choices(list(OPS), weights=[0 if n in exclude else w for n, w in OPS.items()])[0]
    node = rng.randrange(nodes)
    size = 2048 if rng.random() < 0.85 else 1048576
    k = rng.randrange(3)
    a: list = []
    if name == "pool":
        a = [2048, "all", rng.choice([0, 8, 16, 32, 64, 100, 150, rng.randrange(200)])]
    elif name == "pool_max":
        # nearly all memory in 2 MiB pages (all of it: the kernel can only
        # panic, "System is deadlocked on memory", as 7.3 did)
        a = [2048, 160]
    elif name == "pool_node":
        a = [2048, node, rng.choice([0, 4, 16, 40, rng.randrange(100)])]
    elif name == "pool_1g":
        a = [1048576, "all", rng.choice([0, 1, 1, 2])]
    elif name == "pool_1g_node":
        a = [1048576, node, rng.choice([0, 1])]
    elif name == "sysctl":
        a = [rng.choice([0, 1])]
    elif name == "demote":
        a = [rng.choice([1, 1, 2])]
    elif name == "overcommit":
        a = [size, rng.choice([0, 4, 16] if size == 2048 else [0, 1])]
    elif name in ("falloc", "punch"):
        n = rng.choice([1, 2, 4, 8, 16]) if size == 2048 else 1
        a = [size, k, rng.randrange(8) if size == 2048 else 0, n]
    elif name == "truncate":
        a = [size, k, rng.choice([0, 1, 2, 4]) if size == 2048 else rng.choice([0, 1])]
    elif name in ("fault", "hold"):
        a = [size, k, rng.choice([1, 2, 4, 8]) if size == 2048 else 1]
    elif name == "rm":
        a = [size, k]
    elif name in ("move", "mbind"):
        a = [size, k, node]
    elif name == "offline":
        a = [rng.randrange(1000)]
    elif name == "soft_offline":
        a = [rng.randrange(1000), rng.choice([0, 0, 1, 511])]
    elif name in ("madv_soft", "madv_hwpoison"):
        a = [size, k, rng.randrange(4) if size == 2048 else 0]
    elif name == "squeeze":
        a = [1048576, 12]
    elif name == "unsqueeze":
        a = [1048576]
    elif name == "pressure":
        # (a hog touches its memory: under TCG about 160 MB/s, hence the cap;
        # pool_max is the cheap way to fill memory)
        a = [rng.choice([80, 95, 99]), 400]
    return {"op": name, "args": a}


def sh_line(op: dict) -> str | None:
    """The agent's sh line of an operation (None: a host-side QMP op)."""
    n, a = op["op"], [str(x) for x in op["args"]]
    table = {"pool": "op_pool", "pool_node": "op_pool", "pool_1g": "op_pool",
             "pool_1g_node": "op_pool", "pool_max": "op_pool_fill", "sysctl": "op_sysctl", "demote": "op_demote",
             "overcommit": "op_overcommit", "falloc": "op_falloc", "punch": "op_punch",
             "truncate": "op_truncate", "fault": "op_fault", "rm": "op_rm", "hold": "op_hold",
             "unhold": "op_unhold", "move": "op_move", "mbind": "op_mbind",
             "offline": "op_offline", "online": "op_online",
             "soft_offline": "op_soft_offline", "pressure": "op_pressure",
             "unpressure": "op_unpressure", "compact": "op_compact",
             "squeeze": "op_squeeze", "unsqueeze": "op_unsqueeze"}
    if n == "madv_soft":
        return " ".join(["op_madv", *a, "soft"])
    if n == "madv_hwpoison":
        return " ".join(["op_madv", *a, "hwpoison"])
    if n == "dimm":
        return None
    if n == "pool_max" and len(a) == 3:
        # (logs written before pool_max left memory: the whole pool)
        return " ".join(["op_pool", *a])
    return " ".join([table[n], *a])


def guest_config(kernel_id: str, rng: random.Random, own: dict | None = None) -> GuestConfig:
    if own and own.get("kernel_image"):
        cfg = GuestConfig(kernel="own", **own)
        kdir = own_kernel_dir(cfg.kernel_image, cfg.vmlinux, cfg.modules)
    else:
        kdir = fetch_kernel(kernel_id, dbg=False)
        cfg = GuestConfig(kernel=kernel_id)
    cfg.memmap_on_memory = rng.random() < 0.5
    if _kernel_has(kdir, "CONFIG_CMA") and rng.random() < 0.5:
        cfg.cma = "0:0,1:1G"     # gigantic pages of node 1 from CMA
    return cfg


def parse_state(out: str) -> dict:
    s: dict = {"pools": {}}
    for ln in out.splitlines():
        w = ln.split()
        if not w:
            continue
        if w[0] == "pool" and len(w) >= 2:
            s["pools"][w[1]] = dict(x.split("=", 1) for x in w[2:] if "=" in x)
        elif w[0] == "vmstat" and len(w) == 3:
            s[w[1]] = int(w[2])
        elif w[0] in ("sysctl", "memfree", "offline_blocks") and len(w) == 2:
            s[w[0]] = w[1]
    return s


#: kernel alarms that mean the kernel crashed (not a warning)
OOPS = re.compile(r"(Oops|BUG:|kernel BUG|general protection fault|Kernel panic)")


def impossible_eflags(text: str) -> str | None:
    """The first EFLAGS value of a kernel register dump with reserved bits
    (22-31) set: no CPU does that; seen on 6.12.95 under TCG (double
    faults, NULL dereferences in the maple tree), never on real x86."""
    for m in re.finditer(r"EFLAGS: ([0-9a-f]{8,16})", text):
        if int(m.group(1), 16) >> 22:
            return m.group(1)
    return None


def alarms(kmsg: str) -> list[str]:
    return [m.group(0) for m in KERNEL_ALARM.finditer(kmsg) if not BENIGN.search(m.group(0))]


# ---------------------------------------------------------------- a run

def run_ops(g: TortureGuest, ops: list[dict], log, check_every: bool = True,
            stop_on_finding: bool = True, print_fn=None, settle: float = 2.0) -> dict:
    """Run ``ops`` on guest ``g``, writing a JSON line per step to ``log``
    (a file or None).  Returns {steps, finding (None or the step's record),
    step_s (check times)}."""
    finding = None
    records = []
    for i, op in enumerate(ops):
        t0 = time.monotonic()
        line = sh_line(op)
        if line is None:
            try:
                res = {"rc": 0, "out": json.dumps(g.add_dimm()), "kmsg": ""}
            except TestbedError as e:
                res = {"rc": 1, "out": str(e), "kmsg": ""}
            res["seconds"] = round(time.monotonic() - t0, 2)
            st = g.agent("sleep 1; state")
            res["kmsg"] += st["kmsg"]
            res["out"] += "\n@@STATE\n" + st["out"]
        else:
            try:
                res = g.agent(f"{line}\nrc=$?\necho @@STATE\nstate\nexit $rc\n")
            except GuestCrash as e:
                # the kernel oopsed in this operation: a finding; the guest
                # is not asked anything more (its agent may be dead)
                g.crashed = e.text
                rec = {"step": i + 1, "op": op["op"], "args": op["args"], "sh": line, "rc": None,
                       "out": "", "state": {}, "op_s": round(time.monotonic() - t0, 2),
                       "kmsg_alarms": alarms(e.text)[:1] or [str(e)],
                       "kmsg": e.text.splitlines()[:80], "crash": True}
                try:
                    c = g.check()
                    rec["check"] = {k: v for k, v in c.items() if k != "findings"}
                    rec["check"]["findings_sample"] = c["findings"][:5]
                except Exception as x:  # noqa: BLE001 - a dead guest may not answer
                    rec["check"] = {"error": f"{type(x).__name__}: {x}", "checks": []}
                rec["step_s"] = round(time.monotonic() - t0, 2)
                records.append(rec)
                if log:
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if print_fn:
                    print_fn(rec)
                finding = rec
                break
        out, _, state = res["out"].partition("@@STATE\n")
        rec = {"step": i + 1, "op": op["op"], "args": op["args"], "sh": line, "rc": res["rc"],
               "out": out.strip()[-2000:], "state": parse_state(state),
               "op_s": res["seconds"], "kmsg_alarms": alarms(res["kmsg"])}
        if res["kmsg"].strip():
            km = res["kmsg"].strip().splitlines()
            # the head names what happened (an allocation failure, an OOM
            # kill's trigger), the tail how it ended
            rec["kmsg"] = km if len(km) <= 70 else km[:30] + ["..."] + km[-40:]
        if check_every or i == len(ops) - 1:
            c = g.check()
            if not c["ok"] and settle:
                # The kernel may have work in flight that the pause caught
                # (seen: optimized surplus folios freed through the
                # free_hpage_work queue, off every list until the worker
                # restores and frees them): let it run, check again; only
                # what is still there is a finding.
                time.sleep(settle)
                c2 = g.check()
                if c2["ok"] or set(c2.get("checks") or []) != set(c.get("checks") or []):
                    rec["transient"] = {"checks": c.get("checks"), "sample": c["findings"][:3],
                                        "after_settle": c2.get("checks")}
                c = c2
            rec["check"] = {k: v for k, v in c.items() if k != "findings"}
            rec["check"]["findings_sample"] = c["findings"][:5]
            if not c["ok"]:
                rec["finding"] = True
        rec["step_s"] = round(time.monotonic() - t0, 2)
        records.append(rec)
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if print_fn:
            print_fn(rec)
        if rec.get("finding") or rec["kmsg_alarms"]:
            finding = rec
            if stop_on_finding:
                break
    return {"records": records, "finding": finding}


def signature(rec: dict | None) -> tuple:
    """What a replay must reproduce: the verify checks that failed, and
    whether the kernel warned (the kinds of alarm)."""
    if rec is None:
        return ()
    checks = tuple(rec.get("check", {}).get("checks") or ())
    kinds = {a.split(":")[0].split()[0] for a in rec.get("kmsg_alarms", [])}
    if "BUG" in kinds:
        # "BUG: ..." comes with "Oops: ..." in the step's messages, alone
        # when the console caught the crash first: the same crash
        kinds.discard("Oops")
    kinds = tuple(sorted(kinds))
    # where the kernel was when it warned or crashed (RIP's function)
    rips = []
    for ln in rec.get("kmsg") or []:
        m = re.search(r"RIP: 0010:([A-Za-z0-9_.]+)\+", ln)
        if m:
            rips.append("RIP:" + m.group(1))
            break
    return checks + kinds + tuple(rips)


def replay(cfg: GuestConfig, ops: list[dict], out_dir: Path, check_every: bool = False) -> dict:
    """Boot fresh, run ``ops``; the record of the first finding (or the last step)."""
    with TortureGuest(cfg, out_dir) as g:
        with open(out_dir / "ops.jsonl", "w") as log:
            log.write(json.dumps({"config": cfg.as_dict(), "release": g.release,
                                  "ops": ops}) + "\n")
            r = run_ops(g, ops, log, check_every=check_every)
    return r


def ddmin(ops: list[dict], test) -> list[dict]:
    """Zeller's ddmin: a 1-minimal subsequence of ``ops`` for which
    ``test(subsequence)`` is true (``test(ops)`` is)."""
    n = 2
    while len(ops) >= 2:
        chunk = max(1, len(ops) // n)
        subsets = [ops[i:i + chunk] for i in range(0, len(ops), chunk)]
        reduced = False
        for i, s in enumerate(subsets):
            if test(s):
                ops, n, reduced = s, 2, True
                break
        if not reduced:
            for i in range(len(subsets)):
                comp = [x for j, s in enumerate(subsets) if j != i for x in s]
                if comp and test(comp):
                    ops, n, reduced = comp, max(n - 1, 2), True
                    break
        if not reduced:
            if n >= len(ops):
                break
            n = min(len(ops), n * 2)
    return ops


def replays_per_subset(hits: int, replays: int, cap: int) -> int:
    """How many fresh boots a candidate subset gets before the minimizer
    calls it "does not reproduce": 1 for a finding that came on every
    replay of the whole sequence; else enough for a 90 % chance to see a
    finding of the measured rate (hits of replays), at most ``cap``."""
    if replays <= 0 or hits >= replays:
        return 1
    if hits <= 0:
        return cap
    import math
    p = hits / replays
    return max(1, min(cap, math.ceil(math.log(0.1) / math.log(1 - p))))


def minimize(cfg: GuestConfig | None, ops: list[dict], sig: tuple, out_dir: Path,
             print_fn=print, quiet: list[bool] | None = None, max_tries: int = 60,
             replays: int = 3, replay_fn=None) -> dict:
    """Delta-debug ``ops`` (from fresh boots, a check after the last step
    of each replay) down to a shortest sequence whose finding has the
    signature ``sig``.

    Findings that do not come on every boot (a crash in compaction: 4 of
    5) are handled: the whole sequence is replayed ``replays`` times first;
    its reproduction rate decides how many replays each candidate subset
    gets (replays_per_subset(): 1 when every replay reproduced), and a
    subset is kept if any of its replays gives the same signature.  The
    minimized sequence is replayed until it has ``replays`` replays of its
    own: its reproduction rate is in the result ("rate").  ``max_tries``
    counts replays (fresh boots).  ``replay_fn(sub, dir) -> signature``
    replaces the real replay (the unit tests' fake kernel)."""
    tries: list[dict] = []
    cache: dict = {}
    stats: dict = {}        # json key of a sequence -> [hits, replays]

    if replay_fn is None:
        def replay_fn(sub: list[dict], d: Path) -> tuple:
            return signature(replay(cfg, sub, d, check_every=False)["finding"])

    def once(sub: list[dict], budget: bool = True) -> bool | None:
        """One replay of ``sub``; None when out of budget."""
        if budget and len(tries) >= max_tries:
            return None
        d = out_dir / f"try-{len(tries) + 1:03d}"
        t0 = time.monotonic()
        try:
            got = tuple(replay_fn(sub, d))
        except TestbedError as e:
            got = ("error", str(e).splitlines()[0])
        ok = bool(sig) and all(x in got for x in sig)
        st = stats.setdefault(json.dumps(sub), [0, 0])
        st[0] += ok
        st[1] += 1
        tries.append({"ops": len(sub), "signature": list(got), "reproduces": ok,
                      "seconds": round(time.monotonic() - t0, 1)})
        if print_fn:
            print_fn(f"  ddmin try {len(tries)}: {len(sub)} ops -> {list(got)} "
                     f"{'REPRODUCES' if ok else 'no'} ({tries[-1]['seconds']} s)")
        if not ok:
            shutil.rmtree(d, ignore_errors=True)
        return ok

    per_subset = 1

    def test(sub: list[dict]) -> bool:
        key = json.dumps(sub)
        if key in cache:
            return cache[key]
        ok = False
        for _ in range(per_subset):
            r = once(sub)
            if r is None:       # out of budget: keep what was reached
                return False
            if r:
                ok = True
                break
        cache[key] = ok
        return ok

    t0 = time.monotonic()
    # the whole sequence: its reproduction rate
    full_hits = 0
    for _ in range(max(1, replays)):
        r = once(ops)
        if r is None:
            break
        full_hits += bool(r)
    full = stats.get(json.dumps(ops), [0, 0])
    rate_full = {"hits": full[0], "replays": full[1]}
    if not full[0]:
        return {"reproduced": False, "tries": tries, "ops": ops, "rate_full": rate_full,
                "seconds": round(time.monotonic() - t0, 1)}
    cache[json.dumps(ops)] = True
    per_subset = replays_per_subset(full[0], full[1], max(1, replays))
    small = ops
    # Cheap first cuts: without the steps the kernel refused or that
    # changed nothing it reports (pools, sysctl, counters), then the last
    # step with each single earlier one.
    if quiet:
        kept = [op for op, q in zip(ops, quiet) if not q]
        if kept and len(kept) < len(ops) and test(kept):
            small = kept
    # (not for a flaky finding: each pair would cost per_subset boots)
    if 2 < len(small) <= 16 and per_subset == 1:
        for op in small[:-1]:
            if test([op, small[-1]]):
                small = [op, small[-1]]
                break
    # ddmin with the last step pinned (the step that showed the finding:
    # a demotion, a compaction; without it nothing happens, and subsets
    # without it only cost boots), then once without it
    if len(small) > 2:
        last = small[-1]
        small = ddmin(small[:-1], lambda sub: test(sub + [last])) + [last]
        if len(small) > 1 and test(small[:-1]):
            small = small[:-1]
    else:
        small = ddmin(small, test)
    # the minimized sequence's own reproduction rate
    key = json.dumps(small)
    # (outside the budget: the rate is the reproducer's first line)
    while stats.get(key, [0, 0])[1] < max(1, replays):
        once(small, budget=False)
    fin = stats.get(key, [0, 0])
    return {"reproduced": True, "ops": small, "tries": tries,
            "budget_exhausted": len(tries) >= max_tries,
            "replays_per_subset": per_subset, "rate_full": rate_full,
            "rate": {"hits": fin[0], "replays": fin[1]},
            "seconds": round(time.monotonic() - t0, 1)}


def reproducer(ops: list[dict], cfg: GuestConfig, release: str, verify_text: str,
               rate: dict | None = None) -> str:
    lines = [
        "#!/bin/sh",
        "# A torture run's minimized reproducer (scripts/testbed/torture.py).",
        f"# Seen on {release}, booted with: {cfg.full_cmdline()}",
        f"# (QEMU: {len(cfg.nodes)} NUMA nodes of {'+'.join(str(x) for x in cfg.nodes)} GiB.)",
        *([f"# Reproduced in {rate['hits']} of {rate['replays']} fresh boots (the minimizer's "
           "replays of exactly these operations)"
           + ("" if rate["hits"] == rate["replays"] else ": it does not come every time, "
              "run it again")] if rate else []),
        "# Runs as root on a machine booted that way, with hugetorture",
        "# (scripts/guest/hugetorture.c: gcc -static -O2 -o hugetorture hugetorture.c)",
        "# and kpf (scripts/guest/kpf.c) in $PATH.  Then check the state with",
        "#   vmemspect live verify",
        "set -u",
        "mkdir -p /mnt/h2m /mnt/h1g",
        "mountpoint -q /mnt/h2m || mount -t hugetlbfs -o pagesize=2M none /mnt/h2m",
        "mountpoint -q /mnt/h1g || mount -t hugetlbfs -o pagesize=1G none /mnt/h1g",
        "",
        "# ---- scripts/guest/torture-agent.sh",
        AGENT.read_text().rstrip(),
        "# ---- the operations",
    ]
    for op in ops:
        line = sh_line(op)
        if line is None:
            lines.append("# (hot-plug a 1 GiB DIMM here: QMP object-add + device_add pc-dimm)")
        else:
            lines.append(line)
    lines += ["state", "", "# What vmemspect printed on this state (vmemspect vmcore DUMP -s VMLINUX verify):"]
    lines += ["#   " + ln for ln in verify_text.splitlines()[:40]]
    return "\n".join(lines) + "\n"


def memmap_total(st: dict) -> int | None:
    """nr_memmap_pages + nr_memmap_boot_pages: every vmemmap page the kernel
    holds.  HVO moves pages between the two (freeing boot pages,
    allocating on restore) and gives pages back; with every pool empty
    the total is back at its boot value unless vmemmap leaked (memory
    hot-plug adds its own)."""
    if st.get("nr_memmap_pages") is None or st.get("nr_memmap_boot_pages") is None:
        return None
    return st["nr_memmap_pages"] + st["nr_memmap_boot_pages"]


def _check_dump(g: TortureGuest, c: dict, out_dir: Path, dump: Path) -> None:
    """vmemspect's CLI and plain drgn on the dump kept of a finding's state."""
    c["dump"] = str(dump)
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(SCRIPTS.parent))
    vm = [py, "-m", "vmemspect", "vmcore", str(dump)] + (["-s", g.vmlinux] if g.vmlinux else [])
    p = subprocess.run(vm + ["verify"], capture_output=True, text=True, env=env, timeout=900)
    (out_dir / "verify.txt").write_text(p.stdout + p.stderr)
    c["vmemspect_rc"] = p.returncode
    p = subprocess.run(vm + ["verify", "--json"], capture_output=True, text=True, env=env,
                       timeout=900)
    (out_dir / "verify.json").write_text(p.stdout)
    if g.vmlinux:
        p = subprocess.run([py, str(SCRIPTS / "plain-drgn-hvo.py"), str(dump), g.vmlinux],
                           capture_output=True, text=True, timeout=900)
        try:
            pd = json.loads(p.stdout)
            c["plain_drgn"] = {k: pd.get(k) for k in ("key_count", "folios", "optimized_ok")}
            c["plain_drgn"]["flagged_not_remapped"] = len(pd.get("flagged_not_remapped") or [])
            c["plain_drgn"]["remapped_not_flagged"] = len(pd.get("remapped_not_flagged") or [])
            c["plain_drgn"]["confirms"] = bool(pd.get("flagged_not_remapped")
                                               or pd.get("remapped_not_flagged"))
        except ValueError:
            c["plain_drgn"] = {"error": (p.stderr or p.stdout)[-1500:]}


def confirm(g: TortureGuest, out_dir: Path, finding: dict, boot_state: dict,
            recs: list[dict] | None = None) -> dict:
    """Keep the dump, run vmemspect's CLI and plain drgn on it, then the
    aftermath: release everything, and see what the kernel says."""
    c: dict = {}
    if not g.crashed and any(OOPS.match(a) for a in finding.get("kmsg_alarms") or []):
        # The kernel oopsed in the step but the agent lived on (the oops
        # killed the writing process): a crash all the same.  The kernel
        # may hold a lock it never releases (seen: hugetlb_lock, "exited
        # with irqs disabled"): no aftermath.
        g.crashed = "\n".join(finding.get("kmsg") or finding["kmsg_alarms"])
    try:
        dump = g.dump(out_dir / "vmcore.kdump")
    except (TestbedError, OSError) as e:
        if not g.crashed:
            raise
        # a panic ends QEMU (panic=-1, -no-reboot): no dump to keep
        dump = None
        c["dump_error"] = str(e).splitlines()[0]
    if dump is not None:
        _check_dump(g, c, out_dir, dump)
    st = finding.get("state", {})
    c["counters_at_finding"] = {k: st.get(k) for k in ("nr_memmap_pages", "nr_memmap_boot_pages")}
    if g.crashed:
        # no aftermath: the kernel already reacted (oops); the crash is
        # confirmed by the kernel itself
        c["crash"] = g.crashed.splitlines()[:60]
        bad = impossible_eflags(g.crashed)
        if bad:
            c["emulator_artifact"] = (f"EFLAGS {bad} in the kernel's register dump has reserved "
                                      "bits (22-31) set, which no x86 CPU does: QEMU's TCG "
                                      "corrupted the guest's flags, not an HVO state")
        c["confirmed_by"] = ["the kernel itself: " + (finding.get("kmsg_alarms") or ["oops"])[0][:160]]
        c["confirmed"] = True
        return c
    # the aftermath
    try:
        a = g.agent("op_empty\nsleep 1\necho @@STATE\nstate\n", timeout=300)
    except TestbedError as e:      # GuestCrash too: the kernel went down now
        c["aftermath"] = {"error": str(e).splitlines()[0]}
        c["confirmed_by"] = (["the kernel's reaction: " + str(e).splitlines()[0][:160]]
                             if isinstance(e, GuestCrash) else [])
        c["confirmed"] = bool(c["confirmed_by"])
        return c
    out, _, state = a["out"].partition("@@STATE\n")
    after = parse_state(state)
    c["aftermath"] = {"out": out.strip().splitlines()[-20:], "state": after,
                      "alarms": alarms(a["kmsg"]),
                      "kmsg": a["kmsg"].strip().splitlines()[-60:]}
    empty = all(p.get("nr") == "0" for p in after["pools"].values())
    base = memmap_total(boot_state)
    # what DIMM hot-plugs added (the total's change over each such step)
    plugged, prev = 0, boot_state
    for r in recs or []:
        if r["op"] == "dimm" and memmap_total(r["state"] or {}) is not None \
                and memmap_total(prev) is not None:
            plugged += memmap_total(r["state"]) - memmap_total(prev)
        prev = r["state"] or prev
    if base is not None and memmap_total(after) is not None and empty:
        c["aftermath"]["memmap_total_boot"] = base
        c["aftermath"]["memmap_hotplugged"] = plugged
        c["aftermath"]["memmap_total_after"] = memmap_total(after)
        c["aftermath"]["nr_memmap_pages_leaked"] = memmap_total(after) - base - plugged
    chk = g.check()
    c["aftermath"]["verify_after_empty"] = {k: chk.get(k) for k in ("ok", "checks", "error")}
    ways = []
    if c.get("plain_drgn", {}).get("confirms"):
        ways.append("plain drgn (scripts/plain-drgn-hvo.py)")
    if c["aftermath"].get("nr_memmap_pages_leaked"):
        ways.append(f"kernel counters: {c['aftermath']['nr_memmap_pages_leaked']:+d} vmemmap pages "
                    "(nr_memmap_pages + nr_memmap_boot_pages) against boot after every pool "
                    "was emptied")
    if c["aftermath"]["alarms"]:
        ways.append("the kernel's reaction: " + c["aftermath"]["alarms"][0][:160])
    if finding.get("kmsg_alarms"):
        ways.append("the kernel warned during the step itself")
    c["confirmed_by"] = ways
    c["confirmed"] = bool(ways)
    return c


def minimize_and_write(cfg: GuestConfig, ops: list[dict], sig: tuple, out_dir: Path,
                       quiet: list[bool] | None, release: str, print_fn=print,
                       replays: int = 3) -> dict:
    """Minimize ``ops`` (the steps up to a finding with signature ``sig``),
    take vmemspect's output on the minimized sequence's state, write
    out_dir/reproducer.sh and minimize.json.  Returns {"minimized": ...,
    "reproducer": path}."""
    out: dict = {}
    m = minimize(cfg, ops, sig, out_dir / "minimize", print_fn=print_fn, quiet=quiet,
                 replays=replays)
    (out_dir / "minimize.json").write_text(json.dumps(m, indent=1) + "\n")
    out["minimized"] = {"reproduced": m["reproduced"], "ops": m["ops"], "length": len(m["ops"]),
                        "tries": len(m["tries"]), "budget_exhausted": m.get("budget_exhausted", False),
                        "seconds": m["seconds"], "signature": list(sig),
                        "rate_full": m.get("rate_full"), "rate": m.get("rate"),
                        "replays_per_subset": m.get("replays_per_subset")}
    if not m["reproduced"]:
        return out
    verify_text = (out_dir / "verify.txt").read_text() if (out_dir / "verify.txt").exists() else ""
    # vmemspect's output on the minimized sequence's own state
    final = out_dir / "minimize" / "final"
    try:
        with TortureGuest(cfg, final) as g:
            r = run_ops(g, m["ops"], None, check_every=False)
            out["minimized"]["final_signature"] = list(signature(r["finding"]))
            f = r["finding"]
            if not g.crashed and f and any(OOPS.match(a) for a in f.get("kmsg_alarms") or []):
                # an oops in the step's messages (the agent lived on)
                g.crashed = "\n".join(f.get("kmsg") or f["kmsg_alarms"])
            if not g.crashed:
                dump = g.dump(final / "vmcore.kdump")
                env = dict(os.environ, PYTHONPATH=str(SCRIPTS.parent))
                p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", str(dump)]
                                   + (["-s", g.vmlinux] if g.vmlinux else []) + ["verify"],
                                   capture_output=True, text=True, env=env, timeout=900)
                verify_text = p.stdout + p.stderr
                dump.unlink()
            else:
                verify_text = "(the kernel crashed:)\n" + g.crashed[:3000]
            (final / "verify.txt").write_text(verify_text)
            out["minimized"]["release"] = g.release
            release = g.release
    except TestbedError as e:
        out["minimized"]["final_error"] = str(e)[:500]
    (out_dir / "reproducer.sh").write_text(reproducer(m["ops"], cfg, release, verify_text,
                                                          m.get("rate")))
    os.chmod(out_dir / "reproducer.sh", 0o755)
    out["reproducer"] = str(out_dir / "reproducer.sh")
    return out


def torture(kernel_id: str, seed: int, steps: int, out_dir: Path | None = None,
            minimize_it: bool = False, print_fn=print, config: GuestConfig | None = None,
            own: dict | None = None, exclude: tuple = (), replays: int = 3) -> dict:
    """One torture run (see the module doc).  Returns the summary dict (also
    out_dir/summary.json)."""
    rng = random.Random(seed)
    # The guest's configuration from a generator of its own: a seed draws
    # the same operations on every kernel (whether or not it has CMA).
    cfg = config or guest_config(kernel_id, random.Random(f"config-{seed}"), own)
    kernel_id = cfg.kernel
    nodes = len(cfg.nodes)
    bad = [n for n in exclude if n not in OPS]
    if bad:
        raise ValueError(f"unknown operation(s) {', '.join(bad)}; have {', '.join(OPS)}")
    ops = [draw(rng, nodes, tuple(exclude)) for _ in range(steps)]
    out_dir = Path(out_dir or runs_dir() / f"{kernel_id}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"kernel": kernel_id, "seed": seed, "steps_drawn": steps,
                     "exclude": list(exclude),
                     "config": cfg.as_dict(), "out_dir": str(out_dir)}
    t0 = time.monotonic()
    with TortureGuest(cfg, out_dir) as g:
        summary["release"] = g.release
        summary["cmdline"] = g.cmdline
        boot = g.agent("state")
        boot_state = parse_state(boot["out"])
        c0 = g.check()       # the booted guest itself
        summary["boot_check"] = {k: c0[k] for k in ("ok", "checks", "seconds", "error")}
        summary["timings"] = dict(g.timings)
        with open(out_dir / "ops.jsonl", "w") as log:
            log.write(json.dumps({"config": cfg.as_dict(), "release": g.release, "seed": seed,
                                  "cmdline": g.cmdline, "boot_state": boot_state}) + "\n")

            def show(rec):
                if print_fn:
                    c = rec.get("check", {})
                    print_fn(f"[{rec['step']:3}] {rec['sh'] or rec['op']:<40} rc={rec['rc']} "
                             f"op {rec['op_s']:.2f}s check {c.get('seconds', 0):.2f}s "
                             f"{'FINDING ' + ','.join(c.get('checks', [])) if rec.get('finding') else ''}"
                             f"{' ALARM ' + rec['kmsg_alarms'][0][:100] if rec['kmsg_alarms'] else ''}")
            r = run_ops(g, ops, log, print_fn=show)
        recs = r["records"]
        checks = [x["check"]["seconds"] for x in recs if "seconds" in x.get("check", {})]
        summary["steps_run"] = len(recs)
        summary["refused"] = sum(1 for x in recs if x["rc"] != 0)
        summary["check_s"] = {"mean": round(sum(checks) / len(checks), 2) if checks else None,
                              "max": max(checks) if checks else None,
                              "verify_mean": round(sum(x["check"]["verify_s"] for x in recs
                                                       if "verify_s" in x.get("check", {}))
                                                   / max(1, len(checks)), 2)}
        summary["step_s_mean"] = round(sum(x["step_s"] for x in recs) / max(1, len(recs)), 2)
        f = r["finding"]
        summary["finding"] = None
        if f:
            summary["finding"] = {"step": f["step"], "op": f["op"], "args": f["args"],
                                  "checks": f.get("check", {}).get("checks"),
                                  "alarms": f["kmsg_alarms"],
                                  "findings": f.get("check", {}).get("findings"),
                                  "signature": list(signature(f))}
            summary["confirmation"] = confirm(g, out_dir, f, boot_state, recs)
    summary["run_s"] = round(time.monotonic() - t0, 1)
    if summary["finding"] and minimize_it:
        prefix = ops[:summary["finding"]["step"]]
        summary.update(minimize_and_write(cfg, prefix, tuple(summary["finding"]["signature"]),
                                          out_dir, quiet_steps(recs, boot_state),
                                          summary.get("release", ""), print_fn, replays))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def quiet_steps(recs: list[dict], boot_state: dict) -> list[bool]:
    """Per step: the kernel refused it, or nothing it reports changed
    (pools, sysctl, memmap counters, offline blocks), and it was not the
    finding's step."""
    out = []
    prev = boot_state
    for r in recs:
        st = r.get("state") or {}
        same = {k: v for k, v in st.items() if k != "memfree"} == \
            {k: v for k, v in prev.items() if k != "memfree"}
        out.append(not r.get("finding") and not r.get("kmsg_alarms") and (r["rc"] != 0 or same))
        prev = st or prev
    return out


def load_log(path: Path) -> tuple[GuestConfig, list[dict], dict]:
    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    head = lines[0]
    cfg = GuestConfig(**head["config"])
    ops = head.get("ops") or [{"op": r["op"], "args": r["args"]} for r in lines[1:]]
    return cfg, ops, head
