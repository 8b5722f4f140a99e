"""supervisor/ray/_files.py on real directories (no Ray): unpacking a caller's tarball into a workspace, and
reading files and trees back out of one that a sandbox may have filled with links, FIFOs and large files.
The host side must never follow a link the workspace holds, nor block on a FIFO."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from supervisor.ray._files import WorkspaceError, archive, read_file, remove_tree, split_relative, unpack


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_unpack_makes_files_dirs_and_links(tmp_path: Path) -> None:
    made = unpack(
        str(tmp_path),
        _tar(_file("a/b/c.txt", b"deep"), _file("run.sh", b"#!/bin/sh\n", 0o4755), _link("l", "a")),
    )
    assert made == 3
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"deep"
    assert os.stat(tmp_path / "run.sh").st_mode & 0o7777 == 0o755  # set-id bits dropped
    assert os.readlink(tmp_path / "l") == "a"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt"])
def test_unpack_refuses_paths_out_of_the_workspace(tmp_path: Path, name: str) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    with pytest.raises(WorkspaceError):
        unpack(str(root), _tar(_file(name, b"x")))
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_never_writes_through_a_link_of_its_own_archive(tmp_path: Path) -> None:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with pytest.raises(WorkspaceError) as info:
        unpack(str(root), _tar(_link("escape", str(outside)), _file("escape/planted.txt", b"x")))
    assert info.value.errno in (40, 20)  # ELOOP, ENOTDIR: the walk refused the link
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind", [tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_unpack_refuses_hard_links_devices_and_fifos(tmp_path: Path, kind: bytes) -> None:
    with pytest.raises(WorkspaceError, match="only directories"):
        unpack(str(tmp_path), _tar(_file("f", b"x"), _link("odd", "f", kind)))


def test_unpack_refuses_what_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a tar"):
        unpack(str(tmp_path), b"this is no archive" * 40)


def test_read_file_refuses_links_fifos_and_oversize(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host only")
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    (ws / "ok.txt").write_bytes(b"fine")
    (ws / "leak").symlink_to(secret)
    (ws / "up").symlink_to(tmp_path)
    (ws / "d" / "big").write_bytes(b"x" * 100)
    os.mkfifo(ws / "fifo")
    assert read_file(str(ws), "ok.txt") == b"fine"
    for path in ("leak", "up/secret", "../secret", str(secret), "d"):
        with pytest.raises(WorkspaceError):
            read_file(str(ws), path)
    with pytest.raises(WorkspaceError, match="regular"):
        read_file(str(ws), "fifo")  # refused at once: opened O_NONBLOCK, never read
    with pytest.raises(WorkspaceError, match="more than 99"):
        read_file(str(ws), "d/big", limit=99)
    assert read_file(str(ws), "d/big", limit=100) == b"x" * 100


def test_archive_keeps_links_as_links_and_skips_fifos(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host only")
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "a.txt").write_text("a")
    (ws / "sub" / "leak").symlink_to(secret)
    (ws / "sub" / "dirlink").symlink_to(tmp_path)
    os.mkfifo(ws / "sub" / "fifo")
    with tarfile.open(fileobj=io.BytesIO(archive(str(ws), "sub"))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["a.txt"]).read() == b"a"  # type: ignore[union-attr]
    assert set(members) == {"a.txt", "leak", "dirlink"}
    assert members["leak"].issym()
    assert members["leak"].linkname == str(secret)
    assert members["dirlink"].issym()
    with pytest.raises(WorkspaceError):
        archive(str(ws), "sub/dirlink")
    with pytest.raises(WorkspaceError, match="more than"):
        archive(str(ws), ".", limit=0)


def test_remove_tree_opens_up_locked_directories(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "locked" / "inner").mkdir(parents=True)
    (ws / "locked" / "inner" / "f").write_text("x")
    (ws / "link").symlink_to(tmp_path)
    os.chmod(ws / "locked", 0)
    remove_tree(str(ws))
    assert not ws.exists()
    assert tmp_path.exists()  # the link was removed, not followed
    remove_tree(str(ws))  # missing is fine


def test_split_relative() -> None:
    assert split_relative("./a//b/") == ["a", "b"]
    assert split_relative(".") == []
    for bad in ("/a", "a/../b", "a\0b"):
        with pytest.raises(WorkspaceError):
            split_relative(bad)
