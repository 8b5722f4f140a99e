"""git pointed elsewhere by what a sandbox writes (issue 11, item 3): settings and pointer files that run
nothing themselves, but make the HOST user's later git work in another directory, as the host user.

- `core.worktree` was on the post-run scan's allow-list: a repository the sandbox made with
  `core.worktree = <a host directory>` had the user's `git reset --hard` (checkout, stash) there write
  files outside the roots; pointed into another repository's git dir in the root, it wrote a hook there.
- a `.git` file or a `.git` symlink in a checkout the sandbox made, naming a git dir outside the roots:
  the user's commit in that checkout went into another repository of theirs.
- a linked worktree's `gitdir` (in `.git/worktrees/<n>/`) rewritten to name a host directory: the user's
  `git worktree repair` wrote a `.git` file there.

Each attack plants from inside a real sandbox, the host then runs git as a user would, and the effect is
checked from outside. What git itself writes inside (`git submodule add`'s own `core.worktree`, worktrees,
nested repositories) stays untouched.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import host_git, make_repo, payload, plant, policy

pytestmark = pytest.mark.kernel

# A repository `sub` made inside with one commit holding `evil.txt` (and `pre-commit`, executable, that
# runs the payload), registered as a gitlink in the top repository's index.
SUB = (
    "git init -q sub && echo evil > sub/evil.txt && printf '#!/bin/sh\\n{payload}\\n' > sub/pre-commit && "
    "chmod +x sub/pre-commit && git -C sub add . && git -C sub commit -q -m x && git add sub && "
)


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def log_count(repo: Path) -> int:
    out = host_git(repo, "rev-list", "--count", "HEAD").stdout.strip()
    return int(out or 0)


async def test_core_worktree_outside_the_roots(sup: Supervisor, workspace: Path, outside: Path) -> None:
    make_repo(workspace)
    before = names(outside)
    r = await plant(
        sup, workspace, SUB.format(payload=payload(workspace)) + f"git -C sub config core.worktree {outside}"
    )
    config = workspace / "sub" / ".git" / "config"
    assert str(config) in [p for p, _ in r.quarantined], r.quarantined
    assert "core.worktree" in dict(r.quarantined)[str(config)]
    host_git(workspace / "sub", "reset", "-q", "--hard")
    host_git(workspace / "sub", "checkout", "-q", "-f", "HEAD")
    assert names(outside) == before, "the user's git wrote outside the roots"


async def test_core_worktree_into_another_repositorys_git_dir(sup: Supervisor, workspace: Path) -> None:
    """`sub`'s worktree set to `nested/.git/hooks`: the user's `git -C sub reset --hard` checks
    `pre-commit` out into nested's hooks, and their next commit in `nested` runs it."""
    make_repo(workspace)
    r = await plant(
        sup,
        workspace,
        "git init -q nested && git -C nested commit -q --allow-empty -m n && "
        + SUB.format(payload=payload(workspace))
        + "git -C sub config core.worktree ../../nested/.git/hooks",
    )
    assert str(workspace / "sub" / ".git" / "config") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace / "sub", "reset", "-q", "--hard")
    host_git(workspace / "nested", "commit", "-q", "--allow-empty", "-m", "the user's commit")
    assert not (workspace / "nested" / ".git" / "hooks" / "pre-commit").exists()
    assert not (workspace / "MARKER").exists(), "a hook checked out by the user's git ran"


async def test_core_worktree_through_a_symlink(sup: Supervisor, workspace: Path, outside: Path) -> None:
    """`core.worktree = ../../link/../sub`: as text it names `sub`, its own checkout (whose `.git` points
    back); the kernel goes up from the link's target. Moved aside: no link is followed."""
    make_repo(workspace)
    (outside / "sub").mkdir()
    r = await plant(
        sup,
        workspace,
        SUB.format(payload=payload(workspace))
        + f"ln -s {outside}/sub link && git -C sub config core.worktree ../../link/../sub",
    )
    assert str(workspace / "sub" / ".git" / "config") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace / "sub", "reset", "-q", "--hard")
    assert names(outside / "sub") == []


