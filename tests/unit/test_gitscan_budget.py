"""The post-run git scan bounds the git config it parses (issue 11, item 6): git's syntax is read by a
Python port of git's parser (supervisor/sandbox/_gitconfig.py), so a sandbox that writes many large
configs must not hold the supervisor's scan for minutes. Past `PARSE_BUDGET` bytes in one scan, a config
written during the run is moved aside unchecked (safe: git works without it), and the rest is reported.
A real tree under tmp_path; no sandbox needed for the bound itself (the attack tests plant from inside)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from supervisor import _gitscan


def make_gitdir(path: Path, config: bytes) -> None:
    for d in ("objects", "refs"):
        (path / d).mkdir(parents=True)
    (path / "HEAD").write_text("ref: refs/heads/master\n")
    (path / "config").write_bytes(config)


def test_configs_past_the_parse_budget_are_moved_aside_unchecked(tmp_path: Path) -> None:
    started = time.time_ns()
    big = b"[core]\n" + b"\tbare = false\n" * ((1 << 20) // 14 - 1)  # ~1 MiB of a harmless setting
    n = _gitscan.PARSE_BUDGET // len(big) + 3
    for i in range(n):
        make_gitdir(tmp_path / f"r{i:02d}" / ".git", big)
    found = _gitscan.Scan([str(tmp_path)], started).run()
    unchecked = [p for p, why in found if "not checked" in why]
    assert len(unchecked) == n - _gitscan.PARSE_BUDGET // len(big)
    assert len(found) == len(unchecked)  # the configs parsed are harmless and stay
    for p in unchecked:
        assert not os.path.exists(p)
        assert os.path.exists(p + _gitscan.QUARANTINE_SUFFIX)


def test_a_config_without_include_or_hooks_path_is_not_parsed_for_them(tmp_path: Path) -> None:
    # The user's own large config, unchanged: read, but not parsed (no include, no core.hooksPath in it),
    # so it costs no budget and nothing is reported.
    big = b"[core]\n" + b"\tbare = false\n" * ((1 << 20) // 14 - 1)
    for i in range(_gitscan.PARSE_BUDGET // len(big) + 3):
        make_gitdir(tmp_path / f"r{i:02d}" / ".git", big)
    scan = _gitscan.Scan([str(tmp_path)], time.time_ns() + 10**10)
    assert scan.run() == []
    assert scan._parsed == 0


def _repo_with_object_dirs(root: Path, n: int) -> Path:
    git = root / "repo" / ".git"
    make_gitdir(git, b"[core]\n\trepositoryformatversion = 0\n")
    for i in range(n):
        d = git / "objects" / f"{i:02x}"
        d.mkdir()
        (d / ("0" * 38)).write_bytes(b"x")
    return git


def test_unchanged_leaf_directories_are_passed_over_unopened(tmp_path: Path) -> None:
    # A repository's object directories (no subdirectory, none of git's names) are looked at with one
    # fstatat once a listing of them is cached, not opened: the scan of a repository with history costs
    # ~1 ms less per run.
    _repo_with_object_dirs(tmp_path, 40)
    listings = _gitscan.Listings()
    time.sleep(_gitscan.MARGIN_NS / 1e9 * 3)  # ctimes older than the margin: the listings are kept
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, *args: object, **kw: object) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    assert _gitscan.Scan([str(tmp_path)], time.time_ns(), listings=listings).run() == []
    os.open = counting_open  # type: ignore[assignment]
    try:
        assert _gitscan.Scan([str(tmp_path)], time.time_ns(), listings=listings).run() == []
    finally:
        os.open = real_open
    assert not any(len(p) == 2 and int(p, 16) < 40 for p in opened), opened  # no object directory opened
    assert "objects" in opened


def test_a_git_dir_planted_in_a_passed_over_leaf_is_still_found(tmp_path: Path) -> None:
    # Creating anything in a leaf directory moves its ctime: the next scan opens and lists it again.
    git = _repo_with_object_dirs(tmp_path, 4)
    listings = _gitscan.Listings()
    time.sleep(_gitscan.MARGIN_NS / 1e9 * 3)
    assert _gitscan.Scan([str(tmp_path)], time.time_ns(), listings=listings).run() == []
    started = time.time_ns()
    evil = git / "objects" / "02" / "evil"
    make_gitdir(evil, b"[core]\n\tfsmonitor = touch /tmp/pwned\n")
    found = _gitscan.Scan([str(tmp_path)], started, listings=listings).run()
    assert [(p, "core.fsmonitor" in why) for p, why in found] == [(str(evil / "config"), True)]
    assert (evil / ("config" + _gitscan.QUARANTINE_SUFFIX)).exists()
