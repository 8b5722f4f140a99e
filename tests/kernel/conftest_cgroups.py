"""Shared helpers and checks for the real-kernel cgroups tests (test_cgroups_v1.py, test_cgroups_v2.py).

Not a pytest conftest (tests/kernel/conftest.py belongs to others): the test files import these helpers.
Every cgroup made here lives under a per-session prefix (`corraltest<hex>`), so parallel runs and real
corral supervisors on the same host never see each other's cgroups; every process started here is
ended by its pid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import ResourcePolicy
from supervisor.sandbox.cgroups import CgroupManager, Leaf
from tests.kernel.conftest import proc_state

PY = os.path.realpath(sys.executable)
MiB = 1 << 20

#: One prefix per test session: the stale-cleanup test fabricates dead owners under it.
PREFIX = "corraltest" + secrets.token_hex(4)

# A memory hog: waits for "go" on stdin (the test places it first), then touches 16 MiB chunks.
HOG = """
import sys
sys.stdin.readline()
chunks = []
for i in range(int(sys.argv[1]) // 16):
    chunks.append(b"x" * (16 << 20))
print("survived", flush=True)
"""

# A bounded fork storm: at most N sleepers; prints how many forks succeeded, then waits.
STORM = """
import os, sys, time
sys.stdin.readline()
n = 0
for i in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print(n, flush=True)
time.sleep(60)
"""

BUSY = """
import sys, time
sys.stdin.readline()
t = time.monotonic()
while time.monotonic() - t < 30:
    pass
"""

# A shell with a background child and a double-forked daemon in its own session.
DAEMONS = "read x; (setsid sleep 1000 &) ; sleep 1000 & wait"


def gated(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a process that waits for a line on stdin before doing anything."""
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def place_and_release(leaf: Leaf, proc: subprocess.Popen[bytes]) -> None:
    """What the fork server does: write the pid into every procs file, then release the child."""
    for path in leaf.procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(proc.pid).encode())
        finally:
            os.close(fd)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test started, by its pid, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()


def read(path: str) -> str:
    """A cgroup file's content, stripped."""
    with open(path) as f:
        return f.read().strip()


def getsid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def manager_fixture() -> Iterator[CgroupManager]:
    mgr = CgroupManager()
    mgr.open(PREFIX)
    try:
        yield mgr
    finally:
        mgr.close()
    for p in mgr.parents:
        assert not os.path.exists(p), f"parent cgroup {p} left behind"


# -- checks shared by v1 and v2 -------------------------------------------------------------------


