"""Fail closed on degraded kernels, for real: the whole stack (probe, plan, fork server, child) on
kernels that lack Landlock, user namespaces or seccomp.

Two backends run the same script (SCRIPT below, which prints one JSON report the tests assert):

- ``v2vm``: a real degraded kernel, the User-Mode Linux guest in ../shared/v2vm (Linux 6.12, Landlock ABI 6):
  booted with ``--append lsm=lockdown,yama`` it has no Landlock (landlock_create_ruleset -> EOPNOTSUPP); with
  ``sysctl user.max_user_namespaces=0`` run inside it, no user namespaces (unshare -> ENOSPC); booted plainly
  it is the Landlock ABI 6 case. Skipped, with the reason, when ../shared/v2vm is absent or the guest does not
  boot on this host (set CORRAL_REQUIRE_V2VM=1 to make that a failure instead). The script honours
  V2VM_KERNEL, so a locally rebuilt guest kernel can be used without touching ../shared.
- ``emulated``: this host's kernel, with the degradation imposed on the script (and inherited by the fork
  server and every child) by an outer seccomp filter that answers the feature's syscalls the way a kernel
  without the feature does: landlock_* -> EOPNOTSUPP; unshare/clone with CLONE_NEWUSER -> ENOSPC; seccomp()
  -> ENOSYS and prctl(PR_SET/GET_SECCOMP) -> EINVAL. The kernel really answers the real syscalls, so
  nothing in corral is faked; only the reason differs. It is the only way to test "no seccomp" (no kernel
  command line switches seccomp off) and keeps these paths covered where the VM cannot run.

The "nobody" parts model the Ubuntu 24.04 case: the script starts as root (to disable user namespaces), then
drops to uid 65534 with setresgid/setresuid before creating its Supervisor.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import SCRATCH
from tests.kernel.unprivileged_harness import AS_ROOT, NOBODY, ROOT, Unavailable, harness

VM_SCRIPT = ROOT.parent / "shared" / "v2vm" / "run-in-v2-vm.sh"
VM_TIMEOUT = 120
NO_LANDLOCK = ["--append", "lsm=lockdown,yama"]


def _in_guest() -> bool:
    try:
        with open("/proc/cmdline") as f:
            return "v2vm.run=" in f.read()
    except OSError:
        return False


# A boot check, its --debug rerun and a scenario run may all land in the first test that needs them.
pytestmark = pytest.mark.timeout(VM_TIMEOUT + 300)

V2VM = pytest.param("v2vm", marks=[pytest.mark.v2vm, pytest.mark.slow])
EMULATED = pytest.param("emulated", marks=pytest.mark.kernel)
BACKENDS = [V2VM, EMULATED]

# Runs as root in the guest (or on the host for "emulated"); prints one JSON report on its last line.
SCRIPT = r'''
import errno, json, logging, os, socket, subprocess, sys, time
from dataclasses import replace

CFG = json.loads(sys.argv[1])
NOBODY = 65534
CLONE_NEWUSER = 0x10000000
R = {"uid_start": os.getuid(), "warnings": []}


class Warnings(logging.Handler):
    def emit(self, record):
        R["warnings"].append(record.getMessage())


def emulate(kinds):
    """An outer seccomp filter answering like a kernel without the feature (inherited by every child)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    if "no_landlock" in kinds:
        for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
            f.add_rule(sc.ERRNO(errno.EOPNOTSUPP), name)
    if "no_userns" in kinds:
        for name in ("unshare", "clone"):
            f.add_rule(sc.ERRNO(errno.ENOSPC), name, sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags out of the filter's reach: libc falls back
    if "no_seccomp" in kinds:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "seccomp")
        for option in (21, 22):  # PR_GET_SECCOMP, PR_SET_SECCOMP
            f.add_rule(sc.ERRNO(errno.EINVAL), "prctl", sc.Arg(0, sc.EQ, option))
    f.load()


