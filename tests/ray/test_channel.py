"""The direct call channel (supervisor/ray/_channel.py): `run` over one TCP connection per (client, node),
authenticated by the actor's secret before anything is unpickled; a connection that breaks cancels the calls
it carried on the node (their children killed and reaped) and the caller gets NodeLostError, not a hang; the
client keeps using the node (a new connection); with direct_calls=False every call is a Ray actor task.
What a node did is checked from outside on this host (the marker file a command would make, /proc)."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import DEVNULL, Result
from supervisor.ray import NodeLostError, NodeSelector, RaySupervisor
from supervisor.ray._channel import RUN, encode
from tests.ray.conftest import WORKSPACES, RayCluster, fresh_namespace

pytestmark = pytest.mark.ray

B = NodeSelector(resources={"corral_b": 1})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


async def _frame_runs(address: str, port: int, secret: bytes, marker: Path) -> bytes:
    """Connect to a node's channel, present `secret`, send a RUN frame that makes `marker`, and return what
    the node answered before closing (b"" when it closed without answering)."""
    policy = profiles.workspace_write(str(marker.parent))
    kwargs = {"stdout": DEVNULL, "stderr": DEVNULL}
    frame = encode((RUN, 1, ["touch", str(marker)], policy, None, kwargs, None))
    async with await anyio.connect_tcp(address, port) as stream:
        with contextlib.suppress(anyio.BrokenResourceError):  # a refusing node may close before all is sent
            await stream.send(secret + frame)
        got = b""
        with anyio.fail_after(60):
            while True:
                try:
                    got += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return got
                if len(got) > 8 and len(got) >= 8 + int.from_bytes(got[:8], "big"):
                    return got


async def test_channel_refuses_a_connection_without_the_secret(
    client: RaySupervisor, shared_dir: Path
) -> None:
    node = client._nodes[next(n.node_id for n in client.nodes() if "corral_b" in n.resources)]
    assert node.info.channel is not None
    address, port, secret = node.info.channel
    assert address != "0.0.0.0"  # bound to the node's address only
    wrong = bytes(b ^ 0xFF for b in secret)
    refused = shared_dir / "refused"
    assert await _frame_runs(address, port, wrong, refused) == b""
    assert not refused.exists()
    # The same frame with the secret runs (so the refusal above was the secret's doing).
    made = shared_dir / "made"
    assert await _frame_runs(address, port, secret, made) != b""
    assert made.exists()


async def test_a_broken_connection_cancels_its_calls(client: RaySupervisor) -> None:
    async def children() -> list:  # type: ignore[type-arg]
        return [c for c in await client.children() if c.name == "cut-me"]

    found: list = []  # type: ignore[type-arg]
    errors: list[NodeLostError] = []

    async def cut_when_running() -> None:
        for _ in range(300):
            found.extend(await children())
            if found:
                break
            await anyio.sleep(0.1)
        node = client._nodes[found[0].node_id]
        assert node.channel is not None
        await node.channel.aclose()

    async def call() -> None:
        try:
            await client.run(["sleep", "300"], name="cut-me", where=B)
        except NodeLostError as err:
            errors.append(err)

    async with anyio.create_task_group() as tg:
        tg.start_soon(cut_when_running)
        with anyio.fail_after(120):
            await call()
    (err,) = errors
    assert "connection" in err.detail
    (child,) = found
    for _ in range(200):  # the node cancelled the call: its child is killed and reaped
        if not _alive(child.pid):
            break
        await anyio.sleep(0.1)
    assert not _alive(child.pid)
    # The node was not lost: the next call reconnects and runs there.
    assert child.node_id in {n.node_id for n in client.nodes()}
    again = await client.run(["true"], where=B)
    assert again.exit_code == 0


async def test_direct_calls_off_goes_through_ray(ray_cluster: RayCluster) -> None:
    async with RaySupervisor(
        namespace=fresh_namespace(), workspace_root=WORKSPACES, direct_calls=False
    ) as sup:
        results: list[Result] = []
        async with anyio.create_task_group() as tg:
            for _ in range(6):

                async def one() -> None:
                    results.append(await sup.run(["sh", "-c", "echo $$"]))

                tg.start_soon(one)
        assert [r.exit_code for r in results] == [0] * 6
        assert all(n.channel is None for n in sup._nodes.values())
        await sup.shutdown()


async def test_an_unreachable_channel_falls_back_to_ray_calls(ray_cluster: RayCluster) -> None:
    """A node whose channel the client cannot reach (a firewall between driver and nodes) is still used,
    through Ray's actor calls."""
    async with RaySupervisor(namespace=fresh_namespace(), workspace_root=WORKSPACES) as sup:
        with socket.socket() as probe:  # a port nothing listens on: connecting is refused
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        for node in sup._nodes.values():
            assert node.info.channel is not None
            node.info = dataclasses.replace(node.info, channel=("127.0.0.1", closed, node.info.channel[2]))
        result = await sup.run(["sh", "-c", "echo via ray"], where=B)
        assert (result.exit_code, result.stdout) == (0, b"via ray\n")
        node = sup._nodes[next(n.node_id for n in sup.nodes() if "corral_b" in n.resources)]
        assert node.no_channel
        assert node.channel is None
        await sup.shutdown()
