"""Event counters by kernel notification (supervisor/sandbox/cgroups/_notify.py): between full rounds the
sampler reads no memory-limited child's OOM counter while its notifier (a v1 `cgroup.event_control`
eventfd, the v2 `memory.events` file's EPOLLPRI) has not fired. On v1 a kernel OOM kill is still seen within
a round: the notifier fires, the child is sampled in full, and the supervisor kills what the OOM kill left
(v1 kills one process; the shell here would sleep on for a minute). On v2 memory.events' notifier fires on
a change of its counters while the child runs. Likewise pids.events (EPOLLPRI on v2; read every round on
v1, whose pids.events sends none since Linux 6.12): forks refused at pids.max are reported while the child
runs. Checked from outside: the run's duration and its Result, the violation seen while the command still
sleeps. Run on this host's cgroup version and (marker cgroup_v2) on v2 in ../shared/v2vm."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

import supervisor._supervisor
from policies import profiles
from supervisor import Supervisor
from supervisor.sandbox.cgroups import discover
from supervisor.sandbox.cgroups._notify import OOM, PIDS, Notifiers
from supervisor.sandbox.cgroups._stats import QUIET_OOM

pytestmark = [pytest.mark.kernel, pytest.mark.cgroup_v2]

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
    fired = _record_fired(monkeypatch, OOM)
    async with Supervisor(monitor_interval=0.1) as sup:
        policy = profiles.workspace_write(workspace, memory=64 * MiB, timeout=50)
        t0 = time.monotonic()
        r = await sup.run(["/bin/sh", "-c", SCRIPT], policy=policy)
        took = time.monotonic() - t0
        oom = sup._oom
        assert oom is not None
        assert oom.registered >= 1, "no OOM notifier was registered"
        assert oom.fired_total >= 1, "the OOM notifier never fired"
        assert fired, "the OOM notifier never fired"
    assert r.violation is not None, r
    assert (r.violation.kind, r.violation.limit) == ("memory", 64 * MiB)
    assert r.limit_hits.get("memory_oom", 0) >= 1, r.limit_hits
    assert r.exit_code == 137, r
    assert took < 20, f"the sandbox lived on {took:.1f} s after its OOM kill"


def _record_fired(monkeypatch: pytest.MonkeyPatch, kind: str) -> list[object]:
    """The owners whose notifier of `kind` fired, as the sampler is told (Notifiers.fired)."""
    seen: list[object] = []
    real = Notifiers.fired

    def fired(self: Notifiers[object]) -> dict[object, set[str]]:
        out = real(self)
        seen.extend(owner for owner, kinds in out.items() if kind in kinds)
        return out

    monkeypatch.setattr(Notifiers, "fired", fired)
    return seen


def _need(controller: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroup limit tests need root (or a delegated cgroup)")
    if discover().version(controller) is None:
        pytest.skip(f"no {controller} controller here (corral's cgroup discovery)")


async def test_an_oom_kill_is_seen_through_the_notifier(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("memory")
    if discover().version("memory") == 2:
        pytest.skip(
            "on cgroup v2 memory.oom.group kills the whole sandbox at the OOM kill, so its exit (whose final "
            "sample reads memory.events) reports it, not the notifier: "
            "test_memory_events_notifier_fires_while_the_child_runs tests the v2 notifier"
        )
    await check_oom_seen_by_notifier(workspace, monkeypatch)


#: Sleeps past several sampler rounds, then touches 16 MiB (over the memory.high of 8 MiB the test sets, under
#: the 32 MiB limit: memory.events' `high` counter moves, the process is throttled, nothing is killed), then
#: sleeps on.
GROWER = f"sleep 1.2; {PYTHON} -c 'b = b\"x\" * (16 << 20); import time; time.sleep(60)'"


async def test_memory_events_notifier_fires_while_the_child_runs(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup v2: memory.events' EPOLLPRI notifier fires on a change of its counters (here `high`, set by
    the test on corral's leaf), and only then does the sampler read it again."""
    _need("memory")
    if discover().version("memory") != 2:
        pytest.skip("memory.events is cgroup v2's; v1's OOM notifier is tested above")
    monkeypatch.setattr(supervisor._supervisor, "FULL_EVERY", 10_000)
    fired = _record_fired(monkeypatch, OOM)
    async with Supervisor(monitor_interval=0.1) as sup:
        policy = profiles.workspace_write(workspace, memory=32 * MiB, timeout=50)
        child = await sup.start(["/bin/sh", "-c", GROWER], policy=policy)
        try:
            assert child.leaf is not None
            memory_dir = child.leaf.dir("memory")
            assert memory_dir is not None
            await anyio.Path(memory_dir, "memory.high").write_text(str(8 * MiB))
            with anyio.move_on_after(30):
                while not fired:  # noqa: ASYNC110 (the sampler's notification has no event of its own)
                    await anyio.sleep(0.05)
            assert fired == [child], "memory.events' notifier did not fire (or not for this child)"
            assert child.running
            assert child.violation is None, child.violation
            assert not child.leaf._quiet & QUIET_OOM, "its counter is to be read again"
        finally:
            child.kill()
            await child.wait()


#: Sleeps past several sampler rounds, then forks more sleepers than pids.max allows (a refused fork is
#: BlockingIOError, and it goes on), then sleeps on.
STORM = (
    "import os, time\n"
    "time.sleep(1.2)\n"
    "for _ in range(12):\n"
    "    try:\n"
    "        if os.fork() == 0:\n"
    "            time.sleep(30)\n"
    "            os._exit(0)\n"
    "    except BlockingIOError:\n"
    "        pass\n"
    "time.sleep(60)\n"
)


async def test_forks_refused_at_pids_max_are_seen_through_the_notifier(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the first round is a full one: on v2 the refusals can be seen only through pids.events' notifier
    # (the rounds between read no pids.events of a child whose notifier has not fired).
    _need("pids")
    monkeypatch.setattr(supervisor._supervisor, "FULL_EVERY", 10_000)
    fired = _record_fired(monkeypatch, PIDS)
    async with Supervisor(monitor_interval=0.1) as sup:
        policy = profiles.workspace_write(workspace, pids=6, timeout=50)
        with sup.subscribe() as events:
            child = await sup.start([PYTHON, "-I", "-S", "-c", STORM], policy=policy)
            with anyio.move_on_after(20):
                async for ev in events:
                    if ev.kind == "violation" and ev.child is child:
                        break
        try:
            assert child.running, "the command was to sleep on after the refused forks"
            assert child.violation is not None, "forks refused at pids.max were not reported while it ran"
            assert child.violation.kind == "pids", child.violation
            if discover().version("pids") == 2:
                assert fired == [child], "pids.events' notifier did not fire (or not for this child)"
            else:  # v1 kernels since 6.12 send no notification for pids.events: it is read every round
                assert fired == [], fired
        finally:
            child.kill()
            r = await child.wait()
    assert r.limit_hits.get("pids", 0) >= 1, r.limit_hits
