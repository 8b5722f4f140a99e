"""Prometheus metrics for a running Supervisor: a custom collector and an HTTP endpoint.

    async with Supervisor() as sup, serve_metrics(sup, port=9464):    # GET http://127.0.0.1:9464/metrics
        ...

The collector reads the supervisor's public state when scraped (`children`, each child's `last_stats`,
`totals`, `caps`, `cgroups`, the network proxy's live `proxy.totals`); nothing updates gauges in the
background. Only what the supervisor does not keep is kept here, fed by its lifecycle events
(`Supervisor.subscribe`): per-profile started/exited counts
and the spawn-latency and duration histograms. `METRICS` lists every metric with its type, labels and
meaning; docs/metrics.md is generated from it (and a test keeps the two equal).

Counter semantics. `corral_violations_total` reads `Supervisor.totals` at scrape time, so it counts since the
supervisor started. `Supervisor.totals` has no profile, so the per-profile started/exited counters count the
events this exporter received, and are reconciled against `totals` whenever the event stream has been
drained: children started or exited before the exporter attached, or whose events were dropped (a
subscriber that falls far behind loses events rather than slowing the supervisor), are counted under
profile "unknown". Summed over profiles, the counters therefore always equal `totals`, and never go down.

Labels are bounded by construction: profile, outcome, violation kind, state, isolation layer, and the
caller-given `name` of `Supervisor.start` (a tool name; corral never puts a pid or a command line in a
label). Children sharing (profile, name) are summed into one series; the corral_child_* gauges of children
that have exited disappear at the next scrape, while the corral_tool_* counters (spawns, exits by outcome,
violations by kind, CPU seconds, by name) keep counting, so that millisecond tool calls, which no scrape
sees running, still show which tool keeps hitting limits. Those keep at most `max_names` distinct names
(200 by default); later names are counted under "other".
"""

from __future__ import annotations

import bisect
import gzip
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, Protocol

import anyio
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream
from prometheus_client import REGISTRY, CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporters._http import HttpServer, Response
from exporters._tasks import background
from policies import profiles
from supervisor import Child, Result, SupervisorClosedError

if TYPE_CHECKING:
    from supervisor import Supervisor

__all__ = [
    "DURATION_BUCKETS",
    "METRICS",
    "SPAWN_LATENCY_BUCKETS",
    "MetricSpec",
    "MetricsServer",
    "SupervisorCollector",
    "attach_metrics",
    "serve_metrics",
]

