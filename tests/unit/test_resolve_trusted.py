"""policies._validate.resolve_trusted: the symlinks a policy path is resolved through when the policy is made.

A link that a sandbox of this caller could have planted (in a directory the caller may write, or for a root
caller any directory but the system ones) is kept as written, with everything after it: the sandbox's init
then refuses it (tests/kernel/test_attack_paths.py) instead of following it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from policies._validate import resolve_trusted


def test_a_path_without_links_is_only_normalised(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert resolve_trusted(f"{tmp_path}/a/./b/../b/") == f"{tmp_path}/a/b"
    assert resolve_trusted(f"{tmp_path}/missing/x") == f"{tmp_path}/missing/x"


def test_links_in_a_directory_the_caller_can_write_are_kept(tmp_path: Path) -> None:
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("/nonexistent")
    assert resolve_trusted(f"{tmp_path}/link/sub") == f"{tmp_path}/link/sub"
    assert resolve_trusted(f"{tmp_path}/loop/x") == f"{tmp_path}/loop/x"
    assert resolve_trusted(f"{tmp_path}/dangling") == f"{tmp_path}/dangling"


def test_system_links_are_resolved() -> None:
    for link in ("/var/run", "/bin", "/lib", "/sbin"):
        if os.path.islink(link):
            assert resolve_trusted(link + "/x") == os.path.realpath(link) + "/x"
            return
    pytest.skip("no system directory here is a symlink")


def test_a_system_link_leading_to_an_untrusted_one_stops_there() -> None:
    # Resolution goes on after a trusted link and stops at the first untrusted one, keeping the rest.
    if os.path.realpath("/var/run") != "/run" or os.geteuid() != 0:
        pytest.skip("needs /var/run -> /run and root (to make a directory in /run)")
    base = Path(f"/run/corral-test-{uuid.uuid4().hex[:10]}")
    (base / "real").mkdir(parents=True)
    try:
        (base / "link").symlink_to("real")
        assert resolve_trusted(f"/var/run/{base.name}/real/x") == f"{base}/real/x"
        assert resolve_trusted(f"/var/run/{base.name}/link/x") == f"{base}/link/x"
    finally:
        shutil.rmtree(base)
