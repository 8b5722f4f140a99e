"""git config syntax read differently by the post-run scan and by git (issue 11, item 3).

The scan decides on a config a sandbox wrote by the settings in it, so a config that the scan reads one
way and git another lets a setting through. Each case here is a config that git (the host's own binary)
reads as setting `core.fsmonitor`, written from inside a real sandbox into a nested repository registered
in the top repository's index; the host user's plain `git status` then recurses into it. Checked from
outside: the scan moved the config aside, and the payload (it only touches a marker file) did not run.
Before the scan ported git's own parser (supervisor/sandbox/_gitconfig.py) a line-based reader took each
of these for harmless settings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import host_git, make_repo, payload, plant

pytestmark = pytest.mark.kernel

#: A harmless setting, then the one that runs code, separated the ways git allows and a line reader
#: misreads: a comment ending in a backslash (no continuation in git), a lone CR, an ASCII file separator
#: and U+2028 (line breaks to Python's splitlines, ordinary value bytes to git), and a byte order mark.
TRICKS = {
    "comment_backslash": b"[core]\n\tbare = false ; \\\n\tfsmonitor = {p}\n",
    "hash_comment_backslash": b"[core]\n\tbare = false # \\\n\tfsmonitor = {p}\n",
    "lone_cr_section": b"[core]\n\teol = lf\r[advice]\n\tfsmonitor = {p}\n",
    "file_separator_section": b"[core]\n\teol = lf\x1c[advice]\n\tfsmonitor = {p}\n",
    "u2028_section": b"[core]\n\teol = lf\xe2\x80\xa8[advice]\n\tfsmonitor = {p}\n",
    "bom": b"\xef\xbb\xbf[core]\n\tfsmonitor = {p}\n",
    "crlf": b"[core]\r\n\tbare = false\r\n\tfsmonitor = {p}\r\n",
    "one_line_header": b"[core]fsmonitor = {p}\n",
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
async def test_config_git_reads_differently_is_still_moved_aside(
    sup: Supervisor, workspace: Path, trick: str
) -> None:
    make_repo(workspace)
    hook = workspace / "fsmon.sh"
    # The payload runs as git's fsmonitor hook (a path to a program).
    hook.write_text(f"#!/bin/sh\n{payload(workspace)}\nexit 1\n")
    hook.chmod(0o755)
    config = TRICKS[trick].replace(b"{p}", str(hook).encode())
    octal = "".join(f"\\{b:03o}" for b in config)
    r = await plant(
        sup,
        workspace,
        "git init -q sub && git -C sub commit -q --allow-empty -m x && git add sub && "
        f"printf '{octal}' > sub/.git/config",
    )
    quarantined = [p for p, _ in r.quarantined]
    assert str(workspace / "sub" / ".git" / "config") in quarantined, r.quarantined
    assert "core.fsmonitor" in dict(r.quarantined)[str(workspace / "sub" / ".git" / "config")]
    host_git(workspace, "status")
    host_git(workspace / "sub", "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"


def test_control_git_reads_each_trick_as_fsmonitor(workspace: Path) -> None:
    """Without the scan (the config written on the host), the host's git runs the payload for every
    case: what the test above guards against is real."""
    hook = workspace / "fsmon.sh"
    for trick, text in sorted(TRICKS.items()):
        repo = workspace / trick
        make_repo(repo)
        marker = workspace / "MARKER"
        hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
        hook.chmod(0o755)
        (repo / ".git" / "config").write_bytes(text.replace(b"{p}", str(hook).encode()))
        host_git(repo, "status")
        assert marker.exists(), f"{trick}: git did not read core.fsmonitor"
        marker.unlink()
