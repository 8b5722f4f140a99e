"""Command rules: which commands may run, need a person's approval, or are forbidden (docs/rules.md).

The model follows Codex's execpolicy: prefix rules, each token a literal or a set of alternatives, a
decision (`allow` < `prompt` < `forbidden`), a justification, and `match`/`not_match` examples checked when
the rules are made. corral adds the sandbox an allowed command runs under (`profile` or `policy`), a
default for commands no rule matches, and a decision for shell scripts it cannot see through (`opaque`).

Evaluating a command (`CommandRules.evaluate`):
- `bash -c SCRIPT` (and sh, dash, zsh, ksh with any short options around `c`) is split into its simple
  commands by a real bash parser (policies/_shell.py); each is evaluated, and a script the parser cannot
  prove simple takes the `opaque` decision as well;
- wrappers that run another command (`env NAME=V ...`, `nice`, `nohup`, `timeout`, `command`, `exec`,
  `setsid`, `stdbuf`, `time`) are looked through: the wrapped command is evaluated, and rules written for
  the wrapper itself still apply;
- an absolute or relative path as the program also matches the rules written for its basename
  (`/usr/bin/git push` is `git push`), unless `host_executable` lists the paths a basename may stand for:
  a path not listed then keeps only the basename's prompt and forbidden rules, never its allow rules;
- the strictest decision of all the matching rules wins; a simple command no rule matches takes the
  default.

Pure data: no syscalls. Shell splitting needs the `rules` extra (tree-sitter).
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from policies import profiles
from policies._errors import PolicyError, printable
from policies._model import Policy

Decision = Literal["allow", "prompt", "forbidden"]
DECISIONS: tuple[str, ...] = get_args(Decision)
_RANK: dict[str, int] = {d: i for i, d in enumerate(DECISIONS)}

#: Programs that run their argument as a shell script with `-c`.
SHELLS = frozenset({"bash", "sh", "dash", "zsh", "ksh", "mksh", "ash", "busybox-sh"})

#: Shell long options that take no value and change nothing the rules care about.
_SHELL_LONG_FLAGS = frozenset({"--login", "--noprofile", "--norc", "--posix", "--restricted", "--"})

#: How deep shells and wrappers may nest (`bash -c "env bash -c '...'"`) before the command is opaque.
MAX_DEPTH = 8

Token = str | None

#: Programs that run code their argv does not show: a command running one is opaque.
_OPAQUE_PROGRAMS = {
    "eval": "eval (runs its words as a script)",
    "source": "source (runs a script file)",
    ".": ". (runs a script file)",
    "xargs": "xargs (builds commands from its input)",
}


def stricter(a: str, b: str) -> str:
    """The stricter of two decisions (forbidden > prompt > allow)."""
    return a if _RANK[a] >= _RANK[b] else b


def _check_decision(value: object, path: str) -> Decision:
    if value not in DECISIONS:
        raise PolicyError(path, f"expected one of {', '.join(DECISIONS)}", value)
    return value  # type: ignore[return-value]


def _tokens(value: object, path: str) -> tuple[str, ...]:
    """An example command: a list of strings, or a string split as a shell would (shlex)."""
    if isinstance(value, str):
        try:
            tokens = shlex.split(value)
        except ValueError as err:
            raise PolicyError(path, f"the example is not valid shell syntax ({err})", value) from err
    elif isinstance(value, Sequence) and all(isinstance(t, str) for t in value):
        tokens = list(value)
    else:
        raise PolicyError(path, "an example is a string or a list of strings", value)
    if not tokens:
        raise PolicyError(path, "an example cannot be empty", value)
    return tuple(tokens)


@dataclass(frozen=True, slots=True)
class CommandRule:
    """One prefix rule.

    pattern:       the prefix, one entry per argv position: a literal, or alternatives (a tuple of
                   literals); given as `["git", ["push", "fetch"]]`, stored as tuples of alternatives.
    decision:      allow | prompt | forbidden (default allow, as in Codex).
    justification: why the rule exists; shown when it refuses or asks (for a forbidden rule, say what to
                   use instead).
    profile:       a built-in profile (read-only, workspace-write, full-access) to run a command this rule
                   allows under, on the caller's workdir with the caller's resource limits; or
    policy:        a whole Policy to run it under instead of the caller's.
    match/not_match: examples (argv lists, or strings split like a shell) that must / must not match this
                   rule; checked by `CommandRules` when the rules are made.
    name:          how errors and decisions name the rule (`rules[3]`, or `file.rules:12`).

    Raises PolicyError (path ``pattern``, ``decision``, ...) for an invalid field.
    """

    pattern: tuple[tuple[str, ...], ...]
    decision: Decision = "allow"
    justification: str | None = None
    profile: str | None = None
    policy: Policy | None = None
    match: tuple[tuple[str, ...], ...] = ()
    not_match: tuple[tuple[str, ...], ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        where = f"{self.name}." if self.name else ""
        set_ = object.__setattr__
        raw = self.pattern
        if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
            raise PolicyError(f"{where}pattern", "expected a non-empty list of tokens", raw)
        pattern: list[tuple[str, ...]] = []
        for i, tok in enumerate(raw):
            alts = (tok,) if isinstance(tok, str) else tok
            if (
                isinstance(alts, str)
                or not isinstance(alts, Sequence)
                or not alts
                or not all(isinstance(a, str) and a for a in alts)
            ):
                raise PolicyError(
                    f"{where}pattern[{i}]",
                    "a token is a non-empty string or a non-empty list of alternatives",
                    tok,
                )
            pattern.append(tuple(dict.fromkeys(alts)))
        set_(self, "pattern", tuple(pattern))
        _check_decision(self.decision, f"{where}decision")
        if self.justification is not None and (
            not isinstance(self.justification, str) or not self.justification.strip()
        ):
            raise PolicyError(
                f"{where}justification", "a justification is a non-empty string", self.justification
            )
        if self.profile is not None:
            if self.profile not in profiles.NAMES:
                raise PolicyError(
                    f"{where}profile", f"expected one of {', '.join(profiles.NAMES)}", self.profile
                )
            if self.policy is not None:
                raise PolicyError(f"{where}policy", "give a profile or a policy, not both")
        if self.policy is not None and not isinstance(self.policy, Policy):
            raise PolicyError(f"{where}policy", "expected a Policy", self.policy)
        if (self.profile is not None or self.policy is not None) and self.decision == "forbidden":
            raise PolicyError(
                f"{where}profile", "a forbidden command never runs: it takes no profile or policy"
            )
        set_(self, "match", tuple(_tokens(e, f"{where}match[{i}]") for i, e in enumerate(self.match)))
        set_(
            self,
            "not_match",
            tuple(_tokens(e, f"{where}not_match[{i}]") for i, e in enumerate(self.not_match)),
        )

    @property
    def programs(self) -> tuple[str, ...]:
        """The first token's alternatives: the programs this rule is about."""
        return self.pattern[0]

    def prefix(self, argv: Sequence[Token]) -> tuple[bool, bool]:
        """(certain, possible): whether `argv` starts with this rule's pattern, for certain, or possibly (a
        word bash computes at run time, None, could be any token). The first token is not compared: the
        caller looked the rule up by it."""
        if len(argv) < len(self.pattern):
            return False, False
        certain = True
        for alts, tok in zip(self.pattern[1:], argv[1:], strict=False):
            if tok is None:
                certain = False
            elif tok not in alts:
                return False, False
        return certain, True

    def describe(self) -> str:
        """The pattern as one line: `git [push|fetch]`."""
        return " ".join(a[0] if len(a) == 1 else "[" + "|".join(a) + "]" for a in self.pattern)

    def to_dict(self) -> dict[str, object]:
        """This rule as JSON-ready data (`corral check --json`)."""
        out: dict[str, object] = {
            "name": self.name,
            "pattern": [list(a) if len(a) > 1 else a[0] for a in self.pattern],
            "decision": self.decision,
        }
        if self.justification is not None:
            out["justification"] = self.justification
        if self.profile is not None:
            out["profile"] = self.profile
        if self.policy is not None:
            out["policy"] = self.policy.profile
        return out


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A rule that matched one simple command. `certain` is False when the command has words bash computes
    at run time and the rule may match them (only prompt and forbidden rules count then). `resolved` is
    the program's path when the rule matched through its basename."""

    rule: CommandRule
    command: tuple[Token, ...]
    certain: bool = True
    resolved: str | None = None

    def to_dict(self) -> dict[str, object]:
        out = self.rule.to_dict()
        out["command"] = list(self.command)
        out["matched_prefix"] = list(self.command[: len(self.rule.pattern)])
        if not self.certain:
            out["certain"] = False
        if self.resolved is not None:
            out["resolved_program"] = self.resolved
        return out


