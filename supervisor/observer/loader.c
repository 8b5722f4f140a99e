/* corral-observer: loads and attaches denials.bpf.o for one supervisor, then relays its events.
 *
 * Usage: corral-observer OBJECT LANDLOCK_OFFSET FD  (started by the supervisor, root only; FD is a
 * SOCK_SEQPACKET socket to it). LANDLOCK_OFFSET: where Landlock's part of a cred's security blob is
 * (0 when it is the first LSM with a cred blob, the kernel's default), or -1: do not tell Landlock's
 * EACCES from a file mode's (Landlock's refusals are then not reported). Protocol on FD, one message each:
 *   -> "R" + the attached program count (u32) + flags (u32: 1, Landlock keeps a denial count) + the names
 *      of programs not attached (text), with the fds
 *      of the maps spawners, sandboxes, folds, denieds and denied_files (SCM_RIGHTS): ready. The
 *      supervisor registers its fork server's tgid in spawners and each sandbox's denied directories in
 *      denieds and denied paths' hashes in denied_files itself, and
 *      reads and deletes sandboxes and folds entries.
 *   -> "F" + why: failed (then exits 1).
 *   -> "E" + struct event: one refusal, the first time it was seen in its sandbox.
 * It exits when the supervisor closes FD or dies (PR_SET_PDEATHSIG), and then the kernel detaches every
 * program and frees the maps: nothing of it outlives its supervisor.
 */
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int SOCK = 3;

static void fail(const char *fmt, ...) {
    char msg[512] = "F";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 1, sizeof msg - 1, fmt, ap);
    va_end(ap);
    send(SOCK, msg, strlen(msg), MSG_NOSIGNAL);
    exit(1);
}

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap) {
    (void)level, (void)fmt, (void)ap;
    return 0;
}

static int on_event(void *ctx, void *data, size_t size) {
    (void)ctx;
    char buf[1 + 1024];
    if (size > sizeof buf - 1) return 0;
    buf[0] = 'E';
    memcpy(buf + 1, data, size);
    /* Blocks when the supervisor is behind: the ring buffer then fills and the programs count drops. */
    if (send(SOCK, buf, size + 1, MSG_NOSIGNAL) < 0 && errno == EPIPE) exit(0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int ll_offset = atoi(argv[2]);
    SOCK = atoi(argv[3]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) return 0;
    if (!getenv("CORRAL_OBSERVER_DEBUG")) libbpf_set_print(quiet); /* else libbpf's log on stderr */
    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) fail("no kernel BTF (/sys/kernel/btf/vmlinux): %s", strerror(errno));
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    if (!obj) fail("open %s: %s", argv[1], strerror(errno));
    char missing[256] = "";
    struct bpf_program *prog;
    bpf_object__for_each_program(prog, obj) {
        /* A program whose kernel function is not there (an older kernel, another architecture) is left
         * out and named; the rest work. */
        const char *sec = bpf_program__section_name(prog);
        const char *target = strchr(sec, '/');
        if (!target) continue;
        target++;
        int kind = strncmp(sec, "tp_btf/", 7) == 0 ? BTF_KIND_TYPEDEF : BTF_KIND_FUNC;
        char name[128];
        snprintf(name, sizeof name, kind == BTF_KIND_TYPEDEF ? "btf_trace_%s" : "%s", target);
        if (btf__find_by_name_kind(vmlinux, name, kind) < 0) {
            bpf_program__set_autoload(prog, false);
            size_t used = strlen(missing);
            snprintf(missing + used, sizeof missing - used, "%s%s", used ? " " : "", target);
        }
    }
    /* Landlock's denial count (struct landlock_hierarchy.num_denials, Linux 6.15): without it Landlock's
     * EACCES cannot be told from a file mode's, and the supervisor says so. */
    unsigned flags = 0;
    int id = btf__find_by_name_kind(vmlinux, "landlock_hierarchy", BTF_KIND_STRUCT);
    if (id > 0) {
        const struct btf_type *t = btf__type_by_id(vmlinux, id);
        const struct btf_member *m = btf_members(t);
        for (int i = 0; i < btf_vlen(t); i++, m++)
            if (strcmp(btf__name_by_offset(vmlinux, m->name_off), "num_denials") == 0) flags |= 1;
    }
    if (!(flags & 1)) ll_offset = -1;
    btf__free(vmlinux);
    if (bpf_object__load(obj) != 0) fail("load: %s", strerror(errno));
    unsigned attached = 0;
    bpf_object__for_each_program(prog, obj) {
        if (!bpf_program__autoload(prog)) continue;
        if (!bpf_program__attach(prog))
            fail("attach %s: %s", bpf_program__section_name(prog), strerror(errno));
        attached++;
    }
    struct {
        unsigned enabled, offset;
    } cfg = {ll_offset >= 0, ll_offset >= 0 ? (unsigned)ll_offset : 0};
    unsigned zero = 0;
    if (bpf_map_update_elem(bpf_object__find_map_fd_by_name(obj, "settings"), &zero, &cfg, 0) != 0)
        fail("settings: %s", strerror(errno));
    struct ring_buffer *rb =
        ring_buffer__new(bpf_object__find_map_fd_by_name(obj, "events"), on_event, NULL, NULL);
    if (!rb) fail("ring buffer: %s", strerror(errno));
    int fds[5] = {bpf_object__find_map_fd_by_name(obj, "spawners"),
                  bpf_object__find_map_fd_by_name(obj, "sandboxes"),
                  bpf_object__find_map_fd_by_name(obj, "folds"),
                  bpf_object__find_map_fd_by_name(obj, "denieds"),
                  bpf_object__find_map_fd_by_name(obj, "denied_files")};
    char ready[1 + 4 + 4 + sizeof missing];
    ready[0] = 'R';
    memcpy(ready + 1, &attached, 4);
    memcpy(ready + 5, &flags, 4);
    memcpy(ready + 9, missing, strlen(missing));
    char control[CMSG_SPACE(sizeof fds)];
    memset(control, 0, sizeof control);
    struct iovec iov = {ready, 9 + strlen(missing)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    if (sendmsg(SOCK, &msg, MSG_NOSIGNAL) < 0) return 0;
    struct pollfd p[2] = {{ring_buffer__epoll_fd(rb), POLLIN, 0}, {SOCK, POLLIN, 0}};
    for (;;) {
        if (poll(p, 2, -1) < 0 && errno != EINTR) return 1;
        if (p[1].revents) return 0; /* the supervisor closed its end (or wrote, which it never does) */
        if (p[0].revents) ring_buffer__consume(rb);
    }
}
