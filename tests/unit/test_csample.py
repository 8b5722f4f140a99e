"""The cgroup sampler's C reader (supervisor/sandbox/_csample.c) on FAKE files: regular files in tmp_path
with the kernel's formats (nothing here reads a real cgroup; tests/kernel/test_limits.py and the monitoring
benchmark do). It must agree with the Python parsers (`parse_stats`), skip the slots given -1, and refuse
what it does not know (ValueError, OSError) so that the sampler falls back to the careful path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.sandbox._csample import read_leaf
from supervisor.sandbox.cgroups import CgroupStats, parse_stats

V2 = (
    b"1048576\n",
    b"2097152\n",
    b"low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 1\n",
    b"usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 0\n",
    b"7\n",
    b"max 4\n",
    b"65536\n",
)
V1 = (
    b"4096\n",
    b"8192\n",
    b"oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
    b"2500000000\n",
    b"3\n",
    b"max 0\n",
    b"0\n",
)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[list[int]]:
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def _files(tmp_path: Path, contents: tuple[bytes, ...], fds: list[int]) -> tuple[int, ...]:
    for i, data in enumerate(contents):
        p = tmp_path / f"f{i}"
        p.write_bytes(data)
        fds.append(os.open(p, os.O_RDONLY))
    return tuple(fds)


@pytest.mark.parametrize(("version", "contents"), [(2, V2), (1, V1)])
def test_it_agrees_with_the_python_parsers(
    tmp_path: Path, opened: list[int], version: int, contents: tuple[bytes, ...]
) -> None:
    fds = _files(tmp_path, contents, opened)
    m, peak, oom, cpu, pids, pe, tcp = read_leaf(fds, version == 2)
    assert CgroupStats(m, peak, cpu, pids, oom, pe) == parse_stats(version, *contents[:6])
    assert tcp == int(contents[6])


def test_slots_given_minus_one_are_not_read(tmp_path: Path, opened: list[int]) -> None:
    fds = _files(tmp_path, V2, opened)
    out = read_leaf((fds[0], -1, -1, fds[3], -1, -1, -1), True)
    assert out == (1048576, None, None, 1.5, None, None, None)


@pytest.mark.parametrize(
    ("slot", "data"),
    [
        (2, b"oom 1\n"),  # no oom_kill line (kernels before 4.13)
        (2, b"xoom_kill 3\n"),  # not at a line's start
        (0, b"max\n"),  # not a number
        (0, b""),
        (5, b"max.imposed 3\n"),
        (3, b"user_usec 1\n"),  # v2 cpu.stat without usage_usec
    ],
)
def test_an_unknown_format_is_refused(tmp_path: Path, opened: list[int], slot: int, data: bytes) -> None:
    contents = list(V2)
    contents[slot] = data
    fds = _files(tmp_path, tuple(contents), opened)
    with pytest.raises(ValueError, match=f"slot {slot}"):
        read_leaf(fds, True)


def test_a_failed_read_raises_oserror(tmp_path: Path, opened: list[int]) -> None:
    fds = list(_files(tmp_path, V1, opened))
    fds[4] = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # pread on a directory: EISDIR
    opened.append(fds[4])
    with pytest.raises(IsADirectoryError):
        read_leaf(tuple(fds), False)


def test_stat_at_does_not_follow_and_encodes_failures(tmp_path: Path) -> None:
    from supervisor.sandbox._csample import stat_at

    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        out = stat_at([fd, fd, fd, -100], [b"d", b"link", b"missing", os.fsencode(tmp_path / "d")])
    finally:
        os.close(fd)
    words = [int.from_bytes(out[k * 8 : k * 8 + 8], "little") for k in range(len(out) // 8)]
    rec = [words[i * 5 : i * 5 + 5] for i in range(4)]
    d, link = os.lstat(tmp_path / "d"), os.lstat(tmp_path / "link")
    assert rec[0] == [d.st_dev, d.st_ino, d.st_mode, d.st_uid << 32 | d.st_gid, d.st_ctime_ns]
    assert rec[1][1:3] == [link.st_ino, link.st_mode]  # the symlink itself, not its target
    assert rec[2] == [0, 0, 1 << 40 | 2, 0, 0]  # ENOENT
    assert rec[3][:4] == rec[0][:4]
    assert rec[3][4] == 0  # an absolute host path (AT_FDCWD): no ctime


def test_stat_at_careful_mask(tmp_path: Path) -> None:
    """Mask 1: no symlink followed on the way (ELOOP), the last component not followed either; mask 2: the
    ctime left out; 0 (or no mask): as before, a link on the way followed."""
    import errno

    from supervisor.sandbox._csample import stat_at

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "via").symlink_to(tmp_path / "real")
    (tmp_path / "last").symlink_to(tmp_path / "real")
    through, last = os.fsencode(tmp_path / "via" / "sub"), os.fsencode(tmp_path / "last")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        out = stat_at(
            [-100, -100, -100, fd, fd], [through, through, last, b"real", b"real"], b"\x00\x01\x01\x02\x00"
        )
    finally:
        os.close(fd)
    words = [int.from_bytes(out[k * 8 : k * 8 + 8], "little") for k in range(len(out) // 8)]
    rec = [words[i * 5 : i * 5 + 5] for i in range(5)]
    sub, link, real = (
        os.stat(tmp_path / "real" / "sub"),
        os.lstat(tmp_path / "last"),
        os.lstat(tmp_path / "real"),
    )
    assert rec[0][1] == sub.st_ino  # followed on the way
    assert rec[1] == [0, 0, 1 << 40 | errno.ELOOP, 0, 0]
    assert rec[2][1:3] == [link.st_ino, link.st_mode]  # the link itself
    assert rec[3][:4] == [real.st_dev, real.st_ino, real.st_mode, real.st_uid << 32 | real.st_gid]
    assert rec[3][4] == 0
    assert rec[4][4] == real.st_ctime_ns
    with pytest.raises(ValueError, match="same length"):
        stat_at([-100], [b"/"], b"\x00\x00")
