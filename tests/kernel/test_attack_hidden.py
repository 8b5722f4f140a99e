"""What a policy hides stays hidden across runs, whatever a sandbox renamed, moved, replaced or linked.

Denied paths (`deny`, and the default profiles' credential stores) are hidden by mounts over their names. A
sandbox that may write a parent of a denied path would otherwise rename the parent (`mv .config .cfg`), move
or rename the secret itself, or put something else at its name, so that the next run finds the name empty,
hides nothing, and reads the secret under its new name. Each test lets a first sandbox try that, then dumps
every file a second sandbox (same policy) can read: the secret's content must never appear, and, checked
from outside, the secret is still where the user keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import Policy, PolicyError, profiles
from supervisor import SandboxSetupError, Supervisor
from tests.kernel.unprivileged_harness import EXPECTED_UID, ordinary_caller_scratch, run_as_user

pytestmark = pytest.mark.kernel

SH = "/bin/sh"

#: The second run: the content of every regular file reachable below the workdir (no link followed).
DUMP = "find . -type f -exec cat {} + 2>/dev/null; true"


async def run(sup: Supervisor, pol: Policy, script: str) -> tuple[int, bytes]:
    r = await sup.run([SH, "-c", script], policy=pol)
    return r.exit_code, r.stdout + r.stderr


async def attack_then_dump(sup: Supervisor, pol: Policy, script: str, secret: str) -> bytes:
    """Run `script` (the attack; its failures are the point, so it always exits 0), then the dump, both
    under `pol`; the secret must appear in neither. Returns the attack's output."""
    code, first = await run(sup, pol, script + "; true")
    assert code == 0, first
    assert secret.encode() not in first
    code, second = await run(sup, pol, DUMP)
    assert code == 0
    assert b"control-visible" in second  # the dump does read the workspace
    assert secret.encode() not in second
    return first


@pytest.fixture
def secret(workspace: Path) -> str:
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    (workspace / "sub").mkdir()
    (workspace / "sub" / ".env").write_text(marker)
    (workspace / "other").mkdir()
    (workspace / "visible.txt").write_text("control-visible\n")
    return marker


def env_policy(workspace: Path) -> Policy:
    return profiles.workspace_write(workspace, deny=[workspace / "sub" / ".env"], timeout=20)


async def test_renaming_the_parent_of_a_denied_file(sup: Supervisor, workspace: Path, secret: str) -> None:
    out = await attack_then_dump(sup, env_policy(workspace), "mv sub sub2; cat sub2/.env", secret)
    assert b"busy" in out.lower()  # the parent is a mount point: rename gives EBUSY
    assert (workspace / "sub" / ".env").read_text() == secret


async def test_renaming_or_moving_the_denied_file(sup: Supervisor, workspace: Path, secret: str) -> None:
    pol = env_policy(workspace)
    await attack_then_dump(sup, pol, "mv sub/.env sub/env2; mv sub/.env other/.env; mv sub/.env .", secret)
    assert (workspace / "sub" / ".env").read_text() == secret


