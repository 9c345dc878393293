/* Test target for process tracking (writewatch.attach / writewatch.launch).
 *
 * writer interactive NPAGES
 *   Maps NPAGES anonymous pages, prints "base 0x<addr> <npages> <page_size>", then obeys one
 *   command per stdin line, answering each with one line:
 *     w I J K ...   write one byte to pages I, J, K of the buffer         -> "ok"
 *     m N           mmap N new pages, write all of them                   -> "map 0x<addr> N"
 *     a K           write every K-th page of the last mmap'd region       -> "ok"
 *     u             munmap the last mmap'd region                         -> "ok"
 *     r             mremap (move) the last mmap'd region elsewhere        -> "moved 0x<addr>"
 *     f I ...       fork: the child writes pages I... and exits 0; the parent waits and
 *                   writes the same pages                                  -> "fork <status>"
 *     x             exec this program again (interactive, same NPAGES)     -> (new "base" line)
 *     U N           mmap N pages and register them with a userfaultfd of its own (MISSING
 *                   mode; never touched afterwards)                        -> "uffd 0x<addr> N"
 *     s MS          nanosleep(2) for MS milliseconds (relative: an interruption restarts
 *                   through restart_syscall with the time left)  -> "slept <ms> <rc> <errno>"
 *     p MS          read(2) one byte from a pipe that a thread writes to after MS ms
 *                   (an interruption restarts the read: -ERESTARTSYS)
 *                                                           -> "read <ms> <rc> <errno>"
 *     q             exit 0
 *
 * writer selfcheck NPAGES SECONDS
 *   Two threads write a known pattern into their half of NPAGES pages and verify all of it
 *   every round, call sleeping and blocking system calls between rounds (nanosleep, a read
 *   on a pipe with a poll timeout, getppid) and check every result strictly (an
 *   -ERESTART* leak, an EINTR without a handler, a lost register or a lost write all fail).
 *   Prints "PASS <rounds>" and exits 0, or prints "FAIL <why>" and exits 1.
 *   SECONDS < 0: no time limit; a third thread reads stdin, answers "r" with
 *   "rounds <n>" and ends the check at "q" or end of file (a test then waits on progress,
 *   not on a duration that a slow machine might not fit its steps into).
 *
 * Debian 12 headers are Linux 6.1: nothing newer is used here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long ps;
static char *self_path;

static void *map_pages(long n) {
    void *p = mmap(NULL, n * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    return p;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

struct late_write { int fds[2]; long ms; };

static void *write_late(void *arg) {
    struct late_write *lw = arg;
    struct timespec t = {lw->ms / 1000, (lw->ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) && errno == EINTR) {}
    if (write(lw->fds[1], "x", 1) != 1) perror("write");
    return NULL;
}

static int interactive(long npages) {
    volatile char *buf = map_pages(npages);
    char *last = NULL; long last_n = 0;
    char line[65536];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("base %p %ld %ld\n", (void *)buf, npages, ps);
    while (fgets(line, sizeof line, stdin)) {
        char *p = line + 1;
        char *end;
        switch (line[0]) {
        case 'w':
            for (long i = strtol(p, &end, 10); end != p; i = strtol(p, &end, 10)) {
                p = end;
                if (i >= 0 && i < npages) buf[i * ps + (i % 64)]++;
            }
            puts("ok");
            break;
        case 'm':
            last_n = strtol(p, NULL, 10);
            last = map_pages(last_n);
            for (long i = 0; i < last_n; i++) last[i * ps] = 1;
            printf("map %p %ld\n", (void *)last, last_n);
            break;
        case 'a': {
            long k = strtol(p, NULL, 10);
            if (k < 1) k = 1;
            for (long i = 0; i < last_n; i += k) last[i * ps]++;
            puts("ok");
            break;
        }
        case 'u':
            munmap(last, last_n * ps);
            last = NULL;
            puts("ok");
            break;
        case 'r': {
            /* reserve a new place, then move the region over it */
            char *dst = map_pages(last_n + 2) + ps;
            char *moved = mremap(last, last_n * ps, last_n * ps, MREMAP_MAYMOVE | MREMAP_FIXED,
                                 dst);
            if (moved == MAP_FAILED) { perror("mremap"); exit(2); }
            last = moved;
            printf("moved %p\n", (void *)moved);
            break;
        }
        case 'f': {
            long idx[4096]; int k = 0;
            for (long i = strtol(p, &end, 10); end != p && k < 4096; i = strtol(p, &end, 10)) {
                p = end;
                idx[k++] = i;
            }
            fflush(stdout);
            pid_t c = fork();
            if (c == 0) {
                for (int j = 0; j < k; j++) buf[idx[j] * ps + 1] += 2;
                _exit(0);
            }
            int st = -1;
            waitpid(c, &st, 0);
            for (int j = 0; j < k; j++) buf[idx[j] * ps + 2] += 3;
            printf("fork %d\n", st);
            break;
        }
        case 'x': {
            char n[32];
            snprintf(n, sizeof n, "%ld", npages);
            fflush(stdout);
            execl("/proc/self/exe", self_path, "interactive", n, (char *)NULL);
            perror("exec");
            exit(2);
        }
        case 'U': {
            long n = strtol(p, NULL, 10);
            char *r = map_pages(n);
            int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
            struct uffdio_api api = {.api = UFFD_API};
            struct uffdio_register reg = {.range = {(unsigned long)r, n * ps},
                                          .mode = UFFDIO_REGISTER_MODE_MISSING};
            if (fd < 0 || ioctl(fd, UFFDIO_API, &api) || ioctl(fd, UFFDIO_REGISTER, &reg)) {
                perror("userfaultfd");
                exit(2);
            }
            printf("uffd %p %ld\n", (void *)r, n);
            break;
        }
        case 's': {
            long ms = strtol(p, NULL, 10);
            struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
            double t0 = now();
            int rc = nanosleep(&t, NULL);
            int err = rc ? errno : 0;
            printf("slept %.0f %d %d\n", (now() - t0) * 1e3, rc, err);
            break;
        }
        case 'p': {
            static struct late_write lw;
            if (pipe(lw.fds)) { perror("pipe"); exit(2); }
            lw.ms = strtol(p, NULL, 10);
            pthread_t th;
            pthread_create(&th, NULL, write_late, &lw);
            char c;
            double t0 = now();
            ssize_t rc = read(lw.fds[0], &c, 1);
            int err = rc < 0 ? errno : 0;
            pthread_join(th, NULL);
            close(lw.fds[0]);
            close(lw.fds[1]);
            printf("read %.0f %zd %d\n", (now() - t0) * 1e3, rc, err);
            break;
        }
        case 'q':
            return 0;
        }
    }
    return 0;
}

