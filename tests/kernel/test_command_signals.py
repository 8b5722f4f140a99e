"""What the command starts with, signal-wise: every disposition at its default, nothing blocked, whatever
the supervisor's process ignores.

The fork server ignores SIGPIPE and SIGXFSZ (Python does at start-up) and inherits whatever its supervisor
ignored (a `nohup` SIGHUP), and ignored dispositions survive an exec. The launched child sets those back to
their default before it becomes the sandbox init, and the init's spawn resets the handlers it installed
itself (docs/architecture.md, "What a spawn costs"); read here from the command's own /proc status.
"""

from __future__ import annotations

import ctypes
import platform
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor

pytestmark = pytest.mark.kernel


def _fields(status: bytes) -> dict[str, str]:
    out = {}
    for line in status.decode().splitlines():
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


class _KSigaction(ctypes.Structure):
    """The kernel's struct sigaction (x86-64, arm64)."""

    _fields_ = (
        ("handler", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_void_p),
        ("mask", ctypes.c_uint64),
    )


_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_RT_SIGACTION = {"x86_64": 13, "aarch64": 134}.get(platform.machine())
#: glibc's internal signals (its sigaction refuses them, Python's signal module too) and a real-time one.
_RAW_IGNORED = (32, 33, 40)


def _raw_sigaction(sig: int, act: _KSigaction | None) -> _KSigaction:
    """rt_sigaction(2) by the raw syscall; returns the old disposition."""
    old = _KSigaction()
    rc = _LIBC.syscall(
        _SYS_RT_SIGACTION, sig, ctypes.byref(act) if act is not None else None, ctypes.byref(old), 8
    )
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"rt_sigaction({sig})")
    return old


@pytest.fixture
def hup_ignored() -> Iterator[None]:
    """SIGHUP and SIGUSR1 ignored in this process while the test's Supervisor starts its fork server (which
    inherits them), restored after; and, by the raw syscall, signals 32 and 33 (glibc's own, which its
    sigaction refuses to show or set) and real-time signal 40."""
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGUSR1)}
    raw_before = {}
    try:
        if _SYS_RT_SIGACTION is not None:
            for sig in _RAW_IGNORED:
                raw_before[sig] = _raw_sigaction(sig, _KSigaction(handler=1))  # SIG_IGN
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig, old in raw_before.items():
            _raw_sigaction(sig, old)


@pytest.mark.usefixtures("hup_ignored")
async def test_command_starts_with_every_signal_at_its_default(workspace: Path) -> None:
    policy = profiles.workspace_write(workspace)
    async with Supervisor() as sup:
        # Three runs of one policy: built on the spot, then (from its second exit on) pre-forked.
        for _ in range(3):
            r = await sup.run(["/bin/cat", "/proc/self/status"], policy=policy)
            assert r.exit_code == 0, r
            status = _fields(r.stdout)
            # Control: the fields are there (a cat of another file would pass vacuously).
            assert status["Name"] == "cat"
            assert (status["SigIgn"], status["SigBlk"], status["SigCgt"]) == ("0" * 16,) * 3, status
