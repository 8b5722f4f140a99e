"""Network mode "proxy" in real sandboxes: curl and Python's urllib pick up the proxy from the environment;
the policy's list decides; every refusal is a 403 the tool shows, counted in Result.network; attacks from
inside (refusal classes over a raw socket to the proxy, going around it, taking its port) are checked from
outside, at the test's own loopback servers, which must not have seen a connection. The test servers run
on the host's loopback; a static resolver (the test hook `Supervisor.proxy.resolver`) sends test names to
them, and to private addresses for the refusal classes. Nothing is sent off this machine, except by the pip
test, which downloads from the index pip itself is configured with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from policies import profiles
from supervisor import Result, Supervisor
from supervisor._proxy import ProxyConfig, host_interfaces, static_resolver
from supervisor._types import Denial
from tests.kernel.preforked import always_preforked
from tests.unit.test_proxy import Server
from tests.unit.test_proxy import http_server as unit_http_server

pytestmark = pytest.mark.timeout(300)

PY = sys.executable
CURL = shutil.which("curl")


def http_server() -> AbstractAsyncContextManager[Server]:
    """The unit tests' loopback HTTP server (on the host's 127.0.0.1, outside every sandbox), answering
    "hello from the host"; it counts its connections and keeps each request head."""
    return unit_http_server(b"hello from the host\n")


def paths(srv: Server) -> list[bytes]:
    """The request paths the server saw, in order."""
    return [head.split(b" ")[1] for head in srv.heads if head.startswith(b"GET ")]


NAMES = {
    "allowed.test": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "loop.test": ["127.0.0.1"],
    "ten.test": ["10.20.30.40"],
    "meta.test": ["169.254.169.254"],
}


def _policy(workspace: Path, port: int, *extra: str) -> object:
    return profiles.workspace_write(workspace, network_allow=[f"allowed.test:{port}", "127.0.0.1", *extra])


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@pytest.mark.parametrize("preforked", [False, True])
async def test_curl_and_urllib_allowed_and_refused(workspace: Path, preforked: bool) -> None:
    async with http_server() as srv, Supervisor() as sup:
        if preforked:
            always_preforked(sup)  # the proxy's listener comes with a sandbox built ahead too
        sup.proxy.resolver = static_resolver(NAMES)
        policy = _policy(workspace, srv.port)
        ok = await sup.run(
            [CURL, "-sS", "--max-time", "20", f"http://allowed.test:{srv.port}/via-curl"], policy=policy
        )
        assert (ok.exit_code, ok.stdout) == (0, b"hello from the host\n"), ok.stderr
        assert ok.network is not None
        assert (ok.network["allowed"], ok.network["denied"]) == (1, 0)
        assert ok.network["bytes_down"] > len(b"hello from the host\n")
        refused = await sup.run(
            [CURL, "-sS", "-i", "--max-time", "20", f"http://other.test:{srv.port}/via-curl"], policy=policy
        )
        assert b"HTTP/1.1 403 Forbidden" in refused.stdout
        assert b"no rule of network.allow covers other.test:" in refused.stdout
        assert refused.network is not None
        assert (refused.network["allowed"], refused.network["denied"]) == (0, 1)
        # the refusal is a denial record of layer "proxy" in the Result (and --json), told as it happened
        (denial,) = [d for d in refused.denials if d.layer == "proxy"]
        assert (denial.operation, denial.target, denial.count) == ("connect", f"other.test:{srv.port}", 1)
        assert "no rule of network.allow covers" in denial.hint
        assert denial.to_dict() in refused.to_json()["denials"]  # type: ignore[operator]
        assert sup.totals["denied:proxy:connect"] >= 1
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            "    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end='')\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code, e.read().decode(), end='')\n"
        )
        got = await sup.run([PY, "-c", code, f"http://allowed.test:{srv.port}/via-urllib"], policy=policy)
        assert got.stdout == b"hello from the host\n", got.stderr
        assert got.network is not None
        got_down = got.network["bytes_down"]
        got = await sup.run([PY, "-c", code, f"http://other.test:{srv.port}/via-urllib"], policy=policy)
        assert got.stdout.startswith(b"403 corral proxy: refused: no rule of network.allow covers other.test")
        # HTTPS goes through CONNECT: curl's tunnel to a listed name is opened (the test server speaks no
        # TLS, so the handshake itself fails after the tunnel), to an unlisted one refused with the 403.
        tunnel = await sup.run(
            [CURL, "-sS", "-k", "--max-time", "20", f"https://allowed.test:{srv.port}/"], policy=policy
        )
        assert tunnel.network is not None
        assert tunnel.network["allowed"] == 1
        closed = await sup.run(
            [CURL, "-sS", "-k", "--max-time", "20", f"https://other.test:{srv.port}/"], policy=policy
        )
        assert b"403" in closed.stderr
        assert closed.network is not None
        assert closed.network["denied"] == 1
        # the supervisor-wide live totals the exporter reads (no domain label), and ChildStats' net_* fields
        assert (sup.proxy.totals.allowed, sup.proxy.totals.denied) == (3, 3)
        assert sup.proxy.totals.bytes_down >= ok.network["bytes_down"] + got_down
    assert paths(srv) == [b"/via-curl", b"/via-urllib"]
    assert srv.accepted == 3  # two GETs and the tunnel: none of the refused requests reached it


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_socks5_from_a_sandbox(workspace: Path) -> None:
    """curl speaking SOCKS5 (socks5h: the proxy resolves) to the same port: the list decides."""
    async with http_server() as srv, Supervisor() as sup:
        sup.proxy.resolver = static_resolver(NAMES)
        policy = _policy(workspace, srv.port)
        socks = [CURL, "-sS", "--max-time", "20", "-x", "socks5h://127.0.0.1:3128"]
        ok = await sup.run([*socks, f"http://allowed.test:{srv.port}/via-socks"], policy=policy)
        assert (ok.exit_code, ok.stdout) == (0, b"hello from the host\n"), ok.stderr
        refused = await sup.run([*socks, f"http://other.test:{srv.port}/via-socks"], policy=policy)
        assert refused.exit_code != 0
        assert b"SOCKS5" in refused.stderr  # curl: "Can't complete SOCKS5 connection to other.test. (2)"
        (denial,) = [d for d in refused.denials if d.layer == "proxy"]
        assert denial.target == f"other.test:{srv.port}"
        assert denial.hint.startswith("SOCKS5 CONNECT refused: no rule of network.allow covers other.test")
    assert paths(srv) == [b"/via-socks"]


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_live_child_stats_and_domain_counts(workspace: Path) -> None:
    """While the command runs, ChildStats carries its proxy counters; the operator's per-domain counts
    name only the listed domain."""
    async with http_server() as srv, Supervisor(monitor_interval=0.05) as sup:
        sup.proxy = ProxyConfig(resolver=static_resolver(NAMES), count_domains=("allowed.test",))
        script = (
            f"{CURL} -s -o /dev/null http://allowed.test:{srv.port}/; "
            f"{CURL} -s -o /dev/null http://other.test:{srv.port}/; exec sleep 30"
        )
        child = await sup.start(["/bin/sh", "-c", script], policy=_policy(workspace, srv.port))
        async with child:
            for _ in range(400):  # the sampler's full rounds (every 4 x 0.05 s) fill last_stats
                if child.last_stats is not None and child.last_stats.net_denied:
                    break
                await anyio.sleep(0.05)
            st = child.last_stats
            assert st is not None
            assert (st.net_allowed, st.net_denied) == (1, 1)
            assert st.net_bytes_down is not None
            assert st.net_bytes_down > 0
            child.kill()
            await child.wait()
        assert sup.proxy.by_domain == {("allowed.test", "allowed"): 1, ("other", "denied"): 1}


ATTACKS = r"""
import json, socket, sys
port = int(sys.argv[1])
out = {}
def ask(name, data):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(data)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if got.startswith(b"HTTP/1.1 200"):
                break
    except OSError as e:
        got += repr(e).encode()
    s.close()
    line, body = got.split(b"\r\n", 1)[0], got.rsplit(b"\r\n\r\n", 1)[-1]
    out[name] = line.decode(errors="replace") + " | " + body.decode(errors="replace")
