"""
Errors and exit statuses
------------------------

A :class:`VmemspectError` is unusable input: a file that is not a dump, no
debug info, a kernel vmemspect cannot read. It carries one line for the user
that says what is wrong and what to do. A finding about the kernel (an HVO
invariant that does not hold) is never an error: it is reported.
"""

__all__ = ("EXIT_OK", "EXIT_FINDINGS", "EXIT_UNUSABLE", "VmemspectError")

#: Every check held (or the command reports and does not judge).
EXIT_OK = 0
#: ``verify`` found at least one violated invariant.
EXIT_FINDINGS = 1
#: The input could not be used (bad file, no debug info, no privileges...).
EXIT_UNUSABLE = 2


class VmemspectError(Exception):
    """Unusable input. ``str(e)`` is one line: the problem, then what to do."""

    def __init__(self, problem: str, hint: str = "") -> None:
        self.problem = problem
        self.hint = hint
        super().__init__(f"{problem}; {hint}" if hint else problem)
