"""The policy file is read non-blocking, regular files only, bounded (issue 11, items 4 and 6): a policy kept
in a project directory that sandboxes write may have been replaced by a FIFO (which would hold the CLI before
any timeout applies), a device, a directory or a huge file. Each is a PolicyError naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import PolicyError, load_policy
from policies._load import MAX_POLICY_FILE


def test_a_regular_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    f.write_text('profile = "read-only"\n')
    assert load_policy(f, workdir=str(tmp_path)).profile == "read-only"


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    os.mkfifo(f)
    with pytest.raises(PolicyError, match="not a regular file") as info:
        load_policy(f, workdir=str(tmp_path))
    assert info.value.source == str(f)


def test_a_device_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy("/dev/zero", workdir=str(tmp_path))
    with pytest.raises(PolicyError, match="a directory"):
        load_policy(tmp_path, workdir=str(tmp_path))


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "corral.toml"
    with open(f, "wb") as fp:
        fp.truncate(MAX_POLICY_FILE + 1)  # sparse: costs no disk
    with pytest.raises(PolicyError, match="larger than 1 MiB"):
        load_policy(f, workdir=str(tmp_path))