@dataclass(frozen=True, slots=True)
class CommandDecision:
    """What the rules decided for one command, and why.

    decision: allow | prompt | forbidden.
    argv:     the command as given.
    rule:     the rule that made the decision (the most specific of the strictest matches), or None when
              the default or the opaque decision made it.
    matches:  every rule that matched any simple command.
    commands: the simple commands evaluated (a shell script's, a wrapper's inner command); None stands for
              a word bash computes at run time.
    unmatched: the simple commands no rule matched (they took the default).
    opaque:   why the command could not be proven to be only those simple commands (empty: it could).
    reason:   one line saying why, for messages and logs.
    policy:   the Policy the command runs under when allowed (None: the caller's), from the deciding
              rule's `profile` or `policy`, applied by `policy_for`.
    """

    decision: Decision
    argv: tuple[str, ...]
    rule: CommandRule | None
    matches: tuple[RuleMatch, ...]
    commands: tuple[tuple[Token, ...], ...]
    unmatched: tuple[tuple[Token, ...], ...]
    opaque: tuple[str, ...]
    profile: str | None = None
    policy: Policy | None = None
    #: What `reason` is made from, when it is read: (the deciding match, the default, the opaque decision).
    _why: tuple[RuleMatch | None, str, str] = (None, "prompt", "prompt")

    @property
    def reason(self) -> str:
        """One line saying why, for messages and logs."""
        rule_match, default, opaque = self._why
        if rule_match is not None and rule_match.rule.decision == self.decision:
            r = rule_match.rule
            name = f"{r.name} " if r.name else ""
            text = f"rule {name}`{r.describe()}` ({r.decision}) matches `{_show(rule_match.command)}`"
            return text + (f": {r.justification}" if r.justification else "")
        if self.opaque and self.decision == opaque:
            return (
                f"not provably simple ({'; '.join(self.opaque)}): the decision for opaque commands ({opaque})"
            )
        if self.unmatched:
            return f"no rule matches `{_show(self.unmatched[0])}`: the default ({default})"
        return f"the default ({self.decision})"

    @property
    def justification(self) -> str:
        """The deciding rule's justification, or the reason when it has none."""
        if self.rule is not None and self.rule.justification:
            return self.rule.justification
        return self.reason

    def policy_for(self, caller: Policy) -> Policy:
        """The Policy to run the command under: the deciding rule's policy, its profile on the caller's
        workdir with the caller's resource limits, or the caller's own."""
        if self.policy is not None:
            return self.policy
        if self.profile is not None:
            return replace(profiles.get(self.profile, caller.workdir), resources=caller.resources)
        return caller

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: `decision`, `rule` (or null), `reason`, `justification`, `matched_rules`, `commands`,
        `unmatched`, `opaque` (`corral check --json`, `corral run --json`)."""
        return {
            "decision": self.decision,
            "rule": self.rule.to_dict() if self.rule is not None else None,
            "reason": self.reason,
            "justification": self.rule.justification if self.rule is not None else None,
            "matched_rules": [m.to_dict() for m in self.matches],
            "commands": [list(c) for c in self.commands],
            "unmatched": [list(c) for c in self.unmatched],
            "opaque": list(self.opaque),
        }


def _show(argv: Sequence[Token]) -> str:
    return " ".join("<computed>" if t is None else shlex.quote(t) for t in argv)


@dataclass(frozen=True, slots=True)
class _Expanded:
    """A command expanded: its simple commands, the explicit rule matches of the wrappers and shells
    around them (those match by their own rules, never the default), and the opaque reasons."""

    commands: list[tuple[Token, ...]] = field(default_factory=list)
    outer: list[tuple[Token, ...]] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    #: What the command changes for the programs it runs: the variables it assigns (`PATH=x cmd`, a
    #: script's `PATH=x;`, `env NAME=VALUE`) and env's own changes (`env -i`, `-u NAME`, `-C DIR`).
    changes: list[str] = field(default_factory=list)

    def why(self, reason: str) -> None:
        if reason not in self.opaque:
            self.opaque.append(reason)


class CommandRules:
    """A set of command rules with a default decision (docs/rules.md). Immutable once made.

    rules:   CommandRule objects, in order (the order breaks ties between equally strict, equally specific
             rules when choosing the one reported).
    default: the decision for a simple command no rule matches (default "prompt").
    opaque:  the decision for a shell script the parser cannot prove simple; never looser than `default`
             (default: the stricter of `default` and "prompt").
    host_executables: basename -> the absolute paths it may stand for (Codex's `host_executable`).
    source:  the file the rules came from, for messages.

    Every rule's `match` examples must match it and its `not_match` examples must not (host executables
    taken into account): otherwise PolicyError naming the rule and the example. Raises PolicyError for a
    bad default or opaque decision.
    """

    __slots__ = ("_by_program", "default", "host_executables", "opaque", "rules", "source")

    def __init__(
        self,
        rules: Iterable[CommandRule] = (),
        *,
        default: Decision = "prompt",
        opaque: Decision | None = None,
        host_executables: Mapping[str, Iterable[str]] | None = None,
        source: str | None = None,
    ) -> None:
        self.rules: tuple[CommandRule, ...] = tuple(rules)
        self.source = source
        for i, r in enumerate(self.rules):
            if not isinstance(r, CommandRule):
                raise PolicyError(f"rules[{i}]", "expected a CommandRule", r, source)
        try:
            self.default: Decision = _check_decision(default, "default")
            self.opaque: Decision = (
                _check_decision(opaque, "opaque") if opaque is not None else stricter(self.default, "prompt")  # type: ignore[assignment]
            )
            if _RANK[self.opaque] < _RANK[self.default]:
                raise PolicyError(
                    "opaque",
                    f"the decision for opaque scripts cannot be looser than the default ({self.default})",
                    self.opaque,
                )
            self.host_executables: dict[str, tuple[str, ...]] = {}
            for name, paths in (host_executables or {}).items():
                self.host_executables[name] = _host_paths(name, paths)
        except PolicyError as err:
            raise err.with_source(source) from None
        self._by_program: dict[str, list[CommandRule]] = {}
        for r in self.rules:
            for program in r.programs:
                self._by_program.setdefault(program, []).append(r)
        for r in self.rules:
            self._check_examples(r)

    def _check_examples(self, rule: CommandRule) -> None:
        """Each example of `rule`, checked against `rule` alone, as Codex does."""
        alone = CommandRules.__new__(CommandRules)
        alone.rules = (rule,)
        alone.host_executables = self.host_executables
        alone._by_program = {p: [rule] for p in rule.programs}
        for kind, examples, want in (("match", rule.match, True), ("not_match", rule.not_match, False)):
            for i, example in enumerate(examples):
                got = any(m.certain for m in alone._matches(example))
                if got != want:
                    verb = "does not match" if want else "matches"
                    raise PolicyError(
                        f"{rule.name or 'rule'}.{kind}[{i}]",
                        f"the example {verb} the rule `{rule.describe()}`",
                        shlex.join(example),
                        self.source,
                    )

    @classmethod
    def merge(cls, *sets: CommandRules) -> CommandRules:
        """One set from several (several rule files): every rule, in order; the strictest default and
        opaque decisions; the host executables' paths joined."""
        if not sets:
            return cls()
        default = sets[0].default
        opaque = sets[0].opaque
        hosts: dict[str, list[str]] = {}
        for s in sets:
            default = stricter(default, s.default)  # type: ignore[assignment]
            opaque = stricter(opaque, s.opaque)  # type: ignore[assignment]
            for name, paths in s.host_executables.items():
                hosts.setdefault(name, []).extend(p for p in paths if p not in hosts.get(name, []))
        sources = [s.source for s in sets if s.source]
        return cls(
            [r for s in sets for r in s.rules],
            default=default,
            opaque=opaque,
            host_executables=hosts,
            source=", ".join(sources) if sources else None,
        )

    def __repr__(self) -> str:
        return f"CommandRules({len(self.rules)} rules, default={self.default!r}, opaque={self.opaque!r}" + (
            f", source={self.source!r})" if self.source else ")"
        )

    # -- evaluation ---------------------------------------------------------------------------------------

    def _matches(self, command: Sequence[Token]) -> list[RuleMatch]:
        """Every rule matching one simple command: by its program as written, then by its basename."""
        program = command[0]
        if program is None:
            return []
        found: list[RuleMatch] = []
        key = tuple(command)
        for r in self._by_program.get(program, ()):
            certain, possible = r.prefix(command)
            if possible:
                found.append(RuleMatch(r, key, certain))
        if "/" in program:
            base = program.rpartition("/")[2]
            listed = self.host_executables.get(base)
            trusted = listed is None or program in listed
            for r in self._by_program.get(base, ()):
                if r.decision == "allow" and not trusted:
                    continue  # a path host_executable does not list is not the trusted program
                certain, possible = r.prefix(command)
                if possible:
                    found.append(RuleMatch(r, key, certain, resolved=program))
        return found

    def evaluate(self, argv: Sequence[str | bytes | os.PathLike[str]]) -> CommandDecision:
        """Decide `argv` (docs/rules.md, "How a command is decided"). Never raises for any argv; raises
        RulesUnavailableError when a shell script must be split and tree-sitter is not installed."""
        words: tuple[str, ...] = (
            tuple(argv)  # type: ignore[arg-type]  # every item is a str: checked just here
            if all(type(a) is str for a in argv)
            else tuple(os.fsdecode(a) for a in argv)
        )
        ex = _Expanded()
        if not words:
            ex.why("an empty command")
        else:
            _expand(words, ex, 0)
        matches: list[RuleMatch] = []
        unmatched: list[tuple[Token, ...]] = []
        decision: str = "allow"
        deciding: list[RuleMatch] = []  # per simple command, its most specific strictest certain match
        choices: set[tuple[str | None, Policy | None]] = set()

        for command in ex.outer:
            found = self._matches(command)
            matches.extend(found)
            best = _best(found)
            if best is not None:
                decision = stricter(decision, best.rule.decision)
                deciding.append(best)
        for command in ex.commands:
            found = self._matches(command)
            matches.extend(found)
            best = _best(found)
            if best is None:
                unmatched.append(command)
                decision = stricter(decision, self.default)
                choices.add((None, None))
                continue
            decision = stricter(decision, best.rule.decision)
            deciding.append(best)
            choices.add((best.rule.profile, best.rule.policy))
        if not ex.commands:  # `bash -c ''`, an empty argv: nothing a rule could vouch for
            decision = stricter(decision, self.default)
        if ex.opaque:
            decision = stricter(decision, self.opaque)
        # A script whose commands each ask for another sandbox cannot run under one of them: it is opaque.
        if len(choices) > 1 and decision != "forbidden":
            ex.why("its commands ask for different sandbox policies")
            decision = stricter(decision, self.opaque)
        # A rule's own sandbox vouches for its program, not for what the command changes around it: PATH
        # (a program of the same name elsewhere), LD_PRELOAD, BASH_ENV, PYTHONPATH (code a sandbox wrote),
        # env -C (another directory). Such a command is opaque.
        if (
            ex.changes
            and decision != "forbidden"
            and len(choices) == 1
            and next(iter(choices)) != (None, None)
        ):
            names = ", ".join(dict.fromkeys(ex.changes))
            ex.why(
                f"it changes the environment or directory ({names}) of a command its rule runs in a sandbox "
                "of its own (PATH, LD_PRELOAD, BASH_ENV or the directory choose what runs there)"
            )
            decision = stricter(decision, self.opaque)
        top = [m for m in deciding if m.rule.decision == decision]
        rule_match = max(top, key=lambda m: len(m.rule.pattern)) if top else None
        rule = rule_match.rule if rule_match is not None else None
        profile, policy = (
            next(iter(choices)) if len(choices) == 1 and decision != "forbidden" else (None, None)
        )
        return CommandDecision(
            decision=decision,  # type: ignore[arg-type]
            argv=words,
            rule=rule,
            matches=tuple(matches),
            commands=tuple(ex.commands),
            unmatched=tuple(unmatched),
            opaque=tuple(ex.opaque),
            _why=(rule_match, self.default, self.opaque),
            profile=profile,
            policy=policy,
        )


