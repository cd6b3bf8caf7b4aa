"""
Partial dumps: memory a check needs is missing. The affected folios are
reported unknown with the reason, counted apart, never as violations, and
the run completes; memory every command needs missing is one error line.

Debian bookworm's makedumpfile (1.7.2) cannot filter QEMU's dumps of these
kernels (it reads a wrong phys_base from QEMU's kdump header and fails on
"Can't get the address of system_utsname"; on QEMU's ELF dumps "Can't get
the number of PT_LOAD"), so the holes a filtered dump has are made here by
rewriting the program headers of a real ELF dump: the first PT_LOAD is split
around a hole, the way makedumpfile's ELF output leaves out filtered pages.
"""

import contextlib
import struct
import subprocess
import sys

import pytest

from conftest import FORM, KERNELS, real_run, vmemspect_json

PT_LOAD = 1


@contextlib.contextmanager
def hole(path: str, start: int, end: int, gap: bool = False):
    """Leave physical [start, end) out of an ELF dump (headers only; restored
    afterwards). The dump's second PT_LOAD (QEMU's 256 KiB BIOS copy at
    0xfffc0000) gives its slot to the part after the hole.

    :param gap: leave the hole as makedumpfile -E does, inside the first
        part's p_memsz but past its p_filesz (readers fill it with zeros),
        rather than outside every segment."""
    with open(path, "r+b") as f:
        ehdr = f.read(64)
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        f.seek(phoff)
        original = f.read(phentsize * phnum)
        phdrs = [bytearray(original[i * phentsize:(i + 1) * phentsize]) for i in range(phnum)]
        loads = [ph for ph in phdrs if struct.unpack_from("<I", ph, 0)[0] == PT_LOAD]
        assert len(loads) == 2, "expected QEMU's two PT_LOADs (RAM, BIOS)"
        ram, spare = loads
        off, vaddr, paddr, filesz, memsz = struct.unpack_from("<QQQQQ", ram, 8)
        assert paddr <= start < end <= paddr + filesz
        struct.pack_into("<QQ", ram, 32, start - paddr, end - paddr if gap else start - paddr)
        spare[:] = ram
        struct.pack_into("<QQQQQ", spare, 8, off + (end - paddr), end, end,
                         paddr + filesz - end, paddr + filesz - end)
        f.seek(phoff)
        f.write(b"".join(phdrs))
    try:
        yield
    finally:
        with open(path, "r+b") as f:
            f.seek(phoff)
            f.write(original)


@pytest.fixture(scope="module", params=KERNELS)
def elf(request):
    series = request.param
    run = real_run(series, "hvo-2m", elf=True)
    folios = vmemspect_json(run, "folios", dump=run["elf"])["folios"]
    tails = vmemspect_json(run, "tails", dump=run["elf"])["tails"]
    return series, run, folios, tails


def verify(run) -> dict:
    return vmemspect_json(run, "verify", dump=run["elf"])


@pytest.mark.parametrize("gap", [False, True], ids=["no-segment", "elf-gap"])
def test_missing_tail_frame_makes_folios_unknown(elf, gap):
    """Mask form: the shared tail frame is gone: its struct pages are
    unknown, but which frame each folio's tail PTEs name is known without
    reading it, so the 64 folios are still checked (issue: an unreadable
    frame may make its contents unknown, never the mapping). Pointer form:
    one folio's aliased frame is gone: its head struct page with it, so its
    free list is cut there; what was read holds."""
    series, run, folios, tails = elf
    if FORM[series] == "mask":
        frame = tails[0]["pfn"]
        with hole(run["elf"], frame << 12, (frame + 1) << 12, gap):
            v = verify(run)
        assert v["ok"] is True and v["findings"] == []
        assert v["unknown"] == 0 and v["checked_folios"] == 64
        assert v["unknown_frames"] == [{
            "pfn": frame, "what": "vmemmap_tails[2] of node 0 DMA32 (order 9)",
            "reason": "not in the dump"}]
    else:
        victim = folios[40]
        frame = victim["head_frame"]["pfn"]
        with hole(run["elf"], frame << 12, (frame + 1) << 12, gap):
            v = verify(run)
        assert v["ok"] is True and v["findings"] == []
        # The list is walked up to the victim: 40 folios read before it.
        assert v["checked_folios"] == 40
        assert len(v["unknown_lists"]) == 1
        assert "free list of node 0" in v["unknown_lists"][0]["reason"]


@pytest.mark.parametrize("gap", [False, True], ids=["no-segment", "elf-gap"])
def test_missing_head_frame_of_one_folio(elf, gap):
    """One folio's head frame missing: in the mask form its struct page
    (and list link) is the fresh copy; in both forms the list is cut at it
    and nothing is reported as a violation."""
    series, run, folios, _ = elf
    victim = folios[10]
    frame = victim["head_frame"]["pfn"]
    with hole(run["elf"], frame << 12, (frame + 1) << 12, gap):
        v = verify(run)
        text = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", run["elf"], "-s",
                               run["vmlinux"], "verify"], capture_output=True, text=True)
    assert v["ok"] is True and v["findings"] == []
    assert v["checked_folios"] == 10
    assert len(v["unknown_lists"]) == 1
    assert text.returncode == 0
    assert "unknown: hugepages-2048kB free list of node 0" in text.stdout


@pytest.mark.parametrize("gap", [False, True], ids=["no-segment", "elf-gap"])
def test_missing_kernel_data_is_one_error(elf, gap):
    _, run, _, _ = elf
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", run["elf"], "-s",
                        run["vmlinux"], "verify"], capture_output=True, text=True)
    assert p.returncode == 0
    # Leave out everything from 16 MiB up: the kernel image and its data.
    with hole(run["elf"], 16 << 20, (2 << 30) - 4096, gap):
        p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", run["elf"], "-s",
                            run["vmlinux"], "verify"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.startswith("vmemspect: error: ") and len(p.stderr.splitlines()) == 1
