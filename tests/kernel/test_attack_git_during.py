"""What a sandbox writes that the host user's git reads WHILE the sandbox still runs (issue 11, item 3).

The post-run scan (supervisor/_gitscan.py) moves aside what would make the user's git run code, but only
once the run is over; during the run only the read-only mounts hold (the top repository's `.git/config`
and `.git/hooks`, its submodules' and an in-tree `core.hooksPath`). An editor or a shell prompt polls
`git status` all the time, so each case here plants from inside a real sandbox that then waits, the HOST
runs `git status` as the user's editor would while it waits, and the test checks from outside whether the
payload ran. The cases that still run the payload are strict xfails, docs/security.md "Known gaps": each
is moved aside by the scan after the run (checked too), and a fix shows up as a test to un-mark.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor import Result, Supervisor
from tests.kernel.test_attack_git import ENV, GIT, SH, host_git, make_repo, payload, policy

pytestmark = pytest.mark.kernel

FSMONITOR = "printf '[core]\\n\\tfsmonitor = \"{payload}; echo\"\\n'"
PLANTS = {
    # A git dir of the sandbox's and the top repository's `.git/commondir` naming it: git reads its
    # config as the common one, around the read-only `.git/config` mount.
    "top_commondir": "mkdir -p evil/refs evil/objects && cp .git/HEAD evil/ && {fsm} > evil/config && "
    "echo ../evil > .git/commondir",
    # A repository registered as a gitlink in the top repository's writable index: the top's `git status`
    # recurses into it.
    "nested_gitlink": "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && "
    "{fsm} >> sub/.git/config",
    # A file the user's global git config includes, kept in the workdir.
    "global_include": "{fsm} > .gitconfig-work",
}


GAP = pytest.mark.xfail(strict=True, reason="docs/security.md Known gaps: git, during the run")


@pytest.mark.parametrize("case", [pytest.param(c, marks=GAP) for c in PLANTS])
async def test_the_users_git_during_the_run(
    sup: Supervisor, workspace: Path, outside: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(workspace)
    env = dict(ENV)
    if case == "global_include":
        config = outside / "gitconfig"
        config.write_text(f"[include]\n\tpath = {workspace}/.gitconfig-work\n")
        (workspace / ".gitconfig-work").write_text("[user]\n\tname = me\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
        env["GIT_CONFIG_GLOBAL"] = str(config)
    plant = PLANTS[case].format(fsm=FSMONITOR.format(payload=payload(workspace)))
    script = f"{plant} && touch PLANTED && while [ ! -e GO ]; do sleep 0.05; done"
    result: list[Result] = []

    async def run() -> None:
        result.append(await sup.run([SH, "-c", script], policy=policy(workspace)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(30):
            while not (workspace / "PLANTED").exists():  # noqa: ASYNC110 (a file the sandbox makes)
                await anyio.sleep(0.05)
        # The user's editor, while the sandbox runs.
        await anyio.run_process([GIT, "-C", str(workspace), "status"], env=env, check=False)
        ran = (workspace / "MARKER").exists()
        (workspace / "GO").touch()
    assert result[0].exit_code == 0, result[0].stderr
    assert result[0].quarantined, "the scan moved nothing aside after the run"
    (workspace / "MARKER").unlink(missing_ok=True)
    host_git(workspace, "status")
    assert not (workspace / "MARKER").exists(), "after the run"  # the scan's part holds
    assert not ran, "the user's git ran the sandbox's code during the run"
