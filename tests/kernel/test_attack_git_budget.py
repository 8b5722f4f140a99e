"""The post-run scan's parse budget spent by the sandbox's own configs (issue 11, item 3).

The scan parses at most `PARSE_BUDGET` bytes (4 MiB) of git config per scan, so that a sandbox writing
many large configs cannot hold it for minutes. Configs written during the run past it are moved aside
unchecked (safe), but the user's own configs, older than the run, were then only "reported as not fully
scanned": the programs, included files and hooks directories they name went unchecked. A sandbox that
wrote ~5 MiB of harmless configs in directories the walk reaches before the user's repository, and
rewrote `tools/fsmon.sh`, which the user's `core.fsmonitor` runs, had the user's next `git status` run it
(with only a "not fully scanned" line to show for it). Now the top repository's own configs are parsed
whatever the budget, and any other config the scan cannot check for what it names is moved aside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor import Supervisor
from tests.kernel.test_attack_git import host_git, make_repo, payload, plant

pytestmark = pytest.mark.kernel


def junk_before(name: str) -> str:
    """Six git dirs with ~0.9 MiB harmless configs each, in directories the scan lists before `name` (the
    order the kernel gives, which `ls -f` shows inside: the scan walks in the same order)."""
    big = "import sys; sys.stdout.write('[user]\\n' + '\\tname = x\\n' * 100000)"
    return (
        "for i in $(seq 80); do mkdir j$i; done; "
        f"for d in $(ls -f | awk '/^{name}$/{{exit}} /^j/{{print}}' | head -6); do "
        "mkdir $d/objects $d/refs && echo 'ref: refs/heads/m' > $d/HEAD && "
        f'python3 -c "{big}" > $d/config; done; '
        f"test $(ls -f | awk '/^{name}$/{{exit}} /^j/{{print}}' | head -6 | wc -l) = 6"
    )


def user_program(repo: Path) -> None:
    """The user's repository runs `tools/fsmon.sh` (theirs, harmless) as its core.fsmonitor."""
    (repo / "tools").mkdir()
    (repo / "tools" / "fsmon.sh").write_text("#!/bin/sh\necho\n")
    (repo / "tools" / "fsmon.sh").chmod(0o755)
    assert host_git(repo, "config", "core.fsmonitor", "tools/fsmon.sh").returncode == 0


@pytest.mark.parametrize("repo", [".", "lib"])
async def test_the_sandboxs_configs_spend_the_budget_before_the_users(
    sup: Supervisor, workspace: Path, repo: str
) -> None:
    make_repo(workspace)
    user = workspace / repo
    if repo != ".":
        make_repo(user)  # a nested repository of the user's: no mount binds its config
    user_program(user)
    name = "\\.git" if repo == "." else repo
    rewrite = f"printf '#!/bin/sh\\n{payload(workspace)}\\necho\\n' > {repo}/tools/fsmon.sh"
    r = await plant(sup, workspace, junk_before(name) + " && " + rewrite)
    moved = [p for p, _ in r.quarantined]
    if repo == ".":
        assert str(user / "tools" / "fsmon.sh") in moved, r.quarantined
    else:  # the scan could not check it: moved aside, not just reported
        assert str(user / ".git" / "config") in moved, r.quarantined
    host_git(user, "status")
    assert not (workspace / "MARKER").exists(), "the host user's git ran code planted by the sandbox"
