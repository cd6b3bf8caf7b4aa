"""What every part of the test bed shares: where things are, the cache, the
error type, and writing files that other processes may be reading (the cache
is shared between concurrent runs and workers)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SCRIPTS = PACKAGE.parent
GUEST = SCRIPTS / "guest"


class TestbedError(RuntimeError):
    """A run failed; the message says why and ends with the console's tail."""


def cache_dir() -> Path:
    return Path(os.environ.get("VMEMSPECT_CACHE") or Path.home() / ".cache" / "vmemspect")


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
