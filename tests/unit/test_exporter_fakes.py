"""A stand-in Supervisor for the exporter's unit tests (no sandbox, no privileges), and the tests that keep
it honest: every attribute the fakes offer exists, with the same meaning, on the real classes."""

from __future__ import annotations

import contextlib
import errno
import inspect
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from supervisor import Child, Feature, KernelCaps, Result, Supervisor, SupervisorClosedError, Violation
from supervisor._proxy import ProxyConfig
from supervisor._types import ChildStats

CAPS = KernelCaps(
    landlock_abi=5,
    landlock=Feature(True),
    seccomp=Feature(True),
    namespaces={"user": Feature(True), "pid": Feature(True), "net": Feature(False, errno.EPERM)},
)


@dataclass(eq=False)
class FakeChild:
    """The Child attributes exporters read."""

    profile: str = "workspace-write"
    name: str | None = None
    running: bool = True
    spawn_latency_s: float | None = 0.004
    last_stats: ChildStats | None = None


def stats(
    cpu: float | None = 1.5,
    mem: int | None = 1000,
    peak: int | None = 2000,
    pids: int | None = 3,
    fds: int | None = None,
) -> ChildStats:
    return ChildStats(mem, peak, cpu, pids, fds, 0, 0, 0.0)


def result(
    code: int = 0, sig: int | None = None, violation: str | None = None, duration: float = 0.2
) -> Result:
    v = Violation(violation, 1, 2) if violation else None  # type: ignore[arg-type]
    # A violation with exit 137 is one corral killed for; otherwise it was only reported.
    return Result(code, sig, v, duration, 0.1, 1 << 20, killed=v is not None and code == 137)


@dataclass
class FakeCgroups:
    controllers: dict[str, int] = field(default_factory=lambda: {"memory": 2, "pids": 2})


class FakeSupervisor:
    """The public state exporters read: children, totals, caps, cgroups, max_concurrency, proxy, subscribe().

    `start`/`exit` mimic the supervisor's bookkeeping: totals updated and the event emitted in one step.
    """

    def __init__(self, *, caps: KernelCaps | None = CAPS, cgroups: FakeCgroups | None = None) -> None:
        self.max_concurrency = 64
        self.totals: Counter[str] = Counter()
        self.proxy = ProxyConfig()
        self._children: set[FakeChild] = set()
        self._caps = caps
        self.cgroups = cgroups
        self._subscribers: list[MemoryObjectSendStream[SimpleNamespace]] = []

    @property
    def caps(self) -> KernelCaps:
        if self._caps is None:
            raise SupervisorClosedError("the supervisor is not running")
        return self._caps

    @property
    def children(self) -> frozenset[FakeChild]:
        return frozenset(self._children)

    @contextlib.contextmanager
    def subscribe(self, max_buffer: int = 1000) -> Iterator[MemoryObjectReceiveStream[SimpleNamespace]]:
        send, receive = anyio.create_memory_object_stream[SimpleNamespace](max_buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)
            send.close()
            receive.close()

    def emit(self, kind: str, child: FakeChild, res: Result | None = None) -> None:
        for send in self._subscribers:
            with contextlib.suppress(anyio.WouldBlock):
                send.send_nowait(SimpleNamespace(kind=kind, child=child, result=res))

    def start(self, child: FakeChild, *, emit: bool = True) -> FakeChild:
        self._children.add(child)
        self.totals["started"] += 1
        if emit:
            self.emit("started", child)
        return child

    def exit(self, child: FakeChild, res: Result, *, emit: bool = True) -> None:
        from exporters.prometheus import outcome

        self._children.discard(child)
        child.running = False
        self.totals["exited"] += 1
        self.totals[f"exited:{outcome(res)}"] += 1
        if res.violation is not None:
            self.totals[f"violation:{res.violation.kind}"] += 1
        if emit:
            self.emit("exited", child, res)


def samples(registry: CollectorRegistry) -> list[Sample]:
    return [s for fam in registry.collect() for s in fam.samples]


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    """The value of the one sample `name` with exactly `labels`, or None when there is none."""
    found = [s.value for s in samples(registry) if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


async def settle() -> None:
    """Let the exporter's event consumer run."""
    for _ in range(5):
        await anyio.lowlevel.checkpoint()


# -- the fakes must not drift from the real classes -------------------------------------------------------


def test_fake_supervisor_offers_only_real_public_state() -> None:
    init_source = inspect.getsource(Supervisor.__init__)
    assert "self.max_concurrency =" in init_source
    assert "self.totals: Counter[str] =" in init_source
    for prop in ("children", "caps", "cgroups"):
        assert isinstance(getattr(Supervisor, prop), property), prop
    assert "max_buffer" in inspect.signature(Supervisor.subscribe).parameters


def test_fake_child_attributes_exist_on_child() -> None:
    init_source = inspect.getsource(Child.__init__)
    for attr in ("profile", "name", "spawn_latency_s", "last_stats"):
        assert re.search(rf"self\.{attr}\b[^=\n]*=", init_source), attr
    assert isinstance(Child.running, property)


def test_fake_events_have_the_real_event_fields() -> None:
    from supervisor._supervisor import Event

    assert {"kind", "child", "result"} <= set(Event.__dataclass_fields__)
