"""Unprivileged operation: the whole sandbox driven by an ordinary user (uid 65534, "nobody").

Issue 2, item 6: everything the isolation layers do must also work when the caller is not root. The test
process is root here, so it writes a small script into a world-readable scratch directory and runs it as
nobody (`setpriv --reuid 65534 ... env -i ... <venv python> script.py`). The script starts its own
Supervisor, runs sandboxed probes and prints one JSON report, which the tests below assert; the effects are
also checked from outside (canary file, listener accept count). When the suite itself runs as an ordinary
user the script runs as that user instead (it is unprivileged either way) and the root comparison skips.

Harness robustness (CI clones the repository to an unknown path): a probe run as nobody checks that it can
import `supervisor` from this very checkout; if not (an unreadable home directory, say), the three packages
are copied into the scratch directory and put on PYTHONPATH; if the venv itself is unreadable the module
skips, naming the first path nobody cannot reach.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import profiles
from supervisor import Supervisor
from tests.kernel.conftest import SCRATCH, digest
from tests.kernel.unprivileged_harness import AS_ROOT, EXPECTED_UID, ROOT, Unavailable, harness, run_as_user

pytestmark = pytest.mark.kernel

HAS_SECCOMP_MODULE = importlib.util.find_spec("supervisor.sandbox.seccomp") is not None

# Run as nobody. Each probe is a `python -I -S -c` inside the sandbox that prints one JSON object.
SCRIPT = r'''
import errno, json, os, socket, sys
import anyio
from policies import profiles
from supervisor import SandboxSetupError, Supervisor

CFG = json.loads(sys.argv[1])
# The interpreter itself, not the venv link: a clone under /tmp would hide the link inside the sandbox.
PY = [os.path.realpath(sys.executable), "-I", "-S", "-c"]

def err_name(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def connect_tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass

def connect_abstract(name):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(name if name.startswith("/") else "\0" + name)

FS_PROBE = r"""
import errno, json, os, sys
cfg = json.loads(sys.argv[1])
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def write(path, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, b"from the sandbox\n")
    finally:
        os.close(fd)
ws, out = cfg["workspace"], cfg["outside"]
r = {
    "ws_write": attempt(lambda: write(os.path.join(ws, "inside-%s.txt" % cfg["tag"]))),
    "outside_create": attempt(lambda: write(os.path.join(out, "new.txt"))),
    "outside_append": attempt(lambda: write(os.path.join(out, "canary.txt"), os.O_WRONLY | os.O_APPEND)),
    "outside_truncate": attempt(lambda: os.truncate(os.path.join(out, "canary.txt"), 0)),
    "outside_unlink": attempt(lambda: os.unlink(os.path.join(out, "canary.txt"))),
    "outside_rename_in": attempt(
        lambda: os.rename(os.path.join(out, "canary.txt"), os.path.join(ws, "stolen"))
    ),
    "tmp_write": attempt(lambda: write("/tmp/private.txt")),
    "proc_comm_write": attempt(lambda: write("/proc/self/comm", os.O_WRONLY)),
    "host_tmp_marker_visible": os.path.exists(cfg["host_tmp_marker"]),
}
with open("/proc/self/mountinfo") as f:
    root_opts = [l.split()[5] for l in f if l.split()[4] == "/"]
r["root_mount_opts"] = root_opts[-1] if root_opts else ""
with open("/proc/self/status") as f:
    st = dict(l.rstrip("\n").split(":\t", 1) for l in f if ":\t" in l)
r["status"] = {k: st.get(k, "").strip() for k in ("Seccomp", "NoNewPrivs", "CapEff", "CapBnd", "CapAmb")}
print(json.dumps(r))
"""

NET_PROBE = r"""
import errno, json, socket, sys
cfg = json.loads(sys.argv[1])
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def tcp():
    with socket.create_connection(("127.0.0.1", cfg["port"]), timeout=2):
        pass
def abstract():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect("\0" + cfg["abstract"])
def pathname():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(cfg["unix_path"])
def own_loopback():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname(), timeout=2) as c:
            a, _ = srv.accept()
            c.sendall(b"ping")
            assert a.recv(4) == b"ping"
            a.close()
