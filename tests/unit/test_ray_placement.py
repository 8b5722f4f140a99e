"""RaySupervisor's placement on nodes described by hand (no Ray cluster: the nodes' reports are given as
NodeLoad values, as the node actors send them): allowed nodes by selector and profile, least loaded first,
the per-node cap, memory against the policies' limits."""

from __future__ import annotations

import anyio
import pytest

from policies import profiles
from supervisor.ray import NodeInfo, NodeLoad, NodeSelector, PlacementError, RaySupervisor
from supervisor.ray._client import _Node

GIB = 1 << 30


def _node(name: str, cap: int = 4, memory: int = 8 * GIB, **resources: float) -> _Node:
    info = NodeInfo(name, "10.0.0.1", 1, cap, memory, {"CPU": 1.0, **resources}, {"pool": name})
    return _Node(info, actor=None)


def _client(*nodes: _Node, **kw: object) -> RaySupervisor:
    sup = RaySupervisor(refresh_interval=0.05, **kw)  # type: ignore[arg-type]
    sup._nodes = {n.id: n for n in nodes}
    return sup


async def test_least_loaded_first_and_the_cap() -> None:
    a, b = _node("a", cap=2), _node("b", cap=2)
    sup = _client(a, b)
    chosen = [(await sup._place(None, None, 0)).id for _ in range(4)]
    assert sorted(chosen) == ["a", "a", "b", "b"]
    # Both at their cap: the next call waits until one is released.
    with anyio.move_on_after(0.3) as waited:
        await sup._place(None, None, 0)
    assert waited.cancelled_caught
    sup._release(b, 0)
    assert (await sup._place(None, None, 0)).id == "b"


async def test_other_clients_load_from_the_nodes_reports() -> None:
    a, b = _node("a", cap=10), _node("b", cap=10)
    a.note(NodeLoad(running=8, calls=8, memory_available=8 * GIB, memory_committed=0, at=0.0))
    sup = _client(a, b)
    assert [(await sup._place(None, None, 0)).id for _ in range(3)] == ["b", "b", "b"]


async def test_selectors_by_call_and_by_profile() -> None:
    a, b = _node("a", trusted=1.0), _node("b")
    sup = _client(a, b, placement={"full-access": NodeSelector(resources={"trusted": 1})})
    for _ in range(3):
        node = await sup._place("full-access", None, 0)
        assert node.id == "a"
    assert (await sup._place(None, NodeSelector(labels={"pool": "b"}), 0)).id == "b"
    with pytest.raises(PlacementError, match="selector"):
        await sup._place(None, NodeSelector(labels={"pool": "nowhere"}), 0)
    b.alive = False
    with pytest.raises(PlacementError):
        await sup._place(None, NodeSelector(labels={"pool": "b"}), 0)


async def test_memory_against_the_policies_limits() -> None:
    small, big = _node("small", memory=2 * GIB), _node("big", memory=16 * GIB)
    sup = _client(small, big)
    policy = profiles.read_only("/", memory="4G")
    assert (await sup._place(policy, None, 4 * GIB)).id == "big"
    with pytest.raises(PlacementError, match="memory"):
        await sup._place(None, None, 32 * GIB)
    # The big node's children hold limits for 14 GiB of its 16: a 4 GiB call waits for room.
    big.note(NodeLoad(running=3, calls=3, memory_available=15 * GIB, memory_committed=14 * GIB, at=0.0))
    with anyio.move_on_after(0.3) as waited:
        await sup._place(policy, None, 4 * GIB)
    assert waited.cancelled_caught


def test_public_api_is_pinned() -> None:
    import supervisor.ray as cluster

    assert cluster.__all__ == [
        "NodeInfo",
        "NodeLoad",
        "NodeLostError",
        "NodeSelector",
        "PlacementError",
        "RaySupervisor",
        "RemoteChild",
        "RemoteChildInfo",
        "RemoteError",
        "RemoteEvent",
        "RemoteInput",
        "RemoteOutput",
        "Session",
        "SessionLostError",
        "WorkspaceError",
    ]
    for name in cluster.__all__:
        assert getattr(cluster, name).__module__.startswith("supervisor.ray."), name
    from policies import CorralError

    for error in (
        cluster.NodeLostError,
        cluster.SessionLostError,
        cluster.PlacementError,
        cluster.WorkspaceError,
    ):
        assert issubclass(error, CorralError)
    lost = cluster.SessionLostError("n" * 56, "s1", "run", "raylet died\x1b[2J")
    assert (lost.node_id, lost.session_id, lost.detail) == ("n" * 56, "s1", "raylet died\x1b[2J")
    assert "\x1b" not in str(lost)  # printable: a detail may carry what a node sent


def test_a_policy_is_pickled_once_per_object_for_the_channel() -> None:
    """The channel carries a Policy as its pickle, made once per Policy object and kept for a bounded number
    of them; names and None go as they are."""
    import pickle

    from supervisor.ray._client import POLICY_BLOBS

    sup = RaySupervisor()
    policy = profiles.workspace_write("/var/tmp")
    blob = sup._wire_policy(policy)
    assert isinstance(blob, bytes)
    assert sup._wire_policy(policy) is blob
    assert pickle.loads(blob) == policy
    equal = profiles.workspace_write("/var/tmp")
    assert sup._wire_policy(equal) is not blob  # another object: its own pickle (the same bytes)
    assert sup._wire_policy("read-only") == "read-only"
    assert sup._wire_policy(None) is None
    for i in range(POLICY_BLOBS + 10):
        sup._wire_policy(profiles.workspace_write(f"/var/tmp/{i}"))
    assert len(sup._blobs) == POLICY_BLOBS
