"""`corral run --json FILE`: the file is opened before the command starts and written through that fd, so
what the command leaves at the path (a symlink to a host file, a FIFO) is never what corral (root, here)
writes through; a path that is already wrong is refused with 125 before the command runs; `-` is stdout.

Every attack runs a real sandboxed command in the workdir that holds the --json path (the natural way to use
it); the victim is a host file outside the workdir, checked from outside.
"""

from __future__ import annotations

import json
import os
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
VICTIM_TEXT = "host file, must not change\n"


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"json-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A host file outside the workdir that root could be tricked into overwriting."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    p = SCRATCH / f"victim-{uuid.uuid4().hex[:10]}"
    p.write_text(VICTIM_TEXT)
    yield p
    p.unlink(missing_ok=True)


def corral(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("how", ["symlink", "hardlink_attempt", "fifo", "rename_over"])
def test_command_cannot_redirect_the_json_write(ws: Path, victim: Path, how: str) -> None:
    """The command replaces out.json during the run; corral's write goes to the file it opened before."""
    plant = {
        "symlink": f"rm -f out.json && ln -s {victim} out.json",
        # The victim is outside the writable roots: the link fails, the command replaces the name anyway.
        "hardlink_attempt": f"rm -f out.json && (ln {victim} out.json 2>/dev/null"
        f" || ln -s {victim} out.json)",
        "fifo": "rm -f out.json && mkfifo out.json",
        "rename_over": f"ln -s {victim} tmp.lnk && mv -f tmp.lnk out.json",
    }[how]
    p = corral(
        "run", "--json", "out.json", "--", "/bin/sh", "-c", plant + " && echo planted", cwd=ws, timeout=30
    )
    assert p.stdout.strip() == "planted", p.stderr
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == VICTIM_TEXT, "root wrote the --json record through what the command left"
    if how != "fifo":
        assert (ws / "out.json").is_symlink()  # what the command left is untouched, not written through


@pytest.mark.parametrize("kind", ["symlink", "dangling_symlink", "fifo", "socket", "directory", "hardlink"])
def test_wrong_json_path_is_refused_before_the_command_runs(ws: Path, victim: Path, kind: str) -> None:
    """What an earlier sandbox left at the path is refused up front: exit 125, one line, nothing run."""
    out = ws / "out.json"
    if kind == "symlink":
        out.symlink_to(victim)
    elif kind == "dangling_symlink":
        out.symlink_to(ws.parent / f"nothing-{uuid.uuid4().hex[:8]}")
    elif kind == "fifo":
        os.mkfifo(out)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(out))
        s.close()
    elif kind == "directory":
        out.mkdir()
    else:
        os.link(victim, out)
    p = corral("run", "--json", "out.json", "--", "/bin/touch", "RAN", cwd=ws, timeout=20)
    assert p.returncode == 125, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "out.json" in p.stderr
    assert not (ws / "RAN").exists(), "the command ran although its --json path was refused"
    assert victim.read_text() == VICTIM_TEXT
    if kind == "dangling_symlink":
        assert not out.resolve().exists(), "root created the symlink's target"


def test_missing_directory_is_refused_before_the_command_runs(ws: Path) -> None:
    p = corral("run", "--json", "no/such/dir/out.json", "--", "/bin/touch", "RAN", cwd=ws, timeout=20)
    assert p.returncode == 125
    assert "no/such/dir" in p.stderr
    assert not (ws / "RAN").exists()


def test_existing_regular_file_is_replaced(ws: Path) -> None:
    out = ws / "out.json"
    out.write_text("x" * 10_000)  # longer than the record: truncated, not overwritten in place
    p = corral("run", "--json", "out.json", "--", "/bin/sh", "-c", "exit 3", cwd=ws)
    assert p.returncode == 3
    assert json.loads(out.read_text())["exit_code"] == 3


def test_a_command_that_never_ran_is_recorded(ws: Path) -> None:
    p = corral("run", "--json", "out.json", "--", "corral-no-such-binary", cwd=ws)
    assert p.returncode == 127
    rec = json.loads((ws / "out.json").read_text())
    assert (rec["exit_code"], rec["error"]["type"]) == (127, "CommandNotFoundError")


def test_json_dash_writes_to_stdout(ws: Path) -> None:
    p = corral("run", "--json", "-", "--", "/bin/sh", "-c", "exit 4", cwd=ws)
    assert p.returncode == 4
    rec = json.loads(p.stdout)
    assert rec["exit_code"] == 4
    assert not (ws / "-").exists()


def test_json_dash_after_the_commands_output(ws: Path) -> None:
    p = corral("run", "--max-output", "1M", "--json", "-", "--", "/bin/echo", "hello", cwd=ws)
    assert p.returncode == 0
    first, rest = p.stdout.split("\n", 1)
    assert first == "hello"
    assert json.loads(rest)["exit_code"] == 0


def test_quarantined_git_files_are_in_the_record_and_on_stderr(ws: Path) -> None:
    """The post-run git scan's report reaches the CLI's user: --json's `quarantined` and a warning line."""
    hook = "printf '#!/bin/sh\\ntouch MARKER\\n' > .git/hooks/post-commit && chmod +x .git/hooks/post-commit"
    p = corral(
        "run", "--json", "out.json", "--", "/bin/sh", "-c", f"/usr/bin/git init -q . && {hook}", cwd=ws
    )
    assert p.returncode == 0, p.stderr
    rec = json.loads((ws / "out.json").read_text())
    paths = [q["path"] for q in rec["quarantined"]]
    assert paths == [str(ws / ".git" / "hooks" / "post-commit")]
    assert f"git: {ws / '.git' / 'hooks' / 'post-commit'}" in p.stderr
    assert (ws / ".git" / "hooks" / "post-commit.corral-quarantined").exists()
    assert not (ws / ".git" / "hooks" / "post-commit").exists()
