"""The spawn path end to end: exit statuses, stdio, signals, errors, environment, cwd."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import (
    PIPE,
    CommandNotExecutableError,
    CommandNotFoundError,
    SandboxSetupError,
    Supervisor,
)

pytestmark = pytest.mark.kernel


async def test_exit_code_and_output(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    r = await sup.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], policy=pol)
    assert (r.exit_code, r.signal, r.stdout, r.stderr) == (7, None, b"out\n", b"err\n")
    assert r.violation is None
    assert r.duration_s > 0


async def test_killed_by_own_signal_reports_128_plus_n(sup: Supervisor, workspace: Path) -> None:
    # The command is pid 2, not the namespace init, so a signal it sends itself is not ignored.
    pol = profiles.workspace_write(workspace)
    r = await sup.run(["/bin/sh", "-c", "kill -TERM $$; sleep 5"], policy=pol)
    assert (r.exit_code, r.signal) == (128 + signal.SIGTERM, signal.SIGTERM)
    r = await sup.run(["/bin/sh", "-c", "kill -KILL $$; sleep 5"], policy=pol)
    assert (r.exit_code, r.signal) == (137, signal.SIGKILL)


async def test_stdin_is_delivered(sup: Supervisor, workspace: Path) -> None:
    r = await sup.run(["/usr/bin/wc", "-c"], policy=profiles.workspace_write(workspace), input=b"x" * 100_000)
    assert r.stdout.strip() == b"100000"


async def test_not_found_and_not_executable(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    with pytest.raises(CommandNotFoundError) as nf:
        await sup.run(["corral-no-such-command"], policy=pol)
    assert nf.value.exit_code == 127
    script = workspace / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandNotExecutableError) as ne:
        await sup.run([str(script)], policy=pol)
    assert ne.value.exit_code == 126
    assert not sup.children


async def test_cwd_is_workdir_and_path_search(sup: Supervisor, workspace: Path) -> None:
    r = await sup.run(["pwd"], policy=profiles.workspace_write(workspace))
    assert r.stdout.decode().strip() == str(workspace)


async def test_secret_environment_is_filtered(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-leak")
    monkeypatch.setenv("MY_Password", "hunter2")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-leak")
    monkeypatch.setenv("HARMLESS_VAR", "visible")
    r = await sup.run(["/usr/bin/env"], policy=profiles.workspace_write(workspace))
    out = r.stdout.decode()
    assert "HARMLESS_VAR=visible" in out
    for leak in ("sk-leak", "hunter2", "ghp-leak"):
        assert leak not in out
    r = await sup.run(
        ["/usr/bin/env"], policy=profiles.workspace_write(workspace, env=["GITHUB_TOKEN", "X=1"])
    )
    assert "GITHUB_TOKEN=ghp-leak" in r.stdout.decode()
    assert "X=1" in r.stdout.decode()


async def test_environment_changes_reach_the_next_child(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor caches each policy's filtered environment; a change to os.environ between two spawns
    (set, changed, removed, a secret added) must still show in the second child."""
    pol = profiles.workspace_write(workspace)
    monkeypatch.setenv("CORRAL_T_A", "one")
    monkeypatch.delenv("CORRAL_T_B", raising=False)
    first = (await sup.run(["/usr/bin/env"], policy=pol)).stdout.decode()
    assert "CORRAL_T_A=one" in first
    monkeypatch.setenv("CORRAL_T_A", "two")
    monkeypatch.setenv("CORRAL_T_B", "new")
    monkeypatch.setenv("CORRAL_T_SECRET", "leak")
    second = (await sup.run(["/usr/bin/env"], policy=pol)).stdout.decode()
    assert "CORRAL_T_A=two" in second
    assert "CORRAL_T_B=new" in second
    assert "leak" not in second
    monkeypatch.delenv("CORRAL_T_A")
    third = (await sup.run(["/usr/bin/env"], policy=pol)).stdout.decode()
    assert "CORRAL_T_A" not in third
    assert "CORRAL_T_B=new" in third


