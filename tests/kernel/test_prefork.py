"""Pre-forked sandboxes (supervisor/forkserver/prefork.py): after a child exits, the supervisor has the next
sandbox for its policy and workdir built and fully confined ahead of the request. Whatever depends on the
state of the filesystem must still match the tree at request time, and every pre-forked sandbox, used or
discarded, must be reaped. (White-box where noted: `sup._prefork` is inspected to know that a ready sandbox
exists.)"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from policies import Policy, profiles
from supervisor import SandboxSetupError, Supervisor

pytestmark = pytest.mark.kernel


def _zombies_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return out


async def twice(sup: Supervisor, pol: Policy) -> None:
    """Run /bin/true twice: a (policy, workdir) gets sandboxes built from its second exit on."""
    for _ in range(2):
        assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0


async def ready_pids(sup: Supervisor, n: int = 1) -> list[int]:
    """Wait until `n` pre-forked sandboxes are ready (white-box); their pids."""
    pool = sup._prefork
    assert pool is not None
    with anyio.fail_after(10):
        while sum(len(v) for v in pool._ready.values()) < n:  # noqa: ASYNC110 (no event to wait on)
            await anyio.sleep(0.005)
    return [stub.pid for stubs in pool._ready.values() for stub in stubs]


async def test_a_ready_sandbox_serves_the_next_request(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    await twice(sup, pol)
    stubs = await ready_pids(sup, sup._prefork.per_key if sup._prefork else 1)
    r = await sup.run(["/bin/sh", "-c", "echo hi > f"], policy=pol)
    assert r.exit_code == 0, r
    assert r.pid in stubs
    assert (workspace / "f").read_text() == "hi\n"


async def test_a_replaced_workdir_is_not_served_by_a_stale_sandbox(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    await twice(sup, pol)
    stubs = await ready_pids(sup, sup._prefork.per_key if sup._prefork else 1)
    # Same path, new directory: a sandbox built before would write into the old, deleted one.
    os.rmdir(workspace)
    os.mkdir(workspace)
    r = await sup.run(["/bin/sh", "-c", "echo new > f"], policy=pol)
    assert r.exit_code == 0, r
    assert r.pid not in stubs
    assert (workspace / "f").read_text() == "new\n"


async def test_protected_paths_made_after_the_prefork_are_protected(sup: Supervisor, workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    await twice(sup, pol)
    await ready_pids(sup)  # a sandbox built before the repository existed is waiting
    await anyio.run_process(["git", "init", "-q", str(workspace)])
    hooks = workspace / ".git" / "hooks"
    before = sorted(os.listdir(hooks))
    r = await sup.run(
        ["/bin/sh", "-c", "echo evil > .git/hooks/pre-commit; echo x >> .git/config; echo ok > file"],
        policy=pol,
    )
    assert b".git/hooks/pre-commit" in r.stderr
    assert sorted(os.listdir(hooks)) == before
    assert "x" not in (workspace / ".git" / "config").read_text().split()
    assert (workspace / "file").read_text() == "ok\n"


async def test_deny_paths_made_after_the_prefork_are_hidden(sup: Supervisor, workspace: Path) -> None:
    secret = workspace / "secret.txt"
    pol = profiles.workspace_write(workspace, deny=[secret])
    await twice(sup, pol)
    await ready_pids(sup)
    secret.write_text("s3cr3t\n")
    r = await sup.run(["/bin/cat", str(secret)], policy=pol)
    assert b"s3cr3t" not in r.stdout


async def test_discarded_sandboxes_are_reaped(workspace: Path) -> None:
    policies = [profiles.workspace_write(workspace, timeout=10 + i) for i in range(7)]
    async with Supervisor() as sup:
        for _ in range(3):
            for pol in policies:  # more policies than the supervisor keeps sandboxes for
                assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        # Discarded sandboxes are reaped as soon as they die: no zombie piles up.
        with anyio.fail_after(5):
            while len(_zombies_of(os.getpid())) > 1:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.005)
    assert _zombies_of(os.getpid()) == []
    # No sandbox init of ours is left at all: every child process of this test process is gone.
    children = [e for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == os.getpid()]
    assert children == []


def _mountinfo_fds() -> list[int]:
    """This process's fds open on its /proc/<pid>/mountinfo."""
    target = f"/proc/{os.getpid()}/mountinfo"
    out = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == target:
                out.append(int(entry))
        except OSError:
            continue
    return out


