/* supervisor.sandbox._csample: a cgroup leaf's usage files read in one call (cgroups/_stats.py).
 *
 * The sampler reads every running child's cgroup each full round: on a 2-vCPU VM the Python half of six
 * os.pread calls per child (six calls, six bytes objects, their parsing) cost as much as the six syscalls.
 * read_leaf() takes the leaf's open fds, preads them with the GIL released once, parses the kernel's formats
 * in C and returns the values. Nothing here opens a path: the fds were opened by the leaf (cgroupfs files
 * corral created, never sandbox-writable).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
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

static PyMethodDef methods[] = {
    {"read_leaf", read_leaf, METH_VARARGS,
     "read_leaf(fds, cpu_v2, /) -> tuple\n\n"
     "pread each of the 7 fds (memory current, peak, OOM events, cpu, pids current, pids events, v1 socket\n"
     "peak; -1: not read) with the GIL released once, and parse them: the integers, the oom_kill and max\n"
     "counters, the CPU in seconds (v2 cpu.stat usage_usec when cpu_v2, else v1 cpuacct.usage in ns). None\n"
     "where the fd is -1. Raises OSError for a failed read, ValueError for a format it does not know."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_csample", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__csample(void) { return PyModule_Create(&module); }
