"""What the node actors and the client exchange: plain picklable values, and the errors of cluster mode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from policies import CommandDecision, CorralError
from supervisor import Denial, Result, Violation


class NodeLostError(CorralError):
    """The node (or its corral actor) was lost while a call was on it, or before it could be sent there.

    node_id: the Ray node id; operation: the call that was cut off ("run", "session", ...); detail: what Ray
    said. A command that was running when the node was lost may or may not have had its side effects: it is
    never retried (retrying is the caller's decision).
    """

    def __init__(self, node_id: str, operation: str, detail: str = "") -> None:
        self.node_id = node_id
        self.operation = operation
        self.detail = detail
        msg = f"node {node_id[:12]} lost during {operation}"
        super().__init__(msg + (f": {detail[:600]}" if detail else ""))


class SessionLostError(NodeLostError):
    """The session's node was lost (or the node's actor restarted without it): its workdir is gone with
    it, and every call on the session raises this from then on. `session_id` names the session."""

    def __init__(self, node_id: str, session_id: str, operation: str, detail: str = "") -> None:
        self.session_id = session_id
        super().__init__(node_id, f"{operation} in session {session_id}", detail)


class PlacementError(CorralError):
    """No node of the cluster may run the call: none matches its selector (`selector`), or none has
    the memory its policy's limit asks for (`memory`, bytes). `nodes` is how many live nodes were
    considered."""

    def __init__(
        self, reason: str, selector: object = None, memory: int | None = None, nodes: int = 0
    ) -> None:
        self.reason = reason
        self.selector = selector
        self.memory = memory
        self.nodes = nodes
        super().__init__(f"no node can take the call ({nodes} live): {reason}")


@dataclass(frozen=True)
class NodeSelector:
    """Which nodes may run a call: each Ray resource named in `resources` present on the node with at
    least that amount (its total, as `ray start --resources` declared it), and each label in `labels`
    equal to the node's (`ray start --labels`). The empty selector matches every node."""

    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, resources: Mapping[str, float], labels: Mapping[str, str]) -> bool:
        return all(resources.get(k, 0.0) >= v for k, v in self.resources.items()) and all(
            labels.get(k) == v for k, v in self.labels.items()
        )


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node's corral actor, as it reports itself when opened."""

    node_id: str
    address: str
    actor_pid: int
    max_concurrency: int
    memory_total: int
    resources: Mapping[str, float]
    labels: Mapping[str, str]
    metrics_port: int | None = None
    metrics_addr: str | None = None
    cgroup_status: str = ""
    #: The direct channel for `run` (supervisor/ray/_channel.py): address, port and its secret.
    channel: tuple[str, int, bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A node supervisor's live counts at `at` (time.time() on the node).

    running: children alive; calls: calls on the actor (running or waiting for a slot of the node's
    supervisor); memory_available: what the node's kernel reports available (bytes); memory_committed:
    the sum of the memory limits of the children alive (their policies' resources.memory).
    """

    running: int
    calls: int
    memory_available: int
    memory_committed: int
    at: float


@dataclass(frozen=True, slots=True)
class RemoteEvent:
    """A lifecycle event of a child on a node (the remote form of supervisor.Event: the Child handle itself
    stays on the node). `kind` is "started", "violation", "denied" or "exited"; `result` is set on
    "exited", `violation` on "violation", `denial` on "denied". A "decision" event is the client's own
    (its command rules decided a command on the driver, before any node: node_id "", pid 0), with
    `decision` set and `approved` True/False when a `prompt` was put to the approver."""

    kind: Literal["started", "violation", "denied", "exited", "decision"]
    node_id: str
    pid: int
    name: str | None
    profile: str
    at: float
    result: Result | None = None
    violation: Violation | None = None
    denial: Denial | None = None
    decision: CommandDecision | None = None
    approved: bool | None = None


@dataclass(frozen=True, slots=True)
class RemoteChildInfo:
    """A child alive on a node: its host pid, name, profile, and its cgroup directories (empty without
    cgroups)."""

    node_id: str
    pid: int
    name: str | None
    profile: str
    cgroup_paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    """An exception raised on a node, carried back as data: corral's exceptions take structured fields in
    __init__, so the default exception pickling (cls(*args)) cannot rebuild them. Rebuilt on the client
    with the same class, args and attributes."""

    cls: type[BaseException]
    args: tuple[object, ...]
    state: dict[str, object]

    @classmethod
    def of(cls, err: BaseException) -> Failure:
        return cls(type(err), tuple(err.args), dict(getattr(err, "__dict__", {})))

    def rebuild(self) -> BaseException:
        err = self.cls.__new__(self.cls)
        BaseException.__init__(err, *self.args)
        err.__dict__.update(self.state)
        return err
