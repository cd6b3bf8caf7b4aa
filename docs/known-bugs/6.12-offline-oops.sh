#!/bin/sh
# A torture run's minimized reproducer (scripts/testbed/torture.py).
# Seen on 6.12.117+deb13-cloud-amd64, booted with: hugetlb_free_vmemmap=on nokaslr
# (QEMU: 2 NUMA nodes of 2+3 GiB.)
# Reproduced in 3 of 3 fresh boots (the minimizer's replays of exactly these operations)
# Runs as root on a machine booted that way, with hugetorture
# (scripts/guest/hugetorture.c: gcc -static -O2 -o hugetorture hugetorture.c)
# and kpf (scripts/guest/kpf.c) in $PATH.  Then check the state with
#   vmemspect live verify
set -u
mkdir -p /mnt/h2m /mnt/h1g
mountpoint -q /mnt/h2m || mount -t hugetlbfs -o pagesize=2M none /mnt/h2m
mountpoint -q /mnt/h1g || mount -t hugetlbfs -o pagesize=1G none /mnt/h1g

# ---- scripts/guest/torture-agent.sh
# torture-agent.sh: the operations of a torture run (scripts/testbed/torture.py).
#
# A library of sh functions (busybox sh, dash or bash), one per operation,
# each a kernel path that touches HugeTLB Vmemmap Optimization.  The test
# bed's guest sources it and runs one operation per step; a reproducer
# (scripts/testbed torture ... --reproducer) is this file followed by the
# operations in order, and runs as root on a real machine with sysfs, two
# hugetlbfs mounts ($H2M, $H1G) and the test bed's helper hugetorture
# (scripts/guest/hugetorture.c) in $PATH.
#
# An operation the kernel refuses (EBUSY, ENOMEM, EINVAL ...) prints the
# refusal and returns 1: that is a normal outcome.

HP=/sys/kernel/mm/hugepages
NODES=/sys/devices/system/node
MEMB=/sys/devices/system/memory
H2M=${H2M:-/mnt/h2m}
H1G=${H1G:-/mnt/h1g}
T=${TORTURE_TMP:-/tmp}

wr() {  # wr VALUE FILE: write VALUE, say whether the kernel took it
	if (echo "$1" > "$2") 2> "$T/wr.err"; then
		echo "write $1 > $2: ok"
	else
		echo "write $1 > $2: refused: $(sed 's/.*: //' "$T/wr.err")"
		return 1
	fi
}

hfile() {  # hfile SIZE_KB K: the K-th test file on the mount of that size
	if [ "$1" = 1048576 ]; then echo "$H1G/f$2"; else echo "$H2M/f$2"; fi
}

hs() { echo "$HP/hugepages-$1kB"; }

# ---- 1. pools, globally and per node
op_pool() {  # op_pool SIZE_KB NODE|all COUNT
	[ -d "$(hs $1)" ] || { echo "no hstate $1 kB"; return 1; }
	if [ "$2" = all ]; then
		wr "$3" "$(hs $1)/nr_hugepages"
	else
		[ -d "$NODES/node$2" ] || { echo "no node $2"; return 1; }
		wr "$3" "$NODES/node$2/hugepages/hugepages-$1kB/nr_hugepages"
	fi
}

