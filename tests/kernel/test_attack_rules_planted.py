"""A command rule that runs a program in a sandbox of its own (`profile = "full-access"`, a `policy`) must not
run a file a sandbox wrote under that program's name (issue 11: what a sandbox leaves behind must not turn
the host side against the host).

A rule vouches for a program by its name (`mytool`, `./bin/mytool`, the simple command of a shell string).
The sandbox finds it on its PATH, and a caller's PATH often starts inside the workdir (an activated
virtualenv's `.venv/bin`, `node_modules/.bin`, `~/.local/bin` with the home as workdir). A command under
the caller's `workspace-write` policy put its own `bin/mytool` there; the next `mytool`, allowed by the rule
with `profile = "full-access"`, ran that file unconfined: here it wrote a marker outside every writable
root of the caller's policy (as root under a root caller). Such a command is refused now, naming the
program and the writable root; a program found outside the writable roots still gets the rule's sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import profiles
from policies._rules_load import rules_from_dict
from supervisor import CommandForbiddenError, Supervisor

pytestmark = pytest.mark.kernel

RULES = rules_from_dict(
    {
        "default": "prompt",
        "rule": [
            {"pattern": ["mytool"], "decision": "allow", "profile": "full-access"},
            {"pattern": ["cat"], "decision": "allow", "profile": "full-access"},
            {"pattern": ["plain"], "decision": "allow"},
            {"pattern": ["sh"], "decision": "allow"},
        ],
    }
)


def _plant(name: str, marker: Path) -> str:
    """A command that writes bin/`name` in the workdir: a program that writes `marker`."""
    return (
        f"mkdir -p bin && printf '#!/bin/sh\\necho ran-$(id -u) > {marker}\\n' > bin/{name} "
        f"&& chmod 755 bin/{name}"
    )


@pytest.mark.parametrize("how", ["bare", "path", "shell"])
async def test_a_rules_sandbox_is_not_given_to_a_planted_program(
    sup: Supervisor, workspace: Path, outside: Path, how: str
) -> None:
    policy = profiles.workspace_write(workspace, timeout=30)
    env = {"PATH": f"{workspace}/bin:/usr/bin:/bin"}  # an activated virtualenv's bin/ comes first
    marker = outside / "marker"
    r = await sup.run(["/bin/sh", "-c", _plant("mytool", marker)], policy=policy, env=env)
    assert r.exit_code == 0, r.stderr
    # The caller's policy itself cannot write outside (the control for the marker).
    r = await sup.run(["/bin/sh", "-c", f"echo x > {marker}"], policy=policy, env=env)
    assert r.exit_code != 0
    assert not marker.exists()
    cmd = {"bare": ["mytool"], "path": ["./bin/mytool"], "shell": ["sh", "-c", "mytool"]}[how]
    # On main: ran with full access, the marker written outside the caller's roots.
    with pytest.raises(CommandForbiddenError, match="writable root of this policy") as info:
        await sup.run(cmd, policy=policy, env=env, rules=RULES)
    assert not marker.exists(), f"the planted program ran with the rule's sandbox: {marker.read_text()!r}"
    assert str(workspace) in str(info.value)


async def test_a_rules_sandbox_still_runs_a_program_outside_the_writable_roots(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    """The control: `cat` from /usr/bin gets the rule's full access (it reads a file the caller's policy
    may read too; what matters is that it ran under the rule's profile), and a rule without a sandbox of its
    own runs a workdir program under the caller's policy, as before."""
    policy = profiles.workspace_write(workspace, timeout=30)
    env = {"PATH": f"/usr/bin:/bin:{workspace}/bin"}  # the workdir's bin/ after the system's
    r = await sup.run(["cat", str(outside / "canary.txt")], policy=policy, env=env, rules=RULES)
    assert (r.exit_code, r.stdout) == (0, b"host canary\n"), r.stderr
    assert r.decision is not None
    assert r.decision.rule is not None
    assert r.decision.rule.profile == "full-access"
    marker = outside / "plain-marker"
    r = await sup.run(["/bin/sh", "-c", _plant("plain", marker)], policy=policy, env=env)
    assert r.exit_code == 0, r.stderr
    r = await sup.run(["plain"], policy=policy, env=env, rules=RULES)
    assert r.exit_code != 0  # it ran, confined: it could not write outside
    assert not marker.exists()
    assert os.listdir(outside) == ["canary.txt"]


@pytest.mark.parametrize("how", ["env", "prefix", "statement", "chdir"])
async def test_a_rules_sandbox_is_not_given_to_a_command_that_changes_its_path(
    sup: Supervisor, workspace: Path, outside: Path, how: str
) -> None:
    """The caller's PATH is the system's, and `cat` (allowed with full access) is /usr/bin/cat; the command
    itself points PATH (or its directory) at the workdir, where an earlier command wrote its own `cat`. An
    MCP client's model writes both. On main the planted `cat` ran with full access; such a command is
    opaque now (here: prompt, and no approver), and nothing runs."""
    policy = profiles.workspace_write(workspace, timeout=30)
    env = {"PATH": "/usr/bin:/bin"}
    marker = outside / "marker"
    r = await sup.run(["/bin/sh", "-c", _plant("cat", marker)], policy=policy, env=env)
    assert r.exit_code == 0, r.stderr
    cmd = {
        "env": ["env", f"PATH={workspace}/bin:/usr/bin", "cat", "/dev/null"],
        "prefix": ["sh", "-c", f"PATH={workspace}/bin:$PATH cat /dev/null"],
        "statement": ["sh", "-c", f"PATH={workspace}/bin; cat /dev/null"],
        "chdir": ["env", "-C", f"{workspace}/bin", "./cat", "/dev/null"],  # from cwd /usr/bin: /usr/bin/cat
    }[how]
    cwd = "/usr/bin" if how == "chdir" else None
    with pytest.raises(CommandForbiddenError) as info:
        await sup.run(cmd, policy=policy, env=env, rules=RULES, cwd=cwd)
    assert not marker.exists(), f"the planted program ran with the rule's sandbox: {marker.read_text()!r}"
    assert "changes the environment or directory" in info.value.decision.reason
