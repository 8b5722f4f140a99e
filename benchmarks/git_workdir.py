"""The cost of a run whose workdir is a git repository with history (a benchmark, not a test; issue 11).

    .venv/bin/python benchmarks/git_workdir.py [--rounds 3] [--runs 200] [--tree DIR] [--keep DIR] [--json F]

After every run of a policy that protects `.git`, the supervisor makes sure the sandbox planted nothing
in the writable roots that would make the host user's git run code (supervisor/_gitscan.py): a scan in a
worker thread, or, when a snapshot of the tree is kept and nothing in it changed, a quick check on the
event loop. This times `Supervisor.run(["/bin/true"])` (median of `--runs`, after 20 warm-up runs) with
the workspace-write profile in three scratch workdirs made here, alternating, `--rounds` times:

- `plain`: a small worktree (30 directories, 300 files), no git;
- `history`: the same worktree as a git repository with two commits, its objects loose (~250 object
  directories: what a fresh small repository looks like before git's automatic gc);
- `packed`: a worktree of 3,000 files in 220 directories, as a git repository with 300 commits, packed
  (`git gc`), as a clone of a real project looks.

and prints each median, the supervisor process's CPU time per run (`*_cpu`: every thread of it, the
after-run scan or quick check among them; less moved by other processes' load than wall-clock time), and
the ratios `history/plain` and `packed/plain` of the same round, of both (the figures to compare between
trees: load moves both sides). `--tree DIR` imports corral from another checkout (its own
venv's python, to compare a base commit in the same sitting, alternating); `--keep DIR` makes the
workdirs in DIR and keeps them (the next run reuses them). The workdirs' git runs with the host's own
configuration ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

_GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def _git(cwd: Path, *args: str, stdin: bytes | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=_GIT_ENV, input=stdin, check=True, stdout=subprocess.DEVNULL)


def _path(i: int, dirs: int) -> str:
    """The worktree path of file `i` of a tree of `dirs` directories, two levels deep."""
    d = i % dirs
    return f"pkg{d // 10}/mod{d % 10}/f{i}.py"


def _worktree(root: Path, dirs: int, files: int) -> None:
    """`files` small files spread over `dirs` directories."""
    for i in range(files):
        p = root / _path(i, dirs)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"# file {i}\nVALUE = {i}\n")


def _history(root: Path) -> None:
    _worktree(root, 30, 300)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "one")
    for i in range(0, 300, 2):
        (root / _path(i, 30)).write_text(f"VALUE = {-i}\n")
    _git(root, "commit", "-q", "-a", "-m", "two")


def _packed(root: Path) -> None:
    """A repository of 300 commits made with `git fast-import` (seconds, not minutes), then packed."""
    _worktree(root, 220, 3000)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "start")
    stream = []
    for c in range(299):
        body = f"VALUE = {c}\n".encode()
        stream.append(
            b"commit refs/heads/main\ncommitter bench <bench@localhost> %d +0000\ndata 2\nc\n"
            % (1767225600 + c)
            + (b"from refs/heads/main^0\n" if c == 0 else b"")
            + b"M 100644 inline %s\ndata %d\n%s\n" % (_path(c * 7 % 3000, 220).encode(), len(body), body)
        )
    _git(root, "fast-import", "--quiet", stdin=b"".join(stream))
    _git(root, "reset", "-q", "--hard", "main")
    _git(root, "gc", "-q", "--prune=now")


def _plain(root: Path) -> None:
    _worktree(root, 30, 300)


BUILD = {"plain": _plain, "history": _history, "packed": _packed}


def make_trees(base: Path) -> dict[str, Path]:
    trees = {}
    for name, build in BUILD.items():
        d = base / name
        if not (d / ".built").exists():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            build(d)
            (d / ".built").write_text("")
        trees[name] = d
    return trees


async def _median_ms(sup: Any, policy: Any, runs: int) -> tuple[float, float]:
    """The median wall-clock time of a run and the supervisor process's CPU time per run (all its threads:
    the after-run scan or quick check among them; the fork server's and the sandbox's are not in it), ms."""
    for _ in range(20):
        await sup.run(["/bin/true"], policy=policy)
    ts = []
    cpu = time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        r = await sup.run(["/bin/true"], policy=policy)
        ts.append(time.perf_counter() - t)
        if r.exit_code != 0 or r.quarantined:
            raise SystemExit(f"unexpected result: {r}")
    return statistics.median(ts) * 1e3, (time.process_time() - cpu) / runs * 1e3


async def main(trees: dict[str, Path], rounds: int, runs: int) -> list[dict[str, float]]:
    from policies import profiles
    from supervisor import Supervisor

    policies = {name: profiles.workspace_write(d) for name, d in trees.items()}
    rows = []
    for _ in range(rounds):
        row: dict[str, float] = {}
        async with Supervisor() as sup:  # one per round: each tree's first scan is its own
            for name, policy in policies.items():
                row[name], row[f"{name}_cpu"] = await _median_ms(sup, policy, runs)
            quick = getattr(getattr(sup, "_listings", None), "quick", -1)
        row["history/plain"] = row["history"] / row["plain"]
        row["packed/plain"] = row["packed"] / row["plain"]
        row["history_cpu/plain_cpu"] = row["history_cpu"] / row["plain_cpu"]
        row["packed_cpu/plain_cpu"] = row["packed_cpu"] / row["plain_cpu"]
        row["quick_checks"] = quick
        print(
            "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        rows.append(row)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    sys.path.insert(0, str(a.tree.resolve()))
    base = a.keep or Path(tempfile.mkdtemp(prefix="corral-gitwd-", dir="/var/tmp"))
    try:
        out = anyio.run(main, make_trees(base), a.rounds, a.runs)
    finally:
        if a.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in out) for k in out[0] if "/" in k}
    print(f"{a.tree}: medians " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