op_pool_fill() {  # op_pool_fill SIZE_KB KEEP_MB: grow the pool over all but KEEP_MB of MemAvailable
	a=$(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
	n=$(( $(cat "$(hs $1)/nr_hugepages") + (a - $2) * 1024 / $1 ))
	[ $n -gt 0 ] || n=0
	wr $n "$(hs $1)/nr_hugepages"
}

# ---- 2. the sysctl
op_sysctl() { wr "$1" /proc/sys/vm/hugetlb_optimize_vmemmap; }

# ---- 4. demotion of 1 GiB folios
op_demote() {  # op_demote COUNT [DEMOTE_SIZE_KB]
	h=$(hs 1048576)
	[ -e "$h/demote" ] || { echo "no demote in $h"; return 1; }
	[ -n "$2" ] && { wr "${2}kB" "$h/demote_size" || return 1; }
	wr "$1" "$h/demote"
}

# ---- 5. surplus pages
op_overcommit() { wr "$2" "$(hs $1)/nr_overcommit_hugepages"; }  # SIZE_KB COUNT

# ---- 6. hugetlbfs files
op_falloc() { hugetorture falloc "$(hfile $1 $2)" "$3" "$4"; }     # SIZE K OFF N
op_punch() { hugetorture punch "$(hfile $1 $2)" "$3" "$4"; }       # SIZE K OFF N
op_truncate() { hugetorture truncate "$(hfile $1 $2)" "$3"; }      # SIZE K N
op_fault() { hugetorture fault "$(hfile $1 $2)" "$3" | grep -v '^pfn'; }  # SIZE K N
op_rm() { rm -f "$(hfile $1 $2)" && echo "rm $(hfile $1 $2)"; }   # SIZE K
op_hold() {  # op_hold SIZE K N: a process keeps N pages of the file mapped
	f=$(hfile $1 $2)
	o="$T/hold.$1.$2.$$"
	hugetorture hold "$f" "$3" > "$o" 2>&1 &
	echo $! >> "$T/holders"
	i=0
	while ! grep -q -e hold_done -e '^[a-z]*:' "$o" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	if grep -q hold_done "$o"; then echo "hold $3 pages of $f (pid $!)"; else echo "hold failed: $(grep -v '^pfn' "$o")"; return 1; fi
}
op_unhold() {  # op_unhold: every holding process unmaps (exits)
	for p in $(cat "$T/holders" 2>/dev/null); do kill $p 2>/dev/null; done
	for p in $(cat "$T/holders" 2>/dev/null); do wait $p 2>/dev/null; done
	rm -f "$T/holders"
	echo "holders released"
}

# ---- 7. migration between nodes
op_move() { hugetorture move "$(hfile $1 $2)" "$3" | grep -v '^pfn'; }    # SIZE K NODE
op_mbind() { hugetorture mbind "$(hfile $1 $2)" "$3" | grep -v '^pfn'; }  # SIZE K NODE

# the I-th hugetlb folio head (mod their number) in /proc/kpageflags order
folio_pfn() {
	kpf | awk -v i="$1" '$1 == "kpf" { p[n++] = $2 } END { if (n) print p[i % n] }'
}

# ---- 8. memory blocks: offline the one holding a hugetlb folio, online all
op_offline() {  # op_offline I
	pfn=$(folio_pfn "$1")
	[ -n "$pfn" ] || { echo "no hugetlb folio"; return 1; }
	bs=$((0x$(cat $MEMB/block_size_bytes)))
	b=$(( pfn * 4096 / bs ))
	echo "folio $pfn in memory$b"
	wr offline "$MEMB/memory$b/state"
}
op_online() {  # op_online: online every offline block
	n=0
	for s in $MEMB/memory*/state; do
		[ "$(cat $s)" = offline ] || continue
		wr online "$s" || n=$((n + 1))
	done
	[ $n = 0 ]
}

# ---- 9. soft offline and hardware poison
op_soft_offline() {  # op_soft_offline I [TAIL]: folio I's head (or a tail page)
	pfn=$(folio_pfn "$1")
	[ -n "$pfn" ] || { echo "no hugetlb folio"; return 1; }
	wr $(( (pfn + ${2:-0}) * 4096 )) "$MEMB/soft_offline_page"
}
op_madv() { hugetorture madv "$(hfile $1 $2)" "$3" "$4"; }  # SIZE K PAGE soft|hwpoison

# ---- 10. memory pressure
op_pressure() {  # op_pressure PERCENT [CAP_MB]: a process takes PERCENT of MemAvailable (at most CAP_MB)
	a=$(awk '/^MemAvailable/ { print int($2 / 1024) }' /proc/meminfo)
	mb=$(( a * $1 / 100 ))
	[ -n "${2:-}" ] && [ $mb -gt $2 ] && mb=$2
	o="$T/hog.$$"
	hugetorture hog $mb > "$o" 2>&1 &
	echo $! >> "$T/hogs"
	i=0
	while ! grep -q hold_done "$o" && kill -0 $! 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
	echo "hog of $mb MiB: $(cat "$o" | tr '\n' ' ')"
}
op_unpressure() {
	for p in $(cat "$T/hogs" 2>/dev/null); do kill $p 2>/dev/null; done
	for p in $(cat "$T/hogs" 2>/dev/null); do wait $p 2>/dev/null; done
	rm -f "$T/hogs"
	echo "hogs released"
}

# ---- 10. a vmemmap restore that finds no memory (never drawn: weight 0)
# Fill memory with 2 MiB pages (unreclaimable) until only HEADROOM_MB are
# free above the zones' min watermarks (filling one node is not enough:
# the restore falls back to the other), shrink the SIZE_KB pool to 0, give
# the fill back: restoring the vmemmap of an optimized 1 GiB folio needs
# 16 MiB (4095 pages), more than was left, so the kernel keeps the folio
# (mm/hugetlb.c: bulk_vmemmap_restore_error(), add_hugetlb_folio(...,
# true): a surplus folio), and the check after the step sees that state.
# op_unsqueeze shrinks the pool again (the restore now has memory).
above_min() {  # MiB free above the min watermarks, every zone
	awk '$1 == "pages" && $2 == "free" { f += $3 } $1 == "min" { m += $2 }
	     END { print int((f - m) * 4 / 1024) }' /proc/zoneinfo
}
op_squeeze() {  # op_squeeze SIZE_KB HEADROOM_MB
	h=$(hs $1); h2=$(hs 2048)
	n2=$(cat $h2/nr_hugepages); n=$(cat $h/nr_hugepages); s0=$(cat $h/surplus_hugepages)
	a=$(above_min)
	min=$(awk '$1 == "min" { m += $2 } END { print int(m * 4 / 1024) }' /proc/zoneinfo)
	echo "before: ${1}kB nr=$n surplus=$s0; 2048kB nr=$n2; free above min $a MiB (min watermarks $min MiB)"
	[ "$n" -gt 0 ] || { echo "no ${1}kB folio to free"; return 1; }
	# The fill with the sysctl off: optimizing each new folio splits
	# vmemmap PMDs, and that page-table allocation, with memory nearly
	# full, woke the OOM killer (it killed this shell; once, with nothing
	# left to kill, the kernel panicked: "System is deadlocked on
	# memory").  From the fill to its release only shell builtins run.
	read sc < /proc/sys/vm/hugetlb_optimize_vmemmap
	echo 0 > /proc/sys/vm/hugetlb_optimize_vmemmap
	# HEADROOM_MB 0: ask for more than there is (the pool grows until the
	# kernel refuses; without HVO's page-table allocations no OOM)
	if [ "$2" -gt 0 ]; then add=$(((a - $2) / 2)); else add=$((a)); fi
	echo $((n2 + add)) > $h2/nr_hugepages 2> /dev/null
	read full < $h2/nr_hugepages
	{ read x; read x mf x; } < /proc/meminfo
	echo 0 > $h/nr_hugepages 2> /dev/null
	read n1 < $h/nr_hugepages; read s1 < $h/surplus_hugepages
	echo $n2 > $h2/nr_hugepages
	echo $sc > /proc/sys/vm/hugetlb_optimize_vmemmap
	echo "filled: 2048kB nr=$full (asked $((n2 + add))), MemFree then $((mf / 1024)) MiB (min watermarks $min MiB); ${1}kB pool to 0: nr=$n1 surplus=$s1; fill given back"
	[ "$n1" -gt 0 ] && echo "RESTORE_FAILED: ${1}kB nr=$n1 surplus=$s1 after writing 0"
	[ "$n1" -gt 0 ] || echo "RESTORE_OK: the kernel freed the ${1}kB folio(s)"
	return 0
}
op_unsqueeze() {  # op_unsqueeze SIZE_KB: free the SIZE_KB folios again, with memory
	# (a surplus folio with nr_overcommit_hugepages 0 stays until the
	# pool takes it back: nr_hugepages = nr makes it persistent, then 0)
	h=$(hs $1)
	wr "$(cat $h/nr_hugepages)" $h/nr_hugepages
	wr 0 $h/nr_hugepages
	echo "after: ${1}kB nr=$(cat $h/nr_hugepages) surplus=$(cat $h/surplus_hugepages)"
}

# ---- 11. compaction
op_compact() { wr 1 /proc/sys/vm/compact_memory; }

# ---- aftermath: release everything and empty every pool
op_empty() {
	op_unhold
	op_unpressure
	rm -f "$H2M"/* "$H1G"/* 2> /dev/null
	for d in $HP/hugepages-*kB; do
		echo 0 > $d/nr_overcommit_hugepages 2> /dev/null
		wr 0 $d/nr_hugepages
	done
}

# ---- what the kernel says about itself (after every operation)
state() {
	for d in $HP/hugepages-*kB; do
		echo "pool ${d##*hugepages-} nr=$(cat $d/nr_hugepages) free=$(cat $d/free_hugepages) surplus=$(cat $d/surplus_hugepages) resv=$(cat $d/resv_hugepages)$(for n in $NODES/node[0-9]*; do printf ' n%s=%s' ${n##*node} $(cat $n/hugepages/${d##*/}/nr_hugepages); done)"
	done
	echo "sysctl $(cat /proc/sys/vm/hugetlb_optimize_vmemmap 2> /dev/null)"
	grep -E '^nr_memmap' /proc/vmstat | sed 's/^/vmstat /'
	echo "memfree $(awk '/^MemFree/ { print $2 }' /proc/meminfo)"
	echo "offline_blocks $(grep -l offline $MEMB/memory*/state 2> /dev/null | wc -l)"
}
# ---- the operations
op_pool 1048576 all 2
op_offline 942
state

