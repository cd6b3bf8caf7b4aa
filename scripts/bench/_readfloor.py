"""The read floor of any scan that walks the hstate lists: each folio's head
vmemmap page read once, whole, the next link taken from those bytes, nothing
else (no check, no record). Shared by bench-jobs.py and bench-sweep.py
(through vmemspect's hstate records) and by baseline-drgn-scan.py's
``--floor`` (through drgn's own ``for_each_hstate``: the baseline imports
nothing of vmemspect, so this module's top imports nothing of it either).
Not a benchmark itself.
"""


def walk_heads(prog, heads, page_size: int) -> int:
    """Follow ``lru.next`` from each list head in *heads* (addresses),
    reading each folio's head vmemmap page once, whole; the number of
    folios read."""
    mask = page_size - 1
    read = prog.read
    n = 0
    for head in heads:
        pos = prog.read_u64(head)
        while pos != head:
            data = read(pos & ~mask, page_size)
            off = pos & mask
            pos = int.from_bytes(data[off:off + 8], "little")
            n += 1
    return n


def read_floor(prog) -> int:
    """The read floor through vmemspect's hstate records: every hstate's
    per-node free lists and its active list; the number of folios read."""
    from vmemspect.hugetlb import for_each_hstate_record
    from vmemspect.kernel import kernel_model

    heads = []
    for h in for_each_hstate_record(prog):
        heads += [h.address + h.freelists_offset + 16 * nid for nid in sorted(h.per_node)]
        heads.append(h.address + h.activelist_offset)
    return walk_heads(prog, heads, kernel_model(prog).page_size)
