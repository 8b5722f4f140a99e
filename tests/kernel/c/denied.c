/* Calls each syscall the corral seccomp filter denies outright, with arguments chosen so that the
 * call fails harmlessly (EINVAL, EFAULT, EBADF, ENOENT...) when NO filter is installed, even as
 * root: the control run proves the kernel would otherwise answer differently. Prints one line per
 * call: "<name> <return value> <errno name or 0>", or "<name> skip <why>".
 * Build: gcc -O0 -o denied denied.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_open_tree_attr
#define SYS_open_tree_attr 467
#endif

/* "EPERM", "EINVAL", ...: glibc 2.32+ */
static const char *errname(int e) {
    const char *name = strerrorname_np(e);
    return name ? name : "OTHER";
}

static void report(const char *name, long ret) {
    printf("%s %ld %s\n", name, ret, ret < 0 ? errname(errno) : "0");
}

#define CALL(name, ...)                                  \
    do {                                                 \
        errno = 0;                                       \
        report(name, syscall(__VA_ARGS__));              \
    } while (0)

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const long bad = -1;
    const char *nofile = "/nonexistent-corral-seccomp-test";

    CALL("io_uring_setup", SYS_io_uring_setup, 0, NULL);
    CALL("io_uring_enter", SYS_io_uring_enter, bad, 0, 0, 0, NULL, 0);
    CALL("io_uring_register", SYS_io_uring_register, bad, 0, NULL, 0);
    CALL("bpf", SYS_bpf, bad, NULL, 0);
    CALL("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    CALL("userfaultfd", SYS_userfaultfd, bad);
    CALL("keyctl", SYS_keyctl, bad, 0, 0, 0, 0);
    CALL("add_key", SYS_add_key, NULL, NULL, NULL, 0, 0);
    CALL("request_key", SYS_request_key, NULL, NULL, NULL, 0);
    CALL("ptrace", SYS_ptrace, bad, 0, 0, 0);
    CALL("process_vm_readv", SYS_process_vm_readv, 0, NULL, 0, NULL, 0, bad);
    CALL("process_vm_writev", SYS_process_vm_writev, 0, NULL, 0, NULL, 0, bad);
    CALL("pidfd_getfd", SYS_pidfd_getfd, bad, 0, bad);
    CALL("kcmp", SYS_kcmp, 0, 0, bad, 0, 0);
    CALL("setns", SYS_setns, bad, 0);
    CALL("mount", SYS_mount, NULL, NULL, NULL, 0, NULL);
    CALL("umount2", SYS_umount2, nofile, bad);
    CALL("pivot_root", SYS_pivot_root, NULL, NULL);
    CALL("move_mount", SYS_move_mount, bad, NULL, bad, NULL, bad);
    CALL("open_tree", SYS_open_tree, bad, NULL, bad);
    CALL("open_tree_attr", SYS_open_tree_attr, bad, NULL, bad, NULL, 0);
    CALL("fsopen", SYS_fsopen, NULL, bad);
    CALL("fsmount", SYS_fsmount, bad, bad, bad);
    CALL("fsconfig", SYS_fsconfig, bad, bad, NULL, NULL, 0);
    CALL("fspick", SYS_fspick, bad, NULL, bad);
    CALL("mount_setattr", SYS_mount_setattr, bad, NULL, bad, NULL, 0);
    CALL("open_by_handle_at", SYS_open_by_handle_at, bad, NULL, 0);
    CALL("name_to_handle_at", SYS_name_to_handle_at, bad, NULL, NULL, NULL, bad);
    CALL("kexec_load", SYS_kexec_load, 0, 0, NULL, bad);
    CALL("kexec_file_load", SYS_kexec_file_load, bad, bad, 0, NULL, bad);
    CALL("init_module", SYS_init_module, NULL, 0, "");
    CALL("finit_module", SYS_finit_module, bad, "", bad);
    CALL("delete_module", SYS_delete_module, "corral_no_such_module", 0);
    CALL("reboot", SYS_reboot, 0, 0, 0, NULL); /* wrong magic: EINVAL before anything */
    CALL("swapon", SYS_swapon, nofile, bad);
    CALL("swapoff", SYS_swapoff, nofile);
    CALL("acct", SYS_acct, nofile);
    CALL("quotactl", SYS_quotactl, 0, NULL, 0, NULL);
    CALL("quotactl_fd", SYS_quotactl_fd, bad, 0, 0, NULL);
    CALL("syslog", SYS_syslog, 0x7fff, NULL, 0);
    CALL("lookup_dcookie", SYS_lookup_dcookie, 0, NULL, 0);
    CALL("clock_settime", SYS_clock_settime, CLOCK_REALTIME, NULL);
    CALL("clock_adjtime", SYS_clock_adjtime, CLOCK_REALTIME, NULL);
    CALL("settimeofday", SYS_settimeofday, NULL, NULL); /* both NULL: a no-op */
    CALL("adjtimex", SYS_adjtimex, NULL);
    /* vhangup hangs up the controlling terminal: only call it when there is none. */
    int tty = open("/dev/tty", O_RDONLY | O_NOCTTY);
    if (tty >= 0) {
        close(tty);
        printf("vhangup skip has-a-controlling-terminal\n");
    } else {
        CALL("vhangup", SYS_vhangup);
    }
    CALL("fanotify_init", SYS_fanotify_init, bad, 0);
    CALL("nfsservctl", SYS_nfsservctl, 0, NULL, NULL);
    CALL("uselib", SYS_uselib, NULL);
    CALL("iopl", SYS_iopl, 4); /* level 4 is invalid: EINVAL */
    CALL("ioperm", SYS_ioperm, 0x10000, 1, 0); /* beyond the I/O bitmap: EINVAL */
    /* The attacks for real: new namespaces, in this process only. */
    CALL("unshare", SYS_unshare, CLONE_NEWNS);
    CALL("unshare_newuser", SYS_unshare, CLONE_NEWUSER);
    /* personality: the query and the harmless personas stay allowed, dangerous flags do not. */
    CALL("personality_query", SYS_personality, 0xffffffffUL);
    CALL("personality_set", SYS_personality, 0x0100000UL); /* MMAP_PAGE_ZERO */
    CALL("personality_set_hibits", SYS_personality, 0x100100000UL); /* the same, junk in the upper half */
    CALL("personality_bit7", SYS_personality, 0x0100080UL); /* bit 7, as the query has: still refused */
    CALL("personality_linux32", SYS_personality, 0x0008UL); /* PER_LINUX32 (linux32): allowed */
    /* Allowed syscalls must still work. */
    CALL("getpid", SYS_getpid);
    return 0;
}
