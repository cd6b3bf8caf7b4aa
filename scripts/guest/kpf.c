/* kpf: list the hugetlb folios of the running kernel from /proc/kpageflags.
 *
 * Prints one line per hugetlb folio head (KPF_HUGE and KPF_COMPOUND_HEAD):
 *   kpf <pfn hex> <flags hex> <nr_pages>
 * nr_pages counts the head plus the hugetlb tail pfns (KPF_HUGE and
 * KPF_COMPOUND_TAIL) that follow it.  And one line per other pfn the kernel
 * calls hugetlb (KPF_HUGE: folio_test_hugetlb() of its folio) outside those
 * runs, at most 4096 (a hugetlb page type left where no folio is):
 *   kpf_lone <pfn hex> <flags hex>
 * Reads nothing but /proc/kpageflags.
 * Built static at initramfs build time (scripts/testbed/initramfs.py).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_HUGE 17
#define CHUNK 65536

int main(void)
{
	static uint64_t buf[CHUNK];
	const uint64_t head = (1ULL << KPF_HUGE) | (1ULL << KPF_COMPOUND_HEAD);
	const uint64_t tail = (1ULL << KPF_HUGE) | (1ULL << KPF_COMPOUND_TAIL);
	int fd = open("/proc/kpageflags", O_RDONLY);
	uint64_t pfn = 0, cur_pfn = 0, cur_flags = 0, cur_n = 0, nheads = 0, nlone = 0;
	int have = 0;

	if (fd < 0) {
		perror("kpf: /proc/kpageflags");
		return 1;
	}
	for (;;) {
		ssize_t n = pread(fd, buf, sizeof(buf), (off_t)(pfn * 8));
		if (n < 0) {
			perror("kpf: read");
			return 1;
		}
		if (n == 0)
			break;
		for (size_t i = 0; i < (size_t)n / 8; i++, pfn++) {
			uint64_t f = buf[i];
			if (have && (f & tail) == tail) {
				cur_n++;
				continue;
			}
			if (have) {
				printf("kpf 0x%llx 0x%llx %llu\n", (unsigned long long)cur_pfn,
				       (unsigned long long)cur_flags, (unsigned long long)cur_n);
				have = 0;
			}
			if ((f & head) == head) {
				have = 1;
				cur_pfn = pfn;
				cur_flags = f;
				cur_n = 1;
				nheads++;
			} else if ((f & (1ULL << KPF_HUGE)) && nlone++ < 4096) {
				printf("kpf_lone 0x%llx 0x%llx\n", (unsigned long long)pfn,
				       (unsigned long long)f);
			}
		}
	}
	if (have)
		printf("kpf 0x%llx 0x%llx %llu\n", (unsigned long long)cur_pfn,
		       (unsigned long long)cur_flags, (unsigned long long)cur_n);
	printf("kpf_scanned %llu %llu %llu\n", (unsigned long long)pfn, (unsigned long long)nheads,
	       (unsigned long long)nlone);
	return 0;
}
