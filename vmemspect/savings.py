"""
What-if savings
---------------

For the hugetlb folios a kernel holds, the vmemmap each HVO scheme would
take, per hstate and in total, beside what the page tables show now:

- ``none``: no HVO, every vmemmap page of every folio;
- ``two_page``: Linux 5.14-5.17, two vmemmap pages kept per folio (the head
  page and the first tail page);
- ``pointer``: Linux 5.18-7.0, one page kept per folio, the tail pages
  mapped onto it (fake heads);
- ``mask``: Linux 7.1+, one page kept per folio plus one shared frame per
  node, zone and order (``zone->vmemmap_tails[]``);
- ``measured``: the distinct frames behind these folios' vmemmap now, a
  shared frame counted once.

Only folios HVO could optimize are counted (:mod:`vmemspect.optimizable`):
the never-optimizable ones take the same vmemmap in every scheme and are
counted apart. Folios whose vmemmap could not be read are left out.
"""

import collections
import dataclasses
from typing import Dict, Iterable, List, Optional, Set, Tuple

from .hvo import FolioVmemmap
from .kernel import KernelModel
from .optimizable import is_optimizable

__all__ = (
    "SCHEMES",
    "WhatIf",
    "WhatIfRow",
    "WhatIfTally",
    "kernel_scheme",
)

#: The schemes, oldest first.
SCHEMES = ("none", "two_page", "pointer", "mask")

#: 1 TiB, the unit of the series' "2 GB per 1 TB" figure.
TIB = 1 << 40


def kernel_scheme(model: KernelModel) -> Optional[str]:
    """The scheme this kernel uses: "mask" (7.1+), "pointer" (5.18-7.0),
    None without HVO. (A 5.14-5.17 kernel, two pages, has no
    hugetlb_optimize_vmemmap_key; vmemspect has not been run on one.)"""
    if not model.hvo_built:
        return None
    return "mask" if model.form == "mask" else "pointer"


@dataclasses.dataclass(frozen=True)
class WhatIfRow:
    """One hstate's (or the total's) what-if figures, in vmemmap pages."""

    hstate: str
    #: None in the total row.
    order: Optional[int]
    #: Vmemmap pages per folio without HVO (8 for 2 MiB, 4096 for 1 GiB).
    vmemmap_pages_per_folio: Optional[int]
    #: Optimizable folios (optimized or not): those the schemes are applied to.
    folios: int
    #: Of these, the folios whose vmemmap is remapped now.
    optimized: int
    #: Folios HVO can never optimize (not in the figures below), and their vmemmap.
    not_optimizable: int
    not_optimizable_pages: int
    #: Folios whose vmemmap could not be read (in no figure).
    unknown: int
    #: Bytes of memory the optimizable folios hold.
    folio_bytes: int
    #: Vmemmap pages under each scheme (SCHEMES), and measured now.
    pages: Dict[str, int]
    #: Mask form: the shared frames (node, zone, order) in ``pages["mask"]``.
    shared_frames: int

    def saved_pages(self, scheme: str) -> int:
        """Vmemmap pages ``scheme`` saves against no HVO (net of shared frames)."""
        return self.pages["none"] - self.pages[scheme]

    def per_tib(self, scheme: str, than: str = "two_page") -> Optional[int]:
        """Bytes ``scheme`` saves beyond ``than``, scaled linearly from these
        folios to 1 TiB of them (None without folios)."""
        if not self.folio_bytes:
            return None
        diff = (self.pages[than] - self.pages[scheme]) * self.page_size
        return diff * TIB // self.folio_bytes

    page_size: int = 4096


@dataclasses.dataclass(frozen=True)
class WhatIf:
    """The what-if figures of a scan."""

    #: The scheme this kernel uses (kernel_scheme()).
    scheme: Optional[str]
    page_size: int
    rows: List[WhatIfRow]
    total: WhatIfRow
    #: Reason id -> folios not optimized for it (optimizable or not).
    reasons: Dict[str, int]


