"""
Installing the way users must: `python -m build` makes a wheel and an
sdist; the wheel installed into a fresh virtual environment of Debian's own
python3 (externally managed: PEP 668) gives a working `vmemspect` command
and registers the drgn plugin (`%vmemspect`). (scripts/deps.sh itself
installs this checkout into .venv with that python3: CI runs it on a fresh
clone.)
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, real_run

DEBIAN_PYTHON = "/usr/bin/python3"


def sh(*cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "vmemspect"
    # Build from a copy of the tracked files: nothing of this checkout's
    # caches or venv goes into the sdist.
    files = sh("git", "-C", str(ROOT), "ls-files").split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    sh(sys.executable, "-m", "build", "--outdir", str(out), str(src))
    wheels = list(out.glob("vmemspect-*.whl"))
    sdists = list(out.glob("vmemspect-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return wheels[0], sdists[0]


def test_debian_python_is_externally_managed():
    """What makes the venv necessary (Debian 12+, Ubuntu 23.04+)."""
    if not os.path.exists(DEBIAN_PYTHON):
        pytest.skip("no Debian python3 on this machine")  # CI's machine has it
    stdlib = sh(DEBIAN_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))")
    assert (Path(stdlib.strip()) / "EXTERNALLY-MANAGED").exists()


def test_wheel_in_a_fresh_venv(built, tmp_path):
    wheel, sdist = built
    # vmemspect only: the test bed (scripts/testbed) is a package of its own.
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"vmemspect"}, tops
    python = DEBIAN_PYTHON if os.path.exists(DEBIAN_PYTHON) else sys.executable
    venv = tmp_path / "venv"
    sh(python, "-m", "venv", str(venv))
    sh(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel))
    assert sh(str(venv / "bin" / "vmemspect"), "--version").startswith("vmemspect, version")
    # The drgn plugin is registered, and drgn's command table has %vmemspect.
    out = sh(str(venv / "bin" / "python"), "-c",
             "from importlib.metadata import entry_points\n"
             "print([e.value for e in entry_points(group='drgn.plugins')])\n"
             "import vmemspect.plugin\n"
             "from drgn.commands import DEFAULT_COMMAND_NAMESPACE as ns\n"
             "print(type(ns.lookup(None, 'vmemspect')).__name__)", cwd=tmp_path)
    assert "'vmemspect.plugin'" in out.splitlines()[0]
    assert out.splitlines()[1] == "_CustomCommand"  # lookup raises if it is not there
    # The installed command on a real dump, from outside the checkout.
    run = real_run("7.2", "hvo-2m")
    p = subprocess.run([str(venv / "bin" / "vmemspect"), "vmcore", run["kdump"], "-s",
                        run["vmlinux"], "verify", "--json"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["checked_folios"] == len(run["truth"]["hugetlb_folios"])
    # The sdist has the package and its docs' sources.
    names = sh("tar", "tzf", str(sdist))
    assert "vmemspect/cli.py" in names and "pyproject.toml" in names
