"""More variants of issue 11's host-side classes, each from inside a real sandbox with the effect checked from
outside (session 11, helper `hunt11b`).

Class 7: the library's own log records. `corral run` formats its log lines printable, but an API user's
logging (`logging.basicConfig()`, a service's journal handler) got the records raw: a repository the
sandbox made under a name with OSC escape bytes put them, unescaped, into the "git: ... moved aside"
warning every caller sees.

Every run is bounded by its policy's timeout; nothing here reaches past loopback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]

SH = "/bin/sh"
#: An OSC sequence that sets the terminal's title, and a CSI (7-bit and the C1 byte) that clears it.
ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\u009b2J"


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if not c.isprintable()]


async def test_log_records_of_sandbox_chosen_names_are_printable(
    sup: Supervisor, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pol = profiles.workspace_write(workspace, timeout=20)
    name = f"x{ESCAPES}y"
    script = 'mkdir -p "$N" && cd "$N" && git init -q && git config core.fsmonitor "touch /nonexistent"'
    with caplog.at_level(logging.WARNING, logger="corral"):
        r = await sup.run([SH, "-c", script], policy=pol, env={"N": name, "PATH": "/usr/bin:/bin"})
    assert r.exit_code == 0, r.stderr
    # The structured field keeps the raw path (it is what to remove); the log line does not.
    assert any(name in path for path, _ in r.quarantined), r.quarantined
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("corral")]
    assert any("moved to config.corral-quarantined" in line for line in lines), lines
    for line in lines:
        assert not _raw_controls(line), line
    assert any("\\x1b]0;PWNED\\x07" in line for line in lines), lines
    for line in caplog.text.splitlines():
        assert not _raw_controls(line), line
