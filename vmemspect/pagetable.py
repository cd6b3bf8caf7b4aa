"""
Page-table walker
-----------------

vmemspect reads the kernel's page tables itself, from ``init_mm.pgd`` down,
so that it can report what drgn's ``follow_phys()`` does not: the raw entry
of each level, the level of the leaf (a 4 KiB PTE, a 2 MiB PMD or a 1 GiB
PUD) and whether the mapping is writable. The walk and the formats
(x86_64 4/5-level, riscv64 Sv39/Sv48/Sv57) are in :mod:`vmemspect.mmu`;
this module picks the kernel's format from the program's platform and the
kernel model, and keeps one walker per program.

KASLR is handled: the tables are found from ``init_mm``, not from fixed
addresses.
"""

import struct

from drgn import FaultError, Program

from .errors import MissingMemory, VmemspectError
from .kernel import KernelModel, kernel_model
from .mmu import Leaf, PageTableFormat, PageTableWalker, page_table_format
from .progcache import cached

__all__ = (
    "Leaf",
    "PageTableFormat",
    "PageTableWalker",
    "kernel_page_table_format",
    "page_table_walker",
)


def kernel_page_table_format(model: KernelModel) -> PageTableFormat:
    """
    The format of the kernel's page tables: x86_64 4- or 5-level paging,
    riscv64 Sv39/Sv48/Sv57 (``model.pgtable_levels``, see
    :func:`vmemspect.kernel.kernel_model`).

    :raises VmemspectError: for an architecture vmemspect cannot walk.
    """
    try:
        return page_table_format(model.arch, model.pgtable_levels)
    except ValueError:
        raise VmemspectError(
            f"vmemspect cannot walk {model.arch} page tables "
            f"({model.pgtable_levels} levels)",
            "use an x86_64 or riscv64 kernel or dump (HVO exists only there)",
        ) from None


def _new_walker(prog: Program, model: KernelModel) -> PageTableWalker:
    fmt = kernel_page_table_format(model)
    pgd = prog["init_mm"].pgd.value_()
    try:
        top = prog.read(pgd, 4096)
    except FaultError:
        raise MissingMemory("the top-level page table (init_mm.pgd)", pgd)
    return PageTableWalker(prog, fmt, struct.unpack("<512Q", top), pgd)


def page_table_walker(prog: Program) -> PageTableWalker:
    """
    The walker of a program, created once and cached per program.

    A live kernel changes its page tables (HVO splits PMDs and remaps PTEs as
    folios come and go), so there each call returns a fresh walker, whose
    cache lasts one scan.
    """
    return cached(prog, "walker", lambda prog: _new_walker(prog, kernel_model(prog)))
