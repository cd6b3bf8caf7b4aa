#!/usr/bin/env bash
# Run test-bed scenarios and print a summary of each; if drgn is importable,
# open each dump with drgn (scripts/drgn-check.py) and compare with the
# guest's truth.  Ends with a table: kernel, scenario, boot/dump times, sizes.
#
# usage: scripts/testbed-smoke.sh [KERNEL|all [SCENARIO|all [testbed run options...]]]
#   scripts/testbed-smoke.sh                  # 7.2 hvo-2m
#   scripts/testbed-smoke.sh 6.12 mixed
#   scripts/testbed-smoke.sh 7.2 hvo-2m --elf
#   scripts/testbed-smoke.sh 7.2 live --guest-cmd 'python3 -c "import drgn; print(drgn.__version__)"'
#   scripts/testbed-smoke.sh all hvo-2m       # every kernel of the registry
#   scripts/testbed-smoke.sh "6.12 7.2" all   # every scenario on two kernels
# Output dirs go under ${VMEMSPECT_CACHE:-~/.cache/vmemspect}/runs/ (or
# --out DIR, single runs only).  Exit status: 1 if any run or check failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kernels=${1:-7.2}; scenarios=${2:-hvo-2m}
shift $(( $# < 2 ? $# : 2 ))
[ "$kernels" = all ] && kernels=$(python3 "$here/testbed" kernels --ids)
[ "$scenarios" = all ] && scenarios=$(python3 "$here/testbed" list --names)
have_drgn=0
python3 -c 'import drgn' 2>/dev/null && have_drgn=1
# In "live", without --guest-cmd: drgn on /proc/kcore in the guest (the
# default guest command runs vmemspect itself).
live_cmd='python3 -c "import drgn; p = drgn.Program(); p.set_kernel(); p.load_debug_info([\"$VMEMSPECT_VMLINUX\"]); print(p[\"init_uts_ns\"].name.release.string_().decode(), p[\"hstates\"][0].nr_huge_pages.value_())"'
status=0
table=()
for k in $kernels; do
  for s in $scenarios; do
    extra=()
    if [ "$s" = live ] && [[ " $* " != *" --guest-cmd "* ]]; then extra=(--guest-cmd "$live_cmd"); fi
    echo "=== $k $s"
    if ! runjson=$(python3 "$here/testbed" run --kernel "$k" --scenario "$s" --summary "${extra[@]}" "$@"); then
      status=1; table+=("$k $s RUN-FAILED"); continue
    fi
    echo "run.json: $runjson"
    check=unchecked
    has_vmlinux=$(python3 -c 'import json, sys; print(int(bool(json.load(open(sys.argv[1]))["vmlinux"])))' "$runjson")
    if [ $have_drgn = 1 ] && [ "$has_vmlinux" = 0 ]; then
      check=unchecked-no-vmlinux
    elif [ $have_drgn = 1 ]; then
      if python3 "$here/drgn-check.py" "$runjson"; then check=drgn-ok; else check=DRGN-MISMATCH; status=1; fi
    fi
    table+=("$(python3 - "$runjson" "$check" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); t = r["timings"]; z = r["sizes"]
elf = f" elf {t['elf_dump_s']}s/{z['elf'] / 1e9:.2f}GB" if r.get("elf") else ""
cmd = f" cmd {t['guest_cmd_s']}s rc={r['guest_cmd_rc']}" if r.get("guest_cmd") else ""
print(f"{r['series']} {r['scenario']} boot {t['boot_s']}s kdump {t['dump_s']}s/{z['kdump'] / 1e6:.0f}MB"
      f"{elf}{cmd} total {t['total_s']}s {sys.argv[2]}")
PY
)")
  done
done
echo "=== summary"
printf '%s\n' "${table[@]}" | column -t
exit $status
