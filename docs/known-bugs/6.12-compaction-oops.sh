#!/bin/sh
# A torture run's reproducer (scripts/testbed/torture.py): 42 steps, the run's
# operations without those the kernel refused or that changed nothing it
# reports; NOT minimized (the crash comes in about 2 replays of 3).
# Seen on 6.12.117+deb13-cloud-amd64, booted with: hugetlb_free_vmemmap=on nokaslr memory_hotplug.memmap_on_memory=1
# (QEMU: 2 NUMA nodes of 2+3 GiB.)
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
op_pool 2048 1 4
op_pool 2048 all 100000
op_pool 2048 1 83
op_offline 274
op_offline 500
op_pool 2048 all 16
op_online
op_falloc 2048 1 3 2
op_fault 2048 1 1
op_sysctl 0
op_falloc 2048 2 1 4
op_pool 2048 all 100
op_pool 2048 1 0
op_pool 2048 0 29
op_hold 2048 2 2
op_fault 2048 1 4
op_punch 2048 1 2 8
op_pool 2048 all 16
op_move 2048 2 0
op_pool 2048 all 100
op_pool 2048 all 8
op_sysctl 1
op_mbind 2048 1 0
op_pool 2048 all 64
op_pool 2048 0 40
op_soft_offline 746 0
op_falloc 2048 1 6 2
op_punch 2048 1 7 8
op_sysctl 0
op_madv 2048 2 1 soft
op_pool 2048 all 16
op_pool 2048 all 64
op_soft_offline 628 1
op_pool 2048 1 4
op_pool 2048 all 64
op_pool 2048 1 0
op_rm 2048 2
op_pool 2048 1 4
op_punch 2048 1 2 8
op_falloc 2048 2 4 8
op_falloc 2048 0 1 8
op_compact
state

# What vmemspect printed on this state (vmemspect vmcore DUMP -s VMLINUX verify):
#   (no vmemspect finding after any step; the kernel crashed in the last one:)
#   [   41.974657] BUG: unable to handle page fault for address: ffa00003020bb7b3
#   [   41.979349] #PF: supervisor read access in kernel mode
#   [   41.979526] #PF: error_code(0x0000) - not-present page
#   [   41.979735] PGD 4000067 P4D 41d1067 PUD 0 
#   [   41.980059] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI
#   [   41.980239] CPU: 1 UID: 0 PID: 1446 Comm: init Not tainted 6.12.117+deb13-cloud-amd64 #1  Debian 6.12.117-1
#   [   41.980511] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
#   [   41.980769] RIP: 0010:__list_del_entry_valid_or_report+0x43/0x80
#   [   41.980979] Code: c6 00 57 00 48 b8 00 01 00 00 00 00 ad de 48 39 c2 0f 84 a2 00 57 00 48 b8 22 01 00 00 00 00 ad de 48 39 c1 0f 84 7b 00 57 00 <48> 8b 31 48 39 fe 0f 85 5b 00 57 00 48 8b 42 08 48 39 c6 0f 85 3a
#   [   41.981438] RSP: 0018:ffa00000020bb668 EFLAGS: 00000202
#   [   41.981564] RAX: dead000000000122 RBX: ffd40000000f4040 RCX: ffa00003020bb7b3
#   [   41.981731] RDX: ffd4000001de6088 RSI: ffa00000020bba60 RDI: ffd4000001de6048
#   [   41.981874] RBP: 0000000000000001 R08: 0000000000000000 R09: 0000000000000000
#   [   41.982034] R10: 00000000000007e0 R11: 0000000000000007 R12: 0000000000000000
#   [   41.982136] R13: ffffffff8135cc40 R14: ffd4000001de6040 R15: ffd40000000f4040
#   [   41.982284] FS:  000000003aa2d3c0(0000) GS:ff1100007db00000(0000) knlGS:0000000000000000
#   [   41.982401] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
#   [   41.982485] CR2: ffa00003020bb7b3 CR3: 000000007e3c6000 CR4: 0000000000751ef0
#   [   41.982677] PKRU: 55555554
#   [   41.982731] Call Trace:
#   [   41.991063]  <TASK>
#   [   41.991163]  migrate_folio_move+0x75/0x330
#   [   41.991299]  ? __pfx_remove_migration_pte+0x10/0x10
#   [   41.991382]  migrate_pages_batch+0x8d7/0xaf0
#   [   41.991453]  ? __pfx_compaction_free+0x10/0x10
#   [   41.991530]  migrate_pages_sync+0x98/0x240
#   [   41.991593]  ? __pfx_compaction_alloc+0x10/0x10
#   [   41.991661]  ? __pfx_compaction_free+0x10/0x10
#   [   41.991727]  ? sysvec_apic_timer_interrupt+0xe/0x90
#   [   41.991810]  migrate_pages+0xa5b/0xb10
#   [   41.991869]  ? __pfx_compaction_alloc+0x10/0x10
#   [   41.991936]  ? __pfx_compaction_free+0x10/0x10
#   [   41.992002]  ? isolate_migratepages_block+0x332/0x13d0
#   [   41.992084]  compact_zone+0x9d3/0x1020
#   [   41.992150]  compact_node+0xa9/0x120
#   [   41.992222]  sysctl_compaction_handler+0x58/0xa0
#   [   41.992291]  proc_sys_call_handler+0x1c7/0x2e0
#   [   41.992368]  vfs_write+0x28c/0x440
#   [   41.992429]  ksys_write+0x6d/0xf0
