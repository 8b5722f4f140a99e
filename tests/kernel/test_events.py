"""Lifecycle events and totals: `Supervisor.subscribe()` yields started, violation and exited events in
order with the right fields, and `Supervisor.totals` counts them."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import Event, Supervisor
from supervisor.sandbox.cgroups import discover

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)
MiB = 1 << 20
_LAYOUT = discover()


def by_child(events: list[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = {}
    for ev in events:
        out.setdefault(ev.child.pid, []).append(ev)
    return out


async def collect(sup: Supervisor, into: list[Event], *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Subscribe, report ready, and gather events until the supervisor closes the stream."""
    with sup.subscribe() as events:
        task_status.started()
        async for ev in events:
            into.append(ev)


async def test_started_violation_exited_in_order(workspace: Path) -> None:
    events: list[Event] = []
    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        async with Supervisor() as sup:
            await tg.start(collect, sup, events)
            ok = await sup.run(["/bin/true"], policy=profiles.workspace_write(workspace), name="ok")
            fail = await sup.run(["/bin/false"], policy=profiles.workspace_write(workspace), name="fail")
            slow = await sup.run(
                ["/bin/sleep", "30"], policy=profiles.workspace_write(workspace, timeout=0.3), name="slow"
            )
            child = await sup.start(["/bin/sleep", "30"], policy=profiles.workspace_write(workspace))
            child.kill()
            killed = await child.wait()
        # Leaving the block closed the stream: `collect` ended by itself.
        totals = Counter(sup.totals)
    assert [e.kind for e in events] == [
        "started", "exited",                # ok
        "started", "exited",                # fail
        "started", "violation", "exited",   # slow
        "started", "exited",                # killed
    ]  # fmt: skip
    per = by_child(events)
    assert list(per) == [ok.pid, fail.pid, slow.pid, killed.pid]
    for pid, evs in per.items():
        assert len({id(e.child) for e in evs}) == 1  # the same Child object throughout
        assert evs[0].child.pid == pid
        assert [e.at for e in evs] == sorted(e.at for e in evs)
        assert all(t0 <= e.at <= time.monotonic() for e in evs)
        assert evs[0].result is None  # started
        assert evs[0].violation is None
        assert evs[-1].result is not None  # exited
        assert evs[-1].result.pid == pid
    assert [per[ok.pid][0].child.name, per[slow.pid][0].child.name] == ["ok", "slow"]
    # The exited events carry the Result callers got (captured output aside).
    assert per[ok.pid][-1].result.exit_code == 0  # type: ignore[union-attr]
    assert per[fail.pid][-1].result.exit_code == 1  # type: ignore[union-attr]
    v = per[slow.pid][1].violation
    assert v is not None
    assert (v.kind, v.limit) == ("wall_time", 0.3)
    assert v == slow.violation
    assert per[slow.pid][1].result is None
    assert per[slow.pid][-1].violation == v
    assert per[slow.pid][-1].result.exit_code == 137  # type: ignore[union-attr]
    assert per[killed.pid][-1].result.signal == 9  # type: ignore[union-attr]
    assert per[killed.pid][-1].violation is None
    # Totals: started, exited by outcome, violations by kind.
    assert totals["started"] == 4
    assert totals["exited"] == 4
    assert totals["exited:ok"] == 1
    assert totals["exited:error"] == 1
    assert totals["exited:violation"] == 1
    assert totals["exited:signal"] == 1
    assert totals["violation:wall_time"] == 1
    assert sum(n for k, n in totals.items() if k.startswith("violation:")) == 1


async def test_kernel_limit_violations_are_events(workspace: Path) -> None:
    if os.geteuid() != 0 or _LAYOUT.version("memory") is None or _LAYOUT.version("pids") is None:
        pytest.skip(f"needs root and memory+pids cgroups (missing: {_LAYOUT.missing})")
    bomb = "b = []\nfor i in range(64): b.append(b'x' * (16 << 20))\n"
    storm = "for i in $(seq 40); do /bin/sleep 1 & done; wait"
    events: list[Event] = []
    async with anyio.create_task_group() as tg:
        async with Supervisor() as sup:
            await tg.start(collect, sup, events)
            oom = await sup.run(
                [PY, "-I", "-S", "-c", bomb], policy=profiles.workspace_write(workspace, memory=64 * MiB)
            )
            pids = await sup.run(
                ["/bin/sh", "-c", storm], policy=profiles.workspace_write(workspace, pids=10)
            )
        totals = Counter(sup.totals)
    per = by_child(events)
    # The kernel's OOM kill is seen in the final sample (or a running one): still before `exited`.
    assert [e.kind for e in per[oom.pid]] == ["started", "violation", "exited"]
    v = per[oom.pid][1].violation
    assert v is not None
    assert (v.kind, v.limit) == ("memory", 64 * MiB)
    assert per[oom.pid][-1].result.limit_hits["memory_oom"] >= 1  # type: ignore[union-attr]
    # pids.max held the storm without killing it: reported once, and the child exits on its own. The
    # refused forks are a denial too (docs/denials.md), told before the exit.
    assert [e.kind for e in per[pids.pid]] == ["started", "violation", "denied", "exited"]
    d = per[pids.pid][2].denial
    assert d is not None
    assert (d.layer, d.operation, d.target) == ("cgroup", "fork", "pids.max=10")
    v = per[pids.pid][1].violation
    assert v is not None
    assert (v.kind, v.limit) == ("pids", 10)
    assert per[pids.pid][-1].result.limit_hits["pids"] >= 1  # type: ignore[union-attr]
    assert totals["violation:memory"] == 1
    assert totals["violation:pids"] == 1
    assert totals["exited:violation"] == 1  # the OOM kill; the storm was held, not killed
    assert pids.exit_code == 2  # sh: "Cannot fork"
    assert totals["exited:error"] == 1
    assert totals["started"] == totals["exited"] == 2