print(json.dumps({
    "host_tcp": attempt(tcp),
    "host_abstract_unix": attempt(abstract),
    "host_pathname_unix": attempt(pathname),
    "own_loopback_server": attempt(own_loopback),
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
}))
"""

PID_PROBE = r"""
import ctypes, errno, json, os, sys
cfg = json.loads(sys.argv[1])
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
def unshare_user():
    if libc.unshare(0x10000000) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
print(json.dumps({
    "pid": os.getpid(),
    "proc_pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "host_pid_visible": os.path.exists("/proc/%d" % cfg["host_pid"]),
    "kill_host_pid": attempt(lambda: os.kill(cfg["host_pid"], 0)),
    "unshare_user": attempt(unshare_user),
    "hostname": os.uname().nodename,
}))
"""


PROXY_PROBE = r"""
import json, socket, sys
port = int(sys.argv[1])
def ask(target):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(("CONNECT %s HTTP/1.1\r\n\r\n" % target).encode())
    data = s.recv(200)
    s.close()
    return data.split(b"\r\n")[0].decode()
print(json.dumps({"allowed": ask("allowed.test:%d" % port), "other": ask("other.test:%d" % port)}))
"""


async def proxy_run(sup, report):
    # Network mode "proxy" with the init's own network namespace (no pool without root): the listener
    # the init makes there reaches this (unprivileged) supervisor, which connects to its own loopback server.
    import threading
    from supervisor._proxy import static_resolver
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    hits = []
    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            hits.append(1)
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    sup.proxy.resolver = static_resolver({"allowed.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    pol = profiles.workspace_write(CFG["workspace"], network_allow=["allowed.test:%d" % port, "127.0.0.1"])
    r = await sup.run([*PY, PROXY_PROBE, str(port)], policy=pol)
    report["proxy"] = dict(probe_json(r), network=r.network, hits=len(hits))
    srv.close()


def probe_json(r):
    lines = r.stdout.decode().strip().splitlines()
    if r.exit_code == 0 and lines:
        return json.loads(lines[-1])
    return {"failed": r.exit_code, "stderr": r.stderr.decode()}


def summary(r):
    return {
        "exit_code": r.exit_code, "signal": r.signal, "stdout": r.stdout.decode(),
        "stderr": r.stderr.decode(), "enforced": list(r.enforced), "missing": [list(m) for m in r.missing],
        "denials": [d.to_dict() for d in r.denials],
        "unobservable": [list(u) for u in r.denials_unobservable],
    }


async def main():
    report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
              "supervisor_file": __import__("supervisor").__file__}
    report["control_tcp"] = err_name(lambda: connect_tcp(CFG["port"]))
    report["control_abstract_unix"] = err_name(lambda: connect_abstract(CFG["abstract"]))
    report["control_pathname_unix"] = err_name(lambda: connect_abstract(CFG["unix_path"]))
    # Secrets in the caller's environment and an inheritable fd: neither may reach the child.
    os.environ.update({"OPENAI_API_KEY": "sk-leak", "MY_PASSWORD": "hunter2", "HARMLESS_VAR": "visible"})
    leaked = os.open("/etc/passwd", os.O_RDONLY)
    os.set_inheritable(leaked, True)
    report["leaked_fd"] = leaked
    arg = json.dumps(CFG)
    ws = profiles.workspace_write(CFG["workspace"])
    ro = profiles.read_only(CFG["workspace"])
    async with Supervisor(max_concurrency=4) as sup:
        report["caps"] = sup.caps.to_dict()
        try:
            r = await sup.run(["/bin/sh", "-c", "echo out; echo err >&2; id -u; id -g; exit 3"], policy=ws)
        except SandboxSetupError as e:  # the test decides: a kernel limit (skip) or a regression (fail)
            report["setup_error"] = {"layer": e.layer, "errno": e.errno, "message": str(e)}
            print(json.dumps(report))
            return
        report["basic"] = summary(r)
        r = await sup.run([*PY, FS_PROBE, json.dumps(dict(CFG, tag="ws"))], policy=ws)
        report["fs"] = probe_json(r)
        r = await sup.run([*PY, FS_PROBE, json.dumps(dict(CFG, tag="ro"))], policy=ro)
        report["fs_read_only"] = probe_json(r)
        report["enforced_read_only"] = list(r.enforced)
        r = await sup.run([*PY, NET_PROBE, arg], policy=ws)
        report["net"] = probe_json(r)
        r = await sup.run([*PY, PID_PROBE, arg], policy=ws)
        report["pid"] = probe_json(r)
        r = await sup.run(["/usr/bin/unshare", "-U", "/bin/true"], policy=ws)
        report["unshare_cmd"] = summary(r)
        r = await sup.run(["/usr/bin/env"], policy=ws)
        report["env"] = r.stdout.decode()
        r = await sup.run(["/bin/ls", "/proc/self/fd"], policy=ws)
        report["fds"] = sorted(int(x) for x in r.stdout.split())
        # A denied file the caller can read, in a directory the sandbox may only read: overlaid. This
        # caller's fork server cannot make an overlay (EPERM): each sandbox makes its own.
        hidden = profiles.workspace_write(CFG["workspace"], deny=[CFG["home"] + "/token"])
        look = 'cat "$1/token"; cat "$1/canary.txt"; grep " $1 " /proc/self/mountinfo; true'
        r = await sup.run(["/bin/sh", "-c", look, "sh", CFG["home"]], policy=hidden)
        report["overlay"] = summary(r)
        r = await sup.run(["/bin/sh", "-c", "id -u; echo hi > full-access.txt"],
                          policy=profiles.full_access(CFG["workspace"]))
        report["full_access"] = summary(r)
        await proxy_run(sup, report)
        # A resource limit needs a cgroup, which an ordinary user without a delegated subtree lacks:
        # refused (fail closed), or run with the limit really enforced.
        for key, be in (("memory_limit", False), ("memory_limit_best_effort", True)):
            pol = profiles.workspace_write(CFG["workspace"], memory="256M", best_effort=be)
            try:
                r = await sup.run(["/bin/true"], policy=pol)
                report[key] = summary(r)
            except Exception as e:
                layer = getattr(e, "layer", None)
                report[key] = {"error": type(e).__name__, "layer": layer, "message": str(e)}
    print(json.dumps(report))

anyio.run(main)
'''


class _Listener:
    """Host-side (root) listeners that count connections: loopback TCP, an abstract unix socket, and a
    world-connectable pathname unix socket outside /run and /tmp (where Docker Desktop for Linux keeps
    ~/.docker/desktop/docker.sock, say)."""

    def __init__(self, socket_dir: Path) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.abstract_name = f"corral-unpriv-{uuid.uuid4().hex[:12]}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract_name)
        self.unix.listen(8)
        self.path = str(socket_dir / "docker.sock")
        self.pathname = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pathname.bind(self.path)
        os.chmod(self.path, 0o777)
        self.pathname.listen(8)
        self.accepted = {"tcp": 0, "unix": 0, "pathname": 0}
        self._stop = False
        self._threads = [
            threading.Thread(target=self._serve, args=(s, k), daemon=True)
            for s, k in ((self.tcp, "tcp"), (self.unix, "unix"), (self.pathname, "pathname"))
        ]
        for t in self._threads:
            t.start()

    def _serve(self, s: socket.socket, kind: str) -> None:
        s.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted[kind] += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        self.tcp.close()
        self.unix.close()
        self.pathname.close()


class Env:
    """What the module fixture set up, and the report the unprivileged script printed."""

    def __init__(
        self,
        report: dict[str, object],
        workspace: Path,
        outside: Path,
        canary_digest: str,
        accepted: dict[str, int],
        pythonpath: str | None,
    ) -> None:
        self.report = report
        self.workspace = workspace
        self.outside = outside
        self.canary_digest = canary_digest
        self.accepted = accepted
        self.pythonpath = pythonpath

    def __getitem__(self, key: str) -> dict[str, object]:
        value = self.report[key]
        assert isinstance(value, dict), (key, value)
        return value


@pytest.fixture(scope="module")
def unpriv() -> Iterator[Env]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    os.chmod(SCRATCH, 0o755)
    scratch = SCRATCH / f"unpriv-{uuid.uuid4().hex[:10]}"
    scratch.mkdir(mode=0o755)
    os.chmod(scratch, 0o755)
    workspace = scratch / "ws"
    outside = scratch / "outside"
    home = scratch / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "token").write_text("the host's token\n")
    (home / "canary.txt").write_text("host canary\n")
    for f in ("token", "canary.txt"):
        os.chmod(home / f, 0o644)
    # World-writable on purpose: file permissions would let nobody write here, only the sandbox stops it.
    for d in (workspace, outside):
        d.mkdir()
        os.chmod(d, 0o777)
    canary = outside / "canary.txt"
    canary.write_text("host canary\n")
    os.chmod(canary, 0o666)
    marker = Path("/tmp") / f"corral-unpriv-host-{uuid.uuid4().hex[:8]}"
    marker.write_text("host /tmp\n")
    os.chmod(marker, 0o644)
    sockets = scratch / "home-sockets"
    sockets.mkdir()
    os.chmod(sockets, 0o755)
    listener = _Listener(sockets)
    try:
        try:
            python, pythonpath = harness(scratch)
        except Unavailable as why:
            print(why)
            pytest.skip(str(why))
        before = digest(outside)
        script = scratch / "unpriv.py"
        script.write_text(SCRIPT)
        os.chmod(script, 0o644)
        cfg = {
            "workspace": str(workspace),
            "outside": str(outside),
            "port": listener.port,
            "abstract": listener.abstract_name,
            "unix_path": listener.path,
            "host_pid": os.getpid(),
            "host_tmp_marker": str(marker),
            "home": str(home),
        }
        r = run_as_user([python, str(script), json.dumps(cfg)], pythonpath, scratch, timeout=90)
        assert r.returncode == 0, f"unprivileged script failed ({r.returncode}):\n{r.stderr}"
        report = json.loads(r.stdout.strip().splitlines()[-1])
        if "setup_error" in report:
            limit = _kernel_limit(report["caps"])
            assert limit, f"the default sandbox fails unprivileged on a capable kernel: {report}"
            pytest.skip(f"this kernel cannot run the default sandbox unprivileged ({limit}): {report}")
        assert digest(outside) == before
        yield Env(report, workspace, outside, before, dict(listener.accepted), pythonpath)
    finally:
        listener.close()
        marker.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _kernel_limit(caps: dict[str, object]) -> str:
    """What this kernel lacks for the default policy as an ordinary user ('' if nothing); the degraded
    paths themselves are test_degraded.py's."""
    ns = caps["namespaces"]
    assert isinstance(ns, dict)
    lacks = [f"{n} namespace" for n, (ok, *_rest) in ns.items() if not ok]
    if int(caps["landlock_abi"]) < 6:  # type: ignore[call-overload]
        lacks.append(f"Landlock ABI 6 (has {caps['landlock_abi']})")
    if not caps["seccomp"][0]:  # type: ignore[index]
        lacks.append("seccomp")
    return ", ".join(lacks)


