"""A tiny HTTP/1.1 server on anyio, enough for a scrape endpoint: GET and HEAD, keep-alive, bounded.

Why not prometheus_client's own server: it runs in threads of its own (`start_http_server`) or needs a WSGI
server; corral's exporters live inside the supervisor's event loop, start and stop with an `async with`, and
must stay cheap when idle. Page rendering (the part that may take a while: collecting and formatting every
series) runs in a worker thread under the server's own CapacityLimiter, so a burst of scrapes can neither
block the event loop nor take the worker threads the supervisor itself needs (anyio's default limiter).

Bounds: request heads of at most `header_limit` bytes, request bodies of at most 64 KiB (read and dropped),
`max_connections` connections at once, an idle keep-alive connection is closed after `idle_timeout` seconds
and a response that cannot be written within it is abandoned. Every read is under a deadline: once the first
byte of a request is in, its whole head and body must arrive within `request_timeout` seconds (else 408 and
close). So that slow clients cannot hold every slot (a client that announces a body and never sends it, or
trickles its head, or one that never reads its responses), a connection arriving when all slots are taken
closes the one that has waited longest on its client (for request bytes, idle or mid-request, or to write
a response) and takes its slot; only when every slot is rendering a response is the newcomer answered 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import anyio
from anyio.abc import ByteStream, Listener

log = logging.getLogger("corral.exporters")

_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """What a route returns: status, body and extra headers (Content-Length and Connection are added)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


#: A route: request headers (lower-cased names) -> Response. Called in a worker thread, never on the loop.
Handler = Callable[[Mapping[str, str]], Response]


class _Close(Exception):
    """Ends a connection after the error response already sent."""


class _Slot:
    """One admitted connection: its cancel scope (to close it when evicted) and since when it has been
    waiting on its client, to read a request or to write a response (None while it renders one: such a
    slot is not evicted)."""

    __slots__ = ("scope", "waiting_since")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.waiting_since: float | None = anyio.current_time()


