"""`prompt` command rules through MCP: the client's user approves or refuses the command, by elicitation.

A command the rules (`--rules`, docs/rules.md) mark `prompt` needs a person's yes. Over MCP that person is
the client's user, and MCP's elicitation is how a server asks them: when the client declared the
elicitation capability (form mode), `run_command` and `start_command` put the command (and the rule's
reason and justification) to the user before it starts; accept runs it, decline, cancel or no answer within
`approval_timeout` seconds refuse it. A client that did not declare the capability has no one to ask: a
`prompt` command is refused, as `corral run` refuses it without an approver.

The question is asked through the SDK's resolver mechanism (`Resolve`, run before the tool body), so both
protocol eras work: on a handshake-era connection the resolver sends the standalone `elicitation/create`
request mid-call itself (`ctx.elicit`, bounded by the timeout); on a 2026-07-28 connection it returns the
SDK's `Elicit` marker, the call ends with the SDK's `input_required` result, and the client calls again with
the answer (the client's own wait is the timeout there: the server holds nothing in between). The tool body
then runs the command with an approver that returns the answer: the supervisor decides the command again
with the same rules, and asks the approver only when the decision is `prompt`.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from policies import CommandDecision, CommandRules
from policies._errors import printable
from supervisor import CommandForbiddenError

#: Bytes of argv above which the rules are evaluated in a worker thread (as the Supervisor does).
_INLINE_MAX = 64 << 10
#: Characters of the command shown in the question.
_SHOWN = 2000

Verdict = Literal["not asked", "approved", "declined", "cancelled", "timed out", "no approver", "failed"]


class CommandApproval(BaseModel):
    """The form the user is shown: no fields; accepting it approves the command, declining refuses it."""


@dataclasses.dataclass(frozen=True)
class Approval:
    """What became of the question for one call. `why`: for a refusal, the words the tool error ends with."""

    verdict: Verdict
    why: str = ""

    async def approver(self, decision: CommandDecision) -> bool:
        """The Supervisor's approver for this call: True when the user approved."""
        return self.verdict == "approved"


def can_ask(ctx: Context[Any, Any]) -> tuple[bool, str]:
    """Whether the caller's client can be asked to approve a command (it declared form elicitation and, on a
    handshake-era connection, the channel carries server requests), and why not."""
    caps = ctx.client_capabilities
    elicitation = caps.elicitation if caps is not None else None
    # As the SDK reads it: a bare `elicitation: {}` (before modes existed) means form; url-only does not.
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return (
            False,
            "this MCP client did not declare the elicitation capability: it has no way to ask its user",
        )
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS and not ctx.session.can_send_request:
        return False, "this connection cannot carry a question to the client"
    return True, "the client asks its user (MCP elicitation)"


def question(decision: CommandDecision, argv: list[str], shell: str | None) -> str:
    """The message the user reads: the command, why it needs approval, the rule's justification."""
    shown = shell if shell is not None else shlex.join(argv)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + f"... ({len(shown) - _SHOWN} more characters)"
    lines = [
        "corral: a command needs your approval before it runs (in its sandbox).",
        f"Command: {printable(shown, _SHOWN + 64)}",
        f"Why: {decision.reason}",
    ]
    justification = decision.rule.justification if decision.rule is not None else None
    if justification and justification not in decision.reason:
        lines.append(f"Rule: {justification}")
    lines.append("Accept to run it; decline to refuse it.")
    return "\n".join(lines)


async def decide(rules: CommandRules, argv: list[str]) -> CommandDecision:
    """The rules' decision for `argv` (in a worker thread when it is large, as the Supervisor evaluates)."""
    if sum(len(a.encode("utf-8", "surrogatepass")) for a in argv) > _INLINE_MAX:
        return await anyio.to_thread.run_sync(rules.evaluate, argv)
    return rules.evaluate(argv)


def resolver(
    rules: CommandRules | None,
    argv_of: Callable[[list[str] | None, str | None], list[str]],
    timeout: float,
) -> Callable[..., Awaitable[Approval | Elicit[CommandApproval]]]:
    """The resolver (the SDK's `Resolve`) that asks the user when the rules say `prompt`. It takes the tool's
    `command` and `shell` arguments by name; `argv_of` builds the argv as the tool does (its errors are left
    for the tool body to raise)."""

    async def approval(
        ctx: Context[Any, Any], command: list[str] | None = None, shell: str | None = None
    ) -> Approval | Elicit[CommandApproval]:
        if rules is None:
            return Approval("not asked")
        try:
            argv = argv_of(command, shell)
        except (ToolError, MCPError):
            return Approval("not asked")
        decision = await decide(rules, argv)
        if decision.decision != "prompt":
            return Approval("not asked")
        ok, why = can_ask(ctx)
        if not ok:
            return Approval("no approver", why)
        text = question(decision, argv, shell)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return Elicit(text, CommandApproval)  # the SDK returns input_required; the client calls again
        return await _ask(ctx, text, timeout)

    return approval


async def _ask(ctx: Context[Any, Any], text: str, wait_s: float) -> Approval:
    """Ask over a handshake-era connection (a server request mid-call), for at most `wait_s` seconds."""
    with anyio.move_on_after(wait_s):
        try:
            outcome = await ctx.elicit(text, CommandApproval)
        except (MCPError, ValueError) as err:
            return Approval("failed", f"the client's answer could not be used ({err})")
        return from_outcome(outcome)
    return Approval("timed out", f"the user gave no answer within {wait_s:g} s")


def from_outcome(outcome: ElicitationResult[CommandApproval] | Approval) -> Approval:
    """The Approval the tool body acts on, from what the SDK injected (an elicitation's outcome, or the
    resolver's own Approval wrapped as accepted)."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        return data if isinstance(data, Approval) else Approval("approved")
    if isinstance(outcome, Approval):
        return outcome
    if outcome.action == "decline":
        return Approval("declined", "the user declined it")
    return Approval("cancelled", "the user cancelled the question")


def annotation(
    fn: Callable[..., Awaitable[Approval | Elicit[CommandApproval]]],
) -> Any:
    """The type of a tool's approval parameter: the SDK fills it by running `fn` (never the model)."""
    return Annotated[ElicitationResult[CommandApproval], Resolve(fn)]


def refusal(err: CommandForbiddenError, approval: Approval) -> ToolError:
    """The tool error for a command the rules refused: the rule's words, and for a `prompt` one why it was
    not approved."""
    if err.approval is None or approval.verdict in ("not asked", "approved"):
        return ToolError(f"corral: {err}")
    prog = printable(err.argv[0] if err.argv else "?", 200)
    return ToolError(
        f"corral: {prog}: needs approval ({err.decision.reason}) and {approval.why}; it did not run"
    )
