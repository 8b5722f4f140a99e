"""Kernel attack surface from inside the full sandbox (Supervisor.run, workspace-write profile).

C probe programs, compiled on the host once per module, try each syscall the seccomp layer denies and print
what the kernel answered. Each probe's arguments are chosen so that it is harmless even if nothing filtered
it: either it only affects the probe itself (a ring, a key in its own process keyring, a nested user
namespace around a child that exits at once) or it is invalid in a way the kernel checks before acting
(bad pointers, wrong reboot magic, unknown kexec arch, paths that do not exist).

Asserting EPERM alone would prove little: the sandbox also drops every capability, so a mount or a reboot
fails with EPERM without any filter. So every denied case has a control in which the kernel answers
something else: the same probe in the same sandbox with only seccomp switched off, or, for the calls that
need real privilege to get past the capability check, the probe run on the host as root (the invalid
arguments keep it harmless). The filtered EPERM (ENOSYS for clone3) is the filter's doing when a control
answers differently.

Privileges cannot be regained: no capability in any set, no_new_privs, locked securebits; setuid-root and
file-capability binaries (each shown, on the host, to grant privilege) grant nothing inside.

Foreign ABIs are killed outright: the i386 ABI (``int $0x80`` from a 64-bit binary, and a real ``gcc -m32``
binary) and x32 syscall numbers end with SIGSYS.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tty
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import Policy, SyscallPolicy, profiles
from supervisor import Result, Supervisor
from tests.kernel.conftest import SCRATCH

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

X86_64 = os.uname().machine == "x86_64"

# ------------------------------------------------------------------------------------------------------
# The probe programs

ATTACK_C = r"""
/* corral attack probes. For each case named on the command line, in a child of its own (so that one
 * case's effects, a new user namespace or session, cannot change the next one's answer):
 * prints "<case> <return value> <errno>", or "<case> killed <signal>" / "<case> exit <status>". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY_SPEC_PROCESS_KEYRING -2
#define KEY_SPEC_SESSION_KEYRING -3
#define KEYCTL_GET_KEYRING_ID 0
#define PTRACE_TRACEME 0
#define PTRACE_ATTACH 16
#define UFFD_USER_MODE_ONLY 1

static volatile char secret[16] = "corral-secret";

/* A raw clone(2) with a null stack has fork semantics; the child leaves at once. */
static long raw_clone(unsigned long flags) {
    long r = syscall(SYS_clone, flags, 0L, 0L, 0L, 0L);
    if (r == 0) syscall(SYS_exit_group, 0);
    if (r > 0) waitpid((pid_t)r, NULL, __WALL);
    return r;
}

/* A child that waits to be killed: the target of the ptrace and process_vm_* probes. */
static pid_t sleeper(void) {
    pid_t pid = fork();
    if (pid == 0)
        for (;;) pause();
    return pid;
}

static long reap(pid_t pid, long r) {
    int e = errno;
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, __WALL);
    }
    errno = e;
    return r;
}

static void *thread_fn(void *arg) { return arg; }

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

