"""The post-run git scan's snapshot (supervisor/_gitscan.py, `Snapshot`): after a scan of a small tree that
found nothing, later runs are told "nothing changed" on the event loop, without the worker-thread hop, only
while nothing a scan looks at has changed. Real directories on this machine's file system (no fake tree):
each change a sandbox could make where the scan looks must make the check fail, so that the full scan runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import Policy, profiles
from supervisor import _gitscan
from supervisor._gitscan import Listings, scan


def _aged() -> None:
    """Let every ctime made so far fall behind the scan's margin."""
    time.sleep(_gitscan.MARGIN_NS / 1e9 * 3)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    for d in ("src/a", "src/b", "docs"):
        (ws / d).mkdir(parents=True)
    git = ws / "repo" / ".git"
    for d in ("objects", "refs", "hooks"):
        (git / d).mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    (git / "hooks" / "pre-commit.sample").write_text("#!/bin/sh\n")
    (git / "hooks" / "post-checkout").write_text("#!/bin/sh\nexit 0\n")
    (ws / "src" / "a" / "main.c").write_text("int main(void) { return 0; }\n")
    return ws


@pytest.fixture
def listings() -> Iterator[Listings]:
    lst = Listings()
    yield lst
    lst.close()


def _snapshotted(ws: Path, listings: Listings) -> Policy:
    policy = profiles.workspace_write(ws)
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert listings.has(_gitscan.snapshot_key(policy))
    return policy


def test_an_unchanged_tree_needs_no_scan(tree: Path, listings: Listings) -> None:
    policy = _snapshotted(tree, listings)
    assert listings.unchanged_since(policy, time.time_ns())
    assert listings.unchanged_since(policy, time.time_ns())
    assert listings.quick == 2


def _rewrite_config(ws: Path) -> None:
    with open(ws / "repo" / ".git" / "config", "r+b") as f:  # in place: the directory stays as it was
        f.write(b"[core]\n\tpager = x\n")


def _rewrite_hook(ws: Path) -> None:
    with open(ws / "repo" / ".git" / "hooks" / "post-checkout", "r+b") as f:
        f.write(b"#!/bin/sh\ntouch /tmp/x\n")


def _swap_for_link(ws: Path) -> None:
    os.rename(ws / "src" / "b", ws / "b-old")
    os.symlink("/etc", ws / "src" / "b")


def _replace_root(ws: Path) -> None:
    os.rename(ws, ws.with_name("ws-old"))
    ws.mkdir()


CHANGES: dict[str, Callable[[Path], None]] = {
    "file_in_a_subdirectory": lambda ws: (ws / "src" / "a" / "new.c").write_text(""),
    "new_directory_deep": lambda ws: (ws / "src" / "b" / "repo2").mkdir(),
    "config_rewritten_in_place": _rewrite_config,
    "hook_rewritten_in_place": _rewrite_hook,
    "new_hook": lambda ws: (ws / "repo" / ".git" / "hooks" / "pre-push").write_text("#!/bin/sh\n"),
    "config_worktree_added": lambda ws: (ws / "repo" / ".git" / "config.worktree").write_text(""),
    "subdirectory_chmod": lambda ws: (ws / "docs").chmod(0o700),
    "directory_swapped_for_link": _swap_for_link,
    "root_replaced": _replace_root,
    "hooks_dir_removed": lambda ws: (
        [p.unlink() for p in (ws / "repo/.git/hooks").iterdir()] and (ws / "repo/.git/hooks").rmdir()
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_where_a_scan_looks_is_seen(tree: Path, listings: Listings, change: str) -> None:
    policy = _snapshotted(tree, listings)
    started = time.time_ns()
    CHANGES[change](tree)
    assert not listings.unchanged_since(policy, started)
    assert not listings.has(_gitscan.snapshot_key(policy))  # dropped: the full scan takes a new one
    assert listings.quick == 0


def test_a_change_the_full_scan_reports_is_reported(tree: Path, listings: Listings) -> None:
    """End to end: the check fails, the full scan that follows quarantines the hook."""
    policy = _snapshotted(tree, listings)
    started = time.time_ns()
    _rewrite_hook(tree)
    assert not listings.unchanged_since(policy, started)
    found = scan(policy, started, listings)
    assert [p for p, _ in found] == [str(tree / "repo" / ".git" / "hooks" / "post-checkout")]


def test_a_run_started_before_the_snapshot_was_complete_is_scanned(tree: Path, listings: Listings) -> None:
    """A change made before the snapshot read it would be in the snapshot: a run that started before it
    was taken gets the full scan."""
    policy = profiles.workspace_write(tree)
    _aged()
    started = time.time_ns()
    assert scan(policy, started, listings) == []
    assert not listings.unchanged_since(policy, started)
    assert listings.has(_gitscan.snapshot_key(policy))


def test_a_recently_changed_tree_is_not_snapshotted(tree: Path, listings: Listings) -> None:
    """A ctime within the margin of the scan: a change in the same timestamp tick could leave it as it is."""
    policy = profiles.workspace_write(tree)
    _aged()
    started = time.time_ns()
    (tree / "src" / "a" / "fresh.c").write_text("")
    assert scan(policy, started, listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert listings.has(_gitscan.snapshot_key(policy))


def test_a_large_tree_is_not_snapshotted(tmp_path: Path, listings: Listings) -> None:
    for i in range(_gitscan.SNAPSHOT_DIRS + 1):
        (tmp_path / "ws" / f"d{i}").mkdir(parents=True)
    policy = profiles.workspace_write(tmp_path / "ws")
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))
    assert not listings.unchanged_since(policy, time.time_ns())


def test_snapshots_hold_a_bounded_number_of_fds(tmp_path: Path, listings: Listings) -> None:
    budget = _gitscan.snapshot_fds()
    per = 8
    policies = []
    for k in range(budget // per + 3):
        for i in range(per - 1):
            (tmp_path / f"ws{k}" / f"d{i}").mkdir(parents=True)
        policies.append(profiles.workspace_write(tmp_path / f"ws{k}"))
    _aged()
    before = len(os.listdir("/proc/self/fd"))
    for policy in policies:
        assert scan(policy, time.time_ns(), listings) == []
    held = len(os.listdir("/proc/self/fd")) - before
    assert 0 < held <= budget
    assert listings.has(_gitscan.snapshot_key(policies[-1]))
    assert not listings.has(_gitscan.snapshot_key(policies[0]))  # the oldest went first
    listings.close()
    assert len(os.listdir("/proc/self/fd")) == before
