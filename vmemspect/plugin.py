"""
drgn plugin
-----------

Installing vmemspect registers this module in the ``drgn.plugins`` entry
point group. drgn imports it when it starts, which registers the
``%vmemspect`` command: the same commands and options as the command line,
after the target, run on the program drgn has open::

    >>> %vmemspect verify
    >>> %vmemspect folios --hstate 1G --json
    >>> %vmemspect decode pfn:0x100000

In a drgn session, ``from vmemspect.helpers import *`` gives the helpers.
"""

import logging
from typing import Any, Sequence

from drgn import Program, ProgramFlags
from drgn.commands import ParsedCommand, custom_command, parse_shell_command

from .btf import load_kernel_btf
from .cli import run
from .commands import command_names
from .errors import VmemspectError
from .progcache import cache_get, cache_set
from .target import setup_kernel_va

__all__ = ("drgn_prog_set",)


def _parse(source: str) -> ParsedCommand[Sequence[str]]:
    return parse_shell_command(source)


@custom_command(
    description="show and verify HugeTLB Vmemmap Optimization (HVO)",
    usage="**vmemspect** [*COMMAND*] [*OPTIONS*]",
    long_description=f"Runs a vmemspect command ({', '.join(command_names())}) "
    "on the current program, with the options of the vmemspect command line. "
    "'%vmemspect --help' lists them.",
    parse=_parse,
)
def _cmd_vmemspect(prog: Program, name: str, args: Sequence[str], **kwargs: Any) -> int:
    if prog.flags & ProgramFlags.IS_LINUX_KERNEL:
        _ensure_types(prog)
    return run(list(args), prog=prog)


def _ensure_types(prog: Program) -> None:
    """drgn started without a vmlinux has no types: serve the kernel's own
    BTF, as ``vmemspect vmcore`` does without -s."""
    if cache_get(prog, "types") is not None:
        return
    try:
        prog.type("struct page")
        cache_set(prog, "types", "dwarf")
    except LookupError:
        try:
            load_kernel_btf(prog)
        except VmemspectError:
            pass  # the command then says what is missing


def drgn_prog_set(prog: Program) -> None:
    """
    drgn's plugin hook, called once the target is set and before debug
    info is loaded (the command is registered at import). On a riscv64
    kernel that drgn cannot translate (drgn 0.3.0 has no riscv64 page
    tables), it installs vmemspect's page-table walker as a memory segment
    over the kernel half (:func:`vmemspect.target.setup_kernel_va`), so
    that drgn's own symbols, helpers and ``%vmemspect`` work in
    ``drgn -c DUMP`` (``--vmcoreinfo FILE`` for a dump without the note).
    Nothing happens on x86_64, or where drgn translates by itself.
    """
    if not prog.flags & ProgramFlags.IS_LINUX_KERNEL:
        return
    try:
        setup_kernel_va(prog)
    except VmemspectError as e:
        logging.getLogger("drgn").warning("vmemspect: %s", e)
