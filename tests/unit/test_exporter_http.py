"""serve_metrics: the HTTP endpoint inside the event loop, on a fake supervisor (loopback, port 0)."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import socket
import time
from collections.abc import Iterable

import anyio
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporters import MetricsServer, serve_metrics
from exporters._http import HttpServer, Response
from tests.unit.test_exporter_fakes import FakeChild, FakeSupervisor, settle, stats

OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def get(
    server: MetricsServer, path: str = "/metrics", method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


Reply = tuple[int, dict[str, str], bytes]


async def aget(server: MetricsServer, path: str = "/metrics", **kw: object) -> Reply:
    return await anyio.to_thread.run_sync(lambda: get(server, path, **kw))  # type: ignore[arg-type]


async def raw(server: MetricsServer, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as s:
        await s.send(data)
        chunks = []
        with anyio.fail_after(5):
            while True:
                try:
                    chunks.append(await s.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return b"".join(chunks)


async def test_get_metrics_in_the_text_format() -> None:
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0) as server:  # type: ignore[arg-type]
        sup.start(FakeChild("read-only", "grep", last_stats=stats(mem=4096)))
        await settle()
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, headers, body = await aget(server)
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        mem = [s for s in families["corral_child_memory_bytes"].samples if s.labels["name"] == "grep"]
        assert mem[0].value == 4096
        started = families["corral_children_started"].samples
        assert {s.labels["profile"]: s.value for s in started}["read-only"] == 1
        # The supervisor's own process metrics come along in the default (fresh) registry.
        assert "process_cpu_seconds" in families


async def test_openmetrics_and_gzip_when_asked() -> None:
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0) as server:  # type: ignore[arg-type]
        status, headers, body = await aget(server, headers={"Accept": OPENMETRICS, "Accept-Encoding": "gzip"})
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert headers["content-encoding"] == "gzip"
        text = gzip.decompress(body).decode()
        assert text.endswith("# EOF\n")
        assert "corral_isolation_layer_info{" in text


async def test_keep_alive_head_and_errors() -> None:
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0) as server:  # type: ignore[arg-type]

        def two_on_one_connection() -> tuple[int, int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/metrics?x=1")
            r1 = conn.getresponse()
            r1.read()
            sock = conn.sock
            conn.request("HEAD", "/metrics")
            r2 = conn.getresponse()
            body = r2.read()
            assert conn.sock is sock  # the same connection
            conn.close()
            return r1.status, r2.status, body

        s1, s2, head_body = await anyio.to_thread.run_sync(two_on_one_connection)
        assert (s1, s2, head_body) == (200, 200, b"")
        assert (await aget(server, "/nope"))[0] == 404
        assert (await aget(server, "/"))[0] == 200
        status, headers, _ = await aget(server, method="POST")
        assert (status, headers["allow"]) == (405, "GET, HEAD")
        assert (await raw(server, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        huge_head = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000
        assert (await raw(server, huge_head)).startswith(b"HTTP/1.1 431 ")
        big = b"GET /metrics HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"
        assert (await raw(server, big)).startswith(b"HTTP/1.1 413 ")
        http10 = await raw(server, b"GET /metrics HTTP/1.0\r\n\r\n")  # closed after the response
        assert http10.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" in http10
        # The server survived all of that.
        assert (await aget(server))[0] == 200


class SlowCollector(Collector):
    """Blocks its (worker) thread for a while, as a huge page or a slow disk would."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def collect(self) -> Iterable[Metric]:
        time.sleep(self.delay)
        g = GaugeMetricFamily("slow_thing", "slow")
        g.add_metric([], 1)
        return [g]


async def test_a_slow_scrape_never_blocks_the_loop_nor_takes_the_default_worker_threads() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    reg.register(SlowCollector(0.5))
    async with serve_metrics(sup, port=0, registry=reg) as server:  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            for _ in range(3):  # three scrapes at once: rendered one at a time, in the server's own thread
                tg.start_soon(aget, server)
            worst = 0.0
            borrowed = 0.0
            limiter = anyio.to_thread.current_default_thread_limiter()
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                t = time.monotonic()
                await anyio.sleep(0.01)
                worst = max(worst, time.monotonic() - t)
                # Only the three client threads of this test (http.client) hold default tokens.
                borrowed = max(borrowed, limiter.borrowed_tokens)
        assert worst < 0.25, f"the event loop stalled for {worst:.3f}s"
        assert borrowed <= 3


async def test_given_registry_keeps_its_collectors_and_gets_its_own_back() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with serve_metrics(sup, port=0, registry=reg) as server:  # type: ignore[arg-type]
        assert server.registry is reg
        assert any(f.name == "process_cpu_seconds" for f in reg.collect())
    assert not list(reg.collect())  # everything serve_metrics added is removed again


async def test_the_global_registry_already_has_process_metrics() -> None:
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0, registry=REGISTRY) as server:  # type: ignore[arg-type]
        _, _, body = await aget(server)
        assert body.count(b"# TYPE process_cpu_seconds_total counter") == 1
        assert b"corral_children{" in body
    assert not any(f.name.startswith("corral_") for f in REGISTRY.collect())


async def test_port_in_use_is_an_oserror_and_the_port_is_freed_on_exit() -> None:
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0) as server:  # type: ignore[arg-type]
        with pytest.raises(OSError, match="in use"):
            async with serve_metrics(FakeSupervisor(), port=server.port):  # type: ignore[arg-type]
                pass
        port = server.port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_the_bodys_exception_propagates_unwrapped() -> None:
    sup = FakeSupervisor()
    with pytest.raises(LookupError):
        async with serve_metrics(sup, port=0):  # type: ignore[arg-type]
            raise LookupError
    assert not sup._subscribers


