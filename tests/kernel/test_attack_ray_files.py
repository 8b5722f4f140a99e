"""Cluster mode's workspace fetches (supervisor/ray/_files.py) against trees a real sandbox made.

`archive(root, path, limit)` is how a driver takes a session's results back from a node: it runs on the node,
in the node actor's process, over a workdir its sandboxes wrote. `limit` bounded only the files' contents,
so a command that made many empty files, links or directories (no content at all) had the node build a tar
of 512 bytes of header (and more for a long name) per member in memory, past any limit: 100,000 empty files
are 50 MiB of archive for a 1 MiB limit, a million half a GiB. The archive itself is bounded now.

No Ray here: the function is the node's, the tree a sandbox's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor
from supervisor.ray._files import WorkspaceError, archive

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
