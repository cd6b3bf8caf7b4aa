#!/usr/bin/env python3
"""Write an extract (``vmemspect ... extract``) of a dump with its pages
stored uncompressed, or compressed by lzo or zstd instead of zlib: the
folios of a large dump under each of makedumpfile's compressions (and none:
a stand-in for ``/proc/kcore`` or an ELF dump), to measure the read floor
and vmemspect's own per-folio cost on each (docs/performance.md). Not used
by the tests. lzo needs liblzo2 (ctypes), zstd the ``zstandard`` module.

usage: .venv/bin/python scripts/bench/extract-raw.py DUMP VMLINUX OUT [raw|lzo|zstd]

Fills: docs/performance.md, "Live cost (issue 13)" and "Other compressions
(issue 13)".
"""
import ctypes
import ctypes.util
import sys

from vmemspect import diskdump
from vmemspect import extract as ex
from vmemspect.target import open_vmcore

# makedumpfile's page descriptor flags (diskdump_mod.h).
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_ZSTD = 0x20


def raw(data: bytes, level: int = 6):
    return 0, bytes(data)


def lzo_compressor():
    lib = ctypes.CDLL(ctypes.util.find_library("lzo2") or "liblzo2.so.2")
    work = ctypes.create_string_buffer(1 << 20)  # more than LZO1X_1_MEM_COMPRESS

    def inflate(flags: int, blob: bytes) -> bytes:
        if not flags:
            return blob
        out = ctypes.create_string_buffer(4096)
        n = ctypes.c_size_t(4096)
        rc = lib.lzo1x_decompress_safe(blob, ctypes.c_size_t(len(blob)), out, ctypes.byref(n),
                                       None)
        assert rc == 0 and n.value == 4096, rc
        return out.raw

    def lzo(data: bytes, level: int = 6):
        out = ctypes.create_string_buffer(len(data) + len(data) // 16 + 64 + 3)
        n = ctypes.c_size_t(0)
        rc = lib.lzo1x_1_compress(data, ctypes.c_size_t(len(data)), out, ctypes.byref(n), work)
        assert rc == 0, rc
        if n.value < len(data):  # as makedumpfile: stored raw when not smaller
            return DUMP_DH_COMPRESSED_LZO, out.raw[:n.value]
        return 0, bytes(data)
    return lzo, inflate


def zstd_compressor():
    import zstandard
    cctx = zstandard.ZstdCompressor(level=1)  # makedumpfile's ZSTD_CLEVEL_DEFAULT is 1
    dctx = zstandard.ZstdDecompressor()

    def inflate(flags: int, blob: bytes) -> bytes:
        return dctx.decompress(blob, max_output_size=4096) if flags else blob

    def zstd(data: bytes, level: int = 6):
        packed = cctx.compress(data)
        if len(packed) < len(data):
            return DUMP_DH_COMPRESSED_ZSTD, packed
        return 0, bytes(data)
    return zstd, inflate


def main() -> int:
    dump, vmlinux, out = sys.argv[1:4]
    kind = sys.argv[4] if len(sys.argv) > 4 else "raw"
    # The snapshot serves later reads from the pages as stored: both ways.
    ex.compress_page, ex._inflate = {"raw": lambda: (raw, lambda flags, blob: blob),
                                     "lzo": lzo_compressor, "zstd": zstd_compressor}[kind]()
    if kind != "raw":  # the header's status names the compression too
        diskdump.DUMP_DH_COMPRESSED_ZLIB = {"lzo": DUMP_DH_COMPRESSED_LZO,
                                            "zstd": DUMP_DH_COMPRESSED_ZSTD}[kind]
    r = ex.extract(open_vmcore(dump, vmlinux), out, progress=lambda w: print(w, file=sys.stderr))
    print(f"{out}: {r.size} bytes, {r.folios} folios, {r.seconds:.1f} s, pages {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