static long run(const char *c) {
    /* Calls that would succeed unfiltered, affecting only the probe. */
    if (is(c, "io_uring_setup")) {
        unsigned char params[120];
        memset(params, 0, sizeof params);
        return syscall(SYS_io_uring_setup, 1, params);
    }
    if (is(c, "bpf")) return syscall(SYS_bpf, 0x7fff, NULL, 0); /* no such command */
    if (is(c, "keyctl"))
        return syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    if (is(c, "add_key"))
        return syscall(SYS_add_key, "user", "corral-test", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    if (is(c, "request_key")) /* no callout: no upcall to a user-space helper */
        return syscall(SYS_request_key, "user", "corral-no-such-key", NULL, 0);
    if (is(c, "perf_event_open")) {
        struct perf_event_attr a;
        memset(&a, 0, sizeof a);
        a.size = sizeof a;
        a.type = PERF_TYPE_SOFTWARE;
        a.config = PERF_COUNT_SW_TASK_CLOCK;
        a.disabled = 1;
        a.exclude_kernel = 1;
        a.exclude_hv = 1;
        return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
    }
    if (is(c, "userfaultfd")) return syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    if (is(c, "ptrace_traceme")) {
        pid_t pid = fork(); /* in a child: an unfiltered success leaves nobody traced */
        if (pid == 0) _exit(syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0) == 0 ? 0 : errno);
        int st = 0;
        waitpid(pid, &st, 0);
        errno = WEXITSTATUS(st);
        return errno ? -1 : 0;
    }
    if (is(c, "ptrace_attach")) {
        pid_t pid = sleeper();
        return reap(pid, syscall(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0));
    }
    if (is(c, "process_vm_readv") || is(c, "process_vm_writev")) {
        pid_t pid = sleeper();
        char buf[16] = "overwritten!";
        struct iovec local = {buf, sizeof buf}, remote = {(void *)secret, sizeof secret};
        long nr = is(c, "process_vm_readv") ? SYS_process_vm_readv : SYS_process_vm_writev;
        return reap(pid, syscall(nr, pid, &local, 1, &remote, 1, 0));
    }
    if (is(c, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (is(c, "setns")) return syscall(SYS_setns, -1, 0);
    /* Each namespace flag with CLONE_NEWUSER, so that unfiltered the clone succeeds. */
    if (is(c, "clone_newuser")) return raw_clone(CLONE_NEWUSER | SIGCHLD);
    if (is(c, "clone_newns")) return raw_clone(CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD);
    if (is(c, "clone_newpid")) return raw_clone(CLONE_NEWUSER | CLONE_NEWPID | SIGCHLD);
    if (is(c, "clone_newnet")) return raw_clone(CLONE_NEWUSER | CLONE_NEWNET | SIGCHLD);
    if (is(c, "clone_newipc")) return raw_clone(CLONE_NEWUSER | CLONE_NEWIPC | SIGCHLD);
    if (is(c, "clone_newuts")) return raw_clone(CLONE_NEWUSER | CLONE_NEWUTS | SIGCHLD);
    if (is(c, "clone_newcgroup")) return raw_clone(CLONE_NEWUSER | CLONE_NEWCGROUP | SIGCHLD);
    if (is(c, "clone3")) {
        uint64_t args[8] = {CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0};
        long r = syscall(SYS_clone3, args, sizeof args);
        if (r == 0) syscall(SYS_exit_group, 0);
        if (r > 0) waitpid((pid_t)r, NULL, __WALL);
        return r;
    }
    /* Invalid arguments: even root without a filter fails before anything happens. */
    if (is(c, "mount")) return syscall(SYS_mount, (char *)1, "/tmp", "tmpfs", 0, NULL);
    if (is(c, "umount2")) return syscall(SYS_umount2, "/tmp", 0x80000000); /* unknown flag */
    if (is(c, "pivot_root")) return syscall(SYS_pivot_root, (char *)1, (char *)1);
    if (is(c, "kexec_load")) /* unknown arch and flag bits, too many segments */
        return syscall(SYS_kexec_load, 0, 1000, NULL, 0xffff8000UL);
    if (is(c, "init_module")) return syscall(SYS_init_module, NULL, 0, "");
    if (is(c, "finit_module")) return syscall(SYS_finit_module, -1, "", 0);
    if (is(c, "delete_module"))
        return syscall(SYS_delete_module, "corral_no_such_module", O_NONBLOCK);
    if (is(c, "reboot")) return syscall(SYS_reboot, 0, 0, 0, NULL); /* wrong magic numbers */
    if (is(c, "swapon")) return syscall(SYS_swapon, "/nonexistent-corral-swap", 0);
    if (is(c, "acct")) return syscall(SYS_acct, "/nonexistent-corral-acct");
    /* Terminals. stdin is a pty slave the test made; it becomes our controlling terminal first, so
     * that unfiltered TIOCSTI would succeed (it is refused on a terminal that is not ours). */
    if (is(c, "tiocsti") || is(c, "tiocsti_high") || is(c, "tioclinux")) {
        setsid();
        if (ioctl(0, TIOCSCTTY, 0) < 0) {
            perror("TIOCSCTTY");
            _exit(3);
        }
        char ch = 'X';
        if (is(c, "tiocsti")) return syscall(SYS_ioctl, 0, TIOCSTI, &ch);
        /* the kernel takes the command as an unsigned int: bits above 31 are ignored */
        if (is(c, "tiocsti_high")) return syscall(SYS_ioctl, 0, 0xdead00000000UL | TIOCSTI, &ch);
        char sub = 0; /* no such subcode */
        return syscall(SYS_ioctl, 0, TIOCLINUX, &sub);
    }
    /* Allowed: the filter must not break ordinary programs. */
    if (is(c, "fork")) return raw_clone(SIGCHLD) > 0 ? 0 : -1;
    if (is(c, "thread")) {
        pthread_t t;
        if ((errno = pthread_create(&t, NULL, thread_fn, NULL))) return -1;
        return (errno = pthread_join(t, NULL)) ? -1 : 0;
    }
    if (is(c, "tiocgwinsz")) {
        struct winsize ws;
        return ioctl(0, TIOCGWINSZ, &ws);
    }
    if (is(c, "personality_query")) return syscall(SYS_personality, 0xffffffffUL) < 0 ? -1 : 0;
    if (is(c, "getpid")) return syscall(SYS_getpid) > 0 ? 0 : -1;
    fprintf(stderr, "unknown case %s\n", c);
    _exit(2);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            errno = 0;
            long r = run(argv[i]);
            printf("%s %ld %d\n", argv[i], r, r < 0 ? errno : 0);
            _exit(0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) < 0) printf("%s fork-failed %d\n", argv[i], errno);
        else if (WIFSIGNALED(st)) printf("%s killed %d\n", argv[i], WTERMSIG(st));
        else if (WEXITSTATUS(st)) printf("%s exit %d\n", argv[i], WEXITSTATUS(st));
    }
    return 0;
}
"""

INT80_C = r"""
/* A 64-bit program entering the kernel through the i386 gate: getpid is 20 there. */
#include <stdio.h>
int main(void) {
    printf("before int 0x80\n");
    fflush(stdout);
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory", "r8", "r9", "r10", "r11");
    printf("after int 0x80: %ld\n", ret);
    return 0;
}
"""

M32_C = r"""
/* A real 32-bit binary: every syscall it makes, from the dynamic loader's first on, is i386 ABI. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    printf("m32 getpid %ld\n", syscall(SYS_getpid));
    return 0;
}
"""

X32_C = r"""
/* A 64-bit program issuing an x32-numbered syscall: getpid (39) with __X32_SYSCALL_BIT. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    printf("before x32\n");
    fflush(stdout);
    long r = syscall(0x40000000L | 39);
    printf("x32 getpid %ld errno %d\n", r, r < 0 ? errno : 0);
    return 0;
}
"""

PRIVS_C = r"""
/* What privileges the process holds, and one call that needs a capability seccomp does not filter. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    printf("euid: %d\n", (int)geteuid());
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs:", 11)) fputs(line, stdout);
    printf("securebits: %#x\n", prctl(PR_GET_SECUREBITS));
    int s = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP); /* CAP_NET_RAW */
    printf("raw_socket: %d\n", s < 0 ? errno : 0);
    return 0;
}
"""

# ------------------------------------------------------------------------------------------------------
# The cases

#: Every denied case and the errno the filter must answer.
DENIED: dict[str, int] = {
    name: errno.EPERM
    for name in (
        "io_uring_setup",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "perf_event_open",
        "userfaultfd",
        "unshare_user",
        "setns",
        "clone_newuser",
        "clone_newns",
        "clone_newpid",
        "clone_newnet",
        "clone_newipc",
        "clone_newuts",
        "clone_newcgroup",
        "mount",
        "umount2",
        "pivot_root",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "acct",
        "tiocsti",
        "tiocsti_high",
        "tioclinux",
    )
}
DENIED["clone3"] = errno.ENOSYS

#: Cases whose unfiltered answer in the sandbox is EPERM as well: the capability check comes before
#: argument checks (pivot_root, reboot) or asks for a capability in the initial user namespace (swapon,
#: acct). For these the host-as-root control is the proof.
CAPABILITY_GATED = frozenset({"pivot_root", "reboot", "swapon", "acct"})

#: Invalid-argument cases, harmless even as root on the host without any filter.
HOST_SAFE = (
    "mount",
    "umount2",
    "pivot_root",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "acct",
)

#: Ordinary operations near the denied ones: the filter must let them through. Tracing the probe's own
#: child is one of them (inside the sandbox's pid namespace: seccomp.TRACING); the process_vm_* cases
#: return the bytes copied.
ALLOWED = (
    "fork",
    "thread",
    "tiocgwinsz",
    "personality_query",
    "getpid",
    "ptrace_traceme",
    "ptrace_attach",
    "process_vm_readv",
    "process_vm_writev",
)
COPIED = {"process_vm_readv": "returned 16", "process_vm_writev": "returned 16"}

TTY_CASES = frozenset({"tiocsti", "tiocsti_high", "tioclinux"})


@dataclasses.dataclass(frozen=True)
class Bins:
    attack: Path
    int80: Path
    m32: Path | None
    m32_error: str
    x32: Path
    privs: Path
    # Copies of privs made privileged (None unless the tests run as root, which making them needs):
    setuid_root: Path | None  # owned by root, mode 4755
    file_caps: Path | None  # file capability CAP_NET_RAW, permitted and effective ("cap_net_raw=ep")
    file_caps_aware: Path | None  # CAP_NET_RAW permitted only ("cap_net_raw=p", capability-aware)


def _gcc(src: Path, out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gcc", "-O1", "-Wall", "-Werror", *flags, "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def bins() -> Iterator[Bins]:
    """The probe programs, compiled on the host into a directory the sandbox may read and execute but
    not write (outside /tmp, which the sandbox replaces with its own)."""
    if not X86_64:
        pytest.skip("the probes are written for x86_64")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the attack probes")
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"attack-bin-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    try:
        built: dict[str, Path] = {}
        for name, src, flags in (
            ("attack", ATTACK_C, ("-pthread",)),
            ("int80", INT80_C, ()),
            ("x32", X32_C, ()),
            ("privs", PRIVS_C, ()),
        ):
            (d / f"{name}.c").write_text(src)
            proc = _gcc(d / f"{name}.c", d / name, *flags)
            assert proc.returncode == 0, proc.stderr
            built[name] = d / name
        (d / "m32.c").write_text(M32_C)
        proc = _gcc(d / "m32.c", d / "m32", "-m32")
        m32 = d / "m32" if proc.returncode == 0 else None
        setuid_root = file_caps = file_caps_aware = None
        if os.geteuid() == 0:
            setuid_root = d / "privs-setuid-root"
            shutil.copy(built["privs"], setuid_root)
            os.chown(setuid_root, 0, 0)
            os.chmod(setuid_root, 0o4755)
            # struct vfs_cap_data, revision 2: permitted = CAP_NET_RAW (13), inheritable = none, and the
            # effective flag (bit 0) for a capability-dumb binary.
            file_caps = d / "privs-file-caps"
            file_caps_aware = d / "privs-file-caps-aware"
            for path, effective in ((file_caps, 1), (file_caps_aware, 0)):
                shutil.copy(built["privs"], path)
                xattr = struct.pack("<5I", 0x02000000 | effective, 1 << 13, 0, 0, 0)
                os.setxattr(path, "security.capability", xattr)
        yield Bins(
            built["attack"],
            built["int80"],
            m32,
            proc.stderr.strip(),
            built["x32"],
            built["privs"],
            setuid_root,
            file_caps,
            file_caps_aware,
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)


def policy(workspace: Path, *, seccomp: bool = True) -> Policy:
    pol = profiles.workspace_write(workspace, timeout=30)
    if not seccomp:
        pol = dataclasses.replace(pol, syscalls=SyscallPolicy(enabled=False))
    return pol


def parse(stdout: bytes) -> dict[str, tuple[str, int]]:
    """{case: (return value, errno)}; a crashed case reads ("killed", signal) or ("exit", status)."""
    out: dict[str, tuple[str, int]] = {}
    for line in stdout.decode().splitlines():
        case, ret, code = line.split()
        out[case] = (ret, int(code))
    return out


def describe(ret: str, code: int) -> str:
    if ret in ("killed", "exit", "fork-failed"):
        return f"{ret} {code}"
    return f"returned {ret}" if code == 0 else errno.errorcode.get(code, str(code))


class Pty:
    """A pty whose slave is the probe's stdin. Raw mode: a byte pushed into the input queue (TIOCSTI) is
    readable from the slave at once, with no line discipline holding it back."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)

    def injected(self) -> bytes:
        """What was pushed into the terminal's input queue."""
        os.set_blocking(self.slave, False)
        try:
            return os.read(self.slave, 4096)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


