"""corral's network proxy: what a sandbox under network mode "proxy" reaches, and nothing else.

The sandbox has its own network namespace with only loopback; its one way out is a listening socket on its
own 127.0.0.1:3128, made inside that namespace and handed to the supervisor, which accepts on it and runs
this proxy in its event loop (docs/network.md; no process runs inside the sandbox for it). Per accepted
connection (`ChildProxy.serve`):

1. The request head, at most MAX_HEAD bytes within `head_timeout` seconds (a slow-loris client is cut off).
2. ``CONNECT host:port`` (a tunnel: TLS stays end to end, nothing is intercepted, there is no CA) or an
   absolute-form plain-HTTP request (``GET http://host[:port]/path``), forwarded in origin form with
   ``Connection: close``; anything else is a 400. A Host header that names another host than the
   CONNECT target or the URL is refused (403): the decision is taken on one name only.
3. The host is normalised (every IP-literal form to its address: decimal, octal, hex, shorthand, IPv4
   in IPv6; names to IDNA A-labels) and checked against the child's `network.deny` (first) and
   `network.allow` (policies._network.match_target).
4. The proxy resolves the name itself (`system_resolver`: getaddrinfo in a thread pool of its own, at most
   `max_resolving` lookups at once per child, so that one child's unanswered names cannot hold the threads
   every other child's lookups need). Addresses in a refused range (policies._network.REFUSED_RANGES:
   loopback, private, shared, link-local with the 169.254.169.254 metadata service, multicast, unspecified,
   broadcast, reserved, ...), the host's own and those on the host's networks (`ProxyConfig.inside`) are
   skipped unless an address rule of `network.allow` names them; if none is left the request is refused.
   So a listed name that resolves into the host or its network (DNS rebinding) gets nowhere.
   The connection goes to the checked address, never again to the name.
   The same port speaks SOCKS5 (`_socks`: no authentication, CONNECT only), decided in the same way.
5. Bytes are relayed both ways until either side closes, the connection has been idle `idle_timeout`
   seconds, or it has lasted `total_timeout`; at most `max_connections` at once per child (more are
   answered 503).

Every refusal is answered with an HTTP 403 (or 400/502/503) whose body names the rule, counted, and
recorded as a `Denial` (layer "proxy", operation "connect", target "host:port", the reason as its hint)
with a count, bounded per child, and told to the supervisor as it happens (`on_denial`). Counters (bytes up
and down, connections allowed and refused) are per child (`ProxyStats`).

Runs on both anyio backends. On cancellation (the child's exit, the supervisor's close) every connection
of the child is closed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from anyio.lowlevel import RunVar

from policies import NetworkPolicy
from policies._network import (
    Address,
    NetRule,
    canonical_address,
    match_target,
    normalise_host,
    parse_rule,
    refused_range,
)
from supervisor._types import Denial
from supervisor.forkserver.protocol import PROXY_LISTENER

log = logging.getLogger("corral")

#: Largest request head (request line and headers) read before a decision.
MAX_HEAD = 64 * 1024
#: Distinct denial records kept per child (further refusals count in the totals only).
MAX_DENIALS = 64
#: Most names an operator may have counted per domain (ProxyConfig.count_domains).
MAX_COUNTED_DOMAINS = 64
#: The relay's buffer per direction of a connection: _FIRST_CHUNK bytes, grown up to _CHUNK for a bulk
#: stream (`_pump`; within ProxyConfig.relay_memory). Measured on loopback (CPU per 400 MB): 64 KiB costs
#: the proxy twice what 1 MiB does (a trip through the event loop per chunk), 256 KiB a third more; 2 and
#: 4 MiB gain nothing.
_FIRST_CHUNK = 16 << 10
_CHUNK = 1 << 20
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
#: The first byte of a SOCKS5 greeting (an HTTP request starts with a letter).
_SOCKS_VERSION = 5

#: Resolves (name, port) to the addresses to try, in order. Raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Awaitable[list[Address]]]


#: getaddrinfo threads of every sandbox's proxy together: a pool of their own. anyio.getaddrinfo used the
#: event loop's default executor on asyncio (min(32, CPUs + 4) threads: 6 on 2 cores) and the process-wide
#: thread limiter on trio (shared with every worker-thread job of the supervisor), so one sandbox's lookups
#: of names nobody answers (each waits for the resolver's timeout: 5 to 30 s) held them all, and every other
#: sandbox's lookup queued behind them until its connect timeout refused it.
MAX_RESOLVER_THREADS = 32
_RESOLVER_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("corral_proxy_resolver_limiter")


def _resolver_limiter() -> anyio.CapacityLimiter:
    try:
        return _RESOLVER_LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(MAX_RESOLVER_THREADS)
        _RESOLVER_LIMITER.set(limiter)
        return limiter


def _getaddrinfo(host: str, port: int) -> list[tuple[int, str]]:
    """(family, address) of each answer of getaddrinfo (blocking: a worker thread's)."""
    return [(int(i[0]), str(i[4][0])) for i in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


async def system_resolver(host: str, port: int) -> list[Address]:
    """The host's resolver (getaddrinfo in a worker thread of the proxy's own pool, MAX_RESOLVER_THREADS;
    a lookup given up is left to finish in its thread), in its order."""
    infos = await anyio.to_thread.run_sync(
        _getaddrinfo, host, port, abandon_on_cancel=True, limiter=_resolver_limiter()
    )
    out: list[Address] = []
    for family, text in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = canonical_address(ipaddress.ip_address(text.split("%", 1)[0]))
            if address not in out:
                out.append(address)
    return out


def static_resolver(names: Mapping[str, Iterable[str]]) -> Resolver:
    """A resolver for tests: each name to the given addresses, every other name unresolvable (nothing is
    asked of DNS). Used to send a test name to a loopback listener the test started."""
    table = {
        name.lower(): [canonical_address(ipaddress.ip_address(a)) for a in addrs]
        for name, addrs in names.items()
    }

    async def resolve(host: str, port: int) -> list[Address]:
        addresses = table.get(host)
        if addresses is None:
            msg = f"{host}: not in the test resolver's table"
            raise OSError(msg)
        return list(addresses)

    return resolve


async def receive_listener(sock: socket.socket) -> socket.socket | None:
    """The listening socket a sandbox init sends on `sock` (_cinit.c, OP_PROXY_LISTEN), or None when the
    init closed its end without sending one. Waits until one or the other."""
    while True:
        try:
            listener = take_listener(sock)
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        return listener


def take_listener(sock: socket.socket) -> socket.socket | None:
    """`receive_listener` without waiting: raises BlockingIOError when nothing is there yet; None at EOF
    or when the message carried no socket. Only a listening TCP socket is taken."""
    msg, ancdata, _flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(4 * 4), socket.MSG_DONTWAIT)
    fds = [
        fd
        for level, kind, data in ancdata
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
        for fd in array_fds(data)
    ]
    listener = None
    for fd in fds:
        candidate = socket.socket(fileno=fd)
        if listener is None and msg == PROXY_LISTENER and candidate.type == socket.SOCK_STREAM:
            try:
                if candidate.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    listener = candidate
                    continue
            except OSError:
                pass
        candidate.close()
    return listener


def array_fds(data: bytes) -> list[int]:
    """The fds of an SCM_RIGHTS payload."""
    import array

    fds = array.array("i")
    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def host_addresses() -> frozenset[Address]:
    """The addresses of this host's interfaces (psutil), which a sandbox must not reach through the proxy
    unless its policy names them. Blocking (a few syscalls): call it off the event loop."""
    return host_interfaces()[0]


def host_interfaces() -> tuple[frozenset[Address], tuple[Network, ...]]:
    """The addresses of this host's interfaces and the networks they are on (address and netmask: the
    host's own segments, e.g. 192.0.2.0/24 for 192.0.2.2/24), all of which a sandbox must not reach
    through the proxy unless its policy names the address (psutil). A network of prefix length 0 is left
    out (it would be every address). Blocking (a few syscalls): call it off the event loop."""
    import psutil

    addresses: set[Address] = set()
    networks: dict[Network, None] = {}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = a.address.split("%", 1)[0]
            with contextlib.suppress(ValueError):
                addresses.add(canonical_address(ipaddress.ip_address(text)))
            if a.netmask:
                with contextlib.suppress(ValueError):
                    mask = int(ipaddress.ip_address(a.netmask.split("/", 1)[0]))
                    network = ipaddress.ip_network(f"{text}/{mask.bit_count()}", strict=False)
                    if network.prefixlen:
                        networks[network] = None
    return frozenset(addresses), tuple(networks)


def special(address: Address) -> str | None:
    """Why `address` is no destination for the proxy without an explicit address rule (loopback, private,
    shared, link-local, multicast, unspecified, broadcast, reserved, ...: policies._network.REFUSED_RANGES),
    or None when it may be one. The host's own addresses and networks are `ProxyConfig.inside`'s."""
    return refused_range(address)


@dataclass(slots=True)
class ProxyStats:
    """One child's proxy counters: bytes relayed from the sandbox (`bytes_up`) and to it (`bytes_down`),
    connections relayed (`allowed`) and refused (`denied`), and the most at once (`peak_connections`)."""

    bytes_up: int = 0
    bytes_down: int = 0
    allowed: int = 0
    denied: int = 0
    peak_connections: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "allowed": self.allowed,
            "denied": self.denied,
            "peak_connections": self.peak_connections,
        }


