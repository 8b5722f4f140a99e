"""The sandbox's identity on the host (issue 11, item 2b): what its uid can and cannot do.

docs/security.md, "Identity". A root caller's sandbox runs as the owner of its workdir: root in a root-owned
workdir, the owning account (its uid and gid, no supplementary group, no capability) in another account's
(a developer's checkout, an unpacked sdist). What works: writing that account's files, `tar x`, `cp -a`,
`chown` to its own ids, ICMP echo sockets (`ping` without CAP_NET_RAW) in the sandbox's own network
namespace, the `ping` binary itself although it carries file capabilities (the tree is mounted nosuid: they
are ignored, not refused), and `prctl(PR_SET_KEEPCAPS)` at a program's start-up. The attacks on that
mapping (set-id files, chown to host root or to a third account, reading root's files, steering the
identity of a later sandbox) are checked from outside. What does not work (a strict xfail): in a ROOT-owned
workdir, `tar x` as root restoring other accounts' ownership.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import SandboxSetupError, Supervisor
from tests.kernel.conftest import SCRATCH
from tests.kernel.test_attack_setid import ATTACKS, Probe, parse, setid_files
from tests.kernel.test_attack_setid import probe as setid_probe  # noqa: F401  (a fixture)
from tests.kernel.unprivileged_harness import (
    AS_ROOT,
    ordinary_caller_scratch,
    run_as_user,
)

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

#: An ICMP echo over loopback with a datagram socket: prints {"socket": errno or 0, "reply": bool}.
ICMP_PROBE = r"""
import json, socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
out = {"socket": 0, "reply": False}
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
except OSError as e:
    out["socket"] = e.errno
else:
    s.settimeout(2)
    pkt = struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"corral-icmp"
    pkt = pkt[:2] + struct.pack("!H", csum(pkt + b"\0")) + pkt[4:]
    s.sendto(pkt, ("127.0.0.1", 0))
    data, addr = s.recvfrom(1024)
    out["reply"] = data[0] == 0 and addr[0] == "127.0.0.1"
print(json.dumps(out))
"""

KEEPCAPS_PROBE = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
r = libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
err = ctypes.get_errno() if r else 0
st = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
sets = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
print(json.dumps({"keepcaps": err, "caps": [st[k].strip() for k in sets]}))
"""

PY = ["/usr/bin/python3", "-I", "-S", "-c"]


def _json(stdout: bytes) -> dict[str, object]:
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


async def test_icmp_echo_socket_works(sup: Supervisor, workspace: Path) -> None:
    # A new network namespace allows ICMP echo sockets to no group (ping_group_range "1 0"); corral opens
    # them to the sandbox's (loopback only). Without that, socket() fails with EACCES.
    r = await sup.run([*PY, ICMP_PROBE], policy=profiles.workspace_write(workspace, timeout=20))
    assert r.exit_code == 0, r.stderr
    assert _json(r.stdout) == {"socket": 0, "reply": True}


async def test_ping_runs(sup: Supervisor, workspace: Path) -> None:
    ping = shutil.which("ping")
    if ping is None:
        pytest.skip("ping (iputils) is not installed on this host")
    r = await sup.run(
        [ping, "-c", "1", "-W", "2", "127.0.0.1"], policy=profiles.workspace_write(workspace, timeout=20)
    )
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert b"1 received" in r.stdout


async def test_keepcaps_works_and_grants_nothing(sup: Supervisor, workspace: Path) -> None:
    r = await sup.run([*PY, KEEPCAPS_PROBE], policy=profiles.workspace_write(workspace, timeout=20))
    assert r.exit_code == 0, r.stderr
    got = _json(r.stdout)
    assert got["keepcaps"] == 0
    assert got["caps"] == ["0000000000000000"] * 5


UNPRIV_SCRIPT = r"""
import json, sys
import anyio
from policies import profiles
from supervisor import Supervisor
async def main():
    async with Supervisor(max_concurrency=2) as sup:
        r = await sup.run(["/usr/bin/python3", "-I", "-S", "-c", sys.argv[2]],
                          policy=profiles.workspace_write(sys.argv[1], timeout=20))
        print(json.dumps({"exit": r.exit_code, "stdout": r.stdout.decode(), "stderr": r.stderr.decode()}))
anyio.run(main)
"""


