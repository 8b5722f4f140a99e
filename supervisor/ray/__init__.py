"""corral on a Ray cluster: one Supervisor per node, in a long-lived Ray actor pinned there, and a client with
Supervisor's calls that dispatches each call to the least-loaded node allowed to run it (docs/cluster.md).

    from supervisor.ray import RaySupervisor

    async with RaySupervisor() as sup:                     # in a Ray driver or task
        result = await sup.run(["pytest", "-q"], policy="read-only")
        async with sup.session(repo_tarball) as ws:        # a workdir on one node; every call goes there
            await ws.run(["make", "test"])
            report = await ws.read_file("out/report.json")

Needs Ray (`pip install 'corral[ray]'`); the rest of corral never imports this package.
"""

from supervisor.ray._client import RaySupervisor, RemoteChild, RemoteInput, RemoteOutput, Session
from supervisor.ray._files import WorkspaceError
from supervisor.ray._node import RemoteError
from supervisor.ray._types import (
    NodeInfo,
    NodeLoad,
    NodeLostError,
    NodeSelector,
    PlacementError,
    RemoteChildInfo,
    RemoteEvent,
    SessionLostError,
)

__all__ = [
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