MetricType = Literal["counter", "gauge", "histogram", "info"]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric. `name` is the name to query (counters end in _total, info metrics in _info;
    a histogram's series are name_bucket, name_sum and name_count)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str


#: Every metric the collector exports, in exposition order.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "corral_children",
        "gauge",
        ("state", "profile"),
        "Children alive now, by state: starting (spawned, command not yet running), running, exiting "
        "(reaped, cleanup in progress).",
    ),
    MetricSpec(
        "corral_children_started_total",
        "counter",
        ("profile",),
        "Children whose command started running.",
    ),
    MetricSpec(
        "corral_children_exited_total",
        "counter",
        ("profile", "outcome"),
        "Children reaped, by outcome: ok (exit 0), error (other exit codes), signal (killed by a signal), "
        "violation (killed for breaking a limit).",
    ),
    MetricSpec(
        "corral_violations_total",
        "counter",
        ("kind",),
        "Limit violations by kind: memory, pids, wall_time, cpu_time, fds, output, disk.",
    ),
    MetricSpec(
        "corral_denials_total",
        "counter",
        ("layer", "operation"),
        "Refused actions by the layer that refused them (seccomp, landlock, mounts, network, proxy, cgroup, "
        "rlimit) and the operation (syscall, write, read, execute, connect, bind, fork, ...); repeats count.",
    ),
    MetricSpec(
        "corral_command_decisions_total",
        "counter",
        ("decision",),
        "Commands decided by command rules before they start (docs/rules.md): allow, prompt (put to the "
        "approver, or refused without one), forbidden.",
    ),
    MetricSpec(
        "corral_tool_spawns_total",
        "counter",
        ("profile", "name"),
        "Children started, by the caller-given name (a tool name; at most max_names distinct names, the "
        'rest counted as "other"). Outlives the children, unlike the corral_child_* gauges.',
    ),
    MetricSpec(
        "corral_tool_exits_total",
        "counter",
        ("profile", "name", "outcome"),
        "Children reaped, by name and outcome (ok, error, signal, violation).",
    ),
    MetricSpec(
        "corral_tool_violations_total",
        "counter",
        ("profile", "name", "kind"),
        "Limit violations by name and kind.",
    ),
    MetricSpec(
        "corral_tool_cpu_seconds_total",
        "counter",
        ("profile", "name"),
        "CPU seconds (user+system, whole trees) of the children reaped, by name.",
    ),
    MetricSpec(
        "corral_proxy_bytes_total",
        "counter",
        ("direction",),
        'Bytes corral\'s network proxy relayed for sandboxes under network mode "proxy": up (sent by the '
        "sandboxes), down (sent to them).",
    ),
    MetricSpec(
        "corral_proxy_connections_total",
        "counter",
        ("decision",),
        "Connections the proxy relayed (allowed) and refused (denied: by policy, a timeout, the bound).",
    ),
    MetricSpec(
        "corral_proxy_domain_connections_total",
        "counter",
        ("domain", "decision"),
        "Proxy requests by domain, only for the names the operator listed in Supervisor.proxy."
        'count_domains (at most 64; every other name counted as "other"); no series without that list.',
    ),
    MetricSpec(
        "corral_spawn_latency_seconds",
        "histogram",
        ("profile",),
        "Seconds from Supervisor.start() to the command running (sandbox setup included).",
    ),
    MetricSpec(
        "corral_child_duration_seconds",
        "histogram",
        ("profile",),
        "Wall-clock seconds from start to reaping, per exited child.",
    ),
    MetricSpec(
        "corral_child_cpu_seconds",
        "gauge",
        ("profile", "name"),
        "CPU seconds (user+system) used so far by the running children with these labels, whole trees.",
    ),
    MetricSpec(
        "corral_child_memory_bytes",
        "gauge",
        ("profile", "name"),
        "Memory in use by the running children with these labels.",
    ),
    MetricSpec(
        "corral_child_memory_peak_bytes",
        "gauge",
        ("profile", "name"),
        "Sum of the memory high-water marks of the running children with these labels.",
    ),
    MetricSpec(
        "corral_child_pids",
        "gauge",
        ("profile", "name"),
        "Tasks (processes and threads) in the running children with these labels.",
    ),
    MetricSpec(
        "corral_child_open_fds",
        "gauge",
        ("profile", "name"),
        "Open file descriptors in the running children with these labels (only children whose policy "
        "limits fds are sampled for it).",
    ),
    MetricSpec(
        "corral_max_concurrency",
        "gauge",
        (),
        "The supervisor's max_concurrency: children allowed alive at once.",
    ),
    MetricSpec(
        "corral_isolation_layer_info",
        "info",
        ("layer", "available"),
        "Isolation layers this kernel and host offer, as probed at supervisor start (value 1).",
    ),
    MetricSpec(
        "corral_landlock_abi",
        "gauge",
        (),
        "The kernel's Landlock ABI version (0: Landlock unavailable).",
    ),
)

#: Child states of corral_children.
STATES: tuple[str, ...] = ("starting", "running", "exiting")
#: The (layer, operation) pairs of corral_denials_total always exported (0 until something is refused):
#: those this version reports (docs/denials.md); others appear once counted.
DENIAL_PAIRS: tuple[tuple[str, str], ...] = (("seccomp", "syscall"), ("cgroup", "fork"), ("rlimit", "write"))