def connect(target, host=None):
    head = f"CONNECT {target} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host else "") + "\r\n"
    return head.encode()
ask("unlisted", connect(f"other.test:{port}"))
ask("resolves-loopback", connect(f"loop.test:{port}"))
ask("resolves-10", connect("ten.test:443"))
ask("resolves-metadata", connect("meta.test:80"))
LITS = ("127.0.0.1", "127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001", "[::ffff:127.0.0.1]")
for lit in LITS:
    ask("literal " + lit, connect(f"{lit}:{port}"))
meta = b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
ask("metadata-literal", meta)
ask("port-rule", connect(f"allowed.test:{port + 1 if port < 65535 else port - 1}"))
ask("host-smuggled", connect(f"allowed.test:{port}", host="other.test"))
smuggled = f"GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n"
ask("get-host-smuggled", smuggled.encode())
# around the proxy: the host's loopback server directly (the sandbox's loopback is its own)
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = type(e).__name__
# the proxy's port: taken, so no process of the sandbox can stand in for it
try:
    b = socket.socket(); b.bind(("127.0.0.1", 3128)); b.listen(); out["bind-3128"] = "bound"
except OSError as e:
    out["bind-3128"] = type(e).__name__
print(json.dumps(out))
"""


async def test_refusal_classes_from_inside(workspace: Path) -> None:
    """Each refusal class, tried from inside a real sandbox over a raw socket: a 403 naming why, and at
    the host's server (checked from outside) not one connection."""
    async with http_server() as srv, Supervisor() as sup:
        sup.proxy.resolver = static_resolver(NAMES)
        # the list names the names, but no address: listed names that resolve to private ones stay refused
        policy = profiles.workspace_write(
            workspace,
            network_allow=[f"allowed.test:{srv.port}", f"loop.test:{srv.port}", "ten.test", "meta.test"],
        )
        r = await sup.run([PY, "-c", ATTACKS, str(srv.port)], policy=policy)
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
    assert srv.accepted == 0, out
    for name, answer in out.items():
        if name in ("direct", "bind-3128"):
            continue
        assert answer.startswith("HTTP/1.1 403"), (name, answer)
    assert "no rule of network.allow covers other.test" in out["unlisted"]
    assert "loopback" in out["resolves-loopback"]
    assert "names the address" in out["resolves-loopback"]
    assert "private" in out["resolves-10"]
    assert "link-local" in out["resolves-metadata"]
    for lit in (
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "[::ffff:127.0.0.1]",
    ):
        assert "no rule of network.allow covers" in out["literal " + lit], lit
    assert "no rule of network.allow covers 169.254.169.254:80" in out["metadata-literal"]
    assert "no rule of network.allow covers allowed.test:" in out["port-rule"]
    assert "Host header" in out["host-smuggled"]
    assert "Host header" in out["get-host-smuggled"]
    assert out["direct"] == "ConnectionRefusedError"
    assert out["bind-3128"] == "OSError"  # EADDRINUSE
    assert r.network is not None
    assert r.network["allowed"] == 0
    assert r.network["denied"] == len(out) - 2