def test_icmp_echo_socket_works_unprivileged() -> None:
    # The unprivileged sandbox makes its own network namespace (no pool): the init writes the range then.
    with ordinary_caller_scratch("identity-unpriv") as (scratch, python, pythonpath):
        ws = scratch / "ws"
        ws.mkdir()
        os.chmod(ws, 0o777)
        script = scratch / "run.py"
        script.write_text(UNPRIV_SCRIPT)
        os.chmod(script, 0o644)
        r = run_as_user([python, str(script), str(ws), ICMP_PROBE], pythonpath, scratch, timeout=90)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report["exit"] == 0, report
        assert _json(report["stdout"].encode()) == {"socket": 0, "reply": True}


# ------------------------------------------------------------------------------------------------------
# A root caller's sandbox in another account's workdir runs as that account.

OTHER = 1000
THIRD = 1001


def _as_root() -> None:
    if not AS_ROOT:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")


def _foreign_tree(workspace: Path) -> None:
    """A checkout owned by another account, as a developer's or an unpacked sdist is."""
    (workspace / "src").mkdir()
    (workspace / "src" / "mod.py").write_text("x = 1\n")
    for p in (workspace, workspace / "src", workspace / "src" / "mod.py"):
        os.chown(p, OTHER, OTHER)


def _owners(root: Path) -> set[tuple[int, int]]:
    """(uid, gid) of everything under `root`, itself included, seen from the host (no link followed)."""
    found = {(os.lstat(root).st_uid, os.lstat(root).st_gid)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            found.add((st.st_uid, st.st_gid))
    return found


async def _sh(sup: Supervisor, workspace: Path, script: str) -> tuple[int | None, str, str]:
    r = await sup.run(["/bin/sh", "-c", script], policy=profiles.workspace_write(workspace, timeout=30))
    return r.exit_code, r.stdout.decode(), r.stderr.decode()


async def test_root_caller_writes_files_of_another_owner(sup: Supervisor, workspace: Path) -> None:
    _as_root()
    _foreign_tree(workspace)
    code, out, err = await _sh(
        sup, workspace, "stat -c %u src/mod.py; echo y = 2 >> src/mod.py; touch new; mkdir d"
    )
    assert code == 0, (out, err)
    assert out.split() == [str(OTHER)]  # seen as its owner, not 65534
    assert (workspace / "src" / "mod.py").read_text() == "x = 1\ny = 2\n"
    # What it made belongs to the workdir's owner, not to host root.
    assert _owners(workspace) == {(OTHER, OTHER)}


async def test_root_caller_runs_as_the_owner_and_nothing_more(sup: Supervisor, workspace: Path) -> None:
    _as_root()
    _foreign_tree(workspace)
    script = (
        "import os, json; st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l);"
        "out = {'ids': [os.getuid(), os.geteuid(), os.getgid(), os.getegid()], 'groups': os.getgroups(),"
        " 'caps': [st[k].strip() for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')]}\n"
        "for name, call in (('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0)),"
        " ('setgroups', lambda: os.setgroups([0]))):\n"
        "    try: call(); out[name] = 0\n"
        "    except OSError as e: out[name] = e.errno\n"
        "print(json.dumps(out))"
    )
    r = await sup.run([*PY, script], policy=profiles.workspace_write(workspace, timeout=20))
    assert r.exit_code == 0, r.stderr
    got = _json(r.stdout)
    assert got["ids"] == [OTHER] * 4
    assert got["groups"] == [OTHER]  # root's supplementary groups did not follow
    assert got["caps"] == ["0000000000000000"] * 5
    assert (got["setuid"], got["setgid"], got["setgroups"]) == (1, 1, 1)  # EPERM


async def test_root_caller_tar_x_of_an_sdist(sup: Supervisor, workspace: Path) -> None:
    # An sdist unpacked in a developer's checkout: as its owner (not root), tar does not restore owners.
    _as_root()
    src = workspace / "pkg-1.0"
    src.mkdir()
    (src / "setup.py").write_text("pass\n")
    with tarfile.open(workspace / "pkg.tar", "w") as tar:

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = THIRD
            info.uname = info.gname = "corral-dev"  # no such account: tar uses the number
            return info

        tar.add(src, arcname="pkg-1.0", filter=owned)
    shutil.rmtree(src)
    os.chown(workspace, OTHER, OTHER)
    code, out, err = await _sh(
        sup, workspace, "mkdir out && tar -C out -xf pkg.tar && cat out/pkg-1.0/setup.py"
    )
    assert code == 0, err
    assert out == "pass\n"
    assert _owners(workspace / "out") == {(OTHER, OTHER)}


async def test_root_caller_cp_a_and_chown_to_its_own_ids(sup: Supervisor, workspace: Path) -> None:
    _as_root()
    _foreign_tree(workspace)
    os.chmod(workspace / "src" / "mod.py", 0o640)
    code, out, err = await _sh(
        sup,
        workspace,
        f"cp -a src copy && chown {OTHER}:{OTHER} copy/mod.py && chown :{OTHER} src && echo ok",
    )
    assert code == 0, err
    assert out == "ok\n"
    st = os.lstat(workspace / "copy" / "mod.py")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, OTHER, 0o640)