#: Exit outcomes, as Supervisor.totals counts them ("exited:<outcome>").
OUTCOMES: tuple[str, ...] = ("ok", "error", "signal", "violation")
#: Violation kinds (supervisor.Violation.kind), exported at 0 before the first one.
VIOLATION_KINDS: tuple[str, ...] = ("memory", "pids", "wall_time", "cpu_time", "fds", "output", "disk")
#: The profile label of children this exporter did not see start or exit (see the module docstring).
UNKNOWN_PROFILE = "unknown"

#: Fine between 0.5 and 5 ms, where a sandboxed spawn's median lies (1-4 ms here), so that
#: histogram_quantile reads the real median rather than a bucket's edge.
SPAWN_LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip

#: Distinct caller-given names the corral_tool_* counters keep by default; later names count as OTHER_NAME.
MAX_NAMES = 200
#: The name label of the children whose name came after MAX_NAMES others.
OTHER_NAME = "other"

#: Events buffered for the exporter. Its consumer does O(1) work per event, so it only falls behind when
#: the event loop is starved; events lost then are still counted (under profile "unknown").
EVENT_BUFFER = 10_000

_SPEC = {m.name: m for m in METRICS}
_CHILD_GAUGES: tuple[tuple[str, str], ...] = (
    ("corral_child_cpu_seconds", "cpu_seconds"),
    ("corral_child_memory_bytes", "memory_bytes"),
    ("corral_child_memory_peak_bytes", "memory_peak_bytes"),
    ("corral_child_pids", "pids"),
    ("corral_child_open_fds", "open_fds"),
)


def outcome(result: Result) -> str:
    """ok | error | signal | violation: the outcome label of an exited child (`Result.outcome`, the rule the
    supervisor's `exited:<outcome>` totals use too)."""
    return result.outcome


def _family(spec: MetricSpec) -> Metric:
    """An empty metric family for `spec`."""
    if spec.type == "counter":
        return _counter(spec.name)
    if spec.type == "histogram":
        return _histogram(spec.name)
    if spec.type == "info":
        return _info(spec.name)
    return _gauge(spec.name)


def _gauge(name: str) -> GaugeMetricFamily:
    spec = _SPEC[name]
    return GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _counter(name: str) -> CounterMetricFamily:
    spec = _SPEC[name]
    return CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _histogram(name: str) -> HistogramMetricFamily:
    spec = _SPEC[name]
    return HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))


def _info(name: str) -> InfoMetricFamily:
    spec = _SPEC[name]
    # The last label ("available") is the info value's own, given per sample; the rest are the family's.
    return InfoMetricFamily(spec.name.removesuffix("_info"), spec.help, labels=list(spec.labels[:-1]))


class _Event(Protocol):
    """What the exporter reads of a supervisor lifecycle event (`Supervisor.subscribe`)."""

    @property
    def kind(self) -> str: ...
    @property
    def child(self) -> Child | None: ...
    @property
    def result(self) -> Result | None: ...


