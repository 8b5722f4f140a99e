"""Command rules at the supervisor: decide a command before it runs (docs/rules.md, "In the API").

`decide` evaluates the supervisor's and the call's CommandRules (the stricter decision wins), asks the
caller's approver when the decision is `prompt`, and raises CommandForbiddenError when the command may not
run. The Supervisor counts each decision (`totals["decision:<d>"]`, which the Prometheus exporter reads as
`corral_command_decisions_total{decision}`) and emits a `decision` event.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from policies import CorralError, Policy, filter_environment
from policies._commands import CommandDecision, CommandRules
from policies._errors import printable
from supervisor._types import Rule

#: The caller's approver: given the decision (argv, rule, justification), True lets the command run.
Approver = Callable[[CommandDecision], Awaitable[bool]]

#: Commands longer than this (bytes of argv) are evaluated in a worker thread: parsing a large shell script
#: must not hold the event loop.
_INLINE_MAX = 64 << 10


class CommandForbiddenError(CorralError):
    """The command rules did not let the command run; it was not started.

    decision: the CommandDecision (its `rule`, `reason`, `justification`, `argv`); approval: why a `prompt`
    decision did not end in a run ("no approver", "denied"), None for a `forbidden` one. `exit_code` is 126,
    the status `corral run` exits with.
    """

    exit_code = 126

    def __init__(
        self, decision: CommandDecision, approval: str | None = None, why: str | None = None
    ) -> None:
        self.decision = decision
        self.approval = approval
        self.argv = decision.argv
        self.rule = decision.rule
        self.justification = decision.justification
        prog = printable(decision.argv[0] if decision.argv else "?", 200)
        if why is not None:  # allowed by the rules, refused for the file it would run (`planted_program`)
            super().__init__(f"{prog}: {why}")
            return
        if approval is None:
            head = f"{prog}: forbidden by the command rules"
        else:
            head = f"{prog}: needs approval ({decision.reason}) and {approval}"
            super().__init__(head)
            return
        super().__init__(f"{head}: {decision.justification}")


def _size(cmd: Sequence[str | bytes | os.PathLike[str]]) -> int:
    return sum(len(os.fsencode(a)) for a in cmd)


async def evaluate(
    cmd: Sequence[str | bytes | os.PathLike[str]], sets: Sequence[CommandRules]
) -> CommandDecision | None:
    """The strictest decision of `sets` for `cmd` (on ties, the last set's: the call's over the
    supervisor's), None when there are no rules. Large commands are evaluated in a worker thread."""
    if not sets:
        return None
    best: CommandDecision | None = None
    large = _size(cmd) > _INLINE_MAX
    for rules in sets:
        if large:
            d = await anyio.to_thread.run_sync(rules.evaluate, cmd)
        else:
            d = rules.evaluate(cmd)
        if best is None or _rank(d) >= _rank(best):
            best = d
    return best


def _rank(d: CommandDecision) -> int:
    return ("allow", "prompt", "forbidden").index(d.decision)


async def approve(decision: CommandDecision, approver: Approver | None) -> str | None:
    """For a `prompt` decision: None when the approver said yes, else why not ("no approver was given",
    "the approver denied it"). Exceptions of the approver propagate; so does cancellation."""
    if approver is None:
        return "no approver was given"
    verdict = await approver(decision)
    if verdict is True:
        return None
    return "the approver denied it"


async def decide(
    cmd: Sequence[str | bytes | os.PathLike[str]],
    sets: Sequence[CommandRules],
    approver: Approver | None,
    record: Callable[[CommandDecision, bool | None], None],
) -> CommandDecision | None:
    """The rules' decision for `cmd` (None without rules), put to `approver` when it is `prompt`, then given
    to `record` (the decision, and True/False for a prompt put to the approver, else None) before anything
    is raised. Raises CommandForbiddenError when the command may not run; the approver's errors and
    cancellation propagate (record is not called then). Used by Supervisor and by cluster mode's client."""
    decision = await evaluate(cmd, sets)
    if decision is None:
        return None
    refusal: str | None = None
    approved: bool | None = None
    if decision.decision == "prompt":
        refusal = await approve(decision, approver)
        approved = refusal is None
    record(decision, approved)
    if decision.decision == "forbidden":
        raise CommandForbiddenError(decision)
    if refusal is not None:
        raise CommandForbiddenError(decision, refusal)
    return decision


def split_rules(rules: object) -> tuple[Sequence[Rule], CommandRules | None]:
    """`rules=` of start/run: kill rules (a sequence of Rule) or command rules (CommandRules). Raises
    TypeError for anything else."""
    if isinstance(rules, CommandRules):
        return (), rules
    if isinstance(rules, Sequence) and not isinstance(rules, str | bytes):
        return rules, None
    msg = f"rules must be a sequence of Rule or CommandRules, not {type(rules).__name__}"
    raise TypeError(msg)


def _inside(path: str, roots: Sequence[str]) -> str | None:
    for root in roots:
        r = root.rstrip("/") or "/"
        if path == r or path.startswith(r.rstrip("/") + "/"):
            return root
    return None


def planted_program(
    decision: CommandDecision, caller: Policy, env_path: str | None, cwd: str
) -> tuple[str, str] | None:
    """(program, writable root) when a program of `decision` (its argv[0], the first word of each simple
    command it decided) is looked up where a sandbox of `caller` could have written it, else None: given
    as a path inside one of `caller`'s writable roots, or a bare name for which a directory of `env_path`
    (the sandbox's PATH) inside one comes before, or is, the directory holding the program (a name not
    found is checked against every directory: a sandbox running beside could create it before the exec).
    Directories and the program found are also taken through their symlinks (os.path.realpath).

    For a command whose deciding rule runs it in a sandbox of its own (a `profile` or `policy`): the rule
    vouches for a program by its name, and a file a sandbox of the caller's policy wrote under that name
    (`bin/git` in the workdir, on a PATH that an activated virtualenv put first) would run with the rule's
    sandbox, `full-access` included. Blocking filesystem work (stat, readlink) on paths a sandbox may
    have written: run it in a worker thread."""
    fs = caller.filesystem
    if not fs.confine:
        return None  # the caller's sandboxes could write any file already: nothing to gain
    roots = [*fs.write, *(os.path.realpath(r) for r in fs.write)]
    programs = [decision.argv[0]] if decision.argv else []
    programs += [c[0] for c in decision.commands if c and isinstance(c[0], str)]
    for program in dict.fromkeys(programs):
        if "/" in program:
            path = os.path.normpath(os.path.join(cwd, program))
            for shown in (path, os.path.realpath(path)):
                root = _inside(shown, roots)
                if root is not None:
                    return program, root
            continue
        for entry in (env_path if env_path is not None else os.defpath).split(":"):
            directory = os.path.normpath(os.path.join(cwd, entry or "."))
            for shown in (directory, os.path.realpath(directory)):
                root = _inside(shown, roots)
                if root is not None:
                    return program, root
            candidate = os.path.join(directory, program)
            try:
                found = os.path.isfile(candidate) and os.access(candidate, os.X_OK)
            except (OSError, ValueError):
                found = False
            if found:
                root = _inside(os.path.realpath(candidate), roots)
                if root is not None:
                    return program, root
                break
    return None


def sandbox_name(decision: CommandDecision) -> str:
    """How to name the deciding rule's sandbox in a message: `profile X` or `its policy`."""
    rule = decision.rule
    if rule is not None and rule.profile is not None:
        return f"profile {rule.profile}"
    return "the rule's policy"


async def check_planted(
    decision: CommandDecision,
    caller: Policy,
    chosen: Policy,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> None:
    """Raise CommandForbiddenError when the command the rules let run in a sandbox of their own (`chosen`)
    would run a program a sandbox of the `caller`'s policy could have written (`planted_program`;
    its look-ups in a worker thread). Used by Supervisor.start and by cluster mode's node, which applies
    a decision the client made."""
    environ = filter_environment(chosen, {**os.environ, **(env or {})})
    base = chosen.workdir or caller.workdir or os.getcwd()
    where = os.path.join(base, os.fspath(cwd)) if cwd is not None else base
    found = await anyio.to_thread.run_sync(planted_program, decision, caller, environ.get("PATH"), str(where))
    if found is not None:
        program, root = found
        why = (
            f"the command rules run it in a sandbox of their own ({sandbox_name(decision)}), but "
            f"{printable(program, 200)} is looked up in {printable(root, 400)}, a writable root of this "
            "policy, where a sandbox could have put a program of its own under that name; it did not run. "
            "Give the program's path outside the writable roots, or take that directory off PATH"
        )
        raise CommandForbiddenError(decision, why=why)
