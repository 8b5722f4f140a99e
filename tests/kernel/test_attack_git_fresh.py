"""git dirs the post-run scan trusted for their age, or could not read (issue 11, item 3).

The scan checks what a run WROTE in each git dir (a directory with HEAD, and objects + refs or commondir):
a config or a hook older than the run was taken for the user's. Three ways past that, each planted from
inside a real sandbox and checked from outside with the HOST user's git:

- a linked worktree's git dir (HEAD + `commondir`) takes its config and hooks from its common dir, which
  needs objects/ and refs/ but no HEAD: the scan did not take that directory for a git dir and never
  looked at its config or hooks (one run);
- a first run leaves a config with core.fsmonitor, or a hook, in a directory with none of git's defining
  entries (not a git dir: nothing checked); a second run adds HEAD, objects and refs, and the config,
  older than that run, was trusted. The same in the top `.git` of a workdir that was no repository;
- for an ordinary caller the scan runs as the sandbox's uid: a `.git/hooks` (or a `.git`) made mode 0100
  could not be listed by the scan (reported "not fully scanned" only), while git reaches the hook inside
  by name and ran it at the user's next commit.

The user's own repository, in which a sandbox checks out a branch, commits and stashes, keeps its hooks
and settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import CHILD_ENV, ENV, host_git, make_repo, payload, plant
from tests.kernel.unprivileged_harness import ordinary_caller_scratch, run_as_user

pytestmark = pytest.mark.kernel


def fsmonitor(workspace: Path) -> str:
    return f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n'"


def hook(workspace: Path, path: str) -> str:
    return (
        f"mkdir -p {os.path.dirname(path)} && printf '#!/bin/sh\\n{payload(workspace)}\\n' > {path}"
        f" && chmod +x {path}"
    )


def assert_not_run(workspace: Path) -> None:
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


# A repository `a` whose .git is made a linked worktree's git dir: commondir `../..` names the workspace
# itself, which gets objects/ and refs/ (no HEAD) and the planted config or hooks.
COMMON = (
    "git init -q a && git -C a commit -q --allow-empty -m x && git add a && "
    "cp -r a/.git/objects a/.git/refs . && echo ../.. > a/.git/commondir && "
)


async def test_the_common_dir_a_commondir_names_has_its_config_checked(
    sup: Supervisor, workspace: Path
) -> None:
    make_repo(workspace)
    r = await plant(sup, workspace, COMMON + fsmonitor(workspace) + " > config")
    assert str(workspace / "config") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace, "status")
    host_git(workspace / "a", "status")
    assert_not_run(workspace)


async def test_the_common_dir_a_commondir_names_has_its_hooks_checked(
    sup: Supervisor, workspace: Path
) -> None:
    make_repo(workspace)
    r = await plant(sup, workspace, COMMON + hook(workspace, "hooks/pre-commit"))
    assert str(workspace / "hooks" / "pre-commit") in [p for p, _ in r.quarantined], r.quarantined
    host_git(workspace / "a", "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


# The first run: a repository `sub` (registered as a gitlink at the top) with the plant, then its defining
# entries moved out of it, so that it is no git dir when that run's scan looks. The second run puts them
# back.
PARTS = "mkdir -p parts && mv {d}/HEAD {d}/objects {d}/refs parts/"
BACK = "mv parts/HEAD parts/objects parts/refs {d}/"


@pytest.mark.parametrize("what", ["config", "hook"])
async def test_a_directory_that_becomes_a_git_dir_in_a_later_run(
    sup: Supervisor, workspace: Path, what: str
) -> None:
    make_repo(workspace)
    plant1 = (
        fsmonitor(workspace) + " >> sub/.git/config"
        if what == "config"
        else hook(workspace, "sub/.git/hooks/pre-commit")
    )
    first = "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && "
    r1 = await plant(sup, workspace, first + plant1 + " && " + PARTS.format(d="sub/.git"))
    assert r1.quarantined == ()  # nothing of git's there yet
    await anyio.sleep(0.05)  # past the scan's 10 ms margin: the plant is older than the next run
    r2 = await plant(sup, workspace, BACK.format(d="sub/.git"))
    planted = "sub/.git/config" if what == "config" else "sub/.git/hooks/pre-commit"
    assert [p for p, _ in r2.quarantined] == [str(workspace / planted)], r2.quarantined
    assert "became a git dir during the run" in r2.quarantined[0][1]
    host_git(workspace, "status")
    host_git(workspace / "sub", "status")
    host_git(workspace / "sub", "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_the_top_git_dir_of_a_workdir_that_was_no_repository(sup: Supervisor, workspace: Path) -> None:
    """The same in the workdir's own `.git`: when the second run starts, the mounts bind its config and
    hooks read-only (they exist), and the scan trusted what was born before the run as the user's. The
    top `.git` is now checked as a git dir whatever it holds: the first run's scan moves the plant aside."""
    (workspace / "README").write_text("not a repository yet\n")
    first = (
        "git init -q . && git commit -q --allow-empty -m x && "
        + fsmonitor(workspace)
        + " >> .git/config && "
        + hook(workspace, ".git/hooks/pre-commit")
        + " && "
        + PARTS.format(d=".git")
    )
    r1 = await plant(sup, workspace, first)
    await anyio.sleep(0.05)
    r2 = await plant(sup, workspace, BACK.format(d=".git"))
    found = sorted(p for p, _ in r1.quarantined + r2.quarantined)
    assert found == [str(workspace / ".git" / "config"), str(workspace / ".git" / "hooks" / "pre-commit")]
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_a_prepared_directory_renamed_to_the_top_git(sup: Supervisor, workspace: Path) -> None:
    """A workdir with no `.git` when the run starts: a first run prepares `stash` with a config and a hook
    (nothing of git's there, so nothing checked), the second renames it to `.git` and completes it. Its
    config and hook were born before the second run, like the user's in a top `.git` the mounts bind; the
    fork server says the root had no `.git` when the view was built, so nothing in it is trusted."""
    (workspace / "README").write_text("not a repository yet\n")
    first = (
        "git init -q . && git commit -q --allow-empty -m x && "
        + fsmonitor(workspace)
        + " >> .git/config && "
        + hook(workspace, ".git/hooks/pre-commit")
        + " && mkdir parts && mv .git/HEAD .git/objects .git/refs parts/ && mv .git stash"
    )
    await plant(sup, workspace, first)
    await anyio.sleep(0.05)
    r2 = await plant(sup, workspace, "mv stash .git && " + BACK.format(d=".git"))
    found = sorted(p for p, _ in r2.quarantined)
    assert found == [str(workspace / ".git" / "config"), str(workspace / ".git" / "hooks" / "pre-commit")]
    host_git(workspace, "status")
    host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user")
    assert_not_run(workspace)