def _best(found: list[RuleMatch]) -> RuleMatch | None:
    """The strictest, then most specific, of `found` (an uncertain match of an allow rule does not count)."""
    best: RuleMatch | None = None
    for m in found:
        rule = m.rule
        if not m.certain and rule.decision == "allow":
            continue
        if best is None:
            best = m
            continue
        mine, theirs = _RANK[rule.decision], _RANK[best.rule.decision]
        if mine > theirs or (mine == theirs and len(rule.pattern) > len(best.rule.pattern)):
            best = m
    return best


def _host_paths(name: object, paths: object) -> tuple[str, ...]:
    if not isinstance(name, str) or not name or "/" in name:
        raise PolicyError("host_executable.name", "a bare program name (no /)", name)
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        raise PolicyError(f"host_executable[{name}].paths", "expected a list of absolute paths", paths)
    out: list[str] = []
    for p in paths:
        if not isinstance(p, str) or not (p.startswith("/") or p.startswith("~/")):
            raise PolicyError(f"host_executable[{name}].paths", "each path is absolute (or ~/...)", p)
        p = os.path.expanduser(p)
        if posixpath.basename(p) != name:
            raise PolicyError(f"host_executable[{name}].paths", f"each path must end in /{name}", p)
        if p not in out:
            out.append(p)
    return tuple(out)


