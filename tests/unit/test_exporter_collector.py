"""The corral collector on a fake supervisor: what each metric says, its labels, and how the counters stay
correct when events were missed."""

from __future__ import annotations

import itertools
import signal
import threading

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from exporters import METRICS, SupervisorCollector, attach_metrics
from exporters.prometheus import OUTCOMES, STATES, UNKNOWN_PROFILE, VIOLATION_KINDS, outcome
from policies import profiles
from supervisor import Result, Violation
from supervisor._proxy import ProxyConfig
from tests.unit.test_exporter_fakes import (
    FakeCgroups,
    FakeChild,
    FakeSupervisor,
    result,
    samples,
    settle,
    stats,
    value,
)

WW = "workspace-write"


async def test_every_series_starts_at_zero_for_the_builtin_profiles_and_kinds() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        for profile in profiles.NAMES:
            for state in STATES:
                assert value(reg, "corral_children", state=state, profile=profile) == 0
            assert value(reg, "corral_children_started_total", profile=profile) == 0
            for out in OUTCOMES:
                assert value(reg, "corral_children_exited_total", profile=profile, outcome=out) == 0
            assert value(reg, "corral_spawn_latency_seconds_count", profile=profile) == 0
            assert value(reg, "corral_child_duration_seconds_bucket", profile=profile, le="+Inf") == 0
        for kind in VIOLATION_KINDS:
            assert value(reg, "corral_violations_total", kind=kind) == 0
        assert not per_child_samples(reg)
        assert value(reg, "corral_max_concurrency") == 64
        # "unknown" appears only once something is counted under it.
        assert not [s for s in samples(reg) if s.labels.get("profile") == UNKNOWN_PROFILE]


async def test_started_and_exited_count_by_profile_and_outcome() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        a = sup.start(FakeChild(WW, spawn_latency_s=0.003))
        b = sup.start(FakeChild("read-only", spawn_latency_s=0.02))
        c = sup.start(FakeChild("custom", spawn_latency_s=0.3))
        await settle()
        assert value(reg, "corral_children_started_total", profile=WW) == 1
        assert value(reg, "corral_children_started_total", profile="read-only") == 1
        assert value(reg, "corral_children_started_total", profile="custom") == 1
        assert value(reg, "corral_children", state="running", profile="custom") == 1
        sup.exit(a, result(0, duration=0.07))
        sup.exit(b, result(137, 9, "memory", duration=4.0))
        sup.exit(c, result(129, 1, duration=0.2))  # killed by SIGHUP
        await settle()
        assert value(reg, "corral_children_exited_total", profile=WW, outcome="ok") == 1
        assert value(reg, "corral_children_exited_total", profile="read-only", outcome="violation") == 1
        assert value(reg, "corral_children_exited_total", profile="custom", outcome="signal") == 1
        assert value(reg, "corral_children_exited_total", profile=WW, outcome="error") == 0
        assert value(reg, "corral_violations_total", kind="memory") == 1
        assert value(reg, "corral_children", state="running", profile="custom") == 0
        assert not [s for s in samples(reg) if s.labels.get("profile") == UNKNOWN_PROFILE]


async def test_histograms_observe_spawn_latency_and_duration() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        for latency in (0.0009, 0.001, 0.004, 0.02, 7.0):
            child = sup.start(FakeChild(WW, spawn_latency_s=latency))
            sup.exit(child, result(duration=latency * 10))
        await settle()
        le = {
            s.labels["le"]: s.value
            for s in samples(reg)
            if s.name == "corral_spawn_latency_seconds_bucket" and s.labels["profile"] == WW
        }
        # `le` is inclusive: 0.001 falls in the 0.001 bucket.
        assert (le["0.001"], le["0.005"], le["0.025"], le["5.0"], le["+Inf"]) == (2, 3, 4, 4, 5)
        assert value(reg, "corral_spawn_latency_seconds_count", profile=WW) == 5
        assert value(reg, "corral_spawn_latency_seconds_sum", profile=WW) == pytest.approx(7.0259)
        assert value(reg, "corral_child_duration_seconds_count", profile=WW) == 5
        assert value(reg, "corral_child_duration_seconds_sum", profile=WW) == pytest.approx(70.259)
        assert value(reg, "corral_child_duration_seconds_bucket", profile=WW, le="0.01") == 2