async def test_attack_chown_to_host_root_or_a_third_account(sup: Supervisor, workspace: Path) -> None:
    # Files it could leave for others: none may belong to host root or to an account other than the owner.
    _as_root()
    _foreign_tree(workspace)
    script = (
        f"touch f; chown 0 f; echo root=$?; chown :0 f; echo rootgrp=$?; chown {THIRD} f; echo third=$?;"
        " python3 -I -S -c 'import os; os.chown(\"f\", 0, 0)'; echo py=$?;"
        f" mkdir sub; chown {THIRD} sub; echo sub=$?"
    )
    code, out, _err = await _sh(sup, workspace, script)
    assert code == 0
    for refused in ("root=1", "rootgrp=1", "third=1", "py=1", "sub=1"):
        assert refused in out, out
    assert _owners(workspace) == {(OTHER, OTHER)}


async def test_attack_setid_files_as_the_owner(
    sup: Supervisor,
    workspace: Path,
    setid_probe: Probe,  # noqa: F811  (the fixture imported above)
) -> None:
    # Every set-id route of test_attack_setid.py, as the workdir's owner (set-id to the owner on the host).
    _as_root()
    _foreign_tree(workspace)
    os.chmod(setid_probe.path.parent, 0o755)
    r = await sup.run(
        [str(setid_probe.path), *ATTACKS], policy=profiles.workspace_write(workspace, timeout=30)
    )
    assert (r.exit_code, r.signal) == (0, None), r.stderr
    got = parse(r.stdout)
    wrong = {c: got.get(c) for c, want in ATTACKS.items() if got.get(c) != (-1, want)}
    assert not wrong, f"cases that did not fail as expected: {wrong}"
    assert setid_files(workspace) == []


async def test_attack_read_roots_files(sup: Supervisor, workspace: Path) -> None:
    # The owner's sandbox has the owner's rights on the host, not root's: a root-only file outside its roots
    # is unreadable (the control: a root-owned workdir's sandbox is root and reads it).
    _as_root()
    secret = SCRATCH / f"identity-secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    try:
        code, out, err = await _sh(sup, workspace, f"cat {secret}")
        assert (code, out) == (0, "root only\n"), err
        _foreign_tree(workspace)
        code, out, err = await _sh(sup, workspace, f"cat {secret}; echo rc=$?")
        assert out == "rc=1\n", (out, err)
        assert "Permission denied" in err
    finally:
        secret.unlink()


async def test_attack_a_root_owned_file_in_the_owners_workdir(sup: Supervisor, workspace: Path) -> None:
    # A file root left in the checkout is root's: the owner's sandbox cannot write it (the owner could not
    # either) and its owner stays root; as the directory's owner it may rename or delete it, as on the host.
    _as_root()
    _foreign_tree(workspace)
    (workspace / "root.txt").write_text("root's\n")
    code, out, _err = await _sh(
        sup, workspace, "echo x >> root.txt; echo write=$?; chmod 666 root.txt; echo chmod=$?"
    )
    assert code == 0
    assert "write=0" not in out, out
    assert "chmod=1" in out, out
    st = os.lstat(workspace / "root.txt")
    assert (st.st_uid, stat.S_IMODE(st.st_mode), (workspace / "root.txt").read_text()) == (
        0,
        0o644,
        "root's\n",
    )