async def test_a_closed_supervisor_leaves_no_mount_table_fd(workspace: Path) -> None:
    """The pool's MountTable holds /proc/self/mountinfo open (a reference to the mount namespace): it was
    never closed, one fd per Supervisor entered and left in the same process."""
    pol = profiles.workspace_write(workspace, timeout=10)
    before = _mountinfo_fds()
    for _ in range(3):
        async with Supervisor() as sup:
            await twice(sup, pol)
            assert len(_mountinfo_fds()) > len(before)  # held while it runs
    assert _mountinfo_fds() == before


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


async def test_a_dead_fork_server_fails_the_request_not_the_supervisor(workspace: Path) -> None:
    """White-box: the fork server is killed by pid (it is this test's own supervisor's child). Ready
    sandboxes still serve; a request in flight at the death may fail (SandboxSetupError, layer "fork
    server"); the server is started again, so the calls after it succeed, and leaving the block works."""
    pol = profiles.workspace_write(workspace)
    async with Supervisor() as sup:
        await twice(sup, pol)
        await ready_pids(sup, 1)
        fs = sup._forkserver
        assert fs is not None
        assert fs._proc is not None
        fs._proc.kill()
        fs._proc.wait()
        outcomes: list[str] = []
        for _ in range(6):
            try:
                r = await sup.run(["/bin/true"], policy=pol)
                outcomes.append(f"exit {r.exit_code}")
            except SandboxSetupError as err:
                outcomes.append(err.layer)
        assert outcomes[-3:] == ["exit 0"] * 3, outcomes
        assert all(o in ("exit 0", "fork server") for o in outcomes), outcomes
        assert fs.restarts == 1
    assert _zombies_of(os.getpid()) == []


async def test_a_policy_run_once_gets_no_sandbox_built(sup: Supervisor, workspace: Path) -> None:
    """White-box: one-off policies (a distinct timeout per call) must not cost builds nothing will use."""
    for i in range(3):
        pol = profiles.workspace_write(workspace, timeout=30 + i)
        assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
    await anyio.sleep(0.3)
    pool = sup._prefork
    assert pool is not None
    assert sum(len(v) for v in pool._ready.values()) == 0
    assert not pool._building


