"""Files the CLI reads that a sandbox could have replaced (issue 11, item 6): `--rules FILE` and
`--seccomp-profile FILE` kept in the project directory, as the policy file often is.

A first run (a real sandbox, workspace-write on the workdir) replaces each with a FIFO. Before they were
read like the policy file (non-blocking, a regular file only, bounded: policies/_files.py), the next
`corral run --timeout 2` waited in open(2) for a writer, for ever, before any timeout applied. Checked from
outside: the CLI ends within the test's bound with exit status 125 naming the file.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]


def corral(workspace: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`corral ARGS...` in `workspace`, bounded by `timeout` (raises subprocess.TimeoutExpired)."""
    return subprocess.run(
        [*CORRAL, *args], cwd=workspace, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("option", "name", "content"),
    [
        ("--rules", "rules.toml", 'default = "allow"\n'),
        ("--seccomp-profile", "seccomp.json", '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}'),
    ],
)
def test_a_fifo_planted_at_a_file_the_cli_reads(
    workspace: Path, option: str, name: str, content: str
) -> None:
    (workspace / name).write_text(content)
    plant = corral(workspace, "run", "--timeout", "20", "--", "/bin/sh", "-c", f"rm {name} && mkfifo {name}")
    assert plant.returncode == 0, plant.stderr
    assert stat.S_ISFIFO((workspace / name).lstat().st_mode)
    started = time.monotonic()
    try:
        proc = corral(workspace, "run", option, name, "--timeout", "2", "--", "/bin/true", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"corral run {option} on a planted FIFO did not end in 20 s (--timeout 2)")
    assert time.monotonic() - started < 15
    assert proc.returncode == 125, proc.stderr
    assert name in proc.stderr
    assert "not a regular file" in proc.stderr


def test_a_json_directory_planted_as_a_symlink(workspace: Path, outside: Path) -> None:
    """`--json reports/r.json`, where an earlier run made `reports` a symlink to a host directory (standing
    in for /etc/cron.d): corral (root) created its record there. Now it refuses (125) before running, and
    nothing appears in the link's target; a real directory still works, given relatively or absolutely."""
    plant = corral(workspace, "run", "--timeout", "20", "--", "/bin/ln", "-s", str(outside), "reports")
    assert plant.returncode == 0, plant.stderr
    before = sorted(p.name for p in outside.iterdir())
    for target in ("reports/r.json", str(workspace / "reports" / "r.json")):
        proc = corral(workspace, "run", "--json", target, "--timeout", "20", "--", "/bin/true")
        assert proc.returncode == 125, proc.stderr
        assert "symlink" in proc.stderr
    assert sorted(p.name for p in outside.iterdir()) == before
    (workspace / "real").mkdir()
    for target in ("real/r.json", str(workspace / "real" / "r2.json")):
        proc = corral(workspace, "run", "--json", target, "--timeout", "20", "--", "/bin/true")
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (workspace / "real").iterdir()) == ["r.json", "r2.json"]
