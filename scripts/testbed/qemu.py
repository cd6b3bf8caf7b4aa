"""QEMU and virtiofsd as child processes, and QMP.

QEMU (and virtiofsd) run in their own process groups and are killed whatever
happens: ``finally`` in run_scenario(), _Signals (SIGTERM/SIGHUP become
SystemExit while a run is on), atexit (_stop_all), and PR_SET_PDEATHSIG as a
last resort when the host process is SIGKILLed.  A QEMU must never outlive
the run that started it: the machine has 2 cores and TCG guests spin.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .common import TestbedError
from .kernels import Arch

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


def base_args(arch: Arch, mem: str, machine_opts: str = "", min_smp: int = 1) -> list[str]:
    """The QEMU binary and the machine: TCG with every vCPU in one host
    thread (``-accel tcg,thread=single``; no accel= in -machine).

    Why: multi-threaded TCG has been seen to oops a guest while the guest
    patches its own code (static keys, alternatives): "Oops: int3" in
    sched_clock_cpu, a torn jump at RIP in kfree.  One thread runs the vCPUs
    in turn, so no vCPU runs code that another is rewriting.  -smp stays 2
    (two CPUs in the guest: per-CPU state, NUMA).  Boots take about as long
    (docs/testbed.md).  No KVM: /dev/kvm exists here but does not run these
    kernels (hvo-facts.md)."""
    machine = arch.machine + (f",{machine_opts}" if machine_opts else "")
    # VMEMSPECT_QEMU_CPU: another CPU model, for experiments (boot-soak.py).
    cpu = os.environ.get("VMEMSPECT_QEMU_CPU") or arch.cpu
    # (min_smp: QEMU wants a vCPU per NUMA node; riscv64 guests have one.)
    smp = os.environ.get("VMEMSPECT_QEMU_SMP") or str(max(arch.smp, min_smp))
    return [arch.qemu, "-machine", machine, "-accel", "tcg,thread=single",
            "-cpu", cpu, "-smp", smp, "-m", mem,
            "-nodefaults", "-display", "none", "-no-reboot", *arch.qemu_opts]


def control_args(arch: Arch, chardev: str) -> list[str]:
    """QEMU arguments that connect chardev ``chardev`` to the guest's
    control channel (Arch.control: arch.control_dev in the guest)."""
    if arch.control == "serial":
        return ["-serial", f"chardev:{chardev}"]
    return ["-device", "virtio-serial-pci,id=vmsctl",
            "-device", f"virtconsole,chardev={chardev},bus=vmsctl.0"]


# ---------------------------------------------------------------- processes

_live_procs: set = set()      # _Proc objects still to be stopped
_procs_lock = threading.Lock()


def _stop_all() -> None:
    """Backstop (atexit): stop every child process group still registered."""
    with _procs_lock:
        procs = list(_live_procs)
    for p in procs:
        p.stop(grace=1.0)


atexit.register(_stop_all)


def running_pids() -> list:
    """The pids of the child processes the test bed runs now (QEMU and its
    helpers), with the program each runs: [(pid, argv[0])]."""
    with _procs_lock:
        procs = list(_live_procs)
    return [(p.p.pid, str(p.p.args[0])) for p in procs]


def die_with_parent() -> None:
    """For ``preexec_fn``: the child dies when the test bed does."""
    _pdeathsig()


def _pdeathsig() -> None:
    # In the child before exec: die with the parent (PR_SET_PDEATHSIG = 1).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


class _Proc:
    """A child in its own session/process group, killed on stop()."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=_pdeathsig)
        with _procs_lock:
            _live_procs.add(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> bool:
        try:
            self.p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds,
        reap the leader.  (QEMU and virtiofsd leave no other processes.)"""
        pgid = self.p.pid
        if self.p.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        with _procs_lock:
            _live_procs.discard(self)
        if not self.log.closed:
            self.log.close()


class _Signals:
    """Turn SIGTERM/SIGHUP into SystemExit while a run is on (main thread only),
    so that ``finally`` kills the guest."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(s) in (signal.SIG_DFL, None):
                    self.saved[s] = signal.signal(s, self._handler)
        return self

    @staticmethod
    def _handler(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        for s, h in self.saved.items():
            signal.signal(s, h)
        return False


# ---------------------------------------------------------------- QMP

class QMP:
    """A QMP client over a unix socket (stdlib only)."""

    def __init__(self, path: Path, timeout: float = 30.0, alive=None) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if alive is not None and not alive():
                    raise TestbedError(f"QEMU exited before its QMP socket {path} came up")
                if time.monotonic() > end:
                    raise TestbedError(f"cannot connect to QMP socket {path}")
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rb")
        self.events: list[dict] = []
        greeting = self._read()
        if "QMP" not in greeting:
            raise TestbedError(f"unexpected QMP greeting {greeting}")
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        try:
            line = self.f.readline()
        except OSError as e:
            raise TestbedError(f"QMP: {e}") from None
        if not line:
            raise TestbedError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name: str, **args) -> object:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise TestbedError(f"QMP {name}: {e}") from None
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise TestbedError(f"QMP {name}: {r['error']}")
            return r.get("return")

    def close(self) -> None:
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass
