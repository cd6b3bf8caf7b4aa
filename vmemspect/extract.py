"""
Extracts
--------

A small kdump-compressed vmcore holding only what vmemspect reads, to
attach to a bug report instead of the whole dump::

    $ vmemspect vmcore /var/crash/vmcore extract hvo.kdump
    $ vmemspect vmcore hvo.kdump verify        # same answer, no debug package

What goes in is found by tracing, not by a list: vmemspect's commands
(``report``, ``folios``, ``tails``, ``verify``, ``savings``, ``metrics``
and its ``--fast`` scan, ``decode`` of a few struct pages) run on a program whose only memory is a segment over the whole
physical address space that reads from the source and records each page
(:class:`PageSnapshot`). drgn translates virtual addresses through the page
tables in that memory, so the page tables every read needs are recorded as
physical reads too. The commands run once with the kernel's BTF and
kallsyms (which records the BTF blob and the kallsyms tables, so that no
debug package is needed to read the extract), and once more with the DWARF
vmlinux when the source has one, so that both ways of reading it work.

Each page is read from the source once, when first touched, and kept
compressed: the extract holds what the traced commands saw, also on a live
kernel. Pages the source lacks are left out and read as missing in the
extract too (a :class:`drgn.FaultError`); corruption is copied as it is.

Page tables are read in the kernel's own format (x86_64 4/5-level, riscv64
Sv39/48/57) by :mod:`vmemspect.mmu`: extract decodes no entry itself. On
riscv64, where drgn cannot translate kernel addresses, the traced programs
read them through vmemspect's walker, as an opened dump does.

Seen to work on Debian 6.1.192, 6.12.117 and 7.2.13 (x86_64) and 6.12.117
and 7.2.13 (riscv64) dumps of the test bed (:mod:`vmemspect.diskdump`
writes the file).
"""

import collections
import dataclasses
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import drgn
from drgn import FaultError, Program

from .btf import load_kernel_btf
from .commands import COMMANDS, Replay
from .diskdump import BLOCK_SIZE, DiskdumpInfo, compress_page, write_diskdump
from .errors import VmemspectError
from .kernel import kernel_model
from .mmu import kernel_root, kernel_tables
from .progcache import cache_get
from .target import load_debug_info, setup_kernel_va
from .vmcoreinfo import parse_vmcoreinfo

__all__ = (
    "ExtractResult",
    "PageSnapshot",
    "extract",
    "extract_doc",
    "page_classes",
    "render_extract",
)

PAGE = BLOCK_SIZE
PAGE_SHIFT = 12


class PageSnapshot:
    """
    The pages of ``source`` that programs made by :meth:`program` read.

    Each page is read from the source (physically) the first time any of
    them touches it and stored compressed as the extract will hold it
    (:func:`~vmemspect.diskdump.compress_page`); later reads are served
    from the snapshot, so every traced program sees the same bytes. Pages
    the source lacks are remembered and fault again.

    :param source: a kernel program (vmcore, live, or drgn's own).
    :param vmcoreinfo: its raw VMCOREINFO.
    """

    def __init__(self, source: Program, vmcoreinfo: bytes, level: int = 6,
                 cache_pages: int = 1024) -> None:
        self.source = source
        self.vmcoreinfo = vmcoreinfo
        self.level = level
        #: pfn -> (diskdump flags, stored bytes)
        self.pages: Dict[int, Tuple[int, bytes]] = {}
        #: pfn -> why the source could not give it
        self.missing: Dict[int, str] = {}
        self._raw: "collections.OrderedDict[int, bytes]" = collections.OrderedDict()
        self._cache_pages = cache_pages

    def page(self, pfn: int) -> bytes:
        """The 4 KiB of ``pfn`` (read from the source on first use)."""
        raw = self._raw.get(pfn)
        if raw is not None:
            self._raw.move_to_end(pfn)
            return raw
        stored = self.pages.get(pfn)
        if stored is not None:
            flags, blob = stored
            raw = _inflate(flags, blob)
        else:
            reason = self.missing.get(pfn)
            if reason is not None:
                raise FaultError(reason, pfn * PAGE)
            try:
                raw = self.source.read(pfn * PAGE, PAGE, True)
            except FaultError as e:
                self.missing[pfn] = e.message
                raise FaultError(e.message, pfn * PAGE) from None
            self.pages[pfn] = compress_page(raw, self.level)
        self._raw[pfn] = raw
        if len(self._raw) > self._cache_pages:
            self._raw.popitem(last=False)
        return raw

    def read(self, address: int, count: int, offset: int, physical: bool) -> bytes:
        """drgn memory segment read function over the physical address space."""
        out = []
        end = address + count
        a = address
        while a < end:
            pfn = a // PAGE
            n = min(end, (pfn + 1) * PAGE) - a
            try:
                page = self.page(pfn)
            except FaultError as e:
                raise FaultError(e.message, a) from None
            o = a - pfn * PAGE
            out.append(page[o:o + n])
            a += n
        return b"".join(out)

    def program(self) -> Program:
        """A new kernel program whose memory is this snapshot (drgn walks
        the page tables in it for virtual addresses; on riscv64, which
        drgn cannot walk, vmemspect's walker does, as when a dump is
        opened: :func:`vmemspect.target.setup_kernel_va`). The memory comes
        first: drgn's plugin hook (:func:`vmemspect.plugin.drgn_prog_set`)
        reads the top page table as soon as the kernel is set."""
        prog = Program(self.source.platform)
        prog.add_memory_segment(0, (1 << 64) - 1, self.read, True)
        prog.set_linux_kernel_custom(self.vmcoreinfo, False)
        setup_kernel_va(prog)
        return prog

    def stored_bytes(self) -> int:
        return sum(len(blob) for _, blob in self.pages.values())


