"""One sandbox's slow name lookups must not stall the proxy's name resolution for every other sandbox
(issue 11, item 6: a sandbox must not be able to stop the supervisor's work for other tenants).

The proxy resolves each allowed name itself, with the host's resolver (getaddrinfo, a blocking call, in a
thread). Those threads were the event loop's default executor on asyncio (min(32, CPUs + 4) threads: 6 on
a 2-core machine) and the process-wide thread limiter on trio (40, shared with all of the supervisor's
other worker-thread work). A sandbox allowed `*.example.org` asks for 60 names below it that its own
name server never answers (or that the host's resolver is slow on: a resolver timing out is 5 to 30 s a
name); the threads were all its, and another sandbox's lookup of a name that resolves at once waited
behind them until its connect timeout refused it ("does not resolve").

Real getaddrinfo, real sandboxes: the test runs a supervisor in a private mount namespace (unshare -m)
whose /etc/resolv.conf (bind-mounted over the host's there only) names a loopback DNS server the test
starts; it answers names starting with "fast" at once (127.0.0.1, which the proxy then refuses as
loopback: the refusal says the name resolved) and never answers the others. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SCRATCH = Path("/var/tmp/corral-tests")

DRIVER = r'''
import json, os, socket, struct, sys, threading, time
import anyio
from policies import profiles
from supervisor import Supervisor

NS_ADDR, WS, ATTACKERS = sys.argv[1], sys.argv[2], int(sys.argv[3])


def dns_server(sock):
    """Answer "fast*" names (A 127.0.0.1; AAAA none) at once; drop every other query."""
    while True:
        try:
            data, peer = sock.recvfrom(512)
        except OSError:
            return
        if len(data) < 17:
            continue
        i, labels = 12, []
        while i < len(data) and data[i]:
            labels.append(data[i + 1 : i + 1 + data[i]])
            i += 1 + data[i]
        qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
        question = data[12 : i + 5]
        if not labels or not labels[0].startswith(b"fast"):
            continue  # never answered: the lookup waits for the resolver's timeout
        answers = b""
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + bytes([127, 0, 0, 1])
        head = data[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if answers else 0, 0, 0)
        sock.sendto(head + question + answers, peer)


ATTACK = r"""
import socket, sys, time
n = int(sys.argv[1])
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(b"CONNECT slow%d.corral-test.example.org:443 HTTP/1.1\r\n\r\n" % i)
    conns.append(s)
print("sent", flush=True)
time.sleep(12)
"""

VICTIM = r"""
import socket, time
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", 3128), timeout=60)
s.sendall(b"CONNECT fast.corral-test.example.org:443 HTTP/1.1\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(round(time.monotonic() - t, 2))
print(data.decode(errors="replace").split("\r\n\r\n", 1)[-1].strip())
"""


async def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((NS_ADDR, 53))
    threading.Thread(target=dns_server, args=(sock,), daemon=True).start()
    policy = profiles.workspace_write(WS, network_allow=["*.corral-test.example.org"], timeout=60)
    async with Supervisor() as sup:
        sup.proxy.connect_timeout = 8.0
        attacker = await sup.start(["/usr/bin/python3", "-c", ATTACK, str(ATTACKERS)], policy=policy)
        line = b""
        with anyio.fail_after(30):
            async for chunk in attacker.stdout:
                line += chunk
                if b"sent" in line:
                    break
        await anyio.sleep(1.0)  # the proxy has read every request and started resolving
        victim = await sup.run(["/usr/bin/python3", "-c", VICTIM], policy=policy)
        attacker.kill()
        await attacker.wait()
    out = victim.stdout.decode(errors="replace").splitlines()
    print(json.dumps({"exit": victim.exit_code, "out": out, "err": victim.stderr.decode(errors="replace")}))

anyio.run(main)
'''


def _victim_after(attackers: int) -> tuple[float, str]:
    """Seconds the victim's CONNECT took, and the proxy's answer, with `attackers` lookups pending."""
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"proxy-dns-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    ws = d / "ws"
    ws.mkdir()
    ns_addr = f"127.{random.randrange(1, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"
    resolv = d / "resolv.conf"
    resolv.write_text(f"nameserver {ns_addr}\noptions timeout:4 attempts:1\n")
    script = (
        f"mount --bind {resolv} /etc/resolv.conf && "
        f'exec "{sys.executable}" -c "$DRIVER" {ns_addr} {ws} {attackers}'
    )
    try:
        p = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            cwd=ROOT,
            env={**os.environ, "DRIVER": DRIVER, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            timeout=150,
            check=False,
        )
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-3000:]
    report = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert report["exit"] == 0, report
    return float(report["out"][0]), report["out"][1]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) is not installed")
def test_one_sandboxs_slow_lookups_do_not_stall_anothers() -> None:
    # The control: alone, the victim's name resolves (to loopback, which the proxy refuses) at once.
    elapsed, body = _victim_after(0)
    assert "resolves to 127.0.0.1" in body, body
    assert elapsed < 3.0, (elapsed, body)
    # With 60 lookups of another sandbox pending. On main: refused after the 8 s connect timeout,
    # "fast.corral-test.example.org does not resolve ()", its lookup queued behind the attacker's.
    elapsed, body = _victim_after(60)
    assert "resolves to 127.0.0.1" in body, (elapsed, body)
    assert elapsed < 3.0, (elapsed, body)


async def test_system_resolver_still_resolves() -> None:
    """The resolver's own thread pool answers as before (here from /etc/hosts), on either backend."""
    from supervisor._proxy import system_resolver

    found = {str(a) for a in await system_resolver("localhost", 443)}
    assert "127.0.0.1" in found, found
