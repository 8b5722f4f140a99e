"""The API as an anyio/subprocess user guesses it: string commands refused with the fix, profile names as
policies, check=, env=, stdin as bytes, a missing workdir named as such, handles that close, re-entry."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import anyio
import pytest

from policies import PolicyError, profiles
from supervisor import (
    PIPE,
    CommandFailedError,
    SandboxSetupError,
    Supervisor,
    SupervisorRunningError,
)

pytestmark = pytest.mark.kernel


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("cmd", ["echo hi", b"echo hi", Path("/bin/true")])
async def test_a_string_command_is_a_type_error_naming_the_fix(sup: Supervisor, cmd: object) -> None:
    with pytest.raises(TypeError, match=r"shlex\.split.*\['sh', '-c'"):
        await sup.run(cmd)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of arguments"):
        await sup.start(cmd)  # type: ignore[arg-type]
    assert not sup.children


async def test_policy_by_profile_name(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace)
    r = await sup.run(["/bin/sh", "-c", "touch made-here; echo $?"], policy="read-only")
    assert r.stdout.strip() != b"0"  # read-only: the workdir is not writable
    assert not (workspace / "made-here").exists()
    r = await sup.run(["/bin/sh", "-c", "touch made-here"], policy="workspace-write")
    assert r.exit_code == 0
    assert (workspace / "made-here").exists()  # the profile on the current directory
    with pytest.raises(PolicyError, match="profile"):
        await sup.run(["/bin/true"], policy="no-such-profile")
    with pytest.raises(TypeError, match="policy must be a Policy, a profile name"):
        await sup.run(["/bin/true"], policy=42)  # type: ignore[arg-type]


async def test_check_raises_with_the_result(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    assert (await sup.run(["/bin/sh", "-c", "exit 3"], policy=pol)).exit_code == 3  # default: no raise
    with pytest.raises(CommandFailedError) as err:
        await sup.run(["/bin/sh", "-c", "echo partial; exit 3"], policy=pol, check=True)
    assert err.value.result.exit_code == 3
    assert err.value.result.stdout == b"partial\n"
    assert "exit status 3" in str(err.value)
    assert (await sup.run(["/bin/true"], policy=pol, check=True)).exit_code == 0
    killed = profiles.workspace_write(workspace, timeout=0.5)
    with pytest.raises(CommandFailedError, match="wall_time violation") as err:
        await sup.run(["/bin/sleep", "30"], policy=killed, check=True)
    assert err.value.result.violation is not None


async def test_env_is_merged_and_still_filtered(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    marker = uuid.uuid4().hex
    r = await sup.run(
        ["/bin/sh", "-c", 'echo "$CORRAL_GIVEN|$SERVICE_API_KEY|${PATH:+path}"'],
        policy=pol,
        env={"CORRAL_GIVEN": marker, "SERVICE_API_KEY": "leak-" + marker},
    )
    assert r.stdout.decode().strip() == f"{marker}||path"  # merged over the caller's; secrets still dropped
    passed = profiles.workspace_write(workspace, env=["SERVICE_API_KEY"])
    r = await sup.run(
        ["/bin/sh", "-c", 'echo "$SERVICE_API_KEY"'], policy=passed, env={"SERVICE_API_KEY": marker}
    )
    assert r.stdout.decode().strip() == marker  # the policy passes it: then it arrives
    with pytest.raises(TypeError, match="env must be a mapping"):
        await sup.run(["/bin/true"], policy=pol, env={"A": 1})  # type: ignore[dict-item]


async def test_stdin_bytes_is_input(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    r = await sup.run(["/bin/cat"], policy=pol, stdin=b"through stdin")
    assert r.stdout == b"through stdin"
    with pytest.raises(ValueError, match="not both"):
        await sup.run(["/bin/cat"], policy=pol, stdin=b"a", input=b"b")


async def test_a_missing_workdir_is_a_policy_error(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace / "not-made-yet")
    with pytest.raises(PolicyError, match="workdir") as err:
        await sup.run(["/bin/true"], policy=pol)
    assert "no such directory" in str(err.value)
    assert not sup.children


async def test_reentering_a_running_supervisor_is_a_clear_error(sup: Supervisor) -> None:
    with pytest.raises(SupervisorRunningError, match="already running"):
        async with sup:
            pass
    assert (await sup.run(["/bin/true"])).exit_code == 0  # still running, unharmed


async def test_child_handles_close_and_the_block_closes_the_rest(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    before = _fds()
    async with Supervisor(max_concurrency=8) as sup:
        started = _fds()
        async with await sup.start(["/bin/echo", "hi"], policy=pol) as child:
            assert child.stdout is not None
            assert await child.stdout.receive() == b"hi\n"
        assert not child.running  # aclose waited for the exit
        child = await sup.start(["/bin/sleep", "0.1"], policy=pol, stdout=PIPE, stderr=PIPE)
        await child.aclose()
        await child.aclose()  # idempotent
        # Handles whose pipes the caller never closes: the block's exit closes them.
        for _ in range(20):
            await (await sup.start(["/bin/true"], policy=pol)).wait()
        assert _fds() >= started + 40
    assert _fds() <= before


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_ten_thousand_start_wait_cycles_keep_the_fd_count_flat(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    before = _fds()
    async with Supervisor(max_concurrency=16) as sup:

        async def cycles(n: int) -> None:
            for _ in range(n):
                child = await sup.start(["/bin/true"], policy=pol)  # PIPE stdout/stderr, never read
                await child.wait()
                await child.aclose()

        await cycles(50)
        settled = _fds()
        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(cycles, 625)
        await anyio.sleep(0.5)  # let the last watchers reap and release
        assert _fds() <= settled + 16  # flat: at most a few fds in flight, none per cycle
    assert _fds() <= before


async def test_cwd_inside_the_view_without_a_new_sandbox_pool(sup: Supervisor, workspace: Path) -> None:
    (workspace / "sub" / "deeper").mkdir(parents=True)
    pol = profiles.workspace_write(workspace)
    r = await sup.run(["/bin/pwd"], policy=pol)
    assert r.stdout.decode().strip() == str(workspace)  # the default: the workdir
    r = await sup.run(["/bin/sh", "-c", "pwd; touch here"], policy=pol, cwd="sub/deeper")
    assert r.stdout.decode().strip() == str(workspace / "sub" / "deeper")
    assert (workspace / "sub" / "deeper" / "here").exists()
    r = await sup.run(["/bin/pwd"], policy=pol, cwd=workspace / "sub")
    assert r.stdout.decode().strip() == str(workspace / "sub")
    r = await sup.run(["/bin/pwd"], policy=pol, cwd="/tmp")  # the sandbox's own /tmp
    assert r.stdout.decode().strip() == "/tmp"
    # The pre-forked sandboxes are per (policy, workdir): another cwd takes the same ones.
    for cwd in ("sub", "sub/deeper", ".", "/tmp"):
        assert (await sup.run(["/bin/true"], policy=pol, cwd=cwd)).exit_code == 0
    pool = sup._prefork
    assert pool is not None
    assert len({key for key in pool._ready}) <= 1
    with pytest.raises(SandboxSetupError) as err:
        await sup.run(["/bin/true"], policy=pol, cwd="no/such/dir")
    assert err.value.layer == "cwd"
    assert err.value.path == "no/such/dir"
    with pytest.raises(ValueError, match="cwd"):
        await sup.run(["/bin/true"], policy=pol, cwd="")
    with pytest.raises(TypeError, match="cwd"):
        await sup.run(["/bin/true"], policy=pol, cwd=3)  # type: ignore[arg-type]
