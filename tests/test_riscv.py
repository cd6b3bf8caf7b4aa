"""
riscv64 guests (scripts/testbed, kernels.RISCV): Debian sid's 7.2 (mask
form, Sv48 under QEMU's rv64 CPU) and trixie's 6.12 (pointer form, Sv57),
booted under qemu-system-riscv64 in hvo-2m and mixed.

QEMU's riscv64 dumps are ELF only and carry no VMCOREINFO note; the test bed
reads the note's text out of the dump at the physical address the guest
printed (/sys/kernel/vmcoreinfo) into the run's vmcoreinfo.txt, which
vmemspect takes as ``vmemspect vmcore DUMP --vmcoreinfo FILE``
(conftest.types_args).

vmemspect on those dumps is tested in tests/test_real_kernels.py, where
the architecture is a parameter like the kernel. Here, what is riscv64's
own:

- the test bed's own checks of what it made (run, truth, ELF segments,
  VMCOREINFO text, and the HVO state of every folio read from the dump
  through this module's own Sv39/48/57 walk, RiscvPageTables): these need
  no vmemspect; then vmemspect's frames compared with that walk;
- corruption of the 7.2 dump like tests/test_real_corruption.py, at riscv
  PTEs (V bit 0, R 1, W 2, X 3, U 4, G 5, A 6, D 7, PPN bits 10-53; a
  leaf has R, W or X set).

Plus a real kdump capture of 7.2 (kexec -p, makedumpfile -d 31 in the
capture kernel: the dump carries its own VMCOREINFO) and vmemspect live in
a 7.2 guest (6.12 too in the full run): a riscv64 root of Debian's python3
and python3-drgn over virtiofs, the checkout beside it.
"""

import collections
import json
import os
import struct

import pytest

import testbed
from conftest import (FORM, FULL, RISCV, capture_run, kernel_saved_pages, live_run, patched,
                      real_run, vmemspect, vmemspect_json)
from test_real_kernels import (PAGE, RISCV_SCENARIOS, SIZEOF_PAGE, TAIL_MASK, expected_optimized,
                               expected_optimized_count, expected_saved, node_of, paging)

#: The runs of tests/test_real_kernels.py's riscv64 cases (every commit:
#: both kernels in hvo-2m and mixed; the full run: every healthy scenario).
CASES = [(k, s) for k in RISCV for s in RISCV_SCENARIOS]
#: Guest RAM of each scenario (GiB).
RAM_GIB = {"hvo-2m": 2, "mixed": 2, "hvo-1g": 4, "hvo-off": 2, "numa": 5}
#: The kernel corrupted below and captured with kdump: the mask form.
MASK_KERNEL = next(k for k in RISCV if FORM[k] == "mask")

# riscv64 page-table entries
PTE_V, PTE_R, PTE_W, PTE_X = 1 << 0, 1 << 1, 1 << 2, 1 << 3
PTE_LEAF = PTE_R | PTE_W | PTE_X
PPN_SHIFT = 10
PPN_MASK = (1 << 44) - 1


def pte_pfn(pte: int) -> int:
    return (pte >> PPN_SHIFT) & PPN_MASK


def with_pfn(pte: int, pfn: int) -> int:
    return (pte & ~(PPN_MASK << PPN_SHIFT)) | (pfn << PPN_SHIFT)


def read_vmcoreinfo(path: str) -> dict:
    with open(path) as f:
        return dict(ln.split("=", 1) for ln in f.read().splitlines() if "=" in ln)


