"""Command-rule evaluation per command (a benchmark, not a test; issue 18: target <= 50 us for 200 rules).

    .venv/bin/python benchmarks/rules.py [--rules 200] [--n 20000] [--json out.json]

Builds a rule set of `--rules` prefix rules (the shape of a real agent file: a few hundred programs, some
with sub-command alternatives and prompt/forbidden rules sharing a program), then times
`CommandRules.evaluate` on a mix of commands: plain argv that match, argv no rule matches (the default),
absolute paths (the basename fallback), wrappers (`env FOO=1 ...`) and `bash -lc` scripts (parsed by
tree-sitter). Each figure is the median of 5 rounds of `--n` evaluations, in microseconds per command, and
as a ratio to a baseline measured in the same run: `shlex.split` of the same command line (what any caller
pays to turn a command string into argv).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import CommandRule, CommandRules

TARGET_US = 50.0

COMMANDS: dict[str, list[str]] = {
    "argv, matches": ["git", "push", "origin", "main"],
    "argv, no rule": ["unknown-tool-x", "--flag", "value"],
    "absolute path": ["/usr/bin/git", "status", "--short"],
    "env wrapper": ["env", "FOO=1", "BAR=2", "git", "diff", "--stat"],
    "bash -lc, 1 command": ["bash", "-lc", "git status"],
    "bash -lc, pipeline": ["bash", "-lc", "git log --oneline | head -n 20 && echo done"],
    "bash -lc, substitution": ["bash", "-lc", "echo $(git rev-parse HEAD) > out.txt"],
}


def make_rules(n: int) -> CommandRules:
    """`n` rules: git sub-commands, then tool-NNN programs, alternating decisions."""
    rules = [
        CommandRule(pattern=["git", ["status", "diff", "log", "show"]], match=["git status"]),
        CommandRule(pattern=["git", ["push", "fetch", "pull"]], decision="prompt", match=["git push"]),
        CommandRule(pattern=["git", "push", "--force"], decision="forbidden", justification="no"),
        CommandRule(pattern=["head"]),
        CommandRule(pattern=["echo"]),
    ]
    decisions = ("allow", "prompt", "forbidden")
    i = 0
    while len(rules) < n:
        rules.append(
            CommandRule(
                pattern=[f"tool-{i:03d}", ["run", "build", "test"]],
                decision=decisions[i % 3],  # type: ignore[arg-type]
                match=[f"tool-{i:03d} run x"],
                name=f"tool-{i}",
            )
        )
        i += 1
    return CommandRules(rules[:n], default="prompt")


def per_call_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rules = make_rules(args.rules)
    load_ms = (time.perf_counter() - t0) * 1e3
    rows = []
    print(f"{len(rules.rules)} rules, built and examples checked in {load_ms:.1f} ms")
    print(f"{'command':<26} {'us/command':>10} {'shlex.split':>11} {'ratio':>6}")
    for label, argv in COMMANDS.items():
        rules.evaluate(argv)  # warm: the parser is made once
        line = shlex.join(argv)
        us = per_call_us(lambda argv=argv: rules.evaluate(argv), args.n)
        base = per_call_us(lambda line=line: shlex.split(line), args.n)
        rows.append(
            {
                "command": label,
                "us": round(us, 2),
                "baseline_us": round(base, 2),
                "ratio": round(us / base, 2),
            }
        )
        flag = "" if us <= TARGET_US else f"  (over the {TARGET_US:g} us target)"
        print(f"{label:<26} {us:>10.2f} {base:>11.2f} {us / base:>6.2f}{flag}")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"rules": args.rules, "load_ms": load_ms, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
