#!/bin/busybox sh
# /init of the capture kernel's initramfs (scripts/testbed_kdump.py): the
# kernel the test-bed guest loaded with kexec -p, booted on its panic.
#
# Loads the virtio modules of /lib/modules/order, runs makedumpfile on
# /proc/vmcore in the flattened format onto the raw disk /dev/vda, reports
# on the serial console ("@VMS CAPTURE ...") and powers off.
# Options from the kernel command line:
#   vmemspect.mdf=NAME    /bin/NAME runs makedumpfile (a build in /opt/NAME)
#   vmemspect.opt=OPTS    its format option(s), commas for spaces (-c, -l, -z, -E)
#   vmemspect.level=N     dump level (-d), default 31

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "@VMS $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
off() {
	sync
	poweroff -f
	echo o > /proc/sysrq-trigger
	while :; do sleep 3600; done
}
fail() { say "CAPTURE FAIL $*"; off; }

say "CAPTURE BOOTED $(uname -r) uptime=$(up)"
[ -e /proc/vmcore ] || fail "no /proc/vmcore: not a capture kernel"
dmesg -n 1

mdf=
opt=
level=31
for a in $(cat /proc/cmdline); do
	case "$a" in
	vmemspect.mdf=*) mdf=${a#vmemspect.mdf=} ;;
	# (not through echo: busybox's echo takes -E and -e as its own options)
	vmemspect.opt=*) opt=${a#vmemspect.opt=}; opt=${opt//,/ } ;;
	vmemspect.level=*) level=${a#vmemspect.level=} ;;
	esac
done
[ -n "$mdf" ] && [ -x "/bin/$mdf" ] || fail "no makedumpfile build '$mdf' (vmemspect.mdf=)"

for m in $(cat /lib/modules/order); do
	insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vda ] || fail "no /dev/vda"

say "CAPTURE VMCORE size=$(stat -c %s /proc/vmcore) disk=$(blockdev --getsize64 /dev/vda)"
t0=$(up)
"/bin/$mdf" --message-level 22 -F -d "$level" $opt /proc/vmcore > /dev/vda 2> /tmp/mdf.err
rc=$?
t1=$(up)
sync
blockdev --flushbufs /dev/vda 2>/dev/null
sed 's/^/@VMS ! /' /tmp/mdf.err
say "CAPTURE DONE rc=$rc mdf=$mdf opt=${opt:-none} level=$level start=$t0 end=$t1"
off
