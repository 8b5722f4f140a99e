"""Plants in the directories the git scan's snapshot watches by inotify instead of holding (issue 11).

After a scan that found nothing, a later run is answered on the event loop when nothing the scan looks at
changed (supervisor/_gitscan.py, `Snapshot`). Leaf directories (no subdirectory, none of git's names: a
repository's loose-object directories `.git/objects/ab`, source directories holding only files) are
watched with inotify (supervisor/_leafwatch.py), so a repository with history fits a snapshot. Each attack
here runs after such a quick-checked run and changes nothing but a leaf when it can: it hides a git dir
whose config sets `core.fsmonitor` inside the leaf, for a checkout `sub` that an earlier run pointed there
(a `.git` file) and registered as a gitlink in the top repository's writable index. The HOST then runs
`git status` as a user would, and the test checks from outside that the payload did not run and that the
config was reported moved aside. If a leaf's change went unseen, the quick check would skip the scan and
the user's git would run the payload.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import host_git, payload, plant
from tests.kernel.test_attack_git_hidden import assert_held

pytestmark = pytest.mark.kernel

FILES = 300  # in 30 source directories, two commits: ~220 loose-object directories


def make_repo_with_history(path: Path) -> None:
    for i in range(FILES):
        d = path / f"pkg{i % 3}" / f"mod{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.py").write_text(f"VALUE = {i}\n")
    assert host_git(path, "init", "-q").returncode == 0
    host_git(path, "add", "-A")
    assert host_git(path, "commit", "-q", "-m", "one").returncode == 0
    for i in range(0, FILES, 2):
        (path / f"pkg{i % 3}" / f"mod{i % 10}" / f"f{i}.py").write_text(f"VALUE = {-i}\n")
    assert host_git(path, "commit", "-q", "-a", "-m", "two").returncode == 0


def an_object_dir(workspace: Path) -> str:
    objects = workspace / ".git" / "objects"
    return ".git/objects/" + min(p.name for p in objects.iterdir() if len(p.name) == 2)


# A git dir made by hand in `{gitdir}` (nothing written outside it), with one empty commit, whose config
# runs the payload in the user's `git status` of a checkout that names it.
HIDE = (
    "git init -q --bare {gitdir} && git --git-dir={gitdir} config core.bare false && "
    "GIT_INDEX_FILE=$PWD/{gitdir}/index "
    "git --git-dir={gitdir} --work-tree=/tmp commit -q --allow-empty -m x && "
    "git --git-dir={gitdir} config core.fsmonitor '{payload}; echo'"
)
# The checkout `sub` (a `.git` file naming `{gitdir}`), registered as a gitlink in the top index.
POINT = (
    "mkdir sub && echo 'gitdir: ../{gitdir}' > sub/.git && "
    "git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),sub"
)


async def _quick_checked(sup: Supervisor, workspace: Path, prep: str) -> None:
    """Run `prep` (full scan), let the tree age past the scan's margin, and run twice more: the second is
    answered by the snapshot (a repository with history fits one)."""
    assert (await plant(sup, workspace, prep)).quarantined == ()
    await anyio.sleep(0.05)
    assert (await plant(sup, workspace, "true")).quarantined == ()  # scanned, snapshot taken
    quick = sup._listings.quick
    assert (await plant(sup, workspace, "true")).quarantined == ()
    assert sup._listings.quick == quick + 1, "a repository with history did not fit a snapshot"


@pytest.mark.parametrize("leaf", ["object_dir", "source_dir"])
async def test_a_git_dir_hidden_in_a_watched_leaf(sup: Supervisor, workspace: Path, leaf: str) -> None:
    """The attack run writes only below the leaf (a loose-object directory, or a source directory holding
    only files): the leaf's own inotify watch is all that can see it."""
    make_repo_with_history(workspace)
    where = an_object_dir(workspace) if leaf == "object_dir" else "pkg1/mod4"
    gitdir = f"{where}/ev"
    await _quick_checked(sup, workspace, POINT.format(gitdir=gitdir))
    r = await plant(sup, workspace, HIDE.format(gitdir=gitdir, payload=payload(workspace)))
    assert_held(workspace, workspace / gitdir / "config", r.quarantined)


@pytest.mark.parametrize("how", ["renamed", "replaced_by_symlink", "swapped_with_another"])
async def test_a_watched_leaf_moved_then_planted(sup: Supervisor, workspace: Path, how: str) -> None:
    """The leaf the checkout names is renamed away (its watch follows the inode), replaced by a symlink
    to a directory holding the hidden git dir, or exchanged with another leaf, in the run that plants."""
    make_repo_with_history(workspace)
    leaf = an_object_dir(workspace)
    gitdir = f"{leaf}/ev"
    await _quick_checked(sup, workspace, POINT.format(gitdir=gitdir))
    hide = HIDE.format(gitdir=gitdir, payload=payload(workspace))
    if how == "renamed":
        script = f"mv {leaf} {leaf}.old && mkdir {leaf} && {hide}"
    elif how == "replaced_by_symlink":
        script = f"mv {leaf} pkg0/mod0/moved && ln -s ../../pkg0/mod0/moved {leaf} && {hide}"
        gitdir = "pkg0/mod0/moved/ev"  # where the scan finds it (it follows no link)
    else:
        script = f"mv {leaf} t && mv pkg1/mod1 {leaf} && mv t pkg1/mod1 && {hide}"
    r = await plant(sup, workspace, script)
    assert_held(workspace, workspace / gitdir / "config", r.quarantined)
