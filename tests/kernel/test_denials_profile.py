"""A seccomp profile's own verdicts in the denial reports (docs/denials.md, docs/seccomp.md "Profiles").

The built-in rules and the policy's profile are ONE filter with one listener, so everything the profile
refuses (its errno rules, its default in allowlist mode, its kill_process) and what it logs (log, trace)
is reported like a built-in refusal. Each case runs a probe in a real sandbox that makes the call by
number and prints what the kernel answered (the enforcement: the errno, the kill, the call that ran), and
checks the report from outside: `Result.denials`, the `denied` event, `Result.to_json()` and
`corral_denials_total` (`one_match`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from policies import Policy, profiles
from policies._seccomp import ArgCondition, SeccompProfile, SeccompRule
from supervisor import Result, Supervisor
from tests.kernel.test_denials import Metric, caps_notify, observe, one_match

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.anyio,
    pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe's syscall numbers are x86_64's"),
]

PY = "/usr/bin/python3"
ALLOWLIST = Path(__file__).resolve().parents[2] / "examples" / "seccomp" / "allowlist.json"
NR = {"getpriority": 140, "getpgid": 121, "getsid": 124, "getppid": 110, "sysfs": 139, "unshare": 272}

#: For each "nr:arg,arg,..." on the command line: syscall(nr, args...), printing "nr ret errno".
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    for spec in sys.argv[1:]:
        nr, _, rest = spec.partition(":")
        args = [ctypes.c_long(int(a, 0)) for a in filter(None, rest.split(","))]
        ret = libc.syscall(int(nr), *args)
        print(nr, ret, ctypes.get_errno(), flush=True)
    """
)


@pytest.fixture
async def sup() -> AsyncIterator[Supervisor]:
    async with Supervisor(max_concurrency=4, prefork=0) as s:
        yield s


def with_profile(workspace: Path, profile: SeccompProfile) -> Policy:
    base = profiles.workspace_write(workspace)
    return dataclasses.replace(base, syscalls=dataclasses.replace(base.syscalls, profile=profile))


async def run_probe(
    sup: Supervisor, workspace: Path, profile: SeccompProfile, calls: list[str]
) -> tuple[Result, list[object], Metric, list[tuple[int, int]]]:
    caps_notify(sup)
    result, events, metric = await observe(
        sup, [PY, "-I", "-S", "-c", PROBE, *calls], with_profile(workspace, profile)
    )
    assert result.exit_code == 0, result.stderr.decode(errors="replace")
    seen = [(int(r), int(e)) for _, r, e in (line.split() for line in result.stdout.decode().splitlines())]
    return result, events, metric, seen  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("action", "err"),
    [("errno:EACCES", errno.EACCES), ("errno:7", errno.E2BIG), ("errno", errno.EPERM)],
    ids=["by-name", "by-number", "bare-eperm"],
)
async def test_a_profile_errno_rule_is_enforced_and_reported(
    sup: Supervisor, workspace: Path, action: str, err: int
) -> None:
    profile = SeccompProfile("allow", (SeccompRule(("getppid",), "allow"), SeccompRule(("getsid",), action)))
    result, events, reg, seen = await run_probe(sup, workspace, profile, [f"{NR['getsid']}:0"] * 3)
    assert seen == [(-1, err)] * 3
    d = one_match(result, events, reg, ("seccomp", "syscall", "getsid"))  # type: ignore[arg-type]
    assert d.count == 3
    assert d.pid is not None
    assert d.pid > 1
    assert "syscalls.profile.rules[1]" in d.hint, d.hint
    assert [x.target for x in result.denials] == ["getsid"]  # nothing else: allowed calls are not reported


async def test_the_allowlist_default_is_enforced_and_reported(sup: Supervisor, workspace: Path) -> None:
    """examples/seccomp/allowlist.json answers ENOSYS to what it does not name: `sysfs` is refused, and
    reported as the profile's default; the names it allows, and python's start-up, report nothing."""
    from policies import load_seccomp_profile

    profile = load_seccomp_profile(ALLOWLIST)
    result, events, reg, seen = await run_probe(
        sup, workspace, profile, [f"{NR['sysfs']}:3", f"{NR['getppid']}"]
    )
    assert seen[0] == (-1, errno.ENOSYS)
    assert seen[1][0] > 0
    d = one_match(result, events, reg, ("seccomp", "syscall", "sysfs"))  # type: ignore[arg-type]
    assert "the default (errno:38)" in d.hint, d.hint
    assert "allowlist.json" in d.hint
    assert [x.target for x in result.denials] == ["sysfs"]


