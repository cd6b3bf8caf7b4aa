/* hugetorture: the torture run's guest helper (scripts/testbed/torture.py).
 *
 * Each subcommand is one kernel path on hugetlb folios that sysfs alone
 * cannot reach.  FILE is a file on a hugetlbfs mount (its page size is the
 * mount's); page numbers count huge pages.  Every subcommand prints what it
 * did and exits 0 if the kernel accepted it, else prints the errno name and
 * exits 1 (a refusal is a normal outcome of a torture step).
 *
 *   hugetorture fault FILE N          map N pages of FILE shared, touch them, unmap
 *   hugetorture falloc FILE OFF N     fallocate N pages at OFF
 *   hugetorture punch FILE OFF N      fallocate(PUNCH_HOLE|KEEP_SIZE) N pages at OFF
 *   hugetorture truncate FILE N       ftruncate to N pages
 *   hugetorture hold FILE N           map N pages shared, touch, print pfns, pause
 *                                     (run in the background; kill to unmap)
 *   hugetorture move FILE NODE        map FILE, move_pages() every page to NODE, unmap
 *   hugetorture mbind FILE NODE       map FILE, mbind(MPOL_BIND, MPOL_MF_MOVE_ALL) to NODE
 *   hugetorture madv FILE PAGE soft|hwpoison
 *                                     map FILE, touch PAGE, madvise MADV_SOFT_OFFLINE
 *                                     or MADV_HWPOISON on it, unmap
 *   hugetorture pfns FILE             map FILE read-only, print "pfn <hex>" per page
 *   hugetorture hog MB                allocate and touch MB MiB anonymous memory, pause
 *                                     (memory pressure; kill to release)
 *
 * Static, libc only (no libnuma): the NUMA calls are raw syscalls.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif
#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#define MPOL_BIND 2
#define MPOL_MF_MOVE (1 << 1)
#define MPOL_MF_MOVE_ALL (1 << 2)
#define MPOL_MF_STRICT (1 << 0)

static int fail(const char *what)
{
	int e = errno;
	printf("%s: %s (errno %d)\n", what, strerrorname_np(e) ? strerrorname_np(e) : strerror(e), e);
	return 1;
}

static long psize(int fd)
{
	struct statfs st;
	if (fstatfs(fd, &st) < 0)
		return -1;
	return st.f_bsize;
}

static int openf(const char *path, long *sz)
{
	int fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd < 0)
		return -1;
	*sz = psize(fd);
	return fd;
}

static long npages(int fd, long sz)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -1;
	return st.st_size / sz;
}

static char *map(int fd, long len, int prot)
{
	char *p = mmap(NULL, len, prot, MAP_SHARED, fd, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void print_pfns(char *p, long n, long sz)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	for (long i = 0; i < n; i++) {
		uint64_t e = 0;
		uintptr_t va = (uintptr_t)(p + i * sz);
		if (fd < 0 || pread(fd, &e, 8, (off_t)(va / 4096 * 8)) != 8)
			e = 0;
		if (e & (1ULL << 63))
			printf("pfn 0x%llx\n", (unsigned long long)(e & ((1ULL << 55) - 1)));
		else
			printf("pfn none\n");
	}
	if (fd >= 0)
		close(fd);
}

static int touch(char *p, long n, long sz)
{
	for (long i = 0; i < n; i++)
		((volatile char *)p)[i * sz] = 1;
	return 0;
}

int main(int argc, char **argv)
{
	long sz, n, off;
	int fd;
	char *p;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 3) {
		fprintf(stderr, "usage: see hugetorture.c\n");
		return 2;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "hog")) {
		long mb = atol(argv[2]);
		FILE *f = fopen("/proc/self/oom_score_adj", "w");
		if (f) {
			fputs("1000\n", f);
			fclose(f);
		}
		char *m = mmap(NULL, mb << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return fail("mmap");
		for (long i = 0; i < (mb << 20); i += 4096)
			m[i] = 1;
		printf("hog %ld MiB\nhold_done\n", mb);
		for (;;)
			pause();
	}
	fd = openf(argv[2], &sz);
	if (fd < 0 || sz < 0)
		return fail("open");
	if (!strcmp(cmd, "falloc") || !strcmp(cmd, "punch")) {
		if (argc < 5)
			return 2;
		off = atol(argv[3]);
		n = atol(argv[4]);
		int mode = !strcmp(cmd, "punch") ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : 0;
		if (fallocate(fd, mode, (off_t)off * sz, (off_t)n * sz) < 0)
			return fail(cmd);
		printf("%s %ld+%ld ok, file %ld pages\n", cmd, off, n, npages(fd, sz));
		return 0;
	}
	if (!strcmp(cmd, "truncate")) {
		n = atol(argv[3]);
		if (ftruncate(fd, (off_t)n * sz) < 0)
			return fail("ftruncate");
		printf("truncate %ld ok\n", n);
		return 0;
	}
	if (!strcmp(cmd, "fault") || !strcmp(cmd, "hold")) {
		n = atol(argv[3]);
		if (npages(fd, sz) < n && ftruncate(fd, (off_t)n * sz) < 0)
			return fail("ftruncate");
		p = map(fd, n * sz, PROT_READ | PROT_WRITE);
		if (!p)
			return fail("mmap");
		/* A fault that finds no huge page is SIGBUS: print it, exit 1. */
		signal(SIGBUS, (void (*)(int))exit);
		touch(p, n, sz);
		print_pfns(p, n, sz);
		if (!strcmp(cmd, "hold")) {
			printf("hold_done\n");
			for (;;)
				pause();
		}
		munmap(p, n * sz);
		printf("fault %ld ok\n", n);
		return 0;
	}
	if (!strcmp(cmd, "pfns")) {
		n = npages(fd, sz);
		if (n <= 0) {
			printf("empty\n");
			return 0;
		}
		p = mmap(NULL, n * sz, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
		if (p == MAP_FAILED)
			return fail("mmap");
		print_pfns(p, n, sz);
		return 0;
	}
	if (!strcmp(cmd, "move") || !strcmp(cmd, "mbind")) {
		int node = atoi(argv[3]);
		n = npages(fd, sz);
		if (n <= 0) {
			printf("empty file\n");
			return 0;
		}
		p = map(fd, n * sz, PROT_READ | PROT_WRITE);
		if (!p)
			return fail("mmap");
		signal(SIGBUS, (void (*)(int))exit);
		touch(p, n, sz);
		if (!strcmp(cmd, "move")) {
			void **pages = calloc(n, sizeof(void *));
			int *nodes = calloc(n, sizeof(int)), *status = calloc(n, sizeof(int));
			for (long i = 0; i < n; i++) {
				pages[i] = p + i * sz;
				nodes[i] = node;
			}
			long r = syscall(SYS_move_pages, 0, n, pages, nodes, status, MPOL_MF_MOVE_ALL);
			if (r < 0)
				return fail("move_pages");
			int moved = 0;
			for (long i = 0; i < n; i++)
				moved += status[i] == node;
			printf("move_pages %ld pages to node %d: %d there, %ld not migrated\n", n, node, moved, r);
		} else {
			unsigned long mask = 1UL << node;
			long r = syscall(SYS_mbind, p, n * sz, MPOL_BIND, &mask, sizeof(mask) * 8,
					 MPOL_MF_MOVE_ALL | MPOL_MF_STRICT);
			if (r < 0)
				return fail("mbind");
			printf("mbind %ld pages to node %d ok\n", n, node);
		}
		print_pfns(p, n, sz);
		munmap(p, n * sz);
		return 0;
	}
	if (!strcmp(cmd, "madv")) {
		if (argc < 5)
			return 2;
		off = atol(argv[3]);
		n = npages(fd, sz);
		if (off >= n) {
			printf("page %ld beyond file (%ld pages)\n", off, n);
			return 1;
		}
		p = map(fd, n * sz, PROT_READ | PROT_WRITE);
		if (!p)
			return fail("mmap");
		signal(SIGBUS, (void (*)(int))exit);
		touch(p + off * sz, 1, sz);
		print_pfns(p + off * sz, 1, sz);
		int adv = !strcmp(argv[4], "hwpoison") ? MADV_HWPOISON : MADV_SOFT_OFFLINE;
		if (madvise(p + off * sz, sz, adv) < 0)
			return fail("madvise");
		printf("madvise %s page %ld ok\n", argv[4], off);
		munmap(p, n * sz);
		return 0;
	}
	fprintf(stderr, "unknown subcommand %s\n", cmd);
	return 2;
}
