"""Seccomp profiles (docs/seccomp.md, "Profiles") in real sandboxes: each action and each argument operator,
seen by a probe inside that calls the syscall itself and prints what the kernel answered (or is killed);
the allowlist example still runs python3, git status and gcc; the built-in filter cannot be weakened by a
profile; an OCI/Docker profile file covering every field loads and enforces."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pyseccomp
import pytest

from policies import load_policy, profiles
from policies._seccomp import ArgCondition, SeccompProfile, SeccompRule, load_seccomp_profile
from supervisor import Supervisor
from supervisor.sandbox import seccomp

pytestmark = pytest.mark.kernel

PY = os.path.realpath(sys.executable)
ROOT = Path(__file__).resolve().parents[2]
ALLOWLIST = ROOT / "examples" / "seccomp" / "allowlist.json"
#: Docker's own default profile, as tools/docker-seccomp-profile.sh puts it (.ci/run runs it).
DOCKER_DEFAULT = Path("/usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json")
HAVE_DOCKER_DEFAULT = DOCKER_DEFAULT.is_file()


def nr(name: str) -> int:
    return int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))


#: Calls each (name, args...) given on the command line through syscall(2) and prints `ret errno` per line.
PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
for spec in sys.argv[1:]:
    nr, *args = (int(x, 0) for x in spec.split(","))
    ctypes.set_errno(0)
    ret = libc.syscall(nr, *(ctypes.c_long(a) for a in args))
    print(ret, ctypes.get_errno(), flush=True)
"""


def with_profile(workspace: Path, profile: SeccompProfile) -> object:
    policy = profiles.workspace_write(workspace)
    return dataclasses.replace(policy, syscalls=dataclasses.replace(policy.syscalls, profile=profile))


async def probe(
    workspace: Path, profile: SeccompProfile, *calls: str
) -> tuple[list[tuple[int, int]], object]:
    async with Supervisor() as sup:
        result = await sup.run([PY, "-c", PROBE, *calls], policy=with_profile(workspace, profile))  # type: ignore[arg-type]
    lines = [tuple(int(x) for x in line.split()) for line in result.stdout.decode().splitlines()]
    return lines, result  # type: ignore[return-value]


async def test_errno_actions_by_name_and_number(workspace: Path) -> None:
    profile = SeccompProfile(
        "allow",
        (
            SeccompRule(("getpriority",), "errno:EACCES"),
            SeccompRule(("getpgid",), "errno:7"),
            SeccompRule(("getsid",), "errno"),  # EPERM
        ),
    )
    got, result = await probe(
        workspace,
        profile,
        f"{nr('getpriority')},0,0",
        f"{nr('getpgid')},0",
        f"{nr('getsid')},0",
        f"{nr('getppid')}",
    )
    assert got[:3] == [(-1, errno.EACCES), (-1, errno.E2BIG), (-1, errno.EPERM)]
    assert got[3][0] >= 0  # not named: the default (allow)
    assert result.exit_code == 0  # type: ignore[attr-defined]


async def test_kill_process_kills_the_whole_process(workspace: Path) -> None:
    profile = SeccompProfile("allow", (SeccompRule(("getppid",), "kill_process"),))
    # The call is made by a second thread: KILL_PROCESS ends every thread, so nothing prints after it.
    code = (
        "import os, threading, time\n"
        "print('before', flush=True)\n"
        "threading.Thread(target=os.getppid).start()\n"
        "time.sleep(2)\n"
        "print('after', flush=True)\n"
    )
    async with Supervisor() as sup:
        result = await sup.run([PY, "-c", code], policy=with_profile(workspace, profile))  # type: ignore[arg-type]
    assert result.stdout == b"before\n"
    # Reported: the sandbox init answers the notification by killing the thread group (SIGKILL; the
    # kernel's own kill, without reports, is SIGSYS: test_denials_profile.py covers both).
    assert result.signal == signal.SIGKILL
    assert result.exit_code == 128 + signal.SIGKILL
    assert result.refused_abi is None  # a 64-bit program under a killing profile: not a foreign ABI
    assert [(d.layer, d.target) for d in result.denials] == [("seccomp", "getppid")]
    assert "kills the process" in result.denials[0].hint


async def test_log_and_trace_allow_the_call(workspace: Path) -> None:
    profile = SeccompProfile("allow", (SeccompRule(("getpgid",), "log"), SeccompRule(("getsid",), "trace")))
    got, _ = await probe(workspace, profile, f"{nr('getpgid')},0", f"{nr('getsid')},0")
    assert all(ret >= 0 and err == 0 for ret, err in got), got