#: CONNECTs each target (argv[1], a JSON list) through the sandbox's proxy; prints each answer's status
#: line and body as JSON.
TUNNELS = r"""
import json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got or got.startswith(b"HTTP/1.1 403") and not got.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    out[target] = got.split(b"\r\n", 1)[0].decode() + " | " + got.rsplit(b"\r\n\r\n", 1)[-1].decode()
print(json.dumps(out))
"""


async def test_host_addresses_and_networks_refused_from_inside(workspace: Path) -> None:
    """A listed name that resolves to one of the host's own interface addresses (each non-loopback,
    non-link-local one of this machine, with a server the test listens with on it), to another address
    on one of the host's networks, or to loopback in its NAT64 and 6to4 IPv6 forms: each is a 403 naming
    why, and the servers on the host's addresses (checked from outside) see no connection. With the
    address named in network.allow the same request reaches the server: the refusal is what stopped it."""
    own, networks = host_interfaces()
    targets = [a for a in own if not a.is_loopback and not a.is_link_local]
    if not targets:
        pytest.skip("this host has no interface address but loopback and link-local ones")
    names: dict[str, list[str]] = {"nat64.test": ["64:ff9b::7f00:1"], "sixtofour.test": ["2002:7f00:1::1"]}
    servers: dict[str, tuple[str, int]] = {}  # name -> (address, port)
    accepted: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        for i, address in enumerate(targets):
            listener = await anyio.create_tcp_listener(local_host=str(address), local_port=0)
            name = f"own{i}.test"
            names[name] = [str(address)]
            servers[name] = (str(address), listener.extra(anyio.abc.SocketAttribute.local_port))
            accepted[name] = 0

            async def handle(stream: anyio.abc.SocketStream, name: str = name) -> None:
                accepted[name] += 1
                await stream.aclose()

            tg.start_soon(listener.serve, handle)
        neighbours = {}
        for j, network in enumerate(n for n in networks if not n.is_loopback and not n.is_link_local):
            near = next((network.network_address + k for k in range(1, 5) if network.network_address + k
                         not in own and k < network.num_addresses), None)  # fmt: skip
            if near is not None:
                names[f"near{j}.test"] = [str(near)]
                neighbours[f"near{j}.test"] = network
        async with Supervisor() as sup:
            sup.proxy.resolver = static_resolver(names)
            ports = {name: port for name, (_a, port) in servers.items()}
            asked = [f"{n}:{ports.get(n, 443)}" for n in names]
            allow = [f"{n}:{ports.get(n, 443)}" for n in names]
            policy = profiles.workspace_write(workspace, network_allow=allow)
            r = await sup.run([PY, "-c", TUNNELS, json.dumps(asked)], policy=policy)
            assert r.exit_code == 0, r.stderr
            out = json.loads(r.stdout)
            assert sum(accepted.values()) == 0, (accepted, out)
            for target, answer in out.items():
                assert answer.startswith("HTTP/1.1 403"), (target, answer)
                assert "names the address" in answer, (target, answer)
            for name, (_address, port) in servers.items():
                answer = out[f"{name}:{port}"]
                assert "an address of the supervisor's host" in answer or "unique local" in answer, answer
            for name, network in neighbours.items():
                answer = out[f"{name}:443"]
                assert f"a network of the supervisor's host ({network})" in answer or "unique local" in answer
            assert "carrying 127.0.0.1, a loopback address" in out["nat64.test:443"]
            assert "carrying 127.0.0.1, a loopback address" in out["sixtofour.test:443"]
            # the control: the same requests with the addresses named in network.allow reach the servers
            named = [a for a, _p in servers.values()]
            named = [f"[{a}]" if ":" in a else a for a in named]
            control = profiles.workspace_write(
                workspace,
                network_allow=[
                    *allow,
                    *(f"{a}:{p}" for a, (_x, p) in zip(named, servers.values(), strict=True)),
                ],
            )
            asked = [f"{n}:{p}" for n, (_a, p) in servers.items()]
            r = await sup.run([PY, "-c", TUNNELS, json.dumps(asked)], policy=control)
            assert r.exit_code == 0, r.stderr
            for target, answer in json.loads(r.stdout).items():
                assert answer.startswith("HTTP/1.1 200"), (target, answer)
        tg.cancel_scope.cancel()
    assert all(n >= 1 for n in accepted.values()), accepted


