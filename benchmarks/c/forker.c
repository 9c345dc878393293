/* fork latency: forker N — N times: fork a child that exits at once, wait for it; prints the
 * median microseconds of one fork+exit+wait and of the fork() call alone in the parent. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 200;
    /* some memory, shared and private, as a real program has */
    size_t len = 16 << 20;
    char *priv = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *shared = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(priv, 1, len);
    memset(shared, 1, len);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getchar() == EOF) return 0; /* go */
    double *t = malloc(n * sizeof *t), *f = malloc(n * sizeof *f);
    for (int i = 0; i < n; i++) {
        double a = now();
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        double b = now();
        waitpid(pid, NULL, 0);
        t[i] = now() - a;
        f[i] = b - a;
    }
    qsort(t, n, sizeof *t, cmp);
    qsort(f, n, sizeof *f, cmp);
    printf("%.1f %.1f\n", t[n / 2], f[n / 2]);
    return 0;
}