class _Histogram:
    """Bucket counts and a sum; updated on the event loop, copied under the collector's lock."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets (Prometheus `le` semantics) and the sum."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets, self.total


@dataclass
class _State:
    """What the exporter keeps itself (the supervisor does not): fed by events, guarded by `lock`."""

    spawn_buckets: tuple[float, ...]
    duration_buckets: tuple[float, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: Counter[str] = field(default_factory=Counter)
    exited: Counter[tuple[str, str]] = field(default_factory=Counter)
    exited_by_outcome: Counter[str] = field(default_factory=Counter)
    latency: dict[str, _Histogram] = field(default_factory=dict)
    duration: dict[str, _Histogram] = field(default_factory=dict)
    profiles: set[str] = field(default_factory=set)
    #: The last open-fd count seen per running child: the supervisor samples fds only every few rounds
    #: and its `last_stats.open_fds` is None in between.
    fds: dict[Child, int] = field(default_factory=dict)
    #: Per-name counters (corral_tool_*), kept for good: the names seen, at most max_names of them.
    max_names: int = MAX_NAMES
    names: set[str] = field(default_factory=set)
    tool_spawns: Counter[tuple[str, str]] = field(default_factory=Counter)
    tool_exits: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    tool_violations: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    tool_cpu: dict[tuple[str, str], float] = field(default_factory=dict)

    def name_of(self, child: Child) -> str:
        """The bounded name label of `child`: its own name while fewer than max_names were seen."""
        name = child.name or ""
        if name in self.names:
            return name
        if len(self.names) < self.max_names:
            self.names.add(name)
            return name
        return OTHER_NAME

    def hist(self, table: dict[str, _Histogram], profile: str, bounds: tuple[float, ...]) -> _Histogram:
        h = table.get(profile)
        if h is None:
            h = table[profile] = _Histogram(bounds)
        return h


class SupervisorCollector(Collector):
    """The corral collector for one Supervisor. Created and attached by `attach_metrics` (which also feeds
    it the supervisor's events); `collect` may then be called from any thread, as often as scraped."""

    def __init__(
        self,
        sup: Supervisor,
        *,
        spawn_buckets: Sequence[float] = SPAWN_LATENCY_BUCKETS,
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        max_names: int = MAX_NAMES,
    ) -> None:
        if isinstance(max_names, bool) or not isinstance(max_names, int) or max_names < 0:
            msg = f"max_names must be an int >= 0, not {max_names!r}"
            raise ValueError(msg)
        self.sup = sup
        self._state = _State(
            tuple(sorted(spawn_buckets)), tuple(sorted(duration_buckets)), max_names=max_names
        )

    # -- fed on the event loop -------------------------------------------------------------------------

    def _attach(self) -> None:
        """Count the children already running (their started event came before we subscribed) and
        reconcile. Call right after subscribing, with no await in between."""
        st = self._state
        with st.lock:
            for child in self.sup.children:
                if child.spawn_latency_s is not None:  # set just before its started event
                    self._on_started(child)
        self._reconcile()

    def _on_started(self, child: Child) -> None:
        st = self._state
        st.started[child.profile] += 1
        st.profiles.add(child.profile)
        st.tool_spawns[(child.profile, st.name_of(child))] += 1
        if child.spawn_latency_s is not None:
            st.hist(st.latency, child.profile, st.spawn_buckets).observe(child.spawn_latency_s)

    def _on_exited(self, child: Child, result: Result) -> None:
        st = self._state
        out = outcome(result)
        st.exited[(child.profile, out)] += 1
        st.exited_by_outcome[out] += 1
        st.profiles.add(child.profile)
        name = st.name_of(child)
        st.tool_exits[(child.profile, name, out)] += 1
        st.tool_cpu[(child.profile, name)] = st.tool_cpu.get((child.profile, name), 0.0) + result.cpu_s
        if result.violation is not None:
            st.tool_violations[(child.profile, name, result.violation.kind)] += 1
        st.hist(st.duration, child.profile, st.duration_buckets).observe(result.duration_s)

    def _reconcile(self) -> None:
        """Count, under profile "unknown", what `Supervisor.totals` has and the events did not bring. Exact
        only while no event is in flight: call it on the loop once the event stream is drained (the
        supervisor updates `totals` and emits the event in one synchronous step)."""
        st = self._state
        totals = self.sup.totals
        with st.lock:
            missing = totals["started"] - st.started.total()
            if missing > 0:
                st.started[UNKNOWN_PROFILE] += missing
            for key, n in list(totals.items()):
                if key.startswith("exited:"):
                    out = key.removeprefix("exited:")
                    missing = n - st.exited_by_outcome[out]
                    if missing > 0:
                        st.exited[(UNKNOWN_PROFILE, out)] += missing
                        st.exited_by_outcome[out] += missing

    async def _consume(self, events: MemoryObjectReceiveStream[_Event]) -> None:
        """Apply events as they come, in batches; reconcile after each batch. Ends with the stream."""
        async for first in events:
            batch = [first]
            while True:
                try:
                    batch.append(events.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            with self._state.lock:
                for ev in batch:
                    if ev.child is None:  # a command rules' decision: counted from totals at scrape time
                        continue
                    if ev.kind == "started":
                        self._on_started(ev.child)
                    elif ev.kind == "exited" and ev.result is not None:
                        self._on_exited(ev.child, ev.result)
            self._reconcile()

    # -- read at scrape time (any thread) --------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The metric families, empty: lets a registry detect duplicate names at registration."""
        return [_family(m) for m in METRICS]

    def collect(self) -> Iterable[Metric]:
        """Every metric in METRICS, from the supervisor's state now. Never blocks on I/O."""
        sup = self.sup
        st = self._state
        children = sup.children  # an immutable snapshot
        totals = dict(sup.totals)  # copied in one C call: safe against the loop adding keys meanwhile
        with st.lock:
            started = Counter(st.started)
            exited = Counter(st.exited)
            latency = {p: h.snapshot() for p, h in st.latency.items()}
            duration = {p: h.snapshot() for p, h in st.duration.items()}
            known = set(profiles.NAMES) | st.profiles | {c.profile for c in children}
            tool: tuple[Sequence[tuple[tuple[str, ...], float]], ...] = (
                list(st.tool_spawns.items()),
                list(st.tool_exits.items()),
                list(st.tool_violations.items()),
                list(st.tool_cpu.items()),
            )

        out: list[Metric] = [self._children(children, known)]

        c = _counter("corral_children_started_total")
        for profile in sorted(known | set(started)):
            c.add_metric([profile], started[profile])
        out.append(c)

        c = _counter("corral_children_exited_total")
        outcomes = sorted(set(OUTCOMES) | {o for _, o in exited})
        for profile in sorted(known | {p for p, _ in exited}):
            for o in outcomes:
                # "unknown" only where it counts something: it is not a profile anyone runs.
                if profile != UNKNOWN_PROFILE or exited[(profile, o)]:
                    c.add_metric([profile, o], exited[(profile, o)])
        out.append(c)

        c = _counter("corral_violations_total")
        seen_kinds = {k.removeprefix("violation:") for k in totals if k.startswith("violation:")}
        for kind in sorted(set(VIOLATION_KINDS) | seen_kinds):
            c.add_metric([kind], totals.get(f"violation:{kind}", 0))
        out.append(c)

        c = _counter("corral_denials_total")
        pairs = {tuple(k.split(":", 2)[1:]) for k in totals if k.startswith("denied:")}
        for layer, operation in sorted(pairs | set(DENIAL_PAIRS)):
            c.add_metric([layer, operation], totals.get(f"denied:{layer}:{operation}", 0))
        out.append(c)

        c = _counter("corral_command_decisions_total")
        for decision in ("allow", "prompt", "forbidden"):
            c.add_metric([decision], totals.get(f"decision:{decision}", 0))
        out.append(c)

        for name, counts in zip(
            (
                "corral_tool_spawns_total",
                "corral_tool_exits_total",
                "corral_tool_violations_total",
                "corral_tool_cpu_seconds_total",
            ),
            tool,
            strict=True,
        ):
            c = _counter(name)
            for labels, n in sorted(counts):
                c.add_metric(list(labels), n)
            out.append(c)

        out += self._proxy()

        for name, snaps, bounds in (
            ("corral_spawn_latency_seconds", latency, st.spawn_buckets),
            ("corral_child_duration_seconds", duration, st.duration_buckets),
        ):
            h = _histogram(name)
            for profile in sorted(known | set(snaps)):
                buckets, total = snaps.get(profile) or _Histogram(bounds).snapshot()
                h.add_metric([profile], buckets, total)
            out.append(h)

        out += self._per_child(children)

        g = _gauge("corral_max_concurrency")
        g.add_metric([], sup.max_concurrency)
        out.append(g)

        out += self._isolation()
        return out

    def _proxy(self) -> list[Metric]:
        """The network proxy's counters, summed over every sandbox (Supervisor.proxy.totals: live)."""
        config = self.sup.proxy
        totals = config.totals
        c = _counter("corral_proxy_bytes_total")
        c.add_metric(["up"], totals.bytes_up)
        c.add_metric(["down"], totals.bytes_down)
        out: list[Metric] = [c]
        c = _counter("corral_proxy_connections_total")
        c.add_metric(["allowed"], totals.allowed)
        c.add_metric(["denied"], totals.denied)
        out.append(c)
        c = _counter("corral_proxy_domain_connections_total")
        counts = dict(config.by_domain)  # copied in one C call, as sup.totals
        if config.count_domains:
            for domain in (*config.count_domains, "other"):
                for decision in ("allowed", "denied"):
                    c.add_metric([domain, decision], counts.get((domain, decision), 0))
        out.append(c)
        return out

    def _children(self, children: frozenset[Child], known: set[str]) -> GaugeMetricFamily:
        by_state: Counter[tuple[str, str]] = Counter()
        for child in children:
            if not child.running:
                state = "exiting"
            else:
                state = "running" if child.spawn_latency_s is not None else "starting"
            by_state[(state, child.profile)] += 1
        g = _gauge("corral_children")
        for profile in sorted(known):
            for state in STATES:
                g.add_metric([state, profile], by_state[(state, profile)])
        return g

    def _per_child(self, children: frozenset[Child]) -> list[Metric]:
        """The corral_child_* gauges: running children's last samples, summed by (profile, name)."""
        st = self._state
        with st.lock:
            last_fds = st.fds
        sums: dict[str, dict[tuple[str, str], float]] = {attr: {} for _, attr in _CHILD_GAUGES}
        fds: dict[Child, int] = {}
        for child in children:
            stats = child.last_stats
            if not child.running or stats is None:
                continue
            key = (child.profile, child.name or "")
            open_fds = stats.open_fds if stats.open_fds is not None else last_fds.get(child)
            if open_fds is not None:
                fds[child] = open_fds
            values = (stats.cpu_seconds, stats.memory_bytes, stats.memory_peak_bytes, stats.pids, open_fds)
            for (_, attr), value in zip(_CHILD_GAUGES, values, strict=True):
                if value is not None:
                    group = sums[attr]
                    group[key] = group.get(key, 0.0) + value
        with st.lock:
            st.fds = fds  # live children only: the memo goes with the child
        out: list[Metric] = []
        for name, attr in _CHILD_GAUGES:
            g = _gauge(name)
            for (profile, child_name), value in sorted(sums[attr].items()):
                g.add_metric([profile, child_name], value)
            out.append(g)
        return out

    def _isolation(self) -> list[Metric]:
        """corral_isolation_layer_info and corral_landlock_abi, from the kernel probe and the cgroups."""
        info = _info("corral_isolation_layer_info")
        abi = _gauge("corral_landlock_abi")
        try:
            caps = self.sup.caps
        except SupervisorClosedError:  # not running (yet, or any more): nothing probed to report
            return [info, abi]
        layers = {"landlock": caps.landlock.available, "seccomp": caps.seccomp.available}
        layers |= {f"{ns}_ns": feat.available for ns, feat in caps.namespaces.items()}
        mgr = self.sup.cgroups
        controllers = mgr.controllers if mgr is not None else {}
        layers["cgroup"] = mgr is not None
        layers |= {f"cgroup_{k}": k in controllers for k in ("memory", "cpu", "pids")}
        for layer, available in sorted(layers.items()):
            info.add_metric([layer], {"available": str(available).lower()})
        abi.add_metric([], caps.landlock_abi)
        return [info, abi]


@asynccontextmanager
async def attach_metrics(
    sup: Supervisor,
    *,
    registry: CollectorRegistry | None = REGISTRY,
    spawn_buckets: Sequence[float] = SPAWN_LATENCY_BUCKETS,
    duration_buckets: Sequence[float] = DURATION_BUCKETS,
    max_names: int = MAX_NAMES,
) -> AsyncIterator[SupervisorCollector]:
    """Attach a SupervisorCollector to the running `sup` for the duration of the block: subscribe to its
    events and register the collector in `registry` (prometheus_client's global REGISTRY by default, as
    every prometheus_client collector; None: do not register). Serve it any way you like
    (prometheus_client.start_http_server, an ASGI app, or `serve_metrics`).

    max_names bounds the distinct `name` labels of the corral_tool_* counters, which outlive the children:
    the first max_names names seen keep their own series, later ones are counted under "other".

    Raises ValueError (from the registry) when `registry` already holds corral's metrics, for example those
    of another supervisor, or when max_names is not an int >= 0. The collector is unregistered when the
    block ends, however it ends; on cancellation the event consumer is cancelled with the block.
    """
    collector = SupervisorCollector(
        sup, spawn_buckets=spawn_buckets, duration_buckets=duration_buckets, max_names=max_names
    )
    with sup.subscribe(max_buffer=EVENT_BUFFER) as events:
        collector._attach()  # no await since subscribe(): no event can slip between the two
        if registry is not None:
            registry.register(collector)
        try:
            async with background(partial(collector._consume, events)):
                yield collector
        finally:
            if registry is not None:
                registry.unregister(collector)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running metrics endpoint (from `serve_metrics`)."""

    addr: str
    port: int
    registry: CollectorRegistry
    collector: SupervisorCollector

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"


def _render(registry: CollectorRegistry, headers: Mapping[str, str]) -> Response:
    """The /metrics page in the format the scraper asks for (OpenMetrics or text 0.0.4), gzipped when
    accepted. Runs in a worker thread."""
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    body = encoder(registry)
    extra: tuple[tuple[str, str], ...] = (("Content-Type", content_type),)
    if gzip_accepted(headers.get("accept-encoding", "")):
        # Level 1: most of the size win (the text is very repetitive) for a fraction of level 9's CPU.
        body = gzip.compress(body, compresslevel=1)
        extra += (("Content-Encoding", "gzip"),)
    return Response(200, body, extra)


_INDEX = Response(
    200,
    b"<html><head><title>corral</title></head><body><a href='/metrics'>metrics</a></body></html>\n",
    (("Content-Type", "text/html; charset=utf-8"),),
)


@asynccontextmanager
async def serve_metrics(
    sup: Supervisor,
    port: int = 9464,
    addr: str = "127.0.0.1",
    *,
    registry: CollectorRegistry | None = None,
    max_names: int = MAX_NAMES,
) -> AsyncIterator[MetricsServer]:
    """Serve `sup`'s metrics at http://addr:port/metrics for the duration of the block, from the
    supervisor's own event loop (anyio).

    registry: where to register the collector; None (the default) makes a fresh CollectorRegistry, so the
              endpoint shows exactly corral's metrics plus the supervisor's process metrics (process_*,
              added unless the registry has them already, as prometheus_client's global REGISTRY does).
    max_names: the bound on distinct names of the corral_tool_* counters (see `attach_metrics`).
    port:     0 picks a free port (see MetricsServer.port). addr defaults to loopback: the page tells
              anyone who can reach it what runs on this host; bind elsewhere deliberately.

    Each scrape collects and formats in a worker thread of the server's own (one-thread) limiter: scrapes
    never block the event loop nor take the worker threads the supervisor needs. Raises OSError when the
    address cannot be bound, ValueError when `registry` already holds corral's metrics. The endpoint is
    closed and the collector unregistered when the block ends, however it ends.
    """
    reg = registry if registry is not None else CollectorRegistry()
    try:
        listener = await anyio.create_tcp_listener(local_host=addr, local_port=port)
    except OSError as err:
        raise OSError(err.errno, f"cannot serve metrics on {addr}:{port}: {err.strerror or err}") from err
    process: ProcessCollector | None = None
    try:
        try:
            process = ProcessCollector(registry=reg)
        except ValueError:  # the registry has process metrics already
            process = None
        async with attach_metrics(sup, registry=reg, max_names=max_names) as collector:
            http = HttpServer({"/metrics": partial(_render, reg), "/": lambda _headers: _INDEX})
            server = MetricsServer(addr, int(listener.extra(SocketAttribute.local_port)), reg, collector)
            async with background(partial(http.serve, listener)):
                yield server
    finally:
        if process is not None:
            reg.unregister(process)
        with anyio.CancelScope(shield=True):
            await listener.aclose()
