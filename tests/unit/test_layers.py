"""
The layering vmemspect/__init__.py states: every module of the package is
listed there, and imports only modules listed above it.
"""

import re
from pathlib import Path

import vmemspect

PACKAGE = Path(vmemspect.__file__).resolve().parent


def _layers():
    return re.findall(r"^- :mod:`vmemspect\.(\w+)`", vmemspect.__doc__, re.M)


def _imports(module: str):
    text = (PACKAGE / f"{module}.py").read_text()
    found = set(re.findall(r"^\s*from \.(\w+) import", text, re.M))
    found |= {n for n in re.findall(r"^\s*from \. import (\w+)", text, re.M) if n != "__version__"}
    return found


def test_every_module_is_listed():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert set(_layers()) == modules
    assert len(_layers()) == len(set(_layers()))


def test_each_module_imports_only_layers_above_it():
    layers = _layers()
    for i, module in enumerate(layers):
        above = set(layers[:i])
        assert _imports(module) <= above, (module, sorted(_imports(module) - above))


def test_the_kernel_model_does_not_open_programs():
    """kernel.py reads facts from an open program; it needs none of the
    opening stack (target, btf) for them."""
    assert not _imports("kernel") & {"target", "btf"}