def test_script_ran_unprivileged_with_this_checkout(unpriv: Env) -> None:
    r = unpriv.report
    assert (r["uid"], r["euid"], r["gid"]) == (EXPECTED_UID, EXPECTED_UID, EXPECTED_UID)
    got = os.path.realpath(str(r["supervisor_file"]))
    if unpriv.pythonpath is None:
        assert got == str(ROOT / "supervisor" / "__init__.py")
    else:
        assert got.startswith(unpriv.pythonpath)
    caps = unpriv["caps"]
    assert caps["uid"] == EXPECTED_UID
    # The probe classified what this kernel offers the same way for nobody: user namespaces available.
    assert caps["namespaces"]["user"][0], caps  # type: ignore[index]


def test_basic_run(unpriv: Env) -> None:
    b = unpriv["basic"]
    assert b["exit_code"] == 3, b
    assert b["signal"] is None
    assert b["stdout"] == f"out\n{EXPECTED_UID}\n{EXPECTED_UID}\n"
    assert b["stderr"] == "err\n"
    assert b["missing"] == []


def test_workspace_writable_outside_not(unpriv: Env) -> None:
    fs = unpriv["fs"]
    assert fs["ws_write"] == "ok", fs
    assert (unpriv.workspace / "inside-ws.txt").read_text() == "from the sandbox\n"
    assert (unpriv.workspace / "inside-ws.txt").stat().st_uid == EXPECTED_UID
    for attempt in ("outside_create", "outside_append", "outside_truncate", "outside_unlink"):
        assert fs[attempt] in ("EROFS", "EACCES", "EPERM"), (attempt, fs)
    assert fs["outside_rename_in"] in ("EROFS", "EACCES", "EPERM", "EXDEV"), fs
    # Checked from outside: the canary is byte for byte what it was and nothing was added beside it.
    assert digest(unpriv.outside) == unpriv.canary_digest
    assert sorted(p.name for p in unpriv.outside.iterdir()) == ["canary.txt"]
    assert not (unpriv.workspace / "stolen").exists()


