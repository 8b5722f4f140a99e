"""A symlink to a FIFO where the host user's git opens a file (issue 11, items 3 and 6), found by the
acceptance replay of session 13. The post-run scan moved a FIFO, socket or device aside where git opens a
file (test_attack_git_fifo.py), but not a symlink there whose target is one: git follows the link (to a
named pipe a build may keep in the tree, or one the sandbox made beside it) and waits for ever, so a
sandbox that left `.git/index -> ../build/pipe` held the user's next plain `git status`. A symlink made
during the run where git opens a file is now moved aside (`_gitscan.Scan._check_links`). Each attack plants
from inside a real sandbox; the host then runs git, bounded, and checks that it finishes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import ENV, GIT, host_git, make_repo, plant

pytestmark = pytest.mark.kernel


def git_finishes(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The host user's git, bounded: a git waiting on a FIFO fails the test, not the suite."""
    try:
        return subprocess.run(
            [GIT, "-C", str(repo), *args], env=ENV, capture_output=True, text=True, timeout=5, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the host user's git {' '.join(args)} hung on what the sandbox left")


# Each name where a link to a FIFO held this machine's git status (and `outside`: a FIFO the host keeps
# outside the roots, which the sandbox need not reach to name it in a link).
@pytest.mark.parametrize(
    ("where", "outside"),
    [
        (".git/index", False),
        (".git/refs/heads/main", False),
        (".git/info/exclude", False),
        (".gitmodules", False),
        (".git/packed-refs", False),
        (".git/objects/info/alternates", True),
    ],
)
async def test_a_symlink_to_a_fifo_where_git_opens_a_file(
    sup: Supervisor, workspace: Path, tmp_path: Path, where: str, outside: bool
) -> None:
    make_repo(workspace)
    assert host_git(workspace, "branch", "-M", "main").returncode == 0
    if outside:
        pipe = tmp_path / "pipe"
        os.mkfifo(pipe)
        script = f"mkdir -p $(dirname {where}) && rm -f {where} && ln -s {pipe} {where}"
    else:
        pipe = workspace / "build" / "pipe"
        script = f"mkdir -p build $(dirname {where}) && mkfifo {pipe} && "
        script += f"rm -f {where} && ln -s {pipe} {where}"
    if where == ".gitmodules":  # git reads .gitmodules when the index has a gitlink
        script = f"git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),sub && {script}"
    await plant(sup, workspace, script)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)  # the pipe itself is a build's (or the host's) business
    git_finishes(workspace, "status", "--porcelain")
