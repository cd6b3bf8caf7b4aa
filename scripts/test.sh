#!/usr/bin/env bash
# The test suite: installs what it needs (scripts/deps.sh), then runs the
# unit tests on synthetic kernels and the tests on real Debian 6.12 and 7.2
# kernels booted under QEMU (downloaded once into ~/.cache/vmemspect).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec python3 -m pytest -q -p no:cacheprovider tests "$@"
