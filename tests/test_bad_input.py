"""
Unusable input gets one line on stderr naming the problem and what to do,
exit status 2, and never a traceback; on real files where the case is real.
"""

import json
import subprocess
import sys

import pytest

from conftest import real_run


def vmemspect_fails(*args: str, status: int = 2) -> str:
    p = subprocess.run([sys.executable, "-m", "vmemspect", *args],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("vmemspect: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run72():
    return real_run("7.2", "hvo-2m")


@pytest.fixture(scope="module")
def run72_elf():
    return real_run("7.2", "hvo-2m", elf=True)


@pytest.fixture(scope="module")
def run612():
    return real_run("6.12", "hvo-2m")


def test_missing_file(tmp_path):
    line = vmemspect_fails("vmcore", str(tmp_path / "nope.img"))
    assert "no such file" in line


def test_not_a_vmcore(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("this is not a kernel dump\n" * 100)
    line = vmemspect_fails("vmcore", str(f))
    assert "is not a usable vmcore" in line and "give an ELF or kdump" in line


def test_empty_dump(tmp_path):
    f = tmp_path / "empty.img"
    f.write_bytes(b"")
    assert "is empty" in vmemspect_fails("vmcore", str(f))


def test_truncated_real_dump(tmp_path, run72):
    f = tmp_path / "truncated.kdump"
    with open(run72["kdump"], "rb") as src:
        f.write_bytes(src.read(8 << 20))
    line = vmemspect_fails("vmcore", str(f), "-s", run72["vmlinux"], "verify")
    assert "truncated or damaged" in line


def test_vmlinux_of_another_kernel(run72, run612):
    line = vmemspect_fails("vmcore", run72["kdump"], "-s", run612["vmlinux"])
    assert "is not the debug info of kernel 7.2.13" in line or (
        f"is not the debug info of kernel {run72['release']}" in line)
    assert f"linux-image-{run72['release']}-dbg" in line


def test_vmlinux_path_missing(run72, tmp_path):
    line = vmemspect_fails("vmcore", run72["kdump"], "-s", str(tmp_path / "vmlinux"))
    assert "no such file" in line


def test_bad_decode_argument(run72):
    line = vmemspect_fails("vmcore", run72["kdump"], "-s", run72["vmlinux"], "decode", "hello")
    assert "cannot read 'hello'" in line
    line = vmemspect_fails("vmcore", run72["kdump"], "-s", run72["vmlinux"], "decode", "0x1000")
    assert "below the vmemmap" in line


def test_bad_option_is_usage_error(run72):
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", run72["kdump"],
                        "folios", "--state", "sleeping"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "'sleeping' is not one of" in p.stderr


def test_live_on_this_machine():
    """The host the tests run on has no /proc/kcore (a container or VM
    kernel without it), or one without debug info for its kernel: either
    way, one line and exit 2. The live kernel proper is tested inside the
    test bed's guest."""
    line = vmemspect_fails("live")
    assert "/proc/kcore" in line or "no debug info found" in line


def test_dump_without_vmcoreinfo(run72_elf, tmp_path):
    """A QEMU ELF dump whose VMCOREINFO note is renamed (as when the guest
    never loaded qemu_fw_cfg): one line that says so and what to do."""
    path = run72_elf["elf"]
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    at = head.find(b"VMCOREINFO")
    assert at > 0, "no VMCOREINFO note in the test bed's dump"
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"XMCOREINFO")
    try:
        line = vmemspect_fails("vmcore", path, "-s", run72_elf["vmlinux"])
        # The kernel's own copy of the note is in its memory, so in the
        # dump: `vmemspect vmcoreinfo` finds it (checked against the
        # release init_uts_ns holds), and --vmcoreinfo makes the dump usable.
        found = subprocess.run([sys.executable, "-m", "vmemspect", "vmcoreinfo", path],
                               capture_output=True, timeout=300)
        assert found.returncode == 0, found.stderr
        info = tmp_path / "vmcoreinfo.txt"
        info.write_bytes(found.stdout)
        verify = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", path,
                                 "--vmcoreinfo", str(info), "-s", run72_elf["vmlinux"],
                                 "verify", "--json"], capture_output=True, text=True,
                                timeout=300)
    finally:
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(b"VMCOREINFO")
    assert "has no VMCOREINFO" in line and "qemu_fw_cfg" in line
    assert "vmemspect vmcoreinfo" in line
    assert found.stdout.startswith(b"OSRELEASE=" + run72_elf["truth"]["uname"].encode() + b"\n")
    assert b"SYMBOL(init_uts_ns)=" in found.stdout
    assert f"VMCOREINFO of {run72_elf['truth']['uname']} at physical address 0x" in \
        found.stderr.decode()
    assert verify.returncode == 0, verify.stderr
    doc = json.loads(verify.stdout)
    assert doc["ok"] is True and doc["checked_folios"] == 64


def test_vmcoreinfo_of_a_non_dump(tmp_path):
    """`vmemspect vmcoreinfo` on a file that is no ELF dump, and at an
    address holding no note: one line each, exit 2."""
    notes = tmp_path / "notes.txt"
    notes.write_text("OSRELEASE=1\n")
    assert "not an ELF dump" in vmemspect_fails("vmcoreinfo", str(notes))
    assert "not VMCOREINFO text" in vmemspect_fails("vmcore", str(notes),
                                                    "--vmcoreinfo", str(notes))
    assert "not an address" in vmemspect_fails("vmcoreinfo", str(notes), "--at", "zz")


