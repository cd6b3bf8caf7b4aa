"""
vmemspect
---------

Inspect and verify the Linux kernel's HugeTLB Vmemmap Optimization (HVO) on a
running kernel or a crash dump, with drgn.

Layers, each importing only the ones above it in this list:

- :mod:`vmemspect.errors`: the error type and exit statuses.
- :mod:`vmemspect.target`: opening a program (live kernel, vmcore, debug info).
- :mod:`vmemspect.kernel`: the kernel model (types, encoding form, constants)
  and ``compound_info``/``compound_head`` decoding.
- :mod:`vmemspect.pagetable`: a walker over ``init_mm``'s page tables that
  returns raw entries.
- :mod:`vmemspect.hugetlb`: hstates, nodes, zones and hugetlb folios.
- :mod:`vmemspect.hvo`: each folio's vmemmap mapping, the shared tail frames
  and the memory HVO saves.
- :mod:`vmemspect.checks`: the HVO invariants, judged on plain records.
- :mod:`vmemspect.render`: tables and JSON.
- :mod:`vmemspect.cli`, :mod:`vmemspect.helpers`, :mod:`vmemspect.plugin`:
  the command line, drgn's interactive mode and its ``%`` commands.
"""

__version__ = "0.1.0"
