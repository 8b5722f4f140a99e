"""corral as an MCP tool server (`corral mcp`): sandboxed, bounded, reported command execution for any Model
Context Protocol client, built on the official `mcp` SDK (the optional extra `corral[mcp]`).

This module is a composition of the public APIs of `policies` and `supervisor` with the SDK, like the CLI;
the engine never imports it, and `corral run` never loads the SDK. `supervisor.cli` parses the options (the
same as `corral run`'s) and calls `serve`.

Tools: `run_command` (one command to completion, in its own sandbox), `start_command` / `read_output` /
`send_input` / `stop_command` / `list_commands` (long-running ones: a dev server, a REPL), `describe_sandbox`.

Sessions: each MCP session has its own background commands, which end with it. Over stdio the session is the
server process (one client launches it; its stdin's EOF ends it). Over streamable HTTP, a client that speaks
the handshake protocol (2025 revisions) has an `Mcp-Session-Id`: its commands end when it DELETEs the session
(the SDK's client does on close) or when the server stops. The 2026-07-28 protocol has no sessions: such
clients share one pool, and each background command is reached only through its handle (128 random bits).
Wherever it lives, a background command nobody has touched for `idle_timeout` seconds is stopped.

Docs: docs/mcp.md (client configuration, security model, a transcript).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hmac
import ipaddress
import logging
import math
import os
import secrets
import signal
import socket
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

import anyio
from anyio.abc import ByteReceiveStream, TaskGroup
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    ToolAnnotations,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from policies import CommandRules, CorralError, Policy, check_writable_roots, profiles
from supervisor import PIPE, Child, CommandForbiddenError, Result, Supervisor
from supervisor import _mcp_approval as approvals
from supervisor._mcp_calls import DirectCalls, Plain, as_model, drop_idle_tracing
from supervisor._mcp_stdio import WireIn, WireOut, serve_connection, stdio_fds

__all__ = [
    "BackgroundStatus",
    "CommandResult",
    "HttpNeedsAsyncioError",
    "McpSettings",
    "SandboxDescription",
    "build_server",
    "is_loopback",
    "serve",
]

logger = logging.getLogger("corral.mcp")

#: The shell a `shell` string runs under, as `/bin/sh -c STRING`.
SHELL = "/bin/sh"
#: Bytes of the largest argument set (argv or shell string) a call may pass; larger ones are refused with a
#: protocol error (INVALID_PARAMS) before anything runs. The kernel's own bound is 2 MiB; a model never needs
#: this much.
MAX_COMMAND_BYTES = 128 * 1024
#: Bytes of stdin a call may pass (run_command's `input`, send_input's `text`).
MAX_INPUT_BYTES = 1024 * 1024
#: Seconds read_output may wait for new output.
MAX_WAIT_S = 30.0


@dataclass(frozen=True)
class McpSettings:
    """What the server offers. `policy` confines every command (its workdir is the commands' default cwd).

    shell: accept `shell` strings (run as `/bin/sh -c STRING`). Allowed only when the operator did not
           turn it off AND the policy lets the sandbox run /bin/sh (no `deny` path hides it; an `execute`
           list, when set, includes it); see `shell_allowed`.
    capture: bytes of stdout and of stderr a run_command result carries (the rest is counted, flagged
             `*_truncated`, dropped).
    max_background: background commands one session may have at once (running or finished but not stopped).
    buffer: bytes of unread output kept per stream of a background command (older bytes are dropped and
            counted in `*_dropped`).
    idle_timeout: seconds after which a background command nobody read, wrote or listed is stopped (None:
                  never; the session's end still stops it).
    max_concurrency: sandboxes alive at once across all sessions (further calls wait their turn).
    cgroups: give each sandbox its own cgroup (Supervisor(cgroups=...)).
    rules: command rules (`--rules`, docs/rules.md) deciding every command before it starts, shell strings
           split into their simple commands: a forbidden one is a tool error carrying the rule's
           justification; a `prompt` one is put to the client's user by elicitation when the client declared
           that capability, and refused like a forbidden one otherwise (`_mcp_approval`); an allowed (or
           approved) one runs under its rule's profile or policy when the rule names one.
    approval_timeout: seconds the user has to answer a `prompt` question on a handshake-era connection (no
                      answer refuses the command).
    """

    policy: Policy
    shell: bool = True
    capture: int = 64 * 1024
    max_background: int = 8
    buffer: int = 1024 * 1024
    idle_timeout: float | None = 1800.0
    max_concurrency: int = 32
    cgroups: bool = True
    rules: CommandRules | None = None
    approval_timeout: float = 300.0

    def shell_allowed(self) -> tuple[bool, str]:
        """Whether `shell` strings are accepted, and why (in words for describe_sandbox)."""
        if not self.shell:
            return False, "the server was started with --no-shell"
        fs = self.policy.filesystem
        if fs.confine:
            real = os.path.realpath(SHELL)
            for path in (SHELL, real):
                for hidden in fs.deny:
                    if path == hidden or path.startswith(hidden.rstrip("/") + "/"):
                        return False, f"the policy hides {hidden}, so the sandbox has no {SHELL}"
            if fs.execute is not None and not any(
                real == e or real.startswith(e.rstrip("/") + "/") for e in fs.execute
            ):
                return False, f"the policy's execute list does not include {real} ({SHELL})"
        return True, f"shell strings run as {SHELL} -c STRING inside the same sandbox as any command"


# ---------------------------------------------------------------------------------------------------------
# Structured results (their JSON schemas are the tools' output schemas)


class ViolationInfo(BaseModel):
    """A limit the command broke."""

    kind: str = Field(description="memory | pids | wall_time | cpu_time | fds | output | disk")
    limit: float = Field(description="The limit (bytes, seconds or a count).")
    observed: float = Field(description="What was observed.")
    killed: bool = Field(description="True: corral (or the kernel's OOM killer) killed the command for it.")
    message: str = Field(description="The violation in words.")


class DenialInfo(BaseModel):
    """One kind of refused action (docs/denials.md)."""

    layer: str = Field(description="seccomp | landlock | mounts | network | proxy | cgroup | rlimit")
    operation: str = Field(description="What was tried: syscall, write, connect, fork, ...")
    target: str = Field(description="The path, address, limit or syscall refused.")
    count: int = Field(description="How many times.")
    hint: str = Field(description="Which policy key or flag would allow it, or that none will.")


class UnobservableLayer(BaseModel):
    layer: str
    reason: str


class CommandResult(BaseModel):
    """How a command ended (run_command, stop_command, and read_output once it has exited)."""

    exit_code: int = Field(description="The command's own status; 128+N when killed by signal N; 137 when "
                           "killed for a limit violation.")  # fmt: skip
    signal: int | None = Field(description="The signal that ended it, or null.")
    violation: ViolationInfo | None = Field(description="The limit it broke, or null.")
    duration_s: float
    cpu_s: float
    peak_memory_bytes: int
    stdout: str = Field(description="Captured stdout (UTF-8, invalid bytes replaced), bounded.")
    stderr: str = Field(description="Captured stderr, bounded.")
    stdout_truncated: bool = Field(description="True when stdout bytes past the bound were dropped.")
    stderr_truncated: bool = Field(description="True when stderr bytes past the bound were dropped.")
    denials: list[DenialInfo] = Field(
        default_factory=list,
        description="What the sandbox refused the command, one record per distinct refusal.",
    )
    denials_dropped: int = Field(0, description="Refused calls past the distinct ones listed.")
    denials_unobservable: list[UnobservableLayer] = Field(
        default_factory=list,
        description="Layers in force whose refusals cannot be reported (an empty `denials` says nothing of "
        "them): a write outside the writable roots fails with EROFS or EACCES, seen only on the command's "
        "stderr.",
    )
    pid: int = Field(description="Host pid of the command's sandbox (its pid namespace's init).")
    enforced: list[str] = Field(description="The isolation layers that took effect.")


class StartedCommand(BaseModel):
    """A background command that started."""

    handle: str = Field(description="Pass this to read_output, send_input and stop_command.")
    pid: int = Field(description="Host pid of the command's sandbox.")
    command: list[str] = Field(description="The argv that runs.")


class BackgroundStatus(BaseModel):
    """New output of a background command since the last read_output, and whether it still runs."""

    handle: str
    running: bool
    stdout: str = Field(description="Output since the last read (UTF-8, invalid bytes replaced).")
    stderr: str
    stdout_dropped: int = Field(description="Bytes of stdout lost because nobody read them in time.")
    stderr_dropped: int
    more: bool = Field(description="True when more unread output is buffered than this reply carried.")
    result: CommandResult | None = Field(description="Set once the command has exited.")


class InputSent(BaseModel):
    """What send_input wrote."""

    handle: str
    bytes_written: int
    closed: bool = Field(description="True when the command's stdin is now closed (EOF).")


class BackgroundEntry(BaseModel):
    handle: str
    command: list[str]
    running: bool
    pid: int
    age_s: float


class BackgroundList(BaseModel):
    """This session's background commands."""

    commands: list[BackgroundEntry]
    limit: int = Field(description="How many this session may have at once.")


class SandboxDescription(BaseModel):
    """What a command run through this server may and may not do."""

    summary: str = Field(description="The same, in words.")
    profile: str
    workdir: str = Field(description="The commands' default working directory.")
    filesystem_confined: bool
    readable: list[str]
    writable: list[str]
    hidden: list[str] = Field(description="Paths the sandbox cannot read (reported as denied reads).")
    read_only_inside_writable: list[str] = Field(description="Relative to each writable root.")
    network: str = Field(description="none (loopback only) | host | proxy (allowed domains only)")
    limits: dict[str, str] = Field(description="The resource limits per command, in units people read.")
    shell_allowed: bool
    shell: str = Field(description="Why shell strings are or are not accepted.")
    command_rules: bool = Field(description="Command rules decide each command before it starts.")
    prompt_approval: str = Field(
        description="What becomes of a command the rules mark `prompt` (it needs a person's approval): put "
        "to this client's user, or refused."
    )
    max_background: int
    output_capture_bytes: int
    environment: str


# ---------------------------------------------------------------------------------------------------------
# Words


def _size(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:g} bytes"


def _value(kind: str, value: float) -> str:
    if kind in ("memory", "output", "disk", "fsize", "tmp_size"):
        return _size(value)
    if kind in ("wall_time", "timeout", "cpu_time"):
        return f"{value:g} s"
    return f"{value:g}"


def _limits(policy: Policy) -> dict[str, str]:
    """Every resource limit the policy sets (all of ResourcePolicy's fields: a new one shows up here too)."""
    r = policy.resources
    out: dict[str, str] = {}
    for f in dataclasses.fields(r):
        value = getattr(r, f.name)
        if value is not None:
            out[f.name] = _value(f.name, float(value))
    return out


def describe(settings: McpSettings) -> SandboxDescription:
    """describe_sandbox's answer, from the settings alone (no syscalls)."""
    p = settings.policy
    fs = p.filesystem
    workdir = p.workdir or os.getcwd()
    shell_ok, shell_why = settings.shell_allowed()
    limits = _limits(p)
    writable, files = _files_text(p)
    shell = f"Shell strings: {'accepted' if shell_ok else 'refused'} ({shell_why}); argv lists always work."
    if settings.rules is not None:
        shell += (
            " Command rules are in force: each command (each simple command of a shell string) is decided "
            "before it starts; a forbidden one is refused with the rule's justification, which says what to "
            "use instead."
        )
    env = _env_text(p)
    summary = " ".join(
        [
            f"Every command runs in its own sandbox (profile {p.profile}) with working directory {workdir}.",
            files,
            _network_text(p),
            _limits_text(limits),
            shell,
            f"Up to {settings.max_background} background commands per session; results carry up to "
            f"{_size(settings.capture)} of stdout and of stderr.",
            env + ".",
        ]
    )
    return SandboxDescription(
        summary=summary,
        profile=p.profile,
        workdir=workdir,
        filesystem_confined=fs.confine,
        readable=list(fs.read) if fs.confine else ["/"],
        writable=writable,
        hidden=list(fs.deny) if fs.confine else [],
        read_only_inside_writable=list(fs.protected) if fs.confine and writable else [],
        network=p.network.mode,
        limits=limits,
        shell_allowed=shell_ok,
        shell=shell_why,
        command_rules=settings.rules is not None,
        prompt_approval="no command rules are in force: no command needs approval"
        if settings.rules is None
        else "",
        max_background=settings.max_background,
        output_capture_bytes=settings.capture,
        environment=env,
    )


def _env_text(p: Policy) -> str:
    """The sentence on the environment commands get under `p`: the server's minus secret-looking names (but
    the policy's `passthrough`), or nothing (`clear`), plus the names the policy sets."""
    e = p.environment
    if e.clear:
        text = "Environment: empty but for what the policy sets"
    else:
        markers = ", ".join(e.secret_markers[:4]) + (", ..." if len(e.secret_markers) > 4 else "")
        text = f"Environment: the server's minus names that look secret ({markers})"
        if e.passthrough:
            text += f", but {', '.join(e.passthrough)} pass as they are"
    if e.set:
        text += f"; the policy sets {', '.join(name for name, _ in e.set)}"
    return text


def _files_text(p: Policy) -> tuple[list[str], str]:
    """The writable roots of `p` (["/"] without confinement) and the summary's sentences on files."""
    fs = p.filesystem
    if not fs.confine:
        return ["/"], "No filesystem confinement (full-access): commands read and write what this user can."
    writable = list(fs.write)
    where = (
        f"only {', '.join(writable)} (plus a private /tmp and /dev/shm that vanish after each command)"
        if writable
        else "nowhere but a private /tmp and /dev/shm that vanish after each command"
    )
    files = (
        f"Commands may read {', '.join(fs.read) or 'nothing'} and write {where}; a write anywhere else "
        "fails with EACCES or EROFS and is reported."
    )
    if fs.deny:
        files += f" Hidden (reading them fails and is reported): {', '.join(fs.deny)}."
    if fs.protected and writable:
        files += f" Inside writable roots these stay read-only: {', '.join(fs.protected)}."
    return writable, files


def _network_text(p: Policy) -> str:
    """The summary's sentence on the network commands reach under `p`."""
    net_mode = p.network.mode
    if net_mode == "none":
        return (
            "No network: each command has its own network namespace with only loopback, so local servers and "
            "tests work and nothing beyond this sandbox is reachable."
        )
    if net_mode == "host":
        return "The host's network: commands reach whatever this machine reaches."
    # proxy
    allowed = ", ".join(getattr(p.network, "allow", ())) or "nothing"
    denied = ", ".join(getattr(p.network, "deny", ()))
    return (
        f"Network through corral's proxy only (HTTP and HTTPS via the proxy variables set in the "
        f"environment): reachable {allowed}" + (f"; refused {denied}" if denied else "") + "; anything "
        "else is refused."
    )


def _limits_text(limits: dict[str, str]) -> str:
    """The summary's sentence on the resource limits (`_limits`)."""
    return (
        "Limits per command: "
        + ", ".join(f"{k} {v}" for k, v in limits.items())
        + "; breaking one kills the "
        "command and the result names the violation."
        if limits
        else "No resource limits are set."
    )


def _violation(result: Result) -> dict[str, Any] | None:
    """`ViolationInfo`'s JSON form for `result`'s violation, or None."""
    v = result.violation
    if v is None:
        return None
    if result.killed:
        limit, seen = _value(v.kind, v.limit), _value(v.kind, v.observed)
        words = f"killed: {v.kind} limit {limit} exceeded (observed {seen})"
    else:
        words = f"{v.kind} limit {_value(v.kind, v.limit)} reached: the kernel refused, the command went on"
    return {
        "kind": v.kind,
        "limit": float(v.limit),
        "observed": float(v.observed),
        "killed": result.killed,
        "message": words,
    }


def _text(data: bytes, cut: bool = False) -> str:
    """`data` as text (UTF-8, bad bytes replaced). `cut`: `data` was cut at a byte count, so a character
    the cut split at its end is left out rather than shown as a replacement character."""
    if cut:
        data = data[: _whole_chars(data, len(data))]
    return data.decode("utf-8", errors="replace")


def _whole_chars(data: bytes | bytearray, n: int) -> int:
    """The largest k <= `n` (0 < k unless n == 0) at which `data[:k]` ends with no UTF-8 character split
    in the middle: a multi-byte sequence whose lead byte is among the last three before `n` and whose
    continuation bytes do not all fit before `n` is left out (a lone lead byte at 0 is kept: always some
    progress)."""
    n = min(n, len(data))
    for i in range(n - 1, max(n - 4, 0) - 1, -1):
        b = data[i]
        if b & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        size = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 1
        return i if i + size > n and i > 0 else n
    return n


def _command_data(
    result: Result, stdout: bytes, stderr: bytes, out_cut: bool, err_cut: bool
) -> dict[str, Any]:
    """`CommandResult`'s JSON form (what `model_dump(mode="json")` of the model gives, key for key), built
    without the model: this is run_command's structured content on every call, and the SDK validates the
    whole result against the protocol's schema on its way out anyway (tests/unit/test_mcp_results.py keeps
    it equal to the model's dump)."""
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "violation": _violation(result),
        "duration_s": round(float(result.duration_s), 6),
        "cpu_s": round(float(result.cpu_s), 6),
        "peak_memory_bytes": result.peak_memory_bytes,
        "stdout": _text(stdout, out_cut),
        "stderr": _text(stderr, err_cut),
        "stdout_truncated": out_cut,
        "stderr_truncated": err_cut,
        "denials": [d.to_dict() for d in result.denials],
        "denials_dropped": result.denials_dropped,
        "denials_unobservable": [{"layer": a, "reason": b} for a, b in result.denials_unobservable],
        "pid": result.pid,
        "enforced": list(result.enforced),
    }


def _summary(r: Mapping[str, Any]) -> str:
    """The short text a model reads first, from `CommandResult`'s JSON form: how it ended, then the
    output's tail."""
    violation = r["violation"]
    if violation is not None:
        head = f"exit {r['exit_code']}: {violation['message']}"
    elif r["signal"] is not None:
        head = f"exit {r['exit_code']}: killed by signal {r['signal']}"
    else:
        head = f"exit {r['exit_code']}"
    head += f" ({r['duration_s']:.3g} s)"
    parts = [head]
    denials = r["denials"]
    for d in denials[:5]:
        times = f", {d['count']} times" if d["count"] > 1 else ""
        parts.append(f"denied {d['operation']} {d['target']} ({d['layer']}: {d['hint']}{times})")
    if len(denials) > 5 or r["denials_dropped"]:
        parts.append(
            f"(more denials in the structured result: {len(denials)} kinds, {r['denials_dropped']} more)"
        )
    for name in ("stdout", "stderr"):
        text, cut = r[name], r[f"{name}_truncated"]
        if text:
            tail = text[-2000:]
            more = " (truncated)" if cut or len(text) > len(tail) else ""
            parts.append(f"--- {name}{more} ---\n{tail}")
    return "\n".join(parts)


def _tool_result(model: BaseModel | dict[str, Any], text: str) -> CallToolResult:
    """A tool's result: `text` for the model to read, and `model` (or its JSON form, as `_command_data`
    builds it) as the structured content, as a `_mcp_calls.Plain`: `DirectCalls` writes it out as it is,
    and the wrapper `_add` registers each tool under makes it the `CallToolResult` the bodies are annotated
    with (their annotation is what the SDK derives the output schema from) for the SDK's own path; typed
    as that for the bodies."""
    data = model if isinstance(model, dict) else model.model_dump(mode="json")
    return cast("CallToolResult", Plain(text, data))


# ---------------------------------------------------------------------------------------------------------
# Background commands and sessions


class _Buffer:
    """Unread output of one stream, bounded: past `cap` bytes the oldest are dropped and counted."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        over = len(self.data) - self.cap
        if over > 0:
            del self.data[:over]
            self.dropped += over

    def take(self, n: int, final: bool = True) -> tuple[bytes, int]:
        """At most `n` bytes of the unread output, and the count of bytes dropped since the last take. A
        UTF-8 character is not split (its bytes stay for the next take, so that no read shows it as
        replacement characters): one cut at `n`, and, unless `final` (the stream ended), one whose rest
        has not come yet."""
        k = min(n, len(self.data))
        if k < len(self.data) or not final:
            k = _whole_chars(self.data, k)
        out = bytes(self.data[:k])
        del self.data[:k]
        dropped, self.dropped = self.dropped, 0
        return out, dropped


@dataclass(eq=False)
class _Background:
    handle: str
    argv: list[str]
    child: Child
    out: _Buffer
    err: _Buffer
    touched: float = field(default_factory=time.monotonic)
    result: Result | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)
    stdin_closed: bool = False
    write_lock: anyio.Lock = field(default_factory=anyio.Lock)

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _Session:
    """One MCP session's background commands, and its calls in flight."""

    def __init__(self, key: str, *, scoped: bool = True) -> None:
        self.key = key
        self.procs: dict[str, _Background] = {}
        self.calls: set[anyio.CancelScope] = set()
        self.closed = False
        self.scoped = scoped

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """A scope for one call of this session, cancelled when the session ends (the SDK leaves a call of
        a deleted HTTP session running); none for an unscoped session (stdio's: the SDK's dispatcher
        cancels the connection's calls itself when it ends, before the session does). Raises ToolError
        when the session has ended."""
        if self.closed:
            msg = "this session has ended"
            raise ToolError(msg)
        if not self.scoped:
            yield
            return
        scope = anyio.CancelScope()
        self.calls.add(scope)
        exchange = _EXCHANGE.get()
        if exchange is not None:  # the POST it came in: a client that leaves mid-call takes the call along
            exchange.scopes.add(scope)
            if exchange.abandoned:
                scope.cancel()
        try:
            with scope:
                yield
        finally:
            self.calls.discard(scope)
            if exchange is not None:
                exchange.scopes.discard(scope)
        if scope.cancelled_caught:
            msg = "the client left or the session ended while the command ran: it was killed"
            raise ToolError(msg)

    async def aclose(self) -> None:
        """Cancel the session's calls in flight (their sandboxes are killed and reaped) and kill every
        background command of the session, waiting until each is reaped and its output readers are done.
        Shielded: it runs to the end under cancellation."""
        self.closed = True
        for scope in list(self.calls):
            scope.cancel()
        with anyio.CancelScope(shield=True):
            procs = list(self.procs.values())
            self.procs.clear()
            for bg in procs:
                bg.child.kill()
            for bg in procs:
                await bg.done.wait()


class _Runtime:
    """The server's state: the supervisor, the task group background commands live in, the sessions."""

    def __init__(self, settings: McpSettings, sup: Supervisor, tg: TaskGroup, single: bool) -> None:
        self.settings = settings
        self.sup = sup
        self.tg = tg
        self.sessions: dict[str, _Session] = {}
        #: stdio: the one session is the process's.
        self.single = _Session("stdio", scoped=False) if single else None

    def session(self, ctx: Context[Any, Any] | None) -> _Session:
        """The caller's session: stdio's one, else the HTTP `Mcp-Session-Id`'s, else the shared pool of
        session-less (2026-07-28) clients."""
        if self.single is not None:
            return self.single
        key = ""
        rc = ctx.request_context if ctx is not None else None
        headers = getattr(rc.request, "headers", None) if rc is not None else None
        # Only the handshake era has sessions, whose ids the SDK checks (unknown: 404; another credential's:
        # refused). A 2026-07-28 request's Mcp-Session-Id header is checked by nobody: it names no session.
        if headers is not None and rc is not None and rc.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            key = str(headers.get("mcp-session-id") or "")
        found = self.sessions.get(key)
        if found is None:
            found = self.sessions[key] = _Session(key)
        return found

    async def end_session(self, key: str) -> None:
        """The HTTP session `key` ended (DELETE): stop its background commands."""
        session = self.sessions.pop(key, None)
        if session is not None:
            await session.aclose()

    async def aclose(self) -> None:
        """Stop every background command of every session."""
        sessions = [*self.sessions.values(), *([self.single] if self.single is not None else [])]
        self.sessions.clear()
        for s in sessions:
            await s.aclose()

    async def reap_idle(self) -> None:
        """Stop background commands nobody touched for idle_timeout seconds (runs until cancelled)."""
        idle = self.settings.idle_timeout
        if idle is None:
            return
        while True:
            await anyio.sleep(min(max(idle / 4, 0.05), 30.0))
            now = time.monotonic()
            for s in [*self.sessions.values(), *([self.single] if self.single is not None else [])]:
                for handle, bg in list(s.procs.items()):
                    if now - bg.touched > idle:
                        logger.info("stopping idle background command %s", handle)
                        s.procs.pop(handle, None)
                        bg.child.kill()
            # A session with nothing left holds no state worth keeping (the SDK may have expired it without
            # a DELETE): forgotten, it is made again on its next call.
            for key, s in list(self.sessions.items()):
                if key and not s.procs and not s.calls:
                    del self.sessions[key]

    # --- command building -----------------------------------------------------------------------------

    def argv(self, command: list[str] | None, shell: str | None) -> list[str]:
        """The argv to run from a call's `command` or `shell`. Raises MCPError (INVALID_PARAMS) for an
        oversized one, ToolError when neither or both are given or a shell string is not allowed."""
        if (command is None) == (shell is None):
            msg = "give exactly one of `command` (an argv list) and `shell` (a string for /bin/sh -c)"
            raise ToolError(msg)
        if shell is not None:
            _bound("shell", len(shell.encode("utf-8", "surrogatepass")), MAX_COMMAND_BYTES)
            ok, why = self.settings.shell_allowed()
            if not ok:
                msg = f"shell strings are not accepted: {why}; pass `command` as an argv list instead"
                raise ToolError(msg)
            return [SHELL, "-c", shell]
        assert command is not None
        _bound(
            "command", sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in command), MAX_COMMAND_BYTES
        )
        if not command or not command[0]:
            msg = "`command` must be a non-empty argv list, its first item the program"
            raise ToolError(msg)
        if any("\0" in a for a in command):
            msg = "`command` arguments cannot contain NUL characters"
            raise ToolError(msg)
        return list(command)

    def policy(self, timeout: float | None) -> Policy:
        """The policy for one call: the server's, with a shorter wall-clock limit when the call asks."""
        base = self.settings.policy
        if timeout is None:
            return base
        if not math.isfinite(timeout) or timeout <= 0:
            msg = f"timeout must be a number of seconds > 0, not {timeout!r}"
            raise ToolError(msg)
        limit = base.resources.timeout
        if limit is not None and timeout > limit:
            msg = f"timeout {timeout:g} s is beyond the policy's {limit:g} s; ask for {limit:g} or less"
            raise ToolError(msg)
        return profiles.override(base, timeout=timeout)


