"""`corral run --allow-domain` / `--network proxy` end to end: the command's tool reaches corral's proxy
through the environment, an unlisted name is refused with a 403 the tool prints, and the refusal is in
--json (`network`, `denials`) and on stderr. The refused names are never resolved: nothing leaves the
machine."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_cli import corral, ws  # noqa: F401 - the fixture

pytestmark = pytest.mark.kernel

CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_allow_domain_refusal_reaches_the_tool_json_and_stderr(ws: Path) -> None:  # noqa: F811
    out = ws / "r.json"
    p = corral(
        "run", "--allow-domain", "example.org", "--allow-domain", "*.example.com", "--json", str(out),
        "--", str(CURL), "-s", "-w", "%{http_code}\n", "http://unlisted.test/x",
        cwd=ws,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("403\n")
    assert (
        "no rule of network.allow covers unlisted.test:80 (network.allow: example.org, *.example.com)"
        in p.stdout
    )
    record = json.loads(out.read_text())
    assert record["network"] == {
        "bytes_up": 0,
        "bytes_down": 0,
        "allowed": 0,
        "denied": 1,
        "peak_connections": 1,
    }
    (denial,) = [d for d in record["denials"] if d["layer"] == "proxy"]
    assert (denial["operation"], denial["target"], denial["count"]) == ("connect", "unlisted.test:80", 1)
    assert "corral: denied connect unlisted.test:80 (proxy: GET refused: no rule" in p.stderr


def test_network_proxy_sets_the_proxy_variables_overridably(ws: Path) -> None:  # noqa: F811
    p = corral("run", "--network", "proxy", "--", "/bin/sh", "-c", "echo $HTTPS_PROXY $no_proxy", cwd=ws)
    assert (p.returncode, p.stdout) == (0, "http://127.0.0.1:3128 localhost,127.0.0.1,::1\n")
    p = corral(
        "run", "--network", "proxy", "--env", "HTTPS_PROXY=http://127.0.0.1:9", "--",
        "/bin/sh", "-c", "echo $HTTPS_PROXY", cwd=ws,
    )  # fmt: skip
    assert p.stdout == "http://127.0.0.1:9\n"
    env = {k: v for k, v in os.environ.items() if k.upper() != "HTTPS_PROXY"}
    p = corral(
        "run", "--network", "none", "--", "/bin/sh", "-c", "echo ${HTTPS_PROXY:-unset}", cwd=ws, env=env
    )
    assert p.stdout == "unset\n"