class WhatIfTally:
    """
    Gathers the what-if figures folio by folio during a scan, so that the
    scan need not keep its folios.

    :param shared_pfns: the frames of every ``vmemmap_tails[]`` slot (mask
        form), counted once wherever folios map them.
    """

    def __init__(self, model: KernelModel, shared_pfns: Iterable[int] = ()) -> None:
        self.model = model
        self.shared_pfns = frozenset(p for p in shared_pfns if p is not None)
        self.order: Dict[str, int] = {}
        self.folios: Dict[str, int] = collections.Counter()
        self.optimized: Dict[str, int] = collections.Counter()
        self.not_optimizable: Dict[str, int] = collections.Counter()
        self.unknown: Dict[str, int] = collections.Counter()
        self.own_frames: Dict[str, int] = collections.Counter()
        self.shared_used: Dict[str, Set[int]] = collections.defaultdict(set)
        self.groups: Dict[str, Set[Tuple[int, int]]] = collections.defaultdict(set)
        self.reasons: Dict[str, int] = collections.Counter()

    def add(self, fv: FolioVmemmap, reason: Optional[str], n: int = 1) -> None:
        """Count one folio (``n`` folios like it); ``reason`` is
        :func:`not_optimized_reason`'s."""
        f = fv.folio
        self.order.setdefault(f.hstate, f.order)
        if reason is not None:
            self.reasons[reason] += n
        if fv.unknown is not None:
            self.unknown[f.hstate] += n
            return
        if not is_optimizable(reason):
            self.not_optimizable[f.hstate] += n
            return
        self.folios[f.hstate] += n
        self.groups[f.hstate].add((f.nid, f.zone_idx))
        shared = {t.pfn for t in fv.tails if t.pfn in self.shared_pfns}
        self.shared_used[f.hstate] |= shared
        self.own_frames[f.hstate] += (fv.distinct_frames - len(shared)) * n
        if fv.remapped:
            self.optimized[f.hstate] += n

    def _row(self, hstate: str) -> WhatIfRow:
        model = self.model
        order = self.order[hstate]
        n = model.vmemmap_pages(order)
        folios = self.folios[hstate]
        groups = len(self.groups[hstate])
        return WhatIfRow(
            hstate=hstate,
            order=order,
            vmemmap_pages_per_folio=n,
            folios=folios,
            optimized=self.optimized[hstate],
            not_optimizable=self.not_optimizable[hstate],
            not_optimizable_pages=n * self.not_optimizable[hstate],
            unknown=self.unknown[hstate],
            folio_bytes=folios << (order + model.page_shift),
            pages={
                "none": n * folios,
                "two_page": min(2, n) * folios,
                "pointer": folios,
                "mask": folios + groups,
                "measured": self.own_frames[hstate] + len(self.shared_used[hstate]),
            },
            shared_frames=groups,
            page_size=model.page_size,
        )

    def result(self, hstate_order: Iterable[str] = ()) -> WhatIf:
        """The figures, per hstate (in ``hstate_order``, then the rest) and in total."""
        names = [h for h in hstate_order if h in self.order]
        names += sorted(h for h in self.order if h not in names)
        rows = [self._row(h) for h in names]
        keys = ("none", "two_page", "pointer", "mask", "measured")
        total = WhatIfRow(
            hstate="total",
            order=None,
            vmemmap_pages_per_folio=None,
            folios=sum(r.folios for r in rows),
            optimized=sum(r.optimized for r in rows),
            not_optimizable=sum(r.not_optimizable for r in rows),
            not_optimizable_pages=sum(r.not_optimizable_pages for r in rows),
            unknown=sum(r.unknown for r in rows),
            folio_bytes=sum(r.folio_bytes for r in rows),
            pages={k: sum(r.pages[k] for r in rows) for k in keys},
            shared_frames=sum(r.shared_frames for r in rows),
            page_size=self.model.page_size,
        )
        return WhatIf(kernel_scheme(self.model), self.model.page_size, rows, total,
                      dict(self.reasons))