def _inflate(flags: int, blob: bytes) -> bytes:
    import zlib

    return zlib.decompress(blob) if flags else blob


@dataclasses.dataclass
class ExtractResult:
    """What :func:`extract` wrote."""

    path: str
    #: Size of the file in bytes (apparent size; bitmap holes included).
    size: int
    #: Where those bytes went (:class:`~vmemspect.diskdump.DiskdumpLayout`).
    layout: Dict[str, int]
    #: Pages held, by what they are: "page_table", "vmemmap", "kernel".
    classes: Dict[str, int]
    #: (what was traced, pages it added, their stored bytes), in order.
    phases: List[Tuple[str, int, int]]
    #: Pages a traced read wanted that the source does not hold.
    missing: int
    #: Hugetlb folios the scan found, and the kernel's max_mapnr written.
    folios: int
    max_mapnr: int
    #: Type sources traced: "btf", and "dwarf" when the source has a vmlinux.
    types: List[str]
    #: Release of the kernel.
    release: str
    seconds: float


#: The architectures extract writes dumps of, by drgn's name for them.
_ARCHES = {drgn.Architecture.X86_64: "x86_64", drgn.Architecture.RISCV64: "riscv64"}


def _arch_of(prog: Program) -> str:
    """"x86_64" or "riscv64" (else "")."""
    return _ARCHES.get(prog.platform.arch, "") if prog.platform is not None else ""


def _run_commands(prog: Program) -> int:
    """Do every read vmemspect's commands do (:data:`vmemspect.commands.COMMANDS`,
    each one's replay). Returns the number of folios."""
    replay = Replay(prog)
    for command in COMMANDS:
        if command.replay is not None:
            command.replay(replay)
    return replay.report.scanned


def _loaded_modules(prog: Program) -> None:
    """What drgn reads when it starts on a dump with symbols (the loaded
    kernel modules), so that ``drgn -c EXTRACT -s VMLINUX`` finds them too."""
    try:
        for _ in prog.loaded_modules():
            pass
    except Exception:  # noqa: BLE001 - drgn's own walk; any failure only means fewer pages
        pass


def _utsname(source: Program, info: Dict[str, str]) -> Tuple[str, str, str, str, str, str]:
    release = info.get("OSRELEASE") or "unknown"
    fields = ["Linux", "", release, "unknown", _arch_of(source), ""]
    try:
        name = source["init_uts_ns"].name
        for i, member in enumerate(("sysname", "nodename", "release", "version", "machine",
                                    "domainname")):
            value = name.member_(member).string_().decode(errors="replace")
            if value or i in (1, 5):
                fields[i] = value
    except (KeyError, LookupError, FaultError, AttributeError):
        pass
    return tuple(fields)  # type: ignore[return-value]


