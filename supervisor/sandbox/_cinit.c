/* The sandbox init, in C: a small static executable that runs a confinement plan built in Python
 * (supervisor/sandbox/_ops.py, supervisor/forkserver/server.py), then the command.
 *
 * Why C, and why an executable: a sandbox init used to be a clone of the fork server, a Python process,
 * running Python. Copying the fork server's page tables at each clone, then copying on write each page
 * that either process touched afterwards (Python writes reference counts everywhere), cost more CPU than
 * everything else a spawn does. Now the fork server decides everything in Python (what to mount, which
 * Landlock rules, the seccomp BPF, which errors to tolerate, what each failure is called), writes that
 * decision list into a pipe, and launches this executable with vfork semantics (CLONE_VM | CLONE_VFORK:
 * no copy of its memory at all) directly into new user and pid namespaces and as the supervisor's child
 * (CLONE_PARENT). The init reads the plan and executes it, one syscall per step, in order.
 *
 * The plan (native byte order, laid out by _ops.blob):
 *   header    struct plan_header
 *   segments  n_segs x struct segment, run in order; each is a list of ops and its own string table, so
 *             that the fork server packs the parts that do not change between requests once (_ops.Segment)
 *     ops     n_ops x struct op: an opcode, integer and string arguments, and how to report a failure
 *             (layer, operation, path, hint: the fields of supervisor.sandbox._sys.SetupFailure); jumps
 *             stay within their segment
 *     strings NUL-terminated, referenced by offset; binary strings (BPF, Landlock attr) carry their
 *             length in an integer argument
 *   fds       the command's stdio fds and the fds to keep open
 *   command   (spawn mode) argc, envc, then argc + envc NUL-terminated strings; a large one comes in a
 *             memfd instead (header cmd_fd), as through the socket of a pre-forked sandbox (a message is
 *             one byte, 'I' inline: the command follows, or 'F': the command is in the last fd sent)
 *
 * Built twice (setup.py): with CORRAL_INIT_MAIN, the executable `corral-init PLAN_FD`; without, the Python
 * extension supervisor.sandbox._cinit:
 *   start(flags, path, plan_fd, keep, netns=-1, slot=..., *, premap=None) -> (pid, errno, failed)
 *       launch the executable at `path` into the namespaces in `flags` (and into the network namespace
 *       `netns`, a pooled one, when given), with the fds in `keep` left open (every other fd is closed at
 *       exec), every ignored signal back at its default, and with premap=(uid, gid) the new user namespace's
 *       id maps written first; errno is that of a failed exec, or of the maps when `failed` names the map
 *       file (the child has then exited).
 *   netns_new() -> (netns_fd, sysfs_fd), netns_unused(netns_fd) -> bool
 *       the fork server's pool of network namespaces (see "Pooled network namespaces" below).
 *   apply(plan) -> None | (index, errno, operation)
 *       run a plan's ops in the calling process (the mechanism modules' `apply`, and their tests); on
 *       failure, the failing op's index (counting the ops of all segments), its errno and, when the op
 *       reports a more precise operation than its plan entry, that.
 *
 * Status records written by the init (one write each): kind byte, u32 length, marshal payload:
 *   E {layer, operation, errno, path, hint}   a step or the exec failed (exit 125, or 127 for exec)
 *   R {}                                      pre-forked: confined, waiting for the command on ctl_fd
 *   X {pid}                                   the command is running (pid in the sandbox's namespace)
 *   S {status, cpu, maxrss, alone}            the command's wait status and usage; alone: the init killed
 *                                             and reaped every other process of the sandbox first; with a
 *                                             notifying seccomp filter also dcounts (the calls refused per
 *                                             D record, in order) and ddropped (refused calls past them)
 *   D {nr, arch, args, pid, errno[, act]}     the first refusal of a distinct syscall (its fold key): the
 *                                             seccomp filter notified the init, which answered errno; act:
 *                                             the verdict when not an errno (a profile's log: the call ran;
 *                                             its kill_process: the init killed the caller's process)
 */
#define _GNU_SOURCE
#ifndef CORRAL_INIT_MAIN
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* From linux/capability.h, which musl's headers do not carry (the executable is built with musl when
 * available: its static start-up costs half of glibc's, which probes the CPU with cpuid, a VM exit each). */
#define CAP_VERSION_3 0x20080522
#define CAP_SETPCAP 8
struct cap_header {
    uint32_t version;
    int pid;
};
struct cap_data {
    uint32_t effective, permitted, inheritable;
};

/* The new mount API and openat2 (numbers shared by every architecture since 5.2/5.6), for C libraries whose
 * headers predate them. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif

#define PLAN_MAGIC 0x314c5243u /* "CRL1" */
#define NO_STR 0xffffffffu
#define MAX_FDS 64
#define MAX_REQUEST (1 << 20)

enum mode { MODE_APPLY = 0, MODE_SPAWN = 1, MODE_STUB = 2 };

/* Opcodes; the module exports each as OP_<NAME> and _ops.py uses those, never its own numbers. */
#define OPS(X)                                                                                              \
    X(WRITE, 1)        /* s0 path, s1 data: open (a0 > 0: created, mode a0), write, close */                \
    X(PDEATHSIG, 2)    /* a0 supervisor pidfd: PDEATHSIG=SIGKILL; exit if it already died; close it unless \
                          a1 (SETID needs it again) */                                                      \
    X(SETSID, 3)                                                                                            \
    X(UNSHARE, 4)      /* a0 flags */                                                                       \
    X(SETHOSTNAME, 5)  /* s0 */                                                                             \
    X(LOOPBACK_UP, 6)  /* bring lo up in the (new) network namespace */                                     \
    X(MOUNT, 7)        /* s0 source (or a1 > 0: the fd in slot a1-1, then s0 a path under it), s1 target, \
                          s2 fstype, s3 data, a0 flags */                                                   \
    X(SETATTR, 8)      /* s0 path, a0 attr_set, a1 attr_clr, a2 AT_RECURSIVE or 0: mount_setattr */        \
    X(MKDIR, 9)        /* s0, a0 mode; a1: then chmod to exactly a0 (the umask does not apply) */          \
    X(CREAT, 10)       /* s0, a0 mode: create an empty file */                                              \
    X(SYMLINK, 11)     /* s0 target, s1 link path */                                                        \
    X(UMOUNT, 12)      /* s0, a0 flags */                                                                   \
    X(RMDIR, 13)       /* s0 */                                                                             \
    X(CHDIR, 14)       /* s0 */                                                                             \
    X(ENSURE, 15)      /* s0 path, a0 directory?: unless it exists, create it and its parents */            \
    X(CLOSE, 16)       /* a0 fd, or a1 > 0: the fd in slot a1-1 */                                         \
    X(RLIMIT, 17)      /* a0 resource, a1 soft, a2 hard (-1 = infinity); never above the current hard */   \
    X(BOUNDING, 18)    /* a0 last cap, a1 securebits: lock securebits, empty the bounding set (if able) */ \
    X(PRCTL, 19)       /* a0 option, a1 arg2 */                                                             \
    X(CAPSET_ZERO, 20) /* effective, permitted and inheritable sets emptied */                              \
    X(LL_CREATE, 21)   /* s0 attr, a0 attr size: the Landlock ruleset (one per plan) */                     \
    X(LL_PATH, 22)     /* s0 path, a0 access, a1 rights a non-directory can hold; missing path: skip */    \
    X(LL_NET, 23)      /* a0 port, a1 access */                                                             \
    X(LL_RESTRICT, 24) /* restrict self, close the ruleset */                                               \
    X(SECCOMP, 25)     /* s0 BPF (sock_filter array), a0 its size; sets no_new_privs first if unset */      \
    X(JUMP, 26)        /* a0 op index */                                                                    \
    X(OPEN_PATH, 27)   /* s0 path, a0 slot (or SLOT_HOSTDEV): open(O_PATH), kept for MOUNT and CLOSE */    \
    /* 28: IDMAP, retired: the launcher writes the init's own id maps before the exec (py_start, premap) */ \
    X(MOUNT_AT, 29)    /* s0 target, opened without following any symlink; a0 what: 0 a bind of the target \
                          itself, 1 a bind of s1, 2 a tmpfs with options s1, 3 a bind of s1 below the       \
                          scaffold (slot SLOT_SCAFFOLD); a1 attr_set, a2 attr_clr,                          \
                          a3 bit 0: copy what is mounted below (binds), bit 1: attributes on all of it */ \
    X(UNLINK, 30)      /* s0: remove a file (the /run sources of binds made from it) */                    \
    X(PROXY_LISTEN, 31) /* a0 port, a1 backlog: listen on 127.0.0.1:a0 in our network namespace and send  \
                           the socket (SCM_RIGHTS) on the plan header's proxy_fd, to the supervisor */    \
    X(SECCOMP_NOTIFY, 32) /* s0 BPF whose denials notify, a0 its size; s1 the same filter with errnos, a1   \
                             its size; s2 the fold keys, a2 their size: see load_seccomp_notify */ \
    X(SETID, 33)       /* a0 supervisor pidfd: become the non-root ids of our id maps, if any; PDEATHSIG \
                          again (a change of ids clears it); close the pidfd */ \
    X(WATCH, 34)       /* s0 a protected file (a read-only bind): note the command's attempts to replace \
                          it (its "<name>.lock" created beside it, as git does), for the S record */ \
    X(CLONE_AT, 35)    /* s0 target, opened without following any symlink; a0 an fd the init inherited (a  \
                          plan keep fd): a detached mount (the fork server's shared overlay), cloned with  \
                          what is mounted on it (open_tree) and moved onto the target */

#define X_ENUM(name, num) OP_##name = num,
enum { OPS(X_ENUM) };

struct plan_header {
    uint32_t magic, mode, n_segs, segs_off, cmd_off, cmd_len, stdio_off, keep_off;
    int32_t cmd_fd, status_w, ctl_fd, n_stdio; /* cmd_fd >= 0: the command is in that fd, not inline */
    uint32_t n_keep;
    int32_t net_sysfs_fd; /* >= 0: a detached sysfs mount of a pooled network namespace (slot NET_SYSFS) */
    uint32_t flags;       /* PLAN_CTTY, PLAN_OWN_MAPS */
    int32_t proxy_fd;     /* >= 0: where PROXY_LISTEN sends the proxy's listening socket (slot PROXY) */
};

/* The command's stdin (a terminal: corral run --tty's pty) becomes the controlling terminal of the
 * sandbox's session, which the init leads (step 3, setsid). */
#define PLAN_CTTY 1u
/* The id maps are the ones the launcher wrote (premap: the caller's own ids only), not the fork server's
 * owner maps: OP_SETID has no other account to become, and need not read them. */
#define PLAN_OWN_MAPS 2u
static int own_maps;

struct segment {
    uint32_t ops_off, n_ops, strtab_off, strtab_len;
};

struct op {
    uint32_t code;
    int32_t on_fail; /* -1: the step fails (report, exit); else continue at this op index */
    int64_t a[4];
    uint32_t s[4];
    uint32_t layer, operation, path, hint; /* string offsets; path may be NO_STR */
    int32_t ok_errno[2];                   /* errnos that count as success (0: none) */
};

/* The fields of the three plan records, in declaration order: exported with their offsets and sizes as
 * LAYOUT, which supervisor/sandbox/_ops.py compares at import with its own description of the plan (field
 * by field, so that a reordered or retyped field is caught, not only a changed size). Keep in step with the
 * structs above: a field missing here changes no offset but is caught by the record's size. */
#define OP_FIELDS(F, r) \
    F(r, code) F(r, on_fail) F(r, a) F(r, s) F(r, layer) F(r, operation) F(r, path) F(r, hint) F(r, ok_errno)
#define HEADER_FIELDS(F, r)                                                                                 \
    F(r, magic) F(r, mode) F(r, n_segs) F(r, segs_off) F(r, cmd_off) F(r, cmd_len) F(r, stdio_off)          \
    F(r, keep_off) F(r, cmd_fd) F(r, status_w) F(r, ctl_fd) F(r, n_stdio) F(r, n_keep) F(r, net_sysfs_fd)  \
    F(r, flags) F(r, proxy_fd)
#define SEGMENT_FIELDS(F, r) F(r, ops_off) F(r, n_ops) F(r, strtab_off) F(r, strtab_len)
#define RECORDS(X) X(op, OP_FIELDS) X(plan_header, HEADER_FIELDS) X(segment, SEGMENT_FIELDS)

#define MAX_SEGS 16

struct seg {
    const struct op *ops;
    const char *strtab;
    uint32_t n_ops, strtab_len;
};

struct plan {
    const struct plan_header *h;
    struct seg segs[MAX_SEGS];
    const char *cmd;
    const int32_t *stdio;
    const int32_t *keep;
};

/* The operation of a failed op when the op itself knows better than its plan entry (which of several
 * syscalls failed, with which argument). */
static char op_detail[160];
static int ll_ruleset = -1;

/* OP_WATCH: protected files (a repository's .git/config, bound read-only) whose replacement the command
 * attempted. git writes a config by creating "config.lock" beside it and renaming it over the file, which
 * the read-only bind refuses (EBUSY, git's puzzling "Device or resource busy"; `git branch -u` even reports
 * success): the init watches each such directory for the lock's creation and names the file in its S
 * record, so that corral can say what was refused and why. */
#define MAX_WATCHES 8 /* 8 paths of at most 512 bytes: the S record (8 KiB) holds them */
static int watch_fd = -1, n_watches;
static struct {
    int wd, hits;
    char path[512];
} watches[MAX_WATCHES];

static int watch_protected(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path || strlen(path) >= sizeof watches[0].path - 6) return EINVAL;
    if (n_watches >= MAX_WATCHES) return 0; /* a report, not a layer: the rest go unwatched */
    if (watch_fd < 0 && (watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0) return errno;
    char dir[512];
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int wd = inotify_add_watch(watch_fd, dir, IN_CREATE | IN_ONLYDIR | IN_DONT_FOLLOW);
    if (wd < 0) return errno;
    watches[n_watches].wd = wd;
    watches[n_watches].hits = 0;
    snprintf(watches[n_watches].path, sizeof watches[0].path, "%s", path);
    n_watches++;
    return 0;
}

#define SLOTS 16
#define SLOT_NET_SYSFS SLOTS /* one more slot, filled from the plan header, not by OPEN_PATH */
#define SLOT_PROXY (SLOTS + 1) /* and another: the plan header's proxy_fd */
#define SLOT_HOSTDEV (SLOTS + 2) /* the host's /dev, opened by OPEN_PATH for the device nodes' binds */
#define SLOT_SCAFFOLD (SLOTS + 3) /* the view's scaffold tmpfs (mounts._scaffold), opened by OPEN_PATH */
static int slots[SLOTS + 4] = {[SLOT_PROXY] = -1, [SLOT_HOSTDEV] = -1, [SLOT_SCAFFOLD] = -1};