def test_unsupported_architecture(run72):
    """vmemspect walks x86_64 and riscv64 page tables only: another
    architecture is one line and exit 2 (the model is a real 7.2 one, its
    arch changed)."""
    import dataclasses

    from vmemspect.cli import run
    from vmemspect.kernel import kernel_model
    from vmemspect.progcache import cache_set
    from vmemspect.target import open_vmcore

    prog = open_vmcore(run72["kdump"], run72["vmlinux"])
    cache_set(prog, "model", dataclasses.replace(kernel_model(prog), arch="aarch64"))
    assert run(["verify"], prog=prog) == 2


def test_kernel_without_hugetlb(run72, capsys):
    """A kernel built without hugetlb is reported as such, not an error."""
    import dataclasses

    from vmemspect.cli import run
    from vmemspect.kernel import kernel_model
    from vmemspect.progcache import cache_set
    from vmemspect.target import open_vmcore

    prog = open_vmcore(run72["kdump"], run72["vmlinux"])
    cache_set(prog, "model", dataclasses.replace(kernel_model(prog), hugetlb=False))
    assert run([], prog=prog) == 0
    assert "hugetlb       not built in (CONFIG_HUGETLB_PAGE=n)" in capsys.readouterr().out


def _elf_core(tmp_path, loads):
    """A minimal ELF64 core file: just the header and PT_LOAD headers
    (paddr, vaddr, filesz, memsz)."""
    import struct as st
    phoff, phentsize = 64, 56
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    st.pack_into("<HHIQQQIHHHHHH", ehdr, 16, 4, 62, 1, 0, phoff, 0, 0, 64, phentsize,
                 len(loads), 0, 0, 0)
    table = b"".join(st.pack("<IIQQQQQQ", 1, 4, 0x1000, vaddr, paddr, filesz, memsz, 4096)
                     for paddr, vaddr, filesz, memsz in loads)
    path = tmp_path / "core.elf"
    path.write_bytes(bytes(ehdr) + table)
    return str(path)


def test_elf_filtered_ranges(tmp_path):
    """makedumpfile -E leaves filtered pages past p_filesz inside p_memsz;
    those are the ranges vmemspect makes fault, less what another segment
    holds."""
    from vmemspect.target import elf_filtered_ranges
    path = _elf_core(tmp_path, [
        (0x0, 0xffff888000000000, 0x3000, 0x8000),   # gap 0x3000-0x8000 ...
        (0x5000, 0xffff888000005000, 0x1000, 0x1000),  # ... less 0x5000-0x6000
        (0x10000, 0, 0x2000, 0x2000),                 # whole: no gap
    ])
    assert elf_filtered_ranges(path) == [
        (0x3000, 0x5000, 0xffff888000003000), (0x6000, 0x8000, 0xffff888000006000)]
    assert elf_filtered_ranges(_elf_core(tmp_path, [(0, 0, 0x1000, 0x1000)])) == []
    not_elf = tmp_path / "x"
    not_elf.write_bytes(b"KDUMP   " + bytes(100))
    assert elf_filtered_ranges(str(not_elf)) == []


def _as_snappy(src: str, dst) -> None:
    """Copy a kdump-compressed dump, its page descriptors saying snappy (a
    compression a libkdumpfile may lack; the data stays zlib, so it cannot
    be read either way)."""
    import shutil
    import struct as st
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        h = f.read(4096)
        block_size, sub_hdr_size, bitmap_blocks = st.unpack_from("<iiI", h, 428)
        pd = (1 + sub_hdr_size + bitmap_blocks) * block_size
        f.seek(pd)
        first = st.unpack("<q", f.read(8))[0]
        f.seek(pd)
        table = bytearray(f.read(first - pd))
        for i in range(len(table) // 24):
            if st.unpack_from("<I", table, 24 * i + 12)[0] == 1:
                st.pack_into("<I", table, 24 * i + 12, 4)
        f.seek(pd)
        f.write(table)


def test_compression_drgn_cannot_read(tmp_path):
    """A kdump file whose pages do not decompress with the compression they
    name: one line naming it, saying truncated or damaged, and the command
    that converts the dump; exit 2. (This libkdumpfile reads snappy, so the
    pages fail to decompress; one built without it says so, and vmemspect
    then names the method: test_unsupported_compression_message.)"""
    from vmemspect.target import kdump_compressions
    run = real_run("7.2", "hvo-2m")
    assert kdump_compressions(run["kdump"]) == ["zlib"]
    dump = tmp_path / "snappy.kdump"
    _as_snappy(run["kdump"], dump)
    assert kdump_compressions(str(dump)) == ["snappy"]
    p = subprocess.run([sys.executable, "-m", "vmemspect", "vmcore", str(dump), "-s",
                        run["vmlinux"], "verify"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"vmemspect: error: {dump} is truncated or damaged: a page "
                               "(snappy) does not decompress")
    assert f"makedumpfile -E -d 31 {dump}" in p.stderr


def test_unsupported_compression_message(tmp_path):
    """libkdumpfile built without a method says "Unsupported compression
    method"; vmemspect names the method from the file and the command."""
    from vmemspect.target import _compression_error
    run = real_run("7.2", "hvo-2m")
    dump = tmp_path / "snappy.kdump"
    _as_snappy(run["kdump"], dump)
    e = _compression_error(str(dump), "Cannot read ...: Unsupported compression method: snappy")
    assert str(e) == (f"{dump} is compressed with snappy, which this drgn (libkdumpfile) "
                      f"cannot read; convert it where makedumpfile can read it: makedumpfile "
                      f"-E -d 31 {dump} {dump}.elf (or -z/-c/-l for zstd, zlib, lzo)")
