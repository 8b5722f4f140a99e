"""Filesystem escapes tried from inside real sandboxes, each checked from outside.

Every attack runs in a sandboxed /usr/bin/python3 (or /bin/sh) that prints a JSON report of what each
attempt did: "ok" (or the value it read) or the errno name. A test asserts both the report and the effect
seen from the host: the target's contents and metadata (`tree_state`, `digest`) unchanged, a listing
unchanged, a host value unchanged.

Safety: the only things attacked for writing are canary files and directories the test creates in its own
scratch dirs (under /var/tmp/corral-tests, or a canary the test itself creates in host /tmp and /dev/shm).
Real host paths (/proc/sys, /dev) are only ever opened for writing where the write, if the sandbox failed,
would repeat the value already there, or not write at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Policy, profiles
from supervisor import Supervisor
from tests.kernel.conftest import digest

pytestmark = pytest.mark.kernel

PY = "/usr/bin/python3"
SH = "/bin/sh"
GIT = "/usr/bin/git"

#: What a refused filesystem write may answer: Landlock (EACCES), the read-only mount (EROFS), a missing
#: capability or seccomp (EPERM).
DENIED = frozenset({"EACCES", "EPERM", "EROFS"})

# The child side of every attack: `attempt` records "ok" (or the JSON-able value the attempt returned) or
# the errno name. `A` holds the test's arguments (paths), passed as JSON in argv[1].
PRELUDE = r"""
import ctypes, errno, json, os, stat, sys
A = json.loads(sys.argv[1])
R = {}

def attempt(name, fn, *args):
    try:
        value = fn(*args)
    except OSError as e:
        R[name] = errno.errorcode.get(e.errno, str(e.errno))
    else:
        R[name] = "ok" if value is None else value

