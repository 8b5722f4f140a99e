"""A new supervisor must never kill a live one's sandboxes (issue 13 item 5).

Each supervisor holds a lock (flock) on its own corral cgroups for its life; a starting supervisor removes
another's only when it can take that lock. Before, liveness was inferred from the pid and start time in the
cgroup's name, checked against the host's /proc: a supervisor in its own pid namespace (pid 1 there) or time
namespace (another start time) looked dead, and a second supervisor started on the host killed its command.

Each test starts supervisor A in a subprocess, in the namespaces under test (unshare), running a sleeping
command; then starts supervisor B on the host, which sweeps stale cgroups at its start; A's cgroups and
command must survive (checked from outside: A's leaf still holds processes, and from A: its child still
runs). Then A is SIGKILLed, and the next start on the host must remove what it left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from supervisor import Supervisor
from supervisor.sandbox.cgroups import CgroupManager, discover
from supervisor.sandbox.cgroups._fs import proc_stat
from tests.kernel import conftest_cgroups as cg

ROOT = Path(__file__).resolve().parents[2]
UNSHARE = shutil.which("unshare")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="unshare of pid/time/mount namespaces from the test needs root"
    ),
    pytest.mark.skipif(UNSHARE is None, reason="needs util-linux unshare"),
    pytest.mark.skipif(discover().mode == "none", reason="no usable cgroup controller"),
]

# Supervisor A: a sleeping command under a memory limit (so it has a leaf); reports, waits for a line, says
# whether the command still runs.
SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import anyio
from policies import profiles
from supervisor import Supervisor

async def main():
    async with Supervisor() as sup:
        mgr = sup.cgroups
        policy = profiles.workspace_write(sys.argv[2], memory="256M")
        child = await sup.start(["/bin/sleep", "300"], policy=policy)
        print(json.dumps({"name": mgr.name, "parents": mgr.parents, "leaf": child.leaf.paths}), flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        print("running" if child.returncode is None else f"ended {child.returncode}", flush=True)
        if line.strip() == "hold":
            await anyio.sleep(300)

anyio.run(main)
"""

VARIANTS = {
    # pid 1 of its own pid namespace, with its own /proc.
    "pid": ["--pid", "--fork", "--mount-proc"],
    # Its clocks (and so the start time /proc shows it) a day ahead of the host's.
    "time": ["--time", "--fork", "--boottime", "86400", "--monotonic", "86400"],
    # Its own mount namespace with private /run, /tmp and /var/lock: no file it makes there is seen outside.
    "mount": ["--mount", "--propagation", "private", "--fork"],
}
MOUNT_PREFIX = "mount -t tmpfs none /run && mount -t tmpfs none /tmp && mount -t tmpfs none /var/lock; exec "


def _start_a(variant: str, ws: Path) -> tuple[subprocess.Popen[str], dict[str, object]]:
    assert UNSHARE is not None
    cmd = [sys.executable, "-c", SCRIPT, str(ROOT), str(ws)]
    if variant == "mount":
        shell = MOUNT_PREFIX + " ".join(f"'{a}'" for a in cmd)
        argv = [UNSHARE, *VARIANTS[variant], "/bin/sh", "-c", shell]
    elif variant == "host":
        argv = cmd
    else:
        argv = [UNSHARE, *VARIANTS[variant], *cmd]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        assert proc.stderr is not None
        pytest.fail(f"supervisor A did not start: {proc.stderr.read()[-3000:]}")
    return proc, json.loads(line)


def _kill_a(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.isdir(p)]


def _procs(leaf: list[str]) -> list[int]:
    out: list[int] = []
    for d in leaf:
        with open(os.path.join(d, "cgroup.procs")) as f:
            out += [int(x) for x in f.read().split()]
    return out


async def _supervisor_b_starts() -> list[str]:
    """Start (and close) a supervisor on the host: its start sweeps stale corral cgroups."""
    async with Supervisor() as b:
        assert b._cgroups is not None
        return list(b._cgroups.stale_removed)


@pytest.mark.parametrize("variant", ["pid", "time", "mount"])
async def test_a_live_supervisor_in_its_own_namespace_keeps_its_sandboxes(
    variant: str, workspace: Path
) -> None:
    proc, info = await anyio.to_thread.run_sync(_start_a, variant, workspace)
    try:
        name = str(info["name"])
        parents = [str(p) for p in info["parents"]]  # type: ignore[attr-defined]
        leaf = [str(p) for p in info["leaf"]]  # type: ignore[attr-defined]
        assert _procs(leaf), "A's command is not in its leaf"
        if variant in ("pid", "time"):
            # What the old check saw: the pid and start time in the name name no such process on the host.
            pid, start = (int(x) for x in name.split("-")[1:3])
            assert proc_stat("/proc", pid) is None or proc_stat("/proc", pid)[1] != start  # type: ignore[index]
        with anyio.fail_after(60):
            removed = await _supervisor_b_starts()
        assert name not in removed
        assert _existing(parents) == parents, "B removed A's cgroups"
        assert _procs(leaf), "B killed A's command"
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("check\n")
        proc.stdin.flush()
        said = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert said.strip() == "running", said
        assert proc.wait(timeout=30) == 0  # A ends normally and removes its own cgroups
        assert _existing(parents) == []
    finally:
        _kill_a(proc)


@pytest.mark.parametrize("variant", ["pid", "host"])
async def test_a_dead_supervisors_cgroups_are_still_removed(variant: str, workspace: Path) -> None:
    proc, info = await anyio.to_thread.run_sync(_start_a, variant, workspace)
    try:
        name = str(info["name"])
        parents = [str(p) for p in info["parents"]]  # type: ignore[attr-defined]
        assert proc.stdin is not None
        proc.stdin.write("hold\n")
        proc.stdin.flush()
    finally:
        _kill_a(proc)
    assert _existing(parents) == parents  # a SIGKILLed supervisor cannot clean up
    with anyio.fail_after(60):
        removed = await _supervisor_b_starts()
    # Another supervisor starting on this host meanwhile may have removed them first.
    assert _existing(parents) == []
    assert name in removed or not _existing(parents)


def test_a_name_whose_pid_is_alive_does_not_keep_an_unlocked_cgroup() -> None:
    """Pid reuse: cgroups named for a pid and start time that a live process has (the dead owner's pid
    reused, as the old check could be fooled into), with nobody holding their lock, are a dead
    supervisor's: removed, the process in them killed. Those whose lock is held stay."""
    layout = discover()
    sleeper = subprocess.Popen(["/bin/sleep", "300"])
    holder = CgroupManager()
    made: list[str] = []
    try:
        holder.open(cg.PREFIX)  # a live one: holds its lock
        st = proc_stat("/proc", sleeper.pid)
        assert st is not None
        stale = f"{cg.PREFIX}-{sleeper.pid}-{st[1]}-l0badc0de"
        for h in layout.hierarchies():
            d = os.path.join(h.path, stale)
            os.mkdir(d)
            made.append(d)
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(sleeper.pid))
        mgr = CgroupManager()
        mgr.open(cg.PREFIX)
        try:
            assert stale in mgr.stale_removed
            assert holder.name not in mgr.stale_removed
            assert all(os.path.isdir(p) for p in holder.parents)
            assert sleeper.wait(timeout=10) == -signal.SIGKILL
            assert not any(os.path.isdir(d) for d in made)
        finally:
            mgr.close()
    finally:
        holder.close()
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait(timeout=10)
        for d in made:
            deadline = time.monotonic() + 5
            while os.path.isdir(d) and time.monotonic() < deadline:
                try:
                    os.rmdir(d)
                except OSError:
                    time.sleep(0.01)