async def test_only_stdio_fds_are_inherited(sup: Supervisor, workspace: Path) -> None:
    leaked = os.open("/etc/hostname", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(leaked, True)
    try:
        r = await sup.run(["/bin/ls", "/proc/self/fd"], policy=profiles.workspace_write(workspace))
    finally:
        os.close(leaked)
    # 0, 1, 2 and the fd ls opened to read the directory.
    assert sorted(int(x) for x in r.stdout.split()) == [0, 1, 2, 3]


async def test_pass_fds_are_numbered_from_3(sup: Supervisor, workspace: Path) -> None:
    r_fd, w_fd = os.pipe()
    try:
        child = await sup.start(
            ["/bin/sh", "-c", "echo via-fd3 >&3"],
            policy=profiles.workspace_write(workspace),
            pass_fds=[w_fd],
        )
        os.close(w_fd)
        result = await child.wait()
        assert result.exit_code == 0
        assert os.read(r_fd, 100) == b"via-fd3\n"
    finally:
        os.close(r_fd)


async def test_wall_timeout_kills_and_reports(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace, timeout=0.5)
    r = await sup.run(["/bin/sleep", "30"], policy=pol)
    assert r.violation is not None
    assert r.violation.kind == "wall_time"
    assert r.exit_code == 137
    assert r.duration_s < 5


async def test_streams_and_terminate(sup: Supervisor, workspace: Path) -> None:
    child = await sup.start(
        [
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        policy=profiles.workspace_write(workspace),
        stdout=PIPE,
    )
    assert child.stdout is not None
    assert await child.stdout.receive() == b"ready\n"
    result = await child.terminate(grace=5)
    assert result.exit_code == 3
    assert await child.stdout.receive() == b"got-term\n"
    await child.stdout.aclose()


async def test_cancellation_kills_and_reaps_every_child(workspace: Path) -> None:
    pids: list[int] = []
    with anyio.move_on_after(1.0):
        async with Supervisor() as sup:
            for _ in range(4):
                c = await sup.start(
                    ["/bin/sh", "-c", "sleep 100 & sleep 100"],
                    policy=profiles.workspace_write(workspace),
                )
                pids.append(c.pid)
            await anyio.sleep(30)
    assert len(pids) == 4
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped, not a zombie: the pid is gone


async def test_setup_failure_is_typed_and_names_the_layer(sup: Supervisor, workspace: Path) -> None:
    # A workdir missing at the first use is the caller's mistake (PolicyError, test_api_usability.py); one
    # removed after the policy was compiled fails in the sandbox's setup, which names its layer.
    gone = workspace / "removed-later"
    gone.mkdir()
    policy = profiles.workspace_write(gone)
    assert (await sup.run(["/bin/true"], policy=policy)).exit_code == 0
    gone.rmdir()
    with pytest.raises(SandboxSetupError) as err:
        await sup.run(["/bin/true"], policy=policy)
    assert err.value.layer == "mounts"
    assert err.value.errno != 0
    assert str(gone) in str(err.value)


async def test_workspace_under_tmp_stays_visible_and_host_tmp_is_hidden(
    sup: Supervisor, tmp_path: Path
) -> None:
    assert str(tmp_path).startswith("/tmp/")
    (tmp_path / "mine.txt").write_text("mine\n")
    r = await sup.run(
        ["/bin/sh", "-c", "cat mine.txt; echo new > new.txt; ls /tmp | wc -l"],
        policy=profiles.workspace_write(tmp_path),
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.decode().split()
    assert lines[0] == "mine"
    # The private /tmp holds only the path leading to the workspace, nothing else of the host's /tmp.
    assert int(lines[1]) == 1
    assert (tmp_path / "new.txt").read_text() == "new\n"


async def test_large_commands_run_whole(sup: Supervisor, workspace: Path) -> None:
    """An argv of ~150 KB fits the fork server's socket (the plan then outgrows a pipe's default 64 KiB and
    the fork server grows the pipe); one of ~1 MB does not, and reaches the init in a memfd instead, on the
    direct path and through a pre-forked sandbox alike. Both arrive whole."""
    pol = profiles.workspace_write(workspace)
    for n in (15_000, 100_000):  # ~150 KB, ~1 MB (ARG_MAX here is 2 MiB)
        args = [f"arg{i:06d}" for i in range(n)]
        script = 'echo $# "$1" "${' + str(n) + '}"'
        for i in range(3):  # the first two have the policy's sandboxes pre-forked, the third uses one
            if i == 2 and sup.prefork:
                with anyio.fail_after(10):
                    while not any(sup._prefork._ready.values()):  # type: ignore[union-attr]  # noqa: ASYNC110
                        await anyio.sleep(0.005)
            r = await sup.run(["/bin/sh", "-c", script, "sh", *args], policy=pol)
            assert r.exit_code == 0, r.stderr
            assert r.stdout.split() == [str(n).encode(), b"arg000000", f"arg{n - 1:06d}".encode()]


async def test_first_requests_of_a_policy_while_the_fork_servers_socket_is_full(workspace: Path) -> None:
    """Requests to the fork server are pipelined; one that finds its socket full waits, and others can
    overtake it. The compiled policy travels with a policy's first request that actually goes out, so the
    fork server knows every policy it is asked for (here: 48 concurrent first requests of 4 new policies,
    each ~48 KB of argv, 2.3 MB in all against a socket that holds ~200 KB)."""
    big = "x" * 48_000
    async with Supervisor(max_concurrency=48, prefork=0) as sup:
        for attempt in range(4):
            pol = profiles.workspace_write(workspace, timeout=30 + attempt)  # a policy not seen yet
            results = []

            async def one(pol: Policy = pol, results: list[int] = results) -> None:
                r = await sup.run(["/bin/true", big], policy=pol)
                results.append(r.exit_code)

            async with anyio.create_task_group() as tg:
                for _ in range(48):
                    tg.start_soon(one)
            assert results == [0] * 48