# -- expansion of shells and wrappers -----------------------------------------------------------------------


def _shell_script(argv: tuple[Token, ...]) -> tuple[str | None, bool]:
    """For `sh -c SCRIPT ...`: (the script, True); for a shell run another way (a script file, stdin):
    (None, False); for options this cannot read that may still mean -c: (None, True)."""
    i = 1
    has_c = False
    while i < len(argv):
        arg = argv[i]
        if arg is None:
            return None, True
        if arg in _SHELL_LONG_FLAGS:
            i += 1
            if arg == "--":
                break
            continue
        if arg in ("-o", "+o", "-O", "+O"):
            i += 2  # a named option: takes the next word
            continue
        if len(arg) > 1 and arg[0] in "-+" and arg[1:].isalpha():
            if "c" in arg[1:] and arg[0] == "-":
                has_c = True
            i += 1
            continue
        break
    if not has_c:
        # An option this does not read (--rcfile FILE, ...) may hide a -c after it: then no script is vouched
        # for (a script file's own arguments that look like -c are refused the same way: conservative).
        later = argv[i:]
        hidden = any(a is None or (a.startswith("-") and not a.startswith("--") and "c" in a) for a in later)
        return None, hidden
    if i >= len(argv):
        return None, True  # -c with no script: bash refuses it; nothing to vouch for
    return argv[i], True


