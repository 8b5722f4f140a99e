"""Missing paths stood for by the nearest directory above them (supervisor/sandbox/_absent.py), on real
directories in tmp_path (the host's file system; no sandbox): `_absent.identities` gives what
`_cinit.identities` gives (every path lstat'ed) whatever is created, renamed, linked or removed between two
calls, while it skips the lstat of the paths a directory stands for; and no directory stands for a path
where that would not be sound (a symlink on the way, procfs, a writable root, a ctime too recent)."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.sandbox import _absent, _cinit

NAMES = [
    ".ssh",
    ".aws",
    ".netrc",
    ".config/gcloud",
    ".config/gh",
    ".local/share/keyrings",
    ".cargo/cred.toml",
]


def _settle() -> None:
    """Wait out the margin: a directory whose ctime is younger stands for nothing yet."""
    time.sleep(2 * _absent.MARGIN_NS / 1e9)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / ".config").mkdir(parents=True)
    (h / ".cargo").mkdir()
    (h / "stash").mkdir()
    (h / "stash" / "key").write_text("k")
    return h


def _paths(home: Path) -> list[str]:
    return [str(home / n) for n in NAMES]


def _learnt(paths: list[str]) -> tuple[_absent.Group, ...]:
    """Learn (settled), then check that the next call stands for every missing path and agrees with lstat."""
    _settle()
    _absent.identities(paths)
    idents, groups = _absent.identities(paths)
    assert idents == _cinit.identities(paths)
    return groups


def test_missing_paths_are_stood_for_by_their_nearest_directory(home: Path) -> None:
    paths = _paths(home)
    groups = _learnt(paths)
    by_name = {g.name: [paths[i] for i in g.members] for g in groups}
    assert by_name == {
        _absent.relative(str(home)): [
            str(home / n) for n in (".ssh", ".aws", ".netrc", ".local/share/keyrings")
        ],
        _absent.relative(str(home / ".config")): [str(home / ".config/gcloud"), str(home / ".config/gh")],
        _absent.relative(str(home / ".cargo")): [str(home / ".cargo/cred.toml")],
    }
    # And their lstat is skipped: a call makes one stat per directory (white-box: the plan's mask).
    plan = _absent._PLANS[tuple(paths)]
    assert plan.known is not None
    assert sum(plan.known) == len(paths)


def _write(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("s3cr3t\n")


CHANGES: dict[str, Callable[[Path], object]] = {
    "a missing file created": lambda h: _write(h / ".netrc"),
    "a missing directory created": lambda h: (h / ".ssh").mkdir(),
    "a missing chain created": lambda h: _write(h / ".local" / "share" / "keyrings"),
    "created one level down": lambda h: _write(h / ".config" / "gh"),
    "a directory renamed into place": lambda h: os.rename(h / "stash", h / ".aws"),
    "a file renamed into place": lambda h: os.rename(h / "stash" / "key", h / ".cargo" / "cred.toml"),
    "a symlink planted": lambda h: os.symlink("/etc/hostname", h / ".netrc"),
    "a dangling symlink planted": lambda h: os.symlink("nowhere", h / ".config" / "gcloud"),
    "a hard link made": lambda h: os.link(h / "stash" / "key", h / ".netrc"),
    "the nearest directory replaced": lambda h: (shutil.rmtree(h / ".config"), _write(h / ".config" / "gh")),
    "the home renamed away and another made": lambda h: (
        os.rename(h, h.with_name("old")),
        _write(h / ".ssh" / "id_rsa"),
    ),
    "the nearest directory made a symlink": lambda h: (
        shutil.rmtree(h / ".config"),
        _write(h / "stash" / "gh"),
        os.symlink(h / "stash", h / ".config"),
    ),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_change_is_seen_as_lstat_sees_it(home: Path, name: str) -> None:
    paths = _paths(home)
    _learnt(paths)
    before = _cinit.identities(paths)
    CHANGES[name](home)
    after = _cinit.identities(paths)
    assert after != before, "the change changes nothing lstat sees: the test proves nothing"
    assert _absent.identities(paths)[0] == after, name
    # And again (learnt anew, or still lstat'ed) once the new ctimes are old enough.
    _settle()
    assert _absent.identities(paths)[0] == after
    assert _absent.identities(paths)[0] == after


def test_random_changes_agree_with_lstat(home: Path) -> None:
    """Creations, renames, links and removals in any order, with the margin waited out or not: every call
    gives exactly the lstat records."""
    rnd = random.Random(11)
    paths = _paths(home)
    spots = [home / n for n in NAMES] + [home / "stash" / "x", home / ".config" / "other", home / "tmpdir"]
    for step in range(60):
        if rnd.random() < 0.5:
            _settle()
        idents, _groups = _absent.identities(paths)
        assert idents == _cinit.identities(paths), step
        target = rnd.choice(spots)
        kind = rnd.choice(["file", "dir", "link", "rename", "remove"])
        try:
            if kind == "file":
                _write(target)
            elif kind == "dir":
                target.mkdir(parents=True)
            elif kind == "link":
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink("/etc/hostname", target)
            elif kind == "rename":
                os.rename(rnd.choice(spots), target)
            elif target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        except OSError:
            continue
        assert _absent.identities(paths)[0] == _cinit.identities(paths), (step, kind, target)


def test_nothing_stands_for_a_path_where_it_would_not_be_sound(home: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", home / "linked")
    paths = [
        str(home / "linked" / ".ssh"),  # through a symlink: its lstat follows it elsewhere
        "/proc/corral-no-such-entry",  # procfs: its entries are made up at lookup
        str(home / "ws" / ".netrc"),  # under a writable root
        str(tmp_path / "file" / "below"),  # a file on the way (ENOTDIR, not missing)
    ]
    (home / "ws").mkdir()
    (tmp_path / "file").write_text("")
    _settle()
    for _ in range(2):
        idents, groups = _absent.identities(paths, (str(home / "ws"),))
        assert idents == _cinit.identities(paths)
        assert groups == ()


def test_a_directory_changed_within_the_margin_stands_for_nothing_yet(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _paths(home)
    (home / "fresh").mkdir()  # the home's ctime: now
    os.rmdir(home / "fresh")
    ctime = os.stat(home).st_ctime_ns

    class _Clock:
        @staticmethod
        def time_ns() -> int:  # the look-up happens within the margin of that change, however loaded
            return ctime + _absent.MARGIN_NS // 2

    monkeypatch.setattr(_absent, "time", _Clock)
    _idents, groups = _absent.identities(paths)
    assert _absent.relative(str(home)) not in {g.name for g in groups}
    assert _absent._PLANS[tuple(paths)].retry_ns > 0  # learnt again once the margin has passed
    monkeypatch.undo()
    (home / ".netrc").write_text("s3cr3t\n")  # in the same tick, maybe: must be seen
    assert _absent.identities(paths)[0] == _cinit.identities(paths)