@pytest.mark.parametrize("kind", ["gitfile", "symlink", "gitfile_newline"])
async def test_a_checkout_pointed_at_a_git_dir_outside(
    sup: Supervisor, workspace: Path, outside: Path, kind: str
) -> None:
    """`sub/.git` names the git dir of the user's repository `outside/victim` (a file `gitdir: ...`, or a
    symlink): the user's commit in `sub` went into victim's history."""
    make_repo(workspace)
    victim = outside / "victim"
    make_repo(victim)
    count = log_count(victim)
    point = {
        "gitfile": f"echo 'gitdir: {victim}/.git' > sub/.git",
        "symlink": f"ln -s {victim}/.git sub/.git",
        # git reads the whole file (trimmed at the end): a reader that stopped at the first newline saw
        # `gitdir: <ws>/x`, inside the root; git goes through the directory named `x<newline>` and up.
        "gitfile_newline": f"mkdir \"$(printf 'x\\nb')\" && "
        f"printf 'gitdir: {workspace}/x\\nb/../../{outside.name}/victim/.git\\n' > sub/.git",
    }[kind]
    r = await plant(sup, workspace, f"mkdir sub && {point} && git add sub")
    assert str(workspace / "sub" / ".git") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace, "status")
    host_git(workspace / "sub", "commit", "-q", "--allow-empty", "-m", "the user's commit in sub")
    assert log_count(victim) == count, "the user's git committed into a repository outside the roots"


async def test_a_worktree_gitdir_pointed_outside(sup: Supervisor, workspace: Path, outside: Path) -> None:
    """`.git/worktrees/wt/gitdir` rewritten to name `outside/victim/.git`: the user's `git worktree repair`
    wrote a `.git` file there (and `git worktree list` showed the host directory as the worktree)."""
    make_repo(workspace)
    victim = outside / "victim"
    victim.mkdir()
    plant_it = f"git worktree add -q wt && echo {victim}/.git > .git/worktrees/wt/gitdir"
    r = await plant(sup, workspace, plant_it)
    gitdir = workspace / ".git" / "worktrees" / "wt" / "gitdir"
    assert str(gitdir) in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace, "worktree", "repair")
    assert names(victim) == [], "the user's git wrote outside the roots"


async def test_submodules_and_worktrees_made_inside_are_left_alone(sup: Supervisor, workspace: Path) -> None:
    """`git submodule add` writes `core.worktree` in the submodule's git dir (pointing at its own
    checkout, whose `.git` file points back); `git worktree add` writes `gitdir`; a checkout's `.git`
    file points into the root. Nothing quarantined, and the host's git works in them."""
    r = await plant(
        sup,
        workspace,
        "git init -q lib && git -C lib commit -q --allow-empty -m l && "
        "git init -q top && git -C top commit -q --allow-empty -m t && "
        "git -C top -c protocol.file.allow=always submodule add -q ../lib mods/lib && "
        "git -C top commit -q -m sm && git -C top worktree add -q ../wt && "
        "git -C top/mods/lib config --get core.worktree",
    )
    assert r.quarantined == (), r.quarantined
    assert r.stdout.strip() == b"../../../../mods/lib"
    assert host_git(workspace / "top" / "mods" / "lib", "status").returncode == 0
    assert host_git(workspace / "wt", "status").returncode == 0
    listed = host_git(workspace / "top", "worktree", "list").stdout
    assert str(workspace / "wt") in listed


async def test_gitmodules_update_command_is_refused_by_git(sup: Supervisor, workspace: Path) -> None:
    """`.gitmodules` is in the worktree, always writable; `submodule.<name>.update = !cmd` there would
    run a command in the user's `git submodule update`. git honours that setting only from config (since
    2.24: "invalid value"), so this holds without corral; pinned so that a git that changes shows up."""
    make_repo(workspace)
    await plant(
        sup,
        workspace,
        "git init -q lib && git -C lib commit -q --allow-empty -m l && "
        "git -c protocol.file.allow=always submodule add -q ./lib sub 2>/dev/null; "
        'printf \'[submodule "sub"]\\n\\tpath = sub\\n\\turl = ./lib\\n'
        f"\\tupdate = !{payload(workspace)}\\n' > .gitmodules",
    )
    host_git(workspace, "-c", "protocol.file.allow=always", "submodule", "update", "--init")
    assert not (workspace / "MARKER").exists(), "a .gitmodules update command ran in the user's git"


