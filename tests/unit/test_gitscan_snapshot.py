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


class _Clock:
    """`time` as _gitscan uses it, stopped at `now_ns`."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns


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


def _first(policy: Policy, listings: Listings) -> None:
    """A key's first scan: it takes no snapshot (one-off policies and the CLI's one run would not use it)."""
    assert scan(policy, time.time_ns(), listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))


def _snapshotted(ws: Path, listings: Listings) -> Policy:
    policy = profiles.workspace_write(ws)
    _aged()
    _first(policy, listings)
    assert scan(policy, time.time_ns(), listings) == []
    assert listings.has(_gitscan.snapshot_key(policy))
    return policy


def test_a_keys_first_scan_takes_no_snapshot(tree: Path, listings: Listings) -> None:
    policy = profiles.workspace_write(tree)
    _aged()
    _first(policy, listings)
    assert listings._snapshots == {}
    assert listings.watcher.fd == -1  # no inotify instance made
    assert not listings.unchanged_since(policy, time.time_ns())


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


def _assert_seen(ws: Path, listings: Listings, change: Callable[[Path], None]) -> None:
    """`change` made after a snapshot of `ws` fails the quick check until a full scan ran, and that scan
    drops the snapshot (and takes a new one when the tree fits)."""
    policy = _snapshotted(ws, listings)
    key = _gitscan.snapshot_key(policy)
    old = listings._snapshots[key]
    started = time.time_ns()
    change(ws)
    assert not listings.unchanged_since(policy, started)
    assert not listings.unchanged_since(policy, started)  # and not forgotten until a scan ran
    assert listings.quick == 0
    scan(policy, started, listings)
    assert listings._snapshots.get(key) is not old


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_where_a_scan_looks_is_seen(tree: Path, listings: Listings, change: str) -> None:
    _assert_seen(tree, listings, CHANGES[change])


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
    _first(policy, listings)
    started = time.time_ns()
    assert scan(policy, started, listings) == []
    assert not listings.unchanged_since(policy, started)
    assert listings.has(_gitscan.snapshot_key(policy))


def test_a_recently_changed_tree_is_not_snapshotted(
    tree: Path, listings: Listings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ctime within the margin of the scan: a change in the same timestamp tick could leave it as it is."""
    policy = profiles.workspace_write(tree)
    _aged()
    _first(policy, listings)
    started = time.time_ns()
    fresh = tree / "src" / "a" / "fresh.c"
    fresh.write_text("")
    # The scan's clock 1 ms after the change, as on an idle machine (under load, real time could pass the
    # margin between the write and the scan, and the tree would rightly be old enough to snapshot).
    now = fresh.stat().st_ctime_ns + 1_000_000
    with monkeypatch.context() as m:
        m.setattr(_gitscan, "time", _Clock(now))
        assert scan(policy, started, listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert listings.has(_gitscan.snapshot_key(policy))


def test_a_large_tree_is_not_snapshotted(tmp_path: Path, listings: Listings) -> None:
    for i in range(_gitscan.SNAPSHOT_DIRS):  # with the root, one directory too many to hold
        (tmp_path / "ws" / f"d{i}" / "leaf").mkdir(parents=True)
    policy = profiles.workspace_write(tmp_path / "ws")
    _aged()
    _first(policy, listings)
    assert scan(policy, time.time_ns(), listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))
    assert not listings.unchanged_since(policy, time.time_ns())


