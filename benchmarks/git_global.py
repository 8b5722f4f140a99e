"""What reading the host users' global git configuration costs the post-run git scan (a benchmark, not a
test; issue 11).

    .venv/bin/python benchmarks/git_global.py [--rounds 3] [--scans 200] [--checks 2000]

Each scan (supervisor/_gitscan.py) reads the users' global and system git config (supervisor/_gitglobal.py)
to check what it includes, names as hooks or runs under a writable root; later scans reuse that read while
the files' identity holds, and the event loop's quick check compares that identity. This times, in one
process and alternating, with a scratch `$HOME` whose `.gitconfig` includes a second file (as many do):

- `_gitscan.scan` of a scratch two-commit repository, later scans (median of `--scans`);
- `Listings.unchanged_since`, the quick check answered from a snapshot (median of `--checks`);

each with the reading as built, and with `_gitglobal.references` stubbed to return nothing (the baseline),
and prints both and the difference per round. Run under load, the differences are what to compare.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from policies import profiles
from supervisor import _gitglobal, _gitscan

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": "/usr/bin:/bin",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--checks", type=int, default=2000)
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="corral-git-global-", dir="/var/tmp")
    try:
        repo, home = os.path.join(scratch, "repo"), os.path.join(scratch, "home")
        os.mkdir(home)
        subprocess.run(["git", "init", "-q", repo], env=GIT_ENV, check=True)
        for i in range(2):
            subprocess.run(
                ["git", "-C", repo, "commit", "-q", "--allow-empty", "-m", str(i)], env=GIT_ENV, check=True
            )
        with open(os.path.join(home, ".gitconfig"), "w") as f:
            f.write("[user]\n\tname = me\n[include]\n\tpath = ~/more\n")
        with open(os.path.join(home, "more"), "w") as f:
            f.write("[core]\n\tpager = less\n")
        os.environ["HOME"] = home
        for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_COUNT", "XDG_CONFIG_HOME"):
            os.environ.pop(name, None)
        policy = profiles.workspace_write(repo)
        time.sleep(0.05)  # ctimes older than the scans' margin
        real = _gitglobal.references

        def stub(roots: Sequence[str], env: Mapping[str, str] | None = None) -> _gitglobal.Refs:
            return _gitglobal.Refs()

        def scans() -> float:
            listings = _gitscan.Listings()
            _gitscan.scan(policy, time.time_ns(), listings)
            out = []
            for _ in range(args.scans):
                t = time.perf_counter()
                _gitscan.scan(policy, time.time_ns(), listings)
                out.append(time.perf_counter() - t)
            listings.close()
            return statistics.median(out) * 1e3

        def checks() -> float:
            listings = _gitscan.Listings()
            for _ in range(2):  # the second scan keeps a snapshot of the now-settled tree
                _gitscan.scan(policy, time.time_ns() - 1_000_000_000, listings)
                time.sleep(0.05)
            start = time.time_ns()
            out = []
            for _ in range(args.checks):
                t = time.perf_counter()
                ok = listings.unchanged_since(policy, start)
                out.append(time.perf_counter() - t)
            listings.close()
            if not ok:
                raise SystemExit("no snapshot was kept: the quick check was not measured")
            return statistics.median(out) * 1e6

        def with_refs(fn: Callable[[], float], refs: Callable[..., _gitglobal.Refs]) -> float:
            _gitglobal.references = refs  # type: ignore[assignment]
            try:
                return fn()
            finally:
                _gitglobal.references = real  # type: ignore[assignment]

        for rnd in range(args.rounds):
            a, b = with_refs(scans, real), with_refs(scans, stub)
            qa, qb = with_refs(checks, real), with_refs(checks, stub)
            print(
                f"round {rnd}: scan {a:.3f} ms (baseline {b:.3f}, {a - b:+.3f} ms); "
                f"quick check {qa:.1f} us (baseline {qb:.1f}, {qa - qb:+.1f} us)"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