def test_read_only_root_and_private_tmp(unpriv: Env) -> None:
    fs = unpriv["fs"]
    # The mount layer answers first (EROFS), before Landlock would (EACCES): both are in place.
    assert fs["outside_create"] == "EROFS", fs
    assert fs["root_mount_opts"].split(",")[0] == "ro", fs
    assert fs["tmp_write"] == "ok"
    assert fs["host_tmp_marker_visible"] is False
    ro = unpriv["fs_read_only"]
    assert ro["ws_write"] == "EROFS", ro
    assert ro["tmp_write"] == "ok", ro
    assert not (unpriv.workspace / "inside-ro.txt").exists()


def test_landlock_active(unpriv: Env) -> None:
    basic = unpriv["basic"]
    assert "landlock_fs" in basic["enforced"], basic
    # /proc is a writable mount in the sandbox and /proc/self/comm is the process's own file: only
    # Landlock (which grants /proc read access only) refuses this write.
    assert unpriv["fs"]["proc_comm_write"] == "EACCES", unpriv["fs"]


def test_network_namespace(unpriv: Env) -> None:
    assert unpriv.report["control_tcp"] == "ok"  # the same user outside the sandbox reaches it
    assert unpriv.report["control_abstract_unix"] == "ok"
    net = unpriv["net"]
    assert net["host_tcp"] == "ECONNREFUSED", net
    assert net["host_abstract_unix"] == "ECONNREFUSED", net
    assert net["own_loopback_server"] == "ok", net
    assert net["interfaces"] == ["lo"], net
    # Checked from outside: only the control connections ever arrived.
    assert unpriv.accepted["tcp"] == 1
    assert unpriv.accepted["unix"] == 1


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BUG: a host unix socket outside /run, /var/run and /tmp (here a 0777 socket under /var/tmp; in "
    "real life Docker Desktop's ~/.docker/desktop/docker.sock, or any socket in $HOME) is connectable from "
    "the default workspace-write sandbox: the read-only root does not stop connect(), Landlock (ABI <= 7) "
    "does not mediate it and the network namespace does not cover pathname sockets",
)
def test_host_pathname_unix_socket_unreachable(unpriv: Env) -> None:
    assert unpriv.report["control_pathname_unix"] == "ok"
    net = unpriv["net"]
    assert net["host_pathname_unix"] != "ok", net
    assert unpriv.accepted["pathname"] == 1, unpriv.accepted