def _bound(what: str, size: int, limit: int) -> None:
    if size > limit:
        raise MCPError(
            code=INVALID_PARAMS,
            message=f"`{what}` is {size} bytes, over the {limit}-byte bound of corral's MCP server",
            data={"argument": what, "bytes": size, "limit": limit},
        )


async def _pump(stream: ByteReceiveStream | None, buf: _Buffer, bg: _Background) -> None:
    if stream is None:
        return
    async with stream:
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            buf.add(chunk)
            bg.notify()


async def _watch(bg: _Background) -> None:
    """Own one background command until it is reaped: copy its output into the buffers, wait for it, then
    record its Result. On cancellation (the server stopping) the command is killed and reaped first."""
    child = bg.child
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pump, child.stdout, bg.out, bg)
            tg.start_soon(_pump, child.stderr, bg.err, bg)
            bg.result = await child.wait()
            # Every process of the sandbox is gone: the pipes reach EOF now. A stuck reader is not waited for.
            tg.cancel_scope.deadline = anyio.current_time() + 2
    finally:
        with anyio.CancelScope(shield=True):
            child.kill()
            with contextlib.suppress(Exception):
                await child.aclose()
            if bg.result is None:
                bg.result = child.result()
            bg.done.set()
            bg.notify()


def _unwrap(err: BaseException) -> BaseException:
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    return err


