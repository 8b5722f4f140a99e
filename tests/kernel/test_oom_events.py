"""OOM events by kernel notification (supervisor/sandbox/cgroups/_notify.py): between full rounds the
sampler reads no memory-limited child's OOM counter while its notifier (a v1 `cgroup.event_control`
eventfd, the v2 `memory.events` file's POLLPRI) has not fired, and a kernel OOM kill is still seen within a
round: the notifier fires, the child is sampled in full, and the supervisor kills what the OOM kill left
(v1 kills one process; the shell here would sleep on for a minute). Checked from outside: the run's
duration and its Result. cgroup v1 only: on v2 the sampler reads memory.events every round as before (a
POLLPRI notifier on it was tried and did not fire in ../shared/v2vm's kernel; not used until it is shown
to)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import supervisor._supervisor
from policies import profiles
from supervisor import Supervisor
from supervisor.sandbox.cgroups import discover

pytestmark = pytest.mark.kernel

PYTHON = "/usr/bin/python3"
MiB = 1 << 20
#: Sleeps past several sampler rounds (so that its notifier is registered), then one process allocates past
#: the limit and is OOM-killed, and the shell would sleep on.
SCRIPT = f"sleep 1.2; {PYTHON} -c 'b = b\"x\" * (400 << 20)'; sleep 60"


async def check_oom_seen_by_notifier(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the first round is a full one: the OOM kill can be seen only through the notifier (the rounds
    # between full ones read no OOM counter of a child that has one); unseen, the shell would run into the
    # 50 s timeout (a wall_time violation).
    monkeypatch.setattr(supervisor._supervisor, "FULL_EVERY", 10_000)
    async with Supervisor(monitor_interval=0.1) as sup:
        policy = profiles.workspace_write(workspace, memory=64 * MiB, timeout=50)
        t0 = time.monotonic()
        r = await sup.run(["/bin/sh", "-c", SCRIPT], policy=policy)
        took = time.monotonic() - t0
        oom = sup._oom
        assert oom is not None
        assert oom.registered >= 1, "no OOM notifier was registered"
        assert oom.fired_total >= 1, "the OOM notifier never fired"
    assert r.violation is not None, r
    assert (r.violation.kind, r.violation.limit) == ("memory", 64 * MiB)
    assert r.limit_hits.get("memory_oom", 0) >= 1, r.limit_hits
    assert r.exit_code == 137, r
    assert took < 20, f"the sandbox lived on {took:.1f} s after its OOM kill"


async def test_an_oom_kill_is_seen_through_the_notifier(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limit tests need root (or a delegated cgroup)")
    have = discover().version("memory")
    if have != 1:
        pytest.skip(f"OOM notifiers are used on cgroup v1 only; the memory controller is on {have} here")
    await check_oom_seen_by_notifier(workspace, monkeypatch)
