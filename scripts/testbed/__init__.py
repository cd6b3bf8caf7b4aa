"""Real-kernel test bed for vmemspect: boot a Debian kernel under QEMU (TCG)
in a HugeTLB scenario, collect the guest's ground truth and dump its memory.

Standard library only.  A package of its own (scripts/pyproject.toml, which
scripts/deps.sh installs editable in .venv), imported by the tests and the
scripts::

    import testbed
    r = testbed.run_scenario(series="7.2", scenario="hvo-2m", out_dir=Path(...))

and as a command (see __main__.py)::

    python3 scripts/testbed kernels | list
    python3 scripts/testbed run --kernel 7.2 --scenario hvo-2m [--summary]

One module per axis, so that each grows in one place:

  kernels     the registry of kernels (id -> series, flavour, suite, -dbg,
              form, arch) and fetching them (scripts/fetch-kernel.sh)
  scenarios   guests and scenarios (memory, NUMA, command line, live)
  dumps       dump sources (QEMU kdump-zlib, QEMU ELF) and dump-file helpers
  kdump       the "kdump capture" dump sources (capture kernel + makedumpfile)
  truth       the guest's console protocol and its ground truth
  qemu        QEMU/virtiofsd processes (always killed) and QMP
  initramfs   the guest's initramfs and programs
  run         run_scenario() (the run dict is described there), summary()

Everything downloaded or built goes to the cache
``${VMEMSPECT_CACHE:-~/.cache/vmemspect}``; dumps and logs go to the run's
output directory.
"""
from .common import TestbedError, cache_dir
from .dumps import (DUMPS, dump_info, elf_filtered_ranges, elf_phys_offset, elf_segments,
                    embedded_vmcoreinfo, read_phys, vmcoreinfo_from_dump)
from .kdump import CAPTURES
from .initramfs import build_initramfs, build_guest_programs
from .kernels import ARCHES, KERNELS, Kernel, fetch_kernel, kernel
from .qemu import QMP, die_with_parent, running_pids
from .run import run_scenario, summary
from .scenarios import SCENARIOS
from .truth import parse_truth

__all__ = [
    "ARCHES", "CAPTURES", "DUMPS", "KERNELS", "QMP", "SCENARIOS", "Kernel", "TestbedError",
    "build_guest_programs", "build_initramfs", "cache_dir", "dump_info", "elf_filtered_ranges", "elf_phys_offset",
    "elf_segments", "embedded_vmcoreinfo", "fetch_kernel", "kernel", "parse_truth", "read_phys",
    "run_scenario", "summary", "vmcoreinfo_from_dump", "die_with_parent", "running_pids",
]
