"""The pre-forked sandbox's fingerprint re-checked on the loop (supervisor/forkserver/_recheck.py), on real
directories in tmp_path (the host's filesystem; no sandbox): every change that changes `mounts.fingerprint`
is seen by `Recheck.unchanged()`, a change elsewhere in the tree is not, and it gives up (None: the worker
thread's fingerprint, as before) where a check would not be sound."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.forkserver import _recheck
from supervisor.forkserver._recheck import MARGIN_NS, Recheck
from supervisor.sandbox import mounts


def _prepared(ws: Path, deny: tuple[str, ...] = ()) -> mounts.Prepared:
    return {
        "confine": True,
        "private_tmp": True,
        "tmp_size": "50%",
        "proc": True,
        "private_net": True,
        "write": [str(ws)],
        "read": ["/usr"],
        "deny": [str(ws / "secrets" / "key"), *deny],
        "protected": [".git/hooks", ".git/config", ".gitmodules"],
        "enforced": [],
    }


def _settle() -> None:
    """Wait out the record's ctime margin (a ctime younger than it makes `take` give up)."""
    time.sleep(2 * MARGIN_NS / 1e9)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    (d / "src").mkdir(parents=True)
    (d / "src" / "main.c").write_text("int main;\n")
    (d / "secrets").mkdir()
    return d


@pytest.fixture
def taken() -> Iterator[list[Recheck]]:
    out: list[Recheck] = []
    yield out
    for r in out:
        r.close()


def _take(ws: Path, taken: list[Recheck]) -> tuple[tuple[object, ...], Recheck]:
    _settle()
    fp, recheck = _recheck.take(_prepared(ws), str(ws))
    assert recheck is not None, "no Recheck for a settled tree"
    taken.append(recheck)
    assert recheck.unchanged()
    return fp, recheck


def _git_init(ws: Path) -> None:
    subprocess.run(["git", "init", "-q", str(ws)], check=True)


