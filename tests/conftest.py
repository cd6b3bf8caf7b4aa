"""Make the package of this checkout (not an installed one) the one imported."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
for path in (TESTS, ROOT):
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
