"""The aftermath: what the kernel does when it acts on the state that was
dumped.

Opt-in (run_scenario(aftermath=True)): the guest waits on a second serial
port (ttyS1, or hvc0 where the machine has one UART; a unix socket on
the host) after READY; once the dumps are
taken the host writes "go", the guest releases its holds, empties every
pool and prints what the kernel said (dmesg) between AFTERMATH markers.
A finding about a kernel is confirmed by what the kernel then does (the
6.12 demotion bug: a WARNING in static_key_dec_not_one).
"""
from __future__ import annotations

import hashlib
import re
import socket
import time
from pathlib import Path

from .common import TestbedError
from .kernels import Arch
from .qemu import control_args
from .truth import Console


AFTERMATH_CTL = "ctl.sock"


def aftermath_qemu_args(tmp: Path, arch: Arch) -> list[str]:
    """QEMU arguments of the aftermath: the order in fw_cfg and the control
    port (x86: COM2, after the console's COM1; riscv64: hvc0, see
    Arch.control)."""
    (tmp / "aftermath").write_text("1")
    return ["-fw_cfg", f"name=opt/vmemspect/aftermath,file={tmp}/aftermath",
            "-chardev", f"socket,id=ctl,path={tmp}/{AFTERMATH_CTL},server=on,wait=off",
            *control_args(arch, "ctl")]


def run_aftermath(tmp: Path, con: Console, alive, timeout: float) -> dict:
    """Tell the guest to go on, collect its AFTERMATH block, parse it.

    Never raises for what the guest does: a guest that dies or hangs gives
    {"completed": False, ...} with the console's tail."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(tmp / AFTERMATH_CTL))
        s.sendall(b"go\n")
    except OSError as e:
        s.close()
        raise TestbedError(f"aftermath: control port: {e}") from None
    lines: list[str] | None = None
    end_line = None
    why = "timeout"
    try:
        while time.monotonic() < t0 + timeout:
            for ln in con.poll():
                if ln == "AFTERMATH BEGIN":
                    lines = []
                elif lines is not None and ln.startswith("AFTERMATH END"):
                    end_line = ln
                elif lines is not None and end_line is None and (ln.startswith("~ ") or ln == "~"):
                    lines.append(ln[2:])
            if end_line:
                why = None
                break
            if not alive():
                why = "QEMU exited"
                break
            time.sleep(0.1)
    finally:
        s.close()
    a = parse_aftermath(lines or [])
    a["completed"] = end_line is not None
    a["failure"] = why
    a["seconds"] = round(time.monotonic() - t0, 2)
    if end_line:
        _, _, n, md5 = end_line.split()
        payload = "".join(x + "\n" for x in lines)
        a["intact"] = len(lines) == int(n) and hashlib.md5(payload.encode()).hexdigest() == md5
    else:
        a["intact"] = False
        a["console_tail"] = con.tail(60)
    return a


def parse_aftermath(lines: list[str]) -> dict:
    """The guest's AFTERMATH block (payload lines, without "~ ")::

      steps          what the guest did, with the pools after each step
      vmstat         nr_memmap_* after it
      kmsg           the kernel's messages meanwhile (dmesg, up to 4000 lines)
      dmesg_lines    how many there were
      warnings       the "WARNING: ..." lines
      static_key_dec_not_one  the WARNING lines that name it
      bad_page_state "BUG: Bad page state" reports shown + suppressed
      bad_page_state_shown, bad_page_state_suppressed
      console_tail   the last 40 kernel lines
    """
    a: dict = {"steps": [], "vmstat": {}, "kmsg": [], "dmesg_lines": None}
    for ln in lines:
        key, _, rest = ln.partition(" ")
        if key == "step":
            a["steps"].append(rest)
        elif key == "vmstat" and len(rest.split()) == 2:
            k, v = rest.split()
            a["vmstat"][k] = int(v)
        elif key == "dmesg_lines":
            a["dmesg_lines"] = int(rest)
        elif key == "k":
            a["kmsg"].append(rest)
    msgs = [re.sub(r"^\[[^]]*\] ?", "", m) for m in a["kmsg"]]
    a["warnings"] = [m for m in msgs if m.startswith("WARNING:")]
    a["static_key_dec_not_one"] = [m for m in a["warnings"] if "static_key_dec_not_one" in m]
    shown = sum(1 for m in msgs if m.startswith("BUG: Bad page state in process"))
    suppressed = sum(int(x) for m in msgs
                     for x in re.findall(r"^BUG: Bad page state: (\d+) messages suppressed", m))
    a["bad_page_state_shown"] = shown
    a["bad_page_state_suppressed"] = suppressed
    a["bad_page_state"] = shown + suppressed
    a["console_tail"] = "\n".join(a["kmsg"][-40:])
    return a
