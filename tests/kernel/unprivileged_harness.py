"""Running code as an ordinary user (uid 65534) from a root test process. Not a test module.

Used by test_unprivileged.py and test_degraded.py. CI clones the repository to an unknown path that
nobody may not be able to reach, so `harness` checks, as nobody, that this very checkout imports; if not,
it copies the packages into a world-readable scratch directory and returns a PYTHONPATH for them; if the
venv itself is out of reach it raises `Unavailable` naming the first path nobody cannot traverse.
When the tests run as an ordinary user already, commands run as that user (unprivileged either way).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import supervisor

NOBODY = 65534
ROOT = Path(supervisor.__file__).resolve().parent.parent
PACKAGES = ("supervisor", "policies", "exporters")
AS_ROOT = os.geteuid() == 0
#: The uid (and gid) the unprivileged runs have.
EXPECTED_UID = NOBODY if AS_ROOT else os.getuid()
ENV = ["PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"]


class Unavailable(Exception):
    """The unprivileged user cannot run this checkout's code; the message says why."""


def as_user(argv: list[str], pythonpath: str | None) -> list[str]:
    """`argv` run as nobody (when root) with a clean environment: PATH, HOME, LANG, PYTHONPATH."""
    env = [*ENV, *([f"PYTHONPATH={pythonpath}"] if pythonpath else [])]
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if AS_ROOT else []
    return [*drop, "env", "-i", *env, *argv]


def run_as_user(
    argv: list[str], pythonpath: str | None, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        as_user(argv, pythonpath), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def first_unreachable(paths: list[Path], cwd: Path) -> str | None:
    """The first of `paths` (ancestors first) that the unprivileged user cannot traverse or read."""
    todo: list[str] = []
    for p in paths:
        for a in [*reversed(p.parents), p]:
            if str(a) not in todo:
                todo.append(str(a))
    check = 'for p in "$@"; do [ -x "$p" ] && [ -r "$p" ] || { echo "$p"; exit 0; }; done'
    r = run_as_user(["/bin/sh", "-c", check, "sh", *todo], None, cwd)
    return r.stdout.strip() or None


def _imported_file(r: subprocess.CompletedProcess[str]) -> str | None:
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return os.path.realpath(json.loads(r.stdout.strip().splitlines()[-1]))


def harness(scratch: Path) -> tuple[str, str | None]:
    """Return (python, PYTHONPATH or None) with which the unprivileged user imports this checkout.

    `scratch` must be a world-traversable directory; the package copy, if needed, goes to scratch/pkgs.
    Raises Unavailable (with the reason) when setpriv is missing or the venv is out of nobody's reach.
    """
    if AS_ROOT and shutil.which("setpriv") is None:
        raise Unavailable(f"setpriv (util-linux) is not installed: cannot drop to uid {NOBODY}")
    python = sys.executable
    want = str(ROOT / "supervisor" / "__init__.py")
    probe = [
        python,
        "-c",
        "import json, supervisor, policies, anyio; print(json.dumps(supervisor.__file__))",
    ]
    r = run_as_user(probe, None, scratch)
    if _imported_file(r) == want:
        return python, None
    why = r.stderr.strip().splitlines()[-1] if r.returncode else f"it imports {r.stdout.strip()}"
    # Not this checkout (an unreadable path, or another install wins): copy the packages, world-readable.
    pkgs = scratch / "pkgs"
    if not pkgs.exists():
        for name in PACKAGES:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, pkgs / name, ignore=shutil.ignore_patterns("__pycache__"))
        for d, _dirs, files in os.walk(pkgs):
            os.chmod(d, 0o755)
            for f in files:  # executables (the sandbox init, corral-init) stay executable
                path = os.path.join(d, f)
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)
    r = run_as_user(probe, str(pkgs), scratch)
    got = _imported_file(r)
    if got is not None and got.startswith(str(pkgs.resolve()) + "/"):
        print(f"uid {EXPECTED_UID} cannot import this checkout ({why}); using a copy in {pkgs}")
        return python, str(pkgs)
    site = Path(sysconfig.get_paths()["purelib"])
    bad = first_unreachable([Path(python), Path(os.path.realpath(python)), site], scratch)
    if bad:
        raise Unavailable(f"uid {EXPECTED_UID} cannot use this venv: {bad} is not readable/traversable by it")
    raise Unavailable(f"uid {EXPECTED_UID} cannot import corral even from a copy: {r.stderr.strip()[-500:]}")


#: A supervisor run by the ordinary caller: `probe` with `cases` as its arguments, in a workspace-write
#: sandbox of `ws`; prints the Result's exit code and output as one JSON line.
PROBE_SCRIPT = r"""
import json, sys
import anyio
from policies import profiles
from supervisor import Supervisor
probe, ws, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
async def main():
    async with Supervisor(max_concurrency=2) as sup:
        r = await sup.run([probe, *cases], policy=profiles.workspace_write(ws, timeout=30))
        print(json.dumps({"exit": r.exit_code, "stdout": r.stdout.decode(), "stderr": r.stderr.decode()}))
anyio.run(main)
"""


def run_probe_as_user(
    python: str, pythonpath: str | None, scratch: Path, probe: Path, ws: Path, cases: list[str]
) -> dict[str, Any]:
    """Run `probe` (a world-reachable executable) with `cases` in a sandbox made by a supervisor that the
    ordinary user runs (PROBE_SCRIPT, written into `scratch`); its report: exit, stdout, stderr."""
    script = scratch / "run.py"
    script.write_text(PROBE_SCRIPT)
    os.chmod(script, 0o644)
    os.chmod(probe.parent, 0o755)
    r = run_as_user([python, str(script), str(probe), str(ws), *cases], pythonpath, scratch, timeout=90)
    assert r.returncode == 0, r.stderr
    report: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return report


@contextlib.contextmanager
def ordinary_caller_scratch(prefix: str) -> Iterator[tuple[Path, str, str | None]]:
    """A scratch directory for an ordinary caller's run, `SCRATCH/<prefix>-<random>` (mode 0755, so that the
    ordinary user reaches it), with the harness's python and PYTHONPATH (`harness`); the test is skipped,
    with the harness's reason, when the harness is unavailable. Removed afterwards."""
    from tests.kernel.conftest import SCRATCH

    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    scratch = SCRATCH / f"{prefix}-{uuid.uuid4().hex[:10]}"
    scratch.mkdir(mode=0o755)
    try:
        try:
            python, pythonpath = harness(scratch)
        except Unavailable as why:
            pytest.skip(str(why))
        yield scratch, python, pythonpath
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
