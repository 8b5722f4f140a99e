/* supervisor.sandbox._csample: the supervisor's hot-path reads in one call each.
 *
 * read_leaf: a cgroup leaf's usage files (cgroups/_stats.py). The sampler reads every running child's cgroup
 * each full round: on a 2-vCPU VM the Python half of six os.pread calls per child (six calls, six bytes
 * objects, their parsing) cost as much as the six syscalls. It takes the leaf's open fds, preads them with the
 * GIL released once, parses the kernel's formats in C and returns the values. Nothing here opens a path: the
 * fds were opened by the leaf (cgroupfs files corral created, never sandbox-writable).
 *
 * stat_at: the identities a pre-forked sandbox's Recheck compares (forkserver/_recheck.py), on the event
 * loop: each a single-name, no-follow fstatat relative to a held directory fd (or an lstat of a host path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static PyObject *read_leaf(PyObject *self, PyObject *args) {
    int fds[N_SLOTS];
    int cpu_v2;
    (void)self;
    if (!PyArg_ParseTuple(args, "(iiiiiii)p", &fds[0], &fds[1], &fds[2], &fds[3], &fds[4], &fds[5], &fds[6],
                          &cpu_v2))
        return NULL;
    char bufs[N_SLOTS][BUF];
    ssize_t lens[N_SLOTS];
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < N_SLOTS; i++) {
        lens[i] = -1;
        if (fds[i] < 0) continue;
        lens[i] = pread(fds[i], bufs[i], BUF - 1, 0);
        if (lens[i] < 0) {
            err = errno;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int64_t v[N_SLOTS];
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
            return NULL;
        }
    }
    PyObject *out = PyTuple_New(N_SLOTS);
    if (!out) return NULL;
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *item;
        if (v[i] < 0) {
            item = Py_None;
            Py_INCREF(item);
        } else if (i == S_CPU) {
            item = PyFloat_FromDouble(cpu_v2 ? (double)v[i] / 1e6 : (double)v[i] / 1e9);
        } else {
            item = PyLong_FromLongLong(v[i]);
        }
        if (!item) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

/* 40 bytes per entry: st_dev, st_ino, st_mode, st_uid << 32 | st_gid, st_ctime in ns (0 for AT_FDCWD
 * entries: a host path's identity, as mounts.fingerprint takes it, has no ctime); on failure mode is
 * 1 << 40 | errno and the rest 0. */
static PyObject *stat_at(PyObject *self, PyObject *args) {
    PyObject *fds, *names;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &fds, &PyList_Type, &names)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(fds);
    if (PyList_GET_SIZE(names) != n) {
        PyErr_SetString(PyExc_ValueError, "stat_at() takes two lists of the same length");
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
        if (fstatat(dirfds[i], paths[i], &st, flags) == 0) {
            rec[0] = (uint64_t)st.st_dev;
            rec[1] = (uint64_t)st.st_ino;
            rec[2] = (uint64_t)st.st_mode;
            rec[3] = (uint64_t)st.st_uid << 32 | (uint64_t)st.st_gid;
            if (!host) rec[4] = (uint64_t)st.st_ctim.tv_sec * 1000000000u + (uint64_t)st.st_ctim.tv_nsec;
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

static PyMethodDef methods[] = {
    {"read_leaf", read_leaf, METH_VARARGS,
     "read_leaf(fds, cpu_v2, /) -> tuple\n\n"
     "pread each of the 7 fds (memory current, peak, OOM events, cpu, pids current, pids events, v1 socket\n"
     "peak; -1: not read) with the GIL released once, and parse them: the integers, the oom_kill and max\n"
     "counters, the CPU in seconds (v2 cpu.stat usage_usec when cpu_v2, else v1 cpuacct.usage in ns). None\n"
     "where the fd is -1. Raises OSError for a failed read, ValueError for a format it does not know."},
    {"stat_at", stat_at, METH_VARARGS,
     "stat_at(dirfds, names, /) -> bytes\n\n"
     "fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT) for each pair (an lstat for AT_FDCWD and an\n"
     "absolute name); 40 bytes each: dev, ino, mode, uid << 32 | gid, ctime in ns (0 for AT_FDCWD); on failure\n"
     "mode 1 << 40 | errno and the rest 0. The GIL is released once. Never follows a symlink."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_csample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__csample(void) { return PyModule_Create(&module); }