/* The fd in the slot named by an op's a1 (a slot number + 1: MOUNT's source, CLOSE's fd); -1 for none. */
static int slot_arg(int64_t a1) {
    return (a1 > 0 && a1 <= SLOTS + 1) || a1 == SLOT_HOSTDEV + 1 || a1 == SLOT_SCAFFOLD + 1 ? slots[a1 - 1] : -1;
}

static const char *str(const struct seg *g, uint32_t off) {
    return off == NO_STR || off >= g->strtab_len ? NULL : g->strtab + off;
}

/* A binary string of `len` bytes at `off`, or NULL when it does not lie within the string table. */
static const char *bin(const struct seg *g, uint32_t off, int64_t len) {
    if (off == NO_STR || len < 0 || (uint64_t)off + (uint64_t)len > g->strtab_len) return NULL;
    return g->strtab + off;
}

static int parse_plan(const char *buf, size_t len, struct plan *p) {
    if (len < sizeof(struct plan_header)) return -1;
    const struct plan_header *h = (const struct plan_header *)buf;
    if (h->magic != PLAN_MAGIC) return -1;
    if (h->n_segs > MAX_SEGS || (uint64_t)h->segs_off + (uint64_t)h->n_segs * sizeof(struct segment) > len)
        return -1;
    for (uint32_t i = 0; i < h->n_segs; i++) {
        const struct segment *d = (const struct segment *)(buf + h->segs_off) + i;
        if ((uint64_t)d->ops_off + (uint64_t)d->n_ops * sizeof(struct op) > len) return -1;
        if ((uint64_t)d->strtab_off + d->strtab_len > len) return -1;
        if (d->strtab_len == 0 || buf[d->strtab_off + d->strtab_len - 1] != '\0') return -1;
        p->segs[i].ops = (const struct op *)(buf + d->ops_off);
        p->segs[i].n_ops = d->n_ops;
        p->segs[i].strtab = buf + d->strtab_off;
        p->segs[i].strtab_len = d->strtab_len;
    }
    if ((uint64_t)h->cmd_off + h->cmd_len > len) return -1;
    if ((uint64_t)h->stdio_off + (uint64_t)h->n_stdio * 4 > len || h->n_stdio < 0 || h->n_stdio > MAX_FDS)
        return -1;
    if ((uint64_t)h->keep_off + (uint64_t)h->n_keep * 4 > len || h->n_keep > MAX_FDS) return -1;
    p->h = h;
    p->cmd = buf + h->cmd_off;
    p->stdio = (const int32_t *)(buf + h->stdio_off);
    p->keep = (const int32_t *)(buf + h->keep_off);
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The steps. Each returns 0 or an errno. */

/* open(2) with O_CLOEXEC, as one syscall: musl's open() follows every O_CLOEXEC open with an
 * fcntl(F_SETFD) for kernels older than 2.6.23, ~25 extra syscalls per sandbox. */
static int open_cloexec(const char *path, int flags, mode_t mode) {
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags | O_CLOEXEC, mode);
}

static int write_new_file(const char *path, const char *data, mode_t create) {
    int fd = open_cloexec(path, O_WRONLY | (create ? O_CREAT : 0), create);
    if (fd < 0) return errno;
    ssize_t n = write(fd, data, strlen(data));
    int err = n < 0 ? errno : 0;
    close(fd);
    return err;
}

static inline int write_file(const char *path, const char *data) { return write_new_file(path, data, 0); }

static int mkdir_parents(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof buf) return ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return errno;
        *s = '/';
    }
    return 0;
}

static int ensure(const char *path, int directory) {
    struct stat st;
    if (lstat(path, &st) == 0) return 0;
    int err = mkdir_parents(path);
    if (err) return err;
    if (directory) return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : errno;
    int fd = open_cloexec(path, O_CREAT | O_WRONLY, 0600);
    if (fd < 0) return errno;
    close(fd);
    return 0;
}

/* corral's proxy (network mode "proxy"): a socket listening on 127.0.0.1:port of the sandbox's network
 * namespace, sent to the supervisor, which accepts on it from the host side; this process keeps no copy.
 * Nothing runs in the sandbox for the proxy, and the sandbox cannot take the port (it is bound). */
static int proxy_listen(int port, int backlog) {
    if (slots[SLOT_PROXY] < 0) return EBADF;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return errno;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int err = 0;
    if (bind(s, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(s, backlog) != 0) {
        err = errno;
    } else {
        char control[CMSG_SPACE(sizeof(int))];
        memset(control, 0, sizeof control);
        char byte = 'L';
        struct iovec iov = {&byte, 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = sizeof control};
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &s, sizeof(int));
        if (sendmsg(slots[SLOT_PROXY], &msg, MSG_NOSIGNAL) < 0) err = errno;
    }
    close(s);
    return err;
}

static int loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    int err = 0;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
        err = errno;
    } else {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) err = errno;
    }
    close(s);
    return err;
}

struct mount_attr_v0 {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static int set_mount_attr(const char *path, uint64_t set, uint64_t clr, unsigned flags) {
    struct mount_attr_v0 attr = {set, clr, 0, 0};
    return syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr) == 0 ? 0 : errno;
}

static int detail(const char *what, int err) {
    snprintf(op_detail, sizeof op_detail, "%s", what);
    return err;
}

/* Paths of the sandbox's view (writable and readable roots, the workdir, denied and protected paths) are
 * opened without following any symlink, in any component: a sandbox that could write below one of them may
 * have planted a link there since the policy was made (`build -> /etc`), and following it would hand the
 * next sandbox write access to the link's target. Policy time resolved the links that were there and that
 * no sandbox could have made (policies/_validate.py, resolve_trusted); one found now is refused (ELOOP). */
struct open_how_v0 {
    uint64_t flags, mode, resolve;
};
#define CORRAL_RESOLVE_NO_MAGICLINKS 0x02
#define CORRAL_RESOLVE_NO_SYMLINKS 0x04

static int open_nofollow_as(const char *path, int link) {
    /* No O_NOFOLLOW: a trailing link is ELOOP too; with `link` (a link pinned as a mount point of its own:
     * mounts._pin_ancestors), O_NOFOLLOW, so a trailing link is the object opened, never followed. */
    struct open_how_v0 how = {O_PATH | O_CLOEXEC | (link ? O_NOFOLLOW : 0), 0,
                              CORRAL_RESOLVE_NO_SYMLINKS | CORRAL_RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd < 0) snprintf(op_detail, sizeof op_detail, "openat2(O_PATH, RESOLVE_NO_SYMLINKS)");
    return fd;
}

static int open_nofollow(const char *path) { return open_nofollow_as(path, 0); }

#define CORRAL_OPEN_TREE_CLONE 1
#define CORRAL_MOVE_MOUNT_F_EMPTY_PATH 0x04
#define CORRAL_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define CORRAL_FSCONFIG_SET_STRING 1
#define CORRAL_FSCONFIG_CREATE 6

/* A detached tmpfs with the comma-separated key=value `options` and mount attributes `attrs`; -1 (errno and
 * op_detail set) on failure. */
static int new_tmpfs(const char *options, uint64_t attrs) {
    int fs = (int)syscall(SYS_fsopen, "tmpfs", 1 /* FSOPEN_CLOEXEC */);
    if (fs < 0) return detail("fsopen(tmpfs)", errno), -1;
    char opts[256], *save = NULL;
    snprintf(opts, sizeof opts, "%s", options ? options : "");
    for (char *kv = strtok_r(opts, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq) *eq = '\0';
        if (syscall(SYS_fsconfig, fs, CORRAL_FSCONFIG_SET_STRING, kv, eq ? eq + 1 : NULL, 0) != 0) {
            int err = errno;
            snprintf(op_detail, sizeof op_detail, "fsconfig(tmpfs, %s)", kv);
            close(fs);
            errno = err;
            return -1;
        }
    }
    int mnt = -1;
    if (syscall(SYS_fsconfig, fs, CORRAL_FSCONFIG_CREATE, NULL, NULL, 0) != 0)
        detail("fsconfig(tmpfs, FSCONFIG_CMD_CREATE)", errno);
    else if ((mnt = (int)syscall(SYS_fsmount, fs, 1 /* FSMOUNT_CLOEXEC */, (unsigned)attrs)) < 0)
        detail("fsmount(tmpfs)", errno);
    int err = errno;
    close(fs);
    errno = err;
    return mnt;
}

/* OP_MOUNT_AT: the mount is made from the fd of the checked target, never by its path again: open_tree on
 * it (or on `source`), the attributes changed on the detached copy, move_mount onto the same fd. */
static int mount_at(const char *target, int what, const char *arg, uint64_t set, uint64_t clr, unsigned how) {
    unsigned rec = how & 1 ? 0x8000u : 0, attr_rec = how & 2 ? 0x8000u : 0; /* AT_RECURSIVE */
    int fd = open_nofollow_as(target, how & 4);
    if (fd < 0) return errno;
    int tree = -1, err = 0;
    if (what == 2) {
        tree = new_tmpfs(arg, set);
        if (tree < 0) err = errno;
    } else {
        /* what 3: a bind of s1 below the scaffold (slot SLOT_SCAFFOLD), as a path relative to its fd */
        int from = what == 3 ? slots[SLOT_SCAFFOLD] : AT_FDCWD;
        if (what == 3 && from < 0) {
            close(fd);
            return EBADF;
        }
        tree = what == 1 || what == 3
                   ? (int)syscall(SYS_open_tree, from, arg, CORRAL_OPEN_TREE_CLONE | O_CLOEXEC | rec)
                   : (int)syscall(SYS_open_tree, fd, "", AT_EMPTY_PATH | CORRAL_OPEN_TREE_CLONE | O_CLOEXEC | rec);
        if (tree < 0) {
            err = detail("open_tree(OPEN_TREE_CLONE)", errno);
        } else if (set || clr) {
            struct mount_attr_v0 attr = {set, clr, 0, 0};
            if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | attr_rec, &attr, sizeof attr) != 0)
                err = detail("mount_setattr(detached copy)", errno);
        }
    }
    if (!err && syscall(SYS_move_mount, tree, "", fd, "", CORRAL_MOVE_MOUNT_F_EMPTY_PATH | CORRAL_MOVE_MOUNT_T_EMPTY_PATH) != 0)
        err = detail("move_mount(onto the checked target)", errno);
    if (tree >= 0) close(tree);
    close(fd);
    return err;
}

/* OP_CLONE_AT: a copy of the detached mount `from` (inherited from the fork server, which made it once for
 * every sandbox of a view: mounts._overlay) moved onto `target`, opened without following any symlink. The
 * copy is this sandbox's own mount (its flags and place), of the one superblock all copies share; that
 * superblock belongs to the fork server's user namespace, over which this one has no capability. */
static int clone_at(const char *target, int from) {
    int fd = open_nofollow(target);
    if (fd < 0) return errno;
    int err = 0;
    int tree = (int)syscall(SYS_open_tree, from, "", AT_EMPTY_PATH | CORRAL_OPEN_TREE_CLONE | O_CLOEXEC | 0x8000u);
    if (tree < 0)
        err = detail("open_tree(the shared overlay, OPEN_TREE_CLONE)", errno);
    else if (syscall(SYS_move_mount, tree, "", fd, "", CORRAL_MOVE_MOUNT_F_EMPTY_PATH | CORRAL_MOVE_MOUNT_T_EMPTY_PATH) != 0)
        err = detail("move_mount(onto the checked target)", errno);
    if (tree >= 0) close(tree);
    close(fd);
    return err;
}

static int set_rlimit(int res, int64_t soft, int64_t hard) {
    struct rlimit cur, want;
    if (getrlimit(res, &cur) != 0) return errno;
    want.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
    want.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    /* Raising a hard limit needs CAP_SYS_RESOURCE in the initial namespace: lower both to the current hard
     * limit instead, which is at least as strict as asked. */
    if (cur.rlim_max != RLIM_INFINITY && want.rlim_max > cur.rlim_max) {
        want.rlim_max = cur.rlim_max;
        if (want.rlim_cur > cur.rlim_max) want.rlim_cur = cur.rlim_max;
    }
    return setrlimit(res, &want) == 0 ? 0 : errno;
}

static int has_cap(int cap) {
    struct cap_header hdr = {CAP_VERSION_3, 0};
    struct cap_data data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &hdr, data) != 0) return 0;
    return (data[cap / 32].effective >> (cap % 32)) & 1;
}

static int empty_bounding(int last_cap, unsigned long securebits) {
    /* EPERM is no error when the process has no CAP_SETPCAP at all (an ordinary user without a user
     * namespace): it has nothing to drop. */
    if (!has_cap(CAP_SETPCAP)) return 0;
    if (prctl(PR_SET_SECUREBITS, securebits, 0, 0, 0) != 0) return errno;
    for (int cap = 0; cap <= last_cap; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return errno;
    return 0;
}

static int capset_zero(void) {
    struct cap_header hdr = {CAP_VERSION_3, 0};
    struct cap_data data[2];
    memset(data, 0, sizeof data);
    return syscall(SYS_capset, &hdr, data) == 0 ? 0 : errno;
}

#define LANDLOCK_RULE_PATH_BENEATH 1
#define LANDLOCK_RULE_NET_PORT 2

struct __attribute__((packed)) ll_path_attr {
    uint64_t allowed_access;
    int32_t parent_fd;
};

struct ll_net_attr {
    uint64_t allowed_access;
    uint64_t port;
};

static int ll_path(const char *path, uint64_t access, uint64_t file_rights) {
    int fd = open_nofollow(path);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return 0; /* nothing there to grant access to */
        return errno;
    }
    /* Rights only a directory can hold are refused (EINVAL) on anything else: only then is the type looked
     * up, and the rule added again with the rights a non-directory can hold. */
    struct ll_path_attr rule = {access, fd};
    if (access && syscall(SYS_landlock_add_rule, ll_ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) == 0) {
        close(fd);
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        snprintf(op_detail, sizeof op_detail, "fstat(O_PATH fd)");
        return err;
    }
    if (!S_ISDIR(st.st_mode)) access &= file_rights;
    int err = 0;
    if (access) {
        rule.allowed_access = access;
        if (syscall(SYS_landlock_add_rule, ll_ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) != 0) {
            err = errno;
            snprintf(op_detail, sizeof op_detail, "landlock_add_rule(PATH_BENEATH, %#llx)",
                     (unsigned long long)access);
        }
    }
    close(fd);
    return err;
}

