#!/usr/bin/env python3
"""
Does a dump read with the kernel's BTF (no -s, the way most users run
vmemspect) give the same answers as with its DWARF vmlinux (-s VMLINUX)?

    scripts/btf-parity.py DUMP VMLINUX [--architecture x86_64] [--json]

One process, the dump opened twice (once each way, as ``vmemspect vmcore
DUMP`` opens it), every command that writes JSON run in it on each program
(``report``, ``verify``, ``folios``, ``tails``, ``savings``, ``decode`` of a
head, tails and a fake head of each order; in-process, through the same
entry point as drgn's ``%vmemspect``), and ``metrics`` and ``metrics
--fast`` (text; their three clock lines removed). Each pair of outputs must
be byte-identical but for the one field that names the types source
(``"types": "btf"`` / ``"dwarf"`` in the JSON, ``types="..."`` in the
metrics).

It also records every name the commands (and the drgn helpers they call)
look up as an object or a type, through a finder placed before all others
on each program, adds every name vmemspect's source reads by a literal
(``prog["x"]``, ``has_object(prog, "x")``...: paths no command took on this
dump), and resolves each name both ways: found or not, type, address,
value or bytes. A name only DWARF can type is how the BTF path once gave
another answer (``saved_command_line``, docs/btf.md), so every difference
there is reported, whether or not the output shows it.

Exit status 0: identical; 1: a difference (printed); 2: cannot compare (the
dump or vmlinux cannot be opened, or drgn's default search found a vmlinux
so that the BTF path is not taken). ``--json`` prints the whole comparison
(tests/test_btf_parity.py reads it).
"""

import argparse
import ast
import contextlib
import difflib
import gc
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import drgn

from vmemspect import cli
from vmemspect.errors import VmemspectError
from vmemspect.metrics import write_metrics
from vmemspect.progcache import cache_get
from vmemspect.target import open_vmcore

#: The commands whose JSON is compared (decode's pages come from folios).
COMMANDS = ("report", "verify", "folios", "tails", "savings")
#: Metrics lines that hold the clock, not the kernel.
CLOCK_METRICS = ("vmemspect_scan_timestamp_seconds", "vmemspect_scan_duration_seconds",
                 "vmemspect_scan_cpu_seconds", "vmemspect_last_success_timestamp_seconds")


class Lookups:
    """Every object and type name a program is asked for, recorded by
    finders enabled first (they find nothing, so the real ones answer)."""

    def __init__(self, prog: drgn.Program) -> None:
        self.objects = set()
        self.types = set()
        prog.register_object_finder("btf-parity-record", self._object, enable_index=0)
        prog.register_type_finder("btf-parity-record", self._type, enable_index=0)

    def _object(self, prog, name, flags, filename):
        self.objects.add((name, flags.value))
        return None

    def _type(self, prog, kinds, name, filename):
        self.types.add(name)
        return None


def run_command(prog: drgn.Program, args: list) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.run(args, prog=prog)
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run_metrics(prog: drgn.Program, fast: bool) -> dict:
    buf = io.BytesIO()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = int(bool(write_metrics(lambda: prog, None, buf, fast, 8)))
    text = "".join(line for line in buf.getvalue().decode().splitlines(keepends=True)
                   if not line.startswith(CLOCK_METRICS)
                   and not line.startswith(tuple(f"# {k} {m} " for m in CLOCK_METRICS
                                                 for k in ("HELP", "TYPE"))))
    return {"rc": rc, "stdout": text, "stderr": err.getvalue()}


def decode_refs(folios_json: str) -> list:
    """A head, its first tail, a fake head (pointer form) and its last tail,
    for the first folio of each order."""
    try:
        folios = json.loads(folios_json)["folios"]
    except (ValueError, KeyError):
        return []
    refs, orders = [], set()
    for f in folios:
        if f["order"] in orders:
            continue
        orders.add(f["order"])
        pfn, n = f["pfn"], 1 << f["order"]
        refs += [f"pfn:{pfn}", f"pfn:{pfn + 1}", f"pfn:{pfn + 64}", f"pfn:{pfn + n - 1}"]
    return refs


def outputs(prog: drgn.Program, refs=None) -> dict:
    """Every command's output on ``prog``, in this order."""
    out = {}
    for cmd in COMMANDS:
        out[cmd] = run_command(prog, [cmd, "--json"])
    if refs is None:
        refs = decode_refs(out["folios"]["stdout"])
    for ref in refs:
        out[f"decode {ref}"] = run_command(prog, ["decode", ref, "--json"])
    out["metrics"] = run_metrics(prog, False)
    out["metrics --fast"] = run_metrics(prog, True)
    return out


