#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/deps.sh, into .venv), then
# runs the unit tests on synthetic kernels and the tests on real Debian
# kernels booted under QEMU (downloaded once into ~/.cache/vmemspect).
#
#   scripts/test.sh            what CI runs on every commit (docs/testbed.md)
#   scripts/test.sh --full     the full kernel matrix: every kernel in every
#                              scenario, longer fuzzing
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --full ]; then
  export VMEMSPECT_FULL=1
  shift
fi
scripts/deps.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
