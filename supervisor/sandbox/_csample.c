/* supervisor.sandbox._csample: the supervisor's hot-path reads in one call each.
 *
 * read_leaf: a cgroup leaf's usage files (cgroups/_stats.py). The sampler reads every running child's cgroup
 * each full round: on a 2-vCPU VM the Python half of six os.pread calls per child (six calls, six bytes
 * objects, their parsing) cost as much as the six syscalls. It takes the leaf's open fds, preads them with the
 * GIL released once, parses the kernel's formats in C and returns the values. Nothing here opens a path: the
 * fds were opened by the leaf (cgroupfs files corral created, never sandbox-writable).
 *
 * Reader: the same reads with the leaf's sampling state kept in C (the periodic sampler's turns and what they
 * carry), so that the Python around each leaf's read is one method call.
 *
 * stat_at: the identities a pre-forked sandbox's Recheck compares (forkserver/_recheck.py), on the event
 * loop: each a single-name, no-follow fstatat relative to a held directory fd (or an lstat of a host path;
 * one through directories a sandbox may write resolved with no symlink followed on the way).
 *
 * fs_type: a file system's type (_absent.py: where a directory's ctime can be trusted).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* The slots of read_leaf's fds and of its result, in cgroups/_stats.py's order. */
enum { S_MEM, S_PEAK, S_EVENTS, S_CPU, S_PIDS, S_PIDS_EVENTS, S_TCP, N_SLOTS };

#define BUF 256

/* The unsigned decimal at p (up to end, a newline or a space ending it); -1 when there is none. */
static int64_t number(const char *p, const char *end) {
    int64_t v = 0;
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9') {
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*p++ - '0');
    }
    if (p == start || (p < end && *p != '\n' && *p != ' ')) return -1;
    return v;
}

/* The value after `key` (which ends with a space) at the start of a line of a flat-keyed file; -1 when
 * the key or its value is missing. */
static int64_t keyed(const char *buf, size_t len, const char *key) {
    size_t k = strlen(key);
    const char *end = buf + len;
    for (const char *line = buf; line < end;) {
        if ((size_t)(end - line) > k && memcmp(line, key, k) == 0) return number(line + k, end);
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) break;
        line = nl + 1;
    }
    return -1;
}

/* pread each fd >= 0 of `fds` into its buffer; lens[i] = -1 where fds[i] < 0. Returns 0, or errno. */
static int pread_fds(const int *fds, char bufs[N_SLOTS][BUF], ssize_t *lens) {
    for (int i = 0; i < N_SLOTS; i++) {
        lens[i] = -1;
        if (fds[i] < 0) continue;
        lens[i] = pread(fds[i], bufs[i], BUF - 1, 0);
        if (lens[i] < 0) return errno;
    }
    return 0;
}

/* pread_fds with the GIL released (`release`) or held: a Reader's turn reads one small file, ~1-4 us,
 * never blocking; handing the GIL over and back for that cost more than the reads when another thread (the
 * event loop) wanted it, and a full round makes one call per leaf. Returns 0, or errno (OSError set). */
static int pread_all(const int *fds, char bufs[N_SLOTS][BUF], ssize_t *lens, int release) {
    int err;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        err = pread_fds(fds, bufs, lens);
        Py_END_ALLOW_THREADS
    } else {
        err = pread_fds(fds, bufs, lens);
    }
    if (err) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return err;
}

/* Parse what pread_all read: v[i] the value (the oom_kill and max counters, the CPU in the file's own unit:
 * us for v2 cpu.stat, ns for v1 cpuacct.usage), -1 where nothing was read. Returns -1 (ValueError set) for
 * a format it does not know. */
static int parse_all(char bufs[N_SLOTS][BUF], const ssize_t *lens, int cpu_v2, int64_t *v) {
    for (int i = 0; i < N_SLOTS; i++) {
        v[i] = -1;
        if (lens[i] < 0) continue;
        const char *b = bufs[i];
        size_t n = (size_t)lens[i];
        if (i == S_EVENTS)
            v[i] = keyed(b, n, "oom_kill "); /* v2 memory.events and v1 memory.oom_control alike */
        else if (i == S_PIDS_EVENTS)
            v[i] = keyed(b, n, "max ");
        else if (i == S_CPU && cpu_v2)
            v[i] = keyed(b, n, "usage_usec ");
        else
            v[i] = number(b, b + n);
        if (v[i] < 0) {
            PyErr_Format(PyExc_ValueError, "unexpected cgroup file format (slot %d)", i);
            return -1;
        }
    }
    return 0;
}

