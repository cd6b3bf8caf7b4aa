"""Guests and scenarios: the guest's memory, NUMA layout and kernel command
line, and whether the host's root is shared with it ("live").  What the
guest does at run time for a scenario is in scripts/guest/init.sh (it reads
the scenario's name from fw_cfg)."""
from __future__ import annotations

# Every guest's command line starts with console=<the arch's console> and
# these; Debian turns init_on_alloc on, which zeroes every huge page at
# allocation and makes QEMU touch all guest RAM.
BASE_CMDLINE = "init_on_alloc=0 panic=-1"
# The guest script exports VMEMSPECT_VMLINUX (the DWARF vmlinux in the
# cache, which the host's root does not have where drgn looks) and
# VMEMSPECT_RELEASE.
DEFAULT_LIVE_CMD = 'python3 -m vmemspect live -s "$VMEMSPECT_VMLINUX" --json'


def _numa_args(sizes_g: list[int]) -> list[str]:
    args: list[str] = []
    for i, g in enumerate(sizes_g):
        args += ["-object", f"memory-backend-ram,id=m{i},size={g}G",
                 "-numa", f"node,nodeid={i},memdev=m{i}"]
    return args


SCENARIOS: dict[str, dict] = {
    "hvo-2m": {
        "desc": "HVO on, 64 boot-time 2 MiB pages, 2 GiB",
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on hugepagesz=2M hugepages=64",
    },
    "hvo-1g": {
        "desc": "HVO on, one 1 GiB and 64 2 MiB boot-time pages, 4 GiB",
        "mem": "4G",
        "cmdline": ("hugetlb_free_vmemmap=on default_hugepagesz=2M "
                    "hugepagesz=1G hugepages=1 hugepagesz=2M hugepages=64"),
    },
    "hvo-off": {
        "desc": "HVO off, 32 boot-time 2 MiB pages, 2 GiB",
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=off hugepagesz=2M hugepages=32",
    },
    "mixed": {
        "desc": ("HVO on, no boot-time pages; run time: 16 pages with the sysctl "
                 "on, 5 of them held in use (2 anon, 3 hugetlbfs file), then 16 "
                 "more with it off and 5 more held (phase 2), 2 GiB"),
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on",
    },
    "shrink": {
        # Debian's 6.12.117 leaves a copy of each freed folio's head struct
        # page (hugetlb page type) at every 64th pfn of it (docs/known-bugs.md,
        # bug 2): what verify --memmap finds, and /proc/kpageflags too.
        "desc": ("HVO on, no boot-time pages; run time: 20 2 MiB pages, then the pool "
                 "shrunk to 10 (the kernel restores the vmemmap of the 10 it frees), 2 GiB"),
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on",
    },
    "numa": {
        # Node 1 is 3 GiB: with 2 GiB, KASLR sometimes put the kernel where
        # the only 1 GiB-aligned block of node 1 was, and 6.12's boot-time
        # 1 GiB allocation failed ("allocating 1 of page size 1.00 GiB
        # failed node1").
        "desc": ("two nodes, 2 GiB (below the PCI hole: DMA32) and 3 GiB (above it: "
                 "Normal); boot: 1 GiB page on node 1, 2 MiB pages 40 on node 0 and "
                 "50 on node 1; run time: +20 2 MiB on node 1"),
        "mem": "5G",
        "cmdline": ("hugetlb_free_vmemmap=on hugepagesz=1G hugepages=0:0,1:1 "
                    "hugepagesz=2M hugepages=0:40,1:50"),
        "qemu": _numa_args([2, 3]),
        # a vCPU per node (riscv64 guests have one: "Number of NUMA nodes
        # (2) cannot exceed the number of available CPUs (1)")
        "min_smp": 2,
    },
    # Guests larger than the host (scripts/bench/bench-scale.py): guest RAM in a
    # memory backend with reserve=off (no swap/commit reservation), and the
    # base cmdline's init_on_alloc=0, so QEMU touches only what the guest
    # writes.  The huge pages come from extra_cmdline (and mem= the size).
    "scale-2m": {
        "desc": ("HVO on, 256 GiB (reserve=off backend), 2 MiB boot-time pages "
                 "given by extra_cmdline (bench-scale.py: hugepagesz=2M hugepages=120000)"),
        "mem": "256G",
        "cmdline": "hugetlb_free_vmemmap=on",
        "noreserve": True,
    },
    "scale-1g": {
        "desc": ("HVO on, 256 GiB (reserve=off backend), 1 GiB boot-time pages "
                 "given by extra_cmdline (bench-scale.py: hugepagesz=1G hugepages=200)"),
        "mem": "256G",
        "cmdline": "hugetlb_free_vmemmap=on",
        "noreserve": True,
    },
    "rare": {
        # A user's report: on 6.12.117 the folios of a demoted 1 GiB page
        # (all but the first) keep HPG_vmemmap_optimized without being
        # remapped; their 7 vmemmap pages each are never freed.
        "desc": ("HVO on, 6 GiB, hugetlb_cma=3G, 16 boot-time 2 MiB pages; run time: "
                 "2 x 1 GiB (from CMA where the kernel has CMA: 7.2), one demoted "
                 "(512 x 2 MiB), the whole 2 MiB "
                 "pool + 8 surplus (overcommit) held by fallocate on hugetlbfs: "
                 "536 in-use 2 MiB folios, one free 1 GiB folio"),
        "mem": "6G",
        # nokaslr: with physical KASLR the kernel lands in the 4 GiB above
        # the PCI hole a third of the time, splitting it: 7.2 then cannot
        # reserve the 3 GiB CMA area ("cma: Failed to reserve 3072 MiB")
        # and the second 1 GiB page fails (6.1 and 6.12 have no CMA at all:
        # both pages come from alloc_contig_pages).
        "cmdline": "hugetlb_free_vmemmap=on hugetlb_cma=3G hugepagesz=2M hugepages=16 nokaslr",
    },
    "hotplug": {
        # "Not optimizable" (docs/savings.md): with memmap_on_memory each
        # hot-added memory block keeps its own vmemmap at its start, and HVO
        # never remaps vmemmap that lives inside its block
        # (PageVmemmapSelfHosted).  QEMU's pc-dimm memory is not in the e820
        # map: ACPI hot-adds it at boot, above 4 GiB (zone Normal), so the
        # page allocator hands out its pages first.
        "desc": ("HVO on, memory_hotplug.memmap_on_memory=1; 2 GiB boot memory (DMA32) "
                 "and a 1 GiB pc-dimm that ACPI hot-adds at boot (Normal, above 4 GiB, "
                 "each memory block holding its own vmemmap); boot: 32 2 MiB pages "
                 "(boot memory, optimized); run time: 32 more, from the DIMM"),
        "mem": "2G,slots=2,maxmem=4G",
        "cmdline": ("hugetlb_free_vmemmap=on memory_hotplug.memmap_on_memory=1 "
                    "hugepagesz=2M hugepages=32"),
        "qemu": ["-object", "memory-backend-ram,id=hpmem0,size=1G",
                 "-device", "pc-dimm,id=dimm0,memdev=hpmem0"],
    },
    "live": {
        "desc": ("as hvo-2m, with the host's / shared over virtiofs; runs "
                 "guest_cmd (default: %s) chrooted in it" % DEFAULT_LIVE_CMD),
        "mem": "2G",
        "cmdline": "hugetlb_free_vmemmap=on hugepagesz=2M hugepages=64",
        "live": True,
    },
}
