"""Command rules from files: corral's TOML, and Codex's `.rules` Starlark files read as they are.

A `.rules` (or `.codexpolicy`, `.star`) file is evaluated by a real Starlark interpreter (starlark-rust,
through the `starlark-pyo3` package) with Codex's builtins defined: `prefix_rule(pattern, decision,
match, not_match, justification)`, `host_executable(name, paths)` and `network_rule(host, protocol,
decision, justification)`; corral's `prefix_rule` also takes `profile`. Any other suffix is read as TOML
(docs/rules.md, "Files"). Needs the `rules` extra: RulesUnavailableError without it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from policies._commands import DECISIONS, CommandRule, CommandRules, Decision
from policies._errors import PolicyError
from policies._files import named_file, read_bounded, user_file
from policies._load import load_policy, policy_from_dict
from policies._model import Policy
from policies._shell import RulesUnavailableError
from policies._validate import check_table

log = logging.getLogger("corral.rules")

#: File suffixes read as Starlark (Codex's formats); anything else is TOML.
STARLARK_SUFFIXES = (".rules", ".codexpolicy", ".star", ".bzl")

_TOP_KEYS = ("default", "opaque", "rule", "host_executable")
_RULE_KEYS = ("name", "pattern", "decision", "justification", "profile", "policy", "match", "not_match")

#: Longest a Starlark rules file may evaluate (a `for` over a huge range must not hang the caller).
STARLARK_DEADLINE_S = 10.0

#: Most memory a Starlark rules file's evaluation may add to the process (resident): a nested
#: comprehension grew by ~400 MiB a second until the host ran out of memory; evaluation now stops there.
STARLARK_MEMORY_BYTES = 512 << 20

#: Largest rules file read (a rules file is a person's text, not data).
MAX_FILE = 4 << 20


def _read(path: str) -> str:
    try:
        raw = read_bounded(path, MAX_FILE)  # non-blocking, a regular file only: it may lie in a workdir
    except OSError as err:
        raise PolicyError("", f"cannot read rules file {path!r}: {err.strerror}", source=path) from err
    except ValueError as err:
        raise PolicyError("", f"cannot read rules file {path!r}: {err}", source=path) from err
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise PolicyError(
            "", f"the file is not UTF-8 text ({err.reason} at byte {err.start})", source=path
        ) from err


def load_rules(
    path: str | os.PathLike[str],
    *,
    default: Decision | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> CommandRules:
    """Read the command rules in `path`: Starlark for `.rules`, `.codexpolicy`, `.star`, `.bzl` (Codex's
    format), TOML otherwise.

    `default` overrides the file's default decision (a Starlark file has none of its own: "prompt").
    `workdir` is the workdir of the policies a TOML rule names by file (`policy = "x.toml"`).

    Raises PolicyError naming the file and the rule (``rule[2].pattern``, ``prefix_rule #3.match[0]``)
    for a bad file, a bad rule or an example that fails; RulesUnavailableError without the `rules` extra.
    """
    source = os.fspath(path)
    if not isinstance(source, str):
        raise PolicyError("", "expected the rules file's path as a string", path)
    try:
        source = user_file(source)  # `~/rules.toml` is the home's, as a policy's paths are
    except ValueError as err:
        raise PolicyError("", f"cannot read rules file {source!r}: {err}", source=source) from err
    text = _read(source)
    if source.endswith(STARLARK_SUFFIXES):
        return rules_from_starlark(text, source=source, default=default)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError("", f"invalid TOML: {err}", source=source) from err
    if default is not None:
        data = {**data, "default": default}
    base = os.path.dirname(os.path.abspath(source))
    return rules_from_dict(data, source=source, relative_to=base, workdir=workdir)


def rules_from_dict(
    data: object,
    *,
    source: str | None = None,
    relative_to: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> CommandRules:
    """CommandRules from a dict shaped like the TOML file (docs/rules.md): ``default``, ``opaque``,
    ``[[rule]]`` tables, ``[host_executable]``. A rule's ``policy`` is a file name (relative to
    `relative_to`, default the current directory) or an inline policy table. Raises PolicyError with the
    key path of the first bad value."""
    try:
        return _from_dict(data, source, relative_to, workdir)
    except PolicyError as err:
        raise err.with_source(source) from None


def _from_dict(data: object, source: str | None, relative_to: str | None, workdir: object) -> CommandRules:
    if not isinstance(data, Mapping):
        raise PolicyError("", "expected a table of rules", data)
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise PolicyError(unknown[0], f"unknown key; expected one of {', '.join(_TOP_KEYS)}")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str):
        raise PolicyError("rule", "expected an array of tables ([[rule]])", raw_rules)
    rules = []
    for i, raw in enumerate(raw_rules):
        where = f"rule[{i}]"
        raw = check_table(raw, where, _RULE_KEYS)
        name = raw.get("name", where)
        if not isinstance(name, str) or not name:
            raise PolicyError(f"{where}.name", "expected a non-empty string", name)
        policy = _rule_policy(raw.get("policy"), f"{where}.policy", relative_to, workdir)
        for key in ("match", "not_match"):
            if key in raw and (isinstance(raw[key], str) or not isinstance(raw[key], Sequence)):
                raise PolicyError(f"{where}.{key}", "expected a list of examples", raw[key])
        try:
            rules.append(
                CommandRule(
                    pattern=raw.get("pattern"),  # type: ignore[arg-type]  # validated by CommandRule
                    decision=raw.get("decision", "allow"),
                    justification=raw.get("justification"),
                    profile=raw.get("profile"),
                    policy=policy,
                    match=tuple(raw.get("match", ())),
                    not_match=tuple(raw.get("not_match", ())),
                    name=name,
                )
            )
        except PolicyError as err:
            # CommandRule names its fields after the rule's name; say where in the file it is too.
            path = err.path if name == where else f"{where} ({name}).{err.path.removeprefix(name + '.')}"
            raise PolicyError(path, err.reason, err.value if err._has_value else None) from None
    hosts = data.get("host_executable", {})
    if not isinstance(hosts, Mapping):
        raise PolicyError("host_executable", "expected a table: name = [absolute paths]", hosts)
    return CommandRules(
        rules,
        default=data.get("default", "prompt"),
        opaque=data.get("opaque"),
        host_executables=hosts,
        source=source,
    )


def _rule_policy(value: object, path: str, relative_to: str | None, workdir: object) -> Policy | None:
    if value is None:
        return None
    wd: Any = workdir
    if isinstance(value, str):
        try:
            return load_policy(named_file(value, relative_to), workdir=wd)
        except PolicyError as err:
            raise PolicyError(path, f"the policy file {value!r}: {err}") from None
        except ValueError as err:  # named_file: `~user/...`, `$X/...`
            raise PolicyError(path, str(err), value) from None
    if isinstance(value, Mapping):
        try:
            return policy_from_dict(dict(value), workdir=wd)
        except PolicyError as err:
            raise PolicyError(f"{path}.{err.path}", err.reason) from None
    raise PolicyError(path, "expected a policy file name or an inline policy table", value)


# -- Starlark ------------------------------------------------------------------------------------------------


class _Builder:
    """What the Starlark builtins collect. A builtin that fails stores its PolicyError here (the
    interpreter turns a Python exception into its own error text) and the loader raises it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.rules: list[CommandRule] = []
        self.hosts: dict[str, list[str]] = {}
        self.network: list[dict[str, object]] = []
        self.error: PolicyError | None = None
        self.calls = 0

    def fail(self, err: PolicyError) -> PolicyError:
        if self.error is None:
            self.error = err
        return err

    def prefix_rule(
        self,
        pattern: object = None,
        decision: object = None,
        match: object = None,
        not_match: object = None,
        justification: object = None,
        profile: object = None,
        **unknown: object,
    ) -> None:
        self.calls += 1
        name = f"prefix_rule #{self.calls}"
        if unknown:
            raise self.fail(PolicyError(f"{name}.{sorted(unknown)[0]}", "unknown argument of prefix_rule"))
        if pattern is None:
            raise self.fail(PolicyError(f"{name}.pattern", "prefix_rule needs a pattern"))
        for key, value in (("match", match), ("not_match", not_match)):
            if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)):
                raise self.fail(PolicyError(f"{name}.{key}", "expected a list of examples", value))
        try:
            self.rules.append(
                CommandRule(
                    pattern=pattern,  # type: ignore[arg-type]  # validated by CommandRule
                    decision=decision if decision is not None else "allow",  # type: ignore[arg-type]
                    justification=justification,  # type: ignore[arg-type]
                    profile=profile,  # type: ignore[arg-type]
                    match=tuple(match or ()),  # type: ignore[arg-type]
                    not_match=tuple(not_match or ()),  # type: ignore[arg-type]
                    name=name,
                )
            )
        except PolicyError as err:
            raise self.fail(err) from None

    def host_executable(self, name: object = None, paths: object = None, **unknown: object) -> None:
        if unknown or not isinstance(name, str):
            raise self.fail(PolicyError("host_executable", "expected host_executable(name=..., paths=[...])"))
        if isinstance(paths, str) or not isinstance(paths, Sequence):
            raise self.fail(PolicyError(f"host_executable({name}).paths", "expected a list of paths", paths))
        self.hosts.setdefault(name, []).extend(p for p in paths if p not in self.hosts.get(name, []))

    def network_rule(
        self,
        host: object = None,
        protocol: object = None,
        decision: object = None,
        justification: object = None,
        **unknown: object,
    ) -> None:
        if unknown or not isinstance(host, str) or not isinstance(protocol, str):
            raise self.fail(PolicyError("network_rule", "expected network_rule(host=..., protocol=..., ...)"))
        if decision not in (*DECISIONS, "deny"):
            raise self.fail(PolicyError("network_rule.decision", "expected allow, prompt, forbidden or deny"))
        self.network.append({"host": host, "protocol": protocol, "decision": decision})