static PyObject *int_or_none(int64_t v) {
    if (v < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

static PyObject *cpu_or_none(int64_t v, int cpu_v2) {
    if (v < 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(cpu_v2 ? (double)v / 1e6 : (double)v / 1e9);
}

static PyObject *read_leaf(PyObject *self, PyObject *args) {
    int fds[N_SLOTS];
    int cpu_v2;
    (void)self;
    if (!PyArg_ParseTuple(args, "(iiiiiii)p", &fds[0], &fds[1], &fds[2], &fds[3], &fds[4], &fds[5], &fds[6],
                          &cpu_v2))
        return NULL;
    char bufs[N_SLOTS][BUF];
    ssize_t lens[N_SLOTS];
    int64_t v[N_SLOTS];
    if (pread_all(fds, bufs, lens, 1) || parse_all(bufs, lens, cpu_v2, v) < 0) return NULL;
    PyObject *out = PyTuple_New(N_SLOTS);
    if (!out) return NULL;
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *item = i == S_CPU ? cpu_or_none(v[i], cpu_v2) : int_or_none(v[i]);
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

/* ------------------------------------------------------------------------------------------------------------
 * Reader: a leaf's sampling state in C (cgroups/_stats.py, LeafSampler: the same rules, documented there).
 * `configure` gives it the fds (every file; the periodic sampler's, quiet counters -1), which counters are
 * quiet with their held values, and the v1 socket-buffer level that counts as the limit reached; it keeps
 * its carried values across configure calls. `read(mode)` reads and returns the leaf's CgroupStats: mode 0
 * every file (the final sample), 1 the periodic sampler's files (quiet counters' held values), 2 a turn:
 * the counters not quiet and the next file in turn of the usage, the CPU, the peak, pids.current and the
 * socket-buffer peak, the others carried (every file at the first read, and again when a counter moved).
 * A carried peak is raised to the usage at the usage's turn: a lower bound of the kernel's, never above it.
 * Not thread-safe: its LeafSampler calls it with its lock held (the fds stay open meanwhile). The periodic
 * sampler's reads (modes 1 and 2) keep the GIL: see pread_all. */

enum { QUIET_OOM = 1, QUIET_PIDS = 2 };
static const int turn_slots[] = {S_MEM, S_CPU, S_PEAK, S_PIDS, S_TCP};
#define N_TURN_SLOTS 5

typedef struct {
    PyObject_HEAD
    PyTypeObject *stats_type; /* CgroupStats: a tuple subclass of 6 */
    int cpu_v2;
    int all[N_SLOTS], due[N_SLOTS];
    int turns[N_TURN_SLOTS][N_SLOTS];
    int nturns;
    unsigned turn;
    int quiet;
    int64_t seen_oom, seen_pids; /* the quiet counters' held values, -1: none */
    int64_t tcp_hit_at;          /* -1: not watched */
    int64_t socket_hit;          /* -1: not reached */
    int carry;                   /* every file was read once: the c_* hold */
    int64_t c_mem, c_peak, c_cpu, c_pids, c_tcp, c_oom, c_pe;
} Reader;

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    PyObject *type;
    int cpu_v2;
    unsigned int turn = 0;
    static char *kwlist[] = {"stats_type", "cpu_v2", "turn", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!p|I", kwlist, &PyType_Type, &type, &cpu_v2, &turn))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "Reader() takes a tuple subclass");
        return -1;
    }
    Py_INCREF(type);
    Py_XSETREF(self->stats_type, (PyTypeObject *)type);
    self->cpu_v2 = cpu_v2;
    self->turn = turn;
    for (int i = 0; i < N_SLOTS; i++) self->all[i] = self->due[i] = -1;
    self->nturns = 0;
    self->quiet = 0;
    self->seen_oom = self->seen_pids = self->tcp_hit_at = self->socket_hit = -1;
    self->carry = 0;
    self->c_peak = self->c_cpu = self->c_pids = self->c_tcp = self->c_oom = self->c_pe = -1;
    return 0;
}

static void Reader_dealloc(Reader *self) {
    Py_XDECREF(self->stats_type);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int64_t opt_int64(PyObject *o, int *bad) {
    if (o == Py_None) return -1;
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) *bad = 1;
    return v < 0 ? -1 : (int64_t)v;
}

static PyObject *Reader_configure(Reader *self, PyObject *args) {
    int a[N_SLOTS], d[N_SLOTS], quiet;
    PyObject *seen_oom, *seen_pids, *hit_at;
    if (!PyArg_ParseTuple(args, "(iiiiiii)(iiiiiii)iOOO", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &d[0],
                          &d[1], &d[2], &d[3], &d[4], &d[5], &d[6], &quiet, &seen_oom, &seen_pids, &hit_at))
        return NULL;
    int bad = 0;
    int64_t so = opt_int64(seen_oom, &bad), sp = opt_int64(seen_pids, &bad), ha = opt_int64(hit_at, &bad);
    if (bad) return NULL;
    memcpy(self->all, a, sizeof a);
    memcpy(self->due, d, sizeof d);
    self->quiet = quiet;
    self->seen_oom = so;
    self->seen_pids = sp;
    self->tcp_hit_at = ha;
    self->nturns = 0;
    for (int k = 0; k < N_TURN_SLOTS; k++) {
        int slot = turn_slots[k];
        if (d[slot] < 0) continue;
        int *t = self->turns[self->nturns++];
        for (int i = 0; i < N_SLOTS; i++) t[i] = -1;
        t[S_EVENTS] = d[S_EVENTS];
        t[S_PIDS_EVENTS] = d[S_PIDS_EVENTS];
        t[slot] = d[slot];
    }
    Py_RETURN_NONE;
}

static int64_t note_socket(Reader *self, int64_t tcp) {
    if (self->tcp_hit_at >= 0 && tcp >= self->tcp_hit_at && self->socket_hit < 0) self->socket_hit = tcp;
    return tcp;
}

static PyObject *Reader_read(Reader *self, PyObject *arg) {
    long mode = PyLong_AsLong(arg);
    if (mode == -1 && PyErr_Occurred()) return NULL;
    if (!self->stats_type) {
        PyErr_SetString(PyExc_RuntimeError, "Reader not initialised");
        return NULL;
    }
    int turn = mode == 2 && self->carry && self->nturns > 0;
    const int *fds = self->all;
    if (turn) {
        unsigned i = self->turn % (unsigned)self->nturns;
        self->turn = i + 1;
        fds = self->turns[i];
    } else if (mode >= 1) {
        fds = self->due;
    }
    char bufs[N_SLOTS][BUF];
    ssize_t lens[N_SLOTS];
    int64_t v[N_SLOTS];
    if (pread_all(fds, bufs, lens, mode == 0) || parse_all(bufs, lens, self->cpu_v2, v) < 0) return NULL;
    int quiet = mode >= 1 ? self->quiet : 0;
    int64_t oom = quiet & QUIET_OOM ? self->seen_oom : v[S_EVENTS];
    int64_t pe = quiet & QUIET_PIDS ? self->seen_pids : v[S_PIDS_EVENTS];
    if (turn && (oom != self->c_oom || pe != self->c_pe)) {
        /* A counter moved: this sample goes to the enforcer with it; every file, fresh. */
        if (pread_all(self->due, bufs, lens, 0) || parse_all(bufs, lens, self->cpu_v2, v) < 0) return NULL;
        turn = 0;
    }
    self->c_oom = oom;
    self->c_pe = pe;
    int64_t m = v[S_MEM], peak = v[S_PEAK], cpu = v[S_CPU], pids = v[S_PIDS], tcp = v[S_TCP];
    if (turn) {
        if (m >= 0)
            self->c_mem = m;
        else
            m = self->c_mem;
        if (peak >= 0)
            self->c_peak = peak;
        else if (m >= 0 && self->c_peak >= 0)
            peak = self->c_peak = m > self->c_peak ? m : self->c_peak;
        if (cpu >= 0)
            self->c_cpu = cpu;
        else
            cpu = self->c_cpu;
        if (pids >= 0)
            self->c_pids = pids;
        else
            pids = self->c_pids;
        if (tcp >= 0)
            self->c_tcp = note_socket(self, tcp);
        else
            tcp = self->c_tcp;
    } else { /* every file read: the carry starts again from here */
        self->carry = 1;
        self->c_mem = m;
        self->c_peak = peak;
        self->c_cpu = cpu;
        self->c_pids = pids;
        self->c_tcp = tcp >= 0 ? note_socket(self, tcp) : -1;
    }
    if (tcp >= 0 && peak >= 0) peak += tcp;
    PyObject *items[6] = {int_or_none(m), int_or_none(peak), cpu_or_none(cpu, self->cpu_v2),
                          int_or_none(pids), int_or_none(oom), int_or_none(pe)};
    PyObject *out = NULL;
    for (int i = 0; i < 6; i++)
        if (!items[i]) goto done;
    out = self->stats_type->tp_alloc(self->stats_type, 6);
    if (!out) goto done;
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(out, i, items[i]);
        items[i] = NULL;
    }
done:
    for (int i = 0; i < 6; i++) Py_XDECREF(items[i]);
    return out;
}

static PyObject *Reader_socket_limit_hit(Reader *self, void *closure) {
    (void)closure;
    return int_or_none(self->socket_hit);
}

static PyMethodDef Reader_methods[] = {
    {"configure", (PyCFunction)Reader_configure, METH_VARARGS,
     "configure(all, due, quiet, seen_oom, seen_pids, tcp_hit_at, /) -> None\n\n"
     "The fds to read (7 each: every file; the periodic sampler's, quiet counters -1), the QUIET_* bits with\n"
     "the quiet counters' held values, the v1 socket-buffer level that counts as the limit reached (None:\n"
     "not watched). The turns are made from `due`; carried values are kept."},
    {"read", (PyCFunction)Reader_read, METH_O,
     "read(mode, /) -> CgroupStats\n\n"
     "Read and parse the leaf's files (0: every file; 1: the periodic sampler's; 2: a turn), carrying what a\n"
     "turn did not read. Raises OSError for a failed read, ValueError for a format it does not know."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Reader_getset[] = {
    {"socket_limit_hit", (getter)Reader_socket_limit_hit, NULL,
     "The v1 socket-buffer peak once it reached the level configured, else None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Reader_members[] = {
    {"turn", T_UINT, offsetof(Reader, turn), 0, "The next turn (modulo the number of turns)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "supervisor.sandbox._csample.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(stats_type, cpu_v2): a cgroup leaf's sampling state (LeafSampler's fast path).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
    .tp_members = Reader_members,
};

/* 40 bytes per entry: st_dev, st_ino, st_mode, st_uid << 32 | st_gid, st_ctime in ns (0 for AT_FDCWD
 * entries: a host path's identity, as mounts.fingerprint takes it, has no ctime); on failure mode is
 * 1 << 40 | errno and the rest 0. */
static PyObject *stat_at(PyObject *self, PyObject *args) {
    PyObject *fds, *names;
    const char *careful = NULL;
    Py_ssize_t n_careful = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!|z#", &PyList_Type, &fds, &PyList_Type, &names, &careful, &n_careful))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fds);
    if (PyList_GET_SIZE(names) != n || (careful && n_careful != n)) {
        PyErr_SetString(PyExc_ValueError, "stat_at() takes lists (and a mask) of the same length");
        return NULL;
    }
    int *dirfds = PyMem_Malloc(sizeof(int) * (size_t)(n ? n : 1));
    const char **paths = PyMem_Malloc(sizeof(char *) * (size_t)(n ? n : 1));
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 40);
    if (!dirfds || !paths || !out) {
        PyMem_Free(dirfds);
        PyMem_Free(paths);
        Py_XDECREF(out);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fd = PyList_GET_ITEM(fds, i), *name = PyList_GET_ITEM(names, i);
        if (!PyLong_Check(fd) || !PyBytes_Check(name)) {
            PyMem_Free(dirfds);
            PyMem_Free(paths);
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "stat_at() takes a list of fds and a list of bytes names");
            return NULL;
        }
        dirfds[i] = (int)PyLong_AsLong(fd);
        paths[i] = PyBytes_AS_STRING(name);
    }
    char *buf = PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t rec[5] = {0, 0, 0, 0, 0};
        struct stat st;
        int host = dirfds[i] == AT_FDCWD;
        int flags = AT_SYMLINK_NOFOLLOW | (host ? 0 : AT_NO_AUTOMOUNT);
        int got, how_i = careful ? careful[i] : 0;
        if (how_i == 1) {
            /* A path through directories a sandbox may write: a symlink on the way is ELOOP, not followed
             * (into a hung NFS or FUSE mount of the host, where the lookup would wait for ever). The
             * trailing component is not followed either (O_PATH | O_NOFOLLOW gives the link itself). */
            struct {
                uint64_t flags, mode, resolve;
            } how = {O_PATH | O_NOFOLLOW | O_CLOEXEC, 0, 0x04 | 0x02 /* RESOLVE_NO_SYMLINKS, NO_MAGICLINKS */};
            int fd = (int)syscall(SYS_openat2, dirfds[i], paths[i], &how, sizeof how);
            got = fd < 0 ? -1 : fstat(fd, &st);
            if (fd >= 0) {
                int saved = errno;
                close(fd);
                errno = saved;
            }
        } else {
            got = fstatat(dirfds[i], paths[i], &st, flags);
        }
        if (got == 0) {
            rec[0] = (uint64_t)st.st_dev;
            rec[1] = (uint64_t)st.st_ino;
            /* Bit 33 as _cinit.identities: a regular file with other hard links. */
            rec[2] = (uint64_t)st.st_mode | (S_ISREG(st.st_mode) && st.st_nlink > 1 ? (uint64_t)1 << 33 : 0);
            rec[3] = (uint64_t)st.st_uid << 32 | (uint64_t)st.st_gid;
            if (!host && how_i != 2) rec[4] = (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec;
        } else {
            rec[2] = (uint64_t)1 << 40 | (uint64_t)errno;
        }
        memcpy(buf + i * 40, rec, 40);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(dirfds);
    PyMem_Free(paths);
    return out;
}

/* fs_type(fd) -> int: the file system type (statfs's f_type, a magic number) of the file behind `fd` (an
 * O_PATH fd will do): supervisor/sandbox/_absent.py trusts a directory's ctime only on file systems that keep
 * it themselves. Raises OSError. */
static PyObject *fs_type(PyObject *self, PyObject *args) {
    int fd;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    struct statfs sf;
    if (fstatfs(fd, &sf) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromUnsignedLongLong((unsigned long long)(unsigned long)sf.f_type);
}

static PyMethodDef methods[] = {
    {"read_leaf", read_leaf, METH_VARARGS,
     "read_leaf(fds, cpu_v2, /) -> tuple\n\n"
     "pread each of the 7 fds (memory current, peak, OOM events, cpu, pids current, pids events, v1 socket\n"
     "peak; -1: not read) with the GIL released once, and parse them: the integers, the oom_kill and max\n"
     "counters, the CPU in seconds (v2 cpu.stat usage_usec when cpu_v2, else v1 cpuacct.usage in ns). None\n"
     "where the fd is -1. Raises OSError for a failed read, ValueError for a format it does not know."},
    {"stat_at", stat_at, METH_VARARGS,
     "stat_at(dirfds, names, careful=None, /) -> bytes\n\n"
     "fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT) for each pair (an lstat for AT_FDCWD and an\n"
     "absolute name); 40 bytes each: dev, ino, mode, uid << 32 | gid, ctime in ns (0 for AT_FDCWD); on failure\n"
     "mode 1 << 40 | errno and the rest 0. The GIL is released once. Never follows the last component.\n"
     "`careful` (bytes, one per pair): 1, openat2(O_PATH | O_NOFOLLOW, RESOLVE_NO_SYMLINKS) and fstat instead,\n"
     "so that no symlink on the way is followed either (ELOOP); 2, the ctime left out (0)."},
    {"fs_type", fs_type, METH_VARARGS,
     "fs_type(fd, /) -> int\n\nThe file system's type (fstatfs f_type) of the file behind fd. Raises OSError."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_csample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__csample(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