async def test_replacing_the_denied_file_with_a_symlink(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    pol = env_policy(workspace)
    script = "mv sub/.env sub/x && ln -s x sub/.env; rm -f sub/.env; ln -s ../visible.txt sub/.env"
    await attack_then_dump(sup, pol, script, secret)
    assert (workspace / "sub" / ".env").read_text() == secret


async def test_hardlinking_the_denied_file(sup: Supervisor, workspace: Path, secret: str) -> None:
    await attack_then_dump(sup, env_policy(workspace), "ln sub/.env copy; ln sub/.env other/copy", secret)
    assert (workspace / "sub" / ".env").stat().st_nlink == 1


async def test_a_denied_directory_cannot_be_moved_or_emptied(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    (workspace / "deep" / "keys").mkdir(parents=True)
    (workspace / "deep" / "keys" / "id.pem").write_text(secret)
    (workspace / "sub" / ".env").write_text("not denied here\n")
    pol = profiles.workspace_write(workspace, deny=[workspace / "deep" / "keys"], timeout=20)
    script = (
        "mv deep d2; mv deep/keys k2; mv deep/keys other/; mv deep/keys/id.pem .; ln deep/keys/id.pem l;"
        " rmdir deep/keys; mv other deep/keys"
    )
    await attack_then_dump(sup, pol, script, secret)
    assert (workspace / "deep" / "keys" / "id.pem").read_text() == secret


async def test_default_credential_hiding_with_home_as_workdir(
    sup: Supervisor, workspace: Path, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workspace stands in for the caller's home: the default profile hides its credential stores.
    monkeypatch.setenv("HOME", str(workspace))
    (workspace / ".config" / "gcloud").mkdir(parents=True)
    (workspace / ".config" / "gcloud" / "credentials.db").write_text(secret)
    (workspace / ".config" / "other.conf").write_text("control-visible\n")
    (workspace / ".ssh").mkdir()
    (workspace / ".ssh" / "id_ed25519").write_text(secret)
    (workspace / "sub" / ".env").write_text("not denied here\n")
    pol = profiles.workspace_write(workspace, timeout=20)
    assert str(workspace / ".config" / "gcloud") in pol.filesystem.deny
    script = "mv .config .cfg; mv .ssh .s; mv .config/gcloud gc; mkdir -p x && mv .config x/"
    out = await attack_then_dump(sup, pol, script + "; echo written > .config/new.conf", secret)
    assert b"busy" in out.lower()
    # The pinned directory stays as writable as it was: only its name is fixed.
    assert (workspace / ".config" / "new.conf").read_text() == "written\n"
    # The user's real ~/.config is where it was (the attack used to move it away).
    assert (workspace / ".config" / "gcloud" / "credentials.db").read_text() == secret
    assert (workspace / ".ssh" / "id_ed25519").read_text() == secret


async def test_a_denied_path_reached_through_a_symlink_hides_its_target(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # A dotfile manager's ~/.config -> dotfiles/config: the secret is hidden as the object the name leads
    # to (the sandbox's init follows no link itself; the fork server resolved this one to hide its target).
    (workspace / "dotfiles" / "config" / "gcloud").mkdir(parents=True)
    (workspace / "dotfiles" / "config" / "gcloud" / "creds").write_text(secret)
    (workspace / "config").symlink_to("dotfiles/config")
    (workspace / "sub" / ".env").write_text("not denied here\n")
    pol = profiles.workspace_write(workspace, deny=[workspace / "config" / "gcloud"], timeout=20)
    await attack_then_dump(
        sup, pol, "mv dotfiles/config/gcloud g; mv dotfiles d2; cat config/gcloud/creds", secret
    )
    assert (workspace / "dotfiles" / "config" / "gcloud" / "creds").read_text() == secret


async def test_a_link_on_the_way_to_a_denied_path_cannot_be_retargeted(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # The denied name passes through a link in the writable root (a dotfile manager's ~/.config ->
    # dotfiles/config): its target is hidden, not the link. A sandbox that retargeted or removed the link
    # made the next run hide nothing (the name now led elsewhere) and read the target under its real name.
    # The link is pinned as a mount point of its own, as the directories on the way are.
    (workspace / "dotfiles" / "config" / "gcloud").mkdir(parents=True)
    (workspace / "dotfiles" / "config" / "gcloud" / "creds").write_text(secret)
    (workspace / "config").symlink_to("dotfiles/config")
    (workspace / "sub" / ".env").write_text("not denied here\n")
    pol = profiles.workspace_write(workspace, deny=[workspace / "config" / "gcloud"], timeout=20)
    script = "rm config; ln -sfn other config; mv config c2; mv -T other config"
    out = await attack_then_dump(sup, pol, script, secret)
    assert b"busy" in out.lower()
    assert os.readlink(workspace / "config") == "dotfiles/config"  # the user's link is as it was
    assert (workspace / "dotfiles" / "config" / "gcloud" / "creds").read_text() == secret


async def test_a_denied_name_that_is_a_link_cannot_be_removed_or_moved(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # ~/.ssh -> ../dotfiles/ssh, one directory down (`home/` stands for the home directory): removing the
    # link, or moving the directory that holds it, left `dotfiles/ssh` unhidden for the next run.
    (workspace / "dotfiles" / "ssh").mkdir(parents=True)
    (workspace / "dotfiles" / "ssh" / "id_ed25519").write_text(secret)
    (workspace / "home").mkdir()
    (workspace / "home" / ".ssh").symlink_to("../dotfiles/ssh")
    (workspace / "sub" / ".env").write_text("not denied here\n")
    pol = profiles.workspace_write(workspace, deny=[workspace / "home" / ".ssh"], timeout=20)
    script = "rm home/.ssh; mv home/.ssh home/s; mv home h2; ln -sfn ../other home/.ssh; cat home/.ssh/id*"
    out = await attack_then_dump(sup, pol, script, secret)
    assert b"busy" in out.lower()
    assert os.readlink(workspace / "home" / ".ssh") == "../dotfiles/ssh"
    assert (workspace / "dotfiles" / "ssh" / "id_ed25519").read_text() == secret


@contextlib.contextmanager
def host_bind(source: Path, target: Path) -> Iterator[None]:
    """`source` bind-mounted at `target` in the host's mount namespace (the test's), for the block."""
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=10)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True, timeout=10)


async def test_a_denied_path_reached_through_a_host_bind_mount(
    sup: Supervisor, workspace: Path, outside: Path, secret: str
) -> None:
    # The host gives the denied object other names with bind mounts (a directory above it bound elsewhere,
    # as `mount --bind ~/data /srv/data`, systemd's BindPaths= or a container's volumes do; a directory
    # inside a denied one bound elsewhere; a directory bound INTO a denied one, whose source shows what the
    # denied name holds, as a link's target does): a mount over one name hid one name, and the secret was
    # read under the other.
    (workspace / "keys").mkdir()
    (workspace / "keys" / "id.pem").write_text(secret)
    (workspace / "keys" / "vol").mkdir()
    (outside / "volume").mkdir()
    (outside / "volume" / "token").write_text(secret)
    deny = [workspace / "sub" / ".env", workspace / "keys"]
    pol = profiles.workspace_write(workspace, deny=deny, timeout=20)
    script = f"cat {outside}/above/.env {outside}/inside/id.pem; find {outside} -type f -exec cat {{}} +; :"
    with (
        host_bind(workspace / "sub", outside / "above"),
        host_bind(workspace / "keys", outside / "inside"),
        host_bind(outside / "volume", workspace / "keys" / "vol"),
    ):
        for _ in range(2):  # built on the spot, then from the cached view
            code, out = await run(sup, pol, script)
            assert code == 0
            assert b"host canary" in out  # the dump does read there
            assert secret.encode() not in out
        # The bind mounts are still there, and the secret under both of their names, seen from outside.
        assert (outside / "above" / ".env").read_text() == secret
        assert (outside / "inside" / "id.pem").read_text() == secret


async def test_a_bind_mount_the_host_makes_after_a_view_was_built(
    sup: Supervisor, workspace: Path, outside: Path, secret: str
) -> None:
    # The view (and its plan, cached by the fork server, or a sandbox built ahead) was made before the host's
    # bind mount: the next run must not reuse a plan that hides the object under its old names only.
    pol = env_policy(workspace)
    script = f"cat {outside}/above/.env 2>&1; find {outside} -type f -exec cat {{}} +; true"
    for _ in range(2):
        code, out = await run(sup, pol, script)
        assert code == 0
        assert b"host canary" in out
    with host_bind(workspace / "sub", outside / "above"):
        for _ in range(2):
            code, out = await run(sup, pol, script)
            assert code == 0
            assert b"host canary" in out
            assert secret.encode() not in out


async def test_the_accounts_real_home_is_hidden_when_home_names_another_directory(
    sup: Supervisor, workspace: Path, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent runner or CI job sets HOME to a directory of its own before calling corral: the default hiding
    # covered $HOME (and root's), not the account's real home in the password database, whose ~/.ssh and
    # ~/.aws stayed readable. (The password database is made to name `real` as this account's home.)
    real = workspace / "real"
    (real / ".ssh").mkdir(parents=True)
    (real / ".ssh" / "id_ed25519").write_text(secret)
    (real / ".aws").mkdir()
    (real / ".aws" / "credentials").write_text(secret)
    (real / "notes.txt").write_text("control-visible\n")
    account = pwd.getpwuid(os.geteuid())
    fields = list(account)
    fields[5] = str(real)
    fake = pwd.struct_passwd(fields)
    original = pwd.getpwuid
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: fake if uid == os.geteuid() else original(uid))
    monkeypatch.setenv("HOME", str(workspace / "tool-home"))
    (workspace / "tool-home").mkdir()
    pol = profiles.workspace_write(workspace / "tool-home", timeout=20)
    _code, out = await run(sup, pol, f"cat {real}/.ssh/id_ed25519 {real}/.aws/credentials {real}/notes.txt")
    assert b"control-visible" in out
    assert secret.encode() not in out, out


@pytest.mark.parametrize("pattern", ["keys/*.pem", "keys/*", "keys/id.[p]em", "keys/id.pe?"])
async def test_a_wildcard_in_a_denied_path_does_not_silently_hide_nothing(
    sup: Supervisor, workspace: Path, secret: str, pattern: str
) -> None:
    # `--deny 'keys/*.pem'` (or a policy file's `deny = ["~/.aws/*"]`) named a file called `*.pem`: nothing
    # was hidden, nothing was said, and the key was read. Refused now, naming the entry.
    (workspace / "keys").mkdir()
    (workspace / "keys" / "id.pem").write_text(secret)
    refused: PolicyError | None = None
    try:
        pol = profiles.workspace_write(workspace, deny=[workspace / pattern], timeout=20)
    except PolicyError as err:
        refused = err
    if refused is None:
        _code, out = await run(sup, pol, "cat keys/id.pem")
        assert secret.encode() not in out
    else:
        assert refused.path == "deny[0]"
        assert "not expanded" in str(refused)


async def test_a_wildcard_character_in_an_existing_name_is_that_name(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # The control: a file whose name holds a wildcard character is denied as named.
    (workspace / "odd[1]*").write_text(secret)
    pol = profiles.workspace_write(workspace, deny=[workspace / "odd[1]*"], timeout=20)
    _code, out = await run(sup, pol, "cat 'odd[1]*'; cat visible.txt")
    assert b"control-visible" in out
    assert secret.encode() not in out


async def test_a_link_planted_at_a_denied_name_cannot_hide_what_sandboxes_need(
    sup: Supervisor, workspace: Path, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With HOME as the workdir, ~/.netrc (absent) is a denied name any sandbox may create: a link there to
    # /usr would make every later sandbox hide /usr (each exec failing, no reason given). Refused instead,
    # naming the link to remove.
    monkeypatch.setenv("HOME", str(workspace))
    pol = profiles.workspace_write(workspace, timeout=20)
    assert str(workspace / ".netrc") in pol.filesystem.deny
    code, out = await run(sup, pol, "ln -s /usr .netrc && ln -s .. .pgpass")
    assert code == 0, out
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, pol, "echo should not run")
    assert info.value.path in (str(workspace / ".netrc"), str(workspace / ".pgpass"))
    assert "remove it" in str(info.value)
    (workspace / ".netrc").unlink()
    (workspace / ".pgpass").unlink()
    code, out = await run(sup, pol, "echo runs again")  # the fix the message names works
    assert out == b"runs again\n"


def assert_refused_for_links(info: pytest.ExceptionInfo[SandboxSetupError], path: Path, links: int) -> None:
    assert info.value.path == str(path)
    assert info.value.errno == errno.EMLINK
    assert f"has {links} hard links" in str(info.value)
    assert "-samefile" in str(info.value)  # how to find the other names


async def test_a_hard_link_made_outside_reaches_the_denied_file(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # The host (a backup, `cp -al`, a dotfile manager) gave the denied file a second name that the policy
    # does not hide: a mount over one name cannot hide the file, so the run is refused, naming it.
    os.link(workspace / "sub" / ".env", workspace / "other" / "env-link")
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, env_policy(workspace), DUMP + "; touch ran")
    assert_refused_for_links(info, workspace / "sub" / ".env", 2)
    assert not (workspace / "ran").exists()
    # Hiding every name is the documented way out: then it runs, and neither name shows the secret.
    pol = profiles.workspace_write(
        workspace, deny=[workspace / "sub" / ".env", workspace / "other" / "env-link"], timeout=20
    )
    code, out = await run(sup, pol, DUMP)
    assert code == 0
    assert b"control-visible" in out
    assert secret.encode() not in out


async def test_a_hard_link_outside_every_writable_root_reaches_the_denied_file(
    sup: Supervisor, workspace: Path, outside: Path, secret: str
) -> None:
    # The other name lies in a directory the sandbox may only read.
    os.link(workspace / "sub" / ".env", outside / "backup.env")
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, env_policy(workspace), f"cat {outside}/backup.env")
    assert_refused_for_links(info, workspace / "sub" / ".env", 2)


async def test_a_hard_link_made_between_runs_refuses_a_view_built_before(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    # A denied file outside the writable roots, hidden once (the view is built, cached and, in the
    # pre-forked pass, built ahead for the next run); then the host links it elsewhere. The view built
    # before must not serve the next run: the file's identity now says "several links".
    marker = f"TOPSECRET-{uuid.uuid4().hex}"
    (outside / "token").write_text(marker)
    (workspace / "visible.txt").write_text("control-visible\n")
    pol = profiles.workspace_write(workspace, deny=[outside / "token"], timeout=20)
    script = f"cat {outside}/token {outside}/copy 2>&1; true"
    for _ in range(2):
        code, out = await run(sup, pol, script)
        assert code == 0
        assert marker.encode() not in out
    os.link(outside / "token", outside / "copy")
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, pol, script)
    assert_refused_for_links(info, outside / "token", 2)
    (outside / "copy").unlink()  # the fix the message names: the next run hides the file again
    code, out = await run(sup, pol, script)
    assert code == 0
    assert marker.encode() not in out


async def test_a_policy_that_does_not_hide_a_file_cannot_link_it_for_another(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    # A sandbox whose policy does not hide sub/.env (and so may read it anyway) links it to a name that a
    # later policy hiding sub/.env would not hide: that later policy refuses to run instead of showing it.
    code, out = await run(sup, profiles.workspace_write(workspace, timeout=20), "ln sub/.env other/x")
    assert code == 0, out
    with pytest.raises(SandboxSetupError) as info:
        await run(sup, env_policy(workspace), DUMP)
    assert_refused_for_links(info, workspace / "sub" / ".env", 2)


async def test_a_denied_file_with_one_link_still_runs(sup: Supervisor, workspace: Path, secret: str) -> None:
    # The control: the same file, one name, hidden as before (the refusal counts links, nothing else).
    os.link(workspace / "sub" / ".env", workspace / "other" / "env-link")
    os.unlink(workspace / "other" / "env-link")
    code, out = await run(sup, env_policy(workspace), DUMP)
    assert code == 0
    assert b"control-visible" in out
    assert secret.encode() not in out


# Known gaps (docs/security.md): strict xfails, so a fix shows up as a test to un-mark.


@pytest.mark.xfail(
    strict=True,
    reason="GAP: hiding is per policy: a sandbox whose policy does not hide the path (and so could read it "
    "anyway) can move it, and a later policy that hides the old name then hides nothing",
)
async def test_a_policy_that_does_not_hide_a_path_can_move_it_for_another(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    await run(sup, profiles.workspace_write(workspace, timeout=20), "mv sub sub2")
    _code, out = await run(sup, env_policy(workspace), DUMP)
    assert secret.encode() not in out


@pytest.mark.xfail(
    strict=True,
    reason="GAP: the files inside a denied directory are not counted for hard links (no walk per view "
    "build): one with another name in a readable root is readable there",
)
async def test_a_hard_link_to_a_file_inside_a_denied_directory(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    (workspace / "keys").mkdir()
    (workspace / "keys" / "id.pem").write_text(secret)
    os.link(workspace / "keys" / "id.pem", workspace / "other" / "id-link")
    pol = profiles.workspace_write(workspace, deny=[workspace / "keys"], timeout=20)
    try:
        _code, out = await run(sup, pol, DUMP)
    except SandboxSetupError:
        return  # refused, as a denied file with other links is
    assert secret.encode() not in out


@pytest.mark.xfail(
    strict=True,
    reason="GAP: a denied file that the HOST replaces while a sandbox runs (an atomic rename over it, as "
    "editors, passwd and credential helpers write) is visible to that sandbox when its directory is inside a "
    "writable root: the kernel detaches every mount on a dentry that is renamed over or removed, in every "
    "mount namespace, and the overlay that keeps a read-only directory's hiding mounts "
    "(test_attack_hidden_host.py) has no upper layer to write through",
)
async def test_a_denied_file_replaced_on_the_host_during_a_run(
    sup: Supervisor, workspace: Path, secret: str
) -> None:
    (workspace / "sub" / ".env").write_text("old, hidden anyway\n")
    wait_for_go = "i=0; while [ ! -e go ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done"
    script = f"touch started; {wait_for_go}; cat sub/.env"
    async with anyio.create_task_group() as tg:
        result: list[bytes] = []

        async def child() -> None:
            result.append((await run(sup, env_policy(workspace), script))[1])

        tg.start_soon(child)
        with anyio.fail_after(15):
            while not (workspace / "started").exists():  # noqa: ASYNC110 - polling the host side
                await anyio.sleep(0.05)
        (workspace / "sub" / ".env.tmp").write_text(secret)
        os.rename(workspace / "sub" / ".env.tmp", workspace / "sub" / ".env")
        (workspace / "go").touch()
    assert secret.encode() not in result[0]


UNPRIV_LINK_SCRIPT = r"""
import json, os, sys
ws = sys.argv[1]
import anyio
from policies import profiles
from supervisor import Supervisor

async def main():
    out = {}
    pol = profiles.workspace_write(ws, deny=[os.path.join(ws, "home", ".ssh")], timeout=20)
    async with Supervisor() as sup:
        r = await sup.run(["/bin/sh", "-c", "rm home/.ssh; ln -sfn ../other home/.ssh; true"], policy=pol)
        out["attack"] = [r.exit_code, (r.stdout + r.stderr).decode()]
        r = await sup.run(["/bin/sh", "-c", "find . -type f -exec cat {} + 2>/dev/null; true"], policy=pol)
        out["dump"] = [r.exit_code, r.stdout.decode()]
    print(json.dumps(out))
anyio.run(main)
"""


def test_unprivileged_caller_a_link_on_the_way_to_a_denied_path() -> None:
    # The same pin for an ordinary caller's sandbox, whose init mounts in a user namespace of its own.
    with ordinary_caller_scratch("hidden-link-unpriv") as (scratch, python, pythonpath):
        ws = scratch / "ws"
        (ws / "dotfiles" / "ssh").mkdir(parents=True)
        (ws / "other").mkdir()
        (ws / "home").mkdir()
        (ws / "dotfiles" / "ssh" / "id_ed25519").write_text("TOPSECRET-ssh\n")
        (ws / "visible.txt").write_text("control-visible\n")
        (ws / "home" / ".ssh").symlink_to("../dotfiles/ssh")
        for d, dirs, files in os.walk(ws):
            os.chown(d, EXPECTED_UID, EXPECTED_UID)
            for f in files + dirs:
                os.chown(os.path.join(d, f), EXPECTED_UID, EXPECTED_UID, follow_symlinks=False)
        script = scratch / "run.py"
        script.write_text(UNPRIV_LINK_SCRIPT)
        os.chmod(script, 0o644)
        r = run_as_user([python, str(script), str(ws)], pythonpath, scratch, timeout=90)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert "busy" in report["attack"][1].lower(), report
        assert "control-visible" in report["dump"][1], report
        assert "TOPSECRET" not in report["dump"][1], report
        assert os.readlink(ws / "home" / ".ssh") == "../dotfiles/ssh"
