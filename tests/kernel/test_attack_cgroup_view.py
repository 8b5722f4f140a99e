"""The sandbox's cgroup view, attacked from inside real sandboxes and checked from outside.

The host's /sys/fs/cgroup shows every other sandbox's leaf, other supervisors' pids and usage, and the
host's totals. A sandboxed python walks /sys/fs/cgroup, reads every file it finds and tries to write; the
test starts a neighbour sandbox first and checks that nothing of it, of the host's tree or of any pid
outside the sandbox shows, that the sandbox's own limit is readable (JVMs and other runtimes read it
there) and that nothing can be written.

Runs on the hybrid development hosts and (marker cgroup_v2) inside ../shared/v2vm.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import anyio
import pytest

from policies import profiles
from supervisor import Supervisor
from supervisor.sandbox.cgroups import parse_mountinfo

pytestmark = [pytest.mark.kernel, pytest.mark.cgroup_v2]

PY = "/usr/bin/python3"
MiB = 1 << 20

WALK = r"""
import errno, json, os
R = {"dirs": [], "files": {}, "pids": [], "errors": {}, "me": os.getpid()}
for d, dirs, files in os.walk("/sys/fs/cgroup"):
    R["dirs"].append(d)
    for name in files:
        path = os.path.join(d, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = os.read(fd, 1 << 16).decode(errors="replace")
            finally:
                os.close(fd)
        except OSError as e:
            R["errors"][path] = errno.errorcode.get(e.errno, str(e.errno))
            continue
        R["files"][path] = data[:4096]
        if name in ("cgroup.procs", "tasks", "cgroup.threads"):
            R["pids"] += [int(x) for x in data.split()]
for d in R["dirs"]:
    R["names"] = R.get("names", []) + os.listdir(d)
writes = {}
for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max",
             "/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"):
    try:
        with open(path, "w") as f:
            f.write("max\n" if path.endswith(".max") else "-1\n")
        writes[path] = "ok"
    except OSError as e:
        writes[path] = errno.errorcode.get(e.errno, str(e.errno))
for path in ("/sys/fs/cgroup/escape", "/sys/fs/cgroup/memory/escape"):
    try:
        os.mkdir(path)
        writes[path] = "ok"
    except OSError as e:
        writes[path] = errno.errorcode.get(e.errno, str(e.errno))
R["writes"] = writes
print(json.dumps(R))
"""


def _host_v2() -> bool:
    with open("/proc/self/mountinfo") as f:
        mounts = parse_mountinfo(f.read())
    return any(m.mount_point == "/sys/fs/cgroup" and m.fstype == "cgroup2" for m in mounts)


V2 = _host_v2()  # cgroup2 on /sys/fs/cgroup itself (the VM), else the hybrid layout


async def _walk(sup: Supervisor, workspace: Path, **limits: object) -> dict[str, object]:
    pol = profiles.workspace_write(workspace, timeout=60, **limits)  # type: ignore[arg-type]
    r = await sup.run([PY, "-I", "-c", textwrap.dedent(WALK)], policy=pol)
    assert r.exit_code == 0, r.stderr.decode()[-2000:]
    report: dict[str, object] = json.loads(r.stdout)
    return report


@pytest.fixture
def ws(workspace: Path) -> Path:
    return workspace


async def test_only_the_own_leaf_shows_under_sys_fs_cgroup(sup: Supervisor, ws: Path) -> None:
    if sup.cgroups is None:
        pytest.skip("cgroups unavailable: no leaf to show")
    pol = profiles.workspace_write(ws, memory="48M", pids=32, timeout=60)
    neighbour = await sup.start(["/bin/sleep", "60"], policy=pol)
    try:
        assert neighbour.leaf is not None
        assert neighbour.leaf.paths
        neighbour_names = {os.path.basename(p) for p in neighbour.leaf.paths}
        rep = await _walk(sup, ws, memory="64M", pids=64)
        dirs: list[str] = rep["dirs"]  # type: ignore[assignment]
        files: dict[str, str] = rep["files"]  # type: ignore[assignment]
        names: list[str] = rep.get("names", [])  # type: ignore[assignment]
        # Nothing of the neighbour (its leaf's name), nor of the supervisor's or host's tree (a cgroup
        # below a hierarchy's root would be one: the own leaf has no children).
        components = {c for d in dirs for c in d.split("/")} | set(names)
        assert not neighbour_names & components, "the neighbour's leaf shows inside"
        deepest = max(d.count("/") for d in dirs)
        assert deepest <= (3 if V2 else 4), sorted(dirs)
        assert not any(n.startswith("corral") for n in names), names
        # Only the sandbox's own processes: pid 1 (its init) and the walker itself; a host cgroup.procs
        # lists host tasks (as 0 when they are outside the pid namespace).
        pids = set(rep["pids"])  # type: ignore[arg-type]
        assert pids <= {1, rep["me"]}, sorted(pids)[:20]
        # The own limit is readable where runtimes look for it, and it is the policy's.
        if V2:
            assert files["/sys/fs/cgroup/memory.max"].strip() == str(64 * MiB)
            assert int(files["/sys/fs/cgroup/memory.current"]) <= 64 * MiB
        else:
            assert files["/sys/fs/cgroup/memory/memory.limit_in_bytes"].strip() == str(64 * MiB)
            # The host's total usage is far above the sandbox's limit; the view shows the leaf's.
            assert int(files["/sys/fs/cgroup/memory/memory.usage_in_bytes"]) <= 64 * MiB
        # Read-only: no limit raised, no process moved, no cgroup made.
        writes: dict[str, str] = rep["writes"]  # type: ignore[assignment]
        assert all(v in ("EROFS", "EACCES", "EPERM", "ENOENT") for v in writes.values()), writes
        assert sum(v == "EROFS" for v in writes.values()) >= 2, writes
        # And from outside, the neighbour's limit is what its policy says.
        mem_dir = neighbour.leaf.dir("memory")
        assert mem_dir is not None
        limit_file = "memory.max" if V2 else "memory.limit_in_bytes"
        outside = await anyio.Path(mem_dir, limit_file).read_text()
        assert outside.strip() == str(48 * MiB)
    finally:
        neighbour.kill()
        with anyio.fail_after(20):
            await neighbour.wait()


async def test_no_limits_still_shows_nothing_of_the_host(sup: Supervisor, ws: Path) -> None:
    # Without a memory limit the leaf may sit in fewer hierarchies: the host's tree must not show either.
    rep = await _walk(sup, ws)
    dirs: list[str] = rep["dirs"]  # type: ignore[assignment]
    assert max(d.count("/") for d in dirs) <= (3 if V2 else 4), sorted(dirs)
    assert set(rep["pids"]) <= {1, rep["me"]}  # type: ignore[arg-type]


async def test_without_a_cgroup_the_view_is_empty(ws: Path) -> None:
    # Supervisor(cgroups=False): no leaf, so nothing to show; the host's tree must still be hidden.
    async with Supervisor(cgroups=False, prefork=0) as nocg:
        rep = await _walk(nocg, ws)
    assert rep["dirs"] == ["/sys/fs/cgroup"]
    assert rep["files"] == {}
    assert rep.get("names", []) == []