async def test_thousand_connections_from_one_sandbox_are_bounded(workspace: Path) -> None:
    code = r"""
import json, resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
def connect():
    try:
        return socket.create_connection(("127.0.0.1", 3128), timeout=30)
    except ConnectionResetError:  # reset before the connect returned
        return None
socks = [connect() for _ in range(1000)]
def first(s):
    try:
        return s.recv(200)[:12].decode() if s is not None else "reset"
    except ConnectionResetError:
        return "reset"
answers = [first(s) for s in socks[60:]]
print(json.dumps([answers.count("HTTP/1.1 503"), answers.count("reset")]))
"""
    async with http_server() as srv, Supervisor() as sup:
        sup.proxy.resolver = static_resolver(NAMES)
        sup.proxy.max_connections = 50
        sup.proxy.head_timeout = 60
        r = await sup.run([PY, "-c", code], policy=_policy(workspace, srv.port))
    assert r.exit_code == 0, r.stderr
    answered, reset = json.loads(r.stdout)
    assert answered >= 1  # past the bound: a 503 at once, or past as many pending answers a reset
    assert answered + reset == 940
    assert r.network is not None
    assert r.network["peak_connections"] == 50
    assert r.network["denied"] == 950
    assert srv.accepted == 0


async def test_parallel_sandboxes_with_different_lists_never_mix(workspace: Path) -> None:
    if CURL is None:
        pytest.skip("curl is not installed")
    async with http_server() as srv, Supervisor(max_concurrency=16) as sup:
        sup.proxy.resolver = static_resolver(NAMES)
        lists = {
            "a": profiles.workspace_write(workspace, network_allow=[f"allowed.test:{srv.port}", "127.0.0.1"]),
            "b": profiles.workspace_write(workspace, network_allow=[f"other.test:{srv.port}", "127.0.0.1"]),
        }
        results: list[tuple[str, str, int]] = []

        async def one(who: str, name: str) -> None:
            r = await sup.run(
                [
                    CURL,
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "30",
                    f"http://{name}:{srv.port}/",
                ],
                policy=lists[who],
            )
            results.append((who, name, int(r.stdout or b"0")))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                for who in lists:
                    for name in ("allowed.test", "other.test"):
                        tg.start_soon(one, who, name)
    assert len(results) == 24
    for who, name, code in results:
        expected = 200 if (who, name) in (("a", "allowed.test"), ("b", "other.test")) else 403
        assert code == expected, (who, name, code)
    assert srv.accepted == 12


