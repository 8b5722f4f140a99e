"""`tools/call` of corral's MCP server (`supervisor/_mcp_calls.py`): the direct handler answers every call as
the SDK's own `MCPServer` handler answers it. Both run in process through the SDK's in-memory client, against
servers alike but for the handler; no sandbox starts (the server is not running, so a call that gets as far
as running a command ends in the same tool error on both paths). tests/e2e/test_mcp.py runs the real
server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolRequestParams

from policies import load_rules, profiles
from supervisor import _mcp_calls
from supervisor.mcp_server import McpSettings, build_server


def _server(**opts: Any) -> MCPServer[Any]:
    def stopped() -> Any:
        from mcp.server.mcpserver.exceptions import ToolError

        raise ToolError("the server is not running")

    return build_server(stopped, McpSettings(policy=profiles.get("workspace-write", "/srv/repo"), **opts))


def _sdk_path(server: MCPServer[Any]) -> None:
    """Put the handler the SDK registered back in place of DirectCalls, and take DirectCalls' short path
    out of the middleware."""
    low = server._lowlevel_server
    entry = low.get_request_handler("tools/call")
    assert entry is not None
    direct = entry.handler.__self__  # type: ignore[attr-defined]
    assert isinstance(direct, _mcp_calls.DirectCalls)
    assert direct._sdk is not None
    low.add_request_handler("tools/call", CallToolRequestParams, direct._sdk.handler)
    low.middleware.remove(direct.short_path)


CALLS: list[tuple[str, dict[str, Any]]] = [
    ("run_command", {"command": ["/bin/true"]}),  # reaches the body: the server is not running
    ("run_command", {"command": '["/bin/true"]'}),  # a JSON string pre-parsed as the SDK does
    ("run_command", {"command": 5}),  # invalid arguments
    ("run_command", {"command": ["/bin/true"], "timeout": "soon"}),
    ("run_command", {"command": ["/bin/true"], "shell": "true"}),  # both: the body refuses
    ("run_command", {}),
    ("start_command", {"shell": 7}),
    ("read_output", {"handle": "cmd-x", "wait": 99}),  # over the field's bound
    ("read_output", {}),  # a required argument missing
    ("stop_command", {"handle": "cmd-x"}),
    ("run_command", {"command": ["/bin/true", 1]}),  # an item of the wrong type
    ("run_command", {"command": ["/bin/true"], "timeout": 5}),  # an int for a float
    ("run_command", {"command": ["/bin/true"], "timeout": True}),
    ("run_command", {"shell": "null"}),  # pre-parsed to null: neither given
    ("run_command", {"command": ["/bin/true"], "cwd": "[1]"}),  # pre-parsed to a list: invalid
    ("run_command", {"command": ["/bin/true"], "cwd": "5", "input": "\u00e9\u2028x"}),  # kept as strings
    ("run_command", {"command": ["/bin/true"], "unknown": [1]}),  # ignored, as the model ignores it
    ("describe_sandbox", {}),  # a whole result, no runtime needed
    ("describe_sandbox", {"extra": 1}),
    ("no_such_tool", {}),  # not corral's: the SDK's handler answers
]


async def _answers(server: MCPServer[Any], mode: str) -> list[object]:
    out: list[object] = []
    async with Client(server, mode=mode) as client:  # type: ignore[arg-type]
        for name, args in CALLS:
            try:
                result = await client.call_tool(name, args)
            except MCPError as err:
                out.append(("protocol error", err.error.code, err.error.message))
            else:
                out.append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    return out


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # the 2026-07-28 protocol and the handshake era
def test_direct_calls_answer_as_the_sdks_handler(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    direct, sdk = _server(), _server()
    _sdk_path(sdk)
    short = 0
    real = _mcp_calls._handshake_wire

    def counted(*args: Any) -> Any:
        nonlocal short
        short += 1
        return real(*args)

    monkeypatch.setattr(_mcp_calls, "_handshake_wire", counted)
    got = anyio.run(_answers, direct, mode)
    assert short == (len(CALLS) - 1 if mode == "legacy" else 0)  # all but the unknown tool on the short path
    want = anyio.run(_answers, sdk, mode)
    assert short == (len(CALLS) - 1 if mode == "legacy" else 0)
    assert got == want
    texts = [str(a) for a in got]
    assert any("the server is not running" in t for t in texts)
    assert any("validation error" in t for t in texts)
    assert any("Unknown tool: no_such_tool" in t for t in texts)
    assert any("Every command runs in its own sandbox" in t for t in texts)


def test_command_tools_take_the_sdks_path_when_rules_are_in_force(tmp_path: Any) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "ask"\npattern = ["touch"]\ndecision = "prompt"\n')
    server = _server(rules=load_rules(rules))
    entry = server._lowlevel_server.get_request_handler("tools/call")
    assert entry is not None
    direct = entry.handler.__self__  # type: ignore[attr-defined]
    assert isinstance(direct, _mcp_calls.DirectCalls)
    assert "run_command" not in direct._direct
    assert "start_command" not in direct._direct
    assert {"read_output", "describe_sandbox", "stop_command"} <= set(direct._direct)
    without = _server()._lowlevel_server.get_request_handler("tools/call")
    assert without is not None
    assert {"run_command", "start_command"} <= set(without.handler.__self__._direct)  # type: ignore[attr-defined]


TRACING = """
import sys
from opentelemetry import trace
from mcp.server._otel import OpenTelemetryMiddleware
if sys.argv[1] == "provider":
    trace.set_tracer_provider(trace.NoOpTracerProvider())
from policies import profiles
from supervisor.mcp_server import McpSettings, build_server
server = build_server(lambda: None, McpSettings(policy=profiles.get("workspace-write", "/srv/repo")))
print(any(isinstance(m, OpenTelemetryMiddleware) for m in server.middleware))
print(" ".join(getattr(m, "__name__", type(m).__name__) for m in server.middleware))
"""


@pytest.mark.parametrize(
    ("provider", "kept", "chain"),
    [
        ("none", "False", "short_path RequestStateBoundary"),
        ("provider", "True", "OpenTelemetryMiddleware short_path RequestStateBoundary"),  # spans cover it
    ],
)
def test_the_sdks_tracing_middleware_stays_only_with_a_tracer_provider(
    provider: str, kept: str, chain: str
) -> None:
    # In a child process: a tracer provider, once set, is set for the process.
    out = subprocess.run(
        [sys.executable, "-c", TRACING, provider], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.splitlines() == [kept, chain]
