#!/bin/busybox sh
# /init of the vmemspect test-bed initramfs (busybox-static).
#
# Loads qemu_fw_cfg (without it QEMU's dumps carry no VMCOREINFO), reads its
# orders from fw_cfg (opt/vmemspect/*; where QEMU cannot pass fw_cfg files,
# riscv64 virt, the host appends them to the initramfs as
# /vmemspect-opt/NAME/raw instead), sets up the scenario's run-time
# state, prints the ground truth on the console between markers, optionally
# runs a command (in the host's root over virtiofs for "live"), prints the
# READY marker and waits for the host to dump memory and stop QEMU.
#
# Every line meant for the host starts with "@VMS " (kernel messages may
# interleave; the console loglevel is lowered first).  The truth block ends
# with its line count and md5 so the host can tell a mangled block.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /mnt /host
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# Only emergencies on the console from now on.
dmesg -n 1

say() { echo "@VMS $*"; }
fail() {
	say "FAIL $*"
	# Keep init alive: the host sees FAIL and stops QEMU.
	while :; do sleep 3600; done
}

# (a developer's own build may have it built in: CONFIG_FW_CFG_SYSFS=y)
[ -d /sys/firmware/qemu_fw_cfg ] || insmod /lib/modules/qemu_fw_cfg.ko || fail "insmod qemu_fw_cfg"
FWC=/sys/firmware/qemu_fw_cfg/by_name/opt/vmemspect
[ -d /vmemspect-opt ] && FWC=/vmemspect-opt
# The control port (aftermath, kdump capture): the second UART, or hvc0 on
# machines with one (the host says which).
CTL=/dev/ttyS1
[ -e "$FWC/control/raw" ] && CTL=$(cat "$FWC/control/raw")
i=0
while [ ! -e "$FWC/scenario/raw" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ -e "$FWC/scenario/raw" ] || fail "no fw_cfg opt/vmemspect/scenario"
scenario=$(cat "$FWC/scenario/raw")
say "BOOTED $scenario $(uname -r)"

steps=/tmp/steps
: > $steps
hp2m=/sys/kernel/mm/hugepages/hugepages-2048kB
step() {  # step NAME: log the 2 MiB pool after a run-time change
	echo "step $1 nr=$(cat $hp2m/nr_hugepages) free=$(cat $hp2m/free_hugepages) opt=$(cat /proc/sys/vm/hugetlb_optimize_vmemmap 2>/dev/null)" >> $steps
}

hold() {  # hold PHASE ANON FILE: keep huge pages in use (background process)
	hugehold $2 /mnt/huge/held-$1 $3 > /tmp/hold$1 2>&1 &
	echo $! >> /tmp/holdpids
	i=0
	while ! grep -q hold_done /tmp/hold$1 && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
	grep -q hold_done /tmp/hold$1 || fail "hugehold: $(cat /tmp/hold$1)"
	sed -n "s/^hold \(.*\)/hold \1 $1/p" /tmp/hold$1 >> /tmp/held
	step "hugehold$1:$2anon+$3file"
}

case "$scenario" in
mixed)
	mkdir -p /mnt/huge
	mount -t hugetlbfs -o pagesize=2M none /mnt/huge || fail "mount hugetlbfs"
	echo 1 > /proc/sys/vm/hugetlb_optimize_vmemmap || fail "sysctl on"
	echo 16 > $hp2m/nr_hugepages || fail "nr_hugepages 16"
	step "optimize=1,nr_hugepages=16"
	# 2 anonymous (private) + 3 hugetlbfs file (shared) pages, mapped and
	# touched by a process that then sleeps: taken while only folios
	# allocated with the sysctl on exist.
	hold 1 2 3
	echo 0 > /proc/sys/vm/hugetlb_optimize_vmemmap || fail "sysctl off"
	echo 32 > $hp2m/nr_hugepages || fail "nr_hugepages 32"
	step "optimize=0,nr_hugepages=32"
	# 5 more; the kernel picks which free folios (LIFO free lists: most
	# likely the ones just allocated, unoptimized).
	hold 2 2 3
	;;
