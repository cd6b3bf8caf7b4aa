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