async def test_attack_steer_the_identity_of_a_later_sandbox(sup: Supervisor, workspace: Path) -> None:
    # The identity follows the workdir's owner, so a sandbox must not be able to give a directory that a
    # later policy uses as its workdir to another account: a root-owned workdir's sandbox (root, no
    # CAP_CHOWN) cannot, and one that replaces it with a symlink to another account's directory gets the
    # next sandbox refused, not run as that account.
    _as_root()
    other = SCRATCH / f"identity-other-{uuid.uuid4().hex[:8]}"
    other.mkdir(mode=0o755)
    os.chown(other, THIRD, THIRD)
    try:
        _code, out, _err = await _sh(sup, workspace, f"mkdir sub; chown {THIRD} sub; echo chown=$?")
        assert "chown=1" in out, out
        assert os.lstat(workspace / "sub").st_uid == 0
        later = profiles.workspace_write(workspace / "sub", timeout=20)
        r = await sup.run(["/usr/bin/id", "-u"], policy=later)
        assert (r.exit_code, r.stdout) == (0, b"0\n"), r.stderr
        _code, out, _err = await _sh(sup, workspace, f"rmdir sub && ln -s {other} sub && echo swapped")
        assert out == "swapped\n"
        with pytest.raises(SandboxSetupError) as info:
            await sup.run(["/usr/bin/id", "-u"], policy=later)
        assert info.value.errno == errno.ELOOP
        assert _owners(other) == {(THIRD, THIRD)}
    finally:
        shutil.rmtree(other, ignore_errors=True)


@pytest.mark.parametrize("moved", ["root's", "a third account's"])
async def test_attack_steer_the_identity_by_renaming_a_directory_into_place(
    sup: Supervisor, workspace: Path, moved: str
) -> None:
    # In the owner's checkout, a directory of another account (root's `build/` left by `sudo make`, a
    # colleague's) may be renamed by the owner's sandbox: the checkout is the owner's. Renamed to the name a
    # later root caller's policy uses as its workdir, it chose whom that sandbox ran as (root: a root-only
    # file outside the roots was readable; the colleague: their files). Now the later run is refused, naming
    # the directory that let it happen; checked from outside: nothing ran as the other account.
    _as_root()
    _foreign_tree(workspace)
    (workspace / "sub").mkdir()
    os.chown(workspace / "sub", OTHER, OTHER)
    (workspace / "theirs").mkdir()
    if moved != "root's":
        os.chown(workspace / "theirs", THIRD, THIRD)
    secret = SCRATCH / f"identity-secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("root only\n")
    os.chmod(secret, 0o600)
    try:
        later = profiles.workspace_write(workspace / "sub", timeout=20)
        script = f"id -u; cat {secret}; touch made-by-the-later-run"
        r = await sup.run(["/bin/sh", "-c", script], policy=later)
        assert r.stdout.decode().splitlines()[0] == str(OTHER), r.stderr  # the owner, as documented
        assert b"root only" not in r.stdout
        code, out, err = await _sh(sup, workspace, "mv sub sub.old && mv theirs sub && echo swapped")
        assert (code, out) == (0, "swapped\n"), err
        with pytest.raises(SandboxSetupError) as info:
            await sup.run(["/bin/sh", "-c", script], policy=later)
        assert info.value.errno == errno.EPERM
        assert str(workspace) in str(info.value)  # the directory to fix
        assert not (workspace / "sub" / "made-by-the-later-run").exists()
        # The owner's own directory there still runs as the owner.
        code, out, err = await _sh(sup, workspace, "mv sub theirs && mv sub.old sub && echo back")
        assert out == "back\n", err
        r = await sup.run(["/usr/bin/id", "-u"], policy=later)
        assert r.stdout == f"{OTHER}\n".encode(), r.stderr
    finally:
        secret.unlink()


