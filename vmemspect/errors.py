"""
Errors and exit statuses
------------------------

A :class:`VmemspectError` is unusable input: a file that is not a dump, no
debug info, a kernel vmemspect cannot read. It carries one line for the user
that says what is wrong and what to do. A finding about the kernel (an HVO
invariant that does not hold) is never an error: it is reported.

Memory a read needs and the program lacks is a :class:`MissingMemory`, a
:class:`drgn.FaultError`, so that a drgn user's ``except FaultError`` holds
for vmemspect's helpers too.

The exit statuses of every entry point (the command line, ``%vmemspect``,
``metrics``) are here and only here, with :func:`exit_status`, the one
mapping from an exception to a status, and :func:`error_line`, its message.
"""

from typing import Tuple

import click
import drgn

__all__ = (
    "EXIT_FINDINGS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNUSABLE",
    "LIVE_READ_HINT",
    "MissingMemory",
    "VmemspectError",
    "error_line",
    "exit_status",
)

#: Every check held (or the command reports and does not judge).
EXIT_OK = 0
#: ``verify`` found at least one violated invariant.
EXIT_FINDINGS = 1
#: The input could not be used (bad file, no debug info, no privileges,
#: memory every command needs missing from the dump...).
EXIT_UNUSABLE = 2
#: A bug in vmemspect (the one-line message asks for VMEMSPECT_DEBUG=1).
EXIT_INTERNAL = 3
#: Interrupted (Ctrl-C), as a shell reports SIGINT.
EXIT_INTERRUPTED = 130

#: What to do when the running kernel refuses a read.
LIVE_READ_HINT = ("/proc/kcore refused the read: run as root, on a kernel without "
                  "lockdown=confidentiality")


class VmemspectError(Exception):
    """Unusable input. ``str(e)`` is one line: the problem, then what to do."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}; {hint}" if hint else problem)


class MissingMemory(drgn.FaultError):
    """
    Memory a walk needs is not in the program (filtered or truncated dump).
    ``what`` names it ("a page table", "a vmemmap frame"), ``address`` is
    where (physical for frames and tables, virtual for struct pages).
    """

    def __init__(self, what: str, address: int) -> None:
        self.what = what
        super().__init__(f"{what} is not in the dump", address)

    def __str__(self) -> str:
        return f"{self.what} at {self.address:#x} is not in the dump"


def exit_status(e: BaseException) -> Tuple[int, str]:
    """
    The exit status of a run that raised ``e``, and the reason label of the
    ``vmemspect_scan_success`` metric: unusable input (``unusable_input``),
    memory the program lacks (``missing_memory``), Ctrl-C
    (``interrupted``), anything else a bug (``internal_error``).
    """
    if isinstance(e, (VmemspectError, click.ClickException)):
        return EXIT_UNUSABLE, "unusable_input"
    if isinstance(e, drgn.FaultError):
        return EXIT_UNUSABLE, "missing_memory"
    if isinstance(e, (KeyboardInterrupt, click.exceptions.Abort)):
        return EXIT_INTERRUPTED, "interrupted"
    return EXIT_INTERNAL, "internal_error"


def error_line(e: BaseException, live: bool = False) -> str:
    """
    The one line the user reads for ``e`` (without the ``vmemspect:``
    prefix). A fault says what could not be read and where: on a dump,
    memory it lacks (truncated, or filtered too far by makedumpfile); on a
    running kernel, a read /proc/kcore refused.
    """
    if isinstance(e, VmemspectError):
        return f"error: {e}"
    if isinstance(e, drgn.FaultError):
        what = e.what if isinstance(e, MissingMemory) else f"memory ({e.message})"
        if live:
            return (f"error: cannot read {what} at {e.address:#x} of the running kernel; "
                    f"{LIVE_READ_HINT}")
        return (f"error: the dump lacks {what} at {e.address:#x}, which vmemspect needs; "
                "it is truncated or filtered too far: take a dump that keeps kernel data")
    return (f"internal error: {type(e).__name__}: {e} "
            "(set VMEMSPECT_DEBUG=1 for a traceback)")
