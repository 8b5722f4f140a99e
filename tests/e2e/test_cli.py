"""`corral run` end to end, as users script it: flags, exit statuses, the --json record, stderr lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"cli-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def corral(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_exit_status_is_the_commands_own(ws: Path) -> None:
    p = corral("run", "--", "/bin/sh", "-c", "echo out; exit 42", cwd=ws)
    assert (p.returncode, p.stdout) == (42, "out\n")


def test_killed_by_signal_is_128_plus_n(ws: Path) -> None:
    p = corral("run", "--", "/bin/sh", "-c", "kill -USR1 $$", cwd=ws)
    assert p.returncode == 128 + signal.SIGUSR1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus-flag"], "bogus"),
        (["--network", "sideways"], "network"),
        (["--allow-domain", "https://example.org"], "network_allow[0]"),
        (["--allow-domain", "*.org"], "network_allow[0]"),
        (["--network", "host", "--allow-domain", "example.org"], "network_allow"),
        (["--profile", "nope"], "profile"),
        (["--timeout", "soon"], "timeout"),
    ],
)
def test_bad_options_exit_125_with_one_line(ws: Path, args: list[str], needle: str) -> None:
    p = corral("run", *args, "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("corral: ")
    assert needle in lines[0]


def test_bad_policy_file_exits_125_naming_the_key(ws: Path) -> None:
    pol = ws / "bad.toml"
    pol.write_text('[resources]\nmemory = "lots"\n')
    p = corral("run", "--policy", str(pol), "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    assert "resources.memory" in p.stderr
    assert "lots" in p.stderr
    assert "Traceback" not in p.stderr


def test_not_found_127_not_executable_126(ws: Path) -> None:
    assert corral("run", "--", "corral-no-such-binary", cwd=ws).returncode == 127
    script = ws / "s.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    p = corral("run", "--", str(script), cwd=ws)
    assert p.returncode == 126
    assert "Traceback" not in p.stderr


def test_a_missing_workdir_is_125_naming_it(ws: Path) -> None:
    p = corral("run", "--workdir", str(ws / "missing"), "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    assert "workdir: no such directory" in p.stderr  # the caller's mistake, not a mount failure


def _json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_memory_limit_kills_and_reports(ws: Path) -> None:
    out = ws / "r.json"
    hog = "b = []\nfor i in range(160): b.append(bytearray(8 << 20))\nprint('survived')"
    p = corral("run", "--memory", "64M", "--json", str(out), "--", "/usr/bin/python3", "-c", hog, cwd=ws)
    assert p.returncode == 137
    assert "survived" not in p.stdout
    assert "memory" in p.stderr
    rec = _json(out)
    assert rec["violation"] == {"kind": "memory", "limit": 64 << 20, "observed": rec["violation"]["observed"]}  # type: ignore[index]
    assert rec["peak_memory_bytes"] <= (64 << 20) + (1 << 20)  # type: ignore[operator]


def test_pids_limit_holds_a_fork_storm(ws: Path) -> None:
    out = ws / "r.json"
    storm = "for i in $(seq 100); do sleep 3 & done; wait"
    p = corral("run", "--pids", "20", "--json", str(out), "--", "/bin/sh", "-c", storm, cwd=ws)
    rec = _json(out)
    assert rec["violation"]["kind"] == "pids"  # type: ignore[index]
    assert rec["limit_hits"]["pids"] >= 1  # type: ignore[index]
    assert p.returncode != 0


def test_cpu_time_limit(ws: Path) -> None:
    out = ws / "r.json"
    p = corral(
        "run", "--cpu-time", "1", "--json", str(out), "--", "/usr/bin/python3", "-c", "while 1: pass", cwd=ws
    )
    assert p.returncode == 137
    rec = _json(out)
    assert rec["violation"]["kind"] == "cpu_time"  # type: ignore[index]
    assert 1.0 <= rec["cpu_s"] < 3  # type: ignore[operator]


def test_max_output_cuts_the_stream(ws: Path) -> None:
    out = ws / "r.json"
    p = corral(
        "run",
        "--max-output",
        "1000",
        "--json",
        str(out),
        "--",
        "/bin/sh",
        "-c",
        "yes | head -c 10000000",
        cwd=ws,
    )
    assert p.returncode == 137
    assert len(p.stdout) == 1000
    assert _json(out)["violation"]["kind"] == "output"  # type: ignore[index]


def test_max_fds_is_the_ceiling(ws: Path) -> None:
    code = (
        "import os\nfs = []\ntry:\n    for i in range(1000): fs.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError as e: print(len(fs), e.errno)"
    )
    p = corral("run", "--max-fds", "50", "--", "/usr/bin/python3", "-c", code, cwd=ws)
    assert p.returncode == 0, p.stderr
    count, err = p.stdout.split()
    assert int(count) < 50
    assert int(err) == 24  # EMFILE


def test_cpus_quota(ws: Path) -> None:
    out = ws / "r.json"
    busy = "import time\nt = time.time()\nwhile time.time() - t < 2: pass"
    p = corral("run", "--cpus", "0.25", "--json", str(out), "--", "/usr/bin/python3", "-c", busy, cwd=ws)
    assert p.returncode == 0
    rec = _json(out)
    ratio = rec["cpu_s"] / rec["duration_s"]  # type: ignore[operator]
    assert 0.15 < ratio < 0.4


def test_json_record_and_timeout(ws: Path) -> None:
    out = ws / "r.json"
    p = corral("run", "--timeout", "0.5", "--json", str(out), "--", "/bin/sleep", "30", cwd=ws)
    assert p.returncode == 137
    assert "wall_time" in p.stderr
    rec = json.loads(out.read_text())
    assert set(rec) >= {
        "exit_code",
        "signal",
        "violation",
        "duration_s",
        "cpu_s",
        "peak_memory_bytes",
        "enforced",
    }
    assert rec["exit_code"] == 137
    assert rec["signal"] == signal.SIGKILL
    assert rec["violation"]["kind"] == "wall_time"
    assert rec["violation"]["limit"] == 0.5
    assert rec["violation"]["observed"] >= 0.5
    assert rec["duration_s"] < 10
    assert "landlock_fs" in rec["enforced"]
    assert "seccomp" in rec["enforced"]


def test_json_for_a_clean_exit(ws: Path) -> None:
    out = ws / "r.json"
    p = corral("run", "--json", str(out), "--", "/bin/sh", "-c", "exit 3", cwd=ws)
    assert p.returncode == 3
    rec = json.loads(out.read_text())
    assert (rec["exit_code"], rec["signal"], rec["violation"]) == (3, None, None)


def test_default_profile_writes_workdir_only(ws: Path) -> None:
    other = SCRATCH / f"other-{uuid.uuid4().hex[:8]}"
    other.mkdir()
    try:
        p = corral("run", "--", "/bin/sh", "-c", f"echo a > in.txt; echo b > {other}/out.txt", cwd=ws)
        assert p.returncode != 0
        assert (ws / "in.txt").read_text() == "a\n"
        assert not (other / "out.txt").exists()
        p = corral(
            "run", "--allow-write", str(other), "--", "/bin/sh", "-c", f"echo b > {other}/out.txt", cwd=ws
        )
        assert p.returncode == 0, p.stderr
        assert (other / "out.txt").read_text() == "b\n"
    finally:
        subprocess.run(["rm", "-rf", str(other)], check=False)


def test_read_only_profile_and_workdir_flag(ws: Path) -> None:
    p = corral(
        "run",
        "--profile",
        "read-only",
        "--workdir",
        str(ws),
        "--",
        "/bin/sh",
        "-c",
        "pwd; echo x > f",
        cwd=Path("/"),
    )
    assert p.stdout.strip() == str(ws)
    assert p.returncode != 0
    assert not (ws / "f").exists()


def test_deny_hides_a_path(ws: Path) -> None:
    secret = ws / "secret.txt"
    secret.write_text("s3cr3t")
    p = corral("run", "--deny", str(secret), "--", "/bin/cat", str(secret), cwd=ws)
    assert "s3cr3t" not in p.stdout


def test_network_none_and_host(ws: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.setblocking(False)
    port = srv.getsockname()[1]
    code = f"import socket; s=socket.socket(); s.settimeout(1); s.connect(('127.0.0.1', {port}))"
    try:
        p = corral("run", "--", "/usr/bin/python3", "-c", code, cwd=ws)
        assert p.returncode != 0
        with pytest.raises(BlockingIOError):
            srv.accept()
        p = corral("run", "--network", "host", "--", "/usr/bin/python3", "-c", code, cwd=ws)
        assert p.returncode == 0, p.stderr
        conn, _ = srv.accept()
        conn.close()
    finally:
        srv.close()


def test_env_rules(ws: Path) -> None:
    env = dict(os.environ, SERVICE_TOKEN="t0k", PLAIN="p", DB_PASSWORD="pw")
    p = corral("run", "--", "/usr/bin/env", cwd=ws, env=env)
    assert "PLAIN=p" in p.stdout
    assert "t0k" not in p.stdout
    assert "pw" not in p.stdout.replace("PWD", "")
    p = corral("run", "--env", "SERVICE_TOKEN", "--env", "EXTRA=1", "--", "/usr/bin/env", cwd=ws, env=env)
    assert "SERVICE_TOKEN=t0k" in p.stdout
    assert "EXTRA=1" in p.stdout
    p = corral("run", "--clear-env", "--env", "ONLY=1", "--", "/usr/bin/env", cwd=ws, env=env)
    assert p.stdout.split() == ["ONLY=1"]


def test_policy_file_with_flags_on_top(ws: Path) -> None:
    extra = SCRATCH / f"extra-{uuid.uuid4().hex[:8]}"
    extra.mkdir()
    pol = ws / "p.toml"
    pol.write_text(f'profile = "workspace-write"\n[filesystem]\nwrite = ["{extra}"]\n')
    try:
        p = corral("run", "--policy", str(pol), "--", "/bin/sh", "-c", f"echo ok > {extra}/f", cwd=ws)
        assert p.returncode == 0, p.stderr
        assert (extra / "f").read_text() == "ok\n"
    finally:
        subprocess.run(["rm", "-rf", str(extra)], check=False)


def test_signal_to_corral_reaches_the_command(ws: Path) -> None:
    proc = subprocess.Popen(
        [
            *CORRAL,
            "run",
            "--",
            "/bin/sh",
            "-c",
            "trap 'exit 9' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        cwd=ws,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 9


def test_probe_lists_layers(ws: Path) -> None:
    p = corral("probe", cwd=ws)
    assert p.returncode == 0
    assert "landlock" in p.stdout
    assert "user namespace" in p.stdout


def test_bare_corral_prints_help_and_succeeds(ws: Path) -> None:
    r = corral(cwd=ws)
    assert r.returncode == 0, r.stderr
    assert "Usage: corral" in r.stdout
    assert "run" in r.stdout
    assert "probe" in r.stdout


def test_version_from_the_installed_metadata(ws: Path) -> None:
    import importlib.metadata

    r = corral("--version", cwd=ws)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"corral {importlib.metadata.version('corral')}"


def test_python_dash_m_supervisor_is_the_cli(ws: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", "--", "sh", "-c", "exit 7"],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 7, r.stderr


@pytest.mark.parametrize(
    ("flag", "value", "names"),
    [
        ("--pids", "1", "pids: at least 2"),
        ("--max-fds", "8", "max_fds: at least 16"),
        ("--max-fds", "3", "max_fds: at least 16"),
        ("--memory", "100k", "memory: at least 1 MiB"),
    ],
)
def test_limits_too_small_to_start_are_named_before_the_run(
    ws: Path, flag: str, value: str, names: str
) -> None:
    """Below these the command cannot start, and the errors it got (EAGAIN, EMFILE, Landlock's ABI, an init
    that died) blamed something else."""
    r = corral("run", flag, value, "--", "/bin/sh", "-c", "touch ran", cwd=ws)
    assert r.returncode == 125, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert names in lines[0]
    assert not (ws / "ran").exists()


def test_the_smallest_limits_still_run(ws: Path) -> None:
    r = corral("run", "--pids", "2", "--max-fds", "16", "--memory", "1M", "--", "/bin/true", cwd=ws)
    assert r.returncode == 0, r.stderr


def test_a_command_under_the_private_tmp_is_named_with_the_fix(ws: Path, tmp_path: Path) -> None:
    tool = Path("/tmp") / f"corral-venv-{uuid.uuid4().hex[:8]}" / "tool"
    tool.parent.mkdir()
    try:
        tool.write_text("#!/bin/sh\necho tool-ran\n")
        tool.chmod(0o755)
        r = corral("run", "--", str(tool), cwd=ws)
        assert r.returncode == 127
        assert "/tmp is private inside the sandbox" in r.stderr
        assert "--allow-read" in r.stderr
        r = corral("run", "--allow-read", str(tool.parent), "--", str(tool), cwd=ws)
        assert (r.returncode, r.stdout) == (0, "tool-ran\n"), r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(tool.parent)], check=False)


def test_not_executable_blames_an_execute_rule_only_when_there_is_one(ws: Path) -> None:
    script = ws / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = corral("run", "--", str(script), cwd=ws)
    assert r.returncode == 126
    assert "execute rule" not in r.stderr


def test_no_cgroup_flag(ws: Path) -> None:
    r = corral("run", "--no-cgroup", "--memory", "64M", "--", "/bin/true", cwd=ws)
    assert r.returncode == 125
    assert "cgroups are off" in r.stderr
    assert "--best-effort" in r.stderr
    r = corral("run", "--no-cgroup", "--memory", "64M", "--best-effort", "--", "/bin/true", cwd=ws)
    assert r.returncode == 0, r.stderr
    r = corral("run", "--no-cgroup", "--", "/bin/true", cwd=ws)
    assert (r.returncode, r.stderr) == (0, "")


def test_violation_line_in_human_units_and_limit_hits_keys(ws: Path) -> None:
    out = ws / "r.json"
    hog = "b = []\nfor i in range(160): b.append(bytearray(8 << 20))\nprint('survived')"
    p = corral("run", "--memory", "64M", "--json", str(out), "--", "/usr/bin/python3", "-c", hog, cwd=ws)
    assert p.returncode == 137
    assert "corral: killed: memory limit 64 MiB exceeded (observed " in p.stderr
    assert " MiB)" in p.stderr
    rec = _json(out)
    assert set(rec["limit_hits"]) >= {"pids", "memory_oom"}  # type: ignore[arg-type]
    r = corral("run", "--json", str(out), "--", "/bin/true", cwd=ws)
    assert r.returncode == 0
    assert _json(out)["limit_hits"] == {"pids": 0, "memory_oom": 0, "memory_socket": 0, "disk_tmpfs": 0}
    assert _json(out)["refused_abi"] is None


def test_a_pids_limit_hit_is_named_even_when_the_command_survives(ws: Path) -> None:
    script = "for i in $(seq 40); do sleep 1 & done 2>/dev/null; wait; exit 0"
    p = corral("run", "--pids", "8", "--", "/bin/sh", "-c", script, cwd=ws, timeout=60)
    assert p.returncode != 137, p.stderr  # not killed: the kernel refused the forks ("Cannot fork")
    assert "corral: pids limit 8 reached: the kernel refused" in p.stderr