async def probe(
    sup: Supervisor, bins: Bins, pol: Policy, *cases: str
) -> tuple[Result, dict[str, tuple[str, int]], bytes]:
    """Run the attack probe on `cases` with a fresh pty as stdin: the Result, the parsed answers, and what
    was typed into the terminal."""
    term = Pty()
    try:
        r = await sup.run([str(bins.attack), *cases], policy=pol, stdin=term.slave)
        return r, parse(r.stdout), term.injected()
    finally:
        term.close()


# ------------------------------------------------------------------------------------------------------
# Denied syscalls


@pytest.mark.parametrize("case", sorted(DENIED))
async def test_denied_syscall_fails_with_the_filter_errno(
    sup: Supervisor, workspace: Path, bins: Bins, case: str
) -> None:
    r, results, injected = await probe(sup, bins, policy(workspace), case)
    assert (r.exit_code, r.signal) == (0, None), r.stderr.decode(errors="replace")
    assert "seccomp" in r.enforced
    ret, code = results[case]
    want = DENIED[case]
    assert (ret, code) == ("-1", want), (
        f"{case}: got {describe(ret, code)}, want {errno.errorcode[want]} from the filter"
    )
    if case in TTY_CASES:
        assert injected == b"", "TIOCSTI pushed input into the terminal"


