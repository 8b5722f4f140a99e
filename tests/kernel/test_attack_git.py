"""git turned against the host user: what a sandbox writes in git repositories under its writable roots must
not make the user's next plain git command (status, commit, log) outside the sandbox run code.

Each attack plants from inside a real sandbox, then the HOST runs git in the workspace the way a user would,
and the test checks from outside that the payload did not run (it only touches a marker file in the
workspace) and that the post-run scan reported what it moved aside (`Result.quarantined`). Git workflows
inside keep working and leave nothing quarantined.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import Result, Supervisor

pytestmark = pytest.mark.kernel

GIT = "/usr/bin/git"
SH = "/bin/sh"
ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_PAGER": "cat",
}
CHILD_ENV = ["HOME=/tmp", *(f"{k}={v}" for k, v in ENV.items() if k not in ("PATH", "HOME"))]


def policy(workspace: Path) -> Policy:
    return profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)


def host_git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the host user runs it (may run a planted payload if the protection failed: payloads only
    touch MARKER in the workspace)."""
    return subprocess.run(
        [GIT, "-C", str(repo), *args], env=ENV, capture_output=True, text=True, timeout=30, check=False
    )


def make_repo(path: Path) -> None:
    path.mkdir(exist_ok=True)
    assert host_git(path, "init", "-q").returncode == 0
    (path / "README").write_text("hello\n")
    host_git(path, "add", "README")
    assert host_git(path, "commit", "-q", "-m", "initial").returncode == 0


async def plant(sup: Supervisor, workspace: Path, script: str) -> Result:
    r = await sup.run([SH, "-c", script], policy=policy(workspace))
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    return r


def quarantined_under(top: Path) -> list[str]:
    """Files renamed by the scan below `top` (which is outside the roots: must be none)."""
    return [n for _d, _s, files in os.walk(top) for n in files if n.endswith(".corral-quarantined")]


def payload(workspace: Path) -> str:
    return f"touch {workspace / 'MARKER'}"


# The nested repository `sub`, made inside, registered as a gitlink in the top repository's (writable)
# index, so that the user's plain `git status` at the top recurses into it; each variant sets up sub's
# config to run the payload.
NESTED = (
    "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && "
    "git -C sub config {key} '{value}'"
)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("core.fsmonitor", "{payload}; echo"),
        ("include.path", "../../evil.cfg"),
        ("includeIf.gitdir:/.path", "../../evil.cfg"),
        ("core.FSMonitor", "{payload}; echo"),  # keys are case-insensitive
    ],
)
async def test_nested_repo_registered_as_gitlink_cannot_run_code_on_status(
    sup: Supervisor, workspace: Path, key: str, value: str
) -> None:
    make_repo(workspace)
    value = value.format(payload=payload(workspace))
    evil_cfg = f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n' > evil.cfg && "
    r = await plant(sup, workspace, evil_cfg + NESTED.format(key=key, value=value))
    assert str(workspace / "sub" / ".git" / "config") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace, "status")
    host_git(workspace / "sub", "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize(
    "setting",
    [
        "core.pager",
        "core.editor",
        "core.sshCommand",
        "core.hooksPath",
        "diff.x.textconv",
        "filter.x.clean",
        "merge.x.driver",
        "alias.st",
        "credential.helper",
        "gpg.program",
        "sequence.editor",
        "uploadpack.packObjectsHook",
    ],
)
async def test_new_repo_config_that_runs_programs_is_moved_aside(
    sup: Supervisor, workspace: Path, setting: str
) -> None:
    """A repository the sandbox creates with git init and configures: every setting that runs a program."""
    r = await plant(sup, workspace, f"git init -q . && git config {setting} '!{payload(workspace)}'")
    config = workspace / ".git" / "config"
    assert [p for p, _ in r.quarantined] == [str(config)], r.quarantined
    section, *_, key = setting.lower().split(".")
    assert f"{section}.{key}" in r.quarantined[0][1].lower()
    assert not config.exists()
    assert (workspace / ".git" / "config.corral-quarantined").exists()  # kept for the user to review
    assert host_git(workspace, "status").returncode == 0  # git still works without it