static int load_seccomp(const char *bpf, int64_t size) {
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        snprintf(op_detail, sizeof op_detail, "prctl(PR_SET_NO_NEW_PRIVS)");
        return errno;
    }
    struct {
        unsigned short len;
        const void *filter;
    } prog = {(unsigned short)(size / 8), bpf};
    return syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, 0, &prog) == 0 ? 0 : errno;
}

/* Denial reports for the seccomp filter (docs/denials.md). The filter (built-in rules and the policy's
 * profile, one program) answers every reported verdict with SECCOMP_RET_USER_NOTIF; the init holds the
 * listener, runs the decision program (the same rules with the real actions) on the notified call, acts on
 * its verdict (answers the errno, lets a logged call run, kills for kill_process), then folds it into a
 * bounded table and reports each distinct one once. Fail closed: with the
 * listener gone (the init killed), the kernel answers every notifying call with ENOSYS, never runs it. */
struct sock_fprog_ {
    unsigned short len;
    const void *filter;
};
struct seccomp_data_ {
    int32_t nr;
    uint32_t arch;
    uint64_t ip;
    uint64_t args[6];
};
struct seccomp_notif_ {
    uint64_t id;
    uint32_t pid, flags;
    struct seccomp_data_ data;
};
struct seccomp_notif_resp_ {
    uint64_t id;
    int64_t val;
    int32_t error;
    uint32_t flags;
};
#define SECCOMP_FILTER_FLAG_NEW_LISTENER_ (1UL << 3)
#define SECCOMP_IOCTL_NOTIF_RECV_ _IOWR('!', 0, struct seccomp_notif_)
#define SECCOMP_IOCTL_NOTIF_SEND_ _IOWR('!', 1, struct seccomp_notif_resp_)
#define SECCOMP_IOCTL_NOTIF_ID_VALID_ _IOW('!', 2, uint64_t)
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE_ 1u

/* A fold key: a call's key is its number and, for each entry naming that number, args[arg] & mask. */
struct fold_key {
    int32_t nr, arg;
    uint64_t mask;
};
#ifdef CORRAL_INIT_MAIN
static int notify_fd = -1;
static const unsigned char *errno_bpf;
static size_t errno_bpf_len;
static const struct fold_key *fold_keys;
static size_t n_fold_keys;
#endif

static int load_seccomp_notify(const char *bpf, int64_t size, const char *ebpf, int64_t esize, const char *keys,
                               int64_t ksize) {
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        snprintf(op_detail, sizeof op_detail, "prctl(PR_SET_NO_NEW_PRIVS)");
        return errno;
    }
    if (esize <= 0 || esize % 8 || ksize < 0 || ksize % (int64_t)sizeof(struct fold_key)) return EINVAL;
    struct sock_fprog_ prog = {(unsigned short)(size / 8), bpf};
    long fd = syscall(SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, SECCOMP_FILTER_FLAG_NEW_LISTENER_, &prog);
    if (fd < 0) {
        snprintf(op_detail, sizeof op_detail, "seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER)");
        return errno;
    }
#ifdef CORRAL_INIT_MAIN
    notify_fd = (int)fd;
    errno_bpf = (const unsigned char *)ebpf;
    errno_bpf_len = (size_t)esize;
    fold_keys = (const struct fold_key *)keys;
    n_fold_keys = (size_t)ksize / sizeof(struct fold_key);
#else
    /* In-process (apply): nobody would answer; closed, every notifying call gets ENOSYS at once. */
    close((int)fd);
    (void)ebpf;
    (void)keys;
    (void)sizeof(struct seccomp_notif_resp_);
#endif
    return 0;
}

#ifndef CORRAL_INIT_MAIN
/* The id maps of the user namespace the init is launched into: the caller's uid and gid mapped to
 * themselves. A process may write its own maps when each is one line mapping its own id (the gid map after
 * denying setgroups). Written by the launched child itself, before its exec (launch_child): mapped to
 * root there, the exec keeps every capability in the namespace, so no ambient capability is needed to carry
 * them across it (41 prctl calls per sandbox); the init then runs no map op of its own. */
static int id_map(unsigned uid, unsigned gid) {
    char map[64];
    int err = write_file("/proc/self/setgroups", "deny");
    if (err) return detail("write /proc/self/setgroups", err);
    snprintf(map, sizeof map, "%u %u 1\n", uid, uid);
    if ((err = write_file("/proc/self/uid_map", map))) return detail("write /proc/self/uid_map", err);
    snprintf(map, sizeof map, "%u %u 1\n", gid, gid);
    if ((err = write_file("/proc/self/gid_map", map))) return detail("write /proc/self/gid_map", err);
    return 0;
}
#endif

/* The id other than 0 that /proc/self/<which> maps (to itself), or -1 when 0 is the only one. */
static long mapped_other(const char *which) {
    char path[32], buf[256];
    snprintf(path, sizeof path, "/proc/self/%s", which);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -2;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) return -2;
    buf[n] = '\0';
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        unsigned long inside = strtoul(line, NULL, 10);
        if (inside != 0) return (long)inside;
    }
    return -1;
}

/* A root caller's sandbox in a workdir owned by another account runs as that account (namespaces.py,
 * "owner"): the fork server mapped 0 (for the setup's own files) and the owner's uid and gid, each to
 * itself. Become them: supplementary groups first (the caller's, root's, must not follow), then the gid,
 * then the uid. The capabilities survive (SECBIT_NO_SETUID_FIXUP, locked by BOUNDING before) until
 * CAPSET_ZERO. A change of ids clears PDEATHSIG: set it again, and check the supervisor did not die in
 * between (its pidfd, kept open by PDEATHSIG for this). */
static int become_owner(int supervisor_pidfd) {
    long uid = own_maps ? -1 : mapped_other("uid_map"), gid = own_maps ? -1 : mapped_other("gid_map");
    int err = 0;
    if (uid == -2 || gid == -2) return detail("read /proc/self/uid_map", errno ? errno : EIO);
    if (uid >= 0) {
        gid_t g = gid >= 0 ? (gid_t)gid : 65534;
        if (setgroups(1, &g) != 0) return detail("setgroups", errno);
        if (setresgid(g, g, g) != 0) return detail("setresgid", errno);
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return detail("setresuid", errno);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) err = detail("prctl(PR_SET_PDEATHSIG)", errno);
    }
    struct pollfd pfd = {supervisor_pidfd, POLLIN, 0};
    if (!err && poll(&pfd, 1, 0) > 0) _exit(125);
    close(supervisor_pidfd);
    return err;
}

/* Run one op; returns 0 or an errno. */
static int run_op(const struct seg *g, const struct op *o) {
    const char *s0 = str(g, o->s[0]), *s1 = str(g, o->s[1]), *s2 = str(g, o->s[2]), *s3 = str(g, o->s[3]);
    /* Every op but MOUNT, CLOSE, JUMP and the argument-less ones takes a path or data in s0. */
    switch (o->code) {
    case OP_MOUNT:
    case OP_CLOSE:
    case OP_PDEATHSIG:
    case OP_SETSID:
    case OP_UNSHARE:
    case OP_LOOPBACK_UP:
    case OP_PROXY_LISTEN:
    case OP_RLIMIT:
    case OP_BOUNDING:
    case OP_PRCTL:
    case OP_CAPSET_ZERO:
    case OP_LL_NET:
    case OP_LL_RESTRICT:
    case OP_SETID:
        break;
    case OP_LL_CREATE:
    case OP_SECCOMP:
        if (!bin(g, o->s[0], o->a[0])) return EINVAL;
        break;
    case OP_SECCOMP_NOTIFY:
        if (!bin(g, o->s[0], o->a[0]) || !bin(g, o->s[1], o->a[1]) || (o->a[2] && !bin(g, o->s[2], o->a[2])))
            return EINVAL;
        break;
    case OP_WRITE:
    case OP_SYMLINK:
        if (!s0 || !s1) return EINVAL;
        break;
    default:
        if (!s0) return EINVAL;
    }
#define OK(expr) ((expr) == 0 ? 0 : errno)
    switch (o->code) {
    case OP_WRITE:
        return write_new_file(s0, s1, (mode_t)o->a[0]);
    case OP_PDEATHSIG: {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) return errno;
        /* The supervisor may have died between clone and prctl: its pidfd is then readable. */
        struct pollfd pfd = {(int)o->a[0], POLLIN, 0};
        if (poll(&pfd, 1, 0) > 0) _exit(125);
        if (!o->a[1]) close((int)o->a[0]);
        return 0;
    }
    case OP_SETSID:
        return setsid() < 0 ? errno : 0;
    case OP_UNSHARE:
        return OK(unshare((int)o->a[0]));
    case OP_SETHOSTNAME:
        return OK(sethostname(s0, strlen(s0)));
    case OP_LOOPBACK_UP:
        return loopback_up();
    case OP_PROXY_LISTEN:
        return proxy_listen((int)o->a[0], (int)o->a[1]);
    case OP_MOUNT: {
        char src[4096];
        if (o->a[1] > 0) {
            int fd = slot_arg(o->a[1]);
            if (fd < 0) return EBADF;
            if (s0)
                snprintf(src, sizeof src, "/proc/self/fd/%d/%s", fd, s0);
            else
                snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
            s0 = src;
        }
        return OK(mount(s0, s1, s2, (unsigned long)o->a[0], s3));
    }
    case OP_SETATTR:
        return set_mount_attr(s0, (uint64_t)o->a[0], (uint64_t)o->a[1], (unsigned)o->a[2]);
    case OP_MKDIR:
        if (mkdir(s0, (mode_t)o->a[0]) != 0) return errno;
        return o->a[1] ? OK(chmod(s0, (mode_t)o->a[0])) : 0;
    case OP_CREAT: {
        int fd = open_cloexec(s0, O_CREAT | O_WRONLY, (mode_t)o->a[0]);
        if (fd < 0) return errno;
        close(fd);
        return 0;
    }
    case OP_SYMLINK:
        return OK(symlink(s0, s1));
    case OP_UMOUNT:
        return OK(umount2(s0, (int)o->a[0]));
    case OP_RMDIR:
        return OK(rmdir(s0));
    case OP_UNLINK:
        return OK(unlink(s0));
    case OP_CHDIR: { /* the workdir: no symlink followed (open_nofollow) */
        int fd = open_nofollow(s0);
        if (fd < 0) return errno;
        int err = fchdir(fd) == 0 ? 0 : detail("fchdir", errno);
        close(fd);
        return err;
    }
    case OP_MOUNT_AT:
        return mount_at(s0, (int)o->a[0], s1, (uint64_t)o->a[1], (uint64_t)o->a[2], (unsigned)o->a[3]);
    case OP_CLONE_AT:
        return clone_at(s0, (int)o->a[0]);
    case OP_ENSURE:
        return ensure(s0, (int)o->a[0]);
    case OP_CLOSE:
        return OK(close(o->a[1] > 0 ? slot_arg(o->a[1]) : (int)o->a[0]));
    case OP_OPEN_PATH: {
        if ((o->a[0] < 0 || o->a[0] >= SLOTS) && o->a[0] != SLOT_HOSTDEV && o->a[0] != SLOT_SCAFFOLD) return EINVAL;
        int fd = open_nofollow(s0);
        if (fd < 0) return errno;
        slots[o->a[0]] = fd;
        return 0;
    }
    case OP_RLIMIT:
        return set_rlimit((int)o->a[0], o->a[1], o->a[2]);
    case OP_BOUNDING:
        return empty_bounding((int)o->a[0], (unsigned long)o->a[1]);
    case OP_PRCTL:
        return OK(prctl((int)o->a[0], (unsigned long)o->a[1], 0, 0, 0));
    case OP_CAPSET_ZERO:
        return capset_zero();
    case OP_LL_CREATE: {
        long fd = syscall(SYS_landlock_create_ruleset, s0, (size_t)o->a[0], 0);
        if (fd < 0) return errno;
        ll_ruleset = (int)fd;
        return 0;
    }
    case OP_LL_PATH:
        return ll_path(s0, (uint64_t)o->a[0], (uint64_t)o->a[1]);
    case OP_LL_NET: {
        struct ll_net_attr rule = {(uint64_t)o->a[1], (uint64_t)o->a[0]};
        return OK(syscall(SYS_landlock_add_rule, ll_ruleset, LANDLOCK_RULE_NET_PORT, &rule, 0));
    }
    case OP_LL_RESTRICT: {
        int err = OK(syscall(SYS_landlock_restrict_self, ll_ruleset, 0));
        close(ll_ruleset);
        ll_ruleset = -1;
        return err;
    }
    case OP_SECCOMP:
        return load_seccomp(s0, o->a[0]);
    case OP_SECCOMP_NOTIFY:
        return load_seccomp_notify(s0, o->a[0], bin(g, o->s[1], o->a[1]), o->a[1],
                                   o->a[2] ? bin(g, o->s[2], o->a[2]) : NULL, o->a[2]);
    case OP_SETID:
        return become_owner((int)o->a[0]);
    case OP_WATCH:
        return watch_protected(s0);
    default:
        return EINVAL;
    }
#undef OK
    (void)s2;
    (void)s3;
}

/* Run one segment's ops from the first; returns -1 when all succeeded, else the failing op's index, with
 * its errno in *err. */
static long run_segment(const struct seg *g, int *err) {
    uint32_t i = 0, steps = 0;
    while (i < g->n_ops) {
        const struct op *o = &g->ops[i];
        if (++steps > 100000) { /* a jump loop: a bug in the plan, not the kernel's fault */
            *err = ELOOP;
            return i;
        }
        if (o->code == OP_JUMP) {
            i = (uint32_t)o->a[0];
            continue;
        }
        op_detail[0] = '\0';
        int e = run_op(g, o);
        if (e && e != o->ok_errno[0] && e != o->ok_errno[1]) {
            if (o->on_fail >= 0) {
                i = (uint32_t)o->on_fail;
                continue;
            }
            if (ll_ruleset >= 0) {
                close(ll_ruleset);
                ll_ruleset = -1;
            }
            *err = e;
            return i;
        }
        i++;
    }
    return -1;
}

#ifdef CORRAL_INIT_MAIN /* the executable: records, the init, main(); the extension has start and apply */

/* Read the watch events queued so far; count = 0: only discard them (what happened before the command). */
static void watch_drain(int count) {
    if (watch_fd < 0) return;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    /* Bounded: another sandbox of the same workdir creating files there without end must not hold this
     * report (the kernel's queue holds 16,384 events; what is past it is not counted). */
    for (int reads = 0; reads < 64 && (n = read(watch_fd, buf, sizeof buf)) > 0; reads++) {
        for (char *p = buf; count && p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            for (int i = 0; ev->len && i < n_watches; i++) {
                const char *name = strrchr(watches[i].path, '/') + 1;
                size_t len = strlen(name);
                if (ev->wd == watches[i].wd && !strncmp(ev->name, name, len) && !strcmp(ev->name + len, ".lock"))
                    watches[i].hits++;
            }
        }
    }
}
/* ---------------------------------------------------------------------------------------------------- */
/* Status records, marshal-encoded (the subset marshal.loads reads: dict, str, int, float, bool, None). */

