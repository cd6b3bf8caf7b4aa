"""
VMCOREINFO
----------

The kernel's VMCOREINFO text (``KEY=value`` lines written by
``kernel/vmcore_info.c`` and each architecture's
``arch_crash_save_vmcoreinfo()``), parsed in one place. Every other module
asks here: the riscv64 page-table root, the x86_64 paging level, the
release of a dump without debug info, the array lengths the BTF path needs.
"""

from typing import Dict, Optional, Union

import drgn

from .progcache import cached

__all__ = (
    "parse_vmcoreinfo",
    "program_vmcoreinfo",
    "vmcoreinfo_number",
    "vmcoreinfo_release",
)


def parse_vmcoreinfo(data: Union[bytes, str]) -> Dict[str, str]:
    """VMCOREINFO's ``KEY=value`` lines as a dict (``SYMBOL(x)``,
    ``NUMBER(x)``... are keys as written)."""
    if isinstance(data, bytes):
        data = data.decode("ascii", "replace")
    out = {}
    for line in data.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def vmcoreinfo_number(info: Dict[str, str], key: str, base: int = 10) -> Optional[int]:
    """The integer value of ``key`` (``NUMBER(x)``, ``LENGTH(x)``,
    ``SIZE(x)``...: decimal, or hexadecimal with ``0x``; ``SYMBOL(x)`` is
    hexadecimal without it, hence ``base=16``), None if absent or not a
    number."""
    try:
        value = info[key]
        return int(value, 0 if value.startswith("0x") else base)
    except (KeyError, ValueError):
        return None


def program_vmcoreinfo(prog: drgn.Program) -> Dict[str, str]:
    """
    The VMCOREINFO of a program, parsed once: drgn's ``VMCOREINFO`` object
    (the dump's note, ``/sys/kernel/vmcoreinfo`` live, or the text given
    with ``--vmcoreinfo``); empty when the program has none.
    """
    def parse(prog: drgn.Program) -> Dict[str, str]:
        try:
            return parse_vmcoreinfo(prog["VMCOREINFO"].string_())
        except (KeyError, LookupError, drgn.FaultError, ValueError):
            return {}
    return cached(prog, "vmcoreinfo", parse)


def vmcoreinfo_release(prog: drgn.Program) -> Optional[str]:
    """The kernel release from VMCOREINFO (drgn's ``UTS_RELEASE``), readable
    without debug info; None if the program has none."""
    try:
        return prog["UTS_RELEASE"].string_().decode()
    except Exception:
        return None