@pytest.mark.parametrize(
    "where", ["top_fresh", "nested", "bare", "worktree_commondir", "hooks_symlink", "quarantine_name_taken"]
)
async def test_hooks_planted_anywhere_do_not_run_in_the_users_commit(
    sup: Supervisor, workspace: Path, where: str
) -> None:
    hook = f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > {{h}}/post-commit && chmod +x {{h}}/post-commit"
    if where == "top_fresh":
        repo, script = workspace, "git init -q . && " + hook.format(h=".git/hooks")
    elif where == "nested":
        repo = workspace / "vendor" / "lib"
        script = "git init -q vendor/lib && " + hook.format(h="vendor/lib/.git/hooks")
    elif where == "bare":
        # A bare repository and a checkout whose .git file points at it.
        repo = workspace / "co"
        script = (
            "git init -q --bare store.git && mkdir co && echo 'gitdir: ../store.git' > co/.git && "
            + hook.format(h="store.git/hooks")
        )
    elif where == "worktree_commondir":
        make_repo(workspace)
        repo = workspace
        script = (
            "mkdir -p evil/hooks evil/refs evil/objects && cp .git/HEAD evil/ && "
            + hook.format(h="evil/hooks")
            + " && echo ../evil > .git/commondir"
        )
    elif where == "quarantine_name_taken":
        # The names the scan would rename to are taken by non-empty directories: it must still get the
        # hook out of git's way.
        repo = workspace
        taken = " ".join(
            f".git/hooks/post-commit.corral-quarantined{'.' + str(i) if i else ''}/x" for i in range(10)
        )
        script = (
            "git init -q . && " + hook.format(h=".git/hooks") + f" && for d in {taken}; do mkdir -p $d; done"
        )
    else:
        repo = workspace / "n"
        script = (
            "git init -q n && mkdir hk && "
            + hook.format(h="hk")
            + " && rm -rf n/.git/hooks && ln -s ../../hk n/.git/hooks"
        )
    r = await plant(sup, workspace, script)
    assert r.quarantined, "nothing reported"
    if (repo / ".git").exists():
        host_git(repo, "commit", "-q", "--allow-empty", "-m", "the user's commit")
    assert not (workspace / "MARKER").exists(), "a hook planted in the sandbox ran in the user's git"


async def test_git_workflows_inside_are_left_alone(sup: Supervisor, workspace: Path) -> None:
    """init, remote add, branch -u, commit, worktree add, a nested repository: nothing quarantined, the
    host's git sees the work."""
    r = await plant(
        sup,
        workspace,
        "git init -q -b main . && echo a > a && git add a && git commit -q -m one && "
        "git remote add origin https://example.invalid/r.git && git config user.name someone && "
        "git branch -q side && git branch -q -u origin/main side 2>/dev/null; "
        "git worktree add -q wt side && git -C wt log --format=%s -1 && "
        "git init -q nested && git -C nested commit -q --allow-empty -m n && git status --porcelain",
    )
    assert r.quarantined == (), r.quarantined
    assert host_git(workspace, "log", "--format=%s").stdout.split() == ["one"]
    assert (
        host_git(workspace, "remote", "get-url", "origin").stdout.strip() == "https://example.invalid/r.git"
    )
    assert host_git(workspace / "wt", "status", "--porcelain").returncode == 0
    assert host_git(workspace / "nested", "log", "--format=%s").stdout.strip() == "n"


async def test_the_users_own_hooks_and_settings_are_not_touched(sup: Supervisor, workspace: Path) -> None:
    """What existed before the run, unchanged by it, stays: a nested repository's hook and filter driver
    the user set up (git-lfs style)."""
    nested = workspace / "n"
    make_repo(nested)
    hook = nested / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    host_git(nested, "config", "filter.lfs.process", "git-lfs filter-process")
    await anyio.sleep(0.05)  # past the scan's margin for coarse timestamps
    r = await plant(sup, workspace, "echo change >> n/README && git -C n status --porcelain")
    assert r.quarantined == ()
    assert hook.exists()
    assert host_git(nested, "config", "filter.lfs.process").stdout.strip() == "git-lfs filter-process"


