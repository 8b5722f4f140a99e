"""`tools/call` in `corral mcp`: the SDK's low-level request handler for it, calling corral's tools directly
when nothing has to be resolved before the body runs, and the SDK's own `MCPServer` path otherwise.

`MCPServer` runs a tool call through its tool manager: a `Context`, the arguments validated by the tool's
argument model, the tool's resolvers (the `prompt` approval of `_mcp_approval`), the body, then the result
checked again against the output model the structured content was just dumped from. Without command rules
the approval resolver can only answer "not asked", so that machinery is pure cost on every call
(benchmarks/mcp_overhead.py, docs/mcp.md "Cost per call"). `DirectCalls` registers a `tools/call` handler
on the SDK's low-level `Server` (its public `add_request_handler`, the hook the SDK's own extensions use)
that, for a tool without a resolver in force, does the same steps minus the resolver and the second check:

- the arguments are validated by the SDK's own `FuncMetadata.validate_arguments` of the tool (the same
  argument model, JSON-string pre-parsing and errors as the SDK's path);
- the body gets the SDK's `Context` for the request and the approval "not asked";
- failures end as the SDK ends them: an `MCPError` is a protocol error; a `ToolError` or invalid arguments
  are an `is_error` result reading `Error executing tool NAME: MESSAGE`; anything else is logged with its
  traceback and the result reads `Error executing tool NAME` only;
- the structured content is returned as the body built it: a dump of the tool's output model, so valid by
  construction (tests/e2e/test_mcp.py validates every result against the published output schema).

Everything else is the SDK's: the JSON-RPC dispatch, the request context and middleware, the `tools/call`
params model, the result's wire validation and serialization. A call that has resolvers in force (a
command tool under `--rules`), an unknown tool, and anything `DirectCalls` does not know go to the handler
the SDK registered, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import HandlerEntry
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams, CallToolResult, TextContent
from pydantic import ValidationError

from supervisor import _mcp_approval as approvals

__all__ = ["DirectCalls", "drop_idle_tracing"]

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
        self._sdk: HandlerEntry[Any] | None = None

    def install(self) -> None:
        """Register the handler on the server's low-level `Server`, in place of (and delegating to) the one
        the SDK registered. Raises RuntimeError when the SDK registered none."""
        low = self._server._lowlevel_server
        self._sdk = low.get_request_handler("tools/call")
        if self._sdk is None:
            msg = "the MCP SDK registered no tools/call handler"
            raise RuntimeError(msg)
        low.add_request_handler("tools/call", CallToolRequestParams, self.call)

    async def call(self, ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> HandlerResult:
        """Run one `tools/call`. Raises MCPError for a protocol error (the dispatcher answers it); every other
        failure is an `is_error` result. On cancellation, the tool's body is cancelled (its sandbox is killed
        and reaped) and the cancellation propagates."""
        tool = self._direct.get(params.name)
        if tool is None:
            assert self._sdk is not None
            return await self._sdk.handler(ctx, params)
        try:
            kwargs = tool.fn_metadata.validate_arguments(params.arguments or {})
        except ValidationError as err:
            fields = sorted({".".join(str(part) for part in e["loc"]) for e in err.errors()})
            logger.info("Tool %r rejected arguments: %r", params.name, fields)
            return _error(f"Error executing tool {params.name}: {err}")
        except MCPError:
            raise
        except Exception:  # a validator that crashed
            logger.exception("Tool %r raised an unexpected exception", params.name)
            return _error(f"Error executing tool {params.name}")
        if tool.context_kwarg is not None:
            kwargs[tool.context_kwarg] = _LazyContext(ctx, self._server, params)
        for name in tool.resolved_params:  # only the approval, and only while no rules are in force
            kwargs[name] = _NOT_ASKED
        try:
            result: CallToolResult = await tool.fn(**kwargs)  # corral's tools return CallToolResult
        except MCPError:
            raise
        except (ToolError, ResourceError) as err:
            logger.info("Tool %r failed: %r", params.name, str(err))
            return _error(f"Error executing tool {params.name}: {err}")
        except Exception:
            logger.exception("Tool %r raised an unexpected exception", params.name)
            return _error(f"Error executing tool {params.name}")
        return _wire(result)


#: The wire form's fields a CallToolResult carries whatever it holds (today `resultType`), as the SDK dumps
#: them: taken from the SDK's own dump of an empty result, so a field the SDK adds comes along.
_WIRE_BASE: dict[str, Any] = {
    k: v
    for k, v in CallToolResult(content=[]).model_dump(by_alias=True, mode="json", exclude_none=True).items()
    if k not in ("content", "structuredContent", "isError")
}


def _wire(result: CallToolResult) -> HandlerResult:
    """`result` as the SDK would dump it for the wire (`model_dump(by_alias=True, mode="json",
    exclude_none=True)`), built directly when it holds only plain text content and JSON-ready structured
    content (corral's tools build exactly that: ~25 us of CPU less per call); else `result` itself, for
    the SDK to dump. The SDK validates either against the protocol version's schema before sending."""
    texts = [c for c in result.content if type(c) is TextContent and c.annotations is None and c.meta is None]
    if result.meta is not None or len(texts) != len(result.content):
        return result
    wire: dict[str, Any] = {
        **_WIRE_BASE,
        "content": [{"type": "text", "text": c.text} for c in texts],
        "isError": result.is_error,
    }
    if result.structured_content is not None:
        wire["structuredContent"] = result.structured_content
    return wire


class _LazyContext:
    """The SDK's `Context` for a direct call, made only when a tool reads more of it than the request's
    `request_context` (over stdio, run_command reads nothing else; building a `Context`, a pydantic model,
    was ~30 us of CPU per call). Every other attribute is read from the `Context` built on first use."""

    __slots__ = ("_params", "_real", "_server", "request_context")

    def __init__(
        self, ctx: ServerRequestContext[Any], server: MCPServer[Any], params: CallToolRequestParams
    ) -> None:
        self.request_context = ctx
        self._server = server
        self._params = params
        self._real: Context[Any, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        real = self._real
        if real is None:
            real = self._real = Context(
                request_context=self.request_context, mcp_server=self._server, input_params=self._params
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
