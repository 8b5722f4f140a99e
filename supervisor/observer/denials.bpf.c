// SPDX-License-Identifier: GPL-2.0
/* corral's denial observer (docs/denials.md, "mounts, landlock, rlimit: the syscall-exit observer").
 *
 * Reports, for the sandboxes of one supervisor only, the refusals no other layer can see:
 * - a path syscall answered EROFS: the read-only mount view refused a write, create, delete or rename;
 * - a path syscall (or bind/connect) answered EACCES/EXDEV while Landlock's denial count for the caller's
 *   domain went up: Landlock refused it (the count moves in landlock_log_denial, audit on or off);
 * - any syscall answered EMFILE: a file descriptor refused at RLIMIT_NOFILE;
 * - a path syscall (stat and access too) answered ENOENT or EACCES (not Landlock's) at or below one of
 *   the sandbox's denied paths (filesystem.deny: a directory hidden under an empty tmpfs, a file under
 *   the null device on a nodev mount): the path was hidden.
 * One program on raw_syscalls:sys_exit (a BTF tracepoint: this kernel refuses fentry/fexit/LSM programs
 * with EPERM, and a tracepoint needs no trampoline), plus sched_process_fork/exit to keep the scope.
 *
 * Scope: a sandbox is its pid namespace. A pid namespace is registered when corral's fork server (its
 * tgid is in `spawners`) creates a process that is pid 1 of a new one (sched_process_fork: before the
 * child runs, so nothing it does is missed), and marked dead when that init exits. Every other task on
 * the host pays two compares per syscall exit, plus a map lookup for the rare failures above.
 *
 * Bounded: per sandbox at most MAX_DISTINCT distinct refusals are sent (the fold map counts repeats in
 * the kernel, keyed by the sandbox and a hash of the refusal); past that they are only counted as
 * dropped. A sandbox that fails the same call 100,000 times costs the supervisor one event.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define EPERM 1
#define EACCES 13
#define EXDEV 18
#define ENOENT 2
#define EMFILE 24
#define EROFS 30
#define MAX_DISTINCT 64
#define PATH_MAX_ 256

struct sandbox {
    __u64 emitted; /* events sent (the supervisor waits for this many) */
    __u64 dropped; /* refusals past MAX_DISTINCT, or lost to a full ring buffer */
    __u64 distinct;
    __u64 ll_seen; /* Landlock's denial count when last looked at */
    __u32 dead; /* its init exited: ignore it (its inode number may be reused) */
    __u32 pad;
};

struct fold_key {
    __u32 ns;
    __u32 pad;
    __u64 hash;
};

struct event {
    __u64 hash;   /* the fold key's hash (for the count) */
    __u32 ns;     /* the sandbox: its pid namespace's inode number */
    __s32 pid;    /* the caller's pid in the sandbox */
    __s32 nr;     /* the syscall */
    __s32 err;      /* what it was answered; nr -1: EMFILE */
    __u32 landlock; /* 1: Landlock counted a denial during it */
    __u32 port;     /* bind/connect: the port of the address */
    __u32 flags;    /* open/openat/openat2: the open flags */
    __u32 pad;
    char path[PATH_MAX_];
    char path2[PATH_MAX_];
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u32);
} spawners SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct sandbox);
} sandboxes SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct fold_key);
    __type(value, __u64);
} folds SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct event);
} scratch SEC(".maps");

/* The task's pid namespace (its inode number) and its pid there. */
static __always_inline __u32 ns_of(struct task_struct *t, __s32 *nr) {
    struct pid *p = BPF_CORE_READ(t, group_leader, thread_pid);
    unsigned int level = BPF_CORE_READ(p, level);
    struct upid up = {};
    bpf_probe_read_kernel(&up, sizeof up, &p->numbers[level & 31]);
    if (nr) *nr = up.nr;
    return BPF_CORE_READ(up.ns, ns.inum);
}