struct rec {
    char buf[8192];
    size_t len;
};

static void put(struct rec *r, const void *data, size_t n) {
    if (r->len + n > sizeof r->buf) n = sizeof r->buf - r->len;
    memcpy(r->buf + r->len, data, n);
    r->len += n;
}

static void put_u32(struct rec *r, uint32_t v) { put(r, &v, 4); }

/* Whether s[0..n) is well-formed UTF-8 (what marshal's 'u' type must hold: the reader refuses the whole
 * record otherwise). */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n) return 0; /* truncated sequence */
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* A string as marshal 'u' (UTF-8), or as 's' (bytes) when it is not UTF-8: paths and names can be any bytes
 * (a file name a sandbox chose); the reader decodes bytes with surrogateescape. Cut at 2048 bytes. */
static void put_str(struct rec *r, const char *s) {
    if (!s) {
        put(r, "N", 1);
        return;
    }
    size_t n = strlen(s);
    if (n > 2048) n = 2048;
    put(r, utf8_valid((const unsigned char *)s, n) ? "u" : "s", 1);
    put_u32(r, (uint32_t)n);
    put(r, s, n);
}

static void put_int(struct rec *r, int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
        int32_t i = (int32_t)v;
        put(r, "i", 1);
        put(r, &i, 4);
        return;
    }
    /* TYPE_LONG: a signed count of 15-bit digits, least significant first. */
    uint64_t m = v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
    uint16_t digits[5];
    int32_t n = 0;
    while (m) {
        digits[n++] = (uint16_t)(m & 0x7fff);
        m >>= 15;
    }
    put(r, "l", 1);
    int32_t sn = v < 0 ? -n : n;
    put(r, &sn, 4);
    put(r, digits, (size_t)n * 2);
}

static void put_key(struct rec *r, const char *k) { put_str(r, k); }

static void begin(struct rec *r, char kind) {
    r->len = 0;
    put(r, &kind, 1);
    put_u32(r, 0); /* length, filled in by send_rec */
    put(r, "{", 1);
}

static void send_rec(int fd, struct rec *r) {
    put(r, "0", 1); /* end of dict */
    uint32_t n = (uint32_t)(r->len - 5);
    memcpy(r->buf + 1, &n, 4);
    ssize_t w;
    do {
        w = write(fd, r->buf, r->len);
    } while (w < 0 && errno == EINTR);
}

static char hint_buf[1024];

/* A hint is plain text, or a table "\x1eERRNO=text\x1eERRNO=text\x1e*=text" chosen by errno. */
static const char *pick_hint(const char *hint, int err) {
    if (!hint || hint[0] != '\x1e') return hint ? hint : "";
    const char *fallback = "";
    size_t fallback_len = 0;
    for (const char *e = hint; e && *e == '\x1e';) {
        const char *start = e + 1;
        const char *end = strchr(start, '\x1e');
        size_t len = end ? (size_t)(end - start) : strlen(start);
        const char *eq = memchr(start, '=', len);
        if (eq) {
            size_t tlen = len - (size_t)(eq + 1 - start);
            if (start[0] == '*') {
                fallback = eq + 1;
                fallback_len = tlen;
            } else if (atoi(start) == err) {
                if (tlen >= sizeof hint_buf) tlen = sizeof hint_buf - 1;
                memcpy(hint_buf, eq + 1, tlen);
                hint_buf[tlen] = '\0';
                return hint_buf;
            }
        }
        e = end;
    }
    if (fallback_len >= sizeof hint_buf) fallback_len = sizeof hint_buf - 1;
    memcpy(hint_buf, fallback, fallback_len);
    hint_buf[fallback_len] = '\0';
    return hint_buf;
}

static void send_failure(int fd, const char *layer, const char *operation, int err, const char *path,
                         const char *hint) {
    struct rec r;
    begin(&r, 'E');
    put_key(&r, "layer");
    put_str(&r, layer);
    put_key(&r, "operation");
    put_str(&r, operation);
    put_key(&r, "errno");
    put_int(&r, err);
    put_key(&r, "path");
    put_str(&r, path);
    put_key(&r, "hint");
    put_str(&r, hint ? hint : "");
    send_rec(fd, &r);
}

static void send_op_failure(int fd, const struct seg *g, long index, int err) {
    const struct op *o = &g->ops[index];
    send_failure(fd, str(g, o->layer), op_detail[0] ? op_detail : str(g, o->operation), err, str(g, o->path),
                 pick_hint(str(g, o->hint), err));
}

/* ---------------------------------------------------------------------------------------------------- */
/* Seccomp denial reports (see load_seccomp_notify). */

/* The classic-BPF program `errno_bpf` (the decision program: the same rules as the installed filter, with the
 * real actions) run on `d` (what the kernel runs; seccomp's subset: loads from the seccomp_data, the scratch
 * memory, ALU, jumps, returns): its SECCOMP_RET_* verdict. SECCOMP_RET_ALLOW for a call the installed filter
 * only watches (connect/sendto under a private network). Anything malformed gives ERRNO(EPERM). */
#define VERDICT_EPERM (0x00050000u | EPERM)
static uint32_t bpf_verdict(const struct seccomp_data_ *d) {
    const unsigned char *data = (const unsigned char *)d;
    uint32_t a = 0, x = 0, mem[16] = {0};
    size_t n = errno_bpf_len / 8, pc = 0, steps = 0;
    while (pc < n && ++steps < 100000) {
        struct {
            uint16_t code;
            uint8_t jt, jf;
            uint32_t k;
        } in;
        memcpy(&in, errno_bpf + pc * 8, 8);
        pc++;
        uint32_t src = (in.code & 0x08) ? x : in.k;
        switch (in.code & 0x07) {
        case 0x00: /* ld */
            if (in.code == 0x20) {
                if (in.k % 4 || in.k + 4 > sizeof *d) return VERDICT_EPERM;
                memcpy(&a, data + in.k, 4);
            } else if (in.code == 0x00) {
                a = in.k;
            } else if (in.code == 0x60 && in.k < 16) {
                a = mem[in.k];
            } else {
                return VERDICT_EPERM;
            }
            break;
        case 0x01: /* ldx */
            if (in.code == 0x01) x = in.k;
            else if (in.code == 0x61 && in.k < 16) x = mem[in.k];
            else return VERDICT_EPERM;
            break;
        case 0x02:
            if (in.k >= 16) return VERDICT_EPERM;
            mem[in.k] = a;
            break;
        case 0x03:
            if (in.k >= 16) return VERDICT_EPERM;
            mem[in.k] = x;
            break;
        case 0x04: /* alu */
            switch (in.code & 0xf0) {
            case 0x00: a += src; break;
            case 0x10: a -= src; break;
            case 0x20: a *= src; break;
            case 0x30: a = src ? a / src : 0; break;
            case 0x40: a |= src; break;
            case 0x50: a &= src; break;
            case 0x60: a = src < 32 ? a << src : 0; break;
            case 0x70: a = src < 32 ? a >> src : 0; break;
            case 0x80: a = -a; break;
            case 0x90: a = src ? a % src : 0; break;
            case 0xa0: a ^= src; break;
            default: return VERDICT_EPERM;
            }
            break;
        case 0x05: /* jumps */
            if (in.code == 0x05) {
                pc += in.k;
                break;
            }
            {
                int cond;
                switch (in.code & 0xf0) {
                case 0x10: cond = a == src; break;
                case 0x20: cond = a > src; break;
                case 0x30: cond = a >= src; break;
                case 0x40: cond = (a & src) != 0; break;
                default: return VERDICT_EPERM;
                }
                pc += cond ? in.jt : in.jf;
            }
            break;
        case 0x06: { /* ret */
            return in.code == 0x16 ? a : in.k;
        }
        case 0x07: /* misc: tax, txa */
            if (in.code == 0x07) x = a;
            else if (in.code == 0x87) a = x;
            else return VERDICT_EPERM;
            break;
        }
    }
    return VERDICT_EPERM;
}

/* Distinct refusals, in the order first seen: bounded, whatever the sandbox does. */
#define MAX_FOLDS 64
static struct {
    int32_t nr;
    uint64_t v[2];
    int64_t count;
} folds[MAX_FOLDS];
static int n_folds;
static int64_t folds_dropped;

static void fold_denial(int status_w, const struct seccomp_notif_ *n, int err, uint32_t act, const uint64_t *key,
                        const char *addr) {
    uint64_t v[2] = {0, 0};
    int nv = key ? 2 : 0;
    if (key) {
        v[0] = key[0];
        v[1] = key[1];
    }
    for (size_t i = 0; i < n_fold_keys && nv < 2; i++) {
        struct fold_key k;
        memcpy(&k, (const char *)fold_keys + i * sizeof k, sizeof k);
        if (k.nr == n->data.nr && k.arg >= 0 && k.arg < 6) v[nv++] = n->data.args[k.arg] & k.mask;
    }
    for (int i = 0; i < n_folds; i++) {
        if (folds[i].nr == n->data.nr && folds[i].v[0] == v[0] && folds[i].v[1] == v[1]) {
            folds[i].count++;
            return;
        }
    }
    if (n_folds == MAX_FOLDS) {
        folds_dropped++;
        return;
    }
    folds[n_folds].nr = n->data.nr;
    folds[n_folds].v[0] = v[0];
    folds[n_folds].v[1] = v[1];
    folds[n_folds].count = 1;
    n_folds++;
    struct rec r;
    begin(&r, 'D');
    put_key(&r, "nr");
    put_int(&r, n->data.nr);
    put_key(&r, "arch");
    put_int(&r, n->data.arch);
    put_key(&r, "args");
    put(&r, "[", 1);
    put_u32(&r, 6);
    for (int i = 0; i < 6; i++) put_int(&r, (int64_t)n->data.args[i]);
    put_key(&r, "pid");
    put_int(&r, n->pid);
    put_key(&r, "errno");
    put_int(&r, err);
    if (act) { /* a verdict other than an errno: SECCOMP_RET_LOG (the call ran) or _KILL_PROCESS */
        put_key(&r, "act");
        put_int(&r, (int64_t)act);
    }
    if (addr) {
        put_key(&r, "addr");
        put_str(&r, addr);
    }
    send_rec(status_w, &r);
}

/* A watched connect/sendto/sendmsg/sendmmsg (the errno filter allows it; the sandbox's network namespace
 * has only loopback): the destination, read from the caller's memory (for the report only: the kernel
 * decides), when it is an inet or inet6 address off loopback, which the kernel will refuse (ENETUNREACH: no
 * route). The read races the caller (a thread may change the address after it), so a sandbox can make a
 * report name an address it did not finally use; it could equally have tried that address. */
#define MAX_DESTS 4 /* sendmmsg: the destinations of its first 4 messages are looked at */
struct dest {
    uint64_t key[2];
    char text[96];
};

static int peek(pid_t pid, void *buf, size_t len, uint64_t ptr) {
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)ptr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* The sockaddr at `ptr` (`len` bytes) in `pid`: 1 with its fold key and text when off loopback, else 0. */
static int off_loopback(pid_t pid, uint64_t ptr, uint64_t len, struct dest *d) {
    unsigned char sa[28];
    memset(sa, 0, sizeof sa);
    if (!ptr || len < 8) return 0;
    if (peek(pid, sa, len < sizeof sa ? (size_t)len : sizeof sa, ptr) != 0) return 0;
    uint16_t family;
    memcpy(&family, sa, 2);
    unsigned port = (unsigned)sa[2] << 8 | sa[3];
    char ip[64];
    if (family == AF_INET) {
        if (sa[4] == 127 || (sa[4] | sa[5] | sa[6] | sa[7]) == 0) return 0; /* loopback, INADDR_ANY */
        inet_ntop(AF_INET, sa + 4, ip, sizeof ip);
        snprintf(d->text, sizeof d->text, "%s:%u", ip, port);
        uint32_t a;
        memcpy(&a, sa + 4, 4);
        d->key[0] = (uint64_t)AF_INET << 48 | (uint64_t)port << 32 | a;
        d->key[1] = 0;
        return 1;
    }
    if (family == AF_INET6 && len >= 24) {
        static const unsigned char zero[16], one[16] = {[15] = 1}, mapped[12] = {[10] = 0xff, [11] = 0xff};
        const unsigned char *a6 = sa + 8;
        if (!memcmp(a6, zero, 16) || !memcmp(a6, one, 16)) return 0;
        if (!memcmp(a6, mapped, 12) && (a6[12] == 127 || (a6[12] | a6[13] | a6[14] | a6[15]) == 0)) return 0;
        inet_ntop(AF_INET6, a6, ip, sizeof ip);
        snprintf(d->text, sizeof d->text, "[%s]:%u", ip, port);
        uint64_t hi, lo;
        memcpy(&hi, a6, 8);
        memcpy(&lo, a6 + 8, 8);
        d->key[0] = (uint64_t)AF_INET6 << 48 | (uint64_t)port << 32 | (uint32_t)(hi ^ (hi >> 32) ^ lo);
        d->key[1] = lo ^ (hi << 1) ^ 1;
        return 1;
    }
    return 0;
}

/* The off-loopback destinations of a watched call (at most MAX_DESTS, distinct): connect and sendto name
 * theirs in registers, sendmsg in its msghdr (msg_name, msg_namelen), sendmmsg in each of its first
 * MAX_DESTS mmsghdrs. Returns how many were found; 0 when the notification is no longer live (the pid
 * may have been another's by the time of the read). */
static int destinations(const struct seccomp_notif_ *n, struct dest *out) {
    pid_t pid = (pid_t)n->pid;
    int found = 0;
    if (n->data.nr == SYS_connect) {
        found = off_loopback(pid, n->data.args[1], n->data.args[2], &out[0]);
    } else if (n->data.nr == SYS_sendto) {
        found = off_loopback(pid, n->data.args[4], n->data.args[5], &out[0]);
    } else if (n->data.nr == SYS_sendmsg || n->data.nr == SYS_sendmmsg) {
        struct mmsghdr m[MAX_DESTS];
        size_t count = 1, size = sizeof(struct msghdr);
        if (n->data.nr == SYS_sendmmsg) {
            count = n->data.args[2] < MAX_DESTS ? (size_t)n->data.args[2] : MAX_DESTS;
            size = count * sizeof m[0];
        }
        memset(m, 0, sizeof m);
        if (count == 0 || peek(pid, m, size, n->data.args[1]) != 0) return 0;
        for (size_t i = 0; i < count; i++) {
            struct msghdr *h = n->data.nr == SYS_sendmsg ? (struct msghdr *)m : &m[i].msg_hdr;
            struct dest d;
            if (!off_loopback(pid, (uint64_t)(uintptr_t)h->msg_name, h->msg_namelen, &d)) continue;
            int seen = 0;
            for (int j = 0; j < found; j++)
                seen |= out[j].key[0] == d.key[0] && out[j].key[1] == d.key[1];
            if (!seen) out[found++] = d;
        }
    }
    uint64_t id = n->id;
    if (found && ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID_, &id) != 0) return 0;
    return found;
}