/* -- selfcheck ------------------------------------------------------------------------- */
static volatile int stop_now;

struct worker {
    volatile uint64_t *base;
    long npages;
    double seconds;
    long rounds;
    const char *fail;
    int pipe_r;
};

#define CHECK(cond, why) do { if (!(cond)) { w->fail = why; return NULL; } } while (0)

static void *work(void *arg) {
    struct worker *w = arg;
    long words = ps / 8;
    double stop = w->seconds < 0 ? 1e300 : now() + w->seconds;
    uint64_t acc = 0x9e3779b97f4a7c15ULL;
    while (!stop_now && now() < stop) {
        uint64_t r = (uint64_t)w->rounds;
        for (long i = 0; i < w->npages; i++)
            w->base[i * words + (r % words)] = r * 1000003ULL + i;
        for (long i = 0; i < w->npages; i++) {
            CHECK(w->base[i * words + (r % words)] == r * 1000003ULL + i, "lost write");
            if (r) {
                long o = (r - 1) % words;
                if (o != (long)(r % words))
                    CHECK(w->base[i * words + o] == (r - 1) * 1000003ULL + i, "lost write");
            }
        }
        /* a value carried in registers across system calls */
        uint64_t before = acc;
        acc = acc * 6364136223846793005ULL + 1442695040888963407ULL;
        struct timespec t = {0, 200000};
        CHECK(nanosleep(&t, NULL) == 0, "nanosleep failed");
        struct pollfd pfd = {w->pipe_r, POLLIN, 0};
        int pr = poll(&pfd, 1, 1);
        CHECK(pr == 0, "poll on an empty pipe did not time out");
        CHECK(getppid() > 0, "getppid");
        CHECK(acc == before * 6364136223846793005ULL + 1442695040888963407ULL, "register lost");
        w->rounds++;
    }
    return NULL;
}

static void *control(void *arg) {
    struct worker *w = arg;
    char line[64];
    while (fgets(line, sizeof line, stdin) && line[0] != 'q')
        if (line[0] == 'r') printf("rounds %ld\n", w[0].rounds + w[1].rounds);
    stop_now = 1;
    return NULL;
}

static int selfcheck(long npages, double seconds) {
    volatile uint64_t *buf = map_pages(npages);
    int fds[2];
    if (pipe(fds)) { perror("pipe"); return 2; }
    struct worker w[2] = {
        {buf, npages / 2, seconds, 0, NULL, fds[0]},
        {buf + (npages / 2) * (ps / 8), npages - npages / 2, seconds, 0, NULL, fds[0]},
    };
    pthread_t th;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    pthread_t ctl;
    if (seconds < 0) pthread_create(&ctl, NULL, control, w);
    pthread_create(&th, NULL, work, &w[1]);
    work(&w[0]);
    pthread_join(th, NULL);
    if (seconds < 0) pthread_join(ctl, NULL);
    for (int i = 0; i < 2; i++)
        if (w[i].fail) { printf("FAIL %s (thread %d, round %ld)\n", w[i].fail, i, w[i].rounds);
                         return 1; }
    printf("PASS %ld\n", w[0].rounds + w[1].rounds);
    return 0;
}

int main(int argc, char **argv) {
    ps = sysconf(_SC_PAGESIZE);
    self_path = argv[0];
    if (argc >= 3 && !strcmp(argv[1], "interactive")) return interactive(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "selfcheck")) return selfcheck(atol(argv[2]), atof(argv[3]));
    fprintf(stderr, "usage: %s interactive NPAGES | selfcheck NPAGES SECONDS\n", argv[0]);
    return 2;
}
