# Sourced by /init (scripts/guest/init.sh) before READY in "kdump capture"
# runs of the test bed (scripts/testbed/kdump.py), which add this file, the
# boot image (/kdump/vmlinuz), the capture initramfs (/kdump/capture.img) and
# kexec with its libraries (/bin/kexec, /opt/kexec) to the initramfs.
#
# Loads the same kernel as capture kernel (kexec -p), then leaves a job that
# waits for a line on /dev/ttyS1 (the host sends it once its QMP dumps of
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
[ -e /dev/ttyS1 ] || mknod /dev/ttyS1 c 4 65
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
exec 4< /dev/ttyS1 || fail "kdump: open ttyS1"
stty -F /dev/ttyS1 raw -echo || fail "kdump: stty ttyS1"
(
	read -r go <&4
	say "KDUMP GO $go"
	sync
	say "KDUMP PANIC"
	echo c > /proc/sysrq-trigger
	say "FAIL kdump: the sysrq crash returned"
) &