def test_pid_namespace(unpriv: Env) -> None:
    pid = unpriv["pid"]
    # The sandbox init is pid 1 and the command pid 2: /proc shows nothing else.
    assert pid["pid"] == 2, pid
    assert pid["proc_pids"] == [1, 2], pid
    assert pid["host_pid_visible"] is False
    assert pid["kill_host_pid"] == "ESRCH", pid
    assert pid["hostname"] == "corral"


@pytest.mark.skipif(not HAS_SECCOMP_MODULE, reason="supervisor/sandbox/seccomp.py does not exist yet")
def test_seccomp_active(unpriv: Env) -> None:
    assert "seccomp" in unpriv["basic"]["enforced"]
    assert unpriv["fs"]["status"]["Seccomp"] == "2", unpriv["fs"]
    # A nested user namespace would be allowed to an unprivileged process were it not for the filter.
    assert unpriv["pid"]["unshare_user"] == "EPERM", unpriv["pid"]
    cmd = unpriv["unshare_cmd"]
    assert cmd["exit_code"] != 0, cmd
    assert "Operation not permitted" in cmd["stderr"], cmd


def test_denials_reported_to_an_unprivileged_caller(unpriv: Env) -> None:
    """docs/denials.md: seccomp's refusals reach an ordinary user too (user notification needs no
    privilege); the layers that cannot be seen are listed, never silently empty."""
    cmd = unpriv["unshare_cmd"]
    caps = unpriv["caps"]
    notify = caps.get("seccomp_notify", [False, 0, ""])
    unobservable = {layer: why for layer, why in cmd["unobservable"]}
    if not notify[0]:
        assert "seccomp" in unobservable, cmd
        return
    assert [(d["layer"], d["operation"], d["target"], d["count"]) for d in cmd["denials"]] == [
        ("seccomp", "syscall", "unshare(CLONE_NEWUSER)", 1)
    ], cmd
    assert {"landlock", "mounts"} <= set(unobservable), cmd
    # The syscall-exit observer needs root: said as the reason, never an empty list.
    assert "root" in unobservable["mounts"], cmd