def write(path, data=b"pwned\n", flags=os.O_WRONLY, dir_fd=None):
    fd = os.open(path, flags | os.O_CLOEXEC, 0o755, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")

libc = ctypes.CDLL(None, use_errno=True)

def call(fn, *args):
    if fn(*args) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
"""


def policy(workspace: Path, **opts: object) -> Policy:
    return profiles.workspace_write(workspace, timeout=20, **opts)  # type: ignore[arg-type]


async def attack_output(
    sup: Supervisor, pol: Policy, body: str, **args: object
) -> tuple[dict[str, object], bytes]:
    """Run `body` (after PRELUDE) in a sandboxed python3; return its report and its whole output."""
    code = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(R))\n"
    r = await sup.run([PY, "-I", "-c", code, json.dumps(args, default=str)], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()
    report: dict[str, object] = json.loads(r.stdout)
    return report, r.stdout + r.stderr


async def attack(sup: Supervisor, pol: Policy, body: str, **args: object) -> dict[str, object]:
    """Run `body` (after PRELUDE) in a sandboxed python3 and return its report."""
    return (await attack_output(sup, pol, body, **args))[0]


def refused(
    report: dict[str, object], names: list[str], allowed: frozenset[str] = DENIED
) -> dict[str, object]:
    """The attempts among `names` that were NOT refused with one of `allowed` (empty when all were)."""
    missing = [n for n in names if n not in report]
    assert not missing, f"the child did not run {missing}"
    return {n: report[n] for n in names if report[n] not in allowed}


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything an attack could change under `root`: names, type, mode, owner, links, size, times (ctime
    moves on any chmod/chown/utime/xattr/link/rename of the inode), content or link target."""
    out: dict[str, tuple[object, ...]] = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            body: object = p.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(p)
        else:
            body = None
        out[str(p.relative_to(root))] = (
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_nlink,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            body,
        )
    return out


def read_host(path: str) -> bytes:
    return Path(path).read_bytes()


def existing(paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if os.path.lexists(p)]


# ----------------------------------------------------------------------------------------------------------
# Writing outside the write roots


async def test_files_outside_the_write_roots_cannot_be_changed(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    (workspace / "mine.txt").write_text("mine\n")
    (outside / "emptydir").mkdir()
    before, before_digest = tree_state(outside), digest(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c, d = A["canary"], A["outside"]
        attempt("write", write, c)
        attempt("append", write, c, b"x", os.O_WRONLY | os.O_APPEND)
        attempt("rdwr", write, c, b"x", os.O_RDWR)
        attempt("create", write, d + "/new.txt", b"x", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        attempt("create_at", write, "new.txt", b"x", os.O_WRONLY | os.O_CREAT, os.open(d, os.O_RDONLY))
        attempt("mkdir", os.mkdir, d + "/newdir")
        attempt("mkfifo", os.mkfifo, d + "/fifo")
        attempt("symlink", os.symlink, "/etc/passwd", d + "/link")
        attempt("unlink", os.unlink, c)
        attempt("rmdir", os.rmdir, d + "/emptydir")
        attempt("rename_in_place", os.rename, c, d + "/moved.txt")
        attempt("chmod", os.chmod, c, 0o777)
        attempt("chown_same_owner", os.chown, c, 0, 0)
        attempt("utime", os.utime, c, (0, 0))
        attempt("setxattr", os.setxattr, c, "user.corral", b"pwned")
        # Controls: the same child can write its workspace and read the canary.
        attempt("control_write_workspace", write, "mine.txt", b"changed\\n")
        attempt("control_read_outside", read, c)
        """,
        canary=outside / "canary.txt",
        outside=outside,
    )
    assert rep["control_write_workspace"] == "ok"
    assert rep["control_read_outside"] == "host canary\n"
    attacks = [k for k in rep if not k.startswith("control_")]
    assert len(attacks) == 15
    assert refused(rep, attacks) == {}
    assert tree_state(outside) == before
    assert digest(outside) == before_digest
    assert (workspace / "mine.txt").read_text() == "changed\n"


async def test_symlinks_in_the_workspace_do_not_lead_outside(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    canary = outside / "canary.txt"
    (workspace / "host_made_link").symlink_to(canary)
    before = tree_state(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c, d = A["canary"], A["outside"]
        attempt("make_file_link", os.symlink, c, "to_canary")
        attempt("make_rel_link", os.symlink, os.path.relpath(c), "to_canary_rel")
        attempt("make_dir_link", os.symlink, d, "to_outside")
        attempt("write_via_link", write, "to_canary")
        attempt("append_via_link", write, "to_canary", b"x", os.O_WRONLY | os.O_APPEND)
        attempt("trunc_via_link", write, "to_canary", b"", os.O_WRONLY | os.O_TRUNC)
        attempt("write_via_rel_link", write, "to_canary_rel")
        attempt("write_via_host_link", write, "host_made_link")
        attempt("chmod_via_link", os.chmod, "to_canary", 0o777)
        attempt("utime_via_link", os.utime, "to_canary", (0, 0))
        attempt("create_via_dir_link", write, "to_outside/new.txt", b"x", os.O_WRONLY | os.O_CREAT)
        attempt("mkdir_via_dir_link", os.mkdir, "to_outside/newdir")
        attempt("unlink_via_dir_link", os.unlink, "to_outside/canary.txt")
        attempt("rename_via_dir_link", os.rename, "to_outside/canary.txt", "to_outside/x.txt")
        attempt("control_read_via_link", read, "to_canary")
        attempt("control_unlink_own_link", os.unlink, "to_canary_rel")
        """,
        canary=canary,
        outside=outside,
    )
    # The links themselves are the child's to make and remove; what they point at is not.
    for name in ("make_file_link", "make_rel_link", "make_dir_link", "control_unlink_own_link"):
        assert rep[name] == "ok", (name, rep[name])
    assert rep["control_read_via_link"] == "host canary\n"
    attacks = [k for k in rep if "_via_" in k and not k.startswith("control_")]
    assert len(attacks) == 11
    assert refused(rep, attacks) == {}
    assert tree_state(outside) == before
    assert os.readlink(workspace / "to_canary") == str(canary)


async def test_hardlinks_cannot_bridge_the_boundary(sup: Supervisor, workspace: Path, outside: Path) -> None:
    (workspace / "mine.txt").write_text("mine\n")
    before = tree_state(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c, d = A["canary"], A["outside"]
        attempt("link_outside_into_workspace", os.link, c, "hl.txt")
        if R["link_outside_into_workspace"] == "ok":
            attempt("write_via_hardlink", write, "hl.txt")
        attempt("link_workspace_into_outside", os.link, "mine.txt", d + "/hl.txt")
        # linkat(AT_SYMLINK_FOLLOW) through a /proc fd link: the classic way to link an open file.
        opath = os.open(c, os.O_PATH)
        attempt("linkat_proc_fd", lambda: os.link(f"/proc/self/fd/{opath}", "hl2.txt", follow_symlinks=True))
        attempt("control_link_in_workspace", os.link, "mine.txt", "mine-link.txt")
        """,
        canary=outside / "canary.txt",
        outside=outside,
    )
    assert rep["control_link_in_workspace"] == "ok"
    assert (
        refused(
            rep,
            ["link_outside_into_workspace", "link_workspace_into_outside", "linkat_proc_fd"],
            DENIED | {"EXDEV"},
        )
        == {}
    )
    assert "write_via_hardlink" not in rep
    assert tree_state(outside) == before  # includes st_nlink: no new name for the canary anywhere
    assert not (workspace / "hl.txt").exists()
    assert not (workspace / "hl2.txt").exists()


async def test_renames_across_the_boundary_fail_both_ways(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    (workspace / "mine.txt").write_text("mine\n")
    (workspace / "mydir").mkdir()
    (outside / "sub").mkdir()
    (outside / "sub" / "f.txt").write_text("sub\n")
    before_out, before_ws = tree_state(outside), tree_state(workspace)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c, d = A["canary"], A["outside"]
        RENAME_EXCHANGE = 2
        def renameat2(old, new, flags):
            call(libc.renameat2, -100, old.encode(), -100, new.encode(), flags)
        attempt("workspace_to_outside", os.rename, "mine.txt", d + "/mine.txt")
        attempt("outside_to_workspace", os.rename, c, "stolen.txt")
        attempt("outside_dir_to_workspace", os.rename, d + "/sub", "stolen_dir")
        attempt("replace_outside_file", os.replace, "mine.txt", c)
        attempt("exchange", renameat2, "mine.txt", c, RENAME_EXCHANGE)
        attempt("workspace_dir_to_outside", os.rename, "mydir", d + "/newdir")
        """,
        canary=outside / "canary.txt",
        outside=outside,
    )
    attacks = list(rep)
    assert len(attacks) == 6
    assert refused(rep, attacks, DENIED | {"EXDEV"}) == {}
    assert tree_state(outside) == before_out
    assert tree_state(workspace) == before_ws


async def test_outside_files_cannot_be_truncated(sup: Supervisor, workspace: Path, outside: Path) -> None:
    (workspace / "mine.txt").write_text("mine\n")
    before = tree_state(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c = A["canary"]
        attempt("truncate", os.truncate, c, 0)
        attempt("open_wronly_trunc", write, c, b"", os.O_WRONLY | os.O_TRUNC)
        # O_RDONLY|O_TRUNC truncates on Linux: only Landlock's TRUNCATE right and the mount stand in the way.
        attempt("open_rdonly_trunc", lambda: os.close(os.open(c, os.O_RDONLY | os.O_TRUNC)))
        attempt("creat", write, c, b"", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        ro = os.open(c, os.O_RDONLY)
        attempt("reopen_proc_fd_trunc", write, f"/proc/self/fd/{ro}", b"", os.O_WRONLY | os.O_TRUNC)
        attempt("control_truncate_workspace", os.truncate, "mine.txt", 0)
        """,
        canary=outside / "canary.txt",
    )
    assert rep["control_truncate_workspace"] == "ok"
    assert (workspace / "mine.txt").read_bytes() == b""
    attacks = [k for k in rep if not k.startswith("control_")]
    assert refused(rep, attacks) == {}
    assert (outside / "canary.txt").read_text() == "host canary\n"
    assert tree_state(outside) == before


async def test_proc_magic_links_do_not_reach_outside(sup: Supervisor, workspace: Path, outside: Path) -> None:
    canary = outside / "canary.txt"
    (workspace / "mine.txt").write_text("mine\n")
    before = tree_state(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        c, d = A["canary"], A["outside"]
        rel = os.path.relpath(c)  # ../host-xxx/canary.txt from the workdir
        attempt("self_root", write, "/proc/self/root" + c)
        attempt("init_root", write, "/proc/1/root" + c)
        attempt("thread_self_root", write, "/proc/thread-self/root" + c)
        attempt("self_cwd_dotdot", write, "/proc/self/cwd/" + rel)
        attempt("init_cwd_dotdot", write, "/proc/1/cwd/" + rel)
        attempt("self_root_create", write, "/proc/self/root" + d + "/new.txt", b"x", os.O_WRONLY | os.O_CREAT)
        attempt("opath_reopen", write, f"/proc/self/fd/{os.open(c, os.O_PATH)}")
        attempt("rdonly_reopen", write, f"/proc/self/fd/{os.open(c, os.O_RDONLY)}")
        dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        attempt("dirfd_create", write, "new2.txt", b"x", os.O_WRONLY | os.O_CREAT, dirfd)
        attempt("dirfd_proc_create", write, f"/proc/self/fd/{dirfd}/new3.txt", b"x", os.O_WRONLY | os.O_CREAT)
        attempt("control_self_root_workspace", write, "/proc/self/root" + A["ws"] + "/mine.txt", b"ok\\n",
                os.O_WRONLY | os.O_TRUNC)
        """,
        canary=canary,
        outside=outside,
        ws=workspace,
    )
    assert rep["control_self_root_workspace"] == "ok"
    assert (workspace / "mine.txt").read_text() == "ok\n"
    attacks = [k for k in rep if not k.startswith("control_")]
    assert len(attacks) == 10
    assert refused(rep, attacks) == {}
    assert tree_state(outside) == before


# ----------------------------------------------------------------------------------------------------------
# Host state behind /proc and mounts

#: Host-global sysctls (not namespaced): a write would change the host. core_pattern is the classic
#: root-escalation target (the kernel runs a `|program` pattern as root).
HOST_SYSCTLS = ("vm/swappiness", "kernel/core_pattern", "kernel/randomize_va_space", "vm/overcommit_memory")

#: Host kernel files outside /proc/sys that uid 0 could write by mode alone: moving into the root cgroup
#: (out of the limits), the uevent helper the kernel runs as root, power state, memory management.
HOST_KERNEL_FILES = (
    "/sys/fs/cgroup/cgroup.procs",
    "/sys/fs/cgroup/unified/cgroup.procs",
    "/sys/fs/cgroup/pids/cgroup.procs",
    "/sys/fs/cgroup/memory/cgroup.procs",
    "/sys/kernel/uevent_helper",
    "/sys/power/state",
    "/sys/kernel/mm/transparent_hugepage/enabled",
    "/sys/kernel/mm/ksm/run",
    "/proc/sysrq-trigger",
)


async def test_host_kernel_settings_cannot_be_written(sup: Supervisor, workspace: Path) -> None:
    host_before = {n: read_host(f"/proc/sys/{n}") for n in HOST_SYSCTLS}
    files = existing(HOST_KERNEL_FILES)
    assert len(files) >= 3, files
    rep = await attack(
        sup,
        policy(workspace),
        """
        def rewrite(path):
            # The attack is opening for writing; the write repeats the value already there, so a broken
            # sandbox still changes nothing on this host.
            old = open(path, "rb").read()
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, old)
            finally:
                os.close(fd)
        for name in A["sysctls"]:
            attempt(name, rewrite, "/proc/sys/" + name)
        attempt("kernel/hostname", rewrite, "/proc/sys/kernel/hostname")
        attempt("via_self_root", rewrite, "/proc/self/root/proc/sys/vm/swappiness")
        # Opened for writing only: nothing is ever written to these.
        for path in A["files"]:
            attempt(path, lambda: os.close(os.open(path, os.O_WRONLY)))
        attempt("control_read", read, "/proc/sys/vm/swappiness")
        """,
        sysctls=HOST_SYSCTLS,
        files=files,
    )
    assert rep["control_read"] == host_before["vm/swappiness"].decode()
    attacks = [*HOST_SYSCTLS, "kernel/hostname", "via_self_root", *files]
    # The sandbox's /sys/fs/cgroup is its own read-only view (EROFS), without the hierarchies its leaf is
    # not in (ENOENT); test_attack_cgroup_view.py attacks it further.
    cgroup_files = [f for f in files if f.startswith("/sys/fs/cgroup/")]
    assert refused(rep, [a for a in attacks if a not in cgroup_files]) == {}
    assert refused(rep, cgroup_files, DENIED | {"EROFS", "ENOENT"}) == {}
    assert {n: read_host(f"/proc/sys/{n}") for n in HOST_SYSCTLS} == host_before


# New mount API and mount_setattr: the same numbers on every architecture (added after the unification).
_NEW_MOUNT_API = {"open_tree": 428, "fsopen": 430, "fspick": 433, "mount_setattr": 442}


async def test_mount_table_cannot_be_changed(sup: Supervisor, workspace: Path, outside: Path) -> None:
    (workspace / "mnt").mkdir()
    host_mounts = read_host("/proc/self/mountinfo")
    before = tree_state(outside)
    rep = await attack(
        sup,
        policy(workspace),
        """
        MS_REMOUNT, MS_BIND = 0x20, 0x1000
        MNT_DETACH, CLONE_NEWNS, CLONE_NEWUSER = 2, 0x20000, 0x10000000
        MOUNT_ATTR_RDONLY, AT_FDCWD, AT_RECURSIVE, OPEN_TREE_CLONE = 1, -100, 0x8000, 1
        L = ctypes.c_long
        def enc(s):
            return s.encode() if s else None
        def mount(src, target, fstype, flags):
            call(libc.mount, enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), None)
        def sys_(name, *args):
            call(libc.syscall, L(A["nr"][name]), *(a if isinstance(a, bytes) else L(a) for a in args))
        mnt = A["ws"] + "/mnt"
        before = read("/proc/self/mountinfo")
        attempt("mount_tmpfs", mount, "none", mnt, "tmpfs", 0)
        attempt("bind_outside_rw", mount, A["outside"], mnt, None, MS_BIND)
        attempt("remount_root_rw", mount, None, "/", None, MS_REMOUNT | MS_BIND)
        attempt("remount_outside_rw", mount, None, A["outside"], None, MS_REMOUNT | MS_BIND)
        attempt("umount_proc_sys", call, libc.umount2, b"/proc/sys", MNT_DETACH)
        attempt("umount_run", call, libc.umount2, b"/run", MNT_DETACH)
        attempt("umount_tmp", call, libc.umount2, b"/tmp", MNT_DETACH)
        attempt("unshare_user_mount", call, libc.unshare, CLONE_NEWUSER | CLONE_NEWNS)
        attr = (ctypes.c_uint64 * 4)(0, MOUNT_ATTR_RDONLY, 0, 0)  # attr_clr: make "/" writable
        attempt("mount_setattr_rw", sys_, "mount_setattr", AT_FDCWD, b"/", AT_RECURSIVE,
                ctypes.addressof(attr), ctypes.sizeof(attr))
        attempt("fsopen", sys_, "fsopen", b"tmpfs", 0)
        attempt("open_tree", sys_, "open_tree", AT_FDCWD, A["outside"].encode(), OPEN_TREE_CLONE)
        attempt("fspick", sys_, "fspick", AT_FDCWD, b"/", 0)
        R["mountinfo_unchanged"] = read("/proc/self/mountinfo") == before
        attempt("write_outside_after", write, A["outside"] + "/canary.txt")
        """,
        ws=workspace,
        outside=outside,
        nr=_NEW_MOUNT_API,
    )
    attacks = [k for k in rep if k not in ("mountinfo_unchanged", "write_outside_after")]
    assert len(attacks) == 12
    assert refused(rep, attacks) == {}
    assert rep["mountinfo_unchanged"] is True
    assert rep["write_outside_after"] in DENIED
    assert read_host("/proc/self/mountinfo") == host_mounts
    assert str(workspace / "mnt").encode() not in host_mounts
    assert list((workspace / "mnt").iterdir()) == []
    assert tree_state(outside) == before


# ----------------------------------------------------------------------------------------------------------
# Profiles, deny, private /tmp, /dev


async def test_read_only_profile_writes_only_tmp_shm_and_devnull(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    (workspace / "mine.txt").write_text("mine\n")
    before = tree_state(workspace)
    name = f"corral-ro-{uuid.uuid4().hex[:8]}"
    rep = await attack(
        sup,
        profiles.read_only(workspace, timeout=20),
        """
        attempt("write", write, "mine.txt")
        attempt("append", write, "mine.txt", b"x", os.O_WRONLY | os.O_APPEND)
        attempt("truncate", os.truncate, "mine.txt", 0)
        attempt("create", write, "new.txt", b"x", os.O_WRONLY | os.O_CREAT)
        attempt("mkdir", os.mkdir, "newdir")
        attempt("unlink", os.unlink, "mine.txt")
        attempt("rename", os.rename, "mine.txt", "moved.txt")
        attempt("chmod", os.chmod, "mine.txt", 0o777)
        attempt("symlink", os.symlink, "/etc/passwd", "link")
        attempt("outside", write, A["outside"] + "/canary.txt")
        n = A["name"]
        attempt("ok_tmp", write, "/tmp/" + n, b"tmp", os.O_WRONLY | os.O_CREAT)
        attempt("ok_tmp_read", read, "/tmp/" + n)
        attempt("ok_shm", write, "/dev/shm/" + n, b"shm", os.O_WRONLY | os.O_CREAT)
        attempt("ok_shm_read", read, "/dev/shm/" + n)
        attempt("ok_devnull", write, "/dev/null", b"x", os.O_WRONLY | os.O_TRUNC)
        attempt("ok_read_workspace", read, "mine.txt")
        """,
        outside=outside,
        name=name,
    )
    assert (rep["ok_tmp"], rep["ok_tmp_read"]) == ("ok", "tmp")
    assert (rep["ok_shm"], rep["ok_shm_read"]) == ("ok", "shm")
    assert rep["ok_devnull"] == "ok"
    assert rep["ok_read_workspace"] == "mine\n"
    attacks = [k for k in rep if not k.startswith("ok_")]
    assert len(attacks) == 10
    assert refused(rep, attacks) == {}
    assert tree_state(workspace) == before
    # /tmp and /dev/shm were private: nothing reached the host's.
    assert existing((f"/tmp/{name}", f"/dev/shm/{name}")) == []


async def test_denied_paths_are_unreadable_and_unchangeable(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    (outside / "secret.txt").write_text(marker)
    (outside / "secretdir").mkdir()
    (outside / "secretdir" / "inner.txt").write_text(marker)
    (workspace / "sub").mkdir()
    (workspace / "sub" / ".env").write_text(marker)
    before_out, before_env = tree_state(outside), digest(workspace / "sub" / ".env")
    pol = policy(workspace, deny=[outside / "secret.txt", outside / "secretdir", workspace / "sub" / ".env"])
    rep, output = await attack_output(
        sup,
        pol,
        """
        d = A["outside"]
        attempt("read_file", read, d + "/secret.txt")
        attempt("read_file_proc_root", read, "/proc/self/root" + d + "/secret.txt")
        attempt("read_file_dotdot", read, d + "/secretdir/../secret.txt")
        attempt("list_dir", os.listdir, d + "/secretdir")
        attempt("read_inner", read, d + "/secretdir/inner.txt")
        attempt("read_inner_proc_root", read, "/proc/1/root" + d + "/secretdir/inner.txt")
        attempt("read_env", read, "sub/.env")
        attempt("link_env", os.link, "sub/.env", "env-copy")
        # Moving the parent does not move the secret out from under its cover.
        attempt("rename_parent", os.rename, "sub", "sub2")
        attempt("read_env_after_move", read, "sub2/.env" if R["rename_parent"] == "ok" else "sub/.env")
        attempt("write_file", write, d + "/secret.txt")
        attempt("create_in_dir", write, d + "/secretdir/new.txt", b"x", os.O_WRONLY | os.O_CREAT)
        attempt("write_env", write, "sub2/.env" if R["rename_parent"] == "ok" else "sub/.env")
        attempt("unlink_env", os.unlink, "sub2/.env" if R["rename_parent"] == "ok" else "sub/.env")
        attempt("control_read_canary", read, d + "/canary.txt")
        """,
        outside=outside,
    )
    assert rep["control_read_canary"] == "host canary\n"
    assert marker.encode() not in output
    # A denied file reads as empty (/dev/null is mounted over it) or not at all.
    for name in ("read_file", "read_file_proc_root", "read_file_dotdot", "read_env", "read_env_after_move"):
        assert rep[name] == "" or rep[name] in DENIED | {"ENOENT"}, (name, rep[name])
    assert (
        refused(
            rep,
            ["list_dir", "read_inner", "read_inner_proc_root", "write_file", "create_in_dir", "write_env"],
            DENIED | {"ENOENT"},
        )
        == {}
    )
    assert refused(rep, ["link_env", "unlink_env"], DENIED | {"EXDEV", "EBUSY"}) == {}
    assert tree_state(outside) == before_out
    env = workspace / ("sub2" if rep["rename_parent"] == "ok" else "sub") / ".env"
    assert digest(env) == before_env


@pytest.fixture
def host_canaries() -> Iterator[list[Path]]:
    """Canary files this test creates in the host's /tmp and /dev/shm (removed afterwards)."""
    made: list[Path] = []
    try:
        for d in ("/tmp", "/dev/shm"):
            fd, name = tempfile.mkstemp(prefix="corral-canary-", dir=d)
            os.write(fd, b"host canary\n")
            os.close(fd)
            made.append(Path(name))
        yield made
    finally:
        for p in made:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


async def test_host_tmp_and_shm_are_invisible(
    sup: Supervisor, workspace: Path, host_canaries: list[Path]
) -> None:
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in host_canaries}
    rep = await attack(
        sup,
        policy(workspace),
        """
        for i, p in enumerate(A["canaries"]):
            d, name = os.path.split(p)
            R[f"listing_{i}"] = sorted(os.listdir(d))
            attempt(f"read_{i}", read, p)
            attempt(f"write_{i}", write, p, b"pwned\\n", os.O_WRONLY)
            attempt(f"unlink_{i}", os.unlink, p)
            # Creating the name works, in the private tmpfs: the host's file is a different one.
            attempt(f"create_{i}", write, p, b"pwned\\n", os.O_WRONLY | os.O_CREAT)
            attempt(f"readback_{i}", read, p)
        """,
        canaries=host_canaries,
    )
    for i, p in enumerate(host_canaries):
        assert p.name not in rep[f"listing_{i}"]
        assert rep[f"read_{i}"] == "ENOENT"
        assert rep[f"write_{i}"] == "ENOENT"
        assert rep[f"unlink_{i}"] == "ENOENT"
        assert (rep[f"create_{i}"], rep[f"readback_{i}"]) == ("ok", "pwned\n")
    assert rep["listing_0"] == []  # nothing of the host's /tmp at all (the workspace is not under it)
    assert {p: (digest(p), p.stat().st_mtime_ns) for p in host_canaries} == before
    assert all(p.read_text() == "host canary\n" for p in host_canaries)


#: What the sandbox's /dev may hold (mounts._DEV_NODES, _DEV_LINKS, pts, shm).
MINIMAL_DEV = {
    "fd",
    "full",
    "null",
    "ptmx",
    "pts",
    "random",
    "shm",
    "stderr",
    "stdin",
    "stdout",
    "tty",
    "urandom",
    "zero",
}
DANGEROUS_DEV = tuple(
    f"/dev/{n}"
    for n in (
        *("vda", "sda", "nvme0n1", "mem", "kmem", "port", "kmsg", "kvm", "fuse", "loop0", "loop-control"),
        *("console", "tty0", "tty1", "hwrng", "btrfs-control", "net/tun", "autofs", "cpu_dma_latency"),
    )
)


async def test_dev_holds_only_the_minimal_nodes(sup: Supervisor, workspace: Path) -> None:
    host_dangerous = existing(DANGEROUS_DEV)
    assert host_dangerous, "this host has none of the nodes the test looks for"
    rep = await attack(
        sup,
        policy(workspace),
        """
        def peek(path):  # open read-only and close: no device is ever read or written
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        R["dev"] = sorted(os.listdir("/dev"))
        R["pts"] = sorted(os.listdir("/dev/pts"))
        for n in A["dangerous"]:
            attempt("open_" + n, peek, n)
            attempt("open_via_root_" + n, peek, "/proc/self/root" + n)
        attempt("mknod_block", os.mknod, "disk", stat.S_IFBLK | 0o600, os.makedev(254, 0))
        attempt("mknod_mem", os.mknod, "mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
        attempt("mknod_tmp", os.mknod, "/tmp/disk", stat.S_IFBLK | 0o600, os.makedev(254, 0))
        attempt("control_null", write, "/dev/null")
        """,
        dangerous=host_dangerous,
    )
    assert set(rep["dev"]) <= MINIMAL_DEV  # type: ignore[arg-type]
    assert {"null", "zero", "urandom", "tty", "pts", "shm"} <= set(rep["dev"])  # type: ignore[arg-type]
    assert set(rep["pts"]) <= {"ptmx"}  # type: ignore[arg-type]  # a private devpts: no host terminals
    assert rep["control_null"] == "ok"
    opens = [k for k in rep if k.startswith("open_")]
    assert len(opens) == 2 * len(host_dangerous)
    assert refused(rep, opens, frozenset({"ENOENT"})) == {}
    assert refused(rep, ["mknod_block", "mknod_mem", "mknod_tmp"]) == {}
    assert not (workspace / "disk").exists()
    assert not (workspace / "mem").exists()


# ----------------------------------------------------------------------------------------------------------
# git: hooks and config stay read-only inside a writable workspace, and git itself still works

_GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
#: For git inside the sandbox (HOME=/tmp: the private one; no host ~/.gitconfig).
CHILD_GIT_ENV = ["HOME=/tmp", *(f"{k}={v}" for k, v in _GIT_ENV.items() if k.startswith("GIT_"))]


def host_git(repo: Path, *args: str) -> str:
    """Run git on the host: init/add/commit before any sandboxed child has touched the repository, and
    afterwards only commands that run no hook (rev-parse, config, log, show, status) on a repository whose
    config the child did not change."""
    r = subprocess.run(
        [GIT, "-C", str(repo), *args], env=_GIT_ENV, capture_output=True, text=True, timeout=30, check=False
    )
    assert r.returncode in (0, 1), r.stderr
    return r.stdout.strip()


def make_repo(path: Path, *init_args: str) -> None:
    host_git(path, "init", "-q", *init_args)
    (path / "README").write_text("hello\n")
    host_git(path, "add", "README")
    host_git(path, "commit", "-q", "-m", "initial")


def hook_view(repo: Path) -> dict[str, object]:
    """How the host's git would find hooks in `repo` now: the hooks directory it would use (following
    commondir and core.hooksPath), the executables in it, the settings that run programs, the config."""
    common = host_git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir")
    hooks_path = host_git(repo, "config", "--get", "core.hooksPath")
    hooks = Path(hooks_path) if hooks_path else Path(common) / "hooks"
    if not hooks.is_absolute():
        hooks = repo / hooks
    executables = sorted(
        p.name
        for p in hooks.glob("*")
        if p.is_file() and os.access(p, os.X_OK) and not p.name.endswith(".sample")
    )
    return {
        "common_dir": common,
        "hooks_dir": str(hooks),
        "executable_hooks": executables,
        "fsmonitor": host_git(repo, "config", "--get", "core.fsmonitor"),
        "config": digest(Path(common) / "config") if (Path(common) / "config").exists() else None,
    }


PAYLOAD = '#!/bin/sh\necho corral-escape >> "$(git rev-parse --show-toplevel)/ESCAPED"\n'


async def test_git_hooks_and_config_resist_tampering(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    git = workspace / ".git"
    assert (git / "hooks" / "pre-commit.sample").exists()
    (git / "hooks" / "pre-commit").write_text("#!/bin/sh\nexit 0\n")  # there, but not executable
    (git / "hooks" / "pre-commit").chmod(0o644)
    view, hooks, config = hook_view(workspace), digest(git / "hooks"), digest(git / "config")
    hooks_state = tree_state(git / "hooks")
    assert view["executable_hooks"] == []
    rep = await attack(
        sup,
        policy(workspace, env=CHILD_GIT_ENV),
        """
        p = A["payload"].encode()
        X = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        attempt("overwrite_hook", write, ".git/hooks/pre-commit", p, os.O_WRONLY | os.O_TRUNC)
        attempt("chmod_hook", os.chmod, ".git/hooks/pre-commit", 0o755)
        attempt("create_hook", write, ".git/hooks/pre-push", p, X)
        attempt("overwrite_sample", write, ".git/hooks/pre-commit.sample", p, os.O_WRONLY | os.O_TRUNC)
        attempt("chmod_sample", os.chmod, ".git/hooks/pre-commit.sample", 0o755)
        attempt("rename_sample_to_hook", os.rename, ".git/hooks/pre-commit.sample", ".git/hooks/pre-commit")
        attempt("symlink_hook", os.symlink, "/bin/true", ".git/hooks/post-checkout")
        attempt("link_hook", os.link, "README", ".git/hooks/post-merge")
        attempt("mkdir_in_hooks", os.mkdir, ".git/hooks/sub")
        attempt("unlink_sample", os.unlink, ".git/hooks/pre-commit.sample")
        attempt("rename_hooks", os.rename, ".git/hooks", ".git/hooks-old")
        attempt("rmdir_hooks", os.rmdir, ".git/hooks")
        attempt("write_config", write, ".git/config", b"[core]\\n\\thooksPath = /tmp\\n",
                os.O_WRONLY | os.O_TRUNC)
        attempt("append_config", write, ".git/config", b"[core]\\n\\tfsmonitor = /tmp/x\\n",
                os.O_WRONLY | os.O_APPEND)
        attempt("rename_config", os.rename, ".git/config", ".git/config.old")
        attempt("unlink_config", os.unlink, ".git/config")
        attempt("replace_config", lambda: (write(".git/config.new", b"[core]\\n", X),
                                           os.replace(".git/config.new", ".git/config"))[1])
        attempt("chmod_config", os.chmod, ".git/config", 0o666)
        attempt("rename_git", os.rename, ".git", ".git-old")
        attempt("rmdir_git", os.rmdir, ".git")
        """,
        payload=PAYLOAD,
    )
    assert refused(rep, list(rep), DENIED | {"EBUSY", "EXDEV", "ENOTEMPTY", "EEXIST"}) == {}, (
        "a protected git path was changed"
    )
    # The shell way, and git's own: every step must fail.
    r = await sup.run(
        [
            SH,
            "-c",
            "mv .git .git-old && mkdir -p .git/hooks && printf '%s' \"$1\" > .git/hooks/pre-commit"
            " && chmod +x .git/hooks/pre-commit && echo SWAPPED; "
            "rm -rf .git/hooks 2>/dev/null; "
            "git config core.hooksPath /tmp/hooks && echo CONFIGURED; "
            "git config core.fsmonitor 'echo pwned' && echo FSMONITOR; "
            "ls .git/hooks | wc -l",
            "sh",
            PAYLOAD,
        ],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    out = r.stdout.decode()
    assert [w for w in ("SWAPPED", "CONFIGURED", "FSMONITOR") if w in out] == [], out
    assert int(out.split()[-1]) == len(hooks_state) - 1  # rm -rf removed nothing
    assert hook_view(workspace) == view
    assert digest(git / "hooks") == hooks
    assert tree_state(git / "hooks") == hooks_state
    assert digest(git / "config") == config
    assert not (workspace / ".git-old").exists()


async def test_git_add_and_commit_work_inside(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    view = hook_view(workspace)
    r = await sup.run(
        [
            SH,
            "-c",
            "echo change > file.txt && git add file.txt && git -c user.name=a -c user.email=a@b "
            "commit -q -m 'from the sandbox' && git log --format=%s -1",
        ],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    assert r.exit_code == 0, r.stderr.decode()
    assert r.stdout.decode().strip() == "from the sandbox"
    assert host_git(workspace, "log", "--format=%s").splitlines() == ["from the sandbox", "initial"]
    assert host_git(workspace, "show", "--format=", "--name-only", "HEAD") == "file.txt"
    assert host_git(workspace, "status", "--porcelain") == ""
    assert hook_view(workspace) == view


# --- ways around the mount protection (each one a host code execution on the user's next `git commit`
# outside the sandbox), caught by the post-run scan (supervisor/_gitscan.py). The hooks are payloads that
# only append to a file in the workspace, and the tests only inspect git's view (`hook_view`): they never
# run a hook.


async def test_git_commondir_cannot_redirect_hooks(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    view = hook_view(workspace)
    r = await sup.run(
        [
            SH,
            "-c",
            "mkdir -p evil/hooks && ln -s ../.git/objects evil/objects && ln -s ../.git/refs evil/refs"
            " && cp .git/HEAD .git/config evil/ && printf '%s' \"$1\" > evil/hooks/pre-commit"
            " && chmod +x evil/hooks/pre-commit && echo ../evil > .git/commondir",
            "sh",
            PAYLOAD,
        ],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    # The write succeeds inside; the post-run scan moves the new commondir aside and says so.
    assert hook_view(workspace) == view
    assert str(workspace / ".git" / "commondir") in [p for p, _ in r.quarantined], r.quarantined


async def test_git_missing_hooks_dir_cannot_be_created(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace, "--template=")
    assert not (workspace / ".git" / "hooks").exists()
    view = hook_view(workspace)
    r = await sup.run(
        [
            SH,
            "-c",
            "mkdir -p .git/hooks && printf '%s' \"$1\" > .git/hooks/pre-commit"
            " && chmod +x .git/hooks/pre-commit",
            "sh",
            PAYLOAD,
        ],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    assert hook_view(workspace) == view
    assert r.exit_code != 0


async def test_git_submodule_hooks_resist_tampering(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    (workspace / ".git" / "modules").mkdir()
    sub = workspace / "sub"
    sub.mkdir()
    make_repo(sub, f"--separate-git-dir={workspace / '.git' / 'modules' / 'sub'}")
    view = hook_view(sub)
    assert view["common_dir"] == str(workspace / ".git" / "modules" / "sub")
    r = await sup.run(
        [
            SH,
            "-c",
            "printf '%s' \"$1\" > .git/modules/sub/hooks/pre-commit;"
            " chmod +x .git/modules/sub/hooks/pre-commit;"
            "git -C sub config core.fsmonitor 'echo pwned'; true",
            "sh",
            PAYLOAD,
        ],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    assert r.exit_code == 0, r.stderr.decode()
    assert hook_view(sub) == view


async def test_git_configured_hooks_path_resists_tampering(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    host_git(workspace, "config", "core.hooksPath", ".husky")
    (workspace / ".husky").mkdir()
    view = hook_view(workspace)
    assert view["hooks_dir"] == str(workspace / ".husky")
    r = await sup.run(
        [SH, "-c", "printf '%s' \"$1\" > .husky/pre-commit; chmod +x .husky/pre-commit; true", "sh", PAYLOAD],
        policy=policy(workspace, env=CHILD_GIT_ENV),
    )
    assert r.exit_code == 0, r.stderr.decode()
    assert hook_view(workspace) == view


async def test_git_worktree_gitfile_cannot_redirect_hooks(sup: Supervisor, workspace: Path) -> None:
    main_repo = workspace / "main"
    main_repo.mkdir()
    make_repo(main_repo)
    host_git(main_repo, "worktree", "add", "-q", str(workspace / "wt"))
    wt = workspace / "wt"
    assert (wt / ".git").is_file()
    view = hook_view(wt)
    r = await sup.run(
        [
            SH,
            "-c",
            'mkdir -p evil/hooks evil/refs && ln -s "$2/.git/objects" evil/objects'
            " && cp \"$2/.git/HEAD\" evil/HEAD && printf '[core]\\n' > evil/config"
            " && printf '%s' \"$1\" > evil/hooks/pre-commit && chmod +x evil/hooks/pre-commit"
            " && echo 'gitdir: evil' > .git",
            "sh",
            PAYLOAD,
            str(main_repo),
        ],
        policy=policy(wt, env=CHILD_GIT_ENV),
    )
    assert hook_view(wt) == view
    assert r.exit_code != 0
