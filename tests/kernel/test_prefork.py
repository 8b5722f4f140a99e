"""Pre-forked sandboxes: the fork server makes the next sandbox for a policy ahead of its request. Whatever
depends on the state of the filesystem must still be decided at request time, and every pre-forked
sandbox, used or discarded, must be reaped."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel


def _zombies_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return out


async def test_protected_paths_made_after_the_prefork_are_protected(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    # Two runs: the second one leaves a pre-forked sandbox waiting for this policy.
    for _ in range(2):
        assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
    await anyio.run_process(["git", "init", "-q", str(workspace)])
    hooks = workspace / ".git" / "hooks"
    before = sorted(os.listdir(hooks))
    r = await sup.run(
        ["/bin/sh", "-c", "echo evil > .git/hooks/pre-commit; echo x >> .git/config; echo ok > file"],
        policy=pol,
    )
    assert b".git/hooks/pre-commit" in r.stderr
    assert sorted(os.listdir(hooks)) == before
    assert "x" not in (workspace / ".git" / "config").read_text().split()
    assert (workspace / "file").read_text() == "ok\n"


async def test_deny_paths_made_after_the_prefork_are_hidden(sup: Supervisor, workspace: Path) -> None:
    secret = workspace / "secret.txt"
    pol = profiles.workspace_write(workspace, deny=[secret])
    for _ in range(2):
        assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
    secret.write_text("s3cr3t\n")
    r = await sup.run(["/bin/cat", str(secret)], policy=pol)
    assert b"s3cr3t" not in r.stdout


async def test_discarded_sandboxes_are_reaped(workspace: Path) -> None:
    policies = [profiles.workspace_write(workspace, timeout=10 + i) for i in range(7)]
    async with Supervisor() as sup:
        for _ in range(3):
            for pol in policies:  # more policies than the fork server keeps sandboxes for
                assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        # A discarded sandbox is reported with the next reply and reaped then: at most one waits.
        assert len(_zombies_of(os.getpid())) <= 1
    assert _zombies_of(os.getpid()) == []
    # No sandbox init of ours is left at all: every child process of this test process is gone.
    children = [e for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == os.getpid()]
    assert children == []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1