def check_memory_limit(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("hog", ResourcePolicy(memory=64 * MiB))
    assert leaf.enforced["memory"]
    proc = gated([PY, "-I", "-S", "-c", HOG, "256"])
    try:
        place_and_release(leaf, proc)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -9, (proc.returncode, out)
        assert b"survived" not in out
        st = leaf.stats()
        assert (st.oom_kills or 0) >= 1, st
        assert st.memory_peak_bytes is None or st.memory_peak_bytes <= 64 * MiB + MiB, st
    finally:
        stop(proc)
        assert leaf.kill()
        leaf.remove()
    assert not any(os.path.exists(p) for p in leaf.paths)


def check_pids_limit(mgr: CgroupManager, storm: int) -> None:
    leaf = mgr.create_leaf("storm", ResourcePolicy(pids=20))
    proc = gated([PY, "-I", "-S", "-c", STORM, str(storm)])
    try:
        place_and_release(leaf, proc)
        assert proc.stdout is not None
        forked = int(proc.stdout.readline())
        assert forked == 19, forked  # the storm itself is the 20th task
        st = leaf.stats()
        assert st.pids == 20, st
        assert (st.pids_max_events or 0) >= storm - 19, st
        assert len(leaf.pids()) == 20
        assert leaf.kill(timeout=5)
        assert leaf.pids() == []
    finally:
        stop(proc)
        leaf.kill()
        leaf.remove()


def check_cpu_quota(mgr: CgroupManager, window: float = 1.5) -> None:
    leaf = mgr.create_leaf("busy", ResourcePolicy(cpus=0.2))
    proc = gated([PY, "-I", "-S", "-c", BUSY])
    try:
        place_and_release(leaf, proc)
        time.sleep(0.5)  # past interpreter start-up
        c0, t0 = leaf.stats().cpu_seconds, time.monotonic()
        time.sleep(window)
        c1, t1 = leaf.stats().cpu_seconds, time.monotonic()
        assert c0 is not None
        assert c1 is not None
        ratio = (c1 - c0) / (t1 - t0)
        print(f"cpu quota 0.2: measured cpu/wall {ratio:.3f}")
        # Upper bound is the point (unlimited would be ~1.0); the lower one allows a busy host.
        assert 0.05 < ratio < 0.3, ratio
    finally:
        leaf.kill()
        stop(proc)
        leaf.remove()


def check_kill_tree(mgr: CgroupManager) -> None:
    leaf = mgr.create_leaf("tree", ResourcePolicy())
    proc = gated(["/bin/sh", "-c", DAEMONS])
    try:
        place_and_release(leaf, proc)
        # Wait for the shell, its background sleep and the daemon, which escaped the shell's session
        # and process group (not its cgroup). The VM forks slowly: poll.
        deadline = time.monotonic() + 20
        while True:
            pids = leaf.pids()
            sessions = {sid for sid in map(getsid, pids) if sid is not None}
            if (len(pids) >= 3 and len(sessions) >= 2) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(pids) >= 3, pids
        assert len(sessions) >= 2, sessions
        assert leaf.kill(timeout=5)
        assert leaf.pids() == []
        assert proc.wait(timeout=10) == -9
        deadline = time.monotonic() + 5
        while any(proc_state(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(proc_state(p) in (None, "Z") for p in pids), [proc_state(p) for p in pids]
    finally:
        stop(proc)
        leaf.kill()
        leaf.remove()
    assert not any(os.path.exists(p) for p in leaf.paths)


def check_stale_cleanup(live: CgroupManager) -> None:
    """Fabricate the cgroups of a dead supervisor (a reaped pid) holding a sleeping process; a new
    manager's open() kills it and removes them. A live owner's cgroups are left alone."""
    dead = subprocess.Popen(["/bin/true"])
    dead.wait()
    layout = live.layout
    stale = f"{PREFIX}-{dead.pid}"
    alive = f"{PREFIX}-{os.getppid()}"
    made: list[str] = []
    sleeper = subprocess.Popen(["/bin/sleep", "1000"])
    try:
        for h in layout.hierarchies():
            for name in (stale, alive):
                d = os.path.join(h.path, name)
                os.mkdir(d)
                made.append(d)
            if h.version == 2:
                with open(os.path.join(h.path, stale, "cgroup.subtree_control"), "w") as f:
                    f.write(" ".join(f"+{c}" for c in ("memory", "pids") if c in h.controllers))
            leaf = os.path.join(h.path, stale, "c1")
            os.mkdir(leaf)
            made.append(leaf)
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(str(sleeper.pid))
        mgr = CgroupManager()
        mgr.open(PREFIX)
        try:
            assert stale in mgr.stale_removed
            assert alive not in mgr.stale_removed
            assert sleeper.wait(timeout=10) == -9
            for h in layout.hierarchies():
                assert not os.path.exists(os.path.join(h.path, stale))
                assert os.path.isdir(os.path.join(h.path, alive))
        finally:
            mgr.close()
    finally:
        stop_plain(sleeper)
        for d in reversed(made):
            if os.path.isdir(d):
                os.rmdir(d)


def stop_plain(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def check_close_kills_and_removes_all() -> None:
    mgr = CgroupManager()
    mgr.open(PREFIX)
    procs = []
    try:
        for i in range(3):
            leaf = mgr.create_leaf(f"c{i}", ResourcePolicy(pids=10))
            p = gated(["/bin/sleep", "1000"])
            place_and_release(leaf, p)
            procs.append(p)
        parents = mgr.parents
        mgr.close()
        assert all(p.wait(timeout=10) == -9 for p in procs)
        assert not any(os.path.exists(d) for d in parents)
        assert mgr.leaves() == []
    finally:
        for p in procs:
            stop(p)
        mgr.close()


def check_failed_limit_rolls_back(mgr: CgroupManager, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from supervisor._errors import SandboxSetupError
    from supervisor.sandbox.cgroups import _fs

    real = _fs.write

    def refuse_pids(path: str, data: str) -> None:
        if path.endswith("pids.max"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(path, data)

    monkeypatch.setattr(_fs, "write", refuse_pids)
    with pytest.raises(SandboxSetupError) as info:
        mgr.create_leaf("bad", ResourcePolicy(memory=64 * MiB, pids=5))
    err = info.value
    assert err.layer == "cgroups"
    assert err.errno == errno.EINVAL
    assert "pids.max" in err.operation
    assert err.path is not None
    assert err.path.endswith("pids.max")
    assert isinstance(err.__cause__, OSError)
    for p in mgr.parents:
        assert not os.path.exists(os.path.join(p, "bad"))
    monkeypatch.undo()
    leaf = mgr.create_leaf("bad", ResourcePolicy(pids=5))  # the name is free again
    leaf.remove()


# A supervisor stand-in, possibly unprivileged: waits for "go", opens a manager, places a sleeper of its
# own in a leaf, kills it, cleans up, and reports as JSON. argv: prefix [delegate as JSON].
SUPERVISOR = """
import json, os, subprocess, sys
sys.stdin.readline()
from policies import ResourcePolicy
from supervisor.sandbox.cgroups import CgroupManager
mgr = CgroupManager()
mgr.open(sys.argv[1], delegate=json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
out = {"available": mgr.available, "controllers": mgr.controllers, "moved": mgr.moved_self_to,
       "reason": mgr.reason, "errors": [e.hint for e in mgr.errors], "parents": mgr.parents}
if mgr.controllers.get("memory"):
    leaf = mgr.create_leaf("c1", ResourcePolicy(memory=32 << 20, pids=8))
    out["enforced"] = leaf.enforced
    p = subprocess.Popen(["/bin/sleep", "100"])
    for f in leaf.procs_files:
        with open(f, "w") as fh:
            fh.write(str(p.pid))
    out["placed"] = leaf.pids() == [p.pid]
    out["killed"] = leaf.kill()
    out["rc"] = p.wait()
    leaf.remove()
mgr.close()
out["parents_left"] = [d for d in out["parents"] if os.path.exists(d)]
print(json.dumps(out), flush=True)
"""


def run_supervisor(
    cgroup_dir: str | None = None, user: int | None = None, delegate: object = None
) -> dict[str, object]:
    """Run SUPERVISOR (as `user` when given), first moved into `cgroup_dir` when given. As another user,
    the interpreter and packages come from the unprivileged harness (a copy when this checkout is out of
    that user's reach); the test skips, with the reason, when even that cannot work."""
    python, env = sys.executable, None
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    scratch: Path | None = None
    if user is not None:
        from tests.kernel.unprivileged_harness import Unavailable, harness

        scratch = Path("/var/tmp/corral-tests") / f"cgsup-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(parents=True, mode=0o755)
        os.chmod(scratch.parent, 0o755)
        os.chmod(scratch, 0o755)
        try:
            python, pythonpath = harness(scratch)
        except Unavailable as why:
            shutil.rmtree(scratch, ignore_errors=True)
            pytest.skip(str(why))
        env = {"PATH": "/usr/bin:/bin", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        cwd = str(scratch)
    argv = [python, "-c", SUPERVISOR, PREFIX]
    if delegate is not None:
        argv.append(json.dumps(delegate))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        cwd=cwd,
        env=env,
    )
    try:
        if cgroup_dir is not None:
            with open(os.path.join(cgroup_dir, "cgroup.procs"), "w") as f:
                f.write(str(proc.pid))
        out, err = proc.communicate(b"go\n", timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")
        result: dict[str, object] = json.loads(out)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def chown_cgroup(path: str, uid: int, files: tuple[str, ...] | None = None) -> None:
    """Delegate a cgroup directory to uid: the directory and its interface files (all of them, as a
    v1 admin's `chown -R` does, or only `files`, as systemd's Delegate=yes does on v2)."""
    os.chown(path, uid, uid)
    for name in os.listdir(path) if files is None else files:
        full = os.path.join(path, name)
        if os.path.isfile(full):
            os.chown(full, uid, uid)