class RiscvPageTables:
    """This module's own walk of a riscv64 kernel's page tables in a dump,
    independent of vmemspect's (vmemspect/mmu.py): the root from
    VMCOREINFO (``NUMBER(satp)`` where the kernel writes it, 7.x; else
    ``SYMBOL(swapper_pg_dir) - NUMBER(va_kernel_pa_offset)`` with the
    levels from ``NUMBER(VA_BITS)``), tables read with testbed.read_phys."""

    def __init__(self, dump: str, info: dict) -> None:
        self.dump = dump
        if "NUMBER(satp)" in info:
            satp = int(info["NUMBER(satp)"], 0)
            self.levels = {8: 3, 9: 4, 10: 5}[satp >> 60]
            self.root = (satp & PPN_MASK) << 12
        else:
            va = int(info["SYMBOL(swapper_pg_dir)"], 16)
            self.root = (va - int(info["NUMBER(va_kernel_pa_offset)"], 0)) % (1 << 64)
            self.levels = {39: 3, 48: 4, 57: 5}[int(info["NUMBER(VA_BITS)"])]
        self.name = {3: "Sv39", 4: "Sv48", 5: "Sv57"}[self.levels]
        self.vmemmap = int(info["SYMBOL(vmemmap)"], 16)

    def word(self, phys: int) -> int:
        return struct.unpack("<Q", testbed.read_phys(self.dump, phys, 8))[0]

    def lookup(self, va: int):
        """(level, physical address of the leaf entry, entry, physical
        address of ``va``) of a mapped ``va`` (level 0: a PTE); None if it
        is not mapped."""
        table = self.root
        for level in range(self.levels - 1, -1, -1):
            at = table + 8 * ((va >> (12 + 9 * level)) & 511)
            pte = self.word(at)
            if not pte & PTE_V:
                return None
            if pte & PTE_LEAF:
                span = 1 << (12 + 9 * level)
                return level, at, pte, (pte_pfn(pte) << 12) + (va & (span - 1))
            table = pte_pfn(pte) << 12
        return None

    def page(self, pfn: int) -> int:
        """Virtual address of the struct page of ``pfn``."""
        return self.vmemmap + SIZEOF_PAGE * pfn


def order_of(nr_pages: int) -> int:
    return nr_pages.bit_length() - 1


# ---------------------------------------------------------------- the runs

@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{p[1]}")
def run_case(request):
    series, scenario = request.param
    run = real_run(series, scenario)
    return series, scenario, run, run["truth"]


