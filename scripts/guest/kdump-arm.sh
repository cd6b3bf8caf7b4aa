# Sourced by /init (scripts/guest/init.sh) before READY in "kdump capture"
# runs of the test bed (scripts/testbed/kdump.py), which add this file, the
# boot image (/kdump/vmlinuz), the capture initramfs (/kdump/capture.img) and
# kexec with its libraries (/bin/kexec, /opt/kexec) to the initramfs.
#
# Loads the same kernel as capture kernel (kexec -p), then leaves a job that
# waits for a line on the control port $CTL (/dev/ttyS1 or /dev/hvc0, set by
# /init; the host sends it once its QMP dumps of
# this state, if any, are taken) and panics through sysrq: the capture
# kernel (/init = scripts/guest/kdump-capture.sh) dumps /proc/vmcore with
# makedumpfile onto a raw disk and powers off.
# fw_cfg opt/vmemspect/kdump holds KDUMP_APPEND='the capture kernel's command line'.

[ -e "$FWC/kdump/raw" ] || fail "no fw_cfg opt/vmemspect/kdump"
cat "$FWC/kdump/raw" > /tmp/kdump.conf
KDUMP_APPEND=
. /tmp/kdump.conf
[ -n "$KDUMP_APPEND" ] || fail "kdump: no KDUMP_APPEND"
size=$(cat /sys/kernel/kexec_crash_size 2>/dev/null)
[ "${size:-0}" -gt 0 ] || fail "kdump: no crash kernel memory (crashkernel= on the command line?)"
if [ "$(uname -m)" = riscv64 ]; then
	# kexec-tools (2.0.32, kexec/arch/riscv get_memory_ranges) leaves every
	# "Reserved" range of /proc/iomem out of the dump's memory (elfcorehdr).
	# On riscv64 those are the kernel's own memblock allocations (the
	# vmemmap, mem_section, page tables): makedumpfile then fails with
	# "readpage_elf: Attempt to read non-existent page" / "Can't get the
	# address of mem_section".  Show it an /proc/iomem without them, but
	# with the firmware's (reserved-memory in the device tree: OpenSBI's,
	# not readable from S-mode).
	keep=""
	for n in /sys/firmware/devicetree/base/reserved-memory/*/; do
		[ -e "$n/reg" ] || continue
		a=$(hexdump -ve '1/1 "%02x"' "$n/reg" | cut -c1-16 | sed 's/^0*//')
		keep="$keep ${a:-0}"
	done
	awk -v keep="$keep" '
		BEGIN { n = split(keep, k, " "); for (i = 1; i <= n; i++) K[k[i]] = 1 }
		/^  [0-9a-f]+-[0-9a-f]+ : Reserved$/ {
			split($1, r, "-"); s = r[1]; sub(/^0+/, "", s); if (!(s in K)) next
		}
		{ print }' /proc/iomem > /tmp/iomem
	dropped=$(($(grep -c ': Reserved$' /proc/iomem) - $(grep -c ': Reserved$' /tmp/iomem)))
	mount --bind /tmp/iomem /proc/iomem || fail "kdump: bind mount over /proc/iomem"
	say "KDUMP IOMEM reserved_dropped=$dropped firmware_kept=$(echo $keep | tr ' ' ,)"
fi
t0=$(cut -d' ' -f1 /proc/uptime)
if ! kexec -p /kdump/vmlinuz --initrd=/kdump/capture.img --append="$KDUMP_APPEND" > /tmp/kexec.out 2>&1; then
	sed 's/^/@VMS ! /' /tmp/kexec.out
	fail "kdump: kexec -p failed"
fi
[ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail "kdump: kexec -p loaded no capture kernel"
# The files kexec read are not needed any more: free their memory.
rm -f /kdump/vmlinuz /kdump/capture.img
say "KDUMP ARMED crash_size=$size load_s=$t0-$(cut -d' ' -f1 /proc/uptime)"
# Open the port now, before READY: bytes that reach a closed port are lost.
ctl_open 4
(
	read -r go <&4
	say "KDUMP GO $go"
	sync
	say "KDUMP PANIC"
	echo c > /proc/sysrq-trigger
	say "FAIL kdump: the sysrq crash returned"
) &
