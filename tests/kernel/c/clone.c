/* clone with each namespace flag (the raw syscall, so libc cannot substitute another call), a
 * plain fork, and clone3. Prints "<name> <return value> <errno name or 0>"; a child that was
 * created exits 0 at once and is reaped. Build: gcc -O0 -o clone clone.c */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct clone_args_v0 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

static void report(const char *name, long ret, int err) {
    if (ret == 0) /* the child */
        _exit(0);
    if (ret > 0) {
        int status = 0;
        waitpid((pid_t)ret, &status, 0);
        printf("%s 1 0\n", name); /* created */
    } else {
        printf("%s -1 %s\n", name, strerrorname_np(err));
    }
}

static void try_clone(const char *name, unsigned long flags) {
    errno = 0;
    long ret = syscall(SYS_clone, flags | SIGCHLD, 0UL, NULL, NULL, 0UL);
    report(name, ret, errno);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    try_clone("clone_plain", 0);
    try_clone("CLONE_NEWNS", CLONE_NEWNS);
    try_clone("CLONE_NEWCGROUP", CLONE_NEWCGROUP);
    try_clone("CLONE_NEWUTS", CLONE_NEWUTS);
    try_clone("CLONE_NEWIPC", CLONE_NEWIPC);
    try_clone("CLONE_NEWUSER", CLONE_NEWUSER);
    try_clone("CLONE_NEWPID", CLONE_NEWPID);
    try_clone("CLONE_NEWNET", CLONE_NEWNET);
    /* The kernel reads the low 32 bits of the flags: junk above must not hide the flag. */
    try_clone("CLONE_NEWUSER_hibits", CLONE_NEWUSER | 0xdead00000000UL);

    errno = 0;
    pid_t pid = fork();
    report("fork", pid, errno);

    struct clone_args_v0 args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    errno = 0;
    long ret = syscall(SYS_clone3, &args, sizeof args);
    report("clone3", ret, errno);
    args.flags = CLONE_NEWUSER;
    errno = 0;
    ret = syscall(SYS_clone3, &args, sizeof args);
    report("clone3_newuser", ret, errno);
    return 0;
}
