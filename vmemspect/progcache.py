"""
Per-program cache
-----------------

vmemspect keeps what it learns about a program on ``prog.cache`` (drgn's
per-program dictionary), under keys made here only, so that no two modules
can disagree on a key or on what may be kept.

The one rule for live kernels: a fact of the booted kernel (its types, page
table format, VMCOREINFO, the walker) is kept; a value the running kernel
changes (zone spans, present sections, what hugetlb could free, the page
tables behind the walker) is
recomputed on every call when the program is live, and kept for a dump,
which never changes.
"""

from typing import Any, Callable, TypeVar

import drgn

__all__ = ("cache_get", "cache_set", "cached", "forget_state", "is_live")

T = TypeVar("T")

#: Every key vmemspect keeps, with what it holds (the prefix keeps them
#: apart from drgn's and other plugins' keys).
KEYS = {
    "types": '"dwarf" or "btf": where the kernel types came from',
    "btf": "the BTF type finder (vmemspect.btf), on programs opened without DWARF",
    "vmcoreinfo": "VMCOREINFO parsed to a dict",
    "model": "the KernelModel",
    "walker": "the kernel's PageTableWalker (state: HVO remaps the vmemmap of a live "
              "kernel, so there each scan gets a fresh walker)",
    "va": "how riscv64 kernel addresses are read",
    "va_reader": "the riscv64 kernel virtual reader",
    "filtered_ranges": "ranges makedumpfile filtered out of the dump",
    "zones": "populated zones (state: recomputed live)",
    "present_sections": "present memory sections (state: recomputed live)",
    "freeable": "what hugetlb could free (state: recomputed live)",
}

#: Keys whose values the running kernel changes.
_STATE = frozenset({"zones", "present_sections", "freeable", "walker"})


def is_live(prog: drgn.Program) -> bool:
    """The program is the running kernel (``/proc/kcore``)."""
    return bool(prog.flags & drgn.ProgramFlags.IS_LIVE)


def _key(name: str) -> str:
    if name not in KEYS:
        raise KeyError(f"vmemspect keeps no {name!r} on prog.cache")
    return "vmemspect_" + name


def cache_get(prog: drgn.Program, name: str, default: Any = None) -> Any:
    """What vmemspect kept under ``name``, ``default`` if nothing (or if it
    is state and the program is live)."""
    if name in _STATE and is_live(prog):
        return default
    return prog.cache.get(_key(name), default)


def cache_set(prog: drgn.Program, name: str, value: Any) -> None:
    """Keep ``value`` under ``name`` (state is not kept on a live kernel)."""
    if name in _STATE and is_live(prog):
        return
    prog.cache[_key(name)] = value


def cached(prog: drgn.Program, name: str, compute: Callable[[drgn.Program], T]) -> T:
    """``compute(prog)``, computed once per program and kept under ``name``
    (every call, for state on a live kernel)."""
    key = _key(name)
    if not (name in _STATE and is_live(prog)) and key in prog.cache:
        return prog.cache[key]
    value = compute(prog)
    cache_set(prog, name, value)
    return value


def forget_state(prog: drgn.Program) -> None:
    """Drop every value the running kernel changes (the state keys), so the
    next scan recomputes them: for a program whose memory changed under
    vmemspect though drgn does not see it live, such as a dump altered in
    place (fuzzing) or a paused guest read between two steps (torture)."""
    for name in _STATE:
        prog.cache.pop(_key(name), None)