def test_snapshots_hold_a_bounded_number_of_fds(tmp_path: Path, listings: Listings) -> None:
    budget = _gitscan.snapshot_fds()
    per = 8
    policies = []
    for k in range(budget // per + 3):
        for i in range(per - 1):
            (tmp_path / f"ws{k}" / f"d{i}" / "leaf").mkdir(parents=True)  # d{i} is held, leaf watched
        policies.append(profiles.workspace_write(tmp_path / f"ws{k}"))
    _aged()
    before = len(os.listdir("/proc/self/fd"))
    for policy in policies:
        _first(policy, listings)
        assert scan(policy, time.time_ns(), listings) == []
    held = len(os.listdir("/proc/self/fd")) - before
    assert 0 < held <= budget
    assert listings.has(_gitscan.snapshot_key(policies[-1]))
    assert not listings.has(_gitscan.snapshot_key(policies[0]))  # the oldest went first
    listings.close()
    assert len(os.listdir("/proc/self/fd")) == before


# Leaf directories (no subdirectory, none of git's names) are watched with inotify (supervisor/_leafwatch.py),
# not held: a repository with history (hundreds of loose-object directories) fits a snapshot.


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A repository whose git dir holds 200 loose-object directories (as two commits of a few hundred
    files leave it), and a worktree of 20 leaf directories."""
    ws = tmp_path / "hist"
    git = ws / ".git"
    for d in ("refs/heads", "refs/tags", "hooks", "info", "objects/info", "objects/pack"):
        (git / d).mkdir(parents=True)
    for i in range(200):
        (git / "objects" / f"{i:02x}").mkdir()
        (git / "objects" / f"{i:02x}" / ("0" * 38)).write_text("")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    for i in range(20):
        (ws / "src" / f"m{i}").mkdir(parents=True)
        (ws / "src" / f"m{i}" / "x.py").write_text("")
    return ws


def test_a_repository_with_history_fits_a_snapshot_holding_few_fds(history: Path, listings: Listings) -> None:
    before = len(os.listdir("/proc/self/fd"))
    policy = _snapshotted(history, listings)
    snap = listings._snapshots[_gitscan.snapshot_key(policy)]
    assert len(snap.leaves) >= 220  # the object directories, the worktree's, hooks/, info/...
    assert len(snap.dirs) < _gitscan.SNAPSHOT_DIRS
    assert len(os.listdir("/proc/self/fd")) - before == len(snap.dirs) + 1  # + the inotify instance
    assert listings.unchanged_since(policy, time.time_ns())


def _object_dir(ws: Path) -> Path:
    return ws / ".git" / "objects" / "7f"


def _git_dir_in_leaf(ws: Path) -> None:
    ev = _object_dir(ws) / "ev"
    for d in ("objects", "refs"):
        (ev / d).mkdir(parents=True)
    (ev / "HEAD").write_text("ref: refs/heads/main\n")
    (ev / "config").write_text("[core]\n\tfsmonitor = touch x\n")


def _leaf_made_a_git_dir(ws: Path) -> None:
    leaf = ws / "src" / "m3"
    (leaf / "HEAD").write_text("ref: refs/heads/main\n")
    (leaf / "commondir").write_text("../..\n")
    (leaf / "config").write_text("[core]\n\tfsmonitor = touch x\n")


def _leaf_for_link(ws: Path) -> None:
    os.rename(_object_dir(ws), ws / "src" / "m0" / "moved")
    os.symlink("../../src/m0/moved", _object_dir(ws))


def _leaves_exchanged(ws: Path) -> None:
    os.rename(_object_dir(ws), ws / "tmp")
    os.rename(ws / "src" / "m5", _object_dir(ws))
    os.rename(ws / "tmp", ws / "src" / "m5")


LEAF_CHANGES: dict[str, Callable[[Path], None]] = {
    "git_dir_in_a_leaf": _git_dir_in_leaf,
    "leaf_made_a_git_dir_by_its_files": _leaf_made_a_git_dir,
    "file_in_a_leaf": lambda ws: (_object_dir(ws) / "HEAD").write_text(""),
    "file_removed_from_a_leaf": lambda ws: (ws / "src" / "m9" / "x.py").unlink(),
    "file_renamed_out_of_a_leaf": lambda ws: os.rename(ws / "src" / "m9" / "x.py", ws / "x.py"),
    "symlink_in_a_leaf": lambda ws: os.symlink("/etc", _object_dir(ws) / "refs"),
    "fifo_in_a_leaf": lambda ws: os.mkfifo(_object_dir(ws) / "config"),
    "leaf_chmod": lambda ws: _object_dir(ws).chmod(0o700),
    "leaf_renamed": lambda ws: os.rename(_object_dir(ws), _object_dir(ws).with_name("zz")),
    "leaf_replaced_by_a_symlink": _leaf_for_link,
    "leaves_exchanged": _leaves_exchanged,
    "leaf_removed": lambda ws: [p.unlink() for p in _object_dir(ws).iterdir()] and _object_dir(ws).rmdir(),
}


@pytest.mark.parametrize("change", list(LEAF_CHANGES))
def test_every_change_of_a_watched_leaf_is_seen(history: Path, listings: Listings, change: str) -> None:
    _assert_seen(history, listings, LEAF_CHANGES[change])


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("git_dir_in_a_leaf", ".git/objects/7f/ev/config"),
        ("leaf_made_a_git_dir_by_its_files", "src/m3/config"),
    ],
)
def test_a_git_dir_planted_in_a_leaf_is_quarantined(
    history: Path, listings: Listings, change: str, found: str
) -> None:
    """End to end: the quick check fails, and the full scan that follows (the snapshot's leaf skipped
    by no shortcut: it moved) finds the planted config."""
    policy = _snapshotted(history, listings)
    started = time.time_ns()
    LEAF_CHANGES[change](history)
    assert not listings.unchanged_since(policy, started)
    assert str(history / found) in [p for p, _ in scan(policy, started, listings)]


def test_events_of_one_tree_do_not_cost_another_its_snapshot(
    history: Path, tree: Path, listings: Listings
) -> None:
    """An event is sorted to its snapshot in the worker thread: another tree's quick check fails while it
    is queued (the loop cannot tell whose it is), then passes again once a scan sorted it out."""
    hist = _snapshotted(history, listings)
    other = _snapshotted(tree, listings)
    (_object_dir(history) / "HEAD").write_text("")
    assert not listings.unchanged_since(other, time.time_ns())
    assert scan(other, time.time_ns(), listings) == []
    assert listings.unchanged_since(other, time.time_ns())
    assert not listings.unchanged_since(hist, time.time_ns())
    assert not listings.has(_gitscan.snapshot_key(hist))


def test_a_leaf_changed_between_its_listing_and_its_watch_is_not_trusted(
    history: Path, listings: Listings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the re-read after each new watch closes: a file created in a leaf after the scan listed it
    and before its watch was in place queues no event, so the snapshot must not be taken."""
    from supervisor import _leafwatch

    real = _leafwatch.Watcher.watch
    target = history / "src" / "m7"

    def racing(self: _leafwatch.Watcher, owner: _leafwatch.Owner, path: bytes, follow: bool) -> int | None:
        if os.stat(path).st_ino == target.stat().st_ino and not (target / "HEAD").exists():
            (target / "HEAD").write_text("")
        return real(self, owner, path, follow)

    policy = profiles.workspace_write(history)
    _aged()
    _first(policy, listings)
    monkeypatch.setattr(_leafwatch.Watcher, "watch", racing)
    assert scan(policy, time.time_ns(), listings) == []
    assert (target / "HEAD").exists()
    assert not listings.has(_gitscan.snapshot_key(policy))


def test_watches_are_adopted_not_added_again(history: Path, listings: Listings) -> None:
    """A tree that changes at every run takes a new snapshot each time: its unchanged leaves keep their
    watch (the same descriptor), and the watches do not pile up."""
    policy = _snapshotted(history, listings)
    key = _gitscan.snapshot_key(policy)
    first = set(listings._snapshots[key].leaves)
    count = listings.watcher.count()
    for i in range(3):
        (history / f"new{i}").write_text("")  # the root changed: the next scan takes a new snapshot
        _aged()
        started = time.time_ns()
        assert not listings.unchanged_since(policy, started)
        assert scan(policy, started, listings) == []
    assert set(listings._snapshots[key].leaves) == first
    assert listings.watcher.count() == count


def test_without_watches_leaves_are_held(tree: Path, listings: Listings) -> None:
    """No inotify watch to be had (the user's watches spent, no inotify): a small tree's leaves are held
    as before, and the snapshot still works."""
    listings.watcher.budget = 0
    policy = _snapshotted(tree, listings)
    snap = listings._snapshots[_gitscan.snapshot_key(policy)]
    assert snap.leaves == []
    assert len(snap.dirs) >= 8
    assert listings.unchanged_since(policy, time.time_ns())
    (tree / "src" / "a" / "new.c").write_text("")
    assert not listings.unchanged_since(policy, time.time_ns())


def test_a_tree_with_too_many_leaves_is_not_snapshotted(
    tmp_path: Path, listings: Listings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past LEAF_WATCHES, leaves are held; past SNAPSHOT_DIRS held directories too, no snapshot."""
    monkeypatch.setattr(_gitscan, "LEAF_WATCHES", 20)
    for i in range(20 + _gitscan.SNAPSHOT_DIRS):
        (tmp_path / "ws" / f"d{i}").mkdir(parents=True)
    policy = profiles.workspace_write(tmp_path / "ws")
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))


def test_a_dropped_snapshots_changed_leaves_stop_being_watched(
    history: Path, tree: Path, listings: Listings
) -> None:
    """The watches of a snapshot dropped are kept for the next one to adopt, but one whose leaf changes
    is removed: a tree no longer used that keeps changing does not keep the queue filling (which would
    fail every other tree's quick check)."""
    hist = _snapshotted(history, listings)
    other = _snapshotted(tree, listings)
    listings.drop(_gitscan.snapshot_key(hist))
    count = listings.watcher.count()
    assert listings.unchanged_since(other, time.time_ns())
    (_object_dir(history) / "HEAD").write_text("")
    assert not listings.unchanged_since(other, time.time_ns())  # an event queued: the loop can't tell whose
    assert scan(other, time.time_ns(), listings) == []
    assert listings.watcher.count() == count - 1
    (_object_dir(history) / "HEAD").unlink()
    assert listings.unchanged_since(other, time.time_ns())


def test_a_tree_that_does_not_fit_keeps_no_watches(tmp_path: Path, listings: Listings) -> None:
    """A tree that grew past a snapshot since its last scan is tried (its cached listings still fit) until
    it is found too large: the watches added on the way are removed, not kept as spares (which would watch
    a large tree for nothing)."""
    ws = tmp_path / "ws"
    (ws / "first" / "leaf").mkdir(parents=True)
    policy = profiles.workspace_write(ws)
    _aged()
    _first(policy, listings)
    for i in range(_gitscan.SNAPSHOT_DIRS):
        for j in range(3):
            (ws / f"d{i}" / f"leaf{j}").mkdir(parents=True)
    _aged()
    assert scan(policy, time.time_ns(), listings) == []
    assert not listings.has(_gitscan.snapshot_key(policy))
    assert listings.watcher.fd >= 0  # it was tried
    assert listings.watcher.count() == 0


def test_a_files_attributes_in_a_leaf_do_not_cost_the_snapshot(history: Path, listings: Listings) -> None:
    """inotify reports a file's chmod or touch in a watched leaf (IN_ATTRIB with the file's name): the loop
    cannot tell, so that run is scanned, but the scan's sweep keeps the snapshot (names and types in the
    leaf are as they were). The leaf's own chmod drops it (test_every_change_of_a_watched_leaf_is_seen)."""
    policy = _snapshotted(history, listings)
    key = _gitscan.snapshot_key(policy)
    old = listings._snapshots[key]
    (history / "src" / "m2" / "x.py").chmod(0o600)
    os.utime(history / "src" / "m2" / "x.py")
    started = time.time_ns()
    assert not listings.unchanged_since(policy, started)
    assert scan(policy, started, listings) == []
    assert listings._snapshots[key] is old
    assert listings.unchanged_since(policy, time.time_ns())


def test_no_inotify_instance_to_be_had(
    tree: Path, listings: Listings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inotify_init1 failing with EMFILE (the user's 128 instances in use, or this process's fds): leaves
    are held as before, and the instance is not asked for again for every leaf."""
    import ctypes
    import errno

    from supervisor import _leafwatch

    calls: list[int] = []

    def emfile(flags: int) -> int:
        calls.append(flags)
        ctypes.set_errno(errno.EMFILE)
        return -1

    monkeypatch.setattr(_leafwatch, "_init1", emfile)
    policy = _snapshotted(tree, listings)
    snap = listings._snapshots[_gitscan.snapshot_key(policy)]
    assert snap.leaves == []
    assert len(calls) == 1
    assert listings.unchanged_since(policy, time.time_ns())
