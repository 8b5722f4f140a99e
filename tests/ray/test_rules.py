"""Command rules across the cluster (docs/cluster.md, "Command rules"): decided on the driver before any node
is asked, with a session's and a call's own rules, the approver on the driver, the decision in the Result,
the events and the totals, a rule's profile the sandbox the command really runs in on its node, and kill
rules carried to the node's supervisor. Checked from outside: a refused command leaves no trace on the
nodes (their totals, a marker file it would have made)."""

from __future__ import annotations

import errno
from pathlib import Path

import anyio
import pytest

from policies import CommandDecision, profiles, rules_from_dict
from supervisor import CommandForbiddenError, Rule
from supervisor.ray import NodeSelector, RaySupervisor, RemoteEvent, WorkspaceError
from tests.ray.conftest import WORKSPACES, RayCluster, fresh_namespace

pytestmark = pytest.mark.ray

RULES = rules_from_dict(
    {
        "default": "allow",
        "rule": [
            {"name": "no-touch", "pattern": ["touch"], "decision": "forbidden", "justification": "Not here."},
            {"name": "ask-mkdir", "pattern": ["mkdir"], "decision": "prompt", "justification": "Ask first."},
            {"name": "ro-cp", "pattern": ["cp"], "profile": "read-only", "justification": "cp reads only."},
        ],
    }
)


async def test_forbidden_and_prompt_decided_on_the_driver(ray_cluster: RayCluster, shared_dir: Path) -> None:
    marker = shared_dir / "made"
    asked: list[CommandDecision] = []

    async def approve(decision: CommandDecision) -> bool:
        asked.append(decision)
        return decision.argv[-1].endswith("yes")

    async with RaySupervisor(
        namespace=fresh_namespace(), workspace_root=WORKSPACES, rules=RULES, approver=approve
    ) as sup:
        policy = profiles.workspace_write(str(shared_dir))
        before = await sup.totals()
        seen: list[RemoteEvent] = []
        async with sup.subscribe() as events:
            with pytest.raises(CommandForbiddenError) as err:
                await sup.run(["touch", str(marker)], policy=policy)
            assert err.value.justification == "Not here."
            with pytest.raises(CommandForbiddenError) as err:  # inside a script, just the same
                await sup.run(["sh", "-c", f"true && touch {marker}"], policy=policy)
            with pytest.raises(CommandForbiddenError) as err:
                await sup.run(["mkdir", str(shared_dir / "no")], policy=policy)
            assert err.value.approval == "the approver denied it"
            made = await sup.run(["mkdir", str(shared_dir / "yes")], policy=policy)
            with anyio.fail_after(20):
                async for ev in events:
                    seen.append(ev)
                    if ev.kind == "exited":
                        break
        after = await sup.totals()
    assert not marker.exists()
    assert made.exit_code == 0
    assert (shared_dir / "yes").is_dir()
    assert not (shared_dir / "no").exists()
    assert made.decision is not None
    assert made.decision.decision == "prompt"
    assert made.decision.rule is not None
    assert made.decision.rule.name == "ask-mkdir"
    assert [d.argv[-1] for d in asked] == [str(shared_dir / "no"), str(shared_dir / "yes")]
    # Only the approved mkdir reached a node.
    assert after["started"] - before["started"] == 1
    assert after["decision:forbidden"] == 2
    assert after["decision:prompt"] == 2
    decisions = [(e.decision.decision, e.approved) for e in seen if e.kind == "decision" and e.decision]
    assert decisions == [("forbidden", None), ("forbidden", None), ("prompt", False), ("prompt", True)]
    assert all(e.node_id == "" for e in seen if e.kind == "decision")


async def test_no_approver_refuses_a_prompt(client: RaySupervisor) -> None:
    with pytest.raises(CommandForbiddenError) as err:
        await client.run(["mkdir", "x"], rules=RULES)
    assert err.value.approval == "no approver was given"
    async with client.session() as ws:
        with pytest.raises(CommandForbiddenError):
            await ws.run(["touch", "x"], rules=RULES)
        with pytest.raises(CommandForbiddenError):
            await ws.start(["touch", "x"], rules=RULES)
        with pytest.raises(WorkspaceError) as err:
            await ws.read_file("x")
        assert err.value.errno == errno.ENOENT


async def test_a_rules_profile_is_the_sandbox_on_the_node(client: RaySupervisor) -> None:
    """`cp` is allowed under read-only by its rule: in a writable session it cannot write its copy."""
    async with client.session(policy="workspace-write", rules=RULES) as ws:
        wrote = await ws.run(["sh", "-c", "echo hi > a"])
        assert wrote.exit_code == 0
        assert wrote.decision is not None
        assert wrote.decision.decision == "allow"
        copied = await ws.run(["cp", "a", "b"])
        assert copied.exit_code != 0
        assert copied.decision is not None
        assert copied.decision.rule is not None
        assert copied.decision.rule.name == "ro-cp"
        # A started command is decided the same way, its Result carrying the decision.
        child = await ws.start(["cp", "a", "c"])
        async with child:
            started = await child.wait()
        assert started.exit_code != 0
        assert started.decision is not None
        assert started.decision.rule is not None
        assert started.decision.rule.name == "ro-cp"
        assert await ws.read_file("a") == b"hi\n"
        for name in ("b", "c"):
            with pytest.raises(WorkspaceError) as err:
                await ws.read_file(name)
            assert err.value.errno == errno.ENOENT


async def test_kill_rules_are_carried_to_the_node(client: RaySupervisor) -> None:
    """A kill rule (plain data) reaches the node's supervisor, which samples the child and kills it: a rule on
    the task count, with no pids limit in the policy, reported as the rule's own kind."""
    script = "for i in 1 2 3 4 5 6 7 8; do /bin/sleep 30 & done; wait"
    rule = Rule("pids", 5, samples=2, kind="pids")
    where = NodeSelector(resources={"corral_b": 1})
    result = await client.run(["/bin/sh", "-c", script], rules=[rule], where=where)
    assert result.violation is not None, result
    assert (result.violation.kind, result.violation.limit) == ("pids", 5)
    assert result.exit_code == 137


async def test_a_rules_sandbox_is_not_given_to_a_program_a_session_wrote(
    client: RaySupervisor, shared_dir: Path
) -> None:
    """A rule's `profile` applied on the node (the decision is the driver's): a command of the session's
    workspace-write policy wrote bin/mytool in the workdir, first on the PATH; the next `mytool`, allowed
    with full access, ran that file unconfined and wrote outside the session's roots. Refused now, on the
    node, as a local Supervisor refuses it (tests/kernel/test_attack_rules_planted.py)."""
    rules = rules_from_dict(
        {"default": "allow", "rule": [{"pattern": ["mytool"], "decision": "allow", "profile": "full-access"}]}
    )
    marker = shared_dir / "marker"
    plant = f"mkdir -p bin && printf '#!/bin/sh\\necho ran > {marker}\\n' > bin/mytool && chmod +x bin/mytool"
    async with client.session(policy="workspace-write") as ws:
        planted = await ws.run(["/bin/sh", "-c", plant])
        assert planted.exit_code == 0, planted.stderr
        env = {"PATH": f"{ws.workdir}/bin:/usr/bin:/bin"}
        with pytest.raises(CommandForbiddenError, match="writable root of this policy"):
            await ws.run(["mytool"], rules=rules, env=env)
        with pytest.raises(CommandForbiddenError, match="writable root of this policy"):
            await ws.start(["mytool"], rules=rules, env=env)
    assert not marker.exists(), "the planted program ran with the rule's sandbox on the node"
