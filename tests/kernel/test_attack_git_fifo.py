"""A FIFO where the host user's git opens a file (issue 11, items 3 and 6): git opens HEAD, the index,
refs, objects and the worktree's `.gitignore`/`.gitattributes`/`.gitmodules` without O_NONBLOCK, so a FIFO
a sandbox left at one of those names held the user's next plain `git status` for ever. The post-run scan
moves such a special file aside (supervisor/_gitscan.py, `_check_specials`); one elsewhere (a build's named
pipe) stays. Each attack plants from inside a real sandbox; the host then runs git, bounded, and checks."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import ENV, GIT, host_git, make_repo, plant

pytestmark = pytest.mark.kernel


def git_finishes(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The host user's git, bounded: a git waiting on a FIFO fails the test, not the suite."""
    try:
        return subprocess.run(
            [GIT, "-C", str(repo), *args], env=ENV, capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the host user's git {' '.join(args)} hung on what the sandbox left")


# Each name with a git command that waited for ever on a FIFO there (checked by hand on this machine's git).
@pytest.mark.parametrize(
    ("where", "command"),
    [
        (".git/HEAD", "status"),
        (".git/index", "status"),
        (".git/refs/heads/main", "status"),
        (".git/packed-refs", "status"),
        (".gitignore", "status"),
        ("src/.gitattributes", "diff"),
        (".mailmap", "shortlog -s HEAD"),
    ],
)
async def test_a_fifo_where_git_opens_a_file_is_moved_aside(
    sup: Supervisor, workspace: Path, where: str, command: str
) -> None:
    make_repo(workspace)
    (workspace / "src").mkdir()
    (workspace / "README").write_text("changed\n")
    assert host_git(workspace, "branch", "-M", "main").returncode == 0
    r = await plant(sup, workspace, f"rm -f {where} && mkfifo {where}")
    target = workspace / where
    assert str(target) in [p for p, _ in r.quarantined], r.quarantined
    assert "FIFO" in dict(r.quarantined)[str(target)]
    assert not (target.exists() and stat.S_ISFIFO(os.lstat(target).st_mode))
    git_finishes(workspace, *command.split())


async def test_a_fifo_elsewhere_is_left_alone(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    r = await plant(sup, workspace, "mkdir -p build && mkfifo build/pipe")
    assert r.quarantined == [] or all("pipe" not in p for p, _ in r.quarantined), r.quarantined
    assert stat.S_ISFIFO(os.lstat(workspace / "build" / "pipe").st_mode)
    assert git_finishes(workspace, "status", "--porcelain").returncode == 0


async def test_a_fifo_in_a_nested_repository_made_inside(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    r = await plant(sup, workspace, "git init -q sub && rm sub/.git/HEAD && mkfifo sub/.git/HEAD")
    head = workspace / "sub" / ".git" / "HEAD"
    assert str(head) in [p for p, _ in r.quarantined], r.quarantined
    git_finishes(workspace / "sub", "status", "--porcelain")


async def test_a_fifo_moved_into_a_nested_repository_in_a_directory(sup: Supervisor, workspace: Path) -> None:
    """A first run leaves a FIFO named `main` where nothing of git's looks (`stash/heads/`); a second
    renames that directory to a nested repository's `refs/heads`: the FIFO kept the first run's ctime
    and was taken for the user's. Moved aside now whatever its age (git makes none in a git dir)."""
    make_repo(workspace)
    first = (
        "git init -q -b main sub && git -C sub commit -q --allow-empty -m x && git add sub && "
        "mkdir -p stash/heads && mkfifo stash/heads/main"
    )
    r1 = await plant(sup, workspace, first)
    assert r1.quarantined == (), r1.quarantined
    await anyio.sleep(0.05)  # past the scan's 10 ms margin: the FIFO is older than the next run
    r2 = await plant(sup, workspace, "rm -rf sub/.git/refs/heads && mv stash/heads sub/.git/refs/heads")
    fifo = workspace / "sub" / ".git" / "refs" / "heads" / "main"
    assert str(fifo) in [p for p, _ in r2.quarantined], r2.quarantined
    git_finishes(workspace / "sub", "status", "--porcelain")
    git_finishes(workspace, "status", "--porcelain")