def _replace_workdir(ws: Path) -> None:
    for p in sorted(ws.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    ws.rmdir()
    ws.mkdir()


def _append_config(ws: Path) -> None:
    with (ws / ".git" / "config").open("a") as f:
        f.write('[core]\n\thooksPath = "hooks2"\n')


def _add_submodule_gitdir(ws: Path) -> None:
    sub = ws / ".git" / "modules" / "lib"
    sub.mkdir(parents=True)
    (sub / "HEAD").write_text("ref: refs/heads/main\n")


CHANGES: dict[str, tuple[bool, Callable[[Path], None]]] = {
    # name: (a git repository first, the change)
    "git init": (False, _git_init),
    "workdir replaced": (False, _replace_workdir),
    "deny path created": (False, lambda ws: (ws / "secrets" / "key").write_text("k")),
    "protected file created": (False, lambda ws: (ws / ".gitmodules").write_text("")),
    "hooks replaced by a symlink": (True, lambda ws: (os.rename(ws / ".git" / "hooks", ws / "h"),
                                                      os.symlink("/tmp", ws / ".git" / "hooks"))),
    ".git/config rewritten in place": (True, _append_config),
    "a submodule git dir added": (True, _add_submodule_gitdir),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_change_the_fingerprint_sees_is_seen(ws: Path, taken: list[Recheck], name: str) -> None:
    repo, change = CHANGES[name]
    if repo:
        _git_init(ws)
    fp, recheck = _take(ws, taken)
    change(ws)
    assert not recheck.unchanged(), name
    # And the fingerprint did change (the Recheck is not merely always false): except where only a
    # ctime moved, as with the config, whose new hooksPath the fingerprint lists only when it exists.
    if name != ".git/config rewritten in place":
        assert mounts.fingerprint(_prepared(ws), str(ws)) != fp, name


def test_a_change_nowhere_the_fingerprint_looks_is_not(ws: Path, taken: list[Recheck]) -> None:
    _git_init(ws)
    fp, recheck = _take(ws, taken)
    (ws / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (ws / "src" / "new.c").write_text("")
    (ws / ".git" / "objects" / "ab").mkdir()
    assert recheck.unchanged()
    assert mounts.fingerprint(_prepared(ws), str(ws)) == fp


def test_it_gives_up_where_a_check_would_not_be_sound(ws: Path, tmp_path: Path) -> None:
    # A symlink on the way to a path the fingerprint looks at: its lstat follows it elsewhere.
    (tmp_path / "elsewhere").mkdir()
    os.rmdir(ws / "secrets")
    os.symlink(tmp_path / "elsewhere", ws / "secrets")
    _settle()
    assert _recheck.take(_prepared(ws), str(ws))[1] is None
    # A ctime within the margin: a later change in the same tick could leave it as recorded.
    os.unlink(ws / "secrets")
    (ws / "secrets").mkdir()
    assert _recheck.take(_prepared(ws), str(ws))[1] is None
    # A policy that does not confine the filesystem: every path may be the sandbox's.
    _settle()
    assert _recheck.take({**_prepared(ws), "confine": False}, str(ws))[1] is None
    assert _recheck.take(None, str(ws))[1] is None


@pytest.mark.parametrize("where", ["a readable root", "the workdir", "a deny path"])
def test_a_link_on_the_way_to_a_host_path_is_followed_and_its_retarget_seen(
    tmp_path: Path, taken: list[Recheck], where: str
) -> None:
    """A host path outside the system trees reached through a symlink (a dotfiles `~/.config`, a home
    through a link): the link is resolved by hand, its own identity recorded (a retarget makes a new
    link), instead of no Recheck at all (each pre-forked take paying the worker-thread fingerprint)."""
    (tmp_path / "real" / "data").mkdir(parents=True)
    (tmp_path / "real" / "ws").mkdir()
    (tmp_path / "real" / "data" / "key").write_text("k")
    (tmp_path / "other" / "data").mkdir(parents=True)
    (tmp_path / "other" / "ws").mkdir()
    os.symlink("real", tmp_path / "lnk")
    ws, read, deny = tmp_path / "ws0", ["/usr"], []
    ws.mkdir()
    if where == "a readable root":
        read.append(str(tmp_path / "lnk" / "data"))
    elif where == "the workdir":
        ws = tmp_path / "lnk" / "ws"
    else:
        deny.append(str(tmp_path / "lnk" / "data" / "key"))
    prepared: mounts.Prepared = {**_prepared(ws), "read": read, "deny": deny}
    _settle()
    fp, recheck = _recheck.take(prepared, str(ws))
    assert recheck is not None, where
    taken.append(recheck)
    assert recheck.unchanged()
    os.unlink(tmp_path / "lnk")
    os.symlink("other", tmp_path / "lnk")
    assert not recheck.unchanged(), where
    assert mounts.fingerprint(prepared, str(ws)) != fp, where  # and the fingerprint did change


def test_a_link_into_another_filesystem_is_not_followed(tmp_path: Path) -> None:
    """Past a link, the walk stays on the filesystems the path's own way entered: a link (which a sandbox
    may have planted) never leads a check on the loop into another mount (a hung NFS or FUSE one)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    os.symlink("/proc/self", tmp_path / "lnk")
    prepared: mounts.Prepared = {**_prepared(ws), "read": ["/usr", str(tmp_path / "lnk" / "fd")]}
    _settle()
    assert _recheck.take(prepared, str(ws))[1] is None


def test_held_fds_are_closed(ws: Path) -> None:
    _settle()
    before = len(os.listdir("/proc/self/fd"))
    _fp, recheck = _recheck.take(_prepared(ws), str(ws))
    assert recheck is not None
    assert recheck.fds
    recheck.close()
    assert len(os.listdir("/proc/self/fd")) == before


# --- missing host paths, stood for by their nearest directory (sandbox/_absent.py) -----------------------

HOME_SECRETS = (".ssh", ".netrc", ".config/gh", ".local/share/keyrings")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home directory outside the writable root, as the default profiles' credential stores are."""
    h = tmp_path / "home"
    (h / ".config").mkdir(parents=True)
    (h / "stash").mkdir()
    return h


def _take_home(ws: Path, home: Path, taken: list[Recheck]) -> tuple[tuple[object, ...], Recheck]:
    prepared = _prepared(ws, tuple(str(home / n) for n in HOME_SECRETS))
    _settle()
    mounts.fingerprint(prepared, str(ws))  # the directories standing for missing paths are learnt
    fp, recheck = _recheck.take(prepared, str(ws))
    assert recheck is not None, "no Recheck for a settled tree"
    taken.append(recheck)
    # White-box: the home and its .config stand for the missing paths (one stat each, not one per path).
    assert {os.fsdecode(n) for n in recheck.groups} == {
        str(home).lstrip("/"),
        str(home / ".config").lstrip("/"),
    }
    assert recheck.unchanged()
    return fp, recheck


def _secret(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("s3cr3t\n")


HOST_CHANGES: dict[str, Callable[[Path], None]] = {
    "a credential file created": lambda h: _secret(h / ".netrc"),
    "a credential directory created": lambda h: (h / ".ssh").mkdir(),
    "a missing chain created": lambda h: _secret(h / ".local" / "share" / "keyrings"),
    "created in a nearer directory": lambda h: _secret(h / ".config" / "gh"),
    "a directory renamed into place": lambda h: os.rename(h / "stash", h / ".ssh"),
    "a symlink planted": lambda h: os.symlink("/etc/hostname", h / ".netrc"),
    "the home replaced": lambda h: (os.rename(h, h.with_name("old")), _secret(h / ".netrc")),
}


@pytest.mark.parametrize("name", sorted(HOST_CHANGES))
def test_a_missing_host_path_made_is_seen(ws: Path, home: Path, taken: list[Recheck], name: str) -> None:
    fp, recheck = _take_home(ws, home, taken)
    HOST_CHANGES[name](home)
    assert not recheck.unchanged(), name
    prepared = _prepared(ws, tuple(str(home / n) for n in HOME_SECRETS))
    assert mounts.fingerprint(prepared, str(ws)) != fp, name


def test_another_entry_of_the_standing_directory_is_no_change(
    ws: Path, home: Path, taken: list[Recheck]
) -> None:
    """The home's ctime moves (a file of the user's saved by rename, say): its missing paths are lstat'ed
    one by one then, and are still missing."""
    fp, recheck = _take_home(ws, home, taken)
    (home / ".bash_history").write_text("ls\n")
    os.rename(home / "stash", home / "stash2")
    assert recheck.unchanged()
    prepared = _prepared(ws, tuple(str(home / n) for n in HOME_SECRETS))
    assert mounts.fingerprint(prepared, str(ws)) == fp


def test_a_missing_name_below_a_directory_of_the_root_is_seen(ws: Path, taken: list[Recheck]) -> None:
    """Under a writable root, a missing name is not checked itself when its directory's ctime is
    recorded (that covers its creation): made by a sandbox there, it is seen all the same."""
    prepared = _prepared(ws, (str(ws / "secrets" / "sub" / "key"), str(ws / "secrets" / "tok")))
    _settle()
    fp, recheck = _recheck.take(prepared, str(ws))
    assert recheck is not None
    taken.append(recheck)
    assert recheck.unchanged()
    _secret(ws / "secrets" / "sub" / "key")
    assert not recheck.unchanged()
    assert mounts.fingerprint(prepared, str(ws)) != fp


def test_listing_a_modules_directory_stops_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox can fill `.git/modules` with millions of entries: the fork server's listing gives up after
    MAX_MODULE_DIRS + 1 of them instead of reading them all (and keeps exactly MAX_MODULE_DIRS)."""
    pulled = 0
    real_scandir = os.scandir

    class Counting:
        def __init__(self, fd: int) -> None:
            self._it = real_scandir(fd)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._it.close()

        def __iter__(self) -> Counting:
            return self

        def __next__(self) -> os.DirEntry[str]:
            nonlocal pulled
            entry = next(self._it)
            pulled += 1
            return entry

    monkeypatch.setattr(_recheck.os, "scandir", Counting)
    full, exact = tmp_path / "full", tmp_path / "exact"
    full.mkdir()
    exact.mkdir()
    for i in range(2000):
        (full / f"m{i}").mkdir()
    for i in range(_recheck.MAX_MODULE_DIRS):
        (exact / f"m{i}").mkdir()
    fd = os.open(full, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(_recheck._GiveUp):
            Recheck._list(fd)
    finally:
        os.close(fd)
    assert pulled == _recheck.MAX_MODULE_DIRS + 1, pulled
    fd = os.open(exact, os.O_PATH | os.O_DIRECTORY)
    try:
        assert len(Recheck._list(fd)) == _recheck.MAX_MODULE_DIRS
    finally:
        os.close(fd)