if CFG["emulate"]:
    emulate(CFG["emulate"])
if CFG["scenario"] == "no_userns" and not CFG["emulate"]:
    env = dict(os.environ, PATH="/usr/sbin:/sbin:/usr/bin:/bin")
    try:
        subprocess.run(["sysctl", "-qw", "user.max_user_namespaces=0"], check=True, env=env)
    except FileNotFoundError:  # no procps: the same write by hand
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    with open("/proc/sys/user/max_user_namespaces") as f:
        R["max_user_namespaces"] = int(f.read())

import anyio
from policies import SyscallPolicy, profiles
from supervisor import Supervisor

logging.getLogger("corral").addHandler(Warnings(logging.WARNING))
# The interpreter itself, not the venv link: a clone under /tmp would hide the link inside the sandbox.
PY = [os.path.realpath(sys.executable), "-I", "-S", "-c"]
WS, OUT = CFG["workspace"], CFG["outside"]

# The "host" the sandbox must not reach: loopback TCP/UDP listeners and a world-connectable unix socket.
tcp = socket.create_server(("127.0.0.1", 0))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
udp.setblocking(False)
UNIX = os.path.join(OUT, "host.sock")
unix = socket.socket(socket.AF_UNIX)
unix.bind(UNIX)
os.chmod(UNIX, 0o777)
unix.listen(8)

PROBE = r"""
import ctypes, errno, json, os, socket, sys
cfg = json.loads(sys.argv[1])
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def write(path, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags, 0o644)
    os.write(fd, b"x\n")
    os.close(fd)
def tcp():
    socket.create_connection(("127.0.0.1", cfg["tcp"]), timeout=2).close()
def udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"leak", ("127.0.0.1", cfg["udp"]))
def unix():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(cfg["unix"])
libc = ctypes.CDLL(None, use_errno=True)
def unshare_user():
    if libc.unshare(0x10000000) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
with open("/proc/self/status") as f:
    st = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
print(json.dumps({
    "uid": os.getuid(),
    "ws_write": attempt(lambda: write(os.path.join(cfg["workspace"], "probe-%s.txt" % cfg["tag"]))),
    "outside_create": attempt(lambda: write(os.path.join(cfg["outside"], "new-%s.txt" % cfg["tag"]))),
    "outside_append": attempt(
        lambda: write(os.path.join(cfg["outside"], "canary.txt"), os.O_WRONLY | os.O_APPEND)
    ),
    "proc_comm_write": attempt(lambda: write("/proc/self/comm", os.O_WRONLY)),
    "proc_pids": len([p for p in os.listdir("/proc") if p.isdigit()]),
    "pid": os.getpid(),
    "kill_supervisor": attempt(lambda: os.kill(cfg["supervisor_pid"], 0)),
    "unshare_user": attempt(unshare_user),
    "host_tcp": attempt(tcp),
    "host_udp_send": attempt(udp),
    "host_unix": attempt(unix),
    "status": {k: st.get(k, "").strip() for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapBnd")},
}))
"""


def summary(r):
    out = {"exit_code": r.exit_code, "signal": r.signal, "stdout": r.stdout.decode(errors="replace"),
           "stderr": r.stderr.decode(errors="replace"), "enforced": list(r.enforced),
           "missing": [list(m) for m in r.missing], "duration_s": r.duration_s,
           "violation": r.violation.kind if r.violation else None}
    lines = out["stdout"].strip().splitlines()
    if lines and lines[-1].startswith("{"):
        out["probe"] = json.loads(lines[-1])
    return out


async def attempt(sup, policy, argv):
    try:
        r = await sup.run(argv, policy=policy)
    except Exception as e:  # SandboxSetupError is what fail closed means; anything else is reported too
        return {"error": {"type": type(e).__name__, "layer": getattr(e, "layer", None),
                          "operation": getattr(e, "operation", None), "errno": getattr(e, "errno", None),
                          "hint": getattr(e, "hint", None), "message": str(e)}}
    return summary(r)


