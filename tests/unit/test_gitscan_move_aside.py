"""`_gitscan.move_aside`, which the git scan and the protected-path check use to put what a sandbox made out
of the way: on a real file system (tmp_path), no sandbox needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from supervisor import _gitscan


def test_move_aside_finds_a_name_whatever_the_sandbox_took(tmp_path: Path) -> None:
    """A directory at a name to move aside, with every fixed name beside it taken by a non-empty directory,
    and one whose name leaves no room for a suffix: each is moved (to a random name), never left in place;
    the names given are recognized as moved aside."""
    for i in range(10):
        (tmp_path / f"hooks.corral-quarantined{'.' + str(i) if i else ''}" / "x").mkdir(parents=True)
    (tmp_path / "hooks" / "pre-commit").mkdir(parents=True)
    long = "h" * 250
    (tmp_path / long / "x").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("hooks", long):
            found = _gitscan.move_aside(fd, str(tmp_path), name, "test")
            assert len(found) == 1, found
            assert "moved to" in found[0][1], found
            assert not (tmp_path / name).exists()
            target = found[0][1].rsplit("moved to ", 1)[1]
            assert (tmp_path / target).is_dir()
            assert _gitscan._moved_aside(target), target
    finally:
        os.close(fd)


def test_the_scans_path_lookups_follow_no_link_on_the_way(tmp_path: Path) -> None:
    """`lstat_nofollow`/`open_dir_nofollow` (the scan's look at a path it resolved component by component):
    a directory turned into a link since it was looked at is not followed (it could lead to a mount that
    hangs), where `os.lstat` of the path followed it."""
    (tmp_path / "real" / "bin").mkdir(parents=True)
    (tmp_path / "real" / "bin" / "fsmon.sh").write_text("")
    (tmp_path / "tools").symlink_to("real")
    via_link = str(tmp_path / "tools" / "bin" / "fsmon.sh")
    assert os.path.exists(via_link)
    assert _gitscan.lstat_nofollow(via_link) is None
    assert _gitscan.open_dir_nofollow(str(tmp_path / "tools" / "bin")) is None
    st = _gitscan.lstat_nofollow(str(tmp_path / "tools"))  # the link itself, as lstat
    assert st is not None
    assert stat.S_ISLNK(st.st_mode)
    assert _gitscan.lstat_nofollow(str(tmp_path / "real" / "bin" / "fsmon.sh")) is not None
    fd = _gitscan.open_dir_nofollow(str(tmp_path / "real" / "bin"))
    assert fd is not None
    os.close(fd)
