"""Denial reports (docs/denials.md), each provoked from inside a real sandbox on this kernel.

Every case runs a probe in the sandbox that tries one refused action and prints what the kernel answered,
so each test checks two things: the action was refused (the security claim: the probe sees the errno,
and where it matters the effect is checked from outside), and exactly one matching report (layer,
operation, target) reached each place it must: `Result.denials`, the `denied` event of
`sup.subscribe()`, `Result.to_json()` (what `corral run --json` writes) and the
`corral_denials_total{layer,operation}` counter.

Reporting fails closed: with nobody holding the filter's listener, a notified call is refused all the
same (ENOSYS), never run (test_no_listener_still_refuses, whose control shows the same call succeeds
unfiltered).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry

from exporters import attach_metrics
from policies import Policy, SyscallPolicy, profiles
from supervisor import Denial, Event, Result, Supervisor
from supervisor._denials import MAX_DENIALS

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.anyio,
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe's syscall numbers are x86_64's"),
]

PY = "/usr/bin/python3"

#: The probe: for each "name:arg,arg,..." on the command line, syscall(nr, args...) through ctypes,
#: printing "name ret errno". A path argument is written as "@path". Runs under python -I -S (no site).
PROBE = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {"unshare": 272, "ioctl": 16, "socket": 41, "chmod": 90, "mount": 165, "bpf": 321,
          "personality": 135, "keyctl": 250, "openat": 257, "clone": 56, "setns": 308, "getpriority": 140}
    for spec in sys.argv[1:]:
        times = 1
        if "*" in spec:
            spec, n = spec.split("*")
            times = int(n)
        name, _, rest = spec.partition(":")
        args = []
        for a in filter(None, rest.split(",")):
            args.append(ctypes.c_char_p(a[1:].encode()) if a.startswith("@") else ctypes.c_long(int(a, 0)))
        for _ in range(times):
            ret = libc.syscall(NR[name], *args)
            err = ctypes.get_errno()
        print(name, ret, err, flush=True)
    """
)


class Metric(dict[tuple[str, str], float]):
    """corral_denials_total's samples, read while the exporter was attached: (layer, operation) -> value."""

    @classmethod
    def read(cls, reg: Metric) -> Metric:
        out = cls()
        for family in reg.collect():
            for sample in family.samples:
                if sample.name == "corral_denials_total":
                    out[(sample.labels["layer"], sample.labels["operation"])] = sample.value
        return out


def caps_notify(sup: Supervisor) -> None:
    if not sup.caps.seccomp_notify.available:
        pytest.skip(f"seccomp user notification: {sup.caps.seccomp_notify.reason}")


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with Supervisor(max_concurrency=4, prefork=0) as s:
        yield s


async def observe(sup: Supervisor, cmd: list[str], policy: Policy) -> tuple[Result, list[Event], Metric]:
    """Run `cmd` in a sandbox: its Result, the denied events of the run, and corral_denials_total after it
    (read while the exporter was attached)."""
    reg = CollectorRegistry()
    events: list[Event] = []
    async with attach_metrics(sup, registry=reg):
        with sup.subscribe() as stream:
            result = await sup.run(cmd, policy=policy)
            while True:
                try:
                    ev = stream.receive_nowait()
                except anyio.WouldBlock:
                    break
                if ev.kind == "denied":
                    events.append(ev)
        metric = Metric.read(reg)
    return result, events, metric


async def provoke(
    sup: Supervisor, policy: Policy, args: list[str]
) -> tuple[Result, list[Event], Metric, dict[str, tuple[int, int]]]:
    """Run the probe with `args` in a sandbox; the Result, the denied events of its child, the metrics
    registry after it, and what the probe saw: name -> (return value, errno)."""
    caps_notify(sup)
    result, events, metric = await observe(sup, [PY, "-I", "-S", "-c", PROBE, *args], policy)
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    seen = {}
    for line in result.stdout.decode().splitlines():
        name, ret, err = line.split()
        seen[name] = (int(ret), int(err))
    return result, events, metric, seen


