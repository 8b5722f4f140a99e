"""Paths that are not UTF-8 (a file name is bytes to Linux; Python hands such a name over with surrogate
escapes): a workdir and a writable root named so run like any other, through the API and `corral run`.
The fork server packed every path of a plan as UTF-8 text, and such a workdir failed every run with
"UnicodeEncodeError ... this is a corral bug" (exit 125); paths now go to the init as the bytes they are
(`os.fsencode`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel

NAME = os.fsdecode(b"caf\xe9-\xff")  # Latin-1 bytes, not UTF-8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def odd(tmp_path: Path) -> Path:
    d = tmp_path / NAME
    d.mkdir()
    return d


async def test_a_workdir_whose_name_is_not_utf8(sup: Supervisor, odd: Path, tmp_path: Path) -> None:
    other = tmp_path / (NAME + "-out")
    other.mkdir()
    policy = profiles.workspace_write(odd, allow_write=[str(other)], timeout=20)
    r = await sup.run(["/bin/sh", "-c", f"pwd > where && echo x > '{other}/made'"], policy=policy)
    assert r.exit_code == 0, r.stderr
    assert os.fsencode(odd) + b"\n" == (odd / "where").read_bytes()
    assert (other / "made").read_text() == "x\n"


def test_corral_run_in_a_workdir_whose_name_is_not_utf8(odd: Path) -> None:
    out = odd / "r.json"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "supervisor.cli",
            "run",
            "--json",
            str(out),
            "--",
            "/bin/sh",
            "-c",
            "echo ok > f",
        ],
        cwd=odd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert (odd / "f").read_text() == "ok\n"
    assert json.loads(out.read_text())["exit_code"] == 0