@contextlib.contextmanager
def _corral_errors(approval: approvals.Approval | None = None) -> Any:
    """corral's errors (and the Supervisor's ValueError for a bad argument) become tool errors carrying
    corral's message (the model reads and adapts); a command the rules refused says why (for a `prompt`
    one: why it was not approved, from `approval`)."""
    try:
        yield
    except (ToolError, MCPError):
        raise
    except BaseException as err:
        inner = _unwrap(err)
        if isinstance(inner, CommandForbiddenError) and approval is not None:
            raise approvals.refusal(inner, approval) from inner
        if isinstance(inner, CorralError):
            msg = f"corral: {inner}"
            raise ToolError(msg) from inner
        if isinstance(inner, (OSError, ValueError)):
            # ValueError: the Supervisor refusing an argument the client gave (a `cwd` that is empty or
            # holds a NUL, a NUL in a `shell` string), which the model can fix.
            msg = f"corral: {inner}"
            raise ToolError(msg) from inner
        raise


# ---------------------------------------------------------------------------------------------------------
# The server


CommandArg = Annotated[
    list[str] | None,
    Field(
        description='The command as an argv list, e.g. ["pytest", "-q"]. The program is looked up on PATH.'
    ),
]
ShellArg = Annotated[
    str | None,
    Field(description="Instead of `command`: a shell string run as /bin/sh -c STRING (when describe_sandbox "
          "says shell strings are accepted)."),
]  # fmt: skip
CwdArg = Annotated[
    str | None,
    Field(description="Working directory, relative to the sandbox's workdir (default: the workdir)."),
]


