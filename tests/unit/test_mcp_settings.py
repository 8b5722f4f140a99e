"""The MCP server's pure parts: when shell strings are accepted, describe_sandbox's words, the output buffers
of background commands, the CLI's option list and --http parsing, and that nothing but `corral mcp` loads the
SDK. No sandboxes here (tests/e2e/test_mcp.py runs the server)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import anyio
import click
import pytest

from policies import profiles
from supervisor import cli
from supervisor.mcp_server import HttpNeedsAsyncioError, McpSettings, _Buffer, describe, is_loopback, serve


def settings(profile: str = "workspace-write", **opts: object) -> McpSettings:
    return McpSettings(policy=profiles.get(profile, "/srv/repo", **opts))  # type: ignore[arg-type]


def test_shell_is_allowed_by_default_and_refused_when_the_policy_cannot_run_it() -> None:
    assert settings().shell_allowed()[0] is True
    assert settings("full-access").shell_allowed()[0] is True
    off = McpSettings(policy=settings().policy, shell=False)
    assert off.shell_allowed() == (False, "the server was started with --no-shell")
    hidden = settings(deny=["/bin"]).shell_allowed()
    assert hidden[0] is False
    assert "/bin" in hidden[1]
    real = os.path.realpath("/bin/sh")
    outside = settings(execute=["/opt/tools"]).shell_allowed()
    assert outside[0] is False
    assert real in outside[1]
    assert settings(execute=[os.path.dirname(real)]).shell_allowed()[0] is True


def test_describe_names_roots_network_and_limits_in_words() -> None:
    d = describe(settings(memory="64M", timeout=30, pids=100))
    assert d.workdir == "/srv/repo"
    assert d.writable == ["/srv/repo"]
    assert d.limits == {"memory": "64 MiB", "pids": "100", "timeout": "30 s"}
    assert "memory 64 MiB" in d.summary
    assert "only loopback" in d.summary
    assert "/srv/repo" in d.summary
    assert d.network == "none"
    ro = describe(settings("read-only"))
    assert ro.writable == []
    assert "write nowhere but a private /tmp" in ro.summary
    full = describe(settings("full-access", network="host"))
    assert full.filesystem_confined is False
    assert "No filesystem confinement" in full.summary
    assert "host's network" in full.summary
    assert "No resource limits" in full.summary


def test_background_buffer_keeps_the_newest_bytes_and_counts_the_dropped() -> None:
    buf = _Buffer(10)
    buf.add(b"0123456789")
    buf.add(b"abcd")
    assert bytes(buf.data) == b"456789abcd"
    assert buf.take(4) == (b"4567", 4)
    assert buf.take(100) == (b"89abcd", 0)  # the drop count is reported once
    assert buf.take(100) == (b"", 0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.invalid", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_http_option_parsing() -> None:
    assert cli._host_port("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert cli._host_port("[::1]:0") == ("[::1]", 0)
    assert cli._host_port("9000") == ("127.0.0.1", 9000)
    for bad in ("host:port", "127.0.0.1:70000", ":80"):
        with pytest.raises(click.UsageError):
            cli._host_port(bad)


def test_mcp_takes_every_run_option_but_the_one_command_ones() -> None:
    run = {p.name for p in cli.run.params}
    mcp = {p.name for p in cli.mcp.params}
    assert run - mcp == {"command", "json_file", "use_tty"}
    assert {
        "http",
        "token_file",
        "no_shell",
        "max_background",
        "idle_timeout",
        "approval_timeout",
    } <= mcp - run


def test_only_corral_mcp_loads_the_sdk() -> None:
    code = "import sys, supervisor, supervisor.cli, policies, exporters; print('mcp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_describe_names_the_proxys_allowed_domains() -> None:
    d = describe(settings(network_allow=["pypi-mirror.invalid", "*.docs.invalid"]))
    assert d.network == "proxy"
    assert "reachable pypi-mirror.invalid, *.docs.invalid" in d.summary


def test_http_on_trio_is_refused_with_the_reason_before_anything_starts() -> None:
    with pytest.raises(HttpNeedsAsyncioError) as caught:
        anyio.run(functools.partial(serve, settings(), http=("127.0.0.1", 0)), backend="trio")
    assert caught.value.backend == "trio"
    assert "asyncio only (uvicorn)" in str(caught.value)


def test_background_buffer_never_splits_a_character() -> None:
    buf = _Buffer(100)
    buf.add("a\u20acb".encode())  # 61 e2 82 ac 62
    assert buf.take(2) == (b"a", 0)  # the euro sign's lead byte stays
    assert buf.take(3) == ("\u20ac".encode(), 0)
    buf.add(b"\xe2\x82")  # its rest has not come yet: held back while the stream goes on
    assert buf.take(10, final=False) == (b"b", 0)
    buf.add(b"\xac")
    assert buf.take(10, final=False) == ("\u20ac".encode(), 0)
    buf.add(b"\xe2")  # a lone lead byte at the start is taken (always progress), as is one at the end
    assert buf.take(10, final=False) == (b"\xe2", 0)
    buf.add(b"z\xf0\x9f")
    assert buf.take(10) == (b"z\xf0\x9f", 0)
