"""The engine at scale (issue 13): concurrent first uses of a policy share one compilation and one pool of
pre-forked sandboxes; caches stay bounded however many distinct policies (workdirs) come and go.
(White-box where noted: compilations and pre-fork builds are counted by wrapping corral's own functions.)"""

from __future__ import annotations

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