@dataclass(slots=True)
class ProxyConfig:
    """What every child's proxy shares: the resolver (tests give `static_resolver`), the host's own
    addresses, and the limits."""

    resolver: Resolver = system_resolver
    #: The host's own interface addresses and the networks they are on (the supervisor looks them up again
    #: at most once a minute): refused unless a policy names the address.
    own_addresses: frozenset[Address] = frozenset()
    own_networks: tuple[Network, ...] = ()
    #: Further networks the operator calls internal, refused like private ones unless a policy names the
    #: address: e.g. a documentation range (192.0.2.0/24, ...) in use as an inside network. Strings are
    #: read as networks when the config is made (ValueError for one that is not).
    internal_networks: tuple[Network, ...] = ()
    head_timeout: float = 10.0
    idle_timeout: float = 300.0
    total_timeout: float = 3600.0
    connect_timeout: float = 10.0
    max_connections: int = 128
    #: Name lookups one sandbox's proxy runs at once (its further requests wait their turn, within
    #: connect_timeout): what one sandbox may hold of the resolver's threads (MAX_RESOLVER_THREADS).
    max_resolving: int = 4
    #: Most bytes the relay's grown buffers take at once, over every child: a bulk stream's buffer grows
    #: past _FIRST_CHUNK (up to _CHUNK) only while this allows (`_pump`); `relay_memory_used` is what they
    #: take now.
    relay_memory: int = 64 << 20
    relay_memory_used: int = 0
    #: The operator's opt-in for a per-domain count (the exporter's corral_proxy_domain_connections_total):
    #: requests for these names (or below them) are counted under the name, every other one as "other".
    #: Bounded (MAX_COUNTED_DOMAINS), so the metric's labels are.
    count_domains: tuple[str, ...] = ()
    #: Every child's counters summed, live (the exporter's counters: monotonic, whatever children come and
    #: go), and the per-domain counts: (domain or "other", "allowed" | "denied") -> connections.
    totals: ProxyStats = field(default_factory=lambda: ProxyStats())
    by_domain: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check and normalise `count_domains` (give it here: it is read as given afterwards). Raises
        ValueError past MAX_COUNTED_DOMAINS names or for one that is no host name."""
        if len(self.count_domains) > MAX_COUNTED_DOMAINS:
            msg = f"count_domains: at most {MAX_COUNTED_DOMAINS} names"
            raise ValueError(msg)
        names = []
        for domain in self.count_domains:
            name = normalise_host(domain) if isinstance(domain, str) else None
            if not isinstance(name, str):
                msg = f"count_domains: {domain!r} is not a host name"
                raise ValueError(msg)
            names.append(name)
        self.count_domains = tuple(dict.fromkeys(names))
        self.internal_networks = tuple(
            ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in self.internal_networks
        )

    def inside(self, address: Address) -> str | None:
        """Why `address` is the host's or an inside network's (an interface's address, on an interface's
        network, or in `internal_networks`), or None."""
        if address in self.own_addresses:
            return "an address of the supervisor's host"
        for kind, networks in (
            ("a network of the supervisor's host", self.own_networks),
            ("a network the operator calls internal", self.internal_networks),
        ):
            for network in networks:
                if address.version == network.version and address in network:
                    return f"on {kind} ({network})"
        return None


class _Refused(Exception):
    """A request refused: the HTTP status, the 403 body's reason, and the denial's hint."""

    def __init__(self, status: int, reason: str, operation: str = "", target: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.operation = operation
        self.target = target


_STATUS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Service Unavailable"}
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


@dataclass(slots=True)
class _Request:
    method: str
    host: str  # as sent
    port: int
    target: str  # host:port as sent, for messages
    head: bytes  # what to send upstream (plain HTTP), or b"" (CONNECT)


class ChildProxy:
    """The proxy of one sandbox: its policy's rules, its counters, its denials and its connection bound.

    `serve(listener)` accepts on the sandbox's listening socket until cancelled."""

    def __init__(self, network: NetworkPolicy, config: ProxyConfig | None = None) -> None:
        self.config = config or ProxyConfig()
        self.allow: tuple[NetRule, ...] = tuple(parse_rule(r, "network.allow") for r in network.allow)
        self.deny: tuple[NetRule, ...] = tuple(parse_rule(r, "network.deny") for r in network.deny)
        self._allowed_addresses = frozenset(r.address for r in self.allow if r.address is not None)
        self.stats = ProxyStats()
        self._denials: dict[tuple[str, str], int] = {}
        #: Told of each new distinct refusal as it happens (the supervisor's `denied` event).
        self.on_denial: Callable[[Denial], None] | None = None
        self.active = 0
        self._answering = 0  # connections past the bound being answered 503 (bounded as well)
        self._resolving = anyio.Semaphore(self.config.max_resolving)

    def net(self) -> tuple[int, int, int, int]:
        """ChildStats' net_* fields: bytes up and down, connections allowed and denied."""
        st = self.stats
        return st.bytes_up, st.bytes_down, st.allowed, st.denied

    @property
    def denials(self) -> tuple[Denial, ...]:
        """The refusals so far, one record per (operation, target, hint) with its count (at most
        MAX_DENIALS records; `stats.denied` counts them all)."""
        return tuple(_denial(target, hint, n) for (target, hint), n in self._denials.items())

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections on `listener` (a listening TCP socket, which this takes over and closes) and
        serve each in a task of its own, until cancelled; then every connection is closed."""
        listener.setblocking(False)
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        conn, _addr = listener.accept()
                    except BlockingIOError:
                        await anyio.wait_readable(listener)
                        continue
                    except (ConnectionAbortedError, InterruptedError):
                        continue
                    except OSError as err:  # EMFILE: say so and let the kernel's backlog hold them a while
                        log.warning("corral proxy: accept failed: %s", err)
                        await anyio.sleep(0.1)
                        continue
                    conn.setblocking(False)
                    if self.active >= self.config.max_connections:
                        if self._answering >= self.config.max_connections:
                            # A flood: reset at once, so that it cannot hold the supervisor's fds either.
                            self._deny("accept", "-", f"at most {self.config.max_connections} proxy "
                                       "connections at once per sandbox")  # fmt: skip
                            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                            conn.close()
                            continue
                        self._answering += 1
                        tg.start_soon(self._over_limit, conn)
                        continue
                    self.active += 1
                    self.stats.peak_connections = max(self.stats.peak_connections, self.active)
                    tg.start_soon(self._connection, conn)
        finally:
            listener.close()

    async def _over_limit(self, conn: socket.socket) -> None:
        limit = self.config.max_connections
        self._deny("accept", "-", f"at most {limit} proxy connections at once per sandbox")
        try:
            with conn:
                await _answer(
                    conn, _response(503, f"corral proxy: refused: at most {limit} connections at once")
                )
        finally:
            self._answering -= 1

    async def _connection(self, client: socket.socket) -> None:
        try:
            with client:
                await self._handle(client)
        except OSError:
            pass
        finally:
            self.active -= 1

    async def _handle(self, client: socket.socket) -> None:
        head = b""
        with anyio.move_on_after(self.config.head_timeout) as waited:
            while True:
                chunk = await _recv(client, MAX_HEAD)
                if not chunk:
                    return
                head += chunk
                if head[0] == _SOCKS_VERSION:
                    break
                if b"\r\n\r\n" in head:
                    break
                if len(head) >= MAX_HEAD:
                    await self._refuse(client, _Refused(400, f"request head over {MAX_HEAD} bytes", "read"))
                    return
        if waited.cancelled_caught:
            secs = self.config.head_timeout
            self._deny("read", "-", f"no complete request head within {secs:g} s")
            await _answer(client, _response(408, f"corral proxy: no complete request within {secs:g} s"))
            return
        if head[0] == _SOCKS_VERSION:
            await self._socks(client, head)
            return
        head, _, early = head.partition(b"\r\n\r\n")
        request: _Request | None = None
        try:
            request = _parse(head)
            upstream = await self._open(request)
        except _Refused as refused:
            if request is not None:
                self._count_domain(request.host, "denied")
            await self._refuse(client, refused)
            return
        self.stats.allowed += 1
        self.config.totals.allowed += 1
        self._count_domain(request.host, "allowed")
        with upstream:
            if request.method == "CONNECT":
                await _sendall(client, b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                await _sendall(upstream, request.head)
                self._up(len(request.head))
            if early:
                await _sendall(upstream, early)
                self._up(len(early))
            await self._relay(client, upstream, tunnel=request.method == "CONNECT")

    async def _socks(self, client: socket.socket, data: bytes) -> None:
        """SOCKS5 (RFC 1928), for tools that speak only that (`socks5h://127.0.0.1:3128`): no
        authentication, CONNECT only, the target decided and connected exactly as an HTTP CONNECT's. A
        refusal is reply 0x02 ("not allowed by ruleset"; SOCKS has no text for the rule, the denial record
        has it), a malformed or other request 0x01/0x07/0x08."""
        reader = _Reader(client, data)
        try:
            with anyio.fail_after(self.config.head_timeout):
                _version, count = await reader.exactly(2)
                methods = await reader.exactly(count)
                if 0 not in methods:
                    await _sendall(client, bytes([_SOCKS_VERSION, 0xFF]))
                    self._deny("socks", "-", "SOCKS5 without the no-authentication method")
                    return
                await _sendall(client, bytes([_SOCKS_VERSION, 0]))
                version, command, _rsv, kind = await reader.exactly(4)
                if kind == 1:
                    host = str(ipaddress.IPv4Address(await reader.exactly(4)))
                elif kind == 4:
                    host = f"[{ipaddress.IPv6Address(await reader.exactly(16))}]"
                elif kind == 3:
                    host = (await reader.exactly((await reader.exactly(1))[0])).decode("ascii", "replace")
                else:
                    await _sendall(client, _socks_reply(8))
                    self._deny("socks", "-", f"SOCKS5 address type {kind} is not one of 1, 3, 4")
                    return
                port = int.from_bytes(await reader.exactly(2), "big")
        except (TimeoutError, EOFError):
            self._deny("socks", "-", "no complete SOCKS5 request in time")
            return
        target = f"{host}:{port}"
        if version != _SOCKS_VERSION or command != 1:
            await _sendall(client, _socks_reply(7))
            self._deny("socks", target, "only SOCKS5 CONNECT is served (no BIND, no UDP ASSOCIATE)")
            return
        request = _Request("SOCKS5 CONNECT", host.strip("[]") if kind == 4 else host, port, target, b"")
        try:
            if not 1 <= port <= 65535:
                raise _Refused(400, f"bad port in {target!r}", request.method, target)
            upstream = await self._open(request)
        except _Refused as refused:
            self._count_domain(request.host, "denied")
            self._deny(request.method, target, refused.reason)
            await _sendall(client, _socks_reply(2 if refused.status == 403 else 1))
            return
        self.stats.allowed += 1
        self.config.totals.allowed += 1
        self._count_domain(request.host, "allowed")
        with upstream:
            await _sendall(client, _socks_reply(0))
            if reader.buffer:
                await _sendall(upstream, reader.buffer)
                self._up(len(reader.buffer))
            await self._relay(client, upstream, tunnel=True)

    async def _open(self, request: _Request) -> socket.socket:
        """The decision, the resolution and the connection. Raises _Refused."""
        op, target = request.method, request.target
        host = normalise_host(request.host)
        if host is None:
            raise _Refused(400, f"{request.host!r} is neither a host name nor an address", op, target)
        allowed, rule = match_target(self.allow, self.deny, host, request.port)
        if not allowed:
            if rule is not None:
                index = self.deny.index(rule)
                because = f"{target} is refused by network.deny[{index}] = {rule.text!r}"
            else:
                because = f"no rule of network.allow covers {target}" + self._listing()
            raise _Refused(403, because, op, target)
        if isinstance(host, str):
            try:
                with anyio.fail_after(self.config.connect_timeout):
                    async with self._resolving:  # one sandbox holds at most max_resolving lookups
                        found = await self.config.resolver(host, request.port)
            except (OSError, TimeoutError) as err:
                raise _Refused(502, f"{host} does not resolve ({err})", op, target) from None
        else:
            found = [host]
        addresses, refused = self.destinations(found, request.port)
        if not addresses:
            # the first address a network.deny rule did not refuse: naming it in network.allow would help
            named = next((r.split(",", 1)[0] for r in refused if "(network.deny[" not in r), None)
            advice = (
                f"refused unless network.allow names the address (add {named!r} to it to let this name "
                "connect there)"
                if named is not None
                else "refused by network.deny"
            )
            raise _Refused(
                403, f"{request.host} resolves to {'; '.join(refused) or 'nothing'}: {advice}", op, target
            )
        last: BaseException | None = None
        for address in addresses:
            try:
                with anyio.fail_after(self.config.connect_timeout):
                    return await _connect(address, request.port)
            except (OSError, TimeoutError) as err:
                last = err
        raise _Refused(502, f"cannot connect to {target} ({last})", op, target)

    def destinations(self, found: Iterable[Address], port: int) -> tuple[list[Address], list[str]]:
        """Of the addresses a name resolved to (`found`, in order), those a connection on `port` may go
        to, and for each other one "address, why": a `network.deny` address rule; else allowed when an
        address rule of `network.allow` names it; else refused when it is in a refused range (`special`)
        or the host's or an inside network's (`ProxyConfig.inside`). No I/O."""
        addresses: list[Address] = []
        refused: list[str] = []
        for address in map(canonical_address, found):
            denied, deny_rule = match_target((), self.deny, address, port)
            if deny_rule is not None and not denied:
                refused.append(f"{address} (network.deny[{self.deny.index(deny_rule)}])")
                continue
            if address in self._allowed_addresses:
                addresses.append(address)
                continue
            why = special(address) or self.config.inside(address)
            if why is not None:
                refused.append(f"{address}, {why}")
                continue
            addresses.append(address)
        return addresses, refused

    def _count_domain(self, host: str, decision: str) -> None:
        """Count a decision under the operator's counted domain that covers `host`, else "other"."""
        domains = self.config.count_domains
        if not domains:
            return
        name = normalise_host(host)
        label = "other"
        if isinstance(name, str):
            for domain in domains:
                if name == domain or name.endswith("." + domain):
                    label = domain
                    break
        key = (label, decision)
        counts = self.config.by_domain
        counts[key] = counts.get(key, 0) + 1

    def _listing(self) -> str:
        if not self.allow:
            return " (network.allow is empty: nothing is reachable)"
        shown = ", ".join(r.text for r in self.allow[:20])
        more = f", and {len(self.allow) - 20} more" if len(self.allow) > 20 else ""
        return f" (network.allow: {shown}{more})"

    async def _refuse(self, client: socket.socket, refused: _Refused) -> None:
        self._deny(refused.operation or "request", refused.target or "-", refused.reason)
        await _answer(client, _response(refused.status, f"corral proxy: refused: {refused.reason}"))

    def _up(self, n: int) -> None:
        self.stats.bytes_up += n
        self.config.totals.bytes_up += n

    def _deny(self, operation: str, target: str, hint: str) -> None:
        self.stats.denied += 1
        self.config.totals.denied += 1
        key = (target[:300], f"{operation} refused: {hint}"[:600])
        seen = self._denials.get(key)
        if seen is not None:
            self._denials[key] = seen + 1
        elif len(self._denials) < MAX_DENIALS:
            self._denials[key] = 1
            if self.on_denial is not None:
                self.on_denial(_denial(*key, 1))

    async def _relay(self, client: socket.socket, upstream: socket.socket, tunnel: bool) -> None:
        """Copy both ways until both sides are done (a tunnel's sides may close one after the other; a
        forwarded request is over when the server's response ends), the connection is idle `idle_timeout`
        or has lasted `total_timeout`. Each direction copies through one buffer of its own (`_pump`: at most
        _CHUNK bytes, so a connection holds at most 2 * _CHUNK), counted as it goes. On cancellation both
        copies stop at their next wait or chunk; the caller closes the sockets."""
        cfg = self.config
        end = anyio.current_time() + cfg.total_timeout
        stats, totals = self.stats, cfg.totals
        with anyio.CancelScope(deadline=min(end, anyio.current_time() + cfg.idle_timeout)) as scope:

            def moved_up(n: int) -> None:
                stats.bytes_up += n
                totals.bytes_up += n
                scope.deadline = min(end, anyio.current_time() + cfg.idle_timeout)

            def moved_down(n: int) -> None:
                stats.bytes_down += n
                totals.bytes_down += n
                scope.deadline = min(end, anyio.current_time() + cfg.idle_timeout)

            async def copy(src: socket.socket, dst: socket.socket, up: bool) -> None:
                try:
                    await _pump(src, dst, moved_up if up else moved_down, cfg)
                except OSError:
                    scope.cancel()  # one side is gone: so is the connection
                    return
                if not tunnel and not up:
                    scope.cancel()  # the response is complete ("Connection: close")
                    return
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

            async with anyio.create_task_group() as tg:
                tg.start_soon(copy, client, upstream, True)
                tg.start_soon(copy, upstream, client, False)


