"""The engine at scale (issue 13): concurrent first uses of a policy share one compilation and one pool of
pre-forked sandboxes; caches stay bounded however many distinct policies (workdirs) come and go.
(White-box where noted: compilations and pre-fork builds are counted by wrapping corral's own functions.)"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import Supervisor, _supervisor
from supervisor._plan import CompiledPolicy

pytestmark = pytest.mark.kernel


async def test_concurrent_first_uses_share_one_compilation_and_one_pool(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[Policy] = []
    real_compile = _supervisor.compile_policy

    def counting_compile(policy: Policy, *args: object, **kw: object) -> CompiledPolicy:
        compiled.append(policy)
        return real_compile(policy, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_supervisor, "compile_policy", counting_compile)
    pol = profiles.workspace_write(workspace)
    async with Supervisor(max_concurrency=64) as sup:
        fs = sup._forkserver
        assert fs is not None
        assert sup._prefork is not None
        builds: list[int] = []
        real_prefork = fs.prefork

        async def counting_prefork(
            cwd: str, procs: list[str], policy_id: int, payload: dict[str, object]
        ) -> tuple[dict[str, object], tuple[int, int, int] | None]:
            builds.append(policy_id)
            return await real_prefork(cwd, procs, policy_id, payload)

        monkeypatch.setattr(fs, "prefork", counting_prefork)
        results = []

        async def one() -> None:
            results.append(await sup.run(["/bin/true"], policy=pol))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(one)
            assert [r.exit_code for r in results] == [0] * 64
            # Let the refills that the exits started finish.
            while sup._prefork._building:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.01)
        assert len(compiled) == 1, f"{len(compiled)} compilations of one policy"
        assert len(builds) <= sup.prefork, f"{len(builds)} pre-forked sandboxes built for one key"
        assert len(set(builds)) <= 1
        ready = [stub for stubs in sup._prefork._ready.values() for stub in stubs]
        assert len(ready) == len(builds)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def test_memory_stays_flat_over_many_distinct_workdirs(tmp_path: Path) -> None:
    """Every new workdir is a new policy (it is the first writable root). 2,000 of them, each used once,
    as an agent harness does: the compiled-policy caches of the supervisor and the fork server stay
    bounded, and so does the RSS of both (before the fix: ~12 kB and ~22 kB more per workdir, for ever)."""
    root = Path("/var/tmp/corral-tests") / f"wd-{os.getpid()}-{tmp_path.name}"
    root.mkdir(parents=True)
    n, warm = 2000, _supervisor.MAX_COMPILED + 100
    try:
        async with Supervisor(max_concurrency=16) as sup:
            fs = sup._forkserver
            assert fs is not None
            assert fs._proc is not None
            fs_pid = fs._proc.pid
            rss: dict[str, int] = {}

            async def worker(ids: range) -> None:
                for i in ids:
                    d = root / f"w{i}"
                    d.mkdir()
                    r = await sup.run(["/bin/true"], policy=profiles.workspace_write(d))
                    assert r.exit_code == 0, r
                    d.rmdir()

            with anyio.fail_after(600):
                for lo, hi in ((0, warm), (warm, n)):
                    async with anyio.create_task_group() as tg:
                        for k in range(8):
                            tg.start_soon(worker, range(lo + k, hi, 8))
                    if lo == 0:
                        rss = {"sup": _rss_kib(os.getpid()), "fs": _rss_kib(fs_pid)}
            assert len(sup._compiled) <= _supervisor.MAX_COMPILED
            assert len(sup._live_ids) <= _supervisor.MAX_COMPILED
            # What the fork server keeps, as its client knows it (each forgotten id was sent to be dropped).
            assert len(fs._sent_policies) <= _supervisor.MAX_COMPILED
            grown = {"sup": _rss_kib(os.getpid()) - rss["sup"], "fs": _rss_kib(fs_pid) - rss["fs"]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # Before the fix: 20 MB (supervisor) and 36 MB (fork server) over these 1,644 new workdirs; after: 44
    # and 180 kB (on the machine of this change).
    assert grown["sup"] < 8 * 1024, f"supervisor RSS grew {grown['sup']} KiB over {n - warm} new workdirs"
    assert grown["fs"] < 6 * 1024, f"fork server RSS grew {grown['fs']} KiB over {n - warm} new workdirs"


async def test_an_evicted_policy_runs_again(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy the LRU evicted (and the fork server forgot) is compiled and sent again at its next use,
    pre-forked sandboxes included."""
    monkeypatch.setattr(_supervisor, "MAX_COMPILED", 2)
    dirs = [workspace / f"d{i}" for i in range(4)]
    for d in dirs:
        d.mkdir()
    async with Supervisor() as sup:
        for _round in range(3):
            for d in dirs:
                for _ in range(2):  # twice: the second exit starts pre-fork builds for the policy
                    r = await sup.run(["/bin/sh", "-c", "echo x >> f"], policy=profiles.workspace_write(d))
                    assert r.exit_code == 0, r
        assert len(sup._compiled) <= 2
        assert sup._forkserver is not None
        assert len(sup._forkserver._sent_policies) <= 2
    for d in dirs:
        assert (d / "f").read_text() == "x\n" * 6


