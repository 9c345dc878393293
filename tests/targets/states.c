/* Targets in states the attach must refuse or survive.
 *
 *   states strict   seccomp strict mode (only read/write/_exit/sigreturn), then block in read
 *   states filter   a seccomp filter that allows everything, then block in read
 *   states nnp      PR_SET_NO_NEW_PRIVS, then block in read
 * Each prints "ready" first. In every mode a line on stdin makes it write one byte and exit 0.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    static char buf[1 << 16];
    if (write(1, "ready\n", 6) != 6) return 2;
    if (!strcmp(mode, "strict")) {
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)) return 3;
    } else if (!strcmp(mode, "filter")) {
        struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        struct sock_fprog prog = {1, allow};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) return 3;
    } else if (!strcmp(mode, "nnp")) {
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 3;
    }
    if (read(0, buf, sizeof buf) < 0) return 4;
    buf[4096] = 1;
    if (write(1, "bye\n", 4) != 4) return 5;
    syscall(SYS_exit, 0); /* exit_group is not allowed in strict mode */
    return 0;
}