def test_no_privileges_inside(unpriv: Env) -> None:
    st = unpriv["fs"]["status"]
    assert st["NoNewPrivs"] == "1", st
    for field in ("CapEff", "CapBnd", "CapAmb"):
        assert int(st[field], 16) == 0, st


def test_an_ordinary_users_sandbox_makes_its_own_overlay(unpriv: Env) -> None:
    # The kernel refuses an ordinary user's fork server an overlay of its own (forkserver/_overlays.py): the
    # directory holding the denied file is overlaid all the same, by the sandbox, and the file hidden.
    o = unpriv["overlay"]
    out = str(o["stdout"]) + str(o["stderr"])
    assert "the host's token" not in out, o
    assert "host canary" in out, o
    assert " - overlay overlay " in out, o  # mount(2)'s source: the sandbox's own (the fork server's: none)


def test_env_and_fds_filtered(unpriv: Env) -> None:
    env = str(unpriv.report["env"])
    assert "HARMLESS_VAR=visible" in env
    assert "sk-leak" not in env
    assert "hunter2" not in env
    assert unpriv.report["leaked_fd"] not in (0, 1, 2, 3)
    assert unpriv.report["fds"] == [0, 1, 2, 3]  # stdio and the fd ls opened to read the directory


def test_full_access_runs_unconfined_but_namespaced(unpriv: Env) -> None:
    fa = unpriv["full_access"]
    assert fa["exit_code"] == 0, fa
    assert fa["stdout"] == f"{EXPECTED_UID}\n"
    assert (unpriv.workspace / "full-access.txt").read_text() == "hi\n"
    assert not any(e.startswith("landlock") for e in fa["enforced"]), fa


@pytest.mark.skipif(not AS_ROOT, reason="the suite runs unprivileged: there is no root run to compare with")
async def test_enforced_layers_same_as_root(unpriv: Env) -> None:
    """Every isolation layer root gets, nobody gets too. cgroup placement is not an isolation layer and
    needs a delegated subtree for an ordinary user: it is compared separately (see the next test)."""
    async with Supervisor() as sup:
        ws = await sup.run(["/bin/true"], policy=profiles.workspace_write(unpriv.workspace))
        ro = await sup.run(["/bin/true"], policy=profiles.read_only(unpriv.workspace))
    assert ws.missing == ()
    assert unpriv["basic"]["missing"] == []
    assert _isolation(unpriv["basic"]["enforced"]) == _isolation(ws.enforced)
    assert _isolation(unpriv.report["enforced_read_only"]) == _isolation(ro.enforced)  # type: ignore[arg-type]


def _isolation(enforced: object) -> set[str]:
    assert isinstance(enforced, list | tuple)
    return {str(e) for e in enforced if not str(e).startswith("cgroup") or str(e) == "cgroup_ns"}


def test_resource_limit_without_cgroup_fails_closed(unpriv: Env) -> None:
    strict = unpriv["memory_limit"]
    if "error" in strict:
        assert strict["error"] == "SandboxSetupError", strict
    else:  # a delegated cgroup subtree was available to this user: then the limit must really hold
        assert "cgroup_memory" in strict["enforced"], strict
    lax = unpriv["memory_limit_best_effort"]
    assert "error" not in lax, lax
    assert lax["exit_code"] == 0, lax
    if "cgroup_memory" not in lax["enforced"]:
        assert any(layer.startswith("cgroup") for layer, _ in lax["missing"]), lax


def test_proxy_mode_unprivileged(unpriv: Env) -> None:
    """Network mode "proxy" for an ordinary user: the init makes the listener in its own network
    namespace (no pooled one), the supervisor serves it; the list decides, checked at the server."""
    p = unpriv["proxy"]
    assert p["allowed"].startswith("HTTP/1.1 200"), p
    assert p["other"].startswith("HTTP/1.1 403"), p
    assert p["hits"] == 1
    assert (p["network"]["allowed"], p["network"]["denied"]) == (1, 1)  # type: ignore[index]
