# Sourced by /init (scripts/guest/init.sh) after READY in "kdump capture"
# runs of the test bed (scripts/testbed_kdump.py), which add this file, the
# boot image (/kdump/vmlinuz), the capture initramfs (/kdump/capture.img) and
# kexec with its libraries (/bin/kexec, /opt/kexec) to the initramfs.
#
# Loads the same kernel as capture kernel (kexec -p) and panics through
# sysrq: the capture kernel (/init = scripts/guest/kdump-capture.sh) then
# dumps /proc/vmcore with makedumpfile onto a raw disk and powers off.
# Its settings come from fw_cfg opt/vmemspect/kdump (sh assignments):
#   KDUMP_APPEND  the capture kernel's command line
#   KDUMP_WAIT    1: once armed, wait for a line on /dev/ttyS1 before the
#                 panic (the host takes a QEMU dump of the same state first)

[ -e "$FWC/kdump/raw" ] || fail "no fw_cfg opt/vmemspect/kdump"
cat "$FWC/kdump/raw" > /tmp/kdump.conf
KDUMP_APPEND=
KDUMP_WAIT=0
. /tmp/kdump.conf
[ -n "$KDUMP_APPEND" ] || fail "kdump: no KDUMP_APPEND"
size=$(cat /sys/kernel/kexec_crash_size 2>/dev/null)
[ "${size:-0}" -gt 0 ] || fail "kdump: no crash kernel memory (crashkernel= on the command line?)"
t0=$(cut -d' ' -f1 /proc/uptime)
if ! kexec -p /kdump/vmlinuz --initrd=/kdump/capture.img --append="$KDUMP_APPEND" > /tmp/kexec.out 2>&1; then
	sed 's/^/@VMS ! /' /tmp/kexec.out
	fail "kdump: kexec -p failed"
fi
[ "$(cat /sys/kernel/kexec_crash_loaded)" = 1 ] || fail "kdump: kexec -p loaded no capture kernel"
say "KDUMP ARMED crash_size=$size load_s=$t0-$(cut -d' ' -f1 /proc/uptime)"
if [ "$KDUMP_WAIT" = 1 ]; then
	[ -e /dev/ttyS1 ] || fail "kdump: no /dev/ttyS1 to wait on"
	stty -F /dev/ttyS1 raw -echo 2>/dev/null
	say "KDUMP WAITING"
	read -r go < /dev/ttyS1
	say "KDUMP GO $go"
fi
sync
say "KDUMP PANIC"
echo c > /proc/sysrq-trigger
fail "kdump: the sysrq crash returned"
