"""Programs the user's git configuration runs from a writable root that the scan did not know to run code
(issue 11, item 3).

The scan moves aside a file in a root, written during the run, that a setting of the user's configuration
runs (`core.fsmonitor`, a filter, an alias...: `_gitglobal.runs_program`). Two settings were missing:

- `remote.<name>.uploadpack` (and `receivepack`): the command `git fetch`/`git pull` runs for a local or
  ssh remote. The user's `.git/config` ran `tools/upload-pack.sh` (a wrapper kept in the tree) and the
  sandbox rewrote it: the user's next `git pull` from a local path ran it;
- `init.templateDir` in the user's global config: git copies the template's `hooks/` (and `config`) into
  every repository `git init` or `git clone` makes. A template kept in a writable root got a
  `hooks/post-checkout` from the sandbox, which the user's next `git clone`, anywhere, ran at once.

A setting without a subsection was missing too: `imap.tunnel` (and git send-email's top-level
`sendemail.toCmd`, `ccCmd`, `headerCmd`, `sendmailCmd`, `smtpServer`; only their per-identity forms were
known). The user's `imap.tunnel = tools/imap-tunnel.sh`, rewritten by the sandbox, ran at their next
`git imap-send`.

Each attack plants from inside a real sandbox; the HOST runs git as the user would, and the test checks from
outside that the payload did not run and that the plant was reported moved aside.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import ENV, GIT, host_git, make_repo, payload, plant
from tests.kernel.test_attack_git_global import global_config, user_git

pytestmark = pytest.mark.kernel

__all__ = ["global_config"]  # the fixture, used by name


def assert_not_run(workspace: Path) -> None:
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize("command", ["pull", "fetch"])
async def test_the_upload_pack_command_the_users_config_runs(
    sup: Supervisor, workspace: Path, outside: Path, command: str
) -> None:
    upstream = outside / "upstream"
    make_repo(upstream)  # a loopback-only remote: a local path
    assert host_git(workspace, "clone", "-q", str(upstream), ".").returncode == 0
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "upload-pack.sh").write_text('#!/bin/sh\nexec git-upload-pack "$@"\n')
    (tools / "upload-pack.sh").chmod(0o755)
    assert host_git(workspace, "config", "remote.origin.uploadpack", "tools/upload-pack.sh").returncode == 0
    assert host_git(workspace, command, "-q").returncode == 0  # the user's setup works
    rewrite = (
        f"printf '#!/bin/sh\\n{payload(workspace)}\\nexec git-upload-pack \"$@\"\\n' > tools/upload-pack.sh"
    )
    r = await plant(sup, workspace, rewrite)
    assert [p for p, _ in r.quarantined] == [str(tools / "upload-pack.sh")], r.quarantined
    assert "remote.origin.uploadpack" in r.quarantined[0][1]
    host_git(workspace, command, "-q")
    assert_not_run(workspace)


async def test_the_template_directory_the_users_global_config_names(
    sup: Supervisor, workspace: Path, outside: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    path, env = global_config
    make_repo(workspace)
    (workspace / "templates" / "hooks").mkdir(parents=True)
    path.write_text(f"[init]\n\ttemplateDir = {workspace / 'templates'}\n")
    hook = workspace / "templates" / "hooks" / "post-checkout"
    plant_hook = f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > {hook} && chmod +x {hook}"
    plant_config = f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n' > templates/config"
    r = await plant(sup, workspace, plant_hook + " && " + plant_config)
    found = sorted(p for p, _ in r.quarantined)
    assert found == [str(workspace / "templates" / "config"), str(hook)], r.quarantined
    clone = outside / "clone"
    assert user_git(outside, env, "clone", "-q", str(workspace), str(clone)).returncode == 0
    user_git(clone, env, "status")
    assert_not_run(workspace)


# The user's `.git/config` includes a team config kept in the tree (`include.path = ../.gitconfig`, older
# than the run, harmless), which sets a hooks directory or a program run from the worktree: the mounts
# bind only a `core.hooksPath` of `.git/config` itself, and the scan looked for hooks directories and
# programs only in a git dir's own config, so `.githooks/pre-commit` or `tools/fsmon.sh`, written by the
# sandbox, ran at the user's next commit or `git status`.
@pytest.mark.parametrize(
    ("setting", "planted"),
    [("hooksPath = .githooks", ".githooks/pre-commit"), ("fsmonitor = tools/fsmon.sh", "tools/fsmon.sh")],
)
async def test_what_an_included_team_config_names(
    sup: Supervisor, workspace: Path, setting: str, planted: str
) -> None:
    make_repo(workspace)
    (workspace / ".gitconfig").write_text(f"[core]\n\t{setting}\n")
    (workspace / ".githooks").mkdir()
    (workspace / "tools").mkdir()
    (workspace / "tools" / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (workspace / "tools" / "fsmon.sh").chmod(0o755)
    assert host_git(workspace, "config", "include.path", "../.gitconfig").returncode == 0
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    write = f"printf '#!/bin/sh\\n{payload(workspace)}\\necho\\n' > {planted} && chmod +x {planted}"
    r = await plant(sup, workspace, write)
    assert [p for p, _ in r.quarantined] == [str(workspace / planted)], r.quarantined
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_an_ext_url_where_the_users_config_allows_the_ext_transport(
    sup: Supervisor, workspace: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """`remote.*.url` is on the allow-list (a URL runs nothing), but `ext::<command>` runs the command
    when the user's own configuration allows the ext transport (git's default refuses it): the sandbox's
    nested repository with such a remote ran it at the user's `git fetch`.
    Such a config is moved aside now."""
    path, env = global_config
    path.write_text('[protocol "ext"]\n\tallow = always\n')
    make_repo(workspace)
    command = f"sh -c {payload(workspace).replace(' ', '% ')}"
    r = await plant(
        sup,
        workspace,
        "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && "
        f"git -C sub config remote.origin.url 'ext::{command}'",
    )
    assert str(workspace / "sub" / ".git" / "config") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace / "sub", env, "fetch", "-q", "origin")
    assert_not_run(workspace)


@pytest.mark.parametrize(
    ("setting", "planted"),
    [("hooksPath = .githooks", ".githooks/pre-commit"), ("fsmonitor = tools/fsmon.sh", "tools/fsmon.sh")],
)
async def test_what_a_team_config_outside_the_workdir_names(
    sup: Supervisor, workspace: Path, outside: Path, setting: str, planted: str
) -> None:
    """The same with the team config kept OUTSIDE the workdir (`include.path = <outside>/team.gitconfig`,
    which the sandbox cannot write): what it names relative to the worktree is in the root."""
    make_repo(workspace)
    (outside / "team.gitconfig").write_text(f"[core]\n\t{setting}\n")
    (workspace / ".githooks").mkdir()
    (workspace / "tools").mkdir()
    (workspace / "tools" / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (workspace / "tools" / "fsmon.sh").chmod(0o755)
    assert host_git(workspace, "config", "include.path", str(outside / "team.gitconfig")).returncode == 0
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    write = f"printf '#!/bin/sh\\n{payload(workspace)}\\necho\\n' > {planted} && chmod +x {planted}"
    r = await plant(sup, workspace, write)
    assert [p for p, _ in r.quarantined] == [str(workspace / planted)], r.quarantined
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_an_ext_url_in_gitmodules_where_the_users_config_allows_the_ext_transport(
    sup: Supervisor, workspace: Path, global_config: tuple[Path, dict[str, str]]
) -> None:
    """The same URL given to a submodule in the top repository's `.gitmodules` (a worktree file the
    sandbox writes) with its gitlink in the index: the user's `git submodule update --init` cloned it,
    running the command. A `.gitmodules` written during the run with such a URL is moved aside."""
    path, env = global_config
    path.write_text('[protocol "ext"]\n\tallow = always\n')
    make_repo(workspace)
    head = host_git(workspace, "rev-parse", "HEAD").stdout.strip()
    command = f"sh -c {payload(workspace).replace(' ', '% ')}"
    r = await plant(
        sup,
        workspace,
        f"git config -f .gitmodules submodule.lib.path lib && "
        f"git config -f .gitmodules submodule.lib.url 'ext::{command}' && "
        f"git update-index --add --cacheinfo 160000,{head},lib",
    )
    assert str(workspace / ".gitmodules") in [p for p, _ in r.quarantined], r.quarantined
    user_git(workspace, env, "submodule", "update", "--init", "-q")
    assert_not_run(workspace)


def imap_send(repo: Path) -> None:
    """The host user's `git imap-send` of one message (it starts `imap.tunnel` to reach the server)."""
    mbox = "From 0 Mon Sep 17 00:00:00 2001\nFrom: u <u@h>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
    subprocess.run(
        [GIT, "-C", str(repo), "imap-send"],
        input=mbox + "Subject: x\n\nx\n",
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_the_imap_tunnel_the_users_config_runs(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    (workspace / "tools").mkdir()
    tunnel = workspace / "tools" / "imap-tunnel.sh"
    tunnel.write_text("#!/bin/sh\nexit 1\n")
    tunnel.chmod(0o755)
    assert host_git(workspace, "config", "imap.folder", "Drafts").returncode == 0
    assert host_git(workspace, "config", "imap.tunnel", "tools/imap-tunnel.sh").returncode == 0
    write = f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > tools/imap-tunnel.sh"
    r = await plant(sup, workspace, write)
    assert [p for p, _ in r.quarantined] == [str(tunnel)], r.quarantined
    imap_send(workspace)
    assert_not_run(workspace)