async def test_the_users_repository_keeps_its_hooks_and_settings(sup: Supervisor, workspace: Path) -> None:
    """What a sandbox does in the user's repository (and a nested one of theirs): check out a branch,
    commit, stash and pop. Their hooks and settings that run programs stay where they are."""
    hooks = []
    for repo in (workspace, workspace / "lib"):
        make_repo(repo)
        assert host_git(repo, "config", "core.editor", "true").returncode == 0
        h = repo / ".git" / "hooks" / "post-commit"
        h.write_text("#!/bin/sh\ntrue\n")
        h.chmod(0o755)
        hooks.append(h)
    await anyio.sleep(0.05)
    work = (
        "git -C {r} checkout -q -b feature && echo x > {r}/f && git -C {r} add f && git -C {r} commit -q -m w"
    )
    notes = " && git notes add -m n"  # refs/notes: HEAD, objects/ and refs/ all changed in the top one
    r = await plant(sup, workspace, work.format(r=".") + notes + " && " + work.format(r="lib"))
    assert r.quarantined == ()
    for h in hooks:
        assert h.exists()
    assert host_git(workspace / "lib", "config", "core.editor").stdout.strip() == "true"


ORDINARY = """
import json, os, subprocess, sys
import anyio
from policies import profiles
from supervisor import Supervisor
ws, script = sys.argv[1], sys.argv[2]
env, child_env = json.loads(sys.argv[3]), json.loads(sys.argv[4])
def git(*args):
    return subprocess.run(["git", "-C", ws, *args], env=env, capture_output=True, text=True, timeout=30)
git("init", "-q")
git("commit", "-q", "--allow-empty", "-m", "initial")
async def main():
    async with Supervisor(max_concurrency=2) as sup:
        pol = profiles.workspace_write(ws, timeout=30, env=child_env)
        r = await sup.run(["/bin/sh", "-c", script], policy=pol)
        return r.exit_code, [list(q) for q in r.quarantined]
code, found = anyio.run(main)
git("-C", "sub", "status")
git("-C", "sub", "commit", "-q", "--allow-empty", "-m", "user")
print(json.dumps({"exit": code, "quarantined": found, "ran": os.path.exists(os.path.join(ws, "MARKER"))}))
"""


@pytest.mark.parametrize("where", [".git/hooks", ".git"])
def test_an_ordinary_callers_directory_the_scan_could_not_read(where: str) -> None:
    with ordinary_caller_scratch("git-unreadable") as (scratch, python, pythonpath):
        ws = scratch / "ws"
        ws.mkdir()
        os.chmod(ws, 0o777)
        script = (
            "git init -q sub && git -C sub commit -q --allow-empty -m x && "
            + hook(ws, "sub/.git/hooks/pre-commit")
            + f" && chmod 100 sub/{where}"
        )
        (scratch / "run.py").write_text(ORDINARY)
        env = {**ENV, "HOME": "/tmp"}
        argv = [python, str(scratch / "run.py"), str(ws), script, json.dumps(env), json.dumps(CHILD_ENV)]
        r = run_as_user(argv, pythonpath, scratch)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report["exit"] == 0, report
        found = [p for p, _ in report["quarantined"]]
        assert str(ws / "sub" / ".git" / "hooks" / "pre-commit") in found, report
        assert str(ws / "sub" / where) in found, report  # made readable, and reported
        assert not report["ran"], "the host user's git ran code planted by the sandbox"