# What vmemspect printed on this state (vmemspect vmcore DUMP -s VMLINUX verify):
#   (the kernel crashed:)
#   [    3.880888] BUG: kernel NULL pointer dereference, address: 0000000000000050
#   [    3.881281] #PF: supervisor read access in kernel mode
#   [    3.881364] #PF: error_code(0x0000) - not-present page
#   [    3.881482] PGD 7fed2067 P4D 7fe9a067 PUD 7fe85067 PMD 0 
#   [    3.881736] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI
#   [    3.881919] CPU: 1 UID: 0 PID: 243 Comm: init Not tainted 6.12.117+deb13-cloud-amd64 #1  Debian 6.12.117-1
#   [    3.882117] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
#   [    3.882293] RIP: 0010:dissolve_free_hugetlb_folio+0xb0/0x1d0
#   [    3.882548] Code: 2e 0f 1f 84 00 00 00 00 00 90 48 81 c3 98 80 00 00 48 39 d3 0f 83 a2 00 00 00 8b 4b 28 b8 00 10 00 00 48 d3 e0 48 39 c6 75 e0 <48> 8b 43 50 48 39 43 48 0f 84 03 01 00 00 49 8b 44 24 28 48 c1 e8
#   [    3.882809] RSP: 0018:ffa00000015c39b8 EFLAGS: 00000046
#   [    3.882890] RAX: 0000000000200000 RBX: 0000000000000000 RCX: 0000000000000009
#   [    3.882983] RDX: ffffffff8378a2b0 RSI: 0000000000001000 RDI: ffffffff82c095c0
#   [    3.883076] RBP: 0000000000000000 R08: ffd4000005fe0008 R09: 0000000000000000
#   [    3.883167] R10: 0000000000000000 R11: ffd4000006000000 R12: ffd4000005008000
#   [    3.883259] R13: ff110001bffd4280 R14: 0000000005000000 R15: 0000000000008000
#   [    3.883384] FS:  00000000194453c0(0000) GS:ff1100007db00000(0000) knlGS:0000000000000000
#   [    3.883490] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
#   [    3.883567] CR2: 0000000000000050 CR3: 00000000056ce000 CR4: 0000000000751ef0
#   [    3.883899] PKRU: 55555554
#   [    3.883978] Call Trace:
#   [    3.884373]  <TASK>
#   [    3.884609]  dissolve_free_hugetlb_folios+0x9d/0x110
#   [    3.884738]  offline_pages+0x469/0x7b0
#   [    3.884805]  memory_subsys_offline+0x161/0x210
#   [    3.884877]  device_offline+0xd3/0x130
#   [    3.884935]  state_store+0x67/0xa0
#   [    3.884986]  kernfs_fop_write_iter+0x14f/0x200
#   [    3.885054]  vfs_write+0x28c/0x440
#   [    3.885112]  ksys_write+0x6d/0xf0
#   [    3.885161]  do_syscall_64+0x87/0x180
#   [    3.885226]  ? next_uptodate_folio+0x89/0x2a0
#   [    3.885294]  ? filemap_map_pages+0x553/0x6a0
#   [    3.885364]  ? do_fault+0x31a/0x550
#   [    3.885416]  ? __handle_mm_fault+0x70d/0xf90
#   [    3.885482]  ? __count_memcg_events+0x53/0xf0
#   [    3.885542]  ? count_memcg_events.constprop.0+0x1a/0x30
#   [    3.885613]  ? handle_mm_fault+0x1bb/0x2c0
#   [    3.885672]  ? do_user_addr_fault+0x367/0x650
#   [    3.885737]  ? arch_exit_to_user_mode_prepare.isra.0+0x16/0xa0