async def test_a_workdir_in_a_directory_everyone_may_write_is_refused(
    sup: Supervisor, workspace: Path
) -> None:
    # A mode 0777 directory without the sticky bit lets every local user rename its entries: whoever put
    # root's or alice's directory there would choose the identity. With the sticky bit (as /tmp and
    # /var/tmp have) only an entry's owner may: allowed.
    _as_root()
    shared = workspace / "shared"
    (shared / "work").mkdir(parents=True)
    os.chown(shared / "work", OTHER, OTHER)
    os.chmod(shared, 0o777)
    later = profiles.workspace_write(shared / "work", timeout=20)
    with pytest.raises(SandboxSetupError) as info:
        await sup.run(["/usr/bin/id", "-u"], policy=later)
    assert "every user" in str(info.value)
    os.chmod(shared, 0o1777)
    r = await sup.run(["/usr/bin/id", "-u"], policy=later)
    assert r.stdout == f"{OTHER}\n".encode(), r.stderr


async def test_a_workdir_whose_group_is_roots(sup: Supervisor, workspace: Path) -> None:
    # The sandbox never holds host gid 0 as another account: a group of 0 becomes 65534.
    _as_root()
    os.chown(workspace, OTHER, 0)
    code, out, err = await _sh(sup, workspace, "id -u; id -g; id -G; touch f")
    assert code == 0, err
    assert out.split() == [str(OTHER), "65534", "65534"]
    assert _owners(workspace) == {(OTHER, 0), (OTHER, 65534)}


@pytest.mark.xfail(
    strict=True,
    reason="GAP: in a ROOT-owned workdir the sandbox is root without CAP_CHOWN (a capability that would let "
    "it give directories to other accounts, and so choose the identity of later sandboxes): tar x as root "
    "restoring another account's ownership exits 2 ('Cannot change ownership'); tar --no-same-owner works",
)
async def test_root_owned_workdir_tar_x_restoring_owners(sup: Supervisor, workspace: Path) -> None:
    _as_root()
    src = workspace / "pkg-1.0"
    src.mkdir()
    (src / "setup.py").write_text("pass\n")
    with tarfile.open(workspace / "pkg.tar", "w") as tar:

        def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = OTHER
            info.uname = info.gname = "corral-dev"  # no such account: tar uses the number
            return info

        tar.add(src, arcname="pkg-1.0", filter=owned)
    shutil.rmtree(src)
    code, _out, err = await _sh(sup, workspace, "mkdir out && tar -C out -xf pkg.tar")
    assert code == 0, err


