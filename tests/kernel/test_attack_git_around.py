"""The repository AROUND a writable root (issue 11, item 3).

A sandbox whose workdir is a subdirectory of the user's repository (`corral run --workdir /p/tools`, a
package of a monorepo) cannot write `/p/.git`, and the post-run scan looked only at git dirs inside the
roots and at the users' global configuration. But `/p/.git/config` may name files inside the root: an
included config (`include.path = ../tools/git.cfg`, a team's shared settings kept in the tree), a hooks
directory (`core.hooksPath = tools/hooks`), a program run from the worktree (`core.fsmonitor =
tools/fsmon.sh`). The sandbox wrote them and the user's next `git status` or commit in /p ran its code.
Each attack plants from inside a real sandbox (after a first harmless run in the same supervisor, so that
a later run's quick check is exercised too); the HOST user's git runs afterwards, and the test checks from
outside that the payload did not run and that the plant was reported moved aside.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor
from tests.kernel.test_attack_git import CHILD_ENV, SH, host_git, make_repo, payload

pytestmark = pytest.mark.kernel


def fsmonitor(workspace: Path) -> str:
    return f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n'"


def script(workspace: Path, path: str) -> str:
    body = f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > {path}"
    return f"mkdir -p $(dirname {path}) && {body} && chmod +x {path}"


CASES = {
    "include": (("include.path", "../tools/git.cfg"), "git.cfg", None),
    "includeIf": (("includeIf.onbranch:master.path", "../tools/git.cfg"), "git.cfg", None),
    "hooksPath": (("core.hooksPath", "tools/hooks"), "hooks/pre-commit", "hook"),
    "program": (("core.fsmonitor", "tools/fsmon.sh"), "fsmon.sh", "hook"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_what_the_enclosing_repository_names_in_the_root(
    sup: Supervisor, workspace: Path, case: str
) -> None:
    (key, value), planted, kind = CASES[case]
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    assert host_git(workspace, "config", key, value).returncode == 0
    if case == "program":
        (tools / "fsmon.sh").write_text("#!/bin/sh\necho\n")  # the user's own, harmless
        (tools / "fsmon.sh").chmod(0o755)
    pol = profiles.workspace_write(tools, timeout=30, env=CHILD_ENV)
    first = await sup.run(["/bin/true"], policy=pol)
    assert first.exit_code == 0
    assert first.quarantined == ()
    plant = script(workspace, planted) if kind else fsmonitor(workspace) + f" > {planted}"
    r = await sup.run([SH, "-c", plant], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(tools / planted)], r.quarantined
    assert "repository around a root" in r.quarantined[0][1]
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize(
    ("hooks", "workdir"),
    [
        (".git/hooks", "."),  # the workdir's own repository: .git/hooks bound read-only, its link followed
        (".git/hooks", "tools"),  # the repository around the workdir
        (".githooks", "."),  # core.hooksPath, bound read-only as it exists
    ],
)
async def test_a_hook_installed_as_a_link_into_the_tree(
    sup: Supervisor, workspace: Path, hooks: str, workdir: str
) -> None:
    """Hooks shared through the tree and installed as links (`ln -s ../../tools/pre-commit
    .git/hooks/pre-commit`): the link stays as the user made it (read-only during the run, or outside the
    root), but what it leads to is a file the sandbox may write, and the user's next commit ran it."""
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "pre-commit").write_text("#!/bin/sh\ntrue\n")
    (tools / "pre-commit").chmod(0o755)
    if hooks != ".git/hooks":
        (workspace / hooks).mkdir()
        assert host_git(workspace, "config", "core.hooksPath", hooks).returncode == 0
    link = workspace / hooks / "pre-commit"
    link.symlink_to(("../../" if hooks == ".git/hooks" else "../") + "tools/pre-commit")
    assert host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the hook runs").returncode == 0
    pol = profiles.workspace_write(workspace / workdir, timeout=30, env=CHILD_ENV)
    first = await sup.run(["/bin/true"], policy=pol)
    assert first.quarantined == ()  # the user's link, unchanged
    r = await sup.run([SH, "-c", script(workspace, str(tools / "pre-commit"))], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert len(r.quarantined) == 1, r.quarantined
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("core.fsmonitor", "tools/fsmon.sh"),
        ("filter.x.clean", "tools/fsmon.sh"),
        ("diff.x.textconv", "tools/fsmon.sh"),
        ("filter.x.clean", "/bin/sh tools/fsmon.sh"),  # the script as an argument
    ],
)
async def test_a_program_the_users_own_config_runs_from_the_tree(
    sup: Supervisor, workspace: Path, key: str, value: str
) -> None:
    """The workdir's own `.git/config` (bound read-only for the run, never rewritten) runs a program kept
    in the worktree (git runs relative commands from the worktree's top): the sandbox rewrote it, and the
    user's next `git status`, `git diff` or `git add` ran it. Moved aside now, and reported."""
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "fsmon.sh").write_text("#!/bin/sh\ncat\n")
    (tools / "fsmon.sh").chmod(0o755)
    assert host_git(workspace, "config", key, value).returncode == 0
    (workspace / ".gitattributes").write_text("* filter=x diff=x\n")
    host_git(workspace, "add", ".")
    assert host_git(workspace, "commit", "-qm", "tools").returncode == 0
    pol = profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)
    plant = f"printf '#!/bin/sh\\n{payload(workspace)}\\ncat\\n' > tools/fsmon.sh; echo change >> README"
    r = await sup.run([SH, "-c", plant], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(tools / "fsmon.sh")], r.quarantined
    host_git(workspace, "status")
    host_git(workspace, "diff")
    host_git(workspace, "add", "README")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