def _unwrap(argv: tuple[Token, ...]) -> tuple[tuple[Token, ...] | None, bool]:
    """For a wrapper that runs another command: (the inner argv, True); (None, True) when the wrapper's
    options cannot be read (opaque); (None, False) when `argv` is not a wrapper (or wraps nothing)."""
    program = argv[0]
    name = program.rpartition("/")[2] if program is not None else None
    rest = list(argv[1:])
    if name == "env":
        while rest:
            a = rest[0]
            if a is None:
                return None, True
            if a in ("-i", "-", "--ignore-environment", "-0", "--null"):
                rest.pop(0)
            elif a in ("-u", "--unset", "-C", "--chdir"):
                if len(rest) < 2:
                    return None, True
                del rest[:2]
            elif a.startswith(("--unset=", "--chdir=")) or (a.startswith(("-u", "-C")) and len(a) > 2):
                rest.pop(0)
            elif a == "--":
                rest.pop(0)
                break
            elif a.startswith("-"):
                return None, True  # -S splits a string into words; other options unknown
            elif "=" in a:
                rest.pop(0)
            else:
                break
        while rest and rest[0] is not None and "=" in rest[0] and not rest[0].startswith("="):
            rest.pop(0)
        return (tuple(rest), True) if rest else (None, False)
    if name in ("nohup", "setsid", "time", "exec", "command", "builtin"):
        if name == "command" and rest and rest[0] in ("-v", "-V"):
            return None, False  # `command -v x` only looks x up
        while rest and rest[0] is not None and rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag == "--":
                break
            if name == "exec" and flag == "-a":
                if not rest:
                    return None, True
                rest.pop(0)
        return (tuple(rest), True) if rest else (None, False)
    if name == "nice":
        while rest and rest[0] is not None and rest[0].startswith("-"):
            flag = rest.pop(0)
            if flag in ("-n", "--adjustment"):
                if not rest:
                    return None, True
                rest.pop(0)
            elif flag == "--":
                break
        return (tuple(rest), True) if rest else (None, False)
    if name in ("timeout", "stdbuf"):
        takes_value = {
            "-s",
            "--signal",
            "-k",
            "--kill-after",
            "-i",
            "-o",
            "-e",
            "--input",
            "--output",
            "--error",
        }
        while rest and rest[0] is not None and rest[0].startswith("-") and rest[0] != "-":
            flag = rest.pop(0)
            if flag == "--":
                break
            if flag in takes_value:
                if not rest:
                    return None, True
                rest.pop(0)
        if name == "timeout":
            if not rest:
                return None, False
            rest.pop(0)  # the duration
        return (tuple(rest), True) if rest else (None, False)
    return None, False


