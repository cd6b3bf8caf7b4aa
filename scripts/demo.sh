#!/usr/bin/env bash
# The main job, on any machine with no HVO host at hand: install vmemspect and
# its test bed, boot a real Debian 7.2 kernel (mask form) on a two-node guest
# with HVO under QEMU, dump it, and run vmemspect on the dump; then the same
# on Debian 6.12 (pointer form). Kernels are downloaded once into
# ~/.cache/vmemspect. On a real host use `vmemspect live` or
# `vmemspect vmcore DUMP` directly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cache=${VMEMSPECT_CACHE:-$HOME/.cache/vmemspect}
for k in 7.2 6.12; do
  out=$cache/demo/$k-numa
  echo "== booting Debian $k on a two-node guest with HVO (QEMU TCG)..." >&2
  if ! .venv/bin/python scripts/testbed run --kernel "$k" --scenario numa --out "$out" >/dev/null; then
    # Say it loudly: a boot failure is a bug of the test bed (see docs/testbed.md).
    echo "== WARNING: the $k guest failed to boot (log: $out/console.log); booting it once more" >&2
    .venv/bin/python scripts/testbed run --kernel "$k" --scenario numa --out "$out" >/dev/null
  fi
  vmlinux=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['vmlinux'])" "$out/run.json")
  echo "\$ vmemspect vmcore $out/vmcore.kdump -s $vmlinux"
  .venv/bin/vmemspect vmcore "$out/vmcore.kdump" -s "$vmlinux"
  echo
  echo "\$ vmemspect vmcore $out/vmcore.kdump -s $vmlinux folios --node 1 --hstate 1G"
  .venv/bin/vmemspect vmcore "$out/vmcore.kdump" -s "$vmlinux" folios --node 1 --hstate 1G
  echo
done
