"""``python3 -m vmemspect``: the command line."""

from .cli import entry_point

entry_point()