#: A tool: an async function whose signature MCPServer.add_tool turns into its input schema.
_Tool = Callable[..., Awaitable[CallToolResult]]


def build_server(runtime_ref: Callable[[], _Runtime], settings: McpSettings) -> MCPServer[Any]:
    """The MCPServer with corral's tools. `runtime_ref` returns the running server's state (set by
    `serve`; a call before raises ToolError). Its `tools/call` handler is `_mcp_calls.DirectCalls`, and the
    SDK's OpenTelemetry middleware is left out unless a tracer provider is installed
    (`_mcp_calls.drop_idle_tracing`)."""
    description = describe(settings)
    readonly = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    acting = ToolAnnotations(
        read_only_hint=False, destructive_hint=True, open_world_hint=settings.policy.network.mode != "none"
    )
    tools: list[Tool] = []
    _add_command_tools(tools, runtime_ref, settings, readonly, acting)
    _add_background_tools(tools, runtime_ref, description, readonly, acting)
    server: MCPServer[Any] = MCPServer(
        "corral",
        title="corral sandbox",
        instructions=(
            "Run shell commands confined to a sandbox: " + description.summary + " Use describe_sandbox for "
            "details; run_command for commands that finish; start_command/read_output/stop_command for "
            "servers and REPLs."
        ),
        version=_version(),
        log_level="WARNING",
        tools=tools,
    )
    DirectCalls(server, tools, resolvers=settings.rules is not None).install()
    drop_idle_tracing(server)
    return server