def _index_url() -> str | None:
    """The index pip is configured with here, from pip's own configuration: an `index-url` setting of any
    of its scopes (`pip config list`: the environment's first, as pip reads them) when there is one, else
    pip's built-in default; None when pip's configuration says there is none (`no-index`). (No registry's
    name is written in this repository.)"""
    got = subprocess.run([PY, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    settings: dict[str, str] = {}
    for line in got.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings.setdefault(key.rsplit(".", 1)[-1], value.strip().strip("'\""))
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        return None
    if settings.get("index-url"):
        return settings["index-url"].split()[0]
    from pip._internal.models.index import PyPI

    return str(PyPI.simple_url)


async def _run_with_proxy(sup: Supervisor, cmd: list[str], policy: object) -> tuple[Result, list[Denial]]:
    """Run `cmd`; its Result and what its proxy refused (every 403 and 502 it answered)."""
    child = await sup.start(cmd, policy=policy)  # type: ignore[arg-type]
    async with child:
        result = await child.wait()
    assert child.proxy is not None
    return result, list(child.proxy.denials)


@pytest.mark.slow
async def test_pip_download_through_the_proxy(workspace: Path) -> None:
    """A real `pip download --no-deps` of a small package through the proxy, from the index pip is
    configured with here, with only that index's host in network.allow: the index's page comes through,
    and the one thing refused, if any, is the host the index's links send the file to (an index may
    serve its files from another host); listing that host too, as the refusal names it, the download
    succeeds. The same download with an empty list is refused (a 403 naming the index's host, nothing
    downloaded). `--isolated`: pip's user settings (local file indexes, find-links) are left out, so the
    package can only come through the proxy. Skipped, saying why, when pip has no index configured or
    the proxy (on the host) cannot reach it."""
    from urllib.parse import urlsplit

    index = _index_url()
    if index is None:
        pytest.skip("pip is configured with no index here (no-index)")
    parts = urlsplit(index)
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        pytest.skip(f"pip's index is not an HTTP(S) URL here: {index!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def cmd(dest: Path) -> list[str]:
        return [PY, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir", "--index-url",
                index, "--retries", "0", "--timeout", "60", "-d", str(dest), "six"]  # fmt: skip

    def unreachable(refused: list[Denial]) -> str | None:
        hints = [d.hint for d in refused if "does not resolve" in d.hint or "cannot connect" in d.hint]
        return hints[0] if hints else None

    async with Supervisor() as sup:
        dest = workspace / "allowed"
        allow = [host if port in (80, 443) else f"{host}:{port}"]
        result, refused = await _run_with_proxy(
            sup, cmd(dest), profiles.workspace_write(workspace, network_allow=allow)
        )
        if result.exit_code != 0 and unreachable(refused):
            pytest.skip(f"pip's index is unreachable from this host: {unreachable(refused)}")
        assert result.network is not None
        assert result.network["allowed"] >= 1  # the index's page, through the proxy
        if result.exit_code != 0:  # the file is on another host: the one refusal names it
            (files,) = refused
            assert files.hint.startswith("CONNECT refused: no rule of network.allow covers "), files
            files_host = files.target.rsplit(":", 1)[0]
            assert files_host != host
            allow.append(files.target if not files.target.endswith((":443", ":80")) else files_host)
            result, refused = await _run_with_proxy(
                sup, cmd(dest), profiles.workspace_write(workspace, network_allow=allow)
            )
            if result.exit_code != 0 and unreachable(refused):
                pytest.skip(
                    f"the host pip's index links to is unreachable from this host: {unreachable(refused)}"
                )
        assert result.exit_code == 0, (result.stderr[-3000:], refused)
        assert refused == []
        assert result.network is not None
        assert result.network["denied"] == 0
        (wheel,) = dest.iterdir()
        assert wheel.name.startswith("six-")
        assert result.network["bytes_down"] > wheel.stat().st_size  # it came through the proxy
        empty_dest = workspace / "empty"
        empty, refused = await _run_with_proxy(
            sup, cmd(empty_dest), profiles.workspace_write(workspace, network="proxy")
        )
    assert empty.exit_code != 0
    assert empty.network is not None
    assert empty.network["allowed"] == 0
    assert empty.network["denied"] >= 1
    assert {d.target for d in refused} == {f"{host}:{port}"}
    assert "no rule of network.allow covers" in refused[0].hint
    assert "network.allow is empty" in refused[0].hint
    assert not empty_dest.exists() or not any(empty_dest.iterdir())
