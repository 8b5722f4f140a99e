"""Cluster mode's workspace fetches (supervisor/ray/_files.py) against trees a real sandbox made.

`archive(root, path, limit)` is how a driver takes a session's results back from a node: it runs on the node,
in the node actor's process, over a workdir its sandboxes wrote. `limit` bounded only the files' contents,
so a command that made many empty files, links or directories (no content at all) had the node build a tar
of 512 bytes of header (and more for a long name) per member in memory, past any limit: 100,000 empty files
are 50 MiB of archive for a 1 MiB limit, a million half a GiB. The archive itself is bounded now.

`remove_tree` (a session's close, its lease's expiry, the node's shutdown) and `archive` walked the tree
recursively: a command's 3,000 nested directories ended both in RecursionError. From the lease expiry
task, the exception ended the node's supervisor, killing every other session's commands, and the workdir
stayed. Removal is iterative now, never raises, and holds a bounded number of fds; `archive` refuses a tree
deeper than MAX_ARCHIVE_DEPTH with a WorkspaceError.

No Ray here: the functions are the node's, the trees a sandbox's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor
from supervisor.ray._files import WorkspaceError, archive, remove_tree

pytestmark = pytest.mark.kernel

PY = "/usr/bin/python3"
LIMIT = 1 << 20

# Each makes 12,000 members with no content at all: about 6 MiB of tar headers.
PLANTS = {
    "empty_files": "for i in range(12000): open(f'f{i:05}', 'x').close()",
    "symlinks": "import os\nfor i in range(12000): os.symlink('/etc/passwd', f'l{i:05}')",
    "directories": "import os\nfor i in range(12000): os.mkdir(f'd{i:05}')",
}


@pytest.mark.parametrize("kind", sorted(PLANTS))
async def test_archive_of_a_sandboxs_contentless_tree_is_bounded(
    sup: Supervisor, workspace: Path, kind: str
) -> None:
    policy = profiles.workspace_write(workspace, timeout=120)
    r = await sup.run([PY, "-c", PLANTS[kind]], policy=policy)
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    assert len(os.listdir(workspace)) == 12000
    # On main: no error, an archive of ~6 MiB returned for the 1 MiB limit.
    with pytest.raises(WorkspaceError, match=f"more than {LIMIT} bytes as an archive"):
        archive(str(workspace), ".", limit=LIMIT)


async def test_archive_within_the_limit_still_holds_every_member(sup: Supervisor, workspace: Path) -> None:
    """The bound counts headers, so a tree that fits is archived whole, exactly to its size."""
    policy = profiles.workspace_write(workspace, timeout=60)
    script = "import os\nos.mkdir('d')\nfor i in range(100): open(f'd/f{i}', 'w').write('x' * i)"
    r = await sup.run([PY, "-c", script], policy=policy)
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    data = archive(str(workspace), ".", limit=LIMIT)
    assert len(data) <= LIMIT
    with pytest.raises(WorkspaceError, match="more than"):
        archive(str(workspace), ".", limit=len(data) - 1)
    assert archive(str(workspace), ".", limit=len(data)) == data


DEEP = """
import os
for i in range(3000):
    os.mkdir('d')
    os.chdir('d')
    if i == 1000:
        os.mkdir('locked'); open('locked/f', 'w').close(); os.chmod('locked', 0)
        os.symlink(OUTSIDE, 'out'); os.mkfifo('fifo'); open('file', 'w').write('x')
    if i == 2000:
        keep = os.open('.', os.O_RDONLY)
        open('g', 'w').close()
os.fchmod(keep, 0o500)  # a directory its owner cannot write, deep down
"""


async def test_a_sandboxs_deep_tree_is_removed_and_refused_by_archive(
    sup: Supervisor, workspace: Path, outside: Path
) -> None:
    policy = profiles.workspace_write(workspace, timeout=120)
    r = await sup.run([PY, "-c", f"OUTSIDE = {str(outside)!r}\n{DEEP}"], policy=policy)
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    assert (workspace / "d" / "d").is_dir()
    with pytest.raises(WorkspaceError, match="levels deep"):  # on main: RecursionError
        archive(str(workspace), ".", limit=LIMIT)
    assert remove_tree(str(workspace)) is True  # on main: RecursionError, the tree left
    with pytest.raises(FileNotFoundError):
        os.lstat(workspace)
    assert sorted(os.listdir(outside)) == ["canary.txt"]  # the link was removed, not followed
    assert (outside / "canary.txt").read_text() == "host canary\n"