def _canonical(t) -> str:
    """The type with every typedef replaced by what it names, down through
    pointers and arrays (``pg_data_t *[1024]`` -> ``struct pglist_data
    *[1024]``)."""
    t = t.unaliased()
    if t.kind == drgn.TypeKind.POINTER:
        return f"({_canonical(t.type)}) *"
    if t.kind == drgn.TypeKind.ARRAY:
        return f"({_canonical(t.type)}) [{t.length}]"
    return t.type_name()


def _resolve_object(prog, name, flags):
    try:
        o = prog.object(name, drgn.FindObjectFlags(flags))
    except LookupError:
        return None
    d = {"type": o.type_.type_name(), "address": o.address_, "canonical": _canonical(o.type_)}
    if o.absent_:
        d["absent"] = True
    elif o.address_ is None:
        try:
            d["value"] = repr(o.value_())
        except Exception as e:  # noqa: BLE001
            d["value"] = f"{type(e).__name__}: {e}"
    else:
        try:
            d["bytes"] = prog.read(o.address_, min(drgn.sizeof(o), 4096)).hex()
        except Exception as e:  # noqa: BLE001
            d["bytes"] = f"{type(e).__name__}: {e}"
    return d


def _resolve_type(prog, name):
    found = {}
    for spelling in (name, f"struct {name}", f"union {name}", f"enum {name}"):
        try:
            t = prog.type(spelling)
        except (LookupError, SyntaxError, ValueError):
            continue
        found[spelling] = (str(t) if t.kind not in (drgn.TypeKind.STRUCT, drgn.TypeKind.UNION)
                           else f"{t.kind.name} size {t.size}, {len(t.members)} members")
    return found


#: Calls whose first argument is an object name / a type name (on a
#: program), and vmemspect's own wrappers whose second one is.
_OBJECT_METHODS = {"object", "constant", "variable"}
_OBJECT_FUNCTIONS = {"has_object", "_constant", "_optional_constant", "_hpg_bit"}
_TYPE_FUNCTIONS = {"_has_type"}


