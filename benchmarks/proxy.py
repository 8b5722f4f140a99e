"""corral's network proxy (network mode "proxy") against its baselines, measured in the same run (a benchmark,
not a test). Three figures:

1. bulk: curl downloading a 200 MB body from a loopback HTTP server (a separate process), inside a sandbox
   under network mode "proxy" (through the proxy, which runs in this supervisor's event loop) and inside a
   sandbox with the host's network (direct). Throughput ratio proxy/direct (best of --rounds, alternated);
   target >= 0.5. With it, the CPU each download took in the server, the sandbox and this supervisor.
2. setup: the latency one small plain-HTTP request (a new connection each time) gains through the proxy:
   a client process makes N sequential requests directly and N through a ChildProxy this process serves on
   a loopback listener; the median difference; target <= 1 ms.
3. spawn: /bin/true in a "proxy" sandbox against a "none" sandbox (same profile otherwise; pre-forked
   sandboxes on for both, as by default); median ratio; target <= 1.2.

    .venv/bin/python benchmarks/proxy.py [--size-mb 200] [--requests 300] [--spawns 100] [--backend trio]
                                         [--rounds 3] [--json out.json]

The test server is reached through a name the benchmark's static resolver maps to 127.0.0.1 (the policy
names that address), as in the tests. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policies import NetworkPolicy, profiles
from supervisor import DEVNULL, Supervisor
from supervisor._proxy import ChildProxy, ProxyConfig, static_resolver

PY = sys.executable
CURL = shutil.which("curl") or "/usr/bin/curl"

#: A loopback HTTP server in its own process: every request is answered with `size` bytes (from one
#: buffer, sent again and again), then the connection is closed. Prints its port.
SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    size = int(sys.argv[1])
    chunk = b"x" * (1 << 20)
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0)); srv.listen(512)
    print(srv.getsockname()[1], flush=True)
    def serve(c):
        with c:
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                got = c.recv(65536)
                if not got:
                    return
                data += got
            body = size if data.startswith(b"GET /big") else 2
            c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % body)
            left = body
            while left > 0:
                n = min(left, len(chunk))
                c.sendall(chunk[:n])
                left -= n
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)

#: A client process: N sequential small GETs (a new connection each), to `host:port` directly or through a
#: proxy; prints each request's latency in ms as JSON.
CLIENT = textwrap.dedent(
    """
    import json, socket, sys, time
    host, port, target, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    out = []
    for i in range(n + 20):
        t = time.perf_counter()
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = target.split("/")[2] if "//" in target else host
        s.sendall(("GET %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n" % (target, name)).encode())
        while s.recv(65536):
            pass
        s.close()
        if i >= 20:
            out.append((time.perf_counter() - t) * 1000)
    print(json.dumps(out))
    """
)


def _start_server(size: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([PY, "-c", SERVER, str(size)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def _bulk(
    sup: Supervisor, server_pid: int, port: int, size_mb: int, workdir: str, rounds: int
) -> dict[str, float]:
    url = f"http://bench.test:{port}/big"
    proxied = profiles.workspace_write(workdir, network_allow=[f"bench.test:{port}", "127.0.0.1"])
    direct = profiles.workspace_write(workdir, network="host")
    cmd = [
        CURL,
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "300",
        "--resolve",
        f"bench.test:{port}:127.0.0.1",
        url,
    ]
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu: dict[str, list[tuple[float, float, float]]] = {"direct": [], "proxy": []}
    for _ in range(rounds):  # alternated, best of `rounds` each: the machine is shared
        for name, policy in (("direct", direct), ("proxy", proxied)):
            server_cpu, own_cpu = _cpu_s(server_pid), resource.getrusage(resource.RUSAGE_SELF)
            t = time.perf_counter()
            r = await sup.run(cmd, policy=policy, stdout=DEVNULL)
            elapsed = time.perf_counter() - t
            own = resource.getrusage(resource.RUSAGE_SELF)
            cpu[name].append(
                (
                    _cpu_s(server_pid) - server_cpu,
                    r.cpu_s,
                    own.ru_utime + own.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime,
                )
            )
            if r.exit_code != 0:
                raise SystemExit(f"{name} download failed: {r.stderr.decode()}")
            if name == "proxy":
                assert r.network is not None
                assert r.network["bytes_down"] >= size_mb << 20
            times[name].append(elapsed)
    best = {k: min(v) for k, v in times.items()}
    mb = size_mb * 1.048576
    out = {
        "direct_MBps": round(mb / best["direct"], 1),
        "proxy_MBps": round(mb / best["proxy"], 1),
        "ratio": round(best["direct"] / best["proxy"], 3),
    }
    for name, samples in cpu.items():  # medians, ms per download: where the CPU goes
        for i, who in enumerate(("server", "sandbox", "supervisor")):
            out[f"{name}_cpu_ms_{who}"] = round(statistics.median(s[i] for s in samples) * 1000, 1)
    return out


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of process `pid` so far (/proc/PID/stat, all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(args: list[str]) -> list[float]:
    got = await anyio.run_process([PY, "-c", CLIENT, *args])
    return list(json.loads(got.stdout))


async def _setup(port: int, n: int) -> dict[str, float]:
    config = ProxyConfig(resolver=static_resolver({"bench.test": ["127.0.0.1"]}))
    child = ChildProxy(NetworkPolicy(mode="proxy", allow=(f"bench.test:{port}", "127.0.0.1")), config)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    proxy_port = listener.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(child.serve, listener)
        direct = await _client(["127.0.0.1", str(port), "/small", str(n)])
        proxied = await _client(["127.0.0.1", str(proxy_port), f"http://bench.test:{port}/small", str(n)])
        tg.cancel_scope.cancel()
    d, p = statistics.median(direct), statistics.median(proxied)
    return {"direct_ms": round(d, 3), "proxy_ms": round(p, 3), "added_ms": round(p - d, 3)}


async def _spawn(sup: Supervisor, n: int, workdir: str) -> dict[str, float]:
    policies = {
        "none": profiles.workspace_write(workdir),
        "proxy": profiles.workspace_write(workdir, network_allow=["example.org"]),
    }
    times: dict[str, list[float]] = {k: [] for k in policies}
    for policy in policies.values():  # warm-up: compile, and the pre-forked pools fill
        for _ in range(10):
            await sup.run(["/bin/true"], policy=policy)
    for _ in range(n):  # interleaved, so that load changes hit both alike
        for name, policy in policies.items():
            t = time.perf_counter()
            r = await sup.run(["/bin/true"], policy=policy)
            times[name].append((time.perf_counter() - t) * 1000)
            assert r.exit_code == 0
    none, proxy = statistics.median(times["none"]), statistics.median(times["proxy"])
    return {"none_ms": round(none, 3), "proxy_ms": round(proxy, 3), "ratio": round(proxy / none, 3)}


async def main(opts: argparse.Namespace) -> dict[str, dict[str, float]]:
    server, port = _start_server(opts.size_mb << 20)
    try:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as workdir:
            async with Supervisor() as sup:
                sup.proxy.resolver = static_resolver({"bench.test": ["127.0.0.1"]})
                results = {"bulk": await _bulk(sup, server.pid, port, opts.size_mb, workdir, opts.rounds)}
                results["setup"] = await _setup(port, opts.requests)
                results["spawn"] = await _spawn(sup, opts.spawns, workdir)
    finally:
        server.kill()
        server.wait()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="bulk downloads each way, alternated (best of)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--spawns", type=int, default=100)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--json", dest="json_file")
    opts = parser.parse_args()
    results = anyio.run(main, opts, backend=opts.backend)
    b, s, p = results["bulk"], results["setup"], results["spawn"]
    print(f"bulk {opts.size_mb} MB: direct {b['direct_MBps']} MB/s, proxy {b['proxy_MBps']} MB/s, "
          f"ratio {b['ratio']} (target >= 0.5)")  # fmt: skip
    for name in ("direct", "proxy"):
        server, sandbox, own = (b[f"{name}_cpu_ms_{who}"] for who in ("server", "sandbox", "supervisor"))
        print(f"  CPU per {name} download (median): server {server} ms, sandbox (curl) {sandbox} ms, "
              f"supervisor {own} ms")  # fmt: skip
    print(f"setup per request (median): direct {s['direct_ms']} ms, proxy {s['proxy_ms']} ms, "
          f"added {s['added_ms']} ms (target <= 1)")  # fmt: skip
    print(f"spawn /bin/true (median): none {p['none_ms']} ms, proxy {p['proxy_ms']} ms, ratio {p['ratio']} "
          f"(target <= 1.2)")  # fmt: skip
    if opts.json_file:
        Path(opts.json_file).write_text(json.dumps(results, indent=2) + "\n")