async def test_control_without_seccomp_the_kernel_answers_differently(
    sup: Supervisor, workspace: Path, bins: Bins
) -> None:
    """The same probes with only seccomp off: each answer but the capability-gated ones differs from the
    filter's, so the filtered EPERM/ENOSYS above is the filter's doing, not the sandbox's other layers."""
    r, results, injected = await probe(sup, bins, policy(workspace, seccomp=False), *sorted(DENIED))
    assert (r.exit_code, r.signal) == (0, None), r.stderr.decode(errors="replace")
    assert "seccomp" not in r.enforced
    assert set(results) == set(DENIED)
    same = sorted(c for c in DENIED if results[c] == ("-1", DENIED[c]) and c not in CAPABILITY_GATED)
    assert not same, "no control for: " + ", ".join(f"{c} ({describe(*results[c])})" for c in same)
    for case in CAPABILITY_GATED:  # no capabilities: they fail anyway, see the host control
        assert results[case][0] == "-1", f"{case}: {describe(*results[case])}"
    # Unfiltered, a TIOCSTI that succeeds does type into the terminal: the filtered test's check can fail.
    # (With dev.tty.legacy_tiocsti=0 the kernel answers EIO instead and types nothing.)
    typed = [c for c in ("tiocsti", "tiocsti_high") if results[c] == ("0", 0)]
    assert injected == b"X" * len(typed)