async def test_scan_follows_no_symlink_and_is_bounded(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    """A symlink to a host repository is not walked into (its hooks are not the sandbox's to have written,
    and root must not rename things outside the roots); a FIFO at a new repository's config is moved aside
    without being opened for reading."""
    make_repo(outside / "hostrepo")
    hook = outside / "hostrepo" / ".git" / "hooks" / "post-commit"
    with anyio.fail_after(60):
        r = await plant(
            sup,
            workspace,
            f"ln -s {outside / 'hostrepo'} link && git init -q f && rm f/.git/config && mkfifo f/.git/config",
        )
    assert [p for p, _ in r.quarantined] == [str(workspace / "f" / ".git" / "config")], r.quarantined
    assert not hook.exists()
    assert quarantined_under(outside) == [], "root renamed files outside the writable roots"


@pytest.mark.parametrize("how", ["new_repo_deep", "config_rewritten_in_place", "dir_swapped_for_link"])
async def test_later_runs_are_scanned_as_well_as_the_first(
    sup: Supervisor, workspace: Path, outside: Path, how: str
) -> None:
    """The scan keeps directory listings between runs and lists again only directories whose ctime moved:
    a plant in the second run, deep in a tree the first run's scan listed, is still found, and so is a
    config rewritten in place (its directory unchanged)."""
    for d in range(20):
        (workspace / "src" / f"d{d}" / "deep").mkdir(parents=True)
    make_repo(workspace / "src" / "d7" / "deep" / "repo")
    await anyio.sleep(0.05)  # older than the listings' margin
    first = await plant(sup, workspace, "true")
    assert first.quarantined == ()
    await anyio.sleep(0.05)
    if how == "new_repo_deep":
        script = "git init -q src/d3/deep/r2 && git -C src/d3/deep/r2 config core.fsmonitor 'touch x'"
        expected = workspace / "src" / "d3" / "deep" / "r2" / ".git" / "config"
    elif how == "config_rewritten_in_place":
        script = "printf '[core]\\n\\tpager = touch x\\n' >> src/d7/deep/repo/.git/config"
        expected = workspace / "src" / "d7" / "deep" / "repo" / ".git" / "config"
    else:
        # A listed directory replaced by a link to a host repository: not followed, nothing renamed there.
        make_repo(outside / "hostrepo")
        script = (
            f"rm -rf src/d9 && ln -s {outside} src/d9 && git init -q src/d10/r3 && "
            "rm -rf src/d10/r3/.git/hooks && ln -s /tmp src/d10/r3/.git/hooks"
        )
        expected = workspace / "src" / "d10" / "r3" / ".git" / "hooks"
    second = await plant(sup, workspace, script)
    assert str(expected) in [p for p, _ in second.quarantined], second.quarantined
    assert quarantined_under(outside) == []


async def test_the_users_own_hook_added_during_a_run_is_left_alone(sup: Supervisor, workspace: Path) -> None:
    """The top repository's .git/hooks is bound read-only for the run: a hook that appears in it during the
    run is the host user's own (`pre-commit install` meanwhile), never moved aside."""
    make_repo(workspace)
    hook = workspace / ".git" / "hooks" / "pre-push"
    await anyio.sleep(0.05)

    def install() -> None:
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o755)

    async with anyio.create_task_group() as tg:

        async def user() -> None:
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(install)

        tg.start_soon(user)
        r = await plant(sup, workspace, "sleep 1.5")
    assert r.quarantined == (), r.quarantined
    assert await anyio.Path(hook).exists()


@pytest.mark.parametrize("how", ["config_rewritten_in_place", "hook_rewritten_in_place", "new_repo"])
async def test_a_plant_after_runs_that_needed_no_scan_is_found(
    sup: Supervisor, workspace: Path, how: str
) -> None:
    """After a scan of a small tree that found nothing, later runs that changed nothing are answered by a
    snapshot checked on the event loop, without the scan's worker-thread hop (`Listings.unchanged_since`).
    A run that plants, even in a file rewritten in place (its directory unchanged), is scanned in full."""
    sub = workspace / "sub"
    make_repo(sub)
    hook = sub / ".git" / "hooks" / "post-checkout"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    await anyio.sleep(0.05)  # older than the scan's margin
    assert (await plant(sup, workspace, "true")).quarantined == ()  # a key's first scan: no snapshot
    assert (await plant(sup, workspace, "true")).quarantined == ()  # scanned in full, snapshot taken
    quick = sup._listings.quick
    assert (await plant(sup, workspace, "true")).quarantined == ()
    assert sup._listings.quick == quick + 1, "an unchanged tree was scanned in full"
    if how == "config_rewritten_in_place":
        script = "printf '[core]\\n\\tpager = touch x\\n' >> sub/.git/config"
        expected = sub / ".git" / "config"
    elif how == "hook_rewritten_in_place":
        script = f"echo '{payload(workspace)}' >> sub/.git/hooks/post-checkout"
        expected = hook
    else:
        script = "git init -q sub/r2 && git -C sub/r2 config core.fsmonitor 'touch x'"
        expected = sub / "r2" / ".git" / "config"
    third = await plant(sup, workspace, script)
    assert str(expected) in [p for p, _ in third.quarantined], third.quarantined
    assert sup._listings.quick == quick + 1
    assert not (workspace / "MARKER").exists()


