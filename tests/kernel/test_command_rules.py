"""Command rules in the engine (docs/rules.md, "In the API"): a forbidden command never starts (its effect is
checked from outside), a prompt waits for the approver, every decision is in the Result, the event stream
and the totals the exporter reads, and a rule's profile is the sandbox the command really runs in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from exporters import attach_metrics
from policies import CommandDecision, load_rules, profiles, rules_from_dict, rules_from_starlark
from supervisor import CommandForbiddenError, CorralError, Event, Supervisor

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)
ROOT = Path(__file__).resolve().parents[2]

RULES = rules_from_starlark(
    """
prefix_rule(pattern=["touch"], decision="forbidden", justification="Use `install -m 644` instead.",
            match=["touch x"])
prefix_rule(pattern=["mkdir"], decision="prompt", justification="New directories need a person.")
prefix_rule(pattern=[["/bin/true", "true", "echo"]])
""",
    source="test.rules",
)


async def test_forbidden_raises_and_nothing_runs(workspace: Path) -> None:
    marker = workspace / "made-by-touch"
    async with Supervisor(rules=RULES) as sup:
        with pytest.raises(CommandForbiddenError) as err:
            await sup.run(["touch", str(marker)], policy=profiles.workspace_write(workspace))
        # Inside a shell script, after an allowed command, it is refused just the same.
        with pytest.raises(CommandForbiddenError):
            await sup.run(
                ["bash", "-c", f"true && touch {marker}"], policy=profiles.workspace_write(workspace)
            )
        assert sup.children == frozenset()
        assert sup.totals["started"] == 0
        assert sup.totals["decision:forbidden"] == 2
    assert not marker.exists()
    e = err.value
    assert isinstance(e, CorralError)
    assert e.exit_code == 126
    assert e.justification == "Use `install -m 644` instead."
    assert e.rule is not None
    assert e.rule.name == "prefix_rule #1"
    assert "\n" not in str(e)
    assert "Use `install -m 644` instead." in str(e)


async def test_allowed_command_runs_with_its_decision_in_the_result(workspace: Path) -> None:
    async with Supervisor(rules=RULES) as sup:
        result = await sup.run(["echo", "hi"], policy=profiles.workspace_write(workspace))
    assert result.stdout == b"hi\n"
    assert result.decision is not None
    assert result.decision.decision == "allow"
    assert result.decision.rule is not None
    assert result.decision.rule.programs == ("/bin/true", "true", "echo")
    assert result.to_json()["decision"]["decision"] == "allow"  # type: ignore[index]


async def test_prompt_asks_the_approver(workspace: Path) -> None:
    asked: list[CommandDecision] = []

    async def yes(d: CommandDecision) -> bool:
        asked.append(d)
        await anyio.lowlevel.checkpoint()
        return True

    async def no(d: CommandDecision) -> bool:
        asked.append(d)
        return False

    async with Supervisor(rules=RULES, approver=no) as sup:
        with pytest.raises(CommandForbiddenError) as err:
            await sup.run(["mkdir", str(workspace / "denied")], policy=profiles.workspace_write(workspace))
        assert err.value.approval == "the approver denied it"
        # The call's approver is asked instead of the supervisor's.
        result = await sup.run(
            ["mkdir", str(workspace / "approved")], policy=profiles.workspace_write(workspace), approver=yes
        )
        assert result.exit_code == 0
        assert result.decision is not None
        assert result.decision.decision == "prompt"
    assert [d.argv[0] for d in asked] == ["mkdir", "mkdir"]
    assert asked[0].justification == "New directories need a person."
    assert not (workspace / "denied").exists()
    assert (workspace / "approved").is_dir()


async def test_prompt_without_approver_is_refused(workspace: Path) -> None:
    async with Supervisor(rules=RULES) as sup:
        with pytest.raises(CommandForbiddenError) as err:
            await sup.run(["mkdir", str(workspace / "d")], policy=profiles.workspace_write(workspace))
    assert err.value.approval == "no approver was given"
    assert not (workspace / "d").exists()


async def test_an_approver_that_fails_or_is_cancelled_starts_nothing(workspace: Path) -> None:
    async def broken(d: CommandDecision) -> bool:
        raise RuntimeError("approval service down")

    async def slow(d: CommandDecision) -> bool:
        await anyio.sleep(60)
        return True

    async with Supervisor(rules=RULES) as sup:
        with pytest.raises(RuntimeError, match="approval service down"):
            await sup.run(
                ["mkdir", str(workspace / "a")], policy=profiles.workspace_write(workspace), approver=broken
            )
        with anyio.move_on_after(0.2):
            await sup.run(
                ["mkdir", str(workspace / "b")], policy=profiles.workspace_write(workspace), approver=slow
            )
        assert sup.totals["started"] == 0
    assert not (workspace / "a").exists()
    assert not (workspace / "b").exists()


async def test_call_rules_and_supervisor_rules_the_stricter_wins(workspace: Path) -> None:
    strict = rules_from_dict({"default": "allow", "rule": [{"pattern": ["echo"], "decision": "forbidden"}]})
    async with Supervisor(rules=RULES) as sup:
        with pytest.raises(CommandForbiddenError):
            await sup.run(["echo", "x"], policy=profiles.workspace_write(workspace), rules=strict)
        loose = rules_from_dict({"default": "allow"})
        with pytest.raises(CommandForbiddenError):  # the supervisor's still forbid touch
            await sup.run(["touch", "x"], policy=profiles.workspace_write(workspace), rules=loose)
    async with Supervisor() as sup:  # per call only
        result = await sup.run(["/bin/true"], policy=profiles.workspace_write(workspace), rules=loose)
        assert result.decision is not None
        assert result.decision.decision == "allow"
        plain = await sup.run(["/bin/true"], policy=profiles.workspace_write(workspace))
        assert plain.decision is None


async def test_decisions_reach_the_event_stream_and_the_exporter(workspace: Path) -> None:
    events: list[Event] = []

    async def approve(d: CommandDecision) -> bool:
        return True

    registry = CollectorRegistry()
    async with Supervisor(rules=RULES, approver=approve) as sup, attach_metrics(sup, registry=registry):
        with sup.subscribe() as stream:
            await sup.run(["/bin/true"], policy=profiles.workspace_write(workspace))
            await sup.run(["mkdir", str(workspace / "m")], policy=profiles.workspace_write(workspace))
            with pytest.raises(CommandForbiddenError):
                await sup.run(["touch", "x"], policy=profiles.workspace_write(workspace))
            while True:
                try:
                    events.append(stream.receive_nowait())
                except anyio.WouldBlock:
                    break

        def value(decision: str) -> float | None:
            return registry.get_sample_value("corral_command_decisions_total", {"decision": decision})

        assert (value("allow"), value("prompt"), value("forbidden")) == (1, 1, 1)
    decisions = [e for e in events if e.kind == "decision"]
    assert [(e.decision.decision if e.decision else None, e.approved) for e in decisions] == [
        ("allow", None),
        ("prompt", True),
        ("forbidden", None),
    ]
    assert all(e.child is None for e in decisions)
    # Decisions come before the child's own events.
    kinds = [e.kind for e in events]
    assert kinds.index("decision") < kinds.index("started")


async def test_a_rules_profile_is_the_sandbox_the_command_runs_in(workspace: Path) -> None:
    """`python3` is allowed only under read-only: its write into the (writable) workdir fails inside."""
    rules = rules_from_dict(
        {"default": "allow", "rule": [{"pattern": [PY], "profile": "read-only", "match": [[PY, "-c", "1"]]}]}
    )
    script = f"open({str(workspace / 'w')!r}, 'w').write('x')"
    async with Supervisor(rules=rules) as sup:
        confined = await sup.run(
            [PY, "-c", script], policy=profiles.workspace_write(workspace, memory="256M")
        )
        assert confined.exit_code != 0
        assert b"Read-only file system" in confined.stderr or b"Permission denied" in confined.stderr
        assert not (workspace / "w").exists()
        # The same command without the rule's profile (another program name) writes.
        free = await sup.run(
            ["/bin/sh", "-c", f"echo x > {workspace / 'w2'}"], policy=profiles.workspace_write(workspace)
        )
        assert free.exit_code == 0
    assert (workspace / "w2").exists()


async def test_the_example_rule_files_run(workspace: Path) -> None:
    for name in ("agent.rules", "agent.toml"):
        rules = load_rules(ROOT / "examples" / "rules" / name)
        async with Supervisor(rules=rules) as sup:
            ok = await sup.run(["echo", "ok"], policy=profiles.workspace_write(workspace))
            assert ok.stdout == b"ok\n"
            with pytest.raises(CommandForbiddenError):
                await sup.run(
                    ["bash", "-lc", "git status; curl x | sh"], policy=profiles.workspace_write(workspace)
                )


async def test_rules_must_be_command_rules() -> None:
    with pytest.raises(TypeError):
        Supervisor(rules=["ls"])  # type: ignore[arg-type]
