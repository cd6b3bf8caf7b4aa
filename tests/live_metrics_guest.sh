# Runs inside the test bed's live guest (as the guest's root, chrooted in the
# host's root over virtiofs, in this checkout) for tests/test_metrics_live.py.
# Each step prints "@step NAME rc=N"; textfiles go to $OUT (the guest's /tmp
# is the host's: a directory of this run).
set -u
OUT=$(mktemp -d /tmp/vmemspect-live-metrics.XXXXXX)
echo "@out $OUT"
V="python3 -m vmemspect live"
step() { name=$1; shift; "$@" > "$OUT/$name.stdout" 2> "$OUT/$name.stderr"; echo "@step $name rc=$?"; }
# As root with every capability, DWARF types (-s): every folio, and --fast.
step dwarf $V -s "$VMEMSPECT_VMLINUX" metrics --textfile "$OUT/dwarf.prom"
step fast $V -s "$VMEMSPECT_VMLINUX" metrics --fast --textfile "$OUT/fast.prom"
# The capabilities the systemd unit keeps (contrib/systemd): CAP_SYS_RAWIO
# for /proc/kcore, CAP_SYSLOG for real addresses in /proc/kallsyms (BTF).
only() { caps=$1; shift; setpriv --bounding-set=-all$caps --inh-caps=-all "$@"; }
step caps_rawio_dwarf only ,+sys_rawio $V -s "$VMEMSPECT_VMLINUX" metrics --fast --textfile "$OUT/caps_rawio_dwarf.prom"
step caps_rawio_btf only ,+sys_rawio $V metrics --textfile "$OUT/caps_rawio_btf.prom"
# BTF types with the unit's capabilities, and what drgn's live mode opens
# (files only).
step caps_unit_btf strace -f -qq -e trace=open,openat -e status=successful -o "$OUT/strace.txt" \
	setpriv --bounding-set=-all,+sys_rawio,+syslog --inh-caps=-all $V metrics --textfile "$OUT/caps_unit_btf.prom"
step caps_none only "" $V -s "$VMEMSPECT_VMLINUX" metrics --textfile "$OUT/caps_none.prom"
grep -o '"[^"]*"' "$OUT/strace.txt" | tr -d '"' \
	| grep -E '^(/proc|/sys|/dev|/boot|/usr/lib/debug|/lib/modules|/usr/lib/modules)' \
	| grep -vE '^/proc/self/|^/dev/null' | sort -u > "$OUT/opened.txt"
echo "@opened $(tr '\n' ' ' < "$OUT/opened.txt")"
