"""`corral run` reports what a layer refused: one stderr line per distinct denial, and `denials` (with
`denials_dropped` and `denials_unobservable`) in the --json record (DESIGN.md's CLI contract)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

CORRAL = [sys.executable, "-m", "supervisor.cli"]
SCRATCH = Path("/var/tmp/corral-tests")
#: Three refused unshare(CLONE_NEWUSER) calls and one refused mount, through ctypes.
PROBE = (
    "import ctypes; c = ctypes.CDLL(None)\n"
    "for _ in range(3): c.unshare(0x10000000)\n"
    "c.mount(b'none', b'/mnt', b'tmpfs', 0, None)\n"
)


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"den-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def test_denials_on_stderr_and_in_json(ws: Path) -> None:
    from supervisor import _observer
    from supervisor.sandbox import probe

    caps = probe.KernelCaps.from_dict(probe.probe_in_fork_server())
    if not caps.seccomp_notify.available:
        pytest.skip(f"seccomp user notification: {caps.seccomp_notify.reason}")
    out = subprocess.run(
        [*CORRAL, "run", "--json", "-", "--", "/usr/bin/python3", "-I", "-S", "-c", PROBE],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    rows = {(d["layer"], d["operation"], d["target"]): d for d in record["denials"]}
    assert set(rows) == {("seccomp", "syscall", "unshare(CLONE_NEWUSER)"), ("seccomp", "syscall", "mount")}
    assert rows[("seccomp", "syscall", "unshare(CLONE_NEWUSER)")]["count"] == 3
    assert rows[("seccomp", "syscall", "mount")]["count"] == 1
    assert all(set(d) == {"layer", "operation", "target", "count", "hint"} for d in record["denials"])
    assert record["denials_dropped"] == 0
    layers = {d["layer"] for d in record["denials_unobservable"]}
    if _observer.unavailable() is None:  # the syscall-exit observer runs (docs/denials.md): none hidden
        assert not {"landlock", "mounts"} & layers, record
    else:
        assert {"landlock", "mounts"} <= layers, record
    lines = [line for line in out.stderr.splitlines() if line.startswith("corral: denied ")]
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith("corral: denied syscall unshare(CLONE_NEWUSER) (seccomp: ")
    assert lines[0].endswith(", 3 times)")
    assert lines[1].startswith("corral: denied syscall mount (seccomp: ")