/* The live sandbox the current task is in (and its pid there), or NULL. */
static __always_inline struct sandbox *current_sandbox(__u32 *ns, __s32 *pid) {
    *ns = ns_of(bpf_get_current_task_btf(), pid);
    struct sandbox *s = bpf_map_lookup_elem(&sandboxes, ns);
    return s && !s->dead ? s : NULL;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child) {
    __u32 tgid = BPF_CORE_READ(parent, tgid);
    if (!bpf_map_lookup_elem(&spawners, &tgid)) return 0;
    __u32 mine = ns_of(parent, NULL);
    struct pid *p = BPF_CORE_READ(child, thread_pid);
    unsigned int level = BPF_CORE_READ(p, level);
    struct upid up = {};
    bpf_probe_read_kernel(&up, sizeof up, &p->numbers[level & 31]);
    __u32 ns = BPF_CORE_READ(up.ns, ns.inum);
    if (ns == mine || up.nr != 1) return 0;
    struct sandbox fresh = {};
    bpf_map_update_elem(&sandboxes, &ns, &fresh, BPF_ANY);
    return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *t) {
    __s32 nr;
    __u32 ns = ns_of(t, &nr);
    if (nr != 1 || BPF_CORE_READ(t, pid) != BPF_CORE_READ(t, tgid)) return 0;
    struct sandbox *s = bpf_map_lookup_elem(&sandboxes, &ns);
    if (s) s->dead = 1;
    return 0;
}

/* Landlock's denial count for the task's domain, all its layers (the hierarchy's num_denials, which
 * landlock_log_denial increments whether or not audit is on): 0 when the task has no Landlock domain. The
 * cred blob's offset is Landlock's place among the LSMs with cred blobs (`ll_offset`, set by the loader;
 * 0 when Landlock is the first, the kernel's default order). */
struct settings {
    __u32 ll_enabled;
    __u32 ll_offset;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct settings);
} settings SEC(".maps");

static __always_inline __u64 landlock_denials(struct task_struct *t, __u32 ll_offset) {
    if (!bpf_core_field_exists(((struct landlock_hierarchy *)0)->num_denials)) return 0;
    const struct cred *c = BPF_CORE_READ(t, cred);
    void *sec = BPF_CORE_READ(c, security);
    struct landlock_ruleset *dom = NULL;
    if (!sec || bpf_probe_read_kernel(&dom, sizeof dom, sec + (ll_offset & 0xfff)) != 0 || !dom) return 0;
    struct landlock_hierarchy *h = BPF_CORE_READ(dom, hierarchy);
    __u64 sum = 0;
    for (int i = 0; i < 8 && h; i++) {
        sum += BPF_CORE_READ(h, num_denials.counter);
        h = BPF_CORE_READ(h, parent);
    }
    return sum;
}

static __always_inline __u64 fnv(__u64 h, const char *s) {
    for (int i = 0; i < PATH_MAX_; i++) {
        char c = s[i];
        if (!c) break;
        h = (h ^ (unsigned char)c) * 1099511628211ULL;
    }
    return h;
}

/* x86_64 syscall numbers of the calls that name a path (or an address): the arguments that hold them
 * (1-based; 0: none). */
static __always_inline int path_args(long nr, int *a, int *b) {
    *b = 0;
    switch (nr) {
    case 2: case 85: case 83: case 84: case 87: case 133: case 76: case 90: case 92: case 94: case 188:
    case 189: case 197: case 198: case 59:
        *a = 1; /* open creat mkdir rmdir unlink mknod truncate chmod chown lchown (l)setxattr
                   (l)removexattr execve */
        return 1;
    case 257: case 437: case 258: case 263: case 259: case 268: case 452: case 260: case 280: case 322:
        *a = 2; /* openat openat2 mkdirat unlinkat mknodat fchmodat fchmodat2 fchownat utimensat execveat */
        return 1;
    case 82: case 86:
        *a = 1; /* rename link */
        *b = 2;
        return 1;
    case 264: case 316: case 265:
        *a = 2; /* renameat renameat2 linkat */
        *b = 4;
        return 1;
    case 88:
        *a = 2; /* symlink: the link made */
        return 1;
    case 266:
        *a = 3; /* symlinkat */
        return 1;
    case 49: case 42:
        *a = 0; /* bind connect: the port, from the sockaddr */
        return 1;
    case 4: case 6: case 21: case 89: case 80: case 191: case 192:
        *a = 1; /* stat lstat access readlink chdir getxattr lgetxattr: looked at for ENOENT only */
        return 2;
    case 262: case 332: case 269: case 439: case 267:
        *a = 2; /* newfstatat statx faccessat faccessat2 readlinkat */
        return 2;
    }
    return 0;
}