def test_control_the_host_root_can() -> None:
    # The xfail above is about the sandbox, not about root: on the host, root chowns to 1000 freely.
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    p = SCRATCH / f"identity-{uuid.uuid4().hex[:8]}"
    p.write_text("")
    try:
        if not AS_ROOT:
            pytest.skip("needs root")
        os.chown(p, OTHER, OTHER)
        assert p.stat().st_uid == OTHER
        out = subprocess.run(["stat", "-c", "%u", str(p)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(OTHER)
    finally:
        p.unlink()


async def test_hooks_directory_made_for_the_owner(sup: Supervisor, workspace: Path) -> None:
    # The root supervisor creates a missing .git/hooks (to protect it): in the owner's repository it
    # belongs to the owner, as if git had made it, not to root (the user could not add hooks afterwards).
    _as_root()
    _foreign_tree(workspace)
    git = workspace / ".git"
    git.mkdir()
    (git / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    for p in (git, git / "config"):
        os.chown(p, OTHER, OTHER)
    code, _out, err = await _sh(sup, workspace, "touch .git/hooks/x; echo $?")
    assert code == 0, err
    st = os.lstat(git / "hooks")
    assert (st.st_uid, st.st_gid) == (OTHER, OTHER)
    assert list((git / "hooks").iterdir()) == []


#: Python run inside: rewrite the host-left set-id files named on the command line, each its own way.
REWRITE = (
    "import os, sys\n"
    "for name in sys.argv[1:]:\n"
    "    if name == 'w':\n"
    "        with open(name, 'r+b') as f: f.write(b'#!/bin/sh\\nid\\n')\n"
    "    elif name == 't': os.truncate(name, 10)\n"
    "    elif name == 'a':\n"
    "        with open(name, 'ab') as f: f.write(b'x')\n"
    "print('done')\n"
)


async def _rewrite_setid(
    sup: Supervisor, workspace: Path, owner: str, names: tuple[str, ...]
) -> dict[str, str]:
    """A set-uid/set-gid file the HOST left in the workdir for each of `names`, rewritten from inside by
    REWRITE; returns the set-id bits left on them, seen from outside."""
    if owner == "other":
        _as_root()
        _foreign_tree(workspace)
    uid = OTHER if owner == "other" else os.getuid()
    for name in names:
        f = workspace / name
        f.write_bytes(b"\x7fELF" + b"\0" * 4092)
        os.chown(f, uid, uid)
        os.chmod(f, 0o6755)
    r = await sup.run([*PY, REWRITE, *names], policy=profiles.workspace_write(workspace, timeout=20))
    assert (r.exit_code, r.stdout) == (0, b"done\n"), r.stderr
    return {
        n: oct(os.lstat(workspace / n).st_mode) for n in names if os.lstat(workspace / n).st_mode & 0o6000
    }


@pytest.mark.parametrize("owner", ["root", "other"])
async def test_attack_rewrite_a_setid_file_left_in_the_workdir(
    sup: Supervisor, workspace: Path, owner: str
) -> None:
    # A set-id file the HOST left in the workdir (a helper built there, a copied binary): the sandbox
    # rewrites its content (write, truncate, append) to have a host user run its code with the file's
    # owner's rights. The kernel clears S_ISUID/S_ISGID on each (the sandbox holds no CAP_FSETID).
    assert await _rewrite_setid(sup, workspace, owner, ("w", "t", "a")) == {}


@pytest.mark.parametrize("owner", ["root", "other"])
async def test_attack_mmap_store_into_a_setid_file_left_in_the_workdir(
    sup: Supervisor, workspace: Path, owner: str
) -> None:
    # A store through a shared writable mapping does not make the kernel clear the bits (page faults only
    # update the times): the sandbox init refuses the mapping itself (EPERM, a seccomp denial), so the file
    # keeps the host's content with its bits. tests/kernel/test_attack_setid_rewrite.py tries every route.
    if owner == "other":
        _as_root()
        _foreign_tree(workspace)
    uid = OTHER if owner == "other" else os.getuid()
    f = workspace / "m"
    f.write_bytes(b"\x7fELF" + b"\0" * 4092)
    os.chown(f, uid, uid)
    os.chmod(f, 0o6755)
    script = (
        "import mmap\n"
        "with open('m', 'r+b') as f:\n"
        "    try: mmap.mmap(f.fileno(), 4096)[:4] = b'#!/b'\n"
        "    except PermissionError: print('refused')\n"
    )
    r = await sup.run([*PY, script], policy=profiles.workspace_write(workspace, timeout=20))
    assert (r.exit_code, r.stdout) == (0, b"refused\n"), r.stderr
    assert f.read_bytes() == b"\x7fELF" + b"\0" * 4092
    assert os.lstat(f).st_mode & 0o7777 == 0o6755
    assert [d.target for d in r.denials if d.layer == "seccomp"] == [
        "mmap(MAP_SHARED, a set-id file open for writing)"
    ]


async def test_a_workdir_given_to_another_account_is_not_served_by_an_older_sandbox(
    sup: Supervisor, workspace: Path
) -> None:
    # Sandboxes confined ahead of time for this workdir were built for its owner then (root): once the
    # host gives the workdir to another account, the next command runs as that account, not in one of them.
    _as_root()
    pol = profiles.workspace_write(workspace, timeout=20)
    for _ in range(3):  # from the second exit on, the next sandbox is built ahead
        r = await sup.run(["/usr/bin/id", "-u"], policy=pol)
        assert r.stdout == b"0\n", r.stderr
    await anyio.sleep(0.3)  # the build finishes
    os.chown(workspace, OTHER, OTHER)
    r = await sup.run(["/usr/bin/id", "-u"], policy=pol)
    assert (r.exit_code, r.stdout) == (0, f"{OTHER}\n".encode()), r.stderr
