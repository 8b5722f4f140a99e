"""More variants of issue 11's host-side classes, each from inside a real sandbox, the effect checked from
outside (session 10, helper `hunt11`).

Class 5/7: a link planted at an absent denied name (`~/.netrc`, with the home directory as the workdir and
the default profile's credential hiding) leading into the host's system tree. The fork server hides a
denied name as the object it leads to, so `~/.netrc -> /usr/lib/x86_64-linux-gnu/libc.so.6` made every
later sandbox of that workdir hide libc (exit 127, "cannot open shared object file", no word of the link):
the workdir was bricked by a name the message never gave. Now refused, naming the link to remove.

Every run is bounded by its policy's timeout; nothing here reaches past loopback.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pty
import pwd
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import anyio
import pytest

from policies import Policy, profiles
from supervisor import DEVNULL, PIPE, SandboxSetupError, Supervisor
from tests.kernel.unprivileged_harness import (
    EXPECTED_UID,
    ordinary_caller_scratch,
    run_as_user,
)

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

SH = "/bin/sh"

#: Every regular file reachable below the cwd, printed (no link followed).
DUMP = "find . -type f -exec cat {} + 2>/dev/null; true"


def _libc() -> str:
    """The real path of the C library every dynamic program of this host loads."""
    for cand in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"):
        if os.path.exists(cand):
            return os.path.realpath(cand)
    pytest.skip("no libc.so.6 at a known path")


async def run(sup: Supervisor, pol: Policy, script: str) -> tuple[int, bytes]:
    r = await sup.run([SH, "-c", script], policy=pol)
    return r.exit_code, r.stdout + r.stderr


# --- class 5/7: a link at a denied name leading into the system tree


@pytest.mark.parametrize("target", ["libc", "libdir", "/etc/passwd", "/usr/bin/env", "/opt"])
async def test_a_denied_name_linked_into_the_system_tree_is_refused_by_name(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    monkeypatch.setenv("HOME", str(workspace))
    if target == "libc":
        target = _libc()
    elif target == "libdir":
        target = os.path.dirname(_libc())
    pol = profiles.workspace_write(workspace, timeout=20)
    link = workspace / ".netrc"
    assert str(link) in pol.filesystem.deny
    code, out = await run(sup, pol, f"ln -s {target} .netrc")
    assert code == 0, out
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, pol, "touch ran")
    assert not (workspace / "ran").exists()
    assert info.value.path == str(link)
    assert "remove it" in str(info.value)
    link.unlink()
    code, out = await run(sup, pol, "echo runs again")  # the fix the message names works
    assert (code, out) == (0, b"runs again\n")


async def test_a_denied_name_linked_to_another_denied_path_is_hidden(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The target is denied by its own name too: hiding it through the link costs the sandbox nothing the
    # policy did not already take, so the run goes on and the target stays hidden.
    monkeypatch.setenv("HOME", str(workspace))
    pol = profiles.workspace_write(workspace, deny=["/etc/passwd"], timeout=20)
    code, out = await run(sup, pol, "ln -s /etc/passwd .netrc")
    assert code == 0, out
    code, out = await run(sup, pol, "cat .netrc /etc/passwd; echo done")
    assert code == 0
    assert b"done\n" in out
    assert b"root:" not in out


# --- class 2/5: a root caller's sandbox runs as the workdir's owner, who can read their own credentials


def _an_account_with_a_home() -> tuple[int, int, Path]:
    """(uid, gid, home) of an ordinary account of the password database whose home is a real directory."""
    for entry in pwd.getpwall():
        home = Path(entry.pw_dir)
        if 1000 <= entry.pw_uid < 65534 and home.is_absolute() and home != Path("/") and home.is_dir():
            return entry.pw_uid, entry.pw_gid, home
    pytest.skip("no ordinary account with a home directory in the password database to run as")


@pytest.mark.parametrize("hide", [True, False])
async def test_a_root_callers_sandbox_cannot_read_the_workdir_owners_credentials(
    sup: Supervisor, workspace: Path, hide: bool
) -> None:
    # `sudo corral run` in alice's checkout: HOME is /root, so the default hiding covered /root and the
    # system's secrets; the sandbox runs as alice (to write her files as she would) and read her ~/.netrc.
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    uid, gid, home = _an_account_with_a_home()
    names = [
        n for n in (".netrc", ".pgpass", ".git-credentials", ".pypirc", ".npmrc") if not (home / n).exists()
    ]
    if not names:
        pytest.skip(f"every credential file the test could plant already exists in {home}")
    cred = home / names[0]
    os.chown(workspace, uid, gid)
    try:
        cred.write_text("TOPSECRET-owner\n")
        os.chown(cred, uid, gid)
        os.chmod(cred, 0o600)
        pol = profiles.workspace_write(workspace, timeout=20, hide_credentials=hide)
        r = await sup.run(["/bin/sh", "-c", f"id -u; cat {cred}; echo done"], policy=pol)
        assert r.stdout.startswith(f"{uid}\n".encode()), (r.stdout, r.stderr)  # it does run as the owner
        assert b"done" in r.stdout
        if hide:
            assert b"TOPSECRET" not in r.stdout
        else:  # the control: the file is readable to its owner when nothing hides it
            assert b"TOPSECRET-owner" in r.stdout
    finally:
        cred.unlink(missing_ok=True)


async def test_a_set_gid_directory_does_not_give_a_later_sandbox_a_group_its_owner_lacks(
    sup: Supervisor, workspace: Path
) -> None:
    # A root caller's sandbox runs as the workdir's owner, with the workdir's group. In the owner's checkout
    # a host-made set-gid directory of a group the owner is not in (`adm`) passes that group to whatever is
    # made inside it, by the owner's sandbox too: `mkdir shared/evil` made the workdir of a later sandbox
    # that ran as the owner WITH group adm (/var/log's readers), which the owner never had.
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    uid, gid, _home = _an_account_with_a_home()
    name = pwd.getpwuid(uid).pw_name
    member = set(os.getgrouplist(name, gid))
    foreign = next((g.gr_gid for g in grp.getgrall() if g.gr_gid not in member and g.gr_gid != 0), None)
    assert foreign is not None, "the group database has a group the account is not in"
    shared = workspace / "shared"
    shared.mkdir()
    os.chown(workspace, uid, gid)
    os.chown(shared, uid, foreign)
    os.chmod(shared, 0o2775)
    r = await sup.run(
        ["/bin/sh", "-c", "mkdir shared/evil"], policy=profiles.workspace_write(workspace, timeout=20)
    )
    assert r.exit_code == 0, r.stderr
    assert os.stat(shared / "evil").st_gid == foreign  # the kernel's doing: inherited from the set-gid parent
    for wd in (shared / "evil", shared):
        r = await sup.run(["/bin/sh", "-c", "id -u; id -G"], policy=profiles.workspace_write(wd, timeout=20))
        assert r.exit_code == 0, r.stderr
        got_uid, groups = r.stdout.decode().split("\n", 1)
        assert int(got_uid) == uid
        assert str(foreign) not in groups.split(), (wd, groups)


def test_a_root_caller_is_warned_for_another_accounts_home_as_workdir(workspace: Path) -> None:
    # `sudo corral run --workdir /home/alice`: the sandbox runs as alice and may rewrite her ~/.bashrc,
    # which runs at her next login; only the CALLER's home (root's /root under sudo) was warned about.
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    logins = [
        e
        for e in pwd.getpwall()
        if 1000 <= e.pw_uid < 65534
        and Path(e.pw_dir).is_dir()
        and not e.pw_shell.endswith(("nologin", "false"))
    ]
    if not logins:
        pytest.skip("no ordinary account that can log in, with a home directory, in the password database")
    home, name = Path(logins[0].pw_dir), logins[0].pw_name
    p = corral(workspace, "run", "--workdir", str(home), "--", "/bin/true", home=Path("/root"))
    assert p.returncode == 0, p.stderr
    assert f"the home directory of {name}".encode() in p.stderr, p.stderr
    p = corral(workspace, "run", "--", "/bin/true", home=Path("/root"))  # the control: a project directory
    assert p.returncode == 0
    assert b"home directory" not in p.stderr, p.stderr


def test_a_root_caller_is_warned_for_another_accounts_start_up_files(workspace: Path) -> None:
    # `sudo corral run --allow-write /home/alice/.bashrc` in a root-owned project: the sandbox, uid 0, may
    # rewrite what alice's shell runs at her next login; the caller's own start-up files were warned about,
    # another account's were accepted without a word. (The file is not written: /bin/true runs.)
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    logins = [
        e
        for e in pwd.getpwall()
        if 1000 <= e.pw_uid < 65534
        and not e.pw_shell.endswith(("nologin", "false"))
        and any((Path(e.pw_dir) / f).is_file() for f in (".bashrc", ".profile"))
    ]
    if not logins:
        pytest.skip("no ordinary login account with a .bashrc or .profile in the password database")
    home, name = Path(logins[0].pw_dir), logins[0].pw_name
    start = next(home / f for f in (".bashrc", ".profile") if (home / f).is_file())
    before = start.read_bytes()
    p = corral(workspace, "run", "--allow-write", str(start), "--", "/bin/true", home=Path("/root"))
    assert p.returncode == 0, p.stderr
    assert f"start-up configuration of {name}".encode() in p.stderr, p.stderr
    assert start.read_bytes() == before
    p = corral(workspace, "run", "--", "/bin/true", home=Path("/root"))  # the control: a project directory
    assert p.returncode == 0
    assert b"start-up" not in p.stderr, p.stderr


# --- class 8: a policy file without `profile` dropped the credential hiding without saying so

CORRAL = [sys.executable, "-m", "supervisor.cli"]


def corral(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """`corral ARGS...` in `cwd` with HOME=`home`, bounded (raises subprocess.TimeoutExpired)."""
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([*CORRAL, *args], cwd=cwd, capture_output=True, timeout=60, env=env, check=False)


@pytest.mark.parametrize(
    "text",
    [
        "",  # an empty file is a valid policy: the model's defaults
        '[filesystem]\nwrite = ["out"]\n',  # "to write only some directories, leave out profile"
        '[filesystem]\ndeny = ["secrets"]\n',
        '[resources]\ntimeout = "20s"\n',
    ],
)
def test_a_policy_file_without_a_profile_still_hides_the_credential_stores(
    workspace: Path, text: str
) -> None:
    home = workspace / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("TOPSECRET-ssh\n")
    (home / ".config" / "gcloud").mkdir(parents=True)
    (home / ".config" / "gcloud" / "credentials.db").write_text("TOPSECRET-gcloud\n")
    (workspace / "out").mkdir()
    (workspace / "pol.toml").write_text(text)
    p = corral(
        workspace,
        "run",
        "--policy",
        "pol.toml",
        "--",
        SH,
        "-c",
        'cat "$HOME/.ssh/id_ed25519" "$HOME/.config/gcloud/credentials.db"; echo done',
        home=home,
    )
    assert b"done" in p.stdout, p.stderr
    assert b"TOPSECRET" not in p.stdout + p.stderr


def test_a_policy_file_drops_the_credential_hiding_only_by_name(workspace: Path) -> None:
    # The control: the named choice still works, so the test above can fail.
    home = workspace / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("TOPSECRET-ssh\n")
    (workspace / "pol.toml").write_text("[filesystem]\nhide_credentials = false\n")
    p = corral(
        workspace, "run", "--policy", "pol.toml", "--", "/bin/cat", str(home / ".ssh/id_ed25519"), home=home
    )
    assert (p.returncode, p.stdout) == (0, b"TOPSECRET-ssh\n"), p.stderr


# --- class 8: the shared temporary directories as a writable root


@pytest.mark.parametrize("args", [["--workdir", "/var/tmp"], ["--allow-write", "/var/tmp/"]])
def test_the_shared_var_tmp_is_not_a_writable_root_by_default(workspace: Path, args: list[str]) -> None:
    # /var/tmp holds every user's and service's temporary files (systemd's private /var/tmp of a service is
    # a root-owned 0700 directory there). A root caller's sandbox runs as their owner, root, and entered
    # such a directory and wrote in it. Refused like the system directories, naming the option.
    private = Path("/var/tmp") / f"corral-test-private-{uuid.uuid4().hex[:10]}"
    private.mkdir(mode=0o700)
    try:
        script = f'echo PLANTED > {private}/planted; echo ran > "{workspace}/ran"'
        p = corral(
            workspace, "run", *args, "--allow-write", str(workspace), "--", SH, "-c", script, home=workspace
        )
        assert p.returncode == 125, p.stderr
        assert b"--allow-system-write" in p.stderr
        assert not (private / "planted").exists()
        assert not (workspace / "ran").exists()
        # A directory of one's own below it is an ordinary workdir.
        own = private / "proj"
        own.mkdir()
        p = corral(own, "run", "--", SH, "-c", "echo ok > out", home=workspace)
        assert p.returncode == 0, p.stderr
        assert (own / "out").read_text() == "ok\n"
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.parametrize("args", [["--workdir", "/tmp"], ["--workdir", "/tmp/."], ["--allow-write", "/tmp"]])
def test_the_shared_tmp_as_a_writable_root_is_refused_not_silently_private(
    workspace: Path, args: list[str]
) -> None:
    # The sandbox's /tmp is its own tmpfs: `--workdir /tmp` ran the command in an empty private directory,
    # its writes lost, none of the caller's files there in sight, and said nothing. Refused, saying why.
    p = corral(workspace, "run", *args, "--", SH, "-c", f'echo ran > "{workspace}/ran"', home=workspace)
    assert p.returncode == 125, p.stderr
    assert b"private" in p.stderr
    assert not (workspace / "ran").exists()


# --- class 8: a relative --deny/--allow-write when --workdir is not the current directory


def test_a_relative_cli_path_with_another_workdir_is_refused(workspace: Path) -> None:
    # `cd proj && corral run --workdir build --deny .env`: the policy resolved `.env` against the workdir
    # (build/.env, absent) and proj/.env, the file meant, stayed readable. Refused now, naming both.
    (workspace / "build").mkdir()
    (workspace / ".env").write_text("TOPSECRET-env\n")
    p = corral(
        workspace, "run", "--workdir", "build", "--deny", ".env", "--", "/bin/cat", "../.env", home=workspace
    )
    assert p.returncode == 125, p.stdout
    assert b"TOPSECRET" not in p.stdout
    assert b"--deny" in p.stderr
    assert b"absolute" in p.stderr
    # Unambiguous forms still work: an absolute path, and a relative one when the workdir is the cwd.
    p = corral(
        workspace,
        "run",
        "--workdir",
        "build",
        "--deny",
        str(workspace / ".env"),
        "--",
        "/bin/cat",
        "../.env",
        home=workspace,
    )
    assert p.returncode == 1
    assert b"TOPSECRET" not in p.stdout
    p = corral(workspace, "run", "--deny", ".env", "--", "/bin/cat", ".env", home=workspace)
    assert p.returncode == 1
    assert b"TOPSECRET" not in p.stdout
    p = corral(
        workspace,
        "run",
        "--workdir",
        ".",
        "--allow-write",
        "build",
        "--",
        SH,
        "-c",
        "echo x > build/f",
        home=workspace,
    )
    assert p.returncode == 0, p.stderr


# --- class 4: files the caller hands the command as its stdio


def run_with_stdio(
    cwd: Path, stdin: IO[bytes] | int | None, stdout: IO[bytes] | int, *command: str
) -> subprocess.CompletedProcess[bytes]:
    """`corral run -- COMMAND` in `cwd` (HOME there too) with the given stdin and stdout, stderr captured;
    bounded (raises subprocess.TimeoutExpired)."""
    return subprocess.run(
        [*CORRAL, "run", "--", *command],
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=60,
        env={**os.environ, "HOME": str(cwd)},
        check=False,
    )


def test_the_cli_keeps_the_mode_and_attributes_of_its_stdio_files(workspace: Path, outside: Path) -> None:
    # `corral run -- cmd < secret.pem >> log.txt`: the command fchmods both (it owns them) and tags the
    # secret with a user attribute. Under a root caller each is refused (the files are reopened through
    # mounts the command does not own: supervisor/_stdio_files.py); once corral exits, both are as the
    # caller left them either way (tests/kernel/test_attack_stdio.py has every route and an ordinary caller).
    secret = outside / "secret.pem"
    secret.write_text("TOPSECRET\n")
    os.chmod(secret, 0o600)
    log = outside / "log.txt"
    log.write_text("")
    os.chmod(log, 0o640)
    script = (
        "import os\n"
        "def t(f, *a):\n"
        "    try:\n"
        "        f(*a); return 0\n"
        "    except OSError as e:\n"
        "        return e.errno\n"
        "print(t(os.fchmod, 0, 0o644), t(os.fchmod, 1, 0o666), t(os.setxattr, 0, 'user.planted', b'1'),"
        " os.read(0, 100))"
    )
    with secret.open("rb") as stdin, log.open("ab") as stdout:
        p = run_with_stdio(workspace, stdin, stdout, "/usr/bin/python3", "-I", "-S", "-c", script)
    assert p.returncode == 0, p.stderr
    said = log.read_text().split()
    assert said[3] == "b'TOPSECRET\\n'", said  # it read what it was given
    if os.geteuid() == 0:
        assert said[:3] == [str(errno.EROFS), str(errno.EPERM), str(errno.EROFS)], said
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o640
    assert os.listxattr(secret) == []


def test_the_cli_puts_back_the_mode_of_its_terminal(workspace: Path) -> None:
    # The caller's terminal as stdin: the command (its owner, under a root caller root's pty) makes it
    # writable by every local user; once corral exits, the mode is as it was (a test-owned pty).
    master, slave = pty.openpty()
    try:
        before = stat.S_IMODE(os.fstat(slave).st_mode)
        p = subprocess.run(
            [*CORRAL, "run", "--", "/usr/bin/python3", "-I", "-S", "-c", "import os; os.fchmod(0, 0o666)"],
            cwd=workspace,
            stdin=slave,
            capture_output=True,
            timeout=60,
            check=False,
        )
        after = stat.S_IMODE(os.fstat(slave).st_mode)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 0, p.stderr
    assert before != 0o666
    assert after == before, oct(after)


def test_the_cli_never_puts_a_set_id_bit_back_on_a_stdio_file(workspace: Path, outside: Path) -> None:
    # A set-id file given as stdout loses its bits when the command writes to it (the kernel's doing):
    # putting the saved mode back would make the command's content set-id.
    target = outside / "tool"
    target.write_text("#!/bin/sh\n")
    os.chmod(target, 0o4755)
    with target.open("ab") as stdout:
        p = run_with_stdio(workspace, None, stdout, SH, "-c", "echo 'echo planted'")
    assert p.returncode == 0, p.stderr
    assert target.read_text().endswith("echo planted\n")
    assert not os.stat(target).st_mode & (stat.S_ISUID | stat.S_ISGID), oct(os.stat(target).st_mode)


#: The command's attempt on /dev/null as its stdio: a chmod to the mode it already has (so that the test
#: cannot break the host's /dev/null even where the fix is missing), which still moves its ctime.
CHMOD_DEVNULL = (
    "import os, sys\n"
    "for fd in (0, 1, 2):\n"
    "    try:\n"
    "        os.fchmod(fd, os.fstat(fd).st_mode & 0o7777); print(fd, 'chmod', 0, file=sys.stderr)\n"
    "    except OSError as e:\n"
    "        print(fd, 'chmod', e.errno, file=sys.stderr)\n"
)


async def test_a_root_callers_sandbox_cannot_chmod_the_hosts_dev_null(
    sup: Supervisor, workspace: Path
) -> None:
    # DEVNULL stdio is the supervisor's open /dev/null, of the host's writable devtmpfs: a sandbox that is
    # host uid 0 (root caller, root-owned workdir) owns it and could fchmod(0, 0), taking /dev/null away
    # from every non-root program of the host.
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    before = os.stat("/dev/null")
    r = await sup.run(
        ["/usr/bin/python3", "-I", "-S", "-c", CHMOD_DEVNULL + "print('ran')"],
        policy=profiles.workspace_write(workspace, timeout=20),
        stdin=DEVNULL,
        stdout=DEVNULL,
        stderr=PIPE,
    )
    assert r.exit_code == 0, r.stderr
    assert r.stderr.decode().split("\n")[:2] == [f"{fd} chmod {errno.EROFS}" for fd in (0, 1)], r.stderr
    after = os.stat("/dev/null")
    assert after.st_ctime_ns == before.st_ctime_ns
    assert after.st_mode == before.st_mode


def test_the_cli_given_dev_null_as_stdio_does_not_let_the_command_chmod_it(workspace: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    before = os.stat("/dev/null")
    with open(os.devnull, "r+b") as null:
        p = run_with_stdio(workspace, null, null, "/usr/bin/python3", "-I", "-S", "-c", CHMOD_DEVNULL)
    assert p.returncode == 0, p.stderr
    said = [line for line in p.stderr.decode().splitlines() if " chmod " in line]
    assert said[:2] == [f"{fd} chmod {errno.EROFS}" for fd in (0, 1)], p.stderr
    assert os.stat("/dev/null").st_ctime_ns == before.st_ctime_ns


async def test_a_stdio_file_outside_the_roots_keeps_its_mode(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    # Was a strict xfail (session 10): the command, the file's owner, fchmod'ed and futimens'ed it through
    # fd 0. A root caller's file is now reopened through a read-only clone of its mount (EROFS); an ordinary
    # caller's is put back when the command ends (tests/kernel/test_attack_stdio.py: every route).
    secret = outside / "secret.pem"
    secret.write_text("TOPSECRET\n")
    os.chmod(secret, 0o600)
    before = os.stat(secret)
    fd = os.open(secret, os.O_RDONLY | os.O_CLOEXEC)
    try:
        script = (
            "import os\n"
            "for f, a in ((os.fchmod, (0, 0o644)), (os.utime, (0, (0, 0)))):\n"
            "    try:\n"
            "        f(*a)\n"
            "    except OSError as e:\n"
            "        print('refused', e.errno)\n"
            "print(os.read(0, 100))\n"
        )
        r = await sup.run(
            ["/usr/bin/python3", "-I", "-S", "-c", script],
            policy=profiles.workspace_write(workspace),
            stdin=fd,
        )
    finally:
        os.close(fd)
    assert r.exit_code == 0, r.stderr
    assert b"TOPSECRET" in r.stdout  # reading it is what the caller asked for
    if os.geteuid() == 0:
        assert r.stdout.count(f"refused {errno.EROFS}".encode()) == 2, r.stdout
    after = os.stat(secret)
    assert stat.S_IMODE(after.st_mode) == 0o600, oct(
        after.st_mode
    )  # the secret did not become world-readable
    if os.geteuid() == 0:
        assert after.st_mtime_ns == before.st_mtime_ns


# --- class 6: what a sandbox plants at a denied name must not stop another tenant's timeout

#: Plants at ~/.netrc (absent, denied by the default profile) with the home directory as the workdir:
#: the fork server looks each up (lstat, realpath, resolve_trusted) when it builds the next view.
DENIED_NAME_PLANTS = {
    "fifo": "mkfifo .netrc",
    "socket": "python3 -I -S -c 'import socket; socket.socket(socket.AF_UNIX).bind(\".netrc\")'",
    "symlink_loop": "ln -s .pgpass .netrc && ln -s .netrc .pgpass",
    "chain_of_40": "i=0; while [ $i -lt 40 ]; do ln -s l$((i+1)) l$i; i=$((i+1)); done; ln -s l0 .netrc",
    "link_to_a_fifo": "mkfifo f && ln -s f .netrc",
    "link_to_proc_fd": "ln -s /proc/self/fd/0 .netrc",
    "deep_dir_link": "mkdir -p d/" + "/".join(["a"] * 60) + " && ln -s d .aws",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(DENIED_NAME_PLANTS))
async def test_plants_at_a_denied_name_do_not_stop_another_tenants_timeout(
    sup: Supervisor, workspace: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setenv("HOME", str(workspace))
    attacker = profiles.workspace_write(workspace, timeout=20)
    for _ in range(2):  # from then on the supervisor pre-forks sandboxes for the attacker's key
        r = await sup.run(["/bin/true"], policy=attacker)
        assert r.exit_code == 0
    victim = await sup.start(["/bin/sleep", "30"], policy=profiles.workspace_write(outside, timeout=3))
    started = time.monotonic()
    outcomes: list[str] = []

    async def attack() -> None:
        r = await sup.run([SH, "-c", DENIED_NAME_PLANTS[kind]], policy=attacker)
        assert r.exit_code == 0, r.stderr
        for _ in range(4):
            try:
                r = await sup.run(["/bin/true"], policy=attacker)
                outcomes.append(f"exit {r.exit_code}")
            except SandboxSetupError as err:
                outcomes.append(str(err))

    async with anyio.create_task_group() as tg:
        tg.start_soon(attack)
        result = await victim.wait()
        ended = time.monotonic()
    assert result.violation is not None
    assert result.violation.kind == "wall_time"
    assert 2.8 < ended - started < 3.5, f"the tenant's 3 s timeout fired after {ended - started:.2f} s"
    assert len(outcomes) == 4, outcomes
    for outcome in outcomes:  # each later run either ran or was refused naming the planted name
        assert (
            outcome == "exit 0" or str(workspace / ".netrc") in outcome or str(workspace / ".aws") in outcome
        )


# --- class 5: credential stores the default hiding did not know


#: Home-relative stores added this session (each made in a stand-in home, then read from inside).
MORE_HOME_STORES = (
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".vault-token",
    ".my.cnf",
    ".s3cfg",
    ".config/hub",
    ".config/rclone/rclone.conf",
    ".terraform.d/credentials.tfrc.json",
    ".local/share/keyrings/login.keyring",
    ".password-store/bank.gpg",
)


async def test_more_credential_stores_are_hidden_with_home_as_workdir(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(workspace))
    for i, rel in enumerate(MORE_HOME_STORES):
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(f"TOPSECRET-{i}\n")
    (workspace / "visible.txt").write_text("control-visible\n")
    r = await sup.run([SH, "-c", DUMP], policy=profiles.workspace_write(workspace, timeout=20))
    assert r.exit_code == 0, r.stderr
    assert b"control-visible" in r.stdout  # the dump does read the workdir
    assert b"TOPSECRET" not in r.stdout + r.stderr, r.stdout


#: Root-only system files added this session (those this host has are read from inside).
MORE_SYSTEM_SECRETS = (
    "/etc/security/opasswd",
    "/var/backups/shadow.bak",
    "/var/backups/gshadow.bak",
    "/etc/krb5.keytab",
)


def _present(paths: tuple[str, ...]) -> list[str]:
    return [p for p in paths if os.path.isfile(p)]


async def test_root_only_system_secrets_are_hidden_from_a_root_owned_workdirs_sandbox(
    sup: Supervisor, workspace: Path
) -> None:
    # In a root-owned workdir a root caller's sandbox is host uid 0 without capabilities: root's own 0600
    # files are its own. Those that exist on this host must be hidden by the default profiles.
    if os.geteuid() != 0:
        pytest.skip("the identity of a ROOT caller's sandbox (this run is not root)")
    present = _present(MORE_SYSTEM_SECRETS)
    assert present, f"this host has none of {MORE_SYSTEM_SECRETS}"
    r = await sup.run(
        ["/bin/sh", "-c", 'for f in "$@"; do cat "$f" && echo "READ $f"; done; echo done', "sh", *present],
        policy=profiles.workspace_write(workspace, timeout=20),
    )
    assert b"done" in r.stdout
    assert b"READ" not in r.stdout, r.stdout


# --- the same attacks by an ordinary (non-root) caller

UNPRIV_SCRIPT = r"""
import json, os, sys
ws = sys.argv[1]
os.environ["HOME"] = ws  # the home directory as the workdir: the default profile hides its stores
import anyio
from policies import load_policy, profiles
from supervisor import SandboxSetupError, Supervisor
async def main():
    out = {}
    async with Supervisor(max_concurrency=2) as sup:
        pol = profiles.workspace_write(ws, timeout=30)
        r = await sup.run(["/bin/sh", "-c", "ln -s " + sys.argv[2] + " .netrc"], policy=pol)
        out["plant"] = r.exit_code
        try:
            r = await sup.run(["/bin/sh", "-c", "echo ran"], policy=pol)
            out["next"] = [r.exit_code, r.stdout.decode(), r.stderr.decode()]
        except SandboxSetupError as err:
            out["next"] = ["refused", err.path, str(err)]
        os.unlink(os.path.join(ws, ".netrc"))
        with open(os.path.join(ws, "pol.toml"), "w") as f:
            f.write('[filesystem]\nwrite = ["out"]\n')
        pol = load_policy(os.path.join(ws, "pol.toml"), workdir=ws)
        r = await sup.run(["/bin/sh", "-c", "cat .ssh/id_ed25519; echo done"], policy=pol)
        out["cat"] = [r.exit_code, r.stdout.decode()]
    print(json.dumps(out))
anyio.run(main)
"""


def test_unprivileged_caller_denied_name_link_and_profileless_file() -> None:
    with ordinary_caller_scratch("variants-unpriv") as (scratch, python, pythonpath):
        ws = scratch / "ws"
        (ws / ".ssh").mkdir(parents=True)
        (ws / "out").mkdir()
        (ws / ".ssh" / "id_ed25519").write_text("TOPSECRET-ssh\n")
        for d, _dirs, files in os.walk(ws):
            os.chown(d, EXPECTED_UID, EXPECTED_UID)
            for f in files:
                os.chown(os.path.join(d, f), EXPECTED_UID, EXPECTED_UID)
        script = scratch / "run.py"
        script.write_text(UNPRIV_SCRIPT)
        os.chmod(script, 0o644)
        r = run_as_user([python, str(script), str(ws), _libc()], pythonpath, scratch, timeout=90)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report["plant"] == 0, report
        assert report["next"][:2] == ["refused", str(ws / ".netrc")], report
        assert report["cat"][0] == 0, report
        assert "done" in report["cat"][1]
        assert "TOPSECRET" not in report["cat"][1], report
