"""corral on a real two-node Ray cluster (tests/ray/conftest.py): dispatch over both nodes, placement,
sessions pinned to a node, cancellation reaching the remote child, a node killed mid-call, events, totals,
metrics targets, and results identical to a local Supervisor.

Both nodes run on this machine, so what a node did is checked from outside on this host: its processes in
/proc, its cgroup directories, its workspace directories.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import DEVNULL, PIPE, Result, Supervisor
from supervisor.ray import (
    NodeLostError,
    NodeSelector,
    PlacementError,
    RaySupervisor,
    RemoteEvent,
    SessionLostError,
    WorkspaceError,
)
from tests.ray.conftest import WORKSPACES, RayCluster, fresh_namespace, node_of, ray

pytestmark = pytest.mark.ray

A = NodeSelector(resources={"corral_a": 1})
B = NodeSelector(resources={"corral_b": 1})


def _node_with(sup: RaySupervisor, resource: str) -> str:
    return next(n.node_id for n in sup.nodes() if resource in n.resources)


def _tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def _wait_for(predicate, what: str, seconds: float = 30.0):  # type: ignore[no-untyped-def]
    """The first true value of the coroutine function `predicate`, polled every 0.1 s for `seconds`."""
    for _ in range(int(seconds * 10)):
        value = await predicate()
        if value:
            return value
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _until(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Poll the plain function `check` (filesystem and /proc looks, quick) until it is true."""
    for _ in range(int(seconds * 10)):
        if check():
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _holds_tasks(cgroup_dir: str) -> bool:
    """Whether the cgroup directory exists with a process in it."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            return bool(f.read().strip())
    except FileNotFoundError:
        return False


def _started_at(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when there is no such process: with the
    pid, what tells the process apart from a later one given the same pid (pid_max is 32768 here, and
    the machine's other work goes through pids fast)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` is a live process (not a zombie), and, given `started`, still the same one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


async def test_calls_spread_over_both_nodes(client: RaySupervisor) -> None:
    assert len(client.nodes()) == 2
    where: list[str] = []

    async def one() -> None:
        result = await client.run(["sh", "-c", "sleep 0.3; pwd"])
        assert result.exit_code == 0, result
        where.append(node_of(result.stdout.decode().strip()))

    async with anyio.create_task_group() as tg:
        for _ in range(12):
            tg.start_soon(one)
    counts = Counter(where)
    assert set(counts) == {n.node_id for n in client.nodes()}, counts
    # Least loaded first: twelve concurrent calls split evenly over two idle nodes, give or take one.
    assert min(counts.values()) >= 5, counts


async def test_placement_by_resource_and_profile(ray_cluster: RayCluster) -> None:
    async with RaySupervisor(
        namespace="corral-tests",
        workspace_root=WORKSPACES,
        max_concurrency=16,
        placement={"read-only": B},
        refresh_interval=0.5,
    ) as sup:
        a, b = _node_with(sup, "corral_a"), _node_with(sup, "corral_b")
        ro = [await sup.run(["pwd"], policy="read-only") for _ in range(4)]
        assert {node_of(r.stdout.decode().strip()) for r in ro} == {b}
        pinned = [await sup.run(["pwd"], where=A) for _ in range(4)]
        assert {node_of(r.stdout.decode().strip()) for r in pinned} == {a}
        labelled = [await sup.run(["pwd"], where=NodeSelector(labels={"pool": "b"})) for _ in range(4)]
        assert {node_of(r.stdout.decode().strip()) for r in labelled} == {b}
        with pytest.raises(PlacementError) as info:
            await sup.run(["true"], where=NodeSelector(resources={"no_such_resource": 1}))
        assert info.value.nodes == 2
        huge = profiles.read_only("/", memory=1 << 50)
        with pytest.raises(PlacementError, match="memory"):
            await sup.run(["true"], policy=huge)


async def test_per_node_cap_holds(ray_cluster: RayCluster) -> None:
    """A cap of 2 per node: 8 concurrent calls never have more than 2 children alive on one node."""
    async with RaySupervisor(
        namespace=fresh_namespace(), workspace_root=WORKSPACES, max_concurrency=2, refresh_interval=0.5
    ) as sup:
        peak: Counter[str] = Counter()
        live: Counter[str] = Counter()
        done = anyio.Event()

        async def watch() -> None:
            async with sup.subscribe() as events:
                async for ev in events:
                    if ev.kind == "started":
                        live[ev.node_id] += 1
                        peak[ev.node_id] = max(peak[ev.node_id], live[ev.node_id])
                    elif ev.kind == "exited":
                        live[ev.node_id] -= 1
                    if done.is_set() and not any(live.values()):
                        return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.5)
            async with anyio.create_task_group() as calls:
                for _ in range(8):
                    calls.start_soon(sup.run, ["sleep", "0.4"])
            done.set()
            await _until(lambda: not any(live.values()) and sum(peak.values()) > 0, "the exit events")
            tg.cancel_scope.cancel()
        assert set(peak) == {n.node_id for n in sup.nodes()}, peak
        assert max(peak.values()) <= 2, peak
        totals = await sup.totals()
        assert totals["started"] == 8, totals
        await sup.shutdown()


async def test_session_pinned_to_its_node(client: RaySupervisor) -> None:
    source = _tarball({"hello.txt": b"from the caller\n", "src/main.c": b"int main(void){return 0;}\n"})
    async with client.session(source, where=B) as ws:
        assert ws.node_id == _node_with(client, "corral_b")
        assert node_of(ws.workdir) == ws.node_id
        for _ in range(5):
            r = await ws.run(["sh", "-c", "pwd; cat hello.txt"])
            assert r.stdout.decode().splitlines() == [ws.workdir, "from the caller"]
        await ws.run(["sh", "-c", "mkdir -p out && echo built > out/report.txt"], check=True)
        assert await ws.read_file("out/report.txt") == b"built\n"
        with tarfile.open(fileobj=io.BytesIO(await ws.archive("out"))) as tar:
            assert tar.getnames() == ["report.txt"]
        assert _exists(ws.workdir)  # the nodes share this machine: the workdir is visible here
        workdir = ws.workdir
    assert not _exists(workdir)


async def test_session_from_a_ray_object_or_a_local_directory(
    client: RaySupervisor, shared_dir: Path
) -> None:
    ref = await anyio.to_thread.run_sync(ray.put, _tarball({"from/object.txt": b"in the object store\n"}))
    async with client.session(ref, where=A) as ws:
        assert node_of(ws.workdir) == _node_with(client, "corral_a")
        assert await ws.read_file("from/object.txt") == b"in the object store\n"
    (shared_dir / "sub").mkdir()
    (shared_dir / "sub" / "local.txt").write_text("tarred by the client\n")
    async with client.session(shared_dir, where=B) as ws:
        r = await ws.run(["cat", "sub/local.txt"])
        assert r.stdout == b"tarred by the client\n"
        assert ws.workdir != str(shared_dir)
    async with client.session(None) as ws:
        r = await ws.run(["ls", "-A"])
        assert (r.exit_code, r.stdout) == (0, b"")


async def test_namespaces_keep_their_own_workspaces(client: RaySupervisor) -> None:
    """Another namespace's actors starting on the same nodes leave this namespace's sessions alone."""
    async with client.session(_tarball({"keep.txt": b"mine\n"}), where=A) as ws:
        async with RaySupervisor(namespace=fresh_namespace(), workspace_root=WORKSPACES) as other:
            async with other.session(where=A) as theirs:
                assert os.path.dirname(theirs.workdir) != os.path.dirname(ws.workdir)
            await other.shutdown()
        assert await ws.read_file("keep.txt") == b"mine\n"
        assert (await ws.run(["cat", "keep.txt"])).stdout == b"mine\n"


async def test_session_fetch_never_follows_sandbox_symlinks(client: RaySupervisor) -> None:
    async with client.session() as ws:
        await ws.run(
            [
                "sh",
                "-c",
                "ln -s /etc/hostname leak && ln -s / root && mkfifo pipe && mkdir d && ln -s /etc d/etc",
            ],
            check=True,
        )
        for path in ("leak", "root/etc/hostname", "d/etc/hostname", "../../etc/hostname", "/etc/hostname"):
            with pytest.raises(WorkspaceError):
                await ws.read_file(path)
        with pytest.raises(WorkspaceError, match="regular"):
            await ws.read_file("pipe")  # a FIFO is refused, not read (which would hang)
        with tarfile.open(fileobj=io.BytesIO(await ws.archive())) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert members["leak"].issym()
        assert members["leak"].linkname == "/etc/hostname"
        assert members["d/etc"].issym()
        assert "pipe" not in members
        assert not any(m.isreg() and "hostname" in m.name for m in members.values())


async def test_session_workdir_removed_when_owner_dies(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """The session's owner (a Ray task's process) dies without closing it: the node removes the workdir
    when the lease runs out."""
    note = tmp_path / "workdir"

    @ray.remote(num_cpus=0, max_retries=0)
    def owner(note_path: str) -> None:
        async def main() -> None:
            sup = RaySupervisor(namespace="corral-tests", workspace_root=WORKSPACES, session_lease=2.0)
            await sup.__aenter__()
            ws = await sup.session().__aenter__()
            await anyio.Path(note_path).write_text(ws.workdir)
            os._exit(1)  # dies holding the session

        anyio.run(main)

    with pytest.raises(ray.exceptions.RayError):
        await anyio.to_thread.run_sync(ray.get, owner.remote(str(note)))
    workdir = note.read_text()
    assert workdir.startswith(WORKSPACES)
    await _until(lambda: not _exists(workdir), "the lease to expire", seconds=30)


async def test_client_works_inside_a_ray_task(client: RaySupervisor) -> None:
    @ray.remote(num_cpus=0, max_retries=0)
    def task(sup: RaySupervisor) -> Result:
        async def main() -> Result:
            async with sup:
                return await sup.run(["echo", "from a task"])

        return anyio.run(main)

    result = await anyio.to_thread.run_sync(ray.get, task.remote(client))
    assert result.stdout == b"from a task\n"


async def test_results_identical_to_a_local_supervisor(client: RaySupervisor, shared_dir: Path) -> None:
    (shared_dir / "data.txt").write_text("shared\n")
    policy = profiles.workspace_write(shared_dir)
    limited = profiles.workspace_write(shared_dir, memory="48M", pids=64, timeout=20)
    cases: list[tuple[list[str], dict[str, object]]] = [
        (["echo", "hello"], {}),
        (["sh", "-c", "echo out; echo err >&2; exit 3"], {}),
        (["cat"], {"input": b"fed through stdin\n"}),
        (["cat", "data.txt"], {}),
        (["sh", "-c", "kill -TERM $$"], {}),
        (["sh", "-c", 'echo "$CORRAL_T"'], {"env": {"CORRAL_T": "v"}}),
        (["no-such-command-here"], {}),
        (["head", "-c", "3000000", "/dev/zero"], {}),
        (["python3", "-c", "b = bytearray(200 << 20); import time; time.sleep(5)"], {"policy": limited}),
    ]

    def shape(r: Result | BaseException) -> object:
        if isinstance(r, BaseException):
            return (type(r), str(r))
        v = r.violation
        return (
            r.exit_code,
            r.signal,
            None if v is None else (v.kind, v.limit),
            r.stdout,
            r.stderr,
            r.stdout_truncated,
            r.stderr_truncated,
            r.enforced,
            r.missing,
            r.killed,
        )

    async with Supervisor(max_concurrency=4) as local:
        for cmd, kw in cases:
            kw = {"policy": policy, **kw}
            outcomes = []
            for runner in (local.run, client.run):
                try:
                    outcomes.append(shape(await runner(cmd, **kw)))  # type: ignore[operator]
                except Exception as err:
                    outcomes.append(shape(err))
            assert outcomes[0] == outcomes[1], cmd


async def test_driver_cancellation_kills_the_remote_child(either_client: RaySupervisor) -> None:
    client = either_client
    with anyio.CancelScope() as scope:

        async def cancel_when_running() -> None:
            found = await _wait_for(lambda: _children_named(client, "cancel-me"), "the child on its node")
            info.extend(found)
            started.extend(_started_at(c.pid) for c in found)
            scope.cancel()

        info: list = []  # type: ignore[type-arg]
        started: list[int | None] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_running)
            await client.run(["sleep", "300"], name="cancel-me", where=B)
    assert scope.cancelled_caught
    (child,) = info
    assert child.node_id == _node_with(client, "corral_b")
    # When the cancelled call returned, the node had killed the sandbox and its init had vouched that the
    # command and all it left were reaped; the init itself may still be exiting for a moment (Child.wait's
    # "final"), and its supervisor reaps it right after: no process.
    assert started[0] is not None
    await _until(lambda: not _alive(child.pid, started[0]), "the sandbox's init reaped", 10)
    assert not await _children_named(client, "cancel-me")
    # Its cgroup leaf goes in the node's next removal batch: removed, or (cgroup v1) kept empty for the node's
    # next child (docs/cgroups.md, "Reused leaves").
    await _until(lambda: not any(_holds_tasks(p) for p in child.cgroup_paths), "the cgroup leaf's release")


async def _children_named(client: RaySupervisor, name: str) -> list:  # type: ignore[type-arg]
    return [c for c in await client.children() if c.name == name]


async def test_start_wait_kill(client: RaySupervisor) -> None:
    child = await client.start(["sh", "-c", "echo started; echo e >&2"], where=A)
    assert child.node_id == _node_with(client, "corral_a")
    assert child.stdin is None
    assert child.stdout is not None
    assert child.stderr is not None
    async with child:
        out = b"".join([chunk async for chunk in child.stdout])
        err = b"".join([chunk async for chunk in child.stderr])
        result = await child.wait()
    assert (result.exit_code, out, err) == (0, b"started\n", b"e\n")
    assert (result.stdout, result.stderr) == (b"", b"")  # as Supervisor.start: the output is in the streams
    long = await client.start(["sleep", "300"], stdout=DEVNULL, stderr=DEVNULL)
    assert long.stdout is None
    assert _alive(long.pid)
    await long.kill()
    killed = await long.wait()
    assert killed.signal == signal.SIGKILL
    assert not _alive(long.pid)


async def test_start_streams_output_live_and_forwards_stdin(client: RaySupervisor) -> None:
    """A started child's output reaches the driver while it runs, and the driver's writes reach its stdin:
    a line-by-line echo through `sh` (read, then echo back) answers each line before the next is sent."""
    script = 'echo ready; while read -r line; do echo "got $line"; done; echo bye >&2'
    child = await client.start(["sh", "-c", script], stdin=PIPE, where=B)
    assert child.stdin is not None
    assert child.stdout is not None
    assert child.stderr is not None
    async with child:
        with anyio.fail_after(60):
            assert await child.stdout.receive() == b"ready\n"
            for word in ("one", "two"):
                await child.stdin.send(f"{word}\n".encode())
                assert await child.stdout.receive() == f"got {word}\n".encode()
            assert _alive(child.pid)  # the answers came while it ran, not with its Result
            await child.stdin.aclose()  # end of file: the loop ends
            assert b"".join([c async for c in child.stderr]) == b"bye\n"
            with pytest.raises(anyio.EndOfStream):
                await child.stdout.receive()
            result = await child.wait()
    assert result.exit_code == 0
    with pytest.raises(anyio.ClosedResourceError):
        await child.stdin.send(b"late\n")


async def test_start_output_beyond_the_window_is_not_lost(client: RaySupervisor) -> None:
    """More output than the node keeps for an unread stream: the child waits for the reader (backpressure),
    and every byte arrives, in order."""
    size = 3 * 256 * 1024 + 12345
    child = await client.start(["head", "-c", str(size), "/dev/zero"], stderr=DEVNULL)
    assert child.stdout is not None
    async with child:
        await anyio.sleep(1)  # the node's window fills; the child blocks on its pipe
        assert _alive(child.pid)
        got = 0
        with anyio.fail_after(60):
            async for chunk in child.stdout:
                assert chunk.count(0) == len(chunk)
                got += len(chunk)
            assert (await child.wait()).exit_code == 0
    assert got == size


async def test_session_start_runs_in_the_workdir(client: RaySupervisor) -> None:
    async with client.session(_tarball({"data.txt": b"in the workdir\n"})) as ws:
        child = await ws.start(["cat", "data.txt"])
        assert child.node_id == ws.node_id
        assert child.stdout is not None
        async with child:
            assert b"".join([c async for c in child.stdout]) == b"in the workdir\n"
            assert (await child.wait()).exit_code == 0


async def test_events_and_totals(client: RaySupervisor) -> None:
    before = await client.totals()
    seen: list[RemoteEvent] = []
    async with client.subscribe() as events:
        await client.run(["true"], name="ev-a", where=A)
        await client.run(["false"], name="ev-b", where=B)
        with anyio.fail_after(10):
            async for ev in events:
                seen.append(ev)
                if sum(1 for e in seen if e.kind == "exited") == 2:
                    break
    kinds = {(e.name, e.kind) for e in seen}
    assert {("ev-a", "started"), ("ev-a", "exited"), ("ev-b", "started"), ("ev-b", "exited")} <= kinds
    by_name = {e.name: e for e in seen if e.kind == "exited"}
    assert by_name["ev-a"].node_id == _node_with(client, "corral_a")
    assert by_name["ev-b"].result is not None
    assert by_name["ev-b"].result.exit_code == 1
    after = await client.totals()
    assert after["started"] - before["started"] == 2
    per_node = await client.totals(per_node=True)
    assert isinstance(per_node, dict)
    assert sum(c["started"] for c in per_node.values()) == after["started"]


async def test_metrics_targets_served_per_node(ray_cluster: RayCluster, tmp_path: Path) -> None:
    async with RaySupervisor(
        namespace=fresh_namespace(),
        workspace_root=WORKSPACES,
        metrics_port=0,
        metrics_addr="127.0.0.1",
        refresh_interval=0.5,
    ) as sup:
        await sup.run(["true"], name="scraped", where=A)
        await sup.run(["true"], name="scraped", where=B)
        sd = tmp_path / "corral.json"
        assert await sup.write_file_sd(sd) == 2
        groups = json.loads(sd.read_text())
        assert {g["labels"]["corral_node"] for g in groups} == {n.node_id for n in sup.nodes()}
        for group in groups:
            (target,) = group["targets"]
            page = await anyio.to_thread.run_sync(
                lambda t=target: urllib.request.urlopen(f"http://{t}/metrics", timeout=10).read().decode()
            )
            assert 'corral_tool_calls_total{name="scraped"' in page or "corral_children_started_total" in page
            assert "corral_" in page
        await sup.shutdown()


async def test_node_lost_mid_call(ray_cluster: RayCluster) -> None:
    """A third node is killed (its raylet, by pid: a process this test started) while a call and a session
    are on it: the call fails with NodeLostError, the session is reported lost, the other nodes keep
    serving; a node brought back gets a replacement actor."""
    cluster = ray_cluster.cluster
    victim = cluster.add_node(num_cpus=0, resources={"corral_c": 1}, object_store_memory=80 * 1024 * 1024)
    C = NodeSelector(resources={"corral_c": 1})
    try:
        async with RaySupervisor(
            namespace="corral-tests", workspace_root=WORKSPACES, max_concurrency=16, refresh_interval=0.5
        ) as sup:
            await _wait_for(lambda: _has_node(sup, "corral_c"), what="an actor on the third node")
            actor_pid = next(n.actor_pid for n in sup.nodes() if "corral_c" in n.resources)
            ws = await sup.session(where=C).__aenter__()
            assert (await ws.run(["true"])).exit_code == 0
            lost: list[BaseException] = []

            async def doomed() -> None:
                try:
                    await sup.run(["sleep", "300"], name="doomed", where=C)
                except NodeLostError as err:
                    lost.append(err)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(doomed)
                    (child,) = await _wait_for(
                        lambda: _children_named(sup, "doomed"), what="the doomed child"
                    )
                    raylet = victim.all_processes["raylet"][0].process
                    os.kill(raylet.pid, signal.SIGKILL)
                    # The other nodes keep serving while the loss is being detected.
                    r = await sup.run(["echo", "still here"], where=A)
                    assert r.stdout == b"still here\n"
            (err,) = lost
            assert isinstance(err, NodeLostError)
            assert err.node_id == child.node_id
            assert ws.lost
            with pytest.raises(SessionLostError):
                await ws.run(["true"])
            await ws.close()
            # The node's actor fences itself once its raylet is gone: it closes its supervisor (the sandbox
            # killed and reaped, the session's workdir removed) and exits; nothing outlives the node.
            await _until(
                lambda: not (_alive(child.pid) or _alive(actor_pid) or _exists(ws.workdir)),
                "the node's fence",
            )
            assert (await sup.run(["true"], where=B)).exit_code == 0
            # No live node may take it: an error, not a wait. PlacementError once Ray has declared the node
            # dead; NodeLostError while its health checks still run (a few seconds) and the call reaches
            # the fenced actor.
            with pytest.raises((PlacementError, NodeLostError)):
                await sup.run(["true"], where=C)

            cluster.remove_node(victim, allow_graceful=False)
            async with sup.subscribe() as events:
                victim = cluster.add_node(
                    num_cpus=0, resources={"corral_c": 1}, object_store_memory=80 * 1024 * 1024
                )
                node_c = await _wait_for(lambda: _has_node(sup, "corral_c"), what="a replacement actor")
                assert node_c != child.node_id
                r = await sup.run(["pwd"], name="returned", where=C)
                assert node_of(r.stdout.decode().strip()) == node_c
                # The subscription follows the node that joined after it began.
                with anyio.fail_after(20):
                    async for ev in events:
                        if ev.name == "returned" and ev.kind == "exited":
                            assert ev.node_id == node_c
                            break
    finally:
        cluster.remove_node(victim, allow_graceful=False)


async def _has_node(sup: RaySupervisor, resource: str) -> str | None:
    return next((n.node_id for n in sup.nodes() if resource in n.resources), None)


async def test_a_node_supervisor_that_cannot_start(ray_cluster: RayCluster) -> None:
    """A node supervisor failing to start (here a bad option) leaves no actor behind and says why."""
    namespace = fresh_namespace()
    with pytest.raises(PlacementError, match="could start") as info:
        async with RaySupervisor(
            namespace=namespace, workspace_root=WORKSPACES, supervisor_options={"monitor_interval": -1}
        ):
            pass
    assert "monitor_interval" in str(info.value)

    async def none_left() -> bool:
        names = await anyio.to_thread.run_sync(lambda: ray.util.list_named_actors(all_namespaces=True))
        return not [a for a in names if a["namespace"] == namespace]

    # ray.kill is asynchronous: the GCS releases the name once it has the actor dead.
    await _wait_for(none_left, "the failed actors to be gone", seconds=20)


def _stat(pid: int, tid: int | None = None) -> list[str]:
    """The fields of /proc/PID/stat (of one thread, given `tid`) after the command name."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        return f.read().rsplit(") ", 1)[1].split()


def _nice(pid: int, tid: int | None = None) -> int:
    return int(_stat(pid, tid)[16])


async def test_node_supervisor_runs_at_the_raylets_niceness(client: RaySupervisor) -> None:
    """Ray starts its workers at nice 15; the node actor (every thread), its fork server and its sandboxes run
    at the raylet's niceness instead: checked on the node's processes in /proc."""
    for info in client.nodes():
        want = _nice(int(_stat(info.actor_pid)[1]))  # its parent's: the raylet's
        threads = os.listdir(f"/proc/{info.actor_pid}/task")
        assert {_nice(info.actor_pid, int(t)) for t in threads} == {want}
    child = await client.start(["sleep", "30"], stdout=DEVNULL, stderr=DEVNULL, where=B)
    async with child:
        assert _nice(child.pid) == want
        await child.kill()
        await child.wait()