def dump_walk(run) -> dict:
    """Every hugetlb folio of the guest's truth, read from its ELF dump with
    RiscvPageTables: {head pfn: [(level, entry, frame pfn) of each of its
    vmemmap pages]}."""
    pt = RiscvPageTables(run["elf"], read_vmcoreinfo(run["vmcoreinfo"]["path"]))
    walk = {}
    for h in run["truth"]["hugetlb_folios"]:
        va = pt.page(h["pfn"])
        pages = []
        for i in range(h["nr_pages"] * SIZEOF_PAGE // PAGE):
            level, _, entry, phys = pt.lookup(va + i * PAGE)
            pages.append((level, entry, phys >> 12))
        walk[h["pfn"]] = pages
    return walk


# ---------------------------------------------------------------- the test bed's own checks

def test_run_is_complete(run_case):
    """Boot, scenario, ELF dump, vmcoreinfo.txt and truth.json are there;
    no QEMU kdump (it would carry neither machine nor VMCOREINFO)."""
    series, scenario, run, truth = run_case
    out = os.path.dirname(run["console"])
    assert run["kernel"]["arch"] == "riscv64" and run["kernel"]["id"] == series
    assert run["scenario"] == scenario and truth["scenario"] == scenario
    assert run["kdump"] is None and run["elf"] and run["elf_format"] == "elf"
    assert run["fw_cfg_via"] == "initramfs"
    assert f"hugetlb_free_vmemmap={'off' if scenario == 'hvo-off' else 'on'}" in truth["cmdline"].split()
    assert truth["uname"] == run["release"] and run["release"].endswith("-riscv64")
    assert not truth["errors"], truth["errors"]
    with open(os.path.join(out, "truth.json")) as f:
        assert json.load(f) == truth
    v = run["vmcoreinfo"]
    assert v["path"] == os.path.join(out, "vmcoreinfo.txt") and os.path.isfile(v["path"])
    assert v["source"] == "qemu-dump" and v["dump"] == run["elf"]
    assert int(v["paddr"], 16) == truth["vmcoreinfo_note"]["paddr"]
    assert testbed.embedded_vmcoreinfo(run["elf"]) is None


def test_elf_segments(run_case):
    """A plain parse of the ELF's PT_LOADs: guest RAM at 0x80000000 (2 GiB,
    as the scenario asked), the VMCOREINFO note inside it."""
    _, _, run, truth = run_case
    _, scenario, _, _ = run_case
    segs = testbed.elf_segments(run["elf"])
    ram = sorted((p, s) for p, _, s in segs if p >= 0x80000000)
    size = RAM_GIB[scenario] << 30
    assert ram[0][0] == 0x80000000 and sum(s for _, s in ram) == size, segs
    assert all(a + n == b for (a, n), (b, _) in zip(ram, ram[1:]))         # one range
    assert all(p + s <= 0x80000000 for p, _, s in segs if p < 0x80000000)  # firmware ROM
    note = truth["vmcoreinfo_note"]
    assert 0x80000000 <= note["paddr"] < 0x80000000 + size
    assert run["sizes"]["elf"] > size


def test_vmcoreinfo_text(run_case):
    """vmcoreinfo.txt is the guest's note, read back the same way, and says
    what the kernel is."""
    series, _, run, truth = run_case
    path = run["vmcoreinfo"]["path"]
    with open(path) as f:
        text = f.read()
    note = truth["vmcoreinfo_note"]
    assert testbed.vmcoreinfo_from_dump(run["elf"], note["paddr"], note["size"]) == text
    info = read_vmcoreinfo(path)
    assert info["OSRELEASE"] == truth["uname"]
    assert info["PAGESIZE"] == "4096" and info["SIZE(page)"] == "64"
    # No KASLR on riscv64 (6.12 writes no KERNELOFFSET, 7.2 writes 0).
    assert info.get("KERNELOFFSET", "0") == "0"
    for key in ("SYMBOL(swapper_pg_dir)", "SYMBOL(vmemmap)", "SYMBOL(mem_section)",
                "NUMBER(va_kernel_pa_offset)", "NUMBER(phys_ram_base)", "NUMBER(VA_BITS)"):
        assert key in info, key
    member = "compound_info" if FORM[series] == "mask" else "compound_head"
    assert info[f"OFFSET(page.{member})"] == "8"
    assert RiscvPageTables(run["elf"], info).name == paging(series)


def test_truth(run_case):
    """The guest's own account: the scenario's pools, and the kernel's
    memmap counters saying all but one vmemmap page freed per optimized
    folio (7 for 2 MiB, 4095 for 1 GiB)."""
    _, scenario, _, truth = run_case
    h = truth["hstates"]["2048"]["global"]
    folios = truth["hugetlb_folios"]
    assert truth["vmemmap_freeable_kib"] == {"2048": 28, "1048576": 16380}
    want = {"hvo-2m": (64, 64), "hvo-1g": (64, 64), "hvo-off": (32, 32), "mixed": (32, 22),
            "numa": (110, 110)}[scenario]
    assert (h["nr_hugepages"], h["free_hugepages"]) == want
    gig = truth["hstates"]["1048576"]["global"]["nr_hugepages"]
    assert gig == (1 if scenario in ("hvo-1g", "numa") else 0)
    assert len(folios) == want[0] + gig
    assert sorted(f["nr_pages"] for f in folios) == [512] * want[0] + [262144] * gig
    if scenario == "mixed":
        assert collections.Counter(u["phase"] for u in truth["in_use"]) == {1: 5, 2: 5}
    else:
        assert truth["in_use"] == []
    if scenario == "numa":
        assert {n: v["nr_hugepages"] for n, v in truth["hstates"]["2048"]["nodes"].items()} == {
            "0": 40, "1": 70}
    assert kernel_saved_pages(truth) == expected_saved(truth, scenario)


def test_hvo_in_the_dump(run_case):
    """The vmemmap of every folio, read from the dump here: optimized folios
    have their tail pages (7 of 8 for 2 MiB) remapped (7.2: onto one frame
    per node and order shared by all of them, whose 64 struct pages are
    identical tails; 6.12: onto the folio's own head frame, which holds its
    first 64 struct pages), the others all distinct frames.  An optimized
    folio's vmemmap is mapped by PTEs.  Tail PTEs are writable (riscv64 has no
    PAGE_KERNEL_RO: HVO's read-only remap falls back to PAGE_KERNEL)."""
    series, scenario, run, truth = run_case
    walk = dump_walk(run)
    pt = RiscvPageTables(run["elf"], read_vmcoreinfo(run["vmcoreinfo"]["path"]))
    nr_pages = {h["pfn"]: h["nr_pages"] for h in truth["hugetlb_folios"]}
    optimized = {pfn for pfn, pages in walk.items()
                 if len({frame for _, _, frame in pages}) < len(pages)}
    assert len(optimized) == expected_optimized_count(truth, scenario)
    for pfn, pages in walk.items():
        want = expected_optimized(truth, scenario, pfn)
        if want is not None:
            assert (pfn in optimized) is want, hex(pfn)
        if pfn not in optimized:
            assert len({frame for _, _, frame in pages}) == len(pages)
            continue
        assert all(level == 0 for level, _, _ in pages)
        head_frame = pages[0][2]
        tails = {frame for _, _, frame in pages[1:]}
        assert all(entry & PTE_W for _, entry, _ in pages[1:])
        if FORM[series] == "pointer":
            assert tails == {head_frame}
            # struct page 1 names its head (compound_head = head | 1)
            assert pt.word((head_frame << 12) + SIZEOF_PAGE + 8) == pt.page(pfn) | 1
        else:
            assert len(tails) == 1 and head_frame not in tails
    if FORM[series] == "mask":
        shared = collections.defaultdict(set)
        for pfn in optimized:
            shared[(node_of(truth, pfn), order_of(nr_pages[pfn]))].add(walk[pfn][1][2])
        assert all(len(frames) == 1 for frames in shared.values()), shared
        assert len({min(f) for f in shared.values()}) == len(shared)
        for (_, order), (frame,) in shared.items():
            for i in range(PAGE // SIZEOF_PAGE):
                assert pt.word((frame << 12) + i * SIZEOF_PAGE + 8) == TAIL_MASK[order]


# ---------------------------------------------------------------- vmemspect's frames, this walk's

# vmemspect on these dumps is tested with every kernel's in
# tests/test_real_kernels.py (the architecture a parameter there); here its
# frames are compared with this module's own walk of the dump.

def test_frames_are_the_dumps(run_case):
    """Each folio's head frame, whether it is remapped, and the frames its
    tail vmemmap pages map (7.2: the shared frame; 6.12: the folio's own
    head frame) are the ones this module's walk of the dump finds."""
    series, _, run, _ = run_case
    walk = dump_walk(run)
    folios = vmemspect_json(run, "folios")["folios"]
    tails = vmemspect_json(run, "tails")["tails"]
    assert sorted(f["pfn"] for f in folios) == sorted(walk)
    for f in folios:
        pages = walk[f["pfn"]]
        assert f["head_frame"]["pfn"] == pages[0][2]
        assert f["remapped"] is (len({frame for _, _, frame in pages}) < len(pages)), f
        if f["remapped"] and FORM[series] == "mask":
            assert [t["pfn"] for t in f["tail_frames"]] == [pages[1][2]]
            assert {frame for _, _, frame in pages[1:]} == {pages[1][2]}
    if FORM[series] == "pointer":
        for t in tails:
            assert t["frame_pfn"] == walk[t["folio_pfn"]][0][2]
    else:
        remapped = {walk[f["pfn"]][1][2] for f in folios if f["remapped"]}
        assert {t["pfn"] for t in tails} == remapped


def test_vmcoreinfo_command(run_case):
    """``vmemspect vmcoreinfo DUMP`` finds the same text the test bed read
    at the address the guest printed, with and without that address."""
    _, _, run, truth = run_case
    with open(run["vmcoreinfo"]["path"]) as f:
        text = f.read()
    assert vmemspect("vmcoreinfo", run["elf"]).stdout == text
    at = hex(truth["vmcoreinfo_note"]["paddr"])
    assert vmemspect("vmcoreinfo", run["elf"], "--at", at).stdout == text


def test_no_vmcoreinfo_is_one_line(run_case):
    """Without --vmcoreinfo: exit 2, one line that says what to do."""
    _, _, run, _ = run_case
    p = vmemspect("vmcore", run["elf"], "--json", check_rc=(2,))
    assert p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "--vmcoreinfo" in p.stderr


# ---------------------------------------------------------------- corruption (7.2, mask form)

@pytest.fixture(scope="module")
def elf():
    run = real_run(MASK_KERNEL, "hvo-2m")
    healthy = vmemspect_json(run, "verify")
    assert healthy["ok"] and healthy["checked_folios"] == 64
    folios = vmemspect_json(run, "folios")["folios"]
    tails = vmemspect_json(run, "tails")["tails"]
    pt = RiscvPageTables(run["elf"], read_vmcoreinfo(run["vmcoreinfo"]["path"]))
    return run, folios, tails, pt


def tail_pte(pt: RiscvPageTables, folio: dict, index: int):
    """(physical address, value) of the PTE of a folio's vmemmap page."""
    level, at, entry, _ = pt.lookup(int(folio["vmemmap"], 16) + index * PAGE)
    assert level == 0 and entry & PTE_V and entry & PTE_LEAF
    return at, entry


def findings_of(run) -> set:
    v = vmemspect_json(run, "verify", check_rc=(1,))
    assert v["ok"] is False
    return {(f["check"], f["folio_pfn"], f["frame_pfn"]) for f in v["findings"]}


def test_tail_pte_to_foreign_frame(elf):
    """One tail PTE of a folio points at another folio's head frame: verify
    names that folio and that frame, nothing else."""
    run, folios, _, pt = elf
    victim, other = folios[3], folios[5]
    phys, entry = tail_pte(pt, victim, 3)
    foreign = other["head_frame"]["pfn"]
    with patched(run["elf"], phys, with_pfn(entry, foreign)):
        found = findings_of(run)
    assert found == {("tail-frame", victim["pfn"], foreign)}


def test_writable_tail_pte(elf):
    """x86_64 maps tails read-only and a writable one is a finding; riscv64
    maps them writable (no PAGE_KERNEL_RO), so the real tail PTEs have W
    set and are no finding, and one with W set anew is none either.  A tail
    PTE that is no leaf (R, W and X clear: a pointer to a next level, which
    a PTE cannot have) is a finding about that folio."""
    run, folios, _, pt = elf
    victim = folios[10]
    phys, entry = tail_pte(pt, victim, 6)
    assert entry & PTE_W and entry & PTE_R
    with patched(run["elf"], phys, entry | PTE_W):
        v = vmemspect_json(run, "verify")
    assert v["ok"] is True and v["findings"] == []
    with patched(run["elf"], phys, entry & ~PTE_LEAF):
        found = findings_of(run)
    assert {pfn for _, pfn, _ in found} == {victim["pfn"]}


def test_struct_page_in_tail_frame(elf):
    """Struct page 5 of the shared tail frame holds an order-10 tail mask."""
    run, _, tails, _ = elf
    frame = tails[0]["pfn"]
    with patched(run["elf"], frame * PAGE + 5 * SIZEOF_PAGE + 8, 0xFFFFFFFFFFFF0001):
        found = findings_of(run)
    assert found == {("shared-frame", None, frame)}


def test_hvo_flag_cleared(elf):
    """HPG_vmemmap_optimized cleared in a remapped folio's head."""
    run, folios, _, _ = elf
    victim = folios[20]
    page = int(victim["page"], 16)
    private = victim["head_frame"]["pfn"] * PAGE + (page & (PAGE - 1)) + 40
    with patched(run["elf"], private, 0) as old:
        assert old & (1 << 4), "HPG_vmemmap_optimized was not set before"
        found = findings_of(run)
    assert found == {("flag-vs-mapping", victim["pfn"], None)}


# ---------------------------------------------------------------- a real kdump capture

CAPTURE = "capture-zstd-newest"


@pytest.fixture(scope="module")
def capture():
    run = capture_run(MASK_KERNEL, CAPTURE)
    return run, run[CAPTURE]


def test_capture_made_a_dump_with_vmcoreinfo(capture):
    """kexec -p and makedumpfile -d 31 (Debian's riscv64 builds) in the
    capture kernel: a zstd kdump-compressed file carrying the kernel's own
    VMCOREINFO, the same as the note the QEMU dump held (but the capture's
    CRASHTIME)."""
    run, dump = capture
    c = run["dump_info"][CAPTURE]
    assert c["makedumpfile_rc"] == 0 and c["dump_level"] == 31
    assert run[f"{CAPTURE}_format"] == c["format"] == "kdump-compressed"
    assert c["actual_compression"] == "zstd"
    assert c["makedumpfile"]["origin"].endswith("(riscv64)")
    assert c["armed"]["crash_size"] and c["vmcore"]["size"] > 0
    text = testbed.embedded_vmcoreinfo(dump)
    with open(run["vmcoreinfo"]["path"]) as f:
        qemu = f.read()
    assert "CRASHTIME=" in text
    assert [ln for ln in text.splitlines() if not ln.startswith("CRASHTIME=")] == qemu.splitlines()
    assert run["vmcoreinfo"]["capture_agrees"] is True


def test_capture_read_like_qemu_dump(capture):
    """vmemspect on the capture (no --vmcoreinfo: it has its own) finds
    what it finds on QEMU's ELF of the same state, and verify is clean."""
    run, dump = capture
    p = vmemspect("vmcore", dump, "folios", "--json")
    on_capture = json.loads(p.stdout)["folios"]
    on_elf = vmemspect_json(run, "folios")["folios"]
    key = lambda f: (f["pfn"], f["order"], f["nid"], f["state"], f["optimized"], f["remapped"])
    assert sorted(map(key, on_capture)) == sorted(map(key, on_elf))
    assert sorted(f["pfn"] for f in on_capture) == sorted(h["pfn"] for h in run["truth"]["hugetlb_folios"])
    v = json.loads(vmemspect("vmcore", dump, "verify", "--json").stdout)
    assert v["ok"] is True and v["findings"] == [] and v["checked_folios"] == 64


# ---------------------------------------------------------------- live (full run)

#: vmemspect live inside the riscv64 guest, with the checkout over virtiofs
#: (Python and drgn are the guest root's: Debian sid's riscv64 packages).
LIVE_CMD = r"""python3 -c '
import json, subprocess, sys
out = {}
for name, args in (("report", []), ("verify", ["verify"])):
    p = subprocess.run([sys.executable, "-m", "vmemspect", "live", *args, "--json"],
                       capture_output=True, text=True)
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = None
    out[name] = {"rc": p.returncode, "stderr": p.stderr[-3000:], "doc": doc}
print(json.dumps(out))
'"""


#: About a minute a guest (a riscv64 Python under TCG): the mask-form kernel
#: on every commit, both in the full run.
LIVE = RISCV if FULL else (MASK_KERNEL,)


@pytest.mark.parametrize("series", LIVE)
def test_live(series):
    """vmemspect live in the guest, on its /proc/kcore: the report and
    verify agree with the guest's truth."""
    run = live_run(series, guest_cmd=LIVE_CMD, name="live-riscv")
    assert run["guest_cmd_rc"] == 0, run["guest_cmd_stderr"]
    out = json.loads(run["guest_cmd_output"])
    truth = run["truth"]
    rep = out["report"]
    assert rep["rc"] == 0, rep["stderr"]
    doc = rep["doc"]
    assert doc["kernel"]["release"] == truth["uname"]
    assert doc["kernel"]["form"] == FORM[series]
    assert sum(g["total"] for g in doc["groups"]) == truth["meminfo"]["HugePages_Total"] == 64
    assert sum(g["optimized"] for g in doc["groups"]) == 64
    assert doc["savings"]["saved_pages"] == 64 * truth["vmemmap_freeable_kib"]["2048"] // 4
    v = out["verify"]
    assert v["rc"] == 0, v["stderr"]
    assert v["doc"]["ok"] is True and v["doc"]["findings"] == []


# ---------------------------------------------------------------- DWARF (full run)

#: The -dbg packages are 1.0-1.2 GB each: their DWARF is checked in the full
#: run only (scripts/test.sh --full); every commit reads the kernels' BTF.
DWARF = RISCV if FULL else ()


@pytest.mark.parametrize("series", DWARF)
def test_dwarf_equals_btf(series):
    """With the kernel's DWARF vmlinux (-s, from its -dbg package) vmemspect
    gives the same report and verify as from the kernel's own BTF, and the
    model it reads from DWARF says DWARF."""
    run = real_run(series, "hvo-2m")
    vmlinux = str(testbed.fetch_kernel(series, dbg=True) / "vmlinux")
    info = ["--vmcoreinfo", run["vmcoreinfo"]["path"]]
    btf = json.loads(vmemspect("vmcore", run["elf"], *info, "--json").stdout)
    dwarf = json.loads(vmemspect("vmcore", run["elf"], *info, "-s", vmlinux, "--json").stdout)
    assert (btf["kernel"]["types"], dwarf["kernel"]["types"]) == ("btf", "dwarf")
    for doc in (btf, dwarf):
        del doc["kernel"]["types"]
    assert dwarf == btf
    v = json.loads(vmemspect("vmcore", run["elf"], *info, "-s", vmlinux, "verify",
                             "--json").stdout)
    assert v["ok"] is True and v["checked_folios"] == 64