/* Whether a notified call is a shared mapping of a file: mmap with MAP_SHARED or MAP_SHARED_VALIDATE, not
 * MAP_ANONYMOUS (seccomp.py, SHARED_MAP_WATCH). */
static int shared_file_map(const struct seccomp_data_ *d) {
    uint64_t f = d->args[3] & 0x23;
    return d->nr == SYS_mmap && (f == 0x01 || f == 0x03);
}

/* For a shared mapping of a file (shared_file_map): EPERM when the fd is a set-id regular file (S_ISUID, or
 * S_ISGID with S_IXGRP: what the kernel's write path clears) open for writing, else 0 (the call runs). Stores
 * through a shared writable mapping do not clear set-id bits (page_mkwrite updates only the times), so a
 * set-id file the host left in a writable root could be rewritten keeping them; write(2) and truncate clear
 * them. A read-only fd cannot give a writable shared mapping, now or by mprotect (no VM_MAYWRITE). The fd is
 * looked up in the caller's own table through /proc (the check reads, never opens, the file), so it is exact
 * when no other task shares that table: a thread of the caller could point the fd number at another file
 * between this check and the kernel's own lookup (docs/security.md, "Known gaps"). A set-id file whose
 * access mode cannot be read, or an fd table that cannot be, is refused (fail closed). */
/* stat(2) by newfstatat, which the filter never refuses or notifies for the init (INIT_CALLS): musl's
 * stat() and fstatat() use SYS_stat, which a profile may rule on. */
static int stat_init(const char *path, struct stat *st) {
    return syscall(SYS_newfstatat, AT_FDCWD, path, st, 0) == 0 ? 0 : -1;
}

static int shared_map_refused(const struct seccomp_notif_ *n) {
    int fd = (int)n->data.args[4];
    if (fd < 0) return 0; /* the kernel answers EBADF */
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%u/fd/%d", n->pid, fd);
    if (stat_init(path, &st) != 0) {
        int err = errno;
        snprintf(path, sizeof path, "/proc/%u/fd", n->pid);
        /* No such fd (the kernel answers EBADF) when the table itself is readable; anything else: refused. */
        return err == ENOENT && stat_init(path, &st) == 0 ? 0 : EPERM;
    }
    int setid = (st.st_mode & S_ISUID) || (st.st_mode & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP);
    if (!S_ISREG(st.st_mode) || !setid) return 0;
    /* A set-id file: refused unless its fd is open read-only (flags, in octal, in fdinfo). */
    snprintf(path, sizeof path, "/proc/%u/fdinfo/%d", n->pid, fd);
    char buf[512];
    int info = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t got = info < 0 ? -1 : read(info, buf, sizeof buf - 1);
    if (info >= 0) close(info);
    if (got <= 0) return EPERM;
    buf[got] = '\0';
    const char *flags = strstr(buf, "flags:");
    if (!flags) return EPERM;
    unsigned long mode = strtoul(flags + 6, NULL, 8);
    return (mode & O_ACCMODE) == O_RDONLY ? 0 : EPERM;
}

/* Whether a notified call sets an extended attribute (seccomp.py, XATTR_WATCH). */
static int xattr_call(const struct seccomp_data_ *d) {
    return d->nr == SYS_setxattr || d->nr == SYS_lsetxattr || d->nr == SYS_fsetxattr;
}

/* The caller's own view of a name, for xattr_refused: an O_PATH fd of what `name` names for thread `tid`
 * (from its root, or its cwd when relative), or -errno. The walk is done here one component at a time
 * (openat O_PATH | O_NOFOLLOW), not by the kernel from /proc/<tid>/root: a lookup by the init resolves
 * /proc/self and /proc/thread-self (and what leads there: /dev/fd, /dev/stdin, /proc/mounts, any symlink
 * to them) as the INIT, so "/proc/self/fd/N" would name the init's fd N, not the caller's. Here `self` and
 * `thread-self` of the sandbox's /proc are the caller's (its tgid, its tid); the other /proc links (the
 * magic ones: fd/N, cwd, root, exe, map_files) name the same object whoever reads them and are followed by
 * the kernel; every other symlink is expanded from its text, an absolute one from the caller's root. A
 * /proc of another pid namespace (whose `self` the init cannot name), or a walk longer than fits, is
 * refused: -EPERM. `follow` is 0 for lsetxattr (a trailing symlink is the object). */
#define WALK_MAX 8192
static int walk_as_caller(pid_t tid, const char *name, int follow) {
    char path[64], buf[WALK_MAX + 1], link[4097];
    struct stat st, proc_st;
    if (stat_init("/proc", &proc_st) != 0) return -EPERM;
    snprintf(path, sizeof path, "/proc/%d/root", (int)tid);
    int root = (int)syscall(SYS_openat, AT_FDCWD, path, O_PATH | O_CLOEXEC | O_DIRECTORY, 0);
    if (root < 0) return -EPERM;
    snprintf(path, sizeof path, "/proc/%d/cwd", (int)tid);
    int cur = name[0] == '/' ? dup(root) : (int)syscall(SYS_openat, AT_FDCWD, path, O_PATH | O_CLOEXEC, 0);
    if (cur < 0) {
        close(root);
        return -EPERM;
    }
    size_t len = strlen(name);
    if (len > WALK_MAX) len = WALK_MAX; /* the caller's name is at most PATH_MAX */
    memcpy(buf, name, len);
    buf[len] = '\0';
    char *p = buf;
    int links = 0, err = 0;
    for (;;) {
        if (*p == '/') { /* absolute (the name, or a link's text): from the caller's root */
            int fd = dup(root);
            if (fd < 0) {
                err = -EPERM;
                break;
            }
            close(cur);
            cur = fd;
            while (*p == '/') p++;
        }
        if (*p == '\0') break;
        char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char *rest = p + n;
        while (*rest == '/') rest++;
        int last = *rest == '\0' && !end; /* "x/" is not last: the kernel follows it (and wants a directory) */
        if (n > 255) {
            err = -ENAMETOOLONG;
            break;
        }
        char comp[256];
        memcpy(comp, p, n);
        comp[n] = '\0';
        p = rest;
        if (!strcmp(comp, ".")) continue;
        if (!strcmp(comp, "..")) {
            struct stat a, b; /* not above the caller's root */
            if (syscall(SYS_newfstatat, cur, "", &a, AT_EMPTY_PATH) == 0 &&
                syscall(SYS_newfstatat, root, "", &b, AT_EMPTY_PATH) == 0 && a.st_dev == b.st_dev &&
                a.st_ino == b.st_ino)
                continue;
        }
        int fd = (int)syscall(SYS_openat, cur, comp, O_PATH | O_NOFOLLOW | O_CLOEXEC, 0);
        if (fd < 0 || syscall(SYS_newfstatat, fd, "", &st, AT_EMPTY_PATH) != 0) {
            err = -errno;
            if (fd >= 0) close(fd);
            break;
        }
        if (!S_ISLNK(st.st_mode) || (last && !follow)) {
            close(cur);
            cur = fd;
            continue;
        }
        if (++links > 40) { /* the kernel's limit: it answers ELOOP */
            close(fd);
            err = -ELOOP;
            break;
        }
        struct statfs sfs;
        struct stat dir;
        if (syscall(SYS_fstatfs, fd, &sfs) != 0 || syscall(SYS_newfstatat, cur, "", &dir, AT_EMPTY_PATH) != 0) {
            close(fd);
            err = -EPERM;
            break;
        }
        int at_proc_root = dir.st_ino == 1 && (!strcmp(comp, "self") || !strcmp(comp, "thread-self"));
        ssize_t got;
        if (sfs.f_type == 0x9fa0 /* PROC_SUPER_MAGIC */ && at_proc_root) {
            if (dir.st_dev != proc_st.st_dev) { /* another /proc: its `self` is not ours to name */
                close(fd);
                err = -EPERM;
                break;
            }
            int tgid = -1; /* the caller's thread group, from /proc/<tid>/status */
            char status[1024];
            snprintf(path, sizeof path, "/proc/%d/status", (int)tid);
            int s = open(path, O_RDONLY | O_CLOEXEC);
            ssize_t r = s < 0 ? -1 : read(s, status, sizeof status - 1);
            if (s >= 0) close(s);
            char *t = r > 0 ? (status[r] = '\0', strstr(status, "\nTgid:")) : NULL;
            if (t) tgid = (int)strtol(t + 6, NULL, 10);
            if (tgid <= 0) {
                close(fd);
                err = -EPERM;
                break;
            }
            got = comp[0] == 's' ? snprintf(link, sizeof link, "%d", tgid)
                                 : snprintf(link, sizeof link, "%d/task/%d", tgid, (int)tid);
        } else if (sfs.f_type == 0x9fa0 && dir.st_ino != 1) {
            /* A /proc/<pid>/... link (fd/N, cwd, root, exe, map_files, ns): the same object for any
             * reader; the kernel follows it. */
            int to = (int)syscall(SYS_openat, cur, comp, O_PATH | O_CLOEXEC, 0);
            close(fd);
            if (to < 0) {
                err = -errno;
                break;
            }
            close(cur);
            cur = to;
            continue;
        } else {
            got = syscall(SYS_readlinkat, fd, "", link, sizeof link - 1);
            if (got < 0 || got >= (ssize_t)sizeof link - 1) {
                close(fd);
                err = -EPERM;
                break;
            }
            link[got] = '\0';
        }
        close(fd);
        /* The link's text, then what was left of the name. */
        size_t left = strlen(p);
        if ((size_t)got + 1 + left > WALK_MAX) {
            err = -EPERM;
            break;
        }
        memmove(buf + got + 1, p, left + 1);
        memcpy(buf, link, (size_t)got);
        buf[got] = left || !last ? '/' : '\0';
        if (!left && !last) buf[got + 1] = '\0';
        p = buf;
    }
    close(root);
    if (err) {
        close(cur);
        return err;
    }
    return cur;
}

/* For a setxattr (xattr_call): EPERM when the file is a regular file with S_ISUID or S_ISGID, else 0 (the call
 * runs). Setting system.posix_acl_access rewrites the group permission bits and keeps S_ISGID for a caller in
 * the file's group, so a set-gid file without group execute that the host left in a writable root (which a
 * write does not clear) would become a set-gid executable of the sandbox's content; no tool needs to set an
 * attribute on a set-id file inside a sandbox. The file is looked up as the caller names it: its fd in its
 * table (/proc/<tid>/fd), or the path read from its memory walked from its root or cwd as the caller would
 * (walk_as_caller: /proc/self/fd/N, /dev/fd/N and /proc/thread-self are the caller's, not the init's):
 * exact when no other task changes that name or fd between this check and the kernel's own lookup
 * (docs/security.md, "Known gaps"). A name that cannot be read or walked is refused (fail closed); one the
 * walk does not find is the kernel's to answer. */
static int xattr_refused(const struct seccomp_notif_ *n) {
    char path[64];
    if (n->data.nr == SYS_fsetxattr) {
        int fd = (int)n->data.args[0];
        if (fd < 0) return 0; /* the kernel answers EBADF */
        snprintf(path, sizeof path, "/proc/%u/fd/%d", n->pid, fd);
    } else {
        char name[4096]; /* PATH_MAX */
        size_t got = 0;
        uint64_t at = n->data.args[0];
        /* Read up to the NUL, a page at most at a time: the name may end just before an unmapped page. */
        while (got < sizeof name) {
            size_t room = 4096 - (size_t)((at + got) & 4095);
            if (room > sizeof name - got) room = sizeof name - got;
            if (peek((pid_t)n->pid, name + got, room, at + got) != 0) return EPERM;
            void *nul = memchr(name + got, '\0', room);
            got += room;
            if (nul) break;
            if (got == sizeof name) return 0; /* no NUL within PATH_MAX: the kernel answers ENAMETOOLONG */
        }
        if (name[0] == '\0') return 0; /* the kernel answers ENOENT */
        int fd = walk_as_caller((pid_t)n->pid, name, n->data.nr != SYS_lsetxattr);
        if (fd < 0) return fd == -ENOENT || fd == -ENOTDIR || fd == -ENAMETOOLONG ? 0 : EPERM;
        struct stat st;
        int bad = syscall(SYS_newfstatat, fd, "", &st, AT_EMPTY_PATH) != 0;
        close(fd);
        if (bad) return EPERM;
        return S_ISREG(st.st_mode) && (st.st_mode & (S_ISUID | S_ISGID)) ? EPERM : 0;
    }
    struct stat st;
    if (syscall(SYS_newfstatat, AT_FDCWD, path, &st, 0) != 0)
        return errno == ENOENT || errno == ENOTDIR || errno == ENAMETOOLONG ? 0 : EPERM;
    return S_ISREG(st.st_mode) && (st.st_mode & (S_ISUID | S_ISGID)) ? EPERM : 0;
}