def _add_command_tools(
    tools: list[Tool],
    runtime_ref: Callable[[], _Runtime],
    settings: McpSettings,
    readonly: ToolAnnotations,
    acting: ToolAnnotations,
) -> None:
    """Add run_command, start_command and read_output to `tools` (in this order: the order of the list)."""
    shell_ok, _ = settings.shell_allowed()
    shell_note = (
        " Or pass `shell`, a string run as /bin/sh -c."
        if shell_ok
        else " Shell strings are not accepted by this server: always pass an argv list."
    )
    _add(
        tools,
        _run_command_tool(runtime_ref, settings),
        title="Run a command in a sandbox",
        description="Run one command to completion in its own sandbox and return its exit code, output "
        "(bounded), duration and any limit it broke." + shell_note,
        annotations=acting,
    )
    _add(
        tools,
        _start_command_tool(runtime_ref, settings),
        title="Start a background command",
        description="Start a long-running command (a dev server, a REPL, a watcher) in its own sandbox and "
        f"return a handle; at most {settings.max_background} per session." + shell_note,
        annotations=acting,
    )
    _add(
        tools,
        _read_output_tool(runtime_ref),
        title="Read a background command's output",
        description="The output a background command wrote since the last read, waiting up to `wait` seconds "
        "for some; says whether it still runs and, once it exited, how.",
        annotations=readonly,
    )


def _add_background_tools(
    tools: list[Tool],
    runtime_ref: Callable[[], _Runtime],
    description: SandboxDescription,
    readonly: ToolAnnotations,
    acting: ToolAnnotations,
) -> None:
    """Add send_input, stop_command, list_commands and describe_sandbox to `tools` (after
    `_add_command_tools`'s, in this order)."""

    fixed = _tool_result(description, description.summary)  # the same on every call without rules

    async def describe_sandbox(ctx: Context[Any, Any]) -> Annotated[CallToolResult, SandboxDescription]:
        if not description.command_rules:
            return fixed
        ok, why = approvals.can_ask(ctx)
        words = (
            f"A command the rules mark `prompt` is put to this client's user first ({why}): it runs only if "
            "they accept."
            if ok
            else f"A command the rules mark `prompt` is refused: {why}."
        )
        model = description.model_copy(
            update={"prompt_approval": words, "summary": f"{description.summary} {words}"}
        )
        return _tool_result(model, model.summary)

    _add(
        tools,
        _send_input_tool(runtime_ref),
        title="Write to a background command's stdin",
        description="Write text to a background command's stdin (include \\n to end a line); `close` sends "
        "EOF.",
        annotations=acting,
    )
    _add(
        tools,
        _stop_command_tool(runtime_ref),
        title="Stop a background command",
        description="SIGTERM a background command, SIGKILL after `grace` seconds; returns how it ended and "
        "its unread output.",
        annotations=acting,
    )
    _add(
        tools,
        _list_commands_tool(runtime_ref),
        title="List background commands",
        description="This session's background commands and their handles.",
        annotations=readonly,
    )
    _add(
        tools,
        describe_sandbox,
        title="Describe the sandbox",
        description="What commands run here may do: readable and writable paths, network, resource limits, "
        "whether shell strings are accepted.",
        annotations=readonly,
    )


