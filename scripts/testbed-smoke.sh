#!/usr/bin/env bash
# Run one test-bed scenario and print a summary; then, if drgn is
# importable, open the dump(s) with drgn and compare with the guest's truth.
#
# usage: scripts/testbed-smoke.sh [KERNEL [SCENARIO [testbed.py run options...]]]
#   e.g. scripts/testbed-smoke.sh 6.12 mixed
#        scripts/testbed-smoke.sh 7.2 hvo-2m --elf
#        scripts/testbed-smoke.sh 7.2 live --guest-cmd 'python3 -c "import drgn; print(drgn.__version__)"'
# Output goes under ${VMEMSPECT_CACHE:-~/.cache/vmemspect}/runs/ unless --out is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kernel=${1:-7.2}; scenario=${2:-hvo-2m}
shift $(( $# < 2 ? $# : 2 ))
runjson=$(python3 "$here/testbed.py" run --kernel "$kernel" --scenario "$scenario" --summary "$@")
echo "run.json: $runjson"
if python3 -c 'import drgn' 2>/dev/null; then
  python3 "$here/drgn-check.py" "$runjson"
else
  echo "(drgn not importable: dump not checked)"
fi