async def _pump(
    src: socket.socket, dst: socket.socket, moved: Callable[[int], None], cfg: ProxyConfig
) -> None:
    """Copy what `src` sends to `dst` until `src`'s end, through one buffer: _FIRST_CHUNK bytes, grown
    4-fold (up to _CHUNK) each time a read fills it while `cfg.relay_memory` allows, so that a bulk stream
    moves in big reads and writes and a small exchange holds little. `moved(n)` after each chunk is
    written. Yields to the event loop after every chunk that did not wait (a fast stream does not starve
    the other connections). Raises OSError (a reset, EPIPE: a side is gone). On return, error or
    cancellation, the grown buffer's bytes are given back to `cfg.relay_memory_used`.

    Why copies and not splice(2) from socket to pipe to socket, as until session 7: splice hands the
    sender's pages on by reference, so each of them lives until the receiving process copies it out; the
    kernel keeps allocating fresh pages, and the receiver reads cold memory. Measured on loopback in the
    same runs, 400 MB: curl took 235 ms of CPU with splice against 103-108 ms with copies through a reused
    1 MiB buffer (118-129 ms directly), the proxy 85-100 ms against 142-144 ms, 20-25% less CPU in all;
    on a machine whose cores the server, the proxy and the client share that is what decides it
    (docs/network.md, "Speed")."""
    buf = bytearray(_FIRST_CHUNK)
    view = memoryview(buf)
    held = 0  # bytes of cfg.relay_memory this buffer takes
    try:
        while True:
            waited = False
            while True:
                try:
                    n = src.recv_into(buf)
                    break
                except (BlockingIOError, InterruptedError):
                    waited = True
                    await anyio.wait_readable(src)
            if not n:
                return
            sent = 0
            while sent < n:
                try:
                    sent += dst.send(view[sent:n])
                except (BlockingIOError, InterruptedError):
                    waited = True
                    await anyio.wait_writable(dst)
            moved(n)
            if n == len(buf) < _CHUNK:
                size = min(4 * n, _CHUNK)
                if cfg.relay_memory_used - held + size <= cfg.relay_memory:
                    cfg.relay_memory_used += size - held
                    held = size
                    view.release()
                    buf = bytearray(size)
                    view = memoryview(buf)
            if not waited:
                await anyio.lowlevel.checkpoint()
    finally:
        cfg.relay_memory_used -= held


