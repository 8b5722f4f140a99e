"""Chaos: 2000 spawns at concurrency ~32 with random cancellations (cancel scopes around run), kills
(child.kill()), wall-clock timeouts (0.05-0.5 s), short sleeps, process trees and /bin/true; then nothing may
be left: no process of the test (by ancestry or by the run's token on the command line; every sandbox init's
pid gone), no zombie of the test process, no corral cgroup directory of this process in any hierarchy, and
the test process's open fd count back where it started.

Marked slow (about a minute on 2 cores) but run by default. The seed is printed; CORRAL_CHAOS_SEED replays it.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

from policies import profiles
from supervisor import (
    DEVNULL,
    CommandNotExecutableError,
    CommandNotFoundError,
    Event,
    SandboxSetupError,
    Supervisor,
)
from tests.kernel.test_supervisor_death import corral_dirs

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

#: Results the chaos run leaves for the fd test after it.
REPORT: dict[str, tuple[int, int, Counter[str]]] = {}

N = 2000
CONCURRENCY = 32
MiB = 1 << 20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled_fds() -> int:
    """open_fds() once it has held still for 50 ms: after a child's Result, the supervisor still reaps its
    init, removes its cgroup and builds the next pre-forked sandbox, each holding fds for a moment."""
    last, still = open_fds(), 0
    with anyio.fail_after(10):
        while still < 5:
            await anyio.sleep(0.01)
            now = open_fds()
            still = still + 1 if now == last else 0
            last = now
    return last


def fd_kinds() -> Counter[str]:
    """What this process's open fds are, by kind (pipe, anon_inode:[pidfd], a path...)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[")[0] if ":[" in target and "pidfd" not in target else target] += 1
    return kinds


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of pid, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def _has_token(pid: int, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return token.encode() in f.read().split(b"\0")
    except OSError:
        return False


def leftovers(token: str) -> dict[str, list[object]]:
    """What the test left behind: descendants of this process, processes carrying the token, zombies of
    this process."""
    me = os.getpid()
    descendants = []
    for p in psutil.Process(me).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it may exit between the listing and the read
            descendants.append((p.pid, p.cmdline()))
    tokened, zombies = [], []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        st = _stat(pid)
        if st is None:
            continue
        if _has_token(pid, token) and st[0] not in ("Z", "X"):
            tokened.append(pid)
        if st[1] == me and st[0] == "Z":
            zombies.append(pid)
    return {"descendants": descendants, "tokened": tokened, "zombies": zombies}  # type: ignore[dict-item]


class Chaos:
    """The random operations. Each records its outcome in `outcomes`, anything unexpected in `errors`."""

    def __init__(self, sup: Supervisor, ws: Path, rng: random.Random, token: str) -> None:
        self.sup = sup
        self.rng = rng
        self.token = token
        self.plain = profiles.workspace_write(ws)
        self.limited = profiles.workspace_write(ws, memory=64 * MiB, pids=32)
        # A few distinct timeouts (policies are compiled once each and cached).
        self.timeouts = [profiles.workspace_write(ws, timeout=t) for t in (0.05, 0.1, 0.2, 0.35, 0.5)]
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.ops: list[tuple[str, Callable[[], object]]] = [
            ("true", self.true),
            ("sleep", self.sleep),
            ("timeout", self.timeout),
            ("cancel", self.cancel),
            ("cancel_at_once", self.cancel_at_once),
            ("kill", self.kill),
            ("tree", self.tree),
        ]

    def tree_cmd(self, secs: float) -> list[str]:
        # A shell with a background sleeper and a foreground one; the token is on every process's argv.
        t = self.token
        return ["/bin/sh", "-c", f"/bin/sleep {secs} {t} & /bin/sleep {secs} {t}; wait", t]

    async def true(self) -> None:
        r = await self.sup.run(["/bin/true", self.token], policy=self.plain)
        self.expect(r.exit_code == 0 and r.violation is None, "true", r)

    async def sleep(self) -> None:
        secs = round(self.rng.uniform(0.01, 0.2), 3)
        r = await self.sup.run(["/bin/sleep", str(secs), self.token], policy=self.plain)
        self.expect(r.exit_code == 0, "sleep", r)

    async def timeout(self) -> None:
        pol = self.rng.choice(self.timeouts)
        try:
            r = await self.sup.run(self.tree_cmd(5), policy=pol)
        except SandboxSetupError as err:
            # The known bug (test_limits.py::test_timeout_shorter_than_the_setup_is_a_wall_time_violation):
            # a timeout that fires while the sandbox is still being set up (a loaded host: setup takes more
            # than 50 ms) surfaces as this setup error. Counted apart; everything else must still hold.
            if err.layer == "setup" and "died before reporting" in str(err):
                self.outcomes["timeout_in_setup_BUG"] += 1
                return
            raise
        ok = r.violation is not None and r.violation.kind == "wall_time" and r.exit_code == 137
        self.expect(ok, "timeout", r)

    async def cancel(self) -> None:
        with anyio.move_on_after(self.rng.uniform(0.0, 0.3)) as scope:
            await self.sup.run(self.tree_cmd(5), policy=self.rng.choice((self.plain, self.limited)))
        self.expect(scope.cancelled_caught, "cancel", "ran to completion")

    async def cancel_at_once(self) -> None:
        # Cancelled while waiting for a slot, compiling or spawning: nothing may be left half made.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await self.sup.run(self.tree_cmd(5), policy=self.limited)
        self.expect(scope.cancelled_caught, "cancel_at_once", "not cancelled")

    async def kill(self) -> None:
        child = await self.sup.start(
            self.tree_cmd(5),
            policy=self.rng.choice((self.plain, self.limited)),
            stdout=DEVNULL,
            stderr=DEVNULL,
        )
        await anyio.sleep(self.rng.uniform(0.0, 0.2))
        child.kill()
        r = await child.wait()
        self.expect(r.signal == 9 and r.exit_code == 137 and r.violation is None, "kill", r)

    async def tree(self) -> None:
        r = await self.sup.run(self.tree_cmd(round(self.rng.uniform(0.01, 0.1), 3)), policy=self.limited)
        self.expect(r.exit_code == 0 and r.violation is None, "tree", r)

    def expect(self, ok: bool, op: str, detail: object) -> None:
        if ok:
            self.outcomes[op] += 1
        else:
            self.errors.append(f"{op}: unexpected {detail!r}")

    async def one(self, limiter: anyio.CapacityLimiter) -> None:
        name, op = self.rng.choice(self.ops)
        async with limiter:
            try:
                await op()  # type: ignore[misc]
            except SandboxSetupError as err:
                self.errors.append(f"{name}: {err}")
            except Exception as err:
                self.errors.append(f"{name}: {type(err).__name__}: {err}")


async def watch_events(
    sup: Supervisor, seen: dict[str, set[int]], *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """The sandbox init pids of every child that started, and of every child reaped (which includes children
    killed while their start was cancelled, or failed during setup: they exit without having started)."""
    with sup.subscribe(max_buffer=100_000) as events:
        task_status.started()
        ev: Event
        async for ev in events:
            seen.setdefault(ev.kind, set()).add(ev.child.pid)


@pytest.mark.timeout(600)
async def test_chaos_leaves_nothing_behind(workspace: Path) -> None:
    seed = int(os.environ.get("CORRAL_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"chaos seed {seed} (CORRAL_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    token = f"0.0000{rng.randrange(10**9):09d}"  # a valid extra operand for sleep: adds nothing noticeable
    me = os.getpid()

    # Warm up once (the loop's and anyio's lazily made resources, the worker threads), then measure.
    async with Supervisor() as warm:
        await warm.run(["/bin/true"], policy=profiles.workspace_write(workspace))
    fds_before = open_fds()
    dirs_before = corral_dirs(me)
    assert leftovers(token) == {"descendants": [], "tokened": [], "zombies": []}

    seen: dict[str, set[int]] = {}
    t0 = time.monotonic()
    async with anyio.create_task_group() as outer:
        async with Supervisor(max_concurrency=CONCURRENCY) as sup:
            await outer.start(watch_events, sup, seen)
            chaos = Chaos(sup, workspace, rng, token)
            # A few more tasks than slots, so that some wait (and some are cancelled) in the fair queue.
            limiter = anyio.CapacityLimiter(CONCURRENCY + 8)
            async with anyio.create_task_group() as tg:
                for _ in range(N):
                    tg.start_soon(chaos.one, limiter)
            # No zombie piles up while the supervisor runs. An init reports its child's exit and then exits
            # itself, so one may be a zombie for a moment before its watcher reaps it; none may stay.
            with anyio.fail_after(2):
                while leftovers(token)["zombies"]:  # noqa: ASYNC110 (no event for a reap)
                    await anyio.sleep(0.005)
            # Leave the block with children running: it must kill and reap them all.
            for _ in range(CONCURRENCY // 2):
                await sup.start(chaos.tree_cmd(60), policy=chaos.limited, stdout=DEVNULL, stderr=DEVNULL)
            running_at_exit = len(sup.children)
        totals = dict(sup.totals)
    elapsed = time.monotonic() - t0

    print(f"chaos: {N} ops in {elapsed:.1f}s; outcomes {dict(chaos.outcomes)}; totals {totals}")
    assert not chaos.errors, sorted(Counter(chaos.errors).items(), key=lambda kv: -kv[1])[:20]
    assert sum(chaos.outcomes.values()) == N
    assert running_at_exit == CONCURRENCY // 2
    started, exited = seen["started"], seen["exited"]
    assert totals["started"] == len(started)
    assert totals["exited"] == len(exited)
    assert started <= exited  # every child that started was reaped
    # Nothing left: processes, zombies, cgroups, fds.
    left = leftovers(token)
    assert left == {"descendants": [], "tokened": [], "zombies": []}, left
    alive = [p for p in exited if (st := _stat(p)) is not None and st[1] == me]
    assert not alive, alive  # every sandbox init is gone (a reused pid would not be our child)
    assert corral_dirs(me) == dirs_before == []
    # The fd count is asserted by the next test (a known bug leaks some).
    REPORT["fds"] = (fds_before, open_fds(), fd_kinds())


async def test_chaos_leaves_no_open_fds(workspace: Path) -> None:
    if "fds" not in REPORT:
        await test_chaos_leaves_nothing_behind(workspace)
    before, after, kinds = REPORT["fds"]
    assert after == before, (before, after, kinds)


async def test_failed_starts_do_not_leak_fds(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    async with Supervisor() as sup:
        for _ in range(2):  # from the second exit on, the policy keeps pre-forked sandboxes (and their fds)
            await sup.run(["/bin/true"], policy=pol)
        before = await settled_fds() - _recheck_fds(sup)
        for _ in range(10):
            with pytest.raises(CommandNotFoundError):
                await sup.run(["corral-no-such-command"], policy=pol)
        for _ in range(10):
            with pytest.raises(CommandNotExecutableError):
                await sup.run(["/etc/hostname"], policy=pol)
        assert await settled_fds() - _recheck_fds(sup) == before, fd_kinds()


def _recheck_fds(sup: Supervisor) -> int:
    """The fds held by the live Rechecks: the ready sandboxes' and that of the key's last build
    (forkserver/_recheck.py), which they share or not depending on how their builds overlapped
    (prefork.py). White-box; a Recheck leaked is not among them, and its fds count as any other."""
    pool = sup._prefork
    assert pool is not None
    live = {id(s.recheck): s.recheck for ss in pool._ready.values() for s in ss if s.recheck is not None}
    live |= {id(t[1]): t[1] for t in pool._taken.values()}
    return sum(len(r.fds) for r in live.values())


async def test_two_supervisors_in_one_process(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    async with Supervisor() as a, Supervisor() as b:
        first = await a.start(["/bin/sleep", "0.5"], policy=pol)
        r = await b.run(["/bin/true"], policy=pol)
        assert r.exit_code == 0
        assert (await first.wait()).exit_code == 0
