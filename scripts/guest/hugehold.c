/* hugehold: hold hugetlb folios in use, then sleep forever.
 *
 * usage: hugehold ANON_PAGES [FILE FILE_PAGES]
 * Maps ANON_PAGES default-size huge pages anonymously (MAP_HUGETLB,
 * private) and, with FILE (on a hugetlbfs mount), FILE_PAGES huge pages of
 * that file shared; touches every page, then prints one line per page:
 *   hold anon|file <pfn hex>
 * (pfn from /proc/self/pagemap), then "hold_done", and pauses.
 * The huge page size is taken from /proc/meminfo (Hugepagesize).
 *
 * usage: hugehold -f FILE PAGES
 * Allocates PAGES huge pages of FILE (on a hugetlbfs mount; the page size
 * is the mount's) with fallocate(2): they stay in use, in the file's page
 * cache, with no process holding them.  Then maps the file read-only to
 * learn the pfns, prints "hold file <pfn hex>" per page and "hold_done",
 * unmaps and exits 0.  Removing the file frees the pages.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/vfs.h>
#include <unistd.h>

static long hugepagesize(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long kb = 2048;
	if (!f)
		return kb * 1024;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Hugepagesize: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb * 1024;
}

static void report(const char *kind, char *p, long n, long sz)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	for (long i = 0; i < n; i++) {
		uint64_t e = 0;
		uintptr_t va = (uintptr_t)(p + i * sz);
		if (fd < 0 || pread(fd, &e, 8, (off_t)(va / 4096 * 8)) != 8)
			e = 0;
		if (e & (1ULL << 63))
			printf("hold %s 0x%llx\n", kind, (unsigned long long)(e & ((1ULL << 55) - 1)));
		else
			printf("hold %s none\n", kind);
	}
	if (fd >= 0)
		close(fd);
}

static int falloc(const char *path, long n)
{
	struct statfs st;
	volatile char *p;
	char *m;
	long sz;
	int fd = open(path, O_RDWR | O_CREAT, 0600);

	if (fd < 0 || fstatfs(fd, &st) < 0) {
		perror("hugehold: open");
		return 1;
	}
	sz = st.f_bsize;
	if (fallocate(fd, 0, 0, (off_t)n * sz) < 0) {
		perror("hugehold: fallocate");
		return 1;
	}
	m = mmap(NULL, n * sz, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		perror("hugehold: mmap file");
		return 1;
	}
	p = m;
	for (long i = 0; i < n; i++)
		(void)p[i * sz];
	report("file", m, n, sz);
	munmap(m, n * sz);
	close(fd);
	printf("hold_done\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "-f") == 0)
		return falloc(argv[2], atol(argv[3]));
	long sz = hugepagesize();
	long nanon = argc > 1 ? atol(argv[1]) : 0;
	long nfile = argc > 3 ? atol(argv[3]) : 0;
	char *a = NULL, *f = NULL;

	if (nanon > 0) {
		a = mmap(NULL, nanon * sz, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (a == MAP_FAILED) {
			perror("hugehold: mmap anon");
			return 1;
		}
		for (long i = 0; i < nanon; i++)
			memset(a + i * sz, 0xa5, 4096);
	}
	if (nfile > 0) {
		int fd = open(argv[2], O_RDWR | O_CREAT, 0600);
		if (fd < 0) {
			perror("hugehold: open");
			return 1;
		}
		if (ftruncate(fd, nfile * sz) < 0) {
			perror("hugehold: ftruncate");
			return 1;
		}
		f = mmap(NULL, nfile * sz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (f == MAP_FAILED) {
			perror("hugehold: mmap file");
			return 1;
		}
		for (long i = 0; i < nfile; i++)
			memset(f + i * sz, 0x5a, 4096);
	}
	if (a)
		report("anon", a, nanon, sz);
	if (f)
		report("file", f, nfile, sz);
	printf("hold_done\n");
	fflush(stdout);
	for (;;)
		pause();
}
