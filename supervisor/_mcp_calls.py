"""`tools/call` in `corral mcp`: the SDK's low-level request handler for it, calling corral's tools directly
when nothing has to be resolved before the body runs, and the SDK's own `MCPServer` path otherwise.

`MCPServer` runs a tool call through its tool manager: a `Context`, the arguments validated by the tool's
argument model, the tool's resolvers (the `prompt` approval of `_mcp_approval`), the body, then the result
checked again against the output model the structured content was just dumped from. Without command rules
the approval resolver can only answer "not asked", so that machinery is pure cost on every call
(benchmarks/mcp_overhead.py, docs/mcp.md "Cost per call"). `DirectCalls` registers a `tools/call` handler
on the SDK's low-level `Server` (its public `add_request_handler`, the hook the SDK's own extensions use)
that, for a tool without a resolver in force, does the same steps minus the resolver and the second check:

- the arguments are validated by the tool's `FuncMetadata.validate_arguments` (the same argument model,
  JSON-string pre-parsing and errors as the SDK's path; corral's tools keep string arguments as given:
  `mcp_server._TextArguments`), except that values that already have their field's plain JSON type (a
  string, a list of strings, a float, null) are taken as they are, after that pre-parsing, which is what
  the validation returns for them;
- the body gets the SDK's `Context` for the request and the approval "not asked";
- failures end as the SDK ends them: an `MCPError` is a protocol error; a `ToolError` or invalid arguments
  are an `is_error` result reading `Error executing tool NAME: MESSAGE`; anything else is logged with its
  traceback and the result reads `Error executing tool NAME` only;
- the structured content is returned as the body built it: a dump of the tool's output model, so valid by
  construction (tests/e2e/test_mcp.py validates every result against the published output schema).

On a handshake-era connection (every stdio client today), a plain call (`name` and `arguments`, nothing
else in the params) is run by `DirectCalls.short_path`, a middleware, which also leaves out the
SDK's steps around the handler that cannot change such a call's answer: the params' validation against
the version's request schema, the handler lookup, the params model, and the result's validation and
re-dump by the version's result schema (it builds that dump itself; tests/unit/test_mcp_short_path.py and
test_mcp_calls.py check it against the SDK's own steps). Everything else is the SDK's: the JSON-RPC
dispatch, the request context, the other middleware, the initialization gate's state, the response
envelope and its serialization. A call that has resolvers in force (a command tool under `--rules`), an
unknown tool, a call with `_meta` or other params, a 2026-07-28 connection, and anything `DirectCalls` does
not know go the SDK's way, to the handler it registered when not corral's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import HandlerEntry
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, CallToolResult, TextContent
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from supervisor import _mcp_approval as approvals

__all__ = ["DirectCalls", "Plain", "as_model", "drop_idle_tracing"]

logger = logging.getLogger("corral.mcp")

#: What the approval resolver answers whenever no command rules are in force.
_NOT_ASKED = approvals.Approval("not asked")


class DirectCalls:
    """The `tools/call` handler of `server` (see the module doc). `tools` are the server's tools (built with
    `Tool.from_function`, registered through `MCPServer(tools=...)`); `resolvers` says whether their
    resolvers are in force (command rules are), in which case a tool that has one takes the SDK's path."""

    def __init__(self, server: MCPServer[Any], tools: list[Tool], *, resolvers: bool) -> None:
        self._server = server
        self._direct = {t.name: t for t in tools if not (resolvers and t.resolved_params)}
        #: Each direct tool's body: the function `mcp_server` wrapped for the SDK, which may give a `Plain`.
        self._bodies = {name: getattr(t.fn, "__wrapped__", t.fn) for name, t in self._direct.items()}
        self._fields = {name: _plain_fields(t) for name, t in self._direct.items()}
        self._versions = _handshake_versions()
        self._sdk: HandlerEntry[Any] | None = None

    def install(self) -> None:
        """Register the handler on the server's low-level `Server`, in place of (and delegating to) the one
        the SDK registered, and the short path (`short_path`) as a middleware. Raises
        RuntimeError when the SDK registered no handler."""
        low = self._server._lowlevel_server
        self._sdk = low.get_request_handler("tools/call")
        if self._sdk is None:
            msg = "the MCP SDK registered no tools/call handler"
            raise RuntimeError(msg)
        low.add_request_handler("tools/call", CallToolRequestParams, self.call)
        # Outermost but for tracing (so that a span still covers the calls it takes): the other middleware
        # the SDK installs acts on nothing such a call carries (`RequestStateBoundary`: `requestState`).
        from mcp.server._otel import OpenTelemetryMiddleware

        chain = low.middleware
        tracing = [i for i, m in enumerate(chain) if isinstance(m, OpenTelemetryMiddleware)]
        chain.insert(tracing[-1] + 1 if tracing else 0, self.short_path)

    async def call(self, ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> HandlerResult:
        """Run one `tools/call`. Raises MCPError for a protocol error (the dispatcher answers it); every other
        failure is an `is_error` result. On cancellation, the tool's body is cancelled (its sandbox is killed
        and reaped) and the cancellation propagates."""
        tool = self._direct.get(params.name)
        if tool is None:
            assert self._sdk is not None
            return await self._sdk.handler(ctx, params)
        return _wire(await self._run(tool, ctx, params.name, params.arguments or {}, params))

    async def short_path(self, ctx: ServerRequestContext[Any], call_next: CallNext) -> HandlerResult:
        """A middleware (ahead of the SDK's others, behind its tracing): a `tools/call` of a direct tool on
        an initialized handshake-era connection whose params are just `name` and `arguments` (an object) is
        run here, and its result handed back in the wire form the SDK's own steps after the middleware
        would give it; any other message goes on (`call_next`) unchanged.

        What it leaves out are the SDK's checks and shaping of what cannot differ for such a call (and the
        middleware inside it, which act on what such a call does not carry: `requestState`, `_meta`): the
        params' validation against the protocol version's `CallToolRequest` (a string `name`, an object
        `arguments`: nothing else to check), the handler lookup and the initialization gate (asked here:
        `session.client_params` is what `initialize` recorded), the params model, and the result's
        validation and re-dump by the version's schema (`_handshake_wire` builds that dump; each version
        is served here only if the SDK's own `serialize_server_result` gives the same, key for key and in
        order, for sample results at start-up: `_handshake_versions`; tests/unit/test_mcp_short_path.py
        compares the two on many results). A `tools/call` sent as a notification (no id: the SDK runs the
        middleware for notifications too) goes on, to be dropped as the SDK drops it: run here, its command
        ran with no answer and no id to cancel it by. Raises what `call` raises."""
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        plain = self.plain_call(ctx.params, ctx.protocol_version, ctx.session.client_params is not None)
        if plain is None:
            return await call_next(ctx)
        tool, name, arguments = plain
        return await self.lane_call(ctx, tool, name, arguments, ctx.protocol_version)

    def plain_call(
        self, params: Mapping[str, Any] | None, version: str, initialized: bool
    ) -> tuple[Tool, str, dict[str, Any]] | None:
        """The tool, its name and the arguments of a `tools/call` with `params`, on a connection of protocol
        `version` whose `initialize` was recorded or not (`initialized`), when the short path may run it
        (`short_path`'s doc: a handshake-era version it serves, `name` and `arguments` (an object) alone,
        a direct tool, no cache hint); else None."""
        if version not in self._versions or params is None or not initialized:
            return None
        name = params.get("name")
        arguments = params.get("arguments", _EMPTY)
        if type(name) is not str or type(arguments) is not dict:
            return None
        tool = self._direct.get(name)
        if (
            tool is None
            or len(params) != 1 + ("arguments" in params)
            or "tools/call" in self._server._lowlevel_server.cache_hints
        ):
            return None
        return tool, name, arguments

    async def lane_call(
        self,
        make_context: ServerRequestContext[Any] | Callable[[], ServerRequestContext[Any]],
        tool: Tool,
        name: str,
        arguments: dict[str, Any],
        version: str,
    ) -> dict[str, Any]:
        """Run a call `plain_call` accepted (`short_path`'s, and the stdio transport's fast lane's,
        `_mcp_stdio`, which gives a function that makes the request context, called only if the tool reads
        it). Returns the result's wire form for protocol `version`; raises what `call` raises."""
        return _handshake_wire(await self._run(tool, make_context, name, arguments, None), version)

    async def _run(
        self,
        tool: Tool,
        ctx: ServerRequestContext[Any] | Callable[[], ServerRequestContext[Any]],
        name: str,
        arguments: dict[str, Any],
        params: CallToolRequestParams | None,
    ) -> CallToolResult | Plain:
        """The tool's body for `arguments`, its failures as the SDK's path ends them (the module doc)."""
        try:
            kwargs = self._arguments(tool, name, arguments)
        except ValidationError as err:
            fields = sorted({".".join(str(part) for part in e["loc"]) for e in err.errors()})
            logger.info("Tool %r rejected arguments: %r", name, fields)
            return _error(f"Error executing tool {name}: {err}")
        except MCPError:
            raise
        except Exception:  # a validator that crashed
            logger.exception("Tool %r raised an unexpected exception", name)
            return _error(f"Error executing tool {name}")
        if tool.context_kwarg is not None:
            kwargs[tool.context_kwarg] = _LazyContext(ctx, self._server, params)
        for resolved in tool.resolved_params:  # only the approval, and only while no rules are in force
            kwargs[resolved] = _NOT_ASKED
        try:
            result: CallToolResult | Plain = await self._bodies[name](**kwargs)
        except MCPError:
            raise
        except (ToolError, ResourceError) as err:
            logger.info("Tool %r failed: %r", name, str(err))
            return _error(f"Error executing tool {name}: {err}")
        except Exception:
            logger.exception("Tool %r raised an unexpected exception", name)
            return _error(f"Error executing tool {name}")
        return result

    def _arguments(self, tool: Tool, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The tool's keyword arguments from the call's `arguments`, as the SDK's
        `FuncMetadata.validate_arguments` gives them: the tool's JSON-string pre-parsing, then, when every
        value already has its field's exact type (a string, a list of strings, a float, or null where the
        field allows it, the forms a JSON client sends), the values as they are with the defaults of the
        fields not given, which is what the argument model's validation and one-level dump return for
        them; anything else goes through that validation. Raises what it raises."""
        meta = tool.fn_metadata
        fields = self._fields[name]
        if fields is None:
            return meta.validate_arguments(arguments)
        # The pre-parsing looks only at strings: without one it gives `arguments` back as they are.
        data = (
            meta.pre_parse_json(arguments) if any(type(v) is str for v in arguments.values()) else arguments
        )
        kwargs: dict[str, Any] = {}
        for field, kind in fields.items():
            value: Any = data.get(field)
            if value is not None and type(value) is not kind:
                return meta.validate_arguments(arguments)
            if kind is list and value is not None:
                items = cast("list[Any]", value)
                if any(type(item) is not str for item in items):
                    return meta.validate_arguments(arguments)
                value = list(items)
            kwargs[field] = value
        return kwargs


class Plain(NamedTuple):
    """A result as corral's tool bodies make it: `text` for the model to read and `data`, the structured
    content in its JSON form. `DirectCalls` puts it on the wire as it is; the SDK's own path gets the
    `CallToolResult` (`as_model`) from the wrapper `mcp_server` registers each body under."""

    text: str
    data: dict[str, Any]


def as_model(result: CallToolResult | Plain) -> CallToolResult:
    """`result` as the SDK's `CallToolResult` (validated construction)."""
    if type(result) is Plain:
        text = TextContent(type="text", text=result.text)
        return CallToolResult(content=[text], structured_content=result.data)
    assert isinstance(result, CallToolResult)
    return result


#: A call's `arguments` when the client sent none (the SDK validates absent arguments as none given).
_EMPTY: dict[str, Any] = {}

#: The annotations `DirectCalls._arguments` takes as they come: the type a JSON value of the field has.
_PLAIN: dict[Any, type] = {str | None: str, list[str] | None: list, float | None: float}


def _plain_fields(tool: Tool) -> dict[str, type] | None:
    """`tool`'s argument fields, each with the type its JSON value has, when each is one of the optional
    plain kinds of `_PLAIN`, with no constraint or alias and the default None; else None (the tool's
    arguments are always validated by its argument model)."""
    fields: dict[str, type] = {}
    for field, info in tool.fn_metadata.arg_model.model_fields.items():
        kind = _PLAIN.get(info.annotation)
        if kind is None or info.metadata or info.alias or info.default is not None:
            return None
        fields[field] = kind
    return fields


#: The wire form's fields a CallToolResult carries whatever it holds (today `resultType`), as the SDK dumps
#: them: taken from the SDK's own dump of an empty result, so a field the SDK adds comes along.
_WIRE_BASE: dict[str, Any] = {
    k: v
    for k, v in CallToolResult(content=[]).model_dump(by_alias=True, mode="json", exclude_none=True).items()
    if k not in ("content", "structuredContent", "isError")
}


def _plain_parts(result: CallToolResult | Plain) -> tuple[list[str], bool, dict[str, Any] | None] | None:
    """`result`'s texts, error flag and structured content when it holds only plain text content (no
    annotations, no `_meta`) and JSON-ready structured content, as corral's tools build it; else None."""
    if type(result) is Plain:
        return [result.text], False, result.data
    assert isinstance(result, CallToolResult)
    texts = [
        c.text for c in result.content if type(c) is TextContent and c.annotations is None and c.meta is None
    ]
    if result.meta is not None or len(texts) != len(result.content):
        return None
    return texts, result.is_error, result.structured_content


def _wire(result: CallToolResult | Plain) -> HandlerResult:
    """`result` as the SDK would dump it for the wire (`model_dump(by_alias=True, mode="json",
    exclude_none=True)`), built directly when it holds only plain text content and JSON-ready structured
    content (corral's tools build exactly that: ~25 us of CPU less per call); else `result` itself, for
    the SDK to dump. The SDK validates either against the protocol version's schema before sending."""
    parts = _plain_parts(result)
    if parts is None:
        return result  # type: ignore[return-value]  # a CallToolResult (a Plain always has parts)
    texts, is_error, structured = parts
    wire: dict[str, Any] = {
        **_WIRE_BASE,
        "content": [{"type": "text", "text": t} for t in texts],
        "isError": is_error,
    }
    if structured is not None:
        wire["structuredContent"] = structured
    return wire


def _handshake_wire(result: CallToolResult | Plain, version: str) -> dict[str, Any]:
    """`result` as the SDK's steps after the middleware give it on a handshake-era connection: the wire
    dump, validated and re-dumped by the version's `CallToolResult` (`serialize_server_result`), which
    orders the keys and drops `resultType`. Built directly for plain text content and JSON-ready structured
    content (`_plain_parts`); anything else is handed to `serialize_server_result` itself."""
    parts = _plain_parts(result)
    if parts is None:
        assert isinstance(result, CallToolResult)
        wire = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return serialize_server_result("tools/call", version, wire)
    texts, is_error, structured = parts
    out: dict[str, Any] = {"content": [{"text": t, "type": "text"} for t in texts], "isError": is_error}
    if structured is not None:
        out["structuredContent"] = structured
    return out


#: Results `_handshake_versions` checks `_handshake_wire` against the SDK with.
_SAMPLES = (
    CallToolResult(content=[TextContent(type="text", text="exit 0")], structured_content={"a": [1, None]}),
    CallToolResult(content=[TextContent(type="text", text="no")], is_error=True),
    CallToolResult(content=[], structured_content={}),
)


def _handshake_versions() -> frozenset[str]:
    """The handshake-era protocol versions for which the SDK's `serialize_server_result` of `_wire`'s dump
    is what `_handshake_wire` builds, key for key and in order, for each of `_SAMPLES` (so an SDK that
    shapes a version's results otherwise keeps its own path for that version)."""
    ok = set()
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        try:
            same = all(
                json.dumps(serialize_server_result("tools/call", version, dict(_wire(r))))  # type: ignore[arg-type]
                == json.dumps(_handshake_wire(r, version))
                for r in _SAMPLES
            )
        except Exception:  # a version the SDK cannot shape this way: its own path
            same = False
        if same:
            ok.add(version)
    return frozenset(ok)


class _LazyContext:
    """The SDK's `Context` for a direct call, made only when a tool reads more of it than the request's
    `request_context` (over stdio, run_command reads nothing else; building a `Context`, a pydantic model,
    was ~30 us of CPU per call). Every other attribute is read from the `Context` built on first use (with
    the call's params model, validated then from the request when the short path did not make one). The
    request context itself may be given as a function that makes it (the stdio fast lane's: stdio's one
    session needs none of it), called on first use."""

    __slots__ = ("_params", "_real", "_server", "_source")

    def __init__(
        self,
        source: ServerRequestContext[Any] | Callable[[], ServerRequestContext[Any]],
        server: MCPServer[Any],
        params: CallToolRequestParams | None,
    ) -> None:
        self._source = source
        self._server = server
        self._params = params
        self._real: Context[Any, Any] | None = None

    @property
    def request_context(self) -> ServerRequestContext[Any]:
        source = self._source
        if not isinstance(source, ServerRequestContext):
            source = self._source = source()
        return source

    def __getattr__(self, name: str) -> Any:
        real = self._real
        if real is None:
            params = self._params
            if params is None:
                params = CallToolRequestParams.model_validate(self.request_context.params, by_name=False)
            real = self._real = Context(
                request_context=self.request_context, mcp_server=self._server, input_params=params
            )
        return getattr(real, name)


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def drop_idle_tracing(server: MCPServer[Any]) -> bool:
    """Remove the SDK's OpenTelemetry middleware from `server` when no tracer provider is installed (the
    middleware opens a span per message, which then records nothing, at ~25 us of CPU per message here).
    With a provider installed before the server starts (`opentelemetry-instrument`, or a program that
    sets one and then calls `serve`) it stays. Returns whether it was removed."""
    from mcp.server._otel import OpenTelemetryMiddleware
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    chain = server.middleware
    chain[:] = [m for m in chain if not isinstance(m, OpenTelemetryMiddleware)]
    return True