async def test_custom_buckets() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg, spawn_buckets=(0.5, 0.1)):  # type: ignore[arg-type]
        sup.start(FakeChild(WW, spawn_latency_s=0.2))
        await settle()
        les = [s.labels["le"] for s in samples(reg) if s.name == "corral_spawn_latency_seconds_bucket"]
        assert les[:3] == ["0.1", "0.5", "+Inf"]
        assert value(reg, "corral_spawn_latency_seconds_bucket", profile=WW, le="0.5") == 1


async def test_per_child_gauges_sum_by_profile_and_name_and_vanish_with_the_child() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        g1 = sup.start(FakeChild(WW, "grep", last_stats=stats(cpu=1.0, mem=100, peak=150, pids=1)))
        sup.start(FakeChild(WW, "grep", last_stats=stats(cpu=2.5, mem=300, peak=400, pids=2)))
        sup.start(FakeChild(WW, None, last_stats=stats(cpu=0.5, mem=None, peak=None, pids=1)))
        sup.start(FakeChild(WW, "pytest", last_stats=None))  # not sampled yet: no series
        assert value(reg, "corral_child_cpu_seconds", profile=WW, name="grep") == 3.5
        assert value(reg, "corral_child_memory_bytes", profile=WW, name="grep") == 400
        assert value(reg, "corral_child_memory_peak_bytes", profile=WW, name="grep") == 550
        assert value(reg, "corral_child_pids", profile=WW, name="grep") == 3
        assert value(reg, "corral_child_cpu_seconds", profile=WW, name="") == 0.5
        assert value(reg, "corral_child_memory_bytes", profile=WW, name="") is None  # unmeasured: omitted
        assert value(reg, "corral_child_cpu_seconds", profile=WW, name="pytest") is None
        assert value(reg, "corral_children", state="running", profile=WW) == 4

        sup.exit(g1, result())
        assert value(reg, "corral_child_cpu_seconds", profile=WW, name="grep") == 2.5
        for child in list(sup.children):
            sup.exit(child, result())
        assert not per_child_samples(reg)


async def test_states_starting_running_exiting() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        sup._children.add(FakeChild(WW, spawn_latency_s=None))  # spawned, command not running yet
        sup.start(FakeChild(WW, last_stats=stats()))
        reaped = FakeChild(WW, running=False, last_stats=stats(cpu=9.0))  # reaped, cleanup in progress
        sup._children.add(reaped)
        assert value(reg, "corral_children", state="starting", profile=WW) == 1
        assert value(reg, "corral_children", state="running", profile=WW) == 1
        assert value(reg, "corral_children", state="exiting", profile=WW) == 1
        assert value(reg, "corral_child_cpu_seconds", profile=WW, name="") == 1.5  # the reaped one is gone


async def test_open_fds_keep_the_last_sampled_count_while_the_child_runs() -> None:
    # The supervisor counts fds only every few sampling rounds; in between last_stats.open_fds is None.
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        child = sup.start(FakeChild(WW, "srv", last_stats=stats(fds=None)))
        assert value(reg, "corral_child_open_fds", profile=WW, name="srv") is None
        child.last_stats = stats(fds=12)
        assert value(reg, "corral_child_open_fds", profile=WW, name="srv") == 12
        child.last_stats = stats(fds=None)
        assert value(reg, "corral_child_open_fds", profile=WW, name="srv") == 12
        sup.exit(child, result())
        assert value(reg, "corral_child_open_fds", profile=WW, name="srv") is None
        collector = next(iter(reg._collector_to_names))
        assert isinstance(collector, SupervisorCollector)
        assert collector._state.fds == {}  # nothing kept for a child that is gone


async def test_violations_are_read_from_totals_at_scrape_time() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        sup.totals["violation:pids"] += 2  # a violation the child survived (pids.max): no exit yet
        sup.totals["violation:gpu_time"] += 1  # a kind this exporter has never heard of
        assert value(reg, "corral_violations_total", kind="pids") == 2
        assert value(reg, "corral_violations_total", kind="gpu_time") == 1
        assert value(reg, "corral_violations_total", kind="memory") == 0