def page_classes(snapshot: PageSnapshot, vmemmap: Tuple[int, int],
                 arch: Optional[str] = None) -> Dict[int, str]:
    """
    What each page of ``snapshot`` is: "page_table" (a table reached from
    the kernel's top-level page table through tables the snapshot holds),
    "vmemmap" (a frame that a leaf under the vmemmap range ``[start, end)``
    maps), else "kernel" (kernel data: the image, node data, sections...).

    The tables are read by :func:`vmemspect.mmu.kernel_tables` in the
    format of ``arch`` ("x86_64", "riscv64"; by default the source's), from
    the top table VMCOREINFO names (:func:`vmemspect.mmu.kernel_root`);
    only pages the snapshot holds are read, so classifying adds none.
    """
    held = snapshot.pages
    try:
        fmt, root, _ = kernel_root(arch or _arch_of(snapshot.source),
                                   parse_vmcoreinfo(snapshot.vmcoreinfo))
    except ValueError:
        return {pfn: "kernel" for pfn in held}
    classes: Dict[int, str] = {}
    start, end = vmemmap
    for level, pfn, va, shift in kernel_tables(
            fmt, root, lambda pfn: snapshot.page(pfn) if pfn in held else None):
        if not level:
            classes[pfn] = "page_table"
            continue
        if va + (1 << shift) <= start or va >= end:
            continue
        for k in range(1 << (shift - PAGE_SHIFT)):
            if pfn + k in held and start <= va + k * PAGE < end:
                classes.setdefault(pfn + k, "vmemmap")
    for pfn in held:
        classes.setdefault(pfn, "kernel")
    return classes


def extract(
    source: Program,
    path: str,
    progress: Optional[Callable[[str], None]] = None,
) -> ExtractResult:
    """
    Write to ``path`` a kdump-compressed vmcore of ``source`` holding only
    what vmemspect reads (see the module's documentation).

    :param source: an open kernel program with its types loaded (what
        ``vmemspect vmcore DUMP`` or ``live`` opens, or drgn's own).
    :raises VmemspectError: if the source has no VMCOREINFO or ``path``
        cannot be written.
    """
    t0 = time.monotonic()
    try:
        vmcoreinfo = source["VMCOREINFO"].to_bytes_()
    except (KeyError, LookupError):
        raise VmemspectError("the program has no VMCOREINFO, which an extract must carry",
                             "extract from a kernel dump or the running kernel")
    if not _arch_of(source):
        raise VmemspectError("extract writes x86_64 and riscv64 dumps only",
                             "give an x86_64 or riscv64 kernel")
    tmp = _open_output(path)
    try:
        result = _extract(source, vmcoreinfo, tmp, progress)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    result.path = path
    result.seconds = time.monotonic() - t0
    return result


def _extract(source: Program, vmcoreinfo: bytes, path: str,
             progress: Optional[Callable[[str], None]]) -> ExtractResult:
    say = progress or (lambda _: None)
    snapshot = PageSnapshot(source, vmcoreinfo)
    phases: List[Tuple[str, int, int]] = []

    def phase(name: str, fn: Callable[[], object]) -> object:
        before, before_bytes = len(snapshot.pages), snapshot.stored_bytes()
        say(name)
        result = fn()
        phases.append((name, len(snapshot.pages) - before, snapshot.stored_bytes() - before_bytes))
        return result

    btf = snapshot.program()
    phase("kallsyms and BTF", lambda: load_kernel_btf(btf))
    folios = phase("scan (types from BTF)", lambda: _run_commands(btf))
    types = ["btf"]
    vmlinux = _vmlinux_of(source)
    if vmlinux is not None:
        dwarf = snapshot.program()

        def dwarf_scan() -> None:
            load_debug_info(dwarf, vmlinux)
            _run_commands(dwarf)

        phase("scan (types from DWARF)", dwarf_scan)
        phase("loaded modules (drgn with symbols)", lambda: _loaded_modules(dwarf))
        types.append("dwarf")
    model = kernel_model(btf)
    try:
        max_pfn = btf["max_pfn"].value_()
    except (KeyError, LookupError, FaultError):
        max_pfn = 0
    # The machine's pfns: reads below max_mapnr of a page not held say
    # "Excluded page", above it "Out-of-bounds PFN" (both fault).
    max_mapnr = max(max_pfn, max(snapshot.pages, default=0) + 1)
    classes = page_classes(snapshot, (model.vmemmap_start,
                                      model.vmemmap_start + max_mapnr * model.sizeof_page))
    keys = parse_vmcoreinfo(vmcoreinfo)
    phys_base = int(keys.get("NUMBER(phys_base)") or "0", 0)
    info = DiskdumpInfo(max_mapnr=max_mapnr, utsname=_utsname(source, keys),
                        phys_base=phys_base, nr_cpus=_nr_cpus(source))
    say("writing")
    layout = write_diskdump(path, snapshot.pages, vmcoreinfo, info)
    return ExtractResult(
        path=path,
        size=layout.size,
        layout=dataclasses.asdict(layout),
        classes=dict(collections.Counter(classes.values())),
        phases=phases,
        missing=len(snapshot.missing),
        folios=int(folios),  # type: ignore[arg-type]
        max_mapnr=max_mapnr,
        types=types,
        release=model.release,
        seconds=0.0,
    )


