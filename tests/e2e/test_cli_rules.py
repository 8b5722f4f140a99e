"""`corral run --rules` and `corral check` end to end (README, "Command rules"; docs/rules.md): exit statuses,
the one stderr line of a refusal, the --json records, and both file formats."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "rules"

CODEX = """
prefix_rule(
    pattern = ["touch"],
    decision = "forbidden",
    justification = "Use `install -m 644` instead.",
    match = ["touch a"],
)
prefix_rule(pattern = ["mkdir"], decision = "prompt", justification = "A person decides.")
prefix_rule(pattern = [["echo", "/bin/true"]], match = [["echo", "hi"]])
"""

TOML = """
default = "allow"
[[rule]]
name = "no-touch"
pattern = ["touch"]
decision = "forbidden"
justification = "Use `install -m 644` instead."
"""


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"cli-rules-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    (d / "agent.rules").write_text(CODEX)
    (d / "agent.toml").write_text(TOML)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("rules", ["agent.rules", "agent.toml"])
def test_run_forbidden_exits_126_with_the_justification_on_one_line(ws: Path, rules: str) -> None:
    p = corral("run", "--rules", rules, "--json", "out.json", "--", "touch", "made", cwd=ws)
    assert p.returncode == 126
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("corral: touch: forbidden")
    assert "Use `install -m 644` instead." in lines[0]
    assert not (ws / "made").exists()


def test_run_shell_script_with_a_forbidden_part_is_refused(ws: Path) -> None:
    p = corral("run", "--rules", "agent.rules", "--", "bash", "-lc", "echo hi; touch made", cwd=ws)
    assert p.returncode == 126
    assert "forbidden" in p.stderr
    assert not (ws / "made").exists()


def test_run_prompt_without_approver_exits_126(ws: Path) -> None:
    p = corral("run", "--rules", "agent.rules", "--", "mkdir", "d", cwd=ws)
    assert p.returncode == 126
    assert "needs approval" in p.stderr
    assert "no approver" in p.stderr
    assert not (ws / "d").exists()


def test_run_allowed_runs_and_records_the_decision(ws: Path) -> None:
    p = corral("run", "--rules", "agent.rules", "--json", "out.json", "--", "echo", "hi", cwd=ws)
    assert (p.returncode, p.stdout) == (0, "hi\n")
    record = json.loads((ws / "out.json").read_text())
    assert record["decision"]["decision"] == "allow"
    assert record["decision"]["rule"]["name"] == "prefix_rule #3"


def test_run_without_rules_records_no_decision(ws: Path) -> None:
    p = corral("run", "--json", "out.json", "--", "/bin/true", cwd=ws)
    assert p.returncode == 0
    assert json.loads((ws / "out.json").read_text())["decision"] is None


@pytest.mark.parametrize(
    ("command", "code", "decision"),
    [
        (["echo", "hi"], 0, "allow"),
        (["mkdir", "x"], 1, "prompt"),
        (["touch", "x"], 2, "forbidden"),
        (["bash", "-lc", "echo hi && touch x"], 2, "forbidden"),
        (["bash", "-lc", "echo $(touch x)"], 2, "forbidden"),
        (["bash", "-lc", "echo $(date)"], 1, "prompt"),
        (["ls"], 1, "prompt"),
    ],
)
def test_check_prints_the_decision_and_the_rule(
    ws: Path, command: list[str], code: int, decision: str
) -> None:
    p = corral("check", "--rules", "agent.rules", "--", *command, cwd=ws)
    assert p.returncode == code, p.stderr
    assert p.stdout.splitlines()[0] == f"decision: {decision}"
    assert p.stdout.splitlines()[1].startswith("rule: ")
    j = corral("check", "--json", "--rules", "agent.rules", "--", *command, cwd=ws)
    assert j.returncode == code
    record = json.loads(j.stdout)
    assert record["decision"] == decision
    assert set(record) >= {
        "decision",
        "rule",
        "reason",
        "justification",
        "matched_rules",
        "commands",
        "opaque",
    }


def test_check_names_the_rule_and_its_justification(ws: Path) -> None:
    p = corral("check", "--rules", "agent.rules", "--", "/usr/bin/touch", "x", cwd=ws)
    assert p.returncode == 2
    assert "rule: prefix_rule #1 `touch` (forbidden)" in p.stdout
    assert "justification: Use `install -m 644` instead." in p.stdout


def test_check_combines_files_strictest_wins(ws: Path) -> None:
    (ws / "deny-echo.toml").write_text('[[rule]]\npattern = ["echo"]\ndecision = "forbidden"\n')
    p = corral("check", "--rules", "agent.rules", "--rules", "deny-echo.toml", "--", "echo", "hi", cwd=ws)
    assert p.returncode == 2


@pytest.mark.parametrize(
    "content",
    [
        'prefix_rule(pattern=["git", "push"], match=["git pull"])\n',
        "prefix_rule(pattern=[\n",
    ],
)
def test_check_bad_rules_file_exits_125_with_one_line(ws: Path, content: str) -> None:
    (ws / "bad.rules").write_text(content)
    for sub in (
        ["check", "--rules", "bad.rules", "--", "git", "push"],
        ["run", "--rules", "bad.rules", "--", "true"],
    ):
        p = corral(*sub, cwd=ws)
        assert p.returncode == 125, p.stderr
        assert len(p.stderr.splitlines()) == 1
        assert "bad.rules" in p.stderr


def test_check_missing_file_and_missing_rules_flag_exit_125(ws: Path) -> None:
    assert corral("check", "--rules", "none.rules", "--", "ls", cwd=ws).returncode == 125
    assert corral("check", "--", "ls", cwd=ws).returncode == 125


@pytest.mark.parametrize("name", ["agent.rules", "agent.toml"])
def test_the_example_files_check(ws: Path, name: str) -> None:
    p = corral("check", "--rules", str(EXAMPLES / name), "--", "git", "status", cwd=ws)
    assert p.returncode == 0, p.stdout + p.stderr
    p = corral("check", "--rules", str(EXAMPLES / name), "--", "git", "push", "origin", "main", cwd=ws)
    assert p.returncode == 1
