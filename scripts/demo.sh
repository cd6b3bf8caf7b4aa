#!/usr/bin/env bash
# The main job, on any machine, in seconds: install vmemspect (into .venv;
# no root, no QEMU, no debug package) and run it on fixtures/: extracts of
# real Debian kernels booted under QEMU with HVO on a two-node guest (7.2,
# mask form, then 6.12, pointer form), each a few MB that
# `vmemspect vmcore DUMP extract OUT` cut from the guest's whole dump. The
# kernel's types come from the BTF inside each file.
#
#   scripts/demo.sh          the fixtures (seconds)
#   scripts/demo.sh --boot   boot fresh kernels under QEMU instead, dump them
#                            and inspect the dumps (installs QEMU & co. as root;
#                            kernels are downloaded once into ~/.cache/vmemspect)
#
# On a real host use `vmemspect live` or `vmemspect vmcore DUMP` directly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != --boot ]; then
  scripts/deps.sh --python-only
  for k in 7.2 6.12; do
    fx=fixtures/$k-numa.kdump
    .venv/bin/python - "$fx" <<'PY' >&2
import json, sys
meta = json.load(open(sys.argv[1].replace(".kdump", ".json")))
print(f"== Debian {meta['release']} ({meta['form']} form), {meta['scenario']} guest "
      f"({meta['cmdline'].split('hugetlb_free_vmemmap=on ')[-1]}): {sys.argv[1]}, "
      f"{meta['extract']['size'] / 1e6:.1f} MB extracted from its "
      f"{meta['source_dump']['bytes'] / 1e6:.0f} MB dump; types from its BTF")
PY
    echo "\$ vmemspect vmcore $fx"
    .venv/bin/vmemspect vmcore "$fx"
    echo
    if [ "$k" = 7.2 ]; then
      echo "\$ vmemspect vmcore $fx folios --node 1 --hstate 1G"
      .venv/bin/vmemspect vmcore "$fx" folios --node 1 --hstate 1G
      echo
    fi
  done
  echo "== fresh kernels under QEMU instead: scripts/demo.sh --boot" >&2
  exit 0
fi
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