def _resident() -> int:
    """This process's resident memory in bytes (/proc/self/statm; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE")

_LOCATION = re.compile(r"--> [^\n]*?:(\d+):(\d+)")


def rules_from_starlark(
    text: str, *, source: str = "<rules>", default: Decision | None = None
) -> CommandRules:
    """CommandRules from the text of a Codex `.rules` file, evaluated by a Starlark interpreter.

    `default` is the decision for commands no rule matches (Codex asks its own heuristics then; corral has
    none: "prompt" unless given). `network_rule` calls are read and checked but not applied: corral's
    network access is the policy's (a warning says so). Raises PolicyError naming the file and the rule
    (``prefix_rule #N``) or the line of a syntax error; RulesUnavailableError without starlark-pyo3.
    """
    try:
        import starlark
    except ImportError as err:
        raise RulesUnavailableError(err.name or "starlark", "reading Codex .rules files") from err
    builder = _Builder(source)
    dialect = starlark.Dialect.extended()
    dialect.enable_f_strings = True
    module = starlark.Module()
    module.add_callable("prefix_rule", builder.prefix_rule)
    module.add_callable("host_executable", builder.host_executable)
    module.add_callable("network_rule", builder.network_rule)
    deadline = time.monotonic() + STARLARK_DEADLINE_S
    ceiling = _resident() + STARLARK_MEMORY_BYTES
    over: list[str] = []

    def cancelled() -> bool:
        # Called by the interpreter between steps: its time and the process's resident memory.
        if time.monotonic() > deadline:
            over.append(f"evaluating the file took longer than {STARLARK_DEADLINE_S:g} s")
        elif _resident() > ceiling:
            over.append(f"evaluating the file used more than {STARLARK_MEMORY_BYTES >> 20} MiB of memory")
        return bool(over)

    options = starlark.EvalOptions(check_cancelled=cancelled)
    try:
        ast = starlark.parse(source, text, dialect)
        starlark.eval_with(options, module, ast, starlark.Globals.standard())
    except starlark.StarlarkError as err:
        if builder.error is not None:
            raise builder.error.with_source(source) from None
        message = str(err)
        where = _LOCATION.search(message)
        first = next((line.strip() for line in message.splitlines() if line.strip().startswith("error:")), "")
        reason = first.removeprefix("error:").strip() or "the Starlark interpreter refused the file"
        if over:
            reason = over[0]
        path = f"line {where.group(1)}, column {where.group(2)}" if where else ""
        raise PolicyError(path, reason, source=source) from None
    if builder.network:
        log.warning(
            "%s: %d network_rule(s) read but not applied: network access is the policy's (--network)",
            source,
            len(builder.network),
        )
    return CommandRules(
        builder.rules,
        default=default if default is not None else "prompt",
        host_executables=builder.hosts,
        source=source,
    )
