"""git dirs where the post-run scan did not look (issue 11, item 3).

git reaches a git dir through a `.git` FILE (`gitdir: <path>`) wherever that path leads, so a sandbox can
hide a repository's git dir in a place the scan skipped and point a checkout at it: inside another git dir's
`objects/`, `refs/` or `logs/` (the scan descended into a git dir only through `modules/` and
`worktrees/`), or more than 64 directories deep (the scan stopped there without a word). And the scan
trusted every config born before the run under `.git/modules/` as bound read-only by the mounts, while the
mounts bind only the git dirs their walk takes for submodules' (HEAD a regular file, and not inside
another's objects/): one planted harmless in a first run and rewritten in place in a second went unseen.

Each attack plants from inside a real sandbox a checkout `sub` registered as a gitlink in the top
repository's (writable) index, whose git dir sets `core.fsmonitor`; then the HOST runs `git status` at the
top as a user would (it recurses into `sub`), and the test checks from outside that the payload did not run
and that the config was reported moved aside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import policy_from_dict
from supervisor import SandboxSetupError, Supervisor
from tests.kernel.test_attack_git import SH, host_git, make_repo, payload, plant, policy

pytestmark = pytest.mark.kernel

SETUP = (
    "git init -q --separate-git-dir={gitdir} sub && git -C sub commit -q --allow-empty -m x && git add sub"
)
FSMONITOR = "git -C sub config core.fsmonitor '{payload}; echo'"


def assert_held(workspace: Path, config: Path, quarantined: tuple[tuple[str, str], ...]) -> None:
    assert str(config) in [p for p, _ in quarantined], quarantined
    assert not config.exists()
    host_git(workspace, "status")
    host_git(workspace / "sub", "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


@pytest.mark.parametrize(
    "gitdir",
    [
        ".git/objects/ev",
        ".git/refs/ev",
        ".git/logs/ev",
        "nested/.git/objects/ab/ev",  # a repository the sandbox made, then hid another's git dir in
        "/".join(["d"] * 70) + "/ev",  # deeper than the scan's recursion
    ],
)
async def test_a_git_dir_hidden_where_the_scan_did_not_look(
    sup: Supervisor, workspace: Path, gitdir: str
) -> None:
    make_repo(workspace)
    prep = "git init -q nested && mkdir -p nested/.git/objects/ab && " if gitdir.startswith("nested") else ""
    if gitdir.startswith("d/"):
        prep = f"mkdir -p {gitdir.rsplit('/', 1)[0]} && "
    r = await plant(
        sup,
        workspace,
        prep + SETUP.format(gitdir=gitdir) + " && " + FSMONITOR.format(payload=payload(workspace)),
    )
    assert_held(workspace, workspace / gitdir / "config", r.quarantined)


async def test_a_config_born_before_the_run_outside_the_mounts_is_checked(
    sup: Supervisor, workspace: Path
) -> None:
    """Run 1 plants a git dir inside a submodule's git dir `m` (the mounts bind only m's own files) with a
    harmless config (nothing to quarantine); run 2 rewrites that config in place (same inode, born
    before run 2) with core.fsmonitor."""
    make_repo(workspace)
    gitdir = ".git/modules/m/objects/ev"
    r1 = await plant(sup, workspace, "git init -q --bare .git/modules/m && " + SETUP.format(gitdir=gitdir))
    assert r1.quarantined == ()
    assert host_git(workspace / "sub", "status").returncode == 0  # git takes it for a repository
    config = workspace / gitdir / "config"
    ino = config.stat().st_ino
    r2 = await plant(
        sup,
        workspace,
        f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n' >> {gitdir}/config",
    )
    assert_held(workspace, config, r2.quarantined)
    assert (workspace / gitdir / "config.corral-quarantined").stat().st_ino == ino  # the same file, moved


async def test_a_submodule_git_dir_whose_head_is_a_symlink_is_refused(
    sup: Supervisor, workspace: Path
) -> None:
    """The same plant with a git dir under .git/modules whose HEAD is a symlink (git accepts one into
    refs/): the mounts' walk would not take it for a git dir to bind, so the next run is refused, naming
    the link to remove, rather than run with its config writable."""
    make_repo(workspace)
    gitdir = ".git/modules/h"
    first = "mkdir .git/modules && " + SETUP.format(gitdir=gitdir)
    first += f" && ln -s refs/heads/master {gitdir}/HEAD.new && mv {gitdir}/HEAD.new {gitdir}/HEAD"
    assert (await plant(sup, workspace, first)).quarantined == ()
    with pytest.raises(SandboxSetupError) as err:
        await plant(sup, workspace, "true")
    assert err.value.path == str(workspace / gitdir / "HEAD")


@pytest.mark.parametrize(
    ("key", "value", "written"),
    [
        ("include.path", "../tools/git.cfg", "tools/git.cfg"),  # a shared config kept in the worktree
        ("includeIf.onbranch:master.path", "../tools/git.cfg", "tools/git.cfg"),
        ("include.path", "../tools/chain.cfg", "tools/git.cfg"),  # chain.cfg includes git.cfg in turn
    ],
)
async def test_a_file_the_users_config_includes(
    sup: Supervisor, workspace: Path, key: str, value: str, written: str
) -> None:
    """The user's own .git/config (bound read-only, born before the run) includes a file in the worktree,
    which the sandbox may write: git reads it as part of the config."""
    make_repo(workspace)
    (workspace / "tools").mkdir()
    (workspace / "tools" / "git.cfg").write_text("[user]\n\tname = Team\n")
    (workspace / "tools" / "chain.cfg").write_text("[include]\n\tpath = git.cfg\n")
    assert host_git(workspace, "config", key, value).returncode == 0
    r = await plant(
        sup, workspace, f"printf '[core]\\n\\tfsmonitor = \"{payload(workspace)}; echo\"\\n' >> {written}"
    )
    assert [p for p, _ in r.quarantined] == [str(workspace / written)], r.quarantined
    assert "included by" in r.quarantined[0][1]
    host_git(workspace, "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


async def test_an_included_file_reached_through_a_planted_symlink_is_moved_aside(
    sup: Supervisor, workspace: Path
) -> None:
    """git follows the link; it was only reported ("review it"): the link made during the run is moved
    aside now (tests/kernel/test_attack_git_moved.py has the payload variants)."""
    make_repo(workspace)
    (workspace / "tools").mkdir()
    (workspace / "tools" / "git.cfg").write_text("[user]\n\tname = Team\n")
    assert host_git(workspace, "config", "include.path", "../tools/git.cfg").returncode == 0
    r = await plant(sup, workspace, "mkdir real && mv tools/git.cfg real/ && rmdir tools && ln -s real tools")
    assert [p for p, _ in r.quarantined] == [str(workspace / "tools")], r.quarantined
    assert not (workspace / "tools").is_symlink()


@pytest.mark.parametrize("where", [".githooks", "tools/hooks"])
async def test_a_configured_hooks_path_missing_when_the_run_starts(
    sup: Supervisor, workspace: Path, where: str
) -> None:
    """The user's .git/config names core.hooksPath (husky-style) before the directory exists: the mounts
    had nothing to bind, the sandbox makes it and puts a pre-commit hook there; the user's next commit ran
    it. The hooks written there are quarantined now; an existing configured directory stays protected
    (bound read-only) and its user-made hooks untouched."""
    make_repo(workspace)
    assert host_git(workspace, "config", "core.hooksPath", where).returncode == 0
    hook = f"{where}/pre-commit"
    r = await plant(
        sup,
        workspace,
        f"mkdir -p {where} && printf '#!/bin/sh\\n{payload(workspace)}\\n' > {hook} && chmod +x {hook}",
    )
    assert [p for p, _ in r.quarantined] == [str(workspace / hook)], r.quarantined
    assert host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user").returncode == 0
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"
    # The directory exists now: later runs cannot write it, and the user's own hook there is kept.
    (workspace / where / "post-commit").write_text("#!/bin/sh\ntrue\n")
    r = await sup.run([SH, "-c", f"echo x > {where}/pre-push"], policy=policy(workspace))
    assert r.exit_code != 0
    assert r.quarantined == ()
    assert (workspace / where / "post-commit").exists()


async def test_a_policy_file_protecting_another_path_keeps_the_git_protection(
    sup: Supervisor, workspace: Path
) -> None:
    """`protected = [".env"]` in a policy file replaced the profile's list: .git/hooks became writable and
    the post-run scan (which runs only for policies protecting .git) was off, so a planted pre-commit hook
    ran at the user's next commit. The file's list now adds to the profile's."""
    make_repo(workspace)
    (workspace / ".env").write_text("A=1\n")
    pol = policy_from_dict(
        {"profile": "workspace-write", "filesystem": {"protected": [".env"]}, "resources": {"timeout": 30}},
        workdir=str(workspace),
    )
    hook = workspace / ".git" / "hooks" / "pre-commit"
    r = await sup.run(
        [
            SH,
            "-c",
            f"printf '#!/bin/sh\\n{payload(workspace)}\\n' > {hook}; chmod +x {hook}; echo B=2 > .env",
        ],
        policy=pol,
    )
    assert r.exit_code != 0
    assert not hook.exists()
    assert (workspace / ".env").read_text() == "A=1\n"
    assert host_git(workspace, "commit", "-q", "--allow-empty", "-m", "user").returncode == 0
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"