def _add(tools: list[Tool], fn: _Tool, *, title: str, description: str, annotations: ToolAnnotations) -> None:
    """Append the SDK's Tool for `fn` (input and output schemas from its signature) to `tools`. The SDK
    calls a wrapper that gives it `fn`'s result as a `CallToolResult` (`_tool_result`); `DirectCalls`
    calls `fn` itself (`__wrapped__`)."""

    @functools.wraps(fn)
    async def for_the_sdk(*args: Any, **kwargs: Any) -> CallToolResult:
        return as_model(await fn(*args, **kwargs))

    tool = Tool.from_function(for_the_sdk, title=title, description=description, annotations=annotations)
    meta = tool.fn_metadata
    tool.fn_metadata = _TextArguments(**{name: getattr(meta, name) for name in FuncMetadata.model_fields})
    tools.append(tool)


class _TextArguments(FuncMetadata):
    """The SDK's argument handling, but that a string given for an argument that takes a string is never
    parsed as JSON first. The SDK's `pre_parse_json` parses the string value of any field not annotated
    exactly `str` (clients that send a list as a JSON string), so `str | None` arguments were changed: a
    `shell`, `input` or `cwd` of `null` became None, and an `input` holding a JSON array or object (a
    document fed to `jq` on stdin) was refused as "not a valid string". Other fields (`command`, a list)
    keep the SDK's pre-parsing."""

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        fields = self.arg_model.model_fields
        kept = {k: v for k, v in data.items() if type(v) is str and k in fields and _takes_text(fields[k])}
        return {**super().pre_parse_json(data), **kept}


def _takes_text(info: FieldInfo) -> bool:
    """Whether the field's annotation admits a plain string (`str`, `str | None`)."""
    annotation = info.annotation
    return annotation is str or str in typing.get_args(annotation)


def _approval_param(tool: _Tool, runtime_ref: Callable[[], _Runtime], settings: McpSettings) -> _Tool:
    """`tool` with its `approval` parameter typed for the SDK's resolver (`_mcp_approval`), which fills it
    before the body runs. (Set here, not in the signature: the resolver is this server's, and the module's
    annotations are strings the SDK evaluates in the module's globals.)"""

    def argv_of(command: list[str] | None, shell: str | None) -> list[str]:
        return runtime_ref().argv(command, shell)

    resolver = approvals.resolver(settings.rules, argv_of, settings.approval_timeout)
    tool.__annotations__["approval"] = approvals.annotation(resolver)
    return tool


def _run_command_tool(runtime_ref: Callable[[], _Runtime], settings: McpSettings) -> _Tool:
    """The run_command tool: one command run to completion in its own sandbox."""

    async def run_command(
        ctx: Context[Any, Any],
        command: CommandArg = None,
        shell: ShellArg = None,
        timeout: Annotated[  # noqa: ASYNC109  (the tool's argument: the policy enforces it)
            float | None,
            Field(description="Wall-clock seconds (at most the policy's timeout, if it has one)."),
        ] = None,
        cwd: CwdArg = None,
        input: Annotated[
            str | None, Field(description="Text fed to the command's stdin, then closed.")
        ] = None,
        approval: Any = None,
    ) -> Annotated[CallToolResult, CommandResult]:
        rt = runtime_ref()
        argv = rt.argv(command, shell)
        data = None
        if input is not None:
            data = input.encode("utf-8", "surrogatepass")
            _bound("input", len(data), MAX_INPUT_BYTES)
        policy = rt.policy(timeout)
        answer = approvals.from_outcome(approval)
        with rt.session(ctx).call(), _corral_errors(answer):
            result = await rt.sup.run(
                argv, policy=policy, input=data, cwd=cwd, name="mcp", approver=answer.approver
            )
        structured = _command_data(
            result, result.stdout, result.stderr, result.stdout_truncated, result.stderr_truncated
        )
        return _tool_result(structured, _summary(structured))

    return _approval_param(run_command, runtime_ref, settings)


def _start_command_tool(runtime_ref: Callable[[], _Runtime], settings: McpSettings) -> _Tool:
    """The start_command tool: a background command started in its own sandbox, its handle returned."""

    async def start_command(
        ctx: Context[Any, Any],
        command: CommandArg = None,
        shell: ShellArg = None,
        cwd: CwdArg = None,
        approval: Any = None,
    ) -> Annotated[CallToolResult, StartedCommand]:
        rt = runtime_ref()
        argv = rt.argv(command, shell)
        session = rt.session(ctx)
        if len(session.procs) >= rt.settings.max_background:
            msg = (
                f"this session already has {len(session.procs)} background commands, its limit: "
                "stop_command one first (list_commands shows them)"
            )
            raise ToolError(msg)
        answer = approvals.from_outcome(approval)
        with session.call(), _corral_errors(answer):
            child = await rt.sup.start(
                argv,
                policy=rt.settings.policy,
                stdin=PIPE,
                stdout=PIPE,
                stderr=PIPE,
                cwd=cwd,
                name="mcp",
                approver=answer.approver,
            )
        handle = "cmd-" + secrets.token_hex(16)
        bg = _Background(handle, argv, child, _Buffer(rt.settings.buffer), _Buffer(rt.settings.buffer))
        if session.closed:  # the session ended while the sandbox was being built
            child.kill()
            await child.aclose()
            msg = "the session ended"
            raise ToolError(msg)
        session.procs[handle] = bg
        rt.tg.start_soon(_watch, bg)
        model = StartedCommand(handle=handle, pid=child.pid, command=argv)
        return _tool_result(model, f"started {handle} (sandbox pid {child.pid}): {' '.join(argv)[:200]}")

    return _approval_param(start_command, runtime_ref, settings)


def _find(rt: _Runtime, ctx: Context[Any, Any], handle: str) -> tuple[_Session, _Background]:
    """The session of `ctx` and its background command `handle`, marked as just used. Raises ToolError
    when the session has no such command."""
    session = rt.session(ctx)
    bg = session.procs.get(handle)
    if bg is None:
        msg = f"no background command {handle!r} in this session (stopped, expired, or never started)"
        raise ToolError(msg)
    bg.touched = time.monotonic()
    return session, bg


def _read_output_tool(runtime_ref: Callable[[], _Runtime]) -> _Tool:
    """The read_output tool: a background command's new output, and how it ended once it did."""

    async def read_output(
        ctx: Context[Any, Any],
        handle: Annotated[str, Field(description="From start_command.")],
        wait: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="Seconds to wait for new output or the exit.")
        ] = 0.0,
        max_bytes: Annotated[
            int, Field(ge=1, le=1024 * 1024, description="Bytes per stream at most.")
        ] = 65536,
    ) -> Annotated[CallToolResult, BackgroundStatus]:
        rt = runtime_ref()
        _, bg = _find(rt, ctx, handle)
        if wait > 0 and not bg.out.data and not bg.err.data and not bg.done.is_set():
            changed = bg.changed
            with anyio.move_on_after(wait):
                await changed.wait()
                # The first bytes seldom come alone (a line, then the next): a moment for the rest of them.
                await anyio.sleep(0.05)
        if bg.result is not None and not bg.done.is_set():
            with anyio.move_on_after(2):
                await bg.done.wait()
        ended = bg.done.is_set()  # then the readers have put all the output in the buffers
        out, out_dropped = bg.out.take(max_bytes, final=ended)
        err, err_dropped = bg.err.take(max_bytes, final=ended)
        final = final_data = None
        if bg.done.is_set() and bg.result is not None:
            final_data = _command_data(bg.result, b"", b"", False, False)
            final = CommandResult.model_validate(final_data)
        model = BackgroundStatus(
            handle=handle,
            running=final is None,
            stdout=_text(out),
            stderr=_text(err),
            stdout_dropped=out_dropped,
            stderr_dropped=err_dropped,
            more=bool(bg.out.data or bg.err.data),
            result=final,
        )
        state = "running" if final_data is None else f"exited: {_summary(final_data).splitlines()[0]}"
        text = f"{handle} {state}"
        for name, chunk in (("stdout", model.stdout), ("stderr", model.stderr)):
            if chunk:
                text += f"\n--- {name} ---\n{chunk[-4000:]}"
        return _tool_result(model, text)

    return read_output