/* One notification: answer it first (the caller waits), then fold it. */
static void on_notify(int status_w) {
    struct seccomp_notif_ n;
    memset(&n, 0, sizeof n);
    if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_RECV_, &n) != 0) {
        /* ENOENT: the caller died meanwhile; EINTR: a forwarded signal. Nothing else is expected; a listener
         * that fails otherwise is closed (the calls then fail with ENOSYS: still refused). */
        if (errno != ENOENT && errno != EINTR) {
            close(notify_fd);
            notify_fd = -1;
        }
        return;
    }
    uint32_t verdict = bpf_verdict(&n.data);
    if ((verdict == 0x7fff0000u || verdict == 0x7ffc0000u) && (shared_file_map(&n.data) || xattr_call(&n.data))) {
        /* A watched shared mapping or setxattr the rules let run (allow, or a profile's log): the init decides
         * by the file; whatever it lets run goes on below. */
        int refused = xattr_call(&n.data) ? xattr_refused(&n) : shared_map_refused(&n);
        uint64_t id = n.id;
        if (ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID_, &id) != 0) return; /* the caller is gone */
        if (refused) {
            struct seccomp_notif_resp_ resp = {n.id, 0, -refused, 0};
            ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND_, &resp);
            fold_denial(status_w, &n, refused, 0, NULL, NULL);
            return;
        }
    }
    if (verdict == 0x7fff0000u) {
        /* Watched, not refused by the filter: look, then let the kernel run it (and refuse it: no route).
         * CONTINUE is what the decision program says: the decision stays the kernel's. */
        struct dest dests[MAX_DESTS];
        int off = destinations(&n, dests);
        struct seccomp_notif_resp_ resp = {n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE_};
        ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND_, &resp);
        for (int i = 0; i < off; i++) fold_denial(status_w, &n, ENETUNREACH, 0, dests[i].key, dests[i].text);
        return;
    }
    if (verdict == 0x7ffc0000u) { /* a profile's log (or trace): the call runs, and is reported */
        struct seccomp_notif_resp_ resp = {n.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE_};
        ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND_, &resp);
        fold_denial(status_w, &n, 0, verdict, NULL, NULL);
        return;
    }
    if (verdict != 0x80000000u) { /* an errno (anything unexpected: EPERM, refused all the same) */
        int err = (verdict & 0xffff0000u) == 0x00050000u && (verdict & 0xffff) ? (int)(verdict & 0xffff) : EPERM;
        struct seccomp_notif_resp_ resp = {n.id, 0, -err, 0};
        ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND_, &resp); /* ENOENT: the caller died since */
        fold_denial(status_w, &n, err, 0, NULL, NULL);
        return;
    }
    /* A profile's kill_process. Recorded first,
     * then the caller's whole thread group is killed while its call is still pending (it never runs):
     * kill(2) on any thread's id signals its thread group, and SIGKILL ends all of it. The id is checked
     * live first (the caller waits in the call, so its id cannot be reused meanwhile). The answer after
     * the kill refuses the call should the signal have failed. */
    fold_denial(status_w, &n, 0, 0x80000000u, NULL, NULL);
    uint64_t id = n.id;
    if (n.pid > 1 && ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_ID_VALID_, &id) == 0) kill((pid_t)n.pid, SIGKILL);
    struct seccomp_notif_resp_ resp = {n.id, 0, -EPERM, 0};
    ioctl(notify_fd, SECCOMP_IOCTL_NOTIF_SEND_, &resp);
}

static void put_folds(struct rec *r) {
    if (notify_fd < 0 && n_folds == 0) return;
    put_key(r, "dcounts");
    put(r, "[", 1);
    put_u32(r, (uint32_t)n_folds);
    for (int i = 0; i < n_folds; i++) put_int(r, folds[i].count);
    put_key(r, "ddropped");
    put_int(r, folds_dropped);
}

/* Wait for `pid` (reaping orphans on the way) while answering the seccomp filter's notifications; returns
 * like wait4(pid) would. SIGCHLD is blocked (the caller blocked it before the spawn) and read from a
 * signalfd, so that one poll waits for both. */