async def test_kill_process_is_reported_and_kills_the_whole_process(sup: Supervisor, workspace: Path) -> None:
    """kill_process: the init records the call, then kills the caller's thread group (a second thread
    makes the call: nothing prints after it, the process ends by SIGKILL)."""
    caps_notify(sup)
    profile = SeccompProfile("allow", (SeccompRule(("getppid",), "kill_process"),))
    code = (
        "import os, threading, time\n"
        "print('before', flush=True)\n"
        "threading.Thread(target=os.getppid).start()\n"
        "time.sleep(5)\n"
        "print('after', flush=True)\n"
    )
    result, events, reg = await observe(sup, [PY, "-c", code], with_profile(workspace, profile))
    assert result.stdout == b"before\n"
    assert result.signal == signal.SIGKILL
    assert result.duration_s < 5
    d = one_match(result, events, reg, ("seccomp", "syscall", "getppid"))
    assert "kills the process" in d.hint
    assert "syscalls.profile.rules[0]" in d.hint


@pytest.mark.parametrize("action", ["log", "trace"])
async def test_log_and_trace_let_the_call_run_and_report_it(
    sup: Supervisor, workspace: Path, action: str
) -> None:
    profile = SeccompProfile("allow", (SeccompRule(("getsid",), action),))
    result, events, reg, seen = await run_probe(sup, workspace, profile, [f"{NR['getsid']}:0"] * 2)
    assert all(ret > 0 and err == 0 for ret, err in seen), seen  # the call ran
    d = one_match(result, events, reg, ("seccomp", "syscall", "getsid"))  # type: ignore[arg-type]
    assert d.count == 2
    assert "the call ran" in d.hint


#: Values of getpgid's pid argument tried under each operator against 1000, and which are refused.
OPERATOR_CASES = {
    "==": (False, True, False),
    "!=": (True, False, True),
    "<": (True, False, False),
    "<=": (True, True, False),
    ">": (False, False, True),
    ">=": (False, True, True),
}


@pytest.mark.parametrize("op", [*OPERATOR_CASES, "masked_eq"])
async def test_every_argument_operator_is_enforced_and_reported_with_its_argument(
    sup: Supervisor, workspace: Path, op: str
) -> None:
    """getpgid(999), getpgid(1000), getpgid(1001) under `a0 <op> 1000` -> EACCES: the refused ones answer
    EACCES and are reported one by one, with the compared argument (getpgid(a0=0x3e8)); the others run
    (ESRCH: no such process in the sandbox)."""
    values = (999, 1000, 1001)
    if op == "masked_eq":  # (a0 & 0xff) == 0xe8: only 1000 (0x3e8)
        cond, refused = ArgCondition(0, "masked_eq", 0xE8, 0xFF), (False, True, False)
    else:
        cond, refused = ArgCondition(0, op, 1000), OPERATOR_CASES[op]
    profile = SeccompProfile("allow", (SeccompRule(("getpgid",), "errno:EACCES", (cond,)),))
    result, events, reg, seen = await run_probe(
        sup, workspace, profile, [f"{NR['getpgid']}:{v}" for v in values]
    )
    for v, r, got in zip(values, refused, seen, strict=True):
        assert got == ((-1, errno.EACCES) if r else (-1, errno.ESRCH)), (op, v, got)
        target = f"getpgid(a0={v:#x})"
        if r:
            one_match(result, events, reg, ("seccomp", "syscall", target))  # type: ignore[arg-type]
    assert len(result.denials) == sum(refused)


async def test_the_builtin_refusal_stands_and_is_named_under_a_profile(
    sup: Supervisor, workspace: Path
) -> None:
    """A profile that allows unshare cannot lift corral's refusal of a new user namespace: refused, and
    reported with the built-in rule's hint; a profile refusal in the same run is reported with its own."""
    profile = SeccompProfile(
        "allow", (SeccompRule(("unshare",), "allow"), SeccompRule(("getpriority",), "errno:EACCES"))
    )
    result, events, reg, seen = await run_probe(
        sup, workspace, profile, [f"{NR['unshare']}:0x10000000", f"{NR['getpriority']}:0,0"]
    )
    assert seen == [(-1, errno.EPERM), (-1, errno.EACCES)]
    d = one_match(result, events, reg, ("seccomp", "syscall", "unshare(CLONE_NEWUSER)"))  # type: ignore[arg-type]
    assert "syscalls.allow" in d.hint
    p = one_match(result, events, reg, ("seccomp", "syscall", "getpriority"))  # type: ignore[arg-type]
    assert "syscalls.profile.rules[1]" in p.hint
    assert "seccomp" not in dict(result.denials_unobservable)