def one_match(result: Result, events: list[Event], reg: Metric, want: tuple[str, str, str]) -> Denial:
    """Exactly one report of `want` (layer, operation, target) in the Result, the events, the JSON and the
    metric (which counts at least its count); returns it."""
    layer, operation, _target = want
    found = [d for d in result.denials if (d.layer, d.operation, d.target) == want]
    assert len(found) == 1, result.denials
    evs = [
        e.denial for e in events if e.denial and (e.denial.layer, e.denial.operation, e.denial.target) == want
    ]
    assert len(evs) == 1, [e.denial for e in events]
    as_json = result.to_json()["denials"]
    assert isinstance(as_json, list)
    rows = [d for d in as_json if (d["layer"], d["operation"], d["target"]) == want]
    assert len(rows) == 1
    assert rows[0]["count"] == found[0].count
    assert isinstance(rows[0]["hint"], str)
    assert rows[0]["hint"]
    assert reg.get((layer, operation), 0) >= found[0].count
    return found[0]


@pytest.mark.parametrize(
    ("probe", "target", "err"),
    [
        ("unshare:0x10000000", "unshare(CLONE_NEWUSER)", errno.EPERM),
        ("unshare:0x40000000", "unshare(CLONE_NEWNET)", errno.EPERM),
        ("ioctl:0,0x5412,@x", "ioctl(TIOCSTI)", errno.EPERM),
        ("socket:17,3,0", "socket(AF_PACKET)", errno.EAFNOSUPPORT),
        ("socket:16,3,9", "socket(AF_NETLINK, NETLINK_AUDIT)", errno.EPROTONOSUPPORT),
        ("mount:@none,@/mnt,@tmpfs,0,0", "mount", errno.EPERM),
        ("bpf:0,0,0", "bpf", errno.EPERM),
        ("keyctl:0,0,0", "keyctl", errno.EPERM),
        ("personality:0x0400000", "personality(0x400000)", errno.EPERM),
    ],
)
async def test_a_refused_syscall_is_reported_once_with_its_argument(
    sup: Supervisor, workspace: Path, probe: str, target: str, err: int
) -> None:
    result, events, reg, seen = await provoke(sup, profiles.workspace_write(workspace), [probe])
    name = probe.split(":")[0]
    assert seen[name] == (-1, err)  # refused, with the errno the filter would give without reports
    d = one_match(result, events, reg, ("seccomp", "syscall", target))
    assert d.count == 1
    assert d.pid is not None
    assert d.pid > 1


async def test_a_set_id_chmod_is_reported_with_its_mode(sup: Supervisor, workspace: Path) -> None:
    (workspace / "f").write_text("x")
    policy = profiles.workspace_write(workspace)
    result, events, reg, seen = await provoke(sup, policy, [f"chmod:@{workspace}/f,0o4755"])
    assert seen["chmod"] == (-1, errno.EPERM)
    assert (workspace / "f").stat().st_mode & 0o7777 == 0o644  # checked from outside: no set-id bit
    d = one_match(result, events, reg, ("seccomp", "syscall", "chmod(mode=0o4755)"))
    assert "nothing allows it" in d.hint


async def test_repeats_fold_into_one_report_with_a_count(sup: Supervisor, workspace: Path) -> None:
    result, events, reg, seen = await provoke(
        sup, profiles.workspace_write(workspace), ["unshare:0x10000000*500", "unshare:0x40000000*3"]
    )
    assert seen["unshare"] == (-1, errno.EPERM)
    d = one_match(result, events, reg, ("seccomp", "syscall", "unshare(CLONE_NEWUSER)"))
    assert d.count == 500
    assert one_match(result, events, reg, ("seccomp", "syscall", "unshare(CLONE_NEWNET)")).count == 3
    assert reg[("seccomp", "syscall")] == 503
    assert result.denials_dropped == 0