class HttpServer:
    """Serves `routes` (exact paths; the query string is ignored) on listeners given to `serve`."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        render_threads: int = 1,
        max_connections: int = 64,
        idle_timeout: float = 30.0,
        request_timeout: float = 10.0,
        header_limit: int = 16 * 1024,
    ) -> None:
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.header_limit = header_limit
        self._limiter = anyio.CapacityLimiter(render_threads)
        self._slots: dict[_Slot, None] = {}  # admitted connections, oldest first

    async def serve(self, listener: Listener[ByteStream]) -> None:
        """Accept connections until cancelled. Errors on one connection end that connection only."""
        async with anyio.create_task_group() as tg:
            await listener.serve(self._connection, tg)

    async def _connection(self, stream: ByteStream) -> None:
        try:
            async with stream:
                slot = self._admit()
                if slot is None:
                    with anyio.move_on_after(1):
                        await stream.send(_head(503, (), 0, keep_alive=False))
                    return
                try:
                    with slot.scope:
                        await self._session(stream, slot)
                finally:
                    self._slots.pop(slot, None)
        except Exception as err:  # a client that vanishes mid-request must never take the server down
            log.debug("metrics connection ended: %r", err)

    def _admit(self) -> _Slot | None:
        """A slot for a new connection, or None when every slot is busy rendering. At capacity, the
        connection that has waited longest on its client is closed (its scope cancelled) and its slot
        taken: waiting is what a slow client does, and the newcomer is as likely to be a scraper."""
        if len(self._slots) >= self.max_connections:
            victim: _Slot | None = None
            longest = float("inf")
            for slot in self._slots:  # the longest wait is not always the oldest connection's
                since = slot.waiting_since
                if since is not None and since < longest:
                    victim, longest = slot, since
            if victim is None:
                return None
            victim.scope.cancel()
            del self._slots[victim]
        slot = _Slot()
        self._slots[slot] = None
        return slot

    async def _session(self, stream: ByteStream, slot: _Slot) -> None:
        buf = bytearray()
        while True:
            slot.waiting_since = anyio.current_time()
            if not buf:  # a keep-alive connection between requests: idle_timeout for the first byte
                with anyio.move_on_after(self.idle_timeout):
                    try:
                        buf += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return  # the client closed the connection between requests
                if not buf:
                    return  # idle keep-alive connection
            request: tuple[bytes, int] | None = None
            with anyio.move_on_after(self.request_timeout):
                request = await self._read_request(stream, buf)
            if request is None:
                with anyio.move_on_after(1):
                    await stream.send(_head(408, (), 0, keep_alive=False))
                return
            head, consumed = request
            del buf[:consumed]
            slot.waiting_since = None
            try:
                keep_alive = await self._answer(stream, head, slot)
            except _Close:
                return
            if not keep_alive:
                return

    async def _read_request(self, stream: ByteStream, buf: bytearray) -> tuple[bytes, int]:
        """Read into `buf` until it holds one whole request (head and body); return the head and the
        request's length in `buf`. Raises _Close (after an error response) for a head over the limit, a
        body that is chunked or too large, or the client's EOF mid-request. The caller bounds the time."""
        while True:
            end = buf.find(b"\r\n\r\n", 0, self.header_limit + 4)
            if end >= 0:
                break
            if len(buf) >= self.header_limit + 4:
                await self._send(stream, Response(431, b"request head too large\n"), False, True)
                raise _Close
            buf += await self._receive(stream)
        head = bytes(buf[:end])
        length = _body_length(head)
        if length is None:
            return head, end + 4  # _answer rejects it
        while len(buf) < end + 4 + length:  # the body is read and dropped: no route takes one
            buf += await self._receive(stream)
        return head, end + 4 + length

    @staticmethod
    async def _receive(stream: ByteStream) -> bytes:
        try:
            return await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise _Close from None

    async def _answer(self, stream: ByteStream, head: bytes, slot: _Slot | None = None) -> bool:
        """Answer one request (its body already read and dropped); return whether the connection stays
        open. Raises _Close after an error response that ends the connection."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(stream, Response(400, b"bad request line\n"), False, True)
            raise _Close
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                await self._send(stream, Response(400, b"bad header line\n"), False, True)
                raise _Close
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if "transfer-encoding" in headers:
            await self._send(
                stream, Response(501, b"chunked request bodies are not supported\n"), False, True
            )
            raise _Close
        if _body_length(head) is None:
            await self._send(stream, Response(413, b"request body too large\n"), False, True)
            raise _Close
        is_head = method == "HEAD"
        handler = self.routes.get(target.split("?", 1)[0])
        if method not in ("GET", "HEAD"):
            response = Response(405, b"only GET and HEAD\n", (("Allow", "GET, HEAD"),))
        elif handler is None:
            response = Response(404, b"not found; metrics are at /metrics\n")
        else:
            try:
                response = await anyio.to_thread.run_sync(handler, headers, limiter=self._limiter)
            except Exception:
                log.exception("rendering %s failed", target)
                response = Response(500, b"internal error while rendering\n")
        await self._send(stream, response, keep_alive, is_head, slot)
        return keep_alive

    async def _send(
        self,
        stream: ByteStream,
        response: Response,
        keep_alive: bool,
        head_only: bool,
        slot: _Slot | None = None,
    ) -> None:
        data = _head(response.status, response.headers, len(response.body), keep_alive=keep_alive)
        if not head_only:
            data += response.body
        if slot is not None:
            # Writing waits on the client as reading does: a client that never reads its responses (and
            # pipelines more requests) is as evictable as one that never finishes a request.
            slot.waiting_since = anyio.current_time()
        with anyio.fail_after(self.idle_timeout):
            await stream.send(data)


def _body_length(head: bytes) -> int | None:
    """The Content-Length of a request head (0 without one), or None when it is not a number of at most
    _MAX_BODY. A malformed head gets 0 here; _answer rejects it."""
    start = head.lower().find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    value = head[start + 17 :].split(b"\r\n", 1)[0].strip()
    if not value.isdigit() or len(value) > 9 or int(value) > _MAX_BODY:
        return None
    return int(value)


def _head(status: int, headers: tuple[tuple[str, str], ...], length: int, *, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() == "content-type" for k, _ in headers):
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append(f"Content-Length: {length}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
