"""Every corral error renders as one printable, bounded line (issue 11, item 7): names a sandbox chose
(file names, paths, command names) never reach a terminal raw."""

from __future__ import annotations

import errno
import logging

import pytest

from policies import CorralError, PolicyError
from supervisor._errors import (
    CommandNotFoundError,
    SandboxSetupError,
    SpawnError,
    SupervisorClosedError,
    printable,
)
from supervisor.cli import _PrintableFormatter

PAYLOADS = [
    "\x1b]0;pwned\x07",  # OSC: set the terminal title, ended by BEL
    "\x1b]8;;http://x\x1b\\",  # OSC 8 hyperlink, ended by ST
    "\x1b[2J\x1b[H",  # CSI: clear the screen
    "\u009b31m",  # the one-character C1 CSI
    "line\nforged: ok",  # a forged second line
    "cr\roverwrite",
    "\u202eevil",  # right-to-left override
    "\u2028sep",  # line separator
    "\udcff\udc9b",  # undecodable bytes of a file name (surrogateescape)
    "\x7f\x00",
]


def clean(text: str) -> bool:
    return text.isprintable() and "\u2028" not in text and "\u2029" not in text


@pytest.mark.parametrize("payload", PAYLOADS)
def test_printable_escapes_every_control(payload: str) -> None:
    out = printable(f"a{payload}b")
    assert clean(out), repr(out)
    assert out.startswith("a")
    assert out.endswith("b")
    assert printable(out) == out  # idempotent


def test_printable_keeps_ordinary_text() -> None:
    for text in ("/home/user/projet é/файл.txt", "tab-less 100% ok", ""):
        assert printable(text) == text


def test_printable_names_each_escape() -> None:
    assert printable("\x1b]0;t\x07") == "\\x1b]0;t\\x07"
    assert printable("\u202e") == "\\u202e"
    assert printable("\n") == "\\x0a"


def test_printable_is_bounded() -> None:
    out = printable("a" * 10_000 + "END")
    assert len(out) == 2000
    assert "..." in out
    assert out.endswith("END")
    assert len(printable("\x1b" * 10_000, 100)) == 100


def test_printable_survives_a_broken_str() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError

    assert printable(Bad()) == "<unprintable Bad>"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_error_renders_one_clean_line(payload: str) -> None:
    path = f"/ws/.git/modules/{payload}/hooks"
    errors: list[CorralError] = [
        SandboxSetupError("mounts", "mount(MS_BIND)", errno.ELOOP, path, hint=f"remove {path}"),
        SpawnError(payload, errno.EACCES, detail=payload),
        CommandNotFoundError(payload, errno.ENOENT),
        PolicyError("filesystem.write[0]", f"bad {payload}", payload, source=f"/p/{payload}.toml"),
        SupervisorClosedError(payload),
        CorralError(payload),
    ]
    for err in errors:
        assert clean(str(err)), repr(str(err))
    # The structured fields keep the raw values for programs.
    assert errors[0].path == path  # type: ignore[attr-defined]
    assert errors[2].argv0 == payload  # type: ignore[attr-defined]


def test_a_huge_path_is_cut() -> None:
    err = SandboxSetupError("mounts", "open", errno.ENOENT, "/x" * 50_000, hint="fix it")
    assert len(str(err)) < 600
    assert str(err).endswith("; fix it")


def test_cli_log_lines_are_escaped() -> None:
    fmt = _PrintableFormatter("corral: %(levelname)s: %(message)s")
    rec = logging.LogRecord("corral", logging.WARNING, __file__, 1, "leaf %s gone", ("\x1b]0;x\x07\n",), None)
    line = fmt.format(rec)
    assert clean(line), repr(line)


def test_setup_error_takes_path_and_errno_in_designs_order_too() -> None:
    # DESIGN.md names the fields `SandboxSetupError(layer, operation, path, errno)`; corral's own calls pass
    # errno before path. Both positional orders give the same error.
    ours = SandboxSetupError("landlock", "landlock_add_rule", errno.EACCES, "/srv/x")
    design = SandboxSetupError("landlock", "landlock_add_rule", "/srv/x", errno.EACCES)
    path_only = SandboxSetupError("mounts", "open", "/srv/x")
    for err in (ours, design):
        assert (err.layer, err.operation) == ("landlock", "landlock_add_rule")
        assert (err.path, err.errno) == ("/srv/x", errno.EACCES)
        assert str(err) == "landlock: landlock_add_rule failed: EACCES (Permission denied) on /srv/x"
    assert (path_only.path, path_only.errno) == ("/srv/x", 0)
    with pytest.raises(TypeError, match="errno must be an int"):
        SandboxSetupError("mounts", "open", "/a", "/b")
