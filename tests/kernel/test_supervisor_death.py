"""The supervisor process itself dies (SIGKILL): its children die within a second (PDEATHSIG on the sandbox
init, which takes its pid namespace with it), and the next Supervisor to start removes the cgroups the dead
one left behind.

A separate Python process (sys.executable) runs the supervisor, starts `sh -c 'sleep 300.789 & sleep
300.789'` with a memory limit (so the child has a cgroup), and prints its pid and the child's cgroup paths.
The test kills it by pid. `check_supervisor_death` is shared with test_limits_v2.py (pure cgroup v2).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest

from supervisor import Supervisor
from supervisor.sandbox.cgroups import discover
from tests.kernel.conftest import proc_state

pytestmark = pytest.mark.kernel

TOKEN = "300.789"
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, os, sys, time
import anyio
sys.path.insert(0, sys.argv[1])
from policies import profiles
from supervisor import DEVNULL, Supervisor

async def main():
    async with Supervisor() as sup:
        pol = profiles.workspace_write(sys.argv[2], memory="64M")
        child = await sup.start(["/bin/sh", "-c", "sleep @TOKEN@ & sleep @TOKEN@"], policy=pol,
                                stdout=DEVNULL, stderr=DEVNULL)
        deadline = time.monotonic() + 30
        while len(child.leaf.pids()) < 4 and time.monotonic() < deadline:  # init, sh, two sleeps
            await anyio.sleep(0.01)
        print(json.dumps({"ready": True, "pid": os.getpid(), "child": child.pid,
                          "paths": child.leaf.paths, "pids": child.leaf.pids()}), flush=True)
        await anyio.sleep(600)

anyio.run(main)
""".replace("@TOKEN@", TOKEN)


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return None


def token_processes() -> list[int]:
    """Live (not zombie) processes running `sleep 300.789`."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            cmd = _cmdline(int(name))
            if cmd and TOKEN in cmd and proc_state(int(name)) not in (None, "Z", "X"):
                out.append(int(name))
    return out


def corral_dirs(owner_pid: int) -> list[str]:
    """Every corral parent cgroup directory named for `owner_pid`, under every hierarchy in use, per the
    project's own discovery (the supervisor creates them under its own cgroup in each)."""
    layout = discover()
    out = []
    for h in layout.hierarchies():
        if not os.path.isdir(h.path):
            continue
        for e in os.scandir(h.path):
            if e.is_dir() and e.name.startswith(f"corral-{owner_pid}-"):
                out.append(e.path)
    return sorted(out)


def existing(paths: list[str]) -> list[str]:
    return [p for p in paths if os.path.isdir(p)]


def kill_supervisor(ws: Path, die_within: float) -> tuple[str, list[str], bool, float]:
    """Start the script, SIGKILL it, and check that everything it started dies within `die_within` s and
    that its cgroups stay behind. Blocking (run in a worker thread). Returns the corral parent cgroup's
    name, its directories, whether they were all still there just now, and how long the children took."""
    assert not token_processes(), f"stray `sleep {TOKEN}` processes before the test: {token_processes()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(ROOT), str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.communicate(timeout=30)[1].decode()[-2000:]
        info = json.loads(line)
        paths: list[str] = info["paths"]
        parents = sorted({os.path.dirname(p) for p in paths})
        name = os.path.basename(parents[0])
        assert name.startswith(f"corral-{proc.pid}-"), name
        deadline = time.monotonic() + 10  # four tasks are in the cgroup; both sleeps exec soon after
        while len(sleepers := token_processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(sleepers) == 2, sleepers
        assert set(sleepers) <= set(info["pids"])  # in the child's cgroup
        assert existing(paths) == paths
        # Everything the supervisor process started: the fork server, the sandbox init, sh, the sleepers.
        descendants = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert set(sleepers) | {info["child"]} <= set(descendants), descendants

        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        proc.wait(timeout=10)
        # The dead supervisor could not clean up: its cgroups are still there.
        assert existing(parents) == parents
        while any(proc_state(p) not in (None, "Z", "X") for p in descendants) or token_processes():
            assert time.monotonic() - t0 < die_within, (
                f"children alive {die_within}s after the supervisor's death: "
                f"{[(p, proc_state(p), _cmdline(p)) for p in descendants + token_processes()]}"
            )
            time.sleep(0.002)
        died_after = time.monotonic() - t0
        # Any corral supervisor starting on this host removes them, and another one (a parallel test run)
        # may have done so since the check above: the caller's start must remove them when they are still
        # here now.
        return name, parents, existing(parents) == parents, died_after
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


async def check_supervisor_death(ws: Path, die_within: float = 1.0) -> dict[str, object]:
    """SIGKILL a supervisor process (see kill_supervisor); its children die within `die_within` s; then a
    new Supervisor's start removes the cgroups it left. Returns timings."""
    name, parents, still_there, died_after = await anyio.to_thread.run_sync(kill_supervisor, ws, die_within)
    t1 = time.monotonic()
    async with Supervisor() as sup:
        cleaned_after = time.monotonic() - t1
        assert sup.cgroups is not None
        assert existing(parents) == []
        if still_there:
            assert name in sup.cgroups.stale_removed, (name, sup.cgroups.stale_removed)
    owner = int(name.split("-")[1])
    assert corral_dirs(owner) == []
    print(f"children gone {died_after * 1000:.1f} ms after SIGKILL; stale cgroups {name} removed on start")
    return {"died_after_s": died_after, "start_s": cleaned_after, "stale": name}


async def test_children_die_with_the_supervisor_and_the_next_start_cleans_up(workspace: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the child's cgroup holds its memory limit")
    layout = discover()
    if layout.version("memory") is None:
        pytest.skip(f"no memory controller here: {layout.missing.get('memory')}")
    await check_supervisor_death(workspace)
