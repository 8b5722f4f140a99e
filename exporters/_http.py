"""A tiny HTTP/1.1 server on anyio, enough for a scrape endpoint: GET and HEAD, keep-alive, bounded.

Why not prometheus_client's own server: it runs in threads of its own (`start_http_server`) or needs a WSGI
server; corral's exporters live inside the supervisor's event loop, start and stop with an `async with`, and
must stay cheap when idle. Page rendering (the part that may take a while: collecting and formatting every
series) runs in a worker thread under the server's own CapacityLimiter, so a burst of scrapes can neither
block the event loop nor take the worker threads the supervisor itself needs (anyio's default limiter).

Bounds: request heads of at most `header_limit` bytes, request bodies of at most 64 KiB (read and dropped),
`max_connections` connections at once (more are answered 503 and closed), an idle keep-alive connection is
closed after `idle_timeout` seconds and a response that cannot be written within it is abandoned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

import anyio
from anyio.abc import ByteStream, Listener
from anyio.streams.buffered import BufferedByteReceiveStream

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


class HttpServer:
    """Serves `routes` (exact paths; the query string is ignored) on listeners given to `serve`."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        render_threads: int = 1,
        max_connections: int = 64,
        idle_timeout: float = 30.0,
        header_limit: int = 16 * 1024,
    ) -> None:
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.header_limit = header_limit
        self._limiter = anyio.CapacityLimiter(render_threads)
        self._active = 0

    async def serve(self, listener: Listener[ByteStream]) -> None:
        """Accept connections until cancelled. Errors on one connection end that connection only."""
        async with anyio.create_task_group() as tg:
            await listener.serve(self._connection, tg)

    async def _connection(self, stream: ByteStream) -> None:
        try:
            async with stream:
                if self._active >= self.max_connections:
                    with anyio.move_on_after(1):
                        await stream.send(_head(503, (), 0, keep_alive=False))
                    return
                self._active += 1
                try:
                    await self._session(stream)
                finally:
                    self._active -= 1
        except Exception as err:  # a client that vanishes mid-request must never take the server down
            log.debug("metrics connection ended: %r", err)

    async def _session(self, stream: ByteStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        while True:
            head: bytes | None = None
            with anyio.move_on_after(self.idle_timeout):
                try:
                    head = await buffered.receive_until(b"\r\n\r\n", self.header_limit)
                except (anyio.IncompleteRead, anyio.EndOfStream):
                    return  # the client closed the connection between requests
                except anyio.DelimiterNotFound:
                    await self._send(stream, Response(431, b"request head too large\n"), False, True)
                    return
            if head is None:
                return  # idle keep-alive connection
            try:
                keep_alive = await self._request(stream, buffered, head)
            except _Close:
                return
            if not keep_alive:
                return

    async def _request(self, stream: ByteStream, buffered: BufferedByteReceiveStream, head: bytes) -> bool:
        """Answer one request; return whether the connection stays open."""
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
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            await self._send(stream, Response(413, b"request body too large\n"), False, True)
            raise _Close
        if length:
            await buffered.receive_exactly(length)  # dropped: no route takes a body
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
        await self._send(stream, response, keep_alive, is_head)
        return keep_alive

    async def _send(self, stream: ByteStream, response: Response, keep_alive: bool, head_only: bool) -> None:
        data = _head(response.status, response.headers, len(response.body), keep_alive=keep_alive)
        if not head_only:
            data += response.body
        with anyio.fail_after(self.idle_timeout):
            await stream.send(data)


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