async def test_prefork_zero_builds_nothing(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    async with Supervisor(prefork=0) as sup:
        for _ in range(3):
            assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        await anyio.sleep(0.3)
        pool = sup._prefork
        assert pool is not None
        assert sum(len(v) for v in pool._ready.values()) == 0


# --- the fork server's plan cache (the direct path reuses a packed view while its fingerprint holds) ----


async def test_a_cached_view_does_not_miss_a_later_git_init(workspace: Path) -> None:
    pol = profiles.workspace_write(workspace)
    async with Supervisor(prefork=0) as sup:
        for _ in range(3):  # the view for (policy, workdir) is packed and cached, without a repository
            assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        await anyio.run_process(["git", "init", "-q", str(workspace)])
        hooks = workspace / ".git" / "hooks"
        before = sorted(os.listdir(hooks))
        r = await sup.run(
            ["/bin/sh", "-c", "echo evil > .git/hooks/pre-commit; echo x >> .git/config"], policy=pol
        )
    assert b".git/hooks/pre-commit" in r.stderr
    assert sorted(os.listdir(hooks)) == before
    assert "x" not in (workspace / ".git" / "config").read_text().split()


async def test_a_cached_view_does_not_miss_a_later_denied_file(workspace: Path) -> None:
    secret = workspace / "secret.txt"
    pol = profiles.workspace_write(workspace, deny=[secret])
    async with Supervisor(prefork=0) as sup:
        for _ in range(3):
            assert (await sup.run(["/bin/true"], policy=pol)).exit_code == 0
        secret.write_text("s3cr3t\n")
        r = await sup.run(["/bin/cat", str(secret)], policy=pol)
    assert b"s3cr3t" not in r.stdout


async def test_a_workdir_under_tmp_is_served_ahead_and_stays_visible(sup: Supervisor, tmp_path: Path) -> None:
    """A workdir under /tmp (tempfile's default) gets pre-forked sandboxes too: each keeps the workdir
    visible and writable over its private /tmp, which shows nothing else of the host's."""
    assert str(tmp_path).startswith("/tmp/")
    (tmp_path / "mine.txt").write_text("mine\n")
    (Path("/tmp") / f"host-{os.getpid()}.txt").write_text("host\n")
    try:
        pol = profiles.workspace_write(tmp_path)
        await twice(sup, pol)
        stubs = await ready_pids(sup)
        r = await sup.run(["/bin/sh", "-c", "cat mine.txt; echo new > new.txt; ls /tmp | wc -l"], policy=pol)
        assert r.pid in stubs
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.decode().split()
        assert lines[0] == "mine"
        assert int(lines[1]) == 1  # only the path leading to the workdir
        assert (tmp_path / "new.txt").read_text() == "new\n"
    finally:
        (Path("/tmp") / f"host-{os.getpid()}.txt").unlink()


async def test_a_ready_sandbox_is_taken_without_a_fingerprint_in_a_worker_thread(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While nothing its view depends on changed, a ready sandbox is handed over after a Recheck on the loop
    (forkserver/_recheck.py): no fingerprint in a worker thread at the request (white-box: the pool's stubs
    and its thread-side fingerprint are inspected)."""
    from supervisor.forkserver import prefork

    pol = profiles.workspace_write(workspace)
    await anyio.sleep(0.05)  # the workspace's ctimes older than the Recheck's margin
    await twice(sup, pol)
    stubs = await ready_pids(sup, sup._prefork.per_key if sup._prefork else 1)
    assert sup._prefork is not None
    ready = [stub for stubs_ in sup._prefork._ready.values() for stub in stubs_]
    assert all(stub.recheck is not None for stub in ready), "a ready sandbox without a Recheck"
    threaded = 0
    real = prefork._fingerprint

    async def counting(prepared: object, cwd: str) -> tuple[object, ...]:
        nonlocal threaded
        threaded += 1
        return await real(prepared, cwd)  # type: ignore[arg-type]

    monkeypatch.setattr(prefork, "_fingerprint", counting)
    r = await sup.run(["/bin/sh", "-c", "echo hi > f"], policy=pol)
    assert r.exit_code == 0, r
    assert r.pid in stubs
    assert threaded == 0, "the request's fingerprint went to a worker thread"


async def test_the_next_build_of_a_key_starts_from_the_last_fingerprint_while_it_holds(
    sup: Supervisor, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key's builds after the first take no fingerprint in a worker thread while the last one's Recheck
    holds; a change to what it covers makes the next build take one again (white-box: the pool's
    thread-side take is counted)."""
    from supervisor.forkserver import prefork

    secret = workspace / "secret.txt"
    pol = profiles.workspace_write(workspace, deny=[secret])
    await anyio.sleep(0.05)  # the workspace's ctimes older than the Recheck's margin
    await twice(sup, pol)
    per_key = sup._prefork.per_key if sup._prefork else 1
    await ready_pids(sup, per_key)
    taken = 0
    real = prefork._take

    async def counting(prepared: object, cwd: str) -> object:
        nonlocal taken
        taken += 1
        return await real(prepared, cwd)  # type: ignore[arg-type]

    monkeypatch.setattr(prefork, "_take", counting)
    stubs: list[int] = []
    for _ in range(4):
        stubs += await ready_pids(sup, per_key)
        r = await sup.run(["/bin/true"], policy=pol)
        assert r.pid in stubs
    await ready_pids(sup, per_key)
    assert taken == 0, "a build took its fingerprint in a worker thread although nothing changed"
    secret.write_text("s3cr3t\n")
    r = await sup.run(["/bin/cat", str(secret)], policy=pol)
    assert b"s3cr3t" not in r.stdout
    await ready_pids(sup, per_key)
    assert taken >= 1, "a build reused a fingerprint its Recheck no longer vouched for"
    r = await sup.run(["/bin/cat", str(secret)], policy=pol)
    assert b"s3cr3t" not in r.stdout
