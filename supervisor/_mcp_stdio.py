"""The stdio transport of `corral mcp`: the two streams the MCP SDK's `Server.run(read_stream,
write_stream, ...)` serves a connection over, made of stdin and stdout, read and written on the event loop.

The SDK's own `stdio_server` wraps stdin and stdout with `anyio.wrap_file`, so every line read and every
message written is a hop to a worker thread and back, and each message then crosses a memory stream and a
relay task on its way in and out. Here the SDK's dispatcher pulls each message straight from the pipe (a
non-blocking read when the fd is readable; see `_Reader`) and each reply is written by the task that
sends it (a non-blocking write, waiting with `anyio.wait_writable` only when the pipe is full). The
messages, their parsing and their validation are the SDK's: a line is parsed as the SDK's stdio transport
parses it, with its `jsonrpc_message_adapter` (a request alone is validated as a request: `parse`), and a
message is serialized as it serializes it. Two things differ, both required by JSON-RPC 2.0 and the
server's bounds: a line longer than the bound is dropped as it arrives (it costs at most the bound in
memory), and a line that is no JSON-RPC message is answered with the error JSON-RPC prescribes (id null:
-32700 for text that is not JSON or is over the bound, -32600 for JSON that is no valid message, or a
request whose id is no string or integer, which the SDK's parser takes for a notification; the request's
own id when the line still names one, `_request_id`) where the SDK's loop drops it unanswered.

`serve_connection` runs the SDK's connection loop over the two streams, choosing the protocol era from the
client's first request without the relay task `Server.run` puts in front of the loop (see its doc). On a
handshake-era connection, a plain `tools/call` of a corral tool takes a fast lane (`_Lane`, `_Dispatcher`):
run by the SDK's own request handling in a task kept between calls, without the SDK's per-request layers
that cannot change its answer, and on asyncio dispatched by the readiness callback that read it
(`WireIn._take`); docs/mcp.md, implementation notes.

Works on asyncio and trio (anyio's fd waits; on asyncio stdin stays registered with the loop between
messages, see `_Reader`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import fcntl
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import pydantic_core
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.runner import ServerRunner, aclose_shielded
from mcp.shared.dispatcher import OnRequest, coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.message import MessageMetadata, SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    PROTOCOL_VERSION_META_KEY,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError

from supervisor._mcp_calls import DirectCalls

try:  # the SDK's internals the fast lane uses (`_lane_fits`)
    from mcp.shared.jsonrpc_dispatcher import _InFlight, _JSONRPCDispatchContext
except ImportError:  # another mcp 2.x: every request goes the SDK's way
    _InFlight = _JSONRPCDispatchContext = None  # type: ignore[assignment,misc]

logger = logging.getLogger("corral.mcp")

#: Seconds a message whose first bytes are on the wire may take to be written whole, cancellation or not (a
#: message cut in the middle would garble the stream); past it the client is taken to be stuck and the
#: stream is broken.
WRITE_GRACE_S = 10.0
#: Messages kept from before the client's first request (`WireIn.opening`), as many as the SDK's connection
#: loop keeps (a bare `notifications/initialized` is the one that matters).
OPENING_LEAD = 8


def parse(line: str) -> JSONRPCMessage:
    """The JSON-RPC message `line` holds, as the SDK's `jsonrpc_message_adapter.validate_json(line,
    by_name=False)` gives it: that is a "smart" union of the four message models, which validates the line
    against each of them to choose. A line with no `result` or `error` anywhere in it (nor any `\\u`
    escape, which could spell one) can only be a request or a notification, and one that is a request in
    strict mode is the request the union chooses (an exact match, with more fields set than the
    notification it also is), so it is validated as a request alone, at a quarter of the cost (the usual
    message: a client's call); anything else goes through the union (tests/unit/test_mcp_parse.py compares
    the two on generated messages). Raises ValidationError as the union does."""
    if '"result"' not in line and '"error"' not in line and "\\u" not in line:
        try:
            return _request_validator.validate_json(line, strict=True, by_name=False)  # type: ignore[no-any-return]
        except ValidationError:
            pass
    return jsonrpc_message_adapter.validate_json(line, by_name=False)


_request_validator = JSONRPCRequest.__pydantic_validator__

#: A JSON-RPC message's bytes as the SDK's `model_dump_json` gives them (pydantic-core's serializer, with
#: the models' default settings: a float that is no number is null).
_response_json = functools.partial(pydantic_core.to_json, inf_nan_mode="null")


def _json_object(line: str) -> dict[str, Any] | None:
    """`line` as Python's own JSON parser reads it, when that is an object; else None (also for JSON nested
    deeper than the parser's recursion bound: a 2.5 KB line of 1,200 `[` raised RecursionError, which ended
    the server)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _names_an_id(line: str) -> bool:
    """Whether `line` is a JSON object with an `id` member (of any type)."""
    obj = _json_object(line)
    return obj is not None and "id" in obj


def _request_id(line: str) -> int | str | None:
    """The id of the request `line` spells, when it is a JSON object (as Python's own parser reads it) with
    a `method` and an id JSON-RPC allows (a string or an integer) and no `result` or `error`; else None.
    A line refused by the SDK's parser is answered under that id, so that the client's call ends rather
    than wait forever for an answer that came with id null."""
    obj = _json_object(line)
    if obj is None or "method" not in obj or "result" in obj or "error" in obj:
        return None
    rid = obj.get("id")
    if type(rid) is int or (type(rid) is str and rid.isprintable()):
        return rid
    return None


class WireOut:
    """The write stream (the SDK's `WriteStream[SessionMessage]`): each message serialized as the SDK's stdio
    transport serializes it (`model_dump_json(by_alias=True, exclude_unset=True)` and a newline) and written
    to `fd` (non-blocking) by the sending task, one message at a time.

    `send` raises anyio.ClosedResourceError after `aclose`, anyio.BrokenResourceError once the client closed
    its end (EPIPE) or a message could not be finished within WRITE_GRACE_S. On cancellation before any
    byte of the message is written, nothing is; after, the rest is written first (shielded, within the grace).

    A broken stream stays broken (a message cut in the middle leaves the client a torn line: nothing sent
    after it could be read), and `on_broken` is called once when it breaks, so that the server ends the
    session rather than go on running calls whose results can no longer reach anyone.
    """

    def __init__(self, fd: int, on_broken: Callable[[], object] | None = None) -> None:
        self._fd = fd
        self._lock = anyio.Lock(fast_acquire=True)
        self._closed = False
        self._broken = False
        self._on_broken = on_broken

    def _break(self) -> None:
        """Mark the stream broken, and say so once (`on_broken`)."""
        if not self._broken:
            self._broken = True
            if self._on_broken is not None:
                self._on_broken()

    async def send(self, item: SessionMessage, /) -> None:
        await self._send((item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode())

    async def send_result(self, request_id: int | str, result: dict[str, Any]) -> None:
        """Send the response of request `request_id` carrying `result`: what `send` writes for the SDK's
        `JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)`, serialized by the same serializer
        (pydantic-core's, with the model's settings: `_response_json`) without building the model
        (tests/unit/test_mcp_wire_out.py compares the two). Raises as `send`."""
        await self._send(_response_json({"jsonrpc": "2.0", "id": request_id, "result": result}) + b"\n")

    async def _send(self, data: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        view = memoryview(data)
        if not self._lock.locked() and not self._broken:
            # No message is half out: write this one now, as far as the pipe takes it (a whole reply, as
            # a rule), and take the lock only for a rest that has to wait (no await since the check: the
            # lock is still free then, and nobody can break the stream before this task takes it).
            rest = self._write_now(view)
            if not rest:
                return
            view = view[-rest:]
        async with self._lock:
            if self._broken:
                raise anyio.BrokenResourceError
            await self._write(view, len(data))

    def _write_now(self, view: memoryview) -> int:
        """Write `view` until the pipe is full; the bytes left. Raises anyio.BrokenResourceError on EPIPE."""
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                break
            except OSError as err:  # EPIPE: the client closed its end
                self._break()
                raise anyio.BrokenResourceError from err
        return len(view)

    async def _write(self, view: memoryview, total: int) -> None:
        """Write `view`, the rest of a `total`-byte message (see the class doc for cancellation)."""
        deadline: float | None = None
        while view:
            view = view[len(view) - self._write_now(view) :]
            if not view:
                return
            if len(view) == total:  # nothing of this message is out yet: it may be given up
                await anyio.wait_writable(self._fd)
                continue
            if deadline is None:
                deadline = anyio.current_time() + WRITE_GRACE_S
            with anyio.CancelScope(shield=True, deadline=deadline):
                await anyio.wait_writable(self._fd)
            if anyio.current_time() >= deadline:
                logger.warning(
                    "stdout: the client read nothing for %g s in the middle of a message", WRITE_GRACE_S
                )
                self._break()
                raise anyio.BrokenResourceError

    async def aclose(self) -> None:
        """Refuse further messages (the fd stays open: `stdio_fds` owns it)."""
        self._closed = True

    async def __aenter__(self) -> WireOut:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _Reader:
    """Reads `fd` (non-blocking) as data comes. On asyncio the fd stays registered with the loop from one
    read to the next while a read is pending when data comes, and the loop's readiness callback does the
    read itself: anyio's `wait_readable` registers the fd and removes it again on every wait (two epoll_ctl
    calls, an event object and the selector's KeyErrors per message), and a readiness the loop had already
    queued before the task read the data would wake the next wait for nothing (a task step, a read and its
    EAGAIN). A readiness that finds no read pending unregisters the fd (level-triggered, it would otherwise
    wake the loop over and over), so unread input stays in the pipe; a read while the fd is registered
    waits for the readiness rather than trying the fd first. On trio: `anyio.wait_readable`.
    Cancellation loses nothing: bytes read for a cancelled read are returned by the next one."""

    def __init__(self, fd: int, take: Callable[[bytes], bool] | None = None) -> None:
        self._fd = fd
        #: Offered the bytes the readiness callback read for a pending read; when it answers True it has
        #: dealt with them itself and the read stays pending (`WireIn._take`).
        self._take = take
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asyncio = True  # until the first wait says otherwise
        self._waiter: asyncio.Future[bytes] | None = None
        self._registered = False
        self._pending: bytes | None = None

    async def read(self) -> bytes:
        """The next bytes of `fd` (at most 64 KiB; b"" at its end). Raises OSError (EIO from a terminal
        that went away, ...)."""
        if self._pending is not None:
            data, self._pending = self._pending, None
            return data
        while True:
            # While the fd is registered, data already there makes the loop call `_ready` at its next turn
            # (level-triggered): no read is tried first (its EAGAIN, an exception, is the usual answer).
            if not self._registered:
                try:
                    return os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    pass
            if self._loop is None and self._asyncio:
                try:
                    self._loop = asyncio.get_running_loop()
                except RuntimeError:  # not on asyncio (trio)
                    self._asyncio = False
            if self._loop is None:
                await anyio.wait_readable(self._fd)
                continue
            waiter: asyncio.Future[bytes] = self._loop.create_future()
            self._waiter = waiter
            if not self._registered:
                self._loop.add_reader(self._fd, self._ready)
                self._registered = True
            try:
                return await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._pending = waiter.result()  # read for this call, which was cancelled: kept
                raise
            finally:
                self._waiter = None

    def _ready(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self.close()
            return
        if waiter.done():
            return
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:  # a readiness queued before the last read took the data
            return
        except OSError as err:
            waiter.set_exception(err)
            return
        if self._take is not None and data and self._take(data):
            return
        waiter.set_result(data)

    def close(self) -> None:
        """Unregister the fd (it stays open)."""
        if self._registered and self._loop is not None:
            self._registered = False
            self._loop.remove_reader(self._fd)


class WireIn:
    """The read stream (the SDK's `ReadStream[SessionMessage | Exception]`): the client's messages, one per
    line of `fd` (non-blocking), each parsed as the SDK's stdio transport parses it. A line of more than
    `limit` bytes is dropped as it arrives; it and any line that is no JSON-RPC message are answered on `out`
    (see the module doc) and skipped, so only messages come out.

    `receive` raises anyio.EndOfStream at the end of stdin (EIO from a terminal that went away counts as the
    end) and anyio.ClosedResourceError after `aclose`. On cancellation, unread bytes stay buffered for the
    next `receive`.
    """

    def __init__(self, fd: int, limit: int, out: WireOut) -> None:
        self._fd = fd
        self.limit = limit
        self._out = out
        self._buf = bytearray()
        self._skipping = 0  # bytes of the oversized line being dropped, 0 when none is
        self._eof = False
        self._closed = False
        self._lead: collections.deque[SessionMessage] = collections.deque()
        self._reader = _Reader(fd, self._take)
        #: Set by the connection loop (`_Dispatcher.take_request`): a request that it may dispatch at once,
        #: returning whether it did (see `_take`).
        self.take_request: Callable[[JSONRPCRequest], bool] | None = None
        #: A line `_take` parsed and did not dispatch, with its message (not parsed twice).
        self._parsed: tuple[str, JSONRPCMessage] | None = None

    def _take(self, data: bytes) -> bool:
        """Offered the bytes the loop's readiness callback read while `receive` waits (on asyncio, see
        `_Reader`): when they are one whole line, nothing else is buffered (so every earlier message is
        out), and the line is a request `take_request` dispatches itself, it is dispatched here, in the
        callback, and `receive` keeps waiting; this saves the loop a turn and the read task's wake-up per
        call (the fast lane's requests, `_Dispatcher`). Anything else: False, and the bytes go on to
        `receive` as ever (a line parsed here is not parsed again). Never raises."""
        take = self.take_request
        if (
            take is None
            or self._buf
            or self._skipping
            or self._lead
            or self._closed
            or self._eof
            or data.find(b"\n") != len(data) - 1
            or len(data) > self.limit + 1
        ):
            return False
        line = data.decode("utf-8", errors="replace")
        try:
            message = parse(line)
        except ValidationError:
            return False
        if type(message) is not JSONRPCRequest:
            self._parsed = (line, message)
            return False
        try:
            if take(message):
                return True
        except Exception:  # a bug: the request goes the SDK's way rather than be lost
            logger.exception("the fast lane failed to take a request")
        self._parsed = (line, message)
        return False

    async def opening(self) -> JSONRPCRequest | None:
        """The client's first request (None when stdin ends before one), read ahead without consuming it:
        `receive` returns it again, after the messages that came before it (at most OPENING_LEAD of them
        are kept, as the SDK's connection loop keeps them; later ones are dropped)."""
        while True:
            try:
                item = await self._message()
            except anyio.EndOfStream:
                return None
            if isinstance(item.message, JSONRPCRequest):
                self._lead.append(item)
                return item.message
            if len(self._lead) < OPENING_LEAD:
                self._lead.append(item)
            else:
                logger.debug("dropped a message received before the first request")

    async def receive(self) -> SessionMessage | Exception:
        if self._lead:
            return self._lead.popleft()
        return await self._message()

    async def _message(self) -> SessionMessage:
        while True:
            line = await self._next_line()
            if line is None:
                await self._answer(PARSE_ERROR, f"message over the {self.limit}-byte bound: skipped")
                continue
            parsed, self._parsed = self._parsed, None
            try:
                message = parsed[1] if parsed is not None and parsed[0] == line else parse(line)
            except ValidationError as err:
                rid = _request_id(line)
                if any(e["type"] == "json_invalid" for e in err.errors()):
                    # JSON the SDK's parser refuses but Python's reads (a lone surrogate escape, which
                    # RFC 8259 leaves to the parser) still names its request: answered under its id.
                    await self._answer(PARSE_ERROR, "Parse error: not JSON the server can read", rid)
                else:
                    await self._answer(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message", rid)
                continue
            if type(message) is JSONRPCNotification and '"id"' in line and _names_an_id(line):
                # The union reads a request whose id is no string or integer (1.5, true, null, a list) as
                # a notification, which gets no answer: the client would wait for one forever.
                await self._answer(
                    INVALID_REQUEST, "Invalid Request: a request's id must be a string or an integer"
                )
                continue
            return SessionMessage(message)

    async def _answer(self, code: int, message: str, rid: int | str | None = None) -> None:
        error = JSONRPCError(jsonrpc="2.0", id=rid, error=ErrorData(code=code, message=message))
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._out.send(SessionMessage(error))

    def _line(self) -> str | bool | None:
        """The next complete line in the buffer (decoded as the SDK decodes stdin: UTF-8, bad bytes
        replaced), None for an oversized one, False when no line is complete yet."""
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if self._skipping or len(self._buf) > self.limit:
                    self._skipping += len(self._buf)
                    self._buf.clear()
                return False
            line = bytes(self._buf[: nl + 1])
            del self._buf[: nl + 1]
            if self._skipping or len(line) > self.limit + 1:
                skipped, self._skipping = self._skipping + len(line), 0
                logger.warning("skipped a %d-byte message: over the %d-byte bound", skipped, self.limit)
                return None
            return line.decode("utf-8", errors="replace")

    async def _next_line(self) -> str | None:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            line = self._line()
            if line is not False:
                assert not isinstance(line, bool)
                return line
            if self._eof:
                if self._buf and not self._skipping:  # a last message without its newline
                    rest = bytes(self._buf)
                    self._buf.clear()
                    return rest.decode("utf-8", errors="replace")
                raise anyio.EndOfStream
            try:
                data = await self._reader.read()
            except OSError as err:  # EIO from a terminal that went away: the client is gone
                logger.info("stdin: %s", err)
                data = b""
            if not data:
                self._eof = True
            self._buf += data

    def __aiter__(self) -> WireIn:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop reading (the fd stays open: `stdio_fds` owns it)."""
        self._closed = True
        self._reader.close()

    async def __aenter__(self) -> WireIn:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def serve_connection(server: Server[Any], wire: WireIn, out: WireOut) -> None:
    """Serve one client over `wire` and `out` with the SDK's connection loop, until the client leaves.

    The SDK's `Server.run` decides the connection's protocol era from the client's first request and then
    passes every message through a memory stream and a relay task, so that it can replay that request. Here
    `wire` reads the first request ahead itself (`WireIn.opening`, replaying it from its own buffer): a
    handshake-era connection (the first request is `initialize`, or carries no 2026-07-28 envelope) is
    served by the SDK's handshake loop (what its `serve_loop` builds: a `JSONRPCDispatcher`, here
    `_Dispatcher` with its fast lane, a `Connection` and a `ServerRunner`) straight from `wire`, with the
    one refusal `Server.run` adds (`_refuse_envelopes`); any other is served by `Server.run` itself. `out`
    is closed at the end either way. On cancellation, the loop's calls are cancelled and the cancellation
    propagates."""
    opening = await wire.opening()
    if opening is not None and (opening.method == "initialize" or not _enveloped(opening.params)):
        server.middleware.insert(0, _refuse_envelopes)
        try:
            async with server.lifespan(server) as state:
                # As `serve_loop` and `serve_connection` of mcp.server.runner, with corral's dispatcher.
                dispatcher = _Dispatcher(wire, out, inline_methods=frozenset({"initialize"}))
                connection = Connection.for_loop(dispatcher)
                runner = ServerRunner(
                    server, connection, state, init_options=server.create_initialization_options()
                )
                dispatcher.lane = _Lane.for_server(runner) if _lane_fits(dispatcher) else None
                if dispatcher.lane is not None:
                    wire.take_request = dispatcher.take_request
                try:
                    await dispatcher.run(runner.on_request, runner.on_notify)
                finally:
                    await aclose_shielded(connection)
        finally:
            server.middleware.remove(_refuse_envelopes)
            await out.aclose()
    else:
        await server.run(wire, out, server.create_initialization_options())


def _lane_fits(dispatcher: _Dispatcher) -> bool:
    """Whether the SDK's dispatcher has the internals the fast lane uses (those of the `mcp` 2.x it is
    tested with); with another, every request goes the SDK's way."""
    return (
        all(
            hasattr(dispatcher, name)
            for name in ("_handle_request", "_in_flight", "_running", "_closed", "_tg")
        )
        and hasattr(JSONRPCDispatcher, "_dispatch_request")
        and hasattr(ServerRunner, "_make_context")
        and {"transport", "_dispatcher", "_request_id", "message_metadata"}
        <= set(getattr(_JSONRPCDispatchContext, "__dataclass_fields__", ()))
        and {"scope", "dctx"} <= set(getattr(_InFlight, "__dataclass_fields__", ()))
    )


#: The transport context the SDK's dispatcher gives a message that comes with no metadata (all of stdio's).
_STDIO_TRANSPORT = TransportContext(kind="jsonrpc", can_send_request=True)


class _Lane:
    """The fast lane of a handshake-era stdio connection (session 12): a `tools/call` that the short path
    (`_mcp_calls.DirectCalls.short_path`) would run is run without the SDK's per-request layers around
    that middleware, which cannot change its answer: the request context and the middleware chain (in
    which the short path would come first: `_refuse_envelopes`, which acts on an envelope such a call
    does not carry, is all that is ahead of it), the `_meta` look-up (it has none). It is taken only while
    the chain holds nothing else (no tracing: the SDK's OpenTelemetry middleware keeps every call on its
    way), and the request context is made only when a tool reads it."""

    __slots__ = ("_calls", "_runner")

    def __init__(self, calls: DirectCalls, runner: ServerRunner[Any]) -> None:
        self._calls = calls
        self._runner = runner

    @classmethod
    def for_server(cls, runner: ServerRunner[Any]) -> _Lane | None:
        """The lane for the connection `runner` serves, or None when its server's middleware chain is not
        `_refuse_envelopes`, the short path, and the SDK's `RequestStateBoundary` (which acts on a
        `requestState` such a call does not carry; the short path comes ahead of it) in that order."""
        from mcp.server.request_state import RequestStateBoundary

        chain = runner.server.middleware
        if len(chain) < 2 or chain[0] is not _refuse_envelopes:
            return None
        calls = getattr(chain[1], "__self__", None)
        if not isinstance(calls, DirectCalls) or chain[1] != calls.short_path:
            return None
        if not all(isinstance(m, RequestStateBoundary) for m in chain[2:]):
            return None
        return cls(calls, runner)

    def claim(self, req: JSONRPCRequest) -> OnRequest | None:
        """The `on_request` that runs `req` in the lane (the dispatcher's signature), or None when the SDK's
        way must take it."""
        if req.method != "tools/call":
            return None
        runner = self._runner
        connection = runner.connection
        version = connection.protocol_version
        plain = self._calls.plain_call(req.params, version, connection.client_params is not None)
        if plain is None:
            return None
        tool, name, arguments = plain
        calls = self._calls

        async def on_request(dctx: Any, method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
            def context() -> ServerRequestContext[Any, Any]:
                return runner._make_context(dctx, method, params, None, version)

            return await calls.lane_call(context, tool, name, arguments, version)

        return on_request


class _Dispatcher(JSONRPCDispatcher[TransportContext]):
    """The SDK's JSON-RPC dispatcher, with two changes for stdio:

    - a request `lane` claims (`_Lane.claim`) is run by the SDK's own `_handle_request` (its cancel scope,
      its `notifications/cancelled` entry, its error mapping and shutdown answer, unchanged) with the
      lane's `on_request`, in a task of `_Workers` (kept between calls) instead of a new task of the
      connection's task group for every request (anyio's `start_soon`: ~20 us of CPU);
    - a result is written by `WireOut.send_result` (the same bytes, without the response model).
    """

    lane: _Lane | None = None
    _workers: _Workers | None = None

    async def _dispatch_request(
        self,
        req: JSONRPCRequest,
        metadata: MessageMetadata,
        on_request: OnRequest,
        sender_ctx: contextvars.Context | None,
    ) -> None:
        if metadata is None and sender_ctx is None and self.take_request(req):
            return
        await super()._dispatch_request(req, metadata, on_request, sender_ctx)

    def take_request(self, req: JSONRPCRequest) -> bool:
        """Dispatch `req` now when the lane claims it (a request the transport read while the receive loop
        waited for it, with every earlier message dispatched: `WireIn._take`); whether it did."""
        lane = self.lane
        if lane is None or not self._running or self._closed:
            return False
        call = lane.claim(req)
        if call is None:
            return False
        self._start(req, call)
        return True

    def _start(self, req: JSONRPCRequest, call: OnRequest) -> None:
        """Run `req` with the lane's `call` in a worker task."""
        # As the SDK's `_dispatch_request` for a request with no `_meta` (so no progress token) and no
        # metadata (so its default transport context).
        dctx = _JSONRPCDispatchContext(
            transport=_STDIO_TRANSPORT, _dispatcher=self, _request_id=req.id, message_metadata=None
        )
        scope = anyio.CancelScope()
        self._in_flight[coerce_request_id(req.id)] = _InFlight(scope=scope, dctx=dctx)
        workers = self._workers
        if workers is None:
            assert self._tg is not None
            workers = self._workers = _Workers(self._tg)
        workers.submit(partial(self._handle_request, req, dctx, scope, call))

    async def _write_result(self, request_id: RequestId, result: dict[str, Any]) -> None:
        out = self._write_stream
        assert isinstance(out, WireOut)  # serve_connection builds it over one
        try:
            await out.send_result(request_id, result)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.debug("dropped result for %r: write stream closed", request_id)


#: Idle tasks `_Workers` keeps for the next calls.
IDLE_WORKERS = 32


class _Workers:
    """Tasks of the task group `tg` that run the jobs given to `submit`, each job in the task that
    takes it, as many at once as are given (a job given while every task is busy gets a new task). A task
    whose job is done waits for the next (at most IDLE_WORKERS wait; others end, as does one whose job set a
    context variable, so that every job starts with the context a new task would have), so a call costs a
    wake-up of a waiting task instead of a new task. On asyncio a waiting task waits on a future of its own;
    elsewhere (trio) every job gets a new task. A job given to a task cancelled meanwhile (the task group
    is being cancelled) never runs, as a job of a task started in a cancelled group never runs."""

    __slots__ = ("_idle", "_loop", "_tg")

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self._idle: list[asyncio.Future[Callable[[], Awaitable[object]]]] = []
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio
            self._loop = None

    def submit(self, job: Callable[[], Awaitable[object]]) -> None:
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():  # else its task was cancelled
                waiter.set_result(job)
                return
        self._tg.start_soon(self._work, job)

    async def _work(self, job: Callable[[], Awaitable[object]]) -> None:
        loop = self._loop
        start = contextvars.copy_context()  # what a new task for the job would have seen
        while True:
            await job()
            if loop is None or len(self._idle) >= IDLE_WORKERS or contextvars.copy_context() != start:
                # (A job that set a context variable leaves its task: the next job gets a fresh context,
                # as it would in a new task.)
                return
            waiter: asyncio.Future[Callable[[], Awaitable[object]]] = loop.create_future()
            self._idle.append(waiter)
            job = await waiter


def _enveloped(params: Mapping[str, Any] | None) -> bool:
    """Whether a request carries the 2026-07-28 per-request envelope (its `_meta` names a protocol
    version), as the SDK's connection loop tells the eras apart."""
    meta = params.get("_meta") if params else None
    return isinstance(meta, Mapping) and PROTOCOL_VERSION_META_KEY in meta


async def _refuse_envelopes(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """On a handshake-era connection, refuse a request that carries the 2026-07-28 envelope (as the SDK's
    `Server.run` refuses it there: INVALID_REQUEST)."""
    if ctx.request_id is not None and ctx.method != "initialize" and _enveloped(ctx.params):
        raise MCPError(
            code=INVALID_REQUEST,
            message="this connection serves the handshake protocol era; "
            "requests carrying the 2026-07-28 envelope are not accepted on it",
        )
    return await call_next(ctx)


@contextlib.contextmanager
def stdio_fds() -> Iterator[tuple[int, int]]:
    """The wire's fds for the server's life: stdin (fd 0) and a private duplicate of fd 1, both non-blocking;
    meanwhile fd 1 points at stderr, so nothing printed by mistake reaches the wire. Restored on exit (the
    blocking modes too: a terminal's are shared with the shell)."""
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(2, 1)
    was_blocking = os.get_blocking(0)
    try:
        os.set_blocking(0, False)
        os.set_blocking(wire_out, False)
        yield 0, wire_out
    finally:
        with contextlib.suppress(OSError):
            os.set_blocking(0, was_blocking)
        os.dup2(wire_out, 1)
        os.close(wire_out)
