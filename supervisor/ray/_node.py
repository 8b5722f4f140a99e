"""The node actor: one per Ray node, holding an ordinary Supervisor (and, when asked, its metrics endpoint),
running calls for any client, and owning the node's session workdirs.

Ray runs an async actor's methods as tasks of one asyncio event loop in one thread of the actor's worker
process, for the actor's whole life. The Supervisor's task group must be entered and left by one task, so a
host task (`_host`) holds `async with Supervisor()` open and the methods use the running supervisor from
their own tasks. This module is the asyncio side of cluster mode (it runs only inside Ray's loop); the
client (`_client.py`) is backend-neutral.

Cancellation: `ray.cancel` on a call cancels its task here (asyncio.CancelledError); Supervisor.run then
kills the child's whole sandbox and reaps it before the cancellation ends the call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hmac
import logging
import os
import pickle
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import psutil
import ray
from anyio.abc import SocketAttribute, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from exporters import serve_metrics
from policies import CommandDecision, CorralError, Policy, profiles
from supervisor import Child, ChildStats, Event, Result, Supervisor, SupervisorClosedError, _rules
from supervisor.ray import _files
from supervisor.ray._channel import CANCEL, RUN, TOKEN_BYTES, encode, receive
from supervisor.ray._types import Failure, NodeInfo, NodeLoad, NodeLostError, RemoteChildInfo, RemoteEvent

log = logging.getLogger("corral.ray")

T = TypeVar("T")

#: Events kept on the node for subscribers polling from afar; older ones are dropped (and counted).
EVENT_RING = 10_000

#: How many pickled policies from the channel the node keeps unpickled (`_unpickled_policy`).
POLICY_BLOBS = 256

#: How old the memory figure of a load report may be (seconds): reading it parses /proc/meminfo, and every
#: reply carries a load report.
MEMORY_FRESH = 0.05

#: A session's policy: a built-in profile name, or a function of the session's workdir (pickled by Ray).
SessionPolicy = str | Callable[[str], Policy]


class RemoteError(CorralError):
    """An exception raised on a node that could not be carried back as itself (its state would not
    pickle): `type_name` and the message are kept."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name} on the node: {message}")


def _failure(err: BaseException) -> Failure:
    failure = Failure.of(err)
    try:
        pickle.loads(pickle.dumps(failure))
    except Exception:  # not rebuildable on the client: keep its name and message
        return Failure.of(RemoteError(type(err).__name__, str(err)))
    return failure


@dataclass
class _Session:
    id: str
    workdir: str
    policy: SessionPolicy
    options: Mapping[str, Any]
    lease: float
    renewed: float
    scopes: set[anyio.CancelScope] = field(default_factory=set)


#: Bytes of one output stream of a started child kept on the node for its reader: past this, the node stops
#: reading the child's pipe until the client has read (the child blocks on a full pipe, as with a local
#: Supervisor.start whose stream is not read).
STREAM_WINDOW = 256 << 10

#: A started child that has exited and whose handle nobody has touched for this long is forgotten (its owner
#: is gone, or never read its output to the end).
STARTED_IDLE = 300.0


@dataclass
class _Output:
    """One output stream of a started child, buffered on the node for the client's reads."""

    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False
    #: The reader has closed it: what comes is drained and dropped (the child never blocks on it).
    closed: bool = False
    readable: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self) -> None:
        self.closed = True
        self.buf.clear()
        self.room.set()


@dataclass
class _Started:
    handle: str
    child: Child
    outputs: dict[str, _Output]
    #: The client released it (RemoteChild.aclose): forgotten once it has finished.
    released: bool = False
    #: Set once its output streams have ended and the child has been reaped.
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    touched: float = field(default_factory=time.monotonic)
    #: The task draining its output (kept: the loop holds only a weak reference to a task).
    task: asyncio.Task[None] | None = None