async def test_between_full_rounds_the_sampler_reads_only_what_limits_need(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle children whose limits the kernel enforces (a memory limit) get a full sample one round in
    FULL_EVERY, each reading its files in turn (`stats(turn=True)`: one file per full round); between,
    one pread of their OOM counter (before: six preads and an enforcer call per child per round, 9.7% of a
    core with 1,000 children)."""
    from supervisor._monitor import FULL_EVERY
    from supervisor.sandbox.cgroups import Leaf

    calls = turned = 0
    real_stats = Leaf.stats

    def counting_stats(self: Leaf, notified: bool = False, turn: bool = False) -> object:
        nonlocal calls, turned
        calls += 1
        turned += turn
        return real_stats(self, notified, turn)

    n, interval = 10, 0.05
    pol = profiles.workspace_write(workspace, memory="64M")
    async with Supervisor(monitor_interval=interval) as sup:
        if sup.cgroups is None or "memory" not in sup.cgroups.controllers:
            pytest.skip("no cgroup memory controller: no kernel-enforced memory limit")
        kids = [await sup.start(["/bin/sleep", "30"], policy=pol) for _ in range(n)]
        await anyio.sleep(4 * interval)  # every child seen once (its first counter read samples it)
        monkeypatch.setattr(Leaf, "stats", counting_stats)
        rounds = 8 * FULL_EVERY
        await anyio.sleep(rounds * interval)
        monkeypatch.setattr(Leaf, "stats", real_stats)
        assert all(k.running for k in kids)
        for k in kids:
            k.kill()
    # Full rounds only (and the rounds are slower than `interval` on a busy machine: fewer still).
    assert calls <= n * (rounds // FULL_EVERY + 2), f"{calls} full samples of {n} children in {rounds} rounds"
    assert turned == calls > 0, f"{turned} of {calls} full samples in turn"


async def test_an_oom_kill_between_full_rounds_is_acted_on_at_once(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process of the child OOM-killed by the kernel while the command itself lives on (v1 kills the
    largest process, not the group): the OOM counter moved, so the next round samples the child and the
    supervisor kills it for its memory limit. Full rounds are made rare here, so that the rounds between
    must see it."""
    monkeypatch.setattr(_supervisor, "FULL_EVERY", 10_000)
    hog = "import time; b = []\nwhile True: b.append(b'x' * (1 << 20))\n"
    pol = profiles.workspace_write(workspace, memory="48M")
    async with Supervisor(monitor_interval=0.25) as sup:
        if sup.cgroups is None or "memory" not in sup.cgroups.controllers:
            pytest.skip("no cgroup memory controller: no kernel-enforced memory limit")
        cmd = ["/bin/sh", "-c", f'sleep 1; {sys.executable} -c "{hog}"; sleep 60']  # after round 1
        with anyio.fail_after(30):
            r = await sup.run(cmd, policy=pol)
    assert r.violation is not None, r
    assert r.violation.kind == "memory"
    assert r.duration_s < 20, r  # not the 60 s sleep after the hog's death