def test_control_host_root_gets_past_the_capability_checks(bins: Bins) -> None:
    """The invalid-argument probes on the host, unconfined, with the capabilities they check: the kernel gets
    past those checks and rejects the arguments, never answering EPERM. (Harmless: bad pointers,
    wrong reboot magic, unknown kexec arch and flags, paths that do not exist.)"""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    # CAP_SYS_MODULE, CAP_SYS_PACCT, CAP_SYS_ADMIN, CAP_SYS_BOOT: what these calls check.
    needed = sum(1 << bit for bit in (16, 20, 21, 22))
    if int(status["CapEff"], 16) & needed != needed:
        pytest.skip("needs CAP_SYS_{MODULE,PACCT,ADMIN,BOOT} on the host to get past the capability checks")
    proc = subprocess.run([str(bins.attack), *HOST_SAFE], capture_output=True, timeout=30, check=True)
    results = parse(proc.stdout)
    assert set(results) == set(HOST_SAFE)
    for case in HOST_SAFE:
        ret, code = results[case]
        assert ret == "-1", f"{case} succeeded on the host: {describe(ret, code)}"
        assert code != errno.EPERM, f"{case}: EPERM even for root, so no control"


async def test_ordinary_neighbours_of_denied_calls_still_work(
    sup: Supervisor, workspace: Path, bins: Bins
) -> None:
    r, results, _ = await probe(sup, bins, policy(workspace), *ALLOWED)
    assert (r.exit_code, r.signal) == (0, None), r.stderr.decode(errors="replace")
    assert {c: describe(*results[c]) for c in ALLOWED} == {c: COPIED.get(c, "returned 0") for c in ALLOWED}