class NodeSupervisor:
    """The actor class (wrapped with ray.remote by the client). Not for direct use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._sup: Supervisor | None = None
        self._info: NodeInfo | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._host: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._orphaned = False
        #: Why the node's supervisor is closing, once it is: calls cut off by it end in NodeLostError.
        self._closing: str | None = None
        self._calls = 0
        self._calls_tg: TaskGroup | None = None
        #: The calls running, by the client's call id: set when each has ended (`settled`).
        self._running_calls: dict[str, asyncio.Event] = {}
        self._sessions: dict[str, _Session] = {}
        self._started: dict[str, _Started] = {}
        self._events: collections.deque[tuple[int, RemoteEvent]] = collections.deque(maxlen=EVENT_RING)
        self._event_seq = 0
        self._new_event: asyncio.Event | None = None
        self._token = b""
        self._policies: dict[bytes, Policy] = {}
        self._memory_available = 0
        self._memory_at = 0.0
        self.node_id = ray.get_runtime_context().get_node_id()
        #: <workspace_root>/<node id>/<namespace>: the actors of two namespaces on one node (two groups of
        #: clients) each own their own directory, and a node's whole directory goes when Ray reports it dead.
        self._base = str(config.get("workspace_root", "/var/tmp/corral-ray"))
        namespace = re.sub(r"[^A-Za-z0-9_.-]", "_", str(config.get("namespace", "")))
        self._root = os.path.join(self._base, self.node_id, namespace.strip(".") or "_")

    # -- life ------------------------------------------------------------------------------------------

    async def open(self) -> NodeInfo:
        """Start the node's supervisor (once; later calls return the same info). Raises what Supervisor
        raises when it cannot start."""
        if self._ready is None:
            self._ready = asyncio.Event()
            self._stop = asyncio.Event()
            self._new_event = asyncio.Event()
            self._host = asyncio.get_running_loop().create_task(self._run_host())
        await self._ready.wait()
        if self._failed is not None:
            raise self._failed
        assert self._info is not None
        return self._info

    async def _run_host(self) -> None:
        assert self._ready is not None
        assert self._stop is not None
        cfg = self._config
        try:
            _renice(cfg.get("niceness"))  # before any thread or process of the supervisor is made
            await anyio.to_thread.run_sync(self._prepare_root)
            async with Supervisor(
                max_concurrency=int(cfg.get("max_concurrency", 64)), **dict(cfg.get("supervisor_options", {}))
            ) as sup:
                port = cfg.get("metrics_port")
                addr = cfg.get("metrics_addr") or ray.util.get_node_ip_address()
                async with contextlib.AsyncExitStack() as stack:
                    server = None
                    if port is not None:
                        server = await stack.enter_async_context(
                            serve_metrics(sup, port=int(port), addr=addr)
                        )
                    self._sup = sup
                    # The direct channel for `run` (_channel.py), on the node's Ray address.
                    node_addr = ray.util.get_node_ip_address()
                    listener = await anyio.create_tcp_listener(local_host=node_addr, local_port=0)
                    stack.push_async_callback(listener.aclose)
                    self._token = secrets.token_bytes(TOKEN_BYTES)
                    channel = (node_addr, listener.extra(SocketAttribute.local_port), self._token)
                    self._info = self._describe(
                        sup, server.port if server else None, addr if server else None, channel
                    )
                    conns = await stack.enter_async_context(anyio.create_task_group())
                    conns.start_soon(listener.serve, self._serve_channel, conns)
                    async with anyio.create_task_group() as calls:
                        self._calls_tg = calls
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._forward_events, sup)
                            tg.start_soon(self._expire_sessions)
                            tg.start_soon(self._watch_raylet)
                            self._ready.set()
                            await self._stop.wait()
                            tg.cancel_scope.cancel()
                        self._sup = None  # no call starts a child any more
                        for session in list(self._sessions.values()):
                            for scope in session.scopes:
                                scope.cancel()
                        # The calls still on end when their children do: kill them (again, for a call that
                        # was starting one meanwhile) until none is left.
                        while self._calls:
                            for child in sup.children:
                                child.kill()
                            await anyio.sleep(0.05)
                    self._calls_tg = None
                    conns.cancel_scope.cancel()  # every call has ended and answered: the channels close
        except BaseException as err:  # reported to open(); the actor is useless now
            self._failed = err
            log.exception("corral node supervisor failed")
        finally:
            self._sup = None
            self._ready.set()
            sessions, self._sessions = list(self._sessions.values()), {}
            for session in sessions:
                await anyio.to_thread.run_sync(_files.remove_tree, session.workdir)
            if self._orphaned:
                os._exit(1)  # no raylet to tell: the worker ends here, with nothing of corral's left

    async def _watch_raylet(self) -> None:
        """Fence this node when its raylet dies: Ray has declared the node's calls lost (NodeLostError on
        the clients), but this worker process lives on, orphaned, with its children running. The raylet is
        this process's parent: when it goes, the supervisor is closed (every child killed and reaped, the
        session workdirs removed) and the process exits."""
        raylet = os.getppid()
        while os.getppid() == raylet:  # noqa: ASYNC110 (no event to wait on: the parent's death is polled)
            await anyio.sleep(0.5)
        log.warning("corral: the raylet (pid %d) is gone: closing this node's supervisor", raylet)
        self._orphaned = True
        self._closing = "its raylet died"
        assert self._stop is not None
        self._stop.set()

    def _prepare_root(self) -> None:
        """Make this actor's workspace root and remove what a previous actor of its namespace on this node
        left there, and the directories of nodes Ray reports dead that shared this machine's filesystem (a
        node that came back has a new id: its old sessions are lost)."""
        os.makedirs(self._base, mode=0o755, exist_ok=True)
        node_dir = os.path.dirname(self._root)
        _files.remove_tree(self._root)
        # Traversable (a sandbox reaches its workdir through them), not listable: one session's owner cannot
        # find the others' workdirs by listing the node's directories.
        for path in (node_dir, self._root):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o711)
            os.chmod(path, 0o711)  # whatever the umask
        os.mkdir(os.path.join(self._root, "scratch"), 0o755)
        dead = {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}
        for name in os.listdir(self._base):
            if name in dead:
                _files.remove_tree(os.path.join(self._base, name))

    def _describe(
        self, sup: Supervisor, port: int | None, addr: str | None, channel: tuple[str, int, bytes]
    ) -> NodeInfo:
        me: dict[str, Any] = next((n for n in ray.nodes() if n["NodeID"] == self.node_id), {})
        return NodeInfo(
            node_id=self.node_id,
            address=str(me.get("NodeManagerAddress", "")),
            actor_pid=os.getpid(),
            max_concurrency=sup.max_concurrency,
            memory_total=psutil.virtual_memory().total,
            resources=dict(me.get("Resources", {})),
            labels=dict(me.get("Labels", {})),
            metrics_port=port,
            metrics_addr=addr,
            cgroup_status=sup.cgroup_status,
            channel=channel,
        )

    async def close(self) -> None:
        """Stop the supervisor (every child killed and reaped, every session workdir removed)."""
        self._closing = self._closing or "its supervisor was shut down"
        if self._stop is not None:
            self._stop.set()
        if self._host is not None:
            await self._host

    def _check_fenced(self, operation: str) -> None:
        """Raise NodeLostError when the supervisor closed under the call (its child was killed for that,
        not by its own doing: the caller must see the node lost, not an ordinary Result)."""
        if self._closing is not None:
            raise NodeLostError(self.node_id, operation, f"the node's supervisor closed: {self._closing}")

    def _running(self) -> Supervisor:
        if self._sup is None:
            raise SupervisorClosedError("the node's supervisor is not running")
        return self._sup

    # -- load and events ---------------------------------------------------------------------------------

    def load(self) -> NodeLoad:
        sup = self._sup
        children = sup.children if sup is not None else frozenset()
        committed = sum((c.policy.resources.memory or 0) for c in children if c.policy is not None)
        now = time.time()
        if now - self._memory_at > MEMORY_FRESH:  # /proc/meminfo parsed at most every MEMORY_FRESH s
            self._memory_available = psutil.virtual_memory().available
            self._memory_at = now
        return NodeLoad(
            running=len(children),
            calls=self._calls,
            memory_available=self._memory_available,
            memory_committed=committed,
            at=now,
        )

    async def _forward_events(self, sup: Supervisor) -> None:
        with sup.subscribe(max_buffer=EVENT_RING) as events:
            async for ev in events:
                self._record(ev)

    def _record(self, ev: Event) -> None:
        child = ev.child
        if child is None or ev.kind == "decision":
            return  # a command rules' decision: no child on this node to name (docs/rules.md)
        self._event_seq += 1
        remote = RemoteEvent(
            kind=ev.kind,
            node_id=self.node_id,
            pid=child.pid,
            name=child.name,
            profile=child.profile,
            at=ev.at,
            result=ev.result,
            violation=ev.violation,
            denial=ev.denial,
        )
        self._events.append((self._event_seq, remote))
        assert self._new_event is not None
        self._new_event.set()
        self._new_event = asyncio.Event()

    async def events(self, after: int, wait: float) -> tuple[int, list[RemoteEvent], int]:
        """Events numbered above `after`, waiting up to `wait` seconds for one. Returns (the last number,
        the events, how many after `after` were already dropped from the ring)."""
        if self._event_seq <= after and self._new_event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), wait)
        out = [ev for seq, ev in self._events if seq > after]
        first = self._events[0][0] if self._events else self._event_seq + 1
        dropped = max(0, first - after - 1) if after < self._event_seq else 0
        return self._event_seq, out, dropped

    def totals(self) -> dict[str, int]:
        return dict(self._sup.totals) if self._sup is not None else {}

    def children(self) -> list[RemoteChildInfo]:
        sup = self._sup
        if sup is None:
            return []
        return [
            RemoteChildInfo(
                node_id=self.node_id,
                pid=c.pid,
                name=c.name,
                profile=c.profile,
                cgroup_paths=tuple(str(p) for p in (c.leaf.paths if c.leaf is not None else ())),
            )
            for c in sup.children
        ]

    # -- calls -------------------------------------------------------------------------------------------

    def _policy(self, policy: Policy | str | None, session: str | None) -> Policy:
        if session is None:
            if isinstance(policy, Policy):
                return policy
            return profiles.get(policy or "workspace-write", workdir=os.path.join(self._root, "scratch"))
        s = self._session(session)
        chosen = s.policy if policy is None else policy
        if isinstance(chosen, Policy):
            return chosen
        if isinstance(chosen, str):
            return profiles.get(chosen, workdir=s.workdir, **s.options)
        return chosen(s.workdir)

    def _session(self, session: str) -> _Session:
        s = self._sessions.get(session)
        if s is None:
            raise KeyError(session)
        return s

    async def run(
        self,
        cmd: Sequence[str],
        policy: Policy | str | None,
        session: str | None,
        kwargs: Mapping[str, Any],
        call: str = "",
        decision: CommandDecision | None = None,
    ) -> tuple[Result | Failure, NodeLoad]:
        """Supervisor.run on this node; `session` (an id) runs it in that session's workdir. Returns the
        Result, or the exception as a Failure, with the node's load after the call. `call` names the call
        for `settled`. `decision` is what the client's command rules decided (on the driver): the command
        runs under `decision.policy_for` the policy, and the Result carries the decision."""
        self._calls += 1
        ended = self._running_calls[call] = asyncio.Event()
        try:
            return await self._shielded(partial(self._run, cmd, policy, session, kwargs, decision))
        finally:
            self._calls -= 1
            ended.set()
            self._running_calls.pop(call, None)

    async def _shielded(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` in a task of the node's own task group, under a cancel scope of its own, and wait for
        it. Ray cancels an async actor's call with asyncio's Task.cancel, and repeats the request while the
        call runs: delivered straight into Supervisor.run, a repeat could break into its shielded kill-and-
        reap. Here every such request only cancels the work's scope (anyio's cancellation, which the
        supervisor's shields hold), the call waits until the work has ended (its child killed and reaped),
        and then ends cancelled."""
        tg = self._calls_tg
        if tg is None:
            raise SupervisorClosedError("the node's supervisor is not running")
        scope = anyio.CancelScope()
        done = asyncio.Event()
        box: list[Any] = []

        async def task() -> None:
            with scope:
                try:
                    box.append((True, await work()))
                except BaseException as err:
                    box.append((False, err))
            done.set()

        tg.start_soon(task)
        cancelled = False
        while not done.is_set():
            try:
                await done.wait()
            except asyncio.CancelledError:
                cancelled = True
                scope.cancel()
        if cancelled:
            raise asyncio.CancelledError
        if not box:  # the work was cancelled by its own scope before it began
            raise asyncio.CancelledError
        ok, value = box[0]
        if not ok:
            raise value
        return cast(T, value)

    async def _run(
        self,
        cmd: Sequence[str],
        policy: Policy | str | bytes | None,
        session: str | None,
        kwargs: Mapping[str, Any],
        decision: CommandDecision | None,
    ) -> tuple[Result | Failure, NodeLoad]:
        try:
            sup = self._running()
            if isinstance(policy, bytes):  # over the channel: a pickled Policy
                policy = self._unpickled_policy(policy)
            resolved = self._policy(policy, session)
            if decision is not None:
                chosen = decision.policy_for(resolved)
                if chosen is not resolved:  # as Supervisor.start does for a decision of its own
                    env, cwd = kwargs.get("env"), kwargs.get("cwd")
                    await _rules.check_planted(decision, resolved, chosen, env, cwd)
                resolved = chosen
            if session is not None:
                s = self._session(session)
                with anyio.CancelScope() as inner:
                    # Closing or expiring the session cancels its calls (their children are killed).
                    s.scopes.add(inner)
                    try:
                        result = await sup.run(cmd, policy=resolved, **kwargs)
                    finally:
                        s.scopes.discard(inner)
                if inner.cancelled_caught:
                    raise SupervisorClosedError(f"session {session} was closed during the call")
            else:
                result = await sup.run(cmd, policy=resolved, **kwargs)
            self._check_fenced("run")
            if decision is not None:
                result = dataclasses.replace(result, decision=decision)
            return result, self.load()
        except KeyError as err:
            return _failure(LookupError(f"no session {err.args[0]} on node {self.node_id}")), self.load()
        except Exception as err:
            return _failure(err), self.load()

    async def _serve_channel(self, stream: anyio.abc.SocketStream) -> None:
        """One client's direct channel (_channel.py): authenticate it by the secret, then run each RUN frame
        as a call of its own (as `run` does) and answer it; a CANCEL cancels that call (its child is killed
        and reaped before the answer). When the connection ends, the calls it carried are cancelled."""
        reader = BufferedByteReceiveStream(stream)
        scopes: dict[int, anyio.CancelScope] = {}
        send_lock = anyio.Lock()
        try:
            with anyio.fail_after(10):
                token = await reader.receive_exactly(TOKEN_BYTES)
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            await anyio.aclose_forcefully(stream)
            return
        if not hmac.compare_digest(token, self._token):
            log.warning("corral: a connection to the channel without the secret was closed")
            await anyio.aclose_forcefully(stream)
            return

        async def one(
            cid: int,
            cmd: Sequence[str],
            policy: Policy | str | None,
            session: str | None,
            kwargs: Mapping[str, Any],
            decision: CommandDecision | None,
        ) -> None:
            value: tuple[Result | Failure, NodeLoad] | None = None
            self._calls += 1
            try:
                with anyio.CancelScope() as scope:
                    scopes[cid] = scope
                    value = await self._run(cmd, policy, session, kwargs, decision)
            finally:
                self._calls -= 1
                scopes.pop(cid, None)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                frame = encode((cid, value))
                async with send_lock:
                    await stream.send(frame)

        async with anyio.create_task_group() as tg:
            try:
                while True:
                    message = await receive(reader)
                    if message[0] == RUN:
                        tg.start_soon(one, *message[1:])
                    elif message[0] == CANCEL and message[1] in scopes:
                        scopes[message[1]].cancel()
            except (
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                pass  # the client is gone
            except Exception:  # a frame that does not decode: the connection is dropped
                log.exception("corral: a bad frame on a channel; closing it")
            finally:
                for scope in scopes.values():
                    scope.cancel()  # nobody is waiting for these calls any more: their children go
        await anyio.aclose_forcefully(stream)

    def _unpickled_policy(self, blob: bytes) -> Policy:
        """The Policy a client sent pickled over the channel (RaySupervisor._wire_policy), unpickled once per
        pickle and kept for the last POLICY_BLOBS (one object call after call: the supervisor's compiled
        policies are found by it at once). Raises TypeError when the pickle is not of a Policy."""
        policy = self._policies.get(blob)
        if policy is None:
            loaded = pickle.loads(blob)
            if not isinstance(loaded, Policy):
                raise TypeError(f"a channel's policy must be a Policy, not {type(loaded).__name__}")
            if len(self._policies) >= POLICY_BLOBS:
                del self._policies[next(iter(self._policies))]
            policy = self._policies[blob] = loaded
        return policy

    async def settled(self, call: str) -> bool:
        """Wait until the call named `call` has ended (after a cancellation: its child killed and reaped).
        True at once for a call that ended already or never started."""
        ended = self._running_calls.get(call)
        if ended is not None:
            await ended.wait()
        return True

    async def start(
        self,
        cmd: Sequence[str],
        policy: Policy | str | None,
        session: str | None,
        kwargs: Mapping[str, Any],
        decision: CommandDecision | None = None,
    ) -> tuple[str, int] | Failure:
        """Supervisor.start on this node (`kwargs` carry stdin/stdout/stderr as PIPE or DEVNULL). A PIPE
        output is read into a buffer of at most STREAM_WINDOW bytes, which the client empties with `read`;
        a PIPE stdin takes the client's `write`s. Returns (handle, pid) or a Failure. `decision` as in
        `run`."""
        try:
            sup = self._running()
            resolved = self._policy(policy, session)
            if decision is not None:
                chosen = decision.policy_for(resolved)
                if chosen is not resolved:
                    env, cwd = kwargs.get("env"), kwargs.get("cwd")
                    await _rules.check_planted(decision, resolved, chosen, env, cwd)
                resolved = chosen
            child = await sup.start(cmd, policy=resolved, **kwargs)
        except KeyError as err:
            return _failure(LookupError(f"no session {err.args[0]} on node {self.node_id}"))
        except Exception as err:
            return _failure(err)
        if decision is not None:
            child.decision = decision  # its Result carries it, as a local Supervisor's does
        handle = secrets.token_hex(8)
        outputs = {
            which: _Output()
            for which, stream in (("stdout", child.stdout), ("stderr", child.stderr))
            if stream is not None
        }
        entry = _Started(handle, child, outputs)
        self._started[handle] = entry
        entry.task = asyncio.get_running_loop().create_task(self._drain_started(entry))
        return handle, child.pid

    async def _drain_started(self, entry: _Started) -> None:
        async def drain(stream: Any, out: _Output) -> None:
            try:
                with contextlib.suppress(
                    anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError
                ):
                    async for chunk in stream:
                        if out.closed:
                            continue
                        out.buf += chunk
                        out.readable.set()
                        while len(out.buf) >= STREAM_WINDOW and not out.closed:
                            out.room.clear()
                            await out.room.wait()
            finally:
                out.eof = True
                out.readable.set()

        child = entry.child
        try:
            async with anyio.create_task_group() as tg:
                for which, out in entry.outputs.items():
                    tg.start_soon(drain, getattr(child, which), out)
            await child.wait()
        finally:
            await child.aclose()
            entry.finished.set()
            if entry.released:
                self._started.pop(entry.handle, None)

    def _entry(self, handle: str) -> _Started:
        entry = self._started.get(handle)
        if entry is None:
            raise LookupError(f"no started child {handle} on node {self.node_id}")
        entry.touched = time.monotonic()
        return entry

    async def read(self, handle: str, which: str, max_bytes: int) -> bytes | Failure:
        """Up to `max_bytes` of the child's `which` output ("stdout" or "stderr") once there are some;
        b"" once the stream has ended and all of it was read. On cancellation nothing is consumed."""
        try:
            out = self._entry(handle).outputs[which]
        except (LookupError, KeyError) as err:
            return _failure(LookupError(f"no {which} stream of {handle} on node {self.node_id}: {err}"))
        while not out.buf and not out.eof:
            out.readable.clear()
            await out.readable.wait()
        data = bytes(out.buf[:max_bytes])
        del out.buf[:max_bytes]
        out.room.set()
        return data

    def close_output(self, handle: str, which: str) -> bool:
        """The client closed its `which` stream: what the child writes there from now on is dropped."""
        entry = self._started.get(handle)
        out = entry.outputs.get(which) if entry is not None else None
        if out is None:
            return False
        out.close()
        return True

    async def write(self, handle: str, data: bytes) -> bool | Failure:
        """Write `data` to the child's stdin (waits while its pipe is full). A Failure of
        anyio.BrokenResourceError when the child has closed its end (or exited), ClosedResourceError
        after `close_stdin`."""
        try:
            stdin = self._entry(handle).child.stdin
            if stdin is None:
                raise anyio.ClosedResourceError
            await stdin.send(data)
        except Exception as err:
            return _failure(err)
        return True

    async def close_stdin(self, handle: str) -> bool:
        """Close the child's stdin (it reads end of file)."""
        entry = self._started.get(handle)
        if entry is None or entry.child.stdin is None:
            return False
        await entry.child.stdin.aclose()
        return True

    async def wait(self, handle: str) -> Result | Failure:
        """The Result of a started child once it has exited (its output is in the streams, not in the
        Result, as with Supervisor.start). A cancelled wait kills the child."""
        try:
            entry = self._entry(handle)
        except LookupError as err:
            return _failure(err)
        try:
            result = await entry.child.wait()
        except BaseException:
            entry.child.kill()  # the caller's cancellation of wait() kills the child, as Supervisor.run does
            raise
        if self._closing is not None:
            return _failure(
                NodeLostError(self.node_id, "wait", f"the node's supervisor closed: {self._closing}")
            )
        return result

    async def release(self, handle: str) -> bool:
        """Release a started child: its stdin is closed (a child reading it gets end of file), what it
        still writes is drained and dropped, and, once it has finished, its handle is forgotten."""
        entry = self._started.get(handle)
        if entry is None:
            return False
        entry.released = True
        if entry.finished.is_set():
            del self._started[handle]
        for out in entry.outputs.values():
            out.close()
        if entry.child.stdin is not None:
            await entry.child.stdin.aclose()
        return True

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for handle, entry in list(self._started.items()):
            if entry.finished.is_set() and now - entry.touched > STARTED_IDLE:
                del self._started[handle]

    def kill(self, handle: str) -> bool:
        entry = self._started.get(handle)
        if entry is None:
            return False
        entry.child.kill()
        return True

    def stats(self, handle: str) -> ChildStats | None:
        entry = self._started.get(handle)
        return None if entry is None else entry.child.last_stats

    # -- sessions ------------------------------------------------------------------------------------------

    async def session_open(
        self, source: bytes | None, policy: SessionPolicy, options: Mapping[str, Any], lease: float
    ) -> tuple[str, str] | Failure:
        """Make a session: a fresh workdir on this node, unpacked from the tar `source` (None: empty).
        Returns (session id, workdir) or a Failure. The session is closed (its calls cancelled, its
        workdir removed) by session_close, or when `lease` seconds pass without a renewal."""
        sid = secrets.token_hex(8)
        workdir = os.path.join(self._root, f"s-{sid}")
        try:
            self._running()
            await anyio.to_thread.run_sync(_make_workdir, workdir, source)
        except Exception as err:
            await anyio.to_thread.run_sync(_files.remove_tree, workdir)
            return _failure(err)
        except BaseException:
            # Cancelled (ray.cancel) while the worker thread made it: no session will own the workdir, and
            # no sandbox has used it yet, so it is removed here and now, before the cancellation goes on.
            _files.remove_tree(workdir)
            raise
        self._sessions[sid] = _Session(sid, workdir, policy, dict(options), lease, time.monotonic())
        return sid, workdir

    def session_renew(self, ids: Sequence[str]) -> list[str]:
        """Renew the leases of `ids`; returns those this node no longer has (lost or expired)."""
        now = time.monotonic()
        missing = []
        for sid in ids:
            s = self._sessions.get(sid)
            if s is None:
                missing.append(sid)
            else:
                s.renewed = now
        return missing

    async def session_close(self, sid: str) -> bool:
        """Cancel the session's calls (their children are killed and reaped) and remove its workdir."""
        s = self._sessions.pop(sid, None)
        if s is None:
            return False
        for scope in s.scopes:
            scope.cancel()
        await anyio.to_thread.run_sync(_files.remove_tree, s.workdir)
        return True

    async def _expire_sessions(self) -> None:
        while True:
            await anyio.sleep(0.5)
            self._forget_idle()
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if now - s.renewed > s.lease:
                    log.warning("session %s: lease expired (its owner is gone); closing it", s.id)
                    try:
                        await self.session_close(s.id)
                    except Exception:  # one session's workdir must not end the node's supervisor
                        log.exception("session %s: closing it failed", s.id)

    async def read_file(self, sid: str, path: str, limit: int) -> bytes | Failure:
        try:
            return await anyio.to_thread.run_sync(_files.read_file, self._session(sid).workdir, path, limit)
        except KeyError:
            return _failure(LookupError(f"no session {sid} on node {self.node_id}"))
        except Exception as err:
            return _failure(err)

    async def archive(self, sid: str, path: str, limit: int) -> bytes | Failure:
        try:
            return await anyio.to_thread.run_sync(_files.archive, self._session(sid).workdir, path, limit)
        except KeyError:
            return _failure(LookupError(f"no session {sid} on node {self.node_id}"))
        except Exception as err:
            return _failure(err)


def _renice(niceness: int | None) -> None:
    """Run this worker process (every thread of it, and so the fork server and sandboxes made from them) at
    `niceness`, or at the raylet's (its parent's) for None. Ray starts its worker processes at nice 15, to
    keep its own processes responsive; the node's supervisor and its sandboxes are the node's work, and at
    nice 15 every sandbox spawn and every reply waited behind the rest of the machine. Lowering the niceness
    needs CAP_SYS_NICE (or RLIMIT_NICE): without it, a warning, and the worker's niceness stays."""
    want = niceness if niceness is not None else os.getpriority(os.PRIO_PROCESS, os.getppid())
    try:
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), want)  # Linux: a thread's niceness is its own
    except (PermissionError, ProcessLookupError) as err:
        log.warning("corral: the node supervisor stays at niceness %d (not %d): %s", os.nice(0), want, err)


def _make_workdir(workdir: str, source: bytes | None) -> None:
    os.mkdir(workdir, 0o755)
    if source:
        _files.unpack(workdir, source)
