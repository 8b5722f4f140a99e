"""The CLI refuses policies that would silently mean something else (issue 11, item 8): a system directory
as the workdir or a writable root (exit 125, one line, naming --allow-system-write), `$VAR` and `~user` in a
policy file's paths; it warns for the home directory; a policy file's `deny` adds to the default credential
hiding instead of replacing it (checked from inside a real sandbox)."""

from __future__ import annotations

import os
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
    d = SCRATCH / f"cli-roots-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def corral(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env, check=False
    )


def one_line(p: subprocess.CompletedProcess[str]) -> str:
    # The sweep of cgroups that a supervisor killed elsewhere left (another test's, or another agent's on a
    # shared machine) says so once per cgroup; it is not this run's message.
    lines = [ln for ln in p.stderr.strip().splitlines() if "removed stale cgroup" not in ln]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("corral: ")
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["--workdir", "/"],
        ["--workdir", "/etc"],
        ["--allow-write", "/"],
        ["--allow-write", "/etc"],
        ["--allow-write", "/usr"],
        ["--allow-write", "/usr/local/bin"],
        ["--allow-write", "/var"],
    ],
)
def test_system_roots_are_refused(ws: Path, args: list[str]) -> None:
    p = corral("run", *args, "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    line = one_line(p)
    assert "system directory" in line
    assert "--allow-system-write" in line


def test_running_from_the_root_directory_is_refused(ws: Path) -> None:
    # The default workdir is the current directory.
    p = corral("run", "--", "/bin/true", cwd=Path("/"))
    assert p.returncode == 125
    assert "workdir: / is a system directory" in one_line(p)


def test_explicit_option_allows_it_and_read_only_needs_none(ws: Path) -> None:
    assert (
        corral("run", "--allow-system-write", "--workdir", "/var", "--", "/bin/true", cwd=ws).returncode == 0
    )
    assert (
        corral("run", "--profile", "read-only", "--workdir", "/", "--", "/bin/true", cwd=ws).returncode == 0
    )
    pol = ws / "p.toml"
    pol.write_text('profile = "workspace-write"\nworkdir = "/var"\n[filesystem]\nallow_system_write = true\n')
    assert corral("run", "--policy", str(pol), "--", "/bin/true", cwd=ws).returncode == 0


def test_home_directory_is_a_warning(ws: Path) -> None:
    home = ws / "home"
    home.mkdir()
    p = corral("run", "--workdir", str(home), "--", "/bin/true", cwd=ws, home=home)
    assert p.returncode == 0
    assert "WARNING: workdir is your home directory" in one_line(p)


@pytest.mark.parametrize(
    ("entry", "needle"),
    [("$HOME/.ssh", "not expanded"), ("~root/.ssh", "only '~'"), ("../elsewhere", "climb out")],
)
def test_surprising_policy_paths_are_refused(ws: Path, entry: str, needle: str) -> None:
    pol = ws / "p.toml"
    pol.write_text(f'[filesystem]\ndeny = ["{entry}"]\n')
    p = corral("run", "--policy", str(pol), "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    line = one_line(p)
    assert "filesystem.deny[0]" in line
    assert needle in line


def _home_with_a_key(ws: Path) -> Path:
    home = ws / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / "notes").write_text("notes\n")
    return home


def test_file_deny_adds_to_the_credential_hiding(ws: Path) -> None:
    home = _home_with_a_key(ws)
    pol = ws / "p.toml"
    pol.write_text(f'profile = "workspace-write"\n[filesystem]\ndeny = ["~/notes", "{ws}/p.toml"]\n')
    script = "cat ~/.ssh/id_ed25519; echo key=$?; cat ~/notes; echo notes=$?"
    p = corral("run", "--policy", str(pol), "--", "/bin/sh", "-c", script, cwd=ws, home=home)
    assert p.returncode == 0, p.stderr
    assert "PRIVATE KEY" not in p.stdout  # still hidden: the file's deny ADDED to the defaults
    assert "key=1" in p.stdout
    assert "notes=1" in p.stdout  # `~/notes` is the real home's file, hidden


def test_hide_credentials_false_is_the_named_way_to_drop_them(ws: Path) -> None:
    home = _home_with_a_key(ws)
    pol = ws / "p.toml"
    pol.write_text('profile = "workspace-write"\n[filesystem]\nhide_credentials = false\n')
    p = corral("run", "--policy", str(pol), "--", "/bin/sh", "-c", "cat ~/.ssh/id_ed25519", cwd=ws, home=home)
    assert p.returncode == 0, p.stderr
    assert "PRIVATE KEY" in p.stdout


@pytest.fixture
def system_state() -> Iterator[tuple[Path, Path]]:
    """Two scratch directories of a system state tree: one under /run (the system's runtime state, where
    systemd reads runtime unit files), one root-owned under /var/lib (a service's state), each root's."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to make directories in /run and /var/lib, as a root caller would find them)")
    tag = uuid.uuid4().hex[:10]
    made = [Path(f"/run/corral-test-{tag}"), Path(f"/var/lib/corral-test-{tag}")]
    for d in made:
        d.mkdir(mode=0o755)
    try:
        yield made[0], made[1]
    finally:
        for d in made:
            subprocess.run(["rm", "-rf", str(d)], check=False)


def test_system_state_trees_are_refused_and_nothing_is_written(
    ws: Path, system_state: tuple[Path, Path]
) -> None:
    # /run/systemd/system, /var/lib/dpkg/info, /var/lib/polkit-1 were accepted silently as writable roots: a
    # root caller's sandbox (root) could plant a unit file, a maintainer script or a polkit grant that root
    # runs later. Each is refused now, and the command never ran (checked from outside: no file).
    run_dir, state_dir = system_state
    for target, tree in ((run_dir, "/run"), (state_dir, str(state_dir))):
        p = corral(
            "run", "--allow-write", str(target), "--", "/bin/sh", "-c", f"echo x > {target}/planted", cwd=ws
        )
        assert p.returncode == 125, p.stderr
        assert f"lies in the system directory {tree}" in one_line(p) or "is a system directory" in one_line(p)
        assert not (target / "planted").exists()
    for path in ("/run/systemd/system", "/var/lib/dpkg/info", "/var/lib/apt/lists", "/var/cache/apt"):
        p = corral("run", "--allow-write", path, "--", "/bin/true", cwd=ws)
        assert p.returncode == 125, (path, p.stderr)
        assert "--allow-system-write" in one_line(p)
    # The named choice still allows it, and writes.
    p = corral("run", "--allow-system-write", "--allow-write", str(run_dir), "--", "/bin/sh", "-c",
               f"echo x > {run_dir}/planted", cwd=ws)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (run_dir / "planted").read_text() == "x\n"


def test_a_services_own_state_directory_is_an_ordinary_workdir(
    ws: Path, system_state: tuple[Path, Path]
) -> None:
    # A CI account's home under /var/lib (owned by that account, not root) stays a place for work.
    _, state_dir = system_state
    os.chown(state_dir, 65534, 65534)
    p = corral("run", "--workdir", str(state_dir), "--", "/bin/sh", "-c", "echo x > made", cwd=ws)
    assert p.returncode == 0, p.stderr
    assert (state_dir / "made").read_text() == "x\n"


@pytest.mark.parametrize(
    "args", [["--workdir", "/"], ["--allow-write", "/etc"], ["--allow-write", "/run/lock"]]
)
def test_corral_mcp_refuses_a_system_root_before_serving(ws: Path, args: list[str]) -> None:
    # It used to start, tell its client "commands may write only /" and refuse every call.
    p = subprocess.run(
        [*CORRAL, "mcp", *args], cwd=ws, input="", capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 125, p.stderr
    line = one_line(p)
    assert "--allow-system-write" in line
    assert "serving" not in p.stderr


def test_corral_mcp_warns_for_the_home_directory_at_its_start(ws: Path) -> None:
    home = ws / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home))
    p = subprocess.run(
        [*CORRAL, "mcp", "--workdir", str(home)], cwd=ws, input="", capture_output=True, text=True,
        timeout=60, check=False, env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "WARNING: workdir is your home directory" in p.stderr.split("serving")[0]


@pytest.mark.parametrize("entry", [".config", ".config/autostart", ".local/bin", ".bashrc", ".gitconfig"])
def test_the_homes_start_up_files_as_a_writable_root_are_a_warning(ws: Path, entry: str) -> None:
    # `--allow-write ~/.config` (or ~/.bashrc, ~/.local/bin) was accepted without a word, where the home
    # itself warns: the sandbox wrote what the login shell, the desktop session or git runs next (checked from
    # outside: the file it wrote is there).
    home, work = ws / "home", ws / "work"
    work.mkdir()
    target = home / entry
    is_file = entry in (".bashrc", ".gitconfig")
    (target.parent if is_file else target).mkdir(parents=True, exist_ok=True)
    if is_file:
        target.write_text("# the user's\n")
    written = target if is_file else target / "planted"
    script = f"echo planted >> {written}"
    p = corral("run", f"--allow-write=~/{entry}", "--", "/bin/sh", "-c", script, cwd=work, home=home)
    assert p.returncode == 0, p.stderr
    line = one_line(p)
    assert "WARNING" in line
    assert "start-up configuration in your home" in line
    assert "planted" in written.read_text()
    # A project directory in the home is not one.
    (home / "proj").mkdir()
    p = corral("run", "--allow-write=~/proj", "--", "/bin/true", cwd=work, home=home)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "" or "WARNING" not in p.stderr


def test_a_writable_root_that_is_hidden_is_a_warning(ws: Path) -> None:
    # `--allow-write ~/.ssh` was accepted without a word, and the credential hiding kept the sandbox from
    # writing there (checked from outside: nothing written): the policy meant less than it said.
    home, work = ws / "home", ws / "work"
    (home / ".ssh").mkdir(parents=True)
    work.mkdir()
    script = "echo key >> ~/.ssh/authorized_keys"
    p = corral("run", "--allow-write=~/.ssh", "--", "/bin/sh", "-c", script, cwd=work, home=home)
    assert "WARNING" in p.stderr
    assert "is hidden" in p.stderr
    assert not (home / ".ssh" / "authorized_keys").exists()
