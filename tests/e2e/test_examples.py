"""The examples run as documented: the agent runner (fast mode) behaves as it claims, every example policy
file loads and means what its comments say, and the metrics scrape finds corral's metrics."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from policies import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
POLICIES = sorted((EXAMPLES / "policies").glob("*.toml"))


def _load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_runner", EXAMPLES / "agent_runner.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["agent_runner"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


@pytest.mark.kernel
@pytest.mark.slow
def test_agent_runner_fast_mode_behaves_as_expected(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_runner.py"), "--fast", "--plain", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "tool calls behaved as expected" in p.stdout
    assert "metrics   http://127.0.0.1:" in p.stdout  # the endpoint was served while the calls ran
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert report["canary_intact"] is True
    assert report["listener_reached"] is False
    assert "All tests pass" in report["answer"]
    outcomes = {c["id"].split("#")[0]: c["outcome"] for c in report["calls"]}
    assert outcomes["run-tests"] == "error"  # the bug, before the fix
    assert outcomes["rerun-tests"] == "ok"  # after it
    assert outcomes["memory-hog"] == "violation:memory"
    assert outcomes["fork-storm"] == "violation:pids"
    assert outcomes["endless-loop"] == "violation:cpu_time"
    assert outcomes["hung"] == "violation:wall_time"
    for blocked in ("phone-home", "write-outside", "read-secret", "escape"):
        assert outcomes[blocked] == "blocked", blocked
    assert all(c["problem"] is None for c in report["calls"])
    assert report["metrics"], "the final scrape of /metrics returned nothing"
    # The summary table, one row per call, with the columns the issue asks for.
    header = next(line for line in p.stdout.splitlines() if "tool call" in line and "peak mem" in line)
    for column in ("outcome", "violation / blocked by", "time", "CPU"):
        assert column in header
    assert sum(1 for line in p.stdout.splitlines() if line.rstrip().endswith("✓")) == len(report["calls"])


def test_run_command_tool_schema_is_what_model_apis_take() -> None:
    tool = runner.RUN_COMMAND_TOOL
    json.dumps(tool)
    assert tool["name"] == "run_command"
    params = tool["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["command"]
    assert params["properties"]["command"]["type"] == "array"
    assert set(params["properties"]) == {"command", "timeout", "stdin"}


@pytest.mark.parametrize(
    ("stderr", "layer"),
    [
        ("/bin/sh: 1: cannot create /etc/x: Read-only file system", "mount namespace"),
        ("PermissionError: [Errno 13] Permission denied: '/srv/x'", "Landlock"),
        ("ConnectionRefusedError: [Errno 111] Connection refused", "network namespace"),
        ("unshare: unshare failed: Operation not permitted", "seccomp"),
    ],
)
def test_blocked_by_names_the_layer(stderr: str, layer: str) -> None:
    assert runner.blocked_by(stderr)["layer"] == layer


def test_blocked_by_is_none_for_ordinary_failures() -> None:
    assert runner.blocked_by("AssertionError: 2 != 2.5") is None


@pytest.mark.parametrize(
    "args",
    [{}, {"command": []}, {"command": "ls"}, {"command": ["ls"], "timeout": -1}, {"command": ["ls"], "x": 1}],
)
async def test_serve_run_command_rejects_bad_arguments_without_running(args: dict[str, object]) -> None:
    # A bad call never reaches the supervisor: the model gets an "invalid" result to correct.
    result = await runner.serve_run_command(None, args)
    assert result["outcome"] == "invalid"
    assert result["error"]


def test_there_are_example_policies() -> None:
    names = {p.stem for p in POLICIES}
    assert {"review", "pip-cache", "build"} <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policy_loads(path: Path, tmp_path: Path) -> None:
    policy = load_policy(path, workdir=tmp_path)
    assert isinstance(policy, Policy)
    assert policy.workdir == str(tmp_path.resolve())
    r = policy.resources
    assert r.memory, "every example sets memory, pids and timeout limits"
    assert r.pids
    assert r.timeout


def test_review_policy_writes_nowhere(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLES / "policies" / "review.toml", workdir=tmp_path)
    assert policy.profile == "read-only"
    assert policy.filesystem.write == ()
    assert policy.network.mode == "none"


def test_pip_cache_policy_writes_the_workdir_and_the_cache(tmp_path: Path) -> None:
    policy = load_policy(EXAMPLES / "policies" / "pip-cache.toml", workdir=tmp_path)
    cache = dict(policy.environment.set)["PIP_CACHE_DIR"]
    assert policy.filesystem.write == (str(tmp_path.resolve()), cache)


def test_build_policy_has_more_memory_than_the_others(tmp_path: Path) -> None:
    memory = {p.stem: load_policy(p, workdir=tmp_path).resources.memory for p in POLICIES}
    assert memory["build"] == max(memory.values())
    assert load_policy(EXAMPLES / "policies" / "build.toml", workdir=tmp_path).network.mode == "none"


@pytest.mark.kernel
def test_metrics_scrape_prints_corral_metrics() -> None:
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "metrics_scrape.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("serving http://127.0.0.1:")
    assert 'corral_violations_total{kind="memory"} 1.0' in lines
    assert any(line.startswith('corral_child_memory_bytes{name="sleeper"') for line in lines)
    assert any(line.startswith("corral_children_started_total") for line in lines)


@pytest.mark.kernel
def test_the_readme_api_example_runs_as_written(tmp_path: Path) -> None:
    """The README's "API in 30 lines" block, run exactly as printed, from an unrelated directory."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert blocks, "README.md has no Python example"
    script = tmp_path / "readme_example.py"
    script.write_text(blocks[0])
    p = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "no-such-tool: No such file or directory" in p.stdout
    lines = p.stdout.splitlines()
    assert lines[0].split()[0].isdigit()  # the pytest run's exit code came back in a Result
