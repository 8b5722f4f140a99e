"""The client: RaySupervisor, usable from any Ray driver or task, with Supervisor's calls, dispatching each
call to one node's actor (`_node.NodeSupervisor`), least loaded first.

Backend-neutral (asyncio or trio): a Ray ObjectRef is awaited through its concurrent future, whose
completion callback (a Ray thread) wakes the waiting task through the running loop's own thread-safe
entry. Blocking Ray calls (listing nodes, creating actors) run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import pickle
import secrets
import tarfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar, cast

import anyio
import ray
import ray.exceptions
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from policies import CommandDecision, CommandRules, Policy
from supervisor import (
    DEVNULL,
    PIPE,
    ChildStats,
    CommandFailedError,
    Result,
    Rule,
    SupervisorClosedError,
    _rules,
)
from supervisor._rules import Approver
from supervisor.ray import _files
from supervisor.ray._channel import Channel, ChannelClosedError
from supervisor.ray._node import NodeSupervisor, SessionPolicy
from supervisor.ray._types import (
    Failure,
    NodeInfo,
    NodeLoad,
    NodeLostError,
    NodeSelector,
    PlacementError,
    RemoteChildInfo,
    RemoteEvent,
    SessionLostError,
)

log = logging.getLogger("corral.ray")

T = TypeVar("T")

#: Ray's errors that mean the actor (and so the node's supervisor and every child on it) is gone.
_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.LocalRayletDiedError,
)

_ACTOR = ray.remote(NodeSupervisor)

#: How many Policy objects' pickles a client keeps for the channel (the node keeps as many unpickled).
POLICY_BLOBS = 256


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _resolve(ref: Any) -> Any:
    """The value of a Ray ObjectRef, awaited without a thread. Raises what ray.get would. On cancellation
    the wait ends (the task on the node goes on: see _RayCall.__call__)."""
    fut: Future[Any] = ref.future()
    if _on_asyncio():
        # Not asyncio.wrap_future: cancelling the wait would cancel Ray's future, which Ray may hand out
        # again for the same ref (a later wait for it would then end at once, cancelled).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def release() -> None:
            if not waiter.done():
                waiter.set_result(None)

        def wake_asyncio(_f: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(release)

        fut.add_done_callback(wake_asyncio)
        await waiter
        return fut.result()
    import trio  # the other anyio backend

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_f: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    await done.wait()
    return fut.result()


@dataclass(eq=False)
class _Node:
    info: NodeInfo
    actor: Any
    alive: bool = True
    inflight: int = 0
    inflight_memory: int = 0
    snapshot: NodeLoad | None = None
    #: This client's in-flight calls and their memory limits when `snapshot` was taken: the rest of the
    #: snapshot's counts are other clients' load.
    mine_at_snapshot: int = 0
    memory_at_snapshot: int = 0
    sessions: set[Session] = field(default_factory=set)
    #: The direct channel for `run` (connected on first use), and whether it proved unreachable.
    channel: Channel | None = None
    channel_lock: anyio.Lock = field(default_factory=anyio.Lock)
    no_channel: bool = False

    @property
    def id(self) -> str:
        return self.info.node_id

    def load(self) -> float:
        """The calls expected on the node now, as a fraction of its cap."""
        others = 0
        if self.snapshot is not None:
            others = max(0, self.snapshot.calls - self.mine_at_snapshot)
        return (self.inflight + others) / max(1, self.info.max_concurrency)

    def memory_free(self) -> int:
        """Memory the node can still give limits to: what it reported available, or its total less the
        memory limits of the children alive there if that is less (their limits are what they may still
        take), less the limits of what this client sent it since."""
        base = self.info.memory_total
        if self.snapshot is not None:
            base = min(self.snapshot.memory_available, base - self.snapshot.memory_committed)
        return base - max(0, self.inflight_memory - self.memory_at_snapshot)

    def note(self, load: NodeLoad) -> None:
        self.snapshot = load
        self.mine_at_snapshot = self.inflight
        self.memory_at_snapshot = self.inflight_memory


def _memory_of(policy: Policy | str | None) -> int:
    if isinstance(policy, Policy):
        return policy.resources.memory or 0
    return 0


def _profile_of(policy: object) -> str | None:
    if isinstance(policy, Policy):
        return policy.profile
    if isinstance(policy, str):
        return policy
    return None if policy is not None else "workspace-write"


class RaySupervisor:
    """A Supervisor spread over a Ray cluster: one corral actor per node (each holding an ordinary
    Supervisor), and this client dispatching every call to one of them. Use as
    ``async with RaySupervisor() as sup:`` from a Ray driver or task (Ray initialised; `address` is passed
    to ray.init when it is not).

    max_concurrency: the cap of each node's supervisor (children alive at once there); this client also
             never has more calls in flight on a node than that cap, and waits for a free node otherwise.
    nodes:   which nodes get a corral actor (default: every live node).
    placement: profile name -> NodeSelector: the nodes allowed to run calls whose policy has that
             profile (for example {"full-access": NodeSelector(resources={"trusted": 1})}); a call's own
             `where=` overrides it.
    metrics_port: each node's supervisor serves the Prometheus exporter on this port (0: any free port;
             None: no exporter). metrics_addr: the address it binds (default: the node's Ray address).
    workspace_root: where each node keeps its session workdirs (<node id>/<namespace>/ under it).
    detached: the node actors outlive this client (named `corral-<node id>` in `namespace`, shared by
             every client of the namespace; the first client's settings make them). False ties them to
             the driver that created them. `shutdown()` stops them either way.
    session_lease: seconds a session survives without its owner renewing it (this client renews every
             third of it while the session is open): the workdir of a session whose owner died is removed
             that long after.
    refresh_interval: seconds between looks at the cluster (new nodes get an actor; a node whose actor
             died gets a replacement when Ray reports the node alive) and at each node's load.
    cancel_grace: on cancellation, how long to wait for the node to confirm the child was killed and
             reaped before the cancellation goes on regardless.
    supervisor_options: keyword arguments for each node's Supervisor (capture_limit, prefork, cgroups...).
    direct_calls: send `run` calls over each node's direct channel (one TCP connection per node, see
             supervisor/ray/_channel.py: two wake-ups a call instead of a Ray actor task's six threads),
             falling back to Ray's actor calls for a node whose channel cannot be reached; False: Ray's
             actor calls only. Everything else always goes through Ray.
    niceness: the niceness each node actor (its supervisor, fork server and sandboxes) runs at; None: the
             raylet's. Ray starts its workers at nice 15 (to keep its own processes responsive), which made
             every sandbox of a busy node wait behind the rest of the machine. Needs CAP_SYS_NICE (root has
             it) to lower; without, the actor says so in its log and stays at Ray's. Like every actor
             setting, the first client of a namespace decides it.
    rules:   command rules (policies.CommandRules) every command of this client is decided by before it is
             sent to a node, as Supervisor(rules=) does (docs/rules.md); a session's and a call's own
             `rules=` apply as well, the strictest decision winning. Decided here, on the driver: `forbidden`
             raises CommandForbiddenError and `prompt` awaits `approver` (an async callable given the
             CommandDecision, True to run) before any node is asked; nothing is sent for a refused command.

    Leaving the block closes this client's sessions; the node actors stay (see `detached`). The client is
    picklable: pass it to a Ray task and enter it there (it finds the same actors by name).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        max_concurrency: int = 64,
        namespace: str = "corral",
        nodes: NodeSelector | None = None,
        placement: Mapping[str, NodeSelector] | None = None,
        metrics_port: int | None = None,
        metrics_addr: str | None = None,
        workspace_root: str = "/var/tmp/corral-ray",
        detached: bool = True,
        session_lease: float = 60.0,
        refresh_interval: float = 2.0,
        cancel_grace: float = 30.0,
        supervisor_options: Mapping[str, Any] | None = None,
        rules: CommandRules | None = None,
        approver: Approver | None = None,
        direct_calls: bool = True,
        niceness: int | None = None,
    ) -> None:
        if rules is not None and not isinstance(rules, CommandRules):
            raise TypeError(f"rules must be CommandRules (policies.load_rules) or None, not {rules!r}")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, not {max_concurrency!r}")
        if not os.path.isabs(workspace_root):
            raise ValueError(f"workspace_root must be an absolute path, not {workspace_root!r}")
        for name, value in (("session_lease", session_lease), ("refresh_interval", refresh_interval)):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        self._settings: dict[str, Any] = {
            "address": address,
            "max_concurrency": max_concurrency,
            "namespace": namespace,
            "nodes": nodes,
            "placement": dict(placement or {}),
            "metrics_port": metrics_port,
            "metrics_addr": metrics_addr,
            "workspace_root": workspace_root,
            "detached": detached,
            "session_lease": session_lease,
            "refresh_interval": refresh_interval,
            "cancel_grace": cancel_grace,
            "supervisor_options": dict(supervisor_options or {}),
            "rules": rules,
            "approver": approver,
            "direct_calls": direct_calls,
            "niceness": niceness,
        }
        self.rules = rules
        self.approver = approver
        #: The command rules' decisions made by this client (`totals()` adds them: the driver decides).
        self._decisions: Counter[str] = Counter()
        #: Policies' pickles for the channel, by the id of the Policy (kept alive here): `_wire_policy`.
        self._blobs: dict[int, tuple[Policy, bytes]] = {}
        #: This client's open subscriptions: decision events are made here, not on a node.
        self._subscribers: list[MemoryObjectSendStream[RemoteEvent]] = []
        self._nodes: dict[str, _Node] = {}
        self._changed = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._sessions: set[Session] = set()
        #: The last node supervisor that failed to start, for the error when none could.
        self._start_error = ""

    def __reduce__(self) -> tuple[Callable[..., RaySupervisor], tuple[Any, ...]]:
        return _rebuild, (self._settings,)

    # -- life ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> RaySupervisor:
        if self._tg is not None:
            raise SupervisorClosedError("this RaySupervisor is already running: enter it once")
        if not ray.is_initialized():
            await anyio.to_thread.run_sync(
                lambda: ray.init(address=self._settings["address"], namespace=self._settings["namespace"])
            )
        await self._refresh()
        if not self._nodes:
            why = "no live Ray node matches `nodes`"
            if self._start_error:
                why = f"no node's corral supervisor could start ({self._start_error})"
            raise PlacementError(why, self._settings["nodes"])
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._keep_up)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):
                for session in list(self._sessions):
                    with contextlib.suppress(Exception):
                        await session.close()
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    async def shutdown(self) -> None:
        """Stop every node actor of this namespace that this client knows: each node's supervisor kills and
        reaps its children and removes its session workdirs, then the actor ends. Lost nodes are skipped."""
        for node in list(self._nodes.values()):
            if node.alive:
                with contextlib.suppress(NodeLostError):
                    await self._call(node, "shutdown", node.actor.close.remote())
                node.alive = False
                await anyio.to_thread.run_sync(ray.kill, node.actor)

    async def _keep_up(self) -> None:
        """Every refresh_interval: look for new or returned nodes, refresh each node's load, and renew the
        leases of this client's sessions (every third of the lease)."""
        interval = float(self._settings["refresh_interval"])
        lease = float(self._settings["session_lease"])
        renewed = time.monotonic()
        while True:
            await anyio.sleep(min(interval, lease / 3))
            with contextlib.suppress(Exception):
                await self._refresh()
            async with anyio.create_task_group() as tg:
                for node in list(self._nodes.values()):
                    if node.alive:
                        tg.start_soon(self._poll_load, node)
            if time.monotonic() - renewed >= lease / 3:
                renewed = time.monotonic()
                await self._renew()

    async def _poll_load(self, node: _Node) -> None:
        with contextlib.suppress(NodeLostError):
            node.note(await self._call(node, "load", node.actor.load.remote()))
            self._wake()

    async def _renew(self) -> None:
        for node in list(self._nodes.values()):
            ids = [s.id for s in node.sessions if not s.lost]
            if not ids or not node.alive:
                continue
            try:
                missing = await self._call(node, "session renewal", node.actor.session_renew.remote(ids))
            except NodeLostError:
                continue
            for s in list(node.sessions):
                if s.id in missing:
                    s._mark_lost("the node no longer has it (its actor was replaced)")

    async def _refresh(self) -> None:
        """Give every live node matching `nodes` an actor (a new node, or one whose actor was lost: the
        replacement), and mark nodes Ray reports dead as lost."""
        listed = await anyio.to_thread.run_sync(ray.nodes)
        selector: NodeSelector | None = self._settings["nodes"]
        alive: set[str] = set()
        todo = []
        for n in listed:
            nid = n["NodeID"]
            if not n.get("Alive"):
                continue
            alive.add(nid)
            if selector is not None and not selector.matches(n.get("Resources", {}), n.get("Labels", {})):
                continue
            known = self._nodes.get(nid)
            if known is None or not known.alive:
                todo.append(nid)
        for nid, node in self._nodes.items():
            if node.alive and nid not in alive:
                self._lost(node, "Ray reports the node dead")
        for nid in todo:
            try:
                actor = await anyio.to_thread.run_sync(self._actor_for, nid)
                info = await _resolve(actor.open.remote())
            except _LOST as err:
                log.warning("corral actor on node %s could not start: %s", nid[:12], err)
                continue
            except ray.exceptions.RayTaskError as err:
                # Its Supervisor could not start (no fork server, a bad option): the actor is useless, and
                # removed so that the next refresh tries afresh rather than finding it by name again.
                log.warning("corral supervisor on node %s failed to start: %s", nid[:12], err)
                self._start_error = f"node {nid[:12]}: {err.cause!r}"
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(ray.kill, actor)
                continue
            except ray.exceptions.RayError as err:
                # Not placeable there (ActorUnschedulableError: the node left between the listing and the
                # actor's creation): the next refresh sees the node gone, or tries again.
                log.warning("corral actor on node %s could not be placed: %s", nid[:12], err)
                continue
            self._nodes[nid] = _Node(info, actor)
        self._wake()

    def _actor_for(self, node_id: str) -> Any:
        s = self._settings
        config = {
            "namespace": s["namespace"],
            "max_concurrency": s["max_concurrency"],
            "metrics_port": s["metrics_port"],
            "metrics_addr": s["metrics_addr"],
            "workspace_root": s["workspace_root"],
            "supervisor_options": s["supervisor_options"],
            "niceness": s["niceness"],
        }
        options: dict[str, Any] = {
            "name": f"corral-{node_id}",
            "namespace": s["namespace"],
            "get_if_exists": True,
            "num_cpus": 0,
            "max_restarts": 0,  # a replacement is made by the client, never a silent restart mid-call
            "max_task_retries": 0,  # a command that may have had side effects is never re-run
            "max_concurrency": 100_000,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
        }
        if s["detached"]:
            options["lifetime"] = "detached"
        return _ACTOR.options(**options).remote(config)

    def _lost(self, node: _Node, why: str) -> None:
        if node.alive:
            log.warning("corral: node %s lost: %s", node.id[:12], why)
        node.alive = False
        for s in list(node.sessions):
            s._mark_lost(why)
        if node.channel is not None:
            node.channel.fail(why)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    # -- calls ---------------------------------------------------------------------------------------------

    async def _call(
        self, node: _Node, operation: str, ref: Any, *, confirm_cancel: bool = True, settle: str | None = None
    ) -> Any:
        """Await a call on `node`. A Failure coming back is raised as the node raised it; Ray's report of a
        dead actor or node marks the node lost and raises NodeLostError. On cancellation the call is
        cancelled on the node (ray.cancel: the node's supervisor kills and reaps the child), and, with
        `confirm_cancel`, the node's answer is awaited (shielded, at most cancel_grace seconds) before the
        cancellation goes on: for a call with a `settle` id, the node's word that the call's task has ended
        (its child killed and reaped), since Ray may report the ref cancelled before the task has unwound."""
        try:
            value = await _resolve(ref)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
                if confirm_cancel:
                    with anyio.move_on_after(float(self._settings["cancel_grace"])):
                        with contextlib.suppress(Exception):
                            if settle is not None:
                                await _resolve(node.actor.settled.remote(settle))
                            else:
                                await _resolve(ref)
            raise
        except _LOST as err:
            self._lost(node, f"{type(err).__name__} during {operation}")
            raise NodeLostError(node.id, operation, str(err).split("\n", 1)[0]) from err
        if isinstance(value, Failure):
            raise self._raise(node, value)
        return value

    def _raise(self, node: _Node, failure: Failure) -> BaseException:
        """The exception a node sent back, rebuilt; a NodeLostError (the node fenced itself) marks it lost."""
        err = failure.rebuild()
        if isinstance(err, NodeLostError):
            self._lost(node, err.detail)
        return err

    async def _decide(
        self,
        cmd: Sequence[str],
        call_rules: CommandRules | None,
        approver: Approver | None,
        session_rules: CommandRules | None = None,
        name: str | None = None,
        profile: str | None = None,
    ) -> CommandDecision | None:
        """The command rules' decision for `cmd` (None without rules): this client's, the session's and the
        call's rules, the strictest winning; counted in `totals()` and sent to this client's subscribers as
        a `decision` RemoteEvent (node_id ""); a `prompt` is put to `approver` (else this client's). Raises
        CommandForbiddenError when the command may not run (nothing was sent to a node); the approver's
        errors and cancellation propagate."""
        sets = [r for r in (self.rules, session_rules, call_rules) if r is not None]
        if not sets:
            return None

        def record(decision: CommandDecision, approved: bool | None) -> None:
            self._decisions[f"decision:{decision.decision}"] += 1
            ev = RemoteEvent(
                "decision", "", 0, name, profile or "", time.monotonic(), decision=decision, approved=approved
            )
            for send in self._subscribers:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    send.send_nowait(ev)

        return await _rules.decide(cmd, sets, approver if approver is not None else self.approver, record)

    async def _decide_and_place(
        self,
        cmd: Sequence[str],
        policy: Policy | str | None,
        where: NodeSelector | None,
        rules: Sequence[Rule] | CommandRules,
        approver: Approver | None,
        name: str | None,
    ) -> tuple[Sequence[Rule], CommandDecision | None, _Node, int]:
        """A call's command rules decided (`_decide`), then its node (`_place`, by the policy the rules
        chose): (the kill rules for the node, the decision, the node, the memory placed there, to release)."""
        self._running()
        kills, call_rules = _rules.split_rules(rules)
        decision = await self._decide(cmd, call_rules, approver, None, name, _profile_of(policy))
        placed = _decided(policy, decision)
        memory = _memory_of(placed)
        return kills, decision, await self._place(placed, where, memory), memory

    async def _place(self, policy: object, where: NodeSelector | None, memory: int) -> _Node:
        """The least-loaded live node allowed to run `policy` (by `where`, else the placement for its
        profile) with room for it: fewer of this client's calls in flight than its cap, and at least
        `memory` bytes available. Waits while every allowed node is full. Raises PlacementError when no
        live node is allowed, or none has that much memory in all."""
        profile = _profile_of(policy)
        selector = where if where is not None else self._settings["placement"].get(profile or "")
        while True:
            allowed = [
                n
                for n in self._nodes.values()
                if n.alive and (selector is None or selector.matches(n.info.resources, n.info.labels))
            ]
            if not allowed:
                raise PlacementError("no live node matches the selector", selector, memory, self._live())
            big = [n for n in allowed if n.info.memory_total >= memory]
            if not big:
                raise PlacementError("no node has that much memory", selector, memory, self._live())
            room = [n for n in big if n.inflight < n.info.max_concurrency and n.memory_free() >= memory]
            if room:
                node = min(room, key=lambda n: (n.load(), -n.memory_free()))
                node.inflight += 1
                node.inflight_memory += memory
                return node
            with anyio.move_on_after(float(self._settings["refresh_interval"])):
                await self._changed.wait()

    def _live(self) -> int:
        return sum(1 for n in self._nodes.values() if n.alive)

    def _release(self, node: _Node, memory: int) -> None:
        node.inflight -= 1
        node.inflight_memory -= memory
        self._wake()

    def _running(self) -> None:
        if self._tg is None:
            raise SupervisorClosedError("the RaySupervisor is not running (use `async with`)")

    async def run(
        self,
        cmd: Sequence[str],
        *,
        policy: Policy | str | None = None,
        input: bytes | None = None,
        stdin: bytes | int = DEVNULL,
        stdout: int = PIPE,
        stderr: int = PIPE,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        cwd: str | None = None,
        where: NodeSelector | None = None,
        rules: Sequence[Rule] | CommandRules = (),
        approver: Approver | None = None,
    ) -> Result:
        """Supervisor.run on the least-loaded node allowed to run `policy` (see the class doc), returning
        the node supervisor's Result as it is. A profile name (or None) is that profile on the node's
        scratch directory; a Policy is used as given (its paths are the node's). stdin/stdout/stderr take
        PIPE/DEVNULL (or bytes for stdin): there is no fd to pass across machines. `where` restricts the
        nodes for this call. `rules`: command rules (CommandRules) deciding this command with this client's
        own (on the driver, before any node is asked; `approver` for a `prompt` instead of the client's),
        or kill rules (a sequence of Rule, checked by the node's supervisor at every sample), as
        Supervisor.run takes them. An allowed command runs under its rule's profile (on the policy's
        workdir, with its limits) or policy, if the rule names one; `Result.decision` is the decision.

        Raises what Supervisor.run raises (carried back from the node, same classes and fields;
        CommandForbiddenError, with nothing sent, when the command rules refuse it); NodeLostError when the
        node or its actor is lost during the call (the command is not retried: it may have had side
        effects); PlacementError when no node may run it. On cancellation, the call is
        cancelled on the node, whose supervisor kills and reaps the child (awaited up to cancel_grace).
        """
        kills, decision, node, memory = await self._decide_and_place(
            cmd, policy, where, rules, approver, name
        )
        try:
            return await self._run_on(
                node,
                cmd,
                policy,
                None,
                _run_kwargs(input, stdin, stdout, stderr, name, env, cwd, kills),
                check,
                decision,
            )
        finally:
            self._release(node, memory)

    async def _run_on(
        self,
        node: _Node,
        cmd: Sequence[str],
        policy: object,
        session: str | None,
        kwargs: dict[str, Any],
        check: bool,
        decision: CommandDecision | None,
    ) -> Result:
        reply, load = await self._dispatch(node, cmd, policy, session, kwargs, decision)
        node.note(load)
        if isinstance(reply, Failure):
            raise self._raise(node, reply)
        if check and reply.exit_code != 0:
            raise CommandFailedError([str(a) for a in cmd], reply)
        assert isinstance(reply, Result)
        return reply

    async def _dispatch(
        self,
        node: _Node,
        cmd: Sequence[str],
        policy: object,
        session: str | None,
        kwargs: dict[str, Any],
        decision: CommandDecision | None,
    ) -> tuple[Result | Failure, NodeLoad]:
        """One `run` on `node`: over its direct channel (_channel.py) when it has one, else as a Ray actor
        task. Returns the node's (Result or Failure, NodeLoad). Raises NodeLostError when the node or its
        actor is lost (or the channel breaks: the node cancels the calls it carried). On cancellation the
        node kills and reaps the child; that is awaited up to cancel_grace."""
        channel = await self._channel(node)
        if channel is None:
            call = secrets.token_hex(8)
            ref = node.actor.run.remote(list(cmd), policy, session, kwargs, call, decision)
            value: tuple[Result | Failure, NodeLoad] = await self._call(node, "run", ref, settle=call)
            return value
        try:
            reply = await channel.call(
                (list(cmd), self._wire_policy(policy), session, kwargs, decision),
                float(self._settings["cancel_grace"]),
            )
        except ChannelClosedError as err:
            raise await self._channel_broke(node, str(err)) from err
        if reply is None:  # cancelled on the node, not by this client: its connection was closing
            raise NodeLostError(node.id, "run", "the call was cancelled on the node")
        return cast(tuple[Result | Failure, NodeLoad], reply)

    def _wire_policy(self, policy: object) -> object:
        """A Policy as the channel carries it: its pickle, made once per Policy object this client is given
        (a Policy's nested slotted dataclasses pickle slowly) and kept for the last POLICY_BLOBS of them; the
        node keeps the Policy it unpickled for each pickle, so a policy used call after call is one object
        there too. Anything else as it is."""
        if not isinstance(policy, Policy):
            return policy
        hit = self._blobs.get(id(policy))
        if hit is not None and hit[0] is policy:
            return hit[1]
        blob = pickle.dumps(policy, protocol=5)
        if len(self._blobs) >= POLICY_BLOBS:
            del self._blobs[next(iter(self._blobs))]
        self._blobs[id(policy)] = (policy, blob)
        return blob

    async def _channel(self, node: _Node) -> Channel | None:
        """The node's channel, connected on first use (None: this client uses Ray's actor calls for it,
        because `direct_calls` is off, the node offers none, or it could not be reached)."""
        ch = node.channel
        if ch is not None and ch.closed is None:
            return ch
        if not self._settings["direct_calls"] or node.info.channel is None or node.no_channel:
            return None
        async with node.channel_lock:
            if node.channel is not None and node.channel.closed is None:
                return node.channel
            address, port, token = node.info.channel
            try:
                with anyio.fail_after(10):
                    ch = await Channel.connect(address, port, token)
            except (OSError, TimeoutError) as err:
                log.warning(
                    "corral: node %s's channel at %s:%d unreachable (%s): using Ray's actor calls",
                    node.id[:12],
                    address,
                    port,
                    err,
                )
                node.no_channel = True
                return None
            node.channel = ch
            assert self._tg is not None
            self._tg.start_soon(ch.read_replies)
            return ch

    async def _channel_broke(self, node: _Node, reason: str) -> NodeLostError:
        """The error for a call whose channel ended under it. The node cancelled the call when the
        connection closed (its child killed), or the node is gone: Ray is asked which (its answer marks the
        node lost when the actor is dead). Either way the command is not retried."""
        if node.alive:
            with contextlib.suppress(NodeLostError):
                await self._call(node, "run", node.actor.load.remote())
        if not node.alive:
            return NodeLostError(node.id, "run", f"the node was lost ({reason})")
        why = f"the connection to the node's supervisor broke ({reason}); the call was cancelled there"
        return NodeLostError(node.id, "run", why)

    async def start(
        self,
        cmd: Sequence[str],
        *,
        policy: Policy | str | None = None,
        stdin: int = DEVNULL,
        stdout: int = PIPE,
        stderr: int = PIPE,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        where: NodeSelector | None = None,
        rules: Sequence[Rule] | CommandRules = (),
        approver: Approver | None = None,
    ) -> RemoteChild:
        """Start `cmd` on the least-loaded allowed node and return a RemoteChild, as Supervisor.start does:
        its node, pid, `stdin` (PIPE: a byte stream whose writes go to the child's stdin on the node),
        `stdout`/`stderr` (PIPE: byte streams of the child's output as it comes, read from the node; DEVNULL:
        None), `wait()` (the Result, without the output: it is in the streams), `kill()`, `stats()`,
        `aclose()`. Read the PIPE streams (or pass DEVNULL): a node keeps at most STREAM_WINDOW bytes of
        each unread stream, then the child blocks on its pipe, as a local child whose pipe is not read.
        `rules`/`approver` as `run`. Raises like `run`. The child counts against this client's cap on its
        node until it is waited for (or closed). On cancellation while starting, a child the node started
        meanwhile is killed."""
        kills, decision, node, memory = await self._decide_and_place(
            cmd, policy, where, rules, approver, name
        )
        try:
            return await self._start_on(
                node,
                cmd,
                policy,
                None,
                _start_kwargs(stdin, stdout, stderr, name, env, cwd, kills),
                decision,
                lambda: self._release(node, memory),
            )
        except BaseException:
            self._release(node, memory)
            raise

    async def _start_on(
        self,
        node: _Node,
        cmd: Sequence[str],
        policy: object,
        session: str | None,
        kwargs: dict[str, Any],
        decision: CommandDecision | None,
        done: Callable[[], None],
    ) -> RemoteChild:
        ref = node.actor.start.remote(list(cmd), policy, session, kwargs, decision)
        try:
            reply = await self._call(node, "start", ref, confirm_cancel=False)
        except anyio.get_cancelled_exc_class():
            # ray.cancel came too late if the node started the child: kill it and forget it there.
            grace = float(self._settings["cancel_grace"])
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace), contextlib.suppress(Exception):
                late = await _resolve(ref)
                if isinstance(late, tuple):
                    await _resolve(node.actor.kill.remote(late[0]))
                    await _resolve(node.actor.release.remote(late[0]))
            raise
        handle, pid = reply
        return RemoteChild(self, node, handle, pid, kwargs.get("name"), done, kwargs)

    def session(
        self,
        source: bytes | os.PathLike[str] | Any | None = None,
        *,
        policy: SessionPolicy = "workspace-write",
        where: NodeSelector | None = None,
        rules: CommandRules | None = None,
        **options: Any,
    ) -> Session:
        """A workspace pinned to one node: ``async with sup.session(tarball) as s: await s.run([...])``.

        source: the workdir's initial contents: tar bytes (optionally compressed), a Ray ObjectRef of such
                bytes (fetched by the node), a local directory (tarred here), or None (empty).
        policy: the sessions' default policy: a profile name (made on the session's workdir with
                `options`, the profile options such as memory="512M"), or a function workdir -> Policy
                (run on the node). Calls may pass their own.
        where:  the nodes the session may be placed on (least loaded first).
        rules:  command rules every call of the session is decided by (with the client's and the call's).
        """
        return Session(self, source, policy, where, options, rules)

    # -- observing -----------------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        """The live nodes with a corral actor, as each reported itself."""
        return [n.info for n in self._nodes.values() if n.alive]

    async def load(self) -> dict[str, NodeLoad]:
        """Each live node's load now (one call per node)."""
        out: dict[str, NodeLoad] = {}
        for node in [n for n in self._nodes.values() if n.alive]:
            with contextlib.suppress(NodeLostError):
                out[node.id] = await self._call(node, "load", node.actor.load.remote())
                node.note(out[node.id])
        return out

    async def totals(self, per_node: bool = False) -> Counter[str] | dict[str, Counter[str]]:
        """Supervisor.totals summed over the live nodes (started, exited by outcome, violations by kind), with
        this client's command-rule decisions ("decision:allow|prompt|forbidden": made here, on the driver),
        or per node id with `per_node` (the nodes' counts only). Lost nodes' counts are gone with them."""
        per: dict[str, Counter[str]] = {}
        for node in [n for n in self._nodes.values() if n.alive]:
            with contextlib.suppress(NodeLostError):
                per[node.id] = Counter(await self._call(node, "totals", node.actor.totals.remote()))
        if per_node:
            return per
        total: Counter[str] = sum(per.values(), Counter())
        total.update(self._decisions)
        return total

    async def children(self) -> list[RemoteChildInfo]:
        """The children alive on every live node: node, host pid, name, profile, cgroup directories."""
        out: list[RemoteChildInfo] = []
        for node in [n for n in self._nodes.values() if n.alive]:
            with contextlib.suppress(NodeLostError):
                out += await self._call(node, "children", node.actor.children.remote())
        return out

    @contextlib.asynccontextmanager
    async def subscribe(
        self, max_buffer: int = 1000
    ) -> AsyncIterator[MemoryObjectReceiveStream[RemoteEvent]]:
        """Lifecycle events of every live node's children from now on, as RemoteEvents (kind, node_id,
        pid, name, profile, at, result, violation), and the `decision` events of this client's command rules
        (node_id "", pid 0; `decision`, `approved`): ``async with sup.subscribe() as events: async for ev in
        events``. Each node is long-polled (events come in batches, within a second); a subscriber
        `max_buffer` events behind loses the newest, as with Supervisor.subscribe. A node lost ends its
        part of the stream; a node that joins later (or a replacement actor) is followed from its first
        event on, once the client has seen it (within refresh_interval)."""
        send, receive = anyio.create_memory_object_stream[RemoteEvent](max_buffer)
        followed: set[_Node] = set()
        async with anyio.create_task_group() as tg:
            for node in [n for n in self._nodes.values() if n.alive]:
                with contextlib.suppress(NodeLostError):
                    cursor, _evs, _dropped = await self._call(
                        node, "events", node.actor.events.remote(1 << 62, 0.0)
                    )
                    followed.add(node)
                    tg.start_soon(self._follow, node, cursor, send)
            tg.start_soon(self._follow_joining, followed, send, tg)
            self._subscribers.append(send)
            try:
                yield receive
            finally:
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(send)
                tg.cancel_scope.cancel()
                send.close()

    async def _follow_joining(
        self, followed: set[_Node], send: MemoryObjectSendStream[RemoteEvent], tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            await self._changed.wait()
            for node in [n for n in self._nodes.values() if n.alive and n not in followed]:
                followed.add(node)
                tg.start_soon(self._follow, node, 0, send)

    async def _follow(self, node: _Node, cursor: int, send: MemoryObjectSendStream[RemoteEvent]) -> None:
        with contextlib.suppress(NodeLostError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                ref = node.actor.events.remote(cursor, 1.0)
                cursor, events, dropped = await self._call(node, "events", ref, confirm_cancel=False)
                if dropped:
                    log.warning(
                        "corral: %d events of node %s dropped before they were read", dropped, node.id[:12]
                    )
                for ev in events:
                    with contextlib.suppress(anyio.WouldBlock):
                        send.send_nowait(ev)

    async def metrics_targets(self) -> list[dict[str, Any]]:
        """Prometheus file_sd target groups, one per live node serving metrics: {"targets": ["addr:port"],
        "labels": {"corral_node": <node id>, "corral_node_address": <Ray address>}}."""
        return [
            {
                "targets": [f"{n.info.metrics_addr}:{n.info.metrics_port}"],
                "labels": {"corral_node": n.id, "corral_node_address": n.info.address},
            }
            for n in self._nodes.values()
            if n.alive and n.info.metrics_port is not None
        ]

    async def write_file_sd(self, path: str | os.PathLike[str]) -> int:
        """Write `metrics_targets()` as a Prometheus file_sd JSON file (replaced atomically: Prometheus
        re-reads it on change). Returns the number of targets. Call it again after nodes come or go (the
        list is what this client knows now)."""
        targets = await self.metrics_targets()
        text = json.dumps(targets, indent=2) + "\n"

        def write() -> None:
            tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)

        await anyio.to_thread.run_sync(write)
        return len(targets)


def _rebuild(settings: dict[str, Any]) -> RaySupervisor:
    s = dict(settings)
    return RaySupervisor(**s)


def _run_kwargs(
    input: bytes | None,
    stdin: bytes | int,
    stdout: int,
    stderr: int,
    name: str | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    kills: Sequence[Rule] = (),
) -> dict[str, Any]:
    for label, value in (("stdout", stdout), ("stderr", stderr)):
        if value not in (PIPE, DEVNULL):
            raise TypeError(
                f"{label} must be PIPE or DEVNULL on a cluster (no fd crosses machines), not {value!r}"
            )
    if not isinstance(stdin, bytes | bytearray) and stdin != DEVNULL:
        raise TypeError(f"stdin must be bytes or DEVNULL on a cluster, not {stdin!r}")
    kw: dict[str, Any] = {"stdout": stdout, "stderr": stderr, "name": name, "cwd": cwd}
    if isinstance(stdin, bytes | bytearray):
        kw["stdin"] = bytes(stdin)
    if input is not None:
        kw["input"] = bytes(input)
    if env is not None:
        kw["env"] = dict(env)
    if kills:
        kw["rules"] = list(kills)
    return kw


def _decided(policy: Policy | str | None, decision: CommandDecision | None) -> Policy | str | None:
    """What placement sees of a call's policy once the rules decided it: the deciding rule's policy or
    profile, if it names one (the node applies `decision.policy_for` to the policy it resolves)."""
    if decision is None:
        return policy
    if decision.policy is not None:
        return decision.policy
    if decision.profile is not None and not isinstance(policy, Policy):
        return decision.profile
    return policy


def _start_kwargs(
    stdin: int,
    stdout: int,
    stderr: int,
    name: str | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    kills: Sequence[Rule] = (),
) -> dict[str, Any]:
    for label, value in (("stdin", stdin), ("stdout", stdout), ("stderr", stderr)):
        if value not in (PIPE, DEVNULL):
            raise TypeError(
                f"{label} must be PIPE or DEVNULL on a cluster (no fd crosses machines), not {value!r}"
            )
    kw: dict[str, Any] = {"stdin": stdin, "stdout": stdout, "stderr": stderr, "name": name, "cwd": cwd}
    if env is not None:
        kw["env"] = dict(env)
    if kills:
        kw["rules"] = list(kills)
    return kw


class RemoteOutput(anyio.abc.ByteReceiveStream):
    """A started child's stdout or stderr, read from its node as it comes (RemoteChild.stdout/.stderr):
    `receive()` returns the next bytes once there are some, and raises anyio.EndOfStream at the end;
    ``async for chunk in child.stdout`` reads to the end. Each receive is one call to the node (at most
    `max_bytes`). `aclose()` stops reading: the node drops what the child writes there from then on."""

    def __init__(self, child: RemoteChild, which: str) -> None:
        self._child = child
        self._which = which
        self._eof = False
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes (at most `max_bytes`). Raises anyio.EndOfStream at the end of the stream,
        anyio.ClosedResourceError once closed, NodeLostError when the node is lost. On cancellation
        nothing is consumed."""
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof:
            raise anyio.EndOfStream
        c = self._child
        data: bytes = await c._client._call(
            c._node,
            f"read {self._which}",
            c._node.actor.read.remote(c._handle, self._which, max(1, int(max_bytes))),
            confirm_cancel=False,
        )
        if not data:
            self._eof = True
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        c = self._child
        if not self._eof and c._node.alive:
            with anyio.CancelScope(shield=True), contextlib.suppress(NodeLostError):
                await c._client._call(
                    c._node, "close", c._node.actor.close_output.remote(c._handle, self._which)
                )


class RemoteInput(anyio.abc.ByteSendStream):
    """A started child's stdin (RemoteChild.stdin): each `send` is written to the child's stdin on its node
    (returning once the pipe took it); `aclose()` closes it (the child reads end of file)."""

    def __init__(self, child: RemoteChild) -> None:
        self._child = child
        self._closed = False

    async def send(self, item: bytes) -> None:
        """Write `item` to the child's stdin. Raises anyio.BrokenResourceError when the child closed it
        or exited, anyio.ClosedResourceError after aclose(), NodeLostError when the node is lost."""
        if self._closed:
            raise anyio.ClosedResourceError
        c = self._child
        await c._client._call(c._node, "write", c._node.actor.write.remote(c._handle, bytes(item)))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        c = self._child
        if c._node.alive:
            with anyio.CancelScope(shield=True), contextlib.suppress(NodeLostError):
                await c._client._call(c._node, "close stdin", c._node.actor.close_stdin.remote(c._handle))


class RemoteChild:
    """A child started on a node by RaySupervisor.start (or Session.start): `node_id`, `pid`, `name`, and
    `stdin`/`stdout`/`stderr` (RemoteInput/RemoteOutput for PIPE, None for DEVNULL). Use as
    ``async with child:`` (or call `aclose()`) to release its streams on the node."""

    def __init__(
        self,
        client: RaySupervisor,
        node: _Node,
        handle: str,
        pid: int,
        name: str | None,
        done: Callable[[], None],
        kwargs: Mapping[str, Any],
    ) -> None:
        self._client = client
        self._node = node
        self._handle = handle
        self.pid = pid
        self.name = name
        self.node_id = node.id
        self._done: Callable[[], None] | None = done
        self._result: Result | None = None
        self.stdin = RemoteInput(self) if kwargs.get("stdin") == PIPE else None
        self.stdout = RemoteOutput(self, "stdout") if kwargs.get("stdout") == PIPE else None
        self.stderr = RemoteOutput(self, "stderr") if kwargs.get("stderr") == PIPE else None

    def _finished(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()

    async def wait(self) -> Result:
        """The child's Result once it has exited (without its output: that is in the streams, as with
        Supervisor.start). Raises NodeLostError when the node is lost first. On cancellation the child is
        killed and reaped on the node."""
        if self._result is not None:
            return self._result
        try:
            reply: Result = await self._client._call(
                self._node, "wait", self._node.actor.wait.remote(self._handle)
            )
        finally:
            self._finished()
        self._result = reply
        return reply

    async def kill(self) -> None:
        """Kill the child's whole sandbox (it is reaped by its node; `wait` returns its Result)."""
        await self._client._call(self._node, "kill", self._node.actor.kill.remote(self._handle))

    async def stats(self) -> ChildStats | None:
        """The child's last sample on its node (None before the first, or once it was waited for)."""
        stats: ChildStats | None = await self._client._call(
            self._node, "stats", self._node.actor.stats.remote(self._handle)
        )
        return stats

    async def aclose(self) -> None:
        """Release the child on its node: its stdin is closed there (a child reading it gets end of file),
        what it still writes is drained and dropped (it never blocks on an unread stream), and its handle
        is forgotten once it has exited; it no longer counts against this client's cap. A child still
        running is not killed (kill() does that), as with Child.aclose. Shielded from cancellation."""
        self._finished()
        if self._node.alive:
            with anyio.CancelScope(shield=True), contextlib.suppress(NodeLostError):
                await self._client._call(self._node, "release", self._node.actor.release.remote(self._handle))

    async def __aenter__(self) -> RemoteChild:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Session:
    """A workspace on one node (RaySupervisor.session). Every call runs there, in its workdir."""

    def __init__(
        self,
        client: RaySupervisor,
        source: object,
        policy: SessionPolicy,
        where: NodeSelector | None,
        options: Mapping[str, Any],
        rules: CommandRules | None = None,
    ) -> None:
        if rules is not None and not isinstance(rules, CommandRules):
            raise TypeError(f"rules must be CommandRules (policies.load_rules) or None, not {rules!r}")
        self._rules = rules
        self._client = client
        self._source = source
        self._policy = policy
        self._where = where
        self._options = dict(options)
        self._node: _Node | None = None
        self.id = ""
        self.workdir = ""
        self.lost = False
        self.lost_reason = ""

    @property
    def node_id(self) -> str:
        if self._node is None:
            raise SupervisorClosedError("the session is not open")
        return self._node.id

    async def __aenter__(self) -> Session:
        """Place the session and make its workdir on the node. Raises PlacementError, NodeLostError, or
        the node's WorkspaceError for a bad archive."""
        client = self._client
        client._running()
        source = self._source
        if isinstance(source, os.PathLike | str):  # a local directory: tarred here, off the event loop
            source = await anyio.to_thread.run_sync(_tar_directory, os.fspath(source))
        memory = _memory_of(self._policy if isinstance(self._policy, Policy) else None)
        node = await client._place(
            self._policy if isinstance(self._policy, str) else None, self._where, memory
        )
        try:
            reply = await client._call(
                node,
                "session",
                node.actor.session_open.remote(
                    source, self._policy, self._options, float(client._settings["session_lease"])
                ),
            )
        finally:
            client._release(node, memory)
        if isinstance(reply, Failure):
            raise reply.rebuild()
        self.id, self.workdir = reply
        self._node = node
        node.sessions.add(self)
        client._sessions.add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.close()

    def _mark_lost(self, why: str) -> None:
        self.lost = True
        self.lost_reason = why

    def _check(self, operation: str) -> _Node:
        node = self._node
        if node is None:
            raise SupervisorClosedError("the session is not open (use `async with`)")
        if self.lost or not node.alive:
            raise SessionLostError(node.id, self.id, operation, self.lost_reason)
        return node

    async def _decide(
        self,
        operation: str,
        cmd: Sequence[str],
        policy: SessionPolicy | Policy | None,
        rules: Sequence[Rule] | CommandRules,
        approver: Approver | None,
        name: str | None,
    ) -> tuple[Sequence[Rule], CommandDecision | None]:
        """The call's kill rules, and its command rules' decision with the session's and the client's."""
        self._check(operation)
        kills, call_rules = _rules.split_rules(rules)
        chosen = policy if policy is not None else self._policy
        profile = chosen if isinstance(chosen, str) else None
        return kills, await self._client._decide(cmd, call_rules, approver, self._rules, name, profile)

    async def _call(self, operation: str, ref: Any, settle: str | None = None) -> Any:
        node = self._check(operation)
        try:
            value = await self._client._call(node, operation, ref, settle=settle)
        except NodeLostError as err:
            self._mark_lost(err.detail)
            raise SessionLostError(node.id, self.id, operation, err.detail) from err
        except LookupError as err:  # the node's actor was replaced, or the lease expired
            self._mark_lost(str(err))
            raise SessionLostError(node.id, self.id, operation, str(err)) from err
        return value

    async def run(
        self,
        cmd: Sequence[str],
        *,
        policy: SessionPolicy | Policy | None = None,
        input: bytes | None = None,
        stdin: bytes | int = DEVNULL,
        stdout: int = PIPE,
        stderr: int = PIPE,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        cwd: str | None = None,
        rules: Sequence[Rule] | CommandRules = (),
        approver: Approver | None = None,
    ) -> Result:
        """RaySupervisor.run on the session's node, in its workdir (the session's policy unless `policy`
        is given: a profile name or a function of the workdir, made on the node; a Policy as given).
        `rules`/`approver` as RaySupervisor.run; the session's own rules are decided with them.
        Raises SessionLostError once the node is lost; else as RaySupervisor.run."""
        kills, decision = await self._decide("run", cmd, policy, rules, approver, name)
        node = self._check("run")
        node.inflight += 1
        try:
            kwargs = _run_kwargs(input, stdin, stdout, stderr, name, env, cwd, kills)
            reply, load = await self._client._dispatch(node, cmd, policy, self.id, kwargs, decision)
        except NodeLostError as err:
            self._mark_lost(err.detail)
            raise SessionLostError(node.id, self.id, "run", err.detail) from err
        finally:
            self._client._release(node, 0)
        node.note(load)
        if isinstance(reply, Failure):
            failed = self._client._raise(node, reply)
            if isinstance(failed, NodeLostError):
                self._mark_lost(failed.detail)
                raise SessionLostError(node.id, self.id, "run", failed.detail) from failed
            if isinstance(failed, LookupError):
                self._mark_lost(str(failed))
                raise SessionLostError(node.id, self.id, "run", str(failed)) from failed
            raise failed
        if check and reply.exit_code != 0:
            raise CommandFailedError([str(a) for a in cmd], reply)
        assert isinstance(reply, Result)
        return reply

    async def start(
        self,
        cmd: Sequence[str],
        *,
        policy: SessionPolicy | Policy | None = None,
        stdin: int = DEVNULL,
        stdout: int = PIPE,
        stderr: int = PIPE,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        rules: Sequence[Rule] | CommandRules = (),
        approver: Approver | None = None,
    ) -> RemoteChild:
        """RaySupervisor.start on the session's node, in its workdir (its policy as in `run`). Raises
        SessionLostError once the node is lost; else as RaySupervisor.start."""
        kills, decision = await self._decide("start", cmd, policy, rules, approver, name)
        node = self._check("start")
        node.inflight += 1
        try:
            return await self._client._start_on(
                node,
                cmd,
                policy,
                self.id,
                _start_kwargs(stdin, stdout, stderr, name, env, cwd, kills),
                decision,
                lambda: self._client._release(node, 0),
            )
        except NodeLostError as err:
            self._client._release(node, 0)
            self._mark_lost(err.detail)
            raise SessionLostError(node.id, self.id, "start", err.detail) from err
        except LookupError as err:
            self._client._release(node, 0)
            self._mark_lost(str(err))
            raise SessionLostError(node.id, self.id, "start", str(err)) from err
        except BaseException:
            self._client._release(node, 0)
            raise

    async def read_file(self, path: str, limit: int = _files.DEFAULT_FETCH_LIMIT) -> bytes:
        """The regular file `path` (relative to the workdir) from the node. Never follows a symlink the
        sandbox left (WorkspaceError), never reads a FIFO or device, refuses files over `limit` bytes."""
        data: bytes = await self._call(
            "read_file", self._check("read_file").actor.read_file.remote(self.id, path, limit)
        )
        return data

    async def archive(self, path: str = ".", limit: int = _files.DEFAULT_FETCH_LIMIT) -> bytes:
        """A tar of the tree at `path` in the workdir (directories, regular files, symlinks as links; never
        following one), at most `limit` bytes of archive, headers included (WorkspaceError beyond)."""
        data: bytes = await self._call(
            "archive", self._check("archive").actor.archive.remote(self.id, path, limit)
        )
        return data

    async def close(self) -> None:
        """Cancel the session's calls still running (their children are killed and reaped on the node) and
        remove its workdir there. Does nothing for a session already closed or lost."""
        node = self._node
        if node is None:
            return
        self._node = None
        self._client._sessions.discard(self)
        node.sessions.discard(self)
        if not self.lost and node.alive:
            with contextlib.suppress(NodeLostError):
                await self._client._call(node, "session close", node.actor.session_close.remote(self.id))


def _tar_directory(path: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()
