"""The .git/modules walk's pass-over of directories found empty (supervisor/sandbox/mounts.py): a directory
holding a symlink is never taken for empty, and one that gains a git dir or a link is looked into again.
Real files in a temporary directory; no sandbox."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor.sandbox import _hostfs, mounts

PROTECTED = [".git/hooks", ".git/config"]


def _expand(root: Path) -> list[str]:
    fd = _hostfs.open_root(str(root))
    try:
        return mounts._expand_git(str(root), PROTECTED, fd)
    finally:
        os.close(fd)


def test_a_directory_holding_a_symlink_is_refused_every_time(tmp_path: Path) -> None:
    (tmp_path / ".git" / "modules" / "a").mkdir(parents=True)
    (tmp_path / ".git" / "modules" / "a" / "up").symlink_to("..")
    time.sleep(0.03)  # older than the identity margin: a listing of it may be kept
    for _ in range(3):
        with pytest.raises(_hostfs.Unsafe):
            _expand(tmp_path)


def test_an_empty_directory_that_becomes_a_git_dir_is_found(tmp_path: Path) -> None:
    a = tmp_path / ".git" / "modules" / "a"
    a.mkdir(parents=True)
    time.sleep(0.03)
    assert _expand(tmp_path) == PROTECTED
    assert _expand(tmp_path) == PROTECTED  # passed over this time
    (a / "HEAD").write_text("ref: refs/heads/main\n")
    assert _expand(tmp_path) == [*PROTECTED, ".git/modules/a/hooks", ".git/modules/a/config"]
    (a / "HEAD").unlink()
    (a / "sub").symlink_to("/etc")
    with pytest.raises(_hostfs.Unsafe):
        _expand(tmp_path)