async def test_children_before_attach_are_counted_as_unknown_or_by_their_profile() -> None:
    sup = FakeSupervisor()
    done = sup.start(FakeChild(WW))
    sup.exit(done, result(1))
    still = sup.start(FakeChild("read-only", "tool"))
    starting = FakeChild(WW, spawn_latency_s=None)  # spawned, its started event is still to come
    sup._children.add(starting)
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        assert value(reg, "corral_children_started_total", profile=UNKNOWN_PROFILE) == 1
        assert value(reg, "corral_children_started_total", profile="read-only") == 1  # running at attach
        assert value(reg, "corral_children_started_total", profile=WW) == 0
        assert value(reg, "corral_children_exited_total", profile=UNKNOWN_PROFILE, outcome="error") == 1
        assert value(reg, "corral_children_exited_total", profile=UNKNOWN_PROFILE, outcome="ok") is None
        sup.exit(still, result(0))
        starting.spawn_latency_s = 0.01
        sup._children.discard(starting)
        sup.start(starting)
        await settle()
        assert value(reg, "corral_children_exited_total", profile="read-only", outcome="ok") == 1
        assert value(reg, "corral_children_started_total", profile=WW) == 1
        assert value(reg, "corral_children_started_total", profile=UNKNOWN_PROFILE) == 1
        _assert_sums_match_totals(reg, sup)


async def test_dropped_events_are_counted_as_unknown_and_counters_never_decrease() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    seen: Seen = {}
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        for i in range(60):
            lost = i % 3 == 0  # as if the subscriber's buffer had been full
            child = sup.start(FakeChild(WW), emit=not lost)
            if i % 2:
                await settle()
                _check_monotonic(reg, seen)
            sup.exit(child, result(i % 2), emit=not lost)
            # Whatever the interleaving, a scrape never sees a counter go down.
            _check_monotonic(reg, seen)
            if i % 5 == 0:
                await settle()
        sup.start(FakeChild(WW))  # an event after the losses: the reconciliation runs after each batch
        await settle()
        assert value(reg, "corral_children_started_total", profile=UNKNOWN_PROFILE) == 20
        assert value(reg, "corral_children_started_total", profile=WW) == 41
        _assert_sums_match_totals(reg, sup)


Seen = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def per_child_samples(reg: CollectorRegistry) -> list[Sample]:
    return [s for s in samples(reg) if s.name.startswith("corral_child_") and "duration" not in s.name]


def _check_monotonic(reg: CollectorRegistry, seen: Seen) -> None:
    for s in samples(reg):
        if s.name.endswith("_total") or s.name.endswith(("_count", "_bucket", "_sum")):
            key = (s.name, tuple(sorted(s.labels.items())))
            assert s.value >= seen.get(key, 0), key
            seen[key] = s.value


def _assert_sums_match_totals(reg: CollectorRegistry, sup: FakeSupervisor) -> None:
    started = sum(s.value for s in samples(reg) if s.name == "corral_children_started_total")
    assert started == sup.totals["started"]
    for out in OUTCOMES:
        n = sum(
            s.value
            for s in samples(reg)
            if s.name == "corral_children_exited_total" and s.labels["outcome"] == out
        )
        assert n == sup.totals[f"exited:{out}"], out


def test_outcome_is_the_supervisors_rule() -> None:
    violations = [None, Violation("memory", 1, 2), Violation("pids", 1, 2)]
    signals = (None, signal.SIGKILL, signal.SIGTERM)
    for code, sig, v, killed in itertools.product((0, 1, 2, 137, 143), signals, violations, (False, True)):
        res = Result(code, sig, v, 1.0, 0.0, 0, killed=killed)
        assert outcome(res) == res.outcome, (code, sig, v, killed)
        expected = (
            "violation"
            if v is not None and killed
            else "signal"
            if sig is not None
            else "ok"
            if code == 0
            else "error"
        )
        assert res.outcome == expected, (code, sig, v, killed)


