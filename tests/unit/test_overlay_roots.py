"""Which directories a view shows through an overlay of its own (mounts.overlay_roots), decided on the host
from real files in a scratch directory (the kernel side, the race against the host's renames, is
tests/kernel/test_attack_hidden_host.py)."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from supervisor.sandbox import mounts

SCRATCH = Path("/var/tmp/corral-tests")  # not under /tmp: the view replaces /tmp, never overlaid


@pytest.fixture
def d() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    path = SCRATCH / f"ovl-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def prepared(deny: list[Path], write: Sequence[Path] = ()) -> mounts.Prepared:
    return {
        "confine": True,
        "private_tmp": True,
        "tmp_size": "50%",
        "proc": True,
        "private_net": True,
        "write": [str(p) for p in write],
        "read": [],
        "deny": [str(p) for p in deny],
        "protected": [],
        "enforced": [],
    }


def test_the_read_only_directory_of_an_existing_denied_file(d: Path) -> None:
    (d / "home").mkdir()
    (d / "home" / ".netrc").write_text("x")
    (d / "ws").mkdir()
    pol = prepared([d / "home" / ".netrc", d / "home" / ".absent"], write=[d / "ws"])
    assert mounts.overlay_roots(pol, str(d / "ws")) == [str(d / "home")]


def test_only_the_topmost_of_nested_directories(d: Path) -> None:
    (d / "home" / ".cargo").mkdir(parents=True)
    (d / "home" / ".netrc").write_text("x")
    (d / "home" / ".cargo" / "credentials.toml").write_text("x")
    pol = prepared([d / "home" / ".cargo" / "credentials.toml", d / "home" / ".netrc"])
    assert mounts.overlay_roots(pol, str(d)) == [str(d / "home")]
    # Without the file above, the deeper directory is the one overlaid.
    os.unlink(d / "home" / ".netrc")
    assert mounts.overlay_roots(pol, str(d)) == [str(d / "home" / ".cargo")]


def test_none_for_a_directory_a_writable_root_holds(d: Path) -> None:
    # The home directory as the workdir: an overlay has no upper layer, it would make the home read-only.
    (d / ".netrc").write_text("x")
    assert mounts.overlay_roots(prepared([d / ".netrc"], write=[d]), str(d)) == []
    (d / "sub").mkdir()
    (d / "sub" / ".env").write_text("x")
    assert mounts.overlay_roots(prepared([d / "sub" / ".env"], write=[d]), str(d)) == []


def test_none_for_absent_files_directories_or_names_overlay_options_cannot_carry(d: Path) -> None:
    (d / "keys").mkdir()
    assert mounts.overlay_roots(prepared([d / "absent", d / "keys"]), str(d)) == []
    (d / "a:b").mkdir()
    (d / "a:b" / "token").write_text("x")
    assert mounts.overlay_roots(prepared([d / "a:b" / "token"]), str(d)) == []


def test_none_without_confinement(d: Path) -> None:
    (d / "token").write_text("x")
    pol = prepared([d / "token"])
    pol["confine"] = False
    assert mounts.overlay_roots(pol, str(d)) == []
    assert mounts.overlay_roots(None, str(d)) == []


def test_the_host_mount_table_is_read() -> None:
    points = mounts._host_mount_points()
    assert "/" in points
    assert "/proc" in points


def test_a_whiteout_layer_for_the_absent_names(d: Path) -> None:
    # What the overlay puts over the directory: a whiteout (character device 0:0) per denied name that is
    # missing while its parent exists, in directories with the host's modes and owners.
    (d / "home" / ".config").mkdir(parents=True)
    os.chmod(d / "home", 0o710)
    os.chmod(d / "home" / ".config", 0o750)
    (d / "home" / ".netrc").write_text("x")
    top = str(d / "home")
    denied = [f"{top}/.netrc", f"{top}/.git-credentials", f"{top}/.config/gh", f"{top}/.aws/credentials"]
    layer = mounts._whiteouts(top, denied)
    assert layer is not None
    base = Path(layer)
    for rel in (".git-credentials", ".config/gh"):
        st = os.lstat(base / rel)
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == 0
    assert not (base / ".netrc").exists()  # it exists on the host: hidden by a mount instead
    assert not (base / ".aws").exists()  # its parent is missing: no phantom directory
    assert stat.S_IMODE(os.lstat(base).st_mode) == 0o710
    assert stat.S_IMODE(os.lstat(base / ".config").st_mode) == 0o750
    assert mounts._whiteouts(top, denied) == layer  # made once
    assert mounts._whiteouts(top, [f"{top}/.netrc"]) is None  # nothing absent: no layer


def test_the_layers_of_a_process_that_is_gone_are_swept() -> None:
    # A fork server killed (SIGKILL) runs no atexit handler: the next one removes what it left, whatever pid
    # its name carries (one in a pid namespace of its own names it with a pid the host gives to another
    # process: pid 1 here); a directory whose maker is alive (it holds a flock on it) stays.
    tag = uuid.uuid4().hex[:6]
    stale = Path(f"/dev/shm/corral-whiteouts-1-test{tag}")
    stale.mkdir()
    (stale / "x").mkdir()
    mine = Path(f"/dev/shm/corral-whiteouts-{os.getpid()}-test{tag}")
    mine.mkdir()
    held = os.open(mine, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        mounts._sweep_layers()
        assert not stale.exists()
        assert mine.exists()  # a live maker's layers stay
        os.close(held)
        held = -1
        mounts._sweep_layers()
        assert not mine.exists()  # its maker gone (the lock released), they go too
    finally:
        if held >= 0:
            os.close(held)
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def test_a_layer_home_is_held_by_its_maker() -> None:
    # The home this process makes its layers in is locked before it gets the name the sweep looks for.
    top = "/etc"
    denied = [f"/etc/corral-absent-{uuid.uuid4().hex[:8]}"]
    layer = mounts._whiteouts(top, denied)
    assert layer is not None
    home = Path(layer).parent
    assert home.name.startswith(f"corral-whiteouts-{os.getpid()}-")
    mounts._sweep_layers()
    assert Path(layer).exists()
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
