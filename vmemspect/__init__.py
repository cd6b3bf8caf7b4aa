"""
vmemspect
---------

Inspect and verify the Linux kernel's HugeTLB Vmemmap Optimization (HVO) on a
running kernel or a crash dump, with drgn.

Layers, each importing only the ones above it in this list:

- :mod:`vmemspect.errors`: the error type and exit statuses.
- :mod:`vmemspect.mmu`: page-table formats per architecture (x86_64,
  riscv64 Sv39/Sv48/Sv57) and a type-free walk over physical memory; on
  riscv64 it serves drgn's kernel virtual reads.
- :mod:`vmemspect.target`: opening a program (live kernel, vmcore, debug info,
  VMCOREINFO for dumps without it).
- :mod:`vmemspect.kernel`: the kernel model (types, encoding form, constants)
  and ``compound_info``/``compound_head`` decoding.
- :mod:`vmemspect.pagetable`: the kernel's walker (format from the kernel
  model, tables from ``init_mm``), returning raw entries.
- :mod:`vmemspect.hugetlb`: hstates, nodes, zones and hugetlb folios.
- :mod:`vmemspect.hvo`: each folio's vmemmap mapping, the shared tail frames
  and the memory HVO saves.
- :mod:`vmemspect.sweep`: the whole-vmemmap sweep: every remapped vmemmap
  range, matched to the folios on the hstate lists.
- :mod:`vmemspect.checks`: the HVO invariants, judged on plain records, and
  the grouping key beside them.
- :mod:`vmemspect.scan`: the scan engine: strategies (every folio, grouped,
  sample) and the one place that finishes a scan.
- :mod:`vmemspect.render`: tables and JSON.
- :mod:`vmemspect.cli`, :mod:`vmemspect.helpers`, :mod:`vmemspect.plugin`:
  the command line, drgn's interactive mode and its ``%`` commands.
"""

__version__ = "0.1.0"
