"""corral's network proxy (supervisor/_proxy.py) on real loopback sockets: the proxy serves a listener the
test made, a test HTTP server and an echo server stand for the outside, and a static resolver sends test
names to them (or to private addresses). Every refusal is checked from the target's side too: the server
must not have seen a connection. (The same proxy in a real sandbox: tests/kernel/test_proxy_sandbox.py.)"""

from __future__ import annotations

import ipaddress
import resource
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest

from policies import NetworkPolicy
from policies._network import canonical_address, normalise_host
from supervisor._proxy import ChildProxy, ProxyConfig, host_interfaces, special, static_resolver

pytestmark = pytest.mark.timeout(120)


@dataclass
class Server:
    """A loopback server the test started: how many connections it accepted, and what it read."""

    port: int
    accepted: int = 0
    heads: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def http_server(body: bytes = b"hello from the test server\n") -> AsyncIterator[Server]:
    """An HTTP/1.1 server on 127.0.0.1 answering every request with `body`, then closing."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = Server(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def handle(stream: anyio.abc.SocketStream) -> None:
        server.accepted += 1
        async with stream:
            data = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
            server.heads.append(data)
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield server
        tg.cancel_scope.cancel()


@asynccontextmanager
async def echo_server() -> AsyncIterator[Server]:
    """A TCP server on 127.0.0.1 that sends back what it reads (a CONNECT target)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server = Server(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def handle(stream: anyio.abc.SocketStream) -> None:
        server.accepted += 1
        async with stream:
            with contextlib_suppress():
                async for chunk in stream:
                    await stream.send(chunk)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield server
        tg.cancel_scope.cancel()


def contextlib_suppress() -> object:
    import contextlib

    return contextlib.suppress(anyio.BrokenResourceError, anyio.EndOfStream, OSError)


@asynccontextmanager
async def proxy(
    allow: tuple[str, ...],
    deny: tuple[str, ...] = (),
    names: dict[str, list[str]] | None = None,
    **limits: float,
) -> AsyncIterator[tuple[ChildProxy, int]]:
    """A ChildProxy for this allowlist serving a loopback listener; yields it and its port."""
    resolver = static_resolver(names or {})
    config = ProxyConfig(resolver=resolver, **limits)  # type: ignore[arg-type]
    child = ChildProxy(NetworkPolicy(mode="proxy", allow=allow, deny=deny), config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(child.serve, sock)
        yield child, port
        tg.cancel_scope.cancel()


async def ask(port: int, request: bytes, then: bytes = b"") -> tuple[int, bytes]:
    """Send `request` to the proxy on `port` and read to EOF: (status, the whole response)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(20):
            if then:
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                await stream.send(then)
            try:
                async for chunk in stream:
                    data += chunk
                    if then and data.endswith(then):
                        break
            except (anyio.BrokenResourceError, OSError):
                pass
    return int(data.split(b" ", 2)[1]), data


def connect(target: str, host: str | None = None) -> bytes:
    head = f"CONNECT {target} HTTP/1.1\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    return (head + "\r\n").encode()


def get(url: str, host: str | None = None) -> bytes:
    head = f"GET {url} HTTP/1.1\r\nUser-Agent: test\r\nProxy-Connection: keep-alive\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    return (head + "\r\n").encode()


async def test_plain_http_allowed_and_forwarded_in_origin_form() -> None:
    async with (
        http_server() as srv,
        proxy((f"allowed.test:{srv.port}", "127.0.0.1"), names={"allowed.test": ["127.0.0.1"]}) as (
            child,
            port,
        ),
    ):
        status, data = await ask(
            port, get(f"http://allowed.test:{srv.port}/a/b?c=1", f"allowed.test:{srv.port}")
        )
    assert status == 200
    assert data.endswith(b"hello from the test server\n")
    assert srv.accepted == 1
    head = srv.heads[0]
    assert head.startswith(b"GET /a/b?c=1 HTTP/1.1\r\n")
    assert b"Connection: close" in head
    assert b"Proxy-Connection" not in head
    assert child.stats.allowed == 1
    assert child.stats.denied == 0
    assert child.stats.bytes_up == len(head)
    assert child.stats.bytes_down == len(data)


async def test_connect_tunnel_relays_both_ways() -> None:
    async with (
        echo_server() as srv,
        proxy((f"allowed.test:{srv.port}", "127.0.0.1"), names={"allowed.test": ["127.0.0.1"]}) as (
            child,
            port,
        ),
    ):
        status, data = await ask(port, connect(f"allowed.test:{srv.port}"), then=b"ping through the tunnel")
    assert status == 200
    assert data.endswith(b"\r\n\r\nping through the tunnel")
    assert srv.accepted == 1
    assert child.stats.bytes_up == child.stats.bytes_down == len(b"ping through the tunnel")


Case = tuple[str, Callable[[int], bytes], str]


async def _refused(
    request: Callable[[int], bytes],
    allow: Callable[[int], tuple[str, ...]],
    names: dict[str, list[str]],
    status: int = 403,
    deny: tuple[str, ...] = (),
) -> tuple[bytes, ChildProxy, Server]:
    async with echo_server() as srv, proxy(allow(srv.port), deny, names=names) as (child, port):
        got, data = await ask(port, request(srv.port))
    assert got == status, data
    assert srv.accepted == 0  # checked at the target: nothing reached it
    assert child.stats.denied == 1
    assert child.stats.allowed == 0
    (denial,) = child.denials
    assert denial.layer == "proxy"
    return data, child, srv


async def test_unlisted_name_refused_naming_the_list() -> None:
    data, child, _ = await _refused(
        lambda p: connect(f"other.test:{p}"),
        lambda p: (f"allowed.test:{p}", "127.0.0.1"),
        {"other.test": ["127.0.0.1"]},
    )
    assert b"no rule of network.allow covers other.test:" in data
    assert b"allowed.test:" in data  # the body lists what is allowed
    assert child.denials[0].operation == "connect"
    assert child.denials[0].hint.startswith("CONNECT refused: no rule of network.allow covers other.test:")
    assert child.denials[0].target.startswith("other.test:")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", b"loopback"),
        ("127.8.9.10", b"loopback"),
        ("10.1.2.3", b"private"),
        ("192.168.1.1", b"private"),
        ("169.254.169.254", b"link-local"),
        ("::1", b"loopback"),
        ("::ffff:127.0.0.1", b"loopback"),
        ("fe80::1", b"link-local"),
        ("0.0.0.0", b"unspecified"),
        ("224.0.0.1", b"multicast"),
        ("100.64.0.1", b"shared"),
        ("fd00::1", b"unique local"),
        ("64:ff9b::a01:203", b"carrying 10.1.2.3"),
        ("2002:7f00:1::1", b"carrying 127.0.0.1"),
        ("255.255.255.255", b"broadcast"),
    ],
)
async def test_listed_name_resolving_to_a_special_address_refused(address: str, why: bytes) -> None:
    data, _, _ = await _refused(
        lambda p: connect(f"allowed.test:{p}"), lambda p: (f"allowed.test:{p}",), {"allowed.test": [address]}
    )
    assert why in data
    assert b"names the address" in data


async def test_special_address_allowed_only_when_named_and_own_addresses_refused() -> None:
    names = {"allowed.test": ["127.0.0.1"]}
    async with echo_server() as srv:
        async with proxy((f"allowed.test:{srv.port}", "127.0.0.2"), names=names) as (_, port):
            assert (await ask(port, connect(f"allowed.test:{srv.port}")))[0] == 403  # another address named
        async with proxy((f"allowed.test:{srv.port}", "127.0.0.1"), names=names) as (_, port):
            assert (await ask(port, connect(f"allowed.test:{srv.port}"), then=b"x"))[0] == 200
        assert srv.accepted == 1
    # a global address that is the host's own is refused like loopback
    own = ipaddress.IPv4Address("93.184.215.14")
    config = ProxyConfig(
        resolver=static_resolver({"allowed.test": [str(own)]}), own_addresses=frozenset({own})
    )
    child = ChildProxy(NetworkPolicy(mode="proxy", allow=("allowed.test",)), config)
    with pytest.raises(Exception, match="supervisor's host"):
        await child._open(_request("allowed.test", 443))


def _request(host: str, port: int) -> object:
    from supervisor._proxy import _Request

    return _Request("CONNECT", host, port, f"{host}:{port}", b"")


@pytest.mark.parametrize(
    "literal",
    [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ],
)
async def test_ip_literals_normalised_before_the_decision(literal: str) -> None:
    """Each encoding of 127.0.0.1 is refused under a names-only list, and allowed (the same address)
    under a list naming 127.0.0.1 on that port."""
    data, _, _ = await _refused(lambda p: connect(f"{literal}:{p}"), lambda p: (f"allowed.test:{p}",), {})
    assert b"no rule of network.allow covers" in data
    async with echo_server() as srv, proxy((f"127.0.0.1:{srv.port}",)) as (_child, port):
        status, _ = await ask(port, connect(f"{literal}:{srv.port}"), then=b"x")
    assert status == 200
    assert srv.accepted == 1


async def test_port_rule_names_only_means_80_and_443() -> None:
    data, _, _ = await _refused(
        lambda p: connect(f"allowed.test:{p}"),
        lambda p: ("allowed.test", "127.0.0.1"),
        {"allowed.test": ["127.0.0.1"]},
    )
    assert b"no rule of network.allow covers allowed.test:" in data


async def test_deny_wins_over_a_wildcard() -> None:
    data, _child, _ = await _refused(
        lambda p: connect(f"bad.allowed.test:{p}"),
        lambda p: (f"*.allowed.test:{p}", "127.0.0.1"),
        {"bad.allowed.test": ["127.0.0.1"]},
        deny=(["bad.allowed.test", "1-2"][0],),
    )
    assert b"network.deny[0] = 'bad.allowed.test'" in data or b"no rule" in data


@pytest.mark.parametrize(
    "request_for",
    [
        lambda p: connect(f"allowed.test:{p}", host="evil.test"),
        lambda p: connect(f"allowed.test:{p}", host=f"evil.test:{p}"),
        lambda p: get(f"http://allowed.test:{p}/", host="evil.test"),
        lambda p: (
            f"GET http://allowed.test:{p}/ HTTP/1.1\r\nHost: allowed.test:{p}\r\nHost: evil.test\r\n\r\n"
        ).encode(),
    ],
)
async def test_host_header_differing_from_the_target_refused(request_for: Callable[[int], bytes]) -> None:
    data, _, _ = await _refused(
        request_for,
        lambda p: (f"allowed.test:{p}", "127.0.0.1"),
        {"allowed.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]},
    )
    assert b"Host header" in data


@pytest.mark.parametrize(
    ("request_for", "why"),
    [
        (lambda p: f"GET https://allowed.test:{p}/ HTTP/1.1\r\n\r\n".encode(), b"CONNECT"),
        (lambda p: f"GET / HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n".encode(), b"absolute"),
        (lambda p: b"CONNECT allowed.test HTTP/1.1\r\n\r\n", b"host:port"),
        (lambda p: f"CONNECT allowed.test:{p}0000 HTTP/1.1\r\n\r\n".encode(), b"bad port"),
        (lambda p: f"GET http://user@allowed.test:{p}/ HTTP/1.1\r\n\r\n".encode(), b"user info"),
        (lambda p: b"HELLO\r\n\r\n", b"METHOD"),
    ],
)
async def test_malformed_requests_get_400(request_for: Callable[[int], bytes], why: bytes) -> None:
    data, _, _ = await _refused(
        request_for, lambda p: (f"allowed.test:{p}", "127.0.0.1"), {"allowed.test": ["127.0.0.1"]}, 400
    )
    assert why in data


async def test_slow_loris_head_is_cut_off() -> None:
    """A client that sends its head a byte at a time never gets a decision: closed at head_timeout."""
    async with (
        echo_server() as srv,
        proxy(
            (f"allowed.test:{srv.port}", "127.0.0.1"), names={"allowed.test": ["127.0.0.1"]}, head_timeout=0.5
        ) as (child, port),
        await anyio.connect_tcp("127.0.0.1", port) as stream,
    ):
        data = b""
        with anyio.fail_after(20):
            for byte in connect(f"allowed.test:{srv.port}")[:-2]:
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, OSError):
                    break
                with anyio.move_on_after(0.1), contextlib_suppress():
                    data += await stream.receive()  # the proxy's answer, once it gave up on us
                if data:
                    break
            with contextlib_suppress():
                async for chunk in stream:
                    data += chunk
    assert data.startswith(b"HTTP/1.1 408")
    assert srv.accepted == 0
    assert child.stats.denied == 1


async def test_idle_tunnel_closed() -> None:
    async with (
        echo_server() as srv,
        proxy(
            (f"allowed.test:{srv.port}", "127.0.0.1"), names={"allowed.test": ["127.0.0.1"]}, idle_timeout=0.5
        ) as (child, port),
        await anyio.connect_tcp("127.0.0.1", port) as stream,
    ):
        await stream.send(connect(f"allowed.test:{srv.port}"))
        data = b""
        with anyio.fail_after(20), contextlib_suppress():
            async for chunk in stream:  # ends when the proxy closes the idle tunnel
                data += chunk
    assert data == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert child.active == 0


async def test_thousand_concurrent_connections_from_one_child_are_bounded() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4200:
        pytest.skip(f"needs 4200 fds, RLIMIT_NOFILE hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4200), hard))
    limit = 50
    try:
        async with (
            echo_server() as srv,
            proxy(
                (f"allowed.test:{srv.port}", "127.0.0.1"),
                names={"allowed.test": ["127.0.0.1"]},
                max_connections=limit,
                head_timeout=120,
            ) as (child, port),
        ):
            streams: list[anyio.abc.SocketStream] = []
            try:
                answers: list[bytes] = []
                for _ in range(1000):
                    try:
                        streams.append(await anyio.connect_tcp("127.0.0.1", port))
                    except OSError:  # reset so early that the connect itself saw it (trio)
                        answers.append(b"reset")

                async def first_bytes(stream: anyio.abc.SocketStream) -> None:
                    with anyio.move_on_after(5):
                        try:
                            answers.append(await stream.receive())
                        except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                            answers.append(b"reset")  # past the answering bound too: reset at once

                async with anyio.create_task_group() as tg:
                    for s in streams:
                        tg.start_soon(first_bytes, s)
                assert child.stats.peak_connections == limit
                assert child.active == limit  # the first 50 are still waiting for their heads
                refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
                assert len(refused) >= limit  # answered while no more than `limit` answers were pending
                assert len(refused) + answers.count(b"reset") == 1000 - limit
                assert child.stats.denied == 1000 - limit
                (denial,) = child.denials
                assert denial.count == 1000 - limit
                assert f"at most {limit}".encode() in refused[0]
            finally:
                for s in streams:
                    # Reset, not closed: 1,000 connections left in TIME-WAIT would crowd the host's socket
                    # table (/proc/net/tcp), which other tests read.
                    raw = s.extra(anyio.abc.SocketAttribute.raw_socket)
                    with contextlib_suppress():  # one the proxy reset is closed already
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    await s.aclose()
            # the slots come back: a new connection is served
            status, _ = await ask(port, connect(f"allowed.test:{srv.port}"), then=b"x")
            assert status == 200
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_two_children_with_different_lists_never_mix() -> None:
    names = {"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]}
    async with echo_server() as srv:
        p = srv.port
        async with (
            proxy((f"a.test:{p}", "127.0.0.1"), names=names) as (a, port_a),
            proxy((f"b.test:{p}", "127.0.0.1"), names=names) as (b, port_b),
        ):
            results: dict[tuple[str, str, int], int] = {}

            async def one(who: str, port: int, target: str, i: int) -> None:
                results[(who, target, i)] = (await ask(port, connect(f"{target}:{p}"), then=b"x"))[0]

            async with anyio.create_task_group() as tg:
                for i in range(20):
                    for who, port in (("a", port_a), ("b", port_b)):
                        for target in ("a.test", "b.test"):
                            tg.start_soon(one, who, port, target, i)
    for (who, target, _i), status in results.items():
        assert status == (200 if target.startswith(who) else 403), (who, target)
    assert (a.stats.allowed, a.stats.denied, b.stats.allowed, b.stats.denied) == (20, 20, 20, 20)
    assert srv.accepted == 40


#: Every class the proxy refuses by default, with an address of it (and, for IPv4, its IPv4-mapped
#: IPv6 form is refused the same way): docs/network.md, "Which addresses a name may lead to".
REFUSED = {
    "0.0.0.0": "unspecified",
    "0.1.2.3": "this network",
    "10.0.0.1": "private",
    "10.255.255.255": "private",
    "100.64.0.1": "shared",
    "100.127.255.254": "shared",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "169.254.169.254": "link-local",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.0.0.8": "IETF protocol assignment",
    "192.168.1.1": "private",
    "198.18.0.1": "benchmarking",
    "198.19.255.255": "benchmarking",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "::": "unspecified",
    "::1": "loopback",
    "::ffff:0:7f00:1": "outside 2000::/3",  # IPv4-translated (SIIT) 127.0.0.1
    "64:ff9b:1::a": "local-use NAT64",
    "64:ff9b::7f00:1": "carrying 127.0.0.1",  # NAT64 of loopback
    "64:ff9b::a9fe:a9fe": "carrying 169.254.169.254",
    "2002:a00:1::": "carrying 10.0.0.1",  # 6to4 of a private address
    "100::1": "discard-only",
    "2001::1": "IETF protocol assignment",  # Teredo
    "2001:2::1": "IETF protocol assignment",  # benchmarking
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fe80::1": "link-local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "ff05::2": "multicast",
    "4000::1": "outside 2000::/3",
    "e000::1": "outside 2000::/3",
}
#: Reachable by default: global unicast, and the documentation ranges, which no network is assigned by
#: standard (RFC 5737, RFC 3849, RFC 9637).
REACHABLE = (
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below the shared range
    "100.128.0.0",  # just above it
    "172.15.255.255",
    "172.32.0.0",
    "192.0.2.80",
    "198.51.100.7",
    "203.0.113.80",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700::1",
    "2001:db8::1",
    "3fff::1",
    "64:ff9b::5db8:d70e",  # NAT64 of 93.184.215.14
    "2002:5db8:d70e::1",  # 6to4 of it
)


@pytest.mark.parametrize(("text", "why"), sorted(REFUSED.items()))
def test_refused_classes(text: str, why: str) -> None:
    address = ipaddress.ip_address(text)
    reason = special(address)
    assert reason is not None, text
    assert why in reason, (text, reason)
    if address.version == 4:  # every IPv6 encoding of it too
        for form in (f"::ffff:{text}", f"::{text}"):
            if text in ("0.0.0.0", "0.0.0.1") and form.startswith("::0"):
                continue
            assert special(canonical_address(ipaddress.ip_address(form))) is not None, form


@pytest.mark.parametrize("text", REACHABLE)
def test_reachable_classes(text: str) -> None:
    assert special(ipaddress.ip_address(text)) is None, text


def test_every_encoding_of_loopback_is_refused() -> None:
    """Each way a client may write 127.0.0.1 normalises to it, and it is refused."""
    for text in ("127.0.0.1", "127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001",
                 "[::ffff:127.0.0.1]", "::ffff:7f00:1", "[::127.0.0.1]", "127.000.000.001"):  # fmt: skip
        address = normalise_host(text)
        assert address == ipaddress.IPv4Address("127.0.0.1"), text
        assert isinstance(address, ipaddress.IPv4Address)
        assert "loopback" in (special(address) or ""), text


def test_host_interfaces_and_inside() -> None:
    """The host's own addresses and their networks (read from this machine: every interface), and the
    operator's internal networks, are refused; an address off them is not."""
    own, networks = host_interfaces()
    assert ipaddress.IPv4Address("127.0.0.1") in own
    config = ProxyConfig(own_addresses=own, own_networks=networks, internal_networks=("203.0.113.0/24",))
    for address in own:
        assert config.inside(address) is not None, address
    for network in networks:
        neighbours = [network.network_address + i for i in range(1, min(network.num_addresses, 5))]
        for neighbour in (n for n in neighbours if n not in own):
            assert f"a network of the supervisor's host ({network})" in (config.inside(neighbour) or "")
    assert "operator calls internal (203.0.113.0/24)" in (
        config.inside(ipaddress.IPv4Address("203.0.113.9")) or ""
    )
    outside = next(ipaddress.IPv4Address(a) for a in ("198.51.100.7", "93.184.215.14")
                   if not any(ipaddress.IPv4Address(a) in n for n in networks))  # fmt: skip
    assert config.inside(outside) is None
    with pytest.raises(ValueError, match="does not appear to be"):
        ProxyConfig(internal_networks=("not a network",))  # type: ignore[arg-type]


async def test_refusal_by_an_address_deny_rule_says_so_and_names_no_address_to_add() -> None:
    """A listed name whose every address a network.deny address rule refuses: the 403 names the deny rule
    and does not advise adding the address to network.allow (that would not help); with another address
    left over that is only private, it advises that one."""
    names = {"allowed.test": ["10.1.2.3"], "two.test": ["10.1.2.3", "10.9.9.9"]}
    async with proxy(("allowed.test", "two.test"), ("10.1.2.3",), names=names) as (_child, port):
        status, data = await ask(port, connect("allowed.test:443"))
        assert status == 403
        assert b"10.1.2.3 (network.deny[0]): refused by network.deny" in data
        assert b"add " not in data
        status, data = await ask(port, connect("two.test:443"))
        assert status == 403
        assert b"add '10.9.9.9' to it" in data


def test_operator_internal_network_and_address_rule_override() -> None:
    """A documentation-range address is a destination by default, refused once the operator calls its
    network internal, a destination again for a policy that names the address; a `network.deny` address
    rule refuses it whatever the allow list. (The decision only: nothing is connected to.)"""
    doc = ipaddress.IPv4Address("198.51.100.7")
    internal = ProxyConfig(internal_networks=("198.51.100.0/24",))  # type: ignore[arg-type]

    def decide(config: ProxyConfig, allow: tuple[str, ...], deny: tuple[str, ...] = ()) -> tuple[object, ...]:
        child = ChildProxy(NetworkPolicy(mode="proxy", allow=("doc.test", *allow), deny=deny), config)
        addresses, refused = child.destinations([doc, ipaddress.IPv4Address("10.0.0.1")], 443)
        return tuple(addresses), tuple(refused)

    assert decide(ProxyConfig(), ()) == ((doc,), ("10.0.0.1, a private address (RFC 1918)",))
    assert decide(internal, ())[0] == ()
    assert "operator calls internal (198.51.100.0/24)" in decide(internal, ())[1][0]
    assert decide(internal, ("198.51.100.7",))[0] == (doc,)
    assert decide(ProxyConfig(), ("198.51.100.7",), deny=("198.51.100.7",)) == (
        (),
        ("198.51.100.7 (network.deny[0])", "10.0.0.1, a private address (RFC 1918)"),
    )


async def _socks(port: int, request: bytes, then: bytes = b"") -> bytes:
    """A SOCKS5 exchange with the proxy on `port`: greeting, `request`; the replies (and `then` echoed)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"\x05\x01\x00")
        data = b""
        with anyio.fail_after(20):
            while len(data) < 2:
                data += await stream.receive()
            await stream.send(request)
            while len(data) < 12:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
            if then and data[3:4] == b"\x00":
                await stream.send(then)
                while not data.endswith(then):
                    data += await stream.receive()
    return data


def _socks_domain(name: str, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name.encode() + port.to_bytes(2, "big")


async def test_socks5_connect_decided_like_connect() -> None:
    """SOCKS5 (for tools that speak only that): allowed names tunnel, unlisted names, IP literals under a
    names-only list and BIND are refused, each a denial naming the rule."""
    names = {"allowed.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    async with (
        echo_server() as srv,
        proxy((f"allowed.test:{srv.port}", "127.0.0.1"), names=names) as (child, port),
    ):
        ok = await _socks(port, _socks_domain("allowed.test", srv.port), then=b"through socks")
        assert ok[:2] == b"\x05\x00"
        assert ok[2:4] == b"\x05\x00"
        assert ok.endswith(b"through socks")
        refused = await _socks(port, _socks_domain("other.test", srv.port))
        assert refused[2:4] == b"\x05\x02"  # not allowed by ruleset
        literal = b"\x05\x01\x00\x01" + bytes([127, 0, 0, 1]) + srv.port.to_bytes(2, "big")
        assert (await _socks(port, literal))[2:4] == b"\x05\x02"
        bind = b"\x05\x02\x00\x03" + bytes([12]) + b"allowed.test" + srv.port.to_bytes(2, "big")
        assert (await _socks(port, bind))[2:4] == b"\x05\x07"
    assert srv.accepted == 1
    assert (child.stats.allowed, child.stats.denied) == (1, 3)
    hints = sorted(d.hint for d in child.denials)
    assert any(
        h.startswith("SOCKS5 CONNECT refused: no rule of network.allow covers other.test:") for h in hints
    )
    assert any("127.0.0.1:" in d.target for d in child.denials)
    assert any("only SOCKS5 CONNECT" in h for h in hints)


async def _pumped(
    cfg: ProxyConfig, payload: bytes, cancel_after: float | None = None
) -> tuple[bytes, list[int], list[int]]:
    """`_pump` from one socket pair to another, `payload` fed in and read out at the far end by tasks of
    their own (an endless feed when `cancel_after` is given: the pump is cancelled then). Returns what came
    out, the chunk sizes and `cfg.relay_memory_used` after each chunk."""
    from supervisor._proxy import _pump, _recv, _sendall

    feed_w, src = socket.socketpair()
    dst, out_r = socket.socketpair()
    for s in (feed_w, src, dst, out_r):
        s.setblocking(False)
    chunks: list[int] = []
    used: list[int] = []
    received = bytearray()

    def moved(n: int) -> None:
        chunks.append(n)
        used.append(cfg.relay_memory_used)

    async def feed() -> None:
        if cancel_after is None:
            await _sendall(feed_w, payload)
            feed_w.shutdown(socket.SHUT_WR)
        else:
            while True:
                await _sendall(feed_w, payload)

    async def drain() -> None:
        while data := await _recv(out_r, 1 << 20):
            received.extend(data)

    with feed_w, src, dst, out_r:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(drain)
            with anyio.move_on_after(cancel_after if cancel_after is not None else 60) as scope:
                await _pump(src, dst, moved, cfg)
            assert scope.cancelled_caught == (cancel_after is not None)
            dst.shutdown(socket.SHUT_WR)
            if cancel_after is not None:
                tg.cancel_scope.cancel()
    return bytes(received), chunks, used


async def test_relay_moves_a_bulk_stream_intact_in_grown_chunks_and_gives_the_memory_back() -> None:
    import os

    from supervisor._proxy import _CHUNK, _FIRST_CHUNK

    payload = os.urandom(8 << 20)
    cfg = ProxyConfig(relay_memory=_CHUNK)
    received, chunks, used = await _pumped(cfg, payload)
    assert received == payload
    assert sum(chunks) == len(payload)
    assert max(chunks) <= _CHUNK
    assert max(used) > 0  # it grew past the first chunk ...
    assert max(used) <= cfg.relay_memory  # ... within the budget
    assert max(chunks) > _FIRST_CHUNK
    assert cfg.relay_memory_used == 0  # and gave it back


async def test_relay_stays_at_its_first_chunk_when_the_relay_memory_is_spent() -> None:
    import os

    from supervisor._proxy import _FIRST_CHUNK

    payload = os.urandom(2 << 20)
    cfg = ProxyConfig(relay_memory=0)
    received, chunks, used = await _pumped(cfg, payload)
    assert received == payload
    assert max(chunks) <= _FIRST_CHUNK
    assert set(used) == {0}


async def test_relay_of_an_endless_stream_is_cancellable_and_gives_the_memory_back() -> None:
    cfg = ProxyConfig()
    received, chunks, used = await _pumped(cfg, b"x" * (1 << 20), cancel_after=0.5)  # returns: cancelled
    assert len(chunks) > 2  # it was moving when cancelled
    assert received
    assert max(used) > 0
    assert cfg.relay_memory_used == 0