async def test_filter_is_installed_and_no_new_privs_set(sup: Supervisor, workspace: Path) -> None:
    r = await sup.run(
        ["/bin/grep", "-E", "^(Seccomp|Seccomp_filters|NoNewPrivs):", "/proc/self/status"],
        policy=policy(workspace),
    )
    fields = dict(line.split(":\t") for line in r.stdout.decode().splitlines())
    assert fields == {"NoNewPrivs": "1", "Seccomp": "2", "Seccomp_filters": "1"}


# ------------------------------------------------------------------------------------------------------
# Regaining privileges

#: SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock: root inside the
#: user namespace gains nothing by executing a file. (SECBIT_KEEP_CAPS_LOCKED is not set: it only broke
#: prctl(PR_SET_KEEPCAPS), which ping calls; with no capability at all there is nothing to keep.)
LOCKED_SECUREBITS = 0xCF


def privs(stdout: bytes) -> dict[str, str]:
    """The privs probe's "Name: value" lines."""
    return {k: v.strip() for k, v in (line.split(":", 1) for line in stdout.decode().splitlines())}


NO_CAPS = {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def cap_sets(p: dict[str, str]) -> dict[str, int]:
    return {k: int(p[k], 16) for k in NO_CAPS}


async def test_no_capabilities_no_new_privs_and_locked_securebits(
    sup: Supervisor, workspace: Path, bins: Bins
) -> None:
    r = await sup.run([str(bins.privs)], policy=policy(workspace))
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    p = privs(r.stdout)
    assert cap_sets(p) == NO_CAPS
    assert p["NoNewPrivs"] == "1"
    assert int(p["securebits"], 16) == LOCKED_SECUREBITS
    # An allowed syscall that needs a capability: refused for want of it, not by the filter.
    assert p["raw_socket"] == str(errno.EPERM)


@pytest.mark.parametrize("kind", ["setuid_root", "file_caps", "file_caps_aware"])
async def test_privileged_binaries_are_inert(sup: Supervisor, workspace: Path, bins: Bins, kind: str) -> None:
    binary: Path | None = getattr(bins, kind)
    if binary is None:
        pytest.skip("making setuid-root and file-capability binaries needs root")
    # Control: on the host, run by nobody, the binary does gain privilege (root's capabilities, or
    # CAP_NET_RAW from its file capabilities), so the test below can fail.
    host = await anyio.run_process([str(binary)], user=65534, group=65534, extra_groups=[], check=False)
    assert host.returncode == 0, host.stderr
    hp = privs(host.stdout)
    assert int(hp["CapPrm"], 16) & (1 << 13), hp
    if kind == "setuid_root":
        assert hp["euid"] == "0"
    if kind != "file_caps_aware":
        assert hp["raw_socket"] == "0"
    pol = policy(workspace)
    # It runs, and executing it granted nothing: the sandbox's tree is mounted nosuid, so set-id bits and
    # file capabilities are ignored at exec (no_new_privs and the empty bounding set would refuse them
    # anyway; before nosuid, a binary with effective file capabilities was refused with EPERM under root).
    r = await sup.run([str(binary)], policy=pol)
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    p = privs(r.stdout)
    assert cap_sets(p) == NO_CAPS
    assert p["raw_socket"] == str(errno.EPERM)


# ------------------------------------------------------------------------------------------------------
# Foreign ABIs


def expect_sigsys(r: Result) -> None:
    assert (r.signal, r.exit_code) == (signal.SIGSYS, 128 + signal.SIGSYS), (
        f"exit {r.exit_code} signal {r.signal} stdout {r.stdout!r} stderr {r.stderr!r}"
    )
    assert r.violation is None


async def test_int80_from_a_64_bit_binary_is_killed(sup: Supervisor, workspace: Path, bins: Bins) -> None:
    r = await sup.run([str(bins.int80)], policy=policy(workspace))
    expect_sigsys(r)
    # It got as far as the gate: the 64-bit syscalls before it (write) were allowed.
    assert r.stdout == b"before int 0x80\n"
    assert r.refused_abi == "i386 or x32"  # a 64-bit file: which foreign ABI it used is not known


async def test_32_bit_binary_is_killed(sup: Supervisor, workspace: Path, bins: Bins) -> None:
    if bins.m32 is None:
        pytest.skip(f"gcc -m32 cannot build here: {bins.m32_error}")
    r = await sup.run([str(bins.m32)], policy=policy(workspace))
    expect_sigsys(r)
    assert r.stdout == b""
    assert r.refused_abi == "i386"  # the init read the file's ELF header when SIGSYS killed it
    assert r.to_json()["refused_abi"] == "i386"


def test_cli_names_the_refused_abi(bins: Bins, workspace: Path) -> None:
    if bins.m32 is None:
        pytest.skip(f"gcc -m32 cannot build here: {bins.m32_error}")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.cli",
            "run",
            "--json",
            str(workspace / "r.json"),
            "--",
            str(bins.m32),
        ],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 128 + signal.SIGSYS
    assert "killed by SIGSYS" in p.stderr
    assert "i386" in p.stderr
    assert json.loads((workspace / "r.json").read_text())["refused_abi"] == "i386"


