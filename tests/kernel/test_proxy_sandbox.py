"""Network mode "proxy" in real sandboxes: curl and Python's urllib pick up the proxy from the environment;
the policy's list decides; every refusal is a 403 the tool shows, counted in Result.network; attacks from
inside (refusal classes over a raw socket to the proxy, going around it, taking its port) are checked from
outside, at the test's own loopback servers, which must not have seen a connection. The test servers run
on the host's loopback; a static resolver (the test hook `Supervisor.proxy.resolver`) sends test names to
them, and to private addresses for the refusal classes. Nothing is sent off this machine, except by the pip
test, which downloads from the index pip itself is configured with."""

from __future__ import annotations

import json
import re
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
from supervisor._proxy import ProxyConfig, static_resolver
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


def _index_url() -> str:
    """The index pip is configured with here, from pip's own configuration: its `index-url` setting when
    there is one, else pip's built-in default. (No registry's name is written in this repository.)"""
    got = subprocess.run(
        [PY, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True, check=False
    )
    if got.returncode == 0 and got.stdout.strip():
        return got.stdout.strip()
    from pip._internal.models.index import PyPI

    return str(PyPI.simple_url)


async def _run_with_proxy(sup: Supervisor, cmd: list[str], policy: object) -> tuple[Result, list[Denial]]:
    """Run `cmd`; its Result and what its proxy refused."""
    child = await sup.start(cmd, policy=policy)  # type: ignore[arg-type]
    async with child:
        result = await child.wait()
    assert child.proxy is not None
    return result, list(child.proxy.denials)


@pytest.mark.slow
async def test_pip_download_through_the_proxy(workspace: Path) -> None:
    """A real `pip download --no-deps` through the proxy, from the index pip is configured with. With an
    empty list it is refused, and the refusal names the index's host. Then, as an agent would, each run
    adds what the first refusal's record says to add (the host it names; or, where that host resolves to
    a non-global address, as on a machine whose resolver sends it to a local mirror, the address its hint
    names) until the download succeeds: every refusal must be actionable, and a few steps must do."""
    from urllib.parse import urlsplit

    index = _index_url()
    host = urlsplit(index).hostname
    if not host or urlsplit(index).scheme not in ("http", "https"):
        pytest.skip(f"pip's index is not an HTTP(S) URL here: {index!r}")
    dest = workspace / "dl"
    cmd = [PY, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir", "--index-url", index,
           "--retries", "0", "--timeout", "60", "-d", str(dest), "six"]  # fmt: skip
    async with Supervisor() as sup:
        empty, refused = await _run_with_proxy(sup, cmd, profiles.workspace_write(workspace, network="proxy"))
        assert empty.exit_code != 0
        assert empty.network is not None
        assert empty.network["allowed"] == 0
        assert refused
        assert refused[0].target.rsplit(":", 1)[0] == host
        assert "no rule of network.allow covers" in refused[0].hint
        assert not dest.exists() or not any(dest.iterdir())
        allowed = [host]
        steps = []
        for _ in range(4):
            result, refused = await _run_with_proxy(
                sup, cmd, profiles.workspace_write(workspace, network_allow=allowed)
            )
            if result.exit_code == 0:
                break
            assert refused, result.stderr
            named = re.search(r"add '([^']+)' to it", refused[0].hint)
            allowed.append(named.group(1) if named else refused[0].target.rsplit(":", 1)[0])
            steps.append(refused[0].hint)
        assert result.exit_code == 0, (result.stderr, steps)
        assert refused == []
        assert result.network is not None
        assert result.network["allowed"] >= 1
        assert result.network["bytes_down"] > 1000
    assert any(p.name.startswith("six-") for p in dest.iterdir())
