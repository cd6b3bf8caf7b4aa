"""
vmemspect
---------

Inspect and verify the Linux kernel's HugeTLB Vmemmap Optimization (HVO) on a
running kernel or a crash dump, with drgn.

Layers, each importing only the ones above it in this list (checked by
``tests/unit/test_layers.py``):

- :mod:`vmemspect.errors`: the error types (:class:`~vmemspect.errors.MissingMemory`
  is a :class:`drgn.FaultError`), the exit statuses and their mapping.
- :mod:`vmemspect.progcache`: the one accessor of ``prog.cache``, with one
  rule for live kernels.
- :mod:`vmemspect.parallel`: forked workers (``--jobs``).
- :mod:`vmemspect.diskdump`: writing kdump-compressed files.
- :mod:`vmemspect.vmcoreinfo`: the one VMCOREINFO parser.
- :mod:`vmemspect.mmu`: page-table formats per architecture (x86_64,
  riscv64 Sv39/Sv48/Sv57) and a type-free walk over physical memory; on
  riscv64 it serves drgn's kernel virtual reads.
- :mod:`vmemspect.btf`: the kernel's own BTF as drgn types, for dumps
  without a vmlinux.
- :mod:`vmemspect.target`: opening a program (live kernel, vmcore, debug info,
  VMCOREINFO for dumps without it).
- :mod:`vmemspect.kernel`: the kernel model: every kernel fact from one
  cached probe (types, encoding form, constants, their defaults named), and
  ``compound_info``/``compound_head`` decoding.
- :mod:`vmemspect.pagetable`: the kernel's walker (format from the kernel
  model, tables from ``init_mm``), returning raw entries.
- :mod:`vmemspect.hugetlb`: hstates, nodes, zones and hugetlb folios.
- :mod:`vmemspect.hvo`: each folio's vmemmap mapping, the shared tail frames
  and the memory HVO saves.
- :mod:`vmemspect.optimizable`: whether HVO could optimize a folio, and why not.
- :mod:`vmemspect.sweep`: the whole-vmemmap sweep: every remapped vmemmap
  range, matched to the folios on the hstate lists.
- :mod:`vmemspect.memmap`: the whole-memmap read (``verify --memmap``):
  hugetlb-typed struct pages outside the listed folios.
- :mod:`vmemspect.savings`: what each HVO scheme would save (what-if).
- :mod:`vmemspect.checks`: the HVO invariants, judged on plain records, and
  the grouping key beside them.
- :mod:`vmemspect.diagnosis`: findings grouped by root cause, known bugs named.
- :mod:`vmemspect.scan`: the scan engine: strategies (every folio, grouped,
  sample) and the one place that finishes a scan.
- :mod:`vmemspect.fastscan`: the cheap scan of ``metrics --fast``.
- :mod:`vmemspect.report`: the full report, and the rows commands stream.
- :mod:`vmemspect.documents`: the JSON documents.
- :mod:`vmemspect.tables`: the text tables, rendered from the documents.
- :mod:`vmemspect.metrics`: Prometheus metrics.
- :mod:`vmemspect.helpers`: helpers for drgn's interactive mode, over
  ``drgn.Object``s (and records where no kernel object holds the answer).
- :mod:`vmemspect.commands`: the one list of commands, and the reads each
  does.
- :mod:`vmemspect.extract`: small vmcores of only what the commands read.
- :mod:`vmemspect.cli`: the command line.
- :mod:`vmemspect.plugin`: drgn's plugin: the ``%vmemspect`` command.
"""

__version__ = "0.1.0"