async def test_a_flood_of_distinct_refusals_is_bounded(sup: Supervisor, workspace: Path) -> None:
    """More distinct refusals than a Result keeps (socket(AF_PACKET) with as many protocols, each its own
    fold key, twice each): the first MAX_DENIALS, the rest counted as dropped, no more events than
    reports, and the metric counts every refused call."""
    probes = [f"socket:17,3,{p}*2" for p in range(MAX_DENIALS + 40)]
    result, events, reg, seen = await provoke(sup, profiles.workspace_write(workspace), probes)
    assert seen["socket"] == (-1, errno.EAFNOSUPPORT)
    assert len(result.denials) == MAX_DENIALS
    assert all(d.count == 2 and d.target == "socket(AF_PACKET)" for d in result.denials)
    assert len(events) == MAX_DENIALS
    assert result.denials_dropped == 80
    total = reg[("seccomp", "syscall")]
    assert total == 2 * (MAX_DENIALS + 40)


async def test_a_policy_deny_is_reported_with_its_hint(sup: Supervisor, workspace: Path) -> None:
    base = profiles.workspace_write(workspace)
    policy = dataclasses.replace(base, syscalls=SyscallPolicy(deny=("setns", "getpriority")))
    result, events, reg, _ = await provoke(sup, policy, ["setns:0,0x40000000"])
    d = one_match(result, events, reg, ("seccomp", "syscall", "setns(CLONE_NEWNET)"))
    assert d.hint == "denied by this policy (syscalls.deny)"


async def test_nothing_refused_nothing_reported(sup: Supervisor, workspace: Path) -> None:
    result, events, _, _ = await provoke(sup, profiles.workspace_write(workspace), ["personality:0xffffffff"])
    assert result.denials == ()
    assert events == []
    assert result.denials_dropped == 0
    layers = {layer for layer, _ in result.denials_unobservable}
    assert "seccomp" not in layers  # seccomp is observed here
    # Landlock and the mount view are watched by the syscall-exit observer (root, BTF, built: see
    # test_denials_observed.py); without it they say so.
    if sup._observing.observer is None:
        assert {"landlock", "mounts"} <= layers
    else:
        assert not {"landlock", "mounts"} & layers


async def test_a_pids_max_refusal_is_a_cgroup_denial(sup: Supervisor, workspace: Path) -> None:
    policy = profiles.workspace_write(workspace, pids=8)
    cmd = "for i in $(seq 30); do sleep 1 & done 2>/dev/null; kill $(jobs -p) 2>/dev/null; true"
    result, events, metric = await observe(sup, ["/bin/sh", "-c", cmd], policy)
    if "cgroup" not in result.enforced:
        pytest.skip(f"no cgroup for this child: {sup.cgroup_status}")
    d = one_match(result, events, metric, ("cgroup", "fork", "pids.max=8"))
    assert d.count == result.limit_hits["pids"] > 0


async def test_sigxfsz_is_an_rlimit_denial(sup: Supervisor, workspace: Path) -> None:
    policy = profiles.workspace_write(workspace, fsize="64K")
    result, events, metric = await observe(
        sup, ["/bin/dd", "if=/dev/zero", "of=big", "bs=1k", "count=128"], policy
    )
    assert result.signal == 25  # SIGXFSZ
    assert (workspace / "big").stat().st_size == 64 * 1024  # checked from outside: held at the limit
    one_match(result, events, metric, ("rlimit", "write", "RLIMIT_FSIZE=65536"))