/* The denied directories of a sandbox (filesystem.deny: hidden under an empty tmpfs), set by the
 * supervisor when it makes the sandbox's Child: a path below one of them that is not found (ENOENT) was
 * hidden. At most MAX_DENIED, each shorter than DENIED_LEN, without a trailing slash. */
#define MAX_DENIED 4
#define DENIED_LEN 128
struct denied {
    __u32 n;
    __u32 set; /* its denied paths' set in denied_files (0: none) */
    char p[MAX_DENIED][DENIED_LEN];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 8192);
    __type(key, __u32);
    __type(value, struct denied);
} denieds SEC(".maps");

/* Whether `path` is one of the denied directories or below one. */
static __always_inline int under_denied(const struct denied *d, const char *path) {
    for (int i = 0; i < MAX_DENIED; i++) {
        if (i >= d->n) break;
        int j = 0, ok = 1;
        for (; j < DENIED_LEN - 1; j++) {
            char c = d->p[i][j];
            if (!c) break;
            if (path[j] != c) {
                ok = 0;
                break;
            }
        }
        if (!ok || j == 0) continue;
        char next = path[j & (PATH_MAX_ - 1)];
        if (next == 0 || next == '/') return 1;
    }
    return 0;
}

/* Every denied path of a set (a policy's filesystem.deny: a directory hidden under an empty tmpfs, a
 * file under the null device on a nodev mount, which no open may open: EACCES), by the FNV-1a hash of
 * its exact spelling: the whole list (the default profiles hide some 24 credential paths), where
 * `denieds` holds only the first MAX_DENIED. The supervisor fills a set once per distinct list and names
 * it in each sandbox's `denieds` entry (nothing more per sandbox). A plain hash map: nothing evicted. */
struct denied_file {
    __u32 set;
    __u32 pad;
    __u64 hash;
};

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 32768);
    __uint(map_flags, BPF_F_NO_PREALLOC); /* memory for what the sets hold, not for the bound */
    __type(key, struct denied_file);
    __type(value, __u8);
} denied_files SEC(".maps");

/* Whether `path` or one of its ancestors (as spelled: each prefix that ends before a '/') is one of the
 * set's denied paths (value 1). The set also holds their ancestors (value 2), so the walk stops at the
 * first prefix that leads to no denied path: one hash lookup for most paths (/usr/...), one per
 * component at most. */
static __always_inline int denied_prefix(__u32 set, const char *path) {
    struct denied_file k = {.set = set};
    __u64 h = 14695981039346656037ULL;
    for (int i = 0; i < PATH_MAX_; i++) {
        char c = path[i];
        if ((c == '/' || c == 0) && i > 0) {
            k.hash = h;
            __u8 *v = bpf_map_lookup_elem(&denied_files, &k);
            if (!v) return 0;
            if (*v == 1) return 1;
        }
        if (!c) break;
        h = (h ^ (unsigned char)c) * 1099511628211ULL;
    }
    return 0;
}

static __always_inline __u64 arg(struct pt_regs *regs, int n) {
    switch (n) {
    case 1: return BPF_CORE_READ(regs, di);
    case 2: return BPF_CORE_READ(regs, si);
    case 3: return BPF_CORE_READ(regs, dx);
    case 4: return BPF_CORE_READ(regs, r10);
    }
    return 0;
}

/* Every syscall's exit, on the whole host: anything but a failure a layer can cause returns at once (two
 * compares). A sandbox's failure is folded, and sent the first time. */
SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret) {
    if (ret != -EROFS && ret != -EACCES && ret != -EXDEV && ret != -EMFILE && ret != -ENOENT) return 0;
    __s32 err = (__s32)-ret;
    long nr = BPF_CORE_READ(regs, orig_ax);
    int a = 0, b = 0;
    int kind = err == EMFILE ? 1 : path_args(nr, &a, &b);
    if (!kind || (kind == 2 && err != ENOENT && err != EACCES)) return 0; /* a query (stat, access) */
    __u32 ns;
    __s32 pid;
    struct sandbox *s = current_sandbox(&ns, &pid);
    if (!s || pid == 1) return 0; /* not a sandbox's, or its init's own setup */
    int landlock = 0;
    if (kind == 1 && (err == EACCES || err == EXDEV)) {
        /* Landlock's, if its domain counted a denial since the sandbox's last look: else the file's mode
         * (or another LSM), which is no sandbox layer's unless the path is hidden (below). */
        __u32 zero = 0;
        struct settings *cfg = bpf_map_lookup_elem(&settings, &zero);
        if (cfg && cfg->ll_enabled) {
            __u64 seen = landlock_denials(bpf_get_current_task_btf(), cfg->ll_offset);
            __u64 last = __sync_fetch_and_add(&s->ll_seen, 0);
            if (seen > last) {
                __sync_lock_test_and_set(&s->ll_seen, seen);
                landlock = 1;
            }
        }
        if (!landlock && err == EXDEV) return 0;
    }
    /* Not found, or not searchable (a hidden directory is an empty mode-0 tmpfs): reported only below one
     * of the sandbox's denied directories; elsewhere it is every program's daily bread. */
    struct denied *hidden = NULL;
    if (!landlock && (err == ENOENT || err == EACCES)) {
        hidden = bpf_map_lookup_elem(&denieds, &ns);
        if (!hidden || !a) return 0;
    }
    __u32 zero = 0;
    struct event *e = bpf_map_lookup_elem(&scratch, &zero);
    if (!e) return 0;
    e->ns = ns;
    e->pid = pid;
    e->nr = (__s32)nr;
    e->err = err;
    e->landlock = landlock;
    e->port = 0;
    e->flags = 0;
    e->pad = 0;
    e->path[0] = e->path2[0] = 0;
    if (nr == 2) e->flags = (__u32)arg(regs, 2);
    else if (nr == 257) e->flags = (__u32)arg(regs, 3);
    else if (nr == 437) bpf_probe_read_user(&e->flags, sizeof e->flags, (void *)arg(regs, 3));
    if (err == EMFILE) {
        e->nr = -1; /* one report for the ceiling, whatever call met it */
    } else if (nr == 49 || nr == 42) {
        __u8 sa[4] = {};
        if (bpf_probe_read_user(sa, sizeof sa, (void *)arg(regs, 2)) == 0) e->port = (__u32)sa[2] << 8 | sa[3];
    } else {
        if (a) bpf_probe_read_user_str(e->path, sizeof e->path, (void *)arg(regs, a));
        if (b) bpf_probe_read_user_str(e->path2, sizeof e->path2, (void *)arg(regs, b));
        if (hidden && !under_denied(hidden, e->path) && !(hidden->set && denied_prefix(hidden->set, e->path)))
            return 0;
    }
    __u64 h = 14695981039346656037ULL ^ ((__u64)(__u32)e->nr << 32 | (__u32)err);
    h = (h ^ ((__u64)landlock << 40 | e->port)) * 1099511628211ULL;
    h = fnv(h, e->path);
    h = fnv(h ^ 0xff, e->path2);
    e->hash = h;
    struct fold_key k = {.ns = ns, .hash = h};
    __u64 *count = bpf_map_lookup_elem(&folds, &k);
    if (count) {
        __sync_fetch_and_add(count, 1);
        return 0;
    }
    if (__sync_fetch_and_add(&s->distinct, 1) >= MAX_DISTINCT) {
        __sync_fetch_and_add(&s->dropped, 1);
        return 0;
    }
    __u64 one = 1;
    if (bpf_map_update_elem(&folds, &k, &one, BPF_NOEXIST) != 0) { /* a racing thread made it first */
        count = bpf_map_lookup_elem(&folds, &k);
        if (count) __sync_fetch_and_add(count, 1);
        return 0;
    }
    if (bpf_ringbuf_output(&events, e, sizeof *e, 0) != 0) {
        bpf_map_delete_elem(&folds, &k);
        __sync_fetch_and_add(&s->dropped, 1);
        return 0;
    }
    __sync_fetch_and_add(&s->emitted, 1);
    return 0;
}
