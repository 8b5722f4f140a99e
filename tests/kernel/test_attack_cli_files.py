"""Files the CLI reads that a sandbox could have replaced (issue 11, item 6): `--rules FILE` and
`--seccomp-profile FILE` kept in the project directory, as the policy file often is.

A first run (a real sandbox, workspace-write on the workdir) replaces each with a FIFO. Before they were
read like the policy file (non-blocking, a regular file only, bounded: policies/_files.py), the next
`corral run --timeout 2` waited in open(2) for a writer, for ever, before any timeout applied. Checked from
outside: the CLI ends within the test's bound with exit status 125 naming the file.
"""

from __future__ import annotations

import os
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


# What the first run plants in each file's place: a link to a host file the sandbox may not choose to show
# (here a TOML/JSON file whose key names a secret); the next run must not read it, and must say which link.
SECRET = "stolen_api_token_4711"


@pytest.mark.parametrize(
    ("command", "option", "name", "target_text"),
    [
        ("run", "--policy", "corral.toml", f'{SECRET} = "x"\n'),
        ("run", "--rules", "rules.toml", f'{SECRET} = "x"\n'),
        ("run", "--seccomp-profile", "seccomp.json", f'{{"defaultAction": "{SECRET}", "syscalls": []}}'),
        ("mcp", "--policy", "corral.toml", f'{SECRET} = "x"\n'),
        ("mcp", "--rules", "rules.toml", f'{SECRET} = "x"\n'),
        ("mcp", "--seccomp-profile", "seccomp.json", f'{{"defaultAction": "{SECRET}", "syscalls": []}}'),
    ],
)
@pytest.mark.parametrize("how", ["file", "directory"])
def test_a_symlink_planted_at_a_file_the_cli_reads(
    workspace: Path, outside: Path, command: str, option: str, name: str, target_text: str, how: str
) -> None:
    """A first run replaces the file (or the directory `conf/` holding it) in the workdir with a symlink to
    a host file outside the sandbox's roots. corral used to read the link's target: its parse error named
    the target's keys (a secret's name here), or a valid target became the next run's policy. Now the CLI
    exits 125 before running anything, names the link and says to give the real path."""
    (outside / name).write_text(target_text)
    if how == "file":
        plant = f"ln -s {outside / name} {name}"
        arg = name
    else:
        plant = f"ln -s {outside} conf"
        arg = f"conf/{name}"
    r = corral(workspace, "run", "--timeout", "20", "--", "/bin/sh", "-c", plant)
    assert r.returncode == 0, r.stderr
    args = [command, option, arg] + (["--timeout", "5", "--", "/bin/true"] if command == "run" else [])
    try:
        proc = corral(workspace, *args, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"corral {command} {option} through a planted link started serving or hung")
    assert proc.returncode == 125, proc.stderr
    assert "symlink" in proc.stderr
    assert "real path" in proc.stderr
    assert str(workspace / arg.split("/")[0]) in proc.stderr  # the link named
    assert SECRET not in proc.stderr  # the target was not read


@pytest.mark.parametrize("plant", ["mkfifo token", "ln -s {outside}/token token"])
def test_a_token_file_replaced_by_a_fifo_or_a_symlink(workspace: Path, outside: Path, plant: str) -> None:
    """`corral mcp --token-file token` with the token kept in the workdir: a first run replaces it with a
    FIFO (the server's start waited in open(2) for ever) or a symlink to a host file whose first line
    the sandbox knows (the server took it as its bearer token). Now the server exits 125 naming the file,
    before serving."""
    (workspace / "token").write_text("s3cret\n")
    (outside / "token").write_text("known-to-the-sandbox\n")
    r = corral(
        workspace,
        "run",
        "--timeout",
        "20",
        "--",
        "/bin/sh",
        "-c",
        "rm token && " + plant.format(outside=outside),
    )
    assert r.returncode == 0, r.stderr
    try:
        proc = corral(workspace, "mcp", "--http", "127.0.0.1:0", "--token-file", "token", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("corral mcp --token-file on a planted file hung or started serving")
    assert proc.returncode == 125, proc.stderr
    assert "--token-file" in proc.stderr


def _corral_home(workspace: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home))
    return subprocess.run(
        [*CORRAL, *args], cwd=workspace, capture_output=True, text=True, timeout=60, check=False, env=env
    )