def _env_changes(argv: tuple[Token, ...]) -> list[str]:
    """What `env` changes for the command it runs: the names it sets, and its options that change the
    environment or the directory (`env -i`, `env -u NAME`, `env -C DIR`), as written."""
    out: list[str] = []
    rest = list(argv[1:])
    while rest:
        a = rest.pop(0)
        if a is None:
            break
        if a == "--":
            continue
        if a.startswith("-"):
            if a in ("-0", "--null"):
                continue
            out.append(f"env {printable(a, 64)}")
            if a in ("-u", "--unset", "-C", "--chdir") and rest:
                rest.pop(0)
        elif "=" in a and not a.startswith("="):
            out.append(printable(a.split("=", 1)[0], 64))
        else:
            break
    return out


def _expand_script(script: str, ex: _Expanded, depth: int) -> None:
    """Add the simple commands of a shell script to `ex` (and why it is opaque, if it is)."""
    from policies._shell import split_script

    split = split_script(script)
    for reason in split.opaque:
        ex.why(reason)
    ex.changes.extend(split.assigned)
    for command in split.commands:
        if command:
            _expand(command, ex, depth + 1)


def _expand(argv: tuple[Token, ...], ex: _Expanded, depth: int) -> None:
    """Add `argv`'s simple commands to `ex`, looking through shells and wrappers."""
    if depth > MAX_DEPTH:
        ex.why(f"shells and wrappers nested deeper than {MAX_DEPTH}")
        return
    program = argv[0] if argv else None
    if program is None:
        ex.why("a command name bash computes at run time")
        ex.commands.append(argv)
        return
    name = program.rpartition("/")[2]
    if name in SHELLS:
        script, is_c = _shell_script(argv)
        if script is not None:
            ex.outer.append(argv)  # a rule written for `bash -lc` itself still applies
            _expand_script(script, ex, depth)
            return
        if is_c:
            ex.why(f"{name}: options that may run a script corral cannot read")
            ex.commands.append(argv)
            return
    if name in _OPAQUE_PROGRAMS:
        # They run code the argv does not show: eval's words as a script (split too: its commands are
        # checked), a script file, commands built from input.
        ex.why(_OPAQUE_PROGRAMS[name])
        ex.commands.append(argv)
        words = argv[1:]
        if name == "eval" and words and all(w is not None for w in words):
            _expand_script(" ".join(w for w in words if w is not None), ex, depth)
        return
    inner, wraps = _unwrap(argv)
    if inner is not None:
        ex.outer.append(argv)
        if name == "env":
            ex.changes.extend(_env_changes(argv))
        _expand(inner, ex, depth + 1)
        return
    if wraps:
        ex.why(f"{name}: options corral cannot read")
    ex.commands.append(argv)