async def test_git_config_changes_fail_loudly(
    sup: Supervisor, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The top repository's .git/config is a read-only bind: `git config`, `git remote add`, `git branch -u`
    and `git submodule add` inside cannot change it. git's own messages say "Device or resource busy", and
    `git branch -u` even reports success: the Result (and --json, and a warning line) name the file and why,
    and the file is unchanged, seen from outside."""
    make_repo(workspace)
    host_git(workspace, "branch", "-q", "side")
    config = (workspace / ".git" / "config").read_bytes()
    r = await sup.run(
        [
            SH,
            "-c",
            "git config user.name someone; echo config=$?; git remote add origin /x; echo remote=$?; "
            "git branch -u side 2>/dev/null; echo branch=$?",
        ],
        policy=policy(workspace),
    )
    out = r.stdout.decode()
    assert "config=0" not in out, out
    assert "remote=0" not in out, out
    assert "Device or resource busy" in r.stderr.decode()
    assert r.protected_writes == (str(workspace / ".git" / "config"),)
    assert r.to_json()["protected_writes"] == [str(workspace / ".git" / "config")]
    assert "read-only in the sandbox (corral protects it)" in caplog.text
    assert (workspace / ".git" / "config").read_bytes() == config
    assert host_git(workspace, "config", "--get-regexp", "^(branch|remote)[.]").stdout == ""
    # Only the command's own attempts count: a run that leaves the config alone reports nothing.
    r = await plant(
        sup, workspace, "echo b > b && git add b && git commit -q -m two && git config --get core.bare"
    )
    assert r.exit_code == 0, r.stderr
    assert r.protected_writes == ()


def home_git(home: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as the host user whose home directory is `home` runs it: it reads `home`/.gitconfig and
    `home`/.config/git/config (payloads only touch MARKER)."""
    env = {k: v for k, v in ENV.items() if k not in ("GIT_CONFIG_GLOBAL", "HOME")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return subprocess.run(
        [GIT, "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


async def test_global_git_config_in_a_home_root(sup: Supervisor, workspace: Path) -> None:
    """A writable root that is a home directory: the sandbox writes the user's GLOBAL git configuration
    (~/.gitconfig, ~/.config/git/config), which their git reads in every repository. Both are quarantined
    and reported; the host user's git status afterwards runs nothing."""
    make_repo(workspace / "proj")
    r = await plant(
        sup,
        workspace,
        f"printf '[core]\\n\\tfsmonitor = {payload(workspace)}\\n' > .gitconfig && mkdir -p .config/git && "
        f"printf '[core]\\n\\tpager = {payload(workspace)}; cat\\n' > .config/git/config && "
        f"printf '[alias]\\n\\tst = !{payload(workspace)}\\n' >> .config/git/config",
    )
    assert sorted(p.removeprefix(f"{workspace}/") for p, _ in r.quarantined) == [
        ".config/git/config",
        ".gitconfig",
    ], r.quarantined
    assert all("global git config" in why for _, why in r.quarantined)
    assert home_git(workspace, workspace / "proj", "status").returncode == 0
    assert home_git(workspace, workspace / "proj", "log", "-1").returncode == 0
    assert not (workspace / "MARKER").exists(), "a global git config planted in the sandbox ran"
    assert (workspace / ".gitconfig.corral-quarantined").exists()


async def test_global_git_config_harmless_or_a_fifo(sup: Supervisor, workspace: Path) -> None:
    """A global config with only settings that run nothing stays; a FIFO planted at ~/.gitconfig (which would
    hold the user's every git command) is moved aside."""
    r = await plant(sup, workspace, "git config --file .gitconfig user.name someone")
    assert r.quarantined == ()
    assert "someone" in (workspace / ".gitconfig").read_text()
    r = await plant(sup, workspace, "rm .gitconfig && mkfifo .gitconfig")
    assert [p.removeprefix(f"{workspace}/") for p, _ in r.quarantined] == [".gitconfig"], r.quarantined
    assert not (workspace / ".gitconfig").exists()
