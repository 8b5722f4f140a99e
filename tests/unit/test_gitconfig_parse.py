"""supervisor/sandbox/_gitconfig.py reads a git config exactly as git does (issue 11, item 3): the scan's
verdict on a config a sandbox wrote, and the hooks directory the mounts protect, depend on it.

Differential: named inputs where a line reader went wrong, and a seeded corpus of random configs built from
git's syntax characters, each compared with what the host's own git reports (`git config --file F
--no-includes --list --null`), including whether git refuses the file.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from supervisor._gitscan import unsafe_keys
from supervisor.sandbox import _gitconfig, _hostfs, mounts

GIT = "/usr/bin/git"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}

NAMED = [
    b"[core]\n\tbare = false ; \\\n\tfsmonitor = x\n",
    b"[core]\n\teol = lf\r[advice]\n\tfsmonitor = x\n",
    b"[core]\n\teol = lf\x1c[advice]\n\tfsmonitor = x\n",
    b"[core]\n\teol = lf\xe2\x80\xa8[advice]\n\tfsmonitor = x\n",
    b"\xef\xbb\xbf[core]\n\tfsmonitor = x\n",
    b"\xef\xbb[core]\n",
    b"[core]fsmonitor=x\n",
    b'[remote "Or\\"ig\\in"]\n\turl = "a;b" ; c\n\tfetch = x\\\n y\n',
    b"[Remote.Origin]\n\tURL = u\n",
    b'[core]\n\tworktree = "unterminated\n',
    b"[core]\n\tx = \\q\n",
    b"[core]\n\tflag\n\t2bad = 1\n",
    b"key = before any section\n",
    b"[core]\n\tpager = a\\tb\\nc\\\\\n",
    b"[]\n",
    b'[ "x"]\n\tk = v\n',
]


def git_reads(data: bytes, tmp: Path) -> list[tuple[str, bytes | None]] | None:
    """What the host's git sees in `data`: (name, value) pairs, None when git refuses the file."""
    f = tmp / "cfg"
    f.write_bytes(data)
    p = subprocess.run(
        [GIT, "config", "--file", str(f), "--no-includes", "--list", "--null"],
        capture_output=True,
        env=ENV,
        timeout=30,
        check=False,
    )
    if p.returncode != 0:
        return None
    out: list[tuple[str, bytes | None]] = []
    for rec in p.stdout.split(b"\0")[:-1]:
        name, nl, value = rec.partition(b"\n")
        out.append((name.decode("utf-8", errors="surrogateescape"), value if nl else None))
    return out


def mine(data: bytes) -> list[tuple[str, bytes | None]] | None:
    try:
        return _gitconfig.parse(data)
    except _gitconfig.ConfigSyntaxError:
        return None


@pytest.mark.parametrize("data", NAMED)
def test_named_inputs_read_as_git_reads_them(data: bytes, tmp_path: Path) -> None:
    assert mine(data) == git_reads(data, tmp_path)


def test_random_configs_read_as_git_reads_them(tmp_path: Path) -> None:
    pieces = [
        *(b'[ ] \t \n \r \r\n \\ " ; # = . - x 1 n t'.split(b" ")),
        b" ",
        b"core",
        b"Core",
        b"fsmonitor",
        b"remote",
        b"\x1c",
        b"\xe2\x80\xa8",
        b"\xef\xbb\xbf",
        b"\x00",
        b"[core]\n",
        b"\tkey = v\n",
    ]
    rng = random.Random(11)
    differ = []
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        if rng.random() < 0.5:
            data = b"[core]\n" + data
        if mine(data) != git_reads(data, tmp_path):
            differ.append(data)
    assert differ == []


def test_unsafe_keys_sees_what_git_sees() -> None:
    for data in (*NAMED[:5], NAMED[6]):
        assert "core.fsmonitor" in unsafe_keys(data), data
    assert unsafe_keys(b'[remote "o"]\n\turl = x ; \\\n[user]\n\tname = n\n') == []
    assert unsafe_keys(b"[core]\n\tx = \\q\n") == ["unparsed: bad config line 2"]


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"\thooksPath = .husky ; husky's hooks\n", ".husky"),
        (b'\thooksPath = ".hooks dir"\n', ".hooks dir"),
        (b"\thooksPath = a\n\thookspath = b/c\n", "b/c"),  # the last one wins
        (b"\thooksPath = /elsewhere\n", None),  # outside the root: not protected here
    ],
)
def test_the_protected_hooks_path_is_the_one_git_uses(tmp_path: Path, line: bytes, want: str | None) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_bytes(b"[core]\n" + line)
    fd = _hostfs.open_root(str(tmp_path))
    try:
        assert mounts._configured_hooks_path(str(tmp_path), fd) == want
    finally:
        os.close(fd)
