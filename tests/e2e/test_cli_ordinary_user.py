"""`corral` run by an ordinary user without a delegated cgroup (uid 65534 when the tests run as root): quiet
unless a limit only a cgroup holds was asked for, and then one short line that says what to do."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.unprivileged_harness import Unavailable, harness, run_as_user

pytestmark = pytest.mark.kernel

SCRATCH = Path("/var/tmp/corral-tests")


@pytest.fixture(scope="module")
def user() -> Iterator[tuple[str, str | None, Path]]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    scratch = SCRATCH / f"plain-{uuid.uuid4().hex[:10]}"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o777)
    try:
        try:
            python, pythonpath = harness(scratch)
        except Unavailable as why:
            pytest.skip(str(why))
        yield python, pythonpath, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def corral(user: tuple[str, str | None, Path], *args: str) -> tuple[int, str, str]:
    python, pythonpath, scratch = user
    r = run_as_user([python, "-m", "supervisor.cli", *args], pythonpath, scratch)
    return r.returncode, r.stdout, r.stderr


def _cgroups_usable(user: tuple[str, str | None, Path]) -> bool:
    code, out, _ = corral(user, "probe")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("cgroups: "))
    return "unusable" not in line


def test_a_run_without_limits_says_nothing(user: tuple[str, str | None, Path]) -> None:
    code, out, err = corral(user, "run", "--", "/bin/echo", "hi")
    assert (code, out) == (0, "hi\n"), err
    assert err == ""  # no cgroup warning for a run that asks for no limit


def test_probe_has_a_cgroup_row_with_the_fix(user: tuple[str, str | None, Path]) -> None:
    code, out, err = corral(user, "probe")
    assert code == 0, err
    assert err == ""
    rows = [x for x in out.splitlines() if x.startswith("cgroups: ")]
    assert len(rows) == 1, out
    if "unusable" in rows[0]:
        assert "to fix:" in rows[0]
        assert "delegate" in rows[0]


def test_a_limit_without_a_cgroup_is_refused_in_one_short_line(user: tuple[str, str | None, Path]) -> None:
    if _cgroups_usable(user):
        pytest.skip("this user has a usable (delegated) cgroup: nothing to refuse")
    code, out, err = corral(user, "run", "--memory", "64M", "--", "/bin/echo", "hi")
    assert code == 125
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert len(lines[0]) < 1000, lines[0]  # was ~4 KB: one hint repeated for five controllers
    assert "memory" in lines[0]
    assert lines[0].count("run as root") == 1  # the fix said once, not once per controller
    code, out, err = corral(user, "run", "--memory", "64M", "--best-effort", "--", "/bin/echo", "hi")
    assert (code, out) == (0, "hi\n"), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert len(lines[0]) < 1000, lines[0]
    assert "fall back to rlimits" in lines[0]
