"""The identities a view's fingerprint and a pre-forked sandbox's recheck compare (`_cinit.identities`,
`_csample.stat_at`) tell a regular file with other hard links from one without (bit 33 of the mode word), so
that a link made to a denied file after its view was built sends the next request to a fresh build, which
refuses it (mounts._links_outside; tests/kernel/test_attack_hidden.py). A directory's link count, which moves
with each subdirectory, is left out. Real files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.sandbox._cinit import identities
from supervisor.sandbox._csample import stat_at

LINKS = 1 << 33
AT_FDCWD = -100


def modes(path: Path) -> tuple[int, int]:
    by_identities = int.from_bytes(identities([str(path)])[16:24], "little")
    by_stat_at = int.from_bytes(stat_at([AT_FDCWD], [os.fsencode(path)])[16:24], "little")
    return by_identities, by_stat_at


def test_a_second_link_changes_the_identity_of_a_file(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("x")
    before = modes(f)
    assert all(m & LINKS == 0 for m in before)
    os.link(f, tmp_path / "other")
    after = modes(f)
    assert all(m & LINKS for m in after)
    assert all(m & 0o177777 == os.lstat(f).st_mode for m in after)  # the mode itself unchanged
    os.unlink(tmp_path / "other")
    assert modes(f) == before


def test_a_directory_keeps_its_identity_when_subdirectories_come_and_go(tmp_path: Path) -> None:
    before = modes(tmp_path)
    (tmp_path / "sub").mkdir()
    assert os.lstat(tmp_path).st_nlink > 2
    assert modes(tmp_path) == before