async def test_an_included_config_the_user_links_into_the_tree(sup: Supervisor, workspace: Path) -> None:
    """The user's `.git/config` includes `../team.gitconfig`, a link (theirs, older than the run) to
    `tools/gitconfig`: the link stays as it was, git reads its target, which the sandbox appended
    core.fsmonitor to, and the user's `git status` ran it. The target is checked as the included file."""
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "gitconfig").write_text("[user]\n\tname = Team\n")
    (workspace / "team.gitconfig").symlink_to("tools/gitconfig")
    assert host_git(workspace, "config", "include.path", "../team.gitconfig").returncode == 0
    pol = profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)
    r = await sup.run([SH, "-c", fsmonitor(workspace) + " >> tools/gitconfig"], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(tools / "gitconfig")], r.quarantined
    host_git(workspace, "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


async def test_a_program_the_users_config_runs_through_their_link(sup: Supervisor, workspace: Path) -> None:
    """`core.fsmonitor = tools/fsmon`, where `tools/fsmon` is the user's link (older than the run) to
    `tools/fsmon.real`: the link stays, git runs its target, which the sandbox rewrote."""
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "fsmon.real").write_text("#!/bin/sh\necho\n")
    (tools / "fsmon.real").chmod(0o755)
    (tools / "fsmon").symlink_to("fsmon.real")
    assert host_git(workspace, "config", "core.fsmonitor", "tools/fsmon").returncode == 0
    pol = profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)
    r = await sup.run([SH, "-c", script(workspace, "tools/fsmon.real")], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(tools / "fsmon")], r.quarantined
    host_git(workspace, "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize("kind", ["linked worktree", "separate git dir"])
async def test_the_workdirs_own_repository_whose_git_dir_is_elsewhere(
    sup: Supervisor, workspace: Path, outside: Path, kind: str
) -> None:
    """The workdir is a checkout whose `.git` is a FILE naming a git dir outside the roots (a linked
    worktree of a repository kept elsewhere, `git init --separate-git-dir`), and that repository's config
    sets husky's `core.hooksPath = .husky`, relative to the worktree: in the root. The scan looked at no
    git dir there, and the mounts bind only a configured directory of the root's own `.git/config`: the
    sandbox made `.husky/pre-commit` and the user's next commit in the worktree ran it."""
    wt = workspace / "wt"
    if kind == "linked worktree":
        make_repo(outside / "main")
        assert host_git(outside / "main", "config", "core.hooksPath", ".husky").returncode == 0
        assert host_git(outside / "main", "worktree", "add", "-q", str(wt)).returncode == 0
    else:
        wt.mkdir()
        assert host_git(wt, "init", "-q", f"--separate-git-dir={outside / 'gitdir'}").returncode == 0
        assert host_git(wt, "commit", "-q", "--allow-empty", "-m", "initial").returncode == 0
        assert host_git(wt, "config", "core.hooksPath", ".husky").returncode == 0
    pol = profiles.workspace_write(wt, timeout=30, env=CHILD_ENV)
    r = await sup.run([SH, "-c", script(workspace, ".husky/pre-commit")], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(wt / ".husky" / "pre-commit")], r.quarantined
    assert "whose git dir is elsewhere" in r.quarantined[0][1]
    host_git(wt, "commit", "-q", "--allow-empty", "-m", "user")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


async def test_a_nested_repositorys_hooks_linked_into_the_tree(sup: Supervisor, workspace: Path) -> None:
    """The user's nested repository (no mount binds it) keeps its hooks as a link into the tree,
    `lib/.git/hooks -> ../../tools/hooks`, older than the run: the sandbox put `pre-commit` there and
    the user's next commit in `lib` ran it."""
    make_repo(workspace)
    make_repo(workspace / "lib")
    (workspace / "tools" / "hooks").mkdir(parents=True)
    hooks = workspace / "lib" / ".git" / "hooks"
    for h in hooks.iterdir():
        h.unlink()
    hooks.rmdir()
    hooks.symlink_to("../../tools/hooks")
    pol = profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)
    r = await sup.run([SH, "-c", script(workspace, "tools/hooks/pre-commit")], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert [p for p, _ in r.quarantined] == [str(workspace / "tools" / "hooks" / "pre-commit")], r.quarantined
    host_git(workspace / "lib", "commit", "-q", "--allow-empty", "-m", "user")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize("what", ["hook", "config"])
async def test_a_bound_git_file_hardlinked_into_the_tree(sup: Supervisor, workspace: Path, what: str) -> None:
    """The user installed a hook (or keeps their `.git/config`) as a HARD link to a file in the tree
    (`ln tools/pre-commit .git/hooks/`): the mounts bind `.git/hooks` and `.git/config` read-only, but the
    same inode is writable under its other name, and the sandbox's `>>` to it changed what the user's next
    commit ran. The bound file, written during the run through another link, is checked now."""
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    if what == "hook":
        (tools / "pre-commit").write_text("#!/bin/sh\ntrue\n")
        (tools / "pre-commit").chmod(0o755)
        os.link(tools / "pre-commit", workspace / ".git" / "hooks" / "pre-commit")
        bound, other = workspace / ".git" / "hooks" / "pre-commit", "tools/pre-commit"
        append = f"printf '{payload(workspace)}\\n' >> {other}"
    else:
        os.replace(workspace / ".git" / "config", tools / "gitconfig")
        os.link(tools / "gitconfig", workspace / ".git" / "config")
        bound, other = workspace / ".git" / "config", "tools/gitconfig"
        append = fsmonitor(workspace) + f" >> {other}"
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    pol = profiles.workspace_write(workspace, timeout=30, env=CHILD_ENV)
    r = await sup.run([SH, "-c", append], policy=pol)
    assert r.exit_code == 0, r.stderr
    assert str(bound) in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"