async def test_control_foreign_abi_binaries_run_without_the_filter(
    sup: Supervisor, workspace: Path, bins: Bins
) -> None:
    """Unfiltered, the same binaries run: the SIGSYS above is the filter's, not a broken binary's."""
    r = await sup.run([str(bins.int80)], policy=policy(workspace, seccomp=False))
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    assert r.refused_abi is None
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "before int 0x80"
    assert int(lines[1].removeprefix("after int 0x80: ")) > 1  # the pid, inside the pid namespace
    if bins.m32 is not None:
        r = await sup.run([str(bins.m32)], policy=policy(workspace, seccomp=False))
        assert (r.exit_code, r.signal) == (0, None), r.stderr
        assert r.stdout.startswith(b"m32 getpid ")


async def test_x32_syscall_is_killed(sup: Supervisor, workspace: Path, bins: Bins) -> None:
    if not sup.caps.x32.available:
        pytest.skip(f"x32 ABI: {sup.caps.x32.reason}")
    r = await sup.run([str(bins.x32)], policy=policy(workspace))
    expect_sigsys(r)
    assert r.stdout == b"before x32\n"


async def test_x32_numbered_syscall_is_killed_even_without_the_x32_abi(
    sup: Supervisor, workspace: Path, bins: Bins
) -> None:
    """The filter sees the raw number before the kernel's dispatch: an x32 number dies by SIGSYS whether
    or not the kernel has the ABI (here, without it, an unfiltered call answers ENOSYS)."""
    r = await sup.run([str(bins.x32)], policy=policy(workspace))
    expect_sigsys(r)
    assert r.stdout == b"before x32\n"
    control = await sup.run([str(bins.x32)], policy=policy(workspace, seccomp=False))
    assert (control.exit_code, control.signal) == (0, None)
    if not sup.caps.x32.available:
        assert control.stdout == f"before x32\nx32 getpid -1 errno {errno.ENOSYS}\n".encode()
