"""`_mcp_stdio.parse`, the stdio transport's parse of a line, against the SDK's own
(`jsonrpc_message_adapter.validate_json`, which `parse` short-cuts for requests) on generated lines: the same
message model with the same fields, or the same validation error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from mcp_types import JSONRPCRequest, jsonrpc_message_adapter
from pydantic import ValidationError

from supervisor._mcp_stdio import parse

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
values = st.recursive(
    scalars, lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=3), v, max_size=3)
)
ids = st.integers() | st.text(max_size=4) | st.floats(allow_nan=False) | st.booleans() | st.none()
messages = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "id": ids,
        "method": st.sampled_from(["tools/call", "ping", "notifications/cancelled"]) | st.integers(),
        "params": st.dictionaries(st.text(max_size=5), values, max_size=3) | values,
        "result": st.dictionaries(st.text(max_size=5), values, max_size=3) | values,
        "error": st.fixed_dictionaries({"code": st.integers(), "message": st.text(max_size=5)}) | values,
    },
)


def _outcome(fn: Any, line: str) -> object:
    try:
        m = fn(line)
    except ValidationError as err:
        return ("invalid", err.errors(include_url=False))
    return (type(m).__name__, m.model_dump(by_alias=True, exclude_unset=True))


@settings(max_examples=1500, deadline=None)
@given(message=messages)
@example(message={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "x"}})
@example(message={"jsonrpc": "2.0", "id": 7.0, "method": "tools/call"})  # an id only lax mode takes
@example(message={"jsonrpc": "2.0", "id": 7, "method": "ping", "result": {}})  # request and response at once
@example(message={"jsonrpc": "2.0", "method": "ping", "result": {}})
@example(message={"jsonrpc": "2.0", "id": 1, "method": "x", "error": {"code": 1, "message": "m"}})
@example(
    message={"jsonrpc": "2.0", "id": 1, "method": "x", "params": {}, "error": {"code": 1, "message": ""}}
)
def test_a_line_is_parsed_as_the_sdk_parses_it(message: dict[str, Any]) -> None:
    for line in (json.dumps(message), json.dumps(message, ensure_ascii=False)):
        assert _outcome(parse, line) == _outcome(_sdk, line)
    # A key spelled with escapes is the same key to JSON.
    escaped = json.dumps(message).replace('"error"', '"\\u0065rror"').replace('"result"', '"\\u0072esult"')
    assert _outcome(parse, escaped) == _outcome(_sdk, escaped)


def _sdk(line: str) -> Any:
    return jsonrpc_message_adapter.validate_json(line, by_name=False)


def test_a_call_takes_the_request_validation_alone() -> None:
    # What parse is for: a client's request is one validation, not the union's four.
    line = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "run_command"}})
    message = parse(line)
    assert type(message) is JSONRPCRequest
    assert message.id == 3
    assert message.params == {"name": "run_command"}


def test_not_json_fails_as_the_sdks_parse_fails() -> None:
    for bad in ("{", "[1,2]", '"x"', ""):
        assert _outcome(parse, bad) == _outcome(_sdk, bad)
