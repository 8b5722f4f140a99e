"""Set-id planting (issue 11, item 2): no file a sandbox makes may carry S_ISUID or S_ISGID on the host.

Under a root caller the sandbox is host uid 0, so a set-uid file it leaves in its writable roots is set-uid
ROOT for every host user who runs it later; under an ordinary caller it is set-uid to that caller. A C probe,
compiled on the host, tries every route from inside a real sandbox (workspace-write profile): chmod, fchmod,
fchmodat, fchmodat2 (raw syscall), creat, open and openat with O_CREAT and with O_TMPFILE (then linked into
the tree), openat2 (its mode is in a struct the filter cannot read: answered ENOSYS), mknod and mknodat with
S_IFREG, a set-gid directory by chmod, file capabilities (setxattr security.capability: no CAP_SETFCAP), and
io_uring (refused outright). Each case prints what the kernel answered; the decisive check is made from
OUTSIDE: no file under the workspace has S_ISUID or S_ISGID.

Controls, so that the tests can fail: the same probe with only seccomp switched off stores the bits (the
kernel itself allows an owner to set them), and ordinary modes (`chmod 755`, `chmod g+w`, `mkdir`, `install
-m 755`) keep working inside. The unprivileged path (caller uid 65534) runs the same probe through
tests/kernel/unprivileged_harness.py.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Policy, SyscallPolicy, profiles
from supervisor import Supervisor
from tests.kernel.conftest import SCRATCH
from tests.kernel.unprivileged_harness import (
    AS_ROOT,
    ordinary_caller_scratch,
    run_probe_as_user,
)

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

PROBE_C = r"""
/* For each case on the command line: "<case> <return value> <errno>". Files are made in the cwd. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

struct how { uint64_t flags, mode, resolve; };

static long touch(const char *name) {
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static long run(const char *c) {
    char buf[64];
    if (!strcmp(c, "chmod_suid")) return touch("f_chmod_suid") ? -1 : chmod("f_chmod_suid", 04755);
    if (!strcmp(c, "chmod_sgid")) return touch("f_chmod_sgid") ? -1 : chmod("f_chmod_sgid", 02755);
    if (!strcmp(c, "chmod_sgid_noexec"))
        return touch("f_chmod_sgid_nx") ? -1 : chmod("f_chmod_sgid_nx", 02644);
    if (!strcmp(c, "chmod_high_bits"))  /* garbage above the mode's 16 bits must not hide the bit */
        return touch("f_chmod_high") ? -1 : syscall(SYS_chmod, "f_chmod_high", 0x100000000UL | 04755);
    if (!strcmp(c, "fchmod")) {
        int fd = open("f_fchmod", O_WRONLY | O_CREAT, 0755);
        long r = fd < 0 ? -1 : fchmod(fd, 04755);
        int e = errno;
        if (fd >= 0) close(fd);
        errno = e;
        return r;
    }
    if (!strcmp(c, "fchmodat"))
        return touch("f_fchmodat") ? -1 : syscall(SYS_fchmodat, AT_FDCWD, "f_fchmodat", 06755);
    if (!strcmp(c, "fchmodat2"))
        return touch("f_fchmodat2") ? -1 : syscall(SYS_fchmodat2, AT_FDCWD, "f_fchmodat2", 04755, 0);
    if (!strcmp(c, "proc_fd_chmod")) {  /* chmod through /proc/self/fd: still a chmod syscall */
        int fd = open("f_procfd", O_WRONLY | O_CREAT, 0755);
        if (fd < 0) return -1;
        snprintf(buf, sizeof buf, "/proc/self/fd/%d", fd);
        long r = chmod(buf, 04755);
        int e = errno;
        close(fd);
        errno = e;
        return r;
    }
    if (!strcmp(c, "creat")) {
        long fd = syscall(SYS_creat, "f_creat", 04755);
        if (fd >= 0) close(fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(c, "open_creat")) {
        long fd = syscall(SYS_open, "f_open", O_WRONLY | O_CREAT | O_EXCL, 04755);
        if (fd >= 0) close(fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(c, "openat_creat")) {
        long fd = syscall(SYS_openat, AT_FDCWD, "f_openat", O_WRONLY | O_CREAT, 02755);
        if (fd >= 0) close(fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(c, "openat_tmpfile")) {
        long fd = syscall(SYS_openat, AT_FDCWD, ".", O_WRONLY | O_TMPFILE, 04755);
        if (fd < 0) return -1;
        snprintf(buf, sizeof buf, "/proc/self/fd/%ld", fd);
        long r = linkat(AT_FDCWD, buf, AT_FDCWD, "f_tmpfile", AT_SYMLINK_FOLLOW);
        int e = errno;
        close(fd);
        errno = e;
        return r;
    }
    if (!strcmp(c, "open_tmpfile")) {
        long fd = syscall(SYS_open, ".", O_WRONLY | O_TMPFILE, 06755);
        if (fd < 0) return -1;
        snprintf(buf, sizeof buf, "/proc/self/fd/%ld", fd);
        long r = linkat(AT_FDCWD, buf, AT_FDCWD, "f_tmpfile2", AT_SYMLINK_FOLLOW);
        int e = errno;
        close(fd);
        errno = e;
        return r;
    }
    if (!strcmp(c, "openat2")) {
        struct how h = {O_WRONLY | O_CREAT, 04755, 0};
        long fd = syscall(SYS_openat2, AT_FDCWD, "f_openat2", &h, sizeof h);
        if (fd >= 0) close(fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(c, "mknod")) return syscall(SYS_mknod, "f_mknod", S_IFREG | 04755, 0);
    if (!strcmp(c, "mknodat")) return syscall(SYS_mknodat, AT_FDCWD, "f_mknodat", S_IFREG | 02755, 0);
    if (!strcmp(c, "mkdir_sgid")) {  /* the kernel ignores set-id bits in mkdir's mode; then chmod g+s */
        if (mkdir("d_sgid", 02775) != 0) return -1;
        return chmod("d_sgid", 02775);
    }
    if (!strcmp(c, "setxattr_caps")) {  /* file capabilities: cap_net_raw+ep, revision 2 */
        uint32_t v[5] = {0x02000001, 1u << 13, 0, 0, 0};
        return touch("f_caps") ? -1 : setxattr("f_caps", "security.capability", v, sizeof v, 0);
    }
    if (!strcmp(c, "io_uring")) { char p[120] = {0}; return syscall(SYS_io_uring_setup, 1, p); }
    /* Ordinary modes that must keep working. */
    if (!strcmp(c, "chmod_755")) return touch("ok_755") ? -1 : chmod("ok_755", 0755);
    if (!strcmp(c, "chmod_gw")) return touch("ok_gw") ? -1 : chmod("ok_gw", 0775);
    if (!strcmp(c, "chmod_sticky_dir")) return mkdir("ok_sticky", 0777) ? -1 : chmod("ok_sticky", 01777);
    if (!strcmp(c, "open_plain")) {
        int fd = open("ok_plain", O_WRONLY | O_CREAT, 0755);
        if (fd >= 0) close(fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(c, "mknod_fifo")) return mknod("ok_fifo", S_IFIFO | 0644, 0);
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = run(argv[i]);
        printf("%s %ld %d\n", argv[i], r < 0 ? -1L : r, r < 0 ? errno : 0);
    }
    return 0;
}
"""

#: Each attack case and the errno the sandbox answers with.
ATTACKS: dict[str, int] = {
    "chmod_suid": errno.EPERM,
    "chmod_sgid": errno.EPERM,
    "chmod_sgid_noexec": errno.EPERM,
    "chmod_high_bits": errno.EPERM,
    "fchmod": errno.EPERM,
    "fchmodat": errno.EPERM,
    "fchmodat2": errno.EPERM,
    "proc_fd_chmod": errno.EPERM,
    "creat": errno.EPERM,
    "open_creat": errno.EPERM,
    "openat_creat": errno.EPERM,
    "openat_tmpfile": errno.EPERM,
    "open_tmpfile": errno.EPERM,
    "openat2": errno.ENOSYS,
    "mknod": errno.EPERM,
    "mknodat": errno.EPERM,
    "mkdir_sgid": errno.EPERM,
    "setxattr_caps": errno.EPERM,
    "io_uring": errno.EPERM,
}

#: Cases that set a set-id bit when nothing filters them (the control: the kernel lets an owner do it).
KERNEL_ALLOWS = frozenset(ATTACKS) - {"setxattr_caps", "io_uring", "openat2"}

ORDINARY = ("chmod_755", "chmod_gw", "chmod_sticky_dir", "open_plain", "mknod_fifo")

SETID = stat.S_ISUID | stat.S_ISGID


@dataclasses.dataclass(frozen=True)
class Probe:
    path: Path


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the set-id probe")
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"setid-bin-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    try:
        (d / "setid.c").write_text(PROBE_C)
        proc = subprocess.run(
            ["gcc", "-O1", "-Wall", "-Werror", "-o", str(d / "setid"), str(d / "setid.c")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        yield Probe(d / "setid")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def parse(stdout: bytes) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in stdout.decode().splitlines():
        case, ret, code = line.split()
        out[case] = (int(ret), int(code))
    return out


def setid_files(root: Path) -> list[str]:
    """Every path under `root` (root itself excluded) with S_ISUID or S_ISGID, seen from the host."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            if os.lstat(p).st_mode & SETID:
                found.append(f"{os.path.relpath(p, root)} {oct(os.lstat(p).st_mode)}")
    return sorted(found)


def policy(workspace: Path, *, seccomp: bool = True) -> Policy:
    pol = profiles.workspace_write(workspace, timeout=30)
    if not seccomp:
        pol = dataclasses.replace(pol, syscalls=SyscallPolicy(enabled=False))
    return pol


async def test_no_route_stores_a_setid_bit(sup: Supervisor, workspace: Path, probe: Probe) -> None:
    r = await sup.run([str(probe.path), *ATTACKS, *ORDINARY], policy=policy(workspace))
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    got = parse(r.stdout)
    wrong = {c: got.get(c) for c, want in ATTACKS.items() if got.get(c) != (-1, want)}
    assert not wrong, f"cases that did not fail as expected: {wrong}"
    # Decisive, from outside: nothing under the workspace carries a set-id bit.
    assert setid_files(workspace) == []
    # Ordinary modes still work.
    assert {c: got[c] for c in ORDINARY} == dict.fromkeys(ORDINARY, (0, 0))
    assert stat.S_IMODE(os.stat(workspace / "ok_755").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(workspace / "ok_gw").st_mode) == 0o775
    assert stat.S_IMODE(os.stat(workspace / "ok_sticky").st_mode) == 0o1777
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(workspace / "f_caps", "security.capability")


async def test_control_without_seccomp_the_bits_are_stored(
    sup: Supervisor, workspace: Path, probe: Probe
) -> None:
    # Shows what the filter prevents: the kernel lets the file's owner set the bits.
    r = await sup.run([str(probe.path), *sorted(KERNEL_ALLOWS)], policy=policy(workspace, seccomp=False))
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    got = parse(r.stdout)
    assert {c: got[c] for c in KERNEL_ALLOWS} == dict.fromkeys(KERNEL_ALLOWS, (0, 0))
    found = setid_files(workspace)
    assert len(found) == len(KERNEL_ALLOWS), found
    if AS_ROOT:  # the reason this matters: set-id ROOT on the host
        assert os.stat(workspace / "f_chmod_suid").st_uid == 0


async def test_coreutils_and_python_inside(sup: Supervisor, workspace: Path) -> None:
    # What programs do: chmod(1) with symbolic and numeric modes, install -m, mkdir -m, tar x of an archive
    # with a set-uid member (refused loudly), and Python's os.chmod/os.open.
    script = (
        "set -u; touch a b; chmod 755 a; chmod g+w b; mkdir -m 750 d; install -m 755 a c;"
        " chmod u+s a; echo suid=$?; chmod g+s d; echo sgid_dir=$?; install -m 4755 a e; echo install=$?;"
        ' python3 -I -S -c \'import os; os.chmod("b", 0o644);'
        ' fd = os.open("p", os.O_CREAT | os.O_WRONLY, 0o6755); print("pyopen", oct(os.fstat(fd).st_mode))\''
        " ; echo py=$?"
    )
    r = await sup.run(["/bin/sh", "-c", script], policy=policy(workspace))
    out = r.stdout.decode()
    for refused in ("suid=1", "sgid_dir=1", "install=1"):
        assert refused in out, (out, r.stderr)
    assert "py=1" in out, (out, r.stderr)  # os.open with a set-id mode: PermissionError
    assert "Operation not permitted" in r.stderr.decode()
    assert setid_files(workspace) == []
    assert stat.S_IMODE(os.stat(workspace / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(workspace / "b").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(workspace / "c").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(workspace / "d").st_mode) == 0o750


async def test_setgid_directory_made_by_the_host(sup: Supervisor, workspace: Path) -> None:
    # A set-gid directory the HOST made stays what it is: mkdir inside inherits the bit (the kernel's doing,
    # for group sharing; a directory's set-gid grants nothing on exec) and files inherit its group. The
    # sandbox cannot set the bit, and chmod(1) re-asserts it on numeric modes, so `chmod 755` of such a
    # directory is refused; `chmod g-s` (then anything) works.
    shared = workspace / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    script = (
        "cd shared; mkdir sub; touch f; chmod 755 sub; echo numeric=$?; chmod g-s sub; echo clear=$?;"
        " chmod 755 sub; echo after=$?"
    )
    r = await sup.run(["/bin/sh", "-c", script], policy=policy(workspace))
    out = r.stdout.decode()
    for step in ("numeric=1", "clear=0", "after=0"):
        assert step in out, (out, r.stderr)
    assert stat.S_IMODE(os.stat(shared / "sub").st_mode) == 0o755
    assert not os.stat(shared / "f").st_mode & SETID
    assert setid_files(workspace) == ["shared 0o42775"]  # the host's own, untouched


def test_unprivileged_caller(probe: Probe) -> None:
    with ordinary_caller_scratch("setid-unpriv") as (scratch, python, pythonpath):
        ws = scratch / "ws"
        ws.mkdir()
        os.chmod(ws, 0o777)
        report = run_probe_as_user(python, pythonpath, scratch, probe.path, ws, list(ATTACKS))
        assert report["exit"] == 0, report
        got = parse(report["stdout"].encode())
        wrong = {c: got.get(c) for c, want in ATTACKS.items() if got.get(c) != (-1, want)}
        assert not wrong, f"cases that did not fail as expected: {wrong}"
        assert setid_files(ws) == []