@pytest.mark.parametrize("option", ["--policy", "--rules", "--seccomp-profile", "--json"])
def test_a_directory_named_tilde_planted_in_the_workdir(workspace: Path, outside: Path, option: str) -> None:
    """`corral run --policy=~/ci.toml` (no shell expands a `~` after `=`, nor a quoted `'~/ci.toml'`) read
    `./~/ci.toml`: a directory literally called `~` in the current directory, which a first run that may
    write the workdir makes, with a full-access policy, rules that allow everything, a profile, or a place
    for the record, in it. `--workdir=~` and `--allow-write=~/x` meant the home, so did the user. Now `~` is
    the home for every file option: the home's read-only policy confines the next run (checked from
    outside: the command could not write the workdir), and the record lands in the home."""
    home = outside / "home"
    home.mkdir()
    (home / "ci.toml").write_text('profile = "read-only"\n')
    (home / "rules.toml").write_text(
        'default = "allow"\n[[rule]]\npattern = ["touch"]\ndecision = "forbidden"\n'
    )
    (home / "seccomp.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdirat", "mkdir"], '
        '"action": "SCMP_ACT_ERRNO"}]}'
    )
    plant = (
        "mkdir '~' && printf 'profile = \"full-access\"\\n' > '~/ci.toml' && "
        "printf 'default = \"allow\"\\n' > '~/rules.toml' && "
        'printf \'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}\' > \'~/seccomp.json\''
    )
    r = corral(workspace, "run", "--timeout", "20", "--", "/bin/sh", "-c", plant)
    assert r.returncode == 0, r.stderr
    assert (workspace / "~" / "ci.toml").is_file()
    value = {"--policy": "~/ci.toml", "--rules": "~/rules.toml", "--seccomp-profile": "~/seccomp.json"}
    value["--json"] = "~/r.json"
    script = "touch made-by-touch; mkdir made-by-mkdir; true"
    p = _corral_home(workspace, home, "run", f"{option}={value[option]}", "--timeout", "20", "--", "/bin/sh",
                     "-c", script)  # fmt: skip
    assert p.returncode in (0, 126), p.stderr
    made = {n for n in ("made-by-touch", "made-by-mkdir") if (workspace / n).exists()}
    if option == "--policy":
        assert made == set(), p.stderr  # the home's read-only policy, not the planted full-access one
    elif option == "--rules":
        assert p.returncode == 126, p.stderr  # the home's rules forbid `touch`... in a shell string
        assert made == set()
    elif option == "--seccomp-profile":
        assert made == {"made-by-touch"}, p.stderr  # the home's profile refuses mkdir
    else:
        assert (home / "r.json").is_file()
        assert not (workspace / "~" / "r.json").exists()


@pytest.mark.parametrize("value", ["~root/ci.toml", "$HOME/ci.toml"])
def test_other_homes_and_variables_in_a_file_option_are_refused(workspace: Path, value: str) -> None:
    p = corral(workspace, "run", f"--policy={value}", "--", "/bin/true")
    assert p.returncode == 125, p.stderr
    assert "expanded" in p.stderr


@pytest.mark.parametrize("option", ["--policy", "--rules", "--seccomp-profile"])
def test_a_socket_planted_at_a_file_the_cli_reads_is_named_and_explained(
    workspace: Path, option: str
) -> None:
    """A first run binds a unix socket where the project's policy (rules, profile) file was. The next run
    exits 125 before running, as for a FIFO, and now says what the path is and what to do about it: it
    used to say only "No such device or address" (open's ENXIO)."""
    (workspace / "conf.toml").write_text('profile = "read-only"\n')
    plant = "import os, socket; os.unlink('conf.toml'); socket.socket(socket.AF_UNIX).bind('conf.toml')"
    r = corral(workspace, "run", "--timeout", "20", "--", sys.executable, "-c", plant)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISSOCK((workspace / "conf.toml").lstat().st_mode)
    proc = corral(workspace, "run", option, "conf.toml", "--timeout", "5", "--", "/bin/true", timeout=30)
    assert proc.returncode == 125, proc.stderr
    assert f"it is a socket ({workspace / 'conf.toml'})" in proc.stderr
    assert "remove it" in proc.stderr
    assert "No such device" not in proc.stderr