async def test_allowlist_default_errno_with_allow_rules(workspace: Path) -> None:
    """Default errno:ENOSYS: what the rules allow works, the rest answers ENOSYS, an errno rule its errno."""
    allowed = tuple(
        SeccompRule(tuple(n for n in r.names if n != "getpriority"), "allow")
        for r in load_seccomp_profile(ALLOWLIST).rules
        if r.action == "allow" and not r.args
    )
    profile = SeccompProfile("errno:ENOSYS", (*allowed, SeccompRule(("getpriority",), "errno:EACCES")))
    assert profile.default == f"errno:{errno.ENOSYS}"
    got, result = await probe(
        workspace,
        profile,
        f"{nr('getpgid')},0",
        f"{nr('vhangup')}",  # in no allowlist, and refused by the built-in filter too (EPERM)
        f"{nr('getpriority')},0,0",
        f"{nr('sysfs')},3",  # in no allowlist, allowed by the built-in filter
    )
    assert got[0][0] >= 0
    assert got[1] == (-1, errno.ENOSYS)  # both refuse: on a tie the profile's errno (as if stacked last)
    assert got[2] == (-1, errno.EACCES)
    assert got[3] == (-1, errno.ENOSYS)
    assert result.exit_code == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("op", "refused"),
    [
        # umask(v) for v in 0o17, 0o22, 0o27; the rule compares with 0o22 (masked_eq: (v & 0o7) == 0o2).
        ("==", (False, True, False)),
        ("!=", (True, False, True)),
        ("<", (True, False, False)),
        ("<=", (True, True, False)),
        (">", (False, False, True)),
        (">=", (False, True, True)),
        ("masked_eq", (False, True, False)),
    ],
)
async def test_each_argument_operator(workspace: Path, op: str, refused: tuple[bool, bool, bool]) -> None:
    cond = ArgCondition(0, op, 0o2, 0o7) if op == "masked_eq" else ArgCondition(0, op, 0o22)
    profile = SeccompProfile("allow", (SeccompRule(("umask",), "errno:EDOM", (cond,)),))
    got, _ = await probe(workspace, profile, *(f"{nr('umask')},{v}" for v in (0o17, 0o22, 0o27)))
    assert [(ret, err) == (-1, errno.EDOM) for ret, err in got] == list(refused), got


async def test_a_profile_cannot_weaken_the_builtin_filter(workspace: Path) -> None:
    """A profile that allows everything, explicitly naming what the built-in filter refuses: still refused."""
    profile = SeccompProfile("allow", (SeccompRule(("unshare", "keyctl", "mount"), "allow"),))
    got, _ = await probe(workspace, profile, f"{nr('unshare')},0x20000", f"{nr('keyctl')},0,0,0")
    assert got == [(-1, errno.EPERM), (-1, errno.EPERM)]
    bpf, _ = seccomp.compile_profile(profile)
    if os.uname().machine == "x86_64":  # the i386 ABI stays killed by the profile's filter too
        assert seccomp.run_bpf(bpf, nr("getpid"), arch=0x40000003) == 0x80000000


async def test_the_allowlist_example_runs_python_git_and_gcc(workspace: Path) -> None:
    policy = load_policy(_policy_file(workspace), workdir=workspace)
    assert policy.syscalls.profile is not None
    assert policy.syscalls.profile.default == f"errno:{errno.ENOSYS}"
    (workspace / "t.c").write_text("int main(void) { return 0; }\n")
    await anyio.run_process(["git", "init", "-q", str(workspace)])
    async with Supervisor() as sup:
        py = await sup.run(["/usr/bin/python3", "-c", "print(1)"], policy=policy)
        assert (py.exit_code, py.stdout) == (0, b"1\n"), py.stderr
        git = await sup.run(["git", "status", "--short"], policy=policy)
        assert git.exit_code == 0, git.stderr
        gcc = await sup.run(["gcc", "-o", "t", "t.c"], policy=policy)
        assert gcc.exit_code == 0, gcc.stderr
        assert (workspace / "t").exists()
        # Outside the allowlist: ENOSYS (acct is refused by the built-in filter too, with EPERM; the
        # profile's errno wins a tie, as if stacked last).
        got = await sup.run([PY, "-c", PROBE, f"{nr('acct')},0"], policy=policy)
        assert got.stdout.split() == [b"-1", str(errno.ENOSYS).encode()]


def _policy_file(workspace: Path) -> Path:
    f = workspace / "policy.toml"
    f.write_text(f'profile = "workspace-write"\n[syscalls]\nprofile = "{ALLOWLIST}"\n')
    return f