async def test_isolation_layers_from_the_kernel_probe_and_cgroups() -> None:
    sup = FakeSupervisor(cgroups=FakeCgroups())
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        layers = {
            s.labels["layer"]: s.labels["available"]
            for s in samples(reg)
            if s.name == "corral_isolation_layer_info"
        }
        assert layers == {
            "landlock": "true",
            "seccomp": "true",
            "user_ns": "true",
            "pid_ns": "true",
            "net_ns": "false",
            "cgroup": "true",
            "cgroup_memory": "true",
            "cgroup_cpu": "false",
            "cgroup_pids": "true",
        }
        assert {s.value for s in samples(reg) if s.name == "corral_isolation_layer_info"} == {1}
        assert value(reg, "corral_landlock_abi") == 5
    closed = FakeSupervisor(caps=None)
    reg = CollectorRegistry()
    async with attach_metrics(closed, registry=reg):  # type: ignore[arg-type]
        assert not [s for s in samples(reg) if s.name == "corral_isolation_layer_info"]
        assert value(reg, "corral_landlock_abi") is None


async def test_exported_families_and_labels_are_exactly_those_of_METRICS() -> None:
    sup = FakeSupervisor(cgroups=FakeCgroups())
    sup.proxy = ProxyConfig(count_domains=("example.org",))  # the opt-in per-domain series
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        # Something in every metric.
        sup.start(FakeChild(WW, "x", last_stats=stats(fds=3)))
        sup.exit(sup.start(FakeChild(WW)), result(137, 9, "memory"))
        await settle()
        families = list(reg.collect())
        spec = {m.name: m for m in METRICS}
        names = []
        for fam in families:
            suffix = {"counter": "_total", "info": "_info"}.get(fam.type, "")
            name = fam.name + suffix
            names.append(name)
            m = spec[name]
            assert fam.type == m.type, name
            assert fam.documentation == m.help
            assert fam.samples, f"{name} exported nothing"
            for s in fam.samples:
                extra = {"le"} if s.name.endswith("_bucket") else set()
                assert set(s.labels) == set(m.labels) | extra, s
        assert names == [m.name for m in METRICS]


async def test_registering_twice_in_one_registry_fails_and_exit_unregisters() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Duplicated"):
            async with attach_metrics(FakeSupervisor(), registry=reg):  # type: ignore[arg-type]
                pass
    assert not list(reg.collect())
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        assert value(reg, "corral_max_concurrency") == 64


async def test_registry_none_does_not_register() -> None:
    sup = FakeSupervisor()
    async with attach_metrics(sup, registry=None) as collector:  # type: ignore[arg-type]
        sup.start(FakeChild(WW))
        await settle()
        fams = {f.name: f for f in collector.collect()}
        assert fams["corral_children_started"].samples


async def test_the_bodys_exception_is_not_wrapped_in_a_group() -> None:
    sup = FakeSupervisor()
    with pytest.raises(KeyError):
        async with attach_metrics(sup, registry=None):  # type: ignore[arg-type]
            raise KeyError("x")
    assert not sup._subscribers


async def test_the_consumer_ends_with_the_supervisor_and_cancellation_is_clean() -> None:
    sup = FakeSupervisor()
    with anyio.move_on_after(0.05) as scope:
        async with attach_metrics(sup, registry=None):  # type: ignore[arg-type]
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not sup._subscribers


