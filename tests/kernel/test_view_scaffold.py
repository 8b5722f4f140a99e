"""The view's scaffold (supervisor/sandbox/mounts.py, `_scaffold`; docs/architecture.md, "What a spawn
costs"): /run, /dev, /sys/fs/cgroup and every denied directory are directories of one tmpfs, each bound at
its place. Checked from inside a real sandbox: each shows only its own content with its own mode (also
under a supervisor whose umask would take bits away), none leads to another or to the scaffold's root,
and the sandbox can neither write them nor link or rename between them."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel

PROBE = r"""
import errno, json, os, stat
R = {}
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
for path in ("/run", "/dev", "/sys/fs/cgroup", HIDDEN):
    st = os.stat(path)
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        names = err(e)
    R[path] = {"mode": oct(stat.S_IMODE(st.st_mode)), "names": names, "dev": st.st_dev, "ino": st.st_ino}
R["tmp"] = sorted(os.listdir("/tmp"))
attempts = {}
for what, call in (
    ("write /run", lambda: open("/run/x", "w")),
    ("mkdir /dev", lambda: os.mkdir("/dev/x")),
    ("link /dev/null -> /run", lambda: os.link("/dev/null", "/run/null")),
    ("rename /dev/fd -> /run", lambda: os.rename("/dev/fd", "/run/fd")),
    ("chmod hidden", lambda: os.chmod(HIDDEN, 0o755)),
):
    try:
        call()
        attempts[what] = "ok"
    except OSError as e:
        attempts[what] = err(e)
R["attempts"] = attempts
print(json.dumps(R))
"""

#: The scaffold's own directory names: none may show anywhere in the view.
SCAFFOLD_NAMES = {"run", "var-run", "dev", "cgroup", "empty"}


@pytest.fixture
def restrictive_umask() -> Iterator[None]:
    """umask 077 while the test's Supervisor starts its fork server (whose sandboxes inherit it)."""
    before = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(before)


@pytest.mark.usefixtures("restrictive_umask")
async def test_scaffold_directories_are_separate_and_keep_their_modes(workspace: Path) -> None:
    hidden = workspace / "secrets"
    hidden.mkdir()
    (hidden / "key").write_text("s3cret")
    policy = profiles.workspace_write(workspace, deny=[str(hidden)])
    async with Supervisor() as sup:
        os.umask(0o022)  # (the fork server has 077 now; the test's own files need not)
        script = textwrap.dedent(PROBE).replace("HIDDEN", repr(str(hidden)))
        r = await sup.run([sys.executable, "-I", "-c", script], policy=policy)
    assert r.exit_code == 0, r.stderr.decode()[-2000:]
    rep = json.loads(r.stdout)
    # Each keeps the mode its own tmpfs had, umask or not: 0755, and 0 for a hidden directory.
    assert [rep[p]["mode"] for p in ("/run", "/dev", "/sys/fs/cgroup")] == ["0o755"] * 3, rep
    assert rep[str(hidden)]["mode"] == "0o0", rep
    # One filesystem, four different directories of it: none is another's root.
    assert len({rep[p]["dev"] for p in ("/run", "/dev", "/sys/fs/cgroup", str(hidden))}) == 1
    assert len({rep[p]["ino"] for p in ("/run", "/dev", "/sys/fs/cgroup", str(hidden))}) == 4
    # Each shows its own content only, never the scaffold's other directories.
    assert rep["/run"]["names"] == [], rep["/run"]
    assert {"null", "fd"} <= set(rep["/dev"]["names"]), rep["/dev"]
    assert rep[str(hidden)]["names"] == "EACCES"
    for path in ("/run", "/dev", "/sys/fs/cgroup"):
        assert not SCAFFOLD_NAMES & set(rep[path]["names"]), rep[path]
    assert not SCAFFOLD_NAMES & set(rep["tmp"]), rep["tmp"]  # the private /tmp covers the scaffold's root
    # Nothing written, linked, renamed or re-moded among them.
    assert all(v != "ok" for v in rep["attempts"].values()), rep["attempts"]
    assert rep["attempts"]["link /dev/null -> /run"] in ("EXDEV", "EACCES", "EROFS", "EPERM")
    # From outside: the hidden file is untouched.
    assert (hidden / "key").read_text() == "s3cret"
