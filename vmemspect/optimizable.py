"""
Optimizability
--------------

Why a hugetlb folio's vmemmap is not optimized, as far as the kernel's
memory says. Not optimizable is not the same as not optimized:

- **never optimizable**: a folio whose struct pages live inside the
  hot-plugged memory block they describe (``memory_hotplug.memmap_on_memory=1``:
  the block's vmemmap sits at its start, PMD-mapped, and its frames carry
  ``PageVmemmapSelfHosted``). HVO refuses such a folio (Linux 6.1-7.2:
  ``vmemmap_should_optimize_folio()``, later the vmemmap walk, check
  ``PageVmemmapSelfHosted`` of the frame behind the folio's first vmemmap
  page), however often it is tried. Also an order whose vmemmap is a single
  page (nothing to free).
- **optimizable, not optimized**: HVO is not built in; it is off now
  (``vm.hugetlb_optimize_vmemmap=0``, or ``hugetlb_free_vmemmap=off`` at boot
  and never switched on); it is on now, so the folio was allocated while the
  sysctl was off or optimizing it failed (the kernel keeps no record of
  which); or the folio carries ``HPG_vmemmap_optimized`` without its vmemmap
  being remapped (a finding, ``flag-vs-mapping``).
"""

import dataclasses
import re
from typing import Dict, Optional, Tuple

from drgn import FaultError, Program

from .hugetlb import hvo_enabled
from .hvo import FolioVmemmap, vmemmap_savings
from .kernel import kernel_model

__all__ = (
    "HvoContext",
    "REASONS",
    "hvo_context",
    "is_optimizable",
    "not_optimized_reason",
)

#: Reason ids: (optimizable, what it means). Never optimizable first.
REASONS: Dict[str, Tuple[bool, str]] = {
    "self-hosted": (False, "its vmemmap lives inside its own hot-plugged memory block "
                           "(memmap_on_memory: PageVmemmapSelfHosted): HVO never remaps it"),
    "order": (False, "its vmemmap is one page: nothing to free"),
    "hvo-not-built": (True, "HVO is not built in (CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP=n)"),
    "hvo-off-at-boot": (True, "HVO is off: hugetlb_free_vmemmap=off at boot, and "
                              "vm.hugetlb_optimize_vmemmap is 0 now"),
    "hvo-off": (True, "HVO is off now (vm.hugetlb_optimize_vmemmap=0): the folio was "
                      "allocated while it was off"),
    "not-applied": (True, "HVO is on now: the folio was allocated while "
                          "vm.hugetlb_optimize_vmemmap was 0, or optimizing it failed "
                          "(the kernel keeps no record of which)"),
    "flag-without-remap": (True, "HPG_vmemmap_optimized is set but the vmemmap is not "
                                 "remapped (a finding: flag-vs-mapping)"),
    "unknown": (True, "its vmemmap could not be read"),
}

_BOOT_OPTION = re.compile(rb"(?:^|\s)hugetlb_free_vmemmap=(\S*)")


@dataclasses.dataclass(frozen=True)
class HvoContext:
    """What decides, kernel-wide, whether HVO optimizes a new folio."""

    hvo_built: bool
    #: vm.hugetlb_optimize_vmemmap now (vmemmap_optimize_enabled), None if not built.
    hvo_enabled: Optional[bool]
    #: hugetlb_free_vmemmap= on the kernel command line: True (on), False
    #: (off), None (not given: the config's default).
    boot_option: Optional[bool]
    #: Bit of PG_vmemmap_self_hosted in page flags, None without memory
    #: hotplug (CONFIG_MEMORY_HOTPLUG=n: no vmemmap is self-hosted).
    self_hosted_bit: Optional[int]


def _boot_option(prog: Program) -> Optional[bool]:
    """The last ``hugetlb_free_vmemmap=`` of the kernel command line
    (``saved_command_line``), as kstrtobool() reads it; None if not given."""
    try:
        cmdline = prog["saved_command_line"].string_()
    except (KeyError, LookupError, FaultError):
        return None
    values = _BOOT_OPTION.findall(cmdline)
    if not values:
        return None
    v = values[-1].lower()
    if v in (b"on", b"y", b"1", b"yes", b"true"):
        return True
    if v in (b"off", b"n", b"0", b"no", b"false"):
        return False
    return None


def hvo_context(prog: Program) -> HvoContext:
    """
    The kernel-wide facts :func:`not_optimized_reason` needs, read once per
    scan (not cached: on a live kernel the sysctl changes).

    Seen on Debian 6.1, 6.12 and 7.2 (``PG_vmemmap_self_hosted`` = 10 on all
    three, an alias of ``PG_owner_priv_1``).
    """
    model = kernel_model(prog)
    try:
        bit: Optional[int] = prog.constant("PG_vmemmap_self_hosted").value_()
    except LookupError:
        # CONFIG_MEMORY_HOTPLUG=n.
        bit = None
    return HvoContext(
        hvo_built=model.hvo_built,
        hvo_enabled=hvo_enabled(prog),
        boot_option=_boot_option(prog),
        self_hosted_bit=bit,
    )


def _self_hosted(prog: Program, ctx: HvoContext, fv: FolioVmemmap,
                 cache: Dict[int, bytes]) -> bool:
    """The frame behind the folio's first vmemmap page has
    PageVmemmapSelfHosted, as the kernel tests before optimizing. ``cache``
    keeps the vmemmap page last read (64 frames' struct pages: the frames of
    eight 2 MiB folios' vmemmap)."""
    if ctx.self_hosted_bit is None or fv.head is None or fv.head.pfn is None:
        return False
    model = kernel_model(prog)
    address = model.page_address(fv.head.pfn)
    page = address & ~(model.page_size - 1)
    data = cache.get(page)
    if data is None:
        try:
            data = prog.read(page, model.page_size)
        except FaultError:
            return False
        cache.clear()
        cache[page] = data
    offset = address - page + model.off_flags
    flags = int.from_bytes(data[offset:offset + 8], "little")
    return bool(flags & (1 << ctx.self_hosted_bit))


def not_optimized_reason(prog: Program, ctx: HvoContext, fv: FolioVmemmap,
                         cache: Optional[Dict[int, bytes]] = None) -> Optional[str]:
    """
    Why ``fv``'s vmemmap is not remapped (a key of :data:`REASONS`), or None
    if it is.

    >>> not_optimized_reason(prog, hvo_context(prog), fv)
    'self-hosted'

    :param cache: kept by the caller across folios of one scan.
    """
    if fv.remapped:
        return None
    if fv.unknown is not None:
        return "unknown"
    if vmemmap_savings(kernel_model(prog), fv.folio.order) == 0:
        return "order"
    if _self_hosted(prog, ctx, fv, {} if cache is None else cache):
        return "self-hosted"
    if fv.folio.optimized:
        return "flag-without-remap"
    if not ctx.hvo_built:
        return "hvo-not-built"
    if not ctx.hvo_enabled:
        return "hvo-off-at-boot" if ctx.boot_option is False else "hvo-off"
    return "not-applied"


def is_optimizable(reason: Optional[str]) -> bool:
    """A folio with this reason (None: optimized) could be optimized."""
    return reason is None or REASONS[reason][0]
