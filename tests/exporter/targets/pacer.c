/* Test target for the exporter: writes a known number of distinct pages per second.
 *
 * pacer NPAGES RATE [SECONDS]
 *   Maps NPAGES anonymous pages, prints "ready <pid>", then every 10 ms (on an absolute
 *   CLOCK_MONOTONIC schedule) writes one byte to the next RATE/100 pages of the buffer,
 *   round robin: RATE pages per second, each page written once per NPAGES/RATE seconds, so
 *   any interval shorter than that holds RATE * its length distinct pages. Exits 0 after
 *   SECONDS (default: never).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: pacer NPAGES RATE [SECONDS]\n"); return 2; }
    long ps = sysconf(_SC_PAGESIZE);
    long n = atol(argv[1]), rate = atol(argv[2]);
    double seconds = argc > 3 ? atof(argv[3]) : -1;
    volatile char *buf = mmap(NULL, n * ps, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 2; }
    for (long i = 0; i < n; i++) buf[i * ps] = 1;  /* populate before anyone attaches */
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    long next = 0, ticks = 0, per_tick = rate / 100, extra = rate % 100;
    for (;;) {
        long k = per_tick + (ticks % 100 < extra);  /* RATE per 100 ticks exactly */
        for (long j = 0; j < k; j++) {
            buf[next * ps] += 1;
            next = (next + 1) % n;
        }
        ticks++;
        if (seconds >= 0 && ticks >= seconds * 100) return 0;
        t.tv_nsec += 10 * 1000 * 1000;
        if (t.tv_nsec >= 1000000000) { t.tv_nsec -= 1000000000; t.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
    }
}