@pytest.mark.parametrize("exec_line", [True, False])
async def test_a_rebase_left_in_progress(sup: Supervisor, workspace: Path, exec_line: bool) -> None:
    """The sandbox starts an interactive rebase in the top repository, stops it (`break`) and adds an
    `exec` line to its todo list: the user's `git rebase --continue` (which `git status` suggests) ran it
    as a shell command. Moved aside (`rebase-merge`); a stopped rebase without one is left for the user
    to continue."""
    make_repo(workspace)
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "second")
    script = "GIT_SEQUENCE_EDITOR=\"sed -i '1i break'\" git rebase -q -i HEAD~1"
    if exec_line:
        script += f" ; sed -i '1i exec {payload(workspace)}' .git/rebase-merge/git-rebase-todo"
    r = await plant(sup, workspace, script + " ; test -d .git/rebase-merge")
    rebase = workspace / ".git" / "rebase-merge"
    if exec_line:
        assert str(rebase) in [p for p, _ in r.quarantined], r.quarantined
        assert not rebase.exists()
    else:
        assert r.quarantined == (), r.quarantined
        assert rebase.is_dir()
    done = host_git(workspace, "rebase", "--continue")
    assert not (workspace / "MARKER").exists(), "the user's rebase --continue ran a command the sandbox wrote"
    if not exec_line:
        assert done.returncode == 0, done.stderr


async def test_a_relative_gitfile_whose_directory_a_later_run_moved(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    """A first run leaves `d1/d2/a/.git` with `gitdir: ../../<outside>/victim/.git`, which from there
    names a missing directory inside the root (fine); a second runs `mv d1/d2/a a`: the same text, older
    than that run, now names the user's repository outside the roots, and the user's commit in `a` went
    into its history. (The workspace and `outside` are siblings.)"""
    make_repo(workspace)
    victim = outside / "victim"
    make_repo(victim)
    count = log_count(victim)
    first = f"mkdir -p d1/d2/a && echo 'gitdir: ../../{outside.name}/victim/.git' > d1/d2/a/.git"
    r1 = await plant(sup, workspace, first)
    assert r1.quarantined == (), r1.quarantined
    await anyio.sleep(0.05)  # past the scan's 10 ms margin: the pointer is older than the next run
    r2 = await plant(sup, workspace, "mv d1/d2/a a")
    assert [p for p, _ in r2.quarantined] == [str(workspace / "a" / ".git")], r2.quarantined
    host_git(workspace / "a", "commit", "-q", "--allow-empty", "-m", "the user's commit in a")
    assert log_count(victim) == count, "the user's git committed into a repository outside the roots"


async def test_a_submodule_checkout_below_the_workdir_keeps_its_relative_gitfile(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    """The workdir is `super/libs` of a superproject kept outside it, whose submodule `libs/foo` has
    `.git` = `gitdir: ../../.git/modules/libs/foo` (outside the root): a run that edits files in `foo`
    and at the top of the workdir (both directories' ctimes move, as a rename would) leaves it alone,
    since that git dir's core.worktree names `foo`."""
    upstream = outside / "upstream"
    make_repo(upstream)
    sup_repo = workspace
    make_repo(sup_repo)
    (sup_repo / "libs").mkdir()
    added = host_git(
        sup_repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(upstream), "libs/foo"
    )
    assert added.returncode == 0, added.stderr
    assert (sup_repo / "libs" / "foo" / ".git").read_text().startswith("gitdir: ../../.git/modules/")
    r = await sup.run(
        ["/bin/sh", "-c", "touch new.txt foo/new.txt"],
        policy=policy(sup_repo / "libs"),
    )
    assert r.exit_code == 0, r.stderr
    assert r.quarantined == (), r.quarantined
    assert host_git(sup_repo / "libs" / "foo", "status").returncode == 0
