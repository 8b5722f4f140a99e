"""Names a sandbox chose never reach the caller's terminal raw (issue 11, item 7).

A file or directory name with ESC, CSI (also the one-byte C1 form U+009B), OSC ... BEL, newlines or a
bidirectional override, printed raw in corral's one-line error, rewrites the caller's terminal (title,
screen, colours) or forges extra lines. The names below are planted the way an attacker would: by a command
run in the sandbox first, in its writable workdir; then corral is run on paths that make it name them. The
check is on the bytes corral wrote to stderr: one line, nothing but printable characters.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")

#: Terminal-rewriting payloads: OSC set-title with BEL, CSI clear-screen, the 8-bit CSI, a forged line,
#: a right-to-left override, an undecodable byte.
EVIL = "x\x1b]0;pwned\x07\x1b[2J\u009b31m\nforged: ok\r\u202eevil\udcff"


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"cli-esc-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CORRAL, *(a.encode("utf-8", "surrogateescape") for a in args)],
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )


def assert_one_clean_line(stderr: bytes) -> str:
    """stderr is exactly one line of printable characters (the only control byte: its final newline)."""
    text = stderr.decode("utf-8", "surrogateescape")
    assert text.endswith("\n"), text
    body = text[:-1]
    bad = sorted({f"U+{ord(c):04X}" for c in body if not c.isprintable() or c in "\u2028\u2029"})
    assert not bad, f"control characters reached the terminal: {bad} in {body!r}"
    assert body.startswith("corral: "), body
    return body


def plant(ws: Path, script: str) -> None:
    """Run `script` in a sandbox on `ws` (the attacker's move), with the payload as $1."""
    p = corral("run", "--", "/bin/sh", "-c", script, "sh", EVIL, cwd=ws)
    assert p.returncode == 0, p.stderr


def test_command_name_not_found(ws: Path) -> None:
    p = corral("run", "--", EVIL, cwd=ws)
    assert p.returncode == 127
    body = assert_one_clean_line(p.stderr)
    assert "\\x1b]0;pwned\\x07" in body


def test_planted_command_not_executable(ws: Path) -> None:
    plant(ws, 'mkdir -- "$1" && printf "#!/bin/sh\\n" > "$1/tool" && chmod 644 "$1/tool"')
    p = corral("run", "--", str(ws / EVIL / "tool"), cwd=ws)
    assert p.returncode == 126
    assert_one_clean_line(p.stderr)


def test_planted_workdir_name_in_a_setup_error(ws: Path) -> None:
    # A workdir path under a directory the sandbox named, which then vanished: the mounts layer names it.
    plant(ws, 'mkdir -- "$1"')
    p = corral("run", "--workdir", str(ws / EVIL / "gone"), "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    assert_one_clean_line(p.stderr)


def test_planted_git_module_name(ws: Path) -> None:
    # A submodule git dir whose hooks the next run protects: whatever the outcome, no raw bytes.
    subprocess.run(["git", "init", "-q", str(ws)], check=True, capture_output=True, timeout=30)
    plant(ws, 'mkdir -p -- ".git/modules/$1" && ln -s /nonexistent-corral ".git/modules/$1/hooks"')
    p = corral("run", "--", "/bin/true", cwd=ws)
    if p.returncode != 0:
        assert_one_clean_line(p.stderr)
    else:
        assert b"\x1b" not in p.stderr, p.stderr


def test_policy_value_with_escapes(ws: Path) -> None:
    pol = ws / "p.toml"
    pol.write_text('[filesystem]\nwrite = ["rel\\u001b]0;pwned\\u0007"]\nbogus = "\\u001b[2J"\n')
    p = corral("run", "--policy", str(pol), "--", "/bin/true", cwd=ws)
    assert p.returncode == 125
    assert_one_clean_line(p.stderr)


def test_json_record_has_no_control_bytes(ws: Path) -> None:
    out = ws / "r.json"
    p = corral("run", "--json", str(out), "--", "/bin/sh", "-c", 'printf "%s" "$1" >&2', "sh", EVIL, cwd=ws)
    assert p.returncode == 0
    raw = out.read_bytes()
    assert not [b for b in raw if b < 0x20 and b not in b"\n"], raw