rare)
	# The state of a user's report (6.12.117): two 1 GiB pages from CMA
	# (hugetlb_cma=), one demoted to 512 2 MiB pages, the whole 2 MiB pool
	# plus 8 surplus pages in use by fallocate on hugetlbfs.
	hp1g=/sys/kernel/mm/hugepages/hugepages-1048576kB
	[ -d $hp1g ] || fail "no 1 GiB hstate"
	pools() { echo "2M nr=$(cat $hp2m/nr_hugepages) free=$(cat $hp2m/free_hugepages) surplus=$(cat $hp2m/surplus_hugepages) 1G nr=$(cat $hp1g/nr_hugepages) free=$(cat $hp1g/free_hugepages)"; }
	gig() {  # gig WHEN: the 1 GiB folios in /proc/kpageflags
		kpf | awk -v w=$1 '$1 == "kpf" && $4 == 262144 { print "demote", w, $2 }' >> /tmp/demote
	}
	# Without CMA (CONFIG_CMA is off in Debian's 6.1 and 6.12 cloud
	# kernels: hugetlb_cma= is an unknown parameter there) the pages come
	# from alloc_contig_pages, which can fail now and then: try again.
	i=0
	while [ "$(cat $hp1g/nr_hugepages)" != 2 ] && [ $i -lt 10 ]; do
		i=$((i + 1))
		echo 2 > $hp1g/nr_hugepages
		[ "$(cat $hp1g/nr_hugepages)" = 2 ] && break
		echo 3 > /proc/sys/vm/drop_caches
		echo 1 > /proc/sys/vm/compact_memory 2>/dev/null
		sleep 0.5
	done
	[ "$(cat $hp1g/nr_hugepages)" = 2 ] || fail "1G pool $(cat $hp1g/nr_hugepages) after $i tries, want 2; $(dmesg | grep -iE 'cma|contig|hugetlb' | tail -n 5 | tr '\n' '|')"
	echo "step 1G_nr_hugepages=2 (tries=$i): $(pools)" >> $steps
	gig before
	echo 1 > $hp1g/demote || fail "demote ($(cat $hp1g/demote_size 2>/dev/null))"
	[ "$(cat $hp1g/nr_hugepages)" = 1 ] || fail "1G pool after demote $(cat $hp1g/nr_hugepages)"
	echo "step demote=1 (demote_size=$(cat $hp1g/demote_size)): $(pools)" >> $steps
	gig after
	mkdir -p /mnt/huge
	mount -t hugetlbfs -o pagesize=2M none /mnt/huge || fail "mount hugetlbfs"
	echo 8 > $hp2m/nr_overcommit_hugepages || fail "nr_overcommit_hugepages"
	n=$(( $(cat $hp2m/nr_hugepages) + 8 ))
	hugehold -f /mnt/huge/pool $n > /tmp/hold1 2>&1 || fail "hugehold -f: $(cat /tmp/hold1)"
	sed -n "s/^hold \(.*\)/hold \1 1/p" /tmp/hold1 >> /tmp/held
	echo "step fallocate=$n,overcommit=8: $(pools)" >> $steps
	[ "$(cat $hp2m/free_hugepages) $(cat $hp2m/surplus_hugepages)" = "0 8" ] || fail "2M pool not all held: $(pools)"
	;;
shrink)
	echo 20 > $hp2m/nr_hugepages || fail "nr_hugepages 20"
	step "nr_hugepages=20"
	echo 10 > $hp2m/nr_hugepages || fail "nr_hugepages 10"
	step "nr_hugepages=10"
	;;
numa)
	n1=/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages
	[ -e $n1 ] || fail "no node1"
	before=$(cat $n1)
	echo $((before + 20)) > $n1 || fail "node1 nr_hugepages"
	echo "step node1_2M:$before->$(cat $n1)" >> $steps
	;;
torture)
	# scripts/testbed/torture.py: hugetlbfs mounts for the agent; the
	# operations come over the control port after READY (agent below).
	mkdir -p /mnt/h2m /mnt/h1g
	mount -t hugetlbfs -o pagesize=2M none /mnt/h2m || fail "mount hugetlbfs 2M"
	[ -d /sys/kernel/mm/hugepages/hugepages-1048576kB ] &&
		mount -t hugetlbfs -o pagesize=1G none /mnt/h1g
	;;
hotplug)
	mom=$(cat /sys/module/memory_hotplug/parameters/memmap_on_memory 2>/dev/null)
	echo "step memmap_on_memory=$mom blocks=$(ls -d /sys/devices/system/memory/memory[0-9]* | wc -l)" >> $steps
	echo 64 > $hp2m/nr_hugepages || fail "nr_hugepages 64"
	step "nr_hugepages=64"
	;;