static pid_t wait_serving(pid_t pid, int *status, struct rusage *ru, int status_w, int sfd) {
    for (;;) {
        int st = 0;
        struct rusage r;
        pid_t got = wait4(-1, &st, notify_fd >= 0 ? WNOHANG : 0, &r);
        if (got == pid) {
            *status = st;
            *ru = r;
            return got;
        }
        if (got > 0) continue;
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return got;
        struct pollfd p[2] = {{notify_fd, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(p, sfd >= 0 ? 2 : 1, -1) < 0) continue; /* EINTR: a forwarded signal */
        if (p[0].revents & POLLIN) on_notify(status_w);
        else if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
            close(notify_fd);
            notify_fd = -1;
        }
        if (sfd >= 0 && (p[1].revents & POLLIN)) {
            char buf[128 * 8];
            ssize_t ignored = read(sfd, buf, sizeof buf);
            (void)ignored;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* The init: pid 1 of the sandbox. */

static volatile pid_t target_pid;

static void forward(int sig, siginfo_t *info, void *ctx) {
    /* Signals sent to the init would be ignored by a target running as pid 1 (the kernel protects a
     * namespace's init): the init passes them on, and the target gets ordinary signal semantics. Not
     * those the kernel generated (SI_KERNEL: a controlling terminal's ^C, ^\ or resize, sent to the whole
     * foreground process group): the target, in that group, has its own copy already. */
    (void)ctx;
    int saved = errno;
    if (target_pid > 0 && !(info && info->si_code == SI_KERNEL)) kill(target_pid, sig);
    errno = saved;
}

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};

static void forward_signals(pid_t to) {
    target_pid = to;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = forward;
    sa.sa_flags = SA_RESTART | SA_SIGINFO;
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaction(forwarded[i], &sa, NULL);
}

struct command {
    char **argv, **envp;
    const char *cwd; /* run()/start(cwd=...): where the command starts, in the sandbox's view; NULL: workdir */
};

/* The whole content of `fd` from offset 0 (a pipe or a memfd), in a malloc'd buffer; NULL on failure. */
static char *read_all(int fd, size_t *len) {
    size_t cap = 1 << 16;
    char *buf = malloc(cap);
    *len = 0;
    lseek(fd, 0, SEEK_SET); /* a memfd shares its offset with the writer's end; a pipe has none (ESPIPE) */
    for (;;) {
        if (!buf) return NULL;
        if (*len == cap) {
            cap *= 2;
            char *bigger = realloc(buf, cap);
            if (!bigger) free(buf);
            buf = bigger;
            continue;
        }
        ssize_t n = read(fd, buf + *len, cap - *len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            free(buf);
            return NULL;
        }
        if (n == 0) return buf;
        *len += (size_t)n;
    }
}

/* argc, envc (u32 each), then the strings, then optionally the cwd (one more string); 0 or -1 when
 * malformed. */
static int parse_command(const char *buf, size_t len, struct command *c) {
    if (len < 8) return -1;
    uint32_t argc, envc;
    memcpy(&argc, buf, 4);
    memcpy(&envc, buf + 4, 4);
    if (argc == 0 || argc > len || envc > len) return -1;
    c->argv = calloc(argc + 1, sizeof(char *));
    c->envp = calloc(envc + 1, sizeof(char *));
    if (!c->argv || !c->envp) return -1;
    size_t off = 8;
    for (uint32_t i = 0; i < argc + envc; i++) {
        const char *end = off < len ? memchr(buf + off, '\0', len - off) : NULL;
        if (!end) return -1;
        if (i < argc)
            c->argv[i] = (char *)buf + off;
        else
            c->envp[i - argc] = (char *)buf + off;
        off = (size_t)(end - buf) + 1;
    }
    c->cwd = NULL;
    if (off < len) {
        if (!memchr(buf + off, '\0', len - off)) return -1;
        c->cwd = buf + off;
    }
    return 0;
}

static const char *env_get(char **envp, const char *name) {
    size_t n = strlen(name);
    for (; *envp; envp++)
        if (!strncmp(*envp, name, n) && (*envp)[n] == '=') return *envp + n + 1;
    return NULL;
}

/* posix_spawn (vfork semantics: no copy of this process's memory, and exec errors come back
 * synchronously), with a PATH search in the command's environment as execvp(3) does: an error other than
 * ENOENT/ENOTDIR (EACCES on a file that exists) is reported over ENOENT elsewhere on PATH. */
/* The file the command was spawned from: read again (its ELF header) only if the command is killed by SIGSYS,
 * to say which foreign ABI the seccomp filter refused. */
static char spawned_path[4096];

static int spawn_command(struct command *c, posix_spawn_file_actions_t *fa, posix_spawnattr_t *at,
                         pid_t *pid) {
    const char *name = c->argv[0];
    if (strchr(name, '/')) {
        snprintf(spawned_path, sizeof spawned_path, "%s", name);
        return posix_spawn(pid, name, fa, at, c->argv, c->envp);
    }
    const char *path = env_get(c->envp, "PATH");
    if (!path) path = "/usr/local/bin:/usr/bin:/bin";
    int saved = 0;
    char full[4096];
    for (const char *d = path;; d++) {
        const char *end = strchrnul(d, ':');
        size_t dlen = (size_t)(end - d);
        int n = dlen ? snprintf(full, sizeof full, "%.*s/%s", (int)dlen, d, name)
                     : snprintf(full, sizeof full, "./%s", name);
        int err = n < 0 || (size_t)n >= sizeof full ? ENAMETOOLONG : posix_spawn(pid, full, fa, at, c->argv, c->envp);
        if (err == 0) {
            memcpy(spawned_path, full, sizeof full);
            return 0;
        }
        if (err != ENOENT && err != ENOTDIR && !saved) saved = err;
        if (!*end) break;
        d = end;
    }
    return saved ? saved : ENOENT;
}

/* The ABI of the ELF file at `path` (read inside the sandbox, by the confined init): "i386", "x32", "x86_64",
 * or "" when it is no ELF file this can tell. */
static const char *elf_abi(const char *path) {
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return "";
    ssize_t n = read(fd, h, sizeof h);
    close(fd);
    if (n < (ssize_t)sizeof h || memcmp(h, "\177ELF", 4) != 0) return "";
    unsigned machine = (unsigned)h[18] | ((unsigned)h[19] << 8);
    if (h[4] == 1 && machine == 3) return "i386";
    if (h[4] == 1 && machine == 62) return "x32";
    if (h[4] == 2 && machine == 62) return "x86_64";
    return "";
}

static void run_command(struct command *c, const int *stdio, int n_stdio, int status_w, uint32_t flags) {
    /* Not dumpable: the command (same uid, same Landlock domain) must not ptrace the init or read its
     * /proc/1/mem, which holds the plan. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    forward_signals(0);
    /* --tty: the pty corral made (never the caller's terminal, which is its own session's: EPERM) becomes
     * the session's controlling terminal; the command, in the init's process group, is its foreground. */
    if ((flags & PLAN_CTTY) && (n_stdio < 1 || ioctl(stdio[0], TIOCSCTTY, 0) != 0)) {
        send_failure(status_w, "tty", "ioctl(TIOCSCTTY)", n_stdio < 1 ? EBADF : errno, NULL,
                     "the command's stdin must be a terminal that is no session's controlling terminal");
        _exit(125);
    }
    /* Every fd close-on-exec; the stdio (and passed) fds lifted above the target numbers, then dup2'd into
     * place by the spawn (dup2 clears the flag on the copy). */
    syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
    int high[MAX_FDS];
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    for (int i = 0; i < n_stdio; i++) {
        high[i] = fcntl(stdio[i], F_DUPFD_CLOEXEC, n_stdio);
        if (high[i] < 0) {
            send_failure(status_w, "exec", "fcntl(F_DUPFD_CLOEXEC)", errno, NULL, "");
            _exit(125);
        }
        posix_spawn_file_actions_adddup2(&fa, high[i], i);
    }
    /* All signals default and unblocked. The launcher set every signal the fork server ignores back to
     * its default before this executable started (ignored dispositions survive an exec), so the only ones
     * not at their default here are the handlers of forward_signals: those are reset (one sigaction each,
     * not one for each of the 64 signals). */
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t handled, none;
    sigemptyset(&handled);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaddset(&handled, forwarded[i]);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&at, &handled);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    /* The init is confined already: the cwd resolves in the sandbox's own view (relative: to the workdir),
     * as the command's own chdir would. */
    if (c->cwd && chdir(c->cwd) != 0) {
        send_failure(status_w, "cwd", "chdir", errno, c->cwd,
                     "cwd= must name a directory the sandbox can see (relative to its workdir)");
        _exit(125);
    }
    /* With a notifying seccomp filter, SIGCHLD is read from a signalfd so that one poll waits for the
     * command's exit and the filter's notifications (the command starts with no signal blocked). */
    int sfd = -1;
    if (notify_fd >= 0) {
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
        sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    }
    watch_drain(0); /* what happened before the command (a pre-forked sandbox's wait) is not its doing */
    pid_t pid;
    int err = spawn_command(c, &fa, &at, &pid);
    if (err) {
        send_failure(status_w, "exec", "execve", err, c->argv[0], "");
        _exit(127);
    }
    target_pid = pid; /* signals that came before are lost, as they would be before exec */
    for (int i = 0; i < n_stdio; i++) {
        close(high[i]);
        close(stdio[i]); /* so that the caller sees EOF when the command and its children are done */
    }
    struct rec r;
    begin(&r, 'X');
    put_key(&r, "pid");
    put_int(&r, pid);
    send_rec(status_w, &r);
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    if (notify_fd >= 0 && sfd >= 0) {
        if (wait_serving(pid, &status, &ru, status_w, sfd) != pid) _exit(0);
    } else {
        for (;;) { /* reap orphans reparented to us until the command itself is reaped */
            pid_t got = wait4(-1, &status, 0, &ru);
            if (got == pid) break;
            if (got < 0 && errno == ECHILD) _exit(0);
        }
    }
    /* When the command ended, on the supervisor's clock (CLOCK_MONOTONIC: the init is in the host's time
     * namespace): the supervisor judges the wall-clock limit by it even if it reads this record late. */
    struct timespec ended;
    clock_gettime(CLOCK_MONOTONIC, &ended);
    /* The command is done; as pid 1 of the namespace, end whatever it left behind (a double-forked daemon)
     * and reap it all before reporting, so that the report itself says the sandbox is empty: the supervisor
     * can then return the result without waiting for this process to exit and its namespaces to go. */
    int alone = getpid() == 1;
    if (alone) {
        /* Every process of the namespace descends from this one, and an orphan is reparented to it (or to a
         * subreaper, itself a descendant): no child left means nothing left, and nothing to kill (kill(-1)
         * walks every process of the host). A child left, running or not, and everything is killed. */
        pid_t left;
        while ((left = wait4(-1, NULL, WNOHANG, NULL)) > 0 || (left < 0 && errno == EINTR)) {
        }
        if (left == 0) {
            kill(-1, SIGKILL);
            while (wait4(-1, NULL, 0, NULL) > 0 || errno == EINTR) {
            }
        }
    }
    /* The command's own usage (with its reaped descendants), not the init's. */
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    begin(&r, 'S');
    put_key(&r, "status");
    put_int(&r, status);
    put_key(&r, "cpu");
    put(&r, "g", 1);
    put(&r, &cpu, 8);
    put_key(&r, "maxrss");
    put_int(&r, (int64_t)ru.ru_maxrss * 1024);
    put_key(&r, "alone");
    put(&r, alone ? "T" : "F", 1);
    put_key(&r, "ended");
    put_int(&r, (int64_t)ended.tv_sec * 1000000000 + ended.tv_nsec);
    put_folds(&r);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) {
        put_key(&r, "elf");
        put_str(&r, elf_abi(spawned_path));
    }
    watch_drain(1);
    int refused = 0;
    for (int i = 0; i < n_watches; i++) refused += watches[i].hits > 0;
    if (refused) { /* a marshal list of the protected files the command tried to replace */
        put_key(&r, "protected");
        put(&r, "[", 1);
        put_u32(&r, (uint32_t)refused);
        for (int i = 0; i < n_watches; i++)
            if (watches[i].hits) put_str(&r, watches[i].path);
    }
    send_rec(status_w, &r);
    _exit(0);
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* Close every fd above 2 but those in keep (close_range over the gaps). */
static void close_all_but(int *keep, int n) {
    qsort(keep, (size_t)n, sizeof(int), cmp_int);
    unsigned low = 3;
    for (int i = 0; i < n; i++) {
        if (keep[i] < (int)low) continue;
        if ((unsigned)keep[i] > low) syscall(SYS_close_range, low, (unsigned)keep[i] - 1, 0);
        low = (unsigned)keep[i] + 1;
    }
    syscall(SYS_close_range, low, ~0U, 0);
}

static void receive_command(const struct plan *p) {
    int status_w = p->h->status_w, ctl = p->h->ctl_fd;
    char *buf = malloc(MAX_REQUEST);
    char cbuf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    if (!buf) _exit(125);
    struct iovec iov = {buf, MAX_REQUEST};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    ssize_t n;
    do {
        n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    int fds[MAX_FDS], n_fds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k && n_fds < MAX_FDS; i++) memcpy(&fds[n_fds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    close(ctl);
    if (n <= 0) _exit(0); /* discarded: the supervisor closed its end */
    if (msg.msg_flags & MSG_CTRUNC) {
        /* The kernel dropped fds it could not install (this sandbox's RLIMIT_NOFILE): never run the command
         * with stdio missing. */
        send_failure(status_w, "setup", "recvmsg(SCM_RIGHTS) of the command's stdio", EMFILE, NULL,
                     "the sandbox's open-files limit (resources.fds) is too low for the fds passed to it");
        _exit(125);
    }
    struct command c;
    const char *cmd = buf + 1;
    size_t cmd_len = (size_t)n - 1;
    if (buf[0] == 'F' && n_fds > 0) { /* a large command, in the last fd */
        int fd = fds[--n_fds];
        char *big = read_all(fd, &cmd_len);
        close(fd);
        if (!big) {
            send_failure(status_w, "exec", "read the command", errno, NULL, "");
            _exit(125);
        }
        cmd = big;
    } else if (buf[0] != 'I') {
        cmd_len = 0;
    }
    if (parse_command(cmd, cmd_len, &c) != 0) {
        send_failure(status_w, "exec", "receive the command", EINVAL, NULL, "malformed command message");
        _exit(125);
    }
    run_command(&c, fds, n_fds, status_w, 0);
}

static void init_main(const char *buf, size_t len) {
    struct plan p;
    if (parse_plan(buf, len, &p) != 0) _exit(125);
    const struct plan_header *h = p.h;
    /* Hold nothing of the fork server's: another sandbox's pipe end held here would keep that sandbox's
     * output from ever reaching EOF. */
    int keep[3 * MAX_FDS + 4], n = 0;
    keep[n++] = h->status_w;
    if (h->ctl_fd >= 0) keep[n++] = h->ctl_fd;
    if (h->cmd_fd >= 0) keep[n++] = h->cmd_fd;
    for (int i = 0; i < h->n_stdio; i++) keep[n++] = p.stdio[i];
    for (uint32_t i = 0; i < h->n_keep; i++) keep[n++] = p.keep[i];
    if (h->net_sysfs_fd >= 0) keep[n++] = slots[SLOT_NET_SYSFS] = h->net_sysfs_fd;
    if (h->proxy_fd >= 0) keep[n++] = slots[SLOT_PROXY] = h->proxy_fd;
    close_all_but(keep, n);
    own_maps = (h->flags & PLAN_OWN_MAPS) != 0;
    for (uint32_t i = 0; i < h->n_segs; i++) {
        int err = 0;
        long failed = run_segment(&p.segs[i], &err);
        if (failed >= 0) {
            send_op_failure(h->status_w, &p.segs[i], failed, err);
            _exit(125);
        }
    }
    if (h->mode == MODE_STUB) {
        struct rec rec;
        begin(&rec, 'R');
        send_rec(h->status_w, &rec);
        receive_command(&p);
    }
    struct command c;
    const char *cmd = p.cmd;
    size_t cmd_len = h->cmd_len;
    if (h->cmd_fd >= 0) {
        char *big = read_all(h->cmd_fd, &cmd_len);
        close(h->cmd_fd);
        if (!big) {
            send_failure(h->status_w, "exec", "read the command", errno, NULL, "");
            _exit(125);
        }
        cmd = big;
    }
    if (parse_command(cmd, cmd_len, &c) != 0) {
        send_failure(h->status_w, "exec", "read the command", EINVAL, NULL, "malformed plan");
        _exit(125);
    }
    run_command(&c, p.stdio, h->n_stdio, h->status_w, h->flags);
}

/* ---------------------------------------------------------------------------------------------------- */

/* The executable: corral-init PLAN_FD. The plan arrives on a pipe (written whole before the exec), so
 * nothing of the fork server's memory comes along: a fresh, small process. */

int main(int argc, char **argv) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL); /* the launcher blocked every signal around the exec */
    if (argc != 2) return 125;
    /* Launched from the fork server's fd of this file (execveat, AT_EMPTY_PATH), the kernel names the task
     * after the fd's number: the name ps, tests and operators know it by. */
    prctl(PR_SET_NAME, "corral-init", 0, 0, 0);
    int fd = atoi(argv[1]);
    size_t len = 0;
    char *buf = read_all(fd, &len);
    if (!buf) _exit(125);
    close(fd);
    init_main(buf, len);
    return 125;
}

#else
/* The Python interface. */

struct launch {
    const char *path;
    int exec_fd; /* >= 0: exec this fd of the init (execveat AT_EMPTY_PATH), not `path` (see py_start) */
    char *argv[3];
    int keep[3 * MAX_FDS + 4];
    int n_keep;
    int ambient;
    int premap; /* write our own id maps (uid, gid mapped to themselves) before the exec */
    unsigned uid, gid;
    uint64_t reset; /* signals ignored here (bit sig - 1), set back to their default before the exec */
    volatile int err;
    volatile int mapping; /* err is the id maps' (op_detail says which file), not the exec's */
};

/* Make every permitted capability inheritable and ambient, so that it survives the exec (in a new user
 * namespace whose id maps are not written yet, the exec would otherwise drop them all). */
static int keep_caps_across_exec(void) {
    struct cap_header hdr = {CAP_VERSION_3, 0};
    struct cap_data data[2];
    if (syscall(SYS_capget, &hdr, data) != 0) return errno;
    data[0].inheritable = data[0].permitted;
    data[1].inheritable = data[1].permitted;
    if (syscall(SYS_capset, &hdr, data) != 0) return errno;
    for (int cap = 0; cap < 64; cap++) {
        if (!((data[cap / 32].permitted >> (cap % 32)) & 1)) continue;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0) return errno;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Pooled network namespaces (supervisor/forkserver/netpool.py). Creating and destroying a network
 * namespace is the most expensive part of a sandbox (~0.7 ms of CPU here: sysctl tables, loopback, and the
 * kernel's cleanup_net worker), so a fork server running as root keeps namespaces it made itself and lends
 * each to one sandbox at a time. Such a namespace belongs to the initial user namespace: a sandbox (root
 * only in its own) cannot reconfigure it (interfaces, routes, sysctls, netfilter), and cannot mount a sysfs
 * for it either, so a detached sysfs mount of it is made here, once, for the sandbox to bind. */

static int host_netns = -1;

/* Our own network namespace, opened once (before the first unshare). */
static int host_net(void) {
    if (host_netns < 0) host_netns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    return host_netns;
}

/* Back into our own network namespace; staying in a lent one would give it to every later sandbox whose
 * policy allows the host's network. */
static void back_home(void) {
    if (setns(host_netns, CLONE_NEWNET) != 0) Py_FatalError("corral fork server: setns(own network namespace)");
}

#define CORRAL_FSOPEN_CLOEXEC 0x1
#define CORRAL_FSCONFIG_CMD_CREATE 6
#define CORRAL_FSMOUNT_CLOEXEC 0x1
#define CORRAL_MOUNT_ATTRS 0xf /* MOUNT_ATTR_RDONLY | NOSUID | NODEV | NOEXEC */

/* The /proc/net files netns_unused reads (see there), in its order. */
static const char *const net_state_files[3] = {"sockstat", "ip6_flowlabel", "dev"};

/* A detached overlay of the layers `lowerdir` (colon-separated, topmost first; no upper layer): read-only,
 * nosuid, nodev; its fd (close-on-exec). Made in this process's namespaces, so its superblock belongs to
 * this process's user namespace. */
static PyObject *py_overlay_new(PyObject *self, PyObject *args) {
    (void)self;
    const char *lowerdir;
    if (!PyArg_ParseTuple(args, "s", &lowerdir)) return NULL;
    int fs = (int)syscall(SYS_fsopen, "overlay", CORRAL_FSOPEN_CLOEXEC), mnt = -1, err = 0;
    if (fs < 0) err = errno;
    if (!err && syscall(SYS_fsconfig, fs, CORRAL_FSCONFIG_SET_STRING, "lowerdir", lowerdir, 0) != 0) err = errno;
    if (!err && syscall(SYS_fsconfig, fs, CORRAL_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) err = errno;
    if (!err && (mnt = (int)syscall(SYS_fsmount, fs, CORRAL_FSMOUNT_CLOEXEC, 0x7 /* RDONLY|NOSUID|NODEV */)) < 0)
        err = errno;
    if (fs >= 0) close(fs);
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(mnt);
}

static PyObject *py_netns_new(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    if (host_net() < 0) return PyErr_SetFromErrno(PyExc_OSError);
    if (unshare(CLONE_NEWNET) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    int ns = -1, fs = -1, mnt = -1;
    int err = loopback_up();
    /* ICMP echo sockets (what ping uses without CAP_NET_RAW) for every group in this namespace, which has
     * only loopback: a new one allows none ("1 0"). Read per thread's namespace; borrowers cannot change it
     * (it needs CAP_NET_ADMIN over the initial user namespace). A convenience: a failure is ignored. */
    if (!err) (void)write_file("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    if (!err && (ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) < 0) err = errno;
    if (!err && (fs = (int)syscall(SYS_fsopen, "sysfs", CORRAL_FSOPEN_CLOEXEC)) < 0) err = errno;
    if (!err && syscall(SYS_fsconfig, fs, CORRAL_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) err = errno;
    if (!err && (mnt = (int)syscall(SYS_fsmount, fs, CORRAL_FSMOUNT_CLOEXEC, CORRAL_MOUNT_ATTRS)) < 0) err = errno;
    if (fs >= 0) close(fs);
    /* The files netns_unused reads, opened here, inside: a /proc/net file shows the namespace it was opened
     * in, whoever reads it later (its seq_file holds that namespace), so each check is three preads, not
     * two setns and three opens. ip6_flowlabel is missing without IPv6 (-1). */
    int state[3] = {-1, -1, -1};
    for (int i = 0; i < 3 && !err; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/thread-self/net/%s", net_state_files[i]);
        if ((state[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0 && !(i == 1 && errno == ENOENT)) err = errno;
    }
    back_home();
    if (err) {
        if (ns >= 0) close(ns);
        if (mnt >= 0) close(mnt);
        for (int i = 0; i < 3; i++)
            if (state[i] >= 0) close(state[i]);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(iiiii)", ns, mnt, state[0], state[1], state[2]);
}

/* Whether a lent namespace is back to what a new one is, in everything a process without capabilities over
 * it can change and that matters to the next borrower (docs/architecture.md, "Pooled network namespaces"):
 *   sockstat       no socket of any family ("sockets: used", counted per namespace; abstract unix names and
 *                  multicast memberships go with their sockets) and no TCP connection in TIME-WAIT (which
 *                  would hold its port);
 *   ip6_flowlabel  no IPv6 flow label (an exclusive one lingers after its socket is closed and refuses the
 *                  label to the next borrower);
 *   dev            no packet, byte or error counted on any interface (only lo exists): no traffic at all, so
 *                  nothing traffic creates (TCP metrics and fast-open cookies, route exceptions, inet peers,
 *                  the counters of /proc/net/snmp, snmp6 and netstat) can be there either.
 * What is left: the few counters a send that found no route bumps without a packet (Ip/Ip6 OutNoRoutes), not
 * read here (snmp and snmp6 would cost the fork server 50 us more per sandbox). The fork server reads each file
 * once, by pread on the fds netns_new opened inside the namespace (no setns). */
static char state_buf[16384];

/* The whole content of a /proc/net file opened by netns_new (`fd`, -1: missing), read from its start: 0,
 * 1 when larger than any pristine one, -2 when missing, -1 on error (errno). */
static int read_state(int fd, size_t *len) {
    if (fd < 0) return -2;
    size_t n = 0;
    for (;;) {
        ssize_t got = pread(fd, state_buf + n, sizeof state_buf - 1 - n, (off_t)n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) break;
        n += (size_t)got;
        if (n == sizeof state_buf - 1) { /* larger than any pristine file: not empty */
            state_buf[n] = '\0';
            *len = n;
            return 1;
        }
    }
    state_buf[n] = '\0';
    *len = n;
    return 0;
}

/* Whether every whitespace-separated word of `line` (after a "name:" prefix, if any) is "0". */
static int zeros_after(const char *line, const char *end) {
    const char *p = memchr(line, ':', (size_t)(end - line));
    p = p ? p + 1 : line;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (p >= end) break;
        const char *w = p;
        while (p < end && *p != ' ' && *p != '\t') p++;
        if (!(p - w == 1 && *w == '0')) return 0;
    }
    return 1;
}

/* 1: every line from line `first` on is all zeros after its "name:". */
static int all_zero(const char *buf, size_t len, int first) {
    const char *p = buf, *end = buf + len;
    for (int i = 0; p < end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        if (i >= first && !zeros_after(p, e)) return 0;
        p = nl ? nl + 1 : end;
    }
    return 1;
}

static PyObject *py_netns_unused(PyObject *self, PyObject *args) {
    int sockstat, flowlabel, dev;
    (void)self;
    if (!PyArg_ParseTuple(args, "iii", &sockstat, &flowlabel, &dev)) return NULL;
    size_t n = 0;
    int r, err = 0, clean = 0;
    /* sockstat first: right after a borrower exits its sockets may still wait for RCU. */
    if ((r = read_state(sockstat, &n)) < 0) {
        err = r == -2 ? ENOENT : errno;
        goto out;
    }
    const char *used = strstr(state_buf, "sockets: used "), *tw = strstr(state_buf, " tw ");
    if (r || !used || !tw || atol(used + 14) != 0 || atol(tw + 4) != 0) goto out;
    if ((r = read_state(flowlabel, &n)) == -1) goto fail;
    if (r == 1) goto out;
    if (r == 0) { /* the header line only */
        const char *nl = memchr(state_buf, '\n', n);
        if (nl && (size_t)(nl + 1 - state_buf) < n) goto out;
    }
    if ((r = read_state(dev, &n)) == -1) goto fail;
    if (r == 1 || (r == 0 && !all_zero(state_buf, n, 2))) goto out;
    clean = 1;
    goto out;
fail:
    err = errno;
out:
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(clean);
}

/* The kernel's struct sigaction (x86-64, arm64: handler, flags, restorer, a 64-bit mask) and the
 * rt_sigaction(2) syscall on it: glibc's wrapper refuses signals 32 and 33. */
#define K_NSIG 64
struct k_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

static int raw_sigaction(int sig, const struct k_sigaction *act, struct k_sigaction *old) {
    return (int)syscall(SYS_rt_sigaction, sig, act, old, sizeof(uint64_t));
}

static char launch_stack[64 * 1024] __attribute__((aligned(16)));

/* The launched child, sharing the fork server's memory (CLONE_VM) while the fork server waits
 * (CLONE_VFORK), as posix_spawn's does: every fd close-on-exec but the ones the init needs, then exec. */
static int launch_child(void *arg) {
    struct launch *l = arg;
    if (l->premap && (l->err = id_map(l->uid, l->gid))) {
        l->mapping = 1;
        _exit(127);
    }
    if (l->ambient && (l->err = keep_caps_across_exec())) _exit(127);
    /* Ignored dispositions survive the exec: every signal reaches the init, and so the command, at its
     * default (the init's posix_spawn then resets only the handlers it installed itself). */
    struct k_sigaction dfl = {0};
    dfl.handler = SIG_DFL;
    for (int sig = 1; sig <= K_NSIG; sig++)
        if (l->reset & (1ULL << (sig - 1))) raw_sigaction(sig, &dfl, NULL);
    syscall(SYS_close_range, 3, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
    for (int i = 0; i < l->n_keep; i++) fcntl(l->keep[i], F_SETFD, 0);
    char *envp[] = {NULL};
    if (l->exec_fd >= 0)
        syscall(SYS_execveat, l->exec_fd, "", l->argv, envp, AT_EMPTY_PATH);
    else
        execve(l->path, l->argv, envp);
    l->err = errno;
    _exit(127);
}

/* The signals this process ignores (Python ignores SIGPIPE and SIGXFSZ; a caller's `nohup` SIGHUP; any
 * real-time signal a parent left ignored), looked up once: the fork server sets no disposition after its
 * start. By the raw syscall, as a bit mask: glibc's sigaction and sigaddset refuse its internal signals 32
 * and 33 (EINVAL), which an ignoring parent passes on through the exec like any other. */
static uint64_t ignored_signals(void) {
    static uint64_t ignored;
    static int known;
    if (!known) {
        for (int sig = 1; sig <= K_NSIG; sig++) {
            struct k_sigaction old;
            if (raw_sigaction(sig, NULL, &old) == 0 && old.handler == SIG_IGN) ignored |= 1ULL << (sig - 1);
        }
        known = 1;
    }
    return ignored;
}

static PyObject *py_start(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"flags", "path", "plan_fd", "keep", "netns", "slot", "premap", "exec_fd", NULL};
    const char *path;
    int plan_fd;
    unsigned long flags;
    PyObject *keep, *premap = Py_None;
    (void)self;
    int netns = -1, exec_fd = -1;
    Py_buffer slot = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "kyiO!|iw*$Oi", kwlist, &flags, &path, &plan_fd, &PyTuple_Type,
                                     &keep, &netns, &slot, &premap, &exec_fd))
        return NULL;
    unsigned premap_uid = 0, premap_gid = 0;
    if (premap != Py_None && !PyArg_ParseTuple(premap, "II", &premap_uid, &premap_gid)) {
        if (slot.buf) PyBuffer_Release(&slot);
        return NULL;
    }
    /* The slot: memory shared with the supervisor, where the kernel stores the init's pid (CLONE_PARENT_SETTID)
     * before the init runs, so that an init whose fork server dies before replying is still known. */
    pid_t *settid = slot.buf && slot.len >= (Py_ssize_t)sizeof(pid_t) ? (pid_t *)slot.buf : NULL;
    static struct launch l;
    char fdbuf[16];
    snprintf(fdbuf, sizeof fdbuf, "%d", plan_fd);
    l.path = path;
    l.exec_fd = exec_fd;
    l.argv[0] = (char *)path;
    l.argv[1] = fdbuf;
    l.argv[2] = NULL;
    l.err = 0;
    l.mapping = 0;
    l.n_keep = 0;
    /* Mapped to root by the launcher (premap), the exec keeps the capabilities; otherwise (another uid, or
     * maps the fork server writes after the launch) they must be carried across it as ambient ones. */
    l.premap = premap != Py_None && (flags & CLONE_NEWUSER) != 0;
    l.uid = premap_uid;
    l.gid = premap_gid;
    l.ambient = (flags & CLONE_NEWUSER) != 0 && !(l.premap && premap_uid == 0);
    l.reset = ignored_signals();
    op_detail[0] = '\0';
    Py_ssize_t n = PyTuple_GET_SIZE(keep);
    if (n > (Py_ssize_t)(sizeof l.keep / sizeof l.keep[0])) {
        if (slot.buf) PyBuffer_Release(&slot);
        PyErr_SetString(PyExc_ValueError, "too many fds to keep");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(keep, i));
        if (fd == -1 && PyErr_Occurred()) {
            if (slot.buf) PyBuffer_Release(&slot);
            return NULL;
        }
        l.keep[l.n_keep++] = (int)fd;
    }
    /* A pooled network namespace: the init is born in it (it is ours, in the initial user namespace, so the
     * init could not enter it itself), and this process goes back to its own right after. */
    if (netns >= 0) {
        if (host_net() < 0 || setns(netns, CLONE_NEWNET) != 0) {
            if (slot.buf) PyBuffer_Release(&slot);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    /* No signal handler of ours may run in the child, which shares our memory. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    /* Born in its user and pid namespaces (the init is pid 1 of the new one). CLONE_PARENT: the init is the
     * supervisor's child, which reaps it through a pidfd, and whose death fires the init's PDEATHSIG. */
    int pid = clone(launch_child, launch_stack + sizeof launch_stack,
                    (int)flags | CLONE_VM | CLONE_VFORK | CLONE_PARENT | (settid ? CLONE_PARENT_SETTID : 0) | SIGCHLD,
                    &l, settid);
    int clone_errno = errno;
    if (slot.buf) PyBuffer_Release(&slot);
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (netns >= 0) back_home();
    if (pid < 0) {
        errno = clone_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (l.mapping) return Py_BuildValue("(iis)", pid, l.err, op_detail);
    return Py_BuildValue("(iiO)", pid, l.err, Py_None);
}

/* identities(paths, known=None) -> bytes: for each path (str or bytes), lstat's (st_dev, st_ino, st_mode with
 * bit 33 for a regular file of several links, st_uid/st_gid), or its errno. What mounts.fingerprint compares,
 * done here because a fingerprint lstats ~50 paths several times per spawn. `known` (bytes, one per path):
 * where nonzero, the path is known to be missing (supervisor/sandbox/_absent.py: the directory that would
 * hold it is as it was when it was found missing), and its record is ENOENT's without an lstat. The GIL is
 * released around the lstats (the supervisor takes fingerprints in worker threads beside its event loop). */
static PyObject *py_identities(PyObject *self, PyObject *args) {
    PyObject *paths, *known = Py_None;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!|O", &PyList_Type, &paths, &known)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    if (known != Py_None && (!PyBytes_Check(known) || PyBytes_GET_SIZE(known) != n)) {
        PyErr_SetString(PyExc_TypeError, "identities() takes known as bytes, one per path, or None");
        return NULL;
    }
    const char *skip = known == Py_None ? NULL : PyBytes_AS_STRING(known);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 32);
    PyObject **encoded = PyMem_Calloc((size_t)(n ? n : 1), sizeof(PyObject *));
    if (!out || !encoded) {
        Py_XDECREF(out);
        PyMem_Free(encoded);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(paths, i);
        if (PyBytes_Check(item)) {
            Py_INCREF(item);
            encoded[i] = item;
        } else if (!PyUnicode_Check(item) || !PyUnicode_FSConverter(item, &encoded[i])) {
            for (Py_ssize_t j = 0; j < i; j++) Py_XDECREF(encoded[j]);
            PyMem_Free(encoded);
            Py_DECREF(out);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "identities() takes a list of paths");
            return NULL;
        }
    }
    char *buf = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t rec[4] = {0, 0, 0, 0};
        struct stat st;
        int err = skip && skip[i] ? ENOENT : lstat(PyBytes_AS_STRING(encoded[i]), &st) == 0 ? 0 : errno;
        if (!err) {
            rec[0] = (uint64_t)st.st_dev;
            rec[1] = (uint64_t)st.st_ino;
            /* Bit 33: a regular file with other hard links (mounts._links_outside refuses a denied one, so
             * a link made since the view was built must change its identity; a directory's count moves
             * with every subdirectory, so only files carry it). */
            rec[2] = (uint64_t)st.st_mode | (S_ISREG(st.st_mode) && st.st_nlink > 1 ? (uint64_t)1 << 33 : 0);
            /* The owner too: a root caller's sandbox runs as its workdir's owner (namespaces.owner_maps),
             * so a workdir given to another account must not be served by a sandbox built before. */
            rec[3] = (uint64_t)st.st_uid << 32 | (uint64_t)st.st_gid;
        } else {
            rec[2] = (uint64_t)1 << 40 | (uint64_t)err; /* no mode has bit 40 */
        }
        memcpy(buf + i * 32, rec, 32);
    }
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) Py_DECREF(encoded[i]);
    PyMem_Free(encoded);
    return out;
}

static PyObject *py_apply(PyObject *self, PyObject *args) {
    Py_buffer plan;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*", &plan)) return NULL;
    struct plan p;
    if (parse_plan(plan.buf, (size_t)plan.len, &p) != 0) {
        PyBuffer_Release(&plan);
        PyErr_SetString(PyExc_ValueError, "malformed sandbox plan");
        return NULL;
    }
    int err = 0;
    long failed = -1, before = 0;
    for (uint32_t i = 0; i < p.h->n_segs && failed < 0; i++) {
        failed = run_segment(&p.segs[i], &err);
        if (failed >= 0) failed += before;
        before += p.segs[i].n_ops;
    }
    PyBuffer_Release(&plan);
    if (failed < 0) Py_RETURN_NONE;
    if (op_detail[0]) return Py_BuildValue("(lis)", failed, err, op_detail);
    return Py_BuildValue("(liO)", failed, err, Py_None);
}

static PyMethodDef methods[] = {
    {"start", (PyCFunction)(void (*)(void))py_start, METH_VARARGS | METH_KEYWORDS,
     "start(flags, path, plan_fd, keep_fds, netns_fd=-1, slot=..., *, premap=None) -> (pid, errno, failed): "
     "launch the init (the supervisor's child) in new namespaces, and in the network namespace netns_fd if "
     "given; with premap=(uid, gid), the child first maps them to themselves in its new user namespace. errno "
     "is that of a failed exec, or of the id maps when `failed` names the file (the child has then exited)."},
    {"apply", py_apply, METH_VARARGS, "apply(plan) -> None | (index, errno, operation): run the ops here."},
    {"overlay_new", py_overlay_new, METH_VARARGS,
     "overlay_new(lowerdir) -> fd: a detached read-only, nosuid, nodev overlay of the layers lowerdir (no "
     "upper), made in this process's namespaces."},
    {"netns_new", py_netns_new, METH_NOARGS,
     "netns_new() -> (netns_fd, sysfs_fd, sockstat_fd, flowlabel_fd, dev_fd): a new network namespace with lo "
     "up, a detached read-only sysfs mount of it, and its /proc/net files netns_unused reads (flowlabel_fd -1 "
     "without IPv6); the caller stays in its own."},
    {"netns_unused", py_netns_unused, METH_VARARGS,
     "netns_unused(sockstat_fd, flowlabel_fd, dev_fd) -> bool: as new: no socket, TIME-WAIT, flow label, "
     "packet or counter in it."},
    {"identities", py_identities, METH_VARARGS,
     "identities(paths: list[str | bytes], known: bytes | None = None) -> bytes: lstat's dev, ino, mode (or "
     "errno) and uid/gid of each, 32 bytes each; ENOENT's record, without an lstat, where known[i] is not 0."},
    {NULL, NULL, 0, NULL},
};

static int put_int(PyObject *dict, const char *key, Py_ssize_t value) {
    PyObject *v = PyLong_FromSsize_t(value);
    if (!v) return -1;
    int rc = PyDict_SetItemString(dict, key, v);
    Py_DECREF(v);
    return rc;
}

/* {record: {field: offset, ..., "sizeof": size}} for the records of RECORDS. */
static PyObject *layout(void) {
    PyObject *out = PyDict_New();
    PyObject *f = NULL;
    if (!out) return NULL;
#define X_OFFSET(rec, name)                                                                                 \
    if (put_int(f, #name, offsetof(struct rec, name)) < 0) goto fail;
#define X_RECORD(rec, FIELDS)                                                                               \
    if (!(f = PyDict_New())) goto fail;                                                                     \
    FIELDS(X_OFFSET, rec)                                                                                   \
    if (put_int(f, "sizeof", sizeof(struct rec)) < 0 || PyDict_SetItemString(out, #rec, f) < 0) goto fail; \
    Py_CLEAR(f);
    RECORDS(X_RECORD)
    return out;
fail:
    Py_XDECREF(f);
    Py_DECREF(out);
    return NULL;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cinit", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cinit(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
#define X_EXPORT(name, num)                                                                                 \
    if (PyModule_AddIntConstant(m, "OP_" #name, num) < 0) goto fail;
    OPS(X_EXPORT)
    if (PyModule_AddIntConstant(m, "MAGIC", PLAN_MAGIC) < 0) goto fail;
    PyObject *records = layout();
    if (!records || PyModule_AddObject(m, "LAYOUT", records) < 0) {
        Py_XDECREF(records);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "MAX_SEGMENTS", MAX_SEGS) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "SLOTS", SLOTS) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "SLOT_NET_SYSFS", SLOT_NET_SYSFS) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "SLOT_HOSTDEV", SLOT_HOSTDEV) < 0) goto fail;
    if (PyModule_AddIntConstant(m, "SLOT_SCAFFOLD", SLOT_SCAFFOLD) < 0) goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
#endif