def test_the_profile_fails_closed_without_a_listener() -> None:
    """The one filter with nobody answering (the listener closed at once, as when the init is gone): the
    profile's errno rule and its kill_process rule both refuse the call (ENOSYS), which has no effect (the
    process keeps its session: the control shows setsid succeeds unfiltered). Without a pid namespace this
    is what a sandbox whose init died would see; with one, the init's end kills every process in it."""
    code = textwrap.dedent(
        """
        import dataclasses, os, sys, ctypes
        from policies import profiles
        from policies._seccomp import SeccompProfile, SeccompRule
        from supervisor.sandbox import probe, seccomp
        from supervisor.sandbox._ops import Plan
        caps = probe.KernelCaps.from_dict(probe.probe_in_fork_server())
        if not caps.seccomp_notify.available:
            print("skip", caps.seccomp_notify.reason); sys.exit(0)
        libc = ctypes.CDLL(None, use_errno=True)
        if os.fork() == 0:  # not a session leader, so setsid() can succeed
            if sys.argv[1] != "control":
                profile = SeccompProfile("allow", (SeccompRule(("setsid",), sys.argv[1]),))
                base = profiles.workspace_write("/tmp")
                syscalls = dataclasses.replace(base.syscalls, profile=profile)
                prepared = seccomp.prepare(dataclasses.replace(base, syscalls=syscalls), caps)
                plan = Plan()
                seccomp.emit(prepared, plan)  # the installed (notifying) program; nobody holds the listener
                plan.run()
            before = os.getsid(0)
            ret = libc.syscall(112)  # setsid
            print(ret if ret == -1 else "ok", ctypes.get_errno(), "same" if os.getsid(0) == before else "new")
            sys.stdout.flush()
            os._exit(0)
        os.wait()
        """
    )
    control = subprocess.run(
        [sys.executable, "-c", code, "control"], capture_output=True, text=True, check=True
    )
    if control.stdout.startswith("skip"):
        pytest.skip(control.stdout)
    assert control.stdout.split() == ["ok", "0", "new"], control.stdout
    for action in ("errno:EACCES", "kill_process"):
        out = subprocess.run([sys.executable, "-c", code, action], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["-1", str(errno.ENOSYS), "same"], (action, out.stdout + out.stderr)


#: Under an outer filter holding a listener of its own, the kernel refuses the sandbox init a second one
#: (EBUSY): the decision program is installed alone. The probe tries getsid (the profile's errno rule), then
#: getppid (its kill_process rule).
OUTER_LISTENER = textwrap.dedent(
    """
    import dataclasses, json, sys
    import pyseccomp as sc
    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.NOTIFY, "acct")
    f.load()
    import anyio
    from policies import profiles
    from policies._seccomp import SeccompProfile, SeccompRule
    from supervisor import Supervisor
    async def main():
        profile = SeccompProfile(
            "allow", (SeccompRule(("getsid",), "errno:EACCES"), SeccompRule(("getppid",), "kill_process"))
        )
        base = profiles.workspace_write(sys.argv[1])
        policy = dataclasses.replace(base, syscalls=dataclasses.replace(base.syscalls, profile=profile))
        code = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        code += "print(libc.syscall(124, 0), ctypes.get_errno(), flush=True); os.getppid(); print('after')"
        async with Supervisor(prefork=0) as sup:
            r = await sup.run(["/usr/bin/python3", "-c", code], policy=policy)
            print(json.dumps({"stdout": r.stdout.decode(), "signal": r.signal, "denials": len(r.denials),
                              "unobservable": dict(r.denials_unobservable)}))
    anyio.run(main)
    """
)


def test_without_a_listener_the_kernel_enforces_the_profile(workspace: Path) -> None:
    """Reports refused at the source (EBUSY: an outer listener): the profile's errno rule still answers
    EACCES and its kill_process is the kernel's own kill (SIGSYS); nothing is reported, and the Result says
    seccomp's refusals could not be seen."""
    out = subprocess.run(
        [sys.executable, "-c", OUTER_LISTENER, str(workspace)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["stdout"].split() == ["-1", str(errno.EACCES)], rep
    assert rep["signal"] == signal.SIGSYS, rep
    assert rep["denials"] == 0
    assert "listener" in rep["unobservable"]["seccomp"], rep
