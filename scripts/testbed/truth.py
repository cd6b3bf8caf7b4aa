"""The guest's side of the story: the console marker protocol of
scripts/guest/init.sh, and the parsing of its ground truth.

The guest talks to the host only through its serial console (captured to a
file); kernel messages may interleave, so every line meant for the host
starts with MARK.  In order, the guest prints:

  FAIL <why>                 at any point: init gave up (the run fails)
  TRUTH BEGIN                then "= <line>" per truth line, then
  TRUTH END <n> <md5>        line count and md5 of the lines (each ending in a newline),
                             so a mangled block is told from a good one
  CMD BEGIN ... CMD END <rc> only with a guest command: "| "/"! " human
                             copies, then CMD OUT / CMD ERR with base64 lines
                             ("o "/"e ") of its exact stdout/stderr
  READY                      the guest waits to be dumped and stopped
"""
from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from .common import TestbedError

MARK = "@VMS "


class ProtocolError(TestbedError):
    """The guest said something the protocol does not allow."""


class Console:
    """Follows the serial log file and collects the "@VMS " lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""
        self.lines: list[str] = []   # payloads after the marker

    def poll(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        data = self.partial + data
        *full, self.partial = data.split(b"\n")
        new = []
        for raw in full:
            s = raw.decode("utf-8", "replace").rstrip("\r")
            i = s.find(MARK)
            if i >= 0:
                new.append(s[i + len(MARK):])
        self.lines += new
        return new

    def tail(self, n: int = 40) -> str:
        try:
            text = self.path.read_bytes().decode("utf-8", "replace").replace("\r", "")
        except FileNotFoundError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-n:])


#: Console lines of a guest kernel that crashed (an oops, a BUG, a panic).
CRASH = re.compile(r"^.*(Oops: .*|BUG: .*|Kernel panic - .*|general protection fault.*)$",
                   re.MULTILINE)


class GuestProtocol:
    """The host's state machine over the marker lines (see the module doc).

    feed() each payload line in order; ``state`` goes boot -> truth ->
    truthdone [-> cmd -> cmddone] -> ready.  Raises ProtocolError on FAIL
    or a mangled truth block."""

    def __init__(self) -> None:
        self.state = "boot"
        self.truth_lines: list[str] | None = None
        self.cmd_lines: list[str] = []
        self.truth_done = False     # a good truth block was read
        self.cmd_started = False    # the guest command began

    def feed(self, ln: str) -> None:
        if ln.startswith("FAIL"):
            raise ProtocolError(f"guest init failed: {ln}")
        if self.state == "boot" and ln == "TRUTH BEGIN":
            self.state, self.truth_lines = "truth", []
        elif self.state == "truth":
            if ln.startswith("TRUTH END"):
                words = ln.split()
                if len(words) != 4 or not words[2].isdigit():
                    # Kernel messages interleaved with the marker line.
                    raise ProtocolError(f"truth block end mangled on the console: {ln!r}")
                _, _, n, md5 = words
                payload = "".join(x + "\n" for x in self.truth_lines)
                if len(self.truth_lines) != int(n) or hashlib.md5(payload.encode()).hexdigest() != md5:
                    raise ProtocolError(f"truth block mangled on the console "
                                        f"({len(self.truth_lines)} lines, want {n})")
                self.state, self.truth_done = "truthdone", True
            elif ln.startswith("= ") or ln == "=":
                self.truth_lines.append(ln[2:])
            else:
                raise ProtocolError(f"unexpected line in truth block: {ln!r}")
        elif self.state == "truthdone" and ln == "CMD BEGIN":
            self.state, self.cmd_started = "cmd", True
        elif self.state == "cmd":
            self.cmd_lines.append(ln)
            if ln.startswith("CMD END"):
                self.state = "cmddone"
        if ln == "READY":
            self.state = "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def truth(self) -> dict:
        return parse_truth(self.truth_lines or [])

    def cmd_result(self) -> tuple[str, str, int | None]:
        """(stdout, stderr, exit status) of the guest command."""
        return parse_cmd_block(self.cmd_lines)


_UNITS = {"KiB": 1, "kB": 1, "MiB": 1024, "MB": 1024, "GiB": 1024 * 1024, "GB": 1024 * 1024}


def _kib(num: str, unit: str) -> int:
    return int(round(float(num) * _UNITS[unit]))


def parse_truth(lines: list[str]) -> dict:
    """Parse the guest's truth block (payload lines, without "= ")."""
    t: dict = {"scenario": None, "uname": None, "cmdline": None,
               "hugetlb_optimize_vmemmap": None, "meminfo": {}, "hstates": {},
               "hugetlb_dmesg": [], "vmemmap_freeable_kib": {}, "vmstat": {},
               "hugetlb_folios": [], "kpf_scanned_pfns": None, "kpf_lone": [],
               "kpf_lone_count": None, "in_use": [],
               "node_memory_blocks": {}, "memory_block_size": None,
               "node_pfn_ranges": {}, "steps": [], "errors": [], "vmcoreinfo_note": None,
               "demote": {"before": [], "after": [], "demoted": []}}

    def hs(size: str) -> dict:
        return t["hstates"].setdefault(size, {"global": {}, "nodes": {}})

    for ln in lines:
        key, _, rest = ln.partition(" ")
        f = rest.split()
        if key in ("scenario", "uname", "cmdline"):
            t[key] = rest
        elif key == "sysctl" and len(f) == 2:
            t[f[0]] = int(f[1])
        elif key == "meminfo" and f:
            name = f[0].rstrip(":")
            t["meminfo"][name] = int(f[1])        # kB fields stay in kB
        elif key == "global" and len(f) == 3:
            hs(f[0])["global"][f[1]] = int(f[2])
        elif key == "node" and len(f) == 4:
            hs(f[1])["nodes"].setdefault(f[0], {})[f[2]] = int(f[3])
        elif key == "node_blocks" and f:
            t["node_memory_blocks"][f[0]] = [int(b) for b in f[1:]]
        elif key == "block_size" and f:
            t["memory_block_size"] = int(f[0], 16)
        elif key == "dmesg":
            t["hugetlb_dmesg"].append(rest)
            m = re.search(r"([\d.]+)\s*KiB vmemmap can be freed for a ([\d.]+)\s*(KiB|MiB|GiB) page", rest)
            if m:
                t["vmemmap_freeable_kib"][str(_kib(m[2], m[3]))] = int(float(m[1]))
        elif key == "vmstat" and len(f) == 2:
            t["vmstat"][f[0]] = int(f[1])
        elif key == "kpf" and len(f) == 3:
            t["hugetlb_folios"].append({"pfn": int(f[0], 16), "flags": int(f[1], 16),
                                        "nr_pages": int(f[2])})
        elif key == "kpf_lone" and len(f) == 2:
            # a pfn the kernel calls hugetlb outside every folio's run
            t["kpf_lone"].append({"pfn": int(f[0], 16), "flags": int(f[1], 16)})
        elif key == "kpf_scanned" and f:
            t["kpf_scanned_pfns"] = int(f[0])
            if len(f) >= 3:
                t["kpf_lone_count"] = int(f[2])
        elif key == "hold" and len(f) == 3:
            t["in_use"].append({"kind": f[0], "pfn": None if f[1] == "none" else int(f[1], 16),
                                "phase": int(f[2])})
        elif key == "step":
            t["steps"].append(rest)
        elif key == "vmcoreinfo" and len(f) == 2:
            # /sys/kernel/vmcoreinfo: "PADDR SIZE", both hex
            t["vmcoreinfo_note"] = {"paddr": int(f[0], 16), "size": int(f[1], 16)}
        elif key == "demote" and len(f) == 2 and f[0] in ("before", "after"):
            t["demote"][f[0]].append(int(f[1], 16))
        elif ln.strip():
            t["errors"].append(ln)
    d = t["demote"]
    d["demoted"] = sorted(set(d["before"]) - set(d["after"]))
    # pfn ranges per node from its memory blocks
    bs = t["memory_block_size"]
    if bs:
        per = bs // 4096
        for node, blocks in t["node_memory_blocks"].items():
            ranges: list[list[int]] = []
            for b in blocks:
                if ranges and ranges[-1][1] == b * per:
                    ranges[-1][1] = (b + 1) * per
                else:
                    ranges.append([b * per, (b + 1) * per])
            t["node_pfn_ranges"][node] = ranges
    return t


def parse_cmd_block(lines: list[str]) -> tuple[str, str, int]:
    out, err, rc, where = [], [], None, None
    for ln in lines:
        if ln == "CMD OUT":
            where = out
        elif ln == "CMD ERR":
            where = err
        elif ln.startswith("CMD END"):
            rc = int(ln.split()[2])
            where = None
        elif where is not None and ln[:2] in ("o ", "e "):
            where.append(ln[2:].strip())
    dec = lambda b64: base64.b64decode("".join(b64)).decode("utf-8", "replace")
    return dec(out), dec(err), rc