def source_names(package: Path = ROOT / "vmemspect") -> tuple:
    """Every object and type name vmemspect's source reads by a literal
    (``prog["x"]``, ``prog.object("x")``, ``prog.constant("x")``,
    ``has_object(prog, "x")``, ``prog.type("struct x")``...), whether or not
    a command on this dump takes that path: (objects, types)."""
    objects, types = set(), set()

    def literal(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and literal(node.slice):
                v = node.value
                if (isinstance(v, ast.Name) and v.id == "prog") or (
                        isinstance(v, ast.Attribute) and v.attr == "prog"):
                    objects.add(literal(node.slice))
            if not isinstance(node, ast.Call) or not node.args:
                continue
            f = node.func
            if isinstance(f, ast.Attribute) and literal(node.args[0]):
                if f.attr in _OBJECT_METHODS:
                    objects.add(literal(node.args[0]))
                elif f.attr == "type":
                    types.add(literal(node.args[0]))
            elif isinstance(f, ast.Name) and len(node.args) > 1 and literal(node.args[1]):
                if f.id in _OBJECT_FUNCTIONS:
                    objects.add(literal(node.args[1]))
                elif f.id in _TYPE_FUNCTIONS:
                    types.add(literal(node.args[1]))
    return objects, types


def compare_lookups(progs: dict, lookups: dict, names: tuple) -> dict:
    """Each name either program was asked for, and each of ``names``
    (objects, types), resolved both ways."""
    objects = sorted(lookups["btf"].objects | lookups["dwarf"].objects
                     | {(n, drgn.FindObjectFlags.ANY.value) for n in names[0]})
    types = sorted(lookups["btf"].types | lookups["dwarf"].types | set(names[1]))
    differ = []
    known = []
    for name, flags in objects:
        b, d = (_resolve_object(progs[k], name, flags) for k in ("btf", "dwarf"))
        if b == d:
            continue
        entry = {"object": name, "flags": str(drgn.FindObjectFlags(flags)), "btf": b, "dwarf": d}
        if b and d and d.get("absent") and b["type"] == d["type"] and b["address"]:
            # A function DWARF has no address for (drgn: "optimized out";
            # vmemmap_populate(), which drgn's vmemmap only needs to exist),
            # placed by BTF at its kallsyms address.
            entry["why"] = "DWARF: absent (optimized out); BTF: at its kallsyms address"
            known.append(entry)
        elif b and d and dict(b, type=None) == dict(d, type=None):
            # The same type spelled through another typedef (6.1's
            # node_data: "pg_data_t *[1024]" in DWARF, as its definition in
            # arch/x86/mm/numa.c; GLOBALS writes "struct pglist_data *").
            entry["why"] = (f"the same type, another spelling: DWARF {d['type']!r}, "
                            f"BTF {b['type']!r}; same address and bytes")
            known.append(entry)
        else:
            differ.append(entry)
    for name in types:
        b, d = (_resolve_type(progs[k], name) for k in ("btf", "dwarf"))
        if b != d:
            differ.append({"type": name, "btf": b, "dwarf": d})
    return {"objects": sorted({n for n, _ in objects}), "types": types, "differ": differ,
            "known": known}


def same_but_source(b: str, d: str) -> bool:
    """Byte-identical once the types source is the same word."""
    for btf_form, dwarf_form in (('"types": "btf"', '"types": "dwarf"'),
                                 ('types="btf"', 'types="dwarf"')):
        if b.count(btf_form) != d.count(dwarf_form):
            return False
        b = b.replace(btf_form, dwarf_form)
    return b == d


def compare(dump: str, vmlinux: str, architecture=None, names=None) -> dict:
    """The comparison of one dump (what --json prints). ``names``: (objects,
    types) to resolve both ways besides those looked up; default
    :func:`source_names`."""
    if names is None:
        names = source_names()
    started = time.monotonic()
    progs, lookups, results, seconds = {}, {}, {}, {}
    refs = None
    for side, path in (("dwarf", vmlinux), ("btf", None)):
        t0 = time.monotonic()
        prog = open_vmcore(dump, path, architecture)
        if cache_get(prog, "types") != side:
            raise VmemspectError(
                f"{dump}: without -s the types came from {cache_get(prog, 'types')}, "
                "not BTF (drgn's default search found a vmlinux)",
                "compare where no vmlinux is installed for this kernel")
        progs[side] = prog
        lookups[side] = Lookups(prog)
        results[side] = outputs(prog, refs)
        # The same pages for both (chosen from DWARF's folios).
        refs = [k.split(" ", 1)[1] for k in results[side] if k.startswith("decode ")]
        seconds[side] = round(time.monotonic() - t0, 2)
    commands = {}
    for name, d in results["dwarf"].items():
        b = results["btf"][name]
        same = b["rc"] == d["rc"] and b["stderr"] == d["stderr"] and \
            same_but_source(b["stdout"], d["stdout"])
        entry = {"identical": same, "rc": d["rc"], "bytes": len(d["stdout"])}
        if not same:
            entry["rc_btf"] = b["rc"]
            entry["diff"] = list(difflib.unified_diff(
                (d["stdout"] + d["stderr"]).splitlines(), (b["stdout"] + b["stderr"]).splitlines(),
                "dwarf", "btf", lineterm="", n=2))[:60]
        commands[name] = entry
    result = {
        "dump": dump,
        "vmlinux": vmlinux,
        "release": progs["dwarf"]["UTS_RELEASE"].string_().decode(),
        "commands": commands,
        "lookups": compare_lookups(progs, lookups, names),
        "seconds": {**seconds, "total": round(time.monotonic() - started, 2)},
    }
    # The programs sit in reference cycles (finders, caches): free the
    # DWARF one's 300-400 MB now, not at some later collection (a caller
    # comparing many dumps in one process, and its forks, stay small).
    del progs, lookups
    gc.collect()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("vmlinux")
    ap.add_argument("--architecture", choices=("x86_64", "riscv64"))
    ap.add_argument("--json", action="store_true", help="print the whole comparison")
    a = ap.parse_args()
    # drgn would download a vmlinux if told where: the BTF side must be BTF.
    os.environ.pop("DEBUGINFOD_URLS", None)
    try:
        result = compare(a.dump, a.vmlinux, a.architecture)
    except VmemspectError as e:
        print(f"btf-parity: {e}", file=sys.stderr)
        return 2
    ok = (all(c["identical"] for c in result["commands"].values())
          and not result["lookups"]["differ"])
    if a.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return 0 if ok else 1
    print(f"{result['release']}: {a.dump}")
    for name, c in result["commands"].items():
        print(f"  {'same' if c['identical'] else 'DIFFERS':8} {name} (exit {c['rc']}, "
              f"{c['bytes']} bytes)")
        for line in c.get("diff", []):
            print(f"      {line}")
    lk = result["lookups"]
    print(f"  lookups: {len(lk['objects'])} objects, {len(lk['types'])} types; "
          f"{len(lk['differ'])} resolve differently, {len(lk['known'])} known difference(s)")
    for d in lk["differ"]:
        print(f"    DIFFERS {json.dumps(d)[:400]}")
    for d in lk["known"]:
        print(f"    known: {d['object']}: {d['why']}")
    s = result["seconds"]
    print(f"  {s['total']} s (DWARF {s['dwarf']} s, BTF {s['btf']} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