async def test_a_failing_route_answers_500_and_the_server_lives_on() -> None:
    def boom(_headers: object) -> Response:
        raise RuntimeError("render failed")

    server_obj = HttpServer({"/boom": boom, "/ok": lambda _h: Response(200, b"fine")})
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server_obj.serve, listener)

        def fetch(path: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()

        assert (await anyio.to_thread.run_sync(fetch, "/boom"))[0] == 500
        assert await anyio.to_thread.run_sync(fetch, "/ok") == (200, b"fine")
        tg.cancel_scope.cancel()
    await listener.aclose()


async def test_idle_keep_alive_connections_are_closed() -> None:
    server_obj = HttpServer({"/": lambda _h: Response(200, b"x")}, idle_timeout=0.2)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server_obj.serve, listener)
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            with anyio.fail_after(3):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await s.receive()  # closed by the server without a word
        tg.cancel_scope.cancel()
    await listener.aclose()


async def _hold(port: int, data: bytes, stop: anyio.Event, closed: list[float]) -> None:
    """A slow client: connect, send `data` (a partial request), never send the rest; reconnect when the
    server closes the connection, until `stop`. Records when each of its connections was closed."""
    while not stop.is_set():
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                if data:
                    await s.send(data)
                with anyio.move_on_after(60):
                    while not stop.is_set():
                        try:
                            await s.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
                closed.append(time.monotonic())
        except OSError:
            await anyio.sleep(0.01)


_SLOW = (
    b"",  # connected, nothing sent
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: a",  # a head that never ends
    b"GET /metrics HTTP/1.1\r\nContent-Length: 65536\r\n\r\n" + b"x" * 100,  # a body that never comes
    b"GET /metrics HTTP/1.1\r\nContent-Length: 65536\r\n\r\n",
)


async def test_slow_clients_cannot_hold_the_endpoint_closed() -> None:
    # 100 loopback connections (more than the 64 slots) each sending a partial head or a partial body and
    # holding it, reconnecting whenever the server closes them: every scrape is still answered, quickly.
    sup = FakeSupervisor()
    async with serve_metrics(sup, port=0) as server:  # type: ignore[arg-type]
        stop = anyio.Event()
        closed: list[float] = []
        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(_hold, server.port, _SLOW[i % len(_SLOW)], stop, closed)
            await anyio.sleep(1.0)  # let them take every slot
            worst = 0.0
            statuses = []
            for _ in range(10):
                t = time.monotonic()
                with anyio.fail_after(10):
                    status, _, body = await aget(server)
                worst = max(worst, time.monotonic() - t)
                statuses.append(status)
                assert b"corral_children" in body or status != 200
                await anyio.sleep(0.2)
            stop.set()
            tg.cancel_scope.cancel()
        assert statuses == [200] * 10
        assert closed  # the slow clients were cut off to make room, not left to hold their slots
        assert worst < 2.0, f"a scrape took {worst:.2f}s under slow clients"


async def test_every_read_has_a_deadline() -> None:
    # Without competition for slots, a partial head or a partial body is still cut off on time (408),
    # not left to the 30 s idle timeout.
    server_obj = HttpServer({"/": lambda _h: Response(200, b"x")}, request_timeout=0.5)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server_obj.serve, listener)
        for data in _SLOW[1:]:
            t = time.monotonic()
            reply = await raw_from(port, data)
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert time.monotonic() - t < 2.5
            # A client trickling its head a byte at a time meets the same deadline.
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            t = time.monotonic()
            with anyio.fail_after(5):
                try:
                    for b in b"GET / HTTP/1.1\r\nX: " + b"a" * 1000:
                        await s.send(bytes([b]))
                        await anyio.sleep(0.05)
                except (anyio.BrokenResourceError, OSError):
                    pass
            assert time.monotonic() - t < 2.5
        assert not server_obj._slots  # every slot freed
        tg.cancel_scope.cancel()
    await listener.aclose()


async def raw_from(port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(data)
        chunks = []
        with anyio.fail_after(5):
            while True:
                try:
                    chunks.append(await s.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return b"".join(chunks)


async def test_clients_that_never_read_their_responses_cannot_hold_the_slots() -> None:
    # Each pipelines requests for a large page and never reads: the server's writes block. With every slot
    # stuck writing, a newcomer still gets served (the longest-stalled writer is evicted), not 503.
    big = Response(200, b"x" * (1 << 20))
    routes = {"/big": lambda _h: big, "/": lambda _h: Response(200, b"fine")}
    server_obj = HttpServer(routes, max_connections=8)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    flood = b"GET /big HTTP/1.1\r\n\r\n" * 64
    async with anyio.create_task_group() as tg:
        tg.start_soon(server_obj.serve, listener)
        stop = anyio.Event()
        closed: list[float] = []

        async def never_read() -> None:
            while not stop.is_set():  # reconnect when evicted
                with contextlib.suppress(OSError, anyio.BrokenResourceError):
                    async with await anyio.connect_tcp("127.0.0.1", port) as s:
                        await s.send(flood)
                        await stop.wait()
                closed.append(time.monotonic())

        for _ in range(12):
            tg.start_soon(never_read)
        await anyio.sleep(1.5)  # every slot writing into a full socket buffer
        for _ in range(5):
            t = time.monotonic()
            with anyio.fail_after(10):
                reply = await raw_from(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
            assert time.monotonic() - t < 2.0
        stop.set()
        tg.cancel_scope.cancel()
    await listener.aclose()