def test_no_listener_still_refuses() -> None:
    """The notifying filter with nobody answering (the listener closed at once, as when the init is gone):
    the notified call is refused with ENOSYS and has no effect. Control: the same process without the
    filter creates the user namespace (the test runs as root or with user namespaces allowed)."""
    code = textwrap.dedent(
        """
        import os, sys
        from policies import profiles
        from supervisor.sandbox import probe, seccomp
        from supervisor.sandbox._ops import Plan
        caps = probe.KernelCaps.from_dict(probe.probe_in_fork_server())
        if not caps.seccomp_notify.available:
            print("skip", caps.seccomp_notify.reason); sys.exit(0)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        before = os.stat("/proc/self/ns/user").st_ino
        if sys.argv[1] != "control":
            prepared = seccomp.prepare(profiles.workspace_write("/tmp"), caps)
            plan = Plan()
            seccomp.emit(prepared, plan)  # the notifying filter (apply() would take the errno one)
            plan.run()
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            print("refused", ctypes.get_errno())
        print("same" if os.stat("/proc/self/ns/user").st_ino == before else "new")
        """
    )
    control = subprocess.run(
        [sys.executable, "-c", code, "control"], capture_output=True, text=True, check=True
    )
    if control.stdout.startswith("skip"):
        pytest.skip(control.stdout)
    assert control.stdout.split() == ["new"], control.stdout  # the control: unfiltered, the call succeeds
    out = subprocess.run([sys.executable, "-c", code, "filtered"], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["refused", str(errno.ENOSYS), "same"], out.stdout + out.stderr


#: Connections off loopback (TEST-NET and documentation addresses: the sandbox's namespace has no route to
#: them, nothing leaves the machine) and on loopback (not refused, so not reported), each printing the
#: errno the kernel answered.
NET_PROBE = textwrap.dedent(
    """
    import socket
    def tried(label, family, kind, how):
        s = socket.socket(family, kind)
        try:
            how(s)
            print(label, 0)
        except OSError as e:
            print(label, e.errno)
        finally:
            s.close()
    tried("v4", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect(("192.0.2.1", 80)))
    tried("v4", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect(("192.0.2.1", 80)))
    tried("udp", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendto(b"x", ("198.51.100.7", 53)))
    tried("v6", socket.AF_INET6, socket.SOCK_STREAM, lambda s: s.connect(("2001:db8::1", 443)))
    tried("lo", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect(("127.0.0.1", 9)))
    tried("any", socket.AF_INET, socket.SOCK_STREAM, lambda s: s.connect(("0.0.0.0", 9)))
    tried("lo6", socket.AF_INET6, socket.SOCK_STREAM, lambda s: s.connect(("::1", 9)))
    tried("lou", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendto(b"x", ("127.0.0.1", 9)))
    tried("msg", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendmsg([b"x"], [], 0, ("203.0.113.9", 123)))
    tried("msglo", socket.AF_INET, socket.SOCK_DGRAM, lambda s: s.sendmsg([b"x"], [], 0, ("127.0.0.1", 9)))
    def mmsg(s):
        # sendmmsg has no Python binding: two messages through libc, one to an off-loopback address.
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        names = [struct.pack("!HH4s8x", 0, 9, socket.inet_aton(a)) for a in ("127.0.0.1", "203.0.113.10")]
        names = [socket.AF_INET.to_bytes(2, "little") + n[2:] for n in names]
        bufs = [ctypes.create_string_buffer(n) for n in names]
        data = ctypes.create_string_buffer(b"x")
        iov = struct.pack("PQ", ctypes.addressof(data), 1)
        iovb = ctypes.create_string_buffer(iov)
        hdrs = b"".join(struct.pack("PI4xPQPQi4xI4x", ctypes.addressof(b), 16, ctypes.addressof(iovb), 1,
                                    0, 0, 0, 0) for b in bufs)
        vec = ctypes.create_string_buffer(hdrs)
        print("mmsgsent", libc.syscall(307, s.fileno(), vec, 2, 0))  # 1: the second was refused
    tried("mmsg", socket.AF_INET, socket.SOCK_DGRAM, mmsg)
    """
)


@pytest.mark.parametrize("mode", ["none", "proxy"])
async def test_connect_and_sendto_off_loopback_are_network_denials(
    sup: Supervisor, workspace: Path, mode: str
) -> None:
    caps_notify(sup)
    if not sup.caps.namespace("net").available:
        pytest.skip(f"no network namespace: {sup.caps.namespace('net').reason}")
    policy = profiles.workspace_write(workspace, network=mode)  # type: ignore[arg-type]
    result, events, metric = await observe(sup, [PY, "-I", "-S", "-c", NET_PROBE], policy)
    assert result.exit_code == 0, result.stderr.decode()
    seen = dict(line.split() for line in result.stdout.decode().splitlines())
    # Refused by the namespace (no route), with the errno the kernel gives without reports:
    assert seen["v4"] == seen["udp"] == seen["v6"] == str(errno.ENETUNREACH)
    assert seen["lo"] == seen["any"] == seen["lo6"] == str(errno.ECONNREFUSED)  # loopback works
    assert seen["lou"] == seen["msglo"] == "0"
    assert seen["msg"] == str(errno.ENETUNREACH)
    assert seen["mmsgsent"] == "1"
    assert one_match(result, events, metric, ("network", "connect", "192.0.2.1:80")).count == 2
    one_match(result, events, metric, ("network", "send", "198.51.100.7:53"))
    one_match(result, events, metric, ("network", "connect", "[2001:db8::1]:443"))
    one_match(result, events, metric, ("network", "send", "203.0.113.9:123"))  # sendmsg's msghdr
    one_match(result, events, metric, ("network", "send", "203.0.113.10:9"))  # sendmmsg's second message
    # Loopback is never reported: exactly the refused destinations.
    assert sorted(d.target for d in result.denials) == [
        "192.0.2.1:80",
        "198.51.100.7:53",
        "203.0.113.10:9",
        "203.0.113.9:123",
        "[2001:db8::1]:443",
    ]
    assert "network" not in {layer for layer, _ in result.denials_unobservable}


OUTER_LISTENER = textwrap.dedent(
    """
    import json, sys
    import pyseccomp as sc
    # An outer filter with a listener of its own (as an outer sandbox that uses user notification would
    # install), on a call nothing here makes: the kernel then refuses the sandbox init a second listener.
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.NOTIFY, "acct")
    f.load()
    import anyio
    from policies import profiles
    from supervisor import Supervisor
    async def main():
        async with Supervisor(prefork=0) as sup:
            policy = profiles.workspace_write(sys.argv[1])
            r = await sup.run(["/usr/bin/unshare", "-U", "/bin/true"], policy=policy)
            print(json.dumps({"exit": r.exit_code, "stderr": r.stderr.decode(), "denials": len(r.denials),
                              "unobservable": dict(r.denials_unobservable), "enforced": list(r.enforced)}))
    anyio.run(main)
    """
)


def test_a_refused_listener_keeps_the_filter_and_says_so(workspace: Path) -> None:
    """Reporting broken at the source (the kernel refuses the init a listener: EBUSY under an outer one):
    the errno filter is installed instead, the refusal still holds, and the Result says seccomp's refusals
    could not be seen (never an empty list that looks like "nothing refused")."""
    out = subprocess.run(
        [sys.executable, "-c", OUTER_LISTENER, str(workspace)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert "seccomp" in rep["enforced"]
    assert rep["exit"] != 0  # still refused: unshare(CLONE_NEWUSER) fails
    assert "Operation not permitted" in rep["stderr"], rep
    assert rep["denials"] == 0
    assert "listener" in rep["unobservable"]["seccomp"], rep


async def test_a_seccomp_profile_refusal_is_enforced_and_reported(sup: Supervisor, workspace: Path) -> None:
    """A --seccomp-profile is compiled into the same filter as corral's rules (one listener): its refusal
    holds and is reported, naming the profile's rule, next to corral's own (tests/kernel/
    test_denials_profile.py covers every action and operator)."""
    from policies._seccomp import SeccompProfile, SeccompRule

    profile = SeccompProfile(rules=(SeccompRule(("getpriority",), "errno:13"),))
    base = profiles.workspace_write(workspace)
    policy = dataclasses.replace(base, syscalls=dataclasses.replace(base.syscalls, profile=profile))
    result, events, reg, seen = await provoke(sup, policy, ["getpriority:0,0", "unshare:0x10000000"])
    assert seen["getpriority"] == (-1, errno.EACCES)  # the profile's refusal holds
    assert seen["unshare"] == (-1, errno.EPERM)
    one_match(result, events, reg, ("seccomp", "syscall", "unshare(CLONE_NEWUSER)"))
    d = one_match(result, events, reg, ("seccomp", "syscall", "getpriority"))
    assert "syscalls.profile.rules[0]" in d.hint
    assert [d.target for d in result.denials] == ["getpriority", "unshare(CLONE_NEWUSER)"]
    assert "seccomp" not in dict(result.denials_unobservable)