def _send_input_tool(runtime_ref: Callable[[], _Runtime]) -> _Tool:
    """The send_input tool: text written to a background command's stdin."""

    async def send_input(
        ctx: Context[Any, Any],
        handle: Annotated[str, Field(description="From start_command.")],
        text: Annotated[
            str, Field(description="Written to the command's stdin as UTF-8 (add \\n for a line).")
        ] = "",
        close: Annotated[bool, Field(description="Close stdin afterwards (EOF).")] = False,
    ) -> Annotated[CallToolResult, InputSent]:
        rt = runtime_ref()
        _, bg = _find(rt, ctx, handle)
        data = text.encode("utf-8", "surrogatepass")
        _bound("text", len(data), MAX_INPUT_BYTES)
        stdin = bg.child.stdin
        if bg.stdin_closed or stdin is None:
            msg = f"{handle}'s stdin is closed"
            raise ToolError(msg)
        async with bg.write_lock:
            try:
                if data:
                    with anyio.fail_after(10):
                        await stdin.send(data)
                if close:
                    bg.stdin_closed = True
                    await stdin.aclose()
            except TimeoutError as err:
                msg = f"{handle} did not read its stdin for 10 s (the pipe is full)"
                raise ToolError(msg) from err
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as err:
                bg.stdin_closed = True
                msg = f"{handle}'s stdin is closed (the command exited or closed it)"
                raise ToolError(msg) from err
        model = InputSent(handle=handle, bytes_written=len(data), closed=bg.stdin_closed)
        return _tool_result(
            model, f"wrote {len(data)} bytes to {handle}" + (" and closed stdin" if close else "")
        )

    return send_input


def _stop_command_tool(runtime_ref: Callable[[], _Runtime]) -> _Tool:
    """The stop_command tool: a background command terminated, how it ended and its unread output."""

    async def stop_command(
        ctx: Context[Any, Any],
        handle: Annotated[str, Field(description="From start_command.")],
        grace: Annotated[float, Field(ge=0, le=60, description="Seconds between SIGTERM and SIGKILL.")] = 5.0,
    ) -> Annotated[CallToolResult, CommandResult]:
        rt = runtime_ref()
        session, bg = _find(rt, ctx, handle)
        session.procs.pop(handle, None)
        with anyio.CancelScope(shield=True):
            if not bg.done.is_set():
                with contextlib.suppress(Exception):
                    await bg.child.terminate(grace)
            await bg.done.wait()
        assert bg.result is not None
        cap = rt.settings.capture
        out, _ = bg.out.take(cap)
        err, _ = bg.err.take(cap)
        data = _command_data(bg.result, out, err, bool(bg.out.data), bool(bg.err.data))
        return _tool_result(data, f"stopped {handle}: " + _summary(data))

    return stop_command


def _list_commands_tool(runtime_ref: Callable[[], _Runtime]) -> _Tool:
    """The list_commands tool: the session's background commands."""

    async def list_commands(ctx: Context[Any, Any]) -> Annotated[CallToolResult, BackgroundList]:
        rt = runtime_ref()
        session = rt.session(ctx)
        now = time.monotonic()
        entries = []
        for bg in session.procs.values():
            bg.touched = now
            entries.append(
                BackgroundEntry(
                    handle=bg.handle,
                    command=bg.argv,
                    running=not bg.done.is_set(),
                    pid=bg.child.pid,
                    age_s=round(now - bg.child.started, 3),
                )
            )
        model = BackgroundList(commands=entries, limit=rt.settings.max_background)
        lines = [
            f"{e.handle} {'running' if e.running else 'exited'}: {' '.join(e.command)[:120]}" for e in entries
        ]
        return _tool_result(model, "\n".join(lines) or "no background commands")

    return list_commands


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------
# Transports


