"""The mount plan's handling of paths a sandbox could have changed (supervisor/sandbox/mounts.py): binds made
by the init from a no-follow fd (OP_MOUNT_AT), directories above a denied path pinned as mount points, denied
names resolved to the objects they lead to, and links to what sandboxes need refused. Plan-level checks; the
attacks themselves are in tests/kernel/test_attack_paths.py and test_attack_hidden.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.sandbox import _cinit, _sys, mounts
from supervisor.sandbox._ops import Plan


def ops(plan: Plan) -> list[tuple[int, tuple[int, ...], str | None]]:
    return [(op.code, op.a, op.path) for op in plan.ops]


def test_binds_go_through_the_no_follow_op() -> None:
    plan = Plan()
    mounts._bind(plan, "/w", readonly=False)
    mounts._bind(plan, "/w/.git/hooks", readonly=True)
    assert [op.code for op in plan.ops] == [_cinit.OP_MOUNT_AT, _cinit.OP_MOUNT_AT]
    writable, readonly = plan.ops
    assert writable.a == (0, 0, mounts.MOUNT_ATTR_RDONLY, 1)  # clear read-only on the top mount only
    assert readonly.a[1] & mounts.MOUNT_ATTR_RDONLY
    assert readonly.a[3] == 3  # with what is below, and read-only all of it


def test_directories_between_a_root_and_a_denied_path_are_pinned(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "key").write_text("x")
    (tmp_path / "x" / "y").mkdir(parents=True)
    root = str(tmp_path)
    denied = [f"{root}/a/b/c/key", f"{root}/x", f"{root}/x/y/z", "/elsewhere/k", f"{root}/absent/k"]
    plan = Plan()
    mounts._pin_ancestors(plan, root, denied)
    pinned = [path for code, _a, path in ops(plan) if code == _cinit.OP_MOUNT_AT]
    # Not the root (a mount point already), not inside a hidden directory, nothing for what does not exist.
    assert pinned == [f"{root}/a", f"{root}/a/b", f"{root}/a/b/c"]
    assert all(op.a == (0, 0, 0, 1) for op in plan.ops)  # attributes kept as they are


def test_links_on_the_way_to_a_denied_path_are_pinned(tmp_path: Path) -> None:
    # home/.ssh -> ../dotfiles/ssh and cfg -> dotfiles: each link below the root, and the directory above
    # it, is pinned (a link with its own flag: opened O_NOFOLLOW by the init); links outside the root are not.
    (tmp_path / "dotfiles" / "ssh").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".ssh").symlink_to("../dotfiles/ssh")
    (tmp_path / "cfg").symlink_to("dotfiles")
    root = str(tmp_path)
    names = [f"{root}/home/.ssh", f"{root}/cfg/ssh/id", f"{root}/plain"]
    denied = [f"{root}/dotfiles/ssh", f"{root}/dotfiles/ssh/id", f"{root}/plain"]
    chains = mounts._link_chains(names)
    assert len(chains) == 2
    plan = Plan()
    mounts._pin_ancestors(plan, root, denied, chains)
    pinned = [(path, a[3]) for code, a, path in ops(plan) if code == _cinit.OP_MOUNT_AT]
    link, tree = mounts._AT_LINK, mounts._AT_SUBMOUNTS
    assert pinned == [
        (f"{root}/home", tree),
        (f"{root}/home/.ssh", link),
        (f"{root}/dotfiles", tree),
        (f"{root}/cfg", link),
    ]
    plan = Plan()
    mounts._pin_ancestors(plan, f"{root}/elsewhere", denied, chains)
    assert plan.ops == []


def test_denied_names_are_followed_to_their_object(tmp_path: Path) -> None:
    (tmp_path / "dotfiles" / "gcloud").mkdir(parents=True)
    (tmp_path / "config").symlink_to("dotfiles")
    prepared = {"deny": [f"{tmp_path}/config/gcloud", f"{tmp_path}/plain"], "write": [str(tmp_path)]}
    assert mounts._deny_targets(prepared) == [f"{tmp_path}/dotfiles/gcloud", f"{tmp_path}/plain"]


@pytest.mark.parametrize("target", ["/usr", "/", "/proc", "/tmp", ".."])
def test_a_denied_name_linked_to_what_sandboxes_need_is_refused(tmp_path: Path, target: str) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".netrc").symlink_to(target)
    with pytest.raises(_sys.SetupFailure) as info:
        mounts._deny_targets({"deny": [f"{ws}/.netrc"], "write": [str(ws)]})
    assert info.value.path == f"{ws}/.netrc"
    assert "remove it" in str(info.value.to_dict()["hint"])