async def test_a_slow_subscriber_loses_events_and_never_blocks(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    async with Supervisor() as sup:
        with sup.subscribe(max_buffer=3) as events:
            with anyio.fail_after(30):  # the supervisor must not wait for the reader
                for _ in range(5):
                    await sup.run(["/bin/true"], policy=pol)
            first = [events.receive_nowait() for _ in range(3)]
            with pytest.raises(anyio.WouldBlock):
                events.receive_nowait()
        assert [e.kind for e in first] == ["started", "exited", "started"]  # the oldest are kept
        # A subscriber that left is no longer fed; a new one sees only what happens from now on.
        await wait_exited(sup, 5)
        with sup.subscribe() as later:
            await sup.run(["/bin/true"], policy=pol)
            await wait_exited(sup, 6)
            assert [later.receive_nowait().kind for _ in range(2)] == ["started", "exited"]
    assert sup.totals["exited"] == 6  # totals count everything


async def wait_exited(sup: Supervisor, n: int) -> None:
    """Wait until the supervisor has recorded `n` exits (see the xfail test below: it lags wait())."""
    with anyio.fail_after(10):
        while sup.totals["exited"] < n:  # noqa: ASYNC110 (polling the supervisor's counters: no event)
            await anyio.sleep(0.001)


async def test_the_exit_is_recorded_when_wait_returns(workspace: Path) -> None:
    async with Supervisor() as sup:
        with sup.subscribe() as events:
            child = await sup.start(["/bin/true"], policy=profiles.workspace_write(workspace))
            result = await child.wait()
            assert result.exit_code == 0
            assert sup.totals["exited"] == 1, sup.totals
            assert [events.receive_nowait().kind for _ in range(2)] == ["started", "exited"]
            assert child.leaf is not None
            # The cgroup goes right after wait() returns, off the caller's path (its init may still be
            # exiting then), and before the supervisor exits: removed, or (cgroup v1) kept for the next child
            # (docs/cgroups.md, "Reused leaves"), which its Leaf then no longer reaches.
            with anyio.fail_after(5):
                while leaf_exists(child.leaf.paths) and not child.leaf.handed_over:  # noqa: ASYNC110 (no event)
                    await anyio.sleep(0.001)
        second = await sup.start(["/bin/true"], policy=profiles.workspace_write(workspace))
        assert (await second.wait()).exit_code == 0
        assert second.leaf is not None
    assert not leaf_exists(second.leaf.paths)


def leaf_exists(paths: list[str]) -> bool:
    return any(os.path.exists(p) for p in paths)


async def test_many_children_each_get_started_then_exited(workspace: Path) -> None:
    events: list[Event] = []
    pol = profiles.workspace_write(workspace, timeout=5)
    async with anyio.create_task_group() as tg, Supervisor(max_concurrency=8) as sup:
        await tg.start(collect, sup, events)
        async with anyio.create_task_group() as runs:
            for i in range(40):
                runs.start_soon(partial(sup.run, ["/bin/sleep", f"0.0{i % 10}"], policy=pol))
    per = by_child(events)
    assert len(per) == 40
    assert all([e.kind for e in evs] == ["started", "exited"] for evs in per.values())
    assert all(evs[-1].result.exit_code == 0 for evs in per.values())  # type: ignore[union-attr]


async def test_a_held_pids_violation_then_a_kill_is_a_signal_outcome(workspace: Path) -> None:
    if os.geteuid() != 0 or _LAYOUT.version("pids") is None:
        pytest.skip(f"needs root and a pids cgroup (missing: {_LAYOUT.missing})")
    # Up to 20 sleepers (forks refused past pids.max are ignored), then the storm itself sleeps.
    storm = (
        "import os, time\nfor i in range(20):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        continue\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)\n"
    )
    pol = profiles.workspace_write(workspace, pids=8)
    async with Supervisor(monitor_interval=0.05) as sup:
        child = await sup.start([PY, "-I", "-S", "-c", storm], policy=pol)
        with anyio.fail_after(10):
            while child.violation is None:  # noqa: ASYNC110 (the sampler sets it: no event to wait on)
                await anyio.sleep(0.02)
        assert child.violation.kind == "pids"
        assert child.running
        child.kill()
        r = await child.wait()
    assert r.signal == 9
    assert r.violation is not None  # still reported: the kernel held the limit
    assert r.outcome == "signal", r.outcome
