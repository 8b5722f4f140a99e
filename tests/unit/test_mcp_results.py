"""The MCP server's results built without pydantic on the per-call path (supervisor/mcp_server.py,
supervisor/_mcp_calls.py): run_command's structured content is exactly the published `CommandResult`'s JSON
dump, the wire form `DirectCalls` hands the SDK is exactly the SDK's own dump of the `CallToolResult`, and a
direct call reads the SDK's `Context` only when a tool asks for more than the request. Results are made up
(no sandbox runs); tests/e2e/test_mcp.py checks real ones against the published output schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult, ImageContent, TextContent

from policies import load_rules, profiles
from supervisor import _mcp_calls
from supervisor._types import Denial, Result, Violation
from supervisor.mcp_server import (
    CommandResult,
    McpSettings,
    _command_data,
    _summary,
    _tool_result,
    build_server,
)

RESULTS = {
    "plain": Result(exit_code=0, signal=None, violation=None, duration_s=0.0123456789, cpu_s=0.001,
                    peak_memory_bytes=1 << 20, stdout=b"hello\n", pid=4242, enforced=("landlock", "seccomp")),
    "killed": Result(exit_code=137, signal=9, violation=Violation("memory", 64 << 20, 65 << 20),
                     duration_s=1.5, cpu_s=1.25, peak_memory_bytes=65 << 20, killed=True,
                     stdout=b"\xff\xfebad utf-8", stderr=b"x" * 10, stdout_truncated=True, pid=7),
    "held": Result(exit_code=1, signal=None, violation=Violation("pids", 64, 64), duration_s=2,
                   cpu_s=0, peak_memory_bytes=0, killed=False),
    "denied": Result(exit_code=1, signal=None, violation=None, duration_s=0.5, cpu_s=0.25,
                     peak_memory_bytes=4096, stderr=b"Permission denied\n",
                     denials=tuple(Denial("landlock", "write", f"/etc/x{i}\x1b[31m", 3, i + 1,
                                          "add it to write") for i in range(7)),
                     denials_dropped=12,
                     denials_unobservable=(("seccomp", "no listener"),)),
}  # fmt: skip


def _text(data: object) -> str:
    """JSON text, keys sorted: equal only when the values and their JSON types are (2 is not 2.0)."""
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_command_data_is_the_models_json_dump(name: str) -> None:
    r = RESULTS[name]
    data = _command_data(r, r.stdout, r.stderr, r.stdout_truncated, r.stderr_truncated)
    assert _text(data) == _text(json.loads(CommandResult.model_validate(data).model_dump_json()))
    assert set(data) == set(CommandResult.model_fields)


def test_the_summary_reads_the_json_form() -> None:
    r = RESULTS["denied"]
    text = _summary(_command_data(r, r.stdout, r.stderr, False, False))
    assert text.startswith("exit 1 (0.5 s)")
    assert "denied write /etc/x0\\x1b[31m (landlock: add it to write)" in text  # escaped by Denial.to_dict
    assert ", 2 times" in text
    assert "(more denials in the structured result: 7 kinds, 12 more)" in text
    assert text.endswith("--- stderr ---\nPermission denied\n")
    killed = RESULTS["killed"]
    head = _summary(_command_data(killed, killed.stdout, killed.stderr, True, False)).splitlines()[0]
    assert head == "exit 137: killed: memory limit 64 MiB exceeded (observed 65 MiB) (1.5 s)"


def _sdk_dump(result: CallToolResult) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def test_the_wire_form_is_the_sdks_dump() -> None:
    r = RESULTS["killed"]
    data = _command_data(r, r.stdout, r.stderr, True, False)
    plain = _tool_result(data, _summary(data))  # what the bodies give: a Plain
    ours = _mcp_calls.as_model(plain)  # what the SDK's own path gets from them
    assert _text(_mcp_calls._wire(plain)) == _text(_sdk_dump(ours))
    assert _text(_mcp_calls._wire(ours)) == _text(_sdk_dump(ours))
    error = _mcp_calls._error("Error executing tool run_command: no")
    assert _text(_mcp_calls._wire(error)) == _text(_sdk_dump(error))
    assert _sdk_dump(error)["isError"] is True


def test_other_content_is_left_to_the_sdk() -> None:
    image = CallToolResult(content=[ImageContent(type="image", data="AAAA", mime_type="image/png")])
    assert _mcp_calls._wire(image) is image
    annotated = CallToolResult(content=[TextContent(type="text", text="x", _meta={"k": 1})])
    assert _mcp_calls._wire(annotated) is annotated


async def _describe(rules: Path | None, sdk: bool) -> dict[str, Any]:
    server = build_server(
        lambda: None,
        McpSettings(
            policy=profiles.get("workspace-write", "/srv/repo"),
            rules=load_rules(rules) if rules is not None else None,
        ),
    )
    if sdk:
        low = server._lowlevel_server
        entry = low.get_request_handler("tools/call")
        assert entry is not None
        direct = entry.handler.__self__  # type: ignore[attr-defined]
        assert direct._sdk is not None
        low.add_request_handler("tools/call", direct._sdk.params_type, direct._sdk.handler)
        low.middleware.remove(direct.short_path)
    async with Client(server) as client:
        result = await client.call_tool("describe_sandbox", {})
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_a_tool_that_reads_the_context_gets_the_sdks(tmp_path: Path) -> None:
    # describe_sandbox under command rules asks the Context whether the client can be asked (its
    # capabilities): through the direct call's stand-in, the answer is the SDK path's.
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "ask"\npattern = ["touch"]\ndecision = "prompt"\n')
    direct = anyio.run(_describe, rules, False)
    assert direct == anyio.run(_describe, rules, True)
    assert "did not declare the elicitation capability" in direct["structuredContent"]["prompt_approval"]