async def test_collect_from_threads_while_the_loop_mutates() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                list(reg.collect())
            except BaseException as err:  # pragma: no cover - the failure being tested for
                errors.append(err)
                return

    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        threads = [threading.Thread(target=scrape) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(2000):
                child = sup.start(FakeChild(f"p{i % 7}", f"n{i % 5}", last_stats=stats(fds=i % 3 or None)))
                sup.totals[f"violation:k{i % 11}"] += 1
                if i % 3:
                    sup.exit(child, result(i % 2))
                if i % 50 == 0:
                    await anyio.lowlevel.checkpoint()
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert not errors


async def test_per_tool_counters_outlive_the_children() -> None:
    """A millisecond tool call is never scraped while it runs: its spawn, exit, violation and CPU are
    still counted under its name after it is gone."""
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        for code, violation in ((0, None), (1, None), (137, "memory"), (137, "memory")):
            child = sup.start(FakeChild(WW, name="pytest"))
            sup.exit(child, result(code, 9 if violation else None, violation))
        grep = sup.start(FakeChild(WW, name="grep"))
        sup.exit(grep, result(0))
        await settle()
        assert not per_child_samples(reg)  # every child is gone...
        # ...and the per-tool counters remember them.
        assert value(reg, "corral_tool_spawns_total", profile=WW, name="pytest") == 4
        assert value(reg, "corral_tool_spawns_total", profile=WW, name="grep") == 1
        assert value(reg, "corral_tool_exits_total", profile=WW, name="pytest", outcome="ok") == 1
        assert value(reg, "corral_tool_exits_total", profile=WW, name="pytest", outcome="error") == 1
        assert value(reg, "corral_tool_exits_total", profile=WW, name="pytest", outcome="violation") == 2
        assert value(reg, "corral_tool_violations_total", profile=WW, name="pytest", kind="memory") == 2
        assert value(reg, "corral_tool_violations_total", profile=WW, name="grep", kind="memory") is None
        assert value(reg, "corral_tool_cpu_seconds_total", profile=WW, name="pytest") == pytest.approx(0.4)


async def test_per_tool_names_are_bounded_and_overflow_into_other() -> None:
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg, max_names=3):  # type: ignore[arg-type]
        for i in range(10):
            sup.exit(sup.start(FakeChild(WW, name=f"tool-{i}")), result(0))
        sup.exit(sup.start(FakeChild(WW, name="tool-1")), result(0))  # a known name keeps its series
        await settle()
        names = {s.labels["name"] for s in samples(reg) if s.name == "corral_tool_spawns_total"}
        assert names == {"tool-0", "tool-1", "tool-2", "other"}
        assert value(reg, "corral_tool_spawns_total", profile=WW, name="other") == 7
        assert value(reg, "corral_tool_spawns_total", profile=WW, name="tool-1") == 2


def test_max_names_is_validated() -> None:
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_names"):
            SupervisorCollector(FakeSupervisor(), max_names=bad)  # type: ignore[arg-type]


async def test_proxy_counters_and_the_opt_in_domain_label() -> None:
    """The proxy's live totals as counters; the domain label only for the operator's names, the rest
    "other", and no domain series at all without that list."""
    sup = FakeSupervisor()
    reg = CollectorRegistry()
    async with attach_metrics(sup, registry=reg):  # type: ignore[arg-type]
        assert not [s for s in samples(reg) if s.name == "corral_proxy_domain_connections_total"]
        sup.proxy.totals.bytes_up, sup.proxy.totals.bytes_down = 10, 2000
        sup.proxy.totals.allowed, sup.proxy.totals.denied = 3, 4
        assert value(reg, "corral_proxy_bytes_total", direction="up") == 10
        assert value(reg, "corral_proxy_bytes_total", direction="down") == 2000
        assert value(reg, "corral_proxy_connections_total", decision="allowed") == 3
        assert value(reg, "corral_proxy_connections_total", decision="denied") == 4
        sup.proxy = ProxyConfig(count_domains=("Example.ORG", "b.test"))
        sup.proxy.by_domain[("example.org", "allowed")] = 5
        sup.proxy.by_domain[("other", "denied")] = 7
        domains = {(s.labels["domain"], s.labels["decision"]): s.value for s in samples(reg)
                   if s.name == "corral_proxy_domain_connections_total"}  # fmt: skip
        assert domains == {
            ("example.org", "allowed"): 5, ("example.org", "denied"): 0, ("b.test", "allowed"): 0,
            ("b.test", "denied"): 0, ("other", "allowed"): 0, ("other", "denied"): 7,
        }  # fmt: skip
    with pytest.raises(ValueError, match="at most 64"):
        ProxyConfig(count_domains=tuple(f"d{i}.test" for i in range(65)))
    with pytest.raises(ValueError, match="not a host name"):
        ProxyConfig(count_domains=("https://example.org",))