def probe_argv(tag):
    cfg = dict(workspace=WS, outside=OUT, tag=tag, supervisor_pid=os.getpid(), tcp=tcp.getsockname()[1],
               udp=udp.getsockname()[1], unix=UNIX)
    return [*PY, PROBE, json.dumps(cfg)]


def udp_received():
    got = 0
    while True:
        try:
            udp.recv(64)
            got += 1
        except BlockingIOError:
            return got


def marker_cmd(name):
    return ["/bin/sh", "-c", "touch " + os.path.join(WS, name)]


async def fail_closed_pair(sup, key, profile, probe_tag):
    """The strict policy must refuse (the command would create a marker); best_effort must run."""
    R[key + "default"] = await attempt(sup, profile(WS), marker_cmd(key + "ran"))
    R[key + "marker_exists"] = os.path.exists(os.path.join(WS, key + "ran"))
    R[key + "best_effort"] = await attempt(sup, profile(WS, best_effort=True), probe_argv(probe_tag))
    R[key + "udp_received"] = udp_received()


async def survivor_check(sup, key):
    """A command killed by its wall-clock timeout must not outlive the sandbox."""
    token = "%.3f" % (60 + (os.getpid() % 1000) / 1000)
    pol = profiles.workspace_write(WS, best_effort=True, timeout=0.5)
    # The command's own stdout/stderr go to /dev/null, so that a survivor cannot hold run()'s pipes open.
    cmd = ["/bin/sh", "-c", "exec /bin/sleep %s >/dev/null 2>&1" % token]
    R[key + "timeout"] = await attempt(sup, pol, cmd)
    await anyio.sleep(0.3)
    left = []
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                if f.read().split(b"\0")[:2] == [b"/bin/sleep", token.encode()]:
                    left.append(int(p))
        except OSError:
            pass
    R[key + "survivors"] = left
    for pid in left:  # do not leave it behind on the host either way
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def drop_to_nobody():
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


async def main():
    sc = CFG["scenario"]
    if os.getuid() == 0:
        async with Supervisor(max_concurrency=4) as sup:
            R["caps"] = sup.caps.to_dict()
            if sc == "no_landlock":
                await fail_closed_pair(sup, "", profiles.workspace_write, "ll")
                R["read_only_default"] = await attempt(sup, profiles.read_only(WS), marker_cmd("ro-ran"))
                R["full_access"] = await attempt(sup, profiles.full_access(WS), ["/bin/true"])
            elif sc == "no_userns":
                await fail_closed_pair(sup, "root_", profiles.workspace_write, "root")
            elif sc == "no_seccomp":
                await fail_closed_pair(sup, "", profiles.workspace_write, "sc")
                nested = "unshare -Urm sh -c 'mount -o remount,rw / && touch %s/nested'" % OUT
                R["nested_remount"] = await attempt(
                    sup, profiles.workspace_write(WS, best_effort=True), ["/bin/sh", "-c", nested])
                pol = replace(profiles.workspace_write(WS), syscalls=SyscallPolicy(enabled=False))
                R["syscalls_disabled"] = await attempt(sup, pol, ["/bin/true"])
            elif sc == "abi6":
                R["default"] = await attempt(sup, profiles.workspace_write(WS), probe_argv("abi6"))
        if not CFG["nobody"] or sc not in ("no_userns", "abi6"):
            return
        drop_to_nobody()
    R["uid_nobody_part"] = os.getuid()
    async with Supervisor(max_concurrency=4) as sup:
        R["nobody_caps"] = sup.caps.to_dict()
        if sc == "no_userns":
            await fail_closed_pair(sup, "nobody_", profiles.workspace_write, "nobody")
            await survivor_check(sup, "nobody_")
        elif sc == "abi6":
            R["nobody_default"] = await attempt(sup, profiles.workspace_write(WS), probe_argv("abi6n"))


