"""The `corral run` contract of DESIGN.md, as a script reads it: the --json record has every documented field,
with its documented type, however the run ends: the command's own exit, a limit kill, and the exit statuses
corral chooses itself (127 not found, 126 not executable or forbidden by the rules, 125 a bad policy or a
setup failure), whose `error` then says why. `exit_code` in the record is always corral's exit status."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")

#: DESIGN.md, "The CLI contract": each field of the --json object and its JSON type(s).
CONTRACT_FIELDS: dict[str, tuple[type, ...]] = {
    "exit_code": (int,),
    "signal": (int, type(None)),
    "violation": (dict, type(None)),
    "duration_s": (float, int),
    "cpu_s": (float, int),
    "peak_memory_bytes": (int,),
    "enforced": (list,),
    "denials": (list,),
}
VIOLATION_KINDS = {"memory", "pids", "wall_time", "cpu_time", "fds", "output", "disk"}


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"contract-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def corral(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def record(path: Path, status: int) -> dict[str, object]:
    """The --json record at `path`, checked against the contract: every field, its type, `exit_code` equal
    to corral's exit `status`, the violation's shape, and `error` (null, or an object with type/message)."""
    assert path.exists(), f"no --json record after exit {status}"
    rec: dict[str, object] = json.loads(path.read_text())
    for name, types in CONTRACT_FIELDS.items():
        assert name in rec, f"--json lacks {name!r}"
        assert isinstance(rec[name], types), (name, rec[name])
        assert not isinstance(rec[name], bool), (name, rec[name])
    assert rec["exit_code"] == status
    violation = rec["violation"]
    if violation is not None:
        assert isinstance(violation, dict)
        assert set(violation) == {"kind", "limit", "observed"}
        assert violation["kind"] in VIOLATION_KINDS
    for denial in rec["denials"]:  # type: ignore[attr-defined]
        assert set(denial) == {"layer", "operation", "target", "count", "hint"}
    error = rec["error"]
    assert error is None or (isinstance(error, dict) and {"type", "message"} <= set(error))
    return rec


def test_an_ordinary_run_has_every_field_and_a_null_error(ws: Path) -> None:
    p = corral("run", "--json", "r.json", "--", "/bin/sh", "-c", "exit 5", cwd=ws)
    assert p.returncode == 5
    rec = record(ws / "r.json", 5)
    assert rec["error"] is None
    assert rec["signal"] is None
    assert rec["violation"] is None
    assert "seccomp" in rec["enforced"]  # type: ignore[operator]


def test_a_limit_kill_has_every_field(ws: Path) -> None:
    p = corral("run", "--timeout", "0.5", "--json", "r.json", "--", "/bin/sleep", "30", cwd=ws)
    assert p.returncode == 137
    rec = record(ws / "r.json", 137)
    assert rec["violation"] == {"kind": "wall_time", "limit": 0.5, "observed": rec["violation"]["observed"]}  # type: ignore[index]
    assert rec["error"] is None


def test_truncated_output_is_an_output_violation_with_every_field(ws: Path) -> None:
    p = corral("run", "--max-output", "100", "--json", "r.json", "--", "/usr/bin/yes", cwd=ws)
    assert p.returncode == 137
    assert len(p.stdout) + len(p.stderr.split("corral:")[0]) <= 100
    rec = record(ws / "r.json", 137)
    assert rec["violation"]["kind"] == "output"  # type: ignore[index]
    assert rec["violation"]["limit"] == 100  # type: ignore[index]


def test_command_not_found_is_recorded_with_127(ws: Path) -> None:
    p = corral("run", "--json", "r.json", "--", "corral-no-such-binary", cwd=ws)
    assert p.returncode == 127
    rec = record(ws / "r.json", 127)
    assert rec["error"] == {
        "type": "CommandNotFoundError",
        "message": "corral-no-such-binary: No such file or directory (ENOENT)",
        "argv0": "corral-no-such-binary",
        "errno": errno.ENOENT,
    }
    assert rec["enforced"] == []
    assert rec["signal"] is None
    assert rec["violation"] is None
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("corral: ")


def test_command_not_executable_is_recorded_with_126(ws: Path) -> None:
    script = ws / "s.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    p = corral("run", "--json", "-", "--", str(script), cwd=ws)
    assert p.returncode == 126
    rec = json.loads(p.stdout)
    (ws / "r.json").write_text(p.stdout)
    record(ws / "r.json", 126)
    assert rec["error"]["type"] == "CommandNotExecutableError"
    assert rec["error"]["errno"] == errno.EACCES


def test_a_forbidden_command_is_recorded_with_126_and_the_decision(ws: Path) -> None:
    rules = ws / "rules.toml"
    rules.write_text('[[rule]]\npattern = ["rm"]\ndecision = "forbidden"\njustification = "no rm here"\n')
    (ws / "keep").write_text("x")
    p = corral("run", "--rules", str(rules), "--json", "r.json", "--", "rm", "keep", cwd=ws)
    assert p.returncode == 126
    assert (ws / "keep").exists()
    rec = record(ws / "r.json", 126)
    assert rec["decision"]["decision"] == "forbidden"  # type: ignore[index]
    assert rec["error"]["type"] == "CommandForbiddenError"  # type: ignore[index]
    assert rec["error"]["justification"] == "no rm here"  # type: ignore[index]
    assert "no rm here" in p.stderr


def test_a_bad_policy_value_is_recorded_with_125(ws: Path) -> None:
    p = corral("run", "--memory", "lots", "--json", "r.json", "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    rec = record(ws / "r.json", 125)
    assert rec["error"]["type"] == "PolicyError"  # type: ignore[index]
    assert rec["error"]["path"] == "memory"  # type: ignore[index]
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_setup_failure_is_recorded_with_125_and_its_layer(ws: Path) -> None:
    # A denied name that is a link to a directory every sandbox needs is refused, not hidden (mounts.py).
    (ws / "libs").symlink_to("/usr")
    (ws / "RAN").unlink(missing_ok=True)
    p = corral("run", "--deny", str(ws / "libs"), "--json", "r.json", "--", "/bin/touch", "RAN", cwd=ws)
    assert p.returncode == 125, p.stderr
    assert not (ws / "RAN").exists()
    rec = record(ws / "r.json", 125)
    error = rec["error"]
    assert isinstance(error, dict)
    assert error["type"] == "SandboxSetupError"
    assert (error["layer"], error["errno"], error["path"]) == ("mounts", errno.ELOOP, str(ws / "libs"))
    assert error["operation"]
    assert error["hint"]


@pytest.mark.parametrize("path", ["/etc/hosts", "/etc/hostname"])
def test_deny_hides_the_files_the_sandbox_replaces(ws: Path, path: str) -> None:
    # The sandbox gets its own /etc/hosts and /etc/hostname; denying one was a setup failure (125).
    p = corral("run", "--deny", path, "--", "/bin/cat", path, cwd=ws)
    assert p.returncode == 1, p.stderr
    assert p.stdout == ""  # hidden: nothing of the host's file, nor of the sandbox's own copy


def test_full_access_writes_its_workdir_and_allow_write_under_tmp() -> None:
    # full-access: "no filesystem confinement". Its private /tmp kept a workdir under /tmp visible but
    # read-only (EROFS), and an --allow-write directory there was not visible at all.
    with tempfile.TemporaryDirectory(prefix="corral-fa-") as work, tempfile.TemporaryDirectory() as other:
        script = f"echo w > made && echo o > {other}/made"
        p = corral(
            "run",
            "--profile",
            "full-access",
            "--allow-write",
            other,
            "--",
            "/bin/sh",
            "-c",
            script,
            cwd=Path(work),
        )
        assert p.returncode == 0, p.stderr
        assert (Path(work) / "made").read_text() == "w\n"
        assert (Path(other) / "made").read_text() == "o\n"


@pytest.mark.parametrize("counted", [[], ["--max-output", "1M"]])
def test_a_reader_that_goes_away_is_sigpipe_141(ws: Path, counted: list[str]) -> None:
    # `corral run [--max-output 1M] -- yes | head -1`: as without corral, the command dies of SIGPIPE. With
    # --max-output corral copies the output itself; its write failed with EPIPE and ended in a traceback.
    with subprocess.Popen(
        [*CORRAL, "run", *counted, "--", "/usr/bin/yes"],
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.read(2) == b"y\n"
        proc.stdout.close()
        assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
        assert b"Traceback" not in proc.stderr.read()


def test_a_missing_interpreter_is_127_and_says_so(ws: Path) -> None:
    # execve's ENOENT for a file that exists: its #! interpreter is missing (as bash: 127). The message named
    # only the file, which is there.
    script = ws / "tool"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    p = corral("run", "--", "./tool", cwd=ws)
    assert p.returncode == 127
    assert "#! line" in p.stderr
    assert p.stderr.count("\n") == 1