def _vmlinux_of(source: Program) -> Optional[str]:
    """The DWARF vmlinux the source's types come from, if any."""
    if cache_get(source, "types") == "btf":
        return None
    try:
        path = source.main_module().debug_file_path
    except (LookupError, AttributeError):
        return None
    return path if path and os.path.isfile(path) else None


def _nr_cpus(source: Program) -> int:
    try:
        return max(1, source["__num_online_cpus"].counter.value_())
    except (KeyError, LookupError, FaultError, AttributeError):
        return 1


def _open_output(path: str) -> str:
    """Create the temporary file the extract is written to before it takes
    ``path`` (so a bad path fails at once, in one line, and an interrupted
    extract leaves nothing under ``path``); returns its name."""
    if os.path.isdir(path):
        raise VmemspectError(f"{path} is a directory", "give a file name for the extract")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise VmemspectError(f"cannot write {path} (no directory {parent})",
                             "give a path in an existing directory")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb"):
            pass
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        _remove(tmp)
        raise VmemspectError(f"cannot write {path} ({e.strerror or e})",
                             "give a writable path for the extract")
    return tmp


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def extract_doc(r: ExtractResult) -> Dict[str, object]:
    """The JSON document of ``vmemspect ... extract OUT --json``."""
    return {
        "path": r.path,
        "format": "kdump-compressed (zlib per page)",
        "size": r.size,
        "layout": r.layout,
        "release": r.release,
        "pages": sum(r.classes.values()),
        "classes": r.classes,
        "phases": [{"traced": name, "pages": n, "bytes": b} for name, n, b in r.phases],
        "missing_in_source": r.missing,
        "folios": r.folios,
        "max_mapnr": r.max_mapnr,
        "types": r.types,
        "seconds": round(r.seconds, 2),
    }


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def render_extract(doc: Dict[str, object], fmt: str = "simple") -> str:
    """The human summary of an extract."""
    classes = doc["classes"]
    lines = [
        f"wrote         {doc['path']}: {_mib(doc['size'])} ({doc['size']} bytes), "
        f"{doc['format']}",
        f"kernel        {doc['release']}; {doc['folios']} hugetlb folios; "
        f"readable with types from {' or '.join(doc['types'])}",
        f"pages         {doc['pages']} of {doc['max_mapnr']}: "
        + ", ".join(f"{classes.get(k, 0)} {k.replace('_', ' ')}"
                    for k in ("page_table", "vmemmap", "kernel")),
    ]
    for p in doc["phases"]:
        lines.append(f"  {p['traced']:<36} +{p['pages']} pages ({_mib(p['bytes'])} stored)")
    if doc["missing_in_source"]:
        lines.append(f"missing       {doc['missing_in_source']} page(s) the commands read are "
                     "not in the source (left out: they read as missing in the extract too)")
    lines.append(f"check         vmemspect vmcore {doc['path']} verify")
    return "\n".join(lines)