try:
    anyio.run(main)
finally:
    print(json.dumps(R))
'''


class Runner:
    """Runs SCRIPT per (backend, scenario) once and caches the report; owns the scratch directory."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.reports: dict[tuple[str, str], dict[str, object]] = {}
        self.errors: dict[tuple[str, str], BaseException] = {}
        self.timings: dict[tuple[str, str], float] = {}
        self.script = scratch / "degraded.py"
        self.script.write_text(SCRIPT)
        os.chmod(self.script, 0o644)
        self.python = sys.executable
        self.pythonpath: str | None = None
        self.nobody_reason = ""
        try:
            self.python, self.pythonpath = harness(scratch)
        except Unavailable as why:
            self.nobody_reason = str(why)

    @functools.cached_property
    def vm_problem(self) -> str:
        """Why the v2vm backend cannot run here ('' when it can)."""
        if _in_guest():
            return "already inside the v2vm guest (no nested UML)"
        if not VM_SCRIPT.is_file():
            return f"{VM_SCRIPT} is absent (../shared/v2vm beside the repository)"
        start = time.monotonic()
        r = subprocess.run(
            [str(VM_SCRIPT), "--timeout", "60", "-C", str(ROOT), "/bin/true"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        self.timings[("v2vm", "boot")] = time.monotonic() - start
        if r.returncode == 0:
            return ""
        dbg = subprocess.run(
            [str(VM_SCRIPT), "--debug", "--timeout", "60", "-C", str(ROOT), "/bin/true"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        keys = ("panic", "failed", "error", "Error")
        lines = [ln.strip() for ln in dbg.stderr.splitlines() if any(k in ln for k in keys)]
        return (
            f"the v2vm guest does not boot on this host (exit {r.returncode}: {r.stderr.strip()}); "
            f"guest log: {' | '.join(lines[-4:])}"
        )

    def report(self, backend: str, scenario: str) -> dict[str, object]:
        """The scenario's report, run once; a skip or failure is remembered and repeated for later tests."""
        key = (backend, scenario)
        if key not in self.reports:
            try:
                self.reports[key] = self._run(backend, scenario)
            except BaseException as exc:  # pytest's Skipped/Failed are BaseExceptions
                self.errors[key] = exc
                self.reports[key] = {}
        if key in self.errors:
            raise self.errors[key]
        return self.reports[key]

    def _run(self, backend: str, scenario: str) -> dict[str, object]:
        if backend == "v2vm" and self.vm_problem:
            if os.environ.get("CORRAL_REQUIRE_V2VM") == "1":
                pytest.fail(self.vm_problem)
            pytest.skip(self.vm_problem)
        if backend == "emulated":
            _require_emulation()
        ws = self.scratch / f"ws-{backend}-{scenario}"
        out = self.scratch / f"outside-{backend}-{scenario}"
        for d in (ws, out):
            d.mkdir()
            os.chmod(d, 0o777)  # file permissions allow nobody everything here: only the sandbox says no
        (out / "canary.txt").write_text("host canary\n")
        os.chmod(out / "canary.txt", 0o666)
        cfg = {
            "scenario": scenario,
            "emulate": [scenario] if backend == "emulated" else [],
            "workspace": str(ws),
            "outside": str(out),
            "nobody": not self.nobody_reason,
        }
        argv = [self.python, str(self.script), json.dumps(cfg)]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        if backend == "v2vm":
            boot = NO_LANDLOCK if scenario == "no_landlock" else []
            argv = [
                str(VM_SCRIPT),
                *boot,
                "--timeout",
                str(VM_TIMEOUT),
                "-C",
                str(ROOT),
                "--rw",
                str(self.scratch),
                *argv,
            ]
        start = time.monotonic()
        r = subprocess.run(
            argv, capture_output=True, text=True, timeout=VM_TIMEOUT + 60, check=False, env=env, cwd=ROOT
        )
        self.timings[(backend, scenario)] = time.monotonic() - start
        lines = r.stdout.strip().splitlines()
        assert lines, f"{backend}/{scenario}: no report (exit {r.returncode}):\n{r.stderr[-3000:]}"
        report: dict[str, object] = json.loads(lines[-1])
        assert r.returncode == 0, f"{backend}/{scenario}: exit {r.returncode}\n{report}\n{r.stderr[-3000:]}"
        if backend == "emulated":
            _require_capable_host(report, scenario)
        report["_canary"] = (out / "canary.txt").read_text()
        report["_outside"] = sorted(p.name for p in out.iterdir())
        report["_workspace"] = sorted(p.name for p in ws.iterdir())
        return report


@functools.cache
def _emulation_problem() -> str:
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError, RuntimeError) as err:
        return f"pyseccomp/libseccomp unavailable: {err}"
    from supervisor.sandbox import probe

    if not probe.probe_seccomp().available:
        return "this kernel has no seccomp filters to emulate degradation with"
    if not AS_ROOT:
        return "the emulated scenarios start as root (sysctl, then drop to nobody)"
    return ""


def _require_capable_host(report: dict[str, object], scenario: str) -> None:
    """The emulated scenarios take one feature away from a host that has all the others."""
    caps = report.get("caps")
    assert isinstance(caps, dict), report
    lacks = []
    if scenario != "no_landlock" and int(caps["landlock_abi"]) < 6:
        lacks.append(f"Landlock ABI 6 (has {caps['landlock_abi']})")
    if scenario != "no_seccomp" and not caps["seccomp"][0]:
        lacks.append("seccomp")
    if scenario != "no_userns" and not all(f[0] for f in caps["namespaces"].values()):
        lacks.append(f"namespaces ({caps['namespaces']})")
    if lacks:
        pytest.skip(f"this host itself lacks {', '.join(lacks)}: the emulated {scenario} case needs the rest")


def _require_emulation() -> None:
    if _emulation_problem():
        pytest.skip(_emulation_problem())


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    scratch = SCRATCH / f"degraded-{uuid.uuid4().hex[:10]}"
    scratch.mkdir(mode=0o755)
    os.chmod(scratch, 0o755)
    r = Runner(scratch)
    try:
        yield r
    finally:
        if r.timings:
            print("degraded-kernel timings: " + ", ".join(f"{k}: {v:.2f} s" for k, v in r.timings.items()))
        shutil.rmtree(scratch, ignore_errors=True)


def _err(result: object) -> dict[str, object]:
    assert isinstance(result, dict), result
    assert "error" in result, f"expected a refusal, got a run: {result}"
    err = result["error"]
    assert isinstance(err, dict)
    return err


def _ran(result: object) -> dict[str, object]:
    assert isinstance(result, dict), result
    assert "error" not in result, result
    return result


def _probe(result: object) -> dict[str, object]:
    probe = _ran(result).get("probe")
    assert isinstance(probe, dict), result
    return probe


def _missing_layers(result: dict[str, object]) -> list[str]:
    return [str(m[0]) for m in result["missing"]]  # type: ignore[union-attr]


def _need_nobody(runner: Runner) -> None:
    if runner.nobody_reason:
        pytest.skip(runner.nobody_reason)


# --- (a) no Landlock ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_landlock_fails_closed(runner: Runner, backend: str) -> None:
    rep = runner.report(backend, "no_landlock")
    caps = rep["caps"]
    assert caps["landlock_abi"] == 0, caps  # type: ignore[index]
    assert caps["landlock"][1] == errno.EOPNOTSUPP, caps  # type: ignore[index]
    for key in ("default", "read_only_default"):
        err = _err(rep[key])
        assert err["type"] == "SandboxSetupError", err
        assert err["layer"] == "landlock", err
        assert "landlock_create_ruleset" in str(err["operation"]), err
        assert err["errno"] == errno.EOPNOTSUPP, err
        hint = str(err["hint"])
        assert "best_effort" in hint, err
        assert "lsm=" in hint, err
        assert "Operation not supported" in str(err["message"]), err
    # Nothing ran: the command would have created these.
    assert rep["marker_exists"] is False
    assert "ran" not in rep["_workspace"]
    assert "ro-ran" not in rep["_workspace"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_landlock_best_effort_keeps_other_layers(runner: Runner, backend: str) -> None:
    rep = runner.report(backend, "no_landlock")
    be = _ran(rep["best_effort"])
    assert be["exit_code"] == 0, be
    assert "landlock" in _missing_layers(be), be
    assert not [e for e in be["enforced"] if str(e).startswith("landlock")], be  # type: ignore[attr-defined]
    for layer in ("readonly_root", "pid_ns", "net_ns", "user_ns", "mount_ns", "seccomp"):
        assert layer in be["enforced"], (layer, be)  # type: ignore[operator]
    probe = _probe(be)
    assert probe["ws_write"] == "ok", probe
    # Defence in depth: without Landlock the read-only mount still stops outside writes ...
    assert probe["outside_create"] == "EROFS", probe
    assert probe["outside_append"] == "EROFS", probe
    assert rep["_canary"] == "host canary\n"
    assert rep["_outside"] == ["canary.txt", "host.sock"]
    # ... while the write only Landlock refuses now succeeds: the layer really is absent.
    assert probe["proc_comm_write"] == "ok", probe
    assert probe["proc_pids"] == 2, probe  # pid namespace
    assert probe["host_tcp"] == "ECONNREFUSED", probe  # network namespace
    assert rep["udp_received"] == 0
    assert probe["unshare_user"] == "EPERM", probe  # seccomp
    assert probe["status"]["Seccomp"] == "2", probe  # type: ignore[index]
    warnings = " ".join(rep["warnings"])  # type: ignore[arg-type]
    assert "landlock" in warnings, rep["warnings"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_landlock_policy_without_filesystem_confinement_runs(runner: Runner, backend: str) -> None:
    # full-access asks for no Landlock (no filesystem confinement, host network): nothing to refuse.
    fa = _ran(runner.report(backend, "no_landlock")["full_access"])
    assert fa["exit_code"] == 0, fa
    assert fa["missing"] == [], fa


# --- (b) user namespaces disabled -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_userns_root_fails_closed_then_runs_without_user_ns(runner: Runner, backend: str) -> None:
    rep = runner.report(backend, "no_userns")
    if backend == "v2vm":
        assert rep["max_user_namespaces"] == 0
    ns = rep["caps"]["namespaces"]  # type: ignore[index]
    assert ns["user"][:2] == [False, errno.ENOSPC], ns
    # Root can still create every other namespace.
    assert all(ns[n][0] for n in ("pid", "net", "mount", "ipc", "uts", "cgroup")), ns
    err = _err(rep["root_default"])
    assert err["layer"] == "namespaces", err
    assert err["operation"] == "clone(CLONE_NEWUSER)", err
    assert err["errno"] == errno.ENOSPC, err
    assert "best_effort" in str(err["hint"]), err
    assert rep["root_marker_exists"] is False
    be = _ran(rep["root_best_effort"])
    assert be["exit_code"] == 0, be
    assert _missing_layers(be) == ["user_ns"], be
    for layer in ("pid_ns", "net_ns", "mount_ns", "readonly_root", "landlock_fs", "seccomp"):
        assert layer in be["enforced"], (layer, be)  # type: ignore[operator]
    probe = _probe(be)
    assert probe["uid"] == 0  # real root, without a user namespace to map it away ...
    assert int(str(probe["status"]["CapEff"]), 16) == 0, probe  # type: ignore[index]
    assert int(str(probe["status"]["CapBnd"]), 16) == 0, probe  # type: ignore[index]
    assert probe["outside_create"] == "EROFS", probe  # ... and still confined
    assert probe["proc_comm_write"] == "EACCES", probe
    assert probe["proc_pids"] == 2, probe
    assert probe["host_tcp"] == "ECONNREFUSED", probe
    assert rep["root_udp_received"] == 0
    assert rep["_canary"] == "host canary\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_userns_unprivileged_fails_closed(runner: Runner, backend: str) -> None:
    _need_nobody(runner)
    rep = runner.report(backend, "no_userns")
    assert rep["uid_nobody_part"] == NOBODY
    ns = rep["nobody_caps"]["namespaces"]  # type: ignore[index]
    assert ns["user"][:2] == [False, errno.ENOSPC], ns
    err = _err(rep["nobody_default"])
    assert err["type"] == "SandboxSetupError", err
    assert err["layer"] == "namespaces", err
    assert err["errno"] in (errno.ENOSPC, errno.EPERM), err
    hint = str(err["hint"])
    for word in ("user namespaces", "AppArmor", "best_effort"):
        assert word in hint, (word, hint)
    assert rep["nobody_marker_exists"] is False
    assert "nobody_ran" not in rep["_workspace"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_userns_unprivileged_best_effort_confined_by_landlock_and_seccomp(
    runner: Runner, backend: str
) -> None:
    _need_nobody(runner)
    rep = runner.report(backend, "no_userns")
    be = _ran(rep["nobody_best_effort"])
    assert be["exit_code"] == 0, be
    missing = _missing_layers(be)
    for layer in ("user_ns", "pid_ns", "mount_ns", "net_ns", "mounts"):
        assert layer in missing, (layer, be)
    enforced = be["enforced"]
    assert not [e for e in enforced if str(e).endswith("_ns")], be  # type: ignore[attr-defined]
    for layer in ("landlock_fs", "landlock_net_tcp", "landlock_scope_signal", "seccomp", "no_new_privs"):
        assert layer in enforced, (layer, be)  # type: ignore[operator]
    probe = _probe(be)
    assert probe["uid"] == NOBODY
    assert probe["ws_write"] == "ok", probe
    # No read-only mount any more: Landlock alone refuses the outside write (EACCES, not EROFS).
    assert probe["outside_create"] == "EACCES", probe
    assert probe["outside_append"] == "EACCES", probe
    assert rep["_canary"] == "host canary\n"
    assert "new-nobody.txt" not in rep["_outside"]
    # No network namespace: Landlock's TCP guard refuses connect; no pid namespace: Landlock's signal scope
    # refuses signalling the supervisor; seccomp refuses a new user namespace.
    assert probe["host_tcp"] == "EACCES", probe
    assert probe["kill_supervisor"] == "EPERM", probe
    assert probe["unshare_user"] in ("EPERM", "ENOSPC"), probe
    assert probe["status"]["Seccomp"] == "2", probe  # type: ignore[index]
    assert probe["status"]["NoNewPrivs"] == "1", probe  # type: ignore[index]
    warnings = " ".join(rep["warnings"])  # type: ignore[arg-type]
    assert "user_ns" in warnings, rep["warnings"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_userns_unprivileged_timeout_kills_the_command(runner: Runner, backend: str) -> None:
    _need_nobody(runner)
    rep = runner.report(backend, "no_userns")
    t = _ran(rep["nobody_timeout"])
    assert t["violation"] == "wall_time", t
    assert rep["nobody_survivors"] == [], rep["nobody_survivors"]


# --- (c) Landlock ABI 6 -------------------------------------------------------------------------------


@pytest.mark.v2vm
def test_landlock_abi6_default_policy_works(runner: Runner) -> None:
    rep = runner.report("v2vm", "abi6")
    assert rep["caps"]["landlock_abi"] == 6, rep["caps"]  # type: ignore[index]
    results = [("root", rep["default"])]
    if not runner.nobody_reason:
        results.append(("nobody", rep["nobody_default"]))
    for who, result in results:
        r = _ran(result)
        assert r["exit_code"] == 0, (who, r)
        # Every feature corral uses needs ABI <= 6; ABI 7 only adds audit-log flags, which corral leaves at
        # the kernel's defaults: nothing is missing.
        assert r["missing"] == [], (who, r)
        for layer in (
            "landlock_fs",
            "landlock_refer",
            "landlock_truncate",
            "landlock_ioctl_dev",
            "landlock_scope_abstract_unix",
            "landlock_scope_signal",
            "seccomp",
            "readonly_root",
        ):
            assert layer in r["enforced"], (who, layer, r)  # type: ignore[operator]
        probe = _probe(r)
        assert probe["outside_create"] == "EROFS", (who, probe)
        assert probe["proc_comm_write"] == "EACCES", (who, probe)
        assert probe["ws_write"] == "ok", (who, probe)
    assert rep["_canary"] == "host canary\n"


# --- (d) no seccomp -------------------------------------------------------------------------------------
# No kernel command-line switch turns seccomp off (CONFIG_SECCOMP is build-time), so this runs under the
# emulating filter only; tests/unit/test_plan_degraded.py covers the decision logic with hand-made caps.


@pytest.mark.kernel
def test_no_seccomp_fails_closed(runner: Runner) -> None:
    rep = runner.report("emulated", "no_seccomp")
    assert rep["caps"]["seccomp"][:2] == [False, errno.ENOSYS], rep["caps"]  # type: ignore[index]
    err = _err(rep["default"])
    assert err["layer"] == "seccomp", err
    assert "seccomp" in str(err["operation"]), err
    assert err["errno"] == errno.ENOSYS, err
    hint = str(err["hint"])
    assert "CONFIG_SECCOMP_FILTER" in hint, err
    assert "best_effort" in hint, err
    assert rep["marker_exists"] is False
    assert "ran" not in rep["_workspace"]


@pytest.mark.kernel
def test_no_seccomp_best_effort_keeps_other_layers(runner: Runner) -> None:
    rep = runner.report("emulated", "no_seccomp")
    be = _ran(rep["best_effort"])
    assert be["exit_code"] == 0, be
    assert "seccomp" in _missing_layers(be), be
    assert "seccomp" not in be["enforced"], be  # type: ignore[operator]
    for layer in ("landlock_fs", "readonly_root", "pid_ns", "net_ns", "user_ns"):
        assert layer in be["enforced"], (layer, be)  # type: ignore[operator]
    probe = _probe(be)
    # The filter really is absent (the outer, emulating filter allows a new user namespace) ...
    assert probe["unshare_user"] == "ok", probe
    assert probe["status"]["Seccomp"] == "2", probe  # type: ignore[index]  (the outer filter's)
    # ... and the other layers still confine.
    assert probe["outside_create"] == "EROFS", probe
    assert probe["proc_comm_write"] == "EACCES", probe
    # A nested user namespace gives CAP_SYS_ADMIN over a new mount namespace, but the read-only mounts it
    # inherits are locked and Landlock forbids mount changes: remounting / writable fails.
    nested = _ran(rep["nested_remount"])
    assert nested["exit_code"] != 0, nested
    assert "nested" not in rep["_outside"]
    assert rep["_canary"] == "host canary\n"
    assert "seccomp" in " ".join(rep["warnings"])  # type: ignore[arg-type]


@pytest.mark.kernel
def test_no_seccomp_policy_without_syscall_filter_runs(runner: Runner) -> None:
    r = _ran(runner.report("emulated", "no_seccomp")["syscalls_disabled"])
    assert r["exit_code"] == 0, r
    assert r["missing"] == [], r
    assert "seccomp" not in r["enforced"], r  # type: ignore[operator]
