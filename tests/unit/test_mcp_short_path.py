"""`DirectCalls`' short path (`supervisor/_mcp_calls.py`) against the SDK steps it stands in for, on
generated inputs: the arguments a tool gets (`_arguments` against the SDK's `validate_arguments`) and the
result's wire form on a handshake-era connection (`_handshake_wire` against the SDK's
`serialize_server_result` of the dump). tests/unit/test_mcp_calls.py compares whole calls through the SDK's
client with the short path and without it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, ImageContent, JSONRPCResponse, TextContent
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from policies import profiles
from supervisor import _mcp_calls
from supervisor.mcp_server import McpSettings, build_server

SERVER = build_server(lambda: None, McpSettings(policy=profiles.get("workspace-write", "/srv/repo")))
TOOLS: dict[str, Tool] = {t.name: t for t in SERVER._tool_manager.list_tools()}
DIRECT = next(m.__self__ for m in SERVER._lowlevel_server.middleware if hasattr(m, "__self__"))

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
)
#: Strings a client may send, JSON-looking ones included (the SDK pre-parses those).
strings = st.text() | st.sampled_from(
    ["null", "[]", '["a"]', "5", "2.5", "true", '"x"', "{}", " null ", "[1]"]
)
argument_values = json_values | strings | st.lists(strings, max_size=3)


def test_the_short_path_serves_every_handshake_era_version() -> None:
    assert set(HANDSHAKE_PROTOCOL_VERSIONS) == DIRECT._versions


@settings(max_examples=400, deadline=None)
@given(
    tool=st.sampled_from(["run_command", "start_command", "describe_sandbox", "read_output"]),
    arguments=st.dictionaries(
        st.sampled_from(["command", "shell", "timeout", "cwd", "input", "handle", "other"]),
        argument_values,
        max_size=4,
    ),
)
@example(tool="run_command", arguments={"shell": "null"})  # pre-parsed to null
@example(tool="run_command", arguments={"cwd": " null ", "command": ["a"]})
@example(tool="run_command", arguments={"input": "[1]", "command": ["a"]})  # pre-parsed to a list
@example(tool="run_command", arguments={"command": '["a"]', "timeout": 3})
@example(tool="run_command", arguments={"command": ["a"], "timeout": True})
def test_arguments_are_what_the_sdks_validation_gives(tool: str, arguments: dict[str, Any]) -> None:
    meta = TOOLS[tool].fn_metadata
    try:
        want: object = meta.validate_arguments(dict(arguments))
    except ValidationError as err:
        want = ("invalid", err.errors(include_url=False))
    try:
        got: object = DIRECT._arguments(TOOLS[tool], tool, dict(arguments))
    except ValidationError as err:
        got = ("invalid", err.errors(include_url=False))
    assert repr(got) == repr(want)  # repr: types too (5 against 5.0)


def test_the_short_path_takes_the_plain_values_of_a_json_client_as_they_are() -> None:
    # The cases the short path answers without the argument model (the rest: the two compared above).
    tool = TOOLS["run_command"]
    args = {"command": ["ls", "-l"], "timeout": 2.5, "cwd": "src", "input": "hi", "shell": None}
    calls = 0
    real = tool.fn_metadata.validate_arguments

    def counted(a: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return real(a)

    object.__setattr__(tool.fn_metadata, "validate_arguments", counted)
    try:
        got = DIRECT._arguments(tool, "run_command", args)
    finally:
        object.__delattr__(tool.fn_metadata, "validate_arguments")
    assert calls == 0
    assert got == real(args)


texts = st.lists(st.text(), max_size=3)
structured = st.none() | st.dictionaries(st.text(), json_values, max_size=5)


@settings(max_examples=300, deadline=None)
@given(texts=texts, structured=structured, is_error=st.booleans(), image=st.booleans())
def test_the_wire_form_is_the_sdks(
    texts: list[str], structured: dict[str, Any] | None, is_error: bool, image: bool
) -> None:
    content: list[Any] = [TextContent(type="text", text=t) for t in texts]
    if image:  # not plain text: handed to the SDK's own serialization
        content.append(ImageContent(type="image", data="aGk=", mime_type="image/png"))
    result = CallToolResult(content=content, structured_content=structured, is_error=is_error)
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        wire = _mcp_calls._wire(result)
        if not isinstance(wire, dict):
            wire = wire.model_dump(by_alias=True, mode="json", exclude_none=True)
        want = serialize_server_result("tools/call", version, dict(wire))
        got = _mcp_calls._handshake_wire(result, version)
        # The bytes the server writes (WireOut: the response's JSON dump) are the same; so is the dict, but
        # for floats JSON has no form for (the SDK's dump makes them null on the way, the response's dump
        # does it at the end).
        assert _line(got) == _line(want)
        if "inf" not in repr(structured):
            assert json.dumps(got) == json.dumps(want)


def _line(result: dict[str, Any]) -> str:
    return JSONRPCResponse(jsonrpc="2.0", id=1, result=result).model_dump_json(
        by_alias=True, exclude_unset=True
    )


@pytest.mark.parametrize(
    "params",
    [
        {"name": "describe_sandbox", "arguments": {}, "_meta": {"progressToken": 1}},
        {"name": "describe_sandbox", "arguments": {}, "requestState": "x"},
        {"name": "describe_sandbox", "arguments": None},
        {"name": "describe_sandbox", "arguments": []},
        {"name": 5},
        {"name": "no_such_tool"},
    ],
)
def test_anything_else_goes_on_to_the_sdk(params: dict[str, Any]) -> None:
    _goes_on(params, request_id=7)


def test_a_plain_call_sent_as_a_notification_goes_on_to_the_sdk() -> None:
    # The SDK runs the middleware for notifications too (no request id); it drops a tools/call notification,
    # which the short path used to run (tests/e2e/test_mcp_lane_attack.py checks the effect end to end).
    _goes_on({"name": "describe_sandbox", "arguments": {}}, request_id=None)


def _goes_on(params: dict[str, Any], request_id: int | None) -> None:
    """The short path hands a tools/call with `params` and `request_id` on to the SDK (call_next)."""
    import anyio

    class Session:
        client_params = object()

    class Ctx:
        method = "tools/call"
        protocol_version = HANDSHAKE_PROTOCOL_VERSIONS[-1]
        session = Session()

    Ctx.params = params  # type: ignore[attr-defined]
    Ctx.request_id = request_id  # type: ignore[attr-defined]
    passed: list[object] = []

    async def call_next(ctx: Any) -> dict[str, Any]:
        passed.append(ctx)
        return {}

    anyio.run(DIRECT.short_path, Ctx(), call_next)
    assert len(passed) == 1


@settings(max_examples=200, deadline=None)
@given(text=st.text(), data=st.dictionaries(st.text(), json_values, max_size=5))
def test_a_plain_result_is_the_result_model_the_sdk_gets(text: str, data: dict[str, Any]) -> None:
    # What the tool bodies give (`Plain`) is put on the wire as the `CallToolResult` the SDK's own path
    # gets from them (`as_model`) would be.
    plain = _mcp_calls.Plain(text, data)
    model = _mcp_calls.as_model(plain)
    dumped = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert json.loads(_line(dict(_mcp_calls._wire(plain)))) == json.loads(_line(dumped))  # type: ignore[arg-type]
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        want = serialize_server_result("tools/call", version, dict(dumped))
        assert _line(_mcp_calls._handshake_wire(plain, version)) == _line(want)
        assert _line(_mcp_calls._handshake_wire(model, version)) == _line(want)
