#!/usr/bin/env python3
"""Write an extract (``vmemspect ... extract``) whose pages are stored
uncompressed: a stand-in for an uncompressed source (``/proc/kcore``, an
ELF dump) with the folios of a large dump, for measuring vmemspect's own
per-folio cost without page inflation (docs/performance.md, "Live cost").

usage: python3 scripts/extract-raw.py DUMP VMLINUX OUT
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vmemspect import extract as ex  # noqa: E402
from vmemspect.diskdump import compress_page  # noqa: E402
from vmemspect.target import open_vmcore  # noqa: E402


def raw_page(data: bytes, level: int = 6):
    flags, stored = compress_page(data, 0)  # level 0: never smaller, stored raw
    assert flags == 0
    return flags, stored


def main() -> int:
    dump, vmlinux, out = sys.argv[1:4]
    ex.compress_page = raw_page
    r = ex.extract(open_vmcore(dump, vmlinux), out, progress=lambda w: print(w, file=sys.stderr))
    print(f"{out}: {r.size} bytes, {r.folios} folios, {r.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