esac

# ---- ground truth ----
T=/tmp/truth
{
	echo "scenario $scenario"
	echo "uname $(uname -r)"
	echo "cmdline $(cat /proc/cmdline)"
	[ -e /proc/sys/vm/hugetlb_optimize_vmemmap ] &&
		echo "sysctl hugetlb_optimize_vmemmap $(cat /proc/sys/vm/hugetlb_optimize_vmemmap)"
	grep -E '^(HugePages_|Hugepagesize|Hugetlb)' /proc/meminfo | sed 's/^/meminfo /'
	for d in /sys/kernel/mm/hugepages/hugepages-*kB; do
		sz=${d##*hugepages-}; sz=${sz%kB}
		for f in nr_hugepages free_hugepages resv_hugepages surplus_hugepages; do
			[ -e $d/$f ] && echo "global $sz $f $(cat $d/$f)"
		done
	done
	for nd in /sys/devices/system/node/node[0-9]*; do
		node=${nd##*node}
		for d in $nd/hugepages/hugepages-*kB; do
			[ -d "$d" ] || continue
			sz=${d##*hugepages-}; sz=${sz%kB}
			for f in nr_hugepages free_hugepages surplus_hugepages; do
				[ -e $d/$f ] && echo "node $node $sz $f $(cat $d/$f)"
			done
		done
		blocks=$(ls -d $nd/memory[0-9]* 2>/dev/null | sed 's/.*memory//' | sort -n | tr '\n' ' ')
		echo "node_blocks $node $blocks"
	done
	[ -e /sys/devices/system/memory/block_size_bytes ] &&
		echo "block_size 0x$(cat /sys/devices/system/memory/block_size_bytes)"
	dmesg | grep -E 'HugeTLB|hugetlb_cma|cma: ' | sed 's/^\[[^]]*\] *//; s/^/dmesg /'
	grep -E '^nr_memmap' /proc/vmstat | sed 's/^/vmstat /'
	# Physical address and size (both hex) of the VMCOREINFO ELF note: the
	# host reads it out of dumps that do not carry it (riscv64).
	[ -e /sys/kernel/vmcoreinfo ] && echo "vmcoreinfo $(cat /sys/kernel/vmcoreinfo)"
	kpf || echo "error kpf failed"
	[ -e /tmp/held ] && cat /tmp/held
	[ -e /tmp/demote ] && cat /tmp/demote
	cat $steps
} > $T 2>&1
n=$(wc -l < $T)
sum=$(md5sum < $T | cut -d' ' -f1)
say "TRUTH BEGIN"
sed 's/^/@VMS = /' $T
say "TRUTH END $n $sum"

# ---- optional command ----
# The host hands over a complete sh script (environment, cd, command).
if [ -e "$FWC/script/raw" ]; then
	cat "$FWC/script/raw" > /tmp/cmd.sh
	if [ "$scenario" = live ]; then
		mount -t virtiofs hostroot /host || fail "mount virtiofs"
		for m in proc sys dev; do mount --bind /$m /host/$m || fail "bind $m"; done
		# More host directories ("TAG PATH": virtiofs TAG at PATH in the
		# chroot), where /host is not the host's root (riscv64).
		if [ -e "$FWC/shares/raw" ]; then
			while read -r tag path; do
				[ -n "$tag" ] || continue
				mkdir -p "/host$path" && mount -t virtiofs "$tag" "/host$path" ||
					fail "mount virtiofs $tag at $path"
			done < "$FWC/shares/raw"
		fi
		# The script goes to the host's /tmp under a name of this run.
		f=/tmp/.vmemspect-cmd.$(cat /proc/sys/kernel/random/uuid)
		cp /tmp/cmd.sh /host$f || fail "copy script to host"
		say "CMD BEGIN"
		chroot /host /bin/sh $f > /tmp/out 2> /tmp/err
		rc=$?
		rm -f /host$f
	else
		say "CMD BEGIN"
		sh /tmp/cmd.sh > /tmp/out 2> /tmp/err
		rc=$?
	fi
	# Human-readable copy, then the exact bytes (base64) for the host.
	sed 's/^/@VMS | /' /tmp/out
	sed 's/^/@VMS ! /' /tmp/err
	say "CMD OUT"
	base64 /tmp/out | sed 's/^/@VMS o /'
	say "CMD ERR"
	base64 /tmp/err | sed 's/^/@VMS e /'
	say "CMD END $rc"
fi

# ---- aftermath (opt-in: fw_cfg opt/vmemspect/aftermath) ----
# After READY the host dumps memory, then writes a line to the control
# port ($CTL); the guest then releases what it holds, empties every
# pool (2 MiB first) and prints what the kernel said meanwhile (dmesg: the
# console shows emergencies only) between AFTERMATH markers ("@VMS ~ "
# lines, count and md5 at the end, like the truth block).
aftermath() {
	A=/tmp/aftermath
	: > $A
	pools_all() {
		for d in /sys/kernel/mm/hugepages/hugepages-*kB; do
			sz=${d##*hugepages-}
			printf '%s ' "$sz nr=$(cat $d/nr_hugepages) free=$(cat $d/free_hugepages) surplus=$(cat $d/surplus_hugepages)"
		done
	}
	dmesg -c > /dev/null
	for p in $(cat /tmp/holdpids 2>/dev/null); do kill $p; wait $p; done
	rm -f /mnt/huge/* 2>/dev/null
	echo "step release_holds: $(pools_all)" >> $A
	for d in $hp2m /sys/kernel/mm/hugepages/hugepages-*kB; do
		[ -e $d/nr_overcommit_hugepages ] && echo 0 > $d/nr_overcommit_hugepages
		[ "$(cat $d/nr_hugepages)" = 0 ] && continue
		echo 0 > $d/nr_hugepages
		rc=$?
		echo "step ${d##*hugepages-}_nr_hugepages=0 rc=$rc: $(pools_all)" >> $A
	done
	# Frees of surplus pages may run in a workqueue: let them finish.
	sleep 1
	grep -E '^nr_memmap' /proc/vmstat | sed 's/^/vmstat /' >> $A
	dmesg > /tmp/kmsg
	echo "dmesg_lines $(wc -l < /tmp/kmsg)" >> $A
	head -n 4000 /tmp/kmsg | sed 's/^/k /' >> $A
	n=$(wc -l < $A)
	sum=$(md5sum < $A | cut -d' ' -f1)
	say "AFTERMATH BEGIN"
	sed 's/^/@VMS ~ /' $A
	say "AFTERMATH END $n $sum"
}
ctl_open() {  # ctl_open FD: open the control port for reading on FD
	if [ $CTL = /dev/ttyS1 ]; then
		[ -e $CTL ] || mknod $CTL c 4 65
	else
		# (hvc0 appears once virtio-serial is probed)
		i=0
		while [ ! -e $CTL ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	fi
	eval "exec $1< $CTL" || fail "open $CTL"
	stty -F $CTL raw -echo || fail "stty $CTL"
}
if [ -e "$FWC/aftermath/raw" ]; then
	# Open the control port before READY: bytes that reach a closed port
	# are lost.
	ctl_open 3
fi
# The torture agent (opt-in: fw_cfg opt/vmemspect/agent holds its shell
# library, scripts/guest/torture-agent.sh): after READY, each line on the
# control port is a base64'd sh script, run with the library's functions;
# its output (stdout and stderr), the kernel's new messages and its exit
# status go back on the same port between "@R BEGIN" and "@R END <rc>".
if [ -e "$FWC/agent/raw" ]; then
	ctl_open 3
	exec 4> $CTL
fi
agent_loop() {
	cp "$FWC/agent/raw" /tmp/agent.sh
	dmesg -c > /dev/null
	while read -r line <&3; do
		echo "$line" | base64 -d > /tmp/op.sh 2> /dev/null
		( . /tmp/agent.sh; . /tmp/op.sh ) < /dev/null > /tmp/op.out 2>&1
		rc=$?
		dmesg -c > /tmp/op.kmsg 2>&1
		{
			echo "@R BEGIN"
			base64 /tmp/op.out
			echo "@R KMSG"
			base64 /tmp/op.kmsg
			echo "@R END $rc"
		} >&4
	done
}

# "kdump capture" runs (scripts/testbed/kdump.py) add this: load a capture
# kernel, and panic into it when the host says so.
[ -e /kdump/arm.sh ] && . /kdump/arm.sh
sync
say "READY"
if [ -e "$FWC/aftermath/raw" ]; then
	read -r go <&3
	aftermath
fi
[ -e "$FWC/agent/raw" ] && agent_loop
while :; do sleep 3600; done
