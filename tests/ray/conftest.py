"""A real two-node Ray cluster on this machine for the cluster-mode tests (ray.cluster_utils: the head and a
second node, each its own raylet with its own custom resource), started once per module and stopped after it,
every process it started ended by its pid (Cluster.shutdown) and checked gone.

Kept small (2 cores shared here): one CPU per node, no dashboard, the node actors take no CPU; Ray's health
checks are made fast so that a killed raylet is declared dead in about two seconds, not fifteen.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

from supervisor.ray import RaySupervisor

#: Session workdirs of the tests' node actors: outside /tmp, as the kernel tests' workspaces; one directory
#: per run (another run of these tests on the machine has its own, and removes only its own).
WORKSPACES = f"/var/tmp/corral-ray-tests/{uuid.uuid4().hex[:12]}"

#: A lost node is noticed in seconds, not Ray's default half minute; yet a node on a machine busy with other
#: work (2 cores running sandboxes) is not declared dead for a few late answers (500 ms x 3 did, under load).
FAST_HEALTH = {
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 5,
}


@dataclass
class RayCluster:
    cluster: Any
    head: Any
    second: Any

    def pids(self) -> list[int]:
        """Every process the test cluster started (the nodes' raylets, GCS, monitors...)."""
        out = []
        for node in self.cluster.list_all_nodes():
            for procs in node.all_processes.values():
                out += [p.process.pid for p in procs]
        return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "resources": {"corral_a": 1},
            "_system_config": FAST_HEALTH,
            "object_store_memory": 80 * 1024 * 1024,
        },
    )
    second = cluster.add_node(
        num_cpus=1, resources={"corral_b": 1}, labels={"pool": "b"}, object_store_memory=80 * 1024 * 1024
    )
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
    handle = RayCluster(cluster, cluster.head_node, second)
    try:
        yield handle
    finally:
        started = set(handle.pids()) | _descendants(set(handle.pids()))
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 20
        left = [p for p in started if not _gone(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [p for p in left if not _gone(p)]
        shutil.rmtree(WORKSPACES, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


def _descendants(roots: set[int]) -> set[int]:
    """The processes below `roots` now (Ray's workers, the node actors, their fork servers and children)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def node_of(path: str) -> str:
    """The node id in a node's workspace path (<root>/<node id>/...)."""
    rel = os.path.relpath(path, WORKSPACES)
    return rel.split("/", 1)[0]


@pytest.fixture
async def client(ray_cluster: RayCluster) -> AsyncIterator[RaySupervisor]:
    async with RaySupervisor(
        namespace="corral-tests", max_concurrency=16, workspace_root=WORKSPACES, refresh_interval=0.5
    ) as sup:
        yield sup


@pytest.fixture(params=[True, False], ids=["direct", "ray-calls"])
async def either_client(
    ray_cluster: RayCluster, request: pytest.FixtureRequest
) -> AsyncIterator[RaySupervisor]:
    """The client with `run` over the direct channel, and with Ray's actor calls only."""
    async with RaySupervisor(
        namespace="corral-tests",
        max_concurrency=16,
        workspace_root=WORKSPACES,
        refresh_interval=0.5,
        direct_calls=request.param,
    ) as sup:
        yield sup


def fresh_namespace() -> str:
    return f"corral-tests-{uuid.uuid4().hex[:8]}"


SCRATCH = Path("/var/tmp/corral-tests")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A workdir that exists for both nodes (they share this machine's filesystem)."""
    d = Path("/var/tmp/corral-tests") / f"ray-{uuid.uuid4().hex[:10]}"
    d.mkdir(parents=True, mode=0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
