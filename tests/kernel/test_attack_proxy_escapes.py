"""Requests a sandbox sends to corral's network proxy must not carry raw control bytes into the denial
records the host side reads (issue 11, item 7).

The proxy records every refusal as a `Denial` whose target is the request's own host:port: a CONNECT line,
an absolute URL or a SOCKS5 domain the sandbox wrote, with ESC, BEL and the like in it. The CLI escaped its
lines and `--json` its targets, but the record itself (`Result.denials`, the `denied` event, `line()`,
what a cluster driver or an API caller prints) held the bytes raw: an OSC set-title and a CSI clear-screen
reached whoever printed it. Each request below is sent from a real sandbox under network mode "proxy"; the
records are checked from outside.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import Supervisor
from supervisor._proxy import static_resolver
from supervisor._types import Denial

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

SCRATCH = Path("/var/tmp/corral-tests")

REQUESTS = r"""
import socket, sys
for req in [
    b"CONNECT \x1b]0;pwned\x07x:443 HTTP/1.1\r\n\r\n",
    b"GET http://a\x1b[2J.test:80/ HTTP/1.1\r\n\r\n",
    b"CONNECT ok.test:99999\x1b HTTP/1.1\r\n\r\n",
    b"\x05\x01\x00\x05\x01\x00\x03\x0ce\x1b]0;x\x07.test\x00\x50",
]:
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(req)
    while s.recv(4096):
        pass
    s.close()
"""


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"proxy-esc-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def _raw(d: Denial) -> list[str]:
    """What in `d` a terminal would act on: its non-printable characters, by field."""
    fields = (("target", d.target), ("hint", d.hint))
    return [f"{name}: {ch!r}" for name, text in fields for ch in text if not ch.isprintable()]


async def test_proxy_denials_carry_no_control_bytes(ws: Path) -> None:
    async with Supervisor() as sup:
        sup.proxy.resolver = static_resolver({})  # nothing leaves the machine
        policy = profiles.workspace_write(ws, network_allow=["allowed.test"], timeout=60)
        events: list[Denial] = []
        with sup.subscribe() as stream:
            r = await sup.run(["/usr/bin/python3", "-c", REQUESTS], policy=policy)
            while True:
                try:
                    ev = stream.receive_nowait()
                except anyio.WouldBlock:
                    break
                if ev.kind == "denied" and ev.denial is not None:
                    events.append(ev.denial)
    assert r.exit_code == 0, r.stderr.decode(errors="replace")
    proxy = [d for d in r.denials if d.layer == "proxy"]
    assert len(proxy) == 4, r.denials  # each request was refused and recorded
    for d in [*proxy, *events]:
        assert not _raw(d), d  # on main: target '\x1b]0;pwned\x07x:443', raw
        assert "\x1b" not in d.line()
    assert any("\\x1b]0;pwned\\x07" in d.target for d in proxy)  # escaped, still readable
    assert [d.to_dict()["target"] for d in proxy] == [d.target for d in proxy]