#: An OCI/Docker profile written for this test, using every field of the format.
DOCKER_STYLE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    "listenerPath": "",
    "listenerMetadata": "",
    "syscalls": [
        {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13, "comment": "errnoRet given"},
        {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "comment": "defaultErrnoRet: EPERM"},
        {"names": ["getsid"], "action": "SCMP_ACT_KILL_PROCESS", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {
            "names": ["getsid"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 33,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {
            "names": ["sched_getscheduler"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 5,
            "includes": {"arches": ["arm64"]},
        },
        {
            "name": "sched_getparam",
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 6,
            "excludes": {"arches": ["amd64"]},
        },
        {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 9, "includes": {"minKernel": "99.0"}},
        {"names": ["getgid"], "action": "SCMP_ACT_LOG", "includes": {"minKernel": "4.14"}},
        {
            "names": ["umask"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 22,
            "args": [{"index": 0, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        {"names": ["no_such_syscall_x"], "action": "SCMP_ACT_ERRNO"},
    ],
}


async def test_docker_style_profile_every_field(workspace: Path) -> None:
    f = workspace / "docker.json"
    f.write_text(json.dumps(DOCKER_STYLE))
    profile = load_seccomp_profile(f)
    names = [r.names for r in profile.rules]
    # Entries needing a capability, another arch or a future kernel do not apply to a corral sandbox.
    assert ("getsid",) in names
    assert ("sched_getscheduler",) not in names
    assert ("sched_getparam",) not in names
    assert ("getuid",) not in names
    assert profile.source == str(f)
    got, _ = await probe(
        workspace,
        profile,
        f"{nr('getpriority')},0,0",
        f"{nr('getpgid')},0",
        f"{nr('getsid')},0",
        f"{nr('umask')},0o755",
        f"{nr('umask')},0o022",
        f"{nr('getgid')}",
        f"{nr('sched_getparam')},0,0",
    )
    assert got[0] == (-1, errno.EACCES)
    assert got[1] == (-1, errno.EPERM)
    assert got[2] == (-1, errno.EDOM)
    assert got[3] == (-1, errno.EINVAL)
    assert got[4][1] == 0
    assert got[5][1] == 0
    assert got[6] != (-1, 6)
    _, skipped = seccomp.compile_profile(profile)
    assert skipped == ["no_such_syscall_x"]


def test_cli_seccomp_profile(workspace: Path) -> None:
    f = workspace / "p.json"
    f.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
            }
        )
    )
    run = [
        sys.executable,
        "-m",
        "supervisor.cli",
        "run",
        "--seccomp-profile",
        str(f),
        "--workdir",
        str(workspace),
        "--",
    ]
    out = workspace / "out.json"
    p = subprocess.run(
        [*run[:-1], "--json", str(out), "--", "/bin/mkdir", str(workspace / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1
    assert "Permission denied" in p.stderr
    assert not (workspace / "d").exists()
    # The profile's refusal is reported: on stderr and in --json, naming the profile's rule and file.
    assert (
        "corral: denied syscall mkdir (seccomp: refused by the seccomp profile "
        f"(syscalls.profile.rules[0] of {f})" in p.stderr
    )
    [denial] = json.loads(out.read_text())["denials"]
    assert (denial["layer"], denial["operation"], denial["target"], denial["count"]) == (
        "seccomp",
        "syscall",
        "mkdir",
        1,
    )
    (workspace / "bad.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_NOPE"}]}'
    )
    run[5] = str(workspace / "bad.json")
    p = subprocess.run([*run, "/bin/true"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 125
    assert "syscalls[0].action" in p.stderr


async def test_dockers_own_default_profile_gives_a_working_sandbox(workspace: Path) -> None:
    if not HAVE_DOCKER_DEFAULT:
        pytest.fail(f"{DOCKER_DEFAULT} is missing: run tools/docker-seccomp-profile.sh (as .ci/run does)")
    profile = load_seccomp_profile(DOCKER_DEFAULT)
    assert profile.default == f"errno:{errno.EPERM}"  # Docker's allowlist: the rest answers EPERM
    _, skipped = seccomp.compile_profile(profile)
    assert "mmap2" in skipped  # i386-only names are skipped, as Docker does on x86_64
    (workspace / "t.c").write_text("int main(void) { return 0; }\n")
    policy = with_profile(workspace, profile)
    async with Supervisor() as sup:
        py = await sup.run(["/usr/bin/python3", "-c", "print(1)"], policy=policy)  # type: ignore[arg-type]
        assert (py.exit_code, py.stdout) == (0, b"1\n"), py.stderr
        await anyio.run_process(["git", "init", "-q", str(workspace)])
        git = await sup.run(["git", "status", "--short"], policy=policy)  # type: ignore[arg-type]
        assert git.exit_code == 0, git.stderr
        gcc = await sup.run(["gcc", "-o", "t", "t.c"], policy=policy)  # type: ignore[arg-type]
        assert gcc.exit_code == 0, gcc.stderr
        # What Docker's profile grants only with CAP_SYS_ADMIN (its includes.caps entries) is refused here.
        got = await sup.run([PY, "-c", PROBE, f"{nr('sethostname')},0,0"], policy=policy)  # type: ignore[arg-type]
        assert got.stdout.split() == [b"-1", str(errno.EPERM).encode()]
    # One filter, one listener: the profile's refusal is reported as its default's, and the ordinary runs
    # (python, git, gcc) report nothing (clone3's ENOSYS, Docker's on purpose, is a fallback).
    if sup.caps.seccomp_notify.available:
        assert [(d.target, "the default (errno:1)" in d.hint) for d in got.denials] == [("sethostname", True)]
        assert py.denials == git.denials == gcc.denials == ()
    assert (workspace / "t").exists()
