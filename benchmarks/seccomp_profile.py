"""Spawn latency with an allowlist seccomp profile against the default filter (a benchmark, not a test;
issue 18: target <= 1.1x).

    .venv/bin/python benchmarks/seccomp_profile.py [--n 200] [--profile examples/seccomp/allowlist.json]

Runs `/bin/true` `--n` times under each policy, in alternating turns of 20 through one Supervisor with
pre-forking off (every sandbox built at its request, its filters installed on the spot), and prints the
median latency of `Supervisor.run` for each and their ratio. The profile's filter is compiled once per
policy, with the built-in rules into one filter, so what it adds per spawn is the larger program's
installation and evaluation of every syscall the command makes.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import Policy, load_seccomp_profile, profiles
from supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[1]


async def main(n: int, profile_file: str) -> None:
    workdir = tempfile.mkdtemp(prefix="corral-bench-")
    base = profiles.workspace_write(workdir)
    profile = load_seccomp_profile(profile_file)
    rules = sum(len(r.names) for r in profile.rules)
    with_profile = dataclasses.replace(base, syscalls=dataclasses.replace(base.syscalls, profile=profile))
    times: dict[str, list[float]] = {"default": [], "profile": []}
    policies: dict[str, Policy] = {"default": base, "profile": with_profile}
    async with Supervisor(prefork=0) as sup:
        for policy in policies.values():
            await sup.run(["/bin/true"], policy=policy)  # compile both first
        done = 0
        while done < n:
            for label, policy in policies.items():
                for _ in range(20):
                    t0 = time.perf_counter()
                    result = await sup.run(["/bin/true"], policy=policy)
                    times[label].append(time.perf_counter() - t0)
                    assert result.exit_code == 0
            done += 20
    d, p = statistics.median(times["default"]), statistics.median(times["profile"])
    print(f"profile: {profile_file} ({rules} names in {len(profile.rules)} rules, default {profile.default})")
    print(f"default filter   median {d * 1e3:.2f} ms")
    print(f"+ profile filter median {p * 1e3:.2f} ms")
    print(f"ratio {p / d:.3f} (target <= 1.1)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--profile", default=str(ROOT / "examples" / "seccomp" / "allowlist.json"))
    args = ap.parse_args()
    anyio.run(main, args.n, args.profile)
