"""What a sandbox prepares in one run and MOVES into place, as a directory, in the next (issue 11, item 3).

The post-run scan judges what a run wrote by each file's ctime (a sandbox can set mtime, never ctime), and
renaming a file sets its ctime. Renaming a DIRECTORY sets only that directory's: everything inside keeps
the ctime of the run that wrote it. So a first run leaves a hook, a rebase's todo list with an `exec`
line, a program or an included config in a directory where nothing of git's looks (no scan checks it),
and a second run renames that directory to where the user's git looks:

- a nested repository's `.git/hooks` (the mounts bind only the top repository's and its submodules');
- the top repository's `.git/rebase-merge` (`git status` says a rebase is in progress, and the user's
  `git rebase --continue` runs the exec line);
- the directory `core.hooksPath` names, missing when the run started (so not bound);
- a directory on the path of a program, an included config, a hook link's target or a hooks directory
  the user's own `.git/config` names (`tools/fsmon.sh`: `mv tools tools.old && mv x tools`).

Each file kept its first run's ctime, older than the second run, and was trusted. Each attack plants from
inside a real sandbox; the HOST user's git runs afterwards, and the test checks from outside that the
payload did not run and that the plant was reported moved aside.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import host_git, make_repo, payload, plant

pytestmark = pytest.mark.kernel


def script(workspace: Path, path: str) -> str:
    body = f"printf '#!/bin/sh\\n{payload(workspace)}\\ncat\\n' > {path}"
    return f"mkdir -p $(dirname {path}) && {body} && chmod +x {path}"


def fsmonitor(workspace: Path) -> str:
    return f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n'"


def assert_not_run(workspace: Path) -> None:
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


async def two_runs(sup: Supervisor, workspace: Path, first: str, second: str) -> list[str]:
    """The plant in a first run (nothing found), then the move in a second; what the second moved aside."""
    r1 = await plant(sup, workspace, first)
    assert r1.quarantined == (), r1.quarantined  # nowhere git looks yet
    await anyio.sleep(0.05)  # past the scan's 10 ms margin: the plant is older than the next run
    r2 = await plant(sup, workspace, second)
    return [p for p, _ in r2.quarantined]


async def test_a_hooks_directory_moved_into_a_nested_repository(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    first = "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && " + script(
        workspace, "stash/hooks/pre-commit"
    )
    found = await two_runs(sup, workspace, first, "rm -rf sub/.git/hooks && mv stash/hooks sub/.git/hooks")
    assert str(workspace / "sub" / ".git" / "hooks" / "pre-commit") in found, found
    host_git(workspace, "status")
    host_git(workspace / "sub", "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_a_rebase_in_progress_moved_into_the_top_repository(sup: Supervisor, workspace: Path) -> None:
    make_repo(workspace)
    todo = f"printf 'break\\nexec {payload(workspace)}\\n' >"
    # stopped at `break`; its directory moved aside, within `.git` (a mount point: moving across it copies)
    first = (
        f'GIT_SEQUENCE_EDITOR="{todo}" git rebase -q -i HEAD; mkdir .git/x && mv .git/rebase-merge .git/x/'
    )
    found = await two_runs(sup, workspace, first, "mv .git/x/rebase-merge .git/")
    assert found == [str(workspace / ".git" / "rebase-merge")], found
    host_git(workspace, "status")
    host_git(workspace, "rebase", "--continue")
    assert_not_run(workspace)


async def test_a_configured_hooks_directory_moved_into_place(sup: Supervisor, workspace: Path) -> None:
    """`core.hooksPath = .githooks` before `.githooks` exists: not bound when the second run starts."""
    make_repo(workspace)
    assert host_git(workspace, "config", "core.hooksPath", ".githooks").returncode == 0
    found = await two_runs(sup, workspace, script(workspace, "stash/pre-commit"), "mv stash .githooks")
    assert found == [str(workspace / ".githooks" / "pre-commit")], found
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


# What the user's own `.git/config` (bound read-only) names in `tools/`, which exists and is the user's;
# the second run swaps `tools` for the directory the first one prepared.
SWAP = "mv tools tools.old && mv x tools"


@pytest.mark.parametrize("case", ["program", "include", "hook link"])
async def test_a_directory_on_the_path_the_users_config_names_swapped(
    sup: Supervisor, workspace: Path, case: str
) -> None:
    make_repo(workspace)
    tools = workspace / "tools"
    tools.mkdir()
    (tools / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (tools / "fsmon.sh").chmod(0o755)
    (tools / "git.cfg").write_text("[user]\n\tname = Team\n")
    (tools / "pre-commit").write_text("#!/bin/sh\ntrue\n")
    (tools / "pre-commit").chmod(0o755)
    if case == "program":
        assert host_git(workspace, "config", "core.fsmonitor", "tools/fsmon.sh").returncode == 0
        first, planted = script(workspace, "x/fsmon.sh"), "fsmon.sh"
    elif case == "include":
        assert host_git(workspace, "config", "include.path", "../tools/git.cfg").returncode == 0
        first, planted = "mkdir x && " + fsmonitor(workspace) + " > x/git.cfg", "git.cfg"
    else:
        (workspace / ".git" / "hooks" / "pre-commit").symlink_to("../../tools/pre-commit")
        first, planted = script(workspace, "x/pre-commit"), "pre-commit"
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    found = await two_runs(sup, workspace, first, SWAP)
    assert found, "nothing moved aside"
    if case == "hook link":
        assert found == [str(workspace / ".git" / "hooks" / "pre-commit")], found
    else:
        assert found == [str(tools / planted)], found
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


# The same with a symlink on the way, which git follows: the scan opens what a config names with no link
# followed, and only REPORTED one it met ("review it"). A link made during the run (`tools -> x`) is moved
# aside now; an older one (the user's own `tools -> vendor/tools`) is followed as git does, and what it
# leads to in the root is checked.
@pytest.mark.parametrize(
    ("case", "link"),
    [
        ("program", "made by the sandbox"),
        ("program", "the user's"),
        ("include", "made by the sandbox"),
        ("include", "the user's"),
        # (a configured hooks directory through the user's link: the mounts refuse to start the run)
        ("hooks directory", "made by the sandbox"),
    ],
)
async def test_a_symlink_on_the_path_the_users_config_names(
    sup: Supervisor, workspace: Path, case: str, link: str
) -> None:
    make_repo(workspace)
    real = workspace / "vendor" / "tools"
    real.mkdir(parents=True)
    (real / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (real / "fsmon.sh").chmod(0o755)
    (real / "git.cfg").write_text("[user]\n\tname = Team\n")
    if case != "hooks directory":
        (workspace / "tools").symlink_to("vendor/tools")
    if case == "program":
        assert host_git(workspace, "config", "core.fsmonitor", "tools/fsmon.sh").returncode == 0
        planted = "fsmon.sh"
    elif case == "include":
        assert host_git(workspace, "config", "include.path", "../tools/git.cfg").returncode == 0
        planted = "git.cfg"
    else:  # missing when the run starts, so not bound read-only
        assert host_git(workspace, "config", "core.hooksPath", "tools/hooks").returncode == 0
        planted = "hooks/pre-commit"
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    into = "x" if link == "made by the sandbox" else "vendor/tools"
    if planted == "git.cfg":
        write = f"mkdir -p {into} && " + fsmonitor(workspace) + f" > {into}/git.cfg"
    else:
        write = script(workspace, f"{into}/{planted}")
    if into == "x":
        write += " && rm -f tools && ln -s x tools"
    r = await plant(sup, workspace, write)
    found = [p for p, _ in r.quarantined]
    expected = workspace / "tools" if into == "x" else real / planted
    assert found == [str(expected)], r.quarantined
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


# Both at once: the first run leaves a LINK in a directory of its own (`stash/bin -> ../x`, with
# `x/fsmon.sh` its own), and the second renames that directory onto the path the user's config names
# (`mv tools tools.old && mv stash tools`, where `core.fsmonitor = tools/bin/fsmon.sh`). The link kept
# the first run's ctime, so it was followed as the user's own, and what it led to (`x/`, in no directory
# renamed during the run) was trusted: the user's `git status` ran `x/fsmon.sh`. A link in a directory
# made or renamed where it is during the run is the run's, whatever its age, and is moved aside.
@pytest.mark.parametrize("case", ["program", "include", "hooks directory"])
async def test_an_older_link_in_a_directory_moved_onto_the_path_the_users_config_names(
    sup: Supervisor, workspace: Path, case: str
) -> None:
    make_repo(workspace)
    bin_ = workspace / "tools" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (bin_ / "fsmon.sh").chmod(0o755)
    (bin_ / "git.cfg").write_text("[user]\n\tname = Team\n")
    if case == "program":
        assert host_git(workspace, "config", "core.fsmonitor", "tools/bin/fsmon.sh").returncode == 0
        plant_x = script(workspace, "x/fsmon.sh")
    elif case == "include":
        assert host_git(workspace, "config", "include.path", "../tools/bin/git.cfg").returncode == 0
        plant_x = "mkdir -p x && " + fsmonitor(workspace) + " > x/git.cfg"
    else:  # missing when a run starts, so not bound read-only
        assert host_git(workspace, "config", "core.hooksPath", "tools/hooks").returncode == 0
        plant_x = script(workspace, "x/pre-commit")
    assert (
        host_git(workspace, "commit", "-q", "--allow-empty", "-m", "the user's setup works").returncode == 0
    )
    link = "hooks" if case == "hooks directory" else "bin"
    first = f"{plant_x} && mkdir stash && ln -s ../x stash/{link}"
    found = await two_runs(sup, workspace, first, "mv tools tools.old && mv stash tools")
    assert found == [str(workspace / "tools" / link)], found
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)