def is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _HttpGate:
    """ASGI wrapper of the SDK's app: the bearer token check (when one is set; constant-time compare) and the
    end of HTTP sessions (a successful DELETE with an Mcp-Session-Id stops that session's commands)."""

    def __init__(self, app: Any, token: str | None, runtime_ref: Callable[[], _Runtime]) -> None:
        self._app = app
        self._token = None if token is None else token.encode()
        self._runtime = runtime_ref

    def _authorized(self, header: bytes) -> bool:
        """Whether an Authorization header value carries the token (the scheme `Bearer`, in any case:
        RFC 9110 makes auth schemes case-insensitive; the token compared in constant time)."""
        if self._token is None:
            return True
        scheme, _, credentials = header.strip().partition(b" ")
        return hmac.compare_digest(credentials.strip(), self._token) and scheme.lower() == b"bearer"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "lifespan":
            await self._app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope.get("type") != "http":  # no other kind of connection is served (a WebSocket upgrade, ...)
            if scope.get("type") == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        if not self._authorized(headers.get(b"authorization", b"")):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"text/plain"),
                        (b"www-authenticate", b'Bearer realm="corral"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"corral: a bearer token is required\n"})
            return
        session = headers.get(b"mcp-session-id")
        if scope.get("method") == "POST":
            await self._exchange(scope, receive, send)
            return
        if scope.get("method") != "DELETE" or session is None:
            await self._app(scope, receive, send)
            return
        status = 0

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        await self._app(scope, receive, sending)
        if 200 <= status < 300:
            await self._runtime().end_session(session.decode("latin-1"))

    async def _exchange(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """One POST: its calls (which the SDK runs in the context this sets, even in a session's own task)
        are cancelled when the client drops the connection before the response is complete."""
        exchange = _HttpExchange()
        token = _EXCHANGE.set(exchange)

        async def receiving() -> Any:
            message = await receive()
            if message.get("type") == "http.disconnect" and not exchange.complete:
                exchange.abandon()
            return message

        async def sending(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                exchange.complete = True
            await send(message)

        try:
            await self._app(scope, receiving, sending)
        finally:
            _EXCHANGE.reset(token)
            if not exchange.complete:
                exchange.abandon()


class _HttpExchange:
    """The calls of one HTTP POST, cancelled together when its client leaves before the response ends."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.complete = False
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        for scope in self.scopes:
            scope.cancel()


#: The HTTP POST a call came in (None over stdio).
_EXCHANGE: contextvars.ContextVar[_HttpExchange | None] = contextvars.ContextVar(
    "corral_mcp_post", default=None
)


async def serve(
    settings: McpSettings,
    *,
    http: tuple[str, int] | None = None,
    token: str | None = None,
    around: Callable[[Supervisor], contextlib.AbstractAsyncContextManager[object]] | None = None,
    ready: Callable[[str], None] | None = None,
    max_message: int = 4 * 1024 * 1024,
) -> None:
    """Serve corral's tools over stdio (the default) or streamable HTTP on `http` = (host, port) until the
    client leaves (stdio: EOF on stdin), or SIGINT/SIGTERM/SIGHUP. Every background command is stopped and
    every sandbox reaped before it returns.

    token: the bearer token HTTP clients must send (required unless `host` is a loopback address).
    around: entered with the running Supervisor for the server's life (the CLI attaches --metrics-port here).
    ready: called with "stdio" or the HTTP URL once the server accepts clients.
    max_message: bytes of the largest JSON-RPC message accepted (stdio: longer lines are skipped with a parse
                 error; HTTP: a larger body is answered 413).

    Runs on asyncio and on trio, but for HTTP, which needs asyncio (uvicorn, an asyncio server; docs/mcp.md).

    Raises ValueError for a non-loopback `host` without a token or a policy path that is not UTF-8 text
    (`_check_text`), PolicyError for a system directory as a writable root without
    ``filesystem.allow_system_write`` (`policies.check_writable_roots`), HttpNeedsAsyncioError for HTTP on
    another event loop than asyncio, OSError when the address cannot be bound; on cancellation, stops like
    at a signal.
    """
    _check_token(http, token)
    _check_text(settings.policy)
    # A system directory as a writable root is refused before the server takes a client, as `corral run`
    # refuses it before the command runs: the server used to start, tell its client that commands "may
    # write only /", and refuse every call. The home directory as one warns here, once, at the start.
    for warning in check_writable_roots(settings.policy):
        logger.warning("%s", warning)
    if http is not None and (backend := _backend()) != "asyncio":
        raise HttpNeedsAsyncioError(backend)
    runtime: _Runtime | None = None

    def ref() -> _Runtime:
        if runtime is None:
            msg = "the server is not running"
            raise ToolError(msg)
        return runtime

    server = build_server(ref, settings)
    sock = _listen(http) if http is not None else None
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async with (
                Supervisor(max_concurrency=settings.max_concurrency, capture_limit=settings.capture,
                           cgroups=settings.cgroups, rules=settings.rules) as sup,
                around(sup) if around is not None else contextlib.nullcontext(),
                anyio.create_task_group() as tg,
            ):  # fmt: skip
                runtime = _Runtime(settings, sup, tg, single=http is None)
                stop = anyio.Event()
                tg.start_soon(_stop_at_signal, signals, stop)
                tg.start_soon(runtime.reap_idle)
                try:
                    if sock is None:
                        await _serve_stdio(server, stop, max_message, ready)
                    else:
                        assert http is not None
                        await _serve_http(server, sock, http[0], token, ref, stop, max_message, ready)
                finally:
                    await runtime.aclose()
                    tg.cancel_scope.cancel()
    finally:
        if sock is not None:
            sock.close()


class HttpNeedsAsyncioError(CorralError, RuntimeError):
    """serve() was asked for streamable HTTP on an event loop other than asyncio (`backend`, e.g. "trio"):
    the HTTP server (uvicorn) is built on asyncio's own protocols and loop. stdio runs on either."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(f"corral mcp's HTTP transport runs on asyncio only (uvicorn), not on {backend}")


def _backend() -> str:
    """The running event loop's library ("asyncio", "trio")."""
    try:
        import sniffio
    except ImportError:  # trio depends on sniffio: without it, this is asyncio
        return "asyncio"
    return sniffio.current_async_library()


def _check_token(http: tuple[str, int] | None, token: str | None) -> None:
    """Raise ValueError when `http` is a non-loopback address and no bearer token is given."""
    if http is not None and token is None and not is_loopback(http[0]):
        msg = (
            f"--http {http[0]}: a non-loopback address needs a bearer token (--token-file or "
            "CORRAL_MCP_TOKEN)"
        )
        raise ValueError(msg)


def _check_text(p: Policy) -> None:
    """Raise ValueError when a path `p` names (its workdir, default the current directory, and its
    filesystem lists) is not UTF-8 text: MCP's messages are JSON text, so such a path could be neither
    described to a client nor named by one (the server answered not even `initialize`, whose instructions
    name the workdir)."""
    fs = p.filesystem
    for path in (
        p.workdir or os.getcwd(),
        *fs.read,
        *fs.write,
        *fs.deny,
        *fs.protected,
        *(fs.execute or ()),
    ):
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            msg = f"path '{shown}' is not UTF-8 text, which MCP's JSON messages cannot carry"
            raise ValueError(msg) from None


async def _stop_at_signal(signals: AsyncIterator[int], stop: anyio.Event) -> None:
    """Set `stop` at the first signal that `signals` receives."""
    async for _ in signals:
        stop.set()
        return


async def _serve_stdio(
    server: MCPServer[Any], stop: anyio.Event, max_message: int, ready: Callable[[str], None] | None
) -> None:
    """Serve the SDK's connection loop over stdin and stdout (`_mcp_stdio`) until EOF on stdin, `stop`, or
    stdout breaking (the client closed it, or stopped reading in the middle of a message: `WireOut`)."""
    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stopper)

        def broken() -> None:
            logger.warning("stdout: the client can no longer read the replies; ending the session")
            tg.cancel_scope.cancel()

        with stdio_fds() as (wire_in, wire_out):
            out = WireOut(wire_out, on_broken=broken)
            if ready is not None:
                ready("stdio")
            # The SDK's connection loop, fed by corral's stdio streams.
            await serve_connection(server._lowlevel_server, WireIn(wire_in, max_message, out), out)
        tg.cancel_scope.cancel()


def _listen(http: tuple[str, int]) -> socket.socket:
    host, port = http
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _serve_http(
    server: MCPServer[Any],
    sock: socket.socket,
    host: str,
    token: str | None,
    ref: Callable[[], _Runtime],
    stop: anyio.Event,
    max_message: int,
    ready: Callable[[str], None] | None,
) -> None:
    import uvicorn

    app = server.streamable_http_app(host=host.strip("[]"), max_request_body_size=max_message)
    gate = _HttpGate(app, token, ref)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # corral's serve() handles the signals
            yield

    config = uvicorn.Config(gate, log_level="warning", lifespan="on", access_log=False)
    uv = _Server(config)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            await stop.wait()
            uv.should_exit = True

        tg.start_soon(stopper)
        if ready is not None:
            ready(f"http://{shown}:{bound_port}/mcp")
        await uv.serve(sockets=[sock])
        tg.cancel_scope.cancel()
