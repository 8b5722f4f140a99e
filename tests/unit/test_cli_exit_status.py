"""`corral run`'s exit status when corral itself fails in a way it did not foresee (its own bug): 125 and one
line on stderr, as for every corral failure, never Python's traceback and status 1 (which a script would
take for the command's own status); an error anyio wrapped in an exception group is mapped as itself. The
failure is injected where the policy is built, before anything would start."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from supervisor import CommandNotFoundError, cli


def _fail_with(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def build(*args: object) -> None:
        raise error

    monkeypatch.setattr(cli, "_build_policy", build)


def test_an_unforeseen_error_is_125_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _fail_with(monkeypatch, RuntimeError("boom"))
    monkeypatch.delenv("CORRAL_DEBUG", raising=False)
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--json", str(out), "--", "/bin/true"])
    assert exc.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("corral: internal error: RuntimeError: boom")
    rec = json.loads(out.read_text())
    assert rec["exit_code"] == 125
    assert rec["error"] == {"type": "RuntimeError", "message": "boom"}


def test_an_error_in_an_exception_group_is_mapped_as_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_with(monkeypatch, ExceptionGroup("tasks", [CommandNotFoundError("nope", errno.ENOENT)]))
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--", "nope"])
    assert exc.value.code == 127
    assert capsys.readouterr().err == "corral: nope: No such file or directory (ENOENT)\n"