class _Reader:
    """Exact reads from a non-blocking socket, starting with bytes already read."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock = sock
        self.buffer = data

    async def exactly(self, n: int) -> bytes:
        """The next `n` bytes. Raises EOFError at EOF before them, OSError."""
        while len(self.buffer) < n:
            chunk = await _recv(self.sock, 65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def _socks_reply(code: int) -> bytes:
    """A SOCKS5 reply with status `code` and a zero IPv4 bind address (RFC 1928, section 6)."""
    return bytes([_SOCKS_VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0])


async def _recv(sock: socket.socket, n: int) -> bytes:
    """Up to `n` bytes from the non-blocking `sock` (b"" at EOF), waiting for them. Raises OSError."""
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(sock)


async def _sendall(sock: socket.socket, data: bytes) -> None:
    """All of `data` to the non-blocking `sock`, waiting for room. Raises OSError."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except (BlockingIOError, InterruptedError):
            await anyio.wait_writable(sock)


async def _connect(address: Address, port: int) -> socket.socket:
    """A non-blocking TCP connection to `address`:`port`. Raises OSError; on cancellation the socket is
    closed."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((str(address), port))
        if err == errno.EINPROGRESS:
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return sock


async def _answer(sock: socket.socket, response: bytes) -> None:
    """Send a refusal and close gently: our side's EOF, then what the client still sends is read and
    dropped (for at most a second). Closing with unread bytes would reset the connection, and a reset
    discards the answer before the client reads it (a slow-loris client, a TLS hello sent early)."""
    with anyio.move_on_after(1), contextlib.suppress(OSError):
        await _sendall(sock, response)
        sock.shutdown(socket.SHUT_WR)
        while await _recv(sock, 65536):
            pass


def _denial(target: str, hint: str, count: int) -> Denial:
    """A proxy refusal as the supervisor reports denials: layer "proxy", operation "connect"."""
    return Denial("proxy", "connect", target, None, count, hint)


def _response(status: int, body: str) -> bytes:
    text = body.replace("\r", " ").replace("\n", " ") + "\n"
    data = text.encode("utf-8", "replace")
    reason = _STATUS.get(status, "Request Timeout" if status == 408 else "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\nX-Corral-Proxy: refused\r\n\r\n"
    ).encode() + data


def _parse(head: bytes) -> _Request:
    """The request line and headers of `head` (without its final CRLFCRLF). Raises _Refused (400 for what
    is no proxy request, 403 for a Host header that names another host)."""
    lines = head.split(b"\r\n")
    method, target, version = _request_line(lines[0])
    headers, hosts = _headers(lines[1:], method)
    if len(hosts) > 1:
        raise _Refused(403, "more than one Host header", method)
    if method == "CONNECT":
        host, port = _authority(target, None, method)
        if hosts and not _same_authority(hosts[0], host, port, 443):
            raise _Refused(
                403, f"Host header {hosts[0]!r} differs from the CONNECT target {target!r}", method, target
            )
        return _Request(method, host, port, target, b"")
    lowered = target.lower()
    if lowered.startswith("https://"):
        raise _Refused(
            400, "https:// URLs go through CONNECT (the proxy does not originate TLS)", method, target
        )
    if not lowered.startswith("http://"):
        raise _Refused(400, "a proxy request names an absolute http:// URL or uses CONNECT", method, target)
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if "@" in authority:
        raise _Refused(400, "user info in the URL", method, target)
    host, port = _authority(authority, 80, method)
    shown = f"{host}:{port}"
    if hosts and not _same_authority(hosts[0], host, port, 80):
        raise _Refused(
            403, f"Host header {hosts[0]!r} differs from the URL's host {authority!r}", method, shown
        )
    if path.startswith("#"):
        path = "/"
    return _Request(
        method, host, port, shown, _forwarded_head(method, path, version, headers, hosts, authority)
    )


def _request_line(line: bytes) -> tuple[str, str, bytes]:
    """(method, target, version) of the request line `line`. Raises _Refused(400) for one that is not
    'METHOD TARGET HTTP/1.x' in ASCII."""
    try:
        method_b, target_b, version = line.split(b" ")
    except ValueError:
        raise _Refused(400, "expected 'METHOD TARGET HTTP/1.x'", "read") from None
    if not version.startswith(b"HTTP/1.") or not method_b.isalpha() or not method_b.isupper():
        raise _Refused(400, "expected 'METHOD TARGET HTTP/1.x'", "read")
    try:
        return method_b.decode("ascii"), target_b.decode("ascii"), version
    except UnicodeDecodeError:
        raise _Refused(400, "the request line is not ASCII", "read") from None


def _headers(lines: list[bytes], method: str) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """The (name, value) header pairs of `lines`, values stripped, and the values of their Host headers.
    Raises _Refused(400) for a malformed header line."""
    headers: list[tuple[bytes, bytes]] = []
    hosts: list[str] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise _Refused(400, "malformed header line", method)
        key = name.lower()
        value = value.strip()
        if key == b"host":
            hosts.append(value.decode("latin-1"))
        headers.append((name, value))
    return headers, hosts


def _forwarded_head(
    method: str,
    path: str,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    hosts: list[str],
    authority: str,
) -> bytes:
    """The head sent upstream for a plain-HTTP request: origin-form request line, a Host header when the
    request had none, its headers but the hop-by-hop ones and those its Connection headers name, and
    `Connection: close`; ends with CRLFCRLF."""
    out = [f"{method} {path if path.startswith('/') else '/' + path} ".encode() + version]
    connection_tokens = {
        t.strip().lower()
        for n, v in headers
        if n.lower() in (b"connection", b"proxy-connection")
        for t in v.split(b",")
    }
    if not hosts:
        out.append(b"Host: " + authority.encode("ascii"))
    for name, value in headers:
        key = name.lower()
        if key in _HOP_BY_HOP or key in connection_tokens:
            continue
        out.append(name + b": " + value)
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


def _authority(text: str, default_port: int | None, method: str) -> tuple[str, int]:
    """(host, port) of an authority "host:port" ("[v6]:port"); the port may be left out when
    `default_port` is given. Raises _Refused(400)."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Refused(400, f"bad authority {text!r}", method, text)
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _Refused(400, f"bad authority {text!r}", method, text)
        port_text = rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise _Refused(400, f"an IPv6 address goes in brackets: {text!r}", method, text)
    if not port_text:
        if default_port is None:
            raise _Refused(400, f"CONNECT needs host:port, got {text!r}", method, text)
        return host, default_port
    if not port_text.isdigit() or not port_text.isascii() or not 1 <= int(port_text) <= 65535:
        raise _Refused(400, f"bad port in {text!r}", method, text)
    if not host:
        raise _Refused(400, f"no host in {text!r}", method, text)
    return host, int(port_text)


def _same_authority(header: str, host: str, port: int, default_port: int) -> bool:
    """Whether a Host header names `host` on `port` (its port may be left out when it is the default)."""
    try:
        h_host, h_port = _authority(header.strip(), default_port if port == default_port else port, "")
    except _Refused:
        return False
    return h_port == port and normalise_host(h_host) == normalise_host(host) is not None
