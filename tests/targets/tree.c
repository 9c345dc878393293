/* Test target for process trees (writewatch.attach(tree=..., follow_forks=...)).
 *
 * tree NPAGES [SHMPATH]
 *   Maps NPAGES pages of MAP_SHARED memory (anonymous, or the file SHMPATH, e.g. in /dev/shm)
 *   and NPAGES private anonymous pages, prints
 *   "base 0x<shared> 0x<private> <npages> <page_size>", then obeys one command per stdin
 *   line, answering each with one line:
 *     w I J ...      write shared pages I, J...                                 -> "ok"
 *     p I J ...      write private pages I, J...                                -> "ok"
 *     F              fork a child that obeys "c" commands relayed to it         -> "child <pid>"
 *     c PID w|p I..  the child PID writes shared (w) or private (p) pages        -> "ok"
 *     c PID F        the child PID forks a grandchild obeying "c" commands       -> "child <pid>"
 *     c PID x        the child PID execs "/bin/sleep 30"                          -> "ok"
 *     k PID          the child PID exits (0); reaped                            -> "ok"
 *     s I J ...      fork a child that writes shared pages I, J... and exits; reaped
 *                                                                               -> "ok <pid>"
 *     q              kill the children, exit 0
 * A child runs "c" commands read from its own pipe and acknowledges each on another.
 * Debian 12 headers are Linux 6.1: nothing newer is used here.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static long ps, npages;
static volatile char *shared, *priv;

struct child { pid_t pid; int cmd; int ack; };
static struct child kids[64];
static int nkids;

static void write_pages(volatile char *buf, char *p) {
    char *end;
    for (long i = strtol(p, &end, 10); end != p; i = strtol(p, &end, 10)) {
        p = end;
        if (i >= 0 && i < npages) buf[i * ps + (i % 64)]++;
    }
}

static void child_loop(int cmd, int ack);

/* fork a commanded child; returns its pid (in the parent) */
static pid_t spawn(void) {
    int c[2], a[2];
    if (pipe(c) || pipe(a)) { perror("pipe"); exit(2); }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        close(c[1]); close(a[0]);
        nkids = 0;
        child_loop(c[0], a[1]);
        _exit(0);
    }
    close(c[0]); close(a[1]);
    kids[nkids++] = (struct child){pid, c[1], a[0]};
    return pid;
}

static struct child *find(pid_t pid) {
    for (int i = 0; i < nkids; i++) if (kids[i].pid == pid) return &kids[i];
    return NULL;
}

/* relay "rest" to child pid and copy its one-line answer into out */
static int relay(pid_t pid, const char *rest, char *out, size_t n) {
    struct child *k = find(pid);
    if (!k) return -1;
    if (write(k->cmd, rest, strlen(rest)) < 0) return -1;
    size_t got = 0;
    while (got + 1 < n) {
        ssize_t r = read(k->ack, out + got, 1);
        if (r <= 0) return -1;
        if (out[got++] == '\n') break;
    }
    out[got] = 0;
    return 0;
}

static int handle(char *line, char *out, size_t n) {
    char *p = line + 1;
    switch (line[0]) {
    case 'w': write_pages(shared, p); snprintf(out, n, "ok\n"); return 0;
    case 'p': write_pages(priv, p); snprintf(out, n, "ok\n"); return 0;
    case 'F': snprintf(out, n, "child %d\n", (int)spawn()); return 0;
    case 'c': {
        char *end;
        pid_t pid = (pid_t)strtol(p, &end, 10);
        while (*end == ' ') end++;
        if (relay(pid, end, out, n)) snprintf(out, n, "error no child %d\n", (int)pid);
        return 0;
    }
    case 'k': {
        pid_t pid = (pid_t)strtol(p, NULL, 10);
        struct child *k = find(pid);
        if (k) { close(k->cmd); waitpid(pid, NULL, 0); close(k->ack); k->pid = -1; }
        snprintf(out, n, "ok\n");
        return 0;
    }
    case 's': {
        pid_t pid = fork();
        if (pid == 0) { write_pages(shared, p); _exit(0); }
        waitpid(pid, NULL, 0);
        snprintf(out, n, "ok %d\n", (int)pid);
        return 0;
    }
    case 'x':
        execl("/bin/sleep", "sleep", "30", (char *)NULL);
        snprintf(out, n, "error exec\n");
        return 0;
    }
    snprintf(out, n, "error unknown command\n");
    return 0;
}

static void child_loop(int cmd, int ack) {
    FILE *in = fdopen(cmd, "r");
    char line[4096], out[256];
    while (fgets(line, sizeof line, in)) {
        if (line[0] == 'x') {
            if (write(ack, "ok\n", 3) < 0) _exit(3);
        }
        handle(line, out, sizeof out);
        if (write(ack, out, strlen(out)) < 0) _exit(3);
    }
}

int main(int argc, char **argv) {
    ps = sysconf(_SC_PAGESIZE);
    if (argc < 3 || strcmp(argv[1], "tree")) {
        fprintf(stderr, "usage: %s tree NPAGES [SHMPATH]\n", argv[0]);
        return 2;
    }
    npages = atol(argv[2]);
    int fd = -1, flags = MAP_SHARED | MAP_ANONYMOUS;
    if (argc >= 4) {
        fd = open(argv[3], O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, npages * ps)) { perror(argv[3]); return 2; }
        flags = MAP_SHARED;
    }
    shared = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE, flags, fd, 0);
    priv = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED || priv == MAP_FAILED) { perror("mmap"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("base %p %p %ld %ld\n", (void *)shared, (void *)priv, npages, ps);
    char line[4096], out[256];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'q') break;
        handle(line, out, sizeof out);
        fputs(out, stdout);
    }
    for (int i = 0; i < nkids; i++)
        if (kids[i].pid > 0) { kill(kids[i].pid, SIGKILL); waitpid(kids[i].pid, NULL, 0); }
    return 0;
}
