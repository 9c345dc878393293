/* A target that keeps writing, for pre-copy snapshots (tests/snapshot/test_precopy.py).
 *
 * spinner NPAGES HOT DELAY_US
 *   Maps NPAGES anonymous pages and writes every one of them (so all are resident and
 *   non-zero), prints "ready 0x<addr> <npages> <page_size>", then writes forever: one 8-byte
 *   counter into a page of the first HOT pages (HOT = 0: all of them), walking through them
 *   with a stride, sleeping DELAY_US microseconds every 64 writes (0: never). Every write
 *   changes the page (the counter only grows), so a snapshot that missed one is caught by a
 *   comparison with a full read of the same stop.
 *
 * Debian 12 headers are enough: nothing newer than POSIX and mmap is used.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: spinner NPAGES HOT DELAY_US\n");
        return 2;
    }
    long ps = sysconf(_SC_PAGESIZE);
    long npages = atol(argv[1]), hot = atol(argv[2]);
    long delay = atol(argv[3]);
    if (hot <= 0 || hot > npages) hot = npages;
    volatile uint64_t *buf = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 2; }
    long words = ps / 8;
    for (long p = 0; p < npages; p++)
        for (long w = 0; w < words; w += 64) buf[p * words + w] = (uint64_t)p * 2654435761u + 1;
    printf("ready %p %ld %ld\n", (void *)buf, npages, ps);
    fflush(stdout);
    uint64_t counter = 1;
    long stride = 7919 % hot ? 7919 : 1, page = 0;
    struct timespec ts = {0, delay * 1000};
    for (;;) {
        for (int i = 0; i < 64; i++) {
            page = (page + stride) % hot;
            buf[page * words + (counter % words)] = counter;
            counter++;
        }
        if (delay) nanosleep(&ts, NULL);
    }
}
