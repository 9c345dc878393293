// SPDX-License-Identifier: MIT
/*
 * Baseline for benchmarks/bench_core.py: the minimal C program doing what
 * writewatch's collect() does on a userfaultfd async write-protect range: one
 * PAGEMAP_SCAN get + write-protect (category_mask = return_mask = WRITTEN,
 * PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) resumed from walk_end while the
 * result buffer fills up.
 *
 * Modes:
 *   scan_bench serve BYTES VEC_LEN
 *       Map BYTES of anonymous memory, populate it (MADV_POPULATE_WRITE), register
 *       it for async WP and arm it; print "ready". Then, per stdin line
 *       "round STRIDE OFFSET": write one byte to every STRIDE-th page from OFFSET,
 *       time the get+WP walk, print "NS REGIONS PAGES".
 *   scan_bench writer NPAGES REPS
 *       Per repetition, time a first write to each of NPAGES armed pages and to each
 *       of NPAGES untracked (populated, writable) pages; print "ARMED_NS PLAIN_NS".
 *
 * Built as a shared object too, ww_collect() is the same walk called in-process
 * (through ctypes), which separates the library's own overhead from differences
 * between two processes.
 *
 * Debian 12 ships 6.1 uapi headers, which predate PAGEMAP_SCAN and WP_ASYNC
 * (6.7), so those definitions are spelled out here from include/uapi/linux/fs.h
 * and include/uapi/linux/userfaultfd.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

/* include/uapi/linux/userfaultfd.h (6.4, 6.7) */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

/* include/uapi/linux/fs.h (6.7) */
struct ww_page_region {
	uint64_t start;
	uint64_t end;
	uint64_t categories;
};

struct ww_pm_scan_arg {
	uint64_t size;
	uint64_t flags;
	uint64_t start;
	uint64_t end;
	uint64_t walk_end;
	uint64_t vec;
	uint64_t vec_len;
	uint64_t max_pages;
	uint64_t category_inverted;
	uint64_t category_mask;
	uint64_t category_anyof_mask;
	uint64_t return_mask;
};

#define WW_PAGEMAP_SCAN _IOWR('f', 16, struct ww_pm_scan_arg)
#define WW_PM_SCAN_WP_MATCHING (1ULL << 0)
#define WW_PM_SCAN_CHECK_WPASYNC (1ULL << 1)
#define WW_PAGE_IS_WRITTEN (1ULL << 1)

/* include/uapi/asm-generic/mman-common.h (5.14) */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static long page_size;

static void die(const char *what)
{
	fprintf(stderr, "scan_bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int uffd_async(void)
{
	struct uffdio_api api = {
		.api = UFFD_API,
		.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
	};
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		die("userfaultfd");
	if (ioctl(fd, UFFDIO_API, &api))
		die("UFFDIO_API (WP_ASYNC needs Linux 6.7)");
	return fd;
}

static void uffd_register_wp(int uffd, char *addr, size_t len)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)addr, .len = len },
		.mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};

	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		die("UFFDIO_REGISTER");
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
		die("UFFDIO_WRITEPROTECT");
}

/* Get the written pages and write-protect them again; returns the region count. */
long ww_collect(int pagemap, char *addr, size_t len, struct ww_page_region *vec,
		uint64_t vec_len, uint64_t *pages)
{
	uint64_t pos = (uintptr_t)addr, end = (uintptr_t)addr + len;
	long total = 0;

	if (!page_size)
		page_size = sysconf(_SC_PAGESIZE);

	for (;;) {
		struct ww_pm_scan_arg arg = {
			.size = sizeof(arg),
			.flags = WW_PM_SCAN_WP_MATCHING | WW_PM_SCAN_CHECK_WPASYNC,
			.start = pos,
			.end = end,
			.vec = (uintptr_t)vec,
			.vec_len = vec_len,
			.category_mask = WW_PAGE_IS_WRITTEN,
			.return_mask = WW_PAGE_IS_WRITTEN,
		};
		long n = ioctl(pagemap, WW_PAGEMAP_SCAN, &arg);

		if (n < 0)
			die("PAGEMAP_SCAN (needs Linux 6.7)");
		for (long i = 0; i < n; i++)
			*pages += (vec[i].end - vec[i].start) / page_size;
		total += n;
		if (arg.walk_end >= end || (uint64_t)n < vec_len)
			break;
		pos = arg.walk_end;
	}
	return total;
}

static char *map_populated(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap");
	madvise(p, len, MADV_NOHUGEPAGE);
	if (madvise(p, len, MADV_POPULATE_WRITE))
		memset(p, 0, len);
	return p;
}

static int serve(size_t len, uint64_t vec_len)
{
	struct ww_page_region *vec = calloc(vec_len, sizeof(*vec));
	char *mem = map_populated(len);
	int uffd = uffd_async();
	int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	size_t npages = len / page_size;
	char line[128];
	uint64_t pages = 0;

	if (!vec || pagemap < 0)
		die("setup");
	uffd_register_wp(uffd, mem, len);
	ww_collect(pagemap, mem, len, vec, vec_len, &pages);
	printf("ready\n");
	fflush(stdout);

	while (fgets(line, sizeof(line), stdin)) {
		unsigned long stride, offset;
		uint64_t t0, t1;
		long regions;

		if (sscanf(line, "round %lu %lu", &stride, &offset) != 2 || !stride)
			break;
		for (size_t i = offset % stride; i < npages; i += stride)
			mem[i * page_size]++;
		pages = 0;
		t0 = now_ns();
		regions = ww_collect(pagemap, mem, len, vec, vec_len, &pages);
		t1 = now_ns();
		printf("%llu %ld %llu\n", (unsigned long long)(t1 - t0), regions,
		       (unsigned long long)pages);
		fflush(stdout);
	}
	close(pagemap);
	close(uffd);
	munmap(mem, len);
	free(vec);
	return 0;
}

static int writer(size_t npages, int reps)
{
	size_t len = npages * page_size;
	struct ww_page_region *vec = calloc(4096, sizeof(*vec));
	char *armed = map_populated(len);
	char *plain = map_populated(len);
	int uffd = uffd_async();
	int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t pages = 0;

	if (!vec || pagemap < 0)
		die("setup");
	uffd_register_wp(uffd, armed, len);
	for (int r = 0; r < reps; r++) {
		uint64_t t0, t1, t2;

		ww_collect(pagemap, armed, len, vec, 4096, &pages); /* re-arm every page */
		t0 = now_ns();
		for (size_t i = 0; i < npages; i++)
			((volatile char *)armed)[i * page_size]++;
		t1 = now_ns();
		for (size_t i = 0; i < npages; i++)
			((volatile char *)plain)[i * page_size]++;
		t2 = now_ns();
		printf("%llu %llu\n", (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
	}
	close(pagemap);
	close(uffd);
	munmap(armed, len);
	munmap(plain, len);
	free(vec);
	return 0;
}

int main(int argc, char **argv)
{
	page_size = sysconf(_SC_PAGESIZE);
	if (argc == 4 && !strcmp(argv[1], "serve"))
		return serve(strtoull(argv[2], NULL, 0), strtoull(argv[3], NULL, 0));
	if (argc == 4 && !strcmp(argv[1], "writer"))
		return writer(strtoull(argv[2], NULL, 0), atoi(argv[3]));
	fprintf(stderr, "usage: scan_bench serve BYTES VEC_LEN | writer NPAGES REPS\n");
	return 2;
}
